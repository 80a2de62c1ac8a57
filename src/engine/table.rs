//! The gateway table: what every address is, programmed by the control plane.
//!
//! A [`Table`] is immutable once built. The control plane builds a new one for every change
//! and hands it to each engine ([`super::Engine::set_table`]) between batches, so the hot path
//! never takes a lock and never sees a half-applied association.

use crate::alg::AlgPolicy;
use crate::clb::Clb;
use crate::napt::Napt;
use core::fmt;
use core::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

/// Identifies an ENI in the dataplane: a small, stable number the control plane assigns
/// (the same ENI keeps its id across tables, so counters follow it).
pub type EniId = u16;

/// Identifies an EIP's counters and policer: stable across tables, like [`EniId`].
pub type EipSlot = u32;

pub(crate) const NONE: u32 = u32::MAX;

/// How an EIP reaches its ENI (SPEC §1). The cloud model stores it as is (`cloud::Mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum AssociationMode {
    /// The gateway rewrites EIP <-> private IP; the guest never sees the EIP.
    Nat,
    /// Cut-through: the EIP replaces the ENI's primary private IP in the guest.
    Binded,
    /// Several EIPs on one secondary ENI, configured in the guest next to its private IP.
    MultiBinded,
}

impl AssociationMode {
    /// The cloud's spelling (`Mode` in AssociateEipAddress).
    pub fn api_name(self) -> &'static str {
        match self {
            AssociationMode::Nat => "NAT",
            AssociationMode::Binded => "BINDED",
            AssociationMode::MultiBinded => "MULTI_BINDED",
        }
    }
}

/// What NAT mode does with IP protocols other than TCP, UDP and ICMP (GRE, ESP, SCTP, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OtherProtocols {
    /// Translate the IPv4 header only and forward (1:1 NAT needs no ports).
    #[default]
    Forward,
    /// Drop with `unsupported_protocol`.
    Drop,
}

/// An ENI as the dataplane needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniConfig {
    pub id: EniId,
    /// The instance it is attached to, if any.
    pub instance: Option<InstanceRef>,
    /// Its vSwitch gateway: answers pings and sends ICMP time exceeded to the guest.
    pub gateway: Option<Ipv4Addr>,
    /// Its private IPs, primary first, as the cloud records them. A BINDED EIP replaces the
    /// first one; the table does that itself.
    pub private_ips: Vec<Ipv4Addr>,
}

/// The instance an ENI is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstanceRef {
    /// A number unique per instance (ENIs of one instance share it).
    pub id: u32,
    /// Status `Running`; any other status drops its traffic (`instance_stopped`).
    pub running: bool,
}

/// An EIP as the dataplane needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EipConfig {
    pub slot: EipSlot,
    pub address: Ipv4Addr,
    /// Maximum bandwidth in Mbit/s, each direction; 0 means unlimited.
    pub bandwidth_mbps: u32,
    pub association: Option<EipAssociation>,
}

/// An EIP's association with an ENI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EipAssociation {
    pub mode: AssociationMode,
    pub eni: EniId,
    /// NAT mode: the private IP the EIP maps to (the ENI's primary IP if `None`).
    pub private_ip: Option<Ipv4Addr>,
}

/// Why a set of mappings cannot be a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableError {
    DuplicateEni(EniId),
    DuplicateSlot(EipSlot),
    /// The same address is claimed twice (EIP, private IP or gateway).
    DuplicateAddress(Ipv4Addr),
    /// 0.0.0.0 cannot be programmed.
    UnspecifiedAddress,
    UnknownEni {
        eip: Ipv4Addr,
        eni: EniId,
    },
    /// A NAT mapping to an address the ENI does not own.
    PrivateIpNotOnEni {
        eip: Ipv4Addr,
        private_ip: Ipv4Addr,
        eni: EniId,
    },
    /// Two NAT EIPs mapped to one private IP.
    PrivateIpMappedTwice(Ipv4Addr),
    /// EIPs of different modes, or two BINDED EIPs, on one ENI.
    ModeConflict(EniId),
    /// A BINDED ENI needs a primary private IP to replace.
    NoPrimaryIp(EniId),
    BadPrefix {
        network: Ipv4Addr,
        len: u8,
    },
    /// A NAT gateway's EIP that is not programmed as an unassociated EIP with its slot, or
    /// that two gateways claim.
    GatewayEip(Ipv4Addr),
    /// A CLB's EIP that is not programmed as an unassociated EIP with its slot, or that a NAT
    /// gateway or another CLB claims too.
    ClbEip(Ipv4Addr),
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use TableError::*;
        match self {
            DuplicateEni(e) => write!(f, "ENI {e} is programmed twice"),
            DuplicateSlot(s) => write!(f, "EIP slot {s} is programmed twice"),
            DuplicateAddress(a) => write!(f, "address {a} is claimed twice"),
            GatewayEip(a) => write!(
                f,
                "NAT gateway EIP {a} must be one EIP of the table with no other association"
            ),
            ClbEip(a) => write!(
                f,
                "CLB EIP {a} must be one EIP of the table with no other association"
            ),
            UnspecifiedAddress => write!(f, "0.0.0.0 cannot be programmed"),
            UnknownEni { eip, eni } => write!(f, "EIP {eip} is associated with unknown ENI {eni}"),
            PrivateIpNotOnEni {
                eip,
                private_ip,
                eni,
            } => {
                write!(
                    f,
                    "EIP {eip} maps to {private_ip}, which ENI {eni} does not own"
                )
            }
            PrivateIpMappedTwice(a) => write!(f, "private IP {a} has two NAT EIPs"),
            ModeConflict(e) => write!(f, "ENI {e} carries EIPs of conflicting modes"),
            NoPrimaryIp(e) => write!(f, "ENI {e} has no primary private IP for a BINDED EIP"),
            BadPrefix { network, len } => write!(f, "{network}/{len} is not a prefix"),
        }
    }
}

impl std::error::Error for TableError {}

// ---- the address map -------------------------------------------------------------------------

/// What an address in the map is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// An empty bucket.
    #[default]
    Empty = 0,
    Eip,
    Private,
    VpcGateway,
    InternetGateway,
    /// A CLB's intranet address: `other` = the CLB's index.
    ClbVip,
}

/// One address, 16 bytes so four share a cache line.
///
/// - [`Kind::Eip`]: `slot` = the EIP's slot, `mode` = its association mode (or none), `eni` =
///   its ENI, `other` = the mapped private IP (NAT mode), or for an EIP of a NAT gateway (no
///   mode) the gateway's index + 1, or for an EIP of a CLB (no mode) its index with
///   [`CLB_MARK`] set.
/// - [`Kind::Private`]: `eni` = the owner, `other` = its NAT EIP (0 if none), `slot` = that
///   EIP's slot.
/// - gateways: the address the gateway itself answers on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(16))]
pub(crate) struct Entry {
    pub key: u32,
    pub other: u32,
    pub slot: u32,
    pub eni: u16,
    pub kind: Kind,
    pub mode: Option<AssociationMode>,
}

/// Open addressing, linear probing, load at most one half; key 0 marks an empty bucket
/// (0.0.0.0 is never programmed). Fibonacci hashing spreads consecutive addresses, which is
/// what EIP pools and subnets are.
#[derive(Clone, Debug)]
pub(crate) struct AddrMap {
    buckets: Box<[Entry]>,
    mask: usize,
    shift: u32,
    len: usize,
}

impl AddrMap {
    /// Every address held.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> + Clone + '_ {
        self.buckets.iter().filter(|e| e.key != 0)
    }

    fn with_capacity(n: usize) -> Self {
        let cap = (n * 2).next_power_of_two().max(16);
        AddrMap {
            buckets: vec![Entry::default(); cap].into_boxed_slice(),
            mask: cap - 1,
            shift: 32 - cap.trailing_zeros(),
            len: 0,
        }
    }

    #[inline(always)]
    fn home(&self, key: u32) -> usize {
        (key.wrapping_mul(0x9E37_79B1) >> self.shift) as usize
    }

    /// Inserts; returns false if the key is already present.
    fn insert(&mut self, e: Entry) -> bool {
        debug_assert!(e.key != 0 && self.len < self.buckets.len() / 2);
        let mut i = self.home(e.key);
        loop {
            let b = &mut self.buckets[i];
            if b.key == 0 {
                *b = e;
                self.len += 1;
                return true;
            }
            if b.key == e.key {
                return false;
            }
            i = (i + 1) & self.mask;
        }
    }

    fn get_mut(&mut self, key: u32) -> Option<&mut Entry> {
        let mut i = self.home(key);
        loop {
            let k = self.buckets[i].key;
            if k == key {
                return Some(&mut self.buckets[i]);
            }
            if k == 0 {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    #[inline(always)]
    pub fn get(&self, key: u32) -> Option<&Entry> {
        if key == 0 {
            return None;
        }
        let mut i = self.home(key);
        loop {
            let b = &self.buckets[i];
            if b.key == key {
                return Some(b);
            }
            if b.key == 0 {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }
}

// ---- ENIs --------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct EniEntry {
    pub present: bool,
    pub running: bool,
    /// The mode of the EIPs on it, if any.
    pub mode: Option<AssociationMode>,
    /// Instance number, or NONE when detached.
    pub instance: u32,
    /// vSwitch gateway, or 0.
    pub gateway: u32,
}

impl EniEntry {
    #[inline(always)]
    pub fn attached(&self) -> bool {
        self.instance != NONE
    }
}

/// A per-EIP fact the engine copies into its own state when it takes a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EipInfo {
    pub slot: EipSlot,
    pub address: u32,
    pub bandwidth_mbps: u32,
    /// Its association: the mode, the ENI, and the address packets to the EIP are delivered
    /// to (the mapped private IP in NAT mode, the EIP itself in cut-through).
    pub association: Option<(AssociationMode, EniId, u32)>,
}

/// A NAT gateway's NAPT: one per gateway for the life of the lab, shared by every worker's
/// engine and handed from table to table, so its sessions outlive any change of rules.
pub type SharedNapt = Arc<Mutex<Napt>>;

/// An internet NAT gateway as the table knows it (SPEC D9–D11).
#[derive(Clone, Debug)]
pub struct NatGatewayConfig {
    pub id: String,
    pub napt: SharedNapt,
    /// Its EIPs (those associated with it) and their slots.
    pub eips: Vec<(Ipv4Addr, EipSlot)>,
    /// The private sources it carries to the internet: its SNAT entries' sources, and its
    /// DNAT targets as `/32` (their replies, and a whole-IP target's own flows).
    pub sources: Vec<(Ipv4Addr, u8)>,
}

/// A NAT gateway in a built table.
#[derive(Clone, Debug)]
pub(crate) struct GatewayEntry {
    pub id: String,
    pub napt: SharedNapt,
}

/// A CLB's connection table, scheduler and backend health: one per CLB for the life of the
/// lab, shared like [`SharedNapt`] (the health checker writes into it too).
pub type SharedClb = Arc<Mutex<Clb>>;

/// Marks a CLB EIP's `other` in the address map (a gateway's is its index + 1, far below).
pub(crate) const CLB_MARK: u32 = 1 << 31;

/// An internal-facing CLB, as the table knows it (SPEC D13).
#[derive(Clone, Debug)]
pub struct ClbTableConfig {
    pub id: String,
    pub clb: SharedClb,
    /// Its intranet address in the VPC, which guests connect to.
    pub vip: Option<Ipv4Addr>,
    /// Its EIP and the EIP's slot (programmed with [`TableBuilder::eip`] too, unassociated),
    /// which the internet connects to.
    pub eip: Option<(Ipv4Addr, EipSlot)>,
    /// The ENIs of its backends: their replies go back out through it.
    pub backend_enis: Vec<EniId>,
}

/// A CLB in a built table.
#[derive(Clone, Debug)]
pub(crate) struct ClbEntry {
    pub id: String,
    pub clb: SharedClb,
    /// Its EIP (0: none), which its backends' replies to the internet leave from, and the
    /// EIP's slot (`NONE`: none).
    pub eip: u32,
    pub slot: EipSlot,
    /// Its intranet address (0: none), which its backends' replies to guests leave from.
    pub vip: u32,
}

/// The programmed gateway. Build with [`TableBuilder`].
#[derive(Clone, Debug)]
pub struct Table {
    pub(crate) map: AddrMap,
    pub(crate) enis: Vec<EniEntry>,
    pub(crate) eips: Vec<EipInfo>,
    /// VPC prefixes as (network, mask).
    pub(crate) vpc: Vec<(u32, u32)>,
    /// One bit per /16: set where some EIP lives. Lets the hot path skip the map lookup
    /// for the internet destinations that cannot be a hairpin.
    pub(crate) eip_prefix16: Box<[u64; 1024]>,
    pub(crate) alg: AlgPolicy,
    /// `alg.is_all_pass()`: then no fragment waits for its first fragment's ALG decision.
    pub(crate) alg_all_pass: bool,
    pub(crate) source_check: bool,
    pub(crate) other_protocols: OtherProtocols,
    pub(crate) internet_gateway: u32,
    pub(crate) max_slot: Option<EipSlot>,
    /// NAT gateways, by index.
    pub(crate) gateways: Vec<GatewayEntry>,
    /// (network, mask, gateway index), the most specific first: which gateway carries a
    /// private source's internet traffic.
    pub(crate) gateway_sources: Vec<(u32, u32, u32)>,
    /// CLBs with an EIP, by index.
    pub(crate) clbs: Vec<ClbEntry>,
    /// By ENI id: the CLBs (indexes) the ENI is a backend of.
    pub(crate) clb_of_eni: Vec<Vec<u32>>,
}

impl Table {
    /// An empty table (every packet is dropped for want of a mapping).
    pub fn empty() -> Table {
        TableBuilder::new()
            .build()
            .expect("an empty table is valid")
    }

    pub fn alg_policy(&self) -> AlgPolicy {
        self.alg
    }

    pub fn source_check(&self) -> bool {
        self.source_check
    }

    /// Number of EIPs programmed (associated or not).
    pub fn eip_count(&self) -> usize {
        self.eips.len()
    }

    /// Whether `addr` is inside one of the VPC's prefixes.
    #[inline(always)]
    pub fn in_vpc(&self, addr: u32) -> bool {
        self.vpc.iter().any(|&(n, m)| addr & m == n)
    }

    #[inline(always)]
    pub(crate) fn maybe_eip(&self, addr: u32) -> bool {
        let p = (addr >> 16) as usize;
        self.eip_prefix16[p >> 6] & (1u64 << (p & 63)) != 0
    }

    #[inline(always)]
    pub(crate) fn eni(&self, id: u32) -> Option<&EniEntry> {
        self.enis.get(id as usize).filter(|e| e.present)
    }

    /// The EIP mapped to a NAT private IP, if any (for tests and status).
    pub fn nat_eip_of(&self, private_ip: Ipv4Addr) -> Option<Ipv4Addr> {
        let e = self.map.get(u32::from(private_ip))?;
        (e.kind == Kind::Private && e.other != 0).then(|| Ipv4Addr::from(e.other))
    }

    /// The NAT gateway and slot of a gateway EIP.
    #[inline]
    pub(crate) fn gateway_eip(&self, addr: u32) -> Option<(u32, EipSlot)> {
        if self.gateways.is_empty() {
            return None;
        }
        let e = self.map.get(addr)?;
        (e.kind == Kind::Eip && e.mode.is_none() && e.other != 0 && e.other & CLB_MARK == 0)
            .then(|| (e.other - 1, e.slot))
    }

    /// The CLB and slot of a CLB's EIP.
    #[inline]
    pub(crate) fn clb_eip(&self, addr: u32) -> Option<(u32, EipSlot)> {
        if self.clbs.is_empty() {
            return None;
        }
        let e = self.map.get(addr)?;
        (e.kind == Kind::Eip && e.mode.is_none() && e.other & CLB_MARK != 0)
            .then_some((e.other & !CLB_MARK, e.slot))
    }

    /// The CLB whose intranet address `addr` is.
    #[inline]
    pub(crate) fn clb_vip(&self, addr: u32) -> Option<u32> {
        if self.clbs.is_empty() {
            return None;
        }
        let e = self.map.get(addr)?;
        (e.kind == Kind::ClbVip).then_some(e.other)
    }

    /// The CLBs whose backend `eni` is (none when the lab has no CLB).
    #[inline]
    pub(crate) fn clbs_of_eni(&self, eni: EniId) -> &[u32] {
        self.clb_of_eni.get(eni as usize).map_or(&[], Vec::as_slice)
    }

    /// The CLBs: their ids and shared state.
    pub fn load_balancers(&self) -> impl Iterator<Item = (&str, &SharedClb)> + '_ {
        self.clbs.iter().map(|c| (c.id.as_str(), &c.clb))
    }

    /// The NAT gateway that carries `src`'s internet traffic, if any.
    #[inline]
    pub(crate) fn gateway_for_source(&self, src: u32) -> Option<u32> {
        self.gateway_sources
            .iter()
            .find(|&&(n, m, _)| src & m == n)
            .map(|&(_, _, g)| g)
    }

    /// The NAT gateways: their ids and NAPTs.
    pub fn nat_gateways(&self) -> impl Iterator<Item = (&str, &SharedNapt)> + '_ {
        self.gateways.iter().map(|g| (g.id.as_str(), &g.napt))
    }

    /// EIP slots with their addresses and bandwidths.
    pub fn eips(&self) -> impl Iterator<Item = (EipSlot, Ipv4Addr, u32)> + '_ {
        self.eips
            .iter()
            .map(|e| (e.slot, Ipv4Addr::from(e.address), e.bandwidth_mbps))
    }
}

/// The `other` of `a`'s entry, if `a` is an EIP of `slot` with no association that no NAT
/// gateway or CLB has claimed yet: the claim goes there.
fn unclaimed_eip(map: &mut AddrMap, a: Ipv4Addr, slot: EipSlot) -> Option<&mut u32> {
    map.get_mut(u32::from(a))
        .filter(|e| e.kind == Kind::Eip && e.mode.is_none() && e.slot == slot && e.other == 0)
        .map(|e| &mut e.other)
}

/// Collects ENIs, EIPs and settings, checks them, and builds a [`Table`].
#[derive(Clone, Debug, Default)]
pub struct TableBuilder {
    enis: Vec<EniConfig>,
    eips: Vec<EipConfig>,
    vpc: Vec<(Ipv4Addr, u8)>,
    alg: AlgPolicy,
    source_check: Option<bool>,
    other_protocols: OtherProtocols,
    internet_gateway: Option<Ipv4Addr>,
    nat_gateways: Vec<NatGatewayConfig>,
    clbs: Vec<ClbTableConfig>,
}

impl TableBuilder {
    pub fn new() -> Self {
        TableBuilder::default()
    }

    /// A VPC prefix (the VPC's CIDR block, or each vSwitch's).
    pub fn vpc_prefix(mut self, network: Ipv4Addr, len: u8) -> Self {
        self.vpc.push((network, len));
        self
    }

    pub fn eni(mut self, eni: EniConfig) -> Self {
        self.enis.push(eni);
        self
    }

    pub fn eip(mut self, eip: EipConfig) -> Self {
        self.eips.push(eip);
        self
    }

    pub fn alg_policy(mut self, p: AlgPolicy) -> Self {
        self.alg = p;
        self
    }

    /// D6: drop packets whose source the sending ENI does not own (default on).
    pub fn source_check(mut self, on: bool) -> Self {
        self.source_check = Some(on);
        self
    }

    pub fn other_protocols(mut self, p: OtherProtocols) -> Self {
        self.other_protocols = p;
        self
    }

    /// The gateway's own address on the internet side: it answers pings there and is the
    /// source of ICMP time exceeded sent to the internet. Without it, expired packets from
    /// the internet are dropped silently (still counted).
    pub fn internet_gateway(mut self, a: Ipv4Addr) -> Self {
        self.internet_gateway = Some(a);
        self
    }

    /// An internet NAT gateway: its EIPs must be programmed with [`TableBuilder::eip`] too
    /// (for their slots), with no association.
    pub fn nat_gateway(mut self, g: NatGatewayConfig) -> Self {
        self.nat_gateways.push(g);
        self
    }

    /// An internal-facing CLB with an EIP: the EIP must be programmed with
    /// [`TableBuilder::eip`] too (for its slot), with no association.
    pub fn clb(mut self, c: ClbTableConfig) -> Self {
        self.clbs.push(c);
        self
    }

    pub fn build(self) -> Result<Table, TableError> {
        let mut vpc = Vec::with_capacity(self.vpc.len());
        for &(net, len) in &self.vpc {
            if len > 32 {
                return Err(TableError::BadPrefix { network: net, len });
            }
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            let n = u32::from(net);
            if n & !mask != 0 {
                return Err(TableError::BadPrefix { network: net, len });
            }
            vpc.push((n, mask));
        }

        let max_eni = self
            .enis
            .iter()
            .map(|e| e.id as usize + 1)
            .max()
            .unwrap_or(0);
        // ENI id -> its config, so that associating 100,000 EIPs is not a scan per EIP.
        let mut eni_config: Vec<Option<&EniConfig>> = vec![None; max_eni];
        for e in &self.enis {
            eni_config[e.id as usize] = Some(e);
        }
        let mut enis = vec![EniEntry::default(); max_eni];
        let n_addrs: usize = self.enis.iter().map(|e| e.private_ips.len()).sum::<usize>()
            + self.eips.len()
            + self.enis.len()
            + self.clbs.len()
            + 1;
        let mut map = AddrMap::with_capacity(n_addrs);
        let put = |map: &mut AddrMap, e: Entry| {
            if e.key == 0 {
                return Err(TableError::UnspecifiedAddress);
            }
            if map.insert(e) {
                Ok(())
            } else {
                Err(TableError::DuplicateAddress(Ipv4Addr::from(e.key)))
            }
        };

        // Which ENIs carry which mode, and which primary IPs a BINDED EIP replaces.
        let mut eni_mode: Vec<Option<AssociationMode>> = vec![None; max_eni];
        let mut binded_count = vec![0u32; max_eni];
        for eip in &self.eips {
            if let Some(a) = eip.association {
                let i = a.eni as usize;
                if i >= max_eni || eni_config[i].is_none() {
                    return Err(TableError::UnknownEni {
                        eip: eip.address,
                        eni: a.eni,
                    });
                }
                let m = a.mode;
                if eni_mode[i].is_some_and(|old| old != m) {
                    return Err(TableError::ModeConflict(a.eni));
                }
                eni_mode[i] = Some(m);
                if m == AssociationMode::Binded {
                    binded_count[i] += 1;
                    if binded_count[i] > 1 {
                        return Err(TableError::ModeConflict(a.eni));
                    }
                }
            }
        }

        for eni in &self.enis {
            let i = eni.id as usize;
            if enis[i].present {
                return Err(TableError::DuplicateEni(eni.id));
            }
            enis[i] = EniEntry {
                present: true,
                running: eni.instance.map(|r| r.running).unwrap_or(false),
                mode: eni_mode[i],
                instance: eni.instance.map(|r| r.id).unwrap_or(NONE),
                gateway: eni.gateway.map(u32::from).unwrap_or(0),
            };
            let skip = if eni_mode[i] == Some(AssociationMode::Binded) {
                if eni.private_ips.is_empty() {
                    return Err(TableError::NoPrimaryIp(eni.id));
                }
                1
            } else {
                0
            };
            for ip in eni.private_ips.iter().skip(skip) {
                put(
                    &mut map,
                    Entry {
                        key: u32::from(*ip),
                        other: 0,
                        slot: NONE,
                        eni: eni.id,
                        kind: Kind::Private,
                        mode: None,
                    },
                )?;
            }
            if let Some(gw) = eni.gateway {
                // ENIs of one vSwitch share a gateway: insert it once.
                if map.get(u32::from(gw)).is_none() {
                    put(
                        &mut map,
                        Entry {
                            key: u32::from(gw),
                            kind: Kind::VpcGateway,
                            slot: NONE,
                            ..Entry::default()
                        },
                    )?;
                } else if map.get(u32::from(gw)).map(|e| e.kind) != Some(Kind::VpcGateway) {
                    return Err(TableError::DuplicateAddress(gw));
                }
            }
        }

        let mut slots = std::collections::HashSet::with_capacity(self.eips.len());
        let mut eip_prefix16 = Box::new([0u64; 1024]);
        let mut eips = Vec::with_capacity(self.eips.len());
        let mut max_slot = None;
        for eip in &self.eips {
            if !slots.insert(eip.slot) {
                return Err(TableError::DuplicateSlot(eip.slot));
            }
            max_slot = max_slot.max(Some(eip.slot));
            let addr = u32::from(eip.address);
            let mut e = Entry {
                key: addr,
                other: 0,
                slot: eip.slot,
                eni: 0,
                kind: Kind::Eip,
                mode: None,
            };
            let mut association = None;
            if let Some(a) = eip.association {
                e.mode = Some(a.mode);
                e.eni = a.eni;
                association = Some((a.mode, a.eni, addr));
                if a.mode == AssociationMode::Nat {
                    let eni = eni_config[a.eni as usize].expect("checked above");
                    let private = a
                        .private_ip
                        .or(eni.private_ips.first().copied())
                        .ok_or(TableError::NoPrimaryIp(a.eni))?;
                    let p = map.get_mut(u32::from(private));
                    match p {
                        Some(p) if p.kind == Kind::Private && p.eni == a.eni => {
                            if p.other != 0 {
                                return Err(TableError::PrivateIpMappedTwice(private));
                            }
                            p.other = addr;
                            p.slot = eip.slot;
                        }
                        _ => {
                            return Err(TableError::PrivateIpNotOnEni {
                                eip: eip.address,
                                private_ip: private,
                                eni: a.eni,
                            })
                        }
                    }
                    e.other = u32::from(private);
                    association = Some((a.mode, a.eni, e.other));
                }
            }
            put(&mut map, e)?;
            let p = (addr >> 16) as usize;
            eip_prefix16[p >> 6] |= 1u64 << (p & 63);
            eips.push(EipInfo {
                slot: eip.slot,
                address: addr,
                bandwidth_mbps: eip.bandwidth_mbps,
                association,
            });
        }

        let internet_gateway = match self.internet_gateway {
            Some(a) => {
                put(
                    &mut map,
                    Entry {
                        key: u32::from(a),
                        kind: Kind::InternetGateway,
                        slot: NONE,
                        ..Entry::default()
                    },
                )?;
                u32::from(a)
            }
            None => 0,
        };

        let mut gateways = Vec::with_capacity(self.nat_gateways.len());
        let mut gateway_sources = Vec::new();
        for (i, g) in self.nat_gateways.into_iter().enumerate() {
            let i = i as u32;
            for &(a, slot) in &g.eips {
                // An unassociated EIP's entry has no mapped address: `other` names its
                // gateway (index + 1) instead.
                *unclaimed_eip(&mut map, a, slot).ok_or(TableError::GatewayEip(a))? = i + 1;
            }
            for &(net, len) in &g.sources {
                if len > 32 {
                    return Err(TableError::BadPrefix { network: net, len });
                }
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                gateway_sources.push((u32::from(net) & mask, mask, i));
            }
            gateways.push(GatewayEntry {
                id: g.id,
                napt: g.napt,
            });
        }
        // Most specific first; among equals, the order given (a stable sort).
        gateway_sources.sort_by_key(|&(_, m, _)| core::cmp::Reverse(m.count_ones()));

        let mut clbs = Vec::with_capacity(self.clbs.len());
        let mut clb_of_eni: Vec<Vec<u32>> = Vec::new();
        for (i, c) in self.clbs.into_iter().enumerate() {
            let i = i as u32;
            if let Some((a, slot)) = c.eip {
                *unclaimed_eip(&mut map, a, slot).ok_or(TableError::ClbEip(a))? = CLB_MARK | i;
            }
            if let Some(v) = c.vip {
                put(
                    &mut map,
                    Entry {
                        key: u32::from(v),
                        kind: Kind::ClbVip,
                        other: i,
                        slot: NONE,
                        ..Entry::default()
                    },
                )?;
            }
            for &eni in &c.backend_enis {
                let k = eni as usize;
                if clb_of_eni.len() <= k {
                    clb_of_eni.resize_with(k + 1, Vec::new);
                }
                if !clb_of_eni[k].contains(&i) {
                    clb_of_eni[k].push(i);
                }
            }
            let (eip, slot) = c.eip.map_or((0, NONE), |(a, s)| (u32::from(a), s));
            clbs.push(ClbEntry {
                id: c.id,
                clb: c.clb,
                eip,
                slot,
                vip: c.vip.map_or(0, u32::from),
            });
        }

        Ok(Table {
            map,
            enis,
            eips,
            vpc,
            eip_prefix16,
            alg: self.alg,
            alg_all_pass: self.alg.is_all_pass(),
            source_check: self.source_check.unwrap_or(true),
            other_protocols: self.other_protocols,
            internet_gateway,
            max_slot,
            gateways,
            gateway_sources,
            clbs,
            clb_of_eni,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn eni(id: EniId, ips: &[&str]) -> EniConfig {
        EniConfig {
            id,
            instance: Some(InstanceRef {
                id: 1,
                running: true,
            }),
            gateway: Some(ip("10.0.1.253")),
            private_ips: ips.iter().map(|s| ip(s)).collect(),
        }
    }

    fn nat(slot: EipSlot, addr: &str, eni: EniId, private: Option<&str>) -> EipConfig {
        EipConfig {
            slot,
            address: ip(addr),
            bandwidth_mbps: 5,
            association: Some(EipAssociation {
                mode: AssociationMode::Nat,
                eni,
                private_ip: private.map(ip),
            }),
        }
    }

    #[test]
    fn map_finds_everything_it_holds_and_nothing_else() {
        let mut m = AddrMap::with_capacity(5000);
        for k in 1..=5000u32 {
            assert!(m.insert(Entry {
                key: k * 7919,
                slot: k,
                ..Entry::default()
            }));
        }
        assert!(!m.insert(Entry {
            key: 7919,
            ..Entry::default()
        }));
        for k in 1..=5000u32 {
            assert_eq!(m.get(k * 7919).unwrap().slot, k);
        }
        assert!(m.get(3).is_none());
        assert!(m.get(0).is_none());
    }

    #[test]
    fn nat_mapping_is_recorded_both_ways() {
        let t = TableBuilder::new()
            .eni(eni(1, &["10.0.1.20", "10.0.1.21"]))
            .eip(nat(7, "198.51.100.10", 1, Some("10.0.1.21")))
            .eip(nat(8, "198.51.100.11", 1, None))
            .build()
            .unwrap();
        assert_eq!(t.nat_eip_of(ip("10.0.1.21")), Some(ip("198.51.100.10")));
        assert_eq!(t.nat_eip_of(ip("10.0.1.20")), Some(ip("198.51.100.11")));
        let e = t.map.get(u32::from(ip("198.51.100.10"))).unwrap();
        assert_eq!(
            (e.kind, e.mode, e.other, e.slot),
            (
                Kind::Eip,
                Some(AssociationMode::Nat),
                u32::from(ip("10.0.1.21")),
                7
            )
        );
        assert!(t.maybe_eip(u32::from(ip("198.51.7.7"))));
        assert!(!t.maybe_eip(u32::from(ip("203.0.113.1"))));
    }

    #[test]
    fn rejects_inconsistent_programming() {
        let base = || TableBuilder::new().eni(eni(1, &["10.0.1.20", "10.0.1.21"]));
        assert_eq!(
            base()
                .eip(nat(1, "198.51.100.10", 1, Some("10.0.1.99")))
                .build()
                .unwrap_err(),
            TableError::PrivateIpNotOnEni {
                eip: ip("198.51.100.10"),
                private_ip: ip("10.0.1.99"),
                eni: 1
            }
        );
        assert_eq!(
            base()
                .eip(nat(1, "198.51.100.10", 1, Some("10.0.1.21")))
                .eip(nat(2, "198.51.100.11", 1, Some("10.0.1.21")))
                .build()
                .unwrap_err(),
            TableError::PrivateIpMappedTwice(ip("10.0.1.21"))
        );
        assert_eq!(
            base()
                .eip(nat(1, "198.51.100.10", 1, None))
                .eip(nat(1, "198.51.100.11", 1, Some("10.0.1.21")))
                .build()
                .unwrap_err(),
            TableError::DuplicateSlot(1)
        );
        assert_eq!(
            base()
                .eip(nat(1, "198.51.100.10", 9, None))
                .build()
                .unwrap_err(),
            TableError::UnknownEni {
                eip: ip("198.51.100.10"),
                eni: 9
            }
        );
        let mut b = nat(2, "198.51.100.11", 1, None);
        b.association.as_mut().unwrap().mode = AssociationMode::Binded;
        assert_eq!(
            base()
                .eip(nat(1, "198.51.100.10", 1, None))
                .eip(b)
                .build()
                .unwrap_err(),
            TableError::ModeConflict(1)
        );
        assert_eq!(
            base().eni(eni(2, &["10.0.1.21"])).build().unwrap_err(),
            TableError::DuplicateAddress(ip("10.0.1.21"))
        );
        assert!(matches!(
            base().vpc_prefix(ip("10.0.1.1"), 24).build(),
            Err(TableError::BadPrefix { .. })
        ));
    }

    #[test]
    fn binded_eip_replaces_the_primary_private_ip() {
        let mut b = nat(1, "198.51.100.10", 1, None);
        b.association.as_mut().unwrap().mode = AssociationMode::Binded;
        let t = TableBuilder::new()
            .eni(eni(1, &["10.0.1.30"]))
            .eip(b)
            .build()
            .unwrap();
        assert!(t.map.get(u32::from(ip("10.0.1.30"))).is_none());
        assert_eq!(t.eni(1).unwrap().mode, Some(AssociationMode::Binded));
    }
}
