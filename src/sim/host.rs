//! [`SimHost`]: one in-process host: one smoltcp [`Interface`] holding every address of its
//! devices, the devices behind a routing [`HostPhy`], and what the host does (ping, an HTTP/1.0
//! GET, TCP and UDP sends and listens, the lab's echo service).
//!
//! Every operation is a [`Task`]: started and advanced by [`Task::step`] between polls of the
//! host, so that the same operation runs on a lone host ([`SimHost::run`], which polls only
//! this host) or inside a [`super::SimWorld`] (which polls every host between steps).
//!
//! Source addresses are chosen as Linux chooses them: the explicit `from` (`curl --interface`,
//! `ping -I`), else the first address of the device the main table routes the destination
//! to. The packet then leaves by the device the host's rules and routes pick for that source
//! ([`super::route`]), so the seeds' policy routing matters here as in a namespace.

use super::phy::{HostPhy, PhyStats};
use super::route::{Egress, RouteEntry, MAIN};
use crate::io::mem::MemHost;
use crate::lab::plan::GuestConfig;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::{icmp, tcp, udp};
use smoltcp::wire::{
    HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint,
    IpProtocol, Ipv4Packet, Ipv4Repr,
};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

pub use smoltcp::wire::Ipv4Cidr;

/// Sizes of a TCP socket's buffers.
const TCP_BUFFER: usize = 64 * 1024;
/// First local port of outgoing connections (the Linux default range starts at 32768).
const FIRST_PORT: u16 = 40_000;
/// TTL of what the host sends (Linux's default).
const TTL: u8 = 64;

/// One device of a fixed host (the internet, the cloud), as the sim lab configures it.
#[derive(Clone, Debug)]
pub struct IfaceConfig {
    /// `eth0`, …
    pub name: String,
    pub addrs: Vec<Ipv4Cidr>,
    /// A default route in the main table via this next hop (on an IP medium the next hop is
    /// never resolved: it is shown, and means "everything else leaves here").
    pub gateway: Option<Ipv4Addr>,
    /// That route's metric.
    pub metric: u32,
}

struct HttpConn {
    handle: SocketHandle,
    request: Vec<u8>,
    answered: bool,
}

/// Answers an HTTP GET: the path (with its leading `/`) and the caller's address in, the
/// body of a 200 out, or `None` for a 404.
pub type Handler = Box<dyn Fn(&str, Ipv4Addr) -> Option<String> + Send>;

/// A TCP service's answer to what a connection sent so far (all of it) from whom: `None`
/// until the request is whole. The answer is sent and the connection closed.
pub type TcpHandler = Box<dyn Fn(&[u8], SocketAddrV4) -> Option<Vec<u8>> + Send>;

/// How a served port answers.
enum Answerer {
    /// HTTP GETs, by path.
    Http(Handler),
    /// One request and one answer per connection (see [`TcpHandler`]).
    Raw(TcpHandler),
}

/// Serves one port: a listening socket is always there; connections are answered and closed.
struct HttpServer {
    port: u16,
    handler: Answerer,
    conns: Vec<HttpConn>,
}

/// The lab's echo service: the caller's address and a newline, whatever the path.
pub fn echo_handler() -> Handler {
    Box::new(|_, who| Some(format!("{who}\n")))
}

/// The HTTP answer to `request` (the bytes up to the blank line) from `who`.
fn http_answer(handler: &Handler, request: &[u8], who: Ipv4Addr) -> String {
    let text = String::from_utf8_lossy(request);
    let first = text.lines().next().unwrap_or_default();
    let mut words = first.split_whitespace();
    let (status, body) = match (words.next(), words.next()) {
        (Some("GET"), Some(path)) => match handler(path, who) {
            Some(body) => ("200 OK", body),
            None => ("404 Not Found", "Not Found\n".to_string()),
        },
        _ => ("405 Method Not Allowed", "GET only\n".to_string()),
    };
    format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A UDP socket opened by [`SimHost::udp_open`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpSock(SocketHandle);

/// An in-process host: its devices, its sockets, and the services it runs.
pub struct SimHost {
    name: String,
    iface: Interface,
    phy: HostPhy,
    sockets: SocketSet<'static>,
    http: Vec<HttpServer>,
    udp_echo: Vec<SocketHandle>,
    /// Sockets closed by a finished operation, removed once the close is done.
    closing: Vec<SocketHandle>,
    epoch: Instant,
    next_port: u16,
    next_ident: u16,
}

fn tcp_socket() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
    );
    // ACK at once: a closed socket is dropped after the poll that follows its close (see
    // `closing`), which must carry its last ACK rather than leave it to a timer.
    s.set_ack_delay(None);
    s
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

/// A name's bytes folded into a seed (each host its own TCP sequence numbers and ports).
fn seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl SimHost {
    /// A host named `name`, with no device yet ([`SimHost::add_dev`] plugs them in).
    pub fn new(name: &str) -> Result<SimHost, String> {
        let mut phy = HostPhy::new();
        let mut c = Config::new(HardwareAddress::Ip);
        c.random_seed = seed(name);
        let mut iface = Interface::new(c, &mut phy, smoltcp::time::Instant::ZERO);
        // Every destination is routable for smoltcp; the phy routes (or refuses) for real.
        iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Addr::new(0, 0, 0, 1))
            .map_err(|_| format!("{name}: route table full"))?;
        Ok(SimHost {
            name: name.to_string(),
            iface,
            phy,
            sockets: SocketSet::new(Vec::new()),
            http: Vec::new(),
            udp_echo: Vec::new(),
            closing: Vec::new(),
            epoch: Instant::now(),
            next_port: FIRST_PORT,
            next_ident: 1,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Plugs in a device (no address yet); returns its index.
    pub fn add_dev(&mut self, name: &str, mem: MemHost) -> usize {
        self.phy.add_dev(name, mem)
    }

    /// Unplugs device `name`, with its addresses and routes (its rules stay, as in Linux).
    pub fn remove_dev(&mut self, name: &str) -> Result<(), String> {
        let d = self.dev(name)?;
        self.phy.remove_dev(d);
        self.sync_addrs()
    }

    fn dev(&self, name: &str) -> Result<usize, String> {
        self.phy
            .routing
            .dev(name)
            .ok_or_else(|| format!("{}: no device {name}", self.name))
    }

    /// Adds (or, with `add` false, removes) what `cfg` lists on device `dev`: addresses,
    /// default routes, rules; as the netns backend does with netlink.
    pub fn configure(&mut self, dev: &str, cfg: &GuestConfig, add: bool) -> Result<(), String> {
        let d = self.dev(dev)?;
        let r = &mut self.phy.routing;
        for a in &cfg.addrs {
            let c = Ipv4Cidr::new(a.ip, a.prefix_len);
            if add {
                r.addr_add(d, c);
            } else {
                r.addr_del(d, c);
            }
        }
        for x in &cfg.routes {
            let e = RouteEntry {
                table: x.table.unwrap_or(MAIN),
                dst: Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 0),
                via: Some(x.via),
                dev: d,
                metric: x.metric.unwrap_or(0),
            };
            if add {
                r.route_add(e);
            } else {
                r.route_del(&e);
            }
        }
        for x in &cfg.rules {
            if add {
                r.rule_add(x.from, x.table);
            } else {
                r.rule_del(x.from, x.table);
            }
        }
        self.sync_addrs()
    }

    /// `ip addr add|del ADDR dev DEV` in the guest.
    pub fn addr(&mut self, dev: &str, c: Ipv4Cidr, add: bool) -> Result<(), String> {
        let d = self.dev(dev)?;
        if add {
            self.phy.routing.addr_add(d, c);
        } else {
            self.phy.routing.addr_del(d, c);
        }
        self.sync_addrs()
    }

    /// `ip route add|del default via VIA dev DEV table TABLE metric METRIC`.
    pub fn route(
        &mut self,
        dev: &str,
        via: Ipv4Addr,
        table: u32,
        metric: u32,
        add: bool,
    ) -> Result<(), String> {
        let d = self.dev(dev)?;
        let e = RouteEntry {
            table,
            dst: Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 0),
            via: Some(via),
            dev: d,
            metric,
        };
        if add {
            self.phy.routing.route_add(e);
        } else {
            self.phy.routing.route_del(&e);
        }
        Ok(())
    }

    /// `ip rule add|del from FROM lookup TABLE`.
    pub fn rule(&mut self, from: Ipv4Addr, table: u32, add: bool) {
        if add {
            self.phy.routing.rule_add(from, table);
        } else {
            self.phy.routing.rule_del(from, table);
        }
    }

    /// Gives smoltcp the addresses the routing holds, in device order.
    fn sync_addrs(&mut self) -> Result<(), String> {
        let want: Vec<IpCidr> = self
            .phy
            .routing
            .addrs()
            .into_iter()
            .map(|(_, c)| IpCidr::Ipv4(c))
            .collect();
        let mut full = false;
        self.iface.update_ip_addrs(|a| {
            a.clear();
            for c in &want {
                if !a.contains(c) {
                    full |= a.push(*c).is_err();
                }
            }
        });
        if full {
            return Err(format!(
                "{}: more than {} addresses on one host",
                self.name,
                want.len().min(64)
            ));
        }
        Ok(())
    }

    /// Every address of every device.
    pub fn addrs(&self) -> Vec<(String, Ipv4Cidr)> {
        self.phy.routing.addrs()
    }

    /// `ip addr`, in short lines.
    pub fn addr_lines(&self) -> Vec<String> {
        self.phy.routing.addr_lines()
    }

    /// `ip rule` and `ip route show table all`, in short lines.
    pub fn route_lines(&self) -> Vec<String> {
        self.phy.routing.route_lines()
    }

    /// What the host could not send.
    pub fn phy_stats(&self) -> PhyStats {
        self.phy.stats
    }

    /// The source address a packet to `dst` gets (`from` if given), as Linux would choose it,
    /// or the error the socket call would return.
    pub fn source_for(&self, from: Option<Ipv4Addr>, dst: Ipv4Addr) -> Result<Ipv4Addr, String> {
        if let Some(f) = from {
            if !self.phy.routing.is_local(f) {
                return Err(format!(
                    "{}: cannot assign requested address {f} (the host does not hold it)",
                    self.name
                ));
            }
        }
        match self.phy.routing.route(from, dst) {
            Some(Egress::Local) => Ok(from.unwrap_or(dst)),
            Some(Egress::Dev { src, .. }) => Ok(src),
            None => Err(format!("{}: network is unreachable ({dst})", self.name)),
        }
    }

    fn clock(&self, now: Instant) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(
            now.saturating_duration_since(self.epoch).as_micros() as i64
        )
    }

    /// Moves packets between the devices and the sockets and serves the services; returns
    /// when the host next needs a poll with nothing arriving (a retransmission, a timer).
    pub fn poll(&mut self, now: Instant) -> Option<Instant> {
        let t = self.clock(now);
        self.iface.poll(t, &mut self.phy, &mut self.sockets);
        self.serve();
        // What the services wrote leaves now rather than at the next poll.
        self.iface.poll(t, &mut self.phy, &mut self.sockets);
        let at = self.iface.poll_at(t, &self.sockets)?;
        let micros = (at - smoltcp::time::Instant::ZERO).total_micros();
        Some(self.epoch + Duration::from_micros(micros))
    }

    /// Sends `packet` out of device `dev` as it is (what a raw socket bound to the device
    /// would send): for tests that forge what a guest should not send.
    pub fn send_raw(&mut self, dev: &str, packet: Vec<u8>) -> Result<(), String> {
        let d = self.dev(dev)?;
        if self.phy.transmit_on(d, packet) {
            Ok(())
        } else {
            Err(format!("{}: device {dev} is gone", self.name))
        }
    }

    /// Answers every HTTP request on `port` (any address) with the caller's address and a
    /// newline, as the lab's echo service does.
    pub fn serve_echo_http(&mut self, port: u16) {
        self.serve_http(port, echo_handler());
    }

    /// Answers HTTP GETs on `port` (any address) with `handler` (replacing the one there).
    pub fn serve_http(&mut self, port: u16, handler: Handler) {
        self.serve_answerer(port, Answerer::Http(handler));
    }

    /// Answers every TCP connection on `port` (any address) with `handler` (replacing what
    /// answered there): one request, one answer, then the close.
    pub fn serve_tcp(&mut self, port: u16, handler: TcpHandler) {
        self.serve_answerer(port, Answerer::Raw(handler));
    }

    /// Stops serving TCP `port` (HTTP or [`SimHost::serve_tcp`]): its listener and open
    /// connections are aborted.
    pub fn stop_tcp(&mut self, port: u16) {
        let Some(i) = self.http.iter().position(|s| s.port == port) else {
            return;
        };
        let srv = self.http.remove(i);
        for c in srv.conns {
            self.sockets.get_mut::<tcp::Socket>(c.handle).abort();
            self.closing.push(c.handle);
        }
        self.poll(Instant::now());
    }

    fn serve_answerer(&mut self, port: u16, handler: Answerer) {
        match self.http.iter_mut().find(|s| s.port == port) {
            Some(s) => s.handler = handler,
            None => self.http.push(HttpServer {
                port,
                handler,
                conns: Vec::new(),
            }),
        }
        self.poll(Instant::now());
    }

    /// Sends every UDP datagram to `port` back to where it came from.
    pub fn serve_udp_echo(&mut self, port: u16) -> Result<(), String> {
        let mut s = udp_socket();
        s.bind(port)
            .map_err(|e| format!("{}: UDP port {port}: {e}", self.name))?;
        let h = self.sockets.add(s);
        self.udp_echo.push(h);
        Ok(())
    }

    /// A UDP socket of the caller's (an in-process peer's), bound to `addr` (any address of
    /// the host when `None`, else one it must hold) and `port` (a fresh local port when 0):
    /// the socket and its port. Served by [`SimHost::udp_recv`] and [`SimHost::udp_send`]
    /// while the caller polls; freed by [`SimHost::udp_close`].
    pub fn udp_open(
        &mut self,
        addr: Option<Ipv4Addr>,
        port: u16,
    ) -> Result<(UdpSock, u16), String> {
        if let Some(a) = addr {
            if !self.phy.routing.is_local(a) {
                return Err(format!(
                    "{}: cannot assign requested address {a} (the host does not hold it)",
                    self.name
                ));
            }
        }
        let port = if port == 0 { self.local_port() } else { port };
        let mut s = udp_socket();
        s.bind(IpListenEndpoint {
            addr: addr.map(IpAddress::Ipv4),
            port,
        })
        .map_err(|e| format!("{}: UDP port {port}: {e}", self.name))?;
        Ok((UdpSock(self.sockets.add(s)), port))
    }

    /// The next datagram waiting on `s`: its bytes, who sent it, and the address it was sent
    /// to.
    pub fn udp_recv(&mut self, s: UdpSock) -> Option<(Vec<u8>, SocketAddrV4, Option<Ipv4Addr>)> {
        let sock = self.sockets.get_mut::<udp::Socket>(s.0);
        let (data, meta) = sock.recv().ok()?;
        let to = meta.local_address.map(|IpAddress::Ipv4(a)| a);
        Some((data.to_vec(), v4(meta.endpoint), to))
    }

    /// Sends `data` from `s` to `to` (it leaves at the next poll).
    pub fn udp_send(&mut self, s: UdpSock, data: &[u8], to: SocketAddrV4) -> Result<(), String> {
        let sock = self.sockets.get_mut::<udp::Socket>(s.0);
        sock.send_slice(data, IpEndpoint::new(IpAddress::Ipv4(*to.ip()), to.port()))
            .map_err(|e| format!("{}: UDP to {to}: {e}", self.name))
    }

    /// Frees `s`.
    pub fn udp_close(&mut self, s: UdpSock) {
        self.sockets.remove(s.0);
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
                let answer = if !c.answered && s.can_send() {
                    let who = s
                        .remote_endpoint()
                        .map_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), v4);
                    match &srv.handler {
                        Answerer::Http(handler) => c
                            .request
                            .windows(4)
                            .any(|w| w == b"\r\n\r\n")
                            .then(|| http_answer(handler, &c.request, *who.ip()).into_bytes()),
                        Answerer::Raw(handler) => handler(&c.request, who),
                    }
                } else {
                    None
                };
                if let Some(answer) = answer {
                    let _ = s.send_slice(&answer);
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
                got.push((data.to_vec(), meta.endpoint, meta.local_address));
            }
            for (data, to, local) in got {
                // From the address it was sent to, as a socket bound to it would answer.
                let meta = udp::UdpMetadata {
                    endpoint: to,
                    local_address: local,
                    meta: Default::default(),
                };
                let _ = s.send_slice(&data, meta);
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

/// What came back to a ping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pong {
    pub rtt: Duration,
    /// The source of the request (what the host chose).
    pub from: Ipv4Addr,
}

/// An ICMP echo request and its reply. The request is built here (so that `from` decides
/// its source, as `ping -I` does) and routed by the host; the reply is taken by an ICMP
/// socket bound to the request's identifier.
pub struct Ping {
    dst: Ipv4Addr,
    from: Option<Ipv4Addr>,
    seq: u16,
    ident: u16,
    src: Ipv4Addr,
    sent: Option<Instant>,
    held: Option<SocketHandle>,
}

impl Ping {
    pub fn new(dst: Ipv4Addr, from: Option<Ipv4Addr>) -> Ping {
        Ping::seq(dst, from, 1)
    }

    /// Echo request number `seq`.
    pub fn seq(dst: Ipv4Addr, from: Option<Ipv4Addr>, seq: u16) -> Ping {
        Ping {
            dst,
            from,
            seq,
            ident: 0,
            src: Ipv4Addr::UNSPECIFIED,
            sent: None,
            held: None,
        }
    }
}

const PING_DATA: &[u8] = b"eiplab sim ping";

/// A whole IPv4 packet: header (no options, DF clear) and `payload`.
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, proto: IpProtocol, payload: &[u8]) -> Vec<u8> {
    let repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len: payload.len(),
        hop_limit: TTL,
    };
    let mut buf = vec![0u8; repr.buffer_len() + payload.len()];
    let mut p = Ipv4Packet::new_unchecked(&mut buf);
    repr.emit(&mut p, &ChecksumCapabilities::default());
    p.payload_mut().copy_from_slice(payload);
    buf
}

impl Task for Ping {
    type Output = Pong;

    fn step(&mut self, h: &mut SimHost) -> Option<Result<Pong, String>> {
        let Some(handle) = self.held else {
            let src = match h.source_for(self.from, self.dst) {
                Ok(s) => s,
                Err(e) => return Some(Err(format!("ping: {e}"))),
            };
            self.src = src;
            self.ident = h.next_ident;
            h.next_ident = h.next_ident.wrapping_add(1).max(1);
            let mut s = icmp_socket();
            if let Err(e) = s.bind(icmp::Endpoint::Ident(self.ident)) {
                return Some(Err(format!("ping: {e}")));
            }
            let repr = Icmpv4Repr::EchoRequest {
                ident: self.ident,
                seq_no: self.seq,
                data: PING_DATA,
            };
            let mut icmp = vec![0u8; repr.buffer_len()];
            repr.emit(
                &mut Icmpv4Packet::new_unchecked(&mut icmp),
                &ChecksumCapabilities::default(),
            );
            self.held = Some(h.sockets.add(s));
            h.phy
                .transmit(ipv4_packet(src, self.dst, IpProtocol::Icmp, &icmp));
            self.sent = Some(Instant::now());
            return None;
        };
        let s = h.sockets.get_mut::<icmp::Socket>(handle);
        while let Ok((bytes, from)) = s.recv() {
            if from != IpAddress::Ipv4(self.dst) {
                continue;
            }
            let Ok(p) = Icmpv4Packet::new_checked(bytes) else {
                continue;
            };
            if let Ok(Icmpv4Repr::EchoReply {
                ident,
                seq_no,
                data,
                ..
            }) = Icmpv4Repr::parse(&p, &ChecksumCapabilities::default())
            {
                if ident == self.ident && seq_no == self.seq && data == PING_DATA {
                    let rtt = self.sent.map_or(Duration::ZERO, |t| t.elapsed());
                    self.cancel(h);
                    // (smoltcp does not hand ICMP sockets the TTL: no TTL to show.)
                    return Some(Ok(Pong {
                        rtt,
                        from: self.src,
                    }));
                }
            }
        }
        None
    }

    fn cancel(&mut self, h: &mut SimHost) {
        if let Some(handle) = self.held.take() {
            h.sockets.remove(handle);
        }
    }

    fn what(&self) -> String {
        format!("ping {}", self.dst)
    }
}

/// A TCP client: connect (from `from`), send `payload`, close the sending side, read until
/// the server closes; what the server sent. With `http_path`, the payload is an HTTP/1.0 GET
/// and the output the body of a 200 answer.
pub struct TcpSend {
    dst: SocketAddrV4,
    from: Option<Ipv4Addr>,
    payload: Vec<u8>,
    http_path: Option<String>,
    held: Option<SocketHandle>,
    sent: usize,
    established: bool,
    answer: Vec<u8>,
}

/// An HTTP/1.0 GET (see [`TcpSend`]).
pub type HttpGet = TcpSend;

impl TcpSend {
    pub fn new(dst: SocketAddrV4, payload: &[u8], from: Option<Ipv4Addr>) -> TcpSend {
        TcpSend {
            dst,
            from,
            payload: payload.to_vec(),
            http_path: None,
            held: None,
            sent: 0,
            established: false,
            answer: Vec::new(),
        }
    }

    /// `GET path` to `dst`.
    pub fn get(dst: SocketAddrV4, path: &str, from: Option<Ipv4Addr>) -> TcpSend {
        let req = format!("GET {path} HTTP/1.0\r\nHost: {dst}\r\nUser-Agent: eiplab-sim\r\n\r\n");
        let mut t = TcpSend::new(dst, req.as_bytes(), from);
        t.http_path = Some(path.to_string());
        t
    }

    fn output(&self) -> Result<Vec<u8>, String> {
        if self.http_path.is_none() {
            return Ok(self.answer.clone());
        }
        let text = String::from_utf8_lossy(&self.answer);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("{}: no complete HTTP answer: {text:?}", self.what()))?;
        let status = head.lines().next().unwrap_or_default();
        let code = status.split_whitespace().nth(1).unwrap_or_default();
        if code != "200" {
            return Err(format!("{}: {status}", self.what()));
        }
        Ok(body.as_bytes().to_vec())
    }
}

impl Task for TcpSend {
    type Output = Vec<u8>;

    fn step(&mut self, h: &mut SimHost) -> Option<Result<Vec<u8>, String>> {
        let Some(handle) = self.held else {
            let src = match h.source_for(self.from, *self.dst.ip()) {
                Ok(s) => s,
                Err(e) => return Some(Err(format!("{}: {e}", self.what()))),
            };
            let port = h.local_port();
            let mut s = tcp_socket();
            let remote = IpEndpoint::new(IpAddress::Ipv4(*self.dst.ip()), self.dst.port());
            let local = IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(src)),
                port,
            };
            if let Err(e) = s.connect(h.iface.context(), remote, local) {
                return Some(Err(format!("{}: connect: {e}", self.what())));
            }
            self.held = Some(h.sockets.add(s));
            return None;
        };
        let s = h.sockets.get_mut::<tcp::Socket>(handle);
        if s.may_send() {
            self.established = true;
            if self.sent < self.payload.len() {
                if let Ok(n) = s.send_slice(&self.payload[self.sent..]) {
                    self.sent += n;
                }
                if self.sent == self.payload.len() && self.http_path.is_none() {
                    // Done sending: the peer sees the end of the stream.
                    s.close();
                }
            } else if self.payload.is_empty() && self.http_path.is_none() {
                s.close();
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
            h.sockets.remove(handle);
            self.held = None;
            return Some(Err(format!("{}: connection refused or reset", self.what())));
        }
        if self.established && !s.may_recv() && !s.can_recv() {
            // The server closed: the answer is whole.
            s.close();
            h.closing.push(handle);
            self.held = None;
            return Some(self.output());
        }
        None
    }

    fn cancel(&mut self, h: &mut SimHost) {
        if let Some(handle) = self.held.take() {
            h.sockets.get_mut::<tcp::Socket>(handle).abort();
            h.closing.push(handle);
        }
    }

    fn what(&self) -> String {
        match &self.http_path {
            Some(p) => format!("GET http://{}{p}", self.dst),
            None => format!("TCP to {}", self.dst),
        }
    }
}

/// One UDP datagram out (from `from`), the first one back from the same address and port;
/// with `wait` false, done once sent (an empty answer).
pub struct UdpExchange {
    dst: SocketAddrV4,
    payload: Vec<u8>,
    from: Option<Ipv4Addr>,
    wait: bool,
    held: Option<SocketHandle>,
}

impl UdpExchange {
    pub fn new(dst: SocketAddrV4, payload: &[u8], from: Option<Ipv4Addr>) -> UdpExchange {
        UdpExchange {
            dst,
            payload: payload.to_vec(),
            from,
            wait: true,
            held: None,
        }
    }

    /// Sends without waiting for an answer.
    pub fn no_answer(mut self) -> UdpExchange {
        self.wait = false;
        self
    }
}

impl Task for UdpExchange {
    type Output = Vec<u8>;

    fn step(&mut self, h: &mut SimHost) -> Option<Result<Vec<u8>, String>> {
        let remote = IpEndpoint::new(IpAddress::Ipv4(*self.dst.ip()), self.dst.port());
        let Some(handle) = self.held else {
            let src = match h.source_for(self.from, *self.dst.ip()) {
                Ok(s) => s,
                Err(e) => return Some(Err(format!("{}: {e}", self.what()))),
            };
            let port = h.local_port();
            let mut s = udp_socket();
            let local = IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(src)),
                port,
            };
            if let Err(e) = s.bind(local) {
                return Some(Err(format!("{}: bind: {e}", self.what())));
            }
            if let Err(e) = s.send_slice(&self.payload, remote) {
                return Some(Err(format!("{}: {e}", self.what())));
            }
            self.held = Some(h.sockets.add(s));
            return None;
        };
        let s = h.sockets.get_mut::<udp::Socket>(handle);
        if !self.wait {
            if s.send_queue() == 0 {
                self.cancel(h);
                return Some(Ok(Vec::new()));
            }
            return None;
        }
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
        if let Some(handle) = self.held.take() {
            h.sockets.remove(handle);
        }
    }

    fn what(&self) -> String {
        format!("UDP to {}", self.dst)
    }
}

/// TCP or UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// What a [`Listen`] heard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heard {
    /// The peer, as the host sees it.
    pub from: SocketAddrV4,
    /// The address and port it arrived at, as the host sees it (the EIP itself, or the
    /// private IP it was translated to).
    pub to: SocketAddrV4,
    pub data: Vec<u8>,
}

/// Waits on `port` for one TCP connection (read until the peer closes its side) or one UDP
/// datagram, sends what arrived back, and reports who sent it and to which address.
pub struct Listen {
    proto: Proto,
    port: u16,
    held: Option<SocketHandle>,
    got: Vec<u8>,
    /// What was heard and answered, while the connection closes.
    heard: Option<Heard>,
}

impl Listen {
    pub fn new(proto: Proto, port: u16) -> Listen {
        Listen {
            proto,
            port,
            held: None,
            got: Vec::new(),
            heard: None,
        }
    }
}

fn v4(e: IpEndpoint) -> SocketAddrV4 {
    let IpAddress::Ipv4(a) = e.addr;
    SocketAddrV4::new(a, e.port)
}

impl Task for Listen {
    type Output = Heard;

    fn step(&mut self, h: &mut SimHost) -> Option<Result<Heard, String>> {
        let Some(handle) = self.held else {
            let r = match self.proto {
                Proto::Tcp => {
                    let mut s = tcp_socket();
                    s.listen(self.port)
                        .map(|_| h.sockets.add(s))
                        .map_err(|e| e.to_string())
                }
                Proto::Udp => {
                    let mut s = udp_socket();
                    s.bind(self.port)
                        .map(|_| h.sockets.add(s))
                        .map_err(|e| e.to_string())
                }
            };
            return match r {
                Ok(handle) => {
                    self.held = Some(handle);
                    None
                }
                Err(e) => Some(Err(format!("{}: {e}", self.what()))),
            };
        };
        match self.proto {
            Proto::Udp => {
                let s = h.sockets.get_mut::<udp::Socket>(handle);
                let (data, meta) = s.recv().ok()?;
                let data = data.to_vec();
                let local = meta.local_address.map_or(Ipv4Addr::UNSPECIFIED, |a| {
                    let IpAddress::Ipv4(a) = a;
                    a
                });
                let _ = s.send_slice(&data, meta);
                let heard = Heard {
                    from: v4(meta.endpoint),
                    to: SocketAddrV4::new(local, self.port),
                    data,
                };
                // The echo leaves at the next poll; the socket goes after it.
                h.iface
                    .poll(h.clock(Instant::now()), &mut h.phy, &mut h.sockets);
                h.sockets.remove(handle);
                self.held = None;
                Some(Ok(heard))
            }
            Proto::Tcp => {
                let s = h.sockets.get_mut::<tcp::Socket>(handle);
                if let Some(heard) = &self.heard {
                    // Answered: done once the close is, as `nc -l` exits when the
                    // connection has ended.
                    if matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait) {
                        let heard = heard.clone();
                        h.sockets.remove(handle);
                        self.held = None;
                        return Some(Ok(heard));
                    }
                    return None;
                }
                while s.can_recv() {
                    let _ = s.recv(|b| {
                        self.got.extend_from_slice(b);
                        (b.len(), ())
                    });
                }
                // Until the peer closes its side (not `!may_recv()`: that is also true
                // while the connection is being set up).
                if s.state() != tcp::State::CloseWait {
                    return None;
                }
                let (Some(remote), Some(local)) = (s.remote_endpoint(), s.local_endpoint()) else {
                    return None;
                };
                // The peer closed its side: answer with what it sent, and close.
                let _ = s.send_slice(&self.got);
                s.close();
                self.heard = Some(Heard {
                    from: v4(remote),
                    to: v4(local),
                    data: std::mem::take(&mut self.got),
                });
                None
            }
        }
    }

    fn cancel(&mut self, h: &mut SimHost) {
        if let Some(handle) = self.held.take() {
            match self.proto {
                Proto::Tcp => {
                    h.sockets.get_mut::<tcp::Socket>(handle).abort();
                    h.closing.push(handle);
                }
                Proto::Udp => {
                    h.sockets.remove(handle);
                }
            }
        }
    }

    fn what(&self) -> String {
        let p = match self.proto {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        };
        format!("listen on {p} port {}", self.port)
    }
}

/// A load balancer's health check of one backend, as the netns backend's prober makes it
/// (`lab::health`): TCP passes when the handshake completes and fails on a refusal; UDP fails
/// when an ICMP port unreachable comes back and passes on an answer. Silence until the
/// timeout is the caller's to judge (a failed TCP check, a passed UDP one).
pub struct HealthProbe {
    proto: Proto,
    dst: SocketAddrV4,
    from: Option<Ipv4Addr>,
    /// The socket, and for UDP the ICMP socket that hears about its datagram.
    held: Option<(SocketHandle, Option<SocketHandle>)>,
}

/// What a UDP health check sends.
const UDP_CHECK: &[u8] = b"eiplab health check\n";

impl HealthProbe {
    pub fn new(proto: Proto, dst: SocketAddrV4, from: Option<Ipv4Addr>) -> HealthProbe {
        HealthProbe {
            proto,
            dst,
            from,
            held: None,
        }
    }
}

impl Task for HealthProbe {
    type Output = bool;

    fn step(&mut self, h: &mut SimHost) -> Option<Result<bool, String>> {
        let remote = IpEndpoint::new(IpAddress::Ipv4(*self.dst.ip()), self.dst.port());
        let Some((sock, icmp_sock)) = self.held else {
            let src = match h.source_for(self.from, *self.dst.ip()) {
                Ok(s) => s,
                Err(e) => return Some(Err(e)),
            };
            let port = h.local_port();
            let local = IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(src)),
                port,
            };
            match self.proto {
                Proto::Tcp => {
                    let mut s = tcp_socket();
                    if let Err(e) = s.connect(h.iface.context(), remote, local) {
                        return Some(Err(format!("health check {}: {e}", self.dst)));
                    }
                    self.held = Some((h.sockets.add(s), None));
                }
                Proto::Udp => {
                    let mut i = icmp_socket();
                    if i.bind(icmp::Endpoint::Udp(local)).is_err() {
                        return Some(Err(format!("health check {}: ICMP bind", self.dst)));
                    }
                    let mut s = udp_socket();
                    if s.bind(local).is_err() || s.send_slice(UDP_CHECK, remote).is_err() {
                        return Some(Err(format!("health check {}: UDP send", self.dst)));
                    }
                    self.held = Some((h.sockets.add(s), Some(h.sockets.add(i))));
                }
            }
            return None;
        };
        let verdict = match self.proto {
            Proto::Tcp => match h.sockets.get::<tcp::Socket>(sock).state() {
                tcp::State::Established => Some(true),
                tcp::State::Closed => Some(false),
                _ => None,
            },
            Proto::Udp => {
                let icmp_sock = icmp_sock.expect("a UDP check holds an ICMP socket");
                let refused = h.sockets.get_mut::<icmp::Socket>(icmp_sock).recv().is_ok();
                let answered = h.sockets.get_mut::<udp::Socket>(sock).recv().is_ok();
                if refused {
                    Some(false)
                } else if answered {
                    Some(true)
                } else {
                    None
                }
            }
        };
        let v = verdict?;
        self.cancel(h);
        Some(Ok(v))
    }

    fn cancel(&mut self, h: &mut SimHost) {
        if let Some((sock, icmp_sock)) = self.held.take() {
            match self.proto {
                Proto::Tcp => {
                    h.sockets.get_mut::<tcp::Socket>(sock).abort();
                    h.closing.push(sock);
                }
                Proto::Udp => {
                    h.sockets.remove(sock);
                }
            }
            if let Some(i) = icmp_sock {
                h.sockets.remove(i);
            }
        }
    }

    fn what(&self) -> String {
        format!("health check of {}", self.dst)
    }
}
