//! What the config turns into at run time: a region's data roles (database, object
//! replication) for its agent, and the endpoints the controller's discovery publishes.

use anyhow::{Context, Result};
use lifeboat_config::Config;
use lifeboat_config::database::DatabaseEngine;
use lifeboat_controller::{DiscoveryFn, MetricsFn};
use lifeboat_core::{RegionId, SharedRole};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The region's data roles in activation order (database first, then objects), the
/// metrics they expose, and their background tasks spawned on `tasks`.
pub(crate) async fn data_roles(
    cfg: &Arc<Config>,
    region: &RegionId,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) -> Result<(Vec<SharedRole>, Vec<MetricsFn>)> {
    let mut roles: Vec<SharedRole> = Vec::new();
    let mut metrics: Vec<MetricsFn> = Vec::new();
    if let Some(db) = &cfg.database {
        match db.engine {
            DatabaseEngine::Postgres => {
                let role = lifeboat_pg::role::PostgresRole::new(cfg, region)
                    .with_context(|| format!("setting up PostgreSQL for region {region}"))?;
                roles.push(Arc::new(role));
            }
            DatabaseEngine::Mariadb => {
                let role = lifeboat_mysql::MysqlRole::new(cfg, region)
                    .with_context(|| format!("setting up MariaDB for region {region}"))?;
                roles.push(Arc::new(role));
            }
        }
    }
    if let Some(objects) = &cfg.objects
        && objects.stores.contains_key(region.as_str())
    {
        let rep = lifeboat_objects::Replicator::open(cfg, region, &cfg.agent_state_dir(region))
            .await
            .with_context(|| format!("setting up object replication for region {region}"))?;
        roles.push(rep.role());
        let m = rep.metrics();
        metrics.push(Arc::new(move |out: &mut String| m.render_prometheus(out)));
        tasks.spawn(async move {
            if let Err(e) = rep.run(cancel).await {
                tracing::error!("object replication stopped: {e:#}");
            }
        });
    }
    Ok((roles, metrics))
}

/// `endpoints.database` of `/v1/discovery`: where the active region's database is.
pub(crate) fn discovery() -> DiscoveryFn {
    Arc::new(|cfg: &Config, active: &RegionId| {
        let mut out = BTreeMap::new();
        let Some(db) = &cfg.database else { return out };
        let endpoint = match db.engine {
            DatabaseEngine::Postgres => db.postgres.as_ref().and_then(|pg| {
                pg.regions.get(active.as_str()).map(|i| {
                    serde_json::json!({"engine": "postgres", "host": i.host, "port": i.port, "dbname": pg.dbname, "user": i.user})
                })
            }),
            DatabaseEngine::Mariadb => db.mysql.as_ref().and_then(|my| {
                my.regions.get(active.as_str()).map(|i| {
                    serde_json::json!({"engine": "mariadb", "host": i.host, "port": i.port, "dbname": "lifeboat_app", "user": i.user})
                })
            }),
        };
        if let Some(e) = endpoint {
            out.insert("database".to_owned(), e);
        }
        out
    })
}
