//! D13 through the engine: a CLB behind an EIP spreads connections, keeps them, sends the
//! backends' replies out from its EIP, and refuses what it does not carry; every forwarded
//! packet's checksums are checked by etherparse.

use super::*;
use crate::clb::{BackendConfig, Clb, ClbConfig, ListenerConfig};
use crate::engine::table::{ClbTableConfig, SharedClb};
use std::sync::Mutex;

// Besides the lab of the other tests:
//   ENI 8  i-b1    10.0.2.11  no EIP                       backend, weight 2
//   ENI 9  i-b2    10.0.2.12  NAT 198.51.100.212 (slot 212) backend, weight 1
//   ENI 10 i-other 10.0.2.13  no EIP, no backend
//   CLB lb-a on EIP 198.51.100.210 (slot 210): TCP 80 -> backends' 8080, UDP 53 -> 53.
const LB: &str = "198.51.100.210";

fn clb_config() -> ClbConfig {
    let backends = vec![
        BackendConfig {
            addr: a("10.0.2.11"),
            weight: 2,
        },
        BackendConfig {
            addr: a("10.0.2.12"),
            weight: 1,
        },
    ];
    let mut tcp = ListenerConfig::tcp(80);
    tcp.backend_port = 8080;
    tcp.backends = backends.clone();
    let mut udp = ListenerConfig::udp(53);
    udp.backends = backends;
    ClbConfig {
        listeners: vec![tcp, udp],
        max_connections: 1000,
    }
}

fn lb_engine() -> (Engine, SharedClb) {
    lb_engine_with(Some((5, true)))
}

/// The CLB lab with i-b1's (ENI 8's) instance as given: `None` detaches the ENI.
fn lb_engine_with(b1: Option<(u32, bool)>) -> (Engine, SharedClb) {
    let clb: SharedClb = Arc::new(Mutex::new(Clb::new(clb_config())));
    (Engine::new(lb_table(b1, &clb)), clb)
}

fn lb_table(b1: Option<(u32, bool)>, clb: &SharedClb) -> Arc<Table> {
    use AssociationMode::Nat;
    let t = builder()
        .eni(eni(8, b1, &["10.0.2.11"]))
        .eni(eni(9, Some((6, true)), &["10.0.2.12"]))
        .eni(eni(10, Some((7, true)), &["10.0.2.13"]))
        .eip(eip(210, LB, None))
        .eip(eip(212, "198.51.100.212", Some((Nat, 9, None))))
        .clb(ClbTableConfig {
            id: "lb-a".into(),
            clb: clb.clone(),
            vip: Some(a("10.0.2.200")),
            eip: Some((a(LB), 210)),
            backend_enis: vec![8, 9],
        })
        .build()
        .unwrap();
    Arc::new(t)
}

fn ports(p: &[u8]) -> (u16, u16) {
    (
        u16::from_be_bytes([p[20], p[21]]),
        u16::from_be_bytes([p[22], p[23]]),
    )
}

#[test]
fn d13_new_connections_spread_by_weight_and_replies_leave_from_the_eip() {
    let (mut e, clb) = lb_engine();
    let mut to = Vec::new();
    for k in 0..6u16 {
        let syn = build::tcp(client(), 40000 + k, a(LB), 80, 0x02, b"");
        let (v, out) = run(&mut e, Side::Internet, &syn);
        let Verdict::Forward(Side::Eni(eni)) = v else {
            panic!("SYN {k}: {v:?}")
        };
        let backend = if eni == 8 { "10.0.2.11" } else { "10.0.2.12" };
        assert_eq!(dst_of(&out), a(backend), "to the backend's private IP");
        assert_eq!(src_of(&out), client(), "the backend sees the client");
        assert_eq!(ports(&out), (40000 + k, 8080), "to the backend port");
        assert_valid(&out);
        to.push(eni);

        // The backend's SYN-ACK leaves from the CLB's EIP and listener port, even from the
        // backend that has an EIP of its own.
        let reply = build::tcp(a(backend), 8080, client(), 40000 + k, 0x12, b"");
        let (v, back) = run(&mut e, Side::Eni(eni), &reply);
        assert_eq!(v, Verdict::Forward(Side::Internet), "reply {k}");
        assert_eq!((src_of(&back), dst_of(&back)), (a(LB), client()));
        assert_eq!(ports(&back), (80, 40000 + k));
        assert_valid(&back);
    }
    assert_eq!(
        to.iter().filter(|&&e| e == 8).count(),
        4,
        "weight 2: {to:?}"
    );
    assert_eq!(
        to.iter().filter(|&&e| e == 9).count(),
        2,
        "weight 1: {to:?}"
    );
    assert_eq!(clb.lock().unwrap().connections(), 6);
    assert_eq!(e.eip_counters(210).to_guest.packets, 6);
    assert_eq!(e.eip_counters(210).from_guest.packets, 6);
    assert_eq!(e.eip_counters(212).from_guest.packets, 0, "not its own EIP");
    assert_eq!(e.eni_counters(8).to_guest.packets, 4);
    assert_eq!(e.eni_counters(9).from_guest.packets, 2);
}

#[test]
fn d13_a_connection_stays_on_its_backend_and_udp_is_spread_too() {
    let (mut e, _) = lb_engine();
    let first = run(
        &mut e,
        Side::Internet,
        &build::tcp(client(), 41000, a(LB), 80, 0x02, b""),
    )
    .0;
    for k in 0..10u16 {
        // New connections from other ports move the scheduler on meanwhile.
        let (v, _) = run(
            &mut e,
            Side::Internet,
            &build::tcp(a("203.0.113.9"), 1234 + k, a(LB), 80, 0x02, b""),
        );
        assert!(matches!(v, Verdict::Forward(Side::Eni(_))), "{v:?}");
        let (v, _) = run(
            &mut e,
            Side::Internet,
            &build::tcp(client(), 41000, a(LB), 80, 0x10, b"data"),
        );
        assert_eq!(v, first);
    }
    let mut seen = Vec::new();
    for k in 0..3u16 {
        let (v, out) = run(
            &mut e,
            Side::Internet,
            &build::udp(client(), 5000 + k, a(LB), 53, b"q"),
        );
        assert!(matches!(v, Verdict::Forward(Side::Eni(_))), "{v:?}");
        assert_eq!(ports(&out).1, 53);
        assert_valid(&out);
        seen.push(v);
    }
    assert!(seen.contains(&Verdict::Forward(Side::Eni(8))), "{seen:?}");
    assert!(seen.contains(&Verdict::Forward(Side::Eni(9))), "{seen:?}");
}

#[test]
fn d13_a_backends_other_traffic_takes_its_usual_way() {
    let (mut e, _) = lb_engine();
    // No connection of the CLB: i-b2 speaks through its own EIP, i-b1 has none.
    let (v, out) = run(
        &mut e,
        Side::Eni(9),
        &build::tcp(a("10.0.2.12"), 8080, client(), 40000, 0x12, b""),
    );
    assert_eq!(v, Verdict::Forward(Side::Internet));
    assert_eq!(src_of(&out), a("198.51.100.212"));
    let (v, _) = run(
        &mut e,
        Side::Eni(8),
        &build::tcp(a("10.0.2.11"), 8080, client(), 40000, 0x12, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::NoPublicIp));
    // A connection's reply spoofed from another ENI is not the CLB's.
    let (v, _) = run(
        &mut e,
        Side::Internet,
        &build::tcp(client(), 42000, a(LB), 80, 0x02, b""),
    );
    assert_eq!(v, Verdict::Forward(Side::Eni(8)), "the first pick weighs 2");
    let (v, _) = run(
        &mut e,
        Side::Eni(10),
        &build::tcp(a("10.0.2.11"), 8080, client(), 42000, 0x12, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::SourceCheck));
}

#[test]
fn d13_refusals_are_counted_against_the_clb_eip() {
    let (mut e, clb) = lb_engine();
    let drop_on_eip = |e: &Engine, r: DropReason| e.eip_counters(210).drops[r as usize];
    // No listener on UDP 54, nor TCP 53.
    for pkt in [
        build::udp(client(), 1, a(LB), 54, b""),
        build::tcp(client(), 1, a(LB), 53, 0x02, b""),
    ] {
        let (v, _) = run(&mut e, Side::Internet, &pkt);
        assert_eq!(v, Verdict::Drop(DropReason::ClbNoListener));
    }
    assert_eq!(drop_on_eip(&e, DropReason::ClbNoListener), 2);
    // Fragments are not carried.
    let big = build::udp(client(), 2, a(LB), 53, &[7u8; 64]);
    for f in build::fragment(&big, 32) {
        let (v, _) = run(&mut e, Side::Internet, &f);
        assert_eq!(v, Verdict::Drop(DropReason::ClbFragment));
    }
    // A ping is answered by the CLB, from its EIP.
    let (v, out) = run(
        &mut e,
        Side::Internet,
        &build::ping(client(), a(LB), 3, 1, b"x"),
    );
    assert!(
        matches!(
            v,
            Verdict::Reply {
                to: Side::Internet,
                ..
            }
        ),
        "{v:?}"
    );
    assert_eq!((src_of(&out), dst_of(&out)), (a(LB), client()));
    assert_valid(&out);
    // Every backend down: new connections have nowhere to go; up again, they do.
    {
        let mut c = clb.lock().unwrap();
        for l in 0..2 {
            for b in 0..2 {
                c.report_health(l, b, false);
            }
        }
    }
    let syn = build::tcp(client(), 3, a(LB), 80, 0x02, b"");
    let (v, _) = run(&mut e, Side::Internet, &syn);
    assert_eq!(v, Verdict::Drop(DropReason::ClbNoHealthyBackend));
    assert_eq!(drop_on_eip(&e, DropReason::ClbNoHealthyBackend), 1);
    {
        let mut c = clb.lock().unwrap();
        for _ in 0..3 {
            c.report_health(0, 1, true);
        }
    }
    for k in 0..4u16 {
        let syn = build::tcp(client(), 100 + k, a(LB), 80, 0x02, b"");
        let (v, _) = run(&mut e, Side::Internet, &syn);
        assert_eq!(v, Verdict::Forward(Side::Eni(9)), "the only backend up");
    }
}

#[test]
fn d7_a_stopped_or_detached_backend_sends_nothing_through_the_clb() {
    // A connection to i-b1 while it runs; then its instance stops, then its ENI detaches
    // (new tables, the same CLB): the connection is still the CLB's, but D7 comes first.
    let (mut e, clb) = lb_engine();
    let syn = build::tcp(client(), 44000, a(LB), 80, 0x02, b"");
    assert_eq!(
        run(&mut e, Side::Internet, &syn).0,
        Verdict::Forward(Side::Eni(8))
    );
    let synack = build::tcp(a("10.0.2.11"), 8080, client(), 44000, 0x12, b"");
    for (b1, why) in [
        (Some((5, false)), DropReason::InstanceStopped),
        (None, DropReason::EniDetached),
    ] {
        e.set_table(lb_table(b1, &clb));
        let (v, _) = run(&mut e, Side::Eni(8), &synack);
        assert_eq!(v, Verdict::Drop(why), "{b1:?}");
        assert_eq!(e.eni_counters(8).drops[why as usize], 1);
        assert_eq!(e.eip_counters(210).from_guest.packets, 0);
        // Nor does the client reach it.
        let ack = build::tcp(client(), 44000, a(LB), 80, 0x10, b"");
        let (v, _) = run(&mut e, Side::Internet, &ack);
        assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    }
    assert_eq!(clb.lock().unwrap().connections(), 1);
}

#[test]
fn d13_a_batch_decides_as_one_at_a_time() {
    let (mut one, _) = lb_engine();
    let (mut batch, _) = lb_engine();
    let pkts: Vec<Vec<u8>> = (0..12u16)
        .map(|k| match k % 3 {
            0 => build::tcp(client(), 43000 + k, a(LB), 80, 0x02, b""),
            1 => build::udp(client(), 43000 + k, a(LB), 53, b"q"),
            _ => build::udp(client(), 43000 + k, a(LB), 99, b"q"),
        })
        .collect();
    let sided: Vec<(Side, Vec<u8>)> = pkts.iter().map(|p| (Side::Internet, p.clone())).collect();
    for (p, (bv, bout)) in pkts.iter().zip(run_batch_at(&mut batch, T0, &sided)) {
        let (v, out) = run(&mut one, Side::Internet, p);
        assert_eq!(bv, v);
        if let Verdict::Forward(_) = v {
            assert_eq!(bout, out[..p.len()]);
        }
    }
}

#[test]
fn d13_a_reply_whose_ttl_runs_out_leaves_its_connection_as_it_was() {
    let (mut e, clb) = lb_engine();
    let syn = build::tcp(client(), 44000, a(LB), 80, 0x02, b"");
    assert_eq!(
        run(&mut e, Side::Internet, &syn).0,
        Verdict::Forward(Side::Eni(8))
    );
    // A TTL-1 RST from the backend is answered with time exceeded and goes nowhere.
    let mut rst = build::tcp(a("10.0.2.11"), 8080, client(), 44000, 0x04, b"");
    rst[8] = 1;
    Ipv4Packet::new_checked(&mut rst[..])
        .unwrap()
        .fill_checksum();
    let (v, _) = run(&mut e, Side::Eni(8), &rst);
    assert!(
        matches!(
            v,
            Verdict::Reply {
                to: Side::Eni(8),
                ..
            }
        ),
        "{v:?}"
    );
    // So the connection did not start closing: 11 s on (past the 10 s closing timeout,
    // well within the 900 s idle one) the backend's reply still leaves from the EIP.
    let later = T0 + 11_000_000_000;
    let ack = build::tcp(a("10.0.2.11"), 8080, client(), 44000, 0x10, b"");
    let mut buf = ack.clone();
    buf.resize(2048, 0);
    let v = e.process(
        later,
        Side::Eni(8),
        &mut buf,
        ack.len(),
        PacketFlags::default(),
    );
    assert_eq!(v, Verdict::Forward(Side::Internet));
    assert_eq!(src_of(&buf), a(LB));
    assert_eq!(clb.lock().unwrap().connections(), 1);
}

#[test]
fn d13_guests_reach_the_clb_on_its_intranet_address() {
    let (mut e, clb) = lb_engine();
    let vip = a("10.0.2.200");
    let guest = a("10.0.2.13");
    let mut to = Vec::new();
    for k in 0..3u16 {
        let syn = build::tcp(guest, 50000 + k, vip, 80, 0x02, b"");
        let (v, out) = run(&mut e, Side::Eni(10), &syn);
        let Verdict::Forward(Side::Eni(b)) = v else {
            panic!("SYN {k} to the intranet address: {v:?}")
        };
        let backend = if b == 8 { "10.0.2.11" } else { "10.0.2.12" };
        assert_eq!((src_of(&out), dst_of(&out)), (guest, a(backend)));
        assert_eq!(ports(&out), (50000 + k, 8080));
        assert_valid(&out);
        to.push(b);
        // The reply comes back from the intranet address, to the guest's ENI.
        let reply = build::tcp(a(backend), 8080, guest, 50000 + k, 0x12, b"");
        let (v, back) = run(&mut e, Side::Eni(b), &reply);
        assert_eq!(v, Verdict::Forward(Side::Eni(10)), "reply {k}");
        assert_eq!((src_of(&back), dst_of(&back)), (vip, guest));
        assert_eq!(ports(&back), (80, 50000 + k));
        assert_valid(&back);
    }
    assert_eq!(to, [8, 9, 8], "smooth 2:1");
    assert_eq!(clb.lock().unwrap().connections(), 3);
    assert_eq!(
        e.eip_counters(210).to_guest.packets,
        0,
        "not through the EIP"
    );
    assert_eq!(e.eni_counters(10).from_guest.packets, 3);
    assert_eq!(e.eni_counters(10).to_guest.packets, 3);

    // A ping is answered from the intranet address; a port no listener serves is refused.
    let (v, out) = run(&mut e, Side::Eni(10), &build::ping(guest, vip, 1, 1, b"x"));
    assert!(
        matches!(
            v,
            Verdict::Reply {
                to: Side::Eni(10),
                ..
            }
        ),
        "{v:?}"
    );
    assert_eq!((src_of(&out), dst_of(&out)), (vip, guest));
    let (v, _) = run(&mut e, Side::Eni(10), &build::udp(guest, 1, vip, 9999, b""));
    assert_eq!(v, Verdict::Drop(DropReason::ClbNoListener));
    // The guest's own checks come first: a spoofed source, a cut-through ENI.
    let (v, _) = run(
        &mut e,
        Side::Eni(10),
        &build::tcp(a("10.0.2.11"), 1, vip, 80, 0x02, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::SourceCheck));
    let (v, _) = run(
        &mut e,
        Side::Eni(3),
        &build::tcp(a("198.51.100.30"), 1, vip, 80, 0x02, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::CutThroughPrivate));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    const SEC: u64 = 1_000_000_000;

    /// Addresses a packet may carry: clients, the backends and the bystander, i-b2's own
    /// EIP, an instance of the base lab, the CLB's EIP, the VPC's gateway, the CLB's
    /// intranet address.
    const ADDRS: [&str; 10] = [
        "203.0.113.7",
        "203.0.113.9",
        "10.0.2.11",
        "10.0.2.12",
        "10.0.2.13",
        "198.51.100.212",
        "10.0.1.10",
        LB,
        "10.0.1.253",
        "10.0.2.200",
    ];

    /// i-b1, i-b2, i-other and their addresses.
    const ENIS: [EniId; 3] = [8, 9, 10];
    const PRIVATE: [&str; 3] = ["10.0.2.11", "10.0.2.12", "10.0.2.13"];

    #[derive(Clone, Debug)]
    struct Pkt {
        /// 0: internet -> the CLB's EIP; 1: internet -> `dst`; 2: a backend's reply to a
        /// packet forwarded to it earlier; 3: from ENI `eni`, anything; 4: from backend
        /// `eni` (i-b1 or i-b2), a reply to an earlier request to the CLB, whether it went
        /// there or not.
        from: u8,
        /// 0 TCP, 1 UDP, 2 echo request, 3 another ICMP message, 4 a datagram's first
        /// fragment, 5 a later one.
        kind: u8,
        src: usize,
        dst: usize,
        sport: u16,
        dport: u16,
        /// TCP flags (and the pick of an ICMP type or a fragment's transport).
        tcp: u8,
        eni: usize,
        /// For a reply: which forwarded packet (modulo their count).
        pick: usize,
        /// For a reply: 0 as it should be; 1 sent on another ENI; 2 from another address;
        /// 3 from another port.
        spoof: u8,
        ttl: u8,
        /// A byte to flip (index, mask), breaking the packet somewhere.
        flip: Option<(usize, u8)>,
    }

    #[derive(Clone, Debug)]
    enum Op {
        Pkt(Pkt),
        /// A health check result, reported to both engines' CLBs (indexes may be out of
        /// range).
        Health(usize, usize, bool),
        /// Time moves on by this much.
        Tick(u64),
    }

    fn port() -> impl Strategy<Value = u16> {
        prop_oneof![
            Just(80u16),
            Just(53),
            Just(8080),
            Just(40000),
            Just(40001),
            any::<u16>()
        ]
    }

    fn pkt() -> impl Strategy<Value = Pkt> {
        (
            (
                0u8..5,
                0u8..6,
                0..ADDRS.len(),
                0..ADDRS.len(),
                port(),
                port(),
            ),
            (
                prop_oneof![
                    Just(0x02u8),
                    Just(0x12),
                    Just(0x10),
                    Just(0x18),
                    Just(0x11),
                    Just(0x04),
                    Just(0x14),
                    any::<u8>()
                ],
                0..ENIS.len(),
                any::<usize>(),
                prop_oneof![6 => Just(0u8), 1 => Just(1), 1 => Just(2), 1 => Just(3)],
                prop_oneof![8 => Just(64u8), 1 => Just(1)],
                proptest::option::weighted(0.1, (0usize..100, 1u8..=255)),
            ),
        )
            .prop_map(
                |((from, kind, src, dst, sport, dport), (tcp, eni, pick, spoof, ttl, flip))| Pkt {
                    from,
                    kind,
                    src,
                    dst,
                    sport,
                    dport,
                    tcp,
                    eni,
                    pick,
                    spoof,
                    ttl,
                    flip,
                },
            )
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            12 => pkt().prop_map(Op::Pkt),
            2 => (0usize..3, 0usize..3, any::<bool>()).prop_map(|(l, b, ok)| Op::Health(l, b, ok)),
            1 => prop_oneof![
                Just(SEC / 1000),
                Just(SEC),
                Just(11 * SEC),
                Just(91 * SEC),
                Just(901 * SEC)
            ]
            .prop_map(Op::Tick),
        ]
    }

    /// A TCP or UDP packet, or a fragment of one (`kind` 4, 5).
    #[allow(clippy::too_many_arguments)]
    fn transport(
        kind: u8,
        tcp: bool,
        flags: u8,
        s: Ipv4Addr,
        sp: u16,
        d: Ipv4Addr,
        dp: u16,
        pick: usize,
    ) -> Vec<u8> {
        let body: &[u8] = if kind >= 4 { &[7u8; 64] } else { b"data" };
        let whole = if tcp {
            build::tcp(s, sp, d, dp, flags, body)
        } else {
            build::udp(s, sp, d, dp, body)
        };
        if kind < 4 {
            return whole;
        }
        let frags = build::fragment(&whole, 32);
        if kind == 4 {
            frags[0].clone()
        } else {
            frags[1 + pick % (frags.len() - 1)].clone()
        }
    }

    /// The packet `p` stands for and the side it comes from; `fwd` holds the packets
    /// forwarded to a backend so far (its ENI, the bytes it got), `asked` the TCP and UDP
    /// packets sent to the CLB so far, `prev` the last packet.
    fn bytes(p: &Pkt, fwd: &[(EniId, Vec<u8>)], asked: &[Vec<u8>], prev: &[u8]) -> (Side, Vec<u8>) {
        let (mut s, mut d) = (a(ADDRS[p.src]), a(ADDRS[p.dst]));
        let (mut sp, mut dp) = (p.sport, p.dport);
        let mut side = Side::Internet;
        let mut tcp = p.kind == 0 || (p.kind >= 4 && p.tcp & 1 == 1);
        match p.from {
            0 => d = a(LB),
            1 => {}
            2 if !fwd.is_empty() => {
                let (e, got) = &fwd[p.pick % fwd.len()];
                (s, d) = (dst_of(got), src_of(got));
                (dp, sp) = ports(got);
                tcp = got[9] == 6;
                side = Side::Eni(*e);
                match p.spoof {
                    1 => {
                        side = Side::Eni(
                            ENIS[(ENIS.iter().position(|x| x == e).unwrap() + 1 + p.eni % 2) % 3],
                        )
                    }
                    2 => s = a(ADDRS[p.src]),
                    3 => sp = p.sport,
                    _ => {}
                }
            }
            4 if !asked.is_empty() => {
                let q = &asked[p.pick % asked.len()];
                tcp = q[9] == 6;
                let b = p.eni % 2;
                (s, d) = (a(PRIVATE[b]), src_of(q));
                (sp, dp) = (if tcp { 8080 } else { 53 }, ports(q).0);
                side = Side::Eni(ENIS[b]);
            }
            _ => {
                side = Side::Eni(ENIS[p.eni]);
                if p.spoof == 0 {
                    s = a(PRIVATE[p.eni]);
                }
            }
        }
        let replying = (p.from == 2 && !fwd.is_empty()) || (p.from == 4 && !asked.is_empty());
        let mut b = match p.kind {
            _ if replying && p.kind != 4 && p.kind != 5 => {
                transport(0, tcp, p.tcp, s, sp, d, dp, 0)
            }
            0 | 1 | 4 | 5 => transport(p.kind, tcp, p.tcp, s, sp, d, dp, p.pick),
            2 => build::ping(s, d, sp, dp, b"ping"),
            _ => match p.tcp % 5 {
                // Errors quoting the previous packet (whatever it was).
                0 => build::icmp(s, d, 3, 3, 0, &prev[..prev.len().min(48)]),
                1 => build::icmp(s, d, 11, 0, 0, &prev[..prev.len().min(48)]),
                2 => build::icmp(s, d, 0, 0, u32::from(sp) << 16, b"pong"),
                3 => build::icmp(s, d, 13, 0, 0, &[0; 12]),
                _ => build::icmp(s, d, 5, 1, 0, &prev[..prev.len().min(28)]),
            },
        };
        mangle(&mut b, p.ttl, p.flip);
        (side, b)
    }

    fn run_at(e: &mut Engine, now: u64, side: Side, pkt: &[u8]) -> (Verdict, Vec<u8>) {
        let mut buf = vec![0u8; pkt.len().max(576) + 64];
        buf[..pkt.len()].copy_from_slice(pkt);
        let v = e.process(now, side, &mut buf, pkt.len(), PacketFlags::default());
        if let Verdict::Reply { len, .. } = v {
            buf.truncate(len);
        } else {
            buf.truncate(pkt.len());
        }
        (v, buf)
    }

    /// The fragments released so far, processed: their verdicts and bytes.
    fn released(e: &mut Engine, now: u64) -> Vec<(Verdict, Vec<u8>)> {
        let mut buf = vec![0u8; 2048];
        let mut out = Vec::new();
        while let Some((n, v)) = e.poll_released(now, &mut buf) {
            out.push((v, buf[..n].to_vec()));
        }
        out
    }

    /// Both engines' state agrees, and each accounts for every packet it received.
    fn same_state(
        one: &Engine,
        batch: &Engine,
        clbs: &[SharedClb; 2],
    ) -> Result<(), TestCaseError> {
        for e in [one, batch] {
            let g = e.global_counters();
            prop_assert_eq!(
                g.forwarded.packets + g.replied.packets + g.held + g.total_drops(),
                g.received.packets,
                "accounting: {:?}",
                g
            );
        }
        prop_assert_eq!(one.global_counters(), batch.global_counters());
        for slot in [1, 210, 212] {
            prop_assert_eq!(
                one.eip_counters(slot),
                batch.eip_counters(slot),
                "slot {}",
                slot
            );
        }
        prop_assert_eq!(one.all_eni_counters(), batch.all_eni_counters());
        let (c1, c2) = (clbs[0].lock().unwrap(), clbs[1].lock().unwrap());
        c1.check_invariants();
        c2.check_invariants();
        prop_assert_eq!(c1.stats(), c2.stats());
        Ok(())
    }

    /// Runs the packets of one moment through `batch` as one batch (then its released
    /// fragments) and checks it decided them as `want` says.
    fn flush(
        batch: &mut Engine,
        now: u64,
        pending: &mut Vec<(Side, Vec<u8>)>,
        want: &mut Vec<(Verdict, Vec<u8>)>,
    ) -> Result<(), TestCaseError> {
        let mut got = run_batch_at(batch, now, pending);
        got.extend(released(batch, now));
        prop_assert_eq!(got.len(), want.len());
        for (k, ((gv, gb), (wv, wb))) in got.iter().zip(want.iter()).enumerate() {
            prop_assert_ne!(*gv, UNDECIDED, "packet {} undecided", k);
            prop_assert_eq!(gv, wv, "packet {}: verdict", k);
            prop_assert_eq!(gb, wb, "packet {}: bytes", k);
        }
        pending.clear();
        want.clear();
        Ok(())
    }

    fn running(b1: Option<(u32, bool)>, e: EniId) -> bool {
        e != 8 || b1.is_some_and(|(_, r)| r)
    }

    /// What the engine did with one packet makes sense for a CLB.
    fn check_one(
        b1: Option<(u32, bool)>,
        p: &Pkt,
        side: Side,
        inp: &[u8],
        v: Verdict,
        out: &[u8],
    ) -> Result<(), TestCaseError> {
        let proto = inp[9];
        let whole = p.flip.is_none() && p.kind < 4;
        match v {
            Verdict::Forward(to) => {
                if whole {
                    assert_valid(out);
                }
                if let Side::Eni(e) = to {
                    prop_assert!(running(b1, e), "D7: delivered to ENI {}", e);
                }
                if let Side::Eni(e) = side {
                    prop_assert!(running(b1, e), "D7: forwarded from ENI {}", e);
                }
                let to_lb = side == Side::Internet && dst_of(inp) == a(LB);
                if let (true, Side::Eni(e), true) = (to_lb, to, whole) {
                    // Scheduled to a backend: its address, the listener's backend port.
                    prop_assert!(e == 8 || e == 9, "to ENI {}", e);
                    prop_assert_eq!(dst_of(out), a(PRIVATE[(e - 8) as usize]));
                    prop_assert_eq!(src_of(out), src_of(inp), "the backend sees the client");
                    let want = if proto == 6 {
                        (ports(inp).0, 8080)
                    } else {
                        (ports(inp).0, 53)
                    };
                    prop_assert_eq!(ports(out), want);
                }
                if let (Side::Eni(e), true) = (side, whole && src_of(out) == a(LB)) {
                    // A reply of a connection: from its backend's own address, out from
                    // the listener's port.
                    prop_assert!(e == 8 || e == 9, "from ENI {}", e);
                    prop_assert_eq!(src_of(inp), a(PRIVATE[(e - 8) as usize]));
                    prop_assert_eq!(ports(out).0, if proto == 6 { 80 } else { 53 });
                }
            }
            // An echo request's checksum is updated, not checked: a broken one stays broken.
            Verdict::Reply { .. } if p.flip.is_none() => assert_valid(out),
            _ => {}
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever crosses the CLB, with health results and time passing in between, one
        /// by one or in batches: no panic, every packet decided, the same verdicts, bytes,
        /// counters and CLB state either way, every packet accounted for, every whole
        /// forwarded packet valid and going where the CLB says, nothing to or from a
        /// stopped or detached backend.
        #[test]
        fn any_traffic_around_a_clb_is_decided_alike_and_stays_valid(
            b1 in prop_oneof![4 => Just(Some((5u32, true))), 1 => Just(Some((5, false))), 1 => Just(None)],
            ops in proptest::collection::vec(op(), 1..80)
        ) {
            let (mut one, c1) = lb_engine_with(b1);
            let (mut batch, c2) = lb_engine_with(b1);
            let clbs = [c1, c2];
            let mut now = T0;
            let mut prev = build::udp(client(), 53, a(LB), 1024, b"");
            let mut fwd: Vec<(EniId, Vec<u8>)> = Vec::new();
            let mut asked: Vec<Vec<u8>> = Vec::new();
            let (mut pending, mut want) = (Vec::new(), Vec::new());
            let mut n = 0u64;
            for op in &ops {
                match op {
                    Op::Pkt(p) => {
                        let (side, b) = bytes(p, &fwd, &asked, &prev);
                        let whole = b[6] & 0x3f == 0 && b[7] == 0;
                        if side == Side::Internet && dst_of(&b) == a(LB) && matches!(b[9], 6 | 17) && whole {
                            asked.push(b.clone());
                        }
                        let (v, out) = run_at(&mut one, now, side, &b);
                        check_one(b1, p, side, &b, v, &out)?;
                        if let (Side::Internet, Verdict::Forward(Side::Eni(e))) = (side, v) {
                            if matches!(out[9], 6 | 17) && out[6] & 0x3f == 0 && out[7] == 0 {
                                fwd.push((e, out.clone()));
                            }
                        }
                        prev = b.clone();
                        pending.push((side, b));
                        want.push((v, out));
                        n += 1;
                    }
                    Op::Health(l, b, ok) => {
                        want.extend(released(&mut one, now));
                        flush(&mut batch, now, &mut pending, &mut want)?;
                        let r1 = clbs[0].lock().unwrap().report_health(*l, *b, *ok);
                        let r2 = clbs[1].lock().unwrap().report_health(*l, *b, *ok);
                        prop_assert_eq!(r1, r2);
                    }
                    Op::Tick(d) => {
                        want.extend(released(&mut one, now));
                        flush(&mut batch, now, &mut pending, &mut want)?;
                        now += d;
                        one.handle_timeout(now);
                        batch.handle_timeout(now);
                    }
                }
                if pending.is_empty() {
                    same_state(&one, &batch, &clbs)?;
                }
            }
            want.extend(released(&mut one, now));
            flush(&mut batch, now, &mut pending, &mut want)?;
            same_state(&one, &batch, &clbs)?;
            prop_assert_eq!(one.global_counters().received.packets, n);
        }
    }
}
