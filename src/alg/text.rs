//! Byte-level helpers shared by the text protocols (SIP, RTSP, FTP).
//!
//! Everything works on borrowed slices and returns sub-slices or small `Copy`
//! values, so nothing here allocates. Every access goes through `get`,
//! `split_at_checked` or iterators, so no input can make it panic.

/// How far into a payload `classify_payload` looks for a start line. Keeps the
/// per-packet cost bounded whatever the payload size.
pub const MAX_START_LINE: usize = 512;

/// The first line of `buf`, without its CRLF (or bare LF), provided the line
/// terminator lies within the first [`MAX_START_LINE`] bytes.
///
/// An unterminated line is rejected on purpose: every message we recognise is
/// line-oriented, and requiring the terminator is cheap extra strictness
/// against binary payloads that happen to start with a plausible word.
pub fn first_line(buf: &[u8]) -> Option<&[u8]> {
    let window = buf.get(..MAX_START_LINE).unwrap_or(buf);
    let nl = window.iter().position(|&b| b == b'\n')?;
    let (line, _) = window.split_at_checked(nl)?;
    Some(trim_cr(line))
}

/// All lines of `buf` (split on LF, a trailing CR removed from each).
pub fn lines(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    buf.split(|&b| b == b'\n').map(trim_cr)
}

/// Where a line sits in a header-and-body message (SIP, RTSP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Start,
    Headers,
    Body,
}

pub fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `s` without `prefix`, compared ASCII-case-insensitively.
pub fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let (head, tail) = s.split_at_checked(prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then_some(tail)
}

/// True when the line has no ASCII control character other than HT.
///
/// Binary payloads (TLS records, compressed data, ...) almost always contain
/// some within a line's length, so this rejects most of them outright. Bytes
/// >= 0x80 are allowed because SIP/RTSP reason phrases may be UTF-8.
pub fn is_text(line: &[u8]) -> bool {
    line.iter().all(|&b| b == b'\t' || !b.is_ascii_control())
}

/// Split a request line `METHOD SP URI SP VERSION` into its three parts.
/// Exactly one space between parts, nothing empty, and text only.
pub fn request_line_parts(line: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    if !is_text(line) {
        return None;
    }
    let first = line.iter().position(|&b| b == b' ')?;
    let last = line.iter().rposition(|&b| b == b' ')?;
    let (method, rest) = line.split_at_checked(first)?;
    let uri_len = last.checked_sub(first)?.checked_sub(1)?;
    let rest = rest.get(1..)?;
    let (uri, version) = rest.split_at_checked(uri_len)?;
    let version = version.get(1..)?;
    // `first`/`last` are the outermost spaces, so `uri` has a space only if
    // the separators were doubled: reject that too.
    if method.is_empty() || uri.is_empty() || version.is_empty() || uri.contains(&b' ') {
        return None;
    }
    Some((method, uri, version))
}

/// The status code of a status line `VERSION SP ddd SP reason`, when the code
/// lies in `codes`. The version is compared case-insensitively (RFC 3261 7.1).
pub fn status_line_code(line: &[u8], version: &[u8], codes: (u16, u16)) -> Option<u16> {
    let rest = strip_prefix_ci(line, version)?;
    let rest = rest.strip_prefix(b" ")?;
    let (digits, rest) = rest.split_at_checked(3)?;
    rest.strip_prefix(b" ")?;
    if !is_text(line) {
        return None;
    }
    let (code, n) = parse_decimal(digits, 3)?;
    let code = u16::try_from(code).ok()?;
    (n == 3 && code >= codes.0 && code <= codes.1).then_some(code)
}

fn digit(b: u8) -> Option<u8> {
    b.is_ascii_digit().then(|| b.wrapping_sub(b'0'))
}

/// The decimal number at the start of `s` and how many digits it used.
/// None when `s` does not start with a digit or the digit run is longer than
/// `max_digits` (so "1234" is not read as "123" followed by "4").
pub fn parse_decimal(s: &[u8], max_digits: usize) -> Option<(u32, usize)> {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > max_digits {
        return None;
    }
    let mut value: u32 = 0;
    for &b in s.get(..n)? {
        value = value.checked_mul(10)?.checked_add(u32::from(digit(b)?))?;
    }
    Some((value, n))
}

/// `N` decimal octets (0..=255, one to three digits each) separated by `sep`
/// at the start of `s`, and the number of bytes they span. Used for dotted
/// quads (`N = 4`, `.`) and the FTP host-port tuple (`N = 6`, `,`).
pub fn parse_octets<const N: usize>(s: &[u8], sep: u8) -> Option<([u8; N], usize)> {
    let mut out = [0u8; N];
    let mut pos = 0usize;
    for (k, slot) in out.iter_mut().enumerate() {
        if k > 0 {
            if s.get(pos) != Some(&sep) {
                return None;
            }
            pos = pos.checked_add(1)?;
        }
        let (value, n) = parse_decimal(s.get(pos..)?, 3)?;
        *slot = u8::try_from(value).ok()?;
        pos = pos.checked_add(n)?;
    }
    Some((out, pos))
}

/// `s` is exactly a dotted quad, nothing before or after.
pub fn parse_quad_exact(s: &[u8]) -> Option<[u8; 4]> {
    let (addr, n) = parse_octets::<4>(s, b'.')?;
    (n == s.len()).then_some(addr)
}

/// A dotted-quad address found in text: where it starts, and its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quad {
    pub start: usize,
    pub addr: [u8; 4],
}

/// Iterator over the dotted quads in a line that stand on their own.
///
/// "Standing on its own" is what keeps `10.0.1.2` from matching inside
/// `10.0.1.21`, `110.0.1.2`, `1.10.0.1.2` or `10.0.1.2.5`: the quad must not
/// be preceded by a letter, digit or dot, and must not be followed by a letter
/// or digit, nor by a dot that continues with a letter or digit (a trailing
/// full stop in prose is fine).
///
/// Octets are read as decimal, leading zeros and all ("010.0.1.2" is
/// 10.0.1.2), as SIP and RTSP stacks parse them; the C library's octal
/// reading of such text is not followed.
///
/// Candidates start only at the beginning of a digit-and-dot run, so the scan
/// is linear in the line length.
pub struct Quads<'a> {
    text: &'a [u8],
    pos: usize,
}

impl<'a> Quads<'a> {
    pub fn new(text: &'a [u8]) -> Self {
        Quads { text, pos: 0 }
    }
}

fn is_quad_byte(b: &u8) -> bool {
    b.is_ascii_digit() || *b == b'.'
}

impl Iterator for Quads<'_> {
    type Item = Quad;

    fn next(&mut self) -> Option<Quad> {
        loop {
            let rest = self.text.get(self.pos..)?;
            let skip = rest.iter().position(u8::is_ascii_digit)?;
            let start = self.pos.checked_add(skip)?;
            let from_start = self.text.get(start..)?;
            let run_len = from_start
                .iter()
                .position(|b| !is_quad_byte(b))
                .unwrap_or(from_start.len());
            // Whatever happens, never start again inside this digit-and-dot
            // run: a quad that starts inside one fails the boundary rule.
            self.pos = start.checked_add(run_len)?;

            let before_ok = start
                .checked_sub(1)
                .and_then(|i| self.text.get(i))
                .is_none_or(|b| !b.is_ascii_alphanumeric() && *b != b'.');
            if !before_ok {
                continue;
            }
            let Some((addr, n)) = parse_octets::<4>(from_start, b'.') else {
                continue;
            };
            let after = from_start.get(n..).unwrap_or(&[]);
            let after_ok = match after {
                [] => true,
                [b'.', next, ..] => !next.is_ascii_alphanumeric(),
                [b'.'] => true,
                [next, ..] => !next.is_ascii_alphanumeric(),
            };
            if after_ok {
                return Some(Quad { start, addr });
            }
        }
    }
}

/// The first standalone dotted quad in `text` equal to either target.
pub fn find_quad(text: &[u8], a: [u8; 4], b: [u8; 4]) -> Option<Quad> {
    Quads::new(text).find(|q| q.addr == a || q.addr == b)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn quads(s: &str) -> Vec<[u8; 4]> {
        Quads::new(s.as_bytes()).map(|q| q.addr).collect()
    }

    #[test]
    fn first_line_needs_terminator_within_window() {
        assert_eq!(first_line(b"abc\r\ndef"), Some(&b"abc"[..]));
        assert_eq!(first_line(b"abc\ndef"), Some(&b"abc"[..]));
        assert_eq!(first_line(b"abc"), None);
        let mut long = vec![b'a'; MAX_START_LINE];
        long.extend_from_slice(b"\r\n");
        assert_eq!(first_line(&long), None);
        long.truncate(MAX_START_LINE - 1);
        long.push(b'\n');
        assert_eq!(first_line(&long).map(<[u8]>::len), Some(MAX_START_LINE - 1));
    }

    #[test]
    fn case_insensitive_affixes() {
        assert_eq!(strip_prefix_ci(b"PoRt 1", b"port "), Some(&b"1"[..]));
        assert_eq!(strip_prefix_ci(b"POR", b"port "), None);
    }

    #[test]
    fn request_line_parts_are_strict() {
        assert_eq!(
            request_line_parts(b"INVITE sip:a@b SIP/2.0"),
            Some((&b"INVITE"[..], &b"sip:a@b"[..], &b"SIP/2.0"[..]))
        );
        assert_eq!(request_line_parts(b"INVITE  sip:a@b SIP/2.0"), None);
        assert_eq!(request_line_parts(b"INVITE sip:a@b  SIP/2.0"), None);
        assert_eq!(request_line_parts(b"INVITE sip:a @b SIP/2.0"), None);
        assert_eq!(request_line_parts(b"INVITE SIP/2.0"), None);
        assert_eq!(request_line_parts(b"INVITE sip:a\x01 SIP/2.0"), None);
        assert_eq!(request_line_parts(b" x y"), None);
    }

    #[test]
    fn status_codes() {
        let r = (100, 699);
        assert_eq!(
            status_line_code(b"SIP/2.0 200 OK", b"SIP/2.0", r),
            Some(200)
        );
        assert_eq!(
            status_line_code(b"sip/2.0 486 Busy", b"SIP/2.0", r),
            Some(486)
        );
        assert_eq!(status_line_code(b"SIP/2.0 200OK", b"SIP/2.0", r), None);
        assert_eq!(status_line_code(b"SIP/2.0 20 OK", b"SIP/2.0", r), None);
        assert_eq!(status_line_code(b"SIP/2.0 2000 OK", b"SIP/2.0", r), None);
        assert_eq!(status_line_code(b"SIP/2.0 099 x", b"SIP/2.0", r), None);
        assert_eq!(status_line_code(b"SIP/2.0 700 x", b"SIP/2.0", r), None);
        assert_eq!(status_line_code(b"SIP/2.0 200 \x00", b"SIP/2.0", r), None);
    }

    #[test]
    fn decimal_and_octets() {
        assert_eq!(parse_decimal(b"255,", 3), Some((255, 3)));
        assert_eq!(parse_decimal(b"1234", 3), None);
        assert_eq!(parse_decimal(b"x1", 3), None);
        assert_eq!(parse_decimal(b"99999999999999999999", 25), None);
        assert_eq!(
            parse_octets::<4>(b"10.0.1.2:5", b'.'),
            Some(([10, 0, 1, 2], 8))
        );
        assert_eq!(parse_octets::<4>(b"10.0.1.256", b'.'), None);
        assert_eq!(parse_octets::<4>(b"10.0.1", b'.'), None);
        assert_eq!(parse_octets::<4>(b"10..0.1", b'.'), None);
        assert_eq!(
            parse_octets::<6>(b"10,0,1,2,4,1)", b','),
            Some(([10, 0, 1, 2, 4, 1], 12))
        );
        assert_eq!(parse_quad_exact(b"1.2.3.4"), Some([1, 2, 3, 4]));
        assert_eq!(parse_quad_exact(b"1.2.3.4 "), None);
    }

    #[test]
    fn quads_respect_boundaries() {
        assert_eq!(quads("sip:alice@10.0.1.2:5060"), vec![[10, 0, 1, 2]]);
        assert_eq!(quads("IN IP4 10.0.1.2"), vec![[10, 0, 1, 2]]);
        assert_eq!(quads("at 10.0.1.2."), vec![[10, 0, 1, 2]]);
        assert_eq!(quads("10.0.1.2"), vec![[10, 0, 1, 2]]);
        assert_eq!(quads("10.0.1.21"), vec![[10, 0, 1, 21]]);
        assert_eq!(quads("110.0.1.2"), vec![[110, 0, 1, 2]]);
        assert!(quads("1.10.0.1.2").is_empty());
        assert!(quads("v.10.0.1.2").is_empty());
        assert!(quads("10.0.1.2.5").is_empty());
        assert!(quads("10.0.1.2.example.com").is_empty());
        assert!(quads("x10.0.1.2").is_empty());
        assert!(quads("10.0.1.2x").is_empty());
        assert!(quads("1234.0.1.2").is_empty());
        assert!(quads("SIP/2.0/UDP").is_empty());
        assert_eq!(quads("010.000.001.002"), vec![[10, 0, 1, 2]]);
        assert_eq!(
            quads("a=1.2.3.4;b=5.6.7.8>"),
            vec![[1, 2, 3, 4], [5, 6, 7, 8]]
        );
    }

    #[test]
    fn find_quad_picks_first_target() {
        let t = b"x 9.9.9.9 y 10.0.1.21 z 10.0.1.2 w 1.1.1.1";
        let q = find_quad(t, [10, 0, 1, 2], [1, 1, 1, 1]).unwrap();
        assert_eq!(q.addr, [10, 0, 1, 2]);
        assert_eq!(&t[q.start..q.start + 8], b"10.0.1.2");
        assert_eq!(find_quad(t, [10, 0, 1, 3], [8, 8, 8, 8]), None);
    }
}
