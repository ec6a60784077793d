//! AWS Signature Version 4, both ways: verifying signed requests against the configured
//! keys (the table server's DynamoDB API) and signing lifeboat's own requests (to a table
//! server, and to S3 from lifeboat's raw S3 client, `lifeboat_objects::s3`).
//!
//! boto3 and the AWS SDKs sign every DynamoDB request with SigV4. [`verify`] recomputes
//! the signature the way the signer did and accepts the request only if the two match.
//! [`sign`] signs a DynamoDB-style request (the benchmarks and tests), [`sign_s3`] an S3
//! request. Built on `hmac` + `sha2` directly: no published crate exposes SigV4
//! *verification* for a generic (non-S3) service (s3s keeps its `sig_v4` module private),
//! and S3's canonical URI (below) has to be exactly the path sent.
//!
//! Two forms are accepted by [`verify`]:
//! - the `Authorization` header, `AWS4-HMAC-SHA256 Credential=<key>/<YYYYMMDD>/<region>/
//!   <service>/aws4_request, SignedHeaders=<a;b;c>, Signature=<hex>`, with the time in
//!   `X-Amz-Date` (or `Date`), both in ISO-8601 basic format `YYYYMMDD'T'HHMMSS'Z'`;
//! - the presigned query form (`X-Amz-Algorithm`, `X-Amz-Credential`, `X-Amz-Date`,
//!   `X-Amz-Expires`, `X-Amz-SignedHeaders`, `X-Amz-Signature`), used only when there is
//!   no `Authorization` header.
//!
//! The canonical request, as AWS documents it and as botocore, aws-sigv4 (Rust) and the
//! CRT build it for every service except S3 ([`verify`], [`sign`]):
//! - method;
//! - canonical URI: the path *as sent* (still percent-encoded), with `.`/`..` and empty
//!   segments removed, URI-encoded again (so `%20` becomes `%2520`: "double encoding");
//!   DynamoDB's path is always `/`, where none of this matters;
//! - canonical query: each name and value percent-decoded then encoded with only RFC 3986
//!   unreserved characters left bare, sorted by name then value (presigned form: without
//!   `X-Amz-Signature`);
//! - one `name:value` line per signed header, in the order of `SignedHeaders`, values
//!   trimmed with inner runs of spaces/tabs collapsed, repeated headers joined with `,`;
//! - the `SignedHeaders` list;
//! - the payload hash: `X-Amz-Content-Sha256` if sent (it must equal the body's SHA-256),
//!   else the body's SHA-256.
//!
//! S3 ([`sign_s3`]) differs in the canonical URI only: it is the path exactly as sent,
//! already percent-encoded by the caller, neither normalized nor encoded a second time,
//! so the keys `a//b`, `a/./b`, `a/../b` and `/x` are signed as themselves. The payload
//! hash is always sent, in `X-Amz-Content-Sha256`.
//!
//! The caller must present `host` in `headers`: over HTTP/2 the authority travels in the
//! URI, not in a header, and has to be copied into a `host` header before calling.
//!
//! Not supported when verifying: SigV4a (`AWS4-ECDSA-P256-SHA256`), `UNSIGNED-PAYLOAD`
//! and the chunked `STREAMING-*` payloads (S3-only features the table server has no use
//! for). `X-Amz-Security-Token` is accepted and not checked: keys here are long-term
//! secrets and there is no token store, so the secret alone authenticates (it is still
//! covered by the signature whenever the client signed it).

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const TERMINATOR: &str = "aws4_request";
/// How far the signed time may be from `now`, either way (DynamoDB's 15 minutes).
const MAX_SKEW_SECS: i64 = 15 * 60;
/// The longest `X-Amz-Expires` AWS accepts: one week.
const MAX_PRESIGNED_EXPIRES_SECS: i64 = 7 * 24 * 60 * 60;
/// How much of a malformed header is echoed back in an error message.
const MAX_ECHO_CHARS: usize = 256;

/// An access key's secret, looked up by access key id (None: unknown key).
pub trait Keys {
    fn secret(&self, access_key_id: &str) -> Option<String>;
}

impl Keys for HashMap<String, String> {
    fn secret(&self, access_key_id: &str) -> Option<String> {
        self.get(access_key_id).cloned()
    }
}

/// Who signed a verified request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    pub access_key_id: String,
    pub region: String,
    pub service: String,
}

/// Why a request is refused by [`verify`] (or, as [`SigError::Incomplete`], why [`sign`] or
/// [`sign_s3`] could not sign). Each maps to DynamoDB's error, the table server's answer:
/// [`SigError::code`] gives the `__type` suffix, `Display` DynamoDB's message text, and all
/// are HTTP 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// Neither an `Authorization` header nor presigned query parameters.
    #[error("Request is missing Authentication Token")]
    MissingAuthenticationToken,
    /// The access key id is not among the configured keys.
    #[error("The security token included in the request is invalid.")]
    UnrecognizedClient,
    /// The signature does not match the one computed from the request and the secret.
    #[error(
        "The request signature we calculated does not match the signature you provided. \
         Check your AWS Secret Access Key and signing method. Consult the service \
         documentation for details."
    )]
    SignatureMismatch,
    /// `X-Amz-Content-Sha256` is not the SHA-256 of the body (this includes
    /// `UNSIGNED-PAYLOAD` and the `STREAMING-*` values, which are not supported).
    #[error("The provided 'x-amz-content-sha256' header does not match what was computed.")]
    PayloadHashMismatch,
    /// The signed time is too old: more than 15 minutes before now, or for a presigned
    /// request, more than `X-Amz-Expires` seconds. `window` is `"15 min."` or `"<n> sec."`.
    #[error("Signature expired: {signed} is now earlier than {earliest} ({now} - {window})")]
    Expired {
        signed: String,
        earliest: String,
        now: String,
        window: String,
    },
    /// The signed time is more than 15 minutes after now.
    #[error("Signature not yet current: {signed} is still later than {latest} ({now} + 15 min.)")]
    NotYetCurrent {
        signed: String,
        latest: String,
        now: String,
    },
    /// `host` is not among the signed headers.
    #[error("'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")]
    HostNotSigned,
    /// The credential scope's date is not the date of `X-Amz-Date` (or `Date`).
    #[error(
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date \
         from HTTP: '{scope}' != '{date}', from '{header}'."
    )]
    ScopeDateMismatch {
        scope: String,
        date: String,
        header: &'static str,
    },
    /// The credential scope does not end in `aws4_request`.
    #[error("Credential should be scoped with a valid terminator: 'aws4_request', not '{0}'.")]
    BadTerminator(String),
    /// The `Authorization` header (or the presigned query) is malformed or incomplete;
    /// the message says what is missing or wrong.
    #[error("{0}")]
    Incomplete(String),
}

impl SigError {
    /// The DynamoDB error type, the suffix of `__type` (`com.amazon.coral.service#…`).
    pub fn code(&self) -> &'static str {
        match self {
            SigError::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            SigError::UnrecognizedClient => "UnrecognizedClientException",
            SigError::Incomplete(_) => "IncompleteSignatureException",
            SigError::SignatureMismatch
            | SigError::PayloadHashMismatch
            | SigError::Expired { .. }
            | SigError::NotYetCurrent { .. }
            | SigError::HostNotSigned
            | SigError::ScopeDateMismatch { .. }
            | SigError::BadTerminator(_) => "InvalidSignatureException",
        }
    }

    /// The HTTP status DynamoDB answers with: 400 for all of these.
    pub fn status(&self) -> http::StatusCode {
        http::StatusCode::BAD_REQUEST
    }
}

/// Verify a request: method, the raw path (as sent, percent-encoded), the raw query
/// string (without '?', may be empty), the headers, the body bytes, and the current time.
///
/// Accepts the Authorization header form (AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…,
/// Signature=…) with X-Amz-Date (or Date), or the presigned query form; checks the payload
/// hash (X-Amz-Content-Sha256 if present, else the body's SHA-256) matches the body;
/// refuses a request more than 15 minutes from `now`; compares signatures in constant time.
/// Never panics, whatever the headers hold.
pub fn verify(
    method: &str,
    raw_path: &str,
    raw_query: &str,
    headers: &HeaderMap,
    body: &[u8],
    keys: &dyn Keys,
    now: SystemTime,
) -> Result<Signer, SigError> {
    let query = parse_query(raw_query);
    let auth = match headers.get(http::header::AUTHORIZATION) {
        Some(value) => from_header(value, headers)?,
        None if is_presigned(&query) => from_query(&query)?,
        None => return Err(SigError::MissingAuthenticationToken),
    };

    let scope = parse_credential(&auth.credential)?;
    if scope.terminator != TERMINATOR {
        return Err(SigError::BadTerminator(echo(scope.terminator.as_bytes())));
    }
    let date = auth.amz_date.get(..8).unwrap_or_default();
    if scope.date != date {
        return Err(SigError::ScopeDateMismatch {
            scope: echo(scope.date.as_bytes()),
            date: date.to_owned(),
            header: auth.date_header,
        });
    }
    if !auth
        .signed_headers
        .split(';')
        .any(|name| name.eq_ignore_ascii_case("host"))
    {
        return Err(SigError::HostNotSigned);
    }
    check_time(&auth, system_secs(now))?;

    let Some(secret) = keys.secret(scope.access_key_id) else {
        return Err(SigError::UnrecognizedClient);
    };

    let body_hash = hex::encode(Sha256::digest(body));
    let payload_hash = match headers.get("x-amz-content-sha256") {
        None => body_hash,
        Some(sent) => match sent.to_str() {
            Ok(sent) if sent.eq_ignore_ascii_case(&body_hash) => sent.to_owned(),
            _ => return Err(SigError::PayloadHashMismatch),
        },
    };

    let canonical = canonical_request(
        method,
        raw_path,
        &query,
        auth.presigned,
        headers,
        &auth.signed_headers,
        &payload_hash,
    );
    let mac = signature_mac(
        &secret,
        &auth.amz_date,
        scope.date,
        scope.region,
        scope.service,
        &canonical,
    )?;
    let mut provided = [0u8; 32];
    if hex::decode_to_slice(auth.signature.as_bytes(), &mut provided).is_err() {
        return Err(SigError::SignatureMismatch);
    }
    // Constant time: `verify_slice` compares with `subtle`.
    mac.verify_slice(&provided)
        .map_err(|_| SigError::SignatureMismatch)?;

    Ok(Signer {
        access_key_id: scope.access_key_id.to_owned(),
        region: scope.region.to_owned(),
        service: scope.service.to_owned(),
    })
}

/// Sign a request as an SDK does (the other side of [`verify`], for lifeboat's own
/// clients: the benchmarks and tests that talk to a table server from Rust). Adds
/// `x-amz-date` and `authorization` to `headers`, signing `host`, `x-amz-date` and,
/// when present, `content-type` and `x-amz-target`; `headers` must hold `host`.
#[allow(clippy::too_many_arguments)]
pub fn sign(
    method: &str,
    raw_path: &str,
    headers: &mut HeaderMap,
    body: &[u8],
    access_key_id: &str,
    secret: &str,
    region: &str,
    service: &str,
    now: SystemTime,
) -> Result<(), SigError> {
    let amz_date = format_amz_date(system_secs(now));
    let date = amz_date.get(..8).unwrap_or_default().to_owned();
    let value = http::HeaderValue::from_str(&amz_date)
        .map_err(|_| SigError::Incomplete("x-amz-date".into()))?;
    headers.insert("x-amz-date", value);
    let mut names: Vec<&str> = ["content-type", "host", "x-amz-date", "x-amz-target"]
        .into_iter()
        .filter(|n| headers.contains_key(*n))
        .collect();
    names.sort_unstable();
    let signed_headers = names.join(";");
    let payload_hash = hex::encode(Sha256::digest(body));
    let canonical = canonical_request(
        method,
        raw_path,
        &[],
        false,
        headers,
        &signed_headers,
        &payload_hash,
    );
    let mac = signature_mac(secret, &amz_date, &date, region, service, &canonical)?;
    let signature = hex::encode(mac.finalize().into_bytes());
    let auth = format!(
        "{ALGORITHM} Credential={access_key_id}/{date}/{region}/{service}/{TERMINATOR}, SignedHeaders={signed_headers}, Signature={signature}"
    );
    let value = http::HeaderValue::from_str(&auth)
        .map_err(|_| SigError::Incomplete("authorization".into()))?;
    headers.insert(http::header::AUTHORIZATION, value);
    Ok(())
}

/// The access key a request is signed with. `Debug` shows the key id only, never the
/// secret or the session token.
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    /// Temporary credentials' token (STS), sent and signed as `x-amz-security-token`.
    pub session_token: Option<&'a str>,
}

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.map(|_| "<redacted>"))
            .finish()
    }
}

/// Sign an S3 request (service `s3`): adds `x-amz-content-sha256` (= `payload_sha256`),
/// `x-amz-date`, `x-amz-security-token` (with a session token) and `authorization` to
/// `headers`, which must hold `host`.
///
/// - `raw_path` is the path exactly as it goes on the request line, already
///   percent-encoded by the caller (see [`uri_encode`] with `encode_slash` false); it is
///   signed as it is: not normalized, not encoded again. It must start with `/`.
/// - `raw_query` holds the query's names and values *decoded*; each is URI-encoded
///   ([`uri_encode`], `/` too) and the pairs sorted. The request line's query must carry
///   the same pairs (in any order; an empty value may be sent as `name` or `name=`).
/// - Signed: `host`, `range`, `content-type`, `content-md5` and every `x-amz-*` header
///   present (so `x-amz-content-sha256`, `x-amz-date` and the token always).
/// - `payload_sha256`: the lower-case hex SHA-256 of the body (`UNSIGNED-PAYLOAD` would
///   work too; lifeboat always hashes).
#[allow(clippy::too_many_arguments)]
pub fn sign_s3(
    method: &str,
    raw_path: &str,
    raw_query: &[(String, String)],
    headers: &mut HeaderMap,
    payload_sha256: &str,
    credentials: &Credentials<'_>,
    region: &str,
    now: SystemTime,
) -> Result<(), SigError> {
    const SERVICE: &str = "s3";
    if !raw_path.starts_with('/') {
        return Err(SigError::Incomplete(format!(
            "the path to sign must start with '/', not '{}'",
            echo(raw_path.as_bytes())
        )));
    }
    if !headers.contains_key(http::header::HOST) {
        return Err(SigError::Incomplete(
            "a request to sign needs its 'host' header".into(),
        ));
    }
    let amz_date = format_amz_date(system_secs(now));
    let date = amz_date.get(..8).unwrap_or_default().to_owned();
    let header_value = |name: &str, value: &str| {
        http::HeaderValue::from_str(value)
            .map_err(|_| SigError::Incomplete(format!("'{name}' is not a valid header value")))
    };
    headers.insert(
        "x-amz-content-sha256",
        header_value("x-amz-content-sha256", payload_sha256)?,
    );
    headers.insert("x-amz-date", header_value("x-amz-date", &amz_date)?);
    match credentials.session_token {
        Some(token) => {
            headers.insert(
                "x-amz-security-token",
                header_value("x-amz-security-token", token)?,
            );
        }
        None => {
            headers.remove("x-amz-security-token");
        }
    }

    let mut names: Vec<&str> = headers
        .keys()
        .map(http::HeaderName::as_str)
        .filter(|name| {
            matches!(*name, "host" | "range" | "content-type" | "content-md5")
                || name.starts_with("x-amz-")
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    let signed_headers = names.join(";");

    let query: Vec<(Vec<u8>, Vec<u8>)> = raw_query
        .iter()
        .map(|(name, value)| (name.as_bytes().to_vec(), value.as_bytes().to_vec()))
        .collect();
    let canonical = canonical_request_with_uri(
        method,
        raw_path,
        &query,
        false,
        headers,
        &signed_headers,
        payload_sha256,
    );
    let mac = signature_mac(
        credentials.secret_access_key,
        &amz_date,
        &date,
        region,
        SERVICE,
        &canonical,
    )?;
    let signature = hex::encode(mac.finalize().into_bytes());
    let auth = format!(
        "{ALGORITHM} Credential={}/{date}/{region}/{SERVICE}/{TERMINATOR}, SignedHeaders={signed_headers}, Signature={signature}",
        credentials.access_key_id
    );
    let mut value = http::HeaderValue::from_str(&auth)
        .map_err(|_| SigError::Incomplete("authorization".into()))?;
    value.set_sensitive(true);
    headers.insert(http::header::AUTHORIZATION, value);
    Ok(())
}

/// The authentication parameters, from the header or from the query.
struct AuthParams {
    credential: String,
    signed_headers: String,
    signature: String,
    /// `YYYYMMDD'T'HHMMSS'Z'`, validated.
    amz_date: String,
    /// Seconds since the epoch of `amz_date`.
    timestamp: i64,
    /// Where the date came from, for messages: "X-Amz-Date" or "Date".
    date_header: &'static str,
    /// Presigned: `X-Amz-Expires` seconds; the signature is left out of the canonical query.
    presigned: bool,
    expires: i64,
}

/// `Credential=<key id>/<date>/<region>/<service>/<terminator>`.
struct Scope<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    terminator: &'a str,
}

fn from_header(value: &http::HeaderValue, headers: &HeaderMap) -> Result<AuthParams, SigError> {
    let Ok(text) = value.to_str() else {
        return Err(SigError::Incomplete(format!(
            "Authorization header is not plain ASCII text. Authorization={}",
            echo(value.as_bytes())
        )));
    };
    let text = text.trim_matches([' ', '\t']);
    let (algorithm, params) = match text.find([' ', '\t']) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };

    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in params.split(',') {
        let Some((name, value)) = part.split_once('=') else {
            continue;
        };
        let slot = match name.trim_matches([' ', '\t']) {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => continue,
        };
        slot.get_or_insert(value.trim_matches([' ', '\t']));
    }

    let (date_value, date_header) = match headers.get("x-amz-date") {
        Some(v) => (Some(v), "X-Amz-Date"),
        None => (headers.get(http::header::DATE), "Date"),
    };

    // Like AWS, name everything that is missing at once, then echo the header.
    let mut missing = String::new();
    if credential.is_none() {
        missing.push_str("Authorization header requires 'Credential' parameter. ");
    }
    if signature.is_none() {
        missing.push_str("Authorization header requires 'Signature' parameter. ");
    }
    if signed_headers.is_none() {
        missing.push_str("Authorization header requires 'SignedHeaders' parameter. ");
    }
    if date_value.is_none() {
        missing.push_str(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. ",
        );
    }
    if !missing.is_empty() {
        return Err(SigError::Incomplete(format!(
            "{missing}Authorization={}",
            echo(text.as_bytes())
        )));
    }
    if algorithm != ALGORITHM {
        return Err(SigError::Incomplete(format!(
            "Unsupported AWS 'algorithm': '{}'. Only '{ALGORITHM}' is supported.",
            echo(algorithm.as_bytes())
        )));
    }
    let (Some(credential), Some(signed_headers), Some(signature), Some(date_value)) =
        (credential, signed_headers, signature, date_value)
    else {
        // All four were checked just above.
        return Err(SigError::Incomplete(
            "Authorization header is incomplete.".into(),
        ));
    };
    let (amz_date, timestamp) = parse_date_value(date_value.as_bytes())?;
    Ok(AuthParams {
        credential: credential.to_owned(),
        signed_headers: signed_headers.to_owned(),
        signature: signature.to_owned(),
        amz_date,
        timestamp,
        date_header,
        presigned: false,
        expires: 0,
    })
}

const PRESIGN_PARAMS: [&str; 6] = [
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Signature",
    "X-Amz-Date",
    "X-Amz-SignedHeaders",
    "X-Amz-Expires",
];

fn is_presigned(query: &[(Vec<u8>, Vec<u8>)]) -> bool {
    query.iter().any(|(name, _)| {
        matches!(
            name.as_slice(),
            b"X-Amz-Algorithm" | b"X-Amz-Credential" | b"X-Amz-Signature"
        )
    })
}

fn from_query(query: &[(Vec<u8>, Vec<u8>)]) -> Result<AuthParams, SigError> {
    let get = |name: &str| {
        query
            .iter()
            .find(|(n, _)| n.as_slice() == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    };
    let mut values = [""; 6];
    for (slot, name) in values.iter_mut().zip(PRESIGN_PARAMS) {
        match get(name).map(std::str::from_utf8) {
            Some(Ok(value)) => *slot = value,
            _ => {
                return Err(SigError::Incomplete(
                    "AWS query-string parameters must include 'X-Amz-Algorithm', \
                     'X-Amz-Credential', 'X-Amz-Signature', 'X-Amz-Date', \
                     'X-Amz-SignedHeaders', and 'X-Amz-Expires'. Re-examine the \
                     query-string parameters."
                        .into(),
                ));
            }
        }
    }
    let [
        algorithm,
        credential,
        signature,
        date,
        signed_headers,
        expires,
    ] = values;
    if algorithm != ALGORITHM {
        return Err(SigError::Incomplete(format!(
            "Unsupported AWS 'algorithm': '{}'. Only '{ALGORITHM}' is supported.",
            echo(algorithm.as_bytes())
        )));
    }
    let expires = match expires.parse::<i64>() {
        Ok(secs) if (1..=MAX_PRESIGNED_EXPIRES_SECS).contains(&secs) => secs,
        _ => {
            return Err(SigError::Incomplete(format!(
                "X-Amz-Expires must be a whole number of seconds from 1 to \
                 {MAX_PRESIGNED_EXPIRES_SECS}, not '{}'.",
                echo(expires.as_bytes())
            )));
        }
    };
    let (amz_date, timestamp) = parse_date_value(date.as_bytes())?;
    Ok(AuthParams {
        credential: credential.to_owned(),
        signed_headers: signed_headers.to_owned(),
        signature: signature.to_owned(),
        amz_date,
        timestamp,
        date_header: "X-Amz-Date",
        presigned: true,
        expires,
    })
}

fn parse_date_value(value: &[u8]) -> Result<(String, i64), SigError> {
    let parsed = std::str::from_utf8(value)
        .ok()
        .and_then(|text| parse_amz_date(text).map(|secs| (text.to_owned(), secs)));
    parsed.ok_or_else(|| {
        SigError::Incomplete(format!(
            "Date must be in ISO-8601 'basic format'. Got '{}'. See http://en.wikipedia.org/wiki/ISO_8601",
            echo(value)
        ))
    })
}

fn parse_credential(credential: &str) -> Result<Scope<'_>, SigError> {
    let mut parts = credential.split('/');
    let scope = match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some(access_key_id), Some(date), Some(region), Some(service), Some(terminator), None) => {
            Some(Scope {
                access_key_id,
                date,
                region,
                service,
                terminator,
            })
        }
        _ => None,
    };
    scope.ok_or_else(|| {
        SigError::Incomplete(format!(
            "Credential must have exactly 5 slash-delimited elements, e.g. \
             keyid/date/region/service/term, got '{}'",
            echo(credential.as_bytes())
        ))
    })
}

fn check_time(auth: &AuthParams, now: i64) -> Result<(), SigError> {
    let signed = || auth.amz_date.clone();
    if auth.timestamp > now.saturating_add(MAX_SKEW_SECS) {
        return Err(SigError::NotYetCurrent {
            signed: signed(),
            latest: format_amz_date(now.saturating_add(MAX_SKEW_SECS)),
            now: format_amz_date(now),
        });
    }
    let (window_secs, window) = if auth.presigned {
        (auth.expires, format!("{} sec.", auth.expires))
    } else {
        (MAX_SKEW_SECS, "15 min.".to_owned())
    };
    let earliest = now.saturating_sub(window_secs);
    if auth.timestamp < earliest {
        return Err(SigError::Expired {
            signed: signed(),
            earliest: format_amz_date(earliest),
            now: format_amz_date(now),
            window,
        });
    }
    Ok(())
}

/// The canonical request of every service but S3 (the path normalized and encoded again),
/// as bytes: header values need not be UTF-8.
fn canonical_request(
    method: &str,
    raw_path: &str,
    query: &[(Vec<u8>, Vec<u8>)],
    presigned: bool,
    headers: &HeaderMap,
    signed_headers: &str,
    payload_hash: &str,
) -> Vec<u8> {
    let canonical_uri = uri_encode(normalize_path(raw_path).as_bytes(), false);
    canonical_request_with_uri(
        method,
        &canonical_uri,
        query,
        presigned,
        headers,
        signed_headers,
        payload_hash,
    )
}

/// The canonical request with the canonical URI given as it is (S3: the path as sent).
fn canonical_request_with_uri(
    method: &str,
    canonical_uri: &str,
    query: &[(Vec<u8>, Vec<u8>)],
    presigned: bool,
    headers: &HeaderMap,
    signed_headers: &str,
    payload_hash: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(method.as_bytes());
    out.push(b'\n');

    out.extend_from_slice(canonical_uri.as_bytes());
    out.push(b'\n');

    let mut pairs: Vec<(String, String)> = query
        .iter()
        .filter(|(name, _)| !(presigned && name.as_slice() == b"X-Amz-Signature"))
        .map(|(name, value)| (uri_encode(name, true), uri_encode(value, true)))
        .collect();
    pairs.sort();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
    }
    out.push(b'\n');

    for name in signed_headers.split(';') {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        // An invalid or absent name yields no values: the line is just "name:".
        for (i, value) in headers.get_all(name).iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_trimmed(&mut out, value.as_bytes());
        }
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(signed_headers.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(payload_hash.as_bytes());
    out
}

/// HMAC-SHA256 over the string to sign, keyed with the derived signing key, ready to
/// be compared (`verify_slice`) or finalized.
fn signature_mac(
    secret: &str,
    amz_date: &str,
    scope_date: &str,
    region: &str,
    service: &str,
    canonical_request: &[u8],
) -> Result<HmacSha256, SigError> {
    let k_secret = format!("AWS4{secret}");
    let k_date = hmac(k_secret.as_bytes(), scope_date.as_bytes())?;
    let k_region = hmac(&k_date, region.as_bytes())?;
    let k_service = hmac(&k_region, service.as_bytes())?;
    let k_signing = hmac(&k_service, TERMINATOR.as_bytes())?;
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope_date}/{region}/{service}/{TERMINATOR}\n{}",
        hex::encode(Sha256::digest(canonical_request))
    );
    let mut mac = new_mac(&k_signing)?;
    mac.update(string_to_sign.as_bytes());
    Ok(mac)
}

fn new_mac(key: &[u8]) -> Result<HmacSha256, SigError> {
    // HMAC takes keys of any length; the error cannot happen.
    HmacSha256::new_from_slice(key).map_err(|_| SigError::SignatureMismatch)
}

fn hmac(key: &[u8], data: &[u8]) -> Result<Vec<u8>, SigError> {
    let mut mac = new_mac(key)?;
    mac.update(data);
    Ok(mac.finalize().into_bytes().to_vec())
}

/// Split a raw query on `&` and the first `=` of each pair, percent-decoding both sides.
/// Empty pairs (`a=1&&b=2`) are skipped; a name without `=` has the empty value.
fn parse_query(raw: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode(name.as_bytes()),
                percent_decode(value.as_bytes()),
            )
        })
        .collect()
}

/// `%XX` to the byte; anything else (including a stray `%` and `+`) kept as it is.
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let byte = input.get(i).copied().unwrap_or_default();
        if byte == b'%' {
            let hi = input.get(i + 1).and_then(|b| hex_value(*b));
            let lo = input.get(i + 2).and_then(|b| hex_value(*b));
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push((hi << 4) | lo);
                i += 3;
                continue;
            }
        }
        out.push(byte);
        i += 1;
    }
    out
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// SigV4's UriEncode: every byte but `A-Z a-z 0-9 - . _ ~` as `%XX` (upper-case hex);
/// `/` too unless `encode_slash` is false (paths). An S3 key encoded with `encode_slash`
/// false is the path [`sign_s3`] signs and the server decodes back to the same bytes.
pub fn uri_encode(input: &[u8], encode_slash: bool) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(input.len());
    for &b in input {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b));
            }
            b'/' if !encode_slash => out.push('/'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0x0f)]));
            }
        }
    }
    out
}

/// Remove `.` and `..` segments (RFC 3986 5.2.4) and empty segments, keeping a leading
/// and (if anything is left) a trailing `/`; an empty path is `/`. As botocore does.
fn normalize_path(raw: &str) -> String {
    if raw.is_empty() {
        return "/".to_owned();
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in raw.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(raw.len());
    if raw.starts_with('/') {
        out.push('/');
    }
    out.push_str(&segments.join("/"));
    if raw.ends_with('/') && !segments.is_empty() {
        out.push('/');
    }
    out
}

/// Append a header value trimmed of spaces and tabs at both ends, inner runs collapsed
/// to one space.
fn push_trimmed(out: &mut Vec<u8>, value: &[u8]) {
    let mut started = false;
    let mut pending_space = false;
    for &b in value {
        if b == b' ' || b == b'\t' {
            pending_space = started;
        } else {
            if pending_space {
                out.push(b' ');
                pending_space = false;
            }
            out.push(b);
            started = true;
        }
    }
}

/// Text of untrusted bytes for an error message: lossy UTF-8, at most a few hundred chars.
fn echo(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text.chars().take(MAX_ECHO_CHARS).collect();
    if text.chars().nth(MAX_ECHO_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

/// Seconds since the epoch, negative before it, saturating far out.
fn system_secs(now: SystemTime) -> i64 {
    match now.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs())
            .map(|secs| -secs)
            .unwrap_or(i64::MIN),
    }
}

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm:
/// years counted from March, so the leap day is the last day of the year).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400; // 0..=399
    let month_from_march = (month + 9) % 12; // March = 0 .. February = 11
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1; // 0..=365
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`]: (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097; // 0..=146096
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400;
    (if month <= 2 { year + 1 } else { year }, month, day)
}

/// `YYYYMMDD'T'HHMMSS'Z'` (UTC) to seconds since the epoch; None unless exactly that
/// shape with a real date and time (no leap seconds).
fn parse_amz_date(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 16 || b.get(8) != Some(&b'T') || b.get(15) != Some(&b'Z') {
        return None;
    }
    let number = |from: usize, to: usize| -> Option<i64> {
        b.get(from..to)?.iter().try_fold(0i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let (year, month, day) = (number(0, 4)?, number(4, 6)?, number(6, 8)?);
    let (hour, minute, second) = (number(9, 11)?, number(11, 13)?, number(13, 15)?);
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Seconds since the epoch to `YYYYMMDD'T'HHMMSS'Z'`.
fn format_amz_date(secs: i64) -> String {
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use http::{HeaderName, HeaderValue};
    use std::time::Duration;

    const SUITE_KEY: &str = "AKIDEXAMPLE";
    const SUITE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const SUITE_DATE: &str = "20150830T123600Z";
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn at(amz_date: &str) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(u64::try_from(parse_amz_date(amz_date).unwrap()).unwrap())
    }

    fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn keys(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn suite_keys() -> HashMap<String, String> {
        keys(&[(SUITE_KEY, SUITE_SECRET)])
    }

    fn suite_signer() -> Signer {
        Signer {
            access_key_id: SUITE_KEY.into(),
            region: "us-east-1".into(),
            service: "service".into(),
        }
    }

    fn suite_auth(signed_headers: &str, signature: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential={SUITE_KEY}/20150830/us-east-1/service/aws4_request, \
             SignedHeaders={signed_headers}, Signature={signature}"
        )
    }

    /// A request from the AWS SigV4 test suite: Host and X-Amz-Date, then `extra`, then
    /// the Authorization header with the suite's signature.
    fn suite(
        method: &str,
        path: &str,
        query: &str,
        extra: &[(&str, &str)],
        body: &str,
        signed_headers: &str,
        signature: &str,
    ) -> Result<Signer, SigError> {
        let auth = suite_auth(signed_headers, signature);
        let mut pairs = vec![
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", SUITE_DATE),
        ];
        pairs.extend_from_slice(extra);
        pairs.push(("Authorization", &auth));
        verify(
            method,
            path,
            query,
            &header_map(&pairs),
            body.as_bytes(),
            &suite_keys(),
            at(SUITE_DATE),
        )
    }

    /// Sign with this module's own canonicalization (for refusal tests; correctness is
    /// pinned by the AWS and botocore vectors).
    #[allow(clippy::too_many_arguments)]
    fn sign(
        method: &str,
        path: &str,
        query: &str,
        headers: &HeaderMap,
        payload_hash: &str,
        credential: &str,
        secret: &str,
        amz_date: &str,
        signed_headers: &str,
    ) -> String {
        let canonical = canonical_request(
            method,
            path,
            &parse_query(query),
            false,
            headers,
            signed_headers,
            payload_hash,
        );
        let parts: Vec<&str> = credential.split('/').collect();
        let mac =
            signature_mac(secret, amz_date, parts[1], parts[2], parts[3], &canonical).unwrap();
        format!(
            "AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders={signed_headers}, \
             Signature={}",
            hex::encode(mac.finalize().into_bytes())
        )
    }

    // ---- AWS SigV4 test suite (aws-sig-v4-test-suite, 2015-08-30 edition) ----

    #[test]
    fn suite_get_vanilla() {
        let sig = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        assert_eq!(
            suite("GET", "/", "", &[], "", "host;x-amz-date", sig),
            Ok(suite_signer())
        );
    }

    #[test]
    fn suite_query_order() {
        // get-vanilla-query-order-key-case: sorted by name.
        let sig = "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500";
        assert!(
            suite(
                "GET",
                "/",
                "Param2=value2&Param1=value1",
                &[],
                "",
                "host;x-amz-date",
                sig
            )
            .is_ok()
        );
        // get-vanilla-query-order-key: one name, sorted by value, byte order.
        let sig = "eedbc4e291e521cf13422ffca22be7d2eb8146eecf653089df300a15b2382bd1";
        assert!(
            suite(
                "GET",
                "/",
                "Param1=value2&Param1=Value1",
                &[],
                "",
                "host;x-amz-date",
                sig
            )
            .is_ok()
        );
        // get-vanilla-query-order-value.
        let sig = "5772eed61e12b33fae39ee5e7012498b51d56abc0abb7c60486157bd471c4694";
        assert!(
            suite(
                "GET",
                "/",
                "Param1=value2&Param1=value1",
                &[],
                "",
                "host;x-amz-date",
                sig
            )
            .is_ok()
        );
    }

    #[test]
    fn suite_query_canonical_text() {
        let creq = canonical_request(
            "GET",
            "/",
            &parse_query("Param1=value2&Param1=Value1"),
            false,
            &header_map(&[
                ("Host", "example.amazonaws.com"),
                ("X-Amz-Date", SUITE_DATE),
            ]),
            "host;x-amz-date",
            EMPTY_SHA256,
        );
        assert_eq!(
            String::from_utf8(creq).unwrap(),
            "GET\n/\nParam1=Value1&Param1=value2\nhost:example.amazonaws.com\n\
             x-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn suite_query_unreserved_and_utf8() {
        let unreserved = "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let sig = "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197";
        let query = format!("{unreserved}={unreserved}");
        assert!(suite("GET", "/", &query, &[], "", "host;x-amz-date", sig).is_ok());
        // get-vanilla-utf8-query: "ሴ=bar", as it is sent on the wire.
        let sig = "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04";
        assert!(suite("GET", "/", "%E1%88%B4=bar", &[], "", "host;x-amz-date", sig).is_ok());
        // get-vanilla-empty-query-key.
        let sig = "a67d582fa61cc504c4bae71f336f98b97f1ea3c7a6bfe1b6e45aec72011b9aeb";
        assert!(suite("GET", "/", "Param1=value1", &[], "", "host;x-amz-date", sig).is_ok());
    }

    #[test]
    fn suite_paths() {
        let signed = "host;x-amz-date";
        // get-unreserved.
        let path = "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let sig = "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f";
        assert!(suite("GET", path, "", &[], "", signed, sig).is_ok());
        // get-utf8 and get-space: the suite's request lines carry these paths unencoded,
        // and its canonical URIs encode them once ("/%E1%88%B4", "/example%20space/").
        let sig = "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85";
        assert!(suite("GET", "/ሴ", "", &[], "", signed, sig).is_ok());
        let sig = "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741";
        assert!(suite("GET", "/example space/", "", &[], "", signed, sig).is_ok());
    }

    #[test]
    fn suite_normalize_path() {
        let signed = "host;x-amz-date";
        let root = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        for path in ["/example/..", "/example1/example2/../..", "//", "/./", ""] {
            assert!(
                suite("GET", path, "", &[], "", signed, root).is_ok(),
                "{path}"
            );
        }
        let sig = "ef75d96142cf21edca26f06005da7988e4f8dc83a165a80865db7089db637ec5";
        assert!(suite("GET", "/./example", "", &[], "", signed, sig).is_ok());
        let sig = "9a624bd73a37c9a373b5312afbebe7a714a789de108f0bdfe846570885f57e84";
        assert!(suite("GET", "//example//", "", &[], "", signed, sig).is_ok());
    }

    #[test]
    fn suite_headers() {
        // get-header-value-trim: leading/trailing spaces dropped, inner runs collapsed.
        let sig = "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736";
        let extra = [("My-Header1", "  value1 "), ("My-Header2", "\"a   b   c\"")];
        assert!(
            suite(
                "GET",
                "/",
                "",
                &extra,
                "",
                "host;my-header1;my-header2;x-amz-date",
                sig
            )
            .is_ok()
        );
        // get-header-key-duplicate: repeated header joined with ',' in the order sent.
        let sig = "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea";
        let extra = [
            ("My-Header1", "value2"),
            ("My-Header1", "value2"),
            ("My-Header1", "value1"),
        ];
        assert!(
            suite(
                "GET",
                "/",
                "",
                &extra,
                "",
                "host;my-header1;x-amz-date",
                sig
            )
            .is_ok()
        );
        // get-header-value-order.
        let sig = "08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01";
        let extra = [
            ("My-Header1", "value4"),
            ("My-Header1", "value1"),
            ("My-Header1", "value3"),
            ("My-Header1", "value2"),
        ];
        assert!(
            suite(
                "GET",
                "/",
                "",
                &extra,
                "",
                "host;my-header1;x-amz-date",
                sig
            )
            .is_ok()
        );
        // post-header-key-sort and post-header-value-case.
        let sig = "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c";
        let extra = [("My-Header1", "value1")];
        assert!(
            suite(
                "POST",
                "/",
                "",
                &extra,
                "",
                "host;my-header1;x-amz-date",
                sig
            )
            .is_ok()
        );
        let sig = "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d";
        let extra = [("My-Header1", "VALUE1")];
        assert!(
            suite(
                "POST",
                "/",
                "",
                &extra,
                "",
                "host;my-header1;x-amz-date",
                sig
            )
            .is_ok()
        );
    }

    #[test]
    fn suite_post() {
        // post-vanilla (and post-header-key-case, same request).
        let sig = "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b";
        assert!(suite("POST", "/", "", &[], "", "host;x-amz-date", sig).is_ok());
        // post-vanilla-query.
        let sig = "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11";
        assert!(
            suite(
                "POST",
                "/",
                "Param1=value1",
                &[],
                "",
                "host;x-amz-date",
                sig
            )
            .is_ok()
        );
    }

    #[test]
    fn suite_post_x_www_form_urlencoded() {
        let signed = "content-type;host;x-amz-date";
        let sig = "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a";
        let extra = [
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Content-Length", "13"),
        ];
        assert!(suite("POST", "/", "", &extra, "Param1=value1", signed, sig).is_ok());
        // The body is in the signature.
        assert_eq!(
            suite("POST", "/", "", &extra, "Param1=value2", signed, sig),
            Err(SigError::SignatureMismatch)
        );
        // post-x-www-form-urlencoded-parameters (the suite's value is "charset=utf8").
        let sig = "1a72ec8f64bd914b0e42e42607c7fbce7fb2c7465f63e3092b3b0d39fa77a6fe";
        let extra = [
            (
                "Content-Type",
                "application/x-www-form-urlencoded; charset=utf8",
            ),
            ("Content-Length", "13"),
        ];
        assert!(suite("POST", "/", "", &extra, "Param1=value1", signed, sig).is_ok());
    }

    #[test]
    fn suite_security_token() {
        let token = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";
        let extra = [("X-Amz-Security-Token", token)];
        // post-sts-header-before: the token is signed.
        let sig = "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead";
        let signed = "host;x-amz-date;x-amz-security-token";
        assert!(suite("POST", "/", "", &extra, "", signed, sig).is_ok());
        // post-sts-header-after: the token was added after signing.
        let sig = "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b";
        assert!(suite("POST", "/", "", &extra, "", "host;x-amz-date", sig).is_ok());
    }

    // ---- Requests signed by botocore 1.43.11 (one-off script, fixed clock) ----

    const BOTO_KEY: &str = "AKIALIFEBOATTEST0001";
    const BOTO_SECRET: &str = "lifeboat/Secret+Key/For/Tests/0123456789ab";
    const BOTO_DATE: &str = "20240229T235930Z";
    const PUT_ITEM_BODY: &str = r#"{"TableName": "orders", "Item": {"pk": {"S": "order#1"}, "qty": {"N": "3"}, "note": {"S": "a  b"}}}"#;
    const PUT_ITEM_AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIALIFEBOATTEST0001/20240229/eu-west-3/dynamodb/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=5c7e9f7dbe16f3bff9920c69b9495a901d584f3ea37292732b9bf2cc0c0376b8";

    /// `client("dynamodb", region_name="eu-west-3", endpoint_url="http://127.0.0.1:8000")
    /// .put_item(...)`, headers as sent (urllib3 adds Host).
    fn put_item_headers(target: &str, user_agent: &str) -> HeaderMap {
        header_map(&[
            ("Host", "127.0.0.1:8000"),
            ("X-Amz-Target", target),
            ("Content-Type", "application/x-amz-json-1.0"),
            ("User-Agent", user_agent),
            ("X-Amz-Date", BOTO_DATE),
            ("Authorization", PUT_ITEM_AUTH),
            (
                "amz-sdk-invocation-id",
                "563ee4b0-7b60-4bf4-815e-166eb68f8dde",
            ),
            ("amz-sdk-request", "attempt=1"),
            ("Content-Length", "99"),
        ])
    }

    const BOTO_UA: &str = "Botocore/1.43.11 ua/2.1 os/linux#6.18.44-fc-v1147 md/arch#x86_64 lang/python#3.11.7 md/pyimpl#CPython m/Z,N,D,P,b,e cfg/retry-mode#legacy";
    const PUT_ITEM: &str = "DynamoDB_20120810.PutItem";

    fn put_item(headers: &HeaderMap, body: &str, now: SystemTime) -> Result<Signer, SigError> {
        let keys = keys(&[(BOTO_KEY, BOTO_SECRET), ("AKIAOTHER", "other")]);
        verify("POST", "/", "", headers, body.as_bytes(), &keys, now)
    }

    #[test]
    fn botocore_put_item() {
        let headers = put_item_headers(PUT_ITEM, BOTO_UA);
        // Five and a half minutes later, past midnight after a leap day.
        assert_eq!(
            put_item(&headers, PUT_ITEM_BODY, at("20240301T000500Z")),
            Ok(Signer {
                access_key_id: BOTO_KEY.into(),
                region: "eu-west-3".into(),
                service: "dynamodb".into(),
            })
        );
        // An unsigned header may change.
        let headers = put_item_headers(PUT_ITEM, "curl/8.0");
        assert!(put_item(&headers, PUT_ITEM_BODY, at(BOTO_DATE)).is_ok());
    }

    #[test]
    fn botocore_put_item_tampered() {
        let now = at(BOTO_DATE);
        let headers = put_item_headers(PUT_ITEM, BOTO_UA);
        let tampered = PUT_ITEM_BODY.replace("\"3\"", "\"4\"");
        assert_eq!(
            put_item(&headers, &tampered, now),
            Err(SigError::SignatureMismatch)
        );
        let headers = put_item_headers("DynamoDB_20120810.DeleteItem", BOTO_UA);
        assert_eq!(
            put_item(&headers, PUT_ITEM_BODY, now),
            Err(SigError::SignatureMismatch)
        );
        let mut headers = put_item_headers(PUT_ITEM, BOTO_UA);
        headers.insert("host", HeaderValue::from_static("127.0.0.1:8001"));
        assert_eq!(
            put_item(&headers, PUT_ITEM_BODY, now),
            Err(SigError::SignatureMismatch)
        );
    }

    #[test]
    fn botocore_put_item_expired() {
        let headers = put_item_headers(PUT_ITEM, BOTO_UA);
        // Exactly 15 minutes either way is still accepted.
        assert!(put_item(&headers, PUT_ITEM_BODY, at("20240301T001430Z")).is_ok());
        assert!(put_item(&headers, PUT_ITEM_BODY, at("20240229T234430Z")).is_ok());
        let err = put_item(&headers, PUT_ITEM_BODY, at("20240301T001431Z")).unwrap_err();
        assert_eq!(err.code(), "InvalidSignatureException");
        assert_eq!(
            err.to_string(),
            "Signature expired: 20240229T235930Z is now earlier than 20240229T235931Z \
             (20240301T001431Z - 15 min.)"
        );
        let err = put_item(&headers, PUT_ITEM_BODY, at("20240229T234429Z")).unwrap_err();
        assert_eq!(err.code(), "InvalidSignatureException");
        assert_eq!(
            err.to_string(),
            "Signature not yet current: 20240229T235930Z is still later than \
             20240229T235929Z (20240229T234429Z + 15 min.)"
        );
    }

    /// `SigV4Auth(creds with token, "dynamodb", "us-east-1")` on a POST to
    /// `http://tables.local:8000/a%20b/%E1%88%B4/./c/?z=1&a=x%2By&a=%20`: botocore
    /// normalizes the path and encodes it again ("/a%2520b/%25E1%2588%25B4/c/").
    #[test]
    fn botocore_encoded_path_query_and_token() {
        let auth = "AWS4-HMAC-SHA256 Credential=AKIALIFEBOATTEST0001/20240229/us-east-1/dynamodb/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature=4ce0453b05ddb17597a652f9fbe4d4c8175f6ae21fb4b2904a30dad5b018e4cb";
        let headers = header_map(&[
            ("Host", "tables.local:8000"),
            ("Content-Type", "application/x-amz-json-1.0"),
            ("X-Amz-Date", BOTO_DATE),
            ("X-Amz-Security-Token", "FQoGZXIvYXdzEXAMPLE/token+=="),
            ("Authorization", auth),
        ]);
        let keys = keys(&[(BOTO_KEY, BOTO_SECRET)]);
        let path = "/a%20b/%E1%88%B4/./c/";
        let query = "z=1&a=x%2By&a=%20";
        let got = verify(
            "POST",
            path,
            query,
            &headers,
            b"{\"k\":1}",
            &keys,
            at(BOTO_DATE),
        );
        assert_eq!(got.map(|s| s.region), Ok("us-east-1".to_owned()));
        let creq = canonical_request(
            "POST",
            path,
            &parse_query(query),
            false,
            &headers,
            "host",
            "-",
        );
        assert!(
            String::from_utf8(creq)
                .unwrap()
                .starts_with("POST\n/a%2520b/%25E1%2588%25B4/c/\na=%20&a=x%2By&z=1\n")
        );
        // The query is signed.
        let got = verify(
            "POST",
            path,
            "z=2&a=x%2By&a=%20",
            &headers,
            b"{\"k\":1}",
            &keys,
            at(BOTO_DATE),
        );
        assert_eq!(got, Err(SigError::SignatureMismatch));
    }

    /// `SigV4QueryAuth(creds, "dynamodb", "us-east-1", expires=300)` on
    /// `GET http://tables.local:8000/?Action=Ping`.
    #[test]
    fn botocore_presigned_query() {
        let query = "Action=Ping&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIALIFEBOATTEST0001%2F20240229%2Fus-east-1%2Fdynamodb%2Faws4_request&X-Amz-Date=20240229T235930Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Signature=4d3837ee6ed5f64352f50e6b44ca82a4076c3ea593e09d67244f33f72cc9a731";
        let headers = header_map(&[("Host", "tables.local:8000")]);
        let keys = keys(&[(BOTO_KEY, BOTO_SECRET)]);
        let start = at(BOTO_DATE);
        let check = |q: &str, now| verify("GET", "/", q, &headers, b"", &keys, now);
        assert_eq!(
            check(query, start + Duration::from_secs(300)).map(|s| s.access_key_id),
            Ok(BOTO_KEY.to_owned())
        );
        assert_eq!(
            check(query, start + Duration::from_secs(301)),
            Err(SigError::Expired {
                signed: BOTO_DATE.into(),
                earliest: "20240229T235931Z".into(),
                now: "20240301T000431Z".into(),
                window: "300 sec.".into(),
            })
        );
        let tampered = query.replace("Action=Ping", "Action=Pong");
        assert_eq!(check(&tampered, start), Err(SigError::SignatureMismatch));
        let partial = "Action=Ping&X-Amz-Algorithm=AWS4-HMAC-SHA256";
        assert_eq!(
            check(partial, start).unwrap_err().code(),
            "IncompleteSignatureException"
        );
        let bad_expiry = query.replace("X-Amz-Expires=300", "X-Amz-Expires=604801");
        assert_eq!(
            check(&bad_expiry, start).unwrap_err().code(),
            "IncompleteSignatureException"
        );
    }

    // ---- Refusals ----

    fn vanilla_with(auth: Option<&str>, date: Option<(&str, &str)>) -> Result<Signer, SigError> {
        let mut pairs = vec![("Host", "example.amazonaws.com")];
        if let Some(date) = date {
            pairs.push(date);
        }
        if let Some(auth) = auth {
            pairs.push(("Authorization", auth));
        }
        verify(
            "GET",
            "/",
            "",
            &header_map(&pairs),
            b"",
            &suite_keys(),
            at(SUITE_DATE),
        )
    }

    const VANILLA_SIG: &str = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";

    #[test]
    fn refuses_missing_authorization() {
        let err = vanilla_with(None, Some(("X-Amz-Date", SUITE_DATE))).unwrap_err();
        assert_eq!(err, SigError::MissingAuthenticationToken);
        assert_eq!(err.code(), "MissingAuthenticationTokenException");
        assert_eq!(err.to_string(), "Request is missing Authentication Token");
        assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn refuses_unknown_key() {
        let auth = suite_auth("host;x-amz-date", VANILLA_SIG).replace(SUITE_KEY, "AKIDUNKNOWN");
        let err = vanilla_with(Some(&auth), Some(("X-Amz-Date", SUITE_DATE))).unwrap_err();
        assert_eq!(err, SigError::UnrecognizedClient);
        assert_eq!(err.code(), "UnrecognizedClientException");
        assert_eq!(
            err.to_string(),
            "The security token included in the request is invalid."
        );
    }

    #[test]
    fn refuses_wrong_secret() {
        let headers = put_item_headers(PUT_ITEM, BOTO_UA);
        let keys = keys(&[(BOTO_KEY, "not-the-secret")]);
        let err = verify(
            "POST",
            "/",
            "",
            &headers,
            PUT_ITEM_BODY.as_bytes(),
            &keys,
            at(BOTO_DATE),
        )
        .unwrap_err();
        assert_eq!(err, SigError::SignatureMismatch);
        assert_eq!(err.code(), "InvalidSignatureException");
        assert_eq!(
            err.to_string(),
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service \
             documentation for details."
        );
    }

    #[test]
    fn refuses_bad_signature_text() {
        let too_long = format!("{VANILLA_SIG}00");
        let not_hex = "g".repeat(64);
        for sig in [
            "",
            "zz",
            &VANILLA_SIG[..63],
            too_long.as_str(),
            not_hex.as_str(),
        ] {
            let auth = suite_auth("host;x-amz-date", sig);
            assert_eq!(
                vanilla_with(Some(&auth), Some(("X-Amz-Date", SUITE_DATE))),
                Err(SigError::SignatureMismatch),
                "{sig}"
            );
        }
        // Upper-case hex is the same signature.
        let auth = suite_auth("host;x-amz-date", &VANILLA_SIG.to_uppercase());
        assert!(vanilla_with(Some(&auth), Some(("X-Amz-Date", SUITE_DATE))).is_ok());
    }

    #[test]
    fn refuses_unsigned_host() {
        // Signed without host: refused before the signature is even looked at.
        let auth = suite_auth("x-amz-date", VANILLA_SIG);
        let err = vanilla_with(Some(&auth), Some(("X-Amz-Date", SUITE_DATE))).unwrap_err();
        assert_eq!(err, SigError::HostNotSigned);
        assert_eq!(err.code(), "InvalidSignatureException");
        assert_eq!(
            err.to_string(),
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
        );
    }

    #[test]
    fn refuses_scope_date_mismatch() {
        let auth = suite_auth("host;x-amz-date", VANILLA_SIG).replace("/20150830/", "/20150831/");
        let err = vanilla_with(Some(&auth), Some(("X-Amz-Date", SUITE_DATE))).unwrap_err();
        assert_eq!(
            err,
            SigError::ScopeDateMismatch {
                scope: "20150831".into(),
                date: "20150830".into(),
                header: "X-Amz-Date",
            }
        );
        assert_eq!(err.code(), "InvalidSignatureException");
        assert_eq!(
            err.to_string(),
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date \
             from HTTP: '20150831' != '20150830', from 'X-Amz-Date'."
        );
    }

    #[test]
    fn refuses_bad_scope() {
        let auth =
            suite_auth("host;x-amz-date", VANILLA_SIG).replace("aws4_request", "aws3_request");
        let err = vanilla_with(Some(&auth), Some(("X-Amz-Date", SUITE_DATE))).unwrap_err();
        assert_eq!(err, SigError::BadTerminator("aws3_request".into()));
        for credential in [
            "AKIDEXAMPLE/20150830/us-east-1/aws4_request",
            "AKIDEXAMPLE",
            "a/b/c/d/e/f",
        ] {
            let auth = format!(
                "AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders=host, Signature={VANILLA_SIG}"
            );
            let err = vanilla_with(Some(&auth), Some(("X-Amz-Date", SUITE_DATE))).unwrap_err();
            assert_eq!(err.code(), "IncompleteSignatureException", "{credential}");
            assert!(
                err.to_string()
                    .starts_with("Credential must have exactly 5"),
                "{err}"
            );
        }
    }

    #[test]
    fn refuses_expired_and_future_dates() {
        let auth = suite_auth("host;x-amz-date", VANILLA_SIG);
        let headers = header_map(&[
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", SUITE_DATE),
            ("Authorization", &auth),
        ]);
        let keys = suite_keys();
        let check = |now| verify("GET", "/", "", &headers, b"", &keys, now);
        let signed_at = at(SUITE_DATE);
        assert!(check(signed_at + Duration::from_secs(900)).is_ok());
        assert_eq!(
            check(signed_at + Duration::from_secs(901)),
            Err(SigError::Expired {
                signed: SUITE_DATE.into(),
                earliest: "20150830T123601Z".into(),
                now: "20150830T125101Z".into(),
                window: "15 min.".into(),
            })
        );
        assert_eq!(
            check(signed_at - Duration::from_secs(901)),
            Err(SigError::NotYetCurrent {
                signed: SUITE_DATE.into(),
                latest: "20150830T123559Z".into(),
                now: "20150830T122059Z".into(),
            })
        );
        // Clocks years off, before the epoch, or absurdly far ahead: refused, no overflow.
        assert!(matches!(
            check(UNIX_EPOCH),
            Err(SigError::NotYetCurrent { .. })
        ));
        assert!(matches!(
            check(UNIX_EPOCH - Duration::from_secs(86_400 * 365 * 3000)),
            Err(SigError::NotYetCurrent { .. })
        ));
        assert!(matches!(
            check(UNIX_EPOCH + Duration::from_secs(u64::MAX / 4)),
            Err(SigError::Expired { .. })
        ));
    }

    #[test]
    fn refuses_bad_date_format() {
        let auth = suite_auth("host;x-amz-date", VANILLA_SIG);
        for date in [
            "2015-08-30T12:36:00Z",
            "Sun, 30 Aug 2015 12:36:00 GMT",
            "20150830T123600",
            "20150830T123600z",
            "20150230T123600Z",
            "20150830T243600Z",
            "20150830T126000Z",
            "20150830T123660Z",
            "2015083OT123600Z",
            "+0150830T123600Z",
            "",
        ] {
            let err = vanilla_with(Some(&auth), Some(("X-Amz-Date", date))).unwrap_err();
            assert_eq!(err.code(), "IncompleteSignatureException", "{date}");
            assert_eq!(
                err.to_string(),
                format!(
                    "Date must be in ISO-8601 'basic format'. Got '{date}'. \
                     See http://en.wikipedia.org/wiki/ISO_8601"
                )
            );
        }
    }

    #[test]
    fn date_header_instead_of_x_amz_date() {
        let headers = header_map(&[("Host", "example.amazonaws.com"), ("Date", SUITE_DATE)]);
        let credential = "AKIDEXAMPLE/20150830/us-east-1/service/aws4_request";
        let auth = sign(
            "GET",
            "/",
            "",
            &headers,
            EMPTY_SHA256,
            credential,
            SUITE_SECRET,
            SUITE_DATE,
            "date;host",
        );
        let got = vanilla_with(Some(&auth), Some(("Date", SUITE_DATE)));
        assert_eq!(got, Ok(suite_signer()));
        // Missing both dates.
        let err = vanilla_with(Some(&auth), None).unwrap_err();
        assert_eq!(err.code(), "IncompleteSignatureException");
        assert!(err.to_string().starts_with(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. \
             Authorization=AWS4-HMAC-SHA256 Credential="
        ));
        // X-Amz-Date wins over Date.
        let both = header_map(&[
            ("Host", "example.amazonaws.com"),
            ("Date", SUITE_DATE),
            ("X-Amz-Date", "20150831T000000Z"),
            ("Authorization", &auth),
        ]);
        let err = verify("GET", "/", "", &both, b"", &suite_keys(), at(SUITE_DATE)).unwrap_err();
        assert!(
            matches!(
                err,
                SigError::ScopeDateMismatch {
                    header: "X-Amz-Date",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn refuses_garbage_authorization() {
        let date = Some(("X-Amz-Date", SUITE_DATE));
        let all_missing = "Authorization header requires 'Credential' parameter. \
                           Authorization header requires 'Signature' parameter. \
                           Authorization header requires 'SignedHeaders' parameter. ";
        for garbage in [
            "garbage",
            "Basic dXNlcjpwYXNz",
            "AWS4-HMAC-SHA256",
            "",
            "=,=,=",
            ",,,",
        ] {
            let err = vanilla_with(Some(garbage), date).unwrap_err();
            assert_eq!(
                err,
                SigError::Incomplete(format!("{all_missing}Authorization={garbage}"))
            );
            assert_eq!(err.code(), "IncompleteSignatureException");
        }
        let only_credential =
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request";
        let err = vanilla_with(Some(only_credential), date).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "Authorization header requires 'Signature' parameter. Authorization header \
                 requires 'SignedHeaders' parameter. Authorization={only_credential}"
            )
        );
        // SigV4a and other algorithms.
        let sigv4a = suite_auth("host;x-amz-date", VANILLA_SIG)
            .replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256");
        let err = vanilla_with(Some(&sigv4a), date).unwrap_err();
        assert_eq!(err.code(), "IncompleteSignatureException");
        assert!(
            err.to_string().contains("'AWS4-ECDSA-P256-SHA256'"),
            "{err}"
        );
    }

    #[test]
    fn authorization_parameter_spacing() {
        let date = Some(("X-Amz-Date", SUITE_DATE));
        let tight = suite_auth("host;x-amz-date", VANILLA_SIG).replace(", ", ",");
        assert!(vanilla_with(Some(&tight), date).is_ok());
        let reordered = format!(
            "AWS4-HMAC-SHA256   Signature={VANILLA_SIG} ,SignedHeaders=host;x-amz-date,  \
             Credential={SUITE_KEY}/20150830/us-east-1/service/aws4_request "
        );
        assert!(vanilla_with(Some(&reordered), date).is_ok());
    }

    #[test]
    fn never_panics_on_hostile_headers() {
        let date = Some(("X-Amz-Date", SUITE_DATE));
        // Non-UTF-8 Authorization.
        let mut headers = header_map(&[
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", SUITE_DATE),
        ]);
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_bytes(b"AWS4-HMAC-SHA256 Credential=\xff\xfe/\x80").unwrap(),
        );
        let err = verify("GET", "/", "", &headers, b"", &suite_keys(), at(SUITE_DATE)).unwrap_err();
        assert_eq!(err.code(), "IncompleteSignatureException");
        // Non-UTF-8 date.
        let auth = suite_auth("host;x-amz-date", VANILLA_SIG);
        let mut headers =
            header_map(&[("Host", "example.amazonaws.com"), ("Authorization", &auth)]);
        headers.insert(
            "x-amz-date",
            HeaderValue::from_bytes(b"2015\xe9830T123600Z").unwrap(),
        );
        let err = verify("GET", "/", "", &headers, b"", &suite_keys(), at(SUITE_DATE)).unwrap_err();
        assert_eq!(err.code(), "IncompleteSignatureException");
        // A megabyte of Authorization: refused, and the echo is bounded.
        let huge = format!("AWS4-HMAC-SHA256 {}", "x".repeat(1 << 20));
        let err = vanilla_with(Some(&huge), date).unwrap_err();
        assert_eq!(err.code(), "IncompleteSignatureException");
        assert!(err.to_string().len() < 1024);
        // Odd SignedHeaders: invalid names, empty entries, many entries.
        let many = "host;".repeat(10_000);
        for signed in [
            "host;;x-amz-date",
            "host;(bad)",
            "host;x y",
            many.as_str(),
            ";",
        ] {
            let auth = suite_auth(signed, VANILLA_SIG);
            assert!(vanilla_with(Some(&auth), date).is_err(), "{signed:.20}");
        }
        // Odd paths and queries.
        let auth = suite_auth("host;x-amz-date", VANILLA_SIG);
        let headers = header_map(&[
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", SUITE_DATE),
            ("Authorization", &auth),
        ]);
        for (path, query) in [
            ("%", "%"),
            ("/%zz/%4", "a=%z&=&&b"),
            ("../../..", "%ff%fe=%00"),
            ("*", "x"),
        ] {
            assert_eq!(
                verify(
                    "GET",
                    path,
                    query,
                    &headers,
                    b"",
                    &suite_keys(),
                    at(SUITE_DATE)
                ),
                Err(SigError::SignatureMismatch),
                "{path} {query}"
            );
        }
    }

    #[test]
    fn non_utf8_signed_header_value() {
        let mut headers = header_map(&[
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", SUITE_DATE),
        ]);
        headers.insert(
            "x-odd",
            HeaderValue::from_bytes(b"caf\xe9  \t au  lait ").unwrap(),
        );
        let credential = "AKIDEXAMPLE/20150830/us-east-1/service/aws4_request";
        let signed = "host;x-amz-date;x-odd";
        let auth = sign(
            "GET",
            "/",
            "",
            &headers,
            EMPTY_SHA256,
            credential,
            SUITE_SECRET,
            SUITE_DATE,
            signed,
        );
        let creq = canonical_request("GET", "/", &[], false, &headers, signed, EMPTY_SHA256);
        let line: &[u8] = b"\nx-odd:caf\xe9 au lait\n";
        assert!(creq.windows(line.len()).any(|w| w == line));
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&auth).unwrap(),
        );
        assert!(verify("GET", "/", "", &headers, b"", &suite_keys(), at(SUITE_DATE)).is_ok());
    }

    #[test]
    fn content_sha256_header() {
        let body = br#"{"TableName":"t"}"#;
        let body_hash = hex::encode(Sha256::digest(body));
        let credential = "AKIDEXAMPLE/20150830/us-east-1/dynamodb/aws4_request";
        let build = |content_sha: &str| {
            let mut headers = header_map(&[
                ("Host", "localhost:8000"),
                ("X-Amz-Date", SUITE_DATE),
                ("X-Amz-Content-Sha256", content_sha),
            ]);
            let signed = "host;x-amz-content-sha256;x-amz-date";
            let auth = sign(
                "POST",
                "/",
                "",
                &headers,
                content_sha,
                credential,
                SUITE_SECRET,
                SUITE_DATE,
                signed,
            );
            headers.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(&auth).unwrap(),
            );
            headers
        };
        let check = |headers: &HeaderMap, body: &[u8]| {
            verify(
                "POST",
                "/",
                "",
                headers,
                body,
                &suite_keys(),
                at(SUITE_DATE),
            )
        };
        assert!(check(&build(&body_hash), body).is_ok());
        assert!(check(&build(&body_hash.to_uppercase()), body).is_ok());
        let err = check(&build(&body_hash), b"{\"TableName\":\"u\"}").unwrap_err();
        assert_eq!(err, SigError::PayloadHashMismatch);
        assert_eq!(err.code(), "InvalidSignatureException");
        for unsupported in ["UNSIGNED-PAYLOAD", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", ""] {
            assert_eq!(
                check(&build(unsupported), body),
                Err(SigError::PayloadHashMismatch)
            );
        }
    }

    // ---- Building blocks ----

    #[test]
    fn amz_dates_round_trip_with_leap_years() {
        for (text, secs) in [
            ("19700101T000000Z", 0),
            ("20150830T123600Z", 1_440_938_160),
            ("20240229T235930Z", 1_709_251_170),
            ("20000229T000000Z", 951_782_400),
            ("21000301T000000Z", 4_107_542_400),
            ("16000229T120000Z", -11_670_955_200),
            ("99991231T235959Z", 253_402_300_799),
            ("00000101T000000Z", -62_167_219_200),
        ] {
            assert_eq!(parse_amz_date(text), Some(secs), "{text}");
            assert_eq!(format_amz_date(secs), text);
        }
        for bad in [
            "19000229T000000Z",
            "20230229T000000Z",
            "21000229T000000Z",
            "20240431T000000Z",
            "20241301T000000Z",
            "20240001T000000Z",
            "20240100T000000Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
        // Every day of four centuries round-trips.
        let start = days_from_civil(1900, 1, 1);
        for days in start..start + 146_097 {
            let (y, m, d) = civil_from_days(days);
            assert!((1..=days_in_month(y, m)).contains(&d));
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn encoding_and_normalizing() {
        assert_eq!(uri_encode(b"a b/c~d+e%", true), "a%20b%2Fc~d%2Be%25");
        assert_eq!(uri_encode(b"a b/c", false), "a%20b/c");
        assert_eq!(uri_encode("ሴ".as_bytes(), true), "%E1%88%B4");
        assert_eq!(percent_decode(b"a%20b%2fc%zz%4"), b"a b/c%zz%4");
        assert_eq!(percent_decode(b"a+b"), b"a+b");
        assert_eq!(normalize_path(""), "/");
        assert_eq!(normalize_path("/a/./b/../c//d/"), "/a/c/d/");
        assert_eq!(normalize_path("/.."), "/");
        assert_eq!(
            parse_query("b=2&&a&c=3=4"),
            vec![
                (b"b".to_vec(), b"2".to_vec()),
                (b"a".to_vec(), b"".to_vec()),
                (b"c".to_vec(), b"3=4".to_vec()),
            ]
        );
        let mut out = Vec::new();
        push_trimmed(&mut out, b" \t a \t  b  ");
        assert_eq!(out, b"a b");
    }

    #[test]
    fn keys_from_hash_map() {
        let keys = suite_keys();
        assert_eq!(keys.secret(SUITE_KEY), Some(SUITE_SECRET.to_owned()));
        assert_eq!(keys.secret("AKIDOTHER"), None);
    }

    #[test]
    fn what_sign_signs_verify_accepts_and_a_changed_body_it_refuses() {
        let mut keys = HashMap::new();
        keys.insert("AKIDSIGNTEST".to_owned(), "s3cr3t/+key".to_owned());
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_764_000_000);
        let mut h = HeaderMap::new();
        h.insert("host", http::HeaderValue::from_static("127.0.0.1:8000"));
        h.insert(
            "x-amz-target",
            http::HeaderValue::from_static("DynamoDB_20120810.PutItem"),
        );
        h.insert(
            "content-type",
            http::HeaderValue::from_static("application/x-amz-json-1.0"),
        );
        let body = br#"{"TableName":"t"}"#;
        super::sign(
            "POST",
            "/",
            &mut h,
            body,
            "AKIDSIGNTEST",
            "s3cr3t/+key",
            "a",
            "dynamodb",
            now,
        )
        .unwrap();
        let who = verify("POST", "/", "", &h, body, &keys, now).unwrap();
        assert_eq!(who.access_key_id, "AKIDSIGNTEST");
        assert_eq!(who.region, "a");
        assert_eq!(
            verify("POST", "/", "", &h, br#"{"TableName":"u"}"#, &keys, now),
            Err(SigError::SignatureMismatch)
        );
    }

    // ---- S3 (sign_s3): the examples of the S3 API reference, "Signature Calculations
    // for the Authorization Header: Transferring Payload in a Single Chunk" ----

    const S3_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
    const S3_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const S3_DATE: &str = "20130524T000000Z";
    const S3_CREDS: Credentials<'static> = Credentials {
        access_key_id: S3_KEY,
        secret_access_key: S3_SECRET,
        session_token: None,
    };

    fn s3_sign(path: &str, query: &[(&str, &str)], extra: &[(&str, &str)]) -> HeaderMap {
        let mut headers = header_map(&[("host", "examplebucket.s3.amazonaws.com")]);
        for (name, value) in extra {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let query: Vec<(String, String)> = query
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        sign_s3(
            "GET",
            path,
            &query,
            &mut headers,
            EMPTY_SHA256,
            &S3_CREDS,
            "us-east-1",
            at(S3_DATE),
        )
        .unwrap();
        headers
    }

    fn authorization(headers: &HeaderMap) -> &str {
        headers.get("authorization").unwrap().to_str().unwrap()
    }

    #[test]
    fn s3_get_object_example() {
        let headers = s3_sign("/test.txt", &[], &[("range", "bytes=0-9")]);
        assert_eq!(
            authorization(&headers),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert_eq!(headers["x-amz-content-sha256"], EMPTY_SHA256);
        assert_eq!(headers["x-amz-date"], S3_DATE);
        assert!(headers["authorization"].is_sensitive());
        assert!(!headers.contains_key("x-amz-security-token"));
    }

    #[test]
    fn s3_get_bucket_lifecycle_example() {
        // `?lifecycle`: a name without a value is signed as `lifecycle=`.
        let headers = s3_sign("/", &[("lifecycle", "")], &[]);
        assert!(authorization(&headers).ends_with(
            "SignedHeaders=host;x-amz-content-sha256;x-amz-date, \
             Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
        ));
    }

    #[test]
    fn s3_list_objects_example() {
        // The query is sorted whatever order it is given in.
        let headers = s3_sign("/", &[("prefix", "J"), ("max-keys", "2")], &[]);
        assert!(authorization(&headers).ends_with(
            "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        ));
    }

    /// The canonical request `sign_s3` signed for these inputs, rebuilt from what it set.
    fn s3_canonical(path: &str, query: &[(&str, &str)], headers: &HeaderMap) -> String {
        let auth = authorization(headers);
        let signed = auth
            .split("SignedHeaders=")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap();
        let query: Vec<(Vec<u8>, Vec<u8>)> = query
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        String::from_utf8(canonical_request_with_uri(
            "GET",
            path,
            &query,
            false,
            headers,
            signed,
            EMPTY_SHA256,
        ))
        .unwrap()
    }

    #[test]
    fn s3_paths_are_signed_exactly_as_sent() {
        let mut signatures = Vec::new();
        for path in [
            "/bkt/a//b",
            "/bkt/a/./b",
            "/bkt/a/../b",
            "/bkt//lead",
            "/bkt/dir/",
            "/bkt/a/b",
            "/bkt/sp%20ace%2Bplus%2525%3Fq%23h%26amp",
            "/bkt/%C3%BC/%F0%9F%99%82/%01",
        ] {
            let headers = s3_sign(path, &[], &[]);
            let canonical = s3_canonical(path, &[], &headers);
            assert!(
                canonical.starts_with(&format!("GET\n{path}\n\n")),
                "{path}: {canonical}"
            );
            signatures.push(authorization(&headers).to_owned());
        }
        // No two of them are the same request (the non-S3 rule would sign the first
        // three and "/bkt/a/b" alike).
        let mut distinct = signatures.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), signatures.len());
        // The other services' rule, for contrast: normalized and encoded again.
        assert_eq!(
            uri_encode(normalize_path("/bkt/a/./b").as_bytes(), false),
            "/bkt/a/b"
        );
    }

    #[test]
    fn s3_query_names_and_values_are_encoded_and_sorted() {
        let query = [
            ("uploadId", "abc/def+g=="),
            ("partNumber", "3"),
            ("prefix", "a b/ü"),
            ("continuation-token", "1/2~x"),
        ];
        let headers = s3_sign("/bkt/k", &query, &[]);
        let canonical = s3_canonical("/bkt/k", &query, &headers);
        assert!(
            canonical.starts_with(
                "GET\n/bkt/k\ncontinuation-token=1%2F2~x&partNumber=3&prefix=a%20b%2F%C3%BC\
                 &uploadId=abc%2Fdef%2Bg%3D%3D\n"
            ),
            "{canonical}"
        );
    }

    #[test]
    fn s3_signs_amz_and_content_headers_and_the_token() {
        let mut headers = header_map(&[
            ("host", "127.0.0.1:9000"),
            ("content-type", "text/plain"),
            ("content-md5", "1B2M2Y8AsgTpgAmY7PhCfg=="),
            ("content-length", "0"),
            ("x-amz-meta-colour", "blue"),
            ("x-amz-tagging", "a=1&b=2"),
            ("user-agent", "lifeboat"),
            ("cache-control", "no-cache"),
        ]);
        let creds = Credentials {
            session_token: Some("FQoGZXIvYXdzEXAMPLE/token+=="),
            ..S3_CREDS
        };
        sign_s3(
            "PUT",
            "/bkt/k",
            &[],
            &mut headers,
            EMPTY_SHA256,
            &creds,
            "eu-west-1",
            at(S3_DATE),
        )
        .unwrap();
        assert_eq!(
            headers["x-amz-security-token"],
            "FQoGZXIvYXdzEXAMPLE/token+=="
        );
        let auth = authorization(&headers);
        assert!(
            auth.contains(
                "/20130524/eu-west-1/s3/aws4_request, SignedHeaders=content-md5;content-type;\
                 host;x-amz-content-sha256;x-amz-date;x-amz-meta-colour;x-amz-security-token;\
                 x-amz-tagging, "
            ),
            "{auth}"
        );
        let debug = format!("{creds:?}");
        assert!(debug.contains(S3_KEY), "{debug}");
        assert!(
            !debug.contains(S3_SECRET) && !debug.contains("FQoG"),
            "{debug}"
        );
    }

    #[test]
    fn s3_refuses_what_it_cannot_sign() {
        let mut no_host = HeaderMap::new();
        let got = sign_s3(
            "GET",
            "/bkt/k",
            &[],
            &mut no_host,
            EMPTY_SHA256,
            &S3_CREDS,
            "us-east-1",
            at(S3_DATE),
        );
        assert!(matches!(got, Err(SigError::Incomplete(m)) if m.contains("host")));
        let mut headers = header_map(&[("host", "h")]);
        let got = sign_s3(
            "GET",
            "bkt/k",
            &[],
            &mut headers,
            EMPTY_SHA256,
            &S3_CREDS,
            "us-east-1",
            at(S3_DATE),
        );
        assert!(matches!(got, Err(SigError::Incomplete(m)) if m.contains("'/'")));
        let got = sign_s3(
            "GET",
            "/k",
            &[],
            &mut headers,
            EMPTY_SHA256,
            &Credentials {
                session_token: Some("bad\ntoken"),
                ..S3_CREDS
            },
            "us-east-1",
            at(S3_DATE),
        );
        assert!(matches!(got, Err(SigError::Incomplete(m)) if m.contains("x-amz-security-token")));
        assert!(!headers.contains_key("authorization"));
    }
}
