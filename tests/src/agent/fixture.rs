//! One edge node (edge + edge-agent) following the tests' feed (edge-feed over an in-memory log), for the
//! `agent_*` suites: the feed servers (plain or mTLS), the edge with a
//! control socket, and the agent's config, started when the test says.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{AgentProcess, AgentToml};
use crate::edge::{Edge, Toml};
use crate::ports::free_port;
use crate::reference_feed::tls::FeedServerTls;
use crate::reference_feed::{serve_grpc, serve_grpc_tls, serve_http, serve_http_tls, Feed, Server};

/// Which feed transports to serve, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    Grpc,
    Poll,
}

pub struct Node {
    pub node_id: String,
    pub feed: Arc<Feed>,
    pub grpc: Option<Server>,
    pub http: Option<Server>,
    /// The port every test route listens on (allowed on IPv6 by policy).
    pub port: u16,
    pub edge_toml: Toml,
    pub edge: Option<Edge>,
    pub agent_toml: AgentToml,
    pub agent: Option<AgentProcess>,
    pub dir: tempfile::TempDir,
}

impl Node {
    /// The feed on `serve` (mTLS when `tls` is given) and the edge; the
    /// agent is configured, not started.
    pub async fn new(node_id: &str, serve: Serve, tls: Option<&FeedServerTls>) -> Node {
        let feed = Feed::new();
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let (grpc, http) = match (serve, tls) {
            (Serve::Grpc, None) => (Some(serve_grpc(feed.clone(), any).await), None),
            (Serve::Grpc, Some(t)) => (Some(serve_grpc_tls(feed.clone(), any, t).await), None),
            (Serve::Poll, None) => (None, Some(serve_http(feed.clone(), any).await)),
            (Serve::Poll, Some(t)) => (None, Some(serve_http_tls(feed.clone(), any, t).await)),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("control.sock");
        let port = free_port();
        let edge_toml = Toml::new()
            .control(&socket, &dir.path().join("edge-state"))
            .policy("ipv6_extra_ports", &format!("[{port}]"));
        let edge = Edge::start_unsynced(&edge_toml).await;
        let mut agent_toml = AgentToml::new(node_id, &dir.path().join("agent-state"), &socket);
        agent_toml.grpc = grpc.as_ref().map(|s| s.addr);
        agent_toml.poll = http.as_ref().map(|s| s.addr);
        Node {
            node_id: node_id.into(),
            feed,
            grpc,
            http,
            port,
            edge_toml,
            edge: Some(edge),
            agent_toml,
            agent: None,
            dir,
        }
    }

    pub fn start_agent(&mut self) {
        self.agent = Some(AgentProcess::start(&self.agent_toml));
    }

    pub fn agent(&self) -> &AgentProcess {
        self.agent.as_ref().expect("agent started")
    }

    pub fn edge(&self) -> &Edge {
        self.edge.as_ref().expect("edge running")
    }

    pub fn state_file(&self) -> PathBuf {
        self.agent_toml.state_dir.join("state.json")
    }

    /// `[::1]:port`, where the test routes listen.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, self.port))
    }

    /// Appends `env.configured` for `env` on `::1`.
    pub fn env(&self, env: &str) -> u64 {
        self.feed.append(
            "env",
            env,
            "env.configured",
            json!({"id": env, "ipv6": ["::1"], "ipv4": null, "ports": []}),
        )
    }

    /// A `tls_passthrough` route payload on the node's port.
    pub fn route(&self, id: &str, env: &str, host: &str, backend_port: u16) -> Value {
        json!({"id": id, "env": env, "hostname": host, "listen_port": self.port,
               "protocol": "tls_passthrough", "backend_process_type": "web",
               "backend_port": backend_port})
    }

    /// Waits until the node reported `event_id` applied.
    pub async fn wait_applied(&self, event_id: u64, within: Duration) {
        let ok = self
            .feed
            .wait_applied(&[self.node_id.as_str()], event_id, within)
            .await;
        assert!(
            ok,
            "node never applied {event_id} (it reported {})\nagent log:\n{}",
            self.feed.applied(&self.node_id),
            self.agent.as_ref().map(|a| a.log()).unwrap_or_default()
        );
    }

    /// The route ids in the edge's `/routes`.
    pub async fn route_ids(&self) -> Vec<String> {
        let (status, body) = self.edge().get("/routes").await;
        assert_eq!(status, 200, "{body}");
        route_ids(&body)
    }

    /// Waits until `metric` (with `labels`) reads `value`.
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        value: f64,
        within: Duration,
    ) {
        self.wait_for_metric(name, labels, |v| v == value, value, within)
            .await;
    }

    /// Waits until counter `name` (with `labels`) reaches `at_least`.
    pub async fn wait_counter(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        at_least: f64,
        within: Duration,
    ) {
        self.wait_for_metric(name, labels, |v| v >= at_least, at_least, within)
            .await;
    }

    async fn wait_for_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        ok: impl Fn(f64) -> bool,
        value: f64,
        within: Duration,
    ) {
        let deadline = Instant::now() + within;
        loop {
            let got = self.agent().metric(name, labels).await;
            if ok(got) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} is {got}, not {value}\nagent log:\n{}",
                self.agent().log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The route ids of a `/routes` body, every listener's.
pub fn route_ids(body: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let mut ids: Vec<String> = v["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["routes"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}
