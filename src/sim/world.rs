//! [`SimWorld`]: the hosts of a lab, polled when something happens to them.
//!
//! Design: every host lives in one table behind one mutex. A background thread polls a host
//! when the gateway queued packets for it (its devices' arrival callbacks mark it) or when
//! its own timer is due (a retransmission, a delayed ACK: smoltcp says when); otherwise it
//! sleeps. A lab of a thousand idle hosts costs nothing between packets.
//!
//! An operation of one host ([`SimWorld::run`]) is advanced in short critical sections: lock,
//! poll that host, step the operation, unlock, wait a little. Nothing waits while holding the
//! lock, and the lock is the only one taken (the in-memory devices' queues are leaves; the
//! arrival callback takes only the wake-up's own lock), so nothing can deadlock; the gateway's
//! workers run on their own threads and never touch the hosts.

use super::host::{Heard, HttpGet, Listen, Ping, Pong, Proto, SimHost, Task, TcpSend, UdpExchange};
use crate::io::mem::MemHost;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest the poller sleeps with nothing due (a safety net: every arrival wakes it).
const IDLE: Duration = Duration::from_millis(100);
/// How often a running operation looks again when nothing woke it.
const STEP: Duration = Duration::from_micros(200);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Hosts {
    by_name: BTreeMap<String, usize>,
    hosts: Vec<Option<SimHost>>,
    /// When each host next needs a poll for its own timers.
    due: Vec<Option<Instant>>,
}

/// Hosts with packets waiting, and the poller's wake-up.
#[derive(Default)]
struct Wake {
    marked: Mutex<BTreeSet<usize>>,
    cv: Condvar,
}

impl Wake {
    fn mark(&self, i: usize) {
        lock(&self.marked).insert(i);
        self.cv.notify_all();
    }
}

struct Inner {
    hosts: Mutex<Hosts>,
    wake: Arc<Wake>,
    stop: AtomicBool,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Hosts> {
        lock(&self.hosts)
    }
}

/// Hosts polled by one background thread; stopped when dropped.
pub struct SimWorld {
    inner: Arc<Inner>,
    poller: Option<JoinHandle<()>>,
}

impl SimWorld {
    /// Starts serving `hosts` (by name).
    pub fn new(hosts: Vec<SimHost>) -> Result<SimWorld, String> {
        let inner = Arc::new(Inner {
            hosts: Mutex::new(Hosts {
                by_name: BTreeMap::new(),
                hosts: Vec::new(),
                due: Vec::new(),
            }),
            wake: Arc::new(Wake::default()),
            stop: AtomicBool::new(false),
        });
        let i = inner.clone();
        let poller = std::thread::Builder::new()
            .name("sim-poll".into())
            .spawn(move || poll_loop(&i))
            .map_err(|e| format!("cannot start the sim poller: {e}"))?;
        let w = SimWorld {
            inner,
            poller: Some(poller),
        };
        for h in hosts {
            w.add_host(h)?;
        }
        Ok(w)
    }

    /// Adds a host (its devices so far wake it; see [`SimWorld::waker`] for later ones).
    pub fn add_host(&self, h: SimHost) -> Result<(), String> {
        let mut g = self.inner.lock();
        if g.by_name.contains_key(h.name()) {
            return Err(format!("a host {:?} exists already", h.name()));
        }
        let i = g.hosts.len();
        g.by_name.insert(h.name().to_string(), i);
        g.hosts.push(Some(h));
        g.due.push(Some(Instant::now()));
        drop(g);
        self.inner.wake.mark(i);
        Ok(())
    }

    /// Makes packets the gateway queues on `mem` wake host `name`: call for every device
    /// before it is plugged into the host.
    pub fn wire(&self, name: &str, mem: &MemHost) -> Result<(), String> {
        let i = *self
            .inner
            .lock()
            .by_name
            .get(name)
            .ok_or_else(|| format!("no host {name:?}"))?;
        let wake = self.inner.wake.clone();
        mem.on_arrival(Box::new(move || wake.mark(i)));
        Ok(())
    }

    /// Names of the hosts.
    pub fn hosts(&self) -> Vec<String> {
        self.inner.lock().by_name.keys().cloned().collect()
    }

    /// Runs `f` on host `name` under the world's lock: for quick things (its addresses,
    /// starting a service, changing its devices), never for waiting. The host is polled
    /// afterwards.
    pub fn with_host<R>(&self, name: &str, f: impl FnOnce(&mut SimHost) -> R) -> Result<R, String> {
        let mut g = self.inner.lock();
        let i = *g
            .by_name
            .get(name)
            .ok_or_else(|| format!("no host {name:?}"))?;
        let h = g.hosts[i].as_mut().expect("hosts are never removed");
        let r = f(h);
        g.due[i] = Some(Instant::now());
        drop(g);
        self.inner.wake.mark(i);
        Ok(r)
    }

    /// Runs `task` on host `name` until it is done or `timeout` passed, while every other
    /// host keeps being served.
    pub fn run<T: Task>(
        &self,
        name: &str,
        mut task: T,
        timeout: Duration,
    ) -> Result<T::Output, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.with_host(name, |h| {
                h.poll(Instant::now());
                let r = task.step(h);
                if r.is_none() && Instant::now() >= deadline {
                    task.cancel(h);
                    return Some(Err(format!("{name}: {} timed out", task.what())));
                }
                r
            })?;
            if let Some(r) = r {
                return r;
            }
            std::thread::sleep(STEP);
        }
    }

    /// An ICMP echo from host `name` (from the address it picks).
    pub fn ping(&self, name: &str, dst: Ipv4Addr, timeout: Duration) -> Result<Pong, String> {
        self.ping_from(name, None, dst, timeout)
    }

    /// An ICMP echo from host `name`, from `from` (`ping -I`), else the address it picks.
    pub fn ping_from(
        &self,
        name: &str,
        from: Option<Ipv4Addr>,
        dst: Ipv4Addr,
        timeout: Duration,
    ) -> Result<Pong, String> {
        self.run(name, Ping::new(dst, from), timeout)
    }

    /// `GET path` from host `name`; `from` picks the source address. The body of a 200.
    pub fn http_get(
        &self,
        name: &str,
        from: Option<Ipv4Addr>,
        dst: SocketAddrV4,
        path: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        let body = self.run(name, HttpGet::get(dst, path, from), timeout)?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// A TCP exchange from host `name`: what the server sent before closing.
    pub fn tcp_send(
        &self,
        name: &str,
        from: Option<Ipv4Addr>,
        dst: SocketAddrV4,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        self.run(name, TcpSend::new(dst, payload, from), timeout)
    }

    /// One UDP datagram from host `name` and the first answer.
    pub fn udp_exchange(
        &self,
        name: &str,
        from: Option<Ipv4Addr>,
        dst: SocketAddrV4,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        self.run(name, UdpExchange::new(dst, payload, from), timeout)
    }

    /// Waits on host `name` for one connection or datagram on `port` (see [`Listen`]).
    pub fn listen(
        &self,
        name: &str,
        proto: Proto,
        port: u16,
        timeout: Duration,
    ) -> Result<Heard, String> {
        self.run(name, Listen::new(proto, port), timeout)
    }
}

fn poll_loop(inner: &Inner) {
    let mut next_due: Option<Instant> = None;
    while !inner.stop.load(Ordering::Acquire) {
        let marked = {
            let mut m = lock(&inner.wake.marked);
            if m.is_empty() {
                let wait = next_due
                    .map_or(IDLE, |t| t.saturating_duration_since(Instant::now()))
                    .min(IDLE);
                if !wait.is_zero() {
                    m = inner
                        .wake
                        .cv
                        .wait_timeout(m, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
            std::mem::take(&mut *m)
        };
        let mut g = inner.lock();
        let now = Instant::now();
        let Hosts { hosts, due, .. } = &mut *g;
        next_due = None;
        for (i, h) in hosts.iter_mut().enumerate() {
            let Some(h) = h else { continue };
            let is_due = due[i].is_some_and(|t| t <= now);
            if marked.contains(&i) || is_due {
                due[i] = h.poll(now);
            }
            if let Some(t) = due[i] {
                next_due = Some(next_due.map_or(t, |n: Instant| n.min(t)));
            }
        }
    }
}

impl Drop for SimWorld {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        self.inner.wake.cv.notify_all();
        if let Some(t) = self.poller.take() {
            let _ = t.join();
        }
    }
}
