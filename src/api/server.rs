//! The HTTP endpoint: verifies each call's signature, then runs the action on the cloud model
//! through the control plane ([`ControlPlane::transact`]: one lock, so racing calls are
//! serialised and the rules hold; the state written before answering; the engine table the new
//! state implies published). Also the lab-only documents and `/metrics`.

use super::actions::{describe_eip, request_id, ts, Action};
use super::sign::{self, NonceCache, RequestParts};
use crate::cloud::CloudError;
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
use std::collections::HashMap;
use std::net::SocketAddr;
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

pub(super) fn missing(name: &str) -> ApiError {
    ApiError {
        code: format!("Missing{name}"),
        status: 400,
        message: format!("{name} is mandatory for this action."),
    }
}

pub(super) fn invalid(name: &str, value: &str, want: &str) -> ApiError {
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
    /// Runs `eiplab exec` commands in a sim lab's hosts (set by the sim backend only).
    exec: std::sync::OnceLock<ExecFn>,
}

/// Runs one command (`argv`) in host `host` of a sim lab; answers `{code, stdout, stderr}`.
pub type ExecFn = Arc<dyn Fn(&str, &[String]) -> Value + Send + Sync>;

impl Api {
    /// The API of `cp`, accepting calls signed with `access_keys` (id, secret).
    /// The nonces a previous run with the same `--state` saw are refused too.
    pub fn new(cp: Arc<ControlPlane>, access_keys: &[(String, String)]) -> Arc<Api> {
        let now_s = unix_now();
        let mut nonces = NonceCache::new();
        for (key, nonce, until) in cp.saved_nonces(now_s) {
            let _ = nonces.check_and_insert_until(&key, &nonce, now_s, until);
        }
        Arc::new(Api {
            metrics: metrics::registry(cp.clone()),
            cp,
            keys: access_keys.iter().cloned().collect(),
            nonces: Mutex::new(nonces),
            exec: std::sync::OnceLock::new(),
        })
    }

    /// Serves `POST /_eiplab/exec` with `f` (once; later calls are ignored).
    pub fn set_exec(&self, f: ExecFn) {
        let _ = self.exec.set(f);
    }

    /// Runs one signed call: the signature, timestamp and nonce are checked first, then the
    /// action runs on the model through [`ControlPlane::transact`] (committed before this
    /// returns; a refused call has changed nothing).
    pub fn call(&self, parts: &RequestParts) -> Result<Value, ApiError> {
        let now_s = unix_now();
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
        // The nonce is kept as durably as a change (before anything is answered).
        self.cp.remember_nonce(
            &call.access_key_id,
            &call.nonce,
            call.timestamp
                .max(now_s)
                .saturating_add(sign::NONCE_TTL_SECS),
            now_s,
        )?;
        let action = Action::find(&call.action).ok_or_else(|| ApiError {
            code: "InvalidAction.NotFound".into(),
            status: 404,
            message: format!(
                "the action {:?} is not served by this lab (see README: API)",
                call.action
            ),
        })?;
        action.check_version(call.version.as_deref())?;
        self.cp.transact(|c, now| action.run(c, now, &call.params))
    }

    /// Signs `action` with `params` (ACS3, the lab's first access key by id) and runs it as a
    /// call that arrived over HTTP would run: the same checks, the same transaction. For the
    /// demo and for tests that drive a lab in-process.
    pub fn call_local(&self, action: &str, params: &[(&str, &str)]) -> Result<Value, ApiError> {
        let mut keys: Vec<(&String, &String)> = self.keys.iter().collect();
        keys.sort();
        let Some((id, secret)) = keys.first() else {
            return Err(internal("the lab has no access key to sign with"));
        };
        let version = Action::find(action).map_or(super::actions::VPC, |a| a.version);
        let map: std::collections::BTreeMap<String, String> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let nonce = format!("{:032x}", rand::random::<u128>());
        let req = sign::sign_acs3(
            "POST",
            "localhost",
            action,
            version,
            &map,
            id,
            secret,
            &nonce,
            unix_now(),
        );
        let (path, query) = req
            .path_and_query
            .split_once('?')
            .unwrap_or((req.path_and_query.as_str(), ""));
        self.call(&RequestParts {
            method: "POST",
            path,
            raw_query: query,
            headers: &req.headers,
            body: &req.body,
        })
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
                "HaVips": c.havips.values().map(|h| json!({
                    "HaVipId": h.id,
                    "IpAddress": h.ip.to_string(),
                    "Status": h.status,
                    "MasterInstanceId": h.associated_instances.first().cloned().unwrap_or_default(),
                    "AssociatedInstances": h.associated_instances,
                    "EipAddresses": c.eips.values()
                        .filter(|e| e.binding.as_ref().is_some_and(|b| b.bind_type == crate::cloud::BindType::HaVip && b.instance_id == h.id))
                        .map(|e| e.address.to_string()).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
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

    /// The lab's explicit HaVip failover: `to` (associated with the HaVip) holds it from now
    /// on, as if its guest had announced the address (SPEC D12).
    pub fn fail_over_havip(&self, havip_id: &str, to: &str) -> Result<Value, ApiError> {
        self.cp.transact(|c, _| -> Result<(), ApiError> {
            c.fail_over_havip(havip_id, to)?;
            Ok(())
        })?;
        Ok(self.cp.with_cloud(|c| {
            json!({"HaVipId": havip_id, "MasterInstanceId": c.havips.get(havip_id)
                .and_then(|h| h.associated_instances.first().cloned()).unwrap_or_default()})
        }))
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
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
    // The control plane takes a lock and may write to SQLite: off the async workers, so a
    // slow commit never stalls other connections.
    let (method, path, query) = (
        method.as_str().to_string(),
        uri.path().to_string(),
        uri.query().unwrap_or("").to_string(),
    );
    let result = tokio::task::spawn_blocking(move || {
        let parts = RequestParts {
            method: &method,
            path: &path,
            raw_query: &query,
            headers: &hv,
            body: &body,
        };
        api.call(&parts)
    })
    .await
    .unwrap_or_else(|e| Err(internal(&format!("the call's task failed: {e}"))));
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

async fn havip_failover(
    State(api): State<Arc<Api>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (Some(havip), Some(to)) = (q.get("HaVipId"), q.get("InstanceId")) else {
        let which = if q.contains_key("HaVipId") {
            "InstanceId"
        } else {
            "HaVipId"
        };
        return error_response(missing(which), "");
    };
    let (havip, to) = (havip.clone(), to.clone());
    let r = tokio::task::spawn_blocking(move || api.fail_over_havip(&havip, &to))
        .await
        .unwrap_or_else(|e| Err(internal(&format!("the call's task failed: {e}"))));
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error_response(e, ""),
    }
}

/// `POST /_eiplab/exec` with `{"host": "i-web", "argv": ["ping", "203.0.113.1"]}`: a
/// command in a sim lab's host (see `sim::exec`). 404 on a lab whose hosts are namespaces.
async fn exec(State(api): State<Arc<Api>>, body: Bytes) -> Response {
    let Some(f) = api.exec.get().cloned() else {
        let e = ApiError {
            code: "NotASimLab".into(),
            status: 404,
            message: "this lab's hosts are network namespaces (or there are none: --backend \
                      none): run commands in them with `ip netns exec`, as `eiplab exec` does"
                .into(),
        };
        return error_response(e, "");
    };
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error_response(internal(&format!("exec: the body is not JSON: {e}")), ""),
    };
    let (Some(host), Some(argv)) = (req["host"].as_str(), req["argv"].as_array()) else {
        return error_response(missing("host and argv"), "");
    };
    let host = host.to_string();
    let argv: Vec<String> = argv
        .iter()
        .map(|a| a.as_str().unwrap_or_default().to_string())
        .collect();
    match tokio::task::spawn_blocking(move || f(&host, &argv)).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error_response(internal(&format!("exec: {e}")), ""),
    }
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
        .route("/_eiplab/havip/failover", post(havip_failover))
        .route("/_eiplab/exec", post(exec))
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
