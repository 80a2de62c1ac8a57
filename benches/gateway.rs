//! Packets per second through the gateway's shell: the real worker threads, the device seam
//! and `process_batch`, with in-memory devices instead of TUN (no root, no kernel).
//!
//! `cargo bench --bench gateway`
//!
//! One internet port and one ENI port, one EIP in NAT mode. Each iteration sends a burst of
//! `BURST` 64-byte UDP packets into the internet device at once and waits until the ENI's
//! host has received all of them, translated: the time covers the wake-up of a sleeping
//! worker, reading the burst, translating it, sending it on, and the host side's queueing
//! (a copy per packet each way, as a TUN device's read and write would make). Bursts of 1
//! show the cost of a wake-up alone. Every received packet's destination is checked outside
//! the timed part only at the end of the warm-up, so a wrong path panics.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use eiplab::engine::{
    AssociationMode, EipAssociation, EipConfig, EniConfig, InstanceRef, Side, TableBuilder,
    TableCell,
};
use eiplab::io::{mem, Dataplane, Offload, Options};
use eiplab::wire::build;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

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

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
