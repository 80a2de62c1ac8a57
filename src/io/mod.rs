//! The gateway's TUN loops: one port per lab interface (the internet, the cloud services, each
//! attached ENI), one worker thread per port that reads what the namespace sends, lets its own
//! [`Engine`] decide, and writes the result to the port the verdict names.
//!
//! Devices are opened with offloads (`IFF_VNET_HDR`, TSO/USO): one read may carry a 64 KB GSO
//! super-packet behind a 12-byte virtio header. It is translated whole (addresses and ports
//! are in its first header; a "needs checksum" packet carries the pseudo-header sum, which
//! the engine updates without complementing) and written out with the same header, so the
//! receiving kernel segments it or takes it as one. Nothing is split or coalesced here.
//!
//! Each direction of a flow is handled by the worker of the port it arrives on: one flow, one
//! thread, no reordering. Counters are per engine; workers publish theirs every
//! [`PUBLISH_EVERY`] and [`Dataplane::snapshot`] sums them.

pub mod pcap;

use crate::engine::{Engine, PacketFlags, Side, TableCell, Verdict};
use crate::telemetry::{GatewayErrors, Snapshot};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tun_rs::{VirtioNetHdr, VIRTIO_NET_HDR_LEN};

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM` (linux/virtio_net.h): the L4 checksum is left to the receiver.
const NEEDS_CSUM: u8 = 1;

/// Largest read: a virtio header and a 64 KB IPv4 packet.
const BUF_LEN: usize = VIRTIO_NET_HDR_LEN + 65_536;
/// How often a worker publishes its counters (and notices a stop or a new port set).
pub const PUBLISH_EVERY: Duration = Duration::from_millis(200);
/// How long an idle worker sleeps in `poll` before it looks around again.
const IDLE_POLL_MS: i32 = 50;

/// One lab interface as the gateway holds it: the TUN device's file, where it leads, and an
/// optional capture.
pub struct Port {
    /// `i-web.eth0`, `internet.eth0`: for logs and the capture file's name.
    pub name: String,
    pub side: Side,
    dev: tun_rs::SyncDevice,
    pcap: Option<Mutex<pcap::Capture>>,
    /// Set when the ENI is detached: the worker stops and the device goes with the last handle.
    closed: AtomicBool,
}

impl Port {
    pub fn new(
        name: String,
        side: Side,
        dev: tun_rs::SyncDevice,
        pcap: Option<pcap::Capture>,
    ) -> Port {
        Port {
            name,
            side,
            dev,
            pcap: pcap.map(Mutex::new),
            closed: AtomicBool::new(false),
        }
    }

    fn fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }

    #[inline]
    fn capture(&self, packet: &[u8]) {
        if let Some(p) = &self.pcap {
            p.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .write(packet);
        }
    }

    /// Writes one virtio header + packet.
    #[inline]
    fn send(&self, frame: &[u8]) -> io::Result<usize> {
        self.capture(&frame[VIRTIO_NET_HDR_LEN..]);
        self.dev.send(frame)
    }
}

/// Where each side leads now. Immutable; replaced as a whole when a port comes or goes.
#[derive(Default)]
struct Ports {
    internet: Option<Arc<Port>>,
    cloud: Option<Arc<Port>>,
    enis: Vec<Option<Arc<Port>>>,
}

impl Ports {
    #[inline]
    fn get(&self, side: Side) -> Option<&Arc<Port>> {
        match side {
            Side::Internet => self.internet.as_ref(),
            Side::CloudServices => self.cloud.as_ref(),
            Side::Eni(e) => self.enis.get(e as usize).and_then(Option::as_ref),
        }
    }
}

/// Failures of the shell itself (not the engine's drop reasons): counted, never fatal.
#[derive(Debug, Default)]
pub struct ShellCounters {
    /// The verdict named an ENI whose device is not (yet, or any more) there.
    pub no_device: AtomicU64,
    /// A device refused a write (interface down, queue full).
    pub tx_errors: AtomicU64,
    /// A read shorter than the virtio header.
    pub short_reads: AtomicU64,
}

/// The running gateway.
pub struct Dataplane {
    cell: Arc<TableCell>,
    ports: Mutex<Arc<Ports>>,
    ports_generation: AtomicU64,
    stop: AtomicBool,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Each live worker's latest counters.
    published: Mutex<Vec<Arc<Mutex<Snapshot>>>>,
    /// Counters of workers that ended (detached ENIs), so totals never go down.
    retired: Mutex<Snapshot>,
    epoch: Instant,
    pub shell: ShellCounters,
}

impl Dataplane {
    pub fn new(cell: Arc<TableCell>) -> Arc<Dataplane> {
        Arc::new(Dataplane {
            cell,
            ports: Mutex::new(Arc::new(Ports::default())),
            ports_generation: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            workers: Mutex::new(Vec::new()),
            published: Mutex::new(Vec::new()),
            retired: Mutex::new(Snapshot::default()),
            epoch: Instant::now(),
            shell: ShellCounters::default(),
        })
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn edit_ports(&self, f: impl FnOnce(&mut Ports)) {
        let mut cur = self.ports.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = Ports {
            internet: cur.internet.clone(),
            cloud: cur.cloud.clone(),
            enis: cur.enis.clone(),
        };
        f(&mut next);
        *cur = Arc::new(next);
        self.ports_generation.fetch_add(1, Ordering::Release);
    }

    fn load_ports(&self) -> (u64, Arc<Ports>) {
        let cur = self.ports.lock().unwrap_or_else(PoisonError::into_inner);
        (self.ports_generation.load(Ordering::Acquire), cur.clone())
    }

    /// Installs `port` and starts its worker.
    pub fn add_port(self: &Arc<Self>, port: Port) -> io::Result<()> {
        set_nonblocking(port.fd())?;
        let port = Arc::new(port);
        let side = port.side;
        let p = port.clone();
        self.edit_ports(move |ports| match side {
            Side::Internet => ports.internet = Some(p),
            Side::CloudServices => ports.cloud = Some(p),
            Side::Eni(e) => {
                let i = e as usize;
                if ports.enis.len() <= i {
                    ports.enis.resize(i + 1, None);
                }
                ports.enis[i] = Some(p);
            }
        });
        let slot = Arc::new(Mutex::new(Snapshot::default()));
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(slot.clone());
        let dp = self.clone();
        let h = std::thread::Builder::new()
            .name(format!("gw-{}", port.name))
            .spawn(move || dp.worker(port, slot))?;
        self.workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(h);
        Ok(())
    }

    /// Takes an ENI's port away (detached): its worker ends and its device is closed.
    pub fn remove_eni(&self, eni: u16) {
        let mut gone = None;
        self.edit_ports(|ports| {
            if let Some(slot) = ports.enis.get_mut(eni as usize) {
                gone = slot.take();
            }
        });
        if let Some(p) = gone {
            p.closed.store(true, Ordering::Release);
        }
    }

    /// The sum of every worker's counters, ended workers included.
    pub fn snapshot(&self) -> Snapshot {
        let mut total = self
            .retired
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for s in self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            total.merge(&s.lock().unwrap_or_else(PoisonError::into_inner));
        }
        total.gateway = GatewayErrors {
            no_device: self.shell.no_device.load(Ordering::Relaxed),
            tx_errors: self.shell.tx_errors.load(Ordering::Relaxed),
            short_reads: self.shell.short_reads.load(Ordering::Relaxed),
        };
        total
    }

    /// Stops every worker and waits for them; the devices close with them.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        let hs: Vec<_> =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(PoisonError::into_inner));
        for h in hs {
            let _ = h.join();
        }
        self.edit_ports(|p| *p = Ports::default());
    }

    fn worker(self: Arc<Self>, port: Arc<Port>, slot: Arc<Mutex<Snapshot>>) {
        let (_, table) = self.cell.load();
        let mut engine = Engine::new(table);
        engine.refresh(&self.cell);
        let (mut ports_gen, mut ports) = self.load_ports();
        let mut buf = vec![0u8; BUF_LEN];
        let mut aux = vec![0u8; BUF_LEN];
        let fd = port.fd();
        // Engine-clock time of the last publication: the one clock read per packet serves both.
        let mut last_publish = self.now();
        let every = PUBLISH_EVERY.as_nanos() as u64;
        let mut dirty = false;
        tracing::debug!(port = %port.name, "worker started");
        loop {
            if self.stop.load(Ordering::Acquire) || port.closed.load(Ordering::Acquire) {
                break;
            }
            engine.refresh(&self.cell);
            if self.ports_generation.load(Ordering::Acquire) != ports_gen {
                (ports_gen, ports) = self.load_ports();
            }
            // SAFETY: reading into a buffer we own, of its length, from a descriptor we hold.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            let now = self.now();
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => {}
                    _ => {
                        tracing::warn!(port = %port.name, "read failed: {e}");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                if engine.poll_timeout().is_some_and(|t| t <= now) {
                    engine.handle_timeout(now);
                    dirty = true;
                }
                if dirty && now.saturating_sub(last_publish) >= every {
                    publish(&slot, &engine);
                    last_publish = now;
                    dirty = false;
                }
                poll_in(fd, IDLE_POLL_MS);
                continue;
            }
            let n = n as usize;
            if n < VIRTIO_NET_HDR_LEN {
                self.shell.short_reads.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            port.capture(&buf[VIRTIO_NET_HDR_LEN..n]);
            let hdr = VirtioNetHdr::decode(&buf).unwrap_or_default();
            let flags = PacketFlags {
                csum_partial: hdr.flags & NEEDS_CSUM != 0,
            };
            let verdict = engine.process(
                now,
                port.side,
                &mut buf[VIRTIO_NET_HDR_LEN..],
                n - VIRTIO_NET_HDR_LEN,
                flags,
            );
            match verdict {
                Verdict::Forward(side) => self.deliver(&ports, side, &buf[..n]),
                Verdict::Reply { to, len } => {
                    buf[..VIRTIO_NET_HDR_LEN].fill(0);
                    self.deliver(&ports, to, &buf[..VIRTIO_NET_HDR_LEN + len]);
                }
                Verdict::Held | Verdict::Drop(_) => {}
            }
            while let Some((len, v)) = engine.poll_released(now, &mut aux[VIRTIO_NET_HDR_LEN..]) {
                aux[..VIRTIO_NET_HDR_LEN].fill(0);
                match v {
                    Verdict::Forward(side) | Verdict::Reply { to: side, .. } => {
                        self.deliver(&ports, side, &aux[..VIRTIO_NET_HDR_LEN + len])
                    }
                    Verdict::Held | Verdict::Drop(_) => {}
                }
            }
            dirty = true;
            if now.saturating_sub(last_publish) >= every {
                publish(&slot, &engine);
                last_publish = now;
                dirty = false;
            }
        }
        // Hand the final counters to `retired` and leave the live list.
        let last = snapshot_of(&engine);
        self.retired
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .merge(&last);
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|s| !Arc::ptr_eq(s, &slot));
        tracing::debug!(port = %port.name, "worker stopped");
    }

    #[inline]
    fn deliver(&self, ports: &Ports, side: Side, frame: &[u8]) {
        match ports.get(side) {
            Some(p) => {
                if p.send(frame).is_err() {
                    self.shell.tx_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                self.shell.no_device.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Makes a worker's counters visible to [`Dataplane::snapshot`].
fn publish(slot: &Mutex<Snapshot>, engine: &Engine) {
    *slot.lock().unwrap_or_else(PoisonError::into_inner) = snapshot_of(engine);
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
    for id in 0..engine.counted_enis().min(u16::MAX as usize + 1) {
        let c = engine.eni_counters(id as u16);
        if c.to_guest.packets + c.from_guest.packets + c.total_drops() > 0 {
            s.enis.insert(id as u16, c);
        }
    }
    s
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we hold, with flags it just returned.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits until `fd` is readable or `ms` pass.
fn poll_in(fd: RawFd, ms: i32) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd we own.
    unsafe {
        libc::poll(&mut p, 1, ms);
    }
}

/// Opens a TUN device named `name` inside namespace `ns`, with offloads on (the virtio header
/// on every read and write; TSO and, where the kernel has it, USO). The device is down and
/// unaddressed: the caller configures it with `ip -n`.
pub fn open_tun(ns: &str, name: &str) -> Result<tun_rs::SyncDevice, String> {
    let n = name.to_string();
    crate::lab::netns::enter(ns, move || {
        tun_rs::DeviceBuilder::new()
            .name(n.clone())
            .offload(true)
            .mtu(1500)
            .enable(false)
            .build_sync()
            .map_err(|e| format!("cannot open TUN device {n}: {e}"))
    })?
}
