//! [`HostPhy`]: every device of one simulated host behind one smoltcp device.
//!
//! The host has one smoltcp interface holding every address of every device (a weak host, as
//! Linux is: an address of eth1 answers on any device). What smoltcp transmits is routed here
//! by [`Routing`] on its source and destination, so policy rules and asymmetric routing behave
//! as in a namespace: a reply from a secondary ENI's address without a rule leaves by eth0,
//! and the gateway's source check sees it there. A packet to one of the host's own addresses
//! loops back. What the gateway sends on any device is received.

use super::route::{Egress, Routing};
use crate::io::mem::MemHost;
use crate::io::Offload;
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use std::collections::VecDeque;
use std::net::Ipv4Addr;

/// The MTU of every simulated device, as of the lab's TUN devices.
pub const MTU: usize = 1500;

/// Counters of what the host could not send.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhyStats {
    /// Packets out with no route to their destination (ENETUNREACH on a real host).
    pub no_route: u64,
    /// Packets out that were not IPv4.
    pub malformed: u64,
}

/// The devices of a host (by [`Routing`] index) and the routing between them.
pub struct HostPhy {
    pub routing: Routing,
    pub devs: Vec<Option<MemHost>>,
    looped: VecDeque<Vec<u8>>,
    /// The device the next receive starts with (round robin, so none starves the others).
    next: usize,
    pub stats: PhyStats,
}

impl HostPhy {
    pub fn new() -> HostPhy {
        HostPhy {
            routing: Routing::default(),
            devs: Vec::new(),
            looped: VecDeque::new(),
            next: 0,
            stats: PhyStats::default(),
        }
    }

    /// Plugs `mem` in as device `name`; returns its index.
    pub fn add_dev(&mut self, name: &str, mem: MemHost) -> usize {
        let i = self.routing.add_dev(name);
        if self.devs.len() <= i {
            self.devs.resize_with(i + 1, || None);
        }
        self.devs[i] = Some(mem);
        i
    }

    /// Unplugs device `i` (its addresses and routes go with it).
    pub fn remove_dev(&mut self, i: usize) {
        self.routing.remove_dev(i);
        if let Some(d) = self.devs.get_mut(i) {
            *d = None;
        }
    }

    /// Sends `packet` (a whole IPv4 packet) as the host's routing says.
    pub fn transmit(&mut self, packet: Vec<u8>) {
        let (src, dst) = match addresses(&packet) {
            Some(x) => x,
            None => {
                self.stats.malformed += 1;
                return;
            }
        };
        match self.routing.route(Some(src), dst) {
            Some(Egress::Local) => self.looped.push_back(packet),
            Some(Egress::Dev { dev, .. }) => match self.devs.get(dev).and_then(Option::as_ref) {
                Some(m) => m.send_all([(packet, Offload::default())]),
                None => self.stats.no_route += 1,
            },
            None => self.stats.no_route += 1,
        }
    }

    /// Sends `packet` out of device `i` as it is, whatever the routing says (a raw socket
    /// bound to the device: how a test forges what a guest should not send).
    pub fn transmit_on(&mut self, i: usize, packet: Vec<u8>) -> bool {
        match self.devs.get(i).and_then(Option::as_ref) {
            Some(m) => {
                m.send_all([(packet, Offload::default())]);
                true
            }
            None => false,
        }
    }

    fn take(&mut self) -> Option<Vec<u8>> {
        if let Some(p) = self.looped.pop_front() {
            return Some(p);
        }
        let n = self.devs.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if let Some(m) = &self.devs[i] {
                if let Some((bytes, _offload)) = m.try_recv() {
                    self.next = (i + 1) % n;
                    return Some(bytes);
                }
            }
        }
        None
    }
}

impl Default for HostPhy {
    fn default() -> Self {
        HostPhy::new()
    }
}

/// Source and destination of an IPv4 packet.
fn addresses(p: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    Some((src, dst))
}

pub struct RxToken(Vec<u8>);

pub struct TxToken<'a>(&'a mut HostPhy);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.transmit(buf);
        r
    }
}

impl phy::Device for HostPhy {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let bytes = self.take()?;
        Some((RxToken(bytes), TxToken(self)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        Some(TxToken(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = MTU;
        c
    }
}
