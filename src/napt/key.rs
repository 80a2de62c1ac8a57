//! Flow keys and the hasher that the session and mapping indices use.
//!
//! A key is one `u128` (protocol, one side's address and port, the remote's address and
//! port), so equality is two word compares and hashing is two folded multiplies. SipHash's
//! flood resistance would cost more than the lookup it protects; what an attacker controls
//! (the remote half) is mixed through both multiplies, so no single field zeroes the hash.

use super::Protocol;
use std::hash::{BuildHasherDefault, Hasher};

/// (protocol, address, port, remote address, remote port), packed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FlowKey(u128);

impl FlowKey {
    /// No flow's key (every protocol is non-zero): an empty slot of a [`super::index::FlowIndex`].
    pub const EMPTY: FlowKey = FlowKey(0);

    /// Bits: remote port 0..16, remote address 16..48, protocol 48..56, port 64..80,
    /// address 80..112.
    #[inline(always)]
    pub fn new(p: Protocol, ip: u32, port: u16, remote_ip: u32, remote_port: u16) -> Self {
        FlowKey(
            (remote_port as u128)
                | ((remote_ip as u128) << 16)
                | ((p as u8 as u128) << 48)
                | ((port as u128) << 64)
                | ((ip as u128) << 80),
        )
    }
}

#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let m = (a as u128).wrapping_mul(b as u128);
    (m as u64) ^ ((m >> 64) as u64)
}

const K0: u64 = 0x243f_6a88_85a3_08d3;
const K1: u64 = 0x1319_8a2e_0370_7344;
const K2: u64 = 0xa409_3822_299f_31d0;

/// A multiply-fold hasher for [`FlowKey`]s (and the few plain integers the cold tables use).
#[derive(Default)]
pub(crate) struct FlowHasher(u64);

impl Hasher for FlowHasher {
    #[inline(always)]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline(always)]
    fn write_u128(&mut self, v: u128) {
        let (lo, hi) = (v as u64, (v >> 64) as u64);
        let a = fold(lo ^ K0, K1);
        self.0 = fold(a ^ hi ^ self.0, K2);
    }
    #[inline(always)]
    fn write_u64(&mut self, v: u64) {
        self.write_u128(v as u128)
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u128(v as u128)
    }
    fn write_u16(&mut self, v: u16) {
        self.write_u128(v as u128)
    }
    fn write_u8(&mut self, v: u8) {
        self.write_u128(v as u128)
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u128(v as u128)
    }
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(16) {
            let mut b = [0u8; 16];
            b[..c.len()].copy_from_slice(c);
            self.write_u128(u128::from_le_bytes(b));
        }
    }
}

/// What [`FlowHasher`] makes of a [`FlowKey`], without the `Hasher` plumbing.
#[inline(always)]
pub(crate) fn hash(k: FlowKey) -> u64 {
    let (lo, hi) = (k.0 as u64, (k.0 >> 64) as u64);
    fold(fold(lo ^ K0, K1) ^ hi, K2)
}

pub(crate) type FlowBuild = BuildHasherDefault<FlowHasher>;
pub(crate) type FlowMap<K, V> = std::collections::HashMap<K, V, FlowBuild>;

/// A well-mixed number from a few integers: where a new mapping starts looking for a port
/// and an external IP. Not secret (the core has no randomness), only spread out.
pub(crate) fn spread(a: u64, b: u64) -> u64 {
    fold(fold(a ^ K0, K1) ^ b, K2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn fields_do_not_overlap() {
        let all = FlowKey::new(Protocol::Udp, u32::MAX, u16::MAX, u32::MAX, u16::MAX).0;
        let parts = [
            FlowKey::new(Protocol::Udp, 0, 0, 0, 0).0,
            FlowKey::new(Protocol::Icmp, u32::MAX, 0, 0, 0).0,
            FlowKey::new(Protocol::Icmp, 0, u16::MAX, 0, 0).0,
            FlowKey::new(Protocol::Icmp, 0, 0, u32::MAX, 0).0,
            FlowKey::new(Protocol::Icmp, 0, 0, 0, u16::MAX).0,
        ];
        let icmp = FlowKey::new(Protocol::Icmp, 0, 0, 0, 0).0;
        let mut acc = parts[0];
        for p in &parts[1..] {
            let field = p & !icmp;
            assert_eq!(acc & field, 0);
            acc |= field;
        }
        assert_eq!(acc, all);
    }

    #[test]
    fn neighbouring_keys_spread_over_buckets() {
        // 4096 keys differing only in the remote port land in many distinct low-bit buckets.
        let b = FlowBuild::default();
        let mut seen = std::collections::HashSet::new();
        for port in 0..4096u16 {
            let h = b.hash_one(FlowKey::new(Protocol::Tcp, 1, 2, 3, port));
            seen.insert(h & 4095);
        }
        assert!(seen.len() > 2000, "{}", seen.len());
    }

    #[test]
    fn hash_is_the_hashers() {
        let b = FlowBuild::default();
        for port in 0..100u16 {
            let k = FlowKey::new(Protocol::Udp, 0x0a00_0001, port, 0xcb00_7101, 443);
            assert_eq!(hash(k), b.hash_one(k));
        }
    }
}
