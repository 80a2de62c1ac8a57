//! The HTTP endpoint: verifies each call's signature, runs the action on the cloud model under
//! one lock (so racing calls are serialised and the rules hold), writes the state before
//! answering, and publishes the engine table the new state implies.

use super::sign::{self, NonceCache, RequestParts};
use super::store::Store;
use crate::cloud::{self, Associate, Cloud, CloudError, EipStatus, Mode};
use crate::engine::table::Table;
use crate::engine::TableCell;
use crate::telemetry::{self, metrics, CounterSource, Snapshot};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{self, any, post};
use axum::Router;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// Everything the endpoint needs to start.
pub struct Options {
    pub listen: SocketAddr,
    pub access_keys: Vec<(String, String)>,
    pub state_dir: Option<std::path::PathBuf>,
    pub table: TableExtras,
}

struct Inner {
    cloud: Cloud,
    /// Lab clock minus the real clock, nanoseconds (moved by `/_eiplab/clock`).
    offset_ns: i64,
    nonces: NonceCache,
    store: Option<Store>,
}

/// The running control plane, shared by the HTTP handlers and the timer.
pub struct ControlPlane {
    inner: Mutex<Inner>,
    keys: HashMap<String, String>,
    pub cell: Arc<TableCell>,
    /// The running dataplane's counters, when one runs (`--backend netns`).
    live: std::sync::OnceLock<Arc<dyn Fn() -> Snapshot + Send + Sync>>,
    /// Settings of the engine table that come from the lab file, not the cloud's state.
    extras: TableExtras,
}

/// Engine-table settings the lab file gives (the ALG policy, source check, the gateway's
/// internet-side address); the cloud's state gives the rest.
#[derive(Clone, Debug, Default)]
pub struct TableExtras {
    pub alg: Option<crate::alg::AlgPolicy>,
    pub source_check: Option<bool>,
    pub internet_gateway: Option<std::net::Ipv4Addr>,
}

fn real_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Inner {
    fn lab_now(&self) -> u64 {
        (real_ns() as i64).saturating_add(self.offset_ns).max(0) as u64
    }

    fn save(&mut self) -> Result<(), ApiError> {
        let Some(store) = self.store.as_mut() else {
            return Ok(());
        };
        let cloud = serde_json::to_string(&self.cloud).map_err(|e| internal(&e.to_string()))?;
        store
            .put(&[
                ("cloud", cloud),
                ("clock_offset_ns", self.offset_ns.to_string()),
            ])
            .map_err(|e| internal(&e))
    }
}

fn internal(m: &str) -> ApiError {
    ApiError {
        code: "InternalError".into(),
        status: 500,
        message: format!("the lab failed: {m}"),
    }
}

impl ControlPlane {
    /// Restores the state from `--state` if it holds one, else starts from `initial`.
    pub fn new(initial: Cloud, opts: &Options) -> Result<Arc<ControlPlane>, String> {
        let mut store = match &opts.state_dir {
            Some(d) => Some(Store::open(d)?),
            None => None,
        };
        let mut cloud = initial;
        let mut offset_ns = 0;
        if let Some(s) = store.as_mut() {
            if let Some(saved) = s.get("cloud")? {
                cloud = serde_json::from_str(&saved)
                    .map_err(|e| format!("--state: the saved cloud cannot be read ({e}); move the directory away to start afresh"))?;
                tracing::info!(
                    eips = cloud.eips.len(),
                    "restored the control plane from --state"
                );
            }
            if let Some(o) = s.get("clock_offset_ns")? {
                offset_ns = o.parse().unwrap_or(0);
            }
        }
        let table =
            build_table(&cloud, &opts.table).map_err(|e| format!("the lab's table: {e}"))?;
        let cp = Arc::new(ControlPlane {
            inner: Mutex::new(Inner {
                cloud,
                offset_ns,
                nonces: NonceCache::new(),
                store,
            }),
            keys: opts.access_keys.iter().cloned().collect(),
            cell: Arc::new(TableCell::new(table)),
            live: std::sync::OnceLock::new(),
            extras: opts.table.clone(),
        });
        {
            let mut g = cp.inner.lock().unwrap();
            let now = g.lab_now();
            g.cloud.handle_timeout(now);
            g.save().map_err(|e| e.message)?;
            cp.publish(&g.cloud);
        }
        Ok(cp)
    }

    fn publish(&self, cloud: &Cloud) {
        match build_table(cloud, &self.extras) {
            Ok(t) => {
                let generation = self.cell.publish(t);
                tracing::debug!(generation, "engine table published");
            }
            Err(e) => tracing::error!("the cloud state makes no valid table (a bug): {e}"),
        }
    }

    /// Ends due transitions; returns whether anything changed.
    fn tick(&self) -> bool {
        let mut g = self.inner.lock().unwrap();
        let now = g.lab_now();
        if g.cloud.poll_timeout().is_some_and(|t| t <= now) {
            let changes = g.cloud.handle_timeout(now);
            if let Err(e) = g.save() {
                tracing::error!("saving state: {}", e.message);
            }
            self.publish(&g.cloud);
            return !changes.is_empty();
        }
        false
    }

    /// Runs one signed call.
    pub fn call(&self, parts: &RequestParts) -> Result<Value, ApiError> {
        let now_s = (real_ns() / 1_000_000_000) as i64;
        let mut g = self.inner.lock().unwrap();
        let keys = &self.keys;
        let call = sign::verify_at(parts, &|id| keys.get(id).cloned(), now_s, &mut g.nonces)
            .map_err(|e| ApiError {
                code: e.code().to_string(),
                status: e.http_status(),
                message: e.message(),
            })?;
        let now = g.lab_now();
        // Transitions due now end first; they count as a change to save and publish even when
        // the call itself is a query.
        let before = g.cloud.clone();
        g.cloud.handle_timeout(now);
        let settled = g.cloud.clone();
        let result = action(&mut g.cloud, now, &call.action, &call.params);
        if result.is_err() {
            g.cloud = settled;
        }
        if g.cloud != before {
            if let Err(e) = g.save() {
                g.cloud = before;
                return Err(e);
            }
            self.publish(&g.cloud);
        }
        result
    }

    /// The lab-only status document.
    pub fn status(&self) -> Value {
        let g = self.inner.lock().unwrap();
        let eips: Vec<Value> = g
            .cloud
            .eips
            .values()
            .map(|e| describe_eip(&g.cloud, e))
            .collect();
        json!({
            "LabTime": sign::iso8601((g.lab_now() / 1_000_000_000) as i64),
            "TableGeneration": self.cell.generation(),
            "Eips": eips,
            "Released": g.cloud.released.iter().map(|r| json!({
                "AllocationId": r.allocation_id, "IpAddress": r.address.to_string(),
                "ReleasedAt": sign::iso8601((r.released_at / 1_000_000_000) as i64),
            })).collect::<Vec<_>>(),
            "counters": match self.live.get() {
                Some(live) => telemetry::counters_json(&g.cloud, &live()),
                None => Value::Null,
            },
        })
    }

    /// Connects a running dataplane's counters to `status` and `/metrics`.
    pub fn set_live_counters(&self, f: Arc<dyn Fn() -> Snapshot + Send + Sync>) {
        let _ = self.live.set(f);
    }

    /// Reads the cloud's state (held under the control plane's lock: keep `f` short).
    pub fn with_cloud<R>(&self, f: impl FnOnce(&Cloud) -> R) -> R {
        let g = self.inner.lock().unwrap();
        f(&g.cloud)
    }

    /// The programmed engine table, canonical.
    pub fn dataplane(&self) -> Value {
        let g = self.inner.lock().unwrap();
        let (enis, eips) = g.cloud.dataplane();
        let (generation, table) = self.cell.load();
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
    }

    /// Moves the lab clock forward (the 7-day recovery window).
    pub fn advance_clock(&self, seconds: u64) -> Result<Value, ApiError> {
        let mut g = self.inner.lock().unwrap();
        g.offset_ns = g
            .offset_ns
            .saturating_add((seconds as i64).saturating_mul(1_000_000_000));
        let now = g.lab_now();
        g.cloud.handle_timeout(now);
        g.save()?;
        self.publish(&g.cloud);
        Ok(json!({"LabTime": sign::iso8601((now / 1_000_000_000) as i64)}))
    }
}

/// `/metrics` reads the cloud and the live counters (zeros before a dataplane runs).
impl CounterSource for ControlPlane {
    fn read_counters(&self, f: &mut dyn FnMut(&Cloud, &Snapshot)) {
        let snap = self.live.get().map(|f| f()).unwrap_or_default();
        let g = self.inner.lock().unwrap();
        f(&g.cloud, &snap)
    }
}

fn build_table(cloud: &Cloud, x: &TableExtras) -> Result<Table, String> {
    let mut b = cloud.table();
    if let Some(a) = x.alg {
        b = b.alg_policy(a);
    }
    if let Some(s) = x.source_check {
        b = b.source_check(s);
    }
    if let Some(g) = x.internet_gateway {
        b = b.internet_gateway(g);
    }
    b.build().map_err(|e| e.to_string())
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
    crate::engine::table::AssociationMode::from(m).api_name()
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
    State(cp): State<Arc<ControlPlane>>,
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
    let result = cp.call(&parts);
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => {
            tracing::info!(code = %e.code, "call refused: {}", e.message);
            error_response(e, &host)
        }
    }
}

async fn status(State(cp): State<Arc<ControlPlane>>) -> Response {
    axum::Json(cp.status()).into_response()
}

/// OpenMetrics text of the dataplane's counters (EIPs listed even before a dataplane runs).
async fn metrics_text(State(cp): State<Arc<ControlPlane>>) -> Response {
    match metrics::render(&metrics::registry(cp)) {
        Ok(text) => ([("content-type", metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => error_response(internal("encoding /metrics"), ""),
    }
}

async fn dataplane(State(cp): State<Arc<ControlPlane>>) -> Response {
    axum::Json(cp.dataplane()).into_response()
}

async fn clock(
    State(cp): State<Arc<ControlPlane>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let secs = q.get("advance_seconds").and_then(|s| s.parse::<u64>().ok());
    match secs {
        Some(s) => match cp.advance_clock(s) {
            Ok(v) => axum::Json(v).into_response(),
            Err(e) => error_response(e, ""),
        },
        None => error_response(missing("AdvanceSeconds"), ""),
    }
}

/// Serves the API until `shutdown` resolves; ends transitions on time meanwhile.
pub async fn serve(
    cp: Arc<ControlPlane>,
    listen: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let listener = bind(listen).await?;
    serve_on(cp, listener, shutdown).await
}

/// Binds the API's address (an error says how to pick another).
pub async fn bind(listen: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("[api] listen = {listen}: cannot listen ({e}); pick another address or port (--api-listen)"))
}

/// Serves the API (and `/metrics`) on a bound listener until `shutdown` resolves.
pub async fn serve_on(
    cp: Arc<ControlPlane>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let app = Router::new()
        .route("/_eiplab/status", routing::get(status))
        .route("/_eiplab/dataplane", routing::get(dataplane))
        .route("/_eiplab/clock", post(clock))
        .route("/metrics", routing::get(metrics_text))
        .fallback(any(rpc))
        .with_state(cp.clone());
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!("eiplab: api listening on http://{addr}");
    let ticker = cp.clone();
    let timer = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            ticker.tick();
        }
    });
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| e.to_string());
    timer.abort();
    r
}
