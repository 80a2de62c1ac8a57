//! The HTTP endpoint: verifies each call's signature, then runs the action on the cloud model
//! through the control plane ([`ControlPlane::transact`]: one lock, so racing calls are
//! serialised and the rules hold; the state written before answering; the engine table the new
//! state implies published). Also the lab-only documents and `/metrics`.

use super::sign::{self, NonceCache, RequestParts};
use crate::cloud::{self, Associate, Cloud, CloudError, EipStatus, Mode};
use crate::control::{ControlPlane, StoreError};
use crate::telemetry::{self, metrics};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{self, any, post};
use axum::Router;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// A refused call as the cloud answers it.
#[derive(Debug)]
pub struct ApiError {
    pub code: String,
    pub status: u16,
    pub message: String,
}

impl From<CloudError> for ApiError {
    fn from(e: CloudError) -> Self {
        ApiError {
            code: e.code.to_string(),
            status: e.status,
            message: e.message,
        }
    }
}

fn missing(name: &str) -> ApiError {
    ApiError {
        code: format!("Missing{name}"),
        status: 400,
        message: format!("{name} is mandatory for this action."),
    }
}

fn invalid(name: &str, value: &str, want: &str) -> ApiError {
    ApiError {
        code: format!("InvalidParameter.{name}"),
        status: 400,
        message: format!("{name}={value:?} is not valid: {want}"),
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        internal(&e.to_string())
    }
}

fn internal(m: &str) -> ApiError {
    ApiError {
        code: "InternalError".into(),
        status: 500,
        message: format!("the lab failed: {m}"),
    }
}

/// The endpoint's state: the control plane it runs actions on, and what belongs to HTTP alone
/// (the access keys, the nonces seen, the `/metrics` registry).
pub struct Api {
    cp: Arc<ControlPlane>,
    keys: HashMap<String, String>,
    nonces: Mutex<NonceCache>,
    metrics: Registry,
}

impl Api {
    /// The API of `cp`, accepting calls signed with `access_keys` (id, secret).
    pub fn new(cp: Arc<ControlPlane>, access_keys: &[(String, String)]) -> Arc<Api> {
        Arc::new(Api {
            metrics: metrics::registry(cp.clone()),
            cp,
            keys: access_keys.iter().cloned().collect(),
            nonces: Mutex::new(NonceCache::new()),
        })
    }

    /// Runs one signed call: the signature, timestamp and nonce are checked first, then the
    /// action runs on the model through [`ControlPlane::transact`] (committed before this
    /// returns, rolled back if refused).
    pub fn call(&self, parts: &RequestParts) -> Result<Value, ApiError> {
        let now_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let call = {
            let mut nonces = self.nonces.lock().unwrap();
            let keys = &self.keys;
            sign::verify_at(parts, &|id| keys.get(id).cloned(), now_s, &mut nonces).map_err(
                |e| ApiError {
                    code: e.code().to_string(),
                    status: e.http_status(),
                    message: e.message(),
                },
            )?
        };
        self.cp
            .transact(|c, now| action(c, now, &call.action, &call.params))
    }

    /// The lab-only status document.
    pub fn status(&self) -> Value {
        let counters = self.cp.counters();
        let now = self.cp.lab_now();
        let generation = self.cp.cell().generation();
        self.cp.with_cloud(|c| {
            json!({
                "LabTime": ts(now),
                "TableGeneration": generation,
                "Eips": c.eips.values().map(|e| describe_eip(c, e)).collect::<Vec<_>>(),
                "Released": c.released.iter().map(|r| json!({
                    "AllocationId": r.allocation_id, "IpAddress": r.address.to_string(),
                    "ReleasedAt": ts(r.released_at),
                })).collect::<Vec<_>>(),
                "counters": match &counters {
                    Some(snap) => telemetry::counters_json(c, snap),
                    None => Value::Null,
                },
            })
        })
    }

    /// The programmed engine table, canonical.
    pub fn dataplane(&self) -> Value {
        self.cp.with_cloud(|c| {
            let (enis, eips) = c.dataplane();
            let (generation, table) = self.cp.cell().load();
            json!({
                "Generation": generation,
                "EipCount": table.eip_count(),
                "Enis": enis.iter().map(|e| json!({
                    "Index": e.id,
                    "Instance": e.instance.map(|i| json!({"Index": i.id, "Running": i.running})),
                    "Gateway": e.gateway.map(|g| g.to_string()),
                    "PrivateIps": e.private_ips.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "Eips": eips.iter().map(|e| json!({
                    "Slot": e.slot,
                    "Address": e.address.to_string(),
                    "BandwidthMbps": e.bandwidth_mbps,
                    "Association": e.association.map(|a| json!({
                        "Mode": a.mode.api_name(),
                        "Eni": a.eni,
                        "PrivateIp": a.private_ip.map(|p| p.to_string()),
                        "NatPrivateIpInTable": a.private_ip.and_then(|p| table.nat_eip_of(p)).map(|x| x.to_string()),
                    })),
                })).collect::<Vec<_>>(),
            })
        })
    }

    /// Moves the lab clock forward (the 7-day recovery window).
    pub fn advance_clock(&self, seconds: u64) -> Result<Value, ApiError> {
        let now = self.cp.advance_clock(seconds)?;
        Ok(json!({"LabTime": ts(now)}))
    }
}

fn request_id() -> String {
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
    let mac = format!(
        "00:16:3e:{:02x}:{:02x}:{:02x}",
        (e.index >> 8) as u8,
        e.index as u8,
        0x10
    );
    let mut v = json!({
        "NetworkInterfaceId": e.id,
        "Status": if e.instance.is_some() { "InUse" } else { "Available" },
        "Type": if e.primary { "Primary" } else { "Secondary" },
        "InstanceId": e.instance.clone().unwrap_or_default(),
        "VSwitchId": e.vswitch,
        "VpcId": "vpc-lab",
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

fn ts(ns: u64) -> String {
    sign::iso8601((ns / 1_000_000_000) as i64)
}

fn describe_eip(c: &Cloud, e: &cloud::Eip) -> Value {
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
        "VpcId": b.and_then(|b| c.bound_eni(b)).map_or(String::new(), |_| "vpc-lab".to_string()),
    })
}

fn cloud_mode_name(m: Mode) -> &'static str {
    m.api_name()
}

/// Runs one action on the model.
fn action(
    c: &mut Cloud,
    now: u64,
    action: &str,
    p: &BTreeMap<String, String>,
) -> Result<Value, ApiError> {
    let region = get(p, "RegionId").unwrap_or(&c.settings.region).to_string();
    let mut out = serde_json::Map::new();
    match action {
        "AllocateEipAddress" => {
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
                                message: format!(
                                    "{id} is not a released EIP that can be recovered"
                                ),
                            })
                        })?;
                    ip = Some(r.address);
                }
            }
            let (id, _) = c.allocate(now, &region, bandwidth, ip, rand::random())?;
            if ip.is_none() {
                if let Some(t) = get(p, "InternetChargeType") {
                    if t != "PayByTraffic" && t != "PayByBandwidth" {
                        c.release(now, &id)?;
                        c.released.retain(|r| r.allocation_id != id);
                        return Err(invalid(
                            "InternetChargeType",
                            t,
                            "PayByTraffic or PayByBandwidth",
                        ));
                    }
                    c.eips.get_mut(&id).expect("allocated").internet_charge_type = t.to_string();
                }
            }
            let e = &c.eips[&id];
            out.insert("AllocationId".into(), json!(id));
            out.insert("EipAddress".into(), json!(e.address.to_string()));
            out.insert("ResourceGroupId".into(), json!("rg-lab"));
        }
        "ReleaseEipAddress" => {
            c.release(now, need(p, "AllocationId")?)?;
        }
        "AssociateEipAddress" => {
            let req = Associate {
                allocation_id: need(p, "AllocationId")?.to_string(),
                instance_id: need(p, "InstanceId")?.to_string(),
                bind_type: cloud::parse_bind_type(get(p, "InstanceType").unwrap_or("EcsInstance"))?,
                mode: cloud::parse_mode(get(p, "Mode").unwrap_or("NAT"))?,
                private_ip: addr(p, "PrivateIpAddress")?,
            };
            c.associate(now, &req)?;
        }
        "AssociateEipAddressBatch" => {
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
        }
        "UnassociateEipAddress" => {
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
        }
        "ModifyEipAddressAttribute" => {
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
        }
        "DescribeEipAddresses" => {
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
                .filter(|e| {
                    iid.is_none_or(|i| e.binding.as_ref().is_some_and(|b| b.instance_id == i))
                })
                .collect();
            let items = paged(&mut out, &all, page, size, |e| describe_eip(c, e));
            out.insert("EipAddresses".into(), json!({"EipAddress": items}));
        }
        "DescribeEipGatewayInfo" => {
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
                if b.instance_id == eni
                    && b.mode == Mode::MultiBinded
                    && e.status == EipStatus::InUse
                {
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
        }
        "AttachNetworkInterface" => {
            c.attach_eni(need(p, "NetworkInterfaceId")?, need(p, "InstanceId")?)?;
        }
        "DetachNetworkInterface" => {
            c.detach_eni(need(p, "NetworkInterfaceId")?, need(p, "InstanceId")?)?;
        }
        "AssignPrivateIpAddresses" => {
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
        }
        "UnassignPrivateIpAddresses" => {
            let eni = need(p, "NetworkInterfaceId")?;
            let ips = addr_list(p, "PrivateIpAddress")?;
            if ips.is_empty() {
                return Err(missing("PrivateIpAddress"));
            }
            c.unassign_private_ips(eni, &ips)?;
        }
        "StartInstance" | "StopInstance" => {
            c.set_running(now, need(p, "InstanceId")?, action == "StartInstance")?;
        }
        "DescribeNetworkInterfaces" => {
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
            let items = paged(&mut out, &all, page, size, |e| describe_eni(c, e));
            out.insert("NextToken".into(), json!(""));
            out.insert(
                "NetworkInterfaceSets".into(),
                json!({"NetworkInterfaceSet": items}),
            );
        }
        other => {
            return Err(ApiError {
                code: "InvalidAction.NotFound".into(),
                status: 404,
                message: format!(
                    "the action {other:?} is not served by this lab (see README: API)"
                ),
            })
        }
    }
    out.insert("RequestId".into(), json!(request_id()));
    Ok(Value::Object(out))
}

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

fn error_response(e: ApiError, host: &str) -> Response {
    let body = json!({
        "RequestId": request_id(),
        "HostId": host,
        "Code": e.code,
        "Message": e.message,
        "Recommend": "",
    });
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, axum::Json(body)).into_response()
}

async fn rpc(
    State(api): State<Arc<Api>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let hv: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let host = hv
        .iter()
        .find(|(k, _)| k == "host")
        .map_or("", |(_, v)| v.as_str())
        .to_string();
    let parts = RequestParts {
        method: method.as_str(),
        path: uri.path(),
        raw_query: uri.query().unwrap_or(""),
        headers: &hv,
        body: &body,
    };
    let result = api.call(&parts);
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => {
            tracing::info!(code = %e.code, "call refused: {}", e.message);
            error_response(e, &host)
        }
    }
}

async fn status(State(api): State<Arc<Api>>) -> Response {
    axum::Json(api.status()).into_response()
}

/// OpenMetrics text of the dataplane's counters (EIPs listed even before a dataplane runs).
async fn metrics_text(State(api): State<Arc<Api>>) -> Response {
    match metrics::render(&api.metrics) {
        Ok(text) => ([("content-type", metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => error_response(internal("encoding /metrics"), ""),
    }
}

async fn dataplane(State(api): State<Arc<Api>>) -> Response {
    axum::Json(api.dataplane()).into_response()
}

async fn clock(State(api): State<Arc<Api>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let secs = q.get("advance_seconds").and_then(|s| s.parse::<u64>().ok());
    match secs {
        Some(s) => match api.advance_clock(s) {
            Ok(v) => axum::Json(v).into_response(),
            Err(e) => error_response(e, ""),
        },
        None => error_response(missing("AdvanceSeconds"), ""),
    }
}

/// Serves the API until `shutdown` resolves. Transitions end on time only while
/// [`ControlPlane::run_timers`] runs beside it (else at the next call).
pub async fn serve(
    api: Arc<Api>,
    listen: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let listener = bind(listen).await?;
    serve_on(api, listener, shutdown).await
}

/// Binds the API's address (an error says how to pick another).
pub async fn bind(listen: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("[api] listen = {listen}: cannot listen ({e}); pick another address or port (--api-listen)"))
}

/// Serves the API (and `/metrics`) on a bound listener until `shutdown` resolves.
pub async fn serve_on(
    api: Arc<Api>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let app = Router::new()
        .route("/_eiplab/status", routing::get(status))
        .route("/_eiplab/dataplane", routing::get(dataplane))
        .route("/_eiplab/clock", post(clock))
        .route("/metrics", routing::get(metrics_text))
        .fallback(any(rpc))
        .with_state(api);
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!("eiplab: api listening on http://{addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| e.to_string())
}
