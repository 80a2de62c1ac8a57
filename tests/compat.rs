//! `eiplab compat` for real (issue 12): real FTP, SIP, TFTP, DNS, RTSP and H.323 peers across
//! the built-in lab's EIPs, and the matrix's verdicts checked together with their reasons.
//!
//! Needs root, /dev/net/tun and the peers `scripts/setup.sh` installs (sip-tester,
//! python3-pyftpdlib, tftpd-hpa, tftp-hpa, dnsmasq-base, bind9-dnsutils, GStreamer's RTSP
//! server); without root each test prints a loud SKIP, except under `EIPLAB_NO_SKIP=1` (CI),
//! where it fails. A missing peer makes its rows "not tested", which these tests refuse.
//!
//! Each test runs its own `eiplab compat` with its own namespace prefix; the command removes
//! its lab itself, and every test checks that no namespace with its prefix is left.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_eiplab");

fn privileged(test: &str) -> bool {
    common::privileged(test, true)
}

fn prefix(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "cpt{tag}{}n{}-",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn namespaces_with(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `eiplab compat ARGS --prefix P` to its end (bounded by `limit`, killed by its pid
/// after), then checks it left no namespace.
fn compat(tag: &str, args: &[&str], limit: Duration) -> Ran {
    let p = prefix(tag);
    let mut child = Command::new(BIN)
        .arg("compat")
        .args(args)
        .args(["--prefix", &p])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || std::io::read_to_string(out).unwrap_or_default());
    let e = std::thread::spawn(move || std::io::read_to_string(err).unwrap_or_default());
    let until = Instant::now() + limit;
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("eiplab compat {args:?} ran past {limit:?} and was killed");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let ran = Ran {
        code,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    };
    let left = namespaces_with(&p);
    assert!(
        left.is_empty(),
        "eiplab compat left namespaces {left:?}; stderr:\n{}",
        ran.stderr
    );
    ran
}

fn rows(r: &Ran) -> Vec<Value> {
    assert_eq!(
        r.code,
        Some(0),
        "eiplab compat failed; stderr:\n{}\nstdout:\n{}",
        r.stderr,
        r.stdout
    );
    let v: Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("--json printed no JSON ({e}):\n{}", r.stdout));
    v.as_array().expect("a list of rows").clone()
}

fn s<'a>(row: &'a Value, field: &str) -> &'a str {
    row[field].as_str().unwrap_or("")
}

fn find<'a>(
    rows: &'a [Value],
    protocol: &str,
    variant: Option<&str>,
    placement: &str,
) -> &'a Value {
    rows.iter()
        .find(|r| {
            s(r, "protocol") == protocol
                && r["variant"].as_str() == variant
                && s(r, "placement") == placement
        })
        .unwrap_or_else(|| panic!("no row {protocol} {variant:?} {placement} in {rows:#?}"))
}

fn show(r: &Value) -> String {
    serde_json::to_string_pretty(r).unwrap()
}

const LONG: Duration = Duration::from_secs(600);

#[test]
fn nat_with_drop_breaks_every_protocol_and_names_the_alg_drop() {
    if !privileged("nat_with_drop_breaks_every_protocol_and_names_the_alg_drop") {
        return;
    }
    let r = compat("drop", &["--json", "--modes", "nat-drop"], LONG);
    let rows = rows(&r);
    // 4 FTP ways, SIP, TFTP, DNS, RTSP, H.323; both placements.
    assert_eq!(rows.len(), 18, "{rows:#?}");
    for row in &rows {
        let proto = s(row, "protocol");
        assert_eq!(s(row, "mode"), "nat", "{}", show(row));
        assert_eq!(s(row, "alg_policy"), "drop", "{}", show(row));
        assert_eq!(s(row, "result"), "broken", "{}", show(row));
        let want = format!("dropped by the NAT ALG policy (alg_{proto}, ");
        assert!(
            s(row, "reason").starts_with(&want),
            "reason should start {want:?}: {}",
            show(row)
        );
        let ev = row["evidence"].as_array().unwrap();
        assert!(
            ev.iter().any(|e| {
                let e = e.as_str().unwrap();
                e.starts_with("gateway: ") && e.contains(&format!("(alg_{proto})"))
            }),
            "evidence should count the alg_{proto} drops: {}",
            show(row)
        );
    }
}

#[test]
fn nat_with_pass_ftp_and_sip_fail_on_the_private_address_they_carry() {
    if !privileged("nat_with_pass_ftp_and_sip_fail_on_the_private_address_they_carry") {
        return;
    }
    let r = compat(
        "pass",
        &[
            "--json",
            "--modes",
            "nat-pass",
            "--protocols",
            "ftp-pasv,ftp-port,sip",
        ],
        LONG,
    );
    let rows = rows(&r);
    assert_eq!(rows.len(), 6, "{rows:#?}");

    // Passive FTP with the server in the instance: the 227 names the private address.
    let row = find(&rows, "ftp", Some("pasv"), "server_in_instance");
    assert_eq!(s(row, "result"), "broken", "{}", show(row));
    assert!(
        s(row, "reason").starts_with("227 reply carried the private address 10.0.1.10:"),
        "{}",
        show(row)
    );
    // ... and the other way round it works: the internet server's 227 names a public address.
    let row = find(&rows, "ftp", Some("pasv"), "client_in_instance");
    assert_eq!(s(row, "result"), "works", "{}", show(row));

    // Active FTP with the client in the instance: PORT names the private address.
    let row = find(&rows, "ftp", Some("port"), "client_in_instance");
    assert_eq!(s(row, "result"), "broken", "{}", show(row));
    assert!(
        s(row, "reason").starts_with("PORT command carried the private address 10.0.1.10:"),
        "{}",
        show(row)
    );
    let row = find(&rows, "ftp", Some("port"), "server_in_instance");
    assert_eq!(s(row, "result"), "works", "{}", show(row));

    // SIP: the call is set up, the media sent to the private address in the SDP never arrives.
    for placement in ["server_in_instance", "client_in_instance"] {
        let row = find(&rows, "sip", None, placement);
        assert_eq!(s(row, "result"), "broken", "{}", show(row));
        let reason = s(row, "reason");
        assert!(reason.contains("SDP c="), "{}", show(row));
        assert!(
            reason.contains("private address 10.0.1.10"),
            "{}",
            show(row)
        );
        assert!(reason.contains("call set up"), "{}", show(row));
        assert!(
            !reason.contains("ALG policy"),
            "pass drops nothing: {}",
            show(row)
        );
    }
}

#[test]
fn nat_with_inspect_names_the_packet_the_field_and_the_address_needed() {
    if !privileged("nat_with_inspect_names_the_packet_the_field_and_the_address_needed") {
        return;
    }
    let r = compat(
        "insp",
        &[
            "--json",
            "--modes",
            "nat-inspect",
            "--protocols",
            "ftp-pasv,sip",
            "--placements",
            "server_in_instance",
        ],
        LONG,
    );
    let rows = rows(&r);
    let evidence = |row: &Value| -> Vec<String> {
        row["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_string())
            .collect()
    };
    let row = find(&rows, "ftp", Some("pasv"), "server_in_instance");
    assert_eq!(s(row, "result"), "broken", "{}", show(row));
    assert!(
        evidence(row).iter().any(|e| e.starts_with(
            "inspect: the FTP 227 reply in a packet guest → internet (10.0.1.10:21 → 203.0.113.1:"
        ) && e
            .contains("carried 10.0.1.10; the far end needed the EIP 198.51.100.10")),
        "{}",
        show(row)
    );
    let row = find(&rows, "sip", None, "server_in_instance");
    assert!(
        evidence(row).iter().any(|e| e
            .starts_with("inspect: the SDP c= line in a packet guest → internet (10.0.1.10:5060")
            && e.contains("carried 10.0.1.10; the far end needed the EIP 198.51.100.10")),
        "{}",
        show(row)
    );
}

#[test]
fn binded_and_multi_binded_carry_every_protocol_end_to_end() {
    if !privileged("binded_and_multi_binded_carry_every_protocol_end_to_end") {
        return;
    }
    let r = compat("ct", &["--json", "--modes", "binded,multi_binded"], LONG);
    let rows = rows(&r);
    assert_eq!(rows.len(), 36, "{rows:#?}");
    for row in &rows {
        assert_eq!(s(row, "result"), "works", "{}", show(row));
        assert!(row["alg_policy"].is_null(), "{}", show(row));
        let eip = s(row, "eip");
        match s(row, "mode") {
            "binded" => assert_eq!(eip, "198.51.100.30", "{}", show(row)),
            "multi_binded" => assert_eq!(eip, "198.51.100.41", "{}", show(row)),
            other => panic!("unexpected mode {other}"),
        }
        // Nothing was dropped for the protocol: cut-through has no ALG.
        assert!(!s(row, "reason").contains("ALG policy"), "{}", show(row));
    }
}

#[test]
fn a_nat_gateway_carries_what_names_no_address_and_filters_what_it_never_sent_to() {
    if !privileged("a_nat_gateway_carries_what_names_no_address_and_filters_what_it_never_sent_to")
    {
        return;
    }
    let r = compat("ngw", &["--json", "--modes", "natgw"], LONG);
    let rows = rows(&r);
    assert_eq!(rows.len(), 18, "{rows:#?}");
    for row in &rows {
        assert_eq!(s(row, "mode"), "nat_gateway", "{}", show(row));
        assert!(row["alg_policy"].is_null(), "{}", show(row));
        // Server in instance: through the whole-IP DNAT EIP; client: through the SNAT EIP.
        let (eip, instance) = match s(row, "placement") {
            "server_in_instance" => ("198.51.100.50", "i-ngw-dnat"),
            _ => ("198.51.100.51", "i-ngw-snat"),
        };
        assert_eq!(
            (s(row, "eip"), s(row, "instance")),
            (eip, instance),
            "{}",
            show(row)
        );
        // The NAT-mode ALG policy is `drop` meanwhile: a gateway that looked at payloads
        // would show alg_* drops. It has no ALG.
        let text = show(row);
        assert!(
            !text.contains("(alg_") && !text.contains("ALG policy"),
            "{text}"
        );
    }
    let works = |protocol: &str, variant: Option<&str>, placement: &str| {
        let row = find(&rows, protocol, variant, placement);
        assert_eq!(s(row, "result"), "works", "{}", show(row));
    };
    let no_alg = "(the NAT gateway has no ALG to rewrite it)";

    // Server in instance, reached through the whole-IP DNAT entry: like a 1:1 NAT with no
    // ALG. The 227 names the instance's address; EPSV names none and works.
    let row = find(&rows, "ftp", Some("pasv"), "server_in_instance");
    assert_eq!(s(row, "result"), "broken", "{}", show(row));
    let reason = s(row, "reason");
    assert!(
        reason.starts_with("227 reply carried the private address 10.0.1.40:")
            && reason.contains(no_alg),
        "{}",
        show(row)
    );
    for v in ["epsv", "port", "eprt"] {
        works("ftp", Some(v), "server_in_instance");
    }
    for p in ["tftp", "dns", "rtsp", "h323"] {
        works(p, None, "server_in_instance");
    }

    // Client in instance, through SNAT: passive FTP works (the internet server names its own
    // address), active FTP names the instance's address.
    works("ftp", Some("pasv"), "client_in_instance");
    works("ftp", Some("epsv"), "client_in_instance");
    for (v, cmd) in [("port", "PORT"), ("eprt", "EPRT")] {
        let row = find(&rows, "ftp", Some(v), "client_in_instance");
        assert_eq!(s(row, "result"), "broken", "{}", show(row));
        let reason = s(row, "reason");
        assert!(
            reason.starts_with(&format!(
                "{cmd} command carried the private address 10.0.1.50:"
            )) && reason.contains(no_alg),
            "{}",
            show(row)
        );
    }
    works("dns", None, "client_in_instance");
    works("h323", None, "client_in_instance");

    // SIP both ways: the call is set up, the SDP names the instance's address.
    for (placement, private) in [
        ("server_in_instance", "10.0.1.40"),
        ("client_in_instance", "10.0.1.50"),
    ] {
        let row = find(&rows, "sip", None, placement);
        assert_eq!(s(row, "result"), "broken", "{}", show(row));
        let reason = s(row, "reason");
        assert!(
            reason.starts_with("SDP c=")
                && reason.contains(&format!("carried the private address {private}:"))
                && reason.contains(no_alg)
                && reason.contains("call set up"),
            "{}",
            show(row)
        );
    }

    // TFTP with the client behind SNAT: the server answers from a new port, which
    // address-and-port-dependent filtering drops.
    let row = find(&rows, "tftp", None, "client_in_instance");
    assert_eq!(s(row, "result"), "broken", "{}", show(row));
    let reason = s(row, "reason");
    let (n, rest) = reason.split_once(' ').unwrap();
    assert!(n.parse::<u64>().is_ok_and(|n| n > 0), "{}", show(row));
    assert!(
        rest.starts_with(
            "packets dropped as nat_gateway_filtered: the server answered from a port the client \
             never sent to (a TFTP server replies from a new port; the gateway's filtering is \
             address-and-port-dependent); "
        ) || rest.starts_with("packet dropped as nat_gateway_filtered: "),
        "{}",
        show(row)
    );
    let evidence = show(&row["evidence"]);
    assert!(
        evidence.contains(" dropped on EIP 198.51.100.51 (nat_gateway_filtered)"),
        "{}",
        show(row)
    );

    // RTSP with the client behind SNAT: the server streams to the client_port of the SETUP,
    // which the gateway never mapped.
    let row = find(&rows, "rtsp", None, "client_in_instance");
    assert_eq!(s(row, "result"), "broken", "{}", show(row));
    let reason = s(row, "reason");
    assert!(
        reason.contains(" dropped as nat_gateway_no_session: they came to the EIP 198.51.100.51")
            && reason.contains("(Transport client_port in the SETUP)"),
        "{}",
        show(row)
    );
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

#[test]
fn a_scenario_gets_a_row_and_expect_decides_the_exit_status() {
    if !privileged("a_scenario_gets_a_row_and_expect_decides_the_exit_status") {
        return;
    }
    let scenario = example("scenarios/http-get.toml");
    let dir = std::env::temp_dir().join(format!("eiplab-compat-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let expect = |rows: &str| {
        let p = dir.join(format!("expect-{}.json", rand_tag()));
        std::fs::write(&p, rows).unwrap();
        p
    };
    // The scenario (an HTTP server and curl) works in NAT mode and in cut-through.
    let right = expect(
        r#"[{"protocol": "http-get", "mode": "nat", "alg_policy": "pass", "placement": "server_in_instance", "result": "works"},
            {"protocol": "http-get", "mode": "binded", "alg_policy": null, "placement": "client_in_instance", "result": "works"}]"#,
    );
    let args = |e: &Path| {
        vec![
            "--scenario".to_string(),
            scenario.display().to_string(),
            "--modes".into(),
            "nat-pass,binded".into(),
            "--expect".into(),
            e.display().to_string(),
        ]
    };
    let a = args(&right);
    let r = compat(
        "scn",
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        LONG,
    );
    assert_eq!(
        r.code,
        Some(0),
        "stderr:\n{}\nstdout:\n{}",
        r.stderr,
        r.stdout
    );
    assert!(
        r.stderr
            .contains("every result matches --expect (2 compared)"),
        "{}",
        r.stderr
    );
    // The text matrix: a header naming the columns that ran, one line per placement.
    let head = r.stdout.lines().next().unwrap_or("");
    assert!(
        head.starts_with("protocol (placement)")
            && head.contains("NAT/pass")
            && head.contains("BINDED"),
        "{}",
        r.stdout
    );
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("http-get (scenario) (server in instance)"))
        .unwrap_or_else(|| panic!("no scenario line in:\n{}", r.stdout));
    assert_eq!(
        line.split_whitespace().filter(|w| *w == "works").count(),
        2,
        "{line}"
    );
    // Not a terminal: no progress line.
    assert!(
        !r.stderr.contains('\r'),
        "progress written to a pipe: {:?}",
        r.stderr
    );

    // An expectation the run contradicts: exit status 1 and the cell named.
    let wrong = expect(
        r#"[{"protocol": "http-get", "mode": "nat", "alg_policy": "pass", "placement": "server_in_instance", "result": "broken"}]"#,
    );
    let a = args(&wrong);
    let r = compat(
        "scn",
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        LONG,
    );
    assert_eq!(r.code, Some(1), "stderr:\n{}", r.stderr);
    assert!(
        r.stderr.contains("differs from --expect: http-get, server_in_instance, nat/pass: expected broken, got works"),
        "{}",
        r.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn rand_tag() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn a_peer_that_cannot_run_is_not_tested_never_works() {
    if !privileged("a_peer_that_cannot_run_is_not_tested_never_works") {
        return;
    }
    // A Python that cannot run the probes (here: none at all).
    let r = compat(
        "nopy",
        &[
            "--json",
            "--protocols",
            "h323,dns",
            "--modes",
            "nat-pass",
            "--placements",
            "server_in_instance",
            "--python",
            "/nonexistent/python3",
        ],
        LONG,
    );
    let rows = rows(&r);
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!(s(row, "result"), "not_tested", "{}", show(row));
        assert!(
            s(row, "reason").starts_with("the server did not start: "),
            "{}",
            show(row)
        );
    }
}

#[test]
fn ctrl_c_ends_every_peer_and_removes_the_lab() {
    if !privileged("ctrl_c_ends_every_peer_and_removes_the_lab") {
        return;
    }
    let p = prefix("int");
    let mut child = Command::new(BIN)
        .args([
            "compat",
            "--json",
            "--protocols",
            "sip",
            "--modes",
            "nat-pass",
            "--prefix",
            &p,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the lab is up and a peer runs in it.
    let until = Instant::now() + Duration::from_secs(60);
    let ns = format!("{p}i-nat");
    let pids_in = |ns: &str| -> Vec<String> {
        let o = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let mut peers = Vec::new();
    while Instant::now() < until && peers.is_empty() {
        if namespaces_with(&p).contains(&ns) {
            peers = pids_in(&ns);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!peers.is_empty(), "no peer ran in {ns} within 60 s");
    // SIGINT, as Ctrl-C sends it.
    let r = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(r.success());
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("eiplab compat did not end within 30 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::io::read_to_string(child.stderr.take().unwrap()).unwrap_or_default();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(
        namespaces_with(&p).is_empty(),
        "the lab was left: {:?}",
        namespaces_with(&p)
    );
    for pid in peers {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "peer {pid} still runs after the interrupt"
        );
    }
}
