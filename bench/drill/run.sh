#!/usr/bin/env bash
# RTO / RPO figures of issues 6 and 7: `lifeboat demo --drill --runs N` (region outage)
# on PostgreSQL (synchronous, asynchronous) and MariaDB (semi-synchronous, asynchronous).
# Each configuration starts a fresh demo. Prints each run and the summary line.
# usage: bench/drill/run.sh [runs]   (default 10; about 4-5 minutes per configuration)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs="${1:-10}"
bin="${LIFEBOAT_BIN:-target/release/lifeboat}"
[ -x "$bin" ] || cargo build --release -p lifeboat
out="$(mktemp -d)"
for spec in "postgres-sync:" "postgres-async:--async" "mariadb-semisync:--database mariadb" "mariadb-async:--database mariadb --async"; do
  name="${spec%%:*}"; args="${spec#*:}"
  echo "== $name"
  # shellcheck disable=SC2086
  "$bin" demo $args --drill --runs "$runs" --json "$out/$name.json" 2>"$out/$name.err" \
    | grep -E '^(run|summary)' || echo "(drill failed: see $out/$name.err)"
done
echo "JSON reports in $out"
