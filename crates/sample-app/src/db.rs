//! The application's database: the `entries` table on whichever server discovery names,
//! PostgreSQL (tokio-postgres) or MariaDB/MySQL (mysql_async).
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

mod pg {
    //! PostgreSQL statements.
    use super::*;
    use tokio_postgres::error::SqlState;

    const CREATED_AT: &str =
        r#"to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#;

    fn err(ep: &DbEndpoint, e: &tokio_postgres::Error) -> DbError {
        let engine = ep.engine;
        let addr = ep.addr();
        let Some(db) = e.as_db_error() else {
            // No server error: the socket broke, closed or timed out.
            let mut reason = e.to_string();
            if let Some(src) = std::error::Error::source(e) {
                reason = format!("{reason}: {src}");
            }
            return DbError::Unreachable {
                engine,
                addr,
                reason,
            };
        };
        let reason = db.message().to_owned();
        let code = db.code();
        if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
            DbError::ReadOnly {
                engine,
                addr,
                reason,
            }
        } else if code.code().starts_with("08")
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
            || *code == SqlState::TOO_MANY_CONNECTIONS
        {
            DbError::Unreachable {
                engine,
                addr,
                reason,
            }
        } else {
            DbError::Query {
                engine,
                addr,
                reason: format!("{reason} (SQLSTATE {})", code.code()),
            }
        }
    }

    fn missing_table(e: &tokio_postgres::Error) -> bool {
        e.code() == Some(&SqlState::UNDEFINED_TABLE)
    }

    async fn connect_one(
        cfg: &tokio_postgres::Config,
        ep: &DbEndpoint,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), DbError> {
        let unreachable = |reason: String| DbError::Unreachable {
            engine: ep.engine,
            addr: ep.addr(),
            reason,
        };
        let (client, connection) = tokio::time::timeout(
            CONNECT_TIMEOUT + Duration::from_secs(1),
            cfg.connect(tokio_postgres::NoTls),
        )
        .await
        .map_err(|_| unreachable("connecting timed out".into()))?
        .map_err(|e| match err(ep, &e) {
            DbError::Query { reason, .. } => unreachable(reason),
            other => other,
        })?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection ended");
            }
        });
        Ok((client, task))
    }

    pub(super) async fn connect(
        ep: &DbEndpoint,
        password: Option<String>,
    ) -> Result<(Conn, Vec<tokio::task::JoinHandle<()>>), DbError> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&ep.host)
            .port(ep.port)
            .dbname(&ep.dbname)
            .user(&ep.user)
            .application_name(APPLICATION_NAME)
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(p) = password {
            cfg.password(p);
        }
        let attempts =
            futures::future::join_all((0..PG_CONNECTIONS).map(|_| connect_one(&cfg, ep))).await;
        let mut clients = Vec::with_capacity(PG_CONNECTIONS);
        let mut tasks = Vec::with_capacity(PG_CONNECTIONS);
        let mut failed = None;
        for a in attempts {
            match a {
                Ok((c, t)) => {
                    clients.push(c);
                    tasks.push(t);
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            tasks.iter().for_each(|t| t.abort());
            return Err(e);
        }
        let Some(client) = clients.first() else {
            return Err(unreachable_none(ep));
        };
        let setup = async {
            let primary: bool = client
                .query_one("SELECT NOT pg_is_in_recovery()", &[])
                .await
                .map_err(|e| err(ep, &e))?
                .get(0);
            if !primary {
                return Ok(());
            }
            for stmt in [
                "CREATE TABLE IF NOT EXISTS entries (\
                   id VARCHAR(200) PRIMARY KEY, \
                   body TEXT NOT NULL, \
                   region TEXT NOT NULL, \
                   created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
                "CREATE INDEX IF NOT EXISTS entries_created_at ON entries (created_at)",
            ] {
                if let Err(e) = client.batch_execute(stmt).await {
                    // Two applications creating the table at once: the loser sees a
                    // duplicate; the table is there either way.
                    let dup = e.code() == Some(&SqlState::UNIQUE_VIOLATION)
                        || e.code() == Some(&SqlState::DUPLICATE_TABLE);
                    if !dup {
                        return Err(err(ep, &e));
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = setup {
            tasks.iter().for_each(|t| t.abort());
            return Err(e);
        }
        let clients = PgClients {
            clients,
            next: std::sync::atomic::AtomicUsize::new(0),
        };
        Ok((Conn::Pg(Arc::new(clients)), tasks))
    }

    fn unreachable_none(ep: &DbEndpoint) -> DbError {
        DbError::Unreachable {
            engine: ep.engine,
            addr: ep.addr(),
            reason: "no connection made".into(),
        }
    }

    fn entry(row: &tokio_postgres::Row) -> Entry {
        Entry {
            id: row.get(0),
            body: row.get(1),
            region: row.get(2),
            created_at: row.get(3),
        }
    }

    pub(super) async fn insert(
        c: &tokio_postgres::Client,
        ep: &DbEndpoint,
        id: &str,
        body: &str,
        region: &str,
    ) -> Result<Inserted, DbError> {
        let sql = format!(
            "INSERT INTO entries (id, body, region) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO NOTHING RETURNING id, body, region, {CREATED_AT}"
        );
        let rows = c
            .query(&sql, &[&id, &body, &region])
            .await
            .map_err(|e| err(ep, &e))?;
        if let Some(row) = rows.first() {
            return Ok(Inserted::Created(entry(row)));
        }
        match get(c, ep, id).await? {
            Some(e) => Ok(Inserted::Existing(e)),
            None => Err(DbError::Query {
                engine: ep.engine,
                addr: ep.addr(),
                reason: format!("id {id:?} conflicted but cannot be read back"),
            }),
        }
    }

    pub(super) async fn get(
        c: &tokio_postgres::Client,
        ep: &DbEndpoint,
        id: &str,
    ) -> Result<Option<Entry>, DbError> {
        let sql = format!("SELECT id, body, region, {CREATED_AT} FROM entries WHERE id = $1");
        match c.query_opt(&sql, &[&id]).await {
            Ok(row) => Ok(row.as_ref().map(entry)),
            Err(e) if missing_table(&e) => Ok(None),
            Err(e) => Err(err(ep, &e)),
        }
    }

    pub(super) async fn latest(
        c: &tokio_postgres::Client,
        ep: &DbEndpoint,
        n: u32,
    ) -> Result<Vec<Entry>, DbError> {
        let sql = format!(
            "SELECT id, body, region, {CREATED_AT} FROM entries \
             ORDER BY created_at DESC, id DESC LIMIT $1"
        );
        match c.query(&sql, &[&i64::from(n)]).await {
            Ok(rows) => Ok(rows.iter().map(entry).collect()),
            Err(e) if missing_table(&e) => Ok(Vec::new()),
            Err(e) => Err(err(ep, &e)),
        }
    }

    pub(super) async fn ids(
        c: &tokio_postgres::Client,
        ep: &DbEndpoint,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, DbError> {
        let rows = match after {
            Some(a) => {
                c.query(
                    "SELECT id FROM entries WHERE id > $1 ORDER BY id LIMIT $2",
                    &[&a, &i64::from(limit)],
                )
                .await
            }
            None => {
                c.query(
                    "SELECT id FROM entries ORDER BY id LIMIT $1",
                    &[&i64::from(limit)],
                )
                .await
            }
        };
        match rows {
            Ok(rows) => Ok(rows.iter().map(|r| r.get(0)).collect()),
            Err(e) if missing_table(&e) => Ok(Vec::new()),
            Err(e) => Err(err(ep, &e)),
        }
    }

    pub(super) async fn writable(
        c: &tokio_postgres::Client,
        ep: &DbEndpoint,
    ) -> Result<(), DbError> {
        let row = c
            .query_one(
                "SELECT pg_is_in_recovery(), current_setting('transaction_read_only')",
                &[],
            )
            .await
            .map_err(|e| err(ep, &e))?;
        let in_recovery: bool = row.get(0);
        let read_only: String = row.get(1);
        let reason = if in_recovery {
            "pg_is_in_recovery() is true: a standby"
        } else if read_only == "on" {
            "transaction_read_only is on"
        } else {
            return Ok(());
        };
        Err(DbError::ReadOnly {
            engine: ep.engine,
            addr: ep.addr(),
            reason: reason.into(),
        })
    }
}

mod my {
    //! MariaDB / MySQL statements.
    use super::*;
    use mysql_async::{Error as MyError, OptsBuilder, Pool, PoolConstraints, PoolOpts};

    const CREATED_AT: &str = "DATE_FORMAT(created_at, '%Y-%m-%dT%H:%i:%s.%fZ')";
    const ER_DUP_ENTRY: u16 = 1062;
    const ER_NO_SUCH_TABLE: u16 = 1146;
    /// "The MariaDB server is running with the --read-only option".
    const ER_OPTION_PREVENTS_STATEMENT: u16 = 1290;
    const ER_READ_ONLY_MODE: u16 = 1836;
    /// Connection-level server errors: shutdown, killed, too many connections, locked
    /// account (a fence), access denied.
    const CONNECTION_ERRORS: [u16; 7] = [1040, 1044, 1045, 1053, 1152, 1927, 4151];

    fn err(ep: &DbEndpoint, e: &MyError) -> DbError {
        let engine = ep.engine;
        let addr = ep.addr();
        match e {
            MyError::Server(s)
                if s.code == ER_OPTION_PREVENTS_STATEMENT || s.code == ER_READ_ONLY_MODE =>
            {
                DbError::ReadOnly {
                    engine,
                    addr,
                    reason: s.message.clone(),
                }
            }
            MyError::Server(s) if CONNECTION_ERRORS.contains(&s.code) => DbError::Unreachable {
                engine,
                addr,
                reason: s.message.clone(),
            },
            MyError::Server(s) => DbError::Query {
                engine,
                addr,
                reason: format!("{} (error {})", s.message, s.code),
            },
            other => {
                let mut reason = other.to_string();
                if let Some(src) = std::error::Error::source(other) {
                    let s = src.to_string();
                    if !reason.contains(&s) {
                        reason = format!("{reason}: {s}");
                    }
                }
                DbError::Unreachable {
                    engine,
                    addr,
                    reason,
                }
            }
        }
    }

    fn missing_table(e: &MyError) -> bool {
        matches!(e, MyError::Server(s) if s.code == ER_NO_SUCH_TABLE)
    }

    async fn conn(pool: &Pool, ep: &DbEndpoint) -> Result<mysql_async::Conn, DbError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, pool.get_conn()).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(match err(ep, &e) {
                DbError::Query { reason, .. } => DbError::Unreachable {
                    engine: ep.engine,
                    addr: ep.addr(),
                    reason,
                },
                other => other,
            }),
            Err(_) => Err(DbError::Unreachable {
                engine: ep.engine,
                addr: ep.addr(),
                reason: "connecting timed out".into(),
            }),
        }
    }

    pub(super) async fn connect(
        ep: &DbEndpoint,
        password: Option<String>,
    ) -> Result<Conn, DbError> {
        let constraints = PoolConstraints::new(0, 8).unwrap_or_default();
        let opts = OptsBuilder::default()
            .ip_or_hostname(ep.host.clone())
            .tcp_port(ep.port)
            .user(Some(ep.user.clone()))
            .pass(password)
            .db_name(Some(ep.dbname.clone()))
            // Stay on the address discovery gave (no switch to a local socket).
            .prefer_socket(false)
            .setup(vec!["SET time_zone = '+00:00'"])
            .pool_opts(PoolOpts::default().with_constraints(constraints));
        let pool = Pool::new(opts);
        let mut c = match conn(&pool, ep).await {
            Ok(c) => c,
            Err(e) => {
                tokio::spawn(pool.disconnect());
                return Err(e);
            }
        };
        let ready = async {
            let read_only: i64 = c
                .query_first("SELECT @@read_only")
                .await
                .map_err(|e| err(ep, &e))?
                .unwrap_or(1);
            if read_only == 0 {
                c.query_drop(
                    "CREATE TABLE IF NOT EXISTS entries (\
                       id VARCHAR(200) NOT NULL PRIMARY KEY, \
                       body MEDIUMTEXT NOT NULL, \
                       region VARCHAR(200) NOT NULL, \
                       created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
                       KEY entries_created_at (created_at)\
                     ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
                )
                .await
                .map_err(|e| err(ep, &e))?;
            }
            Ok::<(), DbError>(())
        }
        .await;
        drop(c);
        if let Err(e) = ready {
            tokio::spawn(pool.disconnect());
            return Err(e);
        }
        Ok(Conn::My(pool))
    }

    type Row = (String, String, String, String);

    fn entry((id, body, region, created_at): Row) -> Entry {
        Entry {
            id,
            body,
            region,
            created_at,
        }
    }

    pub(super) async fn insert(
        pool: &Pool,
        ep: &DbEndpoint,
        id: &str,
        body: &str,
        region: &str,
    ) -> Result<Inserted, DbError> {
        let mut c = conn(pool, ep).await?;
        let r = c
            .exec_drop(
                "INSERT INTO entries (id, body, region) VALUES (?, ?, ?)",
                (id, body, region),
            )
            .await;
        let existed = match r {
            Ok(()) => false,
            Err(MyError::Server(s)) if s.code == ER_DUP_ENTRY => true,
            Err(e) => return Err(err(ep, &e)),
        };
        let row = read(&mut c, ep, id).await?.ok_or_else(|| DbError::Query {
            engine: ep.engine,
            addr: ep.addr(),
            reason: format!("id {id:?} was written but cannot be read back"),
        })?;
        Ok(if existed {
            Inserted::Existing(row)
        } else {
            Inserted::Created(row)
        })
    }

    async fn read(
        c: &mut mysql_async::Conn,
        ep: &DbEndpoint,
        id: &str,
    ) -> Result<Option<Entry>, DbError> {
        let sql = format!("SELECT id, body, region, {CREATED_AT} FROM entries WHERE id = ?");
        match c.exec_first::<Row, _, _>(sql, (id,)).await {
            Ok(r) => Ok(r.map(entry)),
            Err(e) if missing_table(&e) => Ok(None),
            Err(e) => Err(err(ep, &e)),
        }
    }

    pub(super) async fn get(
        pool: &Pool,
        ep: &DbEndpoint,
        id: &str,
    ) -> Result<Option<Entry>, DbError> {
        let mut c = conn(pool, ep).await?;
        read(&mut c, ep, id).await
    }

    pub(super) async fn latest(
        pool: &Pool,
        ep: &DbEndpoint,
        n: u32,
    ) -> Result<Vec<Entry>, DbError> {
        let mut c = conn(pool, ep).await?;
        let sql = format!(
            "SELECT id, body, region, {CREATED_AT} FROM entries \
             ORDER BY created_at DESC, id DESC LIMIT ?"
        );
        match c.exec::<Row, _, _>(sql, (n,)).await {
            Ok(rows) => Ok(rows.into_iter().map(entry).collect()),
            Err(e) if missing_table(&e) => Ok(Vec::new()),
            Err(e) => Err(err(ep, &e)),
        }
    }

    pub(super) async fn ids(
        pool: &Pool,
        ep: &DbEndpoint,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, DbError> {
        let mut c = conn(pool, ep).await?;
        let r = match after {
            Some(a) => {
                c.exec::<String, _, _>(
                    "SELECT id FROM entries WHERE id > ? ORDER BY id LIMIT ?",
                    (a, limit),
                )
                .await
            }
            None => {
                c.exec::<String, _, _>("SELECT id FROM entries ORDER BY id LIMIT ?", (limit,))
                    .await
            }
        };
        match r {
            Ok(ids) => Ok(ids),
            Err(e) if missing_table(&e) => Ok(Vec::new()),
            Err(e) => Err(err(ep, &e)),
        }
    }

    pub(super) async fn writable(pool: &Pool, ep: &DbEndpoint) -> Result<(), DbError> {
        let mut c = conn(pool, ep).await?;
        let read_only: Option<i64> = c
            .query_first("SELECT @@global.read_only")
            .await
            .map_err(|e| err(ep, &e))?;
        if read_only == Some(0) {
            Ok(())
        } else {
            Err(DbError::ReadOnly {
                engine: ep.engine,
                addr: ep.addr(),
                reason: "@@read_only is on".into(),
            })
        }
    }
}
