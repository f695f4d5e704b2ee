//! Route propagation: how long from an event appended to the control
//! plane's feed until a real TLS client for that route succeeds through
//! the edge (p50/p99 over 1,000 routes, one at a time), and how long the
//! agent takes to apply a 100,000-event backlog and have the edge ACK it.
//!
//! `cargo bench -p edge-benches --bench propagation` (builds the release
//! binaries first). Figures and the machine: docs/benchmarks.md.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use edge_benches::{percentile, release_binaries};
use edge_tests::agent::{AgentProcess, AgentToml};
use edge_tests::backend::{Backend, Mode};
use edge_tests::ca::TestCa;
use edge_tests::client::who_answers;
use edge_tests::edge::{Edge, Toml};
use edge_tests::ports::free_port;
use edge_tests::reference_feed::{serve_grpc, Feed};
use serde_json::json;

const ENV: &str = "acme/bench/prod";
const NODE: &str = "bench-node";
const ROUTES: usize = 1_000;
const BACKLOG_EVENTS: usize = 100_000;

fn main() {
    release_binaries();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        propagation().await;
        backlog().await;
    });
}

struct Node {
    feed: std::sync::Arc<Feed>,
    _grpc: edge_tests::reference_feed::Server,
    _edge: Edge,
    _agent: AgentProcess,
    _dir: tempfile::TempDir,
    port: u16,
}

async fn node(feed: std::sync::Arc<Feed>, port: u16) -> Node {
    let grpc = serve_grpc(feed.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let edge = Edge::start(
        &Toml::new()
            .control(&socket, &dir.path().join("edge-state"))
            .policy("ipv6_extra_ports", &format!("[{port}]")),
    )
    .await;
    let mut agent_toml = AgentToml::new(NODE, &dir.path().join("agent-state"), &socket);
    agent_toml.grpc = Some(grpc.addr);
    let agent = AgentProcess::start(&agent_toml);
    Node {
        feed,
        _grpc: grpc,
        _edge: edge,
        _agent: agent,
        _dir: dir,
        port,
    }
}

fn route(id: &str, host: &str, port: u16, backend_port: u16) -> serde_json::Value {
    json!({"id": id, "env": ENV, "hostname": host, "listen_port": port, "protocol": "tls_passthrough",
           "backend_port": backend_port})
}

async fn propagation() {
    let ca = TestCa::new();
    let backend = Backend::start(
        "[::1]:0".parse().unwrap(),
        "web",
        Mode::Tls(ca.server_config(&["*.example.com"])),
        false,
    )
    .await;
    let feed = Feed::new();
    feed.append(
        "env",
        ENV,
        "env.configured",
        json!({"id": ENV, "ipv6": ["::1"], "ipv4": null, "ports": []}),
    );
    let up = feed.append(
        "instance",
        "i-1",
        "instance.up",
        json!({"env": ENV, "process_type": "web", "addr": "::1"}),
    );
    let node = node(feed, free_port()).await;
    assert!(
        node.feed
            .wait_applied(&[NODE], up, Duration::from_secs(30))
            .await
    );
    let addr = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, node.port));
    let mut samples = Vec::with_capacity(ROUTES);
    for i in 0..ROUTES {
        let host = format!("r{i}.example.com");
        let started = Instant::now();
        node.feed.append(
            "route",
            &format!("r-{i}"),
            "route.created",
            route(&format!("r-{i}"), &host, node.port, backend.addr.port()),
        );
        loop {
            if who_answers(addr, &host, &ca).await.is_ok() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "route {i} never served"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        samples.push(started.elapsed());
    }
    samples.sort();
    println!(
        "propagation, event appended -> TLS client served, {ROUTES} routes one at a time (table grows to {ROUTES}):\n  \
         p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 99.0)),
        ms(*samples.last().unwrap())
    );
}

async fn backlog() {
    let feed = Feed::new();
    feed.append(
        "env",
        ENV,
        "env.configured",
        json!({"id": ENV, "ipv6": ["::1"], "ipv4": null, "ports": []}),
    );
    let routes = BACKLOG_EVENTS / 5;
    let port = free_port();
    let mut last = 0;
    // 20,000 routes, each created then updated four times: 100,000 events.
    for round in 0..5 {
        for i in 0..routes {
            let ty = if round == 0 {
                "route.created"
            } else {
                "route.updated"
            };
            let id = format!("r-{i}");
            last = feed.append(
                "route",
                &id,
                ty,
                route(&id, &format!("r{i}.example.com"), port, 8000 + round),
            );
        }
    }
    let started = Instant::now();
    let node = node(feed, port).await;
    assert!(
        node.feed
            .wait_applied(&[NODE], last, Duration::from_secs(300))
            .await,
        "backlog not applied"
    );
    let took = started.elapsed();
    println!(
        "backlog: {} events ({routes} routes) fetched, materialised, pushed and ACKed in {:.2} s ({:.0} events/s), \
         including edge and agent start",
        last,
        took.as_secs_f64(),
        last as f64 / took.as_secs_f64()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
