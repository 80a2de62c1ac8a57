//! One test per SPEC §3 row built so far, each asserting the exact code and status.

use super::*;

const NOW: u64 = 1_000 * 1_000_000_000;
const MS: u64 = 1_000_000;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// i-web (Running, eth0 10.0.1.10, eth1 10.0.1.20-22), detached eni-spare (10.0.1.30),
/// eni-sub (detached, 10.0.1.40 + 10.0.1.41), i-classic, i-public, i-pending, eni-far
/// (cn-beijing); EIPs eip-1..eip-12 Available.
fn lab() -> Cloud {
    let mut c = Cloud::new(Settings {
        region: "cn-shanghai".into(),
        multi_binded_allowed: true,
        transition_ns: 100 * MS,
        eip_pool: vec![(ip("198.51.100.0"), 24)],
        vpc_id: "vpc-lab".into(),
    });
    c.add_vswitch(VSwitch {
        id: "vsw-a".into(),
        region: "cn-shanghai".into(),
        zone: "cn-shanghai-b".into(),
        network: ip("10.0.1.0"),
        prefix_len: 24,
        gateway: ip("10.0.1.253"),
    });
    let inst = |id: &str, status, vpc, public_ip| Instance {
        id: id.into(),
        region: "cn-shanghai".into(),
        instance_type: "ecs.g5.large".into(),
        status,
        vpc,
        public_ip,
        dhcp: true,
        index: 0,
        max_enis: None,
        max_private_ips_per_eni: None,
        transition_until: None,
    };
    c.add_instance(inst("i-web", InstanceStatus::Running, true, None));
    c.add_instance(inst("i-classic", InstanceStatus::Running, false, None));
    c.add_instance(inst(
        "i-public",
        InstanceStatus::Running,
        true,
        Some(ip("198.51.100.200")),
    ));
    c.add_instance(inst("i-pending", InstanceStatus::Pending, true, None));
    let eni = |id: &str, ips: &[&str], primary, instance: Option<&str>, region: &str| Eni {
        id: id.into(),
        region: region.into(),
        vswitch: "vsw-a".into(),
        private_ips: ips.iter().map(|s| ip(s)).collect(),
        primary,
        instance: instance.map(Into::into),
        index: 0,
    };
    c.add_eni(eni(
        "eni-web0",
        &["10.0.1.10"],
        true,
        Some("i-web"),
        "cn-shanghai",
    ));
    c.add_eni(eni(
        "eni-web1",
        &["10.0.1.20", "10.0.1.21", "10.0.1.22"],
        false,
        Some("i-web"),
        "cn-shanghai",
    ));
    c.add_eni(eni(
        "eni-classic0",
        &["10.0.1.50"],
        true,
        Some("i-classic"),
        "cn-shanghai",
    ));
    c.add_eni(eni(
        "eni-public0",
        &["10.0.1.51"],
        true,
        Some("i-public"),
        "cn-shanghai",
    ));
    c.add_eni(eni(
        "eni-pending0",
        &["10.0.1.52"],
        true,
        Some("i-pending"),
        "cn-shanghai",
    ));
    c.add_eni(eni("eni-spare", &["10.0.1.30"], false, None, "cn-shanghai"));
    c.add_eni(eni(
        "eni-sub",
        &["10.0.1.40", "10.0.1.41"],
        false,
        None,
        "cn-shanghai",
    ));
    c.add_eni(eni("eni-far", &["10.0.1.60"], false, None, "cn-beijing"));
    for k in 1..=12 {
        c.add_eip(NOW, &format!("eip-{k}"), ip(&format!("198.51.100.{k}")), 5);
    }
    c
}

fn req(
    eip: &str,
    target: &str,
    bind_type: BindType,
    mode: AssociationMode,
    pip: Option<&str>,
) -> Associate {
    Associate {
        allocation_id: eip.into(),
        instance_id: target.into(),
        bind_type,
        mode,
        private_ip: pip.map(ip),
    }
}

fn ecs(eip: &str, inst: &str) -> Associate {
    req(eip, inst, BindType::EcsInstance, AssociationMode::Nat, None)
}

fn nat(eip: &str, eni: &str, pip: &str) -> Associate {
    req(
        eip,
        eni,
        BindType::NetworkInterface,
        AssociationMode::Nat,
        Some(pip),
    )
}

fn binded(eip: &str, eni: &str) -> Associate {
    req(
        eip,
        eni,
        BindType::NetworkInterface,
        AssociationMode::Binded,
        None,
    )
}

fn multi(eip: &str, eni: &str) -> Associate {
    req(
        eip,
        eni,
        BindType::NetworkInterface,
        AssociationMode::MultiBinded,
        None,
    )
}

/// Associates and lets the transition finish.
fn bind(c: &mut Cloud, r: &Associate) {
    c.associate(NOW, r).unwrap();
    c.handle_timeout(NOW + 100 * MS);
    assert_eq!(c.eips[&r.allocation_id].status, EipStatus::InUse);
}

#[track_caller]
fn err(r: Result<Vec<Change>, CloudError>, code: &str, status: u16) {
    let e = r.expect_err("the call should be refused");
    assert_eq!((e.code, e.status), (code, status), "{e}");
}

#[test]
fn unknown_allocation_id_is_404() {
    let mut c = lab();
    err(
        c.associate(NOW, &ecs("eip-nope", "i-web")),
        "InvalidAllocationId.NotFound",
        404,
    );
    err(
        c.release(NOW, "eip-nope"),
        "InvalidAllocationId.NotFound",
        404,
    );
}

#[test]
fn unknown_instance_or_eni_is_400() {
    let mut c = lab();
    err(
        c.associate(NOW, &ecs("eip-1", "i-nope")),
        "InvalidInstanceId.NotFound",
        400,
    );
    err(
        c.associate(NOW, &nat("eip-1", "eni-nope", "10.0.1.20")),
        "InvalidInstanceId.NotFound",
        400,
    );
}

#[test]
fn cross_region_is_a_mismatch() {
    let mut c = lab();
    err(
        c.associate(NOW, &binded("eip-1", "eni-far")),
        "InvalidParameter.Mismatch",
        400,
    );
}

#[test]
fn an_eip_is_bound_once() {
    let mut c = lab();
    bind(&mut c, &ecs("eip-1", "i-web"));
    err(
        c.associate(NOW, &binded("eip-1", "eni-spare")),
        "IncorrectEipStatus",
        400,
    );
}

#[test]
fn ecs_takes_one_eip_on_its_primary_ip() {
    let mut c = lab();
    bind(&mut c, &ecs("eip-1", "i-web"));
    err(
        c.associate(NOW, &ecs("eip-2", "i-web")),
        "InvalidAssociation.Duplicated",
        400,
    );
    // The same private IP by the ENI path is the same EIP slot.
    err(
        c.associate(NOW, &nat("eip-2", "eni-web0", "10.0.1.10")),
        "InvalidEip.EipQuotaExceeded",
        400,
    );
    let t = c.table().build().unwrap();
    assert_eq!(t.nat_eip_of(ip("10.0.1.10")), Some(ip("198.51.100.1")));
}

#[test]
fn fixed_public_ip_classic_and_status() {
    let mut c = lab();
    err(
        c.associate(NOW, &ecs("eip-1", "i-public")),
        "EIP_CAN_NOT_ASSOCIATE_WITH_PUBLIC_IP",
        400,
    );
    err(
        c.associate(NOW, &ecs("eip-1", "i-classic")),
        "OperationDenied",
        400,
    );
    err(
        c.associate(NOW, &ecs("eip-1", "i-pending")),
        "IncorrectInstanceStatus",
        400,
    );
}

#[test]
fn transitions_allow_only_queries() {
    let mut c = lab();
    c.associate(NOW, &ecs("eip-1", "i-web")).unwrap();
    assert_eq!(c.eips["eip-1"].status, EipStatus::Associating);
    assert_eq!(c.poll_timeout(), Some(NOW + 100 * MS));
    err(c.unassociate(NOW, "eip-1", false), "TaskConflict", 400);
    err(c.release(NOW, "eip-1"), "TaskConflict", 400);
    err(c.set_bandwidth("eip-1", 10), "TaskConflict", 400);
    // Not mapped until InUse.
    assert_eq!(c.table().build().unwrap().nat_eip_of(ip("10.0.1.10")), None);
    let ch = c.handle_timeout(NOW + 100 * MS);
    assert_eq!(
        ch,
        vec![Change::EipMapped {
            allocation_id: "eip-1".into()
        }]
    );
    c.unassociate(NOW + 200 * MS, "eip-1", false).unwrap();
    assert_eq!(c.eips["eip-1"].status, EipStatus::Unassociating);
    err(
        c.associate(NOW, &ecs("eip-1", "i-web")),
        "TaskConflict",
        400,
    );
    c.handle_timeout(NOW + 300 * MS);
    assert_eq!(c.eips["eip-1"].status, EipStatus::Available);
    assert_eq!(c.table().build().unwrap().nat_eip_of(ip("10.0.1.10")), None);
    err(
        c.unassociate(NOW, "eip-1", false),
        "IncorrectEipStatus",
        400,
    );
}

#[test]
fn nat_one_eip_per_private_ip() {
    let mut c = lab();
    bind(&mut c, &nat("eip-1", "eni-web1", "10.0.1.20"));
    bind(&mut c, &nat("eip-2", "eni-web1", "10.0.1.21"));
    bind(&mut c, &nat("eip-3", "eni-web1", "10.0.1.22"));
    err(
        c.associate(NOW, &nat("eip-4", "eni-web1", "10.0.1.21")),
        "InvalidEip.EipQuotaExceeded",
        400,
    );
    err(
        c.associate(NOW, &nat("eip-4", "eni-web1", "10.0.1.99")),
        "InvalidPrivateIpAddress.NotFound",
        400,
    );
    let t = c.table().build().unwrap();
    assert_eq!(t.nat_eip_of(ip("10.0.1.22")), Some(ip("198.51.100.3")));
}

#[test]
fn binded_rules() {
    let mut c = lab();
    err(
        c.associate(NOW, &binded("eip-1", "eni-web0")),
        "Invalid.DirectEip.BindType",
        400,
    );
    err(
        c.associate(NOW, &binded("eip-1", "eni-web1")),
        "Eni.Attached",
        400,
    );
    err(
        c.associate(NOW, &binded("eip-1", "eni-sub")),
        "Eni.HasSubIp",
        400,
    );
    let mut r = binded("eip-1", "eni-spare");
    r.private_ip = Some(ip("10.0.1.31"));
    err(c.associate(NOW, &r), "Invalid.DirectEip.BindType", 400);
    bind(&mut c, &binded("eip-1", "eni-spare"));
    err(
        c.associate(NOW, &binded("eip-2", "eni-spare")),
        "InvalidAssociation.Duplicated",
        400,
    );
    err(
        c.associate(NOW, &multi("eip-2", "eni-spare")),
        "OperationFailed.EipBindModeConflict",
        400,
    );
    err(
        c.associate(NOW, &nat("eip-2", "eni-spare", "10.0.1.30")),
        "OperationFailed.EipBindModeConflict",
        400,
    );
    assert!(c.table().build().is_ok());
}

#[test]
fn multi_binded_rules() {
    let mut c = lab();
    err(
        c.associate(NOW, &multi("eip-1", "eni-web1")),
        "Eni.Attached",
        400,
    );
    for k in 1..=10 {
        bind(&mut c, &multi(&format!("eip-{k}"), "eni-sub"));
    }
    err(
        c.associate(NOW, &multi("eip-11", "eni-sub")),
        "QuotaExceed.MultiBindedEip",
        400,
    );
    assert!(c.table().build().is_ok());
    let mut closed = lab();
    closed.settings.multi_binded_allowed = false;
    err(
        closed.associate(NOW, &multi("eip-1", "eni-sub")),
        "Mode.NotSupport",
        400,
    );
}

#[test]
fn cut_through_only_in_listed_regions() {
    let mut c = lab();
    for eni in c.enis.values_mut() {
        eni.region = "ap-northeast-1".into();
    }
    for eip in c.eips.values_mut() {
        eip.region = "ap-northeast-1".into();
    }
    err(
        c.associate(NOW, &binded("eip-1", "eni-spare")),
        "OperationUnsupported.EipBindModel",
        400,
    );
    err(
        c.associate(NOW, &multi("eip-1", "eni-sub")),
        "OperationUnsupported.EipBindModel",
        400,
    );
    // NAT works everywhere.
    c.associate(NOW, &nat("eip-1", "eni-web1", "10.0.1.20"))
        .unwrap();
}

/// Adds a NAT gateway on a /29 (five usable addresses after the reserved ones), a HaVip, and
/// load balancers of each kind.
fn with_gateways(c: &mut Cloud) {
    c.add_vswitch(VSwitch {
        id: "vsw-tiny".into(),
        region: "cn-shanghai".into(),
        zone: "cn-shanghai-b".into(),
        network: ip("10.0.9.0"),
        prefix_len: 29,
        gateway: ip("10.0.9.5"),
    });
    for (id, new) in [("ngw-new", true), ("ngw-old", false)] {
        c.nat_gateways.insert(
            id.into(),
            NatGateway {
                id: id.into(),
                region: "cn-shanghai".into(),
                vswitch: "vsw-tiny".into(),
                eip_takes_private_ip: new,
            },
        );
    }
    for (id, status) in [("havip-a", "Available"), ("havip-busy", "Creating")] {
        c.havips.insert(
            id.into(),
            HaVip {
                id: id.into(),
                region: "cn-shanghai".into(),
                vswitch: "vsw-a".into(),
                ip: ip(if id == "havip-a" {
                    "10.0.1.100"
                } else {
                    "10.0.1.101"
                }),
                status: status.into(),
            },
        );
    }
    for (id, kind, intranet, vpc) in [
        ("lb-int", "clb", true, true),
        ("lb-pub", "clb", false, true),
        ("lb-classic", "clb", true, false),
        ("alb-a", "alb", true, true),
    ] {
        c.load_balancers.insert(
            id.into(),
            LoadBalancer {
                id: id.into(),
                region: "cn-shanghai".into(),
                kind: kind.into(),
                intranet,
                vpc,
            },
        );
    }
}

fn other(eip: &str, id: &str, t: BindType) -> Associate {
    req(eip, id, t, AssociationMode::Nat, None)
}

#[test]
fn nat_gateway_takes_twenty_and_new_ones_take_a_private_ip_each() {
    let mut c = lab();
    with_gateways(&mut c);
    for k in 1..=12 {
        c.add_eip(
            NOW,
            &format!("eip-x{k}"),
            ip(&format!("198.51.100.{}", 100 + k)),
            5,
        );
    }
    // /29: .1-.4 usable (.0 network, .5 gateway, .6, .7 reserved): four EIPs, then no IP.
    for k in 1..=4 {
        bind(
            &mut c,
            &other(&format!("eip-{k}"), "ngw-new", BindType::Nat),
        );
    }
    err(
        c.associate(NOW, &other("eip-5", "ngw-new", BindType::Nat)),
        "OperationDenied.NoAvailablePrivateIp",
        400,
    );
    // Old gateways take no private IP: up to 20.
    let ids: Vec<String> = (5..=12)
        .map(|k| format!("eip-{k}"))
        .chain((1..=12).map(|k| format!("eip-x{k}")))
        .collect();
    for id in &ids[..20] {
        bind(&mut c, &other(id, "ngw-old", BindType::Nat));
    }
    err(
        c.associate(NOW, &other(&ids[19], "ngw-old", BindType::Nat)),
        "IncorrectEipStatus",
        400,
    );
    c.add_eip(NOW, "eip-21", ip("198.51.100.150"), 5);
    err(
        c.associate(NOW, &other("eip-21", "ngw-old", BindType::Nat)),
        "QuotaExceeded.NumberOfEip",
        400,
    );
    err(
        c.associate(NOW, &other("eip-21", "ngw-nope", BindType::Nat)),
        "InvalidInstanceId.NotFound",
        400,
    );
    c.table().build().unwrap();
}

#[test]
fn havip_and_clb_take_one_eip() {
    let mut c = lab();
    with_gateways(&mut c);
    bind(&mut c, &other("eip-1", "havip-a", BindType::HaVip));
    err(
        c.associate(NOW, &other("eip-2", "havip-a", BindType::HaVip)),
        "InvalidAssociation.Duplicated",
        400,
    );
    err(
        c.associate(NOW, &other("eip-2", "havip-busy", BindType::HaVip)),
        "IncorrectHaVipStatus",
        400,
    );
    bind(&mut c, &other("eip-3", "lb-int", BindType::SlbInstance));
    err(
        c.associate(NOW, &other("eip-4", "lb-int", BindType::SlbInstance)),
        "InvalidAssociation.Duplicated",
        400,
    );
    for lb in ["lb-pub", "lb-classic", "alb-a"] {
        err(
            c.associate(NOW, &other("eip-4", lb, BindType::SlbInstance)),
            "InvalidInstanceType.ValueNotSupported",
            400,
        );
    }
    assert_eq!(
        parse_bind_type("AlbInstance").unwrap_err().code,
        "InvalidInstanceType.ValueNotSupported"
    );
}

#[test]
fn snat_and_dnat_entries_guard_unassociation_and_dnat_targets() {
    let mut c = lab();
    with_gateways(&mut c);
    bind(&mut c, &other("eip-1", "ngw-old", BindType::Nat));
    bind(&mut c, &other("eip-2", "ngw-old", BindType::Nat));
    c.snat_entries.push(SnatEntry {
        id: "snat-1".into(),
        nat_gateway: "ngw-old".into(),
        snat_ips: vec![ip("198.51.100.1")],
        source_cidr: Some("10.0.1.0/24".into()),
        source_vswitch: None,
        name: String::new(),
    });
    c.forward_entries.push(ForwardEntry {
        id: "fwd-1".into(),
        nat_gateway: "ngw-old".into(),
        external_ip: ip("198.51.100.2"),
        internal_ip: ip("10.0.1.21"),
        external_port: "Any".into(),
        internal_port: "Any".into(),
        ip_protocol: "Any".into(),
        name: String::new(),
    });
    err(
        c.unassociate(NOW, "eip-1", false),
        "InvalidIpStatus.HasBeenUsedBySnatTable",
        400,
    );
    err(
        c.unassociate(NOW, "eip-2", false),
        "InvalidIpStatus.HasBeenUsedByForwardEntry",
        400,
    );
    // i-web owns 10.0.1.21 (eni-web1): a DNAT target takes no EIP.
    err(
        c.associate(NOW, &ecs("eip-3", "i-web")),
        "BIND_INSTANCE_HAVE_PORTMAP_OR_BIND_EIP",
        400,
    );
    c.unassociate(NOW, "eip-1", true).unwrap();
    c.unassociate(NOW, "eip-2", true).unwrap();
    assert!(c.snat_entries.is_empty() && c.forward_entries.is_empty());
    c.handle_timeout(NOW + 100 * MS);
    bind(&mut c, &ecs("eip-3", "i-web"));
}

#[test]
fn batch_is_all_or_nothing() {
    let mut c = lab();
    with_gateways(&mut c);
    bind(&mut c, &ecs("eip-9", "i-web"));
    let ids: Vec<String> = ["eip-1", "eip-2", "eip-9"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    err(
        c.associate_batch(NOW, &ids, "ngw-old", BindType::Nat, AssociationMode::Nat),
        "IncorrectEipStatus",
        400,
    );
    assert!(c.eips["eip-1"].binding.is_none(), "nothing applied");
    c.associate_batch(
        NOW,
        &ids[..2],
        "ngw-old",
        BindType::Nat,
        AssociationMode::Nat,
    )
    .unwrap();
    assert_eq!(c.eips["eip-2"].status, EipStatus::Associating);
    // Secondary ENI in NAT mode: each EIP takes the next private IP without one.
    let ids: Vec<String> = ["eip-3", "eip-4", "eip-5"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    c.associate_batch(
        NOW,
        &ids,
        "eni-web1",
        BindType::NetworkInterface,
        AssociationMode::Nat,
    )
    .unwrap();
    c.handle_timeout(NOW + 100 * MS);
    assert_eq!(
        c.eips["eip-5"].binding.as_ref().unwrap().private_ip,
        Some(ip("10.0.1.22"))
    );
    let more: Vec<String> = vec!["eip-6".into()];
    err(
        c.associate_batch(
            NOW,
            &more,
            "eni-web1",
            BindType::NetworkInterface,
            AssociationMode::Nat,
        ),
        "InvalidEip.EipQuotaExceeded",
        400,
    );
    err(
        c.associate_batch(
            NOW,
            &more,
            "i-web",
            BindType::EcsInstance,
            AssociationMode::Nat,
        ),
        "InvalidInstanceType.ValueNotSupported",
        400,
    );
    err(
        c.associate_batch(
            NOW,
            &more,
            "eni-web0",
            BindType::NetworkInterface,
            AssociationMode::Nat,
        ),
        "Invalid.DirectEip.BindType",
        400,
    );
    c.table().build().unwrap();
}

#[test]
fn release_and_recover_within_seven_days() {
    let mut c = lab();
    bind(&mut c, &ecs("eip-1", "i-web"));
    err(c.release(NOW, "eip-1"), "IncorrectEipStatus", 400);
    c.set_bandwidth("eip-2", 50).unwrap();
    c.release(NOW, "eip-2").unwrap();
    assert!(!c.eips.contains_key("eip-2"));
    // Random allocation never hands out the recoverable address.
    for r in 0..300u64 {
        let (id, _) = c.allocate(NOW, "cn-shanghai", 5, None, r * 7919).unwrap();
        assert_ne!(c.eips[&id].address, ip("198.51.100.2"));
        c.release(NOW, &id).unwrap();
        c.released.retain(|x| x.allocation_id != id);
    }
    let (id, _) = c
        .allocate(
            NOW + 6 * DAY_NS,
            "cn-shanghai",
            100,
            Some(ip("198.51.100.2")),
            0,
        )
        .unwrap();
    assert_eq!(id, "eip-2");
    assert_eq!(c.eips["eip-2"].bandwidth, RECOVERED_BANDWIDTH);
    c.release(NOW, "eip-2").unwrap();
    let late = c.allocate(
        NOW + 8 * DAY_NS,
        "cn-shanghai",
        5,
        Some(ip("198.51.100.2")),
        0,
    );
    assert_eq!(late.unwrap_err().code, "InvalidAllocationId.NotFound");
}

#[test]
fn pool_exhaustion_is_reported() {
    let mut c = lab();
    c.settings.eip_pool = vec![(ip("198.51.100.0"), 30)];
    // .1 is eip-1; .0, .3 and .1 (gateway two below broadcast) are not handed out.
    let e = c.allocate(NOW, "cn-shanghai", 5, None, 0).unwrap_err();
    assert_eq!(e.code, "QuotaExceeded.Eip");
}

#[test]
fn table_follows_every_mode() {
    let mut c = lab();
    bind(&mut c, &nat("eip-1", "eni-web1", "10.0.1.21"));
    bind(&mut c, &binded("eip-2", "eni-spare"));
    bind(&mut c, &multi("eip-3", "eni-sub"));
    let t = c.table().build().unwrap();
    assert_eq!(t.eip_count(), 12);
    assert_eq!(t.nat_eip_of(ip("10.0.1.21")), Some(ip("198.51.100.1")));
    #[cfg(feature = "runtime")]
    {
        let json = serde_json::to_string(&c).unwrap();
        let back: Cloud = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }
}

#[test]
fn cut_through_procedure_associate_then_attach() {
    let mut c = lab();
    bind(&mut c, &binded("eip-1", "eni-spare"));
    c.attach_eni("eni-spare", "i-web").unwrap_err(); // i-web (large) already has 2 ENIs
    c.detach_eni("eni-web1", "i-web").unwrap();
    c.attach_eni("eni-spare", "i-web").unwrap();
    assert_eq!(c.enis["eni-spare"].instance.as_deref(), Some("i-web"));
    // The association followed the ENI into the table.
    let (enis, eips) = c.dataplane();
    let spare = c.enis["eni-spare"].index;
    assert!(enis.iter().any(|e| e.id == spare && e.instance.is_some()));
    assert!(eips
        .iter()
        .any(|e| e.association.is_some_and(|a| a.eni == spare)));
    c.table().build().unwrap();
}

#[test]
fn eni_limits_and_states() {
    let mut c = lab();
    let e = c.attach_eni("eni-spare", "i-web").unwrap_err();
    assert_eq!(
        (e.code, e.status),
        ("InvalidOperation.EniCountExceeded", 403)
    );
    let e = c.detach_eni("eni-web0", "i-web").unwrap_err();
    assert_eq!(e.code, "InvalidOperation.DetachPrimaryEniNotAllowed");
    let e = c.detach_eni("eni-spare", "i-web").unwrap_err();
    assert_eq!(e.code, "InvalidOperation.InvalidEniState");
    let e = c.attach_eni("eni-nope", "i-web").unwrap_err();
    assert_eq!((e.code, e.status), ("InvalidEniId.NotFound", 404));
    let e = c.attach_eni("eni-far", "i-web").unwrap_err();
    assert_eq!(e.code, "InvalidParameter.Mismatch");
    let e = c.attach_eni("eni-spare", "i-pending").unwrap_err();
    assert_eq!(e.code, "IncorrectInstanceStatus");
}

#[test]
fn multi_binded_eni_attaches_only_to_listed_families_with_dhcp() {
    let mut c = lab();
    bind(&mut c, &multi("eip-1", "eni-sub"));
    c.detach_eni("eni-web1", "i-web").unwrap();
    c.instances.get_mut("i-web").unwrap().instance_type = "ecs.g7.large".into();
    let e = c.attach_eni("eni-sub", "i-web").unwrap_err();
    assert_eq!(e.code, "OperationUnsupported.EipBindModel");
    c.instances.get_mut("i-web").unwrap().instance_type = "ecs.g5.large".into();
    c.instances.get_mut("i-web").unwrap().dhcp = false;
    let e = c.attach_eni("eni-sub", "i-web").unwrap_err();
    assert_eq!(e.code, "OperationUnsupported.EipBindModel");
    c.instances.get_mut("i-web").unwrap().dhcp = true;
    c.attach_eni("eni-sub", "i-web").unwrap();
}

#[test]
fn private_ips_assign_and_unassign() {
    let mut c = lab();
    // large: 6 IPs per ENI; eni-web1 has 3.
    let (new, _) = c
        .assign_private_ips("eni-web1", &[ip("10.0.1.23")], 2)
        .unwrap();
    assert_eq!(new.len(), 3);
    assert_eq!(c.enis["eni-web1"].private_ips.len(), 6);
    let e = c.assign_private_ips("eni-web1", &[], 1).unwrap_err();
    assert_eq!(e.code, "QuotaExceeded.PrivateIpAddress");
    let e = c
        .assign_private_ips("eni-web0", &[ip("10.0.1.20")], 0)
        .unwrap_err();
    assert_eq!(e.code, "InvalidPrivateIpAddress.Duplicated");
    let e = c
        .assign_private_ips("eni-web0", &[ip("10.0.1.253")], 0)
        .unwrap_err();
    assert_eq!(e.code, "InvalidPrivateIpAddress.Duplicated");
    bind(&mut c, &nat("eip-1", "eni-web1", "10.0.1.21"));
    let e = c
        .unassign_private_ips("eni-web1", &[ip("10.0.1.21")])
        .unwrap_err();
    assert_eq!(e.code, "InvalidOperation.IpHasEip");
    let e = c
        .unassign_private_ips("eni-web1", &[ip("10.0.1.20")])
        .unwrap_err();
    assert_eq!(e.code, "InvalidIp.NotFound", "the primary stays");
    c.unassign_private_ips("eni-web1", &[ip("10.0.1.22")])
        .unwrap();
    bind(&mut c, &binded("eip-2", "eni-spare"));
    let e = c.assign_private_ips("eni-spare", &[], 1).unwrap_err();
    assert_eq!(e.code, "Eni.HasSubIp");
}

#[test]
fn stop_and_start_take_time_and_drop_traffic_meanwhile() {
    let mut c = lab();
    bind(&mut c, &ecs("eip-1", "i-web"));
    c.set_running(NOW, "i-web", false).unwrap();
    assert_eq!(c.instances["i-web"].status, InstanceStatus::Stopping);
    let e = c.set_running(NOW, "i-web", true).unwrap_err();
    assert_eq!((e.code, e.status), ("IncorrectInstanceStatus", 403));
    c.handle_timeout(NOW + 100 * MS);
    assert_eq!(c.instances["i-web"].status, InstanceStatus::Stopped);
    let (enis, _) = c.dataplane();
    let web0 = c.enis["eni-web0"].index;
    assert!(enis
        .iter()
        .any(|e| e.id == web0 && e.instance.is_some_and(|i| !i.running)));
    // A Stopped instance can still take an EIP (000).
    bind(&mut c, &nat("eip-2", "eni-web1", "10.0.1.20"));
    c.set_running(NOW, "i-web", true).unwrap();
    c.handle_timeout(NOW + 100 * MS);
    assert_eq!(c.instances["i-web"].status, InstanceStatus::Running);
}
