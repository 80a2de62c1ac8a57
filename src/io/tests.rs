//! The workers on the in-memory device: no root, no namespaces, the real worker threads.

use super::mem::{self, MemHost};
use super::*;
use crate::engine::{
    AssociationMode, DropReason, EipAssociation, EipConfig, EniConfig, InstanceRef, Table,
    TableBuilder,
};
use crate::wire::build;
use std::net::Ipv4Addr;

const WAIT: Duration = Duration::from_secs(5);
/// How long to wait for something that must not come.
const QUIET: Duration = Duration::from_millis(150);

fn a(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn client() -> Ipv4Addr {
    a("203.0.113.7")
}

fn src_of(p: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(p[12], p[13], p[14], p[15])
}

fn dst_of(p: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(p[16], p[17], p[18], p[19])
}

/// ENI `i` (1..=n) has 10.0.<i/250>.<i%250+1>, its instance runs, and EIP 198.51.<100+i/250>.
/// <i%250+1> (slot i) maps to it in NAT mode unless `unassociated` holds `i`.
fn table(n: u16, unassociated: &[u16]) -> Table {
    table_at(n, unassociated, 100_000)
}

/// As [`table`], every EIP policed at `mbps`.
fn table_at(n: u16, unassociated: &[u16], mbps: u32) -> Table {
    builder(n, unassociated, mbps).build().unwrap()
}

/// The builder of [`table_at`].
fn builder(n: u16, unassociated: &[u16], mbps: u32) -> TableBuilder {
    let mut b = TableBuilder::new()
        .vpc_prefix(a("10.0.0.0"), 8)
        .internet_gateway(a("203.0.113.254"));
    for i in 1..=n {
        b = b.eni(EniConfig {
            id: i,
            instance: Some(InstanceRef {
                id: i as u32,
                running: true,
            }),
            gateway: Some(a("10.0.0.253")),
            private_ips: vec![private(i)],
        });
        b = b.eip(EipConfig {
            slot: i as u32,
            address: eip(i),
            bandwidth_mbps: mbps,
            association: (!unassociated.contains(&i)).then_some(EipAssociation {
                mode: AssociationMode::Nat,
                eni: i,
                private_ip: None,
            }),
        });
    }
    b
}

fn private(i: u16) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn eip(i: u16) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100 + (i / 250) as u8, (i % 250 + 1) as u8)
}

fn udp_to(dst: Ipv4Addr, sport: u16) -> Vec<u8> {
    build::udp(client(), sport, dst, 9000, b"payload")
}

/// A gateway with `workers` workers and ports for the internet and ENIs 1..=n (each ENI's
/// queue towards its host holds `capacity` packets).
struct Lab {
    dp: Arc<Dataplane>,
    cell: Arc<TableCell>,
    internet: MemHost,
    enis: Vec<MemHost>,
}

impl Lab {
    fn new(workers: usize, n: u16, capacity: usize) -> Lab {
        let cell = Arc::new(TableCell::new(table(n, &[])));
        let dp = Dataplane::new(
            cell.clone(),
            Options {
                workers,
                batch: BATCH,
                ..Options::default()
            },
        )
        .unwrap();
        let (dev, internet) = mem::pair(4096).unwrap();
        dp.add_port("internet.eth0".into(), Side::Internet, Box::new(dev));
        let mut enis = Vec::new();
        for i in 1..=n {
            let (dev, host) = mem::pair(capacity).unwrap();
            dp.add_port(format!("i-{i}.eth0"), Side::Eni(i), Box::new(dev));
            enis.push(host);
        }
        Lab {
            dp,
            cell,
            internet,
            enis,
        }
    }

    fn eni(&self, i: u16) -> &MemHost {
        &self.enis[i as usize - 1]
    }
}

#[test]
fn one_batch_mixing_forwards_to_several_ports_a_reply_a_held_fragment_and_a_drop() {
    let lab = Lab::new(2, 3, 1024);
    let big = build::udp(client(), 40000, eip(3), 9000, &[0x5a; 3000]);
    let frags = build::fragment(&big, 1200);
    assert_eq!(frags.len(), 3);
    let ping = build::ping(client(), a("203.0.113.254"), 7, 1, b"hello");
    let batch: Vec<Vec<u8>> = vec![
        udp_to(eip(1), 1001),
        udp_to(eip(2), 2001),
        ping.clone(),
        frags[2].clone(),                  // a last fragment before its first: held
        udp_to(a("198.51.100.200"), 3001), // no such EIP
        udp_to(eip(1), 1002),
        udp_to(eip(2), 2002),
    ];
    lab.internet
        .send_all(batch.into_iter().map(|p| (p, Offload::default())));

    let to1 = lab.eni(1).recv_n(2, WAIT);
    let to2 = lab.eni(2).recv_n(2, WAIT);
    let back = lab.internet.recv_n(1, WAIT);
    assert_eq!(to1.len(), 2, "ENI 1 gets its two packets");
    assert_eq!(to2.len(), 2, "ENI 2 gets its two packets");
    for (got, port) in to1.iter().zip([1001u16, 1002]) {
        assert_eq!(dst_of(&got.0), private(1), "NAT rewrote the EIP");
        assert_eq!(u16::from_be_bytes([got.0[20], got.0[21]]), port, "in order");
    }
    for (got, port) in to2.iter().zip([2001u16, 2002]) {
        assert_eq!(dst_of(&got.0), private(2));
        assert_eq!(u16::from_be_bytes([got.0[20], got.0[21]]), port, "in order");
    }
    assert_eq!(back.len(), 1, "the gateway answers the ping");
    assert_eq!(dst_of(&back[0].0), client());
    assert_eq!(back[0].0[20], 0, "an echo reply");
    assert!(
        lab.eni(3).recv_timeout(QUIET).is_none(),
        "the fragment is held"
    );

    let s = lab.dp.snapshot();
    assert_eq!(s.global.received.packets, 7);
    assert_eq!(s.global.forwarded.packets, 4);
    assert_eq!(s.global.replied.packets, 1);
    assert_eq!(s.global.held, 1);
    assert_eq!(s.global.drops[DropReason::UnknownDestination as usize], 1);

    // The first fragment decides: it and the two held ones reach ENI 3.
    lab.internet.send(&frags[1]);
    assert!(lab.eni(3).recv_timeout(QUIET).is_none(), "still held");
    lab.internet.send(&frags[0]);
    let got = lab.eni(3).recv_n(3, WAIT);
    assert_eq!(got.len(), 3, "the first fragment releases the held ones");
    assert!(got
        .iter()
        .all(|(p, o)| dst_of(p) == private(3) && *o == Offload::default()));
    let s = lab.dp.snapshot();
    assert_eq!(s.global.held, 0);
    assert_eq!(s.global.forwarded.packets, 7);
    let g = s.gateway;
    assert_eq!((g.no_device, g.tx_errors, g.short_reads), (0, 0, 0));
}

#[test]
fn offload_metadata_travels_with_a_forwarded_packet_and_not_with_a_reply() {
    let lab = Lab::new(1, 1, 64);
    let gso = Offload {
        flags: device::NEEDS_CSUM,
        gso_type: 1,
        hdr_len: 52,
        gso_size: 1448,
        csum_start: 20,
        csum_offset: 16,
    };
    let ping = build::ping(client(), a("203.0.113.254"), 7, 1, b"x");
    lab.internet
        .send_all([(udp_to(eip(1), 1), gso), (ping, gso)]);
    let (_, off) = lab.eni(1).recv_timeout(WAIT).expect("forwarded");
    assert_eq!(off, gso);
    let (_, off) = lab.internet.recv_timeout(WAIT).expect("answered");
    assert_eq!(off, Offload::default());
}

/// A TCP super-packet as a namespace's stack hands it to a TUN device with TSO: one header,
/// `payload` bytes behind it, segmentation and the checksum left to the device.
fn tcp_super(src: Ipv4Addr, dst: Ipv4Addr, payload: usize) -> (Vec<u8>, Offload) {
    let p = build::tcp(src, 40000, dst, 5201, 0x18, &vec![0x3c; payload]);
    let off = Offload {
        flags: device::NEEDS_CSUM,
        gso_type: 1, // VIRTIO_NET_HDR_GSO_TCPV4
        hdr_len: 40,
        gso_size: 1448,
        csum_start: 20,
        csum_offset: 16,
    };
    (p, off)
}

#[test]
fn a_super_packet_to_a_policed_eip_passes_whole_within_the_burst_and_is_dropped_whole_beyond() {
    let lab = Lab::new(1, 1, 64);
    lab.cell.publish(table_at(1, &[], 1));
    let (p, off) = tcp_super(client(), eip(1), 60_000);
    // 128 KiB of burst at 1 Mbit/s: two 60 KB super-packets pass, the third does not.
    lab.internet.send_all((0..3).map(|_| (p.clone(), off)));
    let got = lab.eni(1).recv_n(2, WAIT);
    assert_eq!(got.len(), 2);
    for (q, o) in &got {
        assert_eq!(q.len(), p.len(), "translated whole, never segmented");
        assert_eq!(dst_of(q), private(1));
        assert_eq!(*o, off, "the segmentation metadata goes with it");
    }
    assert!(lab.eni(1).recv_timeout(QUIET).is_none());
    let s = lab.dp.snapshot();
    assert_eq!(s.eips[&1].drops[DropReason::BandwidthExceeded as usize], 1);
    assert_eq!(s.eips[&1].to_guest.packets, 2);
}

#[test]
fn a_super_packet_to_another_instances_eip_hairpins_whole() {
    let lab = Lab::new(2, 2, 64);
    let (p, off) = tcp_super(private(1), eip(2), 30_000);
    lab.eni(1).send_all([(p.clone(), off)]);
    let (q, o) = lab.eni(2).recv_timeout(WAIT).expect("hairpinned to ENI 2");
    assert_eq!(q.len(), p.len());
    assert_eq!(dst_of(&q), private(2));
    assert_eq!(
        src_of(&q),
        eip(1),
        "the sender's EIP, as the internet would show it"
    );
    assert_eq!(o, off);
    assert_eq!(lab.dp.snapshot().global.hairpin, 1);
}

#[test]
fn an_icmp_error_about_a_super_packet_quotes_its_head_and_carries_no_offload() {
    let lab = Lab::new(1, 1, 64);
    let (mut p, off) = tcp_super(client(), eip(1), 60_000);
    p[8] = 1; // TTL
    p[10..12].copy_from_slice(&[0, 0]);
    let c = crate::wire::checksum::checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    lab.internet.send_all([(p.clone(), off)]);
    let (q, o) = lab.internet.recv_timeout(WAIT).expect("time exceeded");
    assert_eq!(o, Offload::default(), "the answer is one small packet");
    assert_eq!(q[9], 1, "ICMP");
    assert_eq!(q[20], 11, "time exceeded");
    assert!(
        q.len() <= 576,
        "a quote, not the whole super-packet: {}",
        q.len()
    );
    assert!(crate::wire::checksum::verify(&q[..20]));
    assert!(crate::wire::checksum::verify(&q[20..]), "ICMP checksum");
    assert_eq!(&q[28..48], &p[..20], "quotes the offending header");
    assert!(lab.eni(1).recv_timeout(QUIET).is_none());
    assert_eq!(lab.dp.snapshot().global.icmp_errors_sent, 1);
}

#[test]
fn a_table_published_between_batches_applies_to_the_next_batch() {
    let lab = Lab::new(2, 2, 64);
    lab.cell.publish(table(2, &[1]));
    lab.internet.send(&udp_to(eip(1), 1));
    assert!(lab.eni(1).recv_timeout(QUIET).is_none());
    let s = lab.dp.snapshot();
    assert_eq!(s.global.drops[DropReason::EipUnassociated as usize], 1);
    lab.cell.publish(table(2, &[]));
    lab.internet.send(&udp_to(eip(1), 2));
    let (p, _) = lab.eni(1).recv_timeout(WAIT).expect("associated again");
    assert_eq!(dst_of(&p), private(1));
    // ENI 2 passed through both tables untouched.
    lab.internet.send(&udp_to(eip(2), 3));
    assert!(lab.eni(2).recv_timeout(WAIT).is_some());
}

#[test]
fn a_port_removed_while_traffic_flows_closes_its_device_and_counts_what_had_nowhere_to_go() {
    let lab = Lab::new(2, 2, 1 << 16);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (host, stop) = (lab.internet.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut sport = 0u16;
            while !stop.load(Ordering::Relaxed) {
                sport = sport.wrapping_add(1);
                host.send(&udp_to(eip(1), sport));
                std::thread::sleep(Duration::from_micros(50));
            }
        })
    };
    assert!(lab.eni(1).recv_timeout(WAIT).is_some(), "traffic flows");
    let mut delivered = 1u64;
    assert!(lab.dp.remove_port(Side::Eni(1)));
    assert!(
        lab.eni(1).device_dropped(),
        "the device is closed when remove_port returns"
    );
    // Whatever the workers still see for ENI 1 has no device: counted, not lost silently.
    let deadline = Instant::now() + WAIT;
    while lab.dp.snapshot().gateway.no_device < 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    // Once the worker has taken everything, the snapshot (answered after its batch) is final.
    while lab.internet.pending() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    delivered += lab.eni(1).drain().len() as u64;
    let s = lab.dp.snapshot();
    assert!(s.gateway.no_device >= 10, "{:?}", s.gateway);
    assert_eq!(s.gateway.tx_errors, 0);
    // Every packet the engine forwarded to ENI 1 was delivered before the removal or counted.
    assert_eq!(
        s.enis[&1].to_guest.packets,
        delivered + s.gateway.no_device,
        "forwarded = delivered + no_device"
    );
    // The other port and the gateway still work; ENI 1 can come back.
    lab.internet.send(&udp_to(eip(2), 7));
    assert!(lab.eni(2).recv_timeout(WAIT).is_some());
    let (dev, host) = mem::pair(64).unwrap();
    lab.dp
        .add_port("i-1.eth0".into(), Side::Eni(1), Box::new(dev));
    lab.internet.send(&udp_to(eip(1), 8));
    let (p, _) = host
        .recv_timeout(WAIT)
        .expect("the re-added port gets traffic");
    assert_eq!(dst_of(&p), private(1));
}

#[test]
fn a_full_send_queue_refuses_and_counts_without_blocking_the_worker() {
    let lab = Lab::new(1, 2, 4);
    lab.internet
        .send_all((0..20u16).map(|i| (udp_to(eip(1), 100 + i), Offload::default())));
    // The worker is not stuck: ENI 2 is served right after.
    lab.internet.send(&udp_to(eip(2), 1));
    assert!(lab.eni(2).recv_timeout(WAIT).is_some());
    let got = lab.eni(1).drain();
    assert_eq!(got.len(), 4, "the queue holds four");
    let s = lab.dp.snapshot();
    assert_eq!(s.global.forwarded.packets, 21, "the engine forwarded all");
    assert_eq!(
        s.gateway.tx_errors, 16,
        "the device refused sixteen, all counted"
    );
    // Once the host reads, the queue takes packets again.
    lab.internet.send(&udp_to(eip(1), 999));
    assert!(lab.eni(1).recv_timeout(WAIT).is_some());
}

#[test]
fn one_worker_serves_many_ports_both_ways() {
    let n = 120u16;
    let lab = Lab::new(1, n, 16);
    assert_eq!(lab.dp.ports_per_worker(), vec![n as usize + 1]);
    lab.internet
        .send_all((1..=n).map(|i| (udp_to(eip(i), 10_000 + i), Offload::default())));
    for i in 1..=n {
        let (p, _) = lab
            .eni(i)
            .recv_timeout(WAIT)
            .unwrap_or_else(|| panic!("ENI {i}: {:?}", lab.dp.snapshot().global));
        assert_eq!(dst_of(&p), private(i));
        assert_eq!(u16::from_be_bytes([p[20], p[21]]), 10_000 + i);
    }
    for i in 1..=n {
        lab.eni(i)
            .send(&build::udp(private(i), 5000, client(), 80, b"out"));
    }
    let out = lab.internet.recv_n(n as usize, WAIT);
    assert_eq!(out.len(), n as usize);
    let mut sources: Vec<Ipv4Addr> = out.iter().map(|(p, _)| src_of(p)).collect();
    sources.sort();
    let mut want: Vec<Ipv4Addr> = (1..=n).map(eip).collect();
    want.sort();
    assert_eq!(sources, want, "each ENI leaves with its own EIP");
    let s = lab.dp.snapshot();
    assert_eq!(s.global.forwarded.packets, 2 * n as u64);
    assert_eq!(s.enis.len(), n as usize);
}

#[test]
fn ports_are_spread_over_the_workers_and_counters_sum_across_them() {
    let lab = Lab::new(3, 8, 64);
    let per = lab.dp.ports_per_worker();
    assert_eq!(per.iter().sum::<usize>(), 9);
    assert!(per.iter().all(|&k| k == 3), "{per:?}");
    for i in 1..=8 {
        lab.eni(i)
            .send(&build::udp(private(i), 5000, client(), 80, b"out"));
        lab.internet.send(&udp_to(eip(i), 10_000 + i));
    }
    assert_eq!(lab.internet.recv_n(8, WAIT).len(), 8);
    for i in 1..=8 {
        assert!(lab.eni(i).recv_timeout(WAIT).is_some());
    }
    let s = lab.dp.snapshot();
    assert_eq!(s.global.received.packets, 16);
    assert_eq!(s.global.forwarded.packets, 16);
    for i in 1..=8u32 {
        let c = &s.eips[&i];
        assert_eq!(
            (c.to_guest.packets, c.from_guest.packets),
            (1, 1),
            "EIP slot {i}"
        );
    }
}

#[test]
fn shutdown_stops_the_workers_and_closes_every_device() {
    let lab = Lab::new(2, 2, 64);
    lab.internet.send(&udp_to(eip(1), 1));
    assert!(lab.eni(1).recv_timeout(WAIT).is_some());
    lab.dp.shutdown();
    assert!(lab.internet.device_dropped());
    assert!(lab.enis.iter().all(MemHost::device_dropped));
    // Counters survive the workers.
    assert_eq!(lab.dp.snapshot().global.forwarded.packets, 1);
}

#[test]
fn alg_findings_of_the_workers_reach_the_dataplane_once() {
    use crate::alg::{AlgAction, AlgPolicy, Field};
    let lab = Lab::new(2, 2, 1024);
    let inspect = builder(2, &[], 100_000)
        .alg_policy(AlgPolicy::all(AlgAction::Inspect))
        .build()
        .unwrap();
    lab.cell.publish(inspect);
    let sip = format!(
        "INVITE sip:bob@203.0.113.7 SIP/2.0\r\nContact: <sip:alice@{}:5060>\r\nContent-Length: 0\r\n\r\n",
        private(2)
    );
    let out = build::udp(private(2), 5060, client(), 5060, sip.as_bytes());
    let plain = build::udp(
        private(1),
        5060,
        client(),
        5060,
        b"OPTIONS sip:x SIP/2.0\r\n\r\n",
    );
    lab.eni(1).send(&plain);
    lab.eni(2).send(&out);
    let got = lab.internet.recv_n(2, WAIT);
    assert_eq!(got.len(), 2, "inspect passes both");
    let mut reports = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while reports.is_empty() && std::time::Instant::now() < deadline {
        reports = lab.dp.take_alg_reports();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(reports.len(), 1, "one finding: {reports:?}");
    let r = reports[0];
    assert_eq!(r.finding.field, Field::SipContact);
    assert_eq!(r.finding.address, private(2).octets());
    assert_eq!(
        (r.private_ip, r.eip, r.to_guest),
        (private(2), eip(2), false)
    );
    std::thread::sleep(QUIET);
    assert!(lab.dp.take_alg_reports().is_empty(), "taken once");
}
