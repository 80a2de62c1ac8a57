//! Network namespaces: made and removed with `ip netns` (iproute2), configured with `ip -n`,
//! and entered by a short-lived thread (`setns`) when something must be created inside one: a
//! TUN device or a listening socket stays in the namespace it was made in, whichever thread
//! uses it later.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

/// Where `ip netns add` puts the namespace handles.
const NETNS_DIR: &str = "/var/run/netns";

/// Runs `ip ARGS…`; an error carries the command and what `ip` said.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `ip -n NS ARGS…`.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<(), String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

/// The namespaces `ip netns` knows.
pub fn list() -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    v.sort();
    v
}

pub fn exists(ns: &str) -> bool {
    std::path::Path::new(NETNS_DIR).join(ns).exists()
}

/// Creates `ns` with its loopback up.
pub fn create(ns: &str) -> Result<(), String> {
    ip(&["netns", "add", ns])?;
    ip_in(ns, &["link", "set", "lo", "up"])
}

/// Removes `ns` (and with it every device and route inside). Missing is not an error.
pub fn delete(ns: &str) -> Result<(), String> {
    if !exists(ns) {
        return Ok(());
    }
    ip(&["netns", "del", ns])
}

/// Writes a sysctl inside `ns` (`net.ipv4.conf.all.rp_filter` style name).
pub fn sysctl(ns: &str, name: &str, value: &str) -> Result<(), String> {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    let value = value.to_string();
    enter(ns, move || {
        std::fs::write(&path, &value).map_err(|e| format!("sysctl {path}: {e}"))
    })?
}

/// Runs `f` on a new thread that has entered `ns`; returns what it returns. Whatever `f`
/// creates that belongs to a network namespace (devices, sockets) is created inside `ns`.
pub fn enter<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let path = std::path::Path::new(NETNS_DIR).join(ns);
    let handle = File::open(&path)
        .map_err(|e| format!("namespace {ns}: cannot open {}: {e}", path.display()))?;
    let ns_name = ns.to_string();
    std::thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || {
            // SAFETY: setns on a namespace handle we hold open; it changes only this thread,
            // which ends when `f` returns.
            let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(format!(
                    "cannot enter namespace {ns_name}: {}",
                    std::io::Error::last_os_error()
                ));
            }
            Ok(f())
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?
        .join()
        .map_err(|_| format!("a thread inside namespace {ns} panicked"))?
}
