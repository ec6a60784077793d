//! What stands between a fence that did not happen (an agent that died with its server
//! writable) and two primaries: the activation refuses while another region's server
//! still takes writes; and the region guard's target is the managed `mariadbd`.
#![allow(clippy::unwrap_used)]

use lifeboat_core::{Activation, DataRole, Epoch, GuardTarget, RoleError, RoleHealth};
use lifeboat_mysql::MysqlRole;
use lifeboat_mysql::testing::{MysqlPair, PairOptions, region_a, region_b};
use mysql_async::prelude::Queryable;

fn activation(epoch: u64, forced: bool) -> Activation {
    Activation {
        epoch: Epoch(epoch),
        region: region_b(),
        forced,
    }
}

#[tokio::test]
async fn activation_waits_for_the_old_primary_to_stop_taking_writes() {
    let pair = MysqlPair::start(PairOptions::default()).await.unwrap();
    let role_a = MysqlRole::new(&pair.config, &region_a()).unwrap();
    let role_b = MysqlRole::new(&pair.config, &region_b()).unwrap();

    // a's guard would kill its own server, found through its pid file.
    let targets = role_a.guard_targets();
    let [GuardTarget::Process { pid_file, comm }] = targets.as_slice() else {
        panic!("one mariadbd target expected: {targets:?}");
    };
    assert_eq!(comm, "mariadbd");
    let pid: i32 = std::fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(lifeboat_mysql::server::alive(pid), "{}", pid_file.display());

    // a was never fenced (its agent died): b refuses to become a second primary.
    match role_b.activate(&activation(2, false)).await {
        Err(RoleError::NotReady { reason, .. }) => {
            assert!(reason.contains("still takes writes"), "{reason}")
        }
        other => panic!("expected NotReady, got {other:?}"),
    }
    assert_eq!(role_b.status().await.role, RoleHealth::Standby);

    // Once a stops taking writes (here: killed, as its guard does), b is promoted.
    pair.kill(&region_a());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while pair.running(&region_a()) {
        assert!(tokio::time::Instant::now() < deadline, "a survived SIGKILL");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    role_b
        .activate(&activation(2, false))
        .await
        .expect("promotion once the old primary is gone");
    let mut b = pair.admin(&region_b()).await.unwrap();
    let ro: Option<i64> = b.query_first("SELECT @@global.read_only").await.unwrap();
    assert_eq!(ro, Some(0), "b takes writes");

    // Brought back by lifeboat (a rejoin starts it), a's server is read-only.
    role_a
        .fence(Epoch(2))
        .await
        .expect("fencing a dead server succeeds");
    role_a
        .follow(&lifeboat_core::FollowTarget {
            epoch: Epoch(2),
            active: region_b(),
        })
        .await
        .expect("a rejoins b");
    let mut a = pair.admin(&region_a()).await.unwrap();
    let ro: Option<i64> = a.query_first("SELECT @@global.read_only").await.unwrap();
    assert_eq!(ro, Some(1), "a came back read-only");
}
