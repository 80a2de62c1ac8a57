//! The `alg` target: arbitrary payloads and ports through `eiplab::alg::classify` and
//! `eiplab::alg::inspect` for every protocol.
//!
//! # Input format
//!
//! | byte | meaning |
//! | --- | --- |
//! | 0 | bit 0: TCP (else UDP) |
//! | 1, 2 | source port (big endian) |
//! | 3, 4 | destination port |
//! | 5..9 | the private address `inspect` looks for |
//! | 9..13 | the public address |
//! | 13.. | the payload |
//!
//! Nothing may panic, and both functions must be deterministic.

use eiplab::alg::{classify, inspect, AlgProtocol, Transport};

pub const HEADER: usize = 13;

pub fn encode(
    tcp: bool,
    sp: u16,
    dp: u16,
    private: [u8; 4],
    public: [u8; 4],
    payload: &[u8],
) -> Vec<u8> {
    let mut v = vec![tcp as u8];
    v.extend_from_slice(&sp.to_be_bytes());
    v.extend_from_slice(&dp.to_be_bytes());
    v.extend_from_slice(&private);
    v.extend_from_slice(&public);
    v.extend_from_slice(payload);
    v
}

pub fn run(data: &[u8]) {
    if data.len() < HEADER {
        return;
    }
    let t = if data[0] & 1 != 0 {
        Transport::Tcp
    } else {
        Transport::Udp
    };
    let sp = u16::from_be_bytes([data[1], data[2]]);
    let dp = u16::from_be_bytes([data[3], data[4]]);
    let private = [data[5], data[6], data[7], data[8]];
    let public = [data[9], data[10], data[11], data[12]];
    let payload = &data[HEADER..];

    let c = classify(t, sp, dp, payload);
    assert!(
        c == classify(t, sp, dp, payload),
        "classify is not deterministic"
    );
    // The other transport and the other direction.
    let other = match t {
        Transport::Tcp => Transport::Udp,
        Transport::Udp => Transport::Tcp,
    };
    let _ = classify(other, sp, dp, payload);
    let _ = classify(t, dp, sp, payload);
    // Every protocol's inspector on the payload, as-is and with the addresses swapped.
    for p in AlgProtocol::ALL {
        let f = inspect(p, payload, private, public);
        let g = inspect(p, payload, private, public);
        assert!(f.is_some() == g.is_some(), "inspect is not deterministic");
        let _ = inspect(p, payload, public, private);
    }
    // Every prefix length is a payload too (a segment cut anywhere).
    if payload.len() <= 256 {
        for n in 0..payload.len() {
            let q = &payload[..n];
            if let Some(p) = classify(t, sp, dp, q) {
                let _ = inspect(p, q, private, public);
            }
        }
    }
}
