//! The unprivileged backend's foundation (issue 15): the lab in one process.
//!
//! Instances, the internet and the cloud's services are in-process TCP/IP stacks (`smoltcp`)
//! instead of network namespaces, attached to the real gateway ([`crate::io::Dataplane`])
//! through in-memory devices ([`crate::io::mem`]), the same seam the TUN devices use. Nothing
//! here needs root.
//!
//! - [`phy`]: a smoltcp device over the host's end of an in-memory device pair.
//! - [`host`]: [`SimHost`], one host with one or more interfaces, and what it can do (ping,
//!   HTTP GET, a UDP exchange, serve the echo service).
//! - [`world`]: [`SimWorld`], the hosts of a lab polled together by one thread.
//! - [`lab`]: [`SimLab`], the lab of a lab file: the gateway with a host for the internet,
//!   the cloud's services and each instance.

pub mod exec;
pub mod host;
pub mod lab;
pub mod phy;
pub mod route;
pub mod world;

pub use host::{Heard, IfaceConfig, Pong, Proto, SimHost};
pub use lab::SimLab;
pub use world::SimWorld;
