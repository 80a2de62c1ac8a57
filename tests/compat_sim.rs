//! `eiplab compat --backend sim`: DNS and TFTP with in-process peers on the real gateway, no
//! root, every mode and both placements; the verdicts must be the netns backend's (the
//! expectations of tests/compat.rs and the README's matrix).

use eiplab::compat::runner::{self, Backend, Options, SIM_REAL_PEERS};
use eiplab::compat::{select_probes, Mode, Outcome, Placement, Row};
use std::path::PathBuf;
use std::time::Instant;

fn run(protocols: &str) -> Vec<Row> {
    runner::run(&Options {
        lab: (runner::DEFAULT_LAB.to_string(), "the built-in lab".into()),
        prefix: "eiplab-compat-".into(),
        probes: select_probes(protocols).unwrap(),
        scenario: None,
        modes: Mode::ALL.to_vec(),
        placements: Placement::ALL.to_vec(),
        python: PathBuf::from("/nonexistent/python3"),
        workers: 1,
        progress: false,
        backend: Backend::Sim,
    })
    .unwrap()
}

fn show(r: &Row) -> String {
    format!(
        "{} {} {:?} {:?}: {:?} — {}\n  {}",
        r.protocol,
        r.mode,
        r.alg_policy,
        r.placement,
        r.result,
        r.reason,
        r.evidence.join("\n  ")
    )
}

#[test]
fn dns_and_tftp_on_the_sim_backend_give_the_netns_verdicts() {
    let t0 = Instant::now();
    let rows = run("dns,tftp,sip");
    eprintln!("{} rows in {:?}", rows.len(), t0.elapsed());
    // 3 protocols × 6 modes × 2 placements.
    assert_eq!(rows.len(), 36);
    for r in &rows {
        let text = show(r);
        let server_in = r.placement == Placement::ServerInInstance;
        if r.protocol == "sip" {
            assert_eq!(r.result, Outcome::NotTested, "{text}");
            assert_eq!(r.reason, SIM_REAL_PEERS, "{text}");
            continue;
        }
        let proto = r.protocol.as_str();
        if r.result == Outcome::Works && proto == "dns" {
            assert!(
                r.reason
                    .starts_with("A and SRV answered over UDP and TCP; "),
                "{text}"
            );
        }
        if r.result == Outcome::Works && proto == "tftp" {
            assert!(
                r.reason
                    .starts_with("read probe.bin (65536 bytes) and wrote then read back"),
                "{text}"
            );
        }
        match (r.mode.as_str(), r.alg_policy.as_deref()) {
            ("nat", Some("drop")) => {
                assert_eq!(r.result, Outcome::Broken, "{text}");
                let want = format!("dropped by the NAT ALG policy (alg_{proto}, ");
                assert!(r.reason.starts_with(&want), "{text}");
                assert!(
                    r.evidence.iter().any(
                        |e| e.starts_with("gateway: ") && e.contains(&format!("(alg_{proto})"))
                    ),
                    "{text}"
                );
            }
            ("nat", Some(policy)) => {
                // A 1:1 NAT keeps ports: TFTP's new server port comes back; DNS is answered.
                assert_eq!(r.result, Outcome::Works, "{text}");
                assert_eq!(r.eip.as_deref(), Some("198.51.100.10"), "{text}");
                assert!(!r.reason.contains("ALG policy"), "{text}");
                assert!(
                    r.evidence.iter().any(|e| e.contains(&format!(
                        "{proto} payloads let through by the ALG policy `{policy}`"
                    ))),
                    "{text}"
                );
                if proto == "dns" && server_in {
                    // The server announces itself: its private address, which the judge says.
                    assert!(
                        r.reason.contains(
                            "A record of host.lab.test carried the private address 10.0.1.10"
                        ),
                        "{text}"
                    );
                    if policy == "inspect" {
                        assert!(
                            r.evidence
                                .iter()
                                .any(|e| e.starts_with("inspect: the DNS A record")
                                    && e.contains("the far end needed the EIP 198.51.100.10")),
                            "{text}"
                        );
                    }
                }
            }
            ("binded" | "multi_binded", None) => {
                assert_eq!(r.result, Outcome::Works, "{text}");
                let eip = if r.mode == "binded" {
                    "198.51.100.30"
                } else {
                    "198.51.100.41"
                };
                assert_eq!(r.eip.as_deref(), Some(eip), "{text}");
                assert!(!r.reason.contains("ALG policy"), "{text}");
                assert!(!r.reason.contains("private address"), "{text}");
            }
            ("nat_gateway", None) => {
                let (eip, instance) = if server_in {
                    ("198.51.100.50", "i-ngw-dnat")
                } else {
                    ("198.51.100.51", "i-ngw-snat")
                };
                assert_eq!(
                    (r.eip.as_deref(), r.instance.as_deref()),
                    (Some(eip), Some(instance)),
                    "{text}"
                );
                assert!(
                    !text.contains("(alg_") && !text.contains("ALG policy"),
                    "{text}"
                );
                if proto == "tftp" && !server_in {
                    // The server answers from a new port, which address-and-port-dependent
                    // filtering drops.
                    assert_eq!(r.result, Outcome::Broken, "{text}");
                    let (n, rest) = r.reason.split_once(' ').unwrap();
                    assert!(n.parse::<u64>().is_ok_and(|n| n > 0), "{text}");
                    assert!(
                        rest.starts_with(
                            "packets dropped as nat_gateway_filtered: the server answered from a \
                             port the client never sent to (a TFTP server replies from a new \
                             port; the gateway's filtering is address-and-port-dependent); "
                        ) || rest.starts_with("packet dropped as nat_gateway_filtered: "),
                        "{text}"
                    );
                    assert!(
                        r.evidence
                            .iter()
                            .any(|e| e
                                .contains(" dropped on EIP 198.51.100.51 (nat_gateway_filtered)")),
                        "{text}"
                    );
                } else {
                    assert_eq!(r.result, Outcome::Works, "{text}");
                }
            }
            other => panic!("unexpected mode {other:?}: {text}"),
        }
    }
}
