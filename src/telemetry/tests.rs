use super::metrics::{registry, render, CounterSource};
use super::*;
use crate::alg::AlgProtocol;
use crate::cloud::{Associate, BindType, Cloud, EipStatus};
use crate::engine::{AssociationMode, Counter, DropReason};
use core::net::Ipv4Addr;
use serde_json::{json, Value};

const NOW: u64 = 1_000 * 1_000_000_000;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// i-web with eni-web0 (10.0.1.10); eni-spare detached; eip-web (NAT on i-web, InUse) and
/// `eip-"q"` (Available, an id with a quote to exercise label escaping).
fn cloud() -> Cloud {
    let mut c = crate::cloud::fixture::web(1_000_000, NOW);
    c.add_eni(crate::cloud::fixture::eni(
        "eni-spare",
        "10.0.1.30",
        false,
        None,
    ));
    c.add_eip(NOW, "eip-\"q\"", ip("198.51.100.11"), 5);
    c.associate(
        NOW,
        &Associate {
            allocation_id: "eip-web".into(),
            instance_id: "i-web".into(),
            bind_type: BindType::EcsInstance,
            mode: AssociationMode::Nat,
            private_ip: None,
        },
    )
    .unwrap();
    c.handle_timeout(NOW + 10_000_000);
    assert_eq!(c.eips["eip-web"].status, EipStatus::InUse);
    c.havips.insert(
        "havip-a".into(),
        crate::cloud::HaVip {
            id: "havip-a".into(),
            region: "cn-shanghai".into(),
            vswitch: "vsw-a".into(),
            ip: ip("10.0.1.100"),
            status: "InUse".into(),
            associated_instances: vec!["i-web".into(), "i-b".into()],
            name: String::new(),
            description: String::new(),
            created: 0,
        },
    );
    c
}

fn snapshot(c: &Cloud) -> Snapshot {
    let mut s = Snapshot::default();
    let web = c.eips["eip-web"].slot;
    let e = s.eips.entry(web).or_default();
    e.to_guest = Counter {
        packets: 7,
        bytes: 700,
    };
    e.from_guest = Counter {
        packets: 5,
        bytes: 500,
    };
    e.drops[DropReason::AlgFtp as usize] = 3;
    let eni = c.enis["eni-web0"].index;
    let n = s.enis.entry(eni).or_default();
    n.to_guest = Counter {
        packets: 7,
        bytes: 700,
    };
    n.drops[DropReason::SourceCheck as usize] = 1;
    s.global.received = Counter {
        packets: 16,
        bytes: 1600,
    };
    s.global.forwarded = Counter {
        packets: 12,
        bytes: 1200,
    };
    s.global.drops[DropReason::AlgFtp as usize] = 3;
    s.global.drops[DropReason::SourceCheck as usize] = 1;
    s.global.alg_passed[AlgProtocol::Sip.index()] = 2;
    s.nat_gateways.insert(
        "ngw-a".into(),
        crate::telemetry::NatGatewayStats {
            sessions: 5,
            mappings: 3,
            max_sessions: 1000,
        },
    );
    use crate::clb::{BackendStats, ClbStats, Health, ListenerProtocol, ListenerStats};
    s.load_balancers.insert(
        "lb-a".into(),
        crate::telemetry::LoadBalancerStats {
            stats: ClbStats {
                connections: 2,
                listeners: vec![ListenerStats {
                    protocol: ListenerProtocol::Tcp,
                    port: 80,
                    backends: vec![
                        BackendStats {
                            addr: ip("10.0.1.10"),
                            weight: 3,
                            health: Health::Up,
                            active: 2,
                            total: 5,
                        },
                        BackendStats {
                            addr: ip("10.0.1.11"),
                            weight: 1,
                            health: Health::Down,
                            active: 0,
                            total: 1,
                        },
                    ],
                }],
            },
            backends: vec!["i-web".into(), "i-b".into()],
        },
    );
    // A slot and an ENI index the cloud does not have.
    s.eips.entry(999).or_default().to_guest.packets = 1;
    s.enis.entry(999).or_default().to_guest.packets = 1;
    s
}

#[test]
fn merge_adds_up() {
    let c = cloud();
    let a = snapshot(&c);
    let mut b = snapshot(&c);
    b.global.held = 2;
    b.global.icmp_errors_sent = 1;
    b.global.hairpin = 4;
    b.global.other_protocol = 5;
    b.global.alg_flagged[AlgProtocol::Ftp.index()] = 6;
    b.global.replied = Counter {
        packets: 1,
        bytes: 84,
    };
    b.eips.entry(42).or_default().drops[DropReason::Ipv6 as usize] = 9;
    let mut m = a.clone();
    m.merge(&b);
    let g = &m.global;
    assert_eq!(
        g.received,
        Counter {
            packets: 32,
            bytes: 3200
        }
    );
    assert_eq!(
        g.forwarded,
        Counter {
            packets: 24,
            bytes: 2400
        }
    );
    assert_eq!(
        g.replied,
        Counter {
            packets: 1,
            bytes: 84
        }
    );
    assert_eq!(
        (g.held, g.icmp_errors_sent, g.hairpin, g.other_protocol),
        (2, 1, 4, 5)
    );
    assert_eq!(g.drops[DropReason::AlgFtp as usize], 6);
    assert_eq!(g.drops[DropReason::SourceCheck as usize], 2);
    assert_eq!(g.alg_passed[AlgProtocol::Sip.index()], 4);
    assert_eq!(g.alg_flagged[AlgProtocol::Ftp.index()], 6);
    let web = &m.eips[&c.eips["eip-web"].slot];
    assert_eq!(
        web.to_guest,
        Counter {
            packets: 14,
            bytes: 1400
        }
    );
    assert_eq!(
        web.from_guest,
        Counter {
            packets: 10,
            bytes: 1000
        }
    );
    assert_eq!(web.drops[DropReason::AlgFtp as usize], 6);
    assert_eq!(m.eips[&42].drops[DropReason::Ipv6 as usize], 9);
    let eni = &m.enis[&c.enis["eni-web0"].index];
    assert_eq!(eni.to_guest.packets, 14);
    assert_eq!(eni.drops[DropReason::SourceCheck as usize], 2);
    // Merging into an empty snapshot copies.
    let mut e = Snapshot::default();
    e.merge(&a);
    assert_eq!(e.global, a.global);
    assert_eq!(e.eips, a.eips);
    assert_eq!(e.enis, a.enis);
}

#[test]
fn counters_json_names_from_the_cloud_and_omits_zero_reasons() {
    let c = cloud();
    let v = counters_json(&c, &snapshot(&c));
    let g = &v["global"];
    assert_eq!(g["received"], 16);
    assert_eq!(g["forwarded"], 12);
    assert_eq!(g["drops"], json!({"source_check": 1, "alg_ftp": 3}));
    assert_eq!(g["alg_passed"], json!({"sip": 2}));
    assert_eq!(g["alg_flagged"], json!({}));
    for k in [
        "replied",
        "held",
        "icmp_errors_sent",
        "hairpin",
        "other_protocol",
    ] {
        assert_eq!(g[k], 0, "{k}");
    }

    let eips = v["eips"].as_array().unwrap();
    assert_eq!(eips.len(), 2, "only the cloud's EIPs: {eips:?}");
    let web = eips
        .iter()
        .find(|e| e["allocation_id"] == "eip-web")
        .unwrap();
    assert_eq!(web["address"], "198.51.100.10");
    assert_eq!(web["to_guest_packets"], 7);
    assert_eq!(web["to_guest_bytes"], 700);
    assert_eq!(web["from_guest_packets"], 5);
    assert_eq!(web["from_guest_bytes"], 500);
    assert_eq!(web["drops"], json!({"alg_ftp": 3}));
    let q = eips
        .iter()
        .find(|e| e["allocation_id"] == "eip-\"q\"")
        .unwrap();
    assert_eq!(q["to_guest_packets"], 0);
    assert_eq!(q["drops"], json!({}));

    let enis = v["enis"].as_array().unwrap();
    assert_eq!(enis.len(), 2, "only the cloud's ENIs: {enis:?}");
    let w = enis.iter().find(|e| e["eni_id"] == "eni-web0").unwrap();
    assert_eq!(w["instance_id"], "i-web");
    assert_eq!(w["to_guest_packets"], 7);
    assert_eq!(w["drops"], json!({"source_check": 1}));
    let s = enis.iter().find(|e| e["eni_id"] == "eni-spare").unwrap();
    assert!(s["instance_id"].is_null());
    assert_eq!(s["drops"], json!({}));
}

/// The exposition `/metrics` serves for this cloud and snapshot: through [`registry`] and
/// [`render`], as the API does.
fn exposition(c: &Cloud, s: &Snapshot) -> String {
    struct Fixed(Cloud, Snapshot);
    impl CounterSource for Fixed {
        fn read_counters(&self, f: &mut dyn FnMut(&Cloud, &Snapshot)) {
            f(&self.0, &self.1)
        }
    }
    render(&registry(Fixed(c.clone(), s.clone()))).expect("the exposition encodes")
}

type Labels = Vec<(String, String)>;

/// Parses `name{k="v",…} value`, undoing label escapes; values are whole numbers.
fn parse_sample(line: &str) -> (String, Labels, u64) {
    let (head, value) = line.rsplit_once(' ').expect("name and value");
    let value: u64 = value.parse().expect("a whole-number value");
    let Some((name, rest)) = head.split_once('{') else {
        assert!(!head.contains(['"', ' ', '}']), "{line}");
        return (head.to_string(), vec![], value);
    };
    let mut labels = Vec::new();
    let mut cs = rest.chars().peekable();
    loop {
        let key: String = cs.by_ref().take_while(|c| *c != '=').collect();
        assert!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        assert_eq!(cs.next(), Some('"'), "{line}");
        let mut val = String::new();
        loop {
            match cs.next().expect("unterminated label value") {
                '\\' => match cs.next() {
                    Some('\\') => val.push('\\'),
                    Some('"') => val.push('"'),
                    Some('n') => val.push('\n'),
                    o => panic!("bad escape {o:?} in {line}"),
                },
                '"' => break,
                '\n' => panic!("raw newline"),
                c => val.push(c),
            }
        }
        labels.push((key, val));
        match cs.next() {
            Some(',') => continue,
            Some('}') => break,
            o => panic!("unexpected {o:?} in {line}"),
        }
    }
    assert_eq!(cs.next(), None, "{line}");
    (name.to_string(), labels, value)
}

/// An OpenMetrics text exposition read back, after checking it line by line: each family's
/// HELP then TYPE once, its samples right after (a counter's named `<family>_total`), no
/// sample twice, `# EOF` last. Returns families (name -> type) and samples ((name, labels in
/// order) -> value).
fn parse_openmetrics(text: &str) -> (BTreeMap<String, String>, BTreeMap<(String, Labels), u64>) {
    let body = text.strip_suffix("# EOF\n").expect("ends with `# EOF`");
    let mut families = BTreeMap::new();
    let mut samples = BTreeMap::new();
    // The family being read: name, and its type once TYPE is read.
    let mut current: Option<(String, Option<String>)> = None;
    for line in body.lines() {
        if let Some(r) = line.strip_prefix("# HELP ") {
            let (name, help) = r.split_once(' ').expect("HELP name text");
            assert!(!help.is_empty(), "{line}");
            if let Some((prev, None)) = &current {
                panic!("{prev} has HELP but no TYPE");
            }
            assert!(!families.contains_key(name), "family {name} twice");
            current = Some((name.to_string(), None));
        } else if let Some(r) = line.strip_prefix("# TYPE ") {
            let (name, kind) = r.split_once(' ').expect("TYPE name type");
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            match &mut current {
                Some((n, t @ None)) if n == name => *t = Some(kind.to_string()),
                _ => panic!("TYPE not right after its HELP: {line}"),
            }
            families.insert(name.to_string(), kind.to_string());
        } else {
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let (name, labels, v) = parse_sample(line);
            let Some((family, Some(kind))) = &current else {
                panic!("sample before any described family: {line}");
            };
            let want = match kind.as_str() {
                "counter" => format!("{family}_total"),
                _ => family.clone(),
            };
            assert_eq!(name, want, "sample outside its family: {line}");
            assert!(
                samples.insert((name, labels), v).is_none(),
                "sample twice: {line}"
            );
        }
    }
    (families, samples)
}

#[test]
fn metrics_every_family_and_sample() {
    let c = cloud();
    let text = exposition(&c, &snapshot(&c));
    let (families, samples) = parse_openmetrics(&text);

    let mut want_families = BTreeMap::new();
    for name in [
        "received_packets",
        "received_bytes",
        "forwarded_packets",
        "forwarded_bytes",
        "replied_packets",
        "icmp_errors_sent",
        "hairpin_packets",
        "other_protocol_packets",
        "drops",
        "gateway_errors",
        "alg_passed",
        "alg_flagged",
        "eip_packets",
        "eip_bytes",
        "eip_drops",
        "eni_packets",
        "eni_bytes",
        "eni_drops",
        "clb_backend_scheduled",
    ] {
        want_families.insert(format!("eiplab_{name}"), "counter".to_string());
    }
    for name in [
        "held_packets",
        "eips",
        "nat_gateway_sessions",
        "nat_gateway_mappings",
        "nat_gateway_max_sessions",
        "clb_connections",
        "clb_backend_health",
        "clb_backend_connections",
        "havip_holder",
    ] {
        want_families.insert(format!("eiplab_{name}"), "gauge".to_string());
    }
    assert_eq!(families, want_families, "{text}");

    // Every sample of the fixture, with its value; nothing else may appear.
    let mut want: BTreeMap<(String, Labels), u64> = BTreeMap::new();
    let mut put = |name: &str, labels: &[(&str, &str)], v: u64| {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(want.insert((name.to_string(), labels), v).is_none());
    };
    put("eiplab_received_packets_total", &[], 16);
    put("eiplab_received_bytes_total", &[], 1600);
    put("eiplab_forwarded_packets_total", &[], 12);
    put("eiplab_forwarded_bytes_total", &[], 1200);
    put("eiplab_replied_packets_total", &[], 0);
    put("eiplab_held_packets", &[], 0);
    put("eiplab_icmp_errors_sent_total", &[], 0);
    put("eiplab_hairpin_packets_total", &[], 0);
    put("eiplab_other_protocol_packets_total", &[], 0);
    for r in DropReason::ALL {
        let n = match r {
            DropReason::AlgFtp => 3,
            DropReason::SourceCheck => 1,
            _ => 0,
        };
        put("eiplab_drops_total", &[("reason", r.name())], n);
    }
    for kind in ["no_device", "tx_error", "short_read"] {
        put("eiplab_gateway_errors_total", &[("kind", kind)], 0);
    }
    for p in AlgProtocol::ALL {
        let passed = if p == AlgProtocol::Sip { 2 } else { 0 };
        put("eiplab_alg_passed_total", &[("protocol", p.name())], passed);
        put("eiplab_alg_flagged_total", &[("protocol", p.name())], 0);
    }
    put(
        "eiplab_nat_gateway_sessions",
        &[("nat_gateway", "ngw-a")],
        5,
    );
    put(
        "eiplab_nat_gateway_mappings",
        &[("nat_gateway", "ngw-a")],
        3,
    );
    put(
        "eiplab_nat_gateway_max_sessions",
        &[("nat_gateway", "ngw-a")],
        1000,
    );
    put("eiplab_clb_connections", &[("load_balancer", "lb-a")], 2);
    for (inst, now, active, total) in [("i-web", "up", 2, 5), ("i-b", "down", 0, 1)] {
        let l = [
            ("load_balancer", "lb-a"),
            ("listener", "tcp:80"),
            ("instance", inst),
        ];
        put("eiplab_clb_backend_connections", &l, active);
        put("eiplab_clb_backend_scheduled_total", &l, total);
        for st in ["up", "down", "unknown"] {
            let l = [
                ("load_balancer", "lb-a"),
                ("listener", "tcp:80"),
                ("instance", inst),
                ("state", st),
            ];
            put("eiplab_clb_backend_health", &l, u64::from(st == now));
        }
    }
    put(
        "eiplab_havip_holder",
        &[("havip", "havip-a"), ("instance", "i-web")],
        1,
    );
    put(
        "eiplab_havip_holder",
        &[("havip", "havip-a"), ("instance", "i-b")],
        0,
    );
    for (status, n) in [
        ("Available", 1),
        ("Associating", 0),
        ("InUse", 1),
        ("Unassociating", 0),
    ] {
        put("eiplab_eips", &[("status", status)], n);
    }
    // The EIP with a quote in its id: listed with zeros, no drops.
    for (id, addr, to_p, to_b, from_p, from_b) in [
        ("eip-web", "198.51.100.10", 7, 700, 5, 500),
        ("eip-\"q\"", "198.51.100.11", 0, 0, 0, 0),
    ] {
        for (dir, p, b) in [("to_guest", to_p, to_b), ("from_guest", from_p, from_b)] {
            let l = [("allocation_id", id), ("address", addr), ("direction", dir)];
            put("eiplab_eip_packets_total", &l, p);
            put("eiplab_eip_bytes_total", &l, b);
        }
    }
    // Only non-zero per-EIP and per-ENI drops.
    put(
        "eiplab_eip_drops_total",
        &[
            ("allocation_id", "eip-web"),
            ("address", "198.51.100.10"),
            ("reason", "alg_ftp"),
        ],
        3,
    );
    // The detached ENI is listed, with an empty instance_id.
    for (id, inst, to_p, to_b) in [("eni-web0", "i-web", 7, 700), ("eni-spare", "", 0, 0)] {
        for (dir, p, b) in [("to_guest", to_p, to_b), ("from_guest", 0, 0)] {
            let l = [("eni_id", id), ("instance_id", inst), ("direction", dir)];
            put("eiplab_eni_packets_total", &l, p);
            put("eiplab_eni_bytes_total", &l, b);
        }
    }
    put(
        "eiplab_eni_drops_total",
        &[
            ("eni_id", "eni-web0"),
            ("instance_id", "i-web"),
            ("reason", "source_check"),
        ],
        1,
    );
    // Counters of the slot and ENI index the cloud does not have are left out, as everything
    // not listed above.
    assert_eq!(samples, want, "{text}");

    // The same, as a scraper's text search sees it.
    assert!(text.contains(
        "\neiplab_eip_drops_total{allocation_id=\"eip-web\",address=\"198.51.100.10\",reason=\"alg_ftp\"} 3\n"
    ), "{text}");
    assert!(text.contains(
        "\neiplab_eni_drops_total{eni_id=\"eni-web0\",instance_id=\"i-web\",reason=\"source_check\"} 1\n"
    ), "{text}");
    assert!(text.contains("allocation_id=\"eip-\\\"q\\\"\""), "{text}");
    assert!(text.contains("\n# TYPE eiplab_drops counter\n"), "{text}");
}

#[test]
fn the_exposition_checker_refuses_what_it_should() {
    let c = cloud();
    let good = exposition(&c, &snapshot(&c));
    parse_openmetrics(&good);
    let bad = [
        // No `# EOF`.
        good.replace("# EOF\n", ""),
        // A counter sample without its `_total`.
        good.replacen(
            "eiplab_received_packets_total 16",
            "eiplab_received_packets 16",
            1,
        ),
        // A sample under another family's descriptor.
        good.replacen(
            "eiplab_held_packets 0",
            "eiplab_received_packets_total 0",
            1,
        ),
        // A family described twice.
        good.replacen(
            "# EOF\n",
            "# HELP eiplab_eips again\n# TYPE eiplab_eips gauge\n# EOF\n",
            1,
        ),
        // A sample twice.
        good.replacen(
            "# EOF\n",
            "eiplab_eni_drops_total{eni_id=\"eni-web0\",instance_id=\"i-web\",reason=\"source_check\"} 1\n# EOF\n",
            1,
        ),
        // A badly escaped label value.
        good.replacen("eip-\\\"q\\\"", "eip-\\q", 1),
        // A value that is not a whole number.
        good.replacen("eiplab_received_packets_total 16", "eiplab_received_packets_total x", 1),
    ];
    for (i, text) in bad.iter().enumerate() {
        assert_ne!(text, &good, "case {i} changed nothing");
        let r = std::panic::catch_unwind(|| parse_openmetrics(text));
        assert!(r.is_err(), "case {i} passed the checker:\n{text}");
    }
}

#[test]
fn status_text_shows_eips_enis_and_drops() {
    let c = cloud();
    let snap = snapshot(&c);
    let mut status = json!({
        "LabTime": "2025-01-01T00:16:40Z",
        "TableGeneration": 3,
        "Eips": [
            {"AllocationId": "eip-web", "IpAddress": "198.51.100.10", "Status": "InUse",
             "Mode": "NAT", "InstanceId": "i-web", "PrivateIpAddress": "", "Bandwidth": "5"},
            {"AllocationId": "eip-\"q\"", "IpAddress": "198.51.100.11", "Status": "Available",
             "Mode": "NAT", "InstanceId": "", "PrivateIpAddress": "", "Bandwidth": "5"},
        ],
        "Released": [],
        "HaVips": [
            {"HaVipId": "havip-a", "IpAddress": "10.0.1.100", "MasterInstanceId": "i-web",
             "AssociatedInstances": ["i-web", "i-b"], "EipAddresses": ["198.51.100.60"]},
            {"HaVipId": "havip-b", "IpAddress": "10.0.1.101", "MasterInstanceId": "",
             "AssociatedInstances": [], "EipAddresses": []},
        ],
    });
    let none = status_text(&status);
    assert!(
        none.contains("havip havip-a 10.0.1.100: held by i-web, standby i-b, EIP 198.51.100.60\n"),
        "{none}"
    );
    assert!(
        none.contains("havip havip-b 10.0.1.101: held by nobody\n"),
        "{none}"
    );
    assert!(
        none.contains("eip-web") && none.contains("198.51.100.10"),
        "{none}"
    );
    assert!(
        none.contains("no dataplane running (backend none)"),
        "{none}"
    );
    status["counters"] = Value::Null;
    assert!(status_text(&status).contains("no dataplane running (backend none)"));

    status["counters"] = counters_json(&c, &snap);
    let t = status_text(&status);
    assert!(!t.contains("no dataplane running"), "{t}");
    let web = t
        .lines()
        .find(|l| l.starts_with("eip-web"))
        .expect("eip-web row");
    assert!(web.contains("alg_ftp=3"), "{t}");
    assert!(web.contains("InUse") && web.contains("i-web"), "{t}");
    let eni = t
        .lines()
        .find(|l| l.starts_with("eni-web0"))
        .expect("eni row");
    assert!(eni.contains("source_check=1"), "{t}");
    assert!(
        t.lines()
            .any(|l| l.starts_with("eni-spare") && l.contains("(detached)")),
        "{t}"
    );
    assert!(t.contains("received 16 pkts"), "{t}");
    assert!(t.contains("global drops: source_check=1 alg_ftp=3"), "{t}");
    assert!(t.contains("alg passed: sip=2"), "{t}");
    assert!(
        t.contains("nat gateway ngw-a: 5 sessions, 3 mappings (at most 1000 sessions)"),
        "{t}"
    );
    assert!(t.contains("load balancer lb-a: 2 connections\n"), "{t}");
    assert!(
        t.contains(
            "  tcp:80 -> i-web 10.0.1.10 w3 up (2 active, 5 total); \
             i-b 10.0.1.11 w1 down (0 active, 1 total)\n"
        ),
        "{t}"
    );
    let lb = &status["counters"]["load_balancers"][0];
    assert_eq!(lb["load_balancer_id"], "lb-a");
    assert_eq!(lb["listeners"][0]["backends"][1]["health"], "down");
    assert_eq!(lb["listeners"][0]["backends"][1]["instance_id"], "i-b");
}

#[test]
fn gateway_errors_are_shown_when_nonzero() {
    let c = cloud();
    let mut snap = snapshot(&c);
    let v = counters_json(&c, &snap);
    assert_eq!(v["global"]["gateway_errors"], json!({}));
    snap.gateway.no_device = 2;
    let mut other = Snapshot::default();
    other.gateway.tx_errors = 1;
    snap.merge(&other);
    let v = counters_json(&c, &snap);
    assert_eq!(
        v["global"]["gateway_errors"],
        json!({"no_device": 2, "tx_error": 1})
    );
    let text = exposition(&c, &snap);
    assert!(
        text.contains("\neiplab_gateway_errors_total{kind=\"no_device\"} 2\n"),
        "{text}"
    );
    let (_, samples) = parse_openmetrics(&text);
    let kind = |k: &str| {
        samples[&(
            "eiplab_gateway_errors_total".to_string(),
            vec![("kind".to_string(), k.to_string())],
        )]
    };
    assert_eq!(
        (kind("no_device"), kind("tx_error"), kind("short_read")),
        (2, 1, 0)
    );
}
