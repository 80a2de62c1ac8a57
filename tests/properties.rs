//! Property tests of the translation engine (SPEC §2).
//!
//! Inputs are built with `eiplab::wire::build`; every forwarded packet is checked with
//! etherparse as an independent checksum oracle (plus a small RFC 1071 sum written here for
//! the un-complemented partial sums that etherparse does not model).
//!
//! | property | what |
//! |---|---|
//! | p1 | NAT round trip: EIP <-> private IP, addresses round-trip, TTL -1, nothing else changes |
//! | p2 | every forwarded packet has valid IPv4/TCP/UDP/ICMP checksums (quotes too); UDP 0 stays 0 |
//! | p3 | `csum_partial`: the L4 field holds the pseudo-header sum of the *output* addresses |
//! | p4 | ICMP errors: the quote is translated in both directions, byte-exact |
//! | p5 | BINDED / MULTI_BINDED: only TTL and header checksum change |
//! | p6 | fragments in any order: all forwarded and reassemble; SIP fragments all dropped |
//! | p7 | no panic on any bytes; every verdict accounted in the global counters |
//! | p8 | ALG ports: always dropped under NAT (policy drop), never under cut-through |
//! | p9 | the cloud model: a refused operation changes nothing; every change, and only a change, is recorded |

mod common;

use common::cases;
use eiplab::alg::{AlgAction, AlgPolicy, AlgProtocol};
use eiplab::api::actions::{Action, Params};
use eiplab::cloud::havip::HaVipSpec;
use eiplab::cloud::nat::{ForwardSpec, SnatSpec};
use eiplab::cloud::{
    Associate, BindType, Change, Cloud, CloudError, Eni, HaVip, Instance, InstanceStatus,
    LoadBalancer, NatGateway, Settings, VSwitch,
};
use eiplab::engine::{
    AssociationMode, DropReason, EipAssociation, EipConfig, Engine, EngineConfig, EniConfig, EniId,
    GlobalCounters, InstanceRef, OtherProtocols, PacketBuf, PacketFlags, Side, Table, TableBuilder,
    Verdict,
};
use eiplab::wire::build;
use etherparse::{Icmpv4Slice, Ipv4HeaderSlice, TcpHeader, UdpHeader};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

// ---- topology ------------------------------------------------------------------------------

const fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

/// A NAT-mode EIP and the private IP it maps to.
#[derive(Debug)]
struct NatMap {
    eip: Ipv4Addr,
    eni: EniId,
    private: Ipv4Addr,
    /// Programmed with an explicit private IP (else the ENI's primary is implied).
    explicit: bool,
}

const NAT: [NatMap; 9] = [
    NatMap {
        eip: ip(198, 51, 100, 10),
        eni: 1,
        private: ip(10, 0, 1, 10),
        explicit: false,
    },
    NatMap {
        eip: ip(198, 51, 100, 11),
        eni: 1,
        private: ip(10, 0, 1, 11),
        explicit: true,
    },
    NatMap {
        eip: ip(198, 51, 100, 12),
        eni: 1,
        private: ip(10, 0, 1, 12),
        explicit: true,
    },
    // Crossed on purpose: the second EIP takes the primary, the first a secondary.
    NatMap {
        eip: ip(198, 51, 100, 20),
        eni: 2,
        private: ip(10, 0, 2, 21),
        explicit: true,
    },
    NatMap {
        eip: ip(198, 51, 100, 21),
        eni: 2,
        private: ip(10, 0, 2, 20),
        explicit: false,
    },
    NatMap {
        eip: ip(198, 51, 100, 30),
        eni: 3,
        private: ip(10, 0, 3, 30),
        explicit: false,
    },
    NatMap {
        eip: ip(198, 51, 100, 31),
        eni: 3,
        private: ip(10, 0, 3, 31),
        explicit: true,
    },
    NatMap {
        eip: ip(198, 51, 100, 32),
        eni: 3,
        private: ip(10, 0, 3, 32),
        explicit: true,
    },
    NatMap {
        eip: ip(198, 51, 100, 33),
        eni: 3,
        private: ip(10, 0, 3, 33),
        explicit: true,
    },
];

const BIND_ENI: EniId = 4;
const BIND_EIP: Ipv4Addr = ip(198, 51, 100, 40);
const MULTI_ENI: EniId = 5;
const MULTI_EIPS: [Ipv4Addr; 3] = [
    ip(198, 51, 100, 50),
    ip(198, 51, 100, 51),
    ip(198, 51, 100, 52),
];
const STOPPED_EIP: Ipv4Addr = ip(198, 51, 100, 60);
const DETACHED_EIP: Ipv4Addr = ip(198, 51, 100, 70);
const UNASSOCIATED_EIP: Ipv4Addr = ip(198, 51, 100, 99);
const INTERNET_GW: Ipv4Addr = ip(198, 51, 100, 1);

/// (id, instance running (None: detached), private IPs primary first)
const ENIS: [(EniId, Option<bool>, &[Ipv4Addr]); 7] = [
    (
        1,
        Some(true),
        &[ip(10, 0, 1, 10), ip(10, 0, 1, 11), ip(10, 0, 1, 12)],
    ),
    (
        2,
        Some(true),
        &[ip(10, 0, 2, 20), ip(10, 0, 2, 21), ip(10, 0, 2, 22)],
    ),
    (
        3,
        Some(true),
        &[
            ip(10, 0, 3, 30),
            ip(10, 0, 3, 31),
            ip(10, 0, 3, 32),
            ip(10, 0, 3, 33),
        ],
    ),
    (4, Some(true), &[ip(10, 0, 4, 40), ip(10, 0, 4, 41)]),
    (5, Some(true), &[ip(10, 0, 5, 50)]),
    (6, Some(false), &[ip(10, 0, 6, 60)]),
    (7, None, &[ip(10, 0, 7, 70)]),
];

#[derive(Clone, Copy, Debug)]
struct TableOpts {
    alg: AlgPolicy,
    bandwidth: u32,
    other: OtherProtocols,
    source_check: bool,
}

/// (mode, ENI, NAT private IP)
type Assoc = (AssociationMode, EniId, Option<Ipv4Addr>);

fn make_table(o: TableOpts) -> Arc<Table> {
    use AssociationMode::*;
    let mut b = TableBuilder::new()
        .vpc_prefix(ip(10, 0, 0, 0), 8)
        .alg_policy(o.alg)
        .source_check(o.source_check)
        .other_protocols(o.other)
        .internet_gateway(INTERNET_GW);
    for (id, running, ips) in ENIS {
        b = b.eni(EniConfig {
            id,
            // ENIs 1 and 2 belong to one instance (source_check off lets them share sources).
            instance: running.map(|r| InstanceRef {
                id: if id <= 2 { 101 } else { 100 + id as u32 },
                running: r,
            }),
            gateway: Some(ip(10, 0, id as u8, 1)),
            private_ips: ips.to_vec(),
        });
    }
    let mut eips: Vec<(Ipv4Addr, Option<Assoc>)> = NAT
        .iter()
        .map(|m| (m.eip, Some((Nat, m.eni, m.explicit.then_some(m.private)))))
        .collect();
    eips.push((BIND_EIP, Some((Binded, BIND_ENI, None))));
    for a in MULTI_EIPS {
        eips.push((a, Some((MultiBinded, MULTI_ENI, None))));
    }
    eips.push((STOPPED_EIP, Some((Nat, 6, None))));
    eips.push((DETACHED_EIP, Some((Nat, 7, None))));
    eips.push((UNASSOCIATED_EIP, None));
    for (slot, (address, assoc)) in eips.into_iter().enumerate() {
        b = b.eip(EipConfig {
            slot: slot as u32 + 1,
            address,
            bandwidth_mbps: o.bandwidth,
            association: assoc.map(|(mode, eni, private_ip)| EipAssociation {
                mode,
                eni,
                private_ip,
            }),
        });
    }
    Arc::new(b.build().expect("the test topology is a valid table"))
}

/// ALG all Pass, so well-known ports do not interfere.
fn pass_table() -> Arc<Table> {
    static T: OnceLock<Arc<Table>> = OnceLock::new();
    T.get_or_init(|| {
        make_table(TableOpts {
            alg: AlgPolicy::all(AlgAction::Pass),
            bandwidth: 0,
            other: OtherProtocols::Forward,
            source_check: true,
        })
    })
    .clone()
}

/// ALG policy left at its default (Drop).
fn drop_table() -> Arc<Table> {
    static T: OnceLock<Arc<Table>> = OnceLock::new();
    T.get_or_init(|| {
        make_table(TableOpts {
            alg: AlgPolicy::default(),
            bandwidth: 0,
            other: OtherProtocols::Forward,
            source_check: true,
        })
    })
    .clone()
}

// ---- checksums written here (independent of eiplab::wire::checksum) -------------------------

fn sum16(data: &[u8]) -> u64 {
    data.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u64)
        .sum()
}

fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The folded, un-complemented pseudo-header sum a CHECKSUM_PARTIAL sender leaves in the
/// TCP/UDP checksum field.
fn partial_sum(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: usize) -> u16 {
    fold(sum16(&src) + sum16(&dst) + proto as u64 + l4_len as u64)
}

fn hl(p: &[u8]) -> usize {
    ((p[0] & 0x0f) as usize) * 4
}

fn fix_ip_csum(p: &mut [u8]) {
    let h = hl(p);
    p[10] = 0;
    p[11] = 0;
    let c = !fold(sum16(&p[..h]));
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

fn src_of(p: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(p[12], p[13], p[14], p[15])
}

fn dst_of(p: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(p[16], p[17], p[18], p[19])
}

fn frag_field(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[6], p[7]])
}

fn frag_offset(p: &[u8]) -> usize {
    ((frag_field(p) & 0x1fff) as usize) * 8
}

fn is_icmp_error(t: u8) -> bool {
    matches!(t, 3 | 4 | 5 | 11 | 12)
}

fn fail(msg: impl Into<String>) -> TestCaseError {
    TestCaseError::fail(msg.into())
}

// ---- the oracle ----------------------------------------------------------------------------

/// Verifies, with etherparse, the IPv4 header checksum and (for a whole datagram) the
/// transport checksum; for ICMP errors also the quoted header and, when the quote holds the
/// whole quoted datagram, its transport checksum. With `partial`, TCP/UDP fields must hold the
/// pseudo-header sum of the packet's addresses.
fn oracle(pkt: &[u8], partial: bool) -> Result<(), TestCaseError> {
    // The header alone: `Ipv4Slice` would also parse an AH extension (protocol 51) out of
    // what is, for the gateway, opaque payload.
    let hs = Ipv4HeaderSlice::from_slice(pkt)
        .map_err(|e| fail(format!("etherparse rejects the header: {e:?}")))?;
    let h = hs.to_header();
    prop_assert_eq!(h.total_len as usize, pkt.len(), "total length");
    prop_assert_eq!(
        h.header_checksum,
        h.calc_header_checksum(),
        "IPv4 header checksum"
    );
    if h.more_fragments || h.fragment_offset.value() != 0 {
        return Ok(());
    }
    check_l4(
        h.source,
        h.destination,
        h.protocol.0,
        &pkt[h.header_len()..],
        partial,
    )
}

fn check_l4(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    seg: &[u8],
    partial: bool,
) -> Result<(), TestCaseError> {
    match proto {
        17 => {
            let (u, rest) =
                UdpHeader::from_slice(seg).map_err(|e| fail(format!("UDP header: {e:?}")))?;
            prop_assert_eq!(u.length as usize, seg.len(), "UDP length");
            if partial {
                prop_assert_eq!(
                    u.checksum,
                    partial_sum(src, dst, 17, seg.len()),
                    "UDP partial sum"
                );
            } else if u.checksum != 0 {
                let want = u
                    .calc_checksum_ipv4_raw(src, dst, rest)
                    .map_err(|e| fail(format!("{e:?}")))?;
                prop_assert_eq!(u.checksum, want, "UDP checksum");
            }
        }
        6 => {
            let (t, rest) =
                TcpHeader::from_slice(seg).map_err(|e| fail(format!("TCP header: {e:?}")))?;
            if partial {
                prop_assert_eq!(
                    t.checksum,
                    partial_sum(src, dst, 6, seg.len()),
                    "TCP partial sum"
                );
            } else {
                let want = t
                    .calc_checksum_ipv4_raw(src, dst, rest)
                    .map_err(|e| fail(format!("{e:?}")))?;
                prop_assert_eq!(t.checksum, want, "TCP checksum");
            }
        }
        1 => {
            let s = Icmpv4Slice::from_slice(seg).map_err(|e| fail(format!("ICMP: {e:?}")))?;
            let want = s.header().icmp_type.calc_checksum(s.payload());
            prop_assert_eq!(s.checksum(), want, "ICMP checksum (whole message)");
            if is_icmp_error(s.type_u8()) {
                check_quote(s.payload())?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn check_quote(q: &[u8]) -> Result<(), TestCaseError> {
    let qs = Ipv4HeaderSlice::from_slice(q).map_err(|e| fail(format!("quote: {e:?}")))?;
    let qh = qs.to_header();
    prop_assert_eq!(
        qh.header_checksum,
        qh.calc_header_checksum(),
        "quoted IPv4 header checksum"
    );
    let (qhl, qtotal) = (qh.header_len(), qh.total_len as usize);
    let fragment = qh.more_fragments || qh.fragment_offset.value() != 0;
    if !fragment && qtotal >= qhl && q.len() >= qtotal {
        // The whole quoted datagram is there: its transport checksum can be verified.
        check_l4(
            qh.source,
            qh.destination,
            qh.protocol.0,
            &q[qhl..qtotal],
            false,
        )?;
    }
    Ok(())
}

/// Byte ranges a translation may change in `pkt` (TTL and header checksum always; with NAT
/// also the addresses and the checksums that cover them, including inside an ICMP quote).
fn mutable_ranges(pkt: &[u8], nat: bool) -> Vec<Range<usize>> {
    let mut r = vec![8..9, 10..12];
    if !nat {
        return r;
    }
    r.push(12..20);
    if frag_offset(pkt) != 0 {
        return r;
    }
    let h = hl(pkt);
    match pkt[9] {
        6 => r.push(h + 16..h + 18),
        17 => r.push(h + 6..h + 8),
        1 if pkt.len() >= h + 8 && is_icmp_error(pkt[h]) => {
            r.push(h + 2..h + 4);
            let q = h + 8;
            if pkt.len() >= q + 20 {
                let qhl = hl(&pkt[q..]);
                r.push(q + 10..q + 20);
                match pkt[q + 9] {
                    6 => r.push(q + qhl + 16..q + qhl + 18),
                    17 => r.push(q + qhl + 6..q + qhl + 8),
                    _ => {}
                }
            }
        }
        _ => {}
    }
    r
}

fn diff_within(inp: &[u8], out: &[u8], allowed: &[Range<usize>]) -> Result<(), TestCaseError> {
    prop_assert_eq!(inp.len(), out.len(), "length changed");
    for i in 0..inp.len() {
        if inp[i] != out[i] && !allowed.iter().any(|r| r.contains(&i)) {
            return Err(fail(format!(
                "byte {i} changed ({:#04x} -> {:#04x}) but may not",
                inp[i], out[i]
            )));
        }
    }
    Ok(())
}

// ---- packets -------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Proto {
    Udp {
        sport: u16,
        dport: u16,
        zero_csum: bool,
    },
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Echo {
        id: u16,
        seq: u16,
    },
}

impl Proto {
    fn number(&self) -> u8 {
        match self {
            Proto::Udp { .. } => 17,
            Proto::Tcp { .. } => 6,
            Proto::Echo { .. } => 1,
        }
    }

    /// The answer's ports (or echo id/seq).
    fn reply(&self) -> Proto {
        match *self {
            Proto::Udp {
                sport,
                dport,
                zero_csum,
            } => Proto::Udp {
                sport: dport,
                dport: sport,
                zero_csum,
            },
            Proto::Tcp {
                sport,
                dport,
                flags,
            } => Proto::Tcp {
                sport: dport,
                dport: sport,
                flags,
            },
            Proto::Echo { id, seq } => Proto::Echo { id, seq },
        }
    }
}

/// IPv4 header knobs.
#[derive(Clone, Debug)]
struct Hdr {
    ttl: u8,
    ident: u16,
    tos: u8,
    df: bool,
    /// 4-byte words of NOP options.
    opts: u8,
}

/// Rewrites the header built by `build::*` (20 bytes, TTL 64) with the knobs.
fn apply_hdr(mut p: Vec<u8>, h: &Hdr) -> Vec<u8> {
    let n = h.opts as usize * 4;
    if n > 0 {
        p.splice(20..20, std::iter::repeat_n(1u8, n));
    }
    p[0] = 0x40 | (5 + h.opts);
    p[1] = h.tos;
    let total = p.len() as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[4..6].copy_from_slice(&h.ident.to_be_bytes());
    p[6] = if h.df { 0x40 } else { 0 };
    p[7] = 0;
    p[8] = h.ttl;
    fix_ip_csum(&mut p);
    p
}

/// A whole TCP/UDP/ICMP echo packet. With `partial` the TCP/UDP field holds the
/// pseudo-header sum (as a TUN offload packet does); `reply` makes an echo reply.
fn build_plain(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    p: &Proto,
    reply: bool,
    payload: &[u8],
    h: &Hdr,
    partial: bool,
) -> Vec<u8> {
    let mut pkt = match *p {
        Proto::Udp {
            sport,
            dport,
            zero_csum,
        } => {
            let mut v = build::udp(src, sport, dst, dport, payload);
            if zero_csum {
                v[26..28].copy_from_slice(&[0, 0]);
            }
            v
        }
        Proto::Tcp {
            sport,
            dport,
            flags,
        } => build::tcp(src, sport, dst, dport, flags, payload),
        Proto::Echo { id, seq } => build::icmp(
            src,
            dst,
            if reply { 0 } else { 8 },
            0,
            ((id as u32) << 16) | seq as u32,
            payload,
        ),
    };
    if partial {
        let at = match p {
            Proto::Udp { .. } => Some(26),
            Proto::Tcp { .. } => Some(36),
            Proto::Echo { .. } => None,
        };
        if let Some(at) = at {
            let s = partial_sum(src.octets(), dst.octets(), p.number(), pkt.len() - 20);
            pkt[at..at + 2].copy_from_slice(&s.to_be_bytes());
        }
    }
    apply_hdr(pkt, h)
}

#[derive(Clone, Copy, Debug)]
enum QuoteLen {
    /// Header plus 8 bytes (RFC 792).
    Min,
    /// As much as fits in 576 bytes.
    Max,
    Random(u16),
}

#[derive(Clone, Debug)]
struct ErrSpec {
    ty: u8,
    code: u8,
    rest: u32,
    quote: QuoteLen,
}

fn quote_len(q: QuoteLen, quoted: &[u8]) -> usize {
    let qhl = hl(quoted);
    let max = quoted.len().min(576 - 28).max(qhl);
    match q {
        QuoteLen::Min => (qhl + 8).min(max),
        QuoteLen::Max => max,
        QuoteLen::Random(s) => qhl + s as usize % (max - qhl + 1),
    }
}

/// An ICMP error from `src` to `dst` quoting the start of `quoted`; returns it and the
/// quote's length.
fn build_error(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    e: &ErrSpec,
    quoted: &[u8],
    h: &Hdr,
) -> (Vec<u8>, usize) {
    let n = quote_len(e.quote, quoted);
    (
        apply_hdr(build::icmp(src, dst, e.ty, e.code, e.rest, &quoted[..n]), h),
        n,
    )
}

#[derive(Clone, Debug)]
enum Kind {
    Plain(Proto),
    /// An ICMP error quoting the packet that travelled the other way: from the outer
    /// destination to the outer source, or (from the internet, `third`) to another host.
    Error {
        err: ErrSpec,
        inner: Proto,
        inner_hdr: Hdr,
        inner_payload: Vec<u8>,
        third: Option<Ipv4Addr>,
    },
    /// Neither TCP, UDP nor ICMP.
    Other(u8),
}

/// For an error kind: the whole packet its quote is the start of.
fn quoted_packet(k: &Kind, src: Ipv4Addr, dst: Ipv4Addr, from_internet: bool) -> Option<Vec<u8>> {
    match k {
        Kind::Error {
            inner,
            inner_hdr,
            inner_payload,
            third,
            ..
        } => {
            let qdst = if from_internet {
                third.unwrap_or(src)
            } else {
                src
            };
            Some(build_plain(
                dst,
                qdst,
                inner,
                false,
                inner_payload,
                inner_hdr,
                false,
            ))
        }
        _ => None,
    }
}

fn build_kind(
    k: &Kind,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    from_internet: bool,
    payload: &[u8],
    h: &Hdr,
    partial: bool,
) -> Vec<u8> {
    match k {
        Kind::Plain(p) => build_plain(src, dst, p, false, payload, h, partial),
        Kind::Error { err, .. } => {
            let quoted = quoted_packet(k, src, dst, from_internet).expect("an error kind");
            build_error(src, dst, err, &quoted, h).0
        }
        Kind::Other(proto) => apply_hdr(build::ipv4(src, dst, *proto, payload), h),
    }
}

/// For an ICMP error whose quote is cut short but still holds the quoted TCP/UDP checksum:
/// that field must be what etherparse computes over the whole original segment (`full`,
/// known to the test) for the addresses the quote now carries. A UDP 0 must stay 0.
fn check_truncated_quote(out: &[u8], full: &[u8]) -> Result<(), TestCaseError> {
    let q = &out[hl(out) + 8..];
    let (qhl, proto) = (hl(q), q[9]);
    let at = match proto {
        17 => qhl + 6,
        6 => qhl + 16,
        _ => return Ok(()),
    };
    if q.len() < at + 2 {
        return Ok(());
    }
    let got = u16::from_be_bytes([q[at], q[at + 1]]);
    let seg = &full[hl(full)..];
    let (qs, qd) = (src_of(q).octets(), dst_of(q).octets());
    let want = if proto == 17 {
        let (u, rest) = UdpHeader::from_slice(seg).map_err(|e| fail(format!("{e:?}")))?;
        if u.checksum == 0 {
            0
        } else {
            u.calc_checksum_ipv4_raw(qs, qd, rest)
                .map_err(|e| fail(format!("{e:?}")))?
        }
    } else {
        let (t, rest) = TcpHeader::from_slice(seg).map_err(|e| fail(format!("{e:?}")))?;
        t.calc_checksum_ipv4_raw(qs, qd, rest)
            .map_err(|e| fail(format!("{e:?}")))?
    };
    prop_assert_eq!(got, want, "quoted transport checksum");
    Ok(())
}

// ---- paths through the gateway -------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Path {
    NatIn(usize),
    NatOut(usize),
    BindIn,
    BindOut,
    MultiIn(usize),
    MultiOut(usize),
}

#[derive(Clone, Copy, Debug)]
struct Ends {
    ingress: Side,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    egress: Side,
    out_src: Ipv4Addr,
    out_dst: Ipv4Addr,
    from_internet: bool,
    nat: bool,
}

fn ends(path: Path, host: Ipv4Addr) -> Ends {
    let e = |ingress, src, dst, egress, out_src, out_dst, nat| Ends {
        ingress,
        src,
        dst,
        egress,
        out_src,
        out_dst,
        from_internet: ingress == Side::Internet,
        nat,
    };
    match path {
        Path::NatIn(i) => {
            let m = &NAT[i];
            e(
                Side::Internet,
                host,
                m.eip,
                Side::Eni(m.eni),
                host,
                m.private,
                true,
            )
        }
        Path::NatOut(i) => {
            let m = &NAT[i];
            e(
                Side::Eni(m.eni),
                m.private,
                host,
                Side::Internet,
                m.eip,
                host,
                true,
            )
        }
        Path::BindIn => e(
            Side::Internet,
            host,
            BIND_EIP,
            Side::Eni(BIND_ENI),
            host,
            BIND_EIP,
            false,
        ),
        Path::BindOut => e(
            Side::Eni(BIND_ENI),
            BIND_EIP,
            host,
            Side::Internet,
            BIND_EIP,
            host,
            false,
        ),
        Path::MultiIn(j) => {
            let a = MULTI_EIPS[j];
            e(
                Side::Internet,
                host,
                a,
                Side::Eni(MULTI_ENI),
                host,
                a,
                false,
            )
        }
        Path::MultiOut(j) => {
            let a = MULTI_EIPS[j];
            e(
                Side::Eni(MULTI_ENI),
                a,
                host,
                Side::Internet,
                a,
                host,
                false,
            )
        }
    }
}

// ---- strategies ----------------------------------------------------------------------------

fn host() -> impl Strategy<Value = Ipv4Addr> {
    (1u8..=254).prop_map(|d| ip(203, 0, 113, d))
}

fn payload(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

/// Any port, often a well-known ALG one (which must not matter outside NAT with ALG drop).
fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => any::<u16>(),
        1 => prop::sample::select(vec![21u16, 53, 69, 554, 1720, 5060]),
    ]
}

fn proto() -> impl Strategy<Value = Proto> {
    prop_oneof![
        (port(), port(), prop::bool::weighted(0.25)).prop_map(|(sport, dport, zero_csum)| {
            Proto::Udp {
                sport,
                dport,
                zero_csum,
            }
        }),
        (port(), port(), any::<u8>()).prop_map(|(sport, dport, flags)| Proto::Tcp {
            sport,
            dport,
            flags
        }),
        (any::<u16>(), any::<u16>()).prop_map(|(id, seq)| Proto::Echo { id, seq }),
    ]
}

fn tcp_udp() -> impl Strategy<Value = Proto> {
    proto().prop_filter("TCP or UDP", |p| !matches!(p, Proto::Echo { .. }))
}

fn hdr_with_ttl(ttl: impl Strategy<Value = u8>) -> impl Strategy<Value = Hdr> {
    (
        ttl,
        any::<u16>(),
        any::<u8>(),
        any::<bool>(),
        prop_oneof![3 => Just(0u8), 1 => 1u8..=10],
    )
        .prop_map(|(ttl, ident, tos, df, opts)| Hdr {
            ttl,
            ident,
            tos,
            df,
            opts,
        })
}

/// A header the gateway forwards (TTL at least 2).
fn hdr() -> impl Strategy<Value = Hdr> {
    hdr_with_ttl(2u8..=255)
}

fn err_spec() -> impl Strategy<Value = ErrSpec> {
    let tc = prop_oneof![
        (Just(3u8), 0u8..=15),
        (Just(11u8), 0u8..=1),
        (Just(12u8), 0u8..=2),
        (Just(5u8), 0u8..=3),
    ];
    let quote = prop_oneof![
        Just(QuoteLen::Min),
        Just(QuoteLen::Max),
        any::<u16>().prop_map(QuoteLen::Random)
    ];
    (tc, any::<u32>(), quote).prop_map(|((ty, code), r, quote)| {
        // Fields etherparse reads; the others stay zero as RFC 792 says.
        let rest = match (ty, code) {
            (3, 4) => r & 0xffff,      // next-hop MTU
            (12, 0) => (r % 20) << 24, // pointer
            (5, _) => r,               // gateway address
            _ => 0,
        };
        ErrSpec {
            ty,
            code,
            rest,
            quote,
        }
    })
}

fn error_kind() -> impl Strategy<Value = Kind> {
    (
        err_spec(),
        proto(),
        hdr(),
        payload(1400),
        prop::option::of(host()),
    )
        .prop_map(
            |(err, inner, inner_hdr, inner_payload, third)| Kind::Error {
                err,
                inner,
                inner_hdr,
                inner_payload,
                third,
            },
        )
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        6 => proto().prop_map(Kind::Plain),
        3 => error_kind(),
        1 => any::<u8>()
            .prop_filter("not TCP/UDP/ICMP", |p| !matches!(p, 1 | 6 | 17))
            .prop_map(Kind::Other),
    ]
}

fn nat_path() -> impl Strategy<Value = Path> {
    prop_oneof![
        (0..NAT.len()).prop_map(Path::NatIn),
        (0..NAT.len()).prop_map(Path::NatOut)
    ]
}

fn cut_path() -> impl Strategy<Value = Path> {
    prop_oneof![
        Just(Path::BindIn),
        Just(Path::BindOut),
        (0..MULTI_EIPS.len()).prop_map(Path::MultiIn),
        (0..MULTI_EIPS.len()).prop_map(Path::MultiOut),
    ]
}

fn any_path() -> impl Strategy<Value = Path> {
    prop_oneof![2 => nat_path(), 1 => cut_path()]
}

fn flags() -> impl Strategy<Value = PacketFlags> {
    any::<bool>().prop_map(|csum_partial| PacketFlags { csum_partial })
}

// ---- running the engine --------------------------------------------------------------------

struct Rig {
    e: Engine,
    now: u64,
}

impl Rig {
    fn new(t: Arc<Table>) -> Self {
        Rig {
            e: Engine::new(t),
            now: 1_000_000_000,
        }
    }

    /// One packet through `process`, with 600 spare bytes of room. Returns the verdict and
    /// the buffer cut to the packet's (or the reply's) length.
    fn send(&mut self, side: Side, pkt: &[u8], flags: PacketFlags) -> (Verdict, Vec<u8>) {
        self.now += 1_000;
        let mut buf = pkt.to_vec();
        buf.resize(pkt.len() + 600, 0);
        let v = self.e.process(self.now, side, &mut buf, pkt.len(), flags);
        let n = match v {
            Verdict::Reply { len, .. } => len,
            _ => pkt.len(),
        };
        buf.truncate(n);
        (v, buf)
    }

    fn released(&mut self) -> Option<(Verdict, Vec<u8>)> {
        let mut buf = vec![0u8; 65_536];
        let (n, v) = self.e.poll_released(self.now, &mut buf)?;
        buf.truncate(n);
        Some((v, buf))
    }
}

/// Sends a packet that must be forwarded to `egress` with the given addresses, and checks
/// that nothing but what the translation may touch changed, and the oracle.
#[allow(clippy::too_many_arguments)]
fn hop(
    rig: &mut Rig,
    ingress: Side,
    egress: Side,
    pkt: &[u8],
    flags: PacketFlags,
    want_src: Ipv4Addr,
    want_dst: Ipv4Addr,
    nat: bool,
) -> Result<Vec<u8>, TestCaseError> {
    let (v, out) = rig.send(ingress, pkt, flags);
    prop_assert_eq!(v, Verdict::Forward(egress), "verdict");
    prop_assert_eq!(src_of(&out), want_src, "source");
    prop_assert_eq!(dst_of(&out), want_dst, "destination");
    prop_assert_eq!(out[8], pkt[8] - 1, "TTL");
    diff_within(pkt, &out, &mutable_ranges(pkt, nat))?;
    oracle(&out, flags.csum_partial)?;
    Ok(out)
}

/// What a translated quote of `n` bytes must be: the packet as its sender sent it, TTL one
/// less (it was quoted after the gateway). One exception: a quote that ends in the middle of
/// the quoted TCP/UDP checksum field holds one byte of it, which no translation can fix; it
/// must stay as quoted (`on_wire`, the packet as the error's sender saw it).
fn expected_quote(orig: &[u8], on_wire: &[u8], n: usize) -> Vec<u8> {
    let mut want = orig.to_vec();
    want[8] -= 1;
    fix_ip_csum(&mut want);
    want.truncate(n);
    let at = hl(orig)
        + match orig[9] {
            17 => 6,
            6 => 16,
            _ => return want,
        };
    if n == at + 1 {
        want[at] = on_wire[at];
    }
    want
}

fn l4_payload<'a>(p: &'a [u8], proto: &Proto) -> &'a [u8] {
    let h = hl(p);
    match proto {
        Proto::Tcp { .. } => &p[h + 20..],
        _ => &p[h + 8..],
    }
}

/// received == forwarded + replied + held + drops, as the brief states it.
fn briefed_identity(g: &GlobalCounters) -> Result<(), TestCaseError> {
    let rhs = g.forwarded.packets + g.replied.packets + g.held + g.total_drops();
    prop_assert_eq!(
        g.received.packets,
        rhs,
        "received != forwarded + replied + held + drops: {:?}",
        g
    );
    Ok(())
}

// ---- properties ----------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Leg {
    payload: Vec<u8>,
    hdr: Hdr,
    flags: PacketFlags,
}

fn leg() -> impl Strategy<Value = Leg> {
    (payload(1400), hdr(), flags()).prop_map(|(payload, hdr, flags)| Leg {
        payload,
        hdr,
        flags,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// p1: NAT round trip, started by either side.
    #[test]
    fn p1_nat_round_trip(
        i in 0..NAT.len(),
        h in host(),
        p in proto(),
        first in leg(),
        back in leg(),
        guest_first in any::<bool>(),
    ) {
        let m = &NAT[i];
        let mut rig = Rig::new(pass_table());
        if !guest_first {
            let inp = build_plain(h, m.eip, &p, false, &first.payload, &first.hdr, first.flags.csum_partial);
            let out = hop(&mut rig, Side::Internet, Side::Eni(m.eni), &inp, first.flags, h, m.private, true)?;
            prop_assert_eq!(l4_payload(&out, &p), &first.payload[..]);
            let reply = build_plain(m.private, h, &p.reply(), true, &back.payload, &back.hdr, back.flags.csum_partial);
            let out2 = hop(&mut rig, Side::Eni(m.eni), Side::Internet, &reply, back.flags, m.eip, h, true)?;
            prop_assert_eq!(l4_payload(&out2, &p), &back.payload[..]);
            // The reply's addresses are the request's, swapped.
            prop_assert_eq!((src_of(&out2), dst_of(&out2)), (dst_of(&inp), src_of(&inp)));
        } else {
            let inp = build_plain(m.private, h, &p, false, &first.payload, &first.hdr, first.flags.csum_partial);
            let out = hop(&mut rig, Side::Eni(m.eni), Side::Internet, &inp, first.flags, m.eip, h, true)?;
            prop_assert_eq!(l4_payload(&out, &p), &first.payload[..]);
            let reply = build_plain(h, m.eip, &p.reply(), true, &back.payload, &back.hdr, back.flags.csum_partial);
            let out2 = hop(&mut rig, Side::Internet, Side::Eni(m.eni), &reply, back.flags, h, m.private, true)?;
            prop_assert_eq!(l4_payload(&out2, &p), &back.payload[..]);
            prop_assert_eq!((src_of(&out2), dst_of(&out2)), (dst_of(&inp), src_of(&inp)));
        }
    }

    /// p2: valid checksums on every forwarded packet (etherparse oracle); UDP 0 stays 0.
    #[test]
    fn p2_forwarded_checksums_valid(
        path in any_path(),
        h in host(),
        k in kind(),
        pl in payload(1400),
        hd in hdr(),
    ) {
        let en = ends(path, h);
        let mut rig = Rig::new(pass_table());
        let inp = build_kind(&k, en.src, en.dst, en.from_internet, &pl, &hd, false);
        oracle(&inp, false)?; // the input itself is sound
        let out = hop(&mut rig, en.ingress, en.egress, &inp, PacketFlags::default(), en.out_src, en.out_dst, en.nat)?;
        if let Kind::Plain(Proto::Udp { zero_csum: true, .. }) = k {
            let at = hl(&out) + 6;
            prop_assert_eq!(&out[at..at + 2], &[0u8, 0][..], "UDP checksum 0 must stay 0");
        }
        if let Some(full) = quoted_packet(&k, en.src, en.dst, en.from_internet) {
            check_truncated_quote(&out, &full)?;
        }
    }

    /// p3: with csum_partial, the TCP/UDP field holds the output addresses' pseudo-header sum.
    #[test]
    fn p3_partial_checksum_follows_the_addresses(
        path in any_path(),
        h in host(),
        p in tcp_udp(),
        pl in payload(1400),
        hd in hdr(),
    ) {
        let en = ends(path, h);
        let mut rig = Rig::new(pass_table());
        let inp = build_plain(en.src, en.dst, &p, false, &pl, &hd, true);
        let flags = PacketFlags { csum_partial: true };
        let out = hop(&mut rig, en.ingress, en.egress, &inp, flags, en.out_src, en.out_dst, en.nat)?;
        let at = hl(&out) + if p.number() == 6 { 16 } else { 6 };
        let got = u16::from_be_bytes([out[at], out[at + 1]]);
        let want = partial_sum(en.out_src.octets(), en.out_dst.octets(), p.number(), out.len() - hl(&out));
        prop_assert_eq!(got, want);
    }

    /// p4a: an internet ICMP error about the guest's translated packet reaches the guest with
    /// the quote exactly as the guest sent it (TTL one less).
    #[test]
    fn p4a_icmp_error_from_internet_quote_translated(
        i in 0..NAT.len(),
        h in host(),
        router in prop::option::of(host()),
        inner in proto(),
        pl in payload(1400),
        ih in hdr(),
        err in err_spec(),
        oh in hdr(),
    ) {
        let m = &NAT[i];
        let mut rig = Rig::new(pass_table());
        let orig = build_plain(m.private, h, &inner, false, &pl, &ih, false);
        let sent = hop(&mut rig, Side::Eni(m.eni), Side::Internet, &orig, PacketFlags::default(), m.eip, h, true)?;
        let r = router.unwrap_or(h);
        let (icmp, n) = build_error(r, m.eip, &err, &sent, &oh);
        let out = hop(&mut rig, Side::Internet, Side::Eni(m.eni), &icmp, PacketFlags::default(), r, m.private, true)?;
        let q = hl(&out) + 8;
        prop_assert_eq!(src_of(&out[q..]), m.private, "quoted source");
        prop_assert_eq!(dst_of(&out[q..]), h, "quoted destination");
        let want = expected_quote(&orig, &sent, n);
        prop_assert_eq!(&out[q..], &want[..], "quote differs from the guest's packet");
    }

    /// p4b: the guest's ICMP error about an inbound packet leaves with the quote exactly as
    /// the internet host sent it (TTL one less).
    #[test]
    fn p4b_icmp_error_from_guest_quote_translated(
        i in 0..NAT.len(),
        h in host(),
        inner in proto(),
        pl in payload(1400),
        ih in hdr(),
        err in err_spec(),
        oh in hdr(),
    ) {
        let m = &NAT[i];
        let mut rig = Rig::new(pass_table());
        let orig = build_plain(h, m.eip, &inner, false, &pl, &ih, false);
        let got = hop(&mut rig, Side::Internet, Side::Eni(m.eni), &orig, PacketFlags::default(), h, m.private, true)?;
        let (icmp, n) = build_error(m.private, h, &err, &got, &oh);
        let out = hop(&mut rig, Side::Eni(m.eni), Side::Internet, &icmp, PacketFlags::default(), m.eip, h, true)?;
        let q = hl(&out) + 8;
        prop_assert_eq!(src_of(&out[q..]), h, "quoted source");
        prop_assert_eq!(dst_of(&out[q..]), m.eip, "quoted destination");
        let want = expected_quote(&orig, &got, n);
        prop_assert_eq!(&out[q..], &want[..], "quote differs from the internet's packet");
    }

    /// p5: BINDED and MULTI_BINDED pass packets with only TTL and header checksum changed.
    #[test]
    fn p5_cut_through_unchanged(
        path in cut_path(),
        h in host(),
        k in kind(),
        pl in payload(1400),
        hd in hdr(),
        fl in flags(),
        alg_drop in any::<bool>(),
    ) {
        let en = ends(path, h);
        prop_assert!(!en.nat);
        let mut rig = Rig::new(if alg_drop { drop_table() } else { pass_table() });
        let inp = build_kind(&k, en.src, en.dst, en.from_internet, &pl, &hd, fl.csum_partial);
        let out = hop(&mut rig, en.ingress, en.egress, &inp, fl, en.src, en.dst, false)?;
        prop_assert_eq!(&out[12..20], &inp[12..20]);
    }
}

// ---- p6: fragments -------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct FragCase {
    payload: Vec<u8>,
    /// Fragment payload size in units of 8 bytes.
    k: usize,
    /// Delivery order (a permutation of the fragment indices).
    order: Vec<usize>,
}

/// A UDP payload of 1..1400 bytes cut into at least two fragments, in a random order.
fn frag_case() -> impl Strategy<Value = FragCase> {
    (1usize..1400)
        .prop_flat_map(|len| (vec(any::<u8>(), len), 1..=len.div_ceil(8).min(128)))
        .prop_flat_map(|(payload, k)| {
            let n = (8 + payload.len()).div_ceil(8 * k);
            (
                Just(payload),
                Just(k),
                Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
            )
        })
        .prop_map(|(payload, k, order)| FragCase { payload, k, order })
}

#[derive(Clone, Debug)]
struct Dgram {
    i: usize,
    host: Ipv4Addr,
    inbound: bool,
    sport: u16,
    dport: u16,
    zero_csum: bool,
    hdr: Hdr,
}

fn dgram(ports: impl Strategy<Value = (u16, u16)>) -> impl Strategy<Value = Dgram> {
    (
        0..NAT.len(),
        host(),
        any::<bool>(),
        ports,
        any::<bool>(),
        (2u8..=255, any::<u16>(), 0u8..=3),
    )
        .prop_map(
            |(i, host, inbound, (sport, dport), zero_csum, (ttl, ident, opts))| Dgram {
                i,
                host,
                inbound,
                sport,
                dport,
                zero_csum,
                hdr: Hdr {
                    ttl,
                    ident,
                    tos: 0,
                    df: false,
                    opts,
                },
            },
        )
}

/// Ports no ALG claims.
fn plain_ports() -> impl Strategy<Value = (u16, u16)> {
    (10_000u16..60_000, 10_000u16..60_000)
}

/// SIP: 5060 on one side.
fn sip_ports() -> impl Strategy<Value = (u16, u16)> {
    (10_000u16..60_000, any::<bool>()).prop_map(|(p, dst)| if dst { (p, 5060) } else { (5060, p) })
}

/// Builds the datagram and its fragments; returns (ingress, egress, out_src, out_dst, the
/// whole datagram, fragments).
fn fragmented(d: &Dgram, fc: &FragCase) -> (Ends, Vec<u8>, Vec<Vec<u8>>) {
    let path = if d.inbound {
        Path::NatIn(d.i)
    } else {
        Path::NatOut(d.i)
    };
    let en = ends(path, d.host);
    let p = Proto::Udp {
        sport: d.sport,
        dport: d.dport,
        zero_csum: d.zero_csum,
    };
    let whole = build_plain(en.src, en.dst, &p, false, &fc.payload, &d.hdr, false);
    let frags = build::fragment(&whole, 8 * fc.k);
    (en, whole, frags)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// p6a: every fragment is forwarded (directly or released), translated, and they
    /// reassemble to the datagram with a valid UDP checksum for the new addresses. Run under
    /// ALG all-pass (no fragment tracking) and ALG drop (first fragment decides).
    #[test]
    fn p6a_fragments_forwarded_in_any_order(
        fc in frag_case(),
        d in dgram(plain_ports()),
        alg_drop in any::<bool>(),
    ) {
        let (en, _whole, frags) = fragmented(&d, &fc);
        prop_assert_eq!(frags.len(), fc.order.len());
        let by_offset: HashMap<usize, &Vec<u8>> = frags.iter().map(|f| (frag_offset(f), f)).collect();
        let mut rig = Rig::new(if alg_drop { drop_table() } else { pass_table() });
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut take = |v: Verdict, pkt: Vec<u8>| -> Result<(), TestCaseError> {
            match v {
                Verdict::Forward(s) => {
                    prop_assert_eq!(s, en.egress);
                    out.push(pkt);
                }
                Verdict::Held => prop_assert!(alg_drop, "held although ALG is all pass"),
                other => return Err(fail(format!("fragment not forwarded: {other:?}"))),
            }
            Ok(())
        };
        for &j in &fc.order {
            let (v, pkt) = rig.send(en.ingress, &frags[j], PacketFlags::default());
            take(v, pkt)?;
            while let Some((v, pkt)) = rig.released() {
                take(v, pkt)?;
            }
        }
        prop_assert_eq!(out.len(), frags.len(), "not every fragment came out");
        let mut seen = HashMap::new();
        for o in &out {
            let off = frag_offset(o);
            let inp = by_offset.get(&off).ok_or_else(|| fail(format!("unknown offset {off}")))?;
            prop_assert!(seen.insert(off, ()).is_none(), "offset {} forwarded twice", off);
            prop_assert_eq!(src_of(o), en.out_src);
            prop_assert_eq!(dst_of(o), en.out_dst);
            prop_assert_eq!(o[8], inp[8] - 1, "TTL");
            diff_within(inp, o, &mutable_ranges(inp, true))?;
            oracle(o, false)?;
        }
        // Reassemble.
        let mut sorted: Vec<&Vec<u8>> = out.iter().collect();
        sorted.sort_by_key(|o| frag_offset(o));
        let mut seg = Vec::new();
        for o in &sorted {
            prop_assert_eq!(frag_offset(o), seg.len(), "gap or overlap");
            seg.extend_from_slice(&o[hl(o)..]);
        }
        prop_assert_eq!(seg.len(), 8 + fc.payload.len());
        prop_assert_eq!(&seg[8..], &fc.payload[..], "payload");
        prop_assert_eq!(u16::from_be_bytes([seg[0], seg[1]]), d.sport);
        prop_assert_eq!(u16::from_be_bytes([seg[2], seg[3]]), d.dport);
        if d.zero_csum {
            prop_assert_eq!(&seg[6..8], &[0u8, 0][..], "UDP checksum 0 must stay 0");
        }
        check_l4(en.out_src.octets(), en.out_dst.octets(), 17, &seg, false)?;
    }

    /// p6b: with ALG drop, every fragment of a SIP datagram is dropped, in any order.
    #[test]
    fn p6b_alg_fragments_all_dropped_in_any_order(
        fc in frag_case(),
        d in dgram(sip_ports()),
    ) {
        let (en, _whole, frags) = fragmented(&d, &fc);
        let mut rig = Rig::new(drop_table());
        for &j in &fc.order {
            let (v, _) = rig.send(en.ingress, &frags[j], PacketFlags::default());
            match v {
                Verdict::Held => {}
                Verdict::Drop(r) => prop_assert!(r.is_alg(), "dropped for {:?}", r),
                other => return Err(fail(format!("fragment {j} got {other:?}"))),
            }
            if let Some((v, _)) = rig.released() {
                return Err(fail(format!("a SIP fragment was released: {v:?}")));
            }
        }
        let g = rig.e.global_counters();
        prop_assert_eq!(g.forwarded.packets, 0);
        let alg: u64 = DropReason::ALL.iter().filter(|r| r.is_alg()).map(|&r| g.drops[r as usize]).sum();
        prop_assert_eq!(alg, frags.len() as u64, "every fragment dropped by the ALG rule");
        prop_assert_eq!(g.total_drops(), frags.len() as u64);
    }
}

// ---- p8: ALG ports -------------------------------------------------------------------------

const ALG_UDP: [(u16, AlgProtocol); 3] = [
    (5060, AlgProtocol::Sip),
    (53, AlgProtocol::Dns),
    (69, AlgProtocol::Tftp),
];
const ALG_TCP: [(u16, AlgProtocol); 5] = [
    (5060, AlgProtocol::Sip),
    (21, AlgProtocol::Ftp),
    (53, AlgProtocol::Dns),
    (554, AlgProtocol::Rtsp),
    (1720, AlgProtocol::H323),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// p8: under the default ALG policy (drop), a TCP/UDP packet with an ALG port is dropped
    /// under NAT (either direction) and forwarded unchanged under cut-through.
    #[test]
    fn p8_alg_ports_dropped_under_nat_never_under_cut_through(
        path in any_path(),
        h in host(),
        tcp in any::<bool>(),
        sel in any::<Index>(),
        which in 0u8..3,
        other in any::<u16>(),
        extra in (any::<u8>(), payload(600), hdr()),
    ) {
        let (flags, pl, hd) = extra;
        let table: &[(u16, AlgProtocol)] = if tcp { &ALG_TCP } else { &ALG_UDP };
        let (port, proto) = table[sel.index(table.len())];
        let (sport, dport) = match which {
            0 => (port, other),
            1 => (other, port),
            _ => (port, port),
        };
        let p = if tcp {
            Proto::Tcp { sport, dport, flags }
        } else {
            Proto::Udp { sport, dport, zero_csum: false }
        };
        let en = ends(path, h);
        let mut rig = Rig::new(drop_table());
        let inp = build_plain(en.src, en.dst, &p, false, &pl, &hd, false);
        if en.nat {
            let (v, _) = rig.send(en.ingress, &inp, PacketFlags::default());
            let mut allowed = vec![DropReason::alg(proto)];
            if let Some(&(_, q)) = table.iter().find(|(pt, _)| *pt == other && which != 2) {
                allowed.push(DropReason::alg(q));
            }
            match v {
                Verdict::Drop(r) => prop_assert!(allowed.contains(&r), "dropped for {:?}, want one of {:?}", r, allowed),
                other => return Err(fail(format!("ALG port {port} under NAT: {other:?}"))),
            }
        } else {
            hop(&mut rig, en.ingress, en.egress, &inp, PacketFlags::default(), en.src, en.dst, false)?;
        }
    }
}

// ---- p7: no panic, every verdict accounted ----------------------------------------------------

fn addr_pool() -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = NAT.iter().flat_map(|m| [m.eip, m.private]).collect();
    v.extend([
        BIND_EIP,
        ip(10, 0, 4, 40),
        ip(10, 0, 4, 41),
        ip(10, 0, 5, 50),
        ip(10, 0, 2, 22),
        STOPPED_EIP,
        ip(10, 0, 6, 60),
        DETACHED_EIP,
        ip(10, 0, 7, 70),
        UNASSOCIATED_EIP,
        INTERNET_GW,
        ip(10, 0, 1, 1),
        ip(10, 0, 4, 1),
        ip(10, 9, 9, 9),
        ip(100, 100, 100, 200),
        ip(100, 100, 2, 136),
        ip(198, 51, 100, 77),
        ip(203, 0, 113, 7),
        ip(203, 0, 113, 200),
        ip(8, 8, 8, 8),
        ip(0, 0, 0, 0),
        ip(127, 0, 0, 1),
        ip(224, 0, 0, 1),
        ip(255, 255, 255, 255),
    ]);
    v.extend(MULTI_EIPS);
    v
}

fn pool_addr() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        6 => prop::sample::select(addr_pool()),
        1 => any::<u32>().prop_map(Ipv4Addr::from),
    ]
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![
        3 => Just(Side::Internet),
        1 => Just(Side::CloudServices),
        3 => (0u16..=9).prop_map(Side::Eni),
        1 => any::<u16>().prop_map(Side::Eni),
    ]
}

fn table_opts() -> impl Strategy<Value = TableOpts> {
    let action = || {
        prop_oneof![
            Just(AlgAction::Drop),
            Just(AlgAction::Pass),
            Just(AlgAction::Inspect)
        ]
    };
    (
        action(),
        action(),
        prop_oneof![Just(0u32), Just(1), Just(100)],
        prop_oneof![Just(OtherProtocols::Forward), Just(OtherProtocols::Drop)],
        any::<bool>(),
    )
        .prop_map(|(a, sip, bandwidth, other, source_check)| TableOpts {
            alg: AlgPolicy::all(a).with(AlgProtocol::Sip, sip),
            bandwidth,
            other,
            source_check,
        })
}

/// Makes arbitrary bytes look enough like IPv4 to get past the header checks.
#[derive(Clone, Debug)]
struct Fixup {
    ihl: u8,
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    frag: u16,
    ttl: u8,
}

fn fixup() -> impl Strategy<Value = Fixup> {
    (
        prop_oneof![3 => Just(5u8), 1 => 0u8..=15],
        prop_oneof![Just(1u8), Just(6), Just(17), any::<u8>()],
        pool_addr(),
        pool_addr(),
        prop_oneof![Just(0u16), Just(0x2000), Just(0x4000), any::<u16>()],
        any::<u8>(),
    )
        .prop_map(|(ihl, proto, src, dst, frag, ttl)| Fixup {
            ihl,
            proto,
            src,
            dst,
            frag,
            ttl,
        })
}

fn apply_fixup(b: &mut [u8], f: &Fixup) {
    if b.len() < 20 {
        return;
    }
    b[0] = 0x40 | f.ihl;
    let total = b.len().min(u16::MAX as usize) as u16;
    b[2..4].copy_from_slice(&total.to_be_bytes());
    b[6..8].copy_from_slice(&f.frag.to_be_bytes());
    b[8] = f.ttl;
    b[9] = f.proto;
    b[12..16].copy_from_slice(&f.src.octets());
    b[16..20].copy_from_slice(&f.dst.octets());
    if (f.ihl as usize) * 4 <= b.len() && f.ihl >= 5 {
        fix_ip_csum(b);
    }
}

#[derive(Clone, Debug)]
struct RawPkt {
    bytes: Vec<u8>,
    extra: usize,
    side: Side,
    flags: PacketFlags,
    dt: u64,
    fix: Option<Fixup>,
}

fn raw_pkt() -> impl Strategy<Value = RawPkt> {
    (
        vec(any::<u8>(), 0..2000),
        0usize..600,
        side(),
        flags(),
        prop_oneof![Just(0u64), 0u64..1_000_000, 0u64..60_000_000_000],
        prop::option::weighted(0.5, fixup()),
    )
        .prop_map(|(bytes, extra, side, flags, dt, fix)| RawPkt {
            bytes,
            extra,
            side,
            flags,
            dt,
            fix,
        })
}

/// Whether an IPv4 header (as raw bytes, IHL taken from the first byte) sums to all ones.
/// Raw on purpose: etherparse's `Ipv4Header` has no field for the reserved flag bit, so its
/// recomputation differs from the wire when arbitrary input sets that bit.
fn raw_header_ok(p: &[u8]) -> bool {
    p.len() >= 20 && hl(p) >= 20 && hl(p) <= p.len() && fold(sum16(&p[..hl(p)])) == 0xffff
}

/// What every verdict must satisfy, whatever the input.
fn verdict_sane(v: Verdict, ingress: Side, buf: &[u8], len: usize) -> Result<(), TestCaseError> {
    match v {
        Verdict::Reply { to, len: n } => {
            prop_assert_eq!(to, ingress, "replies go back where the packet came from");
            prop_assert!(n <= buf.len(), "reply longer than the buffer");
            let r = &buf[..n];
            let h = Ipv4HeaderSlice::from_slice(r).map_err(|e| fail(format!("reply: {e:?}")))?;
            prop_assert_eq!(h.total_len() as usize, n, "reply length");
            prop_assert_eq!(h.protocol().0, 1, "replies are ICMP");
            prop_assert!(raw_header_ok(r), "reply header checksum");
        }
        Verdict::Forward(_) => {
            // The input's header checksum was verified; the rewrite must keep it valid.
            prop_assert!(raw_header_ok(&buf[..len]), "forwarded header checksum");
        }
        Verdict::Held | Verdict::Drop(_) => {}
    }
    Ok(())
}

/// Structured input for p7b: a real packet (maybe fragmented), then damaged.
#[derive(Clone, Debug)]
struct Item {
    side: Side,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    kind: Kind,
    payload: Vec<u8>,
    hdr: Hdr,
    partial: bool,
    frag: Option<usize>,
    shuffle: u64,
    /// (which packet, byte index, xor)
    muts: Vec<(usize, usize, u8)>,
    fix_csum: bool,
    /// (which packet, new length, also fix the total length and header checksum)
    trunc: Option<(usize, usize, bool)>,
    extra: usize,
    dt: u64,
    rel_cap: usize,
    timeout: bool,
    batch: bool,
    swap_table: Option<usize>,
}

fn target() -> impl Strategy<Value = (Side, Ipv4Addr, Ipv4Addr)> {
    prop_oneof![
        3 => (any_path(), host()).prop_map(|(p, h)| {
            let e = ends(p, h);
            (e.ingress, e.src, e.dst)
        }),
        2 => (side(), pool_addr(), pool_addr()),
    ]
}

fn item() -> impl Strategy<Value = Item> {
    let what = (
        target(),
        kind(),
        payload(1400),
        hdr_with_ttl(prop_oneof![1 => 0u8..=2, 5 => any::<u8>()]),
        any::<bool>(),
        prop::option::weighted(0.4, 1usize..=64),
        any::<u64>(),
    );
    let damage = (
        prop_oneof![2 => Just(vec![]), 1 => vec((any::<usize>(), any::<usize>(), any::<u8>()), 1..4)],
        any::<bool>(),
        prop::option::weighted(0.3, (any::<usize>(), any::<usize>(), any::<bool>())),
    );
    let how = (
        0usize..600,
        prop_oneof![Just(0u64), 0u64..1_000_000, 0u64..40_000_000_000],
        prop_oneof![Just(65_536usize), 0usize..1600],
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.3),
        prop::option::weighted(0.1, 0usize..3),
    );
    (what, damage, how).prop_map(
        |(
            ((side, src, dst), kind, payload, hdr, partial, frag, shuffle),
            (muts, fix_csum, trunc),
            (extra, dt, rel_cap, timeout, batch, swap_table),
        )| Item {
            side,
            src,
            dst,
            kind,
            payload,
            hdr,
            partial,
            frag,
            shuffle,
            muts,
            fix_csum,
            trunc,
            extra,
            dt,
            rel_cap,
            timeout,
            batch,
            swap_table,
        },
    )
}

fn engine_config() -> impl Strategy<Value = EngineConfig> {
    prop_oneof![
        Just(EngineConfig::default()),
        (
            1usize..8,
            1_000_000u64..60_000_000_000,
            0usize..6000,
            0usize..4
        )
            .prop_map(
                |(frag_capacity, frag_timeout_ns, frag_held_bytes, report_capacity)| EngineConfig {
                    frag_capacity,
                    frag_timeout_ns,
                    frag_held_bytes,
                    report_capacity,
                }
            ),
    ]
}

/// The packets of an item, in delivery order, damaged as the item says.
fn item_packets(it: &Item) -> Vec<Vec<u8>> {
    let from_internet = it.side == Side::Internet;
    let whole = build_kind(
        &it.kind,
        it.src,
        it.dst,
        from_internet,
        &it.payload,
        &it.hdr,
        it.partial,
    );
    let mut pkts = match it.frag {
        // A packet with no payload has nothing to fragment (`fragment` returns no pieces).
        Some(k) if whole.len() > hl(&whole) => build::fragment(&whole, 8 * k),
        _ => vec![whole],
    };
    // Fisher-Yates with a small xorshift.
    let mut s = it.shuffle | 1;
    for i in (1..pkts.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        pkts.swap(i, (s % (i as u64 + 1)) as usize);
    }
    let n = pkts.len();
    for &(w, at, x) in &it.muts {
        let p = &mut pkts[w % n];
        if !p.is_empty() {
            let l = p.len();
            p[at % l] ^= x;
            if it.fix_csum && p.len() >= 20 && hl(p) >= 20 && hl(p) <= p.len() {
                fix_ip_csum(p);
            }
        }
    }
    if let Some((w, at, fix_len)) = it.trunc {
        let p = &mut pkts[w % n];
        let l = p.len();
        p.truncate(at % (l + 1));
        // A short but well-formed packet: short transport headers and quotes reach the
        // engine's deeper code instead of failing the length check.
        if fix_len && p.len() >= 20 && hl(p) >= 20 && hl(p) <= p.len() {
            let total = p.len() as u16;
            p[2..4].copy_from_slice(&total.to_be_bytes());
            fix_ip_csum(p);
        }
    }
    pkts
}

/// Runs p7a's input; `check` sees the counters after every packet.
fn run_raw(
    opts: TableOpts,
    pkts: &[RawPkt],
    mut check: impl FnMut(&GlobalCounters) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let mut e = Engine::new(make_table(opts));
    let mut now = 1_000_000_000u64;
    for p in pkts {
        now += p.dt;
        let mut buf = p.bytes.clone();
        if let Some(f) = &p.fix {
            apply_fixup(&mut buf, f);
        }
        let len = buf.len();
        buf.resize(len + p.extra, 0);
        let v = e.process(now, p.side, &mut buf, len, p.flags);
        verdict_sane(v, p.side, &buf, len)?;
        let mut rel = vec![0u8; 2048];
        while let Some((n, v)) = e.poll_released(now, &mut rel) {
            prop_assert!(n <= rel.len());
            prop_assert!(
                !matches!(v, Verdict::Reply { .. }),
                "released fragment answered"
            );
            verdict_sane(v, p.side, &rel, n)?;
        }
        check(e.global_counters())?;
    }
    while e.poll_report().is_some() {}
    Ok(())
}

/// Runs p7b's input; `check` sees the counters after every item and at the end, once every
/// held fragment has been resolved (released or expired).
fn run_items(
    opts: (TableOpts, TableOpts, TableOpts),
    config: EngineConfig,
    items: &[Item],
    mut check: impl FnMut(&GlobalCounters) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let tables = [make_table(opts.0), make_table(opts.1), make_table(opts.2)];
    let mut e = Engine::with_config(tables[0].clone(), config);
    let mut now = 1_000_000_000u64;
    for it in items {
        now += it.dt;
        if let Some(t) = it.swap_table {
            e.set_table(tables[t].clone());
        }
        let flags = PacketFlags {
            csum_partial: it.partial,
        };
        let pkts = item_packets(it);
        if it.batch {
            let mut bufs: Vec<PacketBuf> = pkts
                .iter()
                .map(|p| {
                    let mut b = PacketBuf::with_capacity(p.len() + it.extra);
                    b.set(p);
                    b.flags = flags;
                    b.ingress = it.side;
                    b
                })
                .collect();
            e.process_batch(now, &mut bufs);
            for b in &bufs {
                verdict_sane(b.verdict, it.side, &b.data, b.len)?;
            }
        } else {
            for p in &pkts {
                let mut buf = p.clone();
                buf.resize(p.len() + it.extra, 0);
                let v = e.process(now, it.side, &mut buf, p.len(), flags);
                verdict_sane(v, it.side, &buf, p.len())?;
            }
        }
        let mut rel = vec![0u8; it.rel_cap];
        while let Some((n, v)) = e.poll_released(now, &mut rel) {
            // Released fragments are never first fragments: nothing to answer.
            prop_assert!(
                !matches!(v, Verdict::Reply { .. }),
                "released fragment answered: {:?}",
                v
            );
            verdict_sane(v, it.side, &rel, n)?;
        }
        if it.timeout {
            e.handle_timeout(now);
        }
        check(e.global_counters())?;
    }
    // Resolve everything still held: release what was decided, expire the rest.
    let mut rel = vec![0u8; 65_536];
    for _ in 0..3 {
        now += 100_000_000_000;
        while e.poll_released(now, &mut rel).is_some() {}
        e.handle_timeout(now);
    }
    prop_assert_eq!(e.poll_timeout(), None, "fragment state left after expiry");
    check(e.global_counters())?;
    for s in 0..20 {
        let _ = e.eip_counters(s);
    }
    for i in 0..12 {
        let _ = e.eni_counters(i);
    }
    while e.poll_report().is_some() {}
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// p7a: arbitrary bytes (half of them with a plausible IPv4 header), any side (unknown ENI
    /// ids too) and flags, room len..len+600: no panic, and sane verdicts.
    #[test]
    fn p7a_arbitrary_bytes_never_panic(
        opts in table_opts(),
        pkts in vec(raw_pkt(), 1..12),
    ) {
        run_raw(opts, &pkts, |_| Ok(()))?;
    }

    /// p7b: real packets of every kind (fragmented, shuffled, damaged, expired TTLs, odd
    /// addresses and sides, small fragment tables, batches, table swaps): no panic, and sane
    /// verdicts.
    #[test]
    fn p7b_damaged_packets_never_panic(
        opts in (table_opts(), table_opts(), table_opts()),
        config in engine_config(),
        items in vec(item(), 1..8),
    ) {
        run_items(opts, config, &items, |_| Ok(()))?;
    }

    /// p7c: the identity exactly as briefed (received == forwarded + replied + held + drops),
    /// after every packet, over p7a's and p7b's inputs.
    #[test]
    fn p7c_counters_add_up(
        opts in table_opts(),
        pkts in vec(raw_pkt(), 1..12),
        more in ((table_opts(), table_opts(), table_opts()), engine_config(), vec(item(), 1..8)),
    ) {
        run_raw(opts, &pkts, briefed_identity)?;
        let (opts3, config, items) = more;
        run_items(opts3, config, &items, briefed_identity)?;
    }

    /// p7d: the same identity, after every step, with fragments that are held until their
    /// first fragment comes and then released or dropped (TTLs all valid).
    #[test]
    fn p7d_counters_add_up_with_held_fragments(
        fc in frag_case(),
        d in dgram(prop_oneof![plain_ports(), sip_ports()]),
    ) {
        let (en, _whole, frags) = fragmented(&d, &fc);
        let mut rig = Rig::new(drop_table());
        for &j in &fc.order {
            let _ = rig.send(en.ingress, &frags[j], PacketFlags::default());
            briefed_identity(rig.e.global_counters())?;
            while rig.released().is_some() {
                briefed_identity(rig.e.global_counters())?;
            }
        }
    }
}

// ---- p9: the cloud model records every change and refuses without changing ---------------

const P9_REGION: &str = "cn-shanghai";

/// The cloud p9 starts from: vsw-a (10.0.1.0/28, twelve usable addresses); i-web (Running,
/// ecs.g5.large) with eni-web0, i-stopped (Stopped, ecs.c6.large) with eni-st0, i-classic
/// (classic network) with eni-cl0; detached secondary ENIs eni-a (one IP) and eni-b (two);
/// EIPs eip-1..eip-6 of a 16-address pool; NAT gateways ngw-0 (takes no private IP per EIP)
/// and ngw-1 (takes one), with eip-5 and eip-6 InUse on them; HaVip hv-1; an internal CLB
/// lb-1; an SNAT entry on ngw-0 (eip-5 for 10.0.1.0/29) and a DNAT entry on ngw-1 (eip-6:80
/// to 10.0.1.7:8080). Its construction is not recorded (the record is taken empty).
fn p9_cloud(transition_ns: u64, now: u64) -> Cloud {
    let mut c = Cloud::new(Settings {
        region: P9_REGION.into(),
        multi_binded_allowed: true,
        transition_ns,
        eip_pool: vec![(ip(198, 51, 100, 0), 28)],
        vpc_id: "vpc-lab".into(),
        vpc_cidrs: Vec::new(),
    });
    c.add_vswitch(VSwitch {
        id: "vsw-a".into(),
        region: P9_REGION.into(),
        zone: "cn-shanghai-b".into(),
        network: ip(10, 0, 1, 0),
        prefix_len: 28,
        gateway: ip(10, 0, 1, 13),
    });
    for (id, status, vpc, ty, eni, addr) in [
        (
            "i-web",
            InstanceStatus::Running,
            true,
            "ecs.g5.large",
            "eni-web0",
            1,
        ),
        (
            "i-stopped",
            InstanceStatus::Stopped,
            true,
            "ecs.c6.large",
            "eni-st0",
            2,
        ),
        (
            "i-classic",
            InstanceStatus::Running,
            false,
            "ecs.g5.large",
            "eni-cl0",
            3,
        ),
    ] {
        c.add_instance(Instance {
            id: id.into(),
            region: P9_REGION.into(),
            instance_type: ty.into(),
            status,
            vpc,
            public_ip: None,
            dhcp: true,
            index: 0,
            max_enis: None,
            max_private_ips_per_eni: None,
            transition_until: None,
        });
        c.add_eni(p9_eni(eni, &[addr], true, Some(id)));
    }
    c.add_eni(p9_eni("eni-a", &[4], false, None));
    c.add_eni(p9_eni("eni-b", &[5, 6], false, None));
    for k in 1..=6u8 {
        c.add_eip(now, &format!("eip-{k}"), ip(198, 51, 100, k), 5);
    }
    for (id, takes) in [("ngw-0", false), ("ngw-1", true)] {
        c.nat_gateways.insert(
            id.into(),
            NatGateway {
                id: id.into(),
                region: P9_REGION.into(),
                vswitch: "vsw-a".into(),
                eip_takes_private_ip: takes,
            },
        );
    }
    c.havips.insert(
        "hv-1".into(),
        HaVip {
            id: "hv-1".into(),
            region: P9_REGION.into(),
            vswitch: "vsw-a".into(),
            ip: ip(10, 0, 1, 9),
            status: "Available".into(),
            associated_instances: Vec::new(),
            name: String::new(),
            description: String::new(),
            created: 0,
        },
    );
    c.load_balancers.insert(
        "lb-1".into(),
        LoadBalancer {
            id: "lb-1".into(),
            region: P9_REGION.into(),
            kind: "clb".into(),
            intranet: true,
            vpc: true,
            address: None,
        },
    );
    for (eip, gateway) in [("eip-5", "ngw-0"), ("eip-6", "ngw-1")] {
        let req = Associate {
            allocation_id: eip.into(),
            instance_id: gateway.into(),
            bind_type: BindType::Nat,
            mode: AssociationMode::Nat,
            private_ip: None,
        };
        c.associate(now, &req).unwrap();
    }
    c.handle_timeout(now + transition_ns);
    let snat = SnatSpec {
        snat_ip: Some("198.51.100.5".into()),
        source_cidr: Some("10.0.1.0/29".into()),
        ..SnatSpec::default()
    };
    c.create_snat_entry(P9_REGION, "stb-ngw-0", &snat).unwrap();
    let dnat = ForwardSpec {
        external_ip: Some("198.51.100.6".into()),
        external_port: Some("80".into()),
        internal_ip: Some("10.0.1.7".into()),
        internal_port: Some("8080".into()),
        ip_protocol: Some("TCP".into()),
        name: None,
    };
    c.create_forward_entry(P9_REGION, "ftb-ngw-1", &dnat)
        .unwrap();
    c.take_changes();
    c
}

fn p9_eni(id: &str, hosts: &[u8], primary: bool, instance: Option<&str>) -> Eni {
    Eni {
        id: id.into(),
        region: P9_REGION.into(),
        vswitch: "vsw-a".into(),
        private_ips: hosts.iter().map(|&h| private(h)).collect(),
        primary,
        instance: instance.map(Into::into),
        index: 0,
    }
}

/// What p9's operations name (now and then one that does not exist, see [`pick_or`]).
/// Targets of an association come with their own bind type; the gateways twice, so that
/// SNAT and DNAT entries find EIPs on them.
const P9_TARGETS: &[(&str, &str)] = &[
    ("i-web", "EcsInstance"),
    ("i-stopped", "EcsInstance"),
    ("i-classic", "EcsInstance"),
    ("eni-web0", "NetworkInterface"),
    ("eni-st0", "NetworkInterface"),
    ("eni-a", "NetworkInterface"),
    ("eni-b", "NetworkInterface"),
    ("ngw-0", "Nat"),
    ("ngw-1", "Nat"),
    ("ngw-0", "Nat"),
    ("ngw-1", "Nat"),
    ("hv-1", "HaVip"),
    ("lb-1", "SlbInstance"),
];
const P9_INSTANCES: &[&str] = &["i-web", "i-stopped", "i-classic"];
const P9_ENIS: &[&str] = &["eni-web0", "eni-st0", "eni-cl0", "eni-a", "eni-b"];
const P9_GATEWAYS: &[&str] = &["ngw-0", "ngw-1"];
/// AssociateHaVip's targets: instances in each state, ENIs attached or not, and an ENI named
/// as an instance.
const P9_HAVIP_TARGETS: &[(&str, &str)] = &[
    ("i-web", "EcsInstance"),
    ("i-stopped", "EcsInstance"),
    ("i-classic", "EcsInstance"),
    ("eni-a", "NetworkInterface"),
    ("eni-b", "NetworkInterface"),
    ("eni-web0", "NetworkInterface"),
    ("eni-a", "EcsInstance"),
];
const P9_BIND_TYPES: &[&str] = &[
    "EcsInstance",
    "NetworkInterface",
    "Nat",
    "HaVip",
    "SlbInstance",
];
const P9_MODES: &[&str] = &["NAT", "BINDED", "MULTI_BINDED"];
/// SNAT sources: three that the cloud takes (twice as often), one with host bits set, vsw-a
/// (which holds hv-1's address, so it is refused), and both a CIDR and a vSwitch.
const P9_SOURCES: &[(Option<&str>, Option<&str>)] = &[
    (Some("10.0.1.0/29"), None),
    (Some("10.0.1.4/30"), None),
    (Some("10.0.1.1/32"), None),
    (Some("10.0.1.0/29"), None),
    (Some("10.0.1.4/30"), None),
    (Some("10.0.1.1/32"), None),
    (Some("10.0.1.1/24"), None),
    (None, Some("vsw-a")),
    (Some("10.0.1.0/29"), Some("vsw-a")),
];
const P9_PORTS: &[&str] = &["80", "8080", "443", "0", "Any"];
const P9_PROTOCOLS: &[&str] = &["TCP", "UDP", "tcp", "icmp", "Any"];
const P9_NAMES: &[&str] = &["web", "db", "x", "http://x"];
const P9_DESCRIBE: &[&str] = &[
    "DescribeEipAddresses",
    "DescribeNetworkInterfaces",
    "DescribeNatGateways",
    "DescribeSnatTableEntries",
    "DescribeForwardTableEntries",
    "DescribeEipGatewayInfo",
    "DescribeHaVips",
];

/// One operation of p9; `Index`es pick among what the state has when it runs.
#[derive(Clone, Debug)]
enum CloudOp {
    /// Lab time moves on (ms; sometimes past the 7-day recovery window), and, if `true`, due
    /// transitions end (else the next operations run at a time their state is behind).
    Tick(u64, bool),
    Transition(bool),
    Allocate {
        /// Recover: an address of the pool (released or not).
        recover: Option<Index>,
        bandwidth: u32,
        random: u64,
        charge: Option<&'static str>,
    },
    Release(Index),
    Bandwidth(Index, u32),
    /// `bind`: another bind type than the target's own.
    Associate {
        eip: Index,
        target: Index,
        bind: Option<Index>,
        mode: usize,
        private_ip: Option<u8>,
    },
    Batch {
        eips: Vec<Index>,
        target: Index,
        bind: Option<Index>,
        mode: usize,
    },
    Unassociate {
        eip: Index,
        force: bool,
    },
    Attach(Index, Index),
    Detach(Index, Index),
    Assign {
        eni: Index,
        hosts: Vec<u8>,
        count: u32,
    },
    Unassign {
        eni: Index,
        hosts: Vec<u8>,
    },
    Run(Index, bool),
    CreateSnat {
        gateway: Index,
        eips: Vec<Index>,
        source: Index,
        name: Option<Index>,
    },
    ModifySnat {
        entry: Index,
        eips: Option<Vec<Index>>,
        name: Option<Index>,
    },
    DeleteSnat(Index),
    /// `whole`: ports and protocol `Any` (a whole-IP mapping).
    CreateForward {
        gateway: Index,
        external: Index,
        internal: u8,
        whole: bool,
        ports: (Index, Index, Index),
    },
    ModifyForward {
        entry: Index,
        internal_port: Option<Index>,
        protocol: Option<Index>,
        external: Option<Index>,
    },
    DeleteForward(Index),
    /// CreateHaVip on vsw-a: an address (`10.0.1.<host>`, any, taken or reserved) or none.
    CreateHaVip(Option<u8>),
    /// AssociateHaVip / UnassociateHaVip (`Force`): a HaVip and one of `P9_HAVIP_TARGETS`.
    AssociateHaVip(Index, Index),
    UnassociateHaVip(Index, Index, bool),
    DeleteHaVip(Index),
    /// A guest configures an address (a HaVip's, or `10.0.1.<host>`) on an instance: mostly
    /// one a HaVip is associated with (itself or through an ENI), else any instance, an ENI's
    /// id or a missing one (`Cloud::claim_havip`; the model only, no API action does it).
    ClaimHaVip {
        havip: Index,
        instance: Index,
        host: Option<u8>,
    },
    /// The lab's failover to an instance or ENI: mostly one associated with the HaVip, else
    /// any of `P9_HAVIP_TARGETS` or a missing one (`Cloud::fail_over_havip`; the model only).
    FailOverHaVip(Index, Index),
    /// A query of the API.
    Describe(Index, Index),
}

/// An operation, run on the model directly or through the API's handler (`DryRun` too).
#[derive(Clone, Debug)]
struct CloudStep {
    op: CloudOp,
    api: bool,
    dry_run: bool,
}

fn p9_host() -> impl Strategy<Value = u8> {
    0u8..16
}

/// NAT mostly, BINDED and MULTI_BINDED sometimes, as an index of `P9_MODES`.
fn p9_mode() -> impl Strategy<Value = usize> {
    prop_oneof![6 => Just(0usize), 1 => Just(1usize), 1 => Just(2usize)]
}

fn cloud_op() -> impl Strategy<Value = CloudOp> {
    let i = any::<Index>;
    let other_bind = || proptest::option::weighted(0.1, any::<Index>());
    prop_oneof![
        4 => (
            prop_oneof![4 => 0u64..150, 1 => Just(8 * 86_400_000u64)],
            prop::bool::weighted(0.6)
        )
            .prop_map(|(ms, settle)| CloudOp::Tick(ms, settle)),
        1 => any::<bool>().prop_map(CloudOp::Transition),
        3 => (
            proptest::option::weighted(0.3, i()),
            1u32..12,
            any::<u64>(),
            proptest::option::of(prop_oneof![Just("PayByBandwidth"), Just("PayByLcu")]),
        )
            .prop_map(|(recover, bandwidth, random, charge)| CloudOp::Allocate {
                recover,
                bandwidth,
                random,
                charge,
            }),
        2 => i().prop_map(CloudOp::Release),
        2 => (i(), 0u32..8).prop_map(|(e, b)| CloudOp::Bandwidth(e, b)),
        10 => (i(), i(), other_bind(), p9_mode(), proptest::option::weighted(0.3, p9_host()))
            .prop_map(|(eip, target, bind, mode, private_ip)| CloudOp::Associate {
                eip,
                target,
                bind,
                mode,
                private_ip,
            }),
        3 => (vec(i(), 0..4), i(), other_bind(), p9_mode()).prop_map(
            |(eips, target, bind, mode)| CloudOp::Batch {
                eips,
                target,
                bind,
                mode,
            }
        ),
        5 => (i(), any::<bool>()).prop_map(|(eip, force)| CloudOp::Unassociate { eip, force }),
        2 => (i(), i()).prop_map(|(e, n)| CloudOp::Attach(e, n)),
        2 => (i(), i()).prop_map(|(e, n)| CloudOp::Detach(e, n)),
        2 => (i(), vec(p9_host(), 0..3), 0u32..3)
            .prop_map(|(eni, hosts, count)| CloudOp::Assign { eni, hosts, count }),
        2 => (i(), vec(p9_host(), 0..3)).prop_map(|(eni, hosts)| CloudOp::Unassign { eni, hosts }),
        2 => (i(), any::<bool>()).prop_map(|(n, run)| CloudOp::Run(n, run)),
        4 => (i(), vec(i(), 1..=2), i(), proptest::option::weighted(0.3, i())).prop_map(
            |(gateway, eips, source, name)| CloudOp::CreateSnat {
                gateway,
                eips,
                source,
                name,
            }
        ),
        2 => (i(), proptest::option::of(vec(i(), 1..3)), proptest::option::of(i()))
            .prop_map(|(entry, eips, name)| CloudOp::ModifySnat { entry, eips, name }),
        1 => i().prop_map(CloudOp::DeleteSnat),
        4 => (i(), i(), p9_host(), prop::bool::weighted(0.3), (i(), i(), i())).prop_map(
            |(gateway, external, internal, whole, ports)| CloudOp::CreateForward {
                gateway,
                external,
                internal,
                whole,
                ports,
            }
        ),
        2 => (
            i(),
            proptest::option::of(i()),
            proptest::option::of(i()),
            proptest::option::of(i()),
        )
            .prop_map(|(entry, internal_port, protocol, external)| {
                CloudOp::ModifyForward {
                    entry,
                    internal_port,
                    protocol,
                    external,
                }
            }),
        1 => i().prop_map(CloudOp::DeleteForward),
        2 => proptest::option::of(p9_host()).prop_map(CloudOp::CreateHaVip),
        3 => (i(), i()).prop_map(|(h, t)| CloudOp::AssociateHaVip(h, t)),
        2 => (i(), i(), any::<bool>()).prop_map(|(h, t, f)| CloudOp::UnassociateHaVip(h, t, f)),
        1 => i().prop_map(CloudOp::DeleteHaVip),
        3 => (i(), i(), proptest::option::weighted(0.3, p9_host()))
            .prop_map(|(havip, instance, host)| CloudOp::ClaimHaVip { havip, instance, host }),
        3 => (i(), i()).prop_map(|(h, to)| CloudOp::FailOverHaVip(h, to)),
        2 => (i(), i()).prop_map(|(a, t)| CloudOp::Describe(a, t)),
    ]
}

fn cloud_step() -> impl Strategy<Value = CloudStep> {
    (cloud_op(), any::<bool>(), prop::bool::weighted(0.2))
        .prop_map(|(op, api, dry_run)| CloudStep { op, api, dry_run })
}

/// One of `items`, or now and then (one time in `8 * items.len() + 1`) `none`.
fn pick_or<T: Clone>(items: &[T], i: Index, none: T) -> T {
    let n = items.len();
    let k = i.index(8 * n + 1);
    if k == 8 * n {
        none
    } else {
        items[k % n].clone()
    }
}

fn word(words: &[&str], i: Index) -> String {
    words[i.index(words.len())].to_string()
}

fn eip_addr(host: u8) -> Ipv4Addr {
    ip(198, 51, 100, host)
}

fn private(host: u8) -> Ipv4Addr {
    ip(10, 0, 1, host)
}

/// What an operation refers to, resolved against the state it runs on.
struct Resolved {
    eip_ids: Vec<String>,
    eip_addrs: Vec<Ipv4Addr>,
    /// (gateway, address) of the EIPs bound to a NAT gateway.
    gateway_eips: Vec<(String, Ipv4Addr)>,
    /// (ENI, instance) of the attached ENIs.
    attached: Vec<(String, String)>,
    snat_entries: Vec<(String, String)>,
    forward_entries: Vec<(String, String)>,
    havips: Vec<String>,
    /// Per HaVip (in `havips`' order): its address and what is associated with it, the
    /// holder first.
    havip_members: Vec<(Ipv4Addr, Vec<String>)>,
}

impl Resolved {
    fn of(c: &Cloud) -> Resolved {
        Resolved {
            eip_ids: c.eips.keys().cloned().collect(),
            eip_addrs: c.eips.values().map(|e| e.address).collect(),
            gateway_eips: c
                .eips
                .values()
                .filter_map(|e| {
                    let b = e.binding.as_ref()?;
                    (b.bind_type == BindType::Nat).then(|| (b.instance_id.clone(), e.address))
                })
                .collect(),
            attached: c
                .enis
                .values()
                .filter_map(|e| Some((e.id.clone(), e.instance.clone()?)))
                .collect(),
            snat_entries: c
                .snat_entries
                .iter()
                .map(|s| (s.id.clone(), s.nat_gateway.clone()))
                .collect(),
            forward_entries: c
                .forward_entries
                .iter()
                .map(|f| (f.id.clone(), f.nat_gateway.clone()))
                .collect(),
            havips: c.havips.keys().cloned().collect(),
            havip_members: c
                .havips
                .values()
                .map(|h| (h.ip, h.associated_instances.clone()))
                .collect(),
        }
    }

    fn eip(&self, i: Index) -> String {
        if self.eip_ids.is_empty() {
            return "eip-none".into();
        }
        pick_or(&self.eip_ids, i, "eip-none".into())
    }

    /// An EIP's address, or an address of the pool that is no EIP's.
    fn eip_addr(&self, i: Index) -> Ipv4Addr {
        let none = (0..16)
            .map(eip_addr)
            .find(|a| !self.eip_addrs.contains(a))
            .unwrap_or(ip(198, 51, 100, 200));
        if self.eip_addrs.is_empty() {
            return none;
        }
        pick_or(&self.eip_addrs, i, none)
    }

    /// The address of an EIP bound to `gateway` mostly, of any EIP now and then.
    fn gateway_addr(&self, gateway: &str, i: Index) -> Ipv4Addr {
        let on: Vec<Ipv4Addr> = self
            .gateway_eips
            .iter()
            .filter(|(g, _)| g == gateway)
            .map(|(_, a)| *a)
            .collect();
        if on.is_empty() {
            return self.eip_addr(i);
        }
        pick_or(&on, i, self.eip_addr(i))
    }

    fn gateway_addrs(&self, gateway: &str, is: &[Index]) -> String {
        is.iter()
            .map(|&i| self.gateway_addr(gateway, i).to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// An entry's id and its gateway (a missing one on ngw-0).
    fn entry(entries: &[(String, String)], i: Index, none: &str) -> (String, String) {
        let missing = (none.to_string(), "ngw-0".to_string());
        if entries.is_empty() {
            return missing;
        }
        pick_or(entries, i, missing)
    }
}

/// `Name.1`, `Name.2`, … for a repeated parameter.
fn repeated(name: &str, values: impl IntoIterator<Item = String>) -> Vec<(String, String)> {
    values
        .into_iter()
        .enumerate()
        .map(|(k, v)| (format!("{name}.{}", k + 1), v))
        .collect()
}

/// Runs one step on `c`: `Ok(Some(changes))` when a model method returned changes,
/// `Ok(None)` when the step returns none (an API call, a setting), `Err(code)` when refused.
fn p9_step(c: &mut Cloud, now: &mut u64, s: &CloudStep) -> Result<Option<Vec<Change>>, String> {
    let r = Resolved::of(c);
    let t = *now;
    let mut p: Vec<(String, String)> = Vec::new();
    let mut param = |k: &str, v: String| p.push((k.to_string(), v));
    let model = |x: Result<Vec<Change>, CloudError>| x.map(Some).map_err(|e| e.code.to_string());
    let action = match &s.op {
        CloudOp::Tick(ms, settle) => {
            *now += ms * 1_000_000;
            return Ok(settle.then(|| c.handle_timeout(*now)));
        }
        CloudOp::Transition(on) => {
            c.set_transition_ns(if *on { 100_000_000 } else { 0 });
            return Ok(None);
        }
        CloudOp::Allocate {
            recover,
            bandwidth,
            random,
            charge,
        } => {
            let addr = recover.map(|i| eip_addr(i.index(16) as u8));
            if !s.api {
                let r = c.allocate_charged(t, P9_REGION, *bandwidth, addr, *random, *charge);
                return model(r.map(|(_, ch)| ch));
            }
            param("Bandwidth", bandwidth.to_string());
            if let Some(a) = addr {
                param("IpAddress", a.to_string());
            }
            if let Some(ch) = charge {
                param("InternetChargeType", ch.to_string());
            }
            "AllocateEipAddress"
        }
        CloudOp::Release(e) => {
            let id = r.eip(*e);
            if !s.api {
                return model(c.release(t, &id));
            }
            param("AllocationId", id);
            "ReleaseEipAddress"
        }
        CloudOp::Bandwidth(e, b) => {
            let id = r.eip(*e);
            if !s.api {
                return model(c.set_bandwidth(&id, *b));
            }
            param("AllocationId", id);
            if *b > 0 {
                param("Bandwidth", b.to_string());
            }
            "ModifyEipAddressAttribute"
        }
        CloudOp::Associate {
            eip,
            target,
            bind,
            mode,
            private_ip,
        } => {
            let id = r.eip(*eip);
            let (target, own) = pick_or(P9_TARGETS, *target, ("x-none", "EcsInstance"));
            let bind = bind.map_or(own, |b| pick_or(P9_BIND_TYPES, b, "Vpn"));
            let mode = P9_MODES[*mode];
            if !s.api {
                let bind_type = eiplab::cloud::parse_bind_type(bind).map_err(|e| e.code)?;
                let req = Associate {
                    allocation_id: id,
                    instance_id: target.into(),
                    bind_type,
                    mode: eiplab::cloud::parse_mode(mode).map_err(|e| e.code)?,
                    private_ip: private_ip.map(private),
                };
                return model(c.associate(t, &req));
            }
            param("AllocationId", id);
            param("InstanceId", target.into());
            param("InstanceType", bind.into());
            param("Mode", mode.into());
            if let Some(h) = private_ip {
                param("PrivateIpAddress", private(*h).to_string());
            }
            "AssociateEipAddress"
        }
        CloudOp::Batch {
            eips,
            target,
            bind,
            mode,
        } => {
            let ids: Vec<String> = eips.iter().map(|&e| r.eip(e)).collect();
            let (target, own) = pick_or(P9_TARGETS, *target, ("x-none", "Nat"));
            let bind = bind.map_or(own, |b| pick_or(P9_BIND_TYPES, b, "Vpn"));
            let mode = P9_MODES[*mode];
            if !s.api {
                let bind_type = eiplab::cloud::parse_bind_type(bind).map_err(|e| e.code)?;
                let mode = eiplab::cloud::parse_mode(mode).map_err(|e| e.code)?;
                // On a settled state, the batch does what associating its EIPs one by one on a
                // copy does (the way the model made batches before it checked them all first).
                let settled = c.poll_timeout().is_none_or(|d| d > t);
                let reference = settled.then(|| batch_by_copy(c, t, &ids, target, bind_type, mode));
                let r = c.associate_batch(t, &ids, target, bind_type, mode);
                match (&reference, &r) {
                    (Some(Ok(want)), Ok(_)) => assert!(want == c, "the batch made another state"),
                    (Some(Err(want)), Err(e)) => assert_eq!(*want, e.code, "{}", e.message),
                    (Some(want), _) => panic!("the batch gave {r:?}, one by one gave {want:?}"),
                    (None, _) => {}
                }
                return model(r);
            }
            for (k, v) in repeated("InstanceIds", ids) {
                param(&k, v);
            }
            param("BindedInstanceId", target.into());
            param("BindedInstanceType", bind.into());
            param("Mode", mode.into());
            "AssociateEipAddressBatch"
        }
        CloudOp::Unassociate { eip, force } => {
            let id = r.eip(*eip);
            if !s.api {
                return model(c.unassociate(t, &id, *force));
            }
            param("AllocationId", id);
            if *force {
                param("Force", "true".into());
            }
            "UnassociateEipAddress"
        }
        CloudOp::Attach(e, n) | CloudOp::Detach(e, n) => {
            let attach = matches!(s.op, CloudOp::Attach(..));
            let eni = pick_or(P9_ENIS, *e, "eni-none");
            let mut inst = pick_or(P9_INSTANCES, *n, "i-none");
            // Mostly from the instance it is attached to.
            if let Some((_, own)) = r.attached.iter().find(|(x, _)| x == eni) {
                if !attach && n.index(4) != 0 {
                    inst = own.as_str();
                }
            }
            if !s.api {
                return model(if attach {
                    c.attach_eni(eni, inst)
                } else {
                    c.detach_eni(eni, inst)
                });
            }
            param("NetworkInterfaceId", eni.into());
            param("InstanceId", inst.into());
            if attach {
                "AttachNetworkInterface"
            } else {
                "DetachNetworkInterface"
            }
        }
        CloudOp::Assign { eni, hosts, count } => {
            let eni = pick_or(P9_ENIS, *eni, "eni-none");
            let ips: Vec<Ipv4Addr> = hosts.iter().map(|&h| private(h)).collect();
            if !s.api {
                return model(c.assign_private_ips(eni, &ips, *count).map(|(_, ch)| ch));
            }
            param("NetworkInterfaceId", eni.into());
            for (k, v) in repeated("PrivateIpAddress", ips.iter().map(|a| a.to_string())) {
                param(&k, v);
            }
            if *count > 0 {
                param("SecondaryPrivateIpAddressCount", count.to_string());
            }
            "AssignPrivateIpAddresses"
        }
        CloudOp::Unassign { eni, hosts } => {
            let eni = pick_or(P9_ENIS, *eni, "eni-none");
            let ips: Vec<Ipv4Addr> = hosts.iter().map(|&h| private(h)).collect();
            if !s.api {
                return model(c.unassign_private_ips(eni, &ips));
            }
            param("NetworkInterfaceId", eni.into());
            for (k, v) in repeated("PrivateIpAddress", ips.iter().map(|a| a.to_string())) {
                param(&k, v);
            }
            "UnassignPrivateIpAddresses"
        }
        CloudOp::Run(n, run) => {
            let inst = pick_or(P9_INSTANCES, *n, "i-none");
            if !s.api {
                return model(c.set_running(t, inst, *run));
            }
            param("InstanceId", inst.into());
            if *run {
                "StartInstance"
            } else {
                "StopInstance"
            }
        }
        CloudOp::CreateSnat {
            gateway,
            eips,
            source,
            name,
        } => {
            let gateway = pick_or(P9_GATEWAYS, *gateway, "ngw-none");
            let table = format!("stb-{gateway}");
            let (cidr, vswitch) = P9_SOURCES[source.index(P9_SOURCES.len())];
            let spec = SnatSpec {
                snat_ip: Some(r.gateway_addrs(gateway, eips)),
                source_cidr: cidr.map(Into::into),
                source_vswitch: vswitch.map(Into::into),
                name: name.map(|n| word(P9_NAMES, n)),
            };
            if !s.api {
                return model(
                    c.create_snat_entry(P9_REGION, &table, &spec)
                        .map(|(_, ch)| ch),
                );
            }
            param("SnatTableId", table);
            param("SnatIp", spec.snat_ip.unwrap());
            if let Some(v) = spec.source_cidr {
                param("SourceCIDR", v);
            }
            if let Some(v) = spec.source_vswitch {
                param("SourceVSwitchId", v);
            }
            if let Some(v) = spec.name {
                param("SnatEntryName", v);
            }
            "CreateSnatEntry"
        }
        CloudOp::ModifySnat { entry, eips, name } => {
            let (id, gateway) = Resolved::entry(&r.snat_entries, *entry, "snat-none");
            let table = format!("stb-{gateway}");
            let spec = SnatSpec {
                snat_ip: eips.as_ref().map(|e| r.gateway_addrs(&gateway, e)),
                name: name.map(|n| word(P9_NAMES, n)),
                ..SnatSpec::default()
            };
            if !s.api {
                return model(c.modify_snat_entry(P9_REGION, &table, &id, &spec));
            }
            param("SnatTableId", table);
            param("SnatEntryId", id);
            if let Some(v) = spec.snat_ip {
                param("SnatIp", v);
            }
            if let Some(v) = spec.name {
                param("SnatEntryName", v);
            }
            "ModifySnatEntry"
        }
        CloudOp::DeleteSnat(entry) => {
            let (id, gateway) = Resolved::entry(&r.snat_entries, *entry, "snat-none");
            let table = format!("stb-{gateway}");
            if !s.api {
                return model(c.delete_snat_entry(P9_REGION, &table, &id));
            }
            param("SnatTableId", table);
            param("SnatEntryId", id);
            "DeleteSnatEntry"
        }
        CloudOp::CreateForward {
            gateway,
            external,
            internal,
            whole,
            ports: (ext, int, proto),
        } => {
            let gateway = pick_or(P9_GATEWAYS, *gateway, "ngw-none");
            let table = format!("ftb-{gateway}");
            let (ext, int, proto) = if *whole {
                ("Any".into(), "Any".into(), "Any".into())
            } else {
                (
                    word(P9_PORTS, *ext),
                    word(P9_PORTS, *int),
                    word(P9_PROTOCOLS, *proto),
                )
            };
            let spec = ForwardSpec {
                external_ip: Some(r.gateway_addr(gateway, *external).to_string()),
                external_port: Some(ext),
                internal_ip: Some(private(*internal).to_string()),
                internal_port: Some(int),
                ip_protocol: Some(proto),
                name: None,
            };
            if !s.api {
                return model(
                    c.create_forward_entry(P9_REGION, &table, &spec)
                        .map(|(_, ch)| ch),
                );
            }
            param("ForwardTableId", table);
            for (k, v) in forward_params(spec) {
                param(k, v);
            }
            "CreateForwardEntry"
        }
        CloudOp::ModifyForward {
            entry,
            internal_port,
            protocol,
            external,
        } => {
            let (id, gateway) = Resolved::entry(&r.forward_entries, *entry, "fwd-none");
            let table = format!("ftb-{gateway}");
            let spec = ForwardSpec {
                external_ip: external.map(|i| r.gateway_addr(&gateway, i).to_string()),
                internal_port: internal_port.map(|i| word(P9_PORTS, i)),
                ip_protocol: protocol.map(|i| word(P9_PROTOCOLS, i)),
                ..ForwardSpec::default()
            };
            if !s.api {
                return model(c.modify_forward_entry(P9_REGION, &table, &id, &spec));
            }
            param("ForwardTableId", table);
            param("ForwardEntryId", id);
            for (k, v) in forward_params(spec) {
                param(k, v);
            }
            "ModifyForwardEntry"
        }
        CloudOp::DeleteForward(entry) => {
            let (id, gateway) = Resolved::entry(&r.forward_entries, *entry, "fwd-none");
            let table = format!("ftb-{gateway}");
            if !s.api {
                return model(c.delete_forward_entry(P9_REGION, &table, &id));
            }
            param("ForwardTableId", table);
            param("ForwardEntryId", id);
            "DeleteForwardEntry"
        }
        CloudOp::CreateHaVip(host) => {
            let spec = HaVipSpec {
                vswitch: "vsw-a".into(),
                ip_address: host.map(|h| private(h).to_string()),
                ..HaVipSpec::default()
            };
            if !s.api {
                return model(c.create_havip(t, P9_REGION, &spec).map(|(_, ch)| ch));
            }
            param("VSwitchId", spec.vswitch);
            if let Some(a) = spec.ip_address {
                param("IpAddress", a);
            }
            "CreateHaVip"
        }
        CloudOp::AssociateHaVip(h, target) | CloudOp::UnassociateHaVip(h, target, _) => {
            let havip = pick_or(&r.havips, *h, "havip-none".into());
            let (inst, kind) = P9_HAVIP_TARGETS[target.index(P9_HAVIP_TARGETS.len())];
            let force = match &s.op {
                CloudOp::UnassociateHaVip(_, _, f) => Some(*f),
                _ => None,
            };
            if !s.api {
                return model(match force {
                    None => c.associate_havip(P9_REGION, &havip, inst, Some(kind)),
                    Some(f) => c.unassociate_havip(P9_REGION, &havip, inst, f),
                });
            }
            param("HaVipId", havip);
            param("InstanceId", inst.into());
            param("InstanceType", kind.into());
            match force {
                None => "AssociateHaVip",
                Some(f) => {
                    param("Force", f.to_string());
                    "UnassociateHaVip"
                }
            }
        }
        CloudOp::DeleteHaVip(h) => {
            let havip = pick_or(&r.havips, *h, "havip-none".into());
            if !s.api {
                return model(c.delete_havip(P9_REGION, &havip));
            }
            param("HaVipId", havip);
            "DeleteHaVip"
        }
        CloudOp::ClaimHaVip {
            havip,
            instance,
            host,
        } => {
            // A HaVip's address and members (none when it is missing).
            let k = r
                .havips
                .iter()
                .position(|h| *h == pick_or(&r.havips, *havip, String::new()));
            let (addr, members) =
                k.map_or((private(9), Vec::new()), |k| r.havip_members[k].clone());
            let addr = host.map_or(addr, private);
            // Mostly a member's instance (an ENI member stands for its instance).
            let member = (instance.index(4) != 0 && !members.is_empty())
                .then(|| members[instance.index(members.len())].clone())
                .map(|m| c.enis.get(&m).and_then(|e| e.instance.clone()).unwrap_or(m));
            let inst = member.unwrap_or_else(|| {
                let others: Vec<&str> = P9_INSTANCES
                    .iter()
                    .chain(&["eni-a", "eni-web0"])
                    .copied()
                    .collect();
                pick_or(&others, *instance, "i-none").to_string()
            });
            return Ok(Some(c.claim_havip(&inst, addr)));
        }
        CloudOp::FailOverHaVip(h, to) => {
            let havip = pick_or(&r.havips, *h, "havip-none".into());
            let members = r
                .havips
                .iter()
                .position(|x| *x == havip)
                .map_or(Vec::new(), |k| r.havip_members[k].1.clone());
            let to = if to.index(4) != 0 && !members.is_empty() {
                members[to.index(members.len())].clone()
            } else {
                let names: Vec<&str> = P9_HAVIP_TARGETS.iter().map(|t| t.0).collect();
                pick_or(&names, *to, "i-none").to_string()
            };
            return model(c.fail_over_havip(&havip, &to));
        }
        CloudOp::Describe(a, target) => {
            param("InstanceId", pick_or(P9_ENIS, *target, "eni-none").into());
            P9_DESCRIBE[a.index(P9_DESCRIBE.len())]
        }
    };
    if s.dry_run {
        param("DryRun", "true".into());
    }
    let params: Params = p.into_iter().collect();
    Action::find(action)
        .expect("served")
        .run(c, t, &params)
        .map(|_| None)
        .map_err(|e| e.code)
}

/// AssociateEipAddressBatch as associations one by one on a copy of the state, kept if all
/// pass: the new state or the first refusal's code.
fn batch_by_copy(
    c: &Cloud,
    now: u64,
    ids: &[String],
    instance_id: &str,
    bind_type: BindType,
    mode: AssociationMode,
) -> Result<Cloud, &'static str> {
    if !matches!(bind_type, BindType::Nat | BindType::NetworkInterface) {
        return Err("InvalidInstanceType.ValueNotSupported");
    }
    if bind_type == BindType::NetworkInterface && c.enis.get(instance_id).is_some_and(|e| e.primary)
    {
        return Err("Invalid.DirectEip.BindType");
    }
    let mut trial = c.clone();
    for id in ids {
        let private_ip = if bind_type == BindType::NetworkInterface && mode == AssociationMode::Nat
        {
            let eni = trial
                .enis
                .get(instance_id)
                .ok_or("InvalidInstanceId.NotFound")?;
            let on_eni = |b: &eiplab::cloud::Binding| match b.bind_type {
                BindType::NetworkInterface => b.instance_id == eni.id,
                BindType::EcsInstance => {
                    eni.primary && eni.instance.as_ref() == Some(&b.instance_id)
                }
                _ => false,
            };
            eni.private_ips.iter().copied().find(|ip| {
                !trial.eips.values().any(|e| {
                    e.binding
                        .as_ref()
                        .is_some_and(|b| on_eni(b) && b.private_ip == Some(*ip))
                })
            })
        } else {
            None
        };
        let req = Associate {
            allocation_id: id.clone(),
            instance_id: instance_id.to_string(),
            bind_type,
            mode,
            private_ip,
        };
        trial.associate(now, &req).map_err(|e| e.code)?;
    }
    Ok(trial)
}

fn forward_params(spec: ForwardSpec) -> Vec<(&'static str, String)> {
    [
        ("ExternalIp", spec.external_ip),
        ("ExternalPort", spec.external_port),
        ("InternalIp", spec.internal_ip),
        ("InternalPort", spec.internal_port),
        ("IpProtocol", spec.ip_protocol),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k, v?)))
    .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// p9: random operations on the cloud model, directly and through the API's handlers
    /// (`DryRun` too): a refused one leaves the state as it was (equal to a copy taken before
    /// it) and records nothing; one that changed the state recorded something, one that did
    /// not recorded nothing; and what a model method returns is what it recorded. Half the
    /// runs start with hv-1 associated with i-web (its holder) and i-stopped, so that claims
    /// and failovers have somewhere to move it.
    #[test]
    fn p9_the_model_records_every_change_and_refuses_without_changing(
        transitions in any::<bool>(),
        paired in any::<bool>(),
        steps in vec(cloud_step(), 1..60),
    ) {
        let mut now = 1_000 * 1_000_000_000;
        let mut c = p9_cloud(if transitions { 100_000_000 } else { 0 }, now);
        if paired {
            for i in ["i-web", "i-stopped"] {
                c.associate_havip(P9_REGION, "hv-1", i, Some("EcsInstance")).unwrap();
            }
            c.take_changes();
        }
        for s in &steps {
            let before = c.clone();
            let r = p9_step(&mut c, &mut now, s);
            let record = c.take_changes();
            match r {
                Err(code) => {
                    prop_assert!(c == before, "{:?} was refused ({}) yet changed the state", s, code);
                    prop_assert!(
                        record.is_empty(),
                        "{:?} was refused ({}) yet recorded {:?}", s, code, record
                    );
                }
                Ok(returned) => {
                    let changed = c != before;
                    prop_assert_eq!(
                        changed,
                        !record.is_empty(),
                        "{:?}: changed the state: {}; recorded {:?}", s, changed, record
                    );
                    if let Some(returned) = returned {
                        prop_assert_eq!(&returned, &record, "{:?} returns what it recorded", s);
                    }
                }
            }
        }
    }
}
