//! A region's object store, addressed by raw S3 keys.
//!
//! Keys are strings exactly as S3 has them: any UTF-8 up to 1,024 bytes, empty
//! segments (`a//b`), `.` and `..` segments, a leading or trailing `/` (folder markers
//! such as `dir/`) included. Two backends:
//! - **S3-API stores** go through lifeboat's own small client ([`crate::s3`]), which
//!   sends every key byte-exact. object_store cannot: its `Path` rejects empty
//!   segments and strips a leading or trailing `/`, and its S3 listing fails on such a
//!   key, which stopped the replication of a whole bucket. (rusty-s3 and reqwest both
//!   build URLs with the `url` crate, which folds `.` and `..` segments.)
//! - **local directories, GCS and Azure** stay on object_store. A key its `Path`
//!   cannot hold byte-exact is refused with [`StoreError::KeyUnsupported`], naming the
//!   key and why: the replicator records that copy FAILED with the reason and goes on
//!   with the others (docs/objects.md, "Keys").
//!
//! Secrets are read here, at open, from their `*_file` / `*_env` source (never from
//! the config text). Remote stores get a short internal retry budget: lifeboat
//! retries transfers itself with backoff, and a down destination must surface as a
//! clear error in seconds rather than hide inside minutes of client retries.

use crate::s3::{S3Client, S3Config, S3Error};
use anyhow::Context as _;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use lifeboat_config::objects::{StoreConfig, StoreKind};
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, BackoffConfig, ClientOptions, GetResult,
    GetResultPayload, ObjectStore, ObjectStoreExt as _, PutMultipartOptions, PutOptions,
    PutPayload, RetryConfig, WriteMultipart,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How an object's store is reached.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Local directory, GCS, Azure: object_store (keys limited to what `Path` holds).
    Os(Arc<dyn ObjectStore>),
    /// S3-API stores: lifeboat's raw client (every key).
    S3(Arc<S3Client>),
}

/// One region's store and what lifeboat needs to know about it.
#[derive(Debug, Clone)]
pub struct Store {
    pub backend: Backend,
    pub kind: StoreKind,
    /// local: the directory (watched for changes).
    pub local_root: Option<PathBuf>,
    /// local: the store itself, so small objects can be read in one blocking call.
    pub local: Option<Arc<object_store::local::LocalFileSystem>>,
    /// A short description for messages ("local /srv/a", "s3 http://…/bucket").
    pub describe: String,
}

/// An object as a listing or a HEAD shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    /// Last modified, milliseconds since the epoch, when the store says.
    pub modified_ms: Option<i64>,
}

/// What travels with an object besides its bytes, as S3 names it: the replicable
/// headers (`content-type`, `cache-control`, `x-amz-meta-*`, …) and the tags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs {
    pub headers: Vec<(String, String)>,
    pub tags: Vec<(String, String)>,
}

/// An object being read.
pub struct Got {
    pub size: u64,
    pub etag: Option<String>,
    pub attrs: Attrs,
    pub stream: BoxStream<'static, Result<Bytes, StoreError>>,
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("no such object")]
    NotFound,
    /// The store cannot hold this key byte-exact (retrying cannot help).
    #[error("{store} cannot hold the key {key:?}: {reason}")]
    KeyUnsupported {
        store: String,
        key: String,
        reason: String,
    },
    /// A listing met an entry it cannot name as a key (a file name object_store's
    /// paths refuse): the listing goes on, the entry is reported.
    #[error("{store}: an entry could not be listed: {reason}")]
    Unlistable { store: String, reason: String },
    /// The store refused the credentials.
    #[error("access denied by {store}: {message} (check the store's credentials)")]
    Denied { store: String, message: String },
    /// Anything else, with its whole chain of causes.
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    /// An object_store error as a store error.
    pub fn from_os_error(store: &str, e: object_store::Error) -> Self {
        Self::from_os(store, e)
    }

    fn from_os(store: &str, e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => StoreError::NotFound,
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => StoreError::Denied {
                store: store.to_owned(),
                message: e.to_string(),
            },
            e => StoreError::Other(crate::transfer::with_causes(&e)),
        }
    }

    fn from_s3(store: &str, e: S3Error) -> Self {
        match e {
            S3Error::AccessDenied { .. } => StoreError::Denied {
                store: store.to_owned(),
                message: e.to_string(),
            },
            e => StoreError::Other(crate::transfer::with_causes(&e)),
        }
    }
}

/// The object_store `Path` of `key`, when it holds the key byte-exact.
pub fn os_path(store: &str, key: &str) -> Result<Path, StoreError> {
    let unsupported = |reason: &str| StoreError::KeyUnsupported {
        store: store.to_owned(),
        key: key.to_owned(),
        reason: reason.to_owned(),
    };
    if key.is_empty() {
        return Err(unsupported("an empty key"));
    }
    match Path::parse(key) {
        Ok(p) if p.as_ref() == key => Ok(p),
        Ok(_) => Err(unsupported(
            "a leading or trailing '/' (object_store's paths drop it; S3-API stores keep it)",
        )),
        Err(object_store::path::Error::EmptySegment { .. }) => Err(unsupported(
            "an empty segment ('//'; object_store's paths cannot hold one, S3-API stores can)",
        )),
        Err(e) => Err(unsupported(&crate::transfer::with_causes(&e))),
    }
}

impl Store {
    /// The object_store path of `key` in this store, when the store holds it
    /// byte-exact: a local directory also needs every segment to fit a file name.
    fn os_key(&self, key: &str) -> Result<Path, StoreError> {
        let path = os_path(&self.describe, key)?;
        if self.local.is_some() {
            // LocalFileSystem percent-encodes some characters in file names; NAME_MAX
            // (255 bytes) applies to what it writes.
            if let Some(seg) = path.parts().find(|p| p.as_ref().len() > 255) {
                return Err(StoreError::KeyUnsupported {
                    store: self.describe.clone(),
                    key: key.to_owned(),
                    reason: format!(
                        "a segment of {} bytes (a local file name holds at most 255)",
                        seg.as_ref().len()
                    ),
                });
            }
        }
        Ok(path)
    }

    /// Whether the store keeps object attributes such as content type.
    pub fn keeps_attributes(&self) -> bool {
        !matches!(self.kind, StoreKind::Local)
    }

    /// Whether the store can hold `key` byte-exact (and why not).
    pub fn check_key(&self, key: &str) -> Result<(), StoreError> {
        match self.backend {
            Backend::S3(_) => Ok(()),
            Backend::Os(_) => self.os_key(key).map(|_| ()),
        }
    }

    /// Whether the store keeps object tags.
    pub fn keeps_tags(&self) -> bool {
        matches!(self.backend, Backend::S3(_))
    }

    /// A store over an object_store implementation (tests wrap stores this way).
    pub fn from_object_store(
        inner: Arc<dyn ObjectStore>,
        kind: StoreKind,
        describe: String,
    ) -> Self {
        Store {
            backend: Backend::Os(inner),
            kind,
            local_root: None,
            local: None,
            describe,
        }
    }

    /// Every object whose key starts with `prefix`, after `after` when given, in key
    /// order.
    pub fn list(
        &self,
        prefix: &str,
        after: Option<String>,
    ) -> BoxStream<'_, Result<Meta, StoreError>> {
        let name = self.describe.clone();
        match &self.backend {
            Backend::S3(client) => {
                let prefix = prefix.to_owned();
                futures::stream::try_unfold((Some(None::<String>), after), move |(token, after)| {
                    let (client, prefix, name) = (client.clone(), prefix.clone(), name.clone());
                    async move {
                        let Some(token) = token else {
                            return Ok(None);
                        };
                        let page = client
                            .list_page(&prefix, after.as_deref(), token.as_deref())
                            .await
                            .map_err(|e| StoreError::from_s3(&name, e))?;
                        let items: Vec<Result<Meta, StoreError>> = page
                            .objects
                            .into_iter()
                            .map(|o| {
                                Ok(Meta {
                                    key: o.key,
                                    size: o.size,
                                    etag: o.etag,
                                    modified_ms: o.last_modified_ms,
                                })
                            })
                            .collect();
                        let next = page.next.map(Some);
                        Ok(Some((futures::stream::iter(items), (next, after))))
                    }
                })
                .map(|page: Result<_, StoreError>| match page {
                    Ok(items) => items.left_stream(),
                    Err(e) => futures::stream::once(async move { Err(e) }).right_stream(),
                })
                .flatten()
                .boxed()
            }
            Backend::Os(inner) => {
                // object_store lists by whole segments: list the directory the prefix
                // is in, keep the keys that start with it.
                let dir = match prefix.rfind('/') {
                    Some(i) => &prefix[..i],
                    None => "",
                };
                let dir = (!dir.is_empty()).then(|| Path::from(dir));
                let stream = match after.as_deref().map(|a| os_path(&name, a)) {
                    Some(Ok(offset)) => inner.list_with_offset(dir.as_ref(), &offset),
                    _ => inner.list(dir.as_ref()),
                };
                let prefix = prefix.to_owned();
                stream
                    .filter_map(move |item| {
                        let out = match item {
                            Ok(meta) => {
                                let key = meta.location.to_string();
                                key.starts_with(&prefix).then_some(Ok(Meta {
                                    key,
                                    size: meta.size,
                                    etag: meta.e_tag,
                                    modified_ms: Some(meta.last_modified.timestamp_millis()),
                                }))
                            }
                            Err(object_store::Error::InvalidPath { source }) => {
                                Some(Err(StoreError::Unlistable {
                                    store: name.clone(),
                                    reason: crate::transfer::with_causes(&source),
                                }))
                            }
                            Err(e) => Some(Err(StoreError::from_os(&name, e))),
                        };
                        std::future::ready(out)
                    })
                    .boxed()
            }
        }
    }

    /// The object's size and e_tag; `None` when there is none.
    pub async fn head(&self, key: &str) -> Result<Option<Meta>, StoreError> {
        let name = &self.describe;
        match &self.backend {
            Backend::S3(client) => Ok(client
                .head(key, None)
                .await
                .map_err(|e| StoreError::from_s3(name, e))?
                .map(|h| Meta {
                    key: key.to_owned(),
                    size: h.size,
                    etag: h.etag,
                    modified_ms: h.last_modified_ms,
                })),
            Backend::Os(inner) => match inner.head(&self.os_key(key)?).await {
                Ok(m) => Ok(Some(Meta {
                    key: key.to_owned(),
                    size: m.size,
                    etag: m.e_tag,
                    modified_ms: Some(m.last_modified.timestamp_millis()),
                })),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(StoreError::from_os(name, e)),
            },
        }
    }

    /// Read an object, streamed in chunks of at most `chunk` bytes (local files);
    /// `None` when there is none. Tags are read only when `with_tags`.
    pub async fn get(
        &self,
        key: &str,
        chunk: usize,
        with_tags: bool,
    ) -> Result<Option<Got>, StoreError> {
        let name = self.describe.clone();
        match &self.backend {
            Backend::S3(client) => {
                let Some((head, stream)) = client
                    .get(key, None)
                    .await
                    .map_err(|e| StoreError::from_s3(&name, e))?
                else {
                    return Ok(None);
                };
                let tags = if with_tags && head.tag_count.is_none_or(|n| n > 0) {
                    match client.get_tags(key).await {
                        Ok(tags) => tags,
                        // A server without tagging has no tags to carry.
                        Err(S3Error::Unsupported { .. }) => Vec::new(),
                        Err(e) => return Err(StoreError::from_s3(&name, e)),
                    }
                } else {
                    Vec::new()
                };
                let n2 = name.clone();
                Ok(Some(Got {
                    size: head.size,
                    etag: head.etag,
                    attrs: Attrs {
                        headers: head.headers,
                        tags,
                    },
                    stream: stream
                        .map(move |r| r.map_err(|e| StoreError::from_s3(&n2, e)))
                        .boxed(),
                }))
            }
            Backend::Os(inner) => {
                let got = match inner.get(&self.os_key(key)?).await {
                    Ok(g) => g,
                    Err(object_store::Error::NotFound { .. }) => return Ok(None),
                    Err(e) => return Err(StoreError::from_os(&name, e)),
                };
                let (size, etag) = (got.meta.size, got.meta.e_tag.clone());
                let headers = headers_of(&got.attributes);
                Ok(Some(Got {
                    size,
                    etag,
                    attrs: Attrs {
                        headers,
                        tags: Vec::new(),
                    },
                    stream: byte_stream(got, chunk)
                        .map(move |r| r.map_err(|e| StoreError::from_os(&name, e)))
                        .boxed(),
                }))
            }
        }
    }

    /// Write a whole object in one request; its e_tag.
    pub async fn put(
        &self,
        key: &str,
        chunks: Vec<Bytes>,
        attrs: &Attrs,
    ) -> Result<Option<String>, StoreError> {
        let name = &self.describe;
        match &self.backend {
            Backend::S3(client) => client
                .put(key, chunks, &attrs.headers, &attrs.tags)
                .await
                .map_err(|e| StoreError::from_s3(name, e)),
            Backend::Os(inner) => {
                let opts = PutOptions {
                    attributes: self.os_attributes(attrs),
                    ..Default::default()
                };
                let payload: PutPayload = chunks.into_iter().collect();
                inner
                    .put_opts(&self.os_key(key)?, payload, opts)
                    .await
                    .map(|r| r.e_tag)
                    .map_err(|e| StoreError::from_os(name, e))
            }
        }
    }

    /// Start a multipart upload cut into parts of `part_size` bytes.
    pub async fn upload(
        &self,
        key: &str,
        attrs: &Attrs,
        part_size: usize,
    ) -> Result<Upload, StoreError> {
        let name = self.describe.clone();
        match &self.backend {
            Backend::S3(client) => {
                let id = client
                    .create_multipart(key, &attrs.headers, &attrs.tags)
                    .await
                    .map_err(|e| StoreError::from_s3(&name, e))?;
                Ok(Upload::S3(S3Upload {
                    client: client.clone(),
                    name,
                    key: key.to_owned(),
                    id,
                    part_size,
                    buffer: Vec::new(),
                    buffered: 0,
                    next_part: 1,
                    inflight: tokio::task::JoinSet::new(),
                    done: Vec::new(),
                }))
            }
            Backend::Os(inner) => {
                let opts = PutMultipartOptions {
                    attributes: self.os_attributes(attrs),
                    ..Default::default()
                };
                let upload = inner
                    .put_multipart_opts(&self.os_key(key)?, opts)
                    .await
                    .map_err(|e| StoreError::from_os(&name, e))?;
                Ok(Upload::Os {
                    writer: WriteMultipart::new_with_chunk_size(upload, part_size),
                    name,
                })
            }
        }
    }

    /// Delete an object; one already gone counts as deleted.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let name = &self.describe;
        match &self.backend {
            Backend::S3(client) => client
                .delete(key)
                .await
                .map_err(|e| StoreError::from_s3(name, e)),
            Backend::Os(inner) => match inner.delete(&self.os_key(key)?).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(StoreError::from_os(name, e)),
            },
        }
    }

    fn os_attributes(&self, attrs: &Attrs) -> Attributes {
        let mut out = Attributes::new();
        if !self.keeps_attributes() {
            return out;
        }
        for (name, value) in &attrs.headers {
            let attr = match name.as_str() {
                "content-type" => Attribute::ContentType,
                "content-encoding" => Attribute::ContentEncoding,
                "content-disposition" => Attribute::ContentDisposition,
                "content-language" => Attribute::ContentLanguage,
                "cache-control" => Attribute::CacheControl,
                other => match other.strip_prefix("x-amz-meta-") {
                    Some(m) => Attribute::Metadata(m.to_owned().into()),
                    None => continue,
                },
            };
            out.insert(attr, AttributeValue::from(value.clone()));
        }
        out
    }

    /// Open the store a config section describes.
    pub fn open(cfg: &StoreConfig) -> anyhow::Result<Store> {
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: Duration::from_secs(15),
        };
        let client = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(300))
            .with_pool_max_idle_per_host(64);
        match cfg.kind {
            StoreKind::Local => {
                let path = cfg.path.clone().context("a local store needs `path`")?;
                std::fs::create_dir_all(&path)
                    .with_context(|| format!("creating object directory {}", path.display()))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&path)
                    .with_context(|| format!("opening object directory {}", path.display()))?
                    .with_automatic_cleanup(true);
                let root = std::fs::canonicalize(&path).unwrap_or(path);
                let fs = Arc::new(fs);
                Ok(Store {
                    local: Some(fs.clone()),
                    backend: Backend::Os(fs),
                    kind: StoreKind::Local,
                    describe: format!("local {}", root.display()),
                    local_root: Some(root),
                })
            }
            StoreKind::S3 => {
                let bucket = cfg.bucket.clone().context("an s3 store needs `bucket`")?;
                let access_key_id = cfg
                    .access_key_id()
                    .load()
                    .context("reading access_key_id")?;
                let secret_access_key = cfg
                    .secret_access_key()
                    .load()
                    .context("reading secret_access_key")?;
                let session_token = match cfg.session_token() {
                    Some(t) => Some(t.load().context("reading session_token")?),
                    None => None,
                };
                let s3 = S3Client::new(S3Config {
                    endpoint: cfg.endpoint.clone(),
                    bucket: bucket.clone(),
                    region: cfg.region.clone().unwrap_or_else(|| "us-east-1".to_owned()),
                    access_key_id,
                    secret_access_key,
                    session_token,
                    virtual_hosted_style: cfg.virtual_hosted_style,
                })
                .with_context(|| format!("configuring the s3 store of bucket {bucket}"))?;
                Ok(Store {
                    describe: s3.describe(),
                    backend: Backend::S3(Arc::new(s3)),
                    kind: StoreKind::S3,
                    local_root: None,
                    local: None,
                })
            }
            StoreKind::Gcs => {
                let bucket = cfg.bucket.clone().context("a gcs store needs `bucket`")?;
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::new()
                    .with_bucket_name(&bucket)
                    .with_retry(retry)
                    .with_client_options(client);
                if let Some(path) = &cfg.service_account_file {
                    b = b.with_service_account_path(path.display().to_string());
                }
                let describe = format!("gcs gs://{bucket}");
                let gcs = b
                    .build()
                    .with_context(|| format!("configuring {describe}"))?;
                Ok(Store::from_object_store(
                    Arc::new(gcs),
                    StoreKind::Gcs,
                    describe,
                ))
            }
            StoreKind::Azure => {
                let account = cfg
                    .account
                    .clone()
                    .context("an azure store needs `account`")?;
                let container = cfg
                    .container
                    .clone()
                    .context("an azure store needs `container`")?;
                let mut b = object_store::azure::MicrosoftAzureBuilder::new()
                    .with_account(&account)
                    .with_container_name(&container)
                    .with_use_emulator(cfg.use_emulator)
                    .with_retry(retry)
                    .with_client_options(client);
                if let Some(key) = cfg.access_key() {
                    b = b.with_access_key(key.load().context("reading access_key")?);
                }
                if let Some(ep) = &cfg.endpoint {
                    b = b
                        .with_endpoint(ep.clone())
                        .with_allow_http(ep.starts_with("http://"));
                }
                let describe = format!("azure {account}/{container}");
                let az = b
                    .build()
                    .with_context(|| format!("configuring {describe}"))?;
                Ok(Store::from_object_store(
                    Arc::new(az),
                    StoreKind::Azure,
                    describe,
                ))
            }
        }
    }
}

/// object_store's attributes as S3 header names.
fn headers_of(attributes: &Attributes) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (attr, value) in attributes {
        let name = match attr {
            Attribute::ContentType => "content-type".to_owned(),
            Attribute::ContentEncoding => "content-encoding".to_owned(),
            Attribute::ContentDisposition => "content-disposition".to_owned(),
            Attribute::ContentLanguage => "content-language".to_owned(),
            Attribute::CacheControl => "cache-control".to_owned(),
            Attribute::Metadata(m) => format!("x-amz-meta-{m}"),
            _ => continue,
        };
        out.push((name, value.to_string()));
    }
    out
}

/// Bytes read from a local file at a time (object_store's own file stream reads 8 KiB
/// per blocking task, which costs more in task hops than in I/O).
pub const READ_CHUNK: usize = 1 << 20;

/// The content of a GET as a stream of chunks. A local file is read on one blocking
/// thread in `chunk`-sized pieces with at most two pieces queued (bounded memory).
fn byte_stream(got: GetResult, chunk: usize) -> BoxStream<'static, object_store::Result<Bytes>> {
    let range = got.range.clone();
    match got.payload {
        GetResultPayload::File(mut file, path) => {
            let (tx, rx) = tokio::sync::mpsc::channel::<object_store::Result<Bytes>>(2);
            tokio::task::spawn_blocking(move || {
                use std::io::{Read as _, Seek as _, SeekFrom};
                let fail = |e: std::io::Error| object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: format!("reading {}: {e}", path.display()).into(),
                };
                if let Err(e) = file.seek(SeekFrom::Start(range.start)) {
                    let _ = tx.blocking_send(Err(fail(e)));
                    return;
                }
                let mut remaining = range.end.saturating_sub(range.start);
                while remaining > 0 {
                    let n = usize::try_from(remaining.min(chunk as u64)).unwrap_or(chunk);
                    let mut buf = vec![0u8; n];
                    if let Err(e) = file.read_exact(&mut buf) {
                        let _ = tx.blocking_send(Err(fail(e)));
                        return;
                    }
                    remaining -= n as u64;
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return;
                    }
                }
            });
            futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            })
            .boxed()
        }
        GetResultPayload::Stream(s) => s,
    }
}

/// A multipart upload in progress.
pub enum Upload {
    Os {
        writer: WriteMultipart,
        name: String,
    },
    S3(S3Upload),
}

/// An S3 multipart upload: parts cut at exact multiples of the part size (as S3's
/// multipart ETag assumes), at most a few in flight.
pub struct S3Upload {
    client: Arc<S3Client>,
    name: String,
    key: String,
    id: String,
    part_size: usize,
    buffer: Vec<Bytes>,
    buffered: usize,
    next_part: u32,
    inflight: tokio::task::JoinSet<Result<(u32, String), S3Error>>,
    done: Vec<(u32, String)>,
}

impl S3Upload {
    fn send_part(&mut self, chunks: Vec<Bytes>) {
        let (client, key, id, n) = (
            self.client.clone(),
            self.key.clone(),
            self.id.clone(),
            self.next_part,
        );
        self.next_part += 1;
        self.inflight.spawn(async move {
            let etag = client.upload_part(&key, &id, n, chunks).await?;
            Ok((n, etag))
        });
    }

    async fn join_one(&mut self) -> Result<(), StoreError> {
        match self.inflight.join_next().await {
            Some(Ok(Ok(part))) => {
                self.done.push(part);
                Ok(())
            }
            Some(Ok(Err(e))) => Err(StoreError::from_s3(&self.name, e)),
            Some(Err(e)) => Err(StoreError::Other(format!("a part upload task failed: {e}"))),
            None => Ok(()),
        }
    }
}

impl Upload {
    /// Wait until fewer than `n` parts are in flight.
    pub async fn wait_for_capacity(&mut self, n: usize) -> Result<(), StoreError> {
        match self {
            Upload::Os { writer, name } => writer
                .wait_for_capacity(n)
                .await
                .map_err(|e| StoreError::from_os(name, e)),
            Upload::S3(u) => {
                while u.inflight.len() >= n.max(1) {
                    u.join_one().await?;
                }
                Ok(())
            }
        }
    }

    /// Append bytes; full parts are sent as they fill.
    pub fn put(&mut self, mut chunk: Bytes) {
        match self {
            Upload::Os { writer, .. } => writer.put(chunk),
            Upload::S3(u) => {
                while !chunk.is_empty() {
                    let take = (u.part_size - u.buffered).min(chunk.len());
                    u.buffer.push(chunk.split_to(take));
                    u.buffered += take;
                    if u.buffered == u.part_size {
                        let part = std::mem::take(&mut u.buffer);
                        u.buffered = 0;
                        u.send_part(part);
                    }
                }
            }
        }
    }

    /// Send what is left and complete the upload; the object's e_tag.
    pub async fn finish(self) -> Result<Option<String>, StoreError> {
        match self {
            Upload::Os { writer, name } => writer
                .finish()
                .await
                .map(|r| r.e_tag)
                .map_err(|e| StoreError::from_os(&name, e)),
            Upload::S3(mut u) => {
                if u.buffered > 0 || u.next_part == 1 {
                    let part = std::mem::take(&mut u.buffer);
                    u.buffered = 0;
                    u.send_part(part);
                }
                let result = async {
                    while !u.inflight.is_empty() {
                        u.join_one().await?;
                    }
                    u.done.sort_unstable_by_key(|p| p.0);
                    u.client
                        .complete_multipart(&u.key, &u.id, &u.done)
                        .await
                        .map_err(|e| StoreError::from_s3(&u.name, e))
                }
                .await;
                if result.is_err() {
                    u.inflight.abort_all();
                    let _ = u.client.abort_multipart(&u.key, &u.id).await;
                }
                result
            }
        }
    }

    /// Give the upload up (its parts cost storage on S3).
    pub async fn abort(self) {
        match self {
            Upload::Os { writer, .. } => {
                let _ = writer.abort().await;
            }
            Upload::S3(mut u) => {
                u.inflight.abort_all();
                let _ = u.client.abort_multipart(&u.key, &u.id).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_store_paths_hold_only_what_they_hold_byte_exact() {
        assert_eq!(os_path("s", "a/b.txt").expect("plain").as_ref(), "a/b.txt");
        assert_eq!(
            os_path("s", "with space/ü 100%.txt")
                .expect("odd but fine")
                .as_ref(),
            "with space/ü 100%.txt"
        );
        for (key, why) in [
            ("a//b", "empty segment"),
            ("dir/", "trailing"),
            ("/lead", "leading"),
            ("a/./b", "."),
            ("a/../b", ".."),
            ("", "empty key"),
        ] {
            let e = os_path("local /srv/a", key).expect_err(key);
            let text = e.to_string();
            assert!(
                matches!(e, StoreError::KeyUnsupported { .. }),
                "{key}: {text}"
            );
            assert!(text.contains(&format!("{key:?}")), "{key}: {text}");
            assert!(text.contains(why), "{key}: {text}");
        }
    }
}
