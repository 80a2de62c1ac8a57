//! The control plane as a process: restart after SIGKILL restores the state and the table;
//! 32 racing clients leave the association rules intact. No root needed (backend none).

use eiplab::api::sign;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const LAB: &str = r#"
[api]
access_keys = [{ id = "LTAItest", secret = "test-secret" }]
transition_ms = 30

[[vswitch]]
id = "vsw-a"
zone = "cn-shanghai-b"
cidr = "10.0.1.0/24"

[[instance]]
id = "i-a"
vswitch = "vsw-a"
enis = [
  { id = "eni-a0", private_ips = ["10.0.1.10"] },
  { id = "eni-a1", private_ips = ["10.0.1.20", "10.0.1.21", "10.0.1.22"] },
]

[[instance]]
id = "i-b"
vswitch = "vsw-a"
enis = [{ id = "eni-b0", private_ips = ["10.0.1.11"] }]

[[eni]]
id = "eni-spare"
vswitch = "vsw-a"
private_ips = ["10.0.1.30"]

[[eni]]
id = "eni-multi"
vswitch = "vsw-a"
private_ips = ["10.0.1.40"]

[[eip]]
allocation_id = "eip-fixed"
address = "198.51.100.10"

[[association]]
allocation_id = "eip-fixed"
instance_id = "i-b"
"#;

struct Server {
    child: Child,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "eiplab-cp-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn start(dir: &Path, port: u16) -> Server {
    let lab = dir.join("lab.toml");
    std::fs::write(&lab, LAB).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_eiplab"))
        .args(["up", lab.to_str().unwrap(), "--backend", "none", "--state"])
        .arg(dir.join("state"))
        .args(["--api-listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "eiplab up did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server {
        child,

        dir: dir.to_path_buf(),
    }
}

fn call(port: u16, action: &str, params: &[(&str, &str)]) -> (u16, Value) {
    let map: BTreeMap<String, String> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let nonce = format!("{:032x}", rand::random::<u128>());
    let host = format!("127.0.0.1:{port}");
    let req = sign::sign_acs3(
        "POST",
        &host,
        action,
        "2016-04-28",
        &map,
        "LTAItest",
        "test-secret",
        &nonce,
        now,
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent.post(format!("http://{host}{}", req.path_and_query));
    for (k, v) in &req.headers {
        if k != "host" {
            r = r.header(k.as_str(), v.as_str());
        }
    }
    let mut resp = r.send(&req.body[..]).unwrap();
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&body).unwrap())
}

fn lab_get(port: u16, path: &str) -> Value {
    let mut r = ureq::get(format!("http://127.0.0.1:{port}{path}"))
        .call()
        .unwrap();
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
}

/// Every EIP, all pages.
fn describe_all(port: u16) -> Vec<Value> {
    let mut out = Vec::new();
    for page in 1.. {
        let (s, v) = call(
            port,
            "DescribeEipAddresses",
            &[("PageSize", "2"), ("PageNumber", &page.to_string())],
        );
        assert_eq!(s, 200, "{v}");
        let items = v["EipAddresses"]["EipAddress"].as_array().unwrap().clone();
        if items.is_empty() {
            break;
        }
        out.extend(items);
    }
    out
}

fn wait_settled(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = describe_all(port);
        if all
            .iter()
            .all(|e| e["Status"] == "InUse" || e["Status"] == "Available")
        {
            return;
        }
        assert!(Instant::now() < deadline, "EIPs never settled: {all:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn allocate(port: u16) -> String {
    let (s, v) = call(port, "AllocateEipAddress", &[("Bandwidth", "3")]);
    assert_eq!(s, 200, "{v}");
    v["AllocationId"].as_str().unwrap().to_string()
}

fn ok(port: u16, action: &str, params: &[(&str, &str)]) {
    let (s, v) = call(port, action, params);
    assert_eq!(s, 200, "{action} {params:?}: {v}");
}

fn without_generation(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("Generation");
    v
}

#[test]
fn restart_after_sigkill_restores_state_and_table() {
    let dir = temp_dir("restart");
    let port = free_port();
    let mut s = start(&dir, port);
    let nat = allocate(port);
    let binded = allocate(port);
    let multi = allocate(port);
    let gone = allocate(port);
    ok(
        port,
        "AssociateEipAddress",
        &[
            ("AllocationId", &nat),
            ("InstanceId", "eni-a1"),
            ("InstanceType", "NetworkInterface"),
            ("PrivateIpAddress", "10.0.1.21"),
        ],
    );
    ok(
        port,
        "AssociateEipAddress",
        &[
            ("AllocationId", &binded),
            ("InstanceId", "eni-spare"),
            ("InstanceType", "NetworkInterface"),
            ("Mode", "BINDED"),
        ],
    );
    ok(
        port,
        "AssociateEipAddress",
        &[
            ("AllocationId", &multi),
            ("InstanceId", "eni-multi"),
            ("InstanceType", "NetworkInterface"),
            ("Mode", "MULTI_BINDED"),
        ],
    );
    wait_settled(port);
    ok(
        port,
        "ModifyEipAddressAttribute",
        &[("AllocationId", &nat), ("Bandwidth", "42")],
    );
    ok(port, "ReleaseEipAddress", &[("AllocationId", &gone)]);
    wait_settled(port);
    let before = describe_all(port);
    let table_before = without_generation(lab_get(port, "/_eiplab/dataplane"));
    assert_eq!(before.len(), 4);
    assert!(table_before["Eips"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["BandwidthMbps"] == 42 && e["Association"]["NatPrivateIpInTable"].is_string()));

    // SIGKILL: nothing gets a chance to flush.
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    drop(s);
    let s = start(&dir, port);
    assert_eq!(describe_all(port), before);
    assert_eq!(
        without_generation(lab_get(port, "/_eiplab/dataplane")),
        table_before
    );
    // The released EIP is still recoverable after the restart.
    let gone_ip = lab_get(port, "/_eiplab/status")["Released"][0]["IpAddress"]
        .as_str()
        .unwrap()
        .to_string();
    ok(port, "AllocateEipAddress", &[("IpAddress", &gone_ip)]);
    drop(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn thirty_two_racing_clients_keep_the_rules() {
    let dir = temp_dir("race");
    let port = free_port();
    let s = start(&dir, port);
    let eips: Vec<String> = (0..8).map(|_| allocate(port)).collect();
    // Targets: three private IPs of eni-a1, the instance i-a, the BINDED spare.
    let targets: Vec<Vec<(&str, &str)>> = vec![
        vec![
            ("InstanceId", "eni-a1"),
            ("InstanceType", "NetworkInterface"),
            ("PrivateIpAddress", "10.0.1.20"),
        ],
        vec![
            ("InstanceId", "eni-a1"),
            ("InstanceType", "NetworkInterface"),
            ("PrivateIpAddress", "10.0.1.21"),
        ],
        vec![
            ("InstanceId", "eni-a1"),
            ("InstanceType", "NetworkInterface"),
            ("PrivateIpAddress", "10.0.1.22"),
        ],
        vec![("InstanceId", "i-a"), ("InstanceType", "EcsInstance")],
        vec![
            ("InstanceId", "eni-spare"),
            ("InstanceType", "NetworkInterface"),
            ("Mode", "BINDED"),
        ],
    ];
    let expected: HashSet<&str> = [
        "IncorrectEipStatus",
        "TaskConflict",
        "InvalidEip.EipQuotaExceeded",
        "InvalidAssociation.Duplicated",
        "OperationFailed.EipBindModeConflict",
    ]
    .into();
    let codes = std::sync::Mutex::new(HashMap::<String, u32>::new());
    let wins = AtomicU64::new(0);
    std::thread::scope(|sc| {
        for t in 0..32usize {
            let (eips, targets, codes, wins) = (&eips, &targets, &codes, &wins);
            sc.spawn(move || {
                for round in 0..6usize {
                    let eip = &eips[(t * 7 + round * 3) % eips.len()];
                    let target = &targets[(t + round) % targets.len()];
                    let mut p: Vec<(&str, &str)> = vec![("AllocationId", eip)];
                    p.extend(target.iter().copied());
                    let (s, v) = call(port, "AssociateEipAddress", &p);
                    if s == 200 {
                        wins.fetch_add(1, Ordering::Relaxed);
                    } else {
                        *codes
                            .lock()
                            .unwrap()
                            .entry(v["Code"].as_str().unwrap().to_string())
                            .or_default() += 1;
                    }
                    if round % 2 == 1 {
                        let (s, v) = call(port, "UnassociateEipAddress", &[("AllocationId", eip)]);
                        if s != 200 {
                            *codes
                                .lock()
                                .unwrap()
                                .entry(v["Code"].as_str().unwrap().to_string())
                                .or_default() += 1;
                        }
                    }
                }
            });
        }
    });
    wait_settled(port);
    let codes = codes.into_inner().unwrap();
    for c in codes.keys() {
        assert!(
            expected.contains(c.as_str()),
            "unexpected error code {c}: {codes:?}"
        );
    }
    assert!(wins.load(Ordering::Relaxed) > 0, "nobody won: {codes:?}");
    // Invariants: every private IP carries at most one EIP; BINDED spare and i-a at most one.
    let all = describe_all(port);
    let mut seen = HashSet::new();
    for e in all.iter().filter(|e| e["Status"] == "InUse") {
        // EcsInstance bindings report the primary private IP they sit on.
        let key = e["PrivateIpAddress"].as_str().unwrap().to_string();
        assert!(seen.insert(key.clone()), "{key} carries two EIPs: {all:#?}");
    }
    // The programmed table agrees with Describe.
    let table = lab_get(port, "/_eiplab/dataplane");
    let mapped = table["Eips"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e["Association"].is_null())
        .count();
    assert_eq!(
        mapped,
        all.iter().filter(|e| e["Status"] == "InUse").count()
    );
    // And the engine table itself (not only the model) maps each NAT private IP to its EIP.
    for e in table["Eips"].as_array().unwrap() {
        let a = &e["Association"];
        if a["Mode"] == "NAT" {
            assert_eq!(a["NatPrivateIpInTable"], e["Address"], "stale table: {e}");
        }
    }
    let dir2 = s.dir.clone();
    drop(s);
    std::fs::remove_dir_all(&dir2).unwrap();
}
