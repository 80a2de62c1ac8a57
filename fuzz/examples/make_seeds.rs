//! Writes the seed corpus under fuzz/seeds/<target>/, deterministically, from packets built
//! with `eiplab::wire::build`, then runs every seed through its harness.
//!
//! cargo run --manifest-path fuzz/Cargo.toml --example make_seeds [-- --trace]

#![allow(clippy::vec_init_then_push)]

use eiplab::engine::Side;
use eiplab::wire::build;
use eiplab_fuzz::engine::{ctl, op, seed, Record};
use eiplab_fuzz::fixture::*;
use eiplab_fuzz::gen::{fix, ipf, Gen, Kind};
use std::path::{Path, PathBuf};

const SIP_INVITE: &str = "INVITE sip:bob@192.0.2.55 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.1.10:5060;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@192.0.2.55>\r\n\
From: Alice <sip:alice@10.0.1.10>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@10.0.1.10\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@10.0.1.10:5060>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 131\r\n\
\r\n\
v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 10.0.1.10\r\n\
s=-\r\n\
c=IN IP4 10.0.1.10\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n";

const SIP_OK: &str = "SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK776asdhds\r\n\
To: Bob <sip:bob@192.0.2.55>;tag=a6c85cf\r\n\
From: Alice <sip:alice@198.51.100.10>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@198.51.100.10\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:bob@192.0.2.55>\r\n\
Content-Length: 0\r\n\r\n";

const FTP_PORT: &str = "PORT 10,0,1,10,195,80\r\n";
const FTP_EPRT: &str = "EPRT |1|10.0.1.10|50000|\r\n";
const FTP_PASV_REPLY: &str = "227 Entering Passive Mode (10,0,1,10,195,80).\r\n";
const RTSP_SETUP: &str = "SETUP rtsp://192.0.2.55/media.mp4/streamid=0 RTSP/1.0\r\n\
CSeq: 3\r\n\
Transport: RTP/AVP;unicast;destination=10.0.1.10;client_port=8000-8001\r\n\r\n";

/// A DNS response for a.example carrying 10.0.1.10.
fn dns_response() -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
    m.extend_from_slice(b"\x01a\x07example\x00\x00\x01\x00\x01");
    m.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4, 10, 0, 1, 10]);
    m
}

fn tftp_rrq() -> Vec<u8> {
    b"\x00\x01boot/pxelinux.0\x00octet\x00".to_vec()
}

/// A TPKT/Q.931 Setup with an H.245 address (10.0.1.10:1720) in it.
fn h323_setup() -> Vec<u8> {
    let mut m = vec![
        0x03, 0x00, 0x00, 0x30, 0x08, 0x02, 0x00, 0x01, 0x05, 0x7e, 0x00, 0x24,
    ];
    m.extend_from_slice(&[0x05, 0x20, 0x80, 0x06, 0x00, 0x08, 0x91, 0x4a, 0x00, 0x05]);
    m.extend_from_slice(&[0x00, 10, 0, 1, 10, 0x06, 0xb8]);
    m.resize(0x30, 0);
    m
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn clean(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
}

fn ip(o: [u8; 4]) -> std::net::Ipv4Addr {
    a(o)
}

fn batch(mut r: Record) -> Record {
    r.op = op::BATCH;
    r
}

fn engine_seeds() -> Vec<(&'static str, Vec<Record>)> {
    use seed::*;
    let inet = Side::Internet;
    let nat = Side::Eni(ENI_NAT);
    let h = INTERNET_HOST;
    let h2 = INTERNET_HOST2;
    let e0 = NAT_EIP[0];
    let p0 = NAT_PRIV[0];
    let mut v: Vec<(&'static str, Vec<Record>)> = Vec::new();

    // NAT both ways, raw packets.
    v.push((
        "nat_in_udp",
        vec![raw(
            inet,
            &build::udp(ip(h), 40000, ip(e0), 12345, b"hello"),
        )],
    ));
    v.push((
        "nat_out_udp",
        vec![raw(nat, &build::udp(ip(p0), 12345, ip(h), 40000, b"hello"))],
    ));
    v.push((
        "nat_in_tcp",
        vec![
            raw(
                inet,
                &build::tcp(ip(h), 40000, ip(NAT_EIP[1]), 80, 0x02, b""),
            ),
            raw(
                inet,
                &build::tcp(
                    ip(h),
                    40000,
                    ip(NAT_EIP[1]),
                    80,
                    0x18,
                    b"GET / HTTP/1.1\r\n\r\n",
                ),
            ),
        ],
    ));
    v.push((
        "nat_out_tcp",
        vec![raw(
            nat,
            &build::tcp(
                ip(NAT_PRIV[2]),
                40001,
                ip(h2),
                443,
                0x18,
                &[0x16, 3, 1, 0, 5],
            ),
        )],
    ));
    // The same, generated (patch mode), so the fuzzer mutates the choices.
    v.push((
        "gen_nat_in_udp",
        vec![gen(
            inet,
            &Gen::new(Kind::Udp, h, e0).ports(40000, 12345).payload(b"x"),
        )],
    ));
    v.push((
        "gen_nat_out_tcp",
        vec![gen(
            nat,
            &Gen::new(Kind::Tcp, p0, h)
                .ports(12345, 80)
                .payload(b"GET /"),
        )],
    ));
    v.push((
        "gen_partial_tcp_out",
        vec![Record {
            ctl: ctl::PATCH | ctl::PARTIAL,
            ..gen(
                nat,
                &Gen::new(Kind::Tcp, p0, h)
                    .ports(12345, 443)
                    .payload(b"data"),
            )
        }],
    ));
    v.push((
        "gen_partial_udp_in",
        vec![Record {
            ctl: ctl::PATCH | ctl::PARTIAL,
            ..gen(
                inet,
                &Gen::new(Kind::Udp, h, e0).ports(123, 12345).payload(b"ntp"),
            )
        }],
    ));

    // Pings: through an EIP to the guest, to the gateways (answered).
    v.push((
        "ping_eip",
        vec![raw(inet, &build::ping(ip(h), ip(e0), 7, 1, b"abcdefgh"))],
    ));
    v.push((
        "ping_internet_gw",
        vec![raw(
            inet,
            &build::ping(ip(h), ip(INTERNET_GW), 7, 2, b"abcdefgh"),
        )],
    ));
    v.push((
        "ping_vswitch_gw",
        vec![raw(nat, &build::ping(ip(p0), ip(GW1), 9, 1, b"abcdefgh"))],
    ));
    v.push((
        "gen_ping_out",
        vec![gen(
            nat,
            &Gen::new(Kind::Ping, NAT_PRIV[1], h2)
                .ports(80, 443)
                .payload(b"ping"),
        )],
    ));

    // ICMP errors quoting a translated packet, both ways.
    let quoted = build::udp(ip(e0), 12345, ip(h), 40000, b"hello");
    v.push((
        "icmp_unreach_in",
        vec![raw(inet, &build::icmp(ip(h), ip(e0), 3, 3, 0, &quoted))],
    ));
    let quoted = build::udp(ip(h), 40000, ip(p0), 12345, b"hello");
    v.push((
        "icmp_unreach_out",
        vec![raw(
            nat,
            &build::icmp(ip(p0), ip(h), 3, 3, 0, &quoted[..28]),
        )],
    ));
    v.push((
        "gen_icmp_unreach_in",
        vec![gen(
            inet,
            &Gen::new(Kind::UnreachUdp, h, e0)
                .ports(40000, 12345)
                .payload(b"q"),
        )],
    ));
    v.push((
        "gen_time_exceeded_tcp_in",
        vec![gen(
            inet,
            &Gen {
                ipf: ipf::FULL_QUOTE,
                ..Gen::new(Kind::TimeExceededTcp, h2, NAT_EIP[1]).ports(443, 40000)
            },
        )],
    ));
    v.push((
        "gen_frag_needed_out",
        vec![gen(
            nat,
            &Gen::new(Kind::FragNeededPing, NAT_PRIV[2], h).ports(1, 2),
        )],
    ));
    v.push((
        "gen_short_quote",
        vec![gen(
            inet,
            &Gen::new(Kind::ShortQuote, h, e0).ports(53, 12345),
        )],
    ));

    // Fragments out of order: SIP over UDP to an EIP (inspected), last and middle first.
    let frag = |sel: u8, side: Side, src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16| {
        gen(
            side,
            &Gen {
                ipf: sel,
                frag: 2, // 24-byte pieces
                ..Gen::new(Kind::Udp, src, dst)
                    .ports(sp, dp)
                    .payload(SIP_INVITE.as_bytes())
            },
        )
    };
    v.push((
        "frags_out_of_order_sip",
        vec![
            frag(ipf::LAST, inet, h, e0, 5060, 5060),
            frag(ipf::SECOND, inet, h, e0, 5060, 5060),
            frag(ipf::FIRST, inet, h, e0, 5060, 5060),
            housekeeping(0),
        ],
    ));
    // A datagram the ALG drops (TFTP): its held fragments are dropped with it.
    v.push((
        "frags_alg_drop_tftp",
        vec![
            frag(ipf::SECOND, nat, p0, h, 40000, 69),
            frag(ipf::LAST, nat, p0, h, 40000, 69),
            frag(ipf::FIRST, nat, p0, h, 40000, 69),
            housekeeping(0),
        ],
    ));
    // Fragments whose first never comes: timeout.
    v.push((
        "frags_timeout",
        vec![
            frag(ipf::SECOND, inet, h, e0, 5060, 5060),
            housekeeping(0x82),
        ],
    ));
    // Many datagrams: the table (8 entries, 4096 bytes) fills up.
    let mut many = Vec::new();
    for (i, dst) in NAT_EIP.iter().enumerate() {
        for id in 0..4u8 {
            many.push(gen(
                inet,
                &Gen {
                    ipf: ipf::LAST,
                    frag: (id << 3) | 7,
                    ..Gen::new(Kind::Udp, if i == 1 { h2 } else { h }, *dst)
                        .ports(5060, 5060)
                        .payload(&[b'z'; 300])
                },
            ));
        }
    }
    many.push(housekeeping(0x41));
    v.push(("frags_table_full", many));
    // Fragments released into a buffer too small for them.
    v.push((
        "frags_release_small_buffer",
        vec![
            frag(ipf::LAST, inet, h, e0, 5060, 5060),
            Record {
                ctl: ctl::PATCH | ctl::DRAIN | (2 << ctl::RELEASE_BUF_SHIFT),
                ..frag(ipf::FIRST, inet, h, e0, 5060, 5060)
            },
        ],
    ));

    // ALG protocols under NAT.
    v.push((
        "sip_invite_out",
        vec![
            raw(
                nat,
                &build::udp(ip(p0), 5060, ip(h2), 5060, SIP_INVITE.as_bytes()),
            ),
            housekeeping(0),
        ],
    ));
    v.push((
        "sip_ok_in",
        vec![raw(
            inet,
            &build::udp(ip(h2), 5060, ip(e0), 5060, SIP_OK.as_bytes()),
        )],
    ));
    v.push((
        "gen_sip_invite_out",
        vec![
            gen(
                nat,
                &Gen::new(Kind::Udp, p0, h2)
                    .ports(5060, 5060)
                    .payload(SIP_INVITE.as_bytes()),
            ),
            housekeeping(0),
        ],
    ));
    v.push((
        "ftp_port",
        vec![
            raw(
                nat,
                &build::tcp(ip(p0), 40000, ip(h), 21, 0x18, FTP_PORT.as_bytes()),
            ),
            housekeeping(0),
        ],
    ));
    v.push((
        "gen_ftp_eprt",
        vec![gen(
            nat,
            &Gen::new(Kind::Tcp, p0, h)
                .ports(40000, 21)
                .payload(FTP_EPRT.as_bytes()),
        )],
    ));
    v.push((
        "ftp_pasv_reply_out",
        vec![raw(
            nat,
            &build::tcp(ip(p0), 21, ip(h), 40000, 0x18, FTP_PASV_REPLY.as_bytes()),
        )],
    ));
    v.push((
        "rtsp_setup_dropped",
        vec![raw(
            nat,
            &build::tcp(ip(p0), 40000, ip(h), 554, 0x18, RTSP_SETUP.as_bytes()),
        )],
    ));
    v.push((
        "dns_response_in",
        vec![raw(
            inet,
            &build::udp(ip(h), 53, ip(e0), 40000, &dns_response()),
        )],
    ));
    v.push((
        "tftp_rrq_dropped",
        vec![raw(nat, &build::udp(ip(p0), 40000, ip(h), 69, &tftp_rrq()))],
    ));
    v.push((
        "h323_setup",
        vec![raw(
            nat,
            &build::tcp(ip(p0), 40000, ip(h), 1720, 0x18, &h323_setup()),
        )],
    ));
    v.push((
        "alg_table_d_inspect_all",
        vec![
            set_table(3),
            raw(
                nat,
                &build::tcp(ip(p0), 40000, ip(h), 1720, 0x18, &h323_setup()),
            ),
            raw(nat, &build::udp(ip(p0), 40000, ip(h), 69, &tftp_rrq())),
            raw(
                nat,
                &build::tcp(ip(p0), 40000, ip(h), 554, 0x18, RTSP_SETUP.as_bytes()),
            ),
            raw(inet, &build::udp(ip(h), 53, ip(e0), 40000, &dns_response())),
            housekeeping(0),
        ],
    ));
    v.push((
        "alg_table_b",
        vec![
            set_table(1),
            raw(
                nat,
                &build::tcp(ip(p0), 40000, ip(h), 554, 0x18, RTSP_SETUP.as_bytes()),
            ),
            raw(inet, &build::udp(ip(h), 53, ip(e0), 40000, &dns_response())),
            raw(
                nat,
                &build::udp(ip(p0), 5060, ip(h2), 5060, SIP_INVITE.as_bytes()),
            ),
            housekeeping(0),
        ],
    ));

    // Cloud services: metadata from the cut-through ENI (blackholed), from NAT (forwarded),
    // and the answer back.
    v.push((
        "metadata_from_binded",
        vec![raw(
            Side::Eni(ENI_BINDED),
            &build::tcp(ip(BINDED_EIP), 40000, ip(METADATA), 80, 0x02, b""),
        )],
    ));
    v.push((
        "metadata_from_nat",
        vec![
            raw(nat, &build::tcp(ip(p0), 40000, ip(METADATA), 80, 0x02, b"")),
            raw(
                Side::CloudServices,
                &build::tcp(ip(METADATA), 80, ip(p0), 40000, 0x12, b""),
            ),
            raw(
                Side::CloudServices,
                &build::udp(ip(CLOUD_DNS), 53, ip(MULTI_EIP[0]), 40000, &dns_response()),
            ),
        ],
    ));
    v.push((
        "gen_metadata_from_binded",
        vec![gen(
            Side::Eni(ENI_BINDED),
            &Gen::new(Kind::Tcp, BINDED_EIP, METADATA).ports(40000, 80),
        )],
    ));

    // Cut-through and multi-binded traffic, hairpins, VPC traffic.
    v.push((
        "binded_and_multi",
        vec![
            raw(
                Side::Eni(ENI_BINDED),
                &build::udp(ip(BINDED_EIP), 4000, ip(h), 53, b"q"),
            ),
            raw(inet, &build::udp(ip(h), 53, ip(BINDED_EIP), 4000, b"a")),
            raw(
                Side::Eni(ENI_MULTI),
                &build::udp(ip(MULTI_EIP[1]), 4000, ip(h), 53, b"q"),
            ),
            raw(inet, &build::udp(ip(h), 53, ip(MULTI_EIP[2]), 4000, b"a")),
            raw(
                Side::Eni(ENI_BINDED),
                &build::udp(ip(BINDED_EIP), 4000, ip(NAT_PRIV[0]), 53, b"q"),
            ),
        ],
    ));
    v.push((
        "hairpin",
        vec![
            raw(
                nat,
                &build::udp(ip(p0), 4000, ip(MULTI_EIP[0]), 5000, b"hairpin"),
            ),
            raw(
                Side::Eni(ENI_MULTI),
                &build::udp(ip(MULTI_EIP[0]), 5000, ip(e0), 4000, b"back"),
            ),
            raw(
                nat,
                &build::udp(
                    ip(NAT_PRIV[1]),
                    4000,
                    ip(NAT_EIP[2]),
                    5060,
                    SIP_INVITE.as_bytes(),
                ),
            ),
        ],
    ));
    v.push((
        "vpc",
        vec![
            raw(nat, &build::udp(ip(p0), 4000, ip(PLAIN_PRIV), 5000, b"vpc")),
            raw(
                Side::Eni(ENI_PLAIN),
                &build::udp(ip(PLAIN_PRIV), 5000, ip(p0), 4000, b"vpc"),
            ),
            raw(
                nat,
                &build::udp(ip(p0), 4000, ip([10, 0, 9, 9]), 5000, b"nobody"),
            ),
            raw(
                nat,
                &build::udp(ip(p0), 4000, ip(STOPPED_PRIV), 5000, b"stopped"),
            ),
            raw(
                Side::Eni(ENI_PLAIN),
                &build::udp(ip(PLAIN_PRIV), 5000, ip(h), 4000, b"no eip"),
            ),
        ],
    ));

    // Refusals: stopped, detached, unassociated, unknown ENI, spoofed source, martians.
    v.push((
        "refusals",
        vec![
            raw(inet, &build::udp(ip(h), 1, ip(STOPPED_EIP), 2, b"")),
            raw(inet, &build::udp(ip(h), 1, ip(DETACHED_EIP), 2, b"")),
            raw(inet, &build::udp(ip(h), 1, ip(UNASSOC_EIP), 2, b"")),
            raw(inet, &build::udp(ip(h), 1, ip(h2), 2, b"")),
            raw(Side::Eni(65535), &build::udp(ip(p0), 1, ip(h), 2, b"")),
            raw(Side::Eni(0), &build::udp(ip(p0), 1, ip(h), 2, b"")),
            raw(
                Side::Eni(ENI_STOPPED),
                &build::udp(ip(STOPPED_PRIV), 1, ip(h), 2, b""),
            ),
            raw(
                Side::Eni(ENI_MULTI),
                &build::udp(ip(p0), 1, ip(h), 2, b"spoof"),
            ),
            raw(nat, &build::udp(ip([127, 0, 0, 1]), 1, ip(h), 2, b"")),
            raw(inet, &build::udp(ip(h), 1, ip([224, 0, 0, 5]), 2, b"")),
            raw(nat, &build::ipv4(ip(p0), ip(h), 47, &[0, 0, 8, 0, 0x45])),
        ],
    ));
    // Table B: source check off (the multi ENI may use the NAT ENI's address), GRE dropped.
    v.push((
        "table_b_source_check_off",
        vec![
            set_table(1),
            raw(
                Side::Eni(ENI_MULTI),
                &build::udp(ip(p0), 1, ip(h), 2, b"same instance"),
            ),
            raw(nat, &build::ipv4(ip(p0), ip(h), 47, &[0, 0, 8, 0, 0x45])),
            raw(
                inet,
                &build::udp(ip(h), 1, ip(STOPPED_EIP), 2, b"running now"),
            ),
            raw(
                inet,
                &build::udp(ip(h), 1, ip(UNASSOC_EIP), 2, b"associated now"),
            ),
            raw(inet, &build::ping(ip(h), ip(INTERNET_GW_B), 1, 1, b"gw b")),
            raw(nat, &build::ping(ip(p0), ip(INTERNET_GW_B), 1, 1, b"gw b")),
            gen(
                inet,
                &Gen {
                    ipf: ipf::TTL1,
                    ..Gen::new(Kind::Udp, h, e0).ports(40000, 12345)
                },
            ),
            set_table(2),
            raw(inet, &build::udp(ip(h), 1, ip(MOVED_EIP), 2, b"moved")),
            set_table(0),
        ],
    ));

    // Malformed: IPv6, truncated headers, bad lengths and checksums.
    let good = build::udp(ip(h), 40000, ip(e0), 12345, b"hello");
    let mut ipv6 = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
    ipv6.extend_from_slice(&[0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    ipv6.extend_from_slice(&[0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    ipv6.extend_from_slice(&[0x13, 0x88, 0x13, 0x89, 0, 8, 0, 0]);
    v.push((
        "ipv6",
        vec![
            raw(inet, &ipv6),
            raw(nat, &ipv6[..12]),
            gen(inet, &Gen::new(Kind::Ipv6, h, e0)),
        ],
    ));
    let mut bad_ihl = good.clone();
    bad_ihl[0] = 0x44;
    let mut long_total = good.clone();
    long_total[3] += 8;
    let mut bad_csum = good.clone();
    bad_csum[10] ^= 0xff;
    let mut short_udp = build::udp(ip(h), 40000, ip(e0), 12345, b"");
    short_udp.truncate(24);
    short_udp[3] = 24;
    eiplab_fuzz::gen::fill_ip_checksum(&mut short_udp);
    v.push((
        "truncated",
        vec![
            raw(inet, &good[..10]),
            raw(inet, &good[..20]),
            raw(inet, &bad_ihl),
            raw(inet, &long_total),
            raw(inet, &bad_csum),
            raw(inet, &short_udp),
            raw(inet, &[]),
            gen(
                inet,
                &Gen {
                    fix: fix::TRUNCATE | fix::TOTAL_LEN,
                    patch: 20 << 3,
                    ..Gen::new(Kind::Tcp, h, e0).ports(1, 2)
                },
            ),
        ],
    ));

    // TTL 1 (and 0): time exceeded from the gateway where it has an address.
    v.push((
        "ttl1",
        vec![
            gen(
                inet,
                &Gen {
                    ipf: ipf::TTL1,
                    ..Gen::new(Kind::Udp, h, e0)
                        .ports(40000, 12345)
                        .payload(b"traceroute")
                },
            ),
            gen(
                nat,
                &Gen {
                    ipf: ipf::TTL1,
                    ..Gen::new(Kind::Udp, p0, h)
                        .ports(40000, 33434)
                        .payload(b"traceroute")
                },
            ),
            gen(
                Side::CloudServices,
                &Gen {
                    ipf: ipf::TTL1,
                    ..Gen::new(Kind::Udp, METADATA, p0).ports(80, 40000)
                },
            ),
            gen(
                inet,
                &Gen {
                    ipf: ipf::TTL0,
                    ..Gen::new(Kind::Ping, h, e0)
                },
            ),
            gen(
                inet,
                &Gen {
                    ipf: ipf::TTL1,
                    ..Gen::new(Kind::UnreachUdp, h, e0)
                },
            ),
            gen(
                inet,
                &Gen {
                    ipf: ipf::TTL1 | ipf::SECOND,
                    ..Gen::new(Kind::Udp, h, e0).ports(1, 2).payload(&[0; 64])
                },
            ),
        ],
    ));
    // IP and TCP options, other protocols, timestamps.
    v.push((
        "options_and_others",
        vec![
            gen(
                inet,
                &Gen::new(Kind::UdpOptions, h, e0)
                    .ports(40000, 12345)
                    .payload(b"opt"),
            ),
            gen(nat, &Gen::new(Kind::TcpOptions, p0, h).ports(40000, 80)),
            gen(nat, &Gen::new(Kind::Gre, p0, h).payload(b"\x45\x00")),
            gen(inet, &Gen::new(Kind::Timestamp, h, e0)),
            gen(inet, &Gen::new(Kind::EchoReply, h, e0)),
            gen(inet, &Gen::new(Kind::UnreachOther, h, e0).ports(5060, 5060)),
        ],
    ));
    // The policer of a 1 Mbit/s EIP: big datagrams empty its 128 KiB bucket.
    let mut big = Vec::new();
    for i in 0..4 {
        big.push(gen(
            nat,
            &Gen {
                pad: 0xff,
                ..Gen::new(Kind::Udp, NAT_PRIV[1], h).ports(40000 + i, 9)
            },
        ));
    }
    big.push(gen(
        inet,
        &Gen {
            pad: 0xff,
            ..Gen::new(Kind::Udp, h, BINDED_EIP).ports(1, 2)
        },
    ));
    v.push(("policer", big));
    // A batch from one side, then one from another.
    v.push((
        "batch",
        vec![
            batch(raw(inet, &build::udp(ip(h), 40000, ip(e0), 12345, b"one"))),
            batch(raw(
                inet,
                &build::ping(ip(h), ip(INTERNET_GW), 1, 1, b"two"),
            )),
            batch(gen(
                inet,
                &Gen {
                    ipf: ipf::TTL1,
                    ..Gen::new(Kind::Udp, h, e0)
                },
            )),
            batch(frag(ipf::LAST, inet, h, e0, 5060, 5060)),
            batch(frag(ipf::FIRST, inet, h, e0, 5060, 5060)),
            housekeeping(0),
            batch(raw(nat, &build::udp(ip(p0), 12345, ip(h), 40000, b"three"))),
            batch(raw(nat, &good[..10])),
        ],
    ));
    // Table D is large: process_batch pipelines its lookups. A long mixed batch through it.
    let mut long = vec![set_table(3)];
    for i in 0..24u16 {
        let r = match i % 6 {
            0 => raw(inet, &build::udp(ip(h), 40000 + i, ip(e0), 12345, b"in")),
            1 => raw(
                inet,
                &build::udp(ip(h), 40000 + i, ip([198, 18, 4, 7]), 1, b"filler"),
            ),
            2 => raw(inet, &build::ping(ip(h), ip(INTERNET_GW), i, 1, b"gw")),
            3 => frag(ipf::LAST, inet, h, e0, 5060, 5060),
            4 => raw(inet, &good[..12]),
            _ => raw(
                inet,
                &build::udp(ip(h2), 53, ip(MULTI_EIP[2]), 4000, b"multi"),
            ),
        };
        long.push(batch(r));
    }
    long.push(batch(frag(ipf::FIRST, inet, h, e0, 5060, 5060)));
    long.push(housekeeping(0));
    let mut out = vec![set_table(3)];
    for i in 0..20u16 {
        out.push(batch(raw(
            nat,
            &build::udp(ip(NAT_PRIV[(i % 3) as usize]), 4000 + i, ip(h), 53, b"q"),
        )));
    }
    v.push(("batch_large_table_in", long));
    v.push(("batch_large_table_out", out));
    v
}

fn wire_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use eiplab_fuzz::wire::encode;
    let h = ip(INTERNET_HOST);
    let e = ip(NAT_EIP[0]);
    let udp = build::udp(h, 40000, e, 53, b"hello");
    let tcp = build::tcp(h, 40000, e, 80, 0x18, b"GET / HTTP/1.1\r\n\r\n");
    let ping = build::ping(h, e, 7, 1, b"abcdefgh");
    let err = build::icmp(e, h, 3, 3, 0, &udp);
    let frags = build::fragment(&build::udp(h, 1, e, 2, &[7; 100]), 32);
    let mut opts = udp.clone();
    opts.splice(20..20, [1, 1, 1, 0]);
    opts[0] = 0x46;
    opts[3] += 4;
    eiplab_fuzz::gen::fill_ip_checksum(&mut opts);
    let mut ipv6 = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
    ipv6.extend_from_slice(&[0; 32]);
    ipv6.extend_from_slice(&[0; 8]);
    vec![
        ("udp", encode(1500, 0, 3, 0x1234, &udp)),
        ("udp_small_room", encode(40, 0x81, 5, 8, &udp)),
        ("tcp", encode(576, 1, 8, 0xbeef, &tcp)),
        ("ping", encode(56, 2, 1, 0, &ping)),
        ("icmp_error", encode(600, 3, 2, 16, &err)),
        ("fragment_first", encode(100, 0, 0, 24, &frags[0])),
        (
            "fragment_last",
            encode(100, 0, 0, 24, &frags[frags.len() - 1]),
        ),
        ("ip_options", encode(1500, 1, 10, 9, &opts)),
        ("ipv6", encode(1500, 0, 0, 0, &ipv6)),
        ("truncated", encode(1500, 0, 0, 0, &tcp[..27])),
        ("empty", encode(0, 0, 0, 0, &[])),
    ]
}

fn alg_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use eiplab_fuzz::alg::encode;
    let p = NAT_PRIV[0];
    let e = NAT_EIP[0];
    vec![
        (
            "sip_invite",
            encode(false, 5060, 5060, p, e, SIP_INVITE.as_bytes()),
        ),
        ("sip_ok", encode(false, 5060, 5060, p, e, SIP_OK.as_bytes())),
        (
            "sip_tcp",
            encode(true, 40000, 5060, p, e, SIP_INVITE.as_bytes()),
        ),
        (
            "ftp_port",
            encode(true, 40000, 21, p, e, FTP_PORT.as_bytes()),
        ),
        (
            "ftp_eprt",
            encode(true, 40000, 21, p, e, FTP_EPRT.as_bytes()),
        ),
        (
            "ftp_227",
            encode(true, 21, 40000, p, e, FTP_PASV_REPLY.as_bytes()),
        ),
        (
            "rtsp_setup",
            encode(true, 40000, 554, p, e, RTSP_SETUP.as_bytes()),
        ),
        (
            "dns_response",
            encode(false, 53, 40000, p, e, &dns_response()),
        ),
        (
            "dns_tcp",
            encode(
                true,
                53,
                40000,
                p,
                e,
                &[&[0, 33][..], &dns_response()].concat(),
            ),
        ),
        ("tftp_rrq", encode(false, 40000, 69, p, e, &tftp_rrq())),
        ("h323_setup", encode(true, 40000, 1720, p, e, &h323_setup())),
        ("no_alg", encode(false, 40000, 443, p, e, b"\x16\x03\x01")),
    ]
}

fn main() {
    let trace = std::env::args().any(|a| a == "--trace");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");

    let dir = root.join("engine");
    clean(&dir);
    let mut all = Vec::new();
    for (name, recs) in engine_seeds() {
        let bytes = seed::encode(&recs);
        write(&dir, name, &bytes);
        all.extend_from_slice(&bytes);
        let t = eiplab_fuzz::engine::run_traced(&bytes);
        if trace {
            println!("== engine/{name} ({} bytes)", bytes.len());
            for l in t {
                println!("   {l}");
            }
        }
    }
    // Everything in one input: the state carries from one seed to the next.
    write(&dir, "all", &all);
    eiplab_fuzz::engine::run(&all);

    let dir = root.join("wire");
    clean(&dir);
    for (name, bytes) in wire_seeds() {
        write(&dir, name, &bytes);
        eiplab_fuzz::wire::run(&bytes);
    }

    let dir = root.join("alg");
    clean(&dir);
    for (name, bytes) in alg_seeds() {
        write(&dir, name, &bytes);
        eiplab_fuzz::alg::run(&bytes);
    }
    println!("seeds written under {}", root.display());
}
