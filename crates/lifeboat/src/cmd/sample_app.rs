//! `lifeboat sample-app`: the sample application, which the demo runs as each
//! region's pilot-light service (its code is in crates/sample-app).

use crate::shared::{announce, cancel_on_signal};
use anyhow::{Context, Result};
use std::process::ExitCode;

pub(crate) async fn run(opts: lifeboat_sample_app::Options) -> Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(opts.bind)
        .await
        .with_context(|| format!("binding the sample app on {}", opts.bind))?;
    announce("app", format!("http://{}", listener.local_addr()?));
    let cancel = tokio_util::sync::CancellationToken::new();
    cancel_on_signal(cancel.clone());
    lifeboat_sample_app::serve(listener, opts, cancel).await?;
    Ok(ExitCode::SUCCESS)
}
