//! The table server of one region (docs/tables.md):
//! - the API port: DynamoDB's JSON protocol (`POST /` with `X-Amz-Target`), every
//!   request verified with AWS Signature V4 against the configured access keys;
//! - the peer port: what the other regions' table servers pull (`/lifeboat/v1/…`,
//!   the deployment's bearer token), the conflicts list, status and `/metrics`;
//! - one puller per peer region ([`crate::replicate`]), the TTL sweeper and the
//!   tombstone collector.

use crate::api;
use crate::error::{ApiError, CONTENT_TYPE};
use crate::replicate::{self, Peer, Replication};
use crate::sigv4;
use crate::store::Store;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The largest request body taken (DynamoDB's limit is 16 MB).
pub const MAX_BODY: usize = 16 << 20;
/// How often expired items (TTL) are looked for.
pub const TTL_EVERY: Duration = Duration::from_secs(1);
/// How often tombstones every region has applied are collected.
pub const TOMBSTONES_EVERY: Duration = Duration::from_secs(10);
/// The most tombstones collected in one transaction.
pub const TOMBSTONE_BATCH: usize = 1000;

/// The access keys the server accepts: id → secret.
pub type AccessKeys = HashMap<String, String>;

#[derive(Debug, Clone, Default)]
pub struct TableOptions {
    pub keys: AccessKeys,
    /// The deployment's bearer token: the peer port requires it, and the pullers
    /// send it.
    pub token: String,
    /// The other regions' table servers.
    pub peers: Vec<Peer>,
}

pub struct TableServer {
    store: Arc<Store>,
    opts: TableOptions,
    replication: Arc<Replication>,
    requests: AtomicU64,
}

impl std::fmt::Debug for TableServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableServer")
            .field("store", &self.store)
            .field("peers", &self.opts.peers)
            .finish()
    }
}

impl TableServer {
    pub fn new(store: Arc<Store>, opts: TableOptions) -> Arc<TableServer> {
        Arc::new(TableServer {
            replication: Replication::new(&opts.peers),
            store,
            opts,
            requests: AtomicU64::new(0),
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The API port's routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .fallback(dynamodb)
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
            .with_state(self.clone())
    }

    /// The peer port's routes.
    pub fn peer_router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/lifeboat/v1/changes", get(changes))
            .route("/lifeboat/v1/conflicts", get(conflicts))
            .route("/lifeboat/v1/status", get(status))
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(self.clone())
    }

    /// Serve both ports, pull from every peer and sweep expired items until
    /// `cancel`; then stop in order (the listeners, the pullers, the sweeper, the
    /// store's writer after what is queued).
    pub async fn run(
        self: Arc<Self>,
        api: tokio::net::TcpListener,
        peer: tokio::net::TcpListener,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(self.clone().sweep_ttl(cancel.clone()));
        tasks.spawn(self.clone().sweep_tombstones(cancel.clone()));
        for p in self.opts.peers.clone() {
            tasks.spawn(replicate::pull(
                self.store.clone(),
                p,
                Some(self.opts.token.clone()),
                self.replication.clone(),
                cancel.clone(),
            ));
        }
        let (c1, c2) = (cancel.clone(), cancel.clone());
        let api_srv = axum::serve(api, self.router())
            .with_graceful_shutdown(async move { c1.cancelled().await });
        let peer_srv = axum::serve(peer, self.peer_router())
            .with_graceful_shutdown(async move { c2.cancelled().await });
        let (a, p) = tokio::join!(
            async {
                let r = api_srv.await;
                cancel.cancel();
                r
            },
            async {
                let r = peer_srv.await;
                cancel.cancel();
                r
            }
        );
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r {
                tracing::error!("a table server task panicked: {e}");
            }
        }
        self.store.close();
        a.map_err(anyhow::Error::from)?;
        p.map_err(anyhow::Error::from)?;
        Ok(())
    }

    async fn sweep_ttl(self: Arc<Self>, cancel: CancellationToken) {
        let mut every = tokio::time::interval(TTL_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            let now_s = crate::store::now_ms() / 1000;
            match self.store.expire_ttl(now_s, 1000).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!("TTL: {n} expired items deleted"),
                Err(e) => tracing::warn!("TTL sweep: {e}"),
            }
        }
    }

    /// Collect tombstones every region has applied (and older than the store's
    /// grace period), in batches, every [`TOMBSTONES_EVERY`].
    async fn sweep_tombstones(self: Arc<Self>, cancel: CancellationToken) {
        let peers = self.peer_names();
        let mut every = tokio::time::interval(TOMBSTONES_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            // Batch after batch while batches are full, each its own transaction
            // (other writes go between).
            while !cancel.is_cancelled() {
                match self.store.collect_tombstones(&peers, TOMBSTONE_BATCH).await {
                    Ok(n) => {
                        if n > 0 {
                            tracing::debug!("{n} tombstones collected");
                        }
                        if n < TOMBSTONE_BATCH {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!("tombstone collection: {e}");
                        break;
                    }
                }
            }
        }
    }

    /// The other regions' names.
    pub fn peer_names(&self) -> Vec<String> {
        self.opts.peers.iter().map(|p| p.region.clone()).collect()
    }

    /// Status: this region's tables, the replication from each peer, conflicts.
    pub async fn status(&self) -> Result<serde_json::Value, ApiError> {
        let conflicts = self.store.conflict_counts().await?;
        let by_origin = self.store.changes_by_origin().await?;
        let tombstones = self.store.tombstones(&self.peer_names()).await?;
        Ok(serde_json::json!({
            "changes_by_origin": by_origin,
            "region": self.store.region(),
            "tables": self.store.table_names(),
            "latest_seq": *self.store.latest().borrow(),
            "replication": self.replication.states(),
            "conflicts": conflicts,
            "stream_records": self
                .store
                .stream_sizes(crate::store::now_ms() - crate::streams::RETENTION_MS)
                .await?,
            "tombstones": tombstones,
        }))
    }
}

fn bearer_ok(headers: &HeaderMap, token: &str) -> bool {
    let Some(got) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    // Constant time in the token's length.
    let (a, b) = (got.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(serde_json::json!({"error": "missing or wrong bearer token (the deployment's [auth] token)"})),
    )
        .into_response()
}

fn json_error(e: ApiError) -> Response {
    (
        e.status,
        axum::Json(serde_json::json!({"error": e.message})),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct ChangesQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    wait_ms: Option<u64>,
    /// The pulling region, and its cursors (`replicate::parse_cursors`).
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    cursors: Option<String>,
}

async fn changes(
    State(s): State<Arc<TableServer>>,
    headers: HeaderMap,
    q: Result<Query<ChangesQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if !bearer_ok(&headers, &s.opts.token) {
        return unauthorized();
    }
    let Ok(Query(q)) = q else {
        return json_error(ApiError::validation(
            "after, limit and wait_ms must be whole numbers",
        ));
    };
    // The puller's report: its cursors, its own newest change under its name.
    match (&q.region, &q.cursors) {
        (None, None) => {}
        (Some(region), Some(cursors)) => {
            let mut applied = match replicate::parse_cursors(cursors) {
                Ok(c) => c,
                Err(e) => return json_error(ApiError::validation(e)),
            };
            let Some(own) = applied.remove(region) else {
                return json_error(ApiError::validation(format!(
                    "cursors: no entry for the pulling region {region:?} (its own newest change)"
                )));
            };
            if let Err(e) = s.store.peer_applied(region, own, applied).await {
                tracing::warn!("noting what region {region} has applied: {e}");
            }
        }
        _ => {
            return json_error(ApiError::validation(
                "region and cursors go together: the pulling region and how far it has applied each region's changes (cursors=a:12,c:7)",
            ));
        }
    }
    let limit = q.limit.unwrap_or(replicate::BATCH).clamp(1, 10_000);
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(30_000));
    match replicate::serve_changes(&s.store, q.after, limit, wait).await {
        Ok(page) => axum::Json(page).into_response(),
        Err(e) => json_error(e),
    }
}

#[derive(serde::Deserialize)]
struct ConflictsQuery {
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<usize>,
}

async fn conflicts(
    State(s): State<Arc<TableServer>>,
    headers: HeaderMap,
    q: Result<Query<ConflictsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if !bearer_ok(&headers, &s.opts.token) {
        return unauthorized();
    }
    let Ok(Query(q)) = q else {
        return json_error(ApiError::validation(
            "table is a name; after and limit are whole numbers",
        ));
    };
    let limit = q.limit.unwrap_or(1000).clamp(1, 100_000);
    match s.store.conflicts(q.table, q.after, limit).await {
        Ok(c) => axum::Json(c).into_response(),
        Err(e) => json_error(e),
    }
}

async fn status(State(s): State<Arc<TableServer>>, headers: HeaderMap) -> Response {
    if !bearer_ok(&headers, &s.opts.token) {
        return unauthorized();
    }
    match s.status().await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => json_error(e),
    }
}

async fn metrics(State(s): State<Arc<TableServer>>) -> Response {
    use lifeboat_core::metrics::{Kind, Page};
    let me = s.store.region().to_owned();
    let mut out = Page::new();
    out.family(
        "lifeboat_table_replication_lag_seconds",
        Kind::Gauge,
        "From a change's write in region `from` to its apply in region `to`, for the last change applied (0 when caught up).",
    );
    out.family(
        "lifeboat_table_replication_pending_changes",
        Kind::Gauge,
        "Changes of region `from` not yet applied in region `to`, as of the last pull.",
    );
    out.family(
        "lifeboat_table_replication_up",
        Kind::Gauge,
        "1 if the last pull from region `from` succeeded.",
    );
    let states = s.replication.states();
    for p in &states {
        let labels = [("from", p.region.as_str()), ("to", me.as_str())];
        out.sample(
            "lifeboat_table_replication_lag_seconds",
            &labels,
            p.lag_ms.unwrap_or(0).max(0) as f64 / 1000.0,
        );
        out.sample(
            "lifeboat_table_replication_pending_changes",
            &labels,
            p.pending as f64,
        );
        out.sample(
            "lifeboat_table_replication_up",
            &labels,
            if p.error.is_none() && p.last_contact_ms.is_some() {
                1.0
            } else {
                0.0
            },
        );
    }
    out.family(
        "lifeboat_table_conflicts_total",
        Kind::Counter,
        "Writes of this region that lost to a concurrent write of another (last writer wins), each recorded with both versions (lifeboat table conflicts).",
    );
    match s.store.conflict_counts().await {
        Ok(counts) => {
            for (table, n) in counts {
                out.sample(
                    "lifeboat_table_conflicts_total",
                    &[("region", me.as_str()), ("table", table.as_str())],
                    n as f64,
                );
            }
        }
        Err(e) => tracing::warn!("metrics: counting conflicts: {e}"),
    }
    out.family(
        "lifeboat_table_stream_records",
        Kind::Gauge,
        "Stream records each table has within the 24 h retention (its item changes in this region, its own and the replicated ones).",
    );
    match s
        .store
        .stream_sizes(crate::store::now_ms() - crate::streams::RETENTION_MS)
        .await
    {
        Ok(sizes) => {
            for (table, n) in sizes {
                out.sample(
                    "lifeboat_table_stream_records",
                    &[("region", me.as_str()), ("table", table.as_str())],
                    n as f64,
                );
            }
        }
        Err(e) => tracing::warn!("metrics: counting stream records: {e}"),
    }
    out.family(
        "lifeboat_table_change_log_seq",
        Kind::Gauge,
        "The newest change's sequence number in this region's change log (the stream).",
    );
    out.sample(
        "lifeboat_table_change_log_seq",
        &[("region", me.as_str())],
        *s.store.latest().borrow() as f64,
    );
    out.family(
        "lifeboat_table_tombstones",
        Kind::Gauge,
        "Tombstones (deleted items' versions) held in this region: each is kept until every region has applied its delete and it is older than the grace period.",
    );
    out.family(
        "lifeboat_table_tombstones_collected_total",
        Kind::Counter,
        "Tombstones collected in this region (deleted once every region had applied them and the grace period had passed).",
    );
    match s.store.tombstones(&s.peer_names()).await {
        Ok(t) => {
            out.sample(
                "lifeboat_table_tombstones",
                &[("region", me.as_str())],
                t.held as f64,
            );
            out.sample(
                "lifeboat_table_tombstones_collected_total",
                &[("region", me.as_str())],
                t.collected as f64,
            );
        }
        Err(e) => tracing::warn!("metrics: counting tombstones: {e}"),
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            lifeboat_core::metrics::CONTENT_TYPE,
        )],
        out.render(),
    )
        .into_response()
}

async fn dynamodb(
    State(s): State<Arc<TableServer>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let id = s.requests.fetch_add(1, Ordering::Relaxed);
    let request_id = format!("LB{id:020}");
    let mut r = match answer(&s, &method, &uri, &headers, &body).await {
        Ok(v) => (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
            v.to_string(),
        )
            .into_response(),
        Err(e) => e.into_response(),
    };
    if let Ok(v) = axum::http::HeaderValue::from_str(&request_id) {
        r.headers_mut().insert("x-amzn-requestid", v);
    }
    r
}

async fn answer(
    s: &TableServer,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<serde_json::Value, ApiError> {
    if method == Method::GET && uri.path() == "/healthz" {
        return Ok(serde_json::json!({"ok": true}));
    }
    sigv4::verify(
        method.as_str(),
        uri.path(),
        uri.query().unwrap_or(""),
        headers,
        body,
        &s.opts.keys,
        std::time::SystemTime::now(),
    )
    .map_err(|e| ApiError::auth(e.code(), e.to_string()))?;
    if method != Method::POST {
        return Err(ApiError::unknown_operation(format!(
            "{method} {}: DynamoDB's protocol is POST / with X-Amz-Target",
            uri.path()
        )));
    }
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Some(op) = target.strip_prefix("DynamoDBStreams_20120810.") {
        let req: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::serialization(format!("the request body is not valid JSON: {e}"))
        })?;
        return crate::streams::handle(&s.store, op, &req).await;
    }
    let Some(op) = target.strip_prefix("DynamoDB_20120810.") else {
        return Err(ApiError::unknown_operation(if target.is_empty() {
            "the request has no X-Amz-Target header (DynamoDB_20120810.<Operation>)".to_owned()
        } else {
            format!("X-Amz-Target {target:?} is not a DynamoDB_20120810 operation")
        }));
    };
    let req: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::serialization(format!("the request body is not valid JSON: {e}")))?;
    api::handle(&s.store, op, &req).await
}
