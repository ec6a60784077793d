//! Drill reports for the dashboard: `lifeboat drill` posts its report when it ends
//! (`POST /v1/drills`), the controller keeps the newest [`KEEP`] in
//! `<state_dir>/drills/` (`<id>.json`: the listing and the JSON report; `<id>.html`),
//! lists them (`GET /v1/drills`, newest first) and serves each HTML report
//! (`GET /drills/<id>`). With several controllers the leader takes the upload and keeps
//! it in its own state directory.

use super::*;
use axum::extract::Path as UrlPath;

/// How many reports are kept; older ones are removed when a new one arrives.
pub(super) const KEEP: usize = 50;
/// The largest upload taken (a 100-fault schedule's HTML report is about 1 MB).
pub(super) const MAX_UPLOAD: usize = 32 << 20;

fn dir(c: &Controller) -> std::path::PathBuf {
    c.cfg.controller.state_dir.join("drills")
}

/// A report's id: its start time and scenario, nothing a path could be made of.
fn report_id(l: &DrillListing) -> String {
    let scenario: String = l
        .scenario
        .chars()
        .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '-' })
        .take(40)
        .collect();
    format!("{}-{scenario}", l.started_at_unix_ms)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 80 && id.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
}

pub(super) async fn upload(
    State(c): State<Arc<Controller>>,
    headers: HeaderMap,
    body: Result<JsonBody<DrillUpload>, ApiError>,
) -> Result<Json<DrillListing>, ApiError> {
    c.token.check(&headers)?;
    let JsonBody(mut up) = body?;
    let id = report_id(&up.listing);
    up.listing.id = id.clone();
    let dir = dir(&c);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::internal(format!("creating {}: {e}", dir.display())))?;
    let json = serde_json::to_vec(&serde_json::json!({
        "listing": up.listing,
        "report": up.report,
    }))
    .map_err(|e| ApiError::internal(e.to_string()))?;
    // The HTML first: a listing is only ever read with its report beside it.
    for (name, bytes) in [
        (format!("{id}.html"), up.html.into_bytes()),
        (format!("{id}.json"), json),
    ] {
        let path = dir.join(&name);
        let tmp = dir.join(format!(".{name}.tmp"));
        tokio::fs::write(&tmp, &bytes)
            .await
            .map_err(|e| ApiError::internal(format!("writing {}: {e}", tmp.display())))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| ApiError::internal(format!("renaming to {}: {e}", path.display())))?;
    }
    // Keep the newest KEEP.
    let listings = read_listings(&dir).await;
    for old in listings.iter().skip(KEEP) {
        for ext in ["json", "html"] {
            let _ = tokio::fs::remove_file(dir.join(format!("{}.{ext}", old.id))).await;
        }
    }
    tracing::info!(id, "drill report stored");
    Ok(Json(up.listing))
}

/// Every stored listing, newest first; a file that does not parse is skipped with a
/// warning (it is not ours, or half-written by an older version).
async fn read_listings(dir: &std::path::Path) -> Vec<DrillListing> {
    let mut out = Vec::new();
    let Ok(mut rd) = tokio::fs::read_dir(dir).await else {
        return out;
    };
    while let Ok(Some(e)) = rd.next_entry().await {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let parsed = tokio::fs::read(&p)
            .await
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| serde_json::from_value::<DrillListing>(v["listing"].clone()).ok());
        match parsed {
            Some(l) => out.push(l),
            None => tracing::warn!("{}: not a drill report, skipped", p.display()),
        }
    }
    out.sort_by(|a, b| {
        b.started_at_unix_ms
            .cmp(&a.started_at_unix_ms)
            .then(b.id.cmp(&a.id))
    });
    out
}

pub(super) async fn list(State(c): State<Arc<Controller>>) -> Json<Vec<DrillListing>> {
    Json(read_listings(&dir(&c)).await)
}

pub(super) async fn html(
    State(c): State<Arc<Controller>>,
    UrlPath(id): UrlPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    if !valid_id(&id) {
        return Err(ApiError::bad_request(format!(
            "{id:?} is not a drill report's id (GET /v1/drills lists them)"
        )));
    }
    let path = dir(&c).join(format!("{id}.html"));
    let body = tokio::fs::read_to_string(&path).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no drill report {id} (GET /v1/drills lists them)"),
            )
        } else {
            ApiError::internal(format!("reading {}: {e}", path.display()))
        }
    })?;
    Ok((
        [(
            axum::http::header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
        )],
        Html(body),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_no_path() {
        let l = DrillListing {
            id: String::new(),
            scenario: "../../etc/passwd region outage".into(),
            started_at_unix_ms: 1_796_180_645_678,
            finished_at_unix_ms: 0,
            runs: 1,
            recovered: 1,
            rto_median_ms: None,
            rto_max_ms: None,
            lost_acknowledged_writes: 0,
            dual_primary_samples: 0,
            passed: true,
            failures: vec![],
        };
        let id = report_id(&l);
        assert_eq!(id, "1796180645678-------etc-passwd-region-outage");
        assert!(valid_id(&id));
        for bad in ["", "../x", "a/b", "a.html", "a b", &"x".repeat(81)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
