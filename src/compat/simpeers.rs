//! In-process DNS and TFTP peers for `eiplab compat --backend sim`: the servers and clients of
//! `peers/dns.py` and `peers/tftp.py`, written over the sim hosts' UDP sockets, reporting
//! what those probes report ([`ClientReport`], the server's summary) so that the same
//! [`super::judge`] reaches the same verdicts.
//!
//! - DNS: the server is authoritative for `host.lab.test A <its listen address>` and
//!   `_svc._tcp.lab.test SRV 0 0 8080 host.lab.test`, over UDP and TCP; the client asks for
//!   A and SRV over each.
//! - TFTP (RFC 1350, octet mode): the server answers every request from a new port of its
//!   own (as tftpd-hpa does), serving `probe.bin` (the same 64 KiB as `tftp.py`) and taking
//!   writes; the client reads `probe.bin`, writes a fresh file and reads it back.
//!
//! A server is a [`Server`] run by [`Serve`] (a [`Task`]) on its host until told to stop; a
//! client is a plain function over [`SimWorld`] that blocks while the world serves the others.

use super::judge::{ClientReport, Named, Step};
use crate::sim::host::{SimHost, Task, UdpSock};
use crate::sim::SimWorld;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub const A_NAME: &str = "host.lab.test";
pub const SRV_NAME: &str = "_svc._tcp.lab.test";
pub const SRV_PORT: u16 = 8080;
/// How long the DNS client waits for each answer (`dig +time=3 +tries=1` in the real probe;
/// shorter here, the in-process network has no latency).
pub const DNS_WAIT: Duration = Duration::from_secs(2);
/// The file the TFTP server serves, and its size.
pub const SERVED: &str = "probe.bin";
pub const FILE_SIZE: usize = 64 * 1024;
/// How long one TFTP transfer may take (`tftp.py` kills tftp-hpa after 5 s).
pub const TFTP_CALL_WAIT: Duration = Duration::from_secs(3);
/// A TFTP peer sends its last packet again after this long without an answer.
const TFTP_RETRY: Duration = Duration::from_millis(500);
/// Retransmissions before a server gives a transfer up.
const TFTP_TRIES: u32 = 10;
const BLOCK: usize = 512;

/// An in-process server: opened on its host, served at every step, closed at the end.
pub trait Server: Send {
    /// Binds its sockets (an error: the server did not start).
    fn open(&mut self, h: &mut SimHost) -> Result<(), String>;
    /// Reads what arrived and answers.
    fn serve(&mut self, h: &mut SimHost);
    /// Frees its sockets.
    fn close(&mut self, h: &mut SimHost);
    /// Its account, as the probe's summary line (without `event`).
    fn summary(&self) -> serde_json::Value;
}

/// Runs a [`Server`] (already opened) until `stop` is set; its summary is the output.
pub struct Serve {
    pub server: Box<dyn Server>,
    pub stop: Arc<AtomicBool>,
}

impl Task for Serve {
    type Output = serde_json::Value;

    fn step(&mut self, h: &mut SimHost) -> Option<Result<serde_json::Value, String>> {
        self.server.serve(h);
        if self.stop.load(Ordering::Acquire) {
            self.server.close(h);
            return Some(Ok(self.server.summary()));
        }
        None
    }

    fn cancel(&mut self, h: &mut SimHost) {
        self.server.close(h);
    }

    fn what(&self) -> String {
        "the in-process server".into()
    }
}

// ---------------------------------------------------------------------------------------------
// DNS
// ---------------------------------------------------------------------------------------------

const TYPE_A: u16 = 1;
const TYPE_SRV: u16 = 33;
const TYPE_ANY: u16 = 255;

fn type_name(t: u16) -> String {
    match t {
        TYPE_A => "A".into(),
        TYPE_SRV => "SRV".into(),
        TYPE_ANY => "ANY".into(),
        n => format!("TYPE{n}"),
    }
}

fn rcode_name(r: u8) -> String {
    match r {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("RCODE{n}"),
    }
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// A name at `off` (compression pointers followed): the name and the offset after it.
fn read_name(msg: &[u8], mut off: usize) -> Option<(String, usize)> {
    let mut labels = Vec::new();
    let mut end = None;
    for _ in 0..64 {
        let len = *msg.get(off)? as usize;
        if len & 0xc0 == 0xc0 {
            let ptr = ((len & 0x3f) << 8) | *msg.get(off + 1)? as usize;
            end.get_or_insert(off + 2);
            off = ptr;
            continue;
        }
        if len == 0 {
            return Some((labels.join("."), end.unwrap_or(off + 1)));
        }
        let l = msg.get(off + 1..off + 1 + len)?;
        labels.push(String::from_utf8_lossy(l).into_owned());
        off += 1 + len;
    }
    None
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(off)?, *b.get(off + 1)?]))
}

/// A standard query (RD set) for `name` and `qtype`.
pub fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(40);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&0x0100u16.to_be_bytes());
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    put_name(&mut q, name);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

/// The authoritative server of `dns.py`, over UDP and TCP.
pub struct DnsServer {
    port: u16,
    sock: Option<UdpSock>,
    /// Shared with the TCP service.
    zone: Arc<Mutex<Zone>>,
}

/// What the server answers, and the queries it saw.
struct Zone {
    listen: Ipv4Addr,
    /// (type, name, from) of every query.
    queries: Vec<(String, String, String)>,
}

impl DnsServer {
    pub fn new(listen: Ipv4Addr, port: u16) -> DnsServer {
        DnsServer {
            port,
            sock: None,
            zone: Arc::new(Mutex::new(Zone {
                listen,
                queries: Vec::new(),
            })),
        }
    }

    fn zone(&self) -> MutexGuard<'_, Zone> {
        self.zone.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn answer(&mut self, q: &[u8], from: SocketAddrV4) -> Option<Vec<u8>> {
        self.zone().answer(q, from)
    }
}

impl Zone {
    /// The answer to `q` from `from` (None: not a query worth an answer).
    fn answer(&mut self, q: &[u8], from: SocketAddrV4) -> Option<Vec<u8>> {
        if q.len() < 12 || q[2] & 0x80 != 0 || u16_at(q, 4)? != 1 {
            return None;
        }
        let (name, after) = read_name(q, 12)?;
        let qtype = u16_at(q, after)?;
        let qend = after + 4;
        if q.len() < qend {
            return None;
        }
        self.queries
            .push((type_name(qtype), name.clone(), from.ip().to_string()));
        let lname = name.to_ascii_lowercase();
        let mut answers: Vec<(u16, Vec<u8>)> = Vec::new();
        let known = lname == A_NAME || lname == SRV_NAME;
        if lname == A_NAME && (qtype == TYPE_A || qtype == TYPE_ANY) {
            answers.push((TYPE_A, self.listen.octets().to_vec()));
        }
        if lname == SRV_NAME && (qtype == TYPE_SRV || qtype == TYPE_ANY) {
            let mut rd = Vec::new();
            rd.extend_from_slice(&[0, 0, 0, 0]);
            rd.extend_from_slice(&SRV_PORT.to_be_bytes());
            put_name(&mut rd, A_NAME);
            answers.push((TYPE_SRV, rd));
        }
        let rcode: u8 = if known { 0 } else { 3 };
        let mut r = Vec::with_capacity(qend + 64);
        r.extend_from_slice(&q[..2]);
        // QR, AA, RD as asked, RA clear.
        r.push(0x84 | (q[2] & 0x01));
        r.push(rcode);
        r.extend_from_slice(&[0, 1]);
        r.extend_from_slice(&(answers.len() as u16).to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0]);
        r.extend_from_slice(&q[12..qend]);
        for (t, rd) in answers {
            r.extend_from_slice(&[0xc0, 12]);
            r.extend_from_slice(&t.to_be_bytes());
            r.extend_from_slice(&1u16.to_be_bytes());
            r.extend_from_slice(&0u32.to_be_bytes());
            r.extend_from_slice(&(rd.len() as u16).to_be_bytes());
            r.extend_from_slice(&rd);
        }
        Some(r)
    }
}

impl Server for DnsServer {
    fn open(&mut self, h: &mut SimHost) -> Result<(), String> {
        let listen = self.zone().listen;
        self.sock = Some(h.udp_open(Some(listen), self.port)?.0);
        // Over TCP: a 2-byte length, the message; the answer likewise, then the close.
        let zone = self.zone.clone();
        h.serve_tcp(
            self.port,
            Box::new(move |req, from| {
                let n = usize::from(u16_at(req, 0)?);
                let q = req.get(2..2 + n)?;
                let a = zone
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .answer(q, from)
                    .unwrap_or_default();
                let mut framed = (a.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&a);
                Some(framed)
            }),
        );
        Ok(())
    }

    fn serve(&mut self, h: &mut SimHost) {
        let Some(s) = self.sock else { return };
        while let Some((q, from, _)) = h.udp_recv(s) {
            let a = self.zone().answer(&q, from);
            if let Some(a) = a {
                let _ = h.udp_send(s, &a, from);
            }
        }
    }

    fn close(&mut self, h: &mut SimHost) {
        if let Some(s) = self.sock.take() {
            h.udp_close(s);
            h.stop_tcp(self.port);
        }
    }

    fn summary(&self) -> serde_json::Value {
        let z = self.zone();
        let seen: Vec<serde_json::Value> = z
            .queries
            .iter()
            .map(|(t, n, f)| serde_json::json!({"type": t, "name": n, "from": f}))
            .collect();
        serde_json::json!({
            "queries": z.queries.len(),
            "queries_seen": seen,
            "answers_name": z.listen.to_string(),
        })
    }
}

/// An answer: its rcode's name and its records (type, rdata words).
fn parse_answer(id: u16, r: &[u8]) -> Result<(String, Vec<(u16, String)>), String> {
    let bad = || format!("an unreadable answer ({} bytes)", r.len());
    if r.len() < 12 || u16_at(r, 0) != Some(id) || r[2] & 0x80 == 0 {
        return Err(bad());
    }
    let status = rcode_name(r[3] & 0x0f);
    let (qd, an) = (u16_at(r, 4).ok_or_else(bad)?, u16_at(r, 6).ok_or_else(bad)?);
    let mut off = 12;
    for _ in 0..qd {
        off = read_name(r, off).ok_or_else(bad)?.1 + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        let (_, after) = read_name(r, off).ok_or_else(bad)?;
        let t = u16_at(r, after).ok_or_else(bad)?;
        let len = u16_at(r, after + 8).ok_or_else(bad)? as usize;
        let start = after + 10;
        let rd = r.get(start..start + len).ok_or_else(bad)?;
        let words = match t {
            TYPE_A if len == 4 => Ipv4Addr::new(rd[0], rd[1], rd[2], rd[3]).to_string(),
            TYPE_SRV if len > 6 => {
                let target = read_name(r, start + 6).ok_or_else(bad)?.0;
                format!(
                    "{} {} {} {target}.",
                    u16_at(rd, 0).unwrap_or(0),
                    u16_at(rd, 2).unwrap_or(0),
                    u16_at(rd, 4).unwrap_or(0)
                )
            }
            _ => format!("({len} bytes)"),
        };
        out.push((t, words));
        off = start + len;
    }
    Ok((status, out))
}

/// The client of `dns.py`: A and SRV, each over UDP and TCP, from `bind` on host `host` to `server`.
pub fn dns_client(
    world: &SimWorld,
    host: &str,
    bind: Ipv4Addr,
    server: SocketAddrV4,
) -> ClientReport {
    let mut r = ClientReport::default();
    let mut failures: Vec<String> = Vec::new();
    // (transport, type, what was said) of the queries that got no answer.
    let mut unanswered: Vec<(&str, &str, String)> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    let mut a_seen: Vec<String> = Vec::new();
    let queries = [("A", TYPE_A, A_NAME), ("SRV", TYPE_SRV, SRV_NAME)];
    for ((rtype, qtype, name), transport) in queries
        .into_iter()
        .flat_map(|q| ["UDP", "TCP"].map(|t| (q, t)))
    {
        let step = format!("{rtype} {name} over {transport}");
        if let Some((_, first, _)) = unanswered.iter().find(|u| u.0 == transport) {
            // That transport already went unanswered: fail fast instead of waiting again.
            r.steps.push(Step {
                name: step,
                ok: false,
                detail: format!("not tried: the {first} query over {transport} got no answer"),
            });
            skipped.push(format!("{rtype} over {transport}"));
            continue;
        }
        let id: u16 = rand::random();
        let query = dns_query(id, name, qtype);
        let got = if transport == "UDP" {
            world.udp_exchange(host, Some(bind), server, &query, DNS_WAIT)
        } else {
            let mut framed = (query.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&query);
            world
                .tcp_send(host, Some(bind), server, &framed, DNS_WAIT)
                .and_then(|a| match a.get(2..) {
                    Some(m) if !m.is_empty() => Ok(m.to_vec()),
                    _ => Err("the connection closed without an answer".into()),
                })
        };
        let answer = match got {
            Ok(bytes) => parse_answer(id, &bytes),
            Err(e) if e.ends_with("timed out") => {
                Err(format!("no answer within {} s", DNS_WAIT.as_secs()))
            }
            Err(e) => Err(e),
        };
        let (status, answers) = match answer {
            Ok(a) => a,
            Err(said) => {
                r.steps.push(Step {
                    name: step,
                    ok: false,
                    detail: format!("{rtype} query over {transport} to {server}: {said}"),
                });
                unanswered.push((transport, rtype, said));
                continue;
            }
        };
        let (ok, detail) = if qtype == TYPE_A {
            let addrs: Vec<String> = answers
                .iter()
                .filter(|(t, _)| *t == TYPE_A)
                .map(|(_, a)| a.clone())
                .collect();
            for a in &addrs {
                if !a_seen.contains(a) {
                    a_seen.push(a.clone());
                    r.named.push(Named {
                        place: format!("A record of {A_NAME}"),
                        address: a.clone(),
                        port: None,
                    });
                }
            }
            let detail = if addrs.is_empty() {
                format!("{status} without an A record")
            } else {
                format!("{status}, A {}", addrs.join(", "))
            };
            (status == "NOERROR" && !addrs.is_empty(), detail)
        } else {
            let srvs: Vec<&String> = answers
                .iter()
                .filter(|(t, _)| *t == TYPE_SRV)
                .map(|(_, s)| s)
                .collect();
            let good = srvs.iter().any(|s| {
                let f: Vec<&str> = s.split_whitespace().collect();
                f.len() == 4
                    && f[2] == SRV_PORT.to_string()
                    && f[3].trim_end_matches('.').eq_ignore_ascii_case(A_NAME)
            });
            let detail = if srvs.is_empty() {
                format!("{status} without an SRV record")
            } else {
                format!(
                    "{status}, SRV {}",
                    srvs.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            };
            (status == "NOERROR" && good, detail)
        };
        if !ok {
            failures.push(format!("{rtype} {name} over {transport} answered {detail}"));
        }
        r.steps.push(Step {
            name: step,
            ok,
            detail,
        });
    }
    for transport in ["UDP", "TCP"] {
        let got: Vec<&(&str, &str, String)> =
            unanswered.iter().filter(|u| u.0 == transport).collect();
        if got.is_empty() {
            continue;
        }
        let types: Vec<&str> = got.iter().map(|u| u.1).collect();
        let mut reasons: Vec<&str> = Vec::new();
        for u in &got {
            if !reasons.contains(&u.2.as_str()) {
                reasons.push(&u.2);
            }
        }
        failures.push(format!(
            "{} over {transport} to {server} got no answer ({})",
            types.join(" and "),
            reasons.join("; ")
        ));
    }
    if !skipped.is_empty() {
        failures.push(format!("{} not tried after that", skipped.join(" and ")));
    }
    if failures.is_empty() {
        r.ok = true;
        r.detail = format!(
            "A and SRV answered over UDP and TCP; the A record named {}",
            a_seen.join(", ")
        );
    } else {
        r.detail = failures.join("; ");
        if !a_seen.is_empty() {
            r.detail
                .push_str(&format!(" (the A record named {})", a_seen.join(", ")));
        }
    }
    r
}

// ---------------------------------------------------------------------------------------------
// TFTP
// ---------------------------------------------------------------------------------------------

const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;

/// The 64 KiB `tftp.py` serves: sha256 of a counter.
pub fn served_bytes() -> Vec<u8> {
    let mut out = Vec::with_capacity(FILE_SIZE + 32);
    let mut i = 0u64;
    while out.len() < FILE_SIZE {
        out.extend_from_slice(&Sha256::digest(
            format!("eiplab-compat-tftp-{i}").as_bytes(),
        ));
        i += 1;
    }
    out.truncate(FILE_SIZE);
    out
}

fn request(op: u16, name: &str) -> Vec<u8> {
    let mut p = op.to_be_bytes().to_vec();
    p.extend_from_slice(name.as_bytes());
    p.push(0);
    p.extend_from_slice(b"octet\0");
    p
}

fn data(block: u16, chunk: &[u8]) -> Vec<u8> {
    let mut p = DATA.to_be_bytes().to_vec();
    p.extend_from_slice(&block.to_be_bytes());
    p.extend_from_slice(chunk);
    p
}

fn ack(block: u16) -> Vec<u8> {
    let mut p = ACK.to_be_bytes().to_vec();
    p.extend_from_slice(&block.to_be_bytes());
    p
}

fn error(code: u16, msg: &str) -> Vec<u8> {
    let mut p = ERROR.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(msg.as_bytes());
    p.push(0);
    p
}

/// Block `n` (from 1) of `file`.
fn chunk(file: &[u8], n: u16) -> &[u8] {
    let start = (usize::from(n) - 1) * BLOCK;
    &file[start.min(file.len())..(start + BLOCK).min(file.len())]
}

enum Kind {
    /// Sending `file`; `block` is the last one sent.
    Read { file: Vec<u8>, block: u16 },
    /// Receiving `name`; `block` is the last one acknowledged.
    Write {
        name: String,
        got: Vec<u8>,
        block: u16,
    },
}

/// One transfer of the server, on its own port.
struct Transfer {
    sock: UdpSock,
    peer: SocketAddrV4,
    kind: Kind,
    last: Vec<u8>,
    sent_at: Instant,
    tries: u32,
    done: bool,
}

/// The tftpd-hpa of `tftp.py`: requests on `port`, each transfer from a new port.
pub struct TftpServer {
    listen: Ipv4Addr,
    port: u16,
    sock: Option<UdpSock>,
    files: BTreeMap<String, Vec<u8>>,
    received: Vec<String>,
    transfers: Vec<Transfer>,
}

impl TftpServer {
    pub fn new(listen: Ipv4Addr, port: u16) -> TftpServer {
        let mut files = BTreeMap::new();
        files.insert(SERVED.to_string(), served_bytes());
        TftpServer {
            listen,
            port,
            sock: None,
            files,
            received: Vec::new(),
            transfers: Vec::new(),
        }
    }

    fn start(&mut self, h: &mut SimHost, req: &[u8], from: SocketAddrV4) {
        let op = u16_at(req, 0).unwrap_or(0);
        let name = req
            .get(2..)
            .and_then(|r| r.split(|b| *b == 0).next())
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_default();
        // A new port of its own for the transfer, as tftpd-hpa answers.
        let Ok((sock, _)) = h.udp_open(Some(self.listen), 0) else {
            return;
        };
        let (kind, first) = match op {
            RRQ => match self.files.get(&name) {
                Some(f) => (
                    Kind::Read {
                        file: f.clone(),
                        block: 1,
                    },
                    data(1, chunk(f, 1)),
                ),
                None => {
                    let _ = h.udp_send(sock, &error(1, "File not found"), from);
                    // It leaves before the socket goes.
                    h.poll(Instant::now());
                    h.udp_close(sock);
                    return;
                }
            },
            WRQ if !name.is_empty() && !name.contains('/') => (
                Kind::Write {
                    name,
                    got: Vec::new(),
                    block: 0,
                },
                ack(0),
            ),
            _ => {
                let _ = h.udp_send(sock, &error(4, "Illegal TFTP operation"), from);
                h.poll(Instant::now());
                h.udp_close(sock);
                return;
            }
        };
        let _ = h.udp_send(sock, &first, from);
        self.transfers.push(Transfer {
            sock,
            peer: from,
            kind,
            last: first,
            sent_at: Instant::now(),
            tries: 0,
            done: false,
        });
    }
}

impl Server for TftpServer {
    fn open(&mut self, h: &mut SimHost) -> Result<(), String> {
        self.sock = Some(h.udp_open(Some(self.listen), self.port)?.0);
        Ok(())
    }

    fn serve(&mut self, h: &mut SimHost) {
        let Some(s) = self.sock else { return };
        while let Some((req, from, _)) = h.udp_recv(s) {
            self.start(h, &req, from);
        }
        let now = Instant::now();
        let mut finished: Vec<(String, Vec<u8>)> = Vec::new();
        for t in &mut self.transfers {
            while let Some((p, from, _)) = h.udp_recv(t.sock) {
                if from != t.peer {
                    let _ = h.udp_send(t.sock, &error(5, "Unknown transfer ID"), from);
                    continue;
                }
                let (op, n) = (u16_at(&p, 0).unwrap_or(0), u16_at(&p, 2).unwrap_or(0));
                let next = match &mut t.kind {
                    Kind::Read { file, block } if op == ACK && n == *block => {
                        if chunk(file, *block).len() < BLOCK {
                            t.done = true;
                            None
                        } else {
                            *block = block.wrapping_add(1);
                            Some(data(*block, chunk(file, *block)))
                        }
                    }
                    Kind::Write { name, got, block } if op == DATA => {
                        if n == block.wrapping_add(1) {
                            *block = n;
                            got.extend_from_slice(&p[4..]);
                            if p.len() - 4 < BLOCK {
                                t.done = true;
                                finished.push((name.clone(), std::mem::take(got)));
                            }
                        }
                        // A repeated block is acknowledged again.
                        Some(ack(*block))
                    }
                    _ if op == ERROR => {
                        t.done = true;
                        None
                    }
                    _ => None,
                };
                if let Some(pkt) = next {
                    let _ = h.udp_send(t.sock, &pkt, t.peer);
                    t.last = pkt;
                    t.sent_at = now;
                    t.tries = 0;
                }
            }
            if !t.done && now.duration_since(t.sent_at) >= TFTP_RETRY {
                if t.tries >= TFTP_TRIES {
                    t.done = true;
                } else {
                    let _ = h.udp_send(t.sock, &t.last, t.peer);
                    t.sent_at = now;
                    t.tries += 1;
                }
            }
        }
        for (name, bytes) in finished {
            if !self.received.contains(&name) {
                self.received.push(name.clone());
            }
            self.files.insert(name, bytes);
        }
        if self.transfers.iter().any(|t| t.done) {
            // The last ACK leaves before the socket goes.
            h.poll(Instant::now());
        }
        self.transfers.retain(|t| {
            if t.done {
                h.udp_close(t.sock);
            }
            !t.done
        });
    }

    fn close(&mut self, h: &mut SimHost) {
        for t in self.transfers.drain(..) {
            h.udp_close(t.sock);
        }
        if let Some(s) = self.sock.take() {
            h.udp_close(s);
        }
    }

    fn summary(&self) -> serde_json::Value {
        let mut received = self.received.clone();
        received.sort();
        let bytes: serde_json::Map<String, serde_json::Value> = received
            .iter()
            .map(|n| (n.clone(), self.files.get(n).map_or(0, Vec::len).into()))
            .collect();
        serde_json::json!({
            "served": SERVED,
            "files_received": received,
            "bytes_received": bytes,
        })
    }
}

/// One TFTP transfer of the client: read `name` (the bytes) or write `data` to it (nothing
/// back). An error is a sentence; one starting "no answer" means nothing came back.
pub struct TftpTransfer {
    from: Ipv4Addr,
    server: SocketAddrV4,
    name: String,
    /// What to write (None: a read).
    put: Option<Vec<u8>>,
    sock: Option<UdpSock>,
    /// The server's transfer port, once it answered.
    tid: Option<SocketAddrV4>,
    block: u16,
    got: Vec<u8>,
    last: Vec<u8>,
    sent_at: Instant,
    deadline: Instant,
}

impl TftpTransfer {
    pub fn get(from: Ipv4Addr, server: SocketAddrV4, name: &str) -> TftpTransfer {
        TftpTransfer::new(from, server, name, None)
    }

    pub fn put(from: Ipv4Addr, server: SocketAddrV4, name: &str, data: Vec<u8>) -> TftpTransfer {
        TftpTransfer::new(from, server, name, Some(data))
    }

    fn new(from: Ipv4Addr, server: SocketAddrV4, name: &str, put: Option<Vec<u8>>) -> Self {
        let now = Instant::now();
        TftpTransfer {
            from,
            server,
            name: name.to_string(),
            put,
            sock: None,
            tid: None,
            block: 0,
            got: Vec::new(),
            last: Vec::new(),
            sent_at: now,
            deadline: now,
        }
    }

    fn send(&mut self, h: &mut SimHost, s: UdpSock, p: Vec<u8>) {
        let to = self.tid.unwrap_or(self.server);
        let _ = h.udp_send(s, &p, to);
        self.last = p;
        self.sent_at = Instant::now();
    }

    fn finish(
        &mut self,
        h: &mut SimHost,
        r: Result<Vec<u8>, String>,
    ) -> Option<Result<Result<Vec<u8>, String>, String>> {
        self.cancel(h);
        Some(Ok(r))
    }
}

impl Task for TftpTransfer {
    /// The bytes read (empty for a write), or why the transfer failed.
    type Output = Result<Vec<u8>, String>;

    fn step(&mut self, h: &mut SimHost) -> Option<Result<Self::Output, String>> {
        let Some(s) = self.sock else {
            let s = match h.udp_open(Some(self.from), 0) {
                Ok((s, _)) => s,
                Err(e) => return Some(Ok(Err(e))),
            };
            self.sock = Some(s);
            self.deadline = Instant::now() + TFTP_CALL_WAIT;
            let op = if self.put.is_some() { WRQ } else { RRQ };
            let req = request(op, &self.name);
            self.send(h, s, req);
            return None;
        };
        while let Some((p, from, _)) = h.udp_recv(s) {
            if from.ip() != self.server.ip() || self.tid.is_some_and(|t| t != from) {
                continue;
            }
            self.tid = Some(from);
            let (op, n) = (u16_at(&p, 0).unwrap_or(0), u16_at(&p, 2).unwrap_or(0));
            match (op, &self.put) {
                (ERROR, _) => {
                    let msg = p.get(4..).map_or(String::new(), |m| {
                        String::from_utf8_lossy(m)
                            .trim_end_matches('\0')
                            .to_string()
                    });
                    return self
                        .finish(h, Err(format!("the server answered Error code {n}: {msg}")));
                }
                (DATA, None) => {
                    if n == self.block.wrapping_add(1) {
                        self.block = n;
                        self.got.extend_from_slice(&p[4..]);
                        let last = p.len() - 4 < BLOCK;
                        self.send(h, s, ack(n));
                        if last {
                            // The final ACK leaves at the next poll, before the socket goes.
                            h.poll(Instant::now());
                            let got = std::mem::take(&mut self.got);
                            return self.finish(h, Ok(got));
                        }
                    } else {
                        let a = ack(self.block);
                        self.send(h, s, a);
                    }
                }
                (ACK, Some(file)) if n == self.block => {
                    let sent = if n == 0 { BLOCK } else { chunk(file, n).len() };
                    if sent < BLOCK {
                        return self.finish(h, Ok(Vec::new()));
                    }
                    let next = n.wrapping_add(1);
                    let d = data(next, chunk(file, next));
                    self.block = next;
                    self.send(h, s, d);
                }
                _ => {}
            }
        }
        let now = Instant::now();
        if now >= self.deadline {
            let why = if self.tid.is_none() {
                format!("no answer within {} s", TFTP_CALL_WAIT.as_secs())
            } else {
                format!(
                    "the transfer stalled after block {} (no answer within {} s)",
                    self.block,
                    TFTP_CALL_WAIT.as_secs()
                )
            };
            return self.finish(h, Err(why));
        }
        if now.duration_since(self.sent_at) >= TFTP_RETRY {
            let p = self.last.clone();
            self.send(h, s, p);
        }
        None
    }

    fn cancel(&mut self, h: &mut SimHost) {
        if let Some(s) = self.sock.take() {
            h.udp_close(s);
        }
    }

    fn what(&self) -> String {
        let verb = if self.put.is_some() { "write" } else { "read" };
        format!("TFTP {verb} of {} at {}", self.name, self.server)
    }
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// One transfer on the world (its own limit, and a margin for the world's).
fn transfer(world: &SimWorld, host: &str, t: TftpTransfer) -> Result<Vec<u8>, String> {
    world
        .run(host, t, TFTP_CALL_WAIT + Duration::from_secs(2))
        .and_then(|r| r)
}

/// The client of `tftp.py`: read `probe.bin`, write a fresh 64 KiB file, read it back.
pub fn tftp_client(
    world: &SimWorld,
    host: &str,
    bind: Ipv4Addr,
    server: SocketAddrV4,
) -> ClientReport {
    let mut r = ClientReport::default();
    let mut failures: Vec<String> = Vec::new();
    let want = sha(&served_bytes());
    let mut read_ok = false;
    match transfer(world, host, TftpTransfer::get(bind, server, SERVED)) {
        Ok(got) if sha(&got) == want => {
            read_ok = true;
            r.steps.push(Step {
                name: format!("RRQ {SERVED}"),
                ok: true,
                detail: format!("received {} bytes; sha256 matched", got.len()),
            });
        }
        Ok(got) => {
            let msg = format!(
                "read {SERVED} from {server} but it differs: {} bytes, sha256 {}",
                got.len(),
                &sha(&got)[..16]
            );
            r.steps.push(Step {
                name: format!("RRQ {SERVED}"),
                ok: false,
                detail: msg.clone(),
            });
            failures.push(msg);
        }
        Err(said) => {
            let msg = format!("reading {SERVED} from {server} failed: {said}");
            r.steps.push(Step {
                name: format!("RRQ {SERVED}"),
                ok: false,
                detail: msg.clone(),
            });
            failures.push(msg);
        }
    }
    let up = format!("up-{}.bin", rand::random::<u16>());
    let payload: Vec<u8> = (0..FILE_SIZE).map(|_| rand::random::<u8>()).collect();
    let mut write_ok = false;
    if !read_ok && failures.last().is_some_and(|f| f.contains("no answer")) {
        r.steps.push(Step {
            name: format!("WRQ {up}"),
            ok: false,
            detail: "not tried: the read got no answer".into(),
        });
    } else {
        match transfer(
            world,
            host,
            TftpTransfer::put(bind, server, &up, payload.clone()),
        ) {
            Ok(_) => {
                r.steps.push(Step {
                    name: format!("WRQ {up}"),
                    ok: true,
                    detail: format!("sent {FILE_SIZE} bytes"),
                });
                match transfer(world, host, TftpTransfer::get(bind, server, &up)) {
                    Ok(back) if back == payload => {
                        write_ok = true;
                        r.steps.push(Step {
                            name: format!("RRQ {up} (read back)"),
                            ok: true,
                            detail: format!(
                                "received {} bytes; sha256 matched what was written",
                                back.len()
                            ),
                        });
                    }
                    Ok(back) => {
                        let msg = format!(
                            "the file written as {up} came back different ({} bytes)",
                            back.len()
                        );
                        r.steps.push(Step {
                            name: format!("RRQ {up} (read back)"),
                            ok: false,
                            detail: msg.clone(),
                        });
                        failures.push(msg);
                    }
                    Err(said) => {
                        let msg = format!("reading back {up} from {server} failed: {said}");
                        r.steps.push(Step {
                            name: format!("RRQ {up} (read back)"),
                            ok: false,
                            detail: msg.clone(),
                        });
                        failures.push(msg);
                    }
                }
            }
            Err(said) => {
                let msg = format!("writing {up} to {server} failed: {said}");
                r.steps.push(Step {
                    name: format!("WRQ {up}"),
                    ok: false,
                    detail: msg.clone(),
                });
                failures.push(msg);
            }
        }
    }
    if read_ok && write_ok {
        r.ok = true;
        r.detail = format!(
            "read {SERVED} ({FILE_SIZE} bytes) and wrote then read back {up}, both matched \
             (sha256)"
        );
    } else {
        r.detail = if failures.is_empty() {
            "the TFTP transfers did not complete".into()
        } else {
            failures.join("; ")
        };
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_server_answers_a_and_srv_and_the_client_reads_them() {
        let mut s = DnsServer::new(Ipv4Addr::new(10, 0, 1, 10), 53);
        let from = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1), 40000);
        let a = s.answer(&dns_query(7, A_NAME, TYPE_A), from).unwrap();
        let (st, rr) = parse_answer(7, &a).unwrap();
        assert_eq!(
            (st.as_str(), rr),
            ("NOERROR", vec![(TYPE_A, "10.0.1.10".into())])
        );
        let srv = s.answer(&dns_query(8, SRV_NAME, TYPE_SRV), from).unwrap();
        let (st, rr) = parse_answer(8, &srv).unwrap();
        assert_eq!(st, "NOERROR");
        assert_eq!(rr, vec![(TYPE_SRV, "0 0 8080 host.lab.test.".into())]);
        let nx = s.answer(&dns_query(9, "other.test", TYPE_A), from).unwrap();
        assert_eq!(parse_answer(9, &nx).unwrap().0, "NXDOMAIN");
        assert_eq!(s.summary()["queries"], 3);
    }

    #[test]
    fn served_bytes_are_64_kib() {
        let b = served_bytes();
        assert_eq!(b.len(), FILE_SIZE);
        assert_eq!(chunk(&b, 128).len(), BLOCK);
        assert!(chunk(&b, 129).is_empty());
    }
}
