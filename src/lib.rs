//! eiplab: emulates, packet by packet, how a cloud Elastic IP reaches a guest.
//!
//! The pure core (`wire`, `engine`, `alg`) builds with `--no-default-features`: no async
//! runtime, no libc, no sockets, no clock. Time is passed in as nanoseconds.

pub mod alg;
pub mod clb;
pub mod cloud;
pub mod engine;
pub mod napt;
pub mod wire;

// The shell. Each imports only those below it: `api` and `lab` use `control`, `telemetry`
// and the core; `io` uses `telemetry`; `control` uses `telemetry`; `telemetry` only the core.
#[cfg(feature = "runtime")]
pub mod api;
#[cfg(feature = "runtime")]
pub mod compat;
#[cfg(feature = "runtime")]
pub mod control;
#[cfg(feature = "runtime")]
pub mod demo;
#[cfg(feature = "runtime")]
pub mod io;
#[cfg(feature = "runtime")]
pub mod lab;
#[cfg(feature = "runtime")]
pub mod sim;
#[cfg(feature = "runtime")]
pub mod sys;
#[cfg(feature = "runtime")]
pub mod telemetry;
