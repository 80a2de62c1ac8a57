//! The cloud's API (SPEC §4): RPC-style HTTP endpoint, request signatures, JSON shapes.
//!
//! [`sign`]: both signature schemes of the official SDKs (verify and sign). [`server`]: the
//! endpoint and its actions on the cloud model. [`store`]: the state on disk.

pub mod server;
pub mod sign;
pub mod store;

pub use server::serve;
