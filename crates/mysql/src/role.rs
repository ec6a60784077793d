//! [`MysqlRole`]: one region's MySQL / MariaDB server behind the agent's
//! [`DataRole`] contract.
//!
//! Guarantees:
//! - `activate` promotes a replica only when it is ready (replication threads healthy,
//!   lag within `[database] max_lag` / `max_lag_bytes`) and no other region's server
//!   still takes writes (reachable, not a replica, `read_only` off) unless the
//!   activation is forced, and it never throws away a transaction the replica already received: the
//!   relay log is applied (waiting up to `apply_timeout`) before `RESET SLAVE ALL`.
//! - `fence` is a real fence: a managed server is stopped; an adopted server has its
//!   client accounts locked and every client session killed (`read_only` alone does not
//!   stop SUPER sessions). Lifeboat's own statements there are not binlogged.
//! - `follow` rejoins the old primary over GTID; transactions it has that the new
//!   primary lacks (errant GTIDs) are saved (`mariadb-binlog` output, replayable, plus a
//!   JSON report with their count) before they are undone, never silently dropped.
//! - activations and follows older than the highest epoch seen are refused.
//! - a managed server lifeboat starts is read-only (its option file says so, and it is
//!   checked once it answers): it takes no writes until an activation under a lease.
//! - `guard_targets`: a managed server's `mariadbd`, for the region guard to kill if
//!   the agent dies or freezes with its lease outstanding. The account locks of an
//!   adopted server's fence are recorded in `keep_dir`, so a restarted agent lifts them.

use crate::conn::{ConnectError, Instance, lit, mysql_config};
use crate::repl::{self, ReplCredentials, ServerView};
use crate::server::ServerFiles;
use anyhow::Context as _;
use lifeboat_config::Config;
use lifeboat_config::database::ReplicationMode;
use lifeboat_core::{
    Activation, DataRole, Epoch, FollowTarget, GuardTarget, HealthStatus, RegionId, RoleError,
    RoleHealth, RoleStatus,
};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

mod rejoin;

const ROLE: &str = "mysql";

/// The longest a status report may take: inside the agent's own deadline, so that
/// "the server did not answer" arrives rather than the agent's bare "status timed out".
const STATUS_TIMEOUT: Duration = Duration::from_millis(1500);
const _: () = assert!(
    STATUS_TIMEOUT.as_millis() < lifeboat_core::STATUS_DEADLINE.as_millis(),
    "MariaDB's status bound must fire before the agent's"
);

/// How long a managed server gets to shut down cleanly when fenced before SIGKILL.
const FENCE_GRACE: Duration = Duration::from_secs(5);

/// What a rejoin found and kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RejoinReport {
    pub region: RegionId,
    pub new_primary: RegionId,
    pub epoch: Epoch,
    /// Transactions this server had that the new primary lacks.
    pub errant_count: usize,
    pub errant_gtids: Vec<String>,
    /// Of those, DDL statements (which cannot be undone automatically).
    pub errant_ddl: usize,
    /// Where they were saved (`errant-transactions.sql`, `flashback.sql`, `report.json`).
    pub kept_in: Option<PathBuf>,
    /// The GTID position replication resumed from.
    pub resumed_from: String,
}

/// Settings the role needs besides the instance itself.
#[derive(Debug, Clone)]
struct Settings {
    semi_sync: Option<repl::SemiSync>,
    max_lag: Option<Duration>,
    max_lag_bytes: Option<u64>,
    apply_timeout: Duration,
    keep_dir: PathBuf,
    bin_dir: Option<PathBuf>,
    repl: ReplCredentials,
}

#[derive(Debug, Default)]
struct State {
    fenced: bool,
    last_rejoin: Option<RejoinReport>,
}

/// One region's MySQL / MariaDB server as a data role.
pub struct MysqlRole {
    cfg: Config,
    inst: Instance,
    settings: Settings,
    state: std::sync::Mutex<State>,
    /// The epoch rule (lifeboat_core::role).
    seen: lifeboat_core::EpochRatchet,
    /// Serializes fence / activate / follow: a promotion is never interleaved with a fence.
    op: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for MysqlRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MysqlRole({:?})", self.inst)
    }
}

fn failed(e: impl std::fmt::Display) -> RoleError {
    RoleError::Failed {
        role: ROLE.into(),
        message: e.to_string(),
    }
}

fn failed_chain(e: anyhow::Error) -> RoleError {
    failed(format!("{e:#}"))
}

impl MysqlRole {
    /// The role of `region`'s instance as the config describes it. Reads the secrets
    /// now (a missing password file is an error here, not at failover time).
    pub fn new(cfg: &Config, region: &RegionId) -> anyhow::Result<Self> {
        let m = mysql_config(cfg)?;
        let db = cfg
            .database
            .as_ref()
            .context("the config has no [database] table")?;
        let inst = Instance::from_config(cfg, region)?;
        let repl = ReplCredentials {
            user: m.replication_user.clone(),
            password: crate::conn::load_secret(
                &m.replication_password(),
                "replication password (database.mysql.replication_password_*)",
            )?,
        };
        let settings = Settings {
            semi_sync: (db.mode == ReplicationMode::Sync).then_some(repl::SemiSync {
                timeout: m.semi_sync_timeout,
                strict: db.strict,
            }),
            max_lag: db.max_lag,
            max_lag_bytes: db.max_lag_bytes,
            apply_timeout: m.apply_timeout,
            keep_dir: m
                .keep_dir
                .clone()
                .unwrap_or_else(|| cfg.agent_state_dir(region).join("mysql")),
            bin_dir: m.bin_dir.clone(),
            repl,
        };
        Ok(Self {
            cfg: cfg.clone(),
            inst,
            settings,
            state: Default::default(),
            seen: lifeboat_core::EpochRatchet::new(),
            op: tokio::sync::Mutex::new(()),
        })
    }

    pub fn instance(&self) -> &Instance {
        &self.inst
    }

    /// Where errant transactions and fencing state are kept.
    pub fn keep_dir(&self) -> &Path {
        &self.settings.keep_dir
    }

    /// The report of the last rejoin of this server, if any.
    pub fn last_rejoin(&self) -> Option<RejoinReport> {
        self.lock_state().last_rejoin.clone()
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State inconsistent (plain fields).
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn files(&self) -> Option<ServerFiles> {
        self.inst
            .datadir
            .as_deref()
            .map(|d| ServerFiles::new(d, self.settings.bin_dir.as_deref()))
    }

    fn check_epoch(&self, epoch: Epoch) -> Result<(), RoleError> {
        self.seen.admit(epoch)
    }

    async fn connect(&self) -> Result<Conn, RoleError> {
        self.inst
            .connect()
            .await
            .map_err(ConnectError::into_role_error)
    }

    /// Connect, starting a managed server first if it is not running. A server this
    /// starts is read-only until an activation opens it: one coming back after an
    /// outage must not take writes while another region is the primary.
    async fn connect_starting(&self) -> Result<Conn, RoleError> {
        if let Some(files) = self.files()
            && files.running_pid().is_none()
        {
            files.start(None).await.map_err(failed_chain)?;
            let mut conn = wait_connect(&self.inst, Duration::from_secs(60))
                .await
                .map_err(failed_chain)?;
            let read_only: Option<i64> = conn
                .query_first("SELECT @@GLOBAL.read_only")
                .await
                .map_err(failed)?;
            if read_only != Some(1) {
                // The option file says read-only=ON; someone changed it by hand.
                tracing::warn!(region = %self.inst.region, "a managed MariaDB came up writable: setting read_only");
                conn.query_drop("SET GLOBAL read_only=1")
                    .await
                    .map_err(failed)?;
            }
            return Ok(conn);
        }
        self.connect().await
    }

    /// Another region's server that still takes writes: it answers, replicates from
    /// nobody and is not read-only. Promoting beside it makes two primaries (the
    /// controller fences first; this catches a fence that did not happen, such as the
    /// server of a region whose agent died).
    async fn writable_elsewhere(&self) -> Option<Instance> {
        let m = mysql_config(&self.cfg).ok()?;
        for name in m.regions.keys() {
            if name.as_str() == self.inst.region.as_str() {
                continue;
            }
            let Ok(other) = Instance::from_config(&self.cfg, &RegionId::new(name)) else {
                continue;
            };
            let Ok(mut conn) = other.connect_within(Duration::from_millis(1500)).await else {
                continue;
            };
            let view = tokio::time::timeout(Duration::from_secs(2), repl::observe(&mut conn)).await;
            let _ = conn.disconnect().await;
            if let Ok(Ok(v)) = view
                && v.replica.is_none()
                && !v.read_only
            {
                return Some(other);
            }
        }
        None
    }

    fn fenced_accounts_file(&self) -> PathBuf {
        self.settings
            .keep_dir
            .join(format!("fenced-accounts-{}.json", self.inst.region))
    }

    /// Lock every client account and kill every client session (adopted servers).
    async fn fence_by_locking(&self, conn: &mut Conn) -> anyhow::Result<usize> {
        conn.query_drop("SET SESSION sql_log_bin=0").await?;
        conn.query_drop("SET GLOBAL read_only=1")
            .await
            .context("SET GLOBAL read_only=1")?;
        let accounts: Vec<(String, String, String)> = conn
            .query(
                "SELECT User, Host, IFNULL(JSON_VALUE(Priv, '$.account_locked'), 'false') \
                 FROM mysql.global_priv",
            )
            .await
            .context("listing accounts")?;
        let mut locked: Vec<(String, String)> = read_json(&self.fenced_accounts_file())?;
        for (user, host, is_locked) in accounts {
            if user.is_empty()
                || user == self.inst.user
                || user == self.settings.repl.user
                || user == "mariadb.sys"
                || is_locked == "true"
            {
                continue;
            }
            let lock = format!("ALTER USER {}@{} ACCOUNT LOCK", lit(&user), lit(&host));
            match conn.query_drop(lock).await {
                Ok(()) => {}
                // An account the running server ignores (a host name under
                // skip_name_resolve) cannot log in anyway.
                Err(mysql_async::Error::Server(e)) if e.code == 1396 => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("locking account {user}@{host}"));
                }
            }
            if !locked.contains(&(user.clone(), host.clone())) {
                locked.push((user, host));
            }
        }
        // Record the accounts before killing sessions: an unfence must find them.
        write_json(&self.fenced_accounts_file(), &locked)?;
        let me: Option<u64> = conn.query_first("SELECT CONNECTION_ID()").await?;
        let sessions: Vec<(u64, String, String)> = conn
            .query("SELECT ID, USER, COMMAND FROM information_schema.PROCESSLIST")
            .await
            .context("listing sessions")?;
        let mut killed = 0;
        for (id, user, command) in sessions {
            if Some(id) == me
                || user == "system user"
                || user == "event_scheduler"
                || command == "Daemon"
                || command == "Binlog Dump"
            {
                continue;
            }
            // A session may end by itself meanwhile (ER_NO_SUCH_THREAD): that is fine.
            if conn
                .query_drop(format!("KILL CONNECTION {id}"))
                .await
                .is_ok()
            {
                killed += 1;
            }
        }
        Ok(killed)
    }

    /// Undo `fence_by_locking`: unlock the accounts it locked.
    async fn unlock_accounts(&self, conn: &mut Conn) -> anyhow::Result<()> {
        let path = self.fenced_accounts_file();
        let locked: Vec<(String, String)> = read_json(&path)?;
        if locked.is_empty() {
            return Ok(());
        }
        conn.query_drop("SET SESSION sql_log_bin=0").await?;
        for (user, host) in &locked {
            conn.query_drop(format!(
                "ALTER USER {}@{} ACCOUNT UNLOCK",
                lit(user),
                lit(host)
            ))
            .await
            .with_context(|| format!("unlocking account {user}@{host}"))?;
        }
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        Ok(())
    }

    async fn do_fence(&self) -> Result<(), RoleError> {
        if let Some(files) = self.files() {
            files.stop(FENCE_GRACE).await.map_err(failed_chain)?;
        } else {
            let mut conn = self.connect().await?;
            let killed = self
                .fence_by_locking(&mut conn)
                .await
                .map_err(failed_chain)?;
            tracing::info!(region = %self.inst.region, killed, "mysql fenced: accounts locked, sessions killed");
            let _ = conn.disconnect().await;
        }
        self.lock_state().fenced = true;
        Ok(())
    }

    async fn do_activate(&self, act: &Activation) -> Result<(), RoleError> {
        let mut conn = self.connect_starting().await?;
        let view = repl::observe(&mut conn).await.map_err(failed_chain)?;
        if let Some(rs) = &view.replica {
            self.check_ready(&view, rs, act.forced)?;
        }
        // After readiness (a lagging replica says so first), before anything changes.
        if let Some(other) = self.writable_elsewhere().await {
            if !act.forced {
                let _ = conn.disconnect().await;
                return Err(RoleError::NotReady {
                    role: format!("{ROLE} ({})", self.inst.region),
                    reason: format!(
                        "{other} still takes writes (read_only off, replicating from nobody): fence it first (or force the promotion)"
                    ),
                });
            }
            tracing::warn!(
                region = %self.inst.region, epoch = %act.epoch, old_primary = %other.region,
                "forced promotion while the old primary still takes writes: split brain until it is fenced"
            );
        }
        if view.replica.is_some() {
            self.apply_received(&mut conn, act.forced).await?;
        }
        repl::open_as_primary(&mut conn, self.settings.semi_sync)
            .await
            .map_err(failed_chain)?;
        self.unlock_accounts(&mut conn)
            .await
            .map_err(failed_chain)?;
        self.lock_state().fenced = false;
        tracing::info!(region = %self.inst.region, epoch = %act.epoch, forced = act.forced, "mysql promoted");
        let _ = conn.disconnect().await;
        Ok(())
    }

    fn check_ready(
        &self,
        view: &ServerView,
        rs: &repl::ReplicaStatus,
        forced: bool,
    ) -> Result<(), RoleError> {
        if forced {
            return Ok(());
        }
        if let Some(reason) = self.not_ready_reason(view, rs) {
            return Err(RoleError::NotReady {
                role: format!("{ROLE} ({})", self.inst.region),
                reason,
            });
        }
        Ok(())
    }

    /// Why this replica must not be promoted automatically (None: it may be).
    fn not_ready_reason(&self, view: &ServerView, rs: &repl::ReplicaStatus) -> Option<String> {
        if !rs.last_sql_error.is_empty() {
            return Some(format!("the SQL thread failed: {}", rs.last_sql_error));
        }
        if !rs.sql_running {
            return Some("the SQL thread is stopped: received transactions are not applied".into());
        }
        if let (Some(max), Some(lag)) = (self.settings.max_lag, rs.seconds_behind)
            && lag as f64 > max.as_secs_f64()
        {
            return Some(format!(
                "lag {lag}s exceeds max_lag {max:?} (Seconds_Behind_Master)"
            ));
        }
        if let (Some(max), Some(bytes)) = (self.settings.max_lag_bytes, rs.unapplied_bytes)
            && bytes > max
        {
            return Some(format!(
                "{bytes} bytes received but not applied exceed max_lag_bytes {max}"
            ));
        }
        if rs.sql_delay > 0 && !view.fully_applied() {
            return Some(format!(
                "delayed replication (MASTER_DELAY={}s) holds {} received transactions",
                rs.sql_delay,
                view.unapplied_transactions()
            ));
        }
        None
    }

    /// Stop receiving, then apply everything already received (the relay log).
    async fn apply_received(&self, conn: &mut Conn, forced: bool) -> Result<(), RoleError> {
        let io = |e: mysql_async::Error| failed(format!("stopping the IO thread: {e}"));
        conn.query_drop("STOP SLAVE IO_THREAD").await.map_err(io)?;
        let view = repl::observe(conn).await.map_err(failed_chain)?;
        let Some(rs) = view.replica.clone() else {
            return Ok(());
        };
        if (rs.sql_delay > 0 || !rs.sql_running) && forced {
            // An operator forces it: apply what was received now, without the delay.
            // CHANGE MASTER purges the relay log unless told where the SQL thread is.
            conn.query_drop("STOP SLAVE").await.map_err(failed)?;
            let now = repl::replica_status(conn)
                .await
                .map_err(failed_chain)?
                .unwrap_or_else(|| rs.clone());
            conn.query_drop(format!(
                "CHANGE MASTER TO MASTER_DELAY=0, RELAY_LOG_FILE={}, RELAY_LOG_POS={}",
                lit(&now.relay_log_file),
                now.relay_log_pos
            ))
            .await
            .map_err(failed)?;
            conn.query_drop("START SLAVE SQL_THREAD")
                .await
                .map_err(failed)?;
        }
        let target = rs.io_pos.to_string();
        if target.is_empty() {
            return Ok(());
        }
        let secs = self.settings.apply_timeout.as_secs_f64();
        let res: Option<i64> = conn
            .query_first(format!("SELECT MASTER_GTID_WAIT({}, {secs})", lit(&target)))
            .await
            .map_err(|e| failed(format!("waiting for the relay log to be applied: {e}")))?;
        if res == Some(0) {
            return Ok(());
        }
        let view = repl::observe(conn).await.map_err(failed_chain)?;
        let left = view.unapplied_transactions();
        if forced {
            tracing::warn!(
                left,
                "forced promotion: received transactions left unapplied"
            );
            return Ok(());
        }
        // Not promoted: resume receiving so the replica keeps following.
        let _ = conn.query_drop("START SLAVE").await;
        Err(RoleError::NotReady {
            role: format!("{ROLE} ({})", self.inst.region),
            reason: format!(
                "{left} received transactions not applied within apply_timeout {:?}",
                self.settings.apply_timeout
            ),
        })
    }

    async fn do_follow(&self, target: &FollowTarget) -> Result<(), RoleError> {
        if target.active == self.inst.region {
            return Err(failed("cannot follow the own region"));
        }
        let primary = Instance::from_config(&self.cfg, &target.active).map_err(failed_chain)?;
        let mut pconn = primary
            .connect()
            .await
            .map_err(ConnectError::into_role_error)?;
        let pview = repl::observe(&mut pconn).await.map_err(failed_chain)?;
        if pview.replica.is_some() || pview.read_only {
            return Err(RoleError::NotReady {
                role: format!("{ROLE} ({})", self.inst.region),
                reason: format!("{primary} is not a writable primary yet"),
            });
        }
        let mut conn = self.connect_starting().await?;
        let view = repl::observe(&mut conn).await.map_err(failed_chain)?;
        if let Some(rs) = &view.replica
            && rs.master_host == primary.host
            && rs.master_port == primary.port
            && rs.sql_running
            && rs.last_io_error.is_empty()
        {
            // Already following the active region.
            self.unlock_accounts(&mut conn)
                .await
                .map_err(failed_chain)?;
            self.lock_state().fenced = false;
            return Ok(());
        }
        let report = self
            .rejoin(&mut conn, &primary, &pview, target)
            .await
            .map_err(failed_chain)?;
        self.unlock_accounts(&mut conn)
            .await
            .map_err(failed_chain)?;
        let mut st = self.lock_state();
        st.fenced = false;
        if report.errant_count > 0 || st.last_rejoin.is_none() {
            st.last_rejoin = Some(report);
        }
        Ok(())
    }

    async fn do_status(&self) -> RoleStatus {
        let mut st = RoleStatus::new(ROLE, RoleHealth::Unknown);
        let fenced = self.lock_state().fenced;
        if let Some(r) = &self.lock_state().last_rejoin {
            st.metrics
                .insert("errant_transactions_kept".into(), r.errant_count as f64);
        }
        let mut conn = match self.inst.connect_within(Duration::from_secs(2)).await {
            Ok(c) => c,
            Err(e) => {
                let stopped = self.files().is_some_and(|f| f.running_pid().is_none());
                st.role = match (fenced, stopped) {
                    (true, _) => RoleHealth::Fenced,
                    (false, true) => RoleHealth::Stopped,
                    (false, false) => RoleHealth::Unknown,
                };
                st.health = if fenced {
                    HealthStatus::Healthy
                } else {
                    HealthStatus::Unhealthy
                };
                st.detail = e.to_string();
                return st;
            }
        };
        let view = match repl::observe(&mut conn).await {
            Ok(v) => v,
            Err(e) => {
                st.health = HealthStatus::Unhealthy;
                st.detail = format!("{e:#}");
                return st;
            }
        };
        let _ = conn.disconnect().await;
        st.metrics
            .insert("read_only".into(), f64::from(u8::from(view.read_only)));
        st.metrics.insert(
            "semi_sync_master".into(),
            f64::from(u8::from(view.semi_sync_master)),
        );
        st.metrics
            .insert("semi_sync_clients".into(), view.semi_sync_clients as f64);
        match &view.replica {
            Some(rs) => {
                st.role = RoleHealth::Standby;
                st.lag_seconds = rs.seconds_behind.map(|s| s as f64);
                st.lag_bytes = rs.unapplied_bytes;
                st.metrics.insert(
                    "unapplied_transactions".into(),
                    view.unapplied_transactions() as f64,
                );
                let reason = self.not_ready_reason(&view, rs);
                st.ready_to_promote = reason.is_none();
                st.caught_up = rs.io_connected()
                    && rs.sql_running
                    && view.fully_applied()
                    && rs.seconds_behind == Some(0);
                st.health = if rs.sql_running && rs.last_sql_error.is_empty() {
                    HealthStatus::Healthy
                } else {
                    HealthStatus::Unhealthy
                };
                st.detail = format!(
                    "replica of {}:{} (IO thread: {}{}; applied {}; received {}){}",
                    rs.master_host,
                    rs.master_port,
                    rs.io_running,
                    if rs.last_io_error.is_empty() {
                        String::new()
                    } else {
                        format!(", {}", rs.last_io_error)
                    },
                    view.slave_pos,
                    rs.io_pos,
                    reason
                        .map(|r| format!("; not ready: {r}"))
                        .unwrap_or_default()
                );
            }
            None if view.read_only => {
                st.role = RoleHealth::Fenced;
                st.health = HealthStatus::Healthy;
                st.detail = format!(
                    "read-only, not replicating (gtid_binlog_pos {})",
                    view.binlog_pos
                );
            }
            None => {
                let unprotected = self.settings.semi_sync.is_some()
                    && (!view.semi_sync_master || view.semi_sync_clients == 0);
                st.metrics
                    .insert("unprotected".into(), f64::from(u8::from(unprotected)));
                st.role = RoleHealth::Primary;
                st.health = HealthStatus::Healthy;
                st.caught_up = true;
                st.detail = format!(
                    "primary at {}{}",
                    view.binlog_pos,
                    if unprotected {
                        " (semi-sync configured but no replica acknowledges: running unprotected, asynchronously)"
                    } else {
                        ""
                    }
                );
            }
        }
        st
    }
}

#[async_trait::async_trait]
impl DataRole for MysqlRole {
    fn name(&self) -> &str {
        ROLE
    }

    async fn status(&self) -> RoleStatus {
        // Never block the agent for long: a hung server is reported, not waited for.
        match tokio::time::timeout(STATUS_TIMEOUT, self.do_status()).await {
            Ok(st) => st,
            Err(_) => {
                let mut st = RoleStatus::new(ROLE, RoleHealth::Unknown);
                st.health = HealthStatus::Unhealthy;
                st.detail = format!("{} did not answer within {STATUS_TIMEOUT:?}", self.inst);
                st
            }
        }
    }

    async fn fence(&self, epoch: Epoch) -> Result<(), RoleError> {
        let _op = self.op.lock().await;
        self.seen.fence(epoch);
        self.do_fence().await
    }

    async fn activate(&self, activation: &Activation) -> Result<(), RoleError> {
        let _op = self.op.lock().await;
        self.check_epoch(activation.epoch)?;
        self.do_activate(activation).await
    }

    async fn follow(&self, target: &FollowTarget) -> Result<(), RoleError> {
        let _op = self.op.lock().await;
        self.check_epoch(target.epoch)?;
        self.do_follow(target).await
    }

    /// Only a server lifeboat manages (an adopted one is someone else's process; its
    /// fence locks accounts, which needs the agent).
    fn guard_targets(&self) -> Vec<GuardTarget> {
        self.files()
            .map(|f| GuardTarget::Process {
                pid_file: f.pid_file(),
                comm: "mariadbd".into(),
            })
            .into_iter()
            .collect()
    }
}

/// Poll until a login succeeds (a server that was just started).
pub(crate) async fn wait_connect(inst: &Instance, timeout: Duration) -> anyhow::Result<Conn> {
    let deadline = Instant::now() + timeout;
    loop {
        match inst.connect().await {
            Ok(c) => return Ok(c),
            Err(ConnectError::Unreachable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned + Default>(path: &Path) -> anyhow::Result<T> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Used by [`crate::bootstrap`] to check a pair it adopts.
pub(crate) fn describe(view: &ServerView) -> String {
    match &view.replica {
        Some(rs) => format!("a replica of {}:{}", rs.master_host, rs.master_port),
        None if view.read_only => "a read-only server that replicates from nobody".into(),
        None => format!("a writable primary (gtid_binlog_pos {})", view.binlog_pos),
    }
}
