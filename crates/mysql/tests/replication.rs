//! Real MariaDB servers (started by `lifeboat_mysql::testing` in temp dirs on free
//! ports): bootstrap, lag, promotion after kill -9, fencing, split brain and rejoin,
//! semi-sync, bad input, a lagging replica.
#![allow(clippy::unwrap_used)]

use lifeboat_core::{Activation, DataRole, Epoch, FollowTarget, RoleError, RoleHealth};
use lifeboat_mysql::testing::{MysqlPair, PairOptions, region_a, region_b};
use lifeboat_mysql::{MysqlRole, adopt, bootstrap_primary, bootstrap_replica};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use std::time::Duration;
use tokio::time::Instant;

async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(c: &mut Conn, sql: &str) -> u64 {
    c.query_first::<u64, _>(sql).await.unwrap().unwrap_or(0)
}

async fn rows_on(pair: &MysqlPair, region: &lifeboat_core::RegionId) -> u64 {
    match pair.admin(region).await {
        Ok(mut c) => c
            .query_first::<u64, _>("SELECT COUNT(*) FROM app.t")
            .await
            .ok()
            .flatten()
            .unwrap_or(0),
        Err(_) => 0,
    }
}

async fn create_table(c: &mut Conn) {
    c.query_drop("CREATE DATABASE app").await.unwrap();
    c.query_drop("CREATE TABLE app.t (id INT PRIMARY KEY, v VARCHAR(64))")
        .await
        .unwrap();
}

/// Wait until `create_table`'s table has replicated to b.
async fn wait_table_on_b(pair: &MysqlPair) {
    wait_for("replication", || async {
        pair.admin(&region_b())
            .await
            .unwrap()
            .query_first::<u64, _>(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'app'",
            )
            .await
            .unwrap()
            == Some(1)
    })
    .await;
}

fn activation(epoch: u64, forced: bool) -> Activation {
    Activation {
        epoch: Epoch(epoch),
        region: region_b(),
        forced,
    }
}

#[tokio::test]
async fn bootstrap_replicates_writes_and_reports_lag() {
    let pair = MysqlPair::start(PairOptions::default()).await.unwrap();
    let mut a = pair.admin(&region_a()).await.unwrap();
    create_table(&mut a).await;
    a.query_drop("INSERT INTO app.t VALUES (1, 'written on the primary')")
        .await
        .unwrap();

    wait_for("the row on the replica", || async {
        rows_on(&pair, &region_b()).await == 1
    })
    .await;
    let mut b = pair.admin(&region_b()).await.unwrap();
    let v: Option<String> = b
        .query_first("SELECT v FROM app.t WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("written on the primary"));
    assert_eq!(
        count(&mut b, "SELECT @@read_only").await,
        1,
        "the replica is read-only"
    );
    assert_eq!(count(&mut b, "SELECT @@gtid_strict_mode").await, 1);

    let role_b = MysqlRole::new(&pair.config, &region_b()).unwrap();
    let role_a = MysqlRole::new(&pair.config, &region_a()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let st = loop {
        let st = role_b.status().await;
        if st.caught_up {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the standby never caught up: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(st.role, RoleHealth::Standby, "{st:?}");
    assert_eq!(st.lag_seconds, Some(0.0), "{st:?}");
    assert_eq!(st.lag_bytes, Some(0), "{st:?}");
    assert!(st.ready_to_promote, "{st:?}");
    assert_eq!(
        st.metrics.get("unapplied_transactions"),
        Some(&0.0),
        "{st:?}"
    );
    let sa = role_a.status().await;
    assert_eq!(sa.role, RoleHealth::Primary, "{sa:?}");

    // Adoption of the existing pair checks each server is what the config says.
    adopt(&pair.config, &region_a()).await.unwrap();
    adopt(&pair.config, &region_b()).await.unwrap();
}

#[tokio::test]
async fn kill_9_of_the_primary_then_activate_promotes_the_replica() {
    let pair = MysqlPair::start(PairOptions::default()).await.unwrap();
    let mut a = pair.admin(&region_a()).await.unwrap();
    create_table(&mut a).await;
    for i in 0..20 {
        a.query_drop(format!("INSERT INTO app.t VALUES ({i}, 'before')"))
            .await
            .unwrap();
    }
    wait_for("replication", || async {
        rows_on(&pair, &region_b()).await == 20
    })
    .await;
    drop(a);

    pair.kill(&region_a());
    wait_for("the primary to die", || async {
        !pair.running(&region_a())
    })
    .await;

    let role_a = MysqlRole::new(&pair.config, &region_a()).unwrap();
    role_a
        .fence(Epoch(2))
        .await
        .expect("fencing a dead managed server succeeds");
    let role_b = MysqlRole::new(&pair.config, &region_b()).unwrap();
    role_b
        .activate(&activation(2, false))
        .await
        .expect("promotion");

    let mut b = pair.admin(&region_b()).await.unwrap();
    b.query_drop("INSERT INTO app.t VALUES (100, 'after failover')")
        .await
        .expect("writes succeed on the new primary");
    assert_eq!(count(&mut b, "SELECT COUNT(*) FROM app.t").await, 21);
    let st = role_b.status().await;
    assert_eq!(st.role, RoleHealth::Primary, "{st:?}");
    // Promoting again is a no-op; an older epoch is refused.
    role_b
        .activate(&activation(2, false))
        .await
        .expect("idempotent");
    match role_b.activate(&activation(1, false)).await {
        Err(RoleError::StaleEpoch { got, seen }) => assert_eq!((got, seen), (Epoch(1), Epoch(2))),
        other => panic!("expected StaleEpoch, got {other:?}"),
    }
}

#[tokio::test]
async fn fence_of_an_adopted_server_stops_an_open_super_session() {
    let opts = PairOptions {
        managed: false,
        ..PairOptions::default()
    };
    let pair = MysqlPair::start_primary(opts).await.unwrap();
    pair.create_super_user(&region_a(), "app", "app-pw")
        .await
        .unwrap();
    let mut app = pair.connect_as(&region_a(), "app", "app-pw").await.unwrap();
    create_table(&mut app).await;
    app.query_drop("INSERT INTO app.t VALUES (1, 'before the fence')")
        .await
        .unwrap();
    assert_eq!(count(&mut app, "SELECT COUNT(*) FROM information_schema.USER_PRIVILEGES WHERE PRIVILEGE_TYPE = 'SUPER' AND GRANTEE = \"'app'@'%'\"").await, 1);

    let before: String = app
        .query_first("SELECT @@gtid_binlog_pos")
        .await
        .unwrap()
        .unwrap();
    let role = MysqlRole::new(&pair.config, &region_a()).unwrap();
    role.fence(Epoch(3)).await.expect("fence");

    // The SUPER session that was already open cannot write, not even after trying to
    // undo read_only, and the account cannot log in again.
    let write = app.query_drop("SET GLOBAL read_only = 0").await;
    assert!(write.is_err(), "the open SUPER session survived the fence");
    let write = app
        .query_drop("INSERT INTO app.t VALUES (2, 'after the fence')")
        .await;
    assert!(write.is_err(), "a SUPER session wrote after the fence");
    let again = pair.connect_as(&region_a(), "app", "app-pw").await;
    let err = again
        .expect_err("the app account must be locked out")
        .to_string();
    assert!(err.contains("locked") || err.contains("refused"), "{err}");
    let st = role.status().await;
    assert_eq!(st.role, RoleHealth::Fenced, "{st:?}");
    role.fence(Epoch(3)).await.expect("fence is idempotent");

    let mut admin = pair.admin(&region_a()).await.unwrap();
    assert_eq!(
        count(&mut admin, "SELECT COUNT(*) FROM app.t").await,
        1,
        "no write got through"
    );
    let after: String = admin
        .query_first("SELECT @@gtid_binlog_pos")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        after, before,
        "the fence itself must not write to the binlog"
    );

    // Activating the region again reopens it for the application.
    role.activate(&Activation {
        epoch: Epoch(4),
        region: region_a(),
        forced: false,
    })
    .await
    .expect("activate");
    let mut app = pair
        .connect_as(&region_a(), "app", "app-pw")
        .await
        .expect("unlocked");
    app.query_drop("INSERT INTO app.t VALUES (3, 'reactivated')")
        .await
        .unwrap();
}

#[tokio::test]
async fn split_brain_then_rejoin_keeps_the_errant_transactions() {
    let pair = MysqlPair::start(PairOptions::default()).await.unwrap();
    let mut a = pair.admin(&region_a()).await.unwrap();
    create_table(&mut a).await;
    for i in 0..5 {
        a.query_drop(format!("INSERT INTO app.t VALUES ({i}, 'common-{i}')"))
            .await
            .unwrap();
    }
    wait_for("replication", || async {
        rows_on(&pair, &region_b()).await == 5
    })
    .await;

    // Partition: the replica stops receiving, the old primary keeps taking writes.
    let mut b = pair.admin(&region_b()).await.unwrap();
    b.query_drop("STOP SLAVE IO_THREAD").await.unwrap();
    pair.create_super_user(&region_a(), "app", "app-pw")
        .await
        .unwrap();
    let mut app = pair.connect_as(&region_a(), "app", "app-pw").await.unwrap();
    for i in 100..107 {
        app.query_drop(format!("INSERT INTO app.t VALUES ({i}, 'errant-{i}')"))
            .await
            .unwrap();
    }

    // The old primary is fenced (managed: stopped): its open SUPER session cannot write.
    let role_a = MysqlRole::new(&pair.config, &region_a()).unwrap();
    role_a.fence(Epoch(2)).await.expect("fence");
    assert!(
        !pair.running(&region_a()),
        "a fenced managed server is stopped"
    );
    assert!(
        app.query_drop("INSERT INTO app.t VALUES (999, 'x')")
            .await
            .is_err()
    );

    let role_b = MysqlRole::new(&pair.config, &region_b()).unwrap();
    role_b
        .activate(&activation(2, false))
        .await
        .expect("promotion");
    for i in 200..203 {
        b.query_drop(format!("INSERT INTO app.t VALUES ({i}, 'new-primary-{i}')"))
            .await
            .unwrap();
    }

    role_a
        .follow(&FollowTarget {
            epoch: Epoch(2),
            active: region_b(),
        })
        .await
        .expect("rejoin");
    let report = role_a.last_rejoin().expect("a rejoin report");
    assert_eq!(report.errant_count, 7, "{report:?}");
    assert_eq!(report.errant_ddl, 0);
    let kept = report.kept_in.clone().expect("kept somewhere");
    let sql = std::fs::read_to_string(kept.join("errant-transactions.sql")).unwrap();
    for i in 100..107 {
        assert!(
            sql.contains(&format!("errant-{i}")),
            "errant row {i} not kept:\n{sql}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(kept.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["errant_count"], 7);
    assert!(kept.join("flashback.sql").is_file());

    // a now follows b: it has b's rows, not the errant ones, and gets new writes.
    b.query_drop("INSERT INTO app.t VALUES (300, 'after rejoin')")
        .await
        .unwrap();
    wait_for("the rejoined replica to catch up", || async {
        rows_on(&pair, &region_a()).await == 9
    })
    .await;
    let mut a = pair.admin(&region_a()).await.unwrap();
    assert_eq!(
        count(
            &mut a,
            "SELECT COUNT(*) FROM app.t WHERE id >= 100 AND id < 200"
        )
        .await,
        0
    );
    assert_eq!(
        count(&mut a, "SELECT COUNT(*) FROM app.t WHERE id = 300").await,
        1
    );
    let st = role_a.status().await;
    assert_eq!(st.role, RoleHealth::Standby, "{st:?}");
    assert_eq!(
        st.metrics.get("errant_transactions_kept"),
        Some(&7.0),
        "{st:?}"
    );

    // The kept transactions replay: applied to the new primary they bring the rows back.
    let out = std::process::Command::new("mariadb")
        .args(["-h127.0.0.1", &format!("-P{}", pair.ports[1]), "-ulifeboat"])
        .env("MYSQL_PWD", lifeboat_mysql::testing::ADMIN_PASSWORD)
        .stdin(std::fs::File::open(kept.join("replay.sql")).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        count(&mut b, "SELECT COUNT(*) FROM app.t WHERE v LIKE 'errant-%'").await,
        7
    );
}

/// The drill's "unknown outcome" case: the primary is cut off from its replica while a
/// commit waits for the semi-sync acknowledgement, so the write is in the old primary's
/// binlog but nowhere else; it is fenced, the replica is promoted, and the client writes
/// the same key again there. The old primary's rejoin must set its copy aside (errant),
/// or its SQL thread stops on a duplicate key and it never converges.
#[tokio::test]
async fn an_unacknowledged_write_written_again_on_the_new_primary_does_not_stop_the_rejoin() {
    let opts = PairOptions {
        semi_sync: true,
        semi_sync_timeout: "60s".into(),
        ..PairOptions::default()
    };
    let pair = MysqlPair::start(opts).await.unwrap();
    let mut a = pair.admin(&region_a()).await.unwrap();
    create_table(&mut a).await;
    for i in 0..5 {
        a.query_drop(format!("INSERT INTO app.t VALUES ({i}, 'common')"))
            .await
            .unwrap();
    }
    wait_for("replication", || async {
        rows_on(&pair, &region_b()).await == 5
    })
    .await;

    // Partition: b stops receiving; a's next commit waits for an acknowledgement (as
    // with `[database] strict`, it waits with no replica connected too).
    a.query_drop("SET GLOBAL rpl_semi_sync_master_wait_no_slave = ON")
        .await
        .unwrap();
    let mut b = pair.admin(&region_b()).await.unwrap();
    b.query_drop("STOP SLAVE IO_THREAD").await.unwrap();
    let mut app = pair.admin(&region_a()).await.unwrap();
    let pending = tokio::spawn(async move {
        app.query_drop("INSERT INTO app.t VALUES (197, 'unacknowledged')")
            .await
    });
    wait_for("the commit to wait for its acknowledgement", || async {
        let mut c = pair.admin(&region_a()).await.unwrap();
        let row: Option<(String, String)> = c
            .query_first("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_wait_sessions'")
            .await
            .unwrap();
        row.is_some_and(|(_, v)| v != "0")
    })
    .await;

    let role_a = MysqlRole::new(&pair.config, &region_a()).unwrap();
    role_a.fence(Epoch(2)).await.expect("fence");
    // Whatever the client was told, it never saw an acknowledgement it could trust.
    let _ = pending.await.unwrap();

    let role_b = MysqlRole::new(&pair.config, &region_b()).unwrap();
    role_b
        .activate(&activation(2, false))
        .await
        .expect("promotion");
    let mut b = pair.admin(&region_b()).await.unwrap();
    b.query_drop("INSERT INTO app.t VALUES (197, 'written again')")
        .await
        .unwrap();
    b.query_drop("INSERT INTO app.t VALUES (198, 'after')")
        .await
        .unwrap();

    role_a
        .follow(&FollowTarget {
            epoch: Epoch(2),
            active: region_b(),
        })
        .await
        .expect("rejoin");
    let report = role_a.last_rejoin().expect("a rejoin report");
    assert_eq!(report.errant_count, 1, "{report:?}");
    b.query_drop("INSERT INTO app.t VALUES (199, 'after rejoin')")
        .await
        .unwrap();
    wait_for("the rejoined replica to catch up", || async {
        rows_on(&pair, &region_a()).await == 8
    })
    .await;
    let mut a = pair.admin(&region_a()).await.unwrap();
    let v: Option<String> = a
        .query_first("SELECT v FROM app.t WHERE id = 197")
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("written again"));
    let st = role_a.status().await;
    assert_eq!(st.role, RoleHealth::Standby, "{st:?}");
}

#[tokio::test]
async fn semi_sync_acknowledged_writes_survive_kill_9() {
    let opts = PairOptions {
        semi_sync: true,
        semi_sync_timeout: "60s".into(),
        ..PairOptions::default()
    };
    let pair = MysqlPair::start(opts).await.unwrap();
    let mut a = pair.admin(&region_a()).await.unwrap();
    let status: Option<(String, String)> = a
        .query_first("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_status'")
        .await
        .unwrap();
    assert_eq!(status.unwrap().1, "ON");
    create_table(&mut a).await;
    let mut acknowledged = Vec::new();
    for i in 0..300 {
        if a.query_drop(format!("INSERT INTO app.t VALUES ({i}, 'acked')"))
            .await
            .is_ok()
        {
            acknowledged.push(i);
        }
    }
    assert_eq!(acknowledged.len(), 300);
    let no_tx: Option<(String, String)> = a
        .query_first("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_no_tx'")
        .await
        .unwrap();
    assert_eq!(no_tx.unwrap().1, "0", "some commits fell back to async");
    pair.kill(&region_a());
    wait_for("the primary to die", || async {
        !pair.running(&region_a())
    })
    .await;

    let role_b = MysqlRole::new(&pair.config, &region_b()).unwrap();
    role_b
        .activate(&activation(2, false))
        .await
        .expect("promotion");
    let mut b = pair.admin(&region_b()).await.unwrap();
    let ids: Vec<i32> = b.query("SELECT id FROM app.t ORDER BY id").await.unwrap();
    assert_eq!(ids, acknowledged, "acknowledged writes lost");
    // With no replica left the new primary runs unprotected (not strict), openly.
    let st = role_b.status().await;
    assert_eq!(st.role, RoleHealth::Primary, "{st:?}");
    assert_eq!(st.metrics.get("unprotected"), Some(&1.0), "{st:?}");
    assert!(st.detail.contains("unprotected"), "{st:?}");
    b.query_drop("INSERT INTO app.t VALUES (1000, 'after')")
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_input_gives_clear_errors() {
    // A pair where both servers were bootstrapped as primaries: b is configured as a's
    // replica but is really a primary with its own transactions.
    let pair = MysqlPair::prepare(&PairOptions::default()).unwrap();
    bootstrap_primary(&pair.managed_config, &region_a())
        .await
        .unwrap();
    bootstrap_primary(&pair.managed_config, &region_b())
        .await
        .unwrap();
    let mut b = pair.admin(&region_b()).await.unwrap();
    b.query_drop("CREATE DATABASE own").await.unwrap();

    let err = adopt(&pair.config, &region_b())
        .await
        .expect_err("must refuse")
        .to_string();
    assert!(
        err.contains("configured as a replica") && err.contains("writable primary"),
        "{err}"
    );
    let err = bootstrap_replica(&pair.managed_config, &region_b(), &region_a())
        .await
        .expect_err("must refuse")
        .to_string();
    assert!(err.contains("configured as a replica"), "{err}");

    // Wrong password.
    std::fs::write(pair.dir().join("admin.pw"), "not-the-password\n").unwrap();
    let err = format!(
        "{:#}",
        adopt(&pair.config, &region_a())
            .await
            .expect_err("must refuse")
    );
    assert!(
        err.contains("Access denied") && err.contains("region a"),
        "{err}"
    );
    let role = MysqlRole::new(&pair.config, &region_a()).unwrap();
    match role
        .activate(&Activation {
            epoch: Epoch(1),
            region: region_a(),
            forced: false,
        })
        .await
    {
        Err(RoleError::Failed { message, .. }) => {
            assert!(message.contains("Access denied"), "{message}")
        }
        other => panic!("expected a login failure, got {other:?}"),
    }
    std::fs::write(
        pair.dir().join("admin.pw"),
        format!("{}\n", lifeboat_mysql::testing::ADMIN_PASSWORD),
    )
    .unwrap();

    // Unreachable server.
    pair.kill(&region_a());
    wait_for("the server to die", || async { !pair.running(&region_a()) }).await;
    let err = format!(
        "{:#}",
        adopt(&pair.config, &region_a())
            .await
            .expect_err("must refuse")
    );
    assert!(
        err.contains("unreachable") && err.contains("region a"),
        "{err}"
    );
    let st = role.status().await;
    assert_eq!(st.health, lifeboat_core::HealthStatus::Unhealthy, "{st:?}");
    assert!(!st.ready_to_promote);
}

#[tokio::test]
async fn a_lagging_replica_is_promoted_only_when_forced() {
    let opts = PairOptions {
        max_lag: Some("1s".into()),
        ..PairOptions::default()
    };
    let pair = MysqlPair::start(opts).await.unwrap();
    let mut a = pair.admin(&region_a()).await.unwrap();
    create_table(&mut a).await;
    wait_table_on_b(&pair).await;
    let mut b = pair.admin(&region_b()).await.unwrap();
    b.query_drop("STOP SLAVE").await.unwrap();
    b.query_drop("CHANGE MASTER TO MASTER_DELAY = 3600")
        .await
        .unwrap();
    b.query_drop("START SLAVE").await.unwrap();
    a.query_drop("INSERT INTO app.t VALUES (1, 'delayed')")
        .await
        .unwrap();

    let role_b = MysqlRole::new(&pair.config, &region_b()).unwrap();
    wait_for(
        "the replica to receive the row and report it is not ready",
        || async {
            let st = role_b.status().await;
            st.role == RoleHealth::Standby
                && !st.ready_to_promote
                && st
                    .metrics
                    .get("unapplied_transactions")
                    .copied()
                    .unwrap_or(0.0)
                    >= 1.0
        },
    )
    .await;
    match role_b.activate(&activation(2, false)).await {
        Err(RoleError::NotReady { reason, .. }) => assert!(
            reason.contains("lag") || reason.contains("delay"),
            "{reason}"
        ),
        other => panic!("expected NotReady, got {other:?}"),
    }
    assert_eq!(
        role_b.status().await.role,
        RoleHealth::Standby,
        "not promoted"
    );
    assert_eq!(rows_on(&pair, &region_b()).await, 0);

    role_b
        .activate(&activation(2, true))
        .await
        .expect("forced promotion");
    assert_eq!(role_b.status().await.role, RoleHealth::Primary);
    assert_eq!(
        rows_on(&pair, &region_b()).await,
        1,
        "the received row was applied, not dropped"
    );
    b = pair.admin(&region_b()).await.unwrap();
    b.query_drop("INSERT INTO app.t VALUES (2, 'forced')")
        .await
        .unwrap();
}

#[tokio::test]
async fn switchover_then_rejoin_without_errant_transactions_restores_semi_sync() {
    let opts = PairOptions {
        semi_sync: true,
        ..PairOptions::default()
    };
    let pair = MysqlPair::start(opts).await.unwrap();
    let mut a = pair.admin(&region_a()).await.unwrap();
    create_table(&mut a).await;
    a.query_drop("INSERT INTO app.t VALUES (1, 'before')")
        .await
        .unwrap();
    drop(a);

    let role_a = MysqlRole::new(&pair.config, &region_a()).unwrap();
    let role_b = MysqlRole::new(&pair.config, &region_b()).unwrap();
    role_a.fence(Epoch(2)).await.unwrap();
    role_b.activate(&activation(2, false)).await.unwrap();
    role_a
        .follow(&FollowTarget {
            epoch: Epoch(2),
            active: region_b(),
        })
        .await
        .expect("rejoin");
    let report = role_a.last_rejoin().expect("report");
    assert_eq!(report.errant_count, 0, "{report:?}");
    assert!(report.kept_in.is_none());

    let mut b = pair.admin(&region_b()).await.unwrap();
    b.query_drop("INSERT INTO app.t VALUES (2, 'after switchover')")
        .await
        .unwrap();
    wait_for("the old primary to replicate from the new one", || async {
        rows_on(&pair, &region_a()).await == 2
    })
    .await;
    wait_for("semi-sync to protect the new primary again", || async {
        role_b.status().await.metrics.get("unprotected") == Some(&0.0)
    })
    .await;
    let st = role_a.status().await;
    assert_eq!(st.role, RoleHealth::Standby, "{st:?}");
    // Following again is a no-op.
    role_a
        .follow(&FollowTarget {
            epoch: Epoch(2),
            active: region_b(),
        })
        .await
        .expect("idempotent follow");
}

#[tokio::test]
async fn errant_ddl_is_kept_and_the_rejoin_refuses_to_guess() {
    let pair = MysqlPair::start(PairOptions::default()).await.unwrap();
    let mut a = pair.admin(&region_a()).await.unwrap();
    create_table(&mut a).await;
    wait_table_on_b(&pair).await;
    let mut b = pair.admin(&region_b()).await.unwrap();
    b.query_drop("STOP SLAVE IO_THREAD").await.unwrap();
    a.query_drop("INSERT INTO app.t VALUES (1, 'errant row')")
        .await
        .unwrap();
    a.query_drop("CREATE TABLE app.errant_table (id INT PRIMARY KEY)")
        .await
        .unwrap();
    drop(a);

    let role_a = MysqlRole::new(&pair.config, &region_a()).unwrap();
    let role_b = MysqlRole::new(&pair.config, &region_b()).unwrap();
    role_a.fence(Epoch(2)).await.unwrap();
    role_b.activate(&activation(2, false)).await.unwrap();
    let err = role_a
        .follow(&FollowTarget {
            epoch: Epoch(2),
            active: region_b(),
        })
        .await
        .expect_err("errant DDL cannot be undone automatically");
    let msg = err.to_string();
    assert!(
        msg.contains("2 errant transactions") && msg.contains("DDL"),
        "{msg}"
    );
    // Kept all the same, and the old primary stays read-only and out of replication.
    let keep = pair.dir().join("keep");
    let dir = std::fs::read_dir(&keep)
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("errant-a-"))
        .expect("an errant directory")
        .path();
    let sql = std::fs::read_to_string(dir.join("errant-transactions.sql")).unwrap();
    assert!(
        sql.contains("errant_table") && sql.contains("errant row"),
        "{sql}"
    );
    let mut a = pair.admin(&region_a()).await.unwrap();
    assert_eq!(count(&mut a, "SELECT @@read_only").await, 1);
    assert_eq!(
        count(&mut a, "SELECT COUNT(*) FROM app.t").await,
        1,
        "nothing undone"
    );
}

/// SIGCONTs the frozen server on drop, also when the test fails.
struct Frozen(i32);

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGCONT,
        );
    }
}

/// A frozen server (SIGSTOP: a stalled VM, a hung disk) is reported by MariaDB's own
/// status, naming the server, inside the deadline the agent gives every role: a bound
/// longer than the agent's could never fire, leaving only "status timed out".
#[tokio::test]
async fn a_frozen_server_is_reported_within_the_agents_status_deadline() {
    let pair = MysqlPair::start_primary(PairOptions::default())
        .await
        .unwrap();
    let role = MysqlRole::new(&pair.config, &region_a()).unwrap();
    assert_eq!(role.status().await.role, RoleHealth::Primary);
    let pid = pair
        .files(&region_a())
        .running_pid()
        .expect("mariadbd runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let frozen = Frozen(pid);
    let st = tokio::time::timeout(lifeboat_core::STATUS_DEADLINE, role.status())
        .await
        .expect("MariaDB's own status answers before the agent's deadline");
    assert_eq!(st.health, lifeboat_core::HealthStatus::Unhealthy, "{st:?}");
    assert!(st.detail.contains("did not answer within"), "{st:?}");
    let inst = pair.instance(&region_a()).unwrap();
    assert!(
        st.detail.contains(&inst.port.to_string()),
        "names the server: {st:?}"
    );
    drop(frozen);
    wait_for("the thawed server to report primary again", || async {
        role.status().await.role == RoleHealth::Primary
    })
    .await;
}
