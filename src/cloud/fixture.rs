//! A small cloud that the shells' unit tests start from (compiled for tests only).

use super::{Cloud, Eni, Instance, InstanceStatus, Settings, VSwitch};
use core::net::Ipv4Addr;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// vsw-a (10.0.1.0/24, gateway 10.0.1.253); i-web (Running, ecs.g5.large, DHCP on) with its
/// primary ENI eni-web0 (10.0.1.10); eip-web (198.51.100.10, 5 Mbit/s, Available), allocated
/// at `now`. Transitions last `transition_ns`.
pub(crate) fn web(transition_ns: u64, now: u64) -> Cloud {
    let mut c = Cloud::new(Settings {
        region: "cn-shanghai".into(),
        multi_binded_allowed: true,
        transition_ns,
        eip_pool: vec![(ip("198.51.100.0"), 24)],
        vpc_id: "vpc-lab".into(),
        vpc_cidrs: Vec::new(),
    });
    c.add_vswitch(VSwitch {
        id: "vsw-a".into(),
        region: "cn-shanghai".into(),
        zone: "cn-shanghai-b".into(),
        network: ip("10.0.1.0"),
        prefix_len: 24,
        gateway: ip("10.0.1.253"),
    });
    c.add_instance(instance("i-web", InstanceStatus::Running));
    c.add_eni(eni("eni-web0", "10.0.1.10", true, Some("i-web")));
    c.add_eip(now, "eip-web", ip("198.51.100.10"), 5);
    c
}

/// A VPC instance of `status` in cn-shanghai (ecs.g5.large, DHCP on), with no ENI yet.
pub(crate) fn instance(id: &str, status: InstanceStatus) -> Instance {
    Instance {
        id: id.into(),
        region: "cn-shanghai".into(),
        instance_type: "ecs.g5.large".into(),
        status,
        vpc: true,
        public_ip: None,
        dhcp: true,
        index: 0,
        max_enis: None,
        max_private_ips_per_eni: None,
        transition_until: None,
    }
}

/// An ENI on vsw-a with one private IP.
pub(crate) fn eni(id: &str, addr: &str, primary: bool, instance: Option<&str>) -> Eni {
    Eni {
        id: id.into(),
        region: "cn-shanghai".into(),
        vswitch: "vsw-a".into(),
        private_ips: vec![ip(addr)],
        primary,
        instance: instance.map(Into::into),
        index: 0,
    }
}
