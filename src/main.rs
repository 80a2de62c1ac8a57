//! The `eiplab` command: `up` runs the control plane and its API (the lab's namespaces come
//! with the lab issue), `api` signs and sends one call like the cloud's CLI, `status` shows
//! the EIPs and the programmed table, `reasons` lists the engine's drop reasons.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use eiplab::api::server::{ControlPlane, Options};
use eiplab::api::sign;
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
    /// Control plane, API and engine table only: no hosts (needs no root).
    None,
    /// Network namespaces and TUN devices (not built yet).
    Netns,
    /// In-process hosts (not built yet).
    Sim,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Signature {
    /// ACS3-HMAC-SHA256 in the Authorization header (the new SDKs).
    Acs3,
    /// Version 1.0 HMAC-SHA1 in the query (the old SDKs, Terraform).
    V1,
}

#[derive(Subcommand)]
enum Command {
    /// Run the lab of LAB.toml until SIGINT/SIGTERM.
    Up {
        lab: PathBuf,
        #[arg(long, value_enum, default_value = "none")]
        backend: Backend,
        /// Keep the control plane's state here; a restart with the same directory restores it.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Overrides `[api] listen`.
        #[arg(long)]
        api_listen: Option<SocketAddr>,
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Remove what a killed `up` left behind (nothing yet: backend none creates nothing).
    Down {
        lab: PathBuf,
        #[arg(long)]
        prefix: Option<String>,
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
        /// API version; default 2014-05-26 for the ECS actions, else 2016-04-28.
        #[arg(long)]
        version: Option<String>,
    },
    /// EIPs, associations and the programmed table of a running lab.
    Status {
        #[arg(long, default_value = "127.0.0.1:8700")]
        endpoint: String,
    },
    /// List the engine's drop reasons with the rule each stands for.
    Reasons,
}

const ECS_ACTIONS: &[&str] = &[
    "AttachNetworkInterface",
    "DetachNetworkInterface",
    "DescribeNetworkInterfaces",
    "AssignPrivateIpAddresses",
    "UnassignPrivateIpAddresses",
    "StartInstance",
    "StopInstance",
];

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EIPLAB_LOG")
                .unwrap_or_else(|_| "eiplab=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("eiplab: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Up {
            lab,
            backend,
            state,
            api_listen,
            prefix: _,
        } => {
            if backend != Backend::None {
                bail!(
                    "--backend {} is not built yet: this version runs the control plane and the \
                     engine table only (--backend none); see README, \"Status\"",
                    if backend == Backend::Netns {
                        "netns"
                    } else {
                        "sim"
                    }
                );
            }
            let file = eiplab::lab::config::load(&lab).map_err(|e| anyhow::anyhow!("{e}"))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos() as u64;
            let cloud = eiplab::lab::cloud::build(&file, now)
                .map_err(|e| anyhow::anyhow!("{}: {e}", lab.display()))?;
            let opts = Options {
                listen: api_listen.unwrap_or(file.api.listen),
                access_keys: file
                    .api
                    .access_keys
                    .iter()
                    .map(|k| (k.id.clone(), k.secret.clone()))
                    .collect(),
                state_dir: state,
            };
            let cp = ControlPlane::new(cloud, &opts).map_err(|e| anyhow::anyhow!(e))?;
            eprintln!("eiplab: backend none: control plane and engine table only (no namespaces)");
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(eiplab::api::serve(cp, opts.listen, shutdown_signal()))
                .map_err(|e| anyhow::anyhow!(e))?;
            eprintln!("eiplab: stopped");
            Ok(ExitCode::SUCCESS)
        }
        Command::Down { .. } => {
            eprintln!("eiplab: nothing to remove: backend none creates no namespaces or devices");
            Ok(ExitCode::SUCCESS)
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
            let version = version.unwrap_or_else(|| {
                if ECS_ACTIONS.contains(&action.as_str()) {
                    "2014-05-26".into()
                } else {
                    "2016-04-28".into()
                }
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
        Command::Status { endpoint } => {
            let url = format!("http://{endpoint}/_eiplab/status");
            let mut resp = ureq::get(&url)
                .call()
                .with_context(|| format!("{url}: is `eiplab up` running there?"))?;
            let v: serde_json::Value = serde_json::from_str(&resp.body_mut().read_to_string()?)?;
            print_status(&v);
            Ok(ExitCode::SUCCESS)
        }
        Command::Reasons => {
            for r in eiplab::engine::DropReason::ALL {
                println!("{}", r.name());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
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

fn print_status(v: &serde_json::Value) {
    let s = |x: &serde_json::Value| x.as_str().unwrap_or("").to_string();
    println!(
        "lab time {}   engine table generation {}",
        s(&v["LabTime"]),
        v["TableGeneration"]
    );
    println!(
        "{:<20} {:<16} {:<14} {:<12} {:<18} {:<16} {:>6}",
        "AllocationId", "IpAddress", "Status", "Mode", "InstanceId", "PrivateIp", "Mbit/s"
    );
    for e in v["Eips"].as_array().into_iter().flatten() {
        println!(
            "{:<20} {:<16} {:<14} {:<12} {:<18} {:<16} {:>6}",
            s(&e["AllocationId"]),
            s(&e["IpAddress"]),
            s(&e["Status"]),
            if s(&e["InstanceId"]).is_empty() {
                String::new()
            } else {
                s(&e["Mode"])
            },
            s(&e["InstanceId"]),
            s(&e["PrivateIpAddress"]),
            s(&e["Bandwidth"]),
        );
    }
    if v["Counters"].is_null() {
        println!("counters: no dataplane is running (backend none)");
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
