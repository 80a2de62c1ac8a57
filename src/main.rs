//! The `eiplab` command: `up` builds the lab (namespaces, TUN devices, the gateway, the
//! built-in services) and serves the API, `down` removes what a killed `up` left, `exec` runs
//! a command inside a lab namespace, `api` signs and sends one call like the cloud's CLI,
//! `status` shows the EIPs and the live counters, `reasons` lists the engine's drop reasons.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use eiplab::api::sign;
use eiplab::api::Api;
use eiplab::control::{ControlPlane, Options};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "eiplab",
    version,
    about = "Emulates, packet by packet, how a cloud Elastic IP reaches a guest"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// netns where this process can create network namespaces and TUN devices, else sim.
    Auto,
    /// Control plane, API and engine table only: no hosts (needs no root).
    None,
    /// Network namespaces joined by TUN devices to the gateway (needs root).
    Netns,
    /// In-process hosts (smoltcp) on the same gateway, in this process (needs no root).
    Sim,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CompatBackend {
    /// Network namespaces and the real peers (root).
    Netns,
    /// The lab in this process; DNS and TFTP with in-process peers (no root).
    Sim,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Signature {
    /// ACS3-HMAC-SHA256 in the Authorization header (the new SDKs).
    Acs3,
    /// Version 1.0 HMAC-SHA1 in the query (the old SDKs, Terraform).
    V1,
}

#[derive(clap::Args)]
struct UpArgs {
    lab: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    backend: Backend,
    /// Keep the control plane's state here; a restart with the same directory restores it.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Overrides `[api] listen`.
    #[arg(long)]
    api_listen: Option<SocketAddr>,
    /// Starts every namespace name: `{prefix}internet`, `{prefix}{instance id}`.
    #[arg(long, default_value = DEFAULT_PREFIX)]
    prefix: String,
    /// Write one pcap file per lab interface into this directory.
    #[arg(long)]
    pcap: Option<PathBuf>,
    /// Gateway worker threads (each serves many interfaces); default: one per core.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: Option<u16>,
    /// After moving packets, how long (µs) a gateway worker keeps polling before it sleeps:
    /// an answer arriving meanwhile crosses without a wake-up. 0: sleep at once.
    #[arg(long, default_value_t = eiplab::io::DEFAULT_BUSY_POLL.as_micros() as u32,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    busy_poll_us: u32,
    /// Send every UDP datagram into a namespace on its own, instead of merging a burst of one
    /// flow into one segmented super-packet (the kernel splits it back before the socket, but
    /// tcpdump inside the namespace shows it merged, as behind a NIC doing UDP GRO).
    #[arg(long)]
    no_udp_coalesce: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the lab of LAB.toml until SIGINT/SIGTERM.
    Up(UpArgs),
    /// Remove what a killed `up` left behind (its namespaces, with their devices and routes).
    Down {
        lab: PathBuf,
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
    },
    /// Run a command inside a lab host: `eiplab exec i-web -- ip addr`. A netns lab runs any
    /// program in the namespace; a sim lab runs its built-in commands (`eiplab exec i-web --
    /// help` lists them) through the API.
    Exec {
        /// An instance id, `internet` or `cloud`.
        name: String,
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
        /// The API of a sim lab (used when no namespace of that name exists).
        #[arg(long, default_value = "127.0.0.1:8700")]
        endpoint: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Sign and send one API call: `eiplab api AllocateEipAddress Bandwidth=10`.
    Api {
        action: String,
        /// Key=Value parameters.
        params: Vec<String>,
        #[arg(long, default_value = "127.0.0.1:8700")]
        endpoint: String,
        #[arg(long, default_value = "LTAIlabkey")]
        access_key_id: String,
        #[arg(long, default_value = "lab-secret")]
        access_key_secret: String,
        #[arg(long, value_enum, default_value = "acs3")]
        signature: Signature,
        /// API version; default the action's own (2014-05-26 for the ECS actions,
        /// 2016-04-28 for the VPC ones).
        #[arg(long)]
        version: Option<String>,
    },
    /// EIPs, associations and the programmed table of a running lab.
    Status {
        #[arg(long, default_value = "127.0.0.1:8700")]
        endpoint: String,
        /// Print the status document as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move a HaVip to another instance (or ENI) associated with it, as the cloud does when
    /// that guest announces the HaVip's address: `eiplab failover havip-a i-backup`.
    Failover {
        havip: String,
        instance: String,
        #[arg(long, default_value = "127.0.0.1:8700")]
        endpoint: String,
    },
    /// List the engine's drop reasons with the rule each stands for.
    Reasons,
    /// A narrated tour, no arguments and no root: EIPs allocated through the API and
    /// associated in NAT, BINDED and MULTI_BINDED modes on in-process hosts, with what the
    /// internet saw, what the guest saw and what was dropped and why; exits 1 if any step
    /// did not behave as SPEC §2 says.
    Demo,
    /// Which protocols survive each way an EIP reaches a guest: real servers and clients
    /// across the lab's EIPs (NAT with each ALG policy, BINDED, MULTI_BINDED, both
    /// placements), printed as a matrix with the reason and evidence of every cell (root;
    /// `--backend sim`: DNS and TFTP with in-process peers, no root).
    Compat(CompatArgs),
}

#[derive(clap::Args)]
struct CompatArgs {
    /// The lab to build (default: the built-in lab, examples/compat-lab.toml).
    #[arg(long)]
    lab: Option<PathBuf>,
    /// Comma-separated: ftp, sip, tftp, dns, rtsp, h323 (ftp-pasv, ftp-epsv, ftp-port,
    /// ftp-eprt for one FTP way); default all, or none when --scenario is given.
    #[arg(long)]
    protocols: Option<String>,
    /// Comma-separated: nat (= nat-drop,nat-pass,nat-inspect), nat-drop, nat-pass,
    /// nat-inspect, binded, multi_binded, natgw (an instance behind a NAT gateway).
    #[arg(long, default_value = "nat,binded,multi_binded,natgw")]
    modes: String,
    /// Comma-separated: server_in_instance, client_in_instance.
    #[arg(long, default_value = "server_in_instance,client_in_instance")]
    placements: String,
    /// Print the rows as JSON (and no progress).
    #[arg(long)]
    json: bool,
    /// Compare with this file (a JSON list of rows, as --json prints them): exit 1 when a
    /// result differs.
    #[arg(long)]
    expect: Option<PathBuf>,
    /// Your own application as a row: a TOML file with a server and a client command (see
    /// examples/scenarios/http-get.toml).
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Starts every namespace name of the lab it builds.
    #[arg(long, default_value = "eiplab-compat-")]
    prefix: String,
    /// The Python that runs the probes (Debian's, where python3-pyftpdlib and the others are).
    #[arg(long, default_value = "/usr/bin/python3")]
    python: PathBuf,
    /// Gateway worker threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// netns: namespaces and the real peers (root); sim: the lab in this process, no root,
    /// with in-process DNS and TFTP peers (the other protocols and --scenario are "not
    /// tested" there).
    #[arg(long, value_enum, default_value = "netns")]
    backend: CompatBackend,
}

const DEFAULT_PREFIX: &str = "eiplab-";

fn main() -> ExitCode {
    let cli = Cli::parse();
    // compat prints a matrix: the lab's own progress notes would only bury it.
    let default_log = match cli.command {
        Command::Compat(_) | Command::Demo => "eiplab=warn",
        _ => "eiplab=info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EIPLAB_LOG")
                .unwrap_or_else(|_| default_log.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("eiplab: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Up(args) => up(args),
        Command::Down { lab, prefix } => {
            let file = eiplab::lab::config::load(&lab).map_err(|e| anyhow::anyhow!("{e}"))?;
            let removed = eiplab::lab::run::down(&file, &prefix).map_err(|e| anyhow::anyhow!(e))?;
            if removed.is_empty() {
                println!("nothing to remove: no namespace of this lab with prefix {prefix:?}");
            }
            for ns in removed {
                println!("removed namespace {ns}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec {
            name,
            prefix,
            endpoint,
            command,
        } => {
            use std::os::unix::process::CommandExt;
            let ns = format!("{prefix}{name}");
            if !eiplab::sys::netns::exists(&ns) {
                if let Some(code) = exec_sim(&endpoint, &name, &command)? {
                    return Ok(code);
                }
                let labs: Vec<String> = eiplab::sys::netns::list()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|n| n.starts_with(&prefix))
                    .collect();
                bail!(
                    "no namespace {ns} and no sim lab at {endpoint}: is the lab up (with --prefix {prefix:?}, or --endpoint for a sim lab)? namespaces with that prefix: {}",
                    if labs.is_empty() { "none".to_string() } else { labs.join(", ") }
                );
            }
            let err = std::process::Command::new("ip")
                .args(["netns", "exec", &ns])
                .args(&command)
                .exec();
            bail!("cannot run `ip netns exec {ns} …` (install iproute2): {err}")
        }
        Command::Api {
            action,
            params,
            endpoint,
            access_key_id,
            access_key_secret,
            signature,
            version,
        } => {
            let mut map = BTreeMap::new();
            for p in &params {
                let Some((k, v)) = p.split_once('=') else {
                    bail!("parameter {p:?}: write it as Key=Value (e.g. AllocationId=eip-web1)");
                };
                map.insert(k.to_string(), v.to_string());
            }
            // The version of the action's product, from the server's own registry.
            let version = version.unwrap_or_else(|| {
                eiplab::api::actions::Action::find(&action)
                    .map_or(eiplab::api::actions::VPC, |a| a.version)
                    .to_string()
            });
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs() as i64;
            let nonce = format!("{:032x}", rand::random::<u128>());
            let req = match signature {
                Signature::Acs3 => sign::sign_acs3(
                    "POST",
                    &endpoint,
                    &action,
                    &version,
                    &map,
                    &access_key_id,
                    &access_key_secret,
                    &nonce,
                    now,
                ),
                Signature::V1 => sign::sign_v1(
                    "POST",
                    &endpoint,
                    &action,
                    &version,
                    &map,
                    &access_key_id,
                    &access_key_secret,
                    &nonce,
                    now,
                    false,
                ),
            };
            let (status, body) = send(&endpoint, &req)?;
            let pretty = serde_json::from_str::<serde_json::Value>(&body)
                .map(|v| serde_json::to_string_pretty(&v).unwrap_or(body.clone()))
                .unwrap_or(body);
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = writeln!(std::io::stdout().lock(), "{pretty}");
            Ok(if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Status { endpoint, json } => {
            let url = format!("http://{endpoint}/_eiplab/status");
            let mut resp = ureq::get(&url)
                .call()
                .with_context(|| format!("{url}: is `eiplab up` running there?"))?;
            let v: serde_json::Value = serde_json::from_str(&resp.body_mut().read_to_string()?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", eiplab::telemetry::status_text(&v));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Failover {
            havip,
            instance,
            endpoint,
        } => {
            let url = format!("http://{endpoint}/_eiplab/havip/failover");
            let resp = ureq::post(&url)
                .query("HaVipId", &havip)
                .query("InstanceId", &instance)
                .config()
                .http_status_as_error(false)
                .build()
                .send_empty()
                .with_context(|| format!("{url}: is `eiplab up` running there?"))?;
            let status = resp.status();
            let v: serde_json::Value = serde_json::from_str(&resp.into_body().read_to_string()?)?;
            if !status.is_success() {
                anyhow::bail!(
                    "{}: {}",
                    v["Code"].as_str().unwrap_or("error"),
                    v["Message"].as_str().unwrap_or("")
                );
            }
            println!(
                "{} is held by {}",
                havip,
                v["MasterInstanceId"].as_str().unwrap_or("?")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Compat(args) => compat(args),
        Command::Demo => {
            let mut out = std::io::stdout().lock();
            match eiplab::demo::run(&mut out) {
                Ok(true) => Ok(ExitCode::SUCCESS),
                Ok(false) => Ok(ExitCode::from(1)),
                Err(e) => bail!("demo: {e}"),
            }
        }
        Command::Reasons => {
            for r in eiplab::engine::DropReason::ALL {
                println!("{}", r.name());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `eiplab exec` on a sim lab: the command goes to the lab's API. `None` when nothing
/// answers there or the lab there is not a sim lab (the caller then explains).
fn exec_sim(endpoint: &str, host: &str, argv: &[String]) -> Result<Option<ExitCode>> {
    let url = format!("http://{endpoint}/_eiplab/exec");
    let body = serde_json::json!({ "host": host, "argv": argv }).to_string();
    let resp = ureq::post(&url)
        .config()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(3700)))
        .build()
        .header("content-type", "application/json")
        .send(body.as_bytes());
    let Ok(resp) = resp else {
        return Ok(None);
    };
    if resp.status() == 404 {
        return Ok(None);
    }
    let status = resp.status();
    let v: serde_json::Value = serde_json::from_str(&resp.into_body().read_to_string()?)
        .with_context(|| format!("{url}: not an eiplab answer"))?;
    if !status.is_success() {
        bail!(
            "{}: {}",
            v["Code"].as_str().unwrap_or("error"),
            v["Message"].as_str().unwrap_or("")
        );
    }
    let _ = std::io::stdout()
        .lock()
        .write_all(v["stdout"].as_str().unwrap_or_default().as_bytes());
    let _ = std::io::stderr()
        .lock()
        .write_all(v["stderr"].as_str().unwrap_or_default().as_bytes());
    let code = v["code"].as_i64().unwrap_or(1).clamp(0, 255) as u8;
    Ok(Some(ExitCode::from(code)))
}

fn send(endpoint: &str, req: &sign::OutgoingRequest) -> Result<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://{endpoint}{}", req.path_and_query);
    let mut r = agent.post(&url);
    for (k, v) in &req.headers {
        if k != "host" {
            r = r.header(k.as_str(), v.as_str());
        }
    }
    let mut resp = r
        .send(&req.body[..])
        .with_context(|| format!("{url}: is `eiplab up` running there?"))?;
    let status = resp.status().as_u16();
    Ok((status, resp.body_mut().read_to_string()?))
}

/// `eiplab compat`: reads every input first (a bad file costs no lab), then builds the lab,
/// runs the rows and prints the matrix (or JSON); `--expect` decides the exit status.
fn compat(args: CompatArgs) -> Result<ExitCode> {
    use eiplab::compat::{self, report, runner, scenario::Scenario, Mode, Placement};
    let scenario = match &args.scenario {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("--scenario {}", p.display()))?;
            Some(Scenario::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?)
        }
        None => None,
    };
    let probes = match (&args.protocols, &scenario) {
        (Some(list), _) => compat::select_probes(list).map_err(|e| anyhow::anyhow!(e))?,
        (None, Some(_)) => Vec::new(),
        (None, None) => compat::PROBES.to_vec(),
    };
    let modes = Mode::parse_list(&args.modes).map_err(|e| anyhow::anyhow!(e))?;
    let mut placements = Vec::new();
    for p in args
        .placements
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        match Placement::ALL.into_iter().find(|x| x.name() == p) {
            Some(x) if !placements.contains(&x) => placements.push(x),
            Some(_) => {}
            None => bail!(
                "--placements: unknown placement {p:?}; use server_in_instance, \
                 client_in_instance or both, separated by commas"
            ),
        }
    }
    if placements.is_empty() {
        bail!("--placements: name at least one placement");
    }
    let expected = match &args.expect {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("--expect {}", p.display()))?;
            Some(
                report::parse_expected(&text)
                    .map_err(|e| anyhow::anyhow!("--expect {}: {e}", p.display()))?,
            )
        }
        None => None,
    };
    let lab = match &args.lab {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("--lab {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (
            runner::DEFAULT_LAB.to_string(),
            "the built-in lab".to_string(),
        ),
    };
    eiplab::lab::run::check_prefix(&args.prefix).map_err(|e| anyhow::anyhow!(e))?;
    let backend = match args.backend {
        CompatBackend::Netns => runner::Backend::Netns,
        CompatBackend::Sim => runner::Backend::Sim,
    };
    if backend == runner::Backend::Netns && unsafe { libc::geteuid() } != 0 {
        bail!(
            "eiplab compat builds network namespaces and TUN devices: run it as root (its peers \
             are real programs; `--backend sim` runs DNS and TFTP with in-process peers without \
             root, and `eiplab demo` shows the ALG drop under NAT)"
        );
    }
    let progress = !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    runner::catch_signals();
    let rows = runner::run(&runner::Options {
        lab,
        prefix: args.prefix.clone(),
        probes,
        scenario,
        modes,
        placements,
        python: args.python.clone(),
        workers: args.workers.into(),
        progress,
        backend,
    });
    let rows = match rows {
        Ok(r) => r,
        Err(e) if e.starts_with("interrupted") => {
            eprintln!("\neiplab compat: {e}");
            return Ok(ExitCode::from(130));
        }
        Err(e) => bail!(e),
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let _ = write!(out, "{}", report::render(&rows));
    }
    let Some(expected) = expected else {
        return Ok(ExitCode::SUCCESS);
    };
    let c = report::compare(&expected, &rows);
    for n in &c.not_run {
        eprintln!("eiplab compat: --expect: not run this time: {n}");
    }
    if c.differ.is_empty() {
        eprintln!(
            "eiplab compat: every result matches --expect ({} compared)",
            expected.len() - c.not_run.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for d in &c.differ {
            eprintln!("eiplab compat: differs from --expect: {d}");
        }
        Ok(ExitCode::from(1))
    }
}

/// SIGINT or SIGTERM, caught from the moment this is made: one that arrives while the lab
/// is being built is not lost (nor does it kill the process halfway), it stops the lab as soon
/// as the lab is up.
struct StopSignal {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignal {
    /// Installs the handlers; call inside the runtime.
    fn install() -> Result<StopSignal> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignal {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// `eiplab up`: the control plane, then (netns) the lab around it, then the API until a signal.
fn up(args: UpArgs) -> Result<ExitCode> {
    let UpArgs {
        lab,
        backend,
        state,
        api_listen,
        prefix,
        pcap,
        workers,
        busy_poll_us,
        no_udp_coalesce,
    } = args;
    let file = eiplab::lab::config::load(&lab).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The first line says which backend, and why.
    let backend = match backend {
        Backend::Auto => match eiplab::lab::run::can_build_namespaces() {
            Ok(()) => {
                eprintln!(
                    "eiplab: backend netns: this process can create network namespaces and TUN \
                     devices (--backend sim for in-process hosts)"
                );
                Backend::Netns
            }
            Err(why) => {
                eprintln!(
                    "eiplab: backend sim: in-process hosts, because {why} (run as root for \
                     network namespaces, where real tools run)"
                );
                Backend::Sim
            }
        },
        b => {
            let what = match b {
                Backend::Netns => "netns: network namespaces joined by TUN devices",
                Backend::Sim => "sim: in-process hosts",
                _ => "none: control plane and engine table only (no hosts)",
            };
            eprintln!("eiplab: backend {what} (--backend)");
            b
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    let cloud = eiplab::lab::cloud::build(&file, now)
        .map_err(|e| anyhow::anyhow!("{}: {e}", lab.display()))?;
    let listen = api_listen.unwrap_or(file.api.listen);
    let access_keys: Vec<(String, String)> = file
        .api
        .access_keys
        .iter()
        .map(|k| (k.id.clone(), k.secret.clone()))
        .collect();
    let opts = Options {
        state_dir: state,
        table: eiplab::lab::cloud::table_extras(&file),
    };
    for (entry, inst, eip) in cloud.legacy_dnat_targets() {
        eprintln!(
            "eiplab: warning: forward entry {entry} targets {inst}, which has its own EIP {eip}: \
             a legacy state the API refuses (BIND_INSTANCE_HAVE_PORTMAP_OR_BIND_EIP); {inst}'s \
             internet traffic, replies to the entry's connections included, leaves from {eip} \
             (D11)"
        );
    }
    let cp = ControlPlane::new(cloud, &opts).map_err(|e| anyhow::anyhow!(e))?;
    let api = Api::new(cp.clone(), &access_keys);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = rt
        .block_on(eiplab::api::server::bind(listen))
        .map_err(|e| anyhow::anyhow!(e))?;
    let stop = rt.block_on(async { StopSignal::install() })?;
    // Ends EIP and instance transitions on time; asleep while none is under way.
    let timers = rt.spawn({
        let cp = cp.clone();
        async move { cp.run_timers().await }
    });
    // What to type next, with this lab's own names (flags only where they differ from the
    // defaults).
    let endpoint = if listen.to_string() == "127.0.0.1:8700" {
        String::new()
    } else {
        format!(" --endpoint {listen}")
    };
    let mut next = Vec::new();
    if backend != Backend::None {
        // An instance with an EIP of its own shows the EIP to the echo service.
        let with_eip = file.association.iter().find_map(|a| {
            file.instance
                .iter()
                .find(|i| i.id == a.instance_id)
                .map(|i| i.id.as_str())
        });
        if let Some(i) = with_eip.or(file.instance.first().map(|i| i.id.as_str())) {
            let p = if backend == Backend::Sim {
                endpoint.clone()
            } else if prefix == DEFAULT_PREFIX {
                String::new()
            } else {
                format!(" --prefix {prefix}")
            };
            next.push(format!(
                "eiplab exec{p} {i} -- curl -s http://{}/      # the echo service: who the internet sees",
                file.internet.echo_address()
            ));
        }
    } else {
        next.push(format!(
            "eiplab api AllocateEipAddress Bandwidth=5{endpoint}"
        ));
    }
    next.push(format!("eiplab status{endpoint}"));
    next.push(format!("eiplab api DescribeEipAddresses{endpoint}"));
    let ready = move || {
        println!("eiplab: ready");
        for n in &next {
            println!("  try: {n}");
        }
        let _ = std::io::stdout().flush();
    };
    if backend == Backend::None {
        ready();
        rt.block_on(eiplab::api::server::serve_on(api, listener, stop.wait()))
            .map_err(|e| anyhow::anyhow!(e))?;
        timers.abort();
        eprintln!("eiplab: stopped");
        return Ok(ExitCode::SUCCESS);
    }
    if backend == Backend::Sim {
        let opts = eiplab::sim::lab::Options {
            workers: workers.map_or(1, usize::from),
            // The API's runtime runs them.
            timers: false,
            pcap: pcap.clone(),
        };
        let started = std::time::Instant::now();
        let sim = eiplab::sim::SimLab::build_with(&file, cp.clone(), &opts)
            .map_err(|e| anyhow::anyhow!("{}: {e}", lab.display()))?;
        let (world, ecp) = (sim.world.clone(), cp.clone());
        api.set_exec(std::sync::Arc::new(move |host, argv| {
            serde_json::to_value(eiplab::sim::exec::run(&world, &ecp, host, argv))
                .unwrap_or_default()
        }));
        eprintln!(
            "eiplab: lab up (sim) in {} ms: hosts internet, cloud and {} instance(s); \
             nothing outside this process",
            started.elapsed().as_millis(),
            file.instance.len()
        );
        ready();
        let r = rt.block_on(eiplab::api::server::serve_on(api, listener, stop.wait()));
        timers.abort();
        drop(sim);
        r.map_err(|e| anyhow::anyhow!(e))?;
        eprintln!("eiplab: stopped");
        return Ok(ExitCode::SUCCESS);
    }
    let lab_opts = eiplab::lab::run::Options {
        prefix: prefix.clone(),
        pcap,
        workers: workers.map_or_else(eiplab::io::default_workers, usize::from),
        busy_poll: std::time::Duration::from_micros(busy_poll_us.into()),
        udp_coalesce: !no_udp_coalesce,
    };
    let (mut running, services) = eiplab::lab::run::Lab::build(&file, cp.clone(), &lab_opts)
        .map_err(|e| anyhow::anyhow!("{}: {e}", lab.display()))?;
    let dp = running.dp.clone();
    cp.set_live_counters(std::sync::Arc::new(move || dp.snapshot()));
    let dp = running.dp.clone();
    cp.set_clock_follower(std::sync::Arc::new(move |d| dp.advance_clock(d)));
    let served = rt.block_on(async {
        let echo = tokio::spawn(eiplab::lab::services::echo(services.echo));
        let meta = tokio::spawn(eiplab::lab::services::metadata(
            services.metadata,
            cp.clone(),
            file.vpc.id.clone(),
        ));
        let mut shown: Vec<String> = file
            .instance
            .iter()
            .take(10)
            .map(|i| format!("{prefix}{}", i.id))
            .collect();
        if file.instance.len() > shown.len() {
            shown.push(format!("and {} more", file.instance.len() - shown.len()));
        }
        eprintln!(
            "eiplab: lab up: namespaces {prefix}internet, {prefix}cloud, {}",
            shown.join(", ")
        );
        ready();
        let r = eiplab::api::server::serve_on(api, listener, stop.wait()).await;
        echo.abort();
        meta.abort();
        timers.abort();
        r
    });
    eprintln!("eiplab: stopping: removing the lab's namespaces");
    let torn = running.teardown();
    drop(rt);
    served.map_err(|e| anyhow::anyhow!(e))?;
    torn.map_err(|e| anyhow::anyhow!(e))?;
    eprintln!("eiplab: stopped");
    Ok(ExitCode::SUCCESS)
}
