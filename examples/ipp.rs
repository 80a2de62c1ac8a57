//! The harness of `scripts/callgrind-ipp.sh`: runs one case of the translate bench (the same
//! tables and traffic, from `benches/shared/traffic.rs`) and says how many packets it handed
//! to `Engine::process_batch`, so that callgrind's inclusive instruction count of
//! `process_batch` divided by it is the instructions per packet.
//!
//! `ipp <group> <eips> <windows>`: builds the case, runs its whole traffic once (as the bench
//! does before measuring), then `<windows>` more windows of 256 packets, every packet checked
//! as in the bench. Prints `packets <n>`: every packet of every `process_batch` call.

#[path = "../benches/shared/traffic.rs"]
mod traffic;

use traffic::{case_named, Api, Runner};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [group, eips, windows] = &args[..] else {
        eprintln!("usage: ipp <group> <eips> <windows>");
        std::process::exit(2);
    };
    let Some(build) = case_named(group) else {
        eprintln!("ipp: no group {group}");
        std::process::exit(2);
    };
    let n: usize = eips.parse().expect("<eips> is a number");
    let windows: usize = windows.parse().expect("<windows> is a number");
    let mut r = Runner::new(format!("{group}/eips/{n}"), build(n), Api::Batch);
    r.run(windows);
    println!("packets {}", r.packets);
}
