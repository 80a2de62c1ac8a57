//! DNS (RFC 1035): A records in responses, the thing a DNS ALG (RFC 2694)
//! would rewrite between the private and the public address.
//!
//! The parser never follows compression pointers: it only has to step over
//! names to reach the record data, and a pointer always ends a name on the
//! wire. So pointer loops cannot cost anything; pointers that could not be
//! valid (forward, self-referencing, into the header) still make the message
//! malformed, which stops the scan.

use super::{AlgProtocol, Field, Finding};

const HEADER_LEN: usize = 12;
const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
/// RFC 1035 2.3.4: a name is at most 255 bytes on the wire.
const MAX_NAME_LEN: usize = 255;

fn be16(msg: &[u8], at: usize) -> Option<u16> {
    let end = at.checked_add(2)?;
    let bytes = msg.get(at..end)?;
    Some(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]))
}

/// Offset just past the name starting at `at`, or None if it is malformed or
/// runs off the end of the message. Each step moves forward by at least one
/// byte and the inline part is capped at 255 bytes, so this always ends.
fn skip_name(msg: &[u8], at: usize) -> Option<usize> {
    let mut pos = at;
    loop {
        let len = *msg.get(pos)?;
        match len & 0xC0 {
            0x00 if len == 0 => return pos.checked_add(1),
            0x00 => {
                pos = pos.checked_add(usize::from(len))?.checked_add(1)?;
                if pos.checked_sub(at)? > MAX_NAME_LEN {
                    return None;
                }
            }
            0xC0 => {
                let target = usize::from(be16(msg, pos)? & 0x3FFF);
                // A pointer must point back at an earlier name: anything else
                // could only serve to build a loop.
                if target < HEADER_LEN || target >= pos {
                    return None;
                }
                return pos.checked_add(2);
            }
            // 0x40 and 0x80 are the obsolete extended label types (RFC 6891).
            _ => return None,
        }
    }
}

/// First A/IN record (answer, authority or additional section) of a DNS
/// response whose address is `private` or `public`.
fn scan_message(msg: &[u8], private: [u8; 4], public: [u8; 4]) -> Option<[u8; 4]> {
    let flags = be16(msg, 2)?;
    if flags & 0x8000 == 0 {
        return None; // a query: nothing to rewrite
    }
    let qdcount = be16(msg, 4)?;
    let rrcount = [be16(msg, 6)?, be16(msg, 8)?, be16(msg, 10)?]
        .iter()
        .map(|&c| u32::from(c))
        .sum::<u32>();
    let mut pos = HEADER_LEN;
    // The counts come from the packet and may lie; each iteration consumes at
    // least 5 (question) or 11 (record) bytes or bails out, so the loops are
    // bounded by the message length as well as by the counts.
    for _ in 0..qdcount {
        pos = skip_name(msg, pos)?.checked_add(4)?;
        if pos > msg.len() {
            return None;
        }
    }
    for _ in 0..rrcount {
        pos = skip_name(msg, pos)?;
        let rtype = be16(msg, pos)?;
        let class = be16(msg, pos.checked_add(2)?)?;
        let rdlen = usize::from(be16(msg, pos.checked_add(8)?)?);
        let rdata_at = pos.checked_add(10)?;
        let next = rdata_at.checked_add(rdlen)?;
        let rdata = msg.get(rdata_at..next)?;
        // mDNS sets the top class bit (cache-flush); the class is still IN.
        if rtype == TYPE_A && class & 0x7FFF == CLASS_IN {
            if let Ok(addr) = <[u8; 4]>::try_from(rdata) {
                if addr == private || addr == public {
                    return Some(addr);
                }
            }
        }
        pos = next;
    }
    None
}

/// Inspect a DNS payload. Over TCP a message has a two-byte length prefix
/// (RFC 1035 4.2.2), and this function is not told the transport: when the
/// prefix fits the payload the framed message is tried first, then the whole
/// payload as a UDP message.
pub fn inspect(payload: &[u8], private: [u8; 4], public: [u8; 4]) -> Option<Finding> {
    let framed = be16(payload, 0).and_then(|n| {
        let n = usize::from(n);
        let end = n.checked_add(2)?;
        (n >= HEADER_LEN && end <= payload.len())
            .then(|| payload.get(2..end))
            .flatten()
    });
    let address = framed
        .and_then(|msg| scan_message(msg, private, public))
        .or_else(|| scan_message(payload, private, public))?;
    Some(Finding {
        protocol: AlgProtocol::Dns,
        field: Field::DnsAnswerA,
        address,
    })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    const PRIV: [u8; 4] = [10, 0, 1, 2];
    const PUB: [u8; 4] = [203, 0, 113, 7];

    /// A response for www.example.com: CNAME to example.com (via a
    /// compression pointer), then an A record for example.com (another
    /// pointer) carrying `addr`.
    fn response(addr: [u8; 4]) -> Vec<u8> {
        let mut m = vec![
            0xbe, 0xef, // id
            0x81, 0x80, // QR, RD, RA
            0, 1, 0, 2, 0, 0, 0, 0, // qd=1 an=2 ns=0 ar=0
        ];
        // question: www.example.com A IN; "example" label starts at 16
        m.extend_from_slice(b"\x03www\x07example\x03com\x00");
        m.extend_from_slice(&[0, 1, 0, 1]);
        // answer 1: www.example.com (pointer to 12) CNAME -> example.com (ptr 16)
        m.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0x0e, 0x10, 0, 2, 0xC0, 16]);
        // answer 2: example.com (pointer to 16) A IN addr
        m.extend_from_slice(&[0xC0, 16, 0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4]);
        m.extend_from_slice(&addr);
        m
    }

    fn found(p: &[u8]) -> Option<[u8; 4]> {
        inspect(p, PRIV, PUB).map(|f| {
            assert_eq!((f.protocol, f.field), (AlgProtocol::Dns, Field::DnsAnswerA));
            f.address
        })
    }

    #[test]
    fn real_shaped_response() {
        assert_eq!(found(&response(PRIV)), Some(PRIV));
        assert_eq!(found(&response(PUB)), Some(PUB));
        assert_eq!(found(&response([10, 0, 1, 21])), None);
        assert_eq!(found(&response([10, 0, 1, 3])), None);
    }

    #[test]
    fn tcp_framing() {
        let msg = response(PRIV);
        let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&msg);
        assert_eq!(found(&framed), Some(PRIV));
        let framed_miss = {
            let m = response([10, 0, 1, 3]);
            let mut f = (m.len() as u16).to_be_bytes().to_vec();
            f.extend_from_slice(&m);
            f
        };
        assert_eq!(found(&framed_miss), None);
    }

    #[test]
    fn queries_and_other_records_are_ignored() {
        let mut query = response(PRIV);
        query[2] &= 0x7F;
        assert_eq!(found(&query), None);
        // Same bytes as an AAAA-typed record with 4 bytes of rdata: not an A.
        let mut not_a = response(PRIV);
        let type_at = not_a.len() - 4 - 10 + 1;
        not_a[type_at] = 28;
        assert_eq!(found(&not_a), None);
        // Class CH instead of IN.
        let mut chaos = response(PRIV);
        chaos[type_at + 2] = 3;
        assert_eq!(found(&chaos), None);
    }

    #[test]
    fn authority_and_additional_sections() {
        let mut m = response([192, 0, 2, 1]);
        m[7] = 1; // an = 1
        m[11] = 1; // ar = 1: the last record is now "additional"
        let n = m.len();
        m[n - 4..].copy_from_slice(&PRIV);
        assert_eq!(found(&m), Some(PRIV));
    }

    #[test]
    fn truncated_messages() {
        let m = response(PRIV);
        for cut in 0..m.len() {
            assert_eq!(found(&m[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn bad_pointers_stop_the_scan() {
        // Question name is a pointer to itself: a loop if anyone followed it.
        let mut looping = response(PRIV);
        looping.splice(12..29, [0xC0, 12]);
        assert_eq!(found(&looping), None);
        // Forward pointer.
        let mut forward = response(PRIV);
        forward.splice(12..29, [0xC0, 40]);
        assert_eq!(found(&forward), None);
        // Pointer into the header.
        let mut header = response(PRIV);
        let a_name = header.len() - 4 - 10 - 2;
        header[a_name + 1] = 3;
        assert_eq!(found(&header), None);
        // Reserved label type.
        let mut reserved = response(PRIV);
        reserved[12] = 0x43;
        assert_eq!(found(&reserved), None);
        // A chain of backward pointers is fine to skip (we never follow it).
        let mut chain = response(PRIV);
        let a_name = chain.len() - 4 - 10 - 2;
        chain[a_name + 1] = 33; // points at answer 1's name, itself a pointer
        assert_eq!(found(&chain), Some(PRIV));
    }

    #[test]
    fn garbage_and_lying_counts() {
        assert_eq!(found(&[]), None);
        assert_eq!(found(&[0xff; 12]), None);
        let mut huge = vec![
            0, 0, 0x80, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        huge.extend_from_slice(&[0; 64]);
        assert_eq!(found(&huge), None);
        let mut long_name = vec![0, 0, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for _ in 0..60 {
            long_name.extend_from_slice(b"\x05abcde");
        }
        long_name.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(skip_name(&long_name, 12), None, "name over 255 bytes");
    }
}
