//! A small raw S3 client that sends every S3-legal key byte-exact.
//!
//! object_store's `Path` cannot hold every S3 key (it refuses empty segments: `a//b`),
//! rusty-s3 builds object URLs with `Url::join` (which resolves `.`/`..` segments and
//! makes `/x` an absolute path), and reqwest / `url::Url` normalize `.`, `..` and `%2e`
//! segments too (WHATWG). Replication must copy `a//b`, `a/./b`, `a/../b`, `/x`, `dir/`,
//! any UTF-8 (control characters included) up to 1,024 bytes, as they are. So requests
//! here are built as `http::Request`s with an `http::Uri` (which normalizes nothing) and
//! sent with hyper-util's pooled client:
//!
//! - the key is percent-encoded byte by byte, only RFC 3986 unreserved characters and
//!   `/` left bare ([`lifeboat_sigv4::uri_encode`]), so the server decodes the same bytes;
//! - path-style `/{bucket}/{key}`, or virtual-hosted (host `{bucket}.{endpoint host}`,
//!   path `/{key}`);
//! - signed with SigV4 for S3 ([`lifeboat_sigv4::sign_s3`]: the path signed as sent),
//!   `x-amz-content-sha256` the SHA-256 of the body, `content-length` on PUT and POST;
//! - listings ask for `encoding-type=url` (XML 1.0 cannot carry some control characters)
//!   and decode the keys when the answer says it encoded them (`%XX`, and `+` for a
//!   space, as AWS encodes). A server that says so without encoding (s3s-fs 0.14) gets
//!   `+` and `%XX` in its keys decoded: it cannot list such keys faithfully;
//! - connect timeout 5 s; a request without response headers within 60 s (of handing
//!   over the last piece of its body) fails, and so does a response body that sends
//!   nothing for 60 s; up to 64 idle connections per host;
//! - http and https (rustls with ring; the webpki roots and the system's).
//!
//! Errors ([`S3Error`]) name the operation, the key and the store, and carry S3's error
//! code and message, or the transport's whole cause chain. The secret and the
//! `Authorization` header never appear in an error, a log line or a `Debug`.

use std::convert::Infallible;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use lifeboat_sigv4::{Credentials, sign_s3, uri_encode};
use sha2::Digest as _;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// For the response headers, and between two pieces of a response body.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_IDLE_PER_HOST: usize = 64;
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_KEYS: u32 = 1000;
/// S3's limit on a key's length, in bytes.
const MAX_KEY_BYTES: usize = 1024;
/// The most a listing or another XML answer may hold (1,000 keys of 1,024 bytes,
/// percent-encoded, fit many times over).
const MAX_XML_BYTES: usize = 64 << 20;
/// How much of an error answer is read, and how much of a non-XML one is quoted.
const MAX_ERROR_BYTES: usize = 64 << 10;
const ERROR_ECHO_BYTES: usize = 200;
const S3_XMLNS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// One bucket lifecycle rule, as lifeboat writes and reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleXmlRule {
    pub id: String,
    pub prefix: String,
    pub expire_after_days: Option<u32>,
    pub noncurrent_expire_after_days: Option<u32>,
    pub abort_incomplete_multipart_after_days: Option<u32>,
}

/// Where and how to reach one bucket.
#[derive(Clone)]
pub struct S3Config {
    /// `http(s)://host[:port]`; None: `https://s3.{region}.amazonaws.com`.
    pub endpoint: Option<String>,
    pub bucket: String,
    /// The signing region (`us-east-1` for most S3-compatible servers).
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// Host `{bucket}.{endpoint host}` and path `/{key}`, instead of `/{bucket}/{key}`.
    pub virtual_hosted_style: bool,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .finish()
    }
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Object {
    /// The key, decoded: exactly the bytes it was written with.
    pub key: String,
    pub size: u64,
    /// Without the surrounding quotes.
    pub etag: Option<String>,
    /// Milliseconds since the epoch.
    pub last_modified_ms: Option<i64>,
}

/// One page of a listing (ListObjectsV2, up to 1,000 objects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    pub objects: Vec<S3Object>,
    /// The continuation token of the next page; None on the last page.
    pub next: Option<String>,
}

/// What HEAD (or GET) says about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHead {
    /// `content-length` of the answer: the object's size, or the part's when asked with
    /// a part number.
    pub size: u64,
    /// Without the surrounding quotes.
    pub etag: Option<String>,
    /// Milliseconds since the epoch.
    pub last_modified_ms: Option<i64>,
    /// The replicable headers, names lower-case, sorted by name: `content-type`,
    /// `content-encoding`, `content-language`, `content-disposition`, `cache-control`,
    /// `expires`, every `x-amz-meta-*`, `x-amz-website-redirect-location`.
    pub headers: Vec<(String, String)>,
    /// `x-amz-mp-parts-count` (a multipart object asked with a part number).
    pub parts_count: Option<u32>,
    /// `x-amz-tagging-count`.
    pub tag_count: Option<u32>,
}

/// Why an S3 call failed. `context` names the operation, the key and the store, e.g.
/// `PUT a//b at s3 http://127.0.0.1:9000/bkt`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S3Error {
    /// 401/403, or the codes `AccessDenied`, `InvalidAccessKeyId`, `SignatureDoesNotMatch`.
    #[error("{context}: access denied: {status} {code}: {message}")]
    AccessDenied {
        context: String,
        status: u16,
        code: String,
        message: String,
    },
    /// 501 or `NotImplemented`: the server does not do `what`.
    #[error("{context}: not supported by this server: {what}: {message}")]
    Unsupported {
        context: String,
        what: String,
        message: String,
    },
    /// Any other failure answer: S3's error code and message (from the XML body, else
    /// the reason phrase and the first 200 bytes of the body).
    #[error("{context}: {status} {code}: {message}")]
    Status {
        context: String,
        status: u16,
        code: String,
        message: String,
    },
    /// Connecting, sending or receiving failed or timed out; `message` is the whole
    /// cause chain.
    #[error("{context}: {message}")]
    Transport { context: String, message: String },
    /// Bad XML, a bad header value, a bad key or a bad configuration.
    #[error("{context}: {message}")]
    Invalid { context: String, message: String },
}

impl S3Error {
    /// The failed call's operation, key and store.
    pub fn context(&self) -> &str {
        match self {
            S3Error::AccessDenied { context, .. }
            | S3Error::Unsupported { context, .. }
            | S3Error::Status { context, .. }
            | S3Error::Transport { context, .. }
            | S3Error::Invalid { context, .. } => context,
        }
    }
}

fn invalid(context: &str, message: impl Into<String>) -> S3Error {
    S3Error::Invalid {
        context: context.to_owned(),
        message: message.into(),
    }
}

fn transport(context: &str, message: impl Into<String>) -> S3Error {
    S3Error::Transport {
        context: context.to_owned(),
        message: message.into(),
    }
}

/// An error and all its sources, `: `-separated (a source already in the text is
/// not repeated).
fn cause_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// A key for a message: control characters escaped (`\u{1}`), the rest as it is.
fn show_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

type Body = BoxBody<Bytes, Infallible>;
type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// A client of one bucket. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct S3Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: HttpClient,
    scheme: Scheme,
    /// What requests go to: `host[:port]`, with `{bucket}.` in front when virtual-hosted.
    authority: Authority,
    host_header: HeaderValue,
    /// `/{bucket}` (path-style, encoded) or empty (virtual-hosted).
    path_prefix: String,
    region: String,
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    virtual_hosted_style: bool,
    describe: String,
}

impl fmt::Debug for S3Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Client")
            .field("store", &self.inner.describe)
            .field("region", &self.inner.region)
            .field("access_key_id", &self.inner.access_key_id)
            .field("virtual_hosted_style", &self.inner.virtual_hosted_style)
            .finish_non_exhaustive()
    }
}

/// The trusted roots, loaded once: webpki's and the system's (a private CA of an
/// S3-compatible server installed on the host is trusted too).
fn root_store() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let native = rustls_native_certs::load_native_certs();
            let (added, ignored) = roots.add_parsable_certificates(native.certs);
            tracing::debug!(
                added,
                ignored,
                errors = native.errors.len(),
                "s3 client: system root certificates"
            );
            Arc::new(roots)
        })
        .clone()
}

/// A request about to be sent.
struct Call<'a> {
    method: Method,
    key: Option<&'a str>,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    body: Vec<Bytes>,
}

impl<'a> Call<'a> {
    fn new(method: Method, key: Option<&'a str>) -> Self {
        Call {
            method,
            key,
            query: Vec::new(),
            headers: HeaderMap::new(),
            body: Vec::new(),
        }
    }
    fn query(mut self, name: &str, value: impl Into<String>) -> Self {
        self.query.push((name.to_owned(), value.into()));
        self
    }
}

/// The query as sent: names and values encoded as SigV4 encodes them; an empty value as
/// the bare name (`?uploads`), which servers read as the empty value that was signed.
fn query_string(pairs: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(&uri_encode(name.as_bytes(), true));
        if !value.is_empty() {
            out.push('=');
            out.push_str(&uri_encode(value.as_bytes(), true));
        }
    }
    out
}

/// `x-amz-tagging`: `k=v&k2=v2`, URL-encoded.
fn tagging_header(tags: &[(String, String)]) -> String {
    tags.iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                uri_encode(k.as_bytes(), true),
                uri_encode(v.as_bytes(), true)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Headers lifeboat sets itself (or that hyper must): refused among a caller's headers.
fn reserved_header(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "authorization"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "x-amz-content-sha256"
            | "x-amz-date"
            | "x-amz-security-token"
            | "x-amz-tagging"
    )
}

/// A caller's headers (`content-type`, `x-amz-meta-*`, ...) as a header map.
fn caller_headers(context: &str, headers: &[(String, String)]) -> Result<HeaderMap, S3Error> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        let header = HeaderName::from_bytes(lower.as_bytes())
            .map_err(|e| invalid(context, format!("bad header name {name:?}: {e}")))?;
        if reserved_header(header.as_str()) {
            return Err(invalid(
                context,
                format!("header {name:?} is set by the client itself"),
            ));
        }
        let value = HeaderValue::from_str(value)
            .map_err(|e| invalid(context, format!("bad value of header {name:?}: {e}")))?;
        map.append(header, value);
    }
    Ok(map)
}

fn is_replicable(name: &str) -> bool {
    matches!(
        name,
        "content-type"
            | "content-encoding"
            | "content-language"
            | "content-disposition"
            | "cache-control"
            | "expires"
            | "x-amz-website-redirect-location"
    ) || name.starts_with("x-amz-meta-")
}

fn strip_quotes(etag: &str) -> String {
    let etag = etag.trim();
    etag.strip_prefix('"')
        .and_then(|e| e.strip_suffix('"'))
        .unwrap_or(etag)
        .to_owned()
}

fn header_text<'h>(
    context: &str,
    headers: &'h HeaderMap,
    name: &str,
) -> Result<Option<&'h str>, S3Error> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => std::str::from_utf8(value.as_bytes())
            .map(Some)
            .map_err(|_| invalid(context, format!("header {name} is not UTF-8"))),
    }
}

fn header_number<T: std::str::FromStr>(
    context: &str,
    headers: &HeaderMap,
    name: &str,
) -> Result<Option<T>, S3Error> {
    match header_text(context, headers, name)? {
        None => Ok(None),
        Some(text) => text.trim().parse().map(Some).map_err(|_| {
            invalid(
                context,
                format!("header {name} is not a number: {:?}", show_key(text)),
            )
        }),
    }
}

fn system_time_ms(t: SystemTime) -> Option<i64> {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).ok(),
        Err(e) => i64::try_from(e.duration().as_millis()).ok().map(|ms| -ms),
    }
}

/// The head of an object from the headers of a HEAD or GET answer.
fn object_head(context: &str, headers: &HeaderMap) -> Result<ObjectHead, S3Error> {
    let Some(size) = header_number::<u64>(context, headers, "content-length")? else {
        return Err(invalid(context, "the answer has no content-length"));
    };
    let etag = header_text(context, headers, "etag")?.map(strip_quotes);
    let last_modified_ms = header_text(context, headers, "last-modified")?
        .and_then(|text| httpdate::parse_http_date(text).ok())
        .and_then(system_time_ms);
    let mut replicable = Vec::new();
    for (name, value) in headers {
        if is_replicable(name.as_str()) {
            let value = std::str::from_utf8(value.as_bytes())
                .map_err(|_| invalid(context, format!("header {name} is not UTF-8")))?;
            replicable.push((name.as_str().to_owned(), value.to_owned()));
        }
    }
    replicable.sort();
    Ok(ObjectHead {
        size,
        etag,
        last_modified_ms,
        headers: replicable,
        parts_count: header_number(context, headers, "x-amz-mp-parts-count")?,
        tag_count: header_number(context, headers, "x-amz-tagging-count")?,
    })
}

impl S3Client {
    /// A client of `cfg.bucket`. Checks the endpoint (`http` or `https`, a host, no path
    /// beyond `/`, no query), the bucket and the region; connects to nothing yet.
    pub fn new(cfg: S3Config) -> Result<Self, S3Error> {
        let endpoint = cfg
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", cfg.region));
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        let context = format!("open s3 {endpoint}/{}", cfg.bucket);
        let uri: Uri = endpoint
            .parse()
            .map_err(|e| invalid(&context, format!("bad endpoint URL {endpoint:?}: {e}")))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => {
                return Err(invalid(
                    &context,
                    format!("the endpoint {endpoint:?} must start with http:// or https://"),
                ));
            }
        };
        let Some(authority) = uri.authority().cloned() else {
            return Err(invalid(
                &context,
                format!("the endpoint {endpoint:?} has no host"),
            ));
        };
        if authority.as_str().contains('@') {
            return Err(invalid(
                &context,
                "the endpoint must not carry credentials (user@host)",
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(invalid(
                &context,
                format!(
                    "the endpoint {endpoint:?} must be scheme://host[:port], without a path or query"
                ),
            ));
        }
        let bucket = cfg.bucket.as_str();
        if bucket.is_empty() || bucket.contains('/') {
            return Err(invalid(&context, format!("bad bucket name {bucket:?}")));
        }
        if cfg.region.is_empty() {
            return Err(invalid(&context, "the region is empty"));
        }

        let (authority, path_prefix, describe) = if cfg.virtual_hosted_style {
            let host = format!("{bucket}.{}", authority.as_str());
            let authority: Authority = host.parse().map_err(|e| {
                invalid(
                    &context,
                    format!("bucket {bucket:?} cannot be a host name: {e}"),
                )
            })?;
            let describe = format!("s3 {}://{authority}", scheme.as_str());
            (authority, String::new(), describe)
        } else {
            (
                authority,
                format!("/{}", uri_encode(bucket.as_bytes(), true)),
                format!("s3 {endpoint}/{bucket}"),
            )
        };
        // The default port is left out of `host`, as clients do (and the signature covers
        // `host` as sent).
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(port) if port == default_port => authority.host().to_owned(),
            _ => authority.as_str().to_owned(),
        };
        let host_header = HeaderValue::from_str(&host)
            .map_err(|e| invalid(&context, format!("bad host {host:?}: {e}")))?;

        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&context, format!("TLS setup: {e}")))?
        .with_root_certificates(root_store())
        .with_no_client_auth();
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(https);

        Ok(S3Client {
            inner: Arc::new(Inner {
                http,
                scheme,
                authority,
                host_header,
                path_prefix,
                region: cfg.region,
                access_key_id: cfg.access_key_id,
                secret_access_key: cfg.secret_access_key,
                session_token: cfg.session_token,
                virtual_hosted_style: cfg.virtual_hosted_style,
                describe,
            }),
        })
    }

    /// The store, for messages: `s3 http://127.0.0.1:9000/bucket`.
    pub fn describe(&self) -> String {
        self.inner.describe.clone()
    }

    /// `{op} {key} at {store}`, for errors.
    fn context(&self, op: &str, key: Option<&str>) -> String {
        match key {
            Some(key) => format!("{op} {} at {}", show_key(key), self.inner.describe),
            None => format!("{op} at {}", self.inner.describe),
        }
    }

    fn check_key(&self, context: &str, key: &str) -> Result<(), S3Error> {
        if key.is_empty() {
            return Err(invalid(context, "the key is empty"));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(invalid(
                context,
                format!(
                    "the key is {} bytes long, S3 allows {MAX_KEY_BYTES}",
                    key.len()
                ),
            ));
        }
        Ok(())
    }

    /// Send a request (signed), return the answer once its headers are in.
    async fn send(&self, context: &str, call: Call<'_>) -> Result<Response<Incoming>, S3Error> {
        let inner = &*self.inner;
        let mut path = inner.path_prefix.clone();
        match call.key {
            Some(key) => {
                self.check_key(context, key)?;
                path.push('/');
                path.push_str(&uri_encode(key.as_bytes(), false));
            }
            None if path.is_empty() => path.push('/'),
            None => {}
        }
        let mut target = path.clone();
        if !call.query.is_empty() {
            target.push('?');
            target.push_str(&query_string(&call.query));
        }
        let uri = Uri::builder()
            .scheme(inner.scheme.clone())
            .authority(inner.authority.clone())
            .path_and_query(target)
            .build()
            .map_err(|e| invalid(context, format!("cannot build the request URI: {e}")))?;

        let chunks: Vec<Bytes> = call.body.into_iter().filter(|b| !b.is_empty()).collect();
        let payload_sha256 = if chunks.is_empty() {
            EMPTY_SHA256.to_owned()
        } else {
            let mut hasher = sha2::Sha256::new();
            for chunk in &chunks {
                hasher.update(chunk);
            }
            hex::encode(hasher.finalize())
        };
        let length: usize = chunks.iter().map(Bytes::len).sum();

        let mut headers = call.headers;
        headers.insert(HOST, inner.host_header.clone());
        if matches!(call.method, Method::PUT | Method::POST) {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
        }
        let credentials = Credentials {
            access_key_id: &inner.access_key_id,
            secret_access_key: &inner.secret_access_key,
            session_token: inner.session_token.as_deref(),
        };
        sign_s3(
            call.method.as_str(),
            &path,
            &call.query,
            &mut headers,
            &payload_sha256,
            &credentials,
            &inner.region,
            SystemTime::now(),
        )
        .map_err(|e| invalid(context, format!("cannot sign the request: {e}")))?;

        // Pieces of the body handed to hyper so far: the response timeout counts from the
        // last one (a large part on a slow link is not a silent server).
        let sent = Arc::new(AtomicUsize::new(0));
        let body: Body = if chunks.is_empty() {
            Empty::<Bytes>::new().boxed()
        } else {
            let counter = sent.clone();
            let frames = futures::stream::iter(chunks).map(move |chunk| {
                counter.fetch_add(1, Ordering::Relaxed);
                Ok::<_, Infallible>(Frame::data(chunk))
            });
            http_body_util::BodyExt::boxed(StreamBody::new(frames))
        };
        let mut request = Request::builder()
            .method(call.method)
            .uri(uri)
            .body(body)
            .map_err(|e| invalid(context, format!("cannot build the request: {e}")))?;
        *request.headers_mut() = headers;

        tracing::debug!(request = %context, bytes = length, "s3 request");
        let mut answer = std::pin::pin!(inner.http.request(request));
        let mut progress = sent.load(Ordering::Relaxed);
        let answer = loop {
            match tokio::time::timeout(RESPONSE_TIMEOUT, &mut answer).await {
                Ok(answer) => break answer,
                Err(_) => {
                    let now = sent.load(Ordering::Relaxed);
                    if now == progress {
                        return Err(transport(
                            context,
                            format!(
                                "no response headers within {} s",
                                RESPONSE_TIMEOUT.as_secs()
                            ),
                        ));
                    }
                    progress = now;
                }
            }
        };
        match answer {
            Err(e) => Err(transport(
                context,
                format!("error sending request: {}", cause_chain(&e)),
            )),
            Ok(response) => {
                tracing::debug!(request = %context, status = response.status().as_u16(), "s3 response");
                Ok(response)
            }
        }
    }

    /// Send and insist on a success status; a failure becomes the matching [`S3Error`].
    /// `what`: the feature named when the server answers 501 / NotImplemented.
    async fn send_ok(
        &self,
        context: &str,
        what: &str,
        call: Call<'_>,
    ) -> Result<Response<Incoming>, S3Error> {
        let response = self.send(context, call).await?;
        if response.status().is_success() {
            Ok(response)
        } else {
            let failure = read_failure(context, response).await?;
            Err(failure.into_error(context, what))
        }
    }

    /// ListObjectsV2: up to 1,000 objects under `prefix` (in key order), after
    /// `start_after` or from `continuation` (the previous page's `next`).
    pub async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        continuation: Option<&str>,
    ) -> Result<ListPage, S3Error> {
        let context = self.context("LIST", Some(prefix).filter(|p| !p.is_empty()));
        let mut call = Call::new(Method::GET, None).query("list-type", "2");
        if !prefix.is_empty() {
            call = call.query("prefix", prefix);
        }
        if let Some(after) = start_after {
            call = call.query("start-after", after);
        }
        if let Some(token) = continuation {
            call = call.query("continuation-token", token);
        }
        let call = call
            .query("encoding-type", "url")
            .query("max-keys", MAX_KEYS.to_string());
        let response = self
            .send_ok(&context, "listing (ListObjectsV2)", call)
            .await?;
        let body = read_body(&context, response.into_body(), MAX_XML_BYTES).await?;
        let xml = parse_xml(&body).map_err(|e| invalid(&context, e))?;
        parse_list(&context, &xml)
    }

    /// HEAD an object (or one part of it); None when it does not exist.
    pub async fn head(
        &self,
        key: &str,
        part_number: Option<u32>,
    ) -> Result<Option<ObjectHead>, S3Error> {
        let context = self.context("HEAD", Some(key));
        let mut call = Call::new(Method::HEAD, Some(key));
        if let Some(n) = part_number {
            call = call.query("partNumber", n.to_string());
        }
        let response = self.send(&context, call).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            let failure = read_failure(&context, response).await?;
            return Err(failure.into_error(&context, "HEAD"));
        }
        object_head(&context, response.headers()).map(Some)
    }

    /// GET an object (or one part of it), its body streamed; None when it does not exist
    /// (404 NoSuchKey; a missing bucket is an error).
    #[allow(clippy::type_complexity)]
    pub async fn get(
        &self,
        key: &str,
        part_number: Option<u32>,
    ) -> Result<Option<(ObjectHead, BoxStream<'static, Result<Bytes, S3Error>>)>, S3Error> {
        let context = self.context("GET", Some(key));
        let mut call = Call::new(Method::GET, Some(key));
        if let Some(n) = part_number {
            call = call.query("partNumber", n.to_string());
        }
        let response = self.send(&context, call).await?;
        if !response.status().is_success() {
            let failure = read_failure(&context, response).await?;
            if failure.status == StatusCode::NOT_FOUND
                && matches!(failure.code.as_deref(), None | Some("NoSuchKey"))
            {
                return Ok(None);
            }
            return Err(failure.into_error(&context, "GET"));
        }
        let head = object_head(&context, response.headers())?;
        Ok(Some((head, body_stream(context, response.into_body()))))
    }

    /// PUT an object in one request; `headers` are its replicable headers (see
    /// [`ObjectHead::headers`]), `tags` go as `x-amz-tagging`. Returns the ETag (unquoted).
    pub async fn put(
        &self,
        key: &str,
        body: Vec<Bytes>,
        headers: &[(String, String)],
        tags: &[(String, String)],
    ) -> Result<Option<String>, S3Error> {
        let context = self.context("PUT", Some(key));
        let mut call = Call::new(Method::PUT, Some(key));
        call.headers = self.object_headers(&context, headers, tags)?;
        call.body = body;
        let response = self.send_ok(&context, "PUT", call).await?;
        let etag = header_text(&context, response.headers(), "etag")?.map(strip_quotes);
        drain(response.into_body()).await;
        Ok(etag)
    }

    fn object_headers(
        &self,
        context: &str,
        headers: &[(String, String)],
        tags: &[(String, String)],
    ) -> Result<HeaderMap, S3Error> {
        let mut map = caller_headers(context, headers)?;
        if !tags.is_empty() {
            let value = HeaderValue::from_str(&tagging_header(tags))
                .map_err(|e| invalid(context, format!("bad tags: {e}")))?;
            map.insert("x-amz-tagging", value);
        }
        Ok(map)
    }

    /// CreateMultipartUpload with the object's headers and tags; returns the upload id.
    pub async fn create_multipart(
        &self,
        key: &str,
        headers: &[(String, String)],
        tags: &[(String, String)],
    ) -> Result<String, S3Error> {
        let context = self.context("CreateMultipartUpload", Some(key));
        let mut call = Call::new(Method::POST, Some(key)).query("uploads", "");
        call.headers = self.object_headers(&context, headers, tags)?;
        let xml = self
            .send_xml(&context, "multipart upload (CreateMultipartUpload)", call)
            .await?;
        match xml.text_of("UploadId") {
            Some(id) if !id.is_empty() => Ok(id.to_owned()),
            _ => Err(invalid(&context, "the answer has no UploadId")),
        }
    }

    /// UploadPart; returns the part's ETag (unquoted).
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Vec<Bytes>,
    ) -> Result<String, S3Error> {
        let context = self.context(&format!("UploadPart {part_number} of"), Some(key));
        let mut call = Call::new(Method::PUT, Some(key))
            .query("partNumber", part_number.to_string())
            .query("uploadId", upload_id);
        call.body = body;
        let response = self
            .send_ok(&context, "multipart upload (UploadPart)", call)
            .await?;
        let etag = header_text(&context, response.headers(), "etag")?.map(strip_quotes);
        drain(response.into_body()).await;
        etag.ok_or_else(|| invalid(&context, "the answer has no ETag"))
    }

    /// CompleteMultipartUpload with `(part number, ETag)` in order; returns the object's
    /// ETag (unquoted). S3 may answer 200 and then an `<Error>`: that is an error here.
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<Option<String>, S3Error> {
        let context = self.context("CompleteMultipartUpload", Some(key));
        if parts.is_empty() {
            return Err(invalid(&context, "no parts to complete the upload with"));
        }
        let mut xml = format!("<CompleteMultipartUpload xmlns=\"{S3_XMLNS}\">");
        for (number, etag) in parts {
            xml.push_str(&format!(
                "<Part><PartNumber>{number}</PartNumber><ETag>{}</ETag></Part>",
                quick_xml::escape::escape(format!("\"{}\"", strip_quotes(etag)))
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let mut call = Call::new(Method::POST, Some(key)).query("uploadId", upload_id);
        call.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
        call.body = vec![Bytes::from(xml)];
        let xml = self
            .send_xml(&context, "multipart upload (CompleteMultipartUpload)", call)
            .await?;
        Ok(xml.text_of("ETag").map(strip_quotes))
    }

    /// AbortMultipartUpload; an upload that is already gone (404) counts as aborted.
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        let context = self.context("AbortMultipartUpload", Some(key));
        let call = Call::new(Method::DELETE, Some(key)).query("uploadId", upload_id);
        let response = self.send(&context, call).await?;
        if response.status().is_success() {
            drain(response.into_body()).await;
            return Ok(());
        }
        let failure = read_failure(&context, response).await?;
        if failure.status == StatusCode::NOT_FOUND
            && matches!(failure.code.as_deref(), None | Some("NoSuchUpload"))
        {
            return Ok(());
        }
        Err(failure.into_error(&context, "multipart upload (AbortMultipartUpload)"))
    }

    /// DELETE an object; one that does not exist (404) counts as deleted.
    pub async fn delete(&self, key: &str) -> Result<(), S3Error> {
        let context = self.context("DELETE", Some(key));
        let response = self
            .send(&context, Call::new(Method::DELETE, Some(key)))
            .await?;
        if response.status().is_success() {
            drain(response.into_body()).await;
            return Ok(());
        }
        let failure = read_failure(&context, response).await?;
        if failure.status == StatusCode::NOT_FOUND
            && matches!(failure.code.as_deref(), None | Some("NoSuchKey"))
        {
            return Ok(());
        }
        Err(failure.into_error(&context, "DELETE"))
    }

    /// GetObjectTagging. A server without tagging answers 501: [`S3Error::Unsupported`].
    pub async fn get_tags(&self, key: &str) -> Result<Vec<(String, String)>, S3Error> {
        let context = self.context("GetObjectTagging", Some(key));
        let call = Call::new(Method::GET, Some(key)).query("tagging", "");
        let xml = self
            .send_xml(&context, "object tagging (GetObjectTagging)", call)
            .await?;
        let mut tags = Vec::new();
        if let Some(set) = xml.child("TagSet") {
            for tag in set.children_named("Tag") {
                let (Some(k), Some(v)) = (tag.text_of("Key"), tag.text_of("Value")) else {
                    return Err(invalid(&context, "a Tag without Key or Value"));
                };
                tags.push((k.to_owned(), v.to_owned()));
            }
        }
        Ok(tags)
    }

    /// PutObjectTagging: replaces the object's tags with `tags`.
    pub async fn put_tags(&self, key: &str, tags: &[(String, String)]) -> Result<(), S3Error> {
        let context = self.context("PutObjectTagging", Some(key));
        let mut xml = format!("<Tagging xmlns=\"{S3_XMLNS}\"><TagSet>");
        for (k, v) in tags {
            xml.push_str(&format!(
                "<Tag><Key>{}</Key><Value>{}</Value></Tag>",
                quick_xml::escape::escape(k.as_str()),
                quick_xml::escape::escape(v.as_str())
            ));
        }
        xml.push_str("</TagSet></Tagging>");
        let mut call = Call::new(Method::PUT, Some(key)).query("tagging", "");
        xml_body(&context, &mut call, xml)?;
        let response = self
            .send_ok(&context, "object tagging (PutObjectTagging)", call)
            .await?;
        drain(response.into_body()).await;
        Ok(())
    }

    /// PutBucketLifecycleConfiguration: replaces the bucket's lifecycle rules with
    /// `rules` (S3 applies them itself).
    pub async fn put_lifecycle(&self, rules: &[LifecycleXmlRule]) -> Result<(), S3Error> {
        let context = self.context("PutBucketLifecycleConfiguration", None);
        let mut xml = format!("<LifecycleConfiguration xmlns=\"{S3_XMLNS}\">");
        for r in rules {
            xml.push_str(&format!(
                "<Rule><ID>{}</ID><Filter><Prefix>{}</Prefix></Filter><Status>Enabled</Status>",
                quick_xml::escape::escape(r.id.as_str()),
                quick_xml::escape::escape(r.prefix.as_str())
            ));
            if let Some(d) = r.expire_after_days {
                xml.push_str(&format!("<Expiration><Days>{d}</Days></Expiration>"));
            }
            if let Some(d) = r.noncurrent_expire_after_days {
                xml.push_str(&format!(
                    "<NoncurrentVersionExpiration><NoncurrentDays>{d}</NoncurrentDays></NoncurrentVersionExpiration>"
                ));
            }
            if let Some(d) = r.abort_incomplete_multipart_after_days {
                xml.push_str(&format!(
                    "<AbortIncompleteMultipartUpload><DaysAfterInitiation>{d}</DaysAfterInitiation></AbortIncompleteMultipartUpload>"
                ));
            }
            xml.push_str("</Rule>");
        }
        xml.push_str("</LifecycleConfiguration>");
        let mut call = Call::new(Method::PUT, None).query("lifecycle", "");
        xml_body(&context, &mut call, xml)?;
        let response = self
            .send_ok(
                &context,
                "bucket lifecycle (PutBucketLifecycleConfiguration)",
                call,
            )
            .await?;
        drain(response.into_body()).await;
        Ok(())
    }

    /// GetBucketLifecycleConfiguration: the bucket's rules (empty when it has none).
    pub async fn get_lifecycle(&self) -> Result<Vec<LifecycleXmlRule>, S3Error> {
        let context = self.context("GetBucketLifecycleConfiguration", None);
        let call = Call::new(Method::GET, None).query("lifecycle", "");
        let xml = match self
            .send_xml(
                &context,
                "bucket lifecycle (GetBucketLifecycleConfiguration)",
                call,
            )
            .await
        {
            Ok(x) => x,
            Err(S3Error::Status { code, .. }) if code == "NoSuchLifecycleConfiguration" => {
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        let days = |e: Option<&Element>, name: &str| {
            e.and_then(|e| e.text_of(name))
                .and_then(|t| t.trim().parse::<u32>().ok())
        };
        Ok(xml
            .children_named("Rule")
            .map(|r| LifecycleXmlRule {
                id: r.text_of("ID").unwrap_or_default().to_owned(),
                prefix: r
                    .child("Filter")
                    .and_then(|f| f.text_of("Prefix"))
                    .or_else(|| r.text_of("Prefix"))
                    .unwrap_or_default()
                    .to_owned(),
                expire_after_days: days(r.child("Expiration"), "Days"),
                noncurrent_expire_after_days: days(
                    r.child("NoncurrentVersionExpiration"),
                    "NoncurrentDays",
                ),
                abort_incomplete_multipart_after_days: days(
                    r.child("AbortIncompleteMultipartUpload"),
                    "DaysAfterInitiation",
                ),
            })
            .collect())
    }

    /// CreateBucket (the configured bucket; a bucket already ours counts as created).
    /// Outside us-east-1 the region goes as the location constraint.
    pub async fn create_bucket(&self) -> Result<(), S3Error> {
        let context = self.context("CreateBucket", None);
        let mut call = Call::new(Method::PUT, None);
        if self.inner.region != "us-east-1" {
            call.body = vec![Bytes::from(format!(
                "<CreateBucketConfiguration xmlns=\"{S3_XMLNS}\"><LocationConstraint>{}\
                 </LocationConstraint></CreateBucketConfiguration>",
                quick_xml::escape::escape(self.inner.region.as_str())
            ))];
        }
        let response = self.send(&context, call).await?;
        if response.status().is_success() {
            drain(response.into_body()).await;
            return Ok(());
        }
        let failure = read_failure(&context, response).await?;
        if failure.code.as_deref() == Some("BucketAlreadyOwnedByYou") {
            return Ok(());
        }
        Err(failure.into_error(&context, "CreateBucket"))
    }

    /// Send, insist on success, and parse the XML answer; an `<Error>` document in a 200
    /// answer is an error too.
    async fn send_xml(
        &self,
        context: &str,
        what: &str,
        call: Call<'_>,
    ) -> Result<Element, S3Error> {
        let response = self.send_ok(context, what, call).await?;
        let status = response.status();
        let body = read_body(context, response.into_body(), MAX_XML_BYTES).await?;
        let xml = parse_xml(&body).map_err(|e| invalid(context, e))?;
        if xml.name == "Error" {
            let failure = Failure {
                status,
                code: xml.text_of("Code").map(str::to_owned),
                message: xml.text_of("Message").unwrap_or_default().to_owned(),
            };
            return Err(failure.into_error(context, what));
        }
        Ok(xml)
    }
}

/// A failure answer, read.
struct Failure {
    status: StatusCode,
    /// S3's error code, when the body was an `<Error>` document.
    code: Option<String>,
    message: String,
}

impl Failure {
    fn into_error(self, context: &str, what: &str) -> S3Error {
        let status = self.status.as_u16();
        let code = self.code.unwrap_or_else(|| {
            self.status
                .canonical_reason()
                .unwrap_or("(no error code)")
                .replace(' ', "")
        });
        let context = context.to_owned();
        let message = if self.message.trim().is_empty() {
            "(no message)".to_owned()
        } else {
            self.message
        };
        if matches!(status, 401 | 403)
            || matches!(
                code.as_str(),
                "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch"
            )
        {
            S3Error::AccessDenied {
                context,
                status,
                code,
                message,
            }
        } else if status == 501 || code == "NotImplemented" {
            S3Error::Unsupported {
                context,
                what: what.to_owned(),
                message: format!("{status} {code}: {message}"),
            }
        } else {
            S3Error::Status {
                context,
                status,
                code,
                message,
            }
        }
    }
}

/// Read a failure answer: S3's `<Error><Code>…<Message>…`, else the first 200 bytes of
/// the body.
async fn read_failure(context: &str, response: Response<Incoming>) -> Result<Failure, S3Error> {
    let status = response.status();
    let body = read_body(context, response.into_body(), MAX_ERROR_BYTES).await?;
    if let Ok(xml) = parse_xml(&body)
        && xml.name == "Error"
    {
        return Ok(Failure {
            status,
            code: xml.text_of("Code").map(str::to_owned),
            message: xml.text_of("Message").unwrap_or_default().to_owned(),
        });
    }
    let echo = body.get(..ERROR_ECHO_BYTES).unwrap_or(&body);
    let text = String::from_utf8_lossy(echo);
    let message = if text.trim().is_empty() {
        "(no error body)".to_owned()
    } else {
        show_key(text.trim())
    };
    Ok(Failure {
        status,
        code: None,
        message,
    })
}

/// Read a whole (small) body: at most `limit` bytes, each piece within the timeout.
async fn read_body(context: &str, mut body: Incoming, limit: usize) -> Result<Vec<u8>, S3Error> {
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(RESPONSE_TIMEOUT, body.frame()).await {
            Err(_) => {
                return Err(transport(
                    context,
                    format!(
                        "the answer's body sent nothing for {} s",
                        RESPONSE_TIMEOUT.as_secs()
                    ),
                ));
            }
            Ok(None) => return Ok(out),
            Ok(Some(Err(e))) => {
                return Err(transport(
                    context,
                    format!("error reading the answer: {}", cause_chain(&e)),
                ));
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if out.len() + data.len() > limit {
                        return Err(invalid(
                            context,
                            format!("the answer is larger than {limit} bytes"),
                        ));
                    }
                    out.extend_from_slice(&data);
                }
            }
        }
    }
}

/// Read and drop the rest of a body, so that the connection goes back to the pool.
async fn drain(mut body: Incoming) {
    while let Ok(Some(Ok(_))) = tokio::time::timeout(RESPONSE_TIMEOUT, body.frame()).await {}
}

/// A GET body as a stream of pieces; a transport failure (or 60 s without data) ends it
/// with an error.
fn body_stream(context: String, body: Incoming) -> BoxStream<'static, Result<Bytes, S3Error>> {
    let pieces = futures::stream::unfold(Some(body), move |state| {
        let context = context.clone();
        async move {
            let mut body = state?;
            loop {
                match tokio::time::timeout(RESPONSE_TIMEOUT, body.frame()).await {
                    Err(_) => {
                        let e = transport(
                            &context,
                            format!("the body sent nothing for {} s", RESPONSE_TIMEOUT.as_secs()),
                        );
                        return Some((Err(e), None));
                    }
                    Ok(None) => return None,
                    Ok(Some(Err(e))) => {
                        let e = transport(
                            &context,
                            format!("error reading the body: {}", cause_chain(&e)),
                        );
                        return Some((Err(e), None));
                    }
                    Ok(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data()
                            && !data.is_empty()
                        {
                            return Some((Ok(data), Some(body)));
                        }
                    }
                }
            }
        }
    });
    pieces.boxed()
}

/// An XML request body with the Content-MD5 S3 requires of configuration PUTs.
fn xml_body(context: &str, call: &mut Call<'_>, xml: String) -> Result<(), S3Error> {
    let md5 = {
        use base64::Engine as _;
        use md5::Digest as _;
        base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(xml.as_bytes()))
    };
    let md5 =
        HeaderValue::from_str(&md5).map_err(|e| invalid(context, format!("content-md5: {e}")))?;
    call.headers.insert("content-md5", md5);
    call.headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    call.body = vec![Bytes::from(xml)];
    Ok(())
}

fn parse_list(context: &str, xml: &Element) -> Result<ListPage, S3Error> {
    if xml.name != "ListBucketResult" {
        return Err(invalid(
            context,
            format!("expected a ListBucketResult, got <{}>", xml.name),
        ));
    }
    let url_encoded = xml.text_of("EncodingType") == Some("url");
    let mut objects = Vec::new();
    for item in xml.children_named("Contents") {
        let Some(raw_key) = item.text_of("Key") else {
            return Err(invalid(context, "a listed object without Key"));
        };
        // A server that echoes EncodingType without encoding (s3s-fs 0.14 does) sends
        // keys that may not decode ("100%/x"): those are taken as they are.
        let key = if url_encoded {
            url_decode(raw_key).unwrap_or_else(|| {
                tracing::debug!(key = %show_key(raw_key), "{context}: a listed key does not url-decode; taken as sent");
                raw_key.to_owned()
            })
        } else {
            raw_key.to_owned()
        };
        let size = match item.text_of("Size") {
            Some(text) => text.trim().parse::<u64>().map_err(|_| {
                invalid(
                    context,
                    format!("bad Size {text:?} of {:?}", show_key(&key)),
                )
            })?,
            None => 0,
        };
        objects.push(S3Object {
            etag: item.text_of("ETag").map(strip_quotes),
            last_modified_ms: item.text_of("LastModified").and_then(parse_iso8601_ms),
            size,
            key,
        });
    }
    let truncated = xml
        .text_of("IsTruncated")
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("true"));
    let next = if truncated {
        match xml.text_of("NextContinuationToken") {
            Some(token) if !token.is_empty() => Some(token.to_owned()),
            _ => {
                return Err(invalid(
                    context,
                    "the listing is truncated but has no NextContinuationToken",
                ));
            }
        }
    } else {
        None
    };
    Ok(ListPage { objects, next })
}

/// `encoding-type=url` decoding: `%XX` to the byte, `+` to a space (AWS encodes a space
/// as `+`, and `+` itself as `%2B`); None unless the bytes are UTF-8.
fn url_decode(text: &str) -> Option<String> {
    let input = text.as_bytes();
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&byte) = input.get(i) {
        match byte {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = input.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Days from 1970-01-01 to a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// ISO 8601 as S3 lists it (`2009-10-12T17:50:30.000Z`; fractions and a `±hh:mm`
/// offset accepted) to milliseconds since the epoch.
fn parse_iso8601_ms(text: &str) -> Option<i64> {
    let b = text.trim().as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        b.get(from..to)?.iter().try_fold(0i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    if b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't' | b' '))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let mut at = 19;
    let mut millis = 0i64;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let mut digits = 0;
        while let Some(c) = b.get(at).filter(|c| c.is_ascii_digit()) {
            if digits < 3 {
                millis = millis * 10 + i64::from(c - b'0');
            }
            digits += 1;
            at += 1;
        }
        for _ in digits..3 {
            millis *= 10;
        }
    }
    let offset_secs = match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        None => 0,
        Some(&sign @ (b'+' | b'-')) if b.len() == at + 6 && b.get(at + 3) == Some(&b':') => {
            let secs = num(at + 1, at + 3)? * 3600 + num(at + 4, at + 6)? * 60;
            if sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_secs;
    Some(secs * 1000 + millis)
}

/// An XML element: its local name, its text (the concatenation of its text pieces,
/// entities resolved) and its child elements.
#[derive(Debug, Default)]
struct Element {
    name: String,
    text: String,
    children: Vec<Element>,
}

impl Element {
    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }
    fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |c| c.name == name)
    }
    fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }
}

/// Parse an XML document into its root element. S3 may send whitespace before the
/// document (keep-alive while it completes a multipart upload).
fn parse_xml(body: &[u8]) -> Result<Element, String> {
    use quick_xml::events::Event;

    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    let text = std::str::from_utf8(body.get(start..).unwrap_or_default())
        .map_err(|e| format!("the XML answer is not UTF-8: {e}"))?;
    let mut reader = quick_xml::Reader::from_str(text);
    let bad = |e: &dyn fmt::Display| format!("bad XML in the answer: {e}");
    let name_of = |raw: &[u8]| String::from_utf8_lossy(raw).into_owned();
    let mut stack: Vec<Element> = Vec::new();
    loop {
        match reader.read_event().map_err(|e| bad(&e))? {
            Event::Start(e) => stack.push(Element {
                name: name_of(e.local_name().as_ref()),
                ..Element::default()
            }),
            Event::Empty(e) => {
                let element = Element {
                    name: name_of(e.local_name().as_ref()),
                    ..Element::default()
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => return Ok(element),
                }
            }
            Event::End(_) => {
                let Some(element) = stack.pop() else {
                    return Err(bad(&"an end tag without a start"));
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => return Ok(element),
                }
            }
            Event::Text(t) => {
                if let Some(current) = stack.last_mut() {
                    current
                        .text
                        .push_str(&t.xml10_content().map_err(|e| bad(&e))?);
                }
            }
            Event::CData(t) => {
                if let Some(current) = stack.last_mut() {
                    current.text.push_str(&t.decode().map_err(|e| bad(&e))?);
                }
            }
            Event::GeneralRef(r) => {
                let Some(current) = stack.last_mut() else {
                    continue;
                };
                if let Some(c) = r.resolve_char_ref().map_err(|e| bad(&e))? {
                    current.text.push(c);
                } else {
                    let name = r.decode().map_err(|e| bad(&e))?;
                    match quick_xml::escape::resolve_predefined_entity(&name) {
                        Some(value) => current.text.push_str(value),
                        None => return Err(bad(&format!("unknown entity &{name};"))),
                    }
                }
            }
            Event::Eof => return Err(bad(&"the document ends before its root element does")),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn client(endpoint: &str, vhost: bool) -> Result<S3Client, S3Error> {
        S3Client::new(S3Config {
            endpoint: Some(endpoint.to_owned()),
            bucket: "bkt".into(),
            region: "us-east-1".into(),
            access_key_id: "AKID".into(),
            secret_access_key: "very-secret".into(),
            session_token: Some("token-secret".into()),
            virtual_hosted_style: vhost,
        })
    }

    #[test]
    fn endpoints_are_checked_and_described() {
        let c = client("http://127.0.0.1:9000/", false).unwrap();
        assert_eq!(c.describe(), "s3 http://127.0.0.1:9000/bkt");
        assert_eq!(c.inner.host_header, "127.0.0.1:9000");
        assert_eq!(c.inner.path_prefix, "/bkt");
        let c = client("https://minio.example:443", true).unwrap();
        assert_eq!(c.describe(), "s3 https://bkt.minio.example:443");
        assert_eq!(c.inner.host_header, "bkt.minio.example");
        assert_eq!(c.inner.path_prefix, "");
        let debug = format!("{c:?}");
        assert!(!debug.contains("very-secret") && !debug.contains("token-secret"));
        for bad in [
            "ftp://h",
            "127.0.0.1:9000",
            "http://h/prefix",
            "http://h/?x=1",
            "http://u:p@h",
            "not a url",
        ] {
            let e = client(bad, false).unwrap_err();
            assert!(matches!(e, S3Error::Invalid { .. }), "{bad}: {e}");
            assert!(e.to_string().starts_with("open s3 "), "{e}");
        }
        let default = S3Client::new(S3Config {
            endpoint: None,
            bucket: "b".into(),
            region: "eu-west-3".into(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            session_token: None,
            virtual_hosted_style: false,
        })
        .unwrap();
        assert_eq!(
            default.describe(),
            "s3 https://s3.eu-west-3.amazonaws.com/b"
        );
        let debug = format!(
            "{:?}",
            S3Config {
                endpoint: None,
                bucket: "b".into(),
                region: "r".into(),
                access_key_id: "id".into(),
                secret_access_key: "very-secret".into(),
                session_token: None,
                virtual_hosted_style: false,
            }
        );
        assert!(!debug.contains("very-secret"), "{debug}");
    }

    #[test]
    fn queries_tags_and_keys_encode() {
        let q = vec![
            ("uploads".to_owned(), String::new()),
            ("prefix".to_owned(), "a b/ü+".to_owned()),
        ];
        assert_eq!(query_string(&q), "uploads&prefix=a%20b%2F%C3%BC%2B");
        assert_eq!(
            tagging_header(&[("k 1".into(), "v&=".into()), ("b".into(), String::new())]),
            "k%201=v%26%3D&b="
        );
        assert_eq!(show_key("a\u{1}b/ü"), "a\\u{1}b/ü");
        assert_eq!(url_decode("a+b%2B%25%01%C3%BC").unwrap(), "a b+%\u{1}ü");
        assert_eq!(url_decode("%zz"), None);
        assert_eq!(url_decode("%C3"), None);
        assert_eq!(url_decode("%4"), None);
        assert_eq!(url_decode("%+1"), None);
    }

    #[test]
    fn iso8601_times() {
        assert_eq!(
            parse_iso8601_ms("2009-10-12T17:50:30.000Z"),
            Some(1_255_369_830_000)
        );
        assert_eq!(
            parse_iso8601_ms("2009-10-12T17:50:30.5Z"),
            Some(1_255_369_830_500)
        );
        assert_eq!(
            parse_iso8601_ms("2009-10-12T17:50:30Z"),
            Some(1_255_369_830_000)
        );
        assert_eq!(
            parse_iso8601_ms("2009-10-12T19:50:30.123456+02:00"),
            Some(1_255_369_830_123)
        );
        assert_eq!(parse_iso8601_ms("2009-10-12"), None);
        assert_eq!(parse_iso8601_ms("2009-13-12T17:50:30Z"), None);
    }

    #[test]
    fn xml_listing_and_errors() {
        let body = b"  <?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
            <ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
            <Name>bkt</Name><IsTruncated>true</IsTruncated><EncodingType>url</EncodingType>\
            <Contents><Key>a%2F%2Fb+c%01</Key><Size>3</Size><ETag>&quot;abc&quot;</ETag>\
            <LastModified>2009-10-12T17:50:30.000Z</LastModified></Contents>\
            <Contents><Key>dir/</Key><Size>0</Size></Contents>\
            <NextContinuationToken>tok&amp;en</NextContinuationToken></ListBucketResult>";
        let xml = parse_xml(body).unwrap();
        let page = parse_list("LIST", &xml).unwrap();
        assert_eq!(page.next.as_deref(), Some("tok&en"));
        assert_eq!(
            page.objects[0],
            S3Object {
                key: "a//b c\u{1}".into(),
                size: 3,
                etag: Some("abc".into()),
                last_modified_ms: Some(1_255_369_830_000),
            }
        );
        assert_eq!(page.objects[1].key, "dir/");

        let err = parse_xml(
            b"<Error><Code>SignatureDoesNotMatch</Code><Message>no &#x263A;</Message></Error>",
        )
        .unwrap();
        let failure = Failure {
            status: StatusCode::FORBIDDEN,
            code: err.text_of("Code").map(str::to_owned),
            message: err.text_of("Message").unwrap().to_owned(),
        };
        let e = failure.into_error("PUT a//b at s3 http://h/bkt", "PUT");
        assert_eq!(
            e.to_string(),
            "PUT a//b at s3 http://h/bkt: access denied: 403 SignatureDoesNotMatch: no ☺"
        );
        let e = Failure {
            status: StatusCode::NOT_IMPLEMENTED,
            code: None,
            message: "(no error body)".into(),
        }
        .into_error(
            "GetObjectTagging k at s",
            "object tagging (GetObjectTagging)",
        );
        assert!(matches!(e, S3Error::Unsupported { .. }));
        assert_eq!(
            e.to_string(),
            "GetObjectTagging k at s: not supported by this server: object tagging \
             (GetObjectTagging): 501 NotImplemented: (no error body)"
        );
        assert!(parse_xml(b"<a><b></a>").is_err());
        assert!(parse_xml(b"<a>").is_err());
        assert!(parse_xml(b"<a>&bogus;</a>").is_err());
    }

    #[test]
    fn caller_headers_are_checked() {
        let ok = caller_headers(
            "PUT k",
            &[
                ("Content-Type".into(), "text/plain".into()),
                ("x-amz-meta-ü".into(), "v".into()),
            ],
        );
        assert!(matches!(ok, Err(S3Error::Invalid { .. })));
        let ok = caller_headers(
            "PUT k",
            &[
                ("Content-Type".into(), "text/plain".into()),
                ("x-amz-meta-a".into(), "ü".into()),
            ],
        )
        .unwrap();
        assert_eq!(ok["content-type"], "text/plain");
        for reserved in ["Authorization", "host", "x-amz-date", "content-length"] {
            let e = caller_headers("PUT k", &[(reserved.into(), "x".into())]).unwrap_err();
            assert!(e.to_string().contains("set by the client"), "{e}");
        }
        let e = caller_headers("PUT k", &[("a".into(), "line\nbreak".into())]).unwrap_err();
        assert!(
            e.to_string().starts_with("PUT k: bad value of header"),
            "{e}"
        );
    }
}
