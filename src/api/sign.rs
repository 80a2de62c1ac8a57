//! Request signatures of the cloud's RPC-style API (SPEC §4): verification on the server side
//! and signing on the client side (`eiplab api ACTION Key=Value`, Rust tests).
//!
//! Two schemes are in use by the official SDKs, and the endpoint accepts both:
//!
//! * **ACS3-HMAC-SHA256** (`alibabacloud_tea_openapi`, used by `alibabacloud_vpc20160428` and
//!   `alibabacloud_ecs20140526`). The SDK sends `POST /` with the business parameters in the
//!   query string (form-style encoding: a space is `+`), the action and version in the
//!   `x-acs-action` / `x-acs-version` headers, the time in `x-acs-date`, a random
//!   `x-acs-signature-nonce`, the hex SHA-256 of the body in `x-acs-content-sha256`, and
//!   `Authorization: ACS3-HMAC-SHA256 Credential=ID,SignedHeaders=a;b,Signature=HEX`. A few
//!   actions also carry a form body (`application/x-www-form-urlencoded`), which is covered by
//!   the body hash only. The canonical request is
//!   `METHOD \n PATH \n QUERY \n HEADERS \n SIGNED_HEADERS \n HEX(SHA256(BODY))`, where QUERY is
//!   the decoded query parameters sorted by name, each written `enc(name)=enc(value)` (an empty
//!   value gives `name=`), joined by `&`; HEADERS is one `name:value\n` line per signed header
//!   (lowercase name, value trimmed, repeated headers sorted and joined by `,`), in the order of
//!   `SignedHeaders`. The string to sign is `ACS3-HMAC-SHA256 \n HEX(SHA256(canonical request))`
//!   and the signature is `HEX(HMAC-SHA256(secret, string to sign))`.
//! * **Signature version 1.0, HMAC-SHA1** (`aliyun-python-sdk-core`, the Go SDK behind
//!   Terraform, and `alibabacloud_tea_openapi` with `signature_algorithm="v2"`): the protocol
//!   parameters `AccessKeyId`, `Signature`, `SignatureMethod=HMAC-SHA1`,
//!   `SignatureVersion=1.0`, `SignatureNonce`, `Timestamp`, `Format`, `Version`, `Action` travel
//!   with the business parameters in the query and/or a form body. The string to sign is
//!   `METHOD&%2F&enc(canonical query)` where the canonical query covers *every* parameter of the
//!   query and the form body except `Signature`; the signature is
//!   `BASE64(HMAC-SHA1(secret + "&", string to sign))`.
//!
//! `enc` is [`percent_encode`]: RFC 3986 with only `A-Z a-z 0-9 - _ . ~` left as they are.
//!
//! Lists are flattened by the SDKs before signing (`InstanceIds.1=…&InstanceIds.2=…`,
//! `Tag.1.Key=…`), so they are ordinary parameters here.
//!
//! Freshness is checked outside [`verify`] (it takes no clock): [`check_timestamp`] and
//! [`NonceCache`], or everything at once with [`verify_at`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// Largest accepted distance between a request's timestamp and the server clock, in seconds.
pub const MAX_SKEW_SECS: i64 = 900;
/// How long a nonce is remembered after the later of its arrival and its timestamp.
pub const NONCE_TTL_SECS: i64 = 900;
/// The only `Authorization` algorithm accepted.
pub const ACS3_ALGORITHM: &str = "ACS3-HMAC-SHA256";
/// `SignatureMethod` of signature version 1.0.
pub const V1_SIGNATURE_METHOD: &str = "HMAC-SHA1";
/// `SignatureVersion` of signature version 1.0.
pub const V1_SIGNATURE_VERSION: &str = "1.0";
/// Content type of a form body.
pub const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

/// Parameters of the signature protocol itself; they are not passed on as business parameters.
const PROTOCOL_PARAMS: &[&str] = &[
    "AccessKeyId",
    "Action",
    "Format",
    "Signature",
    "SignatureMethod",
    "SignatureNonce",
    "SignatureType",
    "SignatureVersion",
    "Timestamp",
    "Version",
];

/// Headers that must be covered by an ACS3 signature whenever the request carries them.
const ACS3_MUST_SIGN: &[&str] = &[
    "host",
    "x-acs-action",
    "x-acs-content-sha256",
    "x-acs-date",
    "x-acs-signature-nonce",
    "x-acs-version",
];

/// An HTTP request as received, before any parsing.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// `GET`, `POST`, …
    pub method: &'a str,
    /// The path as received, without the query (`/` for the RPC API).
    pub path: &'a str,
    /// The query string as received, without the `?`, still percent-encoded.
    pub raw_query: &'a str,
    /// Header names in lowercase; a repeated header appears once per value.
    pub headers: &'a [(String, String)],
    /// The body bytes.
    pub body: &'a [u8],
}

/// Which signature scheme a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `Authorization: ACS3-HMAC-SHA256 …`.
    Acs3HmacSha256,
    /// Signature version 1.0, `SignatureMethod=HMAC-SHA1`.
    V1HmacSha1,
}

impl Scheme {
    /// The scheme's name as the cloud writes it.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Acs3HmacSha256 => ACS3_ALGORITHM,
            Scheme::V1HmacSha1 => V1_SIGNATURE_METHOD,
        }
    }
}

/// A request whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCall {
    pub scheme: Scheme,
    pub access_key_id: String,
    pub nonce: String,
    /// Unix seconds, from `x-acs-date` or `Timestamp`.
    pub timestamp: i64,
    pub action: String,
    pub version: Option<String>,
    /// Business parameters, decoded, from the query and a form body merged (the body wins on a
    /// repeated name); the protocol parameters (`Signature*`, `AccessKeyId`, `Timestamp`,
    /// `Format`, `Version`, `Action`) are removed.
    pub params: BTreeMap<String, String>,
}

/// Why a request was refused. [`code`](SignError::code), [`http_status`](SignError::http_status)
/// and [`message`](SignError::message) give the cloud's error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignError {
    /// A part of the signature or the credential is missing or malformed.
    IncompleteSignature { detail: String },
    /// The signature is not the one the server computes.
    SignatureDoesNotMatch {
        /// The server's string to sign, shown to the client so it can compare.
        string_to_sign: String,
        /// ACS3 only: the server's canonical request.
        canonical_request: Option<String>,
        /// A more precise reason when one is known.
        detail: Option<String>,
    },
    /// No such access key.
    AccessKeyIdNotFound { access_key_id: String },
    /// The nonce was seen within the last 15 minutes.
    SignatureNonceUsed { nonce: String },
    /// The timestamp is more than 15 minutes away from the server clock.
    TimestampExpired { timestamp: i64, now: i64 },
    /// The timestamp is not ISO 8601 UTC.
    TimestampFormat { value: String },
    /// Neither the `Action` parameter nor the `x-acs-action` header is there.
    MissingAction,
    /// A `SignatureMethod` or `Authorization` algorithm other than the supported ones.
    InvalidSignatureMethod { method: String },
    /// A `SignatureVersion` other than `1.0`.
    UnsupportedSignatureVersion { version: String },
}

impl SignError {
    /// The cloud's error code.
    pub fn code(&self) -> &'static str {
        match self {
            SignError::IncompleteSignature { .. } => "IncompleteSignature",
            SignError::SignatureDoesNotMatch { .. } => "SignatureDoesNotMatch",
            SignError::AccessKeyIdNotFound { .. } => "InvalidAccessKeyId.NotFound",
            SignError::SignatureNonceUsed { .. } => "SignatureNonceUsed",
            SignError::TimestampExpired { .. } => "InvalidTimeStamp.Expired",
            SignError::TimestampFormat { .. } => "InvalidTimeStamp.Format",
            SignError::MissingAction => "MissingAction",
            SignError::InvalidSignatureMethod { .. } => "InvalidSignatureMethod",
            SignError::UnsupportedSignatureVersion { .. } => "UnsupportedSignatureVersion",
        }
    }

    /// The HTTP status of the error response.
    pub fn http_status(&self) -> u16 {
        match self {
            SignError::AccessKeyIdNotFound { .. } => 404,
            _ => 400,
        }
    }

    /// The error message: what was wrong and what to do.
    ///
    /// For `SignatureDoesNotMatch` the message is `…server string to sign is:` followed by the
    /// string to sign, with no other `:` before it: `aliyun-python-sdk-core` takes the text
    /// between the first and the second `:` and compares it with its own string to sign (a
    /// message without a `:` makes it crash with an `IndexError`). When the two are equal it
    /// reports `InvalidAccessKeySecret` instead.
    pub fn message(&self) -> String {
        match self {
            SignError::IncompleteSignature { detail } => format!(
                "The request signature is incomplete ({detail}). Sign with {ACS3_ALGORITHM} in \
                 the Authorization header, or with signature version 1.0 (the parameters \
                 AccessKeyId, Signature, SignatureMethod, SignatureVersion, SignatureNonce and \
                 Timestamp)."
            ),
            SignError::SignatureDoesNotMatch {
                string_to_sign,
                canonical_request,
                detail,
            } => {
                let mut m = String::from("Specified signature is not matched with our calculation");
                if let Some(d) = detail {
                    m.push_str(" (");
                    m.push_str(&d.replace(':', " "));
                    m.push(')');
                }
                m.push_str(". server string to sign is:");
                m.push_str(string_to_sign);
                if let Some(c) = canonical_request {
                    m.push_str("\nserver canonical request is:\n");
                    m.push_str(c);
                }
                m
            }
            SignError::AccessKeyIdNotFound { access_key_id } => format!(
                "Specified access key is not found: {access_key_id:?}. Use an AccessKeyId the \
                 lab knows."
            ),
            SignError::SignatureNonceUsed { nonce } => format!(
                "Specified signature nonce was used already: {nonce:?}. Send a new random \
                 nonce (SignatureNonce or x-acs-signature-nonce) with every request."
            ),
            SignError::TimestampExpired { timestamp, now } => format!(
                "Specified time stamp or date value is expired: {} is {} s away from the server \
                 time {}, more than the {MAX_SKEW_SECS} s allowed. Check the client clock and \
                 send the time in UTC.",
                iso8601(*timestamp),
                timestamp.abs_diff(*now),
                iso8601(*now)
            ),
            SignError::TimestampFormat { value } => format!(
                "Specified time stamp or date value is not well formatted: {value:?}. Use ISO \
                 8601 in UTC, for example 2018-01-01T12:00:00Z."
            ),
            SignError::MissingAction => "Action is mandatory for this action. Send the Action \
                                         parameter (signature version 1.0) or the x-acs-action \
                                         header (ACS3-HMAC-SHA256)."
                .to_string(),
            SignError::InvalidSignatureMethod { method } => format!(
                "Specified signature method is not supported: {method:?}. Use \
                 {ACS3_ALGORITHM}, or {V1_SIGNATURE_METHOD} with signature version 1.0."
            ),
            SignError::UnsupportedSignatureVersion { version } => format!(
                "Specified signature version is not supported: {version:?}. Use \
                 {V1_SIGNATURE_VERSION}."
            ),
        }
    }
}

impl fmt::Display for SignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())
    }
}

impl std::error::Error for SignError {}

// ---------------------------------------------------------------------------------------------
// Encoding helpers
// ---------------------------------------------------------------------------------------------

/// Percent-encodes `s` the cloud's way: RFC 3986, UTF-8, only `A-Z a-z 0-9 - _ . ~` kept,
/// everything else `%XX` in uppercase hex (so a space is `%20`, `*` is `%2A`, `~` stays).
pub fn percent_encode(s: &str) -> String {
    encode_bytes(s.as_bytes(), false)
}

fn encode_bytes(bytes: &[u8], keep_slash: bool) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`). A `%` not followed by two
/// hex digits stays as it is; bytes that are not UTF-8 become U+FFFD.
fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            if let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex_value),
                bytes.get(i + 2).copied().and_then(hex_value),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(if plus_is_space && b == b'+' { b' ' } else { b });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits `a=1&b=2` (a query string or a form body) into decoded pairs. A part without `=` is a
/// name with an empty value; empty parts are skipped.
fn parse_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// `enc(k)=enc(v)` joined by `&`, sorted by name then value.
fn canonical_query(pairs: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = pairs.iter().collect();
    sorted.sort();
    let mut out = String::new();
    for (k, v) in sorted {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&percent_encode(k));
        out.push('=');
        out.push_str(&percent_encode(v));
    }
    out
}

/// Formats unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (clamped to years 0000–9999).
pub fn iso8601(ts: i64) -> String {
    const MIN: i64 = -62_167_219_200; // 0000-01-01T00:00:00Z
    const MAX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    match time::OffsetDateTime::from_unix_timestamp(ts.clamp(MIN, MAX)) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => "1970-01-01T00:00:00Z".to_string(),
    }
}

/// Parses an ISO 8601 / RFC 3339 date-time (`2018-01-01T12:00:00Z`; fractional seconds and a
/// numeric offset are accepted too) into unix seconds.
pub fn parse_iso8601(s: &str) -> Option<i64> {
    if s.len() > 64 {
        return None;
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// Accepts `ts` when it is at most [`MAX_SKEW_SECS`] away from `now`, either way.
pub fn check_timestamp(ts: i64, now: i64) -> Result<(), SignError> {
    if ts.abs_diff(now) > MAX_SKEW_SECS.unsigned_abs() {
        Err(SignError::TimestampExpired { timestamp: ts, now })
    } else {
        Ok(())
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac_sha256(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length")
}

fn hmac_sha1(key: &[u8]) -> Hmac<Sha1> {
    Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes a key of any length")
}

/// The string to sign of signature version 1.0: `METHOD&%2F&enc(canonical query)`, over all
/// `params` except `Signature`.
pub fn v1_string_to_sign(method: &str, params: &[(String, String)]) -> String {
    let signed: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "Signature")
        .cloned()
        .collect();
    format!("{method}&%2F&{}", percent_encode(&canonical_query(&signed)))
}

/// The signature of version 1.0: `BASE64(HMAC-SHA1(secret + "&", string_to_sign))`.
pub fn v1_signature(secret: &str, string_to_sign: &str) -> String {
    let mut mac = hmac_sha1(format!("{secret}&").as_bytes());
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The ACS3 canonical request. `headers` are `(lowercase name, trimmed value)` in the order of
/// `signed_headers`.
pub fn acs3_canonical_request(
    method: &str,
    path: &str,
    query: &[(String, String)],
    headers: &[(String, String)],
    signed_headers: &str,
    hashed_payload: &str,
) -> String {
    let mut c = String::new();
    c.push_str(method);
    c.push('\n');
    c.push_str(path);
    c.push('\n');
    c.push_str(&canonical_query(query));
    c.push('\n');
    for (name, value) in headers {
        c.push_str(name);
        c.push(':');
        c.push_str(value);
        c.push('\n');
    }
    c.push('\n');
    c.push_str(signed_headers);
    c.push('\n');
    c.push_str(hashed_payload);
    c
}

/// The ACS3 string to sign: `ACS3-HMAC-SHA256\nHEX(SHA256(canonical_request))`.
pub fn acs3_string_to_sign(canonical_request: &str) -> String {
    format!(
        "{ACS3_ALGORITHM}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// The ACS3 signature: `HEX(HMAC-SHA256(secret, string_to_sign))`.
pub fn acs3_signature(secret: &str, string_to_sign: &str) -> String {
    let mut mac = hmac_sha256(secret.as_bytes());
    mac.update(string_to_sign.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

// ---------------------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------------------

fn header_values<'h>(headers: &'h [(String, String)], name: &str) -> Vec<&'h str> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

fn first_header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

fn is_form(req: &RequestParts) -> bool {
    first_header(req.headers, "content-type").is_some_and(|ct| {
        ct.trim_start()
            .get(..FORM_CONTENT_TYPE.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(FORM_CONTENT_TYPE))
    })
}

/// The form body's pairs when the request has a form content type.
fn body_pairs(req: &RequestParts) -> Vec<(String, String)> {
    if is_form(req) {
        parse_pairs(&String::from_utf8_lossy(req.body))
    } else {
        Vec::new()
    }
}

fn business_params(
    query: Vec<(String, String)>,
    body: Vec<(String, String)>,
) -> BTreeMap<String, String> {
    query
        .into_iter()
        .chain(body)
        .filter(|(k, _)| !PROTOCOL_PARAMS.contains(&k.as_str()))
        .collect()
}

fn parse_timestamp(value: &str) -> Result<i64, SignError> {
    parse_iso8601(value.trim()).ok_or_else(|| SignError::TimestampFormat {
        value: value.to_string(),
    })
}

fn lookup_secret(
    key_id: &str,
    secret_of: &dyn Fn(&str) -> Option<String>,
) -> Result<String, SignError> {
    secret_of(key_id).ok_or_else(|| SignError::AccessKeyIdNotFound {
        access_key_id: key_id.to_string(),
    })
}

/// Checks the signature of a request (either scheme) and returns what it asks for.
///
/// The order of the checks: the scheme's parts are all there and supported
/// (`IncompleteSignature`, `InvalidSignatureMethod`, `UnsupportedSignatureVersion`), the
/// timestamp parses (`InvalidTimeStamp.Format`), the key exists (`InvalidAccessKeyId.NotFound`),
/// the signature matches (`SignatureDoesNotMatch`), then the action is named (`MissingAction`).
/// Timestamp skew and nonce reuse are not checked here: see [`verify_at`].
pub fn verify(
    req: &RequestParts,
    secret_of: &dyn Fn(&str) -> Option<String>,
) -> Result<SignedCall, SignError> {
    if let Some(auth) = first_header(req.headers, "authorization") {
        verify_acs3(req, auth, secret_of)
    } else {
        verify_v1(req, secret_of)
    }
}

/// [`verify`], then [`check_timestamp`] against `now` (unix seconds), then the nonce against
/// `nonces`. A nonce is only recorded once the signature is good, and it is remembered until
/// its request could no longer pass the timestamp check.
pub fn verify_at(
    req: &RequestParts,
    secret_of: &dyn Fn(&str) -> Option<String>,
    now: i64,
    nonces: &mut NonceCache,
) -> Result<SignedCall, SignError> {
    let call = verify(req, secret_of)?;
    check_timestamp(call.timestamp, now)?;
    let until = call.timestamp.max(now).saturating_add(NONCE_TTL_SECS);
    nonces.check_and_insert_until(&call.access_key_id, &call.nonce, now, until)?;
    Ok(call)
}

struct Authorization<'a> {
    credential: Option<&'a str>,
    signed_headers: Option<&'a str>,
    signature: Option<&'a str>,
}

fn parse_authorization(rest: &str) -> Authorization<'_> {
    let mut a = Authorization {
        credential: None,
        signed_headers: None,
        signature: None,
    };
    for part in rest.split(',') {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        let v = v.trim();
        match k.trim() {
            "Credential" => a.credential = Some(v),
            "SignedHeaders" => a.signed_headers = Some(v),
            "Signature" => a.signature = Some(v),
            _ => {}
        }
    }
    a
}

fn verify_acs3(
    req: &RequestParts,
    auth: &str,
    secret_of: &dyn Fn(&str) -> Option<String>,
) -> Result<SignedCall, SignError> {
    let auth = auth.trim();
    let (algorithm, rest) = auth.split_once(' ').unwrap_or((auth, ""));
    if algorithm.is_empty() {
        return Err(SignError::IncompleteSignature {
            detail: "the Authorization header is empty".into(),
        });
    }
    if algorithm != ACS3_ALGORITHM {
        return Err(SignError::InvalidSignatureMethod {
            method: algorithm.to_string(),
        });
    }
    let parsed = parse_authorization(rest);
    let mut missing = Vec::new();
    let credential = non_empty(parsed.credential);
    let signed_headers = non_empty(parsed.signed_headers);
    let signature = non_empty(parsed.signature);
    if credential.is_none() {
        missing.push("Credential in the Authorization header");
    }
    if signed_headers.is_none() {
        missing.push("SignedHeaders in the Authorization header");
    }
    if signature.is_none() {
        missing.push("Signature in the Authorization header");
    }
    let nonce = non_empty(first_header(req.headers, "x-acs-signature-nonce"));
    if nonce.is_none() {
        missing.push("the x-acs-signature-nonce header");
    }
    let date = non_empty(first_header(req.headers, "x-acs-date"));
    if date.is_none() {
        missing.push("the x-acs-date header");
    }
    let (Some(credential), Some(signed_headers), Some(signature), Some(nonce), Some(date)) =
        (credential, signed_headers, signature, nonce, date)
    else {
        return Err(SignError::IncompleteSignature {
            detail: format!("missing {}", missing.join(", ")),
        });
    };

    let signed_names: Vec<String> = signed_headers
        .split(';')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    for must in ACS3_MUST_SIGN {
        if first_header(req.headers, must).is_some() && !signed_names.iter().any(|n| n == must) {
            return Err(SignError::IncompleteSignature {
                detail: format!("the {must} header is sent but not listed in SignedHeaders"),
            });
        }
    }
    let mut canonical_headers = Vec::with_capacity(signed_names.len());
    for name in &signed_names {
        let mut values: Vec<&str> = header_values(req.headers, name)
            .into_iter()
            .map(str::trim)
            .collect();
        if name.is_empty() || values.is_empty() {
            return Err(SignError::IncompleteSignature {
                detail: format!("SignedHeaders lists {name:?} but the request has no such header"),
            });
        }
        values.sort_unstable();
        canonical_headers.push((name.clone(), values.join(",")));
    }

    let timestamp = parse_timestamp(date)?;
    let secret = lookup_secret(credential, secret_of)?;

    let query = parse_pairs(req.raw_query);
    let path = if req.path.is_empty() {
        "/".to_string()
    } else {
        encode_bytes(percent_decode(req.path, false).as_bytes(), true)
    };
    let hashed_payload = sha256_hex(req.body);
    let canonical = acs3_canonical_request(
        req.method,
        &path,
        &query,
        &canonical_headers,
        signed_headers,
        &hashed_payload,
    );
    let string_to_sign = acs3_string_to_sign(&canonical);
    let mut mac = hmac_sha256(secret.as_bytes());
    mac.update(string_to_sign.as_bytes());
    let given = hex::decode(signature).unwrap_or_default();
    if mac.verify_slice(&given).is_err() {
        let declared = first_header(req.headers, "x-acs-content-sha256").map(str::trim);
        let detail = match declared {
            Some(d) if !d.eq_ignore_ascii_case(&hashed_payload) => Some(format!(
                "x-acs-content-sha256 is {d} but the body hashes to {hashed_payload}"
            )),
            _ => None,
        };
        return Err(SignError::SignatureDoesNotMatch {
            string_to_sign,
            canonical_request: Some(canonical),
            detail,
        });
    }

    let action =
        non_empty(first_header(req.headers, "x-acs-action")).ok_or(SignError::MissingAction)?;
    let version = non_empty(first_header(req.headers, "x-acs-version")).map(str::to_string);
    Ok(SignedCall {
        scheme: Scheme::Acs3HmacSha256,
        access_key_id: credential.to_string(),
        nonce: nonce.to_string(),
        timestamp,
        action: action.to_string(),
        version,
        params: business_params(query, body_pairs(req)),
    })
}

fn verify_v1(
    req: &RequestParts,
    secret_of: &dyn Fn(&str) -> Option<String>,
) -> Result<SignedCall, SignError> {
    let query = parse_pairs(req.raw_query);
    let body = body_pairs(req);
    let get = |name: &str| -> Option<&str> {
        let v = query
            .iter()
            .chain(body.iter())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str());
        non_empty(v)
    };
    const REQUIRED: [&str; 6] = [
        "AccessKeyId",
        "Signature",
        "SignatureMethod",
        "SignatureVersion",
        "SignatureNonce",
        "Timestamp",
    ];
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|n| get(n).is_none())
        .collect();
    if missing.len() == REQUIRED.len() {
        return Err(SignError::IncompleteSignature {
            detail: "the request has neither an Authorization header nor a Signature parameter"
                .into(),
        });
    }
    if let Some(method) = get("SignatureMethod") {
        if method != V1_SIGNATURE_METHOD {
            return Err(SignError::InvalidSignatureMethod {
                method: method.to_string(),
            });
        }
    }
    if let Some(version) = get("SignatureVersion") {
        if version != V1_SIGNATURE_VERSION {
            return Err(SignError::UnsupportedSignatureVersion {
                version: version.to_string(),
            });
        }
    }
    let (Some(key_id), Some(signature), Some(nonce), Some(ts)) = (
        get("AccessKeyId"),
        get("Signature"),
        get("SignatureNonce"),
        get("Timestamp"),
    ) else {
        return Err(SignError::IncompleteSignature {
            detail: format!("missing the parameter(s) {}", missing.join(", ")),
        });
    };
    if !missing.is_empty() {
        return Err(SignError::IncompleteSignature {
            detail: format!("missing the parameter(s) {}", missing.join(", ")),
        });
    }
    let timestamp = parse_timestamp(ts)?;
    let secret = lookup_secret(key_id, secret_of)?;

    let all: Vec<(String, String)> = query.iter().chain(body.iter()).cloned().collect();
    let string_to_sign = v1_string_to_sign(req.method, &all);
    let mut mac = hmac_sha1(format!("{secret}&").as_bytes());
    mac.update(string_to_sign.as_bytes());
    // A client that forgot to encode `+` sends a space after decoding.
    let given = base64::engine::general_purpose::STANDARD
        .decode(signature.replace(' ', "+"))
        .unwrap_or_default();
    if mac.verify_slice(&given).is_err() {
        return Err(SignError::SignatureDoesNotMatch {
            string_to_sign,
            canonical_request: None,
            detail: None,
        });
    }

    let action = get("Action").ok_or(SignError::MissingAction)?.to_string();
    let version = get("Version").map(str::to_string);
    Ok(SignedCall {
        scheme: Scheme::V1HmacSha1,
        access_key_id: key_id.to_string(),
        nonce: nonce.to_string(),
        timestamp,
        action,
        version,
        params: business_params(query, body),
    })
}

/// Remembers `(access key, nonce)` pairs so a signed request cannot be replayed.
///
/// Entries leave when their time is up (pruned on every call), and the cache never holds more
/// than [`NonceCache::MAX_ENTRIES`]; past that the entries closest to expiry go first.
#[derive(Debug, Default)]
pub struct NonceCache {
    expiry_of: HashMap<(String, String), i64>,
    by_expiry: BTreeSet<(i64, String, String)>,
}

impl NonceCache {
    /// Hard bound on the number of remembered nonces.
    pub const MAX_ENTRIES: usize = 1 << 20;

    pub fn new() -> Self {
        Self::default()
    }

    /// Number of nonces remembered.
    pub fn len(&self) -> usize {
        self.expiry_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.expiry_of.is_empty()
    }

    /// Refuses a nonce already seen for this key within [`NONCE_TTL_SECS`]; otherwise remembers
    /// it for that long from `now`.
    pub fn check_and_insert(
        &mut self,
        key_id: &str,
        nonce: &str,
        now: i64,
    ) -> Result<(), SignError> {
        self.check_and_insert_until(key_id, nonce, now, now.saturating_add(NONCE_TTL_SECS))
    }

    /// Like [`check_and_insert`](Self::check_and_insert), remembering the nonce until `until`
    /// (unix seconds, exclusive).
    pub fn check_and_insert_until(
        &mut self,
        key_id: &str,
        nonce: &str,
        now: i64,
        until: i64,
    ) -> Result<(), SignError> {
        self.prune(now);
        let key = (key_id.to_string(), nonce.to_string());
        if self.expiry_of.contains_key(&key) {
            return Err(SignError::SignatureNonceUsed {
                nonce: nonce.to_string(),
            });
        }
        if until <= now {
            return Ok(());
        }
        while self.expiry_of.len() >= Self::MAX_ENTRIES {
            let Some((_, k, n)) = self.by_expiry.pop_first() else {
                break;
            };
            self.expiry_of.remove(&(k, n));
        }
        self.by_expiry.insert((until, key.0.clone(), key.1.clone()));
        self.expiry_of.insert(key, until);
        Ok(())
    }

    /// Forgets every nonce whose time is up at `now`.
    pub fn prune(&mut self, now: i64) {
        while let Some(first) = self.by_expiry.first() {
            if first.0 > now {
                break;
            }
            if let Some((_, k, n)) = self.by_expiry.pop_first() {
                self.expiry_of.remove(&(k, n));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------------

/// A signed request, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRequest {
    pub method: String,
    /// `/` or `/?query`.
    pub path_and_query: String,
    /// Lowercase names. `host` is included because ACS3 signs it: send exactly this value (an
    /// HTTP client that derives Host from the URL sends the same value already).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Signs a call with signature version 1.0 (`HMAC-SHA1`). With `form_body` every parameter,
/// `Signature` included, goes into an `application/x-www-form-urlencoded` body (as Terraform
/// sends it); otherwise into the query. Protocol parameters in `params` are overridden.
#[allow(clippy::too_many_arguments)]
pub fn sign_v1(
    method: &str,
    host: &str,
    action: &str,
    version: &str,
    params: &BTreeMap<String, String>,
    key_id: &str,
    secret: &str,
    nonce: &str,
    timestamp: i64,
    form_body: bool,
) -> OutgoingRequest {
    let mut all = params.clone();
    for (k, v) in [
        ("AccessKeyId", key_id),
        ("Action", action),
        ("Format", "JSON"),
        ("SignatureMethod", V1_SIGNATURE_METHOD),
        ("SignatureNonce", nonce),
        ("SignatureVersion", V1_SIGNATURE_VERSION),
        ("Version", version),
    ] {
        all.insert(k.to_string(), v.to_string());
    }
    all.insert("Timestamp".to_string(), iso8601(timestamp));
    all.remove("Signature");
    let pairs: Vec<(String, String)> = all.into_iter().collect();
    let string_to_sign = v1_string_to_sign(method, &pairs);
    let mut pairs = pairs;
    pairs.push((
        "Signature".to_string(),
        v1_signature(secret, &string_to_sign),
    ));
    let encoded = canonical_query(&pairs);
    let mut headers = vec![("host".to_string(), host.to_string())];
    if form_body {
        headers.push(("content-type".to_string(), FORM_CONTENT_TYPE.to_string()));
        OutgoingRequest {
            method: method.to_string(),
            path_and_query: "/".to_string(),
            headers,
            body: encoded.into_bytes(),
        }
    } else {
        OutgoingRequest {
            method: method.to_string(),
            path_and_query: format!("/?{encoded}"),
            headers,
            body: Vec::new(),
        }
    }
}

/// Signs a call with ACS3-HMAC-SHA256: parameters in the query, empty body, signed headers
/// `host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version`.
#[allow(clippy::too_many_arguments)]
pub fn sign_acs3(
    method: &str,
    host: &str,
    action: &str,
    version: &str,
    params: &BTreeMap<String, String>,
    key_id: &str,
    secret: &str,
    nonce: &str,
    timestamp: i64,
) -> OutgoingRequest {
    let query: Vec<(String, String)> = params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let hashed_payload = sha256_hex(b"");
    let headers: Vec<(String, String)> = [
        ("host", host.trim().to_string()),
        ("x-acs-action", action.trim().to_string()),
        ("x-acs-content-sha256", hashed_payload.clone()),
        ("x-acs-date", iso8601(timestamp)),
        ("x-acs-signature-nonce", nonce.trim().to_string()),
        ("x-acs-version", version.trim().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical = acs3_canonical_request(
        method,
        "/",
        &query,
        &headers,
        &signed_headers,
        &hashed_payload,
    );
    let signature = acs3_signature(secret, &acs3_string_to_sign(&canonical));
    let mut headers = headers;
    headers.push((
        "authorization".to_string(),
        format!("{ACS3_ALGORITHM} Credential={key_id},SignedHeaders={signed_headers},Signature={signature}"),
    ));
    let q = canonical_query(&query);
    OutgoingRequest {
        method: method.to_string(),
        path_and_query: if q.is_empty() {
            "/".to_string()
        } else {
            format!("/?{q}")
        },
        headers,
        body: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY_ID: &str = "LTAI5tEIPLABTESTKEY01";
    const SECRET: &str = "eiplabSecretForTests0123456789";
    const T0: i64 = 1_514_808_000; // 2018-01-01T12:00:00Z

    fn secrets(id: &str) -> Option<String> {
        (id == KEY_ID).then(|| SECRET.to_string())
    }

    fn wrong_secret(id: &str) -> Option<String> {
        (id == KEY_ID).then(|| "not-the-secret".to_string())
    }

    /// An owned request, for building and mutating test inputs.
    #[derive(Debug, Clone)]
    struct Req {
        label: String,
        method: String,
        path: String,
        raw_query: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Req {
        fn parts(&self) -> RequestParts<'_> {
            RequestParts {
                method: &self.method,
                path: &self.path,
                raw_query: &self.raw_query,
                headers: &self.headers,
                body: &self.body,
            }
        }

        fn from_outgoing(out: &OutgoingRequest) -> Req {
            let (path, query) = out
                .path_and_query
                .split_once('?')
                .unwrap_or((out.path_and_query.as_str(), ""));
            Req {
                label: "signed".into(),
                method: out.method.clone(),
                path: path.into(),
                raw_query: query.into(),
                headers: out.headers.clone(),
                body: out.body.clone(),
            }
        }

        fn header_mut(&mut self, name: &str) -> &mut String {
            let i = self.headers.iter().position(|(k, _)| k == name).unwrap();
            &mut self.headers[i].1
        }
    }

    fn captures() -> Vec<Req> {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("sign_vectors/sdk_captures.json")).unwrap();
        v["captures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                assert_eq!(c["access_key_id"], KEY_ID);
                assert_eq!(c["access_key_secret"], SECRET);
                Req {
                    label: c["label"].as_str().unwrap().into(),
                    method: c["method"].as_str().unwrap().into(),
                    path: c["path"].as_str().unwrap().into(),
                    raw_query: c["raw_query"].as_str().unwrap().into(),
                    headers: c["headers"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|h| {
                            (
                                h[0].as_str().unwrap().to_ascii_lowercase(),
                                h[1].as_str().unwrap().to_string(),
                            )
                        })
                        .collect(),
                    body: c["body"].as_str().unwrap().as_bytes().to_vec(),
                }
            })
            .collect()
    }

    fn capture(label: &str) -> Req {
        captures().into_iter().find(|c| c.label == label).unwrap()
    }

    fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn mutate_char(s: &str, i: usize) -> String {
        let mut chars: Vec<char> = s.chars().collect();
        chars[i] = if chars[i] == 'Q' { 'R' } else { 'Q' };
        chars.into_iter().collect()
    }

    #[test]
    fn percent_encoding_is_rfc3986() {
        assert_eq!(percent_encode("AZaz09-_.~"), "AZaz09-_.~");
        assert_eq!(percent_encode("a b*+/'ü:"), "a%20b%2A%2B%2F%27%C3%BC%3A");
        assert_eq!(percent_decode("a+b%20c%2a%zz%", true), "a b c*%zz%");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(
            parse_pairs("a=1&&b&c=x=y&=v"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "".into()),
                ("c".into(), "x=y".into()),
                ("".into(), "v".into())
            ]
        );
    }

    #[test]
    fn iso8601_round_trip() {
        assert_eq!(iso8601(T0), "2018-01-01T12:00:00Z");
        assert_eq!(parse_iso8601("2018-01-01T12:00:00Z"), Some(T0));
        assert_eq!(parse_iso8601("2018-01-01T12:00:00.123Z"), Some(T0));
        assert_eq!(parse_iso8601("2018-01-01T20:00:00+08:00"), Some(T0));
        assert_eq!(parse_iso8601("2018-01-01 12:00:00"), None);
        assert_eq!(parse_iso8601("1514808000"), None);
        assert_eq!(parse_iso8601(""), None);
        assert_eq!(iso8601(i64::MIN), "0000-01-01T00:00:00Z");
        assert_eq!(iso8601(i64::MAX), "9999-12-31T23:59:59Z");
        for ts in [0, 1, T0, 4_102_444_800, -1] {
            assert_eq!(parse_iso8601(&iso8601(ts)), Some(ts));
        }
    }

    /// Every captured SDK request verifies, with the fields the SDK meant.
    #[test]
    fn sdk_captures_verify() {
        let caps = captures();
        assert_eq!(caps.len(), 11);
        for c in &caps {
            let call = verify(&c.parts(), &secrets).unwrap_or_else(|e| panic!("{}: {e}", c.label));
            assert_eq!(call.access_key_id, KEY_ID, "{}", c.label);
            let want = if c.label.starts_with("acs3") {
                Scheme::Acs3HmacSha256
            } else {
                Scheme::V1HmacSha1
            };
            assert_eq!(call.scheme, want, "{}", c.label);
            assert!(!call.nonce.is_empty());
            for p in PROTOCOL_PARAMS {
                assert!(!call.params.contains_key(*p), "{}: {p}", c.label);
            }
            // With a clock close to the capture time the full check passes, once.
            let mut nonces = NonceCache::new();
            let now = call.timestamp + 30;
            assert_eq!(
                verify_at(&c.parts(), &secrets, now, &mut nonces),
                Ok(call.clone())
            );
            assert_eq!(
                verify_at(&c.parts(), &secrets, now + 1, &mut nonces)
                    .unwrap_err()
                    .code(),
                "SignatureNonceUsed"
            );
            // Far from the capture time it is stale, both ways.
            let mut fresh = NonceCache::new();
            for now in [call.timestamp + 901, call.timestamp - 901] {
                let e = verify_at(&c.parts(), &secrets, now, &mut fresh).unwrap_err();
                assert_eq!(e.code(), "InvalidTimeStamp.Expired", "{}", c.label);
            }
        }
    }

    #[test]
    fn sdk_capture_fields() {
        let call = verify(
            &capture("acs3-vpc-allocate-special-chars").parts(),
            &secrets,
        )
        .unwrap();
        assert_eq!(call.action, "AllocateEipAddress");
        assert_eq!(call.version.as_deref(), Some("2016-04-28"));
        assert_eq!(call.params["Name"], "my eip/ü*~'");
        assert_eq!(call.params["RegionId"], "cn-shanghai");

        let call = verify(&capture("acs3-vpc-describe-tags").parts(), &secrets).unwrap();
        assert_eq!(call.params["AllocationId"], "eip-a,eip-b");
        assert_eq!(call.params["Tag.1.Key"], "k 1");
        assert_eq!(call.params["Tag.1.Value"], "v+1");

        for label in ["acs3-vpc-assoc-batch-list", "v1-old-sdk-assoc-batch-post"] {
            let call = verify(&capture(label).parts(), &secrets).unwrap();
            assert_eq!(call.action, "AssociateEipAddressBatch");
            assert_eq!(call.params["InstanceIds.1"], "eip-a");
            assert_eq!(call.params["InstanceIds.2"], "eip-b");
            assert_eq!(call.params["Mode"], "MULTI_BINDED");
        }

        let call = verify(
            &capture("acs3-ecs-assign-private-ips-list").parts(),
            &secrets,
        )
        .unwrap();
        assert_eq!(call.version.as_deref(), Some("2014-05-26"));
        assert_eq!(call.params["PrivateIpAddress.2"], "10.0.0.6");

        for label in [
            "acs3-vpc-vpn-attachment-form-body",
            "v1-new-sdk-v2-vpn-attachment-form-body",
        ] {
            let call = verify(&capture(label).parts(), &secrets).unwrap();
            assert_eq!(call.params["TunnelOptionsSpecification.1.TunnelIndex"], "1");
            assert_eq!(call.params["LocalSubnet"], "10.0.0.0/24");
        }

        let call = verify(&capture("v1-old-sdk-describe-get").parts(), &secrets).unwrap();
        assert_eq!(call.action, "DescribeEipAddresses");
        assert_eq!(
            call.timestamp,
            parse_iso8601("2026-11-22T05:43:21Z").unwrap()
        );
        assert_eq!(call.params["Tag.1.Key"], "k 1");

        let call = verify(&capture("v1-old-sdk-allocate-form-body").parts(), &secrets).unwrap();
        assert_eq!(call.params["Description"], "body param ü & = +");
        assert_eq!(call.params["ClientToken"], "tok~*");
        assert_eq!(call.params["Bandwidth"], "1");
    }

    #[test]
    fn sdk_captures_wrong_secret_or_key() {
        for c in captures() {
            let e = verify(&c.parts(), &wrong_secret).unwrap_err();
            assert_eq!(e.code(), "SignatureDoesNotMatch", "{}", c.label);
            assert_eq!(e.http_status(), 400);
            let e = verify(&c.parts(), &|_| None).unwrap_err();
            assert_eq!(e.code(), "InvalidAccessKeyId.NotFound", "{}", c.label);
            assert_eq!(e.http_status(), 404);
        }
    }

    /// The old SDK compares the text between the first and second `:` of the message with its
    /// own string to sign.
    #[test]
    fn mismatch_message_carries_string_to_sign() {
        for c in captures() {
            let e = verify(&c.parts(), &wrong_secret).unwrap_err();
            let SignError::SignatureDoesNotMatch { string_to_sign, .. } = &e else {
                panic!("{e:?}")
            };
            let msg = e.message();
            assert!(msg.contains(string_to_sign.as_str()));
            if c.label.starts_with("v1") {
                assert_eq!(
                    msg.split(':').nth(1),
                    Some(string_to_sign.as_str()),
                    "{}",
                    c.label
                );
                assert!(string_to_sign.starts_with(&format!("{}&%2F&", c.method)));
            } else {
                assert!(string_to_sign.starts_with("ACS3-HMAC-SHA256\n"));
            }
        }
    }

    /// Changing any one character of the query, of a signed header or of the body is refused.
    #[test]
    fn sdk_captures_reject_any_one_char_change() {
        for c in captures() {
            for i in 0..c.raw_query.chars().count() {
                let mut t = c.clone();
                t.raw_query = mutate_char(&c.raw_query, i);
                assert!(
                    verify(&t.parts(), &secrets).is_err(),
                    "{} query@{i}: {}",
                    c.label,
                    t.raw_query
                );
            }
            for i in 0..c.body.len() {
                let mut t = c.clone();
                t.body[i] = if t.body[i] == b'Q' { b'R' } else { b'Q' };
                assert!(
                    verify(&t.parts(), &secrets).is_err(),
                    "{} body@{i}",
                    c.label
                );
            }
            let mut t = c.clone();
            t.method = if c.method == "GET" {
                "POST".into()
            } else {
                "GET".into()
            };
            assert!(verify(&t.parts(), &secrets).is_err(), "{} method", c.label);
            let signed: Vec<String> = match first_header(&c.headers, "authorization") {
                Some(a) => {
                    let sh = a
                        .split("SignedHeaders=")
                        .nth(1)
                        .unwrap()
                        .split(',')
                        .next()
                        .unwrap();
                    let mut v: Vec<String> = sh.split(';').map(str::to_string).collect();
                    v.push("authorization".into());
                    v
                }
                None => Vec::new(),
            };
            for (hi, (name, value)) in c.headers.iter().enumerate() {
                let mut t = c.clone();
                t.headers[hi].1 = format!("{value}x");
                let r = verify(&t.parts(), &secrets);
                if signed.contains(name) {
                    assert!(r.is_err(), "{} header {name}", c.label);
                    for i in 0..value.chars().count() {
                        let mut t = c.clone();
                        t.headers[hi].1 = mutate_char(value, i);
                        assert!(
                            verify(&t.parts(), &secrets).is_err(),
                            "{} header {name}@{i}",
                            c.label
                        );
                    }
                } else if name != "content-type" {
                    assert!(r.is_ok(), "{} unsigned header {name}: {r:?}", c.label);
                }
            }
        }
    }

    #[test]
    fn acs3_body_hash_mismatch_is_explained() {
        let mut c = capture("acs3-vpc-vpn-attachment-form-body");
        c.body.push(b'x');
        let e = verify(&c.parts(), &secrets).unwrap_err();
        let SignError::SignatureDoesNotMatch {
            detail,
            canonical_request,
            ..
        } = &e
        else {
            panic!("{e:?}")
        };
        assert!(detail.as_deref().unwrap().contains("x-acs-content-sha256"));
        assert!(canonical_request
            .as_deref()
            .unwrap()
            .starts_with("POST\n/\n"));
    }

    #[test]
    fn acs3_required_headers_must_be_signed() {
        let out = sign_acs3(
            "POST",
            "h:1",
            "A",
            "2016-04-28",
            &params(&[]),
            KEY_ID,
            SECRET,
            "n",
            T0,
        );
        let mut r = Req::from_outgoing(&out);
        r.headers.push(("x-acs-foo".into(), "1".into())); // an unknown x-acs header may stay unsigned
        assert!(verify(&r.parts(), &secrets).is_ok());
        let auth = r.header_mut("authorization");
        *auth = auth.replace("host;", "");
        let e = verify(&r.parts(), &secrets).unwrap_err();
        assert_eq!(e.code(), "IncompleteSignature");
        assert!(e.message().contains("host"));
        // A listed header that is absent.
        let mut r = Req::from_outgoing(&out);
        let auth = r.header_mut("authorization");
        *auth = auth.replace("host;", "accept;host;");
        assert_eq!(
            verify(&r.parts(), &secrets).unwrap_err().code(),
            "IncompleteSignature"
        );
    }

    #[test]
    fn round_trips() {
        let p = params(&[
            ("RegionId", "cn-shanghai"),
            ("Name", "a b*c~d/é+&=%"),
            ("Empty", ""),
            ("InstanceIds.1", "eip-1"),
            ("InstanceIds.2", "eip-2"),
        ]);
        let outs = [
            sign_acs3(
                "POST",
                "127.0.0.1:9",
                "AssociateEipAddressBatch",
                "2016-04-28",
                &p,
                KEY_ID,
                SECRET,
                "n1",
                T0,
            ),
            sign_acs3(
                "GET",
                "127.0.0.1:9",
                "AssociateEipAddressBatch",
                "2016-04-28",
                &p,
                KEY_ID,
                SECRET,
                "n2",
                T0,
            ),
            sign_v1(
                "GET",
                "127.0.0.1:9",
                "AssociateEipAddressBatch",
                "2016-04-28",
                &p,
                KEY_ID,
                SECRET,
                "n3",
                T0,
                false,
            ),
            sign_v1(
                "POST",
                "127.0.0.1:9",
                "AssociateEipAddressBatch",
                "2016-04-28",
                &p,
                KEY_ID,
                SECRET,
                "n4",
                T0,
                false,
            ),
            sign_v1(
                "POST",
                "127.0.0.1:9",
                "AssociateEipAddressBatch",
                "2016-04-28",
                &p,
                KEY_ID,
                SECRET,
                "n5",
                T0,
                true,
            ),
        ];
        let mut nonces = NonceCache::new();
        for (i, out) in outs.iter().enumerate() {
            let r = Req::from_outgoing(out);
            let call = verify_at(&r.parts(), &secrets, T0 + 5, &mut nonces)
                .unwrap_or_else(|e| panic!("{i}: {e}"));
            assert_eq!(call.action, "AssociateEipAddressBatch");
            assert_eq!(call.version.as_deref(), Some("2016-04-28"));
            assert_eq!(call.timestamp, T0);
            assert_eq!(call.nonce, format!("n{}", i + 1));
            assert_eq!(call.params, p, "{i}");
            assert_eq!(
                call.scheme,
                if i < 2 {
                    Scheme::Acs3HmacSha256
                } else {
                    Scheme::V1HmacSha1
                }
            );
        }
        // The form variant carries everything in the body.
        assert_eq!(outs[4].path_and_query, "/");
        assert!(String::from_utf8_lossy(&outs[4].body).contains("Signature="));
        assert!(outs[4]
            .headers
            .contains(&("content-type".into(), FORM_CONTENT_TYPE.into())));
    }

    #[test]
    fn v1_params_split_between_query_and_body() {
        // Terraform's Go SDK: protocol parameters in the query, business ones in the body.
        let p = params(&[("RegionId", "cn-shanghai"), ("Description", "x y")]);
        let out = sign_v1(
            "POST",
            "h",
            "AllocateEipAddress",
            "2016-04-28",
            &p,
            KEY_ID,
            SECRET,
            "n",
            T0,
            true,
        );
        let body = String::from_utf8(out.body.clone()).unwrap();
        let (mut q, mut b) = (Vec::new(), Vec::new());
        for part in body.split('&') {
            if part.starts_with("RegionId=") || part.starts_with("Description=") {
                b.push(part);
            } else {
                q.push(part);
            }
        }
        let mut r = Req::from_outgoing(&out);
        r.raw_query = q.join("&");
        r.body = b.join("&").into_bytes();
        let call = verify(&r.parts(), &secrets).unwrap();
        assert_eq!(call.params, p);
        // Without the form content type the body parameters are not seen, so the signature fails.
        r.headers.retain(|(k, _)| k != "content-type");
        assert_eq!(
            verify(&r.parts(), &secrets).unwrap_err().code(),
            "SignatureDoesNotMatch"
        );
    }

    #[test]
    fn error_codes() {
        let none = Req {
            label: "plain".into(),
            method: "GET".into(),
            path: "/".into(),
            raw_query: "Action=DescribeEipAddresses".into(),
            headers: vec![],
            body: vec![],
        };
        let e = verify(&none.parts(), &secrets).unwrap_err();
        assert_eq!((e.code(), e.http_status()), ("IncompleteSignature", 400));

        let p = params(&[("RegionId", "cn-shanghai")]);
        let v1 = Req::from_outgoing(&sign_v1(
            "GET",
            "h",
            "DescribeEipAddresses",
            "2016-04-28",
            &p,
            KEY_ID,
            SECRET,
            "n",
            T0,
            false,
        ));
        let acs3 = Req::from_outgoing(&sign_acs3(
            "POST",
            "h",
            "DescribeEipAddresses",
            "2016-04-28",
            &p,
            KEY_ID,
            SECRET,
            "n",
            T0,
        ));

        let with_query = |r: &Req, from: &str, to: &str| {
            let mut t = r.clone();
            assert!(t.raw_query.contains(from), "{from}");
            t.raw_query = t.raw_query.replace(from, to);
            verify(&t.parts(), &secrets).unwrap_err()
        };
        let e = with_query(&v1, "SignatureNonce=n", "SignatureNonce=");
        assert_eq!(e.code(), "IncompleteSignature");
        assert!(e.message().contains("SignatureNonce"));
        assert_eq!(
            with_query(&v1, "Signature=", "Xignature=").code(),
            "IncompleteSignature"
        );
        assert_eq!(
            with_query(&v1, "AccessKeyId=", "AccessKeyIdX=").code(),
            "IncompleteSignature"
        );
        assert_eq!(
            with_query(&v1, "HMAC-SHA1", "HMAC-SHA256").code(),
            "InvalidSignatureMethod"
        );
        assert_eq!(
            with_query(&v1, "SignatureVersion=1.0", "SignatureVersion=2.0").code(),
            "UnsupportedSignatureVersion"
        );
        let e = with_query(
            &v1,
            "Timestamp=2018-01-01T12%3A00%3A00Z",
            "Timestamp=2018-01-01%2012%3A00",
        );
        assert_eq!(
            (e.code(), e.http_status()),
            ("InvalidTimeStamp.Format", 400)
        );
        assert_eq!(
            with_query(&v1, &format!("AccessKeyId={KEY_ID}"), "AccessKeyId=nobody").code(),
            "InvalidAccessKeyId.NotFound"
        );
        assert_eq!(
            with_query(&v1, "RegionId=cn-shanghai", "RegionId=cn-beijing").code(),
            "SignatureDoesNotMatch"
        );

        let with_header = |r: &Req, name: &str, f: &dyn Fn(&str) -> Option<String>| {
            let mut t = r.clone();
            let i = t.headers.iter().position(|(k, _)| k == name).unwrap();
            match f(&t.headers[i].1) {
                Some(v) => t.headers[i].1 = v,
                None => {
                    t.headers.remove(i);
                }
            }
            verify(&t.parts(), &secrets).unwrap_err()
        };
        assert_eq!(
            with_header(&acs3, "x-acs-signature-nonce", &|_| None).code(),
            "IncompleteSignature"
        );
        assert_eq!(
            with_header(&acs3, "x-acs-date", &|_| None).code(),
            "IncompleteSignature"
        );
        assert_eq!(
            with_header(&acs3, "x-acs-date", &|_| Some("yesterday".into())).code(),
            "InvalidTimeStamp.Format"
        );
        assert_eq!(
            with_header(&acs3, "authorization", &|a| Some(
                a.replace("ACS3-HMAC-SHA256", "ACS3-HMAC-SM3")
            ))
            .code(),
            "InvalidSignatureMethod"
        );
        assert_eq!(
            with_header(&acs3, "authorization", &|a| Some(
                a.split(",Signature=").next().unwrap().to_string()
            ))
            .code(),
            "IncompleteSignature"
        );
        assert_eq!(
            with_header(&acs3, "authorization", &|_| Some(" ".into())).code(),
            "IncompleteSignature"
        );
        assert_eq!(
            with_header(&acs3, "authorization", &|a| Some(
                a.replace(KEY_ID, "nobody")
            ))
            .code(),
            "InvalidAccessKeyId.NotFound"
        );
        assert_eq!(
            with_header(&acs3, "x-acs-version", &|_| Some("2014-05-26".into())).code(),
            "SignatureDoesNotMatch"
        );

        // A correctly signed request that names no action.
        for r in [
            Req::from_outgoing(&sign_v1(
                "GET",
                "h",
                "",
                "2016-04-28",
                &p,
                KEY_ID,
                SECRET,
                "n",
                T0,
                false,
            )),
            Req::from_outgoing(&sign_acs3(
                "POST",
                "h",
                "",
                "2016-04-28",
                &p,
                KEY_ID,
                SECRET,
                "n",
                T0,
            )),
        ] {
            let e = verify(&r.parts(), &secrets).unwrap_err();
            assert_eq!((e.code(), e.http_status()), ("MissingAction", 400));
        }

        let mut nonces = NonceCache::new();
        nonces.check_and_insert("k", "n", T0).unwrap();
        let e = nonces.check_and_insert("k", "n", T0).unwrap_err();
        assert_eq!((e.code(), e.http_status()), ("SignatureNonceUsed", 400));
        let e = check_timestamp(T0, T0 + 901).unwrap_err();
        assert_eq!(
            (e.code(), e.http_status()),
            ("InvalidTimeStamp.Expired", 400)
        );
        assert!(e.message().contains("2018-01-01T12:00:00Z"));
        for e in [e, SignError::MissingAction] {
            assert!(e.to_string().starts_with(e.code()));
        }
    }

    #[test]
    fn timestamp_skew_both_ways() {
        assert!(check_timestamp(T0, T0).is_ok());
        assert!(check_timestamp(T0, T0 + 900).is_ok());
        assert!(check_timestamp(T0, T0 - 900).is_ok());
        assert!(check_timestamp(T0, T0 + 901).is_err());
        assert!(check_timestamp(T0, T0 - 901).is_err());
        assert!(check_timestamp(i64::MIN, i64::MAX).is_err());
        assert!(check_timestamp(i64::MAX, i64::MIN).is_err());
    }

    #[test]
    fn nonce_replay_and_expiry() {
        let mut c = NonceCache::new();
        c.check_and_insert("k1", "n", 1000).unwrap();
        assert!(c.check_and_insert("k1", "n", 1000 + 899).is_err());
        c.check_and_insert("k2", "n", 1000).unwrap(); // per access key
        c.check_and_insert("k1", "m", 1500).unwrap();
        assert_eq!(c.len(), 3);
        // Forgotten once 900 s have passed, and the memory goes with it.
        c.check_and_insert("k1", "n", 1000 + 900).unwrap();
        assert_eq!(c.len(), 2); // k1/n again, k1/m; k2/n expired
        c.prune(1500 + 900);
        assert_eq!(c.len(), 1);
        c.prune(1900 + 900);
        assert!(c.is_empty());
        // A request stamped in the future keeps its nonce until its timestamp is stale.
        let out = sign_v1(
            "GET",
            "h",
            "A",
            "v",
            &params(&[]),
            KEY_ID,
            SECRET,
            "fut",
            T0 + 800,
            false,
        );
        let r = Req::from_outgoing(&out);
        let mut c = NonceCache::new();
        verify_at(&r.parts(), &secrets, T0, &mut c).unwrap();
        assert_eq!(
            verify_at(&r.parts(), &secrets, T0 + 1000, &mut c)
                .unwrap_err()
                .code(),
            "SignatureNonceUsed"
        );
        assert_eq!(
            verify_at(&r.parts(), &secrets, T0 + 1701, &mut c)
                .unwrap_err()
                .code(),
            "InvalidTimeStamp.Expired"
        );
        // A bad signature does not burn the nonce.
        let mut c = NonceCache::new();
        assert!(verify_at(&r.parts(), &wrong_secret, T0, &mut c).is_err());
        assert!(c.is_empty());
    }

    #[test]
    fn garbage_does_not_panic() {
        let headers_sets: Vec<Vec<(String, String)>> = vec![
            vec![],
            vec![("authorization".into(), "ACS3-HMAC-SHA256".into())],
            vec![("authorization".into(), "ACS3-HMAC-SHA256 ,,,=;=,Credential".into())],
            vec![
                ("authorization".into(), "ACS3-HMAC-SHA256 Credential=LTAI5tEIPLABTESTKEY01,SignedHeaders=;;,Signature=zz".into()),
                ("x-acs-date".into(), "2018-01-01T12:00:00Z".into()),
                ("x-acs-signature-nonce".into(), "n".into()),
            ],
            vec![("content-type".into(), "application/x-www-form-urlencoded; charset=utf-8".into())],
            vec![("content-type".into(), "ü".into())],
        ];
        let queries = [
            "",
            "&&&",
            "%",
            "%%%=%%",
            "Signature=%ZZ&AccessKeyId=LTAI5tEIPLABTESTKEY01&SignatureNonce=x&Timestamp=2018-01-01T12:00:00Z&SignatureMethod=HMAC-SHA1&SignatureVersion=1.0",
            "Timestamp=99999-99-99T99:99:99Z&Signature=a&AccessKeyId=b&SignatureNonce=c&SignatureMethod=HMAC-SHA1&SignatureVersion=1.0",
            "a=%C3%28&%FF%FE=1",
        ];
        let bodies: [&[u8]; 3] = [
            b"",
            b"\xff\xfe=%&",
            b"Signature=x&AccessKeyId=LTAI5tEIPLABTESTKEY01",
        ];
        for h in &headers_sets {
            for q in queries {
                for b in bodies {
                    for path in ["", "/", "%", "/a b/%2F"] {
                        let r = RequestParts {
                            method: "POST",
                            path,
                            raw_query: q,
                            headers: h,
                            body: b,
                        };
                        let _ = verify(&r, &secrets);
                        let _ = verify_at(&r, &secrets, T0, &mut NonceCache::new());
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_requests_do_not_panic(
            method in "[A-Za-z]{0,7}",
            path in ".{0,12}",
            query in ".{0,80}",
            hname in "[a-z-]{0,24}",
            hvalue in ".{0,60}",
            auth in ".{0,80}",
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let headers = [(hname, hvalue), ("authorization".to_string(), auth)];
            for h in [&headers[..], &headers[..1]] {
                let r = RequestParts { method: &method, path: &path, raw_query: &query, headers: h, body: &body };
                let _ = verify(&r, &secrets);
            }
        }

        #[test]
        fn mutated_captures_do_not_panic(idx in 0usize..11, pos in any::<usize>(), byte in any::<u8>(), which in 0u8..3) {
            let mut c = captures().swap_remove(idx);
            match which {
                0 if !c.raw_query.is_empty() => {
                    let mut b = c.raw_query.into_bytes();
                    let n = b.len();
                    b[pos % n] = byte;
                    c.raw_query = String::from_utf8_lossy(&b).into_owned();
                }
                1 if !c.body.is_empty() => {
                    let n = c.body.len();
                    c.body[pos % n] = byte;
                }
                _ => {
                    let n = c.headers.len();
                    let v = &mut c.headers[pos % n].1;
                    let mut b = std::mem::take(v).into_bytes();
                    if !b.is_empty() {
                        let m = b.len();
                        b[pos % m] = byte;
                    }
                    *v = String::from_utf8_lossy(&b).into_owned();
                }
            }
            let _ = verify(&c.parts(), &secrets);
        }

        #[test]
        fn time_helpers_do_not_panic(ts in any::<i64>(), now in any::<i64>(), s in ".{0,40}") {
            let _ = check_timestamp(ts, now);
            let _ = parse_iso8601(&s);
            let text = iso8601(ts);
            prop_assert!(parse_iso8601(&text).is_some());
        }

        #[test]
        fn sign_verify_round_trip(
            kv in proptest::collection::btree_map("[A-Za-z][A-Za-z0-9.]{0,12}", ".{0,20}", 0..6),
            nonce in "[a-z0-9]{1,32}",
            ts in 0i64..4_102_444_800,
            form in any::<bool>(),
            acs3 in any::<bool>(),
        ) {
            let kv: BTreeMap<String, String> =
                kv.into_iter().filter(|(k, _)| !PROTOCOL_PARAMS.contains(&k.as_str())).collect();
            let out = if acs3 {
                sign_acs3("POST", "h:1", "DescribeEipAddresses", "2016-04-28", &kv, KEY_ID, SECRET, &nonce, ts)
            } else {
                sign_v1("POST", "h:1", "DescribeEipAddresses", "2016-04-28", &kv, KEY_ID, SECRET, &nonce, ts, form)
            };
            let r = Req::from_outgoing(&out);
            let call = verify(&r.parts(), &secrets).unwrap();
            prop_assert_eq!(call.params, kv);
            prop_assert_eq!(call.timestamp, ts);
            prop_assert_eq!(call.nonce, nonce);
        }
    }
}
