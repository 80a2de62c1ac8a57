//! Tables, traffic and the checked window runner shared by the translate bench, the gateway
//! bench and the instructions-per-packet harness (`examples/ipp.rs`), each of which includes
//! this file with `#[path = …] mod traffic;`, so all three measure the same packets.
//!
//! - Tables are shaped like a real region's: EIPs from 198.18.0.0/15 (the RFC 2544
//!   benchmark range), private IPs in 10.0.0.0/8 on ENIs of 1 to 50 private IPs each (sizes
//!   drawn at random, one /25 per ENI, 32 ENIs per /20 vSwitch sharing its gateway), the NAT
//!   mapping between EIPs and private IPs shuffled (an ENI's EIPs are not neighbours in the
//!   slot space), bandwidth 100,000 Mbit/s on every EIP (the policer runs on every packet but
//!   never drops here) and the default ALG policy (every protocol `drop`, so `classify` runs
//!   on every NAT packet).
//! - Traffic is one packet per EIP (per private IP for outbound), in a deterministic
//!   shuffled order, so successive batches touch different table entries.
//! - [`Runner`] feeds the engine from a pool of pre-built buffers larger than L2 (see
//!   [`Runner`]) and checks every packet it processed (see [`check_packet`]).

// Each includer uses part of this file.
#![allow(dead_code)]

use core::net::{Ipv4Addr, SocketAddrV4};
use eiplab::clb::{BackendConfig, Clb, ClbConfig, ListenerConfig, ListenerProtocol};
use eiplab::engine::table::{ClbTableConfig, NatGatewayConfig};
use eiplab::engine::{
    AssociationMode, DropReason, EipAssociation, EipConfig, Engine, EngineConfig, EniConfig, EniId,
    InstanceRef, PacketBuf, Side, Table, TableBuilder, Verdict,
};
use eiplab::napt::{Napt, NaptConfig, Proto, SnatRule};
use eiplab::wire::build;
use std::hint::black_box;
use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Packets per `process_batch` call, as a NIC ring would hand them over.
pub const BATCH: usize = 256;
/// Total IPv4 length of the plain UDP and TCP packets.
pub const PKT_LEN: usize = 64;
/// Room in each buffer (an mbuf-sized buffer; the engine may write ICMP answers into it).
pub const BUF_CAP: usize = 2048;
/// Time between two packets as `now` sees it.
pub const NS_PER_PKT: u64 = 20;
pub const SIZES: &[usize] = &[1, 1_000, 100_000];
/// Cut-through (BINDED) puts each EIP on its own secondary ENI, in place of that ENI's
/// primary private IP: 100,000 BINDED EIPs would need 100,000 ENIs, more than the 65,536
/// ids `EniId` (u16) can name, so these groups stop at 60,000 EIPs on 60,000 ENIs. BINDED is
/// kept (rather than MULTI_BINDED, 10 EIPs per ENI) because it is the mode these groups are
/// about; the engine's internet-side code paths are the same for both modes.
pub const CUT_THROUGH_SIZES: &[usize] = &[1, 1_000, 60_000];
const MAX_IPS_PER_ENI: u64 = 50;
const BANDWIDTH_MBPS: u32 = 100_000;
/// Start of `now`: 1 s.
pub const T0: u64 = 1_000_000_000;
/// What every buffer's verdict is set to before the engine sees it: no expectation is ever
/// this, so a buffer the engine did not decide fails the check.
pub const UNDECIDED: Verdict = Verdict::Reply {
    to: Side::CloudServices,
    len: usize::MAX,
};
const LINE: usize = 64;

// ---- deterministic randomness -------------------------------------------------------------

/// SplitMix64: a fixed seed per case, so every run measures the same traffic.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }

    /// A port clear of every ALG well-known port (those are all below 10,000).
    pub fn ephemeral_port(&mut self) -> u16 {
        10_000 + self.below(50_000) as u16
    }

    /// A host somewhere on the internet (the TEST-NETs of RFC 5737: outside the VPC, the
    /// cloud services range and the EIP pool, so no hairpin).
    pub fn internet_host(&mut self) -> Ipv4Addr {
        const NETS: [u32; 3] = [0xC000_0200, 0xC633_6400, 0xCB00_7100];
        Ipv4Addr::from(NETS[self.below(3) as usize] + 1 + self.below(254) as u32)
    }

    pub fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            *x = self.next() as u8;
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.fill(&mut v);
        v
    }
}

// ---- address plan --------------------------------------------------------------------------

/// EIP number `i`: 198.18.0.0 + i (the /15 holds 131,072).
pub fn eip_addr(i: usize) -> Ipv4Addr {
    assert!(i < 1 << 17, "198.18.0.0/15 holds 131,072 EIPs");
    Ipv4Addr::from(0xC612_0000 + i as u32)
}

/// ENI `e` owns 10.0.0.0 + 128·e /25; its private IPs are at +4.., unassigned +64..
fn eni_block(e: usize) -> u32 {
    0x0A00_0000 + (e as u32) * 128
}

fn private_ip(e: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::from(eni_block(e) + 4 + j as u32)
}

/// An address in ENI `e`'s subnet that the cloud never assigned to it.
fn unassigned_ip(e: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::from(eni_block(e) + 64 + j as u32)
}

fn eni_config(e: usize, private_ips: Vec<Ipv4Addr>) -> EniConfig {
    EniConfig {
        id: EniId::try_from(e).expect("ENI ids are u16"),
        instance: Some(InstanceRef {
            id: e as u32,
            running: true,
        }),
        // The vSwitch (a /20) gateway, at its .1.
        gateway: Some(Ipv4Addr::from((eni_block(e) & !0xfff) + 1)),
        private_ips,
    }
}

fn base_table() -> TableBuilder {
    TableBuilder::new().vpc_prefix(Ipv4Addr::new(10, 0, 0, 0), 8)
}

/// A NAT-style region: `n` private IPs on ENIs of 1..=50 each and `n` EIPs, EIP `perm[p]`
/// on private IP `p` when `associate`, else all EIPs unassociated.
struct NatWorld {
    table: Table,
    /// Private IPs of each ENI (index = ENI id).
    enis: Vec<Vec<Ipv4Addr>>,
    /// Per EIP: its ENI and private IP, when associated.
    eips: Vec<Option<(EniId, Ipv4Addr)>>,
    /// Per ENI, per private IP: the EIP it speaks through.
    eip_of: Vec<Vec<usize>>,
}

fn nat_world(n: usize, associate: bool, rng: &mut Rng) -> NatWorld {
    let mut enis: Vec<Vec<Ipv4Addr>> = Vec::new();
    let mut left = n;
    while left > 0 {
        let k = ((1 + rng.below(MAX_IPS_PER_ENI)) as usize).min(left);
        let e = enis.len();
        enis.push((0..k).map(|j| private_ip(e, j)).collect());
        left -= k;
    }
    let mut perm: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut perm);

    let mut b = base_table();
    for (e, ips) in enis.iter().enumerate() {
        b = b.eni(eni_config(e, ips.clone()));
    }
    let mut eips = vec![None; n];
    let mut eip_of = Vec::with_capacity(enis.len());
    let mut p = 0;
    for (e, ips) in enis.iter().enumerate() {
        let mut mine = Vec::with_capacity(ips.len());
        for &ip in ips {
            let i = perm[p];
            p += 1;
            mine.push(i);
            if associate {
                eips[i] = Some((e as EniId, ip));
            }
        }
        eip_of.push(mine);
    }
    for (i, a) in eips.iter().enumerate() {
        b = b.eip(EipConfig {
            slot: i as u32,
            address: eip_addr(i),
            bandwidth_mbps: BANDWIDTH_MBPS,
            association: a.map(|(eni, ip)| EipAssociation {
                mode: AssociationMode::Nat,
                eni,
                private_ip: Some(ip),
            }),
        });
    }
    let table = b.build().expect("NAT table builds");
    assert_eq!(table.eip_count(), n);
    NatWorld {
        table,
        enis,
        eips,
        eip_of,
    }
}

/// `n` EIPs, each BINDED to its own ENI (whose only private IP it replaces).
fn cut_through_table(n: usize) -> Table {
    let mut b = base_table();
    for e in 0..n {
        b = b.eni(eni_config(e, vec![private_ip(e, 0)]));
    }
    for i in 0..n {
        b = b.eip(EipConfig {
            slot: i as u32,
            address: eip_addr(i),
            bandwidth_mbps: BANDWIDTH_MBPS,
            association: Some(EipAssociation {
                mode: AssociationMode::Binded,
                eni: i as EniId,
                private_ip: None,
            }),
        });
    }
    let table = b.build().expect("cut-through table builds");
    assert_eq!(table.eip_count(), n);
    table
}

// ---- packets -------------------------------------------------------------------------------

/// What a packet carries above IP.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Payload {
    /// UDP, 36 random payload bytes (64 bytes in all): no ALG signature, like TLS.
    Udp,
    /// TCP (PSH|ACK), 24 random payload bytes (64 bytes in all).
    Tcp,
    /// UDP carrying QUIC v1 (RFC 9000 §17): see [`quic_payload`].
    Quic,
    /// UDP carrying RTP (RFC 3550 §5.1): see [`rtp_payload`].
    Rtp,
}

/// A QUIC v1 datagram as a server sends it: one in eight starts a long-header packet
/// (first byte 0xC0 | type << 4 | packet-number length, version 0x00000001, 8-byte
/// connection ids; an Initial or Handshake padded to 1,200 bytes), the others are 1-RTT
/// short-header packets (first byte 0x40 | spin bit | protected bits, then the client's
/// connection id), either full-size (1,252 bytes) or a small ACK (40 bytes).
/// What follows the header is random, as encrypted bytes look.
fn quic_payload(rng: &mut Rng) -> Vec<u8> {
    if rng.below(8) == 0 {
        let mut p = rng.bytes(1_200);
        // An Initial (type 0) or a Handshake (type 2); the low four bits are under header
        // protection: random on the wire.
        let ty = if rng.below(2) == 0 { 0 } else { 2 };
        p[0] = 0xC0 | (ty << 4) | rng.below(16) as u8;
        p[1..5].copy_from_slice(&1u32.to_be_bytes());
        p[5] = 8; // DCID length, DCID in 6..14
        p[14] = 8; // SCID length, SCID in 15..23
        let mut at = 23;
        if ty == 0 {
            p[at] = 0; // no token
            at += 1;
        }
        // Length (2-byte varint) of packet number and payload: the rest of the datagram.
        let rest = (p.len() - at - 2) as u16;
        p[at..at + 2].copy_from_slice(&(0x4000 | rest).to_be_bytes());
        p
    } else {
        let len = if rng.below(2) == 0 { 1_252 } else { 40 };
        let mut p = rng.bytes(len);
        // The spin bit and, under header protection, the rest: random on the wire.
        p[0] = 0x40 | rng.below(64) as u8;
        p
    }
}

/// An RTP packet (version 2, no padding, extension or CSRCs, marker clear): payload type
/// PCMU (0) or PCMA (8) with 20 ms of 8 kHz audio (160 bytes), Opus (dynamic type 111,
/// 80 bytes) or video (dynamic type 96, 1,100 bytes), then sequence number, timestamp and
/// SSRC.
fn rtp_payload(rng: &mut Rng) -> Vec<u8> {
    let (pt, body) = match rng.below(4) {
        0 => (0u8, 160),
        1 => (8, 160),
        2 => (111, 80),
        _ => (96, 1_100),
    };
    let mut p = rng.bytes(12 + body);
    p[0] = 0x80;
    p[1] = pt;
    // Sequence, timestamp and SSRC stay random: any value is valid.
    p
}

fn packet(
    payload: Payload,
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    rng: &mut Rng,
) -> Vec<u8> {
    let p = match payload {
        Payload::Udp => build::udp(src, sport, dst, dport, &rng.bytes(36)),
        Payload::Tcp => build::tcp(src, sport, dst, dport, 0x18, &rng.bytes(24)),
        Payload::Quic => build::udp(src, sport, dst, dport, &quic_payload(rng)),
        Payload::Rtp => build::udp(src, sport, dst, dport, &rtp_payload(rng)),
    };
    if matches!(payload, Payload::Udp | Payload::Tcp) {
        assert_eq!(p.len(), PKT_LEN);
    }
    p
}

/// What the engine must answer for one packet, and the addresses the packet must carry
/// afterwards.
#[derive(Clone, Copy)]
pub struct Expect {
    pub verdict: Verdict,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

/// Precomputed packets (stored back to back), the side each comes from, and what to expect.
#[derive(Default)]
pub struct Traffic {
    bytes: Vec<u8>,
    /// Where packet `i` starts in `bytes` (one more entry: the end).
    starts: Vec<usize>,
    pub sides: Vec<Side>,
    pub expect: Vec<Expect>,
}

impl Traffic {
    fn push(&mut self, side: Side, pkt: &[u8], verdict: Verdict, src: Ipv4Addr, dst: Ipv4Addr) {
        assert!(pkt.len() <= BUF_CAP);
        assert_ne!(verdict, UNDECIDED);
        if self.starts.is_empty() {
            self.starts.push(0);
        }
        self.bytes.extend_from_slice(pkt);
        self.starts.push(self.bytes.len());
        self.sides.push(side);
        self.expect.push(Expect { verdict, src, dst });
    }

    pub fn len(&self) -> usize {
        self.sides.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sides.is_empty()
    }

    pub fn packet(&self, i: usize) -> &[u8] {
        &self.bytes[self.starts[i]..self.starts[i + 1]]
    }
}

pub struct Case {
    pub table: Table,
    pub traffic: Traffic,
}

/// Internet -> every EIP once, shuffled, from an ephemeral port to `dport` (`None`: an
/// ephemeral one too). `corrupt` breaks the header checksum; `expect` gives the verdict and
/// destination after translation.
fn inbound_case(
    table: Table,
    n: usize,
    payload: Payload,
    dport: Option<u16>,
    corrupt: bool,
    rng: &mut Rng,
    mut expect: impl FnMut(usize) -> (Verdict, Ipv4Addr),
) -> Case {
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let mut traffic = Traffic::default();
    for i in order {
        let peer = rng.internet_host();
        let sport = rng.ephemeral_port();
        let dport = dport.unwrap_or_else(|| rng.ephemeral_port());
        let mut p = packet(payload, peer, sport, eip_addr(i), dport, rng);
        if corrupt {
            p[10] ^= 0x5a;
        }
        let (v, dst) = expect(i);
        traffic.push(Side::Internet, &p, v, peer, dst);
    }
    Case { table, traffic }
}

/// Every ENI, in shuffled order, sends one packet from each of its sources (shuffled) to
/// the internet: consecutive packets of one ENI follow each other, as one ENI queue's burst
/// would; a window takes whatever ENIs come next (a batch may mix them).
fn outbound_case(
    table: Table,
    payload: Payload,
    sources: Vec<Vec<(Ipv4Addr, Verdict, Ipv4Addr)>>,
    rng: &mut Rng,
) -> Case {
    let mut order: Vec<usize> = (0..sources.len()).collect();
    rng.shuffle(&mut order);
    let mut traffic = Traffic::default();
    for e in order {
        let mut srcs = sources[e].clone();
        rng.shuffle(&mut srcs);
        for (src, v, new_src) in srcs {
            let peer = rng.internet_host();
            let p = packet(payload, src, rng.ephemeral_port(), peer, 443, rng);
            traffic.push(Side::Eni(e as EniId), &p, v, new_src, peer);
        }
    }
    Case { table, traffic }
}

fn nat_inbound(
    n: usize,
    payload: Payload,
    dport: Option<u16>,
    corrupt: bool,
    want: Option<DropReason>,
) -> Case {
    let rng = &mut Rng(0x1b_0000 + n as u64);
    let w = nat_world(n, true, rng);
    let eips = w.eips;
    inbound_case(w.table, n, payload, dport, corrupt, rng, |i| {
        let (eni, private) = eips[i].expect("associated");
        match want {
            None => (Verdict::Forward(Side::Eni(eni)), private),
            Some(r) => (Verdict::Drop(r), eip_addr(i)),
        }
    })
}

pub fn nat_inbound_udp(n: usize) -> Case {
    nat_inbound(n, Payload::Udp, Some(443), false, None)
}

pub fn nat_inbound_tcp(n: usize) -> Case {
    nat_inbound(n, Payload::Tcp, Some(443), false, None)
}

/// QUIC from servers' ephemeral ports to guests' ephemeral ports (a port-based classifier
/// has nothing to go on; the payload test runs).
pub fn nat_inbound_udp_quic(n: usize) -> Case {
    nat_inbound(n, Payload::Quic, None, false, None)
}

/// RTP media between ephemeral ports, as SIP/SDP negotiates it.
pub fn nat_inbound_udp_rtp(n: usize) -> Case {
    nat_inbound(n, Payload::Rtp, None, false, None)
}

fn nat_outbound(n: usize, payload: Payload) -> Case {
    let rng = &mut Rng(0x2b_0000 + n as u64);
    let w = nat_world(n, true, rng);
    let sources = w
        .enis
        .iter()
        .zip(&w.eip_of)
        .map(|(ips, eips)| {
            ips.iter()
                .zip(eips)
                .map(|(&ip, &i)| (ip, Verdict::Forward(Side::Internet), eip_addr(i)))
                .collect()
        })
        .collect();
    outbound_case(w.table, payload, sources, rng)
}

pub fn nat_outbound_udp(n: usize) -> Case {
    nat_outbound(n, Payload::Udp)
}

pub fn nat_outbound_tcp(n: usize) -> Case {
    nat_outbound(n, Payload::Tcp)
}

pub fn cut_through_inbound_udp(n: usize) -> Case {
    let rng = &mut Rng(0x3b_0000 + n as u64);
    let table = cut_through_table(n);
    inbound_case(table, n, Payload::Udp, Some(443), false, rng, |i| {
        (Verdict::Forward(Side::Eni(i as EniId)), eip_addr(i))
    })
}

pub fn cut_through_outbound_udp(n: usize) -> Case {
    let rng = &mut Rng(0x4b_0000 + n as u64);
    let table = cut_through_table(n);
    // One source per ENI (its EIP), so every packet of a batch comes from another ENI.
    let sources = (0..n)
        .map(|i| vec![(eip_addr(i), Verdict::Forward(Side::Internet), eip_addr(i))])
        .collect();
    outbound_case(table, Payload::Udp, sources, rng)
}

pub fn drop_unassociated(n: usize) -> Case {
    let rng = &mut Rng(0x5b_0000 + n as u64);
    // The same region, but no EIP associated (allocated, waiting in the pool).
    let w = nat_world(n, false, rng);
    inbound_case(w.table, n, Payload::Udp, Some(443), false, rng, |i| {
        (Verdict::Drop(DropReason::EipUnassociated), eip_addr(i))
    })
}

pub fn drop_unknown_destination(n: usize) -> Case {
    let rng = &mut Rng(0x6b_0000 + n as u64);
    let w = nat_world(n, true, rng);
    // Internet -> addresses the gateway does not own (45.0.0.0/8, one per EIP, shuffled):
    // every lookup is a miss in the address map.
    let mut order: Vec<u32> = (0..n as u32).collect();
    rng.shuffle(&mut order);
    let mut traffic = Traffic::default();
    for k in order {
        let peer = rng.internet_host();
        let dst = Ipv4Addr::from(0x2D00_0000 + k);
        let p = packet(Payload::Udp, peer, rng.ephemeral_port(), dst, 443, rng);
        traffic.push(
            Side::Internet,
            &p,
            Verdict::Drop(DropReason::UnknownDestination),
            peer,
            dst,
        );
    }
    Case {
        table: w.table,
        traffic,
    }
}

pub fn drop_alg(n: usize) -> Case {
    // SIP (UDP 5060) to a NAT EIP under the default policy (drop).
    nat_inbound(n, Payload::Udp, Some(5060), false, Some(DropReason::AlgSip))
}

pub fn drop_source_check(n: usize) -> Case {
    let rng = &mut Rng(0x7b_0000 + n as u64);
    let w = nat_world(n, true, rng);
    // Each guest sends from addresses of its own subnet the cloud never assigned to its ENI
    // (as many as the ENI has private IPs): lookups miss, D6 drops.
    let sources = w
        .enis
        .iter()
        .enumerate()
        .map(|(e, ips)| {
            (0..ips.len())
                .map(|j| {
                    let a = unassigned_ip(e, j);
                    (a, Verdict::Drop(DropReason::SourceCheck), a)
                })
                .collect()
        })
        .collect();
    outbound_case(w.table, Payload::Udp, sources, rng)
}

pub fn drop_malformed(n: usize) -> Case {
    // NAT inbound UDP with a broken IPv4 header checksum.
    nat_inbound(
        n,
        Payload::Udp,
        Some(443),
        true,
        Some(DropReason::BadHeaderChecksum),
    )
}

// ---- the NAT gateway (D9) ------------------------------------------------------------------

/// Established flows through a NAT gateway: 1,000 and 1,000,000 sessions.
pub const NATGW_SIZES: &[usize] = &[1_000, 1_000_000];
/// Private hosts behind the gateway, one per ENI.
const NATGW_HOSTS: usize = 64;
/// The gateway's EIPs: enough ports for 1,000,000 mappings (64,512 each).
const NATGW_EIPS: usize = 32;

/// One established UDP flow: the host's ENI and endpoint, the remote, and the external
/// endpoint the gateway gave it.
struct GatewayFlow {
    eni: EniId,
    host: SocketAddrV4,
    remote: SocketAddrV4,
    external: SocketAddrV4,
}

/// `n` UDP flows from 64 hosts (one per ENI, SNAT for all of 10.0.0.0/8 through 32 EIPs, the
/// cloud's NAPT defaults), established in the gateway's NAPT before the engine sees a packet,
/// in a shuffled order.
fn natgw_world(n: usize, rng: &mut Rng) -> (Table, Vec<GatewayFlow>) {
    let eips: Vec<Ipv4Addr> = (0..NATGW_EIPS).map(eip_addr).collect();
    let mut napt = Napt::new(
        NaptConfig::cloud(),
        vec![SnatRule {
            source: Ipv4Addr::new(10, 0, 0, 0),
            prefix_len: 8,
            eips: eips.clone(),
        }],
        Vec::new(),
    )
    .expect("SNAT rules");
    let mut flows = Vec::with_capacity(n);
    for k in 0..n {
        let e = k % NATGW_HOSTS;
        let host = SocketAddrV4::new(private_ip(e, 0), 1024 + (k / NATGW_HOSTS) as u16);
        let remote = SocketAddrV4::new(rng.internet_host(), 443);
        let t = napt
            .outbound(T0, Proto::Udp, host, remote)
            .expect("a session for every flow");
        flows.push(GatewayFlow {
            eni: e as EniId,
            host,
            remote,
            external: t.src,
        });
    }
    assert_eq!(napt.sessions(), n);
    rng.shuffle(&mut flows);
    let mut b = base_table();
    for e in 0..NATGW_HOSTS {
        b = b.eni(eni_config(e, vec![private_ip(e, 0)]));
    }
    for (i, &a) in eips.iter().enumerate() {
        b = b.eip(EipConfig {
            slot: i as u32,
            address: a,
            bandwidth_mbps: BANDWIDTH_MBPS,
            association: None,
        });
    }
    let b = b.nat_gateway(NatGatewayConfig {
        id: "ngw-bench".into(),
        napt: Arc::new(Mutex::new(napt)),
        eips: eips
            .iter()
            .enumerate()
            .map(|(i, &a)| (a, i as u32))
            .collect(),
        sources: vec![(Ipv4Addr::new(10, 0, 0, 0), 8)],
    });
    (b.build().expect("NAT gateway table builds"), flows)
}

/// Guest -> internet on established gateway flows: leaves from the flow's external address.
pub fn natgw_outbound_udp(n: usize) -> Case {
    let rng = &mut Rng(0x9a7e_0000 + n as u64);
    let (table, flows) = natgw_world(n, rng);
    let mut traffic = Traffic::default();
    for f in &flows {
        let p = packet(
            Payload::Udp,
            *f.host.ip(),
            f.host.port(),
            *f.remote.ip(),
            443,
            rng,
        );
        let v = Verdict::Forward(Side::Internet);
        traffic.push(Side::Eni(f.eni), &p, v, *f.external.ip(), *f.remote.ip());
    }
    Case { table, traffic }
}

/// Internet -> guest on established gateway flows: the replies, to the host's own address.
pub fn natgw_inbound_udp(n: usize) -> Case {
    let rng = &mut Rng(0x9a7f_0000 + n as u64);
    let (table, flows) = natgw_world(n, rng);
    let mut traffic = Traffic::default();
    for f in &flows {
        let (r, x) = (f.remote, f.external);
        let p = packet(Payload::Udp, *r.ip(), r.port(), *x.ip(), x.port(), rng);
        let v = Verdict::Forward(Side::Eni(f.eni));
        traffic.push(Side::Internet, &p, v, *r.ip(), *f.host.ip());
    }
    Case { table, traffic }
}

// ---- CLB (SPEC D13) ------------------------------------------------------------------------

/// Connections through the CLB (the natgw groups' sizes).
pub const CLB_SIZES: &[usize] = NATGW_SIZES;
/// The CLB's backends, one per ENI (ENIs 0, 1, 2), weighted 3 : 2 : 1.
const CLB_WEIGHTS: [u16; 3] = [3, 2, 1];
const CLB_PORT: u16 = 80;
const CLB_BACKEND_PORT: u16 = 8080;

/// One established TCP connection through the CLB: the client, and the backend's ENI and
/// address (at the backend port) the CLB keeps it on.
struct ClbConn {
    client: SocketAddrV4,
    eni: EniId,
    backend: SocketAddrV4,
}

/// A CLB on EIP 0 (TCP 80 -> 8080 on three backends, weighted round robin, the cloud's
/// defaults otherwise) with `n` TCP connections from distinct internet clients, each made
/// by one SYN through the CLB before the engine sees a packet, in a shuffled order.
fn clb_world(n: usize, rng: &mut Rng) -> (Table, Vec<ClbConn>) {
    let mut tcp = ListenerConfig::tcp(CLB_PORT);
    tcp.backend_port = CLB_BACKEND_PORT;
    tcp.backends = CLB_WEIGHTS
        .iter()
        .enumerate()
        .map(|(e, &weight)| BackendConfig {
            addr: private_ip(e, 0),
            weight,
        })
        .collect();
    let mut clb = Clb::new(ClbConfig {
        listeners: vec![tcp],
        max_connections: n,
    });
    const NETS: [u32; 3] = [0xC000_0200, 0xC633_6400, 0xCB00_7100];
    let mut conns = Vec::with_capacity(n);
    for k in 0..n {
        // 762 hosts of the TEST-NETs, from ports 1024 up: every client distinct.
        let host = Ipv4Addr::from(NETS[k % 3] + 1 + ((k / 3) % 254) as u32);
        let client = SocketAddrV4::new(host, 1024 + (k / 762) as u16);
        let backend = clb
            .inbound(T0, ListenerProtocol::Tcp, 0x02, client, CLB_PORT)
            .expect("a backend for every connection");
        let e = (0..CLB_WEIGHTS.len())
            .find(|&e| private_ip(e, 0) == *backend.ip())
            .expect("one of the backends");
        conns.push(ClbConn {
            client,
            eni: e as EniId,
            backend,
        });
    }
    assert_eq!(clb.connections(), n);
    rng.shuffle(&mut conns);
    let mut b = base_table();
    for e in 0..CLB_WEIGHTS.len() {
        b = b.eni(eni_config(e, vec![private_ip(e, 0)]));
    }
    let b = b
        .eip(EipConfig {
            slot: 0,
            address: eip_addr(0),
            bandwidth_mbps: BANDWIDTH_MBPS,
            association: None,
        })
        .clb(ClbTableConfig {
            id: "lb-bench".into(),
            clb: Arc::new(Mutex::new(clb)),
            vip: None,
            eip: Some((eip_addr(0), 0)),
            backend_enis: (0..CLB_WEIGHTS.len() as EniId).collect(),
        });
    (b.build().expect("CLB table builds"), conns)
}

/// Internet -> the CLB's EIP on established connections (PSH|ACK): to the connection's
/// backend, at its private address and the backend port.
pub fn clb_inbound_tcp(n: usize) -> Case {
    let rng = &mut Rng(0xc1b0_0000 + n as u64);
    let (table, conns) = clb_world(n, rng);
    let mut traffic = Traffic::default();
    for c in &conns {
        let (cl, eip) = (c.client, eip_addr(0));
        let p = packet(Payload::Tcp, *cl.ip(), cl.port(), eip, CLB_PORT, rng);
        let v = Verdict::Forward(Side::Eni(c.eni));
        traffic.push(Side::Internet, &p, v, *cl.ip(), *c.backend.ip());
    }
    Case { table, traffic }
}

/// Backends -> internet on established connections (the replies): out from the CLB's EIP
/// and listener port.
pub fn clb_outbound_tcp(n: usize) -> Case {
    let rng = &mut Rng(0xc1b1_0000 + n as u64);
    let (table, conns) = clb_world(n, rng);
    let mut traffic = Traffic::default();
    for c in &conns {
        let (b, cl) = (c.backend, c.client);
        let p = packet(Payload::Tcp, *b.ip(), b.port(), *cl.ip(), cl.port(), rng);
        let v = Verdict::Forward(Side::Internet);
        traffic.push(Side::Eni(c.eni), &p, v, eip_addr(0), *cl.ip());
    }
    Case { table, traffic }
}

pub type Build = fn(usize) -> Case;

/// Every case of the translate bench: group name, EIP counts, builder.
pub const CASES: &[(&str, &[usize], Build)] = &[
    ("nat_inbound_udp", SIZES, nat_inbound_udp),
    ("nat_inbound_udp_quic", SIZES, nat_inbound_udp_quic),
    ("nat_inbound_udp_rtp", SIZES, nat_inbound_udp_rtp),
    ("nat_inbound_tcp", SIZES, nat_inbound_tcp),
    ("nat_outbound_udp", SIZES, nat_outbound_udp),
    ("nat_outbound_tcp", SIZES, nat_outbound_tcp),
    (
        "cut_through_inbound_udp",
        CUT_THROUGH_SIZES,
        cut_through_inbound_udp,
    ),
    (
        "cut_through_outbound_udp",
        CUT_THROUGH_SIZES,
        cut_through_outbound_udp,
    ),
    ("drop_unassociated", SIZES, drop_unassociated),
    ("drop_unknown_destination", SIZES, drop_unknown_destination),
    ("drop_alg", SIZES, drop_alg),
    ("drop_source_check", SIZES, drop_source_check),
    ("drop_malformed", SIZES, drop_malformed),
    ("natgw_outbound_udp", NATGW_SIZES, natgw_outbound_udp),
    ("natgw_inbound_udp", NATGW_SIZES, natgw_inbound_udp),
    ("clb_inbound_tcp", CLB_SIZES, clb_inbound_tcp),
    ("clb_outbound_tcp", CLB_SIZES, clb_outbound_tcp),
];

/// The builder of a case of [`CASES`] by its group name.
pub fn case_named(name: &str) -> Option<Build> {
    CASES.iter().find(|c| c.0 == name).map(|c| c.2)
}

// ---- the check -----------------------------------------------------------------------------

/// One's complement sum of big-endian 16-bit words (an odd last byte padded with zero).
fn ones_sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u32::from(*last) << 8;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// Whether the TCP or UDP checksum of an IPv4 packet (header length `ihl` bytes) is right,
/// summed here from the pseudo-header (source, destination, zero, protocol, L4 length) and
/// the whole segment. A UDP checksum of zero means "none" (RFC 768): right only if the
/// packet came in without one too.
fn l4_checksum_ok(p: &[u8], ihl: usize, original_had_none: bool) -> bool {
    let proto = p[9];
    let seg = &p[ihl..];
    if proto == 17 && seg[6..8] == [0, 0] {
        return original_had_none;
    }
    let mut acc = ones_sum(0, &p[12..20]);
    acc = ones_sum(acc + u32::from(proto) + seg.len() as u32, seg);
    acc == 0xffff
}

fn addr(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// Checks one packet the engine decided: the verdict is the expected one, the addresses are
/// the expected ones and, when it is forwarded, the length is unchanged, the IPv4 header
/// checksum and the TCP/UDP checksum are valid and the TTL is one less than it came with.
/// Panics otherwise: a bench that measured the wrong path (or a wrong translation) stops.
pub fn check_packet(name: &str, i: usize, verdict: Verdict, out: &[u8], input: &[u8], e: &Expect) {
    let fail = |what: String| -> ! {
        panic!("{name}: packet #{i} {what}: the bench is not measuring the path it names")
    };
    if verdict != e.verdict {
        fail(format!("got {verdict:?}, expected {:?}", e.verdict));
    }
    let (src, dst) = (addr(&out[12..16]), addr(&out[16..20]));
    if (src, dst) != (e.src, e.dst) {
        fail(format!(
            "left as {src} -> {dst}, expected {} -> {}",
            e.src, e.dst
        ));
    }
    if !matches!(verdict, Verdict::Forward(_)) {
        return;
    }
    if out.len() != input.len() {
        fail(format!("changed length {} -> {}", input.len(), out.len()));
    }
    let ihl = usize::from(out[0] & 0x0f) * 4;
    if ones_sum(0, &out[..ihl]) != 0xffff {
        fail("has a wrong IPv4 header checksum".into());
    }
    if out[8] != input[8].wrapping_sub(1) {
        fail(format!("has TTL {} (came with {})", out[8], input[8]));
    }
    let had_none = input[9] == 17 && input[ihl + 6..ihl + 8] == [0, 0];
    if !l4_checksum_ok(out, ihl, had_none) {
        fail(format!("has a wrong L4 (protocol {}) checksum", out[9]));
    }
}

// ---- the runner ----------------------------------------------------------------------------

/// Bytes of the L2 cache of CPU 0 (Linux sysfs), 2 MiB when it cannot be read.
pub fn l2_bytes() -> usize {
    (0..8)
        .find_map(|k| {
            let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{k}");
            let level = std::fs::read_to_string(format!("{dir}/level")).ok()?;
            let ty = std::fs::read_to_string(format!("{dir}/type")).ok()?;
            if level.trim() != "2" || ty.trim() == "Instruction" {
                return None;
            }
            let size = std::fs::read_to_string(format!("{dir}/size")).ok()?;
            let size = size.trim();
            let (num, mult) = match size.strip_suffix('K') {
                Some(k) => (k, 1 << 10),
                None => match size.strip_suffix('M') {
                    Some(m) => (m, 1 << 20),
                    None => (size, 1),
                },
            };
            num.parse::<usize>().ok().map(|v| v * mult)
        })
        .unwrap_or(2 << 20)
}

/// Cache lines the bytes `data[..len]` lie on.
fn lines_of(p: &PacketBuf) -> usize {
    let a = p.data.as_ptr() as usize;
    (a + p.len).div_ceil(LINE) - a / LINE
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `process_batch` once per window (a batch may mix ingresses).
    Batch,
    /// `process` per packet.
    Single,
}

/// Feeds an engine a case's traffic a window of [`BATCH`] packets at a time, from a pool of
/// pre-built buffers processed in place.
///
/// The packets of the pool lie on more cache lines than twice the L2 cache holds, so by the
/// time the rotation comes back to a buffer its lines have been evicted from L1 and L2: the
/// engine reads its packets from further away, as it would read them from a NIC ring. After
/// each window, outside the timing, every packet is checked ([`check_packet`]) and its buffer
/// is refilled with the pre-built bytes of the packet it will carry on the next rotation
/// (the same packet when the pool is a multiple of the traffic; when the traffic is longer
/// than the pool, the next part of it, so every EIP is visited). Before each window every
/// verdict is set to [`UNDECIDED`], so a verdict left from a previous window never passes.
pub struct Runner {
    pub name: String,
    engine: Engine,
    traffic: Traffic,
    pool: Vec<PacketBuf>,
    /// Traffic index of the packet each buffer holds.
    idx: Vec<usize>,
    /// First buffer of the next window.
    next: usize,
    now: u64,
    api: Api,
    /// Packets handed to the engine so far (for instructions per packet).
    pub packets: u64,
}

impl Runner {
    /// Builds the pool and runs the whole traffic once, checked, before anything is measured.
    pub fn new(name: String, case: Case, api: Api) -> Self {
        assert!(!case.traffic.is_empty(), "{name}: no traffic");
        let traffic = case.traffic;
        let target = 2 * l2_bytes();
        let mut pool = Vec::new();
        let mut idx = Vec::new();
        let mut lines = 0;
        while lines * LINE < target || pool.len() % BATCH != 0 {
            let i = pool.len() % traffic.len();
            let mut p = PacketBuf::with_capacity(BUF_CAP);
            p.set(traffic.packet(i));
            p.ingress = traffic.sides[i];
            lines += lines_of(&p);
            pool.push(p);
            idx.push(i);
        }
        let mut r = Runner {
            name,
            engine: shell_engine(case.table),
            traffic,
            pool,
            idx,
            next: 0,
            now: T0,
            api,
            packets: 0,
        };
        r.run(r.traffic.len().div_ceil(BATCH));
        r
    }

    /// Buffers in the pool.
    pub fn pool_len(&self) -> usize {
        self.pool.len()
    }

    /// Readies the next window (verdicts undecided, `now` advanced); returns its buffers.
    fn prepare(&mut self) -> Range<usize> {
        let w = self.next..self.next + BATCH;
        self.next = w.end % self.pool.len();
        for p in &mut self.pool[w.clone()] {
            p.verdict = UNDECIDED;
        }
        self.now += BATCH as u64 * NS_PER_PKT;
        self.packets += BATCH as u64;
        w
    }

    /// The timed part: the engine over one window.
    #[inline(never)]
    fn process_window(&mut self, w: Range<usize>) {
        let Runner {
            engine,
            pool,
            now,
            api,
            ..
        } = self;
        let bufs = black_box(&mut pool[w]);
        match api {
            Api::Batch => engine.process_batch(black_box(*now), bufs),
            Api::Single => {
                for p in bufs.iter_mut() {
                    p.verdict =
                        engine.process(black_box(*now), p.ingress, &mut p.data, p.len, p.flags);
                }
            }
        }
    }

    /// Checks every packet of the window, then refills its buffers for the next rotation.
    fn check_and_restore(&mut self, w: Range<usize>) {
        let t = &self.traffic;
        let pool_len = self.pool.len();
        for (p, i) in self.pool[w.clone()].iter_mut().zip(&mut self.idx[w]) {
            check_packet(
                &self.name,
                *i,
                p.verdict,
                p.packet(),
                t.packet(*i),
                &t.expect[*i],
            );
            *i = (*i + pool_len) % t.len();
            p.set(t.packet(*i));
            p.ingress = t.sides[*i];
        }
    }

    /// `windows` windows, untimed (each checked).
    pub fn run(&mut self, windows: usize) {
        for _ in 0..windows {
            let w = self.prepare();
            self.process_window(w.clone());
            self.check_and_restore(w);
        }
    }

    /// `iters` windows; the time spent in the engine only.
    pub fn measure(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let w = self.prepare();
            let t = Instant::now();
            self.process_window(w.clone());
            total += t.elapsed();
            self.check_and_restore(w);
        }
        total
    }
}

/// An engine as the gateway's workers make it: its records in the shell's huge pages.
pub fn shell_engine(table: Table) -> Engine {
    Engine::with_memory(
        Arc::new(table),
        EngineConfig::default(),
        Some(Arc::new(eiplab::sys::memory::HugePages)),
    )
}
