//! Which ports of one external IP and protocol are taken: a 65,536-bit map.
//!
//! 8 KiB per (IP, protocol) answers "is this port free" with one bit test and finds a free
//! port by skipping full 64-port words, so allocation stays cheap when a pool is nearly full
//! and exhaustion is known from a counter, not a search.

const WORDS: usize = 65536 / 64;

#[derive(Clone, Debug)]
pub(crate) struct PortSet {
    bits: Box<[u64]>,
    /// Free ports inside the allocation range.
    free: u32,
    lo: u16,
    hi: u16,
}

impl PortSet {
    pub fn new(lo: u16, hi: u16) -> Self {
        PortSet {
            bits: vec![0u64; WORDS].into_boxed_slice(),
            free: (hi as u32 + 1).saturating_sub(lo as u32),
            lo,
            hi,
        }
    }

    #[inline]
    pub fn is_free(&self, p: u16) -> bool {
        self.bits[p as usize / 64] & (1 << (p % 64)) == 0
    }

    #[inline]
    fn in_range(&self, p: u16) -> bool {
        (self.lo..=self.hi).contains(&p)
    }

    #[cfg(test)]
    pub fn free(&self) -> u32 {
        self.free
    }

    /// Marks `p` taken; false if it already was.
    pub fn take(&mut self, p: u16) -> bool {
        if !self.is_free(p) {
            return false;
        }
        self.bits[p as usize / 64] |= 1 << (p % 64);
        if self.in_range(p) {
            self.free -= 1;
        }
        true
    }

    pub fn release(&mut self, p: u16) {
        if self.is_free(p) {
            return;
        }
        self.bits[p as usize / 64] &= !(1 << (p % 64));
        if self.in_range(p) {
            self.free += 1;
        }
    }

    /// A free port in the range, searching upwards from `start` and wrapping around.
    pub fn find_free(&self, start: u16) -> Option<u16> {
        if self.free == 0 {
            return None;
        }
        let start = start.clamp(self.lo, self.hi);
        self.first_free(start, self.hi)
            .or_else(|| self.first_free(self.lo, start))
    }

    /// The first free port in `a..=b`.
    fn first_free(&self, a: u16, b: u16) -> Option<u16> {
        if a > b {
            return None;
        }
        let (wa, wb) = (a as usize / 64, b as usize / 64);
        for w in wa..=wb {
            let mut used = self.bits[w];
            if w == wa {
                used |= (1u64 << (a % 64)) - 1;
            }
            if w == wb && b % 64 != 63 {
                used |= !((1u64 << (b % 64 + 1)) - 1);
            }
            if used != u64::MAX {
                return Some((w * 64) as u16 + (!used).trailing_zeros() as u16);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_port_of_a_range_then_reports_none() {
        let mut s = PortSet::new(100, 300);
        let mut got = Vec::new();
        while let Some(p) = s.find_free(250) {
            assert!(s.take(p));
            got.push(p);
        }
        got.sort();
        assert_eq!(got, (100..=300).collect::<Vec<_>>());
        assert_eq!(s.free(), 0);
        s.release(170);
        assert_eq!(s.find_free(0), Some(170));
    }

    #[test]
    fn the_whole_space_works_at_its_edges() {
        let mut s = PortSet::new(0, 65535);
        assert_eq!(s.find_free(65535), Some(65535));
        assert!(s.take(65535));
        assert_eq!(s.find_free(65535), Some(0));
        assert!(!s.take(65535));
        // A port outside the range (reserved for DNAT) does not count against it.
        let mut t = PortSet::new(1024, 1025);
        assert!(t.take(80));
        assert_eq!(t.free(), 2);
    }
}
