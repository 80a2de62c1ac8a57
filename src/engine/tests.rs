//! Byte-vector tests of every SPEC §2 rule. Every forwarded packet's checksums are checked
//! by etherparse, an independent implementation.

use super::*;
use crate::alg::{AlgAction, AlgPolicy, AlgProtocol, Field};
use crate::wire::build;
use crate::wire::checksum;

fn a(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

const T0: u64 = 1_000_000_000;

// The lab of these tests:
//   ENI 1  i-web eth0  10.0.1.10              NAT 198.51.100.1  (slot 1)
//   ENI 2  i-web eth1  10.0.1.20 .21 .22      NAT 198.51.100.10 -> .21 (slot 10), .11 -> .22 (slot 11)
//   ENI 3  i-ct  eth1  (10.0.1.30 replaced)   BINDED 198.51.100.30 (slot 30)
//   ENI 4  i-ct  eth0  10.0.1.40
//   ENI 5  i-multi eth1 10.0.1.50             MULTI_BINDED 198.51.100.50, .51 (slots 50, 51)
//   ENI 6  i-stopped eth0 10.0.1.60           NAT 198.51.100.60 (slot 60), instance Stopped
//   ENI 7  detached    10.0.1.70              NAT 198.51.100.70 (slot 70)
//   198.51.100.99 unassociated (slot 99); internet gateway 203.0.113.254
fn eni(id: EniId, inst: Option<(u32, bool)>, ips: &[&str]) -> EniConfig {
    EniConfig {
        id,
        instance: inst.map(|(id, running)| InstanceRef { id, running }),
        gateway: Some(a("10.0.1.253")),
        private_ips: ips.iter().map(|s| a(s)).collect(),
    }
}

fn eip(
    slot: EipSlot,
    addr: &str,
    mode: Option<(AssociationMode, EniId, Option<&str>)>,
) -> EipConfig {
    eip_with_bandwidth(slot, addr, mode, 1000)
}

fn eip_with_bandwidth(
    slot: EipSlot,
    addr: &str,
    mode: Option<(AssociationMode, EniId, Option<&str>)>,
    bandwidth_mbps: u32,
) -> EipConfig {
    EipConfig {
        slot,
        address: a(addr),
        bandwidth_mbps,
        association: mode.map(|(mode, eni, p)| EipAssociation {
            mode,
            eni,
            private_ip: p.map(a),
        }),
    }
}

fn builder() -> TableBuilder {
    builder_with_bandwidth(1000)
}

/// The lab above, every EIP of `mbps` Mbit/s.
fn builder_with_bandwidth(mbps: u32) -> TableBuilder {
    use AssociationMode::*;
    let eip = |slot, addr, mode| eip_with_bandwidth(slot, addr, mode, mbps);
    TableBuilder::new()
        .vpc_prefix(a("10.0.0.0"), 16)
        .internet_gateway(a("203.0.113.254"))
        .eni(eni(1, Some((1, true)), &["10.0.1.10"]))
        .eni(eni(
            2,
            Some((1, true)),
            &["10.0.1.20", "10.0.1.21", "10.0.1.22"],
        ))
        .eni(eni(3, Some((2, true)), &["10.0.1.30"]))
        .eni(eni(4, Some((2, true)), &["10.0.1.40"]))
        .eni(eni(5, Some((3, true)), &["10.0.1.50"]))
        .eni(eni(6, Some((4, false)), &["10.0.1.60"]))
        .eni(eni(7, None, &["10.0.1.70"]))
        .eip(eip(1, "198.51.100.1", Some((Nat, 1, None))))
        .eip(eip(10, "198.51.100.10", Some((Nat, 2, Some("10.0.1.21")))))
        .eip(eip(11, "198.51.100.11", Some((Nat, 2, Some("10.0.1.22")))))
        .eip(eip(30, "198.51.100.30", Some((Binded, 3, None))))
        .eip(eip(50, "198.51.100.50", Some((MultiBinded, 5, None))))
        .eip(eip(51, "198.51.100.51", Some((MultiBinded, 5, None))))
        .eip(eip(60, "198.51.100.60", Some((Nat, 6, None))))
        .eip(eip(70, "198.51.100.70", Some((Nat, 7, None))))
        .eip(eip(99, "198.51.100.99", None))
}

fn engine_with(b: TableBuilder) -> Engine {
    Engine::new(Arc::new(b.build().unwrap()))
}

fn engine() -> Engine {
    engine_with(builder())
}

/// Runs one packet with room for an ICMP answer; returns the verdict and the bytes after.
fn run(e: &mut Engine, side: Side, pkt: &[u8]) -> (Verdict, Vec<u8>) {
    run_flags(e, side, pkt, PacketFlags::default())
}

fn run_flags(e: &mut Engine, side: Side, pkt: &[u8], flags: PacketFlags) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; pkt.len().max(576) + 64];
    buf[..pkt.len()].copy_from_slice(pkt);
    let v = e.process(T0, side, &mut buf, pkt.len(), flags);
    let n = match v {
        Verdict::Reply { len, .. } => len,
        _ => pkt.len(),
    };
    buf.truncate(n);
    (v, buf)
}

/// The independent oracle: etherparse recomputes every checksum.
fn assert_valid(p: &[u8]) {
    let s = etherparse::SlicedPacket::from_ip(p).expect("parses");
    let Some(etherparse::NetSlice::Ipv4(ip)) = &s.net else {
        panic!("not IPv4")
    };
    let h = ip.header().to_header();
    assert_eq!(
        h.header_checksum,
        h.calc_header_checksum(),
        "IPv4 header checksum"
    );
    if h.is_fragmenting_payload() {
        return;
    }
    match s.transport {
        Some(etherparse::TransportSlice::Udp(u)) if u.checksum() != 0 => {
            let want = u.to_header().calc_checksum_ipv4(&h, u.payload()).unwrap();
            assert_eq!(u.checksum(), want, "UDP checksum");
        }
        Some(etherparse::TransportSlice::Tcp(t)) => {
            let want = t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap();
            assert_eq!(t.checksum(), want, "TCP checksum");
        }
        Some(etherparse::TransportSlice::Icmpv4(i)) => {
            assert!(checksum::verify(i.slice()), "ICMP checksum");
        }
        _ => {}
    }
}

fn src_of(p: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(p[12], p[13], p[14], p[15])
}

fn dst_of(p: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(p[16], p[17], p[18], p[19])
}

/// No verdict the engine gives: a packet still carrying it was not decided.
const UNDECIDED: Verdict = Verdict::Reply {
    to: Side::CloudServices,
    len: usize::MAX,
};

/// Runs `pkts` (side, bytes) through `e` as one batch at `now`; the verdicts (`UNDECIDED`
/// where the engine gave none) and bytes after.
fn run_batch_at(e: &mut Engine, now: u64, pkts: &[(Side, Vec<u8>)]) -> Vec<(Verdict, Vec<u8>)> {
    let mut bufs: Vec<PacketBuf> = pkts
        .iter()
        .map(|(side, p)| {
            let mut b = PacketBuf::with_capacity(p.len().max(576) + 64);
            b.set(p);
            b.ingress = *side;
            b.verdict = UNDECIDED;
            b
        })
        .collect();
    e.process_batch(now, &mut bufs);
    bufs.iter()
        .map(|b| (b.verdict, b.packet().to_vec()))
        .collect()
}

/// For the property tests: sets a packet's TTL (fixing its header checksum) unless it is
/// 64, the builders' own, then flips the bits `mask` of byte `at` (modulo the length), if any.
fn mangle(b: &mut [u8], ttl: u8, flip: Option<(usize, u8)>) {
    if ttl != 64 {
        b[8] = ttl;
        b[10] = 0;
        b[11] = 0;
        let c = checksum::checksum(&b[..20]);
        b[10..12].copy_from_slice(&c.to_be_bytes());
    }
    if let Some((at, mask)) = flip {
        let i = at % b.len();
        b[i] ^= mask;
    }
}

fn client() -> Ipv4Addr {
    a("203.0.113.7")
}

// ---- D1 / D2 -----------------------------------------------------------------------------------

#[test]
fn d1_nat_inbound_rewrites_eip_to_the_mapped_private_ip() {
    let mut e = engine();
    for pkt in [
        build::udp(client(), 40000, a("198.51.100.10"), 8080, b"hello"),
        build::tcp(client(), 40000, a("198.51.100.10"), 80, 0x02, b""),
        build::tcp(
            client(),
            40000,
            a("198.51.100.10"),
            80,
            0x18,
            b"GET / HTTP/1.1\r\n\r\n",
        ),
        build::ping(client(), a("198.51.100.10"), 9, 1, b"ping"),
    ] {
        let (v, out) = run(&mut e, Side::Internet, &pkt);
        assert_eq!(v, Verdict::Forward(Side::Eni(2)));
        assert_eq!(dst_of(&out), a("10.0.1.21"));
        assert_eq!(src_of(&out), client());
        assert_eq!(out[8], 63, "TTL decremented");
        assert_eq!(
            &out[20..],
            &pkt[20..]
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    // Only the L4 checksum may differ.
                    let proto = pkt[9];
                    let ck = match proto {
                        6 => 16..18,
                        17 => 6..8,
                        _ => 0..0,
                    };
                    if ck.contains(&i) {
                        out[20 + i]
                    } else {
                        *b
                    }
                })
                .collect::<Vec<_>>()[..]
        );
        assert_valid(&out);
    }
    let c = e.eip_counters(10);
    assert_eq!(c.to_guest.packets, 4);
    assert_eq!(e.eni_counters(2).to_guest.packets, 4);
}

#[test]
fn d1_eip_without_private_ip_maps_to_the_primary() {
    let mut e = engine();
    let (v, out) = run(
        &mut e,
        Side::Internet,
        &build::udp(client(), 1, a("198.51.100.1"), 2, b""),
    );
    assert_eq!(v, Verdict::Forward(Side::Eni(1)));
    assert_eq!(dst_of(&out), a("10.0.1.10"));
}

#[test]
fn d1_cut_through_and_multi_binded_deliver_the_eip_unchanged() {
    let mut e = engine();
    for (dst, eni) in [
        ("198.51.100.30", 3),
        ("198.51.100.50", 5),
        ("198.51.100.51", 5),
    ] {
        let pkt = build::udp(client(), 1234, a(dst), 5060, b"INVITE sip:x SIP/2.0\r\n");
        let (v, out) = run(&mut e, Side::Internet, &pkt);
        assert_eq!(v, Verdict::Forward(Side::Eni(eni)), "{dst}");
        assert_eq!(dst_of(&out), a(dst));
        assert_eq!(&out[20..], &pkt[20..], "L4 untouched");
        assert_valid(&out);
    }
}

#[test]
fn d2_nat_outbound_rewrites_private_ip_to_its_eip() {
    let mut e = engine();
    for (src, eni, eip) in [
        ("10.0.1.21", 2, "198.51.100.10"),
        ("10.0.1.22", 2, "198.51.100.11"),
        ("10.0.1.10", 1, "198.51.100.1"),
    ] {
        let pkt = build::tcp(a(src), 8080, client(), 40000, 0x12, b"");
        let (v, out) = run(&mut e, Side::Eni(eni), &pkt);
        assert_eq!(v, Verdict::Forward(Side::Internet));
        assert_eq!(src_of(&out), a(eip));
        assert_eq!(dst_of(&out), client());
        assert_valid(&out);
    }
    assert_eq!(e.eip_counters(10).from_guest.packets, 1);
    assert_eq!(e.eni_counters(2).from_guest.packets, 2);
}

#[test]
fn d2_cut_through_and_multi_binded_send_the_eip_unchanged() {
    let mut e = engine();
    for (src, eni) in [
        ("198.51.100.30", 3),
        ("198.51.100.50", 5),
        ("198.51.100.51", 5),
    ] {
        let pkt = build::udp(a(src), 5060, client(), 5060, b"SIP/2.0 200 OK\r\n");
        let (v, out) = run(&mut e, Side::Eni(eni), &pkt);
        assert_eq!(v, Verdict::Forward(Side::Internet), "{src}");
        assert_eq!(src_of(&out), a(src));
        assert_eq!(&out[20..], &pkt[20..]);
        assert_valid(&out);
    }
}

#[test]
fn d2_private_ip_without_eip_has_no_way_out() {
    let mut e = engine();
    for (src, eni) in [("10.0.1.20", 2), ("10.0.1.40", 4), ("10.0.1.50", 5)] {
        let (v, _) = run(
            &mut e,
            Side::Eni(eni),
            &build::udp(a(src), 1, client(), 2, b""),
        );
        assert_eq!(v, Verdict::Drop(DropReason::NoPublicIp), "{src}");
    }
    assert_eq!(e.eni_counters(4).drops[DropReason::NoPublicIp as usize], 1);
}

#[test]
fn udp_zero_checksum_stays_zero() {
    let mut e = engine();
    let mut pkt = build::udp(client(), 1, a("198.51.100.10"), 2, b"abc");
    pkt[26..28].copy_from_slice(&[0, 0]);
    let (v, out) = run(&mut e, Side::Internet, &pkt);
    assert_eq!(v, Verdict::Forward(Side::Eni(2)));
    assert_eq!(&out[26..28], &[0, 0]);
    assert_valid(&out);
}

#[test]
fn partial_checksum_is_updated_without_complement() {
    // A guest offloading its checksum leaves the pseudo-header sum, un-complemented.
    let mut e = engine();
    for proto in [6u8, 17] {
        let (src, dst) = (a("10.0.1.21"), client());
        let mut pkt = if proto == 6 {
            build::tcp(src, 80, dst, 40000, 0x18, &[1u8; 1000])
        } else {
            build::udp(src, 80, dst, 40000, &[1u8; 1000])
        };
        let at = if proto == 6 { 36 } else { 26 };
        let l4_len = (pkt.len() - 20) as u32;
        let partial = |s: Ipv4Addr, d: Ipv4Addr| {
            checksum::fold(checksum::pseudo_header(s.into(), d.into(), proto, l4_len))
        };
        pkt[at..at + 2].copy_from_slice(&partial(src, dst).to_be_bytes());
        let (v, out) = run_flags(
            &mut e,
            Side::Eni(2),
            &pkt,
            PacketFlags { csum_partial: true },
        );
        assert_eq!(v, Verdict::Forward(Side::Internet));
        let got = u16::from_be_bytes([out[at], out[at + 1]]);
        assert_eq!(got, partial(a("198.51.100.10"), dst));
    }
}

// ---- D3: ALG ------------------------------------------------------------------------------------

#[test]
fn d3_alg_protocols_are_dropped_under_nat_by_default() {
    let mut e = engine();
    let eip = a("198.51.100.10");
    let cases = [
        (
            build::udp(client(), 5060, eip, 5060, b"x"),
            DropReason::AlgSip,
        ),
        (
            build::tcp(client(), 40000, eip, 21, 0x02, b""),
            DropReason::AlgFtp,
        ),
        (
            build::tcp(client(), 40000, eip, 554, 0x02, b""),
            DropReason::AlgRtsp,
        ),
        (
            build::tcp(client(), 40000, eip, 1720, 0x02, b""),
            DropReason::AlgH323,
        ),
        (
            build::udp(client(), 40000, eip, 53, b"x"),
            DropReason::AlgDns,
        ),
        (
            build::udp(client(), 40000, eip, 69, b"x"),
            DropReason::AlgTftp,
        ),
        // A reply from an FTP server the guest dialled: the well-known port is the source.
        (
            build::tcp(client(), 21, eip, 40000, 0x12, b""),
            DropReason::AlgFtp,
        ),
    ];
    for (pkt, reason) in &cases {
        let before = pkt.clone();
        let mut buf = pkt.clone();
        buf.resize(600, 0);
        let v = e.process(
            T0,
            Side::Internet,
            &mut buf,
            pkt.len(),
            PacketFlags::default(),
        );
        assert_eq!(v, Verdict::Drop(*reason));
        assert_eq!(
            &buf[..pkt.len()],
            &before[..],
            "a dropped packet is not modified"
        );
    }
    // Outbound too.
    let (v, _) = run(
        &mut e,
        Side::Eni(2),
        &build::udp(a("10.0.1.21"), 5060, client(), 5060, b"x"),
    );
    assert_eq!(v, Verdict::Drop(DropReason::AlgSip));
    assert_eq!(e.eip_counters(10).drops[DropReason::AlgSip as usize], 2);
    assert_eq!(e.eni_counters(2).drops[DropReason::AlgFtp as usize], 2);
    assert_eq!(e.global_counters().drops[DropReason::AlgSip as usize], 2);
}

#[test]
fn d3_pass_forwards_with_payload_untouched() {
    let mut e = engine_with(
        builder().alg_policy(AlgPolicy::default().with(AlgProtocol::Sip, AlgAction::Pass)),
    );
    let body = b"INVITE sip:bob@198.51.100.10 SIP/2.0\r\nContact: <sip:alice@10.0.1.21>\r\n\r\n";
    let pkt = build::udp(a("10.0.1.21"), 5060, client(), 5060, body);
    let (v, out) = run(&mut e, Side::Eni(2), &pkt);
    assert_eq!(v, Verdict::Forward(Side::Internet));
    assert_eq!(
        &out[28..],
        &body[..],
        "the private address leaks: payload untouched"
    );
    assert_eq!(e.global_counters().alg_passed[AlgProtocol::Sip.index()], 1);
    // FTP still drops.
    let (v, _) = run(
        &mut e,
        Side::Internet,
        &build::tcp(client(), 1, a("198.51.100.10"), 21, 2, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::AlgFtp));
}

#[test]
fn d3_inspect_passes_and_reports_the_leak() {
    let mut e = engine_with(builder().alg_policy(AlgPolicy::all(AlgAction::Inspect)));
    let body = b"INVITE sip:bob@203.0.113.7 SIP/2.0\r\nContact: <sip:alice@10.0.1.21:5060>\r\n\r\n";
    let (v, _) = run(
        &mut e,
        Side::Eni(2),
        &build::udp(a("10.0.1.21"), 5060, client(), 5060, body),
    );
    assert_eq!(v, Verdict::Forward(Side::Internet));
    let r = e.poll_report().expect("a finding");
    assert_eq!(r.eip, a("198.51.100.10"));
    assert_eq!(r.private_ip, a("10.0.1.21"));
    assert!(!r.to_guest);
    assert_eq!(r.finding.protocol, AlgProtocol::Sip);
    assert_eq!(r.finding.address, [10, 0, 1, 21]);
    assert_eq!(e.global_counters().alg_flagged[AlgProtocol::Sip.index()], 1);
    // A clean SIP message passes without a report.
    let (v, _) = run(
        &mut e,
        Side::Eni(2),
        &build::udp(
            a("10.0.1.21"),
            5060,
            client(),
            5060,
            b"OPTIONS sip:x@203.0.113.7 SIP/2.0\r\n\r\n",
        ),
    );
    assert_eq!(v, Verdict::Forward(Side::Internet));
    assert!(e.poll_report().is_none());
}

#[test]
fn d3_inspect_reports_only_what_nat_made_wrong_for_the_way_the_packet_goes() {
    let mut e = engine_with(builder().alg_policy(AlgPolicy::all(AlgAction::Inspect)));
    // Going out: the EIP in From: is right (the far end put it there); the private address
    // in the SDP is the leak, though it comes later in the payload.
    let body = b"SIP/2.0 200 OK\r\nFrom: <sip:a@198.51.100.10>\r\nContent-Type: application/sdp\r\n\r\nv=0\r\nc=IN IP4 10.0.1.21\r\n";
    let (v, _) = run(
        &mut e,
        Side::Eni(2),
        &build::udp(a("10.0.1.21"), 5060, client(), 5060, body),
    );
    assert_eq!(v, Verdict::Forward(Side::Internet));
    let r = e.poll_report().expect("the SDP leak");
    assert_eq!(
        (r.finding.field, r.finding.address, r.to_guest),
        (Field::SipSdpConnection, [10, 0, 1, 21], false)
    );
    assert!(e.poll_report().is_none());
    // Going out with only the EIP in it: nothing wrong.
    let body = b"SIP/2.0 200 OK\r\nFrom: <sip:a@198.51.100.10>\r\n\r\n";
    let (v, _) = run(
        &mut e,
        Side::Eni(2),
        &build::udp(a("10.0.1.21"), 5060, client(), 5060, body),
    );
    assert_eq!(v, Verdict::Forward(Side::Internet));
    assert!(e.poll_report().is_none());
    // Coming in: the private address is what the guest holds, the EIP is what it does not.
    let to = |body: &[u8]| build::udp(client(), 5060, a("198.51.100.10"), 5060, body);
    let (v, _) = run(
        &mut e,
        Side::Internet,
        &to(b"INVITE sip:b@10.0.1.21 SIP/2.0\r\n\r\n"),
    );
    assert_eq!(v, Verdict::Forward(Side::Eni(2)));
    assert!(e.poll_report().is_none());
    let (v, _) = run(
        &mut e,
        Side::Internet,
        &to(b"INVITE sip:b@198.51.100.10 SIP/2.0\r\n\r\n"),
    );
    assert_eq!(v, Verdict::Forward(Side::Eni(2)));
    let r = e.poll_report().expect("the EIP seen inside");
    assert_eq!(
        (r.finding.field, r.finding.address, r.to_guest),
        (Field::SipRequestUri, [198, 51, 100, 10], true)
    );
}

#[test]
fn d3_cut_through_passes_every_protocol() {
    let mut e = engine();
    for port in [21u16, 53, 69, 554, 1720, 5060] {
        let (v, _) = run(
            &mut e,
            Side::Internet,
            &build::udp(client(), 1, a("198.51.100.30"), port, b"x"),
        );
        assert_eq!(v, Verdict::Forward(Side::Eni(3)), "port {port}");
        let (v, _) = run(
            &mut e,
            Side::Eni(5),
            &build::tcp(a("198.51.100.50"), port, client(), 1, 2, b""),
        );
        assert_eq!(v, Verdict::Forward(Side::Internet), "port {port}");
    }
}

// ---- D4 / D5 ------------------------------------------------------------------------------------

#[test]
fn d4_cloud_services_are_private_except_through_a_cut_through_eni() {
    let mut e = engine();
    let md = a("100.100.100.200");
    let (v, out) = run(
        &mut e,
        Side::Eni(1),
        &build::tcp(a("10.0.1.10"), 40000, md, 80, 2, b""),
    );
    assert_eq!(v, Verdict::Forward(Side::CloudServices));
    assert_eq!(src_of(&out), a("10.0.1.10"), "no translation");
    assert_valid(&out);
    let (v, _) = run(
        &mut e,
        Side::Eni(5),
        &build::tcp(a("10.0.1.50"), 40000, md, 80, 2, b""),
    );
    assert_eq!(v, Verdict::Forward(Side::CloudServices));
    let (v, _) = run(
        &mut e,
        Side::Eni(3),
        &build::tcp(a("198.51.100.30"), 40000, md, 80, 2, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::CutThroughBlackhole));
    let (v, _) = run(
        &mut e,
        Side::Eni(3),
        &build::udp(a("198.51.100.30"), 1, a("100.100.2.136"), 53, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::CutThroughBlackhole));
    assert_eq!(
        e.eip_counters(30).drops[DropReason::CutThroughBlackhole as usize],
        2
    );
    // And the answers come back by private address.
    let (v, _) = run(
        &mut e,
        Side::CloudServices,
        &build::tcp(md, 80, a("10.0.1.10"), 40000, 0x12, b""),
    );
    assert_eq!(v, Verdict::Forward(Side::Eni(1)));
    let (v, _) = run(
        &mut e,
        Side::CloudServices,
        &build::tcp(md, 80, a("198.51.100.30"), 40000, 0x12, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::CutThroughBlackhole));
}

#[test]
fn d5_vrouter_routes_private_traffic_but_not_through_cut_through() {
    let mut e = engine();
    let pkt = build::udp(a("10.0.1.10"), 1, a("10.0.1.40"), 2, b"hi");
    let (v, out) = run(&mut e, Side::Eni(1), &pkt);
    assert_eq!(v, Verdict::Forward(Side::Eni(4)));
    assert_eq!(
        (src_of(&out), dst_of(&out)),
        (a("10.0.1.10"), a("10.0.1.40"))
    );
    assert_valid(&out);
    let (v, _) = run(
        &mut e,
        Side::Eni(3),
        &build::udp(a("198.51.100.30"), 1, a("10.0.1.40"), 2, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::CutThroughPrivate));
    // The BINDED ENI's old private IP is gone.
    let (v, _) = run(
        &mut e,
        Side::Eni(1),
        &build::udp(a("10.0.1.10"), 1, a("10.0.1.30"), 2, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::VpcUnreachable));
    let (v, _) = run(
        &mut e,
        Side::Eni(1),
        &build::udp(a("10.0.1.10"), 1, a("10.0.9.9"), 2, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::VpcUnreachable));
    let (v, _) = run(
        &mut e,
        Side::Eni(1),
        &build::udp(a("10.0.1.10"), 1, a("10.0.1.60"), 2, b""),
    );
    assert_eq!(
        v,
        Verdict::Drop(DropReason::VpcUnreachable),
        "a stopped instance does not answer"
    );
    // From the internet, private addresses do not exist.
    let (v, _) = run(
        &mut e,
        Side::Internet,
        &build::udp(client(), 1, a("10.0.1.10"), 2, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::UnknownDestination));
}

// ---- D6 -------------------------------------------------------------------------------------------

#[test]
fn d6_source_check_drops_asymmetric_replies_and_spoofing() {
    let mut e = engine();
    // eth1's secondary IP answering out of eth0, as before the seeds' policy routes.
    let (v, _) = run(
        &mut e,
        Side::Eni(1),
        &build::tcp(a("10.0.1.21"), 80, client(), 40000, 0x12, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::SourceCheck));
    let (v, _) = run(
        &mut e,
        Side::Eni(1),
        &build::tcp(a("10.9.9.9"), 80, client(), 40000, 0x12, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::SourceCheck));
    // A NAT EIP is never the guest's own source.
    let (v, _) = run(
        &mut e,
        Side::Eni(2),
        &build::tcp(a("198.51.100.10"), 80, client(), 40000, 0x12, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::SourceCheck));
    assert_eq!(e.eni_counters(1).drops[DropReason::SourceCheck as usize], 2);
}

#[test]
fn d6_source_check_off_accepts_any_enis_address_of_the_same_instance() {
    let mut e = engine_with(builder().source_check(false));
    let (v, out) = run(
        &mut e,
        Side::Eni(1),
        &build::tcp(a("10.0.1.21"), 80, client(), 40000, 0x12, b""),
    );
    assert_eq!(v, Verdict::Forward(Side::Internet));
    assert_eq!(src_of(&out), a("198.51.100.10"));
    // Not another instance's address.
    let (v, _) = run(
        &mut e,
        Side::Eni(1),
        &build::tcp(a("10.0.1.40"), 80, client(), 40000, 0x12, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::SourceCheck));
}

// ---- D7 -------------------------------------------------------------------------------------------

#[test]
fn d7_unassociated_stopped_and_detached() {
    let mut e = engine();
    let (v, _) = run(
        &mut e,
        Side::Internet,
        &build::udp(client(), 1, a("198.51.100.99"), 2, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::EipUnassociated));
    assert_eq!(
        e.eip_counters(99).drops[DropReason::EipUnassociated as usize],
        1
    );
    let (v, _) = run(
        &mut e,
        Side::Internet,
        &build::udp(client(), 1, a("198.51.100.60"), 2, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::InstanceStopped));
    assert_eq!(
        e.eni_counters(6).drops[DropReason::InstanceStopped as usize],
        1
    );
    let (v, _) = run(
        &mut e,
        Side::Eni(6),
        &build::udp(a("10.0.1.60"), 1, client(), 2, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::InstanceStopped));
    let (v, _) = run(
        &mut e,
        Side::Internet,
        &build::udp(client(), 1, a("198.51.100.70"), 2, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::EniDetached));
    let (v, _) = run(
        &mut e,
        Side::Internet,
        &build::udp(client(), 1, a("198.51.100.200"), 2, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::UnknownDestination));
    let (v, _) = run(
        &mut e,
        Side::Eni(42),
        &build::udp(a("10.0.1.10"), 1, client(), 2, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::UnknownEni));
}

// ---- D8 -------------------------------------------------------------------------------------------

#[test]
fn d8_each_direction_is_policed_to_the_eip_bandwidth() {
    let mut e = engine_with(builder().eip(EipConfig {
        slot: 200,
        address: a("198.51.100.200"),
        bandwidth_mbps: 8, // 1 MB/s, burst 128 KiB
        association: Some(EipAssociation {
            mode: AssociationMode::Nat,
            eni: 2,
            private_ip: Some(a("10.0.1.20")),
        }),
    }));
    let inbound = build::udp(client(), 1, a("198.51.100.200"), 2, &[0u8; 1372]); // 1400 B
    let outbound = build::udp(a("10.0.1.20"), 2, client(), 1, &[0u8; 1372]);
    let mut buf = vec![0u8; 2000];
    let (mut ok_in, mut ok_out) = (0u64, 0u64);
    // Offer 3 MB/s each way for 2 s.
    for i in 0..(2 * 3_000_000 / 1400) {
        let now = T0 + i * 466_667;
        buf[..1400].copy_from_slice(&inbound);
        if e.process(now, Side::Internet, &mut buf, 1400, PacketFlags::default())
            == Verdict::Forward(Side::Eni(2))
        {
            ok_in += 1;
        }
        buf[..1400].copy_from_slice(&outbound);
        if e.process(now, Side::Eni(2), &mut buf, 1400, PacketFlags::default())
            == Verdict::Forward(Side::Internet)
        {
            ok_out += 1;
        }
    }
    let want = (2_000_000 + burst_bytes(8)) / 1400;
    for ok in [ok_in, ok_out] {
        assert!(
            ok.abs_diff(want) <= 2,
            "passed {ok} packets, expected about {want}"
        );
    }
    let c = e.eip_counters(200);
    assert_eq!(c.to_guest.packets, ok_in);
    assert_eq!(c.from_guest.packets, ok_out);
    assert!(c.drops[DropReason::BandwidthExceeded as usize] > 0);
}

// ---- ICMP errors ---------------------------------------------------------------------------------

#[test]
fn icmp_error_from_the_internet_is_translated_inside_and_out() {
    let mut e = engine();
    // What the guest sent, as it left the gateway (src = EIP).
    let sent = build::udp(a("198.51.100.10"), 5000, client(), 33434, b"probe");
    let err = build::icmp(client(), a("198.51.100.10"), 3, 3, 0, &sent[..28 + 5]);
    let (v, out) = run(&mut e, Side::Internet, &err);
    assert_eq!(v, Verdict::Forward(Side::Eni(2)));
    assert_eq!(dst_of(&out), a("10.0.1.21"));
    let quote = &out[28..];
    assert_eq!(src_of(quote), a("10.0.1.21"), "quoted source translated");
    assert!(checksum::verify(&quote[..20]), "quoted header checksum");
    // The quoted UDP checksum matches the guest's original packet.
    let orig = build::udp(a("10.0.1.21"), 5000, client(), 33434, b"probe");
    assert_eq!(&quote[26..28], &orig[26..28]);
    assert_valid(&out);
}

#[test]
fn icmp_error_from_the_guest_is_translated_inside_and_out() {
    let mut e = engine();
    // The guest answers an inbound TCP SYN (as it reached it) with port unreachable.
    let got = build::tcp(client(), 40000, a("10.0.1.21"), 9, 2, b"");
    let err = build::icmp(a("10.0.1.21"), client(), 3, 3, 0, &got);
    let (v, out) = run(&mut e, Side::Eni(2), &err);
    assert_eq!(v, Verdict::Forward(Side::Internet));
    assert_eq!(src_of(&out), a("198.51.100.10"));
    let quote = &out[28..];
    assert_eq!(dst_of(quote), a("198.51.100.10"));
    let as_sent = build::tcp(client(), 40000, a("198.51.100.10"), 9, 2, b"");
    assert_eq!(quote, &as_sent[..], "the quote is what the client sent");
    assert_valid(&out);
}

#[test]
fn icmp_error_with_unreadable_quote_is_dropped() {
    let mut e = engine();
    for quote in [&[0x45u8, 0, 0][..], &[0x65; 28][..], &[0x43; 28][..]] {
        let err = build::icmp(client(), a("198.51.100.10"), 3, 1, 0, quote);
        let (v, _) = run(&mut e, Side::Internet, &err);
        assert_eq!(v, Verdict::Drop(DropReason::BadIcmpQuote));
    }
}

// ---- TTL -------------------------------------------------------------------------------------------

#[test]
fn ttl_expiry_is_answered_from_the_gateway_of_that_side() {
    let mut e = engine();
    let mut pkt = build::udp(a("10.0.1.21"), 5000, client(), 33434, b"trace");
    pkt[8] = 1;
    let mut ip = Ipv4Packet::new_checked(&mut pkt[..]).unwrap();
    ip.fill_checksum();
    let (v, out) = run(&mut e, Side::Eni(2), &pkt);
    assert_eq!(
        v,
        Verdict::Reply {
            to: Side::Eni(2),
            len: 28 + pkt.len()
        }
    );
    assert_eq!(src_of(&out), a("10.0.1.253"));
    assert_eq!(dst_of(&out), a("10.0.1.21"));
    assert_eq!(out[20], 11);
    assert_eq!(
        &out[28..],
        &pkt[..],
        "quotes the packet as the guest sent it"
    );
    assert_valid(&out);
    assert_eq!(e.eni_counters(2).drops[DropReason::TtlExceeded as usize], 1);
    assert_eq!(e.global_counters().icmp_errors_sent, 1);
    assert_eq!(
        e.global_counters().replied.packets,
        0,
        "the expired packet is a drop"
    );

    let mut pkt = build::udp(client(), 5000, a("198.51.100.10"), 33434, b"trace");
    pkt[8] = 0;
    Ipv4Packet::new_checked(&mut pkt[..])
        .unwrap()
        .fill_checksum();
    let (v, out) = run(&mut e, Side::Internet, &pkt);
    assert!(matches!(
        v,
        Verdict::Reply {
            to: Side::Internet,
            ..
        }
    ));
    assert_eq!(src_of(&out), a("203.0.113.254"));
    assert_eq!(dst_of(&out), client());

    // Never an error about an error.
    let mut err = build::icmp(
        client(),
        a("198.51.100.10"),
        3,
        3,
        0,
        &build::udp(a("198.51.100.10"), 1, client(), 2, b"")[..28],
    );
    err[8] = 1;
    Ipv4Packet::new_checked(&mut err[..])
        .unwrap()
        .fill_checksum();
    let (v, _) = run(&mut e, Side::Internet, &err);
    assert_eq!(v, Verdict::Drop(DropReason::TtlExceeded));
}

#[test]
fn the_gateway_answers_pings_to_itself() {
    let mut e = engine();
    let (v, out) = run(
        &mut e,
        Side::Eni(1),
        &build::ping(a("10.0.1.10"), a("10.0.1.253"), 7, 3, b"abc"),
    );
    assert!(matches!(
        v,
        Verdict::Reply {
            to: Side::Eni(1),
            ..
        }
    ));
    assert_eq!(
        (src_of(&out), dst_of(&out)),
        (a("10.0.1.253"), a("10.0.1.10"))
    );
    assert_eq!(out[20], 0, "echo reply");
    assert_valid(&out);
    let (v, out) = run(
        &mut e,
        Side::Internet,
        &build::ping(client(), a("203.0.113.254"), 7, 3, b"abc"),
    );
    assert!(matches!(
        v,
        Verdict::Reply {
            to: Side::Internet,
            ..
        }
    ));
    assert_eq!(dst_of(&out), client());
    assert_valid(&out);
    let (v, _) = run(
        &mut e,
        Side::Eni(1),
        &build::udp(a("10.0.1.10"), 1, a("10.0.1.253"), 2, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::VpcUnreachable));
}

// ---- hairpin --------------------------------------------------------------------------------------

#[test]
fn hairpin_goes_out_through_its_own_eip_and_back_in() {
    let mut e = engine();
    let pkt = build::tcp(a("10.0.1.10"), 40000, a("198.51.100.10"), 80, 2, b"");
    let (v, out) = run(&mut e, Side::Eni(1), &pkt);
    assert_eq!(v, Verdict::Forward(Side::Eni(2)));
    assert_eq!(
        src_of(&out),
        a("198.51.100.1"),
        "the peer sees the sender's EIP"
    );
    assert_eq!(dst_of(&out), a("10.0.1.21"));
    assert_valid(&out);
    assert_eq!(e.eip_counters(1).from_guest.packets, 1);
    assert_eq!(e.eip_counters(10).to_guest.packets, 1);
    assert_eq!(e.global_counters().hairpin, 1);
    // A guest reaching its own EIP.
    let (v, out) = run(
        &mut e,
        Side::Eni(2),
        &build::tcp(a("10.0.1.21"), 40000, a("198.51.100.10"), 80, 2, b""),
    );
    assert_eq!(v, Verdict::Forward(Side::Eni(2)));
    assert_eq!(
        (src_of(&out), dst_of(&out)),
        (a("198.51.100.10"), a("10.0.1.21"))
    );
    // Cut-through to NAT, and to an unassociated EIP.
    let (v, out) = run(
        &mut e,
        Side::Eni(3),
        &build::udp(a("198.51.100.30"), 1, a("198.51.100.11"), 2, b""),
    );
    assert_eq!(v, Verdict::Forward(Side::Eni(2)));
    assert_eq!(
        (src_of(&out), dst_of(&out)),
        (a("198.51.100.30"), a("10.0.1.22"))
    );
    let (v, _) = run(
        &mut e,
        Side::Eni(1),
        &build::udp(a("10.0.1.10"), 1, a("198.51.100.99"), 2, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::EipUnassociated));
    // ALG rules apply on the way back in.
    let (v, _) = run(
        &mut e,
        Side::Eni(3),
        &build::udp(a("198.51.100.30"), 1, a("198.51.100.11"), 5060, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::AlgSip));
}

// ---- fragments -------------------------------------------------------------------------------------

fn frags_to(dst: Ipv4Addr, port: u16) -> (Vec<u8>, Vec<Vec<u8>>) {
    let dgram = build::udp(client(), 40000, dst, port, &[0x5a; 3000]);
    let f = build::fragment(&dgram, 1200);
    assert_eq!(f.len(), 3);
    (dgram, f)
}

#[test]
fn fragments_in_order_are_translated() {
    let mut e = engine();
    let (_, fs) = frags_to(a("198.51.100.10"), 9000);
    for f in &fs {
        let (v, out) = run(&mut e, Side::Internet, f);
        assert_eq!(v, Verdict::Forward(Side::Eni(2)));
        assert_eq!(dst_of(&out), a("10.0.1.21"));
        assert_valid(&out);
    }
}

#[test]
fn fragments_before_their_first_are_held_then_released() {
    let mut e = engine();
    let (_, fs) = frags_to(a("198.51.100.10"), 9000);
    assert_eq!(run(&mut e, Side::Internet, &fs[2]).0, Verdict::Held);
    assert_eq!(run(&mut e, Side::Internet, &fs[1]).0, Verdict::Held);
    assert_eq!(e.global_counters().held, 2);
    let (v, first) = run(&mut e, Side::Internet, &fs[0]);
    assert_eq!(v, Verdict::Forward(Side::Eni(2)));
    let mut forwarded = vec![first];
    let mut buf = vec![0u8; 2000];
    while let Some((n, v)) = e.poll_released(T0, &mut buf) {
        assert_eq!(v, Verdict::Forward(Side::Eni(2)));
        forwarded.push(buf[..n].to_vec());
    }
    assert_eq!(forwarded.len(), 3);
    // Reassembled, the datagram is the client's, translated, with a valid UDP checksum.
    forwarded.sort_by_key(|f| u16::from_be_bytes([f[6], f[7]]) & 0x1fff);
    let mut data = Vec::new();
    for f in &forwarded {
        data.extend_from_slice(&f[20..]);
    }
    let whole = build::udp(client(), 40000, a("10.0.1.21"), 9000, &[0x5a; 3000]);
    assert_eq!(&data[..], &whole[20..]);
    let g = e.global_counters();
    assert_eq!(g.held, 0, "all released");
    assert_eq!(g.received.packets, 3);
    assert_eq!(g.forwarded.packets, 3);
}

#[test]
fn the_first_fragments_alg_decision_binds_every_fragment_in_any_order() {
    let orders: [[usize; 3]; 3] = [[0, 1, 2], [2, 0, 1], [1, 2, 0]];
    for order in orders {
        let mut e = engine();
        let (_, fs) = frags_to(a("198.51.100.10"), 5060);
        let mut dropped = 0;
        for &i in &order {
            match run(&mut e, Side::Internet, &fs[i]).0 {
                Verdict::Drop(DropReason::AlgSip) => dropped += 1,
                Verdict::Held => {}
                v => panic!("order {order:?}: fragment {i} got {v:?}"),
            }
        }
        let mut buf = vec![0u8; 2000];
        assert!(e.poll_released(T0, &mut buf).is_none());
        assert_eq!(
            e.global_counters().drops[DropReason::AlgSip as usize],
            3,
            "{order:?}"
        );
        assert!(dropped >= 1);
    }
}

#[test]
fn held_fragments_time_out_and_the_table_is_bounded() {
    let mut e = Engine::with_config(
        Arc::new(builder().build().unwrap()),
        EngineConfig {
            frag_capacity: 2,
            frag_timeout_ns: 1_000_000_000,
            ..EngineConfig::default()
        },
    );
    let mk = |id: u16| {
        let (_, fs) = frags_to(a("198.51.100.10"), 9000);
        let mut f = fs[1].clone();
        f[4..6].copy_from_slice(&id.to_be_bytes());
        Ipv4Packet::new_checked(&mut f[..]).unwrap().fill_checksum();
        f
    };
    assert_eq!(run(&mut e, Side::Internet, &mk(1)).0, Verdict::Held);
    assert_eq!(run(&mut e, Side::Internet, &mk(2)).0, Verdict::Held);
    assert_eq!(
        run(&mut e, Side::Internet, &mk(3)).0,
        Verdict::Drop(DropReason::FragmentTableFull)
    );
    assert_eq!(e.poll_timeout(), Some(T0 + 1_000_000_000));
    e.handle_timeout(T0 + 1_000_000_000);
    assert_eq!(
        e.global_counters().drops[DropReason::FragmentTimeout as usize],
        2
    );
    assert_eq!(e.poll_timeout(), None);
}

#[test]
fn fragments_through_cut_through_need_no_table() {
    let mut e = engine();
    let (_, fs) = frags_to(a("198.51.100.30"), 5060);
    for f in fs.iter().rev() {
        let (v, out) = run(&mut e, Side::Internet, f);
        assert_eq!(v, Verdict::Forward(Side::Eni(3)));
        assert_valid(&out);
    }
}

#[test]
fn a_first_fragment_too_short_for_its_transport_header_is_dropped() {
    let mut e = engine();
    let dgram = build::tcp(client(), 1, a("198.51.100.10"), 80, 2, &[0; 100]);
    let fs = build::fragment(&dgram, 8);
    assert_eq!(
        run(&mut e, Side::Internet, &fs[0]).0,
        Verdict::Drop(DropReason::TruncatedL4)
    );
}

// ---- other protocols, IPv6, malformed ----------------------------------------------------------

#[test]
fn other_protocols_follow_their_explicit_rule() {
    let gre = build::ipv4(
        client(),
        a("198.51.100.10"),
        47,
        &[0, 0, 0x08, 0, 1, 2, 3, 4],
    );
    let mut e = engine();
    let (v, out) = run(&mut e, Side::Internet, &gre);
    assert_eq!(v, Verdict::Forward(Side::Eni(2)));
    assert_eq!(dst_of(&out), a("10.0.1.21"));
    assert_valid(&out);
    assert_eq!(e.global_counters().other_protocol, 1);
    let mut e = engine_with(builder().other_protocols(OtherProtocols::Drop));
    assert_eq!(
        run(&mut e, Side::Internet, &gre).0,
        Verdict::Drop(DropReason::UnsupportedProtocol)
    );
}

#[test]
fn ipv6_is_dropped_by_its_own_rule() {
    let mut e = engine();
    let mut v6 = vec![0u8; 48];
    v6[0] = 0x60;
    v6[4..6].copy_from_slice(&8u16.to_be_bytes());
    v6[6] = 17;
    assert_eq!(
        run(&mut e, Side::Internet, &v6).0,
        Verdict::Drop(DropReason::Ipv6)
    );
    assert_eq!(
        run(&mut e, Side::Eni(1), &v6[..10]).0,
        Verdict::Drop(DropReason::Ipv6)
    );
    assert_eq!(e.eni_counters(1).drops[DropReason::Ipv6 as usize], 1);
}

#[test]
fn malformed_packets_are_dropped_with_their_reason() {
    let mut e = engine();
    let good = build::tcp(client(), 1, a("198.51.100.10"), 80, 2, b"data");
    let fix = |mut p: Vec<u8>| {
        p[10..12].copy_from_slice(&[0, 0]);
        let hl = ((p[0] & 15) as usize * 4).min(p.len());
        let c = checksum::checksum(&p[..hl]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    };
    let mut cases: Vec<(Vec<u8>, DropReason)> = vec![
        (vec![], DropReason::Truncated),
        (good[..19].to_vec(), DropReason::Truncated),
        (good[..good.len() - 1].to_vec(), DropReason::Truncated),
    ];
    let mut p = good.clone();
    p[0] = 0x44;
    cases.push((p, DropReason::BadHeaderLen));
    let mut p = good.clone();
    p[0] = 0x35;
    cases.push((p, DropReason::BadVersion));
    let mut p = good.clone();
    p[2..4].copy_from_slice(&10u16.to_be_bytes());
    cases.push((fix(p), DropReason::BadTotalLen));
    let mut p = good.clone();
    p[10] ^= 0xff;
    cases.push((p, DropReason::BadHeaderChecksum));
    let mut p = good.clone();
    p[32] = 0x20; // TCP data offset 8 words > segment
    cases.push((p, DropReason::BadL4Header));
    let mut p = good[..30].to_vec();
    p[2..4].copy_from_slice(&30u16.to_be_bytes());
    cases.push((fix(p), DropReason::TruncatedL4));
    let mut p = good.clone();
    p[12] = 127;
    cases.push((fix(p), DropReason::Martian));
    let mut p = good.clone();
    p[16..20].copy_from_slice(&[255, 255, 255, 255]);
    cases.push((fix(p), DropReason::Martian));
    for (p, want) in cases {
        let mut buf = p.clone();
        buf.resize(p.len() + 600, 0);
        let v = e.process(
            T0,
            Side::Internet,
            &mut buf,
            p.len(),
            PacketFlags::default(),
        );
        assert_eq!(v, Verdict::Drop(want), "{p:02x?}");
        assert!(want.is_malformed() || want == DropReason::Truncated);
    }
    // `len` beyond the buffer is the caller's mistake, not a panic.
    let mut small = good.clone();
    assert_eq!(
        e.process(
            T0,
            Side::Internet,
            &mut small,
            good.len() + 1,
            PacketFlags::default()
        ),
        Verdict::Drop(DropReason::Truncated)
    );
}

#[test]
fn padding_after_the_ip_total_length_is_ignored() {
    let mut e = engine();
    let mut p = build::udp(client(), 1, a("198.51.100.10"), 2, b"abc");
    let n = p.len();
    p.extend_from_slice(&[0xee; 10]);
    let (v, out) = run(&mut e, Side::Internet, &p);
    assert_eq!(v, Verdict::Forward(Side::Eni(2)));
    assert_valid(&out[..n]);
}

// ---- live tables, counters, batches ---------------------------------------------------------

#[test]
fn a_new_table_takes_effect_at_once_and_counters_carry_over() {
    let mut e = engine();
    let pkt = build::udp(client(), 1, a("198.51.100.99"), 2, b"x");
    assert_eq!(
        run(&mut e, Side::Internet, &pkt).0,
        Verdict::Drop(DropReason::EipUnassociated)
    );
    // Associate 198.51.100.99 with 10.0.1.20: slot 99 keeps its counters.
    let t = {
        use AssociationMode::*;
        TableBuilder::new()
            .vpc_prefix(a("10.0.0.0"), 16)
            .eni(eni(
                2,
                Some((1, true)),
                &["10.0.1.20", "10.0.1.21", "10.0.1.22"],
            ))
            .eip(eip(10, "198.51.100.10", Some((Nat, 2, Some("10.0.1.21")))))
            .eip(eip(99, "198.51.100.99", Some((Nat, 2, Some("10.0.1.20")))))
            .build()
            .unwrap()
    };
    e.set_table(Arc::new(t));
    let (v, out) = run(&mut e, Side::Internet, &pkt);
    assert_eq!(v, Verdict::Forward(Side::Eni(2)));
    assert_eq!(dst_of(&out), a("10.0.1.20"));
    let c = e.eip_counters(99);
    assert_eq!(
        c.drops[DropReason::EipUnassociated as usize],
        1,
        "kept across tables"
    );
    assert_eq!(c.to_guest.packets, 1);
    // Unassociate again: traffic stops.
    e.set_table(Arc::new(builder().build().unwrap()));
    assert_eq!(
        run(&mut e, Side::Internet, &pkt).0,
        Verdict::Drop(DropReason::EipUnassociated)
    );
}

#[test]
fn a_slot_reused_for_another_address_starts_from_zero() {
    let mut e = engine();
    let _ = run(
        &mut e,
        Side::Internet,
        &build::udp(client(), 1, a("198.51.100.10"), 2, b""),
    );
    assert_eq!(e.eip_counters(10).to_guest.packets, 1);
    let t = TableBuilder::new()
        .eni(eni(2, Some((1, true)), &["10.0.1.21"]))
        .eip(eip(
            10,
            "198.51.100.77",
            Some((AssociationMode::Nat, 2, None)),
        ))
        .build()
        .unwrap();
    e.set_table(Arc::new(t));
    assert_eq!(e.eip_counters(10).to_guest.packets, 0);
}

#[test]
fn batch_gives_the_same_verdicts_and_bytes_as_single_calls() {
    let pkts = [
        build::udp(client(), 1, a("198.51.100.10"), 2, b"a"),
        build::udp(client(), 1, a("198.51.100.99"), 2, b"b"),
        build::udp(client(), 1, a("198.51.100.30"), 2, b"c"),
        build::udp(client(), 1, a("198.51.100.10"), 5060, b"d"),
        vec![0x45, 0, 0],
    ];
    let mut single = engine();
    let mut batched = engine();
    let mut bufs: Vec<PacketBuf> = pkts
        .iter()
        .map(|p| {
            let mut b = PacketBuf::with_capacity(1500);
            b.set(p);
            b.ingress = Side::Internet;
            b
        })
        .collect();
    batched.process_batch(T0, &mut bufs);
    for (p, b) in pkts.iter().zip(&bufs) {
        let (v, out) = run(&mut single, Side::Internet, p);
        assert_eq!(v, b.verdict);
        assert_eq!(&out[..], b.packet());
    }
    assert_eq!(single.global_counters(), batched.global_counters());
}

#[test]
fn every_packet_is_accounted_for() {
    let mut e = engine();
    let pkts = [
        build::udp(client(), 1, a("198.51.100.10"), 2, b"a"),
        build::udp(client(), 1, a("198.51.100.99"), 2, b"b"),
        build::ping(client(), a("203.0.113.254"), 1, 1, b""),
        vec![1, 2, 3],
    ];
    for p in &pkts {
        let _ = run(&mut e, Side::Internet, p);
    }
    let g = e.global_counters();
    assert_eq!(g.received.packets, 4);
    assert_eq!(
        g.forwarded.packets + g.replied.packets + g.held + g.total_drops(),
        4
    );
}

#[test]
fn the_prefetching_pipeline_of_large_tables_changes_no_verdict() {
    // 20,000 NAT EIPs: records of 2 × 4 MiB, past the size where batches prefetch.
    let mut b = TableBuilder::new().vpc_prefix(a("10.0.0.0"), 8);
    for e in 0..400u16 {
        let ips: Vec<Ipv4Addr> = (0..50u32)
            .map(|j| Ipv4Addr::from(0x0a00_0000 + (e as u32) * 64 + j + 1))
            .collect();
        for (j, ip) in ips.iter().enumerate() {
            let slot = e as u32 * 50 + j as u32;
            b = b.eip(EipConfig {
                slot,
                address: Ipv4Addr::from(0xc612_0000 + slot),
                bandwidth_mbps: 0,
                association: Some(EipAssociation {
                    mode: AssociationMode::Nat,
                    eni: e + 1,
                    private_ip: Some(*ip),
                }),
            });
        }
        b = b.eni(EniConfig {
            id: e + 1,
            instance: Some(InstanceRef {
                id: e as u32,
                running: true,
            }),
            gateway: None,
            private_ips: ips,
        });
    }
    let table = Arc::new(b.build().unwrap());
    assert!(Engine::new(table.clone()).st.large);
    let pkts: Vec<(Side, Vec<u8>)> = (0..300u32)
        .map(|i| match i % 5 {
            0 => build::udp(client(), 1, Ipv4Addr::from(0xc612_0000 + i * 61), 2, b"x"),
            1 => build::tcp(
                client(),
                1,
                Ipv4Addr::from(0xc612_0000 + i * 13),
                80,
                2,
                b"",
            ),
            2 => build::udp(
                client(),
                1,
                Ipv4Addr::from(0xc612_0000 + 30_000 + i),
                2,
                b"",
            ),
            3 => build::udp(client(), 1, Ipv4Addr::from(0xc612_0000 + i), 5060, b""),
            _ => vec![0x45, 0, 0, 20],
        })
        .map(|p| (Side::Internet, p))
        // Guests of many ENIs in the same batch: to the internet, and from a source their
        // ENI does not own.
        .chain((0..200u32).map(|i| {
            let e = (i * 7) % 400;
            let own = Ipv4Addr::from(0x0a00_0000 + e * 64 + (i % 50) + 1);
            let other = Ipv4Addr::from(0x0a00_0000 + ((e + 1) % 400) * 64 + 1);
            let src = if i % 4 == 3 { other } else { own };
            (
                Side::Eni(e as u16 + 1),
                build::udp(src, 7, client(), 9, b"out"),
            )
        }))
        .collect();
    let mut single = Engine::new(table.clone());
    // The batched engine keeps its records in memory of its own (as the shell's huge pages).
    let memory = Arc::new(CountedMemory::default());
    let mut batched = Engine::with_memory(
        table.clone(),
        EngineConfig::default(),
        Some(memory.clone() as Arc<dyn RecordMemory>),
    );
    assert_eq!(memory.live(), 2, "inbound and outbound records");
    batched.set_table(table.clone());
    assert_eq!(
        memory.live(),
        2,
        "a new table's records replace the old ones"
    );
    let mut bufs: Vec<PacketBuf> = pkts
        .iter()
        .map(|(side, p)| {
            let mut b = PacketBuf::with_capacity(1500);
            b.set(p);
            b.ingress = *side;
            b
        })
        .collect();
    batched.process_batch(T0, &mut bufs);
    let mut forwarded = 0;
    for ((side, p), b) in pkts.iter().zip(&bufs) {
        let (v, out) = run(&mut single, *side, p);
        assert_eq!(v, b.verdict);
        assert_eq!(&out[..], b.packet());
        forwarded += matches!(v, Verdict::Forward(_)) as usize;
    }
    assert_eq!(forwarded, 120 + 150);
    for slot in 0..20_000 {
        assert_eq!(single.eip_counters(slot), batched.eip_counters(slot));
    }
    assert_eq!(single.all_eni_counters(), batched.all_eni_counters());
    assert_eq!(
        batched.all_eni_counters()[1..]
            .iter()
            .map(|c| c.from_guest.packets + c.drops[DropReason::SourceCheck as usize])
            .sum::<u64>(),
        200
    );
    assert_eq!(single.global_counters(), batched.global_counters());
    drop(batched);
    assert_eq!(memory.live(), 0, "an engine gives its records back");
}

/// Record memory from the global allocator that counts what is out.
#[derive(Debug, Default)]
struct CountedMemory {
    out: std::sync::atomic::AtomicUsize,
}

impl CountedMemory {
    fn live(&self) -> usize {
        self.out.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl RecordMemory for CountedMemory {
    fn allocate(&self, bytes: usize) -> Option<core::ptr::NonNull<u8>> {
        let layout = std::alloc::Layout::from_size_align(bytes, 64).ok()?;
        // SAFETY: the layout has a non-zero size (records tables have at least 16 slots).
        let p = core::ptr::NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
        self.out.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some(p)
    }

    unsafe fn release(&self, p: core::ptr::NonNull<u8>, bytes: usize) {
        let layout = std::alloc::Layout::from_size_align(bytes, 64).unwrap();
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(p.as_ptr(), layout) };
        self.out.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn tables_published_while_traffic_flows_are_taken_whole_between_batches() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    // Two tables that differ in every EIP: all associated, or all unassociated.
    let tables = |associated: bool| {
        let mut b = TableBuilder::new().eni(eni(
            1,
            Some((1, true)),
            &["10.0.1.10", "10.0.1.11", "10.0.1.12", "10.0.1.13"],
        ));
        for i in 0..4u32 {
            b = b.eip(EipConfig {
                slot: i,
                address: Ipv4Addr::from(u32::from(a("198.51.100.10")) + i),
                bandwidth_mbps: 0,
                association: associated.then(|| EipAssociation {
                    mode: AssociationMode::Nat,
                    eni: 1,
                    private_ip: Some(Ipv4Addr::from(u32::from(a("10.0.1.10")) + i)),
                }),
            });
        }
        b.build().unwrap()
    };
    let cell = Arc::new(TableCell::new(tables(true)));
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let worker = {
        let (cell, stop, progress) = (cell.clone(), stop.clone(), progress.clone());
        std::thread::spawn(move || {
            let mut e = Engine::new(cell.load().1);
            let pkts: Vec<Vec<u8>> = (0..64u32)
                .map(|i| {
                    build::udp(
                        client(),
                        1,
                        Ipv4Addr::from(u32::from(a("198.51.100.10")) + i % 4),
                        2,
                        b"x",
                    )
                })
                .collect();
            let mut bufs: Vec<PacketBuf> =
                pkts.iter().map(|_| PacketBuf::with_capacity(600)).collect();
            let (mut batches, mut changes, mut seen) = (0u64, 0u64, [false; 2]);
            while !stop.load(Ordering::Relaxed) || batches < 100 {
                changes += e.refresh(&cell) as u64;
                for (b, p) in bufs.iter_mut().zip(&pkts) {
                    b.set(p);
                    b.ingress = Side::Internet;
                }
                e.process_batch(T0 + batches, &mut bufs);
                // One batch, one table: every verdict the same.
                let first = bufs[0].verdict;
                assert!(
                    bufs.iter().all(|b| b.verdict == first),
                    "a batch saw two tables"
                );
                match first {
                    Verdict::Forward(Side::Eni(1)) => seen[0] = true,
                    Verdict::Drop(DropReason::EipUnassociated) => seen[1] = true,
                    v => panic!("unexpected {v:?}"),
                }
                batches += 1;
                progress.store(batches, Ordering::Release);
            }
            (batches, changes, seen)
        })
    };
    // Publish while the worker runs, each time letting it process a couple of batches (a
    // bounded wait, so a stuck worker fails the test instead of hanging it).
    for i in 0..50 {
        cell.publish(tables(i % 2 == 1));
        let (start, t0) = (progress.load(Ordering::Acquire), std::time::Instant::now());
        while progress.load(Ordering::Acquire) < start + 2 {
            assert!(t0.elapsed().as_secs() < 10, "the worker stopped");
            std::thread::yield_now();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (batches, changes, seen) = worker.join().unwrap();
    assert!(
        changes >= 50,
        "the worker took {changes} tables in {batches} batches"
    );
    assert_eq!(seen, [true, true]);
}

#[test]
fn fragments_held_under_one_table_are_released_when_a_new_one_needs_no_decision() {
    let mut e = engine();
    let (_, fs) = frags_to(a("198.51.100.10"), 9000);
    assert_eq!(run(&mut e, Side::Internet, &fs[2]).0, Verdict::Held);
    // The ALG policy becomes all-pass: the first fragment is no longer classified.
    e.set_table(Arc::new(
        builder()
            .alg_policy(AlgPolicy::all(AlgAction::Pass))
            .build()
            .unwrap(),
    ));
    assert_eq!(
        run(&mut e, Side::Internet, &fs[0]).0,
        Verdict::Forward(Side::Eni(2))
    );
    let mut buf = vec![0u8; 2000];
    let (_, v) = e
        .poll_released(T0, &mut buf)
        .expect("the held fragment is released");
    assert_eq!(v, Verdict::Forward(Side::Eni(2)));
    assert_eq!(e.global_counters().held, 0);
}

#[test]
fn time_exceeded_quotes_the_packet_not_its_padding() {
    let mut e = engine();
    let mut pkt = build::udp(a("10.0.1.21"), 5000, client(), 33434, b"x");
    pkt[8] = 1;
    Ipv4Packet::new_checked(&mut pkt[..])
        .unwrap()
        .fill_checksum();
    let n = pkt.len();
    pkt.extend_from_slice(&[0xee; 10]);
    let (v, out) = run(&mut e, Side::Eni(2), &pkt);
    assert_eq!(
        v,
        Verdict::Reply {
            to: Side::Eni(2),
            len: 28 + n
        }
    );
    assert_eq!(&out[28..], &pkt[..n]);
}

/// [`Engine::fast_step`] is only a shortcut: with it and without it, every packet of a wide
/// mix (every ingress, every kind of address, ALG ports and signatures, TTL 1, offloaded
/// checksums, link padding, broken headers, policers that run dry) gets the same verdict,
/// the same bytes, and the same counts everywhere.
#[test]
fn the_fast_path_agrees_with_the_general_path_on_every_packet() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let sources = [
        "203.0.113.7",
        "10.0.1.10",
        "10.0.1.21",
        "10.0.1.22",
        "198.51.100.30",
        "198.51.100.50",
        "10.0.1.40",
        "10.0.1.60",
        "10.0.1.70",
        "10.0.1.99",
    ];
    let dests = [
        "198.51.100.1",
        "198.51.100.10",
        "198.51.100.30",
        "198.51.100.51",
        "198.51.100.60",
        "198.51.100.70",
        "198.51.100.99",
        "198.51.100.200",
        "203.0.113.9",
        "203.0.113.254",
        "10.0.1.40",
        "10.0.1.253",
        "100.100.100.200",
        "127.0.0.1",
    ];
    let sides = [
        Side::Internet,
        Side::Eni(1),
        Side::Eni(2),
        Side::Eni(3),
        Side::Eni(4),
        Side::Eni(5),
        Side::Eni(6),
        Side::Eni(7),
        Side::Eni(9),
        Side::CloudServices,
    ];
    let payloads: [&[u8]; 5] = [
        b"",
        b"hello",
        b"INVITE sip:bob@203.0.113.9 SIP/2.0\r\n\r\n",
        b"PORT 10,0,1,10,4,1\r\n",
        &[0xc0, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8],
    ];
    // Small bandwidths so that policers run dry.
    let table = Arc::new(builder_with_bandwidth(1).build().unwrap());
    let mut fast = Engine::new(table.clone());
    let mut general = Engine::new(table);
    general.st.fast_path_off = true;
    let mut now = T0;
    for n in 0..20_000u32 {
        now += next(20_000);
        let mut src = a(sources[next(sources.len() as u64) as usize]);
        let mut dst = a(dests[next(dests.len() as u64) as usize]);
        let mut side = sides[next(sides.len() as u64) as usize];
        // Half of them take the common paths, through an EIP to or from the internet.
        match next(4) {
            0 => {
                (side, dst) = (Side::Internet, a(dests[next(4) as usize]));
                src = a("203.0.113.7");
            }
            1 => {
                let (e, s) =
                    [(1, "10.0.1.10"), (2, "10.0.1.21"), (3, "198.51.100.30")][next(3) as usize];
                (side, src, dst) = (Side::Eni(e), a(s), a("203.0.113.9"));
            }
            _ => {}
        }
        let payload = payloads[next(payloads.len() as u64) as usize];
        let big = vec![0x5a; next(1400) as usize];
        let payload = if next(4) == 0 { &big[..] } else { payload };
        let ports = [21u16, 53, 5060, 554, 40000, 443];
        let sp = ports[next(ports.len() as u64) as usize];
        let dp = ports[next(ports.len() as u64) as usize];
        let mut p = match next(4) {
            0 => build::tcp(src, sp, dst, dp, 0x18, payload),
            1 => build::ping(src, dst, 1, n as u16, payload),
            _ => build::udp(src, sp, dst, dp, payload),
        };
        let mut flags = PacketFlags::default();
        match next(16) {
            0 => {
                p[8] = 1;
                p[10..12].copy_from_slice(&[0, 0]);
                let c = checksum::checksum(&p[..20]);
                p[10..12].copy_from_slice(&c.to_be_bytes());
            }
            1 => {
                let i = next(p.len() as u64) as usize;
                p[i] ^= 1 << next(8);
            }
            2 => p.extend_from_slice(&[0; 6]),
            3 => p.truncate(next(p.len() as u64) as usize),
            4 => flags.csum_partial = true,
            // A UDP datagram sent without a checksum keeps none.
            6 if p.len() >= 28 && p[9] == 17 => p[26..28].copy_from_slice(&[0, 0]),
            5 => {
                p[6] = 0x20;
                p[10..12].copy_from_slice(&[0, 0]);
                let c = checksum::checksum(&p[..20]);
                p[10..12].copy_from_slice(&c.to_be_bytes());
            }
            _ => {}
        }
        let (vf, of) = {
            let mut buf = vec![0u8; p.len().max(576) + 64];
            buf[..p.len()].copy_from_slice(&p);
            let v = fast.process(now, side, &mut buf, p.len(), flags);
            (v, buf)
        };
        let (vg, og) = {
            let mut buf = vec![0u8; p.len().max(576) + 64];
            buf[..p.len()].copy_from_slice(&p);
            let v = general.process(now, side, &mut buf, p.len(), flags);
            (v, buf)
        };
        assert_eq!(vf, vg, "packet {n}: {side:?} {src} -> {dst}");
        assert_eq!(of, og, "packet {n}: {side:?} {src} -> {dst}");
    }
    assert_eq!(fast.global_counters(), general.global_counters());
    assert!(
        fast.global_counters().forwarded.packets > 4_000,
        "{:?}",
        fast.global_counters()
    );
    assert!(fast.global_counters().drops[DropReason::BandwidthExceeded as usize] > 100);
    for slot in 0..100 {
        assert_eq!(fast.eip_counters(slot), general.eip_counters(slot));
    }
    assert_eq!(fast.all_eni_counters(), general.all_eni_counters());
}

/// D13: a CLB behind an EIP.
mod clb;
/// D9–D11: the NAT gateway path.
mod natgw;
