//! `/metrics`: the lab's counters in the OpenMetrics text format, encoded by `prometheus-client`.
//!
//! Nothing is registered ahead and nothing is counted twice: the engines own their counters,
//! and a [`LabCollector`] reads them (through a [`CounterSource`]) together with the cloud at
//! each scrape, so EIPs and ENIs appear and vanish with the cloud. Counter families get their
//! `_total` suffix from the encoder (`eiplab_drops` is exposed as `eiplab_drops_total`); the
//! exposition ends with `# EOF`.
//!
//! Families: engine-wide totals, drops by reason (every reason), gateway errors by kind, ALG
//! passed/flagged by protocol (every protocol), EIPs by status; per EIP and per ENI of the
//! cloud, packets and bytes in both directions (zeros included, so a scraper sees every EIP
//! from the start) and the non-zero drops by reason.

use super::Snapshot;
use crate::alg::AlgProtocol;
use crate::cloud::{Cloud, EipStatus};
use crate::engine::{Counter, DropCounts, DropReason, EipCounters, EniCounters};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::Arc;

/// The `Content-Type` of what [`render`] returns (OpenMetrics text 1.0.0, as the
/// `prometheus-client` crate serves it in its examples).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Where a scrape reads from: the cloud (for names and statuses) and the dataplane's counters
/// at that moment (all zeros when no dataplane runs).
pub trait CounterSource: Send + Sync + 'static {
    /// Calls `f` once with the cloud and the counters. `f` encodes the whole exposition: a
    /// source that holds a lock around the call keeps every family consistent with one state.
    fn read_counters(&self, f: &mut dyn FnMut(&Cloud, &Snapshot));
}

impl<T: CounterSource> CounterSource for Arc<T> {
    fn read_counters(&self, f: &mut dyn FnMut(&Cloud, &Snapshot)) {
        self.as_ref().read_counters(f)
    }
}

/// The collector of every `eiplab_*` family (register it with
/// [`Registry::register_collector`], or take [`registry`]).
pub struct LabCollector<S> {
    source: S,
}

impl<S> LabCollector<S> {
    pub fn new(source: S) -> Self {
        LabCollector { source }
    }
}

impl<S> fmt::Debug for LabCollector<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LabCollector").finish_non_exhaustive()
    }
}

impl<S: CounterSource> Collector for LabCollector<S> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut result = Ok(());
        self.source
            .read_counters(&mut |cloud, snap| result = encode(&mut encoder, cloud, snap));
        result
    }
}

/// A registry holding one [`LabCollector`] over `source`.
pub fn registry<S: CounterSource>(source: S) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(LabCollector::new(source)));
    r
}

/// The exposition of `registry` (serve it as [`CONTENT_TYPE`]).
pub fn render(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// One unlabelled counter sample with its descriptor.
fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

/// A family: its descriptor once, then one sample per label set (none is fine: the family is
/// still described).
fn family<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in samples {
        let mut s = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => s.encode_counter::<NoLabelSet, _, u64>(&v, None)?,
            MetricType::Gauge => s.encode_gauge(&v)?,
            _ => return Err(fmt::Error),
        }
    }
    Ok(())
}

/// Both directions of one EIP or ENI, by their label value.
fn directions<'a>(
    to_guest: &'a Counter,
    from_guest: &'a Counter,
) -> [(&'static str, &'a Counter); 2] {
    [("to_guest", to_guest), ("from_guest", from_guest)]
}

/// The non-zero drops of one EIP or ENI, by reason name.
fn nonzero_drops(d: &DropCounts) -> impl Iterator<Item = (&'static str, u64)> + '_ {
    DropReason::ALL
        .iter()
        .map(|r| (r.name(), d[*r as usize]))
        .filter(|(_, n)| *n != 0)
}

/// Every family, from one cloud and one snapshot.
fn encode(e: &mut DescriptorEncoder, cloud: &Cloud, snap: &Snapshot) -> fmt::Result {
    let g = &snap.global;
    for (name, help, v) in [
        (
            "eiplab_received_packets",
            "Packets received by the engines.",
            g.received.packets,
        ),
        (
            "eiplab_received_bytes",
            "Bytes received by the engines.",
            g.received.bytes,
        ),
        (
            "eiplab_forwarded_packets",
            "Packets forwarded.",
            g.forwarded.packets,
        ),
        (
            "eiplab_forwarded_bytes",
            "Bytes forwarded.",
            g.forwarded.bytes,
        ),
        (
            "eiplab_replied_packets",
            "Echo requests to a gateway address, answered.",
            g.replied.packets,
        ),
    ] {
        counter(e, name, help, v)?;
    }
    e.encode_descriptor(
        "eiplab_held_packets",
        "Fragments waiting for their first fragment.",
        None,
        MetricType::Gauge,
    )?
    .encode_gauge(&g.held)?;
    for (name, help, v) in [
        (
            "eiplab_icmp_errors_sent",
            "ICMP errors the gateway sent (time exceeded; destination unreachable, code 13, when a NAT gateway has no port for a new flow).",
            g.icmp_errors_sent,
        ),
        (
            "eiplab_hairpin_packets",
            "Packets hairpinned from a guest to an EIP of the lab.",
            g.hairpin,
        ),
        (
            "eiplab_other_protocol_packets",
            "Packets of IP protocols other than TCP, UDP and ICMP forwarded.",
            g.other_protocol,
        ),
    ] {
        counter(e, name, help, v)?;
    }

    family(
        e,
        "eiplab_drops",
        "Packets dropped, by reason.",
        MetricType::Counter,
        DropReason::ALL
            .iter()
            .map(|r| ([("reason", r.name())], g.drops[*r as usize])),
    )?;
    family(
        e,
        "eiplab_gateway_errors",
        "Packets the gateway's shell lost around the engine, by kind.",
        MetricType::Counter,
        snap.gateway.each().map(|(kind, n)| ([("kind", kind)], n)),
    )?;
    for (name, help, counts) in [
        (
            "eiplab_alg_passed",
            "NAT-mode packets of ALG-dependent protocols passed, by protocol.",
            &g.alg_passed,
        ),
        (
            "eiplab_alg_flagged",
            "Payloads flagged by ALG inspection, by protocol.",
            &g.alg_flagged,
        ),
    ] {
        family(
            e,
            name,
            help,
            MetricType::Counter,
            AlgProtocol::ALL
                .iter()
                .map(|p| ([("protocol", p.name())], counts[p.index()])),
        )?;
    }

    for (name, help, pick) in [
        (
            "eiplab_nat_gateway_sessions",
            "Live sessions (flows) of a NAT gateway's NAPT.",
            (|s: &super::NatGatewayStats| s.sessions) as fn(&super::NatGatewayStats) -> u64,
        ),
        (
            "eiplab_nat_gateway_mappings",
            "Mappings (internal address and port to external) of a NAT gateway's NAPT.",
            |s| s.mappings,
        ),
        (
            "eiplab_nat_gateway_max_sessions",
            "The bound of a NAT gateway's session table (the lab file's max_sessions).",
            |s| s.max_sessions,
        ),
    ] {
        family(
            e,
            name,
            help,
            MetricType::Gauge,
            snap.nat_gateways
                .iter()
                .map(|(id, st)| ([("nat_gateway", id.as_str())], pick(st))),
        )?;
    }

    // Each CLB (SPEC D13): its connections, and each backend's health and connections.
    family(
        e,
        "eiplab_clb_connections",
        "Live connections of a CLB, all listeners.",
        MetricType::Gauge,
        snap.load_balancers.iter().map(|(id, lb)| {
            (
                [("load_balancer", id.as_str())],
                lb.stats.connections as u64,
            )
        }),
    )?;
    let mut backends = Vec::new();
    for (id, lb) in &snap.load_balancers {
        for l in &lb.stats.listeners {
            let listener = format!("{}:{}", super::status::protocol_name(l.protocol), l.port);
            for (k, b) in l.backends.iter().enumerate() {
                let instance = lb.backends.get(k).cloned().unwrap_or_default();
                backends.push((id.as_str(), listener.clone(), instance, b));
            }
        }
    }
    let health = ["up", "down", "unknown"];
    family(
        e,
        "eiplab_clb_backend_health",
        "A CLB backend's health check state: 1 for the state it is in (up, down, unknown).",
        MetricType::Gauge,
        backends.iter().flat_map(|(id, l, i, b)| {
            let now = super::status::health_name(b.health);
            health.iter().map(move |&st| {
                (
                    [
                        ("load_balancer", *id),
                        ("listener", l.as_str()),
                        ("instance", i.as_str()),
                        ("state", st),
                    ],
                    u64::from(st == now),
                )
            })
        }),
    )?;
    family(
        e,
        "eiplab_clb_backend_connections",
        "Live connections a CLB backend has from a listener.",
        MetricType::Gauge,
        backends.iter().map(|(id, l, i, b)| {
            (
                [
                    ("load_balancer", *id),
                    ("listener", l.as_str()),
                    ("instance", i.as_str()),
                ],
                b.active as u64,
            )
        }),
    )?;
    family(
        e,
        "eiplab_clb_backend_scheduled",
        "Connections a CLB listener ever scheduled to a backend.",
        MetricType::Counter,
        backends.iter().map(|(id, l, i, b)| {
            (
                [
                    ("load_balancer", *id),
                    ("listener", l.as_str()),
                    ("instance", i.as_str()),
                ],
                b.total,
            )
        }),
    )?;

    // Who holds each HaVip (SPEC D12): 1 for the holder, 0 for its standbys.
    family(
        e,
        "eiplab_havip_holder",
        "Whether an instance (or ENI) associated with a HaVip holds it: 1 the holder, 0 a standby.",
        MetricType::Gauge,
        cloud.havips.values().flat_map(|h| {
            h.associated_instances.iter().enumerate().map(|(k, i)| {
                (
                    [("havip", h.id.as_str()), ("instance", i.as_str())],
                    u64::from(k == 0),
                )
            })
        }),
    )?;

    family(
        e,
        "eiplab_eips",
        "EIPs of the cloud, by status.",
        MetricType::Gauge,
        [
            EipStatus::Available,
            EipStatus::Associating,
            EipStatus::InUse,
            EipStatus::Unassociating,
        ]
        .map(|s| {
            let n = cloud.eips.values().filter(|e| e.status == s).count() as u64;
            ([("status", s.api_name())], n)
        }),
    )?;

    // Per EIP of the cloud (counters of slots it no longer has are left out).
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
            "eiplab_eip_packets",
            "Packets through an EIP (after its policer), by direction.",
            false,
        ),
        (
            "eiplab_eip_bytes",
            "Bytes through an EIP (after its policer), by direction.",
            true,
        ),
    ] {
        family(
            e,
            name,
            help,
            MetricType::Counter,
            eips.iter().flat_map(|(id, addr, c)| {
                directions(&c.to_guest, &c.from_guest).map(|(dir, k)| {
                    (
                        [
                            ("allocation_id", *id),
                            ("address", addr.as_str()),
                            ("direction", dir),
                        ],
                        if bytes { k.bytes } else { k.packets },
                    )
                })
            }),
        )?;
    }
    family(
        e,
        "eiplab_eip_drops",
        "Packets of an EIP dropped, by reason.",
        MetricType::Counter,
        eips.iter().flat_map(|(id, addr, c)| {
            nonzero_drops(&c.drops).map(move |(reason, n)| {
                (
                    [
                        ("allocation_id", *id),
                        ("address", addr.as_str()),
                        ("reason", reason),
                    ],
                    n,
                )
            })
        }),
    )?;

    // Per ENI of the cloud; a detached ENI has an empty instance_id.
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
            "eiplab_eni_packets",
            "Packets delivered to / forwarded from a guest on an ENI, by direction.",
            false,
        ),
        (
            "eiplab_eni_bytes",
            "Bytes delivered to / forwarded from a guest on an ENI, by direction.",
            true,
        ),
    ] {
        family(
            e,
            name,
            help,
            MetricType::Counter,
            enis.iter().flat_map(|(id, inst, c)| {
                directions(&c.to_guest, &c.from_guest).map(|(dir, k)| {
                    (
                        [("eni_id", *id), ("instance_id", *inst), ("direction", dir)],
                        if bytes { k.bytes } else { k.packets },
                    )
                })
            }),
        )?;
    }
    family(
        e,
        "eiplab_eni_drops",
        "Packets of an ENI dropped, by reason.",
        MetricType::Counter,
        enis.iter().flat_map(|(id, inst, c)| {
            nonzero_drops(&c.drops).map(move |(reason, n)| {
                (
                    [("eni_id", *id), ("instance_id", *inst), ("reason", reason)],
                    n,
                )
            })
        }),
    )
}
