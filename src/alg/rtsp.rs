//! RTSP 1.0 (RFC 2326): start-line signature and the places an RTSP ALG
//! rewrites (the Transport header and rtsp:// URLs).

use super::text::{lines, request_line_parts, status_line_code, strip_prefix_ci, Part, Quads};
use super::{AlgProtocol, Field, Finding};

/// RFC 2326 section 10 methods (case-sensitive, as in HTTP).
const METHODS: [&[u8]; 11] = [
    b"DESCRIBE",
    b"ANNOUNCE",
    b"GET_PARAMETER",
    b"OPTIONS",
    b"PAUSE",
    b"PLAY",
    b"RECORD",
    b"REDIRECT",
    b"SETUP",
    b"SET_PARAMETER",
    b"TEARDOWN",
];

/// `METHOD rtsp://... RTSP/1.0` (also `rtspu://`, `rtsps://`, and
/// `OPTIONS * RTSP/1.0`, which RFC 2326 10.1 allows).
pub fn is_request_line(line: &[u8]) -> bool {
    let Some((method, uri, version)) = request_line_parts(line) else {
        return false;
    };
    let uri_ok = (method == b"OPTIONS" && uri == b"*")
        || [&b"rtsp://"[..], b"rtspu://", b"rtsps://"]
            .iter()
            .any(|scheme| strip_prefix_ci(uri, scheme).is_some_and(|rest| !rest.is_empty()));
    METHODS.contains(&method) && uri_ok && version.eq_ignore_ascii_case(b"RTSP/1.0")
}

/// `RTSP/1.0 ddd reason` with an RTSP status code (100..=599).
pub fn is_status_line(line: &[u8]) -> bool {
    status_line_code(line, b"RTSP/1.0", (100, 599)).is_some()
}

pub fn is_start_line(line: &[u8]) -> bool {
    is_request_line(line) || is_status_line(line)
}

/// Whether the text before `start` makes the address at `start` the host of
/// a URL: `scheme://HOST` or `scheme://user[:pass]@HOST`.
fn is_url_host(line: &[u8], start: usize) -> bool {
    let Some(before) = line.get(..start) else {
        return false;
    };
    if before.ends_with(b"://") {
        return true;
    }
    let Some(userinfo_end) = before.strip_suffix(b"@") else {
        return false;
    };
    // Userinfo contains neither '/' nor whitespace; the "://" must come
    // right before it.
    match userinfo_end
        .iter()
        .rposition(|b| *b == b'/' || b.is_ascii_whitespace())
    {
        Some(i) => userinfo_end
            .get(..=i)
            .is_some_and(|head| head.ends_with(b"://")),
        None => false,
    }
}

fn is_transport_header(line: &[u8]) -> bool {
    strip_prefix_ci(line, b"transport")
        .is_some_and(|rest| rest.trim_ascii_start().starts_with(b":"))
}

/// First line, in payload order, that carries `private` or `public` as a
/// standalone dotted quad. Any address in the Transport header (destination=,
/// source=, or anything else there) is [`Field::RtspTransport`]; an address
/// that is a URL's host, in the request line, a header such as Content-Base
/// or RTP-Info, or an SDP `a=control:` line, is [`Field::RtspUrl`]; anything
/// else (an SDP `c=` line in a DESCRIBE reply, say) is
/// [`Field::TextAddress`].
pub fn inspect(payload: &[u8], private: [u8; 4], public: [u8; 4]) -> Option<Finding> {
    super::first_finding(|f| inspect_each(payload, private, public, f))
}

/// Every finding of [`inspect`], at most one per line, in payload order, until `f` returns
/// false.
pub fn inspect_each(
    payload: &[u8],
    private: [u8; 4],
    public: [u8; 4],
    f: &mut dyn FnMut(Finding) -> bool,
) {
    let mut part = Part::Start;
    let mut in_transport = false;
    for line in lines(payload) {
        match part {
            Part::Start => {
                if line.is_empty() {
                    continue;
                }
                part = Part::Headers;
                in_transport = is_transport_header(line);
            }
            Part::Headers => {
                if line.is_empty() {
                    part = Part::Body;
                    in_transport = false;
                    continue;
                }
                // Continuation lines (leading whitespace) stay in their header.
                if !line.starts_with(b" ") && !line.starts_with(b"\t") {
                    in_transport = is_transport_header(line);
                }
            }
            Part::Body => {}
        }
        let finding = |field, address| Finding {
            protocol: AlgProtocol::Rtsp,
            field,
            address,
        };
        let mut first_text = None;
        let mut found = None;
        for q in Quads::new(line).filter(|q| q.addr == private || q.addr == public) {
            if in_transport {
                found = Some(finding(Field::RtspTransport, q.addr));
                break;
            }
            if is_url_host(line, q.start) {
                found = Some(finding(Field::RtspUrl, q.addr));
                break;
            }
            first_text.get_or_insert(q.addr);
        }
        if let Some(one) = found.or(first_text.map(|a| finding(Field::TextAddress, a))) {
            if !f(one) {
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

    #[test]
    fn start_lines() {
        for ok in [
            &b"DESCRIBE rtsp://server.example.com/fizzle/foo RTSP/1.0"[..],
            b"OPTIONS rtsp://10.0.1.2:554/stream RTSP/1.0",
            b"OPTIONS * RTSP/1.0",
            b"SETUP rtspu://example.com/foo/bar/baz.rm RTSP/1.0",
            b"PLAY RTSP://example.com/x rtsp/1.0",
            b"GET_PARAMETER rtsp://example.com/fizzle/foo RTSP/1.0",
            b"RTSP/1.0 200 OK",
            b"RTSP/1.0 454 Session Not Found",
        ] {
            assert!(is_start_line(ok), "{:?}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b"DESCRIBE http://example.com/foo RTSP/1.0"[..],
            b"DESCRIBE rtsp:// RTSP/1.0",
            b"DESCRIBE rtsp://example.com/foo HTTP/1.1",
            b"PLAY * RTSP/1.0",
            b"describe rtsp://example.com/foo RTSP/1.0",
            b"GET / HTTP/1.1",
            b"OPTIONS sip:bob@example.com SIP/2.0",
            b"RTSP/1.0 600 Nope",
            b"RTSP/1.0 200",
            b"RTSP/2.0 200 OK",
        ] {
            assert!(!is_start_line(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    fn field(p: &[u8]) -> Option<(Field, [u8; 4])> {
        inspect(p, PRIV, PUB).map(|f| {
            assert_eq!(f.protocol, AlgProtocol::Rtsp);
            (f.field, f.address)
        })
    }

    #[test]
    fn transport_header() {
        let setup = |addr: &str| {
            format!(
                "SETUP rtsp://example.com/foo/bar/baz.rm RTSP/1.0\r\n\
                 CSeq: 302\r\n\
                 Transport: RTP/AVP;unicast;destination={addr};client_port=4588-4589\r\n\r\n"
            )
        };
        assert_eq!(
            field(setup("10.0.1.2").as_bytes()),
            Some((Field::RtspTransport, PRIV))
        );
        assert_eq!(
            field(setup("203.0.113.7").as_bytes()),
            Some((Field::RtspTransport, PUB))
        );
        assert_eq!(field(setup("10.0.1.21").as_bytes()), None);
        assert_eq!(field(setup("110.0.1.2").as_bytes()), None);
        let reply = b"RTSP/1.0 200 OK\r\nCSeq: 302\r\nSession: 47112344\r\n\
            transport : RTP/AVP;unicast;\r\n source=203.0.113.7;server_port=6256-6257\r\n\r\n";
        assert_eq!(field(reply), Some((Field::RtspTransport, PUB)));
    }

    #[test]
    fn urls() {
        assert_eq!(
            field(b"DESCRIBE rtsp://10.0.1.2:554/stream RTSP/1.0\r\nCSeq: 1\r\n\r\n"),
            Some((Field::RtspUrl, PRIV))
        );
        assert_eq!(
            field(b"OPTIONS rtsp://admin:pw@10.0.1.2/stream RTSP/1.0\r\nCSeq: 1\r\n\r\n"),
            Some((Field::RtspUrl, PRIV))
        );
        assert_eq!(
            field(b"DESCRIBE rtsp://10.0.1.21:554/stream RTSP/1.0\r\nCSeq: 1\r\n\r\n"),
            None
        );
        let reply = b"RTSP/1.0 200 OK\r\nCSeq: 2\r\n\
            Content-Base: rtsp://203.0.113.7/stream/\r\n\
            Content-Type: application/sdp\r\n\r\n\
            v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n";
        assert_eq!(field(reply), Some((Field::RtspUrl, PUB)));
    }

    #[test]
    fn sdp_body_is_text_address() {
        let reply = b"RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Type: application/sdp\r\n\r\n\
            v=0\r\n\
            o=- 2890844256 2890842807 IN IP4 example.com\r\n\
            c=IN IP4 10.0.1.2\r\n\
            a=control:rtsp://example.com/track1\r\n";
        assert_eq!(field(reply), Some((Field::TextAddress, PRIV)));
        // On one line, a URL host wins over a plain mention before it.
        assert_eq!(
            field(b"RTSP/1.0 200 OK\r\nX-Note: 10.0.1.2 rtsp://10.0.1.2/a\r\n"),
            Some((Field::RtspUrl, PRIV))
        );
        assert_eq!(field(b"RTSP/1.0 200 OK\r\nX-Note: 10.0.1.2.5\r\n"), None);
    }

    #[test]
    fn url_host_rule() {
        let line = b"a rtsp://u:p@1.2.3.4 b http://1.2.3.4 c /x@1.2.3.4 d 1.2.3.4";
        let starts: Vec<bool> = Quads::new(line)
            .map(|q| is_url_host(line, q.start))
            .collect();
        assert_eq!(starts, vec![true, true, false, false]);
    }
}
