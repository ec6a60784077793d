//! The agent's HTTP API: status, commands from the controller (bearer token, epoch
//! checked), its local journal and Prometheus metrics.

use crate::{Agent, CommandError};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use lifeboat_api::http::{ApiError, JsonBody};
use lifeboat_api::metrics::{family, health_value, sample};
use lifeboat_api::types::{
    AgentCommand, AgentStatus, CommandResponse, PromiseRequest, PromiseResponse,
};
use lifeboat_core::VantageId;
use std::sync::Arc;

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/command", post(command))
        .route("/v1/promise", post(promise))
        .route("/v1/journal", get(journal))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(agent)
}

async fn status(State(agent): State<Arc<Agent>>) -> Json<AgentStatus> {
    let s = agent.state();
    let now = tokio::time::Instant::now();
    Json(AgentStatus {
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
    })
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
    let mut out = String::new();
    family(
        &mut out,
        "lifeboat_agent_epoch",
        "gauge",
        "Highest epoch this agent has persisted.",
    );
    sample(
        &mut out,
        "lifeboat_agent_epoch",
        &[("region", &region)],
        s.epoch.0 as f64,
    );
    family(
        &mut out,
        "lifeboat_agent_active",
        "gauge",
        "1 while this region holds the lease and its roles are active.",
    );
    sample(
        &mut out,
        "lifeboat_agent_active",
        &[("region", &region)],
        f64::from(u8::from(s.active)),
    );
    family(
        &mut out,
        "lifeboat_agent_fenced",
        "gauge",
        "1 while this region is fenced.",
    );
    sample(
        &mut out,
        "lifeboat_agent_fenced",
        &[("region", &region)],
        f64::from(u8::from(s.fenced)),
    );
    family(
        &mut out,
        "lifeboat_agent_witness_lost",
        "gauge",
        "1 while this (active) region holds its lease on promises because no controller answers (rule 7, docs/architecture.md).",
    );
    sample(
        &mut out,
        "lifeboat_agent_witness_lost",
        &[("region", &region)],
        f64::from(u8::from(s.witness_lost)),
    );
    family(
        &mut out,
        "lifeboat_agent_promise_remaining_ms",
        "gauge",
        "Milliseconds this region still refuses to activate, having promised the active region (0 when no promise stands).",
    );
    sample(
        &mut out,
        "lifeboat_agent_promise_remaining_ms",
        &[("region", &region)],
        s.promised.as_ref().map_or(0.0, |p| p.remaining_ms as f64),
    );
    family(
        &mut out,
        "lifeboat_check_health",
        "gauge",
        "Check health at this vantage point: 1 healthy, 0 unhealthy, -1 unknown.",
    );
    let vantage = format!("agent:{region}");
    for (name, c) in agent.checks() {
        sample(
            &mut out,
            "lifeboat_check_health",
            &[("check", &name), ("vantage", &vantage)],
            health_value(c.status),
        );
    }
    family(
        &mut out,
        "lifeboat_role_lag_bytes",
        "gauge",
        "Replication lag of a data role, in bytes.",
    );
    for r in agent.role_statuses() {
        if let Some(lag) = r.lag_bytes {
            sample(
                &mut out,
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
            "text/plain; version=0.0.4",
        )],
        out,
    )
}
