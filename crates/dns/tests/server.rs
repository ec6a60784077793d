//! The DNS server against a real client (hickory's) on 127.0.0.1 port 0, over UDP and TCP.

mod common;

use common::{Harness, a_records, big_txt, name, query, query_edns};
use hickory_net::proto::op::{Edns, ResponseCode};
use hickory_net::proto::rr::{RData, RecordType};
use lifeboat_core::{HealthStatus, RegionId};

#[tokio::test]
async fn every_record_type_is_answered_authoritatively_over_udp_and_tcp() {
    let h = Harness::start().await;
    let mut udp = h.udp_client();
    let mut tcp = h.tcp_client().await;
    for client in [&mut udp, &mut tcp] {
        let m = query(client, "www.shop.example.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative, "AA flag set");
        assert_eq!(a_records(&m), vec!["192.0.2.10"]);
        assert_eq!(m.answers[0].ttl, 42, "the record's own TTL");

        let m = query(client, "www.shop.example.", RecordType::AAAA).await;
        assert!(
            matches!(&m.answers[0].data, RData::AAAA(ip) if ip.0.to_string() == "2001:db8::10"),
            "{m:?}"
        );
        assert_eq!(m.answers[0].ttl, 30, "the zone's default TTL");

        let m = query(client, "app.shop.example.", RecordType::CNAME).await;
        assert_eq!(m.answers.len(), 1);
        assert!(
            matches!(&m.answers[0].data, RData::CNAME(c) if c.0 == name("www.shop.example.")),
            "{m:?}"
        );

        let m = query(client, "info.shop.example.", RecordType::TXT).await;
        assert!(
            matches!(&m.answers[0].data, RData::TXT(t) if t.to_string() == "hello world"),
            "{m:?}"
        );

        let m = query(client, "_pg._tcp.shop.example.", RecordType::SRV).await;
        let RData::SRV(srv) = &m.answers[0].data else {
            panic!("no SRV: {m:?}")
        };
        assert_eq!((srv.priority, srv.weight, srv.port), (10, 5, 5432));
        assert_eq!(srv.target, name("db.shop.example."));
        assert!(
            m.additionals
                .iter()
                .any(|r| r.name == name("db.shop.example.")
                    && matches!(&r.data, RData::A(a) if a.0.to_string() == "127.0.1.1")),
            "the SRV target's address is in the additional section: {m:?}"
        );

        let m = query(client, "shop.example.", RecordType::MX).await;
        let RData::MX(mx) = &m.answers[0].data else {
            panic!("no MX: {m:?}")
        };
        assert_eq!(
            (mx.preference, &mx.exchange),
            (10, &name("mail.shop.example."))
        );

        let m = query(client, "shop.example.", RecordType::NS).await;
        let mut ns: Vec<String> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::NS(n) => Some(n.0.to_string()),
                _ => None,
            })
            .collect();
        ns.sort();
        assert_eq!(
            ns,
            vec![
                "ns-a.shop.example.",
                "ns-b.shop.example.",
                "ns1.shop.example."
            ]
        );
        assert_eq!(
            m.additionals
                .iter()
                .filter(|r| r.record_type() == RecordType::A)
                .count(),
            3,
            "glue: {m:?}"
        );

        let m = query(client, "shop.example.", RecordType::SOA).await;
        let RData::SOA(soa) = &m.answers[0].data else {
            panic!("no SOA: {m:?}")
        };
        assert_eq!(soa.serial, 1, "the serial is the routing table's version");
        assert_eq!(soa.mname, name("ns1.shop.example."));
        assert_eq!(soa.minimum, 10);
    }
    assert!(h.metrics.queries("A", "NOERROR") >= 2);
    assert!(h.metrics.queries("SOA", "NOERROR") >= 2);
}

#[tokio::test]
async fn nxdomain_nodata_and_refused_are_distinguished() {
    let h = Harness::start().await;
    let mut c = h.udp_client();

    let m = query(&mut c, "nope.shop.example.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authoritative);
    assert!(m.answers.is_empty());
    assert!(
        m.authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA),
        "SOA in authority: {m:?}"
    );

    // NODATA: the name exists, the type does not.
    let m = query(&mut c, "www.shop.example.", RecordType::TXT).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    let soa = m
        .authorities
        .iter()
        .find(|r| r.record_type() == RecordType::SOA)
        .expect("SOA in authority");
    assert_eq!(soa.name, name("shop.example."));

    // An empty non-terminal (parent of deep.sub) exists: NODATA, not NXDOMAIN.
    let m = query(&mut c, "sub.shop.example.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());

    // Outside the zone: REFUSED, not authoritative.
    let m = query(&mut c, "www.example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(!m.metadata.authoritative);

    // Zone transfers are refused: secondaries are fed the routing table instead.
    let mut tcp = h.tcp_client().await;
    let m = query(&mut tcp, "shop.example.", RecordType::AXFR).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);

    assert_eq!(h.metrics.queries("A", "NXDOMAIN"), 1);
    assert_eq!(h.metrics.queries("A", "REFUSED"), 1);
    let mut page = lifeboat_core::metrics::Page::new();
    h.metrics.render_prometheus(&mut page);
    let text = page.render();
    assert!(
        text.contains("lifeboat_dns_queries_total{qtype=\"A\",rcode=\"NXDOMAIN\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("lifeboat_dns_queries_total{qtype=\"TXT\",rcode=\"NOERROR\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn edns_is_echoed_and_unknown_versions_get_badvers() {
    let h = Harness::start().await;
    let mut c = h.udp_client();
    let mut edns = Edns::new();
    edns.set_max_payload(1232).set_version(0);
    let m = query_edns(&mut c, "www.shop.example.", RecordType::A, Some(edns)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let opt = m
        .edns
        .as_ref()
        .expect("an OPT record answers an OPT record");
    assert_eq!(opt.version(), 0);

    let m = query_edns(&mut c, "www.shop.example.", RecordType::A, None).await;
    assert!(
        m.edns.is_none(),
        "no OPT record in the answer to a query without one"
    );
    assert_eq!(a_records(&m), vec!["192.0.2.10"]);

    let mut edns = Edns::new();
    edns.set_max_payload(1232).set_version(1);
    let m = query_edns(&mut c, "www.shop.example.", RecordType::A, Some(edns)).await;
    // RCODE 16 is BADVERS in an OPT answer (hickory's decoder names it BADSIG, same code).
    assert_eq!(
        u16::from(m.metadata.response_code),
        u16::from(ResponseCode::BADVERS),
        "{m:?}"
    );
}

#[tokio::test]
async fn a_large_txt_is_truncated_over_udp_and_whole_over_tcp() {
    let h = Harness::start().await;
    let mut udp = h.udp_client();
    // Without EDNS the limit is 512 bytes, with it the advertised payload size.
    let m = query_edns(&mut udp, "big.shop.example.", RecordType::TXT, None).await;
    assert!(m.metadata.truncation, "TC set without EDNS");
    let mut edns = Edns::new();
    edns.set_max_payload(1232).set_version(0);
    let m = query_edns(&mut udp, "big.shop.example.", RecordType::TXT, Some(edns)).await;
    assert!(m.metadata.truncation, "TC set past the EDNS payload size");
    assert!(
        m.answers.is_empty(),
        "a truncated answer carries no partial RRset"
    );

    let mut tcp = h.tcp_client().await;
    let m = query(&mut tcp, "big.shop.example.", RecordType::TXT).await;
    assert!(!m.metadata.truncation);
    let RData::TXT(txt) = &m.answers[0].data else {
        panic!("no TXT: {m:?}")
    };
    let whole: Vec<u8> = txt
        .txt_data
        .iter()
        .flat_map(|s| s.iter().copied())
        .collect();
    assert_eq!(
        String::from_utf8(whole).expect("utf8"),
        big_txt(),
        "the whole value over TCP"
    );
}

#[tokio::test]
async fn names_are_case_insensitive_and_cname_chains_are_followed() {
    let h = Harness::start().await;
    let mut c = h.udp_client();
    let m = query(&mut c, "WwW.ShOp.ExAmPlE.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&m), vec!["192.0.2.10"]);

    // alias -> app -> www: the whole chain, in order, in the answer section.
    let m = query(&mut c, "ALIAS.shop.example.", RecordType::A).await;
    let chain: Vec<(String, RecordType)> = m
        .answers
        .iter()
        .map(|r| (r.name.to_ascii().to_lowercase(), r.record_type()))
        .collect();
    assert_eq!(
        chain,
        vec![
            ("alias.shop.example.".into(), RecordType::CNAME),
            ("app.shop.example.".into(), RecordType::CNAME),
            ("www.shop.example.".into(), RecordType::A),
        ]
    );
}

#[tokio::test]
async fn failover_flips_when_the_routing_table_changes() {
    let h = Harness::start().await;
    let mut c = h.udp_client();
    let mut tcp = h.tcp_client().await;
    assert_eq!(
        a_records(&query(&mut c, "db.shop.example.", RecordType::A).await),
        vec!["127.0.1.1"]
    );
    let switches = h.metrics.answer_switches();

    // The controller promotes b: the next query sees it (no restart, no reload).
    h.publish(|t| {
        t.active = Some(RegionId::new("b"));
        t.regions
            .insert(RegionId::new("a"), HealthStatus::Unhealthy);
    });
    assert_eq!(
        a_records(&query(&mut c, "db.shop.example.", RecordType::A).await),
        vec!["127.0.2.1"]
    );
    assert_eq!(
        a_records(&query(&mut tcp, "db.shop.example.", RecordType::A).await),
        vec!["127.0.2.1"]
    );
    let m = query(&mut c, "shop.example.", RecordType::SOA).await;
    let RData::SOA(soa) = &m.answers[0].data else {
        panic!("no SOA")
    };
    assert_eq!(soa.serial, 2, "the serial increased with the change");
    assert!(
        h.metrics.answer_switches() > switches,
        "the switch is counted"
    );
    assert_eq!(h.metrics.serial(), 2);

    // And back.
    h.publish(|t| {
        t.active = Some(RegionId::new("a"));
        t.regions.insert(RegionId::new("a"), HealthStatus::Healthy);
    });
    assert_eq!(
        a_records(&query(&mut c, "db.shop.example.", RecordType::A).await),
        vec!["127.0.1.1"]
    );
}

#[tokio::test]
async fn check_bound_failover_follows_health_and_falls_back_to_the_primary() {
    let h = Harness::start().await;
    let mut c = h.udp_client();
    assert_eq!(
        a_records(&query(&mut c, "web.shop.example.", RecordType::A).await),
        vec!["192.0.2.1"]
    );
    h.publish(|t| {
        t.checks.insert("web-a".into(), HealthStatus::Unhealthy);
    });
    assert_eq!(
        a_records(&query(&mut c, "web.shop.example.", RecordType::A).await),
        vec!["192.0.2.2"],
        "primary down: the secondary"
    );
    h.publish(|t| {
        t.checks.insert("web-b".into(), HealthStatus::Unhealthy);
    });
    assert_eq!(
        a_records(&query(&mut c, "web.shop.example.", RecordType::A).await),
        vec!["192.0.2.1"],
        "both down: the primary (Route 53's rule)"
    );
}

#[tokio::test]
async fn weighted_answers_follow_the_weights_and_leave_out_unhealthy_members() {
    let h = Harness::start().await;
    let mut c = h.udp_client();
    let n = 2000;
    let mut first = 0;
    for _ in 0..n {
        let m = query(&mut c, "api.shop.example.", RecordType::A).await;
        let a = a_records(&m);
        assert_eq!(a.len(), 1, "one weighted member per answer");
        if a[0] == "192.0.2.31" {
            first += 1;
        }
    }
    // Weights 3:1 -> 75%. Binomial sd is ~1%; allow 5 sd.
    let share = f64::from(first) / f64::from(n);
    assert!(
        (share - 0.75).abs() < 0.05,
        "share of the weight-3 member: {share}"
    );

    h.publish(|t| {
        t.regions
            .insert(RegionId::new("a"), HealthStatus::Unhealthy);
    });
    for _ in 0..50 {
        let m = query(&mut c, "api.shop.example.", RecordType::A).await;
        assert_eq!(
            a_records(&m),
            vec!["192.0.2.32"],
            "the unhealthy member is left out"
        );
    }
}

#[tokio::test]
async fn a_config_without_dns_is_an_error() {
    let mut cfg = common::config();
    cfg.dns = None;
    let (_tx, rx) = tokio::sync::watch::channel(common::initial_table());
    let err = lifeboat_dns::DnsServer::new(&cfg, rx).expect_err("no [dns]");
    assert!(format!("{err:#}").contains("[dns]"), "{err:#}");
}

#[tokio::test]
async fn an_agent_fed_the_controllers_table_answers_alike_and_outlives_its_feed() {
    let controller = Harness::start().await;

    // The agent's secondary: the same server, fed by a channel the agent updates with
    // the table it polls from the controller.
    let (agent_tx, agent_rx) = tokio::sync::watch::channel(controller.routing.borrow().clone());
    let agent = lifeboat_dns::DnsServer::new(&common::config(), agent_rx).expect("agent server");
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let agent_addr = udp.local_addr().expect("addr");
    let cancel = tokio_util::sync::CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    tokio::spawn(agent.run(udp, tcp, cancel));
    let stream = hickory_net::udp::UdpClientStream::builder(
        agent_addr,
        hickory_net::runtime::TokioRuntimeProvider::default(),
    )
    .build();
    let (mut agent_client, bg) = hickory_net::client::Client::<
        hickory_net::runtime::TokioRuntimeProvider,
    >::from_sender(stream);
    tokio::spawn(bg);
    let mut controller_client = controller.udp_client();

    controller.publish(|t| t.active = Some(RegionId::new("b")));
    agent_tx.send_replace(controller.routing.borrow().clone()); // the agent's poll
    for c in [&mut controller_client, &mut agent_client] {
        assert_eq!(
            a_records(&query(c, "db.shop.example.", RecordType::A).await),
            vec!["127.0.2.1"]
        );
        let m = query(c, "shop.example.", RecordType::SOA).await;
        let RData::SOA(soa) = &m.answers[0].data else {
            panic!("no SOA")
        };
        assert_eq!(soa.serial, 2, "both nameservers serve the same serial");
    }

    // The witness site is lost: the agent's feed stops, the agent keeps the last decision.
    drop(controller);
    drop(agent_tx);
    assert_eq!(
        a_records(&query(&mut agent_client, "db.shop.example.", RecordType::A).await),
        vec!["127.0.2.1"]
    );
}

/// A query asked again (another ID, the same bytes otherwise) is answered from the
/// packet cache: the same answer with its own ID, counted every time; another case of
/// the name is another question, echoed in its own case; and a new routing table is
/// answered at once, also for a question answered before it.
#[tokio::test]
async fn a_repeated_query_gets_its_own_id_is_counted_and_sees_the_newest_table() {
    use common::{decode_strict, edns, query_msg, raw_udp};
    let h = Harness::start().await;
    let mut q = query_msg("db.shop.example.", RecordType::A, Some(edns(1232, false)));
    let before = h.metrics.queries("A", "NOERROR");
    let mut first: Option<Vec<u8>> = None;
    for id in [1u16, 2, 0xbeef, 2] {
        q.metadata.id = id;
        let bytes = raw_udp(h.udp, &q.to_vec().expect("encode")).await;
        let m = decode_strict(&bytes);
        assert_eq!(m.metadata.id, id, "the response carries the query's ID");
        assert_eq!(a_records(&m), vec!["127.0.1.1"]);
        match &first {
            None => first = Some(bytes),
            Some(f) => assert_eq!(f[2..], bytes[2..], "the same answer but for the ID"),
        }
    }
    assert_eq!(
        h.metrics.queries("A", "NOERROR") - before,
        4,
        "a query answered from the cache is counted too"
    );

    // hickory's encoder writes names in lower case: the mixed case is set in the bytes.
    let mut upper = q.to_vec().expect("encode");
    let qname = 12..12 + b"\x02db\x04shop\x07example\x00".len();
    for (i, b) in upper[qname].iter_mut().enumerate() {
        if !(4..=8).contains(&i) {
            b.make_ascii_uppercase();
        }
    }
    for id in [5u16, 6] {
        upper[..2].copy_from_slice(&id.to_be_bytes());
        let m = decode_strict(&raw_udp(h.udp, &upper).await);
        assert_eq!(m.metadata.id, id);
        assert_eq!(m.queries[0].name().to_string(), "DB.shop.EXAMPLE.");
        assert_eq!(a_records(&m), vec!["127.0.1.1"]);
    }

    h.publish(|t| {
        t.active = Some(RegionId::new("b"));
        t.regions
            .insert(RegionId::new("a"), HealthStatus::Unhealthy);
    });
    for id in [3u16, 4] {
        q.metadata.id = id;
        let m = decode_strict(&raw_udp(h.udp, &q.to_vec().expect("encode")).await);
        assert_eq!(m.metadata.id, id);
        assert_eq!(
            a_records(&m),
            vec!["127.0.2.1"],
            "the question answered before the failover gets the new answer"
        );
    }
}
