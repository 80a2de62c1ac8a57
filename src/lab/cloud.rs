//! From a lab file to the cloud model: resources as declared, then each `[[association]]`
//! through the same rules as AssociateEipAddress, so a lab file cannot build a state the
//! API would refuse.

use super::config::{self, LabFile};
use crate::cloud::{
    self, Associate, Cloud, Eni, ForwardEntry, HaVip, Instance, InstanceStatus, LoadBalancer,
    NatGateway, Settings, SnatEntry, VSwitch,
};

/// Builds the cloud a lab file declares, at lab-clock time `now` (nanoseconds). Associations
/// are settled (InUse) at once. An error names the `[[association]]` and the cloud's reason.
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
                instance: Some(i.id.clone()),
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
            },
        );
    }
    for lb in &lab.load_balancer {
        c.load_balancers.insert(
            lb.id.clone(),
            LoadBalancer {
                id: lb.id.clone(),
                region: lb.region.clone(),
                kind: lb.r#type.as_str().to_string(),
                intranet: lb.address_type == config::AddressType::Intranet,
                vpc: lb.network == config::NetworkType::Vpc,
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
                "association[{k}] ({} -> {}): the cloud refuses it: {e}",
                a.allocation_id, a.instance_id
            )
        })?;
        c.handle_timeout(now.saturating_add(c.settings.transition_ns));
    }
    for (k, s) in lab.snat_entry.iter().enumerate() {
        c.snat_entries.push(SnatEntry {
            id: s.id.clone().unwrap_or_else(|| format!("snat-{k}")),
            nat_gateway: s.nat_gateway.clone(),
            snat_ips: s.snat_ip.clone(),
        });
    }
    for (k, f) in lab.forward_entry.iter().enumerate() {
        c.forward_entries.push(ForwardEntry {
            id: f.id.clone().unwrap_or_else(|| format!("fwd-{k}")),
            nat_gateway: f.nat_gateway.clone(),
            external_ip: f.external_ip,
            internal_ip: f.internal_ip,
        });
    }
    Ok(c)
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
    fn a_refused_association_names_itself_and_the_code() {
        let text = r#"
[[vswitch]]
id = "vsw-a"
zone = "cn-shanghai-b"
cidr = "10.0.1.0/24"

[[instance]]
id = "i-a"
vswitch = "vsw-a"
enis = [{ id = "eni-a0", private_ips = ["10.0.1.10"] }, { id = "eni-a1", private_ips = ["10.0.1.20"] }]

[[eip]]
allocation_id = "eip-a"
address = "198.51.100.10"

[[association]]
allocation_id = "eip-a"
instance_id = "eni-a1"
instance_type = "NetworkInterface"
mode = "BINDED"
"#;
        let e = example(text).unwrap_err();
        assert!(e.contains("association[0]"), "{e}");
        assert!(e.contains("Eni.Attached"), "{e}");
    }
}
