//! The dataplane's counters as the lab shows them: summed over workers ([`Snapshot`]), named
//! after the cloud (`counters` of `/_eiplab/status`, `/metrics`) and printed by `eiplab status`.
//!
//! The engine counts by dataplane number (EIP slot, ENI index); the names come from the cloud
//! at the moment of reading, so an EIP or ENI the cloud no longer has is left out.

use crate::alg::AlgProtocol;
use crate::cloud::{Cloud, EipStatus};
use crate::engine::{
    Counter, DropCounts, DropReason, EipCounters, EipSlot, EniCounters, EniId, GlobalCounters,
};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Counters of all engines (workers) of a running lab, summed.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub global: GlobalCounters,
    /// By `Eip.slot`.
    pub eips: BTreeMap<EipSlot, EipCounters>,
    /// By `Eni.index`.
    pub enis: BTreeMap<EniId, EniCounters>,
    /// Losses of the shell around the engines (see [`GatewayErrors`]).
    pub gateway: GatewayErrors,
}

/// Packets the shell lost after (or before) the engine decided: not drop reasons of SPEC §2,
/// but counted so that every lost packet shows somewhere.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayErrors {
    /// The verdict named an ENI whose device is not (yet, or any more) there.
    pub no_device: u64,
    /// A device refused a write (interface down, queue full).
    pub tx_errors: u64,
    /// A read shorter than the virtio header.
    pub short_reads: u64,
}

impl GatewayErrors {
    fn each(&self) -> [(&'static str, u64); 3] {
        [
            ("no_device", self.no_device),
            ("tx_error", self.tx_errors),
            ("short_read", self.short_reads),
        ]
    }
}

fn add_all(a: &mut [u64], b: &[u64]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

impl Snapshot {
    /// Adds another worker's counters.
    pub fn merge(&mut self, other: &Snapshot) {
        let (g, o) = (&mut self.global, &other.global);
        g.received.merge(&o.received);
        g.forwarded.merge(&o.forwarded);
        g.replied.merge(&o.replied);
        g.held += o.held;
        g.icmp_errors_sent += o.icmp_errors_sent;
        add_all(&mut g.drops, &o.drops);
        add_all(&mut g.alg_passed, &o.alg_passed);
        add_all(&mut g.alg_flagged, &o.alg_flagged);
        g.other_protocol += o.other_protocol;
        g.hairpin += o.hairpin;
        self.gateway.no_device += other.gateway.no_device;
        self.gateway.tx_errors += other.gateway.tx_errors;
        self.gateway.short_reads += other.gateway.short_reads;
        for (slot, c) in &other.eips {
            self.eips.entry(*slot).or_default().merge(c);
        }
        for (eni, c) in &other.enis {
            self.enis.entry(*eni).or_default().merge(c);
        }
    }
}

/// Non-zero drops as `{"reason": n}`, in `DropReason::ALL` order.
fn drops_json(d: &DropCounts) -> Value {
    let mut m = Map::new();
    for r in DropReason::ALL {
        let n = d[*r as usize];
        if n != 0 {
            m.insert(r.name().to_string(), n.into());
        }
    }
    Value::Object(m)
}

/// Non-zero per-protocol counts as `{"ftp": n}`.
fn alg_json(a: &[u64; AlgProtocol::COUNT]) -> Value {
    let mut m = Map::new();
    for p in AlgProtocol::ALL {
        let n = a[p.index()];
        if n != 0 {
            m.insert(p.name().to_string(), n.into());
        }
    }
    Value::Object(m)
}

fn traffic_json(
    m: &mut Map<String, Value>,
    to_guest: &Counter,
    from_guest: &Counter,
    d: &DropCounts,
) {
    m.insert("to_guest_packets".into(), to_guest.packets.into());
    m.insert("to_guest_bytes".into(), to_guest.bytes.into());
    m.insert("from_guest_packets".into(), from_guest.packets.into());
    m.insert("from_guest_bytes".into(), from_guest.bytes.into());
    m.insert("drops".into(), drops_json(d));
}

/// The `counters` object of `/_eiplab/status`. Every EIP and ENI of the cloud is listed (zeros
/// when its engine has not counted anything yet), in the cloud's order (by id); counters of
/// slots or indexes the cloud no longer has are left out. Only non-zero drop reasons and ALG
/// protocols are listed.
pub fn counters_json(cloud: &Cloud, snap: &Snapshot) -> Value {
    let g = &snap.global;
    let global = json!({
        "received": g.received.packets,
        "received_bytes": g.received.bytes,
        "forwarded": g.forwarded.packets,
        "forwarded_bytes": g.forwarded.bytes,
        "replied": g.replied.packets,
        "replied_bytes": g.replied.bytes,
        "held": g.held,
        "icmp_errors_sent": g.icmp_errors_sent,
        "hairpin": g.hairpin,
        "other_protocol": g.other_protocol,
        "drops": drops_json(&g.drops),
        "alg_passed": alg_json(&g.alg_passed),
        "alg_flagged": alg_json(&g.alg_flagged),
        "gateway_errors": snap.gateway.each().iter().filter(|(_, v)| *v != 0).map(|(k, v)| (k.to_string(), json!(v))).collect::<Map<String, Value>>(),
    });
    let zero_eip = EipCounters::default();
    let eips: Vec<Value> = cloud
        .eips
        .values()
        .map(|e| {
            let c = snap.eips.get(&e.slot).unwrap_or(&zero_eip);
            let mut m = Map::new();
            m.insert("allocation_id".into(), e.allocation_id.clone().into());
            m.insert("address".into(), e.address.to_string().into());
            traffic_json(&mut m, &c.to_guest, &c.from_guest, &c.drops);
            Value::Object(m)
        })
        .collect();
    let zero_eni = EniCounters::default();
    let enis: Vec<Value> = cloud
        .enis
        .values()
        .map(|e| {
            let c = snap.enis.get(&e.index).unwrap_or(&zero_eni);
            let mut m = Map::new();
            m.insert("eni_id".into(), e.id.clone().into());
            m.insert(
                "instance_id".into(),
                e.instance.clone().map_or(Value::Null, Value::from),
            );
            traffic_json(&mut m, &c.to_guest, &c.from_guest, &c.drops);
            Value::Object(m)
        })
        .collect();
    json!({ "global": global, "eips": eips, "enis": enis })
}

/// A label value escaped for the text exposition format: `\` `"` and newline.
fn escape_label(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

/// One metric family: its HELP and TYPE once, then its samples.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        // HELP text escapes backslash and newline; ours are static and hold neither.
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// One unlabelled sample with its HELP and TYPE.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    Family::new(out, name, kind, help).sample(name, &[], value);
}

/// Prometheus text exposition format 0.0.4 of the lab's counters. Engine-wide totals, drops by
/// reason (every reason), ALG passed/flagged by protocol (every protocol), EIPs by status; per
/// EIP and per ENI of the cloud packets and bytes in both directions (zeros included, so a
/// scraper sees every EIP from the start) and non-zero drops by reason.
pub fn prometheus(cloud: &Cloud, snap: &Snapshot) -> String {
    let mut out = String::new();
    let g = &snap.global;
    let o = &mut out;

    single(
        o,
        "eiplab_received_packets_total",
        "counter",
        "Packets received by the engines.",
        g.received.packets,
    );
    single(
        o,
        "eiplab_received_bytes_total",
        "counter",
        "Bytes received by the engines.",
        g.received.bytes,
    );
    single(
        o,
        "eiplab_forwarded_packets_total",
        "counter",
        "Packets forwarded.",
        g.forwarded.packets,
    );
    single(
        o,
        "eiplab_forwarded_bytes_total",
        "counter",
        "Bytes forwarded.",
        g.forwarded.bytes,
    );
    single(
        o,
        "eiplab_replied_packets_total",
        "counter",
        "Echo requests to a gateway address, answered.",
        g.replied.packets,
    );
    single(
        o,
        "eiplab_held_packets",
        "gauge",
        "Fragments waiting for their first fragment.",
        g.held,
    );
    single(
        o,
        "eiplab_icmp_errors_sent_total",
        "counter",
        "ICMP time exceeded messages sent.",
        g.icmp_errors_sent,
    );
    single(
        o,
        "eiplab_hairpin_packets_total",
        "counter",
        "Packets hairpinned from a guest to an EIP of the lab.",
        g.hairpin,
    );
    single(
        o,
        "eiplab_other_protocol_packets_total",
        "counter",
        "Packets of IP protocols other than TCP, UDP and ICMP forwarded.",
        g.other_protocol,
    );

    let name = "eiplab_drops_total";
    let mut f = Family::new(o, name, "counter", "Packets dropped, by reason.");
    for r in DropReason::ALL {
        f.sample(name, &[("reason", r.name())], g.drops[*r as usize]);
    }
    let name = "eiplab_gateway_errors_total";
    let mut f = Family::new(
        o,
        name,
        "counter",
        "Packets the gateway's shell lost around the engine, by kind.",
    );
    for (kind, n) in snap.gateway.each() {
        f.sample(name, &[("kind", kind)], n);
    }
    for (name, help, counts) in [
        (
            "eiplab_alg_passed_total",
            "NAT-mode packets of ALG-dependent protocols passed, by protocol.",
            &g.alg_passed,
        ),
        (
            "eiplab_alg_flagged_total",
            "Payloads flagged by ALG inspection, by protocol.",
            &g.alg_flagged,
        ),
    ] {
        let mut f = Family::new(o, name, "counter", help);
        for p in AlgProtocol::ALL {
            f.sample(name, &[("protocol", p.name())], counts[p.index()]);
        }
    }

    let name = "eiplab_eips";
    let mut f = Family::new(o, name, "gauge", "EIPs of the cloud, by status.");
    for s in [
        EipStatus::Available,
        EipStatus::Associating,
        EipStatus::InUse,
        EipStatus::Unassociating,
    ] {
        let n = cloud.eips.values().filter(|e| e.status == s).count() as u64;
        f.sample(name, &[("status", s.api_name())], n);
    }

    // Per EIP.
    let zero_eip = EipCounters::default();
    let eips: Vec<(&str, String, &EipCounters)> = cloud
        .eips
        .values()
        .map(|e| {
            let c = snap.eips.get(&e.slot).unwrap_or(&zero_eip);
            (e.allocation_id.as_str(), e.address.to_string(), c)
        })
        .collect();
    for (name, help, bytes) in [
        (
            "eiplab_eip_packets_total",
            "Packets through an EIP (after its policer), by direction.",
            false,
        ),
        (
            "eiplab_eip_bytes_total",
            "Bytes through an EIP (after its policer), by direction.",
            true,
        ),
    ] {
        let mut f = Family::new(o, name, "counter", help);
        for (id, addr, c) in &eips {
            for (dir, k) in [("to_guest", &c.to_guest), ("from_guest", &c.from_guest)] {
                let v = if bytes { k.bytes } else { k.packets };
                f.sample(
                    name,
                    &[("allocation_id", id), ("address", addr), ("direction", dir)],
                    v,
                );
            }
        }
    }
    let name = "eiplab_eip_drops_total";
    let mut f = Family::new(o, name, "counter", "Packets of an EIP dropped, by reason.");
    for (id, addr, c) in &eips {
        for r in DropReason::ALL {
            let n = c.drops[*r as usize];
            if n != 0 {
                f.sample(
                    name,
                    &[
                        ("allocation_id", id),
                        ("address", addr),
                        ("reason", r.name()),
                    ],
                    n,
                );
            }
        }
    }

    // Per ENI.
    let zero_eni = EniCounters::default();
    let enis: Vec<(&str, &str, &EniCounters)> = cloud
        .enis
        .values()
        .map(|e| {
            let c = snap.enis.get(&e.index).unwrap_or(&zero_eni);
            (e.id.as_str(), e.instance.as_deref().unwrap_or(""), c)
        })
        .collect();
    for (name, help, bytes) in [
        (
            "eiplab_eni_packets_total",
            "Packets delivered to / forwarded from a guest on an ENI, by direction.",
            false,
        ),
        (
            "eiplab_eni_bytes_total",
            "Bytes delivered to / forwarded from a guest on an ENI, by direction.",
            true,
        ),
    ] {
        let mut f = Family::new(o, name, "counter", help);
        for (id, inst, c) in &enis {
            for (dir, k) in [("to_guest", &c.to_guest), ("from_guest", &c.from_guest)] {
                let v = if bytes { k.bytes } else { k.packets };
                f.sample(
                    name,
                    &[("eni_id", id), ("instance_id", inst), ("direction", dir)],
                    v,
                );
            }
        }
    }
    let name = "eiplab_eni_drops_total";
    let mut f = Family::new(o, name, "counter", "Packets of an ENI dropped, by reason.");
    for (id, inst, c) in &enis {
        for r in DropReason::ALL {
            let n = c.drops[*r as usize];
            if n != 0 {
                f.sample(
                    name,
                    &[("eni_id", id), ("instance_id", inst), ("reason", r.name())],
                    n,
                );
            }
        }
    }
    out
}

/// A JSON value as table text: strings bare, null empty, anything else as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// `{"alg_ftp": 3, "source_check": 1}` as `source_check=1 alg_ftp=3`: drop reasons in
/// `DropReason::ALL` order, ALG protocols in `AlgProtocol::ALL` order (whatever order the JSON
/// map keeps), anything else after them by name.
fn pairs(v: &Value) -> String {
    let rank = |k: &str| {
        DropReason::from_name(k)
            .map(|r| r as usize)
            .or_else(|| AlgProtocol::ALL.iter().position(|p| p.name() == k))
            .unwrap_or(usize::MAX)
    };
    let mut kv: Vec<(&String, &Value)> = v
        .as_object()
        .map(|m| m.iter().collect())
        .unwrap_or_default();
    kv.sort_by(|a, b| (rank(a.0), a.0).cmp(&(rank(b.0), b.0)));
    kv.iter()
        .map(|(k, n)| format!("{k}={}", text(n)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Rows under headers, columns as wide as their widest cell; `right[i]` right-aligns column
/// `i` (numbers). The last column is not padded.
fn table(out: &mut String, headers: &[&str], right: &[bool], rows: &[Vec<String>]) {
    let n = headers.len();
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |out: &mut String, cells: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate().take(n) {
            if i > 0 {
                l.push_str("  ");
            }
            if i + 1 == n && !right[i] {
                l.push_str(c);
            } else if right[i] {
                let _ = write!(l, "{c:>width$}", width = w[i]);
            } else {
                let _ = write!(l, "{c:<width$}", width = w[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(
        out,
        &headers.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    );
    for r in rows {
        line(out, r);
    }
}

/// Human text for `eiplab status`, from the whole `/_eiplab/status` document: the lab time
/// and table generation, one table of EIPs (with their counters when a dataplane runs), one
/// of ENIs, then the engine-wide totals and drops by reason. Without `counters` (no
/// dataplane, `--backend none`) it says so instead of the counter parts.
pub fn status_text(status: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "lab time {}   engine table generation {}",
        text(&status["LabTime"]),
        text(&status["TableGeneration"])
    );
    let counters = match &status["counters"] {
        Value::Object(_) => Some(&status["counters"]),
        _ => None,
    };
    // EIP counters by allocation id.
    let by_id: BTreeMap<String, &Value> = counters
        .and_then(|c| c["eips"].as_array())
        .into_iter()
        .flatten()
        .map(|e| (text(&e["allocation_id"]), e))
        .collect();

    let mut headers = vec![
        "AllocationId",
        "IpAddress",
        "Status",
        "Mode",
        "BoundTo",
        "PrivateIp",
        "Mbit/s",
    ];
    let mut right = vec![false, false, false, false, false, false, true];
    if counters.is_some() {
        headers.extend(["ToGuestPkts", "FromGuestPkts", "Drops"]);
        right.extend([true, true, false]);
    }
    let mut rows = Vec::new();
    for e in status["Eips"].as_array().into_iter().flatten() {
        let id = text(&e["AllocationId"]);
        let bound = text(&e["InstanceId"]);
        let mut row = vec![
            id.clone(),
            text(&e["IpAddress"]),
            text(&e["Status"]),
            if bound.is_empty() {
                String::new()
            } else {
                text(&e["Mode"])
            },
            bound,
            text(&e["PrivateIpAddress"]),
            text(&e["Bandwidth"]),
        ];
        if counters.is_some() {
            match by_id.get(&id) {
                Some(c) => row.extend([
                    text(&c["to_guest_packets"]),
                    text(&c["from_guest_packets"]),
                    pairs(&c["drops"]),
                ]),
                None => row.extend([String::new(), String::new(), String::new()]),
            }
        }
        rows.push(row);
    }
    table(&mut out, &headers, &right, &rows);

    let Some(c) = counters else {
        out.push_str("counters: no dataplane running (backend none)\n");
        return out;
    };

    out.push('\n');
    let rows: Vec<Vec<String>> = c["enis"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            vec![
                text(&e["eni_id"]),
                match &e["instance_id"] {
                    Value::Null => "(detached)".to_string(),
                    v => text(v),
                },
                text(&e["to_guest_packets"]),
                text(&e["from_guest_packets"]),
                pairs(&e["drops"]),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "EniId",
            "InstanceId",
            "ToGuestPkts",
            "FromGuestPkts",
            "Drops",
        ],
        &[false, false, true, true, false],
        &rows,
    );

    let g = &c["global"];
    let dropped: u64 = g["drops"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    out.push('\n');
    let _ = writeln!(
        out,
        "global: received {} pkts ({} B), forwarded {} pkts ({} B), replied {}, held {}, dropped {}",
        text(&g["received"]),
        text(&g["received_bytes"]),
        text(&g["forwarded"]),
        text(&g["forwarded_bytes"]),
        text(&g["replied"]),
        text(&g["held"]),
        dropped,
    );
    let _ = writeln!(
        out,
        "        icmp errors sent {}, hairpin {}, other protocol {}",
        text(&g["icmp_errors_sent"]),
        text(&g["hairpin"]),
        text(&g["other_protocol"]),
    );
    let d = pairs(&g["drops"]);
    let _ = writeln!(
        out,
        "global drops: {}",
        if d.is_empty() { "none" } else { &d }
    );
    for (label, key) in [
        ("alg passed", "alg_passed"),
        ("alg flagged", "alg_flagged"),
        ("gateway errors", "gateway_errors"),
    ] {
        let p = pairs(&g[key]);
        if !p.is_empty() {
            let _ = writeln!(out, "{label}: {p}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{Associate, BindType, Eni, Instance, InstanceStatus, Settings, VSwitch};
    use crate::engine::AssociationMode;
    use core::net::Ipv4Addr;

    const NOW: u64 = 1_000 * 1_000_000_000;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// i-web with eni-web0 (10.0.1.10); eni-spare detached; eip-web (NAT on i-web, InUse) and
    /// `eip-"q"` (Available, an id with a quote to exercise label escaping).
    fn cloud() -> Cloud {
        let mut c = Cloud::new(Settings {
            region: "cn-shanghai".into(),
            multi_binded_allowed: true,
            transition_ns: 1_000_000,
            eip_pool: vec![(ip("198.51.100.0"), 24)],
        });
        c.add_vswitch(VSwitch {
            id: "vsw-a".into(),
            region: "cn-shanghai".into(),
            zone: "cn-shanghai-b".into(),
            network: ip("10.0.1.0"),
            prefix_len: 24,
            gateway: ip("10.0.1.253"),
        });
        c.add_instance(Instance {
            id: "i-web".into(),
            region: "cn-shanghai".into(),
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
        let eni = |id: &str, a: &str, primary, inst: Option<&str>| Eni {
            id: id.into(),
            region: "cn-shanghai".into(),
            vswitch: "vsw-a".into(),
            private_ips: vec![ip(a)],
            primary,
            instance: inst.map(Into::into),
            index: 0,
        };
        c.add_eni(eni("eni-web0", "10.0.1.10", true, Some("i-web")));
        c.add_eni(eni("eni-spare", "10.0.1.30", false, None));
        c.add_eip(NOW, "eip-web", ip("198.51.100.10"), 5);
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

    /// Parses `name{k="v",…} value`, undoing label escapes.
    fn parse_sample(line: &str) -> (String, Vec<(String, String)>, f64) {
        let (head, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = value.parse().expect("numeric value");
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

    #[test]
    fn prometheus_parses_line_by_line() {
        let c = cloud();
        let text = prometheus(&c, &snapshot(&c));
        let mut help = std::collections::HashSet::new();
        let mut typed = std::collections::HashSet::new();
        let mut current: Option<String> = None;
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(r) = line.strip_prefix("# HELP ") {
                let name = r.split(' ').next().unwrap().to_string();
                assert!(help.insert(name.clone()), "HELP twice for {name}");
                current = Some(name);
            } else if let Some(r) = line.strip_prefix("# TYPE ") {
                let (name, kind) = r.split_once(' ').unwrap();
                assert!(["counter", "gauge"].contains(&kind));
                assert_eq!(current.as_deref(), Some(name), "TYPE right after its HELP");
                assert!(typed.insert(name.to_string()), "TYPE twice for {name}");
            } else {
                assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
                let (name, labels, v) = parse_sample(line);
                assert_eq!(
                    current.as_deref(),
                    Some(name.as_str()),
                    "sample outside its family: {line}"
                );
                assert!(typed.contains(&name));
                samples.push((name, labels, v));
            }
        }
        let find = |name: &str, want: &[(&str, &str)]| -> Vec<f64> {
            samples
                .iter()
                .filter(|(n, l, _)| {
                    n == name
                        && want
                            .iter()
                            .all(|(k, v)| l.iter().any(|(a, b)| a == k && b == v))
                })
                .map(|(_, _, v)| *v)
                .collect()
        };
        assert_eq!(find("eiplab_received_packets_total", &[]), vec![16.0]);
        assert_eq!(find("eiplab_forwarded_packets_total", &[]), vec![12.0]);
        assert_eq!(
            find("eiplab_drops_total", &[("reason", "alg_ftp")]),
            vec![3.0]
        );
        assert_eq!(
            find("eiplab_alg_passed_total", &[("protocol", "sip")]),
            vec![2.0]
        );
        assert_eq!(find("eiplab_eips", &[("status", "InUse")]), vec![1.0]);
        assert_eq!(find("eiplab_eips", &[("status", "Available")]), vec![1.0]);
        assert!(text.contains(
            "eiplab_eip_drops_total{allocation_id=\"eip-web\",address=\"198.51.100.10\",reason=\"alg_ftp\"} 3\n"
        ));
        assert!(text.contains(
            "eiplab_eni_drops_total{eni_id=\"eni-web0\",instance_id=\"i-web\",reason=\"source_check\"} 1\n"
        ));
        assert_eq!(
            find(
                "eiplab_eip_packets_total",
                &[("allocation_id", "eip-web"), ("direction", "to_guest")]
            ),
            vec![7.0]
        );
        // The EIP with a quote in its id: escaped in the text, listed with zeros, no drops.
        assert!(text.contains("allocation_id=\"eip-\\\"q\\\"\""), "{text}");
        assert_eq!(
            find(
                "eiplab_eip_packets_total",
                &[("allocation_id", "eip-\"q\""), ("direction", "from_guest")]
            ),
            vec![0.0]
        );
        assert!(find("eiplab_eip_drops_total", &[("allocation_id", "eip-\"q\"")]).is_empty());
        // Only non-zero per-EIP drops.
        assert_eq!(find("eiplab_eip_drops_total", &[]).len(), 1);
        // The detached ENI is listed, with an empty instance_id.
        assert_eq!(
            find(
                "eiplab_eni_packets_total",
                &[("eni_id", "eni-spare"), ("instance_id", "")]
            )
            .len(),
            2
        );
        // Counters of slots the cloud does not have are left out.
        assert_eq!(find("eiplab_eip_packets_total", &[]).len(), 4);
        assert_eq!(find("eiplab_eni_packets_total", &[]).len(), 4);
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
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
        });
        let none = status_text(&status);
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
        let text = prometheus(&c, &snap);
        assert!(
            text.contains("eiplab_gateway_errors_total{kind=\"no_device\"} 2\n"),
            "{text}"
        );
    }
}
