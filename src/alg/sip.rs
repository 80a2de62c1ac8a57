//! SIP (RFC 3261): start-line signature and the places a SIP ALG rewrites.

use super::text::{find_quad, lines, request_line_parts, status_line_code, strip_prefix_ci, Part};
use super::{AlgProtocol, Field, Finding};

/// RFC 3261 methods and the common extensions (RFC 3262, 6665, 3903, 6086,
/// 3515, 3428, 3311). Method names are case-sensitive in SIP.
const METHODS: [&[u8]; 14] = [
    b"INVITE",
    b"ACK",
    b"BYE",
    b"CANCEL",
    b"OPTIONS",
    b"REGISTER",
    b"PRACK",
    b"SUBSCRIBE",
    b"NOTIFY",
    b"PUBLISH",
    b"INFO",
    b"REFER",
    b"MESSAGE",
    b"UPDATE",
];

/// `METHOD sip:... SIP/2.0` or `METHOD sips:... SIP/2.0`.
pub fn is_request_line(line: &[u8]) -> bool {
    let Some((method, uri, version)) = request_line_parts(line) else {
        return false;
    };
    // URI schemes are case-insensitive (RFC 3986 3.1); so is the version
    // string (RFC 3261 7.1).
    let after_scheme = strip_prefix_ci(uri, b"sip:").or_else(|| strip_prefix_ci(uri, b"sips:"));
    METHODS.contains(&method)
        && after_scheme.is_some_and(|rest| !rest.is_empty())
        && version.eq_ignore_ascii_case(b"SIP/2.0")
}

/// `SIP/2.0 ddd reason` with a SIP status code (100..=699).
pub fn is_status_line(line: &[u8]) -> bool {
    status_line_code(line, b"SIP/2.0", (100, 699)).is_some()
}

pub fn is_start_line(line: &[u8]) -> bool {
    is_request_line(line) || is_status_line(line)
}

/// The field a header line belongs to, by its (case-insensitive) name,
/// including the RFC 3261 7.3.3 compact forms.
fn header_field(line: &[u8]) -> Field {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return Field::TextAddress;
    };
    let name = line.get(..colon).unwrap_or(&[]).trim_ascii_end();
    let is = |long: &[u8], short: &[u8]| {
        name.eq_ignore_ascii_case(long) || name.eq_ignore_ascii_case(short)
    };
    if is(b"via", b"v") {
        Field::SipVia
    } else if is(b"contact", b"m") {
        Field::SipContact
    } else if is(b"from", b"f") {
        Field::SipFrom
    } else if is(b"to", b"t") {
        Field::SipTo
    } else {
        Field::TextAddress
    }
}

/// SDP (RFC 4566) lines in the body: `c=` and `o=` carry the media address.
fn body_field(line: &[u8]) -> Field {
    if line.starts_with(b"c=") {
        Field::SipSdpConnection
    } else if line.starts_with(b"o=") {
        Field::SipSdpOrigin
    } else {
        Field::TextAddress
    }
}

/// First line, in payload order, that carries `private` or `public` as a
/// standalone dotted quad, labelled by where it sits in the message.
pub fn inspect(payload: &[u8], private: [u8; 4], public: [u8; 4]) -> Option<Finding> {
    super::first_finding(|f| inspect_each(payload, private, public, f))
}

/// Every finding of [`inspect`], one per line, in payload order, until `f` returns false.
pub fn inspect_each(
    payload: &[u8],
    private: [u8; 4],
    public: [u8; 4],
    f: &mut dyn FnMut(Finding) -> bool,
) {
    let mut part = Part::Start;
    let mut field = Field::TextAddress;
    for line in lines(payload) {
        match part {
            Part::Start => {
                // Stream transports may send CRLFs before the start line
                // (RFC 3261 7.5, and RFC 5626 keep-alives).
                if line.is_empty() {
                    continue;
                }
                part = Part::Headers;
                field = if is_request_line(line) {
                    Field::SipRequestUri
                } else if is_status_line(line) {
                    Field::TextAddress
                } else {
                    // Not SIP after all (or a fragment): read it as a header.
                    header_field(line)
                };
            }
            Part::Headers => {
                if line.is_empty() {
                    part = Part::Body;
                    continue;
                }
                // A line starting with whitespace continues the previous
                // header (RFC 3261 7.3.1), so it keeps that header's field.
                if !line.starts_with(b" ") && !line.starts_with(b"\t") {
                    field = header_field(line);
                }
            }
            Part::Body => field = body_field(line),
        }
        if let Some(q) = find_quad(line, private, public) {
            let more = f(Finding {
                protocol: AlgProtocol::Sip,
                field,
                address: q.addr,
            });
            if !more {
                return;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    const PRIV: [u8; 4] = [10, 0, 1, 2];
    const PUB: [u8; 4] = [203, 0, 113, 7];

    /// A realistic INVITE with SDP; `slot` names the one place that carries
    /// the address `addr`, every other place uses a hostname.
    fn invite(slot: &str, addr: &str) -> String {
        let at = |s: &str| {
            if s == slot {
                addr
            } else {
                "pc33.atlanta.example.com"
            }
        };
        format!(
            "INVITE sip:bob@{ruri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {via}:5060;branch=z9hG4bK776asdhds\r\n\
             Max-Forwards: 70\r\n\
             To: Bob <sip:bob@{to}>\r\n\
             From: Alice <sip:alice@{from}>;tag=1928301774\r\n\
             Call-ID: a84b4c76e66710@{callid}\r\n\
             CSeq: 314159 INVITE\r\n\
             Contact: <sip:alice@{contact}:5060;transport=udp>\r\n\
             Content-Type: application/sdp\r\n\
             Content-Length: 142\r\n\
             \r\n\
             v=0\r\n\
             o=alice 2890844526 2890844526 IN IP4 {origin}\r\n\
             s=-\r\n\
             c=IN IP4 {conn}\r\n\
             t=0 0\r\n\
             m=audio 49170 RTP/AVP 0\r\n\
             a=rtpmap:0 PCMU/8000\r\n",
            ruri = at("ruri"),
            via = at("via"),
            to = at("to"),
            from = at("from"),
            callid = at("callid"),
            contact = at("contact"),
            origin = at("origin"),
            conn = at("conn"),
        )
    }

    #[test]
    fn request_lines() {
        let msg = invite("", "");
        assert!(is_start_line(msg.lines().next().unwrap().as_bytes()));
        for ok in [
            &b"REGISTER sips:registrar.example.com SIP/2.0"[..],
            b"ACK sip:bob@10.0.1.2 SIP/2.0",
            b"OPTIONS SIP:carol@chicago.com sip/2.0",
            b"MESSAGE sip:user2@domain.com SIP/2.0",
        ] {
            assert!(is_request_line(ok), "{:?}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b"invite sip:bob@example.com SIP/2.0"[..],
            b"INVITE tel:+15551234 SIP/2.0",
            b"INVITE sip: SIP/2.0",
            b"INVITE sip:bob@example.com SIP/3.0",
            b"INVITE sip:bob@example.com HTTP/1.1",
            b"GET / HTTP/1.1",
            b"FOO sip:bob@example.com SIP/2.0",
            b"INVITE  sip:bob@example.com SIP/2.0",
            b"INVITE sip:bob@example.com SIP/2.0 ",
            b"OPTIONS rtsp://example.com/media RTSP/1.0",
        ] {
            assert!(!is_start_line(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn status_lines() {
        assert!(is_status_line(b"SIP/2.0 200 OK"));
        assert!(is_status_line(b"SIP/2.0 180 Ringing"));
        assert!(is_status_line(b"SIP/2.0 401 Unauthorized"));
        assert!(!is_status_line(b"SIP/2.0 200OK"));
        assert!(!is_status_line(b"SIP/2.0 OK"));
        assert!(!is_status_line(b"SIP/2.0 800 Nope"));
        assert!(!is_status_line(b"RTSP/1.0 200 OK"));
        assert!(!is_status_line(b"HTTP/1.1 200 OK"));
    }

    #[test]
    fn each_field_found_and_near_misses_ignored() {
        let cases = [
            ("ruri", Field::SipRequestUri),
            ("via", Field::SipVia),
            ("to", Field::SipTo),
            ("from", Field::SipFrom),
            ("callid", Field::TextAddress),
            ("contact", Field::SipContact),
            ("origin", Field::SipSdpOrigin),
            ("conn", Field::SipSdpConnection),
        ];
        for (slot, field) in cases {
            let hit = invite(slot, "10.0.1.2");
            assert_eq!(
                inspect(hit.as_bytes(), PRIV, PUB),
                Some(Finding {
                    protocol: AlgProtocol::Sip,
                    field,
                    address: PRIV
                }),
                "{slot}"
            );
            let public = invite(slot, "203.0.113.7");
            assert_eq!(
                inspect(public.as_bytes(), PRIV, PUB).map(|f| (f.field, f.address)),
                Some((field, PUB)),
                "{slot}"
            );
            for near in ["10.0.1.21", "110.0.1.2", "10.0.1.2.5", "10.0.1.3"] {
                let miss = invite(slot, near);
                assert_eq!(inspect(miss.as_bytes(), PRIV, PUB), None, "{slot} {near}");
            }
        }
    }

    #[test]
    fn first_finding_in_payload_order() {
        let mut msg = invite("contact", "10.0.1.2");
        msg = msg.replace(
            "SIP/2.0/UDP pc33.atlanta.example.com",
            "SIP/2.0/UDP 203.0.113.7",
        );
        let f = inspect(msg.as_bytes(), PRIV, PUB).unwrap();
        assert_eq!((f.field, f.address), (Field::SipVia, PUB));
    }

    #[test]
    fn compact_headers_folding_and_status_responses() {
        let msg = b"SIP/2.0 200 OK\r\n\
            v: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK1\r\n\
            f: <sip:a@example.com>;tag=1\r\n\
            t: <sip:b@example.com>;tag=2\r\n\
            Subject: lunch\r\n\
            m: <sip:b@example.com>,\r\n <sip:b@10.0.1.2:5062>\r\n\
            \r\n";
        let f = inspect(msg, PRIV, PUB).unwrap();
        assert_eq!(f.field, Field::SipContact);

        let f = |p: &[u8]| inspect(p, PRIV, PUB).map(|f| f.field);
        assert_eq!(
            f(b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP 10.0.1.2\r\n\r\n"),
            Some(Field::SipVia)
        );
        assert_eq!(
            f(b"SIP/2.0 200 OK\r\nf: <sip:a@10.0.1.2>\r\n"),
            Some(Field::SipFrom)
        );
        assert_eq!(
            f(b"SIP/2.0 200 OK\r\nt: <sip:a@10.0.1.2>\r\n"),
            Some(Field::SipTo)
        );
        assert_eq!(
            f(b"SIP/2.0 200 OK\r\nRecord-Route: <sip:10.0.1.2;lr>\r\n"),
            Some(Field::TextAddress)
        );
        assert_eq!(
            f(b"\r\n\r\nSIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 10.0.1.2\r\n"),
            Some(Field::SipVia)
        );
        // The reason phrase is not a rewritten field, but still an address.
        assert_eq!(
            f(b"SIP/2.0 302 Moved to 10.0.1.2\r\n"),
            Some(Field::TextAddress)
        );
        // `c=` in the headers is not SDP.
        assert_eq!(
            f(b"SIP/2.0 200 OK\r\nc=IN IP4 10.0.1.2\r\n"),
            Some(Field::TextAddress)
        );
        assert_eq!(
            f(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP example.com\r\n\r\n"),
            None
        );
    }

    #[test]
    fn register() {
        let msg = b"REGISTER sip:registrar.biloxi.example.com SIP/2.0\r\n\
            Via: SIP/2.0/UDP bobspc.biloxi.example.com:5060;branch=z9hG4bKnashds7\r\n\
            Max-Forwards: 70\r\n\
            To: Bob <sip:bob@biloxi.example.com>\r\n\
            From: Bob <sip:bob@biloxi.example.com>;tag=456248\r\n\
            Call-ID: 843817637684230@998sdasdh09\r\n\
            CSeq: 1826 REGISTER\r\n\
            Contact: <sip:bob@10.0.1.2>\r\n\
            Expires: 7200\r\n\
            Content-Length: 0\r\n\r\n";
        assert_eq!(
            inspect(msg, PRIV, PUB).map(|f| f.field),
            Some(Field::SipContact)
        );
        assert_eq!(inspect(msg, [10, 0, 1, 20], PUB), None);
    }
}
