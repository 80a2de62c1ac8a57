//! The cloud model (SPEC §3): resources, association rules with the cloud's error codes, and
//! the EIP state machine. Pure: time comes in as nanoseconds of the lab clock, randomness as
//! a number the caller draws.
//!
//! vSwitches, instances, ENIs, EIPs; allocation (random from the pool), recovery within 7
//! days, release; association with ECS instances and ENIs in NAT, BINDED and MULTI_BINDED
//! mode, and batch association; the ECS actions the seeds' procedures need (attach/detach,
//! private IPs, start/stop); Associating/Unassociating and Starting/Stopping as timed states;
//! the engine table derived from the state ([`Cloud::table`]).
//! NAT gateways, HaVips and CLBs: their association rules; what they carry is in [`Cloud::dataplane`].
//! SNAT/DNAT entries: from the lab file, and created, modified and deleted by the API with the
//! cloud's rules ([`nat`]).

use crate::engine::table::{
    AssociationMode, EipAssociation, EipConfig, EniConfig, EniId, InstanceRef, TableBuilder,
};
use core::fmt;
use core::net::Ipv4Addr;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

#[cfg(test)]
pub(crate) mod fixture;
pub mod havip;
pub mod nat;
#[cfg(test)]
mod tests;

/// Nanoseconds in a day of the lab clock.
pub const DAY_NS: u64 = 86_400 * 1_000_000_000;
/// How long a released EIP can be recovered (000, 004).
pub const RECOVERY_WINDOW_NS: u64 = 7 * DAY_NS;
/// Bandwidth of a recovered EIP, Mbit/s (004).
pub const RECOVERED_BANDWIDTH: u32 = 5;
/// MULTI_BINDED: EIPs per ENI (001).
pub const MAX_MULTI_BINDED: usize = 10;

/// Regions where cut-through (BINDED) is offered (001's table, by region id).
pub const BINDED_REGIONS: &[&str] = &[
    "cn-hangzhou",
    "cn-shanghai",
    "cn-qingdao",
    "cn-beijing",
    "cn-zhangjiakou",
    "cn-huhehaote",
    "cn-shenzhen",
    "cn-guangzhou",
    "cn-chengdu",
    "ap-southeast-1",
    "ap-southeast-5",
    "eu-central-1",
    "eu-west-1",
    "us-east-1",
];
/// Regions where multi-EIP-to-ENI (MULTI_BINDED) is offered (001's table).
pub const MULTI_BINDED_REGIONS: &[&str] = &[
    "cn-shenzhen",
    "cn-shanghai",
    "cn-beijing",
    "cn-zhangjiakou",
    "cn-chengdu",
    "ap-southeast-1",
    "eu-central-1",
    "ap-south-1",
    "us-east-1",
    "eu-west-1",
];

/// A refused call: the cloud's error code, its HTTP status and a message saying what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudError {
    pub code: &'static str,
    pub status: u16,
    pub message: String,
}

impl CloudError {
    fn new(code: &'static str, status: u16, message: impl Into<String>) -> Self {
        CloudError {
            code,
            status,
            message: message.into(),
        }
    }
    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(code, 400, message)
    }
}

impl fmt::Display for CloudError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]: {}", self.code, self.status, self.message)
    }
}

impl std::error::Error for CloudError {}

/// EIP status as DescribeEipAddresses spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EipStatus {
    Available,
    Associating,
    InUse,
    Unassociating,
}

impl EipStatus {
    pub fn api_name(self) -> &'static str {
        match self {
            EipStatus::Available => "Available",
            EipStatus::Associating => "Associating",
            EipStatus::InUse => "InUse",
            EipStatus::Unassociating => "Unassociating",
        }
    }
}

/// Instance status as ECS spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceStatus {
    Pending,
    Starting,
    Running,
    Stopping,
    Stopped,
}

/// AssociateEipAddress `InstanceType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BindType {
    EcsInstance,
    NetworkInterface,
    Nat,
    HaVip,
    SlbInstance,
}

impl BindType {
    pub fn api_name(self) -> &'static str {
        match self {
            BindType::EcsInstance => "EcsInstance",
            BindType::NetworkInterface => "NetworkInterface",
            BindType::Nat => "Nat",
            BindType::HaVip => "HaVip",
            BindType::SlbInstance => "SlbInstance",
        }
    }
}

/// Parses a `Mode` parameter.
pub fn parse_mode(s: &str) -> Result<AssociationMode, CloudError> {
    match s {
        "NAT" => Ok(AssociationMode::Nat),
        "BINDED" => Ok(AssociationMode::Binded),
        "MULTI_BINDED" => Ok(AssociationMode::MultiBinded),
        _ => Err(CloudError::bad(
            "InvalidParameter.Mode",
            format!("Mode {s:?} is not one of NAT, BINDED, MULTI_BINDED"),
        )),
    }
}

/// Parses an `InstanceType` parameter.
pub fn parse_bind_type(s: &str) -> Result<BindType, CloudError> {
    match s {
        "EcsInstance" => Ok(BindType::EcsInstance),
        "NetworkInterface" => Ok(BindType::NetworkInterface),
        "Nat" => Ok(BindType::Nat),
        "HaVip" => Ok(BindType::HaVip),
        "SlbInstance" => Ok(BindType::SlbInstance),
        _ => Err(CloudError::bad(
            "InvalidInstanceType.ValueNotSupported",
            format!(
                "InstanceType {s:?} cannot take an EIP: use EcsInstance, NetworkInterface, Nat, \
                 HaVip or SlbInstance (ALB and NLB get EIPs from their own consoles)"
            ),
        )),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VSwitch {
    pub id: String,
    pub region: String,
    pub zone: String,
    pub network: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub region: String,
    pub instance_type: String,
    pub status: InstanceStatus,
    /// `false`: a classic-network instance (cannot take an EIP).
    pub vpc: bool,
    /// A fixed (system-assigned) public IP.
    pub public_ip: Option<Ipv4Addr>,
    pub dhcp: bool,
    /// Dataplane number of the instance.
    pub index: u32,
    /// Overrides of the instance type's ENI and private-IP limits (lab file).
    #[serde(default)]
    pub max_enis: Option<u32>,
    #[serde(default)]
    pub max_private_ips_per_eni: Option<u32>,
    /// End of the current Starting/Stopping state.
    #[serde(default)]
    pub transition_until: Option<u64>,
}

/// Instance families whose instances can take an ENI with MULTI_BINDED EIPs (001).
pub const MULTI_BINDED_FAMILIES: &[&str] = &[
    "ecs.d1ne",
    "ecs.ebmc4",
    "ecs.ebmg5",
    "ecs.ebmhfg5",
    "ecs.f1",
    "ecs.gn5i",
    "ecs.gn6v",
    "ecs.i2",
    "ecs.r1",
    "ecs.re4",
    "ecs.re4e",
    "ecs.sccg5",
    "ecs.sccgn6",
    "ecs.scch5",
    "ecs.g5",
    "ecs.c5",
    "ecs.r5",
    "ecs.t5",
    "ecs.sn2ne",
    "ecs.se1ne",
    "ecs.sn1ne",
];

/// ENIs per instance and private IPs per ENI for an instance type. `.large` sizes of the
/// current families take 2 ENIs of 6 IPs (002's ecs.c6.large example); bigger sizes more.
pub fn type_limits(instance_type: &str) -> (u32, u32) {
    let size = instance_type.rsplit('.').next().unwrap_or("");
    match size {
        "small" | "medium" => (1, 2),
        "large" => (2, 6),
        "xlarge" => (3, 10),
        "2xlarge" => (4, 10),
        _ => (8, 20),
    }
}

impl Instance {
    pub fn limits(&self) -> (u32, u32) {
        let (e, i) = type_limits(&self.instance_type);
        (
            self.max_enis.unwrap_or(e),
            self.max_private_ips_per_eni.unwrap_or(i),
        )
    }

    /// `ecs.g5` of `ecs.g5.large`.
    pub fn family(&self) -> &str {
        match self.instance_type.rfind('.') {
            Some(i) => &self.instance_type[..i],
            None => &self.instance_type,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eni {
    pub id: String,
    pub region: String,
    pub vswitch: String,
    /// Primary first; the primary is fixed at creation.
    pub private_ips: Vec<Ipv4Addr>,
    /// The primary ENI (eth0) of an instance.
    pub primary: bool,
    /// Instance it is attached to.
    pub instance: Option<String>,
    /// Dataplane id (stable, so counters follow the ENI).
    pub index: u16,
}

impl Eni {
    /// The ENI's MAC address: Alibaba Cloud's OUI 00:16:3e and the ENI's dataplane index. The
    /// one answer of the API (DescribeNetworkInterfaces) and the metadata service (`mac`,
    /// `network/interfaces/macs/`).
    pub fn mac(&self) -> String {
        format!(
            "00:16:3e:00:{:02x}:{:02x}",
            self.index >> 8,
            self.index & 0xff
        )
    }
}

/// See [`Cloud::eni_resolver`].
pub struct EniResolver<'a> {
    cloud: &'a Cloud,
    primary: std::collections::HashMap<&'a str, &'a Eni>,
}

impl<'a> EniResolver<'a> {
    /// The ENI that carries traffic for `b` (as [`Cloud::bound_eni`]).
    pub fn bound_eni(&self, b: &Binding) -> Option<&'a Eni> {
        match b.bind_type {
            BindType::NetworkInterface => self.cloud.enis.get(&b.instance_id),
            BindType::EcsInstance => self.primary.get(b.instance_id.as_str()).copied(),
            _ => None,
        }
    }
}

/// An EIP's binding as AssociateEipAddress recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub bind_type: BindType,
    /// The id the caller gave (instance, ENI, gateway, …).
    pub instance_id: String,
    pub mode: Mode,
    /// The private IP it maps to (NAT) or that it replaces (BINDED).
    pub private_ip: Option<Ipv4Addr>,
}

/// How an EIP reaches its ENI: the engine's own type, stored as is.
pub use crate::engine::AssociationMode as Mode;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eip {
    pub allocation_id: String,
    pub address: Ipv4Addr,
    pub region: String,
    pub bandwidth: u32,
    pub internet_charge_type: String,
    pub status: EipStatus,
    /// Lab-clock nanoseconds.
    pub allocated_at: u64,
    pub binding: Option<Binding>,
    /// End of the current Associating/Unassociating state.
    pub transition_until: Option<u64>,
    /// Dataplane slot (counters and policer).
    pub slot: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasedEip {
    pub allocation_id: String,
    pub address: Ipv4Addr,
    pub region: String,
    pub released_at: u64,
}

/// An Internet NAT gateway (its SNAT/DNAT dataplane comes later; its association rules now).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatGateway {
    pub id: String,
    pub region: String,
    pub vswitch: String,
    /// Created on or after 2022-09-19: each EIP takes a private IP of the vSwitch (000, 003).
    pub eip_takes_private_ip: bool,
}

/// Maximum EIPs on one NAT gateway (000).
pub const MAX_NAT_GATEWAY_EIPS: usize = 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnatEntry {
    pub id: String,
    pub nat_gateway: String,
    pub snat_ips: Vec<Ipv4Addr>,
    /// What it translates: a CIDR (`SourceCIDR`, as `a.b.c.d/len`) or a vSwitch's hosts
    /// (`SourceVSwitchId`). States saved before these were kept read as neither.
    #[serde(default)]
    pub source_cidr: Option<String>,
    #[serde(default)]
    pub source_vswitch: Option<String>,
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardEntry {
    pub id: String,
    pub nat_gateway: String,
    pub external_ip: Ipv4Addr,
    pub internal_ip: Ipv4Addr,
    /// `ExternalPort` / `InternalPort` as the API spells them: a port, or `Any` (whole IP).
    #[serde(default = "any_word")]
    pub external_port: String,
    #[serde(default = "any_word")]
    pub internal_port: String,
    /// `TCP`, `UDP` or `Any`.
    #[serde(default = "any_word")]
    pub ip_protocol: String,
    #[serde(default)]
    pub name: String,
}

fn any_word() -> String {
    "Any".into()
}

/// A high-availability virtual IP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaVip {
    pub id: String,
    pub region: String,
    pub vswitch: String,
    pub ip: Ipv4Addr,
    /// `Available`, `InUse` (the seeds' "Assigned") or another state that refuses EIPs.
    pub status: String,
    /// The ECS instances (or ENIs) it is associated with (AssociateHaVip); the first holds it
    /// (DescribeHaVips' `MasterInstanceId`). A state saved before it was kept has none.
    #[serde(default)]
    pub associated_instances: Vec<String>,
    /// `Name` and `Description` (CreateHaVip).
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// When the API created it (lab time, ns); 0 for the lab file's.
    #[serde(default)]
    pub created: u64,
}

/// A load balancer: only an internal (intranet) CLB in a VPC takes an EIP this way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancer {
    pub id: String,
    pub region: String,
    /// `clb`, `alb` or `nlb`.
    pub kind: String,
    pub intranet: bool,
    pub vpc: bool,
    /// An intranet CLB's address in its vSwitch (taken like an ENI's private IP); `None` for
    /// an internet-facing one, or in a state saved before it was kept.
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
}

/// One change of the cloud's state, as the model records it ([`Cloud::take_changes`]) and as
/// its mutating methods return it: what the shell must save, and what it means for the
/// dataplane (the shell rebuilds the table and, in the lab, reconfigures guests).
/// `NatEntries`: a gateway's SNAT or DNAT entries were created, modified or deleted.
///
/// Every change of the state has a record, including those the dataplane does not see, so
/// that "the record is empty" means "the state is as it was": counters that number new things
/// (dataplane slots, ENI and instance indexes, EIP and entry serials) move only with the
/// change that takes the number (`EipAllocated`, `EniAdded`, `InstanceAdded`, `NatEntries`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    EipMapped {
        allocation_id: String,
    },
    EipUnmapped {
        allocation_id: String,
    },
    /// An EIP started Associating or Unassociating: its status, binding and deadline changed
    /// but not yet its dataplane (`EipMapped` / `EipUnmapped` follow when it ends). A change of
    /// state of its own, since the transition outlives the call and must be saved.
    EipTransition {
        allocation_id: String,
    },
    EipAllocated {
        allocation_id: String,
    },
    EipReleased {
        allocation_id: String,
    },
    /// A released EIP's 7-day recovery window ended: it left the list of recoverable EIPs.
    /// Nothing in the dataplane, but the saved state changes.
    RecoveryExpired {
        allocation_id: String,
    },
    BandwidthChanged {
        allocation_id: String,
    },
    EniAttached {
        eni_id: String,
    },
    EniDetached {
        eni_id: String,
    },
    EniAddresses {
        eni_id: String,
    },
    InstanceStatus {
        instance_id: String,
    },
    NatEntries {
        nat_gateway: String,
    },
    /// A HaVip was created, associated, unassociated, deleted or moved to another holder
    /// ([`havip`]): the ENI its address and EIP reach may have changed.
    HaVip {
        havip_id: String,
    },
    /// The lab added a vSwitch, an instance or an ENI ([`Cloud::add_vswitch`],
    /// [`Cloud::add_instance`], [`Cloud::add_eni`]): the API creates none, so no other
    /// variant says so.
    VSwitchAdded {
        vswitch_id: String,
    },
    InstanceAdded {
        instance_id: String,
    },
    EniAdded {
        eni_id: String,
    },
    /// The cloud's [`Settings`] changed ([`Cloud::set_transition_ns`]): no resource did.
    Settings,
}

/// The changes made since the record was last taken ([`Cloud::take_changes`]). Not part of
/// the state: it is not saved, and two clouds that differ only in their records are equal.
#[derive(Clone, Debug, Default)]
struct Journal(Vec<Change>);

impl PartialEq for Journal {
    fn eq(&self, _: &Journal) -> bool {
        true
    }
}

impl Eq for Journal {}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub region: String,
    /// `[account] multi_binded`.
    pub multi_binded_allowed: bool,
    /// How long Associating/Unassociating last.
    pub transition_ns: u64,
    /// EIP pool as (network, prefix length).
    pub eip_pool: Vec<(Ipv4Addr, u8)>,
    /// The VPC's id (`[vpc] id`), as the API answers it. A state saved before it was kept
    /// reads as the lab file's default.
    #[serde(default = "default_vpc_id")]
    pub vpc_id: String,
    /// The VPC's address blocks as (network, prefix length): `[vpc] cidr`, or the vSwitches'
    /// CIDRs. Empty (a state saved before it was kept): the vSwitches' CIDRs.
    #[serde(default)]
    pub vpc_cidrs: Vec<(Ipv4Addr, u8)>,
}

fn default_vpc_id() -> String {
    "vpc-lab".into()
}

/// The cloud's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cloud {
    pub settings: Settings,
    pub vswitches: BTreeMap<String, VSwitch>,
    pub instances: BTreeMap<String, Instance>,
    pub enis: BTreeMap<String, Eni>,
    pub eips: BTreeMap<String, Eip>,
    pub released: Vec<ReleasedEip>,
    #[serde(default)]
    pub nat_gateways: BTreeMap<String, NatGateway>,
    #[serde(default)]
    pub snat_entries: Vec<SnatEntry>,
    #[serde(default)]
    pub forward_entries: Vec<ForwardEntry>,
    #[serde(default)]
    pub havips: BTreeMap<String, HaVip>,
    #[serde(default)]
    pub load_balancers: BTreeMap<String, LoadBalancer>,
    next_slot: u32,
    next_eni_index: u16,
    next_instance_index: u32,
    next_eip_serial: u64,
    /// Numbers the SNAT/DNAT entries and the HaVips the API creates (a state saved before it was kept
    /// starts from 0; a number whose id is taken is skipped).
    #[serde(default)]
    next_entry_serial: u64,
    /// What changed since [`Cloud::take_changes`] last took it.
    #[serde(skip)]
    journal: Journal,
}

/// AssociateEipAddress's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Associate {
    pub allocation_id: String,
    pub instance_id: String,
    pub bind_type: BindType,
    pub mode: AssociationMode,
    pub private_ip: Option<Ipv4Addr>,
}

fn not_found_eip(id: &str) -> CloudError {
    CloudError::new(
        "InvalidAllocationId.NotFound",
        404,
        format!("no EIP {id} in this region: check the AllocationId (DescribeEipAddresses)"),
    )
}

/// Bindings a batch has checked and not yet made, by allocation id: each of an EIP that is
/// Available (so without a binding) in the state.
type Pending = [(String, Binding)];

fn is_pending(pending: &Pending, id: &str) -> bool {
    pending.iter().any(|(p, _)| p == id)
}

/// An EIP that is not Available: bound (or binding, or unbinding) already.
fn bound_already(id: &str, status: EipStatus, binding: Option<&Binding>) -> CloudError {
    CloudError::bad(
        "IncorrectEipStatus",
        format!(
            "EIP {id} is {} (bound to {}): an EIP is bound to one resource at a time; \
             unassociate it first",
            status.api_name(),
            binding.map_or("-", |b| b.instance_id.as_str())
        ),
    )
}

/// An EIP in a transition: only queries until it settles.
fn task_conflict(id: &str, status: EipStatus) -> CloudError {
    CloudError::bad(
        "TaskConflict",
        format!(
            "EIP {id} is {}: only queries are allowed until it settles; poll \
             DescribeEipAddresses",
            status.api_name()
        ),
    )
}

fn not_found_instance(id: &str) -> CloudError {
    CloudError::bad(
        "InvalidInstanceId.NotFound",
        format!("no instance or network interface {id}: check InstanceId and InstanceType"),
    )
}

/// Whether a vSwitch may hand out `ip`: the cloud reserves its first address and its last
/// three (the gateway, two below broadcast, is one of them unless the lab moves it).
fn usable_in(v: &VSwitch, ip: Ipv4Addr) -> bool {
    let size = 1u32 << (32 - v.prefix_len as u32);
    let k = u32::from(ip).wrapping_sub(u32::from(v.network));
    k != 0 && k + 3 < size && ip != v.gateway
}

fn in_cidr(a: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(a) & mask == u32::from(net) & mask
}

impl Cloud {
    pub fn new(settings: Settings) -> Cloud {
        Cloud {
            settings,
            vswitches: BTreeMap::new(),
            instances: BTreeMap::new(),
            enis: BTreeMap::new(),
            eips: BTreeMap::new(),
            released: Vec::new(),
            nat_gateways: BTreeMap::new(),
            snat_entries: Vec::new(),
            forward_entries: Vec::new(),
            havips: BTreeMap::new(),
            load_balancers: BTreeMap::new(),
            next_slot: 0,
            next_eni_index: 0,
            next_instance_index: 0,
            next_eip_serial: 0,
            next_entry_serial: 0,
            journal: Journal::default(),
        }
    }

    /// Takes the record of what changed since it was last taken, leaving it empty.
    ///
    /// Every method that changes the state records what it changes, and changes nothing when
    /// it fails (each checks everything before it changes anything); a query records nothing.
    /// So an empty record means the state is as it was, and a refused call needs no undoing.
    /// Code outside the model that writes the public fields directly (the lab building its
    /// cloud, tests) is not recorded: do that only before the cloud is handed to the control
    /// plane, which saves and publishes its first state whole.
    pub fn take_changes(&mut self) -> Vec<Change> {
        core::mem::take(&mut self.journal.0)
    }

    fn record(&mut self, c: Change) {
        self.journal.0.push(c);
    }

    /// Where the record is now, for [`Cloud::changes_since`].
    fn mark(&self) -> usize {
        self.journal.0.len()
    }

    /// What a method recorded since `mark`: what it returns to its caller.
    fn changes_since(&self, mark: usize) -> Vec<Change> {
        self.journal.0[mark..].to_vec()
    }

    /// Sets how long Associating/Unassociating and Starting/Stopping last, for the
    /// transitions that start from now on.
    pub fn set_transition_ns(&mut self, ns: u64) {
        if self.settings.transition_ns != ns {
            self.settings.transition_ns = ns;
            self.record(Change::Settings);
        }
    }

    /// Adds (or replaces) a vSwitch.
    pub fn add_vswitch(&mut self, v: VSwitch) {
        let id = v.id.clone();
        if self.vswitches.get(&id) != Some(&v) {
            self.vswitches.insert(id.clone(), v);
            self.record(Change::VSwitchAdded { vswitch_id: id });
        }
    }

    /// Adds an instance; `index` is assigned here.
    pub fn add_instance(&mut self, mut i: Instance) {
        i.index = self.next_instance_index;
        self.next_instance_index += 1;
        let id = i.id.clone();
        self.instances.insert(id.clone(), i);
        self.record(Change::InstanceAdded { instance_id: id });
    }

    /// Adds an ENI; `index` is assigned here.
    pub fn add_eni(&mut self, mut e: Eni) {
        e.index = self.next_eni_index;
        self.next_eni_index += 1;
        let id = e.id.clone();
        self.enis.insert(id.clone(), e);
        self.record(Change::EniAdded { eni_id: id });
    }

    /// Adds an EIP as the lab file declares it (Available).
    pub fn add_eip(&mut self, now: u64, allocation_id: &str, address: Ipv4Addr, bandwidth: u32) {
        let region = self.settings.region.clone();
        self.insert_eip(now, allocation_id, address, &region, bandwidth, None);
    }

    /// A new Available EIP with the next dataplane slot (charged `PayByTraffic` unless
    /// `charge_type` says otherwise).
    fn insert_eip(
        &mut self,
        now: u64,
        id: &str,
        address: Ipv4Addr,
        region: &str,
        bandwidth: u32,
        charge_type: Option<&str>,
    ) {
        let slot = self.next_slot;
        self.next_slot += 1;
        self.eips.insert(
            id.to_string(),
            Eip {
                allocation_id: id.to_string(),
                address,
                region: region.to_string(),
                bandwidth,
                internet_charge_type: charge_type.unwrap_or("PayByTraffic").into(),
                status: EipStatus::Available,
                allocated_at: now,
                binding: None,
                transition_until: None,
                slot,
            },
        );
        self.record(Change::EipAllocated {
            allocation_id: id.to_string(),
        });
    }

    fn address_taken(&self, a: Ipv4Addr) -> bool {
        self.eips.values().any(|e| e.address == a)
            || self.instances.values().any(|i| i.public_ip == Some(a))
    }

    /// AllocateEipAddress: a random free address of the pool (`random` drawn by the caller),
    /// or, with `ip`, the recovery of a released one within 7 days.
    pub fn allocate(
        &mut self,
        now: u64,
        region: &str,
        bandwidth: u32,
        ip: Option<Ipv4Addr>,
        random: u64,
    ) -> Result<(String, Vec<Change>), CloudError> {
        self.allocate_charged(now, region, bandwidth, ip, random, None)
    }

    /// [`Cloud::allocate`] with AllocateEipAddress's `InternetChargeType` for a new EIP (a
    /// recovered one keeps `PayByTraffic`, its own). Checks everything, then ends the recovery
    /// windows that are over and makes the EIP.
    pub fn allocate_charged(
        &mut self,
        now: u64,
        region: &str,
        bandwidth: u32,
        ip: Option<Ipv4Addr>,
        random: u64,
        charge_type: Option<&str>,
    ) -> Result<(String, Vec<Change>), CloudError> {
        // The released EIPs still recoverable at `now` (the others go below, once it passed).
        let recoverable = |r: &ReleasedEip| Self::recoverable(r, now);
        let address = match ip {
            Some(a) => {
                if !self
                    .released
                    .iter()
                    .any(|r| recoverable(r) && r.address == a && r.region == region)
                {
                    return Err(CloudError::new(
                        "InvalidAllocationId.NotFound",
                        404,
                        format!(
                            "{a} is not a released EIP of {region} that can be recovered: \
                             only addresses released in the last 7 days and not taken \
                             again come back"
                        ),
                    ));
                }
                if self.address_taken(a) {
                    return Err(CloudError::new(
                        "InvalidAllocationId.NotFound",
                        404,
                        format!("{a} has been taken again and cannot be recovered"),
                    ));
                }
                a
            }
            None => self.random_free(now, random).ok_or_else(|| {
                CloudError::bad(
                    "QuotaExceeded.Eip",
                    "the lab's EIP pool has no free address: release an EIP or widen \
                     [internet] eip_pool",
                )
            })?,
        };
        // Checked: from here on it changes the state.
        let mark = self.mark();
        self.expire_released(now);
        let (bandwidth, id, charge_type) = match ip {
            Some(a) => {
                let pos = self
                    .released
                    .iter()
                    .position(|r| r.address == a && r.region == region)
                    .expect("checked above");
                let r = self.released.remove(pos);
                (RECOVERED_BANDWIDTH, r.allocation_id, None)
            }
            None => {
                let mut id;
                loop {
                    self.next_eip_serial += 1;
                    let n = random.rotate_left(23) ^ self.next_eip_serial.wrapping_mul(0x9e37_79b9);
                    id = format!("eip-{n:016x}");
                    if !self.eips.contains_key(&id)
                        && !self.released.iter().any(|r| r.allocation_id == id)
                    {
                        break;
                    }
                }
                (bandwidth, id, charge_type)
            }
        };
        self.insert_eip(now, &id, address, region, bandwidth, charge_type);
        Ok((id, self.changes_since(mark)))
    }

    /// Whether a released EIP can still be recovered at `now`.
    fn recoverable(r: &ReleasedEip, now: u64) -> bool {
        now.saturating_sub(r.released_at) <= RECOVERY_WINDOW_NS
    }

    fn random_free(&self, now: u64, random: u64) -> Option<Ipv4Addr> {
        let mut candidates = 0u64;
        for &(_, len) in &self.settings.eip_pool {
            candidates += 1u64 << (32 - len as u32);
        }
        if candidates == 0 {
            return None;
        }
        let start = random % candidates;
        for k in 0..candidates {
            let mut i = (start + k) % candidates;
            for &(net, len) in &self.settings.eip_pool {
                let size = 1u64 << (32 - len as u32);
                if i < size {
                    let a = Ipv4Addr::from(u32::from(net).wrapping_add(i as u32));
                    // Not the network, broadcast or the pool's gateway (two below broadcast).
                    let usable = size < 4 || (i != 0 && i + 1 != size && i + 3 != size);
                    let recoverable = self
                        .released
                        .iter()
                        .any(|r| r.address == a && Self::recoverable(r, now));
                    if usable && !recoverable && !self.address_taken(a) {
                        return Some(a);
                    }
                    break;
                }
                i -= size;
            }
        }
        None
    }

    /// Forgets the released EIPs whose recovery window is over at `now`.
    fn expire_released(&mut self, now: u64) {
        if self.released.iter().all(|r| Self::recoverable(r, now)) {
            return;
        }
        let (keep, gone): (Vec<ReleasedEip>, Vec<ReleasedEip>) =
            core::mem::take(&mut self.released)
                .into_iter()
                .partition(|r| Self::recoverable(r, now));
        self.released = keep;
        for r in gone {
            self.record(Change::RecoveryExpired {
                allocation_id: r.allocation_id,
            });
        }
    }

    fn eip_for_change(&self, id: &str) -> Result<&Eip, CloudError> {
        let e = self.eips.get(id).ok_or_else(|| not_found_eip(id))?;
        if matches!(e.status, EipStatus::Associating | EipStatus::Unassociating) {
            return Err(task_conflict(id, e.status));
        }
        Ok(e)
    }

    /// ReleaseEipAddress: only an Available EIP.
    pub fn release(&mut self, now: u64, id: &str) -> Result<Vec<Change>, CloudError> {
        let e = self.eip_for_change(id)?;
        if e.status != EipStatus::Available {
            return Err(CloudError::bad(
                "IncorrectEipStatus",
                format!("EIP {id} is {}: unassociate it first", e.status.api_name()),
            ));
        }
        let mark = self.mark();
        let e = self.eips.remove(id).expect("checked above");
        self.released.push(ReleasedEip {
            allocation_id: e.allocation_id,
            address: e.address,
            region: e.region,
            released_at: now,
        });
        self.record(Change::EipReleased {
            allocation_id: id.to_string(),
        });
        Ok(self.changes_since(mark))
    }

    /// ModifyEipAddressAttribute `Bandwidth`: the policer follows at once. The same bandwidth
    /// again changes nothing (and records nothing).
    pub fn set_bandwidth(&mut self, id: &str, mbps: u32) -> Result<Vec<Change>, CloudError> {
        if mbps == 0 {
            return Err(CloudError::bad(
                "InvalidParameter.Bandwidth",
                "Bandwidth must be at least 1 Mbit/s",
            ));
        }
        let mark = self.mark();
        if self.eip_for_change(id)?.bandwidth != mbps {
            self.eips.get_mut(id).expect("checked").bandwidth = mbps;
            self.record(Change::BandwidthChanged {
                allocation_id: id.to_string(),
            });
        }
        Ok(self.changes_since(mark))
    }

    /// EIPs bound to an ENI (by any bind type), with their bindings, settled or not.
    fn eips_on_eni<'a>(&'a self, eni: &Eni) -> impl Iterator<Item = (&'a Eip, &'a Binding)> + 'a {
        self.eips_on_eni_with(eni, &[])
    }

    /// [`Cloud::eips_on_eni`] as if the `pending` bindings were made too.
    fn eips_on_eni_with<'a>(
        &'a self,
        eni: &Eni,
        pending: &'a Pending,
    ) -> impl Iterator<Item = (&'a Eip, &'a Binding)> + 'a {
        let eni_id = eni.id.clone();
        let instance = eni.instance.clone();
        let primary = eni.primary;
        let hit = move |b: &Binding| match b.bind_type {
            BindType::NetworkInterface => b.instance_id == eni_id,
            BindType::EcsInstance => primary && instance.as_deref() == Some(&b.instance_id),
            _ => false,
        };
        let hit_pending = hit.clone();
        let made = self.eips.values().filter_map(move |e| {
            let b = e.binding.as_ref()?;
            (hit(b) && !is_pending(pending, &e.allocation_id)).then_some((e, b))
        });
        let checked = pending
            .iter()
            .filter(move |(_, b)| hit_pending(b))
            .filter_map(move |(id, b)| Some((self.eips.get(id)?, b)));
        made.chain(checked)
    }

    fn primary_eni_of(&self, instance: &str) -> Option<&Eni> {
        self.enis
            .values()
            .find(|e| e.primary && e.instance.as_deref() == Some(instance))
    }

    /// AssociateEipAddress: checks every rule, then starts Associating.
    pub fn associate(&mut self, now: u64, req: &Associate) -> Result<Vec<Change>, CloudError> {
        let binding = self.check_associate(req, &[])?;
        let mark = self.mark();
        self.start_associating(now, &req.allocation_id, binding);
        self.handle_timeout(now);
        Ok(self.changes_since(mark))
    }

    /// Starts Associating a checked binding (ended by [`Cloud::handle_timeout`]).
    fn start_associating(&mut self, now: u64, id: &str, binding: Binding) {
        let until = now + self.settings.transition_ns;
        let e = self.eips.get_mut(id).expect("checked");
        e.binding = Some(binding);
        e.status = EipStatus::Associating;
        e.transition_until = Some(until);
        self.record(Change::EipTransition {
            allocation_id: id.to_string(),
        });
    }

    /// Every rule of AssociateEipAddress, against the state as if the `pending` bindings
    /// (checked earlier in the same batch) were made: the binding to make.
    fn check_associate(&self, req: &Associate, pending: &Pending) -> Result<Binding, CloudError> {
        if let Some((_, b)) = pending.iter().find(|(id, _)| *id == req.allocation_id) {
            // Listed twice in a batch: the first made it Associating (InUse at once when
            // transitions take no time).
            return Err(if self.settings.transition_ns == 0 {
                bound_already(&req.allocation_id, EipStatus::InUse, Some(b))
            } else {
                task_conflict(&req.allocation_id, EipStatus::Associating)
            });
        }
        let eip = self.eip_for_change(&req.allocation_id)?;
        if eip.status != EipStatus::Available {
            return Err(bound_already(
                &eip.allocation_id,
                eip.status,
                eip.binding.as_ref(),
            ));
        }
        match req.bind_type {
            BindType::EcsInstance => self.check_ecs(eip, req, pending),
            BindType::NetworkInterface => self.check_eni(eip, req, pending),
            BindType::Nat => self.check_nat_gateway(eip, req, pending),
            BindType::HaVip => self.check_havip(eip, req, pending),
            BindType::SlbInstance => self.check_slb(eip, req, pending),
        }
    }

    /// EIPs bound (or binding) to a resource by id, as if the `pending` bindings were made.
    fn eips_bound_to<'a>(
        &'a self,
        id: &str,
        pending: &'a Pending,
    ) -> impl Iterator<Item = &'a Eip> + 'a {
        let id = id.to_string();
        let id_pending = id.clone();
        let made = self.eips.values().filter(move |e| {
            e.binding.as_ref().is_some_and(|b| b.instance_id == id)
                && !is_pending(pending, &e.allocation_id)
        });
        let checked = pending
            .iter()
            .filter(move |(_, b)| b.instance_id == id_pending)
            .filter_map(move |(e, _)| self.eips.get(e));
        made.chain(checked)
    }

    fn only_nat(req: &Associate) -> Result<(), CloudError> {
        if req.mode != AssociationMode::Nat {
            return Err(CloudError::bad(
                "InvalidParameter.Mode",
                format!("{} takes EIPs in NAT mode only", req.bind_type.api_name()),
            ));
        }
        Ok(())
    }

    fn check_nat_gateway(
        &self,
        eip: &Eip,
        req: &Associate,
        pending: &Pending,
    ) -> Result<Binding, CloudError> {
        let g = self
            .nat_gateways
            .get(&req.instance_id)
            .ok_or_else(|| not_found_instance(&req.instance_id))?;
        if g.region != eip.region {
            return Err(Self::mismatch(eip, &g.id, &g.region));
        }
        Self::only_nat(req)?;
        let n = self.eips_bound_to(&g.id, pending).count();
        if n >= MAX_NAT_GATEWAY_EIPS {
            return Err(CloudError::bad(
                "QuotaExceeded.NumberOfEip",
                format!(
                    "{} already has {n} EIPs: a NAT gateway takes {MAX_NAT_GATEWAY_EIPS}",
                    g.id
                ),
            ));
        }
        let private_ip = if g.eip_takes_private_ip {
            Some(self.free_ip_of_with(&g.vswitch, pending).ok_or_else(|| {
                CloudError::bad(
                    "OperationDenied.NoAvailablePrivateIp",
                    format!(
                        "{}'s vSwitch {} has no free private IP, and gateways created on or \
                         after 2022-09-19 take one per EIP: free an address or use a larger vSwitch",
                        g.id, g.vswitch
                    ),
                )
            })?)
        } else {
            None
        };
        Ok(Binding {
            bind_type: BindType::Nat,
            instance_id: g.id.clone(),
            mode: Mode::Nat,
            private_ip,
        })
    }

    fn check_havip(
        &self,
        eip: &Eip,
        req: &Associate,
        pending: &Pending,
    ) -> Result<Binding, CloudError> {
        let h = self
            .havips
            .get(&req.instance_id)
            .ok_or_else(|| not_found_instance(&req.instance_id))?;
        if h.region != eip.region {
            return Err(Self::mismatch(eip, &h.id, &h.region));
        }
        Self::only_nat(req)?;
        if h.status != "Available" && h.status != "InUse" {
            return Err(CloudError::bad(
                "IncorrectHaVipStatus",
                format!("{} is {}: it must be Available or InUse", h.id, h.status),
            ));
        }
        if let Some(other) = self.eips_bound_to(&h.id, pending).next() {
            return Err(CloudError::bad(
                "InvalidAssociation.Duplicated",
                format!(
                    "{} already has EIP {}: a HaVip takes one",
                    h.id, other.allocation_id
                ),
            ));
        }
        Ok(Binding {
            bind_type: BindType::HaVip,
            instance_id: h.id.clone(),
            mode: Mode::Nat,
            private_ip: Some(h.ip),
        })
    }

    fn check_slb(
        &self,
        eip: &Eip,
        req: &Associate,
        pending: &Pending,
    ) -> Result<Binding, CloudError> {
        let lb = self
            .load_balancers
            .get(&req.instance_id)
            .ok_or_else(|| not_found_instance(&req.instance_id))?;
        if lb.region != eip.region {
            return Err(Self::mismatch(eip, &lb.id, &lb.region));
        }
        Self::only_nat(req)?;
        if lb.kind != "clb" || !lb.intranet || !lb.vpc {
            return Err(CloudError::bad(
                "InvalidInstanceType.ValueNotSupported",
                format!(
                    "{} is {} {} in {}: only an internal-facing CLB in a VPC takes an EIP this \
                     way (ALB and NLB become internet-facing from their own consoles)",
                    lb.id,
                    if lb.intranet {
                        "an intranet"
                    } else {
                        "an internet-facing"
                    },
                    lb.kind.to_uppercase(),
                    if lb.vpc {
                        "a VPC"
                    } else {
                        "the classic network"
                    }
                ),
            ));
        }
        if let Some(other) = self.eips_bound_to(&lb.id, pending).next() {
            return Err(CloudError::bad(
                "InvalidAssociation.Duplicated",
                format!(
                    "{} already has EIP {}: a CLB takes one",
                    lb.id, other.allocation_id
                ),
            ));
        }
        Ok(Binding {
            bind_type: BindType::SlbInstance,
            instance_id: lb.id.clone(),
            mode: Mode::Nat,
            private_ip: None,
        })
    }

    /// A free address of a vSwitch (lowest first).
    pub fn free_ip_of(&self, vswitch: &str) -> Option<Ipv4Addr> {
        self.free_ip_of_with(vswitch, &[])
    }

    /// [`Cloud::free_ip_of`] as if the `pending` bindings were made.
    fn free_ip_of_with(&self, vswitch: &str, pending: &Pending) -> Option<Ipv4Addr> {
        let v = self.vswitches.get(vswitch)?;
        let size = 1u64 << (32 - v.prefix_len as u32);
        (1..size)
            .map(|k| Ipv4Addr::from(u32::from(v.network) + k as u32))
            .find(|&ip| usable_in(v, ip) && !self.ip_used_with(ip, pending))
    }

    /// AssociateEipAddressBatch: to a NAT gateway or a secondary ENI; every EIP is checked
    /// (against the state the earlier ones make) before any is applied.
    pub fn associate_batch(
        &mut self,
        now: u64,
        allocation_ids: &[String],
        instance_id: &str,
        bind_type: BindType,
        mode: AssociationMode,
    ) -> Result<Vec<Change>, CloudError> {
        if !matches!(bind_type, BindType::Nat | BindType::NetworkInterface) {
            return Err(CloudError::bad(
                "InvalidInstanceType.ValueNotSupported",
                "AssociateEipAddressBatch binds to a NAT gateway (Nat) or a secondary ENI \
                 (NetworkInterface) only",
            ));
        }
        if bind_type == BindType::NetworkInterface
            && self.enis.get(instance_id).is_some_and(|e| e.primary)
        {
            return Err(CloudError::bad(
                "Invalid.DirectEip.BindType",
                format!("{instance_id} is a primary ENI: batch association takes a secondary ENI"),
            ));
        }
        // Each EIP is checked against the state the earlier ones would make, before any is
        // made.
        let mut pending: Vec<(String, Binding)> = Vec::with_capacity(allocation_ids.len());
        for id in allocation_ids {
            let private_ip =
                if bind_type == BindType::NetworkInterface && mode == AssociationMode::Nat {
                    // Each EIP takes the next private IP without one.
                    let eni = self
                        .enis
                        .get(instance_id)
                        .ok_or_else(|| not_found_instance(instance_id))?;
                    eni.private_ips.iter().copied().find(|ip| {
                        !self
                            .eips_on_eni_with(eni, &pending)
                            .any(|(_, b)| b.private_ip == Some(*ip))
                    })
                } else {
                    None
                };
            let req = Associate {
                allocation_id: id.clone(),
                instance_id: instance_id.to_string(),
                bind_type,
                mode,
                private_ip,
            };
            let binding = self.check_associate(&req, &pending)?;
            pending.push((id.clone(), binding));
        }
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let mark = self.mark();
        for (id, binding) in pending {
            self.start_associating(now, &id, binding);
        }
        self.handle_timeout(now);
        Ok(self.changes_since(mark))
    }

    fn mismatch(eip: &Eip, what: &str, region: &str) -> CloudError {
        CloudError::bad(
            "InvalidParameter.Mismatch",
            format!(
                "EIP {} is in {} but {what} is in {region}: an EIP associates only within its \
                 region (zones may differ)",
                eip.allocation_id, eip.region
            ),
        )
    }

    fn check_ecs(
        &self,
        eip: &Eip,
        req: &Associate,
        pending: &Pending,
    ) -> Result<Binding, CloudError> {
        let i = self
            .instances
            .get(&req.instance_id)
            .ok_or_else(|| not_found_instance(&req.instance_id))?;
        if i.region != eip.region {
            return Err(Self::mismatch(eip, &i.id, &i.region));
        }
        if !i.vpc {
            return Err(CloudError::bad(
                "OperationDenied",
                format!(
                    "{} is in the classic network: EIPs go only to VPC instances",
                    i.id
                ),
            ));
        }
        if !matches!(i.status, InstanceStatus::Running | InstanceStatus::Stopped) {
            return Err(CloudError::bad(
                "IncorrectInstanceStatus",
                format!("{} is {:?}: it must be Running or Stopped", i.id, i.status),
            ));
        }
        if let Some(p) = i.public_ip {
            return Err(CloudError::bad(
                "EIP_CAN_NOT_ASSOCIATE_WITH_PUBLIC_IP",
                format!(
                    "{} has the fixed public IP {p}: an instance has one or the other",
                    i.id
                ),
            ));
        }
        if req.mode != AssociationMode::Nat {
            return Err(CloudError::bad(
                "InvalidParameter.Mode",
                "an EIP on an ECS instance works in NAT mode only; use NetworkInterface for \
                 BINDED or MULTI_BINDED",
            ));
        }
        let ips: Vec<Ipv4Addr> = self
            .enis
            .values()
            .filter(|e| e.instance.as_deref() == Some(i.id.as_str()))
            .flat_map(|e| e.private_ips.iter().copied())
            .collect();
        if let Some(f) = self
            .forward_entries
            .iter()
            .find(|f| ips.contains(&f.internal_ip))
        {
            return Err(CloudError::bad(
                "BIND_INSTANCE_HAVE_PORTMAP_OR_BIND_EIP",
                format!(
                    "{} is the target of DNAT entry {} on {}: delete the entry first, or use the \
                     NAT gateway for it",
                    i.id, f.id, f.nat_gateway
                ),
            ));
        }
        let eni = self.primary_eni_of(&i.id).ok_or_else(|| {
            CloudError::bad("OperationDenied", format!("{} has no primary ENI", i.id))
        })?;
        let primary_ip = eni.private_ips[0];
        for (other, b) in self.eips_on_eni_with(eni, pending) {
            if b.bind_type == BindType::EcsInstance || b.private_ip == Some(primary_ip) {
                return Err(CloudError::bad(
                    "InvalidAssociation.Duplicated",
                    format!(
                        "{} already has EIP {} on {primary_ip}: an ECS instance takes one EIP; \
                         use secondary ENIs for more",
                        i.id, other.allocation_id
                    ),
                ));
            }
        }
        Ok(Binding {
            bind_type: BindType::EcsInstance,
            instance_id: i.id.clone(),
            mode: Mode::Nat,
            private_ip: Some(primary_ip),
        })
    }

    fn check_eni(
        &self,
        eip: &Eip,
        req: &Associate,
        pending: &Pending,
    ) -> Result<Binding, CloudError> {
        let eni = self
            .enis
            .get(&req.instance_id)
            .ok_or_else(|| not_found_instance(&req.instance_id))?;
        if eni.region != eip.region {
            return Err(Self::mismatch(eip, &eni.id, &eni.region));
        }
        let mode = req.mode;
        if mode != Mode::Nat {
            let regions = if mode == Mode::Binded {
                BINDED_REGIONS
            } else {
                MULTI_BINDED_REGIONS
            };
            if !regions.contains(&eni.region.as_str()) {
                return Err(CloudError::bad(
                    "OperationUnsupported.EipBindModel",
                    format!(
                        "{} is not offered in {}: use NAT mode or one of {}",
                        req.mode.api_name(),
                        eni.region,
                        regions.join(", ")
                    ),
                ));
            }
            if mode == Mode::MultiBinded && !self.settings.multi_binded_allowed {
                return Err(CloudError::bad(
                    "Mode.NotSupport",
                    "MULTI_BINDED is closed to this account ([account] multi_binded = false)",
                ));
            }
            if eni.primary {
                return Err(CloudError::bad(
                    "Invalid.DirectEip.BindType",
                    format!(
                        "{} is a primary ENI: cut-through needs a secondary ENI",
                        eni.id
                    ),
                ));
            }
        }
        for (other, b) in self.eips_on_eni_with(eni, pending) {
            if b.mode != mode {
                return Err(CloudError::bad(
                    "OperationFailed.EipBindModeConflict",
                    format!(
                        "{} already carries EIP {} in {} mode: an ENI carries one mode of EIP",
                        eni.id,
                        other.allocation_id,
                        b.mode.api_name()
                    ),
                ));
            }
        }
        let existing = self.eips_on_eni_with(eni, pending).count();
        match mode {
            Mode::Nat => {
                let ip = req.private_ip.unwrap_or(eni.private_ips[0]);
                if !eni.private_ips.contains(&ip) {
                    return Err(CloudError::bad(
                        "InvalidPrivateIpAddress.NotFound",
                        format!(
                            "{ip} is not a private IP of {}: it has {:?}",
                            eni.id, eni.private_ips
                        ),
                    ));
                }
                if let Some((other, _)) = self
                    .eips_on_eni_with(eni, pending)
                    .find(|(_, b)| b.private_ip == Some(ip))
                {
                    return Err(CloudError::bad(
                        "InvalidEip.EipQuotaExceeded",
                        format!(
                            "{ip} on {} already maps EIP {}: one EIP per private IP; assign \
                             another private IP (AssignPrivateIpAddresses)",
                            eni.id, other.allocation_id
                        ),
                    ));
                }
                Ok(Binding {
                    bind_type: BindType::NetworkInterface,
                    instance_id: eni.id.clone(),
                    mode,
                    private_ip: Some(ip),
                })
            }
            Mode::Binded | Mode::MultiBinded => {
                if let Some(inst) = &eni.instance {
                    return Err(CloudError::bad(
                        "Eni.Attached",
                        format!(
                            "{} is attached to {inst}: detach it, associate the EIP, then attach \
                             it again",
                            eni.id
                        ),
                    ));
                }
                if mode == Mode::Binded {
                    if req.private_ip.is_some_and(|ip| ip != eni.private_ips[0]) {
                        return Err(CloudError::bad(
                            "Invalid.DirectEip.BindType",
                            format!(
                                "BINDED takes the primary private IP of {} ({}) only",
                                eni.id, eni.private_ips[0]
                            ),
                        ));
                    }
                    if eni.private_ips.len() > 1 {
                        return Err(CloudError::bad(
                            "Eni.HasSubIp",
                            format!(
                                "{} has secondary private IPs: unassign them before BINDED",
                                eni.id
                            ),
                        ));
                    }
                    if existing >= 1 {
                        return Err(CloudError::bad(
                            "InvalidAssociation.Duplicated",
                            format!("{} already has its BINDED EIP", eni.id),
                        ));
                    }
                } else if existing >= MAX_MULTI_BINDED {
                    return Err(CloudError::bad(
                        "QuotaExceed.MultiBindedEip",
                        format!(
                            "{} already has {MAX_MULTI_BINDED} MULTI_BINDED EIPs",
                            eni.id
                        ),
                    ));
                }
                Ok(Binding {
                    bind_type: BindType::NetworkInterface,
                    instance_id: eni.id.clone(),
                    mode,
                    private_ip: (mode == Mode::Binded).then(|| eni.private_ips[0]),
                })
            }
        }
    }

    /// UnassociateEipAddress: starts Unassociating.
    pub fn unassociate(
        &mut self,
        now: u64,
        id: &str,
        force: bool,
    ) -> Result<Vec<Change>, CloudError> {
        let e = self.eip_for_change(id)?;
        if e.status != EipStatus::InUse {
            return Err(CloudError::bad(
                "IncorrectEipStatus",
                format!("EIP {id} is {}: it is not associated", e.status.api_name()),
            ));
        }
        let a = e.address;
        if !force {
            if let Some(s) = self.snat_entries.iter().find(|s| s.snat_ips.contains(&a)) {
                return Err(CloudError::bad(
                    "InvalidIpStatus.HasBeenUsedBySnatTable",
                    format!(
                        "{a} is used by SNAT entry {}: delete it, or pass Force=true",
                        s.id
                    ),
                ));
            }
            if let Some(f) = self.forward_entries.iter().find(|f| f.external_ip == a) {
                return Err(CloudError::bad(
                    "InvalidIpStatus.HasBeenUsedByForwardEntry",
                    format!(
                        "{a} is used by DNAT entry {}: delete it, or pass Force=true",
                        f.id
                    ),
                ));
            }
        }
        // Checked: from here on it changes the state. With Force, the entries that use the
        // address lose it (an SNAT entry left without an address goes).
        let mark = self.mark();
        let mut gateways: Vec<String> = Vec::new();
        for s in &mut self.snat_entries {
            if s.snat_ips.contains(&a) || s.snat_ips.is_empty() {
                s.snat_ips.retain(|x| *x != a);
                gateways.push(s.nat_gateway.clone());
            }
        }
        self.snat_entries.retain(|s| !s.snat_ips.is_empty());
        for f in self.forward_entries.iter().filter(|f| f.external_ip == a) {
            gateways.push(f.nat_gateway.clone());
        }
        self.forward_entries.retain(|f| f.external_ip != a);
        gateways.sort();
        gateways.dedup();
        for nat_gateway in gateways {
            self.record(Change::NatEntries { nat_gateway });
        }
        let until = now + self.settings.transition_ns;
        let e = self.eips.get_mut(id).expect("checked");
        e.status = EipStatus::Unassociating;
        e.transition_until = Some(until);
        self.record(Change::EipTransition {
            allocation_id: id.to_string(),
        });
        self.handle_timeout(now);
        Ok(self.changes_since(mark))
    }

    /// The next time a transition ends.
    pub fn poll_timeout(&self) -> Option<u64> {
        let eips = self.eips.values().filter_map(|e| e.transition_until);
        let instances = self.instances.values().filter_map(|i| i.transition_until);
        eips.chain(instances).min()
    }

    /// Ends every transition due at `now`, and every recovery window over by then.
    pub fn handle_timeout(&mut self, now: u64) -> Vec<Change> {
        let mark = self.mark();
        let changes = &mut self.journal.0;
        for e in self.eips.values_mut() {
            if e.transition_until.is_some_and(|t| t <= now) {
                e.transition_until = None;
                let allocation_id = e.allocation_id.clone();
                match e.status {
                    EipStatus::Associating => {
                        e.status = EipStatus::InUse;
                        changes.push(Change::EipMapped { allocation_id });
                    }
                    EipStatus::Unassociating => {
                        e.status = EipStatus::Available;
                        e.binding = None;
                        changes.push(Change::EipUnmapped { allocation_id });
                    }
                    // A deadline on a settled EIP (not one the model sets): only it goes.
                    _ => changes.push(Change::EipTransition { allocation_id }),
                }
            }
        }
        for i in self.instances.values_mut() {
            if i.transition_until.is_some_and(|t| t <= now) {
                i.transition_until = None;
                i.status = match i.status {
                    InstanceStatus::Starting | InstanceStatus::Pending => InstanceStatus::Running,
                    InstanceStatus::Stopping => InstanceStatus::Stopped,
                    s => s,
                };
                changes.push(Change::InstanceStatus {
                    instance_id: i.id.clone(),
                });
            }
        }
        self.expire_released(now);
        self.changes_since(mark)
    }

    fn eni_for_change(&self, id: &str) -> Result<&Eni, CloudError> {
        let eni = self.enis.get(id).ok_or_else(|| {
            CloudError::new(
                "InvalidEniId.NotFound",
                404,
                format!("no network interface {id}: check NetworkInterfaceId"),
            )
        })?;
        if let Some((e, _)) = self
            .eips_on_eni(eni)
            .find(|(e, _)| e.transition_until.is_some())
        {
            return Err(CloudError::bad(
                "TaskConflict",
                format!(
                    "EIP {} on {id} is {}: retry when it settles",
                    e.allocation_id,
                    e.status.api_name()
                ),
            ));
        }
        Ok(eni)
    }

    fn instance(&self, id: &str) -> Result<&Instance, CloudError> {
        self.instances.get(id).ok_or_else(|| {
            CloudError::new(
                "InvalidInstanceId.NotFound",
                404,
                format!("no instance {id}: check InstanceId"),
            )
        })
    }

    /// AttachNetworkInterface: a detached secondary ENI to a Running or Stopped instance of
    /// its region, within the instance type's ENI limit. Its EIPs follow it (001).
    pub fn attach_eni(
        &mut self,
        eni_id: &str,
        instance_id: &str,
    ) -> Result<Vec<Change>, CloudError> {
        let eni = self.eni_for_change(eni_id)?;
        let inst = self.instance(instance_id)?;
        if let Some(other) = &eni.instance {
            return Err(CloudError::new(
                "InvalidOperation.InvalidEniState",
                403,
                format!("{eni_id} is attached to {other}: detach it first"),
            ));
        }
        if eni.region != inst.region {
            return Err(CloudError::bad(
                "InvalidParameter.Mismatch",
                format!(
                    "{eni_id} is in {} and {instance_id} in {}",
                    eni.region, inst.region
                ),
            ));
        }
        if !matches!(
            inst.status,
            InstanceStatus::Running | InstanceStatus::Stopped
        ) {
            return Err(CloudError::new(
                "IncorrectInstanceStatus",
                403,
                format!(
                    "{instance_id} is {:?}: it must be Running or Stopped",
                    inst.status
                ),
            ));
        }
        let (max_enis, _) = inst.limits();
        let attached = self
            .enis
            .values()
            .filter(|e| e.instance.as_deref() == Some(instance_id))
            .count();
        if attached as u32 >= max_enis {
            return Err(CloudError::new(
                "InvalidOperation.EniCountExceeded",
                403,
                format!(
                    "{instance_id} ({}) takes {max_enis} ENIs and has {attached}: detach one or use a larger type",
                    inst.instance_type
                ),
            ));
        }
        if self
            .eips_on_eni(eni)
            .any(|(_, b)| b.mode == Mode::MultiBinded)
        {
            if !MULTI_BINDED_FAMILIES.contains(&inst.family()) {
                return Err(CloudError::bad(
                    "OperationUnsupported.EipBindModel",
                    format!(
                        "{eni_id} carries MULTI_BINDED EIPs, which work only on the families {}; {instance_id} is {}",
                        MULTI_BINDED_FAMILIES.join(", "),
                        inst.family()
                    ),
                ));
            }
            if !inst.dhcp {
                return Err(CloudError::bad(
                    "OperationUnsupported.EipBindModel",
                    format!("{eni_id} carries MULTI_BINDED EIPs, which work only with DHCP on; {instance_id} has it off"),
                ));
            }
        }
        self.enis.get_mut(eni_id).expect("checked").instance = Some(instance_id.to_string());
        let c = Change::EniAttached {
            eni_id: eni_id.to_string(),
        };
        self.record(c.clone());
        Ok(vec![c])
    }

    /// DetachNetworkInterface: a secondary ENI from the instance it is attached to.
    pub fn detach_eni(
        &mut self,
        eni_id: &str,
        instance_id: &str,
    ) -> Result<Vec<Change>, CloudError> {
        let eni = self.eni_for_change(eni_id)?;
        self.instance(instance_id)?;
        if eni.instance.as_deref() != Some(instance_id) {
            return Err(CloudError::new(
                "InvalidOperation.InvalidEniState",
                403,
                format!("{eni_id} is not attached to {instance_id}"),
            ));
        }
        if eni.primary {
            return Err(CloudError::new(
                "InvalidOperation.DetachPrimaryEniNotAllowed",
                403,
                format!("{eni_id} is the primary ENI of {instance_id}: it cannot be detached"),
            ));
        }
        self.enis.get_mut(eni_id).expect("checked").instance = None;
        let c = Change::EniDetached {
            eni_id: eni_id.to_string(),
        };
        self.record(c.clone());
        Ok(vec![c])
    }

    /// AssignPrivateIpAddresses: the given addresses, or `count` free ones of the vSwitch.
    pub fn assign_private_ips(
        &mut self,
        eni_id: &str,
        ips: &[Ipv4Addr],
        count: u32,
    ) -> Result<(Vec<Ipv4Addr>, Vec<Change>), CloudError> {
        let eni = self.eni_for_change(eni_id)?;
        if self.eips_on_eni(eni).any(|(_, b)| b.mode == Mode::Binded) {
            return Err(CloudError::bad(
                "Eni.HasSubIp",
                format!(
                    "{eni_id} carries a BINDED EIP: a cut-through ENI has no secondary private IPs"
                ),
            ));
        }
        let vsw = self.vswitches.get(&eni.vswitch).cloned().ok_or_else(|| {
            CloudError::bad(
                "InvalidVSwitchId.NotFound",
                format!("{eni_id}'s vSwitch {} is gone", eni.vswitch),
            )
        })?;
        let max = eni
            .instance
            .as_ref()
            .and_then(|i| self.instances.get(i))
            .map_or(type_limits("").1, |i| i.limits().1);
        let mut new = Vec::new();
        for &ip in ips {
            if !in_cidr(ip, vsw.network, vsw.prefix_len)
                || self.ip_used(ip)
                || !usable_in(&vsw, ip)
                || new.contains(&ip)
            {
                return Err(CloudError::bad(
                    "InvalidPrivateIpAddress.Duplicated",
                    format!(
                        "{ip} is not a free address of {} ({}/{})",
                        vsw.id, vsw.network, vsw.prefix_len
                    ),
                ));
            }
            new.push(ip);
        }
        let size = 1u64 << (32 - vsw.prefix_len as u32);
        let mut k = 1;
        while (new.len() as u32) < ips.len() as u32 + count && k < size {
            let ip = Ipv4Addr::from(u32::from(vsw.network) + k as u32);
            if usable_in(&vsw, ip) && !self.ip_used(ip) && !new.contains(&ip) {
                new.push(ip);
            }
            k += 1;
        }
        if (new.len() as u32) < ips.len() as u32 + count {
            return Err(CloudError::bad(
                "InvalidVSwitchId.IpNotEnough",
                format!("{} has no free address left", vsw.id),
            ));
        }
        if eni.private_ips.len() + new.len() > max as usize {
            return Err(CloudError::new(
                "QuotaExceeded.PrivateIpAddress",
                403,
                format!(
                    "{eni_id} may carry {max} private IPs and has {}",
                    eni.private_ips.len()
                ),
            ));
        }
        if new.is_empty() {
            return Ok((new, Vec::new()));
        }
        self.enis
            .get_mut(eni_id)
            .expect("checked")
            .private_ips
            .extend(&new);
        let c = Change::EniAddresses {
            eni_id: eni_id.to_string(),
        };
        self.record(c.clone());
        Ok((new, vec![c]))
    }

    /// UnassignPrivateIpAddresses: secondary private IPs without an EIP.
    pub fn unassign_private_ips(
        &mut self,
        eni_id: &str,
        ips: &[Ipv4Addr],
    ) -> Result<Vec<Change>, CloudError> {
        let eni = self.eni_for_change(eni_id)?;
        for ip in ips {
            if !eni.private_ips[1..].contains(ip) {
                return Err(CloudError::bad(
                    "InvalidIp.NotFound",
                    format!("{ip} is not a secondary private IP of {eni_id} (the primary cannot be unassigned)"),
                ));
            }
            if let Some((e, _)) = self
                .eips_on_eni(eni)
                .find(|(_, b)| b.private_ip == Some(*ip))
            {
                return Err(CloudError::bad(
                    "InvalidOperation.IpHasEip",
                    format!("{ip} maps EIP {}: unassociate it first", e.allocation_id),
                ));
            }
        }
        if ips.is_empty() {
            return Ok(Vec::new());
        }
        self.enis
            .get_mut(eni_id)
            .expect("checked")
            .private_ips
            .retain(|a| !ips.contains(a));
        let c = Change::EniAddresses {
            eni_id: eni_id.to_string(),
        };
        self.record(c.clone());
        Ok(vec![c])
    }

    fn ip_used(&self, ip: Ipv4Addr) -> bool {
        self.ip_used_with(ip, &[])
    }

    /// [`Cloud::ip_used`] as if the `pending` bindings were made.
    fn ip_used_with(&self, ip: Ipv4Addr, pending: &Pending) -> bool {
        let gateway_takes = |b: &Binding| b.bind_type == BindType::Nat && b.private_ip == Some(ip);
        self.enis.values().any(|e| e.private_ips.contains(&ip))
            || self.havips.values().any(|h| h.ip == ip)
            || self.load_balancers.values().any(|l| l.address == Some(ip))
            || self
                .eips
                .values()
                .any(|e| e.binding.as_ref().is_some_and(gateway_takes))
            || pending.iter().any(|(_, b)| gateway_takes(b))
    }

    /// StartInstance / StopInstance: Stopped -> Starting -> Running, Running -> Stopping ->
    /// Stopped, each taking the transition time.
    pub fn set_running(
        &mut self,
        now: u64,
        id: &str,
        run: bool,
    ) -> Result<Vec<Change>, CloudError> {
        let t = self.settings.transition_ns;
        let i = self.instance(id)?;
        let (from, via) = if run {
            (InstanceStatus::Stopped, InstanceStatus::Starting)
        } else {
            (InstanceStatus::Running, InstanceStatus::Stopping)
        };
        if i.status != from {
            return Err(CloudError::new(
                "IncorrectInstanceStatus",
                403,
                format!("{id} is {:?}: it must be {from:?}", i.status),
            ));
        }
        let mark = self.mark();
        let i = self.instances.get_mut(id).expect("checked");
        i.status = via;
        i.transition_until = Some(now + t);
        self.record(Change::InstanceStatus {
            instance_id: id.to_string(),
        });
        self.handle_timeout(now);
        Ok(self.changes_since(mark))
    }

    /// The dataplane this state implies: every ENI, and every EIP, mapped where InUse or
    /// Unassociating (the mapping goes when the EIP is Available again).
    pub fn dataplane(&self) -> (Vec<EniConfig>, Vec<EipConfig>) {
        // D12: each HaVip's address is one more private IP of its holder's ENI.
        let mut havip_on: HashMap<&str, Vec<Ipv4Addr>> = HashMap::new();
        let mut havip_eni: HashMap<&str, (EniId, Ipv4Addr)> = HashMap::new();
        for h in self.havips.values() {
            if let Some(e) = self.havip_eni(h) {
                havip_on.entry(e.id.as_str()).or_default().push(h.ip);
                havip_eni.insert(h.id.as_str(), (e.index, h.ip));
            }
        }
        let mut enis = Vec::with_capacity(self.enis.len());
        for eni in self.enis.values() {
            let mut private_ips = eni.private_ips.clone();
            if let Some(extra) = havip_on.get(eni.id.as_str()) {
                private_ips.extend_from_slice(extra);
            }
            let instance = eni.instance.as_ref().and_then(|i| self.instances.get(i));
            enis.push(EniConfig {
                id: eni.index,
                instance: instance.map(|i| InstanceRef {
                    id: i.index,
                    running: i.status == InstanceStatus::Running,
                }),
                gateway: self.vswitches.get(&eni.vswitch).map(|v| v.gateway),
                private_ips,
            });
        }
        let mut eips = Vec::with_capacity(self.eips.len());
        let resolve = self.eni_resolver();
        for e in self.eips.values() {
            let mapped = matches!(e.status, EipStatus::InUse | EipStatus::Unassociating);
            let association = e.binding.as_ref().filter(|_| mapped).and_then(|bd| {
                if bd.bind_type == BindType::HaVip {
                    // To whichever ENI holds the HaVip, translated to the HaVip's address.
                    let &(eni, ip) = havip_eni.get(bd.instance_id.as_str())?;
                    return Some(EipAssociation {
                        mode: Mode::Nat,
                        eni,
                        private_ip: Some(ip),
                    });
                }
                let eni = resolve.bound_eni(bd)?;
                Some(EipAssociation {
                    mode: bd.mode,
                    eni: eni.index,
                    private_ip: if bd.mode == Mode::Nat {
                        bd.private_ip
                    } else {
                        None
                    },
                })
            });
            eips.push(EipConfig {
                slot: e.slot,
                address: e.address,
                bandwidth_mbps: e.bandwidth,
                association,
            });
        }
        (enis, eips)
    }

    /// The ENI a binding lands on (ECS and ENI bindings; other types have no ENI).
    pub fn bound_eni(&self, b: &Binding) -> Option<&Eni> {
        match b.bind_type {
            BindType::NetworkInterface => self.enis.get(&b.instance_id),
            BindType::EcsInstance => self.primary_eni_of(&b.instance_id),
            _ => None,
        }
    }

    /// [`Cloud::bound_eni`] for many bindings: finds every instance's primary ENI once, so
    /// resolving all EIPs costs O(n log n) rather than a scan of the ENIs per EIP.
    pub fn eni_resolver(&self) -> EniResolver<'_> {
        EniResolver {
            cloud: self,
            primary: self
                .enis
                .values()
                .filter(|e| e.primary)
                .filter_map(|e| Some((e.instance.as_deref()?, e)))
                .collect(),
        }
    }

    /// The engine table of [`Cloud::dataplane`], with the VPC's prefixes.
    pub fn table(&self) -> TableBuilder {
        let mut b = TableBuilder::new();
        for v in self.vswitches.values() {
            b = b.vpc_prefix(v.network, v.prefix_len);
        }
        let (enis, eips) = self.dataplane();
        for e in enis {
            b = b.eni(e);
        }
        for e in eips {
            b = b.eip(e);
        }
        b
    }

    /// Whether `ip` sits in `vswitch`'s CIDR.
    pub fn vswitch_contains(&self, vswitch: &str, ip: Ipv4Addr) -> bool {
        self.vswitches
            .get(vswitch)
            .is_some_and(|v| in_cidr(ip, v.network, v.prefix_len))
    }
}
