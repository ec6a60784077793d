//! The controller's state in etcd (`[controller] store = "etcd"`, feature `etcd`).
//!
//! Keys, all under the deployment's prefix `P`:
//! - `P/leader`: the leading controller (`{"name", "api_url"}`), attached to its etcd
//!   lease: it disappears when that lease expires or is revoked.
//! - `P/state`: the durable state ([`Durable`], versioned like SQLite's row).
//! - `P/journal/<seq, 20 digits>`: one journal entry each, in one order.
//! - `P/routing`: the leader's live routing table, which the followers serve (DNS,
//!   `/v1/routing`, `/v1/status`).
//!
//! Guarantees:
//! - Every write of an [`EtcdStore`] is one transaction that compares the leader
//!   key's lease with the term's own: a controller that no longer leads writes
//!   nothing. Every state write also compares `P/state`'s mod revision with the one
//!   this term last read or wrote, so of two controllers that both believe they
//!   lead, at most one changes the epoch: two can never both promote.
//! - A write refused, or whose outcome is unknown (a timeout), ends the term
//!   ([`EtcdStore::lost`]): the next term starts from what etcd has.

use crate::machine::Durable;
use crate::store::{FORMAT_VERSION, StateStore, Versioned, decode, unix_ms};
use anyhow::{Context, Result};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp,
};
use lifeboat_config::etcd::EtcdConfig;
use lifeboat_core::{Epoch, JournalEntry, JournalKind, RegionId, RoutingTable};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Bounds every etcd request of a term: a controller cut off from etcd finds out
/// within it and steps down rather than act on state it cannot write.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum EtcdStoreError {
    /// A write guarded by the leader key was refused: another controller leads,
    /// this one's etcd lease expired, or (a state write) the state changed since
    /// this term last read or wrote it.
    #[error(
        "etcd refused the write: this controller no longer leads, or the state changed under it ({0})"
    )]
    NotLeader(String),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
}

/// The keys of one deployment.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }
    /// Every key of the deployment starts with it.
    pub fn prefix(&self) -> String {
        format!("{}/", self.prefix)
    }
    pub fn leader(&self) -> String {
        format!("{}/leader", self.prefix)
    }
    pub fn state(&self) -> String {
        format!("{}/state", self.prefix)
    }
    pub fn routing(&self) -> String {
        format!("{}/routing", self.prefix)
    }
    pub fn journal_prefix(&self) -> String {
        format!("{}/journal/", self.prefix)
    }
    pub fn journal(&self, seq: u64) -> String {
        format!("{}{seq:020}", self.journal_prefix())
    }
}

/// The value of the leader key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    pub name: String,
    pub api_url: String,
}

/// Connect to the etcd members of `cfg` (user, password and TLS as configured).
pub async fn connect(cfg: &EtcdConfig) -> Result<Client> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(1), REQUEST_TIMEOUT)
        .with_keep_alive_while_idle(true);
    if let Some(user) = &cfg.user {
        let password = cfg
            .password()
            .load()
            .context("reading the etcd password (controller.etcd.password_file / password_env)")?;
        opts = opts.with_user(user.clone(), password);
    }
    if cfg.tls() {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca)
                .with_context(|| format!("reading controller.etcd.ca_file {}", ca.display()))?;
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
            let cert = std::fs::read(cert)
                .with_context(|| format!("reading controller.etcd.cert_file {}", cert.display()))?;
            let key = std::fs::read(key)
                .with_context(|| format!("reading controller.etcd.key_file {}", key.display()))?;
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        opts = opts.with_tls(tls);
    }
    // etcd-client connects lazily to a balanced channel: a member that is down now
    // is tried again later, so one dead member does not stop a controller starting.
    let client = tokio::time::timeout(
        REQUEST_TIMEOUT * 5,
        Client::connect(cfg.endpoints.clone(), Some(opts)),
    )
    .await
    .map_err(|_| EtcdStoreError::Timeout(REQUEST_TIMEOUT * 5))
    .and_then(|r| r.map_err(EtcdStoreError::from))
    .with_context(|| format!("connecting to etcd at {}", cfg.endpoints.join(", ")))?;
    Ok(client)
}

/// One etcd request, bounded by [`REQUEST_TIMEOUT`].
pub async fn bounded<T>(
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdStoreError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => r.map_err(EtcdStoreError::from),
        Err(_) => Err(EtcdStoreError::Timeout(REQUEST_TIMEOUT)),
    }
}

/// The request never left: no connection to the member the client's balancer
/// picked (etcd-client keeps a dead member in its balanced channel and picks it
/// at random). Sending it again, to whichever member comes next, is safe.
fn never_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(s) => s.message().contains("connect error"),
        _ => false,
    }
}

/// [`bounded`], sending again (within the same [`REQUEST_TIMEOUT`]) while the
/// request never left ([`never_sent`]): one dead member must not fail a request
/// the live ones would answer.
pub async fn retried<T, F, Fut>(mut f: F) -> Result<T, EtcdStoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, f()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if never_sent(&e) => {
                if tokio::time::Instant::now() + Duration::from_millis(20) >= deadline {
                    return Err(e.into());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(EtcdStoreError::Timeout(REQUEST_TIMEOUT)),
        }
    }
}

/// A transaction, [`retried`].
pub async fn txn(client: &Client, t: Txn) -> Result<etcd_client::TxnResponse, EtcdStoreError> {
    retried(|| {
        let mut kv = client.kv_client();
        let t = t.clone();
        async move { kv.txn(t).await }
    })
    .await
}

/// A read, [`retried`].
pub async fn get(
    client: &Client,
    key: String,
    opts: Option<GetOptions>,
) -> Result<etcd_client::GetResponse, EtcdStoreError> {
    retried(|| {
        let mut kv = client.kv_client();
        let (key, opts) = (key.clone(), opts.clone());
        async move { kv.get(key, opts).await }
    })
    .await
}

/// What a follower (or anyone) reads: the state, the routing table and the leader.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub state: Option<Durable>,
    pub routing: Option<RoutingTable>,
    pub leader: Option<LeaderRecord>,
}

/// Read the state, the routing table and the leader in one transaction (one
/// revision: a consistent view).
pub async fn snapshot(client: &Client, keys: &Keys) -> Result<Snapshot, EtcdStoreError> {
    let t = Txn::new().and_then(vec![
        TxnOp::get(keys.state(), None),
        TxnOp::get(keys.routing(), None),
        TxnOp::get(keys.leader(), None),
    ]);
    let resp = txn(client, t).await?;
    let mut out = Snapshot::default();
    for (i, op) in resp.op_responses().into_iter().enumerate() {
        let etcd_client::TxnOpResponse::Get(g) = op else {
            continue;
        };
        let Some(kv) = g.kvs().first() else { continue };
        let body = kv.value();
        match i {
            0 => {
                out.state = std::str::from_utf8(body)
                    .ok()
                    .and_then(|b| decode(b, Path::new(&keys.state())).ok());
            }
            1 => out.routing = serde_json::from_slice(body).ok(),
            _ => out.leader = serde_json::from_slice(body).ok(),
        }
    }
    Ok(out)
}

/// Journal entries with `seq > since`, oldest first, at most `limit` (any controller).
pub async fn read_journal(
    client: &Client,
    keys: &Keys,
    since: u64,
    limit: usize,
) -> Result<Vec<JournalEntry>, EtcdStoreError> {
    let from = keys.journal(since.saturating_add(1));
    // The range [from, prefix + one past '/') holds every later entry.
    let mut end = keys.journal_prefix().into_bytes();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let opts = GetOptions::new()
        .with_range(end)
        .with_limit(i64::try_from(limit).unwrap_or(i64::MAX))
        .with_sort(SortTarget::Key, SortOrder::Ascend);
    let resp = get(client, from, Some(opts)).await?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice::<JournalEntry>(kv.value()).ok())
        .collect())
}

/// The store of one leadership term: it writes only while `lease` holds the
/// leader key.
pub struct EtcdStore {
    client: Client,
    keys: Keys,
    lease: i64,
    /// `P/state`'s mod revision as this term last read or wrote it (0: absent).
    state_rev: Mutex<i64>,
    next_seq: Mutex<u64>,
    lost: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EtcdStore {
    /// The store of a term that holds the leader key with `lease`. Reads the last
    /// journal entry's sequence number so the journal goes on in one order.
    pub async fn for_term(client: Client, keys: Keys, lease: i64) -> Result<Self> {
        let opts = GetOptions::new()
            .with_prefix()
            .with_limit(1)
            .with_sort(SortTarget::Key, SortOrder::Descend);
        let resp = get(&client, keys.journal_prefix(), Some(opts))
            .await
            .context("reading the journal's last entry from etcd")?;
        let last = resp
            .kvs()
            .first()
            .and_then(|kv| kv.key_str().ok())
            .and_then(|k| k.rsplit('/').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        Ok(Self {
            client,
            keys,
            lease,
            state_rev: Mutex::new(0),
            next_seq: Mutex::new(last + 1),
            lost: CancellationToken::new(),
        })
    }

    /// Cancelled when a write was refused or its outcome is unknown: the term must end.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    fn leads(&self) -> Compare {
        Compare::lease(self.keys.leader(), CompareOp::Equal, self.lease)
    }

    /// A guarded transaction; any failure ends the term.
    async fn guarded(&self, t: Txn, what: &str) -> Result<etcd_client::TxnResponse> {
        match txn(&self.client, t).await {
            Ok(r) if r.succeeded() => Ok(r),
            Ok(_) => {
                self.lost.cancel();
                Err(EtcdStoreError::NotLeader(what.to_owned()).into())
            }
            Err(e) => {
                self.lost.cancel();
                Err(anyhow::Error::from(e).context(format!("{what} (outcome unknown)")))
            }
        }
    }

    /// Publish the routing table for the followers (only while leading).
    pub async fn put_routing(&self, rt: &RoutingTable) -> Result<()> {
        let body = serde_json::to_vec(rt)?;
        let txn = Txn::new()
            .when(vec![self.leads()])
            .and_then(vec![TxnOp::put(self.keys.routing(), body, None)]);
        self.guarded(txn, "publishing the routing table").await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl StateStore for EtcdStore {
    fn describe(&self) -> String {
        format!("etcd key {}", self.keys.state())
    }

    async fn load(&self) -> Result<Option<Durable>> {
        let resp = get(&self.client, self.keys.state(), None)
            .await
            .context("reading the controller state from etcd")?;
        let Some(kv) = resp.kvs().first() else {
            *lock(&self.state_rev) = 0;
            return Ok(None);
        };
        let body = kv
            .value_str()
            .with_context(|| format!("{} is not UTF-8", self.keys.state()))?;
        let state = decode(body, Path::new(&self.keys.state()))?;
        *lock(&self.state_rev) = kv.mod_revision();
        Ok(Some(state))
    }

    async fn save(&self, state: &Durable) -> Result<()> {
        let body = serde_json::to_vec(&Versioned {
            version: FORMAT_VERSION,
            state: state.clone(),
        })?;
        let rev = *lock(&self.state_rev);
        let txn = Txn::new()
            .when(vec![
                self.leads(),
                Compare::mod_revision(self.keys.state(), CompareOp::Equal, rev),
            ])
            .and_then(vec![TxnOp::put(self.keys.state(), body, None)]);
        let resp = self
            .guarded(txn, &format!("writing epoch {}", state.epoch))
            .await?;
        let new_rev = resp.header().map_or(0, |h| h.revision());
        *lock(&self.state_rev) = new_rev;
        Ok(())
    }

    async fn append(
        &self,
        mono_ms: u64,
        epoch: Epoch,
        kind: JournalKind,
        region: Option<&RegionId>,
        detail: &str,
    ) -> Result<JournalEntry> {
        let seq = *lock(&self.next_seq);
        let entry = JournalEntry {
            seq,
            at_unix_ms: unix_ms(),
            mono_ms,
            epoch,
            kind,
            region: region.cloned(),
            detail: detail.to_owned(),
        };
        let key = self.keys.journal(seq);
        let txn = Txn::new()
            .when(vec![
                self.leads(),
                Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            ])
            .and_then(vec![TxnOp::put(
                key,
                serde_json::to_vec(&entry)?,
                Some(PutOptions::new()),
            )]);
        self.guarded(txn, "appending to the journal").await?;
        *lock(&self.next_seq) = seq + 1;
        Ok(entry)
    }

    async fn journal(&self, since: u64, limit: usize) -> Result<Vec<JournalEntry>> {
        Ok(read_journal(&self.client, &self.keys, since, limit).await?)
    }
}

/// Try to take the leader key with `lease`: true if this controller now leads.
pub async fn campaign(
    client: &Client,
    keys: &Keys,
    lease: i64,
    me: &LeaderRecord,
) -> Result<bool, EtcdStoreError> {
    let t = Txn::new()
        .when(vec![Compare::create_revision(
            keys.leader(),
            CompareOp::Equal,
            0,
        )])
        .and_then(vec![TxnOp::put(
            keys.leader(),
            serde_json::to_vec(me).unwrap_or_default(),
            Some(PutOptions::new().with_lease(lease)),
        )]);
    Ok(txn(client, t).await?.succeeded())
}

/// For bench/etcd: `n` epoch writes exactly as a leader makes them (a guarded
/// transaction on the leader key's lease and the state's revision), on a prefix of
/// their own; the latency of each.
pub async fn bench_epoch_writes(endpoints: &[String], n: u64) -> Result<Vec<Duration>> {
    let cfg = EtcdConfig {
        endpoints: endpoints.to_vec(),
        prefix: format!("/lifeboat-bench/{}", std::process::id()),
        lease_ttl: Duration::from_secs(10),
        user: None,
        password_file: None,
        password_env: None,
        ca_file: None,
        cert_file: None,
        key_file: None,
    };
    let client = connect(&cfg).await?;
    let keys = Keys::new(&cfg.prefix);
    let lease = bounded(client.lease_client().grant(10, None)).await?.id();
    let me = LeaderRecord {
        name: "bench".into(),
        api_url: String::new(),
    };
    anyhow::ensure!(
        campaign(&client, &keys, lease, &me).await?,
        "the bench prefix already has a leader"
    );
    let store = EtcdStore::for_term(client.clone(), keys, lease).await?;
    let mut out = Vec::new();
    for i in 1..=n {
        let d = Durable {
            epoch: Epoch(i),
            ..Durable::default()
        };
        let t = tokio::time::Instant::now();
        store.save(&d).await?;
        out.push(t.elapsed());
    }
    let _ = bounded(client.lease_client().revoke(lease)).await;
    Ok(out)
}
