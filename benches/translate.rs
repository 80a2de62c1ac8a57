//! Packets per second of the translation engine.
//!
//! `cargo bench --bench translate` (filter with e.g. `-- nat_inbound`); `scripts/bench-translate.sh`
//! runs it and tabulates Mpps with their spread.
//!
//! Every group is measured with 1, 1,000 and 100,000 EIPs in the table (`<group>/eips/<n>`),
//! except the cut-through groups (60,000 at most: see `CUT_THROUGH_SIZES` in
//! `shared/traffic.rs`, which also describes the tables and the traffic), the NAT gateway
//! groups (`natgw_*`: `<n>` established gateway flows) and the CLB groups (`clb_*`: `<n>`
//! established TCP connections over 3 backends, each made by one packet through the CLB
//! before anything is timed), 1,000 and 1,000,000. What keeps the numbers honest:
//!
//! - The plain groups send 64-byte packets (UDP or TCP, random payloads);
//!   `nat_inbound_udp_quic` and `nat_inbound_udp_rtp` send what the ALG classifier will
//!   mostly see, QUIC v1 (long and short headers) and RTP v2 datagrams of their real sizes
//!   between ephemeral ports, and must forward them.
//! - The engine reads packets from a pool of buffers whose packets lie on more cache lines
//!   than twice the L2 cache holds, processed in place, a window of `BATCH` (256) packets at
//!   a time: no packet is hot in cache because it was just copied in.
//! - Only `process_batch` (one call per window, whatever ENIs the window mixes) or, in
//!   `nat_inbound_udp_single`, the window's `process` calls are timed (`iter_custom`).
//!   `now` advances by `BATCH` × 20 ns per window, so policers refill as they would at 50 Mpps.
//! - Each window's verdicts are reset beforehand, and after it, outside the timing, every
//!   packet is checked: verdict, addresses, and for forwarded packets the IPv4 and TCP/UDP
//!   checksums (summed independently here) and the TTL. The whole traffic is run once, so
//!   checked, before criterion starts. A bench that measured the wrong path panics.
//!
//! The checks and refills take longer than the timed part, so a run lasts a few times the
//! measurement time criterion is given.
//!
//! Tables and traffic are built lazily, only for the benches the filter selects.

#[path = "shared/traffic.rs"]
mod traffic;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use traffic::{nat_inbound_udp, Api, Build, Runner, BATCH, CASES};

fn group(c: &mut Criterion, name: &str, sizes: &[usize], build: Build, api: Api) {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(BATCH as u64));
    for &n in sizes {
        let mut runner: Option<Runner> = None;
        g.bench_function(BenchmarkId::new("eips", n), |b| {
            let r = runner
                .get_or_insert_with(|| Runner::new(format!("{name}/eips/{n}"), build(n), api));
            b.iter_custom(|iters| r.measure(iters));
        });
    }
    g.finish();
}

fn translate(c: &mut Criterion) {
    for &(name, sizes, build) in CASES {
        group(c, name, sizes, build, Api::Batch);
    }
    // The same traffic as nat_inbound_udp/eips/100000, one `process` call per packet.
    group(
        c,
        "nat_inbound_udp_single",
        &[100_000],
        nat_inbound_udp,
        Api::Single,
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = translate
}
criterion_main!(benches);
