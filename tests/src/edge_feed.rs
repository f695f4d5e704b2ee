//! `edge-feed` as a process, and an edge node (edge + edge-agent) that
//! follows it: the fixtures of `tests/tests/feed_*.rs` and the fleet
//! benchmark.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::agent::{AgentProcess, AgentTls, AgentToml};
use crate::edge::{built_binary, get, Edge, Toml};
use crate::ports::free_port;

/// The `edge-feed` binary: `$EDGE_FEED_BIN`, or the one beside the test.
pub fn feed_bin() -> PathBuf {
    built_binary("EDGE_FEED_BIN", "edge-feed")
}

/// Runs `edge-feed ARGS` to completion.
pub fn feed_cli(args: &[&str]) -> Output {
    Command::new(feed_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run edge-feed")
}

/// `edge-feed migrate --store URL`, asserting success.
pub fn migrate(url: &str) {
    let out = feed_cli(&["migrate", "--store", url]);
    assert!(
        out.status.success(),
        "edge-feed migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `edge-feed serve`, killed by PID when dropped.
pub struct FeedProcess {
    child: Option<Child>,
    store: String,
    extra: Vec<String>,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    dir: tempfile::TempDir,
}

impl FeedProcess {
    /// Serves `store` on free loopback ports; `extra` args are appended.
    pub async fn start(store: &str, extra: &[&str]) -> FeedProcess {
        let mut feed = FeedProcess {
            child: None,
            store: store.into(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            grpc: SocketAddr::from(([127, 0, 0, 1], free_port())),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        feed.launch().await;
        feed
    }

    async fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("feed.log"))
            .expect("feed log");
        let child = Command::new(feed_bin())
            .args(["serve", "--store", &self.store])
            .args([
                "--http",
                &self.http.to_string(),
                "--grpc",
                &self.grpc.to_string(),
            ])
            .args(&self.extra)
            .env("EDGE_FEED_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn edge-feed");
        self.child = Some(child);
        if self.extra.iter().any(|a| a == "--tls-cert") {
            // No plain-HTTP health check through TLS: wait for the port.
            self.wait_port().await;
            return;
        }
        let deadline = tokio::time::Instant::now() + crate::PATIENCE * 3;
        loop {
            if let Ok((200, _)) = get(self.http, "/healthz").await {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("edge-feed exited ({status}):\n{}", self.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "edge-feed not up:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_port(&mut self) {
        let deadline = tokio::time::Instant::now() + crate::PATIENCE * 3;
        while tokio::net::TcpStream::connect(self.http).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "edge-feed not up:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("feed.log")).unwrap_or_default()
    }

    /// Kills the feed by PID (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and arguments.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }
}

impl Drop for FeedProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- edge-feed log (tail) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// `edge-feed append --store STORE ...`, asserting success; the event_id.
pub fn append(
    store: &str,
    aggregate_type: &str,
    aggregate_id: &str,
    event_type: &str,
    payload: &serde_json::Value,
) -> u64 {
    let out = feed_cli(&[
        "append",
        "--store",
        store,
        aggregate_type,
        aggregate_id,
        event_type,
        &payload.to_string(),
    ]);
    assert!(
        out.status.success(),
        "edge-feed append: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("edge-feed append prints the event_id")
}

/// Which transport a node's agent follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Grpc,
    Poll,
}

/// An edge with `[control]` and its agent, following a feed. The edge may
/// serve only `port` on IPv6 (its `ipv6_extra_ports`), so several nodes
/// share one machine: routes for other nodes' ports are rejected by policy.
pub struct Node {
    pub node_id: String,
    pub port: u16,
    pub edge: Edge,
    pub agent: AgentProcess,
    _dir: tempfile::TempDir,
}

impl Node {
    pub async fn start(node_id: &str, feed: &FeedProcess, via: Via) -> Node {
        let port = free_port();
        let policy = [("ipv6_extra_ports", format!("[{port}]"))];
        Node::start_with(node_id, feed, via, port, &policy).await
    }

    /// As [`Node::start`], with the edge's `[policy]` given (`port` is
    /// only recorded).
    pub async fn start_with(
        node_id: &str,
        feed: &FeedProcess,
        via: Via,
        port: u16,
        policy: &[(&str, String)],
    ) -> Node {
        Node::start_tls(node_id, feed, via, port, policy, None).await
    }

    /// As [`Node::start_with`], the agent following the feed over TLS
    /// (`[feed] tls`, `https://` endpoints) when `tls` is given.
    pub async fn start_tls(
        node_id: &str,
        feed: &FeedProcess,
        via: Via,
        port: u16,
        policy: &[(&str, String)],
        tls: Option<AgentTls>,
    ) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("control.sock");
        let mut edge_toml = Toml::new().control(&socket, &dir.path().join("edge-state"));
        for (k, v) in policy {
            edge_toml = edge_toml.policy(k, v);
        }
        let edge = Edge::spawn(&edge_toml, &[]);
        let deadline = tokio::time::Instant::now() + crate::PATIENCE;
        while get(edge.admin, "/readyz").await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "edge admin not up:\n{}",
                edge.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut agent_toml = AgentToml::new(node_id, &dir.path().join("agent-state"), &socket);
        match via {
            Via::Grpc => {
                agent_toml.grpc = Some(feed.grpc);
                agent_toml.poll = Some(feed.http);
            }
            Via::Poll => agent_toml.poll = Some(feed.http),
        }
        agent_toml.tls = tls;
        let agent = AgentProcess::start(&agent_toml);
        Node {
            node_id: node_id.into(),
            port,
            edge,
            agent,
            _dir: dir,
        }
    }

    /// The agent's cursor (edge_agent_cursor).
    pub async fn cursor(&self) -> u64 {
        self.agent.metric("edge_agent_cursor", &[]).await as u64
    }

    /// Waits until the agent's cursor is `event_id` or beyond.
    pub async fn wait_cursor(&self, event_id: u64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let c = self.cursor().await;
            if c >= event_id {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: cursor {c} never reached {event_id}\nagent log tail:\n{}",
                self.node_id,
                tail(&self.agent.log(), 30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `(listener addr, route id, hostname)` of the edge's /routes, sorted.
    pub async fn routes(&self) -> Vec<(String, String, String)> {
        let (_, body) = self.edge.get("/routes").await;
        routes_of(&serde_json::from_str(&body).expect("/routes is JSON"))
    }
}

/// `(listener addr, route id, hostname)` of a /routes document, sorted.
pub fn routes_of(doc: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for l in doc["listeners"].as_array().into_iter().flatten() {
        for r in l["routes"].as_array().into_iter().flatten() {
            out.push((
                l["addr"].as_str().unwrap_or_default().to_owned(),
                r["id"].as_str().unwrap_or_default().to_owned(),
                r["hostname"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    out.sort();
    out
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The served events of a PostgreSQL log, in `event_id` order.
pub async fn served_events(client: &tokio_postgres::Client) -> Vec<route_model::Event> {
    let rows = client
        .query(
            "SELECT event_id, aggregate_type, aggregate_id, aggregate_seq, event_type, payload \
             FROM events WHERE aggregate_type IN ('env', 'route', 'instance') ORDER BY event_id",
            &[],
        )
        .await
        .expect("read the log");
    rows.iter()
        .map(|r| route_model::Event {
            event_id: r.get::<_, i64>(0) as u64,
            occurred_at: String::new(),
            aggregate_type: r.get(1),
            aggregate_id: r.get(2),
            aggregate_seq: r.get::<_, i32>(3) as u64,
            event_type: r.get(4),
            payload: r.get(5),
        })
        .collect()
}

/// What a node's /routes must be once it has applied `events`: the log
/// materialised with `route_model::State` and compiled under the node's
/// policy (only `port` on IPv6), as `(listener addr, route id, hostname)`.
pub fn materialised_routes(
    events: &[route_model::Event],
    port: u16,
) -> Vec<(String, String, String)> {
    let mut state = route_model::State::default();
    for e in events {
        state
            .apply(e)
            .unwrap_or_else(|gap| panic!("the committed log has a gap: {gap}"));
    }
    let policy = route_model::PortPolicy {
        ipv6_extra_ports: route_model::PortSet::ports(&[port]),
        ..route_model::PortPolicy::default()
    };
    let compiled = route_model::compile(
        &state.spec(),
        &policy,
        &route_model::OverlayPolicy::default(),
        1,
    );
    let table = &compiled.table;
    let mut out = Vec::new();
    for (addr, _) in table.listeners() {
        for r in table.routes_on(addr) {
            out.push((
                addr.to_string(),
                r.route.id.to_string(),
                r.route.hostname.to_string(),
            ));
        }
    }
    out.sort();
    out
}
