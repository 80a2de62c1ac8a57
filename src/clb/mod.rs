//! Layer-4 load balancing of a cloud internal-facing CLB (Classic Load Balancer): listeners
//! (TCP or UDP, one port each) spread new connections over their backend servers, a
//! connection stays on the backend it got, and backends whose health check fails get no new
//! connections.
//!
//! A pure state machine, as [`crate::napt`] is for the NAT gateway: the dataplane calls it
//! once per packet with the time (nanoseconds), the transport, the TCP flags byte and the
//! endpoints, and it answers with the backend (or the listener port, for replies) or a
//! [`ClbDrop`] naming why not. It does not touch packet bytes, reads no clock and runs no
//! health check itself: [`Clb::health_targets`] says what to probe and
//! [`Clb::report_health`] takes the results.
//!
//! What the cloud does by default ([`ListenerConfig::tcp`], [`ListenerConfig::udp`]):
//! weighted round robin, backend port = listener port, health check on (every 2 s, 5 s
//! timeout, 3 results in a row to change state), idle timeout TCP 900 s and UDP 90 s. A
//! closing TCP connection (RST, or FIN both ways) lives [`CLOSING_TIMEOUT_NS`] more at most;
//! that figure is ours, the cloud does not publish one.
//!
//! Cost: a packet of a known connection is one hash lookup and an O(1) move in a list;
//! a new connection is one scheduling pass over its listener's backends. Connections live
//! in a slab whose freed slots are reused and are removed from both indexes when they end,
//! so memory follows the live connections (at most `max_connections`).
//!
//! Expiry: each listener keeps its connections in two intrusive lists, one per timeout
//! (idle, closing), in the order of their last packet: every packet moves its connection to
//! the back of its list. All members of a list share one timeout, so the front is always the
//! first to expire, and [`Clb::handle_timeout`] only looks at fronts: O(listeners + expired),
//! exact to the nanosecond, nothing to sweep. (A timer wheel would avoid the per-packet
//! move, but needs more machinery than a lab's load balancer is worth.)

use crate::napt::key::FlowBuild;
use core::net::{Ipv4Addr, SocketAddrV4};
use std::collections::HashMap;

/// "No index" in the slab and its lists.
const NONE: u32 = u32::MAX;

const SEC: u64 = 1_000_000_000;

/// How long a TCP connection lives after RST, or after FIN from both sides (or less, if the
/// listener's idle timeout is shorter): long enough for the last ACKs and retransmitted
/// FINs, short enough that the client's next connection from the same port is not held up.
pub const CLOSING_TIMEOUT_NS: u64 = 10 * SEC;

/// TCP flags as they are in the header's 13th byte, which is what the dataplane passes.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The transport of a listener (and of its connections).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListenerProtocol {
    Tcp,
    Udp,
}

/// How a listener spreads new connections over its eligible backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheduler {
    /// "rr": each eligible backend in turn; weights only matter in that 0 excludes.
    RoundRobin,
    /// "wrr", the cloud's default: in proportion to the weights, smoothly (nginx's smooth
    /// weighted round robin), so a heavy backend's turns are spread out rather than bunched.
    WeightedRoundRobin,
}

/// A backend server of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub addr: Ipv4Addr,
    /// 0..=100 in the cloud; 0 takes the backend out of scheduling (its connections carry
    /// on). Larger values are not refused here and count proportionally.
    pub weight: u16,
}

/// A listener's health check of its backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// Off: every backend with a weight is eligible, whatever it does.
    pub enabled: bool,
    /// The port probed on each backend; 0 means the listener's backend port.
    pub port: u16,
    pub interval_ms: u32,
    pub timeout_ms: u32,
    /// Successes in a row that bring a Down backend back Up (0 counts as 1).
    pub healthy_threshold: u8,
    /// Failures in a row that take an Up backend Down (0 counts as 1).
    pub unhealthy_threshold: u8,
}

impl HealthCheckConfig {
    /// The cloud's defaults: on, every 2 s, 5 s timeout, 3 in a row either way.
    pub fn default_for(port: u16) -> Self {
        HealthCheckConfig {
            enabled: true,
            port,
            interval_ms: 2000,
            timeout_ms: 5000,
            healthy_threshold: 3,
            unhealthy_threshold: 3,
        }
    }
}

/// A listener: connections to `port` on `protocol` go to a backend's `backend_port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    pub protocol: ListenerProtocol,
    pub port: u16,
    pub backend_port: u16,
    pub scheduler: Scheduler,
    pub backends: Vec<BackendConfig>,
    pub health: HealthCheckConfig,
    /// A connection with no packet for this long ends.
    pub idle_timeout_ns: u64,
}

impl ListenerConfig {
    /// A TCP listener with the cloud's defaults (900 s idle timeout) and no backends yet.
    pub fn tcp(port: u16) -> Self {
        Self::with_defaults(ListenerProtocol::Tcp, port, 900 * SEC)
    }

    /// A UDP listener with the cloud's defaults (90 s idle timeout) and no backends yet.
    pub fn udp(port: u16) -> Self {
        Self::with_defaults(ListenerProtocol::Udp, port, 90 * SEC)
    }

    fn with_defaults(protocol: ListenerProtocol, port: u16, idle_timeout_ns: u64) -> Self {
        ListenerConfig {
            protocol,
            port,
            backend_port: port,
            scheduler: Scheduler::WeightedRoundRobin,
            backends: Vec::new(),
            health: HealthCheckConfig::default_for(port),
            idle_timeout_ns,
        }
    }
}

/// The load balancer's listeners and limits. Two listeners on one protocol and port: the
/// first is the one that takes traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClbConfig {
    pub listeners: Vec<ListenerConfig>,
    /// Live connections at most; a new connection beyond it is refused, live ones carry on.
    pub max_connections: usize,
}

impl Default for ClbConfig {
    fn default() -> Self {
        ClbConfig {
            listeners: Vec::new(),
            max_connections: 1_000_000,
        }
    }
}

/// What the health check says of a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Health {
    /// Not checked yet (or the check is off): eligible, as the cloud does not hold traffic
    /// back from a backend it just added.
    #[default]
    Unknown,
    Up,
    /// No new connections; those it has carry on until they end by themselves.
    Down,
}

/// Why a packet from a client was not forwarded. `Copy` and dense, to index a counter array.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClbDrop {
    /// No listener on this protocol and port.
    NoListener,
    /// The listener has no backend that may take a new connection: none at all, all of
    /// weight 0, or all Down.
    NoHealthyBackend,
    /// `max_connections` are live; the new connection is refused.
    TableFull,
    /// Every eligible backend already has a connection from this client address and port
    /// on this protocol and backend port, made through another listener: the backend's
    /// replies could not tell the two apart.
    Conflict,
}

impl ClbDrop {
    pub const COUNT: usize = 4;
    pub const ALL: [ClbDrop; ClbDrop::COUNT] = [
        ClbDrop::NoListener,
        ClbDrop::NoHealthyBackend,
        ClbDrop::TableFull,
        ClbDrop::Conflict,
    ];

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One health probe to run: `addr` on `protocol`, every `interval_ms`, failing after
/// `timeout_ms`; report each result with [`Clb::report_health`]`(listener, backend, ok)`.
/// The indexes are positions in the configuration in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthTarget {
    pub listener: usize,
    pub backend: usize,
    pub protocol: ListenerProtocol,
    pub addr: SocketAddrV4,
    pub interval_ms: u32,
    pub timeout_ms: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendStats {
    pub addr: Ipv4Addr,
    pub weight: u16,
    pub health: Health,
    /// Live connections.
    pub active: usize,
    /// Connections ever scheduled to it (kept across configuration changes).
    pub total: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerStats {
    pub protocol: ListenerProtocol,
    pub port: u16,
    pub backends: Vec<BackendStats>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClbStats {
    /// Live connections, all listeners.
    pub connections: usize,
    /// In configuration order.
    pub listeners: Vec<ListenerStats>,
}

// TCP state bits of a connection.
const FIN_CLIENT: u8 = 1;
const FIN_BACKEND: u8 = 2;
const RST: u8 = 4;

// The two lists (and timeouts) of a listener.
const IDLE: usize = 0;
const CLOSING: usize = 1;

/// Which list a connection in TCP state `tcp` belongs to.
#[inline(always)]
fn class(tcp: u8) -> usize {
    let both = FIN_CLIENT | FIN_BACKEND;
    if tcp & RST != 0 || tcp & both == both {
        CLOSING
    } else {
        IDLE
    }
}

/// One connection: client <-> backend through listener `listener`.
#[derive(Clone, Copy, Debug)]
struct Conn {
    /// The time of its last packet; it ends at `last` + its list's timeout.
    last: u64,
    client: SocketAddrV4,
    /// Backend address : the listener's backend port.
    backend: SocketAddrV4,
    listener: u32,
    backend_idx: u32,
    /// Its neighbours in its listener's list.
    prev: u32,
    next: u32,
    listener_port: u16,
    proto: ListenerProtocol,
    tcp: u8,
    live: bool,
}

/// A doubly linked list through the slab, oldest last packet first.
#[derive(Clone, Copy, Debug)]
struct List {
    head: u32,
    tail: u32,
}

impl List {
    const EMPTY: List = List {
        head: NONE,
        tail: NONE,
    };
}

fn unlink(conns: &mut [Conn], list: &mut List, i: u32) {
    let (p, n) = {
        let c = &conns[i as usize];
        (c.prev, c.next)
    };
    if p == NONE {
        list.head = n;
    } else {
        conns[p as usize].next = n;
    }
    if n == NONE {
        list.tail = p;
    } else {
        conns[n as usize].prev = p;
    }
}

fn push_back(conns: &mut [Conn], list: &mut List, i: u32) {
    let t = list.tail;
    {
        let c = &mut conns[i as usize];
        c.prev = t;
        c.next = NONE;
    }
    if t == NONE {
        list.head = i;
    } else {
        conns[t as usize].next = i;
    }
    list.tail = i;
}

/// A backend as the balancer keeps it.
#[derive(Clone, Copy, Debug)]
struct Backend {
    addr: Ipv4Addr,
    weight: u16,
    health: Health,
    /// Results in a row against `health` (failures while Up, successes while Down).
    streak: u8,
    /// Smooth weighted round robin's running value.
    current: i64,
    active: usize,
    total: u64,
}

#[derive(Clone, Debug)]
struct Listener {
    cfg: ListenerConfig,
    backends: Vec<Backend>,
    /// Round robin: where the next search starts.
    rr_next: usize,
    lists: [List; 2],
}

impl Listener {
    fn new(cfg: ListenerConfig) -> Self {
        let backends = cfg
            .backends
            .iter()
            .map(|b| Backend {
                addr: b.addr,
                weight: b.weight,
                health: Health::Unknown,
                streak: 0,
                current: 0,
                active: 0,
                total: 0,
            })
            .collect();
        Listener {
            cfg,
            backends,
            rr_next: 0,
            lists: [List::EMPTY; 2],
        }
    }

    /// The timeout of list `class`.
    #[inline(always)]
    fn timeout(&self, class: usize) -> u64 {
        if class == CLOSING {
            CLOSING_TIMEOUT_NS.min(self.cfg.idle_timeout_ns)
        } else {
            self.cfg.idle_timeout_ns
        }
    }

    /// Picks a backend for a new connection among those with a weight and not Down (health
    /// is ignored with the check off) for which `free(addr)` holds; backends that are not
    /// eligible are skipped without touching their scheduler state, so the others keep
    /// their ratio among themselves.
    fn pick(&mut self, free: impl Fn(Ipv4Addr) -> bool) -> Result<usize, ClbDrop> {
        let checked = self.cfg.health.enabled;
        let healthy = |b: &Backend| b.weight > 0 && !(checked && b.health == Health::Down);
        let mut any_healthy = false;
        let mut eligible = |b: &Backend| {
            let h = healthy(b);
            any_healthy |= h;
            h && free(b.addr)
        };
        let found = match self.cfg.scheduler {
            Scheduler::WeightedRoundRobin => {
                // nginx: every eligible backend gains its weight, the largest wins (the
                // first among equals) and pays back the total gained.
                let mut total = 0i64;
                let mut best: Option<usize> = None;
                for i in 0..self.backends.len() {
                    if !eligible(&self.backends[i]) {
                        continue;
                    }
                    let w = self.backends[i].weight as i64;
                    self.backends[i].current += w;
                    total += w;
                    let cur = self.backends[i].current;
                    if best.is_none_or(|j| cur > self.backends[j].current) {
                        best = Some(i);
                    }
                }
                if let Some(j) = best {
                    self.backends[j].current -= total;
                }
                best
            }
            Scheduler::RoundRobin => {
                let n = self.backends.len();
                let start = self.rr_next.min(n);
                let found = (0..n)
                    .map(|k| (start + k) % n)
                    .find(|&i| eligible(&self.backends[i]));
                if let Some(i) = found {
                    self.rr_next = (i + 1) % n;
                }
                found
            }
        };
        match found {
            Some(i) => Ok(i),
            None if any_healthy => Err(ClbDrop::Conflict),
            None => Err(ClbDrop::NoHealthyBackend),
        }
    }
}

/// The load balancer: listeners, their backends' health and schedulers, and connections.
#[derive(Debug)]
pub struct Clb {
    listeners: Vec<Listener>,
    /// (protocol, port) -> listener; the first of duplicates.
    index: HashMap<(ListenerProtocol, u16), usize>,
    max_connections: usize,
    conns: Vec<Conn>,
    free: Vec<u32>,
    live: usize,
    /// (protocol, client, listener port) -> connection.
    by_client: HashMap<u128, u32, FlowBuild>,
    /// (protocol, backend address:port, client) -> connection.
    by_backend: HashMap<u128, u32, FlowBuild>,
    /// The latest time seen: an earlier `now` is taken as this, so time never runs back
    /// and the lists stay in order.
    clock: u64,
}

/// A connection's key by its client side: (protocol, client address and port, listener
/// port), packed into one word pair so that hashing it is two multiplies (the NAPT's
/// [`FlowBuild`]), not SipHash over five fields.
#[inline(always)]
fn client_key(p: ListenerProtocol, client: SocketAddrV4, listener_port: u16) -> u128 {
    (p as u128) << 96
        | u128::from(u32::from(*client.ip())) << 32
        | u128::from(client.port()) << 16
        | u128::from(listener_port)
}

/// A connection's key by its backend side: (protocol, backend address and port, client
/// address and port).
#[inline(always)]
fn backend_key(p: ListenerProtocol, backend: SocketAddrV4, client: SocketAddrV4) -> u128 {
    (p as u128) << 96
        | u128::from(u32::from(*backend.ip())) << 64
        | u128::from(backend.port()) << 48
        | u128::from(u32::from(*client.ip())) << 16
        | u128::from(client.port())
}

fn index_of(listeners: &[Listener]) -> HashMap<(ListenerProtocol, u16), usize> {
    let mut index = HashMap::with_capacity(listeners.len());
    for (i, l) in listeners.iter().enumerate() {
        index.entry((l.cfg.protocol, l.cfg.port)).or_insert(i);
    }
    index
}

impl Clb {
    pub fn new(cfg: ClbConfig) -> Clb {
        let mut clb = Clb {
            listeners: Vec::new(),
            index: HashMap::new(),
            max_connections: 0,
            conns: Vec::new(),
            free: Vec::new(),
            live: 0,
            by_client: HashMap::default(),
            by_backend: HashMap::default(),
            clock: 0,
        };
        clb.set_config(cfg);
        clb
    }

    #[inline(always)]
    fn tick(&mut self, now: u64) -> u64 {
        self.clock = self.clock.max(now);
        self.clock
    }

    /// Whether connection `i` is still live at `now`.
    #[inline(always)]
    fn alive(&self, i: u32, now: u64) -> bool {
        let c = &self.conns[i as usize];
        let t = self.listeners[c.listener as usize].timeout(class(c.tcp));
        now < c.last.saturating_add(t)
    }

    /// A packet of connection `i` passed at `now` with TCP `flags`: its TCP state follows,
    /// and it goes to the back of the list its state belongs to.
    fn touch(&mut self, i: u32, now: u64, flags: u8, from_client: bool) {
        let c = &mut self.conns[i as usize];
        let before = class(c.tcp);
        if c.proto == ListenerProtocol::Tcp {
            if flags & TCP_FIN != 0 {
                c.tcp |= if from_client { FIN_CLIENT } else { FIN_BACKEND };
            }
            if flags & TCP_RST != 0 {
                c.tcp |= RST;
            }
        }
        c.last = now;
        let after = class(c.tcp);
        let lists = &mut self.listeners[c.listener as usize].lists;
        if before != after || lists[before].tail != i {
            unlink(&mut self.conns, &mut lists[before], i);
            push_back(&mut self.conns, &mut lists[after], i);
        }
    }

    /// Ends connection `i`: out of its list, its backend's count and both indexes.
    fn remove(&mut self, i: u32) {
        let c = self.conns[i as usize];
        let l = &mut self.listeners[c.listener as usize];
        unlink(&mut self.conns, &mut l.lists[class(c.tcp)], i);
        let b = &mut l.backends[c.backend_idx as usize];
        b.active = b.active.saturating_sub(1);
        self.forget(i);
    }

    /// Removes connection `i` from the indexes and frees its slot (its list and backend
    /// count are the caller's).
    fn forget(&mut self, i: u32) {
        let c = &mut self.conns[i as usize];
        c.live = false;
        self.by_client
            .remove(&client_key(c.proto, c.client, c.listener_port));
        self.by_backend
            .remove(&backend_key(c.proto, c.backend, c.client));
        self.free.push(i);
        self.live -= 1;
    }

    /// A packet from `client` to listener port `listener_port` (TCP flags byte `tcp_flags`,
    /// ignored for UDP): the backend address:port to send it to.
    ///
    /// A packet of a live connection goes where the connection's first did. Any other packet
    /// starts a connection (a TCP one need not start with SYN: the balancer may have been
    /// reconfigured or restarted mid-connection), scheduled among the eligible backends;
    /// so does a SYN without ACK on a TCP connection that has seen FIN or RST (the client
    /// reusing its port for a new connection).
    pub fn inbound(
        &mut self,
        now: u64,
        proto: ListenerProtocol,
        tcp_flags: u8,
        client: SocketAddrV4,
        listener_port: u16,
    ) -> Result<SocketAddrV4, ClbDrop> {
        let now = self.tick(now);
        if let Some(&i) = self
            .by_client
            .get(&client_key(proto, client, listener_port))
        {
            if self.alive(i, now) {
                let c = &self.conns[i as usize];
                let reuse = proto == ListenerProtocol::Tcp
                    && c.tcp != 0
                    && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
                if !reuse {
                    self.touch(i, now, tcp_flags, true);
                    return Ok(self.conns[i as usize].backend);
                }
            }
            self.remove(i);
        }
        let &li = self
            .index
            .get(&(proto, listener_port))
            .ok_or(ClbDrop::NoListener)?;
        // Ended connections give their room back before the table is judged full (and no
        // ended connection is left to look like a conflict).
        self.handle_timeout(now);
        if self.live >= self.max_connections {
            return Err(ClbDrop::TableFull);
        }
        let l = &mut self.listeners[li];
        let port = l.cfg.backend_port;
        let by_backend = &self.by_backend;
        let b = l.pick(|addr| {
            !by_backend.contains_key(&backend_key(proto, SocketAddrV4::new(addr, port), client))
        })?;
        let backend = SocketAddrV4::new(l.backends[b].addr, port);
        l.backends[b].active += 1;
        l.backends[b].total += 1;
        let conn = Conn {
            last: now,
            client,
            backend,
            listener: li as u32,
            backend_idx: b as u32,
            prev: NONE,
            next: NONE,
            listener_port,
            proto,
            tcp: 0,
            live: true,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.conns[i as usize] = conn;
                i
            }
            None => {
                self.conns.push(conn);
                self.conns.len() as u32 - 1
            }
        };
        self.live += 1;
        self.by_client
            .insert(client_key(proto, client, listener_port), i);
        self.by_backend
            .insert(backend_key(proto, backend, client), i);
        push_back(&mut self.conns, &mut self.listeners[li].lists[IDLE], i);
        // The first packet may itself be a FIN or RST.
        self.touch(i, now, tcp_flags, true);
        Ok(backend)
    }

    /// A packet from `backend` (address:backend port) to `client`: the listener port to
    /// send it from, if it belongs to a live connection. A backend cannot start a
    /// connection through the balancer.
    pub fn outbound(
        &mut self,
        now: u64,
        proto: ListenerProtocol,
        tcp_flags: u8,
        backend: SocketAddrV4,
        client: SocketAddrV4,
    ) -> Option<u16> {
        let now = self.tick(now);
        let &i = self.by_backend.get(&backend_key(proto, backend, client))?;
        if !self.alive(i, now) {
            self.remove(i);
            return None;
        }
        self.touch(i, now, tcp_flags, false);
        Some(self.conns[i as usize].listener_port)
    }

    /// [`Clb::outbound`] without touching the connection: the listener port a backend's
    /// packet to `client` would leave from, for a packet that will not leave (its TTL ran
    /// out), so that it neither refreshes nor closes the connection.
    pub fn peek_outbound(
        &self,
        now: u64,
        proto: ListenerProtocol,
        backend: SocketAddrV4,
        client: SocketAddrV4,
    ) -> Option<u16> {
        let &i = self.by_backend.get(&backend_key(proto, backend, client))?;
        self.alive(i, now.max(self.clock))
            .then(|| self.conns[i as usize].listener_port)
    }

    /// The probes to run: every backend of every listener whose check is on.
    pub fn health_targets(&self) -> Vec<HealthTarget> {
        let mut out = Vec::new();
        for (li, l) in self.listeners.iter().enumerate() {
            let h = &l.cfg.health;
            if !h.enabled {
                continue;
            }
            let port = if h.port == 0 {
                l.cfg.backend_port
            } else {
                h.port
            };
            for (bi, b) in l.backends.iter().enumerate() {
                out.push(HealthTarget {
                    listener: li,
                    backend: bi,
                    protocol: l.cfg.protocol,
                    addr: SocketAddrV4::new(b.addr, port),
                    interval_ms: h.interval_ms,
                    timeout_ms: h.timeout_ms,
                });
            }
        }
        out
    }

    /// Applies one probe result of backend `backend` of listener `listener`, and returns
    /// its new health if it changed. The first result decides at once; after that it takes
    /// `unhealthy_threshold` failures in a row to go Down and `healthy_threshold` successes
    /// in a row to come back Up. Indexes out of range, and listeners with the check off,
    /// are ignored.
    pub fn report_health(&mut self, listener: usize, backend: usize, ok: bool) -> Option<Health> {
        let l = self.listeners.get_mut(listener)?;
        if !l.cfg.health.enabled {
            return None;
        }
        let h = l.cfg.health;
        let b = l.backends.get_mut(backend)?;
        let (against, threshold, to) = match b.health {
            Health::Unknown => (true, 1, if ok { Health::Up } else { Health::Down }),
            Health::Up => (!ok, h.unhealthy_threshold.max(1), Health::Down),
            Health::Down => (ok, h.healthy_threshold.max(1), Health::Up),
        };
        if !against {
            b.streak = 0;
            return None;
        }
        b.streak = b.streak.saturating_add(1);
        if b.streak < threshold {
            return None;
        }
        b.streak = 0;
        b.health = to;
        Some(to)
    }

    /// When [`Clb::handle_timeout`] next has a connection to end, or `None` with none.
    pub fn poll_timeout(&self) -> Option<u64> {
        let mut next: Option<u64> = None;
        for l in &self.listeners {
            for class in [IDLE, CLOSING] {
                let h = l.lists[class].head;
                if h != NONE {
                    let d = self.conns[h as usize].last.saturating_add(l.timeout(class));
                    next = Some(next.map_or(d, |n| n.min(d)));
                }
            }
        }
        next
    }

    /// Ends the connections whose timeout has passed by `now`.
    pub fn handle_timeout(&mut self, now: u64) {
        let now = self.tick(now);
        for li in 0..self.listeners.len() {
            for class in [IDLE, CLOSING] {
                let t = self.listeners[li].timeout(class);
                loop {
                    let h = self.listeners[li].lists[class].head;
                    if h == NONE || now < self.conns[h as usize].last.saturating_add(t) {
                        break;
                    }
                    self.remove(h);
                }
            }
        }
    }

    /// Puts a new configuration in force while connections are live (one pass over them).
    ///
    /// A listener is the same one if its protocol and port are, a backend if its address is
    /// (within the same listener). A connection carries on, on the same backend, if both
    /// remain and the backend port is unchanged; the others end at once. Backends that
    /// remain keep their health (unless the check is now off: then Unknown) and their
    /// `total`; new ones start Unknown. A listener's scheduler starts afresh only if its
    /// scheduler or its backends (addresses, weights, order) changed. A lower
    /// `max_connections` lets the live connections carry on and refuses new ones until
    /// fewer are left. Health target indexes follow the new configuration.
    pub fn set_config(&mut self, cfg: ClbConfig) {
        let ClbConfig {
            listeners,
            max_connections,
        } = cfg;
        let mut new: Vec<Listener> = listeners.into_iter().map(Listener::new).collect();
        let index = index_of(&new);
        let old = core::mem::take(&mut self.listeners);
        let old_index = core::mem::take(&mut self.index);
        // Per old listener: the new listener its connections go to, and each old backend's
        // index there (NONE: its connections end).
        let mut dest: Vec<Option<(usize, Vec<u32>)>> = Vec::with_capacity(old.len());
        for (oi, ol) in old.iter().enumerate() {
            let key = (ol.cfg.protocol, ol.cfg.port);
            let ni = match (index.get(&key), old_index.get(&key)) {
                (Some(&ni), Some(&o)) if o == oi => ni,
                _ => {
                    dest.push(None);
                    continue;
                }
            };
            let nl = &mut new[ni];
            let mut by_addr: HashMap<Ipv4Addr, usize> = HashMap::with_capacity(ol.backends.len());
            for (i, b) in ol.backends.iter().enumerate() {
                by_addr.entry(b.addr).or_insert(i);
            }
            let checked = nl.cfg.health.enabled;
            for nb in nl.backends.iter_mut() {
                if let Some(&o) = by_addr.get(&nb.addr) {
                    let ob = &ol.backends[o];
                    nb.total = ob.total;
                    if checked {
                        nb.health = ob.health;
                        nb.streak = ob.streak;
                    }
                }
            }
            if ol.cfg.backends == nl.cfg.backends && ol.cfg.scheduler == nl.cfg.scheduler {
                for (nb, ob) in nl.backends.iter_mut().zip(&ol.backends) {
                    nb.current = ob.current;
                }
                nl.rr_next = ol.rr_next;
            }
            let map = if ol.cfg.backend_port == nl.cfg.backend_port {
                let mut new_by_addr: HashMap<Ipv4Addr, u32> =
                    HashMap::with_capacity(nl.backends.len());
                for (i, b) in nl.backends.iter().enumerate() {
                    new_by_addr.entry(b.addr).or_insert(i as u32);
                }
                ol.backends
                    .iter()
                    .map(|b| new_by_addr.get(&b.addr).copied().unwrap_or(NONE))
                    .collect()
            } else {
                vec![NONE; ol.backends.len()]
            };
            dest.push(Some((ni, map)));
        }
        // Move the connections over in list order, so the new lists are in order too.
        for (oi, ol) in old.iter().enumerate() {
            for class in [IDLE, CLOSING] {
                let mut i = ol.lists[class].head;
                while i != NONE {
                    let c = self.conns[i as usize];
                    let to = dest[oi].as_ref().and_then(|(ni, map)| {
                        let nb = map.get(c.backend_idx as usize).copied().unwrap_or(NONE);
                        (nb != NONE).then_some((*ni, nb))
                    });
                    match to {
                        Some((ni, nb)) => {
                            let c = &mut self.conns[i as usize];
                            c.listener = ni as u32;
                            c.backend_idx = nb;
                            push_back(&mut self.conns, &mut new[ni].lists[class], i);
                            new[ni].backends[nb as usize].active += 1;
                        }
                        None => self.forget(i),
                    }
                    i = c.next;
                }
            }
        }
        self.listeners = new;
        self.index = index;
        self.max_connections = max_connections;
    }

    /// Live connections, all listeners.
    pub fn connections(&self) -> usize {
        self.live
    }

    pub fn stats(&self) -> ClbStats {
        ClbStats {
            connections: self.live,
            listeners: self
                .listeners
                .iter()
                .map(|l| ListenerStats {
                    protocol: l.cfg.protocol,
                    port: l.cfg.port,
                    backends: l
                        .backends
                        .iter()
                        .map(|b| BackendStats {
                            addr: b.addr,
                            weight: b.weight,
                            health: b.health,
                            active: b.active,
                            total: b.total,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// The indexes, lists and counts agree with the slab (tests only).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let live: Vec<u32> = (0..self.conns.len() as u32)
            .filter(|&i| self.conns[i as usize].live)
            .collect();
        assert_eq!(live.len(), self.live);
        assert_eq!(self.by_client.len(), self.live);
        assert_eq!(self.by_backend.len(), self.live);
        assert_eq!(self.conns.len(), self.live + self.free.len());
        let mut active: Vec<Vec<usize>> = self
            .listeners
            .iter()
            .map(|l| vec![0; l.backends.len()])
            .collect();
        let mut listed = 0;
        for (li, l) in self.listeners.iter().enumerate() {
            for k in [IDLE, CLOSING] {
                let (mut i, mut prev, mut last) = (l.lists[k].head, NONE, 0);
                while i != NONE {
                    let c = &self.conns[i as usize];
                    assert!(c.live);
                    assert_eq!(c.prev, prev);
                    assert_eq!(c.listener as usize, li);
                    assert_eq!(class(c.tcp), k);
                    assert!(c.last >= last, "list out of order");
                    assert_eq!(c.listener_port, l.cfg.port);
                    assert_eq!(c.proto, l.cfg.protocol);
                    let b = &l.backends[c.backend_idx as usize];
                    assert_eq!(c.backend, SocketAddrV4::new(b.addr, l.cfg.backend_port));
                    assert_eq!(
                        self.by_client
                            .get(&client_key(c.proto, c.client, c.listener_port)),
                        Some(&i)
                    );
                    assert_eq!(
                        self.by_backend
                            .get(&backend_key(c.proto, c.backend, c.client)),
                        Some(&i)
                    );
                    active[li][c.backend_idx as usize] += 1;
                    listed += 1;
                    last = c.last;
                    prev = i;
                    i = c.next;
                }
                assert_eq!(l.lists[k].tail, prev);
            }
        }
        assert_eq!(listed, self.live);
        for (l, a) in self.listeners.iter().zip(&active) {
            for (b, &n) in l.backends.iter().zip(a) {
                assert_eq!(b.active, n);
            }
        }
    }
}

#[cfg(test)]
mod tests;
