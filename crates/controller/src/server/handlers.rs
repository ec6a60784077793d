//! The controller's HTTP handlers: reads (status, regions, health, journal, routing,
//! discovery), the operator's moves, and the agents' lease requests and reports. Each
//! turns a request into an [`Event`] for [`Controller::step`] or reads its views.

use super::*;

pub(super) fn internal(e: anyhow::Error) -> ApiError {
    tracing::error!("{e:#}");
    ApiError::internal(format!("{e:#}"))
}

pub(super) async fn status(State(c): State<Arc<Controller>>) -> Json<ControllerStatus> {
    Json(c.status_view().await)
}

pub(super) async fn regions(State(c): State<Arc<Controller>>) -> Json<Vec<RegionView>> {
    Json(c.status_view().await.regions)
}

pub(super) async fn health(State(c): State<Arc<Controller>>) -> Json<Vec<CheckView>> {
    Json(c.health_view())
}

#[derive(serde::Deserialize)]
pub(super) struct Since {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    limit: Option<usize>,
}

pub(super) async fn journal(
    State(c): State<Arc<Controller>>,
    q: Result<Query<Since>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<JournalEntry>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(format!("bad query: {e}")))?;
    c.store
        .journal(q.since, q.limit.unwrap_or(10_000))
        .await
        .map(Json)
        .map_err(internal)
}

/// While recovering (no state, or state older than the agents') the controller does
/// not know the active region: it says so (503) rather than answer "none", so that
/// agents' secondary DNS and applications keep the last answer they had (the region
/// that is in fact still serving) instead of dropping it.
pub(super) async fn unknown_while_recovering(c: &Controller) -> Result<(), ApiError> {
    let m = c.machine.lock().await;
    if m.recovery.as_ref().is_some_and(|r| r.strict) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}: the active region is not known yet", m.condition()),
        ));
    }
    Ok(())
}

pub(super) async fn routing(
    State(c): State<Arc<Controller>>,
) -> Result<Json<RoutingTable>, ApiError> {
    unknown_while_recovering(&c).await?;
    Ok(Json(c.routing.borrow().clone()))
}

pub(super) async fn discovery(
    State(c): State<Arc<Controller>>,
) -> Result<Json<Discovery>, ApiError> {
    unknown_while_recovering(&c).await?;
    let rt = c.routing.borrow().clone();
    let address = rt
        .active
        .as_ref()
        .and_then(|a| c.cfg.region(a))
        .and_then(|r| r.address)
        .map(|a| a.to_string());
    let endpoints = match (&c.opts.discovery, &rt.active) {
        (Some(f), Some(active)) => f(&c.cfg, active),
        _ => BTreeMap::new(),
    };
    Ok(Json(Discovery {
        epoch: rt.epoch,
        active: rt.active,
        address,
        endpoints,
    }))
}

pub(super) async fn operator_move(
    c: &Controller,
    headers: &HeaderMap,
    body: Result<JsonBody<MoveRequest>, ApiError>,
    switchover: bool,
) -> Result<(StatusCode, Json<MoveResponse>), ApiError> {
    c.token.check(headers)?;
    let JsonBody(req) = body?;
    if c.cfg.region(&req.to).is_none() {
        return Err(ApiError::bad_request(format!(
            "no region named {:?} (regions: {})",
            req.to.as_str(),
            c.cfg.regions.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let ev = if switchover {
        Event::Switchover { to: req.to.clone() }
    } else {
        Event::Failover {
            to: req.to.clone(),
            force: req.force,
        }
    };
    let reply = c.step(ev).await.map_err(internal)?;
    let epoch = c.machine.lock().await.epoch;
    match reply {
        Some(Reply::Move(Ok(detail))) => Ok((
            StatusCode::ACCEPTED,
            Json(MoveResponse {
                accepted: true,
                epoch,
                detail,
            }),
        )),
        Some(Reply::Move(Err(detail))) => Err(ApiError::conflict(detail)),
        _ => Err(ApiError::internal("no reply from the state machine")),
    }
}

pub(super) async fn failover(
    State(c): State<Arc<Controller>>,
    headers: HeaderMap,
    body: Result<JsonBody<MoveRequest>, ApiError>,
) -> Result<(StatusCode, Json<MoveResponse>), ApiError> {
    operator_move(&c, &headers, body, false).await
}

pub(super) async fn switchover(
    State(c): State<Arc<Controller>>,
    headers: HeaderMap,
    body: Result<JsonBody<MoveRequest>, ApiError>,
) -> Result<(StatusCode, Json<MoveResponse>), ApiError> {
    operator_move(&c, &headers, body, true).await
}

pub(super) async fn lease(
    State(c): State<Arc<Controller>>,
    headers: HeaderMap,
    body: Result<JsonBody<LeaseRequest>, ApiError>,
) -> Result<Json<LeaseResponse>, ApiError> {
    c.token.check(&headers)?;
    let JsonBody(req) = body?;
    if c.cfg.region(&req.region).is_none() {
        return Err(ApiError::bad_request(format!(
            "no region named {:?}",
            req.region.as_str()
        )));
    }
    if !c.may_grant() {
        // Not the leader any more, or its etcd lease may be about to expire: not a
        // decision (503), so the active agent holds on promises (rule 7) until it
        // finds the new leader.
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this controller's leadership is ending: ask the leader",
        ));
    }
    let reply = c
        .step(Event::LeaseRequest {
            region: req.region,
            epoch: req.epoch,
        })
        .await
        .map_err(internal)?;
    let m = c.machine.lock().await;
    let (granted, reason) = match reply {
        // Checked again after the step: the grant leaves only while the leadership
        // that made it holds (the old leader's last grant precedes the new one's
        // takeover, docs/architecture.md).
        Some(Reply::Lease { granted: true, .. }) if !c.may_grant() => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "this controller's leadership ended: ask the leader",
            ));
        }
        Some(Reply::Lease { granted, reason }) => (granted, reason),
        Some(Reply::LeaseUndecided { reason }) => {
            // Not a decision: the controller cannot judge yet. 503 makes the active
            // agent treat it as a lost witness (promises, rule 7) instead of
            // letting its lease run out on a refusal.
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason));
        }
        _ => (false, "no reply from the state machine".into()),
    };
    Ok(Json(LeaseResponse {
        granted,
        epoch: m.epoch,
        active: m.active.clone(),
        ttl_ms: u64::try_from(c.cfg.failover.lease_ttl.as_millis()).unwrap_or(u64::MAX),
        reason,
    }))
}

pub(super) async fn report(
    State(c): State<Arc<Controller>>,
    headers: HeaderMap,
    body: Result<JsonBody<AgentReport>, ApiError>,
) -> Result<Json<ReportResponse>, ApiError> {
    c.token.check(&headers)?;
    let JsonBody(r) = body?;
    if c.cfg.region(&r.region).is_none() {
        return Err(ApiError::bad_request(format!(
            "no region named {:?}",
            r.region.as_str()
        )));
    }
    let ready = r.roles.iter().all(|s| s.ready_to_promote);
    let caught_up = r.roles.iter().all(|s| s.caught_up);
    let detail = r
        .roles
        .iter()
        .filter(|s| !s.ready_to_promote || !s.caught_up)
        .map(|s| format!("{}: {}", s.name, s.detail))
        .collect::<Vec<_>>()
        .join("; ");
    let ev = Event::Report {
        region: r.region.clone(),
        epoch: r.epoch,
        active: r.active,
        fenced: r.fenced,
        ready,
        caught_up,
        detail,
        promised: r.promised.clone(),
        witness_lost: r.witness_lost,
        view_active: r.view_active.clone(),
    };
    c.note_report(&r.region, Instant::now());
    lock(&c.lag).record(crate::store::unix_ms(), &r.region, &r.roles);
    lock(&c.reports).insert(r.region.clone(), (Instant::now(), r));
    c.step(ev).await.map_err(internal)?;
    let m = c.machine.lock().await;
    Ok(Json(ReportResponse {
        epoch: m.epoch,
        active: m.active.clone(),
    }))
}
