//! [`SimHost`]: one in-process host, with one smoltcp [`Interface`] and [`SocketSet`] per
//! interface, and what it does: ping, an HTTP/1.0 GET, a UDP exchange, and the lab's echo
//! service.
//!
//! Every operation is a [`Task`]: started and advanced by [`Task::step`] between polls of the
//! host, so that the same operation runs on a lone host ([`SimHost::run`], which polls only
//! this host) or inside a [`super::SimWorld`] (which polls every host between steps).
//!
//! Which interface an operation uses: the one holding the explicit `from` address, else the
//! one with a default route of the lowest metric, else the first. Routing is per interface
//! (smoltcp's); the secondary ENIs' policy routing (`from EIP lookup 100+N`) is not modelled.

use super::phy::SimPhy;
use crate::io::mem::MemHost;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::{icmp, tcp, udp};
use smoltcp::wire::{
    HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint,
};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

pub use smoltcp::wire::Ipv4Cidr;

/// Sizes of a TCP socket's buffers.
const TCP_BUFFER: usize = 64 * 1024;
/// First local port of outgoing connections (the Linux default range starts at 32768).
const FIRST_PORT: u16 = 40_000;

/// One interface of a host.
#[derive(Clone, Debug)]
pub struct IfaceConfig {
    /// `eth0`, …
    pub name: String,
    pub addrs: Vec<Ipv4Cidr>,
    /// The default route's next hop. On an IP medium the next hop is never resolved: any
    /// address means "everything else leaves here".
    pub gateway: Option<Ipv4Addr>,
    /// The default route's metric (lower wins when choosing the interface of an operation).
    pub metric: u32,
}

struct HttpConn {
    handle: SocketHandle,
    request: Vec<u8>,
    answered: bool,
}

/// Serves one port on one interface: a listening socket is always there; connections are
/// answered and closed.
struct HttpServer {
    port: u16,
    conns: Vec<HttpConn>,
}

struct Iface {
    cfg: IfaceConfig,
    iface: Interface,
    phy: SimPhy,
    sockets: SocketSet<'static>,
    http: Vec<HttpServer>,
    udp_echo: Vec<SocketHandle>,
    /// Sockets closed by a finished operation, removed once the close is done.
    closing: Vec<SocketHandle>,
}

/// An in-process host: its interfaces, their sockets, and the services it runs.
pub struct SimHost {
    name: String,
    ifaces: Vec<Iface>,
    epoch: Instant,
    next_port: u16,
    next_ident: u16,
}

fn tcp_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
    )
}

impl SimHost {
    /// A host named `name` (for messages) with an interface per `(config, host end of its
    /// in-memory device)`.
    pub fn new(name: &str, ifaces: Vec<(IfaceConfig, MemHost)>) -> Result<SimHost, String> {
        let epoch = Instant::now();
        let mut v = Vec::new();
        for (i, (cfg, mem)) in ifaces.into_iter().enumerate() {
            let mut phy = SimPhy::new(mem);
            let mut c = Config::new(HardwareAddress::Ip);
            c.random_seed = (name.len() as u64) << 32 | i as u64 | 0x5eed_0000;
            let mut iface = Interface::new(c, &mut phy, smoltcp::time::Instant::ZERO);
            let mut full = false;
            iface.update_ip_addrs(|a| {
                for &cidr in &cfg.addrs {
                    full |= a.push(IpCidr::Ipv4(cidr)).is_err();
                }
            });
            if full {
                return Err(format!("{name} {}: too many addresses", cfg.name));
            }
            if let Some(gw) = cfg.gateway {
                iface
                    .routes_mut()
                    .add_default_ipv4_route(gw)
                    .map_err(|_| format!("{name} {}: route table full", cfg.name))?;
            }
            v.push(Iface {
                cfg,
                iface,
                phy,
                sockets: SocketSet::new(Vec::new()),
                http: Vec::new(),
                udp_echo: Vec::new(),
                closing: Vec::new(),
            });
        }
        Ok(SimHost {
            name: name.to_string(),
            ifaces: v,
            epoch,
            next_port: FIRST_PORT,
            next_ident: 1,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every address of every interface.
    pub fn addrs(&self) -> Vec<(String, Ipv4Cidr)> {
        let mut v = Vec::new();
        for i in &self.ifaces {
            for a in i.iface.ip_addrs() {
                let IpCidr::Ipv4(c) = a;
                v.push((i.cfg.name.clone(), *c));
            }
        }
        v
    }

    fn clock(&self, now: Instant) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(
            now.saturating_duration_since(self.epoch).as_micros() as i64
        )
    }

    /// Moves packets between the interfaces and their sockets, and serves the services.
    pub fn poll(&mut self, now: Instant) {
        let t = self.clock(now);
        for i in &mut self.ifaces {
            i.iface.poll(t, &mut i.phy, &mut i.sockets);
            i.serve();
            // What the services wrote leaves now rather than at the next poll.
            i.iface.poll(t, &mut i.phy, &mut i.sockets);
        }
    }

    /// Answers every HTTP request on `port` (any interface, any address) with the caller's
    /// address and a newline, as the lab's echo service does.
    pub fn serve_echo_http(&mut self, port: u16) {
        for i in &mut self.ifaces {
            if !i.http.iter().any(|s| s.port == port) {
                i.http.push(HttpServer {
                    port,
                    conns: Vec::new(),
                });
            }
        }
        self.poll(Instant::now());
    }

    /// Sends every UDP datagram to `port` back to where it came from.
    pub fn serve_udp_echo(&mut self, port: u16) -> Result<(), String> {
        for i in &mut self.ifaces {
            let mut s = udp_socket();
            s.bind(port)
                .map_err(|e| format!("{}: UDP port {port}: {e}", self.name))?;
            let h = i.sockets.add(s);
            i.udp_echo.push(h);
        }
        Ok(())
    }

    /// The interface an operation from `from` uses (see the module comment).
    fn pick(&self, from: Option<Ipv4Addr>) -> Result<usize, String> {
        if let Some(a) = from {
            return self
                .ifaces
                .iter()
                .position(|i| i.cfg.addrs.iter().any(|c| c.address() == a))
                .ok_or_else(|| format!("{} has no address {a}", self.name));
        }
        self.ifaces
            .iter()
            .enumerate()
            .filter(|(_, i)| i.cfg.gateway.is_some())
            .min_by_key(|(n, i)| (i.cfg.metric, *n))
            .map(|(n, _)| n)
            .or(if self.ifaces.is_empty() {
                None
            } else {
                Some(0)
            })
            .ok_or_else(|| format!("{} has no interface", self.name))
    }

    fn local_port(&mut self) -> u16 {
        let p = self.next_port;
        self.next_port = if p == u16::MAX { FIRST_PORT } else { p + 1 };
        p
    }

    /// Runs `task` on this host alone (polling only this host) until it is done or `timeout`
    /// passed.
    pub fn run<T: Task>(&mut self, mut task: T, timeout: Duration) -> Result<T::Output, String> {
        let deadline = Instant::now() + timeout;
        loop {
            self.poll(Instant::now());
            if let Some(r) = task.step(self) {
                return r;
            }
            if Instant::now() >= deadline {
                task.cancel(self);
                return Err(format!("{}: {} timed out", self.name, task.what()));
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// An ICMP echo to `dst`; the round trip.
    pub fn ping(&mut self, dst: Ipv4Addr, timeout: Duration) -> Result<Duration, String> {
        self.run(Ping::new(dst, None), timeout)
    }

    /// `GET path` over HTTP/1.0 to `dst`; the body of a 200 answer.
    pub fn http_get(
        &mut self,
        dst: SocketAddrV4,
        path: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        self.run(HttpGet::new(dst, path, None), timeout)
    }

    /// Sends `payload` to `dst` over UDP; the first datagram that comes back from `dst`.
    pub fn udp_exchange(
        &mut self,
        dst: SocketAddrV4,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        self.run(UdpExchange::new(dst, payload, None), timeout)
    }
}

fn udp_socket() -> udp::Socket<'static> {
    udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16 * 2048]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16 * 2048]),
    )
}

fn icmp_socket() -> icmp::Socket<'static> {
    icmp::Socket::new(
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 4 * 256]),
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 4 * 256]),
    )
}

impl Iface {
    /// One round of the services: read requests, answer them, keep a listener on each port,
    /// echo datagrams, and drop sockets whose close is done.
    fn serve(&mut self) {
        let sockets = &mut self.sockets;
        for srv in &mut self.http {
            srv.conns.retain_mut(|c| {
                let s = sockets.get_mut::<tcp::Socket>(c.handle);
                if s.state() == tcp::State::Closed {
                    sockets.remove(c.handle);
                    return false;
                }
                while s.can_recv() {
                    let _ = s.recv(|b| {
                        c.request.extend_from_slice(b);
                        (b.len(), ())
                    });
                }
                let complete = c.request.windows(4).any(|w| w == b"\r\n\r\n");
                if !c.answered && complete && s.can_send() {
                    let who = s
                        .remote_endpoint()
                        .map_or_else(String::new, |e| e.addr.to_string());
                    let body = format!("{who}\n");
                    let answer = format!(
                        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.send_slice(answer.as_bytes());
                    s.close();
                    c.answered = true;
                } else if !c.answered && s.state() == tcp::State::CloseWait {
                    // The caller closed its side without a whole request. (Not `!may_recv()`:
                    // that is also true of a connection still being set up, SynReceived.)
                    s.close();
                    c.answered = true;
                }
                true
            });
            let listening = srv
                .conns
                .iter()
                .any(|c| sockets.get::<tcp::Socket>(c.handle).state() == tcp::State::Listen);
            if !listening {
                let mut s = tcp_socket();
                if s.listen(srv.port).is_ok() {
                    srv.conns.push(HttpConn {
                        handle: sockets.add(s),
                        request: Vec::new(),
                        answered: false,
                    });
                }
            }
        }
        for &h in &self.udp_echo {
            let s = sockets.get_mut::<udp::Socket>(h);
            let mut got = Vec::new();
            while let Ok((data, meta)) = s.recv() {
                got.push((data.to_vec(), meta.endpoint));
            }
            for (data, to) in got {
                let _ = s.send_slice(&data, to);
            }
        }
        self.closing.retain(|&h| {
            let done = matches!(
                sockets.get::<tcp::Socket>(h).state(),
                tcp::State::Closed | tcp::State::TimeWait
            );
            if done {
                sockets.remove(h);
            }
            !done
        });
    }
}

/// An operation on a host, advanced between polls.
pub trait Task {
    type Output;
    /// Starts the operation (first call) or looks whether it is done.
    fn step(&mut self, host: &mut SimHost) -> Option<Result<Self::Output, String>>;
    /// Gives up: frees what the operation holds.
    fn cancel(&mut self, host: &mut SimHost);
    /// For messages: `ping 198.51.100.10`.
    fn what(&self) -> String;
}

/// Where a started operation's socket is: interface and handle.
type Held = Option<(usize, SocketHandle)>;

/// An ICMP echo request and its reply.
pub struct Ping {
    dst: Ipv4Addr,
    from: Option<Ipv4Addr>,
    ident: u16,
    sent: Option<Instant>,
    held: Held,
}

impl Ping {
    pub fn new(dst: Ipv4Addr, from: Option<Ipv4Addr>) -> Ping {
        Ping {
            dst,
            from,
            ident: 0,
            sent: None,
            held: None,
        }
    }
}

const PING_DATA: &[u8] = b"eiplab sim ping";

impl Task for Ping {
    type Output = Duration;

    fn step(&mut self, h: &mut SimHost) -> Option<Result<Duration, String>> {
        let Some((n, handle)) = self.held else {
            let n = match h.pick(self.from) {
                Ok(n) => n,
                Err(e) => return Some(Err(e)),
            };
            self.ident = h.next_ident;
            h.next_ident = h.next_ident.wrapping_add(1).max(1);
            let mut s = icmp_socket();
            if let Err(e) = s.bind(icmp::Endpoint::Ident(self.ident)) {
                return Some(Err(format!("ping: {e}")));
            }
            let repr = Icmpv4Repr::EchoRequest {
                ident: self.ident,
                seq_no: 1,
                data: PING_DATA,
            };
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(
                &mut Icmpv4Packet::new_unchecked(&mut buf),
                &ChecksumCapabilities::default(),
            );
            if let Err(e) = s.send_slice(&buf, IpAddress::Ipv4(self.dst)) {
                return Some(Err(format!("ping: {e}")));
            }
            let i = &mut h.ifaces[n];
            self.held = Some((n, i.sockets.add(s)));
            self.sent = Some(Instant::now());
            return None;
        };
        let s = h.ifaces[n].sockets.get_mut::<icmp::Socket>(handle);
        while let Ok((bytes, from)) = s.recv() {
            if from != IpAddress::Ipv4(self.dst) {
                continue;
            }
            let Ok(p) = Icmpv4Packet::new_checked(bytes) else {
                continue;
            };
            if let Ok(Icmpv4Repr::EchoReply { ident, data, .. }) =
                Icmpv4Repr::parse(&p, &ChecksumCapabilities::default())
            {
                if ident == self.ident && data == PING_DATA {
                    let rtt = self.sent.map_or(Duration::ZERO, |t| t.elapsed());
                    self.cancel(h);
                    return Some(Ok(rtt));
                }
            }
        }
        None
    }

    fn cancel(&mut self, h: &mut SimHost) {
        if let Some((n, handle)) = self.held.take() {
            h.ifaces[n].sockets.remove(handle);
        }
    }

    fn what(&self) -> String {
        format!("ping {}", self.dst)
    }
}

/// A minimal HTTP/1.0 GET: connect, send the request, read until the server closes.
pub struct HttpGet {
    dst: SocketAddrV4,
    path: String,
    from: Option<Ipv4Addr>,
    held: Held,
    sent: bool,
    established: bool,
    answer: Vec<u8>,
}

impl HttpGet {
    pub fn new(dst: SocketAddrV4, path: &str, from: Option<Ipv4Addr>) -> HttpGet {
        HttpGet {
            dst,
            path: path.to_string(),
            from,
            held: None,
            sent: false,
            established: false,
            answer: Vec::new(),
        }
    }

    fn body(&self) -> Result<String, String> {
        let text = String::from_utf8_lossy(&self.answer);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("{}: no complete HTTP answer: {text:?}", self.what()))?;
        let status = head.lines().next().unwrap_or_default();
        let code = status.split_whitespace().nth(1).unwrap_or_default();
        if code != "200" {
            return Err(format!("{}: {status}", self.what()));
        }
        Ok(body.to_string())
    }
}

impl Task for HttpGet {
    type Output = String;

    fn step(&mut self, h: &mut SimHost) -> Option<Result<String, String>> {
        let Some((n, handle)) = self.held else {
            let n = match h.pick(self.from) {
                Ok(n) => n,
                Err(e) => return Some(Err(e)),
            };
            let port = h.local_port();
            let i = &mut h.ifaces[n];
            let src = self
                .from
                .or_else(|| i.cfg.addrs.first().map(|c| c.address()));
            let Some(src) = src else {
                return Some(Err(format!("{}: {} has no address", h.name, i.cfg.name)));
            };
            let mut s = tcp_socket();
            let remote = IpEndpoint::new(IpAddress::Ipv4(*self.dst.ip()), self.dst.port());
            let local = IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(src)),
                port,
            };
            if let Err(e) = s.connect(i.iface.context(), remote, local) {
                return Some(Err(format!("{}: connect: {e}", self.what())));
            }
            self.held = Some((n, i.sockets.add(s)));
            return None;
        };
        let i = &mut h.ifaces[n];
        let s = i.sockets.get_mut::<tcp::Socket>(handle);
        if s.may_send() {
            self.established = true;
            if !self.sent {
                let req = format!(
                    "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: eiplab-sim\r\n\r\n",
                    self.path, self.dst
                );
                if s.send_slice(req.as_bytes()).is_ok() {
                    self.sent = true;
                }
            }
        }
        while s.can_recv() {
            let _ = s.recv(|b| {
                self.answer.extend_from_slice(b);
                (b.len(), ())
            });
        }
        let state = s.state();
        if state == tcp::State::Closed && !self.established {
            i.sockets.remove(handle);
            self.held = None;
            return Some(Err(format!("{}: connection refused or reset", self.what())));
        }
        if self.established && !s.may_recv() && !s.can_recv() {
            // The server closed: the answer is whole.
            s.close();
            i.closing.push(handle);
            self.held = None;
            return Some(self.body());
        }
        None
    }

    fn cancel(&mut self, h: &mut SimHost) {
        if let Some((n, handle)) = self.held.take() {
            h.ifaces[n].sockets.get_mut::<tcp::Socket>(handle).abort();
            h.ifaces[n].closing.push(handle);
        }
    }

    fn what(&self) -> String {
        format!("GET http://{}{}", self.dst, self.path)
    }
}

/// One UDP datagram out, the first one back from the same address and port.
pub struct UdpExchange {
    dst: SocketAddrV4,
    payload: Vec<u8>,
    from: Option<Ipv4Addr>,
    held: Held,
}

impl UdpExchange {
    pub fn new(dst: SocketAddrV4, payload: &[u8], from: Option<Ipv4Addr>) -> UdpExchange {
        UdpExchange {
            dst,
            payload: payload.to_vec(),
            from,
            held: None,
        }
    }
}

impl Task for UdpExchange {
    type Output = Vec<u8>;

    fn step(&mut self, h: &mut SimHost) -> Option<Result<Vec<u8>, String>> {
        let remote = IpEndpoint::new(IpAddress::Ipv4(*self.dst.ip()), self.dst.port());
        let Some((n, handle)) = self.held else {
            let n = match h.pick(self.from) {
                Ok(n) => n,
                Err(e) => return Some(Err(e)),
            };
            let port = h.local_port();
            let mut s = udp_socket();
            let local = IpListenEndpoint {
                addr: self.from.map(IpAddress::Ipv4),
                port,
            };
            if let Err(e) = s.bind(local) {
                return Some(Err(format!("{}: bind: {e}", self.what())));
            }
            if let Err(e) = s.send_slice(&self.payload, remote) {
                return Some(Err(format!("{}: {e}", self.what())));
            }
            self.held = Some((n, h.ifaces[n].sockets.add(s)));
            return None;
        };
        let s = h.ifaces[n].sockets.get_mut::<udp::Socket>(handle);
        while let Ok((data, meta)) = s.recv() {
            if meta.endpoint == remote {
                let got = data.to_vec();
                self.cancel(h);
                return Some(Ok(got));
            }
        }
        None
    }

    fn cancel(&mut self, h: &mut SimHost) {
        if let Some((n, handle)) = self.held.take() {
            h.ifaces[n].sockets.remove(handle);
        }
    }

    fn what(&self) -> String {
        format!("UDP to {}", self.dst)
    }
}
