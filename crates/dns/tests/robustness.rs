//! Malformed packets do not stop the server, and `dig` (a client that is not ours) gets
//! correct answers over UDP and TCP.

mod common;

use common::{Harness, a_records, query};
use hickory_net::proto::rr::RecordType;
use std::process::Command;
use tokio::net::UdpSocket;

/// A query header: id, flags (RD), the given counts.
fn header(id: u16, qd: u16, an: u16, ns: u16, ar: u16) -> Vec<u8> {
    let mut h = Vec::new();
    for v in [id, 0x0100, qd, an, ns, ar] {
        h.extend_from_slice(&v.to_be_bytes());
    }
    h
}

fn malformed_packets() -> Vec<(&'static str, Vec<u8>)> {
    let mut rng = fastrand::Rng::with_seed(0x11fe_b0a7);
    let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();
    for _ in 0..200 {
        let len = rng.usize(0..600);
        out.push(("random bytes", (0..len).map(|_| rng.u8(..)).collect()));
    }
    for len in 0..12 {
        out.push(("truncated header", header(7, 1, 0, 0, 0)[..len].to_vec()));
    }
    // A question whose name is a compression pointer to itself (offset 12).
    let mut p = header(8, 1, 0, 0, 0);
    p.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
    out.push(("compression loop", p));
    // Two pointers pointing at each other.
    let mut p = header(9, 1, 0, 0, 0);
    p.extend_from_slice(&[0xC0, 14, 0xC0, 12, 0, 1, 0, 1]);
    out.push(("compression ping-pong", p));
    // A name of 200 one-byte labels (more than the 255 bytes a name may have).
    let mut p = header(10, 1, 0, 0, 0);
    for _ in 0..200 {
        p.extend_from_slice(&[1, b'x']);
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    out.push(("huge label count", p));
    // A label longer than 63 bytes.
    let mut p = header(11, 1, 0, 0, 0);
    p.push(64);
    p.extend_from_slice(&[b'y'; 64]);
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    out.push(("label too long", p));
    // Counts promising far more than the packet holds.
    out.push(("lying counts", header(12, 65535, 65535, 65535, 65535)));
    // A valid question followed by an answer record whose rdlength runs past the end.
    let mut p = header(13, 1, 1, 0, 0);
    p.extend_from_slice(&[3, b'w', b'w', b'w', 4, b's', b'h', b'o', b'p', 7]);
    p.extend_from_slice(b"example");
    p.extend_from_slice(&[
        0, 0, 1, 0, 1, 0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0xFF, 0xFF, 1, 2,
    ]);
    out.push(("rdlength past the end", p));
    // A response (QR set) sent as a query: reflection bait.
    let mut p = header(14, 1, 0, 0, 0);
    p[2] |= 0x80;
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    out.push(("response as query", p));
    out
}

#[tokio::test]
async fn malformed_packets_do_not_stop_the_server() {
    let h = Harness::start().await;
    let raw = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    raw.connect(h.udp).await.expect("connect");
    let mut c = h.udp_client();
    for (i, (what, packet)) in malformed_packets().into_iter().enumerate() {
        raw.send(&packet)
            .await
            .unwrap_or_else(|e| panic!("send {what}: {e}"));
        // Every so often, and after each crafted packet, a valid query still gets its answer.
        if i % 20 == 0 || i >= 200 {
            let m = query(&mut c, "www.shop.example.", RecordType::A).await;
            assert_eq!(a_records(&m), vec!["192.0.2.10"], "after {what}");
        }
    }
    // A packet whose header parses but whose question loops gets FORMERR, not silence.
    let mut p = header(21, 1, 0, 0, 0);
    p.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
    raw.send(&p).await.expect("send");
    let mut buf = vec![0u8; 512];
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), raw.recv(&mut buf))
            .await
            .expect("an answer to the compression loop")
            .expect("recv");
        // Earlier garbage may also have drawn FORMERRs: find ours by id.
        let m = hickory_net::proto::op::Message::from_vec(&buf[..n]).expect("a valid response");
        if m.metadata.id == 21 {
            assert_eq!(
                m.metadata.response_code,
                hickory_net::proto::op::ResponseCode::FormErr
            );
            break;
        }
    }
    assert!(h.metrics.queries("NONE", "FORMERR") > 0);

    // And over TCP too: a garbage frame closes that connection only.
    let mut tcp = tokio::net::TcpStream::connect(h.tcp)
        .await
        .expect("connect");
    use tokio::io::AsyncWriteExt;
    tcp.write_all(&[0, 5, 1, 2, 3, 4, 5]).await.expect("write");
    tcp.write_all(&[0xFF, 0xFF, 0xC0, 0x0C])
        .await
        .expect("write");
    drop(tcp);
    let mut tc = h.tcp_client().await;
    assert_eq!(
        a_records(&query(&mut tc, "www.shop.example.", RecordType::A).await),
        vec!["192.0.2.10"]
    );
}

/// Runs dig. A missing dig fails the test: the test command installs dnsutils.
fn dig(args: &[&str]) -> String {
    let out = match Command::new("dig").args(args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`dig` is not installed: run the README's test command (it installs dnsutils) or apt-get install -y dnsutils"
        ),
        Err(e) => panic!("running dig: {e}"),
    };
    assert!(
        out.status.success(),
        "dig {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn dig_gets_answers_over_udp_and_tcp() {
    let h = Harness::start().await;
    let udp_port = h.udp.port().to_string();
    let tcp_port = h.tcp.port().to_string();
    // dig runs as a child process: keep it off the test's runtime thread.
    let short = {
        let p = udp_port.clone();
        tokio::task::spawn_blocking(move || {
            dig(&[
                "@127.0.0.1",
                "-p",
                &p,
                "+short",
                "+tries=1",
                "+time=5",
                "db.shop.example.",
                "A",
            ])
        })
        .await
        .expect("join")
    };
    assert_eq!(short.trim(), "127.0.1.1");

    let full = tokio::task::spawn_blocking(move || {
        dig(&[
            "@127.0.0.1",
            "-p",
            &tcp_port,
            "+tcp",
            "+tries=1",
            "+time=5",
            "alias.shop.example.",
            "A",
        ])
    })
    .await
    .expect("join");
    assert!(full.contains("status: NOERROR"), "{full}");
    assert!(full.contains("flags: qr aa"), "authoritative: {full}");
    assert!(full.contains("alias.shop.example.\t"), "{full}");
    assert!(
        full.contains("192.0.2.10"),
        "the CNAME chain ends in the address: {full}"
    );

    h.publish(|t| t.active = Some(lifeboat_core::RegionId::new("b")));
    let nx = tokio::task::spawn_blocking(move || {
        dig(&[
            "@127.0.0.1",
            "-p",
            &udp_port,
            "+tries=1",
            "+time=5",
            "db.shop.example.",
            "A",
        ])
    })
    .await
    .expect("join");
    assert!(nx.contains("127.0.2.1"), "the flip is visible to dig: {nx}");
    assert!(
        nx.contains("EDNS: version: 0"),
        "dig's EDNS query is answered with EDNS: {nx}"
    );
}
