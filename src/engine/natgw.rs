//! SPEC D9–D11: packets through an internet NAT gateway.
//!
//! The engine decides what crosses a gateway and rewrites the bytes; the gateway's
//! [`Napt`](crate::napt::Napt) decides the endpoints. A gateway's NAPT is one state shared by
//! every worker (the two directions of a flow are read by different workers), behind a lock
//! taken once per packet; the packets of EIPs on instances and ENIs never take it.
//!
//! - From the internet to a gateway EIP: [`Napt::inbound`](crate::napt::Napt::inbound)
//!   (a session, a DNAT entry, or a mapping its filtering admits), delivered to the private
//!   host's ENI; an ICMP error about a flow of the gateway goes to the host that sent it,
//!   its quoted packet translated back (RFC 5508).
//! - From a guest that has no EIP of its own, to the internet: the gateway whose SNAT
//!   entries (or DNAT targets) cover the source translates it; a packet to one of the
//!   gateway's own EIPs is hairpinned back inside. A new flow that finds no free port is
//!   answered with ICMP destination unreachable, code 13.
//! - From a guest with an EIP of its own to a gateway EIP: it arrives as if from the internet,
//!   from that EIP (D11: an instance's own EIP carries its internet traffic).
//!
//! The gateway does not look at payloads (no ALG, as in the cloud), does not police
//! bandwidth, and does not carry fragmented datagrams (it would need to reassemble them to
//! find the ports of the later fragments): those are dropped as `nat_gateway_fragment`.

use super::table::{EipSlot, Table, NONE};
use super::{checksum, deliverable, from_internet, in_cloud_services, martian, Blame, DropReason};
use super::{finish_ip_header, EniId, Headers, PacketBuf, PacketFlags, Side, State, Verdict, L4};
use crate::napt::{Napt, NaptDrop, Proto, Protocol, TcpFlags, Translation};
use crate::wire::checksum::Delta;
use crate::wire::icmp;
use crate::wire::ipv4::protocol;
use core::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// A state shared by the workers behind a lock whose entries expire (a NAT gateway's NAPT,
/// a CLB's connections): [`take`] ends what timed out before handing it over.
pub(super) trait Expiring {
    fn poll_timeout(&self) -> Option<u64>;
    fn handle_timeout(&mut self, now: u64);
}

impl Expiring for Napt {
    fn poll_timeout(&self) -> Option<u64> {
        Napt::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: u64) {
        Napt::handle_timeout(self, now)
    }
}

impl Expiring for crate::clb::Clb {
    fn poll_timeout(&self) -> Option<u64> {
        crate::clb::Clb::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: u64) {
        crate::clb::Clb::handle_timeout(self, now)
    }
}

/// Takes a shared state, ending what has timed out first. A worker that panicked while
/// holding it left it consistent (neither the NAPT nor the CLB changes anything before it
/// may fail).
pub(super) fn take<T: Expiring>(shared: &Mutex<T>, now: u64) -> MutexGuard<'_, T> {
    let mut n = shared.lock().unwrap_or_else(PoisonError::into_inner);
    if n.poll_timeout().is_some_and(|t| now >= t) {
        n.handle_timeout(now);
    }
    n
}

fn napt_reason(d: NaptDrop) -> DropReason {
    match d {
        NaptDrop::NoSnatRule => DropReason::NatGatewayNoSnatEntry,
        NaptDrop::TableFull => DropReason::NatGatewaySessionTableFull,
        NaptDrop::PortsExhausted => DropReason::NatGatewayPortsExhausted,
        NaptDrop::NoSession => DropReason::NatGatewayNoSession,
        NaptDrop::Filtered => DropReason::NatGatewayFiltered,
        NaptDrop::UnknownDestination => DropReason::UnknownDestination,
        NaptDrop::HairpinOff => DropReason::NatGatewayHairpinOff,
        NaptDrop::Conflict => DropReason::NatGatewayConflict,
    }
}

pub(super) fn sock(a: u32, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(a), port)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// ICMP messages that carry an identifier the NAPT treats as a port (RFC 5508 §3.1).
fn icmp_query(ty: u8) -> bool {
    matches!(
        ty,
        icmp::kind::ECHO_REQUEST
            | icmp::kind::ECHO_REPLY
            | icmp::kind::TIMESTAMP
            | icmp::kind::TIMESTAMP_REPLY
    )
}

/// One packet of a batch on the established-flow path: its place in the batch, its gateway,
/// its direction and its flow.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    at: usize,
    gw: u32,
    /// Guest -> internet (else internet -> a gateway EIP, whose slot this is).
    outbound: bool,
    slot: EipSlot,
    flow: (Proto, SocketAddrV4, SocketAddrV4),
    h: Headers,
}

/// A batch's packets for the NAT gateways: which [`State::gateway_batch`] decided, and room
/// for the NAPT's answers, kept between batches so that nothing is allocated per batch.
#[derive(Debug, Default)]
pub(super) struct Batch {
    done: Vec<bool>,
    candidates: Vec<Candidate>,
    flows: Vec<(Proto, SocketAddrV4, SocketAddrV4)>,
    at: Vec<usize>,
    out: Vec<Result<Translation, NaptDrop>>,
    inn: Vec<Result<SocketAddrV4, NaptDrop>>,
}

impl Batch {
    /// Whether packet `i` of the batch was decided by [`State::gateway_batch`].
    #[inline(always)]
    pub(super) fn done(&self, i: usize) -> bool {
        self.done[i]
    }

    /// How many packets of the last batch [`State::gateway_batch`] decided (tests).
    #[cfg(test)]
    pub(super) fn taken(&self) -> usize {
        self.done.iter().filter(|&&d| d).count()
    }
}

/// The headers of a whole TCP or UDP packet with a plain 20-byte IPv4 header, checked as the
/// engine's shortcut checks them: what a gateway's established flows are made of. ICMP,
/// options, fragments, TTL 1 and anything odd go the general way.
fn plain_headers(pkt: &[u8]) -> Option<Headers> {
    let h: &[u8; 20] = pkt.get(..20)?.try_into().ok()?;
    let len = pkt.len();
    let total = u16::from_be_bytes([h[2], h[3]]) as usize;
    let fragment = u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0;
    if h[0] != 0x45 || total != len || fragment || h[8] <= 1 {
        return None;
    }
    let sum = checksum::sum20(h);
    let (src, dst) = (be32(h, 12), be32(h, 16));
    if sum % 0xffff != 0 || sum == 0 || martian(src) || martian(dst) {
        return None;
    }
    let payload = match h[9] {
        protocol::UDP if len >= 28 => 28,
        protocol::TCP if len >= 40 => {
            let doff = (pkt[32] >> 4) as usize * 4;
            if doff < 20 || 20 + doff > len {
                return None;
            }
            20 + doff
        }
        _ => return None,
    };
    Some(Headers {
        hl: 20,
        total,
        proto: h[9],
        src,
        dst,
        ttl: h[8],
        frag_offset: 0,
        is_fragment: false,
        ident: u16::from_be_bytes([h[4], h[5]]),
        l4: Some(L4 {
            ports: Some((be16(pkt, 20), be16(pkt, 22))),
            payload: (payload, len),
            icmp_quote: None,
        }),
    })
}

/// What the NAPT needs of a packet: its transport and the two endpoints (an ICMP query's
/// identifier as the port of both).
#[derive(Clone, Copy)]
enum Flow {
    Query(Proto, SocketAddrV4, SocketAddrV4),
    /// An ICMP error; its quoted packet's transport, source and destination.
    Error(Protocol, SocketAddrV4, SocketAddrV4),
}

/// Reads the flow of a whole packet (or first fragment), or why it cannot cross a gateway.
fn flow(buf: &[u8], h: &Headers) -> Result<Flow, DropReason> {
    let Some(l4) = h.l4 else {
        return Err(DropReason::NatGatewayFragment);
    };
    if h.is_fragment {
        return Err(DropReason::NatGatewayFragment);
    }
    let hl = h.hl;
    match h.proto {
        protocol::TCP | protocol::UDP => {
            let (sp, dp) = l4.ports.expect("read for TCP and UDP");
            let p = if h.proto == protocol::TCP {
                Proto::Tcp(TcpFlags(buf[hl + 13]))
            } else {
                Proto::Udp
            };
            Ok(Flow::Query(p, sock(h.src, sp), sock(h.dst, dp)))
        }
        protocol::ICMP => {
            let ty = buf[hl];
            if let Some(q) = l4.icmp_quote {
                let qhl = ((buf[q] & 0x0f) as usize) * 4;
                let (qsrc, qdst) = (be32(buf, q + 12), be32(buf, q + 16));
                let at = q + qhl;
                let (p, sp, dp) = match buf[q + 9] {
                    protocol::TCP | protocol::UDP if at + 4 <= h.total => {
                        let p = if buf[q + 9] == protocol::TCP {
                            Protocol::Tcp
                        } else {
                            Protocol::Udp
                        };
                        (p, be16(buf, at), be16(buf, at + 2))
                    }
                    protocol::ICMP if at + 8 <= h.total && icmp_query(buf[at]) => {
                        let id = be16(buf, at + 4);
                        (Protocol::Icmp, id, id)
                    }
                    _ => return Err(DropReason::BadIcmpQuote),
                };
                Ok(Flow::Error(p, sock(qsrc, sp), sock(qdst, dp)))
            } else if icmp_query(ty) && hl + 8 <= h.total {
                let id = be16(buf, hl + 4);
                Ok(Flow::Query(
                    Proto::IcmpQuery,
                    sock(h.src, id),
                    sock(h.dst, id),
                ))
            } else {
                Err(DropReason::NatGatewayNoSession)
            }
        }
        _ => Err(DropReason::UnsupportedProtocol),
    }
}

/// Writes the new addresses, takes one from the TTL, and fixes the header checksum; returns
/// the change of the addresses (for the checksums that cover them).
fn set_addresses(pkt: &mut [u8], h: &Headers, src: Ipv4Addr, dst: Ipv4Addr) -> Delta {
    let mut addr = Delta::ZERO;
    for (at, old, new) in [(12, h.src, u32::from(src)), (16, h.dst, u32::from(dst))] {
        if new != old {
            addr = addr + Delta::addr(old, new);
            pkt[at..at + 4].copy_from_slice(&new.to_be_bytes());
        }
    }
    finish_ip_header(pkt, addr);
    addr
}

/// Writes new endpoints into a TCP, UDP or ICMP query packet (an ICMP query's identifier is
/// the port of whichever side is inside: the source's going out, the destination's coming
/// in), and fixes every checksum that covers them. Takes one from the TTL.
pub(super) fn rewrite_query(
    pkt: &mut [u8],
    h: &Headers,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    inside_is_src: bool,
    flags: PacketFlags,
) {
    let hl = h.hl;
    let addr = set_addresses(pkt, h, *src.ip(), *dst.ip());
    match h.proto {
        protocol::TCP | protocol::UDP => {
            let mut ports = Delta::ZERO;
            for (at, new) in [(hl, src.port()), (hl + 2, dst.port())] {
                let old = be16(pkt, at);
                if old != new {
                    ports = ports + Delta::word(old, new);
                    pkt[at..at + 2].copy_from_slice(&new.to_be_bytes());
                }
            }
            let udp = h.proto == protocol::UDP;
            let at = hl + if udp { 6 } else { 16 };
            let c = be16(pkt, at);
            // A partial sum left for the device covers the pseudo-header only: the ports
            // are summed with the data when the device finishes it.
            let n = if flags.csum_partial {
                addr.apply_partial(c)
            } else if udp {
                (addr + ports).apply_udp(c)
            } else {
                (addr + ports).apply(c)
            };
            pkt[at..at + 2].copy_from_slice(&n.to_be_bytes());
        }
        protocol::ICMP => {
            let new = if inside_is_src {
                src.port()
            } else {
                dst.port()
            };
            let old = be16(pkt, hl + 4);
            if old != new && !flags.csum_partial {
                pkt[hl + 4..hl + 6].copy_from_slice(&new.to_be_bytes());
                let c = be16(pkt, hl + 2);
                let n = Delta::word(old, new).apply(c);
                pkt[hl + 2..hl + 4].copy_from_slice(&n.to_be_bytes());
            }
        }
        _ => {}
    }
}

/// Writes an ICMP error's translation: the outer addresses, and the quoted packet's
/// addresses, ports (or identifier) and checksums; then the ICMP checksum, which covers the
/// quote. Takes one from the TTL.
fn rewrite_error(
    pkt: &mut [u8],
    h: &Headers,
    outer: (Ipv4Addr, Ipv4Addr),
    quoted: (SocketAddrV4, SocketAddrV4),
) {
    set_addresses(pkt, h, outer.0, outer.1);

    let q = h.hl + icmp::HEADER_LEN;
    let qhl = ((pkt[q] & 0x0f) as usize) * 4;
    let qproto = pkt[q + 9];
    let mut quote_addr = Delta::ZERO;
    for (at, new) in [(q + 12, *quoted.0.ip()), (q + 16, *quoted.1.ip())] {
        let (old, new) = (be32(pkt, at), u32::from(new));
        if old != new {
            quote_addr = quote_addr + Delta::addr(old, new);
            pkt[at..at + 4].copy_from_slice(&new.to_be_bytes());
        }
    }
    // Every change to the bytes the ICMP checksum covers.
    let mut covered = quote_addr;
    let old = be16(pkt, q + 10);
    let new = quote_addr.apply(old);
    pkt[q + 10..q + 12].copy_from_slice(&new.to_be_bytes());
    covered = covered + Delta::word(old, new);
    let l4 = q + qhl;
    match qproto {
        protocol::TCP | protocol::UDP => {
            let mut ports = Delta::ZERO;
            for (at, new) in [(l4, quoted.0.port()), (l4 + 2, quoted.1.port())] {
                let old = be16(pkt, at);
                if old != new {
                    ports = ports + Delta::word(old, new);
                    pkt[at..at + 2].copy_from_slice(&new.to_be_bytes());
                }
            }
            covered = covered + ports;
            let at = l4 + if qproto == protocol::UDP { 6 } else { 16 };
            if at + 2 <= h.total {
                let old = be16(pkt, at);
                let d = quote_addr + ports;
                let new = if qproto == protocol::UDP {
                    d.apply_udp(old)
                } else {
                    d.apply(old)
                };
                pkt[at..at + 2].copy_from_slice(&new.to_be_bytes());
                covered = covered + Delta::word(old, new);
            }
        }
        protocol::ICMP => {
            // The quoted query's identifier: its inside party's, which is the quote's source
            // going out and its destination coming in; both carry it as their port.
            let old = be16(pkt, l4 + 4);
            let new = if quoted.0.port() != old {
                quoted.0.port()
            } else {
                quoted.1.port()
            };
            if old != new {
                pkt[l4 + 4..l4 + 6].copy_from_slice(&new.to_be_bytes());
                let c = be16(pkt, l4 + 2);
                let n = Delta::word(old, new).apply(c);
                pkt[l4 + 2..l4 + 4].copy_from_slice(&n.to_be_bytes());
                covered = covered + Delta::word(old, new) + Delta::word(c, n);
            }
        }
        _ => {}
    }
    if !covered.is_zero() {
        let at = h.hl + 2;
        let c = be16(pkt, at);
        pkt[at..at + 2].copy_from_slice(&covered.apply(c).to_be_bytes());
    }
}

impl State {
    /// Counts a packet the gateway forwarded: against the gateway EIP it used (`slot`,
    /// internet -> guest when `to_guest`), and the ENIs it came from and went to.
    pub(super) fn count_gateway_forward(
        &mut self,
        slot: EipSlot,
        to_guest: bool,
        from: Option<EniId>,
        to: Option<EniId>,
        len: usize,
    ) {
        self.global.forwarded.add(len);
        if let Some(s) = self.slots.get_mut(slot as usize) {
            if to_guest {
                s.counters.to_guest.add(len);
            } else {
                s.counters.from_guest.add(len);
            }
        }
        if let Some(e) = from.and_then(|e| self.enis.get_mut(e as usize)) {
            e.from_guest.add(len);
        }
        if let Some(e) = to.and_then(|e| self.enis.get_mut(e as usize)) {
            e.to_guest.add(len);
        }
    }

    /// Where a private address inside the VPC is delivered, or why not.
    pub(super) fn gateway_delivery(
        t: &Table,
        addr: u32,
        blame: Blame,
    ) -> Result<EniId, (DropReason, Blame)> {
        match t.map.get(addr) {
            Some(d) if d.kind == super::Kind::Private => {
                let b = Blame {
                    eip: blame.eip,
                    eni: d.eni as u32,
                };
                deliverable(t.eni(d.eni as u32), b).map_err(|_| (DropReason::VpcUnreachable, b))?;
                Ok(d.eni)
            }
            _ => Err((DropReason::VpcUnreachable, blame)),
        }
    }

    /// A packet from the internet to gateway `gw`'s EIP in `slot`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gateway_from_internet(
        &mut self,
        t: &Table,
        now: u64,
        gw: u32,
        slot: EipSlot,
        buf: &mut [u8],
        len: usize,
        flags: PacketFlags,
        h: &Headers,
    ) -> Verdict {
        let blame = Blame {
            eip: slot,
            eni: NONE,
        };
        let f = match flow(buf, h) {
            Ok(f) => f,
            Err(r) => return self.drop(r, Side::Internet, blame),
        };
        if h.ttl <= 1 {
            return self.time_exceeded(t, Side::Internet, buf, h.total, h.proto, 0, blame);
        }
        let napt = &t.gateways[gw as usize].napt;
        match f {
            Flow::Query(p, src, dst) => {
                let answer = take(napt, now).inbound(now, p, src, dst);
                self.finish_inbound(t, slot, buf, len, flags, h, src, answer)
            }
            Flow::Error(p, qs, qd) => {
                let outer_src = Ipv4Addr::from(h.src);
                let answer = take(napt, now).icmp_error_inbound(now, outer_src, p, qs, qd);
                let x = match answer {
                    Ok(x) => x,
                    Err(d) => return self.drop(napt_reason(d), Side::Internet, blame),
                };
                let eni = match Self::gateway_delivery(t, u32::from(x.outer_dst), blame) {
                    Ok(e) => e,
                    Err((r, b)) => return self.drop(r, Side::Internet, b),
                };
                let (outer, quoted) = ((x.outer_src, x.outer_dst), (x.quoted_src, x.quoted_dst));
                rewrite_error(&mut buf[..h.total], h, outer, quoted);
                self.count_gateway_forward(slot, true, None, Some(eni), len);
                Verdict::Forward(Side::Eni(eni))
            }
        }
    }

    /// Internet -> gateway EIP (`slot`), once the NAPT answered `answer` for a packet from
    /// `src`: delivered to the private host, or dropped.
    #[allow(clippy::too_many_arguments)]
    fn finish_inbound(
        &mut self,
        t: &Table,
        slot: EipSlot,
        buf: &mut [u8],
        len: usize,
        flags: PacketFlags,
        h: &Headers,
        src: SocketAddrV4,
        answer: Result<SocketAddrV4, NaptDrop>,
    ) -> Verdict {
        let blame = Blame {
            eip: slot,
            eni: NONE,
        };
        let int = match answer {
            Ok(a) => a,
            Err(d) => return self.drop(napt_reason(d), Side::Internet, blame),
        };
        let eni = match Self::gateway_delivery(t, u32::from(*int.ip()), blame) {
            Ok(e) => e,
            Err((r, b)) => return self.drop(r, Side::Internet, b),
        };
        rewrite_query(&mut buf[..h.total], h, src, int, false, flags);
        self.count_gateway_forward(slot, true, None, Some(eni), len);
        Verdict::Forward(Side::Eni(eni))
    }

    /// A packet from a guest that the rules for EIPs refused with `reason`: if a NAT
    /// gateway carries it, its verdict; else `None` (the refusal stands).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gateway_from_eni(
        &mut self,
        t: &Table,
        now: u64,
        eni: EniId,
        reason: DropReason,
        buf: &mut [u8],
        len: usize,
        flags: PacketFlags,
        h: &Headers,
    ) -> Option<Verdict> {
        let to_gateway_eip = t.gateway_eip(h.dst);
        match reason {
            // No EIP of its own: a gateway's SNAT (or its DNAT, for replies).
            DropReason::NoPublicIp => {
                let gw = to_gateway_eip
                    .map(|(g, _)| g)
                    .or_else(|| t.gateway_for_source(h.src))?;
                Some(self.gateway_outbound(t, now, eni, gw, buf, len, flags, h))
            }
            // D11: a sender with its own EIP reaches a gateway EIP from the internet side.
            DropReason::EipUnassociated => {
                let (gw, slot) = to_gateway_eip?;
                let own = own_eip(t, h.src)?;
                Some(self.gateway_hairpin_in(t, now, eni, gw, slot, own, buf, len, flags, h))
            }
            _ => None,
        }
    }

    /// From a guest with no EIP, through gateway `gw`.
    #[allow(clippy::too_many_arguments)]
    fn gateway_outbound(
        &mut self,
        t: &Table,
        now: u64,
        eni: EniId,
        gw: u32,
        buf: &mut [u8],
        len: usize,
        flags: PacketFlags,
        h: &Headers,
    ) -> Verdict {
        let ingress = Side::Eni(eni);
        let blame = Blame {
            eip: NONE,
            eni: eni as u32,
        };
        let f = match flow(buf, h) {
            Ok(f) => f,
            Err(r) => return self.drop(r, ingress, blame),
        };
        if h.ttl <= 1 {
            return self.time_exceeded(t, ingress, buf, h.total, h.proto, 0, blame);
        }
        let napt = &t.gateways[gw as usize].napt;
        let (p, qs, qd) = match f {
            Flow::Query(p, src, dst) => {
                let answer = take(napt, now).outbound(now, p, src, dst);
                return self.finish_outbound(t, eni, buf, len, flags, h, answer);
            }
            Flow::Error(p, qs, qd) => (p, qs, qd),
        };
        let outer_dst = Ipv4Addr::from(h.dst);
        let x = match take(napt, now).icmp_error_outbound(now, outer_dst, p, qs, qd) {
            Ok(x) => x,
            Err(d) => return self.drop(napt_reason(d), ingress, blame),
        };
        let (src, dst) = (
            sock(u32::from(x.outer_src), 0),
            sock(u32::from(x.outer_dst), 0),
        );
        let slot = t.gateway_eip(u32::from(*src.ip())).map_or(NONE, |(_, s)| s);
        let blame = Blame { eip: slot, ..blame };
        let (new_dst, out, to) = match self.gateway_onward(t, src, dst, blame) {
            Ok(x) => x,
            Err((r, b)) => return self.drop(r, ingress, b),
        };
        let quoted_src = if u32::from(*new_dst.ip()) != u32::from(x.outer_dst) {
            // Hairpinned on to an EIP host: the quote's source is what that host sent to,
            // seen through its own EIP's translation.
            SocketAddrV4::new(*new_dst.ip(), x.quoted_src.port())
        } else {
            x.quoted_src
        };
        let (outer, quoted) = ((x.outer_src, *new_dst.ip()), (quoted_src, x.quoted_dst));
        rewrite_error(&mut buf[..h.total], h, outer, quoted);
        if to.is_some() {
            self.global.hairpin += 1;
        }
        self.count_gateway_forward(slot, false, Some(eni), to, len);
        Verdict::Forward(out)
    }

    /// Where a packet the gateway translated goes: to the internet; back inside to a private
    /// host (hairpinned by the NAPT); or to another EIP of the lab, as if from the internet.
    fn gateway_onward(
        &self,
        t: &Table,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        blame: Blame,
    ) -> Result<(SocketAddrV4, Side, Option<EniId>), (DropReason, Blame)> {
        let d = u32::from(*dst.ip());
        if t.in_vpc(d) {
            let eni = Self::gateway_delivery(t, d, blame)?;
            return Ok((dst, Side::Eni(eni), Some(eni)));
        }
        if t.maybe_eip(d) && t.gateway_eip(d).is_none() {
            if let Some(super::Kind::Eip) = t.map.get(d).map(|e| e.kind) {
                let plan = from_internet(self, t, u32::from(*src.ip()), d)?;
                let to = (plan.eni_to != NONE).then_some(plan.eni_to as EniId);
                return Ok((
                    SocketAddrV4::new(Ipv4Addr::from(plan.new_dst), dst.port()),
                    plan.out,
                    to,
                ));
            }
        }
        Ok((dst, Side::Internet, None))
    }

    /// From a guest with its own EIP `own` to gateway `gw`'s EIP in `slot`: translated as the
    /// internet would send it, from `own`.
    #[allow(clippy::too_many_arguments)]
    fn gateway_hairpin_in(
        &mut self,
        t: &Table,
        now: u64,
        eni: EniId,
        gw: u32,
        slot: EipSlot,
        own: u32,
        buf: &mut [u8],
        len: usize,
        flags: PacketFlags,
        h: &Headers,
    ) -> Verdict {
        let ingress = Side::Eni(eni);
        let blame = Blame {
            eip: slot,
            eni: eni as u32,
        };
        let (p, src, dst) = match flow(buf, h) {
            Ok(Flow::Query(p, s, d)) => (p, SocketAddrV4::new(Ipv4Addr::from(own), s.port()), d),
            Ok(Flow::Error(..)) => {
                return self.drop(DropReason::NatGatewayNoSession, ingress, blame)
            }
            Err(r) => return self.drop(r, ingress, blame),
        };
        if h.ttl <= 1 {
            return self.time_exceeded(t, ingress, buf, h.total, h.proto, 0, blame);
        }
        let answer = take(&t.gateways[gw as usize].napt, now).inbound(now, p, src, dst);
        let int = match answer {
            Ok(i) => i,
            Err(d) => return self.drop(napt_reason(d), ingress, blame),
        };
        let to = match Self::gateway_delivery(t, u32::from(*int.ip()), blame) {
            Ok(e) => e,
            Err((r, b)) => return self.drop(r, ingress, b),
        };
        rewrite_query(&mut buf[..h.total], h, src, int, false, flags);
        self.global.hairpin += 1;
        self.count_gateway_forward(slot, true, Some(eni), Some(to), len);
        Verdict::Forward(Side::Eni(to))
    }

    /// No free port for a new flow: counted, and answered with ICMP destination unreachable,
    /// code 13 (communication administratively prohibited), from the ENI's vSwitch gateway.
    fn ports_exhausted(&mut self, t: &Table, eni: EniId, buf: &mut [u8], h: &Headers) -> Verdict {
        let ingress = Side::Eni(eni);
        let verdict = self.drop(
            DropReason::NatGatewayPortsExhausted,
            ingress,
            Blame {
                eip: NONE,
                eni: eni as u32,
            },
        );
        let from = t.eni(eni as u32).map_or(0, |e| e.gateway);
        let about_error = h.proto == protocol::ICMP && icmp::is_error(buf[h.hl]);
        if from == 0 || about_error {
            return verdict;
        }
        let to = Ipv4Addr::from(h.src);
        let (ty, code) = (icmp::kind::DEST_UNREACHABLE, 13);
        self.icmp_error_reply(buf, h.total, from, to, (ty, code), ingress, verdict)
    }
}

impl State {
    /// Guest (on `eni`) -> internet through a gateway, once the NAPT answered `answer`: out
    /// (or hairpinned back in), answered with ICMP code 13 when no port was free, or dropped.
    #[allow(clippy::too_many_arguments)]
    fn finish_outbound(
        &mut self,
        t: &Table,
        eni: EniId,
        buf: &mut [u8],
        len: usize,
        flags: PacketFlags,
        h: &Headers,
        answer: Result<Translation, NaptDrop>,
    ) -> Verdict {
        let ingress = Side::Eni(eni);
        let tr = match answer {
            Ok(tr) => tr,
            Err(NaptDrop::PortsExhausted) => return self.ports_exhausted(t, eni, buf, h),
            Err(d) => {
                let blame = Blame {
                    eip: NONE,
                    eni: eni as u32,
                };
                return self.drop(napt_reason(d), ingress, blame);
            }
        };
        let slot = t
            .gateway_eip(u32::from(*tr.src.ip()))
            .map_or(NONE, |(_, s)| s);
        let blame = Blame {
            eip: slot,
            eni: eni as u32,
        };
        let (new_dst, out, to) = match self.gateway_onward(t, tr.src, tr.dst, blame) {
            Ok(x) => x,
            Err((r, b)) => return self.drop(r, ingress, b),
        };
        rewrite_query(&mut buf[..h.total], h, tr.src, new_dst, true, flags);
        if to.is_some() {
            self.global.hairpin += 1;
        }
        self.count_gateway_forward(slot, false, Some(eni), to, len);
        Verdict::Forward(out)
    }

    /// The batch's TCP and UDP packets that a NAT gateway translates as they are (plain
    /// headers; from the internet to a gateway EIP, or from a guest without an EIP to the
    /// internet): each gateway's NAPT is taken once for all of them, and answers them in a
    /// pipeline that fetches their sessions ahead ([`Napt::outbound_batch`]) instead of one
    /// lock and one lookup after the other. Their verdicts are set here, [`Batch::done`] tells
    /// the caller which; returns whether there was any.
    pub(super) fn gateway_batch(&mut self, t: &Table, now: u64, pkts: &mut [PacketBuf]) -> bool {
        let mut b = core::mem::take(&mut self.gateway);
        b.done.clear();
        b.done.resize(pkts.len(), false);
        b.candidates.clear();
        // The packets' first lines are fetched ahead, as the engine's own loop does: in a
        // batch read from a device they are not in the cache yet.
        const AHEAD: usize = 2 * super::PREFETCH_DISTANCE;
        for p in pkts.iter().take(AHEAD) {
            super::prefetch(p.data.as_ptr());
        }
        for (at, p) in pkts.iter().enumerate() {
            if let Some(next) = pkts.get(at + AHEAD) {
                super::prefetch(next.data.as_ptr());
            }
            if let Some(c) = self.candidate(t, at, p) {
                b.candidates.push(c);
            }
        }
        let any = !b.candidates.is_empty();
        for gw in 0..t.gateways.len() as u32 {
            for outbound in [true, false] {
                b.flows.clear();
                b.at.clear();
                for (k, c) in b.candidates.iter().enumerate() {
                    if c.gw == gw && c.outbound == outbound {
                        b.flows.push(c.flow);
                        b.at.push(k);
                    }
                }
                if b.flows.is_empty() {
                    continue;
                }
                let n = b.flows.len();
                {
                    let mut napt = take(&t.gateways[gw as usize].napt, now);
                    if outbound {
                        b.out.clear();
                        b.out.resize(n, Err(NaptDrop::NoSession));
                        napt.outbound_batch(now, &b.flows, &mut b.out);
                    } else {
                        b.inn.clear();
                        b.inn.resize(n, Err(NaptDrop::NoSession));
                        napt.inbound_batch(now, &b.flows, &mut b.inn);
                    }
                }
                for j in 0..n {
                    let c = b.candidates[b.at[j]];
                    let p = &mut pkts[c.at];
                    let h = c.h;
                    self.global.received.add(p.len);
                    let (len, flags) = (p.len, p.flags);
                    let v = match p.ingress {
                        Side::Eni(eni) if outbound => {
                            self.finish_outbound(t, eni, &mut p.data, len, flags, &h, b.out[j])
                        }
                        _ => {
                            let (src, answer) = (c.flow.1, b.inn[j]);
                            let buf = &mut p.data;
                            self.finish_inbound(t, c.slot, buf, len, flags, &h, src, answer)
                        }
                    };
                    if let Verdict::Reply { len, .. } = v {
                        p.len = len;
                    }
                    p.verdict = v;
                    b.done[c.at] = true;
                }
            }
        }
        self.gateway = b;
        any
    }

    /// Packet `p` (at `at` in its batch) as a candidate of [`State::gateway_batch`]: a plain
    /// TCP or UDP packet to a gateway EIP from the internet, or from a guest's address that
    /// has no EIP, on its own ENI, to the internet, covered by a gateway. Anything else (ICMP,
    /// hairpin, D11, a stopped instance, …) is left to the general path, which decides it
    /// alike, one packet at a time.
    #[inline]
    fn candidate(&self, t: &Table, at: usize, p: &PacketBuf) -> Option<Candidate> {
        let pkt = p.packet();
        let h = plain_headers(pkt)?;
        let (sp, dp) = h.l4?.ports?;
        let proto = if h.proto == protocol::TCP {
            Proto::Tcp(TcpFlags(pkt[33]))
        } else {
            Proto::Udp
        };
        let flow = (proto, sock(h.src, sp), sock(h.dst, dp));
        match p.ingress {
            Side::Internet => {
                let (gw, slot) = t.gateway_eip(h.dst)?;
                Some(Candidate {
                    at,
                    gw,
                    outbound: false,
                    slot,
                    flow,
                    h,
                })
            }
            Side::Eni(e) => {
                let r = self.outbound.get(self.outbound.find(h.src)?);
                if r.eni != e || r.slot != NONE || r.refuse.is_some() {
                    return None;
                }
                // A CLB backend's replies may be the CLB's: the general way decides.
                if !t.clbs_of_eni(e).is_empty() {
                    return None;
                }
                let d = h.dst;
                if in_cloud_services(d) || t.in_vpc(d) || t.maybe_eip(d) || d == t.internet_gateway
                {
                    return None;
                }
                Some(Candidate {
                    at,
                    gw: t.gateway_for_source(h.src)?,
                    outbound: true,
                    slot: NONE,
                    flow,
                    h,
                })
            }
            Side::CloudServices => None,
        }
    }
}

/// The EIP a private source speaks through (NAT mode), or the source itself when it is a
/// cut-through EIP.
fn own_eip(t: &Table, src: u32) -> Option<u32> {
    let s = t.map.get(src)?;
    match s.kind {
        super::Kind::Private if s.other != 0 => Some(s.other),
        super::Kind::Eip if s.mode.is_some() => Some(src),
        _ => None,
    }
}
