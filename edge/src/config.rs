//! `edge.toml`, parsed into validated types at the edge of the program.
//!
//! [`Config`] is plain data: no sockets, no handles. Every field has the
//! default the contract documents; unknown keys are errors, so a typo is
//! reported instead of silently ignored. Routes, envs and instances are
//! kept as a [`RoutingSpec`] and validated by `route_model::compile`, which
//! rejects bad routes one by one while the rest still load.

use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv6Net;
use route_model::{EnvSpec, InstanceSpec, OverlayPolicy, PortPolicy, RouteSpec, RoutingSpec};
use serde::Deserialize;

/// Why `edge.toml` could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field}: {why}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        why: String,
    },
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub admin: AdminConfig,
    pub control: Option<ControlConfig>,
    pub upgrade: Option<UpgradeConfig>,
    pub limits: Limits,
    pub forwarding: Forwarding,
    pub policy: PortPolicy,
    pub overlay: Overlay,
    /// `[health]`: the edge's own checks (`crate::health`).
    pub health: crate::health::HealthConfig,
    pub routing: RoutingSpec,
}

/// `[upgrade]`: where a new edge process takes the listening sockets over
/// from the running one (docs/operations.md, "Upgrading").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeConfig {
    /// Unix socket (mode 0600) the running edge hands its listeners over on.
    pub socket: PathBuf,
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// HTTP listener for /metrics, /healthz, /readyz, /routes. Keep it local.
    #[serde(default = "default_admin")]
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin(),
        }
    }
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

/// `[control]`: where edge-agent pushes route tables.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
}

/// `[limits]`, as durations and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub client_hello_timeout: Duration,
    pub max_client_hello_bytes: usize,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    /// `listen(2)` backlog of every public listener.
    pub listen_backlog: u32,
    /// How long tunnels of a route deleted by a reload may go on.
    pub deleted_route_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        RawLimits::default().validate().expect("defaults are valid")
    }
}

/// `[forwarding]`: how established tunnels move bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Forwarding {
    /// `splice(2)` through a pipe (zero-copy, Linux); `false` copies
    /// through a user-space buffer. Takes effect at the next restart.
    pub splice: bool,
}

impl Default for Forwarding {
    fn default() -> Self {
        Forwarding { splice: true }
    }
}

impl Forwarding {
    pub fn mode(self) -> crate::forward::Mode {
        if self.splice {
            crate::forward::Mode::Splice
        } else {
            crate::forward::Mode::Copy
        }
    }
}

/// `[overlay]`: how backends are dialled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overlay {
    pub policy: OverlayPolicy,
    /// Source address for backend sockets.
    pub source: Option<Ipv6Addr>,
    /// SO_MARK for overlay policy routing (needs CAP_NET_ADMIN).
    pub fwmark: Option<u32>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses `text`; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let invalid = |field, why: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            why,
        };
        let limits = raw.limits.validate().map_err(|(f, why)| invalid(f, why))?;
        if raw.overlay.allowed_backends.is_empty() {
            return Err(invalid(
                "overlay.allowed_backends",
                "must list at least one prefix".into(),
            ));
        }
        Ok(Config {
            admin: raw.admin,
            control: raw.control,
            upgrade: raw.upgrade,
            limits,
            forwarding: raw.forwarding,
            policy: raw.policy,
            overlay: Overlay {
                policy: OverlayPolicy {
                    allowed_backends: raw.overlay.allowed_backends,
                },
                source: raw.overlay.source,
                fwmark: raw.overlay.fwmark.filter(|m| *m != 0),
            },
            health: raw.health,
            routing: RoutingSpec {
                envs: raw.envs,
                instances: raw.instances,
                routes: raw.routes,
            },
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    admin: AdminConfig,
    control: Option<ControlConfig>,
    upgrade: Option<UpgradeConfig>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    forwarding: Forwarding,
    #[serde(default)]
    policy: PortPolicy,
    #[serde(default)]
    overlay: RawOverlay,
    #[serde(default)]
    health: crate::health::HealthConfig,
    #[serde(default)]
    envs: Vec<EnvSpec>,
    #[serde(default)]
    instances: Vec<InstanceSpec>,
    #[serde(default)]
    routes: Vec<RouteSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverlay {
    #[serde(
        default = "default_allowed_backends",
        deserialize_with = "deserialize_prefixes"
    )]
    allowed_backends: Vec<Ipv6Net>,
    source: Option<Ipv6Addr>,
    fwmark: Option<u32>,
}

impl Default for RawOverlay {
    fn default() -> Self {
        RawOverlay {
            allowed_backends: default_allowed_backends(),
            source: None,
            fwmark: None,
        }
    }
}

fn default_allowed_backends() -> Vec<Ipv6Net> {
    OverlayPolicy::default().allowed_backends
}

fn deserialize_prefixes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Ipv6Net>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    texts
        .iter()
        .map(|t| parse_prefix(t).map_err(serde::de::Error::custom))
        .collect()
}

/// Parses an IPv6 prefix (`fdaa::/16`), naming the part that is wrong:
/// `ipnet` reports `::1/129` as "invalid IP address syntax".
fn parse_prefix(text: &str) -> Result<Ipv6Net, String> {
    let Some((addr, len)) = text.split_once('/') else {
        return Err(format!(
            "{text:?}: not a prefix (expected ADDRESS/LENGTH, as in \"fdaa::/16\")"
        ));
    };
    let addr: Ipv6Addr = addr
        .parse()
        .map_err(|_| format!("{text:?}: {addr:?} is not an IPv6 address"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 128)
        .ok_or_else(|| format!("{text:?}: prefix length {len:?} is not between 0 and 128"))?;
    Ipv6Net::new(addr, len).map_err(|e| format!("{text:?}: {e}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    client_hello_timeout_ms: u64,
    max_client_hello_bytes: usize,
    connect_timeout_ms: u64,
    idle_timeout_ms: u64,
    drain_timeout_ms: u64,
    max_connections: usize,
    max_connections_per_source: usize,
    listen_backlog: u32,
    deleted_route_grace_ms: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            client_hello_timeout_ms: 5_000,
            max_client_hello_bytes: 16_384,
            connect_timeout_ms: 3_000,
            idle_timeout_ms: 3_600_000,
            drain_timeout_ms: 30_000,
            max_connections: 100_000,
            max_connections_per_source: 512,
            listen_backlog: 1_024,
            deleted_route_grace_ms: 30_000,
        }
    }
}

/// The smallest buffer that holds a record header and a minimal hello.
const MIN_CLIENT_HELLO_BYTES: usize = 64;
/// A hello can never need more than this: a 16 KiB handshake message plus
/// the headers of the records it may be split into.
const MAX_CLIENT_HELLO_BYTES: usize = 256 * 1024;

impl RawLimits {
    fn validate(self) -> Result<Limits, (&'static str, String)> {
        let ms = |field: &'static str, v: u64| {
            if v == 0 {
                Err((field, "must be greater than 0".to_owned()))
            } else {
                Ok(Duration::from_millis(v))
            }
        };
        let count = |field: &'static str, v: usize| {
            if v == 0 {
                Err((field, "must be greater than 0".to_owned()))
            } else {
                Ok(v)
            }
        };
        if !(MIN_CLIENT_HELLO_BYTES..=MAX_CLIENT_HELLO_BYTES).contains(&self.max_client_hello_bytes)
        {
            return Err((
                "limits.max_client_hello_bytes",
                format!("must be between {MIN_CLIENT_HELLO_BYTES} and {MAX_CLIENT_HELLO_BYTES}"),
            ));
        }
        Ok(Limits {
            client_hello_timeout: ms(
                "limits.client_hello_timeout_ms",
                self.client_hello_timeout_ms,
            )?,
            max_client_hello_bytes: self.max_client_hello_bytes,
            connect_timeout: ms("limits.connect_timeout_ms", self.connect_timeout_ms)?,
            idle_timeout: ms("limits.idle_timeout_ms", self.idle_timeout_ms)?,
            drain_timeout: ms("limits.drain_timeout_ms", self.drain_timeout_ms)?,
            max_connections: count("limits.max_connections", self.max_connections)?,
            max_connections_per_source: count(
                "limits.max_connections_per_source",
                self.max_connections_per_source,
            )?,
            listen_backlog: u32::try_from(count(
                "limits.listen_backlog",
                self.listen_backlog as usize,
            )?)
            .unwrap_or(u32::MAX),
            deleted_route_grace: Duration::from_millis(self.deleted_route_grace_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("edge.toml"))
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.admin.listen, "127.0.0.1:9901".parse().unwrap());
        assert_eq!(c.limits.client_hello_timeout, Duration::from_secs(5));
        assert_eq!(c.limits.max_client_hello_bytes, 16_384);
        assert_eq!(c.limits.max_connections_per_source, 512);
        assert!(c.policy.deny_ports.contains(25));
        assert!(c.overlay.policy.allows("fdaa::3".parse().unwrap()));
        assert!(c.control.is_none());
    }

    #[test]
    fn contract_example_parses() {
        let text = include_str!("../../deploy/examples/contract.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.routing.routes.len(), 1);
        assert_eq!(c.routing.envs[0].ipv4.as_deref(), Some("203.0.113.7"));
        assert_eq!(c.health, crate::health::HealthConfig::default());
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse("[limits]\nconnect_timeout_ms = 0\n").unwrap_err();
        assert!(e.to_string().contains("limits.connect_timeout_ms"), "{e}");
        let e = parse("[limits]\nconect_timeout_ms = 5\n").unwrap_err();
        assert!(e.to_string().contains("conect_timeout_ms"), "{e}");
        let e = parse("[overlay]\nallowed_backends = []\n").unwrap_err();
        assert!(e.to_string().contains("overlay.allowed_backends"), "{e}");
        let e = parse("[policy]\ndeny_ports = [\"x\"]\n").unwrap_err();
        assert!(e.to_string().contains("bad port entry"), "{e}");
    }

    #[test]
    fn a_bad_prefix_names_the_part_that_is_wrong() {
        let e = parse("[overlay]\nallowed_backends = [\"::1/129\"]\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("prefix length \"129\" is not between 0 and 128"),
            "{e}"
        );
        let e = parse("[overlay]\nallowed_backends = [\"fdaa::x/16\"]\n").unwrap_err();
        assert!(
            e.to_string().contains("\"fdaa::x\" is not an IPv6 address"),
            "{e}"
        );
        let e = parse("[overlay]\nallowed_backends = [\"fdaa::\"]\n").unwrap_err();
        assert!(e.to_string().contains("not a prefix"), "{e}");
        let c = parse("[overlay]\nallowed_backends = [\"fdaa::/16\", \"::1/128\"]\n").unwrap();
        assert!(c.overlay.policy.allows("::1".parse().unwrap()));
    }
}
