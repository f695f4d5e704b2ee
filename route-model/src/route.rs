//! Routes (ADR 0008): which hostname on which port goes to which process of
//! an env, and how. No I/O.

use std::sync::Arc;

use ahash::AHashSet;

use crate::env::EnvId;
use crate::error::RouteError;
use crate::name::HostPattern;
use crate::spec::RouteSpec;

/// How the edge treats a route's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Peek the ClientHello for SNI, never terminate TLS, forward every byte.
    TlsPassthrough,
    /// No peeking: the one route on its `(IP, port)` takes the bytes.
    TcpRaw,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tls_passthrough" => Some(Protocol::TlsPassthrough),
            "tcp_raw" => Some(Protocol::TcpRaw),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::TlsPassthrough => "tls_passthrough",
            Protocol::TcpRaw => "tcp_raw",
        }
    }
}

/// Which process and port decide the route's health: the platform's checker
/// reports `instance.health`, and the edge probes `[instance addr]:port` of
/// the env's instances of `process_type` itself (`edge::health`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSource {
    pub process_type: Arc<str>,
    pub port: u16,
}

/// A validated route, before placement on listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub id: Arc<str>,
    pub env: EnvId,
    pub hostname: HostPattern,
    pub listen_port: u16,
    pub protocol: Protocol,
    pub backend_process_type: Arc<str>,
    pub backend_port: u16,
    pub proxy_protocol: bool,
    pub ipv4_required: bool,
    pub health_source: Option<HealthSource>,
}

/// The strings many routes repeat (env ids, process types), allocated once
/// and shared: a million routes of one env then hold one copy of each
/// instead of a million, and compiling them allocates two strings fewer per
/// route.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    envs: AHashSet<EnvId>,
    strings: AHashSet<Arc<str>>,
}

impl Interner {
    fn env(&mut self, s: &str) -> Option<EnvId> {
        if let Some(env) = self.envs.get(s) {
            return Some(env.clone());
        }
        let env = EnvId::parse(s).ok()?;
        self.envs.insert(env.clone());
        Some(env)
    }

    fn string(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(s) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(s);
        self.strings.insert(Arc::clone(&shared));
        shared
    }
}

impl Route {
    /// Validates the fields that need no other object.
    pub fn from_spec(spec: &RouteSpec) -> Result<Self, RouteError> {
        Self::from_spec_in(spec, &mut Interner::default())
    }

    /// [`Self::from_spec`], sharing repeated strings through `interner`.
    pub(crate) fn from_spec_in(
        spec: &RouteSpec,
        interner: &mut Interner,
    ) -> Result<Self, RouteError> {
        let route = || spec.id.clone();
        if spec.id.is_empty() {
            return Err(RouteError::EmptyId);
        }
        let env = interner.env(&spec.env).ok_or_else(|| RouteError::BadEnv {
            route: route(),
            env: spec.env.clone(),
        })?;
        let hostname =
            HostPattern::parse(&spec.hostname).map_err(|why| RouteError::BadHostname {
                route: route(),
                hostname: spec.hostname.clone(),
                why,
            })?;
        let protocol = Protocol::parse(&spec.protocol).ok_or_else(|| RouteError::BadProtocol {
            route: route(),
            protocol: spec.protocol.clone(),
        })?;
        for (field, port) in [
            ("listen_port", spec.listen_port),
            ("backend_port", spec.backend_port),
        ] {
            if port == 0 {
                return Err(RouteError::PortZero {
                    route: route(),
                    field,
                });
            }
        }
        if spec.backend_process_type.is_empty() {
            return Err(RouteError::EmptyProcessType { route: route() });
        }
        let health_source = match &spec.health_source {
            None => None,
            Some(h) => {
                let bad = |field, why| RouteError::BadHealthSource {
                    route: route(),
                    field,
                    why,
                };
                if h.port == 0 {
                    return Err(bad("port", "may not be 0"));
                }
                if h.process_type.is_empty() {
                    return Err(bad("process_type", "may not be empty"));
                }
                Some(HealthSource {
                    process_type: interner.string(&h.process_type),
                    port: h.port,
                })
            }
        };
        Ok(Route {
            id: Arc::from(spec.id.as_str()),
            env,
            hostname,
            listen_port: spec.listen_port,
            protocol,
            backend_process_type: interner.string(&spec.backend_process_type),
            backend_port: spec.backend_port,
            proxy_protocol: spec.proxy_protocol,
            ipv4_required: spec.ipv4_required,
            health_source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::HealthSourceSpec;

    fn spec(health: Option<(&str, u16)>) -> RouteSpec {
        RouteSpec {
            id: "r-1".into(),
            env: "acme/shop/prod".into(),
            hostname: "shop.example.com".into(),
            listen_port: 443,
            protocol: "tls_passthrough".into(),
            backend_process_type: "web".into(),
            backend_port: 8443,
            proxy_protocol: false,
            ipv4_required: false,
            health_source: health.map(|(process_type, port)| HealthSourceSpec {
                process_type: process_type.into(),
                port,
            }),
        }
    }

    #[test]
    fn health_source_needs_a_port_and_a_process_type() {
        let ok = Route::from_spec(&spec(Some(("web", 9000)))).unwrap();
        assert_eq!(ok.health_source.unwrap().port, 9000);
        assert!(Route::from_spec(&spec(None))
            .unwrap()
            .health_source
            .is_none());
        for (bad, field) in [(("web", 0), "port"), (("", 9000), "process_type")] {
            let e = Route::from_spec(&spec(Some(bad))).unwrap_err();
            assert!(
                matches!(&e, RouteError::BadHealthSource { field: f, .. } if *f == field),
                "{e:?}"
            );
            assert_eq!(e.kind(), "bad_health_source");
            assert!(
                e.to_string().contains(&format!("health_source.{field}")),
                "{e}"
            );
        }
    }
}
