//! The counters as JSON (`counters` of `/_eiplab/status`) and as the text `eiplab status`
//! prints from that document.

use super::Snapshot;
use crate::alg::AlgProtocol;
use crate::cloud::Cloud;
use crate::engine::{Counter, DropCounts, DropReason, EipCounters, EniCounters};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;

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
    let nat_gateways: Vec<Value> = snap
        .nat_gateways
        .iter()
        .map(|(id, s)| {
            json!({
                "nat_gateway_id": id,
                "sessions": s.sessions,
                "mappings": s.mappings,
                "max_sessions": s.max_sessions,
            })
        })
        .collect();
    let load_balancers: Vec<Value> = snap
        .load_balancers
        .iter()
        .map(|(id, lb)| {
            let listeners: Vec<Value> = lb
                .stats
                .listeners
                .iter()
                .map(|l| {
                    let backends: Vec<Value> = l
                        .backends
                        .iter()
                        .enumerate()
                        .map(|(k, b)| {
                            json!({
                                "instance_id": lb.backends.get(k).cloned().unwrap_or_default(),
                                "address": b.addr.to_string(),
                                "weight": b.weight,
                                "health": health_name(b.health),
                                "active": b.active,
                                "total": b.total,
                            })
                        })
                        .collect();
                    json!({
                        "protocol": protocol_name(l.protocol),
                        "port": l.port,
                        "backends": backends,
                    })
                })
                .collect();
            json!({
                "load_balancer_id": id,
                "connections": lb.stats.connections,
                "listeners": listeners,
            })
        })
        .collect();
    json!({
        "global": global,
        "eips": eips,
        "enis": enis,
        "nat_gateways": nat_gateways,
        "load_balancers": load_balancers,
    })
}

/// A CLB backend's health as `status` and `/metrics` name it.
pub fn health_name(h: crate::clb::Health) -> &'static str {
    match h {
        crate::clb::Health::Unknown => "unknown",
        crate::clb::Health::Up => "up",
        crate::clb::Health::Down => "down",
    }
}

/// A CLB listener's protocol as the lab file spells it.
pub fn protocol_name(p: crate::clb::ListenerProtocol) -> &'static str {
    match p {
        crate::clb::ListenerProtocol::Tcp => "tcp",
        crate::clb::ListenerProtocol::Udp => "udp",
    }
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
    for h in status["HaVips"].as_array().into_iter().flatten() {
        let standby: Vec<String> = h["AssociatedInstances"]
            .as_array()
            .into_iter()
            .flatten()
            .skip(1)
            .map(text)
            .collect();
        let eips: Vec<String> = h["EipAddresses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        let _ = writeln!(
            out,
            "havip {} {}: {}{}{}",
            text(&h["HaVipId"]),
            text(&h["IpAddress"]),
            match text(&h["MasterInstanceId"]) {
                m if m.is_empty() => "held by nobody".to_string(),
                m => format!("held by {m}"),
            },
            if standby.is_empty() {
                String::new()
            } else {
                format!(", standby {}", standby.join(" "))
            },
            if eips.is_empty() {
                String::new()
            } else {
                format!(", EIP {}", eips.join(" "))
            },
        );
    }

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
    for lb in c["load_balancers"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "load balancer {}: {} connections",
            text(&lb["load_balancer_id"]),
            lb["connections"],
        );
        for l in lb["listeners"].as_array().into_iter().flatten() {
            let backends: Vec<String> = l["backends"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    format!(
                        "{} {} w{} {} ({} active, {} total)",
                        text(&b["instance_id"]),
                        text(&b["address"]),
                        b["weight"],
                        text(&b["health"]),
                        b["active"],
                        b["total"],
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "  {}:{} -> {}",
                text(&l["protocol"]),
                l["port"],
                if backends.is_empty() {
                    "no backends".to_string()
                } else {
                    backends.join("; ")
                }
            );
        }
    }
    for gw in c["nat_gateways"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "nat gateway {}: {} sessions, {} mappings (at most {} sessions)",
            text(&gw["nat_gateway_id"]),
            gw["sessions"],
            gw["mappings"],
            gw["max_sessions"],
        );
    }
    out
}
