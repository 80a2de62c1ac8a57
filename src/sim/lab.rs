//! [`SimLab`]: the lab of a lab file in one process, without root.
//!
//! The gateway is the real [`Dataplane`] on the control plane's table, as the netns backend
//! makes it ([`crate::lab::run::Lab::build`]); its ports are in-memory devices whose other
//! ends are [`SimHost`]s:
//! - `internet`: the echo service on port 80 of the internet's first host, a default route via
//!   the internet gateway;
//! - `cloud`: the metadata service on 100.100.100.200:80 (the same answers as the netns
//!   backend's), and the CLB health checks' source address;
//! - one host per instance, with a device per attached ENI configured as [`plan`] says.
//!
//! A reconciler follows the control plane as the netns backend's does: every publication
//! (an ENI attached or detached, an EIP associated in BINDED or MULTI_BINDED mode) is planned
//! with [`plan::plan`] and applied to the hosts, while traffic flows.
//!
//! The CLBs' health checks run from the cloud host, one thread per backend checked.
//!
//! With `--pcap DIR`, every device is captured as in the netns backend. A HaVip moves when a
//! guest takes its address through `eiplab exec … ip addr add` ([`super::exec`]), or by
//! `eiplab failover`.

use super::host::{HealthProbe, IfaceConfig, Ipv4Cidr, Proto, SimHost};
use super::world::SimWorld;
use crate::control::ControlPlane;
use crate::engine::Side;
use crate::io::pcap::{Capture, Tap};
use crate::io::{mem, Dataplane, Device};
use crate::lab::config::LabFile;
use crate::lab::plan::{self, Made, Step};
use crate::lab::run::{HEALTH_CHECK_SOURCE, METADATA};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// The internet host's name in the world.
pub const INTERNET: &str = "internet";
/// The cloud services host's name in the world.
pub const CLOUD: &str = "cloud";
/// Packets each in-memory device holds towards its host.
const QUEUE: usize = 4096;

/// How the sim lab runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Gateway worker threads.
    pub workers: usize,
    /// Run the control plane's timers (Associating and Unassociating end on time) on a thread
    /// of the lab; off where the caller runs [`ControlPlane::run_timers`] itself.
    pub timers: bool,
    /// `--pcap DIR`: one pcap file per device (`i-web.eth0.pcap`, …), as the netns backend
    /// writes them.
    pub pcap: Option<PathBuf>,
}

/// The gateway's end of a host's device: the in-memory device, behind a pcap tap with
/// `--pcap`.
fn gateway_end(
    pcap: &Option<PathBuf>,
    name: &str,
    dev: mem::MemDevice,
) -> Result<Box<dyn Device>, String> {
    Ok(match pcap {
        Some(d) => Box::new(Tap::new(dev, Capture::create(d, name)?)),
        None => Box::new(dev),
    })
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workers: 1,
            timers: true,
            pcap: None,
        }
    }
}

/// Keeps the hosts' devices in step with the cloud.
struct Reconciler {
    internet_gateway: Ipv4Addr,
    pcap: Option<PathBuf>,
    unconfigured: BTreeSet<String>,
    have: BTreeMap<u16, Made>,
    dp: Arc<Dataplane>,
    world: Arc<SimWorld>,
}

impl Reconciler {
    /// Brings the hosts in line with the cloud; returns the ENIs that could not be applied.
    fn step(&mut self, cp: &ControlPlane) -> Vec<String> {
        let want = cp.with_cloud(|c| plan::attached_enis(c, &self.unconfigured));
        let mut have = std::mem::take(&mut self.have);
        let gw = self.internet_gateway;
        let failed = plan::converge(&mut have, &want, "", gw, |s| self.apply(s));
        self.have = have;
        failed
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
                tracing::info!(eni = %eni_id, host = %ns, dev = %dev, "ENI detached: device removed");
                self.dp.remove_eni(*eni);
                self.world.with_host(ns, |h| {
                    for r in rules {
                        h.rule(r.from, r.table, false);
                    }
                    h.remove_dev(dev)
                })?
            }
            Step::Create {
                facts,
                ns,
                dev,
                config,
                ..
            } => {
                if !self.world.hosts().iter().any(|h| h == ns) {
                    self.world.add_host(SimHost::new(ns)?)?;
                }
                let (device, host_end) =
                    mem::pair(QUEUE).map_err(|e| format!("{ns}.{dev}: {e}"))?;
                self.world.wire(ns, &host_end)?;
                self.world.with_host(ns, |h| {
                    h.add_dev(dev, host_end);
                    h.configure(dev, config, true)
                })??;
                let name = format!("{ns}.{dev}");
                let device = gateway_end(&self.pcap, &name, device)?;
                self.dp.add_port(name, Side::Eni(facts.index), device);
                tracing::info!(eni = %facts.eni_id, host = %ns, dev = %dev, mode = ?facts.mode, "ENI attached");
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
                self.world.with_host(ns, |h| {
                    h.configure(dev, del, false)?;
                    h.configure(dev, add, true)
                })??;
                tracing::info!(eni = %facts.eni_id, host = %ns, dev = %dev, mode = ?facts.mode, "ENI changed in the guest");
                Ok(())
            }
        }
    }
}

enum Wake {
    Changed,
    Stop,
}

/// A running simulated lab. Dropping it stops the reconciler, the gateway and the hosts.
pub struct SimLab {
    pub dp: Arc<Dataplane>,
    pub world: Arc<SimWorld>,
    pub cp: Arc<ControlPlane>,
    wake: Option<(mpsc::Sender<Wake>, crate::engine::WatchId)>,
    reconciler: Option<JoinHandle<()>>,
    /// The CLBs' health checks (one thread per target, stopped by `stop`) and the timers'
    /// thread.
    probers: Vec<JoinHandle<()>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// ENIs the last reconciliation could not apply.
    failed: Arc<Mutex<Vec<String>>>,
    /// Publications of the control plane seen, and applied to the hosts.
    published: Arc<AtomicU64>,
    applied: Arc<AtomicU64>,
    /// Ends the timers' thread.
    timers_stop: Arc<tokio::sync::Notify>,
}

fn cidr(ip: Ipv4Addr, len: u8) -> Ipv4Cidr {
    Ipv4Cidr::new(ip, len)
}

impl SimLab {
    /// Builds the lab of `file` around the control plane `cp` with one gateway worker.
    pub fn build(file: &LabFile, cp: Arc<ControlPlane>) -> Result<SimLab, String> {
        SimLab::build_with(file, cp, &Options::default())
    }

    /// Builds the lab of `file` around the control plane `cp`.
    pub fn build_with(
        file: &LabFile,
        cp: Arc<ControlPlane>,
        opts: &Options,
    ) -> Result<SimLab, String> {
        let dp = Dataplane::new(
            cp.cell().clone(),
            crate::io::Options {
                workers: opts.workers.max(1),
                ..crate::io::Options::default()
            },
        )
        .map_err(|e| format!("cannot start the gateway: {e}"))?;
        if let Some(d) = &opts.pcap {
            std::fs::create_dir_all(d)
                .map_err(|e| format!("--pcap {}: cannot create it: {e}", d.display()))?;
        }
        let world = Arc::new(SimWorld::new(Vec::new())?);
        let echo = file.internet.echo_address();
        let gateway = file.internet.gateway;

        // A fixed host: its device, wired to wake it, then the gateway's port.
        let fixed = |name: &str, cfg: IfaceConfig, side: Side| -> Result<(), String> {
            let (device, host_end) = mem::pair(QUEUE).map_err(|e| format!("{name}: {e}"))?;
            world.add_host(SimHost::new(name)?)?;
            world.wire(name, &host_end)?;
            let dev = cfg.name.clone();
            world.with_host(name, |h| -> Result<(), String> {
                h.add_dev(&dev, host_end);
                for a in &cfg.addrs {
                    h.addr(&dev, *a, true)?;
                }
                if let Some(gw) = cfg.gateway {
                    h.route(&dev, gw, super::route::MAIN, cfg.metric, true)?;
                }
                Ok(())
            })??;
            let port = format!("{name}.{dev}");
            dp.add_port(port.clone(), side, gateway_end(&opts.pcap, &port, device)?);
            Ok(())
        };
        fixed(
            INTERNET,
            IfaceConfig {
                name: "eth0".into(),
                addrs: vec![cidr(echo, file.internet.cidr.len)],
                gateway: Some(gateway),
                metric: 0,
            },
            Side::Internet,
        )?;
        world.with_host(INTERNET, |h| h.serve_echo_http(80))?;
        fixed(
            CLOUD,
            IfaceConfig {
                name: "eth0".into(),
                addrs: vec![cidr(METADATA, 32), cidr(HEALTH_CHECK_SOURCE, 32)],
                // Everything leaves by eth0 (a device route).
                gateway: Some(METADATA),
                metric: 0,
            },
            Side::CloudServices,
        )?;
        let (mcp, vpc) = (cp.clone(), file.vpc.id.clone());
        world.with_host(CLOUD, |h| {
            h.serve_http(
                80,
                Box::new(move |path, who| metadata(&mcp, &vpc, path, who)),
            )
        })?;
        // Every instance has a host, even one whose ENIs are all detached for now.
        for i in &file.instance {
            world.add_host(SimHost::new(&i.id)?)?;
        }

        let mut rec = Reconciler {
            internet_gateway: gateway,
            pcap: opts.pcap.clone(),
            unconfigured: file.unconfigured_enis(),
            have: BTreeMap::new(),
            dp: dp.clone(),
            world: world.clone(),
        };
        // Watch before the first step: a change made meanwhile wakes the reconciler at once.
        let (tx, rx) = mpsc::channel();
        let t = tx.clone();
        // Publications seen, and the count as of the last step that finished (see `settle`).
        let published = Arc::new(AtomicU64::new(0));
        let applied = Arc::new(AtomicU64::new(0));
        let p = published.clone();
        let id = cp.cell().watch(Box::new(move || {
            p.fetch_add(1, Ordering::AcqRel);
            let _ = t.send(Wake::Changed);
        }));
        let failed = Arc::new(Mutex::new(rec.step(&cp)));
        let mut lab = SimLab {
            dp: dp.clone(),
            world,
            cp: cp.clone(),
            wake: Some((tx, id)),
            reconciler: None,
            probers: Vec::new(),
            stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            failed: failed.clone(),
            published: published.clone(),
            applied: applied.clone(),
            timers_stop: Arc::new(tokio::sync::Notify::new()),
        };
        {
            let f = failed.lock().unwrap_or_else(PoisonError::into_inner);
            if !f.is_empty() {
                return Err(format!(
                    "could not make devices for {} (see the log above)",
                    f.join(", ")
                ));
            }
        }
        let rcp = cp.clone();
        lab.reconciler = Some(
            std::thread::Builder::new()
                .name("sim-reconcile".into())
                .spawn(move || {
                    // Several publications that arrive together make one step.
                    while let Ok(Wake::Changed) = rx.recv() {
                        let mut stop = false;
                        while let Ok(w) = rx.try_recv() {
                            stop |= matches!(w, Wake::Stop);
                        }
                        if stop {
                            break;
                        }
                        // Every publication counted so far is in the state this step reads.
                        let seen = published.load(Ordering::Acquire);
                        let f = rec.step(&rcp);
                        applied.store(seen, Ordering::Release);
                        *failed.lock().unwrap_or_else(PoisonError::into_inner) = f;
                    }
                })
                .map_err(|e| e.to_string())?,
        );
        let dpc = dp.clone();
        cp.set_clock_follower(Arc::new(move |d| dpc.advance_clock(d)));
        // `status` and `/metrics` show this gateway's counters.
        let dpc = dp.clone();
        cp.set_live_counters(Arc::new(move || dpc.snapshot()));
        lab.start_health_checks()?;
        if opts.timers {
            lab.start_timers()?;
        }
        Ok(lab)
    }

    /// [`ControlPlane::run_timers`] on a thread of its own until the lab is dropped.
    fn start_timers(&mut self) -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| e.to_string())?;
        let (cp, stop) = (self.cp.clone(), self.timers_stop.clone());
        let t = std::thread::Builder::new()
            .name("sim-timers".into())
            .spawn(move || {
                rt.block_on(async move {
                    tokio::select! {
                        _ = cp.run_timers() => {}
                        _ = stop.notified() => {}
                    }
                })
            })
            .map_err(|e| e.to_string())?;
        self.probers.push(t);
        Ok(())
    }

    /// The CLBs' health checks from the cloud host's [`HEALTH_CHECK_SOURCE`], each target on
    /// its own thread and interval, results into the CLBs as the netns backend's prober does.
    fn start_health_checks(&mut self) -> Result<(), String> {
        use crate::lab::health::ProbeKind;
        use std::sync::atomic::Ordering;
        let Some((targets, report)) = crate::lab::run::health_checks(&self.cp) else {
            return Ok(());
        };
        for t in targets {
            let (world, stop, report) = (self.world.clone(), self.stop.clone(), report.clone());
            let proto = match t.kind {
                ProbeKind::Tcp => Proto::Tcp,
                ProbeKind::Udp => Proto::Udp,
            };
            let interval = t.interval.max(crate::lab::health::MIN_INTERVAL);
            let h = std::thread::Builder::new()
                .name("sim-health".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        let started = std::time::Instant::now();
                        let probe = HealthProbe::new(proto, t.addr, Some(HEALTH_CHECK_SOURCE));
                        let ok = match world.run(CLOUD, probe, t.timeout) {
                            Ok(v) => v,
                            // Silence: a TCP check fails, a UDP one passes.
                            Err(e) if e.contains("timed out") => proto == Proto::Udp,
                            Err(_) => false,
                        };
                        report(t.key, ok);
                        let next = started + interval;
                        while !stop.load(Ordering::Acquire) && std::time::Instant::now() < next {
                            std::thread::sleep(Duration::from_millis(5).min(interval));
                        }
                    }
                })
                .map_err(|e| e.to_string())?;
            self.probers.push(h);
        }
        Ok(())
    }

    /// Waits until the hosts match the cloud as of this call: every publication made before
    /// it has been applied (the reconciler applies a change right after it is published; an
    /// API call returns before that).
    pub fn settle(&self, limit: Duration) -> Result<(), String> {
        let want = self.published.load(Ordering::Acquire);
        let deadline = std::time::Instant::now() + limit;
        while self.applied.load(Ordering::Acquire) < want {
            if std::time::Instant::now() >= deadline {
                return Err("the hosts did not follow the cloud in time".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// ENIs the last reconciliation could not apply (logged as they fail).
    pub fn failed(&self) -> Vec<String> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Moves the lab clock forward: the control plane's (the EIPs' windows) and, through its
    /// follower, the gateway's (sessions, fragments). Nothing sleeps.
    pub fn advance(&self, seconds: u64) -> Result<u64, String> {
        self.cp.advance_clock(seconds).map_err(|e| e.to_string())
    }
}

/// The metadata service's answer to `path` for the instance that owns `who`.
fn metadata(cp: &ControlPlane, vpc: &str, path: &str, who: Ipv4Addr) -> Option<String> {
    let p = path.trim_end_matches('/');
    match p {
        "" => return Some("latest\n".into()),
        "/latest" => return Some("meta-data\n".into()),
        _ => {}
    }
    let rest = p.strip_prefix("/latest/meta-data")?;
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    cp.with_cloud(|c| crate::lab::services::lookup(c, vpc, who, rest))
}

impl Drop for SimLab {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.timers_stop.notify_one();
        for p in self.probers.drain(..) {
            let _ = p.join();
        }
        if let Some((tx, id)) = self.wake.take() {
            self.cp.cell().unwatch(id);
            let _ = tx.send(Wake::Stop);
            let _ = tx.send(Wake::Changed);
        }
        if let Some(t) = self.reconciler.take() {
            let _ = t.join();
        }
        self.dp.shutdown();
    }
}
