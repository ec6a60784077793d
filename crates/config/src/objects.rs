//! `[objects]`: object replication between the regions' stores (S3 CRR semantics).
//!
//! Each region names its store (`[objects.stores.NAME]`: a local directory, an
//! S3-compatible bucket, a GCS bucket or an Azure container). The replicator of the
//! active region pushes new, changed and (when the rule says so) deleted objects to
//! every other region's store. Rules choose what is replicated by key prefix.
//!
//! ```toml
//! [objects]
//! reconcile_interval = "30s"   # full listing behind the change feed
//! latency_alert = "1m"         # journal an alert when an object takes longer
//!
//! [objects.stores.a]
//! type = "local"
//! path = "/var/lib/shop/objects-a"
//!
//! [objects.stores.b]
//! type = "s3"
//! endpoint = "http://127.0.0.1:9000"   # absent: AWS
//! bucket = "shop-b"
//! region = "us-east-1"
//! access_key_id_env = "B_ACCESS_KEY_ID"
//! secret_access_key_file = "/etc/lifeboat/b.secret"
//!
//! [[objects.rules]]
//! prefix = "messages/"
//! delete_replication = true            # default false, as in S3
//! backfill = true                      # replicate objects that existed before
//!
//! [[objects.lifecycle]]                 # expiry, for cost, in the store it names only
//! store = "b"
//! prefix = "logs/"
//! expire_after_days = 30
//!
//! [objects.gateway]                    # a regional S3 endpoint in front of each store
//! bucket = "objects"                   # the bucket name applications use
//! listen = { a = "0.0.0.0:9000", b = "0.0.0.0:9000" }
//! [[objects.gateway.access_keys]]      # what the SDKs sign with (SigV4)
//! id = "AKIDLIFEBOATOBJECTS"
//! secret_file = "/etc/lifeboat/objects-gateway.secret"
//! ```
//!
//! Guarantees: secrets are never inline (`*_file` / `*_env`), every store belongs to a
//! defined region, at least two regions have a store, and each problem is reported at
//! its key.

use crate::tables::AccessKeyConfig;
use crate::{SecretRef, duration};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ObjectsConfig {
    /// One store per region (`[objects.stores.REGION]`).
    #[serde(default)]
    pub stores: BTreeMap<String, StoreConfig>,
    /// What to replicate. No rule: everything, with the defaults of [`RuleConfig`].
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// How often the whole source store is listed and compared (behind the change
    /// feed, and the only change source for remote stores). Also checks destinations.
    #[serde(
        default = "default_reconcile_interval",
        deserialize_with = "duration::de",
        serialize_with = "duration::ser"
    )]
    pub reconcile_interval: Duration,
    /// An object whose replication takes longer than this journals an alert.
    #[serde(
        default = "default_latency_alert",
        deserialize_with = "duration::de",
        serialize_with = "duration::ser"
    )]
    pub latency_alert: Duration,
    /// Transfers in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Objects larger than this are sent as multipart uploads of this part size
    /// (MiB; S3 needs at least 5).
    #[serde(default = "default_part_size_mib")]
    pub part_size_mib: u64,
    /// Read each copy back and compare its checksum with the source's.
    #[serde(default = "default_true")]
    pub verify: bool,
    /// First retry delay after a failed transfer; doubles up to `retry_max`.
    #[serde(
        default = "default_retry_initial",
        deserialize_with = "duration::de",
        serialize_with = "duration::ser"
    )]
    pub retry_initial: Duration,
    #[serde(
        default = "default_retry_max",
        deserialize_with = "duration::de",
        serialize_with = "duration::ser"
    )]
    pub retry_max: Duration,
    /// Attempts that end in a non-transient error (checksum mismatch, refused write)
    /// before an object is marked FAILED. Access denied is FAILED at once; an
    /// unreachable destination stays PENDING and is retried for ever.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// `[objects.gateway]`: each region's S3 endpoint (writes refused unless active).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayConfig>,
    /// `[[objects.lifecycle]]`: expiry rules, each for one region's store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lifecycle: Vec<LifecycleRule>,
}

/// `[[objects.lifecycle]]`: what to expire in one region's store, for cost (S3
/// lifecycle's job): applied by the store's own lifecycle API where it has one (S3)
/// and by lifeboat otherwise. It acts on the store it names, never on another, and
/// what it expires is not replicated as a delete.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LifecycleRule {
    /// The region whose store the rule applies to.
    pub store: String,
    /// Keys starting with this ("" = every key).
    #[serde(default)]
    pub prefix: String,
    /// Delete objects last modified more than this many days ago.
    #[serde(default)]
    pub expire_after_days: Option<u32>,
    /// Versioned S3 buckets: delete versions this many days after they stopped being
    /// current.
    #[serde(default)]
    pub noncurrent_expire_after_days: Option<u32>,
    /// S3: abort multipart uploads left incomplete this many days.
    #[serde(default)]
    pub abort_incomplete_multipart_after_days: Option<u32>,
}

impl LifecycleRule {
    fn validate(&self, at: &str, objects: &ObjectsConfig, v: &mut crate::Validator<'_>) {
        let Some(store) = objects.stores.get(&self.store) else {
            v.error(
                &format!("{at}.store"),
                format!(
                    "region {:?} has no object store ([objects.stores.{}])",
                    self.store, self.store
                ),
            );
            return;
        };
        if self.expire_after_days.is_none()
            && self.noncurrent_expire_after_days.is_none()
            && self.abort_incomplete_multipart_after_days.is_none()
        {
            v.error(
                at,
                "a lifecycle rule needs an action: expire_after_days, noncurrent_expire_after_days or abort_incomplete_multipart_after_days",
            );
        }
        for (field, days) in [
            ("expire_after_days", self.expire_after_days),
            (
                "noncurrent_expire_after_days",
                self.noncurrent_expire_after_days,
            ),
            (
                "abort_incomplete_multipart_after_days",
                self.abort_incomplete_multipart_after_days,
            ),
        ] {
            if days == Some(0) {
                v.error(&format!("{at}.{field}"), "must be at least 1 day");
            }
        }
        if store.kind != StoreKind::S3 {
            for (field, set) in [
                (
                    "noncurrent_expire_after_days",
                    self.noncurrent_expire_after_days.is_some(),
                ),
                (
                    "abort_incomplete_multipart_after_days",
                    self.abort_incomplete_multipart_after_days.is_some(),
                ),
            ] {
                if set {
                    v.error(
                        &format!("{at}.{field}"),
                        format!(
                            "applies to S3-API stores only; region {}'s store is not one",
                            self.store
                        ),
                    );
                }
            }
        }
    }
}

/// `[objects.gateway]`: an S3-API endpoint per region in front of its store. Writes
/// through it are recorded at once (no listing) and refused while the region is not
/// the active one (docs/architecture.md, rule 2).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The one bucket the gateway serves: the region's store.
    #[serde(default = "default_gateway_bucket")]
    pub bucket: String,
    /// Where each region's gateway listens (regions left out run none).
    #[serde(default)]
    pub listen: BTreeMap<String, SocketAddr>,
    /// The keys requests are signed with (SigV4).
    #[serde(default)]
    pub access_keys: Vec<AccessKeyConfig>,
}

fn default_gateway_bucket() -> String {
    "objects".to_owned()
}

impl GatewayConfig {
    fn validate(&self, objects: &ObjectsConfig, v: &mut crate::Validator<'_>) {
        let b = &self.bucket;
        let ok_chars = b
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
        let ends_ok = b.starts_with(|c: char| c.is_ascii_alphanumeric())
            && b.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !(3..=63).contains(&b.len()) || !ok_chars || !ends_ok {
            v.error(
                "objects.gateway.bucket",
                format!("{b:?} is not an S3 bucket name (3-63 lower-case letters, digits, '-' and '.', starting and ending with a letter or digit)"),
            );
        }
        if self.listen.is_empty() {
            v.error(
                "objects.gateway.listen",
                "no region runs a gateway: add listen = { REGION = \"host:port\" }",
            );
        }
        for region in self.listen.keys() {
            if !objects.stores.contains_key(region) {
                v.error(
                    &format!("objects.gateway.listen.{region}"),
                    format!("region {region} has no object store ([objects.stores.{region}]) for its gateway to serve"),
                );
            }
        }
        crate::tables::validate_access_keys(
            "objects.gateway.access_keys",
            &self.access_keys,
            "the gateway needs at least one access key ([[objects.gateway.access_keys]] with id and secret_file or secret_env): every request is signed",
            v,
        );
    }
}

impl Default for ObjectsConfig {
    fn default() -> Self {
        Self {
            stores: BTreeMap::new(),
            rules: Vec::new(),
            reconcile_interval: default_reconcile_interval(),
            latency_alert: default_latency_alert(),
            concurrency: default_concurrency(),
            part_size_mib: default_part_size_mib(),
            verify: true,
            retry_initial: default_retry_initial(),
            retry_max: default_retry_max(),
            max_attempts: default_max_attempts(),
            gateway: None,
            lifecycle: Vec::new(),
        }
    }
}

fn default_reconcile_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_latency_alert() -> Duration {
    Duration::from_secs(60)
}
fn default_concurrency() -> usize {
    16
}
fn default_part_size_mib() -> u64 {
    8
}
fn default_true() -> bool {
    true
}
fn default_retry_initial() -> Duration {
    Duration::from_secs(1)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(60)
}
fn default_max_attempts() -> u32 {
    10
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// A directory on this machine (the embedded default).
    Local,
    /// Amazon S3 or any S3-compatible server.
    S3,
    /// Google Cloud Storage.
    Gcs,
    /// Azure Blob Storage.
    Azure,
}

/// One region's object store. Which fields apply depends on `type`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(rename = "type")]
    pub kind: StoreKind,
    /// local: the directory (created when missing).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// s3 / gcs: the bucket.
    #[serde(default)]
    pub bucket: Option<String>,
    /// s3: the signing region (default "us-east-1").
    #[serde(default)]
    pub region: Option<String>,
    /// s3 / azure: a server other than the cloud's own, e.g. "http://127.0.0.1:9000".
    /// `http://` endpoints are allowed (local servers).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// s3: path-style requests (`endpoint/bucket/key`) unless this is true.
    #[serde(default)]
    pub virtual_hosted_style: bool,
    /// s3: access key id (never inline).
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub access_key_id_file: Option<PathBuf>,
    #[serde(default)]
    pub access_key_id_env: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    #[serde(default)]
    pub secret_access_key_env: Option<String>,
    /// s3: optional session token.
    #[serde(default)]
    pub session_token_file: Option<PathBuf>,
    #[serde(default)]
    pub session_token_env: Option<String>,
    /// gcs: a service-account JSON key file (absent: the machine's default credentials).
    #[serde(default)]
    pub service_account_file: Option<PathBuf>,
    /// azure: the storage account and container.
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub container: Option<String>,
    #[serde(default)]
    pub access_key: Option<String>,
    #[serde(default)]
    pub access_key_file: Option<PathBuf>,
    #[serde(default)]
    pub access_key_env: Option<String>,
    /// azure: talk to the Azurite emulator.
    #[serde(default)]
    pub use_emulator: bool,
}

impl StoreConfig {
    /// A local-directory store (tests and the demo build these).
    pub fn local(path: impl Into<PathBuf>) -> Self {
        Self {
            kind: StoreKind::Local,
            path: Some(path.into()),
            bucket: None,
            region: None,
            endpoint: None,
            virtual_hosted_style: false,
            access_key_id: None,
            access_key_id_file: None,
            access_key_id_env: None,
            secret_access_key: None,
            secret_access_key_file: None,
            secret_access_key_env: None,
            session_token_file: None,
            session_token_env: None,
            service_account_file: None,
            account: None,
            container: None,
            access_key: None,
            access_key_file: None,
            access_key_env: None,
            use_emulator: false,
        }
    }

    /// s3: the access key id's source.
    pub fn access_key_id(&self) -> SecretRef {
        SecretRef {
            file: self.access_key_id_file.clone(),
            env: self.access_key_id_env.clone(),
        }
    }
    /// s3: the secret access key's source.
    pub fn secret_access_key(&self) -> SecretRef {
        SecretRef {
            file: self.secret_access_key_file.clone(),
            env: self.secret_access_key_env.clone(),
        }
    }
    /// s3: the session token's source, when one is configured.
    pub fn session_token(&self) -> Option<SecretRef> {
        (self.session_token_file.is_some() || self.session_token_env.is_some()).then(|| SecretRef {
            file: self.session_token_file.clone(),
            env: self.session_token_env.clone(),
        })
    }
    /// azure: the account key's source, when one is configured.
    pub fn access_key(&self) -> Option<SecretRef> {
        (self.access_key_file.is_some() || self.access_key_env.is_some()).then(|| SecretRef {
            file: self.access_key_file.clone(),
            env: self.access_key_env.clone(),
        })
    }
}

/// A replication rule. The first rule whose prefix matches a key decides for it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Keys starting with this string are replicated ("" = every key).
    #[serde(default)]
    pub prefix: String,
    /// Replicate deletions too. Off by default, as in S3.
    #[serde(default)]
    pub delete_replication: bool,
    /// Replicate objects that existed before replication started (S3 Batch
    /// Replication's job). On by default: a standby region needs everything.
    #[serde(default = "default_true")]
    pub backfill: bool,
}

impl Default for RuleConfig {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            delete_replication: false,
            backfill: true,
        }
    }
}

impl ObjectsConfig {
    /// The rules in force: the configured ones, or one rule for every key.
    pub fn effective_rules(&self) -> Vec<RuleConfig> {
        if self.rules.is_empty() {
            vec![RuleConfig::default()]
        } else {
            self.rules.clone()
        }
    }

    pub(crate) fn validate(&self, cfg: &crate::Config, v: &mut crate::Validator<'_>) {
        if let Some(g) = &self.gateway {
            g.validate(self, v);
        }
        for (i, rule) in self.lifecycle.iter().enumerate() {
            rule.validate(&format!("objects.lifecycle[{i}]"), self, v);
        }
        if self.stores.len() < 2 {
            v.error(
                "objects.stores",
                "object replication needs a store in at least two regions ([objects.stores.REGION])",
            );
        }
        for (region, store) in &self.stores {
            let at = format!("objects.stores.{region}");
            if !cfg.regions.contains_key(region) {
                v.error(&at, cfg.undefined_region(region));
            }
            store.validate(&at, v);
        }
        let mut prefixes = std::collections::BTreeSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("objects.rules[{i}].prefix");
            if rule.prefix.starts_with('/') {
                v.error(&at, "a prefix is a key prefix and never starts with '/'");
            } else if rule.prefix.split('/').any(|seg| seg == "." || seg == "..") {
                v.error(&at, "a prefix must not contain \".\" or \"..\" segments");
            }
            if !prefixes.insert(rule.prefix.clone()) {
                v.error(
                    &at,
                    format!("another rule already has prefix {:?}", rule.prefix),
                );
            }
        }
        if self.concurrency == 0 || self.concurrency > 1024 {
            v.error(
                "objects.concurrency",
                "concurrency must be between 1 and 1024",
            );
        }
        if !(5..=5 * 1024).contains(&self.part_size_mib) {
            v.error(
                "objects.part_size_mib",
                "part_size_mib must be between 5 (S3's smallest part) and 5120",
            );
        }
        if self.reconcile_interval < Duration::from_millis(100) {
            v.error(
                "objects.reconcile_interval",
                "reconcile_interval must be at least 100ms",
            );
        }
        if self.latency_alert.is_zero() {
            v.error(
                "objects.latency_alert",
                "latency_alert must be more than zero",
            );
        }
        if self.retry_initial.is_zero() {
            v.error(
                "objects.retry_initial",
                "retry_initial must be more than zero",
            );
        }
        if self.retry_max < self.retry_initial {
            v.error(
                "objects.retry_max",
                "retry_max must not be less than retry_initial",
            );
        }
        if self.max_attempts == 0 {
            v.error("objects.max_attempts", "max_attempts must be at least 1");
        }
    }
}

impl StoreConfig {
    fn validate(&self, at: &str, v: &mut crate::Validator<'_>) {
        let kind = match self.kind {
            StoreKind::Local => "local",
            StoreKind::S3 => "s3",
            StoreKind::Gcs => "gcs",
            StoreKind::Azure => "azure",
        };
        let needs = |field: &str, present: bool, v: &mut crate::Validator<'_>| {
            if !present {
                v.error(at, format!("a {kind} store needs `{field}`"));
            }
        };
        // Fields that belong to another kind of store are mistakes, not noise.
        let foreign = |field: &str, present: bool, v: &mut crate::Validator<'_>| {
            if present {
                v.error(
                    &format!("{at}.{field}"),
                    format!("`{field}` does not apply to a {kind} store"),
                );
            }
        };
        let s3_fields = [
            ("region", self.region.is_some()),
            ("virtual_hosted_style", self.virtual_hosted_style),
            ("access_key_id_file", self.access_key_id_file.is_some()),
            ("access_key_id_env", self.access_key_id_env.is_some()),
            (
                "secret_access_key_file",
                self.secret_access_key_file.is_some(),
            ),
            (
                "secret_access_key_env",
                self.secret_access_key_env.is_some(),
            ),
            ("session_token_file", self.session_token_file.is_some()),
            ("session_token_env", self.session_token_env.is_some()),
        ];
        let azure_fields = [
            ("account", self.account.is_some()),
            ("container", self.container.is_some()),
            ("access_key_file", self.access_key_file.is_some()),
            ("access_key_env", self.access_key_env.is_some()),
            ("use_emulator", self.use_emulator),
        ];
        for (name, inline) in [
            ("access_key_id", self.access_key_id.is_some()),
            ("secret_access_key", self.secret_access_key.is_some()),
            ("access_key", self.access_key.is_some()),
        ] {
            if inline {
                v.error(
                    &format!("{at}.{name}"),
                    format!("credentials are never written in the config: use `{name}_file` or `{name}_env`"),
                );
            }
        }
        match self.kind {
            StoreKind::Local => {
                needs("path", self.path.is_some(), v);
                for (f, present) in [
                    ("bucket", self.bucket.is_some()),
                    ("endpoint", self.endpoint.is_some()),
                    ("service_account_file", self.service_account_file.is_some()),
                ]
                .into_iter()
                .chain(s3_fields)
                .chain(azure_fields)
                {
                    foreign(f, present, v);
                }
            }
            StoreKind::S3 => {
                needs("bucket", self.bucket.is_some(), v);
                foreign("path", self.path.is_some(), v);
                foreign(
                    "service_account_file",
                    self.service_account_file.is_some(),
                    v,
                );
                for (f, present) in azure_fields {
                    foreign(f, present, v);
                }
                if self.access_key_id.is_none() && self.secret_access_key.is_none() {
                    pair(
                        v,
                        at,
                        "access_key_id",
                        &self.access_key_id_file,
                        &self.access_key_id_env,
                    );
                    pair(
                        v,
                        at,
                        "secret_access_key",
                        &self.secret_access_key_file,
                        &self.secret_access_key_env,
                    );
                }
                crate::secret::check_file_or_env(
                    v,
                    at,
                    "session_token",
                    self.session_token_file.is_some(),
                    self.session_token_env.is_some(),
                    false,
                );
                self.validate_endpoint(at, v);
            }
            StoreKind::Gcs => {
                needs("bucket", self.bucket.is_some(), v);
                foreign("path", self.path.is_some(), v);
                foreign("endpoint", self.endpoint.is_some(), v);
                for (f, present) in s3_fields.into_iter().chain(azure_fields) {
                    foreign(f, present, v);
                }
            }
            StoreKind::Azure => {
                needs("account", self.account.is_some(), v);
                needs("container", self.container.is_some(), v);
                foreign("path", self.path.is_some(), v);
                foreign("bucket", self.bucket.is_some(), v);
                foreign(
                    "service_account_file",
                    self.service_account_file.is_some(),
                    v,
                );
                for (f, present) in s3_fields {
                    foreign(f, present, v);
                }
                if self.access_key.is_none() && !self.use_emulator {
                    pair(
                        v,
                        at,
                        "access_key",
                        &self.access_key_file,
                        &self.access_key_env,
                    );
                }
                self.validate_endpoint(at, v);
            }
        }
    }

    fn validate_endpoint(&self, at: &str, v: &mut crate::Validator<'_>) {
        if let Some(ep) = &self.endpoint
            && !(ep.starts_with("http://") || ep.starts_with("https://"))
        {
            v.error(
                &format!("{at}.endpoint"),
                format!("endpoint {ep:?} must start with http:// or https://"),
            );
        }
    }
}

/// `NAME_file` xor `NAME_env`.
fn pair(
    v: &mut crate::Validator<'_>,
    at: &str,
    name: &str,
    file: &Option<PathBuf>,
    env: &Option<String>,
) {
    crate::secret::check_file_or_env(v, at, name, file.is_some(), env.is_some(), true);
}

#[cfg(test)]
mod tests {
    use crate::Config;
    use std::path::Path;

    const EXAMPLE: &str = include_str!("../../../examples/two-regions.toml");

    const OBJECTS: &str = r#"
[objects]
reconcile_interval = "10s"
latency_alert = "30s"

[objects.stores.a]
type = "local"
path = "/tmp/objects-a"

[objects.stores.b]
type = "s3"
endpoint = "http://127.0.0.1:9000"
bucket = "shop-b"
access_key_id_env = "B_KEY_ID"
secret_access_key_file = "/etc/lifeboat/b.secret"

[[objects.rules]]
prefix = "messages/"
delete_replication = true

[[objects.rules]]
prefix = "uploads/"
backfill = false
"#;

    fn parse(text: &str) -> Result<Config, crate::ConfigErrors> {
        Config::parse(Path::new("test.toml"), text)
    }

    fn only_error(text: &str) -> crate::ConfigError {
        let errs = parse(text).expect_err("config should be rejected").0;
        assert_eq!(errs.len(), 1, "expected one error, got {errs:?}");
        errs.into_iter().next().expect("one error")
    }

    fn line_of(text: &str, needle: &str) -> usize {
        text.lines()
            .position(|l| l.trim() == needle)
            .expect("line present")
            + 1
    }

    #[test]
    fn the_objects_section_written_back_reads_as_the_same_config() {
        crate::tests::assert_round_trip(&format!("{EXAMPLE}{OBJECTS}"));
    }

    #[test]
    fn objects_section_parses_with_defaults() {
        let cfg = parse(&format!("{EXAMPLE}{OBJECTS}")).expect("valid");
        let o = cfg.objects.expect("objects section");
        assert_eq!(o.stores.len(), 2);
        assert_eq!(o.rules.len(), 2);
        assert!(o.rules[0].delete_replication);
        assert!(o.rules[0].backfill);
        assert!(
            !o.rules[1].delete_replication,
            "delete replication is off by default"
        );
        assert!(!o.rules[1].backfill);
        assert_eq!(o.reconcile_interval, std::time::Duration::from_secs(10));
        assert_eq!(o.concurrency, 16);
        assert!(o.verify);
    }

    #[test]
    fn inline_secret_is_rejected_at_its_key() {
        let text = format!("{EXAMPLE}{OBJECTS}").replace(
            "access_key_id_env = \"B_KEY_ID\"",
            "access_key_id = \"AKIA123\"",
        );
        let errs = parse(&text).expect_err("rejected").0;
        let e = errs
            .iter()
            .find(|e| e.key == "objects.stores.b.access_key_id")
            .expect("error at the inline key");
        assert_eq!(e.line, line_of(&text, "access_key_id = \"AKIA123\""), "{e}");
        assert!(e.message.contains("never written in the config"), "{e}");
    }

    #[test]
    fn bad_rule_prefix_is_located() {
        let text =
            format!("{EXAMPLE}{OBJECTS}").replace("prefix = \"uploads/\"", "prefix = \"/uploads\"");
        let e = only_error(&text);
        assert_eq!(e.key, "objects.rules[1].prefix");
        assert_eq!(e.line, line_of(&text, "prefix = \"/uploads\""), "{e}");
    }

    #[test]
    fn store_of_unknown_region_and_missing_bucket() {
        let text = format!("{EXAMPLE}{OBJECTS}")
            .replace("[objects.stores.b]", "[objects.stores.c]")
            .replace("bucket = \"shop-b\"\n", "");
        let errs = parse(&text).expect_err("rejected").0;
        assert!(
            errs.iter()
                .any(|e| e.key == "objects.stores.c" && e.message.contains("\"c\" is not defined")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.key == "objects.stores.c" && e.message.contains("needs `bucket`")),
            "{errs:?}"
        );
    }

    #[test]
    fn foreign_field_is_rejected() {
        let text = format!("{EXAMPLE}{OBJECTS}").replace(
            "path = \"/tmp/objects-a\"",
            "path = \"/tmp/objects-a\"\nbucket = \"x\"",
        );
        let e = only_error(&text);
        assert_eq!(e.key, "objects.stores.a.bucket");
        assert!(e.message.contains("does not apply to a local store"), "{e}");
    }
}
