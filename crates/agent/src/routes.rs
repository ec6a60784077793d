//! The agent's HTTP API: status, commands from the controller (bearer token, epoch
//! checked), its local journal and Prometheus metrics, and a read-only live page of
//! its own (`/`, drawn from `/v1/events`: see docs/agent.md).

use crate::{Agent, CommandError};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use lifeboat_api::http::{ApiError, JsonBody};
use lifeboat_api::metrics::health_value;
use lifeboat_api::types::{
    AgentCommand, AgentStatus, CommandResponse, PromiseRequest, PromiseResponse,
};
use lifeboat_core::VantageId;
use lifeboat_core::metrics::{Kind, Page};
use std::sync::Arc;

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/v1/events", get(events))
        .route("/v1/status", get(status))
        .route("/v1/command", post(command))
        .route("/v1/promise", post(promise))
        .route("/v1/journal", get(journal))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(agent)
}

async fn status(State(agent): State<Arc<Agent>>) -> Json<AgentStatus> {
    Json(status_view(&agent))
}

fn status_view(agent: &Agent) -> AgentStatus {
    let s = agent.state();
    let now = tokio::time::Instant::now();
    AgentStatus {
        region: agent.region.clone(),
        epoch: s.epoch,
        active: s.active,
        fenced: s.fenced,
        lease_remaining_ms: s.lease_deadline.map(|d| {
            if d > now {
                i64::try_from(d.duration_since(now).as_millis()).unwrap_or(i64::MAX)
            } else {
                -i64::try_from(now.duration_since(d).as_millis()).unwrap_or(i64::MAX)
            }
        }),
        controller_reachable: s.controller_reachable,
        vantage: VantageId::Agent(agent.region.clone()),
        checks: agent.checks(),
        roles: agent.role_statuses(),
        promised: s.promised,
        witness_lost: s.witness_lost,
    }
}

/// The agent's own page: read-only (no actions: moves are the controller's), compiled
/// into the binary like the controller's dashboard.
async fn page() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'",
        )],
        axum::response::Html(include_str!("page.html")),
    )
}

/// One message of `/v1/events`.
#[derive(serde::Serialize)]
struct PageUpdate {
    /// The first message of a connection: the page starts afresh.
    reset: bool,
    now_unix_ms: u64,
    /// The controller's dashboard (the page links to it).
    controller: String,
    status: AgentStatus,
    /// Journal entries after the last message's (the first: the newest 200).
    journal: Vec<lifeboat_core::JournalEntry>,
}

/// Server-sent events: the status twice a second, and what the journal gained.
async fn events(
    State(agent): State<Arc<Agent>>,
) -> axum::response::sse::Sse<
    impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    let stopping = agent.stopping.clone().cancelled_owned();
    let s = futures::stream::unfold((agent, 0u64, true), |(agent, seq, first)| async move {
        if !first {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        // Off the runtime: reading the journal waits for its writer, and a hung disk
        // must not stall the threads the lease loop runs on (rule 2).
        let reader = agent.clone();
        let mut journal = tokio::task::spawn_blocking(move || reader.journal(seq))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        if first {
            let skip = journal.len().saturating_sub(200);
            journal.drain(..skip);
        }
        let next = journal.last().map_or(seq, |e| e.seq);
        let update = PageUpdate {
            reset: first,
            now_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            controller: agent.cfg.controller.api_addr.to_string(),
            status: status_view(&agent),
            journal,
        };
        let data = serde_json::to_string(&update).unwrap_or_default();
        Some((
            Ok(Event::default().event("update").data(data)),
            (agent, next, false),
        ))
    });
    Sse::new(s.take_until(stopping)).keep_alive(KeepAlive::default())
}

async fn command(
    State(agent): State<Arc<Agent>>,
    headers: HeaderMap,
    body: Result<JsonBody<AgentCommand>, ApiError>,
) -> Result<Json<CommandResponse>, ApiError> {
    agent.token.check(&headers)?;
    let JsonBody(cmd) = body?;
    match agent.command(&cmd).await {
        Ok(detail) => Ok(Json(CommandResponse {
            epoch: agent.state().epoch,
            accepted: true,
            detail,
        })),
        Err(CommandError::Stale { got, seen }) => Err(ApiError::conflict(format!(
            "stale epoch {got}: this agent has seen epoch {seen}"
        ))),
        Err(CommandError::Failed(msg)) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, msg)),
    }
}

/// Agent -> agent: the active region asks for a witness-loss promise (rule 7, docs/architecture.md).
async fn promise(
    State(agent): State<Arc<Agent>>,
    headers: HeaderMap,
    body: Result<JsonBody<PromiseRequest>, ApiError>,
) -> Result<Json<PromiseResponse>, ApiError> {
    agent.token.check(&headers)?;
    let JsonBody(req) = body?;
    if agent.cfg.region(&req.region).is_none() {
        return Err(ApiError::bad_request(format!(
            "no region named {:?} in this deployment",
            req.region.as_str()
        )));
    }
    Ok(Json(agent.promise(&req).await))
}

#[derive(serde::Deserialize)]
struct Since {
    #[serde(default)]
    since: u64,
}

async fn journal(
    State(agent): State<Arc<Agent>>,
    Query(q): Query<Since>,
) -> Result<Json<Vec<lifeboat_core::JournalEntry>>, ApiError> {
    agent
        .journal(q.since)
        .map(Json)
        .map_err(|e| ApiError::internal(format!("{e:#}")))
}

async fn metrics(State(agent): State<Arc<Agent>>) -> impl IntoResponse {
    let s = agent.state();
    let region = agent.region.to_string();
    let mut out = Page::new();
    out.family(
        "lifeboat_agent_epoch",
        Kind::Gauge,
        "Highest epoch this agent has persisted.",
    );
    out.sample(
        "lifeboat_agent_epoch",
        &[("region", &region)],
        s.epoch.0 as f64,
    );
    out.family(
        "lifeboat_agent_active",
        Kind::Gauge,
        "1 while this region holds the lease and its roles are active.",
    );
    out.sample(
        "lifeboat_agent_active",
        &[("region", &region)],
        f64::from(u8::from(s.active)),
    );
    out.family(
        "lifeboat_agent_fenced",
        Kind::Gauge,
        "1 while this region is fenced.",
    );
    out.sample(
        "lifeboat_agent_fenced",
        &[("region", &region)],
        f64::from(u8::from(s.fenced)),
    );
    out.family("lifeboat_agent_witness_lost",
        Kind::Gauge,
        "1 while this (active) region holds its lease on promises because no controller answers (rule 7, docs/architecture.md).",
    );
    out.sample(
        "lifeboat_agent_witness_lost",
        &[("region", &region)],
        f64::from(u8::from(s.witness_lost)),
    );
    out.family("lifeboat_agent_promise_remaining_ms",
        Kind::Gauge,
        "Milliseconds this region still refuses to activate, having promised the active region (0 when no promise stands).",
    );
    out.sample(
        "lifeboat_agent_promise_remaining_ms",
        &[("region", &region)],
        s.promised.as_ref().map_or(0.0, |p| p.remaining_ms as f64),
    );
    out.family(
        "lifeboat_check_health",
        Kind::Gauge,
        "Check health at this vantage point: 1 healthy, 0 unhealthy, -1 unknown.",
    );
    let vantage = format!("agent:{region}");
    for (name, c) in agent.checks() {
        out.sample(
            "lifeboat_check_health",
            &[("check", &name), ("vantage", &vantage)],
            health_value(c.status),
        );
    }
    out.family(
        "lifeboat_role_lag_bytes",
        Kind::Gauge,
        "Replication lag of a data role, in bytes.",
    );
    for r in agent.role_statuses() {
        if let Some(lag) = r.lag_bytes {
            out.sample(
                "lifeboat_role_lag_bytes",
                &[("region", &region), ("role", &r.name)],
                lag as f64,
            );
        }
    }
    agent.render_extra_metrics(&mut out);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            lifeboat_core::metrics::CONTENT_TYPE,
        )],
        out.render(),
    )
}
