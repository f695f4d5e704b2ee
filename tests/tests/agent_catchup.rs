//! An agent without a usable saved state (a new node, or a corrupt
//! state.json) rebuilds from after=0 up to the head it saw first and only
//! then pushes: the edge never serves a past table of the log.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use edge_tests::agent::fixture::{route_ids, Node, Serve};
use edge_tests::edge::get;
use serde_json::json;

const NODE: &str = "edge-catchup-1";
const ENV_A: &str = "acme/shop/prod";
const ENV_B: &str = "acme/blog/prod";
/// Events in the log: enough for many pages and more than one coalesced
/// push's worth.
const EVENTS: u64 = 60_000;

/// A 60,000-event log whose early history differs from its head: every
/// thousand events a temporary route is created and later deleted, and a
/// hostname moves from env A to env B halfway. Returns the route ids of
/// the final table.
fn history(node: &Node) -> BTreeSet<String> {
    let feed = &node.feed;
    node.env(ENV_A);
    node.env(ENV_B);
    for (id, env, process_type) in [
        ("i-a", ENV_A, "web"),
        ("i-b", ENV_B, "web"),
        ("i-churn", ENV_A, "worker"),
    ] {
        feed.append(
            "instance",
            id,
            "instance.up",
            json!({"env": env, "process_type": process_type, "addr": "::1"}),
        );
    }
    feed.append(
        "route",
        "r-old",
        "route.created",
        node.route("r-old", ENV_A, "moved.example.com", 9001),
    );
    let mut healthy = false;
    let mut churn = |n: u64| {
        for _ in 0..n {
            feed.append(
                "instance",
                "i-churn",
                "instance.health",
                json!({"healthy": healthy}),
            );
            healthy = !healthy;
        }
    };
    for k in 0..60 {
        let tmp = format!("tmp-{k}");
        feed.append(
            "route",
            &tmp,
            "route.created",
            node.route(&tmp, ENV_A, &format!("tmp{k}.example.com"), 9001),
        );
        churn(600);
        feed.append("route", &tmp, "route.deleted", json!({}));
        if k == 30 {
            feed.append("route", "r-old", "route.deleted", json!({}));
            feed.append(
                "route",
                "r-moved",
                "route.created",
                node.route("r-moved", ENV_B, "moved.example.com", 9002),
            );
        }
        let left = EVENTS.saturating_sub(feed.head() + 2);
        churn(left.min(397));
    }
    feed.append(
        "route",
        "r-final",
        "route.created",
        node.route("r-final", ENV_A, "shop.example.com", 9001),
    );
    churn(EVENTS.saturating_sub(feed.head()));
    assert_eq!(feed.head(), EVENTS);
    ["r-final", "r-moved"]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// Reads the edge's `/routes` every 20 ms until the node reports the head
/// applied; returns every route id the edge ever served meanwhile.
async fn watch_until_applied(node: &Node, head: u64) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    while node.feed.applied(NODE) < head {
        if let Ok((200, body)) = get(node.edge().admin, "/routes").await {
            seen.extend(route_ids(&body));
        }
        assert!(
            Instant::now() < deadline,
            "the agent never caught up (reported {})\nagent log:\n{}",
            node.feed.applied(NODE),
            node.agent().log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("caught up {head} events in {:?}", started.elapsed());
    seen.extend(node.route_ids().await);
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_agent_on_a_long_log_never_exposes_a_past_table() {
    let mut node = Node::new(NODE, Serve::Grpc, None).await;
    let last = history(&node);
    node.start_agent();
    let seen = watch_until_applied(&node, EVENTS).await;
    assert_eq!(seen, last, "the edge served routes of a past table");
    assert_eq!(node.route_ids().await, last.into_iter().collect::<Vec<_>>());
    let agent = node.agent();
    assert_eq!(agent.metric("edge_agent_catching_up", &[]).await, 0.0);
    assert_eq!(
        agent.metric("edge_agent_catchup_events_left", &[]).await,
        0.0
    );
    assert_eq!(
        agent
            .metric("edge_agent_pushes_total", &[("outcome", "ack")])
            .await,
        1.0,
        "one push, of the caught-up table"
    );
    // History is not audited again: the move happened before this node.
    assert_eq!(
        agent.metric("edge_agent_hostname_moves_total", &[]).await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_is_kept_aside_and_the_agent_catches_up_the_same_way() {
    let mut node = Node::new(NODE, Serve::Poll, None).await;
    let last = history(&node);
    let garbage = br#"{"cursor": 59999, "routes": {"r-ghost"#;
    std::fs::create_dir_all(&node.agent_toml.state_dir).unwrap();
    std::fs::write(node.state_file(), garbage).unwrap();
    node.agent_toml.poll_interval_ms = 50;
    node.start_agent();
    let seen = watch_until_applied(&node, EVENTS).await;
    assert_eq!(seen, last, "the edge served routes of a past table");
    let aside: Vec<_> = std::fs::read_dir(&node.agent_toml.state_dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("state.json.unreadable-"))
        })
        .collect();
    assert_eq!(aside.len(), 1, "the unreadable file is kept aside");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), garbage);
    let agent = node.agent();
    assert_eq!(
        agent.metric("edge_agent_state_unreadable_total", &[]).await,
        1.0
    );
    assert!(
        agent.log().contains("saved state unreadable"),
        "{}",
        agent.log()
    );
    // The new state file is this build's, with its format.
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.state_file()).unwrap()).unwrap();
    assert_eq!(saved["format"], 1);
}
