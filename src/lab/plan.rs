//! Decide, then apply: which device each attached ENI is in its guest, which addresses, routes
//! and rules the guest gets on it, and what has to change from what the lab made, as a pure
//! function of the cloud's state. Nothing here touches the system; `run.rs` applies the steps.
//!
//! What the lab configures in a guest, and when:
//!
//! - *Managed* configuration is what the cloud hands the guest (DHCP and the images' hooks)
//!   and is kept in step with the cloud while the lab runs: the primary private IP (NAT mode,
//!   MULTI_BINDED) or the EIP as `/32` (BINDED); the primary ENI's default route via the vSwitch
//!   gateway; a BINDED ENI's default route via the internet gateway with metric `100+N`, and
//!   `from EIP lookup 100+N` with that route in table `100+N`; a MULTI_BINDED ENI's EIPs as
//!   `/32` with one such rule each (DHCP on), and a default route via the vSwitch gateway in
//!   table `100+N`.
//! - *Secondary private IPs* are configured when the device is made (as the images do at
//!   boot); afterwards they are the guest's business, as on the cloud: one assigned through
//!   the API is reported (with the command that configures it), not added.
//! - `configure = false` ENIs get their device, up, and nothing else, ever.

use crate::cloud::{Cloud, Mode};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// Routing tables for `ethN` of a cut-through or multi-EIP ENI: `TABLE_BASE + N`; the same
/// number is the metric of a BINDED ENI's default route in the main table.
pub const TABLE_BASE: u32 = 100;

/// An IPv4 address with its prefix length, as on a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Addr {
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
}

/// A default route out of the ENI's device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    /// `None`: the main table.
    pub table: Option<u32>,
    pub via: Ipv4Addr,
    /// The gateway is not inside any prefix of the device (`onlink`).
    pub onlink: bool,
    pub metric: Option<u32>,
}

/// `from ADDR lookup TABLE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    pub from: Ipv4Addr,
    pub table: u32,
}

/// Addresses, routes and rules of one device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestConfig {
    pub addrs: BTreeSet<Addr>,
    pub routes: BTreeSet<Route>,
    pub rules: BTreeSet<Rule>,
}

impl GuestConfig {
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty() && self.routes.is_empty() && self.rules.is_empty()
    }

    /// What is in `self` and not in `other`.
    fn minus(&self, other: &GuestConfig) -> GuestConfig {
        GuestConfig {
            addrs: self.addrs.difference(&other.addrs).copied().collect(),
            routes: self.routes.difference(&other.routes).copied().collect(),
            rules: self.rules.difference(&other.rules).copied().collect(),
        }
    }
}

/// How the guest sees an ENI, by the modes of the EIPs on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestMode {
    /// Private IPs only (NAT mode, or no EIP).
    Private,
    /// Cut-through: the EIP replaces the primary private IP.
    Binded(Ipv4Addr),
    /// Private IPs plus these EIPs, configured when the instance has DHCP on.
    MultiBinded { eips: Vec<Ipv4Addr>, dhcp: bool },
}

/// An attached ENI as the cloud's state describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniFacts {
    /// Dataplane number (`Side::Eni`).
    pub index: u16,
    pub eni_id: String,
    pub instance: String,
    pub primary: bool,
    /// Primary first.
    pub private_ips: Vec<Ipv4Addr>,
    pub prefix_len: u8,
    /// The vSwitch gateway.
    pub gateway: Ipv4Addr,
    pub mode: GuestMode,
    /// `false`: `configure = false` in the lab file.
    pub configure: bool,
}

impl EniFacts {
    /// What the cloud hands the guest for this ENI as `ethN` (see the module comment).
    pub fn managed(&self, n: u32, internet_gateway: Ipv4Addr) -> GuestConfig {
        let mut c = GuestConfig::default();
        if !self.configure {
            return c;
        }
        let table = TABLE_BASE + n;
        let primary_ip = self.private_ips.first().map(|&ip| Addr {
            ip,
            prefix_len: self.prefix_len,
        });
        match &self.mode {
            GuestMode::Private | GuestMode::MultiBinded { .. } => {
                c.addrs.extend(primary_ip);
                if self.primary {
                    c.routes.insert(Route {
                        table: None,
                        via: self.gateway,
                        onlink: false,
                        metric: None,
                    });
                }
                if let GuestMode::MultiBinded { eips, dhcp: true } = &self.mode {
                    c.routes.insert(Route {
                        table: Some(table),
                        via: self.gateway,
                        onlink: true,
                        metric: None,
                    });
                    for &e in eips {
                        c.addrs.insert(Addr {
                            ip: e,
                            prefix_len: 32,
                        });
                        c.rules.insert(Rule { from: e, table });
                    }
                }
            }
            GuestMode::Binded(eip) => {
                // The EIP replaces the private IP; the cloud adds a default route of lower
                // priority, and (as the images' DHCP hook does) replies from the EIP leave here.
                let gw = internet_gateway;
                c.addrs.insert(Addr {
                    ip: *eip,
                    prefix_len: 32,
                });
                for (table, metric) in [(None, Some(table)), (Some(table), None)] {
                    c.routes.insert(Route {
                        table,
                        via: gw,
                        onlink: true,
                        metric,
                    });
                }
                c.rules.insert(Rule { from: *eip, table });
                if self.primary {
                    c.routes.insert(Route {
                        table: None,
                        via: gw,
                        onlink: true,
                        metric: None,
                    });
                }
            }
        }
        c
    }

    /// Secondary private IPs, where the mode keeps private IPs: configured when the device is
    /// made, the guest's afterwards.
    pub fn guest_owned(&self) -> BTreeSet<Addr> {
        if !self.configure || matches!(self.mode, GuestMode::Binded(_)) {
            return BTreeSet::new();
        }
        self.private_ips
            .iter()
            .skip(1)
            .map(|&ip| Addr {
                ip,
                prefix_len: self.prefix_len,
            })
            .collect()
    }
}

/// Every attached ENI of the cloud, primary first within an instance, then by index (the
/// order the ENIs were created in). `unconfigured` lists the ENI ids with `configure = false`.
pub fn attached_enis(c: &Cloud, unconfigured: &BTreeSet<String>) -> Vec<EniFacts> {
    // The EIPs on each ENI, found in one pass over the EIPs.
    let resolve = c.eni_resolver();
    let mut on_eni: BTreeMap<u16, (Option<Ipv4Addr>, Vec<Ipv4Addr>)> = BTreeMap::new();
    for eip in c.eips.values() {
        let Some(b) = eip.binding.as_ref() else {
            continue;
        };
        let Some(eni) = resolve.bound_eni(b) else {
            continue;
        };
        let slot = on_eni.entry(eni.index).or_default();
        match b.mode {
            Mode::Binded => slot.0 = Some(eip.address),
            Mode::MultiBinded => slot.1.push(eip.address),
            Mode::Nat => {}
        }
    }
    let mut v = Vec::new();
    for e in c.enis.values() {
        let Some(inst) = e.instance.as_ref().and_then(|i| c.instances.get(i)) else {
            continue;
        };
        let Some(vsw) = c.vswitches.get(&e.vswitch) else {
            continue;
        };
        let (binded, mut multi) = on_eni.remove(&e.index).unwrap_or_default();
        multi.sort();
        let mode = match (binded, multi.is_empty()) {
            (Some(a), _) => GuestMode::Binded(a),
            (None, false) => GuestMode::MultiBinded {
                eips: multi,
                dhcp: inst.dhcp,
            },
            (None, true) => GuestMode::Private,
        };
        v.push(EniFacts {
            index: e.index,
            eni_id: e.id.clone(),
            instance: inst.id.clone(),
            primary: e.primary,
            private_ips: e.private_ips.clone(),
            prefix_len: vsw.prefix_len,
            gateway: vsw.gateway,
            mode,
            configure: !unconfigured.contains(&e.id),
        });
    }
    v.sort_by(|a, b| (&a.instance, !a.primary, a.index).cmp(&(&b.instance, !b.primary, b.index)));
    v
}

/// A device the lab made for an ENI, and what it configured on it (the managed part).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Made {
    pub facts: EniFacts,
    pub ns: String,
    /// `ethN`.
    pub dev: String,
    pub n: u32,
    pub config: GuestConfig,
}

/// One thing to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The ENI was detached (or moved to another instance): its device goes, with its
    /// addresses and routes; its policy rules do not go with it and are removed.
    Remove {
        eni: u16,
        eni_id: String,
        ns: String,
        dev: String,
        rules: Vec<Rule>,
    },
    /// A newly attached ENI: its device, up, configured with `config`.
    Create {
        facts: EniFacts,
        ns: String,
        dev: String,
        n: u32,
        config: GuestConfig,
    },
    /// An ENI whose device stays: what the cloud changed in its managed configuration, and
    /// what was left to the guest (messages for the log).
    Update {
        facts: EniFacts,
        ns: String,
        dev: String,
        add: GuestConfig,
        del: GuestConfig,
        left_to_guest: Vec<String>,
    },
}

/// What the lab has to do so that the guests match the cloud: removals first (their device
/// names become free), then updates, then new devices (`ethN` with the lowest free `N` of the
/// instance; the primary ENI is always `eth0`).
pub fn plan(
    want: &[EniFacts],
    have: &BTreeMap<u16, Made>,
    prefix: &str,
    internet_gateway: Ipv4Addr,
) -> Vec<Step> {
    let wanted: BTreeMap<u16, &EniFacts> = want.iter().map(|f| (f.index, f)).collect();
    let mut steps = Vec::new();
    let mut taken: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for (idx, m) in have {
        match wanted.get(idx) {
            Some(f) if f.instance == m.facts.instance && f.primary == m.facts.primary => {
                taken.entry(m.ns.clone()).or_default().insert(m.n);
            }
            _ => steps.push(Step::Remove {
                eni: *idx,
                eni_id: m.facts.eni_id.clone(),
                ns: m.ns.clone(),
                dev: m.dev.clone(),
                rules: m.config.rules.iter().copied().collect(),
            }),
        }
    }
    let mut creates = Vec::new();
    for f in want {
        let ns = format!("{prefix}{}", f.instance);
        match have.get(&f.index) {
            Some(m) if m.ns == ns && f.primary == m.facts.primary => {
                let now = f.managed(m.n, internet_gateway);
                let add = now.minus(&m.config);
                let del = m.config.minus(&now);
                let left_to_guest = left_to_guest(&m.facts, f, &m.dev);
                if !add.is_empty() || !del.is_empty() || !left_to_guest.is_empty() {
                    steps.push(Step::Update {
                        facts: f.clone(),
                        ns,
                        dev: m.dev.clone(),
                        add,
                        del,
                        left_to_guest,
                    });
                }
            }
            _ => {
                let used = taken.entry(ns.clone()).or_default();
                let n = if f.primary {
                    0
                } else {
                    (1..).find(|k| !used.contains(k)).unwrap_or(1)
                };
                used.insert(n);
                let mut config = f.managed(n, internet_gateway);
                config.addrs.extend(f.guest_owned());
                creates.push(Step::Create {
                    facts: f.clone(),
                    dev: format!("eth{n}"),
                    ns,
                    n,
                    config,
                });
            }
        }
    }
    steps.extend(creates);
    steps
}

/// Secondary private IPs assigned or unassigned through the API since the device was made: the
/// guest's to configure, reported with the command that does it.
fn left_to_guest(before: &EniFacts, now: &EniFacts, dev: &str) -> Vec<String> {
    if !now.configure || matches!(now.mode, GuestMode::Binded(_)) {
        return Vec::new();
    }
    let old: BTreeSet<Ipv4Addr> = before.private_ips.iter().skip(1).copied().collect();
    let new: BTreeSet<Ipv4Addr> = now.private_ips.iter().skip(1).copied().collect();
    let p = now.prefix_len;
    let mut v = Vec::new();
    for ip in new.difference(&old) {
        v.push(format!(
            "{ip} was assigned to {} ({dev} in {}): the guest configures it, e.g. `ip addr add {ip}/{p} dev {dev}`",
            now.eni_id, now.instance
        ));
    }
    for ip in old.difference(&new) {
        v.push(format!(
            "{ip} was unassigned from {} ({dev} in {}): the cloud no longer delivers it; the guest still has it until `ip addr del {ip}/{p} dev {dev}`",
            now.eni_id, now.instance
        ));
    }
    v
}

/// Plans from `have` to `want` and applies each step with `apply`, recording what succeeded;
/// returns the ids of the ENIs whose step failed (logged; the next change of the cloud
/// retries them). Both backends converge through this.
pub fn converge(
    have: &mut BTreeMap<u16, Made>,
    want: &[EniFacts],
    prefix: &str,
    internet_gateway: Ipv4Addr,
    mut apply: impl FnMut(&Step) -> Result<(), String>,
) -> Vec<String> {
    let mut failed = Vec::new();
    for s in plan(want, have, prefix, internet_gateway) {
        match apply(&s) {
            Ok(()) => record(have, &s, internet_gateway),
            Err(e) => {
                let id = match &s {
                    Step::Remove { eni_id, .. } => eni_id.clone(),
                    Step::Create { facts, .. } | Step::Update { facts, .. } => facts.eni_id.clone(),
                };
                tracing::error!(eni = %id, "{e}");
                failed.push(id);
            }
        }
    }
    failed
}

/// The state after `step` was applied in full.
pub fn record(have: &mut BTreeMap<u16, Made>, step: &Step, internet_gateway: Ipv4Addr) {
    match step {
        Step::Remove { eni, .. } => {
            have.remove(eni);
        }
        Step::Create {
            facts, ns, dev, n, ..
        } => {
            have.insert(
                facts.index,
                Made {
                    facts: facts.clone(),
                    ns: ns.clone(),
                    dev: dev.clone(),
                    n: *n,
                    config: facts.managed(*n, internet_gateway),
                },
            );
        }
        Step::Update { facts, .. } => {
            if let Some(m) = have.get_mut(&facts.index) {
                m.config = facts.managed(m.n, internet_gateway);
                m.facts = facts.clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{Associate, BindType};

    const IGW: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn addr(s: &str) -> Addr {
        let (a, l) = s.split_once('/').unwrap();
        Addr {
            ip: ip(a),
            prefix_len: l.parse().unwrap(),
        }
    }

    fn lab(text: &str) -> Cloud {
        let file = crate::lab::config::parse(text).unwrap();
        crate::lab::cloud::build(&file, 0).unwrap()
    }

    fn example(name: &str) -> Cloud {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name);
        lab(&std::fs::read_to_string(path).unwrap())
    }

    /// Plans against `have` and records every step as applied.
    fn step(c: &Cloud, have: &mut BTreeMap<u16, Made>, unconfigured: &[&str]) -> Vec<Step> {
        let un = unconfigured.iter().map(|s| s.to_string()).collect();
        let steps = plan(&attached_enis(c, &un), have, "p-", IGW);
        for s in &steps {
            record(have, s, IGW);
        }
        steps
    }

    fn default_via(gw: &str, table: Option<u32>, onlink: bool, metric: Option<u32>) -> Route {
        Route {
            table,
            via: ip(gw),
            onlink,
            metric,
        }
    }

    fn create_of<'a>(steps: &'a [Step], eni_id: &str) -> (&'a str, &'a str, &'a GuestConfig) {
        steps
            .iter()
            .find_map(|s| match s {
                Step::Create {
                    facts,
                    ns,
                    dev,
                    config,
                    ..
                } if facts.eni_id == eni_id => Some((ns.as_str(), dev.as_str(), config)),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no Create for {eni_id} in {steps:#?}"))
    }

    #[test]
    fn a_nat_instance_gets_eth0_with_its_private_ip_and_default_route() {
        let c = example("one-eip.toml");
        let mut have = BTreeMap::new();
        let steps = step(&c, &mut have, &[]);
        assert_eq!(steps.len(), 1, "{steps:#?}");
        let (ns, dev, cfg) = create_of(&steps, "eni-web0");
        assert_eq!((ns, dev), ("p-i-web", "eth0"));
        assert_eq!(cfg.addrs, [addr("10.0.1.10/24")].into());
        assert_eq!(
            cfg.routes,
            [default_via("10.0.1.253", None, false, None)].into()
        );
        assert!(cfg.rules.is_empty());
        // Applied, nothing is left to do.
        assert_eq!(step(&c, &mut have, &[]), vec![]);
    }

    #[test]
    fn a_cut_through_eni_gets_the_eip_its_lower_priority_route_and_a_rule() {
        let c = example("cut-through.toml");
        let mut have = BTreeMap::new();
        let steps = step(&c, &mut have, &[]);
        let (ns, dev, cfg) = create_of(&steps, "eni-ct1");
        assert_eq!((ns, dev), ("p-i-ct", "eth1"));
        assert_eq!(cfg.addrs, [addr("198.51.100.30/32")].into());
        assert_eq!(
            cfg.routes,
            [
                default_via("203.0.113.254", None, true, Some(101)),
                default_via("203.0.113.254", Some(101), true, None),
            ]
            .into()
        );
        assert_eq!(
            cfg.rules,
            [Rule {
                from: ip("198.51.100.30"),
                table: 101
            }]
            .into()
        );
        let (_, dev0, cfg0) = create_of(&steps, "eni-ct0");
        assert_eq!(dev0, "eth0");
        assert!(cfg0.rules.is_empty());
        assert_eq!(step(&c, &mut have, &[]), vec![]);
    }

    #[test]
    fn detach_removes_the_device_and_its_rules_and_attach_takes_the_lowest_free_name() {
        let mut c = example("cut-through.toml");
        let mut have = BTreeMap::new();
        step(&c, &mut have, &[]);
        c.detach_eni("eni-ct1", "i-ct").unwrap();
        let steps = step(&c, &mut have, &[]);
        assert_eq!(
            steps,
            vec![Step::Remove {
                eni: c.enis["eni-ct1"].index,
                eni_id: "eni-ct1".into(),
                ns: "p-i-ct".into(),
                dev: "eth1".into(),
                rules: vec![Rule {
                    from: ip("198.51.100.30"),
                    table: 101
                }],
            }]
        );
        c.attach_eni("eni-ct1", "i-ct").unwrap();
        let steps = step(&c, &mut have, &[]);
        let (_, dev, cfg) = create_of(&steps, "eni-ct1");
        assert_eq!(dev, "eth1");
        assert_eq!(cfg.addrs, [addr("198.51.100.30/32")].into());
    }

    const TWO_SECONDARIES: &str = r#"
[[vswitch]]
id = "vsw-a"
zone = "cn-shanghai-b"
cidr = "10.0.1.0/24"
[[instance]]
id = "i-a"
vswitch = "vsw-a"
instance_type = "ecs.g5.xlarge"
dhcp = true
enis = [
  { id = "eni-a0", private_ips = ["10.0.1.10"] },
  { id = "eni-a1", private_ips = ["10.0.1.20", "10.0.1.21"] },
  { id = "eni-a2", private_ips = ["10.0.1.30"] },
]
[[eni]]
id = "eni-m"
vswitch = "vsw-a"
private_ips = ["10.0.1.40"]
[[eip]]
allocation_id = "eip-m1"
address = "198.51.100.41"
[[eip]]
allocation_id = "eip-m2"
address = "198.51.100.42"
[[association]]
allocation_id = "eip-m1"
instance_id = "eni-m"
instance_type = "NetworkInterface"
mode = "MULTI_BINDED"
[[association]]
allocation_id = "eip-m2"
instance_id = "eni-m"
instance_type = "NetworkInterface"
mode = "MULTI_BINDED"
"#;

    #[test]
    fn device_names_stay_put_when_a_neighbour_goes() {
        let mut c = lab(TWO_SECONDARIES);
        let mut have = BTreeMap::new();
        let steps = step(&c, &mut have, &[]);
        assert_eq!(create_of(&steps, "eni-a1").1, "eth1");
        assert_eq!(create_of(&steps, "eni-a2").1, "eth2");
        let (_, _, cfg) = create_of(&steps, "eni-a1");
        assert_eq!(
            cfg.addrs,
            [addr("10.0.1.20/24"), addr("10.0.1.21/24")].into(),
            "secondary private IPs are configured when the device is made"
        );
        assert!(
            cfg.routes.is_empty(),
            "a secondary NAT ENI gets no route (seed 004)"
        );
        c.detach_eni("eni-a1", "i-a").unwrap();
        let steps = step(&c, &mut have, &[]);
        assert!(matches!(&steps[..], [Step::Remove { dev, .. }] if dev == "eth1"));
        assert_eq!(
            have[&c.enis["eni-a2"].index].dev, "eth2",
            "eth2 keeps its name"
        );
        // The MULTI_BINDED ENI takes the free eth1: private IP, both EIPs, a rule each.
        c.attach_eni("eni-m", "i-a").unwrap();
        let steps = step(&c, &mut have, &[]);
        let (_, dev, cfg) = create_of(&steps, "eni-m");
        assert_eq!(dev, "eth1");
        assert_eq!(
            cfg.addrs,
            [
                addr("10.0.1.40/24"),
                addr("198.51.100.41/32"),
                addr("198.51.100.42/32")
            ]
            .into()
        );
        assert_eq!(
            cfg.routes,
            [default_via("10.0.1.253", Some(101), true, None)].into()
        );
        assert_eq!(cfg.rules.len(), 2);
    }

    #[test]
    fn an_eip_unassociated_from_an_attached_multi_binded_eni_is_taken_out_of_the_guest() {
        let mut c = lab(TWO_SECONDARIES);
        c.attach_eni("eni-m", "i-a").unwrap_err(); // the xlarge has room for three ENIs only
        c.detach_eni("eni-a2", "i-a").unwrap();
        c.attach_eni("eni-m", "i-a").unwrap();
        let mut have = BTreeMap::new();
        step(&c, &mut have, &[]);
        c.unassociate(0, "eip-m2", false).unwrap();
        c.handle_timeout(u64::MAX / 2);
        let steps = step(&c, &mut have, &[]);
        let [Step::Update { add, del, dev, .. }] = &steps[..] else {
            panic!("one update expected: {steps:#?}");
        };
        assert_eq!(dev, "eth2");
        assert!(add.is_empty(), "{add:?}");
        assert_eq!(del.addrs, [addr("198.51.100.42/32")].into());
        assert_eq!(
            del.rules,
            [Rule {
                from: ip("198.51.100.42"),
                table: 102
            }]
            .into()
        );
        assert!(del.routes.is_empty(), "the other EIP still needs table 102");
        assert_eq!(step(&c, &mut have, &[]), vec![]);
        // The last EIP goes: the table's route goes too, the private IP stays.
        c.unassociate(0, "eip-m1", false).unwrap();
        c.handle_timeout(u64::MAX / 2);
        let steps = step(&c, &mut have, &[]);
        let [Step::Update { del, add, .. }] = &steps[..] else {
            panic!("{steps:#?}");
        };
        assert!(add.is_empty());
        assert_eq!(del.routes.len(), 1);
        assert!(!del.addrs.contains(&addr("10.0.1.40/24")));
    }

    #[test]
    fn a_cut_through_eip_unassociated_while_attached_gives_the_private_ip_back() {
        let mut c = example("cut-through.toml");
        let mut have = BTreeMap::new();
        step(&c, &mut have, &[]);
        c.unassociate(0, "eip-ct-bind", false).unwrap();
        c.handle_timeout(u64::MAX / 2);
        let steps = step(&c, &mut have, &[]);
        let [Step::Update { add, del, .. }] = &steps[..] else {
            panic!("{steps:#?}");
        };
        assert_eq!(add.addrs, [addr("10.0.1.30/24")].into());
        assert!(add.routes.is_empty() && add.rules.is_empty());
        assert_eq!(del.addrs, [addr("198.51.100.30/32")].into());
        assert_eq!(del.routes.len(), 2);
        assert_eq!(del.rules.len(), 1);
    }

    #[test]
    fn a_private_ip_assigned_through_the_api_is_left_to_the_guest_and_said_so() {
        let mut c = lab(TWO_SECONDARIES);
        let mut have = BTreeMap::new();
        step(&c, &mut have, &[]);
        c.assign_private_ips("eni-a2", &[ip("10.0.1.31")], 0)
            .unwrap();
        let steps = step(&c, &mut have, &[]);
        let [Step::Update {
            add,
            del,
            left_to_guest,
            ..
        }] = &steps[..]
        else {
            panic!("{steps:#?}");
        };
        assert!(add.is_empty() && del.is_empty());
        assert_eq!(left_to_guest.len(), 1);
        assert!(
            left_to_guest[0].contains("ip addr add 10.0.1.31/24 dev eth2"),
            "{left_to_guest:?}"
        );
        assert_eq!(step(&c, &mut have, &[]), vec![], "said once");
        c.unassign_private_ips("eni-a2", &[ip("10.0.1.31")])
            .unwrap();
        let steps = step(&c, &mut have, &[]);
        let [Step::Update { left_to_guest, .. }] = &steps[..] else {
            panic!("{steps:#?}");
        };
        assert!(left_to_guest[0].contains("ip addr del 10.0.1.31/24 dev eth2"));
    }

    #[test]
    fn an_unconfigured_eni_gets_a_device_and_nothing_else_ever() {
        let mut c = example("cut-through.toml");
        let mut have = BTreeMap::new();
        let steps = step(&c, &mut have, &["eni-ct1"]);
        let (_, dev, cfg) = create_of(&steps, "eni-ct1");
        assert_eq!(dev, "eth1");
        assert!(cfg.is_empty());
        c.unassociate(0, "eip-ct-bind", false).unwrap();
        c.handle_timeout(u64::MAX / 2);
        assert_eq!(step(&c, &mut have, &["eni-ct1"]), vec![]);
    }

    #[test]
    fn an_eni_moved_to_another_instance_is_removed_there_and_made_here() {
        let mut c = lab(TWO_SECONDARIES.replace(
            "[[eni]]",
            "[[instance]]\nid = \"i-b\"\nvswitch = \"vsw-a\"\nenis = [{ id = \"eni-b0\", private_ips = [\"10.0.1.50\"] }]\n[[eni]]",
        )
        .as_str());
        let mut have = BTreeMap::new();
        step(&c, &mut have, &[]);
        c.detach_eni("eni-a2", "i-a").unwrap();
        c.attach_eni("eni-a2", "i-b").unwrap();
        let steps = step(&c, &mut have, &[]);
        assert!(
            matches!(&steps[0], Step::Remove { ns, dev, .. } if ns == "p-i-a" && dev == "eth2"),
            "{steps:#?}"
        );
        let (ns, dev, _) = create_of(&steps, "eni-a2");
        assert_eq!((ns, dev), ("p-i-b", "eth1"));
        assert_eq!(steps.len(), 2);
    }

    #[test]
    fn nat_mode_associations_do_not_touch_the_guest() {
        // The guest never sees a NAT-mode EIP: unassociating and associating it changes nothing.
        let mut c = example("one-eip.toml");
        let mut have = BTreeMap::new();
        step(&c, &mut have, &[]);
        let id = c.eips.keys().next().unwrap().clone();
        c.unassociate(0, &id, false).unwrap();
        c.handle_timeout(u64::MAX / 2);
        assert_eq!(step(&c, &mut have, &[]), vec![]);
        c.associate(
            0,
            &Associate {
                allocation_id: id,
                instance_id: "i-web".into(),
                bind_type: BindType::EcsInstance,
                mode: crate::engine::AssociationMode::Nat,
                private_ip: None,
            },
        )
        .unwrap();
        c.handle_timeout(u64::MAX / 2);
        assert_eq!(step(&c, &mut have, &[]), vec![]);
    }
}
