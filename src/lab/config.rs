//! The lab (topology) file: TOML in, plain typed structs out (SPEC §5, `docs/lab-file.md`).
//!
//! [`parse`] works in three stages and reports every problem of a stage at once:
//!
//! 1. TOML syntax (the parser recovers, so several syntax errors are listed together);
//! 2. shape: each section and each `[[table]]` element is deserialized on its own, with
//!    `deny_unknown_fields` everywhere, so an unknown key or a wrong type in one element does not
//!    hide the problems of the others;
//! 3. meaning: ids unique, references resolved, addresses inside their ranges, ranges disjoint.
//!    It runs when stage 2 found nothing, because its checks need every element.
//!
//! Every [`LabFileIssue`] names the field (`instance[1].enis[0].private_ips[2]`), its line, what
//! is wrong and what to do. Defaults that depend on other fields (a resource's region, a vSwitch
//! gateway, the internet gateway, an ENI's vSwitch) are filled in by [`parse`], so a [`LabFile`]
//! holds resolved values. Cloud rules (association modes, quotas, statuses) are not checked here:
//! the cloud model applies them and answers with the cloud's error codes.

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::str::FromStr;

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

/// The region of every resource that does not name its own.
pub const DEFAULT_REGION: &str = "cn-shanghai";

// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------

/// Parses and validates a lab file.
pub fn parse(text: &str) -> Result<LabFile, LabFileError> {
    let (tree, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        let issues = syntax
            .iter()
            .map(|e| LabFileIssue {
                path: String::new(),
                line: e.span().map(|s| line_of(text, s.start)),
                message: format!(
                    "TOML syntax error: {}: fix the TOML syntax here",
                    one_line(e.message())
                ),
            })
            .collect();
        return Err(LabFileError::Invalid { file: None, issues });
    }
    let root = tree.get_ref();
    let mut check = Check {
        root,
        text,
        issues: Vec::new(),
    };
    let lab = check.shape(root);
    if check.issues.is_empty() {
        let mut lab = lab;
        check.resolve_defaults(&mut lab);
        validate(&lab, &mut check);
        if check.issues.is_empty() {
            return Ok(lab);
        }
    }
    let mut issues = check.issues;
    issues.sort_by_key(|i| i.line.unwrap_or(usize::MAX));
    Err(LabFileError::Invalid { file: None, issues })
}

/// Reads, parses and validates the lab file at `path`.
pub fn load(path: &FsPath) -> Result<LabFile, LabFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| LabFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|e| match e {
        LabFileError::Invalid { issues, .. } => LabFileError::Invalid {
            file: Some(path.to_path_buf()),
            issues,
        },
        other => other,
    })
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a lab file was refused.
#[derive(Debug, thiserror::Error)]
pub enum LabFileError {
    /// The file could not be read.
    #[error("cannot read lab file {}: {source}: check the path and its permissions", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file was read but is not a valid lab file; every problem found is listed.
    #[error("{}", render_issues(file.as_deref(), issues))]
    Invalid {
        /// The file, when it came from [`load`].
        file: Option<PathBuf>,
        /// Sorted by line.
        issues: Vec<LabFileIssue>,
    },
}

impl LabFileError {
    /// The problems found (empty for [`LabFileError::Read`]).
    pub fn issues(&self) -> &[LabFileIssue] {
        match self {
            LabFileError::Read { .. } => &[],
            LabFileError::Invalid { issues, .. } => issues,
        }
    }
}

/// One problem in a lab file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabFileIssue {
    /// The field, e.g. `instance[1].enis[0].private_ips[2]`; empty for syntax errors.
    pub path: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for LabFileIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

fn render_issues(file: Option<&FsPath>, issues: &[LabFileIssue]) -> String {
    let name = file.map_or_else(
        || "lab file".to_owned(),
        |p| format!("lab file {}", p.display()),
    );
    let count = match issues.len() {
        1 => "1 problem".to_owned(),
        n => format!("{n} problems"),
    };
    let mut out = format!("{name} is not valid ({count}):");
    for issue in issues {
        out.push_str("\n  ");
        match (file, issue.line) {
            (Some(p), Some(line)) => out.push_str(&format!("{}:{line}: ", p.display())),
            (None, Some(line)) => out.push_str(&format!("line {line}: ")),
            _ => {}
        }
        if !issue.path.is_empty() {
            out.push_str(&issue.path);
            out.push_str(": ");
        }
        out.push_str(&issue.message);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The lab file
// ---------------------------------------------------------------------------------------------

/// A parsed, validated lab file. Field names are the lab file's keys.
#[derive(Debug, Clone, PartialEq)]
pub struct LabFile {
    pub region: String,
    pub internet: Internet,
    pub api: Api,
    pub vpc: Vpc,
    pub account: Account,
    pub alg: Alg,
    pub vswitch: Vec<VSwitch>,
    pub instance: Vec<Instance>,
    /// Detached secondary ENIs.
    pub eni: Vec<Eni>,
    pub eip: Vec<Eip>,
    pub association: Vec<Association>,
    pub nat_gateway: Vec<NatGateway>,
    pub snat_entry: Vec<SnatEntry>,
    pub forward_entry: Vec<ForwardEntry>,
    pub havip: Vec<HaVip>,
    pub load_balancer: Vec<LoadBalancer>,
}

impl Default for LabFile {
    fn default() -> Self {
        LabFile {
            region: DEFAULT_REGION.to_owned(),
            internet: Internet::default(),
            api: Api::default(),
            vpc: Vpc::default(),
            account: Account::default(),
            alg: Alg::default(),
            vswitch: Vec::new(),
            instance: Vec::new(),
            eni: Vec::new(),
            eip: Vec::new(),
            association: Vec::new(),
            nat_gateway: Vec::new(),
            snat_entry: Vec::new(),
            forward_entry: Vec::new(),
            havip: Vec::new(),
            load_balancer: Vec::new(),
        }
    }
}

impl LabFile {
    /// The VPC's address blocks: `[vpc] cidr` when given, else the vSwitches' CIDRs.
    pub fn vpc_cidrs(&self) -> Vec<Cidr> {
        match self.vpc.cidr {
            Some(cidr) => vec![cidr],
            None => self.vswitch.iter().map(|s| s.cidr).collect(),
        }
    }

    pub fn find_vswitch(&self, id: &str) -> Option<&VSwitch> {
        self.vswitch.iter().find(|s| s.id == id)
    }

    pub fn find_instance(&self, id: &str) -> Option<&Instance> {
        self.instance.iter().find(|i| i.id == id)
    }

    pub fn find_eip(&self, allocation_id: &str) -> Option<&Eip> {
        self.eip.iter().find(|e| e.allocation_id == allocation_id)
    }
}

/// `[internet]`: the namespace standing for the public Internet.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Internet {
    /// Internet hosts; the echo service is on the first host (203.0.113.1).
    #[serde(default = "default_internet_cidr")]
    pub cidr: Cidr,
    /// Where EIP addresses come from; a string or an array of CIDRs in the file.
    #[serde(default = "default_eip_pool", deserialize_with = "de_cidr_list")]
    pub eip_pool: Vec<Cidr>,
    /// The cloud gateway's internet-side address; default: the last host of `cidr` (.254).
    #[serde(default = "unset_ip", deserialize_with = "de_ip")]
    pub gateway: Ipv4Addr,
}

impl Default for Internet {
    fn default() -> Self {
        let cidr = default_internet_cidr();
        Internet {
            cidr,
            eip_pool: default_eip_pool(),
            gateway: cidr.last_host(),
        }
    }
}

impl Internet {
    /// The echo service's address: the first host of `cidr`.
    pub fn echo_address(&self) -> Ipv4Addr {
        self.cidr.first_host()
    }
}

/// `[api]`: the cloud API endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Api {
    #[serde(default = "default_listen", deserialize_with = "de_socket_addr")]
    pub listen: SocketAddr,
    #[serde(default = "default_access_keys")]
    pub access_keys: Vec<AccessKey>,
    /// How long an EIP stays Associating/Unassociating and an instance Starting/Stopping.
    #[serde(default = "default_transition_ms")]
    pub transition_ms: u64,
}

impl Default for Api {
    fn default() -> Self {
        Api {
            listen: default_listen(),
            access_keys: default_access_keys(),
            transition_ms: default_transition_ms(),
        }
    }
}

/// One AccessKey pair accepted by the API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKey {
    pub id: String,
    pub secret: String,
}

/// `[vpc]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vpc {
    #[serde(default = "default_vpc_id")]
    pub id: String,
    /// `None`: the VPC is the union of the vSwitches' CIDRs (see [`LabFile::vpc_cidrs`]).
    #[serde(default)]
    pub cidr: Option<Cidr>,
    /// Drop packets whose source the sending ENI does not own (D6).
    #[serde(default = "yes")]
    pub source_check: bool,
}

impl Default for Vpc {
    fn default() -> Self {
        Vpc {
            id: default_vpc_id(),
            cidr: None,
            source_check: true,
        }
    }
}

/// `[account]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// Whether MULTI_BINDED associations are open to this account.
    #[serde(default = "yes")]
    pub multi_binded: bool,
}

impl Default for Account {
    fn default() -> Self {
        Account { multi_binded: true }
    }
}

/// `[alg]`: NAT-mode policy per ALG-dependent protocol (D3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Alg {
    pub sip: AlgPolicy,
    pub h323: AlgPolicy,
    pub rtsp: AlgPolicy,
    pub dns: AlgPolicy,
    pub ftp: AlgPolicy,
    pub tftp: AlgPolicy,
}

impl Alg {
    /// The engine's policy for these settings.
    pub fn policy(&self) -> crate::alg::AlgPolicy {
        use crate::alg::{AlgAction, AlgPolicy as Engine, AlgProtocol as P};
        let a = |p: AlgPolicy| match p {
            AlgPolicy::Drop => AlgAction::Drop,
            AlgPolicy::Pass => AlgAction::Pass,
            AlgPolicy::Inspect => AlgAction::Inspect,
        };
        Engine::all(AlgAction::Drop)
            .with(P::Sip, a(self.sip))
            .with(P::H323, a(self.h323))
            .with(P::Rtsp, a(self.rtsp))
            .with(P::Dns, a(self.dns))
            .with(P::Ftp, a(self.ftp))
            .with(P::Tftp, a(self.tftp))
    }
}

/// `[[vswitch]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VSwitch {
    pub id: String,
    pub zone: String,
    pub cidr: Cidr,
    /// Default: two below broadcast (`.253` in a /24).
    #[serde(default = "unset_ip", deserialize_with = "de_ip")]
    pub gateway: Ipv4Addr,
    /// Default: the top-level region.
    #[serde(default)]
    pub region: String,
}

/// `[[instance]]`: an ECS instance, a network namespace in the lab.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    pub id: String,
    pub vswitch: String,
    #[serde(default = "default_instance_type")]
    pub instance_type: String,
    #[serde(default)]
    pub status: InstanceStatus,
    #[serde(default)]
    pub network: NetworkType,
    /// A fixed public IP (such an instance cannot take an EIP).
    #[serde(default, deserialize_with = "de_opt_ip")]
    pub public_ip: Option<Ipv4Addr>,
    #[serde(default = "yes")]
    pub dhcp: bool,
    /// Default: the top-level region.
    #[serde(default)]
    pub region: String,
    /// Attached ENIs; the first is the primary ENI (eth0).
    #[serde(default)]
    pub enis: Vec<AttachedEni>,
    /// Overrides the instance type's ENI limit.
    #[serde(default)]
    pub max_enis: Option<u32>,
    /// Overrides the instance type's private-IP-per-ENI limit.
    #[serde(default)]
    pub max_private_ips_per_eni: Option<u32>,
}

/// An element of `[[instance]] enis`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachedEni {
    pub id: String,
    /// The first is the ENI's primary private IP.
    #[serde(deserialize_with = "de_ips")]
    pub private_ips: Vec<Ipv4Addr>,
    /// Default: the instance's vSwitch.
    #[serde(default)]
    pub vswitch: String,
    /// `false` leaves the interface unconfigured in the guest.
    #[serde(default = "yes")]
    pub configure: bool,
}

/// `[[eni]]`: a detached secondary ENI.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eni {
    pub id: String,
    pub vswitch: String,
    /// The first is the ENI's primary private IP.
    #[serde(deserialize_with = "de_ips")]
    pub private_ips: Vec<Ipv4Addr>,
    #[serde(default = "yes")]
    pub configure: bool,
    /// Default: the top-level region.
    #[serde(default)]
    pub region: String,
}

/// `[[eip]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eip {
    pub allocation_id: String,
    #[serde(deserialize_with = "de_ip")]
    pub address: Ipv4Addr,
    /// Mbit/s.
    #[serde(default = "default_bandwidth")]
    pub bandwidth: u32,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub internet_charge_type: InternetChargeType,
    #[serde(default)]
    pub instance_charge_type: InstanceChargeType,
    /// Default: the top-level region.
    #[serde(default)]
    pub region: String,
}

/// `[[association]]`: the fields of AssociateEipAddress.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Association {
    pub allocation_id: String,
    pub instance_id: String,
    #[serde(default)]
    pub instance_type: AssociationInstanceType,
    #[serde(default)]
    pub mode: AssociationMode,
    #[serde(default, deserialize_with = "de_opt_ip")]
    pub private_ip_address: Option<Ipv4Addr>,
}

/// `[[nat_gateway]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatGateway {
    pub id: String,
    pub vswitch: String,
    /// `None`: a free address of the vSwitch is chosen when the lab is built.
    #[serde(default, deserialize_with = "de_opt_ip")]
    pub private_ip: Option<Ipv4Addr>,
    #[serde(default = "default_created")]
    pub created: Date,
    /// Default: the top-level region.
    #[serde(default)]
    pub region: String,
    // The NAPT's behaviour ([`NatGateway::napt_config`]); each defaults to the cloud's
    // ([`crate::napt::NaptConfig::cloud`]).
    /// Which flows of a host share an external port (RFC 4787 §4.1).
    #[serde(default = "default_nat_mapping")]
    pub mapping: NatBehaviour,
    /// Which remotes may send through a mapping (RFC 4787 §5).
    #[serde(default = "default_nat_filtering")]
    pub filtering: NatBehaviour,
    /// Keep the host's source port when it is free (RFC 4787 REQ-3).
    #[serde(default = "default_port_preservation")]
    pub port_preservation: bool,
    /// How an SNAT entry with several EIPs picks one (RFC 4787 REQ-2).
    #[serde(default = "default_nat_pooling")]
    pub pooling: NatPooling,
    /// Whether hosts reach each other through the gateway's EIPs (RFC 4787 REQ-9).
    #[serde(default = "default_hairpinning")]
    pub hairpinning: bool,
    /// The idle timeouts the four `*_timeout` keys start from.
    #[serde(default)]
    pub timeouts: NatTimeouts,
    /// Seconds, overriding `timeouts`.
    #[serde(default)]
    pub tcp_established_timeout: Option<u64>,
    #[serde(default)]
    pub tcp_transitory_timeout: Option<u64>,
    #[serde(default)]
    pub udp_timeout: Option<u64>,
    #[serde(default)]
    pub icmp_timeout: Option<u64>,
    /// The session table's bound.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: u64,
    /// The external ports (and ICMP identifiers) SNAT allocates.
    #[serde(default = "default_nat_ports")]
    pub ports: PortRange,
}

impl NatGateway {
    /// The most sessions `max_sessions` may allow.
    pub const MAX_SESSIONS: u64 = 1 << 24;
    /// The longest idle timeout, in seconds (a week).
    pub const MAX_TIMEOUT_S: u64 = 7 * 24 * 3600;

    /// The gateway's NAPT configuration: `timeouts`' idle timeouts with the `*_timeout`
    /// overrides, and the other keys as given (each the cloud's when absent).
    pub fn napt_config(&self) -> crate::napt::NaptConfig {
        use crate::napt::NaptConfig;
        let base = match self.timeouts {
            NatTimeouts::Cloud => NaptConfig::cloud(),
            NatTimeouts::Rfc => NaptConfig::rfc_minimums(),
        };
        let ns = |secs: Option<u64>, preset: u64| {
            secs.map_or(preset, |s| s.saturating_mul(1_000_000_000))
        };
        NaptConfig {
            mapping: self.mapping.behaviour(),
            filtering: self.filtering.behaviour(),
            port_preservation: self.port_preservation,
            pooling: self.pooling.pooling(),
            hairpinning: self.hairpinning,
            tcp_established_ns: ns(self.tcp_established_timeout, base.tcp_established_ns),
            tcp_transitory_ns: ns(self.tcp_transitory_timeout, base.tcp_transitory_ns),
            udp_ns: ns(self.udp_timeout, base.udp_ns),
            icmp_ns: ns(self.icmp_timeout, base.icmp_ns),
            max_sessions: usize::try_from(self.max_sessions).unwrap_or(usize::MAX),
            ports: self.ports.first..=self.ports.last,
        }
    }

    /// Gateways created on or after this day take a private IP of their vSwitch per EIP
    /// (SPEC §3: "since" includes the day).
    pub const PRIVATE_IP_PER_EIP_SINCE: Date = Date {
        year: 2022,
        month: 9,
        day: 19,
    };

    /// Whether each EIP of this gateway takes a private IP of its vSwitch.
    pub fn eip_takes_private_ip(&self) -> bool {
        self.created >= Self::PRIVATE_IP_PER_EIP_SINCE
    }
}

/// `[[snat_entry]]`: the fields of CreateSnatEntry. Exactly one of `source_cidr` and
/// `source_vswitch_id` is set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnatEntry {
    #[serde(default)]
    pub id: Option<String>,
    pub nat_gateway: String,
    #[serde(default)]
    pub source_cidr: Option<Cidr>,
    #[serde(default)]
    pub source_vswitch_id: Option<String>,
    /// A comma-separated string (or an array) of EIP addresses in the file.
    #[serde(deserialize_with = "de_ip_list")]
    pub snat_ip: Vec<Ipv4Addr>,
}

/// `[[forward_entry]]`: DNAT, the fields of CreateForwardEntry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardEntry {
    #[serde(default)]
    pub id: Option<String>,
    pub nat_gateway: String,
    #[serde(deserialize_with = "de_ip")]
    pub external_ip: Ipv4Addr,
    pub external_port: ForwardPort,
    #[serde(deserialize_with = "de_ip")]
    pub internal_ip: Ipv4Addr,
    pub internal_port: ForwardPort,
    pub ip_protocol: IpProtocol,
}

/// `[[havip]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaVip {
    pub id: String,
    pub vswitch: String,
    /// `None`: a free address of the vSwitch is chosen when the lab is built.
    #[serde(default, deserialize_with = "de_opt_ip")]
    pub ip_address: Option<Ipv4Addr>,
    #[serde(default)]
    pub status: HaVipStatus,
    /// Instance ids; the first holds the HaVip.
    #[serde(default)]
    pub associated_instances: Vec<String>,
    /// Default: the top-level region.
    #[serde(default)]
    pub region: String,
}

/// `[[load_balancer]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancer {
    pub id: String,
    #[serde(default)]
    pub r#type: LoadBalancerType,
    #[serde(default)]
    pub address_type: AddressType,
    #[serde(default)]
    pub network: NetworkType,
    /// Required for an intranet load balancer in a VPC.
    #[serde(default)]
    pub vswitch: Option<String>,
    #[serde(default, deserialize_with = "de_opt_ip")]
    pub address: Option<Ipv4Addr>,
    /// Instance ids, each with weight 100.
    #[serde(default)]
    pub backends: Vec<String>,
    /// Backends with a weight (`[[load_balancer.backend]]`).
    #[serde(default)]
    pub backend: Vec<LbBackend>,
    /// What it serves (`[[load_balancer.listener]]`): without a listener it carries nothing.
    #[serde(default)]
    pub listener: Vec<LbListener>,
    /// The connection table's bound: a new connection beyond it is refused.
    #[serde(default = "default_max_connections")]
    pub max_connections: u64,
    /// Default: the top-level region.
    #[serde(default)]
    pub region: String,
}

fn default_max_connections() -> u64 {
    1_000_000
}
fn default_weight() -> u16 {
    100
}

/// `[[load_balancer.backend]]`: a backend server with its weight.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbBackend {
    pub instance: String,
    /// 0–100 (the CLB console's range); 0 takes no new connections.
    #[serde(default = "default_weight")]
    pub weight: u16,
}

/// `[[load_balancer.listener]]`: a layer-4 listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbListener {
    pub protocol: LbProtocol,
    pub port: u16,
    /// Default: `port`.
    #[serde(default)]
    pub backend_port: Option<u16>,
    #[serde(default)]
    pub scheduler: LbScheduler,
    /// Seconds a connection lives without packets (default: TCP 900, UDP 90).
    #[serde(default)]
    pub idle_timeout: Option<u64>,
    #[serde(default)]
    pub health_check: LbHealthCheck,
}

/// A listener's health check (the CLB's defaults: on, the backend port, every 2 s, 5 s to
/// answer, 3 failures down, 3 successes up).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbHealthCheck {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Default: the listener's backend port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Seconds between checks, 1–50.
    #[serde(default = "default_hc_interval")]
    pub interval: u32,
    /// Seconds a check waits for its answer, 1–300.
    #[serde(default = "default_hc_timeout")]
    pub timeout: u32,
    /// Successes in a row that bring a failed backend back, 2–10.
    #[serde(default = "default_hc_threshold")]
    pub healthy_threshold: u8,
    /// Failures in a row that take a backend out, 2–10.
    #[serde(default = "default_hc_threshold")]
    pub unhealthy_threshold: u8,
}

impl Default for LbHealthCheck {
    fn default() -> Self {
        LbHealthCheck {
            enabled: true,
            port: None,
            interval: default_hc_interval(),
            timeout: default_hc_timeout(),
            healthy_threshold: default_hc_threshold(),
            unhealthy_threshold: default_hc_threshold(),
        }
    }
}

fn default_hc_interval() -> u32 {
    2
}
fn default_hc_timeout() -> u32 {
    5
}
fn default_hc_threshold() -> u8 {
    3
}

impl LabFile {
    /// The ENIs whose guest configuration the file turns off (`configure = false`).
    pub fn unconfigured_enis(&self) -> std::collections::BTreeSet<String> {
        let enis = self.eni.iter().map(|e| (&e.id, e.configure));
        let inst = self
            .instance
            .iter()
            .flat_map(|i| i.enis.iter().map(|e| (&e.id, e.configure)));
        enis.chain(inst)
            .filter(|&(_, configure)| !configure)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

impl LoadBalancer {
    /// Every backend with its weight: `backends` (100 each), then `backend`.
    pub fn weighted_backends(&self) -> Vec<(String, u16)> {
        let mut v: Vec<(String, u16)> = self.backends.iter().map(|b| (b.clone(), 100)).collect();
        v.extend(self.backend.iter().map(|b| (b.instance.clone(), b.weight)));
        v
    }

    /// The CLB's configuration with every backend at 0.0.0.0: the control plane puts in
    /// each instance's primary private IP (it knows them once the lab is built). The second
    /// value names each listener's backends, in order.
    pub fn clb_spec(&self) -> crate::control::ClbSpec {
        use crate::clb::{BackendConfig, ClbConfig, HealthCheckConfig, ListenerConfig};
        let backends = self.weighted_backends();
        let listeners = self
            .listener
            .iter()
            .map(|l| {
                let mut c = match l.protocol {
                    LbProtocol::Tcp => ListenerConfig::tcp(l.port),
                    LbProtocol::Udp => ListenerConfig::udp(l.port),
                };
                c.backend_port = l.backend_port.unwrap_or(l.port);
                c.scheduler = match l.scheduler {
                    LbScheduler::Wrr => crate::clb::Scheduler::WeightedRoundRobin,
                    LbScheduler::Rr => crate::clb::Scheduler::RoundRobin,
                };
                if let Some(t) = l.idle_timeout {
                    c.idle_timeout_ns = t.saturating_mul(1_000_000_000);
                }
                let h = &l.health_check;
                c.health = HealthCheckConfig {
                    enabled: h.enabled,
                    port: h.port.unwrap_or(c.backend_port),
                    interval_ms: h.interval.saturating_mul(1000),
                    timeout_ms: h.timeout.saturating_mul(1000),
                    healthy_threshold: h.healthy_threshold,
                    unhealthy_threshold: h.unhealthy_threshold,
                };
                c.backends = backends
                    .iter()
                    .map(|&(_, weight)| BackendConfig {
                        addr: Ipv4Addr::UNSPECIFIED,
                        weight,
                    })
                    .collect();
                c
            })
            .collect();
        crate::control::ClbSpec {
            config: ClbConfig {
                listeners,
                max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            },
            backends: backends.into_iter().map(|(id, _)| id).collect(),
        }
    }
}

fn yes() -> bool {
    true
}
fn unset_ip() -> Ipv4Addr {
    Ipv4Addr::UNSPECIFIED
}
fn default_internet_cidr() -> Cidr {
    Cidr::new(Ipv4Addr::new(203, 0, 113, 0), 24).expect("valid")
}
fn default_eip_pool() -> Vec<Cidr> {
    vec![Cidr::new(Ipv4Addr::new(198, 51, 100, 0), 24).expect("valid")]
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8700))
}
fn default_access_keys() -> Vec<AccessKey> {
    vec![AccessKey {
        id: "LTAIlabkey".to_owned(),
        secret: "lab-secret".to_owned(),
    }]
}
fn default_transition_ms() -> u64 {
    500
}
fn default_vpc_id() -> String {
    "vpc-lab".to_owned()
}
fn default_instance_type() -> String {
    "ecs.g5.large".to_owned()
}
fn default_bandwidth() -> u32 {
    5
}
fn default_nat_mapping() -> NatBehaviour {
    NatBehaviour::of(crate::napt::NaptConfig::cloud().mapping)
}
fn default_nat_filtering() -> NatBehaviour {
    NatBehaviour::of(crate::napt::NaptConfig::cloud().filtering)
}
fn default_port_preservation() -> bool {
    crate::napt::NaptConfig::cloud().port_preservation
}
fn default_nat_pooling() -> NatPooling {
    NatPooling::of(crate::napt::NaptConfig::cloud().pooling)
}
fn default_hairpinning() -> bool {
    crate::napt::NaptConfig::cloud().hairpinning
}
fn default_max_sessions() -> u64 {
    crate::napt::NaptConfig::cloud().max_sessions as u64
}
fn default_nat_ports() -> PortRange {
    let ports = crate::napt::NaptConfig::cloud().ports;
    PortRange {
        first: *ports.start(),
        last: *ports.end(),
    }
}
fn default_created() -> Date {
    Date {
        year: 2024,
        month: 1,
        day: 1,
    }
}

// ---------------------------------------------------------------------------------------------
// Choice fields
// ---------------------------------------------------------------------------------------------

/// A value that is not one of a choice field's spellings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChoiceError {
    pub what: &'static str,
    pub value: String,
    pub allowed: &'static [&'static str],
}

impl fmt::Display for ChoiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a valid {}: expected one of {}",
            self.value,
            self.what,
            self.allowed.join(", ")
        )?;
        if let Some(s) = did_you_mean(&self.value, self.allowed.iter().copied()) {
            write!(f, " (did you mean `{s}`?)")?;
        }
        Ok(())
    }
}

impl std::error::Error for ChoiceError {}

macro_rules! choice {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in documentation order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The spelling used by lab files and the cloud API.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ChoiceError;
            fn from_str(s: &str) -> Result<Self, ChoiceError> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(ChoiceError {
                        what: $what,
                        value: s.to_owned(),
                        allowed: &[$($text),+],
                    }),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                de_str_with(d, |s| s.parse().map_err(|e: ChoiceError| e.to_string()))
            }
        }
    };
}

choice! {
    /// `[alg]` policy for one protocol under NAT mode.
    #[derive(Default)]
    pub enum AlgPolicy ("ALG policy") {
        #[default]
        Drop = "drop",
        Pass = "pass",
        Inspect = "inspect",
    }
}

choice! {
    #[derive(Default)]
    pub enum InstanceStatus ("instance status") {
        #[default]
        Running = "Running",
        Stopped = "Stopped",
        Pending = "Pending",
        Starting = "Starting",
        Stopping = "Stopping",
    }
}

choice! {
    /// An instance's or load balancer's network type.
    #[derive(Default)]
    pub enum NetworkType ("network type") {
        #[default]
        Vpc = "vpc",
        Classic = "classic",
    }
}

choice! {
    #[derive(Default)]
    pub enum InternetChargeType ("internet charge type") {
        #[default]
        PayByTraffic = "PayByTraffic",
        PayByBandwidth = "PayByBandwidth",
    }
}

choice! {
    #[derive(Default)]
    pub enum InstanceChargeType ("instance charge type") {
        #[default]
        PostPaid = "PostPaid",
        PrePaid = "PrePaid",
    }
}

choice! {
    /// AssociateEipAddress `InstanceType`: the kind of resource an EIP is bound to.
    #[derive(Default)]
    pub enum AssociationInstanceType ("instance type") {
        #[default]
        EcsInstance = "EcsInstance",
        NetworkInterface = "NetworkInterface",
        Nat = "Nat",
        HaVip = "HaVip",
        SlbInstance = "SlbInstance",
    }
}

choice! {
    /// AssociateEipAddress `Mode`.
    #[derive(Default)]
    pub enum AssociationMode ("association mode") {
        #[default]
        Nat = "NAT",
        Binded = "BINDED",
        MultiBinded = "MULTI_BINDED",
    }
}

choice! {
    /// CreateForwardEntry `IpProtocol`.
    pub enum IpProtocol ("IP protocol") {
        Tcp = "TCP",
        Udp = "UDP",
        Any = "Any",
    }
}

choice! {
    #[derive(Default)]
    pub enum HaVipStatus ("HaVip status") {
        #[default]
        Available = "Available",
        InUse = "InUse",
    }
}

choice! {
    #[derive(Default)]
    pub enum LoadBalancerType ("load balancer type") {
        #[default]
        Clb = "clb",
        Alb = "alb",
        Nlb = "nlb",
    }
}

choice! {
    /// A CLB listener's protocol (layer 4).
    pub enum LbProtocol ("listener protocol") {
        Tcp = "tcp",
        Udp = "udp",
    }
}

choice! {
    /// A CLB listener's scheduler: weighted round robin (the cloud's default) or round robin.
    #[derive(Default)]
    pub enum LbScheduler ("scheduler") {
        #[default]
        Wrr = "wrr",
        Rr = "rr",
    }
}

choice! {
    #[derive(Default)]
    pub enum AddressType ("address type") {
        #[default]
        Intranet = "intranet",
        Internet = "internet",
    }
}

choice! {
    /// A NAT gateway's mapping or filtering behaviour (RFC 4787 §4.1, §5).
    pub enum NatBehaviour ("NAT behaviour") {
        EndpointIndependent = "endpoint-independent",
        AddressDependent = "address-dependent",
        AddressAndPortDependent = "address-and-port-dependent",
    }
}

impl NatBehaviour {
    pub fn behaviour(self) -> crate::napt::Behaviour {
        use crate::napt::Behaviour as B;
        match self {
            NatBehaviour::EndpointIndependent => B::EndpointIndependent,
            NatBehaviour::AddressDependent => B::AddressDependent,
            NatBehaviour::AddressAndPortDependent => B::AddressAndPortDependent,
        }
    }

    fn of(b: crate::napt::Behaviour) -> Self {
        use crate::napt::Behaviour as B;
        match b {
            B::EndpointIndependent => NatBehaviour::EndpointIndependent,
            B::AddressDependent => NatBehaviour::AddressDependent,
            B::AddressAndPortDependent => NatBehaviour::AddressAndPortDependent,
        }
    }
}

choice! {
    /// How a NAT gateway's SNAT entry with several EIPs picks one (RFC 4787 REQ-2).
    pub enum NatPooling ("pooling") {
        Arbitrary = "arbitrary",
        Paired = "paired",
    }
}

impl NatPooling {
    pub fn pooling(self) -> crate::napt::Pooling {
        match self {
            NatPooling::Arbitrary => crate::napt::Pooling::Arbitrary,
            NatPooling::Paired => crate::napt::Pooling::Paired,
        }
    }

    fn of(p: crate::napt::Pooling) -> Self {
        match p {
            crate::napt::Pooling::Arbitrary => NatPooling::Arbitrary,
            crate::napt::Pooling::Paired => NatPooling::Paired,
        }
    }
}

choice! {
    /// Where a NAT gateway's idle timeouts start from.
    #[derive(Default)]
    pub enum NatTimeouts ("timeouts") {
        /// The cloud's ([`crate::napt::NaptConfig::cloud`]).
        #[default]
        Cloud = "cloud",
        /// The RFCs' minimums ([`crate::napt::NaptConfig::rfc_minimums`]).
        Rfc = "rfc",
    }
}

/// A range of ports, `"first-last"` in the file, 1 <= first <= last <= 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let how = "write \"first-last\" with 1 <= first <= last <= 65535, e.g. \"1024-65535\"";
        let port = |t: &str| match t.trim().parse::<u32>() {
            Ok(p @ 1..=65535) => Some(p as u16),
            _ => None,
        };
        let Some((first, last)) = s
            .split_once('-')
            .and_then(|(a, b)| Some((port(a)?, port(b)?)))
        else {
            return Err(format!("`{s}` is not a port range: {how}"));
        };
        if first > last {
            return Err(format!(
                "`{s}` starts above where it ends: write the lower port first, \"{last}-{first}\""
            ));
        }
        Ok(PortRange { first, last })
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port range \"first-last\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRange, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRange, E> {
                let example = match v {
                    1..=65535 => format!("\"{v}-{v}\" for that port alone"),
                    _ => "\"1024-65535\"".to_owned(),
                };
                Err(E::custom(format!(
                    "`{v}` is not a port range: write a quoted \"first-last\", e.g. {example}"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// A DNAT port: a number 1-65535, or `any` (whole-IP mapping, needs `ip_protocol = "Any"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardPort {
    Any,
    Port(u16),
}

impl fmt::Display for ForwardPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPort::Any => f.write_str("any"),
            ForwardPort::Port(p) => write!(f, "{p}"),
        }
    }
}

impl FromStr for ForwardPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("any") {
            return Ok(ForwardPort::Any);
        }
        match t.parse::<u32>() {
            Ok(p @ 1..=65535) => Ok(ForwardPort::Port(p as u16)),
            _ => Err(format!(
                "`{s}` is not a port: write a number from 1 to 65535 (e.g. \"8080\"), or \"any\" \
                 with ip_protocol = \"Any\" to map the whole IP"
            )),
        }
    }
}

impl Serialize for ForwardPort {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ForwardPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ForwardPort;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number 1-65535 or \"any\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ForwardPort, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ForwardPort, E> {
                v.to_string().parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ForwardPort, E> {
                v.to_string().parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Cidr and Date
// ---------------------------------------------------------------------------------------------

/// An IPv4 block, `a.b.c.d/len`. Parsed blocks have no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub len: u8,
}

/// Why a string is not a CIDR block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("`{0}` is not a CIDR block: write it as a.b.c.d/len, e.g. \"10.0.1.0/24\"")]
    Syntax(String),
    #[error("`{0}` has a prefix length above 32: use 0 to 32")]
    PrefixLength(String),
    #[error("`{input}` has host bits set: write {network} (the block's network address)")]
    HostBits { input: String, network: Cidr },
}

impl Cidr {
    /// `network/len`; refuses `len > 32` and host bits.
    pub fn new(network: Ipv4Addr, len: u8) -> Result<Cidr, CidrError> {
        if len > 32 {
            return Err(CidrError::PrefixLength(format!("{network}/{len}")));
        }
        let cidr = Cidr { network, len };
        if cidr.network() != network {
            return Err(CidrError::HostBits {
                input: format!("{network}/{len}"),
                network: Cidr {
                    network: cidr.network(),
                    len,
                },
            });
        }
        Ok(cidr)
    }

    pub fn mask(&self) -> u32 {
        match self.len {
            0 => 0,
            l => u32::MAX << (32 - u32::from(l.min(32))),
        }
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) & self.mask())
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    /// The number of addresses in the block.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.len.min(32)))
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.network) & self.mask()
    }

    /// Whether `other` lies wholly inside this block.
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        other.len >= self.len && self.contains(other.network)
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains_cidr(other) || other.contains_cidr(self)
    }

    /// Network address + 1 (the echo service in `[internet]`).
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()).saturating_add(1))
    }

    /// Broadcast - 1 (the default internet-side gateway address).
    pub fn last_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.broadcast()).saturating_sub(1))
    }

    /// Broadcast - 2: a vSwitch's default gateway (`.253` in a /24).
    pub fn default_gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.broadcast()).saturating_sub(2))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let syntax = || CidrError::Syntax(s.to_owned());
        let (addr, len) = s.trim().split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let len: u8 = len
            .parse()
            .map_err(|_| CidrError::PrefixLength(s.to_owned()))?;
        Cidr::new(addr, len).map_err(|e| match e {
            CidrError::HostBits { network, .. } => CidrError::HostBits {
                input: s.to_owned(),
                network,
            },
            CidrError::PrefixLength(_) => CidrError::PrefixLength(s.to_owned()),
            other => other,
        })
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_str_with(d, |s| s.parse().map_err(|e: CidrError| e.to_string()))
    }
}

/// A calendar day, `YYYY-MM-DD`. Orders chronologically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Date {
    pub year: u16,
    pub month: u8,
    pub day: u8,
}

impl Date {
    /// A valid date, or `None`.
    pub fn new(year: u16, month: u8, day: u8) -> Option<Date> {
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        let days = match month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => return None,
        };
        (1..=days)
            .contains(&day)
            .then_some(Date { year, month, day })
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl FromStr for Date {
    type Err = String;
    fn from_str(s: &str) -> Result<Date, String> {
        let bad =
            || format!("`{s}` is not a date: write it as \"YYYY-MM-DD\", e.g. \"2024-01-01\"");
        let parts: Vec<&str> = s.trim().split('-').collect();
        let [y, m, d] = parts.as_slice() else {
            return Err(bad());
        };
        if y.len() != 4 || m.len() != 2 || d.len() != 2 {
            return Err(bad());
        }
        let (Ok(y), Ok(m), Ok(d)) = (y.parse(), m.parse(), d.parse()) else {
            return Err(bad());
        };
        Date::new(y, m, d).ok_or_else(bad)
    }
}

impl Serialize for Date {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Date {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Date;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a date \"YYYY-MM-DD\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Date, E> {
                v.parse().map_err(E::custom)
            }
            // A bare TOML date (`created = 2024-01-01`) arrives as toml's datetime map.
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Date, A::Error> {
                let dt =
                    toml::value::Datetime::deserialize(de::value::MapAccessDeserializer::new(map))?;
                match (dt.date, dt.time, dt.offset) {
                    (Some(d), None, None) => Date::new(d.year, d.month, d.day)
                        .ok_or_else(|| de::Error::custom(format!("`{dt}` is not a valid date"))),
                    _ => Err(de::Error::custom(format!(
                        "`{dt}` has a time of day: write the date alone, \"YYYY-MM-DD\""
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Field deserializers with messages that say what to do
// ---------------------------------------------------------------------------------------------

/// Parses a string inside the deserializer, so that toml attaches the value's own span to the
/// error (an element of an array, not the whole array).
struct StrVisitor<F>(F);

impl<T, F: FnOnce(&str) -> Result<T, String>> Visitor<'_> for StrVisitor<F> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.0)(v).map_err(E::custom)
    }
}

fn de_str_with<'de, D: Deserializer<'de>, T>(
    d: D,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    d.deserialize_str(StrVisitor(parse))
}

fn parse_ip(s: &str) -> Result<Ipv4Addr, String> {
    let t = s.trim();
    if let Some((addr, _)) = t.split_once('/') {
        if addr.parse::<Ipv4Addr>().is_ok() {
            return Err(format!(
                "`{s}` is a CIDR block, not an address: write the address alone, e.g. \"{addr}\""
            ));
        }
    }
    t.parse().map_err(|_| {
        format!(
            "`{s}` is not an IPv4 address: write four numbers 0-255 separated by dots, \
             e.g. \"10.0.1.10\""
        )
    })
}

/// An IPv4 address read from a string, with a helpful message.
struct Ip(Ipv4Addr);

impl<'de> Deserialize<'de> for Ip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_str_with(d, |s| parse_ip(s).map(Ip))
    }
}

fn de_ip<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Addr, D::Error> {
    Ip::deserialize(d).map(|ip| ip.0)
}

fn de_opt_ip<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Addr>, D::Error> {
    Ok(Option::<Ip>::deserialize(d)?.map(|ip| ip.0))
}

fn de_ips<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Ipv4Addr>, D::Error> {
    Ok(Vec::<Ip>::deserialize(d)?
        .into_iter()
        .map(|ip| ip.0)
        .collect())
}

/// `"a.b.c.d, e.f.g.h"` or `["a.b.c.d", "e.f.g.h"]`.
fn de_ip_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Ipv4Addr>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<Ipv4Addr>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a comma-separated string of IPv4 addresses")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<Ipv4Addr>, E> {
            if v.trim().is_empty() {
                return Ok(Vec::new());
            }
            v.split(',')
                .map(|s| parse_ip(s.trim()).map_err(E::custom))
                .collect()
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Ipv4Addr>, A::Error> {
            let mut out = Vec::new();
            while let Some(Ip(ip)) = seq.next_element()? {
                out.push(ip);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// `"a.b.c.d/len"` or an array of them.
fn de_cidr_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<Cidr>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a CIDR string or an array of CIDR strings")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<Cidr>, E> {
            v.parse().map(|c| vec![c]).map_err(E::custom)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Cidr>, A::Error> {
            let mut out = Vec::new();
            while let Some(c) = seq.next_element()? {
                out.push(c);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

fn de_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    de_str_with(d, |s| {
        s.trim().parse().map_err(|_| {
            format!(
                "`{s}` is not a socket address: write an IP address and a port, \
                 e.g. \"127.0.0.1:8700\" (host names are not accepted)"
            )
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Paths, lines, suggestions
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A field's place in the file, e.g. `instance[1].enis[0].private_ips[2]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Path(Vec<Seg>);

impl Path {
    fn key(k: &str) -> Path {
        Path(vec![Seg::Key(k.to_owned())])
    }
    fn k(&self, k: &str) -> Path {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_owned()));
        p
    }
    fn join(&self, rel: &Path) -> Path {
        let mut p = self.clone();
        p.0.extend(rel.0.iter().cloned());
        p
    }
    fn i(&self, i: usize) -> Path {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if n == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn table_entry<'a, 'i>(table: &'a DeTable<'i>, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(_, v)| v)
}

/// Follows `path` through the document: the span of the deepest part found, and whether all of
/// it was found.
fn lookup(root: &DeTable<'_>, path: &Path) -> (Option<Range<usize>>, bool) {
    let mut best = None;
    let mut node: Option<&DeValue<'_>> = None;
    for (n, seg) in path.0.iter().enumerate() {
        let child = match seg {
            Seg::Key(k) => {
                let table = if n == 0 {
                    Some(root)
                } else {
                    node.and_then(DeValue::as_table)
                };
                table.and_then(|t| table_entry(t, k))
            }
            Seg::Index(i) => node.and_then(DeValue::as_array).and_then(|a| a.get(*i)),
        };
        match child {
            Some(c) => {
                best = Some(c.span());
                node = Some(c.get_ref());
            }
            None => return (best, false),
        }
    }
    (best, true)
}

/// Appends to `path` the keys and indexes inside `value` whose span holds `at`.
fn locate(value: &Spanned<DeValue<'_>>, at: usize, path: &mut Path) {
    let holds = |r: Range<usize>| r.contains(&at) || (r.is_empty() && r.start == at);
    match value.get_ref() {
        DeValue::Table(t) => {
            // A nested array of tables (`[[a.b]]`) lies outside its parent's span: look
            // inside each value too.
            for (k, v) in t.iter() {
                if holds(k.span()) || within(v, at) {
                    path.0.push(Seg::Key(k.get_ref().to_string()));
                    locate(v, at, path);
                    return;
                }
            }
        }
        DeValue::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                if within(v, at) {
                    path.0.push(Seg::Index(i));
                    locate(v, at, path);
                    return;
                }
            }
        }
        _ => {}
    }
}

/// Whether `at` lies in `value`'s span or in one of its parts' (see [`locate`]).
fn within(value: &Spanned<DeValue<'_>>, at: usize) -> bool {
    let r = value.span();
    if r.contains(&at) || (r.is_empty() && r.start == at) {
        return true;
    }
    match value.get_ref() {
        DeValue::Table(t) => t
            .iter()
            .any(|(k, v)| k.span().contains(&at) || within(v, at)),
        DeValue::Array(a) => a.iter().any(|v| within(v, at)),
        _ => false,
    }
}

/// Removes the key at `rel` (which ends with a key) from `value`.
fn remove_at(value: &mut DeValue<'_>, rel: &[Seg]) -> bool {
    match (rel, value) {
        ([Seg::Key(k)], DeValue::Table(t)) => t.remove(k.as_str()).is_some(),
        ([Seg::Key(k), rest @ ..], DeValue::Table(t)) => t
            .iter_mut()
            .find(|(key, _)| key.get_ref() == k)
            .is_some_and(|(_, v)| remove_at(v.get_mut(), rest)),
        ([Seg::Index(i), rest @ ..], DeValue::Array(a)) => {
            a.get_mut(*i).is_some_and(|v| remove_at(v.get_mut(), rest))
        }
        _ => false,
    }
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The closest candidate, if it is close enough to be a likely typo.
fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = if c.to_ascii_lowercase() == lower {
            0
        } else {
            levenshtein(&lower, &c.to_ascii_lowercase())
        };
        if d <= (word.chars().count() / 3).max(1) && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

fn expected_hint(expected: &str) -> String {
    let e = expected.trim();
    let range =
        |lo: &str, hi: &str| format!("write a whole number from {lo} to {hi}, without quotes");
    match e {
        "u8" => range("0", "255"),
        "u16" => range("0", "65535"),
        "u32" => range("0", "4294967295"),
        "u64" => range("0", "18446744073709551615"),
        "a boolean" => "write true or false, without quotes".to_owned(),
        "a string" => "write the value as a quoted string, e.g. \"...\"".to_owned(),
        "a sequence" => "write an array, e.g. [\"...\", \"...\"]".to_owned(),
        _ if e.starts_with("struct ") || e == "a map" => {
            "write a table: a [section] or an inline table { key = value, ... }".to_owned()
        }
        _ => format!("write {e}"),
    }
}

/// Turns a serde/toml message into one that says what to do, and the missing key, if any.
fn explain(message: &str) -> (String, Option<String>) {
    let message = one_line(message);
    if let Some(rest) = message.strip_prefix("missing field `") {
        let key = rest.trim_end_matches('`').to_owned();
        return (
            format!("missing required key `{key}`: add `{key} = ...` to this table"),
            Some(key),
        );
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (key, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let allowed = backticked(expected);
        if allowed.is_empty() {
            return (
                format!("unknown key `{key}`: this table takes no keys; remove it"),
                None,
            );
        }
        let hint = match did_you_mean(key, allowed.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None if TOP_LEVEL_KEYS.contains(&key) => format!(
                "`{key}` is a top-level key: keys after a [table] header belong to that table, \
                 so move it above the first header;"
            ),
            None => "remove it or fix its name;".to_owned(),
        };
        return (
            format!(
                "unknown key `{key}`: {hint} allowed keys here: {}",
                allowed.join(", ")
            ),
            None,
        );
    }
    for prefix in ["invalid type: ", "invalid value: ", "invalid length "] {
        if message.starts_with(prefix) {
            if let Some((what, expected)) = message.rsplit_once(", expected ") {
                return (format!("{what}: {}", expected_hint(expected)), None);
            }
        }
    }
    (message, None)
}

const TOP_LEVEL_KEYS: &[&str] = &[
    "region",
    "internet",
    "api",
    "vpc",
    "account",
    "alg",
    "vswitch",
    "instance",
    "eni",
    "eip",
    "association",
    "nat_gateway",
    "snat_entry",
    "forward_entry",
    "havip",
    "load_balancer",
];

const CLOUD_SERVICES: Cidr = Cidr {
    network: Ipv4Addr::new(100, 64, 0, 0),
    len: 10,
};

// ---------------------------------------------------------------------------------------------
// Stage 2: shape
// ---------------------------------------------------------------------------------------------

struct Check<'t, 'i> {
    root: &'t DeTable<'i>,
    text: &'t str,
    issues: Vec<LabFileIssue>,
}

impl Check<'_, '_> {
    fn err(&mut self, path: &Path, message: impl Into<String>) {
        let line = lookup(self.root, path)
            .0
            .map(|s| line_of(self.text, s.start));
        self.issues.push(LabFileIssue {
            path: path.to_string(),
            line,
            message: message.into(),
        });
    }

    fn present(&self, path: &Path) -> bool {
        lookup(self.root, path).1
    }

    /// Deserializes `value` (at `path`), reporting every problem in it: after each error the
    /// offending key is removed and the rest is tried again. `None` if anything was wrong.
    fn de<T: DeserializeOwned>(&mut self, value: &Spanned<DeValue<'_>>, path: &Path) -> Option<T> {
        let mut value = value.clone();
        let mut removed: Vec<Path> = Vec::new();
        for _ in 0..100 {
            let err = match T::deserialize(ValueDeserializer::from(value.clone())) {
                Ok(v) => return removed.is_empty().then_some(v),
                Err(e) => e,
            };
            let span = err.span().unwrap_or_else(|| value.span());
            let mut rel = Path::default();
            locate(&value, span.start, &mut rel);
            let (message, missing) = explain(err.message());
            let mut ours = false;
            if let Some(key) = &missing {
                rel.0.push(Seg::Key(key.clone()));
                // A key we removed after reporting it is not missing a second time.
                ours = removed.contains(&rel);
            }
            if !ours {
                self.issues.push(LabFileIssue {
                    path: path.join(&rel).to_string(),
                    line: Some(line_of(self.text, span.start)),
                    message,
                });
            }
            if missing.is_some() {
                // Nothing to remove here: drop the table that lacks the key instead.
                rel.0.pop();
            }
            // Drop the offending key (a whole array when an element is wrong, so that the
            // indexes of later errors stay true) and look for more.
            while matches!(rel.0.last(), Some(Seg::Index(_))) {
                rel.0.pop();
            }
            if rel.0.is_empty() || !remove_at(value.get_mut(), &rel.0) {
                return None;
            }
            removed.push(rel);
        }
        None
    }

    fn section<T: DeserializeOwned + Default>(
        &mut self,
        key: &str,
        value: &Spanned<DeValue<'_>>,
    ) -> T {
        let path = Path::key(key);
        if !value.get_ref().is_table() {
            self.err(
                &path,
                format!("`{key}` must be a table: write [{key}] and its keys on the lines below"),
            );
            return T::default();
        }
        self.de(value, &path).unwrap_or_default()
    }

    fn tables<T: DeserializeOwned>(&mut self, key: &str, value: &Spanned<DeValue<'_>>) -> Vec<T> {
        let path = Path::key(key);
        let Some(array) = value.get_ref().as_array() else {
            self.err(
                &path,
                format!(
                    "`{key}` must be an array of tables: write [[{key}]] (double brackets) \
                     above each one"
                ),
            );
            return Vec::new();
        };
        array
            .iter()
            .enumerate()
            .filter_map(|(i, v)| self.de(v, &path.i(i)))
            .collect()
    }

    fn shape(&mut self, root: &DeTable<'_>) -> LabFile {
        let mut lab = LabFile::default();
        for (key, value) in root.iter() {
            let name: &str = key.get_ref();
            match name {
                "region" => {
                    if let Some(r) = self.de(value, &Path::key("region")) {
                        lab.region = r;
                    }
                }
                "internet" => lab.internet = self.section(name, value),
                "api" => lab.api = self.section(name, value),
                "vpc" => lab.vpc = self.section(name, value),
                "account" => lab.account = self.section(name, value),
                "alg" => lab.alg = self.section(name, value),
                "vswitch" => lab.vswitch = self.tables(name, value),
                "instance" => lab.instance = self.tables(name, value),
                "eni" => lab.eni = self.tables(name, value),
                "eip" => lab.eip = self.tables(name, value),
                "association" => lab.association = self.tables(name, value),
                "nat_gateway" => lab.nat_gateway = self.tables(name, value),
                "snat_entry" => lab.snat_entry = self.tables(name, value),
                "forward_entry" => lab.forward_entry = self.tables(name, value),
                "havip" => lab.havip = self.tables(name, value),
                "load_balancer" => lab.load_balancer = self.tables(name, value),
                other => {
                    let hint = match did_you_mean(other, TOP_LEVEL_KEYS.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => "remove it or fix its name;".to_owned(),
                    };
                    self.issues.push(LabFileIssue {
                        path: other.to_owned(),
                        line: Some(line_of(self.text, key.span().start)),
                        message: format!(
                            "unknown top-level key `{other}`: {hint} allowed keys: {}",
                            TOP_LEVEL_KEYS.join(", ")
                        ),
                    });
                }
            }
        }
        lab
    }

    /// Fills in the defaults that depend on other fields.
    fn resolve_defaults(&self, lab: &mut LabFile) {
        let region = lab.region.clone();
        let fill = |me: &Self, field: &mut String, path: Path, value: &str| {
            if !me.present(&path) {
                *field = value.to_owned();
            }
        };
        if !self.present(&Path::key("internet").k("gateway")) {
            lab.internet.gateway = lab.internet.cidr.last_host();
        }
        for (i, s) in lab.vswitch.iter_mut().enumerate() {
            let p = Path::key("vswitch").i(i);
            if !self.present(&p.k("gateway")) {
                s.gateway = s.cidr.default_gateway();
            }
            fill(self, &mut s.region, p.k("region"), &region);
        }
        for (i, inst) in lab.instance.iter_mut().enumerate() {
            let p = Path::key("instance").i(i);
            fill(self, &mut inst.region, p.k("region"), &region);
            for (j, eni) in inst.enis.iter_mut().enumerate() {
                fill(
                    self,
                    &mut eni.vswitch,
                    p.k("enis").i(j).k("vswitch"),
                    &inst.vswitch,
                );
            }
        }
        macro_rules! regions {
            ($($list:ident),*) => {$(
                for (i, r) in lab.$list.iter_mut().enumerate() {
                    fill(self, &mut r.region, Path::key(stringify!($list)).i(i).k("region"), &region);
                }
            )*};
        }
        regions!(eni, eip, nat_gateway, havip, load_balancer);
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 3: meaning
// ---------------------------------------------------------------------------------------------

/// Ids of one kind, with where each was first declared.
struct Ids<'a> {
    what: &'static str,
    example: &'static str,
    seen: HashMap<&'a str, Path>,
}

impl<'a> Ids<'a> {
    fn new(what: &'static str, example: &'static str) -> Self {
        Ids {
            what,
            example,
            seen: HashMap::new(),
        }
    }

    fn add(&mut self, c: &mut Check<'_, '_>, path: Path, id: &'a str) {
        if !valid_name(c, &path, id, &format!("{} id", self.what), self.example) {
            return;
        }
        match self.seen.get(id) {
            Some(first) => c.err(
                &path,
                format!(
                    "duplicate {} id `{id}`: {first} already uses it; give each {} its own id",
                    self.what, self.what
                ),
            ),
            None => {
                self.seen.insert(id, path);
            }
        }
    }
}

/// Ids and regions: non-empty, letters, digits, `-`, `_`, `.` (they name namespaces).
fn valid_name(c: &mut Check<'_, '_>, path: &Path, value: &str, what: &str, example: &str) -> bool {
    if value.is_empty() {
        c.err(
            path,
            format!("the {what} is empty: write one, e.g. \"{example}\""),
        );
        return false;
    }
    if let Some(bad) = value
        .chars()
        .find(|ch| !(ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.')))
    {
        c.err(
            path,
            format!(
                "{what} `{value}` contains {bad:?}: use only letters, digits, '-', '_' and '.', \
                 e.g. \"{example}\""
            ),
        );
        return false;
    }
    true
}

fn valid_region(c: &mut Check<'_, '_>, path: &Path, value: &str) {
    valid_name(c, path, value, "region", DEFAULT_REGION);
}

/// Reports `value` unless it is one of `known`; `declare` says how to declare it.
fn refer(
    c: &mut Check<'_, '_>,
    path: &Path,
    value: &str,
    what: &str,
    known: &[&str],
    declare: &str,
) -> bool {
    if known.contains(&value) {
        return true;
    }
    let mut message = format!("unknown {what} `{value}`");
    if let Some(s) = did_you_mean(value, known.iter().copied()) {
        message.push_str(&format!(" (did you mean `{s}`?)"));
    }
    if known.is_empty() {
        message.push_str(&format!(": the lab file declares none; add {declare}"));
    } else {
        message.push_str(&format!(
            ": use one of {} or add {declare}",
            known.join(", ")
        ));
    }
    c.err(path, message);
    false
}

/// A private address: inside its vSwitch, a host address, not the gateway, unique in the lab.
fn private_ip(
    c: &mut Check<'_, '_>,
    path: &Path,
    ip: Ipv4Addr,
    vsw: &VSwitch,
    owner: &str,
    seen: &mut HashMap<Ipv4Addr, Path>,
) {
    let (id, cidr) = (&vsw.id, vsw.cidr);
    let problem = if !cidr.contains(ip) {
        Some(format!(
            "{ip} is outside vswitch {id}'s {cidr}: pick an address inside it or put the \
             {owner} on another vswitch"
        ))
    } else if ip == cidr.network() {
        Some(format!(
            "{ip} is the network address of vswitch {id}'s {cidr}: pick a host address such as {}",
            cidr.first_host()
        ))
    } else if ip == cidr.broadcast() {
        Some(format!(
            "{ip} is the broadcast address of vswitch {id}'s {cidr}: pick a host address below it"
        ))
    } else if ip == vsw.gateway {
        Some(format!(
            "{ip} is the gateway of vswitch {id}: pick another address of {cidr}"
        ))
    } else {
        None
    };
    if let Some(problem) = problem {
        c.err(path, problem);
        return;
    }
    match seen.get(&ip) {
        Some(first) => c.err(
            path,
            format!(
                "{ip} is already used by {first}: each private IP has one owner in the lab; \
                 pick another free address of {cidr}"
            ),
        ),
        None => {
            seen.insert(ip, path.clone());
        }
    }
}

/// A public address: inside an EIP pool, not its network/broadcast, unique among public
/// addresses.
fn public_ip(
    c: &mut Check<'_, '_>,
    path: &Path,
    ip: Ipv4Addr,
    pools: &[Cidr],
    seen: &mut HashMap<Ipv4Addr, Path>,
) {
    let Some(pool) = pools.iter().find(|p| p.contains(ip)) else {
        let list: Vec<String> = pools.iter().map(Cidr::to_string).collect();
        c.err(
            path,
            format!(
                "{ip} is outside the EIP pool ({}): pick an address inside it or add its range to \
                 [internet] eip_pool",
                list.join(", ")
            ),
        );
        return;
    };
    if pool.len <= 30 && (ip == pool.network() || ip == pool.broadcast()) {
        c.err(
            path,
            format!(
                "{ip} is the network or broadcast address of the pool {pool}: pick a host \
                 address such as {}",
                pool.first_host()
            ),
        );
        return;
    }
    match seen.get(&ip) {
        Some(first) => c.err(
            path,
            format!(
                "{ip} is already used by {first}: each public address has one owner; pick \
                 another address of {pool}"
            ),
        ),
        None => {
            seen.insert(ip, path.clone());
        }
    }
}

/// An address that must be a host of `cidr` other than `reserved`.
fn host_in(
    c: &mut Check<'_, '_>,
    path: &Path,
    ip: Ipv4Addr,
    cidr: Cidr,
    what: &str,
    reserved: &[(Ipv4Addr, &str)],
) {
    if !cidr.contains(ip) {
        c.err(
            path,
            format!("{what} {ip} is outside {cidr}: pick an address inside it"),
        );
    } else if ip == cidr.network() || ip == cidr.broadcast() {
        c.err(
            path,
            format!(
                "{what} {ip} is the network or broadcast address of {cidr}: pick a host address"
            ),
        );
    } else if let Some((_, name)) = reserved.iter().find(|(r, _)| *r == ip) {
        c.err(
            path,
            format!("{what} {ip} is already {name}: pick another address of {cidr}"),
        );
    }
}

/// A NAT gateway's NAPT numbers (the shape stage checked the words and the port range).
/// A load balancer's weighted backends, listeners and health checks: ranges as the CLB
/// console takes them, one listener per protocol and port, each backend once.
fn validate_clb(c: &mut Check<'_, '_>, p: &Path, lb: &LoadBalancer, inst_known: &[&str]) {
    let mut seen: std::collections::HashSet<&str> =
        lb.backends.iter().map(String::as_str).collect();
    for (j, b) in lb.backend.iter().enumerate() {
        let pj = p.k("backend").i(j);
        refer(
            c,
            &pj.k("instance"),
            &b.instance,
            "instance",
            inst_known,
            &format!("[[instance]] id = \"{}\"", b.instance),
        );
        if !seen.insert(b.instance.as_str()) {
            c.err(
                &pj.k("instance"),
                format!(
                    "{} is a backend twice: list it once, in `backends` (weight 100) or as a \
                     [[load_balancer.backend]] with its weight",
                    b.instance
                ),
            );
        }
        if b.weight > 100 {
            c.err(
                &pj.k("weight"),
                format!(
                    "weight {} is above 100: use 0 to 100 (0 takes no new connections)",
                    b.weight
                ),
            );
        }
    }
    if !lb.listener.is_empty() && lb.r#type != LoadBalancerType::Clb {
        c.err(
            &p.k("listener"),
            format!("listeners are emulated for CLBs only: set type = \"clb\" or remove the listeners of {}", lb.id),
        );
    }
    let mut ports: std::collections::HashSet<(LbProtocol, u16)> = Default::default();
    for (j, l) in lb.listener.iter().enumerate() {
        let pl = p.k("listener").i(j);
        if l.port == 0 {
            c.err(&pl.k("port"), "port 0: use 1 to 65535".to_string());
        }
        if l.backend_port == Some(0) {
            c.err(
                &pl.k("backend_port"),
                "backend_port 0: use 1 to 65535, or remove it for the listener's port".to_string(),
            );
        }
        if !ports.insert((l.protocol, l.port)) {
            c.err(
                &pl.k("port"),
                format!(
                    "a second {} listener on port {}: one listener per protocol and port",
                    l.protocol, l.port
                ),
            );
        }
        if l.idle_timeout == Some(0) {
            c.err(&pl.k("idle_timeout"), "idle_timeout 0 s: use at least 1 second, or remove it for the default (TCP 900, UDP 90)".to_string());
        }
        let h = &l.health_check;
        let ph = pl.k("health_check");
        if h.port == Some(0) {
            c.err(
                &ph.k("port"),
                "port 0: use 1 to 65535, or remove it for the backend port".to_string(),
            );
        }
        for (key, v, lo, hi) in [
            ("interval", h.interval, 1, 50),
            ("timeout", h.timeout, 1, 300),
            ("healthy_threshold", u32::from(h.healthy_threshold), 2, 10),
            (
                "unhealthy_threshold",
                u32::from(h.unhealthy_threshold),
                2,
                10,
            ),
        ] {
            if v < lo || v > hi {
                c.err(
                    &ph.k(key),
                    format!(
                        "{key} = {v} is out of range: use {lo} to {hi}, as the CLB console does"
                    ),
                );
            }
        }
    }
}

fn validate_napt(c: &mut Check<'_, '_>, p: &Path, g: &NatGateway) {
    let preset = match g.timeouts {
        NatTimeouts::Cloud => crate::napt::NaptConfig::cloud(),
        NatTimeouts::Rfc => crate::napt::NaptConfig::rfc_minimums(),
    };
    let max = NatGateway::MAX_TIMEOUT_S;
    for (key, value, preset_ns) in [
        (
            "tcp_established_timeout",
            g.tcp_established_timeout,
            preset.tcp_established_ns,
        ),
        (
            "tcp_transitory_timeout",
            g.tcp_transitory_timeout,
            preset.tcp_transitory_ns,
        ),
        ("udp_timeout", g.udp_timeout, preset.udp_ns),
        ("icmp_timeout", g.icmp_timeout, preset.icmp_ns),
    ] {
        let preset_s = preset_ns / 1_000_000_000;
        match value {
            Some(0) => c.err(
                &p.k(key),
                format!(
                    "{key} is 0 s: an idle timeout is at least 1 second; set one, or remove the \
                     key for timeouts = \"{}\"'s {preset_s} s",
                    g.timeouts
                ),
            ),
            Some(s) if s > max => c.err(
                &p.k(key),
                format!(
                    "{key} = {s} s is longer than a week: set at most {max} seconds, or remove \
                     the key for timeouts = \"{}\"'s {preset_s} s",
                    g.timeouts
                ),
            ),
            _ => {}
        }
    }
    let (most, default) = (NatGateway::MAX_SESSIONS, default_max_sessions());
    if g.max_sessions == 0 {
        c.err(
            &p.k("max_sessions"),
            format!(
                "max_sessions is 0: the gateway could carry no flow; set at least 1 (default \
                 {default})"
            ),
        );
    } else if g.max_sessions > most {
        c.err(
            &p.k("max_sessions"),
            format!(
                "max_sessions = {} is above the lab's bound: set at most {most} (default \
                 {default})",
                g.max_sessions
            ),
        );
    }
}

fn validate(lab: &LabFile, c: &mut Check<'_, '_>) {
    valid_region(c, &Path::key("region"), &lab.region);
    valid_name(
        c,
        &Path::key("vpc").k("id"),
        &lab.vpc.id,
        "VPC id",
        "vpc-lab",
    );
    validate_api(lab, c);
    validate_ranges(lab, c);

    // vSwitches.
    let mut vsw_ids = Ids::new("vswitch", "vsw-a");
    for (i, s) in lab.vswitch.iter().enumerate() {
        let p = Path::key("vswitch").i(i);
        vsw_ids.add(c, p.k("id"), &s.id);
        valid_region(c, &p.k("region"), &s.region);
        if s.zone.trim().is_empty() {
            c.err(
                &p.k("zone"),
                "the zone is empty: name the vswitch's zone, e.g. \"cn-shanghai-b\"",
            );
        }
        if s.cidr.len > 29 {
            c.err(
                &p.k("cidr"),
                format!(
                    "{} is too small for a vswitch: use a /29 or larger block (the cloud allows \
                     /16 to /29), e.g. 10.0.1.0/24",
                    s.cidr
                ),
            );
        } else {
            host_in(c, &p.k("gateway"), s.gateway, s.cidr, "gateway", &[]);
        }
        if let Some(vpc) = lab.vpc.cidr {
            if !vpc.contains_cidr(&s.cidr) {
                c.err(
                    &p.k("cidr"),
                    format!(
                        "vswitch {}'s {} is outside the VPC's {vpc}: pick a block inside the VPC \
                         or widen [vpc] cidr",
                        s.id, s.cidr
                    ),
                );
            }
        }
        for (j, other) in lab.vswitch[..i].iter().enumerate() {
            if s.cidr.overlaps(&other.cidr) {
                c.err(
                    &p.k("cidr"),
                    format!(
                        "{} overlaps vswitch[{j}] ({}, {}): the vswitches of a VPC must not \
                         overlap; pick a disjoint block",
                        s.cidr, other.id, other.cidr
                    ),
                );
            }
        }
    }
    let vswitches: HashMap<&str, &VSwitch> = lab
        .vswitch
        .iter()
        .rev()
        .map(|s| (s.id.as_str(), s))
        .collect();
    let vsw_known: Vec<&str> = lab.vswitch.iter().map(|s| s.id.as_str()).collect();
    let declare_vsw = |id: &str| format!("[[vswitch]] id = \"{id}\"");

    let pools = &lab.internet.eip_pool;
    let mut private = HashMap::new();
    let mut public = HashMap::new();
    let mut eni_ids = Ids::new("ENI", "eni-web1");

    // EIPs first, so that other public addresses are compared with them.
    let mut eip_ids = Ids::new("EIP", "eip-web");
    for (i, e) in lab.eip.iter().enumerate() {
        let p = Path::key("eip").i(i);
        eip_ids.add(c, p.k("allocation_id"), &e.allocation_id);
        valid_region(c, &p.k("region"), &e.region);
        public_ip(c, &p.k("address"), e.address, pools, &mut public);
        if e.bandwidth == 0 {
            c.err(
                &p.k("bandwidth"),
                "bandwidth is 0 Mbit/s: set at least 1 (default 5)",
            );
        }
    }

    // Instances and their ENIs.
    let mut inst_ids = Ids::new("instance", "i-web");
    for (i, inst) in lab.instance.iter().enumerate() {
        let p = Path::key("instance").i(i);
        inst_ids.add(c, p.k("id"), &inst.id);
        valid_region(c, &p.k("region"), &inst.region);
        refer(
            c,
            &p.k("vswitch"),
            &inst.vswitch,
            "vswitch",
            &vsw_known,
            &declare_vsw(&inst.vswitch),
        );
        if inst.instance_type.trim().is_empty() {
            c.err(
                &p.k("instance_type"),
                "the instance type is empty: name one, e.g. \"ecs.g5.large\" (the default)",
            );
        }
        if inst.enis.is_empty() {
            c.err(
                &p.k("enis"),
                format!(
                    "instance {} has no ENI: add enis = [{{ id = \"eni-...\", private_ips = \
                     [\"...\"] }}]; the first is the primary ENI (eth0)",
                    inst.id
                ),
            );
        }
        match inst.max_enis {
            Some(0) => c.err(
                &p.k("max_enis"),
                "max_enis is 0: set at least 1 or remove it",
            ),
            Some(n) if (n as usize) < inst.enis.len() => c.err(
                &p.k("max_enis"),
                format!(
                    "max_enis = {n} but the instance has {} ENIs: raise max_enis or remove ENIs",
                    inst.enis.len()
                ),
            ),
            _ => {}
        }
        if inst.max_private_ips_per_eni == Some(0) {
            c.err(
                &p.k("max_private_ips_per_eni"),
                "max_private_ips_per_eni is 0: set at least 1 or remove it",
            );
        }
        if let Some(ip) = inst.public_ip {
            public_ip(c, &p.k("public_ip"), ip, pools, &mut public);
        }
        for (j, eni) in inst.enis.iter().enumerate() {
            let pe = p.k("enis").i(j);
            eni_ids.add(c, pe.k("id"), &eni.id);
            let explicit = c.present(&pe.k("vswitch"));
            let vsw = vswitches.get(eni.vswitch.as_str()).copied();
            if explicit {
                refer(
                    c,
                    &pe.k("vswitch"),
                    &eni.vswitch,
                    "vswitch",
                    &vsw_known,
                    &declare_vsw(&eni.vswitch),
                );
            }
            if let Some(max) = inst.max_private_ips_per_eni.filter(|&m| m > 0) {
                if eni.private_ips.len() > max as usize {
                    c.err(
                        &pe.k("private_ips"),
                        format!(
                            "ENI {} has {} private IPs but max_private_ips_per_eni = {max}: \
                             raise the limit or remove addresses",
                            eni.id,
                            eni.private_ips.len()
                        ),
                    );
                }
            }
            eni_ips(c, &pe, &eni.id, &eni.private_ips, vsw, &mut private);
        }
    }

    // Detached ENIs.
    for (i, eni) in lab.eni.iter().enumerate() {
        let p = Path::key("eni").i(i);
        eni_ids.add(c, p.k("id"), &eni.id);
        valid_region(c, &p.k("region"), &eni.region);
        refer(
            c,
            &p.k("vswitch"),
            &eni.vswitch,
            "vswitch",
            &vsw_known,
            &declare_vsw(&eni.vswitch),
        );
        let vsw = vswitches.get(eni.vswitch.as_str()).copied();
        eni_ips(c, &p, &eni.id, &eni.private_ips, vsw, &mut private);
    }

    // NAT gateways.
    let mut ngw_ids = Ids::new("NAT gateway", "ngw-a");
    for (i, g) in lab.nat_gateway.iter().enumerate() {
        let p = Path::key("nat_gateway").i(i);
        ngw_ids.add(c, p.k("id"), &g.id);
        valid_region(c, &p.k("region"), &g.region);
        refer(
            c,
            &p.k("vswitch"),
            &g.vswitch,
            "vswitch",
            &vsw_known,
            &declare_vsw(&g.vswitch),
        );
        if let (Some(ip), Some(vsw)) = (g.private_ip, vswitches.get(g.vswitch.as_str())) {
            private_ip(c, &p.k("private_ip"), ip, vsw, "NAT gateway", &mut private);
        }
        validate_napt(c, &p, g);
    }

    // HaVips.
    let inst_known: Vec<&str> = lab.instance.iter().map(|i| i.id.as_str()).collect();
    let declare_inst = |id: &str| format!("[[instance]] id = \"{id}\"");
    let mut havip_ids = Ids::new("HaVip", "havip-a");
    for (i, h) in lab.havip.iter().enumerate() {
        let p = Path::key("havip").i(i);
        havip_ids.add(c, p.k("id"), &h.id);
        valid_region(c, &p.k("region"), &h.region);
        refer(
            c,
            &p.k("vswitch"),
            &h.vswitch,
            "vswitch",
            &vsw_known,
            &declare_vsw(&h.vswitch),
        );
        if let (Some(ip), Some(vsw)) = (h.ip_address, vswitches.get(h.vswitch.as_str())) {
            private_ip(c, &p.k("ip_address"), ip, vsw, "HaVip", &mut private);
        }
        for (j, id) in h.associated_instances.iter().enumerate() {
            let pj = p.k("associated_instances").i(j);
            refer(c, &pj, id, "instance", &inst_known, &declare_inst(id));
        }
    }

    // Load balancers.
    let mut lb_ids = Ids::new("load balancer", "lb-a");
    for (i, lb) in lab.load_balancer.iter().enumerate() {
        let p = Path::key("load_balancer").i(i);
        lb_ids.add(c, p.k("id"), &lb.id);
        valid_region(c, &p.k("region"), &lb.region);
        let vsw = match &lb.vswitch {
            Some(id) => {
                refer(
                    c,
                    &p.k("vswitch"),
                    id,
                    "vswitch",
                    &vsw_known,
                    &declare_vsw(id),
                );
                vswitches.get(id.as_str()).copied()
            }
            None => {
                if lb.address_type == AddressType::Intranet && lb.network == NetworkType::Vpc {
                    c.err(
                        &p.k("vswitch"),
                        format!(
                            "an intranet load balancer in a VPC needs a vswitch: add vswitch = \
                             \"{}\"",
                            vsw_known.first().copied().unwrap_or("vsw-a")
                        ),
                    );
                }
                None
            }
        };
        if let Some(ip) = lb.address {
            match (lb.address_type, vsw) {
                (AddressType::Intranet, Some(vsw)) => {
                    private_ip(c, &p.k("address"), ip, vsw, "load balancer", &mut private);
                }
                (AddressType::Internet, _) => {
                    public_ip(c, &p.k("address"), ip, pools, &mut public);
                }
                _ => {}
            }
        }
        for (j, id) in lb.backends.iter().enumerate() {
            refer(
                c,
                &p.k("backends").i(j),
                id,
                "instance",
                &inst_known,
                &declare_inst(id),
            );
        }
        validate_clb(c, &p, lb, &inst_known);
    }

    // Associations.
    let eip_known: Vec<&str> = lab.eip.iter().map(|e| e.allocation_id.as_str()).collect();
    let mut targets: Vec<&str> = inst_known.clone();
    targets.extend(
        lab.instance
            .iter()
            .flat_map(|i| i.enis.iter().map(|e| e.id.as_str())),
    );
    targets.extend(lab.eni.iter().map(|e| e.id.as_str()));
    targets.extend(lab.nat_gateway.iter().map(|g| g.id.as_str()));
    targets.extend(lab.havip.iter().map(|h| h.id.as_str()));
    targets.extend(lab.load_balancer.iter().map(|l| l.id.as_str()));
    for (i, a) in lab.association.iter().enumerate() {
        let p = Path::key("association").i(i);
        refer(
            c,
            &p.k("allocation_id"),
            &a.allocation_id,
            "EIP",
            &eip_known,
            &format!("[[eip]] allocation_id = \"{}\"", a.allocation_id),
        );
        if a.instance_id.is_empty() {
            c.err(
                &p.k("instance_id"),
                "instance_id is empty: name the instance, ENI, NAT gateway, HaVip or load \
                 balancer to bind the EIP to",
            );
        } else if !targets.contains(&a.instance_id.as_str()) {
            let mut message = format!(
                "unknown instance_id `{}`: no instance, ENI, NAT gateway, HaVip or load \
                 balancer has this id",
                a.instance_id
            );
            if let Some(s) = did_you_mean(&a.instance_id, targets.iter().copied()) {
                message.push_str(&format!(" (did you mean `{s}`?)"));
            }
            message.push_str("; use an id declared in this file");
            c.err(&p.k("instance_id"), message);
        }
    }

    validate_nat_entries(lab, c);
}

fn eni_ips(
    c: &mut Check<'_, '_>,
    p: &Path,
    id: &str,
    ips: &[Ipv4Addr],
    vsw: Option<&VSwitch>,
    seen: &mut HashMap<Ipv4Addr, Path>,
) {
    if ips.is_empty() {
        c.err(
            &p.k("private_ips"),
            format!(
                "ENI {id} has no private IP: add private_ips = [\"...\"]; the first is its \
                 primary private IP"
            ),
        );
    }
    if let Some(vsw) = vsw {
        for (k, &ip) in ips.iter().enumerate() {
            private_ip(c, &p.k("private_ips").i(k), ip, vsw, "ENI", seen);
        }
    }
}

fn validate_api(lab: &LabFile, c: &mut Check<'_, '_>) {
    let p = Path::key("api").k("access_keys");
    if lab.api.access_keys.is_empty() {
        c.err(
            &p,
            "no access key: add one, e.g. access_keys = [{ id = \"LTAIlabkey\", secret = \
             \"lab-secret\" }], or remove access_keys for that default",
        );
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, k) in lab.api.access_keys.iter().enumerate() {
        if k.id.trim().is_empty() {
            c.err(
                &p.i(i).k("id"),
                "the AccessKey id is empty: give it one, e.g. \"LTAIlabkey\"",
            );
        } else if let Some(&first) = seen.get(k.id.as_str()) {
            c.err(
                &p.i(i).k("id"),
                format!(
                    "AccessKey id `{}` is already declared by access_keys[{first}]: give each key \
                     its own id",
                    k.id
                ),
            );
        } else {
            seen.insert(&k.id, i);
        }
        if k.secret.is_empty() {
            c.err(
                &p.i(i).k("secret"),
                "the AccessKey secret is empty: give it one, e.g. \"lab-secret\"",
            );
        }
    }
}

/// Internet, EIP pool and VPC ranges: sane sizes, gateway placement, no overlaps.
fn validate_ranges(lab: &LabFile, c: &mut Check<'_, '_>) {
    let inet = &lab.internet;
    let ip = Path::key("internet");
    if inet.cidr.len > 30 {
        c.err(
            &ip.k("cidr"),
            format!(
                "{} is too small: the internet needs the echo service and the gateway; use a /30 \
                 or larger block, e.g. 203.0.113.0/24",
                inet.cidr
            ),
        );
    } else {
        host_in(
            c,
            &ip.k("gateway"),
            inet.gateway,
            inet.cidr,
            "gateway",
            &[(
                inet.echo_address(),
                "the echo service's address (the first host)",
            )],
        );
    }
    if inet.eip_pool.is_empty() {
        c.err(
            &ip.k("eip_pool"),
            "eip_pool is empty: give at least one CIDR, e.g. \"198.51.100.0/24\"",
        );
    }
    let blocks: Vec<(Cidr, String, Path)> = match lab.vpc.cidr {
        Some(cidr) => vec![(cidr, "the VPC's".to_owned(), Path::key("vpc").k("cidr"))],
        None => lab
            .vswitch
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    s.cidr,
                    format!("vswitch {}'s", s.id),
                    Path::key("vswitch").i(i).k("cidr"),
                )
            })
            .collect(),
    };
    for (i, pool) in inet.eip_pool.iter().enumerate() {
        let mut p = ip.k("eip_pool").i(i);
        if !c.present(&p) {
            p = ip.k("eip_pool");
        }
        for other in &inet.eip_pool[..i] {
            if pool.overlaps(other) {
                c.err(
                    &p,
                    format!("eip_pool {pool} overlaps {other}: list disjoint blocks only"),
                );
            }
        }
        if pool.overlaps(&inet.cidr) {
            c.err(
                &p,
                format!(
                    "eip_pool {pool} overlaps the internet's {}: EIPs and internet hosts must be \
                     disjoint; use e.g. 198.51.100.0/24 for the pool and 203.0.113.0/24 for the \
                     internet",
                    inet.cidr
                ),
            );
        }
        for (block, name, _) in &blocks {
            if pool.overlaps(block) {
                c.err(
                    &p,
                    format!(
                        "eip_pool {pool} overlaps {name} {block}: public and private ranges must \
                         be disjoint; move the pool or the VPC (e.g. 10.0.0.0/16)"
                    ),
                );
            }
        }
        if pool.overlaps(&CLOUD_SERVICES) {
            c.err(
                &p,
                format!(
                    "eip_pool {pool} overlaps {CLOUD_SERVICES}, the cloud services range \
                     (metadata, DNS): pick another block"
                ),
            );
        }
    }
    for (block, name, _) in &blocks {
        if inet.cidr.overlaps(block) {
            c.err(
                &ip.k("cidr"),
                format!(
                    "the internet's {} overlaps {name} {block}: public and private ranges must \
                     be disjoint; move one of them",
                    inet.cidr
                ),
            );
        }
    }
    if inet.cidr.overlaps(&CLOUD_SERVICES) {
        c.err(
            &ip.k("cidr"),
            format!(
                "{} overlaps {CLOUD_SERVICES}, the cloud services range (metadata, DNS): pick \
                 another block",
                inet.cidr
            ),
        );
    }
    for (block, name, path) in &blocks {
        if block.overlaps(&CLOUD_SERVICES) {
            c.err(
                path,
                format!(
                    "{name} {block} overlaps {CLOUD_SERVICES}, the cloud services range \
                     (metadata, DNS): use addresses in 10.0.0.0/8"
                ),
            );
        }
    }
}

fn validate_nat_entries(lab: &LabFile, c: &mut Check<'_, '_>) {
    let ngw_known: Vec<&str> = lab.nat_gateway.iter().map(|g| g.id.as_str()).collect();
    let vsw_known: Vec<&str> = lab.vswitch.iter().map(|s| s.id.as_str()).collect();
    let eip_addrs: Vec<Ipv4Addr> = lab.eip.iter().map(|e| e.address).collect();
    let eip_list = || {
        let v: Vec<String> = eip_addrs.iter().map(Ipv4Addr::to_string).collect();
        if v.is_empty() {
            "none is declared".to_owned()
        } else {
            v.join(", ")
        }
    };
    let vpc = lab.vpc_cidrs();
    let declare_ngw = |id: &str| format!("[[nat_gateway]] id = \"{id}\"");

    let mut snat_ids = Ids::new("SNAT entry", "snat-1");
    for (i, s) in lab.snat_entry.iter().enumerate() {
        let p = Path::key("snat_entry").i(i);
        if let Some(id) = &s.id {
            snat_ids.add(c, p.k("id"), id);
        }
        refer(
            c,
            &p.k("nat_gateway"),
            &s.nat_gateway,
            "NAT gateway",
            &ngw_known,
            &declare_ngw(&s.nat_gateway),
        );
        match (&s.source_cidr, &s.source_vswitch_id) {
            (Some(_), Some(_)) => c.err(
                &p.k("source_vswitch_id"),
                "both source_cidr and source_vswitch_id are set: keep exactly one of them",
            ),
            (None, None) => c.err(
                &p,
                "the SNAT entry has no source: add source_cidr = \"10.0.1.0/24\" or \
                 source_vswitch_id = \"vsw-a\"",
            ),
            (None, Some(v)) => {
                refer(
                    c,
                    &p.k("source_vswitch_id"),
                    v,
                    "vswitch",
                    &vsw_known,
                    &format!("[[vswitch]] id = \"{v}\""),
                );
            }
            (Some(_), None) => {}
        }
        if s.snat_ip.is_empty() {
            c.err(
                &p.k("snat_ip"),
                format!(
                    "snat_ip is empty: give one or more EIP addresses ({})",
                    eip_list()
                ),
            );
        }
        for (k, ip) in s.snat_ip.iter().enumerate() {
            if s.snat_ip[..k].contains(ip) {
                c.err(
                    &p.k("snat_ip"),
                    format!("{ip} is listed twice in snat_ip: list each address once"),
                );
            } else if !eip_addrs.contains(ip) {
                c.err(
                    &p.k("snat_ip"),
                    format!(
                        "{ip} is not the address of any [[eip]]: SNAT uses the gateway's EIPs; \
                         use one of {} or add an [[eip]] with address = \"{ip}\"",
                        eip_list()
                    ),
                );
            }
        }
    }

    let mut fwd_ids = Ids::new("forward entry", "fwd-1");
    for (i, f) in lab.forward_entry.iter().enumerate() {
        let p = Path::key("forward_entry").i(i);
        if let Some(id) = &f.id {
            fwd_ids.add(c, p.k("id"), id);
        }
        refer(
            c,
            &p.k("nat_gateway"),
            &f.nat_gateway,
            "NAT gateway",
            &ngw_known,
            &declare_ngw(&f.nat_gateway),
        );
        if !eip_addrs.contains(&f.external_ip) {
            c.err(
                &p.k("external_ip"),
                format!(
                    "{} is not the address of any [[eip]]: DNAT listens on the gateway's EIPs; \
                     use one of {} or add an [[eip]] with this address",
                    f.external_ip,
                    eip_list()
                ),
            );
        }
        if !vpc.iter().any(|b| b.contains(f.internal_ip)) {
            c.err(
                &p.k("internal_ip"),
                format!(
                    "{} is outside the VPC: DNAT forwards to a private address of the VPC; pick \
                     one inside {}",
                    f.internal_ip,
                    vpc.iter()
                        .map(Cidr::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        let ext_any = f.external_port == ForwardPort::Any;
        let int_any = f.internal_port == ForwardPort::Any;
        if ext_any != int_any {
            let at = if ext_any {
                "internal_port"
            } else {
                "external_port"
            };
            c.err(
                &p.k(at),
                "external_port and internal_port must both be \"any\" (whole-IP mapping) or both \
                 be port numbers",
            );
        } else if ext_any && f.ip_protocol != IpProtocol::Any {
            c.err(
                &p.k("ip_protocol"),
                format!(
                    "\"any\" ports map the whole IP and require ip_protocol = \"Any\", not \"{}\"",
                    f.ip_protocol
                ),
            );
        } else if !ext_any && f.ip_protocol == IpProtocol::Any {
            c.err(
                &p.k("ip_protocol"),
                "ip_protocol = \"Any\" maps the whole IP: set external_port and internal_port to \
                 \"any\", or use \"TCP\" or \"UDP\"",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPEC §5, the main example.
    const SPEC_EXAMPLE: &str = r#"
region = "cn-shanghai"

[internet]
cidr = "203.0.113.0/24"          # echo service on 203.0.113.1:80
eip_pool = "198.51.100.0/24"

[api]
listen = "127.0.0.1:8700"
access_keys = [{ id = "LTAIlabkey", secret = "lab-secret" }]

[[vswitch]]
id = "vsw-a"
zone = "cn-shanghai-b"
cidr = "10.0.1.0/24"

[[instance]]
id = "i-web"
vswitch = "vsw-a"
instance_type = "ecs.g5.large"
status = "Running"
enis = [
  { id = "eni-web0", private_ips = ["10.0.1.10"] },                              # eth0, primary
  { id = "eni-web1", private_ips = ["10.0.1.20", "10.0.1.21", "10.0.1.22"] },    # eth1
]

[[eni]]                            # detached secondary ENI, e.g. for BINDED
id = "eni-spare"
vswitch = "vsw-a"
private_ips = ["10.0.1.30"]

[[eip]]
allocation_id = "eip-web1"
address = "198.51.100.10"
bandwidth = 5                      # Mbit/s

[[association]]                    # same fields as AssociateEipAddress
allocation_id = "eip-web1"
instance_id = "eni-web1"
instance_type = "NetworkInterface"
mode = "NAT"
private_ip_address = "10.0.1.21"

[alg]                              # NAT-mode policy per protocol: drop | pass | inspect
sip = "drop"
ftp = "drop"
"#;

    /// SPEC §5, the NAT gateway fragment, with the vSwitch, instance and EIP it refers to.
    const SPEC_NAT_GATEWAY: &str = r#"
[[vswitch]]
id = "vsw-a"
zone = "cn-shanghai-b"
cidr = "10.0.1.0/24"

[[instance]]
id = "i-web"
vswitch = "vsw-a"
enis = [{ id = "eni-web0", private_ips = ["10.0.1.11"] }]

[[eip]]
allocation_id = "eip-ngw"
address = "198.51.100.50"

[[nat_gateway]]
id = "ngw-a"
vswitch = "vsw-a"

[[association]]
allocation_id = "eip-ngw"
instance_id = "ngw-a"
instance_type = "Nat"

[[snat_entry]]
nat_gateway = "ngw-a"
source_cidr = "10.0.1.0/24"        # or source_vswitch_id = "vsw-a"
snat_ip = "198.51.100.50"          # one or more EIPs of the gateway, comma-separated

[[forward_entry]]                  # DNAT
nat_gateway = "ngw-a"
external_ip = "198.51.100.50"
external_port = "8080"             # or "any" with ip_protocol = "Any" for whole-IP mapping
internal_ip = "10.0.1.11"
internal_port = "80"
ip_protocol = "TCP"                # TCP | UDP | Any
"#;

    /// A valid lab that error tests append to (lines 1-10).
    const BASE: &str = r#"
[[vswitch]]
id = "vsw-a"
zone = "cn-shanghai-b"
cidr = "10.0.1.0/24"

[[instance]]
id = "i-web"
vswitch = "vsw-a"
enis = [{ id = "eni-web0", private_ips = ["10.0.1.10"] }]
"#;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn issues(text: &str) -> Vec<LabFileIssue> {
        match parse(text) {
            Ok(_) => panic!("expected errors, the file parsed"),
            Err(e) => e.issues().to_vec(),
        }
    }

    /// The issue at `path`; panics listing all issues if there is none.
    fn at(text: &str, path: &str) -> LabFileIssue {
        let all = issues(text);
        all.iter()
            .find(|i| i.path == path)
            .cloned()
            .unwrap_or_else(|| panic!("no issue at {path}; got {all:#?}"))
    }

    fn with_base(extra: &str) -> String {
        format!("{BASE}{extra}")
    }

    fn assert_mentions(issue: &LabFileIssue, parts: &[&str]) {
        for p in parts {
            assert!(issue.message.contains(p), "{:?} lacks {p:?}", issue.message);
        }
    }

    #[test]
    fn spec_example_parses_to_expected_values() {
        let lab = parse(SPEC_EXAMPLE).unwrap();
        assert_eq!(lab.region, "cn-shanghai");
        assert_eq!(lab.internet.cidr, cidr("203.0.113.0/24"));
        assert_eq!(lab.internet.eip_pool, vec![cidr("198.51.100.0/24")]);
        assert_eq!(lab.internet.echo_address(), ip("203.0.113.1"));
        assert_eq!(lab.api.listen, "127.0.0.1:8700".parse().unwrap());
        assert_eq!(lab.api.access_keys.len(), 1);
        assert_eq!(lab.api.access_keys[0].id, "LTAIlabkey");
        assert_eq!(lab.api.access_keys[0].secret, "lab-secret");

        let vsw = &lab.vswitch[0];
        assert_eq!(
            (vsw.id.as_str(), vsw.zone.as_str()),
            ("vsw-a", "cn-shanghai-b")
        );
        assert_eq!(vsw.cidr, cidr("10.0.1.0/24"));
        assert_eq!(vsw.gateway, ip("10.0.1.253"));

        let inst = &lab.instance[0];
        assert_eq!(inst.id, "i-web");
        assert_eq!(inst.instance_type, "ecs.g5.large");
        assert_eq!(inst.status, InstanceStatus::Running);
        assert_eq!(inst.enis.len(), 2);
        assert_eq!(inst.enis[0].id, "eni-web0");
        assert_eq!(inst.enis[0].private_ips, vec![ip("10.0.1.10")]);
        assert_eq!(
            inst.enis[1].private_ips,
            vec![ip("10.0.1.20"), ip("10.0.1.21"), ip("10.0.1.22")]
        );
        assert_eq!(inst.enis[1].vswitch, "vsw-a");

        assert_eq!(lab.eni[0].id, "eni-spare");
        assert_eq!(lab.eni[0].private_ips, vec![ip("10.0.1.30")]);

        let eip = &lab.eip[0];
        assert_eq!(eip.allocation_id, "eip-web1");
        assert_eq!(eip.address, ip("198.51.100.10"));
        assert_eq!(eip.bandwidth, 5);

        let a = &lab.association[0];
        assert_eq!(a.allocation_id, "eip-web1");
        assert_eq!(a.instance_id, "eni-web1");
        assert_eq!(a.instance_type, AssociationInstanceType::NetworkInterface);
        assert_eq!(a.mode, AssociationMode::Nat);
        assert_eq!(a.private_ip_address, Some(ip("10.0.1.21")));

        assert_eq!(lab.alg.sip, AlgPolicy::Drop);
        assert_eq!(lab.alg.ftp, AlgPolicy::Drop);
    }

    #[test]
    fn spec_nat_gateway_fragment_parses() {
        let lab = parse(SPEC_NAT_GATEWAY).unwrap();
        let g = &lab.nat_gateway[0];
        assert_eq!((g.id.as_str(), g.vswitch.as_str()), ("ngw-a", "vsw-a"));
        assert_eq!(g.private_ip, None);
        assert_eq!(g.created, Date::new(2024, 1, 1).unwrap());
        assert!(g.eip_takes_private_ip());
        assert_eq!(
            lab.association[0].instance_type,
            AssociationInstanceType::Nat
        );
        assert_eq!(lab.association[0].mode, AssociationMode::Nat);

        let s = &lab.snat_entry[0];
        assert_eq!(s.source_cidr, Some(cidr("10.0.1.0/24")));
        assert_eq!(s.source_vswitch_id, None);
        assert_eq!(s.snat_ip, vec![ip("198.51.100.50")]);
        assert_eq!(s.id, None);

        let f = &lab.forward_entry[0];
        assert_eq!(f.external_ip, ip("198.51.100.50"));
        assert_eq!(f.external_port, ForwardPort::Port(8080));
        assert_eq!(f.internal_ip, ip("10.0.1.11"));
        assert_eq!(f.internal_port, ForwardPort::Port(80));
        assert_eq!(f.ip_protocol, IpProtocol::Tcp);
    }

    #[test]
    fn defaults_are_filled_in() {
        let lab = parse(BASE).unwrap();
        assert_eq!(lab.region, "cn-shanghai");
        assert_eq!(lab.internet, Internet::default());
        assert_eq!(lab.internet.cidr, cidr("203.0.113.0/24"));
        assert_eq!(lab.internet.eip_pool, vec![cidr("198.51.100.0/24")]);
        assert_eq!(lab.internet.gateway, ip("203.0.113.254"));
        assert_eq!(lab.api.listen, SocketAddr::from(([127, 0, 0, 1], 8700)));
        assert_eq!(
            lab.api.access_keys,
            vec![AccessKey {
                id: "LTAIlabkey".into(),
                secret: "lab-secret".into()
            }]
        );
        assert_eq!(lab.api.transition_ms, 500);
        assert_eq!(lab.vpc.id, "vpc-lab");
        assert_eq!(lab.vpc.cidr, None);
        assert!(lab.vpc.source_check);
        assert_eq!(lab.vpc_cidrs(), vec![cidr("10.0.1.0/24")]);
        assert!(lab.account.multi_binded);
        let a = lab.alg;
        for p in [a.sip, a.h323, a.rtsp, a.dns, a.ftp, a.tftp] {
            assert_eq!(p, AlgPolicy::Drop);
        }
        let v = &lab.vswitch[0];
        assert_eq!(v.gateway, ip("10.0.1.253"));
        assert_eq!(v.region, "cn-shanghai");
        let i = &lab.instance[0];
        assert_eq!(i.instance_type, "ecs.g5.large");
        assert_eq!(i.status, InstanceStatus::Running);
        assert_eq!(i.network, NetworkType::Vpc);
        assert_eq!(i.public_ip, None);
        assert!(i.dhcp);
        assert_eq!(i.region, "cn-shanghai");
        assert_eq!((i.max_enis, i.max_private_ips_per_eni), (None, None));
        assert_eq!(i.enis[0].vswitch, "vsw-a");
        assert!(i.enis[0].configure);

        let more = parse(&with_base(
            r#"
[[eni]]
id = "eni-x"
vswitch = "vsw-a"
private_ips = ["10.0.1.30"]
[[eip]]
allocation_id = "eip-x"
address = "198.51.100.10"
[[association]]
allocation_id = "eip-x"
instance_id = "i-web"
[[havip]]
id = "havip-a"
vswitch = "vsw-a"
[[load_balancer]]
id = "lb-a"
vswitch = "vsw-a"
"#,
        ))
        .unwrap();
        assert!(more.eni[0].configure);
        assert_eq!(more.eni[0].region, "cn-shanghai");
        let e = &more.eip[0];
        assert_eq!(e.bandwidth, 5);
        assert_eq!(e.name, None);
        assert_eq!(e.internet_charge_type, InternetChargeType::PayByTraffic);
        assert_eq!(e.instance_charge_type, InstanceChargeType::PostPaid);
        let a = &more.association[0];
        assert_eq!(a.instance_type, AssociationInstanceType::EcsInstance);
        assert_eq!(a.mode, AssociationMode::Nat);
        assert_eq!(a.private_ip_address, None);
        let h = &more.havip[0];
        assert_eq!((h.ip_address, h.status), (None, HaVipStatus::Available));
        assert!(h.associated_instances.is_empty());
        let lb = &more.load_balancer[0];
        assert_eq!(lb.r#type, LoadBalancerType::Clb);
        assert_eq!(lb.address_type, AddressType::Intranet);
        assert_eq!(lb.network, NetworkType::Vpc);
        assert_eq!((lb.address, lb.backends.len()), (None, 0));
        assert_eq!(lb.region, "cn-shanghai");
    }

    #[test]
    fn explicit_values_override_defaults() {
        let lab = parse(
            r#"
region = "cn-beijing"
[internet]
cidr = "203.0.113.0/25"
eip_pool = ["198.51.100.0/25", "198.51.100.128/25"]
gateway = "203.0.113.100"
[api]
transition_ms = 0
[vpc]
id = "vpc-x"
cidr = "10.0.0.0/16"
source_check = false
[account]
multi_binded = false
[[vswitch]]
id = "vsw-a"
zone = "cn-hangzhou-b"
cidr = "10.0.1.0/24"
gateway = "10.0.1.1"
region = "cn-hangzhou"
[[instance]]
id = "i-web"
vswitch = "vsw-a"
status = "Stopped"
network = "classic"
dhcp = false
region = "cn-hangzhou"
max_enis = 3
max_private_ips_per_eni = 6
enis = [{ id = "eni-web0", private_ips = ["10.0.1.10"], configure = false }]
[[nat_gateway]]
id = "ngw-old"
vswitch = "vsw-a"
created = 2022-09-19
"#,
        )
        .unwrap();
        assert_eq!(lab.region, "cn-beijing");
        assert_eq!(lab.internet.gateway, ip("203.0.113.100"));
        assert_eq!(lab.internet.eip_pool.len(), 2);
        assert_eq!(lab.api.transition_ms, 0);
        assert_eq!(lab.vpc_cidrs(), vec![cidr("10.0.0.0/16")]);
        assert!(!lab.vpc.source_check && !lab.account.multi_binded);
        assert_eq!(lab.vswitch[0].gateway, ip("10.0.1.1"));
        assert_eq!(lab.vswitch[0].region, "cn-hangzhou");
        let i = &lab.instance[0];
        assert_eq!(
            (i.status, i.network, i.dhcp),
            (InstanceStatus::Stopped, NetworkType::Classic, false)
        );
        assert_eq!((i.max_enis, i.max_private_ips_per_eni), (Some(3), Some(6)));
        assert!(!i.enis[0].configure);
        assert_eq!(
            lab.unconfigured_enis().into_iter().collect::<Vec<_>>(),
            [i.enis[0].id.clone()]
        );
        // A bare TOML date works as well as a string; the cut-off day itself counts ("since"
        // includes it), the day before does not.
        assert_eq!(
            lab.nat_gateway[0].created,
            NatGateway::PRIVATE_IP_PER_EIP_SINCE
        );
        assert!(lab.nat_gateway[0].eip_takes_private_ip());
        let before = NatGateway {
            created: Date::new(2022, 9, 18).unwrap(),
            ..lab.nat_gateway[0].clone()
        };
        assert!(!before.eip_takes_private_ip());
        assert_eq!(lab.nat_gateway[0].region, "cn-beijing");
    }

    #[test]
    fn examples_parse() {
        let one = parse(include_str!("../../examples/one-eip.toml")).unwrap();
        assert_eq!(one.association[0].instance_id, "i-web");

        let modes = parse(include_str!("../../examples/nat-and-cut-through.toml")).unwrap();
        let count = |m| modes.association.iter().filter(|a| a.mode == m).count();
        assert_eq!(count(AssociationMode::Nat), 3);
        assert_eq!(count(AssociationMode::Binded), 1);
        assert_eq!(count(AssociationMode::MultiBinded), 2);
        assert_eq!(modes.alg.sip, AlgPolicy::Pass);
        assert_eq!(modes.alg.ftp, AlgPolicy::Inspect);
        assert_eq!(modes.instance.len(), 2);

        let ngw = parse(include_str!("../../examples/nat-gateway.toml")).unwrap();
        assert_eq!(ngw.snat_entry.len(), 2);
        assert_eq!(ngw.forward_entry.len(), 2);
        let kinds: Vec<_> = ngw.association.iter().map(|a| a.instance_type).collect();
        for k in [
            AssociationInstanceType::Nat,
            AssociationInstanceType::HaVip,
            AssociationInstanceType::SlbInstance,
        ] {
            assert!(kinds.contains(&k));
        }
    }

    #[test]
    fn cidr_type() {
        let c = cidr("10.0.1.0/24");
        assert_eq!(c.to_string(), "10.0.1.0/24");
        assert!(c.contains(ip("10.0.1.255")) && !c.contains(ip("10.0.2.0")));
        assert_eq!(c.broadcast(), ip("10.0.1.255"));
        assert_eq!(c.default_gateway(), ip("10.0.1.253"));
        assert_eq!(
            (c.first_host(), c.last_host()),
            (ip("10.0.1.1"), ip("10.0.1.254"))
        );
        assert_eq!(c.netmask(), ip("255.255.255.0"));
        assert_eq!(c.size(), 256);
        assert!(cidr("10.0.0.0/16").contains_cidr(&c));
        assert!(c.overlaps(&cidr("10.0.0.0/8")) && !c.overlaps(&cidr("10.0.2.0/24")));
        assert!(cidr("0.0.0.0/0").contains(ip("1.2.3.4")));
        assert_eq!(cidr("10.0.1.7/32").size(), 1);
        assert!(matches!(
            "10.0.1.5/24".parse::<Cidr>(),
            Err(CidrError::HostBits { .. })
        ));
        assert!(matches!(
            "10.0.1.0/33".parse::<Cidr>(),
            Err(CidrError::PrefixLength(_))
        ));
        assert!(matches!(
            "10.0.1.0".parse::<Cidr>(),
            Err(CidrError::Syntax(_))
        ));
        assert!(matches!(
            "10.0.1.0/+4".parse::<Cidr>(),
            Err(CidrError::Syntax(_))
        ));
    }

    #[test]
    fn date_type() {
        assert!(Date::new(2024, 2, 29).is_some());
        assert!(Date::new(2023, 2, 29).is_none());
        assert!("2024-1-01".parse::<Date>().is_err());
        assert!("2022-09-20".parse::<Date>().unwrap() > NatGateway::PRIVATE_IP_PER_EIP_SINCE);
        assert_eq!(Date::new(2022, 9, 19).unwrap().to_string(), "2022-09-19");
    }

    // ---- one test per error class ----

    #[test]
    fn syntax_errors_report_line() {
        let all = issues("region = \"cn-shanghai\"\n[internet\ncidr = \"203.0.113.0/24\"\n");
        assert_eq!(all[0].line, Some(2));
        assert!(all[0].message.contains("TOML syntax error"), "{all:?}");
    }

    #[test]
    fn unknown_key_suggests_and_lists() {
        let text = BASE.replace(
            "private_ips = [\"10.0.1.10\"]",
            "privte_ips = [\"10.0.1.10\"]",
        );
        let i = at(&text, "instance[0].enis[0].privte_ips");
        assert_eq!(i.line, Some(10));
        assert_mentions(
            &i,
            &[
                "unknown key `privte_ips`",
                "did you mean `private_ips`?",
                "id, private_ips, vswitch, configure",
            ],
        );

        let i = at(&with_base("[[vswitches]]\nid = \"x\"\n"), "vswitches");
        assert_mentions(&i, &["unknown top-level key", "did you mean `vswitch`?"]);

        let i = at(
            &with_base("[api]\nlisten = \"127.0.0.1:1\"\nsecret = \"x\"\n"),
            "api.secret",
        );
        assert_mentions(
            &i,
            &["allowed keys here: listen, access_keys, transition_ms"],
        );
    }

    #[test]
    fn bad_choice_lists_allowed_values() {
        let text = with_base(
            "[[eip]]\nallocation_id = \"eip-a\"\naddress = \"198.51.100.10\"\n\
             [[association]]\nallocation_id = \"eip-a\"\ninstance_id = \"i-web\"\nmode = \"nat\"\n",
        );
        let i = at(&text, "association[0].mode");
        assert_eq!(i.line, Some(17));
        assert_mentions(
            &i,
            &[
                "expected one of NAT, BINDED, MULTI_BINDED",
                "did you mean `NAT`?",
            ],
        );
        let i = at(&with_base("[alg]\nsip = \"allow\"\n"), "alg.sip");
        assert_mentions(&i, &["expected one of drop, pass, inspect"]);
    }

    #[test]
    fn missing_required_key_is_named() {
        let i = at(
            "[[vswitch]]\nid = \"vsw-a\"\ncidr = \"10.0.1.0/24\"\n",
            "vswitch[0].zone",
        );
        assert_eq!(i.line, Some(1));
        assert_mentions(&i, &["missing required key `zone`", "add `zone = ...`"]);
        let i = at(
            &with_base("[api]\naccess_keys = [{ id = \"k\" }]\n"),
            "api.access_keys[0].secret",
        );
        assert_mentions(&i, &["missing required key `secret`"]);
    }

    #[test]
    fn wrong_type_says_how_to_write_it() {
        let text = with_base(
            "[[eip]]\nallocation_id = \"eip-a\"\naddress = \"198.51.100.10\"\nbandwidth = \"5\"\n",
        );
        let i = at(&text, "eip[0].bandwidth");
        assert_eq!(i.line, Some(14));
        assert_mentions(&i, &["whole number", "without quotes"]);
        let i = at(
            &with_base("[vpc]\nsource_check = \"yes\"\n"),
            "vpc.source_check",
        );
        assert_mentions(&i, &["write true or false"]);
        let i = at(&with_base("[vpc]\nid = 5\n"), "vpc.id");
        assert_mentions(&i, &["quoted string"]);
    }

    #[test]
    fn section_and_array_shapes() {
        let i = at("[instance]\nid = \"x\"\n", "instance");
        assert_mentions(&i, &["[[instance]] (double brackets)"]);
        let i = at(
            &format!("internet = \"203.0.113.0/24\"\n{BASE}"),
            "internet",
        );
        assert_mentions(&i, &["write [internet]"]);
        let i = at(&with_base("internet = \"x\"\n"), "instance[0].internet");
        assert_mentions(
            &i,
            &[
                "`internet` is a top-level key",
                "move it above the first header",
            ],
        );
    }

    #[test]
    fn bad_cidr_and_address() {
        let i = at(
            &BASE.replace("10.0.1.0/24", "10.0.1.5/24"),
            "vswitch[0].cidr",
        );
        assert_mentions(&i, &["host bits set", "write 10.0.1.0/24"]);
        let i = at(
            &BASE.replace("10.0.1.10", "10.0.1.300"),
            "instance[0].enis[0].private_ips[0]",
        );
        assert_mentions(&i, &["not an IPv4 address", "e.g. \"10.0.1.10\""]);
        let i = at(
            &BASE.replace("\"10.0.1.10\"", "\"10.0.1.10/24\""),
            "instance[0].enis[0].private_ips[0]",
        );
        assert_mentions(&i, &["write the address alone"]);
        let i = at(
            &with_base("[internet]\neip_pool = [\"198.51.100.0/24\", \"bad\"]\n"),
            "internet.eip_pool[1]",
        );
        assert_mentions(&i, &["not a CIDR block", "a.b.c.d/len"]);
    }

    #[test]
    fn private_ip_outside_vswitch() {
        let text = r#"
[[vswitch]]
id = "vsw-a"
zone = "z"
cidr = "10.0.1.0/24"
[[vswitch]]
id = "vsw-b"
zone = "z"
cidr = "10.0.2.0/24"
[[instance]]
id = "i-0"
vswitch = "vsw-b"
enis = [{ id = "eni-00", private_ips = ["10.0.2.10"] }]
[[instance]]
id = "i-1"
vswitch = "vsw-a"
enis = [{ id = "eni-10", private_ips = [
  "10.0.1.10",
  "10.0.1.11",
  "10.0.2.5",
] }]
"#;
        let i = at(text, "instance[1].enis[0].private_ips[2]");
        assert_eq!(i.line, Some(20));
        assert_eq!(
            i.message,
            "10.0.2.5 is outside vswitch vsw-a's 10.0.1.0/24: pick an address inside it or put \
             the ENI on another vswitch"
        );
    }

    #[test]
    fn reserved_private_addresses() {
        for (addr, what) in [
            ("10.0.1.0", "network address"),
            ("10.0.1.253", "gateway"),
            ("10.0.1.255", "broadcast"),
        ] {
            let i = at(
                &BASE.replace("10.0.1.10", addr),
                "instance[0].enis[0].private_ips[0]",
            );
            assert_mentions(&i, &[what, "pick"]);
        }
        let i = at(
            &BASE.replace(
                "cidr = \"10.0.1.0/24\"",
                "cidr = \"10.0.1.0/24\"\ngateway = \"10.0.2.1\"",
            ),
            "vswitch[0].gateway",
        );
        assert_mentions(&i, &["outside 10.0.1.0/24"]);
    }

    #[test]
    fn private_ips_are_unique_across_the_lab() {
        let text = with_base(
            "[[eni]]\nid = \"eni-x\"\nvswitch = \"vsw-a\"\nprivate_ips = [\"10.0.1.30\"]\n\
             [[havip]]\nid = \"havip-a\"\nvswitch = \"vsw-a\"\nip_address = \"10.0.1.10\"\n",
        );
        let i = at(&text, "havip[0].ip_address");
        assert_mentions(
            &i,
            &[
                "already used by instance[0].enis[0].private_ips[0]",
                "pick another free address",
            ],
        );
    }

    #[test]
    fn duplicate_ids() {
        let text = with_base(
            "[[instance]]\nid = \"i-web\"\nvswitch = \"vsw-a\"\nenis = [{ id = \"eni-2\", private_ips = [\"10.0.1.11\"] }]\n\
             [[eni]]\nid = \"eni-web0\"\nvswitch = \"vsw-a\"\nprivate_ips = [\"10.0.1.30\"]\n",
        );
        let i = at(&text, "instance[1].id");
        assert_mentions(
            &i,
            &[
                "duplicate instance id `i-web`",
                "instance[0].id",
                "its own id",
            ],
        );
        let i = at(&text, "eni[0].id");
        assert_mentions(
            &i,
            &["duplicate ENI id `eni-web0`", "instance[0].enis[0].id"],
        );
        let i = at(
            &BASE.replace("id = \"i-web\"", "id = \"i web\""),
            "instance[0].id",
        );
        assert_mentions(&i, &["use only letters, digits"]);
    }

    #[test]
    fn unknown_references() {
        let i = at(
            &BASE.replace("vswitch = \"vsw-a\"", "vswitch = \"vsw-b\""),
            "instance[0].vswitch",
        );
        assert_mentions(
            &i,
            &[
                "unknown vswitch `vsw-b`",
                "did you mean `vsw-a`?",
                "[[vswitch]] id = \"vsw-b\"",
            ],
        );
        let text = with_base(
            "[[havip]]\nid = \"havip-a\"\nvswitch = \"vsw-a\"\nassociated_instances = [\"i-web\", \"i-db\"]\n\
             [[load_balancer]]\nid = \"lb-a\"\nvswitch = \"vsw-a\"\nbackends = [\"i-webb\"]\n\
             [[snat_entry]]\nnat_gateway = \"ngw-a\"\nsource_vswitch_id = \"vsw-a\"\nsnat_ip = \"198.51.100.1\"\n",
        );
        let i = at(&text, "havip[0].associated_instances[1]");
        assert_mentions(
            &i,
            &["unknown instance `i-db`", "[[instance]] id = \"i-db\""],
        );
        let i = at(&text, "load_balancer[0].backends[0]");
        assert_mentions(&i, &["did you mean `i-web`?"]);
        let i = at(&text, "snat_entry[0].nat_gateway");
        assert_mentions(
            &i,
            &[
                "unknown NAT gateway `ngw-a`",
                "declares none",
                "[[nat_gateway]]",
            ],
        );
    }

    #[test]
    fn association_needs_a_declared_eip() {
        let text = with_base(
            "[[eip]]\nallocation_id = \"eip-web\"\naddress = \"198.51.100.10\"\n\
             [[association]]\nallocation_id = \"eip-wbe\"\ninstance_id = \"i-wb\"\n",
        );
        let i = at(&text, "association[0].allocation_id");
        assert_mentions(
            &i,
            &[
                "unknown EIP `eip-wbe`",
                "did you mean `eip-web`?",
                "[[eip]] allocation_id",
            ],
        );
        let i = at(&text, "association[0].instance_id");
        assert_mentions(&i, &["unknown instance_id `i-wb`", "did you mean `i-web`?"]);
    }

    #[test]
    fn vswitch_layout() {
        let text = format!(
            "[vpc]\ncidr = \"10.0.0.0/16\"\n{BASE}[[vswitch]]\nid = \"vsw-b\"\nzone = \"z\"\ncidr = \"10.0.1.128/25\"\n\
             [[vswitch]]\nid = \"vsw-c\"\nzone = \"z\"\ncidr = \"10.9.0.0/24\"\n"
        );
        let i = at(&text.replace("10.9.0.0", "10.0.9.0"), "vswitch[1].cidr");
        assert_mentions(
            &i,
            &["overlaps vswitch[0] (vsw-a, 10.0.1.0/24)", "disjoint"],
        );
        let text = text
            .replace("10.0.1.128/25", "10.0.3.0/24")
            .replace("10.0.0.0/16", "10.0.0.0/20");
        let i = at(&text, "vswitch[2].cidr");
        assert_mentions(&i, &["outside the VPC's 10.0.0.0/20", "widen [vpc] cidr"]);
        let i = at(
            &BASE.replace("10.0.1.0/24", "10.0.1.0/30"),
            "vswitch[0].cidr",
        );
        assert_mentions(&i, &["too small", "/29"]);
    }

    #[test]
    fn eip_addresses() {
        let text = with_base(
            "[[eip]]\nallocation_id = \"eip-a\"\naddress = \"198.51.101.10\"\n\
             [[eip]]\nallocation_id = \"eip-b\"\naddress = \"198.51.100.10\"\n\
             [[eip]]\nallocation_id = \"eip-c\"\naddress = \"198.51.100.10\"\nbandwidth = 0\n",
        );
        let i = at(&text, "eip[0].address");
        assert_mentions(
            &i,
            &[
                "outside the EIP pool (198.51.100.0/24)",
                "[internet] eip_pool",
            ],
        );
        let i = at(&text, "eip[2].address");
        assert_mentions(&i, &["already used by eip[1].address"]);
        let i = at(&text, "eip[2].bandwidth");
        assert_mentions(&i, &["at least 1"]);
    }

    #[test]
    fn ranges_must_not_overlap() {
        let i = at(
            &with_base("[internet]\neip_pool = \"10.0.0.0/16\"\n"),
            "internet.eip_pool",
        );
        assert_mentions(&i, &["overlaps vswitch vsw-a's 10.0.1.0/24", "disjoint"]);
        let i = at(
            &with_base("[internet]\ncidr = \"198.51.100.0/24\"\n"),
            "internet.eip_pool",
        );
        assert_mentions(&i, &["overlaps the internet's 198.51.100.0/24"]);
        let i = at(&with_base("[vpc]\ncidr = \"100.64.0.0/10\"\n"), "vpc.cidr");
        assert_mentions(&i, &["cloud services range"]);
        let i = at(
            &with_base("[internet]\ngateway = \"203.0.113.1\"\n"),
            "internet.gateway",
        );
        assert_mentions(&i, &["echo service", "pick another address"]);
    }

    #[test]
    fn instance_needs_an_eni() {
        let i = at(
            &BASE.replace(
                "enis = [{ id = \"eni-web0\", private_ips = [\"10.0.1.10\"] }]",
                "enis = []",
            ),
            "instance[0].enis",
        );
        assert_mentions(&i, &["has no ENI", "add enis = ["]);
        let i = at(
            &BASE.replace("private_ips = [\"10.0.1.10\"]", "private_ips = []"),
            "instance[0].enis[0].private_ips",
        );
        assert_mentions(&i, &["no private IP", "add private_ips"]);
        let i = at(
            &BASE.replace(
                "vswitch = \"vsw-a\"\n",
                "vswitch = \"vsw-a\"\nmax_enis = 0\n",
            ),
            "instance[0].max_enis",
        );
        assert_mentions(&i, &["at least 1"]);
    }

    #[test]
    fn api_keys_and_listen() {
        let i = at(&with_base("[api]\naccess_keys = []\n"), "api.access_keys");
        assert_mentions(&i, &["no access key", "add one"]);
        let i = at(
            &with_base("[api]\naccess_keys = [{ id = \"\", secret = \"s\" }]\n"),
            "api.access_keys[0].id",
        );
        assert_mentions(&i, &["id is empty"]);
        let i = at(
            &with_base("[api]\naccess_keys = [{ id = \"k\", secret = \"\" }]\n"),
            "api.access_keys[0].secret",
        );
        assert_mentions(&i, &["secret is empty"]);
        let i = at(
            &with_base("[api]\nlisten = \"localhost:8700\"\n"),
            "api.listen",
        );
        assert_mentions(&i, &["not a socket address", "127.0.0.1:8700"]);
    }

    #[test]
    fn snat_and_dnat_entries() {
        let text = format!(
            "{SPEC_NAT_GATEWAY}\n[[snat_entry]]\nnat_gateway = \"ngw-a\"\nsource_cidr = \"10.0.1.0/24\"\n\
             source_vswitch_id = \"vsw-a\"\nsnat_ip = \"198.51.100.50,198.51.100.99\"\n\
             [[snat_entry]]\nnat_gateway = \"ngw-a\"\nsnat_ip = \"198.51.100.50\"\n\
             [[forward_entry]]\nnat_gateway = \"ngw-a\"\nexternal_ip = \"198.51.100.50\"\nexternal_port = \"any\"\n\
             internal_ip = \"10.0.1.11\"\ninternal_port = \"any\"\nip_protocol = \"TCP\"\n\
             [[forward_entry]]\nnat_gateway = \"ngw-a\"\nexternal_ip = \"198.51.100.50\"\nexternal_port = 22\n\
             internal_ip = \"10.0.1.11\"\ninternal_port = \"any\"\nip_protocol = \"Any\"\n"
        );
        let i = at(&text, "snat_entry[1].source_vswitch_id");
        assert_mentions(&i, &["keep exactly one"]);
        let i = at(&text, "snat_entry[1].snat_ip");
        assert_mentions(
            &i,
            &[
                "198.51.100.99 is not the address of any [[eip]]",
                "198.51.100.50",
            ],
        );
        let i = at(&text, "snat_entry[2]");
        assert_mentions(&i, &["no source", "source_cidr", "source_vswitch_id"]);
        let i = at(&text, "forward_entry[1].ip_protocol");
        assert_mentions(&i, &["require ip_protocol = \"Any\""]);
        let i = at(&text, "forward_entry[2].external_port");
        assert_mentions(&i, &["both be \"any\""]);
        let i = at(
            &SPEC_NAT_GATEWAY.replace("\"8080\"", "\"0\""),
            "forward_entry[0].external_port",
        );
        assert_mentions(&i, &["1 to 65535"]);
    }

    /// The BASE lab with NAT gateways `ngw-0`, `ngw-1`, … on vsw-a, each with its own keys.
    fn with_gateways(keys: &[&str]) -> String {
        let gateways: String = keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("[[nat_gateway]]\nid = \"ngw-{i}\"\nvswitch = \"vsw-a\"\n{k}\n"))
            .collect();
        with_base(&gateways)
    }

    #[test]
    fn nat_gateway_napt_defaults_are_the_clouds() {
        let lab = parse(SPEC_NAT_GATEWAY).unwrap();
        let g = &lab.nat_gateway[0];
        assert_eq!(g.napt_config(), crate::napt::NaptConfig::cloud());
        assert_eq!(g.timeouts, NatTimeouts::Cloud);
        assert_eq!(g.udp_timeout, None);
        assert_eq!(g.ports.to_string(), "1024-65535");
    }

    #[test]
    fn nat_gateway_napt_knobs_are_read() {
        use crate::napt::{Behaviour, NaptConfig, Pooling};
        const S: u64 = 1_000_000_000;
        // Every value differs from the cloud's, so each key must be read for this to pass.
        let lab = parse(&with_gateways(&[
            "mapping = \"address-dependent\"\nfiltering = \"endpoint-independent\"\n\
             port_preservation = true\npooling = \"paired\"\nhairpinning = false\n\
             tcp_established_timeout = 7440\ntcp_transitory_timeout = 300\nudp_timeout = 120\n\
             icmp_timeout = 30\nmax_sessions = 5000\nports = \" 2000 - 2999 \"",
            "mapping = \"address-and-port-dependent\"\nfiltering = \"address-dependent\"\n\
             pooling = \"arbitrary\"\nports = \"7-7\"",
        ]))
        .unwrap();
        assert_eq!(
            lab.nat_gateway[0].napt_config(),
            NaptConfig {
                mapping: Behaviour::AddressDependent,
                filtering: Behaviour::EndpointIndependent,
                port_preservation: true,
                pooling: Pooling::Paired,
                hairpinning: false,
                tcp_established_ns: 7440 * S,
                tcp_transitory_ns: 300 * S,
                udp_ns: 120 * S,
                icmp_ns: 30 * S,
                max_sessions: 5000,
                ports: 2000..=2999,
            }
        );
        let c = lab.nat_gateway[1].napt_config();
        assert_eq!(
            (c.mapping, c.filtering, c.pooling, c.ports),
            (
                Behaviour::AddressAndPortDependent,
                Behaviour::AddressDependent,
                Pooling::Arbitrary,
                7..=7
            )
        );
        for b in NatBehaviour::ALL {
            assert_eq!(NatBehaviour::of(b.behaviour()), *b);
        }
    }

    #[test]
    fn nat_gateway_rfc_timeouts_with_one_override() {
        use crate::napt::NaptConfig;
        let lab = parse(&with_gateways(&[
            "timeouts = \"rfc\"\nudp_timeout = 300",
            "timeouts = \"rfc\"",
        ]))
        .unwrap();
        let rfc = NaptConfig::rfc_minimums();
        // The RFCs' timeouts, UDP's overridden; the behaviours stay the cloud's.
        let want = NaptConfig {
            tcp_established_ns: rfc.tcp_established_ns,
            tcp_transitory_ns: rfc.tcp_transitory_ns,
            udp_ns: 300_000_000_000,
            icmp_ns: rfc.icmp_ns,
            ..NaptConfig::cloud()
        };
        assert_eq!(lab.nat_gateway[0].napt_config(), want);
        assert_eq!(lab.nat_gateway[1].napt_config().udp_ns, rfc.udp_ns);
        assert_ne!(
            rfc.tcp_established_ns,
            NaptConfig::cloud().tcp_established_ns
        );
    }

    #[test]
    fn nat_gateway_napt_bad_words_and_ranges_name_the_field() {
        let text = with_gateways(&[
            "mapping = \"full-cone\"\nports = \"0-100\"",
            "filtering = \"address-dependant\"\nports = \"2000-1000\"",
            "pooling = \"pair\"\nports = 5000",
            "timeouts = \"RFC\"\nhairpinning = \"yes\"\nports = \"1024\"",
            "timeout = \"rfc\"",
        ]);
        let words = "endpoint-independent, address-dependent, address-and-port-dependent";
        let i = at(&text, "nat_gateway[0].mapping");
        assert_mentions(&i, &["`full-cone` is not a valid NAT behaviour", words]);
        let i = at(&text, "nat_gateway[0].ports");
        assert_mentions(
            &i,
            &["`0-100` is not a port range", "1 <= first <= last <= 65535"],
        );
        let i = at(&text, "nat_gateway[1].filtering");
        assert_mentions(&i, &[words, "did you mean `address-dependent`?"]);
        let i = at(&text, "nat_gateway[1].ports");
        assert_mentions(&i, &["the lower port first", "\"1000-2000\""]);
        let i = at(&text, "nat_gateway[2].pooling");
        assert_mentions(&i, &["expected one of arbitrary, paired"]);
        let i = at(&text, "nat_gateway[2].ports");
        assert_mentions(&i, &["quoted \"first-last\"", "\"5000-5000\""]);
        let i = at(&text, "nat_gateway[3].timeouts");
        assert_mentions(&i, &["expected one of cloud, rfc", "did you mean `rfc`?"]);
        let i = at(&text, "nat_gateway[3].hairpinning");
        assert_mentions(&i, &["write true or false"]);
        let i = at(&text, "nat_gateway[3].ports");
        assert_mentions(&i, &["`1024` is not a port range"]);
        let i = at(&text, "nat_gateway[4].timeout");
        assert_mentions(
            &i,
            &[
                "did you mean `timeouts`?",
                "mapping, filtering, port_preservation, pooling, hairpinning, timeouts, \
                 tcp_established_timeout, tcp_transitory_timeout, udp_timeout, icmp_timeout, \
                 max_sessions, ports",
            ],
        );
    }

    #[test]
    fn nat_gateway_napt_bad_numbers_name_the_field() {
        let text = with_gateways(&[
            "udp_timeout = 0\nmax_sessions = 0",
            "timeouts = \"rfc\"\ntcp_established_timeout = 0\nmax_sessions = 16777217",
            "tcp_transitory_timeout = 604801\nicmp_timeout = 0",
            "max_sessions = 16777216\ntcp_established_timeout = 604800\nudp_timeout = 1",
        ]);
        let all = issues(&text);
        assert_eq!(all.len(), 6, "{all:#?}");
        let i = at(&text, "nat_gateway[0].udp_timeout");
        assert_mentions(
            &i,
            &[
                "udp_timeout is 0 s",
                "at least 1 second",
                "\"cloud\"'s 60 s",
            ],
        );
        let i = at(&text, "nat_gateway[0].max_sessions");
        assert_mentions(&i, &["max_sessions is 0", "at least 1", "default 1000000"]);
        let i = at(&text, "nat_gateway[1].tcp_established_timeout");
        assert_mentions(&i, &["at least 1 second", "\"rfc\"'s 7440 s"]);
        let i = at(&text, "nat_gateway[1].max_sessions");
        assert_mentions(&i, &["max_sessions = 16777217", "at most 16777216"]);
        let i = at(&text, "nat_gateway[2].tcp_transitory_timeout");
        assert_mentions(&i, &["longer than a week", "at most 604800 seconds"]);
        let i = at(&text, "nat_gateway[2].icmp_timeout");
        assert_mentions(&i, &["icmp_timeout is 0 s"]);
        // The bounds themselves are accepted (gateway 3).
    }

    #[test]
    fn load_balancer_and_havip_addresses() {
        let text = with_base(
            "[[load_balancer]]\nid = \"lb-a\"\n\
             [[load_balancer]]\nid = \"lb-b\"\naddress_type = \"internet\"\naddress = \"203.0.113.9\"\n\
             [[havip]]\nid = \"havip-a\"\nvswitch = \"vsw-a\"\nip_address = \"10.0.9.9\"\n",
        );
        let i = at(&text, "load_balancer[0].vswitch");
        assert_mentions(&i, &["needs a vswitch", "vswitch = \"vsw-a\""]);
        let i = at(&text, "load_balancer[1].address");
        assert_mentions(&i, &["outside the EIP pool"]);
        let i = at(&text, "havip[0].ip_address");
        assert_mentions(
            &i,
            &[
                "outside vswitch vsw-a's 10.0.1.0/24",
                "put the HaVip on another vswitch",
            ],
        );
    }

    #[test]
    fn clb_listeners_backends_and_health_checks_take_the_clouds_defaults() {
        let text = with_base(
            "[[load_balancer]]\nid = \"lb-a\"\nvswitch = \"vsw-a\"\nbackends = [\"i-web\"]\n\
             [[load_balancer.listener]]\nprotocol = \"tcp\"\nport = 80\n\
             [[load_balancer.listener]]\nprotocol = \"udp\"\nport = 53\nbackend_port = 5353\n\
             scheduler = \"rr\"\nidle_timeout = 30\n\
             health_check = { port = 9000, interval = 1, healthy_threshold = 2 }\n",
        );
        let lab = parse(&text).expect("parses");
        let spec = lab.load_balancer[0].clb_spec();
        assert_eq!(spec.backends, ["i-web"]);
        let [tcp, udp] = &spec.config.listeners[..] else {
            panic!("two listeners: {spec:?}")
        };
        use crate::clb::{ListenerProtocol, Scheduler};
        assert_eq!(
            (tcp.protocol, tcp.port, tcp.backend_port, tcp.scheduler),
            (ListenerProtocol::Tcp, 80, 80, Scheduler::WeightedRoundRobin)
        );
        assert_eq!(tcp.idle_timeout_ns, 900_000_000_000);
        let h = tcp.health;
        assert_eq!(
            (h.enabled, h.port, h.interval_ms, h.timeout_ms),
            (true, 80, 2000, 5000)
        );
        assert_eq!((h.healthy_threshold, h.unhealthy_threshold), (3, 3));
        assert_eq!(tcp.backends[0].weight, 100);
        assert_eq!(
            (udp.protocol, udp.backend_port, udp.scheduler),
            (ListenerProtocol::Udp, 5353, Scheduler::RoundRobin)
        );
        assert_eq!(udp.idle_timeout_ns, 30_000_000_000);
        let h = udp.health;
        assert_eq!(
            (h.port, h.interval_ms, h.healthy_threshold),
            (9000, 1000, 2)
        );
    }

    #[test]
    fn clb_entries_out_of_range_or_twice_are_refused_by_path() {
        let text = format!(
            "{BASE}[[instance]]\nid = \"i-b\"\nvswitch = \"vsw-a\"\n\
             enis = [{{ id = \"eni-b0\", private_ips = [\"10.0.1.11\"] }}]\n\
             [[load_balancer]]\nid = \"lb-a\"\nvswitch = \"vsw-a\"\nbackends = [\"i-web\"]\n\
             backend = [{{ instance = \"i-web\", weight = 5 }}, {{ instance = \"i-b\", weight = 101 }},\
             {{ instance = \"i-none\" }}]\n\
             [[load_balancer.listener]]\nprotocol = \"tcp\"\nport = 80\n\
             health_check = {{ interval = 51, unhealthy_threshold = 1 }}\n\
             [[load_balancer.listener]]\nprotocol = \"tcp\"\nport = 80\nidle_timeout = 0\n"
        );
        let i = at(&text, "load_balancer[0].backend[0].instance");
        assert_mentions(&i, &["i-web is a backend twice"]);
        let i = at(&text, "load_balancer[0].backend[1].weight");
        assert_mentions(&i, &["weight 101", "0 to 100"]);
        let i = at(&text, "load_balancer[0].backend[2].instance");
        assert_mentions(&i, &["i-none"]);
        let i = at(&text, "load_balancer[0].listener[0].health_check.interval");
        assert_mentions(&i, &["interval = 51", "1 to 50"]);
        let i = at(
            &text,
            "load_balancer[0].listener[0].health_check.unhealthy_threshold",
        );
        assert_mentions(&i, &["2 to 10"]);
        let i = at(&text, "load_balancer[0].listener[1].port");
        assert_mentions(&i, &["a second tcp listener on port 80"]);
        let i = at(&text, "load_balancer[0].listener[1].idle_timeout");
        assert_mentions(&i, &["at least 1 second"]);
        // A shape error inside a nested [[load_balancer.listener]] names its own path.
        let text = with_base(
            "[[load_balancer]]\nid = \"lb-a\"\nvswitch = \"vsw-a\"\n\
             [[load_balancer.listener]]\nprotocol = \"tcp\"\nport = 80\n\
             [[load_balancer.listener]]\nprotocol = \"sctp\"\nport = 1\n",
        );
        let i = at(&text, "load_balancer[0].listener[1].protocol");
        assert_mentions(&i, &["`sctp` is not a valid listener protocol", "tcp, udp"]);
    }

    #[test]
    fn all_errors_are_collected_and_sorted() {
        // Shape errors in several elements at once.
        let text = format!(
            "{BASE}[[eip]]\nallocation_id = \"a\"\naddress = \"x\"\n[[eip]]\nallocation_id = \"b\"\nbandwidth = -1\naddress = \"198.51.100.2\"\n[alg]\nftp = \"no\"\n"
        );
        let all = issues(&text);
        let paths: Vec<&str> = all.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            ["eip[0].address", "eip[1].bandwidth", "alg.ftp"],
            "{all:#?}"
        );
        // Meaning errors in several places at once.
        let text = BASE
            .replace("10.0.1.10", "10.0.2.10")
            .replace("vsw-a\"\nenis", "vsw-b\"\nenis");
        let text = format!("{text}[[eip]]\nallocation_id = \"e\"\naddress = \"1.2.3.4\"\n");
        let all = issues(&text);
        assert_eq!(all.len(), 2, "{all:#?}");
        let lines: Vec<_> = all.iter().map(|i| i.line.unwrap()).collect();
        assert!(lines.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn error_display_names_file_line_and_field() {
        let dir = std::env::temp_dir().join(format!("eiplab-labfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, BASE.replace("zone = \"cn-shanghai-b\"\n", "")).unwrap();
        let text = load(&file).unwrap_err().to_string();
        assert!(text.contains("is not valid (1 problem)"), "{text}");
        assert!(
            text.contains("bad.toml:2: vswitch[0].zone: missing required key `zone`"),
            "{text}"
        );
        std::fs::write(&file, BASE).unwrap();
        assert!(load(&file).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();

        let missing = load(FsPath::new("/nonexistent/lab.toml")).unwrap_err();
        assert!(matches!(missing, LabFileError::Read { .. }));
        assert!(missing.to_string().contains("/nonexistent/lab.toml"));
    }

    #[test]
    fn choice_enums_round_trip() {
        for m in AssociationMode::ALL {
            assert_eq!(m.as_str().parse::<AssociationMode>().unwrap(), *m);
        }
        assert_eq!(
            AssociationInstanceType::SlbInstance.to_string(),
            "SlbInstance"
        );
        assert_eq!(ForwardPort::Any.to_string(), "any");
        assert_eq!("ANY".parse::<ForwardPort>().unwrap(), ForwardPort::Any);
    }
}
