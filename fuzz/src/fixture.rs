//! The lab the `engine` target runs against: one VPC, ENIs of every kind, EIPs in every
//! association mode, and three variants of the table to switch between (`set_table`).
//!
//! Each variant is kept as its [`Spec`] as well as its built [`Table`], so the harness can
//! tell which addresses an ENI owns and which EIPs may appear as a source on the internet.

use core::net::Ipv4Addr;
use eiplab::alg::{AlgAction, AlgPolicy, AlgProtocol};
use eiplab::engine::{
    AssociationMode, EipAssociation, EipConfig, EngineConfig, EniConfig, EniId, InstanceRef,
    OtherProtocols, Side, Table, TableBuilder,
};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

pub const fn a(o: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::new(o[0], o[1], o[2], o[3])
}

// ---- addresses ---------------------------------------------------------------------------

pub const INTERNET_HOST: [u8; 4] = [203, 0, 113, 7];
pub const INTERNET_HOST2: [u8; 4] = [192, 0, 2, 55];
pub const INTERNET_GW: [u8; 4] = [198, 51, 100, 1];
/// Table B's internet-side address: in a /16 without EIPs.
pub const INTERNET_GW_B: [u8; 4] = [192, 0, 2, 1];

/// NAT-mode ENI: four private IPs, three of them with an EIP.
pub const ENI_NAT: EniId = 1;
pub const NAT_PRIV: [[u8; 4]; 4] = [
    [10, 0, 1, 10],
    [10, 0, 1, 11],
    [10, 0, 1, 12],
    [10, 0, 1, 13],
];
pub const NAT_EIP: [[u8; 4]; 3] = [[198, 51, 100, 10], [198, 51, 100, 11], [198, 51, 100, 12]];
pub const GW1: [u8; 4] = [10, 0, 1, 253];

/// BINDED (cut-through) ENI: its primary IP is replaced by the EIP.
pub const ENI_BINDED: EniId = 2;
pub const BINDED_PRIV: [[u8; 4]; 2] = [[10, 0, 2, 20], [10, 0, 2, 21]];
pub const BINDED_EIP: [u8; 4] = [198, 51, 100, 20];
pub const GW2: [u8; 4] = [10, 0, 2, 253];

/// MULTI_BINDED ENI (a secondary ENI of the NAT ENI's instance), three EIPs, one of them in
/// another /16 than the rest.
pub const ENI_MULTI: EniId = 3;
pub const MULTI_PRIV: [u8; 4] = [10, 0, 1, 30];
pub const MULTI_EIP: [[u8; 4]; 3] = [[198, 51, 100, 30], [198, 51, 100, 31], [203, 0, 113, 200]];

/// ENI of a stopped instance (running again in table B).
pub const ENI_STOPPED: EniId = 4;
pub const STOPPED_PRIV: [u8; 4] = [10, 0, 4, 40];
pub const STOPPED_EIP: [u8; 4] = [198, 51, 100, 40];
pub const GW4: [u8; 4] = [10, 0, 4, 253];

/// An ENI attached to no instance.
pub const ENI_DETACHED: EniId = 5;
pub const DETACHED_PRIV: [u8; 4] = [10, 0, 5, 50];
pub const DETACHED_EIP: [u8; 4] = [198, 51, 100, 50];

/// A running ENI with no EIP at all.
pub const ENI_PLAIN: EniId = 6;
pub const PLAIN_PRIV: [u8; 4] = [10, 0, 6, 60];
pub const GW6: [u8; 4] = [10, 0, 6, 253];

/// An EIP with no association (associated NAT to 10.0.1.13 in table B).
pub const UNASSOC_EIP: [u8; 4] = [198, 51, 100, 99];
/// Only in table C, where it takes over the slot of 198.51.100.10.
pub const MOVED_EIP: [u8; 4] = [198, 51, 100, 77];

pub const METADATA: [u8; 4] = [100, 100, 100, 200];
pub const CLOUD_DNS: [u8; 4] = [100, 100, 2, 136];

/// Addresses the packet generator picks sources and destinations from.
pub const POOL: [[u8; 4]; 36] = [
    INTERNET_HOST,        // 0
    INTERNET_HOST2,       // 1
    NAT_EIP[0],           // 2
    NAT_EIP[1],           // 3
    NAT_EIP[2],           // 4
    BINDED_EIP,           // 5
    MULTI_EIP[0],         // 6
    MULTI_EIP[1],         // 7
    MULTI_EIP[2],         // 8
    STOPPED_EIP,          // 9
    DETACHED_EIP,         // 10
    UNASSOC_EIP,          // 11
    INTERNET_GW,          // 12
    NAT_PRIV[0],          // 13
    NAT_PRIV[1],          // 14
    NAT_PRIV[2],          // 15
    NAT_PRIV[3],          // 16
    BINDED_PRIV[0],       // 17
    BINDED_PRIV[1],       // 18
    MULTI_PRIV,           // 19
    STOPPED_PRIV,         // 20
    DETACHED_PRIV,        // 21
    PLAIN_PRIV,           // 22
    [10, 0, 9, 9],        // 23: in the VPC, owned by nobody
    GW1,                  // 24
    GW2,                  // 25
    METADATA,             // 26
    CLOUD_DNS,            // 27
    [127, 0, 0, 1],       // 28: martians
    [224, 0, 0, 5],       // 29
    [255, 255, 255, 255], // 30
    [0, 0, 0, 1],         // 31
    MOVED_EIP,            // 32
    [100, 64, 0, 1],      // 33: cloud services, nothing there
    [198, 18, 4, 7],      // 34: a filler EIP of table D
    INTERNET_GW_B,        // 35
];

/// Index into [`POOL`] of an address.
pub fn pool_index(addr: [u8; 4]) -> u8 {
    POOL.iter()
        .position(|p| *p == addr)
        .expect("address is in the pool") as u8
}

/// The sides the generator can make a packet come from: every ENI id of the table, ids the
/// table does not know (0 is below the first, 7 above the last, 65535 far away), and the
/// two non-ENI sides.
pub const SIDES: [Side; 11] = [
    Side::Internet,
    Side::CloudServices,
    Side::Eni(ENI_NAT),
    Side::Eni(ENI_BINDED),
    Side::Eni(ENI_MULTI),
    Side::Eni(ENI_STOPPED),
    Side::Eni(ENI_DETACHED),
    Side::Eni(ENI_PLAIN),
    Side::Eni(0),
    Side::Eni(7),
    Side::Eni(65535),
];

pub fn side_index(s: Side) -> u8 {
    SIDES.iter().position(|x| *x == s).expect("a known side") as u8
}

// ---- the engine's limits -----------------------------------------------------------------------

pub const FRAG_TIMEOUT_NS: u64 = 1_000_000_000;

/// Small limits, so that the fragment table fills up and times out under fuzzing.
pub fn engine_config() -> EngineConfig {
    EngineConfig {
        frag_capacity: 8,
        frag_timeout_ns: FRAG_TIMEOUT_NS,
        frag_held_bytes: 4096,
        report_capacity: 4,
    }
}

// ---- table variants ----------------------------------------------------------------------------

/// What a table is made of, kept next to the built table.
#[derive(Clone, Debug)]
pub struct Spec {
    pub enis: Vec<EniConfig>,
    pub eips: Vec<EipConfig>,
    pub alg: AlgPolicy,
    pub source_check: bool,
    pub other: OtherProtocols,
    pub internet_gateway: [u8; 4],
}

/// A table with its spec, and what the harness asks of the spec often, computed once.
pub struct Variant {
    pub spec: Spec,
    pub table: Arc<Table>,
    public: HashSet<Ipv4Addr>,
    owned: HashMap<EniId, Vec<Ipv4Addr>>,
    may_send: HashMap<EniId, HashSet<Ipv4Addr>>,
}

impl Variant {
    fn new(spec: Spec) -> Variant {
        let public = spec
            .eips
            .iter()
            .filter(|e| e.association.is_some())
            .map(|e| e.address)
            .collect();
        let owned: HashMap<_, _> = spec
            .enis
            .iter()
            .map(|e| (e.id, spec.owned_by(e.id)))
            .collect();
        let may_send = spec
            .enis
            .iter()
            .map(|e| {
                let set = spec
                    .enis
                    .iter()
                    .flat_map(|o| spec.owned_by(o.id))
                    .filter(|a| spec.may_send_from(e.id, *a))
                    .collect();
                (e.id, set)
            })
            .collect();
        Variant {
            table: Arc::new(spec.build()),
            spec,
            public,
            owned,
            may_send,
        }
    }

    pub fn eni_up(&self, id: EniId) -> bool {
        self.spec.eni_up(id)
    }

    pub fn owned_by(&self, id: EniId) -> &[Ipv4Addr] {
        self.owned.get(&id).map(|v| &v[..]).unwrap_or(&[])
    }

    pub fn is_public_source(&self, a: Ipv4Addr) -> bool {
        self.public.contains(&a)
    }

    pub fn may_send_from(&self, id: EniId, a: Ipv4Addr) -> bool {
        self.may_send.get(&id).is_some_and(|s| s.contains(&a))
    }
}

impl Spec {
    pub fn build(&self) -> Table {
        let mut b = TableBuilder::new()
            .vpc_prefix(Ipv4Addr::new(10, 0, 0, 0), 16)
            .internet_gateway(a(self.internet_gateway))
            .alg_policy(self.alg)
            .source_check(self.source_check)
            .other_protocols(self.other);
        for e in &self.enis {
            b = b.eni(e.clone());
        }
        for e in &self.eips {
            b = b.eip(*e);
        }
        b.build().expect("the fuzz fixture is a valid table")
    }

    fn eni(&self, id: EniId) -> Option<&EniConfig> {
        self.enis.iter().find(|e| e.id == id)
    }

    /// Whether packets can be delivered to / accepted from this ENI at all.
    pub fn eni_up(&self, id: EniId) -> bool {
        self.eni(id)
            .and_then(|e| e.instance)
            .map(|i| i.running)
            .unwrap_or(false)
    }

    /// Addresses the guest behind ENI `id` answers to: its private IPs (the primary replaced
    /// by a BINDED EIP) and its BINDED / MULTI_BINDED EIPs.
    pub fn owned_by(&self, id: EniId) -> Vec<Ipv4Addr> {
        let Some(e) = self.eni(id) else {
            return Vec::new();
        };
        let mut out: Vec<Ipv4Addr> = Vec::new();
        let mut binded = false;
        for eip in &self.eips {
            if let Some(asc) = eip.association {
                if asc.eni == id && asc.mode != AssociationMode::Nat {
                    out.push(eip.address);
                    binded |= asc.mode == AssociationMode::Binded;
                }
            }
        }
        let skip = usize::from(binded);
        out.extend(e.private_ips.iter().skip(skip).copied());
        out
    }

    /// D6: whether ENI `id` may send from `src`: an address it owns or, with source check
    /// off, one that another ENI of the same instance owns.
    pub fn may_send_from(&self, id: EniId, src: Ipv4Addr) -> bool {
        if self.owned_by(id).contains(&src) {
            return true;
        }
        let instance = self.eni(id).and_then(|e| e.instance).map(|i| i.id);
        !self.source_check
            && instance.is_some()
            && self
                .enis
                .iter()
                .filter(|o| o.instance.map(|i| i.id) == instance)
                .any(|o| self.owned_by(o.id).contains(&src))
    }

    /// Sources a packet may carry when it leaves for the internet: associated EIPs.
    pub fn is_public_source(&self, addr: Ipv4Addr) -> bool {
        self.eips
            .iter()
            .any(|e| e.address == addr && e.association.is_some())
    }

    pub fn in_vpc(addr: Ipv4Addr) -> bool {
        addr.octets()[0] == 10 && addr.octets()[1] == 0
    }

    pub fn in_cloud_services(addr: Ipv4Addr) -> bool {
        u32::from(addr) & 0xffc0_0000 == 0x6440_0000
    }
}

fn eni(
    id: EniId,
    instance: Option<(u32, bool)>,
    gw: Option<[u8; 4]>,
    ips: &[[u8; 4]],
) -> EniConfig {
    EniConfig {
        id,
        instance: instance.map(|(id, running)| InstanceRef { id, running }),
        gateway: gw.map(a),
        private_ips: ips.iter().map(|x| a(*x)).collect(),
    }
}

fn eip(
    slot: u32,
    addr: [u8; 4],
    mbps: u32,
    asc: Option<(AssociationMode, EniId, Option<[u8; 4]>)>,
) -> EipConfig {
    EipConfig {
        slot,
        address: a(addr),
        bandwidth_mbps: mbps,
        association: asc.map(|(mode, eni, private)| EipAssociation {
            mode,
            eni,
            private_ip: private.map(a),
        }),
    }
}

fn policy(actions: [(AlgProtocol, AlgAction); 6]) -> AlgPolicy {
    let mut p = AlgPolicy::all(AlgAction::Pass);
    for (proto, action) in actions {
        p.set(proto, action);
    }
    p
}

use AssociationMode::{Binded, MultiBinded, Nat};

/// Table A: the lab as first programmed.
pub fn spec_a() -> Spec {
    Spec {
        enis: vec![
            eni(ENI_NAT, Some((100, true)), Some(GW1), &NAT_PRIV),
            eni(ENI_BINDED, Some((200, true)), Some(GW2), &BINDED_PRIV),
            eni(ENI_MULTI, Some((100, true)), Some(GW1), &[MULTI_PRIV]),
            eni(ENI_STOPPED, Some((400, false)), Some(GW4), &[STOPPED_PRIV]),
            eni(ENI_DETACHED, None, None, &[DETACHED_PRIV]),
            eni(ENI_PLAIN, Some((600, true)), Some(GW6), &[PLAIN_PRIV]),
        ],
        eips: vec![
            eip(0, NAT_EIP[0], 0, Some((Nat, ENI_NAT, None))),
            // 1 Mbit/s: a few big packets empty its bucket.
            eip(1, NAT_EIP[1], 1, Some((Nat, ENI_NAT, Some(NAT_PRIV[1])))),
            eip(2, NAT_EIP[2], 5, Some((Nat, ENI_NAT, Some(NAT_PRIV[2])))),
            eip(3, BINDED_EIP, 1, Some((Binded, ENI_BINDED, None))),
            eip(4, MULTI_EIP[0], 0, Some((MultiBinded, ENI_MULTI, None))),
            eip(5, MULTI_EIP[1], 1, Some((MultiBinded, ENI_MULTI, None))),
            eip(6, MULTI_EIP[2], 0, Some((MultiBinded, ENI_MULTI, None))),
            eip(7, STOPPED_EIP, 0, Some((Nat, ENI_STOPPED, None))),
            eip(8, DETACHED_EIP, 0, Some((Nat, ENI_DETACHED, None))),
            // A sparse slot, above the others.
            eip(40, UNASSOC_EIP, 0, None),
        ],
        alg: policy([
            (AlgProtocol::Sip, AlgAction::Inspect),
            (AlgProtocol::Ftp, AlgAction::Inspect),
            (AlgProtocol::Rtsp, AlgAction::Drop),
            (AlgProtocol::Dns, AlgAction::Pass),
            (AlgProtocol::Tftp, AlgAction::Drop),
            (AlgProtocol::H323, AlgAction::Pass),
        ]),
        source_check: true,
        other: OtherProtocols::Forward,
        internet_gateway: INTERNET_GW,
    }
}

/// Table B: the stopped instance runs, one EIP moves, source check off, other protocols
/// dropped, another ALG policy.
pub fn spec_b() -> Spec {
    let mut s = spec_a();
    s.enis[3].instance = Some(InstanceRef {
        id: 400,
        running: true,
    });
    s.eips[2].association = None; // 198.51.100.12 left unassociated
    s.eips[9].association = Some(EipAssociation {
        mode: Nat,
        eni: ENI_NAT,
        private_ip: Some(a(NAT_PRIV[3])),
    });
    s.eips[0].bandwidth_mbps = 1;
    s.eips[1].bandwidth_mbps = 0;
    s.alg = policy([
        (AlgProtocol::Sip, AlgAction::Drop),
        (AlgProtocol::Ftp, AlgAction::Pass),
        (AlgProtocol::Rtsp, AlgAction::Inspect),
        (AlgProtocol::Dns, AlgAction::Inspect),
        (AlgProtocol::Tftp, AlgAction::Inspect),
        (AlgProtocol::H323, AlgAction::Drop),
    ]);
    s.source_check = false;
    s.other = OtherProtocols::Drop;
    s.internet_gateway = INTERNET_GW_B;
    s
}

/// Table C: every ALG passes (the fragment table is bypassed), and slot 0 now stands for
/// another address (its counters start afresh), 198.51.100.10 moving to a new slot.
pub fn spec_c() -> Spec {
    let mut s = spec_a();
    s.alg = AlgPolicy::all(AlgAction::Pass);
    s.eips[0].slot = 11;
    s.eips.push(eip(
        0,
        MOVED_EIP,
        2,
        Some((Nat, ENI_NAT, Some(NAT_PRIV[3]))),
    ));
    s
}

/// Table D: table A and 5,000 more EIPs (unassociated, in 198.18.0.0/15), enough for the
/// engine to call the table large and pipeline prefetches in `process_batch`; every ALG
/// protocol inspected.
pub fn spec_d() -> Spec {
    let mut s = spec_a();
    s.alg = AlgPolicy::all(AlgAction::Inspect);
    for i in 0..FILLER_EIPS {
        let addr = [198, 18 + (i >> 16) as u8, (i >> 8) as u8, i as u8];
        s.eips.push(eip(100 + i, addr, (i % 3) * 10, None));
    }
    s
}

pub const FILLER_EIPS: u32 = 5000;

/// The table variants `set_table` switches between (A first).
pub fn variants() -> &'static [Variant; 4] {
    static V: OnceLock<[Variant; 4]> = OnceLock::new();
    V.get_or_init(|| [spec_a(), spec_b(), spec_c(), spec_d()].map(Variant::new))
}
