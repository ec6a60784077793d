//! One probe of one target: an HTTP(S) GET, a TCP connect, or a database login and
//! query, bounded by a timeout.
//!
//! Guarantees: the whole probe (resolve, connect, TLS, headers, body, login, query)
//! finishes within the timeout; redirects are not followed; certificates are not
//! validated; a `search` reads at most [`SEARCH_LIMIT`] bytes of the body; connections
//! are not reused, so each probe really connects (a pooled connection must not hide a
//! server that stopped accepting); a database password is read at every probe (a
//! rotated file is picked up) and never appears in a result.

use crate::SEARCH_LIMIT;
use anyhow::Context;
use std::time::Duration;
use tokio::time::Instant;

/// What a probe can reach.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Http {
        /// One client per check (built once, cheap to clone).
        client: reqwest::Client,
        url: reqwest::Url,
        search: Option<String>,
    },
    Tcp {
        addr: String,
    },
    /// Log in to PostgreSQL and ask `pg_is_in_recovery()`.
    Postgres {
        /// Everything but the password (boxed: it is large).
        config: Box<tokio_postgres::Config>,
        password: lifeboat_config::SecretRef,
        primary: bool,
    },
    /// Log in to MariaDB / MySQL and ask `@@global.read_only`.
    Mysql {
        host: String,
        port: u16,
        user: String,
        password: lifeboat_config::SecretRef,
        primary: bool,
    },
    /// Test only: results from a script, so timing can be tested with paused time
    /// (real sockets and paused time do not mix). The last step repeats forever.
    #[cfg(test)]
    Script(std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<Step>>>),
}

/// Test only: one scripted probe result.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) enum Step {
    Pass,
    Fail,
    /// Never answers (the probe's timeout must end it).
    Hang,
}

/// The raw result of one probe, before inversion and threshold.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub ok: bool,
    pub detail: String,
    pub latency: Duration,
}

impl Target {
    pub(crate) fn http(
        url: &str,
        search: Option<String>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(url).with_context(|| format!("parsing url {url:?}"))?;
        let client = reqwest::Client::builder()
            // A 3xx is itself healthy (Route 53): never follow it.
            .redirect(reqwest::redirect::Policy::none())
            // Route 53 does not validate certificates either: a probe asks "is it
            // up", not "is its certificate right".
            .danger_accept_invalid_certs(true)
            // A fresh connection per probe: a pooled one could hide a dead listener,
            // and a search stops reading mid-body anyway.
            .pool_max_idle_per_host(0)
            // Probes go straight to the target, never through a proxy from the environment.
            .no_proxy()
            .connect_timeout(timeout)
            .user_agent(concat!("lifeboat-health/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Target::Http {
            client,
            url,
            search,
        })
    }

    /// Runs one probe; never takes (much) longer than `timeout`.
    pub(crate) async fn probe(&self, timeout: Duration) -> Outcome {
        let start = Instant::now();
        let result = match tokio::time::timeout(timeout, self.probe_unbounded()).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "timed out after {}",
                humantime::format_duration(timeout)
            )),
        };
        let latency = start.elapsed();
        match result {
            Ok(detail) => Outcome {
                ok: true,
                detail,
                latency,
            },
            Err(detail) => Outcome {
                ok: false,
                detail,
                latency,
            },
        }
    }

    async fn probe_unbounded(&self) -> Result<String, String> {
        match self {
            Target::Tcp { addr } => tokio::net::TcpStream::connect(addr.as_str())
                .await
                .map(|_| "connected".to_owned())
                .map_err(|e| describe_error(&e)),
            Target::Http {
                client,
                url,
                search,
            } => http_probe(client, url, search.as_deref()).await,
            Target::Postgres {
                config,
                password,
                primary,
            } => pg_probe(config, password, *primary).await,
            Target::Mysql {
                host,
                port,
                user,
                password,
                primary,
            } => mysql_probe(host, *port, user, password, *primary).await,
            #[cfg(test)]
            Target::Script(steps) => {
                let step = {
                    let mut steps = steps.lock().expect("script lock");
                    if steps.len() > 1 {
                        steps.pop_front()
                    } else {
                        steps.front().copied()
                    }
                };
                match step {
                    Some(Step::Pass) => Ok("scripted pass".to_owned()),
                    Some(Step::Fail) | None => Err("scripted failure".to_owned()),
                    Some(Step::Hang) => std::future::pending().await,
                }
            }
        }
    }
}

async fn http_probe(
    client: &reqwest::Client,
    url: &reqwest::Url,
    search: Option<&str>,
) -> Result<String, String> {
    let mut response = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| describe_error(&e))?;
    let status = response.status();
    let code = status.as_u16();
    if !(status.is_success() || status.is_redirection()) {
        return Err(format!("HTTP {code}"));
    }
    let Some(needle) = search else {
        return Ok(format!("HTTP {code}"));
    };
    // Read at most SEARCH_LIMIT bytes; dropping the response closes the connection.
    let mut body = Vec::with_capacity(SEARCH_LIMIT);
    while body.len() < SEARCH_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(SEARCH_LIMIT - body.len());
                body.extend_from_slice(&chunk[..take]);
            }
            Ok(None) => break,
            Err(e) => return Err(format!("HTTP {code}, reading body: {}", describe_error(&e))),
        }
    }
    if contains(&body, needle.as_bytes()) {
        Ok(format!("HTTP {code}, found {needle:?}"))
    } else {
        Err(format!(
            "substring {needle:?} not in first {SEARCH_LIMIT} bytes"
        ))
    }
}

/// Split `host:port` (IPv6 in brackets).
pub(crate) fn host_port(addr: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("{addr:?} is not host:port"))?;
    let port = port
        .parse::<u16>()
        .with_context(|| format!("{addr:?} is not host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_owned(), port))
}

/// The password, if the check names a source.
fn password(p: &lifeboat_config::SecretRef) -> Result<Option<String>, String> {
    if p.file.is_none() && p.env.is_none() {
        return Ok(None);
    }
    p.load()
        .map(Some)
        .map_err(|e| format!("cannot read the password: {e}"))
}

/// Aborts the connection task when the probe ends (also when its timeout drops it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn pg_probe(
    base: &tokio_postgres::Config,
    secret: &lifeboat_config::SecretRef,
    primary: bool,
) -> Result<String, String> {
    let mut config = base.clone();
    if let Some(p) = password(secret)? {
        config.password(p);
    }
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| describe_error(&e))?;
    let _task = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let standby: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(|e| describe_error(&e))?
        .get(0);
    match (standby, primary) {
        (true, true) => Err("in recovery: a standby, not a primary".to_owned()),
        (true, false) => Ok("answers (standby)".to_owned()),
        (false, _) => Ok("answers (primary)".to_owned()),
    }
}

async fn mysql_probe(
    host: &str,
    port: u16,
    user: &str,
    secret: &lifeboat_config::SecretRef,
    primary: bool,
) -> Result<String, String> {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(host.to_owned())
        .tcp_port(port)
        .user(Some(user.to_owned()))
        .pass(password(secret)?)
        // Stay on TCP to the address given (no switch to a local socket).
        .prefer_socket(false);
    use mysql_async::prelude::Queryable as _;
    let mut conn = mysql_async::Conn::new(opts)
        .await
        .map_err(|e| describe_error(&e))?;
    let read_only: Option<i64> = conn
        .query_first("SELECT @@global.read_only")
        .await
        .map_err(|e| describe_error(&e))?;
    let _ = conn.disconnect().await;
    match (read_only.unwrap_or(1) != 0, primary) {
        (true, true) => Err("read_only is on: a replica, not a primary".to_owned()),
        (true, false) => Ok("answers (read-only)".to_owned()),
        (false, _) => Ok("answers (writable)".to_owned()),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// A short, stable description of a probe error: "connection refused" when the cause is
/// a refused connection, otherwise the error's chain of causes.
fn describe_error(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".to_owned(),
                std::io::ErrorKind::ConnectionReset => return "connection reset".to_owned(),
                _ => {}
            }
        }
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_matches_bytes() {
        assert!(contains(b"status: ok\n", b"ok"));
        assert!(!contains(b"status: bad\n", b"ok"));
        assert!(contains(b"", b""));
        assert!(!contains(b"o", b"ok"));
    }

    #[test]
    fn refused_connection_reads_plainly() {
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(describe_error(&e), "connection refused");
    }
}
