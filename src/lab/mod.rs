//! The lab: its file, the cloud it declares, and (with `--backend netns`) the namespaces,
//! devices and built-in services that make it real.
//!
//! A shell module: it imports `control`, `telemetry`, `io` and the pure core, never `api`.

pub mod cloud;
pub mod config;
pub mod health;
pub mod plan;
pub mod run;
pub mod services;
