//! The `engine` target's "patch" mode: a few fuzz bytes choose a mostly valid packet, built
//! with `eiplab::wire::build` from and to addresses the table knows, and the rest of the
//! bytes overwrite parts of it, become its payload, truncate it or pad it. Checksums are
//! fixed up afterwards unless the bytes say not to, so that the engine's deep paths (NAT,
//! ALG, fragments, ICMP quotes, replies) are reached far more often than by raw bytes.
//!
//! Layout of the bytes (missing bytes read as zero):
//!
//! | byte | meaning |
//! | --- | --- |
//! | 0 | kind, see [`Kind`] |
//! | 1, 2 | source and destination, indices into [`POOL`] |
//! | 3, 4 | source and destination port selectors, see [`port`] |
//! | 5 | bits 0-1 TTL (64, 1, 2, 0); bit 2 DF; bits 3-5 fragment choice (0-3 whole, 4 first, 5 second, 6 last, 7 piece by byte 6); bit 7 quote the whole packet in ICMP errors |
//! | 6 | bits 0-2 fragment payload size (8 × (1 + n)); bits 3-4 IP id (0x4240 + n); bits 5-7 piece |
//! | 7 | bit 0 no IP checksum fix-up; bit 1 no L4 checksum fix-up; bit 2 total length := bytes; bit 3 truncate; bit 4 link padding; bit 5 UDP checksum 0; bit 6 L4 checksum off by one |
//! | 8 | bits 0-2 number of patches; bits 3-7 bytes to truncate or pad |
//! | 9 | payload padding size: [`PADS`] by bits 0-2, 0xff for 65,000 bytes |
//! | 10.. | patches, 2 bytes each (position mod length, value), then the L4 payload |

use crate::fixture::{a, POOL};
use core::net::Ipv4Addr;
use eiplab::wire::{build, checksum};

pub const HEADER: usize = 10;

/// Largest L4 payload the generator makes: 64 KiB less the most header bytes any kind adds.
pub const MAX_PAYLOAD: usize = 65_535 - 80;

/// Interesting ports: the ALG protocols first.
pub const PORTS: [u16; 32] = [
    5060, 21, 53, 69, 554, 1720, 80, 443, 40000, 12345, 0, 65535, 5061, 20, 123, 8080, 1, 2, 9,
    33434, 40001, 40002, 40003, 4000, 5000, 7, 161, 1900, 3478, 8000, 49170, 500,
];

/// Port from a selector byte: the table above, or anything else.
pub fn port(sel: u8) -> u16 {
    if sel & 0x80 == 0 {
        PORTS[(sel & 0x1f) as usize]
    } else {
        1024 + (sel as u16 & 0x7f) * 499
    }
}

pub fn port_sel(p: u16) -> u8 {
    PORTS.iter().position(|x| *x == p).expect("port in PORTS") as u8
}

/// Bytes of filler appended to the payload, chosen by byte 9 (0xff: 65,000).
pub const PADS: [usize; 8] = [0, 0, 0, 16, 200, 1000, 1472, 8000];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Udp = 0,
    Tcp = 1,
    Ping = 2,
    EchoReply = 3,
    /// Port unreachable quoting a UDP datagram that went the other way.
    UnreachUdp = 4,
    /// Time exceeded quoting a TCP segment that went the other way.
    TimeExceededTcp = 5,
    /// Fragmentation needed quoting an echo request that went the other way.
    FragNeededPing = 6,
    /// Host unreachable quoting a UDP datagram between the addresses the port selectors pick.
    UnreachOther = 7,
    /// GRE (IP protocol 47).
    Gre = 8,
    /// UDP with 4 bytes of IP options.
    UdpOptions = 9,
    /// TCP with 12 bytes of TCP options.
    TcpOptions = 10,
    /// ICMP timestamp request.
    Timestamp = 11,
    /// ICMP error quoting a header with options and too little of the rest.
    ShortQuote = 12,
    /// An IPv6 header and UDP.
    Ipv6 = 13,
}

pub const KINDS: usize = 14;

impl Kind {
    fn from(b: u8) -> Kind {
        use Kind::*;
        [
            Udp,
            Tcp,
            Ping,
            EchoReply,
            UnreachUdp,
            TimeExceededTcp,
            FragNeededPing,
            UnreachOther,
            Gre,
            UdpOptions,
            TcpOptions,
            Timestamp,
            ShortQuote,
            Ipv6,
        ][b as usize % KINDS]
    }
}

/// The decoded choice, also used to write seeds.
#[derive(Clone, Debug, Default)]
pub struct Gen {
    pub kind: u8,
    pub src: u8,
    pub dst: u8,
    pub sport: u8,
    pub dport: u8,
    pub ipf: u8,
    pub frag: u8,
    pub fix: u8,
    pub patch: u8,
    pub pad: u8,
    pub patches: Vec<(u8, u8)>,
    pub payload: Vec<u8>,
}

pub mod ipf {
    pub const TTL64: u8 = 0;
    pub const TTL1: u8 = 1;
    pub const TTL2: u8 = 2;
    pub const TTL0: u8 = 3;
    pub const DF: u8 = 0x04;
    pub const FIRST: u8 = 4 << 3;
    pub const SECOND: u8 = 5 << 3;
    pub const LAST: u8 = 6 << 3;
    pub const PIECE: u8 = 7 << 3;
    pub const FULL_QUOTE: u8 = 0x80;
}

pub mod fix {
    pub const NO_IP_CSUM: u8 = 0x01;
    pub const NO_L4_CSUM: u8 = 0x02;
    pub const TOTAL_LEN: u8 = 0x04;
    pub const TRUNCATE: u8 = 0x08;
    pub const LINK_PAD: u8 = 0x10;
    pub const UDP_CSUM_ZERO: u8 = 0x20;
    pub const L4_CSUM_WRONG: u8 = 0x40;
}

impl Gen {
    pub fn new(kind: Kind, src: [u8; 4], dst: [u8; 4]) -> Gen {
        Gen {
            kind: kind as u8,
            src: crate::fixture::pool_index(src),
            dst: crate::fixture::pool_index(dst),
            ..Gen::default()
        }
    }

    pub fn ports(mut self, sport: u16, dport: u16) -> Gen {
        self.sport = port_sel(sport);
        self.dport = port_sel(dport);
        self
    }

    pub fn payload(mut self, p: &[u8]) -> Gen {
        self.payload = p.to_vec();
        self
    }

    pub fn decode(g: &[u8]) -> Gen {
        let b = |i: usize| g.get(i).copied().unwrap_or(0);
        let n = (b(8) & 7) as usize;
        let body = g.get(HEADER..).unwrap_or(&[]);
        let np = n.min(body.len() / 2);
        Gen {
            kind: b(0),
            src: b(1),
            dst: b(2),
            sport: b(3),
            dport: b(4),
            ipf: b(5),
            frag: b(6),
            fix: b(7),
            patch: b(8),
            pad: b(9),
            patches: body[..2 * np].chunks(2).map(|c| (c[0], c[1])).collect(),
            payload: body[2 * np..].to_vec(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![
            self.kind,
            self.src,
            self.dst,
            self.sport,
            self.dport,
            self.ipf,
            self.frag,
            self.fix,
            (self.patch & !7) | self.patches.len() as u8,
            self.pad,
        ];
        assert!(self.patches.len() < 8);
        for (p, x) in &self.patches {
            v.push(*p);
            v.push(*x);
        }
        v.extend_from_slice(&self.payload);
        v
    }

    /// Builds the packet these bytes stand for. `partial`: TCP and UDP checksum fields get
    /// the un-complemented pseudo-header sum, as a sender offloading its checksum leaves it.
    pub fn packet(&self, partial: bool) -> Vec<u8> {
        let src = a(POOL[self.src as usize % POOL.len()]);
        let dst = a(POOL[self.dst as usize % POOL.len()]);
        let (sp, dp) = (port(self.sport), port(self.dport));
        let mut payload = self.payload.clone();
        let pad = if self.pad == 0xff {
            65_000
        } else {
            PADS[(self.pad & 7) as usize]
        };
        payload.resize(payload.len() + pad, b'a');
        // Room for the largest set of headers around it (an ICMP error quoting the whole
        // packet with IP options), so that no length field overflows.
        payload.truncate(MAX_PAYLOAD);
        let full_quote = self.ipf & ipf::FULL_QUOTE != 0;
        let quote = |inner: Vec<u8>, full: bool| -> Vec<u8> {
            if full {
                inner
            } else {
                inner[..inner.len().min(28)].to_vec()
            }
        };
        let kind = Kind::from(self.kind);
        let mut p = match kind {
            Kind::Udp => build::udp(src, sp, dst, dp, &payload),
            Kind::Tcp => {
                let flags = if self.sport & 0x40 != 0 { 0x02 } else { 0x18 };
                build::tcp(src, sp, dst, dp, flags, &payload)
            }
            Kind::Ping => build::ping(src, dst, sp, dp, &payload),
            Kind::EchoReply => build::icmp(src, dst, 0, 0, (sp as u32) << 16 | dp as u32, &payload),
            Kind::UnreachUdp => {
                let inner = build::udp(dst, dp, src, sp, &payload);
                build::icmp(src, dst, 3, 3, 0, &quote(inner, full_quote))
            }
            Kind::TimeExceededTcp => {
                let inner = build::tcp(dst, dp, src, sp, 0x18, &payload);
                build::icmp(src, dst, 11, 0, 0, &quote(inner, full_quote))
            }
            Kind::FragNeededPing => {
                let inner = build::ping(dst, src, sp, dp, &payload);
                build::icmp(src, dst, 3, 4, 1400, &quote(inner, full_quote))
            }
            Kind::UnreachOther => {
                let qs = a(POOL[self.sport as usize % POOL.len()]);
                let qd = a(POOL[self.dport as usize % POOL.len()]);
                let inner = build::udp(qs, 5060, qd, 5060, &payload);
                build::icmp(src, dst, 3, 1, 0, &quote(inner, full_quote))
            }
            Kind::Gre => {
                let mut gre = vec![0, 0, 0x08, 0x00];
                gre.extend_from_slice(&payload);
                build::ipv4(src, dst, 47, &gre)
            }
            Kind::UdpOptions => with_ip_options(&build::udp(src, sp, dst, dp, &payload)),
            Kind::TcpOptions => {
                // MSS, SACK permitted, window scale, NOP: 12 bytes.
                let mut seg = vec![2, 4, 0x05, 0xb4, 4, 2, 3, 3, 7, 1, 1, 1];
                seg.extend_from_slice(&payload);
                let mut p = build::tcp(src, sp, dst, dp, 0x18, &seg);
                p[20 + 12] = 8 << 4;
                p
            }
            Kind::Timestamp => {
                build::icmp(src, dst, 13, 0, (sp as u32) << 16 | dp as u32, &[0; 12])
            }
            Kind::ShortQuote => {
                let inner = with_ip_options(&build::udp(dst, dp, src, sp, &payload));
                let n = if full_quote {
                    inner.len()
                } else {
                    24 + (self.frag as usize & 7)
                };
                build::icmp(src, dst, 3, 3, 0, &inner[..n.min(inner.len())])
            }
            Kind::Ipv6 => ipv6_udp(&payload),
        };
        let is_v4 = kind != Kind::Ipv6;

        if is_v4 {
            // Header fields: TTL, DF, identification.
            p[8] = [64, 1, 2, 0][(self.ipf & 3) as usize];
            if self.ipf & ipf::DF != 0 {
                p[6] |= 0x40;
            }
            let ident = 0x4240u16 + ((self.frag >> 3) & 3) as u16;
            p[4..6].copy_from_slice(&ident.to_be_bytes());
            fill_ip_checksum(&mut p);
            if self.fix & fix::UDP_CSUM_ZERO != 0 && p[9] == 17 {
                let hl = ((p[0] & 0x0f) as usize) * 4;
                p[hl + 6] = 0;
                p[hl + 7] = 0;
            }
            if partial {
                fill_l4_checksum(&mut p, true);
            }
        }

        // Fragments of the datagram (only the first carries the L4 header).
        let frag_sel = (self.ipf >> 3) & 7;
        let fragmented = is_v4 && frag_sel >= 4;
        if fragmented {
            let step = 8 * (1 + (self.frag & 7) as usize);
            let which = match frag_sel {
                4 => Piece::Index(0),
                5 => Piece::Index(1),
                6 => Piece::Last,
                _ => Piece::Index((self.frag >> 5) as usize),
            };
            p = one_fragment(&p, step, which);
        }

        for &(pos, val) in &self.patches {
            let n = p.len();
            if n > 0 {
                p[pos as usize % n] = val;
            }
        }

        if is_v4 && !fragmented && self.fix & fix::NO_L4_CSUM == 0 {
            fill_l4_checksum(&mut p, partial);
        }

        let amount = (self.patch >> 3) as usize;
        if self.fix & fix::TRUNCATE != 0 {
            let n = p.len().saturating_sub(amount);
            p.truncate(n);
        }
        if self.fix & fix::TOTAL_LEN != 0 && p.len() >= 4 && p.len() <= 0xffff {
            let n = p.len() as u16;
            p[2..4].copy_from_slice(&n.to_be_bytes());
        }
        if self.fix & fix::LINK_PAD != 0 {
            p.extend(std::iter::repeat_n(0xee, amount));
        }
        if is_v4 && self.fix & fix::NO_IP_CSUM == 0 {
            fill_ip_checksum(&mut p);
        }
        if self.fix & fix::L4_CSUM_WRONG != 0 {
            if let Some(at) = l4_checksum_at(&p) {
                p[at + 1] ^= 1;
            }
        }
        p
    }
}

enum Piece {
    /// The n-th piece (mod the number of pieces).
    Index(usize),
    Last,
}

/// One of the pieces `build::fragment(pkt, step)` would cut `pkt` into (`step` a multiple of
/// 8), without making all of them: tiny steps over 64 KiB datagrams made thousands.
fn one_fragment(pkt: &[u8], step: usize, which: Piece) -> Vec<u8> {
    let hl = ((pkt[0] & 0x0f) as usize) * 4;
    let total = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
    let data = &pkt[hl..total];
    let n = data.len().div_ceil(step).max(1);
    let i = match which {
        Piece::Index(i) => i % n,
        Piece::Last => n - 1,
    };
    let off = (i * step).min(data.len());
    let end = (off + step).min(data.len());
    let mut f = Vec::with_capacity(hl + end - off);
    f.extend_from_slice(&pkt[..hl]);
    f.extend_from_slice(&data[off..end]);
    let more = if end < data.len() { 0x2000 } else { 0 };
    f[2..4].copy_from_slice(&((hl + end - off) as u16).to_be_bytes());
    f[6..8].copy_from_slice(&(more | (off / 8) as u16).to_be_bytes());
    fill_ip_checksum(&mut f);
    f
}

/// Inserts 4 bytes of IP options (NOP NOP NOP EOL) after the fixed header.
fn with_ip_options(p: &[u8]) -> Vec<u8> {
    let mut q = Vec::with_capacity(p.len() + 4);
    q.extend_from_slice(&p[..20]);
    q.extend_from_slice(&[1, 1, 1, 0]);
    q.extend_from_slice(&p[20..]);
    q[0] = 0x46;
    let n = q.len() as u16;
    q[2..4].copy_from_slice(&n.to_be_bytes());
    fill_ip_checksum(&mut q);
    q
}

fn ipv6_udp(payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    let n = (8 + payload.len()) as u16;
    p.extend_from_slice(&n.to_be_bytes());
    p.push(17);
    p.push(64);
    p.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    p.extend_from_slice(&[0x13, 0x88, 0x13, 0xc4]);
    p.extend_from_slice(&n.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// Header checksum over the header the IHL says, if the bytes hold it.
pub fn fill_ip_checksum(p: &mut [u8]) {
    if p.len() < 20 {
        return;
    }
    let hl = ((p[0] & 0x0f) as usize) * 4;
    if hl < 20 || hl > p.len() {
        return;
    }
    p[10] = 0;
    p[11] = 0;
    let c = checksum::checksum(&p[..hl]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Where the transport checksum field is, if the bytes hold it.
pub fn l4_checksum_at(p: &[u8]) -> Option<usize> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let hl = ((p[0] & 0x0f) as usize) * 4;
    let at = hl
        + match p[9] {
            6 => 16,
            17 => 6,
            1 => 2,
            _ => return None,
        };
    (hl >= 20 && at + 2 <= p.len()).then_some(at)
}

/// The transport segment of a whole packet: `hl..min(total, len)`.
pub fn segment(p: &[u8]) -> Option<(usize, usize)> {
    if p.len() < 20 {
        return None;
    }
    let hl = ((p[0] & 0x0f) as usize) * 4;
    let total = (u16::from_be_bytes([p[2], p[3]]) as usize).min(p.len());
    (hl >= 20 && hl <= total).then_some((hl, total))
}

/// Recomputes the TCP, UDP or ICMP checksum of a whole packet over `hl..total`. With
/// `partial`, TCP and UDP get the folded pseudo-header sum instead (not complemented). A UDP
/// checksum of zero ("none") is left alone.
pub fn fill_l4_checksum(p: &mut [u8], partial: bool) {
    let Some(at) = l4_checksum_at(p) else { return };
    let Some((hl, total)) = segment(p) else {
        return;
    };
    if at + 2 > total {
        return;
    }
    let proto = p[9];
    if proto == 17 && p[at] == 0 && p[at + 1] == 0 {
        return;
    }
    p[at] = 0;
    p[at + 1] = 0;
    let c = if proto == 1 {
        checksum::checksum(&p[hl..total])
    } else {
        let src = u32::from_be_bytes([p[12], p[13], p[14], p[15]]);
        let dst = u32::from_be_bytes([p[16], p[17], p[18], p[19]]);
        let ph = checksum::pseudo_header(src, dst, proto, (total - hl) as u32);
        if partial {
            checksum::fold(ph)
        } else {
            match !checksum::fold(checksum::sum(ph, &p[hl..total])) {
                0 if proto == 17 => 0xffff,
                c => c,
            }
        }
    };
    p[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// An address from the pool, for callers that want one.
pub fn pool_addr(i: u8) -> Ipv4Addr {
    a(POOL[i as usize % POOL.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_fragment_is_the_piece_build_fragment_makes() {
        let (s, d) = (a([203, 0, 113, 7]), a([198, 51, 100, 10]));
        for n in [1usize, 7, 8, 9, 63, 64, 65, 300, 1000] {
            let p = build::udp(s, 1, d, 2, &vec![0x5a; n]);
            for step in (8..=64).step_by(8) {
                let all = build::fragment(&p, step);
                for i in 0..all.len() + 3 {
                    assert_eq!(one_fragment(&p, step, Piece::Index(i)), all[i % all.len()]);
                }
                assert_eq!(&one_fragment(&p, step, Piece::Last), all.last().unwrap());
            }
        }
    }

    #[test]
    fn generated_packets_are_valid_unless_told_otherwise() {
        for kind in 0..KINDS as u8 {
            if kind == Kind::Ipv6 as u8 {
                continue;
            }
            for partial in [false, true] {
                let g = Gen {
                    kind,
                    src: 0,
                    dst: 2,
                    payload: b"payload".to_vec(),
                    ..Gen::default()
                };
                let p = g.packet(partial);
                let ip = eiplab::wire::Ipv4Packet::new_checked(&p[..]).unwrap();
                assert!(ip.verify_checksum(), "kind {kind}");
                if !partial || ip.protocol() == 1 {
                    let (hl, total) = segment(&p).unwrap();
                    let seg = &p[hl..total];
                    let ok = match ip.protocol() {
                        1 => checksum::verify(seg),
                        6 | 17 => {
                            let ph = checksum::pseudo_header(
                                ip.src(),
                                ip.dst(),
                                ip.protocol(),
                                seg.len() as u32,
                            );
                            checksum::fold(checksum::sum(ph, seg)) == 0xffff
                        }
                        _ => true,
                    };
                    assert!(ok, "kind {kind} partial {partial}: L4 checksum");
                }
            }
        }
    }
}
