//! D9–D11 through the engine: SNAT, DNAT, hairpin, ICMP and the gateway's refusals, with
//! every forwarded packet's checksums checked by etherparse.

use super::*;
use crate::engine::table::{NatGatewayConfig, SharedNapt};
use crate::napt::{DnatProtocol, DnatRule, Napt, NaptConfig, SnatRule};
use core::net::SocketAddrV4;
use std::sync::Mutex;

// Besides the lab of the other tests:
//   ENI 8  i-snat  10.0.2.5   no EIP; SNAT 10.0.2.5/32 -> 198.51.100.200 (slot 200)
//   ENI 9  i-dnat  10.0.2.6   no EIP; DNAT 198.51.100.201:8080/tcp -> 10.0.2.6:80 (slot 201),
//                             198.51.100.201:5353/udp -> 10.0.2.6:53
//   ENI 10 i-other 10.0.2.7   no EIP, no entry
const GW_SNAT: &str = "198.51.100.200";
const GW_DNAT: &str = "198.51.100.201";

fn sa(s: &str, p: u16) -> SocketAddrV4 {
    SocketAddrV4::new(a(s), p)
}

fn napt_with(cfg: NaptConfig) -> SharedNapt {
    let snat = vec![SnatRule {
        source: a("10.0.2.5"),
        prefix_len: 32,
        eips: vec![a(GW_SNAT)],
    }];
    let dnat = vec![
        DnatRule {
            external: sa(GW_DNAT, 8080),
            protocol: DnatProtocol::Tcp,
            internal: sa("10.0.2.6", 80),
        },
        DnatRule {
            external: sa(GW_DNAT, 5353),
            protocol: DnatProtocol::Udp,
            internal: sa("10.0.2.6", 53),
        },
    ];
    Arc::new(Mutex::new(Napt::new(cfg, snat, dnat).unwrap()))
}

fn gw_table(napt: &SharedNapt) -> Arc<Table> {
    Arc::new(
        builder()
            .eni(eni(8, Some((5, true)), &["10.0.2.5"]))
            .eni(eni(9, Some((6, true)), &["10.0.2.6"]))
            .eni(eni(10, Some((7, true)), &["10.0.2.7"]))
            .eip(eip(200, GW_SNAT, None))
            .eip(eip(201, GW_DNAT, None))
            .nat_gateway(NatGatewayConfig {
                id: "ngw-a".into(),
                napt: napt.clone(),
                eips: vec![(a(GW_SNAT), 200), (a(GW_DNAT), 201)],
                sources: vec![(a("10.0.2.5"), 32), (a("10.0.2.6"), 32)],
            })
            .build()
            .unwrap(),
    )
}

fn gw_engine() -> (Engine, SharedNapt) {
    let napt = napt_with(NaptConfig::cloud());
    (Engine::new(gw_table(&napt)), napt)
}

fn sport_of(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[20], p[21]])
}

fn dport_of(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[22], p[23]])
}

fn drops(e: &Engine, r: DropReason) -> u64 {
    e.global_counters().drops[r as usize]
}

#[test]
fn d9_snat_translates_a_new_flow_and_its_replies_come_back() {
    let (mut e, napt) = gw_engine();
    for (proto, pkt) in [
        (
            "tcp",
            build::tcp(a("10.0.2.5"), 40000, client(), 80, 0x02, b""),
        ),
        ("udp", build::udp(a("10.0.2.5"), 40001, client(), 53, b"q")),
    ] {
        let (v, out) = run(&mut e, Side::Eni(8), &pkt);
        assert_eq!(v, Verdict::Forward(Side::Internet), "{proto}");
        assert_eq!(src_of(&out), a(GW_SNAT), "{proto}: the gateway's EIP");
        assert_eq!(dst_of(&out), client());
        assert_valid(&out);
        let ext = sport_of(&out);
        let reply = if proto == "tcp" {
            build::tcp(client(), 80, a(GW_SNAT), ext, 0x12, b"")
        } else {
            build::udp(client(), 53, a(GW_SNAT), ext, b"a")
        };
        let (v, back) = run(&mut e, Side::Internet, &reply);
        assert_eq!(v, Verdict::Forward(Side::Eni(8)), "{proto} reply");
        assert_eq!(dst_of(&back), a("10.0.2.5"));
        assert_eq!(
            dport_of(&back),
            sport_of(&pkt),
            "{proto}: the host's own port"
        );
        assert_eq!(src_of(&back), client());
        assert_valid(&back);
    }
    assert_eq!(napt.lock().unwrap().sessions(), 2);
    assert_eq!(e.eip_counters(200).from_guest.packets, 2);
    assert_eq!(e.eip_counters(200).to_guest.packets, 2);
    assert_eq!(e.eni_counters(8).from_guest.packets, 2);
    assert_eq!(e.eni_counters(8).to_guest.packets, 2);
}

#[test]
fn d9_an_unsolicited_packet_to_the_snat_eip_is_dropped_and_counted_against_it() {
    let (mut e, _) = gw_engine();
    let (v, _) = run(
        &mut e,
        Side::Internet,
        &build::udp(client(), 53, a(GW_SNAT), 2000, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::NatGatewayNoSession));
    assert_eq!(
        e.eip_counters(200).drops[DropReason::NatGatewayNoSession as usize],
        1
    );
}

#[test]
fn d9_a_source_no_entry_covers_has_no_public_ip() {
    let (mut e, _) = gw_engine();
    let pkt = build::udp(a("10.0.2.7"), 1, client(), 2, b"");
    let (v, _) = run(&mut e, Side::Eni(10), &pkt);
    assert_eq!(v, Verdict::Drop(DropReason::NoPublicIp));
}

#[test]
fn d10_dnat_forwards_the_port_and_the_reply_leaves_from_it() {
    let (mut e, _) = gw_engine();
    let syn = build::tcp(client(), 50000, a(GW_DNAT), 8080, 0x02, b"");
    let (v, out) = run(&mut e, Side::Internet, &syn);
    assert_eq!(v, Verdict::Forward(Side::Eni(9)));
    assert_eq!((dst_of(&out), dport_of(&out)), (a("10.0.2.6"), 80));
    assert_valid(&out);
    // 10.0.2.6 has no SNAT entry: its reply leaves through the DNAT session.
    let synack = build::tcp(a("10.0.2.6"), 80, client(), 50000, 0x12, b"");
    let (v, back) = run(&mut e, Side::Eni(9), &synack);
    assert_eq!(v, Verdict::Forward(Side::Internet));
    assert_eq!((src_of(&back), sport_of(&back)), (a(GW_DNAT), 8080));
    assert_valid(&back);
    // A port with no entry.
    let (v, _) = run(
        &mut e,
        Side::Internet,
        &build::tcp(client(), 50000, a(GW_DNAT), 22, 0x02, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::NatGatewayNoSession));
    // A new flow of its own is not SNAT's to carry.
    let (v, _) = run(
        &mut e,
        Side::Eni(9),
        &build::udp(a("10.0.2.6"), 999, client(), 53, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::NatGatewayNoSnatEntry));
}

#[test]
fn d9_icmp_echo_identifier_is_translated_both_ways() {
    let (mut e, _) = gw_engine();
    let ping = build::ping(a("10.0.2.5"), client(), 77, 1, b"abc");
    let (v, out) = run(&mut e, Side::Eni(8), &ping);
    assert_eq!(v, Verdict::Forward(Side::Internet));
    assert_eq!(src_of(&out), a(GW_SNAT));
    assert_valid(&out);
    let id = u16::from_be_bytes([out[24], out[25]]);
    let mut reply = build::ping(client(), a(GW_SNAT), id, 1, b"abc");
    reply[20] = 0; // echo reply
    let c = checksum::checksum(&{
        let mut m = reply[20..].to_vec();
        m[2] = 0;
        m[3] = 0;
        m
    });
    reply[22..24].copy_from_slice(&c.to_be_bytes());
    let (v, back) = run(&mut e, Side::Internet, &reply);
    assert_eq!(v, Verdict::Forward(Side::Eni(8)));
    assert_eq!(dst_of(&back), a("10.0.2.5"));
    assert_eq!(u16::from_be_bytes([back[24], back[25]]), 77);
    assert_valid(&back);
}

/// The quoted packet's header checksum, checked on its own.
fn assert_quote_header_valid(p: &[u8]) {
    let q = &p[28..48];
    assert!(checksum::verify(q), "the quoted IPv4 header's checksum");
}

#[test]
fn d9_an_icmp_error_from_the_internet_reaches_the_host_with_its_quote_translated() {
    let (mut e, _) = gw_engine();
    let out_pkt = build::udp(a("10.0.2.5"), 40000, client(), 53, b"query");
    let (_, out) = run(&mut e, Side::Eni(8), &out_pkt);
    // The far end says port unreachable, quoting what it received.
    let quote = out.clone();
    let err = build::icmp(client(), a(GW_SNAT), 3, 3, 0, &quote);
    let (v, back) = run(&mut e, Side::Internet, &err);
    assert_eq!(v, Verdict::Forward(Side::Eni(8)));
    assert_eq!(dst_of(&back), a("10.0.2.5"));
    assert_eq!(
        (
            Ipv4Addr::new(back[40], back[41], back[42], back[43]),
            u16::from_be_bytes([back[48], back[49]])
        ),
        (a("10.0.2.5"), 40000),
        "the quote's source is the host's own"
    );
    assert_valid(&back);
    assert_quote_header_valid(&back);
    // The quoted UDP checksum matches the quoted packet as the host sent it.
    let mut as_sent = out_pkt.clone();
    as_sent[8] = out[8];
    as_sent[10] = 0;
    as_sent[11] = 0;
    let ck = checksum::checksum(&as_sent[..20]);
    as_sent[10..12].copy_from_slice(&ck.to_be_bytes());
    assert_eq!(
        &back[28..],
        &as_sent[..],
        "the quoted packet is what the host sent, TTL aside"
    );
    // An error about a flow the gateway never carried is dropped.
    let mut stray = quote.clone();
    stray[20..22].copy_from_slice(&1u16.to_be_bytes());
    let err = build::icmp(client(), a(GW_SNAT), 3, 3, 0, &stray);
    let (v, _) = run(&mut e, Side::Internet, &err);
    assert_eq!(v, Verdict::Drop(DropReason::NatGatewayNoSession));
}

#[test]
fn d10_an_icmp_error_from_a_dnat_target_leaves_from_the_gateway_eip() {
    let (mut e, _) = gw_engine();
    let q = build::udp(client(), 40000, a(GW_DNAT), 5353, b"dns?");
    let (v, inside) = run(&mut e, Side::Internet, &q);
    assert_eq!(v, Verdict::Forward(Side::Eni(9)));
    let err = build::icmp(a("10.0.2.6"), client(), 3, 3, 0, &inside);
    let (v, out) = run(&mut e, Side::Eni(9), &err);
    assert_eq!(v, Verdict::Forward(Side::Internet));
    assert_eq!(src_of(&out), a(GW_DNAT));
    assert_eq!(
        (
            Ipv4Addr::new(out[44], out[45], out[46], out[47]),
            u16::from_be_bytes([out[50], out[51]])
        ),
        (a(GW_DNAT), 5353),
        "the quote's destination is what the client sent to"
    );
    assert_valid(&out);
    assert_quote_header_valid(&out);
}

#[test]
fn d9_hairpin_a_host_reaches_a_dnat_port_of_its_gateway() {
    let (mut e, _) = gw_engine();
    let syn = build::tcp(a("10.0.2.5"), 41000, a(GW_DNAT), 8080, 0x02, b"");
    let (v, out) = run(&mut e, Side::Eni(8), &syn);
    assert_eq!(v, Verdict::Forward(Side::Eni(9)));
    assert_eq!((dst_of(&out), dport_of(&out)), (a("10.0.2.6"), 80));
    assert_eq!(src_of(&out), a(GW_SNAT), "it arrives from the SNAT EIP");
    assert_valid(&out);
    let ext = sport_of(&out);
    let synack = build::tcp(a("10.0.2.6"), 80, a(GW_SNAT), ext, 0x12, b"");
    let (v, back) = run(&mut e, Side::Eni(9), &synack);
    assert_eq!(v, Verdict::Forward(Side::Eni(8)));
    assert_eq!((src_of(&back), sport_of(&back)), (a(GW_DNAT), 8080));
    assert_eq!((dst_of(&back), dport_of(&back)), (a("10.0.2.5"), 41000));
    assert_valid(&back);
    assert_eq!(e.global_counters().hairpin, 2);
}

#[test]
fn d11_a_host_with_its_own_eip_reaches_a_dnat_port_from_that_eip() {
    let (mut e, _) = gw_engine();
    // ENI 1 is 10.0.1.10, NAT 198.51.100.1.
    let syn = build::tcp(a("10.0.1.10"), 42000, a(GW_DNAT), 8080, 0x02, b"");
    let (v, out) = run(&mut e, Side::Eni(1), &syn);
    assert_eq!(v, Verdict::Forward(Side::Eni(9)));
    assert_eq!((src_of(&out), sport_of(&out)), (a("198.51.100.1"), 42000));
    assert_eq!((dst_of(&out), dport_of(&out)), (a("10.0.2.6"), 80));
    assert_valid(&out);
    let synack = build::tcp(a("10.0.2.6"), 80, a("198.51.100.1"), 42000, 0x12, b"");
    let (v, back) = run(&mut e, Side::Eni(9), &synack);
    assert_eq!(
        v,
        Verdict::Forward(Side::Eni(1)),
        "back in through the host's EIP"
    );
    assert_eq!((src_of(&back), sport_of(&back)), (a(GW_DNAT), 8080));
    assert_eq!((dst_of(&back), dport_of(&back)), (a("10.0.1.10"), 42000));
    assert_valid(&back);
}

#[test]
fn d9_port_exhaustion_is_answered_with_icmp_code_13_and_counted() {
    let cfg = NaptConfig {
        ports: 2000..=2000,
        ..NaptConfig::cloud()
    };
    let napt = napt_with(cfg);
    let mut e = Engine::new(gw_table(&napt));
    let (v, _) = run(
        &mut e,
        Side::Eni(8),
        &build::udp(a("10.0.2.5"), 1000, client(), 53, b""),
    );
    assert_eq!(v, Verdict::Forward(Side::Internet));
    let second = build::udp(a("10.0.2.5"), 1001, client(), 53, b"");
    let (v, reply) = run(&mut e, Side::Eni(8), &second);
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
    assert_eq!(
        (reply[20], reply[21]),
        (3, 13),
        "destination unreachable, code 13"
    );
    assert_eq!(dst_of(&reply), a("10.0.2.5"));
    assert_valid(&reply);
    assert_eq!(drops(&e, DropReason::NatGatewayPortsExhausted), 1);
}

#[test]
fn d9_a_full_session_table_refuses_new_flows_and_keeps_the_live_one() {
    let cfg = NaptConfig {
        max_sessions: 1,
        ..NaptConfig::cloud()
    };
    let napt = napt_with(cfg);
    let mut e = Engine::new(gw_table(&napt));
    let first = build::udp(a("10.0.2.5"), 1000, client(), 53, b"");
    let (v, out) = run(&mut e, Side::Eni(8), &first);
    assert_eq!(v, Verdict::Forward(Side::Internet));
    let (v, _) = run(
        &mut e,
        Side::Eni(8),
        &build::udp(a("10.0.2.5"), 1001, client(), 53, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::NatGatewaySessionTableFull));
    let reply = build::udp(client(), 53, a(GW_SNAT), sport_of(&out), b"");
    let (v, _) = run(&mut e, Side::Internet, &reply);
    assert_eq!(
        v,
        Verdict::Forward(Side::Eni(8)),
        "the live flow carries on"
    );
    let (v, _) = run(&mut e, Side::Eni(8), &first);
    assert_eq!(v, Verdict::Forward(Side::Internet));
}

#[test]
fn d9_fragments_are_not_carried_and_say_why() {
    let (mut e, _) = gw_engine();
    let big = build::udp(a("10.0.2.5"), 1000, client(), 53, &[7u8; 600]);
    for f in build::fragment(&big, 256) {
        let (v, _) = run(&mut e, Side::Eni(8), &f);
        assert_eq!(v, Verdict::Drop(DropReason::NatGatewayFragment));
    }
}

#[test]
fn d9_sessions_outlive_a_new_table_and_are_shared_by_every_worker() {
    let napt = napt_with(NaptConfig::cloud());
    let mut out_worker = Engine::new(gw_table(&napt));
    let mut in_worker = Engine::new(gw_table(&napt));
    let (_, out) = run(
        &mut out_worker,
        Side::Eni(8),
        &build::tcp(a("10.0.2.5"), 40000, client(), 80, 0x02, b""),
    );
    // A new table (an API change elsewhere) with the same gateway.
    in_worker.set_table(gw_table(&napt));
    let reply = build::tcp(client(), 80, a(GW_SNAT), sport_of(&out), 0x12, b"");
    let (v, back) = run(&mut in_worker, Side::Internet, &reply);
    assert_eq!(v, Verdict::Forward(Side::Eni(8)));
    assert_eq!(dport_of(&back), 40000);
}

#[test]
fn d9_ttl_one_is_answered_with_time_exceeded_and_makes_no_session() {
    let (mut e, napt) = gw_engine();
    let mut pkt = build::udp(a("10.0.2.5"), 1000, client(), 53, b"");
    pkt[8] = 1;
    pkt[10] = 0;
    pkt[11] = 0;
    let c = checksum::checksum(&pkt[..20]);
    pkt[10..12].copy_from_slice(&c.to_be_bytes());
    let (v, reply) = run(&mut e, Side::Eni(8), &pkt);
    assert!(matches!(v, Verdict::Reply { .. }), "{v:?}");
    assert_eq!(reply[20], 11);
    assert_eq!(napt.lock().unwrap().sessions(), 0);
}

fn run_batch(e: &mut Engine, pkts: &[(Side, Vec<u8>)]) -> Vec<(Verdict, Vec<u8>)> {
    run_batch_at(e, T0, pkts)
}

#[test]
fn d9_a_batch_decides_gateway_packets_as_one_packet_at_a_time_would() {
    // Two gateways' worth of state, built alike: one engine takes packets one by one, the
    // other in batches (where established gateway flows go through `gateway_batch`).
    let (mut single, _) = gw_engine();
    let (mut batched, napt) = gw_engine();
    let mut out = Vec::new();
    for k in 0..40u16 {
        out.push((
            Side::Eni(8),
            build::udp(a("10.0.2.5"), 30000 + k, client(), 53, b"q"),
        ));
        out.push((
            Side::Eni(8),
            build::tcp(a("10.0.2.5"), 31000 + k, client(), 443, 0x02, b""),
        ));
        // Not the gateway's: a NAT-mode EIP, a source check, a source no entry covers.
        out.push((
            Side::Eni(1),
            build::udp(a("10.0.1.10"), 1000 + k, client(), 53, b"x"),
        ));
        out.push((
            Side::Eni(8),
            build::udp(a("10.0.1.10"), 1, client(), 2, b""),
        ));
        out.push((
            Side::Eni(10),
            build::udp(a("10.0.2.7"), 1, client(), 2, b""),
        ));
    }
    // DNAT in, on a port with an entry and one without.
    out.push((
        Side::Internet,
        build::tcp(client(), 50000, a(GW_DNAT), 8080, 0x02, b""),
    ));
    out.push((
        Side::Internet,
        build::tcp(client(), 50000, a(GW_DNAT), 22, 0x02, b""),
    ));
    let want: Vec<(Verdict, Vec<u8>)> = out
        .iter()
        .map(|(side, p)| run(&mut single, *side, p))
        .map(|(v, b)| (v, b[..b.len().min(576)].to_vec()))
        .collect();
    let got = run_batch(&mut batched, &out);
    assert_eq!(
        batched.st.gateway.taken(),
        82,
        "the SNAT flows and the DNAT packets take the batch path"
    );
    for (k, ((wv, wb), (gv, gb))) in want.iter().zip(&got).enumerate() {
        assert_eq!(gv, wv, "packet {k}: verdict");
        if matches!(wv, Verdict::Forward(_)) {
            assert_eq!(gb, wb, "packet {k}: bytes");
            assert_valid(gb);
        }
    }
    // The replies, as a second batch, and the counters of both engines.
    let replies: Vec<(Side, Vec<u8>)> = got
        .iter()
        .zip(&out)
        .filter(|((v, _), (side, _))| {
            *v == Verdict::Forward(Side::Internet) && *side == Side::Eni(8)
        })
        .map(|((_, b), _)| {
            let (sp, dp) = (sport_of(b), dport_of(b));
            let p = if b[9] == 17 {
                build::udp(client(), dp, a(GW_SNAT), sp, b"a")
            } else {
                build::tcp(client(), dp, a(GW_SNAT), sp, 0x12, b"")
            };
            (Side::Internet, p)
        })
        .collect();
    assert_eq!(replies.len(), 80);
    let want: Vec<Verdict> = replies
        .iter()
        .map(|(s, p)| run(&mut single, *s, p).0)
        .collect();
    let got = run_batch(&mut batched, &replies);
    assert_eq!(batched.st.gateway.taken(), 80);
    for (k, (w, (g, b))) in want.iter().zip(&got).enumerate() {
        assert_eq!(g, w, "reply {k}");
        assert_eq!(*g, Verdict::Forward(Side::Eni(8)), "reply {k}");
        assert_valid(b);
    }
    assert_eq!(napt.lock().unwrap().sessions(), 81);
    let (s, b) = (single.global_counters(), batched.global_counters());
    assert_eq!(s.received, b.received);
    assert_eq!(s.forwarded, b.forwarded);
    assert_eq!(s.drops, b.drops);
    for slot in [200, 201] {
        assert_eq!(
            single.eip_counters(slot),
            batched.eip_counters(slot),
            "slot {slot}"
        );
    }
    for eni in [1, 8, 9, 10] {
        assert_eq!(
            single.eni_counters(eni),
            batched.eni_counters(eni),
            "ENI {eni}"
        );
    }
}

#[test]
fn d11_a_dnat_target_with_its_own_eip_answers_from_that_eip() {
    // The legacy state: 10.0.1.10 (ENI 1, NAT EIP 198.51.100.1) is also a DNAT target.
    let dnat = vec![DnatRule {
        external: sa(GW_DNAT, 8080),
        protocol: DnatProtocol::Tcp,
        internal: sa("10.0.1.10", 80),
    }];
    let napt: SharedNapt = Arc::new(Mutex::new(
        Napt::new(NaptConfig::cloud(), Vec::new(), dnat).unwrap(),
    ));
    let table = builder()
        .eip(eip(201, GW_DNAT, None))
        .nat_gateway(NatGatewayConfig {
            id: "ngw-a".into(),
            napt,
            eips: vec![(a(GW_DNAT), 201)],
            sources: vec![(a("10.0.1.10"), 32)],
        })
        .build()
        .unwrap();
    let mut e = Engine::new(Arc::new(table));
    let syn = build::tcp(client(), 50000, a(GW_DNAT), 8080, 0x02, b"");
    let (v, out) = run(&mut e, Side::Internet, &syn);
    assert_eq!(
        v,
        Verdict::Forward(Side::Eni(1)),
        "the entry still delivers"
    );
    assert_eq!((dst_of(&out), dport_of(&out)), (a("10.0.1.10"), 80));
    // The instance's own EIP carries its internet traffic: the answer leaves from it.
    let synack = build::tcp(a("10.0.1.10"), 80, client(), 50000, 0x12, b"");
    let (v, back) = run(&mut e, Side::Eni(1), &synack);
    assert_eq!(v, Verdict::Forward(Side::Internet));
    assert_eq!((src_of(&back), sport_of(&back)), (a("198.51.100.1"), 80));
    assert_valid(&back);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Addresses a packet around the gateway may carry: its hosts, its EIPs, an instance's
    /// NAT EIP and private IP, the internet, the gateways' own addresses.
    const ADDRS: [&str; 9] = [
        "10.0.2.5",
        "10.0.2.6",
        "10.0.2.7",
        GW_SNAT,
        GW_DNAT,
        "10.0.1.10",
        "198.51.100.1",
        "203.0.113.7",
        "10.0.1.253",
    ];

    #[derive(Clone, Debug)]
    struct Pkt {
        side: u8,
        kind: u8,
        src: usize,
        dst: usize,
        sport: u16,
        dport: u16,
        ttl: u8,
        /// A byte to flip (index, mask), breaking the packet somewhere.
        flip: Option<(usize, u8)>,
    }

    fn pkt() -> impl Strategy<Value = Pkt> {
        (
            0u8..4,
            0u8..4,
            0..ADDRS.len(),
            0..ADDRS.len(),
            prop_oneof![Just(53u16), Just(8080), Just(5353), 1u16..4],
            prop_oneof![Just(53u16), Just(8080), Just(5353), 1u16..4],
            prop_oneof![Just(64u8), Just(1)],
            proptest::option::weighted(0.2, (0usize..80, 1u8..=255)),
        )
            .prop_map(|(side, kind, src, dst, sport, dport, ttl, flip)| Pkt {
                side,
                kind,
                src,
                dst,
                sport,
                dport,
                ttl,
                flip,
            })
    }

    fn bytes(p: &Pkt, prev: &[u8]) -> (Side, Vec<u8>) {
        let (s, d) = (a(ADDRS[p.src]), a(ADDRS[p.dst]));
        let mut b = match p.kind {
            0 => build::udp(s, p.sport, d, p.dport, b"data"),
            1 => build::tcp(s, p.sport, d, p.dport, 0x02, b""),
            2 => build::ping(s, d, p.sport, 1, b"ping"),
            // An ICMP error quoting the previous packet (whatever it was).
            _ => build::icmp(s, d, 3, 3, 0, &prev[..prev.len().min(48)]),
        };
        mangle(&mut b, p.ttl, p.flip);
        let side = match p.side {
            0 => Side::Internet,
            1 => Side::Eni(8),
            2 => Side::Eni(9),
            _ => Side::Eni(1),
        };
        (side, b)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever crosses the gateway, one by one or in a batch: no panic, every packet
        /// decided, and every packet built whole and forwarded leaves with valid checksums.
        #[test]
        fn any_traffic_around_a_gateway_is_decided_and_stays_valid(
            pkts in proptest::collection::vec(pkt(), 1..40)
        ) {
            let (mut single, _) = gw_engine();
            let (mut batched, _) = gw_engine();
            let mut prev = build::udp(client(), 53, a(GW_SNAT), 1024, b"");
            let mut all = Vec::new();
            for p in &pkts {
                let (side, b) = bytes(p, &prev);
                let (v, out) = run(&mut single, side, &b);
                if p.flip.is_none() && matches!(v, Verdict::Forward(_)) && p.kind != 3 {
                    assert_valid(&out);
                }
                prev = b.clone();
                all.push((side, b));
            }
            for (k, (v, out)) in run_batch(&mut batched, &all).iter().enumerate() {
                prop_assert_ne!(*v, UNDECIDED, "packet {} undecided", k);
                if pkts[k].flip.is_none() && matches!(v, Verdict::Forward(_)) && pkts[k].kind != 3 {
                    assert_valid(out);
                }
            }
            let s = single.global_counters();
            prop_assert_eq!(s.received.packets, pkts.len() as u64);
        }
    }
}
