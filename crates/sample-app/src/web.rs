//! HTTP: the front page (HTML) with its message form (`POST /message`) and the function
//! tier (JSON).
//!
//! Guarantees: every text that came from outside (rows, the message, error messages,
//! names) is HTML-escaped on the page; `POST /message` answers 303 to `/` once the
//! message is written, and otherwise a page that says why with the status of the cause
//! (413 longer than 64 KiB, 503 writing off, the gateway's refusal or no gateway, 502
//! another answer of the gateway, 400 not a form, 500 the secret unreadable); every JSON error is `{"error": "..."}` with a status
//! that says whose fault it is (400 bad request, 404 unknown id, 409 id reused with another
//! body, 503 database or discovery unavailable, 500 anything else); `POST /api/entries` is
//! idempotent by id, so a client retrying after an unknown outcome never gets an error for
//! a write that did commit.

use crate::db::{Database, DbError, Entry, Inserted, MAX_ID_LEN};
use crate::objects::{MAX_MESSAGE_BYTES, MessageSource, MessageWriter, WriteError};
use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{DefaultBodyLimit, Form, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
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
    /// Writes the message through the region's gateway (`POST /message`).
    pub writer: MessageWriter,
}

/// Largest `POST /message` body read: a form-encoded message of 64 KiB takes up to
/// three times that (`%XX` per byte); anything longer is a message over the limit.
const FORM_LIMIT: usize = 3 * MAX_MESSAGE_BYTES + 1024;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/api/info", get(info))
        .route(
            "/message",
            post(post_message).layer(DefaultBodyLimit::max(FORM_LIMIT)),
        )
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
         <noscript><meta http-equiv=\"refresh\" content=\"2\"></noscript>\
         <script>setInterval(function(){var t=document.getElementById('draft');\
         if(!t||(t.value===''&&document.activeElement!==t))location.reload()},2000)</script>\
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
    html.push_str(&message_form(&app.writer, ""));
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

/// The "Leave a message" form (`draft` prefilled), or why there is none.
fn message_form(writer: &MessageWriter, draft: &str) -> String {
    let Some(gw) = &writer.gateway else {
        return format!(
            "<h2>Leave a message</h2>\n<p id=\"writing\">({})</p>\n",
            escape(&WriteError::Disabled.to_string())
        );
    };
    format!(
        "<h2>Leave a message</h2>\n<form method=\"post\" action=\"/message\" id=\"message-form\">\
         <textarea name=\"message\" id=\"draft\" rows=\"4\" cols=\"60\" maxlength=\"{MAX_MESSAGE_BYTES}\">{}</textarea><br>\
         <button type=\"submit\">Save</button></form>\n\
         <p id=\"writing\">Saved as <code>{}</code> through this region's object gateway \
         ({}, bucket {}); lifeboat replicates it to the other regions. Only the active region's gateway takes writes.</p>\n",
        escape(draft),
        escape(&writer.key),
        escape(&gw.endpoint),
        escape(&gw.bucket),
    )
}

/// The form's field.
#[derive(Debug, Deserialize)]
struct MessageForm {
    #[serde(default)]
    message: String,
}

/// `POST /message` (a form with `message`): write it through the gateway, then 303 to
/// `/`; otherwise a page with the reason.
async fn post_message(
    State(app): State<Arc<App>>,
    form: Result<Form<MessageForm>, FormRejection>,
) -> Response {
    let text = match form {
        Ok(Form(f)) => f.message,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return not_written(
                &app,
                StatusCode::PAYLOAD_TOO_LARGE,
                &WriteError::TooLong,
                "",
            );
        }
        Err(r) => {
            let why = format!(
                "expected a form (application/x-www-form-urlencoded) with a message field: {}",
                r.body_text()
            );
            return (StatusCode::BAD_REQUEST, why).into_response();
        }
    };
    match app.writer.write(&text).await {
        Ok(()) => {
            tracing::info!(key = %app.writer.key, bytes = text.len(), "message written through the gateway");
            (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "message not written");
            let status = match &e {
                WriteError::TooLong => StatusCode::PAYLOAD_TOO_LARGE,
                WriteError::Disabled => StatusCode::SERVICE_UNAVAILABLE,
                WriteError::Secret { .. } => StatusCode::INTERNAL_SERVER_ERROR,
                WriteError::Refused { status: 503, .. } | WriteError::Failed { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                WriteError::Refused { .. } => StatusCode::BAD_GATEWAY,
            };
            // A message over the limit is not put back into the form.
            let draft = if matches!(e, WriteError::TooLong) {
                ""
            } else {
                text.as_str()
            };
            not_written(&app, status, &e, draft)
        }
    }
}

/// The page of a message that was not written: why, and the form again (no automatic
/// refresh: it would drop the draft).
fn not_written(app: &App, status: StatusCode, why: &WriteError, draft: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>lifeboat sample app: message not saved</title><style>\
         body{{font-family:system-ui,sans-serif;margin:2em;max-width:60em}}.error{{color:#a00}}\
         </style></head><body>\n\
         <p>Served by region <span class=\"region\" id=\"region\">{}</span></p>\n\
         <h2>Message not saved</h2>\n<p class=\"error\" id=\"write-error\">{}</p>\n{}\
         <p><a href=\"/\">Back to the page</a></p>\n</body></html>\n",
        escape(&app.region),
        escape(&why.to_string()),
        message_form(&app.writer, draft),
    );
    (status, [(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::PasswordSource;
    use crate::discovery::Discoverer;
    use crate::objects::Gateway;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    /// The app of region b, writing through `gateway` (nothing listens at the address
    /// these tests give: none of them may reach it).
    fn app(gateway: Option<Gateway>) -> Router {
        let discovery =
            Arc::new(Discoverer::new("http://127.0.0.1:9/v1/discovery").expect("discoverer"));
        router(Arc::new(App {
            region: "b".into(),
            role: None,
            db: Arc::new(Database::new(discovery, PasswordSource::None, "b".into())),
            message: MessageSource {
                dir: None,
                key: "msgdrdct.txt".into(),
            },
            writer: MessageWriter {
                gateway,
                key: "msgdrdct.txt".into(),
            },
        }))
    }

    fn unreachable_gateway() -> Gateway {
        Gateway {
            endpoint: "http://127.0.0.1:9".into(),
            bucket: "objects".into(),
            key_id: "AKIDTEST".into(),
            secret_file: "/nonexistent/secret".into(),
        }
    }

    async fn post_form(app: Router, body: impl Into<Body>) -> (StatusCode, String) {
        let req = Request::post("/message")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body.into())
            .expect("request");
        let resp = app.oneshot(req).await.expect("answered");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn a_message_over_64_kib_is_413_and_goes_nowhere() {
        // Just over the limit: read, decoded, refused before the secret or the gateway.
        let body = format!("message={}", "x".repeat(MAX_MESSAGE_BYTES + 1));
        let (status, page) = post_form(app(Some(unreachable_gateway())), body).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{page}");
        assert!(page.contains("longer than 64 KiB"), "{page}");
        assert!(page.contains(r#"id="write-error""#), "{page}");
        // Far over: the body is not even read to its end.
        let body = format!("message={}", "%41".repeat(MAX_MESSAGE_BYTES * 2));
        let (status, page) = post_form(app(Some(unreachable_gateway())), body).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{page}");
        assert!(page.contains("longer than 64 KiB"), "{page}");
        // 64 KiB of multi-byte characters is over too (the limit counts bytes).
        let body = format!("message={}", "%C3%A9".repeat(MAX_MESSAGE_BYTES / 2 + 1));
        let (status, _) = post_form(app(Some(unreachable_gateway())), body).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn without_a_gateway_writing_is_off_and_the_page_says_so() {
        let (status, page) = post_form(app(None), "message=hello").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{page}");
        assert!(page.contains("writing the message is off"), "{page}");
        assert!(page.contains("--s3-endpoint"), "{page}");
        // The front page offers no form, and says why.
        let resp = app(None)
            .oneshot(Request::get("/").body(Body::empty()).expect("request"))
            .await
            .expect("answered");
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        let page = String::from_utf8_lossy(&bytes);
        assert!(page.contains("(writing the message is off"), "{page}");
        assert!(!page.contains("<form"), "{page}");
    }

    #[tokio::test]
    async fn the_front_page_has_the_form_when_a_gateway_is_set() {
        let resp = app(Some(unreachable_gateway()))
            .oneshot(Request::get("/").body(Body::empty()).expect("request"))
            .await
            .expect("answered");
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        let page = String::from_utf8_lossy(&bytes);
        assert!(
            page.contains(r#"<form method="post" action="/message""#),
            "{page}"
        );
        assert!(page.contains(r#"name="message""#), "{page}");
        assert!(
            page.contains("http://127.0.0.1:9, bucket objects"),
            "{page}"
        );
    }

    #[tokio::test]
    async fn an_unwritten_message_is_shown_again_escaped() {
        // The secret cannot be read: 500, nothing sent, the draft back in the form.
        let (status, page) = post_form(
            app(Some(unreachable_gateway())),
            "message=%3Cb%3Ehi%3C%2Fb%3E+%26",
        )
        .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{page}");
        assert!(
            page.contains("cannot read the gateway&#39;s secret"),
            "{page}"
        );
        assert!(
            page.contains("&lt;b&gt;hi&lt;/b&gt; &amp;</textarea>"),
            "{page}"
        );
        assert!(!page.contains("<b>hi"), "{page}");
    }

    #[tokio::test]
    async fn a_body_that_is_not_a_form_is_400() {
        let req = Request::post("/message")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"message": "x"}"#))
            .expect("request");
        let resp = app(Some(unreachable_gateway()))
            .oneshot(req)
            .await
            .expect("answered");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x") & 'y'</script>"#),
            "&lt;script&gt;alert(&quot;x&quot;) &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }
}
