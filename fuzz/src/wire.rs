//! The `wire` target: arbitrary bytes through every view of `eiplab::wire`.
//!
//! # Input format
//!
//! | byte | meaning |
//! | --- | --- |
//! | 0, 1 | capacity of the buffer `icmp::error_in_place` works in (little endian, mod 2048) |
//! | 2 | bits 0-1 ICMP error type (3, 11, 12, 4), bits 2-4 code; bit 7: hand `error_in_place` a length cut to the capacity |
//! | 3 | a word position (× 2) for the checksum checks |
//! | 4, 5 | a word value for the checksum checks, also the fragment size |
//! | 6.. | the packet |
//!
//! Nothing may panic, and what the views say must agree with the bytes: lengths add up,
//! `fill_checksum` makes `verify_checksum` true, incremental checksum updates agree with a
//! full recomputation, an ICMP error is well-formed and quotes the packet, fragments put
//! back together give the packet.

use core::net::Ipv4Addr;
use eiplab::wire::checksum::{self, Delta};
use eiplab::wire::{build, icmp, IcmpPacket, Ipv4Packet, Ipv4Repr, TcpPacket, UdpPacket};

pub const HEADER: usize = 6;

pub fn encode(cap: u16, mode: u8, pos: u8, word: u16, pkt: &[u8]) -> Vec<u8> {
    let mut v = cap.to_le_bytes().to_vec();
    v.push(mode);
    v.push(pos);
    v.extend_from_slice(&word.to_be_bytes());
    v.extend_from_slice(pkt);
    v
}

pub fn run(data: &[u8]) {
    if data.len() < HEADER {
        // Still: the bare bytes through the views.
        views(data);
        return;
    }
    let cap = (u16::from_le_bytes([data[0], data[1]]) % 2048) as usize;
    let mode = data[2];
    let pos = data[3] as usize * 2;
    let word = u16::from_be_bytes([data[4], data[5]]);
    let pkt = &data[HEADER..];

    views(pkt);
    checksums(pkt, pos, word);
    error(pkt, cap, mode);
    if let Ok(ip) = Ipv4Packet::new_checked(pkt) {
        fragments(pkt, ip.header_len(), ip.total_len(), word);
    }
    repr(pkt, word);
}

/// Every accessor of every view, on the packet and on its payload.
fn views(pkt: &[u8]) {
    match Ipv4Packet::new_checked(pkt) {
        Ok(ip) => {
            let hl = ip.header_len();
            let total = ip.total_len();
            assert_eq!(ip.version(), 4);
            assert!(hl >= 20 && hl <= total && total <= pkt.len());
            assert_eq!(ip.header().len(), hl);
            assert_eq!(ip.payload().len(), total - hl);
            let ff = u16::from_be_bytes([pkt[6], pkt[7]]);
            assert_eq!(ip.frag_offset(), (ff & 0x1fff) as usize * 8);
            assert_eq!(ip.dont_frag(), ff & 0x4000 != 0);
            assert_eq!(ip.more_frags(), ff & 0x2000 != 0);
            assert_eq!(ip.is_fragment(), ip.more_frags() || ip.frag_offset() != 0);
            assert_eq!(ip.src_addr(), Ipv4Addr::from(ip.src()));
            assert_eq!(ip.dst_addr(), Ipv4Addr::from(ip.dst()));
            assert_eq!(ip.verify_checksum(), checksum::verify(ip.header()));
            let _ = (
                ip.dscp_ecn(),
                ip.ident(),
                ip.ttl(),
                ip.protocol(),
                ip.checksum(),
            );
            let payload = ip.payload();
            l4_views(payload);

            let mut copy = pkt.to_vec();
            let mut m = Ipv4Packet::new_checked(&mut copy[..]).expect("a copy parses too");
            m.set_src(ip.dst());
            m.set_dst(ip.src());
            m.set_ttl(ip.ttl().wrapping_sub(1));
            m.fill_checksum();
            assert!(
                m.verify_checksum(),
                "fill_checksum did not make the header valid"
            );
            assert_eq!(m.payload_mut().len(), total - hl);
            assert_eq!(m.src(), ip.dst());
            let _ = m.into_inner();
        }
        Err(e) => {
            if pkt.first().map(|b| b >> 4) == Some(6) {
                assert_eq!(e, eiplab::wire::Error::Ipv6);
            }
        }
    }
    // The transport views on arbitrary bytes too (as if a header length pointed anywhere).
    l4_views(pkt);
}

fn l4_views(seg: &[u8]) {
    if let Ok(t) = TcpPacket::new_checked(seg) {
        let hl = t.header_len();
        assert!(hl >= 20 && hl <= seg.len());
        assert_eq!(t.payload().len(), seg.len() - hl);
        let _ = (
            t.src_port(),
            t.dst_port(),
            t.seq(),
            t.ack(),
            t.flags(),
            t.checksum(),
        );
        let mut c = seg.to_vec();
        let mut m = TcpPacket::new_checked(&mut c[..]).expect("a copy parses too");
        m.set_checksum(0x1234);
        assert_eq!(m.checksum(), 0x1234);
    }
    if let Ok(u) = UdpPacket::new_checked(seg) {
        assert_eq!(u.payload().len(), seg.len() - 8);
        let _ = (u.src_port(), u.dst_port(), u.len_field(), u.checksum());
        let mut c = seg.to_vec();
        let mut m = UdpPacket::new_checked(&mut c[..]).expect("a copy parses too");
        m.set_src_port(1);
        m.set_dst_port(2);
        m.set_checksum(3);
        assert_eq!((m.src_port(), m.dst_port(), m.checksum()), (1, 2, 3));
    }
    if let Ok(i) = IcmpPacket::new_checked(seg) {
        assert_eq!(i.payload().len(), seg.len() - 8);
        let _ = (
            i.msg_type(),
            i.code(),
            i.checksum(),
            i.ident(),
            i.verify_checksum(),
        );
        let _ = icmp::is_error(i.msg_type());
        let mut c = seg.to_vec();
        let mut m = IcmpPacket::new_checked(&mut c[..]).expect("a copy parses too");
        m.set_msg_type(0);
        let _ = m.payload_mut();
        m.fill_checksum();
        assert!(
            m.verify_checksum(),
            "ICMP fill_checksum did not make it valid"
        );
    } else {
        assert!(seg.len() < 8);
    }
}

/// Whether a ones'-complement sum over the data can be all ones at all: data that is all
/// zeros besides the checksum field only verifies with 0xffff there, never with 0x0000.
fn verifiable(data: &[u8], field: usize) -> bool {
    data.iter()
        .enumerate()
        .any(|(i, b)| *b != 0 && i != field && i != field + 1)
}

fn checksums(pkt: &[u8], pos: usize, word: u16) {
    // Splitting at an even offset does not change the sum.
    let s = checksum::sum(0, pkt);
    let cut = pos.min(pkt.len()) & !1;
    let (x, y) = pkt.split_at(cut);
    assert_eq!(
        checksum::fold(s),
        checksum::fold(checksum::sum(checksum::sum(0, x), y)),
        "sum depends on where the data is split"
    );
    let f = checksum::fold(s);
    assert!(f != 0 || pkt.iter().all(|b| *b == 0));
    // checksum() installed at an even position verifies.
    if pkt.len() >= 2 {
        let at = (pos % pkt.len()) & !1;
        if at + 2 <= pkt.len() {
            let mut d = pkt.to_vec();
            d[at] = 0;
            d[at + 1] = 0;
            let c = checksum::checksum(&d);
            d[at..at + 2].copy_from_slice(&c.to_be_bytes());
            assert!(checksum::verify(&d), "checksum() does not verify");

            // Incremental: one word changes elsewhere.
            let other = if at >= 2 { 0 } else { at + 2 };
            if other + 2 <= d.len() && other != at {
                let old = u16::from_be_bytes([d[other], d[other + 1]]);
                let mut e = d.clone();
                e[other..other + 2].copy_from_slice(&word.to_be_bytes());
                let c2 = Delta::word(old, word).apply(c);
                e[at..at + 2].copy_from_slice(&c2.to_be_bytes());
                if verifiable(&e, at) {
                    assert!(
                        checksum::verify(&e),
                        "Delta::word disagrees with a recomputation"
                    );
                }
                let c3 = Delta::word(old, word).apply_udp(c);
                assert!(c3 != 0 || c == 0);
                if c == 0 {
                    assert_eq!(c3, 0, "apply_udp changed a zero checksum");
                }
            }
            // Incremental: an address (4 bytes at an even offset) changes.
            let other = if at >= 4 { 0 } else { at + 2 };
            if other + 4 <= d.len() {
                let old = u32::from_be_bytes([d[other], d[other + 1], d[other + 2], d[other + 3]]);
                let new = old.rotate_left(7) ^ ((word as u32) << 16 | word as u32);
                let mut e = d.clone();
                e[other..other + 4].copy_from_slice(&new.to_be_bytes());
                let delta = Delta::addr(old, new);
                let c2 = delta.apply(c);
                e[at..at + 2].copy_from_slice(&c2.to_be_bytes());
                if verifiable(&e, at) {
                    assert!(
                        checksum::verify(&e),
                        "Delta::addr disagrees with a recomputation"
                    );
                }
                assert!(
                    (delta + Delta::addr(new, old)).is_zero(),
                    "undoing a change is not zero"
                );
                assert!(same_sum((delta + Delta::addr(new, old)).apply(c), c));
            }
        }
    }
    // Partial sums follow the pseudo-header.
    if pkt.len() >= 12 {
        let s = u32::from_be_bytes([pkt[0], pkt[1], pkt[2], pkt[3]]);
        let d = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
        let d2 = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);
        let l = word as u32;
        let p = checksum::fold(checksum::pseudo_header(s, d, 6, l));
        let want = checksum::fold(checksum::pseudo_header(s, d2, 6, l));
        let got = Delta::addr(d, d2).apply_partial(p);
        assert!(same_sum(got, want), "apply_partial {got:#x} != {want:#x}");
    }
}

/// Two 16-bit values that stand for the same ones'-complement number (0x0000 and 0xffff
/// are both zero).
fn same_sum(a: u16, b: u16) -> bool {
    a == b || (a == 0 && b == 0xffff) || (a == 0xffff && b == 0)
}

fn error(pkt: &[u8], cap: usize, mode: u8) {
    let ty = [3, 11, 12, 4][(mode & 3) as usize];
    let code = (mode >> 2) & 7;
    let mut buf = vec![0u8; cap];
    let n = pkt.len().min(cap);
    buf[..n].copy_from_slice(&pkt[..n]);
    let len = if mode & 0x80 != 0 { n } else { pkt.len() };
    let src = Ipv4Addr::new(10, 0, 1, 253);
    let dst = Ipv4Addr::new(10, 0, 1, 10);
    let Some(out) = icmp::error_in_place(&mut buf, len, src, dst, ty, code, 0x0102_0304) else {
        return;
    };
    let orig = Ipv4Packet::new_checked(&pkt[..len])
        .expect("error_in_place about a packet that does not parse");
    assert!(out <= cap, "error of {out} bytes in {cap}");
    assert!(out <= icmp::MAX_ERROR_LEN, "error of {out} bytes");
    assert!(
        out >= 28 + (orig.header_len() + 8).min(len),
        "error quotes too little"
    );
    let ip = Ipv4Packet::new_checked(&buf[..out]).expect("the error parses");
    assert!(ip.verify_checksum());
    assert_eq!(ip.total_len(), out);
    assert_eq!((ip.protocol(), ip.src_addr(), ip.dst_addr()), (1, src, dst));
    let m = IcmpPacket::new_checked(ip.payload()).expect("ICMP header");
    assert!(m.verify_checksum(), "ICMP error checksum");
    assert_eq!((m.msg_type(), m.code()), (ty, code));
    assert_eq!(m.payload(), &pkt[..out - 28], "the quote is not the packet");
}

fn fragments(pkt: &[u8], hl: usize, total: usize, word: u16) {
    let step = (word as usize % 1500).max(1);
    let data = &pkt[hl..total];
    if data.len() / ((step / 8).max(1) * 8) > 256 {
        return;
    }
    let pieces = build::fragment(pkt, step);
    let mut got = Vec::with_capacity(data.len());
    for (i, f) in pieces.iter().enumerate() {
        let ip = Ipv4Packet::new_checked(&f[..]).expect("a fragment parses");
        assert!(ip.verify_checksum());
        assert_eq!(ip.frag_offset(), got.len());
        assert_eq!(ip.more_frags(), i + 1 < pieces.len());
        got.extend_from_slice(ip.payload());
    }
    assert_eq!(&got[..], data, "fragments do not put back together");
}

fn repr(pkt: &[u8], word: u16) {
    if pkt.len() < 12 {
        return;
    }
    let r = Ipv4Repr {
        src: Ipv4Addr::new(pkt[0], pkt[1], pkt[2], pkt[3]),
        dst: Ipv4Addr::new(pkt[4], pkt[5], pkt[6], pkt[7]),
        protocol: pkt[8],
        ttl: pkt[9],
        ident: u16::from_be_bytes([pkt[10], pkt[11]]),
        dont_frag: word & 1 != 0,
        payload_len: (word % 1500) as usize,
    };
    let mut b = vec![0u8; 20 + r.payload_len];
    r.emit(&mut b);
    let ip = Ipv4Packet::new_checked(&b[..]).expect("an emitted header parses");
    assert!(ip.verify_checksum());
    assert_eq!(
        (
            ip.src_addr(),
            ip.dst_addr(),
            ip.protocol(),
            ip.ttl(),
            ip.ident(),
            ip.dont_frag()
        ),
        (r.src, r.dst, r.protocol, r.ttl, r.ident, r.dont_frag)
    );
    assert_eq!(ip.payload().len(), r.payload_len);
}
