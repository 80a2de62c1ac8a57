//! ICMPv4 view (RFC 792) and the messages the gateway itself sends.

use super::checksum;
use super::ipv4::{self, Ipv4Repr};
use super::Error;
use core::net::Ipv4Addr;

pub const HEADER_LEN: usize = 8;

pub mod kind {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACHABLE: u8 = 3;
    pub const SOURCE_QUENCH: u8 = 4;
    pub const REDIRECT: u8 = 5;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETER_PROBLEM: u8 = 12;
    pub const TIMESTAMP: u8 = 13;
    pub const TIMESTAMP_REPLY: u8 = 14;
}

/// Whether an ICMP type is an error that quotes the packet that caused it.
#[inline]
pub fn is_error(t: u8) -> bool {
    matches!(
        t,
        kind::DEST_UNREACHABLE
            | kind::SOURCE_QUENCH
            | kind::REDIRECT
            | kind::TIME_EXCEEDED
            | kind::PARAMETER_PROBLEM
    )
}

#[derive(Debug, Clone, Copy)]
pub struct IcmpPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::TruncatedL4);
        }
        Ok(IcmpPacket { buffer })
    }

    #[inline]
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.b()[0]
    }

    #[inline]
    pub fn code(&self) -> u8 {
        self.b()[1]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes([self.b()[2], self.b()[3]])
    }

    /// Identifier of an echo or timestamp message.
    #[inline]
    pub fn ident(&self) -> u16 {
        u16::from_be_bytes([self.b()[4], self.b()[5]])
    }

    /// For errors: the quoted packet; for queries: their data.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.b()[HEADER_LEN..]
    }

    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::verify(self.b())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        self.buffer.as_mut()[2..4].copy_from_slice(&c.to_be_bytes());
    }

    #[inline]
    pub fn set_msg_type(&mut self, t: u8) {
        self.buffer.as_mut()[0] = t;
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }

    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::checksum(self.b());
        self.set_checksum(c);
    }
}

/// Most an ICMP error may be in all, quote included (RFC 1812 4.3.2.3).
pub const MAX_ERROR_LEN: usize = 576;

/// Turns the IPv4 packet in `buf[..len]` into an ICMP error about it, in place: the packet is
/// moved back 28 bytes and quoted (as much as fits in 576 bytes and in `buf`), a new IPv4 and
/// ICMP header are written in front. Returns the length of the error, or `None` when `buf`
/// cannot hold even the quoted header plus 8 bytes.
pub fn error_in_place(
    buf: &mut [u8],
    len: usize,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    msg_type: u8,
    code: u8,
    rest: u32,
) -> Option<usize> {
    let front = ipv4::MIN_HEADER_LEN + HEADER_LEN;
    let orig = ipv4::Ipv4Packet::new_checked(buf.get(..len)?).ok()?;
    let must = orig.header_len() + 8;
    let quote = len
        .min(MAX_ERROR_LEN - front)
        .min(buf.len().checked_sub(front)?);
    if quote < must.min(len) {
        return None;
    }
    buf.copy_within(..quote, front);
    Ipv4Repr {
        src,
        dst,
        protocol: ipv4::protocol::ICMP,
        ttl: 64,
        ident: 0,
        dont_frag: false,
        payload_len: HEADER_LEN + quote,
    }
    .emit(buf);
    let icmp = &mut buf[ipv4::MIN_HEADER_LEN..front + quote];
    icmp[0] = msg_type;
    icmp[1] = code;
    icmp[2..4].copy_from_slice(&[0, 0]);
    icmp[4..8].copy_from_slice(&rest.to_be_bytes());
    let c = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(front + quote)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_quotes_header_and_eight_bytes_at_least() {
        let mut buf = vec![0u8; 1500];
        let mut pkt = vec![0u8; 1000];
        Ipv4Repr {
            src: Ipv4Addr::new(10, 0, 1, 10),
            dst: Ipv4Addr::new(203, 0, 113, 1),
            protocol: 17,
            ttl: 1,
            ident: 7,
            dont_frag: false,
            payload_len: 980,
        }
        .emit(&mut pkt);
        buf[..1000].copy_from_slice(&pkt);
        let n = error_in_place(
            &mut buf,
            1000,
            Ipv4Addr::new(10, 0, 1, 253),
            Ipv4Addr::new(10, 0, 1, 10),
            kind::TIME_EXCEEDED,
            0,
            0,
        )
        .unwrap();
        assert_eq!(n, MAX_ERROR_LEN);
        let (h, rest) = etherparse::Ipv4Header::from_slice(&buf[..n]).unwrap();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        assert_eq!(h.total_len as usize, n);
        let icmp = IcmpPacket::new_checked(rest).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.msg_type(), kind::TIME_EXCEEDED);
        assert_eq!(&icmp.payload()[..28], &pkt[..28]);
    }

    #[test]
    fn error_needs_room() {
        let mut buf = vec![0u8; 40];
        Ipv4Repr {
            src: Ipv4Addr::new(10, 0, 1, 10),
            dst: Ipv4Addr::new(203, 0, 113, 1),
            protocol: 17,
            ttl: 1,
            ident: 7,
            dont_frag: false,
            payload_len: 8,
        }
        .emit(&mut buf);
        let a = Ipv4Addr::new(1, 1, 1, 1);
        assert_eq!(error_in_place(&mut buf, 28, a, a, 11, 0, 0), None);
        let mut big = vec![0u8; 56];
        big[..28].copy_from_slice(&buf[..28]);
        assert_eq!(error_in_place(&mut big, 28, a, a, 11, 0, 0), Some(56));
    }
}
