#!/usr/bin/env bash
# DNS benchmark: lifeboat's authoritative server (release build) against Knot DNS serving
# the same zone statically, side by side in one run, with dnsperf.
#
# Zone: bench.example. with 10 failover names (r0..r9 A, primary in region a, secondary in
# region b, region a active). Knot serves the answers lifeboat gives (r0..r9 A 127.0.1.1).
#
# Per server: ROUNDS throughput runs (dnsperf saturating, THROUGHPUT_SECS each, the two
# servers alternating so that load from other processes hits both alike; the median is
# reported) and a latency run at a fixed rate (LATENCY_QPS for LATENCY_SECS, every query's
# latency recorded, p50/p99 computed).
# Both servers get the same number of worker threads (WORKERS). Prints a table and the
# lifeboat/Knot ratios of throughput (goal >= 1.0) and p99 (goal <= 1.5) and the queries
# each lost at saturation (goal: no more than Knot). Runs in under 2 minutes after the build.
#
# Needs: dnsperf, knot (Debian packages dnsperf and knot; installed when missing as root).
set -euo pipefail
cd "$(dirname "$0")/../.."

THROUGHPUT_SECS=${THROUGHPUT_SECS:-6}
ROUNDS=${ROUNDS:-3}
LATENCY_SECS=${LATENCY_SECS:-8}
LATENCY_QPS=${LATENCY_QPS:-10000}
WORKERS=${WORKERS:-2}

need=()
command -v dnsperf >/dev/null || need+=(dnsperf)
command -v knotd >/dev/null || [ -x /usr/sbin/knotd ] || need+=(knot)
if [ "${#need[@]}" -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "bench/dns: install ${need[*]}" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
  (service knot stop || true) >/dev/null 2>&1
fi
KNOTD=$(command -v knotd || echo /usr/sbin/knotd)

echo "building lifeboat-dns-serve (release)..."
cargo build --release -q -p lifeboat-dns --bin lifeboat-dns-serve
BIN=${CARGO_TARGET_DIR:-target}/release/lifeboat-dns-serve

DIR=$(mktemp -d /tmp/lifeboat-dns-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- the lifeboat config -----------------------------------------------------------------
{
  cat <<EOF
[controller]
api_addr = "127.0.0.1:0"
state_dir = "$DIR/state"

[auth]
token_env = "LIFEBOAT_TOKEN"

[regions.a]
agent_addr = "127.0.1.1:0"
address = "127.0.1.1"
role = "active"

[regions.b]
agent_addr = "127.0.2.1:0"
address = "127.0.2.1"
role = "standby"

[dns]
zone = "bench.example."
ttl = 30

[[dns.nameservers]]
name = "ns1"
address = "127.0.0.1"
EOF
  for i in $(seq 0 9); do
    for role in primary:a secondary:b; do
      cat <<EOF

[[dns.records]]
name = "r$i"
type = "A"
policy = "failover"
failover = "${role%%:*}"
region = "${role##*:}"
EOF
    done
  done
} > "$DIR/lifeboat.toml"

# --- the same zone for Knot ------------------------------------------------------------------
mkdir -p "$DIR/knot" "$DIR/run"
{
  echo '$ORIGIN bench.example.'
  echo '@ 60 IN SOA ns1.bench.example. hostmaster.bench.example. 1 60 10 604800 5'
  echo '@ 60 IN NS ns1.bench.example.'
  echo 'ns1 60 IN A 127.0.0.1'
  for i in $(seq 0 9); do echo "r$i 30 IN A 127.0.1.1"; done
} > "$DIR/bench.example.zone"
KPORT=$(free_port)
cat > "$DIR/knot.conf" <<EOF
server:
    rundir: "$DIR/run"
    listen: 127.0.0.1@$KPORT
    udp-workers: $WORKERS
    tcp-workers: 1
    background-workers: 1
database:
    storage: "$DIR/knot"
log:
  - target: stderr
    any: warning
zone:
  - domain: bench.example.
    storage: "$DIR"
    file: "bench.example.zone"
EOF

for i in $(seq 0 9); do echo "r$i.bench.example. A"; done > "$DIR/queries"
# The worst case for lifeboat's packet cache: 20,000 distinct names (NXDOMAIN), more than
# the cache holds, so that nearly every query misses it. Reported, not a goal.
for i in $(seq 1 20000); do echo "miss$i.bench.example. A"; done > "$DIR/misses"

# --- start both servers ----------------------------------------------------------------------
TOKIO_WORKER_THREADS=$WORKERS "$BIN" "$DIR/lifeboat.toml" 127.0.0.1:0 > "$DIR/lifeboat.out" 2> "$DIR/lifeboat.err" &
pids+=($!)
"$KNOTD" -c "$DIR/knot.conf" > "$DIR/knot.out" 2>&1 &
pids+=($!)

wait_answer() { # port
  for _ in $(seq 1 100); do
    if dig @127.0.0.1 -p "$1" +short +tries=1 +time=1 r0.bench.example. A 2>/dev/null | grep -q 127.0.1.1; then return 0; fi
    sleep 0.1
  done
  echo "bench/dns: server on port $1 does not answer" >&2; cat "$DIR"/*.err "$DIR/knot.out" >&2 || true; exit 1
}
for _ in $(seq 1 100); do grep -q udp= "$DIR/lifeboat.out" 2>/dev/null && break; sleep 0.1; done
LPORT=$(sed -n 's/^udp=127.0.0.1:\([0-9]*\).*/\1/p' "$DIR/lifeboat.out")
[ -n "$LPORT" ] || { echo "lifeboat-dns-serve did not start" >&2; cat "$DIR/lifeboat.err" >&2; exit 1; }
wait_answer "$LPORT"
wait_answer "$KPORT"

# --- measure ---------------------------------------------------------------------------------
throughput() { # port [query file] -> "qps avg_latency_ms lost"
  dnsperf -s 127.0.0.1 -p "$1" -d "${2:-$DIR/queries}" -l "$THROUGHPUT_SECS" -c 8 -q 200 2>/dev/null \
    | awk '/Queries per second:/ {q=$4} /Average Latency/ {l=$4*1000} /Queries lost:/ {lost=$3} END {printf "%.0f %.3f %s\n", q, l, lost}'
}
p99() { # port -> "p50_ms p99_ms"
  dnsperf -s 127.0.0.1 -p "$1" -d "$DIR/queries" -l "$LATENCY_SECS" -Q "$LATENCY_QPS" -c 4 -v 2>/dev/null \
    | awk '$1==">" {print $NF}' | sort -g \
    | awk '{a[NR]=$1} END {if (NR==0) {print "nan nan"; exit} printf "%.3f %.3f\n", a[int(NR*0.50)]*1000, a[int(NR*0.99)]*1000}'
}

echo "measuring: $ROUNDS x ${THROUGHPUT_SECS}s saturating (alternating) + ${LATENCY_SECS}s at ${LATENCY_QPS} qps per server, $WORKERS workers each"
median() { sort -g | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
: > "$DIR/l.tp"; : > "$DIR/k.tp"
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then order="l k"; else order="k l"; fi
  for s in $order; do
    if [ "$s" = l ]; then throughput "$LPORT" >> "$DIR/l.tp"; else throughput "$KPORT" >> "$DIR/k.tp"; fi
  done
  echo "  round $r: lifeboat $(tail -n 1 "$DIR/l.tp" | cut -d' ' -f1) qps, knot $(tail -n 1 "$DIR/k.tp" | cut -d' ' -f1) qps"
done
L_QPS=$(cut -d' ' -f1 "$DIR/l.tp" | median); K_QPS=$(cut -d' ' -f1 "$DIR/k.tp" | median)
L_AVG=$(cut -d' ' -f2 "$DIR/l.tp" | median); K_AVG=$(cut -d' ' -f2 "$DIR/k.tp" | median)
L_LOST=$(cut -d' ' -f3 "$DIR/l.tp" | awk '{s+=$1} END {print s+0}'); K_LOST=$(cut -d' ' -f3 "$DIR/k.tp" | awk '{s+=$1} END {print s+0}')
read -r L_MISS _ L_MISS_LOST < <(throughput "$LPORT" "$DIR/misses")
read -r K_MISS _ K_MISS_LOST < <(throughput "$KPORT" "$DIR/misses")
read -r L_P50 L_P99 < <(p99 "$LPORT")
read -r K_P50 K_P99 < <(p99 "$KPORT")

printf '\n%-10s %12s %16s %8s %22s %22s\n' server median_qps avg_lat_sat_ms lost "p50_ms@${LATENCY_QPS}qps" "p99_ms@${LATENCY_QPS}qps"
printf '%-10s %12s %16s %8s %22s %22s\n' lifeboat "$L_QPS" "$L_AVG" "$L_LOST" "$L_P50" "$L_P99"
printf '%-10s %12s %16s %8s %22s %22s\n' knot "$K_QPS" "$K_AVG" "$K_LOST" "$K_P50" "$K_P99"
awk -v l="$L_MISS" -v k="$K_MISS" -v ll="$L_MISS_LOST" -v kl="$K_MISS_LOST" 'BEGIN {
  printf "\ncache-miss workload (20,000 distinct NXDOMAIN names, one %ss run each): lifeboat %d qps (lost %d), knot %d qps (lost %d), ratio %.2f\n", "'"$THROUGHPUT_SECS"'", l, ll, k, kl, (k > 0) ? l / k : 0
}'
# The goals of issue 14: at least Knot's throughput, p99 at the fixed rate within 1.5x
# Knot's, and no query lost at saturation beyond what Knot loses.
awk -v l="$L_QPS" -v k="$K_QPS" -v lp="$L_P99" -v kp="$K_P99" -v ll="$L_LOST" -v kl="$K_LOST" 'BEGIN {
  r = (k > 0) ? l / k : 0; p = (kp > 0) ? lp / kp : 0
  printf "\nratio lifeboat/knot qps: %.2f (goal >= 1.00): %s\n", r, (r >= 1.0) ? "met" : "NOT met"
  printf "ratio lifeboat/knot p99: %.2f (goal <= 1.50): %s\n", p, (p > 0 && p <= 1.5) ? "met" : "NOT met"
  printf "queries lost at saturation: lifeboat %d, knot %d (goal: no more than knot): %s\n", ll, kl, (ll <= kl) ? "met" : "NOT met"
}'
