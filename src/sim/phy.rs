//! A smoltcp device over [`MemHost`]: what smoltcp transmits goes to the gateway, what the
//! gateway sent is what smoltcp receives.

use crate::io::mem::MemHost;
use crate::io::Offload;
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// The MTU of every simulated interface, as of the lab's TUN devices.
pub const MTU: usize = 1500;

/// An IP-medium device (no link layer: packets are IPv4 packets, as on a TUN device).
///
/// Packets go out with the default offload metadata (one packet, checksums complete: smoltcp
/// computes them). Packets from the gateway carry the metadata they came with; every host
/// here sends complete checksums and no super-packets, so none needs finishing.
pub struct SimPhy {
    host: MemHost,
}

impl SimPhy {
    pub fn new(host: MemHost) -> SimPhy {
        SimPhy { host }
    }
}

pub struct RxToken(Vec<u8>);

pub struct TxToken<'a>(&'a MemHost);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.send_all([(buf, Offload::default())]);
        r
    }
}

impl phy::Device for SimPhy {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let (bytes, _offload) = self.host.try_recv()?;
        Some((RxToken(bytes), TxToken(&self.host)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        Some(TxToken(&self.host))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = MTU;
        c
    }
}
