//! [`SimWorld`]: the hosts of a lab, polled together.
//!
//! Design: every host lives in one map behind one mutex. A background thread locks it every
//! millisecond, polls every host, and lets go; so a host serves (answers pings, HTTP, UDP)
//! while nobody waits on it. An operation of one host ([`SimWorld::run`]) is advanced in
//! short critical sections: lock, poll that host, step the operation, unlock, sleep a little.
//! Nothing waits while holding the lock, and the lock is the only one taken (the in-memory
//! devices' queues are leaves), so nothing can deadlock; the gateway's workers run on their
//! own threads and never touch the hosts.

use super::host::{HttpGet, Ping, SimHost, Task, UdpExchange};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the background thread polls every host.
const TICK: Duration = Duration::from_millis(1);

struct Inner {
    hosts: Mutex<BTreeMap<String, SimHost>>,
    stop: AtomicBool,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, SimHost>> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Hosts polled by one background thread; stopped when dropped.
pub struct SimWorld {
    inner: Arc<Inner>,
    poller: Option<JoinHandle<()>>,
}

impl SimWorld {
    /// Starts polling `hosts` (by name).
    pub fn new(hosts: Vec<SimHost>) -> Result<SimWorld, String> {
        let inner = Arc::new(Inner {
            hosts: Mutex::new(
                hosts
                    .into_iter()
                    .map(|h| (h.name().to_string(), h))
                    .collect(),
            ),
            stop: AtomicBool::new(false),
        });
        let i = inner.clone();
        let poller = std::thread::Builder::new()
            .name("sim-poll".into())
            .spawn(move || {
                while !i.stop.load(Ordering::Acquire) {
                    {
                        let mut hosts = i.lock();
                        let now = Instant::now();
                        for h in hosts.values_mut() {
                            h.poll(now);
                        }
                    }
                    std::thread::sleep(TICK);
                }
            })
            .map_err(|e| format!("cannot start the sim poller: {e}"))?;
        Ok(SimWorld {
            inner,
            poller: Some(poller),
        })
    }

    /// Names of the hosts.
    pub fn hosts(&self) -> Vec<String> {
        self.inner.lock().keys().cloned().collect()
    }

    /// Runs `f` on host `name` under the world's lock: for quick things (its addresses,
    /// starting a service), never for waiting.
    pub fn with_host<R>(&self, name: &str, f: impl FnOnce(&mut SimHost) -> R) -> Result<R, String> {
        let mut hosts = self.inner.lock();
        let h = hosts
            .get_mut(name)
            .ok_or_else(|| format!("no host {name:?}"))?;
        Ok(f(h))
    }

    /// Runs `task` on host `name` until it is done or `timeout` passed, while every other
    /// host keeps being polled.
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
            std::thread::sleep(Duration::from_micros(300));
        }
    }

    /// [`SimHost::ping`] from host `name`.
    pub fn ping(&self, name: &str, dst: Ipv4Addr, timeout: Duration) -> Result<Duration, String> {
        self.run(name, Ping::new(dst, None), timeout)
    }

    /// [`SimHost::http_get`] from host `name`; `from` picks the source address.
    pub fn http_get(
        &self,
        name: &str,
        from: Option<Ipv4Addr>,
        dst: SocketAddrV4,
        path: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        self.run(name, HttpGet::new(dst, path, from), timeout)
    }

    /// [`SimHost::udp_exchange`] from host `name`.
    pub fn udp_exchange(
        &self,
        name: &str,
        dst: SocketAddrV4,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        self.run(name, UdpExchange::new(dst, payload, None), timeout)
    }
}

impl Drop for SimWorld {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        if let Some(t) = self.poller.take() {
            let _ = t.join();
        }
    }
}
