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

/// A client of one lifeboat HTTP API (controller or agent).
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
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
            base: base.into().trim_end_matches('/').to_owned(),
            token,
            http,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
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
        let url = format!("{}{path}", self.base);
        self.send(self.http.get(&url), &url).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.post(&url).json(body), &url).await
    }

    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let url = format!("{}{path}", self.base);
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
