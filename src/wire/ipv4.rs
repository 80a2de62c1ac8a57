//! IPv4 header view (RFC 791).

use super::checksum;
use super::Error;
use core::net::Ipv4Addr;

mod field {
    use core::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const TOTAL_LEN: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLAGS_FRAG: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

/// Length of an IPv4 header without options.
pub const MIN_HEADER_LEN: usize = 20;

pub mod protocol {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// A view over the bytes of an IPv4 packet. After [`Ipv4Packet::new_checked`] succeeds every
/// accessor is in bounds: the header length and the total length have been checked against
/// the buffer. The buffer may be longer than the packet (link padding); [`Ipv4Packet::payload`]
/// stops at the total length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Packet<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps without checking: accessors may panic on a short buffer. Use for buffers the
    /// caller has already validated.
    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps and validates: version 4, header length at least 20 and within the buffer, total
    /// length at least the header length and within the buffer.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let b = buffer.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(if b.first().map(|v| v >> 4) == Some(6) {
                Error::Ipv6
            } else {
                Error::Truncated
            });
        }
        match b[field::VER_IHL] >> 4 {
            4 => {}
            6 => return Err(Error::Ipv6),
            _ => return Err(Error::BadVersion),
        }
        let hl = ((b[field::VER_IHL] & 0x0f) as usize) * 4;
        if hl < MIN_HEADER_LEN {
            return Err(Error::BadHeaderLen);
        }
        let total = u16::from_be_bytes([b[2], b[3]]) as usize;
        if total < hl {
            return Err(Error::BadTotalLen);
        }
        if total > b.len() {
            return Err(Error::Truncated);
        }
        Ok(Ipv4Packet { buffer })
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.b()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL × 4).
    #[inline]
    pub fn header_len(&self) -> usize {
        ((self.b()[field::VER_IHL] & 0x0f) as usize) * 4
    }

    #[inline]
    pub fn dscp_ecn(&self) -> u8 {
        self.b()[field::DSCP_ECN]
    }

    #[inline]
    pub fn total_len(&self) -> usize {
        let b = self.b();
        u16::from_be_bytes([b[field::TOTAL_LEN.start], b[field::TOTAL_LEN.start + 1]]) as usize
    }

    #[inline]
    pub fn ident(&self) -> u16 {
        let b = self.b();
        u16::from_be_bytes([b[field::IDENT.start], b[field::IDENT.start + 1]])
    }

    #[inline]
    fn flags_frag(&self) -> u16 {
        let b = self.b();
        u16::from_be_bytes([b[field::FLAGS_FRAG.start], b[field::FLAGS_FRAG.start + 1]])
    }

    #[inline]
    pub fn dont_frag(&self) -> bool {
        self.flags_frag() & 0x4000 != 0
    }

    #[inline]
    pub fn more_frags(&self) -> bool {
        self.flags_frag() & 0x2000 != 0
    }

    /// Fragment offset in bytes.
    #[inline]
    pub fn frag_offset(&self) -> usize {
        ((self.flags_frag() & 0x1fff) as usize) * 8
    }

    /// Whether this is a fragment of a larger datagram (first, middle or last).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.flags_frag() & 0x3fff != 0
    }

    #[inline]
    pub fn ttl(&self) -> u8 {
        self.b()[field::TTL]
    }

    #[inline]
    pub fn protocol(&self) -> u8 {
        self.b()[field::PROTOCOL]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        let b = self.b();
        u16::from_be_bytes([b[field::CHECKSUM.start], b[field::CHECKSUM.start + 1]])
    }

    /// Source address as a host-order integer.
    #[inline]
    pub fn src(&self) -> u32 {
        let b = self.b();
        u32::from_be_bytes([b[12], b[13], b[14], b[15]])
    }

    /// Destination address as a host-order integer.
    #[inline]
    pub fn dst(&self) -> u32 {
        let b = self.b();
        u32::from_be_bytes([b[16], b[17], b[18], b[19]])
    }

    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.src())
    }

    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.dst())
    }

    /// The header, options included.
    #[inline]
    pub fn header(&self) -> &[u8] {
        &self.b()[..self.header_len()]
    }

    /// Bytes after the header, up to the total length.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let (h, t) = (self.header_len(), self.total_len());
        &self.b()[h..t]
    }

    /// Whether the header checksum is right.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        match <&[u8; 20]>::try_from(self.header()) {
            Ok(h) => checksum::fold(checksum::sum20(h)) == 0xffff,
            Err(_) => checksum::verify(self.header()),
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    #[inline]
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    #[inline]
    pub fn set_src(&mut self, a: u32) {
        self.bm()[field::SRC].copy_from_slice(&a.to_be_bytes());
    }

    #[inline]
    pub fn set_dst(&mut self, a: u32) {
        self.bm()[field::DST].copy_from_slice(&a.to_be_bytes());
    }

    #[inline]
    pub fn set_ttl(&mut self, ttl: u8) {
        self.bm()[field::TTL] = ttl;
    }

    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        self.bm()[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }

    /// Recomputes the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::checksum(self.header());
        self.set_checksum(c);
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (h, t) = (self.header_len(), self.total_len());
        &mut self.bm()[h..t]
    }
}

/// The fields of a header without options, as values: for building packets (tests, ICMP
/// replies), never on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub ttl: u8,
    pub ident: u16,
    pub dont_frag: bool,
    pub payload_len: usize,
}

impl Ipv4Repr {
    /// Writes a 20-byte header with a valid checksum into `buf[..20]`.
    pub fn emit(&self, buf: &mut [u8]) {
        let total = (MIN_HEADER_LEN + self.payload_len) as u16;
        buf[0] = 0x45;
        buf[1] = 0;
        buf[2..4].copy_from_slice(&total.to_be_bytes());
        buf[4..6].copy_from_slice(&self.ident.to_be_bytes());
        buf[6..8].copy_from_slice(&(if self.dont_frag { 0x4000u16 } else { 0 }).to_be_bytes());
        buf[8] = self.ttl;
        buf[9] = self.protocol;
        buf[10..12].copy_from_slice(&[0, 0]);
        buf[12..16].copy_from_slice(&self.src.octets());
        buf[16..20].copy_from_slice(&self.dst.octets());
        let c = checksum::checksum(&buf[..MIN_HEADER_LEN]);
        buf[10..12].copy_from_slice(&c.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut p = vec![0u8; 28];
        Ipv4Repr {
            src: Ipv4Addr::new(203, 0, 113, 7),
            dst: Ipv4Addr::new(198, 51, 100, 10),
            protocol: protocol::UDP,
            ttl: 64,
            ident: 0x1234,
            dont_frag: true,
            payload_len: 8,
        }
        .emit(&mut p);
        p
    }

    #[test]
    fn parses_what_repr_emits() {
        let p = sample();
        let v = Ipv4Packet::new_checked(&p[..]).unwrap();
        assert_eq!(v.version(), 4);
        assert_eq!(v.header_len(), 20);
        assert_eq!(v.total_len(), 28);
        assert_eq!(v.ident(), 0x1234);
        assert!(v.dont_frag() && !v.more_frags() && !v.is_fragment());
        assert_eq!(v.ttl(), 64);
        assert_eq!(v.protocol(), 17);
        assert_eq!(v.src_addr(), Ipv4Addr::new(203, 0, 113, 7));
        assert_eq!(v.dst_addr(), Ipv4Addr::new(198, 51, 100, 10));
        assert_eq!(v.payload().len(), 8);
        assert!(v.verify_checksum());
        // The independent oracle agrees.
        let (h, _) = etherparse::Ipv4Header::from_slice(&p).unwrap();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
    }

    #[test]
    fn rejects_malformed() {
        let p = sample();
        assert_eq!(
            Ipv4Packet::new_checked(&p[..19]).unwrap_err(),
            Error::Truncated
        );
        let mut q = p.clone();
        q[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&q[..]).unwrap_err(),
            Error::BadHeaderLen
        );
        q[0] = 0x4f; // 60-byte header, buffer has 28
        q[2..4].copy_from_slice(&28u16.to_be_bytes());
        assert_eq!(
            Ipv4Packet::new_checked(&q[..]).unwrap_err(),
            Error::BadTotalLen
        );
        let mut q = p.clone();
        q[0] = 0x65;
        assert_eq!(Ipv4Packet::new_checked(&q[..]).unwrap_err(), Error::Ipv6);
        q[0] = 0x25;
        assert_eq!(
            Ipv4Packet::new_checked(&q[..]).unwrap_err(),
            Error::BadVersion
        );
        let mut q = p.clone();
        q[2..4].copy_from_slice(&29u16.to_be_bytes());
        assert_eq!(
            Ipv4Packet::new_checked(&q[..]).unwrap_err(),
            Error::Truncated
        );
        q[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(
            Ipv4Packet::new_checked(&q[..]).unwrap_err(),
            Error::BadTotalLen
        );
    }

    #[test]
    fn padding_after_total_length_is_not_payload() {
        let mut p = sample();
        p.extend_from_slice(&[0xee; 6]);
        let v = Ipv4Packet::new_checked(&p[..]).unwrap();
        assert_eq!(v.payload().len(), 8);
    }

    #[test]
    fn fragment_fields() {
        let mut p = sample();
        p[6..8].copy_from_slice(&(0x2000u16 | 185).to_be_bytes());
        let v = Ipv4Packet::new_checked(&p[..]).unwrap();
        assert!(v.more_frags() && v.is_fragment());
        assert_eq!(v.frag_offset(), 1480);
    }

    #[test]
    fn setters_and_fill_checksum() {
        let mut p = sample();
        let mut v = Ipv4Packet::new_checked(&mut p[..]).unwrap();
        v.set_dst(u32::from(Ipv4Addr::new(10, 0, 1, 21)));
        v.set_ttl(63);
        assert!(!v.verify_checksum());
        v.fill_checksum();
        assert!(v.verify_checksum());
        assert_eq!(v.dst_addr(), Ipv4Addr::new(10, 0, 1, 21));
    }
}
