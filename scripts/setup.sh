#!/usr/bin/env bash
# Installs what eiplab's build and tests need on a fresh Debian machine that has rustup.
# Idempotent: what is already there is left alone.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: a C/C++ compiler for libFuzzer (cargo-fuzz builds it from source) and for
# SQLite (rusqlite builds it bundled).
need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
command -v c++ >/dev/null || need_apt+=(g++)
command -v make >/dev/null || need_apt+=(make)
# Python with venv for the SDK compatibility tests (scripts/sdk-venv.sh pip-installs the SDKs).
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  need_apt+=(python3 python3-venv python3-pip)
fi
# The lab's integration tests (root, real namespaces): ip, ping, curl, tcpdump, iperf3, ps,
# and python3 for the servers they start inside the instances.
command -v ip >/dev/null || need_apt+=(iproute2)
command -v ping >/dev/null || need_apt+=(iputils-ping)
command -v curl >/dev/null || need_apt+=(curl)
command -v tcpdump >/dev/null || need_apt+=(tcpdump)
command -v iperf3 >/dev/null || need_apt+=(iperf3)
{ command -v ps && command -v pkill; } >/dev/null || need_apt+=(procps)
command -v python3 >/dev/null || need_apt+=(python3)
# `eiplab compat`'s real peers (and tests/compat.rs): SIPp, pyftpdlib (Debian's python3, which
# the probes run with), tftp-hpa's server and client, dnsmasq and dig, GStreamer's RTSP server
# and rtspsrc through python3-gi.
[ -x /usr/bin/sipp ] || need_apt+=(sip-tester)
/usr/bin/python3 -c 'import pyftpdlib' >/dev/null 2>&1 || need_apt+=(python3-pyftpdlib)
[ -x /usr/sbin/in.tftpd ] || need_apt+=(tftpd-hpa)
[ -x /usr/bin/tftp ] || need_apt+=(tftp-hpa)
[ -x /usr/sbin/dnsmasq ] || need_apt+=(dnsmasq-base)
[ -x /usr/bin/dig ] || need_apt+=(bind9-dnsutils)
/usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0"); from gi.repository import GstRtspServer' >/dev/null 2>&1 \
  || need_apt+=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good)
# RFC 5780 NAT behaviour discovery through the NAT gateway (tests/lab.rs): coturn's STUN server
# and its turnutils_natdiscovery client.
{ [ -x /usr/bin/turnserver ] && [ -x /usr/bin/turnutils_natdiscovery ]; } || need_apt+=(coturn)
# HaVip failover (tests/lab.rs): keepalived's VRRP in unicast mode moves the HaVip's address.
[ -x /usr/sbin/keepalived ] || need_apt+=(keepalived)
# The unprivileged run (scripts/unprivileged.sh) drops root with util-linux's setpriv.
command -v setpriv >/dev/null || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    -o Dpkg::Use-Pty=0 "${need_apt[@]}" >/dev/null
fi

command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust with rustup first" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
# The fuzzers need a nightly toolchain and cargo-fuzz.
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
