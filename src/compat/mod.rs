//! `eiplab compat`: does a protocol survive an EIP in NAT mode, and why not.
//!
//! For each protocol a real server runs on one side of an EIP and a real client on the other
//! (Debian's peers, driven by the probe scripts under `peers/`), in each mode (NAT with the
//! ALG policy `drop`, `pass` and `inspect`; BINDED; MULTI_BINDED; behind a NAT gateway, through
//! a whole-IP DNAT entry or an SNAT entry) and in both placements. Each
//! run becomes a [`Row`]: works, broken or not tested, with a reason in a network engineer's
//! words and the evidence it rests on (what the client saw, what the gateway dropped and why,
//! what `inspect` found in the payloads).
//!
//! The pure parts (what a probe reported, the verdict and its wording, the matrix, the
//! comparison with an expectation file) are in [`judge`] and [`report`]; [`scenario`] reads a
//! user's own scenario file; [`runner`] is the shell that builds the lab and runs the peers.

pub mod judge;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod simpeers;

use crate::alg::{AlgAction, AlgProtocol};
use serde::{Deserialize, Serialize};
use std::fmt;

/// One column of the matrix: how the EIP reaches the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// NAT mode with this ALG policy for every protocol.
    Nat(AlgAction),
    Binded,
    MultiBinded,
    /// An instance without an EIP of its own behind an internet NAT gateway (SPEC D9–D11):
    /// reached through a whole-IP DNAT entry (server in instance), leaving through an SNAT
    /// entry (client in instance). NAPT, and no ALG.
    NatGateway,
}

impl Mode {
    pub const ALL: [Mode; 6] = [
        Mode::Nat(AlgAction::Drop),
        Mode::Nat(AlgAction::Pass),
        Mode::Nat(AlgAction::Inspect),
        Mode::Binded,
        Mode::MultiBinded,
        Mode::NatGateway,
    ];

    /// The JSON `mode` field: `nat`, `binded`, `multi_binded` or `nat_gateway`.
    pub fn kind(self) -> &'static str {
        match self {
            Mode::Nat(_) => "nat",
            Mode::Binded => "binded",
            Mode::MultiBinded => "multi_binded",
            Mode::NatGateway => "nat_gateway",
        }
    }

    /// The JSON `alg_policy` field (NAT only).
    pub fn alg_policy(self) -> Option<AlgAction> {
        match self {
            Mode::Nat(a) => Some(a),
            _ => None,
        }
    }

    /// The `--modes` spelling: `nat-drop`, `nat-pass`, `nat-inspect`, `binded`, `multi_binded`,
    /// `natgw`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Nat(AlgAction::Drop) => "nat-drop",
            Mode::Nat(AlgAction::Pass) => "nat-pass",
            Mode::Nat(AlgAction::Inspect) => "nat-inspect",
            Mode::Binded => "binded",
            Mode::MultiBinded => "multi_binded",
            Mode::NatGateway => "natgw",
        }
    }

    /// Reads one `--modes` entry; `nat` stands for the three NAT columns (not the NAT
    /// gateway's: `natgw`, also spelled `nat_gateway`).
    pub fn parse_list(s: &str) -> Result<Vec<Mode>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let p = part.to_ascii_lowercase().replace('-', "_");
            let found: Vec<Mode> = match p.as_str() {
                "nat" => Mode::ALL[..3].to_vec(),
                "multi_binded" | "multibinded" => vec![Mode::MultiBinded],
                "natgw" | "nat_gw" | "nat_gateway" | "natgateway" => vec![Mode::NatGateway],
                _ => Mode::ALL
                    .into_iter()
                    .filter(|m| m.name().replace('-', "_") == p)
                    .collect(),
            };
            if found.is_empty() {
                return Err(format!(
                    "--modes: unknown mode {part:?}; use nat (all three NAT policies), nat-drop, \
                     nat-pass, nat-inspect, binded, multi_binded or natgw (NAT gateway), \
                     separated by commas"
                ));
            }
            for m in found {
                if !out.contains(&m) {
                    out.push(m);
                }
            }
        }
        if out.is_empty() {
            return Err("--modes: name at least one mode".into());
        }
        Ok(out)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Nat(a) => write!(f, "NAT ({a})"),
            Mode::Binded => f.write_str("BINDED"),
            Mode::MultiBinded => f.write_str("MULTI_BINDED"),
            Mode::NatGateway => f.write_str("NAT gateway"),
        }
    }
}

/// Which side of the EIP the server is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// The server in the instance, the client on the internet (dialling the EIP).
    ServerInInstance,
    /// The client in the instance, the server on the internet.
    ClientInInstance,
}

impl Placement {
    pub const ALL: [Placement; 2] = [Placement::ServerInInstance, Placement::ClientInInstance];

    pub fn name(self) -> &'static str {
        match self {
            Placement::ServerInInstance => "server_in_instance",
            Placement::ClientInInstance => "client_in_instance",
        }
    }

    /// Words for the matrix.
    pub fn words(self) -> &'static str {
        match self {
            Placement::ServerInInstance => "server in instance",
            Placement::ClientInInstance => "client in instance",
        }
    }
}

/// A row's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Works,
    Broken,
    NotTested,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Works => "works",
            Outcome::Broken => "broken",
            Outcome::NotTested => "not_tested",
        }
    }
}

/// A protocol run by a probe script (`peers/<script>.py`), possibly in one of several ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The JSON `protocol` field and the `--protocols` name.
    pub protocol: &'static str,
    /// The way it is run (`pasv`, `epsv`, `port`, `eprt` for FTP), passed as `--variant`.
    pub variant: Option<&'static str>,
    /// How the matrix names it.
    pub label: &'static str,
    /// Which ALG protocol the gateway classifies it as.
    pub alg: AlgProtocol,
    /// The server's port (the protocol's well-known port, which the gateway classifies by).
    pub port: u16,
    /// Only the signalling is exercised (H.323: no packaged peer).
    pub signalling_only: bool,
}

/// Every built-in probe, in the matrix's order.
pub const PROBES: &[Probe] = &[
    Probe {
        protocol: "ftp",
        variant: Some("pasv"),
        label: "FTP passive (PASV)",
        alg: AlgProtocol::Ftp,
        port: 21,
        signalling_only: false,
    },
    Probe {
        protocol: "ftp",
        variant: Some("epsv"),
        label: "FTP passive (EPSV)",
        alg: AlgProtocol::Ftp,
        port: 21,
        signalling_only: false,
    },
    Probe {
        protocol: "ftp",
        variant: Some("port"),
        label: "FTP active (PORT)",
        alg: AlgProtocol::Ftp,
        port: 21,
        signalling_only: false,
    },
    Probe {
        protocol: "ftp",
        variant: Some("eprt"),
        label: "FTP active (EPRT)",
        alg: AlgProtocol::Ftp,
        port: 21,
        signalling_only: false,
    },
    Probe {
        protocol: "sip",
        variant: None,
        label: "SIP call + RTP",
        alg: AlgProtocol::Sip,
        port: 5060,
        signalling_only: false,
    },
    Probe {
        protocol: "tftp",
        variant: None,
        label: "TFTP read + write",
        alg: AlgProtocol::Tftp,
        port: 69,
        signalling_only: false,
    },
    Probe {
        protocol: "dns",
        variant: None,
        label: "DNS A + SRV, UDP + TCP",
        alg: AlgProtocol::Dns,
        port: 53,
        signalling_only: false,
    },
    Probe {
        protocol: "rtsp",
        variant: None,
        label: "RTSP play (RTP/UDP)",
        alg: AlgProtocol::Rtsp,
        port: 554,
        signalling_only: false,
    },
    Probe {
        protocol: "h323",
        variant: None,
        label: "H.323 SETUP (signalling only)",
        alg: AlgProtocol::H323,
        port: 1720,
        signalling_only: true,
    },
];

/// The probes `--protocols` names (`ftp` takes every FTP way; `ftp-pasv` one of them).
pub fn select_probes(list: &str) -> Result<Vec<Probe>, String> {
    let mut out: Vec<Probe> = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let p = part.to_ascii_lowercase().replace(['_', '.'], "-");
        let found: Vec<Probe> = PROBES
            .iter()
            .filter(|pr| {
                let full = match pr.variant {
                    Some(v) => format!("{}-{v}", pr.protocol),
                    None => pr.protocol.to_string(),
                };
                p == pr.protocol || p == full || (p == "h-323" && pr.protocol == "h323")
            })
            .copied()
            .collect();
        if found.is_empty() {
            return Err(format!(
                "--protocols: unknown protocol {part:?}; use {} (or ftp-pasv, ftp-epsv, ftp-port, \
                 ftp-eprt for one FTP way), separated by commas",
                protocol_names().join(", ")
            ));
        }
        for f in found {
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    if out.is_empty() {
        return Err("--protocols: name at least one protocol".into());
    }
    Ok(out)
}

/// The distinct `--protocols` names.
pub fn protocol_names() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = PROBES.iter().map(|p| p.protocol).collect();
    v.dedup();
    v
}

/// One cell of the matrix, as `--json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub protocol: String,
    /// The way it was run (FTP: `pasv`, `epsv`, `port`, `eprt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// `nat`, `binded`, `multi_binded` or `nat_gateway`.
    pub mode: String,
    /// NAT only: `drop`, `pass` or `inspect`; `null` otherwise.
    pub alg_policy: Option<String>,
    pub placement: Placement,
    pub result: Outcome,
    /// Why, in a network engineer's words.
    pub reason: String,
    /// What the reason rests on: the client's steps, the gateway's drops, inspect's findings,
    /// the server's own account.
    #[serde(default)]
    pub evidence: Vec<String>,
    /// The EIP and the instance the row ran across.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

impl Row {
    /// The key rows are matched on (`--expect`): protocol, variant, mode, policy, placement.
    pub fn key(&self) -> (String, Option<String>, String, Option<String>, Placement) {
        (
            self.protocol.clone(),
            self.variant.clone(),
            self.mode.clone(),
            self.alg_policy.clone(),
            self.placement,
        )
    }

    /// `ftp (pasv)`, `sip`: how messages name the row's protocol.
    pub fn protocol_words(&self) -> String {
        match &self.variant {
            Some(v) => format!("{} ({v})", self.protocol),
            None => self.protocol.clone(),
        }
    }

    /// `nat/pass`, `binded`: how messages name the row's mode.
    pub fn mode_words(&self) -> String {
        match &self.alg_policy {
            Some(p) => format!("{}/{p}", self.mode),
            None => self.mode.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
