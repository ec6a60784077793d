//! RFC rules the answers must follow (issue 14), each against a real server on port 0:
//! negative TTLs (RFC 2308), CNAME chains ending without data (RFC 6604), IXFR (RFC 1995),
//! the DO bit (RFC 3225), UDP truncation (RFC 1035, RFC 2181 §9), the EDNS payload cap
//! (DNS flag day 2020) and ANY (RFC 8482).

mod common;

use common::{
    Harness, a_records, authority_soa, decode_strict, edns, mid_txt, name, query, query_edns,
    query_msg, raw_tcp, raw_udp,
};
use hickory_net::proto::op::{Message, OpCode, Query, ResponseCode};
use hickory_net::proto::rr::rdata::SOA;
use hickory_net::proto::rr::{DNSClass, RData, Record, RecordType};
use lifeboat_core::{HealthStatus, RegionId};

/// The zone's SOA TTL (the default) and MINIMUM (`negative_ttl = "10s"`).
const SOA_TTL: u32 = 60;
const SOA_MINIMUM: u32 = 10;

#[tokio::test]
async fn negative_answers_carry_the_soa_with_the_lesser_of_its_ttl_and_minimum() {
    let h = Harness::start().await;
    let mut udp = h.udp_client();
    let mut tcp = h.tcp_client().await;
    for c in [&mut udp, &mut tcp] {
        let m = query(c, "shop.example.", RecordType::SOA).await;
        assert_eq!(
            m.answers[0].ttl, SOA_TTL,
            "the SOA's own TTL when asked for"
        );

        for (qname, qtype, rcode) in [
            ("nope.shop.example.", RecordType::A, ResponseCode::NXDomain),
            ("www.shop.example.", RecordType::TXT, ResponseCode::NoError),
            ("sub.shop.example.", RecordType::A, ResponseCode::NoError),
        ] {
            let m = query(c, qname, qtype).await;
            assert_eq!(m.metadata.response_code, rcode, "{qname} {qtype}");
            let soa = authority_soa(&m);
            assert_eq!(soa.len(), 1, "{qname} {qtype}: one SOA: {m:?}");
            assert_eq!(
                soa[0].ttl,
                SOA_TTL.min(SOA_MINIMUM),
                "{qname} {qtype}: RFC 2308 §3: min(SOA TTL, MINIMUM)"
            );
        }
    }
}

fn chain(m: &Message) -> Vec<(String, RecordType)> {
    m.answers
        .iter()
        .map(|r| (r.name.to_ascii().to_lowercase(), r.record_type()))
        .collect()
}

#[tokio::test]
async fn a_cname_chain_answers_with_the_rcode_and_soa_of_its_last_name() {
    let h = Harness::start().await;
    let mut udp = h.udp_client();
    let mut tcp = h.tcp_client().await;
    for c in [&mut udp, &mut tcp] {
        // dangling -> nowhere (in the zone, does not exist): NXDOMAIN (RFC 6604 §2).
        let m = query(c, "dangling.shop.example.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{m:?}");
        assert!(m.metadata.authoritative);
        assert_eq!(
            chain(&m),
            vec![("dangling.shop.example.".into(), RecordType::CNAME)]
        );
        let soa = authority_soa(&m);
        assert_eq!(soa.len(), 1, "SOA in authority: {m:?}");
        assert_eq!(soa[0].ttl, SOA_MINIMUM);

        // tomail -> mail (A only), asked AAAA: NODATA at the end of the chain.
        let m = query(c, "tomail.shop.example.", RecordType::AAAA).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(
            chain(&m),
            vec![("tomail.shop.example.".into(), RecordType::CNAME)]
        );
        assert_eq!(authority_soa(&m).len(), 1, "SOA in authority: {m:?}");
        assert_eq!(authority_soa(&m)[0].ttl, SOA_MINIMUM);

        // A chain leaving the zone is a positive answer: no SOA.
        let m = query(c, "ext.shop.example.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(
            chain(&m),
            vec![("ext.shop.example.".into(), RecordType::CNAME)]
        );
        assert!(m.authorities.is_empty(), "{m:?}");

        // A chain through a failover name, with and without the asked type.
        let m = query(c, "pg.shop.example.", RecordType::A).await;
        assert_eq!(a_records(&m), vec!["127.0.1.1"]);
        assert!(m.authorities.is_empty(), "{m:?}");
        let m = query(c, "pg.shop.example.", RecordType::AAAA).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(
            chain(&m),
            vec![("pg.shop.example.".into(), RecordType::CNAME)]
        );
        assert_eq!(authority_soa(&m).len(), 1, "{m:?}");
    }
    h.publish(|t| t.active = Some(RegionId::new("b")));
    let m = query(&mut udp, "pg.shop.example.", RecordType::A).await;
    assert_eq!(
        a_records(&m),
        vec!["127.0.2.1"],
        "the chain follows the flip"
    );
    h.publish(|t| {
        t.regions
            .insert(RegionId::new("b"), HealthStatus::Unhealthy);
    });
    let m = query(&mut udp, "pg.shop.example.", RecordType::A).await;
    assert_eq!(
        a_records(&m),
        vec!["127.0.2.1"],
        "the active member answers though its region is unhealthy"
    );
}

/// An IXFR query (RFC 1995 §3): the client's SOA in the authority section.
fn ixfr_query() -> Vec<u8> {
    let mut msg = query_msg("shop.example.", RecordType::IXFR, None);
    msg.add_authority(Record::from_rdata(
        name("shop.example."),
        0,
        RData::SOA(SOA::new(
            name("ns1.shop.example."),
            name("hostmaster.shop.example."),
            0,
            0,
            0,
            0,
            0,
        )),
    ));
    msg.to_vec().expect("encode IXFR query")
}

#[tokio::test]
async fn ixfr_is_refused_like_axfr_over_udp_and_tcp() {
    let h = Harness::start().await;
    for m in [
        decode_strict(&raw_udp(h.udp, &ixfr_query()).await),
        decode_strict(&raw_tcp(h.tcp, &ixfr_query()).await),
    ] {
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{m:?}");
        assert!(!m.metadata.authoritative);
        assert!(m.answers.is_empty());
    }
    let axfr = query_msg("shop.example.", RecordType::AXFR, None)
        .to_vec()
        .expect("encode");
    let m = decode_strict(&raw_udp(h.udp, &axfr).await);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert_eq!(h.metrics.queries("IXFR", "REFUSED"), 2);
}

#[tokio::test]
async fn the_do_bit_is_echoed_in_the_opt_record() {
    let h = Harness::start().await;
    let mut udp = h.udp_client();
    let mut tcp = h.tcp_client().await;
    for c in [&mut udp, &mut tcp] {
        for dnssec_ok in [true, false] {
            let m = query_edns(
                c,
                "www.shop.example.",
                RecordType::A,
                Some(edns(1232, dnssec_ok)),
            )
            .await;
            let opt = m.edns.as_ref().expect("OPT answers OPT");
            assert_eq!(opt.flags().dnssec_ok, dnssec_ok, "RFC 3225 §3: DO copied");
            assert_eq!(a_records(&m), vec!["192.0.2.10"]);
        }
        // Also on negative answers and errors.
        let m = query_edns(
            c,
            "nope.shop.example.",
            RecordType::A,
            Some(edns(1232, true)),
        )
        .await;
        assert!(m.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok));
    }
}

#[tokio::test]
async fn a_udp_answer_too_large_is_a_well_formed_message_with_tc() {
    let h = Harness::start().await;
    // Without EDNS: 512 bytes. With EDNS 4096: the server's own 1232-byte cap.
    for (qname, opt) in [
        ("big.shop.example.", None),
        ("mid.shop.example.", None),
        ("big.shop.example.", Some(edns(1232, false))),
        ("mid.shop.example.", Some(edns(4096, false))),
    ] {
        let with_edns = opt.is_some();
        let q = query_msg(qname, RecordType::TXT, opt)
            .to_vec()
            .expect("encode");
        let bytes = raw_udp(h.udp, &q).await;
        let limit = if with_edns { 1232 } else { 512 };
        assert!(bytes.len() <= limit, "{qname}: {} bytes", bytes.len());
        let m = decode_strict(&bytes);
        assert!(m.metadata.truncation, "{qname} edns={with_edns}: TC: {m:?}");
        assert!(m.metadata.authoritative);
        assert!(
            m.answers.is_empty() && m.authorities.is_empty() && m.additionals.is_empty(),
            "no partial sections: {m:?}"
        );
        assert_eq!(m.queries, vec![Query::query(name(qname), RecordType::TXT)]);
        assert_eq!(m.edns.is_some(), with_edns, "OPT answers OPT");
        // The same question over TCP: the whole answer.
        let m = decode_strict(&raw_tcp(h.tcp, &q).await);
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 1);
    }
}

#[tokio::test]
async fn the_edns_payload_is_capped_at_1232_bytes_unless_configured() {
    let h = Harness::start().await;
    let mut c = h.udp_client();
    let m = query_edns(
        &mut c,
        "www.shop.example.",
        RecordType::A,
        Some(edns(4096, false)),
    )
    .await;
    assert_eq!(
        m.edns.as_ref().map(|e| e.max_payload()),
        Some(1232),
        "the OPT record advertises the server's limit"
    );
    let m = query_edns(
        &mut c,
        "mid.shop.example.",
        RecordType::TXT,
        Some(edns(4096, false)),
    )
    .await;
    assert!(m.metadata.truncation, "1500 bytes do not fit 1232: {m:?}");

    let wide = Harness::start_with(|s| s.with_max_udp_payload(4096)).await;
    let mut c = wide.udp_client();
    let m = query_edns(
        &mut c,
        "mid.shop.example.",
        RecordType::TXT,
        Some(edns(4096, false)),
    )
    .await;
    assert!(!m.metadata.truncation, "a 4096-byte limit fits it");
    let RData::TXT(txt) = &m.answers[0].data else {
        panic!("no TXT: {m:?}")
    };
    let whole: Vec<u8> = txt
        .txt_data
        .iter()
        .flat_map(|s| s.iter().copied())
        .collect();
    assert_eq!(String::from_utf8(whole).expect("utf8"), mid_txt());
    assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(4096));
    // A requestor advertising less than the server's limit gets at most that.
    let m = query_edns(
        &mut c,
        "mid.shop.example.",
        RecordType::TXT,
        Some(edns(1400, false)),
    )
    .await;
    assert!(m.metadata.truncation);
}

#[tokio::test]
async fn any_is_answered_with_one_rrset() {
    let h = Harness::start().await;
    let mut udp = h.udp_client();
    let mut tcp = h.tcp_client().await;
    for c in [&mut udp, &mut tcp] {
        // RFC 8482 §4.2: one RRset of the name (A and AAAA exist at www).
        let m = query(c, "www.shop.example.", RecordType::ANY).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(chain(&m), vec![("www.shop.example.".into(), RecordType::A)]);
        // The apex holds SOA, NS and MX: one of them, with its additional data.
        let m = query(c, "shop.example.", RecordType::ANY).await;
        let types: std::collections::BTreeSet<RecordType> =
            m.answers.iter().map(Record::record_type).collect();
        assert_eq!(types.len(), 1, "{m:?}");
        // A name that does not exist is NXDOMAIN for ANY too.
        let m = query(c, "nope.shop.example.", RecordType::ANY).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(authority_soa(&m).len(), 1);
    }
}

#[tokio::test]
async fn other_opcodes_classes_and_question_counts_get_errors() {
    let h = Harness::start().await;
    let mut notify = query_msg("shop.example.", RecordType::SOA, None);
    notify.metadata.op_code = OpCode::Notify;
    let mut chaos = query_msg("version.bind.", RecordType::TXT, None);
    chaos.queries[0].set_query_class(DNSClass::CH);
    let mut empty = query_msg("shop.example.", RecordType::SOA, None);
    empty.queries.clear();
    let mut any_class = query_msg("www.shop.example.", RecordType::A, None);
    any_class.queries[0].set_query_class(DNSClass::ANY);
    for (msg, rcode, aa) in [
        (notify, ResponseCode::NotImp, false),
        (chaos, ResponseCode::Refused, false),
        (empty, ResponseCode::FormErr, false),
        (any_class, ResponseCode::NoError, true),
    ] {
        let m = decode_strict(&raw_udp(h.udp, &msg.to_vec().expect("encode")).await);
        assert_eq!(m.metadata.response_code, rcode, "{msg:?} -> {m:?}");
        assert_eq!(m.metadata.authoritative, aa);
        assert_eq!(m.metadata.id, msg.metadata.id);
        assert_eq!(m.queries, msg.queries, "the question is echoed");
    }
}

#[tokio::test]
async fn rate_limiting_drops_or_truncates_past_the_limit_per_network_over_udp_only() {
    let h = Harness::start_with(|s| {
        s.with_rate_limit(lifeboat_dns::RateLimit {
            responses_per_second: 5,
            slip: 2,
        })
    })
    .await;
    // A flood of one query from one address, sent before any response is read.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let n = 40u16;
    for id in 0..n {
        let mut m = query_msg("www.shop.example.", RecordType::A, None);
        m.metadata.id = id;
        sock.send_to(&m.to_vec().expect("encode"), h.udp)
            .await
            .expect("send");
    }
    let (mut full, mut truncated) = (0u64, 0u64);
    let mut buf = vec![0u8; 4096];
    while let Ok(Ok((len, _))) = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        sock.recv_from(&mut buf),
    )
    .await
    {
        let m = decode_strict(&buf[..len]);
        if m.metadata.truncation {
            assert!(m.answers.is_empty(), "a slipped answer is bare: {m:?}");
            truncated += 1;
        } else {
            assert_eq!(a_records(&m), vec!["192.0.2.10"]);
            full += 1;
        }
    }
    // The burst (5), plus a token per 200 ms the flood took on a loaded machine; then one
    // in two of the rest slips (each refill restarts the count: ±1 per refill).
    assert!((5..=10).contains(&full), "full answers: {full}");
    let rest = u64::from(n) - full;
    let slack = full - 5 + 1;
    assert!(
        truncated + slack >= rest / 2 && truncated <= rest / 2 + slack,
        "truncated answers: {truncated} of {rest} limited"
    );
    let (dropped, slipped) = h.metrics.rate_limited();
    assert_eq!(slipped, truncated);
    assert_eq!(u64::from(n) - full - slipped, dropped);

    // Another network is not limited by this one; TCP is never limited.
    let other = tokio::net::UdpSocket::bind("127.0.9.1:0")
        .await
        .expect("bind 127.0.9.1");
    let q = query_msg("www.shop.example.", RecordType::A, None)
        .to_vec()
        .expect("encode");
    other.send_to(&q, h.udp).await.expect("send");
    let (len, _) =
        tokio::time::timeout(std::time::Duration::from_secs(5), other.recv_from(&mut buf))
            .await
            .expect("an answer for another network")
            .expect("recv");
    assert_eq!(a_records(&decode_strict(&buf[..len])), vec!["192.0.2.10"]);
    for _ in 0..10 {
        let m = decode_strict(&raw_tcp(h.tcp, &q).await);
        assert_eq!(a_records(&m), vec!["192.0.2.10"]);
    }
}
