//! Publishing tables to running engines.
//!
//! The control plane publishes each new [`Table`] into a [`TableCell`]; every worker calls
//! [`Engine::refresh`](super::Engine::refresh) before a batch. Checking costs one atomic load
//! of a generation number; only when it changed does the worker take the lock, clone the
//! `Arc` and adopt the table. A batch therefore always sees one whole table, and the hot path
//! never waits for the control plane.
//!
//! Whoever sleeps until the table changes (a worker in `epoll_wait`, the lab's reconciler)
//! registers a waker with [`TableCell::watch`]; every publication calls each waker once, after
//! the new table is in place. Nobody has to poll the generation on a timer.

use super::table::Table;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Called after each publication (from the publishing thread: keep it short, e.g. a write to
/// an eventfd or a channel send).
pub type Waker = Box<dyn Fn() + Send + Sync>;

/// What [`TableCell::watch`] returns, to end the watch with [`TableCell::unwatch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchId(u64);

pub struct TableCell {
    current: Mutex<(u64, Arc<Table>)>,
    generation: AtomicU64,
    watchers: Mutex<(u64, Vec<(u64, Waker)>)>,
}

impl std::fmt::Debug for TableCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableCell")
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl TableCell {
    pub fn new(table: Table) -> Self {
        TableCell {
            current: Mutex::new((1, Arc::new(table))),
            generation: AtomicU64::new(1),
            watchers: Mutex::new((0, Vec::new())),
        }
    }

    /// Makes `table` the one engines take at their next refresh and wakes every watcher;
    /// returns its generation.
    pub fn publish(&self, table: Table) -> u64 {
        let g = {
            let mut cur = self.current.lock().unwrap_or_else(PoisonError::into_inner);
            let g = cur.0 + 1;
            *cur = (g, Arc::new(table));
            // Released after the table is in place: whoever sees `g` finds that table.
            self.generation.store(g, Ordering::Release);
            g
        };
        let w = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, wake) in &w.1 {
            wake();
        }
        g
    }

    /// Calls `wake` after every publication from now on.
    pub fn watch(&self, wake: Waker) -> WatchId {
        let mut w = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        w.0 += 1;
        let id = w.0;
        w.1.push((id, wake));
        WatchId(id)
    }

    /// Ends a watch (unknown ids are ignored).
    pub fn unwatch(&self, id: WatchId) {
        let mut w = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        w.1.retain(|(i, _)| *i != id.0);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn publication_wakes_each_watcher_once_and_unwatch_stops_it() {
        let cell = TableCell::new(Table::empty());
        let a = Arc::new(AtomicUsize::new(0));
        let b = Arc::new(AtomicUsize::new(0));
        let (a2, b2) = (a.clone(), b.clone());
        let ida = cell.watch(Box::new(move || {
            a2.fetch_add(1, Ordering::SeqCst);
        }));
        cell.watch(Box::new(move || {
            b2.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(cell.publish(Table::empty()), 2);
        assert_eq!((a.load(Ordering::SeqCst), b.load(Ordering::SeqCst)), (1, 1));
        cell.unwatch(ida);
        assert_eq!(cell.publish(Table::empty()), 3);
        assert_eq!((a.load(Ordering::SeqCst), b.load(Ordering::SeqCst)), (1, 2));
    }

    #[test]
    fn a_waker_sees_the_new_table() {
        let cell = Arc::new(TableCell::new(Table::empty()));
        let seen = Arc::new(AtomicU64::new(0));
        let (c2, s2) = (Arc::downgrade(&cell), seen.clone());
        cell.watch(Box::new(move || {
            if let Some(c) = c2.upgrade() {
                s2.store(c.load().0, Ordering::SeqCst);
            }
        }));
        cell.publish(Table::empty());
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    }
}
