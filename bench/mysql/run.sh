#!/usr/bin/env bash
# lifeboat-mysql on real MariaDB pairs:
# 1. promotion time: fence of the live primary (managed server: stopped) -> replica
#    activated -> first write succeeds; median of 10, asynchronous and semi-synchronous;
# 2. RPO: 4 writers, kill -9 of the primary after 1 s, promotion, acknowledged writes
#    missing on the new primary; 5 rounds, asynchronous and semi-synchronous.
# Needs mariadb-server (mariadbd, mariadb-install-db); starts its own servers in temp
# dirs on free ports, never the system's.
# Debug build on purpose (the time is the servers', not the client's CPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS="${ROUNDS:-10}"
RPO_ROUNDS="${RPO_ROUNDS:-5}"
out=bench/mysql/last-run.txt
{
  echo "# $(date -u +%FT%TZ) $(mariadbd --version)"
  cargo run -q -p lifeboat-mysql --example promotion_bench -- "$ROUNDS" async
  cargo run -q -p lifeboat-mysql --example promotion_bench -- "$ROUNDS" semi-sync
  cargo run -q -p lifeboat-mysql --example rpo_bench -- "$RPO_ROUNDS" async
  cargo run -q -p lifeboat-mysql --example rpo_bench -- "$RPO_ROUNDS" semi-sync
} | tee "$out"
