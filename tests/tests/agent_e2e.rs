//! The whole loop on one machine: feed (edge-feed) -> edge-agent -> edge ->
//! a real TLS client. Each test builds its own feed, edge and agent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_tests::agent::{AgentProcess, AgentToml};
use edge_tests::backend::{Backend, Mode};
use edge_tests::ca::TestCa;
use edge_tests::client::who_answers;
use edge_tests::edge::{Edge, Toml};
use edge_tests::ports::{free_port, LoAddr};
use edge_tests::reference_feed::{serve_grpc, serve_http, Feed, Server, Transport};
use serde_json::json;

const ENV: &str = "acme/shop/prod";
const NODE: &str = "edge-test-1";

/// One edge node with its agent, following `feed`.
struct Node {
    ca: TestCa,
    feed: Arc<Feed>,
    grpc: Option<Server>,
    http: Option<Server>,
    ports: Vec<u16>,
    edge_toml: Toml,
    edge: Option<Edge>,
    agent_toml: AgentToml,
    agent: Option<AgentProcess>,
    backend: Backend,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start(grpc: bool, poll: bool) -> Node {
        let ca = TestCa::new();
        let backend = Backend::start(
            "[::1]:0".parse().unwrap(),
            "web",
            Mode::Tls(ca.server_config(&["*.example.com"])),
            false,
        )
        .await;
        let feed = Feed::new();
        let grpc = if grpc {
            Some(serve_grpc(feed.clone(), "127.0.0.1:0".parse().unwrap()).await)
        } else {
            None
        };
        let http = if poll {
            Some(serve_http(feed.clone(), "127.0.0.1:0".parse().unwrap()).await)
        } else {
            None
        };
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("control.sock");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let edge_toml = Toml::new()
            .control(&socket, &dir.path().join("edge-state"))
            .policy("ipv6_extra_ports", &format!("{ports:?}"));
        let edge = Edge::start_unsynced(&edge_toml).await;
        let mut agent_toml = AgentToml::new(NODE, &dir.path().join("agent-state"), &socket);
        agent_toml.grpc = grpc.as_ref().map(|s| s.addr);
        agent_toml.poll = http.as_ref().map(|s| s.addr);
        let agent = AgentProcess::start(&agent_toml);
        // The env and its instance, as the control plane would announce them.
        feed.append(
            "env",
            ENV,
            "env.configured",
            json!({"id": ENV, "ipv6": ["::1"], "ipv4": null, "ports": []}),
        );
        feed.append(
            "instance",
            "i-1",
            "instance.up",
            json!({"env": ENV, "process_type": "web", "addr": "::1"}),
        );
        Node {
            ca,
            feed,
            grpc,
            http,
            ports,
            edge_toml,
            edge: Some(edge),
            agent_toml,
            agent: Some(agent),
            backend,
            _dir: dir,
        }
    }

    fn edge(&self) -> &Edge {
        self.edge.as_ref().unwrap()
    }

    fn agent(&self) -> &AgentProcess {
        self.agent.as_ref().unwrap()
    }

    fn addr(&self, port_index: usize) -> SocketAddr {
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, self.ports[port_index]))
    }

    fn route(&self, id: &str, host: &str, port_index: usize, ty: &str) -> u64 {
        self.feed.append(
            "route",
            id,
            ty,
            route_payload(id, host, self.ports[port_index], self.backend.addr.port()),
        )
    }

    /// Waits until a verified TLS client for `host` is answered by `tag`.
    async fn served(&self, port_index: usize, host: &str, tag: &str, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if let Ok(got) = who_answers(self.addr(port_index), host, &self.ca).await {
                if got == tag {
                    return started.elapsed();
                }
            }
            assert!(
                started.elapsed() < within,
                "{host} not served by {tag} within {within:?}\nagent log:\n{}",
                self.agent.as_ref().map(|a| a.log()).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_applied(&self, event_id: u64) {
        assert!(
            self.feed
                .wait_applied(&[NODE], event_id, Duration::from_secs(10))
                .await,
            "node never applied {event_id}\nagent log:\n{}",
            self.agent().log()
        );
    }
}

fn route_payload(id: &str, host: &str, port: u16, backend_port: u16) -> serde_json::Value {
    json!({"id": id, "env": ENV, "hostname": host, "listen_port": port, "protocol": "tls_passthrough",
           "backend_process_type": "web", "backend_port": backend_port})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_route_serves_within_a_second_and_a_deleted_one_closes() {
    let node = Node::start(true, true).await;
    node.wait_applied(2).await;
    let event = node.route("r-shop", "shop.example.com", 0, "route.created");
    let took = node
        .served(0, "shop.example.com", "web", Duration::from_secs(1))
        .await;
    eprintln!("route.created -> served in {took:?}");
    node.wait_applied(event).await;

    let deleted = node
        .feed
        .append("route", "r-shop", "route.deleted", json!({}));
    node.wait_applied(deleted).await;
    let refused = tokio::net::TcpStream::connect(node.addr(0))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_the_wait_returns_once_a_client_can_connect() {
    let node = Node::start(true, false).await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&node.agent_toml.control_socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the control socket is private to the edge's user"
    );
    let event = node.route("r-ryw", "ryw.example.com", 1, "route.created");
    assert!(
        node.feed
            .wait_applied(&[NODE], event, Duration::from_secs(10))
            .await
    );
    // No retry: the route is live the moment the wait returns.
    assert_eq!(
        who_answers(node.addr(1), "ryw.example.com", &node.ca)
            .await
            .unwrap(),
        "web"
    );
    assert!(
        !node
            .feed
            .wait_applied(
                &[NODE, "edge-that-does-not-exist"],
                event,
                Duration::from_millis(300)
            )
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_down_moves_new_connections_to_another_instance() {
    let a = LoAddr::add("fd00:e1::21");
    let b = LoAddr::add("fd00:e1::22");
    let node = Node::start(true, false).await;
    let port = free_port();
    let names = ["*.example.com"];
    let backend_a = Backend::start(
        SocketAddr::from((a.addr, port)),
        "a",
        Mode::Tls(node.ca.server_config(&names)),
        false,
    )
    .await;
    let backend_b = Backend::start(
        SocketAddr::from((b.addr, port)),
        "b",
        Mode::Tls(node.ca.server_config(&names)),
        false,
    )
    .await;
    node.feed
        .append("instance", "i-1", "instance.down", json!({}));
    node.feed.append(
        "instance",
        "i-a",
        "instance.up",
        json!({"env": ENV, "process_type": "web", "addr": a.addr.to_string()}),
    );
    node.feed.append(
        "instance",
        "i-b",
        "instance.up",
        json!({"env": ENV, "process_type": "web", "addr": b.addr.to_string()}),
    );
    let event = node.feed.append(
        "route",
        "r-1",
        "route.created",
        route_payload("r-1", "ha.example.com", node.ports[0], port),
    );
    node.wait_applied(event).await;
    for _ in 0..10 {
        who_answers(node.addr(0), "ha.example.com", &node.ca)
            .await
            .unwrap();
    }
    assert!(
        backend_a.accepted() > 0 && backend_b.accepted() > 0,
        "both instances serve"
    );
    let down = node
        .feed
        .append("instance", "i-a", "instance.down", json!({}));
    node.wait_applied(down).await;
    let before = backend_a.accepted();
    for _ in 0..10 {
        assert_eq!(
            who_answers(node.addr(0), "ha.example.com", &node.ca)
                .await
                .unwrap(),
            "b"
        );
    }
    assert_eq!(
        backend_a.accepted(),
        before,
        "no new connection went to the downed instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_resumes_from_its_cursor() {
    let mut node = Node::start(true, false).await;
    let first = node.route("r-1", "one.example.com", 0, "route.created");
    node.wait_applied(first).await;
    node.agent.as_mut().unwrap().kill();
    let second = node.route("r-2", "two.example.com", 1, "route.created");
    node.agent = Some(AgentProcess::start(&node.agent_toml));
    node.served(1, "two.example.com", "web", Duration::from_secs(10))
        .await;
    node.wait_applied(second).await;
    let afters: Vec<u64> = node.feed.requests().iter().map(|r| r.after).collect();
    assert_eq!(afters.first(), Some(&0), "the first agent starts from 0");
    assert!(
        afters[1..].contains(&first),
        "the restarted agent resumes at {first}: {afters:?}"
    );
    assert!(
        !afters[1..].contains(&0),
        "and never from 0 again: {afters:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_gap_resynchronises_from_zero_and_unknown_types_are_skipped() {
    let node = Node::start(true, false).await;
    let created = node.route("r-1", "gap.example.com", 0, "route.created");
    node.wait_applied(created).await;
    // An unknown type takes the route's seq 2; the update after it (seq 3) applies.
    node.feed
        .append("route", "r-1", "route.renamed", json!({"to": "whatever"}));
    node.route("r-1", "gap2.example.com", 0, "route.updated");
    node.served(0, "gap2.example.com", "web", Duration::from_secs(10))
        .await;
    assert!(
        node.agent()
            .metric("edge_agent_events_total", &[("outcome", "skipped")])
            .await
            >= 1.0
    );

    // Now an event claims seq 9 for r-1: events were missed.
    let head = node.feed.head();
    node.feed.append_event(route_model::Event {
        event_id: head + 1,
        occurred_at: String::new(),
        aggregate_type: "route".into(),
        aggregate_id: "r-1".into(),
        aggregate_seq: 9,
        event_type: "route.updated".into(),
        payload: route_payload(
            "r-1",
            "gap3.example.com",
            node.ports[0],
            node.backend.addr.port(),
        ),
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.feed.requests().iter().skip(1).any(|r| r.after == 0) {
        assert!(
            Instant::now() < deadline,
            "no resync from after=0: {:?}",
            node.feed.requests()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(node.agent().metric("edge_agent_resyncs_total", &[]).await >= 1.0);
    // The edge kept serving the last good table throughout.
    assert_eq!(
        who_answers(node.addr(0), "gap2.example.com", &node.ca)
            .await
            .unwrap(),
        "web"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_keeps_serving_with_the_feed_down_and_after_a_restart_with_the_agent_stopped() {
    let mut node = Node::start(true, true).await;
    let event = node.route("r-1", "stable.example.com", 0, "route.created");
    node.wait_applied(event).await;
    node.grpc = None; // both feed servers stop
    node.http = None;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        who_answers(node.addr(0), "stable.example.com", &node.ca)
            .await
            .unwrap(),
        "web"
    );

    node.agent.as_mut().unwrap().kill();
    let mut edge = node.edge.take().unwrap();
    edge.signal("TERM");
    assert!(edge.wait_exit(Duration::from_secs(10)).await.is_some());
    drop(edge);
    // A new edge process, same state dir, no agent, no feed.
    let edge = Edge::start(&node.edge_toml).await;
    assert_eq!(
        who_answers(node.addr(0), "stable.example.com", &node.ca)
            .await
            .unwrap(),
        "web"
    );
    node.edge = Some(edge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_route_is_nacked_while_the_others_go_live() {
    let node = Node::start(true, false).await;
    node.feed.append(
        "route",
        "r-smtp",
        "route.created",
        json!({"id": "r-smtp", "env": ENV, "hostname": "mail.example.com",
        "listen_port": 25, "protocol": "tcp_raw", "backend_port": 25}),
    );
    let good = node.route("r-good", "good.example.com", 0, "route.created");
    node.wait_applied(good).await;
    assert_eq!(
        who_answers(node.addr(0), "good.example.com", &node.ca)
            .await
            .unwrap(),
        "web"
    );
    assert!(node.agent().metric("edge_agent_nacks_total", &[]).await >= 1.0);
    let routes = node.edge().get("/routes").await.1;
    assert!(
        routes.contains("r-smtp"),
        "the rejection names the route: {routes}"
    );
    assert!(
        node.agent().log().contains("r-smtp"),
        "the agent logs the NACKed route"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_dropping_mid_batch_loses_and_duplicates_nothing() {
    let node = Node::start(true, false).await;
    node.wait_applied(2).await;
    node.feed.fail_streams_after(Some(3));
    let mut last = 0;
    for i in 0..40 {
        last = node.route(
            &format!("r-{i}"),
            &format!("h{i}.example.com"),
            0,
            "route.created",
        );
    }
    node.wait_applied(last).await;
    node.feed.fail_streams_after(None);
    for i in [0, 17, 39] {
        assert_eq!(
            who_answers(node.addr(0), &format!("h{i}.example.com"), &node.ca)
                .await
                .unwrap(),
            "web"
        );
    }
    let routes: serde_json::Value =
        serde_json::from_str(&node.edge().get("/routes").await.1).unwrap();
    assert_eq!(
        routes["listeners"][0]["routes"].as_array().unwrap().len(),
        40
    );
    let agent = node.agent();
    assert_eq!(
        agent
            .metric("edge_agent_events_total", &[("outcome", "applied")])
            .await,
        42.0,
        "every event applied once"
    );
    assert_eq!(
        agent
            .metric("edge_agent_events_total", &[("outcome", "duplicate")])
            .await,
        0.0
    );
    assert_eq!(agent.metric("edge_agent_resyncs_total", &[]).await, 0.0);
    assert!(
        agent
            .metric("edge_agent_reconnects_total", &[("transport", "grpc")])
            .await
            >= 3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_takes_over_when_grpc_keeps_failing() {
    let node = Node::start(true, true).await;
    node.feed.set_grpc_unavailable(true);
    let event = node.route("r-1", "poll.example.com", 0, "route.created");
    node.served(0, "poll.example.com", "web", Duration::from_secs(15))
        .await;
    node.wait_applied(event).await;
    assert!(node
        .feed
        .requests()
        .iter()
        .any(|r| r.transport == Transport::Poll && r.node_id == NODE));
    assert_eq!(
        node.feed.applied(NODE),
        event,
        "POST /applied reported the cursor"
    );
}
