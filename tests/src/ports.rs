//! Ports and addresses for tests on one machine's loopback.

use std::net::{Ipv6Addr, TcpListener};
use std::process::Command;

/// A port free on both `127.0.0.1` and `[::1]` at the time of asking.
///
/// Taken below the kernel's ephemeral range when there is room: a port
/// from `bind(:0)` comes out of that range, so between this call and the
/// edge binding it, any outgoing connection of a concurrent test could
/// take it ("address already in use" on a loaded CI machine). Below the
/// range only another explicit bind can, and picks are random.
pub fn free_port() -> u16 {
    let low = ephemeral_low().unwrap_or(32768);
    if low > FIXED_LOW + 1024 {
        for _ in 0..1000 {
            let port = FIXED_LOW + fastrand::u16(..low - FIXED_LOW);
            if bindable(port) {
                return port;
            }
        }
    }
    loop {
        let v6 = TcpListener::bind("[::1]:0").expect("bind [::1]:0");
        let port = v6.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The lowest port `free_port` picks outside the ephemeral range.
const FIXED_LOW: u16 = 20000;

fn bindable(port: u16) -> bool {
    TcpListener::bind(("::1", port)).is_ok() && TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The first port of `net.ipv4.ip_local_port_range`.
fn ephemeral_low() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

/// An extra address on `lo` (an instance's overlay address, an env's
/// public address), removed again when dropped. Needs root, which the test
/// machine and CI have.
pub struct LoAddr {
    pub addr: Ipv6Addr,
}

impl LoAddr {
    pub fn add(addr: &str) -> LoAddr {
        let addr: Ipv6Addr = addr.parse().expect("IPv6 address");
        let cidr = format!("{addr}/128");
        // A leftover from a crashed run is removed first.
        let _ = Command::new("ip")
            .args(["-6", "addr", "del", &cidr, "dev", "lo"])
            .output();
        let out = Command::new("ip")
            .args(["-6", "addr", "add", &cidr, "dev", "lo", "nodad"])
            .output()
            .expect("run ip (iproute2)");
        assert!(
            out.status.success(),
            "ip addr add {cidr}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        LoAddr { addr }
    }
}

impl Drop for LoAddr {
    fn drop(&mut self) {
        let cidr = format!("{}/128", self.addr);
        let _ = Command::new("ip")
            .args(["-6", "addr", "del", &cidr, "dev", "lo"])
            .output();
    }
}
