//! SPEC D13: packets through an internal-facing CLB behind an EIP.
//!
//! The engine rewrites the bytes; the CLB's [`Clb`](crate::clb::Clb) decides which backend a
//! connection goes to and keeps it there. Like a NAT gateway's NAPT, a CLB's state is one for
//! every worker (the two directions of a connection are read by different workers), behind a
//! lock taken once per packet; packets of EIPs on instances never take it.
//!
//! - From the internet to the CLB's EIP: a TCP or UDP packet to a listener's port goes to the
//!   connection's backend (a new connection is scheduled over the healthy backends by the
//!   listener's scheduler), its destination rewritten to the backend's private address and
//!   port. The backend sees the client's own address, as behind the cloud's layer-4 CLB.
//!   An echo request is answered by the CLB itself; anything else is dropped as
//!   `clb_no_listener`.
//! - From a backend, a packet of a connection of the CLB goes back out from the CLB's EIP and
//!   listener port, whatever EIP the backend has of its own. Other packets of the backend take
//!   the usual way.
//!
//! A CLB carries whole datagrams only (`clb_fragment`): it would have to reassemble them to
//! find the ports of the later fragments.

use super::natgw::{rewrite_query, sock};
use super::table::{EipSlot, SharedClb, Table, NONE};
use super::{Blame, DropReason, EniId, Headers, PacketFlags, Side, State, Verdict};
use crate::clb::{Clb, ClbDrop, ListenerProtocol};
use crate::wire::ipv4::protocol;
use std::sync::{MutexGuard, PoisonError};

/// Takes a CLB's state, ending the connections that have timed out first. A worker that
/// panicked while holding it left it consistent (the CLB changes nothing before it may fail).
fn take(clb: &SharedClb, now: u64) -> MutexGuard<'_, Clb> {
    let mut c = clb.lock().unwrap_or_else(PoisonError::into_inner);
    if c.poll_timeout().is_some_and(|t| now >= t) {
        c.handle_timeout(now);
    }
    c
}

fn clb_reason(d: ClbDrop) -> DropReason {
    match d {
        ClbDrop::NoListener => DropReason::ClbNoListener,
        ClbDrop::NoHealthyBackend => DropReason::ClbNoHealthyBackend,
        ClbDrop::TableFull => DropReason::ClbConnectionTableFull,
        ClbDrop::Conflict => DropReason::ClbConflict,
    }
}

/// A TCP or UDP packet's listener protocol, TCP flags and ports; `None` for other protocols.
fn transport(buf: &[u8], h: &Headers) -> Option<(ListenerProtocol, u8, u16, u16)> {
    let (sp, dp) = h.l4?.ports?;
    match h.proto {
        protocol::TCP => Some((ListenerProtocol::Tcp, buf[h.hl + 13], sp, dp)),
        protocol::UDP => Some((ListenerProtocol::Udp, 0, sp, dp)),
        _ => None,
    }
}

impl State {
    /// A packet from the internet to CLB `i`'s EIP (in `slot`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn clb_from_internet(
        &mut self,
        t: &Table,
        now: u64,
        i: u32,
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
        if h.is_fragment {
            return self.drop(DropReason::ClbFragment, Side::Internet, blame);
        }
        if h.proto == protocol::ICMP {
            // The CLB answers pings on its address; it carries no other ICMP.
            let hl = h.hl;
            if h.l4.is_some() && buf[hl] == crate::wire::icmp::kind::ECHO_REQUEST {
                return self.answer_echo(Side::Internet, buf, h.proto, h.l4, blame);
            }
            return self.drop(DropReason::ClbNoListener, Side::Internet, blame);
        }
        let Some((proto, tcp, sp, dp)) = transport(buf, h) else {
            return self.drop(DropReason::ClbNoListener, Side::Internet, blame);
        };
        if h.ttl <= 1 {
            return self.time_exceeded(t, Side::Internet, buf, h.total, h.proto, 0, blame);
        }
        let client = sock(h.src, sp);
        let answer = take(&t.clbs[i as usize].clb, now).inbound(now, proto, tcp, client, dp);
        match answer {
            Ok(backend) => self.deliver_inside(t, slot, buf, len, flags, h, client, backend),
            Err(d) => self.drop(clb_reason(d), Side::Internet, blame),
        }
    }

    /// A packet from `eni`, a backend of some CLB: if it belongs to a connection of one of
    /// its CLBs, its verdict (out from the CLB's EIP and listener port); else `None`, and it
    /// takes the usual way.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn clb_from_backend(
        &mut self,
        t: &Table,
        now: u64,
        eni: EniId,
        buf: &mut [u8],
        len: usize,
        flags: PacketFlags,
        h: &Headers,
    ) -> Option<Verdict> {
        let clbs = t.clbs_of_eni(eni);
        if clbs.is_empty() || h.is_fragment {
            return None;
        }
        // D6 first: only the ENI's own address speaks for its connections.
        let own = t
            .map
            .get(h.src)
            .is_some_and(|e| e.kind == super::Kind::Private && e.eni == eni);
        if !own {
            return None;
        }
        let (proto, tcp, sp, dp) = transport(buf, h)?;
        let (backend, client) = (sock(h.src, sp), sock(h.dst, dp));
        for &c in clbs {
            let e = &t.clbs[c as usize];
            let Some(port) = take(&e.clb, now).outbound(now, proto, tcp, backend, client) else {
                continue;
            };
            let blame = Blame {
                eip: e.slot,
                eni: eni as u32,
            };
            if h.ttl <= 1 {
                let v = self.time_exceeded(t, Side::Eni(eni), buf, h.total, h.proto, 0, blame);
                return Some(v);
            }
            rewrite_query(
                &mut buf[..h.total],
                h,
                sock(e.eip, port),
                client,
                true,
                flags,
            );
            self.count_gateway_forward(e.slot, false, Some(eni), None, len);
            return Some(Verdict::Forward(Side::Internet));
        }
        None
    }
}
