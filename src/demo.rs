//! `eiplab demo`: a narrated tour of the three ways an EIP reaches a guest, on the sim
//! backend, with no arguments and no privileges.
//!
//! It builds the lab of `examples/demo.toml` in this process, allocates EIPs through the API
//! (signed calls, [`Api::call_local`]), associates one in NAT, BINDED and MULTI_BINDED modes,
//! sends traffic, and prints for each step what the internet saw, what the guest saw, and what
//! was dropped and why, each as a check against SPEC §2. [`run`] answers whether every check
//! held; the command exits non-zero when one did not.

use crate::api::Api;
use crate::cloud::EipStatus;
use crate::control::{ControlPlane, Options};
use crate::engine::DropReason;
use crate::lab::{cloud, config};
use crate::sim::host::{Listen, Proto, TcpSend, UdpExchange};
use crate::sim::SimLab;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The demo's lab file.
pub const LAB: &str = include_str!("../examples/demo.toml");

const ECHO: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const INTERNET: &str = "internet";
/// How long one exchange may take (they take about a millisecond).
const WAIT: Duration = Duration::from_secs(3);
/// How long an expected silence is listened to.
const QUIET: Duration = Duration::from_millis(400);

/// The checks so far, and where the narration goes.
struct Tour<'a> {
    out: &'a mut dyn Write,
    passed: usize,
    failed: Vec<String>,
}

impl Tour<'_> {
    fn say(&mut self, s: &str) {
        let _ = writeln!(self.out, "{s}");
    }

    /// One expectation: `ok` and what it means; `seen` is the evidence.
    fn check(&mut self, ok: bool, what: &str, seen: &str) {
        let mark = if ok { "ok  " } else { "FAIL" };
        let _ = writeln!(self.out, "   {mark} {what}");
        if !seen.is_empty() {
            let _ = writeln!(self.out, "        {seen}");
        }
        if ok {
            self.passed += 1;
        } else {
            self.failed.push(what.to_string());
        }
    }
}

struct Demo {
    lab: SimLab,
    api: Arc<Api>,
}

impl Demo {
    fn call(&self, action: &str, params: &[(&str, &str)]) -> Result<serde_json::Value, String> {
        self.api
            .call_local(action, params)
            .map_err(|e| format!("{action}: {}: {}", e.code, e.message))
    }

    /// Waits until the EIP `id` has `status` (an association takes `transition_ms`).
    fn wait_status(&self, id: &str, status: EipStatus) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = self.lab.cp.with_cloud(|c| c.eips.get(id).map(|e| e.status));
            if now == Some(status) {
                // The guests follow the published change.
                return self.lab.settle(Duration::from_secs(5));
            }
            if Instant::now() > deadline {
                return Err(format!("{id} stayed {now:?}, not {status:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn drops(&self, r: DropReason) -> u64 {
        self.lab.dp.snapshot().global.drops[r as usize]
    }

    fn addrs(&self, host: &str) -> Vec<String> {
        self.lab
            .world
            .with_host(host, |h| {
                h.addrs()
                    .into_iter()
                    .map(|(d, c)| format!("{d} {c}"))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn holds(&self, host: &str, a: Ipv4Addr) -> bool {
        self.lab
            .world
            .with_host(host, |h| h.addrs().iter().any(|(_, c)| c.address() == a))
            .unwrap_or(false)
    }

    /// What the echo service says about `host` (sending from `from`).
    fn echo(&self, host: &str, from: Option<Ipv4Addr>) -> Result<String, String> {
        let body = self
            .lab
            .world
            .http_get(host, from, SocketAddrV4::new(ECHO, 80), "/", WAIT)?;
        Ok(body.trim().to_string())
    }

    /// The internet sends `payload` to `dst` over `proto` while `host` listens on its port;
    /// what the host heard (who from, to which address), or why nothing came.
    fn inbound(
        &self,
        host: &str,
        proto: Proto,
        dst: SocketAddrV4,
        payload: &[u8],
        listen_for: Duration,
    ) -> Result<crate::sim::Heard, String> {
        let world = &self.lab.world;
        std::thread::scope(|s| {
            let listener = s.spawn(|| world.run(host, Listen::new(proto, dst.port()), listen_for));
            // The listener binds on its first step.
            std::thread::sleep(Duration::from_millis(20));
            let _sent = match proto {
                Proto::Tcp => world.run(INTERNET, TcpSend::new(dst, payload, None), listen_for),
                Proto::Udp => world.run(
                    INTERNET,
                    UdpExchange::new(dst, payload, None).no_answer(),
                    listen_for,
                ),
            };
            listener
                .join()
                .unwrap_or_else(|_| Err("the listener panicked".into()))
        })
    }
}

fn lab() -> Result<Demo, String> {
    let file = config::parse(LAB).map_err(|e| format!("the demo's lab: {e}"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let c = cloud::build(&file, now)?;
    let cp: Arc<ControlPlane> = ControlPlane::new(
        c,
        &Options {
            state_dir: None,
            table: cloud::table_extras(&file),
        },
    )?;
    let keys: Vec<(String, String)> = file
        .api
        .access_keys
        .iter()
        .map(|k| (k.id.clone(), k.secret.clone()))
        .collect();
    let api = Api::new(cp.clone(), &keys);
    let lab = SimLab::build(&file, cp)?;
    Ok(Demo { lab, api })
}

/// Runs the tour, narrating into `out`; `Ok(true)` when every check held.
pub fn run(out: &mut dyn Write) -> Result<bool, String> {
    let started = Instant::now();
    let d = lab()?;
    let mut t = Tour {
        out,
        passed: 0,
        failed: Vec::new(),
    };
    t.say("eiplab demo: how an Elastic IP reaches a guest, on in-process hosts (no root, nothing");
    t.say("leaves this process). The lab: VPC 10.0.1.0/24 with i-nat 10.0.1.10, i-peer 10.0.1.11,");
    t.say("i-cut 10.0.1.20 and i-multi 10.0.1.40; two detached ENIs, eni-bind 10.0.1.30 and");
    t.say("eni-multi 10.0.1.50; on the internet, an echo service at 203.0.113.1 that answers with");
    t.say("the address it sees. (examples/demo.toml is the same lab for `eiplab up`.)");
    t.say("");

    t.say("1. Allocate three EIPs through the API (AllocateEipAddress)");
    let mut eips = Vec::new();
    for _ in 0..3 {
        let v = d.call("AllocateEipAddress", &[("Bandwidth", "5")])?;
        let id = v["AllocationId"].as_str().unwrap_or_default().to_string();
        let ip: Ipv4Addr = v["EipAddress"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or("AllocateEipAddress answered no address")?;
        t.say(&format!("   {id} {ip}"));
        eips.push((id, ip));
    }
    let (nat_id, nat) = eips[0].clone();
    let (bind_id, bind) = eips[1].clone();
    let (multi_id, multi) = eips[2].clone();
    t.say("");

    // NAT.
    t.say(&format!(
        "2. NAT mode: AssociateEipAddress AllocationId={nat_id} InstanceId=i-nat"
    ));
    d.call(
        "AssociateEipAddress",
        &[("AllocationId", &nat_id), ("InstanceId", "i-nat")],
    )?;
    d.wait_status(&nat_id, EipStatus::InUse)?;
    let seen = d.echo("i-nat", None);
    t.check(
        seen.as_deref() == Ok(&nat.to_string()),
        "the internet sees the guest as its EIP (D2: source rewritten)",
        &format!("i-nat: curl http://203.0.113.1/ -> {seen:?}"),
    );
    let have = d.addrs("i-nat");
    t.check(
        !d.holds("i-nat", nat),
        "the guest does not see the EIP: it holds only its private IP",
        &format!("i-nat addresses: {}", have.join(", ")),
    );
    let heard = d.inbound(
        "i-nat",
        Proto::Tcp,
        SocketAddrV4::new(nat, 8080),
        b"hello",
        WAIT,
    );
    t.check(
        heard
            .as_ref()
            .is_ok_and(|h| *h.to.ip() == Ipv4Addr::new(10, 0, 1, 10) && *h.from.ip() == ECHO),
        "the internet reaches the guest at the EIP, rewritten to the private IP (D1)",
        &match &heard {
            Ok(h) => format!(
                "internet -> {nat}:8080; i-nat got it from {} at {}",
                h.from, h.to
            ),
            Err(e) => e.clone(),
        },
    );
    let before = d.drops(DropReason::AlgSip);
    let heard = d.inbound(
        "i-nat",
        Proto::Udp,
        SocketAddrV4::new(nat, 5060),
        b"OPTIONS sip:demo SIP/2.0\r\n\r\n",
        QUIET,
    );
    let after = d.drops(DropReason::AlgSip);
    t.check(
        heard.is_err() && after > before,
        "SIP (UDP 5060) to the EIP is dropped: NAT mode has no ALG for it (D3, policy drop)",
        &format!(
            "i-nat heard {}; alg_sip drops {before} -> {after}",
            if heard.is_ok() { "it" } else { "nothing" }
        ),
    );
    t.say("");

    // BINDED.
    t.say(&format!(
        "3. Cut-through: AssociateEipAddress AllocationId={bind_id} InstanceId=eni-bind \
         InstanceType=NetworkInterface Mode=BINDED,"
    ));
    t.say("   then AttachNetworkInterface NetworkInterfaceId=eni-bind InstanceId=i-cut");
    d.call(
        "AssociateEipAddress",
        &[
            ("AllocationId", &bind_id),
            ("InstanceId", "eni-bind"),
            ("InstanceType", "NetworkInterface"),
            ("Mode", "BINDED"),
        ],
    )?;
    d.wait_status(&bind_id, EipStatus::InUse)?;
    d.call(
        "AttachNetworkInterface",
        &[("NetworkInterfaceId", "eni-bind"), ("InstanceId", "i-cut")],
    )?;
    wait_attached(&d, "eni-bind")?;
    d.lab.settle(Duration::from_secs(5))?;
    let have = d.addrs("i-cut");
    t.check(
        have.iter().any(|a| a == &format!("eth1 {bind}/32")),
        "the guest holds the EIP itself, on eth1, instead of the private IP (cut-through)",
        &format!("i-cut addresses: {}", have.join(", ")),
    );
    let seen = d.echo("i-cut", Some(bind));
    t.check(
        seen.as_deref() == Ok(&bind.to_string()),
        "from the EIP, the internet sees the EIP, forwarded unchanged (D2)",
        &format!("i-cut: curl --interface {bind} http://203.0.113.1/ -> {seen:?}"),
    );
    let heard = d.inbound(
        "i-cut",
        Proto::Tcp,
        SocketAddrV4::new(bind, 8080),
        b"hello",
        WAIT,
    );
    t.check(
        heard.as_ref().is_ok_and(|h| *h.to.ip() == bind),
        "the internet reaches the guest with the EIP as destination, unchanged (D1)",
        &match &heard {
            Ok(h) => format!(
                "internet -> {bind}:8080; i-cut got it from {} at {}",
                h.from, h.to
            ),
            Err(e) => e.clone(),
        },
    );
    let heard = d.inbound(
        "i-cut",
        Proto::Udp,
        SocketAddrV4::new(bind, 5060),
        b"OPTIONS sip:demo SIP/2.0\r\n\r\n",
        WAIT,
    );
    t.check(
        heard.is_ok(),
        "SIP passes: with nothing translated, no ALG is needed (D3)",
        &match &heard {
            Ok(h) => format!("i-cut heard {} bytes at {}", h.data.len(), h.to),
            Err(e) => e.clone(),
        },
    );
    let before = d.drops(DropReason::CutThroughPrivate);
    let r = d
        .lab
        .world
        .ping_from("i-cut", Some(bind), Ipv4Addr::new(10, 0, 1, 11), QUIET);
    let after = d.drops(DropReason::CutThroughPrivate);
    t.check(
        r.is_err() && after > before,
        "a cut-through ENI has no private network: i-peer is not reached through it (D5)",
        &format!(
            "i-cut: ping -I {bind} 10.0.1.11 -> {}; cut_through_private drops {before} -> {after}",
            if r.is_ok() { "answered" } else { "no answer" }
        ),
    );
    let before = d.drops(DropReason::CutThroughBlackhole);
    let r = d.lab.world.http_get(
        "i-cut",
        Some(bind),
        SocketAddrV4::new(Ipv4Addr::new(100, 100, 100, 200), 80),
        "/latest/meta-data/instance-id",
        QUIET,
    );
    let after = d.drops(DropReason::CutThroughBlackhole);
    t.check(
        r.is_err() && after > before,
        "nor the cloud's services: 100.64.0.0/10 is blackholed through it (D4)",
        &format!(
            "i-cut: curl --interface {bind} http://100.100.100.200/… -> {}; cut_through_blackhole drops {before} -> {after}",
            if r.is_ok() { "answered" } else { "no answer" }
        ),
    );
    let r = d.lab.world.http_get(
        "i-cut",
        None,
        SocketAddrV4::new(Ipv4Addr::new(100, 100, 100, 200), 80),
        "/latest/meta-data/instance-id",
        WAIT,
    );
    t.check(
        r.as_deref().map(str::trim) == Ok("i-cut"),
        "eth0 keeps both: the metadata service answers from the private IP",
        &format!("i-cut: curl http://100.100.100.200/latest/meta-data/instance-id -> {r:?}"),
    );
    t.say("");

    // MULTI_BINDED.
    t.say(&format!(
        "4. Multi-EIP-to-ENI: AssociateEipAddress AllocationId={multi_id} InstanceId=eni-multi \
         InstanceType=NetworkInterface Mode=MULTI_BINDED,"
    ));
    t.say("   then AttachNetworkInterface NetworkInterfaceId=eni-multi InstanceId=i-multi");
    d.call(
        "AssociateEipAddress",
        &[
            ("AllocationId", &multi_id),
            ("InstanceId", "eni-multi"),
            ("InstanceType", "NetworkInterface"),
            ("Mode", "MULTI_BINDED"),
        ],
    )?;
    d.wait_status(&multi_id, EipStatus::InUse)?;
    d.call(
        "AttachNetworkInterface",
        &[
            ("NetworkInterfaceId", "eni-multi"),
            ("InstanceId", "i-multi"),
        ],
    )?;
    wait_attached(&d, "eni-multi")?;
    d.lab.settle(Duration::from_secs(5))?;
    let have = d.addrs("i-multi");
    let private = Ipv4Addr::new(10, 0, 1, 50);
    t.check(
        d.holds("i-multi", multi) && d.holds("i-multi", private),
        "the guest holds the EIP and keeps the private IP on eth1 (DHCP on)",
        &format!("i-multi addresses: {}", have.join(", ")),
    );
    let seen = d.echo("i-multi", Some(multi));
    t.check(
        seen.as_deref() == Ok(&multi.to_string()),
        "from the EIP, the internet sees the EIP (D2)",
        &format!("i-multi: curl --interface {multi} http://203.0.113.1/ -> {seen:?}"),
    );
    let before = d.drops(DropReason::SourceCheck);
    let r = d
        .lab
        .world
        .ping_from("i-multi", Some(private), Ipv4Addr::new(10, 0, 1, 11), QUIET);
    let after = d.drops(DropReason::SourceCheck);
    t.check(
        r.is_err() && after > before,
        "eth1's private IP has no route of its own yet: it leaves by eth0, whose ENI does not \
         own it, and the source check drops it (D6; seed 004's reason for policy routing)",
        &format!(
            "i-multi: ping -I {private} 10.0.1.11 -> {}; source_check drops {before} -> {after}",
            if r.is_ok() { "answered" } else { "no answer" }
        ),
    );
    // The seed's procedure: the private IP's own table (the one DHCP made for the EIP, 101).
    d.lab
        .world
        .with_host("i-multi", |h| h.rule(private, 101, true))?;
    let r = d
        .lab
        .world
        .ping_from("i-multi", Some(private), Ipv4Addr::new(10, 0, 1, 11), WAIT);
    t.check(
        r.is_ok(),
        "with `ip rule add from 10.0.1.50 lookup 101`, the private IP reaches the VPC through \
         its own ENI: MULTI_BINDED keeps the private network (D5: routed)",
        &format!(
            "i-multi: ping -I {private} 10.0.1.11 -> {}",
            if r.is_ok() { "answered" } else { "no answer" }
        ),
    );
    t.say("");

    // Unassociate.
    t.say(&format!(
        "5. UnassociateEipAddress AllocationId={nat_id} InstanceId=i-nat"
    ));
    d.call(
        "UnassociateEipAddress",
        &[("AllocationId", &nat_id), ("InstanceId", "i-nat")],
    )?;
    d.wait_status(&nat_id, EipStatus::Available)?;
    let before = d.drops(DropReason::EipUnassociated);
    let r = d.lab.world.ping_from(INTERNET, None, nat, QUIET);
    let after = d.drops(DropReason::EipUnassociated);
    t.check(
        r.is_err() && after > before,
        "an EIP with no association reaches nobody (D7)",
        &format!(
            "internet: ping {nat} -> {}; eip_unassociated drops {before} -> {after}",
            if r.is_ok() { "answered" } else { "no answer" }
        ),
    );
    let before = d.drops(DropReason::NoPublicIp);
    let seen = d
        .lab
        .world
        .http_get("i-nat", None, SocketAddrV4::new(ECHO, 80), "/", QUIET);
    let after = d.drops(DropReason::NoPublicIp);
    t.check(
        seen.is_err() && after > before,
        "and the guest, with no public IP left, no longer reaches the internet",
        &format!(
            "i-nat: curl http://203.0.113.1/ -> {}; no_public_ip drops {before} -> {after}",
            if seen.is_ok() {
                "answered"
            } else {
                "no answer"
            }
        ),
    );
    t.say("");

    let snap = d.lab.dp.snapshot();
    let mut reasons: Vec<String> = DropReason::ALL
        .iter()
        .filter(|r| snap.global.drops[**r as usize] > 0)
        .map(|r| format!("{} {}", r.name(), snap.global.drops[*r as usize]))
        .collect();
    if reasons.is_empty() {
        reasons.push("none".into());
    }
    t.say(&format!(
        "Drops by reason, as `eiplab status` and /metrics show them: {}",
        reasons.join(", ")
    ));
    let ok = t.failed.is_empty();
    let summary = if ok {
        format!(
            "{} checks, every one as SPEC §2 says ({:.1} s). Next: `eiplab up examples/demo.toml` \
             and try the same steps with `eiplab api` and `eiplab exec`.",
            t.passed,
            started.elapsed().as_secs_f64()
        )
    } else {
        format!(
            "{} of {} checks did not hold: {}",
            t.failed.len(),
            t.passed + t.failed.len(),
            t.failed.join("; ")
        )
    };
    t.say(&summary);
    Ok(ok)
}

fn wait_attached(d: &Demo, eni: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let attached = d
            .lab
            .cp
            .with_cloud(|c| c.enis.values().any(|e| e.id == eni && e.instance.is_some()));
        if attached {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{eni} was not attached in time"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
