//! The rejoin of an old primary as a replica of the new one (`MysqlRole::follow`):
//! transactions it has that the new primary lacks (errant GTIDs) are found in its
//! binlog, kept (`errant-transactions.sql`, a replayable `replay.sql`, `flashback.sql`
//! and `report.json` under `keep_dir`), undone with their flashback, and replication
//! resumes from the last transaction both servers have. DDL cannot be undone: then the
//! rejoin refuses and says so. PostgreSQL's counterpart is `lifeboat_pg`'s `rejoin.rs`.

use super::{MysqlRole, RejoinReport, write_json};
use crate::conn::Instance;
use crate::gtid::split_errant;
use crate::repl::{self, ServerView};
use anyhow::Context as _;
use lifeboat_core::FollowTarget;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use std::path::Path;
use std::time::Duration;

impl MysqlRole {
    pub(super) async fn rejoin(
        &self,
        conn: &mut Conn,
        primary: &Instance,
        pview: &ServerView,
        target: &FollowTarget,
    ) -> anyhow::Result<RejoinReport> {
        conn.query_drop("SET SESSION sql_log_bin=0").await?;
        conn.query_drop("SET GLOBAL read_only=1").await?;
        conn.query_drop("STOP SLAVE").await.context("STOP SLAVE")?;
        // The positions as they are now that nothing applies any more: a view read
        // before STOP SLAVE can be behind what the SQL thread applied since, and resuming
        // from it would apply those transactions twice (a duplicate key stops the replica).
        let view = &repl::observe(conn).await?;
        let tail = repl::binlog_tail(conn, |g| pview.binlog_state.contains(g)).await?;
        let gtids: Vec<_> = tail.iter().map(|t| t.gtid).collect();
        let (common, errant) = split_errant(&gtids, &pview.binlog_state);
        // Resume from the newest position this server has in every domain, except where
        // it diverged: there, from the last transaction both servers have.
        let mut start = view.slave_pos.clone();
        for (d, g) in &view.binlog_pos.0 {
            if start.0.get(d).is_none_or(|s| s.seq < g.seq) {
                start.0.insert(*d, *g);
            }
        }
        let mut report = RejoinReport {
            region: self.inst.region.clone(),
            new_primary: primary.region.clone(),
            epoch: target.epoch,
            errant_count: errant.len(),
            errant_gtids: errant.iter().map(ToString::to_string).collect(),
            errant_ddl: 0,
            kept_in: None,
            resumed_from: String::new(),
        };
        if !errant.is_empty() {
            for g in &errant {
                match common.0.get(&g.domain) {
                    Some(c) => start.0.insert(g.domain, *c),
                    None => start.0.remove(&g.domain),
                };
            }
            let first = tail
                .iter()
                .find(|t| !pview.binlog_state.contains(&t.gtid))
                .context("errant transaction vanished from the binlog")?;
            let files: Vec<String> = {
                let all: Vec<mysql_async::Row> = conn.query("SHOW BINARY LOGS").await?;
                let all: Vec<String> = all
                    .iter()
                    .filter_map(|r| crate::conn::col(r, "Log_name"))
                    .collect();
                let from = all.iter().position(|n| *n == first.file).unwrap_or(0);
                all[from..].to_vec()
            };
            report.errant_ddl = tail
                .iter()
                .filter(|t| t.ddl && !pview.binlog_state.contains(&t.gtid))
                .count();
            let dir = self.settings.keep_dir.join(format!(
                "errant-{}-epoch{}-{}",
                self.inst.region,
                target.epoch,
                unix_now()
            ));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            report.kept_in = Some(dir.clone());
            let binlog = |extra: &[&str]| {
                let mut cmd = tokio::process::Command::new(crate::server::program(
                    self.settings.bin_dir.as_deref(),
                    "mariadb-binlog",
                ));
                cmd.arg("--read-from-remote-server")
                    .arg(format!("--host={}", self.inst.host))
                    .arg(format!("--port={}", self.inst.port))
                    .arg(format!("--user={}", self.inst.user))
                    .arg(format!("--start-position={}", first.pos))
                    .args(extra)
                    .args(&files)
                    .env("MYSQL_PWD", &self.inst.password);
                cmd
            };
            run_to_file(binlog(&["--verbose"]), &dir.join("errant-transactions.sql")).await?;
            write_replay_file(
                &dir.join("errant-transactions.sql"),
                &dir.join("replay.sql"),
            )?;
            run_to_file(binlog(&["--flashback"]), &dir.join("flashback.sql")).await?;
            report.resumed_from = start.to_string();
            write_json(&dir.join("report.json"), &report)?;
            tracing::warn!(
                region = %self.inst.region,
                count = errant.len(),
                dir = %dir.display(),
                "errant transactions kept before rejoin"
            );
            if report.errant_ddl > 0 {
                anyhow::bail!(
                    "{} errant transactions ({} of them DDL) kept in {}; DDL cannot be undone \
                     automatically: rebuild this server as a replica of {}",
                    errant.len(),
                    report.errant_ddl,
                    dir.display(),
                    primary
                );
            }
            // Undo the errant row changes (they are kept above), without binlogging.
            let mut mariadb = tokio::process::Command::new(crate::server::program(
                self.settings.bin_dir.as_deref(),
                "mariadb",
            ));
            mariadb
                .arg(format!("--host={}", self.inst.host))
                .arg(format!("--port={}", self.inst.port))
                .arg(format!("--user={}", self.inst.user))
                .arg("--init-command=SET SESSION sql_log_bin=0")
                .env("MYSQL_PWD", &self.inst.password)
                .stdin(std::fs::File::open(dir.join("flashback.sql"))?);
            let out = mariadb
                .output()
                .await
                .context("running mariadb to undo errant transactions")?;
            if !out.status.success() {
                anyhow::bail!(
                    "undoing the errant transactions failed (they are kept in {}): {}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            // The binlog still holds the errant GTIDs; the new primary's history replaces it.
            conn.query_drop("RESET MASTER")
                .await
                .context("RESET MASTER")?;
        }
        report.resumed_from = start.to_string();
        repl::start_replica(
            conn,
            primary,
            &self.settings.repl,
            self.settings.semi_sync.is_some(),
            Some(&start),
        )
        .await?;
        repl::wait_replicating(conn, Duration::from_secs(30)).await?;
        Ok(report)
    }
}

async fn run_to_file(mut cmd: tokio::process::Command, path: &Path) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    // Not `output()`: tokio's would replace stdout with a pipe.
    let out = cmd
        .stdout(file)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running mariadb-binlog")?
        .wait_with_output()
        .await
        .context("running mariadb-binlog")?;
    if !out.status.success() {
        anyhow::bail!(
            "mariadb-binlog failed writing {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The errant transactions without their original GTIDs: replayed on the new primary
/// (`mariadb < replay.sql`) they get new GTIDs of that server, which strict mode accepts.
fn write_replay_file(from: &Path, to: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            !(l.contains("SET @@session.gtid_seq_no=") || l.contains("SET @@session.server_id="))
        })
        .collect();
    std::fs::write(to, kept.join("\n") + "\n").with_context(|| format!("writing {}", to.display()))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
