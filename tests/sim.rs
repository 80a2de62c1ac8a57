//! The unprivileged backend's foundation: the lab of an example file in one process, with
//! in-process hosts on the real gateway. No root, no namespaces: runs in every `cargo test`.

use eiplab::control::{ControlPlane, Options};
use eiplab::lab::{cloud, config};
use eiplab::sim::SimLab;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

fn lab(example: &str) -> SimLab {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(example);
    let file = config::load(&path).unwrap_or_else(|e| panic!("{example}: {e}"));
    let c = cloud::build(&file, 1_700_000_000_000_000_000).unwrap();
    let cp: Arc<ControlPlane> = ControlPlane::new(
        c,
        &Options {
            state_dir: None,
            table: cloud::table_extras(&file),
        },
    )
    .unwrap();
    SimLab::build(&file, cp).unwrap()
}

fn a(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn addrs_of(lab: &SimLab, host: &str) -> Vec<Ipv4Addr> {
    lab.world
        .with_host(host, |h| h.addrs())
        .unwrap()
        .into_iter()
        .map(|(_, c)| c.address())
        .collect()
}

#[test]
fn nat_guest_speaks_as_its_eip_and_the_internet_reaches_it() {
    let lab = lab("one-eip.toml");
    let eip = a("198.51.100.10");
    let echo = SocketAddrV4::new(a("203.0.113.1"), 80);

    // Out: the echo service sees the EIP.
    let got = lab.world.http_get("i-web", None, echo, "/", WAIT);
    let body = got.unwrap_or_else(|e| panic!("{e}: {:#?}", lab.dp.snapshot()));
    assert_eq!(body, "198.51.100.10\n");

    // NAT mode: the guest holds its private IP, not the EIP.
    let have = addrs_of(&lab, "i-web");
    assert_eq!(have, vec![a("10.0.1.10")]);
    assert!(!have.contains(&eip));

    // In: ping, and a server in the guest seen from the internet.
    lab.world.ping("internet", eip, WAIT).unwrap();
    lab.world
        .with_host("i-web", |h| h.serve_echo_http(8080))
        .unwrap();
    let body = lab
        .world
        .http_get("internet", None, SocketAddrV4::new(eip, 8080), "/", WAIT)
        .unwrap();
    assert_eq!(body, "203.0.113.1\n");

    // UDP both ways through the EIP.
    lab.world
        .with_host("internet", |h| h.serve_udp_echo(7))
        .unwrap()
        .unwrap();
    let back = lab
        .world
        .udp_exchange(
            "i-web",
            None,
            SocketAddrV4::new(a("203.0.113.1"), 7),
            b"hello",
            WAIT,
        )
        .unwrap();
    assert_eq!(back, b"hello");

    // The gateway counted it on the EIP's slot.
    let snap = lab.dp.snapshot();
    let slot = lab
        .cp
        .with_cloud(|c| c.eips.values().find(|e| e.address == eip).map(|e| e.slot))
        .unwrap();
    let e = snap.eips.get(&slot).expect("counters of the EIP's slot");
    assert!(e.to_guest.packets > 0 && e.from_guest.packets > 0, "{e:?}");
}

#[test]
fn an_unassociated_address_is_not_reached() {
    let lab = lab("one-eip.toml");
    let err = lab
        .world
        .ping("internet", a("198.51.100.99"), Duration::from_millis(300))
        .unwrap_err();
    assert!(err.contains("timed out"), "{err}");
}

#[test]
fn a_cut_through_guest_holds_its_eip() {
    let lab = lab("cut-through.toml");
    let have = lab.world.with_host("i-ct", |h| h.addrs()).unwrap();
    assert!(
        have.iter()
            .any(|(i, c)| i == "eth1" && c.address() == a("198.51.100.30") && c.prefix_len() == 32),
        "{have:?}"
    );
    // eth0 stays in NAT mode: its EIP is not in the guest.
    assert!(!have.iter().any(|(_, c)| c.address() == a("198.51.100.10")));
    assert_eq!(addrs_of(&lab, "i-peer"), vec![a("10.0.1.11")]);
}
