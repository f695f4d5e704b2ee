//! `agent.toml` (contract §2), parsed into validated types at start. Every
//! error names the field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::feed::tls::FeedTls;

/// Why `agent.toml` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
}

/// A validated agent configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: String,
    pub state_dir: PathBuf,
    /// gRPC endpoints (`http://` or `https://host:port`), tried in order.
    pub grpc: Vec<String>,
    /// Polling base URL (`http://` or `https://host:port`), the fallback.
    pub poll: Option<PollUrl>,
    /// mTLS to the control plane, for the `https://` endpoints.
    pub tls: Option<FeedTls>,
    pub poll_interval: Duration,
    pub poll_limit: usize,
    pub control_socket: PathBuf,
    pub metrics_listen: SocketAddr,
    /// gRPC failures in a row before polling takes over for a while.
    pub grpc_failures_before_poll: u32,
}

/// `http[s]://host:port[/prefix]`, split once so requests need no URL
/// parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollUrl {
    pub https: bool,
    pub authority: String,
    pub prefix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    node_id: String,
    state_dir: PathBuf,
    feed: RawFeed,
    edge: RawEdge,
    #[serde(default)]
    metrics: RawMetrics,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeed {
    #[serde(default)]
    grpc: Vec<String>,
    poll: Option<String>,
    tls: Option<RawTls>,
    #[serde(default = "default_poll_interval_ms")]
    poll_interval_ms: u64,
    #[serde(default = "default_poll_limit")]
    poll_limit: usize,
    #[serde(default = "default_grpc_failures")]
    grpc_failures_before_poll: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEdge {
    control_socket: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    #[serde(default = "default_metrics")]
    listen: SocketAddr,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            listen: default_metrics(),
        }
    }
}

fn default_poll_interval_ms() -> u64 {
    500
}
fn default_poll_limit() -> usize {
    1000
}
fn default_grpc_failures() -> u32 {
    3
}
fn default_metrics() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9902))
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let invalid = |field, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            message,
        };
        if raw.node_id.trim().is_empty() {
            return Err(invalid("node_id", "must not be empty".into()));
        }
        let tls = match &raw.feed.tls {
            None => None,
            Some(t) => {
                let identity = match (&t.cert, &t.key) {
                    (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
                    (None, None) => None,
                    (Some(_), None) => return Err(invalid("feed.tls.key", "set with cert".into())),
                    (None, Some(_)) => return Err(invalid("feed.tls.cert", "set with key".into())),
                };
                let loaded = FeedTls::load(&t.ca, identity).map_err(|e| ConfigError::Invalid {
                    path: path.to_owned(),
                    field: e.field,
                    message: format!("{}: {}", e.path.display(), e.message),
                })?;
                Some(loaded)
            }
        };
        for url in &raw.feed.grpc {
            let https = scheme(url).map_err(|m| invalid("feed.grpc", m))?;
            check_tls(url, https, tls.is_some()).map_err(|m| invalid("feed.grpc", m))?;
        }
        let poll = match raw.feed.poll {
            Some(url) => {
                let parsed = PollUrl::parse(&url).map_err(|m| invalid("feed.poll", m))?;
                check_tls(&url, parsed.https, tls.is_some())
                    .map_err(|m| invalid("feed.poll", m))?;
                Some(parsed)
            }
            None => None,
        };
        if raw.feed.grpc.is_empty() && poll.is_none() {
            return Err(invalid("feed", "set grpc, poll or both".into()));
        }
        if raw.feed.poll_limit == 0 || raw.feed.poll_interval_ms == 0 {
            return Err(invalid(
                "feed.poll_limit",
                "poll_limit and poll_interval_ms must be > 0".into(),
            ));
        }
        Ok(Config {
            node_id: raw.node_id,
            state_dir: raw.state_dir,
            grpc: raw.feed.grpc,
            poll,
            tls,
            poll_interval: Duration::from_millis(raw.feed.poll_interval_ms),
            poll_limit: raw.feed.poll_limit,
            control_socket: raw.edge.control_socket,
            metrics_listen: raw.metrics.listen,
            grpc_failures_before_poll: raw.feed.grpc_failures_before_poll.max(1),
        })
    }
}

/// Whether `url` is `https://` (true) or `http://` (false).
fn scheme(url: &str) -> Result<bool, String> {
    if url.starts_with("https://") {
        Ok(true)
    } else if url.starts_with("http://") {
        Ok(false)
    } else {
        Err(format!("{url:?}: not http:// or https://"))
    }
}

/// `https://` needs `feed.tls`; with `feed.tls` set, plaintext is refused
/// (a typo must not send the feed's traffic in clear).
fn check_tls(url: &str, https: bool, tls: bool) -> Result<(), String> {
    match (https, tls) {
        (true, false) => Err(format!(
            "{url:?}: https:// needs feed.tls = {{ ca, cert, key }}"
        )),
        (false, true) => Err(format!("{url:?}: feed.tls is set, use https://")),
        _ => Ok(()),
    }
}

impl PollUrl {
    pub fn parse(url: &str) -> Result<PollUrl, String> {
        let https = scheme(url)?;
        let rest = &url[if https { 8 } else { 7 }..];
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        Ok(PollUrl {
            https,
            authority: authority.to_owned(),
            prefix: prefix.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTRACT: &str = r#"
node_id = "edge-fra-1"
state_dir = "/var/lib/edge-agent"

[feed]
grpc = ["http://cp.internal:7443"]
poll = "http://cp.internal:8080"

[edge]
control_socket = "/run/edge/control.sock"
"#;

    #[test]
    fn the_contract_example_parses() {
        let c = Config::parse(CONTRACT, Path::new("agent.toml")).unwrap();
        assert_eq!(c.node_id, "edge-fra-1");
        assert_eq!(c.poll.unwrap().authority, "cp.internal:8080");
        assert_eq!(c.metrics_listen, default_metrics());
    }

    #[test]
    fn errors_name_the_field() {
        let no_feed = CONTRACT.replace(
            "grpc = [\"http://cp.internal:7443\"]\npoll = \"http://cp.internal:8080\"",
            "",
        );
        let e = Config::parse(&no_feed, Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("feed"), "{e}");
        let typo = CONTRACT.replace("node_id", "nodeid");
        let e = Config::parse(&typo, Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nodeid"), "{e}");
        let https = CONTRACT.replace("http://cp.internal:8080", "https://cp.internal:8080");
        let e = Config::parse(&https, Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("feed.poll") && e.contains("feed.tls"), "{e}");
    }

    #[test]
    fn tls_files_are_read_at_load_and_named_when_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let with_tls = |tls: &str| {
            CONTRACT
                .replace("http://", "https://")
                .replace("[edge]", &format!("tls = {tls}\n\n[edge]"))
        };
        let missing = with_tls(r#"{ ca = "/nonexistent/ca.pem", cert = "/x", key = "/y" }"#);
        let e = Config::parse(&missing, Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("feed.tls.ca") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
        let empty = with_tls(&format!("{{ ca = {:?} }}", ca));
        let e = Config::parse(&empty, Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("feed.tls.ca") && e.contains("no certificate"),
            "{e}"
        );
        let half = with_tls(&format!("{{ ca = {:?}, cert = \"/x\" }}", ca));
        let e = Config::parse(&half, Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("feed.tls.key"), "{e}");
    }
}
