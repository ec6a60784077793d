//! Building a region's object store from `[objects.stores.REGION]`.
//!
//! Secrets are read here, at open, from their `*_file` / `*_env` source (never from
//! the config text). Remote stores get a short internal retry budget: lifeboat
//! retries transfers itself with backoff, and a down destination must surface as a
//! clear error in seconds rather than hide inside minutes of client retries.

use anyhow::Context as _;
use lifeboat_config::objects::{StoreConfig, StoreKind};
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// One region's store and what lifeboat needs to know about it.
#[derive(Debug, Clone)]
pub struct Store {
    pub inner: Arc<dyn ObjectStore>,
    pub kind: StoreKind,
    /// local: the directory (watched for changes).
    pub local_root: Option<PathBuf>,
    /// local: the store itself, so small objects can be read in one blocking call.
    pub local: Option<Arc<object_store::local::LocalFileSystem>>,
    /// A short description for messages ("local /srv/a", "s3 http://…/bucket").
    pub describe: String,
}

impl Store {
    /// Whether the store keeps object attributes such as content type.
    pub fn keeps_attributes(&self) -> bool {
        !matches!(self.kind, StoreKind::Local)
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
                    inner: fs,
                    kind: StoreKind::Local,
                    describe: format!("local {}", root.display()),
                    local_root: Some(root),
                })
            }
            StoreKind::S3 => {
                let bucket = cfg.bucket.clone().context("an s3 store needs `bucket`")?;
                let key_id = cfg
                    .access_key_id()
                    .load()
                    .context("reading access_key_id")?;
                let secret = cfg
                    .secret_access_key()
                    .load()
                    .context("reading secret_access_key")?;
                let mut b = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(&bucket)
                    .with_region(cfg.region.clone().unwrap_or_else(|| "us-east-1".to_owned()))
                    .with_access_key_id(key_id)
                    .with_secret_access_key(secret)
                    .with_virtual_hosted_style_request(cfg.virtual_hosted_style)
                    .with_retry(retry)
                    .with_client_options(client);
                if let Some(token) = cfg.session_token() {
                    b = b.with_token(token.load().context("reading session_token")?);
                }
                let describe = match &cfg.endpoint {
                    Some(ep) => {
                        b = b
                            .with_endpoint(ep)
                            .with_allow_http(ep.starts_with("http://"));
                        format!("s3 {ep}/{bucket}")
                    }
                    None => format!("s3 s3://{bucket}"),
                };
                let s3 = b
                    .build()
                    .with_context(|| format!("configuring {describe}"))?;
                Ok(Store {
                    inner: Arc::new(s3),
                    kind: StoreKind::S3,
                    local_root: None,
                    local: None,
                    describe,
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
                Ok(Store {
                    inner: Arc::new(gcs),
                    kind: StoreKind::Gcs,
                    local_root: None,
                    local: None,
                    describe,
                })
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
                Ok(Store {
                    inner: Arc::new(az),
                    kind: StoreKind::Azure,
                    local_root: None,
                    local: None,
                    describe,
                })
            }
        }
    }
}
