//! The actions the API serves, in one registry shared by the server and the CLI: each with
//! its name, its product's API version (a call naming another version is refused with the
//! cloud's `InvalidVersion`) and its handler. A handler reads and checks its parameters before
//! it changes the model, and changes it with one call of the model (which checks every rule
//! before it changes anything), so a handler that fails has changed nothing: it runs inside
//! [`crate::control::ControlPlane::transact`], which does not undo anything but saves what the
//! model records.

use super::server::{invalid, missing, ApiError};
use crate::cloud::havip::HaVipSpec;
use crate::cloud::nat::{forward_table_id, snat_table_id, ForwardSpec, SnatSpec};
use crate::cloud::{self, Associate, Cloud, CloudError, EipStatus, Mode};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// A call's business parameters (the protocol's own, `Action`, `Version`, signature fields,
/// are not among them).
pub type Params = BTreeMap<String, String>;

/// The VPC API's version (the EIP actions).
pub const VPC: &str = "2016-04-28";
/// The ECS API's version (ENI and instance actions).
pub const ECS: &str = "2014-05-26";

/// One call being answered: the lab time, its parameters, its region (`RegionId`, default the
/// lab's) and the answer being built (`RequestId` is added last).
pub struct Call<'a> {
    pub now: u64,
    pub p: &'a Params,
    pub region: String,
    pub out: Map<String, Value>,
}

/// An action of the API.
pub struct Action {
    pub name: &'static str,
    /// The API version of its product; a call must name this one.
    pub version: &'static str,
    run: fn(&mut Cloud, &mut Call<'_>) -> Result<(), ApiError>,
}

impl Action {
    /// The action called `name`, if the lab serves it.
    pub fn find(name: &str) -> Option<&'static Action> {
        ACTIONS.iter().find(|a| a.name == name)
    }

    /// Refuses a call that names another API version than the action's (no version: the
    /// action's own; the SDKs always send one).
    pub fn check_version(&self, version: Option<&str>) -> Result<(), ApiError> {
        match version {
            Some(v) if v != self.version => Err(ApiError {
                code: "InvalidVersion".into(),
                status: 400,
                message: format!(
                    "Specified parameter Version is not valid. ({} belongs to the API of version {}, not {v:?})",
                    self.name, self.version
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Runs the action on the model; the answer carries a new `RequestId`.
    pub fn run(&self, c: &mut Cloud, now: u64, p: &Params) -> Result<Value, ApiError> {
        let region = get(p, "RegionId").unwrap_or(&c.settings.region).to_string();
        let mut call = Call {
            now,
            p,
            region,
            out: Map::new(),
        };
        (self.run)(c, &mut call)?;
        call.out.insert("RequestId".into(), json!(request_id()));
        Ok(Value::Object(call.out))
    }
}

/// Every action the lab serves: its name, its product's API version and what it does.
pub static ACTIONS: &[Action] = &[
    Action {
        name: "AllocateEipAddress",
        version: VPC,
        run: allocate_eip_address,
    },
    Action {
        name: "ReleaseEipAddress",
        version: VPC,
        run: release_eip_address,
    },
    Action {
        name: "AssociateEipAddress",
        version: VPC,
        run: associate_eip_address,
    },
    Action {
        name: "AssociateEipAddressBatch",
        version: VPC,
        run: associate_eip_address_batch,
    },
    Action {
        name: "UnassociateEipAddress",
        version: VPC,
        run: unassociate_eip_address,
    },
    Action {
        name: "ModifyEipAddressAttribute",
        version: VPC,
        run: modify_eip_address_attribute,
    },
    Action {
        name: "DescribeEipAddresses",
        version: VPC,
        run: describe_eip_addresses,
    },
    Action {
        name: "DescribeEipGatewayInfo",
        version: VPC,
        run: describe_eip_gateway_info,
    },
    Action {
        name: "AttachNetworkInterface",
        version: ECS,
        run: attach_network_interface,
    },
    Action {
        name: "DetachNetworkInterface",
        version: ECS,
        run: detach_network_interface,
    },
    Action {
        name: "AssignPrivateIpAddresses",
        version: ECS,
        run: assign_private_ip_addresses,
    },
    Action {
        name: "UnassignPrivateIpAddresses",
        version: ECS,
        run: unassign_private_ip_addresses,
    },
    Action {
        name: "StartInstance",
        version: ECS,
        run: start_instance,
    },
    Action {
        name: "StopInstance",
        version: ECS,
        run: stop_instance,
    },
    Action {
        name: "DescribeNetworkInterfaces",
        version: ECS,
        run: describe_network_interfaces,
    },
    Action {
        name: "DescribeNatGateways",
        version: VPC,
        run: describe_nat_gateways,
    },
    Action {
        name: "DescribeSnatTableEntries",
        version: VPC,
        run: describe_snat_table_entries,
    },
    Action {
        name: "DescribeForwardTableEntries",
        version: VPC,
        run: describe_forward_table_entries,
    },
    Action {
        name: "CreateSnatEntry",
        version: VPC,
        run: create_snat_entry,
    },
    Action {
        name: "ModifySnatEntry",
        version: VPC,
        run: modify_snat_entry,
    },
    Action {
        name: "DeleteSnatEntry",
        version: VPC,
        run: delete_snat_entry,
    },
    Action {
        name: "CreateForwardEntry",
        version: VPC,
        run: create_forward_entry,
    },
    Action {
        name: "ModifyForwardEntry",
        version: VPC,
        run: modify_forward_entry,
    },
    Action {
        name: "DeleteForwardEntry",
        version: VPC,
        run: delete_forward_entry,
    },
    Action {
        name: "CreateHaVip",
        version: VPC,
        run: create_havip,
    },
    Action {
        name: "DeleteHaVip",
        version: VPC,
        run: delete_havip,
    },
    Action {
        name: "AssociateHaVip",
        version: VPC,
        run: associate_havip,
    },
    Action {
        name: "UnassociateHaVip",
        version: VPC,
        run: unassociate_havip,
    },
    Action {
        name: "DescribeHaVips",
        version: VPC,
        run: describe_havips,
    },
];

fn allocate_eip_address(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let now = x.now;
    let p = x.p;
    let region = x.region.as_str();
    let out = &mut x.out;
    let bandwidth = num(p, "Bandwidth", 5, 10_000)?;
    let mut ip = addr(p, "IpAddress")?;
    if ip.is_none() {
        if let Some(id) = get(p, "InstanceId") {
            let r = c
                .released
                .iter()
                .find(|r| r.allocation_id == id)
                .ok_or_else(|| {
                    ApiError::from(CloudError {
                        code: "InvalidAllocationId.NotFound",
                        status: 404,
                        message: format!("{id} is not a released EIP that can be recovered"),
                    })
                })?;
            ip = Some(r.address);
        }
    }
    // Every parameter is checked before the model changes (a recovered EIP keeps its own
    // charge type).
    let charge = match (ip, get(p, "InternetChargeType")) {
        (None, Some(t)) if t == "PayByTraffic" || t == "PayByBandwidth" => Some(t),
        (None, Some(t)) => {
            return Err(invalid(
                "InternetChargeType",
                t,
                "PayByTraffic or PayByBandwidth",
            ))
        }
        _ => None,
    };
    let (id, _) = c.allocate_charged(now, region, bandwidth, ip, rand::random(), charge)?;
    let e = &c.eips[&id];
    out.insert("AllocationId".into(), json!(id));
    out.insert("EipAddress".into(), json!(e.address.to_string()));
    out.insert("ResourceGroupId".into(), json!("rg-lab"));
    Ok(())
}

fn release_eip_address(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let now = x.now;
    let p = x.p;
    c.release(now, need(p, "AllocationId")?)?;
    Ok(())
}

fn associate_eip_address(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let now = x.now;
    let p = x.p;
    let req = Associate {
        allocation_id: need(p, "AllocationId")?.to_string(),
        instance_id: need(p, "InstanceId")?.to_string(),
        bind_type: cloud::parse_bind_type(get(p, "InstanceType").unwrap_or("EcsInstance"))?,
        mode: cloud::parse_mode(get(p, "Mode").unwrap_or("NAT"))?,
        private_ip: addr(p, "PrivateIpAddress")?,
    };
    c.associate(now, &req)?;
    Ok(())
}

fn associate_eip_address_batch(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let now = x.now;
    let p = x.p;
    let ids = list(p, "InstanceIds");
    if ids.is_empty() {
        return Err(missing("InstanceIds"));
    }
    c.associate_batch(
        now,
        &ids,
        need(p, "BindedInstanceId")?,
        cloud::parse_bind_type(need(p, "BindedInstanceType")?)?,
        cloud::parse_mode(get(p, "Mode").unwrap_or("NAT"))?,
    )?;
    Ok(())
}

fn unassociate_eip_address(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let now = x.now;
    let p = x.p;
    let id = need(p, "AllocationId")?;
    if let (Some(want), Some(e)) = (get(p, "InstanceId"), c.eips.get(id)) {
        if let Some(b) = &e.binding {
            if b.instance_id != want {
                return Err(ApiError::from(CloudError {
                    code: "IncorrectEipStatus",
                    status: 400,
                    message: format!("EIP {id} is bound to {}, not {want}", b.instance_id),
                }));
            }
        }
    }
    c.unassociate(now, id, truthy(p, "Force"))?;
    Ok(())
}

fn modify_eip_address_attribute(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let p = x.p;
    let id = need(p, "AllocationId")?;
    match get(p, "Bandwidth") {
        Some(_) => {
            c.set_bandwidth(id, num(p, "Bandwidth", 5, 10_000)?)?;
        }
        None => {
            c.eips.get(id).ok_or_else(|| {
                ApiError::from(CloudError {
                    code: "InvalidAllocationId.NotFound",
                    status: 404,
                    message: format!("no EIP {id}"),
                })
            })?;
        }
    }
    Ok(())
}

fn describe_eip_addresses(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let p = x.p;
    let region = x.region.as_str();
    let out = &mut x.out;
    let ids: Option<Vec<&str>> =
        get(p, "AllocationId").map(|s| s.split(',').map(str::trim).collect());
    let addrs: Option<Vec<&str>> =
        get(p, "EipAddress").map(|s| s.split(',').map(str::trim).collect());
    let status = get(p, "Status");
    let itype = get(p, "AssociatedInstanceType");
    let iid = get(p, "AssociatedInstanceId");
    let page = num(p, "PageNumber", 1, u32::MAX)?;
    let size = num(p, "PageSize", 10, 100)?;
    let all: Vec<&cloud::Eip> = c
        .eips
        .values()
        .filter(|e| e.region == region)
        .filter(|e| {
            ids.as_ref()
                .is_none_or(|l| l.contains(&e.allocation_id.as_str()))
        })
        .filter(|e| {
            addrs
                .as_ref()
                .is_none_or(|l| l.contains(&e.address.to_string().as_str()))
        })
        .filter(|e| status.is_none_or(|s| s == e.status.api_name()))
        .filter(|e| {
            itype.is_none_or(|t| {
                e.binding
                    .as_ref()
                    .is_some_and(|b| b.bind_type.api_name() == t)
            })
        })
        .filter(|e| iid.is_none_or(|i| e.binding.as_ref().is_some_and(|b| b.instance_id == i)))
        .collect();
    let items = paged(out, &all, page, size, |e| describe_eip(c, e));
    out.insert("EipAddresses".into(), json!({"EipAddress": items}));
    Ok(())
}

fn describe_eip_gateway_info(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let p = x.p;
    let out = &mut x.out;
    let eni = need(p, "InstanceId")?;
    if !c.enis.contains_key(eni) {
        return Err(ApiError::from(CloudError {
            code: "InvalidInstanceId.NotFound",
            status: 400,
            message: format!("no network interface {eni}"),
        }));
    }
    let mut infos = Vec::new();
    for e in c.eips.values() {
        let Some(b) = &e.binding else { continue };
        if b.instance_id == eni && b.mode == Mode::MultiBinded && e.status == EipStatus::InUse {
            let (gw, mask) = pool_gateway(c, e.address);
            infos.push(json!({"Ip": e.address.to_string(), "IpGw": gw, "IpMask": mask}));
        }
    }
    if infos.is_empty() {
        return Err(ApiError::from(CloudError {
            code: "OperationUnsupported.EipBindModel",
            status: 400,
            message: format!("{eni} has no MULTI_BINDED EIP: gateway information exists for MULTI_BINDED EIPs only"),
        }));
    }
    out.insert("Code".into(), json!("200"));
    out.insert("Message".into(), json!("successful"));
    out.insert("EipInfos".into(), json!({"EipInfo": infos}));
    Ok(())
}

fn attach_network_interface(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let p = x.p;
    c.attach_eni(need(p, "NetworkInterfaceId")?, need(p, "InstanceId")?)?;
    Ok(())
}

fn detach_network_interface(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let p = x.p;
    c.detach_eni(need(p, "NetworkInterfaceId")?, need(p, "InstanceId")?)?;
    Ok(())
}

fn assign_private_ip_addresses(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let p = x.p;
    let out = &mut x.out;
    let eni = need(p, "NetworkInterfaceId")?;
    let ips = addr_list(p, "PrivateIpAddress")?;
    let count = match get(p, "SecondaryPrivateIpAddressCount") {
        Some(_) => num(p, "SecondaryPrivateIpAddressCount", 1, 50)?,
        None => 0,
    };
    if ips.is_empty() && count == 0 {
        return Err(missing("PrivateIpAddress"));
    }
    let (new, _) = c.assign_private_ips(eni, &ips, count)?;
    out.insert(
        "AssignedPrivateIpAddressesSet".into(),
        json!({
            "NetworkInterfaceId": eni,
            "PrivateIpSet": {"PrivateIpAddress": new.iter().map(|a| a.to_string()).collect::<Vec<_>>()},
        }),
    );
    Ok(())
}

fn unassign_private_ip_addresses(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let p = x.p;
    let eni = need(p, "NetworkInterfaceId")?;
    let ips = addr_list(p, "PrivateIpAddress")?;
    if ips.is_empty() {
        return Err(missing("PrivateIpAddress"));
    }
    c.unassign_private_ips(eni, &ips)?;
    Ok(())
}

fn start_instance(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let now = x.now;
    let p = x.p;
    c.set_running(now, need(p, "InstanceId")?, true)?;
    Ok(())
}

fn stop_instance(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let now = x.now;
    let p = x.p;
    c.set_running(now, need(p, "InstanceId")?, false)?;
    Ok(())
}

fn describe_network_interfaces(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let p = x.p;
    let region = x.region.as_str();
    let out = &mut x.out;
    let ids = list(p, "NetworkInterfaceId");
    let inst = get(p, "InstanceId");
    let vsw = get(p, "VSwitchId");
    let ty = get(p, "Type");
    let page = num(p, "PageNumber", 1, u32::MAX)?;
    let size = num(p, "PageSize", 10, 500)?;
    let all: Vec<&cloud::Eni> = c
        .enis
        .values()
        .filter(|e| e.region == region)
        .filter(|e| ids.is_empty() || ids.contains(&e.id))
        .filter(|e| inst.is_none_or(|i| e.instance.as_deref() == Some(i)))
        .filter(|e| vsw.is_none_or(|v| e.vswitch == v))
        .filter(|e| ty.is_none_or(|t| t == if e.primary { "Primary" } else { "Secondary" }))
        .collect();
    let items = paged(out, &all, page, size, |e| describe_eni(c, e));
    out.insert("NextToken".into(), json!(""));
    out.insert(
        "NetworkInterfaceSets".into(),
        json!({"NetworkInterfaceSet": items}),
    );
    Ok(())
}

pub(super) fn request_id() -> String {
    let r: u128 = rand::random();
    let h = format!("{r:032X}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn get<'a>(p: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    p.get(name).map(String::as_str).filter(|s| !s.is_empty())
}

fn need<'a>(p: &'a BTreeMap<String, String>, name: &str) -> Result<&'a str, ApiError> {
    get(p, name).ok_or_else(|| missing(name))
}

fn num(p: &BTreeMap<String, String>, name: &str, default: u32, max: u32) -> Result<u32, ApiError> {
    match get(p, name) {
        None => Ok(default),
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|v| (1..=max).contains(v))
            .ok_or_else(|| invalid(name, s, &format!("a whole number from 1 to {max}"))),
    }
}

fn addr(p: &BTreeMap<String, String>, name: &str) -> Result<Option<Ipv4Addr>, ApiError> {
    get(p, name)
        .map(|s| s.parse().map_err(|_| invalid(name, s, "an IPv4 address")))
        .transpose()
}

/// One page (1-based `page` of `size`) of `all`, described; writes TotalCount, PageNumber and
/// PageSize into `out`.
fn paged<T>(
    out: &mut serde_json::Map<String, Value>,
    all: &[T],
    page: u32,
    size: u32,
    describe: impl Fn(&T) -> Value,
) -> Vec<Value> {
    out.insert("TotalCount".into(), json!(all.len()));
    out.insert("PageNumber".into(), json!(page));
    out.insert("PageSize".into(), json!(size));
    let start = ((page - 1) as usize).saturating_mul(size as usize);
    all.iter()
        .skip(start)
        .take(size as usize)
        .map(describe)
        .collect()
}

/// A repeated parameter flattened as `Name.1`, `Name.2`, … (or given once as `Name`).
fn list(p: &BTreeMap<String, String>, name: &str) -> Vec<String> {
    let mut v: Vec<(u32, String)> = p
        .iter()
        .filter_map(|(k, val)| {
            let n = k.strip_prefix(name)?.strip_prefix('.')?.parse().ok()?;
            Some((n, val.clone()))
        })
        .collect();
    v.sort();
    let mut out: Vec<String> = v.into_iter().map(|(_, s)| s).collect();
    if let Some(one) = get(p, name) {
        out.extend(one.split(',').map(|s| s.trim().to_string()));
    }
    out
}

fn addr_list(p: &BTreeMap<String, String>, name: &str) -> Result<Vec<Ipv4Addr>, ApiError> {
    list(p, name)
        .iter()
        .map(|s| s.parse().map_err(|_| invalid(name, s, "an IPv4 address")))
        .collect()
}

fn describe_eni(c: &Cloud, e: &cloud::Eni) -> Value {
    let public_of = |ip: Ipv4Addr| {
        c.eips.values().find(|x| {
            x.binding.as_ref().is_some_and(|b| {
                c.bound_eni(b).is_some_and(|be| be.id == e.id)
                    && (b.private_ip == Some(ip)
                        || (b.mode == Mode::MultiBinded && ip == e.private_ips[0]))
            })
        })
    };
    let assoc = |ip: Ipv4Addr| {
        public_of(ip).map_or(
            json!({"PublicIpAddress": "", "AllocationId": ""}),
            |x| json!({"PublicIpAddress": x.address.to_string(), "AllocationId": x.allocation_id}),
        )
    };
    let zone = c
        .vswitches
        .get(&e.vswitch)
        .map_or(String::new(), |v| v.zone.clone());
    let device_index = e.instance.as_ref().map(|i| {
        c.enis
            .values()
            .filter(|o| o.instance.as_ref() == Some(i) && (o.primary || o.index < e.index))
            .filter(|o| o.id != e.id)
            .count()
    });
    let mac = e.mac();
    let mut v = json!({
        "NetworkInterfaceId": e.id,
        "Status": if e.instance.is_some() { "InUse" } else { "Available" },
        "Type": if e.primary { "Primary" } else { "Secondary" },
        "InstanceId": e.instance.clone().unwrap_or_default(),
        "VSwitchId": e.vswitch,
        "VpcId": c.settings.vpc_id,
        "ZoneId": zone,
        "PrivateIpAddress": e.private_ips[0].to_string(),
        "MacAddress": mac,
        "AssociatedPublicIp": assoc(e.private_ips[0]),
        "PrivateIpSets": {"PrivateIpSet": e.private_ips.iter().enumerate().map(|(k, ip)| json!({
            "PrivateIpAddress": ip.to_string(),
            "Primary": k == 0,
            "AssociatedPublicIp": assoc(*ip),
        })).collect::<Vec<_>>()},
    });
    if let (Some(i), Some(d)) = (&e.instance, device_index) {
        v["Attachment"] = json!({"InstanceId": i, "DeviceIndex": d});
    }
    v
}

fn truthy(p: &BTreeMap<String, String>, name: &str) -> bool {
    get(p, name).is_some_and(|s| s.eq_ignore_ascii_case("true"))
}

pub(super) fn ts(ns: u64) -> String {
    super::sign::iso8601((ns / 1_000_000_000) as i64)
}

pub(super) fn describe_eip(c: &Cloud, e: &cloud::Eip) -> Value {
    let b = e.binding.as_ref();
    let mode = b.map_or("NAT", |b| cloud_mode_name(b.mode));
    json!({
        "AllocationId": e.allocation_id,
        "IpAddress": e.address.to_string(),
        "Status": e.status.api_name(),
        "InstanceId": b.map_or(String::new(), |b| b.instance_id.clone()),
        "InstanceType": b.map_or("", |b| b.bind_type.api_name()),
        "InstanceRegionId": b.map_or(String::new(), |_| e.region.clone()),
        "Mode": mode,
        "PrivateIpAddress": b.and_then(|b| b.private_ip).map_or(String::new(), |a| a.to_string()),
        "Bandwidth": e.bandwidth.to_string(),
        "EipBandwidth": e.bandwidth.to_string(),
        "RegionId": e.region,
        "AllocationTime": ts(e.allocated_at),
        "ChargeType": "PostPaid",
        "InternetChargeType": e.internet_charge_type,
        "Netmode": "public",
        "ISP": "BGP",
        "Name": "",
        "Description": "",
        "BusinessStatus": "Normal",
        "DeletionProtection": false,
        "OperationLocks": {"LockReason": []},
        "Tags": {"Tag": []},
        "VpcId": b.and_then(|b| c.bound_eni(b)).map_or(String::new(), |_| c.settings.vpc_id.clone()),
    })
}

fn cloud_mode_name(m: Mode) -> &'static str {
    m.api_name()
}

/// Runs one action on the model.
/// The pool's gateway (two below its broadcast) and mask, for a MULTI_BINDED EIP.
fn pool_gateway(c: &Cloud, a: Ipv4Addr) -> (String, String) {
    for &(net, len) in &c.settings.eip_pool {
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        if u32::from(a) & mask == u32::from(net) {
            let bcast = u32::from(net) | !mask;
            return (
                Ipv4Addr::from(bcast - 2).to_string(),
                Ipv4Addr::from(mask).to_string(),
            );
        }
    }
    (String::new(), "255.255.255.255".into())
}

/// Whether `filter` (a comma-separated list, or absent) admits `value`.
fn admits(filter: Option<&str>, value: &str) -> bool {
    filter.is_none_or(|f| f.split(',').map(str::trim).any(|x| x == value))
}

fn describe_nat_gateways(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let p = x.p;
    let id = get(p, "NatGatewayId");
    let vpc = get(p, "VpcId");
    let page = num(p, "PageNumber", 1, u32::MAX)?;
    let size = num(p, "PageSize", 10, 50)?;
    let c: &Cloud = c;
    let all: Vec<&cloud::NatGateway> = c
        .nat_gateways
        .values()
        .filter(|g| g.region == x.region)
        .filter(|g| admits(id, &g.id))
        .filter(|_| vpc.is_none_or(|v| v == c.settings.vpc_id))
        .collect();
    let items = paged(&mut x.out, &all, page, size, |g| describe_nat_gateway(c, g));
    x.out
        .insert("NatGateways".into(), json!({"NatGateway": items}));
    Ok(())
}

fn describe_nat_gateway(c: &Cloud, g: &cloud::NatGateway) -> Value {
    let ips: Vec<Value> = c
        .eips
        .values()
        .filter(|e| {
            e.binding
                .as_ref()
                .is_some_and(|b| b.bind_type == cloud::BindType::Nat && b.instance_id == g.id)
        })
        .map(|e| {
            let snat = c
                .snat_entries
                .iter()
                .any(|s| s.snat_ips.contains(&e.address));
            let dnat = c.forward_entries.iter().any(|f| f.external_ip == e.address);
            let using = if snat {
                "UsedBySnatTable"
            } else if dnat {
                "UsedByForwardTable"
            } else {
                "Idle"
            };
            json!({
                "AllocationId": e.allocation_id,
                "IpAddress": e.address.to_string(),
                "UsingStatus": using,
                "SnatEntryEnabled": snat,
                "PrivateIpAddress": e.binding.as_ref().and_then(|b| b.private_ip)
                    .map_or(String::new(), |a| a.to_string()),
            })
        })
        .collect();
    let zone = c
        .vswitches
        .get(&g.vswitch)
        .map_or(String::new(), |v| v.zone.clone());
    json!({
        "NatGatewayId": g.id,
        "Name": "",
        "Description": "",
        "RegionId": g.region,
        "VpcId": c.settings.vpc_id,
        "Status": "Available",
        "BusinessStatus": "Normal",
        "NatType": "Enhanced",
        "NetworkType": "internet",
        "InstanceChargeType": "PostPaid",
        "InternetChargeType": "PayByLcu",
        "EipBindMode": if g.eip_takes_private_ip { "MULTI_BINDED" } else { "NAT" },
        "DeletionProtection": false,
        "ResourceGroupId": "rg-lab",
        "SnatTableIds": {"SnatTableId": [snat_table_id(&g.id)]},
        "ForwardTableIds": {"ForwardTableId": [forward_table_id(&g.id)]},
        "IpLists": {"IpList": ips},
        "NatGatewayPrivateInfo": {"VswitchId": g.vswitch, "IzNo": zone},
        "Tags": {"Tag": []},
    })
}

fn describe_snat_table_entries(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let p = x.p;
    let table = get(p, "SnatTableId");
    let gw = get(p, "NatGatewayId");
    let entry = get(p, "SnatEntryId");
    let cidr = get(p, "SourceCIDR");
    let vsw = get(p, "SourceVSwitchId");
    let snat_ip = get(p, "SnatIp");
    let name = get(p, "SnatEntryName");
    let page = num(p, "PageNumber", 1, u32::MAX)?;
    let size = num(p, "PageSize", 10, 100)?;
    let c: &Cloud = c;
    let all: Vec<&cloud::SnatEntry> = c
        .snat_entries
        .iter()
        .filter(|s| {
            c.nat_gateways
                .get(&s.nat_gateway)
                .is_some_and(|g| g.region == x.region)
        })
        .filter(|s| admits(table, &snat_table_id(&s.nat_gateway)))
        .filter(|s| admits(gw, &s.nat_gateway))
        .filter(|s| admits(entry, &s.id))
        .filter(|s| cidr.is_none_or(|v| s.source_cidr.as_deref() == Some(v)))
        .filter(|s| vsw.is_none_or(|v| s.source_vswitch.as_deref() == Some(v)))
        .filter(|s| snat_ip.is_none_or(|v| s.snat_ips.iter().any(|a| a.to_string() == v)))
        .filter(|s| name.is_none_or(|v| s.name == v))
        .collect();
    let items = paged(&mut x.out, &all, page, size, |s| {
        json!({
            "SnatTableId": snat_table_id(&s.nat_gateway),
            "SnatEntryId": s.id,
            "SnatEntryName": s.name,
            "SourceCIDR": s.source_cidr.clone().unwrap_or_default(),
            "SourceVSwitchId": s.source_vswitch.clone().unwrap_or_default(),
            "SnatIp": s.snat_ips.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(","),
            "NatGatewayId": s.nat_gateway,
            "Status": "Available",
            "EipAffinity": 0,
            "NetworkInterfaceId": "",
        })
    });
    x.out
        .insert("SnatTableEntries".into(), json!({"SnatTableEntry": items}));
    Ok(())
}

fn describe_forward_table_entries(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let p = x.p;
    let table = get(p, "ForwardTableId");
    let gw = get(p, "NatGatewayId");
    let entry = get(p, "ForwardEntryId");
    let ext_ip = get(p, "ExternalIp");
    let int_ip = get(p, "InternalIp");
    let ext_port = get(p, "ExternalPort");
    let int_port = get(p, "InternalPort");
    let proto = get(p, "IpProtocol");
    let name = get(p, "ForwardEntryName");
    let page = num(p, "PageNumber", 1, u32::MAX)?;
    let size = num(p, "PageSize", 10, 50)?;
    let c: &Cloud = c;
    let all: Vec<&cloud::ForwardEntry> = c
        .forward_entries
        .iter()
        .filter(|f| {
            c.nat_gateways
                .get(&f.nat_gateway)
                .is_some_and(|g| g.region == x.region)
        })
        .filter(|f| admits(table, &forward_table_id(&f.nat_gateway)))
        .filter(|f| admits(gw, &f.nat_gateway))
        .filter(|f| admits(entry, &f.id))
        .filter(|f| ext_ip.is_none_or(|v| f.external_ip.to_string() == v))
        .filter(|f| int_ip.is_none_or(|v| f.internal_ip.to_string() == v))
        .filter(|f| ext_port.is_none_or(|v| f.external_port.eq_ignore_ascii_case(v)))
        .filter(|f| int_port.is_none_or(|v| f.internal_port.eq_ignore_ascii_case(v)))
        .filter(|f| proto.is_none_or(|v| f.ip_protocol.eq_ignore_ascii_case(v)))
        .filter(|f| name.is_none_or(|v| f.name == v))
        .collect();
    let items = paged(&mut x.out, &all, page, size, |f| {
        json!({
            "ForwardTableId": forward_table_id(&f.nat_gateway),
            "ForwardEntryId": f.id,
            "ForwardEntryName": f.name,
            "ExternalIp": f.external_ip.to_string(),
            "ExternalPort": f.external_port,
            "InternalIp": f.internal_ip.to_string(),
            "InternalPort": f.internal_port,
            "IpProtocol": f.ip_protocol,
            "NatGatewayId": f.nat_gateway,
            "Status": "Available",
        })
    });
    x.out.insert(
        "ForwardTableEntries".into(),
        json!({"ForwardTableEntry": items}),
    );
    Ok(())
}

/// A parameter as given, owned (absent or empty: `None`).
fn given(p: &Params, name: &str) -> Option<String> {
    get(p, name).map(str::to_string)
}

// The SNAT/DNAT entry actions: the model ([`cloud::nat`]) checks every rule; the handlers read
// the parameters under the SDKs' names. Entries are Available at once (see `cloud::nat`), as
// DescribeSnatTableEntries and DescribeForwardTableEntries answer them.

/// Whether the call asks for `DryRun`: the model's `check_*` then runs every rule and changes
/// nothing, and the call ends with [`dry_run_passed`].
fn dry_run(p: &Params) -> bool {
    truthy(p, "DryRun")
}

/// `DryRun=true` on a call whose checks all passed: the cloud answers `DryRunOperation` and
/// makes nothing.
fn dry_run_passed() -> ApiError {
    ApiError {
        code: "DryRunOperation".into(),
        status: 400,
        message: "Request validation has been passed with DryRun flag set.".into(),
    }
}

fn create_snat_entry(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let p = x.p;
    let table = need(p, "SnatTableId")?;
    let spec = SnatSpec {
        snat_ip: Some(need(p, "SnatIp")?.to_string()),
        source_vswitch: given(p, "SourceVSwitchId"),
        source_cidr: given(p, "SourceCIDR"),
        name: given(p, "SnatEntryName"),
    };
    if dry_run(p) {
        c.check_create_snat_entry(&x.region, table, &spec)?;
        return Err(dry_run_passed());
    }
    let (id, _) = c.create_snat_entry(&x.region, table, &spec)?;
    x.out.insert("SnatEntryId".into(), json!(id));
    Ok(())
}

fn modify_snat_entry(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let p = x.p;
    let table = need(p, "SnatTableId")?;
    let id = need(p, "SnatEntryId")?;
    let spec = SnatSpec {
        snat_ip: given(p, "SnatIp"),
        name: given(p, "SnatEntryName"),
        ..SnatSpec::default()
    };
    if dry_run(p) {
        c.check_modify_snat_entry(&x.region, table, id, &spec)?;
        return Err(dry_run_passed());
    }
    c.modify_snat_entry(&x.region, table, id, &spec)?;
    Ok(())
}

fn delete_snat_entry(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let p = x.p;
    let table = need(p, "SnatTableId")?;
    let id = need(p, "SnatEntryId")?;
    c.delete_snat_entry(&x.region, table, id)?;
    Ok(())
}

// The HaVip actions: the model ([`cloud::havip`]) checks every rule; HaVips reach their end
// state (Available, InUse) as the call returns.

fn create_havip(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let p = x.p;
    let spec = HaVipSpec {
        vswitch: need(p, "VSwitchId")?.to_string(),
        ip_address: given(p, "IpAddress"),
        name: given(p, "Name"),
        description: given(p, "Description"),
    };
    let (id, _) = c.create_havip(x.now, &x.region, &spec)?;
    x.out
        .insert("IpAddress".into(), json!(c.havips[&id].ip.to_string()));
    x.out.insert("HaVipId".into(), json!(id));
    Ok(())
}

fn delete_havip(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let id = need(x.p, "HaVipId")?;
    c.delete_havip(&x.region, id)?;
    Ok(())
}

fn associate_havip(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let p = x.p;
    let id = need(p, "HaVipId")?;
    let instance = need(p, "InstanceId")?;
    c.associate_havip(&x.region, id, instance, get(p, "InstanceType"))?;
    Ok(())
}

fn unassociate_havip(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let p = x.p;
    let id = need(p, "HaVipId")?;
    let instance = need(p, "InstanceId")?;
    if let Some(t) = get(p, "InstanceType") {
        if t != "EcsInstance" && t != "NetworkInterface" {
            return Err(invalid(
                "InstanceType",
                t,
                "EcsInstance or NetworkInterface",
            ));
        }
    }
    c.unassociate_havip(&x.region, id, instance, truthy(p, "Force"))?;
    Ok(())
}

/// DescribeHaVips' `Filter.N.Key` / `Filter.N.Value.M` (or `Filter.N.Value`): key and values.
fn havip_filters(p: &Params) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for n in 1..=5 {
        let Some(key) = get(p, &format!("Filter.{n}.Key")) else {
            continue;
        };
        let mut values: Vec<String> = (1..=5)
            .filter_map(|m| get(p, &format!("Filter.{n}.Value.{m}")).map(str::to_string))
            .collect();
        values.extend(given(p, &format!("Filter.{n}.Value")));
        out.push((key.to_string(), values));
    }
    out
}

fn describe_havips(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let p = x.p;
    let page = num(p, "PageNumber", 1, u32::MAX)?;
    let size = num(p, "PageSize", 10, 50)?;
    let filters = havip_filters(p);
    for (k, _) in &filters {
        if !["HaVipId", "HaVipAddress", "VpcId", "VSwitchId", "Status"].contains(&k.as_str()) {
            return Err(invalid(
                "Filter.N.Key",
                k,
                "HaVipId, HaVipAddress, VpcId, VSwitchId or Status",
            ));
        }
    }
    let c: &Cloud = c;
    let all: Vec<&cloud::HaVip> = c
        .havips
        .values()
        .filter(|h| h.region == x.region)
        .filter(|h| {
            filters.iter().all(|(k, vs)| {
                let have = match k.as_str() {
                    "HaVipId" => h.id.clone(),
                    "HaVipAddress" => h.ip.to_string(),
                    "VpcId" => c.settings.vpc_id.clone(),
                    "VSwitchId" => h.vswitch.clone(),
                    _ => h.status.clone(),
                };
                vs.is_empty() || vs.contains(&have)
            })
        })
        .collect();
    let items = paged(&mut x.out, &all, page, size, |h| {
        let eips: Vec<String> = c
            .eips
            .values()
            .filter(|e| {
                e.binding
                    .as_ref()
                    .is_some_and(|b| b.bind_type == cloud::BindType::HaVip && b.instance_id == h.id)
            })
            .map(|e| e.address.to_string())
            .collect();
        json!({
            "HaVipId": h.id,
            "IpAddress": h.ip.to_string(),
            "VSwitchId": h.vswitch,
            "VpcId": c.settings.vpc_id,
            "RegionId": h.region,
            "Status": h.status,
            "MasterInstanceId": h.associated_instances.first().cloned().unwrap_or_default(),
            "AssociatedInstanceType": c.havip_instance_type(h),
            "AssociatedInstances": {"associatedInstance": h.associated_instances},
            "AssociatedEipAddresses": {"associatedEipAddresse": eips},
            "Name": h.name,
            "Description": h.description,
            "CreateTime": ts(h.created),
            "ChargeType": "PostPaid",
            "ResourceGroupId": "rg-lab",
            "Tags": {"Tag": []},
        })
    });
    x.out.insert("HaVips".into(), json!({"HaVip": items}));
    Ok(())
}

/// The DNAT fields of CreateForwardEntry / ModifyForwardEntry, as given.
fn forward_spec(p: &Params) -> ForwardSpec {
    ForwardSpec {
        external_ip: given(p, "ExternalIp"),
        external_port: given(p, "ExternalPort"),
        internal_ip: given(p, "InternalIp"),
        internal_port: given(p, "InternalPort"),
        ip_protocol: given(p, "IpProtocol"),
        name: given(p, "ForwardEntryName"),
    }
}

fn create_forward_entry(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let p = x.p;
    let table = need(p, "ForwardTableId")?;
    for name in [
        "ExternalIp",
        "ExternalPort",
        "InternalIp",
        "InternalPort",
        "IpProtocol",
    ] {
        need(p, name)?;
    }
    if dry_run(p) {
        c.check_create_forward_entry(&x.region, table, &forward_spec(p))?;
        return Err(dry_run_passed());
    }
    let (id, _) = c.create_forward_entry(&x.region, table, &forward_spec(p))?;
    x.out.insert("ForwardEntryId".into(), json!(id));
    Ok(())
}

fn modify_forward_entry(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let p = x.p;
    let table = need(p, "ForwardTableId")?;
    let id = need(p, "ForwardEntryId")?;
    if dry_run(p) {
        c.check_modify_forward_entry(&x.region, table, id, &forward_spec(p))?;
        return Err(dry_run_passed());
    }
    c.modify_forward_entry(&x.region, table, id, &forward_spec(p))?;
    Ok(())
}

fn delete_forward_entry(c: &mut Cloud, x: &mut Call<'_>) -> Result<(), ApiError> {
    let p = x.p;
    let table = need(p, "ForwardTableId")?;
    let id = need(p, "ForwardEntryId")?;
    c.delete_forward_entry(&x.region, table, id)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_is_served_once_at_its_products_version() {
        let mut names: Vec<&str> = ACTIONS.iter().map(|a| a.name).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "an action listed twice");
        for a in ACTIONS {
            let want = if a.name.contains("NetworkInterface")
                || a.name.contains("PrivateIpAddresses")
                || a.name.ends_with("Instance")
            {
                ECS
            } else {
                VPC
            };
            assert_eq!(a.version, want, "{}", a.name);
            assert!(std::ptr::eq(Action::find(a.name).unwrap(), a));
        }
        assert!(Action::find("DescribeNoSuchThing").is_none());
    }

    #[test]
    fn another_version_is_refused_with_the_clouds_code_and_none_is_the_actions_own() {
        let a = Action::find("DescribeEipAddresses").unwrap();
        assert!(a.check_version(Some(VPC)).is_ok());
        assert!(a.check_version(None).is_ok());
        let e = a.check_version(Some(ECS)).unwrap_err();
        assert_eq!((e.code.as_str(), e.status), ("InvalidVersion", 400));
        assert!(
            e.message
                .starts_with("Specified parameter Version is not valid."),
            "{}",
            e.message
        );
        assert!(e.message.contains("2016-04-28"), "{}", e.message);
    }

    /// The fixture's cloud with NAT gateway ngw-t on vsw-a holding eip-web (198.51.100.10).
    fn with_gateway() -> Cloud {
        let mut c = crate::cloud::fixture::web(0, 0);
        c.nat_gateways.insert(
            "ngw-t".into(),
            cloud::NatGateway {
                id: "ngw-t".into(),
                region: "cn-shanghai".into(),
                vswitch: "vsw-a".into(),
                eip_takes_private_ip: false,
            },
        );
        c.associate(
            0,
            &Associate {
                allocation_id: "eip-web".into(),
                instance_id: "ngw-t".into(),
                bind_type: cloud::BindType::Nat,
                mode: Mode::Nat,
                private_ip: None,
            },
        )
        .unwrap();
        assert_eq!(c.eips["eip-web"].status, EipStatus::InUse);
        c
    }

    fn call(c: &mut Cloud, action: &str, params: &[(&str, &str)]) -> Result<Value, ApiError> {
        let p: Params = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Action::find(action).unwrap().run(c, 0, &p)
    }

    #[test]
    fn entry_actions_answer_the_new_ids_and_describe_shows_them() {
        let mut c = with_gateway();
        let r = call(
            &mut c,
            "CreateSnatEntry",
            &[
                ("SnatTableId", "stb-ngw-t"),
                ("SnatIp", "198.51.100.10"),
                ("SourceCIDR", "10.0.1.0/24"),
                ("SnatEntryName", "out"),
            ],
        )
        .unwrap();
        let sid = r["SnatEntryId"].as_str().unwrap().to_string();
        assert!(
            sid.starts_with("snat-") && r["RequestId"].is_string(),
            "{r}"
        );
        let d = call(
            &mut c,
            "DescribeSnatTableEntries",
            &[("SnatTableId", "stb-ngw-t")],
        )
        .unwrap();
        let e = &d["SnatTableEntries"]["SnatTableEntry"][0];
        assert_eq!(
            (
                &e["SnatEntryId"],
                &e["SnatEntryName"],
                &e["SourceCIDR"],
                &e["SnatIp"],
                &e["Status"]
            ),
            (
                &json!(sid),
                &json!("out"),
                &json!("10.0.1.0/24"),
                &json!("198.51.100.10"),
                &json!("Available")
            )
        );
        let r = call(
            &mut c,
            "CreateForwardEntry",
            &[
                ("ForwardTableId", "ftb-ngw-t"),
                ("ExternalIp", "198.51.100.10"),
                ("ExternalPort", "8080"),
                ("InternalIp", "10.0.1.77"),
                ("InternalPort", "80"),
                ("IpProtocol", "tcp"),
            ],
        )
        .unwrap();
        let fid = r["ForwardEntryId"].as_str().unwrap().to_string();
        call(
            &mut c,
            "ModifyForwardEntry",
            &[
                ("ForwardTableId", "ftb-ngw-t"),
                ("ForwardEntryId", &fid),
                ("InternalPort", "81"),
            ],
        )
        .unwrap();
        let d = call(
            &mut c,
            "DescribeForwardTableEntries",
            &[("ForwardEntryId", &fid)],
        )
        .unwrap();
        let e = &d["ForwardTableEntries"]["ForwardTableEntry"][0];
        assert_eq!(
            (
                &e["ExternalPort"],
                &e["InternalPort"],
                &e["IpProtocol"],
                &e["ForwardTableId"]
            ),
            (
                &json!("8080"),
                &json!("81"),
                &json!("TCP"),
                &json!("ftb-ngw-t")
            )
        );
        // Modify and Delete answer the RequestId only.
        let r = call(
            &mut c,
            "DeleteSnatEntry",
            &[("SnatTableId", "stb-ngw-t"), ("SnatEntryId", &sid)],
        )
        .unwrap();
        assert_eq!(
            r.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["RequestId"]
        );
        call(
            &mut c,
            "DeleteForwardEntry",
            &[("ForwardTableId", "ftb-ngw-t"), ("ForwardEntryId", &fid)],
        )
        .unwrap();
        assert!(c.snat_entries.is_empty() && c.forward_entries.is_empty());
    }

    #[test]
    fn entry_actions_name_a_missing_parameter() {
        let mut c = with_gateway();
        for (action, params, code) in [
            (
                "CreateSnatEntry",
                vec![("SnatIp", "198.51.100.10")],
                "MissingSnatTableId",
            ),
            (
                "CreateSnatEntry",
                vec![("SnatTableId", "stb-ngw-t")],
                "MissingSnatIp",
            ),
            (
                "ModifySnatEntry",
                vec![("SnatTableId", "stb-ngw-t")],
                "MissingSnatEntryId",
            ),
            (
                "DeleteSnatEntry",
                vec![("SnatEntryId", "snat-x")],
                "MissingSnatTableId",
            ),
            (
                "CreateForwardEntry",
                vec![
                    ("ForwardTableId", "ftb-ngw-t"),
                    ("ExternalIp", "198.51.100.10"),
                    ("ExternalPort", "80"),
                    ("InternalIp", "10.0.1.77"),
                    ("InternalPort", "80"),
                ],
                "MissingIpProtocol",
            ),
            (
                "ModifyForwardEntry",
                vec![("ForwardTableId", "ftb-ngw-t")],
                "MissingForwardEntryId",
            ),
            (
                "DeleteForwardEntry",
                vec![("ForwardEntryId", "fwd-x")],
                "MissingForwardTableId",
            ),
        ] {
            let e = call(&mut c, action, &params).unwrap_err();
            assert_eq!(
                (e.code.as_str(), e.status),
                (code, 400),
                "{action}: {}",
                e.message
            );
        }
        let e = call(
            &mut c,
            "DeleteForwardEntry",
            &[("ForwardTableId", "ftb-ngw-t"), ("ForwardEntryId", "fwd-x")],
        )
        .unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.status),
            ("InvalidForwardEntryId.NotFound", 404)
        );
    }
}
