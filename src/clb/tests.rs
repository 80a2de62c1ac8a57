//! Each test is named after the behaviour it checks. Time is a plain `u64` of nanoseconds.

use super::*;
use proptest::prelude::*;

const S: u64 = 1_000_000_000;
/// A start time far from zero, so nothing depends on the clock starting at 0.
const T0: u64 = 1_000_000 * S;

const TCP: ListenerProtocol = ListenerProtocol::Tcp;
const UDP: ListenerProtocol = ListenerProtocol::Udp;
const SYN: u8 = TCP_SYN;
const ACK: u8 = TCP_ACK;
const FIN_ACK: u8 = TCP_FIN | TCP_ACK;
const RST_: u8 = TCP_RST;

const A: &str = "10.0.0.1";
const B: &str = "10.0.0.2";
const C: &str = "10.0.0.3";
const D: &str = "10.0.0.4";

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn sa(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

/// Client `n`: one address, a port per client.
fn client(n: u16) -> SocketAddrV4 {
    SocketAddrV4::new(v4("192.168.0.10"), 10_000 + n)
}

/// A TCP listener on `port` to backend port 8080 with `backends` (address, weight).
fn tcp(port: u16, sched: Scheduler, backends: &[(&str, u16)]) -> ListenerConfig {
    let mut l = ListenerConfig::tcp(port);
    l.backend_port = 8080;
    l.scheduler = sched;
    l.backends = backends
        .iter()
        .map(|&(a, w)| BackendConfig {
            addr: v4(a),
            weight: w,
        })
        .collect();
    l
}

fn clb(listeners: Vec<ListenerConfig>) -> Clb {
    Clb::new(ClbConfig {
        listeners,
        ..ClbConfig::default()
    })
}

const WRR: Scheduler = Scheduler::WeightedRoundRobin;
const RR: Scheduler = Scheduler::RoundRobin;

/// `n` new connections to listener port 80 from clients `first..first + n`: the backend
/// addresses they got, as letters.
fn picks(c: &mut Clb, now: u64, first: u16, n: u16) -> String {
    (first..first + n)
        .map(|i| {
            let b = c.inbound(now, TCP, SYN, client(i), 80).unwrap();
            (b'a' + b.ip().octets()[3] - 1) as char
        })
        .collect()
}

fn count(s: &str, ch: char) -> usize {
    s.chars().filter(|&c| c == ch).count()
}

fn backend_stats(c: &Clb, listener: usize) -> Vec<(Health, usize, u64)> {
    c.stats().listeners[listener]
        .backends
        .iter()
        .map(|b| (b.health, b.active, b.total))
        .collect()
}

// --- scheduling ---

#[test]
fn wrr_spreads_3_2_1_exactly_over_60_and_interleaves() {
    let mut c = clb(vec![tcp(80, WRR, &[(A, 3), (B, 2), (C, 1)])]);
    let p = picks(&mut c, T0, 0, 60);
    assert_eq!(
        (count(&p, 'a'), count(&p, 'b'), count(&p, 'c')),
        (30, 20, 10)
    );
    // nginx's smooth sequence for 3:2:1, once per cycle of 6.
    assert_eq!(p, "abacba".repeat(10));
    c.check_invariants();
}

#[test]
fn wrr_is_smooth_5_1_1() {
    let mut c = clb(vec![tcp(80, WRR, &[(A, 5), (B, 1), (C, 1)])]);
    // nginx's documented sequence: {a, a, b, a, c, a, a}.
    assert_eq!(picks(&mut c, T0, 0, 14), "aabacaa".repeat(2));
}

#[test]
fn wrr_skips_a_down_backend_keeping_the_others_ratio() {
    let mut c = clb(vec![tcp(80, WRR, &[(A, 3), (B, 2), (C, 1)])]);
    assert_eq!(c.report_health(0, 1, false), Some(Health::Down));
    let p = picks(&mut c, T0, 0, 40);
    assert_eq!(
        (count(&p, 'a'), count(&p, 'b'), count(&p, 'c')),
        (30, 0, 10)
    );
    assert_eq!(&p[..4], "aaca");
}

#[test]
fn rr_spreads_evenly_ignoring_weights() {
    let mut c = clb(vec![tcp(80, RR, &[(A, 5), (B, 1), (C, 1)])]);
    assert_eq!(picks(&mut c, T0, 0, 30), "abc".repeat(10));
}

#[test]
fn weight_zero_gets_no_new_connections() {
    let mut c = clb(vec![tcp(80, WRR, &[(A, 3), (B, 0), (C, 1)])]);
    let p = picks(&mut c, T0, 0, 40);
    assert_eq!(
        (count(&p, 'a'), count(&p, 'b'), count(&p, 'c')),
        (30, 0, 10)
    );
    let mut c = clb(vec![tcp(80, RR, &[(A, 1), (B, 0), (C, 7)])]);
    assert_eq!(picks(&mut c, T0, 0, 6), "acacac");
}

#[test]
fn no_eligible_backend_is_no_healthy_backend() {
    for sched in [WRR, RR] {
        let mut c = clb(vec![
            tcp(80, sched, &[]),
            tcp(81, sched, &[(A, 0), (B, 0)]),
            tcp(82, sched, &[(A, 1), (B, 1)]),
        ]);
        c.report_health(2, 0, false);
        c.report_health(2, 1, false);
        for port in [80, 81, 82] {
            assert_eq!(
                c.inbound(T0, TCP, SYN, client(1), port),
                Err(ClbDrop::NoHealthyBackend)
            );
        }
        assert_eq!(c.connections(), 0);
        c.check_invariants();
    }
}

#[test]
fn unknown_port_or_protocol_is_no_listener() {
    let mut c = clb(vec![tcp(80, WRR, &[(A, 1)])]);
    assert_eq!(
        c.inbound(T0, TCP, SYN, client(1), 81),
        Err(ClbDrop::NoListener)
    );
    assert_eq!(
        c.inbound(T0, UDP, 0, client(1), 80),
        Err(ClbDrop::NoListener)
    );
    let mut empty = clb(vec![]);
    assert_eq!(
        empty.inbound(T0, TCP, SYN, client(1), 80),
        Err(ClbDrop::NoListener)
    );
    assert_eq!(empty.poll_timeout(), None);
    empty.handle_timeout(T0);
}

// --- connections ---

#[test]
fn a_connection_sticks_to_its_backend() {
    let mut c = clb(vec![tcp(80, WRR, &[(A, 1), (B, 1), (C, 1)])]);
    let b = c.inbound(T0, TCP, SYN, client(1), 80).unwrap();
    assert_eq!(b, sa("10.0.0.1:8080"));
    for k in 1..100 {
        let flags = if k % 2 == 0 { ACK } else { ACK | 0x08 };
        assert_eq!(c.inbound(T0 + k * S, TCP, flags, client(1), 80), Ok(b));
        assert_eq!(c.outbound(T0 + k * S, TCP, ACK, b, client(1)), Some(80));
    }
    // Its packets did not move the scheduler on.
    assert_eq!(
        c.inbound(T0 + 100 * S, TCP, SYN, client(2), 80),
        Ok(sa("10.0.0.2:8080"))
    );
    assert_eq!(c.stats().listeners[0].backends[0].total, 1);
    assert_eq!(c.connections(), 2);
}

#[test]
fn outbound_maps_back_to_the_listener_port_and_unknown_flows_get_none() {
    let mut l443 = tcp(443, WRR, &[(A, 1), (B, 1)]);
    l443.backend_port = 8443;
    let mut c = clb(vec![tcp(80, WRR, &[(A, 1), (B, 1)]), l443]);
    let cl = client(1);
    assert_eq!(c.inbound(T0, TCP, SYN, cl, 80), Ok(sa("10.0.0.1:8080")));
    assert_eq!(c.inbound(T0, TCP, SYN, cl, 443), Ok(sa("10.0.0.1:8443")));
    assert_eq!(
        c.outbound(T0, TCP, SYN | ACK, sa("10.0.0.1:8080"), cl),
        Some(80)
    );
    assert_eq!(
        c.outbound(T0, TCP, SYN | ACK, sa("10.0.0.1:8443"), cl),
        Some(443)
    );
    // Another client, backend, backend port or protocol: no connection.
    assert_eq!(
        c.outbound(T0, TCP, ACK, sa("10.0.0.1:8080"), client(2)),
        None
    );
    assert_eq!(c.outbound(T0, TCP, ACK, sa("10.0.0.2:8080"), cl), None);
    assert_eq!(c.outbound(T0, TCP, ACK, sa("10.0.0.1:9999"), cl), None);
    assert_eq!(c.outbound(T0, UDP, 0, sa("10.0.0.1:8080"), cl), None);
    assert_eq!(c.connections(), 2);
}

#[test]
fn a_client_port_taken_through_another_listener_goes_to_another_backend() {
    // Listeners 80 and 81 share backend port 8080: the same client port through both to
    // one backend would be one flow to the backend.
    let mut c = clb(vec![
        tcp(80, WRR, &[(A, 1), (B, 1)]),
        tcp(81, WRR, &[(A, 1), (B, 1)]),
        tcp(82, WRR, &[(A, 1)]),
    ]);
    let cl = client(1);
    assert_eq!(c.inbound(T0, TCP, SYN, cl, 80), Ok(sa("10.0.0.1:8080")));
    assert_eq!(c.inbound(T0, TCP, SYN, cl, 81), Ok(sa("10.0.0.2:8080")));
    assert_eq!(c.inbound(T0, TCP, SYN, cl, 82), Err(ClbDrop::Conflict));
    assert_eq!(c.outbound(T0, TCP, ACK, sa("10.0.0.1:8080"), cl), Some(80));
    assert_eq!(c.outbound(T0, TCP, ACK, sa("10.0.0.2:8080"), cl), Some(81));
    c.check_invariants();
}

#[test]
fn table_full_at_max_connections() {
    let mut c = Clb::new(ClbConfig {
        listeners: vec![tcp(80, WRR, &[(A, 1)])],
        max_connections: 3,
    });
    for i in 0..3 {
        c.inbound(T0, TCP, SYN, client(i), 80).unwrap();
    }
    assert_eq!(
        c.inbound(T0 + S, TCP, SYN, client(3), 80),
        Err(ClbDrop::TableFull)
    );
    // The live ones carry on.
    assert!(c.inbound(T0 + S, TCP, ACK, client(0), 80).is_ok());
    // Client 1 resets: 10 s later there is room again.
    c.inbound(T0 + S, TCP, RST_, client(1), 80).unwrap();
    assert_eq!(
        c.inbound(T0 + 11 * S - 1, TCP, SYN, client(3), 80),
        Err(ClbDrop::TableFull)
    );
    assert!(c.inbound(T0 + 11 * S, TCP, SYN, client(3), 80).is_ok());
    assert_eq!(c.connections(), 3);
    c.check_invariants();
}

// --- health ---

#[test]
fn a_down_backend_gets_no_new_connections_but_keeps_its_own() {
    let mut c = clb(vec![tcp(80, WRR, &[(A, 1), (B, 1)])]);
    let a = c.inbound(T0, TCP, SYN, client(0), 80).unwrap();
    assert_eq!(a, sa("10.0.0.1:8080"));
    assert_eq!(c.report_health(0, 0, false), Some(Health::Down));
    assert_eq!(picks(&mut c, T0 + S, 1, 9), "b".repeat(9));
    assert_eq!(c.inbound(T0 + 2 * S, TCP, ACK, client(0), 80), Ok(a));
    assert_eq!(c.outbound(T0 + 2 * S, TCP, ACK, a, client(0)), Some(80));
    assert_eq!(backend_stats(&c, 0)[0], (Health::Down, 1, 1));
}

#[test]
fn down_comes_back_up_after_healthy_threshold_successes() {
    let mut c = clb(vec![tcp(80, RR, &[(A, 1), (B, 1)])]);
    assert_eq!(c.report_health(0, 0, false), Some(Health::Down));
    assert_eq!(c.report_health(0, 0, true), None);
    assert_eq!(c.report_health(0, 0, true), None);
    assert_eq!(picks(&mut c, T0, 0, 2), "bb");
    assert_eq!(c.report_health(0, 0, true), Some(Health::Up));
    assert_eq!(picks(&mut c, T0, 2, 4), "abab");
}

#[test]
fn from_unknown_the_first_result_decides() {
    let mut c = clb(vec![tcp(80, WRR, &[(A, 1), (B, 1)])]);
    assert_eq!(backend_stats(&c, 0)[0].0, Health::Unknown);
    assert_eq!(c.report_health(0, 0, true), Some(Health::Up));
    assert_eq!(c.report_health(0, 1, false), Some(Health::Down));
    let h: Vec<Health> = backend_stats(&c, 0).iter().map(|b| b.0).collect();
    assert_eq!(h, [Health::Up, Health::Down]);
}

#[test]
fn up_goes_down_on_the_third_failure_in_a_row() {
    let mut c = clb(vec![tcp(80, WRR, &[(A, 1)])]);
    assert_eq!(c.report_health(0, 0, true), Some(Health::Up));
    assert_eq!(c.report_health(0, 0, false), None);
    assert_eq!(c.report_health(0, 0, false), None);
    // A success breaks the run.
    assert_eq!(c.report_health(0, 0, true), None);
    assert_eq!(c.report_health(0, 0, false), None);
    assert_eq!(c.report_health(0, 0, false), None);
    assert_eq!(backend_stats(&c, 0)[0].0, Health::Up);
    assert!(c.inbound(T0, TCP, SYN, client(0), 80).is_ok());
    assert_eq!(c.report_health(0, 0, false), Some(Health::Down));
    assert_eq!(
        c.inbound(T0, TCP, SYN, client(1), 80),
        Err(ClbDrop::NoHealthyBackend)
    );
}

#[test]
fn reports_out_of_range_or_with_the_check_off_are_ignored() {
    let mut off = tcp(81, WRR, &[(A, 1)]);
    off.health.enabled = false;
    let mut c = clb(vec![tcp(80, WRR, &[(A, 1)]), off]);
    assert_eq!(c.report_health(0, 1, false), None);
    assert_eq!(c.report_health(2, 0, false), None);
    assert_eq!(c.report_health(usize::MAX, usize::MAX, true), None);
    // The check is off: all backends stay eligible.
    assert_eq!(c.report_health(1, 0, false), None);
    assert!(c.inbound(T0, TCP, SYN, client(0), 81).is_ok());
    assert_eq!(backend_stats(&c, 1)[0].0, Health::Unknown);
}

#[test]
fn health_targets_list_the_checked_listeners_backends() {
    let mut off = tcp(81, WRR, &[(A, 1)]);
    off.health.enabled = false;
    let mut udp = ListenerConfig::udp(53);
    udp.backends = vec![BackendConfig {
        addr: v4(C),
        weight: 1,
    }];
    udp.health.port = 0;
    let c = clb(vec![tcp(80, WRR, &[(A, 1), (B, 1)]), off, udp]);
    let t = c.health_targets();
    let got: Vec<(usize, usize, ListenerProtocol, SocketAddrV4)> = t
        .iter()
        .map(|t| (t.listener, t.backend, t.protocol, t.addr))
        .collect();
    assert_eq!(
        got,
        [
            (0, 0, TCP, sa("10.0.0.1:80")),
            (0, 1, TCP, sa("10.0.0.2:80")),
            (2, 0, UDP, sa("10.0.0.3:53")),
        ]
    );
    assert!(t
        .iter()
        .all(|t| (t.interval_ms, t.timeout_ms) == (2000, 5000)));
}

// --- expiry ---

#[test]
fn idle_connections_expire_after_the_listeners_timeout() {
    let mut udp = ListenerConfig::udp(53);
    udp.backends = vec![BackendConfig {
        addr: v4(A),
        weight: 1,
    }];
    let mut c = clb(vec![tcp(80, WRR, &[(A, 1)]), udp]);
    c.inbound(T0, TCP, SYN, client(1), 80).unwrap();
    c.inbound(T0, UDP, 0, client(1), 53).unwrap();
    assert_eq!(c.poll_timeout(), Some(T0 + 90 * S));
    c.handle_timeout(T0 + 90 * S - 1);
    assert_eq!(c.connections(), 2);
    c.handle_timeout(T0 + 90 * S);
    assert_eq!(c.connections(), 1);
    assert_eq!(
        c.outbound(T0 + 90 * S, UDP, 0, sa("10.0.0.1:53"), client(1)),
        None
    );
    // A reply refreshes the TCP connection.
    assert_eq!(
        c.outbound(T0 + 100 * S, TCP, ACK, sa("10.0.0.1:8080"), client(1)),
        Some(80)
    );
    assert_eq!(c.poll_timeout(), Some(T0 + 1000 * S));
    c.handle_timeout(T0 + 1000 * S - 1);
    assert_eq!(c.connections(), 1);
    c.handle_timeout(T0 + 1000 * S);
    assert_eq!(c.connections(), 0);
    assert_eq!(c.poll_timeout(), None);
    c.check_invariants();
}

#[test]
fn an_expired_connection_found_before_the_sweep_is_not_used() {
    let mut c = clb(vec![tcp(80, WRR, &[(A, 1), (B, 1)])]);
    assert_eq!(
        c.inbound(T0, TCP, ACK, client(1), 80),
        Ok(sa("10.0.0.1:8080"))
    );
    let later = T0 + 900 * S;
    assert_eq!(
        c.outbound(later, TCP, ACK, sa("10.0.0.1:8080"), client(1)),
        None
    );
    assert_eq!(
        c.inbound(later, TCP, ACK, client(1), 80),
        Ok(sa("10.0.0.2:8080"))
    );
    assert_eq!(c.connections(), 1);
}

#[test]
fn fin_both_ways_or_rst_leaves_10_seconds() {
    let mut c = clb(vec![tcp(80, WRR, &[(A, 1)])]);
    let a = sa("10.0.0.1:8080");
    let t = T0 + 5 * S;
    for i in 0..3 {
        c.inbound(T0, TCP, SYN, client(i), 80).unwrap();
    }
    // FIN one way only: still the idle timeout.
    c.inbound(t, TCP, FIN_ACK, client(0), 80).unwrap();
    assert_eq!(c.poll_timeout(), Some(T0 + 900 * S));
    // And back: closing.
    assert_eq!(c.outbound(t, TCP, FIN_ACK, a, client(0)), Some(80));
    assert_eq!(c.poll_timeout(), Some(t + 10 * S));
    // RST from the backend closes another.
    assert_eq!(c.outbound(t + S, TCP, RST_, a, client(1)), Some(80));
    // A closing connection's packets restart its 10 s.
    c.inbound(t + 2 * S, TCP, ACK, client(0), 80).unwrap();
    c.handle_timeout(t + 11 * S - 1);
    assert_eq!(c.connections(), 3);
    c.handle_timeout(t + 11 * S);
    assert_eq!(c.connections(), 2);
    c.handle_timeout(t + 12 * S);
    assert_eq!(c.connections(), 1);
    assert_eq!(c.outbound(t + 12 * S, TCP, ACK, a, client(0)), None);
    assert_eq!(c.outbound(t + 12 * S, TCP, ACK, a, client(2)), Some(80));
    c.check_invariants();
}

#[test]
fn a_syn_on_a_closing_connection_is_scheduled_again() {
    let mut c = clb(vec![tcp(80, WRR, &[(A, 1), (B, 1)])]);
    let (a, b) = (sa("10.0.0.1:8080"), sa("10.0.0.2:8080"));
    assert_eq!(c.inbound(T0, TCP, SYN, client(1), 80), Ok(a));
    // A retransmitted SYN on a live connection stays.
    assert_eq!(c.inbound(T0, TCP, SYN, client(1), 80), Ok(a));
    c.inbound(T0 + S, TCP, FIN_ACK, client(1), 80).unwrap();
    c.outbound(T0 + S, TCP, FIN_ACK, a, client(1)).unwrap();
    // The closing connection's last ACK stays too.
    assert_eq!(c.inbound(T0 + S, TCP, ACK, client(1), 80), Ok(a));
    assert_eq!(c.inbound(T0 + 2 * S, TCP, SYN, client(1), 80), Ok(b));
    assert_eq!(c.outbound(T0 + 2 * S, TCP, ACK, a, client(1)), None);
    assert_eq!(
        c.outbound(T0 + 2 * S, TCP, SYN | ACK, b, client(1)),
        Some(80)
    );
    assert_eq!(
        backend_stats(&c, 0),
        [(Health::Unknown, 0, 1), (Health::Unknown, 1, 1)]
    );
    // After an RST as well; the new connection is not closing.
    c.inbound(T0 + 3 * S, TCP, RST_, client(1), 80).unwrap();
    assert_eq!(c.inbound(T0 + 3 * S, TCP, SYN, client(1), 80), Ok(a));
    assert_eq!(c.poll_timeout(), Some(T0 + 903 * S));
    assert_eq!(c.connections(), 1);
    c.check_invariants();
}

#[test]
fn freed_slots_are_reused() {
    let mut c = clb(vec![tcp(80, WRR, &[(A, 1), (B, 1)])]);
    picks(&mut c, T0, 0, 100);
    c.handle_timeout(T0 + 900 * S);
    assert_eq!(c.connections(), 0);
    picks(&mut c, T0 + 900 * S, 100, 100);
    assert_eq!(c.conns.len(), 100);
    assert_eq!((c.by_client.len(), c.by_backend.len()), (100, 100));
    c.check_invariants();
}

// --- configuration changes ---

#[test]
fn set_config_keeps_connections_and_health_of_remaining_backends() {
    let mut c = clb(vec![tcp(80, RR, &[(A, 1), (B, 1), (C, 1)])]);
    assert_eq!(picks(&mut c, T0, 0, 3), "abc");
    assert_eq!(c.report_health(0, 0, true), Some(Health::Up));
    assert_eq!(c.report_health(0, 2, false), Some(Health::Down));
    // B leaves, D comes; a UDP listener is added before it, so indexes move.
    let mut udp = ListenerConfig::udp(53);
    udp.backends = vec![BackendConfig {
        addr: v4(A),
        weight: 1,
    }];
    c.set_config(ClbConfig {
        listeners: vec![udp, tcp(80, RR, &[(C, 1), (A, 1), (D, 1)])],
        ..ClbConfig::default()
    });
    c.check_invariants();
    assert_eq!(c.connections(), 2);
    assert_eq!(
        backend_stats(&c, 1),
        [
            (Health::Down, 1, 1),
            (Health::Up, 1, 1),
            (Health::Unknown, 0, 0)
        ]
    );
    assert_eq!(
        c.inbound(T0 + S, TCP, ACK, client(0), 80),
        Ok(sa("10.0.0.1:8080"))
    );
    assert_eq!(
        c.inbound(T0 + S, TCP, ACK, client(2), 80),
        Ok(sa("10.0.0.3:8080"))
    );
    assert_eq!(
        c.outbound(T0 + S, TCP, ACK, sa("10.0.0.2:8080"), client(1)),
        None
    );
    // Client 1's connection ended with B; its next packet is a new connection (C is Down).
    assert_eq!(
        c.inbound(T0 + S, TCP, ACK, client(1), 80),
        Ok(sa("10.0.0.1:8080"))
    );
    assert_eq!(c.report_health(1, 1, false), None);
    c.check_invariants();
}

#[test]
fn set_config_drops_connections_of_a_removed_listener_or_changed_backend_port() {
    let mut c = clb(vec![
        tcp(80, WRR, &[(A, 1)]),
        tcp(81, WRR, &[(A, 1)]),
        tcp(82, WRR, &[(A, 1)]),
    ]);
    for port in [80, 81, 82] {
        c.inbound(T0, TCP, SYN, client(port), port).unwrap();
    }
    let mut moved = tcp(81, WRR, &[(A, 1)]);
    moved.backend_port = 9090;
    let mut udp82 = ListenerConfig::udp(82);
    udp82.backends = vec![BackendConfig {
        addr: v4(A),
        weight: 1,
    }];
    c.set_config(ClbConfig {
        listeners: vec![tcp(80, WRR, &[(A, 1)]), moved, udp82],
        ..ClbConfig::default()
    });
    c.check_invariants();
    assert_eq!(c.connections(), 1);
    assert_eq!(
        c.outbound(T0, TCP, ACK, sa("10.0.0.1:8080"), client(80)),
        Some(80)
    );
    assert_eq!(
        c.inbound(T0, TCP, ACK, client(81), 81),
        Ok(sa("10.0.0.1:9090"))
    );
    assert_eq!(
        c.inbound(T0, TCP, ACK, client(82), 82),
        Err(ClbDrop::NoListener)
    );
    // Totals stay with the backend.
    assert_eq!(backend_stats(&c, 1)[0].2, 2);
}

#[test]
fn set_config_restarts_the_scheduler_only_where_backends_changed() {
    let l = |port| tcp(port, WRR, &[(A, 5), (B, 1), (C, 1)]);
    let mut c = clb(vec![l(80), l(81)]);
    let picks_on = |c: &mut Clb, port: u16, first: u16, n: u16| -> String {
        (first..first + n)
            .map(|i| {
                let b = c.inbound(T0, TCP, SYN, client(i), port).unwrap();
                (b'a' + b.ip().octets()[3] - 1) as char
            })
            .collect()
    };
    assert_eq!(picks_on(&mut c, 80, 0, 3), "aab");
    // (Other clients: the listeners share a backend port.)
    assert_eq!(picks_on(&mut c, 81, 50, 3), "aab");
    let mut changed = l(81);
    changed.backends.push(BackendConfig {
        addr: v4(D),
        weight: 0,
    });
    // A health check change alone keeps the scheduler.
    let mut same = l(80);
    same.health.interval_ms = 5000;
    c.set_config(ClbConfig {
        listeners: vec![same, changed],
        ..ClbConfig::default()
    });
    assert_eq!(picks_on(&mut c, 80, 100, 4), "acaa");
    assert_eq!(picks_on(&mut c, 81, 200, 7), "aabacaa");
}

#[test]
fn set_config_with_the_check_off_makes_down_backends_eligible() {
    let mut c = clb(vec![tcp(80, WRR, &[(A, 1)])]);
    c.report_health(0, 0, false);
    assert_eq!(
        c.inbound(T0, TCP, SYN, client(0), 80),
        Err(ClbDrop::NoHealthyBackend)
    );
    let mut off = tcp(80, WRR, &[(A, 1)]);
    off.health.enabled = false;
    c.set_config(ClbConfig {
        listeners: vec![off],
        ..ClbConfig::default()
    });
    assert_eq!(backend_stats(&c, 0)[0].0, Health::Unknown);
    assert!(c.inbound(T0, TCP, SYN, client(0), 80).is_ok());
    assert!(c.health_targets().is_empty());
}

#[test]
fn stats_count_active_and_total_connections() {
    let mut c = clb(vec![tcp(80, WRR, &[(A, 3), (B, 2), (C, 1)])]);
    picks(&mut c, T0, 0, 6);
    picks(&mut c, T0 + 100 * S, 6, 6);
    let s = c.stats();
    assert_eq!(s.connections, 12);
    let at = |s: &ClbStats| -> Vec<(usize, u64)> {
        s.listeners[0]
            .backends
            .iter()
            .map(|b| (b.active, b.total))
            .collect()
    };
    assert_eq!(at(&s), [(6, 6), (4, 4), (2, 2)]);
    c.handle_timeout(T0 + 900 * S);
    let s = c.stats();
    assert_eq!(s.connections, 6);
    assert_eq!(at(&s), [(3, 6), (2, 4), (1, 2)]);
    assert_eq!((s.listeners[0].protocol, s.listeners[0].port), (TCP, 80));
    assert_eq!(s.listeners[0].backends[0].addr, v4(A));
    assert_eq!(s.listeners[0].backends[0].weight, 3);
}

// --- random operations ---

const IPS: [&str; 4] = [A, B, C, D];
const PORTS: [u16; 3] = [80, 81, 53];
const BACKEND_PORTS: [u16; 3] = [8080, 8081, 53];

#[derive(Clone, Debug)]
enum Op {
    In {
        udp: bool,
        flags: u8,
        client: u16,
        port: usize,
    },
    Out {
        udp: bool,
        flags: u8,
        backend: usize,
        port: usize,
        client: u16,
    },
    Health {
        listener: usize,
        backend: usize,
        ok: bool,
    },
    /// Seconds forward, or (negative) back.
    Time(i64),
    Timeout,
    Config(ClbConfig),
}

fn flags() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(SYN),
        Just(ACK),
        Just(SYN | ACK),
        Just(FIN_ACK),
        Just(RST_),
        any::<u8>()
    ]
}

fn listener() -> impl Strategy<Value = ListenerConfig> {
    (
        any::<bool>(),
        0..PORTS.len(),
        0..BACKEND_PORTS.len(),
        any::<bool>(),
        proptest::collection::vec(
            (0..IPS.len(), prop_oneof![Just(0u16), 1..5u16, Just(100u16)]),
            0..5,
        ),
        any::<bool>(),
        0..4u8,
        0..4u8,
        1..120u64,
    )
        .prop_map(|(udp, p, bp, rr, backends, check, ht, ut, idle)| {
            let mut l = if udp {
                ListenerConfig::udp(PORTS[p])
            } else {
                ListenerConfig::tcp(PORTS[p])
            };
            l.backend_port = BACKEND_PORTS[bp];
            l.scheduler = if rr { RR } else { WRR };
            l.backends = backends
                .into_iter()
                .map(|(a, w)| BackendConfig {
                    addr: v4(IPS[a]),
                    weight: w,
                })
                .collect();
            l.health.enabled = check;
            l.health.healthy_threshold = ht;
            l.health.unhealthy_threshold = ut;
            l.idle_timeout_ns = idle * S;
            l
        })
}

fn config() -> impl Strategy<Value = ClbConfig> {
    (proptest::collection::vec(listener(), 0..4), 0..10usize).prop_map(
        |(listeners, max_connections)| ClbConfig {
            listeners,
            max_connections,
        },
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (any::<bool>(), flags(), 0..6u16, 0..PORTS.len())
            .prop_map(|(udp, flags, client, port)| Op::In { udp, flags, client, port }),
        4 => (any::<bool>(), flags(), 0..IPS.len(), 0..BACKEND_PORTS.len(), 0..6u16)
            .prop_map(|(udp, flags, backend, port, client)| Op::Out {
                udp, flags, backend, port, client
            }),
        3 => (0..5usize, 0..6usize, any::<bool>())
            .prop_map(|(listener, backend, ok)| Op::Health { listener, backend, ok }),
        3 => prop_oneof![4 => 0..200i64, 1 => -5..0i64].prop_map(Op::Time),
        1 => Just(Op::Timeout),
        1 => config().prop_map(Op::Config),
    ]
}

/// The counts agree with each other and with the slab.
fn check_counts(c: &Clb) -> Result<(), TestCaseError> {
    c.check_invariants();
    let s = c.stats();
    let active: usize = s
        .listeners
        .iter()
        .flat_map(|l| &l.backends)
        .map(|b| b.active)
        .sum();
    prop_assert_eq!(s.connections, c.connections());
    prop_assert_eq!(active, c.connections());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    /// No sequence of packets, probe results, timeouts and configurations panics or lets
    /// the counts drift, a forwarded packet's backend answers back to its listener port,
    /// and in the end every connection expires.
    #[test]
    fn random_operations_never_panic_and_counts_agree(
        cfg in config(),
        ops in proptest::collection::vec(op(), 1..150),
    ) {
        let mut c = Clb::new(cfg);
        let mut now = T0;
        for op in ops {
            match op {
                Op::In { udp, flags, client: n, port } => {
                    let proto = if udp { UDP } else { TCP };
                    if let Ok(b) = c.inbound(now, proto, flags, client(n), PORTS[port]) {
                        prop_assert_eq!(
                            c.outbound(now, proto, ACK, b, client(n)),
                            Some(PORTS[port])
                        );
                    }
                }
                Op::Out { udp, flags, backend, port, client: n } => {
                    let proto = if udp { UDP } else { TCP };
                    let b = SocketAddrV4::new(v4(IPS[backend]), BACKEND_PORTS[port]);
                    if let Some(p) = c.outbound(now, proto, flags, b, client(n)) {
                        prop_assert!(PORTS.contains(&p));
                    }
                }
                Op::Health { listener, backend, ok } => {
                    c.report_health(listener, backend, ok);
                }
                Op::Time(d) => now = now.saturating_add_signed(d * S as i64),
                Op::Timeout => {
                    if let Some(t) = c.poll_timeout() {
                        c.handle_timeout(t);
                        now = now.max(t);
                    }
                }
                Op::Config(cfg) => c.set_config(cfg),
            }
            check_counts(&c)?;
        }
        let _ = c.health_targets();
        c.handle_timeout(now + 10_000 * S);
        check_counts(&c)?;
        prop_assert_eq!(c.connections(), 0);
        prop_assert_eq!(c.poll_timeout(), None);
    }
}
