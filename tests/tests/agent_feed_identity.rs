//! The feed's identity and order: a log restored from a backup (head below
//! the cursor, same feed_id) and a swapped log (another feed_id) each make
//! the agent's cursor foreign: alarm, resync from after=0, the log's
//! current table swapped in. Events out of event_id order, or beyond the
//! batch's head, are refused with a metric and never move the cursor.

use std::time::Duration;

use edge_tests::agent::fixture::{Node, Serve};
use edge_tests::edge::Edge;
use route_model::Event;
use serde_json::json;

const NODE: &str = "edge-identity-1";
const ENV: &str = "acme/shop/prod";
const WAIT: Duration = Duration::from_secs(20);

/// A node following log "log-1" with routes r-1 and r-2 applied; returns
/// the head (r-2's event).
async fn synced(serve: Serve) -> (Node, u64) {
    let mut node = Node::new(NODE, serve, None).await;
    node.feed.set_feed_id(Some("log-1"));
    node.agent_toml.poll_interval_ms = 50;
    node.start_agent();
    node.env(ENV);
    node.feed.append(
        "instance",
        "i-1",
        "instance.up",
        json!({"env": ENV, "process_type": "web", "addr": "::1"}),
    );
    node.feed.append(
        "route",
        "r-1",
        "route.created",
        node.route("r-1", ENV, "one.example.com", 9001),
    );
    let head = node.feed.append(
        "route",
        "r-2",
        "route.created",
        node.route("r-2", ENV, "two.example.com", 9001),
    );
    node.wait_applied(head, WAIT).await;
    assert_eq!(node.route_ids().await, ["r-1", "r-2"]);
    (node, head)
}

async fn wait_routes(node: &Node, want: &[&str]) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got = node.route_ids().await;
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "routes {got:?}, want {want:?}\nagent log:\n{}",
            node.agent().log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_restored_from_a_backup_raises_the_alarm_and_resyncs() {
    let (mut node, head) = synced(Serve::Grpc).await;
    // The edge goes away, so the rebuild cannot be pushed and the alarm
    // stays up long enough to be read.
    let mut edge = node.edge.take().unwrap();
    edge.signal("TERM");
    assert!(edge.wait_exit(WAIT).await.is_some());
    drop(edge);
    node.feed.truncate(head - 1); // the backup predates r-2
    node.wait_metric("edge_agent_feed_foreign", &[], 1.0, WAIT)
        .await;
    node.wait_counter(
        "edge_agent_resyncs_total",
        &[("reason", "head_below_cursor")],
        1.0,
        WAIT,
    )
    .await;
    node.wait_metric("edge_agent_up", &[("endpoint", "edge")], 0.0, WAIT)
        .await;
    let log = node.agent().log();
    assert!(log.contains("foreign cursor"), "{log}");
    assert!(log.contains("edge control socket unreachable"), "{log}");
    // The head is kept, not zeroed, and the lag is honest (negative).
    assert_eq!(
        node.agent().metric("edge_agent_head", &[]).await,
        (head - 1) as f64
    );
    assert_eq!(
        node.agent().metric("edge_agent_lag_events", &[]).await,
        -1.0
    );

    node.edge = Some(Edge::start(&node.edge_toml).await);
    node.wait_metric("edge_agent_feed_foreign", &[], 0.0, WAIT)
        .await;
    wait_routes(&node, &["r-1"]).await;
    assert_eq!(node.feed.applied(NODE), head - 1);
    assert_eq!(
        node.agent().metric("edge_agent_catching_up", &[]).await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_log_with_another_feed_id_resyncs() {
    let (node, _) = synced(Serve::Poll).await;
    node.feed.replace(Some("log-2"));
    node.env(ENV);
    node.feed.append(
        "instance",
        "i-9",
        "instance.up",
        json!({"env": ENV, "process_type": "web", "addr": "::1"}),
    );
    let last = node.feed.append(
        "route",
        "r-9",
        "route.created",
        node.route("r-9", ENV, "nine.example.com", 9001),
    );
    node.wait_counter(
        "edge_agent_resyncs_total",
        &[("reason", "feed_changed")],
        1.0,
        WAIT,
    )
    .await;
    wait_routes(&node, &["r-9"]).await;
    node.wait_metric("edge_agent_feed_foreign", &[], 0.0, WAIT)
        .await;
    assert_eq!(node.feed.applied(NODE), last);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.state_file()).unwrap()).unwrap();
    assert_eq!(saved["feed_id"], "log-2");
}

fn raw(node: &Node, event_id: u64, route: &str, host: &str) -> Event {
    Event {
        event_id,
        occurred_at: String::new(),
        aggregate_type: "route".into(),
        aggregate_id: route.into(),
        aggregate_seq: 1,
        event_type: "route.created".into(),
        payload: node.route(route, ENV, host, 9001),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_out_of_order_are_refused_and_never_move_the_cursor() {
    let (node, head) = synced(Serve::Grpc).await;
    node.feed.append_raw(vec![
        raw(&node, head + 2, "r-3", "three.example.com"),
        raw(&node, head + 1, "r-4", "four.example.com"),
    ]);
    node.wait_counter(
        "edge_agent_feed_errors_total",
        &[("kind", "out_of_order")],
        1.0,
        WAIT,
    )
    .await;
    assert_eq!(
        node.agent().metric("edge_agent_cursor", &[]).await,
        head as f64
    );
    assert_eq!(node.route_ids().await, ["r-1", "r-2"]);
    assert!(node
        .agent()
        .log()
        .contains("not in increasing event_id order"));
    // The feed repaired, the agent follows on from where it was.
    node.feed.truncate(head);
    let next = node.feed.append(
        "route",
        "r-5",
        "route.created",
        node.route("r-5", ENV, "five.example.com", 9001),
    );
    node.wait_applied(next, WAIT).await;
    assert_eq!(node.route_ids().await, ["r-1", "r-2", "r-5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_beyond_the_head_is_refused_and_does_not_poison_the_cursor() {
    let (node, head) = synced(Serve::Poll).await;
    node.feed.set_reported_head(Some(head + 1));
    node.feed
        .append_raw(vec![raw(&node, 1_000_000, "r-huge", "huge.example.com")]);
    node.wait_counter(
        "edge_agent_feed_errors_total",
        &[("kind", "beyond_head")],
        1.0,
        WAIT,
    )
    .await;
    assert_eq!(
        node.agent().metric("edge_agent_cursor", &[]).await,
        head as f64
    );
    assert_eq!(node.route_ids().await, ["r-1", "r-2"]);
    node.feed.truncate(head);
    node.feed.set_reported_head(None);
    let next = node.feed.append(
        "route",
        "r-5",
        "route.created",
        node.route("r-5", ENV, "five.example.com", 9001),
    );
    node.wait_applied(next, WAIT).await;
    assert_eq!(node.route_ids().await, ["r-1", "r-2", "r-5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_feed_down_the_head_is_kept_and_the_log_says_which_side_failed() {
    let (mut node, head) = synced(Serve::Grpc).await;
    // The feed server stops: no new connections, and the open stream is
    // cut (a truncation to the head changes nothing else).
    node.grpc = None;
    node.feed.truncate(head);
    node.wait_metric("edge_agent_up", &[("endpoint", "feed")], 0.0, WAIT)
        .await;
    assert_eq!(
        node.agent().metric("edge_agent_head", &[]).await,
        head as f64
    );
    assert_eq!(
        node.agent()
            .metric("edge_agent_up", &[("endpoint", "edge")])
            .await,
        1.0
    );
    assert!(node.agent().log().contains("feed unreachable: http://"));
    // A restart with the feed still down shows the head it saved.
    node.agent.as_mut().unwrap().kill();
    node.agent_toml.metrics =
        std::net::SocketAddr::from(([127, 0, 0, 1], edge_tests::ports::free_port()));
    node.start_agent();
    // (A metric reads 0 until the agent answers: wait for the value.)
    node.wait_metric("edge_agent_head", &[], head as f64, WAIT)
        .await;
    node.wait_metric("edge_agent_cursor", &[], head as f64, WAIT)
        .await;
    assert_eq!(node.agent().metric("edge_agent_lag_events", &[]).await, 0.0);
    let deadline = std::time::Instant::now() + WAIT;
    while !node.agent().log().contains("feed unreachable: http://") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            node.agent().log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        node.agent()
            .metric("edge_agent_up", &[("endpoint", "feed")])
            .await,
        0.0
    );
}
