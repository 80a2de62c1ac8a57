//! The Internet checksum (RFC 1071), full and incremental (RFC 1624).
//!
//! Sums are carried in a `u64` so that any buffer up to several gigabytes can be summed before
//! folding; [`fold`] brings a sum back to 16 bits with end-around carry.

/// Ones'-complement sum of `data` as big-endian 16-bit words (a trailing odd byte is padded
/// with zero), added to `acc`. The result is not folded.
#[inline]
pub fn sum(mut acc: u64, data: &[u8]) -> u64 {
    // Four bytes at a time: a big-endian u32 is two big-endian u16 words, and the
    // ones'-complement sum is independent of where we fold the carries.
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        acc += u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64;
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        acc += u16::from_be_bytes([rest[i], rest[i + 1]]) as u64;
        i += 2;
    }
    if i < rest.len() {
        acc += (rest[i] as u64) << 8;
    }
    acc
}

/// Folds a wide sum to 16 bits with end-around carry (the result is never complemented).
#[inline]
pub fn fold(acc: u64) -> u16 {
    // Branch-free: after the 32-bit step the sum is below 2^33, and three 16-bit steps bring
    // any such value under 2^16.
    let a = (acc & 0xffff_ffff) + (acc >> 32);
    let a = (a & 0xffff) + (a >> 16);
    let a = (a & 0xffff) + (a >> 16);
    let a = (a & 0xffff) + (a >> 16);
    a as u16
}

/// [`sum`] of an option-less IPv4 header: five words, no loop.
#[inline(always)]
pub fn sum20(h: &[u8; 20]) -> u64 {
    let w = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]) as u64;
    w(0) + w(4) + w(8) + w(12) + w(16)
}

/// The checksum field value for `data` (its checksum field must be zero when summed).
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(0, data))
}

/// Whether `data`, with its checksum field in place, sums to all ones.
#[inline]
pub fn verify(data: &[u8]) -> bool {
    fold(sum(0, data)) == 0xffff
}

/// Sum of the IPv4 pseudo-header used by TCP and UDP (RFC 793, RFC 768).
#[inline]
pub fn pseudo_header(src: u32, dst: u32, protocol: u8, l4_len: u32) -> u64 {
    (src >> 16) as u64
        + (src & 0xffff) as u64
        + (dst >> 16) as u64
        + (dst & 0xffff) as u64
        + protocol as u64
        + l4_len as u64
}

/// An accumulated change to the data a checksum covers: for every 16-bit word that changes
/// from `m` to `m'` it holds `~m + m'` (RFC 1624, eqn. 3), so one delta can be applied to
/// several checksums (the IPv4 header and the TCP/UDP pseudo-header share the addresses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta(u64);

impl core::ops::Add for Delta {
    type Output = Delta;
    #[inline]
    fn add(self, other: Delta) -> Delta {
        Delta(self.0 + other.0)
    }
}

impl Delta {
    pub const ZERO: Delta = Delta(0);

    /// One 16-bit word changed.
    #[inline]
    pub fn word(old: u16, new: u16) -> Self {
        Delta((!old) as u64 + new as u64)
    }

    /// A 32-bit field (an address) changed.
    #[inline]
    pub fn addr(old: u32, new: u32) -> Self {
        Delta(
            (!(old >> 16) & 0xffff) as u64
                + (!old & 0xffff) as u64
                + (new >> 16) as u64
                + (new & 0xffff) as u64,
        )
    }

    /// Whether the delta changes no checksum (every change was undone by another).
    #[inline]
    pub fn is_zero(self) -> bool {
        let f = fold(self.0);
        f == 0 || f == 0xffff
    }

    /// New value of a complemented checksum field: `HC' = ~(~HC + delta)`.
    #[inline]
    pub fn apply(self, checksum: u16) -> u16 {
        !fold((!checksum) as u64 + self.0)
    }

    /// New value of a UDP checksum field: zero means "no checksum" and stays zero, and a
    /// computed zero is sent as all ones (RFC 768).
    #[inline]
    pub fn apply_udp(self, checksum: u16) -> u16 {
        if checksum == 0 {
            return 0;
        }
        match self.apply(checksum) {
            0 => 0xffff,
            c => c,
        }
    }

    /// New value of a field that holds an un-complemented partial sum: the pseudo-header sum
    /// that a sender offloading its checksum ("needs checksum", `CHECKSUM_PARTIAL`) leaves in
    /// the L4 checksum field for the device to finish. `P' = fold(P + delta)`, no complement.
    #[inline]
    pub fn apply_partial(self, partial: u16) -> u16 {
        fold(partial as u64 + self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: words 0001 f203 f4f5 f6f7 sum to ddf2 (folded).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(0, &data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn fold_handles_every_carry() {
        for acc in [
            0u64,
            0xffff,
            0x1_0000,
            0x1_fffe,
            0xffff_ffff,
            u64::MAX,
            0x1_ffff_fffe,
            12345678901234,
        ] {
            let mut slow = acc;
            while slow >> 16 != 0 {
                slow = (slow & 0xffff) + (slow >> 16);
            }
            assert_eq!(fold(acc) as u64, slow, "{acc:#x}");
        }
    }

    #[test]
    fn sum20_equals_sum() {
        let h: [u8; 20] = core::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(200));
        assert_eq!(fold(sum20(&h)), fold(sum(0, &h)));
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(sum(0, &[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
        assert_eq!(fold(sum(0, &[0xff])), 0xff00);
        assert_eq!(fold(sum(0, &[])), 0);
    }

    #[test]
    fn known_ipv4_header() {
        // A header from the wild (Wikipedia's IPv4 checksum example): checksum b861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert!(verify(&h));
        h[19] ^= 1;
        assert!(!verify(&h));
    }

    #[test]
    fn incremental_matches_full_for_address_change() {
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let old = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
        let new = u32::from_be_bytes([10, 0, 1, 21]);
        h[16..20].copy_from_slice(&new.to_be_bytes());
        let c = Delta::addr(old, new).apply(0xb861);
        h[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(c, checksum(&h));
    }

    #[test]
    fn delta_of_undone_change_is_zero() {
        let d = Delta::addr(0x0a000115, 0xc6336410) + Delta::addr(0xc6336410, 0x0a000115);
        assert!(d.is_zero());
        assert_eq!(d.apply(0x1234), 0x1234);
        assert!(!Delta::addr(1, 2).is_zero());
    }

    #[test]
    fn udp_zero_stays_zero_and_zero_result_becomes_ffff() {
        assert_eq!(Delta::addr(1, 2).apply_udp(0), 0);
        // Pick a change that makes the complemented result 0: ~(~c + d) == 0 <=> ~c + d == 0xffff.
        let c: u16 = 0x1234;
        let d = Delta::word(0x0000, 0xffff - !c);
        assert_eq!(d.apply(c), 0);
        assert_eq!(d.apply_udp(c), 0xffff);
    }

    #[test]
    fn partial_sum_update_has_no_complement() {
        let (src, dst, new_dst) = (0xc6336401u32, 0xcb007101u32, 0x0a000115u32);
        let p = fold(pseudo_header(src, dst, 6, 40));
        let want = fold(pseudo_header(src, new_dst, 6, 40));
        assert_eq!(Delta::addr(dst, new_dst).apply_partial(p), want);
    }
}
