#!/usr/bin/env bash
# Object replication benchmarks (issue 4). Not a test: prints figures.
#  1. backfill of 10,000 x 4 KiB and of 20 x 50 MiB objects, local dir -> local dir and
#     local dir -> S3 API server (s3s-fs on 127.0.0.1), and of 100,000 x 1 KiB local ->
#     local (then again with nothing to copy), lifeboat vs `rclone copy` on the same
#     data, with ratios;
#  2. replication latency p50/p99 at 100 new objects/s for 60 s (local -> local);
#  3. the same for an S3-API source, through region a's S3 gateway (every write recorded
#     at once) and by listing alone (writes straight into the bucket; reconcile_interval
#     30 s, the default), 100 objects/s for 30 s each.
# Usage: bench/objects/run.sh            (needs: rclone — apt-get install -y rclone)
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v rclone >/dev/null || { echo "rclone is missing: apt-get install -y rclone" >&2; exit 1; }

cargo build --release -q -p lifeboat-objects --example objects-bench
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/examples/objects-bench
W=$(mktemp -d /tmp/lifeboat-objects-bench.XXXXXX)
S3PID=
cleanup() { [ -n "$S3PID" ] && kill "$S3PID" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT

KEY=bench-key; SECRET=bench-secret-key
printf %s "$KEY" > "$W/key-id"; printf %s "$SECRET" > "$W/secret"
"$BIN" serve-s3 "$W/s3" lifeboat,rclone,lat-a "$KEY" "$SECRET" > "$W/s3.addr" &
S3PID=$!
for _ in $(seq 100); do [ -s "$W/s3.addr" ] && break; sleep 0.1; done
S3=$(head -1 "$W/s3.addr")
export RCLONE_CONFIG_BS3_TYPE=s3 RCLONE_CONFIG_BS3_PROVIDER=Other RCLONE_CONFIG_BS3_ENDPOINT="$S3" \
       RCLONE_CONFIG_BS3_ACCESS_KEY_ID="$KEY" RCLONE_CONFIG_BS3_SECRET_ACCESS_KEY="$SECRET" \
       RCLONE_CONFIG_BS3_REGION=us-east-1 RCLONE_CONFIG_BS3_FORCE_PATH_STYLE=true
CONC=32

echo "generating data in $W ..."
"$BIN" gen "$W/small" 10000 4096
"$BIN" gen "$W/large" 20 $((50 * 1024 * 1024))
"$BIN" gen "$W/tiny" 100000 1024

config() { # $1 = source dir, $2 = "local DIR" | "s3", $3 = config path
    local dest
    if [ "${2%% *}" = local ]; then
        dest="type = \"local\"
path = \"${2#local }\""
    else
        dest="type = \"s3\"
endpoint = \"$S3\"
bucket = \"lifeboat\"
access_key_id_file = \"$W/key-id\"
secret_access_key_file = \"$W/secret\""
    fi
    cat > "$3" <<TOML
[controller]
api_addr = "127.0.0.1:1"
state_dir = "$W/controller"
[auth]
token_env = "LIFEBOAT_BENCH_TOKEN"
[regions.a]
agent_addr = "127.0.0.1:2"
role = "active"
[regions.b]
agent_addr = "127.0.0.1:3"
role = "standby"
[objects]
concurrency = $CONC
verify = ${VERIFY:-true}
[objects.stores.a]
type = "local"
path = "$1"
[objects.stores.b]
$dest
TOML
}

now() { date +%s.%N; }
declare -A T
run_pair() { # $1 = dataset, $2 = local|s3, $3 = repetitions (the best of each tool counts)
    local src="$W/$1" name="$1 -> $2" lb= rc= t0 t1 t2 d
    for _ in $(seq "${3:-1}"); do
        rm -rf "$W/dst" "$W/state" "$W/s3/lifeboat" "$W/s3/rclone" "$W/rclone-dst"
        mkdir -p "$W/s3/lifeboat" "$W/s3/rclone"
        sync
        if [ "$2" = local ]; then config "$src" "local $W/dst" "$W/cfg.toml"; else config "$src" s3 "$W/cfg.toml"; fi
        t0=$(now)
        "$BIN" backfill "$W/cfg.toml" a "$W/state" | grep -v elapsed_seconds
        t1=$(now)
        if [ "$2" = local ]; then
            rclone copy -q --transfers $CONC --checkers $CONC "$src" "$W/rclone-dst"
        else
            # The AWS SDK inside rclone chokes on an AWS_CA_BUNDLE meant for other tools.
            env -u AWS_CA_BUNDLE rclone copy -q --transfers $CONC --checkers $CONC "$src" bs3:rclone
        fi
        t2=$(now)
        d=$(echo "$t1 - $t0" | bc -l); if [ -z "$lb" ] || [ "$(echo "$d < $lb" | bc -l)" = 1 ]; then lb=$d; fi
        d=$(echo "$t2 - $t1" | bc -l); if [ -z "$rc" ] || [ "$(echo "$d < $rc" | bc -l)" = 1 ]; then rc=$d; fi
    done
    printf "%-16s lifeboat %7.2fs   rclone %7.2fs   lifeboat/rclone time ratio %.2f   (best of %s)\n" \
        "$name" "$lb" "$rc" "$(echo "$lb / $rc" | bc -l)" "${3:-1}" | tee -a "$W/summary"
}

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at start" | tee -a "$W/summary"
echo "== backfill (concurrency $CONC; lifeboat verifies every copy: S3 MD5 ETag, else read-back SHA-256) =="
run_pair small local 3
run_pair small s3 2
run_pair large local 2
run_pair large s3 2
run_pair tiny local 1
# The same again with nothing left to copy (both tools compare and skip).
t0=$(now); "$BIN" backfill "$W/cfg.toml" a "$W/state" | grep -v elapsed_seconds; t1=$(now)
rclone copy -q --transfers $CONC --checkers $CONC "$W/tiny" "$W/rclone-dst"; t2=$(now)
printf "%-16s lifeboat %7.2fs   rclone %7.2fs   lifeboat/rclone time ratio %.2f   (nothing to copy)\n" \
    "tiny -> local, again" "$(echo "$t1 - $t0" | bc -l)" "$(echo "$t2 - $t1" | bc -l)" \
    "$(echo "($t1 - $t0) / ($t2 - $t1)" | bc -l)" | tee -a "$W/summary"
echo "-- the same without lifeboat's read-back verification (verify = false) --" | tee -a "$W/summary"
VERIFY=false run_pair large s3 1

echo "== replication latency: 100 new 4 KiB objects/s for 60 s, local -> local =="
rm -rf "$W/lat-a" "$W/lat-b" "$W/state"
mkdir -p "$W/lat-a" "$W/lat-b"
config "$W/lat-a" "local $W/lat-b" "$W/cfg.toml"
"$BIN" latency "$W/cfg.toml" a "$W/state" 100 60 | tee -a "$W/summary"

for via in gateway listing; do
    echo "== replication latency: S3-API source via $via, 100 new 4 KiB objects/s for 30 s =="
    rm -rf "$W/lat-b" "$W/state" "$W/s3/lat-a"; mkdir -p "$W/lat-b" "$W/s3/lat-a"
    "$BIN" s3-latency "$S3" "$KEY" "$SECRET" "$W/lat-b" "$W/state" 100 30 "$via" | tee -a "$W/summary"
done

echo "load average $(cut -d' ' -f1-3 /proc/loadavg) at the end" | tee -a "$W/summary"
echo "== summary =="
cat "$W/summary"
