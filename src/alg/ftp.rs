//! FTP control messages that carry a data-connection address (RFC 959,
//! RFC 2428). These are the only FTP messages a NAT has to rewrite, so they
//! are the only ones recognised: plain commands and replies say nothing about
//! addresses and are left to the port rule.

use super::text::{is_text, lines, parse_decimal, parse_octets, parse_quad_exact, strip_prefix_ci};
use super::{AlgProtocol, Field, Finding};

/// An FTP control line that names a data-connection endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// `PORT h1,h2,h3,h4,p1,p2`
    Port { addr: [u8; 4], port: u16 },
    /// `EPRT |1|a.b.c.d|port|` or `EPRT |2|ipv6|port|`; an IPv6 address
    /// yields `addr` only when it embeds a dotted quad (`::ffff:a.b.c.d`).
    Eprt { addr: Option<[u8; 4]>, port: u16 },
    /// `227 ... (h1,h2,h3,h4,p1,p2)`
    Pasv { addr: [u8; 4], port: u16 },
    /// `229 ... (|||port|)`: carries a port only.
    Epsv { port: u16 },
}

/// Parse one control line (without its line terminator).
pub fn parse_line(line: &[u8]) -> Option<Message> {
    if let Some(rest) = strip_prefix_ci(line, b"PORT ") {
        let (addr, port, n) = host_port_tuple(rest)?;
        // The tuple must be the whole argument: "PORT 1,2,3,4,5,6x" is not FTP.
        return (n == rest.len()).then_some(Message::Port { addr, port });
    }
    if let Some(rest) = strip_prefix_ci(line, b"EPRT ") {
        return parse_eprt(rest);
    }
    if let Some(rest) = line.strip_prefix(b"227 ") {
        return parse_227(rest).filter(|_| is_text(line));
    }
    if let Some(rest) = line.strip_prefix(b"229 ") {
        return parse_229(rest).filter(|_| is_text(line));
    }
    None
}

/// `h1,h2,h3,h4,p1,p2` at the start of `s`: address, port, bytes used.
fn host_port_tuple(s: &[u8]) -> Option<([u8; 4], u16, usize)> {
    let ([h1, h2, h3, h4, p1, p2], n) = parse_octets::<6>(s, b',')?;
    Some(([h1, h2, h3, h4], u16::from_be_bytes([p1, p2]), n))
}

/// A TCP port in decimal, 1..=65535, and nothing else.
fn port_exact(s: &[u8]) -> Option<u16> {
    let (value, n) = parse_decimal(s, 5)?;
    let port = u16::try_from(value).ok()?;
    (n == s.len() && port != 0).then_some(port)
}

/// RFC 2428 lets the client pick the delimiter from printable ASCII; `|` is
/// what everyone sends, but any byte that cannot occur in the fields works.
fn is_delimiter(d: u8) -> bool {
    (33..=126).contains(&d) && !d.is_ascii_alphanumeric() && d != b'.' && d != b':'
}

fn parse_eprt(rest: &[u8]) -> Option<Message> {
    let (&d, body) = rest.split_first()?;
    if !is_delimiter(d) {
        return None;
    }
    let mut fields = body.split(|&b| b == d);
    let (proto, addr, port, tail) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    if !tail.is_empty() || fields.next().is_some() {
        return None;
    }
    let port = port_exact(port)?;
    let addr = match proto {
        b"1" => Some(parse_quad_exact(addr)?),
        b"2" => ipv6_embedded_v4(addr)?,
        _ => return None,
    };
    Some(Message::Eprt { addr, port })
}

/// Validate the shape of a textual IPv6 address (not its full grammar: the
/// point is to reject junk) and return the IPv4 address it embeds, if any.
/// Outer None: not an IPv6 address at all.
fn ipv6_embedded_v4(s: &[u8]) -> Option<Option<[u8; 4]>> {
    let shaped = (2..=45).contains(&s.len())
        && s.contains(&b':')
        && s.iter()
            .all(|b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.');
    if !shaped {
        return None;
    }
    let last_colon = s.iter().rposition(|&b| b == b':')?;
    let tail = s.get(last_colon.checked_add(1)?..)?;
    if tail.contains(&b'.') {
        Some(Some(parse_quad_exact(tail)?))
    } else {
        Some(None)
    }
}

/// RFC 959 does not fix the text around the tuple and RFC 1123 4.1.2.6 tells
/// clients to scan for the first digit, so that is what we do; the tuple must
/// then be complete and end there (not run on into more digits or commas).
fn parse_227(rest: &[u8]) -> Option<Message> {
    let first_digit = rest.iter().position(u8::is_ascii_digit)?;
    let tuple = rest.get(first_digit..)?;
    let (addr, port, n) = host_port_tuple(tuple)?;
    let after = tuple.get(n..)?;
    if after
        .first()
        .is_some_and(|b| b.is_ascii_digit() || *b == b',')
    {
        return None;
    }
    Some(Message::Pasv { addr, port })
}

/// `(|||port|)` with three equal delimiters, as in RFC 2428 section 3.
fn parse_229(rest: &[u8]) -> Option<Message> {
    let open = rest.iter().position(|&b| b == b'(')?;
    let inner = rest.get(open.checked_add(1)?..)?;
    let close = inner.iter().position(|&b| b == b')')?;
    let inner = inner.get(..close)?;
    let (&d, more) = inner.split_first()?;
    if !is_delimiter(d) {
        return None;
    }
    let port = more.strip_prefix(&[d, d])?.strip_suffix(&[d])?;
    Some(Message::Epsv {
        port: port_exact(port)?,
    })
}

/// First PORT/EPRT/227 line whose address is `private` or `public`. Every line
/// is examined because a TCP segment may carry several pipelined commands.
pub fn inspect(payload: &[u8], private: [u8; 4], public: [u8; 4]) -> Option<Finding> {
    let hit = |a: [u8; 4]| a == private || a == public;
    lines(payload).find_map(|line| {
        let (field, address) = match parse_line(line)? {
            Message::Port { addr, .. } if hit(addr) => (Field::FtpPort, addr),
            Message::Eprt {
                addr: Some(addr), ..
            } if hit(addr) => (Field::FtpEprt, addr),
            Message::Pasv { addr, .. } if hit(addr) => (Field::FtpPasvReply, addr),
            _ => return None,
        };
        Some(Finding {
            protocol: AlgProtocol::Ftp,
            field,
            address,
        })
    })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    const PRIV: [u8; 4] = [10, 0, 1, 2];
    const PUB: [u8; 4] = [203, 0, 113, 7];

    #[test]
    fn port_command() {
        assert_eq!(
            parse_line(b"PORT 10,0,1,2,4,1"),
            Some(Message::Port {
                addr: PRIV,
                port: 1025
            })
        );
        assert!(parse_line(b"port 10,0,1,2,4,1").is_some());
        for bad in [
            &b"PORT 10,0,1,2,4"[..],
            b"PORT 10,0,1,2,4,1,",
            b"PORT 10,0,1,2,4,1 ",
            b"PORT 10,0,1,2,4,256",
            b"PORT 10,0,1,2,4,1x",
            b"PORT  10,0,1,2,4,1",
            b"PORT 10.0.1.2,4,1",
            b"PORTABLE 10,0,1,2,4,1",
            b"PORT",
        ] {
            assert_eq!(parse_line(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn eprt_command() {
        assert_eq!(
            parse_line(b"EPRT |1|10.0.1.2|6275|"),
            Some(Message::Eprt {
                addr: Some(PRIV),
                port: 6275
            })
        );
        assert_eq!(
            parse_line(b"eprt !1!10.0.1.2!6275!"),
            Some(Message::Eprt {
                addr: Some(PRIV),
                port: 6275
            })
        );
        assert_eq!(
            parse_line(b"EPRT |2|1080::8:800:200C:417A|5282|"),
            Some(Message::Eprt {
                addr: None,
                port: 5282
            })
        );
        assert_eq!(
            parse_line(b"EPRT |2|::ffff:10.0.1.2|5282|"),
            Some(Message::Eprt {
                addr: Some(PRIV),
                port: 5282
            })
        );
        for bad in [
            &b"EPRT |1|10.0.1.2|6275"[..],
            b"EPRT |1|10.0.1.2|6275||",
            b"EPRT |1|10.0.1.2|6275|x",
            b"EPRT x1x10.0.1.2x6275x",
            b"EPRT |3|10.0.1.2|6275|",
            b"EPRT |1|10.0.1|6275|",
            b"EPRT |1|10.0.1.2|0|",
            b"EPRT |1|10.0.1.2|65536|",
            b"EPRT |1|10.0.1.2|123456|",
            b"EPRT |2|zz::1|5282|",
            b"EPRT 1|10.0.1.2|6275|",
            b"EPRT |1|10.0.1.2!6275|",
            b"EPRTX |1|10.0.1.2|6275|",
        ] {
            assert_eq!(parse_line(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn pasv_replies() {
        assert_eq!(
            parse_line(b"227 Entering Passive Mode (10,0,1,2,195,80)."),
            Some(Message::Pasv {
                addr: PRIV,
                port: 50000
            })
        );
        assert!(parse_line(b"227 =10,0,1,2,195,80").is_some());
        assert_eq!(
            parse_line(b"229 Entering Extended Passive Mode (|||6446|)"),
            Some(Message::Epsv { port: 6446 })
        );
        for bad in [
            &b"227 apples"[..],
            b"227 Entering Passive Mode (10,0,1,2,195)",
            b"227 Entering Passive Mode (10,0,1,2,195,80,1)",
            b"227 Entering Passive Mode (10,0,1,2,195,800)",
            b"227 Entering Passive Mode (10,0,1,2,195,80)\x00",
            b"227-Entering Passive Mode (10,0,1,2,195,80)",
            b"2270 (10,0,1,2,195,80)",
            b"229 Entering Extended Passive Mode (||6446|)",
            b"229 Entering Extended Passive Mode (|||6446!)",
            b"229 Entering Extended Passive Mode (|||0|)",
            b"229 Entering Extended Passive Mode |||6446|",
            b"229 apples",
            b"PASV",
        ] {
            assert_eq!(parse_line(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn inspect_fields() {
        let f = |p: &[u8]| inspect(p, PRIV, PUB).map(|f| (f.field, f.address));
        assert_eq!(f(b"PORT 10,0,1,2,4,1\r\n"), Some((Field::FtpPort, PRIV)));
        assert_eq!(f(b"PORT 203,0,113,7,4,1\r\n"), Some((Field::FtpPort, PUB)));
        assert_eq!(f(b"PORT 10,0,1,21,4,1\r\n"), None);
        assert_eq!(f(b"PORT 110,0,1,2,4,1\r\n"), None);
        assert_eq!(
            f(b"EPRT |1|10.0.1.2|6275|\r\n"),
            Some((Field::FtpEprt, PRIV))
        );
        assert_eq!(f(b"EPRT |1|10.0.1.21|6275|\r\n"), None);
        assert_eq!(
            f(b"EPRT |2|::ffff:10.0.1.2|6275|\r\n"),
            Some((Field::FtpEprt, PRIV))
        );
        assert_eq!(
            f(b"227 Entering Passive Mode (10,0,1,2,195,80)\r\n"),
            Some((Field::FtpPasvReply, PRIV))
        );
        assert_eq!(f(b"227 Entering Passive Mode (10,0,1,21,195,80)\r\n"), None);
        assert_eq!(
            f(b"229 Entering Extended Passive Mode (|||6446|)\r\n"),
            None
        );
        // An address in an ordinary reply is nothing NAT has to rewrite.
        assert_eq!(f(b"230 Login from 10.0.1.2 ok\r\n"), None);
        // Pipelined: the PORT on the second line is still found.
        assert_eq!(
            f(b"TYPE I\r\nPORT 10,0,1,2,4,1\r\n"),
            Some((Field::FtpPort, PRIV))
        );
        assert_eq!(
            inspect(b"PORT 10,0,1,2,4,1\r\n", PRIV, PUB)
                .unwrap()
                .protocol,
            AlgProtocol::Ftp
        );
    }
}
