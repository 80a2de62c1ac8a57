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
    use AssociationMode::Nat;
    let clb: SharedClb = Arc::new(Mutex::new(Clb::new(clb_config())));
    let t = builder()
        .eni(eni(8, Some((5, true)), &["10.0.2.11"]))
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
    (Engine::new(Arc::new(t)), clb)
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
    let mut bufs: Vec<PacketBuf> = pkts
        .iter()
        .map(|p| {
            let mut b = PacketBuf::with_capacity(2048);
            b.set(p);
            b.ingress = Side::Internet;
            b
        })
        .collect();
    batch.process_batch(T0, &mut bufs);
    for (p, b) in pkts.iter().zip(&bufs) {
        let (v, out) = run(&mut one, Side::Internet, p);
        assert_eq!(b.verdict, v);
        if let Verdict::Forward(_) = v {
            assert_eq!(b.packet(), &out[..]);
        }
    }
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
