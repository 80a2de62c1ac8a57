//! `eiplab exec` on a sim lab: a small set of traffic and inspection commands run inside a
//! simulated host, with the words (and, where they allow, the options) of the tools a
//! namespace lab offers, so that the README's first steps read the same on both backends.
//!
//! | command | what it does |
//! |---|---|
//! | `ping [-c N] [-I ADDR] [-W SECS] DST` | ICMP echoes (3 by default), one line per reply |
//! | `curl [-s] [-m SECS] [--interface ADDR] http://DST[:PORT]/PATH` (or `get URL`) | an HTTP/1.0 GET; prints the body |
//! | `send tcp\|udp DST:PORT [TEXT…] [--from ADDR] [-W SECS]` | sends TEXT; prints what came back |
//! | `listen tcp\|udp PORT [-W SECS]` | waits for one connection or datagram; prints who sent what to which address, and echoes it |
//! | `addr`, `ip addr [show]` | the host's addresses |
//! | `route`, `ip route`, `ip rule` | its rules and routes |
//! | `ip addr add\|del ADDR/LEN dev DEV` | changes an address (a HaVip's address moves the HaVip here) |
//! | `ip rule add\|del from ADDR lookup TABLE` | policy rules |
//! | `ip route add\|del default via GW dev DEV [table T] [metric M]` | routes |
//!
//! Exit codes follow the tools: 0 success; ping 1 when nothing came back; curl 7 when the
//! connection failed, 28 on a timeout; 2 for a usage error.

use super::host::{Listen, Ping, Proto, Task, TcpSend, UdpExchange};
use super::route::MAIN;
use super::world::SimWorld;
use crate::control::ControlPlane;
use serde::{Deserialize, Serialize};
use smoltcp::wire::Ipv4Cidr;
use std::fmt::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

/// What a command printed and how it ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    fn ok(stdout: String) -> Output {
        Output {
            code: 0,
            stdout,
            stderr: String::new(),
        }
    }

    fn fail(code: i32, stderr: String) -> Output {
        Output {
            code,
            stdout: String::new(),
            stderr: if stderr.ends_with('\n') {
                stderr
            } else {
                format!("{stderr}\n")
            },
        }
    }
}

/// The commands, for `help` and for a usage error.
pub const HELP: &str = "\
commands of a sim lab's hosts (eiplab exec HOST -- COMMAND):
  ping [-c N] [-I ADDR] [-W SECS] DST
  curl [-s] [-m SECS] [--interface ADDR] http://DST[:PORT]/PATH   (or: get URL)
  send tcp|udp DST:PORT [TEXT...] [--from ADDR] [-W SECS]
  listen tcp|udp PORT [-W SECS]
  addr | ip addr                      route | ip route | ip rule
  ip addr add|del ADDR/LEN dev DEV
  ip rule add|del from ADDR lookup TABLE
  ip route add|del default via GW dev DEV [table T] [metric M]
";

fn usage(msg: &str) -> Output {
    Output::fail(2, format!("{msg}\n{HELP}"))
}

/// Options and operands of a command line: `-x VALUE` / `--long VALUE` pairs for the names in
/// `valued`, flags for the names in `flags`, the rest operands.
struct Args {
    opts: Vec<(String, String)>,
    operands: Vec<String>,
}

fn parse(argv: &[String], valued: &[&str], flags: &[&str]) -> Result<Args, String> {
    let mut a = Args {
        opts: Vec::new(),
        operands: Vec::new(),
    };
    let mut it = argv.iter();
    while let Some(w) = it.next() {
        if valued.contains(&w.as_str()) {
            let v = it.next().ok_or_else(|| format!("{w} needs a value"))?;
            a.opts.push((w.clone(), v.clone()));
        } else if flags.contains(&w.as_str()) {
            a.opts.push((w.clone(), String::new()));
        } else if w.starts_with('-') && w.len() > 1 {
            return Err(format!("unknown option {w}"));
        } else {
            a.operands.push(w.clone());
        }
    }
    Ok(a)
}

impl Args {
    fn get(&self, names: &[&str]) -> Option<&str> {
        self.opts
            .iter()
            .rev()
            .find(|(k, _)| names.contains(&k.as_str()))
            .map(|(_, v)| v.as_str())
    }

    fn addr(&self, names: &[&str]) -> Result<Option<Ipv4Addr>, String> {
        self.get(names)
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("{}: {v:?} is not an IPv4 address", names[0]))
            })
            .transpose()
    }

    fn secs(&self, names: &[&str], default: f64) -> Result<Duration, String> {
        let Some(v) = self.get(names) else {
            return Ok(Duration::from_secs_f64(default));
        };
        match v.parse::<f64>() {
            Ok(s) if s > 0.0 && s <= 3600.0 => Ok(Duration::from_secs_f64(s)),
            _ => Err(format!(
                "{}: {v:?} is not a number of seconds (0 < s <= 3600)",
                names[0]
            )),
        }
    }
}

/// Runs `argv` on host `host` of `world`. `cp` is told when a guest takes a HaVip's address.
pub fn run(world: &SimWorld, cp: &ControlPlane, host: &str, argv: &[String]) -> Output {
    if !world.hosts().iter().any(|h| h == host) {
        return Output::fail(
            1,
            format!(
                "no host {host:?} in this lab; hosts: {}",
                world.hosts().join(", ")
            ),
        );
    }
    let Some((cmd, rest)) = argv.split_first() else {
        return usage("no command");
    };
    let r = match cmd.as_str() {
        "ping" => ping(world, host, rest),
        "curl" | "get" => curl(world, host, rest),
        "send" => send(world, host, rest),
        "listen" => listen(world, host, rest),
        "addr" => show(world, host, true),
        "route" => show(world, host, false),
        "ip" => ip(world, cp, host, rest),
        "help" | "--help" | "-h" => Ok(Output::ok(HELP.to_string())),
        other => {
            return usage(&format!(
                "{other}: not a command of a sim lab (no real programs run in it)"
            ))
        }
    };
    r.unwrap_or_else(|e| usage(&format!("{cmd}: {e}")))
}

fn run_task<T: Task>(w: &SimWorld, host: &str, t: T, limit: Duration) -> Result<T::Output, String> {
    w.run(host, t, limit)
}

fn ping(w: &SimWorld, host: &str, argv: &[String]) -> Result<Output, String> {
    let a = parse(argv, &["-c", "-I", "-W"], &["-n", "-q"])?;
    let [dst] = a.operands.as_slice() else {
        return Err("name one destination".into());
    };
    let dst: Ipv4Addr = dst
        .parse()
        .map_err(|_| format!("{dst:?} is not an IPv4 address"))?;
    let count: u16 = match a.get(&["-c"]) {
        Some(c) => c
            .parse()
            .ok()
            .filter(|c| (1..=100).contains(c))
            .ok_or("-c: a count from 1 to 100")?,
        None => 3,
    };
    let from = a.addr(&["-I"])?;
    let wait = a.secs(&["-W"], 1.0)?;
    let mut out = String::new();
    let mut got = 0;
    let mut src = None;
    for seq in 1..=count {
        match run_task(w, host, Ping::seq(dst, from, seq), wait) {
            Ok(p) => {
                if src.is_none() {
                    let _ = writeln!(out, "PING {dst} from {}", p.from);
                    src = Some(p.from);
                }
                got += 1;
                let _ = writeln!(
                    out,
                    "reply from {dst}: icmp_seq={seq} time={:.3} ms",
                    p.rtt.as_secs_f64() * 1e3
                );
            }
            Err(e) if e.contains("timed out") => {
                let _ = writeln!(out, "no reply from {dst}: icmp_seq={seq}");
            }
            Err(e) => return Ok(Output::fail(2, e)),
        }
    }
    let loss = 100 * (u32::from(count) - got) / u32::from(count);
    let _ = writeln!(
        out,
        "--- {dst}: {count} packets transmitted, {got} received, {loss}% packet loss"
    );
    Ok(Output {
        code: if got > 0 { 0 } else { 1 },
        stdout: out,
        stderr: String::new(),
    })
}

fn curl(w: &SimWorld, host: &str, argv: &[String]) -> Result<Output, String> {
    let a = parse(
        argv,
        &["-m", "--max-time", "--interface", "--connect-timeout"],
        &["-s", "--silent", "-S", "--show-error", "-f", "--fail"],
    )?;
    let [url] = a.operands.as_slice() else {
        return Err("name one URL".into());
    };
    let (dst, path) = parse_url(url)?;
    let from = a.addr(&["--interface"])?;
    let limit = a.secs(&["-m", "--max-time"], 10.0)?;
    match run_task(w, host, TcpSend::get(dst, &path, from), limit) {
        Ok(body) => Ok(Output::ok(String::from_utf8_lossy(&body).into_owned())),
        Err(e) if e.contains("timed out") => Ok(Output::fail(
            28,
            format!("curl: (28) no answer from {dst} within {limit:?}: {e}"),
        )),
        Err(e) if e.contains("refused") || e.contains("unreachable") => Ok(Output::fail(
            7,
            format!("curl: (7) failed to connect to {dst}: {e}"),
        )),
        Err(e) => Ok(Output::fail(22, format!("curl: (22) {e}"))),
    }
}

/// `http://A.B.C.D[:PORT][/PATH]`.
fn parse_url(url: &str) -> Result<(SocketAddrV4, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// URLs with an IPv4 address"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (h, port) = match hostport.split_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("{url:?}: bad port {p:?}"))?,
        ),
        None => (hostport, 80),
    };
    let ip: Ipv4Addr = h
        .parse()
        .map_err(|_| format!("{url:?}: {h:?} is not an IPv4 address (no DNS in a sim lab)"))?;
    Ok((SocketAddrV4::new(ip, port), path))
}

fn proto(w: &str) -> Result<Proto, String> {
    match w {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        _ => Err(format!("{w:?}: say tcp or udp")),
    }
}

fn send(w: &SimWorld, host: &str, argv: &[String]) -> Result<Output, String> {
    let a = parse(argv, &["--from", "-W"], &[])?;
    let [p, dst, text @ ..] = a.operands.as_slice() else {
        return Err("send tcp|udp DST:PORT [TEXT...]".into());
    };
    let p = proto(p)?;
    let dst: SocketAddrV4 = dst
        .parse()
        .map_err(|_| format!("{dst:?}: write the destination as ADDRESS:PORT"))?;
    let payload = if text.is_empty() {
        "hello".to_string()
    } else {
        text.join(" ")
    };
    let from = a.addr(&["--from"])?;
    let limit = a.secs(&["-W"], 5.0)?;
    let r = match p {
        Proto::Tcp => run_task(w, host, TcpSend::new(dst, payload.as_bytes(), from), limit),
        Proto::Udp => run_task(
            w,
            host,
            UdpExchange::new(dst, payload.as_bytes(), from),
            limit,
        ),
    };
    Ok(match r {
        Ok(back) => Output::ok(format!("{}\n", String::from_utf8_lossy(&back))),
        Err(e) => Output::fail(1, e),
    })
}

fn listen(w: &SimWorld, host: &str, argv: &[String]) -> Result<Output, String> {
    let a = parse(argv, &["-W"], &[])?;
    let [p, port] = a.operands.as_slice() else {
        return Err("listen tcp|udp PORT".into());
    };
    let p = proto(p)?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{port:?} is not a port"))?;
    let limit = a.secs(&["-W"], 30.0)?;
    Ok(match run_task(w, host, Listen::new(p, port), limit) {
        Ok(h) => Output::ok(format!(
            "from {} to {}: {}\n",
            h.from,
            h.to,
            String::from_utf8_lossy(&h.data)
        )),
        Err(e) => Output::fail(1, e),
    })
}

fn show(w: &SimWorld, host: &str, addrs: bool) -> Result<Output, String> {
    let lines = w.with_host(host, |h| {
        if addrs {
            h.addr_lines()
        } else {
            h.route_lines()
        }
    })?;
    let mut s = lines.join("\n");
    s.push('\n');
    Ok(Output::ok(s))
}

fn cidr(s: &str) -> Result<Ipv4Cidr, String> {
    let (ip, len) = s.split_once('/').unwrap_or((s, "32"));
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{s:?} is not ADDRESS/LENGTH"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("{s:?}: a prefix length from 0 to 32"))?;
    Ok(Ipv4Cidr::new(ip, len))
}

/// The value after `key` in `words`.
fn after<'a>(words: &'a [String], key: &str) -> Option<&'a str> {
    words
        .iter()
        .position(|w| w == key)
        .and_then(|i| words.get(i + 1))
        .map(String::as_str)
}

fn ip(w: &SimWorld, cp: &ControlPlane, host: &str, argv: &[String]) -> Result<Output, String> {
    let words: Vec<String> = argv
        .iter()
        .filter(|a| !a.starts_with('-'))
        .cloned()
        .collect();
    let obj = words.first().map(String::as_str).unwrap_or("");
    let verb = words.get(1).map(String::as_str).unwrap_or("show");
    let is = |full: &str, w: &str| !w.is_empty() && full.starts_with(w);
    let args = words.get(2..).unwrap_or(&[]);
    if is("address", obj) {
        if is("show", verb) || is("list", verb) {
            return show(w, host, true);
        }
        let add = match verb {
            "add" => true,
            "del" | "delete" => false,
            _ => return Err(format!("ip addr {verb}: use add, del or show")),
        };
        let [a, rest @ ..] = args else {
            return Err("ip addr add|del ADDR/LEN dev DEV".into());
        };
        let c = cidr(a)?;
        let dev = after(rest, "dev").ok_or("name the device: dev eth0")?;
        w.with_host(host, |h| h.addr(dev, c, add))??;
        if add {
            claim_havip(cp, host, c.address());
        }
        return Ok(Output::ok(String::new()));
    }
    if is("rule", obj) {
        if is("show", verb) || is("list", verb) {
            return show(w, host, false);
        }
        let add = match verb {
            "add" => true,
            "del" | "delete" => false,
            _ => return Err(format!("ip rule {verb}: use add, del or show")),
        };
        let from: Ipv4Addr = after(args, "from")
            .ok_or("ip rule add from ADDR lookup TABLE")?
            .parse()
            .map_err(|_| "from: an IPv4 address".to_string())?;
        let table = table(after(args, "lookup").or(after(args, "table")))?;
        w.with_host(host, |h| h.rule(from, table, add))?;
        return Ok(Output::ok(String::new()));
    }
    if is("route", obj) {
        if is("show", verb) || is("list", verb) {
            return show(w, host, false);
        }
        let add = match verb {
            "add" | "replace" => true,
            "del" | "delete" => false,
            _ => return Err(format!("ip route {verb}: use add, del or show")),
        };
        if args.first().map(String::as_str) != Some("default") {
            return Err("only default routes: ip route add default via GW dev DEV".into());
        }
        let via: Ipv4Addr = after(args, "via")
            .ok_or("via GW")?
            .parse()
            .map_err(|_| "via: an IPv4 address".to_string())?;
        let dev = after(args, "dev").ok_or("dev DEV")?.to_string();
        let table = match after(args, "table") {
            Some(t) => table(Some(t))?,
            None => MAIN,
        };
        let metric: u32 = match after(args, "metric") {
            Some(m) => m.parse().map_err(|_| "metric: a number".to_string())?,
            None => 0,
        };
        w.with_host(host, |h| h.route(&dev, via, table, metric, add))??;
        return Ok(Output::ok(String::new()));
    }
    Err(format!("ip {obj}: use addr, route or rule"))
}

fn table(t: Option<&str>) -> Result<u32, String> {
    match t {
        Some("main") => Ok(MAIN),
        Some(n) => n
            .parse()
            .map_err(|_| format!("table {n:?}: a number or main")),
        None => Err("name the table: lookup TABLE".into()),
    }
}

/// A guest of an instance associated with a HaVip took its address: the HaVip moves there,
/// as the lab's address watch does for a namespace.
fn claim_havip(cp: &ControlPlane, instance: &str, ip: Ipv4Addr) {
    if !cp.with_cloud(|c| c.havips.values().any(|h| h.ip == ip)) {
        return;
    }
    let r = cp.transact(|c, _| Ok::<_, crate::control::StoreError>(c.claim_havip(instance, ip)));
    match r {
        Ok(ch) if !ch.is_empty() => {
            tracing::info!(instance = %instance, address = %ip, "HaVip moved to the guest that took its address")
        }
        Ok(_) => {}
        Err(e) => tracing::error!("moving the HaVip {ip} to {instance}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_options_parse() {
        assert_eq!(
            parse_url("http://203.0.113.1/").unwrap(),
            ("203.0.113.1:80".parse().unwrap(), "/".to_string())
        );
        assert_eq!(
            parse_url("http://198.51.100.10:8080/x/y").unwrap(),
            ("198.51.100.10:8080".parse().unwrap(), "/x/y".to_string())
        );
        assert_eq!(parse_url("http://203.0.113.1").unwrap().1, "/".to_string());
        assert!(parse_url("https://203.0.113.1/").is_err());
        assert!(parse_url("http://example.com/")
            .unwrap_err()
            .contains("DNS"));
        let argv: Vec<String> = ["-s", "--interface", "10.0.1.21", "http://203.0.113.1/"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let a = parse(&argv, &["--interface"], &["-s"]).unwrap();
        assert_eq!(a.operands, vec!["http://203.0.113.1/"]);
        assert_eq!(
            a.addr(&["--interface"]).unwrap(),
            Some("10.0.1.21".parse().unwrap())
        );
        assert!(parse(&["-x".to_string()], &[], &[]).is_err());
        assert!(parse(&["-c".to_string()], &["-c"], &[]).is_err());
        assert!(a.secs(&["-W"], 2.0).unwrap() == Duration::from_secs(2));
        assert_eq!(cidr("10.0.1.100/24").unwrap().prefix_len(), 24);
        assert_eq!(cidr("10.0.1.100").unwrap().prefix_len(), 32);
        assert!(cidr("10.0.1.100/33").is_err());
    }
}
