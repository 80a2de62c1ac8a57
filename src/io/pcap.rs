//! `--pcap DIR`: one classic pcap file per lab interface, raw IPv4 (LINKTYPE_RAW), both
//! directions as the gateway sees them. GSO super-packets are written as they crossed the
//! device (up to 64 KB), as tcpdump shows them on an interface with offloads.

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::DataLink;
use std::fs::File;
use std::path::Path;
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
