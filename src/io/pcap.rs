//! `--pcap DIR`: one classic pcap file per lab interface, raw IPv4 (LINKTYPE_RAW), both
//! directions as the gateway sees them. GSO super-packets are written as they crossed the
//! device (up to 64 KB), as tcpdump shows them on an interface with offloads.
//!
//! [`Tap`] wraps any [`Device`]: what it receives is written before the engine sees it (as the
//! namespace sent it), what it sends after the engine rewrote it.

use super::device::{Batch, Device, Received};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::DataLink;
use std::fs::File;
use std::io;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

pub struct Capture {
    writer: PcapWriter<File>,
    failed: bool,
}

impl Capture {
    /// Creates (or truncates) `dir/name.pcap`.
    pub fn create(dir: &Path, name: &str) -> Result<Capture, String> {
        let path = dir.join(format!("{name}.pcap"));
        let file = File::create(&path)
            .map_err(|e| format!("--pcap: cannot create {}: {e}", path.display()))?;
        let header = PcapHeader {
            datalink: DataLink::RAW,
            snaplen: 65_535 + 1024,
            ..PcapHeader::default()
        };
        let writer = PcapWriter::with_header(file, header)
            .map_err(|e| format!("--pcap: cannot write {}: {e}", path.display()))?;
        Ok(Capture {
            writer,
            failed: false,
        })
    }

    /// Appends one packet; the first failure is logged and capture stops for this file.
    pub fn write(&mut self, packet: &[u8]) {
        if self.failed {
            return;
        }
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let p = PcapPacket::new(ts, packet.len() as u32, packet);
        if let Err(e) = self.writer.write_packet(&p) {
            tracing::warn!("pcap write failed, capture stopped: {e}");
            self.failed = true;
        }
    }
}

/// A device whose traffic, both ways, is also written to a [`Capture`].
pub struct Tap<D> {
    inner: D,
    capture: Mutex<Capture>,
}

impl<D: Device> Tap<D> {
    pub fn new(inner: D, capture: Capture) -> Tap<D> {
        Tap {
            inner,
            capture: Mutex::new(capture),
        }
    }
}

impl<D: Device> Device for Tap<D> {
    fn recv(&self, batch: &mut Batch) -> io::Result<Received> {
        let first = batch.len;
        let got = self.inner.recv(batch)?;
        if batch.len > first {
            let mut c = self.capture.lock().unwrap_or_else(PoisonError::into_inner);
            for i in first..batch.len {
                c.write(batch.packet(i));
            }
        }
        Ok(got)
    }

    fn send(&self, batch: &Batch, which: &[u16]) -> usize {
        {
            let mut c = self.capture.lock().unwrap_or_else(PoisonError::into_inner);
            for &i in which {
                c.write(batch.packet(i as usize));
            }
        }
        self.inner.send(batch, which)
    }

    fn ready_fd(&self) -> RawFd {
        self.inner.ready_fd()
    }
}
