//! Fragments: the first fragment's ALG decision binds the whole datagram.
//!
//! Only the first fragment has ports and a payload start, so only it can be classified. Its
//! decision is remembered under (ingress, src, dst, protocol, id); later fragments follow it.
//! Fragments that arrive before their first fragment are copied and held, bounded in number
//! and bytes, until it comes (then they are released) or until the timeout drops them.

use super::stats::DropReason;
use super::{PacketFlags, Side};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FragKey {
    pub ingress: Side,
    pub src: u32,
    pub dst: u32,
    pub ident: u16,
    pub protocol: u8,
}

/// A fragment waiting for its first fragment.
#[derive(Clone, Debug)]
pub(crate) struct HeldFragment {
    pub ingress: Side,
    pub data: Vec<u8>,
    pub flags: PacketFlags,
}

#[derive(Debug)]
enum State {
    Pending(Vec<HeldFragment>),
    /// `None`: pass; `Some(r)`: drop with `r`.
    Decided(Option<DropReason>),
}

#[derive(Debug)]
struct Entry {
    state: State,
    expires: u64,
}

/// A small multiplicative hasher: keys are a handful of integers and the table is bounded,
/// so SipHash's flood resistance buys nothing here.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(i as u64)
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(i as u64)
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64)
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64)
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// What the table knows of a non-first fragment's datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    Pass,
    Drop(DropReason),
    Unknown,
}

#[derive(Debug)]
pub(crate) struct FragTable {
    map: HashMap<FragKey, Entry, BuildHasherDefault<KeyHasher>>,
    order: VecDeque<(u64, FragKey)>,
    capacity: usize,
    timeout_ns: u64,
    held_bytes: usize,
    max_held_bytes: usize,
}

impl FragTable {
    pub fn new(capacity: usize, timeout_ns: u64, max_held_bytes: usize) -> Self {
        FragTable {
            map: HashMap::default(),
            order: VecDeque::new(),
            capacity,
            timeout_ns,
            held_bytes: 0,
            max_held_bytes,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn lookup(&self, key: &FragKey) -> Lookup {
        match self.map.get(key).map(|e| &e.state) {
            Some(State::Decided(None)) => Lookup::Pass,
            Some(State::Decided(Some(r))) => Lookup::Drop(*r),
            _ => Lookup::Unknown,
        }
    }

    /// Makes room for one more entry, expiring what is due; `expired` receives held
    /// fragments that timed out.
    fn room(&mut self, now: u64, expired: &mut Vec<HeldFragment>) -> bool {
        self.expire(now, expired);
        self.map.len() < self.capacity
    }

    /// Records the first fragment's decision. Returns the fragments that were waiting for it,
    /// or `Err` when the table is full.
    pub fn decide(
        &mut self,
        now: u64,
        key: FragKey,
        decision: Option<DropReason>,
        expired: &mut Vec<HeldFragment>,
    ) -> Result<Vec<HeldFragment>, DropReason> {
        let expires = now.saturating_add(self.timeout_ns);
        if let Some(e) = self.map.get_mut(&key) {
            let old = core::mem::replace(&mut e.state, State::Decided(decision));
            e.expires = expires;
            self.order.push_back((expires, key));
            return Ok(match old {
                State::Pending(held) => {
                    self.held_bytes -= held.iter().map(|h| h.data.len()).sum::<usize>();
                    held
                }
                State::Decided(_) => Vec::new(),
            });
        }
        if !self.room(now, expired) {
            return Err(DropReason::FragmentTableFull);
        }
        self.map.insert(
            key,
            Entry {
                state: State::Decided(decision),
                expires,
            },
        );
        self.order.push_back((expires, key));
        Ok(Vec::new())
    }

    /// Fragments waiting under `key`, handed back for release (the datagram passes). Empty
    /// when nothing waits; cheap when the table is empty.
    pub fn take_pending(&mut self, key: &FragKey) -> Vec<HeldFragment> {
        if self.map.is_empty() {
            return Vec::new();
        }
        match self.map.get_mut(key) {
            Some(e) => match core::mem::replace(&mut e.state, State::Decided(None)) {
                State::Pending(held) => {
                    self.held_bytes -= held.iter().map(|h| h.data.len()).sum::<usize>();
                    held
                }
                decided => {
                    e.state = decided;
                    Vec::new()
                }
            },
            None => Vec::new(),
        }
    }

    /// Keeps a copy of a fragment until its first fragment decides.
    pub fn hold(
        &mut self,
        now: u64,
        key: FragKey,
        frag: HeldFragment,
        expired: &mut Vec<HeldFragment>,
    ) -> Result<(), DropReason> {
        if self.held_bytes + frag.data.len() > self.max_held_bytes {
            self.expire(now, expired);
            if self.held_bytes + frag.data.len() > self.max_held_bytes {
                return Err(DropReason::FragmentTableFull);
            }
        }
        if !self.map.contains_key(&key) {
            if !self.room(now, expired) {
                return Err(DropReason::FragmentTableFull);
            }
            let expires = now.saturating_add(self.timeout_ns);
            self.map.insert(
                key,
                Entry {
                    state: State::Pending(Vec::new()),
                    expires,
                },
            );
            self.order.push_back((expires, key));
        }
        match self.map.get_mut(&key).map(|e| &mut e.state) {
            Some(State::Pending(v)) => {
                self.held_bytes += frag.data.len();
                v.push(frag);
                Ok(())
            }
            // Decided meanwhile (cannot happen within one call, but stay total).
            _ => Err(DropReason::FragmentTableFull),
        }
    }

    /// Removes entries whose time is up; their held fragments go to `expired`.
    pub fn expire(&mut self, now: u64, expired: &mut Vec<HeldFragment>) {
        while let Some(&(at, key)) = self.order.front() {
            if at > now {
                break;
            }
            self.order.pop_front();
            // An entry refreshed by a later decision has a later `expires`: keep it.
            if self.map.get(&key).map(|e| e.expires <= now) == Some(true) {
                if let Some(Entry {
                    state: State::Pending(held),
                    ..
                }) = self.map.remove(&key)
                {
                    self.held_bytes -= held.iter().map(|h| h.data.len()).sum::<usize>();
                    expired.extend(held);
                }
            }
        }
    }

    /// When the next entry expires.
    pub fn next_expiry(&self) -> Option<u64> {
        self.order.front().map(|&(t, _)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u16) -> FragKey {
        FragKey {
            ingress: Side::Internet,
            src: 1,
            dst: 2,
            ident: id,
            protocol: 17,
        }
    }

    fn frag(n: usize) -> HeldFragment {
        HeldFragment {
            ingress: Side::Internet,
            data: vec![0; n],
            flags: PacketFlags::default(),
        }
    }

    #[test]
    fn held_fragments_are_released_by_the_decision() {
        let mut t = FragTable::new(4, 1000, 10_000);
        let mut ex = Vec::new();
        assert_eq!(t.lookup(&key(1)), Lookup::Unknown);
        t.hold(0, key(1), frag(100), &mut ex).unwrap();
        t.hold(0, key(1), frag(100), &mut ex).unwrap();
        let released = t.decide(5, key(1), None, &mut ex).unwrap();
        assert_eq!(released.len(), 2);
        assert_eq!(t.lookup(&key(1)), Lookup::Pass);
        assert_eq!(t.held_bytes, 0);
        t.decide(6, key(2), Some(DropReason::AlgSip), &mut ex)
            .unwrap();
        assert_eq!(t.lookup(&key(2)), Lookup::Drop(DropReason::AlgSip));
    }

    #[test]
    fn bounded_in_entries_and_bytes_and_expires() {
        let mut t = FragTable::new(2, 1000, 250);
        let mut ex = Vec::new();
        t.hold(0, key(1), frag(100), &mut ex).unwrap();
        t.hold(0, key(2), frag(100), &mut ex).unwrap();
        assert_eq!(
            t.hold(0, key(3), frag(10), &mut ex),
            Err(DropReason::FragmentTableFull)
        );
        assert_eq!(
            t.hold(0, key(1), frag(100), &mut ex),
            Err(DropReason::FragmentTableFull)
        );
        assert_eq!(t.next_expiry(), Some(1000));
        // After the timeout both pending entries expire and hand back their fragments.
        t.hold(1000, key(3), frag(10), &mut ex).unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(t.len(), 1);
        assert_eq!(t.held_bytes, 10);
    }

    #[test]
    fn a_refreshed_entry_outlives_its_first_deadline() {
        let mut t = FragTable::new(4, 1000, 1000);
        let mut ex = Vec::new();
        t.decide(0, key(1), None, &mut ex).unwrap();
        t.decide(900, key(1), None, &mut ex).unwrap();
        t.expire(1000, &mut ex);
        assert_eq!(t.lookup(&key(1)), Lookup::Pass);
        t.expire(1900, &mut ex);
        assert_eq!(t.lookup(&key(1)), Lookup::Unknown);
    }
}
