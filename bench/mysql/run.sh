#!/usr/bin/env bash
# Promotion time of lifeboat-mysql on real MariaDB pairs: fence of the live primary
# (managed server: stopped) -> replica activated -> first write succeeds; median of 10,
# in asynchronous and semi-synchronous mode. Needs mariadb-server (mariadbd,
# mariadb-install-db); starts its own servers in temp dirs on free ports.
# Debug build on purpose (the time is the servers', not the client's CPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS="${ROUNDS:-10}"
out=bench/mysql/last-run.txt
{
  echo "# $(date -u +%FT%TZ) $(mariadbd --version)"
  cargo run -q -p lifeboat-mysql --example promotion_bench -- "$ROUNDS" async
  cargo run -q -p lifeboat-mysql --example promotion_bench -- "$ROUNDS" semi-sync
} | tee "$out"
