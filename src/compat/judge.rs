//! From what one run left behind (the probe's report, the gateway's counters, `inspect`'s
//! findings, the server's account) to a verdict and its reason. Pure: no I/O.

use super::{Mode, Outcome};
use crate::alg::{AlgProtocol, Field};
use crate::engine::{AlgReport, DropReason};
use crate::napt::Behaviour;
use serde::Deserialize;
use std::net::Ipv4Addr;

/// What a probe's client printed (the last JSON line of its output).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ClientReport {
    #[serde(default)]
    pub ok: bool,
    #[serde(default)]
    pub steps: Vec<Step>,
    #[serde(default)]
    pub detail: String,
    /// Addresses the far end's payload told the client to use.
    #[serde(default)]
    pub named: Vec<Named>,
    /// Addresses the client itself put in its payload.
    #[serde(default)]
    pub sent: Vec<Named>,
    /// The client used the control connection's address instead of the one it was told.
    #[serde(default)]
    pub peer_ignored_address: bool,
    /// The peer could not be run here (a missing package): the reason.
    #[serde(default)]
    pub not_tested: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Step {
    pub name: String,
    #[serde(default)]
    pub ok: bool,
    #[serde(default)]
    pub detail: String,
}

/// An address found in a payload, and where.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Named {
    #[serde(rename = "where")]
    pub place: String,
    pub address: String,
    #[serde(default)]
    pub port: Option<u16>,
}

impl Named {
    fn words(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.address),
            None => self.address.clone(),
        }
    }
}

/// The last line of `stdout` that is a JSON object: a probe prints its report last.
pub fn parse_client(stdout: &str) -> Result<ClientReport, String> {
    let line = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| "the client printed no report".to_string())?;
    serde_json::from_str(line)
        .map_err(|e| format!("the client's report is not readable ({e}): {line}"))
}

/// How the client run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEnd {
    /// It printed a report.
    Report(ClientReport),
    /// It ran past its limit and was ended.
    TimedOut { seconds: u64 },
    /// It ended without a readable report: why, and the tail of what it wrote.
    Failed(String),
}

/// Everything known about one run.
#[derive(Clone, Debug)]
pub struct Facts {
    /// The ALG protocol the gateway classifies the traffic as (None: a user's scenario).
    pub alg: Option<AlgProtocol>,
    pub mode: Mode,
    pub eip: Ipv4Addr,
    /// The private IP the EIP maps to (NAT mode; the instance's address behind a NAT
    /// gateway).
    pub private_ip: Option<Ipv4Addr>,
    /// Behind a NAT gateway: its filtering (which remotes may send in through a mapping).
    pub filtering: Option<Behaviour>,
    /// Drops on the row's EIP during the run, by reason (nonzero only).
    pub eip_drops: Vec<(DropReason, u64)>,
    /// Drops anywhere in the gateway during the run, by reason (nonzero only).
    pub global_drops: Vec<(DropReason, u64)>,
    /// `inspect`'s findings on the row's EIP during the run.
    pub findings: Vec<AlgReport>,
    /// Payloads of the row's protocol that `pass`/`inspect` let through during the run.
    pub alg_passed: u64,
    /// The server's own account (its summary line), compacted.
    pub server: Option<String>,
    /// The server did not start: why (a missing tool makes the row "not tested").
    pub server_failed: Option<String>,
    pub client: ClientEnd,
    /// Only signalling is exercised (H.323).
    pub signalling_only: bool,
}

/// The verdict, its reason and its evidence.
pub fn judge(f: &Facts) -> (Outcome, String, Vec<String>) {
    let mut evidence = Vec::new();
    if let ClientEnd::Report(r) = &f.client {
        if let Some(why) = &r.not_tested {
            return (Outcome::NotTested, why.clone(), evidence);
        }
    }
    if let Some(why) = &f.server_failed {
        return (
            Outcome::NotTested,
            format!("the server did not start: {why}"),
            evidence,
        );
    }
    if let ClientEnd::Report(r) = &f.client {
        if !r.steps.is_empty() {
            evidence.push(format!("client: {}", steps_words(&r.steps)));
        }
    }
    evidence.extend(drop_evidence(f));
    let leaks = findings_words(f);
    evidence.extend(leaks.iter().map(|l| format!("inspect: {l}")));
    if let Some(s) = &f.server {
        evidence.push(format!("server: {s}"));
    }
    let alg_drops = f
        .alg
        .filter(|_| matches!(f.mode, Mode::Nat(_)))
        .map(DropReason::alg)
        .map(|reason| (reason, count_anywhere(f, reason)))
        .filter(|&(_, n)| n > 0);
    // Behind a NAT gateway: what the gateway itself dropped (it has no ALG policy).
    let gateway_drops = match (f.mode, &f.client) {
        (Mode::NatGateway, ClientEnd::Report(r)) => gateway_drop_words(f, Some(r)),
        (Mode::NatGateway, _) => gateway_drop_words(f, None),
        _ => Vec::new(),
    };
    match &f.client {
        ClientEnd::Report(r) if r.ok => {
            let mut reason = r.detail.clone();
            if f.signalling_only && !reason.starts_with("signalling only") {
                reason = format!("signalling only: {reason}");
            }
            if let Some((place, words)) = leak_in(r, f) {
                reason = match mark_private(&reason, &words, f.mode) {
                    Some(marked) => marked,
                    None => format!(
                        "{reason}; note: {place} carried the private address {words}{}",
                        no_alg(f.mode)
                    ),
                };
            }
            if r.peer_ignored_address {
                reason.push_str(
                    "; the client ignored the address it was given and used the control \
                     connection's (a client that follows it would fail)",
                );
            }
            if let Some(first) = leaks.first() {
                let more = match leaks.len() {
                    1 => String::new(),
                    n => format!(" (and {} more)", n - 1),
                };
                reason.push_str(&format!("; inspect flagged {first}{more}"));
            }
            (Outcome::Works, reason, evidence)
        }
        end => {
            let why = match end {
                ClientEnd::Report(r) => {
                    let detail = if r.detail.is_empty() {
                        r.steps
                            .iter()
                            .find(|s| !s.ok)
                            .map(|s| format!("{} failed: {}", s.name, s.detail))
                            .unwrap_or_else(|| "the client reported a failure".into())
                    } else {
                        r.detail.clone()
                    };
                    match leak_in(r, f) {
                        Some((place, words)) => match mark_private(&detail, &words, f.mode) {
                            Some(marked) => marked,
                            None => format!(
                                "{place} carried the private address {words}{}; {detail}",
                                no_alg(f.mode)
                            ),
                        },
                        None => detail,
                    }
                }
                ClientEnd::TimedOut { seconds } => {
                    format!("the client did not finish within {seconds} s and was ended")
                }
                ClientEnd::Failed(why) => {
                    if alg_drops.is_none() && gateway_drops.is_empty() {
                        return (
                            Outcome::NotTested,
                            format!("the client gave no verdict: {why}"),
                            evidence,
                        );
                    }
                    why.clone()
                }
            };
            let why = match (leaks.first(), f.mode) {
                (Some(first), Mode::Nat(_)) => format!("{why}; inspect flagged {first}"),
                _ => why,
            };
            let reason = match alg_drops {
                Some((reason, n)) => format!(
                    "dropped by the NAT ALG policy ({}, {n} packet{}): {why}",
                    reason.name(),
                    if n == 1 { "" } else { "s" }
                ),
                None if !gateway_drops.is_empty() => {
                    format!("{}; {why}", gateway_drops.join("; "))
                }
                None => why,
            };
            (Outcome::Broken, reason, evidence)
        }
    }
}

fn count_of(v: &[(DropReason, u64)], r: DropReason) -> u64 {
    v.iter().find(|(x, _)| *x == r).map_or(0, |(_, n)| *n)
}

/// Drops for `r` during the run: on the row's EIP, or anywhere if more.
fn count_anywhere(f: &Facts, r: DropReason) -> u64 {
    count_of(&f.eip_drops, r).max(count_of(&f.global_drops, r))
}

/// What the NAT gateway's drops during the run mean for the row, one sentence per reason (the
/// gateway's own reasons, and an ALG drop, which a gateway without an ALG should never make).
fn gateway_drop_words(f: &Facts, r: Option<&ClientReport>) -> Vec<String> {
    let reasons = f
        .eip_drops
        .iter()
        .chain(f.global_drops.iter())
        .map(|(r, _)| *r)
        .filter(|r| r.name().starts_with("nat_gateway_") || r.is_alg());
    let mut seen: Vec<DropReason> = Vec::new();
    for reason in reasons {
        if !seen.contains(&reason) {
            seen.push(reason);
        }
    }
    seen.sort();
    seen.into_iter()
        .map(|reason| {
            let n = count_anywhere(f, reason);
            let what = match reason {
                DropReason::NatGatewayFiltered => {
                    let filtering = f.filtering.map_or(String::new(), |b| {
                        format!("; the gateway's filtering is {}", behaviour_words(b))
                    });
                    if f.alg == Some(AlgProtocol::Tftp) {
                        format!(
                            "the server answered from a port the client never sent to (a TFTP \
                             server replies from a new port{filtering})"
                        )
                    } else {
                        format!(
                            "they came in through the host's mapping from an address or port \
                             it never sent to{}",
                            f.filtering.map_or(String::new(), |b| format!(
                                " (the gateway's filtering is {})",
                                behaviour_words(b)
                            ))
                        )
                    }
                }
                DropReason::NatGatewayNoSession => {
                    // A port the client named for its own side (no address, or its private
                    // one): where the far end sent.
                    let own = |n: &&Named| {
                        n.port.is_some()
                            && (n.address.is_empty()
                                || f.private_ip.is_some_and(|p| n.address == p.to_string()))
                    };
                    let told = r.and_then(|r| r.sent.iter().find(own));
                    let base = format!(
                        "they came to the EIP {} at a port no flow of the host had opened and no \
                         DNAT entry forwards",
                        f.eip
                    );
                    match told {
                        Some(n) => format!(
                            "{base}: the client had named its own port {} ({}), which the \
                             gateway had not mapped on its EIP (SNAT picks the external ports, \
                             and with no ALG nothing rewrote the payload)",
                            n.port.unwrap_or_default(),
                            n.place.split(" (").next().unwrap_or(&n.place)
                        ),
                        None => base,
                    }
                }
                DropReason::NatGatewayNoSnatEntry => {
                    "the host's address is covered by no SNAT entry (nor mapped whole by a DNAT \
                     entry)"
                        .to_string()
                }
                DropReason::NatGatewaySessionTableFull => {
                    "the gateway's session table was full (max_sessions)".to_string()
                }
                DropReason::NatGatewayPortsExhausted => {
                    "the SNAT EIP had no free external port left for a new flow".to_string()
                }
                DropReason::NatGatewayHairpinOff => {
                    "a host behind the gateway sent to one of its EIPs, and hairpinning is off"
                        .to_string()
                }
                DropReason::NatGatewayConflict => {
                    "the new flow's addresses and ports were held by another session of the \
                     gateway (a DNAT forward and an SNAT flow of the same host, port and remote)"
                        .to_string()
                }
                DropReason::NatGatewayFragment => {
                    "fragmented datagrams, which the gateway does not carry (it would have to \
                     reassemble them to find their ports)"
                        .to_string()
                }
                _ => "an ALG policy dropped them, though a NAT gateway has no ALG".to_string(),
            };
            format!(
                "{n} packet{} dropped as {}: {what}",
                if n == 1 { "" } else { "s" },
                reason.name()
            )
        })
        .collect()
}

fn behaviour_words(b: Behaviour) -> &'static str {
    match b {
        Behaviour::EndpointIndependent => "endpoint-independent",
        Behaviour::AddressDependent => "address-dependent",
        Behaviour::AddressAndPortDependent => "address-and-port-dependent",
    }
}

/// Said after a private address a payload carried: behind a NAT gateway, why it stayed.
fn no_alg(mode: Mode) -> &'static str {
    match mode {
        Mode::NatGateway => " (the NAT gateway has no ALG to rewrite it)",
        _ => "",
    }
}

/// The first place the far end told the client (or the client told the far end) the NAT
/// mapping's private address, which cannot be reached from the other side: (where, the
/// address and port).
fn leak_in(r: &ClientReport, f: &Facts) -> Option<(String, String)> {
    let private = f.private_ip?.to_string();
    let told = r
        .named
        .iter()
        .chain(r.sent.iter())
        .find(|n| n.address == private)?;
    Some((told.place.clone(), told.words()))
}

/// A probe's own sentence that already says "… carried ADDR", with the address called what
/// it is; `None` when the sentence does not say so.
fn mark_private(detail: &str, words: &str, mode: Mode) -> Option<String> {
    let said = format!("carried {words}");
    detail.contains(&said).then(|| {
        detail.replacen(
            &said,
            &format!("carried the private address {words}{}", no_alg(mode)),
            1,
        )
    })
}

fn steps_words(steps: &[Step]) -> String {
    steps
        .iter()
        .map(|s| {
            let verdict = if s.ok { "ok" } else { "FAILED" };
            if s.detail.is_empty() {
                format!("{} {verdict}", s.name)
            } else {
                format!("{} {verdict} ({})", s.name, s.detail)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn drop_evidence(f: &Facts) -> Vec<String> {
    let mut v = Vec::new();
    for (reason, n) in &f.eip_drops {
        v.push(format!(
            "gateway: {n} packet{} dropped on EIP {} ({})",
            if *n == 1 { "" } else { "s" },
            f.eip,
            reason.name()
        ));
    }
    for (reason, n) in &f.global_drops {
        let rest = n.saturating_sub(count_of(&f.eip_drops, *reason));
        if rest > 0 {
            let what = match reason {
                DropReason::UnknownDestination => ": addressed to no EIP of the lab",
                DropReason::SourceCheck => ": a source the sending ENI does not own",
                DropReason::NoPublicIp => ": from a guest address without an EIP",
                DropReason::VpcUnreachable => ": for a private address the sender cannot reach",
                DropReason::NatGatewayNoSnatEntry => {
                    ": from a private address no SNAT entry covers"
                }
                DropReason::NatGatewayNoSession => {
                    ": to a NAT gateway EIP at a port it had not mapped"
                }
                DropReason::NatGatewayFiltered => {
                    ": through a NAT gateway mapping, from a remote its host never sent to"
                }
                _ => "",
            };
            v.push(format!(
                "gateway: {rest} more packet{} dropped, not on this EIP ({}{what})",
                if rest == 1 { "" } else { "s" },
                reason.name()
            ));
        }
    }
    if f.alg_passed > 0 {
        if let (Some(p), Mode::Nat(a)) = (f.alg, f.mode) {
            v.push(format!(
                "gateway: {} {} payload{} let through by the ALG policy `{a}`",
                f.alg_passed,
                p.name(),
                if f.alg_passed == 1 { "" } else { "s" }
            ));
        }
    }
    v
}

/// How a report names the place an address was found.
pub fn field_words(f: Field) -> &'static str {
    match f {
        Field::FtpPort => "FTP PORT command",
        Field::FtpEprt => "FTP EPRT command",
        Field::FtpPasvReply => "FTP 227 reply",
        Field::SipRequestUri => "SIP request URI",
        Field::SipVia => "SIP Via: header",
        Field::SipContact => "SIP Contact: header",
        Field::SipFrom => "SIP From: header",
        Field::SipTo => "SIP To: header",
        Field::SipSdpConnection => "SDP c= line",
        Field::SipSdpOrigin => "SDP o= line",
        Field::RtspTransport => "RTSP Transport: header",
        Field::RtspUrl => "RTSP URL",
        Field::H323Binary => "H.225 address (binary)",
        Field::DnsAnswerA => "DNS A record",
        Field::TextAddress => "address in the message text",
    }
}

/// One sentence per distinct (field, address, direction) `inspect` found, with how often.
fn findings_words(f: &Facts) -> Vec<String> {
    let mut seen: Vec<(Field, [u8; 4], bool, u64, AlgReport)> = Vec::new();
    for r in &f.findings {
        let key = (r.finding.field, r.finding.address, r.to_guest);
        match seen.iter_mut().find(|s| (s.0, s.1, s.2) == key) {
            Some(s) => s.3 += 1,
            None => seen.push((key.0, key.1, key.2, 1, *r)),
        }
    }
    seen.into_iter()
        .map(|(field, addr, to_guest, n, r)| {
            let addr = Ipv4Addr::from(addr);
            let (dir, need) = if to_guest {
                (
                    "internet → guest",
                    format!(
                        "the guest only has its private address {}, so it needed {}",
                        r.private_ip, r.private_ip
                    ),
                )
            } else if addr == r.private_ip {
                (
                    "guest → internet",
                    format!("the far end needed the EIP {}", r.eip),
                )
            } else {
                ("guest → internet", format!("the EIP is {}", r.eip))
            };
            let times = if n == 1 {
                String::new()
            } else {
                format!(" ({n} packets)")
            };
            format!(
                "the {} in a packet {dir} ({}:{} → {}:{}) carried {addr}; {need}{times}",
                field_words(field),
                r.src.0,
                r.src.1,
                r.dst.0,
                r.dst.1
            )
        })
        .collect()
}
