//! A NAT gateway's SNAT and DNAT entries as the VPC API (2016-04-28) changes them:
//! CreateSnatEntry, ModifySnatEntry, DeleteSnatEntry, CreateForwardEntry, ModifyForwardEntry,
//! DeleteForwardEntry. Each gateway has one SNAT table, `stb-<gateway id>`, and one DNAT
//! (forward) table, `ftb-<gateway id>`.
//!
//! The error codes are the NAT Gateway API reference's (the SNAT table and DNAT table pages of
//! CreateSnatEntry, ModifySnatEntry, DeleteSnatEntry, CreateForwardEntry, ModifyForwardEntry and
//! DeleteForwardEntry); `BIND_INSTANCE_HAVE_PORTMAP_OR_BIND_EIP` for a DNAT target that has an
//! EIP is eiplab's choice (SPEC §3), the code AssociateEipAddress gives for the reverse case.
//!
//! Every call checks the whole resulting entry before anything changes, so a refused call leaves
//! the state as it was. An entry is `Available` as soon as the call returns: the cloud's entries
//! pass through Pending (or Modifying) first, but the lab has nothing to wait for (the entries
//! are not in the dataplane yet) and a transition would only add `IncorretSnatEntryStatus`
//! refusals no test needs.

use super::{in_cidr, Change, Cloud, CloudError, Eip, EipStatus, ForwardEntry, NatGateway};
use super::{BindType, SnatEntry};
use crate::engine::table::EipSlot;
use crate::napt::{DnatProtocol, DnatRule, SnatRule};
use core::net::Ipv4Addr;
use core::net::SocketAddrV4;

/// DNAT entries per DNAT table (CreateForwardEntry: "up to 100 DNAT entries").
pub const MAX_FORWARD_ENTRIES: usize = 100;

/// A gateway's SNAT table id (one per gateway in the lab).
pub fn snat_table_id(gateway: &str) -> String {
    format!("stb-{gateway}")
}

/// A gateway's DNAT (forward) table id.
pub fn forward_table_id(gateway: &str) -> String {
    format!("ftb-{gateway}")
}

/// CreateSnatEntry's and ModifySnatEntry's parameters as the call gave them, unparsed (a
/// malformed value gets the cloud's code from the model). `None`: not given. ModifySnatEntry
/// takes `snat_ip` and `name` only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnatSpec {
    /// `SnatIp`: one or more EIP addresses, comma-separated.
    pub snat_ip: Option<String>,
    /// `SourceVSwitchId`.
    pub source_vswitch: Option<String>,
    /// `SourceCIDR`.
    pub source_cidr: Option<String>,
    /// `SnatEntryName`.
    pub name: Option<String>,
}

/// CreateForwardEntry's and ModifyForwardEntry's parameters as the call gave them, unparsed.
/// `None`: not given (CreateForwardEntry needs all but `name`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwardSpec {
    pub external_ip: Option<String>,
    pub external_port: Option<String>,
    pub internal_ip: Option<String>,
    pub internal_port: Option<String>,
    /// `IpProtocol`: TCP, UDP or Any (any case).
    pub ip_protocol: Option<String>,
    /// `ForwardEntryName`.
    pub name: Option<String>,
}

/// A DNAT port: a number, or `Any` (the whole IP, with IpProtocol Any).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    Any,
    Number(u16),
}

impl Port {
    fn word(self) -> String {
        match self {
            Port::Any => "Any".into(),
            Port::Number(n) => n.to_string(),
        }
    }
}

fn parse_port(s: &str, code: &'static str, name: &str) -> Result<Port, CloudError> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("any") {
        return Ok(Port::Any);
    }
    if t.contains('/') {
        return Err(CloudError::bad(
            code,
            format!(
                "{name}={s:?}: port ranges (first/last) are not emulated by the lab; give one \
                 port from 1 to 65535, or Any (with IpProtocol Any) for a whole-IP mapping"
            ),
        ));
    }
    match t.parse::<u16>() {
        Ok(n) if n >= 1 && t.bytes().all(|b| b.is_ascii_digit()) => Ok(Port::Number(n)),
        _ => Err(CloudError::bad(
            code,
            format!(
                "{name}={s:?} is not a valid port: give a port from 1 to 65535, or Any (with \
                 IpProtocol Any) for a whole-IP mapping"
            ),
        )),
    }
}

/// `IpProtocol` as the API spells it back.
fn parse_protocol(s: &str) -> Result<&'static str, CloudError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "tcp" => Ok("TCP"),
        "udp" => Ok("UDP"),
        "any" => Ok("Any"),
        _ => Err(CloudError::bad(
            "InvalidProtocal.ValueNotSupported",
            format!("IpProtocol={s:?} is not supported: use TCP, UDP or Any"),
        )),
    }
}

fn parse_ip(s: &str, code: &'static str, name: &str) -> Result<Ipv4Addr, CloudError> {
    s.trim()
        .parse()
        .map_err(|_| CloudError::bad(code, format!("{name}={s:?} is not a valid IPv4 address")))
}

/// `SnatIp`: comma-separated addresses, each once.
fn parse_snat_ips(s: &str) -> Result<Vec<Ipv4Addr>, CloudError> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let a = parse_ip(part, "InvalidSnatIp.Malformed", "SnatIp")?;
        if out.contains(&a) {
            return Err(CloudError::bad(
                "INVALID_PARAMETER",
                format!("SnatIp lists {a} twice: list each address once"),
            ));
        }
        out.push(a);
    }
    Ok(out)
}

/// `SourceCIDR`: `a.b.c.d/len`, the network's own address (a host is `/32`); answered back in
/// that form.
fn parse_cidr(s: &str) -> Result<String, CloudError> {
    let bad = |why: &str| {
        CloudError::bad(
            "INVALID_PARAMETER",
            format!("SourceCIDR={s:?} {why}: write a CIDR block such as 10.0.1.0/24 (one host: 10.0.1.5/32)"),
        )
    };
    let (net, len) = s
        .trim()
        .split_once('/')
        .ok_or_else(|| bad("has no prefix length"))?;
    let net: Ipv4Addr = net.parse().map_err(|_| bad("is not a CIDR block"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| bad("has no prefix length from 0 to 32"))?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    if u32::from(net) & !mask != 0 {
        return Err(bad(&format!(
            "has host bits set (its network is {}/{len})",
            Ipv4Addr::from(u32::from(net) & mask)
        )));
    }
    Ok(format!("{net}/{len}"))
}

/// `SnatEntryName` / `ForwardEntryName`: 2 to 128 characters, starting with a letter, not
/// with `http://` or `https://`.
fn check_name(field: &str, n: &str) -> Result<(), CloudError> {
    let len = n.chars().count();
    let ok = (2..=128).contains(&len)
        && n.chars().next().is_some_and(char::is_alphabetic)
        && !n.starts_with("http://")
        && !n.starts_with("https://");
    if ok {
        Ok(())
    } else {
        Err(CloudError::bad(
            "InvalidParameter.Name.Malformed",
            format!(
                "{field}={n:?} is not valid: 2 to 128 characters, starting with a letter, not \
                 with http:// or https://"
            ),
        ))
    }
}

fn missing(code: &'static str, name: &str) -> CloudError {
    CloudError::bad(code, format!("{name} is mandatory for this action."))
}

/// A DNAT entry that maps its EIP whole (`Any` ports, IpProtocol Any).
fn whole_ip(f: &ForwardEntry) -> bool {
    f.external_port.eq_ignore_ascii_case("any")
}

/// Why an address is not an EIP the gateway can use.
enum NotOnGateway<'a> {
    /// No EIP of the gateway's region has this address.
    NoEip,
    /// An EIP that is not InUse on the gateway.
    Elsewhere(&'a Eip),
}

fn where_it_is(e: &Eip) -> String {
    match &e.binding {
        Some(b) => format!(
            "EIP {} is {} on {} {}",
            e.allocation_id,
            e.status.api_name(),
            b.bind_type.api_name(),
            b.instance_id
        ),
        None => format!("EIP {} is {}", e.allocation_id, e.status.api_name()),
    }
}

impl Cloud {
    fn snat_table(&self, region: &str, table: &str) -> Result<&NatGateway, CloudError> {
        table
            .strip_prefix("stb-")
            .and_then(|g| self.nat_gateways.get(g))
            .filter(|g| g.region == region)
            .ok_or_else(|| {
                CloudError::new(
                    "InvalidSnatTableId.NotFound",
                    404,
                    format!(
                        "no SNAT table {table} in {region}: a NAT gateway's SNAT table is \
                         stb-<gateway id> (DescribeNatGateways, SnatTableIds)"
                    ),
                )
            })
    }

    fn forward_table(&self, region: &str, table: &str) -> Result<&NatGateway, CloudError> {
        table
            .strip_prefix("ftb-")
            .and_then(|g| self.nat_gateways.get(g))
            .filter(|g| g.region == region)
            .ok_or_else(|| {
                CloudError::new(
                    "InvalidForwardTableId.NotFound",
                    404,
                    format!(
                        "no DNAT table {table} in {region}: a NAT gateway's DNAT table is \
                         ftb-<gateway id> (DescribeNatGateways, ForwardTableIds)"
                    ),
                )
            })
    }

    fn snat_entry_at(&self, gateway: &str, table: &str, id: &str) -> Result<usize, CloudError> {
        self.snat_entries
            .iter()
            .position(|s| s.id == id && s.nat_gateway == gateway)
            .ok_or_else(|| {
                CloudError::new(
                    "InvalidSnatEntryId.NotFound",
                    404,
                    format!("no SNAT entry {id} in {table} (DescribeSnatTableEntries)"),
                )
            })
    }

    fn forward_entry_at(&self, gateway: &str, table: &str, id: &str) -> Result<usize, CloudError> {
        self.forward_entries
            .iter()
            .position(|f| f.id == id && f.nat_gateway == gateway)
            .ok_or_else(|| {
                CloudError::new(
                    "InvalidForwardEntryId.NotFound",
                    404,
                    format!("no DNAT entry {id} in {table} (DescribeForwardTableEntries)"),
                )
            })
    }

    /// A new entry id, `snat-…` or `fwd-…`: the next number of a counter kept in the state,
    /// spread over 16 hex digits (a bijection, so numbers never collide; an id the lab file
    /// already uses is skipped).
    fn next_entry_id(&mut self, prefix: &str) -> String {
        loop {
            self.next_entry_serial += 1;
            let n = self
                .next_entry_serial
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .rotate_left(17);
            let id = format!("{prefix}-{n:016x}");
            let taken = self.snat_entries.iter().any(|s| s.id == id)
                || self.forward_entries.iter().any(|f| f.id == id);
            if !taken {
                return id;
            }
        }
    }

    /// The EIP with address `a` if it is InUse on gateway `g`.
    fn gateway_eip(&self, g: &NatGateway, a: Ipv4Addr) -> Result<&Eip, NotOnGateway<'_>> {
        let e = self
            .eips
            .values()
            .find(|e| e.address == a && e.region == g.region)
            .ok_or(NotOnGateway::NoEip)?;
        let on = e
            .binding
            .as_ref()
            .is_some_and(|b| b.bind_type == BindType::Nat && b.instance_id == g.id);
        if on && e.status == EipStatus::InUse {
            Ok(e)
        } else {
            Err(NotOnGateway::Elsewhere(e))
        }
    }

    /// Whether `ip` is in the VPC (`[vpc] cidr`, or the vSwitches' CIDRs).
    pub fn in_vpc(&self, ip: Ipv4Addr) -> bool {
        if self.settings.vpc_cidrs.is_empty() {
            self.vswitches
                .values()
                .any(|v| in_cidr(ip, v.network, v.prefix_len))
        } else {
            self.settings
                .vpc_cidrs
                .iter()
                .any(|&(net, len)| in_cidr(ip, net, len))
        }
    }

    /// The instance that owns private IP `ip` (on any of its ENIs) and has an EIP of its own
    /// (on its primary ENI or on any ENI attached to it), with that EIP.
    fn instance_with_eip_at(&self, ip: Ipv4Addr) -> Option<(&str, &Eip)> {
        let owner = self
            .enis
            .values()
            .find(|n| n.private_ips.contains(&ip))?
            .instance
            .as_deref()?;
        self.enis
            .values()
            .filter(|n| n.instance.as_deref() == Some(owner))
            .find_map(|n| self.eips_on_eni(n).next())
            .map(|(e, _)| (owner, e))
    }

    /// The address block an SNAT entry translates: its CIDR, or its vSwitch's.
    fn snat_source(&self, s: &SnatEntry) -> Option<String> {
        match (&s.source_cidr, &s.source_vswitch) {
            (Some(c), _) => Some(c.clone()),
            (None, Some(v)) => self
                .vswitches
                .get(v)
                .map(|v| format!("{}/{}", v.network, v.prefix_len)),
            (None, None) => None,
        }
    }

    /// Every rule an SNAT entry must meet in its table, `exclude` being the entry's own id when
    /// it is being modified.
    fn check_snat_entry(&self, s: &SnatEntry, exclude: Option<&str>) -> Result<(), CloudError> {
        let g = &self.nat_gateways[&s.nat_gateway];
        let table = snat_table_id(&g.id);
        if let Some(v) = &s.source_vswitch {
            if self.vswitches.get(v).is_none_or(|x| x.region != g.region) {
                return Err(CloudError::new(
                    "InvalidVSwitchId.NotFound",
                    404,
                    format!(
                        "no vSwitch {v} in {}: SourceVSwitchId names a vSwitch of the gateway's VPC",
                        g.region
                    ),
                ));
            }
            if let Some(h) = self.havips.values().find(|h| h.vswitch == *v) {
                return Err(CloudError::bad(
                    "Forbidden.SourceVSwitchId.IncludeHaVip",
                    format!(
                        "{v} holds HaVip {}: a vSwitch with a HaVip takes no SNAT entry; use \
                         SourceCIDR for its hosts",
                        h.id
                    ),
                ));
            }
        }
        for &a in &s.snat_ips {
            match self.gateway_eip(g, a) {
                Ok(_) => {}
                Err(NotOnGateway::NoEip) => {
                    return Err(CloudError::new(
                        "InvalidSnatIp.NotFound",
                        404,
                        format!(
                            "{a} is not an EIP of {}: SnatIp takes EIPs associated with {}",
                            g.region, g.id
                        ),
                    ))
                }
                Err(NotOnGateway::Elsewhere(e)) => {
                    return Err(CloudError::new(
                        "InvalidSnatIp.NotFound",
                        404,
                        format!(
                            "{a} is not on {}: {}; associate it with the gateway \
                             (InstanceType=Nat) and wait until it is InUse",
                            g.id,
                            where_it_is(e)
                        ),
                    ))
                }
            }
            if let Some(f) = self
                .forward_entries
                .iter()
                .find(|f| f.external_ip == a && whole_ip(f))
            {
                return Err(CloudError::bad(
                    "Forbidden.IpUsedInForwardTable",
                    format!(
                        "{a} is mapped whole (IpProtocol Any) by DNAT entry {}: an EIP with a \
                         whole-IP mapping serves no other entry; pick another EIP or delete {}",
                        f.id, f.id
                    ),
                ));
            }
        }
        let source = self.snat_source(s);
        if let Some(other) = self
            .snat_entries
            .iter()
            .filter(|o| o.nat_gateway == s.nat_gateway && Some(o.id.as_str()) != exclude)
            .find(|o| {
                (s.source_vswitch.is_some() && o.source_vswitch == s.source_vswitch)
                    || (source.is_some() && self.snat_source(o) == source)
            })
        {
            return Err(CloudError::bad(
                "Forbidden.SourceVSwitchId.Duplicated",
                format!(
                    "SNAT entry {} of {table} already translates {}: one SNAT entry per vSwitch \
                     or CIDR block; modify that entry instead",
                    other.id,
                    s.source_vswitch.clone().or(source).unwrap_or_default()
                ),
            ));
        }
        if !s.name.is_empty() {
            check_name("SnatEntryName", &s.name)?;
        }
        Ok(())
    }

    /// CreateSnatEntry: SnatIp (EIPs InUse on the gateway), exactly one of SourceVSwitchId and
    /// SourceCIDR, an optional name. Returns the new entry's id.
    pub fn create_snat_entry(
        &mut self,
        region: &str,
        table: &str,
        spec: &SnatSpec,
    ) -> Result<(String, Vec<Change>), CloudError> {
        let entry = self.snat_entry_to_create(region, table, spec)?;
        let id = self.next_entry_id("snat");
        let gateway = entry.nat_gateway.clone();
        self.snat_entries.push(SnatEntry {
            id: id.clone(),
            ..entry
        });
        Ok((id, self.nat_entries_changed(gateway)))
    }

    /// Every rule of CreateSnatEntry, changing nothing (`DryRun`).
    pub fn check_create_snat_entry(
        &self,
        region: &str,
        table: &str,
        spec: &SnatSpec,
    ) -> Result<(), CloudError> {
        self.snat_entry_to_create(region, table, spec).map(drop)
    }

    /// The entry CreateSnatEntry would make (without its id), checked.
    fn snat_entry_to_create(
        &self,
        region: &str,
        table: &str,
        spec: &SnatSpec,
    ) -> Result<SnatEntry, CloudError> {
        let gateway = self.snat_table(region, table)?.id.clone();
        let ips = spec
            .snat_ip
            .as_deref()
            .ok_or_else(|| missing("MissingSnatIp", "SnatIp"))?;
        let snat_ips = parse_snat_ips(ips)?;
        let (source_cidr, source_vswitch) =
            match (&spec.source_cidr, &spec.source_vswitch) {
                (Some(c), None) => (Some(parse_cidr(c)?), None),
                (None, Some(v)) => (None, Some(v.clone())),
                (Some(_), Some(_)) => {
                    return Err(CloudError::bad(
                        "INVALID_PARAMETER",
                        "SourceVSwitchId and SourceCIDR are both set: an SNAT entry translates a \
                     vSwitch or a CIDR block, give one of them",
                    ))
                }
                (None, None) => return Err(CloudError::bad(
                    "INVALID_PARAMETER",
                    "neither SourceVSwitchId nor SourceCIDR is set: give the vSwitch or the CIDR \
                     block the entry translates",
                )),
            };
        let entry = SnatEntry {
            id: String::new(),
            nat_gateway: gateway.clone(),
            snat_ips,
            source_cidr,
            source_vswitch,
            name: spec.name.clone().unwrap_or_default(),
        };
        self.check_snat_entry(&entry, None)?;
        Ok(entry)
    }

    /// Records a change of a gateway's entries: what an entry action returns.
    fn nat_entries_changed(&mut self, nat_gateway: String) -> Vec<Change> {
        let c = Change::NatEntries { nat_gateway };
        self.record(c.clone());
        vec![c]
    }

    /// ModifySnatEntry: a new SnatIp list and/or name; the resulting entry meets every rule of
    /// CreateSnatEntry (against the other entries) or nothing changes.
    /// The same entry again changes nothing (and records nothing).
    pub fn modify_snat_entry(
        &mut self,
        region: &str,
        table: &str,
        id: &str,
        spec: &SnatSpec,
    ) -> Result<Vec<Change>, CloudError> {
        let (k, entry) = self.snat_entry_modified(region, table, id, spec)?;
        if self.snat_entries[k] == entry {
            return Ok(Vec::new());
        }
        let gateway = entry.nat_gateway.clone();
        self.snat_entries[k] = entry;
        Ok(self.nat_entries_changed(gateway))
    }

    /// Every rule of ModifySnatEntry, changing nothing (`DryRun`).
    pub fn check_modify_snat_entry(
        &self,
        region: &str,
        table: &str,
        id: &str,
        spec: &SnatSpec,
    ) -> Result<(), CloudError> {
        self.snat_entry_modified(region, table, id, spec).map(drop)
    }

    /// The entry ModifySnatEntry would make, checked, and where it is.
    fn snat_entry_modified(
        &self,
        region: &str,
        table: &str,
        id: &str,
        spec: &SnatSpec,
    ) -> Result<(usize, SnatEntry), CloudError> {
        let gateway = self.snat_table(region, table)?.id.clone();
        let k = self.snat_entry_at(&gateway, table, id)?;
        let mut entry = self.snat_entries[k].clone();
        if let Some(ips) = &spec.snat_ip {
            entry.snat_ips = parse_snat_ips(ips)?;
        }
        if let Some(n) = &spec.name {
            entry.name = n.clone();
        }
        self.check_snat_entry(&entry, Some(id))?;
        Ok((k, entry))
    }

    /// DeleteSnatEntry.
    pub fn delete_snat_entry(
        &mut self,
        region: &str,
        table: &str,
        id: &str,
    ) -> Result<Vec<Change>, CloudError> {
        let gateway = self.snat_table(region, table)?.id.clone();
        let k = self.snat_entry_at(&gateway, table, id)?;
        self.snat_entries.remove(k);
        Ok(self.nat_entries_changed(gateway))
    }

    /// Every rule a DNAT entry must meet in its table, `exclude` being the entry's own id when
    /// it is being modified. Ports and protocol are read back from the entry's words.
    fn check_forward_entry(
        &self,
        f: &ForwardEntry,
        exclude: Option<&str>,
    ) -> Result<(), CloudError> {
        let g = &self.nat_gateways[&f.nat_gateway];
        let ext = parse_port(
            &f.external_port,
            "InvalidExternalPort.Malformed",
            "ExternalPort",
        )?;
        let int = parse_port(
            &f.internal_port,
            "InvalidInternalPort.Malformed",
            "InternalPort",
        )?;
        let proto = parse_protocol(&f.ip_protocol)?;
        if (ext == Port::Any) != (int == Port::Any) {
            return Err(CloudError::bad(
                "InvalidInternalPort.Malformed",
                format!(
                    "ExternalPort={} and InternalPort={}: both are Any (a whole-IP mapping) or \
                     both are ports",
                    ext.word(),
                    int.word()
                ),
            ));
        }
        let whole = ext == Port::Any;
        if whole && proto != "Any" {
            return Err(CloudError::bad(
                "InvalidProtocal.ValueNotSupported",
                format!("Any ports map the whole IP and take IpProtocol Any, not {proto}"),
            ));
        }
        if !whole && proto == "Any" {
            return Err(CloudError::bad(
                "InvalidProtocal.ValueNotSupported",
                "IpProtocol Any maps the whole IP: set ExternalPort and InternalPort to Any, or \
                 use TCP or UDP",
            ));
        }
        let a = f.external_ip;
        match self.gateway_eip(g, a) {
            Ok(_) => {}
            Err(NotOnGateway::NoEip) => {
                return Err(CloudError::new(
                    "InvalidExternalIp.NotFound",
                    404,
                    format!(
                        "{a} is not an EIP of {}: ExternalIp is an EIP associated with {}",
                        g.region, g.id
                    ),
                ))
            }
            Err(NotOnGateway::Elsewhere(e)) => {
                return Err(CloudError::bad(
                    "InvalidIp.NotInNatgw",
                    format!(
                        "{a} does not belong to {}: {}; associate it with the gateway \
                         (InstanceType=Nat) and wait until it is InUse",
                        g.id,
                        where_it_is(e)
                    ),
                ))
            }
        }
        if !self.in_vpc(f.internal_ip) {
            return Err(CloudError::bad(
                "Forbidden.DestnationIpOutOfVpcCIDR",
                format!(
                    "InternalIp {} is outside the VPC {}: DNAT forwards to a private address of \
                     the gateway's VPC",
                    f.internal_ip, self.settings.vpc_id
                ),
            ));
        }
        if let Some((inst, e)) = self.instance_with_eip_at(f.internal_ip) {
            return Err(CloudError::bad(
                "BIND_INSTANCE_HAVE_PORTMAP_OR_BIND_EIP",
                format!(
                    "{} belongs to {inst}, which has EIP {} ({}): an instance with an EIP cannot \
                     be a DNAT target; unassociate the EIP first",
                    f.internal_ip, e.allocation_id, e.address
                ),
            ));
        }
        // The other entries of the table (an EIP is on one gateway: its entries are all here).
        let mut others = self
            .forward_entries
            .iter()
            .filter(|o| o.nat_gateway == f.nat_gateway && Some(o.id.as_str()) != exclude);
        if whole {
            if let Some(s) = self.snat_entries.iter().find(|s| s.snat_ips.contains(&a)) {
                return Err(CloudError::bad(
                    "Forbidden.ExternalIp.UsedInSnatTable",
                    format!(
                        "{a} is an SNAT IP of SNAT entry {}: a whole-IP mapping needs an EIP no \
                         other entry uses; pick another EIP or take {a} out of {}",
                        s.id, s.id
                    ),
                ));
            }
            if let Some(o) = others.clone().find(|o| o.external_ip == a) {
                return Err(CloudError::bad(
                    "OperationUnsupported.ForwardEntry",
                    format!(
                        "{a} is used by DNAT entry {}: a whole-IP mapping needs an EIP no other \
                         entry uses",
                        o.id
                    ),
                ));
            }
        } else if let Some(o) = others.clone().find(|o| o.external_ip == a && whole_ip(o)) {
            return Err(CloudError::bad(
                "OperationUnsupported.ForwardEntry",
                format!(
                    "{a} is mapped whole (IpProtocol Any) by DNAT entry {}: it serves no other \
                     entry",
                    o.id
                ),
            ));
        }
        let same = |x: &str, y: &str| x.eq_ignore_ascii_case(y);
        if let Some(o) = others.clone().find(|o| {
            o.external_ip == a
                && same(&o.external_port, &f.external_port)
                && same(&o.ip_protocol, &f.ip_protocol)
        }) {
            return Err(CloudError::bad(
                "OperationUnsupported.ForwardEntry",
                format!(
                    "DNAT entry {} already forwards {a}:{} {}: ExternalIp, ExternalPort and \
                     IpProtocol are unique among the DNAT entries",
                    o.id, f.external_port, f.ip_protocol
                ),
            ));
        }
        if let Some(o) = others.find(|o| {
            o.internal_ip == f.internal_ip
                && same(&o.internal_port, &f.internal_port)
                && same(&o.ip_protocol, &f.ip_protocol)
        }) {
            return Err(CloudError::bad(
                "OperationUnsupported.ForwardEntry",
                format!(
                    "DNAT entry {} already forwards to {}:{} {}: IpProtocol, InternalIp and \
                     InternalPort are unique among the DNAT entries",
                    o.id, f.internal_ip, f.internal_port, f.ip_protocol
                ),
            ));
        }
        if !f.name.is_empty() {
            check_name("ForwardEntryName", &f.name)?;
        }
        Ok(())
    }

    /// Applies the given fields of `spec` to `f`, parsed and in the API's spelling.
    fn apply_forward_spec(f: &mut ForwardEntry, spec: &ForwardSpec) -> Result<(), CloudError> {
        if let Some(s) = &spec.external_ip {
            f.external_ip = parse_ip(s, "InvalidExternalIp.Malformed", "ExternalIp")?;
        }
        if let Some(s) = &spec.external_port {
            f.external_port =
                parse_port(s, "InvalidExternalPort.Malformed", "ExternalPort")?.word();
        }
        if let Some(s) = &spec.internal_ip {
            f.internal_ip = parse_ip(s, "InvalidInternalIp.Malformed", "InternalIp")?;
        }
        if let Some(s) = &spec.internal_port {
            f.internal_port =
                parse_port(s, "InvalidInternalPort.Malformed", "InternalPort")?.word();
        }
        if let Some(s) = &spec.ip_protocol {
            f.ip_protocol = parse_protocol(s)?.to_string();
        }
        if let Some(n) = &spec.name {
            f.name = n.clone();
        }
        Ok(())
    }

    /// CreateForwardEntry: ExternalIp (an EIP InUse on the gateway) and ExternalPort,
    /// InternalIp (in the VPC) and InternalPort, IpProtocol; ports `Any` with IpProtocol `Any`
    /// map the whole IP. Returns the new entry's id.
    pub fn create_forward_entry(
        &mut self,
        region: &str,
        table: &str,
        spec: &ForwardSpec,
    ) -> Result<(String, Vec<Change>), CloudError> {
        let entry = self.forward_entry_to_create(region, table, spec)?;
        let id = self.next_entry_id("fwd");
        let gateway = entry.nat_gateway.clone();
        self.forward_entries.push(ForwardEntry {
            id: id.clone(),
            ..entry
        });
        Ok((id, self.nat_entries_changed(gateway)))
    }

    /// Every rule of CreateForwardEntry, changing nothing (`DryRun`).
    pub fn check_create_forward_entry(
        &self,
        region: &str,
        table: &str,
        spec: &ForwardSpec,
    ) -> Result<(), CloudError> {
        self.forward_entry_to_create(region, table, spec).map(drop)
    }

    /// The entry CreateForwardEntry would make (without its id), checked.
    fn forward_entry_to_create(
        &self,
        region: &str,
        table: &str,
        spec: &ForwardSpec,
    ) -> Result<ForwardEntry, CloudError> {
        let gateway = self.forward_table(region, table)?.id.clone();
        for (v, code, name) in [
            (&spec.external_ip, "MissingExternalIp", "ExternalIp"),
            (&spec.external_port, "MissingExternalPort", "ExternalPort"),
            (&spec.internal_ip, "MissingInternalIp", "InternalIp"),
            (&spec.internal_port, "MissingInternalPort", "InternalPort"),
            (&spec.ip_protocol, "MissingIpProtocol", "IpProtocol"),
        ] {
            if v.is_none() {
                return Err(missing(code, name));
            }
        }
        let mut entry = ForwardEntry {
            id: String::new(),
            nat_gateway: gateway.clone(),
            external_ip: Ipv4Addr::UNSPECIFIED,
            internal_ip: Ipv4Addr::UNSPECIFIED,
            external_port: String::new(),
            internal_port: String::new(),
            ip_protocol: String::new(),
            name: String::new(),
        };
        Self::apply_forward_spec(&mut entry, spec)?;
        let n = self
            .forward_entries
            .iter()
            .filter(|f| f.nat_gateway == gateway)
            .count();
        if n >= MAX_FORWARD_ENTRIES {
            return Err(CloudError::bad(
                "QuotaExceeded",
                format!(
                    "{table} already has {n} DNAT entries: a DNAT table takes \
                     {MAX_FORWARD_ENTRIES}; delete one first"
                ),
            ));
        }
        self.check_forward_entry(&entry, None)?;
        Ok(entry)
    }

    /// ModifyForwardEntry: any of ExternalIp, ExternalPort, InternalIp, InternalPort,
    /// IpProtocol and the name; the resulting entry meets every rule of CreateForwardEntry
    /// (against the other entries) or nothing changes.
    /// The same entry again changes nothing (and records nothing).
    pub fn modify_forward_entry(
        &mut self,
        region: &str,
        table: &str,
        id: &str,
        spec: &ForwardSpec,
    ) -> Result<Vec<Change>, CloudError> {
        let (k, entry) = self.forward_entry_modified(region, table, id, spec)?;
        if self.forward_entries[k] == entry {
            return Ok(Vec::new());
        }
        let gateway = entry.nat_gateway.clone();
        self.forward_entries[k] = entry;
        Ok(self.nat_entries_changed(gateway))
    }

    /// Every rule of ModifyForwardEntry, changing nothing (`DryRun`).
    pub fn check_modify_forward_entry(
        &self,
        region: &str,
        table: &str,
        id: &str,
        spec: &ForwardSpec,
    ) -> Result<(), CloudError> {
        self.forward_entry_modified(region, table, id, spec)
            .map(drop)
    }

    /// The entry ModifyForwardEntry would make, checked, and where it is.
    fn forward_entry_modified(
        &self,
        region: &str,
        table: &str,
        id: &str,
        spec: &ForwardSpec,
    ) -> Result<(usize, ForwardEntry), CloudError> {
        let gateway = self.forward_table(region, table)?.id.clone();
        let k = self.forward_entry_at(&gateway, table, id)?;
        let mut entry = self.forward_entries[k].clone();
        Self::apply_forward_spec(&mut entry, spec)?;
        self.check_forward_entry(&entry, Some(id))?;
        Ok((k, entry))
    }

    /// DeleteForwardEntry.
    pub fn delete_forward_entry(
        &mut self,
        region: &str,
        table: &str,
        id: &str,
    ) -> Result<Vec<Change>, CloudError> {
        let gateway = self.forward_table(region, table)?.id.clone();
        let k = self.forward_entry_at(&gateway, table, id)?;
        self.forward_entries.remove(k);
        Ok(self.nat_entries_changed(gateway))
    }
}

// ---- the dataplane of the entries (SPEC D9–D11) -------------------------------------------

/// One NAT gateway's dataplane: its EIPs and its rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayRules {
    pub id: String,
    /// Its EIPs (associated with it, InUse or Unassociating) and their slots.
    pub eips: Vec<(Ipv4Addr, EipSlot)>,
    pub snat: Vec<SnatRule>,
    pub dnat: Vec<DnatRule>,
    /// The private sources it carries: its SNAT sources and its DNAT targets (`/32`).
    pub sources: Vec<(Ipv4Addr, u8)>,
}

impl Cloud {
    /// [`Cloud::snat_source`] as a network and a prefix length.
    fn snat_block(&self, s: &SnatEntry) -> Option<(Ipv4Addr, u8)> {
        let c = self.snat_source(s)?;
        let (net, len) = c.split_once('/')?;
        Some((net.parse().ok()?, len.parse().ok().filter(|&l| l <= 32)?))
    }

    /// DNAT entries whose target belongs to an instance that has an EIP of its own: the
    /// legacy state a lab file may declare (SPEC §3; the API refuses to make it). The instance's
    /// own EIP then carries its internet traffic (D11), replies to the entry's connections
    /// included. Each as (entry id, instance id, the instance's EIP).
    pub fn legacy_dnat_targets(&self) -> Vec<(String, String, Ipv4Addr)> {
        self.forward_entries
            .iter()
            .filter_map(|f| {
                let (inst, e) = self.instance_with_eip_at(f.internal_ip)?;
                Some((f.id.clone(), inst.to_string(), e.address))
            })
            .collect()
    }

    /// A forward entry as a NAPT rule, if it reads as one.
    pub fn dnat_rule(f: &ForwardEntry) -> Option<DnatRule> {
        let protocol = match parse_protocol(&f.ip_protocol).ok()? {
            "TCP" => DnatProtocol::Tcp,
            "UDP" => DnatProtocol::Udp,
            _ => DnatProtocol::Any,
        };
        let port = |s: &str| match parse_port(s, "", "").ok()? {
            Port::Number(n) => Some(n),
            Port::Any => None,
        };
        let (ext, int) = if protocol == DnatProtocol::Any {
            (0, 0)
        } else {
            (port(&f.external_port)?, port(&f.internal_port)?)
        };
        Some(DnatRule {
            external: SocketAddrV4::new(f.external_ip, ext),
            protocol,
            internal: SocketAddrV4::new(f.internal_ip, int),
        })
    }

    /// Every NAT gateway's dataplane, in id order. Entries on an address that is no longer
    /// one of the gateway's EIPs carry nothing (the API refuses to leave them so).
    pub fn nat_gateway_rules(&self) -> Vec<GatewayRules> {
        let mut out = Vec::with_capacity(self.nat_gateways.len());
        for g in self.nat_gateways.values() {
            let eips: Vec<(Ipv4Addr, EipSlot)> = self
                .eips
                .values()
                .filter(|e| matches!(e.status, EipStatus::InUse | EipStatus::Unassociating))
                .filter(|e| {
                    e.binding.as_ref().is_some_and(|b| {
                        b.bind_type == super::BindType::Nat && b.instance_id == g.id
                    })
                })
                .map(|e| (e.address, e.slot))
                .collect();
            let mine = |a: &Ipv4Addr| eips.iter().any(|(e, _)| e == a);
            let mut snat = Vec::new();
            let mut sources = Vec::new();
            for s in self.snat_entries.iter().filter(|s| s.nat_gateway == g.id) {
                let Some((net, len)) = self.snat_block(s) else {
                    continue;
                };
                let ips: Vec<Ipv4Addr> = s.snat_ips.iter().copied().filter(|a| mine(a)).collect();
                if ips.is_empty() {
                    continue;
                }
                snat.push(SnatRule {
                    source: net,
                    prefix_len: len,
                    eips: ips,
                });
                sources.push((net, len));
            }
            let mut dnat = Vec::new();
            for f in self
                .forward_entries
                .iter()
                .filter(|f| f.nat_gateway == g.id)
            {
                let Some(r) = Cloud::dnat_rule(f).filter(|r| mine(r.external.ip())) else {
                    continue;
                };
                dnat.push(r);
                if !sources.contains(&(*r.internal.ip(), 32)) {
                    sources.push((*r.internal.ip(), 32));
                }
            }
            out.push(GatewayRules {
                id: g.id.clone(),
                eips,
                snat,
                dnat,
                sources,
            });
        }
        out
    }
}
