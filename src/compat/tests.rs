//! The pure parts of `eiplab compat`: names, verdicts and their wording, the matrix, --expect,
//! scenario files.

use super::judge::{judge, parse_client, ClientEnd, ClientReport, Facts, Named, Step};
use super::report::{compare, parse_expected, render};
use super::scenario::{Fill, Scenario};
use super::*;
use crate::alg::{AlgAction, AlgProtocol, Field, Finding};
use crate::engine::{AlgReport, DropReason};
use std::net::Ipv4Addr;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn modes_and_protocols_are_read_from_their_flags_with_errors_that_list_the_choices() {
    assert_eq!(Mode::parse_list("nat").unwrap(), Mode::ALL[..3].to_vec());
    assert_eq!(
        Mode::parse_list("binded, multi-binded,nat-pass,binded").unwrap(),
        vec![Mode::Binded, Mode::MultiBinded, Mode::Nat(AlgAction::Pass)]
    );
    let e = Mode::parse_list("nat-allow").unwrap_err();
    assert!(
        e.contains("\"nat-allow\"") && e.contains("nat-inspect"),
        "{e}"
    );
    assert!(Mode::parse_list(" , ").is_err());

    let ftp = select_probes("ftp").unwrap();
    assert_eq!(ftp.len(), 4);
    assert!(ftp.iter().all(|p| p.protocol == "ftp" && p.port == 21));
    let some = select_probes("FTP-EPSV,sip,h.323").unwrap();
    assert_eq!(
        some.iter()
            .map(|p| (p.protocol, p.variant))
            .collect::<Vec<_>>(),
        vec![("ftp", Some("epsv")), ("sip", None), ("h323", None)]
    );
    let e = select_probes("smtp").unwrap_err();
    assert!(e.contains("\"smtp\"") && e.contains("rtsp"), "{e}");
    // Every probe's port is one the gateway classifies as its protocol.
    for p in PROBES {
        let t = if matches!(p.alg, AlgProtocol::Tftp | AlgProtocol::Dns) || p.protocol == "sip" {
            crate::alg::Transport::Udp
        } else {
            crate::alg::Transport::Tcp
        };
        assert_eq!(
            crate::alg::classify_ports(t, 40000, p.port),
            Some(p.alg),
            "{p:?}"
        );
    }
}

fn report(ok: bool, detail: &str) -> ClientReport {
    ClientReport {
        ok,
        detail: detail.into(),
        steps: vec![Step {
            name: "transfer".into(),
            ok,
            detail: "x".into(),
        }],
        ..Default::default()
    }
}

fn facts(client: ClientEnd) -> Facts {
    Facts {
        alg: Some(AlgProtocol::Ftp),
        mode: Mode::Nat(AlgAction::Pass),
        eip: ip("198.51.100.10"),
        private_ip: Some(ip("10.0.1.10")),
        filtering: None,
        eip_drops: Vec::new(),
        global_drops: Vec::new(),
        findings: Vec::new(),
        alg_passed: 0,
        server: None,
        server_failed: None,
        client,
        signalling_only: false,
    }
}

#[test]
fn an_alg_drop_is_the_reason_with_its_counter_and_count() {
    let mut f = facts(ClientEnd::Report(report(
        false,
        "the control connection timed out",
    )));
    f.mode = Mode::Nat(AlgAction::Drop);
    f.eip_drops = vec![(DropReason::AlgFtp, 3)];
    f.global_drops = vec![(DropReason::AlgFtp, 3), (DropReason::UnknownDestination, 2)];
    let (o, reason, ev) = judge(&f);
    assert_eq!(o, Outcome::Broken);
    assert_eq!(
        reason,
        "dropped by the NAT ALG policy (alg_ftp, 3 packets): the control connection timed out"
    );
    assert!(
        ev.contains(&"gateway: 3 packets dropped on EIP 198.51.100.10 (alg_ftp)".to_string()),
        "{ev:?}"
    );
    assert!(
        ev.contains(
            &"gateway: 2 more packets dropped, not on this EIP (unknown_destination: addressed to no EIP of the lab)".to_string()
        ),
        "{ev:?}"
    );
    // A failure without an ALG drop is not blamed on the ALG.
    let f = facts(ClientEnd::Report(report(false, "timed out")));
    let (o, reason, _) = judge(&f);
    assert_eq!((o, reason.as_str()), (Outcome::Broken, "timed out"));
}

#[test]
fn a_private_address_the_peer_was_told_leads_the_reason() {
    let mut r = report(false, "the data connection to it timed out after 4 s");
    r.named = vec![Named {
        place: "227 reply".into(),
        address: "10.0.1.10".into(),
        port: Some(40123),
    }];
    let (o, reason, _) = judge(&facts(ClientEnd::Report(r.clone())));
    assert_eq!(o, Outcome::Broken);
    assert_eq!(
        reason,
        "227 reply carried the private address 10.0.1.10:40123; the data connection to it timed out after 4 s"
    );
    // A probe that already said "carried ADDR" gets the address named, not repeated.
    let mut said = r.clone();
    said.detail = "227 reply carried 10.0.1.10:40123; the data connection to it timed out".into();
    assert_eq!(
        judge(&facts(ClientEnd::Report(said))).1,
        "227 reply carried the private address 10.0.1.10:40123; the data connection to it timed out"
    );
    // The same address outside NAT mode is no leak.
    let mut f = facts(ClientEnd::Report(r));
    f.mode = Mode::Binded;
    f.private_ip = None;
    assert_eq!(judge(&f).1, "the data connection to it timed out after 4 s");
}

#[test]
fn works_keeps_the_notes_a_user_needs_a_leak_an_ignored_address_and_inspect() {
    let mut r = report(true, "upload and download matched");
    r.sent = vec![Named {
        place: "A record".into(),
        address: "10.0.1.10".into(),
        port: None,
    }];
    r.peer_ignored_address = true;
    let mut f = facts(ClientEnd::Report(r));
    f.mode = Mode::Nat(AlgAction::Inspect);
    let finding = AlgReport {
        now: 1,
        eip_slot: 0,
        eip: ip("198.51.100.10"),
        private_ip: ip("10.0.1.10"),
        to_guest: false,
        src: (ip("10.0.1.10"), 21),
        dst: (ip("203.0.113.1"), 40000),
        finding: Finding {
            protocol: AlgProtocol::Ftp,
            field: Field::FtpPasvReply,
            address: [10, 0, 1, 10],
        },
    };
    f.findings = vec![finding, finding];
    f.alg_passed = 7;
    let (o, reason, ev) = judge(&f);
    assert_eq!(o, Outcome::Works);
    assert!(
        reason.starts_with(
            "upload and download matched; note: A record carried the private address 10.0.1.10"
        ),
        "{reason}"
    );
    assert!(
        reason.contains("the client ignored the address it was given"),
        "{reason}"
    );
    let inspect = "the FTP 227 reply in a packet guest → internet (10.0.1.10:21 → 203.0.113.1:40000) carried 10.0.1.10; the far end needed the EIP 198.51.100.10 (2 packets)";
    assert!(
        reason.ends_with(&format!("inspect flagged {inspect}")),
        "{reason}"
    );
    assert!(ev.contains(&format!("inspect: {inspect}")), "{ev:?}");
    assert!(
        ev.contains(&"gateway: 7 ftp payloads let through by the ALG policy `inspect`".to_string()),
        "{ev:?}"
    );
    // A broken row under inspect says what inspect saw too.
    f.client = ClientEnd::Report(report(false, "timed out"));
    let (o, reason, _) = judge(&f);
    assert_eq!(o, Outcome::Broken);
    assert_eq!(reason, format!("timed out; inspect flagged {inspect}"));
}

#[test]
fn what_could_not_run_is_not_tested_never_works() {
    let r = ClientReport {
        ok: true,
        not_tested: Some("sipp not found: apt-get install sip-tester".into()),
        ..Default::default()
    };
    let (o, reason, _) = judge(&facts(ClientEnd::Report(r)));
    assert_eq!(
        (o, reason.as_str()),
        (
            Outcome::NotTested,
            "sipp not found: apt-get install sip-tester"
        )
    );
    let mut f = facts(ClientEnd::Report(report(true, "fine")));
    f.server_failed = Some("it ended with status 1".into());
    assert_eq!(judge(&f).0, Outcome::NotTested);
    // No report at all: not tested, unless the gateway dropped it (then the drop explains).
    let f = facts(ClientEnd::Failed("the client printed no report".into()));
    assert_eq!(judge(&f).0, Outcome::NotTested);
    let mut f = facts(ClientEnd::Failed("the client printed no report".into()));
    f.eip_drops = vec![(DropReason::AlgFtp, 1)];
    let (o, reason, _) = judge(&f);
    assert_eq!(o, Outcome::Broken);
    assert!(
        reason.starts_with("dropped by the NAT ALG policy (alg_ftp, 1 packet): "),
        "{reason}"
    );
    // Past its limit: broken, and said so.
    let (o, reason, _) = judge(&facts(ClientEnd::TimedOut { seconds: 30 }));
    assert_eq!(o, Outcome::Broken);
    assert_eq!(
        reason,
        "the client did not finish within 30 s and was ended"
    );
}

#[test]
fn signalling_only_is_said_in_the_reason() {
    let mut f = facts(ClientEnd::Report(report(
        true,
        "SETUP answered with CONNECT",
    )));
    f.signalling_only = true;
    assert_eq!(judge(&f).1, "signalling only: SETUP answered with CONNECT");
}

#[test]
fn the_client_report_is_its_last_json_line() {
    let out = "noise\n{\"not\": \"this\"}\n{\"ok\": true, \"detail\": \"d\", \"named\": [{\"where\": \"227 reply\", \"address\": \"10.0.1.10\", \"port\": 40000}], \"extra\": 1}\n";
    let r = parse_client(out).unwrap();
    assert!(r.ok);
    assert_eq!(r.named[0].place, "227 reply");
    assert_eq!(r.named[0].port, Some(40000));
    assert!(parse_client("no json here").is_err());
    assert!(parse_client("{broken")
        .unwrap_err()
        .contains("not readable"));
}

fn row(
    protocol: &str,
    variant: Option<&str>,
    mode: Mode,
    placement: Placement,
    result: Outcome,
    reason: &str,
) -> Row {
    Row {
        protocol: protocol.into(),
        variant: variant.map(str::to_string),
        mode: mode.kind().into(),
        alg_policy: mode.alg_policy().map(|a| a.name().to_string()),
        placement,
        result,
        reason: reason.into(),
        evidence: vec!["client: transfer FAILED".into()],
        eip: None,
        instance: None,
    }
}

#[test]
fn the_matrix_has_a_column_per_mode_run_a_line_per_protocol_and_placement_and_says_why() {
    let rows = vec![
        row(
            "ftp",
            Some("pasv"),
            Mode::Nat(AlgAction::Drop),
            Placement::ServerInInstance,
            Outcome::Broken,
            "dropped by the NAT ALG policy (alg_ftp, 3 packets): x",
        ),
        row(
            "ftp",
            Some("pasv"),
            Mode::Binded,
            Placement::ServerInInstance,
            Outcome::Works,
            "matched",
        ),
        row(
            "ftp",
            Some("pasv"),
            Mode::Nat(AlgAction::Drop),
            Placement::ClientInInstance,
            Outcome::NotTested,
            "the server did not start: y",
        ),
    ];
    let text = render(&rows);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("protocol (placement)"), "{text}");
    let cols: Vec<&str> = lines[0]
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        cols,
        ["protocol (placement)", "NAT/drop", "BINDED"],
        "{text}"
    );
    assert!(
        lines[1].starts_with("FTP passive (PASV) (server in instance)"),
        "{text}"
    );
    assert_eq!(
        lines[1]
            .split_whitespace()
            .rev()
            .take(2)
            .collect::<Vec<_>>(),
        ["works", "BROKEN"],
        "{text}"
    );
    assert!(
        lines[2].starts_with("FTP passive (PASV) (client in instance)")
            && lines[2].contains("not tested")
            && lines[2].trim_end().ends_with('-'),
        "{text}"
    );
    assert!(text.contains("\nWhy:\n- FTP passive (PASV) (server in instance), NAT/drop: broken — dropped by the NAT ALG policy (alg_ftp, 3 packets): x\n    client: transfer FAILED\n"), "{text}");
    assert!(
        text.contains("NAT/drop: not tested — the server did not start: y"),
        "{text}"
    );
    assert!(
        !text.contains("BINDED: works"),
        "a plain works needs no note: {text}"
    );
}

#[test]
fn expect_compares_results_by_protocol_mode_policy_and_placement() {
    let rows = vec![
        row(
            "ftp",
            Some("pasv"),
            Mode::Nat(AlgAction::Pass),
            Placement::ServerInInstance,
            Outcome::Broken,
            "227 reply carried ...",
        ),
        row(
            "sip",
            None,
            Mode::Binded,
            Placement::ClientInInstance,
            Outcome::Works,
            "ok",
        ),
    ];
    // The JSON the command prints is a valid expectation of itself.
    let json = serde_json::to_string(&rows).unwrap();
    let same = parse_expected(&json).unwrap();
    assert_eq!(compare(&same, &rows), Default::default());
    let e = parse_expected(
        r#"[{"protocol": "ftp", "variant": "pasv", "mode": "nat", "alg_policy": "pass", "placement": "server_in_instance", "result": "works"},
            {"protocol": "sip", "mode": "binded", "alg_policy": null, "placement": "client_in_instance", "result": "works"},
            {"protocol": "dns", "mode": "binded", "placement": "client_in_instance", "result": "works"}]"#,
    )
    .unwrap();
    let c = compare(&e, &rows);
    assert_eq!(c.differ, vec!["ftp (pasv), server_in_instance, nat/pass: expected works, got broken (227 reply carried ...)".to_string()]);
    assert_eq!(
        c.not_run,
        vec!["dns, client_in_instance, binded".to_string()]
    );
    let bad = parse_expected(r#"[{"protocol": "ftp"}]"#).unwrap_err();
    assert!(bad.contains("mode") && bad.contains("--json"), "{bad}");
}

#[test]
fn a_scenario_file_is_checked_field_by_field_and_filled_in() {
    let good = r#"
name = "my-app"
port = 8080
[server]
command = ["srv", "--listen", "{listen}:{port}"]
[client]
command = ["cli", "{server}", "--from", "{bind}", "--dir", "{dir}"]
"#;
    let s = Scenario::parse(good).unwrap();
    assert_eq!(s.timeout, 20);
    assert_eq!(s.placements, Placement::ALL.to_vec());
    let f = Fill {
        listen: "10.0.1.10",
        server: "198.51.100.10",
        bind: "203.0.113.1",
        port: 8080,
        dir: "/tmp/x",
    };
    assert_eq!(
        Scenario::fill(&s.server.command, &f),
        ["srv", "--listen", "10.0.1.10:8080"]
    );
    assert_eq!(
        Scenario::fill(&s.client.command, &f),
        [
            "cli",
            "198.51.100.10",
            "--from",
            "203.0.113.1",
            "--dir",
            "/tmp/x"
        ]
    );
    let cases = [
        (good.replace("port = 8080", "port = 0"), "port = 0"),
        (
            good.replace("name = \"my-app\"", "name = \"my app\""),
            "name = \"my app\"",
        ),
        (
            good.replace("[\"srv\", \"--listen\", \"{listen}:{port}\"]", "[]"),
            "[server] command is empty",
        ),
        (format!("{good}\nalg = \"smtp\""), "unknown field"),
        (
            good.replace("port = 8080", "port = 8080\nalg = \"smtp\""),
            "alg = \"smtp\"",
        ),
        (
            good.replace("port = 8080", "port = 8080\ntimeout = 0"),
            "timeout = 0",
        ),
        (
            good.replace("port = 8080", "port = 8080\ncolour = 1"),
            "unknown field `colour`",
        ),
        (
            good.replace("port = 8080", "port = 8080\nplacements = [\"everywhere\"]"),
            "everywhere",
        ),
    ];
    for (text, want) in cases {
        let e = Scenario::parse(&text).unwrap_err();
        assert!(e.contains(want), "{want:?} not in {e:?}");
    }
    // The shipped example is valid.
    let example = include_str!("../../examples/scenarios/http-get.toml");
    assert_eq!(Scenario::parse(example).unwrap().name, "http-get");
}

#[test]
fn the_built_in_lab_has_an_eip_in_every_mode() {
    let file = crate::lab::config::parse(super::runner::DEFAULT_LAB).unwrap();
    let cloud = crate::lab::cloud::build(&file, 0).unwrap();
    let t = |m| super::runner::target(&cloud, m, Placement::ServerInInstance, "p-").unwrap();
    let nat = t(Mode::Nat(AlgAction::Pass));
    assert_eq!(
        (nat.ns.as_str(), nat.eip, nat.private_ip, nat.local),
        (
            "p-i-nat",
            ip("198.51.100.10"),
            Some(ip("10.0.1.10")),
            ip("10.0.1.10")
        )
    );
    let b = t(Mode::Binded);
    assert_eq!(
        (b.ns.as_str(), b.eip, b.private_ip, b.local),
        ("p-i-binded", ip("198.51.100.30"), None, ip("198.51.100.30"))
    );
    let m = t(Mode::MultiBinded);
    assert_eq!(
        (m.ns.as_str(), m.eip, m.local),
        ("p-i-multi", ip("198.51.100.41"), ip("198.51.100.41"))
    );
    // A lab without an EIP in a mode has no target for it (its rows are "not tested").
    let one = crate::lab::config::parse(include_str!("../../examples/one-eip.toml")).unwrap();
    let cloud = crate::lab::cloud::build(&one, 0).unwrap();
    assert!(
        super::runner::target(&cloud, Mode::Binded, Placement::ServerInInstance, "p-").is_none()
    );
    assert!(super::runner::target(
        &cloud,
        Mode::Nat(AlgAction::Drop),
        Placement::ServerInInstance,
        "p-"
    )
    .is_some());
}

#[test]
fn the_nat_gateway_is_its_own_column_named_natgw() {
    for word in ["natgw", "NAT-gateway", "nat_gateway", "natgateway"] {
        assert_eq!(
            Mode::parse_list(word).unwrap(),
            vec![Mode::NatGateway],
            "{word}"
        );
    }
    // `nat` is NAT mode's three policies, not the NAT gateway.
    assert!(!Mode::parse_list("nat").unwrap().contains(&Mode::NatGateway));
    assert_eq!(
        Mode::parse_list("binded,natgw").unwrap(),
        vec![Mode::Binded, Mode::NatGateway]
    );
    assert!(Mode::parse_list("nat-gw-x").unwrap_err().contains("natgw"));
    let m = Mode::NatGateway;
    assert_eq!(
        (m.kind(), m.name(), m.alg_policy(), m.to_string().as_str()),
        ("nat_gateway", "natgw", None, "NAT gateway")
    );
    assert!(Mode::ALL.contains(&m));
    // Its rows get their own column, headed "NAT gateway".
    let rows = vec![
        row(
            "tftp",
            None,
            Mode::Nat(AlgAction::Pass),
            Placement::ClientInInstance,
            Outcome::Works,
            "read",
        ),
        row(
            "tftp",
            None,
            Mode::NatGateway,
            Placement::ClientInInstance,
            Outcome::Broken,
            "4 packets dropped as nat_gateway_filtered: x",
        ),
    ];
    let text = render(&rows);
    let head: Vec<&str> = text
        .lines()
        .next()
        .unwrap()
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        head,
        ["protocol (placement)", "NAT/pass", "NAT gateway"],
        "{text}"
    );
    let line = text.lines().nth(1).unwrap();
    assert_eq!(
        line.split_whitespace().rev().take(2).collect::<Vec<_>>(),
        ["BROKEN", "works"],
        "{text}"
    );
    assert!(
        text.contains(
            "- TFTP read + write (client in instance), NAT gateway: broken — 4 packets dropped as nat_gateway_filtered: x"
        ),
        "{text}"
    );
}

/// Facts of a row behind the built-in lab's NAT gateway: the SNAT EIP and the instance behind
/// it, the cloud's filtering.
fn gateway_facts(alg: AlgProtocol, client: ClientEnd) -> Facts {
    let mut f = facts(client);
    f.alg = Some(alg);
    f.mode = Mode::NatGateway;
    f.eip = ip("198.51.100.51");
    f.private_ip = Some(ip("10.0.1.50"));
    f.filtering = Some(crate::napt::Behaviour::AddressAndPortDependent);
    f
}

#[test]
fn behind_a_nat_gateway_a_private_address_in_a_payload_is_blamed_on_the_missing_alg() {
    // Passive FTP with the server behind the gateway: the 227 names the instance's address.
    let mut r = report(
        false,
        "227 reply carried 10.0.1.40:40186; the data connection to it timed out after 4 s",
    );
    r.named = vec![Named {
        place: "227 reply".into(),
        address: "10.0.1.40".into(),
        port: Some(40186),
    }];
    let mut f = gateway_facts(AlgProtocol::Ftp, ClientEnd::Report(r));
    f.eip = ip("198.51.100.50");
    f.private_ip = Some(ip("10.0.1.40"));
    f.global_drops = vec![(DropReason::UnknownDestination, 4)];
    let (o, reason, ev) = judge(&f);
    assert_eq!(o, Outcome::Broken);
    assert_eq!(
        reason,
        "227 reply carried the private address 10.0.1.40:40186 (the NAT gateway has no ALG to \
         rewrite it); the data connection to it timed out after 4 s"
    );
    assert!(
        ev.contains(&"gateway: 4 more packets dropped, not on this EIP (unknown_destination: addressed to no EIP of the lab)".to_string()),
        "{ev:?}"
    );
    // Active FTP with the client behind it: the probe's sentence does not say "carried".
    let mut r = report(
        false,
        "the server refused the data connection: 501 Rejected",
    );
    r.sent = vec![Named {
        place: "PORT command".into(),
        address: "10.0.1.50".into(),
        port: Some(48735),
    }];
    let (o, reason, _) = judge(&gateway_facts(AlgProtocol::Ftp, ClientEnd::Report(r)));
    assert_eq!(o, Outcome::Broken);
    assert_eq!(
        reason,
        "PORT command carried the private address 10.0.1.50:48735 (the NAT gateway has no ALG \
         to rewrite it); the server refused the data connection: 501 Rejected"
    );
    // A cell that works keeps the note, with the same why.
    let mut r = report(true, "SETUP answered with CONNECT");
    r.sent = vec![Named {
        place: "H.225 sourceCallSignalAddress in the SETUP".into(),
        address: "10.0.1.50".into(),
        port: Some(1720),
    }];
    let (o, reason, _) = judge(&gateway_facts(AlgProtocol::H323, ClientEnd::Report(r)));
    assert_eq!(o, Outcome::Works);
    assert_eq!(
        reason,
        "SETUP answered with CONNECT; note: H.225 sourceCallSignalAddress in the SETUP carried \
         the private address 10.0.1.50:1720 (the NAT gateway has no ALG to rewrite it)"
    );
}

#[test]
fn behind_a_nat_gateway_its_own_drops_lead_the_reason_with_what_they_mean() {
    // TFTP with the client behind the gateway: the server's replies come from a new port.
    let r = report(
        false,
        "reading probe.bin from 203.0.113.1:69 failed: no answer within 5 s",
    );
    let mut f = gateway_facts(AlgProtocol::Tftp, ClientEnd::Report(r));
    f.eip_drops = vec![(DropReason::NatGatewayFiltered, 4)];
    f.global_drops = vec![(DropReason::NatGatewayFiltered, 4)];
    let (o, reason, ev) = judge(&f);
    assert_eq!(o, Outcome::Broken);
    assert_eq!(
        reason,
        "4 packets dropped as nat_gateway_filtered: the server answered from a port the client \
         never sent to (a TFTP server replies from a new port; the gateway's filtering is \
         address-and-port-dependent); reading probe.bin from 203.0.113.1:69 failed: no answer \
         within 5 s"
    );
    assert_eq!(
        ev[1],
        "gateway: 4 packets dropped on EIP 198.51.100.51 (nat_gateway_filtered)"
    );
    // Not "address-and-port-dependent" when the lab's gateway filters otherwise.
    f.filtering = Some(crate::napt::Behaviour::AddressDependent);
    assert!(
        judge(&f).1.contains("filtering is address-dependent)"),
        "{}",
        judge(&f).1
    );

    // RTSP with the client behind it: RTP to the client_port the SETUP named finds no mapping.
    let mut r = report(
        false,
        "DESCRIBE, SETUP, PLAY answered; 0 RTP packets arrived in 4 s",
    );
    r.sent = vec![Named {
        place: "Transport client_port in the SETUP (no address: the server uses the control connection's source)".into(),
        address: String::new(),
        port: Some(50000),
    }];
    let mut f = gateway_facts(AlgProtocol::Rtsp, ClientEnd::Report(r));
    f.eip_drops = vec![(DropReason::NatGatewayNoSession, 201)];
    let (o, reason, _) = judge(&f);
    assert_eq!(o, Outcome::Broken);
    assert_eq!(
        reason,
        "201 packets dropped as nat_gateway_no_session: they came to the EIP 198.51.100.51 at a \
         port no flow of the host had opened and no DNAT entry forwards: the client had named \
         its own port 50000 (Transport client_port in the SETUP), which the gateway had not \
         mapped on its EIP (SNAT picks the external ports, and with no ALG nothing rewrote the \
         payload); DESCRIBE, SETUP, PLAY answered; 0 RTP packets arrived in 4 s"
    );

    // Drops elsewhere in the gateway count too, each reason once, singular when one.
    let r = report(false, "timed out");
    let mut f = gateway_facts(AlgProtocol::Dns, ClientEnd::Report(r));
    f.global_drops = vec![
        (DropReason::UnknownDestination, 2),
        (DropReason::NatGatewayNoSnatEntry, 1),
        (DropReason::NatGatewayPortsExhausted, 3),
    ];
    let (_, reason, ev) = judge(&f);
    assert_eq!(
        reason,
        "1 packet dropped as nat_gateway_no_snat_entry: the host's address is covered by no SNAT \
         entry (nor mapped whole by a DNAT entry); 3 packets dropped as \
         nat_gateway_ports_exhausted: the SNAT EIP had no free external port left for a new \
         flow; timed out"
    );
    assert!(
        ev.contains(&"gateway: 1 more packet dropped, not on this EIP (nat_gateway_no_snat_entry: from a private address no SNAT entry covers)".to_string()),
        "{ev:?}"
    );
}

#[test]
fn behind_a_nat_gateway_there_is_no_alg_policy_to_blame() {
    // An ALG drop under the NAT-gateway column is not "the NAT ALG policy" of NAT mode: the
    // gateway has none, so it is named as what it is.
    let mut f = gateway_facts(
        AlgProtocol::Sip,
        ClientEnd::Report(report(false, "INVITE got no answer")),
    );
    f.eip_drops = vec![(DropReason::AlgSip, 2)];
    let (o, reason, _) = judge(&f);
    assert_eq!(o, Outcome::Broken);
    assert_eq!(
        reason,
        "2 packets dropped as alg_sip: an ALG policy dropped them, though a NAT gateway has no \
         ALG; INVITE got no answer"
    );
    // No report and no drop: not tested; with the gateway's drop: broken, and why.
    let f = gateway_facts(AlgProtocol::Tftp, ClientEnd::Failed("no report".into()));
    assert_eq!(judge(&f).0, Outcome::NotTested);
    let mut f = gateway_facts(AlgProtocol::Tftp, ClientEnd::Failed("no report".into()));
    f.eip_drops = vec![(DropReason::NatGatewayFiltered, 1)];
    let (o, reason, _) = judge(&f);
    assert_eq!(o, Outcome::Broken);
    assert!(
        reason.starts_with("1 packet dropped as nat_gateway_filtered: the server answered from"),
        "{reason}"
    );
    // A plain failure with nothing dropped is only the probe's sentence.
    let f = gateway_facts(
        AlgProtocol::Dns,
        ClientEnd::Report(report(false, "timed out")),
    );
    assert_eq!(
        judge(&f),
        (
            Outcome::Broken,
            "timed out".into(),
            vec!["client: transfer FAILED (x)".into()]
        )
    );
}

#[test]
fn the_nat_gateway_rows_run_through_whole_ip_dnat_and_through_snat() {
    let file = crate::lab::config::parse(super::runner::DEFAULT_LAB).unwrap();
    let cloud = crate::lab::cloud::build(&file, 0).unwrap();
    let t = |pl| super::runner::target(&cloud, Mode::NatGateway, pl, "p-").unwrap();
    let s = t(Placement::ServerInInstance);
    assert_eq!(
        (
            s.ns.as_str(),
            s.eip,
            s.private_ip,
            s.local,
            s.gateway.as_deref()
        ),
        (
            "p-i-ngw-dnat",
            ip("198.51.100.50"),
            Some(ip("10.0.1.40")),
            ip("10.0.1.40"),
            Some("ngw-compat")
        )
    );
    let slot = |a: &str| {
        cloud
            .eips
            .values()
            .find(|e| e.address == ip(a))
            .unwrap()
            .slot
    };
    assert_eq!(s.slot, slot("198.51.100.50"));
    let c = t(Placement::ClientInInstance);
    assert_eq!(
        (c.ns.as_str(), c.eip, c.private_ip, c.local, c.slot),
        (
            "p-i-ngw-snat",
            ip("198.51.100.51"),
            Some(ip("10.0.1.50")),
            ip("10.0.1.50"),
            slot("198.51.100.51")
        )
    );
    // The other modes' targets do not depend on the placement.
    for m in [Mode::Nat(AlgAction::Pass), Mode::Binded, Mode::MultiBinded] {
        let a = super::runner::target(&cloud, m, Placement::ServerInInstance, "p-").unwrap();
        let b = super::runner::target(&cloud, m, Placement::ClientInInstance, "p-").unwrap();
        assert_eq!((a.ns, a.eip, a.gateway), (b.ns, b.eip, None));
    }

    // examples/nat-gateway.toml: SNAT for vsw-a and for 10.0.2.0/24 (i-ha1, 10.0.2.11, is
    // the first instance by id that one covers, without an EIP of its own; its HaVip's EIP maps
    // the HaVip's address, not its own), DNAT only port by port: no whole-IP row.
    let file = crate::lab::config::parse(include_str!("../../examples/nat-gateway.toml")).unwrap();
    let cloud = crate::lab::cloud::build(&file, 0).unwrap();
    let c =
        super::runner::target(&cloud, Mode::NatGateway, Placement::ClientInInstance, "p-").unwrap();
    assert_eq!(
        (c.instance.as_str(), c.eip, c.private_ip),
        ("i-ha1", ip("198.51.100.50"), Some(ip("10.0.2.11")))
    );
    assert!(
        super::runner::target(&cloud, Mode::NatGateway, Placement::ServerInInstance, "p-")
            .is_none()
    );
    // A lab without a NAT gateway has neither.
    let one = crate::lab::config::parse(include_str!("../../examples/one-eip.toml")).unwrap();
    let cloud = crate::lab::cloud::build(&one, 0).unwrap();
    for pl in Placement::ALL {
        assert!(super::runner::target(&cloud, Mode::NatGateway, pl, "p-").is_none());
    }
}
