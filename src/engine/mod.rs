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
mod clb;
mod frag;
mod natgw;
mod records;
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
use crate::wire::checksum::{self, Delta};
use crate::wire::ipv4::protocol;
use crate::wire::{icmp, Error as WireError, Ipv4Packet};
use core::net::Ipv4Addr;
use frag::{FragKey, FragTable, HeldFragment, Lookup};
pub use records::RecordMemory;
use records::{Rec, Records};
use stats::Bucket;
use std::collections::VecDeque;
use std::sync::Arc;
use table::{EniEntry, Kind, NONE};

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

/// At most this many [`AlgReport`]s come from one packet.
pub const MAX_FINDINGS_PER_PACKET: usize = 8;

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
    /// Outbound record (guest -> internet) whose policer applies, or NONE; `slot_out` is its
    /// EIP's slot.
    rec_out: u32,
    slot_out: u32,
    /// Inbound record (internet -> guest) whose policer and counters apply, or NONE;
    /// `slot_in` is its EIP's slot.
    rec_in: u32,
    slot_in: u32,
    /// ENI that receives the packet, or NONE.
    eni_to: u32,
    /// The NAT mapping the ALG rules judge against: (private, public), or (0, 0).
    nat: (u32, u32),
    hairpin: bool,
    /// The gateway itself is addressed (a vSwitch gateway or its internet-side address).
    to_gateway: bool,
}

impl Plan {
    /// Out on `out` with these addresses, through no EIP and to no ENI: the one constructor
    /// every plan starts from.
    #[inline(always)]
    fn forward(out: Side, new_src: u32, new_dst: u32) -> Plan {
        Plan {
            out,
            new_src,
            new_dst,
            rec_out: NONE,
            slot_out: NONE,
            rec_in: NONE,
            slot_in: NONE,
            eni_to: NONE,
            nat: (0, 0),
            hairpin: false,
            to_gateway: false,
        }
    }

    /// Delivered to a guest (ENI `eni`) unchanged.
    #[inline(always)]
    fn to_eni(eni: EniId, src: u32, dst: u32) -> Plan {
        Plan {
            eni_to: eni as u32,
            ..Plan::forward(Side::Eni(eni), src, dst)
        }
    }

    /// Answered by the gateway itself, back out of `to`.
    fn answered_by_gateway(to: Side) -> Plan {
        Plan {
            to_gateway: true,
            ..Plan::forward(to, 0, 0)
        }
    }

    /// Internet -> guest through inbound record `i`, `r`.
    #[inline(always)]
    fn through_inbound(r: &Rec, i: u32, src: u32, dst: u32) -> Plan {
        let nat = r.mode == Some(AssociationMode::Nat);
        Plan {
            rec_in: i,
            slot_in: r.slot,
            nat: if nat { (r.addr, dst) } else { (0, 0) },
            ..Plan::to_eni(r.eni, src, r.addr)
        }
    }

    /// Guest -> internet through outbound record `i`, `r`.
    #[inline(always)]
    fn through_outbound(r: &Rec, i: u32, src: u32, dst: u32) -> Plan {
        let nat = r.mode == Some(AssociationMode::Nat);
        Plan {
            rec_out: i,
            slot_out: r.slot,
            nat: if nat { (src, r.addr) } else { (0, 0) },
            ..Plan::forward(Side::Internet, r.addr, dst)
        }
    }

    /// Whom a drop after the decision is counted against: the EIP the packet was using
    /// (its sender's, else its receiver's) and the ENI it came from or was going to.
    #[inline(always)]
    fn blame(&self, ingress: Side) -> Blame {
        Blame {
            eip: if self.slot_out != NONE {
                self.slot_out
            } else {
                self.slot_in
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

/// What the rules read from a packet's headers, checked.
#[derive(Clone, Copy, Debug)]
struct Headers {
    hl: usize,
    total: usize,
    proto: u8,
    src: u32,
    dst: u32,
    ttl: u8,
    frag_offset: usize,
    is_fragment: bool,
    ident: u16,
    /// The transport header, for a whole packet or a first fragment.
    l4: Option<L4>,
}

/// What an EIP slot has that its records do not: counts of records folded in when a table
/// was replaced, counts of traffic no record carried, its drops by reason, and the policers'
/// tokens while the slot is not in the table. Read only off the per-packet path.
#[derive(Clone, Debug, Default)]
struct SlotState {
    /// The address the slot stood for (0: never seen).
    addr: u32,
    counters: EipCounters,
    in_bucket: Bucket,
    out_bucket: Bucket,
}

/// A drop to add to its EIP's and ENI's rows once the batch is done.
#[derive(Clone, Copy, Debug)]
struct DropEvent {
    reason: DropReason,
    eip: u32,
    eni: u32,
}

#[derive(Debug)]
struct State {
    /// Internet -> guest, keyed by EIP.
    inbound: Records,
    /// Guest -> internet, keyed by the source address.
    outbound: Records,
    /// Per slot: its inbound and outbound record, or NONE.
    slot_in: Vec<u32>,
    slot_out: Vec<u32>,
    slots: Vec<SlotState>,
    /// Per ENI: what no record holds (see [`records`]).
    enis: Vec<EniCounters>,
    /// Drops of this batch not yet in the per-EIP and per-ENI rows (see
    /// [`State::flush_drops`]).
    drop_log: Vec<DropEvent>,
    /// Whether the records outgrow the caches, so that batches should prefetch.
    large: bool,
    /// Where records are allocated (the heap if `None`).
    memory: Option<Arc<dyn RecordMemory>>,
    /// Tests compare [`Engine::fast_step`] with the general path by turning it off.
    #[cfg(test)]
    fast_path_off: bool,
    global: GlobalCounters,
    frags: FragTable,
    released: VecDeque<HeldFragment>,
    expired: Vec<HeldFragment>,
    reports: VecDeque<AlgReport>,
    config: EngineConfig,
    /// The NAT gateways' share of a batch (see [`natgw`]).
    gateway: natgw::Batch,
}

/// The gateway's per-worker translation engine.
#[derive(Debug)]
pub struct Engine {
    table: Arc<Table>,
    /// Generation of `table` in the [`TableCell`] it came from (0: set directly).
    generation: u64,
    st: State,
}

/// Above this many bytes of records, [`Engine::process_batch`] fetches them ahead: they no
/// longer stay in a core's L2 (1 MiB on the machines measured), and below that prefetching
/// is pure overhead.
const LARGE_RECORD_BYTES: usize = 512 * 1024;

impl Engine {
    pub fn new(table: Arc<Table>) -> Self {
        Engine::with_config(table, EngineConfig::default())
    }

    pub fn with_config(table: Arc<Table>, config: EngineConfig) -> Self {
        Engine::with_memory(table, config, None)
    }

    /// An engine whose records live in `memory` (huge pages, from the shell) where it gives
    /// them, on the heap otherwise.
    pub fn with_memory(
        table: Arc<Table>,
        config: EngineConfig,
        memory: Option<Arc<dyn RecordMemory>>,
    ) -> Self {
        let mut e = Engine {
            table: Arc::new(Table::empty()),
            generation: 0,
            st: State {
                inbound: Records::with_capacity(0, None),
                outbound: Records::with_capacity(0, None),
                slot_in: Vec::new(),
                slot_out: Vec::new(),
                slots: Vec::new(),
                enis: Vec::new(),
                drop_log: Vec::new(),
                large: false,
                memory: None,
                #[cfg(test)]
                fast_path_off: false,
                global: GlobalCounters::default(),
                frags: FragTable::new(
                    config.frag_capacity,
                    config.frag_timeout_ns,
                    config.frag_held_bytes,
                ),
                released: VecDeque::new(),
                expired: Vec::new(),
                reports: VecDeque::new(),
                gateway: natgw::Batch::default(),
                config,
            },
        };
        e.st.memory = memory;
        e.set_table(table);
        e
    }

    /// Takes a new table. Counters and policers follow stable slots and ENI ids; the rates of
    /// the policers follow the new table. O(number of EIPs): call it between batches.
    pub fn set_table(&mut self, table: Arc<Table>) {
        self.generation = 0;
        let st = &mut self.st;
        let n_slots = table.max_slot.map(|s| s as usize + 1).unwrap_or(0);
        if st.slots.len() < n_slots {
            st.slots.resize(n_slots, SlotState::default());
        }
        if st.enis.len() < table.enis.len() {
            st.enis.resize(table.enis.len(), EniCounters::default());
        }
        // The old records' counts and tokens go to their slots and ENIs.
        for r in st.inbound.iter() {
            let s = &mut st.slots[r.slot as usize];
            s.counters.to_guest.merge(&r.count);
            s.in_bucket = r.bucket;
            if r.count.packets > 0 {
                st.enis[r.eni as usize].to_guest.merge(&r.count);
            }
        }
        for r in st.outbound.iter().filter(|r| r.slot != NONE) {
            let s = &mut st.slots[r.slot as usize];
            s.counters.from_guest.merge(&r.count);
            s.out_bucket = r.bucket;
            if r.count.packets > 0 {
                st.enis[r.eni as usize].from_guest.merge(&r.count);
            }
        }
        for e in &table.eips {
            let s = &mut st.slots[e.slot as usize];
            if s.addr != e.address {
                // A slot that now stands for another address starts afresh.
                *s = SlotState {
                    addr: e.address,
                    ..SlotState::default()
                };
            }
        }
        // The old records go first, so that their memory can be reused.
        st.inbound = Records::with_capacity(0, None);
        st.outbound = Records::with_capacity(0, None);
        let slots = &st.slots;
        let (inbound, outbound, index) = records::build(&table, st.memory.as_ref(), |slot| {
            let s = &slots[slot as usize];
            (s.in_bucket, s.out_bucket)
        });
        st.slot_in.clear();
        st.slot_in.resize(st.slots.len(), NONE);
        st.slot_out.clear();
        st.slot_out.resize(st.slots.len(), NONE);
        for (slot, i, o) in index {
            st.slot_in[slot as usize] = i;
            st.slot_out[slot as usize] = o;
        }
        st.large = inbound.bytes() + outbound.bytes() > LARGE_RECORD_BYTES;
        st.inbound = inbound;
        st.outbound = outbound;
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
        let st = &self.st;
        let s = slot as usize;
        let Some(base) = st.slots.get(s) else {
            return EipCounters::default();
        };
        let mut c = base.counters;
        if let Some(&i) = st.slot_in.get(s).filter(|&&i| i != NONE) {
            c.to_guest.merge(&st.inbound.get(i).count);
        }
        if let Some(&o) = st.slot_out.get(s).filter(|&&o| o != NONE) {
            c.from_guest.merge(&st.outbound.get(o).count);
        }
        c
    }

    /// EIP slots below this number may have counters (the rest are zero).
    pub fn counted_eips(&self) -> usize {
        self.st.slots.len()
    }

    /// ENI ids below this number may have counters (the rest are zero).
    pub fn counted_enis(&self) -> usize {
        self.st.enis.len()
    }

    /// Counters of one ENI. It sums every record: to read every ENI, use
    /// [`Engine::all_eni_counters`] once.
    pub fn eni_counters(&self, eni: EniId) -> EniCounters {
        self.all_eni_counters()
            .get(eni as usize)
            .copied()
            .unwrap_or_default()
    }

    /// Counters of every ENI id below [`Engine::counted_enis`], in one pass over the records.
    pub fn all_eni_counters(&self) -> Vec<EniCounters> {
        let st = &self.st;
        let mut all = st.enis.clone();
        for r in st.inbound.iter().filter(|r| r.mode.is_some()) {
            if let Some(c) = all.get_mut(r.eni as usize) {
                c.to_guest.merge(&r.count);
            }
        }
        for r in st.outbound.iter() {
            if let Some(c) = all.get_mut(r.eni as usize) {
                c.from_guest.merge(&r.count);
            }
        }
        all
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
        self.st.flush_drops();
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
                self.st.flush_drops();
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

    /// Processes a batch of packets, each from its own `ingress`; each buffer gets its
    /// verdict (and, for a reply, its new length).
    ///
    /// The batch runs as a pipeline: while packet `i` is processed, the first line of packet
    /// `i + 2D` is being fetched, and (once the records outgrow the caches) the record of
    /// packet `i + D`, whose address the packet's own bytes give. So each packet's one miss
    /// in table state is under way long before it is needed.
    pub fn process_batch(&mut self, now: u64, pkts: &mut [PacketBuf]) {
        const D: usize = PREFETCH_DISTANCE;
        // The NAT gateways' established flows first, each gateway's in one go.
        let gateway =
            !self.table.gateways.is_empty() && self.st.gateway_batch(&self.table, now, pkts);
        let large = self.st.large;
        for p in pkts.iter().take(2 * D) {
            prefetch(p.data.as_ptr());
        }
        if large {
            for p in pkts.iter().take(D) {
                self.st.prefetch_record(p.ingress, p.packet());
            }
        }
        for i in 0..pkts.len() {
            if let Some(p) = pkts.get(i + 2 * D) {
                prefetch(p.data.as_ptr());
            }
            if large {
                if let Some(p) = pkts.get(i + D) {
                    self.st.prefetch_record(p.ingress, p.packet());
                }
            }
            if gateway && self.st.gateway.done(i) {
                continue;
            }
            let p = &mut pkts[i];
            p.verdict = self.one(now, p.ingress, &mut p.data, p.len, p.flags);
            if let Verdict::Reply { len, .. } = p.verdict {
                p.len = len;
            }
        }
        self.st.flush_drops();
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
        let v = self.one(now, ingress, buf, len, flags);
        self.st.flush_drops();
        v
    }

    /// One packet, by the shortcut if it can take it.
    #[inline(always)]
    fn one(
        &mut self,
        now: u64,
        ingress: Side,
        buf: &mut [u8],
        len: usize,
        flags: PacketFlags,
    ) -> Verdict {
        match self.fast_step(now, ingress, buf, len, flags) {
            Some(v) => v,
            None => self.step(now, ingress, buf, len, flags),
        }
    }

    /// The packet most traffic is, in as few instructions as it takes: a whole TCP or UDP
    /// packet with a plain 20-byte header, exactly as long as its buffer, to or from the
    /// internet through an EIP's record, nothing for the ALG rules. Gives the same verdict,
    /// bytes and counts as [`Engine::step`] (which a test checks on every kind of packet);
    /// anything else returns `None` before anything is written or counted, for `step`.
    #[inline(always)]
    fn fast_step(
        &mut self,
        now: u64,
        ingress: Side,
        buf: &mut [u8],
        len: usize,
        flags: PacketFlags,
    ) -> Option<Verdict> {
        #[cfg(test)]
        if self.st.fast_path_off {
            return None;
        }
        let t = &*self.table;
        let st = &mut self.st;
        let pkt = buf.get_mut(..len)?;
        let h: &[u8; 20] = pkt.get(..20)?.try_into().ok()?;
        let total = u16::from_be_bytes([h[2], h[3]]) as usize;
        let fragment = u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0;
        let (ttl, proto) = (h[8], h[9]);
        if h[0] != 0x45 || total != len || fragment || ttl <= 1 {
            return None;
        }
        let src = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
        let dst = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
        // A header checksums right when its ones' complement sum is all ones: when the plain
        // sum is a non-zero multiple of 0xffff (a multiply, not a fold).
        let sum = checksum::sum20(h);
        if sum % 0xffff != 0 || sum == 0 || martian(src) || martian(dst) {
            return None;
        }
        let (transport, payload) = match proto {
            protocol::UDP if len >= 28 => (Transport::Udp, 28),
            protocol::TCP if len >= 40 => {
                let doff = (pkt[32] >> 4) as usize * 4;
                if doff < 20 || 20 + doff > len {
                    return None;
                }
                (Transport::Tcp, 20 + doff)
            }
            _ => return None,
        };
        let (outbound, i) = match ingress {
            Side::Internet => {
                let i = st.inbound.find(dst)?;
                (false, i)
            }
            Side::Eni(e) => {
                // A CLB backend's replies leave from the CLB's EIP: the general way.
                if !t.clbs.is_empty() && !t.clbs_of_eni(e).is_empty() {
                    return None;
                }
                let found = st.outbound.find(src);
                let foreign = match found {
                    None => true,
                    Some(i) => t.source_check && st.outbound.get(i).eni != e,
                };
                if foreign {
                    // D6: nobody's address, or another ENI's with the source check on. The
                    // ingress ENI's own state decides first (as `from_eni_by_table` does).
                    let mine = t.eni(e as u32)?;
                    if !mine.attached() || !mine.running {
                        return None;
                    }
                    st.global.received.add(len);
                    let blame = Blame {
                        eip: NONE,
                        eni: e as u32,
                    };
                    return Some(st.drop(DropReason::SourceCheck, ingress, blame));
                }
                let i = found?;
                let r = st.outbound.get(i);
                if r.eni != e
                    || r.slot == NONE
                    || in_cloud_services(dst)
                    || t.in_vpc(dst)
                    || t.maybe_eip(dst)
                    || dst == t.internet_gateway
                {
                    return None;
                }
                (true, i)
            }
            Side::CloudServices => return None,
        };
        let r = if outbound {
            st.outbound.get_mut(i)
        } else {
            st.inbound.get_mut(i)
        };
        if r.refuse.is_some() {
            return None;
        }
        // Whom a drop from here on is counted against (as `Plan::blame` would say).
        let blame = Blame {
            eip: r.slot,
            eni: match ingress {
                Side::Eni(e) => e as u32,
                _ => r.eni as u32,
            },
        };
        if r.mode == Some(AssociationMode::Nat) {
            let (sp, dp) = (
                u16::from_be_bytes([pkt[20], pkt[21]]),
                u16::from_be_bytes([pkt[22], pkt[23]]),
            );
            if let Some(p) = alg::classify(transport, sp, dp, &pkt[payload..]) {
                // D3 drops here; `pass` and `inspect` count and report on the general path.
                if t.alg.get(p) != AlgAction::Drop {
                    return None;
                }
                st.global.received.add(len);
                return Some(st.drop(DropReason::alg(p), ingress, blame));
            }
        }

        // From here on the packet is this path's: count it.
        st.global.received.add(len);
        if !r.policer.admit(&mut r.bucket, now, len) {
            return Some(st.drop(DropReason::BandwidthExceeded, ingress, blame));
        }
        r.count.add(len);
        let (at, old, new, out) = if outbound {
            (12, src, r.addr, Side::Internet)
        } else {
            (16, dst, r.addr, Side::Eni(r.eni))
        };
        let addr = if new != old {
            pkt[at..at + 4].copy_from_slice(&new.to_be_bytes());
            Delta::addr(old, new)
        } else {
            Delta::ZERO
        };
        finish_ip_header(pkt, addr);
        if new != old {
            fix_l4_checksum(pkt, 20, proto, addr, flags);
        }
        st.global.forwarded.add(len);
        Some(Verdict::Forward(out))
    }

    /// One packet, in the order SPEC §2 applies its rules: parse, decide, classify (D3),
    /// TTL, police (D8), rewrite, count.
    #[inline(always)]
    fn step(
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

        let h = match parse(buf, len, table.other_protocols) {
            Ok(h) => h,
            Err(r) => return st.drop(r, ingress, NOBODY),
        };

        match ingress {
            Side::Internet => {
                if let Some((gw, slot)) = table.gateway_eip(h.dst) {
                    return st.gateway_from_internet(table, now, gw, slot, buf, len, flags, &h);
                }
                if let Some((clb, slot)) = table.clb_eip(h.dst) {
                    let from = Side::Internet;
                    return st.clb_from_client(table, now, clb, from, slot, buf, len, flags, &h);
                }
            }
            Side::Eni(eni) if !table.clbs.is_empty() => {
                if let Some(v) = st.clb_from_backend(table, now, eni, buf, len, flags, &h) {
                    return v;
                }
            }
            _ => {}
        }
        let decision = match ingress {
            Side::Internet => from_internet(st, table, h.src, h.dst),
            Side::Eni(eni) => from_eni(st, table, eni, h.src, h.dst),
            Side::CloudServices => from_cloud_services(table, h.src, h.dst),
        };
        let plan = match decision {
            Ok(p) => p,
            Err((r, b)) => {
                if let Side::Eni(eni) = ingress {
                    // D13 from inside: the sender passed every check of D5 and D6, and its
                    // destination is a CLB's intranet address.
                    if r == DropReason::VpcUnreachable {
                        if let Some(i) = table.clb_vip(h.dst) {
                            let from = Side::Eni(eni);
                            return st
                                .clb_from_client(table, now, i, from, NONE, buf, len, flags, &h);
                        }
                    }
                    if !table.gateways.is_empty() {
                        let v = st.gateway_from_eni(table, now, eni, r, buf, len, flags, &h);
                        if let Some(v) = v {
                            return v;
                        }
                    }
                }
                return st.drop(r, ingress, b);
            }
        };
        if plan.to_gateway {
            // The gateway itself was addressed: only echo requests get an answer.
            return st.answer_echo(ingress, buf, h.proto, h.l4, plan.blame(ingress));
        }

        if let Some(v) = st.classify(now, table, ingress, &plan, &h, buf, len, flags) {
            return v;
        }

        if h.ttl <= 1 {
            // Quote the packet, not link padding after its total length.
            return st.time_exceeded(
                table,
                ingress,
                buf,
                h.total,
                h.proto,
                h.frag_offset,
                plan.blame(ingress),
            );
        }

        if let Err(b) = st.police(&plan, ingress, now, len) {
            return st.drop(DropReason::BandwidthExceeded, ingress, b);
        }

        rewrite(&mut buf[..h.total], &h, &plan, flags);

        st.count_forward(&plan, ingress, h.proto, len);
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
    MARTIAN_FIRST_OCTET[(a >> 24) as usize]
}

const MARTIAN_FIRST_OCTET: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i == 0 || i == 127 || i >= 224;
        i += 1;
    }
    t
};

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

/// Reads and checks the headers: everything the rules need, or why the packet is malformed
/// (or, under `other_protocols = drop`, not carried).
#[inline(always)]
fn parse(buf: &[u8], len: usize, other: OtherProtocols) -> Result<Headers, DropReason> {
    if len > buf.len() {
        return Err(DropReason::Truncated);
    }
    let ip = Ipv4Packet::new_checked(&buf[..len]).map_err(wire_reason)?;
    if !ip.verify_checksum() {
        return Err(DropReason::BadHeaderChecksum);
    }
    let (src, dst) = (ip.src(), ip.dst());
    if martian(src) || martian(dst) {
        return Err(DropReason::Martian);
    }
    let hl = ip.header_len();
    let total = ip.total_len();
    let proto = ip.protocol();
    let frag_offset = ip.frag_offset();
    let l4 = if frag_offset == 0 {
        Some(read_l4(proto, &buf[..total], hl)?)
    } else {
        None
    };
    if !matches!(proto, protocol::TCP | protocol::UDP | protocol::ICMP)
        && other == OtherProtocols::Drop
    {
        return Err(DropReason::UnsupportedProtocol);
    }
    Ok(Headers {
        hl,
        total,
        proto,
        src,
        dst,
        ttl: ip.ttl(),
        frag_offset,
        is_fragment: ip.is_fragment(),
        ident: ip.ident(),
        l4,
    })
}

type Decision = Result<Plan, (DropReason, Blame)>;

/// What traffic to or from an ENI is dropped for when the ENI cannot take it (D7): `None`
/// when it can. Records keep the answer; the general path asks each time.
#[inline(always)]
fn refusal(eni: Option<&EniEntry>) -> Option<DropReason> {
    match eni {
        None => Some(DropReason::EniDetached),
        Some(e) if !e.attached() => Some(DropReason::EniDetached),
        Some(e) if !e.running => Some(DropReason::InstanceStopped),
        Some(_) => None,
    }
}

/// Checks the ENI a private IP is delivered to, or a guest sends on.
#[inline(always)]
fn deliverable(eni: Option<&EniEntry>, blame: Blame) -> Result<(), (DropReason, Blame)> {
    match refusal(eni) {
        Some(r) => Err((r, blame)),
        None => Ok(()),
    }
}

/// D1, D7: internet -> EIP, from the EIP's inbound record alone.
#[inline(always)]
fn from_internet(st: &State, t: &Table, src: u32, dst: u32) -> Decision {
    let Some(i) = st.inbound.find(dst) else {
        if dst == t.internet_gateway {
            return Ok(Plan::answered_by_gateway(Side::Internet));
        }
        return Err((DropReason::UnknownDestination, NOBODY));
    };
    let r = st.inbound.get(i);
    if let Some(reason) = r.refuse {
        let eni = if r.mode.is_none() { NONE } else { r.eni as u32 };
        return Err((reason, Blame { eip: r.slot, eni }));
    }
    Ok(Plan::through_inbound(r, i, src, dst))
}

/// D2, D4, D5, D6 and hairpin: guest -> anywhere. The common case, a source with an EIP
/// sending on its own ENI to the internet, is decided from the source's outbound record;
/// everything else from the table.
#[inline(always)]
fn from_eni(st: &State, t: &Table, eni: EniId, src: u32, dst: u32) -> Decision {
    if let Some(i) = st.outbound.find(src) {
        let r = st.outbound.get(i);
        if r.refuse.is_none()
            && r.eni == eni
            && r.slot != NONE
            && !in_cloud_services(dst)
            && !t.in_vpc(dst)
            && !t.maybe_eip(dst)
            && dst != t.internet_gateway
        {
            return Ok(Plan::through_outbound(r, i, src, dst));
        }
    }
    from_eni_by_table(st, t, eni, src, dst)
}

#[inline(never)]
fn from_eni_by_table(st: &State, t: &Table, eni: EniId, src: u32, dst: u32) -> Decision {
    let me = eni as u32;
    let Some(mine) = t.eni(me) else {
        return Err((DropReason::UnknownEni, NOBODY));
    };
    let ingress_blame = Blame { eip: NONE, eni: me };
    deliverable(Some(mine), ingress_blame)?;

    // D6: whose address is the source?
    let owner = t.map.get(src).filter(|s| match s.kind {
        Kind::Private => true,
        Kind::Eip => matches!(
            s.mode,
            Some(AssociationMode::Binded | AssociationMode::MultiBinded)
        ),
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
    let cut_through = sender.mode == Some(AssociationMode::Binded);
    // The EIP this source speaks through, if any.
    let slot = match s.kind {
        Kind::Eip => s.slot,
        _ if s.other != 0 => s.slot,
        _ => NONE,
    };
    let blame = Blame { eip: slot, eni: me };

    if in_cloud_services(dst) {
        // D4
        if cut_through {
            return Err((DropReason::CutThroughBlackhole, blame));
        }
        return Ok(Plan::forward(Side::CloudServices, src, dst));
    }
    if t.in_vpc(dst) {
        // D5: the vRouter.
        if cut_through {
            return Err((DropReason::CutThroughPrivate, blame));
        }
        let Some(d) = t.map.get(dst) else {
            return Err((DropReason::VpcUnreachable, blame));
        };
        return match d.kind {
            Kind::Private => match deliverable(t.eni(d.eni as u32), blame) {
                Ok(()) => Ok(Plan::to_eni(d.eni, src, dst)),
                Err(_) => Err((DropReason::VpcUnreachable, blame)),
            },
            Kind::VpcGateway => Ok(Plan::answered_by_gateway(Side::Eni(eni))),
            _ => Err((DropReason::VpcUnreachable, blame)),
        };
    }

    // D2: to the internet, through this source's EIP.
    if slot == NONE {
        return Err((DropReason::NoPublicIp, blame));
    }
    let o = st.slot_out[slot as usize];
    debug_assert!(o != NONE, "an associated EIP has an outbound record");
    let mut plan = Plan::through_outbound(st.outbound.get(o), o, src, dst);
    // Hairpin: another EIP of the lab comes back in as if from the internet.
    if t.maybe_eip(dst) {
        match t.map.get(dst).map(|e| e.kind) {
            Some(Kind::Eip) => {
                let inbound = from_internet(st, t, plan.new_src, dst).map_err(|(r, b)| {
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
                plan.rec_in = inbound.rec_in;
                plan.slot_in = inbound.slot_in;
                plan.eni_to = inbound.eni_to;
                if plan.nat.1 == 0 {
                    plan.nat = inbound.nat;
                }
                plan.hairpin = true;
            }
            Some(Kind::InternetGateway) => return Ok(Plan::answered_by_gateway(Side::Eni(eni))),
            _ => {}
        }
    } else if dst == t.internet_gateway {
        return Ok(Plan::answered_by_gateway(Side::Eni(eni)));
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
    match (d.kind, d.mode) {
        (Kind::Private, _) => {}
        (Kind::Eip, Some(AssociationMode::Binded)) => {
            return Err((DropReason::CutThroughBlackhole, blame))
        }
        (Kind::Eip, Some(AssociationMode::MultiBinded)) => {}
        _ => return Err((DropReason::VpcUnreachable, NOBODY)),
    }
    deliverable(t.eni(d.eni as u32), blame)?;
    Ok(Plan::to_eni(d.eni, src, dst))
}

/// Writes the plan into the packet: addresses, TTL, and every checksum that covers them.
#[inline(always)]
fn rewrite(pkt: &mut [u8], h: &Headers, plan: &Plan, flags: PacketFlags) {
    let (hl, proto, src, dst) = (h.hl, h.proto, h.src, h.dst);
    let mut addr = Delta::ZERO;
    if plan.new_src != src {
        addr = addr + Delta::addr(src, plan.new_src);
        pkt[12..16].copy_from_slice(&plan.new_src.to_be_bytes());
    }
    if plan.new_dst != dst {
        addr = addr + Delta::addr(dst, plan.new_dst);
        pkt[16..20].copy_from_slice(&plan.new_dst.to_be_bytes());
    }
    finish_ip_header(pkt, addr);

    let Some(l4) = h.l4 else { return };
    match proto {
        protocol::TCP | protocol::UDP if plan.new_src != src || plan.new_dst != dst => {
            fix_l4_checksum(pkt, hl, proto, addr, flags);
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

/// Takes one from the TTL and updates the header checksum for it and for `addr`, the change
/// already made to the addresses.
#[inline(always)]
fn finish_ip_header(pkt: &mut [u8], addr: Delta) {
    // TTL shares a 16-bit word with the protocol.
    let (ttl, proto) = (pkt[8], pkt[9]);
    pkt[8] = ttl - 1;
    let ttl_delta = Delta::word(
        u16::from_be_bytes([ttl, proto]),
        u16::from_be_bytes([ttl - 1, proto]),
    );
    let c = u16::from_be_bytes([pkt[10], pkt[11]]);
    pkt[10..12].copy_from_slice(&(addr + ttl_delta).apply(c).to_be_bytes());
}

/// Updates a TCP or UDP checksum (behind a header of `hl` bytes) for a change of addresses,
/// whose pseudo-header it covers: a UDP checksum of zero (none) stays zero, and a partial
/// sum left for the device to finish is updated as a partial sum.
#[inline(always)]
fn fix_l4_checksum(pkt: &mut [u8], hl: usize, proto: u8, addr: Delta, flags: PacketFlags) {
    let udp = proto == protocol::UDP;
    let at = hl + if udp { 6 } else { 16 };
    let c = u16::from_be_bytes([pkt[at], pkt[at + 1]]);
    let n = if flags.csum_partial {
        addr.apply_partial(c)
    } else if udp {
        addr.apply_udp(c)
    } else {
        addr.apply(c)
    };
    pkt[at..at + 2].copy_from_slice(&n.to_be_bytes());
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

    /// Counts a drop: at once in the engine's totals, and in its EIP's and ENI's rows when
    /// the batch is done ([`State::flush_drops`]), so that those rows, a miss each in a
    /// large table, are not on the per-packet path.
    fn count_drop(&mut self, r: DropReason, ingress: Side, b: Blame) {
        self.global.drops[r as usize] += 1;
        let eni = match (b.eni, ingress) {
            (NONE, Side::Eni(e)) => e as u32,
            (e, _) => e,
        };
        if b.eip != NONE || eni != NONE {
            self.drop_log.push(DropEvent {
                reason: r,
                eip: b.eip,
                eni,
            });
        }
    }

    /// Adds the logged drops to their rows: first asks for every row, then counts, so the
    /// misses overlap instead of queueing.
    fn flush_drops(&mut self) {
        if self.drop_log.is_empty() {
            return;
        }
        for d in &self.drop_log {
            if let Some(s) = self.slots.get(d.eip as usize) {
                prefetch(&s.counters.drops[d.reason as usize]);
            }
            if let Some(e) = self.enis.get(d.eni as usize) {
                prefetch(&e.drops[d.reason as usize]);
            }
        }
        for d in self.drop_log.drain(..) {
            if let Some(s) = self.slots.get_mut(d.eip as usize) {
                s.counters.drops[d.reason as usize] += 1;
            }
            if let Some(e) = self.enis.get_mut(d.eni as usize) {
                e.drops[d.reason as usize] += 1;
            }
        }
    }

    fn count_expired(&mut self, expired: &mut Vec<HeldFragment>) {
        for h in expired.drain(..) {
            self.global.held -= 1;
            self.count_drop(DropReason::FragmentTimeout, h.ingress, NOBODY);
        }
    }

    /// Starts fetching the record a packet's first lookup reads: no load but the packet's.
    #[inline(always)]
    fn prefetch_record(&self, ingress: Side, pkt: &[u8]) {
        if let Some(k) = lookup_key(ingress, pkt) {
            match ingress {
                Side::Eni(_) => self.outbound.prefetch(k),
                Side::Internet | Side::CloudServices => self.inbound.prefetch(k),
            }
        }
    }

    /// D3, ALG-dependent protocols under NAT: classifies the packet (or its datagram's first
    /// fragment) and applies the policy. Returns the verdict when the packet stops here
    /// (dropped, or a later fragment held until its first fragment decides).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn classify(
        &mut self,
        now: u64,
        table: &Table,
        ingress: Side,
        plan: &Plan,
        h: &Headers,
        buf: &[u8],
        len: usize,
        flags: PacketFlags,
    ) -> Option<Verdict> {
        let key = || FragKey {
            ingress,
            src: h.src,
            dst: h.dst,
            ident: h.ident,
            protocol: h.proto,
        };
        let nat_tcp_udp = plan.nat.1 != 0 && matches!(h.proto, protocol::TCP | protocol::UDP);
        if !nat_tcp_udp || table.alg_all_pass {
            if nat_tcp_udp {
                // Every protocol passes: nothing waits for a decision, but what is recognised
                // is counted as passed.
                if let Some(l4) = h.l4 {
                    let pkt = &buf[..h.total];
                    let d = self.alg_decide(now, table, plan, h.proto, h.src, h.dst, pkt, l4);
                    debug_assert!(d.is_ok());
                }
            }
            if h.is_fragment && h.l4.is_some() {
                // No ALG decision is needed now (the table changed since later fragments
                // were held, or the datagram is not NAT-mode TCP/UDP after all): let them go.
                self.released.extend(self.frags.take_pending(&key()));
            }
            return None;
        }
        let decision = match h.l4 {
            Some(l4) => {
                let pkt = &buf[..h.total];
                let d = self.alg_decide(now, table, plan, h.proto, h.src, h.dst, pkt, l4);
                if h.is_fragment {
                    let mut expired = core::mem::take(&mut self.expired);
                    let r = self.frags.decide(now, key(), d.err(), &mut expired);
                    self.count_expired(&mut expired);
                    self.expired = expired;
                    match r {
                        Ok(held) => match d {
                            Ok(()) => self.released.extend(held),
                            Err(reason) => {
                                for held in held {
                                    self.global.held -= 1;
                                    self.count_drop(reason, held.ingress, plan.blame(ingress));
                                }
                            }
                        },
                        Err(full) => return Some(self.drop(full, ingress, plan.blame(ingress))),
                    }
                }
                d
            }
            None => match self.frags.lookup(&key()) {
                Lookup::Pass => Ok(()),
                Lookup::Drop(r) => Err(r),
                Lookup::Unknown => {
                    let mut expired = core::mem::take(&mut self.expired);
                    let held = HeldFragment {
                        ingress,
                        data: buf[..len].to_vec(),
                        flags,
                    };
                    let r = self.frags.hold(now, key(), held, &mut expired);
                    self.count_expired(&mut expired);
                    self.expired = expired;
                    return Some(match r {
                        Ok(()) => {
                            self.global.held += 1;
                            Verdict::Held
                        }
                        Err(full) => self.drop(full, ingress, plan.blame(ingress)),
                    });
                }
            },
        };
        match decision {
            Ok(()) => None,
            Err(r) => Some(self.drop(r, ingress, plan.blame(ingress))),
        }
    }

    /// D8: each EIP the packet crosses polices it, the sender's first. On a drop, returns
    /// whom it is counted against.
    #[inline(always)]
    fn police(&mut self, plan: &Plan, ingress: Side, now: u64, len: usize) -> Result<(), Blame> {
        if plan.rec_out != NONE {
            let r = self.outbound.get_mut(plan.rec_out);
            if !r.policer.admit(&mut r.bucket, now, len) {
                return Err(plan.blame(ingress));
            }
        }
        if plan.rec_in != NONE {
            let r = self.inbound.get_mut(plan.rec_in);
            if !r.policer.admit(&mut r.bucket, now, len) {
                return Err(Blame {
                    eip: plan.slot_in,
                    eni: plan.blame(ingress).eni,
                });
            }
        }
        Ok(())
    }

    /// Counts a forwarded packet. Through an EIP, its record counts it for the EIP and for
    /// the record's ENI at once; what no record stands for is counted in the ENI's (and the
    /// slot's) own state.
    #[inline(always)]
    fn count_forward(&mut self, plan: &Plan, ingress: Side, proto: u8, len: usize) {
        self.global.forwarded.add(len);
        if plan.hairpin {
            self.global.hairpin += 1;
        }
        if !matches!(proto, protocol::TCP | protocol::UDP | protocol::ICMP) {
            self.global.other_protocol += 1;
        }
        if plan.rec_in != NONE {
            self.inbound.get_mut(plan.rec_in).count.add(len);
        } else if plan.eni_to != NONE {
            self.enis[plan.eni_to as usize].to_guest.add(len);
        }
        if let Side::Eni(e) = ingress {
            if plan.rec_out != NONE && self.outbound.get(plan.rec_out).eni == e {
                self.outbound.get_mut(plan.rec_out).count.add(len);
            } else {
                // Sent on another ENI of the owner's instance (source check off), or
                // through no EIP.
                if plan.slot_out != NONE {
                    self.slots[plan.slot_out as usize]
                        .counters
                        .from_guest
                        .add(len);
                }
                self.enis[e as usize].from_guest.add(len);
            }
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
                // What NAT made wrong depends on the way: a guest's payload going out is wrong
                // where it names the guest's private address (the far end cannot reach it); a
                // payload coming in is wrong where it names the EIP (the guest does not hold
                // it). The EIP going out, or the private address coming in, is right as it is.
                let (private, public) = plan.nat;
                let wrong = if plan.slot_out == NONE {
                    public
                } else {
                    private
                }
                .to_be_bytes();
                // Every place in the payload is reported (a SIP message can leak in
                // `Contact:` and again in its SDP's `c=`), a few per packet at most.
                let mut found = 0usize;
                alg::inspect_each(p, payload, wrong, wrong, &mut |f| {
                    found += 1;
                    self.report(now, plan, src, dst, ports, f);
                    found < MAX_FINDINGS_PER_PACKET
                });
                if found > 0 {
                    self.global.alg_flagged[p.index()] += 1;
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
        let to_guest = plan.slot_out == NONE;
        let slot = if to_guest {
            plan.slot_in
        } else {
            plan.slot_out
        };
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
        let kind = (icmp::kind::TIME_EXCEEDED, 0);
        self.icmp_error_reply(buf, len, from, to, kind, ingress, verdict)
    }

    /// Turns the packet in `buf` into an ICMP error `kind` (type, code) from `from` to `to`,
    /// sent back out of `ingress`; `otherwise` when it cannot be made.
    #[allow(clippy::too_many_arguments)]
    fn icmp_error_reply(
        &mut self,
        buf: &mut [u8],
        len: usize,
        from: u32,
        to: Ipv4Addr,
        kind: (u8, u8),
        ingress: Side,
        otherwise: Verdict,
    ) -> Verdict {
        match icmp::error_in_place(buf, len, Ipv4Addr::from(from), to, kind.0, kind.1, 0) {
            Some(n) => {
                self.global.icmp_errors_sent += 1;
                Verdict::Reply {
                    to: ingress,
                    len: n,
                }
            }
            None => otherwise,
        }
    }
}

/// Keeps the pieces the unit tests reach for in one place.
#[cfg(test)]
mod tests;

const _: () = assert!(core::mem::size_of::<Bucket>() == 16);
