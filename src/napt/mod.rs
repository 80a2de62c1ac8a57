//! NAPT of a cloud internet NAT gateway (SPEC D9–D11): SNAT of many private hosts behind
//! the gateway's EIPs, static DNAT port forwards and whole-IP mappings.
//!
//! A pure state machine that a dataplane calls once per packet with the time (nanoseconds),
//! the transport and the two endpoints; it answers with the translated endpoints or a
//! [`NaptDrop`] naming why not. It does not touch packet bytes (the caller rewrites headers
//! and checksums) and reads no clock.
//!
//! Terms are RFC 4787's: a *mapping* binds an internal address:port to an external one; a
//! *session* is one flow (internal, external, remote) using a mapping. Which flows share a
//! mapping is the mapping behaviour, which remotes may use an existing mapping to reach the
//! host is the filtering behaviour ([`Behaviour`] for both).
//!
//! What the cloud does by default ([`NaptConfig::cloud`]): TCP idle timeout 900 s, UDP 60 s,
//! no ALG (payloads are never looked at, so protocols that carry addresses break, as they do
//! in the cloud); an SNAT entry with several EIPs may send one host's flows out of different
//! EIPs ("arbitrary" pooling) unless paired pooling is configured.
//!
//! Cost: an established flow costs one hash lookup per packet and direction and no
//! allocation; sessions and mappings live in slabs that reuse freed slots, so memory follows
//! the number of live flows (at most `max_sessions`), never the number that came and went.
//! Expiry is a timer wheel ([`wheel`]) that packets do not touch.
//!
//! Rules and configuration change while flows are live ([`Napt::set_rules`],
//! [`Napt::set_config`], one scan of the sessions each): the flows the new ones still
//! translate the same way carry on, with the same external address and port; the others end
//! at once.

mod index;
pub(crate) mod key;
mod ports;
mod wheel;

use core::net::{Ipv4Addr, SocketAddrV4};
use core::ops::RangeInclusive;
use index::FlowIndex;
use key::{spread, FlowKey, FlowMap};
use ports::PortSet;
use wheel::{Links, Timed, Wheel};

/// "No index" in the slabs and links.
const NONE: u32 = u32::MAX;

/// How a NAT decides that two flows share a mapping (RFC 4787 §4.1), or which remotes may
/// send through a mapping (its filtering, RFC 4787 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Behaviour {
    /// Any remote: the same internal address:port always gets the same external one
    /// ("full cone" when used for filtering).
    EndpointIndependent,
    /// Per remote IP address.
    AddressDependent,
    /// Per remote IP address and port ("symmetric" when used for mapping).
    AddressAndPortDependent,
}

/// How an SNAT entry with several EIPs picks one (RFC 4787 §4.1, REQ-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pooling {
    /// All of a host's mappings use one external IP.
    Paired,
    /// Each new mapping may use any of the entry's IPs (the cloud's behaviour: a new
    /// connection may leave from any EIP of the entry).
    Arbitrary,
}

/// The transports the NAPT tracks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Protocol {
    Icmp = 1,
    Tcp = 6,
    Udp = 17,
}

impl Protocol {
    #[inline(always)]
    fn index(self) -> usize {
        match self {
            Protocol::Tcp => 0,
            Protocol::Udp => 1,
            Protocol::Icmp => 2,
        }
    }
}

/// TCP flags as they are in the header's 13th byte, so a dataplane passes that byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: TcpFlags = TcpFlags(0x01);
    pub const SYN: TcpFlags = TcpFlags(0x02);
    pub const RST: TcpFlags = TcpFlags(0x04);
    pub const ACK: TcpFlags = TcpFlags(0x10);

    pub fn contains(self, f: TcpFlags) -> bool {
        self.0 & f.0 == f.0
    }
}

impl core::ops::BitOr for TcpFlags {
    type Output = TcpFlags;
    fn bitor(self, o: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | o.0)
    }
}

/// What a packet is, as far as the NAPT cares.
///
/// For ICMP query messages (echo and the like) the identifier plays the part of the port
/// (RFC 5508 §3.1): pass it as the port of the inside party (the source on
/// [`Napt::outbound`], the destination on [`Napt::inbound`]) and read the translated
/// identifier from the port of the translated address. The remote's port is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp(TcpFlags),
    Udp,
    IcmpQuery,
}

impl Proto {
    #[inline(always)]
    pub fn protocol(self) -> Protocol {
        match self {
            Proto::Tcp(_) => Protocol::Tcp,
            Proto::Udp => Protocol::Udp,
            Proto::IcmpQuery => Protocol::Icmp,
        }
    }
}

/// How the NAPT behaves; see [`NaptConfig::cloud`] and [`NaptConfig::rfc_minimums`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NaptConfig {
    pub mapping: Behaviour,
    pub filtering: Behaviour,
    /// Keep the internal port as the external one when it is free (on any of the entry's
    /// IPs, with arbitrary pooling).
    pub port_preservation: bool,
    pub pooling: Pooling,
    /// Whether a host may reach another (or itself) through the gateway's external addresses.
    pub hairpinning: bool,
    /// Idle timeout of a TCP connection seen in both directions and not closing.
    pub tcp_established_ns: u64,
    /// Idle timeout of a TCP connection opening (seen one way) or closing (FIN both ways,
    /// or RST).
    pub tcp_transitory_ns: u64,
    pub udp_ns: u64,
    /// Idle timeout of an ICMP query session.
    pub icmp_ns: u64,
    /// Sessions at most; a new flow beyond it is refused, live ones carry on.
    pub max_sessions: usize,
    /// External ports (and ICMP identifiers) SNAT allocates from.
    pub ports: RangeInclusive<u16>,
}

const SEC: u64 = 1_000_000_000;

impl NaptConfig {
    /// The cloud's internet NAT gateway: TCP 900 s and UDP 60 s idle timeouts, no ALG,
    /// arbitrary pooling, no port preservation, hairpinning.
    ///
    /// The cloud publishes neither its filtering nor its ICMP and transitory timeouts. We
    /// choose endpoint-independent mapping (one external port per host port, which is what
    /// lets peer-to-peer traversal work through it) with address-and-port-dependent filtering:
    /// SNAT only carries flows a private host started, so a remote the host never sent to
    /// cannot use its mapping. ICMP 60 s (RFC 5508's floor) and transitory TCP 240 s (RFC
    /// 5382's floor) are ours.
    pub fn cloud() -> Self {
        NaptConfig {
            mapping: Behaviour::EndpointIndependent,
            filtering: Behaviour::AddressAndPortDependent,
            port_preservation: false,
            pooling: Pooling::Arbitrary,
            hairpinning: true,
            tcp_established_ns: 900 * SEC,
            tcp_transitory_ns: 240 * SEC,
            udp_ns: 60 * SEC,
            icmp_ns: 60 * SEC,
            max_sessions: 1_000_000,
            ports: 1024..=65535,
        }
    }

    /// What the RFCs ask of a well-behaved NAT, timeouts at their floors: UDP 120 s (RFC
    /// 4787 REQ-5; 300 s is recommended), TCP established 2 h 4 min and transitory 4 min
    /// (RFC 5382 REQ-5), ICMP query 60 s (RFC 5508 REQ-2); endpoint-independent mapping
    /// (REQ-1) and filtering (REQ-8, for transparency), paired pooling (REQ-2),
    /// hairpinning (REQ-9).
    pub fn rfc_minimums() -> Self {
        NaptConfig {
            mapping: Behaviour::EndpointIndependent,
            filtering: Behaviour::EndpointIndependent,
            port_preservation: false,
            pooling: Pooling::Paired,
            hairpinning: true,
            tcp_established_ns: (2 * 3600 + 4 * 60) * SEC,
            tcp_transitory_ns: 240 * SEC,
            udp_ns: 120 * SEC,
            icmp_ns: 60 * SEC,
            max_sessions: 1_000_000,
            ports: 1024..=65535,
        }
    }
}

/// An SNAT entry: private sources in `source`/`prefix_len` leave through `eips`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnatRule {
    pub source: Ipv4Addr,
    pub prefix_len: u8,
    pub eips: Vec<Ipv4Addr>,
}

/// Which traffic a DNAT entry forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DnatProtocol {
    Tcp,
    Udp,
    /// The whole IP: every protocol and port, ports kept; the host also sends all its own
    /// new flows out through this IP (the cloud's "IP mapping").
    Any,
}

/// A DNAT entry: `external` on `protocol` goes to `internal` (ports ignored for `Any`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnatRule {
    pub external: SocketAddrV4,
    pub protocol: DnatProtocol,
    pub internal: SocketAddrV4,
}

/// Why a packet was not translated. `Copy` and dense, to index a counter array.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NaptDrop {
    /// Outbound from a source no SNAT entry or whole-IP DNAT entry covers.
    NoSnatRule,
    /// The session table holds `max_sessions`; the new flow is refused.
    TableFull,
    /// No free external port on any IP this flow may use (the caller answers ICMP
    /// destination unreachable, code 13).
    PortsExhausted,
    /// Inbound to an external address:port with no session, DNAT entry or mapping; or an
    /// ICMP error about a flow the gateway does not know (RFC 5508 REQ-4, REQ-5).
    NoSession,
    /// A mapping exists but its filtering does not admit this remote (RFC 4787 REQ-8).
    Filtered,
    /// Inbound to an address that is not one of the gateway's.
    UnknownDestination,
    /// To one of the gateway's own addresses from inside, with hairpinning off.
    HairpinOff,
    /// The new flow's tuple is held by another session (a DNAT forward and an SNAT flow of
    /// the same host, port and remote).
    Conflict,
}

impl NaptDrop {
    pub const COUNT: usize = 8;
    pub const ALL: [NaptDrop; NaptDrop::COUNT] = [
        NaptDrop::NoSnatRule,
        NaptDrop::TableFull,
        NaptDrop::PortsExhausted,
        NaptDrop::NoSession,
        NaptDrop::Filtered,
        NaptDrop::UnknownDestination,
        NaptDrop::HairpinOff,
        NaptDrop::Conflict,
    ];

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Rules that cannot stand together; each says what to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NaptConfigError {
    EmptyPortRange,
    SnatWithoutEip { source: Ipv4Addr, prefix_len: u8 },
    BadPrefix { source: Ipv4Addr, prefix_len: u8 },
    DuplicateDnat { external: SocketAddrV4 },
    DnatTargetTwice { internal: SocketAddrV4 },
    WholeIpShared { eip: Ipv4Addr },
}

impl core::fmt::Display for NaptConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NaptConfigError::EmptyPortRange => {
                write!(
                    f,
                    "the SNAT port range is empty: give a range with start <= end"
                )
            }
            NaptConfigError::SnatWithoutEip { source, prefix_len } => write!(
                f,
                "SNAT entry {source}/{prefix_len} has no EIP: give it at least one"
            ),
            NaptConfigError::BadPrefix { source, prefix_len } => write!(
                f,
                "SNAT entry {source}/{prefix_len}: a prefix length is 0 to 32"
            ),
            NaptConfigError::DuplicateDnat { external } => write!(
                f,
                "two DNAT entries forward {external} on the same protocol: remove one"
            ),
            NaptConfigError::DnatTargetTwice { internal } => write!(
                f,
                "{internal} is the target of two DNAT entries on one protocol: replies \
                 could not tell which external address to leave with; keep one"
            ),
            NaptConfigError::WholeIpShared { eip } => write!(
                f,
                "{eip} is mapped whole by a DNAT entry (protocol Any) and also used by \
                 another SNAT or DNAT entry: give the other entry another EIP"
            ),
        }
    }
}

impl std::error::Error for NaptConfigError {}

/// An outbound packet's new endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    pub src: SocketAddrV4,
    /// Unchanged unless hairpinned.
    pub dst: SocketAddrV4,
    /// The packet was addressed to one of the gateway's own external addresses and goes
    /// back inside, to `dst`.
    pub hairpin: bool,
}

/// What an ICMP error's outer header and quoted packet become (RFC 5508 REQ-4, REQ-5):
/// write these four and leave type and code alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpErrorTranslation {
    pub outer_src: Ipv4Addr,
    pub outer_dst: Ipv4Addr,
    pub quoted_src: SocketAddrV4,
    pub quoted_dst: SocketAddrV4,
}

// TCP state bits of a session.
const SEEN_OUT: u8 = 1;
const SEEN_IN: u8 = 2;
const FIN_OUT: u8 = 4;
const FIN_IN: u8 = 8;
const RST: u8 = 16;

/// One flow: 48 bytes of fields on a 64-byte line of its own, which is what the hot path
/// reads after its index lookup. (At 48 bytes a stride, half the sessions would straddle two
/// lines, and a lookup in a table larger than the caches would wait for both.)
#[derive(Clone, Copy, Debug)]
#[repr(align(64))]
struct Session {
    expires: u64,
    int_ip: u32,
    ext_ip: u32,
    rem_ip: u32,
    /// Its mapping, or NONE for a DNAT flow.
    mapping: u32,
    links: Links,
    int_port: u16,
    ext_port: u16,
    rem_port: u16,
    proto: Protocol,
    tcp: u8,
    /// The remote is one of the gateway's own addresses.
    hairpin: bool,
    live: bool,
}

impl Timed for Session {
    fn links(&mut self) -> &mut Links {
        &mut self.links
    }
    fn expires(&self) -> u64 {
        self.expires
    }
}

impl Session {
    #[inline(always)]
    fn out_key(&self) -> FlowKey {
        FlowKey::new(
            self.proto,
            self.int_ip,
            self.int_port,
            self.rem_ip,
            self.rem_port,
        )
    }

    #[inline(always)]
    fn in_key(&self) -> FlowKey {
        FlowKey::new(
            self.proto,
            self.ext_ip,
            self.ext_port,
            self.rem_ip,
            self.rem_port,
        )
    }

    /// A packet of this session passed at `now`: TCP state and deadline follow it. True
    /// when the deadline moved earlier (a TCP connection started closing): the wheel only
    /// finds deadlines that move later by itself, so the caller files it again.
    #[inline(always)]
    #[must_use]
    fn touch(&mut self, cfg: &NaptConfig, now: u64, proto: Proto, outbound: bool) -> bool {
        match proto {
            Proto::Tcp(f) => {
                let closing = self.tcp & RST != 0 || self.tcp & (FIN_OUT | FIN_IN) != 0;
                if closing && f.contains(TcpFlags::SYN) && !f.contains(TcpFlags::ACK) {
                    // A new connection on a closing tuple (TIME-WAIT reuse) starts afresh.
                    self.tcp = 0;
                }
                let (seen, fin) = if outbound {
                    (SEEN_OUT, FIN_OUT)
                } else {
                    (SEEN_IN, FIN_IN)
                };
                self.tcp |= seen;
                if f.contains(TcpFlags::FIN) {
                    self.tcp |= fin;
                }
                if f.contains(TcpFlags::RST) {
                    self.tcp |= RST;
                }
            }
            Proto::Udp | Proto::IcmpQuery => {}
        }
        let before = self.expires;
        self.expires = now.saturating_add(self.timeout(cfg));
        self.expires < before
    }

    /// The idle timeout of the session's protocol and state.
    #[inline(always)]
    fn timeout(&self, cfg: &NaptConfig) -> u64 {
        match self.proto {
            Protocol::Tcp => {
                let both = |m: u8| self.tcp & m == m;
                if self.tcp & RST == 0 && both(SEEN_OUT | SEEN_IN) && !both(FIN_OUT | FIN_IN) {
                    cfg.tcp_established_ns
                } else {
                    cfg.tcp_transitory_ns
                }
            }
            Protocol::Udp => cfg.udp_ns,
            Protocol::Icmp => cfg.icmp_ns,
        }
    }
}

/// A binding of an internal address:port to an external one, shared by its sessions.
#[derive(Clone, Copy, Debug)]
struct Mapping {
    /// Its key in `map_by_int` (the remote part per the mapping behaviour).
    key: FlowKey,
    proto: Protocol,
    int_ip: u32,
    int_port: u16,
    ext_ip: u32,
    ext_port: u16,
    eip: u32,
    sessions: u32,
}

/// One of the gateway's external addresses.
#[derive(Clone, Debug)]
struct Eip {
    addr: u32,
    /// Per protocol; DNAT ports are marked taken once and never released.
    ports: [PortSet; 3],
}

#[derive(Clone, Debug)]
struct Snat {
    net: u32,
    mask: u32,
    /// Indices into `Napt::eips`.
    eips: Vec<u32>,
}

#[derive(Clone, Copy, Debug)]
struct Host {
    eip: u32,
    mappings: u32,
}

/// The rules in the form the tables use, built and checked by [`Rules::build`]. The EIP
/// indices in `snat` (and in sessions' mappings and `hosts`) point into `eips`.
#[derive(Debug)]
struct Rules {
    /// Most specific first.
    snat: Vec<Snat>,
    /// (protocol, external IP, external port, 0, 0) -> internal.
    dnat_ports: FlowMap<FlowKey, (u32, u16)>,
    /// Whole-IP DNAT: external -> internal and back.
    dnat_whole: FlowMap<u32, u32>,
    dnat_whole_rev: FlowMap<u32, u32>,
    /// The addresses SNAT entries and port-forward DNAT entries use, with their ports.
    eips: Vec<Eip>,
    /// Every external address of the gateway -> its index in `eips`, or NONE for a
    /// whole-IP DNAT address (which has no ports to allocate).
    eip_index: FlowMap<u32, u32>,
}

/// The gateway's NAPT: rules, sessions, mappings and their timers.
#[derive(Debug)]
pub struct Napt {
    cfg: NaptConfig,
    /// The rules as given, to build [`Rules`] again when the port range changes.
    snat_rules: Vec<SnatRule>,
    dnat_rules: Vec<DnatRule>,
    rules: Rules,
    sessions: Vec<Session>,
    free_sessions: Vec<u32>,
    live: usize,
    out_index: FlowIndex,
    in_index: FlowIndex,
    mappings: Vec<Mapping>,
    free_mappings: Vec<u32>,
    map_by_int: FlowMap<FlowKey, u32>,
    /// (protocol, external IP, external port, 0, 0) -> mapping.
    map_by_ext: FlowMap<FlowKey, u32>,
    /// Paired pooling: each host's external IP while it has mappings.
    hosts: FlowMap<u32, Host>,
    /// Address-dependent filtering: (mapping, remote IP) -> sessions, i.e. the remotes the
    /// mapping admits.
    permits: FlowMap<u64, u32>,
    wheel: Wheel,
    expired: Vec<u32>,
    /// Varies where port searches start.
    allocations: u64,
    drops: [u64; NaptDrop::COUNT],
}

#[inline(always)]
fn ip(a: &SocketAddrV4) -> u32 {
    u32::from(*a.ip())
}

#[inline(always)]
fn sock(ip: u32, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(ip), port)
}

/// How many flows ahead the batch calls fetch sessions (and twice that, index lines): 16
/// measured faster than 8 at 1,000,000 sessions (21 against 15 Mpps).
const BATCH_DISTANCE: usize = 16;

#[derive(Clone, Copy)]
enum Dir {
    Out,
    In,
}

/// A flow of a batch on its way through the pipeline: its key, its first slot in the index
/// and, once read, what the index holds for it, as of the index's generation `gen`.
#[derive(Clone, Copy)]
struct Ahead {
    key: FlowKey,
    home: usize,
    gen: u64,
    found: Option<u32>,
}

/// The key of `out_index` for a packet from inside, `src` to `dst`.
#[inline(always)]
fn out_key(proto: Proto, src: SocketAddrV4, dst: SocketAddrV4) -> FlowKey {
    let p = proto.protocol();
    FlowKey::new(
        p,
        ip(&src),
        src.port(),
        ip(&dst),
        remote_port(p, dst.port()),
    )
}

/// The key of `in_index` for a packet from the Internet, `src` to `dst`.
#[inline(always)]
fn in_key(proto: Proto, src: SocketAddrV4, dst: SocketAddrV4) -> FlowKey {
    let p = proto.protocol();
    FlowKey::new(
        p,
        ip(&dst),
        dst.port(),
        ip(&src),
        remote_port(p, src.port()),
    )
}

/// The remote's port as keys hold it: ICMP queries have none.
#[inline(always)]
fn remote_port(p: Protocol, port: u16) -> u16 {
    if p == Protocol::Icmp {
        0
    } else {
        port
    }
}

impl Rules {
    /// Checks the rules against each other and the SNAT port range, and builds them; the
    /// EIPs' port sets hold the port-forward DNAT entries' ports and nothing else.
    fn build(
        ports: &RangeInclusive<u16>,
        snat: &[SnatRule],
        dnat: &[DnatRule],
    ) -> Result<Rules, NaptConfigError> {
        let (lo, hi) = (*ports.start(), *ports.end());
        if lo > hi {
            return Err(NaptConfigError::EmptyPortRange);
        }
        let mut n = Rules {
            snat: Vec::new(),
            dnat_ports: FlowMap::default(),
            dnat_whole: FlowMap::default(),
            dnat_whole_rev: FlowMap::default(),
            eips: Vec::new(),
            eip_index: FlowMap::default(),
        };
        let eip_of = |n: &mut Rules, a: Ipv4Addr| -> u32 {
            let a = u32::from(a);
            *n.eip_index.entry(a).or_insert_with(|| {
                n.eips.push(Eip {
                    addr: a,
                    ports: core::array::from_fn(|_| PortSet::new(lo, hi)),
                });
                n.eips.len() as u32 - 1
            })
        };
        let mut dnat_targets = FlowMap::<FlowKey, ()>::default();
        for r in dnat {
            let (e, i) = (ip(&r.external), ip(&r.internal));
            match r.protocol {
                DnatProtocol::Any => {
                    if n.dnat_whole.contains_key(&e) || n.eip_index.contains_key(&e) {
                        return Err(NaptConfigError::WholeIpShared {
                            eip: *r.external.ip(),
                        });
                    }
                    if n.dnat_whole_rev.insert(i, e).is_some() {
                        return Err(NaptConfigError::DnatTargetTwice {
                            internal: r.internal,
                        });
                    }
                    n.dnat_whole.insert(e, i);
                }
                DnatProtocol::Tcp | DnatProtocol::Udp => {
                    let p = if r.protocol == DnatProtocol::Tcp {
                        Protocol::Tcp
                    } else {
                        Protocol::Udp
                    };
                    if n.dnat_whole.contains_key(&e) {
                        return Err(NaptConfigError::WholeIpShared {
                            eip: *r.external.ip(),
                        });
                    }
                    let k = FlowKey::new(p, e, r.external.port(), 0, 0);
                    if n.dnat_ports.insert(k, (i, r.internal.port())).is_some() {
                        return Err(NaptConfigError::DuplicateDnat {
                            external: r.external,
                        });
                    }
                    let t = FlowKey::new(p, i, r.internal.port(), 0, 0);
                    if dnat_targets.insert(t, ()).is_some() {
                        return Err(NaptConfigError::DnatTargetTwice {
                            internal: r.internal,
                        });
                    }
                    let x = eip_of(&mut n, *r.external.ip()) as usize;
                    n.eips[x].ports[p.index()].take(r.external.port());
                }
            }
        }
        for r in snat {
            if r.prefix_len > 32 {
                return Err(NaptConfigError::BadPrefix {
                    source: r.source,
                    prefix_len: r.prefix_len,
                });
            }
            if r.eips.is_empty() {
                return Err(NaptConfigError::SnatWithoutEip {
                    source: r.source,
                    prefix_len: r.prefix_len,
                });
            }
            let mask = u32::MAX.checked_shl(32 - r.prefix_len as u32).unwrap_or(0);
            let mut eips = Vec::new();
            for a in &r.eips {
                if n.dnat_whole.contains_key(&u32::from(*a)) {
                    return Err(NaptConfigError::WholeIpShared { eip: *a });
                }
                let x = eip_of(&mut n, *a);
                if !eips.contains(&x) {
                    eips.push(x);
                }
            }
            n.snat.push(Snat {
                net: u32::from(r.source) & mask,
                mask,
                eips,
            });
        }
        // Whole-IP DNAT addresses are external addresses too (for hairpinning), with no
        // SNAT ports.
        let whole: Vec<u32> = n.dnat_whole.keys().copied().collect();
        for e in whole {
            n.eip_index.insert(e, NONE);
        }
        // Most specific entry first; among equals, the order given.
        n.snat
            .sort_by_key(|s| core::cmp::Reverse(s.mask.count_ones()));
        Ok(n)
    }

    /// Whether these rules let an SNAT mapping of host `int_ip` on `p` keep `ext`: the
    /// host's SNAT entry (the most specific one covering it, which its new flows use) lists
    /// the address, no whole-IP DNAT entry maps the host, the port is in the SNAT range
    /// `ports` and no DNAT entry forwards it. The address's index in `eips` if so.
    fn snat_keeps(
        &self,
        ports: &RangeInclusive<u16>,
        p: Protocol,
        int_ip: u32,
        ext: (u32, u16),
    ) -> Option<u32> {
        if self.dnat_whole_rev.contains_key(&int_ip)
            || !ports.contains(&ext.1)
            || self
                .dnat_ports
                .contains_key(&FlowKey::new(p, ext.0, ext.1, 0, 0))
        {
            return None;
        }
        let entry = self.snat.iter().find(|s| int_ip & s.mask == s.net)?;
        let &x = self.eip_index.get(&ext.0)?;
        entry.eips.contains(&x).then_some(x)
    }

    /// Whether a DNAT entry of these rules forwards `ext` on `p` to `int`, exactly.
    fn forwards(&self, p: Protocol, int: (u32, u16), ext: (u32, u16)) -> bool {
        let port = p != Protocol::Icmp
            && self
                .dnat_ports
                .get(&FlowKey::new(p, ext.0, ext.1, 0, 0))
                .is_some_and(|&i| i == int);
        port || (self.dnat_whole.get(&ext.0) == Some(&int.0) && ext.1 == int.1)
    }
}

impl Napt {
    /// Checks the rules against each other and builds an empty table.
    pub fn new(
        cfg: NaptConfig,
        snat: Vec<SnatRule>,
        dnat: Vec<DnatRule>,
    ) -> Result<Napt, NaptConfigError> {
        let rules = Rules::build(&cfg.ports, &snat, &dnat)?;
        Ok(Napt {
            cfg,
            snat_rules: snat,
            dnat_rules: dnat,
            rules,
            sessions: Vec::new(),
            free_sessions: Vec::new(),
            live: 0,
            out_index: FlowIndex::default(),
            in_index: FlowIndex::default(),
            mappings: Vec::new(),
            free_mappings: Vec::new(),
            map_by_int: FlowMap::default(),
            map_by_ext: FlowMap::default(),
            hosts: FlowMap::default(),
            permits: FlowMap::default(),
            wheel: Wheel::new(),
            expired: Vec::new(),
            allocations: 0,
            drops: [0; NaptDrop::COUNT],
        })
    }

    /// Replaces the rules, checked as [`Napt::new`] checks them (on error nothing changes).
    ///
    /// A flow stays, with the same external address and port, while the new rules would
    /// still translate it so:
    /// - an SNAT mapping (and its sessions) while its external address is one of the EIPs of
    ///   the SNAT entry that now covers its internal host (the most specific one: the entry
    ///   the host's new flows use) and no whole-IP DNAT entry maps the host;
    /// - a DNAT session while its entry is there unchanged (the same external address, port
    ///   and protocol to the same internal address and port; for a whole-IP entry, the same
    ///   two addresses);
    /// - and, either way, while its remote is one of the gateway's addresses exactly when it
    ///   was (a hairpinned flow whose far end is no longer the gateway's ends, and so does a
    ///   flow to an address that has become the gateway's: its packets would leave for the
    ///   Internet instead of turning back inside).
    ///
    /// Everything else ends at once: its sessions and mappings are removed and their ports
    /// freed, so no packet is translated by a rule that is gone. The flow's next packet from
    /// inside is a new flow under the new rules (refused with [`NaptDrop::NoSnatRule`] if
    /// none covers the host); a packet to its old external port finds nothing.
    ///
    /// A new port-forward DNAT entry whose external port (and protocol) an SNAT mapping
    /// holds takes the port: the mapping and its sessions end, as if the port had been
    /// reserved from the start (SNAT never hands out a DNAT entry's port).
    pub fn set_rules(
        &mut self,
        snat: Vec<SnatRule>,
        dnat: Vec<DnatRule>,
    ) -> Result<(), NaptConfigError> {
        let rules = Rules::build(&self.cfg.ports, &snat, &dnat)?;
        self.adopt(self.cfg.clone(), rules);
        self.snat_rules = snat;
        self.dnat_rules = dnat;
        Ok(())
    }

    /// Replaces the configuration, checked as [`Napt::new`] checks it (on error nothing
    /// changes). Flows carry on under it, except where the old one made them:
    /// - timeouts: each session's deadline becomes its last packet plus the new timeout of
    ///   its state, so a shorter timeout may end idle sessions at the next
    ///   [`Napt::handle_timeout`];
    /// - `max_sessions` below the live sessions: they carry on, and new flows are refused
    ///   until fewer are left;
    /// - `filtering`, `port_preservation`: from the next new flow on;
    /// - `hairpinning` turned off: the hairpinned sessions end;
    /// - `ports`: SNAT mappings on ports outside the new range end;
    /// - `mapping`, or `pooling` turned to paired: every SNAT mapping (and its sessions)
    ///   ends, since the old behaviour made them (which flows share a mapping, or a host's
    ///   spread over several EIPs). DNAT sessions stay.
    pub fn set_config(&mut self, cfg: NaptConfig) -> Result<(), NaptConfigError> {
        let rules = Rules::build(&cfg.ports, &self.snat_rules, &self.dnat_rules)?;
        self.adopt(cfg, rules);
        Ok(())
    }

    /// Puts `cfg` and `rules` in force, keeping the flows they would translate as before
    /// ([`Napt::set_rules`], [`Napt::set_config`]) and removing the others.
    fn adopt(&mut self, cfg: NaptConfig, rules: Rules) {
        let snat_reset = cfg.mapping != self.cfg.mapping
            || (cfg.pooling == Pooling::Paired && self.cfg.pooling != Pooling::Paired);
        // The mappings that stay -> their EIP's index under the new rules.
        let mut kept = FlowMap::<u32, u32>::default();
        if !snat_reset {
            for &m in self.map_by_ext.values() {
                let mp = &self.mappings[m as usize];
                let ext = (mp.ext_ip, mp.ext_port);
                if let Some(x) = rules.snat_keeps(&cfg.ports, mp.proto, mp.int_ip, ext) {
                    kept.insert(m, x);
                }
            }
        }
        let hairpin_off = self.cfg.hairpinning && !cfg.hairpinning;
        let ending: Vec<u32> = (0..self.sessions.len() as u32)
            .filter(|&i| {
                let s = &self.sessions[i as usize];
                let stays = if s.mapping != NONE {
                    kept.contains_key(&s.mapping)
                } else {
                    rules.forwards(s.proto, (s.int_ip, s.int_port), (s.ext_ip, s.ext_port))
                };
                s.live
                    && !(stays
                        && s.hairpin == rules.eip_index.contains_key(&s.rem_ip)
                        && !(hairpin_off && s.hairpin))
            })
            .collect();
        // While the tables still follow the old rules and configuration.
        for i in ending {
            self.remove_session(i);
        }
        self.rules = rules;
        // The mappings left are the kept ones (a mapping lives while a session does): their
        // EIPs' new indices, and their ports taken in the new port sets.
        for &m in self.map_by_ext.values() {
            let mp = &mut self.mappings[m as usize];
            mp.eip = kept[&m];
            self.rules.eips[mp.eip as usize].ports[mp.proto.index()].take(mp.ext_port);
            if let Some(h) = self.hosts.get_mut(&mp.int_ip) {
                h.eip = mp.eip;
            }
        }
        if cfg.pooling != Pooling::Paired {
            self.hosts.clear();
        }
        if cfg.filtering != self.cfg.filtering {
            self.permits.clear();
            if cfg.filtering == Behaviour::AddressDependent {
                for s in self.sessions.iter().filter(|s| s.live && s.mapping != NONE) {
                    *self.permits.entry(permit(s.mapping, s.rem_ip)).or_insert(0) += 1;
                }
            }
        }
        let timeouts = |c: &NaptConfig| {
            (
                c.tcp_established_ns,
                c.tcp_transitory_ns,
                c.udp_ns,
                c.icmp_ns,
            )
        };
        if timeouts(&cfg) != timeouts(&self.cfg) {
            for i in 0..self.sessions.len() as u32 {
                let s = &mut self.sessions[i as usize];
                if !s.live {
                    continue;
                }
                let before = s.expires;
                let last = before.saturating_sub(s.timeout(&self.cfg));
                s.expires = last.saturating_add(s.timeout(&cfg));
                if s.expires < before {
                    self.refile(i);
                }
            }
        }
        self.cfg = cfg;
    }

    pub fn config(&self) -> &NaptConfig {
        &self.cfg
    }

    /// Live sessions (expired ones not yet reclaimed included).
    pub fn sessions(&self) -> usize {
        self.live
    }

    /// Live mappings.
    pub fn mappings(&self) -> usize {
        self.map_by_ext.len()
    }

    /// Packets refused so far, by reason ([`NaptDrop::index`]).
    pub fn drop_counts(&self) -> &[u64; NaptDrop::COUNT] {
        &self.drops
    }

    #[inline(always)]
    fn count<T>(&mut self, r: Result<T, NaptDrop>) -> Result<T, NaptDrop> {
        if let Err(d) = r {
            self.drops[d.index()] += 1;
        }
        r
    }

    /// A packet from inside (`src` private) to `dst`: its new source, and its new
    /// destination when it is hairpinned back inside.
    pub fn outbound(
        &mut self,
        now: u64,
        proto: Proto,
        src: SocketAddrV4,
        dst: SocketAddrV4,
    ) -> Result<Translation, NaptDrop> {
        let found = self.out_index.get(&out_key(proto, src, dst)).copied();
        self.outbound_found(now, proto, src, dst, found)
    }

    /// [`Napt::outbound`] once `out_index` has answered `found`.
    #[inline(always)]
    fn outbound_found(
        &mut self,
        now: u64,
        proto: Proto,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        found: Option<u32>,
    ) -> Result<Translation, NaptDrop> {
        if let Some(i) = found {
            let s = &mut self.sessions[i as usize];
            if s.expires > now {
                if s.touch(&self.cfg, now, proto, true) {
                    self.refile(i);
                }
                let s = &self.sessions[i as usize];
                let new_src = sock(s.ext_ip, s.ext_port);
                if !s.hairpin {
                    return Ok(Translation {
                        src: new_src,
                        dst,
                        hairpin: false,
                    });
                }
                let r = self.hairpin(now, proto, new_src, dst);
                return self.count(r);
            }
            self.remove_session(i);
        }
        let r = self.outbound_new(now, proto, src, dst);
        self.count(r)
    }

    /// A packet from the Internet (`src` remote) to `dst`, one of the gateway's external
    /// addresses: its new destination.
    pub fn inbound(
        &mut self,
        now: u64,
        proto: Proto,
        src: SocketAddrV4,
        dst: SocketAddrV4,
    ) -> Result<SocketAddrV4, NaptDrop> {
        let r = self.inbound_inner(now, proto, src, dst);
        self.count(r)
    }

    #[inline(always)]
    fn inbound_inner(
        &mut self,
        now: u64,
        proto: Proto,
        src: SocketAddrV4,
        dst: SocketAddrV4,
    ) -> Result<SocketAddrV4, NaptDrop> {
        let found = self.in_index.get(&in_key(proto, src, dst)).copied();
        self.inbound_found(now, proto, src, dst, found)
    }

    /// [`Napt::inbound_inner`] once `in_index` has answered `found`.
    #[inline(always)]
    fn inbound_found(
        &mut self,
        now: u64,
        proto: Proto,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        found: Option<u32>,
    ) -> Result<SocketAddrV4, NaptDrop> {
        if let Some(i) = found {
            let s = &mut self.sessions[i as usize];
            if s.expires > now {
                let int = sock(s.int_ip, s.int_port);
                if s.touch(&self.cfg, now, proto, false) {
                    self.refile(i);
                }
                return Ok(int);
            }
            self.remove_session(i);
        }
        let rem = (ip(&src), remote_port(proto.protocol(), src.port()));
        self.inbound_new(now, proto, rem, dst)
    }

    /// [`Napt::outbound`] of each of `flows` in turn, `(proto, src, dst)`, its answer in the
    /// same place of `out` (as long as `flows`): exactly what one call after the other
    /// gives, only faster once the sessions outgrow the caches.
    ///
    /// The batch runs as a pipeline: while flow `i` is translated, the index line of flow
    /// `i + 2D` is being fetched (its address follows from the flow alone), and the session
    /// of flow `i + D`, which its index line (fetched meanwhile) names. So each flow's two
    /// misses are under way long before it needs them, instead of one after the other. What
    /// the index answered ahead is used only if the index has not changed since (a new or
    /// ended session on the way); else the flow is looked up again.
    pub fn outbound_batch(
        &mut self,
        now: u64,
        flows: &[(Proto, SocketAddrV4, SocketAddrV4)],
        out: &mut [Result<Translation, NaptDrop>],
    ) {
        assert_eq!(flows.len(), out.len(), "one answer per flow");
        self.pipeline(
            Dir::Out,
            flows,
            |&(p, s, d)| out_key(p, s, d),
            |n, i, found| {
                let (p, s, d) = flows[i];
                // Counts its own drops, as `outbound` does.
                out[i] = n.outbound_found(now, p, s, d, found);
            },
        );
    }

    /// [`Napt::inbound`] of each of `flows` in turn, `(proto, src, dst)`, as
    /// [`Napt::outbound_batch`] does [`Napt::outbound`].
    pub fn inbound_batch(
        &mut self,
        now: u64,
        flows: &[(Proto, SocketAddrV4, SocketAddrV4)],
        out: &mut [Result<SocketAddrV4, NaptDrop>],
    ) {
        assert_eq!(flows.len(), out.len(), "one answer per flow");
        self.pipeline(
            Dir::In,
            flows,
            |&(p, s, d)| in_key(p, s, d),
            |n, i, found| {
                let (p, s, d) = flows[i];
                let r = n.inbound_found(now, p, s, d, found);
                out[i] = n.count(r);
            },
        );
    }

    /// Runs `each(self, i, what the index holds for flow i)` for every flow in order, with
    /// index lines fetched `2D` flows ahead and sessions `D` ahead.
    #[inline(always)]
    fn pipeline<F>(
        &mut self,
        d: Dir,
        flows: &[F],
        key: impl Fn(&F) -> FlowKey,
        mut each: impl FnMut(&mut Self, usize, Option<u32>),
    ) {
        const D: usize = BATCH_DISTANCE;
        const R: usize = 4 * D; // ring slots, a power of two above 2D
        let mut ring = [Ahead {
            key: FlowKey::EMPTY,
            home: 0,
            gen: 0,
            found: None,
        }; R];
        let n = flows.len();
        // Stage 1, flow j: its key and first slot; fetch that line.
        let stage1 = |me: &Self, ring: &mut [Ahead; R], j: usize| {
            let ix = me.index(d);
            let k = key(&flows[j]);
            let home = ix.home(k);
            ix.prefetch_home(home);
            ring[j % R] = Ahead {
                key: k,
                home,
                gen: ix.generation(),
                found: None,
            };
        };
        // Stage 2, flow j: read its line; fetch its session.
        let stage2 = |me: &Self, ring: &mut [Ahead; R], j: usize| {
            let ix = me.index(d);
            let a = &mut ring[j % R];
            if a.gen != ix.generation() {
                a.home = ix.home(a.key);
                a.gen = ix.generation();
            }
            a.found = ix.get_from(a.home, a.key);
            if let Some(s) = a.found.and_then(|i| me.sessions.get(i as usize)) {
                crate::engine::prefetch(s);
            }
        };
        for j in 0..n.min(2 * D) {
            stage1(self, &mut ring, j);
        }
        for j in 0..n.min(D) {
            stage2(self, &mut ring, j);
        }
        for i in 0..n {
            if i + 2 * D < n {
                stage1(self, &mut ring, i + 2 * D);
            }
            if i + D < n {
                stage2(self, &mut ring, i + D);
            }
            let a = ring[i % R];
            let ix = self.index(d);
            let found = if a.gen == ix.generation() {
                a.found
            } else {
                ix.get(&a.key).copied()
            };
            each(self, i, found);
        }
    }

    #[inline(always)]
    fn index(&self, d: Dir) -> &FlowIndex {
        match d {
            Dir::Out => &self.out_index,
            Dir::In => &self.in_index,
        }
    }

    /// The second half of a hairpinned packet: it arrives at `dst` from `from`, the
    /// sender's external address, as if from the Internet (RFC 4787 REQ-9b: the receiver
    /// sees the sender's external address, never its private one).
    #[cold]
    fn hairpin(
        &mut self,
        now: u64,
        proto: Proto,
        from: SocketAddrV4,
        dst: SocketAddrV4,
    ) -> Result<Translation, NaptDrop> {
        // An ICMP query's identifier is the one "port": the translated one travels on.
        let to = match proto {
            Proto::IcmpQuery => SocketAddrV4::new(*dst.ip(), from.port()),
            _ => dst,
        };
        let new_dst = self.inbound_inner(now, proto, from, to)?;
        Ok(Translation {
            src: from,
            dst: new_dst,
            hairpin: true,
        })
    }

    #[cold]
    fn outbound_new(
        &mut self,
        now: u64,
        proto: Proto,
        src: SocketAddrV4,
        dst: SocketAddrV4,
    ) -> Result<Translation, NaptDrop> {
        let p = proto.protocol();
        let int = (ip(&src), src.port());
        let rem = (ip(&dst), remote_port(p, dst.port()));
        if !self.cfg.hairpinning && self.rules.eip_index.contains_key(&rem.0) {
            return Err(NaptDrop::HairpinOff);
        }
        // New flows keep the wheel's clock current (and reclaim what is due), so that it
        // files the new session under its true deadline. Before any lookup: it may free
        // mappings.
        self.handle_timeout(now);
        self.room()?;
        let (ext, mapping) = match self.rules.dnat_whole_rev.get(&int.0) {
            Some(&e) => ((e, int.1), NONE),
            None => {
                let m = self.mapping_for(p, int, rem)?;
                let m_ = &self.mappings[m as usize];
                ((m_.ext_ip, m_.ext_port), m)
            }
        };
        let i = self.create(now, proto, true, int, ext, rem, mapping)?;
        let s = &self.sessions[i as usize];
        let new_src = sock(s.ext_ip, s.ext_port);
        if !s.hairpin {
            return Ok(Translation {
                src: new_src,
                dst,
                hairpin: false,
            });
        }
        let r = self.hairpin(now, proto, new_src, dst);
        if r.is_err() {
            // Nothing came of it: leave no state behind.
            self.remove_session(i);
        }
        r
    }

    #[cold]
    fn inbound_new(
        &mut self,
        now: u64,
        proto: Proto,
        rem: (u32, u16),
        dst: SocketAddrV4,
    ) -> Result<SocketAddrV4, NaptDrop> {
        let p = proto.protocol();
        let ext = (ip(&dst), dst.port());
        self.handle_timeout(now);
        // DNAT entries first. SNAT never allocates a port a DNAT entry holds, nor an IP a
        // whole-IP entry holds, so this order only decides which lookup runs first.
        let forward = match p {
            Protocol::Tcp | Protocol::Udp => self
                .rules
                .dnat_ports
                .get(&FlowKey::new(p, ext.0, ext.1, 0, 0))
                .copied(),
            Protocol::Icmp => None,
        }
        .or_else(|| self.rules.dnat_whole.get(&ext.0).map(|&i| (i, ext.1)));
        if let Some(int) = forward {
            self.room()?;
            self.create(now, proto, false, int, ext, rem, NONE)?;
            return Ok(sock(int.0, int.1));
        }
        if !self.rules.eip_index.contains_key(&ext.0) {
            return Err(NaptDrop::UnknownDestination);
        }
        let m = *self
            .map_by_ext
            .get(&FlowKey::new(p, ext.0, ext.1, 0, 0))
            .ok_or(NaptDrop::NoSession)?;
        let admitted = match self.cfg.filtering {
            Behaviour::EndpointIndependent => true,
            Behaviour::AddressDependent => self.permits.contains_key(&permit(m, rem.0)),
            // Only the remotes the host sent to, i.e. existing sessions, which the index
            // lookup before this would have found.
            Behaviour::AddressAndPortDependent => false,
        };
        if !admitted {
            return Err(NaptDrop::Filtered);
        }
        self.room()?;
        let mp = self.mappings[m as usize];
        let int = (mp.int_ip, mp.int_port);
        self.create(now, proto, false, int, ext, rem, m)?;
        Ok(sock(int.0, int.1))
    }

    /// Room for one more session (what had expired was reclaimed just before).
    fn room(&self) -> Result<(), NaptDrop> {
        if self.live >= self.cfg.max_sessions || self.live >= NONE as usize - 1 {
            return Err(NaptDrop::TableFull);
        }
        Ok(())
    }

    /// The mapping for a new flow of `int` to `rem`: an existing one the mapping behaviour
    /// lets it share, or a new one.
    fn mapping_for(
        &mut self,
        p: Protocol,
        int: (u32, u16),
        rem: (u32, u16),
    ) -> Result<u32, NaptDrop> {
        let r = self
            .rules
            .snat
            .iter()
            .position(|s| int.0 & s.mask == s.net)
            .ok_or(NaptDrop::NoSnatRule)?;
        let key = match self.cfg.mapping {
            Behaviour::EndpointIndependent => FlowKey::new(p, int.0, int.1, 0, 0),
            Behaviour::AddressDependent => FlowKey::new(p, int.0, int.1, rem.0, 0),
            Behaviour::AddressAndPortDependent => FlowKey::new(p, int.0, int.1, rem.0, rem.1),
        };
        if let Some(&m) = self.map_by_int.get(&key) {
            return Ok(m);
        }
        let (eip, port) = self.allocate(p, r, int, rem)?;
        let ext_ip = self.rules.eips[eip as usize].addr;
        let mapping = Mapping {
            key,
            proto: p,
            int_ip: int.0,
            int_port: int.1,
            ext_ip,
            ext_port: port,
            eip,
            sessions: 0,
        };
        let m = match self.free_mappings.pop() {
            Some(m) => {
                self.mappings[m as usize] = mapping;
                m
            }
            None => {
                self.mappings.push(mapping);
                self.mappings.len() as u32 - 1
            }
        };
        self.map_by_int.insert(key, m);
        self.map_by_ext
            .insert(FlowKey::new(p, ext_ip, port, 0, 0), m);
        if self.cfg.pooling == Pooling::Paired {
            self.hosts
                .entry(int.0)
                .or_insert(Host { eip, mappings: 0 })
                .mappings += 1;
        }
        Ok(m)
    }

    /// An external IP and port for a new mapping of `int`, from SNAT entry `r`.
    fn allocate(
        &mut self,
        p: Protocol,
        r: usize,
        int: (u32, u16),
        rem: (u32, u16),
    ) -> Result<(u32, u16), NaptDrop> {
        self.allocations = self.allocations.wrapping_add(1);
        let flow = spread(
            (int.0 as u64) << 16 | int.1 as u64,
            ((rem.0 as u64) << 16 | rem.1 as u64) ^ (self.allocations << 48),
        );
        let snat = &self.rules.snat[r];
        let n = snat.eips.len();
        // Paired: the host's IP if it has one, else a choice that depends on the host only.
        let (first, count) = match (self.cfg.pooling, self.hosts.get(&int.0)) {
            (Pooling::Paired, Some(h)) => match snat.eips.iter().position(|&e| e == h.eip) {
                Some(x) => (x, 1),
                None => return Err(NaptDrop::PortsExhausted),
            },
            (Pooling::Paired, None) => (spread(int.0 as u64, 0) as usize % n, n),
            (Pooling::Arbitrary, _) => (flow as usize % n, n),
        };
        let candidates = (0..count).map(|k| snat.eips[(first + k) % n]);
        let chosen =
            if self.cfg.port_preservation && self.cfg.ports.contains(&int.1) && p != Protocol::Icmp
            {
                candidates
                    .clone()
                    .find(|&e| self.rules.eips[e as usize].ports[p.index()].is_free(int.1))
                    .map(|e| (e, int.1))
            } else {
                None
            };
        let (lo, hi) = (*self.cfg.ports.start() as u64, *self.cfg.ports.end() as u64);
        let start = (lo + (flow >> 32) % (hi - lo + 1)) as u16;
        let chosen = chosen.or_else(|| {
            candidates.clone().find_map(|e| {
                self.rules.eips[e as usize].ports[p.index()]
                    .find_free(start)
                    .map(|port| (e, port))
            })
        });
        let (e, port) = chosen.ok_or(NaptDrop::PortsExhausted)?;
        self.rules.eips[e as usize].ports[p.index()].take(port);
        Ok((e, port))
    }

    /// Adds a session; the first packet went `outbound` or not.
    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        now: u64,
        proto: Proto,
        outbound: bool,
        int: (u32, u16),
        ext: (u32, u16),
        rem: (u32, u16),
        mapping: u32,
    ) -> Result<u32, NaptDrop> {
        debug_assert!(self.live < self.cfg.max_sessions, "room() comes first");
        let mut s = Session {
            expires: 0,
            int_ip: int.0,
            ext_ip: ext.0,
            rem_ip: rem.0,
            mapping,
            links: Links::UNLINKED,
            int_port: int.1,
            ext_port: ext.1,
            rem_port: rem.1,
            proto: proto.protocol(),
            tcp: 0,
            hairpin: self.rules.eip_index.contains_key(&rem.0),
            live: true,
        };
        let (ko, ki) = (s.out_key(), s.in_key());
        if self.out_index.contains_key(&ko) || self.in_index.contains_key(&ki) {
            if mapping != NONE {
                self.release_mapping_if_unused(mapping);
            }
            return Err(NaptDrop::Conflict);
        }
        let _ = s.touch(&self.cfg, now, proto, outbound);
        let i = match self.free_sessions.pop() {
            Some(i) => {
                self.sessions[i as usize] = s;
                i
            }
            None => {
                self.sessions.push(s);
                self.sessions.len() as u32 - 1
            }
        };
        self.out_index.insert(ko, i);
        self.in_index.insert(ki, i);
        self.wheel.insert(&mut self.sessions, i, s.expires);
        self.live += 1;
        if mapping != NONE {
            self.mappings[mapping as usize].sessions += 1;
            if self.cfg.filtering == Behaviour::AddressDependent {
                *self.permits.entry(permit(mapping, rem.0)).or_insert(0) += 1;
            }
        }
        Ok(i)
    }

    #[cold]
    fn refile(&mut self, i: u32) {
        self.wheel.remove(&mut self.sessions, i);
        let e = self.sessions[i as usize].expires;
        self.wheel.insert(&mut self.sessions, i, e);
    }

    fn remove_session(&mut self, i: u32) {
        let s = self.sessions[i as usize];
        if !s.live {
            return;
        }
        self.out_index.remove(&s.out_key());
        self.in_index.remove(&s.in_key());
        self.wheel.remove(&mut self.sessions, i);
        self.sessions[i as usize].live = false;
        self.free_sessions.push(i);
        self.live -= 1;
        if s.mapping != NONE {
            if self.cfg.filtering == Behaviour::AddressDependent {
                let k = permit(s.mapping, s.rem_ip);
                if let Some(c) = self.permits.get_mut(&k) {
                    *c -= 1;
                    if *c == 0 {
                        self.permits.remove(&k);
                    }
                }
            }
            let m = &mut self.mappings[s.mapping as usize];
            m.sessions = m.sessions.saturating_sub(1);
            self.release_mapping_if_unused(s.mapping);
        }
    }

    /// A mapping lives as long as one of its sessions does.
    fn release_mapping_if_unused(&mut self, m: u32) {
        let mp = self.mappings[m as usize];
        if mp.sessions > 0 {
            return;
        }
        if self.map_by_int.get(&mp.key) != Some(&m) {
            return; // already released
        }
        self.map_by_int.remove(&mp.key);
        self.map_by_ext
            .remove(&FlowKey::new(mp.proto, mp.ext_ip, mp.ext_port, 0, 0));
        self.rules.eips[mp.eip as usize].ports[mp.proto.index()].release(mp.ext_port);
        if self.cfg.pooling == Pooling::Paired {
            if let Some(h) = self.hosts.get_mut(&mp.int_ip) {
                h.mappings = h.mappings.saturating_sub(1);
                if h.mappings == 0 {
                    self.hosts.remove(&mp.int_ip);
                }
            }
        }
        self.free_mappings.push(m);
    }

    /// An ICMP error from the Internet about a packet the gateway sent out (RFC 5508
    /// REQ-4): the quoted packet went from `quoted_src` (an external address) to
    /// `quoted_dst`. The session is neither refreshed nor ended (RFC 5382 REQ-10).
    pub fn icmp_error_inbound(
        &mut self,
        now: u64,
        outer_src: Ipv4Addr,
        quoted: Protocol,
        quoted_src: SocketAddrV4,
        quoted_dst: SocketAddrV4,
    ) -> Result<IcmpErrorTranslation, NaptDrop> {
        let k = FlowKey::new(
            quoted,
            ip(&quoted_src),
            quoted_src.port(),
            ip(&quoted_dst),
            remote_port(quoted, quoted_dst.port()),
        );
        let r = match self.live_session(&self.in_index, k, now) {
            Some(s) => Ok(IcmpErrorTranslation {
                outer_src,
                outer_dst: Ipv4Addr::from(s.int_ip),
                quoted_src: sock(s.int_ip, s.int_port),
                quoted_dst,
            }),
            None => Err(NaptDrop::NoSession),
        };
        self.count(r)
    }

    /// An ICMP error from inside about a packet the gateway delivered (RFC 5508 REQ-5): the
    /// quoted packet went from `quoted_src` (a remote) to `quoted_dst` (a private host). The
    /// outer source becomes the session's external IP, whoever inside sent the error. About
    /// a hairpinned flow, it goes back inside to the other host.
    pub fn icmp_error_outbound(
        &mut self,
        now: u64,
        outer_dst: Ipv4Addr,
        quoted: Protocol,
        quoted_src: SocketAddrV4,
        quoted_dst: SocketAddrV4,
    ) -> Result<IcmpErrorTranslation, NaptDrop> {
        let k = FlowKey::new(
            quoted,
            ip(&quoted_dst),
            quoted_dst.port(),
            ip(&quoted_src),
            remote_port(quoted, quoted_src.port()),
        );
        let r = match self.live_session(&self.out_index, k, now) {
            Some(s) => {
                let mut t = IcmpErrorTranslation {
                    outer_src: Ipv4Addr::from(s.ext_ip),
                    outer_dst,
                    quoted_src,
                    quoted_dst: sock(s.ext_ip, s.ext_port),
                };
                if s.hairpin {
                    let back = FlowKey::new(
                        quoted,
                        ip(&quoted_src),
                        quoted_src.port(),
                        s.ext_ip,
                        remote_port(quoted, s.ext_port),
                    );
                    match self.live_session(&self.in_index, back, now) {
                        Some(o) => {
                            t.outer_dst = Ipv4Addr::from(o.int_ip);
                            t.quoted_src = sock(o.int_ip, o.int_port);
                            Ok(t)
                        }
                        None => Err(NaptDrop::NoSession),
                    }
                } else {
                    Ok(t)
                }
            }
            None => Err(NaptDrop::NoSession),
        };
        self.count(r)
    }

    fn live_session(&self, index: &FlowIndex, k: FlowKey, now: u64) -> Option<Session> {
        let &i = index.get(&k)?;
        let s = self.sessions[i as usize];
        (s.expires > now).then_some(s)
    }

    /// When [`Napt::handle_timeout`] next has something to do (it may then find only
    /// refreshed sessions to file again), or `None` with no sessions.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.wheel.next_deadline()
    }

    /// Reclaims the sessions whose idle timeout has passed by `now` (to the wheel's
    /// one-second granularity), and mappings left with no session.
    pub fn handle_timeout(&mut self, now: u64) {
        let mut expired = core::mem::take(&mut self.expired);
        self.wheel.advance(&mut self.sessions, now, &mut expired);
        for &i in &expired {
            self.remove_session(i);
        }
        expired.clear();
        self.expired = expired;
    }

    /// Every index agrees with the slabs, and every session and mapping with the rules and
    /// configuration in force (tests only).
    #[cfg(test)]
    fn check_invariants(&self) {
        let live: Vec<u32> = (0..self.sessions.len() as u32)
            .filter(|&i| self.sessions[i as usize].live)
            .collect();
        assert_eq!(live.len(), self.live);
        assert_eq!(self.out_index.len(), self.live);
        assert_eq!(self.in_index.len(), self.live);
        assert_eq!(self.wheel.len(), self.live);
        // (`max_sessions` bounds the new sessions, checked where they are made: a lower
        // bound set while more were live lets those carry on.)
        let mut permits = FlowMap::<u64, u32>::default();
        for &i in &live {
            let s = &self.sessions[i as usize];
            assert_eq!(self.out_index.get(&s.out_key()), Some(&i));
            assert_eq!(self.in_index.get(&s.in_key()), Some(&i));
            assert_eq!(
                s.hairpin,
                self.rules.eip_index.contains_key(&s.rem_ip),
                "a session to one of the gateway's addresses is hairpinned, no other"
            );
            if s.mapping == NONE {
                let (int, ext) = ((s.int_ip, s.int_port), (s.ext_ip, s.ext_port));
                assert!(
                    self.rules.forwards(s.proto, int, ext),
                    "a DNAT session without its entry"
                );
            } else {
                let mp = &self.mappings[s.mapping as usize];
                assert_eq!(self.map_by_int.get(&mp.key), Some(&s.mapping));
                assert_eq!(
                    (mp.proto, mp.int_ip, mp.int_port, mp.ext_ip, mp.ext_port),
                    (s.proto, s.int_ip, s.int_port, s.ext_ip, s.ext_port)
                );
                *permits.entry(permit(s.mapping, s.rem_ip)).or_insert(0) += 1;
            }
        }
        if self.cfg.filtering == Behaviour::AddressDependent {
            assert_eq!(self.permits, permits);
        } else {
            assert!(self.permits.is_empty());
        }
        assert_eq!(self.map_by_int.len(), self.map_by_ext.len());
        // Ports each (EIP, protocol) holds inside the SNAT range.
        let in_range = |p: u16| self.cfg.ports.contains(&p);
        let mut held = FlowMap::<(u32, usize), u32>::default();
        let mut hosts = FlowMap::<u32, Host>::default();
        for (k, &m) in self.map_by_ext.iter() {
            let mp = &self.mappings[m as usize];
            assert_eq!(*k, FlowKey::new(mp.proto, mp.ext_ip, mp.ext_port, 0, 0));
            assert_eq!(self.map_by_int.get(&mp.key), Some(&m));
            let n = live
                .iter()
                .filter(|&&i| self.sessions[i as usize].mapping == m)
                .count();
            assert_eq!(mp.sessions as usize, n);
            assert!(n > 0, "a mapping without sessions");
            let eip = &self.rules.eips[mp.eip as usize];
            assert_eq!(eip.addr, mp.ext_ip);
            assert!(!eip.ports[mp.proto.index()].is_free(mp.ext_port));
            assert_eq!(
                self.rules.snat_keeps(
                    &self.cfg.ports,
                    mp.proto,
                    mp.int_ip,
                    (mp.ext_ip, mp.ext_port)
                ),
                Some(mp.eip),
                "a mapping the SNAT entries in force could not have made"
            );
            if in_range(mp.ext_port) {
                *held.entry((mp.eip, mp.proto.index())).or_insert(0) += 1;
            }
            let h = hosts.entry(mp.int_ip).or_insert(Host {
                eip: mp.eip,
                mappings: 0,
            });
            h.mappings += 1;
            if self.cfg.pooling == Pooling::Paired {
                assert_eq!(h.eip, mp.eip, "paired pooling: one external IP per host");
            }
        }
        if self.cfg.pooling == Pooling::Paired {
            assert_eq!(self.hosts.len(), hosts.len());
            for (host, h) in hosts.iter() {
                let got = self.hosts.get(host).expect("a host with mappings");
                assert_eq!((got.eip, got.mappings), (h.eip, h.mappings));
            }
        } else {
            assert!(self.hosts.is_empty());
        }
        // Port-forward DNAT entries hold their ports for good; SNAT mappings hold theirs.
        for r in &self.dnat_rules {
            let p = match r.protocol {
                DnatProtocol::Tcp => Protocol::Tcp,
                DnatProtocol::Udp => Protocol::Udp,
                DnatProtocol::Any => continue,
            };
            let (e, port) = (ip(&r.external), r.external.port());
            let x = self.rules.eip_index[&e];
            assert!(!self.rules.eips[x as usize].ports[p.index()].is_free(port));
            assert!(!self
                .map_by_ext
                .contains_key(&FlowKey::new(p, e, port, 0, 0)));
            if in_range(port) {
                *held.entry((x, p.index())).or_insert(0) += 1;
            }
        }
        let size = *self.cfg.ports.end() as u32 - *self.cfg.ports.start() as u32 + 1;
        for (x, eip) in self.rules.eips.iter().enumerate() {
            assert_eq!(self.rules.eip_index.get(&eip.addr), Some(&(x as u32)));
            for (p, ps) in eip.ports.iter().enumerate() {
                let held = held.get(&(x as u32, p)).copied().unwrap_or(0);
                assert_eq!(ps.free(), size - held, "ports taken that nothing holds");
            }
        }
    }
}

#[inline(always)]
fn permit(m: u32, rem_ip: u32) -> u64 {
    (m as u64) << 32 | rem_ip as u64
}

#[cfg(test)]
mod tests;
