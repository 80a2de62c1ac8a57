//! Health checks, as a cloud load balancer sends them: from the cloud's range (100.64.0.0/10),
//! out of the lab's `{prefix}cloud` namespace, to each backend on its interval.
//!
//! One thread per [`Prober`], inside the namespace, runs every probe: each probe is a
//! non-blocking socket, and the thread polls them all at once (plus an eventfd that wakes it
//! for new targets or to stop). Nothing here panics on a network error: an error is a failed
//! check.
//!
//! - TCP: a non-blocking connect; up if the handshake completes within the timeout, down on a
//!   refusal, a timeout or any error. The connection is closed at once (a plain close).
//! - UDP: a connected socket sends one small datagram; down if the kernel reports
//!   `ECONNREFUSED` (an ICMP port unreachable came back) or another error, up on a reply or on
//!   silence until the timeout. That is how the cloud's UDP check behaves: it cannot tell a
//!   quiet service from a lost datagram, only a closed port.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::sys::netns::NetnsHandle;

/// The protocol of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Tcp,
    Udp,
}

/// One thing to check, and how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeTarget {
    /// The caller's id for it: reports carry it, and [`Prober::set_targets`] matches on it.
    pub key: u64,
    pub kind: ProbeKind,
    pub addr: SocketAddrV4,
    /// Time between the starts of two probes (at least [`MIN_INTERVAL`]). A probe still
    /// running when the next is due delays it: one probe per target at a time.
    pub interval: Duration,
    /// How long a probe may take.
    pub timeout: Duration,
}

/// Shorter intervals are taken as this.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// What a UDP check sends.
const UDP_PAYLOAD: &[u8] = b"eiplab health check\n";

/// What the caller and the thread share.
struct Shared {
    stop: AtomicBool,
    /// A new target set, not yet taken by the thread.
    targets: Mutex<Option<Vec<ProbeTarget>>>,
    /// Written to wake the thread.
    wake: OwnedFd,
}

impl Shared {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd. A full counter (EAGAIN) still
        // leaves the fd readable, which is all we need.
        unsafe {
            libc::write(
                self.wake.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

/// A running health checker. Dropping it stops its thread and waits for it (promptly: the
/// thread is woken, not left to finish its probes).
pub struct Prober {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober").finish_non_exhaustive()
    }
}

impl Prober {
    /// Starts the prober's thread inside namespace `ns`, with no targets. Checks are sent from
    /// `source` (bound before connecting; `None`: the kernel picks by route). `report` is
    /// called on the prober's thread with (key, up) after every probe; keep it quick, since
    /// probes wait while it runs. A panicking `report` is caught and does not stop the prober.
    pub fn start(
        ns: &str,
        source: Option<Ipv4Addr>,
        report: Box<dyn FnMut(u64, bool) + Send>,
    ) -> Result<Prober, String> {
        let handle = NetnsHandle::open(ns)?;
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(format!(
                "health checks in namespace {ns}: cannot make an eventfd: {}",
                io::Error::last_os_error()
            ));
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            targets: Mutex::new(None),
            wake,
        });
        let (started_tx, started_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let thread_shared = Arc::clone(&shared);
        let label = ns.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("health-{ns}"))
            .spawn(move || {
                let entered = handle.run(|| {
                    let _ = started_tx.send(Ok(()));
                    Checker {
                        shared: thread_shared,
                        source,
                        report,
                        entries: HashMap::new(),
                    }
                    .run();
                });
                if let Err(e) = entered {
                    let _ = started_tx.send(Err(format!("health checks in {label}: {e}")));
                }
            })
            .map_err(|e| format!("health checks in namespace {ns}: cannot start a thread: {e}"))?;
        let prober = Prober {
            shared,
            thread: Some(thread),
        };
        match started_rx.recv() {
            Ok(Ok(())) => Ok(prober),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!(
                "health checks in namespace {ns}: the thread ended before starting"
            )),
        }
    }

    /// Replaces the targets. A target whose key stays keeps its schedule (and a probe in
    /// flight, unless its address or protocol changed); a new key is probed at once; a key
    /// that went is forgotten without a report.
    pub fn set_targets(&self, targets: Vec<ProbeTarget>) {
        *self
            .shared
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(targets);
        self.shared.wake();
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A probe in flight.
struct Probe {
    fd: OwnedFd,
    deadline: Instant,
}

struct Entry {
    target: ProbeTarget,
    next_due: Instant,
    probe: Option<Probe>,
}

/// How a probe ended, or that it goes on.
enum Outcome {
    Up,
    Down,
    Pending,
}

/// The prober's thread.
struct Checker {
    shared: Arc<Shared>,
    source: Option<Ipv4Addr>,
    report: Box<dyn FnMut(u64, bool) + Send>,
    entries: HashMap<u64, Entry>,
}

impl Checker {
    fn run(&mut self) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut keys: Vec<u64> = Vec::new();
        while !self.shared.stop.load(Ordering::SeqCst) {
            self.take_targets();
            let now = Instant::now();
            self.start_due(now);

            // Poll the wake fd and every probe, until the earliest deadline or due time.
            fds.clear();
            keys.clear();
            fds.push(libc::pollfd {
                fd: self.shared.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            let mut until: Option<Instant> = None;
            for (key, e) in &self.entries {
                let at = match &e.probe {
                    Some(p) => {
                        let events = match e.target.kind {
                            ProbeKind::Tcp => libc::POLLOUT,
                            ProbeKind::Udp => libc::POLLIN,
                        };
                        fds.push(libc::pollfd {
                            fd: p.fd.as_raw_fd(),
                            events,
                            revents: 0,
                        });
                        keys.push(*key);
                        p.deadline
                    }
                    None => e.next_due,
                };
                until = Some(until.map_or(at, |u| u.min(at)));
            }
            let wait = until.map(|u| u.saturating_duration_since(now));
            // SAFETY: `fds` is a live array of `fds.len()` pollfds for the duration of the call.
            let rc =
                unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, poll_ms(wait)) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    // Should not happen; do not spin.
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            if fds[0].revents != 0 {
                let mut n: u64 = 0;
                // SAFETY: reads 8 bytes into a live u64 from our non-blocking eventfd.
                unsafe {
                    libc::read(
                        self.shared.wake.as_raw_fd(),
                        (&mut n as *mut u64).cast(),
                        std::mem::size_of::<u64>(),
                    )
                };
            }
            if self.shared.stop.load(Ordering::SeqCst) {
                break;
            }
            let now = Instant::now();
            for (pfd, key) in fds[1..].iter().zip(&keys) {
                let Some(e) = self.entries.get_mut(key) else {
                    continue;
                };
                let Some(p) = &e.probe else {
                    continue;
                };
                let outcome = if pfd.revents != 0 {
                    finish(e.target.kind, p.fd.as_raw_fd())
                } else {
                    Outcome::Pending
                };
                let outcome = match outcome {
                    Outcome::Pending if now >= p.deadline => match e.target.kind {
                        // Silence is what a UDP service usually answers.
                        ProbeKind::Udp => Outcome::Up,
                        ProbeKind::Tcp => Outcome::Down,
                    },
                    o => o,
                };
                let up = match outcome {
                    Outcome::Pending => continue,
                    Outcome::Up => true,
                    Outcome::Down => false,
                };
                e.probe = None; // closes the socket
                self.tell(*key, up);
            }
        }
    }

    /// Takes a new target set if the caller left one.
    fn take_targets(&mut self) {
        let new = self
            .shared
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(new) = new else {
            return;
        };
        let now = Instant::now();
        let mut old = std::mem::take(&mut self.entries);
        for mut target in new {
            target.interval = target.interval.max(MIN_INTERVAL);
            let entry = match old.remove(&target.key) {
                Some(mut e) => {
                    if e.target.addr != target.addr || e.target.kind != target.kind {
                        e.probe = None;
                    }
                    // A shorter interval takes effect now, a longer one after the next probe.
                    let latest = now + target.interval;
                    e.next_due = e.next_due.min(latest);
                    e.target = target;
                    e
                }
                None => Entry {
                    target,
                    next_due: now,
                    probe: None,
                },
            };
            self.entries.insert(entry.target.key, entry);
        }
    }

    /// Starts the probes that are due; reports those that end at once.
    fn start_due(&mut self, now: Instant) {
        let mut ended: Vec<(u64, bool)> = Vec::new();
        for (key, e) in self.entries.iter_mut() {
            if e.probe.is_some() || e.next_due > now {
                continue;
            }
            e.next_due = now + e.target.interval;
            match begin(&e.target, self.source) {
                Ok((fd, Outcome::Pending)) => {
                    e.probe = Some(Probe {
                        fd,
                        deadline: now + e.target.timeout,
                    })
                }
                Ok((_, Outcome::Up)) => ended.push((*key, true)),
                Ok((_, Outcome::Down)) | Err(_) => ended.push((*key, false)),
            }
        }
        for (key, up) in ended {
            self.tell(key, up);
        }
    }

    fn tell(&mut self, key: u64, up: bool) {
        let report = &mut self.report;
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| report(key, up)));
    }
}

/// Milliseconds for `poll`, rounded up so a wait never ends just before its deadline.
fn poll_ms(wait: Option<Duration>) -> libc::c_int {
    match wait {
        None => -1,
        Some(w) => {
            let ms = w.as_nanos().div_ceil(1_000_000);
            libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
        }
    }
}

/// Opens the probe's socket and starts it: a connect for TCP, a connect and a datagram for UDP.
fn begin(t: &ProbeTarget, source: Option<Ipv4Addr>) -> io::Result<(OwnedFd, Outcome)> {
    let ty = match t.kind {
        ProbeKind::Tcp => libc::SOCK_STREAM,
        ProbeKind::Udp => libc::SOCK_DGRAM,
    };
    // SAFETY: socket takes no pointers; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET,
            ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if let Some(src) = source {
        if t.kind == ProbeKind::Tcp {
            // Pick the port at connect time, by the 4-tuple, not at bind time by address only.
            let one: libc::c_int = 1;
            // SAFETY: a live c_int and its size.
            unsafe {
                libc::setsockopt(
                    raw,
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        let sa = sockaddr(SocketAddrV4::new(src, 0));
        // SAFETY: a live sockaddr_in and its size.
        let rc = unsafe {
            libc::bind(
                raw,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let sa = sockaddr(t.addr);
    // SAFETY: a live sockaddr_in and its size.
    let rc = unsafe {
        libc::connect(
            raw,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    match t.kind {
        ProbeKind::Tcp => {
            if rc == 0 {
                return Ok((fd, Outcome::Up));
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINPROGRESS) {
                Ok((fd, Outcome::Pending))
            } else {
                Err(e)
            }
        }
        ProbeKind::Udp => {
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: sends from a live static buffer of the given length.
            let n = unsafe {
                libc::send(
                    raw,
                    UDP_PAYLOAD.as_ptr().cast(),
                    UDP_PAYLOAD.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                // A full send buffer is not the service's fault: wait and see.
                if e.raw_os_error() != Some(libc::EAGAIN) {
                    return Err(e);
                }
            }
            Ok((fd, Outcome::Pending))
        }
    }
}

/// What a probe's socket says now that poll flagged it.
fn finish(kind: ProbeKind, fd: RawFd) -> Outcome {
    match kind {
        ProbeKind::Tcp => match socket_error(fd) {
            Ok(0) => Outcome::Up,
            _ => Outcome::Down,
        },
        ProbeKind::Udp => {
            let mut buf = [0u8; 512];
            // SAFETY: receives into a live buffer of the given length.
            let n =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n >= 0 {
                return Outcome::Up; // a reply
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Outcome::Pending,
                // ECONNREFUSED (port unreachable), or host or network unreachable.
                _ => Outcome::Down,
            }
        }
    }
}

/// The socket's pending error (`SO_ERROR`): 0 if none.
fn socket_error(fd: RawFd) -> io::Result<libc::c_int> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are live and `len` holds the size of `err`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(err)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: all-zero bytes are a valid sockaddr_in.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = a.port().to_be();
    sa.sin_addr = libc::in_addr {
        s_addr: u32::from(*a.ip()).to_be(),
    };
    sa
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_waits_round_up_and_never_overflow() {
        assert_eq!(poll_ms(None), -1);
        assert_eq!(poll_ms(Some(Duration::ZERO)), 0);
        assert_eq!(poll_ms(Some(Duration::from_micros(1))), 1);
        assert_eq!(poll_ms(Some(Duration::from_micros(1500))), 2);
        assert_eq!(poll_ms(Some(Duration::MAX)), libc::c_int::MAX);
    }

    #[test]
    fn socket_addresses_are_in_network_order() {
        let sa = sockaddr("10.9.0.1:8080".parse().unwrap());
        assert_eq!(sa.sin_family, libc::AF_INET as libc::sa_family_t);
        assert_eq!(sa.sin_port.to_ne_bytes(), 8080u16.to_be_bytes());
        assert_eq!(sa.sin_addr.s_addr.to_ne_bytes(), [10, 9, 0, 1]);
    }
}
