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
        "s3-latency" => {
            s3_latency(
                &arg(1),
                &arg(2),
                &arg(3),
                Path::new(&arg(4)),
                Path::new(&arg(5)),
                arg(6).parse()?,
                arg(7).parse()?,
                &arg(8),
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
    let lat = replicated_after(state, &written, Duration::from_secs(60)).await?;
    cancel.cancel();
    let _ = task.await;
    println!("latency_ms {} ({rate}/s for {secs}s)", percentiles(&lat));
    Ok(())
}

fn s3_client(
    endpoint: &str,
    bucket: &str,
    key: &str,
    secret: &str,
) -> lifeboat_objects::s3::S3Client {
    lifeboat_objects::s3::S3Client::new(lifeboat_objects::s3::S3Config {
        endpoint: Some(endpoint.to_owned()),
        bucket: bucket.to_owned(),
        region: "us-east-1".to_owned(),
        access_key_id: key.to_owned(),
        secret_access_key: secret.to_owned(),
        session_token: None,
        virtual_hosted_style: false,
    })
    .expect("S3 client")
}

/// An S3-API source (bucket `lat-a` on the bench's s3s-fs server at `endpoint`)
/// replicated to a local directory while `rate` objects per second are written for
/// `secs`: `via` = `gateway` writes through region a's S3 gateway (recorded at once),
/// `listing` writes into the bucket directly (seen by the periodic listing, every
/// `reconcile_interval`, 30 s by default). Latency = when the verified copy was
/// recorded minus when the writer's PUT was answered.
#[allow(clippy::too_many_arguments)]
async fn s3_latency(
    endpoint: &str,
    key: &str,
    secret: &str,
    dest: &Path,
    state: &Path,
    rate: u64,
    secs: u64,
    via: &str,
) -> anyhow::Result<()> {
    use lifeboat_config::objects::{ObjectsConfig, StoreConfig};
    use lifeboat_objects::Store;
    let source = s3_client(endpoint, "lat-a", key, secret);
    let a = Store {
        describe: source.describe(),
        backend: lifeboat_objects::store::Backend::S3(std::sync::Arc::new(source)),
        kind: lifeboat_config::objects::StoreKind::S3,
        local_root: None,
        local: None,
    };
    let b = Store::open(&StoreConfig::local(dest))?;
    let cfg = ObjectsConfig::default();
    let region = lifeboat_core::RegionId::new("a");
    let stores = [("a".to_owned(), a), ("b".to_owned(), b)]
        .into_iter()
        .collect();
    let rep = Replicator::open_with_stores(&cfg, &region, state, stores)?;
    let role = rep.role();
    let cancel = CancellationToken::new();
    let writer = match via {
        "gateway" => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let gw = format!("http://{}", listener.local_addr()?);
            let gateway = rep.gateway("objects");
            tokio::spawn(gateway.serve(
                listener,
                vec![(key.to_owned(), secret.to_owned())],
                cancel.clone(),
            ));
            s3_client(&gw, "objects", key, secret)
        }
        "listing" => s3_client(endpoint, "lat-a", key, secret),
        other => anyhow::bail!("via {other}: gateway or listing"),
    };
    let task = tokio::spawn(rep.run(cancel.clone()));
    role.activate(&lifeboat_core::Activation {
        epoch: lifeboat_core::Epoch(1),
        region: region.clone(),
        forced: false,
    })
    .await?;
    // Until the region is active (the gateway refuses writes before).
    loop {
        if role.status().await.role == lifeboat_core::RoleHealth::Primary {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut written: HashMap<String, i64> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let payload = bytes::Bytes::from(vec![7u8; 4096]);
    for i in 0..rate * secs {
        tick.tick().await;
        let key = format!("lat/{:03}/obj-{i:06}", i % 50);
        writer.put(&key, vec![payload.clone()], &[], &[]).await?;
        written.insert(key, db::now_ms());
    }
    let lat = replicated_after(state, &written, Duration::from_secs(90)).await?;
    cancel.cancel();
    let _ = task.await;
    println!(
        "s3 source via {via}: latency_ms {} ({rate}/s for {secs}s, reconcile_interval {:?})",
        percentiles(&lat),
        cfg.reconcile_interval
    );
    Ok(())
}

/// For each written key (and when its write was answered), how long until its copy to
/// region b was recorded verified, waiting at most `patience`; sorted.
async fn replicated_after(
    state: &Path,
    written: &HashMap<String, i64>,
    patience: Duration,
) -> anyhow::Result<Vec<i64>> {
    let dbh = db::Db::open(&lifeboat_objects::db_path(state))?;
    let deadline = tokio::time::Instant::now() + patience;
    let mut lat: Vec<i64> = Vec::new();
    loop {
        lat.clear();
        let mut missing = 0;
        for (key, at) in written {
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
    lat.sort_unstable();
    Ok(lat)
}

/// "p50 … p90 … p99 … max … (n=…)" of sorted milliseconds.
fn percentiles(lat: &[i64]) -> String {
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(-1)
    };
    format!(
        "p50 {} p90 {} p99 {} max {} (n={})",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        lat.last().copied().unwrap_or(-1),
        lat.len()
    )
}
