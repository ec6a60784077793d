//! lifeboat's sample application: the reference app a newcomer watches fail over.
//!
//! A web front end (`GET /`: which region serves, the epoch, a message kept in the
//! region's object store, the latest rows; `POST /message` writes the message through
//! the region's lifeboat S3 gateway, which refuses it unless the region is the active
//! one) and a function tier (`POST /api/entries`, `GET /api/entries/{id}`,
//! `GET /api/entries`, `GET /healthz`). It finds its database only through lifeboat's
//! discovery endpoint, so a failover repoints it within about a second; see
//! `docs/sample-app.md`.
//!
//! Guarantees: [`serve`] answers on the listener it is given until `cancel` fires, then
//! finishes the requests in flight and closes its database connection.

pub mod db;
pub mod discovery;
pub mod objects;
pub mod web;

use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Command line (every flag also reads an environment variable).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "lifeboat-sample-app",
    version,
    about = "lifeboat's sample application: a web page and a JSON API that find their database through lifeboat's discovery"
)]
pub struct Options {
    /// Address to listen on (port 0 picks a free one; the bound address is printed).
    #[arg(long, env = "LIFEBOAT_APP_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// The region this process serves (shown on the page, stored with each row).
    #[arg(long, env = "LIFEBOAT_REGION")]
    pub region: String,
    /// The role the agent runs this service in (shown on the page).
    #[arg(long, env = "LIFEBOAT_ROLE")]
    pub role: Option<String>,
    /// The controller's discovery URL, e.g. http://127.0.0.1:7000/v1/discovery.
    #[arg(long, env = "LIFEBOAT_DISCOVERY_URL")]
    pub discovery: String,
    /// The region's object store (a local directory) holding the message.
    #[arg(long, env = "LIFEBOAT_APP_OBJECTS_DIR")]
    pub objects_dir: Option<PathBuf>,
    /// Key of the message object.
    #[arg(long, env = "LIFEBOAT_APP_MESSAGE_KEY", default_value = "msgdrdct.txt")]
    pub message_key: String,
    /// File holding the database password (read at every new connection).
    #[arg(
        long,
        env = "LIFEBOAT_APP_DB_PASSWORD_FILE",
        conflicts_with = "db_password_env"
    )]
    pub db_password_file: Option<PathBuf>,
    /// Name of an environment variable holding the database password.
    #[arg(long, env = "LIFEBOAT_APP_DB_PASSWORD_ENV")]
    pub db_password_env: Option<String>,
    /// The region's lifeboat S3 gateway, e.g. http://127.0.1.1:9000: the page's form
    /// writes the message through it (path-style). Without it, writing is off.
    #[arg(
        long,
        env = "LIFEBOAT_APP_S3_ENDPOINT",
        requires_all = ["s3_bucket", "s3_key_id", "s3_secret_file"]
    )]
    pub s3_endpoint: Option<String>,
    /// The gateway's bucket (`[objects.gateway] bucket`).
    #[arg(long, env = "LIFEBOAT_APP_S3_BUCKET", requires = "s3_endpoint")]
    pub s3_bucket: Option<String>,
    /// The access key id the writes are signed with.
    #[arg(long, env = "LIFEBOAT_APP_S3_KEY_ID", requires = "s3_endpoint")]
    pub s3_key_id: Option<String>,
    /// File holding that key's secret (read at every write).
    #[arg(long, env = "LIFEBOAT_APP_S3_SECRET_FILE", requires = "s3_endpoint")]
    pub s3_secret_file: Option<PathBuf>,
}

impl Options {
    fn password(&self) -> db::PasswordSource {
        match (&self.db_password_file, &self.db_password_env) {
            (Some(f), _) => db::PasswordSource::File(f.clone()),
            (None, Some(v)) => db::PasswordSource::Env(v.clone()),
            (None, None) => db::PasswordSource::None,
        }
    }

    /// The gateway the message is written through: all four `--s3-*` flags, or none.
    pub fn gateway(&self) -> Option<objects::Gateway> {
        Some(objects::Gateway {
            endpoint: self.s3_endpoint.clone()?,
            bucket: self.s3_bucket.clone()?,
            key_id: self.s3_key_id.clone()?,
            secret_file: self.s3_secret_file.clone()?,
        })
    }
}

/// Serve the app on `listener` until `cancel` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    opts: Options,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let discovery = Arc::new(discovery::Discoverer::new(opts.discovery.clone())?);
    let db = Arc::new(db::Database::new(
        discovery,
        opts.password(),
        opts.region.clone(),
    ));
    let app = Arc::new(web::App {
        region: opts.region.clone(),
        role: opts.role.clone(),
        db: db.clone(),
        message: objects::MessageSource {
            dir: opts.objects_dir.clone(),
            key: opts.message_key.clone(),
        },
        writer: objects::MessageWriter {
            gateway: opts.gateway(),
            key: opts.message_key.clone(),
        },
    });
    let watcher = tokio::spawn(db.run(cancel.clone()));
    let served = axum::serve(listener, web::router(app))
        .with_graceful_shutdown(cancel.clone().cancelled_owned())
        .await
        .context("serving HTTP");
    cancel.cancel();
    let _ = watcher.await;
    served
}

#[cfg(test)]
mod tests {
    use super::Options;
    use clap::Parser as _;

    fn parse(extra: &[&str]) -> Result<Options, clap::Error> {
        let base = ["app", "--region", "a", "--discovery", "http://127.0.0.1:9/"];
        Options::try_parse_from(base.iter().chain(extra))
    }

    #[test]
    fn the_gateway_flags_come_all_four_or_none() {
        assert_eq!(parse(&[]).expect("no gateway").gateway(), None);
        let all = [
            "--s3-endpoint",
            "http://127.0.1.1:9000",
            "--s3-bucket",
            "objects",
            "--s3-key-id",
            "AKID",
            "--s3-secret-file",
            "/s",
        ];
        let gw = parse(&all).expect("all four").gateway().expect("a gateway");
        assert_eq!(gw.endpoint, "http://127.0.1.1:9000");
        assert_eq!(gw.bucket, "objects");
        assert!(parse(&all[..2]).is_err(), "an endpoint alone");
        assert!(parse(&all[2..]).is_err(), "no endpoint");
    }
}
