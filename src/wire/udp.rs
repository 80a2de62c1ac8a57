//! UDP header view (RFC 768).

use super::Error;

pub const HEADER_LEN: usize = 8;

/// A view over a UDP header and what follows it. [`UdpPacket::new_checked`] checks only that
/// the 8-byte header is present: in the first fragment of a fragmented datagram the length
/// field covers more than the buffer holds, and a forwarder has no business rejecting that.
#[derive(Debug, Clone, Copy)]
pub struct UdpPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::TruncatedL4);
        }
        Ok(UdpPacket { buffer })
    }

    #[inline]
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    #[inline]
    pub fn src_port(&self) -> u16 {
        u16::from_be_bytes([self.b()[0], self.b()[1]])
    }

    #[inline]
    pub fn dst_port(&self) -> u16 {
        u16::from_be_bytes([self.b()[2], self.b()[3]])
    }

    /// The length field (header and data).
    #[inline]
    pub fn len_field(&self) -> usize {
        u16::from_be_bytes([self.b()[4], self.b()[5]]) as usize
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes([self.b()[6], self.b()[7]])
    }

    /// Data after the header, as far as this buffer holds it.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.b()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        self.buffer.as_mut()[6..8].copy_from_slice(&c.to_be_bytes());
    }

    #[inline]
    pub fn set_src_port(&mut self, p: u16) {
        self.buffer.as_mut()[0..2].copy_from_slice(&p.to_be_bytes());
    }

    #[inline]
    pub fn set_dst_port(&mut self, p: u16) {
        self.buffer.as_mut()[2..4].copy_from_slice(&p.to_be_bytes());
    }
}
