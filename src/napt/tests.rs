//! Each test is named after the requirement it checks. Time is a plain `u64` of nanoseconds.

use super::*;
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};

const S: u64 = 1_000_000_000;
/// A start time far from zero, so nothing depends on the clock starting at 0.
const T0: u64 = 1_000_000 * S;

const SYN: Proto = Proto::Tcp(TcpFlags::SYN);
const SYN_ACK: Proto = Proto::Tcp(TcpFlags(0x12));
const ACK: Proto = Proto::Tcp(TcpFlags::ACK);
const FIN_ACK: Proto = Proto::Tcp(TcpFlags(0x11));
const RST_: Proto = Proto::Tcp(TcpFlags::RST);

fn sa(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn snat(cidr: &str, eips: &[&str]) -> SnatRule {
    let (a, p) = cidr.split_once('/').unwrap();
    SnatRule {
        source: v4(a),
        prefix_len: p.parse().unwrap(),
        eips: eips.iter().map(|e| v4(e)).collect(),
    }
}

fn dnat(ext: &str, p: DnatProtocol, int: &str) -> DnatRule {
    DnatRule {
        external: sa(ext),
        protocol: p,
        internal: sa(int),
    }
}

/// 10.0.0.0/8 behind `eips`.
fn gw(cfg: NaptConfig, eips: &[&str]) -> Napt {
    Napt::new(cfg, vec![snat("10.0.0.0/8", eips)], vec![]).unwrap()
}

fn with(f: impl FnOnce(&mut NaptConfig)) -> NaptConfig {
    let mut c = NaptConfig::cloud();
    f(&mut c);
    c
}

fn out(n: &mut Napt, now: u64, p: Proto, src: &str, dst: &str) -> Result<SocketAddrV4, NaptDrop> {
    let r = n.outbound(now, p, sa(src), sa(dst));
    n.check_invariants();
    r.map(|t| {
        assert!(!t.hairpin);
        assert_eq!(t.dst, sa(dst));
        t.src
    })
}

fn inb(
    n: &mut Napt,
    now: u64,
    p: Proto,
    src: &str,
    dst: SocketAddrV4,
) -> Result<SocketAddrV4, NaptDrop> {
    let r = n.inbound(now, p, sa(src), dst);
    n.check_invariants();
    r
}

#[test]
fn rfc4787_req1_endpoint_independent_mapping_reuses_the_external_port() {
    let mut n = gw(NaptConfig::cloud(), &["203.0.113.1", "203.0.113.2"]);
    let a = out(&mut n, T0, Proto::Udp, "10.0.0.5:5000", "198.51.100.1:3478").unwrap();
    let b = out(&mut n, T0, Proto::Udp, "10.0.0.5:5000", "198.51.100.1:3479").unwrap();
    let c = out(&mut n, T0, Proto::Udp, "10.0.0.5:5000", "192.0.2.9:53").unwrap();
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(n.mappings(), 1);
    assert_eq!(n.sessions(), 3);
    // Another port of the host is another mapping.
    let d = out(&mut n, T0, Proto::Udp, "10.0.0.5:5001", "198.51.100.1:3478").unwrap();
    assert_ne!(a, d);
}

#[test]
fn rfc4787_req1_address_and_port_dependent_mapping_gets_a_new_port_per_destination() {
    let mut n = gw(
        with(|c| c.mapping = Behaviour::AddressAndPortDependent),
        &["203.0.113.1"],
    );
    let a = out(&mut n, T0, Proto::Udp, "10.0.0.5:5000", "198.51.100.1:3478").unwrap();
    let b = out(&mut n, T0, Proto::Udp, "10.0.0.5:5000", "198.51.100.1:3479").unwrap();
    let c = out(&mut n, T0, Proto::Udp, "10.0.0.5:5000", "192.0.2.9:3478").unwrap();
    let again = out(&mut n, T0, Proto::Udp, "10.0.0.5:5000", "198.51.100.1:3478").unwrap();
    assert_eq!(HashSet::from([a, b, c]).len(), 3);
    assert_eq!(a, again);
    assert_eq!(n.mappings(), 3);
}

#[test]
fn rfc4787_req1_address_dependent_mapping_shares_a_port_per_remote_address() {
    let mut n = gw(
        with(|c| c.mapping = Behaviour::AddressDependent),
        &["203.0.113.1"],
    );
    let a = out(&mut n, T0, Proto::Udp, "10.0.0.5:5000", "198.51.100.1:3478").unwrap();
    let b = out(&mut n, T0, Proto::Udp, "10.0.0.5:5000", "198.51.100.1:3479").unwrap();
    let c = out(&mut n, T0, Proto::Udp, "10.0.0.5:5000", "192.0.2.9:3478").unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn rfc4787_req2_paired_pooling_keeps_a_host_on_one_external_ip() {
    let eips = ["203.0.113.1", "203.0.113.2"];
    let mut n = gw(with(|c| c.pooling = Pooling::Paired), &eips);
    let mut per_host: HashMap<u8, HashSet<Ipv4Addr>> = HashMap::new();
    for host in 1..=20u8 {
        for port in 0..30u16 {
            let p = if port % 2 == 0 { Proto::Udp } else { SYN };
            let src = format!("10.0.1.{host}:{}", 2000 + port);
            let e = out(&mut n, T0, p, &src, "198.51.100.1:443").unwrap();
            per_host.entry(host).or_default().insert(*e.ip());
        }
    }
    assert!(per_host.values().all(|ips| ips.len() == 1));
    // Different hosts are still spread over the pool.
    let used: HashSet<_> = per_host.values().flatten().collect();
    assert_eq!(used.len(), 2);
}

#[test]
fn rfc4787_req2_arbitrary_pooling_may_give_one_host_several_external_ips() {
    let mut n = gw(NaptConfig::cloud(), &["203.0.113.1", "203.0.113.2"]);
    let ips: HashSet<Ipv4Addr> = (0..30u16)
        .map(|p| {
            let src = format!("10.0.1.1:{}", 2000 + p);
            *out(&mut n, T0, Proto::Udp, &src, "198.51.100.1:443")
                .unwrap()
                .ip()
        })
        .collect();
    assert_eq!(ips.len(), 2);
}

#[test]
fn rfc4787_req3_port_preservation_without_port_overloading() {
    let mut n = gw(with(|c| c.port_preservation = true), &["203.0.113.1"]);
    let a = out(&mut n, T0, Proto::Udp, "10.0.0.5:40000", "198.51.100.1:53").unwrap();
    assert_eq!(a, sa("203.0.113.1:40000"));
    // Another host's port 40000 cannot overload it (REQ-3): it gets another port.
    let b = out(&mut n, T0, Proto::Udp, "10.0.0.6:40000", "198.51.100.1:53").unwrap();
    assert_ne!(a, b);
    // With two IPs arbitrary pooling keeps the port by taking the other IP.
    let mut n = gw(
        with(|c| c.port_preservation = true),
        &["203.0.113.1", "203.0.113.2"],
    );
    let a = out(&mut n, T0, Proto::Udp, "10.0.0.5:40000", "198.51.100.1:53").unwrap();
    let b = out(&mut n, T0, Proto::Udp, "10.0.0.6:40000", "198.51.100.1:53").unwrap();
    assert_eq!((a.port(), b.port()), (40000, 40000));
    assert_ne!(a.ip(), b.ip());
    // Without preservation the port is chosen: 40 hosts on port 40000 do not all keep it.
    let mut n = gw(NaptConfig::cloud(), &["203.0.113.1"]);
    let kept = (1..=40)
        .filter(|h| {
            let src = format!("10.0.2.{h}:40000");
            out(&mut n, T0, Proto::Udp, &src, "198.51.100.1:53")
                .unwrap()
                .port()
                == 40000
        })
        .count();
    assert!(kept <= 1);
}

#[test]
fn rfc4787_req5_udp_mapping_expires_after_its_timeout_not_before() {
    for (cfg, timeout) in [
        (NaptConfig::cloud(), 60 * S),
        (NaptConfig::rfc_minimums(), 120 * S),
    ] {
        assert!(NaptConfig::rfc_minimums().udp_ns >= 120 * S);
        let mut n = gw(cfg, &["203.0.113.1"]);
        let e = out(&mut n, T0, Proto::Udp, "10.0.0.5:5000", "198.51.100.1:53").unwrap();
        n.handle_timeout(T0 + timeout - 1);
        assert_eq!((n.sessions(), n.mappings()), (1, 1));
        let at = n.poll_timeout().unwrap();
        assert!(at >= T0 + timeout && at < T0 + timeout + wheel::TICK_NS);
        n.handle_timeout(T0 + timeout);
        n.check_invariants();
        assert_eq!((n.sessions(), n.mappings()), (0, 0));
        assert_eq!(n.poll_timeout(), None);
        assert!(inb(&mut n, T0 + timeout, Proto::Udp, "198.51.100.1:53", e).is_err());
        // A packet that finds its session past its deadline treats it as gone, whether or not
        // handle_timeout ran.
        let e = out(&mut n, T0, Proto::Udp, "10.0.0.5:5001", "198.51.100.1:53").unwrap();
        let at = T0 + timeout - 1;
        assert!(inb(&mut n, at, Proto::Udp, "198.51.100.1:53", e).is_ok());
        let gone = at + timeout;
        assert!(inb(&mut n, gone - 1, Proto::Udp, "198.51.100.1:53", e).is_ok());
        assert!(inb(&mut n, gone - 1 + timeout, Proto::Udp, "198.51.100.1:53", e).is_err());
    }
}

#[test]
fn rfc4787_req6_outbound_refreshes_the_udp_timer() {
    let mut n = gw(NaptConfig::cloud(), &["203.0.113.1"]);
    let e = out(&mut n, T0, Proto::Udp, "10.0.0.5:5000", "198.51.100.1:53").unwrap();
    assert_eq!(
        out(
            &mut n,
            T0 + 50 * S,
            Proto::Udp,
            "10.0.0.5:5000",
            "198.51.100.1:53"
        ),
        Ok(e)
    );
    n.handle_timeout(T0 + 110 * S - 1);
    assert_eq!(n.sessions(), 1);
    n.handle_timeout(T0 + 110 * S);
    assert_eq!(n.sessions(), 0);
}

#[test]
fn rfc4787_req8_endpoint_independent_filtering_admits_any_remote() {
    let mut n = gw(
        with(|c| c.filtering = Behaviour::EndpointIndependent),
        &["203.0.113.1"],
    );
    let e = out(&mut n, T0, Proto::Udp, "10.0.0.5:5000", "198.51.100.1:3478").unwrap();
    assert_eq!(
        inb(&mut n, T0, Proto::Udp, "192.0.2.77:9999", e),
        Ok(sa("10.0.0.5:5000"))
    );
    // The host's answer to that remote leaves through the same mapping.
    assert_eq!(
        out(&mut n, T0, Proto::Udp, "10.0.0.5:5000", "192.0.2.77:9999"),
        Ok(e)
    );
    // A port no mapping holds stays closed.
    let other = SocketAddrV4::new(*e.ip(), e.port().wrapping_add(1));
    assert_eq!(
        inb(&mut n, T0, Proto::Udp, "192.0.2.77:9999", other),
        Err(NaptDrop::NoSession)
    );
}

#[test]
fn rfc4787_req8_address_dependent_filtering_admits_only_addresses_the_host_sent_to() {
    let mut n = gw(
        with(|c| c.filtering = Behaviour::AddressDependent),
        &["203.0.113.1"],
    );
    let e = out(&mut n, T0, Proto::Udp, "10.0.0.5:5000", "198.51.100.1:3478").unwrap();
    assert_eq!(
        inb(&mut n, T0, Proto::Udp, "198.51.100.1:9999", e),
        Ok(sa("10.0.0.5:5000"))
    );
    assert_eq!(
        inb(&mut n, T0, Proto::Udp, "192.0.2.77:3478", e),
        Err(NaptDrop::Filtered)
    );
    assert_eq!(n.drop_counts()[NaptDrop::Filtered.index()], 1);
}

#[test]
fn rfc4787_req8_address_and_port_dependent_filtering_admits_only_the_remote_endpoint() {
    let mut n = gw(NaptConfig::cloud(), &["203.0.113.1"]);
    let e = out(&mut n, T0, Proto::Udp, "10.0.0.5:5000", "198.51.100.1:3478").unwrap();
    assert_eq!(
        inb(&mut n, T0, Proto::Udp, "198.51.100.1:3478", e),
        Ok(sa("10.0.0.5:5000"))
    );
    assert_eq!(
        inb(&mut n, T0, Proto::Udp, "198.51.100.1:3479", e),
        Err(NaptDrop::Filtered)
    );
    assert_eq!(
        inb(&mut n, T0, Proto::Udp, "192.0.2.1:3478", e),
        Err(NaptDrop::Filtered)
    );
}

#[test]
fn rfc4787_req9_hairpinning_shows_each_host_the_others_external_address() {
    let mut n = Napt::new(
        with(|c| c.filtering = Behaviour::EndpointIndependent),
        vec![snat("10.0.0.0/8", &["203.0.113.1"])],
        vec![dnat("203.0.113.9:80", DnatProtocol::Tcp, "10.0.0.80:8080")],
    )
    .unwrap();
    // B opens a UDP mapping (say, by talking to a STUN server).
    let eb = out(&mut n, T0, Proto::Udp, "10.0.0.2:6000", "198.51.100.1:3478").unwrap();
    // A sends to B's external address: B sees A's external address (REQ-9b), not 10.0.0.1.
    let t = n.outbound(T0, Proto::Udp, sa("10.0.0.1:7000"), eb).unwrap();
    assert!(t.hairpin);
    assert_eq!(t.dst, sa("10.0.0.2:6000"));
    assert_eq!(*t.src.ip(), v4("203.0.113.1"));
    let ea = t.src;
    // B's answer goes back to A the same way, both addresses translated.
    let back = n.outbound(T0, Proto::Udp, sa("10.0.0.2:6000"), ea).unwrap();
    assert_eq!(
        back,
        Translation {
            src: eb,
            dst: sa("10.0.0.1:7000"),
            hairpin: true
        }
    );
    // The next packet takes the established sessions.
    assert_eq!(
        n.outbound(T0 + S, Proto::Udp, sa("10.0.0.1:7000"), eb),
        Ok(t)
    );
    // Through a DNAT entry, and back.
    let t = n
        .outbound(T0, SYN, sa("10.0.0.1:7001"), sa("203.0.113.9:80"))
        .unwrap();
    assert_eq!(t.dst, sa("10.0.0.80:8080"));
    let back = n
        .outbound(T0, SYN_ACK, sa("10.0.0.80:8080"), t.src)
        .unwrap();
    assert_eq!(back.src, sa("203.0.113.9:80"));
    assert_eq!(back.dst, sa("10.0.0.1:7001"));
    n.check_invariants();
    // With hairpinning off the packet is refused and counted.
    let mut n = gw(with(|c| c.hairpinning = false), &["203.0.113.1"]);
    let eb = out(&mut n, T0, Proto::Udp, "10.0.0.2:6000", "198.51.100.1:3478").unwrap();
    assert_eq!(
        n.outbound(T0, Proto::Udp, sa("10.0.0.1:7000"), eb),
        Err(NaptDrop::HairpinOff)
    );
    assert_eq!(n.sessions(), 1);
}

/// SYN out, SYN-ACK in, ACK out.
fn handshake(n: &mut Napt, now: u64, src: &str, dst: &str) -> SocketAddrV4 {
    let e = out(n, now, SYN, src, dst).unwrap();
    assert_eq!(inb(n, now, SYN_ACK, dst, e), Ok(sa(src)));
    assert_eq!(out(n, now, ACK, src, dst), Ok(e));
    e
}

#[test]
fn rfc5382_req5_tcp_established_idle_timeout() {
    let cfg = NaptConfig::rfc_minimums();
    let est = cfg.tcp_established_ns;
    assert!(est >= (2 * 3600 + 4 * 60) * S);
    let mut n = gw(cfg, &["203.0.113.1"]);
    handshake(&mut n, T0, "10.0.0.5:40000", "198.51.100.1:443");
    n.handle_timeout(T0 + est - 1);
    assert_eq!(n.sessions(), 1);
    n.handle_timeout(T0 + est);
    assert_eq!(n.sessions(), 0);
    // The cloud's is 900 s.
    let mut n = gw(NaptConfig::cloud(), &["203.0.113.1"]);
    handshake(&mut n, T0, "10.0.0.5:40000", "198.51.100.1:443");
    n.handle_timeout(T0 + 900 * S - 1);
    assert_eq!(n.sessions(), 1);
    n.handle_timeout(T0 + 900 * S);
    assert_eq!(n.sessions(), 0);
}

#[test]
fn rfc5382_req5_tcp_partially_open_connection_uses_the_transitory_timeout() {
    let cfg = NaptConfig::rfc_minimums();
    assert!(cfg.tcp_transitory_ns >= 240 * S);
    let tr = cfg.tcp_transitory_ns;
    let mut n = gw(cfg, &["203.0.113.1"]);
    out(&mut n, T0, SYN, "10.0.0.5:40000", "198.51.100.1:443").unwrap();
    n.handle_timeout(T0 + tr - 1);
    assert_eq!(n.sessions(), 1);
    n.handle_timeout(T0 + tr);
    assert_eq!(n.sessions(), 0);
}

#[test]
fn rfc5382_req5_tcp_transitory_after_fin_in_both_directions_or_rst() {
    let cfg = NaptConfig::rfc_minimums();
    let tr = cfg.tcp_transitory_ns;
    let mut n = gw(cfg, &["203.0.113.1"]);
    let (src, dst) = ("10.0.0.5:40000", "198.51.100.1:443");
    let e = handshake(&mut n, T0, src, dst);
    // One FIN only half-closes: the other side may go on sending, still established.
    let t1 = T0 + 10 * S;
    out(&mut n, t1, FIN_ACK, src, dst).unwrap();
    n.handle_timeout(t1 + tr);
    assert_eq!(n.sessions(), 1);
    let t2 = t1 + tr;
    inb(&mut n, t2, FIN_ACK, dst, e).unwrap();
    out(&mut n, t2, ACK, src, dst).unwrap();
    n.handle_timeout(t2 + tr - 1);
    assert_eq!(n.sessions(), 1);
    n.handle_timeout(t2 + tr);
    assert_eq!(n.sessions(), 0);
    // A new SYN on the closed tuple starts a new connection, established again.
    let e = handshake(&mut n, T0 * 2, src, dst);
    inb(&mut n, T0 * 2, RST_, dst, e).unwrap();
    n.handle_timeout(T0 * 2 + tr);
    assert_eq!(n.sessions(), 0);
}

#[test]
fn rfc5508_req2_icmp_query_session_timer_and_identifier_mapping() {
    let cfg = NaptConfig::rfc_minimums();
    assert!(cfg.icmp_ns >= 60 * S);
    let mut n = gw(cfg, &["203.0.113.1"]);
    // Two hosts ping with the same identifier: the external identifiers differ.
    let a = out(&mut n, T0, Proto::IcmpQuery, "10.0.0.5:7", "198.51.100.1:0").unwrap();
    let b = out(&mut n, T0, Proto::IcmpQuery, "10.0.0.6:7", "198.51.100.1:0").unwrap();
    assert_ne!(a, b);
    assert_eq!(
        inb(&mut n, T0 + 59 * S, Proto::IcmpQuery, "198.51.100.1:0", a),
        Ok(sa("10.0.0.5:7"))
    );
    n.handle_timeout(T0 + 60 * S);
    assert_eq!(n.sessions(), 1, "the refreshed one stays, the other goes");
    n.handle_timeout(T0 + 119 * S);
    assert_eq!(n.sessions(), 0);
}

#[test]
fn rfc5508_req4_icmp_error_from_outside_about_a_flow_is_translated_inbound() {
    let mut n = gw(NaptConfig::cloud(), &["203.0.113.1"]);
    let e = out(&mut n, T0, Proto::Udp, "10.0.0.5:5000", "198.51.100.1:53").unwrap();
    let router = v4("192.0.2.254");
    let t = n
        .icmp_error_inbound(T0 + S, router, Protocol::Udp, e, sa("198.51.100.1:53"))
        .unwrap();
    assert_eq!(
        t,
        IcmpErrorTranslation {
            outer_src: router,
            outer_dst: v4("10.0.0.5"),
            quoted_src: sa("10.0.0.5:5000"),
            quoted_dst: sa("198.51.100.1:53"),
        }
    );
    // About an ICMP query: the quoted identifier is translated back.
    let q = out(&mut n, T0, Proto::IcmpQuery, "10.0.0.5:9", "198.51.100.1:0").unwrap();
    let t = n
        .icmp_error_inbound(T0, router, Protocol::Icmp, q, sa("198.51.100.1:0"))
        .unwrap();
    assert_eq!(t.quoted_src, sa("10.0.0.5:9"));
}

#[test]
fn rfc5508_req4_icmp_error_without_a_session_is_dropped() {
    let mut n = gw(NaptConfig::cloud(), &["203.0.113.1"]);
    let e = out(&mut n, T0, Proto::Udp, "10.0.0.5:5000", "198.51.100.1:53").unwrap();
    let r = v4("192.0.2.254");
    // Another remote, another protocol, or after expiry: no session.
    for (p, d, now) in [
        (Protocol::Udp, "198.51.100.2:53", T0),
        (Protocol::Tcp, "198.51.100.1:53", T0),
        (Protocol::Udp, "198.51.100.1:53", T0 + 60 * S),
    ] {
        assert_eq!(
            n.icmp_error_inbound(now, r, p, e, sa(d)),
            Err(NaptDrop::NoSession)
        );
    }
    assert_eq!(
        n.icmp_error_outbound(
            T0,
            r,
            Protocol::Udp,
            sa("198.51.100.2:53"),
            sa("10.0.0.5:5000")
        ),
        Err(NaptDrop::NoSession)
    );
    assert_eq!(n.drop_counts()[NaptDrop::NoSession.index()], 4);
}

#[test]
fn rfc5508_req5_icmp_error_from_inside_about_a_flow_is_translated_outbound() {
    let mut n = Napt::new(
        NaptConfig::cloud(),
        vec![snat("10.0.0.0/8", &["203.0.113.1"])],
        vec![dnat("203.0.113.9:53", DnatProtocol::Udp, "10.0.0.53:5353")],
    )
    .unwrap();
    let remote = sa("198.51.100.1:4000");
    assert_eq!(
        n.inbound(T0, Proto::Udp, remote, sa("203.0.113.9:53")),
        Ok(sa("10.0.0.53:5353"))
    );
    // The host answers with port unreachable, quoting the packet it got.
    let t = n
        .icmp_error_outbound(
            T0,
            remote.ip().to_owned(),
            Protocol::Udp,
            remote,
            sa("10.0.0.53:5353"),
        )
        .unwrap();
    assert_eq!(
        t,
        IcmpErrorTranslation {
            outer_src: v4("203.0.113.9"),
            outer_dst: *remote.ip(),
            quoted_src: remote,
            quoted_dst: sa("203.0.113.9:53"),
        }
    );
    // An SNAT flow's error, sent by a router inside: its source becomes the external IP.
    let e = out(&mut n, T0, Proto::Udp, "10.0.0.5:5000", "198.51.100.1:53").unwrap();
    let t = n
        .icmp_error_outbound(
            T0,
            v4("198.51.100.1"),
            Protocol::Udp,
            sa("198.51.100.1:53"),
            sa("10.0.0.5:5000"),
        )
        .unwrap();
    assert_eq!((t.outer_src, t.quoted_dst), (*e.ip(), e));
}

#[test]
fn rfc5382_req10_icmp_errors_neither_refresh_nor_end_a_session() {
    let mut n = gw(NaptConfig::cloud(), &["203.0.113.1"]);
    let e = out(&mut n, T0, Proto::Udp, "10.0.0.5:5000", "198.51.100.1:53").unwrap();
    let r = v4("192.0.2.254");
    n.icmp_error_inbound(T0 + 59 * S, r, Protocol::Udp, e, sa("198.51.100.1:53"))
        .unwrap();
    assert_eq!(n.sessions(), 1);
    n.handle_timeout(T0 + 60 * S);
    assert_eq!(n.sessions(), 0);
}

#[test]
fn dnat_forwards_a_port_and_whole_ip_with_any() {
    let mut n = Napt::new(
        NaptConfig::cloud(),
        vec![snat("10.0.0.0/8", &["203.0.113.1"])],
        vec![
            dnat("203.0.113.1:80", DnatProtocol::Tcp, "10.0.0.80:8080"),
            dnat("203.0.113.2:0", DnatProtocol::Any, "10.0.0.2:0"),
        ],
    )
    .unwrap();
    let r = "198.51.100.1:4000";
    // A port forward, sharing its EIP with SNAT.
    assert_eq!(
        inb(&mut n, T0, SYN, r, sa("203.0.113.1:80")),
        Ok(sa("10.0.0.80:8080"))
    );
    // The host's replies leave with the DNAT's external address and port.
    assert_eq!(
        out(&mut n, T0, SYN_ACK, "10.0.0.80:8080", r),
        Ok(sa("203.0.113.1:80"))
    );
    // Only the forwarded protocol and port.
    assert_eq!(
        inb(&mut n, T0, Proto::Udp, r, sa("203.0.113.1:80")),
        Err(NaptDrop::NoSession)
    );
    assert_eq!(
        inb(&mut n, T0, SYN, r, sa("203.0.113.1:81")),
        Err(NaptDrop::NoSession)
    );
    // SNAT never hands out the forwarded port.
    let mut n2 = Napt::new(
        with(|c| {
            c.port_preservation = true;
            c.ports = 80..=81;
        }),
        vec![snat("10.0.0.0/8", &["203.0.113.1"])],
        vec![dnat("203.0.113.1:80", DnatProtocol::Tcp, "10.0.0.80:8080")],
    )
    .unwrap();
    assert_eq!(
        out(&mut n2, T0, SYN, "10.0.0.5:80", r),
        Ok(sa("203.0.113.1:81"))
    );
    // The whole IP: every protocol and port, ports kept.
    for (p, port) in [(SYN, 22), (Proto::Udp, 5060), (Proto::IcmpQuery, 77)] {
        let to = SocketAddrV4::new(v4("203.0.113.2"), port);
        assert_eq!(
            inb(&mut n, T0, p, r, to),
            Ok(SocketAddrV4::new(v4("10.0.0.2"), port))
        );
    }
    // And the host's own new flows leave through it, ports kept.
    assert_eq!(
        out(&mut n, T0, SYN, "10.0.0.2:50000", "192.0.2.1:443"),
        Ok(sa("203.0.113.2:50000"))
    );
    // Addresses that are not the gateway's.
    assert_eq!(
        inb(&mut n, T0, SYN, r, sa("203.0.113.77:80")),
        Err(NaptDrop::UnknownDestination)
    );
    // Outside every SNAT entry.
    assert_eq!(
        out(&mut n, T0, SYN, "172.16.0.1:1000", r),
        Err(NaptDrop::NoSnatRule)
    );
}

#[test]
fn rules_that_cannot_stand_together_are_refused() {
    let cfg = NaptConfig::cloud;
    let e = |snat: Vec<SnatRule>, dnat: Vec<DnatRule>| Napt::new(cfg(), snat, dnat).unwrap_err();
    assert_eq!(
        e(vec![snat("10.0.0.0/8", &[])], vec![]),
        NaptConfigError::SnatWithoutEip {
            source: v4("10.0.0.0"),
            prefix_len: 8
        }
    );
    assert!(matches!(
        e(vec![snat("10.0.0.0/33", &["203.0.113.1"])], vec![]),
        NaptConfigError::BadPrefix { .. }
    ));
    assert!(matches!(
        e(
            vec![snat("10.0.0.0/8", &["203.0.113.1"])],
            vec![dnat("203.0.113.1:0", DnatProtocol::Any, "10.0.0.2:0")]
        ),
        NaptConfigError::WholeIpShared { .. }
    ));
    assert!(matches!(
        e(
            vec![],
            vec![
                dnat("203.0.113.1:80", DnatProtocol::Tcp, "10.0.0.2:80"),
                dnat("203.0.113.1:80", DnatProtocol::Tcp, "10.0.0.3:80")
            ]
        ),
        NaptConfigError::DuplicateDnat { .. }
    ));
    assert!(matches!(
        e(
            vec![],
            vec![
                dnat("203.0.113.1:80", DnatProtocol::Tcp, "10.0.0.2:80"),
                dnat("203.0.113.1:81", DnatProtocol::Tcp, "10.0.0.2:80")
            ]
        ),
        NaptConfigError::DnatTargetTwice { .. }
    ));
    assert!(Napt::new(
        with(|c| c.ports = RangeInclusive::new(10, 9)),
        vec![],
        vec![]
    )
    .is_err());
    assert!(!NaptConfigError::EmptyPortRange.to_string().is_empty());
}

#[test]
fn the_table_is_bounded_and_established_flows_keep_working() {
    let mut n = gw(with(|c| c.max_sessions = 3), &["203.0.113.1"]);
    let flows: Vec<(String, SocketAddrV4)> = (0..3)
        .map(|i| {
            let src = format!("10.0.0.{}:5000", i + 1);
            let e = out(&mut n, T0, Proto::Udp, &src, "198.51.100.1:53").unwrap();
            (src, e)
        })
        .collect();
    assert_eq!(
        out(&mut n, T0, Proto::Udp, "10.0.0.9:5000", "198.51.100.1:53"),
        Err(NaptDrop::TableFull)
    );
    assert_eq!(n.drop_counts()[NaptDrop::TableFull.index()], 1);
    for (src, e) in &flows {
        assert_eq!(
            out(&mut n, T0 + S, Proto::Udp, src, "198.51.100.1:53"),
            Ok(*e)
        );
        assert_eq!(
            inb(&mut n, T0 + S, Proto::Udp, "198.51.100.1:53", *e),
            Ok(sa(src))
        );
    }
    // Once they have expired, the table makes room by itself.
    assert!(out(
        &mut n,
        T0 + 61 * S,
        Proto::Udp,
        "10.0.0.9:5000",
        "198.51.100.1:53"
    )
    .is_ok());
    assert_eq!(n.sessions(), 1);
    // Memory follows the live flows, not the ones that came and went.
    for i in 0..2000u64 {
        let src = format!("10.0.{}.{}:{}", i / 250, i % 250 + 1, 1000 + i);
        let now = T0 + 100 * S + i * 30 * S;
        n.handle_timeout(now);
        out(&mut n, now, Proto::Udp, &src, "198.51.100.1:53").unwrap();
    }
    assert!(n.sessions.len() <= 3 && n.mappings.len() <= 3);
    assert!(n.out_index.len() <= 3 && n.map_by_int.len() <= 3);
}

#[test]
fn port_exhaustion_is_reported() {
    let mut n = gw(with(|c| c.ports = 5000..=5003), &["203.0.113.1"]);
    let mut got = HashSet::new();
    for h in 1..=4 {
        got.insert(
            out(
                &mut n,
                T0,
                Proto::Udp,
                &format!("10.0.0.{h}:1"),
                "198.51.100.1:53",
            )
            .unwrap(),
        );
    }
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|e| (5000..=5003).contains(&e.port())));
    assert_eq!(
        out(&mut n, T0, Proto::Udp, "10.0.0.9:1", "198.51.100.1:53"),
        Err(NaptDrop::PortsExhausted)
    );
    assert_eq!(n.drop_counts()[NaptDrop::PortsExhausted.index()], 1);
    // Ports are per protocol: TCP still has all four.
    assert!(out(&mut n, T0, SYN, "10.0.0.9:1", "198.51.100.1:53").is_ok());
    // Expiry gives the ports back.
    n.handle_timeout(T0 + 60 * S);
    assert!(out(
        &mut n,
        T0 + 60 * S,
        Proto::Udp,
        "10.0.0.9:1",
        "198.51.100.1:53"
    )
    .is_ok());
    // With two IPs the pool is twice as large, and paired pooling cannot move a host.
    let mut n = gw(
        with(|c| c.ports = 5000..=5003),
        &["203.0.113.1", "203.0.113.2"],
    );
    for p in 0..8 {
        out(
            &mut n,
            T0,
            Proto::Udp,
            &format!("10.0.0.1:{p}"),
            "198.51.100.1:53",
        )
        .unwrap();
    }
    assert_eq!(
        out(&mut n, T0, Proto::Udp, "10.0.0.1:99", "198.51.100.1:53"),
        Err(NaptDrop::PortsExhausted)
    );
    let mut n = gw(
        with(|c| {
            c.ports = 5000..=5003;
            c.pooling = Pooling::Paired
        }),
        &["203.0.113.1", "203.0.113.2"],
    );
    for p in 0..4 {
        out(
            &mut n,
            T0,
            Proto::Udp,
            &format!("10.0.0.1:{p}"),
            "198.51.100.1:53",
        )
        .unwrap();
    }
    assert_eq!(
        out(&mut n, T0, Proto::Udp, "10.0.0.1:99", "198.51.100.1:53"),
        Err(NaptDrop::PortsExhausted)
    );
}

#[test]
fn poll_timeout_says_when_to_come_back() {
    let mut n = gw(NaptConfig::cloud(), &["203.0.113.1"]);
    assert_eq!(n.poll_timeout(), None);
    out(
        &mut n,
        T0 + S / 2,
        Proto::Udp,
        "10.0.0.5:5000",
        "198.51.100.1:53",
    )
    .unwrap();
    let mut t = n.poll_timeout().unwrap();
    // The caller sleeps until then, wakes, and repeats until the session is gone.
    let mut wakes = 0;
    while n.sessions() > 0 {
        assert!(t >= T0 + S / 2 + 60 * S - wheel::TICK_NS);
        n.handle_timeout(t);
        wakes += 1;
        if let Some(next) = n.poll_timeout() {
            t = next;
        }
    }
    assert!(wakes <= 2, "{wakes}");
    assert!(t < T0 + S / 2 + 60 * S + wheel::TICK_NS);
}

// --- changing the rules and configuration of a live gateway ---

const E1: &str = "203.0.113.1";
const E2: &str = "203.0.113.2";
const E3: &str = "203.0.113.3";

#[test]
fn set_rules_adding_an_snat_entry_keeps_established_flows() {
    let r = "198.51.100.1:443";
    let mut n = gw(NaptConfig::cloud(), &[E1]);
    let tcp = handshake(&mut n, T0, "10.0.0.5:40000", r);
    let udp = out(&mut n, T0, Proto::Udp, "10.0.0.5:5000", "198.51.100.1:53").unwrap();
    let other = "172.16.0.1:5000";
    assert_eq!(
        out(&mut n, T0, Proto::Udp, other, "198.51.100.1:53"),
        Err(NaptDrop::NoSnatRule)
    );
    n.set_rules(
        vec![
            // The new entry's EIP comes first, so the old EIP's place in the table moves.
            snat("172.16.0.0/12", &[E2]),
            snat("10.0.0.0/8", &[E1]),
            // More specific than the old entry, but not covering 10.0.0.5.
            snat("10.9.0.0/16", &[E2]),
        ],
        vec![],
    )
    .unwrap();
    n.check_invariants();
    assert_eq!((n.sessions(), n.mappings()), (2, 2));
    assert_eq!(out(&mut n, T0 + S, ACK, "10.0.0.5:40000", r), Ok(tcp));
    assert_eq!(inb(&mut n, T0 + S, ACK, r, tcp), Ok(sa("10.0.0.5:40000")));
    assert_eq!(
        inb(&mut n, T0 + S, Proto::Udp, "198.51.100.1:53", udp),
        Ok(sa("10.0.0.5:5000"))
    );
    // The new entry works, and the old one's hosts still get new mappings from its EIP.
    let e = out(&mut n, T0 + S, Proto::Udp, other, "198.51.100.1:53").unwrap();
    assert_eq!(*e.ip(), v4(E2));
    let e = out(&mut n, T0 + S, Proto::Udp, "10.0.0.6:1", "198.51.100.1:53").unwrap();
    assert_eq!(*e.ip(), v4(E1));
    // The TCP connection is still established (900 s idle, not the transitory 240 s).
    n.handle_timeout(T0 + 801 * S);
    n.check_invariants();
    assert_eq!(n.sessions(), 1);
    assert_eq!(out(&mut n, T0 + 801 * S, ACK, "10.0.0.5:40000", r), Ok(tcp));
}

#[test]
fn set_rules_removing_an_snat_entry_ends_its_flows_and_frees_their_ports() {
    let r = "198.51.100.1:53";
    let mut n = Napt::new(
        with(|c| c.ports = 5000..=5001),
        vec![snat("10.0.0.0/24", &[E1]), snat("10.0.1.0/24", &[E1])],
        vec![],
    )
    .unwrap();
    let a1 = out(&mut n, T0, Proto::Udp, "10.0.0.5:1000", r).unwrap();
    let a2 = out(&mut n, T0, Proto::Udp, "10.0.0.6:1000", r).unwrap();
    let t = handshake(&mut n, T0, "10.0.0.5:2000", "198.51.100.1:443");
    assert_eq!(
        out(&mut n, T0, Proto::Udp, "10.0.1.7:1000", r),
        Err(NaptDrop::PortsExhausted)
    );
    n.set_rules(vec![snat("10.0.1.0/24", &[E1])], vec![])
        .unwrap();
    n.check_invariants();
    assert_eq!((n.sessions(), n.mappings()), (0, 0));
    // The flows' next packets from inside are refused; from outside they find nothing.
    assert_eq!(
        out(&mut n, T0 + S, Proto::Udp, "10.0.0.5:1000", r),
        Err(NaptDrop::NoSnatRule)
    );
    assert_eq!(
        out(&mut n, T0 + S, ACK, "10.0.0.5:2000", "198.51.100.1:443"),
        Err(NaptDrop::NoSnatRule)
    );
    assert_eq!(
        inb(&mut n, T0 + S, Proto::Udp, r, a1),
        Err(NaptDrop::NoSession)
    );
    assert_eq!(
        inb(&mut n, T0 + S, ACK, "198.51.100.1:443", t),
        Err(NaptDrop::NoSession)
    );
    // Their ports are free again: the other entry's hosts get both.
    let b1 = out(&mut n, T0 + S, Proto::Udp, "10.0.1.7:1000", r).unwrap();
    let b2 = out(&mut n, T0 + S, Proto::Udp, "10.0.1.8:1000", r).unwrap();
    assert_eq!(HashSet::from([a1, a2]), HashSet::from([b1, b2]));
    // With no entry left the EIP is no longer the gateway's.
    n.set_rules(vec![], vec![]).unwrap();
    n.check_invariants();
    assert_eq!((n.sessions(), n.mappings()), (0, 0));
    assert_eq!(
        inb(&mut n, T0 + S, Proto::Udp, r, b1),
        Err(NaptDrop::UnknownDestination)
    );
}

#[test]
fn set_rules_changing_an_entrys_eips_keeps_the_flows_on_the_eips_that_remain() {
    let r = "198.51.100.1:53";
    // Paired pooling: each host on one EIP, and hosts on both.
    let mut n = gw(with(|c| c.pooling = Pooling::Paired), &[E1, E2]);
    let mut flows = Vec::new();
    for h in 1..=20 {
        for port in [1000, 1001] {
            let src = format!("10.0.0.{h}:{port}");
            let e = out(&mut n, T0, Proto::Udp, &src, r).unwrap();
            flows.push((src, e));
        }
    }
    let (on_e2, on_e1): (Vec<_>, Vec<_>) = flows.iter().partition(|(_, e)| *e.ip() == v4(E2));
    assert!(!on_e1.is_empty() && !on_e2.is_empty());
    // E1 goes, E3 comes, and E2 moves to the first place of the gateway's EIPs.
    n.set_rules(vec![snat("10.0.0.0/8", &[E2, E3])], vec![])
        .unwrap();
    n.check_invariants();
    assert_eq!(n.sessions(), on_e2.len());
    for (src, e) in &on_e2 {
        assert_eq!(out(&mut n, T0 + S, Proto::Udp, src, r), Ok(*e));
        assert_eq!(inb(&mut n, T0 + S, Proto::Udp, r, *e), Ok(sa(src)));
        // The host's new flows stay on its EIP (paired pooling).
        let (host, _) = src.split_once(':').unwrap();
        let new = out(&mut n, T0 + S, Proto::Udp, &format!("{host}:3000"), r).unwrap();
        assert_eq!(new.ip(), e.ip());
    }
    for (src, e) in &on_e1 {
        assert_eq!(
            inb(&mut n, T0 + S, Proto::Udp, r, *e),
            Err(NaptDrop::UnknownDestination)
        );
        // The next packet is a new flow, from the entry's EIPs now.
        let new = out(&mut n, T0 + S, Proto::Udp, src, r).unwrap();
        assert_ne!(*new.ip(), v4(E1));
    }
}

#[test]
fn set_rules_a_new_dnat_entry_takes_its_port_from_a_live_snat_mapping() {
    // One SNAT port, so the mapping's port is known.
    let mut n = gw(with(|c| c.ports = 5000..=5000), &[E1]);
    let r = "198.51.100.1:53";
    let e = out(&mut n, T0, Proto::Udp, "10.0.0.5:1000", r).unwrap();
    assert_eq!(e, sa("203.0.113.1:5000"));
    // TCP's port 5000 is another port.
    let t = handshake(&mut n, T0, "10.0.0.5:1000", "198.51.100.1:443");
    assert_eq!(t, e);
    n.set_rules(
        vec![snat("10.0.0.0/8", &[E1])],
        vec![dnat("203.0.113.1:5000", DnatProtocol::Udp, "10.0.0.9:53")],
    )
    .unwrap();
    n.check_invariants();
    // The entry wins: the UDP mapping and its session ended; the TCP one carries on.
    assert_eq!((n.sessions(), n.mappings()), (1, 1));
    assert_eq!(
        out(&mut n, T0 + S, ACK, "10.0.0.5:1000", "198.51.100.1:443"),
        Ok(t)
    );
    // What comes to the port goes where the entry says, from the host's old remote too.
    assert_eq!(inb(&mut n, T0 + S, Proto::Udp, r, e), Ok(sa("10.0.0.9:53")));
    // The host's next packet is a new flow, and the range's one port is the entry's.
    assert_eq!(
        out(&mut n, T0 + S, Proto::Udp, "10.0.0.5:1000", r),
        Err(NaptDrop::PortsExhausted)
    );
}

#[test]
fn set_rules_removing_or_changing_a_dnat_entry_ends_its_sessions() {
    let snats = || vec![snat("10.0.0.0/8", &[E1])];
    let whole = dnat("203.0.113.9:0", DnatProtocol::Any, "10.0.0.2:0");
    let fwd = dnat("203.0.113.1:80", DnatProtocol::Tcp, "10.0.0.80:8080");
    let mut n = Napt::new(NaptConfig::cloud(), snats(), vec![fwd, whole]).unwrap();
    let r = "198.51.100.1:4000";
    assert_eq!(
        inb(&mut n, T0, SYN, r, sa("203.0.113.1:80")),
        Ok(sa("10.0.0.80:8080"))
    );
    assert_eq!(
        out(&mut n, T0, SYN_ACK, "10.0.0.80:8080", r),
        Ok(sa("203.0.113.1:80"))
    );
    assert_eq!(
        inb(&mut n, T0, Proto::Udp, r, sa("203.0.113.9:5060")),
        Ok(sa("10.0.0.2:5060"))
    );
    let w = "192.0.2.1:443";
    assert_eq!(
        out(&mut n, T0, SYN, "10.0.0.2:50000", w),
        Ok(sa("203.0.113.9:50000"))
    );
    assert_eq!(n.sessions(), 3);
    // The port forward goes; the whole-IP entry stays as it was, and so do its sessions.
    n.set_rules(snats(), vec![whole]).unwrap();
    n.check_invariants();
    assert_eq!(n.sessions(), 2);
    assert_eq!(
        inb(&mut n, T0 + S, ACK, r, sa("203.0.113.1:80")),
        Err(NaptDrop::NoSession)
    );
    // The server's next packet is a new flow through SNAT: it no longer leaves as E1:80.
    let e = out(&mut n, T0 + S, ACK, "10.0.0.80:8080", r).unwrap();
    assert_ne!(e, sa("203.0.113.1:80"));
    assert_eq!(
        inb(&mut n, T0 + S, Proto::Udp, r, sa("203.0.113.9:5060")),
        Ok(sa("10.0.0.2:5060"))
    );
    assert_eq!(
        out(&mut n, T0 + S, ACK, "10.0.0.2:50000", w),
        Ok(sa("203.0.113.9:50000"))
    );
    // An entry changed is an entry gone: the whole IP now maps another host.
    n.set_rules(
        snats(),
        vec![dnat("203.0.113.9:0", DnatProtocol::Any, "10.0.0.3:0")],
    )
    .unwrap();
    n.check_invariants();
    assert_eq!(n.sessions(), 1, "only the SNAT flow of 10.0.0.80");
    assert_eq!(
        inb(&mut n, T0 + S, Proto::Udp, r, sa("203.0.113.9:5060")),
        Ok(sa("10.0.0.3:5060"))
    );
    // 10.0.0.2 is no longer mapped whole: its next packet leaves through SNAT.
    let e = out(&mut n, T0 + S, ACK, "10.0.0.2:50000", w).unwrap();
    assert_eq!(*e.ip(), v4(E1));
}

#[test]
fn set_rules_refuses_an_invalid_rule_set_and_leaves_the_flows_working() {
    let cfg = NaptConfig::cloud;
    let snats = || vec![snat("10.0.0.0/8", &[E1])];
    let dnats = || vec![dnat("203.0.113.1:80", DnatProtocol::Tcp, "10.0.0.80:80")];
    let mut n = Napt::new(cfg(), snats(), dnats()).unwrap();
    let r = "198.51.100.1:53";
    let e = out(&mut n, T0, Proto::Udp, "10.0.0.5:5000", r).unwrap();
    let client = "198.51.100.7:1234";
    assert_eq!(
        inb(&mut n, T0, SYN, client, sa("203.0.113.1:80")),
        Ok(sa("10.0.0.80:80"))
    );
    let bad: Vec<(Vec<SnatRule>, Vec<DnatRule>)> = vec![
        (vec![snat("10.0.0.0/8", &[])], dnats()),
        (vec![snat("10.0.0.0/33", &[E2])], vec![]),
        (
            snats(),
            vec![dnat("203.0.113.1:0", DnatProtocol::Any, "10.0.0.2:0")],
        ),
        (
            vec![],
            vec![
                dnat("203.0.113.2:80", DnatProtocol::Tcp, "10.0.0.2:80"),
                dnat("203.0.113.2:80", DnatProtocol::Tcp, "10.0.0.3:80"),
            ],
        ),
        (
            vec![],
            vec![
                dnat("203.0.113.2:80", DnatProtocol::Tcp, "10.0.0.2:80"),
                dnat("203.0.113.2:81", DnatProtocol::Tcp, "10.0.0.2:80"),
            ],
        ),
    ];
    for (s, d) in bad {
        let want = Napt::new(cfg(), s.clone(), d.clone()).unwrap_err();
        assert_eq!(n.set_rules(s, d), Err(want));
        n.check_invariants();
        assert_eq!((n.sessions(), n.mappings()), (2, 1));
    }
    assert_eq!(
        n.set_config(with(|c| c.ports = RangeInclusive::new(10, 9))),
        Err(NaptConfigError::EmptyPortRange)
    );
    assert_eq!(*n.config(), cfg());
    // The old rules are still in force, for the live flows and new ones.
    assert_eq!(out(&mut n, T0 + S, Proto::Udp, "10.0.0.5:5000", r), Ok(e));
    assert_eq!(
        inb(&mut n, T0 + S, Proto::Udp, r, e),
        Ok(sa("10.0.0.5:5000"))
    );
    assert_eq!(
        inb(&mut n, T0 + S, ACK, client, sa("203.0.113.1:80")),
        Ok(sa("10.0.0.80:80"))
    );
    let e = out(&mut n, T0 + S, Proto::Udp, "10.0.0.6:5000", r).unwrap();
    assert_eq!(*e.ip(), v4(E1));
}

#[test]
fn set_config_new_timeouts_count_from_each_flows_last_packet() {
    let r = "198.51.100.1:53";
    let mut n = gw(NaptConfig::cloud(), &[E1]);
    out(&mut n, T0, Proto::Udp, "10.0.0.5:5000", r).unwrap();
    out(&mut n, T0 + 10 * S, Proto::Udp, "10.0.0.6:5000", r).unwrap();
    // 60 s -> 20 s: the deadlines are T0 + 20 s and T0 + 30 s now, not T0 + 60 s and 70 s.
    n.set_config(with(|c| c.udp_ns = 20 * S)).unwrap();
    n.check_invariants();
    assert!(n.poll_timeout().unwrap() <= T0 + 20 * S);
    n.handle_timeout(T0 + 20 * S - 1);
    assert_eq!(n.sessions(), 2);
    n.handle_timeout(T0 + 20 * S);
    assert_eq!(n.sessions(), 1);
    n.handle_timeout(T0 + 30 * S);
    assert_eq!(n.sessions(), 0);
    // 20 s -> 300 s: a flow idle for 10 s has 290 s left.
    let t1 = T0 + 40 * S;
    let e = out(&mut n, t1, Proto::Udp, "10.0.0.5:5000", r).unwrap();
    n.set_config(with(|c| c.udp_ns = 300 * S)).unwrap();
    n.handle_timeout(t1 + 299 * S);
    assert_eq!(
        inb(&mut n, t1 + 299 * S, Proto::Udp, r, e),
        Ok(sa("10.0.0.5:5000"))
    );
    n.handle_timeout(t1 + 599 * S - 1);
    assert_eq!(n.sessions(), 1);
    n.handle_timeout(t1 + 599 * S);
    assert_eq!(n.sessions(), 0);
    // A TCP connection's timeout follows its state: established gets the new established
    // timeout, not the transitory one.
    let t2 = T0 + 2000 * S;
    handshake(&mut n, t2, "10.0.0.5:40000", "198.51.100.1:443");
    n.set_config(with(|c| {
        c.udp_ns = 300 * S;
        c.tcp_established_ns = 100 * S;
    }))
    .unwrap();
    n.handle_timeout(t2 + 100 * S - 1);
    assert_eq!(n.sessions(), 1);
    n.handle_timeout(t2 + 100 * S);
    assert_eq!(n.sessions(), 0);
}

#[test]
fn set_config_a_lower_max_sessions_lets_live_flows_carry_on() {
    let r = "198.51.100.1:53";
    let mut n = gw(NaptConfig::cloud(), &[E1]);
    let flows: Vec<(String, SocketAddrV4)> = (1..=3)
        .map(|h| {
            let src = format!("10.0.0.{h}:5000");
            let e = out(&mut n, T0, Proto::Udp, &src, r).unwrap();
            (src, e)
        })
        .collect();
    n.set_config(with(|c| c.max_sessions = 2)).unwrap();
    n.check_invariants();
    for (src, e) in &flows {
        assert_eq!(out(&mut n, T0 + S, Proto::Udp, src, r), Ok(*e));
    }
    assert_eq!(
        out(&mut n, T0 + S, Proto::Udp, "10.0.0.9:5000", r),
        Err(NaptDrop::TableFull)
    );
    n.handle_timeout(T0 + 61 * S);
    assert!(out(&mut n, T0 + 61 * S, Proto::Udp, "10.0.0.9:5000", r).is_ok());
}

#[test]
fn set_config_ends_the_flows_the_old_configuration_made() {
    let r = "198.51.100.1:53";
    let base = || {
        with(|c| {
            c.ports = 5000..=5001;
            c.filtering = Behaviour::EndpointIndependent;
        })
    };
    let mut n = Napt::new(
        base(),
        vec![snat("10.0.0.0/8", &[E1])],
        vec![dnat("203.0.113.1:80", DnatProtocol::Tcp, "10.0.0.80:80")],
    )
    .unwrap();
    let a = out(&mut n, T0, Proto::Udp, "10.0.0.5:1000", r).unwrap();
    let b = out(&mut n, T0, Proto::Udp, "10.0.0.6:1000", r).unwrap();
    let dnat_client = "198.51.100.9:4000";
    assert!(inb(&mut n, T0, SYN, dnat_client, sa("203.0.113.1:80")).is_ok());
    // A new port range: the mapping outside it ends, the one inside stays.
    n.set_config(with(|c| {
        *c = base();
        c.ports = 5001..=5002;
    }))
    .unwrap();
    n.check_invariants();
    let (inside, outside) = if a.port() == 5001 { (a, b) } else { (b, a) };
    assert_eq!(n.mappings(), 1);
    assert!(inb(&mut n, T0 + S, Proto::Udp, r, inside).is_ok());
    assert_eq!(
        inb(&mut n, T0 + S, Proto::Udp, r, outside),
        Err(NaptDrop::NoSession)
    );
    // Hairpinning turned off: the hairpinned sessions end, the others stay.
    let t = n
        .outbound(T0 + S, Proto::Udp, sa("10.0.0.7:1000"), inside)
        .unwrap();
    assert!(t.hairpin);
    let before = n.sessions();
    n.set_config(with(|c| {
        *c = base();
        c.ports = 5001..=5002;
        c.hairpinning = false;
    }))
    .unwrap();
    n.check_invariants();
    // The sender's session and the receiver's session of the hairpinned flow.
    assert_eq!(n.sessions(), before - 2);
    assert!(inb(&mut n, T0 + S, Proto::Udp, r, inside).is_ok());
    // Address-dependent filtering from now on: admitted are the remotes the host sent to.
    n.set_config(with(|c| {
        *c = base();
        c.ports = 5001..=5002;
        c.filtering = Behaviour::AddressDependent;
    }))
    .unwrap();
    n.check_invariants();
    assert!(inb(&mut n, T0 + S, Proto::Udp, "198.51.100.1:9", inside).is_ok());
    assert_eq!(
        inb(&mut n, T0 + S, Proto::Udp, "192.0.2.1:53", inside),
        Err(NaptDrop::Filtered)
    );
    // Another mapping behaviour: every SNAT flow ends; DNAT sessions stay.
    n.set_config(with(|c| {
        *c = base();
        c.ports = 5001..=5002;
        c.mapping = Behaviour::AddressAndPortDependent;
    }))
    .unwrap();
    n.check_invariants();
    assert_eq!((n.sessions(), n.mappings()), (1, 0));
    assert_eq!(
        inb(&mut n, T0 + S, ACK, dnat_client, sa("203.0.113.1:80")),
        Ok(sa("10.0.0.80:80"))
    );
}

// --- random packet sequences ---

#[derive(Clone, Debug)]
enum Op {
    /// Host h, its port, remote r (the last remotes are the gateway's own addresses).
    Out {
        h: u8,
        port: u8,
        r: u8,
        rport: u8,
        proto: u8,
        flags: u8,
    },
    /// A packet back to an external address seen before (pick), from its remote or another.
    Reply {
        pick: usize,
        other: bool,
        flags: u8,
    },
    /// A packet to any external port.
    In {
        r: u8,
        rport: u8,
        eip: u8,
        port: u16,
        proto: u8,
        flags: u8,
    },
    IcmpErr {
        pick: usize,
        inbound: bool,
    },
    Wait(u16),
    Timeout,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..6u8, 0..4u8, 0..5u8, 0..3u8, 0..3u8, any::<u8>())
            .prop_map(|(h, port, r, rport, proto, flags)| Op::Out { h, port, r, rport, proto, flags }),
        3 => (any::<usize>(), any::<bool>(), any::<u8>())
            .prop_map(|(pick, other, flags)| Op::Reply { pick, other, flags }),
        1 => (0..5u8, 0..3u8, 0..3u8, 1020..1030u16, 0..3u8, any::<u8>())
            .prop_map(|(r, rport, eip, port, proto, flags)| Op::In { r, rport, eip, port, proto, flags }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, inbound)| Op::IcmpErr { pick, inbound }),
        2 => (0..40u16).prop_map(Op::Wait),
        1 => Just(Op::Timeout),
    ]
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        Just(Behaviour::EndpointIndependent),
        Just(Behaviour::AddressDependent),
        Just(Behaviour::AddressAndPortDependent),
    ]
}

fn config() -> impl Strategy<Value = NaptConfig> {
    (
        behaviour(),
        behaviour(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0..30usize,
    )
        .prop_map(
            |(mapping, filtering, port_preservation, paired, hairpinning, max_sessions)| {
                NaptConfig {
                    mapping,
                    filtering,
                    port_preservation,
                    pooling: if paired {
                        Pooling::Paired
                    } else {
                        Pooling::Arbitrary
                    },
                    hairpinning,
                    tcp_established_ns: 30 * S,
                    tcp_transitory_ns: 7 * S,
                    udp_ns: 10 * S,
                    icmp_ns: 5 * S,
                    max_sessions,
                    ports: 1020..=1027,
                }
            },
        )
}

const EIPS: [&str; 3] = ["203.0.113.1", "203.0.113.2", "203.0.113.3"];

fn proto_of(p: u8, flags: u8) -> Proto {
    match p {
        0 => Proto::Tcp(TcpFlags(flags)),
        1 => Proto::Udp,
        _ => Proto::IcmpQuery,
    }
}

fn remote(r: u8, rport: u8) -> SocketAddrV4 {
    // Remotes 3 and 4 are the gateway's own addresses: hairpinning.
    let ip = match r {
        0..=2 => Ipv4Addr::new(198, 51, 100, r + 1),
        3 => v4(EIPS[0]),
        _ => v4(EIPS[2]),
    };
    SocketAddrV4::new(ip, 1020 + rport as u16)
}

/// (protocol, external, remote, internal) of what left, as last seen.
type Seen = Vec<(Proto, SocketAddrV4, SocketAddrV4, SocketAddrV4)>;

/// One step of a random packet sequence, and what can be said of its answer: an inbound
/// translation always undoes the outbound one that made the session.
fn step(n: &mut Napt, op: Op, now: &mut u64, seen: &mut Seen) -> Result<(), TestCaseError> {
    match op {
        Op::Out {
            h,
            port,
            r,
            rport,
            proto,
            flags,
        } => {
            let p = proto_of(proto, flags);
            let src = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, h + 1), 1020 + port as u16);
            let dst = remote(r, rport);
            if let Ok(t) = n.outbound(*now, p, src, dst) {
                if t.hairpin {
                    prop_assert!(n.rules.eip_index.contains_key(&u32::from(*t.src.ip())));
                    prop_assert!(t.dst.ip().octets()[0] == 10);
                } else {
                    prop_assert_eq!(t.dst, dst);
                    // The inverse, at once: the remote's answer reaches the sender.
                    let reply_p = match p {
                        Proto::Tcp(_) => Proto::Tcp(TcpFlags::ACK),
                        q => q,
                    };
                    prop_assert_eq!(n.inbound(*now, reply_p, dst, t.src), Ok(src));
                }
                seen.push((p, t.src, dst, src));
            }
        }
        Op::Reply { pick, other, flags } => {
            if seen.is_empty() {
                return Ok(());
            }
            let (p, ext, rem, int) = seen[pick % seen.len()];
            let p = match p {
                Proto::Tcp(_) => Proto::Tcp(TcpFlags(flags)),
                q => q,
            };
            let from = if other {
                SocketAddrV4::new(*rem.ip(), rem.port() ^ 1)
            } else {
                rem
            };
            if let Ok(to) = n.inbound(*now, p, from, ext) {
                // Whoever holds ext now got it by a later outbound (the old one
                // expired), or it is still the host that sent from it.
                let last = seen
                    .iter()
                    .rev()
                    .find(|s| s.0.protocol() == p.protocol() && s.1 == ext)
                    .unwrap();
                prop_assert_eq!(to, last.3);
                let _ = int;
            }
        }
        Op::In {
            r,
            rport,
            eip,
            port,
            proto,
            flags,
        } => {
            let dst = SocketAddrV4::new(v4(EIPS[eip as usize]), port);
            let _ = n.inbound(*now, proto_of(proto, flags), remote(r, rport), dst);
        }
        Op::IcmpErr { pick, inbound } => {
            if seen.is_empty() {
                return Ok(());
            }
            let (p, ext, rem, int) = seen[pick % seen.len()];
            let router = v4("192.0.2.254");
            if inbound {
                if let Ok(t) = n.icmp_error_inbound(*now, router, p.protocol(), ext, rem) {
                    let last = seen
                        .iter()
                        .rev()
                        .find(|s| s.0.protocol() == p.protocol() && s.1 == ext)
                        .unwrap();
                    prop_assert_eq!(t.quoted_src, last.3);
                    prop_assert_eq!(t.outer_dst, *last.3.ip());
                }
            } else if let Ok(t) = n.icmp_error_outbound(*now, *rem.ip(), p.protocol(), rem, int) {
                prop_assert_eq!(t.outer_src, *t.quoted_dst.ip());
                let _ = ext;
            }
        }
        Op::Wait(s) => *now += s as u64 * S / 2,
        Op::Timeout => n.handle_timeout(*now),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {

        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    /// No input panics or breaks the tables, and an inbound translation always undoes the
    /// outbound one that made the session: the reply to what left as (E:e -> R:r) reaches
    /// exactly the host and port that sent it.
    #[test]
    fn random_packets_never_panic_and_inbound_inverts_outbound(
        cfg in config(),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut n = Napt::new(
            cfg,
            vec![snat("10.0.0.0/29", &EIPS[..2]), snat("10.0.0.4/30", &EIPS[1..2])],
            vec![
                dnat("203.0.113.3:1022", DnatProtocol::Tcp, "10.0.0.1:1022"),
                dnat("203.0.113.3:1023", DnatProtocol::Udp, "10.0.0.9:53"),
            ],
        ).unwrap();
        let mut now = T0;
        let mut seen = Vec::new();
        for op in ops {
            step(&mut n, op, &mut now, &mut seen)?;
            n.check_invariants();
        }
        n.handle_timeout(now + 3600 * S);
        n.check_invariants();
        prop_assert_eq!((n.sessions(), n.mappings()), (0, 0));
        for e in &n.rules.eips {
            for (i, ps) in e.ports.iter().enumerate() {
                // Back to the free count it started with (DNAT ports stay taken).
                let dnat = if e.addr == u32::from(v4(EIPS[2])) && i < 2 { 1 } else { 0 };
                prop_assert_eq!(ps.free(), 8 - dnat);
            }
        }
    }
}

// --- random rule and configuration changes amid traffic ---

/// SNAT entries to choose from, each with any set of the three EIPs (none: an error).
const SNAT_POOL: [&str; 3] = ["10.0.0.0/29", "10.0.0.4/30", "10.0.0.2/32"];

/// DNAT entries to choose from: some hold ports SNAT hands out, some map a host whole, one
/// changes another's target, and some cannot stand with others.
const DNAT_POOL: [(&str, DnatProtocol, &str); 7] = [
    ("203.0.113.3:1022", DnatProtocol::Tcp, "10.0.0.1:1022"),
    ("203.0.113.3:1023", DnatProtocol::Udp, "10.0.0.9:53"),
    ("203.0.113.1:1021", DnatProtocol::Udp, "10.0.0.2:1021"),
    ("203.0.113.1:1024", DnatProtocol::Tcp, "10.0.0.3:80"),
    ("203.0.113.4:0", DnatProtocol::Any, "10.0.0.5:0"),
    ("203.0.113.2:0", DnatProtocol::Any, "10.0.0.6:0"),
    ("203.0.113.3:1022", DnatProtocol::Tcp, "10.0.0.1:1025"),
];

#[derive(Clone, Debug)]
enum Change {
    Packet(Op),
    /// Which SNAT entries, with which EIPs (a bit per EIP), and which DNAT entries (a bit per
    /// entry of the pool).
    Rules {
        snat: [Option<u8>; 3],
        dnat: u8,
    },
    Config(NaptConfig),
}

fn rule_set(snat_eips: &[Option<u8>; 3], dnats: u8) -> (Vec<SnatRule>, Vec<DnatRule>) {
    let s = SNAT_POOL
        .iter()
        .zip(snat_eips)
        .filter_map(|(cidr, m)| {
            let m = (*m)?;
            let eips: Vec<&str> = (0..3)
                .filter(|b| m >> b & 1 == 1)
                .map(|b| EIPS[b])
                .collect();
            Some(snat(cidr, &eips))
        })
        .collect();
    let d = DNAT_POOL
        .iter()
        .enumerate()
        .filter(|(i, _)| dnats >> i & 1 == 1)
        .map(|(_, &(e, p, i))| dnat(e, p, i))
        .collect();
    (s, d)
}

fn change() -> impl Strategy<Value = Change> {
    let ports = prop_oneof![Just(1020..=1027), Just(1022..=1025), Just(1024..=1031)];
    prop_oneof![
        14 => op().prop_map(Change::Packet),
        2 => (
            proptest::array::uniform3(proptest::option::of(prop_oneof![9 => 1..8u8, 1 => Just(0u8)])),
            0..128u8,
        )
            .prop_map(|(snat, dnat)| Change::Rules { snat, dnat }),
        1 => (config(), ports).prop_map(|(mut c, p)| {
            c.ports = p;
            Change::Config(c)
        }),
    ]
}

/// This test's own reading of whether new rules still translate live session `s` as it is:
/// SNAT-made, its EIP is one of the most specific covering entry's and nothing else claims
/// the host or the port; DNAT-made, its entry is there unchanged; and its remote is one of
/// the gateway's addresses exactly when it was.
fn rules_keep(
    s: &Session,
    snat: &[SnatRule],
    dnat: &[DnatRule],
    ports: &RangeInclusive<u16>,
) -> bool {
    let int = sock(s.int_ip, s.int_port);
    let ext = sock(s.ext_ip, s.ext_port);
    let same_proto = |p: DnatProtocol| {
        matches!(
            (p, s.proto),
            (DnatProtocol::Tcp, Protocol::Tcp) | (DnatProtocol::Udp, Protocol::Udp)
        )
    };
    let gateway: HashSet<Ipv4Addr> = snat
        .iter()
        .flat_map(|r| r.eips.iter().copied())
        .chain(dnat.iter().map(|d| *d.external.ip()))
        .collect();
    let hairpin_as_before = s.hairpin == gateway.contains(&Ipv4Addr::from(s.rem_ip));
    let translated = if s.mapping != NONE {
        let covers = |r: &&SnatRule| {
            let mask = u32::MAX.checked_shl(32 - r.prefix_len as u32).unwrap_or(0);
            u32::from(r.source) & mask == s.int_ip & mask
        };
        // The longest prefix; the first given among equals.
        let entry =
            snat.iter()
                .filter(covers)
                .fold(None, |best: Option<&SnatRule>, r| match best {
                    Some(b) if b.prefix_len >= r.prefix_len => Some(b),
                    _ => Some(r),
                });
        let whole = dnat
            .iter()
            .any(|d| d.protocol == DnatProtocol::Any && d.internal.ip() == int.ip());
        let forwarded = dnat
            .iter()
            .any(|d| d.external == ext && same_proto(d.protocol));
        !whole
            && !forwarded
            && ports.contains(&ext.port())
            && entry.is_some_and(|r| r.eips.contains(ext.ip()))
    } else {
        dnat.iter().any(|d| match d.protocol {
            DnatProtocol::Any => {
                d.external.ip() == ext.ip()
                    && d.internal.ip() == int.ip()
                    && ext.port() == int.port()
            }
            p => same_proto(p) && d.external == ext && d.internal == int,
        })
    };
    translated && hairpin_as_before
}

fn live_sessions(n: &Napt) -> Vec<(u32, Session)> {
    (0..n.sessions.len() as u32)
        .map(|i| (i, n.sessions[i as usize]))
        .filter(|(_, s)| s.live)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    /// Rules and configuration changed at random amid random traffic: the tables stay
    /// consistent with each other and with what is in force (`check_invariants`), a change
    /// keeps exactly the sessions the new rules translate as before (`rules_keep`), a refused
    /// change keeps everything, and the table still empties and gives back every port.
    #[test]
    fn random_rule_changes_amid_traffic_keep_the_tables_consistent(
        cfg in config(),
        changes in proptest::collection::vec(change(), 1..150),
    ) {
        let mut n = Napt::new(
            cfg,
            vec![snat("10.0.0.0/29", &EIPS[..2]), snat("10.0.0.4/30", &EIPS[1..2])],
            vec![
                dnat("203.0.113.3:1022", DnatProtocol::Tcp, "10.0.0.1:1022"),
                dnat("203.0.113.3:1023", DnatProtocol::Udp, "10.0.0.9:53"),
            ],
        ).unwrap();
        let mut now = T0;
        let mut seen = Vec::new();
        for c in changes {
            match c {
                Change::Packet(op) => step(&mut n, op, &mut now, &mut seen)?,
                Change::Rules { snat, dnat } => {
                    let (s, d) = rule_set(&snat, dnat);
                    let fresh = Napt::new(n.config().clone(), s.clone(), d.clone()).map(|_| ());
                    let before = live_sessions(&n);
                    let r = n.set_rules(s.clone(), d.clone());
                    prop_assert_eq!(&r, &fresh);
                    if r.is_ok() {
                        for (i, old) in &before {
                            let stays = n.out_index.get(&old.out_key()) == Some(i);
                            prop_assert_eq!(stays, rules_keep(old, &s, &d, &n.cfg.ports), "{:?}", old);
                        }
                        // Whoever held an external address before may not now.
                        seen.clear();
                    } else {
                        prop_assert_eq!(live_sessions(&n).len(), before.len());
                    }
                }
                Change::Config(c) => {
                    let old = n.config().clone();
                    let before = n.sessions();
                    n.set_config(c.clone()).unwrap();
                    let ends_some = c.mapping != old.mapping
                        || (c.pooling == Pooling::Paired && old.pooling != Pooling::Paired)
                        || c.ports != old.ports
                        || (old.hairpinning && !c.hairpinning);
                    if !ends_some {
                        prop_assert_eq!(n.sessions(), before);
                    }
                    seen.clear();
                }
            }
            n.check_invariants();
        }
        n.handle_timeout(now + 3600 * S);
        n.check_invariants();
        prop_assert_eq!((n.sessions(), n.mappings()), (0, 0));
    }
}

/// The batch calls give exactly what one call after the other gives: answers, drop counts,
/// sessions and mappings, over a mix of established flows, new ones, misses, refusals
/// (table full, filtered, unknown destinations), hairpins, DNAT forwards and sessions that
/// expire between and within batches.
#[test]
fn batch_calls_answer_exactly_as_one_call_after_the_other() {
    let cfg = with(|c| {
        c.udp_ns = 3 * S;
        c.icmp_ns = 2 * S;
        c.tcp_transitory_ns = 4 * S;
        c.tcp_established_ns = 6 * S;
        c.max_sessions = 250;
        c.ports = 2000..=2600;
        c.filtering = Behaviour::AddressDependent;
    });
    let eips = ["198.51.100.1", "198.51.100.2"];
    let rules = || {
        (
            vec![snat("10.0.0.0/16", &eips)],
            vec![
                dnat("198.51.100.1:80", DnatProtocol::Tcp, "10.0.9.9:8080"),
                dnat("198.51.100.3:0", DnatProtocol::Any, "10.0.9.10:0"),
            ],
        )
    };
    let (s1, d1) = rules();
    let (s2, d2) = rules();
    let mut batched = Napt::new(cfg.clone(), s1, d1).unwrap();
    let mut single = Napt::new(cfg, s2, d2).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m
    };
    let mut now = T0;
    let mut answered = (0usize, 0usize);
    for round in 0..1500 {
        now += rnd(400_000_000);
        if rnd(20) == 0 {
            now += 4 * S; // most sessions expire
        }
        if rnd(10) == 0 {
            batched.handle_timeout(now);
            single.handle_timeout(now);
        }
        let len = 1 + rnd(80) as usize;
        let mut flows = Vec::with_capacity(len);
        for _ in 0..len {
            // A flow again a few places on: read ahead before the first made its session.
            if !flows.is_empty() && rnd(4) == 0 {
                let again = flows[flows.len() - 1 - rnd(flows.len().min(20) as u64) as usize];
                flows.push(again);
                continue;
            }
            let proto = match rnd(6) {
                0 => Proto::IcmpQuery,
                1 => Proto::Tcp(TcpFlags(rnd(256) as u8)),
                _ => Proto::Udp,
            };
            let host = SocketAddrV4::new(
                Ipv4Addr::new(10, 0, rnd(12) as u8, rnd(40) as u8),
                1000 + rnd(30) as u16,
            );
            let remote = match rnd(12) {
                0 => SocketAddrV4::new(v4(eips[rnd(2) as usize]), 2000 + rnd(600) as u16),
                1 => sa("198.51.100.3:53"),
                _ => SocketAddrV4::new(
                    Ipv4Addr::new(203, 0, 113, rnd(20) as u8),
                    40 + rnd(4) as u16,
                ),
            };
            flows.push((proto, host, remote));
        }
        if rnd(2) == 0 {
            let mut got = vec![Err(NaptDrop::NoSession); len];
            batched.outbound_batch(now, &flows, &mut got);
            for (f, g) in flows.iter().zip(&got) {
                assert_eq!(
                    *g,
                    single.outbound(now, f.0, f.1, f.2),
                    "round {round}: {f:?}"
                );
                answered.0 += g.is_ok() as usize;
            }
        } else {
            // The internet's side: replies to the remotes' flows, and strangers, to the
            // gateway's external addresses (mostly the ports in use) or elsewhere.
            let mut flows: Vec<_> = flows
                .iter()
                .map(|&(p, _, remote)| {
                    let ext = match rnd(10) {
                        0 => sa("192.0.2.1:9"),
                        1 => sa("198.51.100.1:80"),
                        2 => SocketAddrV4::new(v4("198.51.100.3"), rnd(3000) as u16),
                        _ => SocketAddrV4::new(v4(eips[rnd(2) as usize]), 2000 + rnd(600) as u16),
                    };
                    (p, remote, ext)
                })
                .collect();
            for i in 1..flows.len() {
                if rnd(4) == 0 {
                    flows[i] = flows[i - 1 - rnd(i.min(20) as u64) as usize];
                }
            }
            let mut got = vec![Err(NaptDrop::NoSession); len];
            batched.inbound_batch(now, &flows, &mut got);
            for (f, g) in flows.iter().zip(&got) {
                assert_eq!(
                    *g,
                    single.inbound(now, f.0, f.1, f.2),
                    "round {round}: {f:?}"
                );
                answered.1 += g.is_ok() as usize;
            }
        }
        assert_eq!(batched.drop_counts(), single.drop_counts(), "round {round}");
        assert_eq!(batched.sessions(), single.sessions());
        assert_eq!(batched.mappings(), single.mappings());
        if round % 100 == 0 {
            batched.check_invariants();
        }
    }
    // The mix exercised what it should.
    let drops = batched.drop_counts();
    for d in [
        NaptDrop::TableFull,
        NaptDrop::NoSession,
        NaptDrop::UnknownDestination,
    ] {
        assert!(drops[d.index()] > 0, "no {d:?}: {drops:?}");
    }
    assert!(answered.0 > 5_000 && answered.1 > 1_000, "{answered:?}");
}
