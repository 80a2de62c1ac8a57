//! The system module (`eiplab::sys`) against the real kernel, checked with the real `ip`.
//!
//! Needs root. Without it every test prints a loud SKIP and returns, unless
//! `EIPLAB_NO_SKIP=1`, which turns the skip into a failure (for CI, where root is expected).
//!
//! Network safety: every test makes its own namespaces, named `syst<pid>-<test>-…`, and a guard
//! deletes them when the test ends, passed or failed. Nothing is added to the root namespace
//! (it is only read, to check that it was left alone). Addresses are in 10.0.0.0/8,
//! 198.51.100.0/24 and 203.0.113.0/24; the only traffic is one ping between two test
//! namespaces and health checks over one test namespace's loopback.
#![cfg(feature = "runtime")]

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::panic::AssertUnwindSafe;
use std::process::Command;
use std::sync::mpsc;

use std::time::{Duration, Instant};

use eiplab::lab::health::{ProbeKind, ProbeTarget, Prober};
use eiplab::lab::services::listen_in;
use eiplab::sys::netlink::{
    AddrEvent, AddrWatch, Address, Applied, Batch, Ipv4Cidr, Mode, Netlink, Request, Route, Rule,
};
use eiplab::sys::netns::{self, NetnsHandle};

// ---------------------------------------------------------------------------------------------
// Helpers

fn privileged(test: &str) -> bool {
    common::privileged(test, false)
}

/// The namespaces of one test, deleted when it ends however it ends.
struct Namespaces {
    prefix: String,
    names: Vec<String>,
}

impl Namespaces {
    fn new(test: &str) -> Self {
        Self {
            prefix: format!("syst{}-{test}-", std::process::id()),
            names: Vec::new(),
        }
    }

    /// A name for this test's namespace `suffix`, registered for deletion (made or not).
    fn name(&mut self, suffix: &str) -> String {
        let name = format!("{}{suffix}", self.prefix);
        self.names.push(name.clone());
        name
    }

    /// Creates namespace `suffix` with `eiplab::sys`.
    fn create(&mut self, suffix: &str) -> String {
        let name = self.name(suffix);
        netns::create(&name).unwrap_or_else(|e| panic!("create {name}: {e}"));
        name
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            if netns::delete(name).is_err() || netns::exists(name) {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
}

/// Runs `ip ARGS`, returns its stdout; panics with its stderr if it fails.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip (install iproute2): {e}"));
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ip -n NS ARGS`.
fn ip_in(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

/// True if `ip ARGS` succeeds.
fn ip_ok(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The lines of `ip -n NS ARGS`, each trimmed, without empty ones.
fn lines(ns: &str, args: &[&str]) -> Vec<String> {
    ip_in(ns, args)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// `ip -n NS -4 -o addr show dev DEV`, reduced to "inet CIDR[ brd B] scope S".
fn addrs(ns: &str, dev: &str) -> Vec<String> {
    lines(ns, &["-4", "-o", "addr", "show", "dev", dev])
        .into_iter()
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let start = words.iter().position(|w| *w == "inet").unwrap_or(0);
            let end = words
                .iter()
                .position(|w| w.starts_with("valid_lft") || *w == "\\")
                .unwrap_or(words.len());
            words[start..end]
                .iter()
                .filter(|w| w.trim_end_matches('\\') != dev)
                .copied()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().unwrap()
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A veth pair `d0`/`d1` in `ns`, made by `ip` (an independent tool), both ends up.
fn veth_by_ip(ns: &str) {
    ip_in(
        ns,
        &["link", "add", "d0", "type", "veth", "peer", "name", "d1"],
    );
    ip_in(ns, &["link", "set", "d0", "up"]);
    ip_in(ns, &["link", "set", "d1", "up"]);
}

fn applied(changed: usize, unchanged: usize) -> Applied {
    Applied { changed, unchanged }
}

// ---------------------------------------------------------------------------------------------
// Namespaces

#[test]
fn namespaces_are_created_listed_entered_and_deleted() {
    if !privileged("namespaces_are_created_listed_entered_and_deleted") {
        return;
    }
    let mut t = Namespaces::new("life");
    let a = t.create("a");
    assert!(netns::exists(&a));
    assert!(netns::list().unwrap().contains(&a));
    assert!(
        ip(&["netns", "list"])
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&a)),
        "`ip netns list` does not show {a}"
    );
    assert!(
        ip_ok(&["netns", "exec", &a, "true"]),
        "`ip netns exec {a} true` failed"
    );
    let lo = ip_in(&a, &["-o", "link", "show", "lo"]);
    assert!(lo.contains(",UP"), "lo is not up: {lo}");

    // The name is taken now; a second create fails and leaves the first alone.
    let e = netns::create(&a).unwrap_err();
    assert!(e.contains("already exists") && e.contains(&a), "{e}");
    assert!(ip_ok(&["netns", "exec", &a, "true"]));

    let e = netns::create("syst-bad/name").unwrap_err();
    assert!(e.contains("not a valid namespace name"), "{e}");

    netns::delete(&a).unwrap();
    assert!(!netns::exists(&a));
    assert!(!ip(&["netns", "list"]).contains(&a));
    netns::delete(&a).expect("deleting a missing namespace is not an error");
    let e = NetnsHandle::open(&a).unwrap_err();
    assert!(e.contains("does not exist"), "{e}");

    // A namespace made by `ip` is ours to open and delete, and the other way round.
    let b = t.name("b");
    ip(&["netns", "add", &b]);
    let h = NetnsHandle::open(&b).unwrap();
    assert_eq!(h.name(), Some(b.as_str()));
    drop(h);
    netns::delete(&b).unwrap();
    assert!(!ip(&["netns", "list"]).contains(&b));
    let c = t.create("c");
    ip(&["netns", "del", &c]);
    assert!(!netns::exists(&c));

    // A leftover file that is not a mounted namespace is refused, and delete removes it.
    let stale = t.name("stale");
    std::fs::write(netns::path(&stale), b"").unwrap();
    let e = NetnsHandle::open(&stale).unwrap_err();
    assert!(e.contains("not a namespace"), "{e}");
    netns::delete(&stale).unwrap();
    assert!(!netns::exists(&stale));
}

#[test]
fn create_with_configures_before_publishing_and_leaves_nothing_on_failure() {
    if !privileged("create_with_configures_before_publishing_and_leaves_nothing_on_failure") {
        return;
    }
    let mut t = Namespaces::new("cw");
    let a = t.name("a");
    let mut nl = netns::create_with(&a, |mut nl| {
        nl.apply(Batch::new().link_add_veth("v0", "v1").link_up("v0"))?;
        Ok(nl)
    })
    .unwrap();
    assert!(ip_in(&a, &["-o", "link", "show", "v0"]).contains(",UP"));
    // The socket handed back still talks to the new namespace, from this thread.
    nl.apply(Batch::new().addr_add("v0", cidr("10.60.0.1/24")))
        .unwrap();
    assert_eq!(addrs(&a, "v0"), ["inet 10.60.0.1/24 scope global"]);
    assert_eq!(nl.namespace(), format!("namespace {a}"));

    let b = t.name("b");
    let e =
        netns::create_with(&b, |_| -> Result<(), String> { Err("no, thanks".into()) }).unwrap_err();
    assert!(e.contains("no, thanks"), "{e}");
    assert!(!netns::exists(&b), "a failed create left {b} behind");
    assert!(!ip(&["netns", "list"]).contains(&b));
}

#[test]
fn a_visit_runs_inside_and_always_comes_back() {
    if !privileged("a_visit_runs_inside_and_always_comes_back") {
        return;
    }
    let mut t = Namespaces::new("visit");
    let a = t.create("a");
    let b = t.create("b");
    let ha = NetnsHandle::open(&a).unwrap();
    let hb = NetnsHandle::open(&b).unwrap();
    let here = || NetnsHandle::current().unwrap().id().unwrap();
    let home = here();
    assert_ne!(home, ha.id().unwrap());

    assert_eq!(ha.run(here).unwrap(), ha.id().unwrap());
    assert_eq!(here(), home);

    // Nested visits each restore what they found.
    let (inner, between) = ha.run(|| (hb.run(here).unwrap(), here())).unwrap();
    assert_eq!(inner, hb.id().unwrap());
    assert_eq!(between, ha.id().unwrap());
    assert_eq!(here(), home);

    // A panic inside still brings the thread back.
    let caught = std::panic::catch_unwind(AssertUnwindSafe(|| {
        ha.run(|| panic!("boom inside the namespace")).unwrap();
    }));
    assert!(caught.is_err());
    assert_eq!(here(), home, "the thread stayed in {a} after a panic");

    // `enter` runs on another thread; this one never moves.
    assert_eq!(
        netns::enter(&a, move || NetnsHandle::current().unwrap().id().unwrap()).unwrap(),
        ha.id().unwrap()
    );
    assert_eq!(here(), home);

    // A socket opened inside keeps talking to the namespace: the veth lands in `a`, not here.
    let mut nl = Netlink::open_in(&ha).unwrap();
    nl.apply(Batch::new().link_add_veth("visit0", "visit1"))
        .unwrap();
    assert!(ip_ok(&["-n", &a, "link", "show", "visit0"]));
    assert!(
        !ip_ok(&["link", "show", "visit0"]),
        "the veth appeared in the root namespace"
    );
}

#[test]
fn sysctls_are_written_inside_the_namespace_only() {
    if !privileged("sysctls_are_written_inside_the_namespace_only") {
        return;
    }
    let mut t = Namespaces::new("sysctl");
    let a = t.create("a");
    let cat = |path: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", &a, "cat", path])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let root_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let want = if root_forward.trim() == "1" { "0" } else { "1" };
    netns::sysctl(&a, "net.ipv4.ip_forward", want).unwrap();
    assert_eq!(cat("/proc/sys/net/ipv4/ip_forward"), want);
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        root_forward,
        "the root namespace's sysctl changed"
    );

    let h = NetnsHandle::open(&a).unwrap();
    netns::sysctls(
        &h,
        &[
            ("net.ipv4.conf.all.rp_filter", "2"),
            ("net.ipv4.conf.default.rp_filter", "2"),
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            ("net/ipv6/conf/default/disable_ipv6", "1"),
        ],
    )
    .unwrap();
    assert_eq!(cat("/proc/sys/net/ipv4/conf/all/rp_filter"), "2");
    assert_eq!(cat("/proc/sys/net/ipv4/conf/default/rp_filter"), "2");
    assert_eq!(cat("/proc/sys/net/ipv6/conf/all/disable_ipv6"), "1");
    assert_eq!(cat("/proc/sys/net/ipv6/conf/default/disable_ipv6"), "1");

    // A bad name is named in the error; the good setting after it is still written.
    let e = netns::sysctls(
        &h,
        &[
            ("net.ipv4.no_such_setting", "1"),
            ("net.ipv4.conf.all.accept_redirects", "0"),
        ],
    )
    .unwrap_err();
    assert!(
        e.contains("net.ipv4.no_such_setting") && e.contains(&a),
        "{e}"
    );
    assert_eq!(cat("/proc/sys/net/ipv4/conf/all/accept_redirects"), "0");
    let e = netns::sysctl(&a, "net/../../etc/x", "1").unwrap_err();
    assert!(e.contains("not a sysctl name"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Links and addresses

#[test]
fn links_and_addresses_are_made_listed_and_removed() {
    if !privileged("links_and_addresses_are_made_listed_and_removed") {
        return;
    }
    let mut t = Namespaces::new("addr");
    let a = t.create("a");
    let mut nl = Netlink::open_in(&NetnsHandle::open(&a).unwrap()).unwrap();
    // The veth is made in the same batch that configures it.
    let done = nl
        .apply(
            Batch::new()
                .link_add_veth("v0", "v1")
                .link_up("v0")
                .link_up("v1")
                .link_mtu("v0", 1400)
                .push(Request::AddrAdd(
                    Address::new("v0", cidr("10.61.2.3/24")).with_broadcast(),
                ))
                .addr_add("v0", cidr("10.61.5.3/24"))
                .addr_add("v0", cidr("10.61.3.1/31"))
                .addr_add("v0", cidr("203.0.113.41/32")),
        )
        .unwrap();
    assert_eq!(done, applied(8, 0));
    let link = ip_in(&a, &["-o", "link", "show", "v0"]);
    assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
    assert_eq!(
        addrs(&a, "v0"),
        [
            "inet 10.61.2.3/24 brd 10.61.2.255 scope global",
            "inet 10.61.5.3/24 scope global",
            "inet 10.61.3.1/31 scope global",
            "inet 203.0.113.41/32 scope global",
        ]
    );
    assert_eq!(
        nl.addresses("v0").unwrap(),
        [
            cidr("10.61.2.3/24"),
            cidr("10.61.5.3/24"),
            cidr("10.61.3.1/31"),
            cidr("203.0.113.41/32"),
        ]
    );
    let index: u32 = ip_in(&a, &["-o", "link", "show", "v0"])
        .split(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(nl.link_index("v0").unwrap(), index);
    let e = nl.link_index("nope0").unwrap_err();
    assert!(e.contains("nope0") && e.contains(&a), "{e}");

    nl.apply(
        Batch::new()
            .addr_delete("v0", cidr("203.0.113.41/32"))
            .addr_delete("v0", cidr("10.61.5.3/24"))
            .link_down("v1"),
    )
    .unwrap();
    assert_eq!(
        addrs(&a, "v0"),
        [
            "inet 10.61.2.3/24 brd 10.61.2.255 scope global",
            "inet 10.61.3.1/31 scope global",
        ]
    );
    assert!(!ip_in(&a, &["-o", "link", "show", "v1"]).contains(",UP"));

    nl.apply(Batch::new().link_delete("v1")).unwrap();
    assert!(
        !ip_ok(&["-n", &a, "link", "show", "v0"]),
        "deleting v1 keeps v0"
    );
}

// ---------------------------------------------------------------------------------------------
// Parity with `ip`

/// What `ip` shows of a namespace's IPv4 configuration.
fn snapshot(ns: &str) -> Vec<String> {
    let mut all = addrs(ns, "d0");
    all.extend(addrs(ns, "d1"));
    all.extend(lines(ns, &["-4", "-d", "route", "show", "table", "all"]));
    all.extend(lines(ns, &["-4", "rule"]));
    all
}

#[test]
fn the_same_configuration_looks_the_same_as_when_ip_makes_it() {
    if !privileged("the_same_configuration_looks_the_same_as_when_ip_makes_it") {
        return;
    }
    let mut t = Namespaces::new("parity");
    let by_ip = t.create("ip");
    let by_us = t.create("us");
    veth_by_ip(&by_ip);
    veth_by_ip(&by_us);

    let commands: &[&[&str]] = &[
        &["addr", "add", "10.62.1.10/24", "dev", "d0"],
        &["addr", "add", "10.62.2.10/24", "brd", "+", "dev", "d0"],
        &["addr", "add", "203.0.113.7/32", "dev", "d0"],
        &["addr", "add", "10.62.3.1/31", "dev", "d1"],
        &["route", "add", "default", "via", "10.62.1.1", "dev", "d0"],
        &[
            "route",
            "add",
            "default",
            "via",
            "198.51.100.1",
            "dev",
            "d0",
            "onlink",
            "metric",
            "1101",
        ],
        &[
            "route",
            "add",
            "default",
            "via",
            "198.51.100.1",
            "dev",
            "d0",
            "onlink",
            "table",
            "101",
        ],
        &[
            "route",
            "add",
            "default",
            "via",
            "198.51.100.1",
            "dev",
            "d0",
            "onlink",
            "table",
            "1000",
        ],
        &["route", "add", "10.63.0.0/16", "dev", "d1"],
        &[
            "route",
            "add",
            "10.64.0.0/16",
            "via",
            "10.62.1.2",
            "dev",
            "d0",
            "metric",
            "7",
            "table",
            "102",
        ],
        &["rule", "add", "from", "203.0.113.7", "lookup", "101"],
        &["rule", "add", "from", "203.0.113.8", "lookup", "1000"],
        &[
            "rule",
            "add",
            "from",
            "203.0.113.9",
            "lookup",
            "102",
            "priority",
            "500",
        ],
    ];
    for c in commands {
        ip_in(&by_ip, c);
    }
    let gw = v4("198.51.100.1");
    let mut batch = Batch::new();
    batch
        .addr_add("d0", cidr("10.62.1.10/24"))
        .push(Request::AddrAdd(
            Address::new("d0", cidr("10.62.2.10/24")).with_broadcast(),
        ))
        .addr_add("d0", cidr("203.0.113.7/32"))
        .addr_add("d1", cidr("10.62.3.1/31"))
        .route_add(Route::default_route().via(v4("10.62.1.1")).dev("d0"))
        .route_add(
            Route::default_route()
                .via(gw)
                .dev("d0")
                .onlink()
                .metric(1101),
        )
        .route_add(Route::default_route().via(gw).dev("d0").onlink().table(101))
        .route_add(
            Route::default_route()
                .via(gw)
                .dev("d0")
                .onlink()
                .table(1000),
        )
        .route_add(Route::to(cidr("10.63.0.0/16")).dev("d1"))
        .route_add(
            Route::to(cidr("10.64.0.0/16"))
                .via(v4("10.62.1.2"))
                .dev("d0")
                .metric(7)
                .table(102),
        )
        .rule_add(Rule::from_lookup(v4("203.0.113.7"), 101))
        .rule_add(Rule::from_lookup(v4("203.0.113.8"), 1000))
        .rule_add(Rule::from_lookup(v4("203.0.113.9"), 102).priority(500));
    let mut nl = Netlink::open_in(&NetnsHandle::open(&by_us).unwrap()).unwrap();
    assert_eq!(nl.apply(&batch).unwrap(), applied(13, 0));

    let ours = snapshot(&by_us);
    assert_eq!(
        ours,
        snapshot(&by_ip),
        "ip made one thing, eiplab::sys another"
    );
    // And what that is, spelled out, so the comparison cannot pass on two empty outputs.
    let has = |line: &str| {
        assert!(
            ours.iter().any(|l| l == line),
            "missing {line:?} in:\n{}",
            ours.join("\n")
        )
    };
    has("unicast default via 198.51.100.1 dev d0 table 101 proto boot scope global onlink");
    has("unicast default via 198.51.100.1 dev d0 table 1000 proto boot scope global onlink");
    has("unicast default via 198.51.100.1 dev d0 table main proto boot scope global metric 1101 onlink");
    has("unicast default via 10.62.1.1 dev d0 table main proto boot scope global");
    has("unicast 10.63.0.0/16 dev d1 table main proto boot scope link");
    has("unicast 10.64.0.0/16 via 10.62.1.2 dev d0 table 102 proto boot scope global metric 7");
    has("32765:\tfrom 203.0.113.7 lookup 101");
    has("32764:\tfrom 203.0.113.8 lookup 1000");
    has("500:\tfrom 203.0.113.9 lookup 102");

    // Taking it all down again, both ways, also ends the same.
    let undo: &[&[&str]] = &[
        &["rule", "del", "from", "203.0.113.8", "lookup", "1000"],
        &[
            "route",
            "del",
            "default",
            "via",
            "198.51.100.1",
            "dev",
            "d0",
            "table",
            "1000",
        ],
        &["route", "del", "10.63.0.0/16", "dev", "d1"],
        &["addr", "del", "203.0.113.7/32", "dev", "d0"],
    ];
    for c in undo {
        ip_in(&by_ip, c);
    }
    let done = nl
        .apply(
            Batch::new()
                .rule_delete(Rule::from_lookup(v4("203.0.113.8"), 1000))
                .route_delete(Route::default_route().via(gw).dev("d0").table(1000))
                .route_delete(Route::to(cidr("10.63.0.0/16")).dev("d1"))
                .addr_delete("d0", cidr("203.0.113.7/32")),
        )
        .unwrap();
    assert_eq!(done, applied(4, 0));
    assert_eq!(snapshot(&by_us), snapshot(&by_ip));
}

// ---------------------------------------------------------------------------------------------
// Rules, errors, idempotence

#[test]
fn rules_get_ip_priorities_and_idempotent_adds_do_not_duplicate() {
    if !privileged("rules_get_ip_priorities_and_idempotent_adds_do_not_duplicate") {
        return;
    }
    let mut t = Namespaces::new("rule");
    let a = t.create("a");
    let mut nl = Netlink::open_in(&NetnsHandle::open(&a).unwrap()).unwrap();
    let r7 = Rule::from_lookup(v4("203.0.113.7"), 101);
    let r8 = Rule::from_lookup(v4("203.0.113.8"), 70000);
    nl.apply(Batch::new().rule_add(r7.clone()).rule_add(r8.clone()))
        .unwrap();
    let rules = || lines(&a, &["-4", "rule"]);
    assert_eq!(
        rules(),
        [
            "0:\tfrom all lookup local",
            "32764:\tfrom 203.0.113.8 lookup 70000",
            "32765:\tfrom 203.0.113.7 lookup 101",
            "32766:\tfrom all lookup main",
            "32767:\tfrom all lookup default",
        ]
    );
    // Idempotent: the rules are there, nothing is added (the kernel alone would duplicate).
    let again = nl
        .apply(
            Batch::idempotent()
                .rule_add(r7.clone())
                .rule_add(r8.clone()),
        )
        .unwrap();
    assert_eq!(again, applied(0, 2));
    assert_eq!(rules().len(), 5);
    // With an explicit priority the kernel itself sees the duplicate.
    let r9 = Rule::from_lookup(v4("203.0.113.9"), 102).priority(500);
    nl.apply(Batch::new().rule_add(r9.clone())).unwrap();
    let e = nl.apply(Batch::new().rule_add(r9.clone())).unwrap_err();
    assert_eq!(e.failures.len(), 1);
    assert_eq!(e.failures[0].errno, Some(libc::EEXIST));
    assert_eq!(
        nl.apply(Batch::idempotent().rule_add(r9.clone())).unwrap(),
        applied(0, 1)
    );

    nl.apply(Batch::new().rule_delete(r7.clone()).rule_delete(r9))
        .unwrap();
    assert_eq!(
        rules(),
        [
            "0:\tfrom all lookup local",
            "32764:\tfrom 203.0.113.8 lookup 70000",
            "32766:\tfrom all lookup main",
            "32767:\tfrom all lookup default",
        ]
    );
    let e = nl.apply(Batch::new().rule_delete(r7.clone())).unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "`rule del from 203.0.113.7 lookup 101` in namespace {a}: No such file or directory"
        )),
        "{text}"
    );
    assert_eq!(
        nl.apply(Batch::idempotent().rule_delete(r7)).unwrap(),
        applied(0, 1)
    );
}

#[test]
fn errors_name_the_request_the_device_and_the_namespace() {
    if !privileged("errors_name_the_request_the_device_and_the_namespace") {
        return;
    }
    let mut t = Namespaces::new("err");
    let a = t.create("a");
    veth_by_ip(&a);
    let mut nl = Netlink::open_in(&NetnsHandle::open(&a).unwrap()).unwrap();

    // A device that is not there.
    let e = nl
        .apply(Batch::new().addr_add("nosuch0", cidr("10.65.0.1/24")))
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "`addr add 10.65.0.1/24 dev nosuch0` in namespace {a}: device nosuch0 not found"
        )),
        "{text}"
    );
    let text = nl
        .apply(Batch::new().link_up("nosuch1"))
        .unwrap_err()
        .to_string();
    assert!(
        text.starts_with(&format!(
            "`link set dev nosuch1 up` in namespace {a}: No such device (os error 19)"
        )),
        "{text}"
    );

    // Already there: strict fails with the kernel's words, idempotent counts it as done.
    let route = Route::default_route()
        .via(v4("10.62.1.253"))
        .dev("d0")
        .onlink()
        .table(101);
    nl.apply(Batch::new().route_add(route.clone())).unwrap();
    let e = nl.apply(Batch::new().route_add(route.clone())).unwrap_err();
    assert_eq!(
        e.to_string()
            .lines()
            .next()
            .unwrap()
            .split(';')
            .next()
            .unwrap(),
        format!(
            "`route add default via 10.62.1.253 dev d0 onlink table 101` in namespace {a}: \
             File exists (os error 17)"
        )
    );
    assert_eq!(
        nl.apply(Batch::idempotent().route_add(route.clone()))
            .unwrap(),
        applied(0, 1)
    );
    // One bad request among good ones: the good ones are applied, the bad one reported.
    let e = nl
        .apply(
            Batch::new()
                .addr_add("d0", cidr("10.65.1.1/24"))
                .route_add(route.clone())
                .addr_add("d0", cidr("10.65.2.1/24")),
        )
        .unwrap_err();
    assert_eq!(e.failures.len(), 1, "{e}");
    assert_eq!(e.failures[0].index, 1);
    assert_eq!(e.applied, applied(2, 0));
    assert_eq!(
        addrs(&a, "d0"),
        [
            "inet 10.65.1.1/24 scope global",
            "inet 10.65.2.1/24 scope global"
        ]
    );

    // The kernel's own explanation comes along.
    let text = nl
        .apply(Batch::new().route_add(Route::default_route().via(v4("10.99.0.1")).dev("d0")))
        .unwrap_err()
        .to_string();
    assert!(text.contains("Network is unreachable"), "{text}");
    assert!(text.contains("onlink"), "no hint in: {text}");
    let text = nl
        .apply(Batch::new().route_add(Route::to(cidr("10.66.0.1/16")).dev("d0")))
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("Invalid argument") && text.contains("the kernel says"),
        "{text}"
    );

    // Deleting what is gone: strict fails, idempotent is fine, also for a missing device.
    let gone = Batch::new()
        .addr_delete("d0", cidr("10.65.9.9/24"))
        .route_delete(Route::to(cidr("10.67.0.0/16")).dev("d0"))
        .clone();
    let e = nl.apply(&gone).unwrap_err();
    assert_eq!(e.failures.len(), 2, "{e}");
    let mut idem = Batch::idempotent();
    for r in gone.requests() {
        idem.push(r.clone());
    }
    idem.push(Request::AddrDelete(Address::new(
        "nosuch2",
        cidr("10.65.9.9/24"),
    )));
    idem.push(Request::LinkDelete("nosuch3".into()));
    assert_eq!(nl.apply(&idem).unwrap(), applied(0, 4));
    // ... but idempotence does not hide a real error.
    let mut mixed = Batch::idempotent();
    mixed.push_with(Request::LinkUp("nosuch4".into()), Mode::Idempotent);
    assert!(nl.apply(&mixed).is_err());
}

#[test]
fn a_large_batch_goes_in_few_sends_and_every_request_is_accounted_for() {
    if !privileged("a_large_batch_goes_in_few_sends_and_every_request_is_accounted_for") {
        return;
    }
    let mut t = Namespaces::new("many");
    let a = t.create("a");
    veth_by_ip(&a);
    let mut nl = Netlink::open_in(&NetnsHandle::open(&a).unwrap()).unwrap();
    let mut build = Batch::new();
    let mut teardown = Batch::new();
    for i in 0..2000u32 {
        let addr = Ipv4Cidr::host(Ipv4Addr::from(0x0a48_0000 + i)); // 10.72.0.0 + i
        build.addr_add("d0", addr);
        teardown.addr_delete("d0", addr);
    }
    for i in 0..400u32 {
        let dst = Ipv4Cidr::new(Ipv4Addr::from(0x0a49_0000 + (i << 8)), 24).unwrap();
        let route = Route::to(dst).via(v4("198.51.100.9")).dev("d1").onlink();
        build.route_add(route.clone().table(1000 + i % 4));
        teardown.route_delete(route.table(1000 + i % 4));
    }
    for i in 0..100u32 {
        let rule =
            Rule::from_lookup(Ipv4Addr::from(0x0a48_0000 + i), 1000 + i % 4).priority(1000 + i);
        build.rule_add(rule.clone());
        teardown.rule_delete(rule);
    }
    assert_eq!(nl.apply(&build).unwrap(), applied(2500, 0));
    assert_eq!(addrs(&a, "d0").len(), 2000);
    assert_eq!(
        lines(&a, &["-4", "route", "show", "table", "all"])
            .iter()
            .filter(|l| l.contains("via 198.51.100.9"))
            .count(),
        400
    );
    assert_eq!(lines(&a, &["-4", "rule"]).len(), 103);

    // Again, idempotently: everything is there already.
    let mut again = Batch::idempotent();
    for r in build.requests() {
        again.push(r.clone());
    }
    assert_eq!(nl.apply(&again).unwrap(), applied(0, 2500));

    assert_eq!(nl.apply(&teardown).unwrap(), applied(2500, 0));
    assert!(addrs(&a, "d0").is_empty());
    assert_eq!(lines(&a, &["-4", "rule"]).len(), 3);
}

#[test]
fn a_veth_between_two_namespaces_carries_a_ping() {
    if !privileged("a_veth_between_two_namespaces_carries_a_ping") {
        return;
    }
    let mut t = Namespaces::new("ping");
    let a = t.create("a");
    let b = t.create("b");
    ip_in(
        &a,
        &[
            "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b,
        ],
    );
    for (ns, dev, addr) in [(&a, "va", "10.68.0.1/30"), (&b, "vb", "10.68.0.2/30")] {
        let mut nl = Netlink::open_in(&NetnsHandle::open(ns).unwrap()).unwrap();
        nl.apply(Batch::new().link_up(dev).addr_add(dev, cidr(addr)))
            .unwrap();
    }
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &a,
            "ping",
            "-c",
            "1",
            "-W",
            "5",
            "10.68.0.2",
        ])
        .output()
        .expect("cannot run ping (install iputils-ping)");
    assert!(
        out.status.success(),
        "no ping reply: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// Watching addresses

/// Waits up to `within` for an event on `addr`; returns it (panics if none came).
fn next_event_for(watch: &mut AddrWatch, addr: Ipv4Addr, within: Duration) -> AddrEvent {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no event for {addr} within {within:?}");
        let started = Instant::now();
        let events = watch.wait(left).unwrap();
        assert!(
            started.elapsed() < left + Duration::from_millis(100),
            "wait overran its timeout"
        );
        if let Some(e) = events.into_iter().find(|e| e.addr == addr) {
            return e;
        }
    }
}

#[test]
fn an_address_watch_sees_addresses_added_and_removed_in_its_namespace_only() {
    if !privileged("an_address_watch_sees_addresses_added_and_removed_in_its_namespace_only") {
        return;
    }
    let mut t = Namespaces::new("watch");
    let a = t.create("a");
    let b = t.create("b");
    let mut watch = AddrWatch::open_in(&NetnsHandle::open(&a).unwrap()).unwrap();
    let mut other = AddrWatch::open_in(&NetnsHandle::open(&b).unwrap()).unwrap();
    assert!(watch.namespace().contains(&a));

    // Nothing happened yet: a wait times out, on time, with nothing.
    let started = Instant::now();
    assert_eq!(watch.wait(Duration::from_millis(150)).unwrap(), []);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(140) && took < Duration::from_millis(400),
        "{took:?}"
    );
    assert_eq!(watch.read_ready().unwrap(), []);

    // Added by `ip`, as keepalived would.
    let vip = v4("10.9.9.9");
    ip_in(&a, &["addr", "add", "10.9.9.9/32", "dev", "lo"]);
    let e = next_event_for(&mut watch, vip, Duration::from_secs(2));
    assert_eq!(
        e,
        AddrEvent {
            added: true,
            ifindex: 1,
            addr: vip,
            prefix_len: 32
        }
    );
    ip_in(&a, &["addr", "del", "10.9.9.9/32", "dev", "lo"]);
    let e = next_event_for(&mut watch, vip, Duration::from_secs(2));
    assert!(!e.added && e.prefix_len == 32 && e.ifindex == 1, "{e:?}");

    // Added by this crate on a veth, seen with its prefix and the device's index.
    veth_by_ip(&a);
    let mut nl = Netlink::open_in(&NetnsHandle::open(&a).unwrap()).unwrap();
    let d0 = nl.link_index("d0").unwrap();
    nl.apply(Batch::new().addr_add("d0", cidr("198.51.100.9/24")))
        .unwrap();
    let e = next_event_for(&mut watch, v4("198.51.100.9"), Duration::from_secs(2));
    assert_eq!((e.added, e.ifindex, e.prefix_len), (true, d0, 24));
    nl.apply(Batch::new().addr_delete("d0", cidr("198.51.100.9/24")))
        .unwrap();
    let e = next_event_for(&mut watch, v4("198.51.100.9"), Duration::from_secs(2));
    assert!(!e.added, "{e:?}");

    // The other namespace's watch heard none of it.
    assert_eq!(other.read_ready().unwrap(), []);
    assert!(!watch.take_overrun() && !other.take_overrun());
}

// ---------------------------------------------------------------------------------------------
// Health checks (`eiplab::lab::health`), sent inside a test namespace

#[test]
fn health_checks_see_a_listener_closed_ports_and_a_listener_going_away() {
    if !privileged("health_checks_see_a_listener_closed_ports_and_a_listener_going_away") {
        return;
    }
    let mut t = Namespaces::new("health");
    let a = t.create("a");
    let mut nl = Netlink::open_in(&NetnsHandle::open(&a).unwrap()).unwrap();
    nl.apply(Batch::new().addr_add("lo", cidr("10.9.0.1/32")))
        .unwrap();
    let host = v4("10.9.0.1");
    let listener = listen_in(&a, SocketAddrV4::new(host, 8080).into()).unwrap();
    // A UDP service that never answers: silence is up.
    let quiet = netns::enter(&a, move || UdpSocket::bind(SocketAddrV4::new(host, 9998)))
        .unwrap()
        .unwrap();

    let e = Prober::start(&t.name("missing"), None, Box::new(|_, _| {})).unwrap_err();
    assert!(e.contains("does not exist"), "{e}");

    let (tx, rx) = mpsc::channel::<(u64, bool)>();
    let prober = Prober::start(
        &a,
        Some(host),
        Box::new(move |key, up| {
            let _ = tx.send((key, up));
        }),
    )
    .unwrap();
    let target = |key, kind, port| ProbeTarget {
        key,
        kind,
        addr: SocketAddrV4::new(host, port),
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(500),
    };
    prober.set_targets(vec![
        target(1, ProbeKind::Tcp, 8080),
        target(2, ProbeKind::Tcp, 8081),
        target(3, ProbeKind::Udp, 9999),
        target(4, ProbeKind::Udp, 9998),
    ]);

    // Every target reported, each the way it should, within 3 s.
    let want = [(1, true), (2, false), (3, false), (4, true)];
    let mut seen: HashMap<u64, Vec<bool>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while want.iter().any(|(k, _)| !seen.contains_key(k)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((key, up)) => seen.entry(key).or_default().push(up),
            Err(_) => panic!("not every target reported within 3 s: {seen:?}"),
        }
    }
    for (key, up) in want {
        assert!(
            seen[&key].iter().all(|u| *u == up),
            "target {key}: {:?}",
            seen[&key]
        );
    }

    // The service goes away: its check turns down.
    drop(listener);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((1, false)) => break,
            Ok((2 | 3, true)) => panic!("a closed port reported up"),
            Ok(_) => {}
            Err(_) => panic!("target 1 did not turn down within 3 s of closing its listener"),
        }
    }

    let mut buf = [0u8; 64];
    quiet.set_nonblocking(true).unwrap();
    let (n, from) = quiet
        .recv_from(&mut buf)
        .expect("the UDP check sent nothing");
    assert_eq!(
        from.ip(),
        std::net::IpAddr::V4(host),
        "checks come from the source given"
    );
    assert!(n > 0);

    // A new target set: the targets that went are no longer probed.
    prober.set_targets(vec![target(1, ProbeKind::Tcp, 8080)]);
    std::thread::sleep(Duration::from_millis(300)); // what was in flight may still report
    while rx.try_recv().is_ok() {}
    let until = Instant::now() + Duration::from_millis(700);
    let mut ones = 0;
    while let Ok((key, up)) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
        assert_eq!((key, up), (1, false), "only target 1 is left, and down");
        ones += 1;
    }
    assert!(ones >= 2, "target 1 reported {ones} times in 700 ms");

    // Dropping stops the thread at once; its report closure goes with it.
    let started = Instant::now();
    drop(prober);
    let took = started.elapsed();
    assert!(took < Duration::from_millis(300), "drop took {took:?}");
    while rx.try_recv().is_ok() {}
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(200)),
        Err(mpsc::RecvTimeoutError::Disconnected)
    );
}
