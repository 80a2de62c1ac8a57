//! [`SimLab`]: the lab of a lab file in one process, without root.
//!
//! The gateway is the real [`Dataplane`] on the control plane's table, as the netns backend
//! makes it ([`crate::lab::run::Lab::build`]); its ports are in-memory devices whose other
//! ends are [`SimHost`]s: `internet` (the echo service on port 80 of the internet's first
//! host, default route via the internet gateway), `cloud` (100.100.100.200) and one host per
//! instance with an interface per attached ENI, configured as [`plan`] says (its managed
//! configuration and the secondary private IPs).
//!
//! Not yet (the rest of issue 15): re-planning when the control plane publishes (ENIs
//! attached or detached, EIPs moved after the build are not followed), the policy routing of
//! secondary and cut-through ENIs (`from EIP lookup 100+N`: each interface routes on its own,
//! an operation leaves by the interface of its source address), the metadata service and the
//! CLB health checks.

use super::host::{IfaceConfig, Ipv4Cidr, SimHost};
use super::world::SimWorld;
use crate::control::ControlPlane;
use crate::engine::Side;
use crate::io::{mem, Dataplane};
use crate::lab::config::LabFile;
use crate::lab::plan::{self, Step};
use crate::lab::run::{HEALTH_CHECK_SOURCE, METADATA};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The internet host's name in the world.
pub const INTERNET: &str = "internet";
/// The cloud services host's name in the world.
pub const CLOUD: &str = "cloud";
/// Packets each in-memory device holds towards its host.
const QUEUE: usize = 4096;

/// A running simulated lab. Dropping it stops the hosts and the gateway.
pub struct SimLab {
    pub dp: Arc<Dataplane>,
    pub world: SimWorld,
    pub cp: Arc<ControlPlane>,
}

fn cidr(ip: std::net::Ipv4Addr, len: u8) -> Ipv4Cidr {
    Ipv4Cidr::new(ip, len)
}

impl SimLab {
    /// Builds the lab of `file` around the control plane `cp`.
    pub fn build(file: &LabFile, cp: Arc<ControlPlane>) -> Result<SimLab, String> {
        let dp = Dataplane::new(
            cp.cell().clone(),
            crate::io::Options {
                workers: 1,
                ..crate::io::Options::default()
            },
        )
        .map_err(|e| format!("cannot start the gateway: {e}"))?;
        let port = |name: &str, side: Side| -> Result<mem::MemHost, String> {
            let (dev, host) = mem::pair(QUEUE).map_err(|e| format!("{name}: {e}"))?;
            dp.add_port(name.to_string(), side, Box::new(dev));
            Ok(host)
        };
        let mut hosts = Vec::new();

        let echo = file.internet.echo_address();
        let gateway = file.internet.gateway;
        let mut internet = SimHost::new(
            INTERNET,
            vec![(
                IfaceConfig {
                    name: "eth0".into(),
                    addrs: vec![cidr(echo, file.internet.cidr.len)],
                    gateway: Some(gateway),
                    metric: 0,
                },
                port("internet.eth0", Side::Internet)?,
            )],
        )?;
        internet.serve_echo_http(80);
        hosts.push(internet);

        hosts.push(SimHost::new(
            CLOUD,
            vec![(
                IfaceConfig {
                    name: "eth0".into(),
                    addrs: vec![cidr(METADATA, 32), cidr(HEALTH_CHECK_SOURCE, 32)],
                    // A device route (everything leaves by eth0).
                    gateway: Some(METADATA),
                    metric: 0,
                },
                port("cloud.eth0", Side::CloudServices)?,
            )],
        )?);

        let unconfigured = file.unconfigured_enis();
        let want = cp.with_cloud(|c| plan::attached_enis(c, &unconfigured));
        let mut by_instance: BTreeMap<String, Vec<(u32, IfaceConfig, mem::MemHost)>> =
            BTreeMap::new();
        for s in plan::plan(&want, &BTreeMap::new(), "", gateway) {
            let Step::Create {
                facts,
                dev,
                n,
                config,
                ..
            } = s
            else {
                continue;
            };
            // The main table's default route of the lowest metric picks the interface.
            let main = config
                .routes
                .iter()
                .filter(|r| r.table.is_none())
                .min_by_key(|r| r.metric.unwrap_or(0));
            let iface = IfaceConfig {
                name: dev.clone(),
                addrs: config
                    .addrs
                    .iter()
                    .map(|a| cidr(a.ip, a.prefix_len))
                    .collect(),
                gateway: main.map(|r| r.via),
                metric: main.and_then(|r| r.metric).unwrap_or(0),
            };
            let mem = port(&format!("{}.{dev}", facts.instance), Side::Eni(facts.index))?;
            by_instance
                .entry(facts.instance)
                .or_default()
                .push((n, iface, mem));
        }
        for (instance, mut ifaces) in by_instance {
            ifaces.sort_by_key(|(n, _, _)| *n);
            hosts.push(SimHost::new(
                &instance,
                ifaces.into_iter().map(|(_, c, m)| (c, m)).collect(),
            )?);
        }
        Ok(SimLab {
            dp,
            world: SimWorld::new(hosts)?,
            cp,
        })
    }
}

impl Drop for SimLab {
    fn drop(&mut self) {
        self.dp.shutdown();
    }
}
