//! The regional S3 gateway: an S3-API endpoint (s3s) in front of the region's store.
//!
//! - **Writes are recorded at once.** A PUT or DELETE that succeeds is observed and
//!   recorded (LOCAL, enqueued for every destination its rule covers) before the
//!   answer goes back: replication starts within milliseconds, no listing needed.
//!   Listing stays as the safety net for writes that bypass the gateway.
//! - **Writes are refused unless the region is the active one** (docs/architecture.md,
//!   rule 2, for objects): a standby, a fenced or an unassigned region answers
//!   503 ServiceUnavailable with the reason. Each write holds the replicator's write
//!   gate (shared) from its mode check to its record; a fence takes the gate
//!   exclusively after it has stopped admitting writes, so once `fence` returns no
//!   gateway write is in flight and every admitted one is recorded, where the fence's
//!   keep-aside finds it.
//! - Reads (GET, HEAD, listings) are served in every mode, as a read replica's are.
//! - Requests are signed with SigV4 against `[[objects.gateway.access_keys]]`.
//!
//! One bucket (`[objects.gateway] bucket`) is the region's store. Served: PutObject,
//! GetObject (whole objects), HeadObject, DeleteObject, DeleteObjects,
//! ListObjectsV2 (prefix, delimiter, start-after, continuation), HeadBucket,
//! ListBuckets. Not yet: multipart uploads, ranged GETs, tagging, copies (the
//! gateway answers NotImplemented, which the SDKs surface as such).

use super::{Inner, Mode};
use crate::store::{Attrs, Meta, READ_CHUNK};
use futures::StreamExt as _;
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The gateway of one region; see the module documentation.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
    bucket: String,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("region", &self.inner.region)
            .field("bucket", &self.bucket)
            .finish()
    }
}

impl super::Replicator {
    /// The region's S3 gateway serving `bucket`.
    pub fn gateway(&self, bucket: &str) -> Gateway {
        Gateway {
            inner: self.inner.clone(),
            bucket: bucket.to_owned(),
        }
    }
}

impl Gateway {
    /// Serve on `listener` until `cancel`, every request signed with one of `keys`
    /// (access key id, secret).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        keys: Vec<(String, String)>,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut auth = s3s::auth::SimpleAuth::new();
        for (id, secret) in keys {
            auth.register(id, secret.into());
        }
        let region = self.inner.region.clone();
        let mut b = s3s::service::S3ServiceBuilder::new(self);
        b.set_auth(auth);
        let service = b.build();
        let http =
            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        let conns = tokio_util::task::TaskTracker::new();
        tracing::info!(region = %region, addr = ?listener.local_addr().ok(), "object gateway listening");
        loop {
            let (socket, _) = tokio::select! {
                () = cancel.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        tracing::warn!(error = %e, "object gateway: accepting a connection failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let conn = http
                .serve_connection(hyper_util::rt::TokioIo::new(socket), service.clone())
                .into_owned();
            let stop = cancel.clone();
            conns.spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    r = conn => if let Err(e) = r {
                        tracing::debug!(error = %e, "object gateway connection ended");
                    },
                }
            });
        }
        conns.close();
        conns.wait().await;
        Ok(())
    }

    fn check_bucket(&self, bucket: &str) -> S3Result<()> {
        if bucket == self.bucket {
            Ok(())
        } else {
            Err(S3Error::with_message(
                S3ErrorCode::NoSuchBucket,
                format!(
                    "this gateway (region {}) serves the bucket {:?} only",
                    self.inner.region, self.bucket
                ),
            ))
        }
    }

    /// Admit a write: the shared write gate, held until the write is recorded, and the
    /// region's mode, which must be active.
    async fn admit(&self) -> S3Result<Admitted<'_>> {
        // Refused at once when not active: a fence waiting for the gate holds new
        // readers back (tokio's lock is fair), and a refusal must not wait for it.
        let mut mode = *self.inner.effective.borrow();
        if mode == Mode::Active {
            let gate = self.inner.write_gate.read().await;
            // Checked again under the gate: a fence may have come meanwhile.
            mode = *self.inner.effective.borrow();
            if mode != Mode::Active {
                drop(gate);
                return Err(self.refusal(mode));
            }
            let inflight = &self.inner.metrics.gateway_inflight;
            inflight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(Admitted {
                _gate: gate,
                inflight,
            });
        }
        Err(self.refusal(mode))
    }

    /// The answer to a write while the region is not active.
    fn refusal(&self, mode: Mode) -> S3Error {
        let active = self
            .inner
            .following
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let elsewhere = match active {
            Some(a) if mode == Mode::Standby => format!("; write to region {a}, the active one"),
            _ => String::new(),
        };
        let why = match mode {
            Mode::Fenced => "is fenced",
            Mode::Standby => "is a standby",
            _ => "has no role yet",
        };
        self.inner
            .metrics
            .gateway_refused_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        S3Error::with_message(
            S3ErrorCode::ServiceUnavailable,
            format!(
                "region {} {why}: lifeboat refuses writes to it{elsewhere}",
                self.inner.region
            ),
        )
    }

    /// Record a write the gateway carried out, as a local write of the active region
    /// (it was admitted while active): whatever else saw the change first — the
    /// directory watcher, a listing after the fence — may have taken it for a replica,
    /// and this record wins.
    async fn record(&self, key: &str) {
        let observation = match self.inner.source.head(key).await {
            Ok(Some(m)) => {
                if self.inner.rule_for(key).is_none() {
                    return;
                }
                self.inner
                    .present(key.to_owned(), m.size, m.etag, Mode::Active, None)
            }
            Ok(None) => {
                if self.inner.rule_for(key).is_none() {
                    return;
                }
                self.inner.absent(key.to_owned(), Mode::Active)
            }
            Err(e) => {
                // Listed at the next reconcile instead (late, not lost); a hint now.
                tracing::warn!(error = %e, key, "object gateway: looking at a written object failed");
                let _ = self
                    .inner
                    .hints_tx
                    .send(crate::source::Change::Key(key.to_owned()));
                return;
            }
        };
        if let Err(e) = self.inner.apply(&[observation]) {
            // The listing records it at the next reconcile: late, not lost.
            tracing::error!(error = %format!("{e:#}"), key, "object gateway: recording a write failed");
        }
    }
}

/// An admitted write: holds the write gate (shared) and counts as in flight.
struct Admitted<'a> {
    _gate: tokio::sync::RwLockReadGuard<'a, ()>,
    inflight: &'a std::sync::atomic::AtomicU64,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.inflight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn internal(context: &str, e: impl std::fmt::Display) -> S3Error {
    S3Error::with_message(S3ErrorCode::InternalError, format!("{context}: {e}"))
}

fn store_error(context: &str, e: crate::store::StoreError) -> S3Error {
    match e {
        crate::store::StoreError::NotFound => s3_error!(NoSuchKey),
        crate::store::StoreError::KeyUnsupported { .. } => {
            S3Error::with_message(S3ErrorCode::InvalidArgument, e.to_string())
        }
        e => internal(context, e),
    }
}

/// Every byte but RFC 3986's unreserved characters and `/` as `%XX` (S3's
/// `encoding-type=url`; `+` and space are encoded too, as the SDKs decode with
/// unquote-plus).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn etag_of(e: Option<String>) -> Option<ETag> {
    e.map(|e| ETag::Strong(e.trim_matches('"').to_owned()))
}

fn header<'a>(attrs: &'a Attrs, name: &str) -> Option<&'a str> {
    attrs
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[async_trait::async_trait]
impl S3 for Gateway {
    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.check_bucket(&req.input.bucket)?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(vec![Bucket {
                name: Some(self.bucket.clone()),
                ..Default::default()
            }]),
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.check_bucket(&req.input.bucket)?;
        let Some(meta) = self
            .inner
            .source
            .head(&req.input.key)
            .await
            .map_err(|e| store_error("reading the object", e))?
        else {
            return Err(s3_error!(NoSuchKey));
        };
        Ok(S3Response::new(HeadObjectOutput {
            content_length: i64::try_from(meta.size).ok(),
            e_tag: etag_of(meta.etag),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        if input.range.is_some() || input.part_number.is_some() {
            return Err(S3Error::with_message(
                S3ErrorCode::NotImplemented,
                "the lifeboat gateway serves whole objects only (no Range, no partNumber)",
            ));
        }
        let Some(got) = self
            .inner
            .source
            .get(&input.key, READ_CHUNK, false)
            .await
            .map_err(|e| store_error("reading the object", e))?
        else {
            return Err(s3_error!(NoSuchKey));
        };
        let metadata: Metadata = got
            .attrs
            .headers
            .iter()
            .filter_map(|(n, v)| {
                n.strip_prefix("x-amz-meta-")
                    .map(|m| (m.to_owned(), v.clone()))
            })
            .collect();
        // s3s wants a Sync body: hand the store's stream over through a channel.
        let (mut tx, rx) =
            futures::channel::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(2);
        let mut source = got.stream;
        tokio::spawn(async move {
            use futures::SinkExt as _;
            while let Some(item) = source.next().await {
                if tx.send(item.map_err(std::io::Error::other)).await.is_err() {
                    break;
                }
            }
        });
        Ok(S3Response::new(GetObjectOutput {
            content_length: i64::try_from(got.size).ok(),
            e_tag: etag_of(got.etag),
            content_type: header(&got.attrs, "content-type").map(str::to_owned),
            cache_control: header(&got.attrs, "cache-control").map(str::to_owned),
            content_encoding: header(&got.attrs, "content-encoding").map(str::to_owned),
            content_disposition: header(&got.attrs, "content-disposition").map(str::to_owned),
            content_language: header(&got.attrs, "content-language").map(str::to_owned),
            metadata: (!metadata.is_empty()).then_some(metadata),
            body: Some(StreamingBlob::wrap(rx)),
            ..Default::default()
        }))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let _gate = self.admit().await?;
        let key = input.key;
        let mut headers = Vec::new();
        for (name, value) in [
            ("content-type", &input.content_type),
            ("cache-control", &input.cache_control),
            ("content-encoding", &input.content_encoding),
            ("content-disposition", &input.content_disposition),
            ("content-language", &input.content_language),
        ] {
            if let Some(v) = value {
                headers.push((name.to_owned(), v.clone()));
            }
        }
        if let Some(m) = &input.metadata {
            for (k, v) in m {
                headers.push((format!("x-amz-meta-{}", k.to_ascii_lowercase()), v.clone()));
            }
        }
        let attrs = Attrs {
            headers,
            tags: Vec::new(),
        };
        let Some(mut body) = input.body else {
            return Err(s3_error!(IncompleteBody));
        };
        let part_size = self.inner.part_size();
        let mut chunks = Vec::new();
        let mut buffered = 0usize;
        let mut upload = None;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| internal("reading the request body", e))?;
            buffered += chunk.len();
            match &mut upload {
                Some(u) => {
                    let u: &mut crate::store::Upload = u;
                    u.wait_for_capacity(crate::transfer::MAX_PARTS_IN_FLIGHT)
                        .await
                        .map_err(|e| store_error("writing the object", e))?;
                    u.put(chunk);
                }
                None => {
                    chunks.push(chunk);
                    if buffered > part_size {
                        // Too large for one PUT to the store: stream the rest in parts.
                        let mut u = self
                            .inner
                            .source
                            .upload(&key, &attrs, part_size)
                            .await
                            .map_err(|e| store_error("writing the object", e))?;
                        for c in chunks.drain(..) {
                            u.put(c);
                        }
                        upload = Some(u);
                    }
                }
            }
        }
        let etag = match upload {
            Some(u) => u.finish().await,
            None => self.inner.source.put(&key, chunks, &attrs).await,
        }
        .map_err(|e| store_error("writing the object", e))?;
        self.record(&key).await;
        self.inner
            .metrics
            .gateway_writes_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(S3Response::new(PutObjectOutput {
            e_tag: etag_of(etag),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let _gate = self.admit().await?;
        self.inner
            .source
            .delete(&input.key)
            .await
            .map_err(|e| store_error("deleting the object", e))?;
        self.record(&input.key).await;
        self.inner
            .metrics
            .gateway_writes_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let _gate = self.admit().await?;
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for o in input.delete.objects {
            match self.inner.source.delete(&o.key).await {
                Ok(()) => {
                    self.record(&o.key).await;
                    deleted.push(DeletedObject {
                        key: Some(o.key),
                        ..Default::default()
                    });
                }
                Err(e) => errors.push(Error {
                    code: Some("InternalError".to_owned()),
                    message: Some(e.to_string()),
                    key: Some(o.key),
                    ..Default::default()
                }),
            }
        }
        self.inner
            .metrics
            .gateway_writes_total
            .fetch_add(deleted.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let max_keys =
            usize::try_from(input.max_keys.unwrap_or(1000).clamp(0, 1000)).unwrap_or(1000);
        // The continuation token is the last key (or common prefix) of the page before.
        let after = match (&input.continuation_token, &input.start_after) {
            (Some(t), Some(s)) => Some(t.clone().max(s.clone())),
            (Some(t), None) => Some(t.clone()),
            (None, s) => s.clone(),
        };
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let mut contents: Vec<Object> = Vec::new();
        let mut prefixes: Vec<String> = Vec::new();
        let mut last: Option<String> = None;
        let mut truncated = false;
        let mut stream = self.inner.source.list(&prefix, after.clone());
        while let Some(item) = stream.next().await {
            let Meta {
                key, size, etag, ..
            } = item.map_err(|e| store_error("listing the bucket", e))?;
            if after.as_ref().is_some_and(|a| key.as_str() <= a.as_str()) {
                continue;
            }
            let grouped = delimiter.as_ref().and_then(|d| {
                key[prefix.len()..]
                    .find(d.as_str())
                    .map(|i| key[..prefix.len() + i + d.len()].to_owned())
            });
            if let Some(common) = &grouped
                && prefixes.last() == Some(common)
            {
                continue;
            }
            if contents.len() + prefixes.len() >= max_keys {
                truncated = true;
                break;
            }
            match grouped {
                Some(common) => {
                    // Every key under this common prefix sorts before anything after it.
                    last = Some(format!("{common}\u{10FFFF}"));
                    prefixes.push(common);
                }
                None => {
                    last = Some(key.clone());
                    contents.push(Object {
                        key: Some(key),
                        size: i64::try_from(size).ok(),
                        e_tag: etag_of(etag),
                        ..Default::default()
                    });
                }
            }
        }
        let key_count = i32::try_from(contents.len() + prefixes.len()).unwrap_or(i32::MAX);
        // `encoding-type=url` (what boto3 asks for): keys and prefixes go back
        // percent-encoded, as XML cannot carry every character a key may hold, and the
        // SDK decodes them.
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == "url");
        let enc = |s: String| if url { url_encode(&s) } else { s };
        for o in &mut contents {
            o.key = o.key.take().map(enc);
        }
        let prefixes: Vec<String> = prefixes.into_iter().map(enc).collect();
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(self.bucket.clone()),
            prefix: input.prefix.map(enc),
            delimiter: input.delimiter.map(enc),
            max_keys: input.max_keys.or(Some(1000)),
            key_count: Some(key_count),
            is_truncated: Some(truncated),
            next_continuation_token: if truncated { last } else { None },
            continuation_token: input.continuation_token,
            start_after: input.start_after.map(enc),
            encoding_type: input.encoding_type,
            contents: (!contents.is_empty()).then_some(contents),
            common_prefixes: (!prefixes.is_empty()).then(|| {
                prefixes
                    .into_iter()
                    .map(|p| CommonPrefix { prefix: Some(p) })
                    .collect()
            }),
            ..Default::default()
        }))
    }
}
