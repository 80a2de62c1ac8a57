//! Publishing tables to running engines.
//!
//! The control plane publishes each new [`Table`] into a [`TableCell`]; every worker calls
//! [`Engine::refresh`](super::Engine::refresh) before a batch. Checking costs one atomic load
//! of a generation number; only when it changed does the worker take the lock, clone the
//! `Arc` and adopt the table. A batch therefore always sees one whole table, and the hot path
//! never waits for the control plane.

use super::table::Table;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Debug)]
pub struct TableCell {
    current: Mutex<(u64, Arc<Table>)>,
    generation: AtomicU64,
}

impl TableCell {
    pub fn new(table: Table) -> Self {
        TableCell {
            current: Mutex::new((1, Arc::new(table))),
            generation: AtomicU64::new(1),
        }
    }

    /// Makes `table` the one engines take at their next refresh; returns its generation.
    pub fn publish(&self, table: Table) -> u64 {
        let mut cur = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let g = cur.0 + 1;
        *cur = (g, Arc::new(table));
        // Released after the table is in place: whoever sees `g` finds that table.
        self.generation.store(g, Ordering::Release);
        g
    }

    /// The generation of the newest table.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The newest table and its generation.
    pub fn load(&self) -> (u64, Arc<Table>) {
        let cur = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        (cur.0, cur.1.clone())
    }
}
