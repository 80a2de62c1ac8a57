//! The dataplane's counters as the lab shows them: summed over workers ([`Snapshot`]), named
//! after the cloud (`counters` of `/_eiplab/status`, `/metrics`) and printed by `eiplab status`.
//!
//! The engine counts by dataplane number (EIP slot, ENI index); the names come from the cloud
//! at the moment of reading, so an EIP or ENI the cloud no longer has is left out.
//!
//! A shell module that every other shell may read and that reads none of them: the gateway's
//! workers (`io`) fill [`Snapshot`]s, the control plane hands them out with the cloud,
//! the API serves them ([`counters_json`] in `/_eiplab/status`, [`metrics`] for `/metrics`)
//! and the CLI prints them ([`status_text`]). It depends on the pure core alone.

pub mod metrics;
mod status;

pub use metrics::{CounterSource, LabCollector};
pub use status::{counters_json, status_text};

use crate::engine::{EipCounters, EipSlot, EniCounters, EniId, GlobalCounters};
use std::collections::BTreeMap;

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
    /// Each NAT gateway's NAPT, by gateway id (one state shared by the workers: read from
    /// it, not summed).
    pub nat_gateways: BTreeMap<String, NatGatewayStats>,
    /// Each CLB's connections and backends' health, by load balancer id (one state shared by
    /// the workers: read from it, not summed).
    pub load_balancers: BTreeMap<String, LoadBalancerStats>,
}

/// A CLB at a moment: its listeners' backends (health, connections) and the instance id of
/// each backend (in listener order).
#[derive(Clone, Debug)]
pub struct LoadBalancerStats {
    pub stats: crate::clb::ClbStats,
    pub backends: Vec<String>,
}

/// The size of a NAT gateway's NAPT at a moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatGatewayStats {
    /// Live sessions (flows), at most `max_sessions`.
    pub sessions: u64,
    /// Mappings (internal address:port -> external), shared by their sessions.
    pub mappings: u64,
    pub max_sessions: u64,
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
    /// Each kind with the name `counters` and `/metrics` give it.
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

#[cfg(test)]
mod tests;
