//! The cloud's API (SPEC §4): RPC-style HTTP endpoint, request signatures, JSON shapes.
//!
//! [`sign`]: both signature schemes of the official SDKs (verify and sign). [`server`]: the
//! endpoint and its actions, run on the cloud model through [`crate::control`]; the lab-only
//! documents; `/metrics` from [`crate::telemetry`].
//!
//! A shell module: it imports `control`, `telemetry` and the pure core, never `lab` or `io`.

pub mod actions;
pub mod server;
pub mod sign;

pub use server::{serve, Api};
