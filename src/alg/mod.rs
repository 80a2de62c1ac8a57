//! Recognising protocols that need an Application Layer Gateway under NAT.
//!
//! A 1:1 NAT rewrites addresses in IP headers only. Protocols that also carry
//! addresses inside their payload (SIP, H.323, RTSP, FTP, DNS) or open related
//! flows on their own (TFTP) break unless an ALG rewrites or tracks them.
//! This module answers two questions, both pure functions of one packet:
//!
//! - [`classify`]: is this packet one of those protocols (by well-known port,
//!   then by payload signature)?
//! - [`inspect`]: does this payload actually carry the address that NAT
//!   translates, in a place NAT would have had to rewrite?
//!
//! The classify path runs per packet, so it allocates nothing, looks at a
//! bounded prefix of the payload ([`MAX_START_LINE`] bytes) and touches no
//! clock or I/O. `inspect` also allocates nothing and is linear in the
//! payload. Nothing here may panic whatever the bytes: the lints below make
//! the compiler (clippy) enforce that there is no indexing, unchecked
//! arithmetic or unwrapping outside the tests.

#![forbid(unsafe_code)]
#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::todo,
    clippy::unimplemented,
    clippy::string_slice
)]

use std::fmt;
use std::str::FromStr;

mod dns;
mod ftp;
mod h323;
mod rtsp;
mod sip;
mod text;

#[cfg(test)]
mod tests;

pub use text::MAX_START_LINE;

/// The error of the `FromStr` impls: the text names no known value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownName {
    /// What was being parsed: "ALG protocol", "ALG action" or "ALG field".
    pub kind: &'static str,
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {} name", self.kind)
    }
}

impl std::error::Error for UnknownName {}

/// ALG-dependent protocols.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlgProtocol {
    Sip,
    H323,
    Rtsp,
    Dns,
    Ftp,
    Tftp,
}

impl AlgProtocol {
    /// Every protocol, in declaration order (the order of [`Self::index`]).
    pub const ALL: [AlgProtocol; 6] = [
        AlgProtocol::Sip,
        AlgProtocol::H323,
        AlgProtocol::Rtsp,
        AlgProtocol::Dns,
        AlgProtocol::Ftp,
        AlgProtocol::Tftp,
    ];
    pub const COUNT: usize = 6;

    pub fn name(self) -> &'static str {
        match self {
            AlgProtocol::Sip => "sip",
            AlgProtocol::H323 => "h323",
            AlgProtocol::Rtsp => "rtsp",
            AlgProtocol::Dns => "dns",
            AlgProtocol::Ftp => "ftp",
            AlgProtocol::Tftp => "tftp",
        }
    }

    /// Position in [`Self::ALL`], 0..[`Self::COUNT`].
    pub fn index(self) -> usize {
        match self {
            AlgProtocol::Sip => 0,
            AlgProtocol::H323 => 1,
            AlgProtocol::Rtsp => 2,
            AlgProtocol::Dns => 3,
            AlgProtocol::Ftp => 4,
            AlgProtocol::Tftp => 5,
        }
    }

    /// Case-insensitive; "h.323" is accepted as well as "h323".
    pub fn from_name(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("h.323") {
            return Some(AlgProtocol::H323);
        }
        Self::ALL
            .into_iter()
            .find(|p| s.eq_ignore_ascii_case(p.name()))
    }
}

impl fmt::Display for AlgProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AlgProtocol {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        Self::from_name(s).ok_or(UnknownName {
            kind: "ALG protocol",
        })
    }
}

/// What NAT mode does with a protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AlgAction {
    #[default]
    Drop,
    Pass,
    Inspect,
}

impl AlgAction {
    pub const ALL: [AlgAction; 3] = [AlgAction::Drop, AlgAction::Pass, AlgAction::Inspect];

    pub fn name(self) -> &'static str {
        match self {
            AlgAction::Drop => "drop",
            AlgAction::Pass => "pass",
            AlgAction::Inspect => "inspect",
        }
    }

    /// Case-insensitive.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| s.eq_ignore_ascii_case(a.name()))
    }
}

impl fmt::Display for AlgAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AlgAction {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        Self::from_name(s).ok_or(UnknownName { kind: "ALG action" })
    }
}

/// Per-protocol policy. Default: every protocol Drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AlgPolicy {
    actions: [AlgAction; AlgProtocol::COUNT],
}

impl AlgPolicy {
    pub fn get(&self, p: AlgProtocol) -> AlgAction {
        // `index()` is always < COUNT; the fallback only keeps this panic-free.
        self.actions.get(p.index()).copied().unwrap_or_default()
    }

    pub fn set(&mut self, p: AlgProtocol, a: AlgAction) {
        if let Some(slot) = self.actions.get_mut(p.index()) {
            *slot = a;
        }
    }

    pub fn with(mut self, p: AlgProtocol, a: AlgAction) -> Self {
        self.set(p, a);
        self
    }

    pub fn all(a: AlgAction) -> Self {
        AlgPolicy {
            actions: [a; AlgProtocol::COUNT],
        }
    }

    pub fn is_all_pass(&self) -> bool {
        self.actions.iter().all(|&a| a == AlgAction::Pass)
    }

    /// Every protocol with its action, in [`AlgProtocol::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (AlgProtocol, AlgAction)> + '_ {
        AlgProtocol::ALL.into_iter().map(|p| (p, self.get(p)))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

/// The highest well-known port of [`well_known`].
const MAX_WELL_KNOWN: u16 = 5061;

/// The protocol whose well-known port `port` is, on transport `t`.
#[inline(always)]
fn well_known(t: Transport, port: u16) -> Option<AlgProtocol> {
    use AlgProtocol::*;
    use Transport::*;
    if port > MAX_WELL_KNOWN {
        return None;
    }
    match (t, port) {
        (_, 5060) | (Tcp, 5061) => Some(Sip),
        (Tcp, 1720) | (Udp, 1719) => Some(H323),
        (_, 554) => Some(Rtsp),
        (_, 53) => Some(Dns),
        (Tcp, 21) => Some(Ftp),
        (Udp, 69) => Some(Tftp),
        _ => None,
    }
}

/// Well-known ports: either port of the packet matching counts (a reply from
/// a server has the well-known port as source).
///
/// SIP 5060 (TCP/UDP) and 5061 (TCP, SIP over TLS); H.323 1720 TCP (call
/// signalling) and 1719 UDP (RAS); RTSP 554 TCP/UDP; DNS 53 TCP/UDP; FTP 21
/// TCP; TFTP 69 UDP.
///
/// When both ports are well-known for different protocols, the lower port
/// wins. Servers sit on the low ports and clients' ephemeral ports are high,
/// and, unlike "destination first", the rule gives both directions of a flow
/// the same answer (the result is symmetric in the two ports).
#[inline]
pub fn classify_ports(t: Transport, src_port: u16, dst_port: u16) -> Option<AlgProtocol> {
    let (low, high) = if src_port <= dst_port {
        (src_port, dst_port)
    } else {
        (dst_port, src_port)
    };
    well_known(t, low).or_else(|| well_known(t, high))
}

/// Payload signatures, on any port. Only the first line is examined, and it
/// must end (LF or CRLF) within the first [`MAX_START_LINE`] bytes, so the
/// result depends on those bytes alone.
///
/// - SIP (TCP/UDP): a request line `METHOD sip:... SIP/2.0` /
///   `METHOD sips:... SIP/2.0` with a method of RFC 3261 or its common
///   extensions, or a status line `SIP/2.0 ddd ...`. Empty lines before it
///   are skipped (RFC 3261 7.5).
/// - RTSP (TCP/UDP): `METHOD rtsp://... RTSP/1.0` or `RTSP/1.0 ddd ...`.
/// - FTP (TCP only): the messages that carry an address or port, i.e.
///   `PORT h1,h2,h3,h4,p1,p2`, `EPRT |1|a.b.c.d|port|` (or `|2|`),
///   `227 ... (h1,h2,h3,h4,p1,p2)` and `229 ... (|||port|)`, each one exact
///   line (command verbs case-insensitive).
///
/// DNS, H.323 and TFTP have no text signature and are recognised by port only.
#[inline]
pub fn classify_payload(t: Transport, payload: &[u8]) -> Option<AlgProtocol> {
    if !may_have_signature(payload) {
        return None;
    }
    classify_payload_unfiltered(t, payload)
}

/// [`classify_payload`] without the cheap first test: the reference it must agree with.
fn classify_payload_unfiltered(t: Transport, payload: &[u8]) -> Option<AlgProtocol> {
    if t == Transport::Tcp
        && text::first_line(payload).is_some_and(|l| ftp::parse_line(l).is_some())
    {
        return Some(AlgProtocol::Ftp);
    }
    let window = payload.get(..MAX_START_LINE).unwrap_or(payload);
    let start = window.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let line = text::first_line(window.get(start..)?)?;
    if sip::is_start_line(line) {
        Some(AlgProtocol::Sip)
    } else if rtsp::is_start_line(line) {
        Some(AlgProtocol::Rtsp)
    } else {
        None
    }
}

/// Longest token a signature starts with (`GET_PARAMETER`, `SET_PARAMETER`).
const MAX_TOKEN: usize = 13;

/// Every payload signature begins with a short token (a method, `SIP`, `RTSP`, an FTP verb
/// or reply code) ended by a space or `/`, or, for SIP and RTSP, with blank lines. Ruling
/// the rest out first keeps the per-packet cost of bulk data, TLS and binary protocols to a
/// few instructions instead of a search for the end of a line (the profile of NAT-mode
/// forwarding showed that search as a third of all instructions).
#[inline(always)]
fn may_have_signature(payload: &[u8]) -> bool {
    let head = payload.get(..=MAX_TOKEN).unwrap_or(payload);
    // First bytes of every token: SIP and RTSP methods and versions are upper case, FTP
    // verbs (PORT, EPRT) any case, FTP replies 227/229.
    match head.first() {
        None => return false,
        Some(b'\r' | b'\n') => return true,
        Some(b'A'..=b'Z' | b'p' | b'e' | b'2') => {}
        Some(_) => return false,
    }
    for (i, &b) in head.iter().enumerate() {
        match TOKEN_CLASS.get(usize::from(b)).copied().unwrap_or(0) {
            TOKEN => {}
            END => return i >= 3,
            _ => return false,
        }
    }
    false
}

const TOKEN: u8 = 1;
const END: u8 = 2;

/// Per byte: [`TOKEN`] for a letter, digit or `_`, [`END`] for a space or `/`, else 0. One
/// load per byte instead of a chain of range tests.
// Indexing a 256-entry array by a byte cannot go out of bounds.
#[allow(clippy::indexing_slicing)]
const TOKEN_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = if c.is_ascii_alphanumeric() || c == b'_' {
            TOKEN
        } else if c == b' ' || c == b'/' {
            END
        } else {
            0
        };
        i += 1;
    }
    t
};

/// Ports first, then payload.
#[inline]
pub fn classify(t: Transport, src_port: u16, dst_port: u16, payload: &[u8]) -> Option<AlgProtocol> {
    classify_ports(t, src_port, dst_port).or_else(|| classify_payload(t, payload))
}

/// A reason a payload would need an ALG under NAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finding {
    pub protocol: AlgProtocol,
    pub field: Field,
    pub address: [u8; 4],
}

/// Where in a payload an address was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// FTP `PORT h1,h2,h3,h4,p1,p2`.
    FtpPort,
    /// FTP `EPRT |1|a.b.c.d|port|` (or an IPv6 EPRT embedding a dotted quad).
    FtpEprt,
    /// FTP `227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)`.
    FtpPasvReply,
    SipRequestUri,
    SipVia,
    SipContact,
    SipFrom,
    SipTo,
    /// SDP `c=` in a SIP body.
    SipSdpConnection,
    /// SDP `o=` in a SIP body.
    SipSdpOrigin,
    /// Anywhere in the RTSP Transport header (`destination=`, `source=`...).
    RtspTransport,
    /// The host of a URL in an RTSP message (request line, Content-Base,
    /// RTP-Info, SDP `a=control:`...).
    RtspUrl,
    /// The address as 4 raw bytes inside an H.225 payload.
    H323Binary,
    /// An A record in a DNS response (any section) carrying the address.
    DnsAnswerA,
    /// Any other place: the address as dotted text with proper boundaries.
    TextAddress,
}

impl Field {
    pub const ALL: [Field; 15] = [
        Field::FtpPort,
        Field::FtpEprt,
        Field::FtpPasvReply,
        Field::SipRequestUri,
        Field::SipVia,
        Field::SipContact,
        Field::SipFrom,
        Field::SipTo,
        Field::SipSdpConnection,
        Field::SipSdpOrigin,
        Field::RtspTransport,
        Field::RtspUrl,
        Field::H323Binary,
        Field::DnsAnswerA,
        Field::TextAddress,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Field::FtpPort => "ftp_port",
            Field::FtpEprt => "ftp_eprt",
            Field::FtpPasvReply => "ftp_pasv_reply",
            Field::SipRequestUri => "sip_request_uri",
            Field::SipVia => "sip_via",
            Field::SipContact => "sip_contact",
            Field::SipFrom => "sip_from",
            Field::SipTo => "sip_to",
            Field::SipSdpConnection => "sip_sdp_connection",
            Field::SipSdpOrigin => "sip_sdp_origin",
            Field::RtspTransport => "rtsp_transport",
            Field::RtspUrl => "rtsp_url",
            Field::H323Binary => "h323_binary",
            Field::DnsAnswerA => "dns_answer_a",
            Field::TextAddress => "text_address",
        }
    }

    /// Case-insensitive inverse of [`Self::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| s.eq_ignore_ascii_case(f.name()))
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Field {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        Self::from_name(s).ok_or(UnknownName { kind: "ALG field" })
    }
}

/// Inspect a payload of protocol `p` crossing a 1:1 NAT that maps `private`
/// <-> `public`.
///
/// Returns the first finding, in payload order, where the payload carries
/// `private` (the guest's address leaking out) or `public` (an address the
/// guest does not own, seen inside), in a place NAT would have had to
/// rewrite:
///
/// - SIP: every line; the field says which header (or SDP line) it was in,
///   [`Field::TextAddress`] for any other header or body line.
/// - RTSP: every line; Transport header, URL host, or text elsewhere.
/// - FTP: only `PORT`, `EPRT` and `227` lines (comma form for PORT/227);
///   an address mentioned in any other reply is not something NAT rewrites.
/// - DNS: A records of a response (UDP, or TCP with its length prefix).
/// - H.323: the four raw bytes anywhere (H.225 carries addresses binary).
/// - TFTP carries no address: always None.
///
/// Dotted quads must stand on their own: "10.0.1.2" does not match inside
/// "10.0.1.21", "110.0.1.2" or "10.0.1.2.5".
pub fn inspect(
    p: AlgProtocol,
    payload: &[u8],
    private: [u8; 4],
    public: [u8; 4],
) -> Option<Finding> {
    match p {
        AlgProtocol::Sip => sip::inspect(payload, private, public),
        AlgProtocol::H323 => h323::inspect(payload, private, public),
        AlgProtocol::Rtsp => rtsp::inspect(payload, private, public),
        AlgProtocol::Dns => dns::inspect(payload, private, public),
        AlgProtocol::Ftp => ftp::inspect(payload, private, public),
        AlgProtocol::Tftp => None,
    }
}

/// The first finding a walk like [`inspect_each`] reports (it is told to stop there).
fn first_finding(walk: impl FnOnce(&mut dyn FnMut(Finding) -> bool)) -> Option<Finding> {
    let mut first = None;
    walk(&mut |f| {
        first = Some(f);
        false
    });
    first
}

/// Every finding of [`inspect`] in one payload, in payload order, until `f` returns false:
/// SIP and RTSP report each line that carries the address (a SIP message may carry it in
/// `Contact:` and again in its SDP's `c=`, which is what breaks the media); the other
/// protocols carry at most one address NAT would rewrite, and report the first.
pub fn inspect_each(
    p: AlgProtocol,
    payload: &[u8],
    private: [u8; 4],
    public: [u8; 4],
    f: &mut dyn FnMut(Finding) -> bool,
) {
    match p {
        AlgProtocol::Sip => sip::inspect_each(payload, private, public, f),
        AlgProtocol::Rtsp => rtsp::inspect_each(payload, private, public, f),
        _ => {
            if let Some(x) = inspect(p, payload, private, public) {
                f(x);
            }
        }
    }
}
