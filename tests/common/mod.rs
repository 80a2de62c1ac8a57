//! What the integration tests share: the root check of the root-only ones, and the case count
//! of the property tests. Each test binary uses only some of it.

use std::path::Path;

/// True when a test that needs root (and, with `tun`, /dev/net/tun) can run. Otherwise it
/// prints a loud SKIP and returns false, or, when `EIPLAB_NO_SKIP=1` (`.ci/run` sets it),
/// panics: where the tests must run, one that cannot is a failure.
#[allow(dead_code)]
pub fn privileged(test: &str, tun: bool) -> bool {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .unwrap_or_default();
    let why = if uid != "0" {
        format!("not running as root (effective uid {uid:?})")
    } else if tun && !Path::new("/dev/net/tun").exists() {
        "/dev/net/tun is missing".to_string()
    } else {
        return true;
    };
    let needs = if tun { "root and /dev/net/tun" } else { "root" };
    assert!(
        std::env::var("EIPLAB_NO_SKIP").as_deref() != Ok("1"),
        "{test} cannot run: {why}; EIPLAB_NO_SKIP=1 forbids skipping (it needs {needs})"
    );
    eprintln!(
        "\n*****************************************************************\n\
         SKIP {test}: {why}; it needs {needs}\n\
         *****************************************************************\n"
    );
    false
}

/// Cases per property test: 256, or `PROPTEST_CASES` for a deeper run.
#[allow(dead_code)]
pub fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}
