//! Platform policy: ADR 0008's port policy and the overlay backend allowlist.
//!
//! Ports: on IPv6, 80 and 443 plus `ipv6_extra_ports`; on an env's dedicated
//! IPv4, 80 and 443 plus the env's requested `ports` that
//! `ipv4_allowed_ports` allows; `deny_ports` always wins.
//!
//! Addresses (ADR 0007/0008): an env's public addresses must be usable
//! unicast (not unspecified, multicast, link-local, broadcast, nor inside
//! the overlay), and inside `public_prefixes` when that is set. Loopback is
//! always allowed (single-host setups and tests). No I/O.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv6Net};
use serde::Deserialize;

use crate::env::Env;

/// Ports every env may serve (before `deny_ports`).
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];

/// A set of TCP ports, written as a list of numbers and `"lo-hi"` ranges.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "Vec<PortEntry>")]
pub struct PortSet {
    /// Sorted, non-overlapping, inclusive ranges.
    ranges: Vec<(u16, u16)>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PortEntry {
    Port(u16),
    Range(String),
}

/// Why a port list is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad port entry {entry:?}: expected a port 1-65535 or a range \"lo-hi\"")]
pub struct PortSetError {
    pub entry: String,
}

impl PortSet {
    pub fn contains(&self, port: u16) -> bool {
        self.ranges
            .binary_search_by(|&(lo, hi)| {
                if hi < port {
                    std::cmp::Ordering::Less
                } else if lo > port {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
    }

    pub fn from_ranges(ranges: impl IntoIterator<Item = (u16, u16)>) -> Self {
        let mut ranges: Vec<(u16, u16)> = ranges.into_iter().collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        PortSet { ranges: merged }
    }

    pub fn ports(ports: &[u16]) -> Self {
        Self::from_ranges(ports.iter().map(|&p| (p, p)))
    }
}

impl TryFrom<Vec<PortEntry>> for PortSet {
    type Error = PortSetError;

    fn try_from(entries: Vec<PortEntry>) -> Result<Self, PortSetError> {
        let mut ranges = Vec::with_capacity(entries.len());
        for entry in entries {
            let range = match &entry {
                PortEntry::Port(p) => Some((*p, *p)),
                PortEntry::Range(s) => parse_range(s),
            };
            match range {
                Some((lo, hi)) if lo >= 1 && lo <= hi => ranges.push((lo, hi)),
                _ => {
                    return Err(PortSetError {
                        entry: match entry {
                            PortEntry::Port(p) => p.to_string(),
                            PortEntry::Range(s) => s,
                        },
                    })
                }
            }
        }
        Ok(Self::from_ranges(ranges))
    }
}

fn parse_range(s: &str) -> Option<(u16, u16)> {
    match s.split_once('-') {
        Some((lo, hi)) => Some((lo.trim().parse().ok()?, hi.trim().parse().ok()?)),
        None => s.trim().parse().ok().map(|p| (p, p)),
    }
}

impl fmt::Debug for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for (lo, hi) in &self.ranges {
            if lo == hi {
                list.entry(&format_args!("{lo}"));
            } else {
                list.entry(&format_args!("{lo}-{hi}"));
            }
        }
        list.finish()
    }
}

/// `[policy]` of `edge.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortPolicy {
    pub ipv6_extra_ports: PortSet,
    pub ipv4_allowed_ports: PortSet,
    pub deny_ports: PortSet,
    /// When set, every public address of an env (IPv6 and IPv4, loopback
    /// excepted) must lie inside one of these prefixes.
    pub public_prefixes: Option<Vec<IpNet>>,
}

impl Default for PortPolicy {
    fn default() -> Self {
        PortPolicy {
            ipv6_extra_ports: PortSet::default(),
            ipv4_allowed_ports: PortSet::from_ranges([(1, 65535)]),
            deny_ports: PortSet::ports(&[25]),
            public_prefixes: None,
        }
    }
}

impl PortPolicy {
    /// May `port` be served on the env's IPv6 addresses?
    pub fn allows_ipv6(&self, port: u16) -> bool {
        !self.deny_ports.contains(port)
            && (DEFAULT_PORTS.contains(&port) || self.ipv6_extra_ports.contains(port))
    }

    /// May `port` be served on the env's dedicated IPv4 (if it has one)?
    pub fn allows_ipv4(&self, env: &Env, port: u16) -> bool {
        env.ipv4.is_some()
            && !self.deny_ports.contains(port)
            && (DEFAULT_PORTS.contains(&port)
                || (env.ports.contains(&port) && self.ipv4_allowed_ports.contains(port)))
    }

    /// Why `addr` cannot be one of an env's public addresses, or `None` if
    /// it can.
    pub fn unusable(&self, addr: IpAddr, overlay: &OverlayPolicy) -> Option<&'static str> {
        if addr.is_loopback() {
            return None;
        }
        let why = match addr {
            IpAddr::V6(a) => unusable_v6(a, overlay),
            IpAddr::V4(a) => unusable_v4(a),
        };
        if why.is_some() {
            return why;
        }
        match &self.public_prefixes {
            Some(prefixes) if !prefixes.iter().any(|net| net.contains(&addr)) => {
                Some("outside policy.public_prefixes")
            }
            _ => None,
        }
    }
}

fn unusable_v6(a: Ipv6Addr, overlay: &OverlayPolicy) -> Option<&'static str> {
    if a.is_unspecified() {
        Some("unspecified")
    } else if a.is_multicast() {
        Some("multicast")
    } else if a.segments()[0] & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if overlay.allows(a) {
        Some("inside overlay.allowed_backends")
    } else {
        None
    }
}

fn unusable_v4(a: Ipv4Addr) -> Option<&'static str> {
    if a.is_unspecified() {
        Some("unspecified")
    } else if a.is_multicast() {
        Some("multicast")
    } else if a.is_link_local() {
        Some("link-local")
    } else if a.is_broadcast() {
        Some("broadcast")
    } else {
        None
    }
}

/// `[overlay]`'s allowlist: the edge never dials outside these prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayPolicy {
    pub allowed_backends: Vec<Ipv6Net>,
}

impl Default for OverlayPolicy {
    fn default() -> Self {
        OverlayPolicy {
            allowed_backends: vec!["fdaa::/16".parse().expect("valid prefix literal")],
        }
    }
}

impl OverlayPolicy {
    pub fn allows(&self, addr: Ipv6Addr) -> bool {
        self.allowed_backends.iter().any(|net| net.contains(&addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::EnvSpec;

    fn env(ipv4: Option<&str>, ports: &[u16]) -> Env {
        Env::from_spec(&EnvSpec {
            id: "acme/shop/prod".into(),
            ipv6: vec!["2001:db8::10".into()],
            ipv4: ipv4.map(Into::into),
            ports: ports.to_vec(),
        })
        .unwrap()
    }

    #[test]
    fn port_sets_parse_numbers_and_ranges() {
        let set: PortSet = toml::from_str::<toml::Table>("p = [25, \"1000-1002\", \"8080\"]")
            .unwrap()["p"]
            .clone()
            .try_into()
            .unwrap();
        assert!(set.contains(25) && set.contains(1001) && set.contains(8080));
        assert!(!set.contains(26) && !set.contains(1003));
        for bad in ["p = [0]", "p = [\"9-3\"]", "p = [\"x\"]", "p = [70000]"] {
            let t: toml::Table = toml::from_str(bad).unwrap();
            assert!(t["p"].clone().try_into::<PortSet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv6_serves_80_443_and_extras_deny_wins() {
        let p = PortPolicy {
            ipv6_extra_ports: PortSet::ports(&[8443, 25]),
            ..PortPolicy::default()
        };
        assert!(p.allows_ipv6(443) && p.allows_ipv6(80) && p.allows_ipv6(8443));
        assert!(!p.allows_ipv6(5432));
        assert!(!p.allows_ipv6(25), "deny_ports wins over the allowlist");
    }

    #[test]
    fn ipv4_needs_the_add_on_and_a_request() {
        let p = PortPolicy::default();
        assert!(!p.allows_ipv4(&env(None, &[5432]), 443));
        let e = env(Some("203.0.113.7"), &[5432, 25]);
        assert!(p.allows_ipv4(&e, 443) && p.allows_ipv4(&e, 5432));
        assert!(!p.allows_ipv4(&e, 5433), "not requested");
        assert!(!p.allows_ipv4(&e, 25), "denied");
        let strict = PortPolicy {
            ipv4_allowed_ports: PortSet::ports(&[6379]),
            ..PortPolicy::default()
        };
        assert!(!strict.allows_ipv4(&e, 5432), "requested but not allowed");
    }

    #[test]
    fn public_addresses_are_usable_unicast_outside_the_overlay() {
        let p = PortPolicy::default();
        let overlay = OverlayPolicy::default();
        let why = |a: &str| p.unusable(a.parse().unwrap(), &overlay);
        for ok in ["2001:db8::10", "203.0.113.7", "::1", "127.0.0.5"] {
            assert_eq!(why(ok), None, "{ok}");
        }
        for (bad, reason) in [
            ("::", "unspecified"),
            ("0.0.0.0", "unspecified"),
            ("ff02::1", "multicast"),
            ("224.0.0.1", "multicast"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("169.254.1.1", "link-local"),
            ("255.255.255.255", "broadcast"),
            ("fdaa::3", "inside overlay.allowed_backends"),
        ] {
            assert_eq!(why(bad), Some(reason), "{bad}");
        }
    }

    #[test]
    fn public_prefixes_narrow_but_loopback_stays() {
        let p: PortPolicy =
            toml::from_str("public_prefixes = [\"2001:db8:1::/48\", \"203.0.113.0/24\"]").unwrap();
        let overlay = OverlayPolicy::default();
        let why = |a: &str| p.unusable(a.parse().unwrap(), &overlay);
        assert_eq!(why("2001:db8:1::5"), None);
        assert_eq!(why("203.0.113.9"), None);
        assert_eq!(why("::1"), None, "loopback stays allowed");
        assert_eq!(why("2001:db8:2::5"), Some("outside policy.public_prefixes"));
        assert_eq!(why("198.51.100.1"), Some("outside policy.public_prefixes"));
        assert_eq!(
            why("ff02::1"),
            Some("multicast"),
            "the basic rules still apply"
        );
    }
}
