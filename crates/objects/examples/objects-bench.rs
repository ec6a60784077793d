//! Drives bench/objects/run.sh: an S3 API server (s3s-fs), data generation, a
//! backfill through `lifeboat_objects::cli::backfill`, and a replication latency run.
//! Not a test: figures go to the bench report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lifeboat_objects::{Replicator, db};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| {
        args.get(i)
            .cloned()
            .expect("missing argument (see bench/objects/run.sh)")
    };
    match arg(0).as_str() {
        "serve-s3" => serve_s3(Path::new(&arg(1)), &arg(2), &arg(3), &arg(4)).await,
        "gen" => {
            let dir = PathBuf::from(arg(1));
            let count: usize = arg(2).parse()?;
            let size: usize = arg(3).parse()?;
            generate(&dir, count, size);
            Ok(())
        }
        "backfill" => {
            let cfg = lifeboat_config::Config::load(Path::new(&arg(1)))?;
            let region = lifeboat_core::RegionId::new(arg(2));
            let start = tokio::time::Instant::now();
            let out =
                lifeboat_objects::cli::backfill(&cfg, &region, Path::new(&arg(3)), false).await?;
            println!("{out}");
            println!("elapsed_seconds {:.3}", start.elapsed().as_secs_f64());
            Ok(())
        }
        "latency" => {
            latency(
                Path::new(&arg(1)),
                &arg(2),
                Path::new(&arg(3)),
                arg(4).parse()?,
                arg(5).parse()?,
            )
            .await
        }
        other => anyhow::bail!("unknown command {other}"),
    }
}

async fn serve_s3(root: &Path, bucket: &str, key: &str, secret: &str) -> anyhow::Result<()> {
    for b in bucket.split(',') {
        std::fs::create_dir_all(root.join(b))?;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("http://{}", listener.local_addr()?);
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| anyhow::anyhow!("s3s-fs: {e:?}"))?;
    let mut b = s3s::service::S3ServiceBuilder::new(fs);
    b.set_auth(s3s::auth::SimpleAuth::from_single(key, secret));
    let service = b.build();
    let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    loop {
        let (socket, _) = listener.accept().await?;
        let conn = http
            .serve_connection(hyper_util::rt::TokioIo::new(socket), service.clone())
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

fn generate(dir: &Path, count: usize, size: usize) {
    let mut buf = vec![0u8; size];
    for i in 0..count {
        let sub = dir.join(format!("d{:03}", i % 100));
        std::fs::create_dir_all(&sub).unwrap();
        for (j, b) in buf.iter_mut().enumerate() {
            *b = (i.wrapping_mul(131) + j.wrapping_mul(7) + (j >> 10)) as u8;
        }
        std::fs::write(sub.join(format!("obj-{i:06}")), &buf).unwrap();
    }
}

/// Replicate local dir a -> b while writing `rate` objects per second for `secs`;
/// latency = when the verified copy was recorded minus when the write finished.
async fn latency(
    config: &Path,
    region: &str,
    state: &Path,
    rate: u64,
    secs: u64,
) -> anyhow::Result<()> {
    let cfg = lifeboat_config::Config::load(config)?;
    let region = lifeboat_core::RegionId::new(region);
    let src = cfg.objects.as_ref().unwrap().stores[region.as_str()]
        .path
        .clone()
        .unwrap();
    let rep = Replicator::open(&cfg, &region, state).await?;
    let role = rep.role();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(rep.run(cancel.clone()));
    role.activate(&lifeboat_core::Activation {
        epoch: lifeboat_core::Epoch(1),
        region: region.clone(),
        forced: false,
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut written: HashMap<String, i64> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let total = rate * secs;
    let payload = vec![7u8; 4096];
    for i in 0..total {
        tick.tick().await;
        let key = format!("lat/{:03}/obj-{i:06}", i % 50);
        let path = src.join(&key);
        std::fs::create_dir_all(path.parent().unwrap())?;
        // Outside the store: a temporary file inside it would be replicated too.
        let tmp = src.parent().unwrap().join(format!(".tmp-{i}"));
        std::fs::write(&tmp, &payload)?;
        std::fs::rename(&tmp, &path)?;
        written.insert(key, db::now_ms());
    }
    let dbh = db::Db::open(&lifeboat_objects::db_path(state))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut lat: Vec<i64> = Vec::new();
    loop {
        lat.clear();
        let mut missing = 0;
        for (key, at) in &written {
            match dbh.target(key, "b")? {
                Some(r) if r.completed_ms.is_some() => lat.push(r.completed_ms.unwrap_or(0) - at),
                _ => missing += 1,
            }
        }
        if missing == 0 || tokio::time::Instant::now() > deadline {
            println!(
                "objects {} replicated {} missing {missing}",
                written.len(),
                lat.len()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cancel.cancel();
    let _ = task.await;
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(-1)
    };
    println!(
        "latency_ms p50 {} p90 {} p99 {} max {} (n={}, {rate}/s for {secs}s)",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        lat.last().copied().unwrap_or(-1),
        lat.len()
    );
    Ok(())
}
