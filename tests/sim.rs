//! The unprivileged backend's foundation: the lab of an example file in one process, with
//! in-process hosts on the real gateway. No root, no namespaces: runs in every `cargo test`.

use eiplab::alg::AlgProtocol;
use eiplab::api::Api;
use eiplab::control::{ControlPlane, Options};
use eiplab::engine::{DropReason, EngineConfig};
use eiplab::lab::{cloud, config};
use eiplab::sim::host::{Listen, Ping, Task, UdpExchange};
use eiplab::sim::{exec, Heard, Proto, SimHost, SimLab};
use eiplab::telemetry::{metrics, Snapshot};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

// ---------------------------------------------------------------------------------------------
// Helpers for the scenarios of tests/lab.rs on the sim backend.

/// How long something expected to fail is given before it counts as failed.
const SHORT: Duration = Duration::from_millis(400);
const ECHO: &str = "203.0.113.1";

fn echo() -> SocketAddrV4 {
    SocketAddrV4::new(a(ECHO), 80)
}

fn api(lab: &SimLab) -> Arc<Api> {
    Api::new(
        lab.cp.clone(),
        &[("LTAIlabkey".into(), "lab-secret".into())],
    )
}

/// A signed API call that must succeed.
#[track_caller]
fn call(api: &Api, action: &str, params: &[(&str, &str)]) -> serde_json::Value {
    api.call_local(action, params)
        .unwrap_or_else(|e| panic!("{action} {params:?}: {} {}", e.code, e.message))
}

/// The EIP's status as DescribeEipAddresses gives it.
fn eip_status(api: &Api, id: &str) -> String {
    let v = call(api, "DescribeEipAddresses", &[("AllocationId", id)]);
    v["EipAddresses"]["EipAddress"][0]["Status"]
        .as_str()
        .unwrap_or("?")
        .to_string()
}

/// Ends the Associating/Unassociating transition under way by moving the lab clock past it
/// (no sleeping), and checks the status it ends in.
#[track_caller]
fn end_transition(lab: &SimLab, api: &Api, id: &str, want: &str) {
    lab.advance(1).unwrap();
    assert_eq!(eip_status(api, id), want, "{id} after the transition");
}

fn slot(lab: &SimLab, allocation_id: &str) -> u32 {
    lab.cp
        .with_cloud(|c| c.eips.get(allocation_id).map(|e| e.slot))
        .unwrap_or_else(|| panic!("no EIP {allocation_id}"))
}

fn eni(lab: &SimLab, eni_id: &str) -> u16 {
    lab.cp
        .with_cloud(|c| c.enis.get(eni_id).map(|e| e.index))
        .unwrap_or_else(|| panic!("no ENI {eni_id}"))
}

fn eip_drops(s: &Snapshot, slot: u32, r: DropReason) -> u64 {
    s.eips.get(&slot).map_or(0, |e| e.drops[r as usize])
}

fn eni_drops(s: &Snapshot, eni: u16, r: DropReason) -> u64 {
    s.enis.get(&eni).map_or(0, |e| e.drops[r as usize])
}

fn global_drops(s: &Snapshot, r: DropReason) -> u64 {
    s.global.drops[r as usize]
}

/// Losses other than drops of the `allowed` reasons, by name (the gateway's own losses too):
/// every packet a test loses must be lost for the reason it expects.
fn other_drops(s: &Snapshot, allowed: &[DropReason]) -> Vec<(&'static str, u64)> {
    let g = &s.gateway;
    DropReason::ALL
        .iter()
        .filter(|r| !allowed.contains(r))
        .map(|&r| (r.name(), global_drops(s, r)))
        .chain([
            ("gateway no_device", g.no_device),
            ("gateway tx_error", g.tx_errors),
            ("gateway short_read", g.short_reads),
        ])
        .filter(|&(_, n)| n > 0)
        .collect()
}

/// Retries `f` until it gives a value or `limit` passed.
#[track_caller]
fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(t) => return t,
            Err(e) if Instant::now() >= deadline => panic!("{what}: not within {limit:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Waits until `f` is true.
#[track_caller]
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    wait_for(WAIT, what, || if f() { Ok(()) } else { Err(String::new()) })
}

/// Waits until the gateway's counters satisfy `ok`; returns them.
#[track_caller]
fn wait_counters(lab: &SimLab, what: &str, ok: impl Fn(&Snapshot) -> bool) -> Snapshot {
    wait_for(WAIT, what, || {
        let s = lab.dp.snapshot();
        if ok(&s) {
            Ok(s)
        } else {
            Err(format!("{s:#?}"))
        }
    })
}

/// Waits until `r` is counted, then checks it was counted on the ENI and on the EIP too.
fn counted_on(lab: &SimLab, r: DropReason, eni: u16, slot: u32) -> Snapshot {
    let s = wait_counters(lab, r.name(), |s| global_drops(s, r) > 0);
    assert!(eni_drops(&s, eni, r) > 0, "{} on the ENI: {s:#?}", r.name());
    assert!(
        eip_drops(&s, slot, r) > 0,
        "{} on the EIP: {s:#?}",
        r.name()
    );
    s
}

fn addrs_on(lab: &SimLab, host: &str, dev: &str) -> Vec<String> {
    lab.world
        .with_host(host, |h| h.addrs())
        .unwrap()
        .into_iter()
        .filter(|(d, _)| d == dev)
        .map(|(_, c)| c.to_string())
        .collect()
}

/// `eiplab exec HOST -- WORDS…` on the sim lab.
fn exec(lab: &SimLab, host: &str, line: &str) -> exec::Output {
    let argv: Vec<String> = line.split_whitespace().map(String::from).collect();
    exec::run(&lab.world, &lab.cp, host, &argv)
}

#[track_caller]
fn exec_ok(lab: &SimLab, host: &str, line: &str) -> String {
    let o = exec(lab, host, line);
    assert_eq!(o.code, 0, "{host}: {line}: {o:?}");
    o.stdout
}

/// A task that says when it has started (a listener is bound after its first step).
struct Started<T> {
    task: T,
    started: Arc<AtomicBool>,
}

impl<T: Task> Task for Started<T> {
    type Output = T::Output;

    fn step(&mut self, h: &mut SimHost) -> Option<Result<T::Output, String>> {
        let r = self.task.step(h);
        self.started.store(true, Ordering::Release);
        r
    }

    fn cancel(&mut self, h: &mut SimHost) {
        self.task.cancel(h)
    }

    fn what(&self) -> String {
        self.task.what()
    }
}

/// Listens on `host` in the background (one connection or datagram, see [`Listen`]); returns
/// once the socket is bound.
fn listen_bg(
    lab: &SimLab,
    host: &str,
    proto: Proto,
    port: u16,
) -> std::thread::JoinHandle<Result<Heard, String>> {
    listen_bg_for(lab, host, proto, port, WAIT)
}

/// [`listen_bg`], giving up after `limit`.
fn listen_bg_for(
    lab: &SimLab,
    host: &str,
    proto: Proto,
    port: u16,
    limit: Duration,
) -> std::thread::JoinHandle<Result<Heard, String>> {
    let started = Arc::new(AtomicBool::new(false));
    let task = Started {
        task: Listen::new(proto, port),
        started: started.clone(),
    };
    let (world, host) = (lab.world.clone(), host.to_string());
    let t = std::thread::spawn(move || world.run(&host, task, limit));
    wait_until("the listener bound", || started.load(Ordering::Acquire));
    t
}

/// The internet checksum of `b`.
fn checksum(b: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in b.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A whole IPv4 packet; `frag` is the flags and fragment offset field.
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ident: u16, frag: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    p[4..6].copy_from_slice(&ident.to_be_bytes());
    p[6..8].copy_from_slice(&frag.to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// A UDP datagram (checksum 0: none).
fn udp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + data.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    u
}

const UDP: u8 = 17;

// ---------------------------------------------------------------------------------------------
// Seed 004: several EIPs on a secondary ENI in NAT mode; source check; policy routing.

#[test]
fn seed_004_source_check_then_policy_routing() {
    let lab = lab("multi-eip-nat.toml");
    let (app0, app1) = (eni(&lab, "eni-app0"), eni(&lab, "eni-app1"));
    let eth1 = addrs_on(&lab, "i-app", "eth1");
    assert_eq!(eth1, ["10.0.1.20/24", "10.0.1.21/24", "10.0.1.22/24"]);
    let all = exec_ok(&lab, "i-app", "ip -4 addr");
    assert!(
        !all.contains("198.51.100."),
        "NAT mode: no EIP in the guest:\n{all}"
    );

    // D6, forged: eth0 sends from eth1's address and from an address nobody holds.
    for src in ["10.0.1.21", "10.0.1.99"] {
        let p = ipv4(a(src), a(ECHO), UDP, 1, 0, &udp(4000, 9, b"forged"));
        lab.world
            .with_host("i-app", |h| h.send_raw("eth0", p))
            .unwrap()
            .unwrap();
    }
    let s = wait_counters(&lab, "two source_check drops on eni-app0", |s| {
        eni_drops(s, app0, DropReason::SourceCheck) == 2
    });
    assert_eq!(eni_drops(&s, app1, DropReason::SourceCheck), 0);
    assert_eq!(global_drops(&s, DropReason::SourceCheck), 2);
    assert_eq!(other_drops(&s, &[DropReason::SourceCheck]), []);

    // Before the policy routes: a connection to 10.0.1.21's EIP comes in on eth1, the
    // SYN-ACK leaves by eth0 (the only default route) and eni-app0 does not own 10.0.1.21.
    lab.world
        .with_host("i-app", |h| h.serve_echo_http(8080))
        .unwrap();
    let inbound = SocketAddrV4::new(a("198.51.100.22"), 8080);
    let err = lab
        .world
        .http_get("internet", None, inbound, "/", SHORT)
        .unwrap_err();
    assert!(err.contains("timed out"), "{err}");
    let s = wait_counters(&lab, "the SYN-ACK dropped on eni-app0", |s| {
        eni_drops(s, app0, DropReason::SourceCheck) > 2
    });
    assert_eq!(eni_drops(&s, app1, DropReason::SourceCheck), 0, "{s:#?}");
    // Outbound from 10.0.1.21: the SYN leaves by eth0 too, curl fails.
    let seen = eni_drops(&lab.dp.snapshot(), app0, DropReason::SourceCheck);
    let o = exec(
        &lab,
        "i-app",
        "curl -s -m 0.4 --interface 10.0.1.21 http://203.0.113.1/",
    );
    assert_eq!(o.code, 28, "{o:?}");
    wait_counters(&lab, "the SYN dropped on eni-app0", |s| {
        eni_drops(s, app0, DropReason::SourceCheck) > seen
    });

    // Seed 004, step 2, in its words.
    for line in [
        "ip -4 route add default via 10.0.1.253 dev eth1 table 1001",
        "ip -4 rule add from 10.0.1.20 lookup 1001",
        "ip -4 rule add from 10.0.1.21 lookup 1001",
        "ip -4 rule add from 10.0.1.22 lookup 1001",
    ] {
        exec_ok(&lab, "i-app", line);
    }
    let shown = exec_ok(&lab, "i-app", "ip rule");
    assert!(
        shown.contains("default via 10.0.1.253 dev eth1 table 1001"),
        "{shown}"
    );
    for ip in ["10.0.1.20", "10.0.1.21", "10.0.1.22"] {
        assert!(shown.contains(&format!("from {ip} lookup 1001")), "{shown}");
    }

    // Step 3: each private IP speaks as its own EIP.
    let before = lab.dp.snapshot();
    for (ip, eip) in [
        ("10.0.1.20", "198.51.100.21"),
        ("10.0.1.21", "198.51.100.22"),
        ("10.0.1.22", "198.51.100.23"),
    ] {
        let out = exec_ok(
            &lab,
            "i-app",
            &format!("curl -s -m 5 --interface {ip} http://203.0.113.1/"),
        );
        assert_eq!(out, format!("{eip}\n"), "curl --interface {ip}");
    }
    let baseline = global_drops(&lab.dp.snapshot(), DropReason::SourceCheck);
    // eth0 still speaks as the instance's EIP.
    assert_eq!(
        lab.world
            .http_get("i-app", None, echo(), "/", WAIT)
            .unwrap(),
        "198.51.100.20\n"
    );
    // Inbound now works: the reply follows the rule to eth1; and a ping to 10.0.1.20's EIP.
    let body = lab
        .world
        .http_get("internet", None, inbound, "/", WAIT)
        .unwrap();
    assert_eq!(body, "203.0.113.1\n");
    lab.world
        .ping("internet", a("198.51.100.21"), WAIT)
        .unwrap();

    let s = lab.dp.snapshot();
    let sent = |s: &Snapshot| s.enis.get(&app1).map_or(0, |e| e.from_guest.packets);
    assert!(sent(&s) > sent(&before), "eth1 carried the replies: {s:#?}");
    for id in ["eip-app-20", "eip-app-21", "eip-app-22"] {
        let e = &s.eips[&slot(&lab, id)];
        assert!(
            e.from_guest.packets > 0 && e.to_guest.packets > 0,
            "{id}: {e:?}"
        );
    }
    // With the routes in, nothing more was dropped; the earlier source_check drops are all
    // there was.
    assert_eq!(
        global_drops(&s, DropReason::SourceCheck),
        baseline,
        "{s:#?}"
    );
    assert_eq!(other_drops(&s, &[DropReason::SourceCheck]), [], "{s:#?}");
}

// ---------------------------------------------------------------------------------------------
// Cut-through (BINDED)

#[test]
fn cut_through_the_guest_speaks_and_is_reached_as_the_eip_itself() {
    let lab = lab("cut-through.toml");
    assert_eq!(addrs_on(&lab, "i-ct", "eth1"), ["198.51.100.30/32"]);

    // Out: from the EIP unchanged, from eth0 through the NAT EIP.
    let from = |ip: Option<&str>| {
        lab.world
            .http_get("i-ct", ip.map(a), echo(), "/", WAIT)
            .unwrap()
    };
    assert_eq!(from(Some("198.51.100.30")), "198.51.100.30\n");
    assert_eq!(from(Some("10.0.1.10")), "198.51.100.10\n");
    assert_eq!(from(None), "198.51.100.10\n", "the default route is eth0's");

    // In: a connection to the cut-through EIP arrives addressed to the EIP; one to the NAT
    // EIP arrives addressed to the private IP.
    for (eip, to) in [
        ("198.51.100.30", "198.51.100.30"),
        ("198.51.100.10", "10.0.1.10"),
    ] {
        let l = listen_bg(&lab, "i-ct", Proto::Tcp, 8080);
        let back = lab
            .world
            .tcp_send(
                "internet",
                None,
                SocketAddrV4::new(a(eip), 8080),
                b"hello",
                WAIT,
            )
            .unwrap();
        assert_eq!(back, b"hello");
        let heard = l.join().unwrap().unwrap();
        assert_eq!(heard.to, SocketAddrV4::new(a(to), 8080), "to {eip}");
        assert_eq!(*heard.from.ip(), a(ECHO));
    }
    // UDP too.
    let l = listen_bg(&lab, "i-ct", Proto::Udp, 5353);
    let back = lab
        .world
        .udp_exchange(
            "internet",
            None,
            SocketAddrV4::new(a("198.51.100.30"), 5353),
            b"dgram",
            WAIT,
        )
        .unwrap();
    assert_eq!(back, b"dgram");
    assert_eq!(
        l.join().unwrap().unwrap().to,
        SocketAddrV4::new(a("198.51.100.30"), 5353)
    );

    let s = lab.dp.snapshot();
    let e = &s.eips[&slot(&lab, "eip-ct-bind")];
    assert!(e.to_guest.packets > 0 && e.from_guest.packets > 0, "{e:?}");
    assert_eq!(other_drops(&s, &[]), [], "{s:#?}");
}

#[test]
fn cut_through_eni_has_no_cloud_services_nor_private_network() {
    let lab = lab("cut-through.toml");
    let (ct1, bind) = (eni(&lab, "eni-ct1"), slot(&lab, "eip-ct-bind"));
    let metadata = SocketAddrV4::new(a("100.100.100.200"), 80);
    let path = "/latest/meta-data/instance-id";

    // D4: the metadata service through eth1 (from the EIP) is blackholed.
    let err = lab
        .world
        .http_get("i-ct", Some(a("198.51.100.30")), metadata, path, SHORT)
        .unwrap_err();
    assert!(err.contains("timed out"), "{err}");
    counted_on(&lab, DropReason::CutThroughBlackhole, ct1, bind);
    // Through eth0 (NAT mode) it answers, for this instance.
    let id = lab
        .world
        .http_get("i-ct", Some(a("10.0.1.10")), metadata, path, WAIT)
        .unwrap();
    assert_eq!(id.trim(), "i-ct");

    // D5: a VPC peer from the EIP (through eth1) is not reached; through eth0 it is.
    let err = lab
        .world
        .run(
            "i-ct",
            Ping::new(a("10.0.1.11"), Some(a("198.51.100.30"))),
            SHORT,
        )
        .unwrap_err();
    assert!(err.contains("timed out"), "{err}");
    counted_on(&lab, DropReason::CutThroughPrivate, ct1, bind);
    let p = lab.world.ping("i-ct", a("10.0.1.11"), WAIT).unwrap();
    assert_eq!(p.from, a("10.0.1.10"));
    let s = lab.dp.snapshot();
    assert_eq!(
        other_drops(
            &s,
            &[
                DropReason::CutThroughBlackhole,
                DropReason::CutThroughPrivate
            ]
        ),
        [],
        "{s:#?}"
    );
}

#[test]
fn metadata_and_metrics_of_a_nat_guest() {
    let lab = lab("one-eip.toml");
    let metadata = SocketAddrV4::new(a("100.100.100.200"), 80);
    for (key, want) in [
        ("private-ipv4", "10.0.1.10"),
        ("eipv4", "198.51.100.10"),
        ("instance-id", "i-web"),
    ] {
        let path = format!("/latest/meta-data/{key}");
        let got = lab
            .world
            .http_get("i-web", None, metadata, &path, WAIT)
            .unwrap();
        assert_eq!(got.trim(), want, "{path}");
    }
    let err = lab
        .world
        .http_get(
            "i-web",
            None,
            metadata,
            "/latest/meta-data/nothing-here",
            WAIT,
        )
        .unwrap_err();
    assert!(err.contains("404"), "{err}");

    // Traffic through the EIP, then its packet counter in the Prometheus text.
    assert_eq!(
        lab.world
            .http_get("i-web", None, echo(), "/", WAIT)
            .unwrap(),
        "198.51.100.10\n"
    );
    let dp = lab.dp.clone();
    lab.cp.set_live_counters(Arc::new(move || dp.snapshot()));
    let text = metrics::render(&metrics::registry(lab.cp.clone())).unwrap();
    let counted = text.lines().any(|l| {
        l.starts_with("eiplab_eip_packets_total{")
            && l.contains("allocation_id=\"eip-web\"")
            && l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
    });
    assert!(counted, "{text}");
}

// ---------------------------------------------------------------------------------------------
// D3: ALG-dependent protocols dropped under NAT, passed through cut-through

/// A SIP request (recognised by its port and by its first line).
const SIP: &[u8] = b"OPTIONS sip:lab@198.51.100.10 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.1:5060\r\nCall-ID: 1@203.0.113.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

#[test]
fn alg_protocols_dropped_under_nat_pass_through_cut_through() {
    let lab = lab("cut-through.toml"); // no [alg]: every protocol's policy is `drop`
    let (nat, bind) = (slot(&lab, "eip-ct-nat"), slot(&lab, "eip-ct-bind"));
    let to = |ip: &str, port: u16| SocketAddrV4::new(a(ip), port);

    // Controls: ordinary ports through the NAT EIP work.
    let l = listen_bg(&lab, "i-ct", Proto::Tcp, 8021);
    lab.world
        .tcp_send("internet", None, to("198.51.100.10", 8021), b"x", WAIT)
        .unwrap();
    assert_eq!(l.join().unwrap().unwrap().to, to("10.0.1.10", 8021));
    let l = listen_bg(&lab, "i-ct", Proto::Udp, 5070);
    lab.world
        .udp_exchange("internet", None, to("198.51.100.10", 5070), b"plain", WAIT)
        .unwrap();
    assert_eq!(l.join().unwrap().unwrap().to, to("10.0.1.10", 5070));

    // FTP control (TCP 21): dropped through the NAT EIP, while a listener waits on 21. The
    // listener's first connection is then the cut-through one.
    let l = listen_bg(&lab, "i-ct", Proto::Tcp, 21);
    let err = lab
        .world
        .tcp_send(
            "internet",
            None,
            to("198.51.100.10", 21),
            b"USER x\r\n",
            SHORT,
        )
        .unwrap_err();
    assert!(err.contains("timed out"), "{err}");
    wait_counters(&lab, "alg_ftp on the NAT EIP", |s| {
        eip_drops(s, nat, DropReason::AlgFtp) > 0
    });
    let back = lab
        .world
        .tcp_send(
            "internet",
            None,
            to("198.51.100.30", 21),
            b"USER x\r\n",
            WAIT,
        )
        .unwrap();
    assert_eq!(back, b"USER x\r\n");
    let heard = l.join().unwrap().unwrap();
    assert_eq!(
        heard.to,
        to("198.51.100.30", 21),
        "the NAT one got through: {heard:?}"
    );
    assert_eq!(*heard.from.ip(), a(ECHO));

    // SIP (UDP 5060): the same.
    let l = listen_bg(&lab, "i-ct", Proto::Udp, 5060);
    lab.world
        .run(
            "internet",
            UdpExchange::new(to("198.51.100.10", 5060), SIP, None).no_answer(),
            WAIT,
        )
        .unwrap();
    wait_counters(&lab, "alg_sip on the NAT EIP", |s| {
        eip_drops(s, nat, DropReason::AlgSip) > 0
    });
    let back = lab
        .world
        .udp_exchange("internet", None, to("198.51.100.30", 5060), SIP, WAIT)
        .unwrap();
    assert_eq!(back, SIP);
    assert_eq!(l.join().unwrap().unwrap().to, to("198.51.100.30", 5060));

    // Outbound from the guest too: DNS to the internet through NAT is dropped.
    let err = lab
        .world
        .udp_exchange("i-ct", Some(a("10.0.1.10")), to(ECHO, 53), b"q", SHORT)
        .unwrap_err();
    assert!(err.contains("timed out"), "{err}");
    let s = wait_counters(&lab, "alg_dns on the NAT EIP", |s| {
        eip_drops(s, nat, DropReason::AlgDns) > 0
    });
    let alg = [DropReason::AlgFtp, DropReason::AlgSip, DropReason::AlgDns];
    for r in alg {
        assert_eq!(eip_drops(&s, bind, r), 0, "{}: {s:#?}", r.name());
    }
    assert_eq!(other_drops(&s, &alg), [], "{s:#?}");
}

#[test]
fn alg_policy_is_per_protocol_under_nat() {
    // [alg] sip = "pass", tftp = "drop", h323 = "drop"; 198.51.100.21 is 10.0.1.20's, NAT.
    let lab = lab("nat-and-cut-through.toml");
    let eip = slot(&lab, "eip-app-20");
    let to = |port: u16| SocketAddrV4::new(a("198.51.100.21"), port);
    let send = |port: u16, data: &[u8]| {
        lab.world
            .run(
                "internet",
                UdpExchange::new(to(port), data, None).no_answer(),
                WAIT,
            )
            .unwrap()
    };

    // SIP passes, translated to the private IP, its payload untouched (and counted as passed).
    let l = listen_bg(&lab, "i-app", Proto::Udp, 5060);
    send(5060, SIP);
    let heard = l.join().unwrap().unwrap();
    assert_eq!(heard.to, SocketAddrV4::new(a("10.0.1.20"), 5060));
    assert_eq!(heard.data, SIP);
    let s = lab.dp.snapshot();
    assert!(s.global.alg_passed[AlgProtocol::Sip.index()] > 0, "{s:#?}");

    // TFTP and H.323 RAS are dropped, each under its own reason; nothing reaches the guest.
    for (port, reason) in [(69, DropReason::AlgTftp), (1719, DropReason::AlgH323)] {
        let l = listen_bg_for(&lab, "i-app", Proto::Udp, port, SHORT);
        send(port, b"x");
        wait_counters(&lab, reason.name(), |s| eip_drops(s, eip, reason) == 1);
        let err = l.join().unwrap().unwrap_err();
        assert!(err.contains("timed out"), "port {port}: {err}");
    }
    // The listener's echo of the SIP datagram left by eth0 (no policy routes here): dropped
    // by the source check, not by an ALG rule.
    let app0 = eni(&lab, "eni-app0");
    let s = wait_counters(&lab, "the echo's source_check", |s| {
        eni_drops(s, app0, DropReason::SourceCheck) == 1
    });
    assert_eq!(
        other_drops(
            &s,
            &[
                DropReason::AlgTftp,
                DropReason::AlgH323,
                DropReason::SourceCheck
            ]
        ),
        [],
        "{s:#?}"
    );
    assert_eq!(eip_drops(&s, eip, DropReason::AlgSip), 0);
}

// ---------------------------------------------------------------------------------------------
// vRouter and hairpin

#[test]
fn vrouter_and_hairpin() {
    let lab = lab("cut-through.toml");
    let api = api(&lab);
    lab.world
        .with_host("i-ct", |h| h.serve_echo_http(8080))
        .unwrap();
    let nat_eip = SocketAddrV4::new(a("198.51.100.10"), 8080);

    // Private: i-peer to i-ct's private address through the vRouter, no translation.
    let got = lab
        .world
        .http_get(
            "i-peer",
            None,
            SocketAddrV4::new(a("10.0.1.10"), 8080),
            "/",
            WAIT,
        )
        .unwrap();
    assert_eq!(got, "10.0.1.11\n");

    // Without an EIP, i-peer has no public path at all.
    let err = lab
        .world
        .http_get("i-peer", None, nat_eip, "/", SHORT)
        .unwrap_err();
    assert!(err.contains("timed out"), "{err}");
    let peer0 = eni(&lab, "eni-peer0");
    wait_counters(&lab, "no_public_ip on eni-peer0", |s| {
        eni_drops(s, peer0, DropReason::NoPublicIp) > 0
    });

    // An EIP through the API, then hairpin to i-ct's NAT EIP: i-ct sees i-peer's EIP.
    let v = call(&api, "AllocateEipAddress", &[("Bandwidth", "100")]);
    let (id, addr) = (
        v["AllocationId"].as_str().unwrap().to_string(),
        v["EipAddress"].as_str().unwrap().to_string(),
    );
    call(
        &api,
        "AssociateEipAddress",
        &[
            ("AllocationId", &id),
            ("InstanceId", "i-peer"),
            ("InstanceType", "EcsInstance"),
        ],
    );
    end_transition(&lab, &api, &id, "InUse");
    let before = lab.dp.snapshot().global.hairpin;
    let seen = lab
        .world
        .http_get("i-peer", None, nat_eip, "/", WAIT)
        .unwrap();
    assert_eq!(seen, format!("{addr}\n"));
    let s = lab.dp.snapshot();
    assert!(s.global.hairpin > before, "{s:#?}");
    assert_eq!(other_drops(&s, &[DropReason::NoPublicIp]), [], "{s:#?}");
}

// ---------------------------------------------------------------------------------------------
// Associate and unassociate while traffic flows

#[test]
fn unassociate_and_associate_while_pinging() {
    let lab = lab("one-eip.toml");
    let api = api(&lab);
    let eip = a("198.51.100.10");
    let web = slot(&lab, "eip-web");

    // A ping every few milliseconds from the internet, each (start, end, answered).
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<std::sync::Mutex<Vec<(Instant, Instant, bool)>>> = Arc::default();
    let pinger = {
        let (world, stop, log) = (lab.world.clone(), stop.clone(), log.clone());
        std::thread::spawn(move || {
            let mut seq = 0u16;
            while !stop.load(Ordering::Acquire) {
                seq = seq.wrapping_add(1);
                let t0 = Instant::now();
                let ok = world
                    .run(
                        "internet",
                        Ping::seq(eip, None, seq),
                        Duration::from_millis(150),
                    )
                    .is_ok();
                log.lock().unwrap().push((t0, Instant::now(), ok));
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let answered_after = |t: Instant| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|&&(s, _, ok)| ok && s > t)
            .count()
    };
    let unanswered_after = |t: Instant| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|&&(s, _, ok)| !ok && s > t)
            .count()
    };
    let t = Instant::now();
    wait_until("pings answered", || answered_after(t) >= 3);

    call(
        &api,
        "UnassociateEipAddress",
        &[("AllocationId", "eip-web")],
    );
    end_transition(&lab, &api, "eip-web", "Available");
    let cut = Instant::now();
    wait_until("pings unanswered", || unanswered_after(cut) >= 3);
    let s = wait_counters(&lab, "eip_unassociated counted", |s| {
        eip_drops(s, web, DropReason::EipUnassociated) >= 3
    });
    assert!(global_drops(&s, DropReason::EipUnassociated) >= 3);

    let again = Instant::now();
    call(
        &api,
        "AssociateEipAddress",
        &[
            ("AllocationId", "eip-web"),
            ("InstanceId", "i-web"),
            ("InstanceType", "EcsInstance"),
        ],
    );
    end_transition(&lab, &api, "eip-web", "InUse");
    let back = Instant::now();
    wait_until("pings answered again", || answered_after(back) >= 3);
    stop.store(true, Ordering::Release);
    pinger.join().unwrap();

    // Nothing was answered between the unassociation's end and the new association.
    let log = log.lock().unwrap();
    let leaked: Vec<_> = log
        .iter()
        .filter(|&&(s, e, ok)| ok && s > cut && e < again)
        .collect();
    assert!(leaked.is_empty(), "answered while unassociated: {leaked:?}");
    let s = lab.dp.snapshot();
    assert_eq!(
        other_drops(&s, &[DropReason::EipUnassociated]),
        [],
        "{s:#?}"
    );
}

#[test]
fn attach_and_detach_through_the_api_binded_and_multi_binded() {
    let lab = lab("nat-and-cut-through.toml");
    let api = api(&lab);
    let spare = slot(&lab, "eip-spare");
    let settle = || lab.settle(WAIT).unwrap();
    let has_eth1 = || {
        lab.world
            .with_host("i-multi", |h| h.addrs())
            .unwrap()
            .iter()
            .any(|(d, _)| d == "eth1")
    };
    let eth1_gone = || wait_until("eth1 gone", || !has_eth1());
    let attach = |eni: &str, yes: bool| {
        let action = if yes {
            "AttachNetworkInterface"
        } else {
            "DetachNetworkInterface"
        };
        call(
            &api,
            action,
            &[("NetworkInterfaceId", eni), ("InstanceId", "i-multi")],
        );
    };
    let ping_in = |ip: &str, t| lab.world.ping("internet", a(ip), t);
    assert!(!has_eth1());

    // BINDED on a detached ENI: attached, the guest holds the EIP and speaks as it.
    attach("eni-spare", true);
    settle();
    assert_eq!(addrs_on(&lab, "i-multi", "eth1"), ["198.51.100.30/32"]);
    let out = exec_ok(
        &lab,
        "i-multi",
        "curl -s -m 5 --interface 198.51.100.30 http://203.0.113.1/",
    );
    assert_eq!(out, "198.51.100.30\n");
    ping_in("198.51.100.30", WAIT).unwrap();

    // Detached: the device goes with the EIP's rule; the EIP no longer reaches anything.
    attach("eni-spare", false);
    eth1_gone();
    let rules = exec_ok(&lab, "i-multi", "ip rule");
    assert!(!rules.contains("198.51.100.30"), "{rules}");
    ping_in("198.51.100.30", SHORT).unwrap_err();
    wait_counters(&lab, "eni_detached on eip-spare", |s| {
        eip_drops(s, spare, DropReason::EniDetached) > 0
    });

    // Another EIP in BINDED mode on the detached ENI, then attached again: the guest holds
    // the new EIP and not the old one, which is unassociated.
    call(
        &api,
        "UnassociateEipAddress",
        &[("AllocationId", "eip-spare")],
    );
    end_transition(&lab, &api, "eip-spare", "Available");
    let v = call(&api, "AllocateEipAddress", &[]);
    let (id, addr) = (
        v["AllocationId"].as_str().unwrap().to_string(),
        v["EipAddress"].as_str().unwrap().to_string(),
    );
    call(
        &api,
        "AssociateEipAddress",
        &[
            ("AllocationId", &id),
            ("InstanceId", "eni-spare"),
            ("InstanceType", "NetworkInterface"),
            ("Mode", "BINDED"),
        ],
    );
    end_transition(&lab, &api, &id, "InUse");
    attach("eni-spare", true);
    settle();
    assert_eq!(addrs_on(&lab, "i-multi", "eth1"), [format!("{addr}/32")]);
    let got = lab
        .world
        .http_get("i-multi", Some(a(&addr)), echo(), "/", WAIT)
        .unwrap();
    assert_eq!(got, format!("{addr}\n"));
    ping_in(&addr, WAIT).unwrap();
    ping_in("198.51.100.30", SHORT).unwrap_err();
    wait_counters(&lab, "eip_unassociated on eip-spare", |s| {
        eip_drops(s, spare, DropReason::EipUnassociated) > 0
    });
    attach("eni-spare", false);
    eth1_gone();

    // MULTI_BINDED on a DHCP instance: the private IP and both EIPs, a rule per EIP; each EIP
    // speaks as itself; all gone with the ENI.
    attach("eni-multi", true);
    settle();
    let mut eth1 = addrs_on(&lab, "i-multi", "eth1");
    eth1.sort();
    assert_eq!(
        eth1,
        ["10.0.2.20/24", "198.51.100.41/32", "198.51.100.42/32"]
    );
    let rules = exec_ok(&lab, "i-multi", "ip rule");
    for eip in ["198.51.100.41", "198.51.100.42"] {
        assert!(rules.contains(&format!("from {eip} lookup")), "{rules}");
        let got = lab
            .world
            .http_get("i-multi", Some(a(eip)), echo(), "/", WAIT)
            .unwrap();
        assert_eq!(got, format!("{eip}\n"));
    }
    attach("eni-multi", false);
    eth1_gone();
    let rules = exec_ok(&lab, "i-multi", "ip rule");
    assert!(!rules.contains("198.51.100.4"), "{rules}");
    let s = lab.dp.snapshot();
    assert_eq!(
        other_drops(&s, &[DropReason::EniDetached, DropReason::EipUnassociated]),
        [],
        "{s:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The lab clock: moved by `advance`, nothing sleeps

#[test]
fn a_released_eip_is_recoverable_for_seven_lab_days() {
    let lab = lab("one-eip.toml");
    let api = api(&lab);
    let eip = a("198.51.100.10");
    let release = || {
        call(
            &api,
            "UnassociateEipAddress",
            &[("AllocationId", "eip-web")],
        );
        end_transition(&lab, &api, "eip-web", "Available");
        call(&api, "ReleaseEipAddress", &[("AllocationId", "eip-web")]);
    };
    let recover = || api.call_local("AllocateEipAddress", &[("IpAddress", "198.51.100.10")]);
    const DAY: u64 = 24 * 3600;

    // Released: the address is nobody's.
    release();
    lab.world.ping("internet", eip, SHORT).unwrap_err();
    wait_counters(&lab, "unknown_destination", |s| {
        global_drops(s, DropReason::UnknownDestination) > 0
    });

    // Six lab days later it comes back, with its AllocationId, and works once associated.
    lab.advance(6 * DAY).unwrap();
    let v = recover().unwrap();
    assert_eq!(v["AllocationId"], "eip-web");
    assert_eq!(v["EipAddress"], "198.51.100.10");
    call(
        &api,
        "AssociateEipAddress",
        &[("AllocationId", "eip-web"), ("InstanceId", "i-web")],
    );
    end_transition(&lab, &api, "eip-web", "InUse");
    lab.world.ping("internet", eip, WAIT).unwrap();

    // Released again, then just past seven lab days: gone for good.
    release();
    lab.advance(7 * DAY - 10).unwrap();
    let before = lab.cp.with_cloud(|c| c.released.len());
    assert_eq!(before, 1, "still recoverable just before the window ends");
    lab.advance(11).unwrap();
    let e = recover().unwrap_err();
    assert_eq!(e.code, "InvalidAllocationId.NotFound", "{}", e.message);
    assert!(lab.cp.with_cloud(|c| c.released.is_empty()));
}

#[test]
fn a_held_fragment_expires_when_the_lab_clock_moves() {
    let lab = lab("one-eip.toml"); // [alg] drops SIP and FTP: a later fragment waits for its first
    let timeout_s = EngineConfig::default()
        .frag_timeout_ns
        .div_ceil(1_000_000_000);
    // A later fragment (offset 8 bytes, last) of a UDP datagram to the NAT EIP.
    let frag = ipv4(a(ECHO), a("198.51.100.10"), UDP, 0x4242, 1, &[7u8; 16]);
    lab.world
        .with_host("internet", |h| h.send_raw("eth0", frag))
        .unwrap()
        .unwrap();
    wait_counters(&lab, "the fragment held", |s| s.global.held == 1);
    std::thread::sleep(Duration::from_millis(100));
    let s = lab.dp.snapshot();
    assert_eq!(
        (s.global.held, global_drops(&s, DropReason::FragmentTimeout)),
        (1, 0),
        "real time alone does not expire it"
    );

    lab.advance(timeout_s + 1).unwrap();
    let s = wait_counters(&lab, "the fragment expired", |s| {
        global_drops(s, DropReason::FragmentTimeout) == 1
    });
    assert_eq!(s.global.held, 0);
    assert_eq!(
        other_drops(&s, &[DropReason::FragmentTimeout]),
        [],
        "{s:#?}"
    );
}

/// The holder of `havip`, as the cloud has it.
fn havip_holder(lab: &SimLab, havip: &str) -> Option<String> {
    lab.cp.with_cloud(|c| {
        c.havips
            .get(havip)
            .and_then(|h| h.associated_instances.first().cloned())
    })
}

/// The internet sends "ping" over TCP to `dst` while `a` and `b` listen on its port: who
/// heard it, and at which address.
fn who_hears(lab: &SimLab, dst: SocketAddrV4, a: &str, b: &str) -> Vec<(String, Heard)> {
    std::thread::scope(|s| {
        let la = s.spawn(|| lab.world.listen(a, Proto::Tcp, dst.port(), SHORT * 2));
        let lb = s.spawn(|| lab.world.listen(b, Proto::Tcp, dst.port(), SHORT * 2));
        std::thread::sleep(Duration::from_millis(30));
        let _ = lab.world.tcp_send("internet", None, dst, b"ping", SHORT);
        let mut v = Vec::new();
        for (name, h) in [(a, la), (b, lb)] {
            if let Ok(Ok(heard)) = h.join() {
                v.push((name.to_string(), heard));
            }
        }
        v
    })
}

#[test]
fn a_havip_follows_the_guest_that_takes_its_address() {
    let lab = lab("havip.toml");
    let (eip, vip) = (a("198.51.100.60"), a("10.0.1.100"));
    let dst = SocketAddrV4::new(eip, 8080);
    assert_eq!(havip_holder(&lab, "havip-a").as_deref(), Some("i-ka1"));

    // The master takes the address (as keepalived does): the EIP reaches it, at the HaVip.
    exec_ok(&lab, "i-ka1", "ip addr add 10.0.1.100/24 dev eth0");
    let heard = who_hears(&lab, dst, "i-ka1", "i-ka2");
    assert_eq!(heard.len(), 1, "{heard:?}");
    assert_eq!(heard[0].0, "i-ka1");
    assert_eq!(*heard[0].1.to.ip(), vip, "NAT to the HaVip's address");

    // The backup takes over: the HaVip moves, and nothing more reaches the old master.
    exec_ok(&lab, "i-ka1", "ip addr del 10.0.1.100/24 dev eth0");
    exec_ok(&lab, "i-ka2", "ip addr add 10.0.1.100/24 dev eth0");
    assert_eq!(havip_holder(&lab, "havip-a").as_deref(), Some("i-ka2"));
    lab.settle(WAIT).unwrap();
    let heard = who_hears(&lab, dst, "i-ka1", "i-ka2");
    assert_eq!(heard.len(), 1, "{heard:?}");
    assert_eq!(heard[0].0, "i-ka2");
    assert_eq!(*heard[0].1.to.ip(), vip);
    let other = other_drops(&lab.dp.snapshot(), &[]);
    assert!(other.is_empty(), "{other:?}");
}

#[test]
fn a_clb_spreads_by_weight_over_the_backends_its_health_checks_find_up() {
    let lab = lab("clb.toml");
    // i-web1 and i-web2 serve port 80 and say who they are; i-web3 serves nothing.
    for name in ["i-web1", "i-web2"] {
        lab.world
            .with_host(name, |h| {
                h.serve_http(80, Box::new(move |_, _| Some(format!("{name}\n"))))
            })
            .unwrap();
    }
    let health = |lab: &SimLab| -> Vec<(String, String)> {
        let s = api(lab).status();
        let mut v = Vec::new();
        for l in s["counters"]["load_balancers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for li in l["listeners"].as_array().into_iter().flatten() {
                if li["port"] != 80 {
                    continue;
                }
                for b in li["backends"].as_array().into_iter().flatten() {
                    v.push((
                        b["instance_id"].as_str().unwrap_or_default().to_string(),
                        b["health"].as_str().unwrap_or_default().to_string(),
                    ));
                }
            }
        }
        v
    };
    let want = |b: &str, h: &str| (b.to_string(), h.to_string());
    let deadline = Instant::now() + Duration::from_secs(10);
    let expected = vec![
        want("i-web1", "up"),
        want("i-web2", "up"),
        want("i-web3", "down"),
    ];
    let mut now = health(&lab);
    while now != expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        now = health(&lab);
    }
    assert_eq!(
        now, expected,
        "the health checks from 100.64.0.2 found them"
    );

    // 3:2 over the two that are up, nothing to the one that is down.
    let mut got = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..10 {
        let body = lab
            .world
            .http_get(
                "internet",
                None,
                SocketAddrV4::new(a("198.51.100.70"), 80),
                "/",
                WAIT,
            )
            .unwrap();
        *got.entry(body.trim().to_string()).or_default() += 1;
    }
    let want: std::collections::BTreeMap<String, u32> =
        [("i-web1".to_string(), 6), ("i-web2".to_string(), 4)].into();
    assert_eq!(got, want);
}

/// The IPv4 (source, destination) of every packet in a pcap file of raw IPv4.
fn pcap_addresses(path: &Path) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut r = pcap_file::pcap::PcapReader::new(f).unwrap();
    assert_eq!(r.header().datalink, pcap_file::DataLink::RAW);
    let mut v = Vec::new();
    while let Some(p) = r.next_packet() {
        let d = p.unwrap().data;
        v.push((
            Ipv4Addr::new(d[12], d[13], d[14], d[15]),
            Ipv4Addr::new(d[16], d[17], d[18], d[19]),
        ));
    }
    v
}

#[test]
fn pcap_shows_each_side_of_the_translation() {
    let dir = std::env::temp_dir().join(format!("eiplab-sim-pcap-{}", std::process::id()));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/one-eip.toml");
    let file = config::load(&path).unwrap();
    let cp = ControlPlane::new(
        cloud::build(&file, 1_700_000_000_000_000_000).unwrap(),
        &Options {
            state_dir: None,
            table: cloud::table_extras(&file),
        },
    )
    .unwrap();
    let opts = eiplab::sim::lab::Options {
        pcap: Some(dir.clone()),
        ..Default::default()
    };
    let lab = SimLab::build_with(&file, cp, &opts).unwrap();
    let body = lab
        .world
        .http_get("i-web", None, echo(), "/", WAIT)
        .unwrap();
    assert_eq!(body, "198.51.100.10\n");
    drop(lab);
    // The guest's side carries the private IP, the internet's the EIP: both directions.
    let guest = pcap_addresses(&dir.join("i-web.eth0.pcap"));
    let internet = pcap_addresses(&dir.join("internet.eth0.pcap"));
    let _ = std::fs::remove_dir_all(&dir);
    let (private, eip) = (a("10.0.1.10"), a("198.51.100.10"));
    assert!(
        guest.contains(&(private, a(ECHO))) && guest.contains(&(a(ECHO), private)),
        "{guest:?}"
    );
    assert!(
        !guest.iter().any(|(s, d)| *s == eip || *d == eip),
        "{guest:?}"
    );
    assert!(
        internet.contains(&(eip, a(ECHO))) && internet.contains(&(a(ECHO), eip)),
        "{internet:?}"
    );
    assert!(
        !internet.iter().any(|(s, d)| *s == private || *d == private),
        "{internet:?}"
    );
}
