//! The lab's built-in services (SPEC §5): the internet-side echo service, which answers each
//! HTTP request with the caller's source address (what ifconfig.me does), and the metadata
//! service at 100.100.100.200, which answers an instance from what the cloud model holds,
//! recognising the caller by its source address.

use crate::api::server::ControlPlane;
use crate::cloud::{BindType, Cloud, EipStatus, Mode};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// Binds a TCP listener at `addr` inside namespace `ns` (the socket stays in that namespace).
pub fn listen_in(ns: &str, addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    let l = crate::lab::netns::enter(ns, move || std::net::TcpListener::bind(addr))?
        .map_err(|e| format!("cannot listen on {addr} in namespace {ns}: {e}"))?;
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(l)
}

/// Serves the echo service on `listener` until the runtime stops.
pub async fn echo(listener: std::net::TcpListener) -> Result<(), String> {
    let l = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
    let app = Router::new().fallback(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
        format!("{}\n", peer.ip())
    });
    axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>())
        .await
        .map_err(|e| e.to_string())
}

/// Serves the metadata service on `listener` until the runtime stops.
pub async fn metadata(
    listener: std::net::TcpListener,
    cp: Arc<ControlPlane>,
) -> Result<(), String> {
    let l = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
    let app = Router::new()
        .route("/", get(|| async { "latest\n" }))
        .route("/latest", get(|| async { "meta-data\n" }))
        .route("/latest/", get(|| async { "meta-data\n" }))
        .route("/latest/meta-data", get(meta_root))
        .route("/latest/meta-data/", get(meta_root))
        .route("/latest/meta-data/{*path}", get(meta_path))
        .with_state(cp);
    axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>())
        .await
        .map_err(|e| e.to_string())
}

async fn meta_root(
    State(cp): State<Arc<ControlPlane>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    answer(&cp, peer, "")
}

async fn meta_path(
    State(cp): State<Arc<ControlPlane>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(path): Path<String>,
) -> Response {
    answer(&cp, peer, &path)
}

fn answer(cp: &ControlPlane, peer: SocketAddr, path: &str) -> Response {
    let IpAddr::V4(src) = peer.ip() else {
        return (StatusCode::NOT_FOUND, "IPv4 only\n").into_response();
    };
    match cp.with_cloud(|c| lookup(c, src, path.trim_end_matches('/'))) {
        Some(body) => body.into_response(),
        None => (StatusCode::NOT_FOUND, "Not Found\n").into_response(),
    }
}

/// The MAC the lab gives an ENI: Alibaba Cloud's OUI 00:16:3e and the ENI's dataplane index.
pub fn eni_mac(index: u16) -> String {
    format!("00:16:3e:00:{:02x}:{:02x}", index >> 8, index & 0xff)
}

/// The answer to `path` (no leading or trailing slash) for the instance that owns `src`.
pub fn lookup(c: &Cloud, src: Ipv4Addr, path: &str) -> Option<String> {
    let eni = c
        .enis
        .values()
        .find(|e| e.private_ips.contains(&src))
        .or_else(|| {
            // A MULTI_BINDED EIP configured in the guest may be the source.
            c.eips.values().find(|e| e.address == src).and_then(|e| {
                e.binding
                    .as_ref()
                    .filter(|b| b.mode == Mode::MultiBinded)
                    .and_then(|b| c.bound_eni(b))
            })
        })?;
    let instance = c.instances.get(eni.instance.as_ref()?)?;
    let primary = c
        .enis
        .values()
        .find(|e| e.instance.as_deref() == Some(&instance.id) && e.primary)?;
    let vsw = c.vswitches.get(&primary.vswitch);
    let private_ipv4 = primary.private_ips.first().copied();
    // The EIP mapped to the primary private IP (NAT mode, on the instance or its primary ENI).
    let eipv4 = c
        .eips
        .values()
        .filter(|e| matches!(e.status, EipStatus::InUse | EipStatus::Unassociating))
        .find(|e| {
            e.binding.as_ref().is_some_and(|b| {
                b.mode == Mode::Nat
                    && match b.bind_type {
                        BindType::EcsInstance => b.instance_id == instance.id,
                        BindType::NetworkInterface => {
                            b.instance_id == primary.id
                                && b.private_ip.is_none_or(|p| Some(p) == private_ipv4)
                        }
                        _ => false,
                    }
            })
        })
        .map(|e| e.address)
        .or(instance.public_ip);
    let mut attached: Vec<_> = c
        .enis
        .values()
        .filter(|e| e.instance.as_deref() == Some(&instance.id))
        .collect();
    attached.sort_by_key(|e| (!e.primary, e.index));
    let line = |s: String| Some(format!("{s}\n"));
    match path {
        "" => line(
            [
                "eipv4",
                "hostname",
                "instance-id",
                "mac",
                "network/",
                "private-ipv4",
                "region-id",
                "vswitch-cidr-block",
                "vswitch-id",
                "zone-id",
            ]
            .join("\n"),
        ),
        "instance-id" | "hostname" => line(instance.id.clone()),
        "private-ipv4" => line(private_ipv4?.to_string()),
        "eipv4" => line(eipv4?.to_string()),
        "region-id" => line(instance.region.clone()),
        "zone-id" => line(vsw?.zone.clone()),
        "vswitch-id" => line(primary.vswitch.clone()),
        "vswitch-cidr-block" => line(format!("{}/{}", vsw?.network, vsw?.prefix_len)),
        "mac" => line(eni_mac(primary.index)),
        "network" => line("interfaces/".into()),
        "network/interfaces" => line("macs/".into()),
        "network/interfaces/macs" => line(
            attached
                .iter()
                .map(|e| format!("{}/", eni_mac(e.index)))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        p => {
            let rest = p.strip_prefix("network/interfaces/macs/")?;
            let (mac, field) = rest.split_once('/').unwrap_or((rest, ""));
            let e = attached.iter().find(|e| eni_mac(e.index) == mac)?;
            let v = c.vswitches.get(&e.vswitch)?;
            let mask = if v.prefix_len == 0 {
                0
            } else {
                u32::MAX << (32 - v.prefix_len)
            };
            match field {
                "" => line(
                    [
                        "gateway",
                        "netmask",
                        "network-interface-id",
                        "primary-ip-address",
                        "private-ipv4s",
                        "vswitch-cidr-block",
                        "vswitch-id",
                    ]
                    .join("\n"),
                ),
                "network-interface-id" => line(e.id.clone()),
                "primary-ip-address" => line(e.private_ips.first()?.to_string()),
                "private-ipv4s" => line(format!(
                    "[{}]",
                    e.private_ips
                        .iter()
                        .map(|a| format!("\"{a}\""))
                        .collect::<Vec<_>>()
                        .join(",")
                )),
                "netmask" => line(Ipv4Addr::from(mask).to_string()),
                "gateway" => line(v.gateway.to_string()),
                "vswitch-id" => line(e.vswitch.clone()),
                "vswitch-cidr-block" => line(format!("{}/{}", v.network, v.prefix_len)),
                _ => None,
            }
        }
    }
}
