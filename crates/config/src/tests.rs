use super::*;

const EXAMPLE: &str = include_str!("../../../examples/two-regions.toml");

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(Path::new("test.toml"), text)
}

fn only_error(text: &str) -> ConfigError {
    let errs = parse(text).expect_err("config should be rejected").0;
    assert_eq!(errs.len(), 1, "expected one error, got {errs:?}");
    errs.into_iter().next().expect("one error")
}

#[test]
fn example_config_is_valid() {
    let cfg = parse(EXAMPLE).expect("example parses");
    assert_eq!(cfg.regions.len(), 2);
    assert_eq!(cfg.initial_active(), Some(RegionId::new("a")));
    assert_eq!(cfg.failover.lease_ttl, Duration::from_secs(2));
    assert_eq!(cfg.checks["web-a"].interval, Duration::from_millis(500));
    // Three vantage points (controller, agent a, agent b): a majority is two.
    assert_eq!(cfg.check_quorum(&cfg.checks["web-a"]), 2);
}

#[test]
fn unknown_key_names_line_and_key() {
    let text = EXAMPLE.replace(
        "hold_down = \"0s\"",
        "hold_down = \"0s\"\nhodl_down = \"1s\"",
    );
    let e = only_error(&text);
    let line = text
        .lines()
        .position(|l| l.starts_with("hodl_down"))
        .expect("line")
        + 1;
    assert_eq!(e.line, line, "{e}");
    assert!(e.message.contains("hodl_down"), "{e}");
    assert!(
        e.to_string().starts_with(&format!("test.toml:{line}:")),
        "{e}"
    );
}

#[test]
fn bad_duration_names_line_and_key() {
    let text = EXAMPLE.replace("lease_ttl = \"2s\"", "lease_ttl = \"two seconds\"");
    let e = only_error(&text);
    let line = text
        .lines()
        .position(|l| l.starts_with("lease_ttl"))
        .expect("line")
        + 1;
    assert_eq!(e.line, line, "{e}");
    assert_eq!(e.key, "failover.lease_ttl", "{e}");
    assert!(e.message.contains("invalid duration"), "{e}");
}

#[test]
fn undefined_region_names_line_and_key() {
    let text = EXAMPLE.replace("region = \"b\"", "region = \"c\"");
    let e = only_error(&text);
    let line = text
        .lines()
        .position(|l| l.trim() == "region = \"c\"")
        .expect("line")
        + 1;
    assert_eq!(e.line, line, "{e}");
    assert_eq!(e.key, "checks.web-b.region");
    assert!(e.message.contains("\"c\" is not defined"), "{e}");
}

#[test]
fn two_active_regions_are_rejected() {
    let text = EXAMPLE.replace("role = \"standby\"", "role = \"active\"");
    let e = only_error(&text);
    assert!(e.message.contains("exactly one region"), "{e}");
    assert!(e.line > 0, "{e}");
}

#[test]
fn token_must_come_from_file_or_env() {
    let text = EXAMPLE.replace("token_env = \"LIFEBOAT_TOKEN\"", "");
    let e = only_error(&text);
    assert_eq!(e.key, "auth");
    assert!(e.message.contains("token_file"), "{e}");
    let text = EXAMPLE.replace("token_env = \"LIFEBOAT_TOKEN\"", "token = \"hunter2\"");
    let e = only_error(&text);
    assert!(e.message.contains("token"), "{e}");
}

#[test]
fn errors_in_array_of_tables_are_located() {
    let text = EXAMPLE.replacen(
        "command = [\"python3\", \"-m\", \"http.server\", \"--bind\", \"127.0.1.1\", \"8080\"]",
        "command = []",
        1,
    );
    let e = only_error(&text);
    assert_eq!(e.key, "regions.a.services[0].command");
    let line = text
        .lines()
        .position(|l| l == "command = []")
        .expect("line")
        + 1;
    assert_eq!(e.line, line, "{e}");
}

#[test]
fn all_problems_are_reported_at_once() {
    let text = EXAMPLE.replace("region = \"b\"", "region = \"c\"").replace(
        "failure_threshold = 2\n\n[checks.web-b]",
        "failure_threshold = 0\n\n[checks.web-b]",
    );
    let errs = parse(&text).expect_err("rejected").0;
    assert_eq!(errs.len(), 2, "{errs:?}");
}

#[test]
fn calculated_checks_need_defined_children_and_no_cycles() {
    let text = format!(
        "{EXAMPLE}\n[checks.all]\ntype = \"calculated\"\nchildren = [\"web-a\", \"nope\"]\n\n[checks.loop1]\ntype = \"calculated\"\nchildren = [\"loop2\"]\n[checks.loop2]\ntype = \"calculated\"\nchildren = [\"loop1\"]\n"
    );
    let errs = parse(&text).expect_err("rejected").0;
    assert!(
        errs.iter()
            .any(|e| e.key == "checks.all.children[1]" && e.message.contains("nope")),
        "{errs:?}"
    );
    assert!(errs.iter().any(|e| e.message.contains("cycle")), "{errs:?}");
}

#[test]
fn database_checks_are_checked_where_they_are_written() {
    let good = format!(
        "{EXAMPLE}\n[checks.db-x]\ntype = \"postgres\"\naddr = \"127.0.1.1:5432\"\nuser = \"lifeboat\"\npassword_file = \"/etc/lifeboat/pg\"\nexpect = \"primary\"\n"
    );
    let cfg = parse(&good).expect("a postgres check parses");
    assert_eq!(cfg.checks["db-x"].kind, CheckKind::Postgres);
    assert_eq!(cfg.checks["db-x"].expect, DbExpect::Primary);

    // No user, two password sources, a database name on a mysql check.
    let text = format!(
        "{EXAMPLE}\n[checks.db-b]\ntype = \"mysql\"\naddr = \"127.0.2.1:3306\"\ndbname = \"app\"\npassword_file = \"/x\"\npassword_env = \"X\"\n"
    );
    let errs = parse(&text).expect_err("rejected").0;
    assert!(
        errs.iter()
            .any(|e| e.key == "checks.db-b" && e.message.contains("`user`")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.key == "checks.db-b.password_env"),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.key == "checks.db-b.dbname"),
        "{errs:?}"
    );

    // Database fields on an HTTP check are a mistake, named at their line.
    let text = EXAMPLE.replace(
        "url = \"http://127.0.1.1:8080/\"",
        "url = \"http://127.0.1.1:8080/\"\nuser = \"app\"",
    );
    let e = only_error(&text);
    assert_eq!(e.key, "checks.web-a.user", "{e}");
    assert!(e.message.contains("postgres and mysql checks only"), "{e}");
    let line = text
        .lines()
        .position(|l| l.starts_with("user = \"app\""))
        .expect("line")
        + 1;
    assert_eq!(e.line, line, "{e}");
}

#[test]
fn secrets_load_from_file_and_report_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("token");
    std::fs::write(&path, "s3cret\n").expect("write");
    assert_eq!(SecretRef::from_file(&path).load().expect("load"), "s3cret");
    let missing = SecretRef::from_file(dir.path().join("absent"));
    assert!(
        missing
            .load()
            .expect_err("missing")
            .to_string()
            .contains("absent")
    );
}

/// The example's `[controller]` table with an etcd store of three controllers.
fn with_etcd(etcd_table: &str) -> String {
    let at = EXAMPLE
        .find("[controller]")
        .expect("example has [controller]");
    let end = EXAMPLE[at..].find("\n\n").map_or(EXAMPLE.len(), |e| at + e);
    format!(
        "{}\nstore = \"etcd\"\n\n[controller.etcd]\n{etcd_table}\n\n\
         [[controller.members]]\nname = \"c1\"\napi_addr = \"127.0.0.1:7101\"\ndns_addr = \"127.0.0.1:5301\"\n\n\
         [[controller.members]]\nname = \"c2\"\napi_addr = \"127.0.0.1:7102\"\n\n\
         [[controller.members]]\nname = \"c3\"\napi_addr = \"127.0.0.1:7103\"\n{}",
        &EXAMPLE[..end],
        &EXAMPLE[end..]
    )
}

#[test]
fn an_etcd_store_of_three_controllers_is_valid() {
    let text = with_etcd(
        "endpoints = [\"http://127.0.0.1:2379\"]\nprefix = \"/lifeboat/shop\"\nuser = \"lb\"\npassword_env = \"ETCD_PW\"",
    );
    let mut cfg = parse(&text).expect("parses");
    let c = &cfg.controller;
    assert_eq!(c.store, etcd::StoreKind::Etcd);
    let e = c.etcd.as_ref().expect("etcd table");
    assert_eq!(e.lease_ttl, Duration::from_secs(3), "the default");
    assert_eq!(e.password().env.as_deref(), Some("ETCD_PW"));
    // The CLI and agents try `api_addr` first, then every member.
    assert_eq!(c.api_urls().len(), 4);
    cfg.controller.as_member("c1").expect("c1 is a member");
    assert_eq!(cfg.controller.api_addr.port(), 7101);
    assert_eq!(
        cfg.controller.dns_addr.map(|a| a.port()),
        Some(5301),
        "c1's DNS"
    );
    let e = cfg.controller.as_member("c9").expect_err("no c9");
    assert!(e.contains("c1, c2, c3"), "{e}");
}

#[test]
fn etcd_errors_name_their_key() {
    let text = with_etcd(
        "endpoints = [\"127.0.0.1:2379\"]\nprefix = \"lifeboat/\"\nlease_ttl = \"1500ms\"\nuser = \"lb\"",
    );
    let errs = parse(&text).expect_err("rejected").0;
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    for k in [
        "controller.etcd.endpoints[0]",
        "controller.etcd.prefix",
        "controller.etcd.lease_ttl",
        "controller.etcd.user",
    ] {
        assert!(keys.contains(&k), "no error for {k}: {errs:?}");
    }
    // Located on the line of the key where one exists.
    let e = errs
        .iter()
        .find(|e| e.key == "controller.etcd.prefix")
        .expect("prefix error");
    let line = text
        .lines()
        .position(|l| l.starts_with("prefix ="))
        .expect("line")
        + 1;
    assert_eq!(e.line, line, "{e}");
}

#[test]
fn an_etcd_store_needs_its_table_and_members() {
    let text = EXAMPLE.replacen("[controller]", "[controller]\nstore = \"etcd\"", 1);
    let e = only_error(&text);
    assert_eq!(e.key, "controller.store", "{e}");
    assert!(e.message.contains("[controller.etcd]"), "{e}");
}

/// A config written back by [`Config::to_toml`] reads as the same config.
pub(crate) fn assert_round_trip(text: &str) {
    let cfg = parse(text).unwrap_or_else(|e| panic!("the config to write back: {e}"));
    let written = cfg.to_toml().expect("a config serializes");
    let back = parse(&written).unwrap_or_else(|e| panic!("{e}\nin:\n{written}"));
    assert_eq!(back, cfg, "written as:\n{written}");
}

#[test]
fn a_config_written_back_reads_as_the_same_config() {
    assert_round_trip(EXAMPLE);
    assert_round_trip(&with_etcd(
        "endpoints = [\"http://127.0.0.1:2379\", \"http://127.0.0.1:2381\"]\nprefix = \"/lifeboat/shop\"\nlease_ttl = \"5s\"\nuser = \"lb\"\npassword_env = \"ETCD_PW\"",
    ));
    // Every key away from its default, where the example leaves it at one.
    let changed = EXAMPLE.replacen(
        "[failover]\n",
        "[failover]\nquorum = 2\nactivation_grace = \"1m 30s\"\nrequire_ready_standby = false\n",
        1,
    );
    assert_round_trip(&changed);
}

#[test]
fn a_written_config_leaves_defaults_out_and_writes_durations_as_the_parser_reads_them() {
    let text = EXAMPLE.replacen("lease_margin = \"500ms\"", "lease_margin = \"300ms\"", 1);
    let cfg = parse(&text).expect("example parses");
    let written = cfg.to_toml().expect("serializes");
    assert!(written.contains("lease_margin = \"300ms\""), "{written}");
    assert!(written.contains("interval = \"500ms\""), "{written}");
    // Defaults are not written, whether the example writes them or not.
    assert!(!written.contains("lease_ttl"), "{written}");
    assert!(!written.contains("switchover_timeout"), "{written}");
    assert!(!written.contains("[dns.soa]"), "{written}");
}

#[test]
fn constructors_set_what_the_parser_defaults_to() {
    let drill: drill::DrillConfig =
        toml::from_str("app_name = \"app.shop.\"\napp_port = 80").expect("parses");
    assert_eq!(drill, drill::DrillConfig::new("app.shop.", 80));
    let etcd: etcd::EtcdConfig =
        toml::from_str("endpoints = [\"http://e1:2379\"]\nprefix = \"/p\"").expect("parses");
    assert_eq!(
        etcd,
        etcd::EtcdConfig::new(vec!["http://e1:2379".into()], "/p")
    );
    let mysql: mysql::MysqlConfig = toml::from_str("regions = {}").expect("parses");
    assert_eq!(mysql, mysql::MysqlConfig::new(BTreeMap::new()));
    let check: CheckConfig = toml::from_str("type = \"tcp\"").expect("parses");
    assert_eq!(check, CheckConfig::new(CheckKind::Tcp));
}

/// Several controllers: the zone's NS records list every controller that serves DNS,
/// each entry naming its member.
#[test]
fn every_controller_that_serves_dns_is_a_listed_nameserver() {
    let etcd = "endpoints = [\"http://127.0.0.1:2379\"]\nprefix = \"/lifeboat/shop\"";
    let dns = |entries: &str| {
        format!(
            "{}\n[dns]\nzone = \"shop.example.\"\n\n{entries}",
            with_etcd(etcd)
        )
    };
    // c1 (the one member with a dns_addr) named: valid.
    let ok =
        dns("[[dns.nameservers]]\nname = \"ns-c1\"\naddress = \"127.0.0.1\"\nmember = \"c1\"\n");
    parse(&ok).expect("valid");
    // An entry that names no member, one that names an unknown member, one that is
    // both a member and a region, and c1 never named.
    let bad = dns(
        "[[dns.nameservers]]\nname = \"ns1\"\naddress = \"127.0.0.1\"\n\n\
         [[dns.nameservers]]\nname = \"ns-c9\"\naddress = \"127.0.0.2\"\nmember = \"c9\"\n\n\
         [[dns.nameservers]]\nname = \"ns-c2\"\naddress = \"127.0.0.3\"\nmember = \"c2\"\nregion = \"a\"\nlisten = \"127.0.0.3:53\"\n",
    );
    let errs = parse(&bad).expect_err("rejected").0;
    let said: Vec<String> = errs
        .iter()
        .map(|e| format!("{}: {}", e.key, e.message))
        .collect();
    let has = |key: &str, what: &str| {
        assert!(
            said.iter()
                .any(|s| s.starts_with(&format!("{key}: ")) && s.contains(what)),
            "no {key} error about {what:?}: {said:#?}"
        );
    };
    has("dns.nameservers[0]", "say which one answers");
    has("dns.nameservers[1].member", "no controller named \"c9\"");
    has("dns.nameservers[2].member", "not both");
    has("dns.nameservers", "controller \"c1\" serves the zone");
    // One controller (SQLite) has no members to name.
    let sqlite = format!(
        "{EXAMPLE}\n[dns]\nzone = \"shop.example.\"\n\n[[dns.nameservers]]\nname = \"ns1\"\naddress = \"127.0.0.1\"\nmember = \"c1\"\n"
    );
    let errs = parse(&sqlite).expect_err("rejected").0;
    assert!(
        errs.iter()
            .any(|e| e.key == "dns.nameservers[0].member"
                && e.message.contains("several controllers")),
        "{errs:?}"
    );
}

const TABLES: &str = r#"
[[tables.access_keys]]
id = "AKIDEXAMPLE"
secret_env = "TABLES_SECRET"

[tables.regions.a]
listen = "127.0.0.1:8000"
peer_listen = "127.0.0.1:8001"

[tables.regions.b]
listen = "0.0.0.0:8000"
peer_listen = "0.0.0.0:8001"
peer_url = "http://10.0.2.5:8001"
"#;

#[test]
fn a_tables_section_is_valid_and_says_where_each_peer_is_reached() {
    let cfg = parse(&format!("{EXAMPLE}\n{TABLES}")).expect("tables parse");
    let t = cfg.tables.as_ref().expect("tables");
    assert_eq!(t.regions["a"].peer_base(), "http://127.0.0.1:8001");
    assert_eq!(t.regions["b"].peer_base(), "http://10.0.2.5:8001");
    assert_eq!(
        cfg.tables_data_dir(&RegionId::new("a")),
        Some(cfg.agent_state_dir(&RegionId::new("a")).join("tables"))
    );
}

#[test]
fn tables_errors_name_their_key() {
    for (from, to, key, says) in [
        (
            "secret_env = \"TABLES_SECRET\"",
            "secret = \"inline\"",
            "tables.access_keys[0].secret",
            "never inline",
        ),
        (
            "peer_url = \"http://10.0.2.5:8001\"",
            "",
            "tables.regions.b.peer_url",
            "wildcard",
        ),
        (
            "[tables.regions.b]",
            "[tables.regions.z]",
            "tables.regions.z",
            "not defined",
        ),
        (
            "peer_listen = \"127.0.0.1:8001\"",
            "peer_listen = \"127.0.0.1:8000\"",
            "tables.regions.a.peer_listen",
            "must differ",
        ),
    ] {
        let text = format!("{EXAMPLE}\n{}", TABLES.replace(from, to));
        let errs = parse(&text).expect_err("refused").0;
        assert!(
            errs.iter()
                .any(|e| e.key == key && e.message.contains(says)),
            "{key}: {errs:?}"
        );
    }
}

const OBJECTS: &str = r#"
[objects.stores.a]
type = "local"
path = "/srv/objects-a"

[objects.stores.b]
type = "s3"
bucket = "objects-b"
access_key_id_env = "B_KEY"
secret_access_key_env = "B_SECRET"

[[objects.lifecycle]]
store = "b"
prefix = "logs/"
expire_after_days = 30
noncurrent_expire_after_days = 7

[objects.gateway]
listen = { a = "127.0.0.1:9000", b = "127.0.0.1:9001" }
[[objects.gateway.access_keys]]
id = "AKIDGATEWAY"
secret_env = "GATEWAY_SECRET"
"#;

#[test]
fn an_objects_gateway_and_lifecycle_rules_parse() {
    let cfg = parse(&format!("{EXAMPLE}\n{OBJECTS}")).expect("objects parse");
    let o = cfg.objects.as_ref().expect("objects");
    let g = o.gateway.as_ref().expect("gateway");
    assert_eq!(g.bucket, "objects", "the default bucket");
    assert_eq!(g.listen["b"].port(), 9001);
    assert_eq!(o.lifecycle[0].expire_after_days, Some(30));
}

#[test]
fn objects_gateway_and_lifecycle_errors_name_their_key() {
    for (from, to, key, says) in [
        (
            "store = \"b\"",
            "store = \"z\"",
            "objects.lifecycle[0].store",
            "has no object store",
        ),
        (
            "expire_after_days = 30\nnoncurrent_expire_after_days = 7",
            "",
            "objects.lifecycle[0]",
            "needs an action",
        ),
        (
            "store = \"b\"",
            "store = \"a\"",
            "objects.lifecycle[0].noncurrent_expire_after_days",
            "S3-API stores only",
        ),
        (
            "expire_after_days = 30",
            "expire_after_days = 0",
            "objects.lifecycle[0].expire_after_days",
            "at least 1 day",
        ),
        (
            "listen = { a = \"127.0.0.1:9000\", b = \"127.0.0.1:9001\" }",
            "listen = { a = \"127.0.0.1:9000\", c = \"127.0.0.1:9001\" }",
            "objects.gateway.listen.c",
            "no object store",
        ),
        (
            "[objects.gateway]",
            "[objects.gateway]\nbucket = \"Bad_Bucket\"",
            "objects.gateway.bucket",
            "not an S3 bucket name",
        ),
        (
            "secret_env = \"GATEWAY_SECRET\"",
            "secret = \"inline\"",
            "objects.gateway.access_keys[0].secret",
            "never inline",
        ),
    ] {
        let text = format!("{EXAMPLE}\n{}", OBJECTS.replacen(from, to, 1));
        let errs = parse(&text).expect_err(key).0;
        assert!(
            errs.iter()
                .any(|e| e.key == key && e.message.contains(says)),
            "{key}: {says}: {errs:?}"
        );
    }
}
