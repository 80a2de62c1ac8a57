//! Zero-copy views over packet bytes and the Internet checksum.
//!
//! Each view validates once in `new_checked`; after that no accessor can panic. Setters exist
//! only over mutable buffers. Nothing here allocates, and nothing reads a clock.

pub mod build;
pub mod checksum;
pub mod icmp;
pub mod ipv4;
pub mod tcp;
pub mod udp;

pub use icmp::IcmpPacket;
pub use ipv4::{Ipv4Packet, Ipv4Repr};
pub use tcp::TcpPacket;
pub use udp::UdpPacket;

/// Why bytes are not a packet we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Shorter than its headers or its length fields say.
    Truncated,
    /// An IPv6 packet.
    Ipv6,
    /// Version neither 4 nor 6.
    BadVersion,
    /// IHL below 5.
    BadHeaderLen,
    /// Total length below the header length.
    BadTotalLen,
    /// The transport header does not fit.
    TruncatedL4,
    /// A transport header field is impossible (TCP data offset).
    BadL4Header,
}
