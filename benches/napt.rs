//! Lookups per second of the NAT gateway's NAPT on established flows (issue 13: at least 20
//! Mpps per core with 1,000,000 sessions, and the ratio to 1,000).
//!
//! `cargo bench --bench napt`. Each size builds its sessions first (UDP, one per private
//! host:port and remote, through an SNAT entry of 20 EIPs, the gateway's maximum), then times
//! windows of `WINDOW` lookups of established flows in a random order: `outbound_udp` looks
//! up the guest's side, `inbound_udp` the internet's reply, one call per packet; the
//! `_batch` groups do the same lookups through `outbound_batch` / `inbound_batch`, `BATCH`
//! flows a call (a dataplane's read batch). The table is far larger than the caches at
//! 1,000,000 sessions, so most lookups miss them, as a busy gateway's would. Every answer of
//! the first pass, one by one and batched, is checked against the translation that made the
//! session; a bench that measured refusals panics.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use eiplab::napt::{Napt, NaptConfig, NaptDrop, Proto, SnatRule};
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

const WINDOW: usize = 4096;
/// Flows per batch call in the `_batch` groups.
const BATCH: usize = 64;
const SIZES: [usize; 2] = [1_000, 1_000_000];
const SEC: u64 = 1_000_000_000;

struct Flows {
    napt: Napt,
    /// (guest side: src, dst) and the translated source, in a random order.
    out: Vec<(SocketAddrV4, SocketAddrV4, SocketAddrV4)>,
    /// The same flows as batch calls take them: guest side, and the internet's reply.
    out_q: Vec<(Proto, SocketAddrV4, SocketAddrV4)>,
    in_q: Vec<(Proto, SocketAddrV4, SocketAddrV4)>,
    now: u64,
}

/// A small xorshift: the bench needs a fixed shuffle, not randomness.
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

fn build(n: usize) -> Flows {
    let cfg = NaptConfig {
        max_sessions: n,
        ..NaptConfig::cloud()
    };
    let eips: Vec<Ipv4Addr> = (1..=20).map(|i| Ipv4Addr::new(198, 51, 100, i)).collect();
    let mut napt = Napt::new(
        cfg,
        vec![SnatRule {
            source: Ipv4Addr::new(10, 0, 0, 0),
            prefix_len: 8,
            eips,
        }],
        Vec::new(),
    )
    .expect("a valid NAPT");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // 4,096 hosts, each with many flows to a few hundred remotes.
        let host = Ipv4Addr::from(0x0a00_0000 | (i as u32 % 4096));
        let src = SocketAddrV4::new(host, 20_000 + (i / 4096) as u16);
        let dst = SocketAddrV4::new(
            Ipv4Addr::from(0xcb00_7100 | (i as u32 % 251)),
            443 + (i % 7) as u16,
        );
        let t = napt
            .outbound(0, Proto::Udp, src, dst)
            .unwrap_or_else(|e| panic!("session {i} not made: {e:?}"));
        out.push((src, dst, t.src));
    }
    shuffle(&mut out, 0x9e37_79b9_7f4a_7c15);
    let out_q = out.iter().map(|&(s, d, _)| (Proto::Udp, s, d)).collect();
    let in_q = out.iter().map(|&(_, d, e)| (Proto::Udp, d, e)).collect();
    Flows {
        napt,
        out,
        out_q,
        in_q,
        now: SEC,
    }
}

impl Flows {
    /// Times `iters` windows of outbound (or inbound) lookups.
    fn measure(&mut self, iters: u64, inbound: bool, at: &mut usize) -> Duration {
        let mut total = Duration::ZERO;
        let len = self.out.len();
        for _ in 0..iters {
            // Time moves, but slower than any timeout.
            self.now += 1_000;
            let now = self.now;
            let mut k = *at;
            let t = Instant::now();
            for _ in 0..WINDOW {
                let (src, dst, ext) = self.out[k];
                if inbound {
                    black_box(self.napt.inbound(now, Proto::Udp, dst, ext).ok());
                } else {
                    black_box(self.napt.outbound(now, Proto::Udp, src, dst).ok());
                }
                k += 1;
                if k == len {
                    k = 0;
                }
            }
            total += t.elapsed();
            *at = k;
        }
        total
    }

    /// Times `iters` windows of the same lookups, `BATCH` flows a call (fewer where the
    /// order wraps around).
    fn measure_batch(&mut self, iters: u64, inbound: bool, at: &mut usize) -> Duration {
        let mut total = Duration::ZERO;
        let len = self.out.len();
        let mut outs = [Err(NaptDrop::NoSession); BATCH];
        let mut ins = [Err(NaptDrop::NoSession); BATCH];
        for _ in 0..iters {
            self.now += 1_000;
            let now = self.now;
            let mut k = *at;
            let mut left = WINDOW;
            let t = Instant::now();
            while left > 0 {
                let m = BATCH.min(left).min(len - k);
                if inbound {
                    self.napt
                        .inbound_batch(now, &self.in_q[k..k + m], &mut ins[..m]);
                    black_box(&ins);
                } else {
                    self.napt
                        .outbound_batch(now, &self.out_q[k..k + m], &mut outs[..m]);
                    black_box(&outs);
                }
                left -= m;
                k += m;
                if k == len {
                    k = 0;
                }
            }
            total += t.elapsed();
            *at = k;
        }
        total
    }

    /// Every established flow is found both ways, one by one and batched, and translates
    /// as when it was made.
    fn check(&mut self) {
        let now = self.now;
        for &(src, dst, ext) in &self.out {
            let t = self
                .napt
                .outbound(now, Proto::Udp, src, dst)
                .expect("outbound");
            assert_eq!(t.src, ext, "{src} -> {dst}");
            assert_eq!(t.dst, dst);
            let back = self
                .napt
                .inbound(now, Proto::Udp, dst, ext)
                .expect("inbound");
            assert_eq!(back, src, "{dst} -> {ext}");
        }
        let mut outs = vec![Err(NaptDrop::NoSession); self.out.len()];
        let mut ins = vec![Err(NaptDrop::NoSession); self.out.len()];
        self.napt.outbound_batch(now, &self.out_q, &mut outs);
        self.napt.inbound_batch(now, &self.in_q, &mut ins);
        for (&(src, dst, ext), (t, back)) in self.out.iter().zip(outs.iter().zip(&ins)) {
            let t = t.expect("outbound_batch");
            assert_eq!((t.src, t.dst), (ext, dst), "batched {src} -> {dst}");
            assert_eq!(*back, Ok(src), "batched {dst} -> {ext}");
        }
    }
}

fn napt(c: &mut Criterion) {
    for (name, inbound, batch) in [
        ("outbound_udp", false, false),
        ("inbound_udp", true, false),
        ("outbound_udp_batch", false, true),
        ("inbound_udp_batch", true, true),
    ] {
        let mut g = c.benchmark_group(format!("napt_{name}"));
        g.throughput(Throughput::Elements(WINDOW as u64));
        for n in SIZES {
            let mut flows: Option<Flows> = None;
            let mut at = 0usize;
            g.bench_function(BenchmarkId::new("sessions", n), |b| {
                let f = flows.get_or_insert_with(|| {
                    let mut f = build(n);
                    f.check();
                    f
                });
                b.iter_custom(|iters| {
                    if batch {
                        f.measure_batch(iters, inbound, &mut at)
                    } else {
                        f.measure(iters, inbound, &mut at)
                    }
                });
            });
        }
        g.finish();
    }
}

criterion_group!(benches, napt);
criterion_main!(benches);
