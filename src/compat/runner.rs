//! The shell of `eiplab compat`: builds the lab, runs each probe's server and client in their
//! namespaces (every process in its own process group, ended by its id), reads the gateway's
//! counters and `inspect` findings around each run, and hands it all to [`super::judge`].
//!
//! Two backends share everything but the peers ([`Session`]: the plan, the targets, the ALG
//! policy, the counters, the judge): [`NetnsPeers`] runs the probe scripts as processes in
//! the netns lab (root); [`SimPeers`] runs the in-process peers of [`super::simpeers`] on the
//! hosts of a [`crate::sim::SimLab`] (`--backend sim`, no root; DNS and TFTP only).
//!
//! Bounded: a server that is not ready in [`READY_LIMIT`] is ended, a client past its limit is
//! ended, a server is given [`STOP_GRACE`] to end on SIGTERM before SIGKILL, and on SIGINT or
//! SIGTERM the run stops between two checks (at most 50 ms), ends what it started and removes
//! the lab (the lab removes its namespaces when dropped).

use super::judge::{self, ClientEnd, Facts};
use super::scenario::{Fill, Scenario, Transport};
use super::{Mode, Outcome, Placement, Probe, Row};
use crate::alg::{AlgAction, AlgPolicy, AlgProtocol};
use crate::cloud::{BindType, Cloud, EipStatus, InstanceStatus};
use crate::control::ControlPlane;
use crate::engine::{AssociationMode, DropReason};
use crate::lab::config::LabFile;
use crate::napt::{Behaviour, DnatProtocol, SnatRule};
use crate::telemetry::Snapshot;
use std::io::Read;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The lab `eiplab compat` builds when none is given.
pub const DEFAULT_LAB: &str = include_str!("../../examples/compat-lab.toml");

/// The probe scripts (and `probe.py`, which they share), written to a scratch directory at
/// start.
const SCRIPTS: &[(&str, &str)] = &[
    ("probe.py", include_str!("peers/probe.py")),
    ("ftp.py", include_str!("peers/ftp.py")),
    ("sip.py", include_str!("peers/sip.py")),
    ("tftp.py", include_str!("peers/tftp.py")),
    ("dns.py", include_str!("peers/dns.py")),
    ("rtsp.py", include_str!("peers/rtsp.py")),
    ("h323.py", include_str!("peers/h323.py")),
];

/// How long a server may take to say it is ready.
pub const READY_LIMIT: Duration = Duration::from_secs(15);
/// How long a server or client has to end after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// A probe client's own limit (it is ended 5 s after).
pub const CLIENT_LIMIT_S: u64 = 25;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Catches SIGINT and SIGTERM from now on: the run stops at its next check, ends what it
/// started and removes the lab.
pub fn catch_signals() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        let handler: extern "C" fn(libc::c_int) = on_signal;
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

const INTERRUPTED: &str = "interrupted: the processes it started were ended and the lab removed";

/// What to run.
pub struct Options {
    /// The lab file's text and where it came from (for messages).
    pub lab: (String, String),
    pub prefix: String,
    pub probes: Vec<Probe>,
    pub scenario: Option<Scenario>,
    pub modes: Vec<Mode>,
    pub placements: Vec<Placement>,
    /// The Python that runs the probes (Debian's, where its peer packages are installed).
    pub python: PathBuf,
    pub workers: usize,
    /// Show progress on stderr.
    pub progress: bool,
    /// Where the lab runs.
    pub backend: Backend,
}

/// Where `eiplab compat` builds its lab and runs its peers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// Network namespaces and TUN devices, real peers (root).
    #[default]
    Netns,
    /// In-process hosts on the same gateway ([`crate::sim`]), no root: only the probes with an
    /// in-process peer ([`super::simpeers`]: DNS, TFTP) run; the others, and a scenario, are
    /// "not tested".
    Sim,
}

/// Why a row is not tested on the sim backend.
pub const SIM_REAL_PEERS: &str =
    "its peers are real programs: run eiplab compat as root (netns backend)";

/// Where a mode's rows run: the instance, its namespace and addresses.
#[derive(Clone, Debug)]
pub(super) struct Target {
    pub(super) instance: String,
    pub(super) ns: String,
    pub(super) eip: Ipv4Addr,
    pub(super) slot: u32,
    /// NAT: the private IP the EIP maps to.
    pub(super) private_ip: Option<Ipv4Addr>,
    /// What the instance's peer binds: the private IP (NAT) or the EIP (cut-through).
    pub(super) local: Ipv4Addr,
    /// The NAT gateway the rows cross (the NAT-gateway column).
    pub(super) gateway: Option<String>,
}

/// Runs every selected probe (and the scenario) in every selected mode and placement.
pub fn run(opts: &Options) -> Result<Vec<Row>, String> {
    let file: LabFile =
        crate::lab::config::parse(&opts.lab.0).map_err(|e| format!("{}: {e}", opts.lab.1))?;
    match opts.backend {
        Backend::Netns => run_netns(opts, &file),
        Backend::Sim => run_sim(opts, &file),
    }
}

/// The lab's control plane, on a clock of now.
fn control_plane(opts: &Options, file: &LabFile) -> Result<Arc<ControlPlane>, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let cloud = crate::lab::cloud::build(file, now).map_err(|e| format!("{}: {e}", opts.lab.1))?;
    ControlPlane::new(
        cloud,
        &crate::control::Options {
            state_dir: None,
            table: crate::lab::cloud::table_extras(file),
        },
    )
}

/// Each NAT gateway's filtering, by id (from the lab file).
fn filtering(file: &LabFile) -> Vec<(String, Behaviour)> {
    file.nat_gateway
        .iter()
        .map(|g| (g.id.clone(), g.napt_config().filtering))
        .collect()
}

/// The sim backend: the lab in this process, the in-process peers.
fn run_sim(opts: &Options, file: &LabFile) -> Result<Vec<Row>, String> {
    let cp = control_plane(opts, file)?;
    let lab = crate::sim::SimLab::build_with(
        file,
        cp.clone(),
        &crate::sim::lab::Options {
            workers: opts.workers,
            timers: true,
            pcap: None,
        },
    )
    .map_err(|e| format!("{}: {e}", opts.lab.1))?;
    wait_settled(&cp)?;
    lab.settle(Duration::from_secs(10))?;
    let mut peers = SimPeers { world: &lab.world };
    Session {
        opts,
        cp: &cp,
        dp: &lab.dp,
        peers: &mut peers,
        internet_host: file.internet.echo_address(),
        filtering: filtering(file),
    }
    .run_all()
}

/// The netns backend: namespaces, TUN devices, real peers.
fn run_netns(opts: &Options, file: &LabFile) -> Result<Vec<Row>, String> {
    let work = Scratch::new()?;
    let peers = work.path.join("peers");
    std::fs::create_dir_all(&peers).map_err(|e| format!("{}: {e}", peers.display()))?;
    for (name, text) in SCRIPTS {
        let p = peers.join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let cp = control_plane(opts, file)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("the runtime: {e}"))?;
    let timers = rt.spawn({
        let cp = cp.clone();
        async move { cp.run_timers().await }
    });
    if stopping() {
        return Err(INTERRUPTED.into());
    }
    let lab_opts = crate::lab::run::Options {
        prefix: opts.prefix.clone(),
        pcap: None,
        workers: opts.workers,
        busy_poll: crate::io::DEFAULT_BUSY_POLL,
        udp_coalesce: true,
    };
    let (mut lab, services) = crate::lab::run::Lab::build(file, cp.clone(), &lab_opts)
        .map_err(|e| format!("{}: {e}", opts.lab.1))?;
    let echo = rt.spawn(crate::lab::services::echo(services.echo));
    let meta = rt.spawn(crate::lab::services::metadata(
        services.metadata,
        cp.clone(),
        file.vpc.id.clone(),
    ));
    let mut netns = NetnsPeers {
        python: &opts.python,
        peers: &peers,
        work: &work.path,
        internet_ns: format!("{}internet", opts.prefix),
        internet_host: file.internet.echo_address(),
        route: None,
    };
    let result = Session {
        opts,
        cp: &cp,
        dp: &lab.dp,
        peers: &mut netns,
        internet_host: file.internet.echo_address(),
        filtering: filtering(file),
    }
    .run_all();
    netns.finish();
    echo.abort();
    meta.abort();
    timers.abort();
    let torn = lab.teardown();
    drop(rt);
    let rows = result?;
    torn?;
    Ok(rows)
}

/// A scratch directory, removed when dropped.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new() -> Result<Scratch, String> {
        let path = std::env::temp_dir().join(format!(
            "eiplab-compat-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        open_up(&path)?;
        Ok(Scratch { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// World-writable: some servers (in.tftpd) drop to an unprivileged user.
fn open_up(p: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o1777))
        .map_err(|e| format!("{}: {e}", p.display()))
}

/// What the backends share: the plan, the rows, their targets, the ALG policy, the gateway's
/// counters around each run and the judge; a backend's [`Peers`] runs the server and client.
struct Session<'a> {
    opts: &'a Options,
    cp: &'a Arc<ControlPlane>,
    dp: &'a Arc<crate::io::Dataplane>,
    peers: &'a mut dyn Peers,
    internet_host: Ipv4Addr,
    /// Each NAT gateway's filtering, by id (from the lab file).
    filtering: Vec<(String, Behaviour)>,
}

/// One row to run.
#[derive(Clone, Copy)]
enum What<'s> {
    Probe(Probe),
    Scenario(&'s Scenario),
}

impl What<'_> {
    fn protocol(&self) -> String {
        match self {
            What::Probe(p) => p.protocol.to_string(),
            What::Scenario(s) => s.name.clone(),
        }
    }

    fn label(&self) -> String {
        match self {
            What::Probe(p) => p.label.to_string(),
            What::Scenario(s) => format!("{} (scenario)", s.name),
        }
    }

    fn alg(&self) -> Option<AlgProtocol> {
        match self {
            What::Probe(p) => Some(p.alg),
            What::Scenario(s) => s.alg_protocol(),
        }
    }
}

impl Session<'_> {
    fn run_all(&mut self) -> Result<Vec<Row>, String> {
        let mut plan: Vec<(What<'_>, Placement, Mode)> = Vec::new();
        let mut whats: Vec<What<'_>> = self.opts.probes.iter().map(|p| What::Probe(*p)).collect();
        if let Some(s) = &self.opts.scenario {
            whats.push(What::Scenario(s));
        }
        for w in &whats {
            for &pl in &self.opts.placements {
                if let What::Scenario(s) = w {
                    if !s.placements.contains(&pl) {
                        continue;
                    }
                }
                for &m in &self.opts.modes {
                    plan.push((*w, pl, m));
                }
            }
        }
        wait_settled(self.cp)?;
        let mut targets: Vec<((Mode, Placement), Option<Target>)> = Vec::new();
        for &m in &self.opts.modes {
            for &pl in &self.opts.placements {
                let t = self.cp.with_cloud(|c| target(c, m, pl, &self.opts.prefix));
                targets.push(((m, pl), t));
            }
        }
        let started = Instant::now();
        let mut rows = Vec::with_capacity(plan.len());
        for (i, (what, placement, mode)) in plan.iter().enumerate() {
            if stopping() {
                return Err(INTERRUPTED.into());
            }
            if self.opts.progress {
                eprint!(
                    "\r\x1b[K[{}/{}, {} after this, {} s] {} · {} · {}",
                    i + 1,
                    plan.len(),
                    plan.len() - i - 1,
                    started.elapsed().as_secs(),
                    what.label(),
                    mode,
                    placement.words()
                );
            }
            let t = targets
                .iter()
                .find(|(k, _)| *k == (*mode, *placement))
                .and_then(|(_, t)| t.clone());
            let mut row = Row {
                protocol: what.protocol(),
                variant: match what {
                    What::Probe(p) => p.variant.map(str::to_string),
                    What::Scenario(_) => None,
                },
                mode: mode.kind().to_string(),
                alg_policy: mode.alg_policy().map(|a| a.name().to_string()),
                placement: *placement,
                result: Outcome::NotTested,
                reason: String::new(),
                evidence: Vec::new(),
                eip: None,
                instance: None,
            };
            let Some(t) = t else {
                row.reason = no_target(*mode, *placement);
                rows.push(row);
                continue;
            };
            row.eip = Some(t.eip.to_string());
            row.instance = Some(t.instance.clone());
            self.peers.prepare(*mode, *placement, &t)?;
            match mode {
                Mode::Nat(a) => self.cp.set_alg_policy(AlgPolicy::all(*a)),
                // A NAT gateway has no ALG: under the strictest NAT-mode policy, a gateway that
                // looked at payloads would show it as alg_* drops.
                Mode::NatGateway => self.cp.set_alg_policy(AlgPolicy::all(AlgAction::Drop)),
                _ => {}
            }
            let (result, reason, evidence) = self.run_one(what, *placement, *mode, &t, i)?;
            row.result = result;
            row.reason = reason;
            row.evidence = evidence;
            rows.push(row);
        }
        if self.opts.progress {
            eprintln!(
                "\r\x1b[K{} rows in {} s",
                rows.len(),
                started.elapsed().as_secs()
            );
        }
        Ok(rows)
    }

    fn run_one(
        &mut self,
        what: &What<'_>,
        placement: Placement,
        mode: Mode,
        t: &Target,
        index: usize,
    ) -> Result<(Outcome, String, Vec<String>), String> {
        // The server's bind address, the client's own address, the address the client dials.
        let (listen, bind, dial) = match placement {
            Placement::ServerInInstance => (t.local, self.internet_host, t.eip),
            Placement::ClientInInstance => (self.internet_host, t.local, self.internet_host),
        };
        let row = PeerRow {
            what: *what,
            placement,
            target: t,
            index,
            listen,
            bind,
            dial,
        };
        let _ = self.dp.take_alg_reports();
        let before = self.dp.snapshot();
        let ran = self.peers.run(&row)?;
        if stopping() {
            return Err(INTERRUPTED.into());
        }
        let (end, server) = match ran {
            PeerRun::NotTested(why) => return Ok((Outcome::NotTested, why, Vec::new())),
            PeerRun::Ran { client, server } => (client, server),
        };
        let after = self.dp.snapshot();
        let findings: Vec<_> = self
            .dp
            .take_alg_reports()
            .into_iter()
            .filter(|r| r.eip == t.eip)
            .collect();
        let alg_passed = what.alg().map_or(0, |p| {
            after.global.alg_passed[p.index()].saturating_sub(before.global.alg_passed[p.index()])
        });
        let facts = Facts {
            alg: what.alg(),
            mode,
            eip: t.eip,
            private_ip: t.private_ip,
            filtering: t.gateway.as_ref().and_then(|g| {
                self.filtering
                    .iter()
                    .find(|(id, _)| id == g)
                    .map(|(_, b)| *b)
            }),
            eip_drops: eip_drops(&before, &after, t.slot),
            global_drops: global_drops(&before, &after),
            findings,
            alg_passed,
            server,
            server_failed: None,
            client: end,
            signalling_only: matches!(what, What::Probe(p) if p.signalling_only),
        };
        Ok(judge::judge(&facts))
    }
}

/// Waits (up to 10 s) until no EIP of the lab is still associating.
fn wait_settled(cp: &ControlPlane) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if stopping() {
            return Err(INTERRUPTED.into());
        }
        let busy = cp.with_cloud(|c| {
            c.eips
                .values()
                .any(|e| matches!(e.status, EipStatus::Associating | EipStatus::Unassociating))
        });
        if !busy {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// One row as its peers see it.
struct PeerRow<'r> {
    what: What<'r>,
    placement: Placement,
    target: &'r Target,
    index: usize,
    /// The server's bind address.
    listen: Ipv4Addr,
    /// The client's own address.
    bind: Ipv4Addr,
    /// The address the client dials.
    dial: Ipv4Addr,
}

/// What a row's peers left behind.
enum PeerRun {
    /// They could not run (the server did not start, a missing tool, a probe the backend has
    /// no peer for): why.
    NotTested(String),
    /// How the client ended, and the server's summary (compact JSON without `event`).
    Ran {
        client: ClientEnd,
        server: Option<String>,
    },
}

/// The seam between the backends: starting a row's server and client and collecting their
/// reports. Everything else (the plan, targets, ALG policy, counters, judge) is [`Session`]'s.
trait Peers {
    /// Before each row: what the row's peers need of their hosts.
    fn prepare(&mut self, _mode: Mode, _placement: Placement, _t: &Target) -> Result<(), String> {
        Ok(())
    }
    /// Runs the row's server, then its client against it, and ends both.
    fn run(&mut self, row: &PeerRow<'_>) -> Result<PeerRun, String>;
}

/// The netns backend's peers: the probe scripts (or a scenario's commands) as processes in the
/// namespaces.
struct NetnsPeers<'a> {
    python: &'a Path,
    peers: &'a Path,
    work: &'a Path,
    internet_ns: String,
    internet_host: Ipv4Addr,
    /// A cut-through guest's default route, while its rows need it.
    route: Option<RouteOverride>,
}

impl NetnsPeers<'_> {
    /// Puts back what `prepare` changed.
    fn finish(&mut self) {
        if let Some(r) = self.route.take() {
            r.restore();
        }
    }
}

impl Peers for NetnsPeers<'_> {
    fn prepare(&mut self, mode: Mode, placement: Placement, t: &Target) -> Result<(), String> {
        // A cut-through guest's own clients leave from the EIP only if its routes say so;
        // some clients (tftp-hpa, GStreamer's RTSP control connection) cannot be told a
        // source address.
        let cut_through = matches!(mode, Mode::Binded | Mode::MultiBinded);
        let want = (placement == Placement::ClientInInstance && cut_through)
            .then(|| (t.ns.clone(), t.eip));
        if self.route.as_ref().map(|r| (r.ns.clone(), r.src)) != want {
            if let Some(r) = self.route.take() {
                r.restore();
            }
            if let Some((ns, src)) = want {
                self.route = Some(RouteOverride::set(&ns, src, self.internet_host)?);
            }
        }
        Ok(())
    }

    fn run(&mut self, row: &PeerRow<'_>) -> Result<PeerRun, String> {
        let t = row.target;
        let dir = self.work.join(format!("row{}", row.index));
        let (sdir, cdir) = (dir.join("server"), dir.join("client"));
        for d in [&dir, &sdir, &cdir] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            open_up(d)?;
        }
        let (listen, bind, dial) = (row.listen, row.bind, row.dial);
        let (server_ns, client_ns) = match row.placement {
            Placement::ServerInInstance => (t.ns.clone(), self.internet_ns.clone()),
            Placement::ClientInInstance => (self.internet_ns.clone(), t.ns.clone()),
        };
        let what = &row.what;
        let (port, server_argv, client_argv, limit) = match what {
            What::Probe(p) => {
                let script = |name: &str| self.peers.join(format!("{name}.py"));
                let py = self.python.display().to_string();
                let s = script(p.protocol).display().to_string();
                let server = vec![
                    py.clone(),
                    s.clone(),
                    "server".into(),
                    "--listen".into(),
                    listen.to_string(),
                    "--port".into(),
                    p.port.to_string(),
                    "--dir".into(),
                    sdir.display().to_string(),
                ];
                let mut client = vec![
                    py,
                    s,
                    "client".into(),
                    "--server".into(),
                    dial.to_string(),
                    "--port".into(),
                    p.port.to_string(),
                    "--bind".into(),
                    bind.to_string(),
                    "--dir".into(),
                    cdir.display().to_string(),
                    "--timeout".into(),
                    CLIENT_LIMIT_S.to_string(),
                ];
                if let Some(v) = p.variant {
                    client.push("--variant".into());
                    client.push(v.into());
                }
                (p.port, server, client, CLIENT_LIMIT_S + 5)
            }
            What::Scenario(s) => {
                let (l, d, b) = (listen.to_string(), dial.to_string(), bind.to_string());
                let sd = sdir.display().to_string();
                let cd = cdir.display().to_string();
                let fill = |dir| Fill {
                    listen: &l,
                    server: &d,
                    bind: &b,
                    port: s.port,
                    dir,
                };
                let server = Scenario::fill(&s.server.command, &fill(sd.as_str()));
                let client = Scenario::fill(&s.client.command, &fill(cd.as_str()));
                (s.port, server, client, s.timeout)
            }
        };
        let mut server = Proc::spawn(&server_ns, &server_argv)?;
        let ready = match what {
            What::Probe(_) => server.wait_ready_line(READY_LIMIT),
            What::Scenario(s) => server.wait_listening(&server_ns, port, s.transport, READY_LIMIT),
        };
        if let Err(why) = ready {
            server.stop();
            if stopping() {
                return Err(INTERRUPTED.into());
            }
            // A probe that cannot find its tool says so in a JSON line.
            if let Ok(r) = judge::parse_client(&server.stdout()) {
                if let Some(n) = r.not_tested {
                    return Ok(PeerRun::NotTested(n));
                }
            }
            return Ok(PeerRun::NotTested(format!(
                "the server did not start: {why}"
            )));
        }
        let mut client = Proc::spawn(&client_ns, &client_argv)?;
        let status = client.wait(Duration::from_secs(limit));
        client.stop();
        server.stop();
        if stopping() {
            return Err(INTERRUPTED.into());
        }
        let end = match (what, status) {
            (_, None) => ClientEnd::TimedOut { seconds: limit },
            (What::Probe(_), Some(code)) => match judge::parse_client(&client.stdout()) {
                Ok(r) => ClientEnd::Report(r),
                Err(e) => ClientEnd::Failed(format!(
                    "{e} (exit status {code}); stderr: {}",
                    tail(&client.stderr(), 400)
                )),
            },
            (What::Scenario(s), Some(code)) => scenario_end(s, code, &client),
        };
        Ok(PeerRun::Ran {
            client: end,
            server: server_summary(&server.stdout()),
        })
    }
}

/// The sim backend's peers: the in-process DNS and TFTP peers ([`super::simpeers`]) on the
/// sim hosts; a host sends from any address it holds, so a cut-through guest's client simply
/// binds the EIP.
struct SimPeers<'a> {
    world: &'a crate::sim::SimWorld,
}

impl Peers for SimPeers<'_> {
    fn run(&mut self, row: &PeerRow<'_>) -> Result<PeerRun, String> {
        use super::simpeers::{self, DnsServer, Serve, Server, TftpServer};
        let What::Probe(p) = row.what else {
            return Ok(PeerRun::NotTested(SIM_REAL_PEERS.into()));
        };
        let mut server: Box<dyn Server> = match p.alg {
            AlgProtocol::Dns => Box::new(DnsServer::new(row.listen, p.port)),
            AlgProtocol::Tftp => Box::new(TftpServer::new(row.listen, p.port)),
            _ => return Ok(PeerRun::NotTested(SIM_REAL_PEERS.into())),
        };
        let instance = row.target.instance.as_str();
        let internet = crate::sim::lab::INTERNET;
        let (server_host, client_host) = match row.placement {
            Placement::ServerInInstance => (instance, internet),
            Placement::ClientInInstance => (internet, instance),
        };
        if let Err(why) = self.world.with_host(server_host, |h| server.open(h))? {
            return Ok(PeerRun::NotTested(format!(
                "the server did not start: {why}"
            )));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let dial = std::net::SocketAddrV4::new(row.dial, p.port);
        let limit = Duration::from_secs(CLIENT_LIMIT_S + 5);
        let world = self.world;
        let (summary, report) = std::thread::scope(|s| {
            let serving = s.spawn(|| {
                world.run(
                    server_host,
                    Serve {
                        server,
                        stop: stop.clone(),
                    },
                    limit,
                )
            });
            let report = match p.alg {
                AlgProtocol::Dns => simpeers::dns_client(world, client_host, row.bind, dial),
                _ => simpeers::tftp_client(world, client_host, row.bind, dial),
            };
            stop.store(true, Ordering::Release);
            (serving.join(), report)
        });
        let server = match summary {
            Ok(Ok(v)) => Some(serde_json::to_string(&v).unwrap_or_default()),
            _ => None,
        };
        Ok(PeerRun::Ran {
            client: ClientEnd::Report(report),
            server,
        })
    }
}

/// A scenario's client: exit status 0 (and the expected text) is "works".
fn scenario_end(s: &Scenario, code: i32, client: &Proc) -> ClientEnd {
    let out = client.stdout();
    let mut report = judge::ClientReport::default();
    let missing = s
        .client
        .expect_stdout
        .as_ref()
        .filter(|want| !out.contains(want.as_str()));
    if code == 127 {
        return ClientEnd::Report(judge::ClientReport {
            not_tested: Some(format!(
                "the client command was not found: {}",
                tail(&client.stderr(), 200)
            )),
            ..Default::default()
        });
    }
    report.ok = code == 0 && missing.is_none();
    report.detail = if report.ok {
        format!(
            "the client exited 0{}",
            if s.client.expect_stdout.is_some() {
                " and printed the expected text"
            } else {
                ""
            }
        )
    } else if code != 0 {
        format!(
            "the client exited {code}: {}",
            tail(&client.stderr(), 300).trim()
        )
    } else {
        format!(
            "the client exited 0 but its output lacks {:?}: {}",
            missing.map(String::as_str).unwrap_or_default(),
            tail(&out, 200).trim()
        )
    };
    ClientEnd::Report(report)
}

fn eip_drops(before: &Snapshot, after: &Snapshot, slot: u32) -> Vec<(DropReason, u64)> {
    let zero = crate::engine::EipCounters::default();
    let b = before.eips.get(&slot).unwrap_or(&zero);
    let a = after.eips.get(&slot).unwrap_or(&zero);
    DropReason::ALL
        .iter()
        .map(|&r| (r, a.drops[r as usize].saturating_sub(b.drops[r as usize])))
        .filter(|&(_, n)| n > 0)
        .collect()
}

fn global_drops(before: &Snapshot, after: &Snapshot) -> Vec<(DropReason, u64)> {
    DropReason::ALL
        .iter()
        .map(|&r| {
            (
                r,
                after.global.drops[r as usize].saturating_sub(before.global.drops[r as usize]),
            )
        })
        .filter(|&(_, n)| n > 0)
        .collect()
}

/// The server's summary line without its `event` field, as compact JSON.
fn server_summary(out: &str) -> Option<String> {
    out.lines().rev().find_map(|l| {
        let mut v: serde_json::Value = serde_json::from_str(l.trim()).ok()?;
        let o = v.as_object_mut()?;
        if o.get("event").and_then(|e| e.as_str()) != Some("summary") {
            return None;
        }
        o.remove("event");
        (!o.is_empty()).then(|| serde_json::to_string(&v).unwrap_or_default())
    })
}

fn tail(s: &str, n: usize) -> String {
    let t: Vec<char> = s.chars().collect();
    let start = t.len().saturating_sub(n);
    t[start..].iter().collect::<String>().replace('\n', " | ")
}

/// Why a mode's rows are not tested: the lab has nothing they can run across.
fn no_target(mode: Mode, placement: Placement) -> String {
    let eip_in = match mode {
        Mode::Nat(_) => "NAT mode",
        Mode::Binded => "BINDED mode on an attached ENI",
        Mode::MultiBinded => "MULTI_BINDED mode on an attached ENI",
        Mode::NatGateway => {
            return match placement {
                Placement::ServerInInstance => {
                    "the lab has no NAT gateway EIP mapped whole (a DNAT entry with IpProtocol \
                     Any and Any ports) to a running instance"
                }
                Placement::ClientInInstance => {
                    "the lab has no running instance without a public address of its own whose \
                     private address an SNAT entry of a NAT gateway covers"
                }
            }
            .to_string()
        }
    };
    format!("the lab has no EIP in {eip_in} on a running instance")
}

/// The EIP in `mode` that compat's rows of that mode and placement use: the first (by
/// allocation id) that is in use on a running instance; for the NAT gateway, see
/// [`gateway_target`].
pub(super) fn target(c: &Cloud, mode: Mode, placement: Placement, prefix: &str) -> Option<Target> {
    let want = match mode {
        Mode::Nat(_) => AssociationMode::Nat,
        Mode::Binded => AssociationMode::Binded,
        Mode::MultiBinded => AssociationMode::MultiBinded,
        Mode::NatGateway => return gateway_target(c, placement, prefix),
    };
    c.eips.values().find_map(|e| {
        let b = e.binding.as_ref()?;
        if e.status != EipStatus::InUse || b.mode != want {
            return None;
        }
        let (instance, private) = match b.bind_type {
            BindType::EcsInstance => {
                let primary = c
                    .enis
                    .values()
                    .find(|n| n.primary && n.instance.as_deref() == Some(b.instance_id.as_str()))?;
                (
                    b.instance_id.clone(),
                    b.private_ip
                        .or_else(|| primary.private_ips.first().copied())?,
                )
            }
            BindType::NetworkInterface => {
                let eni = c.enis.get(&b.instance_id)?;
                (
                    eni.instance.clone()?,
                    b.private_ip.or_else(|| eni.private_ips.first().copied())?,
                )
            }
            _ => return None,
        };
        if c.instances.get(&instance)?.status != InstanceStatus::Running {
            return None;
        }
        let nat = want == AssociationMode::Nat;
        Some(Target {
            ns: format!("{prefix}{instance}"),
            instance,
            eip: e.address,
            slot: e.slot,
            private_ip: nat.then_some(private),
            local: if nat { private } else { e.address },
            gateway: None,
        })
    })
}

/// The running instance whose primary ENI's primary address is `ip`.
fn instance_at(c: &Cloud, ip: Ipv4Addr) -> Option<&str> {
    let eni = c
        .enis
        .values()
        .find(|n| n.primary && n.private_ips.first() == Some(&ip))?;
    let id = eni.instance.as_deref()?;
    (c.instances.get(id)?.status == InstanceStatus::Running).then_some(id)
}

/// Whether an instance reaches the internet by an address of its own (a fixed public IP, an
/// EIP on it or on one of its ENIs), which its traffic takes instead of a NAT gateway (D11).
fn has_own_public(c: &Cloud, instance: &str) -> bool {
    if c.instances
        .get(instance)
        .is_some_and(|i| i.public_ip.is_some())
    {
        return true;
    }
    c.eips.values().any(|e| {
        e.binding.as_ref().is_some_and(|b| match b.bind_type {
            BindType::EcsInstance => b.instance_id == instance,
            BindType::NetworkInterface => c
                .enis
                .get(&b.instance_id)
                .is_some_and(|n| n.instance.as_deref() == Some(instance)),
            _ => false,
        })
    })
}

/// The NAT gateway's rows, from the rules its dataplane runs (gateways in id order):
/// - server in instance: the first whole-IP DNAT entry (IpProtocol Any) whose internal
///   address is a running instance's primary address (without an EIP of its own): every
///   probe's ports reach it, and its own new flows (active FTP's data connection, RTP) leave
///   through the same EIP;
/// - client in instance: the first running instance (by id) without a public address of its
///   own, not mapped whole by a DNAT entry, whose primary address an SNAT entry covers; the
///   entry's first EIP is the row's.
fn gateway_target(c: &Cloud, placement: Placement, prefix: &str) -> Option<Target> {
    let rules = c.nat_gateway_rules();
    let slot_of = |g: &crate::cloud::nat::GatewayRules, a: Ipv4Addr| {
        g.eips.iter().find(|(e, _)| *e == a).map(|(_, s)| *s)
    };
    let whole = |g: &crate::cloud::nat::GatewayRules| {
        g.dnat
            .iter()
            .filter(|d| d.protocol == DnatProtocol::Any)
            .map(|d| (*d.external.ip(), *d.internal.ip()))
            .collect::<Vec<_>>()
    };
    let make = |g: &crate::cloud::nat::GatewayRules,
                instance: &str,
                eip: Ipv4Addr,
                slot: u32,
                private: Ipv4Addr| Target {
        ns: format!("{prefix}{instance}"),
        instance: instance.to_string(),
        eip,
        slot,
        private_ip: Some(private),
        local: private,
        gateway: Some(g.id.clone()),
    };
    match placement {
        Placement::ServerInInstance => rules.iter().find_map(|g| {
            whole(g).into_iter().find_map(|(eip, private)| {
                let instance = instance_at(c, private)?;
                if has_own_public(c, instance) {
                    return None;
                }
                Some(make(g, instance, eip, slot_of(g, eip)?, private))
            })
        }),
        Placement::ClientInInstance => {
            let mapped_whole: Vec<Ipv4Addr> =
                rules.iter().flat_map(whole).map(|(_, i)| i).collect();
            c.instances.values().find_map(|i| {
                if i.status != InstanceStatus::Running || has_own_public(c, &i.id) {
                    return None;
                }
                let private = *c
                    .enis
                    .values()
                    .find(|n| n.primary && n.instance.as_deref() == Some(i.id.as_str()))?
                    .private_ips
                    .first()?;
                if mapped_whole.contains(&private) {
                    return None;
                }
                rules.iter().find_map(|g| {
                    let s = g.snat.iter().find(|s| covers(s, private))?;
                    let eip = *s.eips.first()?;
                    Some(make(g, &i.id, eip, slot_of(g, eip)?, private))
                })
            })
        }
    }
}

/// Whether an SNAT rule's source block holds `ip`.
fn covers(s: &SnatRule, ip: Ipv4Addr) -> bool {
    let mask = match s.prefix_len {
        0 => 0,
        n => u32::MAX << (32 - u32::from(n.min(32))),
    };
    u32::from(ip) & mask == u32::from(s.source) & mask
}

/// A process started by compat inside a namespace, in its own process group; what it writes
/// is collected by two threads.
struct Proc {
    child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    ended: Option<i32>,
}

fn collect<R: Read + Send + 'static>(mut r: R, into: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Ok(mut s) = into.lock() {
                        // Bounded: a chatty peer cannot grow memory without end.
                        if s.len() < 1 << 20 {
                            s.push_str(&String::from_utf8_lossy(&buf[..n]));
                        }
                    }
                }
            }
        }
    })
}

impl Proc {
    fn spawn(ns: &str, argv: &[String]) -> Result<Proc, String> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| {
            format!(
                "cannot run `ip netns exec {ns} {}` (install iproute2): {e}",
                argv.join(" ")
            )
        })?;
        let out = Arc::new(Mutex::new(String::new()));
        let err = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        if let Some(o) = child.stdout.take() {
            readers.push(collect(o, out.clone()));
        }
        if let Some(e) = child.stderr.take() {
            readers.push(collect(e, err.clone()));
        }
        Ok(Proc {
            child,
            out,
            err,
            readers,
            ended: None,
        })
    }

    fn stdout(&self) -> String {
        self.out.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        self.err.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Its exit status if it has ended (signals as 128 + n).
    fn poll(&mut self) -> Option<i32> {
        if self.ended.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                use std::os::unix::process::ExitStatusExt;
                self.ended = Some(st.code().unwrap_or(128 + st.signal().unwrap_or(0)));
            }
        }
        self.ended
    }

    /// Waits up to `limit` for it to end; `None` if it is still running (or a stop was asked).
    fn wait(&mut self, limit: Duration) -> Option<i32> {
        let until = Instant::now() + limit;
        while Instant::now() < until && !stopping() {
            if let Some(c) = self.poll() {
                self.join_readers();
                return Some(c);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// Polls `ready` every `every` until it holds, the process ends (an error with its
    /// status and the end of its stderr), a stop is asked, or `limit` passes (`too_late`).
    fn wait_until(
        &mut self,
        limit: Duration,
        every: Duration,
        mut ready: impl FnMut(&Proc) -> bool,
        too_late: impl FnOnce(&Proc) -> String,
    ) -> Result<(), String> {
        let until = Instant::now() + limit;
        while Instant::now() < until && !stopping() {
            if ready(self) {
                return Ok(());
            }
            if let Some(code) = self.poll() {
                self.join_readers();
                return Err(format!(
                    "it ended with status {code}: {}",
                    tail(&self.stderr(), 400).trim()
                ));
            }
            std::thread::sleep(every);
        }
        Err(too_late(self))
    }

    /// Waits for the probe's `{"event": "ready"}` line.
    fn wait_ready_line(&mut self, limit: Duration) -> Result<(), String> {
        self.wait_until(
            limit,
            Duration::from_millis(20),
            |p| {
                p.stdout().lines().any(|l| {
                    serde_json::from_str::<serde_json::Value>(l.trim())
                        .ok()
                        .is_some_and(|v| v.get("event").and_then(|e| e.as_str()) == Some("ready"))
                })
            },
            |p| {
                format!(
                    "not ready within {} s: {}",
                    limit.as_secs(),
                    tail(&p.stderr(), 400).trim()
                )
            },
        )
    }

    /// Waits until something in `ns` listens on `port` (a scenario's server).
    fn wait_listening(
        &mut self,
        ns: &str,
        port: u16,
        t: Transport,
        limit: Duration,
    ) -> Result<(), String> {
        let flag = match t {
            Transport::Tcp => "-Hltn",
            Transport::Udp => "-Hlun",
        };
        self.wait_until(
            limit,
            Duration::from_millis(50),
            |_| {
                Command::new("ip")
                    .args(["netns", "exec", ns, "ss", flag])
                    .arg(format!("sport = :{port}"))
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .output()
                    .is_ok_and(|o| !o.stdout.is_empty())
            },
            |_| {
                format!(
                    "nothing listened on port {port} within {} s",
                    limit.as_secs()
                )
            },
        )
    }

    /// SIGTERM to its process group, SIGKILL after [`STOP_GRACE`]; waits for it.
    fn stop(&mut self) {
        if self.poll().is_none() {
            let pgid = self.child.id() as libc::pid_t;
            // SAFETY: signalling our own child's process group by its id.
            unsafe {
                libc::kill(-pgid, libc::SIGTERM);
            }
            let until = Instant::now() + STOP_GRACE;
            while Instant::now() < until && self.poll().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.poll().is_none() {
                // SAFETY: as above.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
                let _ = self.child.wait();
            }
        }
        // What its children left in the group (they share it) goes too.
        // SAFETY: as above; the group is ours, and ESRCH when it is empty is fine.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        self.join_readers();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// For a cut-through guest's own clients: the main table's default route goes out of the
/// EIP's device with the EIP as source, as a user sets a guest up to use its EIP; put back
/// when dropped.
struct RouteOverride {
    ns: String,
    src: Ipv4Addr,
    /// The default routes of metric 0 it replaced, as `ip route show` printed them.
    saved: Vec<String>,
    /// The route it added, without `ip route replace`.
    added: Vec<String>,
    restored: bool,
}

fn ip_in(ns: &str, args: &[&str]) -> Result<String, String> {
    let o = Command::new("ip")
        .args(["netns", "exec", ns, "ip"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if !o.status.success() {
        return Err(format!(
            "in {ns}: ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

impl RouteOverride {
    fn set(ns: &str, src: Ipv4Addr, toward: Ipv4Addr) -> Result<RouteOverride, String> {
        let s = src.to_string();
        let got = ip_in(
            ns,
            &["-4", "-j", "route", "get", &toward.to_string(), "from", &s],
        )?;
        let v: serde_json::Value =
            serde_json::from_str(&got).map_err(|e| format!("ip route get: {e}: {got}"))?;
        let r = v
            .get(0)
            .ok_or_else(|| format!("ip route get: no route: {got}"))?;
        let dev = r
            .get("dev")
            .and_then(|d| d.as_str())
            .ok_or_else(|| format!("ip route get: no device: {got}"))?
            .to_string();
        let gw = r
            .get("gateway")
            .and_then(|g| g.as_str())
            .map(str::to_string);
        let shown = ip_in(ns, &["-4", "route", "show", "default"])?;
        let saved: Vec<String> = shown
            .lines()
            .filter(|l| !l.contains(" metric ") || l.contains(" metric 0"))
            .map(str::to_string)
            .collect();
        let mut added: Vec<String> = vec!["default".into()];
        if let Some(g) = &gw {
            added.extend(["via".into(), g.clone()]);
        }
        added.extend(["dev".into(), dev, "onlink".into(), "src".into(), s]);
        let mut args = vec!["-4", "route", "replace"];
        args.extend(added.iter().map(String::as_str));
        ip_in(ns, &args)?;
        Ok(RouteOverride {
            ns: ns.to_string(),
            src,
            saved,
            added,
            restored: false,
        })
    }

    fn restore(mut self) {
        self.put_back();
    }

    fn put_back(&mut self) {
        if self.restored {
            return;
        }
        self.restored = true;
        if self.saved.is_empty() {
            let mut del = vec!["-4", "route", "del"];
            del.extend(self.added.iter().map(String::as_str));
            del.extend(["metric", "0"]);
            let _ = ip_in(&self.ns, &del);
        }
        for l in &self.saved {
            // Replacing the saved route (same destination and metric) replaces ours.
            let words: Vec<&str> = ["-4", "route", "replace"]
                .into_iter()
                .chain(l.split_whitespace())
                .collect();
            let args = strip_proto(&words);
            if let Err(e) = ip_in(&self.ns, &args) {
                tracing::warn!("putting back the default route of {}: {e}", self.ns);
            }
        }
    }
}

/// Removes `proto X` from a route's words (ip prints it; X varies).
fn strip_proto<'a>(words: &[&'a str]) -> Vec<&'a str> {
    let mut out = Vec::with_capacity(words.len());
    let mut skip = false;
    for w in words {
        if skip {
            skip = false;
            continue;
        }
        if *w == "proto" {
            skip = true;
            continue;
        }
        out.push(*w);
    }
    out
}

impl Drop for RouteOverride {
    fn drop(&mut self) {
        self.put_back();
    }
}
