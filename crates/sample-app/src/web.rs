//! HTTP: the front page (HTML) and the function tier (JSON).
//!
//! Guarantees: every text that came from outside (rows, the message, error messages,
//! names) is HTML-escaped on the page; every JSON error is `{"error": "..."}` with a status
//! that says whose fault it is (400 bad request, 404 unknown id, 409 id reused with another
//! body, 503 database or discovery unavailable, 500 anything else); `POST /api/entries` is
//! idempotent by id, so a client retrying after an unknown outcome never gets an error for
//! a write that did commit.

use crate::db::{Database, DbError, Entry, Inserted, MAX_ID_LEN};
use crate::objects::MessageSource;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// Rows shown on the front page.
pub const PAGE_ROWS: u32 = 20;
/// Most ids one `GET /api/entries` returns.
pub const MAX_IDS: u32 = 100_000;

/// What every handler shares.
#[derive(Debug)]
pub struct App {
    /// The region this process serves (`--region` / LIFEBOAT_REGION).
    pub region: String,
    /// LIFEBOAT_ROLE as the agent set it, if any.
    pub role: Option<String>,
    pub db: Arc<Database>,
    pub message: MessageSource,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/api/info", get(info))
        .route("/api/entries", get(list_ids).post(create))
        .route("/api/entries/{id}", get(read_one))
        .with_state(app)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn db_error(e: &DbError) -> Response {
    let status = if e.is_unavailable() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    error(status, e.to_string())
}

/// Unknown fields are ignored (a client may add its own bookkeeping).
#[derive(Debug, Deserialize)]
struct NewEntry {
    id: String,
    #[serde(default)]
    body: String,
}

async fn create(State(app): State<Arc<App>>, body: Bytes) -> Response {
    // Parsed by hand so every malformed body is a 400 with serde's explanation,
    // whatever the Content-Type says.
    let new: NewEntry = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected JSON {{\"id\": \"...\", \"body\": \"...\"}}: {e}"),
            );
        }
    };
    if new.id.is_empty() {
        return error(StatusCode::BAD_REQUEST, "id must not be empty");
    }
    if new.id.chars().count() > MAX_ID_LEN {
        return error(
            StatusCode::BAD_REQUEST,
            format!("id is longer than {MAX_ID_LEN} characters"),
        );
    }
    if new.id.contains('\0') || new.body.contains('\0') {
        return error(StatusCode::BAD_REQUEST, "NUL characters are not allowed");
    }
    match app.db.insert(&new.id, &new.body).await {
        Ok(Inserted::Created(e)) => (StatusCode::CREATED, axum::Json(e)).into_response(),
        Ok(Inserted::Existing(e)) if e.body == new.body => {
            (StatusCode::OK, axum::Json(e)).into_response()
        }
        Ok(Inserted::Existing(e)) => (
            StatusCode::CONFLICT,
            axum::Json(json!({
                "error": format!("id {:?} exists with another body", e.id),
                "entry": e,
            })),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(id = %new.id, error = %e, "write failed");
            db_error(&e)
        }
    }
}

async fn read_one(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    match app.db.get(&id).await {
        Ok(Some(e)) => axum::Json(e).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no entry with id {id:?}")),
        Err(e) => db_error(&e),
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    after: Option<String>,
    limit: Option<u32>,
}

/// `{"ids": [...], "next": "last id" | null}`: `next` is set when the page is full;
/// pass it as `after` for the next page.
async fn list_ids(State(app): State<Arc<App>>, Query(q): Query<ListQuery>) -> Response {
    let limit = q.limit.unwrap_or(MAX_IDS).clamp(1, MAX_IDS);
    match app.db.ids(q.after.as_deref(), limit).await {
        Ok(ids) => {
            let next = if ids.len() as u64 == u64::from(limit) {
                ids.last().cloned()
            } else {
                None
            };
            axum::Json(json!({ "ids": ids, "next": next })).into_response()
        }
        Err(e) => db_error(&e),
    }
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    match app.db.writable().await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

async fn info(State(app): State<Arc<App>>) -> Response {
    let d = app.db.discovered().await;
    let (epoch, active, database, discovery_error) = match &d {
        Ok(d) => (
            Some(d.epoch.0),
            d.active.clone(),
            d.database.as_ref().ok().map(|e| e.addr()),
            d.stale_because
                .clone()
                .or(d.database.as_ref().err().cloned()),
        ),
        Err(e) => (None, None, None, Some(e.to_string())),
    };
    axum::Json(json!({
        "region": app.region,
        "role": app.role,
        "epoch": epoch,
        "active": active,
        "database": database,
        "discovery_error": discovery_error,
    }))
    .into_response()
}

/// Escape text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

async fn index(State(app): State<Arc<App>>) -> Response {
    let (message, rows, disc) = tokio::join!(
        app.message.read(),
        app.db.latest(PAGE_ROWS),
        app.db.discovered()
    );
    let (epoch, active, database) = match &disc {
        Ok(d) => (
            d.epoch.0.to_string(),
            d.active.clone().unwrap_or_else(|| "none".into()),
            match &d.database {
                Ok(ep) => format!("{} {} ({})", ep.engine, ep.addr(), ep.dbname),
                Err(why) => why.clone(),
            },
        ),
        Err(e) => ("?".into(), "?".into(), e.to_string()),
    };
    let mut html = String::new();
    html.push_str(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"2\">\
         <title>lifeboat sample app</title><style>\
         body{font-family:system-ui,sans-serif;margin:2em;max-width:60em}\
         .region{font-size:2em;font-weight:bold}\
         .message{white-space:pre-wrap;background:#f4f4f4;padding:1em;border-radius:4px}\
         .error{color:#a00}table{border-collapse:collapse}\
         td,th{border-bottom:1px solid #ddd;padding:.3em .8em;text-align:left}\
         </style></head><body>\n",
    );
    html.push_str(&format!(
        "<p>Served by region <span class=\"region\" id=\"region\">{}</span>{}</p>\n",
        escape(&app.region),
        app.role
            .as_deref()
            .map(|r| format!(" (role: {})", escape(r)))
            .unwrap_or_default()
    ));
    html.push_str(&format!(
        "<p>Epoch <span id=\"epoch\">{}</span>, active region <span id=\"active\">{}</span>, \
         database <span id=\"database\">{}</span></p>\n",
        escape(&epoch),
        escape(&active),
        escape(&database)
    ));
    html.push_str(&format!(
        "<h2>Message</h2>\n<div class=\"message\" id=\"message\">{}</div>\n",
        escape(&message.display())
    ));
    html.push_str("<h2>Latest entries</h2>\n");
    let status = match &rows {
        Ok(rows) if rows.is_empty() => {
            html.push_str("<p id=\"entries\">(no entries yet)</p>\n");
            StatusCode::OK
        }
        Ok(rows) => {
            html.push_str(
                "<table id=\"entries\"><tr><th>id</th><th>body</th><th>written by</th><th>at (UTC)</th></tr>\n",
            );
            for Entry {
                id,
                body,
                region,
                created_at,
            } in rows
            {
                html.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                    escape(id),
                    escape(body),
                    escape(region),
                    escape(created_at)
                ));
            }
            html.push_str("</table>\n");
            StatusCode::OK
        }
        Err(e) => {
            html.push_str(&format!(
                "<p class=\"error\" id=\"entries\">database unavailable: {}</p>\n",
                escape(&e.to_string())
            ));
            if e.is_unavailable() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    };
    html.push_str("</body></html>\n");
    (status, [(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x") & 'y'</script>"#),
            "&lt;script&gt;alert(&quot;x&quot;) &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }
}
