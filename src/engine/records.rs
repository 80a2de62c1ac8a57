//! An engine's own per-EIP records: what a packet through an EIP needs, in one cache line.
//!
//! Each engine keeps two hash tables of 64-byte [`Rec`]ords built from the [`Table`] it
//! takes: `inbound`, keyed by the EIP (internet -> guest), and `outbound`, keyed by the
//! address a guest sends from (the mapped private IP in NAT mode, the EIP itself in
//! cut-through, and every other private IP with no EIP: those records have no slot and
//! address 0, and say only whose the address is, so a source nobody owns is known at once). A record is its own hash slot, and holds everything the common path reads
//! and writes: the key, the address to translate to, the ENI, whether the EIP can deliver at
//! all (worked out once per table), the policer's precomputed rate and burst, its tokens, and
//! the packets and bytes it forwarded. So a packet through an EIP touches one line of table
//! state, whose address depends only on the packet's own bytes: a batch can fetch it ahead
//! with no dependent load ([`Records::prefetch`]).
//!
//! The per-ENI counters are not on that line: an ENI's count is what its records forwarded
//! plus what the engine counted for it directly (traffic no record carries, and records of
//! earlier tables, folded in when a new table is taken), summed when read.

use super::stats::{Bucket, Counter, DropReason, Policer};
use super::table::{AssociationMode, EipSlot, EniId, Kind, Table};
use core::ptr::NonNull;
use std::sync::Arc;

/// Where an engine's records live, when not on the heap: the shell can give memory backed by
/// huge pages, so that a table of 100,000 EIPs (2 × 16 MiB of records) costs a few TLB
/// entries instead of thousands. The engine itself makes no system call.
pub trait RecordMemory: Send + Sync + core::fmt::Debug {
    /// `bytes` of zeroed, writable memory aligned to 64 bytes, or `None` to use the heap.
    fn allocate(&self, bytes: usize) -> Option<NonNull<u8>>;

    /// Gives back what [`RecordMemory::allocate`] returned.
    ///
    /// # Safety
    /// `p` came from `allocate(bytes)` on this memory and is no longer used.
    unsafe fn release(&self, p: NonNull<u8>, bytes: usize);
}

/// The slots of a [`Records`]: a boxed slice, or memory from a [`RecordMemory`].
struct Slots {
    ptr: NonNull<Rec>,
    len: usize,
    from: Option<Arc<dyn RecordMemory>>,
}

// SAFETY: `Slots` owns its memory exclusively (like a `Box<[Rec]>`), and `Rec` is plain data.
unsafe impl Send for Slots {}
// SAFETY: shared access only reads, as for a `Box<[Rec]>`.
unsafe impl Sync for Slots {}

impl Slots {
    fn new(len: usize, memory: Option<&Arc<dyn RecordMemory>>) -> Slots {
        let bytes = len * core::mem::size_of::<Rec>();
        if let Some(m) = memory {
            if let Some(p) = m.allocate(bytes) {
                assert!(
                    p.as_ptr() as usize % core::mem::align_of::<Rec>() == 0,
                    "record memory must be aligned to 64 bytes"
                );
                // Zeroed memory is a valid `Rec` (every field is an integer, or an `Option`
                // of a fieldless enum whose first variant is 0) with key 0: an empty slot.
                return Slots {
                    ptr: p.cast(),
                    len,
                    from: Some(m.clone()),
                };
            }
        }
        let b: Box<[Rec]> = vec![Rec::default(); len].into_boxed_slice();
        Slots {
            // SAFETY: `Box::into_raw` never returns null.
            ptr: unsafe { NonNull::new_unchecked(Box::into_raw(b) as *mut Rec) },
            len,
            from: None,
        }
    }
}

impl core::ops::Deref for Slots {
    type Target = [Rec];
    #[inline(always)]
    fn deref(&self) -> &[Rec] {
        // SAFETY: `ptr` points to `len` initialised records that this value owns.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl core::ops::DerefMut for Slots {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut [Rec] {
        // SAFETY: as for `deref`, and `&mut self` makes the access exclusive.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        match &self.from {
            // SAFETY: allocated by this memory with this size, and dropped once.
            Some(m) => unsafe {
                m.release(self.ptr.cast(), self.len * core::mem::size_of::<Rec>())
            },
            // SAFETY: came from `Box::into_raw` of a boxed slice of `len` records.
            None => drop(unsafe {
                Box::from_raw(core::ptr::slice_from_raw_parts_mut(
                    self.ptr.as_ptr(),
                    self.len,
                ))
            }),
        }
    }
}

impl core::fmt::Debug for Slots {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} record slots", self.len)?;
        if let Some(m) = &self.from {
            write!(f, " in {m:?}")?;
        }
        Ok(())
    }
}

/// One EIP in one direction: 64 bytes, one cache line.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
pub(crate) struct Rec {
    /// The address looked up (0: an empty slot; 0.0.0.0 is never programmed).
    pub key: u32,
    /// Inbound: the address the packet is delivered to (the private IP in NAT mode, the EIP
    /// in cut-through). Outbound: the EIP the source speaks through (0: none).
    pub addr: u32,
    /// The EIP's slot (outbound records of private IPs without an EIP: NONE).
    pub slot: EipSlot,
    /// Inbound: the ENI the EIP delivers to. Outbound: the ENI that owns the source.
    pub eni: EniId,
    /// `None` when the EIP is associated and its ENI can take or send traffic; otherwise
    /// what such a packet is dropped for.
    pub refuse: Option<DropReason>,
    /// The association's mode (`None`: unassociated, inbound only).
    pub mode: Option<AssociationMode>,
    pub policer: Policer,
    pub bucket: Bucket,
    /// Forwarded through this record since it was built.
    pub count: Counter,
}

const _: () = assert!(core::mem::size_of::<Rec>() == 64);

/// Open addressing with linear probing, load at most one half, 64-bit Fibonacci hashing:
/// consecutive addresses (EIP pools) land in distinct slots, and so do the clustered private
/// IPs of many small subnets, where the 32-bit product left 1.56 probes per lookup on
/// average against 1.12 (each probe a further cache line, since a record is one).
#[derive(Debug)]
pub(crate) struct Records {
    slots: Slots,
    mask: usize,
    shift: u32,
}

impl Records {
    pub fn with_capacity(n: usize, memory: Option<&Arc<dyn RecordMemory>>) -> Records {
        let cap = (n * 2).next_power_of_two().max(16);
        Records {
            slots: Slots::new(cap, memory),
            mask: cap - 1,
            shift: 64 - cap.trailing_zeros(),
        }
    }

    #[inline(always)]
    fn home(&self, key: u32) -> usize {
        ((key as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// Adds a record whose key is not yet present (the table builder checked uniqueness);
    /// returns its index.
    fn insert(&mut self, r: Rec) -> u32 {
        debug_assert!(r.key != 0);
        let mut i = self.home(r.key);
        while self.slots[i].key != 0 {
            debug_assert!(self.slots[i].key != r.key, "duplicate record key");
            i = (i + 1) & self.mask;
        }
        self.slots[i] = r;
        i as u32
    }

    /// The index of the record for `key`.
    #[inline(always)]
    pub fn find(&self, key: u32) -> Option<u32> {
        if key == 0 {
            return None;
        }
        let mut i = self.home(key);
        loop {
            let k = self.slots[i].key;
            if k == key {
                return Some(i as u32);
            }
            if k == 0 {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Starts fetching the line `key`'s lookup reads first.
    #[inline(always)]
    pub fn prefetch(&self, key: u32) {
        super::prefetch(self.slots.as_ptr().wrapping_add(self.home(key)));
    }

    #[inline(always)]
    pub fn get(&self, i: u32) -> &Rec {
        &self.slots[i as usize]
    }

    #[inline(always)]
    pub fn get_mut(&mut self, i: u32) -> &mut Rec {
        &mut self.slots[i as usize]
    }

    /// The records present.
    pub fn iter(&self) -> impl Iterator<Item = &Rec> + '_ {
        self.slots.iter().filter(|r| r.key != 0)
    }

    pub fn bytes(&self) -> usize {
        core::mem::size_of_val(&*self.slots)
    }
}

/// What a packet to an associated EIP, or from its source, is dropped for when the ENI cannot
/// take it (D7): `None` when it can.
fn refusal(t: &Table, eni: EniId) -> Option<DropReason> {
    super::refusal(t.eni(eni as u32))
}

/// Builds an engine's two record tables for `t`, in `memory` if given. `bucket(slot)` gives
/// the tokens each direction's policer starts with (carried over from the previous table).
pub(crate) fn build(
    t: &Table,
    memory: Option<&Arc<dyn RecordMemory>>,
    mut bucket: impl FnMut(EipSlot) -> (Bucket, Bucket),
) -> (Records, Records, Vec<(EipSlot, u32, u32)>) {
    let associated = t.eips.iter().filter(|e| e.association.is_some()).count();
    // Private IPs that speak through no EIP get an outbound record too (address 0, no slot),
    // so that a source nobody owns is known from one lookup.
    let unmapped = t
        .map
        .iter()
        .filter(|e| e.kind == Kind::Private && e.other == 0);
    let mut inbound = Records::with_capacity(t.eips.len(), memory);
    let mut outbound = Records::with_capacity(associated + unmapped.clone().count(), memory);
    for e in unmapped {
        outbound.insert(Rec {
            key: e.key,
            slot: super::NONE,
            eni: e.eni,
            refuse: refusal(t, e.eni),
            ..Rec::default()
        });
    }
    let mut index = Vec::with_capacity(t.eips.len());
    for e in &t.eips {
        let policer = Policer::from_mbps(e.bandwidth_mbps);
        let (in_bucket, out_bucket) = bucket(e.slot);
        let base = Rec {
            key: e.address,
            slot: e.slot,
            policer,
            bucket: in_bucket,
            ..Rec::default()
        };
        match e.association {
            None => {
                let i = inbound.insert(Rec {
                    refuse: Some(DropReason::EipUnassociated),
                    ..base
                });
                index.push((e.slot, i, super::NONE));
            }
            Some((mode, eni, to)) => {
                let refuse = refusal(t, eni);
                let i = inbound.insert(Rec {
                    addr: to,
                    eni,
                    refuse,
                    mode: Some(mode),
                    ..base
                });
                let o = outbound.insert(Rec {
                    key: if mode == AssociationMode::Nat {
                        to
                    } else {
                        e.address
                    },
                    addr: e.address,
                    bucket: out_bucket,
                    eni,
                    refuse,
                    mode: Some(mode),
                    ..base
                });
                index.push((e.slot, i, o));
            }
        }
    }
    (inbound, outbound, index)
}
