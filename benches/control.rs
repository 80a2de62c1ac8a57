//! API calls through the control plane ([`ControlPlane::transact`]) on a cloud of 100,000 EIPs:
//! what one call costs besides its own work, i.e. the bookkeeping of a transaction (ending due
//! transitions, deciding whether the state moved, publishing a table when it did).
//!
//! `cargo bench --bench control`
//!
//! - `describe_one_eip`: DescribeEipAddresses of one AllocationId (what a client polls while an
//!   EIP is Associating), a query: nothing to save or publish.
//! - `associate_unassociate`: AssociateEipAddress of one EIP with i-web (NAT) then
//!   UnassociateEipAddress, two changes, each published (transitions take no time here, so
//!   each call ends its own). No `--state`: the store's write is not timed.
//!
//! Both run the API's own handlers ([`Action::run`]), as the server does.

use criterion::{criterion_group, criterion_main, Criterion};
use eiplab::api::actions::{Action, Params};
use eiplab::api::server::ApiError;
use eiplab::cloud::{Cloud, EipStatus, Eni, Instance, InstanceStatus, Settings, VSwitch};
use eiplab::control::{ControlPlane, Options};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

const EIPS: u32 = 100_000;
const REGION: &str = "cn-shanghai";

/// i-web (Running) with eni-web0 (10.0.1.10), and `EIPS` Available EIPs `eip-0`, `eip-1`, …
/// from 198.18.0.0/15.
fn cloud() -> Cloud {
    let mut c = Cloud::new(Settings {
        region: REGION.into(),
        multi_binded_allowed: true,
        transition_ns: 0,
        eip_pool: vec![(Ipv4Addr::new(198, 18, 0, 0), 15)],
        vpc_id: "vpc-lab".into(),
        vpc_cidrs: Vec::new(),
    });
    c.add_vswitch(VSwitch {
        id: "vsw-a".into(),
        region: REGION.into(),
        zone: "cn-shanghai-b".into(),
        network: Ipv4Addr::new(10, 0, 1, 0),
        prefix_len: 24,
        gateway: Ipv4Addr::new(10, 0, 1, 253),
    });
    c.add_instance(Instance {
        id: "i-web".into(),
        region: REGION.into(),
        instance_type: "ecs.g5.large".into(),
        status: InstanceStatus::Running,
        vpc: true,
        public_ip: None,
        dhcp: true,
        index: 0,
        max_enis: None,
        max_private_ips_per_eni: None,
        transition_until: None,
    });
    c.add_eni(Eni {
        id: "eni-web0".into(),
        region: REGION.into(),
        vswitch: "vsw-a".into(),
        private_ips: vec![Ipv4Addr::new(10, 0, 1, 10)],
        primary: true,
        instance: Some("i-web".into()),
        index: 0,
    });
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 1));
    for k in 0..EIPS {
        c.add_eip(0, &format!("eip-{k}"), Ipv4Addr::from(base + k), 5);
    }
    c
}

fn params(p: &[(&str, &str)]) -> Params {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs one action through the control plane, as the API server does.
fn call(cp: &ControlPlane, action: &str, p: &Params) -> serde_json::Value {
    let action = Action::find(action).expect("served");
    let r: Result<serde_json::Value, ApiError> = cp.transact(|c, now| action.run(c, now, p));
    match r {
        Ok(v) => v,
        Err(e) => panic!("{}: {} {}", action.name, e.code, e.message),
    }
}

fn control(c: &mut Criterion) {
    let cp: Arc<ControlPlane> = ControlPlane::new(cloud(), &Options::default()).expect("starts");
    let mut g = c.benchmark_group("control_100k_eips");
    let describe = params(&[("RegionId", REGION), ("AllocationId", "eip-50000")]);
    let v = call(&cp, "DescribeEipAddresses", &describe);
    assert_eq!(v["TotalCount"], 1, "{v}");
    g.bench_function("describe_one_eip", |b| {
        b.iter(|| call(&cp, "DescribeEipAddresses", &describe))
    });
    let associate = params(&[
        ("RegionId", REGION),
        ("AllocationId", "eip-50000"),
        ("InstanceId", "i-web"),
        ("InstanceType", "EcsInstance"),
    ]);
    let unassociate = params(&[("RegionId", REGION), ("AllocationId", "eip-50000")]);
    let generation = cp.cell().generation();
    call(&cp, "AssociateEipAddress", &associate);
    assert_eq!(
        cp.with_cloud(|c| c.eips["eip-50000"].status),
        EipStatus::InUse
    );
    call(&cp, "UnassociateEipAddress", &unassociate);
    assert_eq!(
        cp.with_cloud(|c| c.eips["eip-50000"].status),
        EipStatus::Available
    );
    assert_eq!(
        cp.cell().generation(),
        generation + 2,
        "each change published"
    );
    g.bench_function("associate_unassociate", |b| {
        b.iter(|| {
            call(&cp, "AssociateEipAddress", &associate);
            call(&cp, "UnassociateEipAddress", &unassociate);
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = control
}
criterion_main!(benches);
