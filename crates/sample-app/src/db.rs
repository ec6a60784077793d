//! The application's database: the `entries` table on whichever server discovery names,
//! PostgreSQL (tokio-postgres) or MariaDB/MySQL (mysql_async). This file holds the
//! connection slot and the engine-neutral operations; each engine's statements are in
//! `db/pg.rs` and `db/my.rs`.
//!
//! Guarantees:
//! - the server comes from discovery only; a connection belongs to one (epoch, endpoint)
//!   and is dropped as soon as discovery shows another epoch or endpoint (checked by
//!   [`Database::run`] every [`MAX_AGE`](crate::discovery::MAX_AGE) and before every
//!   operation), so no connection to an old primary is held after a failover;
//! - connecting runs in a task of its own that every request waits on, so a request whose
//!   client gave up does not abandon the connection half made: a slow first connection
//!   (a server just promoted, busy with its checkpoint) is made once and then used,
//!   instead of being restarted by every request in turn and never finishing;
//! - an operation that fails because the connection broke, timed out or found the server
//!   read-only is retried once after a fresh discovery; that is safe because every
//!   write is idempotent by its client-chosen id;
//! - `entries` is created on first use, on a writable server only;
//! - every error names the server and says what went wrong, and is one of
//!   [`DbError`]'s cases so the HTTP layer can answer 503 (unavailable) or 500.

use crate::discovery::{DbEndpoint, Discovered, Discoverer, Engine};
use lifeboat_core::Epoch;
use mysql_async::prelude::Queryable;
use serde::Serialize;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long connecting may take before the server counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one operation may take (a partitioned server does not answer at all).
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// The `application_name` (PostgreSQL) this app connects with, so operators can find it.
pub const APPLICATION_NAME: &str = "lifeboat-sample-app";
/// Longest id accepted (the column is VARCHAR(200)).
pub const MAX_ID_LEN: usize = 200;

/// One row of `entries`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub id: String,
    pub body: String,
    /// The region whose application wrote the row.
    pub region: String,
    /// RFC 3339, UTC.
    pub created_at: String,
}

/// What an insert did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// A new row.
    Created(Entry),
    /// The id existed already: the stored row.
    Existing(Entry),
}

/// Why an operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    #[error("{0}")]
    Discovery(String),
    #[error("{engine} at {addr} is unreachable: {reason}")]
    Unreachable {
        engine: Engine,
        addr: String,
        reason: String,
    },
    #[error("{engine} at {addr} is read-only ({reason}): it is not the primary")]
    ReadOnly {
        engine: Engine,
        addr: String,
        reason: String,
    },
    #[error("{engine} at {addr}: {reason}")]
    Query {
        engine: Engine,
        addr: String,
        reason: String,
    },
}

impl DbError {
    /// The database is (for now) unavailable: HTTP 503 rather than 500.
    pub fn is_unavailable(&self) -> bool {
        !matches!(self, DbError::Query { .. })
    }

    /// Worth a fresh discovery and one more try.
    fn is_retryable(&self) -> bool {
        matches!(self, DbError::Unreachable { .. } | DbError::ReadOnly { .. })
    }
}

/// Where the database password comes from (never the command line itself).
#[derive(Debug, Clone, Default)]
pub enum PasswordSource {
    #[default]
    None,
    File(PathBuf),
    Env(String),
}

impl PasswordSource {
    /// Read now (so a rotated file is picked up on the next connection).
    fn read(&self) -> Result<Option<String>, String> {
        match self {
            PasswordSource::None => Ok(None),
            PasswordSource::File(p) => std::fs::read_to_string(p)
                .map(|s| Some(s.trim_end_matches(['\r', '\n']).to_owned()))
                .map_err(|e| format!("cannot read the password file {}: {e}", p.display())),
            PasswordSource::Env(var) => std::env::var(var)
                .map(Some)
                .map_err(|_| format!("the password variable {var} is not set")),
        }
    }
}

/// A connection (cheap to clone) to one server.
#[derive(Clone)]
enum Conn {
    Pg(Arc<PgClients>),
    My(mysql_async::Pool),
}

/// A connection made: what every request gets a clone of.
#[derive(Clone)]
struct Established {
    conn: Conn,
    /// The PostgreSQL connection tasks, aborted when the connection is dropped.
    pg_tasks: Arc<Vec<tokio::task::AbortHandle>>,
}

/// A connection being made, or made, shared by every request that needs it.
type Connecting =
    futures::future::Shared<futures::future::BoxFuture<'static, Result<Established, DbError>>>;

/// How long connecting (all connections and the table set-up) may take in all.
pub const CONNECTING_TIMEOUT: Duration = Duration::from_secs(8);

/// The connection of the current (epoch, endpoint): made, or being made.
struct Slot {
    epoch: Epoch,
    endpoint: DbEndpoint,
    conn: Connecting,
    /// The connecting task, aborted if the slot is dropped before it finished.
    task: tokio::task::AbortHandle,
}

impl Slot {
    /// Start connecting to `endpoint` in a task of its own.
    fn connect(epoch: Epoch, endpoint: DbEndpoint, password: Option<String>) -> Self {
        let ep = endpoint.clone();
        let task = tokio::spawn(async move {
            let made = tokio::time::timeout(CONNECTING_TIMEOUT, async {
                match ep.engine {
                    Engine::Postgres => pg::connect(&ep, password).await,
                    Engine::Mariadb => Ok((my::connect(&ep, password).await?, Vec::new())),
                }
            })
            .await;
            match made {
                Ok(Ok((conn, tasks))) => {
                    tracing::info!(epoch = epoch.0, db = %ep.addr(), engine = %ep.engine, "connected to the database");
                    Ok(Established {
                        conn,
                        pg_tasks: Arc::new(tasks.iter().map(|t| t.abort_handle()).collect()),
                    })
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(DbError::Unreachable {
                    engine: ep.engine,
                    addr: ep.addr(),
                    reason: format!(
                        "connecting and setting up did not finish within {} s",
                        CONNECTING_TIMEOUT.as_secs()
                    ),
                }),
            }
        });
        let abort = task.abort_handle();
        let ep = endpoint.clone();
        let conn = futures::FutureExt::shared(futures::FutureExt::boxed(async move {
            match task.await {
                Ok(r) => r,
                Err(e) => Err(DbError::Unreachable {
                    engine: ep.engine,
                    addr: ep.addr(),
                    reason: if e.is_cancelled() {
                        "connecting was abandoned (the database changed)".into()
                    } else {
                        format!("connecting failed: {e}")
                    },
                }),
            }
        }));
        Self {
            epoch,
            endpoint,
            conn,
            task: abort,
        }
    }

    /// Connecting ended in an error: the next request starts afresh.
    fn failed(&self) -> bool {
        matches!(self.conn.peek(), Some(Err(_)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Still connecting: stop (the half-made connections go with the task). Made and
        // handed out: close the sockets even while a query holds a clone of the client.
        // (Made but never handed out: dropping the result closes it.)
        self.task.abort();
        let Some(Ok(made)) = self.conn.peek() else {
            return;
        };
        made.pg_tasks.iter().for_each(|t| t.abort());
        if let Conn::My(pool) = &made.conn {
            let pool = pool.clone();
            // Closing takes a round trip; nobody needs to wait for it.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = pool.disconnect().await;
                });
            }
        }
    }
}

/// A std Mutex is fine: never held across an `.await`.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Several PostgreSQL connections used in turn: one backend commits one transaction at a
/// time, so concurrent requests (and synchronous replication's waits) need several.
struct PgClients {
    clients: Vec<tokio_postgres::Client>,
    next: std::sync::atomic::AtomicUsize,
}

impl PgClients {
    fn pick(&self) -> &tokio_postgres::Client {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.clients[i % self.clients.len()]
    }
}

/// PostgreSQL connections per (epoch, endpoint).
pub const PG_CONNECTIONS: usize = 4;

/// The database as the application sees it.
pub struct Database {
    discovery: Arc<Discoverer>,
    password: PasswordSource,
    region: String,
    /// The current connection; held only to look at or swap it, never while
    /// connecting or while a query runs.
    current: std::sync::Mutex<Option<Slot>>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("discovery", &self.discovery)
            .field("region", &self.region)
            .finish()
    }
}

impl Database {
    pub fn new(discovery: Arc<Discoverer>, password: PasswordSource, region: String) -> Self {
        Self {
            discovery,
            password,
            region,
            current: std::sync::Mutex::new(None),
        }
    }

    /// Re-discover every [`MAX_AGE`](crate::discovery::MAX_AGE) and drop the connection
    /// as soon as the epoch or endpoint changed. Returns when `cancel` fires (the
    /// connection is closed then).
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(crate::discovery::MAX_AGE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Ok(d) = self.discovery.get().await {
                self.forget_unless(&d);
            }
        }
        let old = lock(&self.current).take();
        drop(old);
    }

    /// Drop the connection unless it belongs to `d`'s epoch and endpoint.
    fn forget_unless(&self, d: &Discovered) {
        let mut cur = lock(&self.current);
        if let Some(c) = cur.as_ref()
            && (c.epoch != d.epoch || d.database.as_ref().ok() != Some(&c.endpoint))
        {
            tracing::info!(
                old_epoch = c.epoch.0,
                new_epoch = d.epoch.0,
                old = %c.endpoint.addr(),
                "closing the connection to the previous database"
            );
            *cur = None;
        }
    }

    /// Drop the connection if it is still the one to `endpoint` in `epoch`.
    fn forget(&self, epoch: Epoch, endpoint: &DbEndpoint) {
        let mut cur = lock(&self.current);
        if cur
            .as_ref()
            .is_some_and(|c| c.epoch == epoch && &c.endpoint == endpoint)
        {
            *cur = None;
        }
    }

    /// The answer discovery gives now (for the page).
    pub async fn discovered(&self) -> Result<Discovered, DbError> {
        self.discovery
            .get()
            .await
            .map_err(|e| DbError::Discovery(e.to_string()))
    }

    /// Run `op` on the current primary: at most two tries, the second after a fresh
    /// discovery. `op` must be idempotent.
    async fn with_conn<T, F, Fut>(&self, op: F) -> Result<T, DbError>
    where
        F: Fn(Conn, DbEndpoint) -> Fut,
        Fut: Future<Output = Result<T, DbError>>,
    {
        // The first try's (epoch, endpoint, whether the same server is worth another try).
        let mut first: Option<(Epoch, DbEndpoint, bool)> = None;
        let mut last = None;
        for attempt in 0..2 {
            let d = if attempt == 0 {
                self.discovery.get().await
            } else {
                self.discovery.refresh().await
            }
            .map_err(|e| DbError::Discovery(e.to_string()))?;
            let endpoint = d.database.clone().map_err(|reason| {
                DbError::Discovery(format!(
                    "cannot discover the database through {}: {reason}",
                    self.discovery.url()
                ))
            })?;
            // Asking the same server again right away is pointless after a refused or
            // timed-out connection, a timeout or a read-only answer; a connection that
            // broke (server restarted, session killed) or a different server is worth
            // one more try.
            if let Some((epoch, ep, false)) = &first
                && *epoch == d.epoch
                && *ep == endpoint
            {
                break;
            }
            let (result, retry_same) = match self.connection(&d, &endpoint).await {
                Ok(conn) => {
                    match tokio::time::timeout(OP_TIMEOUT, op(conn, endpoint.clone())).await {
                        Ok(Err(e @ DbError::Unreachable { .. })) => (Err(e), true),
                        Ok(r) => (r, false),
                        Err(_) => (
                            Err(DbError::Unreachable {
                                engine: endpoint.engine,
                                addr: endpoint.addr(),
                                reason: format!(
                                    "no answer within {} s (the outcome of a write is unknown)",
                                    OP_TIMEOUT.as_secs()
                                ),
                            }),
                            false,
                        ),
                    }
                }
                Err(e) => (Err(e), false),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() => {
                    // A read-only server keeps its connection: it may be promoted in
                    // place, and reconnecting to it for every request helps nobody.
                    if matches!(e, DbError::Unreachable { .. }) {
                        self.forget(d.epoch, &endpoint);
                    }
                    let e = match &d.stale_because {
                        Some(why) => DbError::Discovery(format!(
                            "{e} (and discovery through {} fails: {why})",
                            self.discovery.url()
                        )),
                        None => e,
                    };
                    first.get_or_insert((d.epoch, endpoint, retry_same));
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| DbError::Discovery("no attempt made".into())))
    }

    /// The connection for `d`, made (and `entries` created) if needed. Connecting runs
    /// in its own task, shared by every caller, so a caller that gives up (its client
    /// went away) does not abandon it.
    async fn connection(&self, d: &Discovered, endpoint: &DbEndpoint) -> Result<Conn, DbError> {
        let connecting = {
            let mut cur = lock(&self.current);
            match cur.as_ref() {
                Some(c) if c.epoch == d.epoch && &c.endpoint == endpoint && !c.failed() => {
                    c.conn.clone()
                }
                other => {
                    if let Some(c) = other
                        && (c.epoch != d.epoch || &c.endpoint != endpoint)
                    {
                        tracing::info!(
                            old_epoch = c.epoch.0,
                            new_epoch = d.epoch.0,
                            old = %c.endpoint.addr(),
                            new = %endpoint.addr(),
                            "discovery changed: closing the old connection"
                        );
                    }
                    let password = self
                        .password
                        .read()
                        .map_err(|reason| DbError::Unreachable {
                            engine: endpoint.engine,
                            addr: endpoint.addr(),
                            reason,
                        })?;
                    let slot = Slot::connect(d.epoch, endpoint.clone(), password);
                    let conn = slot.conn.clone();
                    // The old slot (if any) is dropped here: its sockets close.
                    *cur = Some(slot);
                    conn
                }
            }
        };
        connecting.await.map(|made| made.conn)
    }

    /// Insert a row with a client-chosen id; the same id again returns the stored row.
    pub async fn insert(&self, id: &str, body: &str) -> Result<Inserted, DbError> {
        let region = self.region.as_str();
        self.with_conn(|conn, ep| async move {
            match conn {
                Conn::Pg(c) => pg::insert(c.pick(), &ep, id, body, region).await,
                Conn::My(p) => my::insert(&p, &ep, id, body, region).await,
            }
        })
        .await
    }

    pub async fn get(&self, id: &str) -> Result<Option<Entry>, DbError> {
        self.with_conn(|conn, ep| async move {
            match conn {
                Conn::Pg(c) => pg::get(c.pick(), &ep, id).await,
                Conn::My(p) => my::get(&p, &ep, id).await,
            }
        })
        .await
    }

    /// The newest `n` rows, newest first.
    pub async fn latest(&self, n: u32) -> Result<Vec<Entry>, DbError> {
        self.with_conn(|conn, ep| async move {
            match conn {
                Conn::Pg(c) => pg::latest(c.pick(), &ep, n).await,
                Conn::My(p) => my::latest(&p, &ep, n).await,
            }
        })
        .await
    }

    /// Ids greater than `after` (all if None), in id order, at most `limit`.
    pub async fn ids(&self, after: Option<&str>, limit: u32) -> Result<Vec<String>, DbError> {
        self.with_conn(|conn, ep| async move {
            match conn {
                Conn::Pg(c) => pg::ids(c.pick(), &ep, after, limit).await,
                Conn::My(p) => my::ids(&p, &ep, after, limit).await,
            }
        })
        .await
    }

    /// Ok if the server answers and accepts writes; the reason otherwise.
    pub async fn writable(&self) -> Result<DbEndpoint, DbError> {
        self.with_conn(|conn, ep| async move {
            match &conn {
                Conn::Pg(c) => pg::writable(c.pick(), &ep).await?,
                Conn::My(p) => my::writable(p, &ep).await?,
            }
            Ok(ep)
        })
        .await
    }
}

mod my;
mod pg;
