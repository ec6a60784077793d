//! The message the front page shows: one object in the region's object store (a local
//! directory, read through `object_store`'s `LocalFileSystem`, the same crate lifeboat
//! replicates objects with), and the form's writes of it, which go through the region's
//! lifeboat S3 gateway (`object_store`'s `AmazonS3`, path-style, SigV4).
//!
//! Guarantees: a missing directory or object is "no message yet", never an error; other
//! failures are shown as such; at most [`MAX_MESSAGE_BYTES`] are shown, and a longer
//! message is never written. A write is sent once (no retry: a gateway that refuses a
//! write refuses it again) and a refusal comes back with the gateway's own message.

use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use std::path::PathBuf;
use std::time::Duration;

/// Longest message shown (the rest is cut) and written (a longer one is refused).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// How long one write through the gateway may take, connecting included.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What the page shows for the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    NotYet,
    NoStore,
    Unavailable(String),
}

impl Message {
    pub fn display(&self) -> String {
        match self {
            Message::Text(t) => t.clone(),
            Message::NotYet => "(no message yet)".into(),
            Message::NoStore => "(no object store configured)".into(),
            Message::Unavailable(why) => format!("(message unavailable: {why})"),
        }
    }
}

/// One object in one local object store.
#[derive(Debug, Clone)]
pub struct MessageSource {
    pub dir: Option<PathBuf>,
    pub key: String,
}

impl MessageSource {
    pub async fn read(&self) -> Message {
        let Some(dir) = &self.dir else {
            return Message::NoStore;
        };
        if !dir.is_dir() {
            // Replication may not have created it yet.
            return Message::NotYet;
        }
        let store = match LocalFileSystem::new_with_prefix(dir) {
            Ok(s) => s,
            Err(e) => return Message::Unavailable(e.to_string()),
        };
        let key = match ObjectPath::parse(&self.key) {
            Ok(k) => k,
            Err(e) => return Message::Unavailable(format!("bad key {:?}: {e}", self.key)),
        };
        let got = match store.get(&key).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Message::NotYet,
            Err(e) => return Message::Unavailable(e.to_string()),
        };
        match got.bytes().await {
            Ok(b) => {
                let shown = &b[..b.len().min(MAX_MESSAGE_BYTES)];
                Message::Text(String::from_utf8_lossy(shown).into_owned())
            }
            Err(object_store::Error::NotFound { .. }) => Message::NotYet,
            Err(e) => Message::Unavailable(e.to_string()),
        }
    }
}

/// The region's lifeboat S3 gateway, which the app writes the message through
/// (`--s3-endpoint`, `--s3-bucket`, `--s3-key-id`, `--s3-secret-file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    /// e.g. `http://127.0.1.1:9000` (path-style requests: `endpoint/bucket/key`).
    pub endpoint: String,
    pub bucket: String,
    pub key_id: String,
    /// Read at every write, so a rotated secret is picked up.
    pub secret_file: PathBuf,
}

/// Why the message was not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The app was started without a gateway.
    #[error(
        "writing the message is off: this app was started without --s3-endpoint, --s3-bucket, --s3-key-id and --s3-secret-file (its region's lifeboat object gateway)"
    )]
    Disabled,
    #[error("the message is longer than 64 KiB ({MAX_MESSAGE_BYTES} bytes): it was not written")]
    TooLong,
    #[error("cannot read the gateway's secret from {path}: {why}")]
    Secret { path: String, why: String },
    /// The gateway answered with an error: `status` and its S3 error message (for a
    /// region that is not the active one, 503 and "region b is a standby: lifeboat
    /// refuses writes to it; write to region a, the active one").
    #[error("{message} (HTTP {status} from the object gateway at {endpoint})")]
    Refused {
        endpoint: String,
        status: u16,
        message: String,
    },
    /// No answer: the gateway is unreachable, timed out, or answered nonsense.
    #[error("writing through the object gateway at {endpoint} failed: {why}")]
    Failed { endpoint: String, why: String },
}

/// Writes the message object through the gateway (when there is one).
#[derive(Debug, Clone)]
pub struct MessageWriter {
    pub gateway: Option<Gateway>,
    pub key: String,
}

impl MessageWriter {
    /// Write `text` as the message object. Nothing is sent when writing is off or
    /// `text` is too long.
    pub async fn write(&self, text: &str) -> Result<(), WriteError> {
        let Some(gw) = &self.gateway else {
            return Err(WriteError::Disabled);
        };
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(WriteError::TooLong);
        }
        let failed = |why: String| WriteError::Failed {
            endpoint: gw.endpoint.clone(),
            why,
        };
        let key = ObjectPath::parse(&self.key)
            .map_err(|e| failed(format!("bad key {:?}: {e}", self.key)))?;
        let secret = tokio::fs::read_to_string(&gw.secret_file)
            .await
            .map_err(|e| WriteError::Secret {
                path: gw.secret_file.display().to_string(),
                why: e.to_string(),
            })?;
        let secret = secret.trim();
        if secret.is_empty() {
            return Err(WriteError::Secret {
                path: gw.secret_file.display().to_string(),
                why: "the file is empty".into(),
            });
        }
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&gw.endpoint)
            .with_bucket_name(&gw.bucket)
            .with_access_key_id(&gw.key_id)
            .with_secret_access_key(secret)
            .with_region("us-east-1")
            .with_retry(object_store::RetryConfig {
                max_retries: 0,
                retry_timeout: WRITE_TIMEOUT,
                ..object_store::RetryConfig::default()
            })
            // Client options carry allow_http too: set before it, not after.
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_timeout(WRITE_TIMEOUT)
                    .with_connect_timeout(CONNECT_TIMEOUT),
            )
            .with_allow_http(true)
            .build()
            .map_err(|e| failed(format!("configuring the S3 client: {e}")))?;
        match store
            .put(&key, PutPayload::from(text.as_bytes().to_vec()))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(match refusal(&error_chain(&e)) {
                Some((status, message)) => WriteError::Refused {
                    endpoint: gw.endpoint.clone(),
                    status,
                    message,
                },
                None => failed(error_chain(&e)),
            }),
        }
    }
}

/// An error and its sources, each once (object_store's messages often repeat their
/// source's).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The HTTP status and the S3 error message of an error answer, from object_store's
/// text of it ("... status code: 503 Service Unavailable: <?xml ...><Error><Code>
/// ServiceUnavailable</Code><Message>region b is a standby: ...</Message>...").
/// None when the gateway gave no answer (refused connection, timeout).
fn refusal(text: &str) -> Option<(u16, String)> {
    let (_, after) = text.split_once("status code: ")?;
    let status: u16 = after.get(..3)?.parse().ok()?;
    let tag = |name: &str| -> Option<String> {
        let (_, rest) = after.split_once(&format!("<{name}>"))?;
        let (inner, _) = rest.split_once(&format!("</{name}>"))?;
        Some(xml_unescape(inner.trim()))
    };
    let message = match (tag("Code"), tag("Message")) {
        (_, Some(m)) if !m.is_empty() => m,
        (Some(c), _) if !c.is_empty() => c,
        _ => {
            let body = after.get(3..).unwrap_or_default();
            let body = body
                .trim_start_matches(|c: char| c != ':')
                .trim_start_matches(':');
            let body = body.trim();
            if body.is_empty() {
                "(no message)".to_owned()
            } else {
                body.chars().take(300).collect()
            }
        }
    };
    Some((status, message))
}

/// XML's five predefined entities and numeric references.
fn xml_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';') else { break };
        let entity = &rest[1..end];
        let c = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_store_object_and_present_object() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = MessageSource {
            dir: Some(dir.path().join("absent")),
            key: "msgdrdct.txt".into(),
        };
        assert_eq!(src.read().await, Message::NotYet);
        let src = MessageSource {
            dir: Some(dir.path().to_path_buf()),
            key: "msgdrdct.txt".into(),
        };
        assert_eq!(src.read().await, Message::NotYet);
        std::fs::write(dir.path().join("msgdrdct.txt"), "hello <b>").expect("write");
        assert_eq!(src.read().await, Message::Text("hello <b>".into()));
        let none = MessageSource {
            dir: None,
            key: "msgdrdct.txt".into(),
        };
        assert_eq!(none.read().await.display(), "(no object store configured)");
    }

    const REFUSAL: &str =
        "region b is a standby: lifeboat refuses writes to it; write to region a, the active one";

    #[test]
    fn a_refusal_is_read_from_object_stores_error_text() {
        let text = format!(
            "Generic S3 error: Error performing PUT http://127.0.2.1:9000/objects/msgdrdct.txt in 2ms - Server returned non-2xx status code: 503 Service Unavailable: <?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>ServiceUnavailable</Code><Message>{REFUSAL}</Message></Error>"
        );
        assert_eq!(refusal(&text), Some((503, REFUSAL.to_owned())));
        let text =
            "... status code: 403 Forbidden: <Error><Code>SignatureDoesNotMatch</Code></Error>";
        assert_eq!(
            refusal(text),
            Some((403, "SignatureDoesNotMatch".to_owned()))
        );
        let text = "... status code: 502 Bad Gateway: upstream down";
        assert_eq!(refusal(text), Some((502, "upstream down".to_owned())));
        // No answer at all: not a refusal.
        assert_eq!(refusal("error sending request: Connection refused"), None);
        assert_eq!(
            xml_unescape("a &lt;b&gt; &amp; &quot;c&quot; &#39;d&#x27; &bogus; &"),
            "a <b> & \"c\" 'd' &bogus; &"
        );
    }

    /// A stand-in gateway on loopback: every request is counted and its method and path
    /// kept; it answers `status` with `body`.
    async fn fake_gateway(
        status: u16,
        body: &'static str,
    ) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        use axum::http::StatusCode;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let seen = s2.clone();
            async move {
                let signed = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256 Credential=AKIDTEST/"));
                seen.lock().expect("lock").push(format!(
                    "{} {} signed={signed}",
                    req.method(),
                    req.uri().path()
                ));
                (
                    StatusCode::from_u16(status).expect("status"),
                    [("content-type", "application/xml"), ("etag", "\"e1\"")],
                    body,
                )
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), seen)
    }

    fn writer(endpoint: String, secret: &std::path::Path) -> MessageWriter {
        MessageWriter {
            gateway: Some(Gateway {
                endpoint,
                bucket: "objects".into(),
                key_id: "AKIDTEST".into(),
                secret_file: secret.to_path_buf(),
            }),
            key: "msgdrdct.txt".into(),
        }
    }

    use std::sync::Arc;

    #[tokio::test]
    async fn a_write_is_one_signed_path_style_put_and_a_refusal_comes_back_as_such() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").expect("secret");
        let (url, seen) = fake_gateway(200, "").await;
        writer(url, &secret).write("hello").await.expect("written");
        assert_eq!(
            *seen.lock().expect("lock"),
            ["PUT /objects/msgdrdct.txt signed=true"]
        );

        let refusal = Box::leak(
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>ServiceUnavailable</Code><Message>{REFUSAL}</Message></Error>"
            )
            .into_boxed_str(),
        );
        let (url, seen) = fake_gateway(503, refusal).await;
        let started = tokio::time::Instant::now();
        let e = writer(url.clone(), &secret)
            .write("hello")
            .await
            .expect_err("refused");
        assert_eq!(
            e,
            WriteError::Refused {
                endpoint: url,
                status: 503,
                message: REFUSAL.to_owned()
            }
        );
        assert!(e.to_string().starts_with(REFUSAL), "{e}");
        // Sent once: a refusal is not retried.
        assert_eq!(seen.lock().expect("lock").len(), 1);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));

        // No secret: nothing is sent.
        let (url, seen) = fake_gateway(200, "").await;
        let e = writer(url, &dir.path().join("absent"))
            .write("hello")
            .await
            .expect_err("no secret");
        assert!(matches!(e, WriteError::Secret { .. }), "{e}");
        assert!(seen.lock().expect("lock").is_empty());
    }
}
