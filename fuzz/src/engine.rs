//! The `engine` target: a sequence of operations on two engines that share one table.
//!
//! # Input format
//!
//! A sequence of records, each a 6-byte header and `n` bytes of data:
//!
//! | byte | meaning |
//! | --- | --- |
//! | 0 | bits 0-2 the operation (0-4 process one packet, 5 add a packet to the batch, 6 housekeeping, 7 switch table); bits 3-7 the side, an index into [`SIDES`] |
//! | 1 | bit 0 `csum_partial`; bit 1 patch mode (the data go through [`Gen`], else they are the packet); bits 2-3 size of the `poll_released` buffer ([`RELEASE_BUF`]); bit 4 drain `poll_released` after the operation; bit 5 `handle_timeout` after it; bit 6 drain `poll_report` after it |
//! | 2 | time step before the operation, see [`time_step`] |
//! | 3, 4 | `n`, little endian |
//! | 5 | buffer room: capacity = len + byte × 600 / 255; for operation 7, the table variant (mod 4, see [`fixture::variants`]) |
//!
//! Consecutive records with operation 5 form one batch, from the side of its first record.
//!
//! # Two engines
//!
//! Engine A takes every packet through [`Engine::process`] and its tables through
//! [`Engine::set_table`]; engine B takes batches through [`Engine::process_batch`] (with
//! table D, large, through its prefetching pipeline) and tables through a [`TableCell`]
//! (`publish`, then [`Engine::refresh`]), and is otherwise fed the same, with different
//! garbage after each packet in its buffers. Their verdicts, output bytes, counters (global,
//! per EIP, per ENI) and reports must be equal: batching and the table cell must not change
//! behaviour, and nothing may be read past a packet's length.
//!
//! # Invariants checked
//!
//! - Nothing panics.
//! - `Forward`: the output parses as IPv4 with a valid header checksum, same total length,
//!   same header length, TTL one less; transport checksums that were valid (or valid partial
//!   sums under `csum_partial`) stay valid; an ICMP error's quoted header checksum too.
//!   It goes out with an associated EIP as source to the internet, to an address the
//!   receiving ENI owns, or into 100.64.0.0/10; it came from an ENI that is up and owns its
//!   source (or, without source check, whose instance does).
//! - `Reply { to, len }`: `to` is the ingress, `len` <= capacity, the reply parses with a valid
//!   header checksum and total length `len`; it is an echo reply (checksum still valid,
//!   addresses swapped, from a gateway address) or a time exceeded (valid checksum, from a
//!   gateway address).
//! - Counters: every operation moves `forwarded`, `replied`, `held` and `drops` exactly by its
//!   verdicts; the only other drops are held fragments being resolved (`fragment_timeout`,
//!   an `alg_*` decision, `truncated` in `poll_released`), never more than are held; and
//!   at all times `held` is the number of fragments held and
//!   `received == forwarded + replied + held + drops` (a packet answered with time exceeded
//!   is a `ttl_exceeded` drop and one more `icmp_errors_sent`; an echo answered is
//!   `replied`). At the end, after every fragment timed out, nothing is held.

use crate::fixture::{self, Spec, Variant, SIDES};
use crate::gen::Gen;
use core::net::Ipv4Addr;

use eiplab::engine::{
    DropReason, Engine, GlobalCounters, PacketBuf, PacketFlags, Side, Table, TableCell, Verdict,
};
use eiplab::wire::{checksum, Ipv4Packet};
use std::sync::Arc;

pub const HEADER: usize = 6;

pub mod op {
    pub const PROCESS: u8 = 0;
    pub const BATCH: u8 = 5;
    pub const HOUSEKEEPING: u8 = 6;
    pub const SET_TABLE: u8 = 7;
}

pub mod ctl {
    pub const PARTIAL: u8 = 0x01;
    pub const PATCH: u8 = 0x02;
    pub const RELEASE_BUF_SHIFT: u8 = 2;
    pub const DRAIN: u8 = 0x10;
    pub const TIMEOUT: u8 = 0x20;
    pub const REPORTS: u8 = 0x40;
}

/// Sizes of the buffer handed to `poll_released`: small ones make it drop (`truncated`).
pub const RELEASE_BUF: [usize; 4] = [65_535 + 600, 1500, 40, 576];

/// Nanoseconds to advance before an operation: bits 6-7 pick the unit (µs, ms, 50 ms, s),
/// bits 0-5 the count. The fragment timeout is 1 s.
pub fn time_step(b: u8) -> u64 {
    let v = (b & 63) as u64;
    v * [1_000, 1_000_000, 50_000_000, 1_000_000_000][(b >> 6) as usize]
}

thread_local! {
    /// Buffers for `poll_released`, kept across inputs: allocating 64 KiB twice per call
    /// dominated the run time.
    static PROCESS_BUFS: std::cell::RefCell<(Vec<u8>, Vec<u8>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    static RELEASE_BUFS: std::cell::RefCell<(Vec<u8>, Vec<u8>)> =
        std::cell::RefCell::new((vec![0; RELEASE_BUF[0]], vec![0xff; RELEASE_BUF[0]]));
}

/// Stop generating packets past this many bytes in one input, to keep runs fast.
const MAX_BYTES: usize = 1 << 20;

/// One record of the input.
#[derive(Clone, Debug)]
pub struct Record {
    pub op: u8,
    pub side: u8,
    pub ctl: u8,
    pub dt: u8,
    pub room: u8,
    pub data: Vec<u8>,
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let n = self.data.len() as u16;
        let mut v = vec![
            (self.side << 3) | (self.op & 7),
            self.ctl,
            self.dt,
            n as u8,
            (n >> 8) as u8,
            self.room,
        ];
        v.extend_from_slice(&self.data);
        v
    }
}

fn records(mut data: &[u8]) -> impl Iterator<Item = (u8, u8, u8, u8, u8, &[u8])> {
    core::iter::from_fn(move || {
        if data.len() < HEADER {
            return None;
        }
        let h = &data[..HEADER];
        let n = (u16::from_le_bytes([h[3], h[4]]) as usize).min(data.len() - HEADER);
        let body = &data[HEADER..HEADER + n];
        data = &data[HEADER + n..];
        Some((h[0] & 7, h[0] >> 3, h[1], h[2], h[5], body))
    })
}

// ---- what a packet was before the engine touched it --------------------------------------------

#[derive(Clone, Copy, Debug)]
enum L4Facts {
    None,
    /// TCP or UDP: the checksum field was zero, valid as a full checksum, valid as a partial
    /// (pseudo-header) sum.
    Ports {
        zero: bool,
        valid: bool,
        partial_ok: bool,
    },
    Icmp {
        valid: bool,
        quote_hdr_valid: bool,
    },
}

#[derive(Clone, Copy, Debug)]
struct Facts {
    hl: usize,
    total: usize,
    proto: u8,
    ttl: u8,
    ident: u16,
    flags_frag: u16,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    l4: L4Facts,
}

fn pseudo(p: &[u8], hl: usize, total: usize) -> u64 {
    let src = u32::from_be_bytes([p[12], p[13], p[14], p[15]]);
    let dst = u32::from_be_bytes([p[16], p[17], p[18], p[19]]);
    checksum::pseudo_header(src, dst, p[9], (total - hl) as u32)
}

/// L4 checksum facts of a whole (unfragmented) packet that parsed.
fn l4_facts(p: &[u8], hl: usize, total: usize, proto: u8) -> L4Facts {
    let seg = &p[hl..total];
    match proto {
        6 | 17 => {
            let at = if proto == 6 { 16 } else { 6 };
            if seg.len() < at + 2 {
                return L4Facts::None;
            }
            let field = u16::from_be_bytes([seg[at], seg[at + 1]]);
            let ph = pseudo(p, hl, total);
            L4Facts::Ports {
                zero: field == 0,
                valid: checksum::fold(checksum::sum(ph, seg)) == 0xffff,
                partial_ok: field == checksum::fold(ph),
            }
        }
        1 if seg.len() >= 8 => {
            let quote_hdr_valid = eiplab::wire::icmp::is_error(seg[0]) && {
                let q = &seg[8..];
                q.len() >= 20 && {
                    let qhl = ((q[0] & 0x0f) as usize) * 4;
                    qhl >= 20 && qhl <= q.len() && checksum::verify(&q[..qhl])
                }
            };
            L4Facts::Icmp {
                valid: checksum::verify(seg),
                quote_hdr_valid,
            }
        }
        _ => L4Facts::None,
    }
}

fn facts(p: &[u8]) -> Option<Facts> {
    let ip = Ipv4Packet::new_checked(p).ok()?;
    let (hl, total, proto) = (ip.header_len(), ip.total_len(), ip.protocol());
    let flags_frag = u16::from_be_bytes([p[6], p[7]]);
    let l4 = if ip.is_fragment() {
        L4Facts::None
    } else {
        l4_facts(p, hl, total, proto)
    };
    Some(Facts {
        hl,
        total,
        proto,
        ttl: ip.ttl(),
        ident: ip.ident(),
        flags_frag,
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        l4,
    })
}

// ---- verdict checks -----------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Forward(usize),
    Reply { ttl: bool, len: usize },
    Held,
    Drop(DropReason),
}

const GATEWAYS: [[u8; 4]; 6] = [
    fixture::INTERNET_GW,
    fixture::INTERNET_GW_B,
    fixture::GW1,
    fixture::GW2,
    fixture::GW4,
    fixture::GW6,
];

fn is_gateway(a: Ipv4Addr) -> bool {
    GATEWAYS.iter().any(|g| fixture::a(*g) == a)
}

/// Checks a forwarded packet. `ingress` and `input` are where it came from and what it was
/// (None for a released fragment, which `poll_released` does not tell).
fn check_forward(
    spec: &Variant,
    ingress: Option<Side>,
    out_side: Side,
    out: &[u8],
    input: Option<&Facts>,
    partial: bool,
) {
    let ip = Ipv4Packet::new_checked(out)
        .unwrap_or_else(|e| panic!("forwarded packet does not parse: {e:?}"));
    assert!(
        ip.verify_checksum(),
        "forwarded packet has a bad header checksum"
    );
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    match out_side {
        Side::Internet => {
            assert!(
                spec.is_public_source(src),
                "forwarded to the internet with source {src}, not an associated EIP"
            );
            assert!(
                !Spec::in_vpc(dst) && !Spec::in_cloud_services(dst),
                "forwarded to the internet towards {dst}"
            );
        }
        Side::Eni(e) => {
            assert!(
                spec.eni_up(e),
                "forwarded to ENI {e}, which is down or unknown"
            );
            assert!(
                spec.owned_by(e).contains(&dst),
                "forwarded to ENI {e} for {dst}, which it does not own"
            );
        }
        Side::CloudServices => {
            assert!(
                Spec::in_cloud_services(dst),
                "forwarded to cloud services for {dst}"
            );
        }
    }
    if let Some(Side::Eni(e)) = ingress {
        assert!(
            spec.eni_up(e),
            "forwarded a packet from ENI {e}, which is down or unknown"
        );
    }
    let Some(f) = input else { return };
    if let Some(Side::Eni(e)) = ingress {
        assert!(
            spec.may_send_from(e, f.src),
            "forwarded a packet from ENI {e} with source {}, which it may not use",
            f.src
        );
    }
    assert_eq!(
        ip.total_len(),
        f.total,
        "forwarding changed the total length"
    );
    assert_eq!(
        ip.header_len(),
        f.hl,
        "forwarding changed the header length"
    );
    assert_eq!(ip.protocol(), f.proto, "forwarding changed the protocol");
    assert_eq!(ip.ident(), f.ident, "forwarding changed the identification");
    assert_eq!(
        u16::from_be_bytes([out[6], out[7]]),
        f.flags_frag,
        "forwarding changed the fragment field"
    );
    assert_eq!(
        ip.ttl() as u16 + 1,
        f.ttl as u16,
        "forwarding must take exactly one off the TTL"
    );
    match f.l4 {
        L4Facts::None => {}
        L4Facts::Ports {
            zero,
            valid,
            partial_ok,
        } => {
            let now = l4_facts(out, f.hl, f.total, f.proto);
            let L4Facts::Ports {
                zero: z2,
                valid: v2,
                partial_ok: p2,
            } = now
            else {
                panic!("transport header vanished")
            };
            if partial {
                if partial_ok {
                    assert!(
                        p2,
                        "csum_partial: the pseudo-header sum is wrong after translation"
                    );
                }
            } else if f.proto == 17 && zero {
                assert!(z2, "a UDP datagram without checksum got one");
            } else if valid {
                assert!(
                    v2,
                    "a valid {} checksum became invalid",
                    if f.proto == 6 { "TCP" } else { "UDP" }
                );
            }
        }
        L4Facts::Icmp {
            valid,
            quote_hdr_valid,
        } => {
            if !partial {
                let L4Facts::Icmp {
                    valid: v2,
                    quote_hdr_valid: q2,
                } = l4_facts(out, f.hl, f.total, f.proto)
                else {
                    panic!("ICMP header vanished")
                };
                if valid {
                    assert!(v2, "a valid ICMP checksum became invalid");
                }
                if quote_hdr_valid {
                    assert!(q2, "the quoted header's checksum became invalid");
                }
            }
        }
    }
}

/// Checks a reply; returns whether it is a time exceeded.
fn check_reply(ingress: Side, to: Side, buf: &[u8], len: usize, input: Option<&Facts>) -> bool {
    assert_eq!(
        to, ingress,
        "reply goes out of another side than the packet came in"
    );
    assert!(
        len <= buf.len(),
        "reply of {len} bytes in a buffer of {}",
        buf.len()
    );
    let r = &buf[..len];
    let ip = Ipv4Packet::new_checked(r).unwrap_or_else(|e| panic!("reply does not parse: {e:?}"));
    assert!(ip.verify_checksum(), "reply has a bad header checksum");
    assert_eq!(
        ip.total_len(),
        len,
        "reply's total length is not its length"
    );
    assert_eq!(ip.protocol(), 1, "reply is not ICMP");
    assert!(!ip.is_fragment(), "reply is a fragment");
    let hl = ip.header_len();
    assert!(len >= hl + 8, "reply too short for ICMP");
    let icmp = &r[hl..];
    assert!(
        is_gateway(ip.src_addr()),
        "reply from {}, not a gateway address",
        ip.src_addr()
    );
    match icmp[0] {
        11 => {
            assert!(
                checksum::verify(icmp),
                "time exceeded with a bad ICMP checksum"
            );
            assert!(len <= 576, "ICMP error longer than 576 bytes");
            if let Some(f) = input {
                assert_eq!(ip.dst_addr(), f.src, "time exceeded not sent to the source");
                assert!(f.ttl <= 1, "time exceeded for TTL {}", f.ttl);
            }
            true
        }
        0 => {
            if let Some(f) = input {
                assert_eq!(
                    (ip.src_addr(), ip.dst_addr()),
                    (f.dst, f.src),
                    "echo reply addresses"
                );
                assert!(is_gateway(f.dst), "echo answered for {}", f.dst);
                if let L4Facts::Icmp { valid: true, .. } = f.l4 {
                    assert!(
                        checksum::verify(icmp),
                        "echo reply with a bad ICMP checksum"
                    );
                }
            }
            false
        }
        t => panic!("reply of ICMP type {t}"),
    }
}

// ---- counters -------------------------------------------------------------------------------------

#[derive(Default)]
struct Model {
    /// Fragments the engine holds (in its fragment table or its released queue): what its
    /// `held` gauge must say.
    outstanding: u64,
}

const ALG_DROPS: [DropReason; 6] = [
    DropReason::AlgSip,
    DropReason::AlgH323,
    DropReason::AlgRtsp,
    DropReason::AlgDns,
    DropReason::AlgFtp,
    DropReason::AlgTftp,
];

/// Which drops an operation may count besides its own verdicts: held fragments resolved.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Process,
    Batch,
    Released,
    Timeout,
    SetTable,
}

fn side_allowed(k: Kind, r: DropReason) -> bool {
    match k {
        Kind::Process | Kind::Batch => r == DropReason::FragmentTimeout || ALG_DROPS.contains(&r),
        Kind::Released => r == DropReason::FragmentTimeout || r == DropReason::Truncated,
        Kind::Timeout => r == DropReason::FragmentTimeout,
        Kind::SetTable => false,
    }
}

impl Model {
    #[allow(clippy::too_many_arguments)]
    fn account(
        &mut self,
        kind: Kind,
        before: &GlobalCounters,
        after: &GlobalCounters,
        outcomes: &[Outcome],
        received: (u64, u64),
        consumed: u64,
    ) {
        let d = |a: u64, b: u64| a.checked_sub(b).expect("a counter went down");
        assert_eq!(
            (
                d(after.received.packets, before.received.packets),
                d(after.received.bytes, before.received.bytes)
            ),
            received,
            "received counter"
        );
        let mut fwd = (0, 0);
        let mut rep = (0, 0);
        let mut held = 0;
        let mut ttl = 0;
        let mut expected = [0u64; DropReason::COUNT];
        for o in outcomes {
            match *o {
                Outcome::Forward(n) => {
                    fwd.0 += 1;
                    fwd.1 += n as u64;
                }
                // Time exceeded: the packet is a `ttl_exceeded` drop, the message an
                // `icmp_errors_sent`.
                Outcome::Reply { ttl: true, .. } => {
                    ttl += 1;
                    expected[DropReason::TtlExceeded as usize] += 1;
                }
                Outcome::Reply { ttl: false, len } => {
                    rep.0 += 1;
                    rep.1 += len as u64;
                }
                Outcome::Held => held += 1,
                Outcome::Drop(r) => expected[r as usize] += 1,
            }
        }
        assert_eq!(
            (
                d(after.forwarded.packets, before.forwarded.packets),
                d(after.forwarded.bytes, before.forwarded.bytes)
            ),
            fwd,
            "forwarded counter does not follow the Forward verdicts"
        );
        assert_eq!(
            (
                d(after.replied.packets, before.replied.packets),
                d(after.replied.bytes, before.replied.bytes)
            ),
            rep,
            "replied counter does not follow the echo replies"
        );
        assert_eq!(
            d(after.icmp_errors_sent, before.icmp_errors_sent),
            ttl,
            "icmp_errors_sent does not follow the time exceeded replies"
        );
        let mut side = 0;
        for r in DropReason::ALL {
            let i = *r as usize;
            let n = d(after.drops[i], before.drops[i]);
            assert!(
                n >= expected[i],
                "{} verdict(s) {} counted {} time(s)",
                expected[i],
                r.name(),
                n
            );
            if n > expected[i] {
                assert!(
                    side_allowed(kind, *r),
                    "{} {} drop(s) counted without such a verdict",
                    n - expected[i],
                    r.name()
                );
                side += n - expected[i];
            }
        }
        let before_out = self
            .outstanding
            .checked_sub(consumed)
            .expect("released more fragments than were held");
        // Within a batch, a fragment held by one packet may be dropped by a later one (its
        // first fragment decides `drop`); one packet alone cannot hold and drop itself.
        let could_drop = before_out + if kind == Kind::Batch { held } else { 0 };
        assert!(
            side <= could_drop,
            "{side} held fragments dropped, but only {could_drop} were held"
        );
        self.outstanding = before_out + held - side;
        self.check(after);
    }

    /// `held` is what is held, and received == forwarded + replied + held + drops.
    fn check(&self, g: &GlobalCounters) {
        assert_eq!(
            g.held, self.outstanding,
            "the held gauge is not the fragments held"
        );
        assert_eq!(
            g.received.packets,
            g.forwarded.packets + g.replied.packets + g.held + g.total_drops(),
            "received ({}) != forwarded ({}) + replied ({}) + held ({}) + drops ({})",
            g.received.packets,
            g.forwarded.packets,
            g.replied.packets,
            g.held,
            g.total_drops(),
        );
    }
}

// ---- the harness -----------------------------------------------------------------------------------

struct Harness {
    a: Engine,
    /// Takes its tables from `cell` (`TableCell::publish`, then `Engine::refresh`), where A
    /// gets them through `set_table`.
    b: Engine,
    cell: TableCell,
    now: u64,
    variant: usize,
    model: Model,
    bytes: usize,
    trace: Option<Vec<String>>,
}

/// A packet as it enters: its bytes, its room and flags.
struct Input {
    pkt: Vec<u8>,
    cap: usize,
    flags: PacketFlags,
}

fn outcome(v: Verdict, len: usize, ttl: bool) -> Outcome {
    match v {
        Verdict::Forward(_) => Outcome::Forward(len),
        Verdict::Reply { len, .. } => Outcome::Reply { ttl, len },
        Verdict::Held => Outcome::Held,
        Verdict::Drop(r) => Outcome::Drop(r),
    }
}

impl Harness {
    fn new() -> Self {
        let v = &fixture::variants()[0];
        let cell = TableCell::new((*v.table).clone());
        let mut b = Engine::with_config(Arc::new(Table::empty()), fixture::engine_config());
        assert!(
            b.refresh(&cell),
            "a new engine did not take the cell's table"
        );
        Harness {
            a: Engine::with_config(v.table.clone(), fixture::engine_config()),
            b,
            cell,
            now: 1_000_000_000,
            variant: 0,
            model: Model::default(),
            bytes: 0,
            trace: None,
        }
    }

    fn spec(&self) -> &'static Variant {
        &fixture::variants()[self.variant]
    }

    fn same(&self, what: &str) {
        assert_eq!(
            self.a.global_counters(),
            self.b.global_counters(),
            "engines A and B disagree after {what}"
        );
    }

    fn note(&mut self, what: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            t.push(what());
        }
    }

    /// Checks one verdict on its output; returns its outcome.
    fn judge(
        &mut self,
        ingress: Side,
        v: Verdict,
        buf: &[u8],
        inp: &Input,
        f: Option<&Facts>,
    ) -> Outcome {
        let len = inp.pkt.len();
        self.note(|| format!("{ingress:?} {len}B -> {v:?}"));
        match v {
            Verdict::Forward(out) => {
                check_forward(
                    self.spec(),
                    Some(ingress),
                    out,
                    &buf[..len],
                    f,
                    inp.flags.csum_partial,
                );
                outcome(v, len, false)
            }
            Verdict::Reply { to, len: n } => {
                assert!(n <= inp.cap, "reply of {n} bytes, room was {}", inp.cap);
                let ttl = check_reply(ingress, to, buf, n, f);
                outcome(v, n, ttl)
            }
            Verdict::Held => {
                let f = f.expect("a held packet parsed");
                assert!(
                    f.flags_frag & 0x1fff != 0,
                    "held a packet that is no later fragment"
                );
                Outcome::Held
            }
            Verdict::Drop(r) => {
                if f.is_none() {
                    assert!(
                        matches!(
                            r,
                            DropReason::Truncated
                                | DropReason::BadVersion
                                | DropReason::BadHeaderLen
                                | DropReason::BadTotalLen
                                | DropReason::Ipv6
                        ),
                        "a packet that does not parse dropped as {}",
                        r.name()
                    );
                }
                outcome(v, len, false)
            }
        }
    }

    fn process(&mut self, ingress: Side, inp: Input) {
        PROCESS_BUFS.with(|bufs| {
            let (ba, bb) = &mut *bufs.borrow_mut();
            ba.clear();
            ba.resize(inp.cap, 0);
            bb.clear();
            bb.resize(inp.cap, 0xff);
            self.process_in(ingress, inp, ba, bb)
        })
    }

    fn process_in(&mut self, ingress: Side, inp: Input, ba: &mut [u8], bb: &mut [u8]) {
        let len = inp.pkt.len();
        let f = facts(&inp.pkt);
        ba[..len].copy_from_slice(&inp.pkt);
        bb[..len].copy_from_slice(&inp.pkt);
        let before = self.a.global_counters().clone();
        let va = self.a.process(self.now, ingress, ba, len, inp.flags);
        let vb = self.b.process(self.now, ingress, bb, len, inp.flags);
        assert_eq!(va, vb, "engines A and B disagree on a verdict");
        let o = self.judge(ingress, va, ba, &inp, f.as_ref());
        let shown = match va {
            Verdict::Reply { len, .. } => len,
            _ => len,
        };
        assert!(
            ba[..shown] == bb[..shown],
            "output depends on the bytes after the packet"
        );
        let after = self.a.global_counters().clone();
        self.model
            .account(Kind::Process, &before, &after, &[o], (1, len as u64), 0);
        self.same("a packet");
    }

    fn batch(&mut self, ingress: Side, inputs: Vec<Input>) {
        let before = self.a.global_counters().clone();
        let mut bufs: Vec<PacketBuf> = inputs
            .iter()
            .map(|i| {
                let mut p = PacketBuf::with_capacity(i.cap);
                p.data.fill(0xff);
                p.data[..i.pkt.len()].copy_from_slice(&i.pkt);
                p.len = i.pkt.len();
                p.flags = i.flags;
                p.ingress = ingress;
                p
            })
            .collect();
        self.b.process_batch(self.now, &mut bufs);
        let mut outcomes = Vec::with_capacity(inputs.len());
        let mut received = (0, 0);
        for (inp, pb) in inputs.iter().zip(&bufs) {
            let len = inp.pkt.len();
            received.0 += 1;
            received.1 += len as u64;
            let f = facts(&inp.pkt);
            let mut ba = vec![0u8; inp.cap];
            ba[..len].copy_from_slice(&inp.pkt);
            let va = self.a.process(self.now, ingress, &mut ba, len, inp.flags);
            assert_eq!(va, pb.verdict, "process_batch disagrees with process");
            let shown = match va {
                Verdict::Reply { len: n, .. } => {
                    assert_eq!(pb.len, n, "process_batch did not set the reply's length");
                    n
                }
                _ => {
                    assert_eq!(pb.len, len, "process_batch changed a length");
                    len
                }
            };
            assert!(
                ba[..shown] == pb.data[..shown],
                "process_batch wrote other bytes than process"
            );
            outcomes.push(self.judge(ingress, va, &ba, inp, f.as_ref()));
        }
        let after = self.a.global_counters().clone();
        self.model
            .account(Kind::Batch, &before, &after, &outcomes, received, 0);
        self.same("a batch");
    }

    fn drain_released(&mut self, size: usize) {
        RELEASE_BUFS.with(|bufs| {
            let (ba, bb) = &mut *bufs.borrow_mut();
            self.drain_released_into(&mut ba[..size], &mut bb[..size]);
        })
    }

    fn drain_released_into(&mut self, ba: &mut [u8], bb: &mut [u8]) {
        let size = ba.len();
        // Bounded: each call takes one fragment off the queue, and they are bounded in bytes.
        for _ in 0..100_000 {
            let before = self.a.global_counters().clone();
            let ra = self.a.poll_released(self.now, ba);
            let rb = self.b.poll_released(self.now, bb);
            assert_eq!(ra, rb, "engines A and B release differently");
            let after = self.a.global_counters().clone();
            let Some((n, v)) = ra else {
                self.model
                    .account(Kind::Released, &before, &after, &[], (0, 0), 0);
                self.same("poll_released");
                return;
            };
            assert!(n <= size, "released {n} bytes into a buffer of {size}");
            assert!(ba[..n] == bb[..n], "released bytes differ");
            self.note(|| format!("released {n}B -> {v:?}"));
            let o = match v {
                Verdict::Forward(out) => {
                    let ip = Ipv4Packet::new_checked(&ba[..n]).expect("released fragment parses");
                    assert!(ip.frag_offset() != 0, "released a first fragment");
                    check_forward(self.spec(), None, out, &ba[..n], None, false);
                    Outcome::Forward(n)
                }
                Verdict::Reply { .. } => panic!("a released fragment was answered"),
                Verdict::Held => Outcome::Held,
                Verdict::Drop(r) => Outcome::Drop(r),
            };
            self.model
                .account(Kind::Released, &before, &after, &[o], (0, 0), 1);
            self.same("poll_released");
        }
        panic!("poll_released never ran dry");
    }

    fn timeout(&mut self) {
        let before = self.a.global_counters().clone();
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
        let after = self.a.global_counters().clone();
        self.model
            .account(Kind::Timeout, &before, &after, &[], (0, 0), 0);
        self.same("handle_timeout");
        assert_eq!(self.a.poll_timeout(), self.b.poll_timeout());
        if let Some(t) = self.a.poll_timeout() {
            assert!(
                t > self.now,
                "poll_timeout {t} is due after handle_timeout({})",
                self.now
            );
        }
    }

    fn reports(&mut self) {
        let cap = fixture::engine_config().report_capacity;
        let mut n = 0;
        loop {
            let (ra, rb) = (self.a.poll_report(), self.b.poll_report());
            assert_eq!(ra, rb, "engines A and B report differently");
            let Some(r) = ra else { break };
            self.note(|| {
                format!(
                    "report {:?} {:?} -> {:?}: {:?}",
                    r.eip, r.src, r.dst, r.finding
                )
            });
            assert!(r.now <= self.now, "report from the future");
            n += 1;
            assert!(n <= cap, "more reports than report_capacity");
        }
    }

    fn set_table(&mut self, v: usize) {
        let before = self.a.global_counters().clone();
        let t = fixture::variants()[v].table.clone();
        self.a.set_table(t.clone());
        self.cell.publish((*t).clone());
        assert!(
            self.b.refresh(&self.cell),
            "refresh missed a published table"
        );
        self.variant = v;
        let after = self.a.global_counters().clone();
        self.model
            .account(Kind::SetTable, &before, &after, &[], (0, 0), 0);
    }

    fn input(&mut self, ctl: u8, room: u8, data: &[u8]) -> Option<Input> {
        let partial = ctl & ctl::PARTIAL != 0;
        let pkt = if ctl & ctl::PATCH != 0 {
            Gen::decode(data).packet(partial)
        } else {
            data.to_vec()
        };
        self.bytes += pkt.len();
        if self.bytes > MAX_BYTES {
            return None;
        }
        let cap = pkt.len() + room as usize * 600 / 255;
        Some(Input {
            pkt,
            cap,
            flags: PacketFlags {
                csum_partial: partial,
            },
        })
    }

    fn finish(&mut self) {
        for _ in 0..4 {
            self.drain_released(RELEASE_BUF[0]);
            self.now += fixture::FRAG_TIMEOUT_NS + 1;
            self.timeout();
        }
        self.drain_released(RELEASE_BUF[0]);
        self.reports();
        assert_eq!(
            self.model.outstanding, 0,
            "fragments still held after every timeout"
        );
        self.model.check(self.a.global_counters());
        for slot in (0..=12).chain([40, 100, 101, 4195]) {
            assert_eq!(
                self.a.eip_counters(slot),
                self.b.eip_counters(slot),
                "EIP slot {slot} counters"
            );
        }
        for eni in 0..9 {
            assert_eq!(
                self.a.eni_counters(eni),
                self.b.eni_counters(eni),
                "ENI {eni} counters"
            );
        }
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    run_with(data, None);
}

/// Runs one input and says what happened to every packet.
pub fn run_traced(data: &[u8]) -> Vec<String> {
    run_with(data, Some(Vec::new())).unwrap_or_default()
}

fn run_with(data: &[u8], trace: Option<Vec<String>>) -> Option<Vec<String>> {
    let mut h = Harness::new();
    h.trace = trace;
    let mut batch: Vec<Input> = Vec::new();
    let mut batch_side = Side::Internet;
    for (opc, side, ctl, dt, room, body) in records(data) {
        let side = SIDES[side as usize % SIDES.len()];
        if opc != op::BATCH && !batch.is_empty() {
            h.batch(batch_side, core::mem::take(&mut batch));
        }
        h.now += time_step(dt);
        // Engine B's worker loop looks for a new table before each operation (there is one
        // only right after `set_table`, which adopts it at once).
        assert!(
            !h.b.refresh(&h.cell),
            "refresh saw a table nobody published"
        );
        match opc {
            op::BATCH => {
                if batch.is_empty() {
                    batch_side = side;
                }
                match h.input(ctl, room, body) {
                    Some(i) => batch.push(i),
                    None => break,
                }
            }
            op::HOUSEKEEPING => {
                h.timeout();
                h.drain_released(RELEASE_BUF[((ctl >> ctl::RELEASE_BUF_SHIFT) & 3) as usize]);
                h.reports();
            }
            op::SET_TABLE => h.set_table(room as usize % fixture::variants().len()),
            _ => match h.input(ctl, room, body) {
                Some(i) => h.process(side, i),
                None => break,
            },
        }
        if opc != op::BATCH {
            if ctl & ctl::TIMEOUT != 0 {
                h.timeout();
            }
            if ctl & ctl::DRAIN != 0 {
                h.drain_released(RELEASE_BUF[((ctl >> ctl::RELEASE_BUF_SHIFT) & 3) as usize]);
            }
            if ctl & ctl::REPORTS != 0 {
                h.reports();
            }
        }
    }
    if !batch.is_empty() {
        h.batch(batch_side, batch);
    }
    h.finish();
    if let Some(t) = &mut h.trace {
        let g = h.a.global_counters();
        t.push(format!(
            "received {} forwarded {} replied {} held {} drops {:?}",
            g.received.packets,
            g.forwarded.packets,
            g.replied.packets,
            g.held,
            DropReason::ALL
                .iter()
                .filter(|r| g.drops[**r as usize] > 0)
                .map(|r| (r.name(), g.drops[*r as usize]))
                .collect::<Vec<_>>()
        ));
    }
    h.trace
}

/// Helpers for writing seeds in this format.
pub mod seed {
    use super::*;

    pub fn raw(side: Side, pkt: &[u8]) -> Record {
        Record {
            op: op::PROCESS,
            side: fixture::side_index(side),
            ctl: 0,
            dt: 1,
            room: 255,
            data: pkt.to_vec(),
        }
    }

    pub fn gen(side: Side, g: &Gen) -> Record {
        Record {
            op: op::PROCESS,
            side: fixture::side_index(side),
            ctl: ctl::PATCH,
            dt: 1,
            room: 255,
            data: g.encode(),
        }
    }

    pub fn housekeeping(dt: u8) -> Record {
        Record {
            op: op::HOUSEKEEPING,
            side: 0,
            ctl: ctl::REPORTS,
            dt,
            room: 0,
            data: Vec::new(),
        }
    }

    pub fn set_table(v: u8) -> Record {
        Record {
            op: op::SET_TABLE,
            side: 0,
            ctl: 0,
            dt: 0,
            room: v,
            data: Vec::new(),
        }
    }

    pub fn encode(rs: &[Record]) -> Vec<u8> {
        rs.iter().flat_map(|r| r.encode()).collect()
    }
}

/// The packet a record stands for (for seeds that want to look at it).
pub fn packet_of(ctl: u8, data: &[u8]) -> Vec<u8> {
    if ctl & ctl::PATCH != 0 {
        Gen::decode(data).packet(ctl & ctl::PARTIAL != 0)
    } else {
        data.to_vec()
    }
}
