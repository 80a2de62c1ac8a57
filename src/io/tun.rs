//! The TUN device behind the seam: a `tun-rs` device opened with offloads (`IFF_VNET_HDR`,
//! TSO and, where the kernel has it, USO), read and written with `readv`/`writev` so the
//! virtio-net header lands in the packet's [`Offload`] and the packet in its own buffer.

use super::coalesce::{Coalescer, Write};
use super::device::{Batch, Device, Offload, Received};
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// `readv(2)` as the bare system call. The C library's `readv` and `writev` are thread
/// cancellation points and wrap every call in enabling and disabling asynchronous
/// cancellation (4% of the gateway's time with 64-byte packets, by `perf`); nothing here
/// uses thread cancellation.
///
/// # Safety
/// Every iovec must describe memory writable for its length.
#[inline]
unsafe fn raw_readv(fd: RawFd, iov: &[libc::iovec]) -> isize {
    libc::syscall(libc::SYS_readv, fd, iov.as_ptr(), iov.len() as libc::c_int) as isize
}

/// `writev(2)` as the bare system call (see [`raw_readv`]).
///
/// # Safety
/// Every iovec must describe memory readable for its length.
#[inline]
unsafe fn raw_writev(fd: RawFd, iov: &[libc::iovec]) -> isize {
    libc::syscall(libc::SYS_writev, fd, iov.as_ptr(), iov.len() as libc::c_int) as isize
}

/// `TUNSETPERSIST` (linux/if_tun.h: `_IOW('T', 203, int)`).
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;

pub struct TunDevice {
    dev: tun_rs::SyncDevice,
    /// When set as the device is dropped, the interface is made persistent first, so closing
    /// the descriptor leaves it to its namespace's removal (see [`open_tun`]).
    leave_to_namespace: Option<Arc<AtomicBool>>,
    /// Merge bursts of one UDP flow into segmented super-packets ([`super::coalesce`]): set
    /// where the kernel takes UDP segmentation offload from a TUN writer.
    coalesce: bool,
}

thread_local! {
    /// Each sending worker's coalescing plan and buffer (any worker may send to any device).
    static COALESCER: RefCell<Coalescer> = RefCell::new(Coalescer::new());
}

impl TunDevice {
    /// Takes an opened device (with offloads on) and makes its descriptor non-blocking.
    pub fn new(dev: tun_rs::SyncDevice) -> io::Result<TunDevice> {
        let fd = dev.as_raw_fd();
        // SAFETY: fcntl on a descriptor the device holds, with flags it just returned.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let coalesce = dev.udp_gso();
        Ok(TunDevice {
            dev,
            leave_to_namespace: None,
            coalesce,
        })
    }

    /// Turns UDP coalescing off (or on again where the kernel has UDP segmentation offload).
    pub fn set_coalesce(&mut self, on: bool) {
        self.coalesce = on && self.dev.udp_gso();
    }

    /// Writes one packet with its virtio header; whether the device took it whole.
    #[inline]
    fn write_one(&self, batch: &Batch, i: usize) -> bool {
        let hdr = batch.offload[i].encode();
        let pkt = batch.packet(i);
        let iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut _,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: pkt.as_ptr() as *mut _,
                iov_len: pkt.len(),
            },
        ];
        // SAFETY: both iovecs point into buffers that outlive the call; writev only reads.
        let n = unsafe { raw_writev(self.fd(), &iov) };
        n == (hdr.len() + pkt.len()) as isize
    }

    fn fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }
}

impl Drop for TunDevice {
    fn drop(&mut self) {
        if self
            .leave_to_namespace
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Acquire))
        {
            // SAFETY: an ioctl with an integer argument on the descriptor we still hold. If it
            // fails, closing unregisters the interface as usual (only slower).
            unsafe {
                libc::ioctl(self.fd(), TUNSETPERSIST, 1 as libc::c_int);
            }
        }
    }
}

impl Device for TunDevice {
    fn recv(&self, batch: &mut Batch) -> io::Result<Received> {
        let mut got = Received::default();
        while !batch.is_full() {
            let i = batch.len;
            let mut hdr = [0u8; Offload::LEN];
            let pkt = &mut batch.pkts[i];
            let iov = [
                libc::iovec {
                    iov_base: hdr.as_mut_ptr().cast(),
                    iov_len: hdr.len(),
                },
                libc::iovec {
                    iov_base: pkt.data.as_mut_ptr().cast(),
                    iov_len: pkt.data.len(),
                },
            ];
            // SAFETY: both iovecs point into buffers we own, of the lengths given.
            let n = unsafe { raw_readv(self.fd(), &iov) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(got),
                    io::ErrorKind::Interrupted => continue,
                    _ if got.packets + got.discarded > 0 => Ok(got),
                    _ => Err(e),
                };
            }
            let n = n as usize;
            if n < Offload::LEN {
                got.discarded += 1;
                continue;
            }
            let off = Offload::decode(&hdr);
            pkt.len = n - Offload::LEN;
            pkt.flags = off.packet_flags();
            batch.offload[i] = off;
            batch.len += 1;
            got.packets += 1;
        }
        Ok(got)
    }

    fn send(&self, batch: &Batch, which: &[u16]) -> usize {
        if !self.coalesce || which.len() < 2 {
            return which
                .iter()
                .filter(|&&i| self.write_one(batch, i as usize))
                .count();
        }
        COALESCER.with(|c| {
            let mut c = c.borrow_mut();
            let writes = c.plan(batch, which).len();
            let mut sent = 0;
            for j in 0..writes {
                match c.writes()[j] {
                    Write::One(i) => sent += usize::from(self.write_one(batch, i as usize)),
                    Write::Merged(k) => {
                        let members = c.group(k).len();
                        let buf = c.build(batch, k);
                        // SAFETY: writes from a buffer we own, of its length.
                        let n = unsafe {
                            libc::syscall(libc::SYS_write, self.fd(), buf.as_ptr(), buf.len())
                        };
                        if n == buf.len() as libc::c_long {
                            sent += members;
                        } else {
                            // Refused whole (a kernel that takes no UDP segmentation from a
                            // writer after all): the datagrams go one by one.
                            for m in 0..members {
                                let i = c.group(k)[m] as usize;
                                sent += usize::from(self.write_one(batch, i));
                            }
                        }
                    }
                }
            }
            sent
        })
    }

    fn ready_fd(&self) -> RawFd {
        self.fd()
    }
}

/// Opens a TUN device named `name` in the calling thread's network namespace (visit the
/// namespace first: `sys::netns::NetnsHandle::run`), with offloads on (the virtio header on
/// every read and write; TSO and, where the kernel has it, USO). The device is down and
/// unaddressed: the caller configures it.
///
/// Closing a TUN descriptor unregisters its interface, one interface at a time, each waiting
/// for the kernel's RCU grace periods: about 20 ms apiece, 20 s for a 1,000-instance lab. With
/// `leave_to_namespace` set when the device is dropped, the interface is made persistent
/// instead and outlives the descriptor; removing its namespace then removes it, and the kernel
/// removes the interfaces of all namespaces deleted together in one batch. (An interface with
/// link operations, as TUN has, is deleted with its namespace, never moved to the host's.)
pub fn open_tun(
    name: &str,
    leave_to_namespace: Option<Arc<AtomicBool>>,
) -> Result<TunDevice, String> {
    let dev = tun_rs::DeviceBuilder::new()
        .name(name.to_string())
        .offload(true)
        .mtu(1500)
        .enable(false)
        .build_sync()
        .map_err(|e| format!("cannot open TUN device {name}: {e}"))?;
    let mut t = TunDevice::new(dev).map_err(|e| format!("TUN device {name}: {e}"))?;
    t.leave_to_namespace = leave_to_namespace;
    Ok(t)
}
