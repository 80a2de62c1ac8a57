//! Packets per second through the gateway's shell, with in-memory devices instead of TUN (no
//! root, no kernel).
//!
//! `cargo bench --bench gateway`
//!
//! `gateway_loop_nat_inbound_udp` and `engine_only_nat_inbound_udp` (1 and 100,000 EIPs, the
//! translate bench's `nat_inbound_udp` tables and traffic) run in one thread, with no worker
//! and no wake-up. Each iteration, the internet side writes a burst of `io::BATCH` packets into
//! a mem device (not timed); then the timed part: in `gateway_loop`, one step of what a worker
//! does with a ready port ([`eiplab::io::Step`], the workers' own code: read the batch from
//! the device, set the ingress, `process_batch`, group by verdict, send each ENI its packets);
//! in `engine_only`, `process_batch` alone on the same packets, copied into a batch of the
//! same buffers. Then, not timed, the ENI side drains and every packet is checked (verdict,
//! addresses, checksums, TTL). The ratio of the two is the shell's cost per packet. Every
//! ENI's port is the same mem device here (one descriptor rather than thousands), but the
//! step still sends each ENI's packets as a separate batch, as it would to separate devices.
//!
//! `gateway_nat_inbound_udp`: the real worker threads. One internet port and one ENI port, one EIP in NAT mode. Each iteration sends a burst of
//! `BURST` 64-byte UDP packets into the internet device at once and waits until the ENI's
//! host has received all of them, translated: the time covers the wake-up of a sleeping
//! worker, reading the burst, translating it, sending it on, and the host side's queueing
//! (a copy per packet each way, as a TUN device's read and write would make). Bursts of 1
//! show the cost of a wake-up alone. Every received packet's destination is checked outside
//! the timed part only at the end of the warm-up, so a wrong path panics.

#[path = "shared/traffic.rs"]
mod traffic;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use eiplab::engine::{
    AssociationMode, EipAssociation, EipConfig, Engine, EniConfig, InstanceRef, Side, TableBuilder,
    TableCell, Verdict,
};
use eiplab::io::{mem, Batch, Dataplane, Device, Offload, Options, ShellCounters, Step};
use eiplab::wire::build;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use traffic::{check_packet, nat_inbound_udp, shell_engine, Traffic, NS_PER_PKT, T0};

const EIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const WAIT: Duration = Duration::from_secs(5);

fn bench(c: &mut Criterion) {
    let table = TableBuilder::new()
        .vpc_prefix(Ipv4Addr::new(10, 0, 0, 0), 8)
        .eni(EniConfig {
            id: 1,
            instance: Some(InstanceRef {
                id: 1,
                running: true,
            }),
            gateway: Some(Ipv4Addr::new(10, 0, 1, 253)),
            private_ips: vec![PRIVATE],
        })
        .eip(EipConfig {
            slot: 0,
            address: EIP,
            bandwidth_mbps: 1_000_000,
            association: Some(EipAssociation {
                mode: AssociationMode::Nat,
                eni: 1,
                private_ip: None,
            }),
        })
        .build()
        .unwrap();
    let mut g = c.benchmark_group("gateway_nat_inbound_udp");
    for burst in [1usize, 64, 1024] {
        let cell = Arc::new(TableCell::new(table.clone()));
        let dp = Dataplane::new(
            cell,
            Options {
                workers: 2,
                batch: eiplab::io::BATCH,
                ..Options::default()
            },
        )
        .unwrap();
        let (dev, internet) = mem::pair(1 << 16).unwrap();
        dp.add_port("internet".into(), Side::Internet, Box::new(dev));
        let (dev, guest) = mem::pair(1 << 16).unwrap();
        dp.add_port("eni".into(), Side::Eni(1), Box::new(dev));
        let packets: Vec<(Vec<u8>, Offload)> = (0..burst)
            .map(|i| {
                let p = build::udp(CLIENT, 10_000 + i as u16, EIP, 9000, &[0u8; 36]);
                (p, Offload::default())
            })
            .collect();
        // Warm-up and check: every packet arrives, translated.
        internet.send_all(packets.clone());
        let got = guest.recv_n(burst, WAIT);
        assert_eq!(got.len(), burst);
        assert!(got
            .iter()
            .all(|(p, _)| Ipv4Addr::new(p[16], p[17], p[18], p[19]) == PRIVATE));
        g.throughput(Throughput::Elements(burst as u64));
        g.bench_with_input(BenchmarkId::new("burst", burst), &burst, |b, &n| {
            b.iter(|| {
                internet.send_all(packets.iter().cloned());
                let got = guest.recv_n(n, WAIT);
                assert_eq!(got.len(), n);
            })
        });
        dp.shutdown();
    }
    g.finish();
}

/// Packets per burst: what a worker reads from a device at a time.
const BURST: usize = eiplab::io::BATCH;
const LOOP_SIZES: &[usize] = &[1, 100_000];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Device read, `process_batch`, routing and device send: [`Step`].
    Loop,
    /// `process_batch` alone.
    EngineOnly,
}

/// One thread playing the internet, the gateway's step and the ENIs in turn.
struct Single {
    name: String,
    mode: Mode,
    engine: Engine,
    traffic: Traffic,
    /// Traffic index of the next burst's first packet.
    cursor: usize,
    now: u64,
    step: Step,
    /// The batch `EngineOnly` processes (the same buffers as the step's).
    batch: Batch,
    internet_dev: mem::MemDevice,
    internet: mem::MemHost,
    eni_dev: mem::MemDevice,
    eni: mem::MemHost,
    shell: ShellCounters,
    /// The traffic indices of the current burst.
    sent: Vec<usize>,
}

impl Single {
    fn new(name: String, n: usize, mode: Mode) -> Single {
        let case = nat_inbound_udp(n);
        let (internet_dev, internet) = mem::pair(1 << 16).unwrap();
        let (eni_dev, eni) = mem::pair(1 << 16).unwrap();
        let mut s = Single {
            name,
            mode,
            engine: shell_engine(case.table),
            traffic: case.traffic,
            cursor: 0,
            now: T0,
            step: Step::new(BURST),
            batch: Batch::new(BURST, eiplab::io::MAX_PACKET),
            internet_dev,
            internet,
            eni_dev,
            eni,
            shell: ShellCounters::default(),
            sent: Vec::with_capacity(BURST),
        };
        // The whole traffic once, checked, before anything is measured.
        for _ in 0..s.traffic.len().div_ceil(BURST) {
            s.iteration();
        }
        s
    }

    /// Writes the next burst into the internet device (or, engine only, into the batch).
    fn load(&mut self) {
        self.sent.clear();
        let n = self.traffic.len();
        self.sent.extend((0..BURST).map(|j| (self.cursor + j) % n));
        self.cursor = (self.cursor + BURST) % n;
        self.now += BURST as u64 * NS_PER_PKT;
        let t = &self.traffic;
        match self.mode {
            Mode::Loop => self.internet.send_all(
                self.sent
                    .iter()
                    .map(|&i| (t.packet(i).to_vec(), Offload::default())),
            ),
            Mode::EngineOnly => {
                self.batch.clear();
                for &i in &self.sent {
                    assert!(self.batch.push(t.packet(i), Offload::default()));
                    self.batch.pkts[self.batch.len - 1].ingress = t.sides[i];
                    self.batch.pkts[self.batch.len - 1].verdict = traffic::UNDECIDED;
                }
            }
        }
    }

    /// The timed part.
    #[inline(never)]
    fn process(&mut self) {
        match self.mode {
            Mode::Loop => {
                let got = self.step.recv(&self.internet_dev).unwrap();
                assert_eq!(got.packets, BURST);
                let eni: &dyn Device = &self.eni_dev;
                self.step.forward(
                    &mut self.engine,
                    self.now,
                    Side::Internet,
                    |side| matches!(side, Side::Eni(_)).then_some(eni),
                    &self.shell,
                );
            }
            Mode::EngineOnly => {
                let n = self.batch.len;
                self.engine
                    .process_batch(self.now, &mut self.batch.pkts[..n]);
            }
        }
    }

    /// Checks every packet of the burst where it ended up.
    fn check(&mut self) {
        let t = &self.traffic;
        match self.mode {
            Mode::Loop => {
                let got = self.eni.drain();
                let lost = self.shell.no_device.load(Ordering::Relaxed)
                    + self.shell.tx_errors.load(Ordering::Relaxed);
                assert_eq!((got.len(), lost), (BURST, 0), "{}: packets lost", self.name);
                // Packets of one ENI keep their order, but ENIs are sent in turn: find each
                // one's traffic index by its translated addresses and ports.
                let mut by_key: HashMap<[u8; 12], Vec<usize>> = HashMap::new();
                for &i in self.sent.iter().rev() {
                    let e = &t.expect[i];
                    let mut k = [0u8; 12];
                    k[..4].copy_from_slice(&e.src.octets());
                    k[4..8].copy_from_slice(&e.dst.octets());
                    k[8..].copy_from_slice(&t.packet(i)[20..24]);
                    by_key.entry(k).or_default().push(i);
                }
                for (p, _) in &got {
                    let k: [u8; 12] = p[12..24].try_into().unwrap();
                    let Some(i) = by_key.get_mut(&k).and_then(Vec::pop) else {
                        panic!("{}: a packet nobody sent reached the ENIs", self.name);
                    };
                    let e = &t.expect[i];
                    assert!(matches!(e.verdict, Verdict::Forward(Side::Eni(_))));
                    check_packet(&self.name, i, e.verdict, p, t.packet(i), e);
                }
            }
            Mode::EngineOnly => {
                for (p, &i) in self.batch.pkts.iter().zip(&self.sent) {
                    check_packet(
                        &self.name,
                        i,
                        p.verdict,
                        p.packet(),
                        t.packet(i),
                        &t.expect[i],
                    );
                }
            }
        }
    }

    fn iteration(&mut self) {
        self.load();
        self.process();
        self.check();
    }

    fn measure(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            self.load();
            let t = Instant::now();
            self.process();
            total += t.elapsed();
            self.check();
        }
        total
    }
}

fn single_thread(c: &mut Criterion) {
    for (group, mode) in [
        ("gateway_loop_nat_inbound_udp", Mode::Loop),
        ("engine_only_nat_inbound_udp", Mode::EngineOnly),
    ] {
        let mut g = c.benchmark_group(group);
        g.throughput(Throughput::Elements(BURST as u64));
        for &n in LOOP_SIZES {
            let mut state: Option<Single> = None;
            g.bench_function(BenchmarkId::new("eips", n), |b| {
                let s =
                    state.get_or_insert_with(|| Single::new(format!("{group}/eips/{n}"), n, mode));
                b.iter_custom(|iters| s.measure(iters));
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = single_thread, bench
}
criterion_main!(benches);
