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
                associated_instances: Vec::new(),
                name: String::new(),
                description: String::new(),
                created: 0,
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
                address: (id == "lb-int").then(|| ip("10.0.1.120")),
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
fn batch_checks_each_eip_against_the_ones_before_it_and_records_what_it_makes() {
    let mut c = lab();
    with_gateways(&mut c);
    c.take_changes();
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let nat = (BindType::Nat, AssociationMode::Nat);
    // ngw-new gives each EIP a private IP of vsw-tiny, which has four: the fifth finds none.
    let before = c.clone();
    let five = ids(&["eip-1", "eip-2", "eip-3", "eip-4", "eip-5"]);
    err(
        c.associate_batch(NOW, &five, "ngw-new", nat.0, nat.1),
        "OperationDenied.NoAvailablePrivateIp",
        400,
    );
    // Listed twice: the second finds it Associating, or InUse when transitions take no time.
    let twice = ids(&["eip-1", "eip-1"]);
    err(
        c.associate_batch(NOW, &twice, "ngw-old", nat.0, nat.1),
        "TaskConflict",
        400,
    );
    c.set_transition_ns(0);
    err(
        c.associate_batch(NOW, &twice, "ngw-old", nat.0, nat.1),
        "IncorrectEipStatus",
        400,
    );
    c.set_transition_ns(100 * MS);
    // BINDED: one per ENI, the batch's own counted.
    err(
        c.associate_batch(
            NOW,
            &ids(&["eip-5", "eip-6"]),
            "eni-spare",
            BindType::NetworkInterface,
            AssociationMode::Binded,
        ),
        "InvalidAssociation.Duplicated",
        400,
    );
    assert!(c == before, "a refused batch changed the state");
    assert_eq!(
        c.take_changes(),
        vec![Change::Settings, Change::Settings],
        "only the settings were recorded"
    );
    let four = ids(&["eip-1", "eip-2", "eip-3", "eip-4"]);
    let changes = c
        .associate_batch(NOW, &four, "ngw-new", nat.0, nat.1)
        .unwrap();
    let taken: std::collections::BTreeSet<Ipv4Addr> = four
        .iter()
        .map(|id| c.eips[id].binding.as_ref().unwrap().private_ip.unwrap())
        .collect();
    assert_eq!(taken.len(), 4, "each its own private IP: {taken:?}");
    let started: Vec<Change> = four
        .iter()
        .map(|id| Change::EipTransition {
            allocation_id: id.clone(),
        })
        .collect();
    assert_eq!(changes, started);
    assert_eq!(c.take_changes(), started, "returned what it recorded");
    assert!(c.handle_timeout(NOW).is_empty() && c.take_changes().is_empty());
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

// ---- SNAT and DNAT entries made through the API (cloud::nat) ----

use super::nat::{ForwardSpec, SnatSpec, MAX_FORWARD_ENTRIES};

const REGION: &str = "cn-shanghai";
const STB: &str = "stb-ngw-old";
const FTB: &str = "ftb-ngw-old";

/// lab() with the gateways of with_gateways(); eip-1..eip-4 (198.51.100.1-4) InUse on ngw-old,
/// eip-5 (198.51.100.5) InUse on ngw-new; eip-6.. Available.
fn nat_lab() -> Cloud {
    let mut c = lab();
    with_gateways(&mut c);
    for k in 1..=4 {
        bind(
            &mut c,
            &other(&format!("eip-{k}"), "ngw-old", BindType::Nat),
        );
    }
    bind(&mut c, &other("eip-5", "ngw-new", BindType::Nat));
    c
}

fn snat(ips: &str, vswitch: Option<&str>, cidr: Option<&str>) -> SnatSpec {
    SnatSpec {
        snat_ip: Some(ips.into()),
        source_vswitch: vswitch.map(Into::into),
        source_cidr: cidr.map(Into::into),
        name: None,
    }
}

fn fwd(ext: &str, ext_port: &str, int: &str, int_port: &str, proto: &str) -> ForwardSpec {
    ForwardSpec {
        external_ip: Some(ext.into()),
        external_port: Some(ext_port.into()),
        internal_ip: Some(int.into()),
        internal_port: Some(int_port.into()),
        ip_protocol: Some(proto.into()),
        name: None,
    }
}

fn snat_entry<'a>(c: &'a Cloud, id: &str) -> &'a SnatEntry {
    c.snat_entries
        .iter()
        .find(|s| s.id == id)
        .expect("no such SNAT entry")
}

fn forward_entry<'a>(c: &'a Cloud, id: &str) -> &'a ForwardEntry {
    c.forward_entries
        .iter()
        .find(|f| f.id == id)
        .expect("no such DNAT entry")
}

/// `f` must be refused with exactly `code` [`status`] and leave the state as it was.
#[track_caller]
fn refuses<T: std::fmt::Debug>(
    c: &mut Cloud,
    code: &str,
    status: u16,
    f: impl FnOnce(&mut Cloud) -> Result<T, CloudError>,
) {
    let before = c.clone();
    let e = f(c).expect_err("the call should be refused");
    assert_eq!((e.code, e.status), (code, status), "{e}");
    assert!(*c == before, "the refused call ({code}) changed the state");
}

#[test]
fn snat_entry_is_created_modified_and_deleted() {
    let mut c = nat_lab();
    let spec = SnatSpec {
        name: Some("out-tiny".into()),
        ..snat("198.51.100.1, 198.51.100.2", Some("vsw-tiny"), None)
    };
    let (id, changes) = c.create_snat_entry(REGION, STB, &spec).unwrap();
    assert!(id.starts_with("snat-") && id.len() == 5 + 16, "{id}");
    let gw = vec![Change::NatEntries {
        nat_gateway: "ngw-old".into(),
    }];
    assert_eq!(changes, gw);
    assert_eq!(
        *snat_entry(&c, &id),
        SnatEntry {
            id: id.clone(),
            nat_gateway: "ngw-old".into(),
            snat_ips: vec![ip("198.51.100.1"), ip("198.51.100.2")],
            source_cidr: None,
            source_vswitch: Some("vsw-tiny".into()),
            name: "out-tiny".into(),
        }
    );
    let (id2, _) = c
        .create_snat_entry(
            REGION,
            STB,
            &snat("198.51.100.3", None, Some("10.0.1.0/24")),
        )
        .unwrap();
    assert_ne!(id, id2);
    assert_eq!(
        snat_entry(&c, &id2).source_cidr.as_deref(),
        Some("10.0.1.0/24")
    );
    // Modify changes what is given, nothing else.
    let ips = SnatSpec {
        snat_ip: Some("198.51.100.3".into()),
        ..SnatSpec::default()
    };
    assert_eq!(c.modify_snat_entry(REGION, STB, &id, &ips).unwrap(), gw);
    let s = snat_entry(&c, &id);
    assert_eq!(s.snat_ips, vec![ip("198.51.100.3")]);
    assert_eq!(
        (s.name.as_str(), s.source_vswitch.as_deref()),
        ("out-tiny", Some("vsw-tiny"))
    );
    let name = SnatSpec {
        name: Some("renamed".into()),
        ..SnatSpec::default()
    };
    c.modify_snat_entry(REGION, STB, &id, &name).unwrap();
    let s = snat_entry(&c, &id);
    assert_eq!(
        (s.name.as_str(), s.snat_ips.clone()),
        ("renamed", vec![ip("198.51.100.3")])
    );
    assert_eq!(c.delete_snat_entry(REGION, STB, &id).unwrap(), gw);
    assert!(c.snat_entries.iter().all(|s| s.id != id));
    refuses(&mut c, "InvalidSnatEntryId.NotFound", 404, |c| {
        c.delete_snat_entry(REGION, STB, &id)
    });
}

#[test]
fn snat_unknown_table_or_entry_is_404_and_snat_ip_is_mandatory() {
    let mut c = nat_lab();
    let ok = snat("198.51.100.1", Some("vsw-tiny"), None);
    for (region, table) in [
        (REGION, "stb-nope"),
        (REGION, FTB),
        (REGION, "ngw-old"),
        ("cn-beijing", STB),
    ] {
        refuses(&mut c, "InvalidSnatTableId.NotFound", 404, |c| {
            c.create_snat_entry(region, table, &ok)
        });
    }
    let (id, _) = c.create_snat_entry(REGION, STB, &ok).unwrap();
    let name = SnatSpec {
        name: Some("x1".into()),
        ..SnatSpec::default()
    };
    refuses(&mut c, "InvalidSnatEntryId.NotFound", 404, |c| {
        c.modify_snat_entry(REGION, STB, "snat-nope", &name)
    });
    // The entry exists, but in another table.
    refuses(&mut c, "InvalidSnatEntryId.NotFound", 404, |c| {
        c.modify_snat_entry(REGION, "stb-ngw-new", &id, &name)
    });
    refuses(&mut c, "InvalidSnatEntryId.NotFound", 404, |c| {
        c.delete_snat_entry(REGION, "stb-ngw-new", &id)
    });
    refuses(&mut c, "InvalidSnatTableId.NotFound", 404, |c| {
        c.delete_snat_entry(REGION, "stb-nope", &id)
    });
    refuses(&mut c, "MissingSnatIp", 400, |c| {
        c.create_snat_entry(
            REGION,
            STB,
            &SnatSpec {
                snat_ip: None,
                ..snat("", None, Some("10.0.1.0/24"))
            },
        )
    });
}

#[test]
fn snat_ips_are_eips_in_use_on_the_gateway() {
    let mut c = nat_lab();
    let with = |ips: &str| snat(ips, None, Some("10.0.1.0/24"));
    for bad in [
        "not-an-ip",
        "198.51.100.1,198.51.100",
        "198.51.100.1,,198.51.100.2",
        "",
    ] {
        refuses(&mut c, "InvalidSnatIp.Malformed", 400, |c| {
            c.create_snat_entry(REGION, STB, &with(bad))
        });
    }
    refuses(&mut c, "INVALID_PARAMETER", 400, |c| {
        c.create_snat_entry(REGION, STB, &with("198.51.100.1,198.51.100.1"))
    });
    // Not an EIP at all (i-public's fixed public IP, an internet address).
    for a in ["198.51.100.200", "203.0.113.9"] {
        refuses(&mut c, "InvalidSnatIp.NotFound", 404, |c| {
            c.create_snat_entry(REGION, STB, &with(a))
        });
    }
    // An EIP that is Available, or on another gateway, or one of them in a list.
    for a in ["198.51.100.6", "198.51.100.5", "198.51.100.1,198.51.100.6"] {
        refuses(&mut c, "InvalidSnatIp.NotFound", 404, |c| {
            c.create_snat_entry(REGION, STB, &with(a))
        });
    }
    // Still Associating: not yet.
    c.associate(NOW, &other("eip-7", "ngw-old", BindType::Nat))
        .unwrap();
    assert_eq!(c.eips["eip-7"].status, EipStatus::Associating);
    refuses(&mut c, "InvalidSnatIp.NotFound", 404, |c| {
        c.create_snat_entry(REGION, STB, &with("198.51.100.7"))
    });
    c.handle_timeout(NOW + 100 * MS);
    let (id, _) = c
        .create_snat_entry(REGION, STB, &with("198.51.100.7,198.51.100.1"))
        .unwrap();
    // Modify checks the new list the same way, and changes nothing when it refuses.
    refuses(&mut c, "InvalidSnatIp.NotFound", 404, |c| {
        c.modify_snat_entry(
            REGION,
            STB,
            &id,
            &SnatSpec {
                snat_ip: Some("198.51.100.1,198.51.100.5".into()),
                ..SnatSpec::default()
            },
        )
    });
    refuses(&mut c, "InvalidSnatIp.Malformed", 400, |c| {
        c.modify_snat_entry(
            REGION,
            STB,
            &id,
            &SnatSpec {
                snat_ip: Some("198.51.100.1;198.51.100.2".into()),
                ..SnatSpec::default()
            },
        )
    });
}

#[test]
fn snat_source_is_one_vswitch_or_one_cidr_block() {
    let mut c = nat_lab();
    let ips = "198.51.100.1";
    refuses(&mut c, "INVALID_PARAMETER", 400, |c| {
        c.create_snat_entry(
            REGION,
            STB,
            &snat(ips, Some("vsw-tiny"), Some("10.0.9.0/29")),
        )
    });
    refuses(&mut c, "INVALID_PARAMETER", 400, |c| {
        c.create_snat_entry(REGION, STB, &snat(ips, None, None))
    });
    for bad in [
        "10.0.1.0",
        "10.0.1.5/24",
        "10.0.1.0/33",
        "10.0.1/24",
        "net/24",
        "10.0.1.0/x",
    ] {
        refuses(&mut c, "INVALID_PARAMETER", 400, |c| {
            c.create_snat_entry(REGION, STB, &snat(ips, None, Some(bad)))
        });
    }
    refuses(&mut c, "InvalidVSwitchId.NotFound", 404, |c| {
        c.create_snat_entry(REGION, STB, &snat(ips, Some("vsw-nope"), None))
    });
    // vsw-a holds havip-a.
    refuses(&mut c, "Forbidden.SourceVSwitchId.IncludeHaVip", 400, |c| {
        c.create_snat_entry(REGION, STB, &snat(ips, Some("vsw-a"), None))
    });
    // A host is a /32 block; a block outside the VPC's is taken too (any block, the cloud says).
    for ok in ["10.0.1.5/32", "192.168.0.0/16"] {
        c.create_snat_entry(REGION, STB, &snat(ips, None, Some(ok)))
            .unwrap();
    }
}

#[test]
fn snat_one_entry_per_vswitch_or_cidr_block_in_a_table() {
    let mut c = nat_lab();
    let (tiny, _) = c
        .create_snat_entry(REGION, STB, &snat("198.51.100.1", Some("vsw-tiny"), None))
        .unwrap();
    refuses(&mut c, "Forbidden.SourceVSwitchId.Duplicated", 400, |c| {
        c.create_snat_entry(REGION, STB, &snat("198.51.100.2", Some("vsw-tiny"), None))
    });
    // vsw-tiny's own block is the same source.
    refuses(&mut c, "Forbidden.SourceVSwitchId.Duplicated", 400, |c| {
        c.create_snat_entry(
            REGION,
            STB,
            &snat("198.51.100.2", None, Some("10.0.9.0/29")),
        )
    });
    c.create_snat_entry(
        REGION,
        STB,
        &snat("198.51.100.2", None, Some("10.0.1.0/24")),
    )
    .unwrap();
    refuses(&mut c, "Forbidden.SourceVSwitchId.Duplicated", 400, |c| {
        c.create_snat_entry(
            REGION,
            STB,
            &snat("198.51.100.1", None, Some("10.0.1.0/24")),
        )
    });
    // A narrower block inside it (an instance) is another source.
    c.create_snat_entry(
        REGION,
        STB,
        &snat("198.51.100.1", None, Some("10.0.1.10/32")),
    )
    .unwrap();
    // Another gateway's table has its own sources.
    c.create_snat_entry(
        REGION,
        "stb-ngw-new",
        &snat("198.51.100.5", Some("vsw-tiny"), None),
    )
    .unwrap();
    // Modify does not count the entry against itself.
    c.modify_snat_entry(
        REGION,
        STB,
        &tiny,
        &SnatSpec {
            snat_ip: Some("198.51.100.1,198.51.100.2".into()),
            ..SnatSpec::default()
        },
    )
    .unwrap();
}

#[test]
fn forward_entry_is_created_modified_and_deleted() {
    let mut c = nat_lab();
    let spec = ForwardSpec {
        name: Some("web".into()),
        ..fwd(" 198.51.100.1", "8080", "10.0.1.77", "080", "tcp")
    };
    let (id, changes) = c.create_forward_entry(REGION, FTB, &spec).unwrap();
    assert!(id.starts_with("fwd-") && id.len() == 4 + 16, "{id}");
    let gw = vec![Change::NatEntries {
        nat_gateway: "ngw-old".into(),
    }];
    assert_eq!(changes, gw);
    assert_eq!(
        *forward_entry(&c, &id),
        ForwardEntry {
            id: id.clone(),
            nat_gateway: "ngw-old".into(),
            external_ip: ip("198.51.100.1"),
            internal_ip: ip("10.0.1.77"),
            external_port: "8080".into(),
            internal_port: "80".into(),
            ip_protocol: "TCP".into(),
            name: "web".into(),
        }
    );
    let (whole, _) = c
        .create_forward_entry(
            REGION,
            FTB,
            &fwd("198.51.100.2", "any", "10.0.1.78", "ANY", "any"),
        )
        .unwrap();
    let w = forward_entry(&c, &whole);
    assert_eq!(
        (
            w.external_port.as_str(),
            w.internal_port.as_str(),
            w.ip_protocol.as_str()
        ),
        ("Any", "Any", "Any")
    );
    // Modify changes what is given, nothing else.
    let port = ForwardSpec {
        internal_port: Some("8081".into()),
        ..ForwardSpec::default()
    };
    assert_eq!(c.modify_forward_entry(REGION, FTB, &id, &port).unwrap(), gw);
    let f = forward_entry(&c, &id);
    assert_eq!(
        (
            f.internal_port.as_str(),
            f.external_port.as_str(),
            f.name.as_str()
        ),
        ("8081", "8080", "web")
    );
    let proto = ForwardSpec {
        ip_protocol: Some("UDP".into()),
        internal_ip: Some("10.0.1.79".into()),
        ..ForwardSpec::default()
    };
    c.modify_forward_entry(REGION, FTB, &id, &proto).unwrap();
    let f = forward_entry(&c, &id);
    assert_eq!(
        (f.ip_protocol.as_str(), f.internal_ip, f.external_ip),
        ("UDP", ip("10.0.1.79"), ip("198.51.100.1"))
    );
    // The whole resulting entry is checked: Any ports alone leave the other port a number.
    refuses(&mut c, "InvalidInternalPort.Malformed", 400, |c| {
        c.modify_forward_entry(
            REGION,
            FTB,
            &id,
            &ForwardSpec {
                external_port: Some("Any".into()),
                ..ForwardSpec::default()
            },
        )
    });
    assert_eq!(c.delete_forward_entry(REGION, FTB, &id).unwrap(), gw);
    assert!(c.forward_entries.iter().all(|f| f.id != id));
    refuses(&mut c, "InvalidForwardEntryId.NotFound", 404, |c| {
        c.delete_forward_entry(REGION, FTB, &id)
    });
}

#[test]
fn forward_entry_values_get_the_clouds_codes() {
    let mut c = nat_lab();
    let cases = [
        (
            fwd("198.51.100", "80", "10.0.1.77", "80", "TCP"),
            "InvalidExternalIp.Malformed",
        ),
        (
            fwd("198.51.100.1", "80", "10.0.1.300", "80", "TCP"),
            "InvalidInternalIp.Malformed",
        ),
        (
            fwd("198.51.100.1", "0", "10.0.1.77", "80", "TCP"),
            "InvalidExternalPort.Malformed",
        ),
        (
            fwd("198.51.100.1", "65536", "10.0.1.77", "80", "TCP"),
            "InvalidExternalPort.Malformed",
        ),
        (
            fwd("198.51.100.1", "+80", "10.0.1.77", "80", "TCP"),
            "InvalidExternalPort.Malformed",
        ),
        (
            fwd("198.51.100.1", "http", "10.0.1.77", "80", "TCP"),
            "InvalidExternalPort.Malformed",
        ),
        // Port ranges are not emulated.
        (
            fwd("198.51.100.1", "80/90", "10.0.1.77", "80/90", "TCP"),
            "InvalidExternalPort.Malformed",
        ),
        (
            fwd("198.51.100.1", "80", "10.0.1.77", "-1", "TCP"),
            "InvalidInternalPort.Malformed",
        ),
        (
            fwd("198.51.100.1", "80", "10.0.1.77", "80", "ICMP"),
            "InvalidProtocal.ValueNotSupported",
        ),
        // Any ports go together, and with IpProtocol Any only.
        (
            fwd("198.51.100.1", "Any", "10.0.1.77", "80", "Any"),
            "InvalidInternalPort.Malformed",
        ),
        (
            fwd("198.51.100.1", "80", "10.0.1.77", "Any", "Any"),
            "InvalidInternalPort.Malformed",
        ),
        (
            fwd("198.51.100.1", "Any", "10.0.1.77", "Any", "TCP"),
            "InvalidProtocal.ValueNotSupported",
        ),
        (
            fwd("198.51.100.1", "80", "10.0.1.77", "80", "Any"),
            "InvalidProtocal.ValueNotSupported",
        ),
    ];
    for (spec, code) in cases {
        refuses(&mut c, code, 400, |c| {
            c.create_forward_entry(REGION, FTB, &spec)
        });
    }
    let ok = fwd("198.51.100.1", "80", "10.0.1.77", "80", "TCP");
    refuses(&mut c, "MissingIpProtocol", 400, |c| {
        c.create_forward_entry(
            REGION,
            FTB,
            &ForwardSpec {
                ip_protocol: None,
                ..ok.clone()
            },
        )
    });
    for (region, table) in [(REGION, "ftb-nope"), (REGION, STB), ("cn-beijing", FTB)] {
        refuses(&mut c, "InvalidForwardTableId.NotFound", 404, |c| {
            c.create_forward_entry(region, table, &ok)
        });
    }
    let (id, _) = c.create_forward_entry(REGION, FTB, &ok).unwrap();
    refuses(&mut c, "InvalidForwardEntryId.NotFound", 404, |c| {
        c.modify_forward_entry(REGION, FTB, "fwd-nope", &ForwardSpec::default())
    });
    refuses(&mut c, "InvalidForwardEntryId.NotFound", 404, |c| {
        c.delete_forward_entry(REGION, "ftb-ngw-new", &id)
    });
    refuses(&mut c, "InvalidForwardTableId.NotFound", 404, |c| {
        c.delete_forward_entry(REGION, "ftb-nope", &id)
    });
    refuses(&mut c, "InvalidExternalPort.Malformed", 400, |c| {
        c.modify_forward_entry(
            REGION,
            FTB,
            &id,
            &ForwardSpec {
                external_port: Some("70000".into()),
                ..ForwardSpec::default()
            },
        )
    });
}

#[test]
fn dnat_external_ip_is_an_eip_in_use_on_the_gateway() {
    let mut c = nat_lab();
    let to = |ext: &str| fwd(ext, "80", "10.0.1.77", "80", "TCP");
    for a in ["198.51.100.200", "203.0.113.5"] {
        refuses(&mut c, "InvalidExternalIp.NotFound", 404, |c| {
            c.create_forward_entry(REGION, FTB, &to(a))
        });
    }
    // Available; on ngw-new.
    for a in ["198.51.100.6", "198.51.100.5"] {
        refuses(&mut c, "InvalidIp.NotInNatgw", 400, |c| {
            c.create_forward_entry(REGION, FTB, &to(a))
        });
    }
    let (id, _) = c
        .create_forward_entry(REGION, FTB, &to("198.51.100.1"))
        .unwrap();
    refuses(&mut c, "InvalidIp.NotInNatgw", 400, |c| {
        c.modify_forward_entry(
            REGION,
            FTB,
            &id,
            &ForwardSpec {
                external_ip: Some("198.51.100.6".into()),
                ..ForwardSpec::default()
            },
        )
    });
}

#[test]
fn dnat_internal_ip_is_in_the_vpc() {
    let mut c = nat_lab();
    let to = |int: &str| fwd("198.51.100.1", "80", int, "80", "TCP");
    // The VPC is vsw-a (10.0.1.0/24) and vsw-tiny (10.0.9.0/29) here.
    for a in ["10.0.2.5", "192.168.1.1", "10.0.9.9"] {
        refuses(&mut c, "Forbidden.DestnationIpOutOfVpcCIDR", 400, |c| {
            c.create_forward_entry(REGION, FTB, &to(a))
        });
    }
    c.create_forward_entry(REGION, FTB, &to("10.0.9.3"))
        .unwrap();
    // With `[vpc] cidr`, the VPC's block counts, not just its vSwitches'.
    c.settings.vpc_cidrs = vec![(ip("10.0.0.0"), 16)];
    c.create_forward_entry(
        REGION,
        FTB,
        &fwd("198.51.100.1", "81", "10.0.2.5", "80", "TCP"),
    )
    .unwrap();
    refuses(&mut c, "Forbidden.DestnationIpOutOfVpcCIDR", 400, |c| {
        c.create_forward_entry(REGION, FTB, &to("192.168.1.1"))
    });
}

#[test]
fn dnat_entries_are_unique_by_external_and_by_internal_end() {
    let mut c = nat_lab();
    let (first, _) = c
        .create_forward_entry(
            REGION,
            FTB,
            &fwd("198.51.100.1", "80", "10.0.1.77", "80", "TCP"),
        )
        .unwrap();
    // Same ExternalIp, ExternalPort, IpProtocol.
    refuses(&mut c, "OperationUnsupported.ForwardEntry", 400, |c| {
        c.create_forward_entry(
            REGION,
            FTB,
            &fwd("198.51.100.1", "80", "10.0.1.78", "80", "tcp"),
        )
    });
    // Another protocol is another entry.
    c.create_forward_entry(
        REGION,
        FTB,
        &fwd("198.51.100.1", "80", "10.0.1.78", "80", "UDP"),
    )
    .unwrap();
    // Same IpProtocol, InternalIp, InternalPort.
    refuses(&mut c, "OperationUnsupported.ForwardEntry", 400, |c| {
        c.create_forward_entry(
            REGION,
            FTB,
            &fwd("198.51.100.2", "8080", "10.0.1.77", "80", "TCP"),
        )
    });
    let (second, _) = c
        .create_forward_entry(
            REGION,
            FTB,
            &fwd("198.51.100.2", "8080", "10.0.1.77", "81", "TCP"),
        )
        .unwrap();
    // Another table has its own entries.
    c.create_forward_entry(
        REGION,
        "ftb-ngw-new",
        &fwd("198.51.100.5", "8080", "10.0.1.77", "81", "TCP"),
    )
    .unwrap();
    // Modify: the entry is not counted against itself, but is against the others.
    c.modify_forward_entry(
        REGION,
        FTB,
        &first,
        &ForwardSpec {
            external_port: Some("80".into()),
            internal_port: Some("80".into()),
            ..ForwardSpec::default()
        },
    )
    .unwrap();
    refuses(&mut c, "OperationUnsupported.ForwardEntry", 400, |c| {
        c.modify_forward_entry(
            REGION,
            FTB,
            &second,
            &ForwardSpec {
                external_ip: Some("198.51.100.1".into()),
                external_port: Some("80".into()),
                ..ForwardSpec::default()
            },
        )
    });
}

#[test]
fn a_whole_ip_mapping_takes_its_eip_alone() {
    let mut c = nat_lab();
    let (whole, _) = c
        .create_forward_entry(
            REGION,
            FTB,
            &fwd("198.51.100.3", "Any", "10.0.1.77", "Any", "Any"),
        )
        .unwrap();
    // Not an SNAT IP, alone or in a list.
    for ips in ["198.51.100.3", "198.51.100.1,198.51.100.3"] {
        refuses(&mut c, "Forbidden.IpUsedInForwardTable", 400, |c| {
            c.create_snat_entry(REGION, STB, &snat(ips, None, Some("10.0.1.0/24")))
        });
    }
    let (s, _) = c
        .create_snat_entry(
            REGION,
            STB,
            &snat("198.51.100.1", None, Some("10.0.1.0/24")),
        )
        .unwrap();
    refuses(&mut c, "Forbidden.IpUsedInForwardTable", 400, |c| {
        c.modify_snat_entry(
            REGION,
            STB,
            &s,
            &SnatSpec {
                snat_ip: Some("198.51.100.1,198.51.100.3".into()),
                ..SnatSpec::default()
            },
        )
    });
    // An SNAT IP takes no whole-IP mapping ...
    refuses(&mut c, "Forbidden.ExternalIp.UsedInSnatTable", 400, |c| {
        c.create_forward_entry(
            REGION,
            FTB,
            &fwd("198.51.100.1", "Any", "10.0.1.78", "Any", "Any"),
        )
    });
    // ... but port mappings may share it.
    c.create_forward_entry(
        REGION,
        FTB,
        &fwd("198.51.100.1", "8080", "10.0.1.78", "80", "TCP"),
    )
    .unwrap();
    // A port mapping on a whole-IP EIP, and the reverse.
    refuses(&mut c, "OperationUnsupported.ForwardEntry", 400, |c| {
        c.create_forward_entry(
            REGION,
            FTB,
            &fwd("198.51.100.3", "22", "10.0.1.79", "22", "TCP"),
        )
    });
    c.create_forward_entry(
        REGION,
        FTB,
        &fwd("198.51.100.2", "53", "10.0.1.79", "53", "UDP"),
    )
    .unwrap();
    refuses(&mut c, "OperationUnsupported.ForwardEntry", 400, |c| {
        c.create_forward_entry(
            REGION,
            FTB,
            &fwd("198.51.100.2", "Any", "10.0.1.80", "Any", "Any"),
        )
    });
    // Modifying the whole-IP entry itself is not a conflict with itself.
    c.modify_forward_entry(
        REGION,
        FTB,
        &whole,
        &ForwardSpec {
            internal_ip: Some("10.0.1.81".into()),
            ..ForwardSpec::default()
        },
    )
    .unwrap();
}

#[test]
fn a_dnat_table_takes_one_hundred_entries() {
    let mut c = nat_lab();
    let mut ids = Vec::new();
    for k in 0..MAX_FORWARD_ENTRIES {
        let port = (1000 + k).to_string();
        let (id, _) = c
            .create_forward_entry(
                REGION,
                FTB,
                &fwd("198.51.100.1", &port, "10.0.1.77", &port, "TCP"),
            )
            .unwrap();
        ids.push(id);
    }
    refuses(&mut c, "QuotaExceeded", 400, |c| {
        c.create_forward_entry(
            REGION,
            FTB,
            &fwd("198.51.100.2", "80", "10.0.1.78", "80", "TCP"),
        )
    });
    // The quota is per table.
    c.create_forward_entry(
        REGION,
        "ftb-ngw-new",
        &fwd("198.51.100.5", "80", "10.0.1.78", "80", "TCP"),
    )
    .unwrap();
    c.delete_forward_entry(REGION, FTB, &ids[0]).unwrap();
    c.create_forward_entry(
        REGION,
        FTB,
        &fwd("198.51.100.2", "80", "10.0.1.78", "80", "TCP"),
    )
    .unwrap();
}

#[test]
fn an_instance_with_an_eip_is_no_dnat_target_and_a_dnat_target_takes_no_eip() {
    let mut c = nat_lab();
    bind(&mut c, &ecs("eip-7", "i-web"));
    // i-web's primary IP, and an IP of its secondary ENI.
    for target in ["10.0.1.10", "10.0.1.21"] {
        refuses(&mut c, "BIND_INSTANCE_HAVE_PORTMAP_OR_BIND_EIP", 400, |c| {
            c.create_forward_entry(REGION, FTB, &fwd("198.51.100.1", "80", target, "80", "TCP"))
        });
    }
    // An instance without an EIP (i-pending) is a target.
    let (id, _) = c
        .create_forward_entry(
            REGION,
            FTB,
            &fwd("198.51.100.1", "80", "10.0.1.52", "80", "TCP"),
        )
        .unwrap();
    refuses(&mut c, "BIND_INSTANCE_HAVE_PORTMAP_OR_BIND_EIP", 400, |c| {
        c.modify_forward_entry(
            REGION,
            FTB,
            &id,
            &ForwardSpec {
                internal_ip: Some("10.0.1.10".into()),
                ..ForwardSpec::default()
            },
        )
    });
    c.unassociate(NOW, "eip-7", false).unwrap();
    c.handle_timeout(NOW + 100 * MS);
    c.create_forward_entry(
        REGION,
        FTB,
        &fwd("198.51.100.1", "81", "10.0.1.21", "80", "TCP"),
    )
    .unwrap();
    // The reverse: the API-made entry keeps an EIP off i-web.
    err(
        c.associate(NOW, &ecs("eip-7", "i-web")),
        "BIND_INSTANCE_HAVE_PORTMAP_OR_BIND_EIP",
        400,
    );
}

#[test]
fn entries_made_through_the_api_guard_unassociation() {
    let mut c = nat_lab();
    let (s, _) = c
        .create_snat_entry(
            REGION,
            STB,
            &snat("198.51.100.1", None, Some("10.0.1.0/24")),
        )
        .unwrap();
    let (f, _) = c
        .create_forward_entry(
            REGION,
            FTB,
            &fwd("198.51.100.2", "80", "10.0.1.77", "80", "TCP"),
        )
        .unwrap();
    refuses(&mut c, "InvalidIpStatus.HasBeenUsedBySnatTable", 400, |c| {
        c.unassociate(NOW, "eip-1", false)
    });
    refuses(
        &mut c,
        "InvalidIpStatus.HasBeenUsedByForwardEntry",
        400,
        |c| c.unassociate(NOW, "eip-2", false),
    );
    c.delete_snat_entry(REGION, STB, &s).unwrap();
    c.delete_forward_entry(REGION, FTB, &f).unwrap();
    c.unassociate(NOW, "eip-1", false).unwrap();
    c.unassociate(NOW, "eip-2", false).unwrap();
}

#[test]
fn entry_names_follow_the_clouds_rule() {
    let mut c = nat_lab();
    for bad in ["x", "1abc", "http://abc", "https://abc", &"a".repeat(129)] {
        refuses(&mut c, "InvalidParameter.Name.Malformed", 400, |c| {
            c.create_snat_entry(
                REGION,
                STB,
                &SnatSpec {
                    name: Some(bad.to_string()),
                    ..snat("198.51.100.1", None, Some("10.0.1.0/24"))
                },
            )
        });
        refuses(&mut c, "InvalidParameter.Name.Malformed", 400, |c| {
            c.create_forward_entry(
                REGION,
                FTB,
                &ForwardSpec {
                    name: Some(bad.to_string()),
                    ..fwd("198.51.100.1", "80", "10.0.1.77", "80", "TCP")
                },
            )
        });
    }
    let (s, _) = c
        .create_snat_entry(
            REGION,
            STB,
            &SnatSpec {
                name: Some("出口-1".into()),
                ..snat("198.51.100.1", None, Some("10.0.1.0/24"))
            },
        )
        .unwrap();
    refuses(&mut c, "InvalidParameter.Name.Malformed", 400, |c| {
        c.modify_snat_entry(
            REGION,
            STB,
            &s,
            &SnatSpec {
                name: Some("-x".into()),
                ..SnatSpec::default()
            },
        )
    });
}

#[test]
fn entry_ids_are_counted_in_the_state_and_skip_taken_ones() {
    let mut a = nat_lab();
    let mut b = nat_lab();
    let spec = fwd("198.51.100.1", "80", "10.0.1.77", "80", "TCP");
    let (ida, _) = a.create_forward_entry(REGION, FTB, &spec).unwrap();
    let (idb, _) = b.create_forward_entry(REGION, FTB, &spec).unwrap();
    assert_eq!(ida, idb, "the same calls make the same ids");
    // The counter is in the saved state: a restored cloud goes on from it.
    let mut restored: Cloud = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
    let cidr = snat("198.51.100.2", None, Some("10.0.1.0/24"));
    let (next, _) = a.create_snat_entry(REGION, STB, &cidr).unwrap();
    let (again, _) = restored.create_snat_entry(REGION, STB, &cidr).unwrap();
    assert_eq!(next, again);
    assert_ne!(
        next.trim_start_matches("snat-"),
        ida.trim_start_matches("fwd-")
    );
    // An id the lab file already gave is skipped.
    let mut c = nat_lab();
    let (would, _) = c.clone().create_snat_entry(REGION, STB, &cidr).unwrap();
    c.snat_entries.push(SnatEntry {
        id: would.clone(),
        nat_gateway: "ngw-old".into(),
        snat_ips: vec![ip("198.51.100.3")],
        source_cidr: Some("10.0.9.0/29".into()),
        source_vswitch: None,
        name: String::new(),
    });
    let (got, _) = c.create_snat_entry(REGION, STB, &cidr).unwrap();
    assert_ne!(got, would);
    // A state saved before the counter and the VPC's blocks were kept still reads.
    let mut old = serde_json::to_value(nat_lab()).unwrap();
    old.as_object_mut().unwrap().remove("next_entry_serial");
    old["settings"].as_object_mut().unwrap().remove("vpc_cidrs");
    let old: Cloud = serde_json::from_value(old).unwrap();
    assert!(old.settings.vpc_cidrs.is_empty());
}

#[test]
fn an_intranet_clbs_address_is_taken() {
    let mut c = lab();
    with_gateways(&mut c);
    refuses(&mut c, "InvalidPrivateIpAddress.Duplicated", 400, |c| {
        c.assign_private_ips("eni-web0", &[ip("10.0.1.120")], 0)
    });
    refuses(&mut c, "InvalidIPAddress.AlreadyUsed", 400, |c| {
        c.create_havip(
            NOW,
            "cn-shanghai",
            &crate::cloud::havip::HaVipSpec {
                vswitch: "vsw-a".into(),
                ip_address: Some("10.0.1.120".into()),
                ..Default::default()
            },
        )
    });
}
