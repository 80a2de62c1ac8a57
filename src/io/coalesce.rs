//! UDP coalescing on the way into a namespace: receive offload done by the gateway.
//!
//! A burst of datagrams of one flow (iperf3, RTP, a DNS flood), each written on its own, costs
//! the receiving namespace one `write`, one buffer and one pass through its IP layer per
//! datagram. A NIC with UDP receive offload hands the stack such a burst as one segmented
//! super-packet instead, and so does this: consecutive datagrams of one flow in one send batch
//! become one UDP GSO packet (`VIRTIO_NET_HDR_GSO_UDP_L4`), which the kernel splits back into
//! the same datagrams in front of the receiving socket (or on the way out, if the namespace
//! forwards it). What a socket receives is unchanged; a capture inside the namespace shows the
//! super-packet, as it would behind a NIC doing UDP GRO. The gateway's own pcap taps record
//! the datagrams as they were.
//!
//! Only datagrams the split gives back exactly are merged: IPv4 without options, not a
//! fragment, a valid non-zero UDP checksum and a valid header checksum (a broken packet is
//! delivered broken, on its own), the same addresses, ports, TOS, TTL and flags, consecutive
//! IP IDs (the split numbers segments from the first one's ID), equal payload sizes with at
//! most a shorter last one, at most [`MAX_SEGMENTS`] datagrams and 64 KB in all. A datagram
//! whose checksum was left to the device (checksum offload) is merged too: the split computes
//! it. Packets with other offload metadata (a TCP super-packet) pass through alone, in their
//! place.

use super::device::{Batch, Offload, NEEDS_CSUM};
use crate::wire::checksum;
use crate::wire::ipv4::{protocol, Ipv4Packet};
use crate::wire::udp::UdpPacket;

/// `VIRTIO_NET_HDR_GSO_UDP_L4` (linux/virtio_net.h).
pub const GSO_UDP_L4: u8 = 5;
/// Segments in one super-packet (the kernel accepts up to 128).
pub const MAX_SEGMENTS: usize = 64;
/// Flows coalesced at once within one batch; more flows are sent as they are.
const MAX_FLOWS: usize = 8;
const IP_HDR: usize = 20;
const UDP_HDR: usize = 8;
const HDRS: usize = IP_HDR + UDP_HDR;

/// What to write, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// A packet of the batch as it is.
    One(u16),
    /// The super-packet of group `k` ([`Coalescer::group`]).
    Merged(usize),
}

/// What makes datagrams one flow, and the fields that must match for a merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    addrs: [u8; 8],
    ports: [u8; 4],
    tos: u8,
    ttl: u8,
    flags: u8,
}

#[derive(Debug)]
struct Group {
    key: Key,
    /// Payload size of every member but possibly the last.
    seg: usize,
    next_id: u16,
    payload: usize,
    /// A shorter datagram ended it.
    closed: bool,
    members: Vec<u16>,
}

/// Plans one batch's writes, reusing its buffers from batch to batch.
#[derive(Debug, Default)]
pub struct Coalescer {
    groups: Vec<Group>,
    /// Groups still taking members: indexes into `groups`.
    open: Vec<usize>,
    plan: Vec<Write>,
    buf: Vec<u8>,
}

/// The flow key, IP ID and payload size of a datagram that may be merged, or `None`. A
/// datagram whose sender left the checksum to the device (`NEEDS_CSUM` at the UDP checksum,
/// as a namespace's stack does on a TUN device with checksum offload) has none to verify; the
/// split completes it as it would have been.
fn candidate(p: &[u8], off: &Offload) -> Option<(Key, u16, usize)> {
    let partial = if *off == Offload::default() {
        false
    } else if off.flags == NEEDS_CSUM
        && off.gso_type == 0
        && off.csum_start as usize == IP_HDR
        && off.csum_offset == 6
    {
        true
    } else {
        return None;
    };
    let ip = Ipv4Packet::new_checked(p).ok()?;
    if ip.header_len() != IP_HDR
        || ip.protocol() != protocol::UDP
        || ip.total_len() != p.len()
        || ip.is_fragment()
        || !ip.verify_checksum()
    {
        return None;
    }
    let seg = ip.payload();
    let udp = UdpPacket::new_checked(seg).ok()?;
    if udp.len_field() != seg.len() || udp.payload().is_empty() {
        return None;
    }
    if !partial {
        let acc = checksum::pseudo_header(ip.src(), ip.dst(), protocol::UDP, seg.len() as u32);
        if udp.checksum() == 0 || checksum::fold(checksum::sum(acc, seg)) != 0xffff {
            return None;
        }
    }
    let mut addrs = [0; 8];
    addrs.copy_from_slice(&p[12..20]);
    let key = Key {
        addrs,
        ports: [p[20], p[21], p[22], p[23]],
        tos: ip.dscp_ecn(),
        ttl: ip.ttl(),
        // DF and the reserved bit (MF and the offset are zero: not a fragment).
        flags: p[6] & 0xe0,
    };
    Some((key, ip.ident(), udp.payload().len()))
}

impl Coalescer {
    pub fn new() -> Coalescer {
        Coalescer::default()
    }

    /// Decides the writes for the packets of `batch` at positions `which`: every packet
    /// appears exactly once, either alone or in a group, and the packets of one flow keep
    /// their order.
    pub fn plan(&mut self, batch: &Batch, which: &[u16]) -> &[Write] {
        for g in &mut self.groups {
            g.members.clear();
        }
        let mut used = 0;
        self.open.clear();
        self.plan.clear();
        for &i in which {
            let idx = i as usize;
            let Some((key, id, size)) = candidate(batch.packet(idx), &batch.offload[idx]) else {
                self.plan.push(Write::One(i));
                continue;
            };
            let pos = self.open.iter().position(|&k| self.groups[k].key == key);
            if let Some(o) = pos {
                let g = &mut self.groups[self.open[o]];
                if !g.closed
                    && id == g.next_id
                    && size <= g.seg
                    && g.members.len() < MAX_SEGMENTS
                    && HDRS + g.payload + size <= u16::MAX as usize
                {
                    g.members.push(i);
                    g.payload += size;
                    g.next_id = id.wrapping_add(1);
                    g.closed = size < g.seg;
                    continue;
                }
                // The flow goes on in a new group, after this one.
                self.open.swap_remove(o);
            }
            if self.open.len() >= MAX_FLOWS {
                self.plan.push(Write::One(i));
                continue;
            }
            if used == self.groups.len() {
                self.groups.push(Group {
                    key,
                    seg: 0,
                    next_id: 0,
                    payload: 0,
                    closed: false,
                    members: Vec::with_capacity(MAX_SEGMENTS),
                });
            }
            let g = &mut self.groups[used];
            g.key = key;
            g.seg = size;
            g.next_id = id.wrapping_add(1);
            g.payload = size;
            g.closed = false;
            g.members.push(i);
            self.open.push(used);
            self.plan.push(Write::Merged(used));
            used += 1;
        }
        // A group of one is that packet alone.
        for w in &mut self.plan {
            if let Write::Merged(k) = *w {
                if self.groups[k].members.len() == 1 {
                    *w = Write::One(self.groups[k].members[0]);
                }
            }
        }
        &self.plan
    }

    /// The last plan.
    pub fn writes(&self) -> &[Write] {
        &self.plan
    }

    /// The members of group `k` of the last plan, in order.
    pub fn group(&self, k: usize) -> &[u16] {
        &self.groups[k].members
    }

    /// Builds group `k`'s super-packet: the virtio header, then one IPv4/UDP header (the
    /// first member's, lengths and header checksum for the whole, the UDP checksum field
    /// holding the pseudo-header sum the split completes), then every member's payload.
    pub fn build(&mut self, batch: &Batch, k: usize) -> &[u8] {
        let g = &self.groups[k];
        let first = batch.packet(g.members[0] as usize);
        let total = HDRS + g.payload;
        let b = &mut self.buf;
        b.clear();
        let off = Offload {
            flags: NEEDS_CSUM,
            gso_type: GSO_UDP_L4,
            hdr_len: HDRS as u16,
            gso_size: g.seg as u16,
            csum_start: IP_HDR as u16,
            csum_offset: 6,
        };
        b.extend_from_slice(&off.encode());
        b.extend_from_slice(&first[..HDRS]);
        for &m in &g.members {
            b.extend_from_slice(&batch.packet(m as usize)[HDRS..]);
        }
        let h = Offload::LEN;
        b[h + 2..h + 4].copy_from_slice(&(total as u16).to_be_bytes());
        let udp_len = (total - IP_HDR) as u32;
        b[h + 24..h + 26].copy_from_slice(&(udp_len as u16).to_be_bytes());
        let mut ip = Ipv4Packet::new_unchecked(&mut b[h..]);
        ip.fill_checksum();
        let seed = checksum::pseudo_header(ip.src(), ip.dst(), protocol::UDP, udp_len);
        // The pseudo-header sum the split completes (the header is there: HDRS bytes copied).
        if let Ok(mut udp) = UdpPacket::new_checked(ip.payload_mut()) {
            udp.set_checksum(checksum::fold(seed));
        }
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4/UDP datagram with correct checksums, DF set and IP ID `id`, to 10.0.1.10:5001.
    fn udp(src: [u8; 4], sport: u16, id: u16, payload: &[u8]) -> Vec<u8> {
        let to = core::net::Ipv4Addr::new(10, 0, 1, 10);
        let mut p = crate::wire::build::udp(src.into(), sport, to, 5001, payload);
        p[4..6].copy_from_slice(&id.to_be_bytes());
        p[6] |= 0x40; // DF
        Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
        p
    }

    /// What the kernel's split gives back: one datagram per `gso_size` of payload, IDs
    /// counting up from the first, lengths and checksums completed.
    fn split(super_pkt: &[u8]) -> Vec<Vec<u8>> {
        let mut hdr = [0u8; Offload::LEN];
        hdr.copy_from_slice(&super_pkt[..Offload::LEN]);
        let off = Offload::decode(&hdr);
        assert_eq!(off.gso_type, GSO_UDP_L4);
        assert_eq!(off.flags, NEEDS_CSUM);
        assert_eq!((off.csum_start, off.csum_offset), (20, 6));
        let p = &super_pkt[Offload::LEN..];
        assert!(
            checksum::verify(&p[..20]),
            "the super-packet's IP header checksum"
        );
        assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, p.len());
        let src = u32::from_be_bytes([p[12], p[13], p[14], p[15]]);
        let dst = u32::from_be_bytes([p[16], p[17], p[18], p[19]]);
        let full_len = (p.len() - 20) as u32;
        assert_eq!(
            u16::from_be_bytes([p[26], p[27]]),
            checksum::fold(checksum::pseudo_header(src, dst, 17, full_len)),
            "the UDP checksum field holds the pseudo-header sum"
        );
        let id0 = u16::from_be_bytes([p[4], p[5]]);
        p[HDRS..]
            .chunks(off.gso_size as usize)
            .enumerate()
            .map(|(n, payload)| {
                let src4 = [p[12], p[13], p[14], p[15]];
                let sport = u16::from_be_bytes([p[20], p[21]]);
                let mut d = udp(src4, sport, id0.wrapping_add(n as u16), payload);
                // Fields the helper fixes: take them from the super-packet.
                d[1] = p[1];
                d[6] = p[6];
                d[8] = p[8];
                d[10..12].copy_from_slice(&[0, 0]);
                let c = checksum::checksum(&d[..20]);
                d[10..12].copy_from_slice(&c.to_be_bytes());
                d
            })
            .collect()
    }

    fn batch_of(pkts: &[Vec<u8>]) -> Batch {
        let mut b = Batch::new(pkts.len().max(1), 2048);
        for p in pkts {
            assert!(b.push(p, Offload::default()));
        }
        b
    }

    /// Every write of the plan, as the packets a receiver ends up with.
    fn delivered(c: &mut Coalescer, b: &Batch, which: &[u16]) -> (Vec<Vec<u8>>, usize) {
        let plan = c.plan(b, which).to_vec();
        let mut out = Vec::new();
        let mut merged = 0;
        for w in plan {
            match w {
                Write::One(i) => out.push(b.packet(i as usize).to_vec()),
                Write::Merged(k) => {
                    merged += 1;
                    out.extend(split(c.build(b, k)));
                }
            }
        }
        (out, merged)
    }

    #[test]
    fn a_burst_of_one_flow_becomes_one_super_packet_that_splits_back_exactly() {
        let pkts: Vec<_> = (0..10u16)
            .map(|n| udp([203, 0, 113, 1], 4000, 100 + n, &[n as u8; 64]))
            .collect();
        let b = batch_of(&pkts);
        let which: Vec<u16> = (0..10).collect();
        let mut c = Coalescer::new();
        let (out, merged) = delivered(&mut c, &b, &which);
        assert_eq!(merged, 1);
        assert_eq!(out, pkts);
    }

    #[test]
    fn a_shorter_last_datagram_ends_the_group_and_a_longer_one_starts_another() {
        let pkts = vec![
            udp([203, 0, 113, 1], 4000, 1, &[1; 100]),
            udp([203, 0, 113, 1], 4000, 2, &[2; 100]),
            udp([203, 0, 113, 1], 4000, 3, &[3; 40]),
            udp([203, 0, 113, 1], 4000, 4, &[4; 100]),
            udp([203, 0, 113, 1], 4000, 5, &[5; 200]),
            udp([203, 0, 113, 1], 4000, 6, &[6; 200]),
        ];
        let b = batch_of(&pkts);
        let which: Vec<u16> = (0..6).collect();
        let mut c = Coalescer::new();
        let plan = c.plan(&b, &which).to_vec();
        assert_eq!(plan.len(), 3, "{plan:?}");
        assert_eq!(c.group(0), &[0, 1, 2]);
        let (out, merged) = delivered(&mut c, &b, &which);
        assert_eq!(merged, 2, "[1 2 3] and [5 6]; 4 alone");
        assert_eq!(out, pkts);
    }

    #[test]
    fn interleaved_flows_are_merged_apart_and_keep_their_order() {
        let mut pkts = Vec::new();
        for n in 0..6u16 {
            pkts.push(udp([203, 0, 113, 1], 4000, n, &[n as u8; 64]));
            pkts.push(udp([203, 0, 113, 2], 4001, 50 + n, &[0x80 | n as u8; 64]));
        }
        let b = batch_of(&pkts);
        let which: Vec<u16> = (0..12).collect();
        let mut c = Coalescer::new();
        let (out, merged) = delivered(&mut c, &b, &which);
        assert_eq!(merged, 2);
        let of =
            |src: u8| -> Vec<Vec<u8>> { pkts.iter().filter(|p| p[15] == src).cloned().collect() };
        let got =
            |src: u8| -> Vec<Vec<u8>> { out.iter().filter(|p| p[15] == src).cloned().collect() };
        assert_eq!(got(1), of(1));
        assert_eq!(got(2), of(2));
        assert_eq!(out.len(), 12);
    }

    #[test]
    fn what_the_split_could_not_give_back_is_sent_alone() {
        let at = |id: u16| udp([203, 0, 113, 1], 4000, id, &[id as u8; 64]);
        type Spoil = (&'static str, fn(&mut Vec<u8>));
        let spoil: [Spoil; 4] = [
            ("UDP checksum wrong", |p| p[40] ^= 0xff),
            ("IP header checksum wrong", |p| p[10] ^= 1),
            (
                "no UDP checksum (even where the data happens to sum right)",
                |p| {
                    p[26..28].copy_from_slice(&[0, 0]);
                    let n = p.len();
                    p[n - 2..].copy_from_slice(&[0, 0]);
                    let acc = checksum::pseudo_header(
                        u32::from_be_bytes([p[12], p[13], p[14], p[15]]),
                        u32::from_be_bytes([p[16], p[17], p[18], p[19]]),
                        17,
                        (n - 20) as u32,
                    );
                    let w = !checksum::fold(checksum::sum(acc, &p[20..]));
                    p[n - 2..].copy_from_slice(&w.to_be_bytes());
                },
            ),
            ("IP ID not the next one", |p| {
                p[5] ^= 0x10;
                Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
            }),
        ];
        for (what, f) in spoil {
            // Between two good neighbours: merged with the first if it were taken.
            let mut mid = at(2);
            f(&mut mid);
            let b = batch_of(&[at(1), mid, at(3)]);
            let mut c = Coalescer::new();
            let plan = c.plan(&b, &[0, 1, 2]).to_vec();
            assert_eq!(plan, (0..3).map(Write::One).collect::<Vec<_>>(), "{what}");
        }
        // First fragments with consecutive IDs are still fragments.
        let first_fragment = |id: u16| {
            let mut p = at(id);
            p[6] |= 0x20; // MF
            Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
            p
        };
        let b = batch_of(&[first_fragment(1), first_fragment(2), first_fragment(3)]);
        let mut c = Coalescer::new();
        let plan = c.plan(&b, &[0, 1, 2]).to_vec();
        assert_eq!(
            plan,
            (0..3).map(Write::One).collect::<Vec<_>>(),
            "fragments"
        );
        // The same three unspoilt: one group.
        let b = batch_of(&[at(1), at(2), at(3)]);
        let mut c = Coalescer::new();
        assert_eq!(c.plan(&b, &[0, 1, 2]), &[Write::Merged(0)]);
    }

    #[test]
    fn datagrams_with_checksums_left_to_the_device_merge_and_are_completed_by_the_split() {
        let pkts: Vec<_> = (0..5u16)
            .map(|n| udp([203, 0, 113, 1], 4000, n, &[n as u8; 64]))
            .collect();
        let partial = Offload {
            flags: NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 6,
            ..Offload::default()
        };
        let mut b = Batch::new(5, 2048);
        for p in &pkts {
            // As the sender's stack leaves it: the pseudo-header sum in the checksum field.
            let mut q = p.clone();
            let s = u32::from_be_bytes([q[12], q[13], q[14], q[15]]);
            let d = u32::from_be_bytes([q[16], q[17], q[18], q[19]]);
            let seed = checksum::fold(checksum::pseudo_header(s, d, 17, (q.len() - 20) as u32));
            q[26..28].copy_from_slice(&seed.to_be_bytes());
            assert!(b.push(&q, partial));
        }
        let mut c = Coalescer::new();
        let (out, merged) = delivered(&mut c, &b, &[0, 1, 2, 3, 4]);
        assert_eq!(merged, 1);
        assert_eq!(out, pkts, "the split computes every checksum");
    }

    #[test]
    fn packets_with_other_offload_metadata_pass_alone_in_their_place() {
        let pkts: Vec<_> = (0..4u16)
            .map(|n| udp([203, 0, 113, 1], 4000, n, &[n as u8; 64]))
            .collect();
        let mut b = batch_of(&pkts);
        b.offload[2] = Offload {
            flags: NEEDS_CSUM,
            gso_type: GSO_UDP_L4,
            gso_size: 32,
            hdr_len: 28,
            csum_start: 20,
            csum_offset: 6,
        };
        let mut c = Coalescer::new();
        let plan = c.plan(&b, &[0, 1, 2, 3]).to_vec();
        assert_eq!(plan, vec![Write::Merged(0), Write::One(2), Write::One(3)]);
        assert_eq!(c.group(0), &[0, 1]);
    }

    #[test]
    fn groups_stop_at_the_segment_limit_and_only_the_chosen_positions_are_planned() {
        let pkts: Vec<_> = (0..(MAX_SEGMENTS as u16 + 3))
            .map(|n| udp([203, 0, 113, 1], 4000, n, &[7; 16]))
            .collect();
        let b = batch_of(&pkts);
        let which: Vec<u16> = (0..pkts.len() as u16)
            .filter(|i| i % 2 == 0 || *i > 10)
            .collect();
        let mut c = Coalescer::new();
        // Odd positions below 10 are left out, so IDs jump there: groups break at each gap.
        let (out, _) = delivered(&mut c, &b, &which);
        let want: Vec<_> = which.iter().map(|&i| pkts[i as usize].clone()).collect();
        assert_eq!(out, want);
        let mut c = Coalescer::new();
        let all: Vec<u16> = (0..pkts.len() as u16).collect();
        let plan = c.plan(&b, &all).to_vec();
        assert_eq!(plan.len(), 2);
        assert_eq!(c.group(0).len(), MAX_SEGMENTS);
    }
}
