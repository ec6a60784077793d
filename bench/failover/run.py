#!/usr/bin/env python3
"""Detection-to-promotion time for a killed app (issue 2's figure).

Runs a controller and two agents (real `lifeboat` processes on loopback), each region
with a pilot-light HTTP app checked every 500 ms, failure threshold 2, lease ttl 2 s.
Each run kills region a's app (SIGKILL, and it stays down) and reads the controller's
journal: kill -> detected -> confirmed -> fenced -> promoted -> verified.
Prints every run and the median / max of each step. Not a test: figures only.

usage: bench/failover/run.py [--runs 20] [--bin target/release/lifeboat]
"""
import argparse, json, os, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

def free_port(ip):
    s = socket.socket(); s.bind((ip, 0)); p = s.getsockname()[1]; s.close(); return p

def get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())

def wait(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception:
            pass
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")

def one_run(binary, workdir):
    d = tempfile.mkdtemp(dir=workdir)
    open(f"{d}/token", "w").write("bench")
    ctrl = f"127.0.0.1:{free_port('127.0.0.1')}"
    cfg = f"""[controller]
api_addr = "{ctrl}"
state_dir = "{d}/controller"
[auth]
token_file = "{d}/token"
[failover]
lease_ttl = "2s"
lease_margin = "500ms"
hold_down = "0s"
"""
    regions = {"a": "127.0.1.1", "b": "127.0.2.1"}
    for i, (r, ip) in enumerate(regions.items()):
        agent, app = free_port(ip), free_port(ip)
        os.makedirs(f"{d}/www-{r}", exist_ok=True)
        open(f"{d}/www-{r}/index.html", "w").write(f"region {r}\n")
        cfg += f"""[regions.{r}]
agent_addr = "{ip}:{agent}"
address = "{ip}"
role = "{'active' if i == 0 else 'standby'}"
[[regions.{r}.services]]
name = "web"
workdir = "{d}/www-{r}"
stop_timeout = "1s"
command = ["sh", "-c", "echo $$ > {d}/app-{r}.pid; test -e {d}/poison-{r} && exit 1; exec python3 -m http.server --bind {ip} {app}"]
[checks.web-{r}]
type = "http"
region = "{r}"
url = "http://{ip}:{app}/"
interval = "500ms"
timeout = "400ms"
failure_threshold = 2
"""
    open(f"{d}/lifeboat.toml", "w").write(cfg)
    env = dict(os.environ, LIFEBOAT_LOG="warn")
    procs = []
    try:
        for args in (["controller"], ["agent", "--region", "a"], ["agent", "--region", "b"]):
            procs.append(subprocess.Popen([binary, *args, "--config", f"{d}/lifeboat.toml"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=open(f"{d}/{args[-1]}.log", "w")))
        base = f"http://{ctrl}"
        def steady_on(region):
            st = get(f"{base}/v1/status")
            r = [x for x in st["regions"] if x["name"] == region][0]
            return st["active"] == region and st["phase"] == "steady" and r["health"] == "healthy" and r["agent_active"] \
                and all(x["last_report_ms"] is not None and x["last_report_ms"] < 1000 for x in st["regions"])
        wait(lambda: steady_on("a"), 60, "a active and healthy")
        last = get(f"{base}/v1/journal")[-1]["seq"]
        open(f"{d}/poison-a", "w").close()
        pid = int(open(f"{d}/app-a.pid").read())
        kill_ms = time.time() * 1000
        os.kill(pid, signal.SIGKILL)
        wait(lambda: get(f"{base}/v1/status")["active"] == "b" and get(f"{base}/v1/status")["phase"] == "steady", 60, "b verified")
        j = [e for e in get(f"{base}/v1/journal") if e["seq"] > last]
        t = {}
        for e in j:
            t.setdefault(e["kind"], e["at_unix_ms"])
        return {
            "kill_to_detected": t["detected"] - kill_ms,
            "detected_to_confirmed": t["confirmed"] - t["detected"],
            "confirmed_to_fenced": t["fenced"] - t["confirmed"],
            "fenced_to_promoted": t["promoted"] - t["fenced"],
            "promoted_to_verified": t["verified"] - t["promoted"],
            "detected_to_promoted": t["promoted"] - t["detected"],
            "kill_to_promoted": t["promoted"] - kill_ms,
            "kill_to_verified": t["verified"] - kill_ms,
        }
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        for r in regions:
            try:
                os.kill(int(open(f"{d}/app-{r}.pid").read()), signal.SIGKILL)
            except Exception:
                pass

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--bin", default="target/release/lifeboat")
    a = ap.parse_args()
    if not os.path.exists(a.bin):
        raise SystemExit(f"{a.bin} missing: cargo build --release -p lifeboat")
    rows = []
    with tempfile.TemporaryDirectory() as w:
        for i in range(a.runs):
            r = one_run(a.bin, w)
            rows.append(r)
            print(f"run {i+1:2d}: " + "  ".join(f"{k}={v:7.0f}ms" for k, v in r.items()), flush=True)
    print(f"\n{'step':24s} {'median ms':>10s} {'max ms':>10s}   (checks 500ms, threshold 2, lease ttl 2s, {a.runs} runs)")
    for k in rows[0]:
        vals = [r[k] for r in rows]
        print(f"{k:24s} {statistics.median(vals):10.0f} {max(vals):10.0f}")
    print("\nRoute 53 failover for comparison: 60-90 s (health check 30 s x 3 + DNS TTL), as documented by AWS.")

if __name__ == "__main__":
    main()
