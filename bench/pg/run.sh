#!/usr/bin/env bash
# lifeboat-pg figures: promotion time (fence -> new primary writable, median of 10 fresh
# pairs) and replication lag under a pgbench load (async and sync mode).
# Usage: bench/pg/run.sh [runs=10] [load-seconds=20]
# Needs the PostgreSQL server binaries (Debian package `postgresql`); run as root or as
# a user that may run them. Results are also written to bench/pg/last-run.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p lifeboat-pg --example pg_bench
target/release/examples/pg_bench "${1:-10}" "${2:-20}" | tee bench/pg/last-run.txt
