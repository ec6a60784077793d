//! End-to-end behaviour of lifeboat-pg on real PostgreSQL clusters (one pair per test,
//! in its own temp dir on its own ports, stopped on Drop).

use lifeboat_config::database::ReplicationMode;
use lifeboat_core::{Activation, DataRole, Epoch, FollowTarget, RegionId, RoleError, RoleHealth};
use lifeboat_pg::testing::{PairOptions, TestPair, free_port};
use lifeboat_pg::{Instance, PgError, PostgresRole};
use std::time::Duration;
use tokio_postgres::Client;

async fn pair(opts: PairOptions) -> TestPair {
    TestPair::start(opts)
        .await
        .expect("start a PostgreSQL pair")
}

/// Poll `f` until it returns Some, for up to 60 s.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn count(c: &Client, table: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0)
}

async fn wait_rows(pair: &TestPair, region: &str, table: &str, n: i64) {
    let inst = pair.instance(region);
    eventually(&format!("{n} rows in {table} on {region}"), || {
        let inst = inst.clone();
        let table = table.to_owned();
        async move {
            let c = inst.connect().await.ok()?;
            let got: i64 = c
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .ok()?
                .get(0);
            (got == n).then_some(())
        }
    })
    .await;
}

fn activation(epoch: u64, region: &str, forced: bool) -> Activation {
    Activation {
        epoch: Epoch(epoch),
        region: RegionId::new(region),
        forced,
    }
}

#[tokio::test]
async fn bootstrap_replicates_and_reports_lag_from_both_sides() {
    let pair = pair(PairOptions::default()).await;
    let a = pair.client("a").await.expect("connect a");
    // Bootstrapped as asked: checksums on, socket inside the data directory.
    let checksums: String = a
        .query_one("SHOW data_checksums", &[])
        .await
        .expect("show")
        .get(0);
    assert_eq!(checksums, "on");
    let port = pair.instance("a").port;
    assert!(
        pair.data_dir("a")
            .join("pg_stat_tmp")
            .join(format!(".s.PGSQL.{port}"))
            .exists(),
        "unix socket in the data dir"
    );
    let (app, slot_active): (String, bool) = {
        let r = a
            .query_one(
                "SELECT r.application_name, s.active FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid",
                &[],
            )
            .await
            .expect("replication through a slot");
        (r.get(0), r.get(1))
    };
    assert_eq!(app, "lifeboat_b");
    assert!(slot_active);

    a.batch_execute(
        "CREATE TABLE t (id int primary key, v text); INSERT INTO t VALUES (1, 'hello')",
    )
    .await
    .expect("write on the primary");
    wait_rows(&pair, "b", "t", 1).await;
    let b = pair.client("b").await.expect("connect b");
    let v: String = b
        .query_one("SELECT v FROM t WHERE id = 1", &[])
        .await
        .expect("read")
        .get(0);
    assert_eq!(v, "hello");

    let rb = pair.role("b").expect("role b");
    let st = eventually("replica caught up", || async {
        let st = rb.status().await;
        st.caught_up.then_some(st)
    })
    .await;
    assert_eq!(st.role, RoleHealth::Standby, "{st:?}");
    assert_eq!(st.lag_bytes, Some(0), "{st:?}");
    assert_eq!(st.lag_seconds, Some(0.0), "{st:?}");
    assert!(st.ready_to_promote, "{st:?}");
    assert_eq!(st.metrics.get("pg_streaming"), Some(&1.0), "{st:?}");

    // Replay held back: lag appears in bytes and seconds on both sides.
    b.batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .expect("pause replay");
    a.batch_execute("INSERT INTO t SELECT g, 'x' FROM generate_series(2, 500) g")
        .await
        .expect("write");
    let st = eventually("lag visible", || async {
        let st = rb.status().await;
        (st.lag_bytes.unwrap_or(0) > 0).then_some(st)
    })
    .await;
    assert!(!st.caught_up && !st.ready_to_promote, "{st:?}");
    assert!(st.detail.contains("paused"), "{st:?}");
    // Not caught up: lag in seconds is the age of the last replayed commit.
    assert!(st.lag_seconds.unwrap_or(0.0) > 0.0, "{st:?}");
    let pst = pair.role("a").expect("role a").status().await;
    assert_eq!(pst.role, RoleHealth::Primary, "{pst:?}");
    assert!(
        pst.lag_bytes.unwrap_or(0) > 0,
        "primary sees the standby's lag: {pst:?}"
    );
    assert_eq!(
        pst.metrics.get("pg_standbys_streaming"),
        Some(&1.0),
        "{pst:?}"
    );
    b.batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .expect("resume");
    wait_rows(&pair, "b", "t", 500).await;
}

#[tokio::test]
async fn kill9_of_the_primary_then_activate_promotes_the_replica() {
    let pair = pair(PairOptions::default()).await;
    let a = pair.client("a").await.expect("connect a");
    a.batch_execute(
        "CREATE TABLE t (id int primary key); INSERT INTO t SELECT generate_series(1, 10)",
    )
    .await
    .expect("write");
    wait_rows(&pair, "b", "t", 10).await;
    drop(a);
    pair.kill9("a")
        .await
        .expect("kill -9 the primary's postmaster");

    let rb = pair.role("b").expect("role b");
    let st = rb.status().await;
    assert!(
        st.ready_to_promote,
        "a caught-up standby with a dead primary is ready: {st:?}"
    );
    rb.activate(&activation(1, "b", false))
        .await
        .expect("promote b");
    let b = pair.client("b").await.expect("connect b");
    b.batch_execute("INSERT INTO t VALUES (11)")
        .await
        .expect("b takes writes");
    assert_eq!(count(&b, "t").await, 11);
    assert_eq!(rb.status().await.role, RoleHealth::Primary);
    // Idempotent, and an older epoch is refused.
    rb.activate(&activation(1, "b", false))
        .await
        .expect("activate again");
    let err = rb
        .activate(&activation(0, "b", false))
        .await
        .expect_err("stale epoch");
    assert!(matches!(err, RoleError::StaleEpoch { .. }), "{err}");

    // The crashed old primary comes back: crash recovery without opening it to
    // clients, then rewind and rejoin as b's standby. No row of t was lost.
    let ra = pair.role("a").expect("role a");
    ra.follow(&FollowTarget {
        epoch: Epoch(1),
        active: RegionId::new("b"),
    })
    .await
    .expect("rejoin a");
    let report = ra.last_rejoin_report().expect("report");
    assert_eq!(report.tables.get("public.t"), None, "{report:?}");
    // The crash recovery wrote past the fork (its end-of-recovery checkpoint) and
    // nothing else: reported, but no copy of the whole data directory — one per
    // rejoin filled the disk of a deployment that failed over a few dozen times.
    assert!(report.divergent_bytes > 0, "{report:?}");
    assert_eq!(report.divergent_commits, 0, "{report:?}");
    assert!(
        report.kept_copy.is_none(),
        "nothing worth a copy: {report:?}"
    );
    assert!(!report.report_dir.join("old-data-dir").exists());
    assert!(report.report_dir.join("report.json").is_file());
    assert!(report.report_dir.join("divergent-wal.txt").is_file());
    wait_rows(&pair, "a", "t", 11).await;
    assert_eq!(ra.status().await.role, RoleHealth::Standby);
}

#[tokio::test]
async fn clean_switchover_loses_nothing_and_reverses_replication() {
    let pair = pair(PairOptions::default()).await;
    let a = pair.client("a").await.expect("connect a");
    a.batch_execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)")
        .await
        .expect("write");
    drop(a);
    let (ra, rb) = (
        pair.role("a").expect("role a"),
        pair.role("b").expect("role b"),
    );
    ra.fence(Epoch(1)).await.expect("fence a");
    // A fast shutdown sends everything to the standby first.
    let st = eventually("b caught up", || async {
        let st = rb.status().await;
        st.caught_up.then_some(st)
    })
    .await;
    assert!(st.ready_to_promote, "{st:?}");
    rb.activate(&activation(1, "b", false))
        .await
        .expect("promote b");
    ra.follow(&FollowTarget {
        epoch: Epoch(1),
        active: RegionId::new("b"),
    })
    .await
    .expect("a follows b");
    let report = ra.last_rejoin_report().expect("report");
    assert_eq!(report.divergent_bytes, 0, "{report:?}");
    assert!(
        report.kept_copy.is_none(),
        "nothing diverged, nothing to keep: {report:?}"
    );
    assert!(
        report.summary().contains("nothing lost"),
        "{}",
        report.summary()
    );
    let b = pair.client("b").await.expect("connect b");
    b.batch_execute("INSERT INTO t VALUES (101)")
        .await
        .expect("b writes");
    wait_rows(&pair, "a", "t", 101).await;
    let st = rb.status().await;
    assert_eq!(
        st.metrics.get("pg_standbys_streaming"),
        Some(&1.0),
        "{st:?}"
    );
    // Following again is a no-op.
    ra.follow(&FollowTarget {
        epoch: Epoch(1),
        active: RegionId::new("b"),
    })
    .await
    .expect("idempotent");
}

#[tokio::test]
async fn fence_stops_writes_even_from_a_session_that_turned_read_only_off() {
    let pair = pair(PairOptions::default()).await;
    let a = pair.client("a").await.expect("connect a");
    a.batch_execute("CREATE TABLE t (id int); SET default_transaction_read_only = off; INSERT INTO t VALUES (1)")
        .await
        .expect("write before the fence");
    let ra = pair.role("a").expect("role a");
    ra.fence(Epoch(2)).await.expect("fence");
    let err = a
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .expect_err("the open session cannot write");
    // The fence ended the session (terminated, or the server stopped under it): the
    // write failed because of the fence, not for some other reason.
    assert!(
        err.is_closed()
            || err.code() == Some(&tokio_postgres::error::SqlState::ADMIN_SHUTDOWN)
            || err.code() == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
        "the write failed, but not because of the fence: {err}"
    );
    assert!(pair.client("a").await.is_err(), "no new session either");
    assert_eq!(ra.status().await.role, RoleHealth::Fenced);
    ra.fence(Epoch(2)).await.expect("fencing twice is fine");
    assert!(
        pair.data_dir("a")
            .join(lifeboat_pg::role::FENCE_MARKER)
            .exists()
    );
}

/// An agent fences every role when it starts (it holds no lease yet). A standby takes no
/// writes: it keeps replaying (stopping it would leave the region unpromotable if its
/// primary died before it could rejoin), and it can still be promoted.
#[tokio::test]
async fn fencing_a_standby_leaves_it_replaying() {
    let pair = pair(PairOptions::default()).await;
    let a = pair.client("a").await.expect("connect a");
    a.batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .expect("write");
    wait_rows(&pair, "b", "t", 1).await;
    let rb = pair.role("b").expect("role b");
    rb.fence(Epoch(1)).await.expect("fence the standby");
    assert_eq!(rb.status().await.role, RoleHealth::Standby);
    a.batch_execute("INSERT INTO t VALUES (2)")
        .await
        .expect("write after b's fence");
    wait_rows(&pair, "b", "t", 2).await;
    // Its primary dies: the standby that was fenced is still promotable.
    pair.kill9("a").await.expect("kill -9 a");
    rb.activate(&activation(2, "b", false))
        .await
        .expect("promote b");
    let b = pair.client("b").await.expect("connect b");
    b.batch_execute("INSERT INTO t VALUES (3)")
        .await
        .expect("b takes writes");
    // A primary is still stopped by its fence.
    rb.fence(Epoch(3)).await.expect("fence b, now a primary");
    assert!(pair.client("b").await.is_err(), "b takes no connection");
    assert_eq!(rb.status().await.role, RoleHealth::Fenced);
}

/// Sends SIGSTOP to a server's processes; SIGCONT on drop, also when the test fails.
struct Frozen(Vec<String>);

impl Frozen {
    fn server(pair: &TestPair, region: &str) -> Self {
        let pm = lifeboat_pg::server::postmaster_pid(&pair.data_dir(region))
            .expect("postmaster.pid")
            .to_string();
        let out = std::process::Command::new("ps")
            .args(["-o", "pid=", "--ppid", &pm])
            .output()
            .expect("ps");
        let mut pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        pids.push(pm);
        let frozen = Frozen(pids);
        frozen.signal("-STOP");
        frozen
    }

    fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .arg(sig)
            .args(&self.0)
            .status()
            .expect("kill");
        assert!(status.success(), "kill {sig} {:?}", self.0);
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-CONT")
            .args(&self.0)
            .status();
    }
}

/// A standby that stops answering (cut off, frozen) makes a fast shutdown wait for its
/// walsender up to wal_sender_timeout; the fence must not wait that long to be done.
#[tokio::test]
async fn the_fence_completes_while_the_standby_does_not_answer() {
    let pair = pair(PairOptions::default()).await;
    let a = pair.client("a").await.expect("connect a");
    a.batch_execute("CREATE TABLE t (id int)")
        .await
        .expect("create");
    wait_rows(&pair, "b", "t", 0).await;
    let frozen = Frozen::server(&pair, "b");
    a.batch_execute("INSERT INTO t SELECT generate_series(1, 1000)")
        .await
        .expect("write while the standby is frozen (asynchronous)");
    let ra = pair.role("a").expect("role a");
    // wal_sender_timeout is 10 s: a fence that waited for the walsender takes that long.
    tokio::time::timeout(Duration::from_secs(8), ra.fence(Epoch(2)))
        .await
        .expect("the fence does not wait for the frozen standby")
        .expect("fence");
    assert!(a.batch_execute("INSERT INTO t VALUES (0)").await.is_err());
    assert!(pair.client("a").await.is_err(), "a takes no connection");
    assert!(
        lifeboat_pg::server::postmaster_pid(&pair.data_dir("a"))
            .is_none_or(|pid| !lifeboat_pg::server::process_alive(pid)),
        "a's postmaster is gone"
    );
    drop(frozen);
    // Nothing is lost by the immediate stop: a restarts with every committed row.
    ra.activate(&activation(3, "a", false))
        .await
        .expect("a back as primary");
    let a = pair.client("a").await.expect("connect a again");
    assert_eq!(count(&a, "t").await, 1000);
}

#[tokio::test]
async fn hba_fence_of_an_adopted_server_closes_it_and_activation_reopens_it_after_a_restart() {
    let pair = pair(PairOptions::default()).await;
    // The same server, adopted: lifeboat does not manage its data directory.
    let a_dir = pair.data_dir("a").display().to_string();
    let text = pair
        .config_text
        .replace(&format!("data_dir = \"{a_dir}\"\n"), "");
    assert_ne!(text, pair.config_text);
    let cfg = lifeboat_config::Config::parse(std::path::Path::new("adopted.toml"), &text)
        .expect("config");
    assert_eq!(
        lifeboat_pg::adopt(&pair.instance("a"), true)
            .await
            .expect("adopt a primary"),
        lifeboat_pg::Adopted::Primary
    );
    let ra = PostgresRole::new(&cfg, &RegionId::new("a")).expect("role");
    let a = pair.client("a").await.expect("connect a");
    a.batch_execute("CREATE TABLE t (id int); SET default_transaction_read_only = off; INSERT INTO t VALUES (1)")
        .await
        .expect("write before the fence");
    ra.fence(Epoch(1)).await.expect("fence");
    assert!(
        a.batch_execute("INSERT INTO t VALUES (2)").await.is_err(),
        "open session terminated"
    );
    let err = pair.client("a").await.expect_err("new sessions refused");
    assert!(err.to_string().contains("pg_hba.conf"), "{err}");
    assert_eq!(ra.status().await.role, RoleHealth::Fenced);
    // The agent restarts: the new one knows the fence from its state directory (it
    // cannot ask the server, which refuses it too), reports it and lifts it.
    drop(ra);
    let ra = PostgresRole::new(&cfg, &RegionId::new("a")).expect("role after a restart");
    assert_eq!(ra.status().await.role, RoleHealth::Fenced);
    ra.fence(Epoch(1))
        .await
        .expect("the start-up fence is a no-op");
    // The standby's walsender was terminated too and cannot come back.
    ra.activate(&activation(2, "a", false))
        .await
        .expect("unfence");
    let a = pair.client("a").await.expect("connect again");
    a.batch_execute("INSERT INTO t VALUES (3)")
        .await
        .expect("writes again");
    assert_eq!(count(&a, "t").await, 2);
}

#[tokio::test]
async fn split_brain_rows_are_counted_reported_and_kept_on_rejoin() {
    let pair = pair(PairOptions::default()).await;
    let a = pair.client("a").await.expect("connect a");
    a.batch_execute(
        "CREATE TABLE t (id int primary key, origin text); INSERT INTO t VALUES (0, 'both')",
    )
    .await
    .expect("write");
    wait_rows(&pair, "b", "t", 1).await;
    let rb = pair.role("b").expect("role b");
    // a was never fenced: a plain activation refuses, an operator forces it.
    let err = rb
        .activate(&activation(1, "b", false))
        .await
        .expect_err("a still runs");
    assert!(err.to_string().contains("still a primary"), "{err}");
    rb.activate(&activation(1, "b", true))
        .await
        .expect("forced promotion of b");
    // Split brain: both take writes.
    for i in 1..=5 {
        a.execute("INSERT INTO t VALUES ($1, 'a')", &[&i])
            .await
            .expect("a writes");
    }
    let b = pair.client("b").await.expect("connect b");
    for i in 101..=103 {
        b.execute("INSERT INTO t VALUES ($1, 'b')", &[&i])
            .await
            .expect("b writes");
    }
    drop(a);

    let ra = pair.role("a").expect("role a");
    ra.follow(&FollowTarget {
        epoch: Epoch(1),
        active: RegionId::new("b"),
    })
    .await
    .expect("rejoin a under b");
    let report = ra.last_rejoin_report().expect("a rejoin report");
    assert!(report.divergent_bytes > 0, "{report:?}");
    assert!(report.divergent_commits >= 5, "{report:?}");
    // a's server log is still a's own history (pg_rewind copies b's files, b's log too).
    let a_log = std::fs::read_to_string(lifeboat_pg::server::log_file(&pair.data_dir("a")))
        .expect("a's server log");
    assert!(
        !a_log.contains("received promote request"),
        "a's log was replaced by b's: {a_log}"
    );
    assert!(a_log.contains("shutdown"), "{a_log}");
    assert_eq!(
        report.tables.get("public.t").map(|c| c.inserts),
        Some(5),
        "{report:?}"
    );
    let copy = report.kept_copy.clone().expect("old data directory kept");
    assert!(copy.join("PG_VERSION").exists());
    assert!(copy.starts_with(pair.keep_dir()));
    let txt = std::fs::read_to_string(report.report_dir.join("report.txt")).expect("report.txt");
    assert!(txt.contains("committed transactions"), "{txt}");
    assert!(txt.contains("public.t: 5 inserted"), "{txt}");
    assert!(report.report_dir.join("report.json").exists());
    // The lost rows themselves, read back out of the kept copy.
    assert_eq!(report.rows_extracted, Some(5), "{report:?}");
    let rows = std::fs::read_to_string(
        report
            .report_dir
            .join("divergent-rows")
            .join("public.t.jsonl"),
    )
    .expect("divergent rows file");
    assert_eq!(rows.lines().count(), 5, "{rows}");
    assert!(
        rows.lines().all(|l| l.contains("\"origin\":\"a\"")),
        "{rows}"
    );

    // a is now b's standby: it has b's rows, not its own divergent ones.
    wait_rows(&pair, "a", "t", 4).await;
    let a = pair.client("a").await.expect("connect a");
    let lost: i64 = a
        .query_one("SELECT count(*) FROM t WHERE origin = 'a'", &[])
        .await
        .expect("q")
        .get(0);
    assert_eq!(lost, 0);
    let st = ra.status().await;
    assert_eq!(st.role, RoleHealth::Standby, "{st:?}");
    b.batch_execute("INSERT INTO t VALUES (104, 'b')")
        .await
        .expect("b writes");
    wait_rows(&pair, "a", "t", 5).await;
}

#[tokio::test]
async fn sync_mode_keeps_every_acknowledged_write_across_a_kill9() {
    let pair = pair(PairOptions {
        mode: ReplicationMode::Sync,
        ..PairOptions::default()
    })
    .await;
    let a = pair.client("a").await.expect("connect a");
    // The walsender reports "async" until it has caught up and taken its place in
    // synchronous_standby_names; the standby must become the synchronous one.
    eventually("b to become a's synchronous standby", || {
        let a = &a;
        async move {
            let sync: String = a
                .query_one(
                    "SELECT sync_state FROM pg_stat_replication \
                     WHERE application_name = 'lifeboat_b'",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            (sync == "sync" || sync == "quorum").then_some(())
        }
    })
    .await;
    a.batch_execute("CREATE TABLE t (id int primary key)")
        .await
        .expect("create");
    let mut acked = 0i32;
    for i in 0..300 {
        a.execute("INSERT INTO t VALUES ($1)", &[&i])
            .await
            .expect("acknowledged write");
        acked += 1;
    }
    pair.kill9("a").await.expect("kill -9 the primary");
    let rb = pair.role("b").expect("role b");
    rb.activate(&activation(1, "b", false))
        .await
        .expect("promote");
    let b = pair.client("b").await.expect("connect b");
    assert_eq!(
        count(&b, "t").await,
        i64::from(acked),
        "every acknowledged write survived"
    );
    // No standby left: the new primary runs unprotected (not strict) and says so.
    b.batch_execute("INSERT INTO t VALUES (1000)")
        .await
        .expect("writes do not hang");
    let st = rb.status().await;
    assert_eq!(st.metrics.get("pg_sync_unprotected"), Some(&1.0), "{st:?}");
    assert!(st.detail.contains("unprotected"), "{st:?}");
}

#[tokio::test]
async fn bad_input_gives_clear_errors() {
    let pair = pair(PairOptions::default()).await;
    let good = pair.instance("a");

    let mut wrong = good.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("pw"), "not-the-password").expect("write");
    wrong.password = lifeboat_config::SecretRef::from_file(dir.path().join("pw"));
    let err = wrong.connect().await.expect_err("wrong password");
    assert!(matches!(err, PgError::Auth { .. }), "{err}");
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );

    let mut gone: Instance = good.clone();
    gone.port = free_port("127.0.0.1").expect("port");
    let err = gone.connect().await.expect_err("nothing listens");
    assert!(matches!(err, PgError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("unreachable"), "{err}");

    // The configured replica is actually a primary (and the other way round).
    let err = lifeboat_pg::adopt(&pair.instance("a"), false)
        .await
        .expect_err("a is a primary");
    assert!(err.to_string().contains("is a primary"), "{err}");
    let err = lifeboat_pg::adopt(&pair.instance("b"), true)
        .await
        .expect_err("b is a standby");
    assert!(err.to_string().contains("is a standby"), "{err}");
    assert_eq!(
        lifeboat_pg::adopt(&pair.instance("b"), false)
            .await
            .expect("b is a standby"),
        lifeboat_pg::Adopted::Standby
    );
    // The same checks, driven by the config's initial roles.
    assert_eq!(
        lifeboat_pg::adopt_region(&pair.config, &RegionId::new("a"))
            .await
            .expect("adopt a"),
        lifeboat_pg::Adopted::Primary
    );
    assert_eq!(
        lifeboat_pg::adopt_region(&pair.config, &RegionId::new("b"))
            .await
            .expect("adopt b"),
        lifeboat_pg::Adopted::Standby
    );
    // A role whose password is wrong reports it in its status instead of hanging.
    let text = pair.config_text.replace(
        &format!(
            "password_file = \"{}\"",
            pair.dir().join("secrets").join("su").display()
        ),
        &format!("password_file = \"{}\"", dir.path().join("pw").display()),
    );
    let cfg =
        lifeboat_config::Config::parse(std::path::Path::new("wrong.toml"), &text).expect("config");
    let st = PostgresRole::new(&cfg, &RegionId::new("a"))
        .expect("role")
        .status()
        .await;
    assert_eq!(st.health, lifeboat_core::HealthStatus::Unhealthy, "{st:?}");
    assert!(st.detail.contains("wrong password"), "{st:?}");
    // A replica cannot be built from a standby.
    let mut c = pair.instance("a");
    c.data_dir = Some(pair.dir().join("pg-c"));
    c.region = RegionId::new("c");
    let err = lifeboat_pg::bootstrap_replica(
        &pair.bin,
        &pair.instance("b"),
        &c,
        &Default::default(),
        ReplicationMode::Async,
    )
    .await
    .expect_err("b is not a primary");
    assert!(
        err.to_string().contains("is a standby, not a primary"),
        "{err}"
    );
    // As root: a data directory the postgres user cannot reach is refused with the reason.
    if lifeboat_pg::exec::is_root() {
        use std::os::unix::fs::PermissionsExt;
        let closed = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(closed.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod 700");
        let mut d = pair.instance("a");
        d.data_dir = Some(closed.path().join("pg-d"));
        let err = lifeboat_pg::bootstrap_primary(&pair.bin, &d, &Default::default())
            .await
            .expect_err("unreachable data dir");
        assert!(format!("{err:#}").contains("cannot enter"), "{err:#}");
    }
    // Bootstrapping over an existing cluster is refused.
    let err = lifeboat_pg::bootstrap_primary(&pair.bin, &pair.instance("a"), &Default::default())
        .await
        .expect_err("existing cluster");
    assert!(
        format!("{err:#}").contains("already holds a PostgreSQL cluster"),
        "{err:#}"
    );
}

#[tokio::test]
async fn a_lagging_replica_is_not_promoted_unless_forced() {
    let pair = pair(PairOptions {
        max_lag_bytes: Some(1024),
        ..PairOptions::default()
    })
    .await;
    let a = pair.client("a").await.expect("connect a");
    a.batch_execute("CREATE TABLE t (id int)")
        .await
        .expect("create");
    wait_rows(&pair, "b", "t", 0).await;
    let b = pair.client("b").await.expect("connect b");
    b.batch_execute("ALTER SYSTEM SET recovery_min_apply_delay = '1h'")
        .await
        .expect("delay replay");
    b.batch_execute("SELECT pg_reload_conf()")
        .await
        .expect("reload");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The first commit holds replay back (the delay applies at commit records); the
    // WAL after it is received but not replayed.
    a.batch_execute("INSERT INTO t VALUES (-1)")
        .await
        .expect("write");
    a.batch_execute("INSERT INTO t SELECT generate_series(1, 2000)")
        .await
        .expect("write");
    let target: i64 = a
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint",
            &[],
        )
        .await
        .expect("lsn")
        .get(0);
    // The standby has received everything but not replayed it.
    eventually("WAL received", || async {
        let got: Option<i64> = b
            .query_one(
                "SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::bigint",
                &[],
            )
            .await
            .ok()?
            .get(0);
        (got? >= target).then_some(())
    })
    .await;
    let rb = pair.role("b").expect("role b");
    let st = rb.status().await;
    assert!(st.lag_bytes.unwrap_or(0) > 1024, "{st:?}");
    assert!(!st.ready_to_promote, "{st:?}");
    assert!(st.detail.contains("max_lag_bytes"), "{st:?}");
    let err = rb
        .activate(&activation(1, "b", false))
        .await
        .expect_err("not ready");
    match &err {
        RoleError::NotReady { reason, .. } => {
            assert!(reason.contains("exceeds max_lag_bytes 1024"), "{reason}")
        }
        other => panic!("expected NotReady, got {other}"),
    }
    assert_eq!(
        rb.status().await.role,
        RoleHealth::Standby,
        "nothing was promoted"
    );
    // An operator forces it: promoted, with everything it had received.
    pair.role("a")
        .expect("role a")
        .fence(Epoch(2))
        .await
        .expect("fence a");
    rb.activate(&activation(2, "b", true))
        .await
        .expect("forced promotion");
    assert_eq!(count(&b, "t").await, 2001);
    b.batch_execute("INSERT INTO t VALUES (0)")
        .await
        .expect("writable");
}

#[tokio::test]
async fn the_harness_stops_both_servers_when_a_test_panics() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen_in_task = seen.clone();
    let task = tokio::spawn(async move {
        let pair = pair(PairOptions::default()).await;
        let pids: Vec<u32> = ["a", "b"]
            .iter()
            .map(|r| lifeboat_pg::server::postmaster_pid(&pair.data_dir(r)).expect("running"))
            .collect();
        *seen_in_task.lock().expect("lock") = Some((pids, pair.dir().to_path_buf()));
        panic!("a failing test");
    });
    assert!(task.await.expect_err("the task panicked").is_panic());
    let (pids, dir) = seen.lock().expect("lock").clone().expect("pair started");
    for pid in pids {
        assert!(
            !lifeboat_pg::server::process_alive(pid),
            "postmaster {pid} still runs"
        );
    }
    assert!(!dir.exists(), "temp dir {} removed", dir.display());
}

/// The documented caveat of synchronous mode, end to end: a commit whose wait for the
/// standby is cancelled returns success but exists on the primary only; after a
/// failover the rejoin report counts it instead of losing it silently.
#[tokio::test]
async fn sync_mode_caveat_a_cancelled_wait_commits_locally_and_rejoin_reports_it() {
    let pair = pair(PairOptions {
        mode: ReplicationMode::Sync,
        ..PairOptions::default()
    })
    .await;
    let a = pair.client("a").await.expect("connect a");
    a.batch_execute("CREATE TABLE t (id int)")
        .await
        .expect("create");
    let rb = pair.role("b").expect("role b");
    // A fence leaves a standby running: stop it the hard way.
    pair.kill9("b").await.expect("stop the standby");
    // The commit waits for the standby; cancel the wait from another session
    // (statement_timeout does not apply to the commit wait).
    let pid: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let other = pair.client("a").await.expect("second session");
    let canceller = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let waiting: bool = other
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'SyncRep')",
                    &[&pid],
                )
                .await
                .expect("pg_stat_activity")
                .get(0);
            if waiting {
                other
                    .execute("SELECT pg_cancel_backend($1)", &[&pid])
                    .await
                    .expect("cancel");
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the commit never waited for the standby"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    a.batch_execute("INSERT INTO t VALUES (1)")
        .await
        .expect("the cancelled wait still reports success");
    canceller.await.expect("canceller");
    assert_eq!(count(&a, "t").await, 1, "committed locally");
    drop(a);
    pair.kill9("a").await.expect("kill -9 a");
    rb.activate(&activation(2, "b", false))
        .await
        .expect("promote b");
    let b = pair.client("b").await.expect("connect b");
    assert_eq!(count(&b, "t").await, 0, "the standby never had it");
    let ra = pair.role("a").expect("role a");
    ra.follow(&FollowTarget {
        epoch: Epoch(2),
        active: RegionId::new("b"),
    })
    .await
    .expect("rejoin a");
    let report = ra.last_rejoin_report().expect("report");
    assert_eq!(
        report.tables.get("public.t").map(|c| c.inserts),
        Some(1),
        "{report:?}"
    );
    assert!(report.divergent_commits >= 1, "{report:?}");
    assert!(report.kept_copy.is_some(), "{report:?}");
    assert_eq!(
        report.rows_extracted,
        Some(1),
        "the unacknowledged-but-committed row is read back: {report:?}"
    );
}

/// a (the primary) has rows 1..=10 and b has them too; then a is killed -9 and b is
/// promoted at epoch 2. Returns b's role.
async fn fail_over_to_b(pair: &TestPair) -> PostgresRole {
    let a = pair.client("a").await.expect("connect a");
    a.batch_execute(
        "CREATE TABLE t (id int primary key); INSERT INTO t SELECT generate_series(1, 10)",
    )
    .await
    .expect("write on a");
    wait_rows(pair, "b", "t", 10).await;
    drop(a);
    pair.kill9("a").await.expect("kill -9 a");
    let rb = pair.role("b").expect("role b");
    rb.activate(&activation(2, "b", false))
        .await
        .expect("promote b");
    rb
}

/// b, the new primary, acknowledges rows 11..=20.
async fn b_writes_ten_more(pair: &TestPair) {
    let b = pair.client("b").await.expect("connect b");
    b.batch_execute("INSERT INTO t SELECT generate_series(11, 20)")
        .await
        .expect("b acknowledges 10 more rows");
}

/// a follows b at epoch 2 while a hook kills b when the rejoin reaches `step`: the
/// follow fails (`why` says why it must). Returns a's role and the error.
async fn follow_b_dying_at(
    pair: &TestPair,
    step: lifeboat_pg::rejoin::RejoinStep,
    why: &str,
) -> (PostgresRole, RoleError) {
    let mut ra = pair.role("a").expect("role a");
    ra.set_rejoin_hook(crash_at(step, pair.data_dir("b"), pair.instance("b")));
    let err = ra
        .follow(&FollowTarget {
            epoch: Epoch(2),
            active: RegionId::new("b"),
        })
        .await
        .expect_err(why);
    (ra, err)
}

/// A hook that SIGKILLs `dir`'s postmaster when the rejoin reaches `at`, and returns
/// once its port no longer answers.
fn crash_at(
    at: lifeboat_pg::rejoin::RejoinStep,
    dir: std::path::PathBuf,
    inst: Instance,
) -> lifeboat_pg::rejoin::RejoinHook {
    std::sync::Arc::new(move |step| {
        if step != at {
            return;
        }
        let pid = lifeboat_pg::server::postmaster_pid(&dir).expect("new primary's postmaster.pid");
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(killed.success(), "kill -KILL {pid}");
        let deadline = std::time::SystemTime::now() + Duration::from_secs(30);
        while lifeboat_pg::server::process_alive(pid)
            || std::net::TcpStream::connect((inst.host.as_str(), inst.port)).is_ok()
        {
            assert!(
                std::time::SystemTime::now() < deadline,
                "the new primary survived kill -9"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

async fn timeline_of(c: &Client) -> u32 {
    let walfile: String = c
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
        .await
        .expect("current WAL file")
        .get(0);
    u32::from_str_radix(&walfile[..8], 16).expect("timeline in a WAL file name")
}

/// The old primary's rejoin, the new primary killed -9 right after pg_rewind (before
/// the slot step), then the controller activates the old primary: it must come up by
/// promotion on a NEW timeline with every row the new primary acknowledged — never on
/// its old timeline 1 — and the new primary must later rejoin it.
#[tokio::test]
async fn failover_during_a_rejoin_promotes_the_rewound_server_on_a_new_timeline() {
    let pair = pair(PairOptions::default()).await;
    let _rb = fail_over_to_b(&pair).await;
    let b = pair.client("b").await.expect("connect b");
    assert_eq!(timeline_of(&b).await, 2);
    drop(b);
    b_writes_ten_more(&pair).await;

    // a comes back and follows b; b dies right after pg_rewind.
    let (ra, err) = follow_b_dying_at(
        &pair,
        lifeboat_pg::rejoin::RejoinStep::AfterRewind,
        "the rejoin cannot finish without b",
    )
    .await;
    eprintln!("rejoin failed as expected: {err}");
    assert!(
        pair.data_dir("a").join("standby.signal").exists(),
        "after pg_rewind the directory is a standby whatever failed next"
    );
    assert!(
        !lifeboat_pg::rejoin::pending_marker(&pair.keep_dir(), "a").exists(),
        "the rewind completed, so no interrupted-rejoin marker is left"
    );

    // The controller now activates a.
    ra.activate(&activation(3, "a", false))
        .await
        .expect("a is promoted from its rewound standby");
    let a = pair.client("a").await.expect("connect a");
    let in_recovery: bool = a
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("recovery state")
        .get(0);
    assert!(!in_recovery);
    assert_eq!(
        timeline_of(&a).await,
        3,
        "promoted past b's timeline 2, not back on timeline 1"
    );
    assert_eq!(
        count(&a, "t").await,
        20,
        "every row b acknowledged is there"
    );
    a.batch_execute("INSERT INTO t VALUES (21)")
        .await
        .expect("a takes writes");

    // b comes back and rejoins a: the fork is read from a's timeline-3 history.
    let rb = pair.role("b").expect("role b again");
    rb.follow(&FollowTarget {
        epoch: Epoch(3),
        active: RegionId::new("a"),
    })
    .await
    .expect("b rejoins a");
    let report = rb.last_rejoin_report().expect("b's report");
    assert_eq!(
        (report.old_timeline, report.new_timeline),
        (2, 3),
        "{report:?}"
    );
    assert_eq!(report.divergent_commits, 0, "{report:?}");
    wait_rows(&pair, "b", "t", 21).await;
}

/// The new primary dies after the rejoin marked the old primary's directory but before
/// pg_rewind: that directory is still the old primary's (timeline 1, without b's rows).
/// Activating it is refused — also when forced — instead of starting it as a primary;
/// once b is back, the rejoin completes with nothing lost.
#[tokio::test]
async fn an_old_primary_whose_rejoin_stopped_before_the_rewind_is_never_started() {
    let pair = pair(PairOptions::default()).await;
    let _rb = fail_over_to_b(&pair).await;
    b_writes_ten_more(&pair).await;

    let (ra, _) = follow_b_dying_at(
        &pair,
        lifeboat_pg::rejoin::RejoinStep::BeforeRewind,
        "pg_rewind cannot run without b",
    )
    .await;
    for forced in [false, true] {
        let err = ra
            .activate(&activation(3, "a", forced))
            .await
            .expect_err("an old primary that never rewound must not start");
        assert!(
            matches!(&err, RoleError::NotReady { reason, .. } if reason.contains("interrupted")),
            "forced={forced}: {err}"
        );
    }
    assert!(
        pair.instance("a").connect().await.is_err(),
        "a's server was not started"
    );
    let st = ra.status().await;
    assert!(st.detail.contains("rejoin interrupted"), "{st:?}");

    // b comes back; a's rejoin (without the crash) completes and a streams from b.
    let bin = pair.bin.clone();
    lifeboat_pg::server::start(&bin, &pair.data_dir("b"))
        .await
        .expect("restart b");
    let ra = pair.role("a").expect("role a again");
    ra.follow(&FollowTarget {
        epoch: Epoch(3),
        active: RegionId::new("b"),
    })
    .await
    .expect("a rejoins b");
    assert!(!lifeboat_pg::rejoin::pending_marker(&pair.keep_dir(), "a").exists());
    wait_rows(&pair, "a", "t", 20).await;
    assert_eq!(ra.status().await.role, RoleHealth::Standby);
}

/// Sync mode: activating the primary while its replica already streams keeps the
/// replica synchronous (it used to clear synchronous_standby_names at start-up).
#[tokio::test]
async fn sync_mode_activate_keeps_naming_a_streaming_standby() {
    let pair = pair(PairOptions {
        mode: ReplicationMode::Sync,
        ..PairOptions::default()
    })
    .await;
    let rb = pair.role("b").expect("role b");
    rb.follow(&FollowTarget {
        epoch: Epoch(1),
        active: RegionId::new("a"),
    })
    .await
    .expect("b already streams from a");
    let ra = pair.role("a").expect("role a");
    ra.activate(&activation(1, "a", false))
        .await
        .expect("activate the primary");
    let a = pair.client("a").await.expect("connect a");
    let names: String = a
        .query_one("SHOW synchronous_standby_names", &[])
        .await
        .expect("show")
        .get(0);
    assert!(names.contains("lifeboat_b"), "{names:?}");
    let a2 = &a;
    let state = eventually("b to be a synchronous standby", || async move {
        let s: Option<String> = a2
            .query_opt(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'lifeboat_b'",
                &[],
            )
            .await
            .ok()
            .flatten()
            .map(|r| r.get(0));
        s.filter(|s| s == "sync" || s == "quorum")
    })
    .await;
    assert!(state == "sync" || state == "quorum", "{state}");
    let st = ra.status().await;
    assert_eq!(st.metrics.get("pg_sync_unprotected"), Some(&0.0), "{st:?}");
    // A commit now waits for b: with b stopped it is seen waiting for SyncRep.
    pair.kill9("b").await.expect("stop b");
    let pid: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let pending = tokio::spawn(async move { a.batch_execute("CREATE TABLE waits_for_b ()").await });
    let other = pair.client("a").await.expect("second session");
    let other = &other;
    eventually("the commit to wait for the synchronous standby", || async move {
        let waiting: bool = other
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'SyncRep')",
                &[&pid],
            )
            .await
            .ok()?
            .get(0);
        waiting.then_some(())
    })
    .await;
    assert!(
        !pending.is_finished(),
        "the commit returned without the standby"
    );
    pending.abort();
}

/// The new primary dies right after pg_rewind and comes back: the retried rejoin of the
/// rewound (never started) old primary completes and it streams with every row.
#[tokio::test]
async fn a_rejoin_cut_short_after_the_rewind_completes_when_retried() {
    let pair = pair(PairOptions::default()).await;
    let _rb = fail_over_to_b(&pair).await;
    b_writes_ten_more(&pair).await;
    follow_b_dying_at(
        &pair,
        lifeboat_pg::rejoin::RejoinStep::AfterRewind,
        "the rejoin cannot finish without b",
    )
    .await;
    lifeboat_pg::server::start(&pair.bin, &pair.data_dir("b"))
        .await
        .expect("restart b");
    let ra = pair.role("a").expect("role a again");
    ra.follow(&FollowTarget {
        epoch: Epoch(2),
        active: RegionId::new("b"),
    })
    .await
    .expect("the retried rejoin completes");
    wait_rows(&pair, "a", "t", 20).await;
    assert_eq!(ra.status().await.role, RoleHealth::Standby);
    let b = pair.client("b").await.expect("connect b");
    b.batch_execute("INSERT INTO t VALUES (21)")
        .await
        .expect("b writes");
    wait_rows(&pair, "a", "t", 21).await;
}

/// The new primary keeps taking writes while pg_rewind copies it and is killed right
/// after: the WAL it wrote during the copy (which pg_rewind's minimum recovery point
/// covers) is copied again by the rejoin, so the rewound server still becomes
/// consistent and is promoted onto a new timeline with every row acknowledged before
/// the rejoin began.
#[tokio::test]
async fn writes_during_the_rewind_do_not_leave_the_rewound_server_inconsistent() {
    let pair = pair(PairOptions::default()).await;
    let _rb = fail_over_to_b(&pair).await;
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let writer = {
        let acked = acked.clone();
        let b = pair.client("b").await.expect("connect b");
        tokio::spawn(async move {
            for i in 11.. {
                if b.execute("INSERT INTO t VALUES ($1)", &[&i]).await.is_err() {
                    return;
                }
                acked.store(i64::from(i), std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    eventually("b to acknowledge writes", || {
        let acked = acked.clone();
        async move { (acked.load(std::sync::atomic::Ordering::SeqCst) >= 100).then_some(()) }
    })
    .await;
    let before_rejoin = acked.load(std::sync::atomic::Ordering::SeqCst);

    let (ra, _) = follow_b_dying_at(
        &pair,
        lifeboat_pg::rejoin::RejoinStep::AfterRewind,
        "the rejoin cannot finish without b",
    )
    .await;
    writer.await.expect("writer task");

    ra.activate(&activation(3, "a", false))
        .await
        .expect("the rewound standby becomes consistent and is promoted");
    let a = pair.client("a").await.expect("connect a");
    assert_eq!(timeline_of(&a).await, 3);
    let n = count(&a, "t").await;
    assert!(
        n >= before_rejoin,
        "a has {n} rows, b had acknowledged {before_rejoin} before the rejoin"
    );
}
