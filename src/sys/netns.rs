//! Network namespaces the iproute2 way, without running `ip`.
//!
//! A named namespace is a bind mount of a namespace file (`/proc/…/ns/net`) onto
//! `/var/run/netns/NAME`, exactly as `ip netns add` makes it, so `ip netns list`, `ip netns exec
//! NAME …`, `ip -n NAME …` and `ip netns del NAME` work on the namespaces made here and the
//! functions here work on namespaces made by `ip`.
//!
//! # Entering a namespace, and the thread-safety rules
//!
//! A network namespace belongs to a *thread*, not to the process: `setns(2)` moves only the
//! calling thread. Two ways in:
//!
//! - [`enter`] runs a closure on a new thread that has entered the namespace and ends with it:
//!   nothing about the caller's thread changes. Use it from async code or when the work is
//!   long.
//! - [`NetnsHandle::run`] enters on the *current* thread, runs the closure and moves the thread
//!   back to where it was, even if the closure panics. It costs a few syscalls instead of a
//!   thread, so one builder thread can visit a thousand namespaces in turn.
//!
//! Rules for [`NetnsHandle::run`]:
//!
//! 1. Only the calling thread moves; every other thread of the process stays where it is.
//! 2. Sockets and devices created inside the closure belong to the visited namespace for their
//!    whole life, whichever thread uses them later (a netlink socket opened there keeps talking
//!    to that namespace: see [`super::netlink::Netlink::open_in`]).
//! 3. Threads spawned inside the closure start in the visited namespace.
//! 4. Keep the closure short and synchronous. Do not call it on an async runtime's worker
//!    thread for long work (it blocks the worker), and never block on async work inside it:
//!    a task that resumes there would run in the visited namespace. Use [`enter`] instead.
//! 5. `/proc/net` and `/proc/self/net` show the namespace of the process's *main* thread, not
//!    of the visiting thread; `/proc/thread-self/net` and `/proc/sys/net` follow the thread.
//! 6. Visits nest: each one restores the namespace it found.
//! 7. If moving back ever fails (the kernel refusing to re-enter a namespace we hold open,
//!    which needs a broken system), the process aborts with a message rather than carry on
//!    configuring the wrong namespace.
//!
//! [`NetnsHandle`] itself is an open file: `Send` and `Sync`, cheap to keep, and it keeps the
//! namespace alive while open even after [`delete`] removed its name.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::netlink::{Batch, Netlink};

/// Where named namespaces live (iproute2's `NETNS_RUN_DIR`).
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

/// `statfs.f_type` of the nsfs filesystem that namespace files live on.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// True once this process has made [`NETNS_RUN_DIR`] a shared mount point. Done once per
/// process, not once per namespace: `MS_SHARED | MS_REC` walks every mount below the directory,
/// so repeating it per namespace (as each `ip netns add` must) costs O(n) per namespace.
static RUN_DIR_READY: Mutex<bool> = Mutex::new(false);

/// The file that names `name`: `/var/run/netns/NAME`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Refuses names iproute2 would refuse, and names that would escape [`NETNS_RUN_DIR`].
fn check_name(name: &str) -> Result<(), String> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name.len() > 255 {
        "it is longer than 255 bytes"
    } else if name.contains('/') {
        "it contains '/'"
    } else if name == "." || name == ".." {
        "it is '.' or '..'"
    } else if name.contains('\0') {
        "it contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(format!(
        "{name:?} is not a valid namespace name: {why}; use letters, digits, '-', '_' and '.'"
    ))
}

fn c_path(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", path.display()))
}

/// The namespace file of the calling thread (works on kernels without `/proc/thread-self`).
fn thread_ns_path() -> String {
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() };
    format!("/proc/self/task/{tid}/ns/net")
}

/// Makes [`NETNS_RUN_DIR`] exist and be a shared mount point, as `ip netns add` does, so the
/// namespaces mounted in it propagate to other mount namespaces (a `systemd` service's, say).
fn ensure_run_dir() -> Result<(), String> {
    let mut ready = RUN_DIR_READY.lock().unwrap_or_else(|p| p.into_inner());
    if *ready {
        return Ok(());
    }
    match std::fs::DirBuilder::new().mode(0o755).create(NETNS_RUN_DIR) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(format!(
                "cannot create {NETNS_RUN_DIR}: {e} (network namespaces need root)"
            ))
        }
    }
    let dir = c"/var/run/netns";
    let mut bound = false;
    loop {
        // SAFETY: every pointer is a NUL-terminated string that outlives the call; a null
        // `data` is allowed; the call only changes mount propagation.
        let rc = unsafe {
            libc::mount(
                c"".as_ptr(),
                dir.as_ptr(),
                c"none".as_ptr(),
                libc::MS_SHARED | libc::MS_REC,
                std::ptr::null(),
            )
        };
        if rc == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) || bound {
            return Err(format!(
                "cannot make {NETNS_RUN_DIR} a shared mount point: {e} (run as root, in the \
                 host's mount namespace)"
            ));
        }
        // EINVAL: not a mount point yet. Bind it onto itself and try again.
        // SAFETY: as above; a recursive bind mount of the directory onto itself.
        let rc = unsafe {
            libc::mount(
                dir.as_ptr(),
                dir.as_ptr(),
                c"none".as_ptr(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(format!(
                "cannot bind-mount {NETNS_RUN_DIR} onto itself: {} (run as root)",
                io::Error::last_os_error()
            ));
        }
        bound = true;
    }
    *ready = true;
    Ok(())
}

/// Creates the namespace `name` with its loopback up: what `ip netns add NAME` followed by
/// `ip -n NAME link set lo up` does. Fails if the name is taken. On failure nothing is left
/// behind.
pub fn create(name: &str) -> Result<(), String> {
    create_with(name, |_| Ok(()))
}

/// [`create`], then runs `f` inside the new namespace on the thread that made it, before the
/// name is published, and returns what `f` returns. If `f` fails the namespace is not created.
///
/// `f` gets the netlink socket that brought `lo` up: it is bound to the new namespace for its
/// whole life, so `f` can apply a batch, write sysctls (plain files under `/proc/sys` on this
/// thread), and hand the socket back for later use. The cheapest way to create and configure.
pub fn create_with<T: Send + 'static>(
    name: &str,
    f: impl FnOnce(Netlink) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    check_name(name)?;
    ensure_run_dir()?;
    let path = path(name);
    let target = c_path(&path)?;
    // The placeholder is made exclusively, so two creators of one name cannot both succeed.
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&path)
    {
        Ok(placeholder) => drop(placeholder),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(format!(
                "namespace {name} already exists ({}); pick another name or delete it first \
                 (`ip netns del {name}`)",
                path.display()
            ))
        }
        Err(e) => {
            return Err(format!(
                "cannot create {}: {e} (network namespaces need root)",
                path.display()
            ))
        }
    }
    let label = name.to_string();
    let spawned = std::thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || -> Result<T, String> {
            // SAFETY: unshare changes only this thread's namespaces; the thread is ours and ends
            // with this closure, so nothing else ever runs in the unpublished namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(format!(
                    "cannot create network namespace {label}: {} (needs root: CAP_SYS_ADMIN)",
                    io::Error::last_os_error()
                ));
            }
            let mut nl = Netlink::open_labelled(&format!("namespace {label}"))?;
            nl.apply(Batch::new().link_up("lo"))
                .map_err(|e| e.to_string())?;
            let value = f(nl)?;
            let source = CString::new(thread_ns_path())
                .map_err(|_| "a /proc path contains a NUL byte".to_string())?;
            // SAFETY: both paths are NUL-terminated strings that outlive the call; this binds
            // this thread's namespace file onto the placeholder we created.
            let rc = unsafe {
                libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    c"none".as_ptr(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                return Err(format!(
                    "cannot bind-mount network namespace {label} onto {}: {}",
                    target.to_string_lossy(),
                    io::Error::last_os_error()
                ));
            }
            Ok(value)
        });
    let result = match spawned {
        Ok(thread) => thread.join().unwrap_or_else(|_| {
            Err(format!(
                "creating namespace {name}: the creating thread panicked"
            ))
        }),
        Err(e) => Err(format!(
            "cannot start a thread to create namespace {name}: {e}"
        )),
    };
    if result.is_err() {
        // The mount is the last step, so on any error only the placeholder exists.
        let _ = std::fs::remove_file(&path);
    }
    result
}

/// Deletes the namespace `name` (what `ip netns del` does): detaches its mount and removes the
/// file. Devices, addresses and routes inside go with the namespace once nothing else holds it
/// (a process inside it, an open [`NetnsHandle`], a socket). Missing is not an error.
pub fn delete(name: &str) -> Result<(), String> {
    check_name(name)?;
    let path = path(name);
    let c = c_path(&path)?;
    // SAFETY: a NUL-terminated path. A lazy unmount that does not follow symlinks; its errors
    // (not mounted, no such file) are ignored, as `ip netns del` ignores them.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!(
            "cannot delete namespace {name}: removing {}: {e}; is it mounted again elsewhere? \
             (`findmnt {}`)",
            path.display(),
            path.display()
        )),
    }
}

/// True if a namespace of that name exists.
pub fn exists(name: &str) -> bool {
    check_name(name).is_ok() && path(name).exists()
}

/// The names of the namespaces `ip netns list` shows, sorted.
pub fn list() -> Result<Vec<String>, String> {
    let rd = match std::fs::read_dir(NETNS_RUN_DIR) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot list {NETNS_RUN_DIR}: {e}")),
    };
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| format!("cannot list {NETNS_RUN_DIR}: {e}"))?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// An open network namespace: a file descriptor of its namespace file. See the module
/// documentation for the rules of [`NetnsHandle::run`].
#[derive(Debug)]
pub struct NetnsHandle {
    file: File,
    /// `None` for [`NetnsHandle::current`].
    name: Option<String>,
}

impl NetnsHandle {
    /// Opens the named namespace.
    pub fn open(name: &str) -> Result<Self, String> {
        check_name(name)?;
        let path = path(name);
        let file = File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                format!(
                    "namespace {name} does not exist ({} is missing); create it first",
                    path.display()
                )
            } else {
                format!("namespace {name}: cannot open {}: {e}", path.display())
            }
        })?;
        if !is_namespace_file(&file) {
            return Err(format!(
                "namespace {name}: {} is not a namespace (a leftover file, not mounted); \
                 delete it (`ip netns del {name}`) and create the namespace again",
                path.display()
            ));
        }
        Ok(Self {
            file,
            name: Some(name.to_string()),
        })
    }

    /// The namespace the calling thread is in now.
    pub fn current() -> Result<Self, String> {
        let path = thread_ns_path();
        let file = File::open(&path)
            .map_err(|e| format!("cannot open {path} (is /proc mounted?): {e}"))?;
        Ok(Self { file, name: None })
    }

    /// The name it was opened by; `None` for [`NetnsHandle::current`].
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The namespace's identity (its nsfs inode number, as `ip netns identify` and
    /// `readlink /proc/PID/ns/net` show it): two handles are the same namespace if and only if
    /// their ids are equal.
    pub fn id(&self) -> Result<u64, String> {
        self.file
            .metadata()
            .map(|m| m.ino())
            .map_err(|e| format!("{self}: cannot stat its namespace file: {e}"))
    }

    /// Another handle on the same namespace.
    pub fn try_clone(&self) -> Result<Self, String> {
        Ok(Self {
            file: self
                .file
                .try_clone()
                .map_err(|e| format!("{self}: cannot duplicate its handle: {e}"))?,
            name: self.name.clone(),
        })
    }

    /// Runs `f` with the calling thread inside this namespace, then moves the thread back to
    /// the namespace it was in, also when `f` panics (the panic then goes on). Errors only if
    /// the namespace cannot be entered, in which case `f` does not run.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, String> {
        let home_path = thread_ns_path();
        let home = File::open(&home_path)
            .map_err(|e| format!("cannot open {home_path} to come back from {self}: {e}"))?;
        setns(self.file.as_fd())
            .map_err(|e| format!("cannot enter {self}: {e} (needs root: CAP_SYS_ADMIN)"))?;
        let _back = GoBack {
            home,
            visited: self,
        };
        Ok(f())
    }
}

impl std::fmt::Display for NetnsHandle {
    /// "namespace NAME", or "the current namespace": the words error messages use.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(name) => write!(f, "namespace {name}"),
            None => write!(f, "the current namespace"),
        }
    }
}

impl AsFd for NetnsHandle {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Moves the thread back into `home` when dropped (at the end of a visit, or while unwinding).
struct GoBack<'a> {
    home: File,
    visited: &'a NetnsHandle,
}

impl Drop for GoBack<'_> {
    fn drop(&mut self) {
        if let Err(e) = setns(self.home.as_fd()) {
            // Carrying on would configure the wrong namespace (possibly the host's): stop.
            eprintln!(
                "eiplab: cannot move a thread back out of {}: {e}; aborting rather than go on \
                 in the wrong namespace",
                self.visited
            );
            std::process::abort();
        }
    }
}

fn setns(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `fd` is an open file for the duration of the call; setns changes only the
    // calling thread and fails cleanly (EINVAL) if the file is not a network namespace.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// True if `file` is on nsfs, i.e. a namespace file rather than an unmounted placeholder.
fn is_namespace_file(file: &File) -> bool {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `st` is writable memory of the right size for the duration of the call and
    // `file` is open.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return false;
    }
    // SAFETY: fstatfs succeeded, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // `f_type` is an i64 here, but its type differs between targets.
    #[allow(clippy::useless_conversion)]
    let f_type = i64::from(st.f_type);
    f_type == NSFS_MAGIC
}

/// Runs `f` on a new thread that has entered the namespace `ns`, and returns what it returns.
/// Whatever `f` creates that belongs to a network namespace (devices, sockets) is created
/// inside `ns`; the caller's thread never moves.
pub fn enter<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let handle = NetnsHandle::open(ns)?;
    let label = ns.to_string();
    std::thread::Builder::new()
        .name("netns-enter".into())
        .spawn(move || -> Result<T, String> {
            setns(handle.as_fd()).map_err(|e| {
                format!("cannot enter namespace {label}: {e} (needs root: CAP_SYS_ADMIN)")
            })?;
            // The thread ends here; it never needs to come back.
            Ok(f())
        })
        .map_err(|e| format!("cannot start a thread to enter namespace {ns}: {e}"))?
        .join()
        .map_err(|_| format!("a thread inside namespace {ns} panicked"))?
}

/// Writes one sysctl inside the namespace `ns` (`net.ipv4.conf.all.rp_filter` style, or with
/// slashes, `net/ipv4/conf/eth0.100/rp_filter`, when a part contains dots). Visits the
/// namespace on the calling thread.
pub fn sysctl(ns: &str, name: &str, value: &str) -> Result<(), String> {
    sysctls(&NetnsHandle::open(ns)?, &[(name, value)])
}

/// Writes several sysctls inside `ns` in one visit, in order. Every setting is tried; the
/// error has one line per setting that failed.
pub fn sysctls(ns: &NetnsHandle, settings: &[(&str, &str)]) -> Result<(), String> {
    let label = ns.to_string();
    let failures = ns.run(|| {
        settings
            .iter()
            .filter_map(|(name, value)| write_sysctl(&label, name, value).err())
            .collect::<Vec<String>>()
    })?;
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

/// `/proc/sys/…` for a sysctl name, refusing names that would leave `/proc/sys`.
fn sysctl_path(name: &str) -> Result<PathBuf, String> {
    let rel = if name.contains('/') {
        name.trim_start_matches('/').to_string()
    } else {
        name.replace('.', "/")
    };
    if rel.is_empty()
        || rel.contains('\0')
        || rel
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(format!(
            "{name:?} is not a sysctl name (expected something like net.ipv4.ip_forward)"
        ));
    }
    Ok(Path::new("/proc/sys").join(rel))
}

/// Writes one sysctl in the calling thread's namespace, `label` ("namespace X").
fn write_sysctl(label: &str, name: &str, value: &str) -> Result<(), String> {
    let path = sysctl_path(name).map_err(|e| format!("sysctl in {label}: {e}"))?;
    let mut file = OpenOptions::new().write(true).open(&path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            format!(
                "sysctl {name} in {label}: {} does not exist; check the name (`sysctl -a` \
                 inside the namespace lists them)",
                path.display()
            )
        } else {
            format!(
                "sysctl {name} in {label}: cannot open {}: {e}",
                path.display()
            )
        }
    })?;
    file.write_all(value.as_bytes())
        .map_err(|e| format!("sysctl {name}={value} in {label}: the kernel refused the value: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_iproute2_refuses_are_refused() {
        for bad in ["", "a/b", ".", "..", "x\0y"] {
            let e = check_name(bad).unwrap_err();
            assert!(e.contains("not a valid namespace name"), "{e}");
        }
        assert!(check_name(&"n".repeat(256)).is_err());
        for good in ["syst1-a", "eip.lab_1", &"n".repeat(255)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        assert!(!exists("a/b"));
    }

    #[test]
    fn sysctl_names_map_to_proc_sys() {
        assert_eq!(
            sysctl_path("net.ipv4.conf.all.rp_filter").unwrap(),
            Path::new("/proc/sys/net/ipv4/conf/all/rp_filter")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/rp_filter").unwrap(),
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
        for bad in ["", "net..ipv4", "net/../../etc/passwd", "/", "net.ipv4."] {
            let e = sysctl_path(bad).unwrap_err();
            assert!(e.contains("not a sysctl name"), "{bad}: {e}");
        }
    }
}
