//! The translation engine: SPEC §2 as a pure function family, bytes in, verdict out.
//!
//! An [`Engine`] owns the mutable per-packet state (counters, policers, the fragment table)
//! and reads an immutable [`Table`]. The shell calls [`Engine::process`] (or
//! [`Engine::process_batch`]) with the time, the side a packet came from and its bytes; the
//! engine rewrites the bytes in place and returns a [`Verdict`] that the shell acts on with
//! one `match`. Time is always an argument: nothing here reads a clock.
//!
//! One engine per worker thread: counters are plain integers, read by the shell through
//! [`Engine::eip_counters`] and friends and summed across workers. A new table is taken with
//! [`Engine::set_table`] between batches; counters and policers of EIPs and ENIs that stay
//! carry over, because their slots and ids are stable.

mod cell;
mod frag;
pub mod stats;
pub mod table;

pub use cell::{TableCell, Waker, WatchId};
pub use stats::{
    burst_bytes, Counter, DropCounts, DropReason, EipCounters, EniCounters, GlobalCounters,
};
pub use table::{
    AssociationMode, EipAssociation, EipConfig, EipSlot, EniConfig, EniId, InstanceRef,
    OtherProtocols, Table, TableBuilder, TableError,
};

use crate::alg::{self, AlgAction, AlgProtocol, Finding, Transport};
use crate::wire::checksum::Delta;
use crate::wire::ipv4::protocol;
use crate::wire::{icmp, Error as WireError, Ipv4Packet};
use core::net::Ipv4Addr;
use frag::{FragKey, FragTable, HeldFragment, Lookup};
use stats::{Bucket, EipHot};
use std::collections::VecDeque;
use std::sync::Arc;
use table::{
    EniEntry, KIND_EIP, KIND_INTERNET_GATEWAY, KIND_PRIVATE, KIND_VPC_GATEWAY, MODE_BINDED,
    MODE_NAT, MODE_NONE, NONE,
};

/// Where a packet comes from or goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The public Internet, facing the EIPs.
    Internet,
    /// An ENI, i.e. the guest interface it appears as.
    Eni(EniId),
    /// The cloud's own services in 100.64.0.0/10 (metadata, DNS).
    CloudServices,
}

/// 100.64.0.0/10, where the cloud's services live (D4).
pub const CLOUD_SERVICES: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 64, 0, 0), 10);

#[inline(always)]
fn in_cloud_services(a: u32) -> bool {
    a & 0xffc0_0000 == 0x6440_0000
}

/// What the shell must do with a packet.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The bytes (rewritten in place, same length) go out on this side.
    Forward(Side),
    /// The gateway answers: the buffer now holds `len` bytes of an ICMP packet to send back
    /// out of `to` (the side the packet came from).
    Reply {
        to: Side,
        len: usize,
    },
    /// A fragment kept until its datagram's first fragment decides; see
    /// [`Engine::poll_released`].
    Held,
    Drop(DropReason),
}

/// Per-packet facts from the device (TUN offload metadata).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketFlags {
    /// The L4 checksum field holds the un-complemented pseudo-header sum, to be finished by
    /// whoever sends the packet on (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
    pub csum_partial: bool,
}

/// A caller-owned buffer for the batch API: `data.len()` is its capacity, `len` the packet.
#[derive(Clone, Debug)]
pub struct PacketBuf {
    pub data: Vec<u8>,
    pub len: usize,
    pub flags: PacketFlags,
    /// The side the packet came from: a batch may mix them.
    pub ingress: Side,
    pub verdict: Verdict,
}

impl PacketBuf {
    pub fn with_capacity(cap: usize) -> Self {
        PacketBuf {
            data: vec![0; cap],
            len: 0,
            flags: PacketFlags::default(),
            ingress: Side::Internet,
            verdict: Verdict::Drop(DropReason::Truncated),
        }
    }

    /// Copies `bytes` in as the packet (growing the buffer if it must).
    pub fn set(&mut self, bytes: &[u8]) {
        if self.data.len() < bytes.len() {
            self.data.resize(bytes.len(), 0);
        }
        self.data[..bytes.len()].copy_from_slice(bytes);
        self.len = bytes.len();
        self.flags = PacketFlags::default();
    }

    pub fn packet(&self) -> &[u8] {
        &self.data[..self.len.min(self.data.len())]
    }
}

/// Limits of an engine's own state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Datagrams the fragment table tracks at once.
    pub frag_capacity: usize,
    /// How long a datagram's decision (and its held fragments) is kept.
    pub frag_timeout_ns: u64,
    /// Bytes of fragments held while waiting for first fragments.
    pub frag_held_bytes: usize,
    /// ALG findings kept for [`Engine::poll_report`] (oldest dropped first).
    pub report_capacity: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            frag_capacity: 4096,
            frag_timeout_ns: 30_000_000_000,
            frag_held_bytes: 1 << 20,
            report_capacity: 1024,
        }
    }
}

/// A NAT-mode payload that `inspect` found carrying an address NAT made wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlgReport {
    pub now: u64,
    pub eip_slot: EipSlot,
    pub eip: Ipv4Addr,
    pub private_ip: Ipv4Addr,
    /// Internet -> guest (true) or guest -> internet.
    pub to_guest: bool,
    /// Addresses and ports as the packet carried them when it reached the gateway.
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    pub finding: Finding,
}

/// How one packet goes through the gateway, decided before anything is written.
#[derive(Clone, Copy, Debug)]
struct Plan {
    out: Side,
    new_src: u32,
    new_dst: u32,
    /// Slot whose from-guest policer and counters apply (guest -> internet), or NONE.
    eip_out: u32,
    /// Slot whose to-guest policer and counters apply (internet -> guest), or NONE.
    eip_in: u32,
    /// ENI that receives the packet, or NONE.
    eni_to: u32,
    /// The NAT mapping the ALG rules judge against: (private, public), or (0, 0).
    nat: (u32, u32),
    hairpin: bool,
    /// The gateway itself is addressed (a vSwitch gateway or its internet-side address).
    to_gateway: bool,
}

impl Plan {
    /// Whom a drop after the decision is counted against: the EIP the packet was using
    /// (its sender's, else its receiver's) and the ENI it came from or was going to.
    #[inline(always)]
    fn blame(&self, ingress: Side) -> Blame {
        Blame {
            eip: if self.eip_out != NONE {
                self.eip_out
            } else {
                self.eip_in
            },
            eni: match ingress {
                Side::Eni(e) => e as u32,
                _ => self.eni_to,
            },
        }
    }
}

/// Drop attribution: the EIP slot and ENI a drop is counted against (NONE for neither).
#[derive(Clone, Copy, Debug)]
struct Blame {
    eip: u32,
    eni: u32,
}

const NOBODY: Blame = Blame {
    eip: NONE,
    eni: NONE,
};

/// A transport summary of the first fragment (or whole packet).
#[derive(Clone, Copy, Debug)]
struct L4 {
    ports: Option<(u16, u16)>,
    /// Range of the L4 payload inside the packet.
    payload: (usize, usize),
    /// ICMP error: offset of the quoted IPv4 header inside the packet.
    icmp_quote: Option<usize>,
}

#[derive(Debug)]
struct State {
    eip_hot: Vec<EipHot>,
    eip_rate: Vec<u32>,
    eip_addr: Vec<u32>,
    eip_drops: Vec<DropCounts>,
    eni_hot: Vec<[Counter; 2]>,
    eni_drops: Vec<DropCounts>,
    global: GlobalCounters,
    frags: FragTable,
    released: VecDeque<HeldFragment>,
    expired: Vec<HeldFragment>,
    reports: VecDeque<AlgReport>,
    config: EngineConfig,
}

/// The gateway's per-worker translation engine.
#[derive(Debug)]
pub struct Engine {
    table: Arc<Table>,
    /// Generation of `table` in the [`TableCell`] it came from (0: set directly).
    generation: u64,
    st: State,
}

impl Engine {
    pub fn new(table: Arc<Table>) -> Self {
        Engine::with_config(table, EngineConfig::default())
    }

    pub fn with_config(table: Arc<Table>, config: EngineConfig) -> Self {
        let mut e = Engine {
            table: Arc::new(Table::empty()),
            generation: 0,
            st: State {
                eip_hot: Vec::new(),
                eip_rate: Vec::new(),
                eip_addr: Vec::new(),
                eip_drops: Vec::new(),
                eni_hot: Vec::new(),
                eni_drops: Vec::new(),
                global: GlobalCounters::default(),
                frags: FragTable::new(
                    config.frag_capacity,
                    config.frag_timeout_ns,
                    config.frag_held_bytes,
                ),
                released: VecDeque::new(),
                expired: Vec::new(),
                reports: VecDeque::new(),
                config,
            },
        };
        e.set_table(table);
        e
    }

    /// Takes a new table. Counters and policers follow stable slots and ENI ids; the rates of
    /// the policers follow the new table. O(number of EIPs): call it between batches.
    pub fn set_table(&mut self, table: Arc<Table>) {
        self.generation = 0;
        let st = &mut self.st;
        let slots = table.max_slot.map(|s| s as usize + 1).unwrap_or(0);
        if st.eip_hot.len() < slots {
            st.eip_hot.resize(slots, EipHot::default());
            st.eip_rate.resize(slots, 0);
            st.eip_addr.resize(slots, 0);
            st.eip_drops.resize(slots, [0; DropReason::COUNT]);
        }
        for e in &table.eips {
            let s = e.slot as usize;
            if st.eip_addr[s] != e.address {
                // A slot that now stands for another address starts afresh.
                st.eip_hot[s] = EipHot::default();
                st.eip_drops[s] = [0; DropReason::COUNT];
            }
            st.eip_rate[s] = e.bandwidth_mbps;
            st.eip_addr[s] = e.address;
        }
        let enis = table.enis.len();
        if st.eni_hot.len() < enis {
            st.eni_hot.resize(enis, [Counter::default(); 2]);
            st.eni_drops.resize(enis, [0; DropReason::COUNT]);
        }
        self.table = table;
    }

    /// Takes the cell's newest table if it is not the one in use; call before each batch.
    /// Returns whether the table changed.
    #[inline]
    pub fn refresh(&mut self, cell: &TableCell) -> bool {
        if cell.generation() == self.generation {
            return false;
        }
        let (g, t) = cell.load();
        self.set_table(t);
        self.generation = g;
        true
    }

    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    pub fn global_counters(&self) -> &GlobalCounters {
        &self.st.global
    }

    /// Counters of an EIP slot (zero for a slot never seen).
    pub fn eip_counters(&self, slot: EipSlot) -> EipCounters {
        let s = slot as usize;
        match self.st.eip_hot.get(s) {
            Some(h) => EipCounters {
                to_guest: h.to_guest,
                from_guest: h.from_guest,
                drops: self.st.eip_drops[s],
            },
            None => EipCounters::default(),
        }
    }

    /// EIP slots below this number may have counters (the rest are zero).
    pub fn counted_eips(&self) -> usize {
        self.st.eip_hot.len()
    }

    /// ENI ids below this number may have counters (the rest are zero).
    pub fn counted_enis(&self) -> usize {
        self.st.eni_hot.len()
    }

    pub fn eni_counters(&self, eni: EniId) -> EniCounters {
        let i = eni as usize;
        match self.st.eni_hot.get(i) {
            Some(h) => EniCounters {
                to_guest: h[0],
                from_guest: h[1],
                drops: self.st.eni_drops[i],
            },
            None => EniCounters::default(),
        }
    }

    /// Next ALG finding, oldest first.
    pub fn poll_report(&mut self) -> Option<AlgReport> {
        self.st.reports.pop_front()
    }

    /// When [`Engine::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.st.frags.next_expiry()
    }

    /// Expires fragment state; held fragments whose first fragment never came are dropped
    /// (`fragment_timeout`).
    pub fn handle_timeout(&mut self, now: u64) {
        let mut expired = core::mem::take(&mut self.st.expired);
        self.st.frags.expire(now, &mut expired);
        self.st.count_expired(&mut expired);
        self.st.expired = expired;
    }

    /// Fragments released by their first fragment's decision, processed now: copies the next
    /// one into `buf` and returns its length and verdict. Call until `None` after a batch.
    pub fn poll_released(&mut self, now: u64, buf: &mut [u8]) -> Option<(usize, Verdict)> {
        loop {
            let h = self.st.released.pop_front()?;
            self.st.global.held -= 1;
            if h.data.len() > buf.len() {
                // The caller's buffer cannot take it: counted, not silently lost.
                self.st.count_drop(DropReason::Truncated, h.ingress, NOBODY);
                continue;
            }
            let n = h.data.len();
            buf[..n].copy_from_slice(&h.data);
            // It was counted as received when it first arrived, and is counted again now.
            self.st.global.received.packets -= 1;
            self.st.global.received.bytes -= n as u64;
            let v = self.process(now, h.ingress, buf, n, h.flags);
            let len = match v {
                Verdict::Reply { len, .. } => len,
                _ => n,
            };
            return Some((len, v));
        }
    }

    /// Processes a batch of packets that came from one side; each buffer gets its verdict
    /// (and, for a reply, its new length).
    ///
    /// With a large table every packet's lookups miss the cache (the map bucket, then the
    /// EIP's counters and policer), and one after another those misses cost more than the
    /// whole translation. So the batch runs as a pipeline (D = 8, the best of 4, 8 and 16
    /// measured): the bucket of packet `i + 2D`
    /// and the EIP state of packet `i + D` are being fetched while packet `i` is processed.
    /// A table small enough to stay in cache skips the pipeline, which would only cost.
    pub fn process_batch(&mut self, now: u64, pkts: &mut [PacketBuf]) {
        if !self.table.large {
            for p in pkts.iter_mut() {
                self.process_buf(now, p);
            }
            return;
        }
        const D: usize = PREFETCH_DISTANCE;
        let n = pkts.len();
        for i in 0..n + 2 * D {
            if let Some(p) = pkts.get(i) {
                self.prefetch_bucket(p.ingress, p.packet());
            }
            if let Some(p) = i.checked_sub(D).and_then(|j| pkts.get(j)) {
                self.prefetch_state(p.ingress, p.packet());
            }
            if let Some(p) = i.checked_sub(2 * D).and_then(|j| pkts.get_mut(j)) {
                self.process_buf(now, p);
            }
        }
    }

    /// One batch entry: its verdict, and its new length when the gateway answers.
    #[inline(always)]
    fn process_buf(&mut self, now: u64, p: &mut PacketBuf) {
        p.verdict = self.process(now, p.ingress, &mut p.data, p.len, p.flags);
        if let Verdict::Reply { len, .. } = p.verdict {
            p.len = len;
        }
    }

    #[inline(always)]
    fn prefetch_bucket(&self, ingress: Side, pkt: &[u8]) {
        if let Some(k) = lookup_key(ingress, pkt) {
            self.table.map.prefetch(k);
        }
    }

    #[inline(always)]
    fn prefetch_state(&self, ingress: Side, pkt: &[u8]) {
        let Some(e) = lookup_key(ingress, pkt).and_then(|k| self.table.map.get(k)) else {
            return;
        };
        let s = e.slot as usize;
        if let Some(h) = self.st.eip_hot.get(s) {
            prefetch(h);
            prefetch(&self.st.eip_rate[s]);
            if e.kind == KIND_EIP && e.mode == MODE_NONE {
                prefetch(&self.st.eip_drops[s][DropReason::EipUnassociated as usize]);
            }
        }
    }

    /// Processes one packet: `buf[..len]` holds it, `buf.len()` is the room the gateway may
    /// use for an ICMP answer (576 bytes suffice).
    #[inline]
    pub fn process(
        &mut self,
        now: u64,
        ingress: Side,
        buf: &mut [u8],
        len: usize,
        flags: PacketFlags,
    ) -> Verdict {
        let table = &*self.table;
        let st = &mut self.st;
        st.global.received.add(len);
        if len > buf.len() {
            return st.drop(DropReason::Truncated, ingress, NOBODY);
        }

        // ---- read and check the headers ------------------------------------------------
        let ip = match Ipv4Packet::new_checked(&buf[..len]) {
            Ok(ip) => ip,
            Err(e) => return st.drop(wire_reason(e), ingress, NOBODY),
        };
        if !ip.verify_checksum() {
            return st.drop(DropReason::BadHeaderChecksum, ingress, NOBODY);
        }
        let hl = ip.header_len();
        let total = ip.total_len();
        let proto = ip.protocol();
        let (src, dst) = (ip.src(), ip.dst());
        let ttl = ip.ttl();
        let frag_offset = ip.frag_offset();
        let is_fragment = ip.is_fragment();
        let ident = ip.ident();
        if martian(src) || martian(dst) {
            return st.drop(DropReason::Martian, ingress, NOBODY);
        }
        let l4 = if frag_offset == 0 {
            match read_l4(proto, &buf[..total], hl) {
                Ok(l4) => Some(l4),
                Err(r) => return st.drop(r, ingress, NOBODY),
            }
        } else {
            None
        };
        if !matches!(proto, protocol::TCP | protocol::UDP | protocol::ICMP)
            && table.other_protocols == OtherProtocols::Drop
        {
            return st.drop(DropReason::UnsupportedProtocol, ingress, NOBODY);
        }

        // ---- decide --------------------------------------------------------------------
        let plan = match ingress {
            Side::Internet => match from_internet(table, src, dst) {
                Ok(p) => p,
                Err((r, b)) => return st.drop(r, ingress, b),
            },
            Side::Eni(eni) => match from_eni(table, eni, src, dst) {
                Ok(p) => p,
                Err((r, b)) => return st.drop(r, ingress, b),
            },
            Side::CloudServices => match from_cloud_services(table, src, dst) {
                Ok(p) => p,
                Err((r, b)) => return st.drop(r, ingress, b),
            },
        };
        if plan.to_gateway {
            // The gateway itself was addressed: only echo requests get an answer.
            return st.answer_echo(ingress, buf, proto, l4, plan.blame(ingress));
        }

        // ---- D3: ALG-dependent protocols under NAT -----------------------------------
        if plan.nat.1 != 0 && !table.alg_all_pass && matches!(proto, protocol::TCP | protocol::UDP)
        {
            let key = || FragKey {
                ingress,
                src,
                dst,
                ident,
                protocol: proto,
            };
            let decision = match l4 {
                Some(l4) => {
                    let d = st.alg_decide(now, table, &plan, proto, src, dst, &buf[..total], l4);
                    if is_fragment {
                        let mut expired = core::mem::take(&mut st.expired);
                        let r = st.frags.decide(now, key(), d.err(), &mut expired);
                        st.count_expired(&mut expired);
                        st.expired = expired;
                        match r {
                            Ok(held) => match d {
                                Ok(()) => st.released.extend(held),
                                Err(reason) => {
                                    for h in held {
                                        st.global.held -= 1;
                                        st.count_drop(reason, h.ingress, plan.blame(ingress));
                                    }
                                }
                            },
                            Err(full) => return st.drop(full, ingress, plan.blame(ingress)),
                        }
                    }
                    d
                }
                None => match st.frags.lookup(&key()) {
                    Lookup::Pass => Ok(()),
                    Lookup::Drop(r) => Err(r),
                    Lookup::Unknown => {
                        let mut expired = core::mem::take(&mut st.expired);
                        let held = HeldFragment {
                            ingress,
                            data: buf[..len].to_vec(),
                            flags,
                        };
                        let r = st.frags.hold(now, key(), held, &mut expired);
                        st.count_expired(&mut expired);
                        st.expired = expired;
                        return match r {
                            Ok(()) => {
                                st.global.held += 1;
                                Verdict::Held
                            }
                            Err(full) => st.drop(full, ingress, plan.blame(ingress)),
                        };
                    }
                },
            };
            if let Err(r) = decision {
                return st.drop(r, ingress, plan.blame(ingress));
            }
        } else if is_fragment && l4.is_some() {
            // No ALG decision is needed now (the table changed since later fragments were
            // held, or the datagram is not NAT-mode TCP/UDP after all): let them go.
            let key = FragKey {
                ingress,
                src,
                dst,
                ident,
                protocol: proto,
            };
            st.released.extend(st.frags.take_pending(&key));
        }

        // ---- TTL -----------------------------------------------------------------------
        if ttl <= 1 {
            // Quote the packet, not link padding after its total length.
            return st.time_exceeded(
                table,
                ingress,
                buf,
                total,
                proto,
                frag_offset,
                plan.blame(ingress),
            );
        }

        // ---- D8: bandwidth -------------------------------------------------------------
        if plan.eip_out != NONE {
            let s = plan.eip_out as usize;
            if !st.eip_hot[s]
                .from_guest_bucket
                .admit(st.eip_rate[s], now, len)
            {
                return st.drop(DropReason::BandwidthExceeded, ingress, plan.blame(ingress));
            }
        }
        if plan.eip_in != NONE {
            let s = plan.eip_in as usize;
            if !st.eip_hot[s]
                .to_guest_bucket
                .admit(st.eip_rate[s], now, len)
            {
                return st.drop(
                    DropReason::BandwidthExceeded,
                    ingress,
                    Blame {
                        eip: plan.eip_in,
                        eni: plan.blame(ingress).eni,
                    },
                );
            }
        }

        // ---- rewrite -------------------------------------------------------------------
        rewrite(&mut buf[..total], hl, proto, src, dst, &plan, l4, flags);

        // ---- count ---------------------------------------------------------------------
        st.global.forwarded.add(len);
        if plan.hairpin {
            st.global.hairpin += 1;
        }
        if !matches!(proto, protocol::TCP | protocol::UDP | protocol::ICMP) {
            st.global.other_protocol += 1;
        }
        if plan.eip_out != NONE {
            st.eip_hot[plan.eip_out as usize].from_guest.add(len);
        }
        if plan.eip_in != NONE {
            st.eip_hot[plan.eip_in as usize].to_guest.add(len);
        }
        if let Side::Eni(e) = ingress {
            st.eni_hot[e as usize][1].add(len);
        }
        if plan.eni_to != NONE {
            st.eni_hot[plan.eni_to as usize][0].add(len);
        }
        Verdict::Forward(plan.out)
    }
}

/// How many packets ahead [`Engine::process_batch`] fetches table state.
const PREFETCH_DISTANCE: usize = 8;

/// Hints the CPU to start loading the cache line that holds `*p`. A hint never faults and
/// changes nothing, so any address will do; where no hint instruction is known it is a no-op.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` has no architectural effect and cannot fault for any address;
    // SSE is part of the x86_64 baseline, so the instruction always exists.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The address a packet's first lookup uses: its destination when it comes from the
/// internet or the cloud services, its source when it comes from a guest.
#[inline(always)]
fn lookup_key(ingress: Side, pkt: &[u8]) -> Option<u32> {
    let at = if matches!(ingress, Side::Eni(_)) {
        12
    } else {
        16
    };
    let b = pkt.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn wire_reason(e: WireError) -> DropReason {
    match e {
        WireError::Truncated => DropReason::Truncated,
        WireError::Ipv6 => DropReason::Ipv6,
        WireError::BadVersion => DropReason::BadVersion,
        WireError::BadHeaderLen => DropReason::BadHeaderLen,
        WireError::BadTotalLen => DropReason::BadTotalLen,
        WireError::TruncatedL4 => DropReason::TruncatedL4,
        WireError::BadL4Header => DropReason::BadL4Header,
    }
}

/// Addresses no packet crossing the gateway may carry: 0/8, 127/8, multicast and 240/4
/// (which includes the limited broadcast).
#[inline(always)]
fn martian(a: u32) -> bool {
    let top = a >> 24;
    top == 0 || top == 127 || top >= 224
}

/// Reads what the rules need from the transport header of a whole packet or first fragment.
#[inline]
fn read_l4(proto: u8, pkt: &[u8], hl: usize) -> Result<L4, DropReason> {
    use crate::wire::{IcmpPacket, TcpPacket, UdpPacket};
    let seg = &pkt[hl..];
    let end = pkt.len();
    match proto {
        protocol::TCP => {
            let t = TcpPacket::new_checked(seg).map_err(wire_reason)?;
            Ok(L4 {
                ports: Some((t.src_port(), t.dst_port())),
                payload: (hl + t.header_len(), end),
                icmp_quote: None,
            })
        }
        protocol::UDP => {
            let u = UdpPacket::new_checked(seg).map_err(wire_reason)?;
            Ok(L4 {
                ports: Some((u.src_port(), u.dst_port())),
                payload: (hl + 8, end),
                icmp_quote: None,
            })
        }
        protocol::ICMP => {
            let i = IcmpPacket::new_checked(seg).map_err(wire_reason)?;
            let icmp_quote = if icmp::is_error(i.msg_type()) {
                // The quote must hold a readable IPv4 header to be translated. Its total
                // length is the original packet's, longer than the quote: not checked.
                let q = i.payload();
                if q.len() < 20 || q[0] >> 4 != 4 {
                    return Err(DropReason::BadIcmpQuote);
                }
                let qhl = ((q[0] & 0x0f) as usize) * 4;
                if qhl < 20 || qhl > q.len() {
                    return Err(DropReason::BadIcmpQuote);
                }
                Some(hl + icmp::HEADER_LEN)
            } else {
                None
            };
            Ok(L4 {
                ports: None,
                payload: (hl + icmp::HEADER_LEN, end),
                icmp_quote,
            })
        }
        _ => Ok(L4 {
            ports: None,
            payload: (hl, end),
            icmp_quote: None,
        }),
    }
}

type Decision = Result<Plan, (DropReason, Blame)>;

fn answered_by_gateway(out: Side) -> Plan {
    Plan {
        out,
        new_src: 0,
        new_dst: 0,
        eip_out: NONE,
        eip_in: NONE,
        eni_to: NONE,
        nat: (0, 0),
        hairpin: false,
        to_gateway: true,
    }
}

/// Checks the ENI an EIP or private IP is delivered to.
#[inline(always)]
fn deliverable(eni: Option<&EniEntry>, blame: Blame) -> Result<(), (DropReason, Blame)> {
    match eni {
        None => Err((DropReason::EniDetached, blame)),
        Some(e) if !e.attached() => Err((DropReason::EniDetached, blame)),
        Some(e) if !e.running => Err((DropReason::InstanceStopped, blame)),
        Some(_) => Ok(()),
    }
}

/// D1, D7: internet -> EIP.
#[inline(always)]
fn from_internet(t: &Table, src: u32, dst: u32) -> Decision {
    let Some(e) = t.map.get(dst) else {
        return Err((DropReason::UnknownDestination, NOBODY));
    };
    match e.kind {
        KIND_EIP => {}
        KIND_INTERNET_GATEWAY => return Ok(answered_by_gateway(Side::Internet)),
        _ => return Err((DropReason::UnknownDestination, NOBODY)),
    }
    let blame = Blame {
        eip: e.slot,
        eni: if e.mode == MODE_NONE {
            NONE
        } else {
            e.eni as u32
        },
    };
    if e.mode == MODE_NONE {
        return Err((DropReason::EipUnassociated, blame));
    }
    deliverable(t.eni(e.eni as u32), blame)?;
    let nat = e.mode == MODE_NAT;
    Ok(Plan {
        out: Side::Eni(e.eni),
        new_src: src,
        new_dst: if nat { e.other } else { dst },
        eip_out: NONE,
        eip_in: e.slot,
        eni_to: e.eni as u32,
        nat: if nat { (e.other, dst) } else { (0, 0) },
        hairpin: false,
        to_gateway: false,
    })
}

/// D2, D4, D5, D6 and hairpin: guest -> anywhere.
#[inline(always)]
fn from_eni(t: &Table, eni: EniId, src: u32, dst: u32) -> Decision {
    let me = eni as u32;
    let Some(mine) = t.eni(me) else {
        return Err((DropReason::UnknownEni, NOBODY));
    };
    let ingress_blame = Blame { eip: NONE, eni: me };
    deliverable(Some(mine), ingress_blame)?;

    // D6: whose address is the source?
    let owner = t.map.get(src).filter(|s| match s.kind {
        KIND_PRIVATE => true,
        KIND_EIP => s.mode != MODE_NONE && s.mode != MODE_NAT,
        _ => false,
    });
    let Some(s) = owner else {
        return Err((DropReason::SourceCheck, ingress_blame));
    };
    let sender = if s.eni == eni {
        mine
    } else {
        // Another ENI's address. The cloud drops it; with source_check off it is accepted
        // from any ENI of the same instance, as if sent on the owner's.
        match t.eni(s.eni as u32) {
            Some(o) if !t.source_check && o.instance == mine.instance => o,
            _ => return Err((DropReason::SourceCheck, ingress_blame)),
        }
    };
    // The EIP this source speaks through, and whether NAT applies.
    let (public, slot, nat) = match s.kind {
        KIND_EIP => (src, s.slot, false),
        _ if s.other != 0 => (s.other, s.slot, true),
        _ => (0, NONE, false),
    };
    let blame = Blame { eip: slot, eni: me };

    if in_cloud_services(dst) {
        // D4
        if sender.mode == MODE_BINDED {
            return Err((DropReason::CutThroughBlackhole, blame));
        }
        return Ok(Plan {
            out: Side::CloudServices,
            new_src: src,
            new_dst: dst,
            eip_out: NONE,
            eip_in: NONE,
            eni_to: NONE,
            nat: (0, 0),
            hairpin: false,
            to_gateway: false,
        });
    }
    if t.in_vpc(dst) {
        // D5: the vRouter.
        if sender.mode == MODE_BINDED {
            return Err((DropReason::CutThroughPrivate, blame));
        }
        let Some(d) = t.map.get(dst) else {
            return Err((DropReason::VpcUnreachable, blame));
        };
        match d.kind {
            KIND_PRIVATE => {
                let to = t.eni(d.eni as u32);
                match deliverable(to, blame) {
                    Ok(()) => {}
                    Err(_) => return Err((DropReason::VpcUnreachable, blame)),
                }
                return Ok(Plan {
                    out: Side::Eni(d.eni),
                    new_src: src,
                    new_dst: dst,
                    eip_out: NONE,
                    eip_in: NONE,
                    eni_to: d.eni as u32,
                    nat: (0, 0),
                    hairpin: false,
                    to_gateway: false,
                });
            }
            KIND_VPC_GATEWAY => return Ok(answered_by_gateway(Side::Eni(eni))),
            _ => return Err((DropReason::VpcUnreachable, blame)),
        }
    }

    // D2: to the internet, through this source's EIP.
    if slot == NONE {
        return Err((DropReason::NoPublicIp, blame));
    }
    let mut plan = Plan {
        out: Side::Internet,
        new_src: public,
        new_dst: dst,
        eip_out: slot,
        eip_in: NONE,
        eni_to: NONE,
        nat: if nat { (src, public) } else { (0, 0) },
        hairpin: false,
        to_gateway: false,
    };
    // Hairpin: another EIP of the lab comes back in as if from the internet.
    if t.maybe_eip(dst) {
        if let Some(e) = t.map.get(dst).filter(|e| e.kind == KIND_EIP) {
            let inbound = from_internet(t, public, dst).map_err(|(r, b)| {
                (
                    r,
                    Blame {
                        eip: b.eip,
                        eni: me,
                    },
                )
            })?;
            plan.out = inbound.out;
            plan.new_dst = inbound.new_dst;
            plan.eip_in = e.slot;
            plan.eni_to = inbound.eni_to;
            if plan.nat.1 == 0 {
                plan.nat = inbound.nat;
            }
            plan.hairpin = true;
        } else if t.map.get(dst).map(|e| e.kind) == Some(KIND_INTERNET_GATEWAY) {
            return Ok(answered_by_gateway(Side::Eni(eni)));
        }
    } else if dst == t.internet_gateway {
        return Ok(answered_by_gateway(Side::Eni(eni)));
    }
    Ok(plan)
}

/// Answers from 100.64.0.0/10 go back to the guest that asked, by private address.
#[inline]
fn from_cloud_services(t: &Table, src: u32, dst: u32) -> Decision {
    let Some(d) = t.map.get(dst) else {
        return Err((DropReason::VpcUnreachable, NOBODY));
    };
    let blame = Blame {
        eip: NONE,
        eni: d.eni as u32,
    };
    match d.kind {
        KIND_PRIVATE => {}
        KIND_EIP if d.mode == MODE_BINDED => return Err((DropReason::CutThroughBlackhole, blame)),
        KIND_EIP if d.mode != MODE_NONE && d.mode != MODE_NAT => {}
        _ => return Err((DropReason::VpcUnreachable, NOBODY)),
    }
    deliverable(t.eni(d.eni as u32), blame)?;
    Ok(Plan {
        out: Side::Eni(d.eni),
        new_src: src,
        new_dst: dst,
        eip_out: NONE,
        eip_in: NONE,
        eni_to: d.eni as u32,
        nat: (0, 0),
        hairpin: false,
        to_gateway: false,
    })
}

/// Writes the plan into the packet: addresses, TTL, and every checksum that covers them.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rewrite(
    pkt: &mut [u8],
    hl: usize,
    proto: u8,
    src: u32,
    dst: u32,
    plan: &Plan,
    l4: Option<L4>,
    flags: PacketFlags,
) {
    let mut addr = Delta::ZERO;
    if plan.new_src != src {
        addr = addr + Delta::addr(src, plan.new_src);
        pkt[12..16].copy_from_slice(&plan.new_src.to_be_bytes());
    }
    if plan.new_dst != dst {
        addr = addr + Delta::addr(dst, plan.new_dst);
        pkt[16..20].copy_from_slice(&plan.new_dst.to_be_bytes());
    }
    // TTL shares a 16-bit word with the protocol.
    let ttl = pkt[8];
    pkt[8] = ttl - 1;
    let ttl_delta = Delta::word(
        u16::from_be_bytes([ttl, proto]),
        u16::from_be_bytes([ttl - 1, proto]),
    );
    let c = u16::from_be_bytes([pkt[10], pkt[11]]);
    pkt[10..12].copy_from_slice(&(addr + ttl_delta).apply(c).to_be_bytes());

    let Some(l4) = l4 else { return };
    match proto {
        protocol::TCP if plan.new_src != src || plan.new_dst != dst => {
            let at = hl + 16;
            let c = u16::from_be_bytes([pkt[at], pkt[at + 1]]);
            let n = if flags.csum_partial {
                addr.apply_partial(c)
            } else {
                addr.apply(c)
            };
            pkt[at..at + 2].copy_from_slice(&n.to_be_bytes());
        }
        protocol::UDP if plan.new_src != src || plan.new_dst != dst => {
            let at = hl + 6;
            let c = u16::from_be_bytes([pkt[at], pkt[at + 1]]);
            let n = if flags.csum_partial {
                addr.apply_partial(c)
            } else {
                addr.apply_udp(c)
            };
            pkt[at..at + 2].copy_from_slice(&n.to_be_bytes());
        }
        protocol::ICMP => {
            if let Some(q) = l4.icmp_quote {
                let d = translate_quote(pkt, q, src, dst, plan);
                if !flags.csum_partial && !d.is_zero() {
                    let at = hl + 2;
                    let c = u16::from_be_bytes([pkt[at], pkt[at + 1]]);
                    pkt[at..at + 2].copy_from_slice(&d.apply(c).to_be_bytes());
                }
            }
        }
        _ => {}
    }
}

/// Translates the packet quoted in an ICMP error as the mirror of the outer translation:
/// the quote travelled the other way, so where the outer destination changed (EIP ->
/// private) the quoted source changes the same way, and vice versa. Returns the change to
/// the bytes the ICMP checksum covers.
fn translate_quote(pkt: &mut [u8], q: usize, src: u32, dst: u32, plan: &Plan) -> Delta {
    let qhl = ((pkt[q] & 0x0f) as usize) * 4;
    let qproto = pkt[q + 9];
    let mut inner = Delta::ZERO;
    let qsrc = u32::from_be_bytes([pkt[q + 12], pkt[q + 13], pkt[q + 14], pkt[q + 15]]);
    let qdst = u32::from_be_bytes([pkt[q + 16], pkt[q + 17], pkt[q + 18], pkt[q + 19]]);
    if plan.new_dst != dst && qsrc == dst {
        inner = inner + Delta::addr(qsrc, plan.new_dst);
        pkt[q + 12..q + 16].copy_from_slice(&plan.new_dst.to_be_bytes());
    }
    if plan.new_src != src && qdst == src {
        inner = inner + Delta::addr(qdst, plan.new_src);
        pkt[q + 16..q + 20].copy_from_slice(&plan.new_src.to_be_bytes());
    }
    if inner == Delta::ZERO {
        return Delta::ZERO;
    }
    let mut icmp_delta = inner;
    // The quoted header's own checksum.
    let old = u16::from_be_bytes([pkt[q + 10], pkt[q + 11]]);
    let new = inner.apply(old);
    pkt[q + 10..q + 12].copy_from_slice(&new.to_be_bytes());
    icmp_delta = icmp_delta + Delta::word(old, new);
    // The quoted transport checksum, when the quote reaches it (its pseudo-header changed).
    let l4 = q + qhl;
    let field = match qproto {
        protocol::UDP => Some(l4 + 6),
        protocol::TCP => Some(l4 + 16),
        _ => None,
    };
    if let Some(at) = field.filter(|at| at + 2 <= pkt.len()) {
        let old = u16::from_be_bytes([pkt[at], pkt[at + 1]]);
        let new = if qproto == protocol::UDP {
            inner.apply_udp(old)
        } else {
            inner.apply(old)
        };
        pkt[at..at + 2].copy_from_slice(&new.to_be_bytes());
        icmp_delta = icmp_delta + Delta::word(old, new);
    }
    icmp_delta
}

impl State {
    #[inline(never)]
    #[cold]
    fn drop(&mut self, r: DropReason, ingress: Side, b: Blame) -> Verdict {
        self.count_drop(r, ingress, b);
        Verdict::Drop(r)
    }

    fn count_drop(&mut self, r: DropReason, ingress: Side, b: Blame) {
        self.global.drops[r as usize] += 1;
        if b.eip != NONE {
            if let Some(d) = self.eip_drops.get_mut(b.eip as usize) {
                d[r as usize] += 1;
            }
        }
        let eni = match (b.eni, ingress) {
            (NONE, Side::Eni(e)) => e as u32,
            (e, _) => e,
        };
        if eni != NONE {
            if let Some(d) = self.eni_drops.get_mut(eni as usize) {
                d[r as usize] += 1;
            }
        }
    }

    fn count_expired(&mut self, expired: &mut Vec<HeldFragment>) {
        for h in expired.drain(..) {
            self.global.held -= 1;
            self.count_drop(DropReason::FragmentTimeout, h.ingress, NOBODY);
        }
    }

    /// D3 for one packet (or first fragment): classify, and apply the policy to what is
    /// recognised. Classification is inline (most packets are nothing); the policy is not.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn alg_decide(
        &mut self,
        now: u64,
        t: &Table,
        plan: &Plan,
        proto: u8,
        src: u32,
        dst: u32,
        pkt: &[u8],
        l4: L4,
    ) -> Result<(), DropReason> {
        let Some((sp, dp)) = l4.ports else {
            return Ok(());
        };
        let transport = if proto == protocol::TCP {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        let payload = pkt.get(l4.payload.0..l4.payload.1).unwrap_or(&[]);
        match alg::classify(transport, sp, dp, payload) {
            None => Ok(()),
            Some(p) => self.alg_policy(now, t, plan, p, src, dst, (sp, dp), payload),
        }
    }

    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn alg_policy(
        &mut self,
        now: u64,
        t: &Table,
        plan: &Plan,
        p: AlgProtocol,
        src: u32,
        dst: u32,
        ports: (u16, u16),
        payload: &[u8],
    ) -> Result<(), DropReason> {
        match t.alg.get(p) {
            AlgAction::Drop => Err(DropReason::alg(p)),
            AlgAction::Pass => {
                self.global.alg_passed[p.index()] += 1;
                Ok(())
            }
            AlgAction::Inspect => {
                self.global.alg_passed[p.index()] += 1;
                let (private, public) = plan.nat;
                if let Some(f) =
                    alg::inspect(p, payload, private.to_be_bytes(), public.to_be_bytes())
                {
                    self.global.alg_flagged[p.index()] += 1;
                    self.report(now, plan, src, dst, ports, f);
                }
                Ok(())
            }
        }
    }

    #[cold]
    fn report(
        &mut self,
        now: u64,
        plan: &Plan,
        src: u32,
        dst: u32,
        ports: (u16, u16),
        finding: Finding,
    ) {
        if self.config.report_capacity == 0 {
            return;
        }
        let to_guest = plan.eip_out == NONE;
        let slot = if to_guest { plan.eip_in } else { plan.eip_out };
        if self.reports.len() >= self.config.report_capacity {
            self.reports.pop_front();
        }
        self.reports.push_back(AlgReport {
            now,
            eip_slot: slot,
            eip: Ipv4Addr::from(plan.nat.1),
            private_ip: Ipv4Addr::from(plan.nat.0),
            to_guest,
            src: (Ipv4Addr::from(src), ports.0),
            dst: (Ipv4Addr::from(dst), ports.1),
            finding,
        });
    }

    /// The gateway was addressed (a vSwitch gateway or the internet-side address): echo
    /// requests are answered in place, everything else is dropped as undeliverable.
    #[cold]
    #[allow(clippy::too_many_arguments)]
    fn answer_echo(
        &mut self,
        ingress: Side,
        buf: &mut [u8],
        proto: u8,
        l4: Option<L4>,
        blame: Blame,
    ) -> Verdict {
        let unreachable = if ingress == Side::Internet {
            DropReason::UnknownDestination
        } else {
            DropReason::VpcUnreachable
        };
        let hl = ((buf[0] & 0x0f) as usize) * 4;
        // A fragmented request would need reassembly to be answered whole: not done.
        let fragmented = u16::from_be_bytes([buf[6], buf[7]]) & 0x3fff != 0;
        if proto != protocol::ICMP
            || fragmented
            || l4.is_none()
            || buf[hl] != icmp::kind::ECHO_REQUEST
            || buf[hl + 1] != 0
        {
            return self.drop(unreachable, ingress, blame);
        }
        let total = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        let (src, dst) = (
            [buf[12], buf[13], buf[14], buf[15]],
            [buf[16], buf[17], buf[18], buf[19]],
        );
        buf[12..16].copy_from_slice(&dst);
        buf[16..20].copy_from_slice(&src);
        buf[8] = 64;
        buf[6..8].copy_from_slice(&[0, 0]);
        let mut ip = Ipv4Packet::new_unchecked(&mut buf[..total]);
        ip.fill_checksum();
        let c = u16::from_be_bytes([buf[hl + 2], buf[hl + 3]]);
        buf[hl] = icmp::kind::ECHO_REPLY;
        let c = Delta::word(0x0800, 0x0000).apply(c);
        buf[hl + 2..hl + 4].copy_from_slice(&c.to_be_bytes());
        self.global.replied.add(total);
        Verdict::Reply {
            to: ingress,
            len: total,
        }
    }

    /// TTL ran out at the gateway: ICMP time exceeded from the gateway's address on the
    /// side the packet came from, where it has one (never about an ICMP error or a
    /// non-first fragment, RFC 1122 3.2.2).
    #[cold]
    #[allow(clippy::too_many_arguments)]
    fn time_exceeded(
        &mut self,
        t: &Table,
        ingress: Side,
        buf: &mut [u8],
        len: usize,
        proto: u8,
        frag_offset: usize,
        blame: Blame,
    ) -> Verdict {
        let verdict = self.drop(DropReason::TtlExceeded, ingress, blame);
        let from = match ingress {
            Side::Internet => t.internet_gateway,
            Side::Eni(e) => t.eni(e as u32).map(|e| e.gateway).unwrap_or(0),
            Side::CloudServices => 0,
        };
        let hl = ((buf[0] & 0x0f) as usize) * 4;
        let about_error =
            proto == protocol::ICMP && buf.get(hl).map(|&ty| icmp::is_error(ty)).unwrap_or(true);
        if from == 0 || frag_offset != 0 || about_error {
            return verdict;
        }
        let to = Ipv4Addr::from(u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]));
        match icmp::error_in_place(
            buf,
            len,
            Ipv4Addr::from(from),
            to,
            icmp::kind::TIME_EXCEEDED,
            0,
            0,
        ) {
            Some(n) => {
                self.global.icmp_errors_sent += 1;
                Verdict::Reply {
                    to: ingress,
                    len: n,
                }
            }
            None => verdict,
        }
    }
}

/// Keeps the pieces the unit tests reach for in one place.
#[cfg(test)]
mod tests;

const _: () = assert!(core::mem::size_of::<Bucket>() == 16);
const _: () = assert!(core::mem::size_of::<EipHot>() == 64);
