//! The cloud's API (SPEC §4): RPC-style HTTP endpoint, request signatures, JSON shapes.
//!
//! Built so far: [`sign`], both signature schemes of the official SDKs (verify and sign).
//! The endpoint itself and its actions come with the cloud model (issue 3, in progress).

pub mod sign;
