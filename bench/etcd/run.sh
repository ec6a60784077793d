#!/usr/bin/env bash
# Three controllers on a three-member etcd cluster (real etcd 3.4 processes, real
# controller and agent processes): RUNS (default 20) kill -9s of the leading
# controller, each from the kill until another leads and until the active region's
# agent renewed its lease with it, a's app sampled every 100 ms meanwhile (failed
# requests counted); then the latency of 100 epoch writes through etcd.
# Needs etcd-server, protobuf-compiler and libprotobuf-dev (./scripts/test installs them).
set -euo pipefail
cd "$(dirname "$0")/../.."
export RUNS="${RUNS:-20}"
out=bench/etcd/last-run.txt
{
  echo "# $(date -u +%FT%TZ) $(etcd --version | head -n 1), nproc $(nproc), load average $(cut -d" " -f1-3 /proc/loadavg)"
  # The test command's build (every feature), so the bench reuses it.
  cargo nextest run --workspace --all-features --run-ignored only --no-capture \
    -E 'test(bench_leader_kill_and_epoch_write)' 2>/dev/null | grep -E '^(run |leader |a.s app|epoch write)'
} | tee "$out"
