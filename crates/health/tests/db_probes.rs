//! Database probes against real servers: a PostgreSQL primary and its streaming replica,
//! and a MariaDB primary and replica, each started by the test in temp dirs on free
//! ports. A probe logs in and asks whether the server takes writes: `expect = "any"` is
//! healthy on both, `expect = "primary"` only on the primary; a wrong password and a
//! killed server are unhealthy with a detail that says why.

mod common;

use common::*;
use lifeboat_core::HealthStatus;
use lifeboat_mysql::testing::{MysqlPair as MyPair, PairOptions as MyPairOptions};
use lifeboat_pg::testing::{PairOptions, TestPair};
use std::path::Path;

fn db_check(
    name: &str,
    kind: &str,
    port: u16,
    user: &str,
    password_file: &Path,
    extra: &str,
) -> String {
    format!(
        "[checks.{name}]\ntype = \"{kind}\"\naddr = \"127.0.0.1:{port}\"\nuser = \"{user}\"\n\
         password_file = {:?}\ninterval = \"100ms\"\ntimeout = \"3s\"\nfailure_threshold = 1\n{extra}\n",
        password_file.display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_probe_tells_primary_from_standby_and_reports_why_it_fails() {
    let pair = TestPair::start(PairOptions::default())
        .await
        .expect("PostgreSQL primary and replica");
    let su = pair.dir().join("secrets").join("su");
    let wrong = pair.dir().join("wrong-password");
    std::fs::write(&wrong, "not-the-password\n").expect("write wrong password");
    let (a, b) = (pair.instance("a").port, pair.instance("b").port);
    let checks = [
        db_check("a-any", "postgres", a, "postgres", &su, ""),
        db_check("b-any", "postgres", b, "postgres", &su, ""),
        db_check(
            "a-primary",
            "postgres",
            a,
            "postgres",
            &su,
            "expect = \"primary\"",
        ),
        db_check(
            "b-primary",
            "postgres",
            b,
            "postgres",
            &su,
            "expect = \"primary\"",
        ),
        db_check("a-wrong", "postgres", a, "postgres", &wrong, ""),
    ]
    .join("\n");
    let mut p = start(&checks);
    let s = p.status("a-any", HealthStatus::Healthy).await;
    assert_eq!(s.detail, "answers (primary)");
    let s = p.status("b-any", HealthStatus::Healthy).await;
    assert_eq!(s.detail, "answers (standby)");
    p.status("a-primary", HealthStatus::Healthy).await;
    let s = p.status("b-primary", HealthStatus::Unhealthy).await;
    assert!(s.detail.contains("standby"), "{s:?}");
    let s = p.status("a-wrong", HealthStatus::Unhealthy).await;
    assert!(s.detail.contains("password authentication failed"), "{s:?}");
    assert!(!s.detail.contains("not-the-password"), "{s:?}");

    pair.kill9("a").await.expect("kill -9 a");
    p.status("a-any", HealthStatus::Unhealthy).await;
    // (A probe caught mid-crash says "unexpected postmaster exit"; the next ones, refused.)
    p.until("a-any", |s| {
        s.status == HealthStatus::Unhealthy && s.detail.contains("connection refused")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_probe_tells_primary_from_replica() {
    let pair = MyPair::start(MyPairOptions::default())
        .await
        .expect("MariaDB primary and replica");
    let a = pair
        .instance(&lifeboat_mysql::testing::region_a())
        .expect("instance a");
    let b = pair
        .instance(&lifeboat_mysql::testing::region_b())
        .expect("instance b");
    let pw = pair.dir().join("probe-password");
    std::fs::write(&pw, format!("{}\n", a.password)).expect("write password");
    let wrong = pair.dir().join("wrong-password");
    std::fs::write(&wrong, "not-the-password\n").expect("write wrong password");
    let checks = [
        db_check(
            "a-primary",
            "mysql",
            a.port,
            &a.user,
            &pw,
            "expect = \"primary\"",
        ),
        db_check("b-any", "mariadb", b.port, &b.user, &pw, ""),
        db_check(
            "b-primary",
            "mysql",
            b.port,
            &b.user,
            &pw,
            "expect = \"primary\"",
        ),
        db_check("a-wrong", "mysql", a.port, &a.user, &wrong, ""),
    ]
    .join("\n");
    let mut p = start(&checks);
    let s = p.status("a-primary", HealthStatus::Healthy).await;
    assert_eq!(s.detail, "answers (writable)");
    let s = p.status("b-any", HealthStatus::Healthy).await;
    assert_eq!(s.detail, "answers (read-only)");
    let s = p.status("b-primary", HealthStatus::Unhealthy).await;
    assert!(s.detail.contains("read_only is on"), "{s:?}");
    let s = p.status("a-wrong", HealthStatus::Unhealthy).await;
    assert!(s.detail.contains("Access denied"), "{s:?}");
}
