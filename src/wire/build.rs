//! Building whole packets with valid checksums: for tests, benchmarks, fuzz seeds and the
//! lab's own probes. Allocates; never on the hot path.

use super::checksum;
use super::ipv4::{protocol, Ipv4Repr, MIN_HEADER_LEN};
use core::net::Ipv4Addr;

/// An IPv4 packet with a 20-byte header around `payload` (TTL 64, DF clear).
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; MIN_HEADER_LEN + payload.len()];
    Ipv4Repr {
        src,
        dst,
        protocol: proto,
        ttl: 64,
        ident: 0x4242,
        dont_frag: false,
        payload_len: payload.len(),
    }
    .emit(&mut p);
    p[MIN_HEADER_LEN..].copy_from_slice(payload);
    p
}

fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, seg: &[u8]) -> u16 {
    let ph = checksum::pseudo_header(src.into(), dst.into(), proto, seg.len() as u32);
    !checksum::fold(checksum::sum(ph, seg))
}

/// A UDP datagram with a valid checksum.
pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut seg = vec![0u8; 8 + payload.len()];
    seg[0..2].copy_from_slice(&sport.to_be_bytes());
    seg[2..4].copy_from_slice(&dport.to_be_bytes());
    let n = seg.len() as u16;
    seg[4..6].copy_from_slice(&n.to_be_bytes());
    seg[8..].copy_from_slice(payload);
    let c = match l4_checksum(src, dst, protocol::UDP, &seg) {
        0 => 0xffff,
        c => c,
    };
    seg[6..8].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, protocol::UDP, &seg)
}

/// A TCP segment (20-byte header, given flags, window 65535) with a valid checksum.
pub fn tcp(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut seg = vec![0u8; 20 + payload.len()];
    seg[0..2].copy_from_slice(&sport.to_be_bytes());
    seg[2..4].copy_from_slice(&dport.to_be_bytes());
    seg[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    seg[8..12].copy_from_slice(&0x0a0b_0c0du32.to_be_bytes());
    seg[12] = 5 << 4;
    seg[13] = flags;
    seg[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    seg[20..].copy_from_slice(payload);
    let c = l4_checksum(src, dst, protocol::TCP, &seg);
    seg[16..18].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, protocol::TCP, &seg)
}

/// An ICMP message of any type with a valid checksum; `rest` is the second header word
/// (identifier and sequence for echo).
pub fn icmp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    msg_type: u8,
    code: u8,
    rest: u32,
    body: &[u8],
) -> Vec<u8> {
    let mut m = vec![0u8; 8 + body.len()];
    m[0] = msg_type;
    m[1] = code;
    m[4..8].copy_from_slice(&rest.to_be_bytes());
    m[8..].copy_from_slice(body);
    let c = checksum::checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, protocol::ICMP, &m)
}

/// An echo request.
pub fn ping(src: Ipv4Addr, dst: Ipv4Addr, ident: u16, seq: u16, body: &[u8]) -> Vec<u8> {
    icmp(src, dst, 8, 0, ((ident as u32) << 16) | seq as u32, body)
}

/// Splits an IPv4 packet into fragments whose payloads are at most `max_payload` bytes
/// (rounded down to a multiple of 8), each with a valid header checksum.
pub fn fragment(pkt: &[u8], max_payload: usize) -> Vec<Vec<u8>> {
    let hl = ((pkt[0] & 0x0f) as usize) * 4;
    let total = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
    let data = &pkt[hl..total];
    let step = (max_payload / 8).max(1) * 8;
    let mut out = Vec::new();
    let mut off = 0;
    while off < data.len() {
        let end = (off + step).min(data.len());
        let mut f = Vec::with_capacity(hl + end - off);
        f.extend_from_slice(&pkt[..hl]);
        f.extend_from_slice(&data[off..end]);
        let more = if end < data.len() { 0x2000 } else { 0 };
        let ff = more | (off / 8) as u16;
        f[2..4].copy_from_slice(&((hl + end - off) as u16).to_be_bytes());
        f[6..8].copy_from_slice(&ff.to_be_bytes());
        f[10..12].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&f[..hl]);
        f[10..12].copy_from_slice(&c.to_be_bytes());
        out.push(f);
        off = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn built_packets_pass_the_oracle() {
        for p in [
            udp(a("203.0.113.7"), 4000, a("198.51.100.10"), 53, b"hello"),
            tcp(a("203.0.113.7"), 4000, a("198.51.100.10"), 80, 0x02, b""),
            tcp(
                a("203.0.113.7"),
                4000,
                a("198.51.100.10"),
                80,
                0x18,
                b"GET /\r\n",
            ),
            ping(a("203.0.113.7"), a("198.51.100.10"), 7, 1, b"abcdefgh"),
        ] {
            let s = etherparse::SlicedPacket::from_ip(&p).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = s.net else {
                panic!()
            };
            let h = ip.header().to_header();
            assert_eq!(h.header_checksum, h.calc_header_checksum());
            match s.transport.unwrap() {
                etherparse::TransportSlice::Udp(u) => {
                    let want = u.to_header().calc_checksum_ipv4(&h, u.payload()).unwrap();
                    assert_eq!(u.checksum(), want);
                }
                etherparse::TransportSlice::Tcp(t) => {
                    let want = t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap();
                    assert_eq!(t.checksum(), want);
                }
                etherparse::TransportSlice::Icmpv4(i) => {
                    assert!(checksum::verify(i.slice()));
                }
                _ => panic!(),
            }
        }
    }

    #[test]
    fn fragments_reassemble_to_the_original() {
        let p = udp(a("203.0.113.7"), 1, a("198.51.100.10"), 2, &[7u8; 3000]);
        let fs = fragment(&p, 1480);
        assert_eq!(fs.len(), 3);
        let mut data = Vec::new();
        for (i, f) in fs.iter().enumerate() {
            assert!(checksum::verify(&f[..20]));
            let ff = u16::from_be_bytes([f[6], f[7]]);
            assert_eq!(ff & 0x2000 != 0, i < 2);
            assert_eq!((ff & 0x1fff) as usize * 8, data.len());
            data.extend_from_slice(&f[20..]);
        }
        assert_eq!(&data[..], &p[20..]);
    }
}
