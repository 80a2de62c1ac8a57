//! The device seam: what a gateway worker needs from a lab interface, and nothing more.
//!
//! A worker receives a batch of packets from a device, lets its engine decide
//! ([`Engine::process_batch`](crate::engine::Engine::process_batch)), and hands each
//! destination device the packets meant for it as one batch. It sleeps in `epoll` on the
//! devices' [`Device::ready_fd`]s. The TUN device ([`super::tun::TunDevice`]), the in-memory
//! device for tests and benches ([`super::mem`]), the pcap tap that wraps any device
//! ([`super::pcap::Tap`]) and the in-process hosts of the unprivileged backend implement it;
//! the workers do not know which one they drive.

use crate::engine::{PacketBuf, PacketFlags};
use std::io;
use std::os::fd::RawFd;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM` (linux/virtio_net.h): the L4 checksum is left to the receiver.
pub const NEEDS_CSUM: u8 = 1;

/// Offload metadata of one packet, as the virtio-net header a TUN device with `IFF_VNET_HDR`
/// puts before each packet carries it: segmentation (a GSO super-packet of up to 64 KB) and
/// checksum state. Devices without offloads use the default: one packet, checksums complete.
/// A forwarded packet leaves with the metadata it came with (addresses and ports are in its
/// first header, so a super-packet is translated once and stays whole).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offload {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl Offload {
    /// Size of the header on the wire (`struct virtio_net_hdr`).
    pub const LEN: usize = 10;

    /// Reads the header (the TUN device's byte order: the host's, as for legacy virtio).
    pub fn decode(b: &[u8; Offload::LEN]) -> Offload {
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Offload {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        }
    }

    pub fn encode(&self) -> [u8; Offload::LEN] {
        let mut b = [0u8; Offload::LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (i, v) in [
            (2, self.hdr_len),
            (4, self.gso_size),
            (6, self.csum_start),
            (8, self.csum_offset),
        ] {
            b[i..i + 2].copy_from_slice(&v.to_ne_bytes());
        }
        b
    }

    /// What the engine needs to know of it.
    #[inline]
    pub fn packet_flags(&self) -> PacketFlags {
        PacketFlags {
            csum_partial: self.flags & NEEDS_CSUM != 0,
        }
    }
}

/// Largest packet a slot holds: a whole 64 KB GSO super-packet.
pub const MAX_PACKET: usize = 65_536;

/// Packets with their offload metadata, in caller-owned buffers reused from batch to batch.
/// Slots `..len` hold packets; the rest are free room.
#[derive(Debug)]
pub struct Batch {
    pub pkts: Vec<PacketBuf>,
    pub offload: Vec<Offload>,
    pub len: usize,
}

impl Batch {
    /// `slots` buffers of `packet` bytes each.
    pub fn new(slots: usize, packet: usize) -> Batch {
        Batch {
            pkts: (0..slots)
                .map(|_| PacketBuf::with_capacity(packet))
                .collect(),
            offload: vec![Offload::default(); slots],
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.pkts.len()
    }

    pub fn is_full(&self) -> bool {
        self.len >= self.pkts.len()
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Copies a packet into the next free slot; false when the batch is full or the packet
    /// is larger than a slot.
    pub fn push(&mut self, bytes: &[u8], offload: Offload) -> bool {
        if self.is_full() || bytes.len() > self.pkts[self.len].data.len() {
            return false;
        }
        let p = &mut self.pkts[self.len];
        p.data[..bytes.len()].copy_from_slice(bytes);
        p.len = bytes.len();
        p.flags = offload.packet_flags();
        self.offload[self.len] = offload;
        self.len += 1;
        true
    }

    /// The packet in slot `i`.
    pub fn packet(&self, i: usize) -> &[u8] {
        self.pkts[i].packet()
    }
}

/// What one [`Device::recv`] produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// Packets appended to the batch.
    pub packets: usize,
    /// Reads that carried no usable packet (shorter than the device's framing): discarded.
    pub discarded: usize,
}

/// A lab interface as a gateway worker drives it.
///
/// One worker receives from a device; any worker may send to it (a packet arriving anywhere
/// can be meant for any interface), so both take `&self`.
pub trait Device: Send + Sync {
    /// Appends what is waiting to `batch`, up to its free room, without blocking. No packet
    /// waiting is `Ok` with zero packets.
    fn recv(&self, batch: &mut Batch) -> io::Result<Received>;

    /// Sends the packets of `batch` at positions `which`, in order, each with its offload
    /// metadata; returns how many the device took. The others were refused (queue full, the
    /// device going away): the caller counts them, nothing blocks.
    fn send(&self, batch: &Batch, which: &[u16]) -> usize;

    /// A descriptor that is readable (level-triggered) while `recv` has something to give.
    fn ready_fd(&self) -> RawFd;
}

impl<D: Device + ?Sized> Device for Box<D> {
    fn recv(&self, batch: &mut Batch) -> io::Result<Received> {
        (**self).recv(batch)
    }
    fn send(&self, batch: &Batch, which: &[u16]) -> usize {
        (**self).send(batch, which)
    }
    fn ready_fd(&self) -> RawFd {
        (**self).ready_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offload_header_round_trips_and_says_needs_checksum() {
        let o = Offload {
            flags: NEEDS_CSUM,
            gso_type: 1,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        assert_eq!(Offload::decode(&o.encode()), o);
        assert!(o.packet_flags().csum_partial);
        assert!(!Offload::default().packet_flags().csum_partial);
    }

    #[test]
    fn a_batch_takes_packets_until_full_and_refuses_oversized_ones() {
        let mut b = Batch::new(2, 8);
        assert!(!b.push(&[0; 9], Offload::default()), "larger than a slot");
        assert!(b.push(&[1, 2, 3], Offload::default()));
        assert!(b.push(&[4], Offload::default()));
        assert!(b.is_full());
        assert!(!b.push(&[5], Offload::default()));
        assert_eq!(b.packet(0), &[1, 2, 3]);
        assert_eq!(b.packet(1), &[4]);
        b.clear();
        assert_eq!(b.len, 0);
    }
}
