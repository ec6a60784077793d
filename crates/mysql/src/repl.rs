//! The replication operations on one server, as SQL: what the server is (primary,
//! replica, fenced), how far behind it is, and the statements that make it a replica,
//! a primary, or fenced.
//!
//! Every statement lifeboat runs on a server that is not (or no longer) the primary is
//! run with `sql_log_bin=0`, so lifeboat itself never creates errant transactions.

use crate::conn::{Instance, col, col_u64, global, global_bool, lit};
use crate::gtid::{Gtid, GtidPos, GtidState};
use anyhow::{Context as _, bail};
use mysql_async::Conn;
use mysql_async::Row;
use mysql_async::prelude::Queryable;
use std::time::Duration;
use tokio::time::Instant;

/// `SHOW SLAVE STATUS`, the parts lifeboat uses.
#[derive(Debug, Clone)]
pub struct ReplicaStatus {
    pub master_host: String,
    pub master_port: u16,
    pub io_running: String,
    pub sql_running: bool,
    pub seconds_behind: Option<u64>,
    pub io_pos: GtidPos,
    pub sql_delay: u64,
    pub last_io_error: String,
    pub last_sql_error: String,
    pub sql_state: String,
    /// Bytes of the primary's binlog received but not yet applied (same file only).
    pub unapplied_bytes: Option<u64>,
    /// Where the SQL thread is in the relay log.
    pub relay_log_file: String,
    pub relay_log_pos: u64,
}

impl ReplicaStatus {
    pub fn io_connected(&self) -> bool {
        self.io_running == "Yes"
    }
}

/// What a server is right now.
#[derive(Debug, Clone)]
pub struct ServerView {
    pub read_only: bool,
    pub server_id: u32,
    pub binlog_pos: GtidPos,
    pub binlog_state: GtidState,
    pub slave_pos: GtidPos,
    pub replica: Option<ReplicaStatus>,
    pub log_bin: bool,
    pub strict: bool,
    pub binlog_format: String,
    pub semi_sync_master: bool,
    pub semi_sync_clients: u64,
}

impl ServerView {
    /// Everything the replica received has been applied.
    pub fn fully_applied(&self) -> bool {
        self.replica
            .as_ref()
            .is_none_or(|r| self.slave_pos.covers(&r.io_pos))
    }
    /// Transactions received but not applied.
    pub fn unapplied_transactions(&self) -> u64 {
        self.replica
            .as_ref()
            .map_or(0, |r| self.slave_pos.behind(&r.io_pos))
    }
}

fn parse_pos(s: &str) -> anyhow::Result<GtidPos> {
    GtidPos::parse(s).map_err(anyhow::Error::msg)
}

pub async fn replica_status(conn: &mut Conn) -> anyhow::Result<Option<ReplicaStatus>> {
    let row: Option<Row> = conn
        .query_first("SHOW SLAVE STATUS")
        .await
        .context("SHOW SLAVE STATUS")?;
    let Some(row) = row else { return Ok(None) };
    let s = |n: &str| col(&row, n).unwrap_or_default();
    let unapplied_bytes = match (
        col(&row, "Master_Log_File"),
        col(&row, "Relay_Master_Log_File"),
        col_u64(&row, "Read_Master_Log_Pos"),
        col_u64(&row, "Exec_Master_Log_Pos"),
    ) {
        (Some(a), Some(b), Some(read), Some(exec)) if a == b => Some(read.saturating_sub(exec)),
        _ => None,
    };
    Ok(Some(ReplicaStatus {
        master_host: s("Master_Host"),
        master_port: col_u64(&row, "Master_Port")
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(0),
        io_running: s("Slave_IO_Running"),
        sql_running: s("Slave_SQL_Running") == "Yes",
        seconds_behind: col_u64(&row, "Seconds_Behind_Master"),
        io_pos: parse_pos(&s("Gtid_IO_Pos"))?,
        sql_delay: col_u64(&row, "SQL_Delay").unwrap_or(0),
        last_io_error: s("Last_IO_Error"),
        last_sql_error: s("Last_SQL_Error"),
        sql_state: s("Slave_SQL_Running_State"),
        unapplied_bytes,
        relay_log_file: s("Relay_Log_File"),
        relay_log_pos: col_u64(&row, "Relay_Log_Pos").unwrap_or(0),
    }))
}

pub async fn observe(conn: &mut Conn) -> anyhow::Result<ServerView> {
    let replica = replica_status(conn).await?;
    let status: Vec<(String, String)> = conn
        .query("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_%'")
        .await
        .context("reading semi-sync status")?;
    let stat = |n: &str| status.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    Ok(ServerView {
        read_only: global_bool(conn, "read_only").await?,
        server_id: global(conn, "server_id").await?.parse().unwrap_or(0),
        binlog_pos: parse_pos(&global(conn, "gtid_binlog_pos").await?)?,
        binlog_state: GtidState::parse(&global(conn, "gtid_binlog_state").await?)
            .map_err(anyhow::Error::msg)?,
        slave_pos: parse_pos(&global(conn, "gtid_slave_pos").await?)?,
        log_bin: global_bool(conn, "log_bin").await?,
        strict: global_bool(conn, "gtid_strict_mode").await?,
        binlog_format: global(conn, "binlog_format").await?,
        semi_sync_master: stat("Rpl_semi_sync_master_status").as_deref() == Some("ON"),
        semi_sync_clients: stat("Rpl_semi_sync_master_clients")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        replica,
    })
}

/// Refuse servers whose settings make GTID failover unsafe.
pub fn check_failover_settings(view: &ServerView, inst: &Instance) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    if !view.log_bin {
        problems.push("log_bin is OFF".to_owned());
    }
    if !view.strict {
        problems.push("gtid_strict_mode is OFF".to_owned());
    }
    if view.binlog_format != "ROW" {
        problems.push(format!(
            "binlog_format is {} (ROW is required)",
            view.binlog_format
        ));
    }
    if view.server_id != inst.server_id {
        problems.push(format!(
            "server_id is {} but the config says {}",
            view.server_id, inst.server_id
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!(
            "{inst} is not set up for GTID failover: {}",
            problems.join("; ")
        )
    }
}

/// Replication credentials.
#[derive(Clone)]
pub struct ReplCredentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for ReplCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplCredentials({})", self.user)
    }
}

/// Make `conn`'s server a replica of `primary` over GTID (slave_pos), starting after
/// `start_pos` when given, and start replicating.
pub async fn start_replica(
    conn: &mut Conn,
    primary: &Instance,
    repl: &ReplCredentials,
    semi_sync: bool,
    start_pos: Option<&GtidPos>,
) -> anyhow::Result<()> {
    conn.query_drop("SET SESSION sql_log_bin=0").await?;
    conn.query_drop("SET GLOBAL read_only=1")
        .await
        .context("SET GLOBAL read_only=1")?;
    conn.query_drop("STOP SLAVE").await.context("STOP SLAVE")?;
    conn.query_drop("RESET SLAVE ALL")
        .await
        .context("RESET SLAVE ALL")?;
    if let Some(pos) = start_pos {
        conn.query_drop(format!(
            "SET GLOBAL gtid_slave_pos = {}",
            lit(&pos.to_string())
        ))
        .await
        .context("setting gtid_slave_pos")?;
    }
    conn.query_drop(format!(
        "SET GLOBAL rpl_semi_sync_slave_enabled = {}, rpl_semi_sync_master_enabled = 0",
        u8::from(semi_sync)
    ))
    .await
    .context("setting semi-sync replica mode")?;
    conn.query_drop(format!(
        "CHANGE MASTER TO MASTER_HOST={}, MASTER_PORT={}, MASTER_USER={}, MASTER_PASSWORD={}, \
         MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, MASTER_HEARTBEAT_PERIOD=1",
        lit(&primary.host),
        primary.port,
        lit(&repl.user),
        lit(&repl.password)
    ))
    .await
    .context("CHANGE MASTER TO")?;
    conn.query_drop("START SLAVE")
        .await
        .context("START SLAVE")?;
    Ok(())
}

/// Wait until both replication threads run (the replica connected to its primary).
pub async fn wait_replicating(conn: &mut Conn, timeout: Duration) -> anyhow::Result<ReplicaStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        let st = replica_status(conn)
            .await?
            .context("replication is not configured")?;
        if st.io_connected() && st.sql_running {
            return Ok(st);
        }
        if !st.last_sql_error.is_empty() {
            bail!("the replica's SQL thread stopped: {}", st.last_sql_error);
        }
        if Instant::now() > deadline {
            bail!(
                "replication did not start within {timeout:?} (IO thread: {}, {}; SQL thread running: {})",
                st.io_running,
                if st.last_io_error.is_empty() {
                    "no error"
                } else {
                    &st.last_io_error
                },
                st.sql_running
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Semi-synchronous replication settings of a primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SemiSync {
    /// `rpl_semi_sync_master_timeout`: then the primary falls back to async.
    pub timeout: Duration,
    /// `[database] strict`: with no semi-sync replica connected, commits wait for one
    /// (practically forever) instead of proceeding unprotected.
    pub strict: bool,
}

/// Make the server a writable primary (the last step of a promotion).
///
/// In semi-sync mode and not strict, `rpl_semi_sync_master_wait_no_slave=OFF`: a
/// primary with no replica left (just after a failover) does not make every commit wait
/// for the timeout; it runs unprotected, which status reports, until a replica connects
/// and catches up, when semi-sync resumes by itself.
pub async fn open_as_primary(conn: &mut Conn, semi_sync: Option<SemiSync>) -> anyhow::Result<()> {
    conn.query_drop("STOP SLAVE").await.context("STOP SLAVE")?;
    conn.query_drop("RESET SLAVE ALL")
        .await
        .context("RESET SLAVE ALL")?;
    match semi_sync {
        Some(ss) => conn
            .query_drop(format!(
                "SET GLOBAL rpl_semi_sync_master_wait_point='AFTER_SYNC', \
                 rpl_semi_sync_master_timeout={}, rpl_semi_sync_master_wait_no_slave={}, \
                 rpl_semi_sync_master_enabled=1",
                if ss.strict {
                    u128::from(u32::MAX)
                } else {
                    ss.timeout.as_millis()
                },
                if ss.strict { "ON" } else { "OFF" }
            ))
            .await
            .context("enabling semi-sync on the primary")?,
        None => conn
            .query_drop("SET GLOBAL rpl_semi_sync_master_enabled=0")
            .await
            .context("disabling semi-sync")?,
    }
    conn.query_drop("SET GLOBAL read_only=0")
        .await
        .context("SET GLOBAL read_only=0")?;
    Ok(())
}

/// One transaction in a server's binlog.
#[derive(Debug, Clone)]
pub struct BinlogTrx {
    pub gtid: Gtid,
    pub file: String,
    pub pos: u64,
    /// A DDL statement (not a row transaction): flashback cannot undo it.
    pub ddl: bool,
}

/// The transactions in the server's binlog files, newest file first up to the first
/// file that holds a transaction `stop` says is common; returned in binlog order.
pub async fn binlog_tail(
    conn: &mut Conn,
    stop: impl Fn(&Gtid) -> bool,
) -> anyhow::Result<Vec<BinlogTrx>> {
    let files: Vec<Row> = conn
        .query("SHOW BINARY LOGS")
        .await
        .context("SHOW BINARY LOGS")?;
    let files: Vec<String> = files.iter().filter_map(|r| col(r, "Log_name")).collect();
    let mut out: Vec<BinlogTrx> = Vec::new();
    for file in files.iter().rev() {
        let events: Vec<Row> = conn
            .query(format!("SHOW BINLOG EVENTS IN {}", lit(file)))
            .await
            .with_context(|| format!("SHOW BINLOG EVENTS IN {file}"))?;
        let mut here = Vec::new();
        let mut reached_common = false;
        for e in &events {
            if col(e, "Event_type").as_deref() != Some("Gtid") {
                continue;
            }
            let info = col(e, "Info").unwrap_or_default();
            let Some(after) = info.split("GTID ").nth(1) else {
                continue;
            };
            let text = after.split_whitespace().next().unwrap_or_default();
            let gtid: Gtid = text.parse().map_err(anyhow::Error::msg)?;
            reached_common |= stop(&gtid);
            here.push(BinlogTrx {
                gtid,
                file: file.clone(),
                pos: col_u64(e, "Pos").unwrap_or(4),
                ddl: !info.starts_with("BEGIN"),
            });
        }
        here.append(&mut out);
        out = here;
        if reached_common {
            break;
        }
    }
    Ok(out)
}
