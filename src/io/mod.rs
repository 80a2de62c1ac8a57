//! The gateway: a small pool of workers (about one per core) that move packets between the
//! lab's interfaces through the translation engine.
//!
//! Every lab interface (the internet, the cloud services, each attached ENI) is a *port*: a
//! [`Device`] behind the seam of [`device`] and the [`Side`] it leads to. Each port is read by
//! exactly one worker, the one with the fewest ports when it was added, so the packets of one
//! flow direction are always handled by one thread, in order. A worker sleeps in `epoll` on the
//! devices it reads and on its own eventfd, receives a batch from a ready device, lets its own
//! [`Engine`] decide for the whole batch ([`Engine::process_batch`]), and hands each
//! destination port the packets meant for it as one batch. Any worker may send to any port.
//!
//! Nothing runs on a timer. A worker wakes for packets, for a change of the port set (a port
//! added or removed: every worker reloads the routing set and lets go of removed devices), for
//! a new engine table (published through the [`TableCell`], whose watcher signals every
//! worker), for a counters request ([`Dataplane::snapshot`] asks every worker to publish and
//! waits for the answers, so counters are exact when read), for the fragment table's next
//! expiry, and to stop. An idle lab sleeps.
//!
//! Offloads: a TUN read may carry a 64 KB GSO super-packet behind a virtio header. It is
//! translated whole and leaves with the same [`Offload`] metadata, so the receiving kernel
//! segments it or takes it as one. Answers of the gateway itself (ICMP) and released
//! fragments leave with none.

pub mod coalesce;
pub mod device;
pub mod mem;
pub mod pcap;
pub mod poll;
pub mod tun;

#[cfg(test)]
mod tests;

pub use device::{Batch, Device, Offload, Received, MAX_PACKET};

use crate::engine::{AlgReport, Engine, EngineConfig, Side, TableCell, Verdict, WatchId};
use crate::telemetry::{GatewayErrors, Snapshot};
use poll::{Epoll, EventFd};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Packets a worker takes from one device at a time.
pub const BATCH: usize = 64;
/// How long a worker polls without sleeping after it moved packets (see [`Options::busy_poll`]).
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(2000);
/// How long [`Dataplane::snapshot`] waits for a busy worker's answer before it uses the
/// worker's previous one.
const SNAPSHOT_WAIT: Duration = Duration::from_millis(500);
/// How long removing a port waits for the workers to let go of its device.
const REMOVE_WAIT: Duration = Duration::from_secs(2);
/// The epoll token of a worker's own eventfd (port ids start at 1).
const WAKE: u64 = 0;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many workers when nobody says: one per core the process may run on.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How the gateway runs.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Worker threads (at least 1).
    pub workers: usize,
    /// Packets taken from one device at a time (at least 1).
    pub batch: usize,
    /// After a batch that moved packets, how long a worker keeps polling its devices without
    /// sleeping (`epoll_wait` with no timeout) before it sleeps again. A packet arriving in
    /// that window is taken without a wake-up (an answer right behind the question it
    /// forwarded, the next packets of a burst). Zero: sleep at once. An idle worker never
    /// spins: the window opens only when packets move.
    pub busy_poll: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workers: default_workers(),
            batch: BATCH,
            busy_poll: DEFAULT_BUSY_POLL,
        }
    }
}

/// One lab interface as the gateway holds it.
pub struct Port {
    id: u64,
    /// `i-web.eth0`, `internet.eth0`: for logs.
    pub name: String,
    pub side: Side,
    dev: Box<dyn Device>,
    /// The worker that reads it.
    worker: usize,
}

/// Where each side leads now. Immutable; replaced as a whole when a port comes or goes.
#[derive(Default, Clone)]
struct Routes {
    internet: Option<Arc<Port>>,
    cloud: Option<Arc<Port>>,
    enis: Vec<Option<Arc<Port>>>,
}

impl Routes {
    #[inline]
    fn get(&self, side: Side) -> Option<&Arc<Port>> {
        match side {
            Side::Internet => self.internet.as_ref(),
            Side::CloudServices => self.cloud.as_ref(),
            Side::Eni(e) => self.enis.get(e as usize).and_then(Option::as_ref),
        }
    }

    fn slot(&mut self, side: Side) -> &mut Option<Arc<Port>> {
        match side {
            Side::Internet => &mut self.internet,
            Side::CloudServices => &mut self.cloud,
            Side::Eni(e) => {
                let i = e as usize;
                if self.enis.len() <= i {
                    self.enis.resize(i + 1, None);
                }
                &mut self.enis[i]
            }
        }
    }
}

/// Failures of the shell itself (not the engine's drop reasons): counted, never fatal.
#[derive(Debug, Default)]
pub struct ShellCounters {
    /// The verdict named an ENI whose device is not (yet, or any more) there.
    pub no_device: AtomicU64,
    /// A device refused a packet (queue full, interface down or going away).
    pub tx_errors: AtomicU64,
    /// A read that carried no usable packet (shorter than the device's framing), or a device
    /// that failed to read (its port is then no longer read).
    pub short_reads: AtomicU64,
}

enum Command {
    Add(Arc<Port>),
    Remove(u64),
}

/// What the rest of the gateway knows of one worker.
struct WorkerSlot {
    wake: EventFd,
    inbox: Mutex<Vec<Command>>,
    /// Ports it reads (for placing new ones).
    ports: AtomicUsize,
}

struct Shared {
    cell: Arc<TableCell>,
    routes: Mutex<Arc<Routes>>,
    routes_generation: AtomicU64,
    stop: AtomicBool,
    workers: Vec<WorkerSlot>,
    /// Counters requests: [`Dataplane::snapshot`] raises it, workers answer in `answers`
    /// (the request they answered, their counters); `u64::MAX` once a worker has ended.
    requests: AtomicU64,
    answers: Mutex<Vec<(u64, Snapshot)>>,
    answered: Condvar,
    shell: ShellCounters,
    epoch: Instant,
    batch: usize,
    busy_poll_ns: u64,
    /// ALG findings of every worker's engine (`inspect`), oldest first, at most
    /// [`ALG_REPORTS_KEPT`]; read by [`Dataplane::take_alg_reports`].
    alg_reports: Mutex<std::collections::VecDeque<AlgReport>>,
    /// How far [`Dataplane::advance_clock`] moved the engines' clock ahead of the real one.
    skew_ns: AtomicU64,
}

/// How many ALG findings the dataplane keeps for [`Dataplane::take_alg_reports`] (the oldest
/// are dropped first).
pub const ALG_REPORTS_KEPT: usize = 4096;

impl Shared {
    fn now(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() as u64)
            .saturating_add(self.skew_ns.load(Ordering::Acquire))
    }

    fn wake_all(&self) {
        for w in &self.workers {
            w.wake.signal();
        }
    }

    fn load_routes(&self) -> (u64, Arc<Routes>) {
        let r = lock(&self.routes);
        (self.routes_generation.load(Ordering::Acquire), r.clone())
    }

    /// Replaces what `side` leads to; returns the port it led to before.
    fn set_route(&self, side: Side, port: Option<Arc<Port>>) -> Option<Arc<Port>> {
        let mut cur = lock(&self.routes);
        let mut next = (**cur).clone();
        let old = std::mem::replace(next.slot(side), port);
        *cur = Arc::new(next);
        self.routes_generation.fetch_add(1, Ordering::Release);
        old
    }
}

/// The running gateway.
pub struct Dataplane {
    sh: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    watch: Mutex<Option<WatchId>>,
    next_port: AtomicU64,
}

impl Dataplane {
    /// Starts the workers; they serve the tables published into `cell`.
    pub fn new(cell: Arc<TableCell>, opts: Options) -> io::Result<Arc<Dataplane>> {
        let n = opts.workers.max(1);
        let mut workers = Vec::with_capacity(n);
        for _ in 0..n {
            workers.push(WorkerSlot {
                wake: EventFd::new()?,
                inbox: Mutex::new(Vec::new()),
                ports: AtomicUsize::new(0),
            });
        }
        let sh = Arc::new(Shared {
            cell: cell.clone(),
            routes: Mutex::new(Arc::new(Routes::default())),
            routes_generation: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            workers,
            requests: AtomicU64::new(0),
            answers: Mutex::new(vec![(0, Snapshot::default()); n]),
            answered: Condvar::new(),
            shell: ShellCounters::default(),
            epoch: Instant::now(),
            batch: opts.batch.max(1),
            busy_poll_ns: opts.busy_poll.as_nanos().min(u64::MAX as u128) as u64,
            alg_reports: Mutex::new(std::collections::VecDeque::new()),
            skew_ns: AtomicU64::new(0),
        });
        let dp = Arc::new(Dataplane {
            sh: sh.clone(),
            threads: Mutex::new(Vec::new()),
            watch: Mutex::new(None),
            next_port: AtomicU64::new(1),
        });
        for i in 0..n {
            let ep = Epoll::new(64)?;
            ep.add(sh.workers[i].wake.as_raw_fd(), WAKE)?;
            let s = sh.clone();
            let h = std::thread::Builder::new()
                .name(format!("gw-worker-{i}"))
                .spawn(move || Worker::new(s, i, ep).run())?;
            lock(&dp.threads).push(h);
        }
        // A new table wakes the workers: an idle one adopts it (and releases what it frees)
        // at once rather than at its next packet.
        let weak: Weak<Shared> = Arc::downgrade(&sh);
        let id = cell.watch(Box::new(move || {
            if let Some(s) = weak.upgrade() {
                s.wake_all();
            }
        }));
        *lock(&dp.watch) = Some(id);
        Ok(dp)
    }

    /// The ALG findings (`inspect`) the workers reported since the last call, oldest first
    /// (at most [`ALG_REPORTS_KEPT`]). A worker hands its findings over after each round of
    /// packets it moved.
    pub fn take_alg_reports(&self) -> Vec<AlgReport> {
        lock(&self.sh.alg_reports).drain(..).collect()
    }

    /// Worker threads.
    pub fn workers(&self) -> usize {
        self.sh.workers.len()
    }

    /// Ports each worker reads.
    pub fn ports_per_worker(&self) -> Vec<usize> {
        self.sh
            .workers
            .iter()
            .map(|w| w.ports.load(Ordering::Relaxed))
            .collect()
    }

    /// Makes `dev` the port of `side` (replacing one that was there), read by the worker with
    /// the fewest ports.
    pub fn add_port(&self, name: String, side: Side, dev: Box<dyn Device>) {
        if self.sh.stop.load(Ordering::Acquire) {
            return;
        }
        self.remove_port(side);
        let worker = self
            .sh
            .workers
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.ports.load(Ordering::Relaxed))
            .map_or(0, |(i, _)| i);
        let port = Arc::new(Port {
            id: self.next_port.fetch_add(1, Ordering::Relaxed),
            name,
            side,
            dev,
            worker,
        });
        tracing::debug!(port = %port.name, worker, "port added");
        self.sh.set_route(side, Some(port.clone()));
        let w = &self.sh.workers[worker];
        w.ports.fetch_add(1, Ordering::Relaxed);
        lock(&w.inbox).push(Command::Add(port));
        w.wake.signal();
    }

    /// Takes `side`'s port away: no worker reads it or sends to it any more, and its device
    /// is closed (dropped) before this returns, unless a worker holds it longer than
    /// [`REMOVE_WAIT`] (then it closes when that worker lets go). Returns whether there was one.
    pub fn remove_port(&self, side: Side) -> bool {
        let Some(port) = self.sh.set_route(side, None) else {
            return false;
        };
        let w = &self.sh.workers[port.worker];
        w.ports.fetch_sub(1, Ordering::Relaxed);
        lock(&w.inbox).push(Command::Remove(port.id));
        // Every worker reloads the routes and drops its reference to the port.
        self.sh.wake_all();
        let deadline = Instant::now() + REMOVE_WAIT;
        while Arc::strong_count(&port) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        if Arc::strong_count(&port) > 1 {
            tracing::warn!(port = %port.name, "a worker still holds the removed port; it closes later");
        }
        tracing::debug!(port = %port.name, "port removed");
        true
    }

    /// Moves the engines' clock `by` ahead of the real one (it keeps running from there):
    /// sessions, fragments and rate limits then age as if that time had passed, which lets a
    /// test see an expiry without sleeping. Every worker wakes to handle what is now due.
    pub fn advance_clock(&self, by: Duration) {
        let ns = by.as_nanos().min(u64::MAX as u128) as u64;
        self.sh.skew_ns.fetch_add(ns, Ordering::AcqRel);
        self.sh.wake_all();
    }

    /// Takes an ENI's port away (detached).
    pub fn remove_eni(&self, eni: u16) {
        self.remove_port(Side::Eni(eni));
    }

    /// The shell's own losses.
    pub fn shell(&self) -> &ShellCounters {
        &self.sh.shell
    }

    /// The sum of every worker's counters, as of now: each worker is asked and answers after
    /// the batch it is in (a worker that does not answer within [`SNAPSHOT_WAIT`] is counted
    /// as of its previous answer).
    pub fn snapshot(&self) -> Snapshot {
        let sh = &self.sh;
        let req = sh.requests.fetch_add(1, Ordering::AcqRel) + 1;
        sh.wake_all();
        let deadline = Instant::now() + SNAPSHOT_WAIT;
        let mut a = lock(&sh.answers);
        while a.iter().any(|(r, _)| *r < req) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            a = sh
                .answered
                .wait_timeout(a, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let mut total = Snapshot::default();
        for (_, s) in a.iter() {
            total.merge(s);
        }
        drop(a);
        total.gateway = GatewayErrors {
            no_device: sh.shell.no_device.load(Ordering::Relaxed),
            tx_errors: sh.shell.tx_errors.load(Ordering::Relaxed),
            short_reads: sh.shell.short_reads.load(Ordering::Relaxed),
        };
        total
    }

    /// Stops every worker and waits for them; every device is closed when this returns.
    pub fn shutdown(&self) {
        if let Some(id) = lock(&self.watch).take() {
            self.sh.cell.unwatch(id);
        }
        self.sh.stop.store(true, Ordering::Release);
        self.sh.wake_all();
        let hs: Vec<_> = std::mem::take(&mut *lock(&self.threads));
        for h in hs {
            let _ = h.join();
        }
        *lock(&self.sh.routes) = Arc::new(Routes::default());
        self.sh.routes_generation.fetch_add(1, Ordering::Release);
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One worker thread's state.
struct Worker {
    sh: Arc<Shared>,
    me: usize,
    ep: Epoll,
    engine: Engine,
    /// The ports it reads, by id.
    reading: Vec<(u64, Arc<Port>)>,
    routes: Arc<Routes>,
    routes_generation: u64,
    step: Step,
    answered: u64,
}

/// Milliseconds from `now` until `t` (nanoseconds), rounded up, for `epoll_wait`.
fn ms_until(t: u64, now: u64) -> i32 {
    (t.saturating_sub(now).div_ceil(1_000_000)).min(i32::MAX as u64) as i32
}

impl Worker {
    fn new(sh: Arc<Shared>, me: usize, ep: Epoll) -> Worker {
        let (_, table) = sh.cell.load();
        let mut engine = Engine::with_memory(
            table,
            EngineConfig::default(),
            Some(Arc::new(crate::sys::memory::HugePages)),
        );
        engine.refresh(&sh.cell);
        let (routes_generation, routes) = sh.load_routes();
        let step = Step::new(sh.batch);
        Worker {
            sh,
            me,
            ep,
            engine,
            reading: Vec::new(),
            routes,
            routes_generation,
            step,
            answered: 0,
        }
    }

    fn run(mut self) {
        tracing::debug!(worker = self.me, "worker started");
        let mut ready: Vec<u64> = Vec::with_capacity(64);
        // Until when (ns since the epoch) to poll without sleeping; 0: not polling.
        let mut spin_until = 0u64;
        let mut woken = true;
        loop {
            if woken {
                self.take_commands();
                woken = false;
            }
            self.refresh_routes();
            self.engine.refresh(&self.sh.cell);
            let req = self.sh.requests.load(Ordering::Acquire);
            if req > self.answered {
                self.publish(req);
            }
            if self.sh.stop.load(Ordering::Acquire) {
                break;
            }
            let now = self.sh.now();
            if self.engine.poll_timeout().is_some_and(|t| t <= now) {
                self.engine.handle_timeout(now);
            }
            let timeout = if spin_until > now {
                0
            } else {
                spin_until = 0;
                self.engine.poll_timeout().map_or(-1, |t| ms_until(t, now))
            };
            ready.clear();
            match self.ep.wait(timeout) {
                Ok(tokens) => ready.extend(tokens),
                Err(e) => {
                    tracing::error!(worker = self.me, "epoll_wait failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            if timeout == 0 && ready.is_empty() {
                // Polling and nothing came: let whatever else is runnable on this CPU (the
                // lab's own senders and receivers, on a small machine) have its turn. (Polling
                // in SCHED_IDLE was tried: under a flood a worker there got almost no CPU
                // even once packets were waiting.)
                std::thread::yield_now();
            }
            let mut moved = 0;
            for &token in &ready {
                if token == WAKE {
                    self.sh.workers[self.me].wake.clear();
                    woken = true;
                } else if let Some(i) = self.reading.iter().position(|(id, _)| *id == token) {
                    let port = self.reading[i].1.clone();
                    moved += self.serve(&port);
                }
            }
            if moved > 0 && self.sh.busy_poll_ns > 0 {
                spin_until = self.sh.now() + self.sh.busy_poll_ns;
            }
            if let Some(first) = self.engine.poll_report() {
                self.hand_over_reports(first);
            }
        }
        self.publish(u64::MAX);
        tracing::debug!(worker = self.me, "worker stopped");
    }

    /// Moves the engine's ALG findings to the dataplane's shared list (cold: only under an
    /// `inspect` policy, and only for payloads that carry an address NAT made wrong).
    #[cold]
    fn hand_over_reports(&mut self, first: AlgReport) {
        let mut q = lock(&self.sh.alg_reports);
        let mut next = Some(first);
        while let Some(r) = next {
            if q.len() >= ALG_REPORTS_KEPT {
                q.pop_front();
            }
            q.push_back(r);
            next = self.engine.poll_report();
        }
    }

    /// Takes the newest routing set if it changed (one atomic load when it did not).
    #[inline]
    fn refresh_routes(&mut self) {
        if self.sh.routes_generation.load(Ordering::Acquire) != self.routes_generation {
            (self.routes_generation, self.routes) = self.sh.load_routes();
        }
    }

    fn take_commands(&mut self) {
        let cmds: Vec<Command> = std::mem::take(&mut *lock(&self.sh.workers[self.me].inbox));
        for c in cmds {
            match c {
                Command::Add(p) => match self.ep.add(p.dev.ready_fd(), p.id) {
                    Ok(()) => self.reading.push((p.id, p)),
                    Err(e) => {
                        tracing::error!(port = %p.name, "cannot watch the device: {e}; it is not read")
                    }
                },
                Command::Remove(id) => {
                    if let Some(i) = self.reading.iter().position(|(x, _)| *x == id) {
                        let (_, p) = self.reading.swap_remove(i);
                        self.ep.remove(p.dev.ready_fd());
                    }
                }
            }
        }
    }

    fn publish(&mut self, req: u64) {
        let s = snapshot_of(&self.engine);
        lock(&self.sh.answers)[self.me] = (req, s);
        self.sh.answered.notify_all();
        self.answered = req;
    }

    /// Receives one batch from `port`, translates it and sends every packet on its way;
    /// returns how many packets it received.
    fn serve(&mut self, port: &Arc<Port>) -> usize {
        let got = match self.step.recv(&*port.dev) {
            Ok(g) => g,
            Err(e) => {
                // A device that fails to read would be reported ready forever: stop reading it.
                tracing::warn!(port = %port.name, "read failed: {e}; the port is no longer read");
                self.sh.shell.short_reads.fetch_add(1, Ordering::Relaxed);
                self.ep.remove(port.dev.ready_fd());
                self.reading.retain(|(id, _)| *id != port.id);
                return 0;
            }
        };
        if got.discarded > 0 {
            self.sh
                .shell
                .short_reads
                .fetch_add(got.discarded as u64, Ordering::Relaxed);
        }
        if self.step.batch().len == 0 {
            return 0;
        }
        // Both may have changed while this worker slept: a port added for a destination, a
        // new table.
        self.refresh_routes();
        self.engine.refresh(&self.sh.cell);
        let now = self.sh.now();
        let routes = &self.routes;
        self.step.forward(
            &mut self.engine,
            now,
            port.side,
            |side| routes.get(side).map(|p| &*p.dev),
            &self.sh.shell,
        )
    }
}

/// What a worker does with one ready port, on devices the caller names: read a batch, let the
/// engine decide, send each destination its packets (then the fragments the batch released).
/// The workers run it; so does the gateway bench, in one thread over in-memory devices. It
/// owns the buffers it reuses from step to step.
pub struct Step {
    batch: Batch,
    /// Released fragments, sent after the batch that released them.
    extra: Batch,
    /// Per destination, the batch positions going there (reused from batch to batch).
    out: Vec<(Side, Vec<u16>)>,
}

impl Step {
    /// Reads up to `batch` packets at a time (each slot holds a whole GSO super-packet).
    pub fn new(batch: usize) -> Step {
        Step {
            batch: Batch::new(batch.max(1), MAX_PACKET),
            extra: Batch::new(8, MAX_PACKET),
            out: Vec::new(),
        }
    }

    /// The packets the last [`Step::recv`] read (translated once [`Step::forward`] ran).
    pub fn batch(&self) -> &Batch {
        &self.batch
    }

    /// Empties the batch and reads what `dev` has waiting into it.
    pub fn recv(&mut self, dev: &dyn Device) -> io::Result<Received> {
        self.batch.clear();
        dev.recv(&mut self.batch)
    }

    /// Translates the batch read from a port of side `ingress` and sends every packet to the
    /// device `device_of` names for its destination (counting in `shell` what has no device or is
    /// refused); returns how many packets the batch held.
    pub fn forward<'d>(
        &mut self,
        engine: &mut Engine,
        now: u64,
        ingress: Side,
        device_of: impl Fn(Side) -> Option<&'d dyn Device>,
        shell: &ShellCounters,
    ) -> usize {
        let n = self.batch.len;
        if n == 0 {
            return 0;
        }
        for p in &mut self.batch.pkts[..n] {
            p.ingress = ingress;
        }
        engine.process_batch(now, &mut self.batch.pkts[..n]);
        for i in 0..n {
            match self.batch.pkts[i].verdict {
                Verdict::Forward(side) => route(&mut self.out, side, i),
                Verdict::Reply { to, .. } => {
                    self.batch.offload[i] = Offload::default();
                    route(&mut self.out, to, i);
                }
                Verdict::Held | Verdict::Drop(_) => {}
            }
        }
        flush(shell, &device_of, &self.batch, &mut self.out);
        // Fragments this batch released (their first fragment decided), in batches.
        loop {
            self.extra.clear();
            while !self.extra.is_full() {
                let k = self.extra.len;
                let Some((len, v)) = engine.poll_released(now, &mut self.extra.pkts[k].data) else {
                    break;
                };
                self.extra.pkts[k].len = len;
                self.extra.offload[k] = Offload::default();
                self.extra.len += 1;
                match v {
                    Verdict::Forward(side) | Verdict::Reply { to: side, .. } => {
                        route(&mut self.out, side, k)
                    }
                    Verdict::Held | Verdict::Drop(_) => {}
                }
            }
            if self.extra.len == 0 {
                break;
            }
            flush(shell, &device_of, &self.extra, &mut self.out);
            if !self.extra.is_full() {
                break;
            }
        }
        n
    }
}

/// Notes that batch position `i` goes to `side`.
#[inline]
fn route(out: &mut Vec<(Side, Vec<u16>)>, side: Side, i: usize) {
    match out.iter_mut().find(|(s, _)| *s == side) {
        Some((_, v)) => v.push(i as u16),
        None => out.push((side, vec![i as u16])),
    }
}

/// Sends every destination its packets as one batch; counts what could not go.
fn flush<'d>(
    shell: &ShellCounters,
    device_of: &impl Fn(Side) -> Option<&'d dyn Device>,
    batch: &Batch,
    out: &mut Vec<(Side, Vec<u16>)>,
) {
    for (side, which) in out.iter_mut() {
        if which.is_empty() {
            continue;
        }
        match device_of(*side) {
            Some(dev) => {
                let sent = dev.send(batch, which);
                if sent < which.len() {
                    shell
                        .tx_errors
                        .fetch_add((which.len() - sent) as u64, Ordering::Relaxed);
                }
            }
            None => {
                shell
                    .no_device
                    .fetch_add(which.len() as u64, Ordering::Relaxed);
            }
        }
        which.clear();
    }
    // Destinations seldom change; keep a few lists, forget the rest.
    if out.len() > 16 {
        out.clear();
    }
}

/// An engine's counters as a [`Snapshot`] (zero rows left out).
fn snapshot_of(engine: &Engine) -> Snapshot {
    let mut s = Snapshot {
        global: engine.global_counters().clone(),
        ..Snapshot::default()
    };
    for slot in 0..engine.counted_eips() as u32 {
        let c = engine.eip_counters(slot);
        if c.to_guest.packets + c.from_guest.packets + c.total_drops() > 0 {
            s.eips.insert(slot, c);
        }
    }
    for (id, c) in engine.all_eni_counters().into_iter().enumerate() {
        if c.to_guest.packets + c.from_guest.packets + c.total_drops() > 0 {
            s.enis.insert(id as u16, c);
        }
    }
    s
}
