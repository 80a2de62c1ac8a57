//! Session expiry: a one-level timer wheel with intrusive lists and lazy refresh.
//!
//! A packet only writes its session's `expires`; it never touches the wheel. A session sits
//! in the slot of the deadline it had when it was (re)filed. When that slot comes due the
//! wheel looks at the session's current deadline: passed, it expires; moved on, it is filed
//! again. So the per-packet cost is one store, and a session costs at most one refiling per
//! timeout period (plus one per wheel turn for timeouts longer than the wheel).
//!
//! Links live in the sessions themselves (`u32` indices into the session slab), so the wheel
//! owns no per-session memory and an expired session leaves nothing behind.

use super::NONE;

/// Slots in the wheel; with [`TICK_NS`] of one second it spans 68 minutes.
pub(crate) const SLOTS: u64 = 4096;
/// Granularity of expiry: a session is reclaimed at most this long after its deadline (a
/// packet that finds its session past its deadline treats it as gone at once).
pub(crate) const TICK_NS: u64 = 1_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Links {
    pub prev: u32,
    pub next: u32,
    /// The slot the node is filed in, or NONE.
    pub slot: u32,
}

impl Links {
    pub const UNLINKED: Links = Links {
        prev: NONE,
        next: NONE,
        slot: NONE,
    };
}

pub(crate) trait Timed {
    fn links(&mut self) -> &mut Links;
    fn expires(&self) -> u64;
}

#[derive(Debug)]
pub(crate) struct Wheel {
    heads: Box<[u32]>,
    /// One bit per slot that holds at least one node, to find the next deadline quickly.
    occupied: Box<[u64]>,
    /// Every tick up to and including this one has been processed.
    cursor: u64,
    len: usize,
}

#[inline]
fn tick_at_or_after(t: u64) -> u64 {
    t / TICK_NS + u64::from(t % TICK_NS != 0)
}

impl Wheel {
    pub fn new() -> Self {
        Wheel {
            heads: vec![NONE; SLOTS as usize].into_boxed_slice(),
            occupied: vec![0; SLOTS as usize / 64].into_boxed_slice(),
            cursor: 0,
            len: 0,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Files node `i` under its deadline `expires` (clamped into the wheel's span).
    pub fn insert<T: Timed>(&mut self, nodes: &mut [T], i: u32, expires: u64) {
        let k = tick_at_or_after(expires).clamp(self.cursor + 1, self.cursor + SLOTS - 1);
        let slot = (k % SLOTS) as u32;
        let head = self.heads[slot as usize];
        *nodes[i as usize].links() = Links {
            prev: NONE,
            next: head,
            slot,
        };
        if head != NONE {
            nodes[head as usize].links().prev = i;
        }
        self.heads[slot as usize] = i;
        self.occupied[slot as usize / 64] |= 1 << (slot % 64);
        self.len += 1;
    }

    /// Takes node `i` out of the wheel, if it is in it.
    pub fn remove<T: Timed>(&mut self, nodes: &mut [T], i: u32) {
        let l = *nodes[i as usize].links();
        if l.slot == NONE {
            return;
        }
        if l.prev != NONE {
            nodes[l.prev as usize].links().next = l.next;
        } else {
            self.heads[l.slot as usize] = l.next;
            if l.next == NONE {
                self.occupied[l.slot as usize / 64] &= !(1 << (l.slot % 64));
            }
        }
        if l.next != NONE {
            nodes[l.next as usize].links().prev = l.prev;
        }
        *nodes[i as usize].links() = Links::UNLINKED;
        self.len -= 1;
    }

    /// The time of the first occupied slot: nothing expires before it (it may hold only
    /// sessions that were refreshed since, which are then filed again).
    pub fn next_deadline(&self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let first = self.cursor + 1;
        let words = self.occupied.len() as u64;
        let (w0, b0) = ((first % SLOTS) / 64, (first % SLOTS) % 64);
        // Scan words from the cursor's, the first one masked, wrapping once.
        for n in 0..=words {
            let w = (w0 + n) % words;
            let mut bits = self.occupied[w as usize];
            if n == 0 {
                bits &= !0u64 << b0;
            }
            if bits != 0 {
                let slot = w * 64 + bits.trailing_zeros() as u64;
                let dist = (slot + SLOTS - first % SLOTS) % SLOTS;
                return Some((first + dist).saturating_mul(TICK_NS));
            }
        }
        None
    }

    /// Processes every tick up to `now`: nodes whose deadline has passed are unlinked and
    /// pushed to `expired`; the others are filed again under their current deadline.
    pub fn advance<T: Timed>(&mut self, nodes: &mut [T], now: u64, expired: &mut Vec<u32>) {
        let target = now / TICK_NS;
        if target <= self.cursor {
            return;
        }
        // After a long gap one turn of the wheel visits every slot once.
        if target - self.cursor > SLOTS {
            self.cursor = target - SLOTS;
        }
        while self.cursor < target {
            self.cursor += 1;
            let slot = (self.cursor % SLOTS) as usize;
            let mut i = self.heads[slot];
            if i == NONE {
                continue;
            }
            self.heads[slot] = NONE;
            self.occupied[slot / 64] &= !(1 << (slot % 64));
            while i != NONE {
                let next = nodes[i as usize].links().next;
                *nodes[i as usize].links() = Links::UNLINKED;
                self.len -= 1;
                let e = nodes[i as usize].expires();
                if e <= now {
                    expired.push(i);
                } else {
                    self.insert(nodes, i, e);
                }
                i = next;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct N(Links, u64);
    impl Timed for N {
        fn links(&mut self) -> &mut Links {
            &mut self.0
        }
        fn expires(&self) -> u64 {
            self.1
        }
    }

    const S: u64 = TICK_NS;

    #[test]
    fn expires_at_the_deadline_and_refiles_refreshed_nodes() {
        let mut nodes: Vec<N> = (0..3).map(|_| N(Links::UNLINKED, 0)).collect();
        let mut w = Wheel::new();
        nodes[0].1 = 10 * S;
        nodes[1].1 = 10 * S + 1;
        nodes[2].1 = 20_000 * S; // beyond one turn
        for i in 0..3 {
            let e = nodes[i].1;
            w.insert(&mut nodes, i as u32, e);
        }
        assert_eq!(w.next_deadline(), Some(10 * S));
        let mut out = Vec::new();
        w.advance(&mut nodes, 10 * S - 1, &mut out);
        assert!(out.is_empty());
        w.advance(&mut nodes, 10 * S, &mut out);
        assert_eq!(out, vec![0]);
        assert_eq!(w.next_deadline(), Some(11 * S));
        // Node 1 refreshed meanwhile: filed again, not expired.
        nodes[1].1 = 30 * S;
        w.advance(&mut nodes, 11 * S, &mut out);
        assert_eq!(out, vec![0]);
        assert_eq!(w.next_deadline(), Some(30 * S));
        w.remove(&mut nodes, 1);
        assert_eq!(w.len(), 1);
        // A long jump visits everything once and expires what is due.
        w.advance(&mut nodes, 25_000 * S, &mut out);
        assert_eq!(out, vec![0, 2]);
        assert_eq!(w.len(), 0);
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn deadlines_beyond_one_turn_wake_early_and_are_refiled() {
        let mut nodes = vec![N(Links::UNLINKED, 10_000 * S)];
        let mut w = Wheel::new();
        w.insert(&mut nodes, 0, 10_000 * S);
        let first = w.next_deadline().unwrap();
        assert!(first < 10_000 * S);
        let mut out = Vec::new();
        w.advance(&mut nodes, first, &mut out);
        assert!(out.is_empty());
        let mut t = w.next_deadline().unwrap();
        while t < 10_000 * S {
            w.advance(&mut nodes, t, &mut out);
            assert!(out.is_empty());
            t = w.next_deadline().unwrap();
        }
        assert_eq!(t, 10_000 * S);
        w.advance(&mut nodes, t, &mut out);
        assert_eq!(out, vec![0]);
    }
}
