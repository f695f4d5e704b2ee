//! Envs (`org/app/env`) and the public addresses their routes are served on.
//! No I/O.

use std::borrow::Borrow;
use std::collections::BTreeSet;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::error::EnvError;
use crate::spec::EnvSpec;

/// `org/app/env`: three non-empty segments of `[a-z0-9_-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnvId(Arc<str>);

impl EnvId {
    pub fn parse(s: &str) -> Result<Self, EnvError> {
        let bad = || EnvError::BadId { id: s.to_owned() };
        let segments: Vec<&str> = s.split('/').collect();
        if segments.len() != 3 {
            return Err(bad());
        }
        let ok = |seg: &&str| {
            !seg.is_empty()
                && seg.len() <= 63
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        };
        if !segments.iter().all(ok) {
            return Err(bad());
        }
        Ok(EnvId(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lets a set of ids be probed with a `&str` (the compile shares one
/// `EnvId` among all the routes of an env). Hashes like `str`.
impl Borrow<str> for EnvId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EnvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EnvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnvId({})", self.0)
    }
}

/// A validated env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub id: EnvId,
    /// Free of duplicates; may be empty (an env served on its IPv4 only).
    pub ipv6: Vec<Ipv6Addr>,
    pub ipv4: Option<Ipv4Addr>,
    pub ports: BTreeSet<u16>,
}

impl Env {
    pub fn from_spec(spec: &EnvSpec) -> Result<Self, EnvError> {
        let id = EnvId::parse(&spec.id)?;
        let mut ipv6 = Vec::with_capacity(spec.ipv6.len());
        for a in &spec.ipv6 {
            let addr: Ipv6Addr = a.parse().map_err(|_| EnvError::BadIpv6 {
                env: spec.id.clone(),
                addr: a.clone(),
            })?;
            if addr.to_ipv4_mapped().is_some() {
                return Err(EnvError::BadIpv6 {
                    env: spec.id.clone(),
                    addr: a.clone(),
                });
            }
            if !ipv6.contains(&addr) {
                ipv6.push(addr);
            }
        }
        let ipv4 = match &spec.ipv4 {
            None => None,
            Some(a) => Some(a.parse().map_err(|_| EnvError::BadIpv4 {
                env: spec.id.clone(),
                addr: a.clone(),
            })?),
        };
        if spec.ports.contains(&0) {
            return Err(EnvError::PortZero {
                env: spec.id.clone(),
            });
        }
        Ok(Env {
            id,
            ipv6,
            ipv4,
            ports: spec.ports.iter().copied().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_id_has_three_segments() {
        assert!(EnvId::parse("acme/shop/prod").is_ok());
        for bad in ["acme/shop", "acme//prod", "Acme/shop/prod", "a/b/c/d", ""] {
            assert!(EnvId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_are_parsed_and_deduplicated() {
        let spec = EnvSpec {
            id: "acme/shop/prod".into(),
            ipv6: vec!["2001:db8::10".into(), "2001:DB8::10".into()],
            ipv4: Some("203.0.113.7".into()),
            ports: vec![5432],
        };
        let env = Env::from_spec(&spec).unwrap();
        assert_eq!(env.ipv6.len(), 1);
        assert_eq!(env.ipv4, Some(Ipv4Addr::new(203, 0, 113, 7)));
        let bad = EnvSpec {
            ipv4: Some("2001:db8::1".into()),
            ..spec
        };
        assert!(matches!(
            Env::from_spec(&bad),
            Err(EnvError::BadIpv4 { .. })
        ));
    }
}
