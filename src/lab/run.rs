//! The netns backend: builds the lab's namespaces and devices, keeps the devices in step with
//! the cloud's state while the API changes it, and removes everything on the way out.
//!
//! Namespaces: `{prefix}internet`, `{prefix}cloud` (the cloud's services in 100.64.0.0/10) and
//! `{prefix}{instance id}` for each instance. Each attached ENI is a TUN device inside its
//! instance (`eth0` for the primary, then `eth1`, … in order of attachment), held by the
//! gateway ([`crate::io::Dataplane`]). A TUN device lives as long as the gateway holds it open,
//! so a killed run leaves only empty namespaces, which `down` removes.
//!
//! Everything is made in-process ([`crate::sys`]): a namespace is created and set up in one
//! visit, its devices are opened by the thread visiting it, and addresses, routes and rules go
//! to the kernel as one netlink batch per device. What each ENI wants is decided by
//! [`super::plan`] (a pure function of the cloud's state); the [`Reconciler`] applies the steps,
//! once when the lab is built and again whenever the control plane publishes a new table
//! (it sleeps until then).

use super::config::LabFile;
use super::health::{ProbeKind, ProbeTarget, Prober};
use super::plan::{self, GuestConfig, Made, Step};
use crate::control::ControlPlane;
use crate::engine::Side;
use crate::io::pcap::{Capture, Tap};
use crate::io::tun::open_tun;
use crate::io::{Dataplane, Device};
use crate::sys::netlink::{AddrWatch, Batch, Ipv4Cidr, Netlink, Route, Rule};
use crate::sys::netns::{self, NetnsHandle};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

/// The metadata service's address (SPEC §5).
pub const METADATA: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);

/// Where CLB health checks come from: an address of the cloud's own range (100.64.0.0/10), as
/// the cloud's checks do, in the `cloud` namespace.
pub const HEALTH_CHECK_SOURCE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);

#[derive(Clone, Debug)]
pub struct Options {
    pub prefix: String,
    pub pcap: Option<PathBuf>,
    /// The gateway's worker threads.
    pub workers: usize,
    /// How long a worker polls without sleeping after it moved packets
    /// ([`crate::io::Options::busy_poll`]).
    pub busy_poll: std::time::Duration,
    /// Merge bursts of one UDP flow into segmented super-packets on the way into a namespace
    /// ([`crate::io::coalesce`]), where the kernel supports it.
    pub udp_coalesce: bool,
}

/// Checks a `--prefix`: it becomes part of namespace names.
pub fn check_prefix(p: &str) -> Result<(), String> {
    if p.len() > 64
        || !p
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "--prefix {p:?}: use up to 64 letters, digits, '-', '_' or '.' (it starts every namespace name)"
        ));
    }
    Ok(())
}

/// Whether this process can build a netns lab: it makes a network namespace (on a throwaway
/// thread, so it is gone when the thread ends) and opens a TUN device in it. `Err` says what
/// is missing, in words for `eiplab up`'s first line.
pub fn can_build_namespaces() -> Result<(), String> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err("/dev/net/tun is missing".into());
    }
    std::thread::Builder::new()
        .name("netns-probe".into())
        .spawn(|| {
            // SAFETY: unshare only changes this thread's network namespace; the thread ends
            // right after, and its namespace with it.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                let e = std::io::Error::last_os_error();
                let who = if unsafe { libc::geteuid() } == 0 {
                    "even as root"
                } else {
                    "not root"
                };
                return Err(format!("cannot create a network namespace ({who}: {e})"));
            }
            crate::io::tun::open_tun("eiplabprobe0", None)
                .map(drop)
                .map_err(|e| format!("cannot open a TUN device: {e}"))
        })
        .map_err(|e| e.to_string())?
        .join()
        .map_err(|_| "the namespace probe failed".to_string())?
}

/// Every namespace a lab of `file` with `prefix` makes.
pub fn namespaces(file: &LabFile, prefix: &str) -> Vec<String> {
    let mut v = vec![format!("{prefix}internet"), format!("{prefix}cloud")];
    v.extend(file.instance.iter().map(|i| format!("{prefix}{}", i.id)));
    v
}

/// Removes every namespace of `names` that exists; returns those removed.
fn delete_all(names: &[String]) -> Result<Vec<String>, String> {
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    for ns in names {
        if netns::exists(ns) {
            match netns::delete(ns) {
                Ok(()) => removed.push(ns.clone()),
                Err(e) => errors.push(e),
            }
        }
    }
    if errors.is_empty() {
        Ok(removed)
    } else {
        Err(errors.join("; "))
    }
}

/// Removes what a lab of `file` with `prefix` left; returns the namespaces removed.
pub fn down(file: &LabFile, prefix: &str) -> Result<Vec<String>, String> {
    check_prefix(prefix)?;
    // Refuse while a live `up` holds the prefix: its namespaces are not leftovers.
    let lock = lock_prefix(prefix)?;
    let r = delete_all(&namespaces(file, prefix));
    let _ = std::fs::remove_file(format!("{LOCK_DIR}/{prefix}lab.lock"));
    drop(lock);
    r
}

/// The addresses, routes and rules of `cfg` on `dev`, as netlink requests.
fn push_config(b: &mut Batch, dev: &str, cfg: &GuestConfig, add: bool) {
    for a in &cfg.addrs {
        // Prefixes come from the lab file's checked CIDRs and EIPs (/32): always valid.
        let Ok(cidr) = Ipv4Cidr::new(a.ip, a.prefix_len) else {
            continue;
        };
        if add {
            b.addr_add(dev, cidr);
        } else {
            b.addr_delete(dev, cidr);
        }
    }
    for r in &cfg.routes {
        let mut route = Route::default_route().via(r.via).dev(dev);
        if r.onlink {
            route = route.onlink();
        }
        if let Some(m) = r.metric {
            route = route.metric(m);
        }
        if let Some(t) = r.table {
            route = route.table(t);
        }
        if add {
            b.route_add(route);
        } else {
            b.route_delete(route);
        }
    }
    for r in &cfg.rules {
        let rule = Rule::from_lookup(r.from, r.table);
        if add {
            b.rule_add(rule);
        } else {
            b.rule_delete(rule);
        }
    }
}

/// Keeps the ENIs' devices in step with the cloud: plans with [`plan::plan`], applies here.
struct Reconciler {
    prefix: String,
    pcap: Option<PathBuf>,
    udp_coalesce: bool,
    internet_gateway: Ipv4Addr,
    /// ENIs whose guest configuration the lab file turns off (`configure = false`).
    unconfigured: BTreeSet<String>,
    /// What the lab made, by ENI index.
    have: BTreeMap<u16, Made>,
    /// Open handles of the instances' namespaces.
    handles: HashMap<String, NetnsHandle>,
    dp: Arc<Dataplane>,
    /// Set at teardown: devices are left to their namespaces' removal (see [`open_tun`]).
    leaving: Arc<AtomicBool>,
}

impl Reconciler {
    /// Brings the devices in line with the cloud; returns the ENIs whose device could not be
    /// made or changed (logged; the next change of the cloud retries them).
    fn step(&mut self, cp: &ControlPlane) -> Vec<String> {
        let want = cp.with_cloud(|c| plan::attached_enis(c, &self.unconfigured));
        let mut have = std::mem::take(&mut self.have);
        let (prefix, gw) = (self.prefix.clone(), self.internet_gateway);
        let failed = plan::converge(&mut have, &want, &prefix, gw, |s| self.apply(s));
        self.have = have;
        failed
    }

    fn handle(&mut self, ns: &str) -> Result<&NetnsHandle, String> {
        if !self.handles.contains_key(ns) {
            let h = NetnsHandle::open(ns)?;
            self.handles.insert(ns.to_string(), h);
        }
        Ok(&self.handles[ns])
    }

    fn apply(&mut self, s: &Step) -> Result<(), String> {
        match s {
            Step::Remove {
                eni,
                eni_id,
                ns,
                dev,
                rules,
            } => {
                tracing::info!(eni = %eni_id, ns = %ns, dev = %dev, "ENI detached: device removed");
                self.dp.remove_eni(*eni);
                // Its addresses and routes went with the device; its policy rules did not.
                if !rules.is_empty() {
                    let mut b = Batch::idempotent();
                    for r in rules {
                        b.rule_delete(Rule::from_lookup(r.from, r.table));
                    }
                    let h = self.handle(ns)?;
                    Netlink::open_in(h)?.apply(&b)?;
                }
                Ok(())
            }
            Step::Create {
                facts,
                ns,
                dev,
                config,
                ..
            } => {
                let name = format!("{}.{dev}", facts.instance);
                let pcap = self.pcap.clone();
                let leaving = self.leaving.clone();
                let h = self.handle(ns)?;
                // Opened by this thread while it visits the namespace: the device and the
                // netlink socket belong to it.
                let (mut tun, mut nl) = h.run(|| -> Result<_, String> {
                    Ok((open_device(dev, leaving)?, Netlink::open()?))
                })??;
                tun.set_coalesce(self.udp_coalesce);
                let device: Box<dyn Device> = match pcap {
                    Some(d) => Box::new(Tap::new(tun, Capture::create(&d, &name)?)),
                    None => Box::new(tun),
                };
                self.dp.add_port(name, Side::Eni(facts.index), device);
                let mut b = Batch::new();
                b.link_up(dev);
                push_config(&mut b, dev, config, true);
                if let Err(e) = nl.apply(&b) {
                    // Leave nothing half made: the device goes (with its addresses and
                    // routes), and any rule that was added.
                    self.dp.remove_eni(facts.index);
                    let mut undo = Batch::idempotent();
                    for r in &config.rules {
                        undo.rule_delete(Rule::from_lookup(r.from, r.table));
                    }
                    let _ = nl.apply(&undo);
                    return Err(format!("cannot configure {dev} in {ns}: {e}"));
                }
                tracing::info!(eni = %facts.eni_id, ns = %ns, dev = %dev, mode = ?facts.mode, "ENI attached");
                Ok(())
            }
            Step::Update {
                facts,
                ns,
                dev,
                add,
                del,
                left_to_guest,
            } => {
                for m in left_to_guest {
                    tracing::info!(eni = %facts.eni_id, "{m}");
                }
                if add.is_empty() && del.is_empty() {
                    return Ok(());
                }
                // Converge: what is already gone or already there is fine.
                let mut b = Batch::idempotent();
                push_config(&mut b, dev, del, false);
                push_config(&mut b, dev, add, true);
                let h = self.handle(ns)?;
                Netlink::open_in(h)?
                    .apply(&b)
                    .map_err(|e| format!("cannot update {dev} in {ns}: {e}"))?;
                tracing::info!(eni = %facts.eni_id, ns = %ns, dev = %dev, mode = ?facts.mode, "ENI changed in the guest");
                Ok(())
            }
        }
    }
}

/// Opens TUN device `dev` in the calling thread's namespace. A device of the same name that
/// was just detached is closed before `remove_eni` returns, but the kernel may take a moment
/// to let go of the name: opening is retried for a few seconds.
fn open_device(dev: &str, leaving: Arc<AtomicBool>) -> Result<crate::io::tun::TunDevice, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match open_tun(dev, Some(leaving.clone())) {
            Ok(t) => return Ok(t),
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::debug!("{e}; retrying");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Where the per-prefix locks live.
const LOCK_DIR: &str = "/run/eiplab";

/// Takes the lock of `prefix` (an flock that ends with the process, however it ends), or says
/// which process runs a lab with that prefix.
fn lock_prefix(prefix: &str) -> Result<std::fs::File, String> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(LOCK_DIR).map_err(|e| format!("cannot create {LOCK_DIR}: {e}"))?;
    let path = format!("{LOCK_DIR}/{prefix}lab.lock");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open {path}: {e}"))?;
    // SAFETY: flock on a file we hold open.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        return Err(format!(
            "a lab with --prefix {prefix:?} is running (pid {}): stop it, or choose another --prefix",
            pid.trim()
        ));
    }
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = write!(f, "{}", std::process::id());
    Ok(f)
}

/// Raises the open-file limit to its hard maximum: a lab holds a TUN descriptor per ENI and a
/// namespace handle per instance, more than the customary 1,024 in a large lab.
fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Listeners of the built-in services, bound inside their namespaces; the caller serves them.
pub struct ServiceListeners {
    pub echo: std::net::TcpListener,
    pub metadata: std::net::TcpListener,
}

enum Wake {
    Changed,
    Stop,
}

/// A running lab. Dropping it removes everything it made.
pub struct Lab {
    /// Held while the lab runs (see [`lock_prefix`]).
    _lock: std::fs::File,
    lock_path: String,
    pub dp: Arc<Dataplane>,
    namespaces: Vec<String>,
    cp: Arc<ControlPlane>,
    wake: Option<(mpsc::Sender<Wake>, crate::engine::WatchId)>,
    reconciler: Option<JoinHandle<()>>,
    /// Moves HaVips to the guests that take their addresses (see [`watch_addresses`]).
    watcher: Option<JoinHandle<()>>,
    /// The CLBs' health checks (none without a CLB listener).
    prober: Option<super::health::Prober>,
    /// Set at teardown: the TUN devices are left to the namespaces' removal.
    leaving: Arc<AtomicBool>,
    torn_down: bool,
}

/// Sysctls of every lab namespace: no IPv6 in the lab (the engine counts and drops it; nothing
/// needs the noise). `default` is written before any device exists, so every device inherits
/// it; `all` covers the loopback, which exists already.
const NO_IPV6: [(&str, &str); 2] = [
    ("net.ipv6.conf.default.disable_ipv6", "1"),
    ("net.ipv6.conf.all.disable_ipv6", "1"),
];
/// Loose reverse-path filtering in instances, as common distributions ship: a packet that
/// arrives on eth1 for a secondary IP is taken even though replies would use eth0. The kernel
/// uses the larger of `all` (0) and the device's value, which devices take from `default`.
const LOOSE_RP_FILTER: (&str, &str) = ("net.ipv4.conf.default.rp_filter", "2");

/// Writes `/proc/sys` settings from the calling thread (which is inside the namespace).
fn write_sysctls(ns: &str, settings: &[(&str, &str)]) -> Result<(), String> {
    for (name, value) in settings {
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| format!("{ns}: sysctl {name}: {e}"))?;
    }
    Ok(())
}

impl Lab {
    /// Builds the lab of `file` around the running control plane `cp`.
    pub fn build(
        file: &LabFile,
        cp: Arc<ControlPlane>,
        opts: &Options,
    ) -> Result<(Lab, ServiceListeners), String> {
        check_prefix(&opts.prefix)?;
        let names = namespaces(file, &opts.prefix);
        // One running lab per prefix: the lock is held while this process lives, so finding
        // it free with namespaces present means a killed run left them.
        let lock = lock_prefix(&opts.prefix)?;
        let stale: Vec<String> = names.iter().filter(|n| netns::exists(n)).cloned().collect();
        if !stale.is_empty() {
            tracing::warn!(
                "removing what a killed run with --prefix {:?} left: {}",
                opts.prefix,
                stale.join(", ")
            );
            delete_all(&stale)?;
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Err(
                "/dev/net/tun is missing: load the tun module (modprobe tun) or use --backend none"
                    .into(),
            );
        }
        if let Some(d) = &opts.pcap {
            std::fs::create_dir_all(d)
                .map_err(|e| format!("--pcap {}: cannot create it: {e}", d.display()))?;
        }
        raise_fd_limit();
        let dp = Dataplane::new(
            cp.cell().clone(),
            crate::io::Options {
                workers: opts.workers,
                batch: crate::io::BATCH,
                busy_poll: opts.busy_poll,
            },
        )
        .map_err(|e| format!("cannot start the gateway: {e}"))?;
        let mut lab = Lab {
            _lock: lock,
            lock_path: format!("{LOCK_DIR}/{}lab.lock", opts.prefix),
            dp: dp.clone(),
            namespaces: Vec::new(),
            cp: cp.clone(),
            wake: None,
            reconciler: None,
            watcher: None,
            prober: None,
            leaving: Arc::new(AtomicBool::new(false)),
            torn_down: false,
        };
        let leaving = lab.leaving.clone();
        let inet = format!("{}internet", opts.prefix);
        let cloud_ns = format!("{}cloud", opts.prefix);
        let echo = file.internet.echo_address();
        let gateway = file.internet.gateway;

        // The internet: its hosts, the echo service, the way to the EIPs.
        let cidr = Ipv4Cidr::new(echo, file.internet.cidr.len)?;
        let l = leaving.clone();
        let tun = make_namespace(&inet, &NO_IPV6, move |mut nl| {
            let tun = open_tun("eth0", Some(l))?;
            let mut b = Batch::new();
            b.link_up("eth0")
                .addr_add("eth0", cidr)
                .route_add(Route::default_route().via(gateway).dev("eth0"));
            nl.apply(&b)?;
            Ok(tun)
        });
        lab.made(&inet, &tun);
        lab.add_port(opts, "internet.eth0", Side::Internet, tun?)?;

        // The cloud's services: the metadata service, reached from the VPC.
        let l = leaving.clone();
        let tun = make_namespace(&cloud_ns, &NO_IPV6, move |mut nl| {
            let tun = open_tun("eth0", Some(l))?;
            let mut b = Batch::new();
            b.link_up("eth0")
                .addr_add("eth0", Ipv4Cidr::host(METADATA))
                .addr_add("eth0", Ipv4Cidr::host(HEALTH_CHECK_SOURCE))
                .route_add(Route::default_route().dev("eth0"));
            nl.apply(&b)?;
            Ok(tun)
        });
        lab.made(&cloud_ns, &tun);
        lab.add_port(opts, "cloud.eth0", Side::CloudServices, tun?)?;

        let mut handles = HashMap::new();
        let mut watches = Vec::new();
        for i in &file.instance {
            let ns = format!("{}{}", opts.prefix, i.id);
            let settings = [NO_IPV6[0], NO_IPV6[1], LOOSE_RP_FILTER];
            // Every instance's addresses are watched: HaVips may come from the file or, later,
            // from CreateHaVip.
            let made = make_namespace(&ns, &settings, |_| {
                Ok((NetnsHandle::current()?, AddrWatch::open()?))
            });
            lab.made(&ns, &made);
            let (h, w) = made?;
            watches.push((i.id.clone(), w));
            handles.insert(ns, h);
        }
        if !watches.is_empty() {
            let (wcp, l) = (cp.clone(), lab.leaving.clone());
            lab.watcher = Some(
                std::thread::Builder::new()
                    .name("havip-watch".into())
                    .spawn(move || watch_addresses(&wcp, watches, &l))
                    .map_err(|e| e.to_string())?,
            );
        }

        let unconfigured = file.unconfigured_enis();
        let mut rec = Reconciler {
            prefix: opts.prefix.clone(),
            pcap: opts.pcap.clone(),
            udp_coalesce: opts.udp_coalesce,
            internet_gateway: gateway,
            unconfigured,
            have: BTreeMap::new(),
            handles,
            dp: dp.clone(),
            leaving,
        };
        // Watch before the first step: a change made meanwhile wakes the reconciler at once.
        let (tx, rx) = mpsc::channel();
        let t = tx.clone();
        let id = cp.cell().watch(Box::new(move || {
            let _ = t.send(Wake::Changed);
        }));
        lab.wake = Some((tx, id));
        let missing = rec.step(&cp);
        if !missing.is_empty() {
            return Err(format!(
                "could not make devices for {} (see the log above)",
                missing.join(", ")
            ));
        }
        // The checks start once the backends' devices exist.
        lab.prober = start_health_checks(&cp, &cloud_ns)?;
        let rcp = cp.clone();
        lab.reconciler = Some(
            std::thread::Builder::new()
                .name("reconcile".into())
                .spawn(move || {
                    // Sleeps until the control plane publishes; several publications that
                    // arrive together make one step.
                    while let Ok(Wake::Changed) = rx.recv() {
                        let mut stop = false;
                        while let Ok(w) = rx.try_recv() {
                            stop |= matches!(w, Wake::Stop);
                        }
                        if stop {
                            break;
                        }
                        rec.step(&rcp);
                    }
                })
                .map_err(|e| e.to_string())?,
        );

        let services = ServiceListeners {
            echo: super::services::listen_in(&inet, SocketAddr::from((echo, 80)))?,
            metadata: super::services::listen_in(&cloud_ns, SocketAddr::from((METADATA, 80)))?,
        };
        Ok((lab, services))
    }

    /// Notes a namespace that `make_namespace` created (even when what followed failed), so
    /// that teardown removes it.
    fn made<T>(&mut self, ns: &str, r: &Result<T, String>) {
        // `create_with` leaves nothing when it fails; the check is for the unexpected.
        if r.is_ok() || netns::exists(ns) {
            self.namespaces.push(ns.to_string());
        }
    }

    fn add_port(
        &self,
        opts: &Options,
        name: &str,
        side: Side,
        mut tun: crate::io::tun::TunDevice,
    ) -> Result<(), String> {
        tun.set_coalesce(opts.udp_coalesce);
        let dev: Box<dyn Device> = match &opts.pcap {
            Some(d) => Box::new(Tap::new(tun, Capture::create(d, name)?)),
            None => Box::new(tun),
        };
        self.dp.add_port(name.to_string(), side, dev);
        Ok(())
    }

    /// Stops the gateway and removes every namespace (with every device and route in it).
    pub fn teardown(&mut self) -> Result<(), String> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        if let Some((tx, id)) = self.wake.take() {
            self.cp.cell().unwatch(id);
            let _ = tx.send(Wake::Stop);
        }
        if let Some(h) = self.reconciler.take() {
            let _ = h.join();
        }
        self.prober.take();
        // From here on the address watch ends, and the devices are left to their namespaces.
        self.leaving.store(true, Ordering::Release);
        if let Some(h) = self.watcher.take() {
            let _ = h.join();
        }
        // Closing the devices one by one would unregister them one by one; left to their
        // namespaces, the kernel removes them all in one batch (`leaving` is set above).
        self.dp.shutdown();
        let names: Vec<String> = self.namespaces.drain(..).rev().collect();
        let r = delete_all(&names);
        let _ = std::fs::remove_file(&self.lock_path);
        r.map(|_| ())
    }
}

/// The lab's side of SPEC D12: watches the addresses of every instance's interfaces and, when
/// a guest adds a HaVip's address (keepalived does on becoming master), moves the HaVip to
/// that instance, as the cloud does when the guest announces it. Runs until `leaving`.
fn watch_addresses(cp: &ControlPlane, mut watches: Vec<(String, AddrWatch)>, leaving: &AtomicBool) {
    let mut fds: Vec<libc::pollfd> = watches
        .iter()
        .map(|(_, w)| libc::pollfd {
            fd: w.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !leaving.load(Ordering::Acquire) {
        // SAFETY: `fds` is a live array of pollfd whose descriptors `watches` keeps open.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
        if n <= 0 {
            continue;
        }
        for (k, f) in fds.iter_mut().enumerate() {
            if f.revents == 0 {
                continue;
            }
            f.revents = 0;
            let (instance, w) = &mut watches[k];
            let events = match w.read_ready() {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(instance = %instance, "address watch: {e}");
                    continue;
                }
            };
            if w.take_overrun() {
                tracing::warn!(
                    instance = %instance,
                    "address watch overran: an address added meanwhile moves no HaVip"
                );
            }
            for ev in events.iter().filter(|e| e.added) {
                let ip = ev.addr;
                let is_havip = cp.with_cloud(|c| c.havips.values().any(|h| h.ip == ip));
                if !is_havip {
                    continue;
                }
                let r = cp.transact(|c, _| {
                    Ok::<_, crate::control::StoreError>(c.claim_havip(instance, ip))
                });
                match r {
                    Ok(ch) if !ch.is_empty() => {
                        tracing::info!(instance = %instance, address = %ip, "HaVip moved to the guest that took its address")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!("moving the HaVip {ip} to {instance}: {e}"),
                }
            }
        }
    }
}

/// What the CLBs' health checks probe, and what to do with each result (it goes into its CLB's
/// state, logged when the health changes); `None` when no CLB has a checked listener. The
/// CLBs are the lab file's, so the set is fixed for the lab's life. Both backends run these.
pub(crate) fn health_checks(cp: &ControlPlane) -> Option<(Vec<ProbeTarget>, HealthReport)> {
    use std::time::Duration;
    let lbs = cp.load_balancers();
    // A target's key: the CLB's position, the listener's and the backend's.
    let key = |i: usize, l: usize, b: usize| ((i as u64) << 40) | ((l as u64) << 20) | b as u64;
    let mut targets = Vec::new();
    for (i, lb) in lbs.iter().enumerate() {
        let clb = lb.clb.lock().unwrap_or_else(|p| p.into_inner());
        for t in clb.health_targets() {
            if t.addr.ip().is_unspecified() {
                continue;
            }
            targets.push(ProbeTarget {
                key: key(i, t.listener, t.backend),
                kind: match t.protocol {
                    crate::clb::ListenerProtocol::Tcp => ProbeKind::Tcp,
                    crate::clb::ListenerProtocol::Udp => ProbeKind::Udp,
                },
                addr: t.addr,
                interval: Duration::from_millis(u64::from(t.interval_ms)),
                timeout: Duration::from_millis(u64::from(t.timeout_ms)),
            });
        }
    }
    if targets.is_empty() {
        return None;
    }
    let report = Arc::new(move |k: u64, ok: bool| {
        let (i, l, b) = (
            (k >> 40) as usize,
            ((k >> 20) & 0xfffff) as usize,
            (k & 0xfffff) as usize,
        );
        let Some(lb) = lbs.get(i) else { return };
        let changed = lb
            .clb
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .report_health(l, b, ok);
        if let Some(h) = changed {
            tracing::info!(
                load_balancer = %lb.id,
                listener = l,
                backend = %lb.backends.get(b).map_or("?", String::as_str),
                "health check: backend is {h:?}"
            );
        }
    });
    Some((targets, report))
}

/// Where a health check's result goes: the target's key and whether it passed.
pub(crate) type HealthReport = Arc<dyn Fn(u64, bool) + Send + Sync>;

/// Starts the CLBs' health checks in the cloud's namespace (from [`HEALTH_CHECK_SOURCE`]).
fn start_health_checks(
    cp: &ControlPlane,
    cloud_ns: &str,
) -> Result<Option<super::health::Prober>, String> {
    let Some((targets, report)) = health_checks(cp) else {
        return Ok(None);
    };
    let prober = Prober::start(
        cloud_ns,
        Some(HEALTH_CHECK_SOURCE),
        Box::new(move |k, ok| report(k, ok)),
    )?;
    prober.set_targets(targets);
    Ok(Some(prober))
}

/// Creates namespace `ns` with `settings` written before anything else, then runs `f` inside it.
fn make_namespace<T: Send + 'static>(
    ns: &str,
    settings: &[(&'static str, &'static str)],
    f: impl FnOnce(Netlink) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let settings = settings.to_vec();
    let label = ns.to_string();
    netns::create_with(ns, move |nl| {
        write_sysctls(&label, &settings)?;
        f(nl)
    })
    .map_err(|e| format!("namespace {ns}: {e}"))
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::error!("teardown: {e}");
        }
    }
}
