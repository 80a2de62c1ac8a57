//! An in-memory device: two queues and an eventfd, for tests and benches that drive the real
//! workers without root, and the base the in-process hosts can attach to.
//!
//! [`pair`] gives the gateway's end ([`MemDevice`], a [`Device`]) and the host's end
//! ([`MemHost`]): what the host sends, the gateway receives, and the reverse. The queue towards
//! the host is bounded; a send into a full queue is refused (the worker counts it), never
//! waited for.

use super::device::{Batch, Device, Offload, Received};
use super::poll::EventFd;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

type Packet = (Vec<u8>, Offload);

struct Shared {
    /// Host -> gateway. The eventfd is signalled while it is non-empty.
    to_gateway: Mutex<VecDeque<Packet>>,
    ready: EventFd,
    /// Gateway -> host, at most `capacity` packets waiting.
    to_host: Mutex<VecDeque<Packet>>,
    to_host_cv: Condvar,
    capacity: usize,
    /// The gateway's end has been dropped (its port removed, the dataplane stopped).
    device_dropped: AtomicBool,
    /// Called after the gateway queued packets for the host (see [`MemHost::on_arrival`]).
    on_arrival: OnceLock<Arrival>,
}

/// What [`MemHost::on_arrival`] calls.
pub type Arrival = Box<dyn Fn() + Send + Sync>;

/// The gateway's end.
pub struct MemDevice {
    s: Arc<Shared>,
}

/// The host's end.
#[derive(Clone)]
pub struct MemHost {
    s: Arc<Shared>,
}

/// A device whose queue towards the host holds at most `capacity` packets.
pub fn pair(capacity: usize) -> io::Result<(MemDevice, MemHost)> {
    let s = Arc::new(Shared {
        to_gateway: Mutex::new(VecDeque::new()),
        ready: EventFd::new()?,
        to_host: Mutex::new(VecDeque::new()),
        to_host_cv: Condvar::new(),
        capacity,
        device_dropped: AtomicBool::new(false),
        on_arrival: OnceLock::new(),
    });
    Ok((MemDevice { s: s.clone() }, MemHost { s }))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Device for MemDevice {
    fn recv(&self, batch: &mut Batch) -> io::Result<Received> {
        let mut q = lock(&self.s.to_gateway);
        let mut got = Received::default();
        while !batch.is_full() {
            let Some((bytes, off)) = q.pop_front() else {
                break;
            };
            if batch.push(&bytes, off) {
                got.packets += 1;
            } else {
                got.discarded += 1;
            }
        }
        if q.is_empty() {
            // Under the queue's lock: a packet the host adds now signals again.
            self.s.ready.clear();
        }
        Ok(got)
    }

    fn send(&self, batch: &Batch, which: &[u16]) -> usize {
        let mut q = lock(&self.s.to_host);
        let room = self.s.capacity.saturating_sub(q.len());
        let n = which.len().min(room);
        for &i in &which[..n] {
            q.push_back((batch.packet(i as usize).to_vec(), batch.offload[i as usize]));
        }
        drop(q);
        if n > 0 {
            self.s.to_host_cv.notify_all();
            if let Some(f) = self.s.on_arrival.get() {
                f();
            }
        }
        n
    }

    fn ready_fd(&self) -> RawFd {
        self.s.ready.as_raw_fd()
    }
}

impl Drop for MemDevice {
    fn drop(&mut self) {
        self.s.device_dropped.store(true, Ordering::Release);
        self.s.to_host_cv.notify_all();
    }
}

impl MemHost {
    /// Sends one packet towards the gateway.
    pub fn send(&self, packet: &[u8]) {
        self.send_all([(packet.to_vec(), Offload::default())]);
    }

    /// Sends packets towards the gateway at once: a worker that is asleep finds all of them
    /// when it wakes, so they arrive as one batch (up to its size).
    pub fn send_all(&self, packets: impl IntoIterator<Item = Packet>) {
        let mut q = lock(&self.s.to_gateway);
        q.extend(packets);
        if !q.is_empty() {
            self.s.ready.signal();
        }
    }

    /// The next packet the gateway sent, waiting up to `limit`.
    pub fn recv_timeout(&self, limit: Duration) -> Option<Packet> {
        let deadline = Instant::now() + limit;
        let mut q = lock(&self.s.to_host);
        loop {
            if let Some(p) = q.pop_front() {
                return Some(p);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            q = self
                .s
                .to_host_cv
                .wait_timeout(q, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The next packet the gateway sent, if one is waiting (never blocks).
    pub fn try_recv(&self) -> Option<Packet> {
        lock(&self.s.to_host).pop_front()
    }

    /// Waits until `n` packets have arrived (or `limit` passed), then takes everything there.
    pub fn recv_n(&self, n: usize, limit: Duration) -> Vec<Packet> {
        let deadline = Instant::now() + limit;
        let mut q = lock(&self.s.to_host);
        while q.len() < n {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            q = self
                .s
                .to_host_cv
                .wait_timeout(q, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        q.drain(..).collect()
    }

    /// Everything the gateway sent so far.
    pub fn drain(&self) -> Vec<Packet> {
        lock(&self.s.to_host).drain(..).collect()
    }

    /// Packets the gateway sent that the host has not taken yet.
    pub fn waiting(&self) -> usize {
        lock(&self.s.to_host).len()
    }

    /// Calls `f` (outside the queue's lock) each time the gateway queues packets for this
    /// host: how an in-process host learns it has something to read without polling. Set
    /// once; later calls are ignored.
    pub fn on_arrival(&self, f: Arrival) {
        let _ = self.s.on_arrival.set(f);
    }

    /// Packets sent towards the gateway and not yet taken by it.
    pub fn pending(&self) -> usize {
        lock(&self.s.to_gateway).len()
    }

    /// Whether the gateway has let go of its end.
    pub fn device_dropped(&self) -> bool {
        self.s.device_dropped.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_cross_both_ways_and_a_full_queue_refuses() {
        let (dev, host) = pair(2).unwrap();
        host.send_all([
            (vec![1], Offload::default()),
            (vec![2, 2], Offload::default()),
        ]);
        let mut b = Batch::new(4, 16);
        let got = dev.recv(&mut b).unwrap();
        assert_eq!(got.packets, 2);
        assert_eq!((b.packet(0), b.packet(1)), (&[1u8][..], &[2u8, 2][..]));
        // Nothing more: the eventfd is cleared, a second read finds nothing.
        assert_eq!(dev.recv(&mut b).unwrap().packets, 0);
        b.push(&[3], Offload::default());
        assert_eq!(dev.send(&b, &[0, 1, 2]), 2, "room for two only");
        assert_eq!(host.recv_n(2, Duration::from_secs(1)).len(), 2);
        assert_eq!(dev.send(&b, &[2]), 1);
        assert_eq!(
            host.recv_timeout(Duration::from_secs(1)).unwrap().0,
            vec![3]
        );
        assert!(!host.device_dropped());
        drop(dev);
        assert!(host.device_dropped());
    }
}
