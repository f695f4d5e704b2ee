//! The plain-data shapes of envs, instances and routes, exactly as they are
//! written in `edge.toml` and carried in event payloads (contract §1, §2).
//!
//! Nothing here is validated: [`crate::table::compile`] turns a
//! [`RoutingSpec`] into validated types and reports every problem by name.
//! Unknown fields are refused so a typo in `edge.toml` is an error, not a
//! silently ignored setting. No I/O.

use serde::{Deserialize, Serialize};

/// Everything the route table is compiled from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSpec {
    #[serde(default)]
    pub envs: Vec<EnvSpec>,
    #[serde(default)]
    pub instances: Vec<InstanceSpec>,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

/// `[[envs]]`: where an env's routes are served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvSpec {
    /// `org/app/env`.
    pub id: String,
    /// Public IPv6 addresses on which the env's routes are served.
    #[serde(default)]
    pub ipv6: Vec<String>,
    /// The dedicated IPv4 add-on (ADR 0007), if the env has one.
    #[serde(default)]
    pub ipv4: Option<String>,
    /// Explicitly requested ports beyond 80/443 (served on the IPv4 add-on
    /// where `policy.ipv4_allowed_ports` allows them).
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// `[[instances]]`: one microVM of an env.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    pub id: String,
    pub env: String,
    pub process_type: String,
    /// Overlay IPv6 address.
    pub addr: String,
    #[serde(default = "yes")]
    pub healthy: bool,
}

/// `[[routes]]`: ADR 0008's Route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub id: String,
    pub env: String,
    pub hostname: String,
    pub listen_port: u16,
    pub protocol: String,
    #[serde(default = "web")]
    pub backend_process_type: String,
    pub backend_port: u16,
    #[serde(default)]
    pub proxy_protocol: bool,
    #[serde(default)]
    pub ipv4_required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_source: Option<HealthSourceSpec>,
}

/// `health_source = { process_type, port }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSourceSpec {
    pub process_type: String,
    pub port: u16,
}

fn yes() -> bool {
    true
}

fn web() -> String {
    "web".to_owned()
}
