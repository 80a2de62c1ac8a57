//! The lab for real (issue 4): `eiplab up` with the netns backend builds namespaces joined by
//! TUN devices to the gateway, and the seeds' procedures run verbatim inside them.
//!
//! Needs root and /dev/net/tun; without them every test prints a loud SKIP and returns, except
//! under `EIPLAB_NO_SKIP=1` (set by `.ci/run`), where it fails. Tools used inside the lab's
//! namespaces: `ip` and `ss` (iproute2), `curl`, `python3`, `ping` (iputils-ping), `tcpdump`,
//! `turnserver` and `turnutils_natdiscovery` (coturn), plus `sh` (for its builtin `kill`).
//!
//! Network safety: traffic is only ever sent inside the lab's namespaces (`ip netns exec`);
//! nothing is added to the root namespace. Every process a test starts is killed by its pid.
//! Every wait has a deadline. Tests run in parallel: each lab has its own prefix and API port.

mod common;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_eiplab");
/// How long `up` may take to print `eiplab: ready`.
const READY_LIMIT: Duration = Duration::from_secs(30);
/// Default limit of one command run inside a namespace.
const CMD_LIMIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Preconditions

fn privileged(test: &str) -> bool {
    common::privileged(test, true)
}

fn example(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    assert!(
        p.exists(),
        "expected the example lab file {} to exist",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}{}n{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// Running commands with deadlines and captured output

type Buf = Arc<Mutex<String>>;

/// Drains `r` into a shared buffer in a thread, line by line, so the child never blocks.
fn drain<R: Read + Send + 'static>(r: R) -> Buf {
    let buf: Buf = Arc::default();
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => b.lock().unwrap().push_str(&String::from_utf8_lossy(&line)),
            }
        }
    });
    buf
}

fn text(b: &Buf) -> String {
    b.lock().unwrap().clone()
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.contains(char::is_whitespace) || a.is_empty() {
            s.push_str(&format!(" {a:?}"));
        } else {
            s.push(' ');
            s.push_str(&a);
        }
    }
    s
}

/// The outcome of one bounded command.
#[derive(Debug)]
struct Run {
    cmd: String,
    code: Option<i32>,
    timed_out: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }
    fn out(&self) -> &str {
        self.stdout.trim()
    }
    #[track_caller]
    fn expect_ok(self, why: &str) -> Run {
        assert!(
            self.ok(),
            "{why}: expected `{}` to succeed; got {self}",
            self.cmd
        );
        self
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` {} stdout={:?} stderr={:?}",
            self.cmd,
            if self.timed_out {
                "timed out (killed)".to_string()
            } else {
                format!("exited {:?}", self.code)
            },
            self.stdout,
            self.stderr
        )
    }
}

/// Sends `sig` (e.g. "TERM", "KILL") to one process, by pid.
fn signal(pid: u32, sig: &str) {
    // The shell's builtin `kill`: no dependency on procps.
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -{sig} {pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits for `child` up to `limit`; None when it is still running.
fn wait_for(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `cmd` to completion, killing it (by pid) after `limit`.
fn run(mut cmd: Command, limit: Duration) -> Run {
    let what = describe(&cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("expected to start `{what}`; got {e}"));
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let (code, timed_out) = match wait_for(&mut child, limit) {
        Some(s) => (s.code(), false),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            (None, true)
        }
    };
    // Let the drain threads see EOF (a grandchild could keep a pipe open: do not wait forever).
    std::thread::sleep(Duration::from_millis(20));
    Run {
        cmd: what,
        code,
        timed_out,
        stdout: text(&out),
        stderr: text(&err),
    }
}

fn cmd<S: AsRef<std::ffi::OsStr>>(prog: &str, args: &[S]) -> Command {
    let mut c = Command::new(prog);
    c.args(args);
    c
}

/// Retries `f` until it returns Some, or panics after `limit` with `what` and the last attempt.
#[track_caller]
fn retry<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) => {
                if Instant::now() >= deadline {
                    panic!("{what}: not reached within {limit:?}; last attempt: {last}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// A process running in the background inside a namespace; killed by pid on drop.

/// Runs `f` until its command succeeds (see [`retry`]); returns the successful run.
#[track_caller]
fn retry_ok(limit: Duration, what: &str, mut f: impl FnMut() -> Run) -> Run {
    retry(limit, what, || {
        let r = f();
        if r.ok() {
            Ok(r)
        } else {
            Err(r.to_string())
        }
    })
}

struct Bg {
    child: Child,
    what: String,
    out: Buf,
    err: Buf,
}

impl Bg {
    fn out(&self) -> String {
        text(&self.out)
    }
    fn err(&self) -> String {
        text(&self.err)
    }
    /// Waits until `pred(stdout, stderr)` holds; panics after `limit`.
    #[track_caller]
    fn wait_until(&mut self, limit: Duration, what: &str, pred: impl Fn(&str, &str) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            if pred(&self.out(), &self.err()) {
                return;
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                if pred(&self.out(), &self.err()) {
                    return;
                }
                panic!(
                    "{what}: expected `{}` to keep running; it exited {s}; stdout={:?} stderr={:?}",
                    self.what,
                    self.out(),
                    self.err()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{what}: not seen within {limit:?} from `{}`; stdout={:?} stderr={:?}",
                    self.what,
                    self.out(),
                    self.err()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
    /// SIGTERM (lets tcpdump flush), then SIGKILL after 3 s.
    fn stop(&mut self) {
        if self.alive() {
            signal(self.child.id(), "TERM");
            if wait_for(&mut self.child, Duration::from_secs(3)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The lab guard

struct Lab {
    child: Option<Child>,
    exit: Option<ExitStatus>,
    prefix: String,
    port: u16,
    file: PathBuf,
    dir: PathBuf,
    out: Buf,
    err: Buf,
    /// `up`'s arguments, for a restart.
    args: Vec<OsString>,
}

/// Starts `eiplab ARGS` with stdout and stderr drained into buffers.
fn spawn_up(args: &[OsString]) -> (Child, Buf, Buf) {
    let mut c = Command::new(BIN);
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = describe(&c);
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("expected to start `{what}`; got {e}"));
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    (child, out, err)
}

impl Lab {
    /// `eiplab up examples/<name> --prefix <unique> --api-listen 127.0.0.1:<free> --state <tmp>`;
    /// returns once `eiplab: ready` is printed.
    #[track_caller]
    fn up(name: &str) -> Lab {
        Lab::up_with(name, |_| Vec::new())
    }

    /// Like `up`, with extra arguments computed from the lab's temp dir (e.g. `--pcap DIR`).
    #[track_caller]
    fn up_with(name: &str, extra: impl FnOnce(&Path) -> Vec<OsString>) -> Lab {
        let file = example(name);
        Lab::start(|_| file, extra)
    }

    /// Like `up`, from a lab file given as text: it is written as `lab.toml` in the lab's temp
    /// dir (removed with the lab, after `eiplab down` has had it if it was needed).
    #[track_caller]
    fn up_toml(toml: &str) -> Lab {
        Lab::start(
            |dir| {
                let f = dir.join("lab.toml");
                std::fs::write(&f, toml)
                    .unwrap_or_else(|e| panic!("expected to write {}; got {e}", f.display()));
                f
            },
            |_| Vec::new(),
        )
    }

    /// `eiplab up FILE …` where `file` gives the lab file's path from the lab's temp dir.
    #[track_caller]
    fn start(
        file: impl FnOnce(&Path) -> PathBuf,
        extra: impl FnOnce(&Path) -> Vec<OsString>,
    ) -> Lab {
        let prefix = format!("{}-", unique("t"));
        let dir = std::env::temp_dir().join(format!("eiplab-lab-{}", prefix.trim_end_matches('-')));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = file(&dir);
        // A dead earlier run with the same pid could have left namespaces with this prefix.
        for ns in namespaces(&prefix) {
            let _ = run(cmd("ip", &["netns", "del", &ns]), CMD_LIMIT);
        }
        let port = free_port();
        let mut args: Vec<OsString> = vec!["up".into(), file.clone().into()];
        for a in ["--backend", "netns", "--prefix", &prefix, "--api-listen"] {
            args.push(a.into());
        }
        args.push(format!("127.0.0.1:{port}").into());
        args.push("--state".into());
        args.push(dir.join("state").into());
        args.extend(extra(&dir));
        let (child, out, err) = spawn_up(&args);
        let mut lab = Lab {
            child: Some(child),
            exit: None,
            prefix,
            port,
            file,
            dir,
            out,
            err,
            args,
        };
        lab.wait_ready();
        lab
    }

    /// Waits for `eiplab: ready` on the current `up`'s stdout.
    #[track_caller]
    fn wait_ready(&mut self) {
        let what = format!("eiplab {:?}", self.args);
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            if text(&self.out).lines().any(|l| l.trim() == "eiplab: ready") {
                break;
            }
            if let Ok(Some(s)) = self.child.as_mut().unwrap().try_wait() {
                self.exit = Some(s);
                std::thread::sleep(Duration::from_millis(50));
                panic!(
                    "expected `{what}` to print `eiplab: ready` and keep running; it exited {s}\n\
                     stdout:\n{}\nstderr:\n{}",
                    text(&self.out),
                    text(&self.err)
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "expected `{what}` to print `eiplab: ready` within {READY_LIMIT:?}; it did not\n\
                     stdout:\n{}\nstderr:\n{}",
                    text(&self.out),
                    text(&self.err)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills `up` with SIGKILL and starts it again with the same arguments (prefix, state).
    #[track_caller]
    fn kill_and_restart(&mut self) {
        let mut child = self.child.take().expect("up is running");
        signal(child.id(), "KILL");
        let _ = wait_for(&mut child, Duration::from_secs(10));
        let (child, out, err) = spawn_up(&self.args);
        self.child = Some(child);
        self.out = out;
        self.err = err;
        self.exit = None;
        self.wait_ready();
    }

    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs `args` inside namespace `{P}{ns}` (`ip netns exec`), bounded by `limit`.
    fn exec_for(&self, ns: &str, args: &[&str], limit: Duration) -> Run {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(ns)]).args(args);
        run(c, limit)
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Run {
        self.exec_for(ns, args, CMD_LIMIT)
    }

    fn sh(&self, ns: &str, script: &str) -> Run {
        self.exec(ns, &["sh", "-c", script])
    }

    /// `curl -s --max-time 5 [extra…] URL` inside `ns`.
    fn curl(&self, ns: &str, extra: &[&str], url: &str) -> Run {
        let mut a = vec!["curl", "-s", "-S", "--max-time", "5"];
        a.extend_from_slice(extra);
        a.push(url);
        self.exec_for(ns, &a, Duration::from_secs(10))
    }

    /// Starts `args` in the background inside `ns`; the returned guard kills it by pid on drop.
    /// (`ip netns exec` execs the command, so the pid is the command's own.)
    fn bg(&self, ns: &str, args: &[&str]) -> Bg {
        self.bg_cmd(ns, args, false)
    }

    /// Like `bg`, in a process group of its own (a signal to the test's group does not reach
    /// it; the guard still kills it by pid).
    fn bg_group(&self, ns: &str, args: &[&str]) -> Bg {
        self.bg_cmd(ns, args, true)
    }

    fn bg_cmd(&self, ns: &str, args: &[&str], own_group: bool) -> Bg {
        let mut c = Command::new("ip");
        if own_group {
            use std::os::unix::process::CommandExt;
            c.process_group(0);
        }
        c.args(["netns", "exec", &self.ns(ns)])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = describe(&c);
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("expected to start `{what}`; got {e}"));
        let out = drain(child.stdout.take().unwrap());
        let err = drain(child.stderr.take().unwrap());
        Bg {
            child,
            what,
            out,
            err,
        }
    }

    /// A tiny HTTP server in `ns` on `addr:port` answering each GET with the client's address.
    /// Returns once it answers locally (from inside `ns` itself, not through the gateway).
    #[track_caller]
    fn http_server(&self, ns: &str, addr: &str, port: u16) -> Bg {
        let mut s = self.bg(
            ns,
            &["python3", "-u", "-c", HTTP_SERVER, addr, &port.to_string()],
        );
        s.wait_until(Duration::from_secs(10), "HTTP server ready", |o, _| {
            o.contains("listening")
        });
        let local = if addr == "0.0.0.0" { "127.0.0.1" } else { addr };
        retry_ok(
            Duration::from_secs(5),
            "HTTP server answers locally",
            || self.curl(ns, &["--max-time", "2"], &format!("http://{local}:{port}/")),
        );
        s
    }

    fn http_get(&self, path: &str) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let url = format!("http://{}{path}", self.endpoint());
        let mut r = agent
            .get(&url)
            .call()
            .unwrap_or_else(|e| panic!("expected GET {url} to answer; got {e}"));
        let status = r.status().as_u16();
        (status, r.body_mut().read_to_string().unwrap_or_default())
    }

    /// GET /_eiplab/status as JSON.
    #[track_caller]
    fn status(&self) -> Value {
        let (code, body) = self.http_get("/_eiplab/status");
        assert_eq!(
            code, 200,
            "expected GET /_eiplab/status to be 200; got {code}: {body}"
        );
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("expected JSON from /_eiplab/status; got {e}: {body}"))
    }

    /// Polls the status until `pred` holds (counters lag up to ~250 ms).
    #[track_caller]
    fn wait_status(&self, limit: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            if Instant::now() >= deadline {
                panic!(
                    "expected {what} within {limit:?}; status counters were:\n{}",
                    serde_json::to_string_pretty(&s["counters"]).unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `eiplab api ACTION K=V… --endpoint …`: (success, JSON body).
    fn api(&self, action: &str, params: &[(&str, &str)]) -> (bool, Value) {
        let mut c = Command::new(BIN);
        c.args(["api", action]);
        for (k, v) in params {
            c.arg(format!("{k}={v}"));
        }
        c.args(["--endpoint", &self.endpoint()]);
        let r = run(c, Duration::from_secs(15));
        let v = serde_json::from_str(r.out()).unwrap_or(Value::String(r.to_string()));
        (r.ok(), v)
    }

    #[track_caller]
    fn api_ok(&self, action: &str, params: &[(&str, &str)]) -> Value {
        let (ok, v) = self.api(action, params);
        assert!(ok, "expected {action} {params:?} to succeed; got {v}");
        v
    }

    fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => match c.try_wait() {
                Ok(None) => true,
                Ok(Some(s)) => {
                    self.exit = Some(s);
                    false
                }
                Err(_) => false,
            },
            None => false,
        }
    }

    /// Sends `sig` to `up` and waits up to `limit` for it to exit.
    fn signal_up(&mut self, sig: &str, limit: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        signal(child.id(), sig);
        let s = wait_for(&mut child, limit);
        match s {
            Some(s) => self.exit = Some(s),
            None => self.child = Some(child),
        }
        s
    }

    fn stderr(&self) -> String {
        text(&self.err)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            match wait_for(&mut child, Duration::from_secs(10)) {
                Some(s) => self.exit = Some(s),
                None => {
                    eprintln!(
                        "lab {}: `up` ignored SIGTERM for 10 s; SIGKILL",
                        self.prefix
                    );
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        let left = namespaces(&self.prefix);
        if !left.is_empty() {
            eprintln!(
                "lab {}: left after `up` exited: {left:?}; running `eiplab down`",
                self.prefix
            );
            let mut c = Command::new(BIN);
            c.arg("down")
                .arg(&self.file)
                .args(["--prefix", &self.prefix]);
            let r = run(c, Duration::from_secs(30));
            if !r.ok() {
                eprintln!("lab {}: {r}", self.prefix);
            }
            for ns in namespaces(&self.prefix) {
                let _ = run(cmd("ip", &["netns", "del", &ns]), CMD_LIMIT);
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "---- lab {} (`eiplab up {}`) exit {:?}\nstdout:\n{}\nstderr:\n{}\n----",
                self.prefix,
                self.file.display(),
                self.exit,
                text(&self.out),
                text(&self.err)
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Namespaces whose name starts with `prefix`.
fn namespaces(prefix: &str) -> Vec<String> {
    let r = run(cmd("ip", &["netns", "list"]), CMD_LIMIT);
    r.stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Link names in the root namespace.
fn root_links() -> BTreeSet<String> {
    let r = run(cmd("ip", &["-o", "link"]), CMD_LIMIT);
    r.stdout
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap().to_string())
        .collect()
}

/// Root-namespace routes and rules that mention an address range a lab uses.
fn root_lab_routes() -> BTreeSet<String> {
    let mut all = run(
        cmd("ip", &["-4", "route", "show", "table", "all"]),
        CMD_LIMIT,
    )
    .stdout;
    all.push_str(&run(cmd("ip", &["-4", "rule", "list"]), CMD_LIMIT).stdout);
    all.lines()
        .filter(|l| {
            [
                "198.51.100.",
                "203.0.113.",
                "100.100.100.",
                "100.64.",
                "10.0.1.",
                "10.0.2.",
            ]
            .iter()
            .any(|r| l.contains(r))
        })
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Status helpers

fn counters_of<'a>(s: &'a Value, kind: &str, key: &str, id: &str) -> Option<&'a Value> {
    s["counters"][kind]
        .as_array()?
        .iter()
        .find(|e| e[key] == id)
}

/// Drops of `reason` on EIP `allocation_id`.
fn eip_drops(s: &Value, allocation_id: &str, reason: &str) -> u64 {
    counters_of(s, "eips", "allocation_id", allocation_id)
        .and_then(|e| e["drops"][reason].as_u64())
        .unwrap_or(0)
}

/// Drops of `reason` on ENI `eni_id`.
fn eni_drops(s: &Value, eni_id: &str, reason: &str) -> u64 {
    counters_of(s, "enis", "eni_id", eni_id)
        .and_then(|e| e["drops"][reason].as_u64())
        .unwrap_or(0)
}

fn global_drops(s: &Value, reason: &str) -> u64 {
    s["counters"]["global"]["drops"][reason]
        .as_u64()
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Guest programs

/// argv: ADDR PORT [NAME]. Answers every GET with `[NAME ]CLIENT-ADDRESS` (HTTP/1.1, so a
/// client may keep its connection); prints `listening` when bound.
const HTTP_SERVER: &str = r#"
import http.server, socketserver, sys
name = sys.argv[3] + " " if len(sys.argv) > 3 else ""
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        b = (name + self.client_address[0] + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    def server_bind(self):
        # HTTPServer.server_bind would look up the address's name (DNS: none in the lab).
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
s = S((sys.argv[1], int(sys.argv[2])), H)
print("listening", flush=True)
s.serve_forever()
"#;

/// argv: PROTO:ADDR:PORT… Listens on each; prints `ready`, then `tcp ADDR:PORT FROM` per accepted
/// connection and `udp ADDR:PORT FROM` per datagram.
const LISTENERS: &str = r#"
import socket, sys, select
socks = {}
for spec in sys.argv[1:]:
    proto, addr, port = spec.split(":")
    if proto == "tcp":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, int(port)))
        s.listen(64)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, int(port)))
    socks[s] = (proto, addr + ":" + port)
print("ready", flush=True)
while True:
    r, _, _ = select.select(list(socks), [], [])
    for s in r:
        proto, name = socks[s]
        if proto == "tcp":
            c, peer = s.accept()
            print("tcp", name, peer[0], flush=True)
            c.close()
        else:
            d, peer = s.recvfrom(65535)
            print("udp", name, peer[0], flush=True)
"#;

/// argv: ADDR PORT. Exit 0 when a TCP connection is established within 2 s.
const TCP_CONNECT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
print("connected", flush=True)
s.close()
"#;

/// argv: ADDR PORT KIND. Sends three datagrams: a SIP request (KIND `sip`) or plain bytes (the
/// engine recognises SIP by its payload too, so a control must not look like SIP).
const UDP_SEND: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
msg = b"plain datagram, no protocol" if sys.argv[3] == "plain" else b"OPTIONS sip:lab@" + sys.argv[1].encode() + b" SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.1:5060\r\nCall-ID: 1@203.0.113.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
for _ in range(3):
    s.sendto(msg, (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.05)
"#;

// ---------------------------------------------------------------------------------------------
// 1. NAT mode

#[test]
fn nat_mode_curl_reaches_guest_and_guest_sees_no_eip() {
    if !privileged("nat_mode_curl_reaches_guest_and_guest_sees_no_eip") {
        return;
    }
    let lab = Lab::up("one-eip.toml");
    let _server = lab.http_server("i-web", "0.0.0.0", 8080);

    // `up` says what to try next, with this lab's prefix and endpoint; the first one works
    // as printed (the guest reaches the echo service, which sees the EIP).
    let out = text(&lab.out);
    let tries: Vec<&str> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("try: "))
        .collect();
    let ep = lab.endpoint();
    assert_eq!(tries.len(), 3, "{out}");
    assert!(
        tries[0].starts_with(&format!(
            "eiplab exec --prefix {} i-web -- curl -s http://203.0.113.1/",
            lab.prefix
        )),
        "{out}"
    );
    assert_eq!(tries[1], format!("eiplab status --endpoint {ep}"), "{out}");
    assert_eq!(
        tries[2],
        format!("eiplab api DescribeEipAddresses --endpoint {ep}"),
        "{out}"
    );
    let cmdline: Vec<&str> = tries[0]
        .split("  #")
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let seen = retry_ok(
        Duration::from_secs(10),
        "the first command `up` suggests",
        || run(cmd(BIN, &cmdline[1..]), CMD_LIMIT),
    );
    assert_eq!(seen.out(), "198.51.100.10", "{seen}");

    // From the Internet, the EIP reaches the guest's server, which sees the client's address.
    let seen = retry_ok(
        Duration::from_secs(10),
        "curl http://198.51.100.10:8080/ from internet",
        || lab.curl("internet", &[], "http://198.51.100.10:8080/"),
    )
    .out()
    .to_string();
    assert_eq!(
        seen, "203.0.113.1",
        "expected the guest's server to see the Internet client 203.0.113.1; it saw {seen:?}"
    );

    // The guest holds only its private IP: NAT mode does not put the EIP on the interface.
    let addr = lab
        .exec("i-web", &["ip", "-4", "addr"])
        .expect_ok("ip -4 addr in i-web");
    assert!(
        addr.stdout.contains("10.0.1.10/"),
        "expected `ip -4 addr` in i-web to show 10.0.1.10; got:\n{}",
        addr.stdout
    );
    assert!(
        !addr.stdout.contains("198.51.100.10"),
        "expected `ip -4 addr` in i-web NOT to show the EIP 198.51.100.10 (NAT mode); got:\n{}",
        addr.stdout
    );

    // Outbound, the private IP leaves as its EIP (what ifconfig.me would show).
    let r = lab.curl(
        "i-web",
        &["--interface", "10.0.1.10"],
        "http://203.0.113.1/",
    );
    assert!(
        r.ok(),
        "expected curl --interface 10.0.1.10 http://203.0.113.1/ to succeed; got {r}"
    );
    assert_eq!(
        r.out(),
        "198.51.100.10",
        "expected the echo service to see i-web's EIP 198.51.100.10; got {r}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Seed 004: several EIPs on a secondary ENI in NAT mode, policy routing typed verbatim

#[test]
fn seed_004_policy_routing() {
    if !privileged("seed_004_policy_routing") {
        return;
    }
    let lab = Lab::up("multi-eip-nat.toml");
    let _server = lab.http_server("i-app", "10.0.1.21", 8080);

    // The image configures eth1's addresses but no route for it (contract).
    let addr = lab
        .exec("i-app", &["ip", "-4", "addr", "show", "dev", "eth1"])
        .expect_ok("ip addr eth1");
    for ip in ["10.0.1.20/", "10.0.1.21/", "10.0.1.22/"] {
        assert!(
            addr.stdout.contains(ip),
            "expected eth1 in i-app to hold {ip}; `ip -4 addr show dev eth1` gave:\n{}",
            addr.stdout
        );
    }
    assert!(
        !addr.stdout.contains("198.51.100."),
        "expected no EIP on eth1 (NAT mode); got:\n{}",
        addr.stdout
    );

    // Before the policy routes: the SYN comes in on eth1, the SYN-ACK from 10.0.1.21 leaves by
    // eth0 (the only default route), and eni-app0 does not own 10.0.1.21: source_check.
    let r = lab.curl(
        "internet",
        &["--max-time", "3"],
        "http://198.51.100.22:8080/",
    );
    assert!(
        !r.ok(),
        "expected inbound curl to 198.51.100.22 to fail before the policy routes (reply leaves by eth0); got {r}"
    );
    let s = lab.wait_status(
        Duration::from_secs(3),
        "source_check drops counted on eni-app0",
        |s| eni_drops(s, "eni-app0", "source_check") > 0,
    );
    assert_eq!(
        eni_drops(&s, "eni-app1", "source_check"),
        0,
        "expected no source_check drops on eni-app1 (the replies left by eth0); counters: {}",
        s["counters"]
    );
    let r = lab.curl(
        "i-app",
        &["--max-time", "3", "--interface", "10.0.1.21"],
        "http://203.0.113.1/",
    );
    assert!(
        !r.ok(),
        "expected curl --interface 10.0.1.21 to fail before the policy routes; got {r}"
    );

    // Seed 004, step 2: typed as the guide types it.
    let seed = "ip -4 route add default via 10.0.1.253 dev eth1 metric 1001 && \\\n\
                \x20   ip -4 route add default via 10.0.1.253 dev eth1 table 1001 && \\\n\
                \x20   ip -4 rule add from 10.0.1.20 lookup 1001 && \\\n\
                \x20   ip -4 rule add from 10.0.1.21 lookup 1001 && \\\n\
                \x20   ip -4 rule add from 10.0.1.22 lookup 1001";
    lab.sh("i-app", seed)
        .expect_ok("seed 004 policy routing commands");
    let shown = lab
        .sh("i-app", "ip route list table 1001 && ip rule list")
        .expect_ok("seed 004: ip route list table 1001 && ip rule list");
    assert!(
        shown.stdout.contains("default via 10.0.1.253 dev eth1"),
        "expected table 1001 to hold `default via 10.0.1.253 dev eth1`; got:\n{}",
        shown.stdout
    );
    for ip in ["10.0.1.20", "10.0.1.21", "10.0.1.22"] {
        assert!(
            shown.stdout.contains(&format!("from {ip} lookup 1001")),
            "expected `ip rule list` to show `from {ip} lookup 1001`; got:\n{}",
            shown.stdout
        );
    }

    // tcpdump -i eth1, started before the traffic.
    let mut dump = lab.bg("i-app", &["tcpdump", "-i", "eth1", "-n", "-l", "-c", "200"]);
    dump.wait_until(
        Duration::from_secs(10),
        "tcpdump listening on eth1",
        |_, e| e.contains("listening on"),
    );

    // Seed 004, step 3: each private IP leaves with its own EIP.
    for (ip, eip) in [
        ("10.0.1.20", "198.51.100.21"),
        ("10.0.1.21", "198.51.100.22"),
        ("10.0.1.22", "198.51.100.23"),
    ] {
        let got = retry_ok(
            Duration::from_secs(10),
            &format!("curl --interface {ip}"),
            || lab.curl("i-app", &["--interface", ip], "http://203.0.113.1/"),
        )
        .out()
        .to_string();
        assert_eq!(
            got, eip,
            "expected curl --interface {ip} http://203.0.113.1/ to report {ip}'s EIP {eip}; got {got:?}"
        );
    }

    // Inbound now works: the reply follows the rule to eth1.
    let r = lab.curl("internet", &[], "http://198.51.100.22:8080/");
    assert!(
        r.ok(),
        "expected inbound curl to 198.51.100.22:8080 to work after the policy routes; got {r}"
    );
    assert_eq!(
        r.out(),
        "203.0.113.1",
        "expected the server to see 203.0.113.1; got {r}"
    );

    // The seed's own check: ping the EIP from outside while tcpdump watches eth1.
    let p = lab.exec(
        "internet",
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", "198.51.100.21"],
    );
    assert!(p.ok(), "expected ping 198.51.100.21 (10.0.1.20 on eth1) to answer after the policy routes; got {p}");

    let want = [
        (
            "10.0.1.21.8080 > 203.0.113.1.",
            "TCP reply from 10.0.1.21 out of eth1",
        ),
        (
            "IP 203.0.113.1 > 10.0.1.20: ICMP echo request",
            "ICMP echo request in on eth1",
        ),
        (
            "IP 10.0.1.20 > 203.0.113.1: ICMP echo reply",
            "ICMP echo reply out of eth1",
        ),
        ("IP 10.0.1.22.", "curl from 10.0.1.22 out of eth1"),
    ];
    let seen_all = |o: &str| {
        want.iter().all(|(w, _)| o.lines().any(|l| l.contains(w)))
            && o.lines().any(|l| l.contains("> 10.0.1.21.8080"))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen_all(&dump.out()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    dump.stop();
    let o = dump.out();
    for (w, what) in want {
        assert!(
            o.lines().any(|l| l.contains(w)),
            "expected `tcpdump -i eth1` to show {what} (a line containing {w:?}); it printed:\n{o}\nstderr: {}",
            dump.err()
        );
    }
    assert!(
        o.lines().any(|l| l.contains("> 10.0.1.21.8080")),
        "expected `tcpdump -i eth1` to show the inbound TCP to 10.0.1.21.8080; it printed:\n{o}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Cut-through (BINDED)

#[test]
fn cut_through() {
    if !privileged("cut_through") {
        return;
    }
    let lab = Lab::up("cut-through.toml");

    let eth1 = lab
        .exec("i-ct", &["ip", "-4", "addr", "show", "dev", "eth1"])
        .expect_ok("ip -4 addr show dev eth1 in i-ct");
    assert!(
        eth1.stdout.contains("inet 198.51.100.30/"),
        "expected the cut-through EIP 198.51.100.30 on eth1 in i-ct; got:\n{}",
        eth1.stdout
    );
    let all = lab
        .exec("i-ct", &["ip", "-4", "addr"])
        .expect_ok("ip -4 addr in i-ct");
    assert!(
        !all.stdout.contains("198.51.100.10"),
        "expected the NAT-mode EIP 198.51.100.10 NOT to appear in i-ct; got:\n{}",
        all.stdout
    );

    // A server bound to the EIP itself is reachable from the Internet.
    let _server = lab.http_server("i-ct", "198.51.100.30", 8080);
    let seen = retry_ok(
        Duration::from_secs(10),
        "curl http://198.51.100.30:8080/",
        || lab.curl("internet", &[], "http://198.51.100.30:8080/"),
    )
    .out()
    .to_string();
    assert_eq!(
        seen, "203.0.113.1",
        "expected the server on the EIP to see 203.0.113.1; got {seen:?}"
    );

    // Outbound from the EIP leaves unchanged; from eth0 through the NAT EIP.
    let r = lab.curl(
        "i-ct",
        &["--interface", "198.51.100.30"],
        "http://203.0.113.1/",
    );
    assert_eq!(
        (r.ok(), r.out()),
        (true, "198.51.100.30"),
        "expected the echo service to see the cut-through EIP; got {r}"
    );
    let r = lab.curl("i-ct", &["--interface", "10.0.1.10"], "http://203.0.113.1/");
    assert_eq!(
        (r.ok(), r.out()),
        (true, "198.51.100.10"),
        "expected the echo service to see the NAT EIP of eth0; got {r}"
    );

    // Cloud services: blackholed through eth1, reachable through eth0.
    let url = "http://100.100.100.200/latest/meta-data/instance-id";
    let r = lab.curl("i-ct", &["--max-time", "3", "--interface", "eth1"], url);
    assert!(
        !r.ok(),
        "expected the metadata service to be unreachable through eth1; got {r}"
    );
    let s = lab.wait_status(
        Duration::from_secs(3),
        "cut_through_blackhole counted (global and on eni-ct1 or eip-ct-bind)",
        |s| {
            global_drops(s, "cut_through_blackhole") > 0
                && (eni_drops(s, "eni-ct1", "cut_through_blackhole") > 0
                    || eip_drops(s, "eip-ct-bind", "cut_through_blackhole") > 0)
        },
    );
    let _ = s;
    let r = lab.curl("i-ct", &["--interface", "eth0"], url);
    assert_eq!(
        (r.ok(), r.out()),
        (true, "i-ct"),
        "expected instance-id i-ct from the metadata service through eth0; got {r}"
    );

    // Private addresses: unreachable through eth1, reachable through eth0 (vRouter to i-peer).
    let r = lab.exec(
        "i-ct",
        &[
            "ping",
            "-I",
            "eth1",
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "1",
            "10.0.1.11",
        ],
    );
    assert!(!r.ok(), "expected ping -I eth1 10.0.1.11 to fail (no private network on a cut-through ENI); got {r}");
    lab.wait_status(
        Duration::from_secs(3),
        "cut_through_private counted (global and on eni-ct1 or eip-ct-bind)",
        |s| {
            global_drops(s, "cut_through_private") > 0
                && (eni_drops(s, "eni-ct1", "cut_through_private") > 0
                    || eip_drops(s, "eip-ct-bind", "cut_through_private") > 0)
        },
    );
    retry_ok(
        Duration::from_secs(10),
        "ping -c1 -W1 10.0.1.11 via eth0 (vRouter to i-peer)",
        || lab.exec("i-ct", &["ping", "-c", "1", "-W", "1", "10.0.1.11"]),
    );
}

// ---------------------------------------------------------------------------------------------
// 4. ALG drop under NAT, pass through cut-through

#[test]
fn alg_drop_nat_vs_cut_through() {
    if !privileged("alg_drop_nat_vs_cut_through") {
        return;
    }
    let lab = Lab::up("cut-through.toml");
    let mut l = lab.bg(
        "i-ct",
        &[
            "python3",
            "-u",
            "-c",
            LISTENERS,
            "tcp:10.0.1.10:21",
            "udp:10.0.1.10:5060",
            "tcp:10.0.1.10:8021",
            "udp:10.0.1.10:5070", // controls: non-ALG ports under NAT
            "tcp:198.51.100.30:21",
            "udp:198.51.100.30:5060",
        ],
    );
    l.wait_until(
        Duration::from_secs(10),
        "listeners ready in i-ct",
        |o, _| o.contains("ready"),
    );

    let connect = |addr: &str, port: &str| {
        lab.exec_for(
            "internet",
            &["python3", "-c", TCP_CONNECT, addr, port],
            Duration::from_secs(6),
        )
    };
    let send_udp = |addr: &str, port: &str, kind: &str| {
        lab.exec_for(
            "internet",
            &["python3", "-c", UDP_SEND, addr, port, kind],
            Duration::from_secs(5),
        )
        .expect_ok("send UDP datagrams");
    };

    // Controls: the NAT EIP works for ordinary ports (so a failure below is the ALG rule).
    retry_ok(
        Duration::from_secs(10),
        "TCP connect to 198.51.100.10:8021 (control)",
        || connect("198.51.100.10", "8021"),
    );
    retry(
        Duration::from_secs(10),
        "UDP to 198.51.100.10:5070 reaches 10.0.1.10:5070 (control)",
        || {
            send_udp("198.51.100.10", "5070", "plain");
            std::thread::sleep(Duration::from_millis(300));
            if l.out().contains("udp 10.0.1.10:5070 203.0.113.1") {
                Ok(())
            } else {
                Err(l.out())
            }
        },
    );

    // NAT mode: FTP control and SIP are dropped.
    let r = connect("198.51.100.10", "21");
    assert!(
        !r.ok(),
        "expected TCP to 198.51.100.10:21 (NAT EIP, FTP) to be dropped; got {r}"
    );
    send_udp("198.51.100.10", "5060", "sip");
    let s = lab.wait_status(
        Duration::from_secs(3),
        "alg_ftp and alg_sip drops on eip-ct-nat",
        |s| eip_drops(s, "eip-ct-nat", "alg_ftp") > 0 && eip_drops(s, "eip-ct-nat", "alg_sip") > 0,
    );
    let _ = s;
    std::thread::sleep(Duration::from_millis(300));
    let o = l.out();
    assert!(
        !o.contains("tcp 10.0.1.10:21 ") && !o.contains("udp 10.0.1.10:5060 "),
        "expected nothing to reach port 21/5060 behind the NAT EIP; the listener printed:\n{o}"
    );

    // Cut-through: the same protocols pass.
    retry_ok(
        Duration::from_secs(10),
        "TCP connect to 198.51.100.30:21 (cut-through)",
        || connect("198.51.100.30", "21"),
    );
    retry(
        Duration::from_secs(10),
        "UDP to 198.51.100.30:5060 received in i-ct (cut-through)",
        || {
            send_udp("198.51.100.30", "5060", "sip");
            std::thread::sleep(Duration::from_millis(300));
            if l.out().contains("udp 198.51.100.30:5060 203.0.113.1") {
                Ok(())
            } else {
                Err(l.out())
            }
        },
    );
    assert!(
        l.out().contains("tcp 198.51.100.30:21 203.0.113.1"),
        "expected the listener on 198.51.100.30:21 to accept the Internet's connection; it printed:\n{}",
        l.out()
    );
    let s = lab.status();
    for reason in ["alg_ftp", "alg_sip"] {
        assert_eq!(
            eip_drops(&s, "eip-ct-bind", reason),
            0,
            "expected no {reason} drops on the cut-through EIP; counters: {}",
            s["counters"]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Associate / unassociate while a ping runs

/// Reply timestamps (ping -D) in ping's output.
fn reply_times(out: &str) -> Vec<f64> {
    out.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| {
            let l = l.strip_prefix('[')?;
            l[..l.find(']')?].parse().ok()
        })
        .collect()
}

/// AllocateEipAddress, then AssociateEipAddress on `instance` (NAT, its primary private IP);
/// returns (AllocationId, address) once the EIP is InUse.
#[track_caller]
fn allocate_for_instance(lab: &Lab, instance: &str) -> (String, String) {
    let v = lab.api_ok("AllocateEipAddress", &[("Bandwidth", "100")]);
    let id = v["AllocationId"]
        .as_str()
        .expect("AllocationId")
        .to_string();
    let addr = v["EipAddress"].as_str().expect("EipAddress").to_string();
    lab.api_ok(
        "AssociateEipAddress",
        &[
            ("AllocationId", id.as_str()),
            ("InstanceId", instance),
            ("InstanceType", "EcsInstance"),
        ],
    );
    wait_eip_status(lab, &id, "InUse");
    (id, addr)
}

#[track_caller]
fn wait_eip_status(lab: &Lab, id: &str, want: &str) {
    retry(
        Duration::from_secs(5),
        &format!("{id} Status {want}"),
        || {
            let v = lab.api_ok("DescribeEipAddresses", &[("AllocationId", id)]);
            let st = v["EipAddresses"]["EipAddress"][0]["Status"].clone();
            if st == want {
                Ok(())
            } else {
                Err(format!("Status {st}"))
            }
        },
    );
}

#[test]
fn associate_while_pinging() {
    if !privileged("associate_while_pinging") {
        return;
    }
    let mut lab = Lab::up("one-eip.toml");
    let mut ping = lab.bg(
        "internet",
        &["ping", "-D", "-n", "-i", "0.2", "-W", "1", "198.51.100.10"],
    );
    ping.wait_until(
        Duration::from_secs(10),
        "ping replies from 198.51.100.10",
        |o, _| !reply_times(o).is_empty(),
    );

    // Unassociate: replies stop within ~1.5 s (500 ms transition + margin).
    let t0 = now_unix();
    lab.api_ok("UnassociateEipAddress", &[("AllocationId", "eip-web")]);
    let deadline = Instant::now() + Duration::from_secs(3);
    while now_unix() < t0 + 3.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let late: Vec<f64> = reply_times(&ping.out())
        .into_iter()
        .filter(|t| *t > t0 + 1.5)
        .map(|t| t - t0)
        .collect();
    assert!(
        late.is_empty(),
        "expected ping replies to stop within 1.5 s of UnassociateEipAddress; replies came at +{late:?} s"
    );
    assert!(
        ping.alive(),
        "expected ping to keep running; stderr: {}",
        ping.err()
    );
    let last = reply_times(&ping.out())
        .into_iter()
        .filter(|t| *t > t0)
        .fold(None, |_, t| Some(t - t0));
    eprintln!("associate_while_pinging: last reply after UnassociateEipAddress at {last:?} s");
    lab.wait_status(
        Duration::from_secs(3),
        "eip_unassociated drops counted",
        |s| global_drops(s, "eip_unassociated") > 0,
    );

    // Associate again: replies resume within ~1.5 s.
    wait_eip_status(&lab, "eip-web", "Available");
    let t1 = now_unix();
    lab.api_ok(
        "AssociateEipAddress",
        &[
            ("AllocationId", "eip-web"),
            ("InstanceId", "i-web"),
            ("InstanceType", "EcsInstance"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let first = loop {
        if let Some(t) = reply_times(&ping.out()).into_iter().find(|t| *t > t1) {
            break Some(t - t1);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    match first {
        Some(d) => {
            eprintln!("associate_while_pinging: first reply {d:.2} s after AssociateEipAddress");
            assert!(
            d <= 1.5,
            "expected ping replies to resume within 1.5 s of AssociateEipAddress; first came after {d:.2} s"
            )
        }
        None => panic!(
            "expected ping replies to resume within 1.5 s of AssociateEipAddress; none in 5 s; ping output tail:\n{}",
            ping.out().lines().rev().take(10).collect::<Vec<_>>().join("\n")
        ),
    }
    wait_eip_status(&lab, "eip-web", "InUse");
    assert!(
        lab.alive(),
        "expected `eiplab up` to survive; it exited {:?}\nstderr:\n{}",
        lab.exit,
        lab.stderr()
    );
    let s = lab.status();
    assert!(
        s.is_object(),
        "expected the status to answer after the changes; got {s}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5b. Two labs of the same file side by side (different prefixes and API ports)

#[test]
fn two_labs_side_by_side() {
    if !privileged("two_labs_side_by_side") {
        return;
    }
    let a = Lab::up("one-eip.toml");
    let b = Lab::up("one-eip.toml");
    let _sa = a.http_server("i-web", "0.0.0.0", 8080);
    let _sb = b.http_server("i-web", "0.0.0.0", 8080);
    for lab in [&a, &b] {
        let r = lab.curl(
            "i-web",
            &["--interface", "10.0.1.10"],
            "http://203.0.113.1/",
        );
        assert_eq!(
            (r.ok(), r.out()),
            (true, "198.51.100.10"),
            "lab {}: expected the echo service to see the EIP 198.51.100.10; got {r}",
            lab.prefix
        );
        let seen = retry_ok(
            Duration::from_secs(10),
            "curl the EIP from internet",
            || lab.curl("internet", &[], "http://198.51.100.10:8080/"),
        )
        .out()
        .to_string();
        assert_eq!(
            seen, "203.0.113.1",
            "lab {}: expected the guest to see 203.0.113.1; got {seen:?}",
            lab.prefix
        );
    }
    // Each lab counts only its own traffic.
    let (sa, sb) = (a.status(), b.status());
    for (lab, s) in [(&a, &sa), (&b, &sb)] {
        let eip = counters_of(s, "eips", "allocation_id", "eip-web");
        let to_guest = eip
            .and_then(|e| e["to_guest_packets"].as_u64())
            .unwrap_or(0);
        assert!(
            to_guest > 0,
            "lab {}: expected to_guest_packets > 0 on eip-web; counters: {}",
            lab.prefix,
            s["counters"]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Teardown

/// Links and lab-range routes of the root namespace must come back to what they were; other
/// labs of parallel tests may briefly hold links there while they build, so wait for them.
#[track_caller]
fn assert_root_clean(
    prefix: &str,
    links_before: &BTreeSet<String>,
    routes_before: &BTreeSet<String>,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let new: Vec<String> = root_links().difference(links_before).cloned().collect();
        let ours: Vec<&String> = new
            .iter()
            .filter(|n| n.contains(prefix.trim_end_matches('-')))
            .collect();
        assert!(
            ours.is_empty(),
            "expected no link of lab {prefix} in the root namespace; found {ours:?}"
        );
        let routes: Vec<String> = root_lab_routes()
            .difference(routes_before)
            .cloned()
            .collect();
        assert!(
            routes.is_empty(),
            "expected no route or rule for the lab's ranges in the root namespace; new ones: {routes:?}"
        );
        if new.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("expected `ip -o link` in the root namespace unchanged; new links: {new:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn teardown_sigterm() {
    if !privileged("teardown_sigterm") {
        return;
    }
    let links = root_links();
    let routes = root_lab_routes();
    let mut lab = Lab::up("one-eip.toml");
    let prefix = lab.prefix.clone();
    let ns = namespaces(&prefix);
    for want in ["internet", "i-web"] {
        assert!(
            ns.contains(&lab.ns(want)),
            "expected namespace {} while the lab runs; `ip netns list` has {ns:?}",
            lab.ns(want)
        );
    }
    let exit = lab.signal_up("TERM", Duration::from_secs(5));
    assert!(
        exit.is_some(),
        "expected `eiplab up` to exit within 5 s of SIGTERM; it is still running\nstderr:\n{}",
        lab.stderr()
    );
    assert_eq!(
        exit.unwrap().code(),
        Some(0),
        "expected `eiplab up` to exit 0 after SIGTERM; got {:?}\nstderr:\n{}",
        exit,
        lab.stderr()
    );
    let left = namespaces(&prefix);
    assert!(
        left.is_empty(),
        "expected no namespace of the lab after SIGTERM; `ip netns list` still has {left:?}"
    );
    assert_root_clean(&prefix, &links, &routes);
}

#[test]
fn teardown_sigkill_then_down() {
    if !privileged("teardown_sigkill_then_down") {
        return;
    }
    let links = root_links();
    let routes = root_lab_routes();
    let mut lab = Lab::up("one-eip.toml");
    let prefix = lab.prefix.clone();
    let exit = lab.signal_up("KILL", Duration::from_secs(5));
    assert!(exit.is_some(), "expected `eiplab up` to die on SIGKILL");
    let left = namespaces(&prefix);
    assert!(
        left.contains(&lab.ns("i-web")) && left.contains(&lab.ns("internet")),
        "expected the namespaces of a SIGKILLed lab to remain (for `down` to remove); `ip netns list` has {left:?}"
    );
    // Processes still living in the lab's namespaces (a SIGKILL leaves no chance to stop them):
    // `down` must not leave them behind (they would keep the namespaces and TUN devices alive).
    let mut pids = Vec::new();
    for ns in &left {
        let r = run(cmd("ip", &["netns", "pids", ns]), CMD_LIMIT);
        pids.extend(r.stdout.split_whitespace().map(str::to_string));
    }
    let mut c = Command::new(BIN);
    c.arg("down").arg(&lab.file).args(["--prefix", &prefix]);
    let r = run(c, Duration::from_secs(30));
    assert!(
        r.ok(),
        "expected `eiplab down --prefix {prefix}` to exit 0; got {r}"
    );
    let left = namespaces(&prefix);
    assert!(
        left.is_empty(),
        "expected `eiplab down` to remove every namespace of the lab; left: {left:?}"
    );
    let alive: Vec<&String> = pids
        .iter()
        .filter(|p| Path::new(&format!("/proc/{p}")).exists())
        .collect();
    assert!(
        alive.is_empty(),
        "expected no process of the killed lab to survive `down`; still alive: {alive:?} (were in the lab's namespaces)"
    );
    assert_root_clean(&prefix, &links, &routes);
    // Running down again finds nothing and still exits 0.
    let mut c = Command::new(BIN);
    c.arg("down").arg(&lab.file).args(["--prefix", &prefix]);
    let r = run(c, Duration::from_secs(30));
    assert!(
        r.ok(),
        "expected a second `eiplab down` (nothing left) to exit 0; got {r}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Metadata and metrics

#[test]
fn metadata_and_metrics() {
    if !privileged("metadata_and_metrics") {
        return;
    }
    let lab = Lab::up("one-eip.toml");
    for (key, want) in [
        ("private-ipv4", "10.0.1.10"),
        ("eipv4", "198.51.100.10"),
        ("instance-id", "i-web"),
    ] {
        let url = format!("http://100.100.100.200/latest/meta-data/{key}");
        let r = lab.curl("i-web", &[], &url);
        assert!(r.ok(), "expected GET {url} from i-web to succeed; got {r}");
        assert_eq!(r.out(), want, "expected metadata {key} = {want}; got {r}");
    }

    // Traffic through the EIP, then its packet counter in Prometheus text.
    let r = lab.curl("i-web", &[], "http://203.0.113.1/");
    assert_eq!(
        (r.ok(), r.out()),
        (true, "198.51.100.10"),
        "expected the echo service to see the EIP; got {r}"
    );
    retry(
        Duration::from_secs(3),
        "eiplab_eip_packets_total for eip-web > 0 in /metrics",
        || {
            let (code, body) = lab.http_get("/metrics");
            if code != 200 {
                return Err(format!("GET /metrics answered {code}: {body}"));
            }
            let counted = body.lines().any(|l| {
                l.starts_with("eiplab_eip_packets_total{")
                    && l.contains("allocation_id=\"eip-web\"")
                    && l.rsplit(' ')
                        .next()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| v > 0.0)
            });
            if counted {
                Ok(())
            } else {
                Err(format!("no eiplab_eip_packets_total{{allocation_id=\"eip-web\",…}} > 0 line in:\n{body}"))
            }
        },
    );
}

// ---------------------------------------------------------------------------------------------
// 8. `eiplab exec` and --pcap

/// Packet lines `tcpdump -r FILE -n` prints.
fn pcap_lines(file: &Path) -> Run {
    run(
        cmd(
            "tcpdump",
            &[OsString::from("-r"), file.as_os_str().into(), "-n".into()],
        ),
        Duration::from_secs(10),
    )
}

#[test]
fn exec_and_pcap() {
    if !privileged("exec_and_pcap") {
        return;
    }
    let mut lab = Lab::up_with("one-eip.toml", |dir| {
        vec!["--pcap".into(), dir.join("pcap").into_os_string()]
    });
    let pcap = lab.dir.join("pcap");

    let mut c = Command::new(BIN);
    c.args([
        "exec",
        "--prefix",
        &lab.prefix,
        "i-web",
        "--",
        "ip",
        "-4",
        "addr",
    ]);
    let r = run(c, CMD_LIMIT);
    assert!(
        r.ok(),
        "expected `eiplab exec i-web -- ip -4 addr` to succeed; got {r}"
    );
    assert!(
        r.stdout.contains("10.0.1.10/"),
        "expected i-web's 10.0.1.10 in `eiplab exec` output; got {r}"
    );
    let mut c = Command::new(BIN);
    c.args([
        "exec",
        "--prefix",
        &lab.prefix,
        "i-web",
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    let r = run(c, CMD_LIMIT);
    assert_eq!(
        r.code,
        Some(3),
        "expected `eiplab exec` to exit with the command's code 3; got {r}"
    );

    let r = lab.curl("i-web", &[], "http://203.0.113.1/");
    assert_eq!(
        (r.ok(), r.out()),
        (true, "198.51.100.10"),
        "expected the echo service to see the EIP; got {r}"
    );

    let guest = pcap.join("i-web.eth0.pcap");
    let inet = pcap.join("internet.eth0.pcap");
    let has = |f: &Path, needle: &str| {
        let r = pcap_lines(f);
        r.stdout.lines().any(|l| l.contains(needle))
    };
    // The guest side sees the private address, the Internet side the EIP.
    let want = [(&guest, "10.0.1.10."), (&inet, "198.51.100.10.")];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !want.iter().all(|(f, n)| has(f, n)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    if !want.iter().all(|(f, n)| has(f, n)) {
        // Files may be flushed only at exit: stop the lab and look again.
        eprintln!("exec_and_pcap: packets not readable while running; checking after SIGTERM");
        lab.signal_up("TERM", Duration::from_secs(5));
    }
    for (f, needle) in want {
        assert!(
            f.exists(),
            "expected pcap file {} to exist; the directory holds {:?}",
            f.display(),
            std::fs::read_dir(&pcap).map(|d| d
                .filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .collect::<Vec<_>>())
        );
        let r = pcap_lines(f);
        assert!(
            r.stdout
                .lines()
                .any(|l| l.contains(needle) && l.contains("203.0.113.1.80")),
            "expected `tcpdump -r {}` to show the curl to 203.0.113.1:80 from {needle}…; got {r}",
            f.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The vRouter and hairpin (SPEC §2): private addresses between instances, and a guest reaching
// another guest's EIP through the public path, seen there with its own EIP as the source.

#[test]
fn vrouter_and_hairpin() {
    if !privileged("vrouter_and_hairpin") {
        return;
    }
    let lab = Lab::up("cut-through.toml");
    let _server = lab.http_server("i-ct", "0.0.0.0", 8080);

    // Private: i-peer -> i-ct by private address, no translation.
    let r = lab.curl("i-peer", &["--max-time", "3"], "http://10.0.1.10:8080/");
    assert!(
        r.ok(),
        "expected i-peer to reach 10.0.1.10:8080 through the vRouter; got {r}"
    );
    assert_eq!(
        r.out(),
        "10.0.1.11",
        "expected i-ct's server to see i-peer's private address; got {r}"
    );

    // Without an EIP, i-peer cannot use the public path at all.
    let r = lab.curl("i-peer", &["--max-time", "2"], "http://198.51.100.10:8080/");
    assert!(
        !r.ok(),
        "expected i-peer (no EIP) not to reach 198.51.100.10; got {r}"
    );
    lab.wait_status(
        Duration::from_secs(3),
        "no_public_ip counted on eni-peer0",
        |s| eni_drops(s, "eni-peer0", "no_public_ip") > 0,
    );

    // Give i-peer an EIP through the API, then hairpin to i-ct's NAT EIP.
    let (_, addr) = allocate_for_instance(&lab, "i-peer");
    let seen = retry_ok(Duration::from_secs(5), "hairpin curl", || {
        lab.curl("i-peer", &["--max-time", "2"], "http://198.51.100.10:8080/")
    })
    .out()
    .to_string();
    assert_eq!(
        seen, addr,
        "expected i-ct's server to see the hairpinned request from i-peer's EIP {addr}; it saw {seen:?}"
    );
    lab.wait_status(Duration::from_secs(3), "hairpin counted", |s| {
        s["counters"]["global"]["hairpin"].as_u64().unwrap_or(0) > 0
    });
}

// ---------------------------------------------------------------------------------------------
// A killed `up` restarted with the same --state and --prefix: the stale namespaces are
// replaced and every association made through the API is back in the dataplane.

#[test]
fn sigkill_restart_restores_associations() {
    if !privileged("sigkill_restart_restores_associations") {
        return;
    }
    let mut lab = Lab::up("cut-through.toml");
    let (id, addr) = allocate_for_instance(&lab, "i-peer");

    lab.kill_and_restart();
    assert!(
        lab.stderr().contains("killed run"),
        "expected the restarted `up` to say it removed what the killed run left; stderr:\n{}",
        lab.stderr()
    );
    wait_eip_status(&lab, &id, "InUse");
    let _server = lab.http_server("i-peer", "0.0.0.0", 8080);
    let r = retry_ok(Duration::from_secs(5), "curl the restored EIP", || {
        lab.curl(
            "internet",
            &["--max-time", "2"],
            &format!("http://{addr}:8080/"),
        )
    });
    assert_eq!(
        r.out(),
        "203.0.113.1",
        "expected i-peer's server behind {addr}; got {r}"
    );
    // The lab file's own cut-through ENI is a device again, with its EIP.
    let a = lab.exec("i-ct", &["ip", "-4", "addr", "show", "dev", "eth1"]);
    assert!(
        a.out().contains("198.51.100.30/32"),
        "expected eth1 of i-ct to hold 198.51.100.30 after the restart; got {a}"
    );
}

// ---------------------------------------------------------------------------------------------
// A bad lab file is refused before anything is made, with the field and the fix.

#[test]
fn bad_lab_file_creates_nothing() {
    if !privileged("bad_lab_file_creates_nothing") {
        return;
    }
    let prefix = format!("{}-", unique("b"));
    let dir = std::env::temp_dir().join(format!("eiplab-bad-{}", prefix.trim_end_matches('-')));
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read_to_string(example("one-eip.toml")).unwrap();
    // A private IP outside its vSwitch.
    let bad = good.replace("\"10.0.1.10\"", "\"10.0.9.10\"");
    assert_ne!(
        good, bad,
        "the example changed: this test must find 10.0.1.10 in it"
    );
    let file = dir.join("bad.toml");
    std::fs::write(&file, bad).unwrap();
    let links_before = root_links();
    let mut c = Command::new(BIN);
    c.arg("up")
        .arg(&file)
        .args(["--prefix", &prefix, "--api-listen"])
        .arg(format!("127.0.0.1:{}", free_port()));
    let r = run(c, Duration::from_secs(20));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!r.ok(), "expected `up` to refuse the file; got {r}");
    assert!(
        r.stderr.contains("10.0.9.10") && r.stderr.contains("enis"),
        "expected the error to name the ENI's private IP field; got {r}"
    );
    assert!(
        namespaces(&prefix).is_empty(),
        "expected no namespace with prefix {prefix}; found {:?}",
        namespaces(&prefix)
    );
    assert_eq!(
        root_links(),
        links_before,
        "expected no new link in the root namespace"
    );
}

// ---------------------------------------------------------------------------------------------
// AttachNetworkInterface / DetachNetworkInterface through the API while the lab runs: the ENI
// becomes eth1 in the instance (here a cut-through ENI: it holds its EIP) and goes again.

#[test]
fn attach_and_detach_through_the_api() {
    if !privileged("attach_and_detach_through_the_api") {
        return;
    }
    let lab = Lab::up("nat-and-cut-through.toml");
    let has_eth1 = || {
        lab.exec("i-multi", &["ip", "-4", "-o", "addr"])
            .out()
            .contains("eth1")
    };
    assert!(!has_eth1(), "expected i-multi to start with eth0 only");
    lab.api_ok(
        "AttachNetworkInterface",
        &[
            ("NetworkInterfaceId", "eni-spare"),
            ("InstanceId", "i-multi"),
        ],
    );
    retry(Duration::from_secs(3), "eth1 with 198.51.100.30", || {
        let a = lab.exec(
            "i-multi",
            &["ip", "-4", "-o", "addr", "show", "dev", "eth1"],
        );
        if a.out().contains("198.51.100.30/32") {
            Ok(())
        } else {
            Err(a.to_string())
        }
    });
    let r = retry_ok(
        Duration::from_secs(5),
        "echo through the cut-through EIP",
        || {
            lab.curl(
                "i-multi",
                &["--max-time", "2", "--interface", "198.51.100.30"],
                "http://203.0.113.1/",
            )
        },
    );
    assert_eq!(
        r.out(),
        "198.51.100.30",
        "expected the echo to see the EIP itself; got {r}"
    );
    lab.api_ok(
        "DetachNetworkInterface",
        &[
            ("NetworkInterfaceId", "eni-spare"),
            ("InstanceId", "i-multi"),
        ],
    );
    retry(Duration::from_secs(3), "eth1 gone", || {
        if has_eth1() {
            Err("eth1 still there".into())
        } else {
            Ok(())
        }
    });
    let rules = lab.exec("i-multi", &["ip", "rule"]);
    assert!(
        !rules.out().contains("198.51.100.30"),
        "expected the EIP's policy rule removed with the ENI; got {rules}"
    );

    // A MULTI_BINDED ENI on a DHCP instance: private IP and both EIPs, one rule per EIP, and
    // every rule gone with the ENI.
    lab.api_ok(
        "AttachNetworkInterface",
        &[
            ("NetworkInterfaceId", "eni-multi"),
            ("InstanceId", "i-multi"),
        ],
    );
    retry(
        Duration::from_secs(3),
        "eth1 with 10.0.2.20 and both EIPs",
        || {
            let a = lab.exec(
                "i-multi",
                &["ip", "-4", "-o", "addr", "show", "dev", "eth1"],
            );
            let o = a.out();
            if o.contains("10.0.2.20/24")
                && o.contains("198.51.100.41/32")
                && o.contains("198.51.100.42/32")
            {
                Ok(())
            } else {
                Err(a.to_string())
            }
        },
    );
    let rules = lab.exec("i-multi", &["ip", "rule"]);
    for eip in ["198.51.100.41", "198.51.100.42"] {
        assert!(
            rules.out().contains(eip),
            "expected a rule from {eip}; got {rules}"
        );
    }
    lab.api_ok(
        "DetachNetworkInterface",
        &[
            ("NetworkInterfaceId", "eni-multi"),
            ("InstanceId", "i-multi"),
        ],
    );
    retry(Duration::from_secs(3), "eth1 gone again", || {
        if has_eth1() {
            Err("eth1 still there".into())
        } else {
            Ok(())
        }
    });
    let rules = lab.exec("i-multi", &["ip", "rule"]);
    assert!(
        !rules.out().contains("198.51.100.4"),
        "expected the MULTI_BINDED EIPs' rules removed with the ENI; got {rules}"
    );
}

// ---------------------------------------------------------------------------------------------
// UDP coalescing: a burst of one flow crosses as segmented super-packets and arrives as sent

const UDP_SINK: &str = r#"
import socket, sys
n, size = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.bind(("0.0.0.0", 7000))
s.settimeout(5)
print("listening", flush=True)
seqs, bad = [], 0
try:
    while len(seqs) < n:
        d, _ = s.recvfrom(65536)
        seq = int.from_bytes(d[:4], "big")
        if len(d) != size or d[4:] != bytes([seq % 251]) * (size - 4):
            bad += 1
        seqs.append(seq)
except socket.timeout:
    pass
print("got %d bad %d in-order %s" % (len(seqs), bad, seqs == sorted(seqs)), flush=True)
"#;

const UDP_BURST: &str = r#"
import socket, sys
n, size = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
for i in range(n):
    s.sendto(i.to_bytes(4, "big") + bytes([i % 251]) * (size - 4), ("198.51.100.10", 7000))
"#;

#[test]
fn udp_bursts_cross_merged_and_arrive_as_sent() {
    if !privileged("udp_bursts_cross_merged_and_arrive_as_sent") {
        return;
    }
    let lab = Lab::up("one-eip.toml");
    let (n, size) = (300, 200);
    let mut merged_seen = false;
    // A burst is merged when the gateway finds several of its datagrams waiting at once,
    // which a tight send loop all but guarantees; a few tries make it certain.
    for attempt in 1..=3 {
        let mut dump = lab.bg(
            "i-web",
            &[
                "tcpdump", "-i", "eth0", "-n", "-q", "-l", "udp", "port", "7000",
            ],
        );
        dump.wait_until(
            Duration::from_secs(10),
            "tcpdump listening on eth0",
            |_, e| e.contains("listening on"),
        );
        let mut sink = lab.bg(
            "i-web",
            &[
                "python3",
                "-u",
                "-c",
                UDP_SINK,
                &n.to_string(),
                &size.to_string(),
            ],
        );
        sink.wait_until(Duration::from_secs(10), "UDP sink ready", |o, _| {
            o.contains("listening")
        });
        lab.exec(
            "internet",
            &[
                "python3",
                "-c",
                UDP_BURST,
                &n.to_string(),
                &size.to_string(),
            ],
        )
        .expect_ok("UDP burst from internet");
        sink.wait_until(Duration::from_secs(10), "UDP sink done", |o, _| {
            o.contains("got ")
        });
        assert!(
            sink.out().contains(&format!("got {n} bad 0 in-order True")),
            "attempt {attempt}: expected all {n} datagrams intact and in order; sink said {:?}",
            sink.out()
        );
        std::thread::sleep(Duration::from_millis(300));
        dump.stop();
        let lengths: Vec<usize> = dump
            .out()
            .lines()
            .filter_map(|l| l.rsplit("length ").next()?.trim().parse().ok())
            .collect();
        assert!(
            !lengths.is_empty(),
            "tcpdump saw the burst: {:?} {:?}",
            dump.out(),
            dump.err()
        );
        assert!(
            lengths.iter().all(|&l| l % size == 0),
            "every packet the guest sees is whole datagrams: {lengths:?}"
        );
        if lengths.iter().any(|&l| l > size) {
            merged_seen = true;
            break;
        }
    }
    assert!(
        merged_seen,
        "expected the guest's capture to show a burst merged into a super-packet (UDP length a \
         multiple of one datagram's)"
    );
}

// ---------------------------------------------------------------------------------------------
// D9–D11: the NAT gateway of examples/nat-gateway.toml carries SNAT, DNAT and hairpin

#[test]
fn nat_gateway_snat_dnat_and_hairpin() {
    if !privileged("nat_gateway_snat_dnat_and_hairpin") {
        return;
    }
    let lab = Lab::up("nat-gateway.toml");
    let _web = lab.http_server("i-web1", "0.0.0.0", 80);

    // SNAT: instances without EIPs reach the internet from the gateway's SNAT EIP, by vSwitch
    // (i-web2 in vsw-a) and by CIDR (i-ha1 in 10.0.2.0/24).
    for inst in ["i-web2", "i-ha1"] {
        let seen = retry_ok(
            Duration::from_secs(10),
            &format!("curl http://203.0.113.1/ from {inst}"),
            || lab.curl(inst, &["--max-time", "3"], "http://203.0.113.1/"),
        )
        .out()
        .to_string();
        assert_eq!(
            seen, "198.51.100.50",
            "expected the echo service to see {inst} as the SNAT EIP 198.51.100.50; it saw {seen:?}"
        );
    }

    // DNAT: 198.51.100.51:8080/tcp -> i-web1:80, which sees the client's own address.
    let seen = retry_ok(
        Duration::from_secs(10),
        "curl http://198.51.100.51:8080/ from internet",
        || {
            lab.curl(
                "internet",
                &["--max-time", "3"],
                "http://198.51.100.51:8080/",
            )
        },
    )
    .out()
    .to_string();
    assert_eq!(
        seen, "203.0.113.1",
        "expected i-web1's server to see the internet client 203.0.113.1 through DNAT; it saw {seen:?}"
    );

    // Hairpin: i-web2 reaches the DNAT port of its own gateway, arriving from the SNAT EIP.
    let r = lab.curl("i-web2", &["--max-time", "3"], "http://198.51.100.51:8080/");
    assert!(
        r.ok(),
        "expected i-web2 to reach 198.51.100.51:8080 by hairpin; got {r}"
    );
    assert_eq!(
        r.out(),
        "198.51.100.50",
        "expected i-web1 to see the hairpinned request from the SNAT EIP; got {r}"
    );

    // Nothing reaches a host through the SNAT EIP unasked, and the drop says why.
    let r = lab.curl("internet", &["--max-time", "2"], "http://198.51.100.50:80/");
    assert!(!r.ok(), "expected no way in through the SNAT EIP; got {r}");
    lab.wait_status(
        Duration::from_secs(3),
        "nat_gateway_no_session counted on eip-ngw-snat",
        |s| eip_drops(s, "eip-ngw-snat", "nat_gateway_no_session") > 0,
    );
    // ping out through SNAT (the ICMP identifier is translated and back).
    let r = lab.exec("i-web2", &["ping", "-c", "2", "-W", "2", "203.0.113.1"]);
    assert!(
        r.ok(),
        "expected i-web2 to ping 203.0.113.1 through SNAT; got {r}"
    );

    // A DNAT entry made through the API carries traffic at once; deleted, it carries none.
    let _web2 = lab.http_server("i-web2", "0.0.0.0", 8000);
    let v = lab.api_ok(
        "CreateForwardEntry",
        &[
            ("RegionId", "cn-shanghai"),
            ("ForwardTableId", "ftb-ngw-a"),
            ("ExternalIp", "198.51.100.51"),
            ("ExternalPort", "9000"),
            ("InternalIp", "10.0.1.12"),
            ("InternalPort", "8000"),
            ("IpProtocol", "TCP"),
        ],
    );
    let id = v["ForwardEntryId"]
        .as_str()
        .expect("ForwardEntryId")
        .to_string();
    let seen = retry_ok(
        Duration::from_secs(5),
        "curl http://198.51.100.51:9000/ after CreateForwardEntry",
        || {
            lab.curl(
                "internet",
                &["--max-time", "2"],
                "http://198.51.100.51:9000/",
            )
        },
    )
    .out()
    .to_string();
    assert_eq!(
        seen, "203.0.113.1",
        "expected i-web2's server behind the new DNAT entry to see the client; it saw {seen:?}"
    );
    lab.api_ok(
        "DeleteForwardEntry",
        &[
            ("RegionId", "cn-shanghai"),
            ("ForwardTableId", "ftb-ngw-a"),
            ("ForwardEntryId", id.as_str()),
        ],
    );
    let r = lab.curl(
        "internet",
        &["--max-time", "2"],
        "http://198.51.100.51:9000/",
    );
    assert!(
        !r.ok(),
        "expected nothing through 198.51.100.51:9000 once its entry is deleted; got {r}"
    );
    let s = lab.status();
    let gws = &s["counters"]["nat_gateways"];
    assert_eq!(
        gws[0]["nat_gateway_id"], "ngw-a",
        "status lists the gateway: {gws}"
    );
    assert!(
        gws[0]["sessions"].as_u64().unwrap_or(0) > 0,
        "expected live sessions on ngw-a in status: {gws}"
    );
}

// ---------------------------------------------------------------------------------------------
// The NAT gateway's NAPT knobs as a real NAT-behaviour client sees them, and a bounded soak

/// A VPC whose two instances (i-a 10.0.1.11 and i-b 10.0.1.12 in vsw-a, no EIPs of their own)
/// reach the internet only through NAT gateway ngw-a's SNAT EIP 198.51.100.50. The line
/// `# KNOBS` is replaced by extra keys of the `[[nat_gateway]]` table (docs/lab-file.md).
const SNAT_LAB: &str = r#"region = "cn-shanghai"

[internet]
cidr = "203.0.113.0/24"
eip_pool = ["198.51.100.0/24"]

[vpc]
cidr = "10.0.0.0/16"

[[vswitch]]
id = "vsw-a"
zone = "cn-shanghai-b"
cidr = "10.0.1.0/24"

[[instance]]
id = "i-a"
vswitch = "vsw-a"
enis = [{ id = "eni-a", private_ips = ["10.0.1.11"] }]

[[instance]]
id = "i-b"
vswitch = "vsw-a"
enis = [{ id = "eni-b", private_ips = ["10.0.1.12"] }]

[[nat_gateway]]
id = "ngw-a"
vswitch = "vsw-a"
private_ip = "10.0.1.250"
created = "2024-01-01"
# KNOBS

[[eip]]
allocation_id = "eip-ngw-snat"
address = "198.51.100.50"

[[association]]
allocation_id = "eip-ngw-snat"
instance_id = "ngw-a"
instance_type = "Nat"

[[snat_entry]]
id = "snat-vsw-a"
nat_gateway = "ngw-a"
source_vswitch_id = "vsw-a"
snat_ip = "198.51.100.50"
"#;

fn snat_lab(knobs: &str) -> String {
    assert!(SNAT_LAB.contains("# KNOBS\n"));
    SNAT_LAB.replace("# KNOBS\n", knobs)
}

/// The behaviours `turnutils_natdiscovery` names in its verdict lines for `what` ("Mapping"
/// or "Filtering"): `NAT with Address and Port Dependent Filtering!` gives
/// "Address and Port Dependent".
fn natdiscovery_verdicts(out: &str, what: &str) -> Vec<String> {
    let tail = format!(" {what}!");
    out.lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("NAT with ")?
                .strip_suffix(tail.as_str())
        })
        .map(str::to_string)
        .collect()
}

/// RFC 5780 behaviour discovery (coturn's `turnutils_natdiscovery -m -f`) from i-a, through
/// ngw-a's SNAT, against coturn's STUN server on two addresses of the internet namespace:
/// each lab file's `mapping` and `filtering` are what the client reports.
#[test]
fn nat_gateway_behaviour_as_turnutils_natdiscovery_sees_it() {
    if !privileged("nat_gateway_behaviour_as_turnutils_natdiscovery_sees_it") {
        return;
    }
    for tool in ["/usr/bin/turnserver", "/usr/bin/turnutils_natdiscovery"] {
        assert!(
            Path::new(tool).exists(),
            "expected {tool} (Debian package coturn; scripts/setup.sh installs it)"
        );
    }
    // (mapping, filtering) knobs, then natdiscovery's words for them. Every value of both
    // knobs appears; the second is the cloud's default.
    let cases = [
        (
            "endpoint-independent",
            "endpoint-independent",
            "Endpoint Independent",
            "Endpoint Independent",
        ),
        (
            "endpoint-independent",
            "address-and-port-dependent",
            "Endpoint Independent",
            "Address and Port Dependent",
        ),
        (
            "address-and-port-dependent",
            "address-dependent",
            "Address and Port Dependent",
            "Address Dependent",
        ),
        (
            "address-dependent",
            "endpoint-independent",
            "Address Dependent",
            "Endpoint Independent",
        ),
    ];
    for (mapping, filtering, want_mapping, want_filtering) in cases {
        let knobs = format!("mapping = \"{mapping}\"\nfiltering = \"{filtering}\"\n");
        let lab = Lab::up_toml(&snat_lab(&knobs));
        // RFC 5780 needs a server with two addresses: the second one inside the lab's own
        // internet namespace.
        lab.exec(
            "internet",
            &["ip", "addr", "add", "203.0.113.2/24", "dev", "eth0"],
        )
        .expect_ok("second address of the internet namespace");
        let pidfile = lab.dir.join("turnserver.pid");
        let userdb = lab.dir.join("turndb");
        let mut turn = lab.bg_group(
            "internet",
            &[
                "turnserver",
                "-n",
                "--stun-only",
                "--no-auth",
                "--no-cli",
                "-L",
                "203.0.113.1",
                "-L",
                "203.0.113.2",
                "-p",
                "3478",
                "--alt-listening-port",
                "3479",
                "--no-tcp",
                "--no-tls",
                "--no-dtls",
                "-m",
                "0",
                "--log-file",
                "stdout",
                "--simple-log",
                "--pidfile",
                pidfile.to_str().unwrap(),
                "--userdb",
                userdb.to_str().unwrap(),
            ],
        );
        // Ready when its four UDP sockets (both addresses, ports 3478 and 3479) are bound.
        retry(
            Duration::from_secs(10),
            "turnserver listening on 203.0.113.{1,2}:{3478,3479}/udp",
            || {
                if !turn.alive() {
                    return Err(format!(
                        "turnserver exited: stdout={:?} stderr={:?}",
                        turn.out(),
                        turn.err()
                    ));
                }
                let r = lab.exec("internet", &["ss", "-Hunl"]);
                let bound = ["203.0.113.1:3478", "203.0.113.1:3479"]
                    .iter()
                    .chain(&["203.0.113.2:3478", "203.0.113.2:3479"])
                    .all(|a| r.stdout.contains(a));
                if bound {
                    Ok(())
                } else {
                    Err(r.to_string())
                }
            },
        );
        let r = lab.exec_for(
            "i-a",
            &[
                "turnutils_natdiscovery",
                "-m",
                "-f",
                "-L",
                "10.0.1.11",
                "-p",
                "3478",
                "203.0.113.1",
            ],
            Duration::from_secs(30),
        );
        let out = format!("{}{}", r.stdout, r.stderr);
        let case = format!("mapping = {mapping:?}, filtering = {filtering:?}");
        assert!(
            !r.timed_out,
            "{case}: expected turnutils_natdiscovery to finish; it timed out; output:\n{out}"
        );
        assert!(
            out.contains("UDP reflexive addr: 198.51.100.50:"),
            "{case}: expected the STUN server to see i-a as the SNAT EIP 198.51.100.50; \
             natdiscovery printed:\n{out}\nturnserver:\n{}",
            turn.out()
        );
        let verdicts: Vec<&str> = out.lines().filter(|l| l.starts_with("NAT with ")).collect();
        eprintln!("{case}: natdiscovery says {verdicts:?}");
        assert_eq!(
            natdiscovery_verdicts(&out, "Mapping"),
            [want_mapping],
            "{case}: expected natdiscovery to find {want_mapping} mapping; it printed:\n{out}"
        );
        assert_eq!(
            natdiscovery_verdicts(&out, "Filtering"),
            [want_filtering],
            "{case}: expected natdiscovery to find {want_filtering} filtering; it printed:\n{out}"
        );
        // The answers filtering kept out were dropped by the gateway, and said so.
        let filtered = eip_drops(&lab.status(), "eip-ngw-snat", "nat_gateway_filtered");
        if filtering == "endpoint-independent" {
            assert_eq!(
                filtered, 0,
                "{case}: expected no nat_gateway_filtered drop with endpoint-independent filtering"
            );
        } else {
            lab.wait_status(
                Duration::from_secs(3),
                &format!("{case}: nat_gateway_filtered counted on eip-ngw-snat"),
                |s| eip_drops(s, "eip-ngw-snat", "nat_gateway_filtered") > 0,
            );
        }
        turn.stop();
    }
}

/// argv: ADDR PORT COUNT. Binds COUNT UDP sockets on ADDR:PORT… and never reads them: what
/// arrives is dropped by the kernel once the (small) buffers are full, and never answered with
/// ICMP port unreachable. Prints `ready`; exits after 120 s at the latest.
const UDP_DISCARD: &str = r#"
import socket, sys, time
socks = []
for p in range(int(sys.argv[2]), int(sys.argv[2]) + int(sys.argv[3])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.bind((sys.argv[1], p))
    socks.append(s)
print("ready", flush=True)
time.sleep(120)
"#;

/// argv: ADDR PORT. Echoes every datagram to its sender; prints `ready` when bound.
const UDP_ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    d, peer = s.recvfrom(2048)
    s.sendto(d, peer)
"#;

/// argv: ADDR PORT RATE STOP_FILE MAX_S. One flow: numbered datagrams to ADDR:PORT at RATE per
/// second from one socket until STOP_FILE exists or MAX_S seconds have passed; prints
/// `echo first reply` at the first echo, then at the end (after 2 s for the last echoes)
/// `echo sent N got M missing [first 50 missing sequence numbers]`.
const UDP_ECHO_CLIENT: &str = r#"
import os, socket, sys, threading, time
addr, port, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
stop, limit = sys.argv[4], float(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.connect((addr, port))
got = set()
def rx():
    while True:
        try:
            d = s.recv(2048)
        except OSError:
            continue
        got.add(int(d.split()[1]))
        if len(got) == 1:
            print("echo first reply", flush=True)
threading.Thread(target=rx, daemon=True).start()
t0 = time.monotonic()
n = 0
while time.monotonic() - t0 < limit and not os.path.exists(stop):
    ahead = n / rate - (time.monotonic() - t0)
    if ahead > 0:
        time.sleep(ahead)
    s.send(b"seq %d " % n + b"x" * 64)
    n += 1
deadline = time.monotonic() + 2
while time.monotonic() < deadline and len(got) < n:
    time.sleep(0.05)
missing = sorted(set(range(n)) - got)
print("echo sent %d got %d missing %s" % (n, n - len(missing), missing[:50]), flush=True)
"#;

/// argv: SRC DST N RATE LIMIT_S DPORT0. N UDP datagrams from SRC to DST through a raw socket
/// (IP_HDRINCL), each a new flow: source ports 1024-65023 in turn, the destination port
/// DPORT0 + i // 64000. Paced at RATE per second in bursts of 64, stopping after LIMIT_S
/// seconds whatever it has sent; prints `flood sent K in T s`.
const UDP_FLOOD: &str = r#"
import socket, struct, sys, time
src, dst = sys.argv[1], sys.argv[2]
n, rate, limit, dport0 = int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
sa, da = socket.inet_aton(src), socket.inet_aton(dst)
payload = b"flood..."
ulen = 8 + len(payload)
# The kernel fills in the IP header's ID and checksum.
iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 0, 0, 64, 17, 0, sa, da)
def words(b):
    return sum(struct.unpack("!%dH" % (len(b) // 2), b))
# The UDP checksum: pseudo-header, length and payload summed once, the ports per packet.
base = words(sa + da) + 17 + ulen + ulen + words(payload)
t0 = time.monotonic()
sent = 0
try:
    while sent < n:
        now = time.monotonic() - t0
        if now > limit:
            break
        ahead = sent / rate - now
        if ahead > 0:
            time.sleep(ahead)
        end = min(n, sent + 64)
        for i in range(sent, end):
            sport = 1024 + i % 64000
            dport = dport0 + i // 64000
            c = base + sport + dport
            while c >> 16:
                c = (c & 0xFFFF) + (c >> 16)
            c = (~c & 0xFFFF) or 0xFFFF
            s.sendto(iph + struct.pack("!HHHH", sport, dport, ulen, c) + payload, (dst, 0))
        sent = end
finally:
    print("flood sent %d in %.2f s" % (sent, time.monotonic() - t0), flush=True)
"#;

/// VmRSS of process `pid`, in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("expected /proc/{pid}/status; got {e}"));
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("expected VmRSS in /proc/{pid}/status: {s}"))
}

/// Bounded soak: 200,000 new UDP flows in at most 30 s through one SNAT EIP of a gateway whose
/// table holds 20,000, while one established flow (a UDP echo exchange started before)
/// carries on.
#[test]
fn nat_gateway_soak_200k_new_flows_keep_memory_flat_and_established_flow_whole() {
    if !privileged("nat_gateway_soak_200k_new_flows_keep_memory_flat_and_established_flow_whole") {
        return;
    }
    const FLOWS: u64 = 200_000;
    const RATE: u64 = 8_000;
    const FLOOD_LIMIT_S: u64 = 30;
    const MAX_SESSIONS: u64 = 20_000;
    const RSS_MARGIN_KIB: u64 = 32 * 1024;
    const ECHO_RATE: u64 = 200;
    // A short UDP timeout: the full table keeps turning over (expired flows make room for new
    // ones, which fill it again), so slots are freed and reused all through the flood.
    let lab = Lab::up_toml(&snat_lab(&format!(
        "max_sessions = {MAX_SESSIONS}\nudp_timeout = 5\n"
    )));
    let up_pid = lab.child.as_ref().expect("up is running").id();

    let mut sink = lab.bg(
        "internet",
        &[
            "python3",
            "-u",
            "-c",
            UDP_DISCARD,
            "203.0.113.1",
            "20000",
            "4",
        ],
    );
    sink.wait_until(
        Duration::from_secs(10),
        "UDP discard sockets bound",
        |o, _| o.contains("ready"),
    );
    let mut echo_server = lab.bg(
        "internet",
        &["python3", "-u", "-c", UDP_ECHO, "203.0.113.1", "7000"],
    );
    echo_server.wait_until(Duration::from_secs(10), "UDP echo server bound", |o, _| {
        o.contains("ready")
    });
    let stop = lab.dir.join("echo.stop");
    let mut echo = lab.bg(
        "i-a",
        &[
            "python3",
            "-u",
            "-c",
            UDP_ECHO_CLIENT,
            "203.0.113.1",
            "7000",
            &ECHO_RATE.to_string(),
            stop.to_str().unwrap(),
            "60",
        ],
    );
    echo.wait_until(
        Duration::from_secs(10),
        "the echo flow's first reply through SNAT",
        |o, _| o.contains("echo first reply"),
    );
    let rss_start = vm_rss_kib(up_pid);

    let mut flood = lab.bg(
        "i-b",
        &[
            "python3",
            "-u",
            "-c",
            UDP_FLOOD,
            "10.0.1.12",
            "203.0.113.1",
            &FLOWS.to_string(),
            &RATE.to_string(),
            &FLOOD_LIMIT_S.to_string(),
            "20000",
        ],
    );
    // Sample the table and `up`'s memory while the flood runs.
    let started = Instant::now();
    let mut sessions_peak = 0;
    let mut samples = 0;
    let mut rss_filled: Option<(u64, f64)> = None;
    let mut rss_peak_after_fill = 0;
    let sessions_of = |s: &Value| s["counters"]["nat_gateways"][0]["sessions"].as_u64();
    loop {
        let running = flood.alive();
        let s = lab.status();
        let rss = vm_rss_kib(up_pid);
        let sessions = sessions_of(&s)
            .unwrap_or_else(|| panic!("expected counters.nat_gateways[0].sessions: {s}"));
        samples += 1;
        sessions_peak = sessions_peak.max(sessions);
        assert!(
            sessions <= MAX_SESSIONS,
            "expected ngw-a's sessions never above max_sessions = {MAX_SESSIONS}; {sessions} at \
             {:.1} s into the flood: {}",
            started.elapsed().as_secs_f64(),
            s["counters"]["nat_gateways"]
        );
        if rss_filled.is_none() && sessions >= MAX_SESSIONS {
            rss_filled = Some((rss, started.elapsed().as_secs_f64()));
        }
        if rss_filled.is_some() {
            rss_peak_after_fill = rss_peak_after_fill.max(rss);
        }
        if !running {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(FLOOD_LIMIT_S + 15),
            "expected the flood to stop by itself within {FLOOD_LIMIT_S} s; it is still running \
             after {:?}: {}",
            started.elapsed(),
            flood.out()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    flood.wait_until(Duration::from_secs(5), "the flood's report", |o, _| {
        o.contains("flood sent ")
    });
    let report = flood.out();
    let (sent, secs): (u64, f64) = report
        .lines()
        .find_map(|l| {
            let mut w = l.strip_prefix("flood sent ")?.split_whitespace();
            let sent = w.next()?.parse().ok()?;
            let secs = w.nth(1)?.parse().ok()?;
            Some((sent, secs))
        })
        .unwrap_or_else(|| panic!("expected `flood sent K in T s` from the flood; got {report:?}"));

    // Let the echo flow run on a moment after the flood, then stop it and read its count.
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&stop, b"").unwrap();
    echo.wait_until(Duration::from_secs(10), "the echo flow's count", |o, _| {
        o.contains("echo sent ")
    });
    let echo_report = echo
        .out()
        .lines()
        .find(|l| l.starts_with("echo sent "))
        .unwrap()
        .to_string();
    let w: Vec<&str> = echo_report.split_whitespace().collect();
    let (echo_sent, echo_got): (u64, u64) = (w[2].parse().unwrap(), w[4].parse().unwrap());

    let s = lab.status();
    let rss_end = vm_rss_kib(up_pid);
    let full = eni_drops(&s, "eni-b", "nat_gateway_session_table_full");
    let global_full = global_drops(&s, "nat_gateway_session_table_full");
    let eni_b = counters_of(&s, "enis", "eni_id", "eni-b").expect("eni-b in status");
    let eni_b_drops: u64 = eni_b["drops"]
        .as_object()
        .map(|d| d.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    // Every flood datagram the gateway read from i-b was forwarded or dropped with a reason.
    let seen = eni_b["from_guest_packets"].as_u64().unwrap_or(0) + eni_b_drops;
    let (rss_fill, fill_at) = rss_filled.unwrap_or((0, 0.0));
    eprintln!(
        "soak: flood sent {sent} new flows in {secs:.2} s ({:.0}/s), the gateway read {seen} \
         from i-b; sessions peak {sessions_peak} of {MAX_SESSIONS} over {samples} samples, \
         table full at {fill_at:.1} s; nat_gateway_session_table_full {full} (global \
         {global_full}); eni-b drops {}; up's VmRSS {rss_start} KiB before the flood, \
         {rss_fill} KiB when the table first filled, peak {rss_peak_after_fill} KiB after, \
         {rss_end} KiB at the end; echo flow: {echo_report}",
        sent as f64 / secs.max(0.001),
        eni_b["drops"]
    );

    assert_eq!(
        sent, FLOWS,
        "expected the flood to send all {FLOWS} flows within {FLOOD_LIMIT_S} s; it said {report:?}"
    );
    assert!(
        seen >= FLOWS * 9 / 10,
        "expected the gateway to read (nearly) all {FLOWS} flood datagrams from i-b; it read \
         {seen}: {eni_b}"
    );
    // (a) The table held its bound and the flood went past it.
    assert_eq!(
        sessions_peak, MAX_SESSIONS,
        "expected the flood to fill ngw-a's table to max_sessions = {MAX_SESSIONS}; the \
         sessions peaked at {sessions_peak}"
    );
    assert!(
        full > 0 && global_full >= full,
        "expected nat_gateway_session_table_full drops for the flows beyond the table; eni-b \
         counted {full}, global {global_full}"
    );
    // (b) Memory stays at what a full table costs, whatever the number of flows.
    assert!(
        rss_peak_after_fill.max(rss_end) <= rss_fill + RSS_MARGIN_KIB,
        "expected up's VmRSS to stay within {RSS_MARGIN_KIB} KiB of its {rss_fill} KiB when the \
         table first filled; it reached {} KiB (at the end {rss_end} KiB)",
        rss_peak_after_fill.max(rss_end)
    );
    // (c) The established flow lost nothing.
    assert!(
        echo_sent >= ECHO_RATE * 5 && echo_got == echo_sent,
        "expected every datagram of the echo flow started before the flood to come back; {echo_report}"
    );
    sink.stop();
    echo_server.stop();
}

// ---------------------------------------------------------------------------------------------
// D12: an EIP on a HaVip follows keepalived's master (examples/havip.toml)

/// A keepalived configuration: VRRP in unicast mode (the cloud has no multicast) holding
/// 10.0.1.100 on eth0.
fn keepalived_conf(name: &str, state: &str, priority: u8, me: &str, peer: &str) -> String {
    format!(
        "global_defs {{\n  router_id {name}\n  enable_script_security\n}}\n\
         vrrp_instance VI_1 {{\n  state {state}\n  interface eth0\n  virtual_router_id 51\n  \
         priority {priority}\n  advert_int 1\n  unicast_src_ip {me}\n  unicast_peer {{\n    {peer}\n  }}\n  \
         virtual_ipaddress {{\n    10.0.1.100/32 dev eth0\n  }}\n}}\n"
    )
}

impl Lab {
    /// An HTTP server in `ns` on 0.0.0.0:`port` answering each GET with `NS CLIENT-ADDRESS`;
    /// returns once it answers locally.
    #[track_caller]
    fn named_http_server(&self, ns: &str, port: u16) -> Bg {
        let mut s = self.bg(
            ns,
            &[
                "python3",
                "-u",
                "-c",
                HTTP_SERVER,
                "0.0.0.0",
                &port.to_string(),
                ns,
            ],
        );
        s.wait_until(Duration::from_secs(10), "HTTP server ready", |o, _| {
            o.contains("listening")
        });
        retry_ok(
            Duration::from_secs(5),
            "HTTP server answers locally",
            || {
                self.curl(
                    ns,
                    &["--max-time", "2"],
                    &format!("http://127.0.0.1:{port}/"),
                )
            },
        );
        s
    }

    /// The instance that holds `havip` in `status`.
    fn havip_holder(&self, havip: &str) -> String {
        let s = self.status();
        s["HaVips"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|h| h["HaVipId"] == havip)
            .and_then(|h| h["MasterInstanceId"].as_str())
            .unwrap_or_default()
            .to_string()
    }
}

#[test]
fn havip_follows_keepalived_failover_within_5s_and_nothing_reaches_the_old_master() {
    if !privileged("havip_follows_keepalived_failover_within_5s_and_nothing_reaches_the_old_master")
    {
        return;
    }
    let lab = Lab::up("havip.toml");
    let eip_url = "http://198.51.100.60/";
    // Who answers the EIP ("i-ka1 203.0.113.1"), or the failure.
    let ask = |limit: &str| lab.curl("internet", &["--max-time", limit], eip_url);

    // The lab's own failover call moves the holder; the API's codes for the wrong instance.
    assert_eq!(lab.havip_holder("havip-a"), "i-ka1");
    let fail_over = |to: &str| {
        run(
            cmd(
                BIN,
                &["failover", "havip-a", to, "--endpoint", &lab.endpoint()],
            ),
            CMD_LIMIT,
        )
    };
    let r = fail_over("i-ka2");
    assert!(r.ok() && r.out().contains("held by i-ka2"), "{r}");
    assert_eq!(lab.havip_holder("havip-a"), "i-ka2");
    let (_, metrics) = lab.http_get("/metrics");
    assert!(
        metrics.contains("eiplab_havip_holder{havip=\"havip-a\",instance=\"i-ka2\"} 1\n")
            && metrics.contains("eiplab_havip_holder{havip=\"havip-a\",instance=\"i-ka1\"} 0\n"),
        "{metrics}"
    );
    let r = fail_over("i-nobody");
    assert!(!r.ok() && r.stderr.contains("ResourceNotAssociated"), "{r}");
    assert!(fail_over("i-ka1").ok());

    let _web1 = lab.named_http_server("i-ka1", 80);
    let _web2 = lab.named_http_server("i-ka2", 80);
    let conf = |name: &str, state: &str, prio: u8, me: &str, peer: &str| {
        let dir = lab.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("keepalived.conf");
        std::fs::write(&f, keepalived_conf(name, state, prio, me, peer)).unwrap();
        dir
    };
    let keepalived = |ns: &str, dir: &Path| {
        let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
        lab.bg(
            ns,
            &[
                "keepalived",
                "--dont-fork",
                "--log-console",
                "--log-detail",
                "-f",
                &p("keepalived.conf"),
                "-p",
                &p("keepalived.pid"),
                "-r",
                &p("vrrp.pid"),
                "-c",
                &p("checkers.pid"),
            ],
        )
    };
    // The backup first, so that the master's VRRP packets have somewhere to go.
    let d2 = conf("ka2", "BACKUP", 100, "10.0.1.12", "10.0.1.11");
    let mut ka2 = keepalived("i-ka2", &d2);
    let d1 = conf("ka1", "MASTER", 150, "10.0.1.11", "10.0.1.12");
    let mut ka1 = keepalived("i-ka1", &d1);
    ka1.wait_until(Duration::from_secs(15), "i-ka1 becomes MASTER", |o, e| {
        o.contains("Entering MASTER STATE") || e.contains("Entering MASTER STATE")
    });
    let seen = retry_ok(Duration::from_secs(10), "the EIP answered by i-ka1", || {
        let r = ask("2");
        if r.out().starts_with("i-ka1 ") {
            r
        } else {
            Run { code: Some(1), ..r }
        }
    });
    assert_eq!(
        seen.out(),
        "i-ka1 203.0.113.1",
        "expected i-ka1 to see the internet client through the EIP (NAT)"
    );
    assert_eq!(lab.havip_holder("havip-a"), "i-ka1");

    // Every packet for the HaVip's address that reaches i-ka1 from now on, timestamped.
    let mut dump = lab.bg(
        "i-ka1",
        &[
            "tcpdump",
            "-i",
            "eth0",
            "-n",
            "-l",
            "-tt",
            "dst",
            "host",
            "10.0.1.100",
        ],
    );
    dump.wait_until(Duration::from_secs(10), "tcpdump listening", |_, e| {
        e.contains("listening on")
    });

    // Stop the master: the backup takes the address, the lab moves the HaVip, and the EIP
    // reaches i-ka2 within 5 s.
    let stopped = Instant::now();
    ka1.stop();
    let moved = loop {
        let r = ask("1");
        if r.out().starts_with("i-ka2 ") {
            break std::time::SystemTime::now();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(5),
            "expected the EIP to reach i-ka2 within 5 s of stopping i-ka1's keepalived; last \
             answer {r}; keepalived on i-ka2: {:?}",
            ka2.out()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = stopped.elapsed();
    assert_eq!(lab.havip_holder("havip-a"), "i-ka2");
    // Traffic goes on, all of it to the new master.
    for _ in 0..20 {
        let r = ask("2");
        assert!(r.out().starts_with("i-ka2 "), "after the move: {r}");
    }
    dump.stop();
    let after: Vec<String> = dump
        .out()
        .lines()
        .filter(|l| {
            let ts: f64 = l
                .split_whitespace()
                .next()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0.0);
            let moved = moved
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            ts > moved
        })
        .map(String::from)
        .collect();
    assert!(
        after.is_empty(),
        "expected no packet for 10.0.1.100 at the old master after the move ({took:?} after \
         the stop); tcpdump saw: {after:#?}"
    );
    let lines = run(
        cmd(BIN, &["status", "--endpoint", &lab.endpoint()]),
        CMD_LIMIT,
    )
    .expect_ok("eiplab status")
    .stdout;
    assert!(
        lines.contains("havip havip-a 10.0.1.100: held by i-ka2, standby i-ka1, EIP 198.51.100.60"),
        "{lines}"
    );
    ka2.stop();

    // A HaVip the API creates moves the same way: a guest adds its address by hand.
    let v = lab.api_ok(
        "CreateHaVip",
        &[
            ("RegionId", "cn-shanghai"),
            ("VSwitchId", "vsw-a"),
            ("IpAddress", "10.0.1.101"),
        ],
    );
    let id = v["HaVipId"].as_str().expect("HaVipId").to_string();
    for i in ["i-ka1", "i-ka2"] {
        lab.api_ok(
            "AssociateHaVip",
            &[
                ("RegionId", "cn-shanghai"),
                ("HaVipId", &id),
                ("InstanceId", i),
            ],
        );
    }
    assert_eq!(lab.havip_holder(&id), "i-ka1");
    lab.exec(
        "i-ka2",
        &["ip", "addr", "add", "10.0.1.101/32", "dev", "eth0"],
    )
    .expect_ok("ip addr add in i-ka2");
    lab.wait_status(
        Duration::from_secs(3),
        "the API's HaVip held by i-ka2",
        |s| {
            s["HaVips"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|h| h["HaVipId"] == id.as_str() && h["MasterInstanceId"] == "i-ka2")
        },
    );
}

// ---------------------------------------------------------------------------------------------
// D13: an EIP on an internal CLB in front of three web servers (examples/clb.toml)

/// argv: PORT NAME. A UDP server answering each datagram with `NAME CLIENT-ADDRESS`.
const NAMED_UDP_SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("listening", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto((sys.argv[2] + " " + peer[0] + "\n").encode(), peer)
"#;

/// argv: URL_HOST PORT SECONDS. One HTTP/1.1 connection: a request, SECONDS of quiet, a
/// second request on the same connection; prints each answer.
const KEEPALIVE_CLIENT: &str = r#"
import http.client, sys, time
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5)
for k in range(2):
    c.request("GET", "/")
    print(c.getresponse().read().decode().strip(), flush=True)
    if k == 0:
        time.sleep(float(sys.argv[3]))
"#;

/// The health of each backend of `lb`'s listener `listener` ("tcp:80") in `status`.
fn clb_health(s: &Value, lb: &str, listener: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for l in s["counters"]["load_balancers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if l["load_balancer_id"] != lb {
            continue;
        }
        for li in l["listeners"].as_array().into_iter().flatten() {
            if format!("{}:{}", text_of(&li["protocol"]), li["port"]) != listener {
                continue;
            }
            for b in li["backends"].as_array().into_iter().flatten() {
                m.insert(text_of(&b["instance_id"]), text_of(&b["health"]));
            }
        }
    }
    m
}

fn text_of(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), String::from)
}

#[test]
fn clb_spreads_by_weight_keeps_connections_and_follows_health_checks() {
    if !privileged("clb_spreads_by_weight_keeps_connections_and_follows_health_checks") {
        return;
    }
    let lab = Lab::up("clb.toml");
    let webs = ["i-web1", "i-web2", "i-web3"];
    let mut servers: BTreeMap<&str, Bg> = webs
        .iter()
        .map(|&w| (w, lab.named_http_server(w, 80)))
        .collect();
    let _udp: Vec<Bg> = webs
        .iter()
        .map(|&w| {
            let mut s = lab.bg(w, &["python3", "-u", "-c", NAMED_UDP_SERVER, "5353", w]);
            s.wait_until(Duration::from_secs(10), "UDP server ready", |o, _| {
                o.contains("listening")
            });
            s
        })
        .collect();
    let all = |state: &str| -> BTreeMap<String, String> {
        webs.iter()
            .map(|w| (w.to_string(), state.to_string()))
            .collect()
    };
    lab.wait_status(Duration::from_secs(15), "every backend checked up", |s| {
        clb_health(s, "lb-web", "tcp:80") == all("up")
            && clb_health(s, "lb-web", "udp:5353") == all("up")
    });

    // n new connections from the internet: who answered each, counted.
    let spread = |n: usize| -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for k in 0..n {
            let r = lab.curl("internet", &["--max-time", "3"], "http://198.51.100.70/");
            assert!(r.ok(), "connection {k} to the CLB's EIP: {r}");
            let (who, client) = r.out().split_once(' ').expect("NAME CLIENT");
            assert_eq!(
                client, "203.0.113.1",
                "the backend sees the client's address"
            );
            *m.entry(who.to_string()).or_insert(0) += 1;
        }
        m
    };
    let counts = |v: &[(&str, usize)]| -> BTreeMap<String, usize> {
        v.iter().map(|&(k, n)| (k.to_string(), n)).collect()
    };
    // Weighted round robin, 3:2:1, exactly over 60 connections.
    assert_eq!(
        spread(60),
        counts(&[("i-web1", 30), ("i-web2", 20), ("i-web3", 10)])
    );

    // A guest of the VPC reaches the same listener on the CLB's intranet address, and the
    // backend sees the guest's private address.
    for _ in 0..3 {
        let r = lab.curl("i-client", &["--max-time", "3"], "http://10.0.1.200/");
        assert!(r.ok(), "i-client to the CLB's intranet address: {r}");
        let (who, client) = r.out().split_once(' ').expect("NAME CLIENT");
        assert!(webs.contains(&who), "{r}");
        assert_eq!(client, "10.0.1.20", "{r}");
    }

    // UDP: each client port is a flow of its own, spread the same way.
    let mut udp: BTreeMap<String, usize> = BTreeMap::new();
    for k in 0..6u16 {
        let port = (40000 + k).to_string();
        let r = lab.exec(
            "internet",
            &[
                "python3",
                "-c",
                "import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);\
                 s.settimeout(3);s.bind(('0.0.0.0',int(sys.argv[1])));\
                 s.sendto(b'q',('198.51.100.70',5353));print(s.recv(100).decode().split()[0])",
                &port,
            ],
        );
        assert!(r.ok(), "UDP flow {k}: {r}");
        *udp.entry(r.out().to_string()).or_insert(0) += 1;
    }
    assert_eq!(udp, counts(&[("i-web1", 3), ("i-web2", 2), ("i-web3", 1)]));

    // A long connection stays on its backend while new ones go round.
    let mut long = lab.bg(
        "internet",
        &[
            "python3",
            "-u",
            "-c",
            KEEPALIVE_CLIENT,
            "198.51.100.70",
            "80",
            "3",
        ],
    );
    long.wait_until(Duration::from_secs(10), "first answer", |o, _| {
        o.lines().count() >= 1
    });
    let others = spread(12);
    assert!(
        others.len() == 3,
        "new connections meanwhile reach every backend: {others:?}"
    );
    long.wait_until(Duration::from_secs(10), "second answer", |o, _| {
        o.lines().count() >= 2
    });
    let answers: Vec<String> = long.out().lines().map(String::from).collect();
    assert_eq!(
        answers[0], answers[1],
        "a connection's requests are answered by one backend"
    );

    // i-web2's server stops: after its health check fails 3 times it gets no new connection.
    servers.remove("i-web2").unwrap().stop();
    let mut down = all("up");
    down.insert("i-web2".into(), "down".into());
    lab.wait_status(Duration::from_secs(20), "i-web2 checked down", |s| {
        clb_health(s, "lb-web", "tcp:80") == down
    });
    let (_, metrics) = lab.http_get("/metrics");
    assert!(
        metrics.contains(
            "eiplab_clb_backend_health{load_balancer=\"lb-web\",listener=\"tcp:80\",\
             instance=\"i-web2\",state=\"down\"} 1\n"
        ),
        "{metrics}"
    );
    let without = spread(20);
    assert_eq!(
        without.get("i-web2"),
        None,
        "no connection to a failing backend: {without:?}"
    );
    assert!(
        without.get("i-web1") > without.get("i-web3") && without.contains_key("i-web3"),
        "the others keep their 3:1: {without:?}"
    );

    // Its server back, 3 checks pass and it takes connections again, at its weight.
    servers.insert("i-web2", lab.named_http_server("i-web2", 80));
    lab.wait_status(Duration::from_secs(20), "i-web2 checked up again", |s| {
        clb_health(s, "lb-web", "tcp:80") == all("up")
    });
    let back = spread(60);
    let n2 = back.get("i-web2").copied().unwrap_or(0);
    assert!(
        (15..=25).contains(&n2),
        "i-web2 takes about a third of new connections again: {back:?}"
    );
    let text = run(
        cmd(BIN, &["status", "--endpoint", &lab.endpoint()]),
        CMD_LIMIT,
    )
    .expect_ok("eiplab status")
    .stdout;
    assert!(
        text.lines()
            .any(|l| l.starts_with("  tcp:80 -> i-web1 10.0.1.11 w3 up (")),
        "{text}"
    );
    drop(long);
}
