#!/usr/bin/env bash
# Figures for issue 10's closing note: a random schedule of lifeboat's own faults
# (controller and agent kills and freezes) mixed with the region faults (outage,
# partition, database and app crashes), against `lifeboat demo` (release build):
# 100 faults on PostgreSQL synchronous, 30 on MariaDB semi-synchronous, lengths 1-45 s.
# Per scenario: count, median and max unavailability, failovers, dual-primary database
# samples, lost acknowledged writes, converged. Writes bench/selfheal/last-run.txt.
#
# usage: bench/selfheal/run.sh [pg-faults] [mariadb-faults] [fault-seconds]
#   defaults 100 30 1-45 (several hours); e.g. `run.sh 3 3 1-5` to try it out.
#   SEED=S replays a schedule (default: a fresh one per configuration, printed).
#   Needs root and nftables for the partition scenario (left out otherwise, and said so).
set -euo pipefail
cd "$(dirname "$0")/../.."
pg_faults="${1:-100}"
my_faults="${2:-30}"
lengths="${3:-1-45}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
bin="${LIFEBOAT_BIN:-$CARGO_TARGET_DIR/release/lifeboat}"
[ -x "$bin" ] || cargo build --release -p lifeboat
out="$(mktemp -d)"
chmod 755 "$out" # the demo keeps its data here, and PostgreSQL runs as postgres
result="bench/selfheal/last-run.txt"
{
  echo "# bench/selfheal/run.sh $pg_faults $my_faults $lengths — $(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo '+local changes')"
  echo "# $(nproc) cores; $("$bin" --version)"
} >"$result.tmp"
for spec in "postgres-sync:$pg_faults:" "mariadb-semisync:$my_faults:--database mariadb"; do
  IFS=: read -r name faults args <<<"$spec"
  [ "$faults" -gt 0 ] || continue
  seed="${SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"
  echo "== $name: $faults faults of $lengths s, seed $seed" | tee -a "$result.tmp"
  # shellcheck disable=SC2086
  # The demo's directory (config, logs, data) is kept for a look at any odd run.
  if "$bin" demo $args --dir "$out/$name-demo" --drill --schedule random --seed "$seed" --faults "$faults" \
      --fault-seconds "$lengths" --json "$out/$name.json" --html "$out/$name.html" \
      >"$out/$name.txt" 2>"$out/$name.err"; then
    status="drill passed"
  else
    status="drill FAILED (exit $?)"
  fi
  # The per-fault lines, the summary and the per-scenario table.
  grep -E '^(run [0-9]|random schedule|databases|final read|summary|scenario |[a-z]+-[a-z]+ +[0-9]|partition +[0-9]|DRILL STOPPED|  skipped|  DUAL|  note: not converged)' \
    "$out/$name.txt" | tee -a "$result.tmp" || echo "(no report: see $out/$name.err)" | tee -a "$result.tmp"
  echo "$status; JSON $out/$name.json, HTML $out/$name.html, logs $out/$name-demo/logs" | tee -a "$result.tmp"
  echo | tee -a "$result.tmp"
done
mv "$result.tmp" "$result"
echo "written: $result (reports in $out)"
