//! Instances: the microVMs of an env, reachable on the IPv6 overlay. No I/O.

use std::net::Ipv6Addr;
use std::sync::Arc;

use crate::env::EnvId;
use crate::error::InstanceError;
use crate::policy::OverlayPolicy;
use crate::spec::InstanceSpec;

/// A validated instance: an overlay IPv6 address inside the allowed prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: Arc<str>,
    pub env: EnvId,
    pub process_type: Arc<str>,
    pub addr: Ipv6Addr,
    pub healthy: bool,
}

impl Instance {
    pub fn from_spec(spec: &InstanceSpec, overlay: &OverlayPolicy) -> Result<Self, InstanceError> {
        let id = || spec.id.clone();
        if spec.id.is_empty() {
            return Err(InstanceError::EmptyId);
        }
        let env = EnvId::parse(&spec.env).map_err(|_| InstanceError::BadEnv {
            instance: id(),
            env: spec.env.clone(),
        })?;
        if spec.process_type.is_empty() {
            return Err(InstanceError::EmptyProcessType { instance: id() });
        }
        let addr: Ipv6Addr = match spec.addr.parse() {
            Ok(a) => a,
            Err(_) if spec.addr.parse::<std::net::Ipv4Addr>().is_ok() => {
                return Err(InstanceError::Ipv4Addr {
                    instance: id(),
                    addr: spec.addr.clone(),
                })
            }
            Err(_) => {
                return Err(InstanceError::BadAddr {
                    instance: id(),
                    addr: spec.addr.clone(),
                })
            }
        };
        if addr.to_ipv4_mapped().is_some() {
            return Err(InstanceError::Ipv4Addr {
                instance: id(),
                addr: spec.addr.clone(),
            });
        }
        if !overlay.allows(addr) {
            return Err(InstanceError::OutsideOverlay {
                instance: id(),
                addr,
            });
        }
        Ok(Instance {
            id: Arc::from(spec.id.as_str()),
            env,
            process_type: Arc::from(spec.process_type.as_str()),
            addr,
            healthy: spec.healthy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(addr: &str) -> InstanceSpec {
        InstanceSpec {
            id: "i-1".into(),
            env: "acme/shop/prod".into(),
            process_type: "web".into(),
            addr: addr.into(),
            healthy: true,
        }
    }

    #[test]
    fn overlay_addresses_only() {
        let overlay = OverlayPolicy::default();
        assert!(Instance::from_spec(&spec("fdaa::3"), &overlay).is_ok());
        assert!(matches!(
            Instance::from_spec(&spec("2001:db8::3"), &overlay),
            Err(InstanceError::OutsideOverlay { .. })
        ));
        assert!(matches!(
            Instance::from_spec(&spec("10.0.0.1"), &overlay),
            Err(InstanceError::Ipv4Addr { .. })
        ));
        assert!(matches!(
            Instance::from_spec(&spec("::ffff:10.0.0.1"), &overlay),
            Err(InstanceError::Ipv4Addr { .. })
        ));
    }
}
