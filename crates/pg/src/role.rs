//! [`PostgresRole`]: the agent's handle on its own region's PostgreSQL, implementing
//! the fencing trait [`DataRole`].
//!
//! Process-independent: each region's agent owns its local instance and only reads the
//! other regions' connection settings from the config (to measure lag against the
//! primary, and to rejoin under the new one).
//!
//! - `status`: role (pg_is_in_recovery), lag in bytes and seconds, readiness
//!   (replaying, lag under `max_lag_bytes` / `max_lag`), caught-up.
//! - `fence`: a managed server is stopped (`pg_ctl stop -m fast`, then immediate); an
//!   adopted one gets a reject-all block at the top of its pg_hba.conf, a reload, and
//!   every other session terminated. Never `default_transaction_read_only`. The hba
//!   fence is recorded in the agent's state directory (`postgres-hba-fence.json`)
//!   before the file is changed, so an agent restarted later still lifts it.
//! - `guard_targets`: a managed server's postmaster, for the region guard to kill if
//!   the agent dies or freezes with its lease outstanding.
//! - `activate`: `pg_promote(wait => true)`, refused with [`RoleError::NotReady`] when
//!   the standby is not ready unless the activation is forced. A data directory whose
//!   rejoin was interrupted before it became a standby is never started (it would come
//!   up as a primary on its old timeline, without what the new primary wrote); a
//!   rewound standby is started as a standby and promoted. In `sync` mode the primary
//!   names every other region's standby that is streaming; with none it runs
//!   unprotected (reported) unless `strict`.
//! - `follow`: rejoin under the active region (see [`crate::rejoin`]); the report of
//!   what was kept aside is in [`PostgresRole::last_rejoin_report`].
//!
//! Guarantees: operations are serialized; an epoch older than one already seen is
//! refused with [`RoleError::StaleEpoch`].

use crate::bootstrap::{set_synchronous_standbys, wait_streaming};
use crate::exec::PgBin;
use crate::instance::{Instance, PgError};
use crate::monitor::{Lag, Observation, not_ready_reason, observe, standby_lag};
use crate::rejoin::{RejoinHook, RejoinReport, ensure_slot, pending_marker, rejoin};
use crate::server::{self, ServerSettings};
use anyhow::{Context, anyhow};
use lifeboat_config::database::ReplicationMode;
use lifeboat_core::{
    Activation, DataRole, Epoch, FollowTarget, GuardTarget, HealthStatus, RegionId, RoleError,
    RoleHealth, RoleStatus,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

const NAME: &str = "postgres";
/// A marker in a managed data directory: lifeboat stopped this server as a fence;
/// nothing but an activation or a rejoin may start it again.
pub const FENCE_MARKER: &str = "lifeboat.fenced";
/// How long a fence waits to learn whether the server is a standby before stopping it.
const STANDBY_CHECK_TIMEOUT: Duration = Duration::from_millis(300);
/// How long a fence lets a fast stop take before it stops the server immediately.
pub const FENCE_FAST_STOP_SECS: u32 = 2;

/// An adopted server fenced through its pg_hba.conf. Persisted (the agent's state
/// directory, `HBA_FENCE_FILE`): an agent that restarts must lift the fence its
/// predecessor put there, or the region could never be promoted again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct HbaFence {
    #[serde(default = "one")]
    version: u32,
    hba_file: PathBuf,
    data_directory: PathBuf,
    epoch: Epoch,
}

fn one() -> u32 {
    1
}

/// The record of an adopted server's hba fence, in the agent's state directory.
pub const HBA_FENCE_FILE: &str = "postgres-hba-fence.json";

fn load_hba_fence(path: &Path) -> anyhow::Result<Option<HbaFence>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("decoding {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// temp file, fsync, rename: a restart finds the whole record or none.
fn save_hba_fence(path: &Path, fence: &HbaFence) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    {
        use std::io::Write;
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(fence)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// One region's PostgreSQL as a [`DataRole`].
pub struct PostgresRole {
    local: Instance,
    others: Vec<Instance>,
    bin: Option<PgBin>,
    settings: ServerSettings,
    mode: ReplicationMode,
    strict: bool,
    max_lag_bytes: Option<u64>,
    max_lag: Option<Duration>,
    keep_dir: Option<PathBuf>,
    seen_epoch: lifeboat_core::EpochRatchet,
    hba_fence: Mutex<Option<HbaFence>>,
    /// Where `hba_fence` is persisted.
    hba_fence_file: PathBuf,
    last_rejoin: Mutex<Option<RejoinReport>>,
    rejoin_hook: Option<RejoinHook>,
    /// Fence, activate and follow never interleave.
    op: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for PostgresRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresRole")
            .field("region", &self.local.region)
            .field("addr", &self.local.addr())
            .finish()
    }
}

impl PostgresRole {
    /// The role of `region`'s PostgreSQL as the config describes it. Does not connect.
    pub fn new(cfg: &lifeboat_config::Config, region: &RegionId) -> anyhow::Result<Self> {
        let db = cfg
            .database
            .as_ref()
            .ok_or_else(|| anyhow!("the config has no [database] section"))?;
        let pg = db
            .postgres
            .as_ref()
            .ok_or_else(|| anyhow!("the config has no [database.postgres] section"))?;
        let local_cfg = pg
            .regions
            .get(region.as_str())
            .ok_or_else(|| anyhow!("[database.postgres.regions.{region}] is not configured"))?;
        let local = Instance::from_config(region, local_cfg, &pg.dbname);
        let others = pg
            .regions
            .iter()
            .filter(|(name, _)| name.as_str() != region.as_str())
            .map(|(name, c)| Instance::from_config(&RegionId::new(name), c, &pg.dbname))
            .collect();
        let hba_fence_file = cfg.agent_state_dir(region).join(HBA_FENCE_FILE);
        let hba_fence =
            load_hba_fence(&hba_fence_file).context("the record of this region's pg_hba fence")?;
        let bin = match PgBin::locate(pg.bin_dir.as_deref()) {
            Ok(bin) => Some(bin),
            Err(e) if local.data_dir.is_some() => {
                return Err(e.context("a managed PostgreSQL needs its server binaries"));
            }
            Err(_) => None,
        };
        Ok(Self {
            local,
            others,
            bin,
            settings: ServerSettings {
                wal_keep_size_mb: pg.wal_keep_size_mb,
            },
            mode: db.mode,
            strict: db.strict,
            max_lag_bytes: db.max_lag_bytes,
            max_lag: db.max_lag,
            keep_dir: pg.keep_dir.clone(),
            seen_epoch: lifeboat_core::EpochRatchet::new(),
            hba_fence: Mutex::new(hba_fence),
            hba_fence_file,
            last_rejoin: Mutex::new(None),
            rejoin_hook: None,
            op: tokio::sync::Mutex::new(()),
        })
    }

    /// This region's instance.
    pub fn instance(&self) -> &Instance {
        &self.local
    }

    /// Where applications reach this region's server (for DNS `db` and discovery).
    pub fn endpoint(&self) -> (String, u16) {
        (self.local.host.clone(), self.local.port)
    }

    /// A hook run at fixed points of every rejoin (tests: crash the new primary
    /// between pg_rewind and the slot).
    pub fn set_rejoin_hook(&mut self, hook: RejoinHook) {
        self.rejoin_hook = Some(hook);
    }

    /// Where rejoins keep what they set aside (and their pending markers).
    fn keep_root(&self) -> Option<PathBuf> {
        self.keep_dir.clone().or_else(|| {
            self.managed_dir()
                .map(|d| PathBuf::from(format!("{}.lifeboat-kept", d.display())))
        })
    }

    /// The marker of an interrupted rejoin, when one exists.
    fn interrupted_rejoin(&self) -> Option<PathBuf> {
        let marker = pending_marker(&self.keep_root()?, self.local.region.as_str());
        marker.exists().then_some(marker)
    }

    /// What the last rejoin kept aside and found.
    pub fn last_rejoin_report(&self) -> Option<RejoinReport> {
        lock(&self.last_rejoin).clone()
    }

    fn bin(&self) -> Result<&PgBin, RoleError> {
        self.bin.as_ref().ok_or_else(|| {
            self.failed("no PostgreSQL server binaries found (set database.postgres.bin_dir)")
        })
    }

    fn managed_dir(&self) -> Option<&Path> {
        self.local.data_dir.as_deref()
    }

    fn failed(&self, message: impl Into<String>) -> RoleError {
        RoleError::Failed {
            role: self.role_label(),
            message: message.into(),
        }
    }

    fn role_label(&self) -> String {
        format!("postgres ({})", self.local.region)
    }

    fn role_error(&self, e: anyhow::Error) -> RoleError {
        match e.downcast_ref::<PgError>() {
            Some(PgError::Unreachable { .. }) => RoleError::Unreachable {
                role: self.role_label(),
                reason: format!("{e:#}"),
            },
            _ => self.failed(format!("{e:#}")),
        }
    }

    fn check_epoch(&self, epoch: Epoch) -> Result<(), RoleError> {
        self.seen_epoch.admit(epoch)
    }

    fn other(&self, region: &RegionId) -> Result<&Instance, RoleError> {
        self.others
            .iter()
            .find(|i| &i.region == region)
            .ok_or_else(|| {
                self.failed(format!(
                    "[database.postgres.regions.{region}] is not configured"
                ))
            })
    }

    /// The current primary among the other regions, with its observation (short timeout).
    async fn find_primary(&self) -> Option<(Instance, Observation)> {
        for other in &self.others {
            let Ok(Ok(client)) =
                tokio::time::timeout(Duration::from_millis(1500), other.connect()).await
            else {
                continue;
            };
            if let Ok(obs) = observe(&client).await
                && !obs.in_recovery
            {
                return Some((other.clone(), obs));
            }
        }
        None
    }

    /// Lag, the reason it may not be promoted (None: ready), and the other region's
    /// server that is still a primary, if any answers.
    async fn standby_readiness(
        &self,
        obs: &Observation,
    ) -> (Lag, Option<String>, Option<Instance>) {
        let primary = self.find_primary().await;
        let lag = standby_lag(
            obs,
            primary.as_ref().map(|(_, o)| o),
            &self.local.application_name(),
        );
        let reason = not_ready_reason(
            obs,
            &lag,
            self.max_lag_bytes,
            self.max_lag.map(|d| d.as_secs_f64()),
        );
        (lag, reason, primary.map(|(p, _)| p))
    }

    async fn status_inner(&self) -> RoleStatus {
        let mut st = RoleStatus::new(NAME, RoleHealth::Unknown);
        st.metrics
            .insert("pg_port".into(), f64::from(self.local.port));
        let client = match self.local.connect().await {
            Ok(c) => c,
            Err(e) => {
                st.health = HealthStatus::Unhealthy;
                st.detail = e.to_string();
                let fenced_hba = lock(&self.hba_fence).is_some();
                if fenced_hba
                    || self
                        .managed_dir()
                        .is_some_and(|d| d.join(FENCE_MARKER).exists())
                {
                    st.role = RoleHealth::Fenced;
                    st.detail = format!("fenced by lifeboat ({e})");
                } else if let (Some(dir), Some(bin)) = (self.managed_dir(), self.bin.as_ref())
                    && matches!(server::is_running(bin, dir).await, Ok(false))
                {
                    st.role = RoleHealth::Stopped;
                }
                if let Some(marker) = self.interrupted_rejoin()
                    && self
                        .managed_dir()
                        .is_some_and(|d| !d.join("standby.signal").exists())
                {
                    st.detail = format!(
                        "rejoin interrupted before the data directory became a standby ({}): lifeboat will not start it until a rejoin completes; {}",
                        marker.display(),
                        st.detail
                    );
                }
                return st;
            }
        };
        let obs = match observe(&client).await {
            Ok(o) => o,
            Err(e) => {
                st.health = HealthStatus::Unhealthy;
                st.detail = format!("{e:#}");
                return st;
            }
        };
        st.health = HealthStatus::Healthy;
        if obs.in_recovery {
            st.role = RoleHealth::Standby;
            let (lag, reason, _) = self.standby_readiness(&obs).await;
            st.lag_bytes = Some(lag.bytes);
            st.lag_seconds = Some(lag.seconds);
            st.caught_up = lag.caught_up;
            st.ready_to_promote = reason.is_none();
            st.metrics.insert("pg_lag_bytes".into(), lag.bytes as f64);
            st.metrics.insert("pg_lag_seconds".into(), lag.seconds);
            st.metrics.insert(
                "pg_streaming".into(),
                if obs.streaming() { 1.0 } else { 0.0 },
            );
            st.metrics.insert(
                "pg_replay_paused".into(),
                if obs.replay_paused { 1.0 } else { 0.0 },
            );
            st.detail = match reason {
                None => format!(
                    "standby, {} ({} bytes, {:.1}s behind{})",
                    if obs.streaming() {
                        "streaming"
                    } else {
                        "not streaming"
                    },
                    lag.bytes,
                    lag.seconds,
                    if lag.primary_seen {
                        ""
                    } else {
                        "; primary unreachable, measured against WAL received"
                    }
                ),
                Some(r) => format!("standby, not ready to be promoted: {r}"),
            };
        } else {
            st.role = RoleHealth::Primary;
            let streaming = obs
                .standbys
                .iter()
                .filter(|s| s.state == "streaming")
                .count();
            let worst = obs.standbys.iter().map(|s| s.lag_bytes).max();
            st.lag_bytes = worst;
            st.lag_seconds = obs
                .standbys
                .iter()
                .filter_map(|s| s.replay_lag_seconds)
                .reduce(f64::max);
            st.caught_up = true;
            st.metrics
                .insert("pg_standbys_streaming".into(), streaming as f64);
            if let Some(w) = worst {
                st.metrics.insert("pg_standby_lag_bytes".into(), w as f64);
            }
            let unprotected =
                self.mode == ReplicationMode::Sync && obs.synchronous_standby_names.is_empty();
            st.metrics.insert(
                "pg_sync_unprotected".into(),
                if unprotected { 1.0 } else { 0.0 },
            );
            st.detail = format!(
                "primary, {streaming} standby(s) streaming{}",
                if unprotected {
                    "; synchronous mode but no synchronous standby: running unprotected"
                } else {
                    ""
                }
            );
        }
        if let Some(r) = lock(&self.last_rejoin).as_ref() {
            st.metrics.insert(
                "pg_last_rejoin_divergent_commits".into(),
                r.divergent_commits as f64,
            );
            st.metrics.insert(
                "pg_last_rejoin_divergent_bytes".into(),
                r.divergent_bytes as f64,
            );
        }
        st
    }

    /// The local server answers, quickly, that it is a standby (in recovery).
    async fn is_running_standby(&self) -> bool {
        let check = async {
            let c = self.local.connect().await.ok()?;
            let row = c.query_one("SELECT pg_is_in_recovery()", &[]).await.ok()?;
            Some(row.get::<_, bool>(0))
        };
        matches!(
            tokio::time::timeout(STANDBY_CHECK_TIMEOUT, check).await,
            Ok(Some(true))
        )
    }

    async fn fence_inner(&self, epoch: Epoch) -> anyhow::Result<()> {
        // A standby takes no writes, and only lifeboat's activate (serialised with this
        // fence) promotes it: stopping it would only cost its catch-up, and leave the
        // region unpromotable if its primary died meanwhile (a fence at agent start-up).
        // Anything else — a primary, no answer in time — is stopped.
        if self.managed_dir().is_some() && self.is_running_standby().await {
            tracing::info!(region = %self.local.region, %epoch, "fence: PostgreSQL is a standby (takes no writes): left replaying");
            return Ok(());
        }
        if let Some(dir) = self.managed_dir() {
            let bin = self.bin.as_ref().context("no server binaries")?;
            // The marker first: if we die half-way, nothing restarts the server by itself.
            if dir.exists() {
                crate::exec::write_pg_file(
                    &dir.join(FENCE_MARKER),
                    &format!("fenced at epoch {epoch}\n"),
                )?;
            }
            // A fast stop ends client sessions at once but then waits for every
            // walsender to have its WAL confirmed: with a standby cut off, that is up to
            // wal_sender_timeout. Writes have stopped by then; the fence need not wait.
            if let Err(e) = server::stop_within(bin, dir, "fast", FENCE_FAST_STOP_SECS).await {
                tracing::warn!(
                    "a fast stop did not finish within {FENCE_FAST_STOP_SECS} s (a standby may be unreachable), stopping immediately: {e:#}"
                );
                if let Err(e) = server::stop(bin, dir, "immediate").await {
                    tracing::warn!("immediate stop failed, killing the postmaster: {e:#}");
                    if let Some(pid) = server::postmaster_pid(dir) {
                        let mut kill = tokio::process::Command::new("kill");
                        kill.args(["-KILL", &pid.to_string()]);
                        crate::exec::run_output(kill, "kill -KILL postmaster").await?;
                    }
                }
            }
            return Ok(());
        }
        if lock(&self.hba_fence).is_some() {
            return Ok(());
        }
        let client = self.local.connect().await?;
        let hba_file: String = client.query_one("SHOW hba_file", &[]).await?.get(0);
        let data_directory: String = client.query_one("SHOW data_directory", &[]).await?.get(0);
        let fence = HbaFence {
            version: 1,
            hba_file: PathBuf::from(hba_file),
            data_directory: PathBuf::from(data_directory),
            epoch,
        };
        // Recorded before the file changes: if the agent dies in between, the next one
        // finds the record and lifts a fence that may or may not be there.
        save_hba_fence(&self.hba_fence_file, &fence)?;
        server::close_hba(&fence.hba_file, epoch.0).with_context(|| {
            format!(
                "close {} (fencing needs local access to the server's files)",
                fence.hba_file.display()
            )
        })?;
        *lock(&self.hba_fence) = Some(fence);
        // Wait until the postmaster has reloaded (our own backend sees the new load
        // time only after the postmaster re-read the files and signalled it).
        let before: f64 = client
            .query_one(
                "SELECT extract(epoch from pg_conf_load_time())::float8",
                &[],
            )
            .await?
            .get(0);
        client.batch_execute("SELECT pg_reload_conf()").await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let now: f64 = client
                .query_one(
                    "SELECT extract(epoch from pg_conf_load_time())::float8",
                    &[],
                )
                .await?
                .get(0);
            if now > before || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Then end every other session (clients and walsenders) until none is left.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left: i64 = client
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND backend_type IN ('client backend', 'walsender')",
                    &[],
                )
                .await?
                .get(0);
            if left == 0 {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("{left} sessions survived pg_terminate_backend");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Undo an hba fence (adopted servers) or restart a fenced managed server. A data
    /// directory whose rejoin stopped before it became a standby is refused: starting
    /// it would bring the old primary back on its old timeline (without what the new
    /// primary wrote), or start a half-rewound directory.
    async fn unfence_inner(&self) -> anyhow::Result<()> {
        if let Some(dir) = self.managed_dir() {
            let bin = self.bin.as_ref().context("no server binaries")?;
            if !server::is_running(bin, dir).await? {
                if let Some(marker) = self.interrupted_rejoin() {
                    if !dir.join("standby.signal").exists() {
                        return Err(anyhow!(InterruptedRejoin {
                            marker,
                            dir: dir.to_path_buf(),
                        }));
                    }
                    // Rewound and configured as a standby before the rejoin stopped:
                    // it starts as a standby, which is safe.
                    let _ = std::fs::remove_file(&marker);
                }
                server::start(bin, dir).await?;
            }
            let _ = std::fs::remove_file(dir.join(FENCE_MARKER));
            return Ok(());
        }
        let fence = lock(&self.hba_fence).clone();
        if let Some(f) = fence {
            server::open_hba(&f.hba_file)?;
            let pid = server::postmaster_pid(&f.data_directory).with_context(|| {
                format!(
                    "read {}/postmaster.pid to reload the server",
                    f.data_directory.display()
                )
            })?;
            let mut hup = tokio::process::Command::new("kill");
            hup.args(["-HUP", &pid.to_string()]);
            crate::exec::run_output(hup, "kill -HUP postmaster").await?;
            // Until the reload is processed connections are still rejected.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while let Err(e) = self.local.connect().await {
                if tokio::time::Instant::now() > deadline {
                    return Err(anyhow!(e)
                        .context("the server still refuses connections after removing the fence"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            match std::fs::remove_file(&self.hba_fence_file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(anyhow!(e).context(format!(
                        "removing {} after lifting the fence",
                        self.hba_fence_file.display()
                    )));
                }
            }
            *lock(&self.hba_fence) = None;
        }
        Ok(())
    }

    async fn activate_inner(&self, a: &Activation) -> Result<(), RoleError> {
        if let Err(e) = self.unfence_inner().await {
            if let Some(r) = e.downcast_ref::<InterruptedRejoin>() {
                return Err(RoleError::NotReady {
                    role: self.role_label(),
                    reason: r.to_string(),
                });
            }
            return Err(self.role_error(e));
        }
        let client = self
            .local
            .connect()
            .await
            .map_err(|e| self.role_error(e.into()))?;
        let obs = observe(&client).await.map_err(|e| self.role_error(e))?;
        if obs.in_recovery {
            let (lag, reason, live_primary) = self.standby_readiness(&obs).await;
            if let Some(reason) = reason {
                if !a.forced {
                    return Err(RoleError::NotReady {
                        role: self.role_label(),
                        reason,
                    });
                }
                tracing::warn!(
                    region = %self.local.region, epoch = %a.epoch, lag_bytes = lag.bytes,
                    "forced promotion of a standby that is not ready: {reason}"
                );
            }
            // Promoting while the old primary still answers makes two primaries. The
            // controller fences first; this catches a fence that did not happen.
            if let Some(p) = live_primary {
                if !a.forced {
                    return Err(RoleError::NotReady {
                        role: self.role_label(),
                        reason: format!(
                            "region {}'s PostgreSQL at {} is still a primary accepting connections: fence it first (or force the promotion)",
                            p.region,
                            p.addr()
                        ),
                    });
                }
                tracing::warn!(
                    region = %self.local.region, epoch = %a.epoch, old_primary = %p.region,
                    "forced promotion while the old primary still runs: split brain until it is fenced"
                );
            }
            let done: bool = client
                .query_one("SELECT pg_promote(true, 60)", &[])
                .await
                .map_err(|e| self.failed(format!("pg_promote: {e}")))?
                .get(0);
            if !done {
                return Err(self.failed("pg_promote did not finish within 60 seconds"));
            }
            tracing::info!(region = %self.local.region, epoch = %a.epoch, "promoted PostgreSQL");
        }
        // Sync mode: every other region's standby that streams from us confirms
        // commits. With none connected (after a failover, until one rejoins) either run
        // unprotected (reported in status) or, when strict, keep writes waiting.
        if self.mode == ReplicationMode::Sync {
            let candidates: Vec<String> =
                self.others.iter().map(Instance::application_name).collect();
            let apps = self
                .sync_names(&client, &candidates)
                .await
                .map_err(|e| self.role_error(e))?;
            if apps.is_empty() {
                tracing::warn!(region = %self.local.region, epoch = %a.epoch,
                    "synchronous mode but no standby is streaming: running unprotected until one (re)joins");
            }
            set_synchronous_standbys(&client, &apps)
                .await
                .map_err(|e| self.role_error(e))?;
        }
        // Keep WAL for the other regions from now on, so their rejoin can stream.
        for other in &self.others {
            ensure_slot(&client, &other.slot_name())
                .await
                .map_err(|e| self.role_error(e))?;
        }
        let writable: bool = client
            .query_one("SELECT NOT pg_is_in_recovery()", &[])
            .await
            .map_err(|e| self.failed(e.to_string()))?
            .get(0);
        if !writable {
            return Err(self.failed("still in recovery after promotion"));
        }
        Ok(())
    }

    async fn follow_inner(&self, t: &FollowTarget) -> Result<(), RoleError> {
        if t.active == self.local.region {
            return Err(self.failed("a region cannot follow itself"));
        }
        let primary = self.other(&t.active)?.clone();
        let pclient = primary
            .connect()
            .await
            .map_err(|e| self.role_error(e.into()))?;
        let pobs = observe(&pclient).await.map_err(|e| self.role_error(e))?;
        if pobs.in_recovery {
            return Err(RoleError::NotReady {
                role: self.role_label(),
                reason: format!("region {}'s PostgreSQL is not a primary yet", t.active),
            });
        }
        // Already a streaming standby of the right primary: nothing to do.
        if let Ok(client) = self.local.connect().await
            && let Ok(obs) = observe(&client).await
        {
            let conninfo: String = client
                .query_one("SHOW primary_conninfo", &[])
                .await
                .map(|r| r.get(0))
                .unwrap_or_default();
            let target = format!("port={}", primary.port);
            if obs.in_recovery
                && obs.streaming()
                && conninfo.contains(&target)
                && conninfo.contains(&primary.host)
            {
                // The primary may have been activated before this standby connected:
                // make sure it waits for us in sync mode.
                self.name_on_primary(&pclient, &primary).await?;
                return Ok(());
            }
        }
        let dir = self
            .local
            .data_dir()
            .map_err(|e| self.role_error(e))?
            .clone();
        let bin = self.bin()?.clone();
        let keep_root = self
            .keep_root()
            .unwrap_or_else(|| PathBuf::from(format!("{}.lifeboat-kept", dir.display())));
        let report = rejoin(
            &bin,
            &self.local,
            &primary,
            &pclient,
            &self.settings,
            &keep_root,
            self.rejoin_hook.as_ref(),
        )
        .await
        .map_err(|e| self.role_error(e))?;
        *lock(&self.last_rejoin) = Some(report);
        let _ = std::fs::remove_file(dir.join(FENCE_MARKER));
        server::start(&bin, &dir)
            .await
            .map_err(|e| self.role_error(e))?;
        wait_streaming(
            &pclient,
            &self.local.application_name(),
            Duration::from_secs(60),
        )
        .await
        .map_err(|e| self.role_error(e))?;
        self.name_on_primary(&pclient, &primary).await?;
        Ok(())
    }

    /// The standbys a primary should name in `synchronous_standby_names`: strict,
    /// every candidate; otherwise those among them streaming from it right now.
    async fn sync_names(
        &self,
        client: &tokio_postgres::Client,
        candidates: &[String],
    ) -> anyhow::Result<Vec<String>> {
        if self.strict {
            return Ok(candidates.to_vec());
        }
        let streaming: Vec<String> = client
            .query(
                "SELECT DISTINCT application_name FROM pg_stat_replication WHERE state = 'streaming'",
                &[],
            )
            .await
            .context("read pg_stat_replication")?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(candidates
            .iter()
            .filter(|c| streaming.contains(c))
            .cloned()
            .collect())
    }

    /// Sync mode: (re-)enable synchronous replication on the primary now that this
    /// standby streams from it (with any other region's standby that streams too).
    async fn name_on_primary(
        &self,
        pclient: &tokio_postgres::Client,
        primary: &Instance,
    ) -> Result<(), RoleError> {
        if self.mode != ReplicationMode::Sync {
            return Ok(());
        }
        let candidates: Vec<String> = std::iter::once(&self.local)
            .chain(self.others.iter().filter(|o| o.region != primary.region))
            .map(Instance::application_name)
            .collect();
        let apps = self
            .sync_names(pclient, &candidates)
            .await
            .map_err(|e| self.role_error(e))?;
        set_synchronous_standbys(pclient, &apps)
            .await
            .map_err(|e| self.role_error(e))
    }
}

/// A rejoin stopped before the data directory became a standby.
#[derive(Debug, thiserror::Error)]
#[error(
    "a rejoin of this region was interrupted before {dir} became a standby (marker {marker}): it may be half-rewound or still the old primary's, and starting it would bring back the old timeline without what the new primary wrote. Bring the new primary back and let this region follow it; only if its writes are to be given up, remove the marker and start the server by hand"
)]
pub struct InterruptedRejoin {
    pub marker: PathBuf,
    pub dir: PathBuf,
}

#[async_trait::async_trait]
impl DataRole for PostgresRole {
    fn name(&self) -> &str {
        NAME
    }

    async fn status(&self) -> RoleStatus {
        self.status_inner().await
    }

    async fn fence(&self, epoch: Epoch) -> Result<(), RoleError> {
        let _op = self.op.lock().await;
        self.seen_epoch.fence(epoch);
        self.fence_inner(epoch)
            .await
            .map_err(|e| self.role_error(e))
    }

    async fn activate(&self, activation: &Activation) -> Result<(), RoleError> {
        let _op = self.op.lock().await;
        self.check_epoch(activation.epoch)?;
        self.activate_inner(activation).await
    }

    async fn follow(&self, target: &FollowTarget) -> Result<(), RoleError> {
        let _op = self.op.lock().await;
        self.check_epoch(target.epoch)?;
        self.follow_inner(target).await
    }

    /// Only a server lifeboat manages: an adopted one is someone else's process (its
    /// hba fence needs the agent).
    fn guard_targets(&self) -> Vec<GuardTarget> {
        self.managed_dir()
            .map(|d| GuardTarget::Postmaster {
                data_dir: d.to_path_buf(),
            })
            .into_iter()
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
