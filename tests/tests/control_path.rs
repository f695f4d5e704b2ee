//! The control path end to end, through real agents: a second agent
//! restored from an old backup cannot roll the edge back (its push is
//! fenced), and a route created right after SIGUSR2 is served by the new
//! edge process (the agent reconnects to the socket the successor owns).

use std::time::{Duration, Instant};

use edge_tests::agent::fixture::{route_ids, Node, Serve};
use edge_tests::agent::{AgentProcess, AgentToml};
use edge_tests::backend::{Backend, Mode};
use edge_tests::ca::TestCa;
use edge_tests::client::who_answers;
use edge_tests::edge::{metric_value, Edge, KillOnDrop, Toml};
use edge_tests::ports::free_port;
use edge_tests::reference_feed::{serve_grpc, Feed};
use serde_json::json;

const ENV: &str = "acme/shop/prod";
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restored_from_an_old_backup_cannot_roll_the_edge_back() {
    let mut node = Node::new("edge-fence-1", Serve::Grpc, None).await;
    node.start_agent();
    node.env(ENV);
    node.feed.append(
        "instance",
        "i-1",
        "instance.up",
        json!({"env": ENV, "process_type": "web", "addr": "::1"}),
    );
    let first = node.feed.append(
        "route",
        "r-1",
        "route.created",
        node.route("r-1", ENV, "one.example.com", 9),
    );
    node.wait_applied(first, WAIT).await;
    // The backup: the agent's state as of r-1.
    let backup = std::fs::read(node.state_file()).expect("state.json");
    let second = node.feed.append(
        "route",
        "r-2",
        "route.created",
        node.route("r-2", ENV, "two.example.com", 9),
    );
    node.wait_applied(second, WAIT).await;
    assert_eq!(node.route_ids().await, ["r-1", "r-2"]);

    // A second agent for the same edge, restored from the backup, with
    // its feed out of reach: all it can push is its old table.
    let restored = tempfile::tempdir().unwrap();
    std::fs::write(restored.path().join("state.json"), &backup).unwrap();
    let mut toml = AgentToml::new(
        "edge-fence-1",
        restored.path(),
        &node.agent_toml.control_socket,
    );
    toml.grpc = Some(format!("127.0.0.1:{}", free_port()).parse().unwrap());
    let old_agent = AgentProcess::start(&toml);

    let deadline = Instant::now() + WAIT;
    loop {
        // The edge never goes back to the backup's table.
        let (status, body) = node.edge().get("/routes").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            route_ids(&body),
            ["r-1", "r-2"],
            "the edge was rolled back by the restored agent\nits log:\n{}",
            old_agent.log()
        );
        let refused = old_agent
            .metric("edge_agent_pushes_total", &[("outcome", "refused")])
            .await;
        if refused >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restored agent's push was never refused\nits log:\n{}\nedge log:\n{}",
            old_agent.log(),
            node.edge().log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        node.edge().log().contains("stale push"),
        "{}",
        node.edge().log()
    );
    let edge_refused = metric_value(
        &node.edge().metrics().await,
        "edge_control_pushes_total",
        &[("outcome", "refused")],
    );
    assert!(edge_refused >= 1.0, "edge counted {edge_refused} refusals");
    // The live agent still moves the table forward.
    let third = node.feed.append(
        "route",
        "r-3",
        "route.created",
        node.route("r-3", ENV, "three.example.com", 9),
    );
    drop(old_agent);
    node.wait_applied(third, WAIT).await;
    assert_eq!(node.route_ids().await, ["r-1", "r-2", "r-3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_created_right_after_sigusr2_is_served_by_the_new_process() {
    let ca = TestCa::new();
    let backend = Backend::start(
        "[::1]:0".parse().unwrap(),
        "web",
        Mode::Tls(ca.server_config(&["*.example.com"])),
        false,
    )
    .await;
    let feed = Feed::new();
    let grpc = serve_grpc(feed.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let socket = dir.path().join("control.sock");
    let edge_toml = Toml::new()
        .upgrade(&dir.path().join("upgrade.sock"))
        .control(&socket, &dir.path().join("edge-state"))
        .policy("ipv6_extra_ports", &format!("[{port}]"));
    let mut edge = Edge::start_unsynced(&edge_toml).await;
    let mut agent_toml = AgentToml::new("edge-upgrade-1", &dir.path().join("agent"), &socket);
    agent_toml.grpc = Some(grpc.addr);
    let _agent = AgentProcess::start(&agent_toml);

    let route = |id: &str, host: &str| {
        json!({"id": id, "env": ENV, "hostname": host, "listen_port": port,
               "protocol": "tls_passthrough", "backend_port": backend.addr.port()})
    };
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
    let first = feed.append(
        "route",
        "r-1",
        "route.created",
        route("r-1", "one.example.com"),
    );
    assert!(feed.wait_applied(&["edge-upgrade-1"], first, WAIT).await);
    let addr = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    assert_eq!(
        who_answers(addr, "one.example.com", &ca).await.unwrap(),
        "web"
    );

    edge.signal("USR2");
    let created = Instant::now();
    feed.append(
        "route",
        "r-2",
        "route.created",
        route("r-2", "two.example.com"),
    );
    let _successor = KillOnDrop(edge.successor_pid().await);
    // The old process has no tunnels: it drains at once and exits, so
    // whoever answers from here on is the new process.
    assert!(
        edge.wait_exit(WAIT).await.is_some(),
        "the old process did not exit after the handoff:\n{}",
        edge.log()
    );
    let served = loop {
        if let Ok(who) = who_answers(addr, "two.example.com", &ca).await {
            break who;
        }
        assert!(
            created.elapsed() < WAIT,
            "two.example.com never served after the upgrade:\n{}",
            edge.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let took = created.elapsed();
    assert_eq!(served, "web");
    println!("route.created right after SIGUSR2: served by the new process after {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "served only after {took:?}:\n{}",
        edge.log()
    );
}
