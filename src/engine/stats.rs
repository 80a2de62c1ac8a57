//! Drop reasons, counters and the per-EIP policer.

use crate::alg::AlgProtocol;

macro_rules! reasons {
    ($($(#[$m:meta])* $v:ident = $name:literal,)*) => {
        /// Why the engine dropped a packet. Small and `Copy`: it indexes counter arrays.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum DropReason { $($(#[$m])* $v,)* }

        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$v,)*];
            pub const COUNT: usize = DropReason::ALL.len();

            /// The name used in `status` and in metrics labels.
            pub fn name(self) -> &'static str {
                match self { $(DropReason::$v => $name,)* }
            }

            pub fn from_name(s: &str) -> Option<DropReason> {
                match s { $($name => Some(DropReason::$v),)* _ => None }
            }
        }
    };
}

reasons! {
    // Malformed input.
    /// Shorter than its headers or its length fields say.
    Truncated = "truncated",
    /// IP version neither 4 nor 6.
    BadVersion = "bad_version",
    /// IHL below 5.
    BadHeaderLen = "bad_header_len",
    /// Total length below the header length.
    BadTotalLen = "bad_total_len",
    BadHeaderChecksum = "bad_header_checksum",
    /// The TCP/UDP/ICMP header does not fit in the (first) fragment.
    TruncatedL4 = "truncated_l4",
    /// TCP data offset impossible.
    BadL4Header = "bad_l4_header",
    /// An ICMP error whose quoted packet cannot be read, so cannot be translated.
    BadIcmpQuote = "bad_icmp_quote",
    /// Source or destination that no host can have (0/8, 127/8, multicast, broadcast, 240/4).
    Martian = "martian",
    // Explicit rules for what the EIP gateway does not carry.
    /// IPv6 (EIPs here are IPv4).
    Ipv6 = "ipv6",
    /// An IP protocol other than TCP/UDP/ICMP under `other_protocols = drop`.
    UnsupportedProtocol = "unsupported_protocol",
    // SPEC §2 rules.
    /// From the internet to an address that is no EIP of the lab.
    UnknownDestination = "unknown_destination",
    /// D7: an EIP with no association.
    EipUnassociated = "eip_unassociated",
    /// D7: the instance is not Running.
    InstanceStopped = "instance_stopped",
    /// The ENI is not attached to any instance.
    EniDetached = "eni_detached",
    /// A packet from an interface the table does not know.
    UnknownEni = "unknown_eni",
    /// D6: source not owned by the sending ENI.
    SourceCheck = "source_check",
    /// Guest -> internet from a private IP with no EIP.
    NoPublicIp = "no_public_ip",
    /// D5 in NAT mode: a VPC address nobody owns (or whose owner is down).
    VpcUnreachable = "vpc_unreachable",
    /// D4: 100.64.0.0/10 through a cut-through ENI.
    CutThroughBlackhole = "cut_through_blackhole",
    /// D5: the VPC through a cut-through ENI.
    CutThroughPrivate = "cut_through_private",
    /// D3: ALG-dependent protocols under NAT, policy `drop`.
    AlgSip = "alg_sip",
    AlgH323 = "alg_h323",
    AlgRtsp = "alg_rtsp",
    AlgDns = "alg_dns",
    AlgFtp = "alg_ftp",
    AlgTftp = "alg_tftp",
    /// D8: above the EIP's bandwidth.
    BandwidthExceeded = "bandwidth_exceeded",
    /// TTL reached zero (an ICMP time exceeded is sent where the gateway has an address).
    TtlExceeded = "ttl_exceeded",
    /// A fragment that could not be tracked: the fragment table is full.
    FragmentTableFull = "fragment_table_full",
    /// A fragment held for its first fragment, which never came.
    FragmentTimeout = "fragment_timeout",
    // D9–D11: an internet NAT gateway.
    /// From a private source that no SNAT entry (nor whole-IP DNAT entry) of the gateway covers.
    NatGatewayNoSnatEntry = "nat_gateway_no_snat_entry",
    /// The gateway's session table is full (`max_sessions`): a new flow is refused while the
    /// live ones carry on.
    NatGatewaySessionTableFull = "nat_gateway_session_table_full",
    /// No free external port for a new flow (answered with ICMP destination unreachable,
    /// code 13).
    NatGatewayPortsExhausted = "nat_gateway_ports_exhausted",
    /// To a gateway EIP and port with no session, DNAT entry or mapping; or an ICMP error
    /// about a flow the gateway does not know.
    NatGatewayNoSession = "nat_gateway_no_session",
    /// A mapping exists, but its filtering does not admit this remote (RFC 4787 REQ-8).
    NatGatewayFiltered = "nat_gateway_filtered",
    /// From inside to a gateway EIP, with hairpinning off.
    NatGatewayHairpinOff = "nat_gateway_hairpin_off",
    /// A new flow's addresses and ports are held by another session.
    NatGatewayConflict = "nat_gateway_conflict",
    /// A fragmented datagram: the gateway does not reassemble, so it carries whole
    /// datagrams only.
    NatGatewayFragment = "nat_gateway_fragment",
    // D13: an internal-facing CLB behind an EIP.
    /// To a CLB's EIP on a protocol and port none of its listeners serves.
    ClbNoListener = "clb_no_listener",
    /// A new connection to a listener whose backends are all failing their health check
    /// (or weigh 0).
    ClbNoHealthyBackend = "clb_no_healthy_backend",
    /// The CLB's connection table is full (`max_connections`): a new connection is refused
    /// while the live ones carry on.
    ClbConnectionTableFull = "clb_connection_table_full",
    /// A new connection whose client address and port already have a connection to every
    /// eligible backend's port through another listener: the replies could not be told apart.
    ClbConflict = "clb_conflict",
    /// A fragmented datagram to or from a CLB: it carries whole datagrams only (it would have
    /// to reassemble them to find their ports).
    ClbFragment = "clb_fragment",
}

impl DropReason {
    /// The ALG drop reason of a protocol.
    pub fn alg(p: AlgProtocol) -> DropReason {
        match p {
            AlgProtocol::Sip => DropReason::AlgSip,
            AlgProtocol::H323 => DropReason::AlgH323,
            AlgProtocol::Rtsp => DropReason::AlgRtsp,
            AlgProtocol::Dns => DropReason::AlgDns,
            AlgProtocol::Ftp => DropReason::AlgFtp,
            AlgProtocol::Tftp => DropReason::AlgTftp,
        }
    }

    /// Whether the reason is one of the ALG drops (`alg_*`).
    pub fn is_alg(self) -> bool {
        matches!(
            self,
            DropReason::AlgSip
                | DropReason::AlgH323
                | DropReason::AlgRtsp
                | DropReason::AlgDns
                | DropReason::AlgFtp
                | DropReason::AlgTftp
        )
    }

    /// Whether the packet itself was malformed (as opposed to refused by a rule).
    pub fn is_malformed(self) -> bool {
        (self as u8) <= DropReason::Martian as u8
    }
}

/// Drops by reason.
pub type DropCounts = [u64; DropReason::COUNT];

/// Packets and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl Counter {
    #[inline(always)]
    pub(crate) fn add(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
    }

    pub fn merge(&mut self, o: &Counter) {
        self.packets += o.packets;
        self.bytes += o.bytes;
    }
}

/// A token bucket measured in nano-bytes (bytes × 10⁹), so that refilling from nanoseconds at
/// any rate loses nothing to rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bucket {
    tokens: u64,
    last_ns: u64,
}

impl Default for Bucket {
    fn default() -> Self {
        // Starts full: the first refill clamps it to the burst size.
        Bucket {
            tokens: u64::MAX,
            last_ns: 0,
        }
    }
}

/// Burst size of a policer: 100 ms at its rate, and never less than 128 KiB so that a
/// whole GSO super-packet (up to 64 KiB) can pass even a 1 Mbit/s EIP.
#[inline]
pub fn burst_bytes(rate_mbps: u32) -> u64 {
    (rate_mbps as u64 * 125_000 / 10).max(128 * 1024)
}

/// A policer's rate and burst, worked out once when a table is taken rather than on every
/// packet: `rate` in nano-bytes per nanosecond (= bytes per second; 0 is unlimited) and
/// `burst` in nano-bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Policer {
    rate: u64,
    burst: u64,
}

impl Policer {
    /// The policer of an EIP of `rate_mbps` Mbit/s each way (0: unlimited).
    pub(crate) fn from_mbps(rate_mbps: u32) -> Policer {
        Policer {
            rate: rate_mbps as u64 * 125_000,
            burst: burst_bytes(rate_mbps).saturating_mul(1_000_000_000),
        }
    }

    /// Takes `bytes` from `b` if it holds enough tokens.
    #[inline(always)]
    pub(crate) fn admit(&self, b: &mut Bucket, now: u64, bytes: usize) -> bool {
        if self.rate == 0 {
            return true;
        }
        let elapsed = now.saturating_sub(b.last_ns);
        if now > b.last_ns {
            b.last_ns = now;
        }
        let tokens = b
            .tokens
            .saturating_add(elapsed.saturating_mul(self.rate))
            .min(self.burst);
        let need = bytes as u64 * 1_000_000_000;
        if tokens >= need {
            b.tokens = tokens - need;
            true
        } else {
            b.tokens = tokens;
            false
        }
    }
}

/// Counters of one EIP, as read from an engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EipCounters {
    /// Internet -> guest (after the policer).
    pub to_guest: Counter,
    /// Guest -> internet (after the policer).
    pub from_guest: Counter,
    pub drops: DropCounts,
}

impl Default for EipCounters {
    fn default() -> Self {
        EipCounters {
            to_guest: Counter::default(),
            from_guest: Counter::default(),
            drops: [0; DropReason::COUNT],
        }
    }
}

/// Counters of one ENI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EniCounters {
    /// Delivered to the guest on this ENI.
    pub to_guest: Counter,
    /// Received from the guest on this ENI and forwarded.
    pub from_guest: Counter,
    pub drops: DropCounts,
}

impl Default for EniCounters {
    fn default() -> Self {
        EniCounters {
            to_guest: Counter::default(),
            from_guest: Counter::default(),
            drops: [0; DropReason::COUNT],
        }
    }
}

impl EipCounters {
    pub fn merge(&mut self, o: &EipCounters) {
        self.to_guest.merge(&o.to_guest);
        self.from_guest.merge(&o.from_guest);
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += b;
        }
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}

impl EniCounters {
    pub fn merge(&mut self, o: &EniCounters) {
        self.to_guest.merge(&o.to_guest);
        self.from_guest.merge(&o.from_guest);
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += b;
        }
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}

/// Engine-wide counters. At any moment every packet received is in exactly one of
/// `forwarded`, `replied`, `held` or `drops`: `received == forwarded + replied + held + drops`.
/// A held fragment leaves `held` when it is released (and processed again: `received` counts
/// it once), dropped with its datagram, or timed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalCounters {
    pub received: Counter,
    pub forwarded: Counter,
    /// Echo requests to the gateway's own addresses, answered.
    pub replied: Counter,
    /// Fragments waiting for their first fragment now (a gauge, not a total).
    pub held: u64,
    /// ICMP time exceeded messages sent (the expired packets themselves are `ttl_exceeded`
    /// drops).
    pub icmp_errors_sent: u64,
    pub drops: DropCounts,
    /// NAT-mode packets of ALG-dependent protocols passed (`pass` or `inspect`), by protocol.
    pub alg_passed: [u64; AlgProtocol::COUNT],
    /// Payloads flagged by `inspect`, by protocol.
    pub alg_flagged: [u64; AlgProtocol::COUNT],
    /// Packets of protocols other than TCP/UDP/ICMP forwarded.
    pub other_protocol: u64,
    /// Hairpinned packets (guest -> another EIP of the lab).
    pub hairpin: u64,
}

impl Default for GlobalCounters {
    fn default() -> Self {
        GlobalCounters {
            received: Counter::default(),
            forwarded: Counter::default(),
            replied: Counter::default(),
            held: 0,
            icmp_errors_sent: 0,
            drops: [0; DropReason::COUNT],
            alg_passed: [0; AlgProtocol::COUNT],
            alg_flagged: [0; AlgProtocol::COUNT],
            other_protocol: 0,
            hairpin: 0,
        }
    }
}

impl GlobalCounters {
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in DropReason::ALL {
            assert!(seen.insert(r.name()));
            assert_eq!(DropReason::from_name(r.name()), Some(*r));
        }
        assert_eq!(DropReason::COUNT, seen.len());
        assert!(DropReason::Truncated.is_malformed() && DropReason::Martian.is_malformed());
        assert!(!DropReason::Ipv6.is_malformed());
        assert!(DropReason::alg(AlgProtocol::Tftp).is_alg());
    }

    #[test]
    fn bucket_polices_to_its_rate() {
        // 8 Mbit/s = 1 MB/s; burst max(100 KB, 128 KiB) = 131072 B.
        let mut b = Bucket::default();
        let p = Policer::from_mbps(8);
        let mut passed = 0u64;
        let start = 1_000_000_000u64;
        // Offer 1500-byte packets at 4 MB/s for one second.
        for i in 0..(4_000_000 / 1500) {
            let now = start + i * 375_000; // 1500 B / 4 MB/s = 375 µs
            if p.admit(&mut b, now, 1500) {
                passed += 1500;
            }
        }
        // One second at 1 MB/s plus the initial burst, within a packet.
        let want = 1_000_000 + burst_bytes(8);
        assert!(passed <= want + 1500, "passed {passed}");
        assert!(passed + 3000 >= want, "passed {passed}");
    }

    #[test]
    fn bucket_unlimited_and_slow_refill_keep_fractions() {
        let mut b = Bucket::default();
        assert!(Policer::from_mbps(0).admit(&mut b, 0, usize::MAX / 2_000_000_000));
        // Drain a 1 Mbit/s bucket, then refill it by 1 µs steps: 0.125 B each, which must add up.
        let mut b = Bucket::default();
        let p = Policer::from_mbps(1);
        let t0 = 5_000_000_000;
        while p.admit(&mut b, t0, 1000) {}
        let mut t = t0;
        let mut ok = false;
        for _ in 0..9000 {
            t += 1000;
            if p.admit(&mut b, t, 1000) {
                ok = true;
                break;
            }
        }
        // 1000 B at 125 B/ms takes 8 ms = 8000 steps.
        assert!(ok, "fractions of a byte were lost");
        assert!(t - t0 >= 7_000_000);
    }

    #[test]
    fn bucket_survives_time_going_backwards() {
        let mut b = Bucket::default();
        let p = Policer::from_mbps(1);
        assert!(p.admit(&mut b, 10_000, 100));
        assert!(p.admit(&mut b, 5_000, 100));
    }
}
