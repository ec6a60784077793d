//! Creating a primary and a replica, or adopting an existing pair.
//!
//! - [`bootstrap_primary`]: for a managed instance (`datadir` set) creates the server
//!   (`mariadb-install-db`, an option file with `server_id`, `log_bin`,
//!   `log_slave_updates`, `gtid_strict_mode`, `binlog_format=ROW`), starts it and creates
//!   lifeboat's admin account and the replication account; for an adopted one checks
//!   those settings. Then opens it as the primary (semi-sync on in `mode = "sync"`).
//! - [`bootstrap_replica`]: the same for the replica, then
//!   `CHANGE MASTER TO … MASTER_USE_GTID=slave_pos`, `read_only=ON`, and waits until it
//!   has caught up with the primary (and, in sync mode, is a semi-sync client).
//!   A server that already is a primary with transactions of its own is refused.
//! - [`adopt`]: checks that an existing server is what the config says it is.
//!
//! Accounts are created with `sql_log_bin=0` on each server: they never enter the binlog,
//! so creating them cannot make a replica diverge.

use crate::conn::{Instance, lit, mysql_config};
use crate::repl::{self, ReplCredentials};
use crate::role::{MysqlRole, describe, wait_connect};
use crate::server::ServerFiles;
use anyhow::{Context as _, bail};
use lifeboat_config::database::ReplicationMode;
use lifeboat_config::{Config, InitialRole};
use lifeboat_core::RegionId;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use std::time::Duration;
use tokio::time::Instant;

/// What a bootstrap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapReport {
    pub region: RegionId,
    /// lifeboat created the server (it was not there before).
    pub created: bool,
    /// The server's GTID position once bootstrapped.
    pub gtid_pos: String,
}

fn repl_credentials(cfg: &Config) -> anyhow::Result<ReplCredentials> {
    let m = mysql_config(cfg)?;
    Ok(ReplCredentials {
        user: m.replication_user.clone(),
        password: crate::conn::load_secret(&m.replication_password(), "replication password")?,
    })
}

fn semi_sync(cfg: &Config) -> anyhow::Result<Option<repl::SemiSync>> {
    let m = mysql_config(cfg)?;
    let db = cfg
        .database
        .as_ref()
        .context("the config has no [database] table")?;
    Ok(
        (db.mode == ReplicationMode::Sync).then_some(repl::SemiSync {
            timeout: m.semi_sync_timeout,
            strict: db.strict,
        }),
    )
}

/// Accounts lifeboat needs on every server (not binlogged).
fn accounts_sql(inst: &Instance, repl: &ReplCredentials) -> String {
    let admin = format!("{}@'%'", lit(&inst.user));
    let replu = format!("{}@'%'", lit(&repl.user));
    format!(
        "SET SESSION sql_log_bin=0;\n\
         CREATE USER IF NOT EXISTS {admin} IDENTIFIED BY {pw};\n\
         ALTER USER {admin} IDENTIFIED BY {pw};\n\
         GRANT ALL PRIVILEGES ON *.* TO {admin} WITH GRANT OPTION;\n\
         CREATE USER IF NOT EXISTS {replu} IDENTIFIED BY {rpw};\n\
         ALTER USER {replu} IDENTIFIED BY {rpw};\n\
         GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO {replu};\n",
        pw = lit(&inst.password),
        rpw = lit(&repl.password),
    )
}

/// Create (managed) or reach (adopted) the server; returns a connection and whether it
/// was created now.
async fn bring_up(
    cfg: &Config,
    inst: &Instance,
    repl: &ReplCredentials,
) -> anyhow::Result<(Conn, bool)> {
    let m = mysql_config(cfg)?;
    let Some(datadir) = &inst.datadir else {
        let mut conn = inst.connect().await?;
        let replu = format!("{}@'%'", lit(&repl.user));
        for stmt in [
            "SET SESSION sql_log_bin=0".to_owned(),
            format!(
                "CREATE USER IF NOT EXISTS {replu} IDENTIFIED BY {}",
                lit(&repl.password)
            ),
            format!("GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO {replu}"),
        ] {
            conn.query_drop(stmt)
                .await
                .with_context(|| format!("{inst}: creating the replication account"))?;
        }
        return Ok((conn, false));
    };
    let files = ServerFiles::new(datadir, m.bin_dir.as_deref());
    let created = !files.initialized();
    files.install().await?;
    files.write_cnf(&inst.host, inst.port, inst.server_id)?;
    let init = created.then(|| accounts_sql(inst, repl));
    files.start(init.as_deref()).await?;
    let conn = wait_connect(inst, Duration::from_secs(120))
        .await
        .with_context(|| {
            format!(
                "{inst} started but does not accept logins; its log says:\n{}",
                files.log_tail()
            )
        })?;
    // The init file holds passwords: it has done its work.
    let _ = std::fs::remove_file(files.init_file());
    Ok((conn, created))
}

/// Create or adopt `region`'s server as the primary and make it writable.
pub async fn bootstrap_primary(cfg: &Config, region: &RegionId) -> anyhow::Result<BootstrapReport> {
    let inst = Instance::from_config(cfg, region)?;
    let repl = repl_credentials(cfg)?;
    let (mut conn, created) = bring_up(cfg, &inst, &repl).await?;
    let view = repl::observe(&mut conn).await?;
    repl::check_failover_settings(&view, &inst)?;
    if let Some(rs) = &view.replica {
        bail!(
            "{inst} is configured as the primary but is a replica of {}:{}; adopt it as the replica instead",
            rs.master_host,
            rs.master_port
        );
    }
    repl::open_as_primary(&mut conn, semi_sync(cfg)?).await?;
    let pos = crate::conn::global(&mut conn, "gtid_binlog_pos").await?;
    let _ = conn.disconnect().await;
    Ok(BootstrapReport {
        region: region.clone(),
        created,
        gtid_pos: pos,
    })
}

/// Create or adopt `region`'s server as a replica of `primary`'s and wait until it has
/// caught up.
pub async fn bootstrap_replica(
    cfg: &Config,
    region: &RegionId,
    primary: &RegionId,
) -> anyhow::Result<BootstrapReport> {
    let inst = Instance::from_config(cfg, region)?;
    let pinst = Instance::from_config(cfg, primary)?;
    let repl = repl_credentials(cfg)?;
    let semi = semi_sync(cfg)?;
    let mut pconn = pinst.connect().await.context("reaching the primary")?;
    let pview = repl::observe(&mut pconn).await?;
    if pview.replica.is_some() || pview.read_only {
        bail!(
            "{pinst} is not a writable primary: it is {}",
            describe(&pview)
        );
    }
    let (mut conn, created) = bring_up(cfg, &inst, &repl).await?;
    let view = repl::observe(&mut conn).await?;
    repl::check_failover_settings(&view, &inst)?;
    let following = view
        .replica
        .as_ref()
        .is_some_and(|rs| rs.master_host == pinst.host && rs.master_port == pinst.port);
    if !following {
        if view.replica.is_none() && !view.binlog_pos.0.is_empty() {
            bail!(
                "{inst} is configured as a replica but is {}: refusing to make it replicate \
                 (its own transactions would diverge); adopt it as the primary or start from an empty server",
                describe(&view)
            );
        }
        repl::start_replica(&mut conn, &pinst, &repl, semi.is_some(), None).await?;
    }
    repl::wait_replicating(&mut conn, Duration::from_secs(30)).await?;
    // Caught up: every transaction the primary had when we looked is applied here.
    let target = crate::conn::global(&mut pconn, "gtid_binlog_pos").await?;
    if !target.is_empty() {
        let ok: Option<i64> = conn
            .query_first(format!("SELECT MASTER_GTID_WAIT({}, 60)", lit(&target)))
            .await?;
        if ok != Some(0) {
            bail!("{inst} did not catch up with {pinst} (at {target}) within 60s");
        }
    }
    if semi.is_some() {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let pview = repl::observe(&mut pconn).await?;
            if pview.semi_sync_clients > 0 && pview.semi_sync_master {
                break;
            }
            if Instant::now() > deadline {
                bail!("semi-sync: {pinst} does not see {inst} as a semi-synchronous replica");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let pos = crate::conn::global(&mut conn, "gtid_slave_pos").await?;
    let _ = conn.disconnect().await;
    let _ = pconn.disconnect().await;
    Ok(BootstrapReport {
        region: region.clone(),
        created,
        gtid_pos: pos,
    })
}

/// Adopt `region`'s existing server: check that it is what the config says (the initially
/// active region's server a writable primary, the others replicas of it) and set up for
/// GTID failover, then return its role.
pub async fn adopt(cfg: &Config, region: &RegionId) -> anyhow::Result<MysqlRole> {
    let role = MysqlRole::new(cfg, region)?;
    let inst = role.instance().clone();
    let mut conn = inst.connect().await?;
    let view = repl::observe(&mut conn).await?;
    let _ = conn.disconnect().await;
    repl::check_failover_settings(&view, &inst)?;
    let configured = cfg
        .region(region)
        .map(|r| r.role)
        .with_context(|| format!("region {region} is not defined"))?;
    match configured {
        InitialRole::Active => {
            if view.replica.is_some() || view.read_only {
                bail!(
                    "{inst} is configured as the primary but is {}",
                    describe(&view)
                );
            }
        }
        InitialRole::Standby => {
            let active = cfg
                .initial_active()
                .context("no active region in the config")?;
            let pinst = Instance::from_config(cfg, &active)?;
            match &view.replica {
                Some(rs) if rs.master_host == pinst.host && rs.master_port == pinst.port => {}
                _ => bail!(
                    "{inst} is configured as a replica of region {active} ({}:{}) but is {}",
                    pinst.host,
                    pinst.port,
                    describe(&view)
                ),
            }
        }
    }
    Ok(role)
}
