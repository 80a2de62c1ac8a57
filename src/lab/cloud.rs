//! From a lab file to the cloud model. The file declares the final state; the loader reaches it
//! in the order the cloud itself would:
//!
//! 1. resources as declared: vSwitches, instances with their primary ENI (eth0) attached, every
//!    secondary ENI of an instance (`enis[1..]`) still detached, `[[eni]]`s, EIPs, NAT
//!    gateways, HaVips, load balancers;
//! 2. each `[[association]]`, through the same rules as AssociateEipAddress (so a BINDED or
//!    MULTI_BINDED EIP on a secondary ENI is made while that ENI is detached, as the cloud
//!    requires);
//! 3. each instance's secondary ENIs attached in file order, through the rules of
//!    AttachNetworkInterface (ENI limits, MULTI_BINDED families and DHCP, …);
//! 4. SNAT and DNAT entries.
//!
//! So a lab file cannot build a state the API could never reach.

use super::config::{self, LabFile};
use crate::cloud::{
    self, Associate, Cloud, Eni, ForwardEntry, HaVip, Instance, InstanceStatus, LoadBalancer,
    NatGateway, Settings, SnatEntry, VSwitch,
};

/// The engine-table settings a lab file gives besides the cloud's state: the ALG policy, the
/// source check, the gateway's internet-side address, and each NAT gateway's NAPT behaviour.
pub fn table_extras(lab: &LabFile) -> crate::control::TableExtras {
    crate::control::TableExtras {
        alg: Some(lab.alg.policy()),
        source_check: Some(lab.vpc.source_check),
        internet_gateway: Some(lab.internet.gateway),
        napt: lab
            .nat_gateway
            .iter()
            .map(|g| (g.id.clone(), g.napt_config()))
            .collect(),
        clb: lab
            .load_balancer
            .iter()
            .filter(|l| !l.listener.is_empty())
            .map(|l| (l.id.clone(), l.clb_spec()))
            .collect(),
    }
}

/// Builds the cloud a lab file declares, at lab-clock time `now` (nanoseconds), in the order of
/// the module comment. Associations and attachments are settled at once. An error names the
/// field the cloud refuses (`association[2]`, `instance[0].enis[1] (eni-x)`), the cloud's code
/// and reason, and what to change in the file.
pub fn build(lab: &LabFile, now: u64) -> Result<Cloud, String> {
    let mut c = Cloud::new(Settings {
        region: lab.region.clone(),
        multi_binded_allowed: lab.account.multi_binded,
        transition_ns: lab.api.transition_ms.saturating_mul(1_000_000),
        eip_pool: lab
            .internet
            .eip_pool
            .iter()
            .map(|p| (p.network, p.len))
            .collect(),
        vpc_id: lab.vpc.id.clone(),
        vpc_cidrs: lab.vpc_cidrs().iter().map(|b| (b.network, b.len)).collect(),
    });
    for v in &lab.vswitch {
        c.add_vswitch(VSwitch {
            id: v.id.clone(),
            region: v.region.clone(),
            zone: v.zone.clone(),
            network: v.cidr.network,
            prefix_len: v.cidr.len,
            gateway: v.gateway,
        });
    }
    for i in &lab.instance {
        c.add_instance(Instance {
            id: i.id.clone(),
            region: i.region.clone(),
            instance_type: i.instance_type.clone(),
            status: match i.status {
                config::InstanceStatus::Running => InstanceStatus::Running,
                config::InstanceStatus::Stopped => InstanceStatus::Stopped,
                config::InstanceStatus::Pending => InstanceStatus::Pending,
                config::InstanceStatus::Starting => InstanceStatus::Starting,
                config::InstanceStatus::Stopping => InstanceStatus::Stopping,
            },
            vpc: i.network == config::NetworkType::Vpc,
            public_ip: i.public_ip,
            dhcp: i.dhcp,
            index: 0,
            max_enis: i.max_enis,
            max_private_ips_per_eni: i.max_private_ips_per_eni,
            transition_until: None,
        });
        for (k, e) in i.enis.iter().enumerate() {
            c.add_eni(Eni {
                id: e.id.clone(),
                region: i.region.clone(),
                vswitch: e.vswitch.clone(),
                private_ips: e.private_ips.clone(),
                primary: k == 0,
                // Secondary ENIs wait, detached, until the associations are made.
                instance: (k == 0).then(|| i.id.clone()),
                index: 0,
            });
        }
    }
    for e in &lab.eni {
        c.add_eni(Eni {
            id: e.id.clone(),
            region: e.region.clone(),
            vswitch: e.vswitch.clone(),
            private_ips: e.private_ips.clone(),
            primary: false,
            instance: None,
            index: 0,
        });
    }
    for e in &lab.eip {
        c.add_eip(now, &e.allocation_id, e.address, e.bandwidth);
        let eip = c.eips.get_mut(&e.allocation_id).expect("just added");
        eip.region = e.region.clone();
        eip.internet_charge_type = e.internet_charge_type.as_str().to_string();
    }
    for g in &lab.nat_gateway {
        c.nat_gateways.insert(
            g.id.clone(),
            NatGateway {
                id: g.id.clone(),
                region: g.region.clone(),
                vswitch: g.vswitch.clone(),
                eip_takes_private_ip: g.eip_takes_private_ip(),
            },
        );
    }
    for (k, h) in lab.havip.iter().enumerate() {
        let ip = match h.ip_address {
            Some(ip) => ip,
            None => c.free_ip_of(&h.vswitch).ok_or_else(|| {
                format!(
                    "havip[{k}]: vswitch {} has no free address for it",
                    h.vswitch
                )
            })?,
        };
        c.havips.insert(
            h.id.clone(),
            HaVip {
                id: h.id.clone(),
                region: h.region.clone(),
                vswitch: h.vswitch.clone(),
                ip,
                status: h.status.as_str().to_string(),
                associated_instances: h.associated_instances.clone(),
                name: String::new(),
                description: String::new(),
                created: 0,
            },
        );
    }
    for (k, lb) in lab.load_balancer.iter().enumerate() {
        let intranet = lb.address_type == config::AddressType::Intranet;
        // An intranet one in a VPC takes an address of its vSwitch.
        let address = match (&lb.vswitch, intranet, lb.address) {
            (Some(_), true, Some(a)) => Some(a),
            (Some(v), true, None) => Some(c.free_ip_of(v).ok_or_else(|| {
                format!("load_balancer[{k}]: vswitch {v} has no free address for it")
            })?),
            _ => None,
        };
        c.load_balancers.insert(
            lb.id.clone(),
            LoadBalancer {
                id: lb.id.clone(),
                region: lb.region.clone(),
                kind: lb.r#type.as_str().to_string(),
                intranet,
                vpc: lb.network == config::NetworkType::Vpc,
                address,
            },
        );
    }
    for (k, a) in lab.association.iter().enumerate() {
        let req = Associate {
            allocation_id: a.allocation_id.clone(),
            instance_id: a.instance_id.clone(),
            bind_type: cloud::parse_bind_type(a.instance_type.as_str())
                .map_err(|e| e.to_string())?,
            mode: cloud::parse_mode(a.mode.as_str()).map_err(|e| e.to_string())?,
            private_ip: a.private_ip_address,
        };
        c.associate(now, &req).map_err(|e| {
            format!(
                "association[{k}] ({} -> {}): the cloud refuses it: {e}{}",
                a.allocation_id,
                a.instance_id,
                declared_at(lab, &a.instance_id)
            )
        })?;
        c.handle_timeout(now.saturating_add(c.settings.transition_ns));
    }
    for (k, i) in lab.instance.iter().enumerate() {
        for (j, e) in i.enis.iter().enumerate().skip(1) {
            attach(&mut c, now, &i.id, &e.id).map_err(|err| {
                format!(
                    "instance[{k}].enis[{j}] ({}): the cloud refuses to attach it to {}: {err}; {}",
                    e.id,
                    i.id,
                    attach_hint(err.code)
                )
            })?;
        }
    }
    for (k, s) in lab.snat_entry.iter().enumerate() {
        c.snat_entries.push(SnatEntry {
            id: s.id.clone().unwrap_or_else(|| format!("snat-{k}")),
            nat_gateway: s.nat_gateway.clone(),
            snat_ips: s.snat_ip.clone(),
            source_cidr: s.source_cidr.map(|c| c.to_string()),
            source_vswitch: s.source_vswitch_id.clone(),
            name: String::new(),
        });
    }
    for (k, f) in lab.forward_entry.iter().enumerate() {
        c.forward_entries.push(ForwardEntry {
            id: f.id.clone().unwrap_or_else(|| format!("fwd-{k}")),
            nat_gateway: f.nat_gateway.clone(),
            external_ip: f.external_ip,
            internal_ip: f.internal_ip,
            external_port: port_word(f.external_port),
            internal_port: port_word(f.internal_port),
            ip_protocol: f.ip_protocol.to_string(),
            name: String::new(),
        });
    }
    Ok(c)
}

/// A DNAT port as the API spells it (`Any` for a whole-IP mapping).
fn port_word(p: crate::lab::config::ForwardPort) -> String {
    match p {
        crate::lab::config::ForwardPort::Any => "Any".into(),
        crate::lab::config::ForwardPort::Port(n) => n.to_string(),
    }
}

/// AttachNetworkInterface as the cloud would have done it on the way to the declared state,
/// then settled. The cloud attaches only to a Running or Stopped instance; an instance the file
/// declares in a passing state (Pending, Starting, Stopping) took its ENIs in the settled state
/// it came from, so the check runs against that one and the declared status is put back.
fn attach(
    c: &mut Cloud,
    now: u64,
    instance_id: &str,
    eni_id: &str,
) -> Result<(), cloud::CloudError> {
    let declared = c.instances.get(instance_id).map(|i| i.status);
    let came_from = match declared {
        Some(InstanceStatus::Pending | InstanceStatus::Starting) => Some(InstanceStatus::Stopped),
        Some(InstanceStatus::Stopping) => Some(InstanceStatus::Running),
        _ => None,
    };
    if let (Some(s), Some(i)) = (came_from, c.instances.get_mut(instance_id)) {
        i.status = s;
    }
    let result = c.attach_eni(eni_id, instance_id);
    if let (Some(s), Some(i)) = (declared, c.instances.get_mut(instance_id)) {
        i.status = s;
    }
    result?;
    c.handle_timeout(now.saturating_add(c.settings.transition_ns));
    Ok(())
}

/// What to change in the lab file when the cloud refuses to attach a secondary ENI.
fn attach_hint(code: &str) -> &'static str {
    match code {
        "InvalidOperation.EniCountExceeded" => {
            "use a larger instance_type, raise max_enis, or move the ENI to [[eni]] (detached)"
        }
        "OperationUnsupported.EipBindModel" => {
            "its MULTI_BINDED EIPs need dhcp = true on the instance and an instance family seed \
             001 lists (e.g. ecs.g5); or move the ENI to [[eni]] (detached)"
        }
        "IncorrectInstanceStatus" => "set the instance's status to Running or Stopped",
        _ => "change the instance or the ENI's associations, or move the ENI to [[eni]] (detached)",
    }
}

/// ` (eni-x is instance[0].enis[1])` when `id` is an ENI of an instance in the file, so an
/// association error also points at the ENI's declaration.
fn declared_at(lab: &LabFile, id: &str) -> String {
    for (k, i) in lab.instance.iter().enumerate() {
        if let Some(j) = i.enis.iter().position(|e| e.id == id) {
            return format!(" ({id} is instance[{k}].enis[{j}])");
        }
    }
    match lab.eni.iter().position(|e| e.id == id) {
        Some(j) => format!(" ({id} is eni[{j}])"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::EipStatus;

    fn example(text: &str) -> Result<Cloud, String> {
        build(&config::parse(text).expect("example parses"), 0)
    }

    #[test]
    fn one_eip_example_is_programmed() {
        let c = example(include_str!("../../examples/one-eip.toml")).unwrap();
        assert!(c.eips.values().all(|e| e.status == EipStatus::InUse));
        let t = c.table().build().unwrap();
        assert_eq!(t.eip_count(), c.eips.len());
    }

    #[test]
    fn nat_and_cut_through_example_is_programmed() {
        let c = example(include_str!("../../examples/nat-and-cut-through.toml")).unwrap();
        assert!(c.eips.values().any(|e| e.status == EipStatus::InUse));
        c.table().build().unwrap();
    }

    #[test]
    fn nat_gateway_example_is_programmed() {
        let c = example(include_str!("../../examples/nat-gateway.toml")).unwrap();
        assert!(!c.nat_gateways.is_empty() && !c.forward_entries.is_empty());
        assert!(c.eips.values().any(|e| e.status == EipStatus::InUse));
        c.table().build().unwrap();
    }

    #[test]
    fn a_dnat_target_with_its_own_eip_is_named_as_the_legacy_state() {
        let c = example(include_str!("../../examples/nat-gateway.toml")).unwrap();
        assert!(
            c.legacy_dnat_targets().is_empty(),
            "no instance has an EIP there"
        );
        let mut text = include_str!("../../examples/nat-gateway.toml").to_string();
        text.push_str(
            r#"
[[eip]]
allocation_id = "eip-web1"
address = "198.51.100.90"

[[association]]
allocation_id = "eip-web1"
instance_id = "i-web1"
instance_type = "EcsInstance"
"#,
        );
        let c = example(&text).unwrap();
        assert_eq!(
            c.legacy_dnat_targets(),
            [(
                "fwd-web".to_string(),
                "i-web1".to_string(),
                "198.51.100.90".parse().unwrap()
            )]
        );
        c.table().build().unwrap();
    }

    /// The start of a lab file: one vSwitch; instances, ENIs and EIPs follow.
    const VSW: &str = r#"
[[vswitch]]
id = "vsw-a"
zone = "cn-shanghai-b"
cidr = "10.0.1.0/24"
"#;

    /// Attached ENI ids of an instance in dataplane order (the guest's eth0, eth1, …).
    fn eth_order(c: &Cloud, instance: &str) -> Vec<String> {
        let mut enis: Vec<&Eni> = c
            .enis
            .values()
            .filter(|e| e.instance.as_deref() == Some(instance))
            .collect();
        enis.sort_by_key(|e| e.index);
        enis.iter().map(|e| e.id.clone()).collect()
    }

    #[test]
    fn every_example_builds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let lab = config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let c = build(&lab, 0).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            c.table()
                .build()
                .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
            // Every ENI of an instance ends attached to it, in file order.
            for i in &lab.instance {
                let ids: Vec<String> = i.enis.iter().map(|e| e.id.clone()).collect();
                assert_eq!(eth_order(&c, &i.id), ids, "{}", path.display());
            }
            n += 1;
        }
        assert!(n >= 5, "only {n} examples found in {}", dir.display());
    }

    #[test]
    fn eni_indices_follow_the_declaration_order() {
        // As before the attach step existed: instance ENIs in file order, then [[eni]]s.
        for text in [
            include_str!("../../examples/one-eip.toml"),
            include_str!("../../examples/nat-and-cut-through.toml"),
            include_str!("../../examples/nat-gateway.toml"),
            include_str!("../../examples/multi-eip-nat.toml"),
            include_str!("../../examples/cut-through.toml"),
        ] {
            let lab = config::parse(text).unwrap();
            let c = build(&lab, 0).unwrap();
            let declared = lab
                .instance
                .iter()
                .flat_map(|i| i.enis.iter().map(|e| e.id.as_str()))
                .chain(lab.eni.iter().map(|e| e.id.as_str()));
            for (k, id) in declared.enumerate() {
                assert_eq!(c.enis[id].index as usize, k, "{id}");
            }
        }
    }

    #[test]
    fn multi_eip_nat_example_maps_each_private_ip() {
        let c = example(include_str!("../../examples/multi-eip-nat.toml")).unwrap();
        assert_eq!(eth_order(&c, "i-app"), ["eni-app0", "eni-app1"]);
        for (id, ip) in [
            ("eip-app-20", "10.0.1.20"),
            ("eip-app-21", "10.0.1.21"),
            ("eip-app-22", "10.0.1.22"),
        ] {
            let e = &c.eips[id];
            assert_eq!(e.status, EipStatus::InUse, "{id}");
            let b = e.binding.as_ref().unwrap();
            assert_eq!(b.instance_id, "eni-app1");
            assert_eq!(b.mode, cloud::Mode::Nat);
            assert_eq!(b.private_ip, Some(ip.parse().unwrap()));
        }
        assert_eq!(c.eips["eip-app0"].status, EipStatus::InUse);
    }

    #[test]
    fn cut_through_example_binds_then_attaches() {
        let c = example(include_str!("../../examples/cut-through.toml")).unwrap();
        assert_eq!(c.enis["eni-ct1"].instance.as_deref(), Some("i-ct"));
        assert_eq!(eth_order(&c, "i-ct"), ["eni-ct0", "eni-ct1"]);
        assert_eq!(eth_order(&c, "i-peer"), ["eni-peer0"]);
        let e = &c.eips["eip-ct-bind"];
        assert_eq!(e.status, EipStatus::InUse);
        let b = e.binding.as_ref().unwrap();
        assert_eq!(
            (b.instance_id.as_str(), b.mode),
            ("eni-ct1", cloud::Mode::Binded)
        );
        assert_eq!(c.eips["eip-ct-nat"].status, EipStatus::InUse);
        // The dataplane maps the BINDED EIP onto the attached ENI of a running instance.
        let (enis, eips) = c.dataplane();
        let eni = enis
            .iter()
            .find(|x| x.id == c.enis["eni-ct1"].index)
            .unwrap();
        assert!(eni.instance.as_ref().is_some_and(|i| i.running));
        let a = eips
            .iter()
            .find(|x| x.slot == e.slot)
            .and_then(|x| x.association)
            .unwrap();
        assert_eq!(a.eni, c.enis["eni-ct1"].index);
    }

    #[test]
    fn three_enis_keep_the_file_order() {
        // The middle ENI is BINDED, the last MULTI_BINDED: both are attached after their
        // associations, yet the guest's order is still the file's.
        let text = format!(
            r#"{VSW}
[[instance]]
id = "i-three"
vswitch = "vsw-a"
instance_type = "ecs.g5.xlarge"
enis = [
  {{ id = "eni-z", private_ips = ["10.0.1.10"] }},
  {{ id = "eni-b", private_ips = ["10.0.1.20"] }},
  {{ id = "eni-a", private_ips = ["10.0.1.30"] }},
]

[[eip]]
allocation_id = "eip-b"
address = "198.51.100.20"

[[eip]]
allocation_id = "eip-a"
address = "198.51.100.30"

[[association]]
allocation_id = "eip-a"
instance_id = "eni-a"
instance_type = "NetworkInterface"
mode = "MULTI_BINDED"

[[association]]
allocation_id = "eip-b"
instance_id = "eni-b"
instance_type = "NetworkInterface"
mode = "BINDED"
"#
        );
        let c = example(&text).unwrap();
        assert_eq!(eth_order(&c, "i-three"), ["eni-z", "eni-b", "eni-a"]);
        assert!(c.enis["eni-z"].primary && !c.enis["eni-b"].primary);
        assert!(c.eips.values().all(|e| e.status == EipStatus::InUse));
    }

    #[test]
    fn multi_binded_eni_on_an_instance_without_dhcp_is_refused() {
        let text = format!(
            r#"{VSW}
[[instance]]
id = "i-a"
vswitch = "vsw-a"
dhcp = false
enis = [{{ id = "eni-a0", private_ips = ["10.0.1.10"] }}, {{ id = "eni-a1", private_ips = ["10.0.1.20"] }}]

[[eip]]
allocation_id = "eip-a"
address = "198.51.100.10"

[[association]]
allocation_id = "eip-a"
instance_id = "eni-a1"
instance_type = "NetworkInterface"
mode = "MULTI_BINDED"
"#
        );
        let e = example(&text).unwrap_err();
        assert!(e.contains("instance[0].enis[1] (eni-a1)"), "{e}");
        assert!(e.contains("OperationUnsupported.EipBindModel"), "{e}");
        assert!(e.contains("dhcp = true"), "{e}");
    }

    #[test]
    fn multi_binded_eni_on_an_unlisted_family_is_refused() {
        let text = format!(
            r#"{VSW}
[[instance]]
id = "i-a"
vswitch = "vsw-a"
instance_type = "ecs.t6.large"
enis = [{{ id = "eni-a0", private_ips = ["10.0.1.10"] }}, {{ id = "eni-a1", private_ips = ["10.0.1.20"] }}]

[[eip]]
allocation_id = "eip-a"
address = "198.51.100.10"

[[association]]
allocation_id = "eip-a"
instance_id = "eni-a1"
instance_type = "NetworkInterface"
mode = "MULTI_BINDED"
"#
        );
        let e = example(&text).unwrap_err();
        assert!(e.contains("instance[0].enis[1] (eni-a1)"), "{e}");
        assert!(e.contains("OperationUnsupported.EipBindModel"), "{e}");
    }

    #[test]
    fn more_enis_than_the_instance_type_takes_is_refused() {
        let text = format!(
            r#"{VSW}
[[instance]]
id = "i-a"
vswitch = "vsw-a"
instance_type = "ecs.g5.large"
enis = [
  {{ id = "eni-a0", private_ips = ["10.0.1.10"] }},
  {{ id = "eni-a1", private_ips = ["10.0.1.20"] }},
  {{ id = "eni-a2", private_ips = ["10.0.1.30"] }},
]
"#
        );
        let e = example(&text).unwrap_err();
        assert!(e.contains("instance[0].enis[2] (eni-a2)"), "{e}");
        assert!(e.contains("InvalidOperation.EniCountExceeded"), "{e}");
        assert!(e.contains("max_enis"), "{e}");
        // max_enis lifts the type's limit, as the lab file documents.
        let more = text.replace(
            "instance_type = \"ecs.g5.large\"",
            "instance_type = \"ecs.g5.large\"\nmax_enis = 3",
        );
        assert_eq!(eth_order(&example(&more).unwrap(), "i-a").len(), 3);
    }

    #[test]
    fn a_binded_eni_with_a_secondary_private_ip_is_refused() {
        let text = format!(
            r#"{VSW}
[[instance]]
id = "i-a"
vswitch = "vsw-a"
enis = [{{ id = "eni-a0", private_ips = ["10.0.1.10"] }}, {{ id = "eni-a1", private_ips = ["10.0.1.20", "10.0.1.21"] }}]

[[eip]]
allocation_id = "eip-a"
address = "198.51.100.10"

[[association]]
allocation_id = "eip-a"
instance_id = "eni-a1"
instance_type = "NetworkInterface"
mode = "BINDED"
"#
        );
        let e = example(&text).unwrap_err();
        assert!(e.contains("association[0]"), "{e}");
        assert!(e.contains("Eni.HasSubIp"), "{e}");
        assert!(e.contains("instance[0].enis[1]"), "{e}");
    }

    #[test]
    fn binded_on_a_primary_eni_is_still_refused() {
        let text = format!(
            r#"{VSW}
[[instance]]
id = "i-a"
vswitch = "vsw-a"
enis = [{{ id = "eni-a0", private_ips = ["10.0.1.10"] }}]

[[eip]]
allocation_id = "eip-a"
address = "198.51.100.10"

[[association]]
allocation_id = "eip-a"
instance_id = "eni-a0"
instance_type = "NetworkInterface"
mode = "BINDED"
"#
        );
        let e = example(&text).unwrap_err();
        assert!(e.contains("association[0]"), "{e}");
        assert!(e.contains("Invalid.DirectEip.BindType"), "{e}");
        assert!(e.contains("instance[0].enis[0]"), "{e}");
    }

    #[test]
    fn a_detached_eni_keeps_its_binded_eip_and_stays_detached() {
        let text = format!(
            r#"{VSW}
[[instance]]
id = "i-a"
vswitch = "vsw-a"
enis = [{{ id = "eni-a0", private_ips = ["10.0.1.10"] }}]

[[eni]]
id = "eni-spare"
vswitch = "vsw-a"
private_ips = ["10.0.1.30"]

[[eip]]
allocation_id = "eip-a"
address = "198.51.100.10"

[[association]]
allocation_id = "eip-a"
instance_id = "eni-spare"
instance_type = "NetworkInterface"
mode = "BINDED"
"#
        );
        let c = example(&text).unwrap();
        assert_eq!(c.enis["eni-spare"].instance, None);
        assert_eq!(c.eips["eip-a"].status, EipStatus::InUse);
    }

    #[test]
    fn secondary_enis_attach_whatever_the_declared_status() {
        // Running and Stopped take ENIs; Pending, Starting and Stopping are passing states the
        // instance reached with its ENIs attached, and keep their declared status.
        for status in ["Running", "Stopped", "Pending", "Starting", "Stopping"] {
            let text = format!(
                r#"{VSW}
[[instance]]
id = "i-a"
vswitch = "vsw-a"
status = "{status}"
enis = [{{ id = "eni-a0", private_ips = ["10.0.1.10"] }}, {{ id = "eni-a1", private_ips = ["10.0.1.20"] }}]

[[eip]]
allocation_id = "eip-a"
address = "198.51.100.10"

[[association]]
allocation_id = "eip-a"
instance_id = "eni-a1"
instance_type = "NetworkInterface"
mode = "BINDED"
"#
            );
            let c = example(&text).unwrap_or_else(|e| panic!("{status}: {e}"));
            assert_eq!(eth_order(&c, "i-a"), ["eni-a0", "eni-a1"], "{status}");
            assert_eq!(format!("{:?}", c.instances["i-a"].status), status);
            assert_eq!(c.instances["i-a"].transition_until, None);
            assert_eq!(c.eips["eip-a"].status, EipStatus::InUse, "{status}");
        }
    }
}
