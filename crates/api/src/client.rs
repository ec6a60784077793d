//! The typed client the agents and the CLI use.

use crate::types::*;
use lifeboat_core::JournalEntry;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} refused the bearer token (401): check [auth] token_file / token_env")]
    Unauthorized { url: String },
    #[error("{url} answered {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url} answered with a body that is not the expected JSON: {reason}")]
    Decode { url: String, reason: String },
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            ClientError::Unauthorized { .. } => Some(401),
            _ => None,
        }
    }
}

/// A client of one lifeboat HTTP API (controller or agent), or of several
/// controllers of which one leads ([`ApiClient::any_of`]).
#[derive(Clone)]
pub struct ApiClient {
    bases: std::sync::Arc<Vec<String>>,
    /// The base that answered last: tried first next time.
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    token: Option<String>,
    http: reqwest::Client,
}

/// The status a follower controller answers a call only the leader takes
/// (421 Misdirected Request): the client tries the next controller.
pub const NOT_LEADER: u16 = 421;

impl ClientError {
    /// Another controller may answer where this one did not: it is unreachable or
    /// not the leader. Any other answer is a controller's, and final.
    fn try_another(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Status { status, .. } => *status == NOT_LEADER,
            _ => false,
        }
    }
}

impl ApiClient {
    /// `base` is `http://host:port`; `timeout` bounds every request.
    pub fn new(base: impl Into<String>, token: Option<String>, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            bases: std::sync::Arc::new(vec![base.into().trim_end_matches('/').to_owned()]),
            current: std::sync::Arc::default(),
            token,
            http,
        }
    }

    /// A client of several controllers (`[controller] store = "etcd"`): each call
    /// goes to the one that answered last and, if it is unreachable or not the
    /// leader (421), to the next in turn; the first real answer wins. Reads are
    /// answered by any controller, the rest by the leader only.
    pub fn any_of(bases: Vec<String>, token: Option<String>, timeout: Duration) -> Self {
        let mut c = Self::new(bases.first().cloned().unwrap_or_default(), token, timeout);
        let bases: Vec<String> = bases
            .into_iter()
            .map(|b| b.trim_end_matches('/').to_owned())
            .collect();
        if !bases.is_empty() {
            c.bases = std::sync::Arc::new(bases);
        }
        c
    }

    /// The base that answered last (the first one before any call).
    pub fn base(&self) -> &str {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        self.bases
            .get(i)
            .or(self.bases.first())
            .map_or("", |b| b.as_str())
    }

    /// Every base this client tries.
    pub fn bases(&self) -> &[String] {
        &self.bases
    }

    /// Call `path` on each base in turn from the current one until one answers
    /// (see [`ApiClient::any_of`]).
    async fn call<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, ClientError> {
        use std::sync::atomic::Ordering;
        let n = self.bases.len();
        let start = self.current.load(Ordering::Relaxed) % n.max(1);
        let mut last = None;
        for k in 0..n {
            let i = (start + k) % n;
            let url = format!("{}{path}", self.bases[i]);
            let req = match body {
                Some(b) => self.http.post(&url).json(b),
                None => self.http.get(&url),
            };
            match self.send(req, &url).await {
                Ok(v) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) if e.try_another() && k + 1 < n => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Unreachable {
            url: path.to_owned(),
            reason: "no controller configured".into(),
        }))
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<T, ClientError> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            url: url.to_owned(),
            reason: describe(&e),
        })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| ClientError::Unreachable {
            url: url.to_owned(),
            reason: describe(&e),
        })?;
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized {
                url: url.to_owned(),
            });
        }
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
            url: url.to_owned(),
            reason: e.to_string(),
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(path, None).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_value(body).map_err(|e| ClientError::Decode {
            url: path.to_owned(),
            reason: format!("encoding the request: {e}"),
        })?;
        self.call(path, Some(&body)).await
    }

    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let url = format!("{}{path}", self.base());
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                reason: describe(&e),
            })?;
        resp.text().await.map_err(|e| ClientError::Unreachable {
            url,
            reason: describe(&e),
        })
    }

    // Controller endpoints.
    pub async fn status(&self) -> Result<ControllerStatus, ClientError> {
        self.get("/v1/status").await
    }
    /// The deployment's status as its leader has it. With several controllers a
    /// follower answers from etcd alone (no agents' reports, phase "follower of …"):
    /// when the controller that answered names another leader, the leader is asked,
    /// and later calls go to it first. The follower's answer is returned when the
    /// leader cannot be asked (a leader that is down or frozen is what the caller
    /// may be looking at).
    pub async fn leader_status(&self) -> Result<ControllerStatus, ClientError> {
        let st = self.status().await?;
        let Some(url) = st
            .leadership
            .as_ref()
            .filter(|l| !l.leading)
            .and_then(|l| l.leader_url.as_deref())
            .map(|u| u.trim_end_matches('/').to_owned())
        else {
            return Ok(st);
        };
        let status_url = format!("{url}/v1/status");
        match self.send(self.http.get(&status_url), &status_url).await {
            Ok(from_leader) => {
                if let Some(i) = self.bases.iter().position(|b| *b == url) {
                    self.current.store(i, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(from_leader)
            }
            Err(_) => Ok(st),
        }
    }
    pub async fn journal(&self, since: u64) -> Result<Vec<JournalEntry>, ClientError> {
        self.get(&format!("/v1/journal?since={since}")).await
    }
    pub async fn health(&self) -> Result<Vec<CheckView>, ClientError> {
        self.get("/v1/health").await
    }
    pub async fn failover(&self, req: &MoveRequest) -> Result<MoveResponse, ClientError> {
        self.post("/v1/failover", req).await
    }
    pub async fn switchover(&self, req: &MoveRequest) -> Result<MoveResponse, ClientError> {
        self.post("/v1/switchover", req).await
    }
    pub async fn lease(&self, req: &LeaseRequest) -> Result<LeaseResponse, ClientError> {
        self.post("/v1/lease", req).await
    }
    pub async fn report(&self, req: &AgentReport) -> Result<ReportResponse, ClientError> {
        self.post("/v1/report", req).await
    }
    pub async fn discovery(&self) -> Result<Discovery, ClientError> {
        self.get("/v1/discovery").await
    }
    pub async fn routing(&self) -> Result<lifeboat_core::RoutingTable, ClientError> {
        self.get("/v1/routing").await
    }

    // Agent endpoints.
    pub async fn agent_status(&self) -> Result<AgentStatus, ClientError> {
        self.get("/v1/status").await
    }
    pub async fn command(&self, cmd: &AgentCommand) -> Result<CommandResponse, ClientError> {
        self.post("/v1/command", cmd).await
    }
    /// Agent -> agent: ask for a witness-loss promise (rule 7, docs/architecture.md).
    pub async fn promise(&self, req: &PromiseRequest) -> Result<PromiseResponse, ClientError> {
        self.post("/v1/promise", req).await
    }
}

fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
