//! Routes (ADR 0008): which hostname on which port goes to which process of
//! an env, and how. No I/O.

use std::sync::Arc;

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

/// Which process and port decide the route's health. Carried to the
/// platform's health checker (which reports `instance.health`); the edge
/// itself routes on instance health only.
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

impl Route {
    /// Validates the fields that need no other object.
    pub fn from_spec(spec: &RouteSpec) -> Result<Self, RouteError> {
        let route = || spec.id.clone();
        if spec.id.is_empty() {
            return Err(RouteError::EmptyId);
        }
        let env = EnvId::parse(&spec.env).map_err(|_| RouteError::BadEnv {
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
        let health_source = spec.health_source.as_ref().map(|h| HealthSource {
            process_type: Arc::from(h.process_type.as_str()),
            port: h.port,
        });
        Ok(Route {
            id: Arc::from(spec.id.as_str()),
            env,
            hostname,
            listen_port: spec.listen_port,
            protocol,
            backend_process_type: Arc::from(spec.backend_process_type.as_str()),
            backend_port: spec.backend_port,
            proxy_protocol: spec.proxy_protocol,
            ipv4_required: spec.ipv4_required,
            health_source,
        })
    }
}
