//! A synchronous, batched rtnetlink client: links, IPv4 addresses, routes and policy rules.
//!
//! Requests are queued in a [`Batch`] and sent by [`Netlink::apply`] many to a `send`, their
//! answers collected many to a `recvmmsg`. Each request is written the way `ip` would send it
//! (flags, protocol, scope, table), so `ip addr`, `ip route` and `ip rule` show the result
//! exactly as if `ip` had made it. Every failed request is reported with the request written as
//! an `ip` command, the namespace, and the kernel's answer:
//!
//! ```text
//! `route add default via 10.0.1.253 dev eth0 table 101` in namespace lab-a: File exists (os error 17)
//! ```
//!
//! A batch is not a transaction: the kernel applies each request on its own, and one that fails
//! does not stop the others. [`Mode::Idempotent`] requests treat "already there" (adds) and
//! "already gone" (deletes) as done, for apply-again and teardown.
//!
//! The messages come from `netlink-packet-route` (the message layer of the `rtnetlink` crate);
//! the socket from `netlink-sys`. A socket talks to the namespace of the thread that opened it,
//! for its whole life: see [`Netlink::open_in`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, RawFd};
use std::str::FromStr;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, Parseable, NLM_F_ACK, NLM_F_ACK_TLVS,
    NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkHeader, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::netns::NetnsHandle;

// ---------------------------------------------------------------------------------------------
// What can be asked

/// An IPv4 address with a prefix length, `10.0.1.5/24`: an interface address, a route's
/// destination or a rule's source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Cidr {
    /// `addr/prefix_len`; the prefix length must be at most 32.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Self, String> {
        if prefix_len > 32 {
            return Err(format!(
                "{addr}/{prefix_len}: an IPv4 prefix length is at most 32"
            ));
        }
        Ok(Self { addr, prefix_len })
    }

    /// `addr/32`.
    pub fn host(addr: Ipv4Addr) -> Self {
        Self {
            addr,
            prefix_len: 32,
        }
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    /// The network address: host bits cleared.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// The subnet's broadcast address: host bits set (what `ip addr add … brd +` sets).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    /// `10.0.1.5/24`, or a bare address for `/32`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IPv4 address with a prefix (like 10.0.1.5/24)");
        match s.split_once('/') {
            Some((a, l)) => {
                let addr = a.parse().map_err(|_| bad())?;
                let len = l.parse().map_err(|_| bad())?;
                Self::new(addr, len)
            }
            None => Ok(Self::host(s.parse().map_err(|_| bad())?)),
        }
    }
}

/// An IPv4 address on a device (`ip addr add CIDR dev DEV`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub dev: String,
    pub cidr: Ipv4Cidr,
    /// Also set the subnet's broadcast address, as `ip addr add … brd +` does (only for
    /// prefixes shorter than /31; /31 and /32 have none). Plain `ip addr add` sets none.
    pub broadcast: bool,
}

impl Address {
    pub fn new(dev: &str, cidr: Ipv4Cidr) -> Self {
        Self {
            dev: dev.to_string(),
            cidr,
            broadcast: false,
        }
    }

    /// With the subnet's broadcast address (`brd +`).
    pub fn with_broadcast(mut self) -> Self {
        self.broadcast = true;
        self
    }
}

/// An IPv4 unicast route (`ip route add …`). Build it with [`Route::default_route`] or
/// [`Route::to`] and the chained setters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// `None`: the default route.
    pub dst: Option<Ipv4Cidr>,
    /// The gateway (`via`).
    pub via: Option<Ipv4Addr>,
    /// The output device (`dev`).
    pub dev: Option<String>,
    /// Take the gateway as directly reachable on `dev` even if no subnet of the device holds it.
    pub onlink: bool,
    /// The route's priority (`metric`).
    pub metric: Option<u32>,
    /// The routing table; `None` is `main` (254).
    pub table: Option<u32>,
}

impl Route {
    /// `default`.
    pub fn default_route() -> Self {
        Self {
            dst: None,
            via: None,
            dev: None,
            onlink: false,
            metric: None,
            table: None,
        }
    }

    /// A route to `dst` (a `/0` destination is the default route).
    pub fn to(dst: Ipv4Cidr) -> Self {
        Self {
            dst: Some(dst).filter(|d| d.prefix_len > 0),
            ..Self::default_route()
        }
    }

    pub fn via(mut self, gateway: Ipv4Addr) -> Self {
        self.via = Some(gateway);
        self
    }

    pub fn dev(mut self, dev: &str) -> Self {
        self.dev = Some(dev.to_string());
        self
    }

    pub fn onlink(mut self) -> Self {
        self.onlink = true;
        self
    }

    pub fn metric(mut self, metric: u32) -> Self {
        self.metric = Some(metric);
        self
    }

    pub fn table(mut self, table: u32) -> Self {
        self.table = Some(table);
        self
    }
}

/// A policy rule `from CIDR lookup TABLE [priority P]`.
///
/// Without a priority the kernel picks one as it does for `ip rule add`: one less than the
/// priority of the first rule after the `local` rule (32765, then 32764, … on a fresh
/// namespace), so `ip rule` shows exactly what `ip rule add` would have made. The kernel then
/// cannot tell a repeated add from a new rule and would add a duplicate; [`Mode::Idempotent`]
/// therefore looks the rules up first and skips a rule that is already there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub from: Ipv4Cidr,
    pub table: u32,
    pub priority: Option<u32>,
}

impl Rule {
    /// `from ADDR lookup TABLE`.
    pub fn from_lookup(from: Ipv4Addr, table: u32) -> Self {
        Self {
            from: Ipv4Cidr::host(from),
            table,
            priority: None,
        }
    }

    pub fn priority(mut self, priority: u32) -> Self {
        self.priority = Some(priority);
        self
    }
}

/// One request. Its `Display` is the `ip` command that does the same (without `ip -n NS`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    LinkUp(String),
    LinkDown(String),
    LinkMtu(String, u32),
    /// A veth pair, both ends in this namespace (`ip link add NAME type veth peer name PEER`).
    LinkAddVeth {
        name: String,
        peer: String,
    },
    LinkDelete(String),
    AddrAdd(Address),
    AddrDelete(Address),
    RouteAdd(Route),
    /// Adds, or replaces the route with the same destination, table and metric
    /// (`ip route replace`).
    RouteReplace(Route),
    RouteDelete(Route),
    RuleAdd(Rule),
    RuleDelete(Rule),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Add,
    Set,
    Delete,
}

impl Request {
    fn kind(&self) -> Kind {
        match self {
            Request::LinkAddVeth { .. }
            | Request::AddrAdd(_)
            | Request::RouteAdd(_)
            | Request::RouteReplace(_)
            | Request::RuleAdd(_) => Kind::Add,
            Request::LinkUp(_) | Request::LinkDown(_) | Request::LinkMtu(..) => Kind::Set,
            Request::LinkDelete(_)
            | Request::AddrDelete(_)
            | Request::RouteDelete(_)
            | Request::RuleDelete(_) => Kind::Delete,
        }
    }

    /// The device whose index the message needs (links are addressed by name instead).
    fn indexed_device(&self) -> Option<&str> {
        match self {
            Request::AddrAdd(a) | Request::AddrDelete(a) => Some(&a.dev),
            Request::RouteAdd(r) | Request::RouteReplace(r) | Request::RouteDelete(r) => {
                r.dev.as_deref()
            }
            _ => None,
        }
    }

    /// The rtnetlink message and the flags `ip` would send it with, given the device's index.
    fn to_message(&self, index: Option<u32>) -> Result<(RouteNetlinkMessage, u16), String> {
        let index = index.unwrap_or(0);
        Ok(match self {
            Request::LinkUp(dev) => (set_link(dev, Some(true), None), 0),
            Request::LinkDown(dev) => (set_link(dev, Some(false), None), 0),
            Request::LinkMtu(dev, mtu) => (set_link(dev, None, Some(*mtu)), 0),
            Request::LinkAddVeth { name, peer } => {
                let mut peer_msg = LinkMessage::default();
                peer_msg
                    .attributes
                    .push(LinkAttribute::IfName(peer.clone()));
                let mut m = LinkMessage::default();
                m.attributes.push(LinkAttribute::IfName(name.clone()));
                m.attributes.push(LinkAttribute::LinkInfo(vec![
                    LinkInfo::Kind(InfoKind::Veth),
                    LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
                ]));
                (RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
            }
            Request::LinkDelete(dev) => {
                let mut m = LinkMessage::default();
                m.attributes.push(LinkAttribute::IfName(dev.clone()));
                (RouteNetlinkMessage::DelLink(m), 0)
            }
            Request::AddrAdd(a) => (
                RouteNetlinkMessage::NewAddress(address_message(a, index, true)),
                NLM_F_CREATE | NLM_F_EXCL,
            ),
            Request::AddrDelete(a) => (
                RouteNetlinkMessage::DelAddress(address_message(a, index, false)),
                0,
            ),
            Request::RouteAdd(r) => (
                RouteNetlinkMessage::NewRoute(route_message(r, index, true)?),
                NLM_F_CREATE | NLM_F_EXCL,
            ),
            Request::RouteReplace(r) => (
                RouteNetlinkMessage::NewRoute(route_message(r, index, true)?),
                NLM_F_CREATE | NLM_F_REPLACE,
            ),
            Request::RouteDelete(r) => (
                RouteNetlinkMessage::DelRoute(route_message(r, index, false)?),
                0,
            ),
            Request::RuleAdd(r) => (
                RouteNetlinkMessage::NewRule(rule_message(r)?),
                NLM_F_CREATE | NLM_F_EXCL,
            ),
            Request::RuleDelete(r) => (RouteNetlinkMessage::DelRule(rule_message(r)?), 0),
        })
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::LinkUp(dev) => write!(f, "link set dev {dev} up"),
            Request::LinkDown(dev) => write!(f, "link set dev {dev} down"),
            Request::LinkMtu(dev, mtu) => write!(f, "link set dev {dev} mtu {mtu}"),
            Request::LinkAddVeth { name, peer } => {
                write!(f, "link add {name} type veth peer name {peer}")
            }
            Request::LinkDelete(dev) => write!(f, "link del {dev}"),
            Request::AddrAdd(a) => {
                write!(f, "addr add {}", a.cidr)?;
                if a.broadcast {
                    write!(f, " brd +")?;
                }
                write!(f, " dev {}", a.dev)
            }
            Request::AddrDelete(a) => write!(f, "addr del {} dev {}", a.cidr, a.dev),
            Request::RouteAdd(r) => write!(f, "route add {}", RouteArgs(r)),
            Request::RouteReplace(r) => write!(f, "route replace {}", RouteArgs(r)),
            Request::RouteDelete(r) => write!(f, "route del {}", RouteArgs(r)),
            Request::RuleAdd(r) => write!(f, "rule add {}", RuleArgs(r)),
            Request::RuleDelete(r) => write!(f, "rule del {}", RuleArgs(r)),
        }
    }
}

struct RouteArgs<'a>(&'a Route);

impl fmt::Display for RouteArgs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        match r.dst {
            Some(dst) => write!(f, "{dst}")?,
            None => write!(f, "default")?,
        }
        if let Some(via) = r.via {
            write!(f, " via {via}")?;
        }
        if let Some(dev) = &r.dev {
            write!(f, " dev {dev}")?;
        }
        if r.onlink {
            write!(f, " onlink")?;
        }
        if let Some(m) = r.metric {
            write!(f, " metric {m}")?;
        }
        if let Some(t) = r.table {
            write!(f, " table {t}")?;
        }
        Ok(())
    }
}

struct RuleArgs<'a>(&'a Rule);

impl fmt::Display for RuleArgs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        if r.from.prefix_len == 32 {
            write!(f, "from {} lookup {}", r.from.addr, r.table)?;
        } else {
            write!(f, "from {} lookup {}", r.from, r.table)?;
        }
        if let Some(p) = r.priority {
            write!(f, " priority {p}")?;
        }
        Ok(())
    }
}

/// How a request takes "already there" and "already gone".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Every error is a failure.
    #[default]
    Strict,
    /// An add that finds its object there (EEXIST), and a delete that finds it gone (no such
    /// address, route, rule or device), count as done ([`Applied::unchanged`]). Setting a
    /// link's state or MTU is not affected. Note that a route add is "there" when a route with
    /// the same destination, table and metric exists, whatever its gateway: use
    /// [`Request::RouteReplace`] to make it match.
    Idempotent,
}

/// Requests to send together. Methods chain: `Batch::new().link_up("eth0").addr_add(…)`.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    items: Vec<(Request, Mode)>,
    mode: Mode,
}

impl Batch {
    /// A batch whose requests are [`Mode::Strict`] unless pushed with [`Batch::push_with`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A batch whose requests are [`Mode::Idempotent`] unless pushed with [`Batch::push_with`].
    pub fn idempotent() -> Self {
        Self {
            items: Vec::new(),
            mode: Mode::Idempotent,
        }
    }

    pub fn push(&mut self, request: Request) -> &mut Self {
        let mode = self.mode;
        self.push_with(request, mode)
    }

    pub fn push_with(&mut self, request: Request, mode: Mode) -> &mut Self {
        self.items.push((request, mode));
        self
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn requests(&self) -> impl Iterator<Item = &Request> {
        self.items.iter().map(|(r, _)| r)
    }

    pub fn link_up(&mut self, dev: &str) -> &mut Self {
        self.push(Request::LinkUp(dev.to_string()))
    }

    pub fn link_down(&mut self, dev: &str) -> &mut Self {
        self.push(Request::LinkDown(dev.to_string()))
    }

    pub fn link_mtu(&mut self, dev: &str, mtu: u32) -> &mut Self {
        self.push(Request::LinkMtu(dev.to_string(), mtu))
    }

    pub fn link_add_veth(&mut self, name: &str, peer: &str) -> &mut Self {
        self.push(Request::LinkAddVeth {
            name: name.to_string(),
            peer: peer.to_string(),
        })
    }

    pub fn link_delete(&mut self, dev: &str) -> &mut Self {
        self.push(Request::LinkDelete(dev.to_string()))
    }

    pub fn addr_add(&mut self, dev: &str, cidr: Ipv4Cidr) -> &mut Self {
        self.push(Request::AddrAdd(Address::new(dev, cidr)))
    }

    pub fn addr_delete(&mut self, dev: &str, cidr: Ipv4Cidr) -> &mut Self {
        self.push(Request::AddrDelete(Address::new(dev, cidr)))
    }

    pub fn route_add(&mut self, route: Route) -> &mut Self {
        self.push(Request::RouteAdd(route))
    }

    pub fn route_replace(&mut self, route: Route) -> &mut Self {
        self.push(Request::RouteReplace(route))
    }

    pub fn route_delete(&mut self, route: Route) -> &mut Self {
        self.push(Request::RouteDelete(route))
    }

    pub fn rule_add(&mut self, rule: Rule) -> &mut Self {
        self.push(Request::RuleAdd(rule))
    }

    pub fn rule_delete(&mut self, rule: Rule) -> &mut Self {
        self.push(Request::RuleDelete(rule))
    }
}

// ---------------------------------------------------------------------------------------------
// What comes back

/// What a batch did: requests that changed something, and idempotent ones that found the
/// work already done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub changed: usize,
    pub unchanged: usize,
}

/// One request that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Its position in the batch.
    pub index: usize,
    pub request: Request,
    /// The kernel's error number, when the kernel answered.
    pub errno: Option<i32>,
    /// What went wrong, and what to do about it.
    pub message: String,
}

/// The requests of a batch that failed (the others were applied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchError {
    /// "namespace NAME" or "the current namespace".
    pub namespace: String,
    pub failures: Vec<Failure>,
    pub applied: Applied,
}

impl fmt::Display for BatchError {
    /// One line per failed request: `` `REQUEST` in namespace NS: WHAT ``.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, failure) in self.failures.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "`{}` in {}: {}",
                failure.request, self.namespace, failure.message
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for BatchError {}

impl From<BatchError> for String {
    fn from(e: BatchError) -> String {
        e.to_string()
    }
}

/// The kernel's error, with its extended-ack text and a hint at what to do.
fn describe(errno: i32, ext: Option<&str>, request: &Request) -> String {
    let mut s = io::Error::from_raw_os_error(errno).to_string();
    if let Some(ext) = ext {
        s.push_str(&format!(" (the kernel says: {ext})"));
    }
    let hint = match (errno, request.kind()) {
        (libc::EEXIST, _) => {
            "; it is already there: delete it first, or apply the request \
                              as idempotent"
        }
        (libc::ENODEV, _) => "; check the device name (`ip link` in the namespace lists them)",
        (libc::ENETUNREACH, _) => {
            "; the gateway is in no subnet of the device: add an \
                                   address in its subnet first, or use `onlink`"
        }
        (libc::EPERM | libc::EACCES, _) => "; this needs root (CAP_NET_ADMIN)",
        (libc::ENOENT | libc::ESRCH | libc::EADDRNOTAVAIL, Kind::Delete) => {
            "; there is nothing to delete (apply the request as idempotent to ignore this)"
        }
        _ => "",
    };
    s.push_str(hint);
    s
}

/// True if `mode` takes this error as the work being done already.
fn tolerated(request: &Request, mode: Mode, errno: i32) -> bool {
    mode == Mode::Idempotent
        && match request.kind() {
            Kind::Add => errno == libc::EEXIST,
            Kind::Delete => matches!(
                errno,
                libc::ENOENT | libc::ESRCH | libc::ENODEV | libc::EADDRNOTAVAIL
            ),
            Kind::Set => false,
        }
}

// ---------------------------------------------------------------------------------------------
// Messages, as `ip` writes them

fn set_link(dev: &str, up: Option<bool>, mtu: Option<u32>) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    if let Some(up) = up {
        m.header.flags = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
        m.header.change_mask = LinkFlags::Up;
    }
    m.attributes.push(LinkAttribute::IfName(dev.to_string()));
    if let Some(mtu) = mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    // `ip link set` sends RTM_NEWLINK without NLM_F_CREATE: a missing device is ENODEV.
    RouteNetlinkMessage::NewLink(m)
}

fn address_message(a: &Address, index: u32, add: bool) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.prefix_len = a.cidr.prefix_len;
    m.header.index = index;
    // `ip addr add` picks host scope for loopback addresses, global for the rest.
    m.header.scope = if add && a.cidr.addr.is_loopback() {
        AddressScope::Host
    } else {
        AddressScope::Universe
    };
    m.attributes
        .push(AddressAttribute::Local(IpAddr::V4(a.cidr.addr)));
    m.attributes
        .push(AddressAttribute::Address(IpAddr::V4(a.cidr.addr)));
    if add && a.broadcast && a.cidr.prefix_len < 31 {
        m.attributes
            .push(AddressAttribute::Broadcast(a.cidr.broadcast()));
    }
    m
}

/// `rtm_table` holds tables up to 255; larger ones go in RTA_TABLE / FRA_TABLE, as `ip` does.
fn split_table(table: u32) -> Result<(u8, Option<u32>), String> {
    match table {
        0 => Err("table 0 is not a routing table (use 1 to 4294967295; main is 254)".into()),
        t if t < 256 => Ok((t as u8, None)),
        t => Ok((0, Some(t))),
    }
}

fn route_message(r: &Route, index: u32, add: bool) -> Result<RouteMessage, String> {
    let (table_byte, table_attr) = split_table(r.table.unwrap_or(254))?;
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = r.dst.map_or(0, |d| d.prefix_len);
    m.header.table = table_byte;
    if add {
        // What `ip route add` sends: protocol boot, a unicast route, universe scope with a
        // gateway and link scope without one.
        m.header.protocol = RouteProtocol::Boot;
        m.header.kind = RouteType::Unicast;
        m.header.scope = if r.via.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if r.onlink {
            m.header.flags = RouteFlags::Onlink;
        }
    } else {
        // `ip route del`: any protocol, type and scope match.
        m.header.scope = RouteScope::NoWhere;
    }
    if let Some(t) = table_attr {
        m.attributes.push(RouteAttribute::Table(t));
    }
    if let Some(dst) = r.dst {
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dst.addr)));
    }
    if let Some(gw) = r.via {
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
    }
    if r.dev.is_some() {
        m.attributes.push(RouteAttribute::Oif(index));
    }
    if let Some(metric) = r.metric {
        m.attributes.push(RouteAttribute::Priority(metric));
    }
    Ok(m)
}

fn rule_message(r: &Rule) -> Result<RuleMessage, String> {
    let (table_byte, table_attr) = split_table(r.table)?;
    let mut m = RuleMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.src_len = r.from.prefix_len;
    m.header.table = table_byte;
    m.header.action = RuleAction::ToTable;
    if r.from.prefix_len > 0 {
        m.attributes
            .push(RuleAttribute::Source(IpAddr::V4(r.from.addr)));
    }
    if let Some(t) = table_attr {
        m.attributes.push(RuleAttribute::Table(t));
    }
    if let Some(p) = r.priority {
        m.attributes.push(RuleAttribute::Priority(p));
    }
    Ok(m)
}

// ---------------------------------------------------------------------------------------------
// The socket

/// Answers are read by `recvmmsg` into this many slots of this size at a time. Acks are small;
/// a dump's datagrams are sized by the kernel to the reader's buffer (at least a page, at most
/// 32 KiB), and a link's description is a few KiB.
const SLOTS: usize = 64;
const SLOT_LEN: usize = 16 * 1024;
/// At most this many bytes of requests per `send` (the socket's send buffer is ~208 KiB).
const MAX_SEND: usize = 128 * 1024;
/// The receive buffer asked for: answers to a whole chunk must fit in it, or the kernel drops
/// them (ENOBUFS).
const RCVBUF: usize = 4 * 1024 * 1024;
/// How long to wait for the kernel's answer before giving up on a request.
const ANSWER_TIMEOUT_SECS: i64 = 10;

/// A route-netlink socket in one namespace. Not shared between threads while in use (`&mut`
/// methods), but it can be moved to another thread: it keeps talking to its namespace.
pub struct Netlink {
    socket: Socket,
    /// "namespace NAME" or "the current namespace", for messages.
    label: String,
    next_seq: u32,
    /// Answer-buffer budget of one chunk, in units of ~1 KiB of kernel memory.
    budget: usize,
    rx: Vec<u8>,
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink")
            .field("namespace", &self.label)
            .finish_non_exhaustive()
    }
}

/// The kernel's answer to one request.
#[derive(Default)]
struct Answer {
    /// 0: done.
    errno: i32,
    /// The kernel's extended-ack message.
    ext: Option<String>,
    /// No answer came: why.
    lost: Option<String>,
    /// Data messages (type, payload) for gets and dumps.
    data: Vec<(u16, Vec<u8>)>,
    /// A dump was interrupted by a concurrent change: its data may be inconsistent.
    interrupted: bool,
}

impl Netlink {
    /// Opens a socket in the calling thread's namespace.
    pub fn open() -> Result<Self, String> {
        Self::open_labelled("the current namespace")
    }

    /// Opens a socket in `ns` (entering it on this thread for the moment it takes). The socket
    /// talks to `ns` for its whole life, whichever thread uses it.
    pub fn open_in(ns: &NetnsHandle) -> Result<Self, String> {
        let label = ns.to_string();
        ns.run(|| Self::open_labelled(&label))?
    }

    /// Opens a socket in the calling thread's namespace, naming it `label` in messages.
    pub(crate) fn open_labelled(label: &str) -> Result<Self, String> {
        let socket = Socket::new(NETLINK_ROUTE)
            .map_err(|e| format!("cannot open a netlink socket in {label}: {e}"))?;
        // Connecting binds the socket (the kernel picks the port) and lets us use `send`.
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| format!("cannot connect a netlink socket in {label}: {e}"))?;
        // The kernel's own words on errors, and acks that carry only the request's header.
        // Both are optional (old kernels): without them errors are plain errno texts.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        let fd = socket.as_raw_fd();
        let rcvbuf = if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF).is_ok() {
            RCVBUF * 2
        } else {
            // Not root: the kernel caps SO_RCVBUF at net.core.rmem_max.
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF);
            socket.get_rx_buf_sz().unwrap_or(200 * 1024)
        };
        let timeout = libc::timeval {
            tv_sec: ANSWER_TIMEOUT_SECS,
            tv_usec: 0,
        };
        // SAFETY: `timeout` is a valid timeval that outlives the call; its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(format!(
                "cannot set a receive timeout on a netlink socket in {label}: {}",
                io::Error::last_os_error()
            ));
        }
        Ok(Self {
            socket,
            label: label.to_string(),
            next_seq: 1,
            // Each answer costs a skb of roughly 1 KiB or less; keep a quarter spare.
            budget: (rcvbuf / 1024 * 3 / 4).max(16),
            rx: vec![0; SLOTS * SLOT_LEN],
        })
    }

    /// "namespace NAME" or "the current namespace".
    pub fn namespace(&self) -> &str {
        &self.label
    }

    /// Applies `batch`: every request is sent (many per `send`), and every failure reported.
    /// Device names are looked up once per batch; a device the batch itself creates is looked
    /// up after its creation is sent.
    pub fn apply(&mut self, batch: &Batch) -> Result<Applied, BatchError> {
        let mut run = Run {
            applied: Applied::default(),
            failures: Vec::new(),
        };
        let items = &batch.items;

        // Rules added idempotently without a priority: the kernel would duplicate them, so
        // look up which are there.
        let mut existing_rules: Option<HashSet<(Ipv4Cidr, u32)>> = None;
        let needs_rules = items.iter().any(|(r, m)| {
            *m == Mode::Idempotent && matches!(r, Request::RuleAdd(rule) if rule.priority.is_none())
        });
        let mut rules_error = None;
        if needs_rules {
            match self.rule_keys() {
                Ok(keys) => existing_rules = Some(keys),
                Err(e) => rules_error = Some(e),
            }
        }

        // Every device the batch names, except those it creates first, in one round trip.
        let mut created_later = HashSet::new();
        let mut wanted = Vec::new();
        for (r, _) in items {
            if let Request::LinkAddVeth { name, peer } = r {
                created_later.insert(name.as_str());
                created_later.insert(peer.as_str());
            }
            if let Some(dev) = r.indexed_device() {
                if !created_later.contains(dev) && !wanted.contains(&dev) {
                    wanted.push(dev);
                }
            }
        }
        let mut index = HashMap::new();
        let mut lookup_error = None;
        if !wanted.is_empty() {
            match self.resolve(&wanted) {
                Ok(found) => index = found,
                // No device can be addressed: each request that needs one will say so.
                Err(e) => lookup_error = Some(e),
            }
        }

        let mut created: HashSet<String> = HashSet::new();
        let mut pending: Vec<(usize, RouteNetlinkMessage, u16)> = Vec::new();
        for (i, (request, mode)) in items.iter().enumerate() {
            if let Request::RuleAdd(rule) = request {
                if *mode == Mode::Idempotent && rule.priority.is_none() {
                    if let Some(e) = &rules_error {
                        run.fail(i, request, None, e.clone());
                        continue;
                    }
                    let key = (rule.from, rule.table);
                    if let Some(existing) = existing_rules.as_mut() {
                        if !existing.insert(key) {
                            run.applied.unchanged += 1;
                            continue;
                        }
                    }
                }
            }
            let mut dev_index = None;
            if let Some(dev) = request.indexed_device() {
                if let Some(e) = &lookup_error {
                    run.fail(i, request, None, e.clone());
                    continue;
                }
                if !index.contains_key(dev) && created.contains(dev) {
                    // Made earlier in this batch: send what is queued, then look it up.
                    self.flush(items, &mut pending, &mut run);
                    if let Ok(found) = self.resolve(&[dev]) {
                        index.extend(found);
                    }
                }
                match index.get(dev) {
                    Some(ix) => dev_index = Some(*ix),
                    None if tolerated(request, *mode, libc::ENODEV) => {
                        run.applied.unchanged += 1;
                        continue;
                    }
                    None => {
                        let msg = format!(
                            "device {dev} not found: {}",
                            describe(libc::ENODEV, None, request)
                        );
                        run.fail(i, request, Some(libc::ENODEV), msg);
                        continue;
                    }
                }
            }
            match request.to_message(dev_index) {
                Ok((msg, flags)) => pending.push((i, msg, flags)),
                Err(e) => run.fail(i, request, None, e),
            }
            match request {
                Request::LinkAddVeth { name, peer } => {
                    for n in [name, peer] {
                        index.remove(n.as_str());
                        created.insert(n.clone());
                    }
                }
                Request::LinkDelete(dev) => {
                    index.remove(dev.as_str());
                }
                _ => {}
            }
        }
        self.flush(items, &mut pending, &mut run);

        if run.failures.is_empty() {
            Ok(run.applied)
        } else {
            run.failures.sort_by_key(|f| f.index);
            Err(BatchError {
                namespace: self.label.clone(),
                failures: run.failures,
                applied: run.applied,
            })
        }
    }

    /// Sends the queued messages and sorts their answers into done, tolerated and failed.
    fn flush(
        &mut self,
        items: &[(Request, Mode)],
        pending: &mut Vec<(usize, RouteNetlinkMessage, u16)>,
        run: &mut Run,
    ) {
        if pending.is_empty() {
            return;
        }
        let queued = std::mem::take(pending);
        let positions: Vec<usize> = queued.iter().map(|(i, _, _)| *i).collect();
        let answers = self.transact(queued.into_iter().map(|(_, m, f)| (m, f)).collect());
        for (i, answer) in positions.into_iter().zip(answers) {
            let Some((request, mode)) = items.get(i) else {
                continue;
            };
            if let Some(lost) = answer.lost {
                run.fail(i, request, None, lost);
            } else if answer.errno == 0 {
                run.applied.changed += 1;
            } else if tolerated(request, *mode, answer.errno) {
                run.applied.unchanged += 1;
            } else {
                let msg = describe(answer.errno, answer.ext.as_deref(), request);
                run.fail(i, request, Some(answer.errno), msg);
            }
        }
    }

    /// The index of device `dev` (`ip link show DEV`).
    pub fn link_index(&mut self, dev: &str) -> Result<u32, String> {
        self.resolve(&[dev])?.get(dev).copied().ok_or_else(|| {
            format!(
                "device {dev} not found in {}; check the name (`ip link` there lists them)",
                self.label
            )
        })
    }

    /// The IPv4 addresses on device `dev`, in the kernel's order (`ip -4 addr show dev DEV`).
    pub fn addresses(&mut self, dev: &str) -> Result<Vec<Ipv4Cidr>, String> {
        let index = self.link_index(dev)?;
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.index = index;
        let data = self.dump(RouteNetlinkMessage::GetAddress(m), "addr show")?;
        let mut out = Vec::new();
        for (kind, payload) in data {
            if kind != libc::RTM_NEWADDR {
                continue;
            }
            let msg = AddressMessage::parse(payload.as_slice()).map_err(|e| {
                format!(
                    "cannot read the kernel's address list in {}: {e}",
                    self.label
                )
            })?;
            if msg.header.index != index || msg.header.family != AddressFamily::Inet {
                continue;
            }
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
                _ => None,
            });
            let address = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(v)) => Some(*v),
                _ => None,
            });
            if let Some(addr) = local.or(address) {
                out.push(Ipv4Cidr::new(addr, msg.header.prefix_len)?);
            }
        }
        Ok(out)
    }

    /// (source, table) of every IPv4 `from … lookup …` rule.
    fn rule_keys(&mut self) -> Result<HashSet<(Ipv4Cidr, u32)>, String> {
        let mut m = RuleMessage::default();
        m.header.family = AddressFamily::Inet;
        let data = self.dump(RouteNetlinkMessage::GetRule(m), "rule show")?;
        let mut keys = HashSet::new();
        for (kind, payload) in data {
            if kind != libc::RTM_NEWRULE {
                continue;
            }
            let msg = RuleMessage::parse(payload.as_slice()).map_err(|e| {
                format!("cannot read the kernel's rule list in {}: {e}", self.label)
            })?;
            if msg.header.action != RuleAction::ToTable {
                continue;
            }
            let mut table = u32::from(msg.header.table);
            let mut from = None;
            for a in &msg.attributes {
                match a {
                    RuleAttribute::Table(t) => table = *t,
                    RuleAttribute::Source(IpAddr::V4(v)) => from = Some(*v),
                    _ => {}
                }
            }
            if let Some(from) = from {
                keys.insert((Ipv4Cidr::new(from, msg.header.src_len)?, table));
            }
        }
        Ok(keys)
    }

    /// Runs a dump, again if a concurrent change interrupted it; returns its data messages.
    fn dump(
        &mut self,
        request: RouteNetlinkMessage,
        what: &str,
    ) -> Result<Vec<(u16, Vec<u8>)>, String> {
        for _ in 0..3 {
            let answer = self
                .transact(vec![(request.clone(), NLM_F_DUMP)])
                .pop()
                .unwrap_or_default();
            if let Some(lost) = answer.lost {
                return Err(format!("`{what}` in {}: {lost}", self.label));
            }
            if answer.errno != 0 {
                return Err(format!(
                    "`{what}` in {}: {}",
                    self.label,
                    io::Error::from_raw_os_error(answer.errno)
                ));
            }
            if !answer.interrupted {
                return Ok(answer.data);
            }
        }
        Err(format!(
            "`{what}` in {}: the list kept changing while being read; try again",
            self.label
        ))
    }

    /// The indexes of the named devices that exist (`RTM_GETLINK` by name, all in one send).
    fn resolve(&mut self, names: &[&str]) -> Result<HashMap<String, u32>, String> {
        let requests = names
            .iter()
            .map(|name| {
                let mut m = LinkMessage::default();
                m.attributes.push(LinkAttribute::IfName(name.to_string()));
                (RouteNetlinkMessage::GetLink(m), 0)
            })
            .collect();
        let answers = self.transact(requests);
        let mut found = HashMap::new();
        for (name, answer) in names.iter().zip(answers) {
            if let Some(lost) = answer.lost {
                return Err(format!(
                    "looking up device {name} in {}: {lost}",
                    self.label
                ));
            }
            match answer.errno {
                0 => {}
                libc::ENODEV => continue,
                errno => {
                    return Err(format!(
                        "looking up device {name} in {}: {}",
                        self.label,
                        io::Error::from_raw_os_error(errno)
                    ))
                }
            }
            let header = answer
                .data
                .iter()
                .find(|(kind, _)| *kind == libc::RTM_NEWLINK)
                .and_then(|(_, payload)| LinkHeader::parse(payload).ok());
            match header {
                Some(h) => {
                    found.insert(name.to_string(), h.index);
                }
                None => {
                    return Err(format!(
                        "looking up device {name} in {}: the kernel's answer could not be read",
                        self.label
                    ))
                }
            }
        }
        Ok(found)
    }

    fn alloc_seq(&mut self, count: usize) -> u32 {
        let first = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(count as u32);
        if self.next_seq == 0 {
            self.next_seq = 1;
        }
        first
    }

    /// Sends `requests` (flags added to REQUEST, plus ACK unless a dump) in as few sends as the
    /// socket buffers allow, and returns one answer per request, in order.
    fn transact(&mut self, requests: Vec<(RouteNetlinkMessage, u16)>) -> Vec<Answer> {
        let total = requests.len();
        let mut answers: Vec<Answer> = (0..total).map(|_| Answer::default()).collect();
        let mut requests = requests.into_iter().peekable();
        let mut done_so_far = 0;
        let mut buf: Vec<u8> = Vec::new();
        while requests.peek().is_some() {
            // One chunk: as many messages as the buffers take; a dump goes alone, since the
            // kernel runs one dump per socket at a time.
            buf.clear();
            let mut chunk: Vec<bool> = Vec::new(); // per message: is it a dump?
            let mut cost = 0;
            let first_seq = self.next_seq;
            while let Some((_, flags)) = requests.peek() {
                let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
                let weight = if dump { self.budget } else { 4 };
                if !chunk.is_empty() && (dump || cost + weight > self.budget) {
                    break;
                }
                let Some((msg, flags)) = requests.next() else {
                    break;
                };
                let mut header = NetlinkHeader::default();
                header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
                header.sequence_number = first_seq.wrapping_add(chunk.len() as u32);
                let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
                packet.finalize();
                let len = packet.buffer_len();
                let at = buf.len();
                buf.resize(at + align4(len), 0);
                packet.serialize(&mut buf[at..at + len]);
                chunk.push(dump);
                cost += weight;
                if dump || buf.len() >= MAX_SEND {
                    break;
                }
            }
            let n = chunk.len();
            self.alloc_seq(n);
            let slots = &mut answers[done_so_far..done_so_far + n];
            match self.socket.send(&buf, 0) {
                Ok(_) => self.collect(first_seq, slots),
                Err(e) => {
                    for a in slots.iter_mut() {
                        a.lost = Some(format!("could not send it to the kernel: {e}"));
                    }
                }
            }
            done_so_far += n;
        }
        answers
    }

    /// Reads answers until every request of the chunk starting at `first_seq` has its final
    /// answer (an ack or error; DONE for a dump).
    fn collect(&mut self, first_seq: u32, answers: &mut [Answer]) {
        let mut open = answers.len();
        let mut finished = vec![false; answers.len()];
        while open > 0 {
            let datagrams = match self.receive() {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let why = match e.raw_os_error() {
                        Some(libc::ENOBUFS) => "the kernel dropped its answer (socket receive \
                                                buffer full); it may or may not have been \
                                                applied"
                            .to_string(),
                        Some(libc::EAGAIN) => format!(
                            "no answer from the kernel within {ANSWER_TIMEOUT_SECS} s; it may \
                             or may not have been applied"
                        ),
                        _ => format!("could not read the kernel's answer: {e}"),
                    };
                    for (a, f) in answers.iter_mut().zip(&finished) {
                        if !f {
                            a.lost = Some(why.clone());
                        }
                    }
                    return;
                }
            };
            for (start, len) in datagrams {
                let Some(datagram) = self.rx.get(start..start + len) else {
                    continue;
                };
                for msg in Messages(datagram) {
                    let i = msg.seq.wrapping_sub(first_seq) as usize;
                    let (Some(answer), Some(fin)) = (answers.get_mut(i), finished.get_mut(i))
                    else {
                        continue; // an answer to an earlier, abandoned request
                    };
                    if *fin {
                        continue;
                    }
                    let end = match msg.kind {
                        NLMSG_ERROR => {
                            let code = read_i32(msg.payload, 0).unwrap_or(-libc::EPROTO);
                            answer.errno = code.saturating_neg();
                            answer.ext = extack_message(msg.kind, msg.flags, msg.payload);
                            true
                        }
                        NLMSG_DONE => {
                            // A dump may end with an error code in DONE.
                            let code = read_i32(msg.payload, 0).unwrap_or(0);
                            answer.errno = code.saturating_neg().max(0);
                            answer.ext = extack_message(msg.kind, msg.flags, msg.payload);
                            true
                        }
                        NLMSG_NOOP | NLMSG_OVERRUN => false,
                        kind => {
                            if msg.flags & NLM_F_DUMP_INTR != 0 {
                                answer.interrupted = true;
                            }
                            answer.data.push((kind, msg.payload.to_vec()));
                            false
                        }
                    };
                    if end {
                        *fin = true;
                        open -= 1;
                    }
                }
            }
        }
    }

    /// One `recvmmsg`: waits for the first datagram, then takes what else is queued (up to
    /// [`SLOTS`]). Returns (offset in `rx`, length) of each datagram from the kernel.
    fn receive(&mut self) -> io::Result<Vec<(usize, usize)>> {
        if self.rx.len() < SLOTS * SLOT_LEN {
            self.rx.resize(SLOTS * SLOT_LEN, 0);
        }
        let base = self.rx.as_mut_ptr();
        // SAFETY: all-zero bytes are valid values of these plain C structs.
        let mut names: [libc::sockaddr_nl; SLOTS] = unsafe { std::mem::zeroed() };
        let mut iovs: [libc::iovec; SLOTS] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; SLOTS] = unsafe { std::mem::zeroed() };
        for k in 0..SLOTS {
            // SAFETY: k * SLOT_LEN + SLOT_LEN <= rx.len(), so the slot lies inside `rx`.
            iovs[k].iov_base = unsafe { base.add(k * SLOT_LEN) }.cast();
            iovs[k].iov_len = SLOT_LEN;
            hdrs[k].msg_hdr.msg_iov = &mut iovs[k];
            hdrs[k].msg_hdr.msg_iovlen = 1;
            hdrs[k].msg_hdr.msg_name = (&mut names[k] as *mut libc::sockaddr_nl).cast();
            hdrs[k].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as u32;
        }
        // SAFETY: every header points at a live iovec over its own slot of `rx` and at a live
        // sockaddr_nl, all of which outlive the call; SO_RCVTIMEO bounds the wait.
        let n = unsafe {
            libc::recvmmsg(
                self.socket.as_raw_fd(),
                hdrs.as_mut_ptr(),
                SLOTS as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::with_capacity(n as usize);
        for (k, (hdr, name)) in hdrs.iter().zip(&names).enumerate().take(n as usize) {
            // Only the kernel (port 0) answers; ignore anything another process sent us.
            if name.nl_pid != 0 {
                continue;
            }
            // A truncated datagram keeps its whole messages; the cut one fails to parse and
            // its request reports a timeout rather than wrong data.
            let len = (hdr.msg_len as usize).min(SLOT_LEN);
            out.push((k * SLOT_LEN, len));
        }
        Ok(out)
    }
}

/// The state of one `apply`.
struct Run {
    applied: Applied,
    failures: Vec<Failure>,
}

impl Run {
    fn fail(&mut self, index: usize, request: &Request, errno: Option<i32>, message: String) {
        self.failures.push(Failure {
            index,
            request: request.clone(),
            errno,
            message,
        });
    }
}

fn setsockopt_int(fd: i32, level: i32, name: i32, value: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: `v` is a live c_int for the duration of the call and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// ---------------------------------------------------------------------------------------------
// Reading what the kernel sent

const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const NLMSG_HDRLEN: usize = 16;
/// `NLMSGERR_ATTR_MSG`: the extended ack's text.
const NLMSGERR_ATTR_MSG: u16 = 1;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn read_i32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// One netlink message of a datagram.
struct Message<'a> {
    kind: u16,
    flags: u16,
    seq: u32,
    payload: &'a [u8],
}

/// The messages of a datagram; stops at the first malformed one.
struct Messages<'a>(&'a [u8]);

impl<'a> Iterator for Messages<'a> {
    type Item = Message<'a>;

    fn next(&mut self) -> Option<Message<'a>> {
        let b = self.0;
        let len = read_u32(b, 0)? as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            self.0 = &[];
            return None;
        }
        let msg = Message {
            kind: read_u16(b, 4)?,
            flags: read_u16(b, 6)?,
            seq: read_u32(b, 8)?,
            payload: b.get(NLMSG_HDRLEN..len)?,
        };
        self.0 = b.get(align4(len)..).unwrap_or(&[]);
        Some(msg)
    }
}

/// The text of an extended ack (`NLMSGERR_ATTR_MSG`), if the kernel sent one. `payload` is
/// the payload of an NLMSG_ERROR (the error code, the request's header or, if not capped, the
/// whole request, then the attributes) or of an NLMSG_DONE (the code, then the attributes).
fn extack_message(kind: u16, flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let after_code = payload.get(4..)?;
    let skip = if kind == NLMSG_DONE {
        0
    } else if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        read_u32(after_code, 0)? as usize
    };
    let mut attrs = after_code.get(align4(skip)..)?;
    while attrs.len() >= 4 {
        let len = read_u16(attrs, 0)? as usize;
        let kind = read_u16(attrs, 2)? & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = attrs.get(4..len)?.split(|b| *b == 0).next()?;
            let text = String::from_utf8_lossy(text).trim().to_string();
            return (!text.is_empty()).then_some(text);
        }
        attrs = attrs.get(align4(len)..).unwrap_or(&[]);
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Watching addresses come and go

/// An IPv4 address added to or removed from an interface, as the kernel announced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrEvent {
    /// `RTM_NEWADDR` (true) or `RTM_DELADDR` (false). The kernel also sends `RTM_NEWADDR` when
    /// an existing address changes (its flags or lifetimes), so an add may repeat.
    pub added: bool,
    /// The interface's index in the watched namespace.
    pub ifindex: u32,
    /// `IFA_LOCAL`, or `IFA_ADDRESS` when the message has no `IFA_LOCAL`.
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

/// Receive buffer of a watch: notifications are small, a burst of them must fit.
const WATCH_RCVBUF: usize = 1024 * 1024;
/// One notification datagram is well under this.
const WATCH_DATAGRAM: usize = 32 * 1024;

/// A route-netlink socket subscribed to `RTNLGRP_IPV4_IFADDR` in one namespace: it hears every
/// IPv4 address added or removed there (by `ip addr`, keepalived, DHCP, anyone).
///
/// # Lost events
///
/// If notifications come faster than they are read, the kernel drops some and the next read
/// fails with `ENOBUFS`. The watch does not report that as an error: it sets a flag that
/// [`AddrWatch::take_overrun`] returns (and clears), and goes on reading. After an overrun the
/// events seen are incomplete: re-read the addresses that matter ([`Netlink::addresses`]).
/// [`AddrWatch::wait`] returns early (possibly with no events) when an overrun happened, so
/// the caller can resync without waiting out its timeout.
pub struct AddrWatch {
    socket: Socket,
    label: String,
    overrun: bool,
    rx: Vec<u8>,
}

impl fmt::Debug for AddrWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddrWatch")
            .field("namespace", &self.label)
            .field("overrun", &self.overrun)
            .finish_non_exhaustive()
    }
}

impl AddrWatch {
    /// Opens a watch in `ns` (entering it on this thread for the moment it takes). It watches
    /// `ns` for its whole life, whichever thread uses it.
    pub fn open_in(ns: &NetnsHandle) -> Result<Self, String> {
        let label = ns.to_string();
        ns.run(|| Self::open_labelled(&label))?
    }

    /// Opens a watch in the calling thread's namespace.
    pub fn open() -> Result<Self, String> {
        Self::open_labelled("the current namespace")
    }

    fn open_labelled(label: &str) -> Result<Self, String> {
        let mut socket = Socket::new(NETLINK_ROUTE)
            .map_err(|e| format!("cannot open a netlink socket in {label}: {e}"))?;
        socket
            .bind_auto()
            .map_err(|e| format!("cannot bind a netlink socket in {label}: {e}"))?;
        socket
            .add_membership(libc::RTNLGRP_IPV4_IFADDR)
            .map_err(|e| format!("cannot subscribe to IPv4 address changes in {label}: {e}"))?;
        socket
            .set_non_blocking(true)
            .map_err(|e| format!("cannot make a netlink socket in {label} non-blocking: {e}"))?;
        let fd = socket.as_raw_fd();
        if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, WATCH_RCVBUF).is_err() {
            // Not root: capped at net.core.rmem_max, which is still something.
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, WATCH_RCVBUF);
        }
        Ok(Self {
            socket,
            label: label.to_string(),
            overrun: false,
            rx: vec![0; WATCH_DATAGRAM],
        })
    }

    /// "namespace NAME" or "the current namespace".
    pub fn namespace(&self) -> &str {
        &self.label
    }

    /// The socket, to poll many watches at once (readable: call [`AddrWatch::read_ready`]).
    pub fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// True if notifications were lost since the last call (see the type's documentation);
    /// clears the flag.
    pub fn take_overrun(&mut self) -> bool {
        std::mem::take(&mut self.overrun)
    }

    /// Waits up to `timeout` for events and returns those that arrived, in order: as soon as
    /// there are some, or empty when the time is up. Also returns early after an overrun.
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<AddrEvent>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let overrun_before = self.overrun;
            let events = self.read_ready()?;
            if !events.is_empty() || (self.overrun && !overrun_before) {
                return Ok(events);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(events);
            }
            let mut pfd = libc::pollfd {
                fd: self.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ts = libc::timespec {
                tv_sec: libc::time_t::try_from(left.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: left.subsec_nanos() as libc::c_long,
            };
            // SAFETY: one live pollfd and a live timespec for the duration of the call; a null
            // signal mask leaves the mask alone.
            let rc = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(format!(
                        "waiting for address changes in {}: {e}",
                        self.label
                    ));
                }
            }
        }
    }

    /// Reads what is queued without blocking; an empty list if nothing is.
    pub fn read_ready(&mut self) -> Result<Vec<AddrEvent>, String> {
        let mut events = Vec::new();
        loop {
            // SAFETY: all-zero bytes are a valid sockaddr_nl.
            let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // SAFETY: `rx` is writable for its length and `from` for `from_len` bytes, both for
            // the duration of the call.
            let n = unsafe {
                libc::recvfrom(
                    self.socket.as_raw_fd(),
                    self.rx.as_mut_ptr().cast(),
                    self.rx.len(),
                    libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_nl).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(events),
                    Some(libc::EINTR) => continue,
                    // Dropped notifications; the socket goes on working.
                    Some(libc::ENOBUFS) => {
                        self.overrun = true;
                        continue;
                    }
                    _ => return Err(format!("reading address changes in {}: {e}", self.label)),
                }
            }
            // Only the kernel (port 0) announces changes.
            if from.nl_pid != 0 {
                continue;
            }
            let len = (n as usize).min(self.rx.len());
            addr_events(&self.rx[..len], &mut events);
        }
    }
}

/// The IPv4 address events of one datagram; anything else (other families, other message
/// types, malformed messages) is skipped.
fn addr_events(datagram: &[u8], out: &mut Vec<AddrEvent>) {
    for msg in Messages(datagram) {
        let added = match msg.kind {
            libc::RTM_NEWADDR => true,
            libc::RTM_DELADDR => false,
            _ => continue,
        };
        let Ok(m) = AddressMessage::parse(msg.payload) else {
            continue;
        };
        if m.header.family != AddressFamily::Inet {
            continue;
        }
        let local = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
            _ => None,
        });
        let address = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(IpAddr::V4(v)) => Some(*v),
            _ => None,
        });
        if let Some(addr) = local.or(address) {
            out.push(AddrEvent {
                added,
                ifindex: m.header.index,
                addr,
                prefix_len: m.header.prefix_len,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_print_and_compute_their_broadcast() {
        let c = cidr("10.1.2.3/24");
        assert_eq!(c.to_string(), "10.1.2.3/24");
        assert_eq!(c.network(), Ipv4Addr::new(10, 1, 2, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 1, 2, 255));
        assert_eq!(cidr("10.1.2.3"), Ipv4Cidr::host(Ipv4Addr::new(10, 1, 2, 3)));
        assert_eq!(cidr("0.0.0.0/0").broadcast(), Ipv4Addr::BROADCAST);
        assert_eq!(cidr("10.1.2.3/32").broadcast(), Ipv4Addr::new(10, 1, 2, 3));
        for bad in ["10.1.2.3/33", "10.1.2/24", "x", "10.1.2.3/", "/24", ""] {
            let e = bad.parse::<Ipv4Cidr>().unwrap_err();
            assert!(e.contains("prefix"), "{bad}: {e}");
        }
    }

    #[test]
    fn requests_print_as_ip_commands() {
        let gw = Ipv4Addr::new(10, 0, 1, 253);
        let r = Request::RouteAdd(Route::default_route().via(gw).dev("eth0").table(101));
        assert_eq!(
            r.to_string(),
            "route add default via 10.0.1.253 dev eth0 table 101"
        );
        let r = Request::RouteDelete(
            Route::to(cidr("10.7.0.0/16"))
                .dev("eth1")
                .onlink()
                .metric(5),
        );
        assert_eq!(
            r.to_string(),
            "route del 10.7.0.0/16 dev eth1 onlink metric 5"
        );
        assert_eq!(
            Request::RuleAdd(Rule::from_lookup(gw, 1000).priority(7)).to_string(),
            "rule add from 10.0.1.253 lookup 1000 priority 7"
        );
        assert_eq!(
            Request::AddrAdd(Address::new("eth0", cidr("10.0.0.1/24")).with_broadcast())
                .to_string(),
            "addr add 10.0.0.1/24 brd + dev eth0"
        );
        assert_eq!(
            Request::LinkMtu("eth0".into(), 1400).to_string(),
            "link set dev eth0 mtu 1400"
        );
        assert_eq!(Route::to(cidr("0.0.0.0/0")), Route::default_route());
    }

    #[test]
    fn routes_carry_what_ip_route_add_sends() {
        let gw = Ipv4Addr::new(10, 0, 1, 1);
        let m = route_message(&Route::default_route().via(gw).dev("e").onlink(), 7, true).unwrap();
        assert_eq!(m.header.protocol, RouteProtocol::Boot);
        assert_eq!(m.header.scope, RouteScope::Universe);
        assert_eq!(m.header.kind, RouteType::Unicast);
        assert_eq!(m.header.table, 254);
        assert_eq!(m.header.flags, RouteFlags::Onlink);
        assert!(m.attributes.contains(&RouteAttribute::Oif(7)));

        let m = route_message(
            &Route::to(cidr("10.9.0.0/16")).dev("e").table(1000),
            3,
            true,
        )
        .unwrap();
        assert_eq!(m.header.scope, RouteScope::Link);
        assert_eq!(m.header.table, 0);
        assert!(m.attributes.contains(&RouteAttribute::Table(1000)));
        assert_eq!(m.header.destination_prefix_length, 16);

        let m = route_message(&Route::default_route().via(gw), 0, false).unwrap();
        assert_eq!(m.header.scope, RouteScope::NoWhere);
        assert_eq!(m.header.protocol, RouteProtocol::Unspec);
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Oif(_))));

        let e = route_message(&Route::default_route().table(0), 0, true).unwrap_err();
        assert!(e.contains("table 0"), "{e}");
    }

    #[test]
    fn broadcast_only_below_31_and_only_when_asked() {
        let has_brd = |a: Address| {
            address_message(&a, 1, true)
                .attributes
                .iter()
                .any(|x| matches!(x, AddressAttribute::Broadcast(_)))
        };
        assert!(has_brd(
            Address::new("e", cidr("10.0.0.1/24")).with_broadcast()
        ));
        assert!(!has_brd(
            Address::new("e", cidr("10.0.0.1/31")).with_broadcast()
        ));
        assert!(!has_brd(
            Address::new("e", cidr("10.0.0.1/32")).with_broadcast()
        ));
        assert!(!has_brd(Address::new("e", cidr("10.0.0.1/24"))));
    }

    #[test]
    fn idempotent_tolerates_only_already_there_or_gone() {
        let add = Request::AddrAdd(Address::new("e", cidr("10.0.0.1/24")));
        let del = Request::AddrDelete(Address::new("e", cidr("10.0.0.1/24")));
        let up = Request::LinkUp("e".into());
        assert!(tolerated(&add, Mode::Idempotent, libc::EEXIST));
        assert!(!tolerated(&add, Mode::Strict, libc::EEXIST));
        assert!(!tolerated(&add, Mode::Idempotent, libc::ENODEV));
        assert!(tolerated(&del, Mode::Idempotent, libc::EADDRNOTAVAIL));
        assert!(tolerated(&del, Mode::Idempotent, libc::ENODEV));
        assert!(!tolerated(&del, Mode::Idempotent, libc::EPERM));
        assert!(!tolerated(&up, Mode::Idempotent, libc::ENODEV));
    }

    /// An NLMSG_ERROR as the kernel sends it with NETLINK_CAP_ACK and NETLINK_EXT_ACK.
    fn capped_error(code: i32, text: &str) -> Vec<u8> {
        let mut p = code.to_ne_bytes().to_vec();
        p.extend_from_slice(&[0u8; NLMSG_HDRLEN]); // the request's header
        let attr_len = 4 + text.len() + 1;
        p.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend_from_slice(text.as_bytes());
        p.push(0);
        p.resize(align4(p.len()), 0);
        p
    }

    #[test]
    fn extended_ack_text_is_read_and_garbage_is_not_a_panic() {
        let p = capped_error(-libc::EINVAL, "Invalid prefix for given prefix length");
        assert_eq!(
            extack_message(NLMSG_ERROR, NLM_F_ACK_TLVS | NLM_F_CAPPED, &p).as_deref(),
            Some("Invalid prefix for given prefix length")
        );
        assert_eq!(extack_message(NLMSG_ERROR, NLM_F_CAPPED, &p), None);
        let mut done = (-libc::EINVAL).to_ne_bytes().to_vec();
        done.extend_from_slice(&p[4 + NLMSG_HDRLEN..]);
        assert_eq!(
            extack_message(NLMSG_DONE, NLM_F_ACK_TLVS, &done).as_deref(),
            Some("Invalid prefix for given prefix length")
        );
        for cut in 0..p.len() {
            for kind in [NLMSG_ERROR, NLMSG_DONE] {
                let _ = extack_message(kind, NLM_F_ACK_TLVS | NLM_F_CAPPED, &p[..cut]);
                let _ = extack_message(kind, NLM_F_ACK_TLVS, &p[..cut]);
            }
        }
    }

    #[test]
    fn datagrams_split_into_messages_and_stop_at_garbage() {
        let mut d = Vec::new();
        for (seq, kind) in [(5u32, NLMSG_ERROR), (6, NLMSG_DONE)] {
            d.extend_from_slice(&20u32.to_ne_bytes());
            d.extend_from_slice(&kind.to_ne_bytes());
            d.extend_from_slice(&0u16.to_ne_bytes());
            d.extend_from_slice(&seq.to_ne_bytes());
            d.extend_from_slice(&0u32.to_ne_bytes());
            d.extend_from_slice(&0i32.to_ne_bytes());
        }
        let got: Vec<(u32, u16)> = Messages(&d).map(|m| (m.seq, m.kind)).collect();
        assert_eq!(got, vec![(5, NLMSG_ERROR), (6, NLMSG_DONE)]);
        d[20..24].copy_from_slice(&4096u32.to_ne_bytes()); // the second claims too much
        assert_eq!(Messages(&d).count(), 1);
        for cut in 0..d.len() {
            let _ = Messages(&d[..cut]).count();
        }
    }

    /// A netlink message as the kernel writes an address notification: the header, an
    /// `ifaddrmsg`, then (type, value) attributes.
    fn addr_notification(
        kind: u16,
        family: u8,
        prefix: u8,
        index: u32,
        attrs: &[(u16, &[u8])],
    ) -> Vec<u8> {
        let mut p = vec![family, prefix, 0, 0];
        p.extend_from_slice(&index.to_ne_bytes());
        for (t, v) in attrs {
            p.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
            p.extend_from_slice(&t.to_ne_bytes());
            p.extend_from_slice(v);
            p.resize(align4(p.len()), 0);
        }
        let mut m = ((NLMSG_HDRLEN + p.len()) as u32).to_ne_bytes().to_vec();
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes()); // seq
        m.extend_from_slice(&0u32.to_ne_bytes()); // port
        m.extend_from_slice(&p);
        m
    }

    #[test]
    fn address_notifications_become_events() {
        const IFA_ADDRESS: u16 = 1;
        const IFA_LOCAL: u16 = 2;
        const IFA_LABEL: u16 = 3;
        let inet = libc::AF_INET as u8;
        let mut d = Vec::new();
        // A point-to-point address: IFA_ADDRESS is the peer, IFA_LOCAL ours (whatever order).
        d.extend(addr_notification(
            libc::RTM_NEWADDR,
            inet,
            24,
            3,
            &[
                (IFA_ADDRESS, &[10, 0, 0, 255]),
                (IFA_LABEL, b"eth0\0"),
                (IFA_LOCAL, &[10, 0, 0, 1]),
            ],
        ));
        // Without IFA_LOCAL, IFA_ADDRESS is the address.
        d.extend(addr_notification(
            libc::RTM_DELADDR,
            inet,
            32,
            7,
            &[(IFA_ADDRESS, &[10, 9, 9, 9])],
        ));
        // Skipped: IPv6, a link message, an address message without an address.
        d.extend(addr_notification(
            libc::RTM_NEWADDR,
            libc::AF_INET6 as u8,
            64,
            3,
            &[(
                IFA_ADDRESS,
                &[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            )],
        ));
        d.extend(addr_notification(libc::RTM_NEWLINK, 0, 0, 3, &[]));
        d.extend(addr_notification(
            libc::RTM_NEWADDR,
            inet,
            8,
            3,
            &[(IFA_LABEL, b"x\0")],
        ));
        // After the rest: still read.
        d.extend(addr_notification(
            libc::RTM_NEWADDR,
            inet,
            32,
            1,
            &[(IFA_LOCAL, &[203, 0, 113, 7])],
        ));
        let mut got = Vec::new();
        addr_events(&d, &mut got);
        assert_eq!(
            got,
            [
                AddrEvent {
                    added: true,
                    ifindex: 3,
                    addr: Ipv4Addr::new(10, 0, 0, 1),
                    prefix_len: 24
                },
                AddrEvent {
                    added: false,
                    ifindex: 7,
                    addr: Ipv4Addr::new(10, 9, 9, 9),
                    prefix_len: 32
                },
                AddrEvent {
                    added: true,
                    ifindex: 1,
                    addr: Ipv4Addr::new(203, 0, 113, 7),
                    prefix_len: 32
                },
            ]
        );
        // What this crate itself sends for `addr add` reads back the same way.
        let a = Address::new("e", "198.51.100.4/24".parse().unwrap());
        let mut packet = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(address_message(
                &a, 5, true,
            ))),
        );
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        got.clear();
        addr_events(&buf, &mut got);
        assert_eq!(
            got,
            [AddrEvent {
                added: true,
                ifindex: 5,
                addr: Ipv4Addr::new(198, 51, 100, 4),
                prefix_len: 24
            }]
        );
        // Cut anywhere: no panic, and never an event that was not there.
        for cut in 0..d.len() {
            got.clear();
            addr_events(&d[..cut], &mut got);
            assert!(got.len() <= 3);
        }
    }
}
