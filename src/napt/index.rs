//! The session indices: flow key -> session, an open-addressing table built for lookups
//! that miss the caches.
//!
//! A table of a million sessions is far larger than the caches, so what a lookup costs is
//! the cache lines it waits for, one after the other. A `std` `HashMap` waits for two before
//! it knows the session: its control bytes, then the bucket they point to. Here a slot holds
//! the key and the session's index (32 bytes, two to a 64-byte line), and a key's first slot
//! follows from its hash alone, so a lookup waits for one line (linear probing from there,
//! at most half full, rarely leaves it), and a batch can fetch that line ahead
//! ([`FlowIndex::prefetch`]). Deletion shifts the probe run back, so there are no
//! tombstones and lookups never slow down with churn.

use super::key::{hash, FlowKey};

/// A key and its session; key 0 (no protocol) marks an empty slot.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct Slot {
    key: FlowKey,
    val: u32,
}

const EMPTY: Slot = Slot {
    key: FlowKey::EMPTY,
    val: 0,
};

/// Two slots, on one cache line.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Line([Slot; 2]);

/// Slots of a new table (a power of two).
const MIN_SLOTS: usize = 16;

#[derive(Debug)]
pub(crate) struct FlowIndex {
    lines: Box<[Line]>,
    /// Slots - 1.
    mask: usize,
    len: usize,
    /// Changes whenever a key comes, goes or moves: what a batch read ahead holds while
    /// this does not change.
    gen: u64,
}

impl Default for FlowIndex {
    fn default() -> Self {
        FlowIndex::with_slots(MIN_SLOTS)
    }
}

impl FlowIndex {
    fn with_slots(n: usize) -> Self {
        debug_assert!(n.is_power_of_two() && n >= 2);
        FlowIndex {
            lines: vec![Line([EMPTY; 2]); n / 2].into_boxed_slice(),
            mask: n - 1,
            len: 0,
            gen: 0,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn slot(&self, i: usize) -> &Slot {
        &self.lines[i >> 1].0[i & 1]
    }

    #[inline(always)]
    fn slot_mut(&mut self, i: usize) -> &mut Slot {
        &mut self.lines[i >> 1].0[i & 1]
    }

    #[inline(always)]
    pub fn generation(&self) -> u64 {
        self.gen
    }

    /// The slot where a lookup of `k` begins, until the generation changes.
    #[inline(always)]
    pub fn home(&self, k: FlowKey) -> usize {
        hash(k) as usize & self.mask
    }

    /// Starts fetching the line of slot `home`.
    #[inline(always)]
    pub fn prefetch_home(&self, home: usize) {
        if let Some(l) = self.lines.get(home >> 1) {
            crate::engine::prefetch(l);
        }
    }

    /// `k`'s value, looked for from `home` (its [`FlowIndex::home`] in this generation).
    #[inline(always)]
    pub fn get_from(&self, home: usize, k: FlowKey) -> Option<u32> {
        self.find_from(home & self.mask, k)
            .map(|i| self.slot(i).val)
    }

    /// The slot holding `k`.
    #[inline(always)]
    fn find(&self, k: FlowKey) -> Option<usize> {
        self.find_from(self.home(k), k)
    }

    #[inline(always)]
    fn find_from(&self, home: usize, k: FlowKey) -> Option<usize> {
        let mut i = home;
        loop {
            let s = self.slot(i);
            if s.key == k {
                return Some(i);
            }
            if s.key == FlowKey::EMPTY {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    #[inline(always)]
    pub fn get(&self, k: &FlowKey) -> Option<&u32> {
        self.find(*k).map(|i| &self.slot(i).val)
    }

    pub fn contains_key(&self, k: &FlowKey) -> bool {
        self.find(*k).is_some()
    }

    /// Sets `k`'s value; the old one, if `k` was there.
    pub fn insert(&mut self, k: FlowKey, v: u32) -> Option<u32> {
        debug_assert!(k != FlowKey::EMPTY);
        self.gen += 1;
        if let Some(i) = self.find(k) {
            return Some(core::mem::replace(&mut self.slot_mut(i).val, v));
        }
        if 2 * (self.len + 1) > self.mask + 1 {
            self.grow();
        }
        let mut i = self.home(k);
        while self.slot(i).key != FlowKey::EMPTY {
            i = (i + 1) & self.mask;
        }
        *self.slot_mut(i) = Slot { key: k, val: v };
        self.len += 1;
        None
    }

    /// Takes `k` out; its value, if it was there.
    pub fn remove(&mut self, k: &FlowKey) -> Option<u32> {
        let mut i = self.find(*k)?;
        self.gen += 1;
        let v = self.slot(i).val;
        // Backward shift: each later slot of the run that may live at the hole moves into it.
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let s = *self.slot(j);
            if s.key == FlowKey::EMPTY {
                break;
            }
            let home = self.home(s.key);
            // The hole lies on the way from its home to where it is: it may move there.
            if j.wrapping_sub(home) & self.mask >= j.wrapping_sub(i) & self.mask {
                *self.slot_mut(i) = s;
                i = j;
            }
        }
        *self.slot_mut(i) = EMPTY;
        self.len -= 1;
        Some(v)
    }

    /// Twice the slots, everything filed again.
    #[cold]
    fn grow(&mut self) {
        let old = core::mem::replace(self, FlowIndex::with_slots(2 * (self.mask + 1)));
        for line in old.lines.iter() {
            for s in &line.0 {
                if s.key != FlowKey::EMPTY {
                    let mut i = self.home(s.key);
                    while self.slot(i).key != FlowKey::EMPTY {
                        i = (i + 1) & self.mask;
                    }
                    *self.slot_mut(i) = *s;
                }
            }
        }
        self.len = old.len;
        self.gen = old.gen + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::super::Protocol;
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn agrees_with_a_hash_map_through_churn() {
        // Few distinct keys and many operations, so runs form, wrap and shift back.
        let mut ix = FlowIndex::default();
        let mut reference = HashMap::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for step in 0..200_000u32 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let k = FlowKey::new(
                Protocol::Udp,
                (seed % 3000) as u32,
                7,
                9,
                (seed >> 40) as u16 % 3,
            );
            match (seed >> 20) % 3 {
                0 | 1 => assert_eq!(ix.insert(k, step), reference.insert(k, step)),
                _ => assert_eq!(ix.remove(&k), reference.remove(&k)),
            }
            assert_eq!(ix.len(), reference.len());
            if step % 10_000 == 0 {
                for (k, v) in &reference {
                    assert_eq!(ix.get(k), Some(v));
                }
            }
        }
        for (k, v) in &reference {
            assert_eq!(ix.get(k), Some(v));
        }
        let absent = FlowKey::new(Protocol::Tcp, 1, 2, 3, 4);
        assert_eq!(ix.get(&absent), None);
        assert!(2 * ix.len() <= ix.mask + 1);
    }
}
