//! Creating a primary and a replica, and adopting a pair lifeboat did not create.
//!
//! Guarantees: a bootstrap never overwrites an existing cluster; a replica is streaming
//! from its primary through its own replication slot, under a unique application_name,
//! before `bootstrap_replica` returns; adopting refuses a server whose role contradicts
//! the config (a "standby" that is a primary would be a split brain).

use crate::exec::{PgBin, give_to_postgres, sql_ident, sql_literal, write_pg_file};
use crate::instance::Instance;
use crate::monitor::observe;
use crate::server::{self, ServerSettings};
use anyhow::{Context, Result, anyhow, bail};
use lifeboat_config::database::ReplicationMode;
use std::path::Path;
use std::time::Duration;
use tokio_postgres::Client;

/// Create, configure and start a primary in `inst.data_dir`, with its replication role.
pub async fn bootstrap_primary(
    bin: &PgBin,
    inst: &Instance,
    settings: &ServerSettings,
) -> Result<()> {
    let dir = inst.data_dir()?.clone();
    prepare_empty_dir(&dir)?;
    let password = inst.superuser_password()?;
    let repl_password = inst.replication_password_value()?;
    // initdb reads the superuser's password from a file (never argv).
    let pwfile = tempfile::NamedTempFile::new().context("create a password file for initdb")?;
    std::fs::write(pwfile.path(), &password).context("write initdb password file")?;
    give_to_postgres(pwfile.path())?;
    bin.run(
        "initdb",
        [
            "-D".as_ref(),
            dir.as_os_str(),
            "--data-checksums".as_ref(),
            "-U".as_ref(),
            inst.user.as_ref(),
            format!("--pwfile={}", pwfile.path().display()).as_ref(),
            "--auth-local=scram-sha-256".as_ref(),
            "--auth-host=scram-sha-256".as_ref(),
            "-E".as_ref(),
            "UTF8".as_ref(),
            "--locale=C".as_ref(),
        ],
        &[],
    )
    .await
    .with_context(|| format!("initdb {}", dir.display()))?;
    drop(pwfile);
    server::write_lifeboat_conf(inst, &dir, settings)?;
    server::write_hba(inst, &dir)?;
    server::start(bin, &dir).await?;
    let client = inst.connect().await?;
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_roles WHERE rolname = $1",
            &[&inst.replication_user],
        )
        .await
        .context("look up the replication role")?
        .is_some();
    let verb = if exists { "ALTER" } else { "CREATE" };
    client
        .batch_execute(&format!(
            "{verb} ROLE {} WITH REPLICATION LOGIN PASSWORD {}",
            sql_ident(&inst.replication_user),
            sql_literal(&repl_password)
        ))
        .await
        .context("create the replication role")?;
    tracing::info!(region = %inst.region, addr = %inst.addr(), "bootstrapped PostgreSQL primary");
    Ok(())
}

/// Create a replica of `primary` in `replica.data_dir` with pg_basebackup -R through a
/// replication slot, start it, and wait until it streams. In `sync` mode the primary
/// then names it in synchronous_standby_names.
pub async fn bootstrap_replica(
    bin: &PgBin,
    primary: &Instance,
    replica: &Instance,
    settings: &ServerSettings,
    mode: ReplicationMode,
) -> Result<()> {
    let dir = replica.data_dir()?.clone();
    let pclient = primary.connect().await?;
    let pobs = observe(&pclient).await?;
    if pobs.in_recovery {
        bail!(
            "region {}'s PostgreSQL at {} is a standby, not a primary: a replica cannot be bootstrapped from it",
            primary.region,
            primary.addr()
        );
    }
    let slot = replica.slot_name();
    // A slot left by an earlier replica of this region would make -C fail.
    pclient
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
            &[&slot],
        )
        .await
        .context("drop a stale replication slot")?;
    prepare_empty_dir(&dir)?;
    let repl_password = primary.replication_password_value()?;
    let port = primary.port.to_string();
    bin.run(
        "pg_basebackup",
        [
            "-h".as_ref(),
            primary.host.as_ref(),
            "-p".as_ref(),
            port.as_ref(),
            "-U".as_ref(),
            primary.replication_user.as_ref(),
            "-D".as_ref(),
            dir.as_os_str(),
            "-X".as_ref(),
            "stream".as_ref(),
            "-c".as_ref(),
            "fast".as_ref(),
            "-R".as_ref(),
            "-C".as_ref(),
            "-S".as_ref(),
            slot.as_ref(),
            "--no-password".as_ref(),
        ],
        &[("PGPASSWORD", &repl_password)],
    )
    .await
    .with_context(|| {
        format!(
            "pg_basebackup from {} into {}",
            primary.addr(),
            dir.display()
        )
    })?;
    configure_standby(replica, primary, &dir, settings)?;
    server::start(bin, &dir).await?;
    wait_streaming(
        &pclient,
        &replica.application_name(),
        Duration::from_secs(60),
    )
    .await?;
    if mode == ReplicationMode::Sync {
        set_synchronous_standbys(&pclient, &[replica.application_name()]).await?;
    }
    tracing::info!(region = %replica.region, addr = %replica.addr(), primary = %primary.addr(), "bootstrapped PostgreSQL replica");
    Ok(())
}

/// Make the stopped cluster in `dir` a standby of `primary`: this instance's own
/// listen settings, primary_conninfo with its application_name, its slot, standby.signal.
pub fn configure_standby(
    local: &Instance,
    primary: &Instance,
    dir: &Path,
    settings: &ServerSettings,
) -> Result<()> {
    server::write_lifeboat_conf(local, dir, settings)?;
    let conninfo = primary.replication_conninfo(&local.application_name())?;
    server::set_auto_conf(
        dir,
        &[
            ("primary_conninfo", Some(&conninfo)),
            ("primary_slot_name", Some(&local.slot_name())),
            ("synchronous_standby_names", None),
        ],
    )?;
    write_pg_file(&dir.join("standby.signal"), "")?;
    Ok(())
}

/// `synchronous_standby_names` on a primary: any one of `apps` must confirm each
/// commit (empty: asynchronous). Applied with ALTER SYSTEM and a reload.
pub async fn set_synchronous_standbys(client: &Client, apps: &[String]) -> Result<()> {
    let value = if apps.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = apps.iter().map(|a| sql_ident(a)).collect();
        format!("ANY 1 ({})", names.join(", "))
    };
    // ALTER SYSTEM cannot run in a multi-statement (implicitly transactional) batch.
    for stmt in [
        format!(
            "ALTER SYSTEM SET synchronous_standby_names = {}",
            sql_literal(&value)
        ),
        "ALTER SYSTEM SET synchronous_commit = 'on'".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        client
            .batch_execute(&stmt)
            .await
            .context("set synchronous_standby_names")?;
    }
    // The reload is asynchronous: wait until this session sees it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now: String = client
            .query_one("SELECT current_setting('synchronous_standby_names')", &[])
            .await?
            .get(0);
        if now == value {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "synchronous_standby_names did not become {value:?} after a reload (it is {now:?})"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until the primary behind `client` lists `app` as streaming.
pub async fn wait_streaming(client: &Client, app: &str, within: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let row = client
            .query_opt(
                "SELECT state FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'",
                &[&app],
            )
            .await
            .context("read pg_stat_replication")?;
        if row.is_some() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("standby {app:?} is not streaming after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What an adopted server turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopted {
    Primary,
    Standby,
}

/// Connect to an existing server lifeboat did not create and check that it is what
/// the config says (`expect_primary`), that it can replicate, and (for a primary) that
/// its replication role exists.
pub async fn adopt(inst: &Instance, expect_primary: bool) -> Result<Adopted> {
    let client = inst.connect().await?;
    let obs = observe(&client).await?;
    let wal_level: String = client.query_one("SHOW wal_level", &[]).await?.get(0);
    if wal_level == "minimal" {
        bail!(
            "region {}'s PostgreSQL at {} has wal_level = minimal: streaming replication needs replica or logical",
            inst.region,
            inst.addr()
        );
    }
    match (expect_primary, obs.in_recovery) {
        (true, true) => Err(anyhow!(
            "region {} is configured as the active region, but its PostgreSQL at {} is a standby (pg_is_in_recovery() = true)",
            inst.region,
            inst.addr()
        )),
        (false, false) => Err(anyhow!(
            "region {} is configured as a standby, but its PostgreSQL at {} is a primary (pg_is_in_recovery() = false): refusing to adopt it, two primaries would be a split brain",
            inst.region,
            inst.addr()
        )),
        (true, false) => {
            let ok = client
                .query_opt(
                    "SELECT 1 FROM pg_roles WHERE rolname = $1 AND rolreplication AND rolcanlogin",
                    &[&inst.replication_user],
                )
                .await?
                .is_some();
            if !ok {
                bail!(
                    "region {}'s PostgreSQL at {} has no login role {:?} with REPLICATION for its standby",
                    inst.region,
                    inst.addr(),
                    inst.replication_user
                );
            }
            Ok(Adopted::Primary)
        }
        (false, true) => Ok(Adopted::Standby),
    }
}

fn prepare_empty_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if dir.join("PG_VERSION").exists() {
        bail!(
            "{} already holds a PostgreSQL cluster: lifeboat never overwrites one (adopt it, or move it away)",
            dir.display()
        );
    }
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{} is not empty: lifeboat bootstraps only into an empty directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    give_to_postgres(dir)?;
    check_postgres_can_reach(dir)
}

/// As root, the server runs as `postgres`: every directory above the data directory
/// must let that user through, or initdb fails with an obscure "permission denied".
fn check_postgres_can_reach(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !crate::exec::is_root() {
        return Ok(());
    }
    let (uid, gid) = crate::exec::postgres_ids()?;
    for ancestor in dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(ancestor) else {
            continue;
        };
        let mode = meta.mode();
        let passable = mode & 0o001 != 0
            || (meta.uid() == uid && mode & 0o100 != 0)
            || (meta.gid() == gid && mode & 0o010 != 0);
        if !passable {
            bail!(
                "the postgres user cannot enter {} (mode {:o}, owner uid {}), so PostgreSQL cannot use {}: make it traversable (chmod o+x) or put data_dir elsewhere",
                ancestor.display(),
                mode & 0o7777,
                meta.uid(),
                dir.display()
            );
        }
    }
    Ok(())
}

/// Bootstrap `region`'s server as the config describes it: the initially active region
/// gets a primary, any other region a replica of the active one (which must be up).
pub async fn bootstrap_region(
    cfg: &lifeboat_config::Config,
    region: &lifeboat_core::RegionId,
) -> Result<()> {
    let pg = postgres_section(cfg)?;
    let bin = PgBin::locate(pg.bin_dir.as_deref())?;
    let settings = ServerSettings {
        wal_keep_size_mb: pg.wal_keep_size_mb,
    };
    let local = Instance::from_region(cfg, region)?;
    let active = cfg
        .initial_active()
        .context("no region has role = \"active\"")?;
    if &active == region {
        bootstrap_primary(&bin, &local, &settings).await
    } else {
        let primary = Instance::from_region(cfg, &active)?;
        let mode = cfg.database.as_ref().map(|d| d.mode).unwrap_or_default();
        bootstrap_replica(&bin, &primary, &local, &settings, mode).await
    }
}

/// [`adopt`] `region`'s existing server, expecting the role the config gives the region.
pub async fn adopt_region(
    cfg: &lifeboat_config::Config,
    region: &lifeboat_core::RegionId,
) -> Result<Adopted> {
    let local = Instance::from_region(cfg, region)?;
    adopt(&local, cfg.initial_active().as_ref() == Some(region)).await
}

pub(crate) fn postgres_section(
    cfg: &lifeboat_config::Config,
) -> Result<&lifeboat_config::postgres::PostgresConfig> {
    cfg.database
        .as_ref()
        .and_then(|d| d.postgres.as_ref())
        .ok_or_else(|| anyhow!("the config has no [database.postgres] section"))
}
