//! The TUN device behind the seam: a `tun-rs` device opened with offloads (`IFF_VNET_HDR`,
//! TSO and, where the kernel has it, USO), read and written with `readv`/`writev` so the
//! virtio-net header lands in the packet's [`Offload`] and the packet in its own buffer.

use super::device::{Batch, Device, Offload, Received};
use std::io;
use std::os::fd::{AsRawFd, RawFd};

pub struct TunDevice {
    dev: tun_rs::SyncDevice,
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
        Ok(TunDevice { dev })
    }

    fn fd(&self) -> RawFd {
        self.dev.as_raw_fd()
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
            let n = unsafe { libc::readv(self.fd(), iov.as_ptr(), 2) };
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
        let mut sent = 0;
        for &i in which {
            let i = i as usize;
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
            let n = unsafe { libc::writev(self.fd(), iov.as_ptr(), 2) };
            if n == (hdr.len() + pkt.len()) as isize {
                sent += 1;
            }
        }
        sent
    }

    fn ready_fd(&self) -> RawFd {
        self.fd()
    }
}

/// Opens a TUN device named `name` inside namespace `ns`, with offloads on (the virtio header
/// on every read and write; TSO and, where the kernel has it, USO). The device is down and
/// unaddressed: the caller configures it.
pub fn open_tun(ns: &str, name: &str) -> Result<TunDevice, String> {
    let n = name.to_string();
    let dev = crate::sys::netns::enter(ns, move || {
        tun_rs::DeviceBuilder::new()
            .name(n.clone())
            .offload(true)
            .mtu(1500)
            .enable(false)
            .build_sync()
            .map_err(|e| format!("cannot open TUN device {n}: {e}"))
    })??;
    TunDevice::new(dev).map_err(|e| format!("TUN device {name} in {ns}: {e}"))
}
