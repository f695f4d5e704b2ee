//! Validation errors. Each names the object it rejects (route, env or
//! instance id) and the field or conflict, so `edge check`, the log and a
//! NACK can say exactly what to fix. No I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::name::NameError;

/// An `[[envs]]` entry that cannot be used; its routes are rejected too.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("env {id:?}: id must be org/app/env (lower case letters, digits, '-', '_')")]
    BadId { id: String },
    #[error("env {env}: ipv6 {addr:?} is not an IPv6 address")]
    BadIpv6 { env: String, addr: String },
    #[error("env {env}: ipv4 {addr:?} is not an IPv4 address")]
    BadIpv4 { env: String, addr: String },
    #[error("env {env}: ports may not contain 0")]
    PortZero { env: String },
    #[error("env {env}: defined twice")]
    Duplicate { env: String },
    #[error("env {env}: {field} {addr} is not a usable public unicast address ({why})")]
    UnusableAddr {
        env: String,
        field: &'static str,
        addr: IpAddr,
        why: &'static str,
    },
    #[error("env {env}: ipv4 {addr} is already the dedicated IPv4 of env {owner}")]
    Ipv4Taken {
        env: String,
        addr: Ipv4Addr,
        owner: String,
    },
}

impl EnvError {
    /// A stable snake_case label for metrics.
    pub const fn kind(&self) -> &'static str {
        match self {
            EnvError::UnusableAddr { .. } => "env_addr_unusable",
            EnvError::Ipv4Taken { .. } => "env_ipv4_taken",
            EnvError::BadId { .. }
            | EnvError::BadIpv6 { .. }
            | EnvError::BadIpv4 { .. }
            | EnvError::PortZero { .. }
            | EnvError::Duplicate { .. } => "bad_env",
        }
    }

    /// The id of the rejected env, as written.
    pub fn env_id(&self) -> &str {
        match self {
            EnvError::BadId { id: env }
            | EnvError::BadIpv6 { env, .. }
            | EnvError::BadIpv4 { env, .. }
            | EnvError::PortZero { env }
            | EnvError::Duplicate { env }
            | EnvError::UnusableAddr { env, .. }
            | EnvError::Ipv4Taken { env, .. } => env,
        }
    }
}

/// An `[[instances]]` entry that is never dialled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstanceError {
    #[error("instance with an empty id")]
    EmptyId,
    #[error("instance {instance}: env {env:?} is not org/app/env")]
    BadEnv { instance: String, env: String },
    #[error("instance {instance}: empty process_type")]
    EmptyProcessType { instance: String },
    #[error("instance {instance}: addr {addr:?} is not an IPv6 address")]
    BadAddr { instance: String, addr: String },
    #[error("instance {instance}: addr {addr:?} is IPv4; backends are reached over the IPv6 overlay only")]
    Ipv4Addr { instance: String, addr: String },
    #[error("instance {instance}: addr {addr} is outside overlay.allowed_backends")]
    OutsideOverlay { instance: String, addr: Ipv6Addr },
    #[error("instance {instance}: defined twice")]
    Duplicate { instance: String },
    #[error("instance {instance}: addr {addr} is already instance {owner} of env {owner_env}")]
    AddrTaken {
        instance: String,
        addr: Ipv6Addr,
        owner: String,
        owner_env: String,
    },
}

impl InstanceError {
    /// A stable snake_case label for metrics.
    pub const fn kind(&self) -> &'static str {
        match self {
            InstanceError::AddrTaken { .. } => "instance_addr_taken",
            _ => "bad_instance",
        }
    }

    /// The id of the rejected instance, as written.
    pub fn instance_id(&self) -> &str {
        match self {
            InstanceError::EmptyId => "",
            InstanceError::BadEnv { instance, .. }
            | InstanceError::EmptyProcessType { instance }
            | InstanceError::BadAddr { instance, .. }
            | InstanceError::Ipv4Addr { instance, .. }
            | InstanceError::OutsideOverlay { instance, .. }
            | InstanceError::Duplicate { instance }
            | InstanceError::AddrTaken { instance, .. } => instance,
        }
    }
}

/// A `[[routes]]` entry that is not served. The other routes still load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("route with an empty id")]
    EmptyId,
    #[error("route {route}: defined twice")]
    Duplicate { route: String },
    #[error("route {route}: env {env:?} is not org/app/env")]
    BadEnv { route: String, env: String },
    #[error("route {route}: env {env} is not defined (or was rejected)")]
    UnknownEnv { route: String, env: String },
    #[error("route {route}: hostname {hostname:?} {why}")]
    BadHostname {
        route: String,
        hostname: String,
        why: NameError,
    },
    #[error("route {route}: protocol {protocol:?} is not tls_passthrough or tcp_raw")]
    BadProtocol { route: String, protocol: String },
    #[error("route {route}: {field} may not be 0")]
    PortZero { route: String, field: &'static str },
    #[error("route {route}: empty backend_process_type")]
    EmptyProcessType { route: String },
    #[error("route {route}: ipv4_required but env {env} has no dedicated IPv4")]
    Ipv4Required { route: String, env: String },
    #[error("route {route}: ipv4_required but listen_port {port} is not served on the IPv4 of env {env} (80/443, or the env's ports that policy.ipv4_allowed_ports allows; deny_ports wins)")]
    Ipv4PortNotAllowed {
        route: String,
        env: String,
        port: u16,
    },
    #[error("route {route}: health_source.{field} {why}")]
    BadHealthSource {
        route: String,
        field: &'static str,
        why: &'static str,
    },
    #[error("route {route}: port {port} is not allowed on any address of env {env} (policy: IPv6 80/443 + ipv6_extra_ports; IPv4 80/443 + requested ports in ipv4_allowed_ports; deny_ports wins)")]
    PortNotAllowed {
        route: String,
        env: String,
        port: u16,
    },
    #[error(
        "route {route}: hostname {hostname} is already bound to env {owner_env} by route {owner}"
    )]
    HostnameInTwoEnvs {
        route: String,
        hostname: String,
        owner: String,
        owner_env: String,
    },
    #[error("route {route}: tcp_raw on {addr} but route {other} is already tcp_raw there")]
    TwoRawRoutes {
        route: String,
        other: String,
        addr: SocketAddr,
    },
    #[error("route {route}: {protocol} on {addr} mixes with route {other} ({other_protocol}); tcp_raw needs the (IP, port) to itself")]
    RawAndTls {
        route: String,
        protocol: &'static str,
        other: String,
        other_protocol: &'static str,
        addr: SocketAddr,
    },
    #[error("route {route}: hostname {hostname} on {addr} is already served by route {other}")]
    SameHostname {
        route: String,
        hostname: String,
        other: String,
        addr: SocketAddr,
    },
}

impl RouteError {
    /// A stable snake_case label for metrics.
    pub const fn kind(&self) -> &'static str {
        match self {
            RouteError::EmptyId | RouteError::Duplicate { .. } => "bad_id",
            RouteError::BadEnv { .. } | RouteError::UnknownEnv { .. } => "unknown_env",
            RouteError::BadHostname { .. } => "bad_hostname",
            RouteError::BadProtocol { .. } => "bad_protocol",
            RouteError::PortZero { .. } | RouteError::EmptyProcessType { .. } => "bad_field",
            RouteError::Ipv4Required { .. } => "ipv4_required",
            RouteError::Ipv4PortNotAllowed { .. } => "ipv4_port_not_allowed",
            RouteError::BadHealthSource { .. } => "bad_health_source",
            RouteError::PortNotAllowed { .. } => "port_not_allowed",
            RouteError::HostnameInTwoEnvs { .. } => "hostname_in_two_envs",
            RouteError::TwoRawRoutes { .. } => "two_raw_routes",
            RouteError::RawAndTls { .. } => "raw_and_tls",
            RouteError::SameHostname { .. } => "same_hostname",
        }
    }

    /// The id of the rejected route, as written.
    pub fn route_id(&self) -> &str {
        match self {
            RouteError::EmptyId => "",
            RouteError::Duplicate { route }
            | RouteError::BadEnv { route, .. }
            | RouteError::UnknownEnv { route, .. }
            | RouteError::BadHostname { route, .. }
            | RouteError::BadProtocol { route, .. }
            | RouteError::PortZero { route, .. }
            | RouteError::EmptyProcessType { route }
            | RouteError::Ipv4Required { route, .. }
            | RouteError::Ipv4PortNotAllowed { route, .. }
            | RouteError::BadHealthSource { route, .. }
            | RouteError::PortNotAllowed { route, .. }
            | RouteError::HostnameInTwoEnvs { route, .. }
            | RouteError::TwoRawRoutes { route, .. }
            | RouteError::RawAndTls { route, .. }
            | RouteError::SameHostname { route, .. } => route,
        }
    }
}

/// Any object rejected while compiling a [`crate::RoutingSpec`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error(transparent)]
    Route(#[from] RouteError),
}

impl SpecError {
    /// What is rejected: `("env" | "instance" | "route", id)`, so a NACK
    /// can name the object without parsing the message.
    pub fn object(&self) -> (&'static str, &str) {
        match self {
            SpecError::Env(e) => ("env", e.env_id()),
            SpecError::Instance(e) => ("instance", e.instance_id()),
            SpecError::Route(e) => ("route", e.route_id()),
        }
    }

    /// `env`, `instance` or `route`, plus the kind, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            SpecError::Env(e) => e.kind(),
            SpecError::Instance(e) => e.kind(),
            SpecError::Route(e) => e.kind(),
        }
    }
}
