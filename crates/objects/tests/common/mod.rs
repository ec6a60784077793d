//! Test helpers: regions with local-directory stores, an S3 server (s3s-fs) on port 0,
//! a counting store wrapper, polling with a deadline.
#![allow(dead_code, clippy::unwrap_used)]

use futures::stream::BoxStream;
use lifeboat_config::objects::{ObjectsConfig, RuleConfig, StoreConfig, StoreKind};
use lifeboat_core::{Activation, Epoch, FollowTarget, RegionId, SharedRole};
use lifeboat_objects::{ObjectMetrics, Replicator, Store};
use object_store::path::Path as ObjectPath;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub fn config(rules: Vec<RuleConfig>) -> ObjectsConfig {
    ObjectsConfig {
        rules,
        reconcile_interval: Duration::from_millis(400),
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_millis(400),
        part_size_mib: 5,
        ..ObjectsConfig::default()
    }
}

pub fn local_store(dir: &Path) -> Store {
    Store::open(&StoreConfig::local(dir)).expect("local store")
}

/// Poll `f` until it is true; panic with `what` after `secs`.
pub async fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn write(dir: &Path, key: &str, data: &[u8]) {
    let p = dir.join(key);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    // Write then rename, as applications that want atomic files do.
    // The temporary file lives outside the store: inside, it would be an object too.
    let tmp = dir.parent().unwrap().join(format!(
        ".tmp-{}-{}",
        dir.file_name().unwrap().to_string_lossy(),
        key.replace('/', "_")
    ));
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, &p).unwrap();
}

pub fn read(dir: &Path, key: &str) -> Option<Vec<u8>> {
    std::fs::read(dir.join(key)).ok()
}

/// A running replicator of one region.
pub struct Running {
    pub region: RegionId,
    pub role: SharedRole,
    pub metrics: Arc<ObjectMetrics>,
    pub state_dir: PathBuf,
    /// The replicator's journal-worthy events, from its start.
    pub events: tokio::sync::broadcast::Receiver<lifeboat_objects::ObjectEvent>,
    /// The region's S3 gateway (`http://127.0.0.1:PORT`), when started with one.
    pub gateway: Option<String>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    gateway_task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    pub fn start(
        cfg: &ObjectsConfig,
        region: &str,
        state_dir: &Path,
        stores: BTreeMap<String, Store>,
    ) -> Running {
        let region = RegionId::new(region);
        let rep =
            Replicator::open_with_stores(cfg, &region, state_dir, stores).expect("open replicator");
        Self::run(rep, region, state_dir, None)
    }

    /// Like [`Running::start`], with the region's S3 gateway serving `bucket` on a
    /// free port of 127.0.0.1 (key [`S3_KEY_ID`], secret [`S3_SECRET`]).
    pub async fn start_with_gateway(
        cfg: &ObjectsConfig,
        region: &str,
        state_dir: &Path,
        stores: BTreeMap<String, Store>,
        bucket: &str,
    ) -> Running {
        let region = RegionId::new(region);
        let rep =
            Replicator::open_with_stores(cfg, &region, state_dir, stores).expect("open replicator");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let gateway = rep.gateway(bucket);
        let mut running = Self::run(rep, region, state_dir, Some(endpoint));
        let stop = running.cancel.clone();
        running.gateway_task = Some(tokio::spawn(gateway.serve(
            listener,
            vec![(S3_KEY_ID.to_owned(), S3_SECRET.to_owned())],
            stop,
        )));
        running
    }

    fn run(
        rep: Replicator,
        region: RegionId,
        state_dir: &Path,
        gateway: Option<String>,
    ) -> Running {
        let role = rep.role();
        let metrics = rep.metrics();
        let events = rep.events();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(rep.run(cancel.clone()));
        Running {
            region,
            role,
            metrics,
            state_dir: state_dir.to_path_buf(),
            events,
            gateway,
            cancel,
            task: Some(task),
            gateway_task: None,
        }
    }

    pub async fn activate(&self, epoch: u64) {
        self.role
            .activate(&Activation {
                epoch: Epoch(epoch),
                region: self.region.clone(),
                forced: false,
            })
            .await
            .expect("activate");
    }

    pub async fn follow(&self, epoch: u64, active: &str) {
        self.role
            .follow(&FollowTarget {
                epoch: Epoch(epoch),
                active: RegionId::new(active),
            })
            .await
            .expect("follow");
    }

    pub async fn fence(&self, epoch: u64) {
        self.role.fence(Epoch(epoch)).await.expect("fence");
    }

    pub fn db(&self) -> lifeboat_objects::db::Db {
        lifeboat_objects::db::Db::open(&lifeboat_objects::db_path(&self.state_dir)).expect("db")
    }

    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            t.await.expect("join").expect("replicator ran cleanly");
        }
        if let Some(t) = self.gateway_task.take() {
            t.await.expect("join").expect("gateway ran cleanly");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Wraps a store and records what passes through it.
#[derive(Debug, Clone)]
pub struct Counting {
    pub inner: Arc<dyn ObjectStore>,
    /// Largest single buffer handed to the store (a PUT body or one part).
    pub max_buffer: Arc<AtomicU64>,
    /// Objects written (PUTs and completed multipart uploads).
    pub writes: Arc<AtomicU64>,
    /// GET requests (reads, including read-back verification).
    pub reads: Arc<AtomicU64>,
}

impl Counting {
    pub fn wrap(store: Store) -> (Store, Counting) {
        let lifeboat_objects::store::Backend::Os(inner) = &store.backend else {
            panic!("Counting wraps object_store stores; count S3 requests at the S3Server");
        };
        let c = Counting {
            inner: inner.clone(),
            max_buffer: Arc::new(AtomicU64::new(0)),
            writes: Arc::new(AtomicU64::new(0)),
            reads: Arc::new(AtomicU64::new(0)),
        };
        // Without `local`, every write goes through the wrapper (no direct file path).
        let wrapped = Store {
            backend: lifeboat_objects::store::Backend::Os(Arc::new(c.clone())),
            local: None,
            ..store
        };
        (wrapped, c)
    }
    fn saw(&self, n: usize) {
        self.max_buffer.fetch_max(n as u64, Ordering::Relaxed);
    }
}

impl std::fmt::Display for Counting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

#[derive(Debug)]
struct CountingUpload {
    inner: Box<dyn MultipartUpload>,
    owner: Counting,
}

#[async_trait::async_trait]
impl MultipartUpload for CountingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.owner.saw(data.content_length());
        self.inner.put_part(data)
    }
    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.owner.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.complete().await
    }
    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[async_trait::async_trait]
impl ObjectStore for Counting {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.saw(payload.content_length());
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(CountingUpload {
            inner,
            owner: self.clone(),
        }))
    }
    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.inner.delete_stream(locations)
    }
    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// An S3 API server (s3s-fs) serving a temp dir on 127.0.0.1, stopped on drop.
pub struct S3Server {
    pub endpoint: String,
    pub root: PathBuf,
    /// GET requests of an object (not listings, not tags).
    pub object_gets: Arc<AtomicU64>,
    /// The largest request body announced (a PUT or one part), bytes.
    pub max_body: Arc<AtomicU64>,
    cancel: CancellationToken,
}

pub const S3_KEY_ID: &str = "lifeboat-test";
pub const S3_SECRET: &str = "lifeboat-test-secret";

impl S3Server {
    pub async fn start(root: &Path, bucket: &str) -> S3Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, root, bucket)
    }

    /// Serve on a listener the caller bound (to bring a "down" endpoint back).
    pub fn serve(listener: tokio::net::TcpListener, root: &Path, bucket: &str) -> S3Server {
        std::fs::create_dir_all(root.join(bucket)).unwrap();
        let addr = listener.local_addr().unwrap();
        let fs = s3s_fs::FileSystem::new(root).unwrap();
        let mut b = s3s::service::S3ServiceBuilder::new(fs);
        b.set_auth(s3s::auth::SimpleAuth::from_single(S3_KEY_ID, S3_SECRET));
        let s3 = b.build();
        let object_gets = Arc::new(AtomicU64::new(0));
        let max_body = Arc::new(AtomicU64::new(0));
        let (gets, body) = (object_gets.clone(), max_body.clone());
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let query = req.uri().query().unwrap_or_default();
                let object_path = req.uri().path().trim_start_matches('/').contains('/');
                if req.method() == hyper::Method::GET && object_path && !query.contains("tagging") {
                    gets.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(n) = req
                    .headers()
                    .get(hyper::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    body.fetch_max(n, Ordering::Relaxed);
                }
                let s3 = s3.clone();
                async move { hyper::service::Service::call(&s3, req).await }
            });
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            let http =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let conns = tokio_util::task::TaskTracker::new();
            loop {
                let (socket, _) = tokio::select! {
                    () = stop.cancelled() => break,
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                };
                let conn = http
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service.clone())
                    .into_owned();
                let stop = stop.clone();
                conns.spawn(async move {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        _ = conn => {}
                    }
                });
            }
        });
        S3Server {
            endpoint: format!("http://{addr}"),
            root: root.to_path_buf(),
            object_gets,
            max_body,
            cancel,
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// An S3 store config for `endpoint`/`bucket` with credentials in files under `dir`.
pub fn s3_config(endpoint: &str, bucket: &str, dir: &Path, secret: &str) -> StoreConfig {
    std::fs::create_dir_all(dir).unwrap();
    let id = dir.join("key-id");
    let sk = dir.join("secret");
    std::fs::write(&id, S3_KEY_ID).unwrap();
    std::fs::write(&sk, secret).unwrap();
    StoreConfig {
        kind: StoreKind::S3,
        path: None,
        bucket: Some(bucket.to_owned()),
        endpoint: Some(endpoint.to_owned()),
        access_key_id_file: Some(id),
        secret_access_key_file: Some(sk),
        ..StoreConfig::local("/unused")
    }
}

/// The whole content of `key` in `store`, `None` when there is no such object.
pub async fn read_store(store: &Store, key: &str) -> Option<Vec<u8>> {
    use futures::StreamExt as _;
    let got = store.get(key, 1 << 20, false).await.unwrap()?;
    let mut out = Vec::new();
    let mut stream = got.stream;
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    Some(out)
}

pub fn stores(list: Vec<(&str, Store)>) -> BTreeMap<String, Store> {
    list.into_iter().map(|(n, s)| (n.to_owned(), s)).collect()
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

/// SHA-256 of a file, read in 1 MiB pieces.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest as _;
    use std::io::Read as _;
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}
