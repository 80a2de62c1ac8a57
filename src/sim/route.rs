//! [`Routing`]: a simulated host's addresses, routes and policy rules, and the lookup that
//! picks the device a packet leaves by, as Linux does for the lab's guests.
//!
//! - Every address is on one device; its prefix gives a connected route in the main table
//!   (metric 0), as the kernel adds one.
//! - Routes name a table (`254` is main), a destination prefix, a next hop and a metric.
//! - Rules are `from ADDR lookup TABLE`, tried newest first (as `ip rule add` without `pref`
//!   puts a new rule before the older ones); a table with no match falls through to main.
//! - A lookup for a destination the host holds is local (delivered to the host itself).
//!
//! Pure: no devices, no sockets; the phy consults it for every packet that leaves.

use smoltcp::wire::Ipv4Cidr;
use std::net::Ipv4Addr;

/// The main routing table's number.
pub const MAIN: u32 = 254;

/// One route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    pub table: u32,
    /// `0.0.0.0/0` for a default route.
    pub dst: Ipv4Cidr,
    pub via: Option<Ipv4Addr>,
    /// Index of the device in [`Routing::devs`].
    pub dev: usize,
    pub metric: u32,
}

/// One device's name and addresses; `None` once removed (indexes stay stable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevAddrs {
    pub name: String,
    pub addrs: Vec<Ipv4Cidr>,
}

/// Where a packet goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Egress {
    /// To the host itself.
    Local,
    /// Out of device `dev`; `src` is the source address the host would choose.
    Dev { dev: usize, src: Ipv4Addr },
}

/// Addresses, routes and rules of one host.
#[derive(Clone, Debug, Default)]
pub struct Routing {
    pub devs: Vec<Option<DevAddrs>>,
    pub routes: Vec<RouteEntry>,
    /// `(from, table)`, oldest first.
    pub rules: Vec<(Ipv4Addr, u32)>,
}

impl Routing {
    /// The index of device `name`, if present.
    pub fn dev(&self, name: &str) -> Option<usize> {
        self.devs
            .iter()
            .position(|d| d.as_ref().is_some_and(|d| d.name == name))
    }

    /// Adds device `name` (no addresses); returns its index.
    pub fn add_dev(&mut self, name: &str) -> usize {
        if let Some(i) = self.dev(name) {
            return i;
        }
        let d = Some(DevAddrs {
            name: name.to_string(),
            addrs: Vec::new(),
        });
        match self.devs.iter().position(Option::is_none) {
            Some(i) => {
                self.devs[i] = d;
                i
            }
            None => {
                self.devs.push(d);
                self.devs.len() - 1
            }
        }
    }

    /// Removes a device with its addresses and routes; its rules stay (as in Linux).
    pub fn remove_dev(&mut self, dev: usize) {
        if let Some(d) = self.devs.get_mut(dev) {
            *d = None;
        }
        self.routes.retain(|r| r.dev != dev);
    }

    /// Every address of the host, with its device's name.
    pub fn addrs(&self) -> Vec<(String, Ipv4Cidr)> {
        let mut v = Vec::new();
        for d in self.devs.iter().flatten() {
            for a in &d.addrs {
                v.push((d.name.clone(), *a));
            }
        }
        v
    }

    /// Whether the host holds `a`.
    pub fn is_local(&self, a: Ipv4Addr) -> bool {
        self.devs
            .iter()
            .flatten()
            .any(|d| d.addrs.iter().any(|c| c.address() == a))
    }

    /// Adds an address (nothing when the device already has it).
    pub fn addr_add(&mut self, dev: usize, c: Ipv4Cidr) {
        if let Some(Some(d)) = self.devs.get_mut(dev) {
            if !d.addrs.contains(&c) {
                d.addrs.push(c);
            }
        }
    }

    pub fn addr_del(&mut self, dev: usize, c: Ipv4Cidr) {
        if let Some(Some(d)) = self.devs.get_mut(dev) {
            d.addrs.retain(|x| *x != c);
        }
    }

    pub fn route_add(&mut self, r: RouteEntry) {
        if !self.routes.contains(&r) {
            self.routes.push(r);
        }
    }

    pub fn route_del(&mut self, r: &RouteEntry) {
        self.routes.retain(|x| x != r);
    }

    pub fn rule_add(&mut self, from: Ipv4Addr, table: u32) {
        if !self.rules.contains(&(from, table)) {
            self.rules.push((from, table));
        }
    }

    pub fn rule_del(&mut self, from: Ipv4Addr, table: u32) {
        self.rules.retain(|x| *x != (from, table));
    }

    /// The best route of `table` to `dst`: longest prefix, then lowest metric, then the
    /// oldest. The main table includes the connected routes.
    fn lookup(&self, table: u32, dst: Ipv4Addr) -> Option<(usize, u8, u32)> {
        let mut best: Option<(usize, u8, u32)> = None;
        let mut offer = |dev: usize, len: u8, metric: u32| {
            let better = match best {
                None => true,
                Some((_, l, m)) => len > l || (len == l && metric < m),
            };
            if better {
                best = Some((dev, len, metric));
            }
        };
        if table == MAIN {
            for (i, d) in self.devs.iter().enumerate() {
                let Some(d) = d else { continue };
                for a in &d.addrs {
                    if a.contains_addr(&dst) {
                        offer(i, a.prefix_len(), 0);
                    }
                }
            }
        }
        for r in &self.routes {
            if r.table == table && r.dst.contains_addr(&dst) {
                offer(r.dev, r.dst.prefix_len(), r.metric);
            }
        }
        best
    }

    /// The first address of device `dev` (the one Linux prefers as a source), if any.
    fn first_addr(&self, dev: usize) -> Option<Ipv4Addr> {
        self.devs
            .get(dev)?
            .as_ref()?
            .addrs
            .first()
            .map(|c| c.address())
    }

    /// Where a packet from `src` (or from the address the host picks) to `dst` goes, or
    /// `None`: the network is unreachable.
    pub fn route(&self, src: Option<Ipv4Addr>, dst: Ipv4Addr) -> Option<Egress> {
        if self.is_local(dst) {
            return Some(Egress::Local);
        }
        if let Some(s) = src {
            for &(from, table) in self.rules.iter().rev() {
                if from == s {
                    if let Some((dev, _, _)) = self.lookup(table, dst) {
                        return Some(Egress::Dev { dev, src: s });
                    }
                }
            }
        }
        let (dev, _, _) = self.lookup(MAIN, dst)?;
        let src = src.or_else(|| self.first_addr(dev))?;
        Some(Egress::Dev { dev, src })
    }

    /// What `ip addr` would show, one line per address: `eth0 10.0.1.10/24`.
    pub fn addr_lines(&self) -> Vec<String> {
        let mut v = Vec::new();
        for d in self.devs.iter().flatten() {
            if d.addrs.is_empty() {
                v.push(format!("{}: up, no address", d.name));
            }
            for a in &d.addrs {
                v.push(format!("{}: inet {a}", d.name));
            }
        }
        v
    }

    fn dev_name(&self, dev: usize) -> &str {
        self.devs
            .get(dev)
            .and_then(|d| d.as_ref())
            .map_or("?", |d| d.name.as_str())
    }

    /// What `ip rule` and `ip route show table all` would show, roughly in their words.
    pub fn route_lines(&self) -> Vec<String> {
        let mut v = Vec::new();
        for &(from, table) in self.rules.iter().rev() {
            v.push(format!("rule: from {from} lookup {table}"));
        }
        v.push("rule: from all lookup main".into());
        let mut tables: Vec<u32> = self.routes.iter().map(|r| r.table).collect();
        tables.push(MAIN);
        tables.sort_unstable();
        tables.dedup();
        tables.sort_by_key(|t| (*t != MAIN, *t));
        for t in tables {
            let suffix = if t == MAIN {
                String::new()
            } else {
                format!(" table {t}")
            };
            for r in self.routes.iter().filter(|r| r.table == t) {
                let dst = if r.dst.prefix_len() == 0 {
                    "default".to_string()
                } else {
                    r.dst.to_string()
                };
                let via = r.via.map_or(String::new(), |g| format!(" via {g}"));
                let metric = if r.metric == 0 {
                    String::new()
                } else {
                    format!(" metric {}", r.metric)
                };
                v.push(format!(
                    "{dst}{via} dev {}{metric}{suffix}",
                    self.dev_name(r.dev)
                ));
            }
            if t == MAIN {
                for d in self.devs.iter().flatten() {
                    for a in &d.addrs {
                        if a.prefix_len() < 32 {
                            v.push(format!(
                                "{} dev {} proto kernel scope link src {}",
                                a.network(),
                                d.name,
                                a.address()
                            ));
                        }
                    }
                }
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn c(s: &str) -> Ipv4Cidr {
        let (ip, len) = s.split_once('/').unwrap();
        Ipv4Cidr::new(a(ip), len.parse().unwrap())
    }

    fn default(table: u32, dev: usize, via: &str, metric: u32) -> RouteEntry {
        RouteEntry {
            table,
            dst: c("0.0.0.0/0"),
            via: Some(a(via)),
            dev,
            metric,
        }
    }

    /// eth0 primary (10.0.1.10/24, default via .253), eth1 secondary (10.0.1.21/24).
    fn two_enis() -> Routing {
        let mut r = Routing::default();
        let e0 = r.add_dev("eth0");
        let e1 = r.add_dev("eth1");
        r.addr_add(e0, c("10.0.1.10/24"));
        r.addr_add(e1, c("10.0.1.21/24"));
        r.route_add(default(MAIN, e0, "10.0.1.253", 0));
        r
    }

    #[test]
    fn without_a_rule_a_secondary_address_leaves_by_the_primary_device() {
        let r = two_enis();
        let want = Egress::Dev {
            dev: 0,
            src: a("10.0.1.21"),
        };
        assert_eq!(r.route(Some(a("10.0.1.21")), a("203.0.113.1")), Some(want));
        // Connected: same prefix on both devices, the first device wins (oldest).
        assert_eq!(
            r.route(None, a("10.0.1.11")),
            Some(Egress::Dev {
                dev: 0,
                src: a("10.0.1.10")
            })
        );
        assert_eq!(r.route(None, a("10.0.1.21")), Some(Egress::Local));
    }

    #[test]
    fn a_rule_and_its_table_send_it_out_of_its_own_device() {
        let mut r = two_enis();
        r.route_add(default(1001, 1, "10.0.1.253", 0));
        r.rule_add(a("10.0.1.21"), 1001);
        assert_eq!(
            r.route(Some(a("10.0.1.21")), a("203.0.113.1")),
            Some(Egress::Dev {
                dev: 1,
                src: a("10.0.1.21")
            })
        );
        // Other sources still use main.
        assert_eq!(
            r.route(Some(a("10.0.1.10")), a("203.0.113.1")),
            Some(Egress::Dev {
                dev: 0,
                src: a("10.0.1.10")
            })
        );
        // A table without a match falls through to main.
        r.rule_add(a("10.0.1.10"), 1002);
        assert!(matches!(
            r.route(Some(a("10.0.1.10")), a("203.0.113.1")),
            Some(Egress::Dev { dev: 0, .. })
        ));
    }

    #[test]
    fn lowest_metric_wins_and_removing_a_device_takes_its_routes_not_its_rules() {
        let mut r = two_enis();
        r.route_add(default(MAIN, 1, "203.0.113.254", 101));
        assert!(matches!(
            r.route(None, a("203.0.113.1")),
            Some(Egress::Dev { dev: 0, .. })
        ));
        r.rule_add(a("10.0.1.21"), 101);
        r.remove_dev(0);
        assert_eq!(
            r.route(None, a("203.0.113.1")),
            Some(Egress::Dev {
                dev: 1,
                src: a("10.0.1.21")
            })
        );
        assert_eq!(r.rules, vec![(a("10.0.1.21"), 101)]);
        r.remove_dev(1);
        assert_eq!(r.route(None, a("203.0.113.1")), None, "unreachable");
        // The slot is reused.
        assert_eq!(r.add_dev("eth2"), 0);
    }

    #[test]
    fn lines_read_like_ip() {
        let mut r = two_enis();
        r.route_add(default(101, 1, "203.0.113.254", 0));
        r.rule_add(a("198.51.100.30"), 101);
        let routes = r.route_lines().join("\n");
        assert!(
            routes.contains("rule: from 198.51.100.30 lookup 101"),
            "{routes}"
        );
        assert!(
            routes.contains("default via 10.0.1.253 dev eth0"),
            "{routes}"
        );
        assert!(
            routes.contains("default via 203.0.113.254 dev eth1 table 101"),
            "{routes}"
        );
        assert!(
            routes.contains("10.0.1.0/24 dev eth0 proto kernel scope link src 10.0.1.10"),
            "{routes}"
        );
        assert_eq!(
            r.addr_lines(),
            vec!["eth0: inet 10.0.1.10/24", "eth1: inet 10.0.1.21/24"]
        );
    }
}
