//! Tests of the public API as a whole: names, policy, port rules, payload
//! signatures, and property tests over arbitrary input. Per-protocol parsing
//! details are tested next to each parser.

#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::arithmetic_side_effects
)]

use super::*;
use proptest::prelude::*;
use Transport::{Tcp, Udp};

const PRIV: [u8; 4] = [10, 0, 1, 2];
const PUB: [u8; 4] = [203, 0, 113, 7];

// ---------------------------------------------------------------- names

#[test]
fn protocol_names_and_indices() {
    let names: Vec<&str> = AlgProtocol::ALL.iter().map(|p| p.name()).collect();
    assert_eq!(names, ["sip", "h323", "rtsp", "dns", "ftp", "tftp"]);
    assert_eq!(AlgProtocol::ALL.len(), AlgProtocol::COUNT);
    for (i, p) in AlgProtocol::ALL.into_iter().enumerate() {
        assert_eq!(p.index(), i);
        assert_eq!(AlgProtocol::from_name(p.name()), Some(p));
        assert_eq!(AlgProtocol::from_name(&p.name().to_uppercase()), Some(p));
        assert_eq!(p.to_string(), p.name());
        assert_eq!(p.name().parse::<AlgProtocol>(), Ok(p));
    }
    assert_eq!(AlgProtocol::from_name("h.323"), Some(AlgProtocol::H323));
    assert_eq!(AlgProtocol::from_name("H.323"), Some(AlgProtocol::H323));
    assert_eq!(AlgProtocol::from_name("SiP"), Some(AlgProtocol::Sip));
    for bad in ["", "http", "h32", "h.3233", " sip", "sip "] {
        assert_eq!(AlgProtocol::from_name(bad), None, "{bad:?}");
    }
    let err = "smtp".parse::<AlgProtocol>().unwrap_err();
    assert_eq!(err.to_string(), "unknown ALG protocol name");
    assert!(AlgProtocol::Sip < AlgProtocol::Tftp);
}

#[test]
fn action_names() {
    assert_eq!(AlgAction::default(), AlgAction::Drop);
    for (a, n) in [
        (AlgAction::Drop, "drop"),
        (AlgAction::Pass, "pass"),
        (AlgAction::Inspect, "inspect"),
    ] {
        assert_eq!(a.name(), n);
        assert_eq!(AlgAction::from_name(n), Some(a));
        assert_eq!(AlgAction::from_name(&n.to_uppercase()), Some(a));
        assert_eq!(n.parse::<AlgAction>(), Ok(a));
        assert_eq!(a.to_string(), n);
    }
    assert_eq!(AlgAction::from_name("allow"), None);
    assert!("".parse::<AlgAction>().is_err());
}

#[test]
fn field_names() {
    let mut seen = std::collections::HashSet::new();
    for f in Field::ALL {
        let n = f.name();
        assert!(seen.insert(n), "duplicate {n}");
        assert!(
            n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{n} is not snake_case"
        );
        assert_eq!(Field::from_name(n), Some(f));
        assert_eq!(n.parse::<Field>(), Ok(f));
    }
    assert_eq!(Field::SipContact.name(), "sip_contact");
    assert_eq!(Field::FtpPasvReply.name(), "ftp_pasv_reply");
    assert_eq!(Field::DnsAnswerA.to_string(), "dns_answer_a");
    assert_eq!(Field::from_name("contact"), None);
}

#[test]
fn policy() {
    let mut p = AlgPolicy::default();
    for proto in AlgProtocol::ALL {
        assert_eq!(p.get(proto), AlgAction::Drop);
    }
    assert!(!p.is_all_pass());
    p.set(AlgProtocol::Sip, AlgAction::Inspect);
    assert_eq!(p.get(AlgProtocol::Sip), AlgAction::Inspect);
    assert_eq!(p.get(AlgProtocol::H323), AlgAction::Drop);
    let q = p.with(AlgProtocol::Tftp, AlgAction::Pass);
    assert_eq!(q.get(AlgProtocol::Tftp), AlgAction::Pass);
    assert_eq!(
        p.get(AlgProtocol::Tftp),
        AlgAction::Drop,
        "with() returns a copy"
    );
    assert_ne!(p, q);

    let all = AlgPolicy::all(AlgAction::Pass);
    assert!(all.is_all_pass());
    assert!(!all.with(AlgProtocol::Dns, AlgAction::Inspect).is_all_pass());
    assert_eq!(AlgPolicy::all(AlgAction::Drop), AlgPolicy::default());
    let listed: Vec<_> = q.iter().collect();
    assert_eq!(listed.len(), 6);
    assert_eq!(listed[0], (AlgProtocol::Sip, AlgAction::Inspect));
    assert_eq!(listed[5], (AlgProtocol::Tftp, AlgAction::Pass));
}

// ---------------------------------------------------------------- ports

#[test]
fn port_rules() {
    use AlgProtocol::*;
    let rules = [
        (Tcp, 5060, Some(Sip)),
        (Udp, 5060, Some(Sip)),
        (Tcp, 5061, Some(Sip)),
        (Udp, 5061, None),
        (Tcp, 1720, Some(H323)),
        (Udp, 1720, None),
        (Udp, 1719, Some(H323)),
        (Tcp, 1719, None),
        (Tcp, 554, Some(Rtsp)),
        (Udp, 554, Some(Rtsp)),
        (Tcp, 53, Some(Dns)),
        (Udp, 53, Some(Dns)),
        (Tcp, 21, Some(Ftp)),
        (Udp, 21, None),
        (Udp, 69, Some(Tftp)),
        (Tcp, 69, None),
        (Tcp, 20, None),
        (Tcp, 80, None),
        (Tcp, 443, None),
        (Udp, 5062, None),
        (Udp, 0, None),
    ];
    for (t, port, want) in rules {
        assert_eq!(classify_ports(t, 40000, port), want, "{t:?} dst {port}");
        assert_eq!(classify_ports(t, port, 40000), want, "{t:?} src {port}");
        assert_eq!(classify(t, port, 40000, b""), want, "{t:?} src {port}");
    }
    assert_eq!(classify_ports(Tcp, 40000, 40001), None);
}

#[test]
fn lower_port_wins_when_both_are_well_known() {
    // A DNS client that happened to pick 5060 as its source port.
    assert_eq!(classify_ports(Udp, 5060, 53), Some(AlgProtocol::Dns));
    assert_eq!(classify_ports(Udp, 53, 5060), Some(AlgProtocol::Dns));
    assert_eq!(classify_ports(Tcp, 1720, 21), Some(AlgProtocol::Ftp));
    // The lower port not being well-known on this transport: the other wins.
    assert_eq!(classify_ports(Tcp, 69, 5060), Some(AlgProtocol::Sip));
}

// ---------------------------------------------------------------- signatures

const INVITE: &[u8] = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@10.0.1.2>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 131\r\n\
\r\n\
v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 10.0.1.2\r\n\
s=-\r\n\
c=IN IP4 10.0.1.2\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0\r\n";

const OK_200: &[u8] = b"SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP server10.biloxi.example.com;branch=z9hG4bKnashds8;received=192.0.2.3\r\n\
To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:bob@192.0.2.4>\r\n\
Content-Length: 0\r\n\r\n";

const REGISTER: &[u8] = b"REGISTER sips:ss2.biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/TLS client.biloxi.example.com:5061;branch=z9hG4bKnashds7\r\n\
Max-Forwards: 70\r\n\
From: Bob <sips:bob@biloxi.example.com>;tag=a73kszlfl\r\n\
To: Bob <sips:bob@biloxi.example.com>\r\n\
Call-ID: 1j9FpLxk3uxtm8tn@biloxi.example.com\r\n\
CSeq: 1 REGISTER\r\n\
Contact: <sips:bob@client.biloxi.example.com>\r\n\
Content-Length: 0\r\n\r\n";

/// The start of a real TLS 1.2 ClientHello record.
const CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0xc4, 0x01, 0x00, 0x00, 0xc0, 0x03, 0x03, 0x5b, 0x90, 0x9d, 0x9b, 0x72,
    0x0b, 0xbc, 0x0c, 0xbc, 0x2b, 0x92, 0xa8, 0x48, 0x97, 0xcf, 0xbd, 0x39, 0x04, 0xcc, 0x16, 0x0a,
    0x85, 0x03, 0x90, 0x9f, 0x77, 0x04, 0x33, 0xd4, 0xde, 0x00, 0x00, 0x2a, 0xc0, 0x2c, 0xc0, 0x2b,
    0xc0, 0x30, 0xc0, 0x2f, 0x00, 0x9f, 0x00, 0x9e, 0x0a, 0x0d, 0x0a, 0x00,
];

#[test]
fn sip_signatures() {
    for (msg, what) in [(INVITE, "invite"), (OK_200, "200"), (REGISTER, "register")] {
        assert_eq!(classify_payload(Udp, msg), Some(AlgProtocol::Sip), "{what}");
        assert_eq!(classify_payload(Tcp, msg), Some(AlgProtocol::Sip), "{what}");
        assert_eq!(
            classify(Udp, 40000, 40001, msg),
            Some(AlgProtocol::Sip),
            "{what}"
        );
    }
    // Keep-alive CRLFs before the message on a stream.
    let mut prefixed = b"\r\n\r\n".to_vec();
    prefixed.extend_from_slice(OK_200);
    assert_eq!(classify_payload(Tcp, &prefixed), Some(AlgProtocol::Sip));
    for bad in [
        &b"INVITE sip:bob@biloxi.example.com SIP/2.0"[..], // no line end
        b"INVITE sip:bob@biloxi.example.com HTTP/1.1\r\n",
        b"INVITE http://biloxi.example.com/ SIP/2.0\r\n",
        b"HELLO sip:bob@biloxi.example.com SIP/2.0\r\n",
        b"SIP/2.0 OK\r\n",
        b"SIP/2.0 2000 OK\r\n",
        b"\r\n\r\n",
        b"",
    ] {
        assert_eq!(
            classify_payload(Udp, bad),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn ftp_signatures() {
    for ok in [
        &b"PORT 10,0,1,2,4,1\r\n"[..],
        b"port 10,0,1,2,4,1\n",
        b"EPRT |1|10.0.1.2|6275|\r\n",
        b"EPRT |2|1080::8:800:200C:417A|5282|\r\n",
        b"227 Entering Passive Mode (203,0,113,7,195,80).\r\n",
        b"229 Entering Extended Passive Mode (|||6446|)\r\n",
    ] {
        let s = String::from_utf8_lossy(ok);
        assert_eq!(classify_payload(Tcp, ok), Some(AlgProtocol::Ftp), "{s:?}");
        assert_eq!(classify_payload(Udp, ok), None, "FTP is TCP only: {s:?}");
    }
    let mut long = b"PORTABLE ".to_vec();
    long.extend_from_slice(&[b'x'; 600]);
    for bad in [
        &b"PORTABLE 10,0,1,2,4,1\r\n"[..],
        b"PORTABLE\r\n",
        &long,
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        CLIENT_HELLO,
        b"227 apples\r\n",
        b"227 apples (1,2,3)\r\n",
        b"229 apples\r\n",
        b"PORT 10,0,1,2,4,1", // no line end
        b"PORT 10,0,1,2,4\r\n",
        b"PASV\r\n",
        b"USER anonymous\r\n",
        b"220 FTP server ready, 10.0.1.2\r\n",
        b"\r\nPORT 10,0,1,2,4,1\r\n", // FTP gets no leading-CRLF allowance
    ] {
        assert_eq!(
            classify_payload(Tcp, bad),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn rtsp_signatures() {
    for ok in [
        &b"DESCRIBE rtsp://server.example.com/fizzle/foo RTSP/1.0\r\nCSeq: 312\r\nAccept: application/sdp\r\n\r\n"[..],
        b"OPTIONS rtsp://server.example.com/media.mp4 RTSP/1.0\r\nCSeq: 1\r\n\r\n",
        b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n",
        b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nPublic: DESCRIBE, SETUP, TEARDOWN, PLAY, PAUSE\r\n\r\n",
    ] {
        let s = String::from_utf8_lossy(ok);
        assert_eq!(classify_payload(Tcp, ok), Some(AlgProtocol::Rtsp), "{s:?}");
        assert_eq!(classify_payload(Udp, ok), Some(AlgProtocol::Rtsp), "{s:?}");
    }
    for bad in [
        &b"DESCRIBE http://server.example.com/ RTSP/1.0\r\n"[..],
        b"DESCRIBE rtsp://server.example.com/ HTTP/1.1\r\n",
        b"RTSP/1.0 OK\r\n",
        b"GET rtsp://server.example.com/ RTSP/1.0\r\n",
    ] {
        assert_eq!(
            classify_payload(Tcp, bad),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn only_a_bounded_prefix_is_read() {
    // A valid start line that ends just inside the window...
    let mut line = b"OPTIONS sip:".to_vec();
    line.resize(MAX_START_LINE - b" SIP/2.0\n".len(), b'a');
    line.extend_from_slice(b" SIP/2.0\n");
    assert_eq!(line.len(), MAX_START_LINE);
    assert_eq!(classify_payload(Udp, &line), Some(AlgProtocol::Sip));
    // ...and one byte longer, so its LF falls outside.
    line.insert(12, b'a');
    assert_eq!(classify_payload(Udp, &line), None);
}

#[test]
fn ports_take_precedence_over_payload() {
    assert_eq!(classify(Tcp, 40000, 21, INVITE), Some(AlgProtocol::Ftp));
    assert_eq!(classify(Udp, 53, 40000, OK_200), Some(AlgProtocol::Dns));
    assert_eq!(classify(Tcp, 40000, 8080, INVITE), Some(AlgProtocol::Sip));
    assert_eq!(
        classify(Tcp, 40000, 8080, b"PORT 1,2,3,4,5,6\r\n"),
        Some(AlgProtocol::Ftp)
    );
    assert_eq!(classify(Tcp, 40000, 443, CLIENT_HELLO), None);
}

#[test]
fn inspect_dispatch() {
    assert_eq!(
        inspect(AlgProtocol::Sip, INVITE, PRIV, PUB),
        Some(Finding {
            protocol: AlgProtocol::Sip,
            field: Field::SipContact,
            address: PRIV
        })
    );
    assert_eq!(inspect(AlgProtocol::Sip, OK_200, PRIV, PUB), None);
    assert_eq!(inspect(AlgProtocol::Sip, REGISTER, PRIV, PUB), None);
    // TFTP never has a finding, even with an address in it.
    let rrq = b"\x00\x01boot-10.0.1.2.cfg\x00octet\x00 10.0.1.2 \n\x0a\x00\x01\x02";
    assert_eq!(inspect(AlgProtocol::Tftp, rrq, PRIV, PUB), None);
    // The same payload as other protocols, to show each reads it differently.
    assert_eq!(
        inspect(AlgProtocol::H323, rrq, PRIV, PUB).map(|f| f.field),
        Some(Field::H323Binary)
    );
    assert_eq!(
        inspect(AlgProtocol::Rtsp, rrq, PRIV, PUB).map(|f| f.field),
        Some(Field::TextAddress)
    );
    assert_eq!(inspect(AlgProtocol::Ftp, rrq, PRIV, PUB), None);
    assert_eq!(inspect(AlgProtocol::Dns, rrq, PRIV, PUB), None);
}

// ---------------------------------------------------------------- properties

fn transport() -> impl Strategy<Value = Transport> {
    prop_oneof![Just(Tcp), Just(Udp)]
}

/// Checks that hold for any input; used by the fuzz-style properties.
fn check_all(t: Transport, sp: u16, dp: u16, payload: &[u8], private: [u8; 4], public: [u8; 4]) {
    let by_payload = classify_payload(t, payload);
    assert_eq!(
        classify(t, sp, dp, payload),
        classify_ports(t, sp, dp).or(by_payload)
    );
    assert!(matches!(
        by_payload,
        None | Some(AlgProtocol::Sip | AlgProtocol::Rtsp | AlgProtocol::Ftp)
    ));
    if t == Udp {
        assert_ne!(by_payload, Some(AlgProtocol::Ftp));
    }
    for p in AlgProtocol::ALL {
        if let Some(f) = inspect(p, payload, private, public) {
            assert_eq!(f.protocol, p);
            assert!(f.address == private || f.address == public);
            assert_ne!(p, AlgProtocol::Tftp);
        }
    }
}

/// Bytes drawn mostly from the characters the parsers care about, so random
/// input gets deep into them instead of failing on the first byte.
fn texty(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let alphabet: Vec<u8> = b"0123456789.,|:;()=@/<> \r\n\tPORTEPRSIVUDaipsrt\x00\xff\xc0".to_vec();
    proptest::collection::vec(proptest::sample::select(alphabet), 0..max)
}

fn start_prefix() -> impl Strategy<Value = &'static [u8]> {
    proptest::sample::select(vec![
        &b""[..],
        b"PORT ",
        b"EPRT |1|",
        b"EPRT |2|",
        b"227 (",
        b"229 (|||",
        b"INVITE sip:",
        b"SIP/2.0 200 ",
        b"DESCRIBE rtsp://",
        b"RTSP/1.0 200 OK\r\nTransport: ",
        b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00",
    ])
}

fn ephemeral_port() -> impl Strategy<Value = u16> {
    (1024u16..=65535).prop_filter("not a well-known ALG port", |p| {
        ![1719, 1720, 5060, 5061].contains(p)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn never_panics_on_arbitrary_bytes(
        t in transport(),
        sp in any::<u16>(),
        dp in any::<u16>(),
        payload in proptest::collection::vec(any::<u8>(), 0..=2048),
        private in any::<[u8; 4]>(),
        public in any::<[u8; 4]>(),
    ) {
        check_all(t, sp, dp, &payload, private, public);
    }

    #[test]
    fn never_panics_on_texty_bytes(
        t in transport(),
        prefix in start_prefix(),
        body in texty(2048),
        private in any::<[u8; 4]>(),
    ) {
        let mut payload = prefix.to_vec();
        payload.extend_from_slice(&body);
        check_all(t, 40000, 40001, &payload, private, PUB);
        check_all(t, 40000, 40001, &payload, PRIV, PUB);
    }

    #[test]
    fn port_prefixed_garbage(
        tail in proptest::collection::vec(any::<u8>(), 0..=2048),
        texty_tail in texty(64),
    ) {
        for tail in [&tail, &texty_tail] {
            let mut payload = b"PORT ".to_vec();
            payload.extend_from_slice(tail);
            let got = classify_payload(Tcp, &payload);
            // Nothing but FTP can start with "PORT ", and FTP only if the
            // rest is a host-port tuple ending the line.
            prop_assert!(matches!(got, None | Some(AlgProtocol::Ftp)));
            let tuple_line = tail.iter().position(|&b| b == b'\n').is_some_and(|nl| {
                let line = tail[..nl].strip_suffix(b"\r").unwrap_or(&tail[..nl]);
                !line.is_empty() && line.iter().all(|b| b.is_ascii_digit() || *b == b',')
            });
            if got.is_some() {
                prop_assert!(tuple_line);
            }
            prop_assert_eq!(classify_payload(Udp, &payload), None);
            check_all(Tcp, 40000, 40001, &payload, PRIV, PUB);
        }
    }

    #[test]
    fn generated_port_command_is_recognised(
        addr in any::<[u8; 4]>(),
        port in any::<u16>(),
        other in any::<[u8; 4]>(),
        lower in any::<bool>(),
        crlf in any::<bool>(),
        sp in ephemeral_port(),
        dp in ephemeral_port(),
    ) {
        prop_assume!(other != addr);
        let [p1, p2] = port.to_be_bytes();
        let verb = if lower { "port" } else { "PORT" };
        let end = if crlf { "\r\n" } else { "\n" };
        let cmd = format!("{verb} {},{},{},{},{p1},{p2}{end}", addr[0], addr[1], addr[2], addr[3]);
        let cmd = cmd.as_bytes();
        prop_assert_eq!(classify_payload(Tcp, cmd), Some(AlgProtocol::Ftp));
        prop_assert_eq!(classify(Tcp, sp, dp, cmd), Some(AlgProtocol::Ftp));
        prop_assert_eq!(classify_payload(Udp, cmd), None);
        let want = Finding { protocol: AlgProtocol::Ftp, field: Field::FtpPort, address: addr };
        prop_assert_eq!(inspect(AlgProtocol::Ftp, cmd, addr, other), Some(want));
        prop_assert_eq!(inspect(AlgProtocol::Ftp, cmd, other, addr), Some(want));
        prop_assert_eq!(inspect(AlgProtocol::Ftp, cmd, other, other), None);
    }

    #[test]
    fn generated_eprt_and_227_are_recognised(
        addr in any::<[u8; 4]>(),
        port in 1u16..,
        other in any::<[u8; 4]>(),
    ) {
        prop_assume!(other != addr);
        let [a, b, c, d] = addr;
        let eprt = format!("EPRT |1|{a}.{b}.{c}.{d}|{port}|\r\n");
        let [p1, p2] = port.to_be_bytes();
        let pasv = format!("227 Entering Passive Mode ({a},{b},{c},{d},{p1},{p2}).\r\n");
        for (msg, field) in [(eprt, Field::FtpEprt), (pasv, Field::FtpPasvReply)] {
            let msg = msg.as_bytes();
            prop_assert_eq!(classify_payload(Tcp, msg), Some(AlgProtocol::Ftp));
            prop_assert_eq!(
                inspect(AlgProtocol::Ftp, msg, addr, other),
                Some(Finding { protocol: AlgProtocol::Ftp, field, address: addr })
            );
            prop_assert_eq!(inspect(AlgProtocol::Ftp, msg, other, other), None);
        }
    }

    #[test]
    fn dotted_quad_boundaries(
        addr in any::<[u8; 4]>(),
        sep in proptest::sample::select(vec![">", ":5060>", ";lr>", " ", "", "\t", ".", ",x"]),
        digit in 1u8..10,
    ) {
        prop_assume!(addr != [0, 0, 0, 0]);
        let none = [0, 0, 0, 0];
        let [a, b, c, d] = addr;
        let quad = format!("{a}.{b}.{c}.{d}");
        let contact = |s: &str| format!("SIP/2.0 200 OK\r\nContact: <sip:x@{s}\r\n\r\n");
        let hit = contact(&format!("{quad}{sep}"));
        prop_assert_eq!(
            inspect(AlgProtocol::Sip, hit.as_bytes(), addr, none).map(|f| (f.field, f.address)),
            Some((Field::SipContact, addr))
        );
        // A digit glued on either side makes it a different (or no) address.
        // (Not a leading 0: octets are read as decimal, so "010" is 10.)
        for glued in [format!("{quad}{digit}{sep}"), format!("{digit}{quad}{sep}"), format!("{quad}.{digit}")] {
            let miss = contact(&glued);
            prop_assert_eq!(inspect(AlgProtocol::Sip, miss.as_bytes(), addr, none), None, "{}", glued);
        }
    }

    #[test]
    fn result_depends_only_on_the_window(
        t in transport(),
        prefix in start_prefix(),
        body in texty(700),
        suffix in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut payload = prefix.to_vec();
        payload.extend_from_slice(&body);
        let cut = payload.len().min(MAX_START_LINE);
        let got = classify_payload(t, &payload);
        prop_assert_eq!(got, classify_payload(t, &payload[..cut]));
        if payload.len() >= MAX_START_LINE {
            payload.extend_from_slice(&suffix);
            prop_assert_eq!(got, classify_payload(t, &payload));
        }
    }

    #[test]
    fn port_rules_are_symmetric(t in transport(), a in any::<u16>(), b in any::<u16>()) {
        prop_assert_eq!(classify_ports(t, a, b), classify_ports(t, b, a));
    }
}

proptest! {
    /// The cheap first test never turns away a payload the full classifier recognises.
    #[test]
    fn prefilter_agrees_with_the_full_classifier(
        head in prop::sample::select(vec![
            "INVITE sip:a@b SIP/2.0", "SIP/2.0 200 OK", "ACK sip:x SIP/2.0", "BYE sips:y SIP/2.0",
            "\r\nOPTIONS sip:z SIP/2.0", "DESCRIBE rtsp://h/s RTSP/1.0", "RTSP/1.0 200 OK",
            "GET_PARAMETER rtsp://h RTSP/1.0", "PORT 10,0,1,21,4,1", "port 10,0,1,21,4,1",
            "EPRT |1|10.0.1.21|1025|", "227 Entering Passive Mode (10,0,1,21,4,1)",
            "229 Entering Extended Passive Mode (|||1025|)", "GET / HTTP/1.1", "",
        ]),
        eol in prop::sample::select(vec!["\r\n", "\n", ""]),
        tail in prop::collection::vec(any::<u8>(), 0..64),
        tcp in any::<bool>(),
    ) {
        let mut p = head.as_bytes().to_vec();
        p.extend_from_slice(eol.as_bytes());
        p.extend_from_slice(&tail);
        let t = if tcp { Tcp } else { Udp };
        prop_assert_eq!(classify_payload(t, &p), classify_payload_unfiltered(t, &p));
    }

    #[test]
    fn prefilter_agrees_on_arbitrary_bytes(p in prop::collection::vec(any::<u8>(), 0..64), tcp in any::<bool>()) {
        let t = if tcp { Tcp } else { Udp };
        prop_assert_eq!(classify_payload(t, &p), classify_payload_unfiltered(t, &p));
    }
}

fn every(p: AlgProtocol, payload: &[u8]) -> Vec<(Field, [u8; 4])> {
    let mut v = Vec::new();
    inspect_each(p, payload, PRIV, PUB, &mut |f| {
        v.push((f.field, f.address));
        true
    });
    v
}

#[test]
fn inspect_each_reports_every_line_that_carries_the_address_and_stops_when_asked() {
    let sip = b"SIP/2.0 200 OK\r\nContact: <sip:a@10.0.1.2:5060>\r\nVia: SIP/2.0/UDP 203.0.113.7\r\n\r\nv=0\r\no=- 1 1 IN IP4 10.0.1.2\r\nc=IN IP4 10.0.1.2\r\nm=audio 6000 RTP/AVP 0\r\n";
    assert_eq!(
        every(AlgProtocol::Sip, sip),
        vec![
            (Field::SipContact, PRIV),
            (Field::SipVia, PUB),
            (Field::SipSdpOrigin, PRIV),
            (Field::SipSdpConnection, PRIV),
        ]
    );
    let rtsp = b"RTSP/1.0 200 OK\r\nContent-Base: rtsp://10.0.1.2:554/s/\r\nTransport: RTP/AVP;unicast;source=10.0.1.2;server_port=5000-5001\r\n\r\n";
    assert_eq!(
        every(AlgProtocol::Rtsp, rtsp),
        vec![(Field::RtspUrl, PRIV), (Field::RtspTransport, PRIV)]
    );
    // The protocols with one address report it once.
    assert_eq!(
        every(
            AlgProtocol::Ftp,
            b"227 Entering Passive Mode (10,0,1,2,156,64)\r\n"
        ),
        vec![(Field::FtpPasvReply, PRIV)]
    );
    assert!(every(AlgProtocol::Tftp, b"\x00\x01f\x00octet\x00").is_empty());
    // Returning false stops after the first; the first is what `inspect` returns.
    let mut n = 0;
    inspect_each(AlgProtocol::Sip, sip, PRIV, PUB, &mut |_| {
        n += 1;
        false
    });
    assert_eq!(n, 1);
    for (p, payload) in [
        (AlgProtocol::Sip, &sip[..]),
        (AlgProtocol::Rtsp, &rtsp[..]),
        (AlgProtocol::Sip, INVITE),
        (AlgProtocol::Sip, OK_200),
    ] {
        assert_eq!(
            inspect(p, payload, PRIV, PUB).map(|f| (f.field, f.address)),
            every(p, payload).first().copied(),
            "{p:?}"
        );
    }
}
