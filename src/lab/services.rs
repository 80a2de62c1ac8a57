//! The lab's built-in services (SPEC §5): the internet-side echo service, which answers each
//! HTTP request with the caller's source address (what ifconfig.me does), and the metadata
//! service at 100.100.100.200, which answers an instance from what the cloud model holds,
//! recognising the caller by its source address.

use crate::cloud::{BindType, Cloud, EipStatus, Mode};
use crate::control::ControlPlane;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// Binds a TCP listener at `addr` inside namespace `ns` (the socket stays in that namespace).
pub fn listen_in(ns: &str, addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    let l = crate::sys::netns::enter(ns, move || std::net::TcpListener::bind(addr))?
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
    vpc_id: String,
) -> Result<(), String> {
    let state = Meta { cp, vpc_id };
    let l = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
    let app = Router::new()
        .route("/", get(|| async { "latest\n" }))
        .route("/latest", get(|| async { "meta-data\n" }))
        .route("/latest/", get(|| async { "meta-data\n" }))
        .route("/latest/meta-data", get(meta_root))
        .route("/latest/meta-data/", get(meta_root))
        .route("/latest/meta-data/{*path}", get(meta_path))
        .with_state(Arc::new(state));
    axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>())
        .await
        .map_err(|e| e.to_string())
}

/// What the metadata handlers share: the cloud, and the VPC id the lab file names.
struct Meta {
    cp: Arc<ControlPlane>,
    vpc_id: String,
}

async fn meta_root(
    State(m): State<Arc<Meta>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    answer(&m, peer, "")
}

async fn meta_path(
    State(m): State<Arc<Meta>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(path): Path<String>,
) -> Response {
    answer(&m, peer, &path)
}

fn answer(m: &Meta, peer: SocketAddr, path: &str) -> Response {
    let IpAddr::V4(src) = peer.ip() else {
        return (StatusCode::NOT_FOUND, "IPv4 only\n").into_response();
    };
    match m
        .cp
        .with_cloud(|c| lookup(c, &m.vpc_id, src, path.trim_end_matches('/')))
    {
        Some(body) => body.into_response(),
        None => (StatusCode::NOT_FOUND, "Not Found\n").into_response(),
    }
}

/// The answer to `path` (no leading or trailing slash) for the instance that owns `src`.
pub fn lookup(c: &Cloud, vpc_id: &str, src: Ipv4Addr, path: &str) -> Option<String> {
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
                "vpc-id",
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
        "vpc-id" => line(vpc_id.to_string()),
        "zone-id" => line(vsw?.zone.clone()),
        "vswitch-id" => line(primary.vswitch.clone()),
        "vswitch-cidr-block" => line(format!("{}/{}", vsw?.network, vsw?.prefix_len)),
        "mac" => line(primary.mac()),
        "network" => line("interfaces/".into()),
        "network/interfaces" => line("macs/".into()),
        "network/interfaces/macs" => line(
            attached
                .iter()
                .map(|e| format!("{}/", e.mac()))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        p => {
            let rest = p.strip_prefix("network/interfaces/macs/")?;
            let (mac, field) = rest.split_once('/').unwrap_or((rest, ""));
            let e = attached.iter().find(|e| e.mac() == mac)?;
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
                        "vpc-id",
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
                "vpc-id" => line(vpc_id.to_string()),
                "vswitch-id" => line(e.vswitch.clone()),
                "vswitch-cidr-block" => line(format!("{}/{}", v.network, v.prefix_len)),
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> Cloud {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name);
        let file = crate::lab::config::load(&path).expect("example loads");
        crate::lab::cloud::build(&file, 1_000_000_000).expect("example builds")
    }

    fn ask(c: &Cloud, src: &str, path: &str) -> Option<String> {
        lookup(c, "vpc-x", src.parse().unwrap(), path).map(|s| s.trim_end().to_string())
    }

    #[test]
    fn an_instance_is_known_by_any_of_its_addresses() {
        let c = example("multi-eip-nat.toml");
        for src in ["10.0.1.10", "10.0.1.21"] {
            assert_eq!(ask(&c, src, "instance-id").as_deref(), Some("i-app"));
            // The primary private IP and its EIP, whichever ENI asked.
            assert_eq!(ask(&c, src, "private-ipv4").as_deref(), Some("10.0.1.10"));
            assert_eq!(ask(&c, src, "eipv4").as_deref(), Some("198.51.100.20"));
        }
        assert_eq!(ask(&c, "10.0.1.10", "vpc-id").as_deref(), Some("vpc-x"));
        assert_eq!(
            ask(&c, "10.0.1.10", "zone-id").as_deref(),
            Some("cn-shanghai-b")
        );
        assert_eq!(ask(&c, "10.0.1.99", "instance-id"), None, "unknown caller");
        assert_eq!(ask(&c, "10.0.1.10", "no-such-key"), None);
    }

    #[test]
    fn interfaces_are_listed_by_mac_primary_first() {
        let c = example("multi-eip-nat.toml");
        let macs = ask(&c, "10.0.1.10", "network/interfaces/macs").unwrap();
        let macs: Vec<&str> = macs.lines().collect();
        assert_eq!(macs.len(), 2, "{macs:?}");
        let second = macs[1].trim_end_matches('/');
        let base = format!("network/interfaces/macs/{second}");
        assert_eq!(
            ask(&c, "10.0.1.10", &format!("{base}/network-interface-id")).as_deref(),
            Some("eni-app1")
        );
        assert_eq!(
            ask(&c, "10.0.1.10", &format!("{base}/private-ipv4s")).as_deref(),
            Some(r#"["10.0.1.20","10.0.1.21","10.0.1.22"]"#)
        );
        assert_eq!(
            ask(&c, "10.0.1.10", &format!("{base}/netmask")).as_deref(),
            Some("255.255.255.0")
        );
        assert_eq!(
            ask(&c, "10.0.1.10", &format!("{base}/gateway")).as_deref(),
            Some("10.0.1.253")
        );
        let first = macs[0].trim_end_matches('/');
        assert_eq!(ask(&c, "10.0.1.10", "mac").as_deref(), Some(first));
    }

    #[test]
    fn no_eip_means_no_eipv4() {
        let c = example("cut-through.toml");
        assert_eq!(
            ask(&c, "10.0.1.11", "instance-id").as_deref(),
            Some("i-peer")
        );
        assert_eq!(ask(&c, "10.0.1.11", "eipv4"), None);
        // i-ct's NAT EIP is on its primary; the cut-through EIP is not eipv4.
        assert_eq!(
            ask(&c, "10.0.1.10", "eipv4").as_deref(),
            Some("198.51.100.10")
        );
    }
}
