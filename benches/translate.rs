//! Packets per second of the translation engine, 64-byte IPv4 packets.
//!
//! `cargo bench --bench translate` (filter with e.g. `-- nat_inbound`).
//!
//! Every group is measured with 1, 1,000 and 100,000 EIPs in the table (`<group>/eips/<n>`),
//! except the cut-through groups (see [`CUT_THROUGH_SIZES`]). What keeps the numbers honest:
//!
//! - Tables are shaped like a real region's: EIPs from 198.18.0.0/15 (the RFC 2544
//!   benchmark range), private IPs in 10.0.0.0/8 on ENIs of 1 to 50 private IPs each (sizes
//!   drawn at random, one /25 per ENI, 32 ENIs per /20 vSwitch sharing its gateway), the NAT
//!   mapping between EIPs and private IPs shuffled (an ENI's EIPs are not neighbours in the
//!   slot space), bandwidth 100,000 Mbit/s on every EIP (the policer runs on every packet but
//!   never drops here) and the default ALG policy (every protocol `drop`, so `classify` runs
//!   on every NAT packet).
//! - Traffic is one packet per EIP (per private IP for outbound), in a deterministic
//!   shuffled order, and the bench walks through it a window of [`BATCH`] packets at a time:
//!   successive batches touch different table entries, so a 100,000-EIP table is not
//!   measured as if it were the few entries that stay in cache.
//! - Copying the next window into the reusable buffers is not timed; the timed part is the
//!   engine only. `now` advances by `BATCH` × 20 ns per batch, so policers refill as they
//!   would at 50 Mpps.
//! - Each case is run once over all its traffic before measuring, and every packet's
//!   verdict and rewritten addresses are checked; during the measurement every verdict is
//!   checked again (outside the timed part). A bench that measured the wrong path panics.
//!
//! Tables and traffic are built lazily, only for the benches the filter selects.

use core::net::Ipv4Addr;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use eiplab::engine::{
    AssociationMode, DropReason, EipAssociation, EipConfig, Engine, EniConfig, EniId, InstanceRef,
    PacketBuf, Side, Table, TableBuilder, Verdict,
};
use eiplab::wire::build;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Packets per `process_batch` call, as a NIC ring would hand them over.
const BATCH: usize = 256;
/// Total IPv4 length of every packet.
const PKT_LEN: usize = 64;
/// Room in each buffer (an mbuf-sized buffer; the engine may write ICMP answers into it).
const BUF_CAP: usize = 2048;
/// Time between two packets as `now` sees it.
const NS_PER_PKT: u64 = 20;
const SIZES: &[usize] = &[1, 1_000, 100_000];
/// Cut-through (BINDED) puts each EIP on its own secondary ENI, in place of that ENI's
/// primary private IP: 100,000 BINDED EIPs would need 100,000 ENIs, more than the 65,536
/// ids `EniId` (u16) can name, so these groups stop at 60,000 EIPs on 60,000 ENIs. BINDED is
/// kept (rather than MULTI_BINDED, 10 EIPs per ENI) because it is the mode these groups are
/// about; the engine's internet-side code paths are the same for both modes.
const CUT_THROUGH_SIZES: &[usize] = &[1, 1_000, 60_000];
const MAX_IPS_PER_ENI: u64 = 50;
const BANDWIDTH_MBPS: u32 = 100_000;
/// Start of `now`: 1 s.
const T0: u64 = 1_000_000_000;

// ---- deterministic randomness -------------------------------------------------------------

/// SplitMix64: a fixed seed per case, so every run measures the same traffic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }

    /// A port clear of every ALG well-known port (those are all below 10,000).
    fn ephemeral_port(&mut self) -> u16 {
        10_000 + self.below(50_000) as u16
    }

    /// A host somewhere on the internet (the TEST-NETs of RFC 5737: outside the VPC, the
    /// cloud services range and the EIP pool, so no hairpin).
    fn internet_host(&mut self) -> Ipv4Addr {
        const NETS: [u32; 3] = [0xC000_0200, 0xC633_6400, 0xCB00_7100];
        Ipv4Addr::from(NETS[self.below(3) as usize] + 1 + self.below(254) as u32)
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        core::array::from_fn(|_| self.next() as u8)
    }
}

// ---- address plan --------------------------------------------------------------------------

/// EIP number `i`: 198.18.0.0 + i (the /15 holds 131,072).
fn eip_addr(i: usize) -> Ipv4Addr {
    assert!(i < 1 << 17, "198.18.0.0/15 holds 131,072 EIPs");
    Ipv4Addr::from(0xC612_0000 + i as u32)
}

/// ENI `e` owns 10.0.0.0 + 128·e /25; its private IPs are at +4.., unassigned +64..
fn eni_block(e: usize) -> u32 {
    0x0A00_0000 + (e as u32) * 128
}

fn private_ip(e: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::from(eni_block(e) + 4 + j as u32)
}

/// An address in ENI `e`'s subnet that the cloud never assigned to it.
fn unassigned_ip(e: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::from(eni_block(e) + 64 + j as u32)
}

fn eni_config(e: usize, private_ips: Vec<Ipv4Addr>) -> EniConfig {
    EniConfig {
        id: EniId::try_from(e).expect("ENI ids are u16"),
        instance: Some(InstanceRef {
            id: e as u32,
            running: true,
        }),
        // The vSwitch (a /20) gateway, at its .1.
        gateway: Some(Ipv4Addr::from((eni_block(e) & !0xfff) + 1)),
        private_ips,
    }
}

fn base_table() -> TableBuilder {
    TableBuilder::new().vpc_prefix(Ipv4Addr::new(10, 0, 0, 0), 8)
}

/// A NAT-style region: `n` private IPs on ENIs of 1..=50 each and `n` EIPs, EIP `perm[p]`
/// on private IP `p` when `associate`, else all EIPs unassociated.
struct NatWorld {
    table: Table,
    /// Private IPs of each ENI (index = ENI id).
    enis: Vec<Vec<Ipv4Addr>>,
    /// Per EIP: its ENI and private IP, when associated.
    eips: Vec<Option<(EniId, Ipv4Addr)>>,
    /// Per ENI, per private IP: the EIP it speaks through.
    eip_of: Vec<Vec<usize>>,
}

fn nat_world(n: usize, associate: bool, rng: &mut Rng) -> NatWorld {
    let mut enis: Vec<Vec<Ipv4Addr>> = Vec::new();
    let mut left = n;
    while left > 0 {
        let k = ((1 + rng.below(MAX_IPS_PER_ENI)) as usize).min(left);
        let e = enis.len();
        enis.push((0..k).map(|j| private_ip(e, j)).collect());
        left -= k;
    }
    let mut perm: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut perm);

    let mut b = base_table();
    for (e, ips) in enis.iter().enumerate() {
        b = b.eni(eni_config(e, ips.clone()));
    }
    let mut eips = vec![None; n];
    let mut eip_of = Vec::with_capacity(enis.len());
    let mut p = 0;
    for (e, ips) in enis.iter().enumerate() {
        let mut mine = Vec::with_capacity(ips.len());
        for &ip in ips {
            let i = perm[p];
            p += 1;
            mine.push(i);
            if associate {
                eips[i] = Some((e as EniId, ip));
            }
        }
        eip_of.push(mine);
    }
    for (i, a) in eips.iter().enumerate() {
        b = b.eip(EipConfig {
            slot: i as u32,
            address: eip_addr(i),
            bandwidth_mbps: BANDWIDTH_MBPS,
            association: a.map(|(eni, ip)| EipAssociation {
                mode: AssociationMode::Nat,
                eni,
                private_ip: Some(ip),
            }),
        });
    }
    let table = b.build().expect("NAT table builds");
    assert_eq!(table.eip_count(), n);
    NatWorld {
        table,
        enis,
        eips,
        eip_of,
    }
}

/// `n` EIPs, each BINDED to its own ENI (whose only private IP it replaces).
fn cut_through_table(n: usize) -> Table {
    let mut b = base_table();
    for e in 0..n {
        b = b.eni(eni_config(e, vec![private_ip(e, 0)]));
    }
    for i in 0..n {
        b = b.eip(EipConfig {
            slot: i as u32,
            address: eip_addr(i),
            bandwidth_mbps: BANDWIDTH_MBPS,
            association: Some(EipAssociation {
                mode: AssociationMode::Binded,
                eni: i as EniId,
                private_ip: None,
            }),
        });
    }
    let table = b.build().expect("cut-through table builds");
    assert_eq!(table.eip_count(), n);
    table
}

// ---- packets -------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Udp,
    Tcp,
}

/// A 64-byte packet: UDP with 36 payload bytes or TCP (PSH|ACK) with 24, random payload
/// (no ALG signature, like TLS or QUIC).
fn packet(
    proto: Proto,
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    rng: &mut Rng,
) -> Vec<u8> {
    let p = match proto {
        Proto::Udp => build::udp(src, sport, dst, dport, &rng.bytes::<36>()),
        Proto::Tcp => build::tcp(src, sport, dst, dport, 0x18, &rng.bytes::<24>()),
    };
    assert_eq!(p.len(), PKT_LEN);
    p
}

/// What the engine must answer for one packet, and the addresses the packet must carry
/// afterwards.
#[derive(Clone, Copy)]
struct Expect {
    verdict: Verdict,
    src: Ipv4Addr,
    dst: Ipv4Addr,
}

/// Precomputed packets (stored back to back), the side each comes from, and what to expect.
#[derive(Default)]
struct Traffic {
    bytes: Vec<u8>,
    sides: Vec<Side>,
    expect: Vec<Expect>,
}

impl Traffic {
    fn push(&mut self, side: Side, pkt: &[u8], verdict: Verdict, src: Ipv4Addr, dst: Ipv4Addr) {
        assert_eq!(pkt.len(), PKT_LEN);
        self.bytes.extend_from_slice(pkt);
        self.sides.push(side);
        self.expect.push(Expect { verdict, src, dst });
    }

    fn len(&self) -> usize {
        self.sides.len()
    }

    fn packet(&self, i: usize) -> &[u8] {
        &self.bytes[i * PKT_LEN..(i + 1) * PKT_LEN]
    }
}

struct Case {
    table: Table,
    traffic: Traffic,
}

/// Internet -> every EIP once, shuffled. `f` gives the destination port, whether the header
/// checksum is to be broken, and the expected verdict and destination after translation.
fn inbound_case(
    table: Table,
    n: usize,
    proto: Proto,
    dport: u16,
    corrupt: bool,
    rng: &mut Rng,
    mut expect: impl FnMut(usize) -> (Verdict, Ipv4Addr),
) -> Case {
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let mut traffic = Traffic::default();
    for i in order {
        let peer = rng.internet_host();
        let mut p = packet(proto, peer, rng.ephemeral_port(), eip_addr(i), dport, rng);
        if corrupt {
            p[10] ^= 0x5a;
        }
        let (v, dst) = expect(i);
        traffic.push(Side::Internet, &p, v, peer, dst);
    }
    Case { table, traffic }
}

/// Every ENI, in shuffled order, sends one packet from each of its sources (shuffled) to
/// the internet: consecutive packets of one ENI form one `process_batch` call, as one ENI
/// queue's burst would.
fn outbound_case(
    table: Table,
    proto: Proto,
    sources: Vec<Vec<(Ipv4Addr, Verdict, Ipv4Addr)>>,
    rng: &mut Rng,
) -> Case {
    let mut order: Vec<usize> = (0..sources.len()).collect();
    rng.shuffle(&mut order);
    let mut traffic = Traffic::default();
    for e in order {
        let mut srcs = sources[e].clone();
        rng.shuffle(&mut srcs);
        for (src, v, new_src) in srcs {
            let peer = rng.internet_host();
            let p = packet(proto, src, rng.ephemeral_port(), peer, 443, rng);
            traffic.push(Side::Eni(e as EniId), &p, v, new_src, peer);
        }
    }
    Case { table, traffic }
}

fn nat_inbound(
    n: usize,
    proto: Proto,
    dport: u16,
    corrupt: bool,
    want: Option<DropReason>,
) -> Case {
    let rng = &mut Rng(0x1b_0000 + n as u64);
    let w = nat_world(n, true, rng);
    let eips = w.eips;
    inbound_case(w.table, n, proto, dport, corrupt, rng, |i| {
        let (eni, private) = eips[i].expect("associated");
        match want {
            None => (Verdict::Forward(Side::Eni(eni)), private),
            Some(r) => (Verdict::Drop(r), eip_addr(i)),
        }
    })
}

fn nat_inbound_udp(n: usize) -> Case {
    nat_inbound(n, Proto::Udp, 443, false, None)
}

fn nat_inbound_tcp(n: usize) -> Case {
    nat_inbound(n, Proto::Tcp, 443, false, None)
}

fn nat_outbound(n: usize, proto: Proto) -> Case {
    let rng = &mut Rng(0x2b_0000 + n as u64);
    let w = nat_world(n, true, rng);
    let sources = w
        .enis
        .iter()
        .zip(&w.eip_of)
        .map(|(ips, eips)| {
            ips.iter()
                .zip(eips)
                .map(|(&ip, &i)| (ip, Verdict::Forward(Side::Internet), eip_addr(i)))
                .collect()
        })
        .collect();
    outbound_case(w.table, proto, sources, rng)
}

fn nat_outbound_udp(n: usize) -> Case {
    nat_outbound(n, Proto::Udp)
}

fn nat_outbound_tcp(n: usize) -> Case {
    nat_outbound(n, Proto::Tcp)
}

fn cut_through_inbound_udp(n: usize) -> Case {
    let rng = &mut Rng(0x3b_0000 + n as u64);
    let table = cut_through_table(n);
    inbound_case(table, n, Proto::Udp, 443, false, rng, |i| {
        (Verdict::Forward(Side::Eni(i as EniId)), eip_addr(i))
    })
}

fn cut_through_outbound_udp(n: usize) -> Case {
    let rng = &mut Rng(0x4b_0000 + n as u64);
    let table = cut_through_table(n);
    // One source per ENI (its EIP), so every packet is a one-packet batch from another ENI:
    // the worst case for per-ENI batching.
    let sources = (0..n)
        .map(|i| vec![(eip_addr(i), Verdict::Forward(Side::Internet), eip_addr(i))])
        .collect();
    outbound_case(table, Proto::Udp, sources, rng)
}

fn drop_unassociated(n: usize) -> Case {
    let rng = &mut Rng(0x5b_0000 + n as u64);
    // The same region, but no EIP associated (allocated, waiting in the pool).
    let w = nat_world(n, false, rng);
    inbound_case(w.table, n, Proto::Udp, 443, false, rng, |i| {
        (Verdict::Drop(DropReason::EipUnassociated), eip_addr(i))
    })
}

fn drop_unknown_destination(n: usize) -> Case {
    let rng = &mut Rng(0x6b_0000 + n as u64);
    let w = nat_world(n, true, rng);
    // Internet -> addresses the gateway does not own (45.0.0.0/8, one per EIP, shuffled):
    // every lookup is a miss in the address map.
    let mut order: Vec<u32> = (0..n as u32).collect();
    rng.shuffle(&mut order);
    let mut traffic = Traffic::default();
    for k in order {
        let peer = rng.internet_host();
        let dst = Ipv4Addr::from(0x2D00_0000 + k);
        let p = packet(Proto::Udp, peer, rng.ephemeral_port(), dst, 443, rng);
        traffic.push(
            Side::Internet,
            &p,
            Verdict::Drop(DropReason::UnknownDestination),
            peer,
            dst,
        );
    }
    Case {
        table: w.table,
        traffic,
    }
}

fn drop_alg(n: usize) -> Case {
    // SIP (UDP 5060) to a NAT EIP under the default policy (drop).
    nat_inbound(n, Proto::Udp, 5060, false, Some(DropReason::AlgSip))
}

fn drop_source_check(n: usize) -> Case {
    let rng = &mut Rng(0x7b_0000 + n as u64);
    let w = nat_world(n, true, rng);
    // Each guest sends from addresses of its own subnet the cloud never assigned to its ENI
    // (as many as the ENI has private IPs): lookups miss, D6 drops.
    let sources = w
        .enis
        .iter()
        .enumerate()
        .map(|(e, ips)| {
            (0..ips.len())
                .map(|j| {
                    let a = unassigned_ip(e, j);
                    (a, Verdict::Drop(DropReason::SourceCheck), a)
                })
                .collect()
        })
        .collect();
    outbound_case(w.table, Proto::Udp, sources, rng)
}

fn drop_malformed(n: usize) -> Case {
    // NAT inbound UDP with a broken IPv4 header checksum.
    nat_inbound(
        n,
        Proto::Udp,
        443,
        true,
        Some(DropReason::BadHeaderChecksum),
    )
}

// ---- the runner ----------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    /// `process_batch` once per run of packets from one side (once per window for traffic
    /// from the internet).
    Batch,
    /// `process` per packet.
    Single,
}

struct Runner {
    name: String,
    engine: Engine,
    traffic: Traffic,
    bufs: Vec<PacketBuf>,
    /// Traffic index of each buffer in the current window.
    idx: Vec<usize>,
    /// Runs of one side in the current window: (side, start, end).
    runs: Vec<(Side, usize, usize)>,
    cursor: usize,
    now: u64,
    api: Api,
}

impl Runner {
    fn new(name: String, case: Case, api: Api) -> Self {
        assert!(case.traffic.len() > 0, "{name}: no traffic");
        let mut r = Runner {
            name,
            engine: Engine::new(Arc::new(case.table)),
            traffic: case.traffic,
            bufs: (0..BATCH)
                .map(|_| PacketBuf::with_capacity(BUF_CAP))
                .collect(),
            idx: vec![0; BATCH],
            runs: Vec::with_capacity(BATCH),
            cursor: 0,
            now: T0,
            api,
        };
        r.verify_all();
        r
    }

    /// Copies the next window of traffic into the buffers (wrapping around) and advances
    /// `now`. Not timed.
    fn load_window(&mut self) {
        let n = self.traffic.len();
        self.runs.clear();
        for j in 0..BATCH {
            let i = (self.cursor + j) % n;
            self.bufs[j].set(self.traffic.packet(i));
            self.idx[j] = i;
            let side = self.traffic.sides[i];
            self.bufs[j].ingress = side;
            match self.runs.last_mut() {
                Some((s, _, end)) if *s == side => *end = j + 1,
                _ => self.runs.push((side, j, j + 1)),
            }
        }
        self.cursor = (self.cursor + BATCH) % n;
        self.now += BATCH as u64 * NS_PER_PKT;
    }

    /// The timed part.
    #[inline(never)]
    fn process_window(&mut self) {
        let Runner {
            engine,
            bufs,
            runs,
            now,
            api,
            ..
        } = self;
        let bufs = black_box(&mut bufs[..]);
        match api {
            Api::Batch => {
                for &(_, a, b) in runs.iter() {
                    engine.process_batch(black_box(*now), &mut bufs[a..b]);
                }
            }
            Api::Single => {
                for &(side, a, b) in runs.iter() {
                    for p in &mut bufs[a..b] {
                        p.verdict = engine.process(
                            black_box(*now),
                            black_box(side),
                            &mut p.data,
                            p.len,
                            p.flags,
                        );
                    }
                }
            }
        }
        black_box(bufs);
    }

    fn check_verdicts(&self) {
        for (j, p) in self.bufs.iter().enumerate() {
            let want = self.traffic.expect[self.idx[j]].verdict;
            if p.verdict != want {
                panic!(
                    "{}: packet #{} got {:?}, expected {:?}: the bench is not measuring the path it names",
                    self.name, self.idx[j], p.verdict, want
                );
            }
        }
    }

    /// Verdicts and rewritten addresses of the whole traffic, once, before measuring.
    fn verify_all(&mut self) {
        let windows = self.traffic.len().div_ceil(BATCH);
        for _ in 0..windows {
            self.load_window();
            self.process_window();
            self.check_verdicts();
            for (j, p) in self.bufs.iter().enumerate() {
                let e = self.traffic.expect[self.idx[j]];
                let d = p.packet();
                let src = Ipv4Addr::new(d[12], d[13], d[14], d[15]);
                let dst = Ipv4Addr::new(d[16], d[17], d[18], d[19]);
                assert_eq!(p.len, PKT_LEN, "{}: length changed", self.name);
                if (src, dst) != (e.src, e.dst) {
                    panic!(
                        "{}: packet #{} left as {src} -> {dst}, expected {} -> {}",
                        self.name, self.idx[j], e.src, e.dst
                    );
                }
            }
        }
    }

    fn measure(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            self.load_window();
            let t = Instant::now();
            self.process_window();
            total += t.elapsed();
            self.check_verdicts();
        }
        total
    }
}

type Build = fn(usize) -> Case;

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
    let cases: &[(&str, &[usize], Build)] = &[
        ("nat_inbound_udp", SIZES, nat_inbound_udp),
        ("nat_inbound_tcp", SIZES, nat_inbound_tcp),
        ("nat_outbound_udp", SIZES, nat_outbound_udp),
        ("nat_outbound_tcp", SIZES, nat_outbound_tcp),
        (
            "cut_through_inbound_udp",
            CUT_THROUGH_SIZES,
            cut_through_inbound_udp,
        ),
        (
            "cut_through_outbound_udp",
            CUT_THROUGH_SIZES,
            cut_through_outbound_udp,
        ),
        ("drop_unassociated", SIZES, drop_unassociated),
        ("drop_unknown_destination", SIZES, drop_unknown_destination),
        ("drop_alg", SIZES, drop_alg),
        ("drop_source_check", SIZES, drop_source_check),
        ("drop_malformed", SIZES, drop_malformed),
    ];
    for &(name, sizes, build) in cases {
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
