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
//! - From a guest in the VPC to the CLB's intranet address, the same, once the sender passed
//!   the checks of D5 and D6 (attached, running, its own source, not cut-through); the
//!   backend sees the guest's private address.
//! - From a backend, a packet of a connection of the CLB goes back the way the connection came:
//!   to the internet from the CLB's EIP and listener port (whatever EIP the backend has of its
//!   own), to a guest from the CLB's intranet address. Other packets of the backend take the
//!   usual way.
//!
//! A CLB carries whole datagrams only (`clb_fragment`): it would have to reassemble them to
//! find the ports of the later fragments.

use super::natgw::{rewrite_query, sock, take};
use super::table::{EipSlot, Table, NONE};
use super::{Blame, DropReason, EniId, Headers, PacketFlags, Side, State, Verdict};
use crate::clb::{ClbDrop, ListenerProtocol};
use crate::wire::ipv4::protocol;

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
    /// A packet to CLB `i` from `ingress`: from the internet to its EIP (in `slot`), or from
    /// a guest to its intranet address (`slot` is `NONE`; the guest's checks of D5 and D6 are
    /// passed already).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn clb_from_client(
        &mut self,
        t: &Table,
        now: u64,
        i: u32,
        ingress: Side,
        slot: EipSlot,
        buf: &mut [u8],
        len: usize,
        flags: PacketFlags,
        h: &Headers,
    ) -> Verdict {
        let from = match ingress {
            Side::Eni(e) => Some(e),
            _ => None,
        };
        let blame = Blame {
            eip: slot,
            eni: from.map_or(NONE, u32::from),
        };
        if h.is_fragment {
            return self.drop(DropReason::ClbFragment, ingress, blame);
        }
        if h.proto == protocol::ICMP {
            // The CLB answers pings on its addresses; it carries no other ICMP.
            if h.l4.is_some() && buf[h.hl] == crate::wire::icmp::kind::ECHO_REQUEST {
                return self.answer_echo(ingress, buf, h.proto, h.l4, blame);
            }
            return self.drop(DropReason::ClbNoListener, ingress, blame);
        }
        let Some((proto, tcp, sp, dp)) = transport(buf, h) else {
            return self.drop(DropReason::ClbNoListener, ingress, blame);
        };
        if h.ttl <= 1 {
            return self.time_exceeded(t, ingress, buf, h.total, h.proto, 0, blame);
        }
        let client = sock(h.src, sp);
        let answer = take(&t.clbs[i as usize].clb, now).inbound(now, proto, tcp, client, dp);
        let backend = match answer {
            Ok(b) => b,
            Err(d) => return self.drop(clb_reason(d), ingress, blame),
        };
        let to = match Self::gateway_delivery(t, u32::from(*backend.ip()), blame) {
            Ok(to) => to,
            Err((r, b)) => return self.drop(r, ingress, b),
        };
        rewrite_query(&mut buf[..h.total], h, client, backend, false, flags);
        self.count_gateway_forward(slot, true, from, Some(to), len);
        Verdict::Forward(Side::Eni(to))
    }

    /// A packet from `eni`, a backend of some CLB: if it belongs to a connection of one of
    /// its CLBs, its verdict (back the way the connection came); else `None`, and it takes
    /// the usual way.
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
        // D7 first: a stopped instance or a detached ENI sends nothing, through a CLB or not
        // (the usual way drops it and says why).
        if super::refusal(t.eni(eni as u32)).is_some() {
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
        // A client inside the VPC came through the intranet address, any other through the EIP.
        let inside = t.in_vpc(h.dst);
        for &c in clbs {
            let e = &t.clbs[c as usize];
            let (front, slot) = if inside {
                (e.vip, NONE)
            } else {
                (e.eip, e.slot)
            };
            if front == 0 {
                continue;
            }
            let mut clb = take(&e.clb, now);
            let Some(port) = clb.peek_outbound(now, proto, backend, client) else {
                continue;
            };
            let blame = Blame {
                eip: slot,
                eni: eni as u32,
            };
            // A packet that does not leave neither refreshes nor closes its connection.
            if h.ttl <= 1 {
                drop(clb);
                let v = self.time_exceeded(t, Side::Eni(eni), buf, h.total, h.proto, 0, blame);
                return Some(v);
            }
            let to = if inside {
                match Self::gateway_delivery(t, h.dst, blame) {
                    Ok(to) => Some(to),
                    Err((r, b)) => {
                        drop(clb);
                        return Some(self.drop(r, Side::Eni(eni), b));
                    }
                }
            } else {
                None
            };
            clb.outbound(now, proto, tcp, backend, client);
            drop(clb);
            rewrite_query(
                &mut buf[..h.total],
                h,
                sock(front, port),
                client,
                true,
                flags,
            );
            self.count_gateway_forward(slot, false, Some(eni), to, len);
            return Some(Verdict::Forward(to.map_or(Side::Internet, Side::Eni)));
        }
        None
    }
}
