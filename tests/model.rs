//! Model-based test of the translation engine (SPEC §2, D1–D8, and the engine's documented
//! counting): a random sequence of operations is applied both to an [`Engine`], through its
//! public API only, and to a plain reference model written here, and every result must agree.
//!
//! Operations: table publications (`set_table` with a newly built random table), single
//! packets (`process`), batches whose packets come from mixed sides (`process_batch`), and
//! time advances (policer refills). After every operation: each verdict, the bytes of every
//! forwarded packet and every gateway answer (echo reply, ICMP time exceeded), the whole
//! [`GlobalCounters`], and the counters of every EIP slot and every ENI id.
//!
//! The universe is small so that collisions are frequent: up to 7 ENI ids (attached or
//! detached, on 3 instances that are running or stopped, 1–3 private IPs each from one
//! 22-address pool, with or without a vSwitch gateway), up to 10 EIP slots with addresses from
//! a 20-address pool of 198.51.100.0/24 (unassociated, NAT to a primary or explicit private
//! IP, BINDED, MULTI_BINDED; 1–3 Mbit/s or unlimited), source check on or off, the VPC prefix
//! present or not, an internet gateway address or none, and an ALG policy mixing `drop` and
//! `pass` per protocol. A publication moves slots to other addresses, removes slots and ENIs,
//! and changes associations and bandwidths; the model keeps per-slot state across it unless
//! the slot's address changes, and per-ENI state by id.
//!
//! Packets: UDP (checksum or zero checksum), TCP, ICMP echo request and reply, 40–1500 bytes,
//! TTL 64, 2 or 1, DF set or not, from the internet, from any ENI id (unknown ones too) with
//! its own, another's or an unknown source, from the cloud services; to internet hosts, EIPs
//! (hairpin), private and unknown VPC addresses, gateways, 100.64.0.0/10. Ports are ephemeral
//! or one ALG port (D3 is modelled by port: SIP, H.323, RTSP, DNS, FTP, TFTP).
//!
//! Excluded (tests/properties.rs covers them): fragments, ICMP errors as input, malformed
//! packets, protocols other than TCP/UDP/ICMP, TUN checksum offload (`csum_partial`), payloads
//! that carry an ALG signature (every payload starts with a zero byte, so D3 is decided by
//! ports alone), and the `inspect` ALG action.
//! Tables are small, so `process_batch` does not prefetch records (the engine's unit tests
//! compare the prefetching pipeline with single packets on a large table).

mod common;

use common::cases;
use eiplab::alg::{AlgAction, AlgPolicy, AlgProtocol};
use eiplab::engine::stats::burst_bytes;
use eiplab::engine::{
    AssociationMode, Counter, DropReason, EipAssociation, EipConfig, EipSlot, Engine, EngineConfig,
    EniConfig, EniId, GlobalCounters, InstanceRef, PacketBuf, PacketFlags, Side, Table,
    TableBuilder, Verdict,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

// ---- addresses ---------------------------------------------------------------------------------

const fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

/// ENI ids a table may program (0..ENI_IDS); packets also come from ids up to 8.
const ENI_IDS: usize = 7;
/// EIP slots a table may program.
const SLOTS: usize = 10;
/// Private IPs are 10.0.1.PRIV_LO .. +PRIV_HOSTS.
const PRIV_LO: u8 = 10;
const PRIV_HOSTS: u8 = 22;
/// EIPs are 198.51.100.EIP_LO .. +EIP_HOSTS.
const EIP_LO: u8 = 10;
const EIP_HOSTS: u8 = 20;
const VSWITCH_GATEWAYS: [Ipv4Addr; 2] = [ip(10, 0, 1, 253), ip(10, 0, 2, 253)];
/// One outside the EIP /16, one inside it.
const INTERNET_GATEWAYS: [Ipv4Addr; 2] = [ip(203, 0, 113, 254), ip(198, 51, 100, 200)];
const INTERNET_HOSTS: [Ipv4Addr; 3] = [ip(203, 0, 113, 1), ip(203, 0, 113, 2), ip(203, 0, 113, 77)];
const CLOUD_HOSTS: [Ipv4Addr; 3] = [
    ip(100, 100, 100, 200),
    ip(100, 100, 2, 136),
    ip(100, 64, 0, 1),
];

/// Every address a packet may name besides the ones picked from the table.
fn pool() -> Vec<Ipv4Addr> {
    let mut p: Vec<Ipv4Addr> = (0..PRIV_HOSTS).map(|h| ip(10, 0, 1, PRIV_LO + h)).collect();
    p.extend((0..EIP_HOSTS).map(|h| ip(198, 51, 100, EIP_LO + h)));
    p.extend(VSWITCH_GATEWAYS);
    p.extend(INTERNET_GATEWAYS);
    p.extend(INTERNET_HOSTS);
    p.extend(CLOUD_HOSTS);
    // Unknown VPC address, and a private address outside the VPC prefix.
    p.extend([ip(10, 0, 2, 50), ip(172, 16, 0, 1)]);
    p
}

fn pick<T: Copy>(items: &[T], i: Index) -> Option<T> {
    (!items.is_empty()).then(|| items[i.index(items.len())])
}

// ---- the configuration: what a table says, resolved from a random spec ---------------------

#[derive(Clone, Debug)]
struct EniCfg {
    /// (instance number, running), or detached.
    instance: Option<(u32, bool)>,
    gateway: Option<Ipv4Addr>,
    ips: Vec<Ipv4Addr>,
}

#[derive(Clone, Copy, Debug)]
struct Assoc {
    mode: AssociationMode,
    eni: EniId,
    /// NAT: the private IP as programmed (None: the ENI's primary).
    explicit: Option<Ipv4Addr>,
}

#[derive(Clone, Debug)]
struct EipCfg {
    addr: Ipv4Addr,
    mbps: u32,
    assoc: Option<Assoc>,
}

#[derive(Clone, Debug)]
struct Config {
    enis: BTreeMap<EniId, EniCfg>,
    eips: BTreeMap<EipSlot, EipCfg>,
    source_check: bool,
    vpc: bool,
    igw: Option<Ipv4Addr>,
    /// Per protocol (by `AlgProtocol::index`): `pass` (true) or `drop`.
    alg_pass: [bool; AlgProtocol::COUNT],
}

/// What an address is in a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Eip(EipSlot),
    Private(EniId),
    VpcGateway,
    InternetGateway,
}

impl Config {
    fn mode_of_eni(&self, eni: EniId) -> Option<AssociationMode> {
        self.eips
            .values()
            .filter_map(|e| e.assoc)
            .find(|a| a.eni == eni)
            .map(|a| a.mode)
    }

    /// The private IP a NAT EIP maps to.
    fn nat_private(&self, a: &Assoc) -> Ipv4Addr {
        a.explicit.unwrap_or(self.enis[&a.eni].ips[0])
    }

    /// An ENI's private IPs in the table: a BINDED EIP replaces the primary.
    fn private_ips(&self, eni: EniId) -> Vec<Ipv4Addr> {
        let Some(e) = self.enis.get(&eni) else {
            return Vec::new();
        };
        let skip = usize::from(self.mode_of_eni(eni) == Some(AssociationMode::Binded));
        e.ips[skip..].to_vec()
    }

    /// The addresses an ENI's own guest may send from: its private IPs and its BINDED or
    /// MULTI_BINDED EIPs.
    fn sendable(&self, eni: EniId) -> Vec<Ipv4Addr> {
        let mut v = self.private_ips(eni);
        v.extend(
            self.eips
                .values()
                .filter(|x| {
                    x.assoc
                        .is_some_and(|a| a.eni == eni && a.mode != AssociationMode::Nat)
                })
                .map(|x| x.addr),
        );
        v
    }

    /// Address -> owner, as SPEC §1 defines them.
    fn owners(&self) -> BTreeMap<Ipv4Addr, Owner> {
        let mut m = BTreeMap::new();
        for (&id, e) in &self.enis {
            for a in self.private_ips(id) {
                m.insert(a, Owner::Private(id));
            }
            if let Some(g) = e.gateway {
                m.insert(g, Owner::VpcGateway);
            }
        }
        for (&slot, e) in &self.eips {
            m.insert(e.addr, Owner::Eip(slot));
        }
        if let Some(g) = self.igw {
            m.insert(g, Owner::InternetGateway);
        }
        m
    }

    /// Whether an ENI can take delivery: attached to a running instance.
    fn deliverable(&self, eni: EniId) -> Result<(), DropReason> {
        match self.enis.get(&eni).and_then(|e| e.instance) {
            None => Err(DropReason::EniDetached),
            Some((_, false)) => Err(DropReason::InstanceStopped),
            Some((_, true)) => Ok(()),
        }
    }

    fn instance_of(&self, eni: EniId) -> Option<u32> {
        self.enis.get(&eni)?.instance.map(|(i, _)| i)
    }

    fn alg_policy(&self) -> AlgPolicy {
        let mut p = AlgPolicy::all(AlgAction::Drop);
        for proto in AlgProtocol::ALL {
            if self.alg_pass[proto.index()] {
                p.set(proto, AlgAction::Pass);
            }
        }
        p
    }

    fn table(&self) -> Table {
        let mut b = TableBuilder::new()
            .source_check(self.source_check)
            .alg_policy(self.alg_policy());
        if self.vpc {
            b = b.vpc_prefix(ip(10, 0, 0, 0), 16);
        }
        for (&id, e) in &self.enis {
            b = b.eni(EniConfig {
                id,
                instance: e.instance.map(|(id, running)| InstanceRef { id, running }),
                gateway: e.gateway,
                private_ips: e.ips.clone(),
            });
        }
        for (&slot, e) in &self.eips {
            b = b.eip(EipConfig {
                slot,
                address: e.addr,
                bandwidth_mbps: e.mbps,
                association: e.assoc.map(|a| EipAssociation {
                    mode: a.mode,
                    eni: a.eni,
                    private_ip: a.explicit,
                }),
            });
        }
        if let Some(g) = self.igw {
            b = b.internet_gateway(g);
        }
        b.build().expect("a generated table is valid")
    }
}

// ---- random specs ------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct EniSpec {
    present: bool,
    instance: Option<u32>,
    gateway: Option<Index>,
    /// (own home address, else any from the pool)
    ips: Vec<(bool, Index)>,
}

#[derive(Clone, Debug)]
struct AssocSpec {
    mode: AssociationMode,
    eni: Index,
    private: Option<Index>,
}

#[derive(Clone, Debug)]
struct EipSpec {
    present: bool,
    home: bool,
    addr: Index,
    mbps: u32,
    assoc: Option<AssocSpec>,
}

#[derive(Clone, Debug)]
struct TableSpec {
    enis: Vec<EniSpec>,
    eips: Vec<EipSpec>,
    running: [bool; 3],
    source_check: bool,
    vpc: bool,
    igw: Option<Index>,
    alg_pass: [bool; AlgProtocol::COUNT],
}

/// Takes `want` from `lo..lo+n` if free, else the next free host after it.
fn next_free(taken: &mut BTreeSet<u8>, lo: u8, n: u8, want: u8) -> u8 {
    (0..n)
        .map(|d| lo + (want - lo + d) % n)
        .find(|&h| taken.insert(h))
        .expect("the pool is larger than what a table takes")
}

impl TableSpec {
    /// A valid configuration: addresses are made unique, and an association the table's
    /// rules forbid (a mode conflict on an ENI, a second BINDED EIP, a private IP mapped
    /// twice) is left out, so the EIP stays unassociated.
    fn resolve(&self) -> Config {
        let mut taken = BTreeSet::new();
        let mut enis = BTreeMap::new();
        for (i, s) in self.enis.iter().enumerate().filter(|(_, s)| s.present) {
            let ips = s
                .ips
                .iter()
                .enumerate()
                .map(|(k, &(home, any))| {
                    let want = if home {
                        PRIV_LO + (3 * i + k) as u8
                    } else {
                        PRIV_LO + any.index(PRIV_HOSTS as usize) as u8
                    };
                    ip(10, 0, 1, next_free(&mut taken, PRIV_LO, PRIV_HOSTS, want))
                })
                .collect();
            let cfg = EniCfg {
                instance: s.instance.map(|n| (n, self.running[n as usize])),
                gateway: s.gateway.and_then(|g| pick(&VSWITCH_GATEWAYS, g)),
                ips,
            };
            enis.insert(i as EniId, cfg);
        }
        let ids: Vec<EniId> = enis.keys().copied().collect();
        let mut taken = BTreeSet::new();
        let mut modes: BTreeMap<EniId, AssociationMode> = BTreeMap::new();
        let mut mapped = BTreeSet::new();
        let mut eips = BTreeMap::new();
        for (slot, s) in self.eips.iter().enumerate().filter(|(_, s)| s.present) {
            let want = if s.home {
                EIP_LO + slot as u8
            } else {
                EIP_LO + s.addr.index(EIP_HOSTS as usize) as u8
            };
            let addr = ip(198, 51, 100, next_free(&mut taken, EIP_LO, EIP_HOSTS, want));
            let assoc = s.assoc.as_ref().and_then(|a| {
                let eni = pick(&ids, a.eni)?;
                let fits = match modes.get(&eni) {
                    None => true,
                    Some(&m) => m == a.mode && m != AssociationMode::Binded,
                };
                if !fits {
                    return None;
                }
                let ips: &Vec<Ipv4Addr> = &enis[&eni].ips;
                let explicit = match a.mode {
                    AssociationMode::Nat => a.private.map(|p| ips[p.index(ips.len())]),
                    _ => None,
                };
                if a.mode == AssociationMode::Nat && !mapped.insert(explicit.unwrap_or(ips[0])) {
                    return None;
                }
                modes.insert(eni, a.mode);
                Some(Assoc {
                    mode: a.mode,
                    eni,
                    explicit,
                })
            });
            let cfg = EipCfg {
                addr,
                mbps: s.mbps,
                assoc,
            };
            eips.insert(slot as EipSlot, cfg);
        }
        Config {
            enis,
            eips,
            source_check: self.source_check,
            vpc: self.vpc,
            igw: self.igw.and_then(|g| pick(&INTERNET_GATEWAYS, g)),
            alg_pass: self.alg_pass,
        }
    }
}

fn eni_spec() -> impl Strategy<Value = EniSpec> {
    (
        prop::bool::weighted(0.75),
        prop::option::weighted(0.85, 0u32..3),
        prop::option::weighted(0.8, any::<Index>()),
        vec((prop::bool::weighted(0.7), any::<Index>()), 1..=3),
    )
        .prop_map(|(present, instance, gateway, ips)| EniSpec {
            present,
            instance,
            gateway,
            ips,
        })
}

fn eip_spec() -> impl Strategy<Value = EipSpec> {
    let mode = prop_oneof![
        3 => Just(AssociationMode::Nat),
        1 => Just(AssociationMode::Binded),
        2 => Just(AssociationMode::MultiBinded),
    ];
    let assoc = (
        mode,
        any::<Index>(),
        prop::option::weighted(0.6, any::<Index>()),
    )
        .prop_map(|(mode, eni, private)| AssocSpec { mode, eni, private });
    (
        prop::bool::weighted(0.7),
        prop::bool::weighted(0.8),
        any::<Index>(),
        0u32..=3,
        prop::option::weighted(0.9, assoc),
    )
        .prop_map(|(present, home, addr, mbps, assoc)| EipSpec {
            present,
            home,
            addr,
            mbps,
            assoc,
        })
}

fn table_spec() -> impl Strategy<Value = TableSpec> {
    (
        vec(eni_spec(), ENI_IDS),
        vec(eip_spec(), SLOTS),
        prop::array::uniform3(prop::bool::weighted(0.85)),
        prop::bool::weighted(0.6),
        prop::bool::weighted(0.9),
        prop::option::weighted(0.7, any::<Index>()),
        prop::array::uniform6(any::<bool>()),
    )
        .prop_map(
            |(enis, eips, running, source_check, vpc, igw, alg_pass)| TableSpec {
                enis,
                eips,
                running,
                source_check,
                vpc,
                igw,
                alg_pass,
            },
        )
}

#[derive(Clone, Copy, Debug)]
enum IngressSel {
    Internet,
    Cloud,
    /// One of the table's ENIs.
    Eni(Index),
    /// Any id, programmed or not.
    RawEni(EniId),
}

/// Where a packet's address is picked from; the index picks within it (or, when it is
/// empty, within the pool).
#[derive(Clone, Copy, Debug)]
struct AddrSel(Place, Index);

#[derive(Clone, Copy, Debug)]
enum Place {
    /// Where such a side's packets mostly go: from the internet an EIP, from a guest an
    /// internet host, from the cloud services an ENI's address.
    Natural,
    /// The ingress ENI's own address (an internet host or a cloud service for those sides).
    Own,
    /// Any ENI's private IP (a replaced primary too) or cut-through EIP.
    AnyEni,
    Eip,
    Internet,
    Cloud,
    Gateway,
    Pool,
}

#[derive(Clone, Copy, Debug)]
enum Port {
    Ephemeral(u16),
    /// One of the ALG ports of the transport.
    Alg(Index),
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Udp {
        sport: Port,
        dport: Port,
        zero_csum: bool,
    },
    Tcp {
        sport: Port,
        dport: Port,
        flags: u8,
    },
    Echo {
        request: bool,
        id: u16,
        seq: u16,
    },
}

#[derive(Clone, Debug)]
struct PktSpec {
    ingress: IngressSel,
    src: AddrSel,
    dst: AddrSel,
    kind: Kind,
    size: usize,
    ttl: u8,
    df: bool,
    ident: u16,
    fill: u8,
    /// Bytes of room in the buffer after the packet.
    room: usize,
}

fn port() -> impl Strategy<Value = Port> {
    prop_oneof![
        6 => (32768u16..61000).prop_map(Port::Ephemeral),
        1 => any::<Index>().prop_map(Port::Alg),
    ]
}

fn pkt_spec() -> impl Strategy<Value = PktSpec> {
    let ingress = prop_oneof![
        3 => Just(IngressSel::Internet),
        1 => Just(IngressSel::Cloud),
        5 => any::<Index>().prop_map(IngressSel::Eni),
        1 => (0 as EniId..=8).prop_map(IngressSel::RawEni),
    ];
    let src = prop_oneof![
        6 => Just(Place::Own),
        1 => Just(Place::AnyEni),
        1 => Just(Place::Eip),
        2 => Just(Place::Pool),
    ];
    let dst = prop_oneof![
        8 => Just(Place::Natural),
        3 => Just(Place::Internet),
        3 => Just(Place::Eip),
        2 => Just(Place::AnyEni),
        1 => Just(Place::Cloud),
        1 => Just(Place::Gateway),
        2 => Just(Place::Pool),
    ];
    let src = (src, any::<Index>()).prop_map(|(f, i)| AddrSel(f, i));
    let dst = (dst, any::<Index>()).prop_map(|(f, i)| AddrSel(f, i));
    let kind = prop_oneof![
        4 => (port(), port(), prop::bool::weighted(0.2))
            .prop_map(|(sport, dport, zero_csum)| Kind::Udp { sport, dport, zero_csum }),
        4 => (port(), port(), any::<u8>())
            .prop_map(|(sport, dport, flags)| Kind::Tcp { sport, dport, flags }),
        3 => (prop::bool::weighted(0.7), any::<u16>(), any::<u16>())
            .prop_map(|(request, id, seq)| Kind::Echo { request, id, seq }),
    ];
    let size = prop_oneof![1 => 40usize..600, 3 => 600usize..=1500];
    let ttl = prop_oneof![8 => Just(64u8), 1 => Just(2u8), 1 => Just(1u8)];
    let room = prop_oneof![1 => Just(0usize), 1 => 1usize..60, 3 => 60usize..=700];
    (
        (ingress, src, dst, kind),
        (size, ttl, any::<bool>(), any::<u16>(), any::<u8>(), room),
    )
        .prop_map(
            |((ingress, src, dst, kind), (size, ttl, df, ident, fill, room))| PktSpec {
                ingress,
                src,
                dst,
                kind,
                size,
                ttl,
                df,
                ident,
                fill,
                room,
            },
        )
}

#[derive(Clone, Debug)]
enum Op {
    Publish(TableSpec),
    Single(PktSpec),
    /// Up to 4 kinds of packet, repeated in the given order (bursts are what policers see).
    Batch(Vec<PktSpec>, Vec<Index>),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => table_spec().prop_map(Op::Publish),
        4 => pkt_spec().prop_map(Op::Single),
        3 => (vec(pkt_spec(), 1..=4), vec(any::<Index>(), 1..=160))
            .prop_map(|(kinds, order)| Op::Batch(kinds, order)),
        // A flood of large packets to one EIP from two senders (often the internet and a
        // guest's hairpin): more than a policer's burst.
        1 => (pkt_spec(), pkt_spec(), any::<Index>(), vec(any::<Index>(), 100..=200)).prop_map(
            |(mut a, mut b, eip, order)| {
                for p in [&mut a, &mut b] {
                    p.size = p.size.max(1000);
                    p.dst = AddrSel(Place::Eip, eip);
                }
                Op::Batch(vec![a, b], order)
            }
        ),
        2 => prop_oneof![
            6 => 0u64..=30_000_000,
            1 => 60_000_000u64..=3_000_000_000,
        ].prop_map(Op::Advance),
    ]
}

// ---- packets -----------------------------------------------------------------------------------

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;

/// RFC 1071: the one's complement of the one's complement sum, with `init` already summed.
fn inet_checksum(init: u32, data: &[u8]) -> u16 {
    let mut sum = init as u64;
    for w in data.chunks(2) {
        sum += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_sum(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u32 {
    let word = |b: &[u8]| u32::from(u16::from_be_bytes([b[0], b[1]]));
    word(&src[0..2])
        + word(&src[2..4])
        + word(&dst[0..2])
        + word(&dst[2..4])
        + u32::from(proto)
        + len as u32
}

/// Fills the IPv4 header checksum and, where `l4` says so, the TCP/UDP one, from scratch.
fn fill_checksums(p: &mut [u8], l4: bool) {
    p[10..12].fill(0);
    let c = inet_checksum(0, &p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    if !l4 {
        return;
    }
    let (src, dst, proto) = (p[12..16].to_vec(), p[16..20].to_vec(), p[9]);
    let seg = &mut p[20..];
    let at = match proto {
        TCP => 16,
        UDP => 6,
        _ => {
            seg[2..4].fill(0);
            let c = inet_checksum(0, seg);
            seg[2..4].copy_from_slice(&c.to_be_bytes());
            return;
        }
    };
    seg[at..at + 2].fill(0);
    let mut c = inet_checksum(pseudo_sum(&src, &dst, proto, seg.len()), seg);
    if proto == UDP && c == 0 {
        c = 0xffff;
    }
    seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

fn alg_ports(proto: u8) -> &'static [u16] {
    if proto == TCP {
        &[21, 53, 554, 1720, 5060, 5061]
    } else {
        &[53, 69, 554, 1719, 5060]
    }
}

fn port_number(p: Port, proto: u8) -> u16 {
    match p {
        Port::Ephemeral(n) => n,
        Port::Alg(i) => pick(alg_ports(proto), i).expect("never empty"),
    }
}

/// The packet's bytes: a 20-byte header, then the transport header, then a payload that
/// starts with a zero byte.
fn build(src: Ipv4Addr, dst: Ipv4Addr, s: &PktSpec) -> Vec<u8> {
    let mut p = vec![0u8; s.size];
    let (proto, l4_len) = match s.kind {
        Kind::Udp { .. } => (UDP, 8),
        Kind::Tcp { .. } => (TCP, 20),
        Kind::Echo { .. } => (ICMP, 8),
    };
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(s.size as u16).to_be_bytes());
    p[4..6].copy_from_slice(&s.ident.to_be_bytes());
    p[6] = if s.df { 0x40 } else { 0 };
    p[8] = s.ttl;
    p[9] = proto;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let payload = p.get_mut(20 + l4_len + 1..).unwrap_or_default();
    for (i, b) in payload.iter_mut().enumerate() {
        *b = s.fill.wrapping_add((i as u8).wrapping_mul(31));
    }
    let seg = &mut p[20..];
    let mut zero_udp = false;
    match s.kind {
        Kind::Udp {
            sport,
            dport,
            zero_csum,
        } => {
            seg[0..2].copy_from_slice(&port_number(sport, UDP).to_be_bytes());
            seg[2..4].copy_from_slice(&port_number(dport, UDP).to_be_bytes());
            seg[4..6].copy_from_slice(&((s.size - 20) as u16).to_be_bytes());
            zero_udp = zero_csum;
        }
        Kind::Tcp {
            sport,
            dport,
            flags,
        } => {
            seg[0..2].copy_from_slice(&port_number(sport, TCP).to_be_bytes());
            seg[2..4].copy_from_slice(&port_number(dport, TCP).to_be_bytes());
            seg[4..8].copy_from_slice(&u32::from(s.ident).to_be_bytes());
            seg[12] = 5 << 4;
            seg[13] = flags;
            seg[14..16].copy_from_slice(&1024u16.to_be_bytes());
        }
        Kind::Echo { request, id, seq } => {
            seg[0] = if request { 8 } else { 0 };
            seg[4..6].copy_from_slice(&id.to_be_bytes());
            seg[6..8].copy_from_slice(&seq.to_be_bytes());
        }
    }
    fill_checksums(&mut p, !zero_udp);
    p
}

// ---- the model ---------------------------------------------------------------------------------

/// A token bucket in nano-bytes (bytes × 10⁹): starts full (`None`), refills at the rate
/// from the time elapsed since it was last used, holds at most the burst.
#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    tokens: Option<u128>,
    last_ns: u64,
}

impl Bucket {
    fn admit(&mut self, mbps: u32, now: u64, bytes: usize) -> bool {
        if mbps == 0 {
            return true;
        }
        let rate = u128::from(mbps) * 1_000_000 / 8; // bytes/s, i.e. nano-bytes/ns
        let burst = u128::from(burst_bytes(mbps)) * 1_000_000_000;
        let elapsed = u128::from(now.saturating_sub(self.last_ns));
        self.last_ns = self.last_ns.max(now);
        let level = match self.tokens {
            None => burst,
            Some(t) => (t + elapsed * rate).min(burst),
        };
        let need = bytes as u128 * 1_000_000_000;
        let ok = level >= need;
        self.tokens = Some(if ok { level - need } else { level });
        ok
    }
}

type Drops = BTreeMap<DropReason, u64>;

fn drop_array(d: &Drops) -> [u64; DropReason::COUNT] {
    let mut a = [0; DropReason::COUNT];
    for (&r, &n) in d {
        a[r as usize] = n;
    }
    a
}

fn bump(c: &mut Counter, bytes: usize) {
    c.packets += 1;
    c.bytes += bytes as u64;
}

#[derive(Clone, Debug)]
struct SlotState {
    addr: Ipv4Addr,
    mbps: u32,
    to_guest_bucket: Bucket,
    from_guest_bucket: Bucket,
    counts: Counts,
}

/// What an EIP slot or an ENI counts.
#[derive(Clone, Debug, Default)]
struct Counts {
    to_guest: Counter,
    from_guest: Counter,
    drops: Drops,
}

impl Counts {
    /// As the engine reports them (to guest, from guest, drops by reason).
    fn view(&self) -> (Counter, Counter, [u64; DropReason::COUNT]) {
        (self.to_guest, self.from_guest, drop_array(&self.drops))
    }
}

/// How a packet goes through, once the rules have accepted it.
#[derive(Clone, Copy, Debug)]
struct Path {
    out: Side,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    /// The sender's EIP (from-guest policer and counters).
    out_slot: Option<EipSlot>,
    /// The receiver's EIP (to-guest policer and counters).
    in_slot: Option<EipSlot>,
    to_eni: Option<EniId>,
    /// A NAT mapping is involved (D3 applies).
    nat: bool,
    hairpin: bool,
}

enum Decision {
    /// The gateway itself is addressed; a refusal is counted against this ENI.
    Gateway(Option<EniId>),
    Through(Path),
}

/// A drop reason with the EIP slot and the ENI it is counted against.
type Refusal = (DropReason, Option<EipSlot>, Option<EniId>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Expect {
    Forward(Side, Vec<u8>),
    Reply(Side, Vec<u8>),
    Drop(DropReason),
}

struct Model {
    cfg: Config,
    owners: BTreeMap<Ipv4Addr, Owner>,
    slots: BTreeMap<EipSlot, SlotState>,
    enis: BTreeMap<EniId, Counts>,
    /// ENI ids below this have had a place in some table: only they have counters.
    eni_ids_known: EniId,
    global: GlobalCounters,
}

fn in_cloud_services(a: Ipv4Addr) -> bool {
    let o = a.octets();
    o[0] == 100 && (64..128).contains(&o[1])
}

fn in_vpc(a: Ipv4Addr) -> bool {
    a.octets()[..2] == [10, 0]
}

/// D3: the ALG protocol of TCP/UDP ports; the lower port decides first.
fn alg_protocol(proto: u8, sport: u16, dport: u16) -> Option<AlgProtocol> {
    let of = |port: u16| match (proto, port) {
        (_, 5060) | (TCP, 5061) => Some(AlgProtocol::Sip),
        (TCP, 1720) | (UDP, 1719) => Some(AlgProtocol::H323),
        (_, 554) => Some(AlgProtocol::Rtsp),
        (_, 53) => Some(AlgProtocol::Dns),
        (TCP, 21) => Some(AlgProtocol::Ftp),
        (UDP, 69) => Some(AlgProtocol::Tftp),
        _ => None,
    };
    of(sport.min(dport)).or_else(|| of(sport.max(dport)))
}

impl Model {
    fn new(cfg: Config) -> Model {
        let mut m = Model {
            cfg: cfg.clone(),
            owners: BTreeMap::new(),
            slots: BTreeMap::new(),
            enis: BTreeMap::new(),
            eni_ids_known: 0,
            global: GlobalCounters::default(),
        };
        m.publish(cfg);
        m
    }

    /// A new table: slot state stays with a slot while its address stays, ENI state with its
    /// id; bandwidths follow the new table.
    fn publish(&mut self, cfg: Config) {
        for (&slot, e) in &cfg.eips {
            let fresh = SlotState {
                addr: e.addr,
                mbps: e.mbps,
                to_guest_bucket: Bucket::default(),
                from_guest_bucket: Bucket::default(),
                counts: Counts::default(),
            };
            let s = self.slots.entry(slot).or_insert_with(|| fresh.clone());
            if s.addr != e.addr {
                *s = fresh;
            }
            s.mbps = e.mbps;
        }
        if let Some(&max) = cfg.enis.keys().last() {
            self.eni_ids_known = self.eni_ids_known.max(max + 1);
        }
        self.owners = cfg.owners();
        self.cfg = cfg;
    }

    fn refuse(&mut self, (r, slot, eni): Refusal) -> Expect {
        self.global.drops[r as usize] += 1;
        if let Some(s) = slot {
            *self
                .slots
                .get_mut(&s)
                .unwrap()
                .counts
                .drops
                .entry(r)
                .or_default() += 1;
        }
        if let Some(e) = eni.filter(|&e| e < self.eni_ids_known) {
            *self.enis.entry(e).or_default().drops.entry(r).or_default() += 1;
        }
        Expect::Drop(r)
    }

    /// D1, D7: where a packet to EIP `slot` goes (its ENI, its new destination, NAT or not),
    /// or why not (with the ENI to blame).
    fn inbound(
        &self,
        slot: EipSlot,
    ) -> Result<(EniId, Ipv4Addr, bool), (DropReason, Option<EniId>)> {
        let e = &self.cfg.eips[&slot];
        let Some(a) = e.assoc else {
            return Err((DropReason::EipUnassociated, None));
        };
        self.cfg.deliverable(a.eni).map_err(|r| (r, Some(a.eni)))?;
        Ok(match a.mode {
            AssociationMode::Nat => (a.eni, self.cfg.nat_private(&a), true),
            _ => (a.eni, e.addr, false),
        })
    }

    fn internet_to(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Result<Decision, Refusal> {
        match self.owners.get(&dst) {
            Some(Owner::InternetGateway) => Ok(Decision::Gateway(None)),
            Some(&Owner::Eip(slot)) => {
                let (eni, to, nat) = self.inbound(slot).map_err(|(r, e)| (r, Some(slot), e))?;
                Ok(Decision::Through(Path {
                    out: Side::Eni(eni),
                    src,
                    dst: to,
                    out_slot: None,
                    in_slot: Some(slot),
                    to_eni: Some(eni),
                    nat,
                    hairpin: false,
                }))
            }
            _ => Err((DropReason::UnknownDestination, None, None)),
        }
    }

    /// D2, D4, D5, D6 and hairpin. Every refusal is counted against the sending ENI.
    fn guest_to(&self, me: EniId, src: Ipv4Addr, dst: Ipv4Addr) -> Result<Decision, Refusal> {
        let cfg = &self.cfg;
        if !cfg.enis.contains_key(&me) {
            return Err((DropReason::UnknownEni, None, Some(me)));
        }
        cfg.deliverable(me).map_err(|r| (r, None, Some(me)))?;
        // D6: the source must be the sender's (or, without source check, an address of
        // another ENI of the same instance, which then speaks as that ENI).
        let owner = match self.owners.get(&src) {
            Some(&Owner::Private(e)) => Some(e),
            Some(&Owner::Eip(s)) => cfg.eips[&s]
                .assoc
                .filter(|a| a.mode != AssociationMode::Nat)
                .map(|a| a.eni),
            _ => None,
        };
        let sender = match owner {
            Some(o) if o == me => me,
            Some(o) if !cfg.source_check && cfg.instance_of(o) == cfg.instance_of(me) => o,
            _ => return Err((DropReason::SourceCheck, None, Some(me))),
        };
        // The EIP the source speaks through.
        let (public, slot, nat) = match self.owners.get(&src) {
            Some(&Owner::Eip(s)) => (Some(src), Some(s), false),
            _ => match cfg.eips.iter().find(|(_, e)| {
                e.assoc
                    .is_some_and(|a| a.mode == AssociationMode::Nat && cfg.nat_private(&a) == src)
            }) {
                Some((&s, e)) => (Some(e.addr), Some(s), true),
                None => (None, None, false),
            },
        };
        let refuse = |r: DropReason, s: Option<EipSlot>| Err((r, s, Some(me)));
        let binded = cfg.mode_of_eni(sender) == Some(AssociationMode::Binded);
        let unchanged = |out: Side, to_eni: Option<EniId>| Path {
            out,
            src,
            dst,
            out_slot: None,
            in_slot: None,
            to_eni,
            nat: false,
            hairpin: false,
        };
        if in_cloud_services(dst) {
            // D4
            if binded {
                return refuse(DropReason::CutThroughBlackhole, slot);
            }
            return Ok(Decision::Through(unchanged(Side::CloudServices, None)));
        }
        if cfg.vpc && in_vpc(dst) {
            // D5
            if binded {
                return refuse(DropReason::CutThroughPrivate, slot);
            }
            return match self.owners.get(&dst) {
                Some(&Owner::Private(d)) if cfg.deliverable(d).is_ok() => {
                    Ok(Decision::Through(unchanged(Side::Eni(d), Some(d))))
                }
                Some(Owner::VpcGateway) => Ok(Decision::Gateway(Some(me))),
                _ => refuse(DropReason::VpcUnreachable, slot),
            };
        }
        // D2
        let Some(public) = public else {
            return refuse(DropReason::NoPublicIp, None);
        };
        match self.owners.get(&dst) {
            Some(&Owner::Eip(to)) => {
                // Hairpin: back in as if from the internet; its refusals blame that EIP.
                let (eni, new_dst, to_nat) =
                    self.inbound(to).map_err(|(r, _)| (r, Some(to), Some(me)))?;
                Ok(Decision::Through(Path {
                    out: Side::Eni(eni),
                    src: public,
                    dst: new_dst,
                    out_slot: slot,
                    in_slot: Some(to),
                    to_eni: Some(eni),
                    nat: nat || to_nat,
                    hairpin: true,
                }))
            }
            Some(Owner::InternetGateway) => Ok(Decision::Gateway(Some(me))),
            _ => Ok(Decision::Through(Path {
                out: Side::Internet,
                src: public,
                dst,
                out_slot: slot,
                in_slot: None,
                to_eni: None,
                nat,
                hairpin: false,
            })),
        }
    }

    /// Answers of the cloud services go back to a private IP or a MULTI_BINDED EIP.
    fn cloud_to(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Result<Decision, Refusal> {
        let eni = match self.owners.get(&dst) {
            Some(&Owner::Private(e)) => e,
            Some(&Owner::Eip(s)) => match self.cfg.eips[&s].assoc {
                Some(a) if a.mode == AssociationMode::Binded => {
                    return Err((DropReason::CutThroughBlackhole, None, Some(a.eni)))
                }
                Some(a) if a.mode == AssociationMode::MultiBinded => a.eni,
                _ => return Err((DropReason::VpcUnreachable, None, None)),
            },
            _ => return Err((DropReason::VpcUnreachable, None, None)),
        };
        self.cfg
            .deliverable(eni)
            .map_err(|r| (r, None, Some(eni)))?;
        Ok(Decision::Through(Path {
            out: Side::Eni(eni),
            src,
            dst,
            out_slot: None,
            in_slot: None,
            to_eni: Some(eni),
            nat: false,
            hairpin: false,
        }))
    }

    /// One packet; `room` is the size of the buffer it is in.
    fn process(&mut self, now: u64, ingress: Side, pkt: &[u8], room: usize) -> Expect {
        let len = pkt.len();
        bump(&mut self.global.received, len);
        let addr = |at: usize| Ipv4Addr::new(pkt[at], pkt[at + 1], pkt[at + 2], pkt[at + 3]);
        let (src, dst, ttl, proto) = (addr(12), addr(16), pkt[8], pkt[9]);
        let decision = match ingress {
            Side::Internet => self.internet_to(src, dst),
            Side::Eni(me) => self.guest_to(me, src, dst),
            Side::CloudServices => self.cloud_to(src, dst),
        };
        let path = match decision {
            Err(refusal) => return self.refuse(refusal),
            Ok(Decision::Gateway(blame)) => return self.gateway_answers(ingress, pkt, blame),
            Ok(Decision::Through(p)) => p,
        };
        let blame_slot = path.out_slot.or(path.in_slot);
        let blame_eni = match ingress {
            Side::Eni(e) => Some(e),
            _ => path.to_eni,
        };
        // D3
        if path.nat && (proto == TCP || proto == UDP) {
            let port = |at: usize| u16::from_be_bytes([pkt[at], pkt[at + 1]]);
            if let Some(p) = alg_protocol(proto, port(20), port(22)) {
                if !self.cfg.alg_pass[p.index()] {
                    return self.refuse((DropReason::alg(p), blame_slot, blame_eni));
                }
                self.global.alg_passed[p.index()] += 1;
            }
        }
        if ttl <= 1 {
            let dropped = self.refuse((DropReason::TtlExceeded, blame_slot, blame_eni));
            let from = match ingress {
                Side::Internet => self.cfg.igw,
                Side::Eni(e) => self.cfg.enis[&e].gateway,
                Side::CloudServices => None,
            };
            return match from.and_then(|f| time_exceeded(pkt, f, room)) {
                Some(answer) => {
                    self.global.icmp_errors_sent += 1;
                    Expect::Reply(ingress, answer)
                }
                None => dropped,
            };
        }
        // D8: the sender's EIP, then the receiver's.
        if let Some(s) = path.out_slot {
            let st = self.slots.get_mut(&s).unwrap();
            if !st.from_guest_bucket.admit(st.mbps, now, len) {
                return self.refuse((DropReason::BandwidthExceeded, Some(s), blame_eni));
            }
        }
        if let Some(s) = path.in_slot {
            let st = self.slots.get_mut(&s).unwrap();
            if !st.to_guest_bucket.admit(st.mbps, now, len) {
                return self.refuse((DropReason::BandwidthExceeded, Some(s), blame_eni));
            }
        }
        bump(&mut self.global.forwarded, len);
        if path.hairpin {
            self.global.hairpin += 1;
        }
        if let Some(s) = path.out_slot {
            bump(&mut self.slots.get_mut(&s).unwrap().counts.from_guest, len);
        }
        if let Some(s) = path.in_slot {
            bump(&mut self.slots.get_mut(&s).unwrap().counts.to_guest, len);
        }
        if let Side::Eni(e) = ingress {
            bump(&mut self.enis.entry(e).or_default().from_guest, len);
        }
        if let Some(e) = path.to_eni {
            bump(&mut self.enis.entry(e).or_default().to_guest, len);
        }
        let mut out = pkt.to_vec();
        out[12..16].copy_from_slice(&path.src.octets());
        out[16..20].copy_from_slice(&path.dst.octets());
        out[8] = ttl - 1;
        let zero_udp = proto == UDP && pkt[26..28] == [0, 0];
        fill_checksums(&mut out, !zero_udp);
        Expect::Forward(path.out, out)
    }

    /// The gateway answers echo requests to its own addresses; anything else is dropped.
    fn gateway_answers(&mut self, ingress: Side, pkt: &[u8], blame: Option<EniId>) -> Expect {
        if pkt[9] != ICMP || pkt[20] != 8 || pkt[21] != 0 {
            let r = if ingress == Side::Internet {
                DropReason::UnknownDestination
            } else {
                DropReason::VpcUnreachable
            };
            return self.refuse((r, None, blame));
        }
        let mut out = pkt.to_vec();
        out[12..16].copy_from_slice(&pkt[16..20]);
        out[16..20].copy_from_slice(&pkt[12..16]);
        out[6..8].fill(0);
        out[8] = 64;
        out[20] = 0;
        fill_checksums(&mut out, true);
        bump(&mut self.global.replied, pkt.len());
        Expect::Reply(ingress, out)
    }
}

/// ICMP time exceeded from `from` about `pkt`: the packet quoted as far as 576 bytes and the
/// buffer (`room`) allow, or none if not even its header and 8 bytes fit.
fn time_exceeded(pkt: &[u8], from: Ipv4Addr, room: usize) -> Option<Vec<u8>> {
    let quote = pkt.len().min(576 - 28).min(room.checked_sub(28)?);
    if quote < pkt.len().min(28) {
        return None;
    }
    let mut out = vec![0u8; 28 + quote];
    out[0] = 0x45;
    out[2..4].copy_from_slice(&((28 + quote) as u16).to_be_bytes());
    out[8] = 64;
    out[9] = ICMP;
    out[12..16].copy_from_slice(&from.octets());
    out[16..20].copy_from_slice(&pkt[12..16]);
    out[20] = 11;
    out[28..].copy_from_slice(&pkt[..quote]);
    fill_checksums(&mut out, true);
    Some(out)
}

// ---- resolving a packet spec against the current table ----------------------------------------

impl Model {
    fn ingress(&self, s: IngressSel) -> Side {
        let ids: Vec<EniId> = self.cfg.enis.keys().copied().collect();
        match s {
            IngressSel::Internet => Side::Internet,
            IngressSel::Cloud => Side::CloudServices,
            IngressSel::Eni(i) => Side::Eni(pick(&ids, i).unwrap_or(ENI_IDS as EniId)),
            IngressSel::RawEni(e) => Side::Eni(e),
        }
    }

    fn addr(&self, s: AddrSel, ingress: Side, pool: &[Ipv4Addr]) -> Ipv4Addr {
        let cfg = &self.cfg;
        let any_eni: Vec<Ipv4Addr> = cfg
            .enis
            .iter()
            .flat_map(|(&id, e)| e.ips.iter().copied().chain(cfg.sendable(id)))
            .collect();
        let eips: Vec<Ipv4Addr> = cfg.eips.values().map(|e| e.addr).collect();
        let gateways: Vec<Ipv4Addr> = cfg
            .enis
            .values()
            .filter_map(|e| e.gateway)
            .chain(cfg.igw)
            .collect();
        let AddrSel(from, i) = s;
        let chosen = match from {
            Place::Natural => match ingress {
                Side::Internet => pick(&eips, i),
                Side::CloudServices => pick(&any_eni, i),
                Side::Eni(_) => pick(&INTERNET_HOSTS, i),
            },
            Place::Own => match ingress {
                Side::Internet => pick(&INTERNET_HOSTS, i),
                Side::CloudServices => pick(&CLOUD_HOSTS, i),
                Side::Eni(e) => pick(&cfg.sendable(e), i),
            },
            Place::AnyEni => pick(&any_eni, i),
            Place::Eip => pick(&eips, i),
            Place::Internet => pick(&INTERNET_HOSTS, i),
            Place::Cloud => pick(&CLOUD_HOSTS, i),
            Place::Gateway => pick(&gateways, i),
            Place::Pool => pick(pool, i),
        };
        chosen.unwrap_or_else(|| pool[i.index(pool.len())])
    }

    /// The packet's side, bytes and buffer size.
    fn packet(&self, s: &PktSpec, pool: &[Ipv4Addr]) -> (Side, Vec<u8>, usize) {
        let ingress = self.ingress(s.ingress);
        let bytes = build(
            self.addr(s.src, ingress, pool),
            self.addr(s.dst, ingress, pool),
            s,
        );
        let cap = bytes.len() + s.room;
        (ingress, bytes, cap)
    }
}

// ---- comparing -----------------------------------------------------------------------------------

fn check_one(
    what: &str,
    expect: &Expect,
    verdict: Verdict,
    out: &[u8],
    input: &[u8],
) -> Result<(), TestCaseError> {
    let want = match expect {
        Expect::Forward(side, _) => Verdict::Forward(*side),
        Expect::Reply(side, b) => Verdict::Reply {
            to: *side,
            len: b.len(),
        },
        Expect::Drop(r) => Verdict::Drop(*r),
    };
    // The headers say what the packet was; its payload is only a pattern.
    let head = |b: &[u8]| b[..b.len().min(48)].to_vec();
    prop_assert_eq!(verdict, want, "{}: verdict for {:02x?}", what, head(input));
    if let Expect::Forward(_, b) | Expect::Reply(_, b) = expect {
        let got = &out[..b.len().min(out.len())];
        let at = got
            .iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .or((got.len() < b.len()).then_some(got.len()));
        prop_assert!(
            at.is_none(),
            "{}: bytes out differ from byte {:?}: got {:02x?}, want {:02x?}, in {:02x?}",
            what,
            at,
            head(got),
            head(b),
            head(input)
        );
    }
    Ok(())
}

fn check_counters(engine: &Engine, model: &Model, what: &str) -> Result<(), TestCaseError> {
    let g = engine.global_counters();
    prop_assert_eq!(g, &model.global, "{}: global counters", what);
    prop_assert_eq!(
        g.received.packets,
        g.forwarded.packets + g.replied.packets + g.held + g.total_drops(),
        "{}: received == forwarded + replied + held + drops",
        what
    );
    let zero = Counts::default().view();
    let slots = engine.counted_eips().max(SLOTS);
    for slot in 0..slots as EipSlot {
        let c = engine.eip_counters(slot);
        let want = model.slots.get(&slot).map_or(zero, |s| s.counts.view());
        let got = (c.to_guest, c.from_guest, c.drops);
        prop_assert_eq!(got, want, "{}: EIP slot {}", what, slot);
    }
    let enis = engine.counted_enis().max(ENI_IDS + 2);
    for id in 0..enis as EniId {
        let c = engine.eni_counters(id);
        let want = model.enis.get(&id).map_or(zero, Counts::view);
        let got = (c.to_guest, c.from_guest, c.drops);
        prop_assert_eq!(got, want, "{}: ENI {}", what, id);
    }
    Ok(())
}

fn run(first: &TableSpec, configured: bool, start: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let pool = pool();
    let cfg = first.resolve();
    let table = Arc::new(cfg.table());
    let mut engine = if configured {
        Engine::with_config(
            table,
            EngineConfig {
                report_capacity: 4,
                ..EngineConfig::default()
            },
        )
    } else {
        Engine::new(table)
    };
    let mut model = Model::new(cfg);
    let mut now = start;
    for (i, op) in ops.iter().enumerate() {
        let what = format!("op {i}");
        match op {
            Op::Publish(spec) => {
                let cfg = spec.resolve();
                engine.set_table(Arc::new(cfg.table()));
                model.publish(cfg);
            }
            Op::Advance(ns) => now += ns,
            Op::Single(spec) => {
                let (ingress, bytes, cap) = model.packet(spec, &pool);
                let mut buf = vec![0u8; cap];
                buf[..bytes.len()].copy_from_slice(&bytes);
                let v = engine.process(now, ingress, &mut buf, bytes.len(), PacketFlags::default());
                let want = model.process(now, ingress, &bytes, cap);
                check_one(&format!("{what} ({ingress:?})"), &want, v, &buf, &bytes)?;
            }
            Op::Batch(kinds, order) => {
                let mut inputs = Vec::new();
                let mut bufs = Vec::new();
                for k in order {
                    let (ingress, bytes, cap) = model.packet(&kinds[k.index(kinds.len())], &pool);
                    let mut b = PacketBuf::with_capacity(cap);
                    b.set(&bytes);
                    b.ingress = ingress;
                    bufs.push(b);
                    inputs.push((ingress, bytes, cap));
                }
                engine.process_batch(now, &mut bufs);
                for (j, (b, (ingress, bytes, cap))) in bufs.iter().zip(&inputs).enumerate() {
                    let want = model.process(now, *ingress, bytes, *cap);
                    let what = format!("{what}, packet {j} of the batch ({ingress:?})");
                    check_one(&what, &want, b.verdict, b.packet(), bytes)?;
                }
            }
        }
        check_counters(&engine, &model, &what)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// The engine and the model agree after every operation of a random sequence.
    #[test]
    fn engine_matches_model(
        first in table_spec(),
        configured in any::<bool>(),
        start in 0u64..10_000_000_000,
        ops in vec(op(), 1..=40),
    ) {
        run(&first, configured, start, &ops)?;
    }
}
