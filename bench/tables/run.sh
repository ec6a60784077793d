#!/usr/bin/env bash
# Global tables' figures (crates/tables/tests/bench.rs): PutItem / GetItem through the
# table server beside SQLite directly; replication latency at RATE writes/s; the
# convergence after a PARTITION_SECONDS partition (nftables: run as root) with
# CONFLICT_KEYS keys written on both sides. Output: bench/tables/last-run.txt.
# Knobs: CLIENTS (16) PER_CLIENT (500) RATE (1000) SECONDS (10) PARTITION_SECONDS (30)
# CONFLICT_KEYS (10000).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=bench/tables/last-run.txt
{
  echo "# $(date -u +%FT%TZ) nproc $(nproc), load average $(cut -d" " -f1-3 /proc/loadavg), release build"
  cargo test --release -p lifeboat-tables --test bench -- --ignored --nocapture bench_tables 2>/dev/null \
    | grep -E '^(PutItem|INSERT|GetItem|SELECT|replication|partition)'
} | tee "$out"
