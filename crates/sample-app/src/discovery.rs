//! Where the database is: the controller's `GET /v1/discovery`, cached.
//!
//! Guarantees: an answer is at most [`MAX_AGE`] plus one request old when the discovery
//! endpoint answers (so a failover is seen within about a second); one request at a time
//! goes to the controller however many callers ask; [`Discoverer::refresh`] bypasses the
//! cache (used after a database connection error). When the controller cannot be
//! reached, the last good answer keeps being used (a controller outage alone must not
//! take the application down; a region whose lease lapses is fenced by its agent, so a
//! stale answer cannot reach a writable old primary for long) and carries the discovery
//! error with it.
//!
//! [`Discoverer::get`] never waits for the controller once it has an answer: an expired
//! answer is returned at once and renewed in the background. A controller that is
//! frozen (SIGSTOP, a stalled VM) accepts connections and answers nothing, so waiting
//! for it would stall every request of the application for the request timeout each
//! time the cache expires (docs/architecture.md, rule 7: a witness outage is not an
//! application outage).

use lifeboat_api::types::Discovery;
use lifeboat_core::Epoch;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How old a cached answer may be before it is fetched again.
pub const MAX_AGE: Duration = Duration::from_millis(500);
/// How long one discovery request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The database engine the endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    #[serde(alias = "postgresql")]
    Postgres,
    #[serde(alias = "mysql")]
    Mariadb,
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Engine::Postgres => "PostgreSQL",
            Engine::Mariadb => "MariaDB",
        })
    }
}

/// `endpoints.database` of a discovery answer (Serialize: what a controller publishes,
/// `serde_json::to_value(endpoint)` under the key `"database"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbEndpoint {
    pub engine: Engine,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
}

impl DbEndpoint {
    /// `host:port` (bracketed for IPv6).
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One discovery answer as the application uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub epoch: Epoch,
    pub active: Option<String>,
    /// The database endpoint, or why there is none.
    pub database: Result<DbEndpoint, String>,
    /// Set when this is an old answer because the discovery endpoint failed just now.
    pub stale_because: Option<String>,
}

/// Why no answer at all could be had.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot discover the database through {url}: {reason}")]
pub struct DiscoveryError {
    pub url: String,
    pub reason: String,
}

#[derive(Default)]
struct Cache {
    answer: Option<Discovered>,
    /// When the last fetch (successful or not) finished.
    checked: Option<Instant>,
    error: Option<String>,
}

/// A cached client of one discovery URL.
pub struct Discoverer {
    url: String,
    http: reqwest::Client,
    cache: std::sync::Mutex<Cache>,
    /// Held while a request to the controller is in flight (one at a time).
    fetching: tokio::sync::Mutex<()>,
    /// A background renewal is running (at most one).
    renewing: std::sync::atomic::AtomicBool,
    max_age: Duration,
}

impl fmt::Debug for Discoverer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discoverer")
            .field("url", &self.url)
            .finish()
    }
}

impl Discoverer {
    pub fn new(url: impl Into<String>) -> anyhow::Result<Self> {
        Self::with_limits(url, MAX_AGE, REQUEST_TIMEOUT)
    }

    /// A discoverer whose answers expire after `max_age` and whose requests give up
    /// after `timeout` ([`Discoverer::new`]: [`MAX_AGE`] and [`REQUEST_TIMEOUT`]).
    pub fn with_limits(
        url: impl Into<String>,
        max_age: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| anyhow::anyhow!("building the discovery HTTP client: {e}"))?;
        Ok(Self {
            url: url.into(),
            http,
            cache: std::sync::Mutex::new(Cache::default()),
            fetching: tokio::sync::Mutex::new(()),
            renewing: std::sync::atomic::AtomicBool::new(false),
            max_age,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The cached answer if it is younger than the maximum age. An older answer is
    /// returned as it is while a renewal runs in the background; only a discoverer
    /// that never had an answer waits for the controller.
    pub async fn get(self: &Arc<Self>) -> Result<Discovered, DiscoveryError> {
        if let Some(r) = self.cached(ago(self.max_age)) {
            return r;
        }
        let old = {
            let c = lock(&self.cache);
            c.answer.is_some().then(|| self.result_of(&c))
        };
        match old {
            Some(old) => {
                self.renew_in_background();
                old
            }
            None => self.fetch(false).await,
        }
    }

    /// Start one background renewal unless one is running.
    fn renew_in_background(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self
            .renewing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let me = Arc::clone(self);
        // Nothing to collect: the outcome lands in the cache (an error included).
        tokio::spawn(async move {
            let _ = me.fetch(false).await;
            me.renewing.store(false, Ordering::Release);
        });
    }

    /// A fresh answer (or, if the controller cannot be reached, the last good one marked
    /// stale).
    pub async fn refresh(&self) -> Result<Discovered, DiscoveryError> {
        self.fetch(true).await
    }

    /// The last answer without asking anyone (None before the first fetch).
    pub fn last(&self) -> Option<Discovered> {
        lock(&self.cache).answer.clone()
    }

    /// The cache's result if it was checked after `since`.
    fn cached(&self, since: Instant) -> Option<Result<Discovered, DiscoveryError>> {
        let c = lock(&self.cache);
        let checked = c.checked?;
        if checked < since {
            return None;
        }
        Some(self.result_of(&c))
    }

    fn result_of(&self, c: &Cache) -> Result<Discovered, DiscoveryError> {
        match (&c.answer, &c.error) {
            (Some(a), err) => {
                let mut a = a.clone();
                a.stale_because = err.clone();
                Ok(a)
            }
            (None, Some(e)) => Err(DiscoveryError {
                url: self.url.clone(),
                reason: e.clone(),
            }),
            (None, None) => Err(DiscoveryError {
                url: self.url.clone(),
                reason: "not asked yet".into(),
            }),
        }
    }

    async fn fetch(&self, force: bool) -> Result<Discovered, DiscoveryError> {
        let asked = Instant::now();
        let _one_at_a_time = self.fetching.lock().await;
        // Someone else fetched while we waited for the lock: their answer is as fresh
        // as ours would be.
        let since = if force {
            asked
        } else {
            asked.checked_sub(self.max_age).unwrap_or(asked)
        };
        if let Some(r) = self.cached(since) {
            return r;
        }
        let fetched = self.fetch_once().await;
        let mut c = lock(&self.cache);
        c.checked = Some(Instant::now());
        match fetched {
            Ok(d) => {
                if let Some(old) = &c.answer
                    && old.epoch != d.epoch
                {
                    tracing::info!(
                        old = old.epoch.0,
                        new = d.epoch.0,
                        active = d.active.as_deref().unwrap_or("none"),
                        "discovery: epoch changed"
                    );
                }
                c.answer = Some(d);
                c.error = None;
            }
            Err(e) => {
                if c.error.is_none() {
                    tracing::warn!(url = %self.url, error = %e, "discovery failed");
                }
                c.error = Some(e);
            }
        }
        self.result_of(&c)
    }

    async fn fetch_once(&self) -> Result<Discovered, String> {
        let resp = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| describe_reqwest(&e))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(format!(
                "HTTP {status}: {}",
                body.chars().take(200).collect::<String>()
            ));
        }
        let body = resp.bytes().await.map_err(|e| describe_reqwest(&e))?;
        parse(&body)
    }
}

/// Parse a discovery answer.
pub fn parse(body: &[u8]) -> Result<Discovered, String> {
    let d: Discovery = serde_json::from_slice(body)
        .map_err(|e| format!("the answer is not a discovery document: {e}"))?;
    let database = match d.endpoints.get("database") {
        None => Err(format!(
            "the answer names no database endpoint (active region: {})",
            d.active.as_ref().map_or("none", |r| r.as_str())
        )),
        Some(v) => serde_json::from_value::<DbEndpoint>(v.clone())
            .map_err(|e| format!("the answer's database endpoint is malformed: {e}")),
    };
    Ok(Discovered {
        epoch: d.epoch,
        active: d.active.map(|r| r.as_str().to_owned()),
        database,
        stale_because: None,
    })
}

fn describe_reqwest(e: &reqwest::Error) -> String {
    // reqwest's Display hides the cause ("error sending request"); the chain says
    // "connection refused" or "timed out".
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

fn ago(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_sub(d).unwrap_or(now)
}

/// A std Mutex is fine: never held across an `.await`.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_controllers_answer() {
        let d = parse(br#"{"epoch": 2, "active": "b", "address": "127.0.2.1", "endpoints": {"database": {"engine": "postgres", "host": "127.0.2.1", "port": 5432, "dbname": "app", "user": "app"}}}"#)
            .expect("parse");
        assert_eq!(d.epoch, Epoch(2));
        assert_eq!(d.active.as_deref(), Some("b"));
        let db = d.database.expect("database");
        assert_eq!(db.engine, Engine::Postgres);
        assert_eq!(db.addr(), "127.0.2.1:5432");
    }

    #[test]
    fn an_endpoint_round_trips_through_json() {
        let ep = DbEndpoint {
            engine: Engine::Mariadb,
            host: "127.0.2.1".into(),
            port: 3306,
            dbname: "app".into(),
            user: "app".into(),
        };
        let v = serde_json::to_value(&ep).expect("serialize");
        assert_eq!(v["engine"], "mariadb");
        let body = serde_json::json!({"epoch": 5, "active": "b", "address": null, "endpoints": {"database": v}});
        let d = parse(body.to_string().as_bytes()).expect("parse");
        assert_eq!(d.database, Ok(ep));
    }

    #[test]
    fn no_database_endpoint_says_so() {
        let d = parse(br#"{"epoch": 1, "active": null, "address": null}"#).expect("parse");
        let err = d.database.expect_err("no endpoint");
        assert!(err.contains("names no database endpoint"), "{err}");
        assert!(err.contains("none"), "{err}");
    }

    #[test]
    fn mysql_is_an_alias_of_mariadb() {
        let d = parse(br#"{"epoch": 1, "active": "a", "address": null, "endpoints": {"database": {"engine": "mysql", "host": "::1", "port": 3306, "dbname": "app", "user": "app"}}}"#)
            .expect("parse");
        let db = d.database.expect("database");
        assert_eq!(db.engine, Engine::Mariadb);
        assert_eq!(db.addr(), "[::1]:3306");
    }
}
