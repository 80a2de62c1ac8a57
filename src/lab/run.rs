//! The netns backend: builds the lab's namespaces and devices, keeps the devices in step with
//! the cloud's state while the API changes it, and removes everything on the way out.
//!
//! Namespaces: `{prefix}internet`, `{prefix}cloud` (the cloud's services in 100.64.0.0/10) and
//! `{prefix}{instance id}` for each instance. Each attached ENI is a TUN device inside its
//! instance (`eth0` for the primary, then `eth1`, … in order of attachment), held by the
//! gateway ([`crate::io::Dataplane`]). A TUN device lives as long as the gateway holds it open,
//! so a killed run leaves only empty namespaces, which `down` removes.

use super::config::LabFile;
use super::netns::{self, ip_in};
use crate::cloud::{Cloud, Mode};
use crate::control::ControlPlane;
use crate::engine::Side;
use crate::io::tun::open_tun;
use crate::io::{pcap::Capture, pcap::Tap, Dataplane, Device};
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The metadata service's address (SPEC §5).
pub const METADATA: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);
/// Routing tables the lab uses for a cut-through or multi-EIP ENI `ethN`: `TABLE_BASE + N`.
const TABLE_BASE: u32 = 100;

#[derive(Clone, Debug)]
pub struct Options {
    pub prefix: String,
    pub pcap: Option<PathBuf>,
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

/// Every namespace a lab of `file` with `prefix` makes.
pub fn namespaces(file: &LabFile, prefix: &str) -> Vec<String> {
    let mut v = vec![format!("{prefix}internet"), format!("{prefix}cloud")];
    v.extend(file.instance.iter().map(|i| format!("{prefix}{}", i.id)));
    v
}

/// Removes what a lab of `file` with `prefix` left; returns the namespaces removed.
pub fn down(file: &LabFile, prefix: &str) -> Result<Vec<String>, String> {
    check_prefix(prefix)?;
    // Refuse while a live `up` holds the prefix: its namespaces are not leftovers.
    let lock = lock_prefix(prefix)?;
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    for ns in namespaces(file, prefix) {
        if netns::exists(&ns) {
            match netns::delete(&ns) {
                Ok(()) => removed.push(ns),
                Err(e) => errors.push(e),
            }
        }
    }
    let _ = std::fs::remove_file(format!("{LOCK_DIR}/{prefix}lab.lock"));
    drop(lock);
    if errors.is_empty() {
        Ok(removed)
    } else {
        Err(errors.join("; "))
    }
}

/// An ENI as the guest should see it, read from the cloud's state.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Want {
    index: u16,
    eni_id: String,
    instance: String,
    primary: bool,
    private_ips: Vec<Ipv4Addr>,
    prefix_len: u8,
    gateway: Ipv4Addr,
    mode: GuestMode,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum GuestMode {
    /// Private IPs only (NAT mode, or no EIP).
    Private,
    /// Cut-through: the EIP replaces the primary private IP.
    Binded(Ipv4Addr),
    /// Private IPs plus these EIPs (configured when the instance has DHCP on).
    MultiBinded(Vec<Ipv4Addr>, bool),
}

impl GuestMode {
    /// The EIPs the guest gets a policy rule for (`from EIP lookup 100+N`).
    fn ruled_eips(&self) -> Vec<Ipv4Addr> {
        match self {
            GuestMode::Private | GuestMode::MultiBinded(_, false) => Vec::new(),
            GuestMode::Binded(e) => vec![*e],
            GuestMode::MultiBinded(eips, true) => eips.clone(),
        }
    }
}

fn wanted(c: &Cloud) -> Vec<Want> {
    let mut v = Vec::new();
    for e in c.enis.values() {
        let Some(inst) = e.instance.as_ref().and_then(|i| c.instances.get(i)) else {
            continue;
        };
        let Some(vsw) = c.vswitches.get(&e.vswitch) else {
            continue;
        };
        let mut binded = None;
        let mut multi = Vec::new();
        for eip in c.eips.values() {
            let Some(b) = eip.binding.as_ref() else {
                continue;
            };
            if c.bound_eni(b).map(|x| x.index) != Some(e.index) {
                continue;
            }
            match b.mode {
                Mode::Binded => binded = Some(eip.address),
                Mode::MultiBinded => multi.push(eip.address),
                Mode::Nat => {}
            }
        }
        let mode = match (binded, multi.is_empty()) {
            (Some(a), _) => GuestMode::Binded(a),
            (None, false) => GuestMode::MultiBinded(multi, inst.dhcp),
            (None, true) => GuestMode::Private,
        };
        v.push(Want {
            index: e.index,
            eni_id: e.id.clone(),
            instance: inst.id.clone(),
            primary: e.primary,
            private_ips: e.private_ips.clone(),
            prefix_len: vsw.prefix_len,
            gateway: vsw.gateway,
            mode,
        });
    }
    // Primary first, then in the order the ENIs were created.
    v.sort_by_key(|w| (w.instance.clone(), !w.primary, w.index));
    v
}

/// A device the lab made for an ENI.
struct Attached {
    want: Want,
    ns: String,
    dev: String,
    n: u32,
}

struct Reconciler {
    prefix: String,
    pcap: Option<PathBuf>,
    internet_gateway: Ipv4Addr,
    /// ENIs whose guest configuration the lab file turns off (`configure = false`).
    unconfigured: Vec<String>,
    attached: BTreeMap<u16, Attached>,
    dp: Arc<Dataplane>,
}

impl Reconciler {
    /// Brings the devices in line with the cloud; returns the ENIs whose device could not be
    /// made (logged; the next change retries them).
    fn step(&mut self, cp: &ControlPlane) -> Vec<String> {
        let want = cp.with_cloud(wanted);
        let keep: HashMap<u16, &Want> = want.iter().map(|w| (w.index, w)).collect();
        let gone: Vec<u16> = self
            .attached
            .iter()
            .filter(|(i, a)| keep.get(i).is_none_or(|w| w.instance != a.want.instance))
            .map(|(i, _)| *i)
            .collect();
        for i in gone {
            if let Some(a) = self.attached.remove(&i) {
                tracing::info!(eni = %a.want.eni_id, ns = %a.ns, dev = %a.dev, "ENI detached: device removed");
                self.dp.remove_eni(i);
                // The device's routes went with it; its policy rules stay unless removed.
                let t = (TABLE_BASE + a.n).to_string();
                for eip in a.want.mode.ruled_eips() {
                    let _ = ip_in(
                        &a.ns,
                        &["rule", "del", "from", &eip.to_string(), "lookup", &t],
                    );
                }
            }
        }
        let mut failed = Vec::new();
        for w in want {
            if self.attached.contains_key(&w.index) {
                continue;
            }
            let id = w.eni_id.clone();
            if let Err(e) = self.attach(w) {
                tracing::error!(eni = %id, "cannot make the ENI's device: {e}");
                failed.push(id);
            }
        }
        failed
    }

    fn attach(&mut self, w: Want) -> Result<(), String> {
        let ns = format!("{}{}", self.prefix, w.instance);
        let n = if w.primary {
            0
        } else {
            let used: Vec<u32> = self
                .attached
                .values()
                .filter(|a| a.ns == ns)
                .map(|a| a.n)
                .collect();
            (1..).find(|k| !used.contains(k)).unwrap_or(1)
        };
        let dev = format!("eth{n}");
        add_device(
            &self.dp,
            self.pcap.as_deref(),
            &ns,
            &dev,
            &format!("{}.{dev}", w.instance),
            Side::Eni(w.index),
        )?;
        let configure = !self.unconfigured.contains(&w.eni_id);
        configure_eni(&ns, &dev, n, &w, self.internet_gateway, configure)?;
        tracing::info!(eni = %w.eni_id, ns = %ns, dev = %dev, mode = ?w.mode, "ENI attached");
        self.attached.insert(
            w.index,
            Attached {
                want: w,
                ns,
                dev,
                n,
            },
        );
        Ok(())
    }
}

/// Opens TUN device `dev` inside `ns` and gives it to the gateway as the port of `side`, with a
/// capture `name.pcap` under `--pcap`. A device of the same name that was just detached may
/// still be closing: opening is retried for a few seconds.
fn add_device(
    dp: &Arc<Dataplane>,
    pcap: Option<&std::path::Path>,
    ns: &str,
    dev: &str,
    name: &str,
    side: Side,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let tun = loop {
        match open_tun(ns, dev) {
            Ok(t) => break t,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("{e}; retrying");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    };
    let dev: Box<dyn Device> = match pcap {
        Some(d) => Box::new(Tap::new(tun, Capture::create(d, name)?)),
        None => Box::new(tun),
    };
    dp.add_port(name.to_string(), side, dev);
    Ok(())
}

/// Configures an ENI's device in the guest the way the cloud's images do (SPEC §5).
fn configure_eni(
    ns: &str,
    dev: &str,
    n: u32,
    w: &Want,
    internet_gateway: Ipv4Addr,
    configure: bool,
) -> Result<(), String> {
    ip_in(ns, &["link", "set", dev, "up"])?;
    if !configure {
        return Ok(());
    }
    let table = (TABLE_BASE + n).to_string();
    let metric = (TABLE_BASE + n).to_string();
    let add_private = || -> Result<(), String> {
        for a in &w.private_ips {
            ip_in(
                ns,
                &["addr", "add", &format!("{a}/{}", w.prefix_len), "dev", dev],
            )?;
        }
        Ok(())
    };
    match &w.mode {
        GuestMode::Private => {
            add_private()?;
            if w.primary {
                ip_in(
                    ns,
                    &[
                        "route",
                        "add",
                        "default",
                        "via",
                        &w.gateway.to_string(),
                        "dev",
                        dev,
                    ],
                )?;
            }
        }
        GuestMode::Binded(eip) => {
            // The EIP replaces the private IP; the cloud adds a default route of lower
            // priority, and (as the image's DHCP hook does) replies from the EIP leave here.
            let gw = internet_gateway.to_string();
            ip_in(ns, &["addr", "add", &format!("{eip}/32"), "dev", dev])?;
            ip_in(
                ns,
                &[
                    "route", "add", "default", "via", &gw, "dev", dev, "onlink", "metric", &metric,
                ],
            )?;
            ip_in(
                ns,
                &[
                    "route", "add", "default", "via", &gw, "dev", dev, "onlink", "table", &table,
                ],
            )?;
            ip_in(
                ns,
                &["rule", "add", "from", &eip.to_string(), "lookup", &table],
            )?;
            if w.primary {
                ip_in(
                    ns,
                    &["route", "add", "default", "via", &gw, "dev", dev, "onlink"],
                )?;
            }
        }
        GuestMode::MultiBinded(eips, dhcp) => {
            add_private()?;
            let gw = w.gateway.to_string();
            if w.primary {
                ip_in(ns, &["route", "add", "default", "via", &gw, "dev", dev])?;
            }
            if *dhcp {
                ip_in(
                    ns,
                    &[
                        "route", "add", "default", "via", &gw, "dev", dev, "onlink", "table",
                        &table,
                    ],
                )?;
                for e in eips {
                    ip_in(ns, &["addr", "add", &format!("{e}/32"), "dev", dev])?;
                    ip_in(
                        ns,
                        &["rule", "add", "from", &e.to_string(), "lookup", &table],
                    )?;
                }
            }
        }
    }
    Ok(())
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

/// Listeners of the built-in services, bound inside their namespaces; the caller serves them.
pub struct ServiceListeners {
    pub echo: std::net::TcpListener,
    pub metadata: std::net::TcpListener,
}

/// A running lab. Dropping it removes everything it made.
pub struct Lab {
    /// Held while the lab runs (see [`lock_prefix`]).
    _lock: std::fs::File,
    lock_path: String,
    pub dp: Arc<Dataplane>,
    namespaces: Vec<String>,
    stop: Arc<AtomicBool>,
    reconciler: Option<JoinHandle<()>>,
    torn_down: bool,
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
        let stale: Vec<&String> = names.iter().filter(|n| netns::exists(n)).collect();
        if !stale.is_empty() {
            tracing::warn!(
                "removing what a killed run with --prefix {:?} left: {}",
                opts.prefix,
                stale
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for ns in stale {
                netns::delete(ns)?;
            }
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
        let dp = Dataplane::new(cp.cell().clone(), crate::io::Options::default())
            .map_err(|e| format!("cannot start the gateway: {e}"))?;
        let mut lab = Lab {
            _lock: lock,
            lock_path: format!("{LOCK_DIR}/{}lab.lock", opts.prefix),
            dp: dp.clone(),
            namespaces: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            reconciler: None,
            torn_down: false,
        };
        for ns in &names {
            netns::create(ns)?;
            lab.namespaces.push(ns.clone());
            // No IPv6 in the lab (the engine counts and drops it; nothing needs the noise).
            netns::sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")?;
            netns::sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        let inet = format!("{}internet", opts.prefix);
        let cloud_ns = format!("{}cloud", opts.prefix);
        let pcap = opts.pcap.as_deref();

        // The internet: its hosts, the echo service, the way to the EIPs.
        let echo = file.internet.echo_address();
        let gateway = file.internet.gateway;
        add_device(&dp, pcap, &inet, "eth0", "internet.eth0", Side::Internet)?;
        ip_in(&inet, &["link", "set", "eth0", "up"])?;
        ip_in(
            &inet,
            &[
                "addr",
                "add",
                &format!("{echo}/{}", file.internet.cidr.len),
                "dev",
                "eth0",
            ],
        )?;
        ip_in(
            &inet,
            &[
                "route",
                "add",
                "default",
                "via",
                &gateway.to_string(),
                "dev",
                "eth0",
            ],
        )?;

        // The cloud's services: the metadata service, reached from the VPC.
        add_device(
            &dp,
            pcap,
            &cloud_ns,
            "eth0",
            "cloud.eth0",
            Side::CloudServices,
        )?;
        ip_in(&cloud_ns, &["link", "set", "eth0", "up"])?;
        ip_in(
            &cloud_ns,
            &["addr", "add", &format!("{METADATA}/32"), "dev", "eth0"],
        )?;
        ip_in(&cloud_ns, &["route", "add", "default", "dev", "eth0"])?;

        for i in &file.instance {
            let ns = format!("{}{}", opts.prefix, i.id);
            // Loose reverse-path filtering, as common distributions ship: a packet that
            // arrives on eth1 for a secondary IP is taken even though replies would use eth0.
            netns::sysctl(&ns, "net.ipv4.conf.all.rp_filter", "2")?;
            netns::sysctl(&ns, "net.ipv4.conf.default.rp_filter", "2")?;
        }

        let mut unconfigured: Vec<String> = file
            .eni
            .iter()
            .filter(|e| !e.configure)
            .map(|e| e.id.clone())
            .collect();
        for i in &file.instance {
            unconfigured.extend(i.enis.iter().filter(|e| !e.configure).map(|e| e.id.clone()));
        }
        let mut rec = Reconciler {
            prefix: opts.prefix.clone(),
            pcap: opts.pcap.clone(),
            internet_gateway: gateway,
            unconfigured,
            attached: BTreeMap::new(),
            dp: dp.clone(),
        };
        let missing = rec.step(&cp);
        if !missing.is_empty() {
            return Err(format!(
                "could not make devices for {} (see the log above)",
                missing.join(", ")
            ));
        }
        let stop = lab.stop.clone();
        lab.reconciler = Some(
            std::thread::Builder::new()
                .name("reconcile".into())
                .spawn(move || {
                    let mut seen = cp.cell().generation();
                    while !stop.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(20));
                        let g = cp.cell().generation();
                        if g != seen {
                            seen = g;
                            rec.step(&cp);
                        }
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

    /// Stops the gateway and removes every namespace (with every device and route in it).
    pub fn teardown(&mut self) -> Result<(), String> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.reconciler.take() {
            let _ = h.join();
        }
        self.dp.shutdown();
        let mut errors = Vec::new();
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = netns::delete(&ns) {
                errors.push(e);
            }
        }
        let _ = std::fs::remove_file(&self.lock_path);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::error!("teardown: {e}");
        }
    }
}
