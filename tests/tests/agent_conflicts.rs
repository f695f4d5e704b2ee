//! Conflicts are settled by age through the agent: of two envs' routes
//! claiming one hostname, the one created first serves, whatever the ids'
//! sort order; the newer is rejected and reported as such to the feed. A
//! hostname passes to the other env only once the older route is deleted,
//! and that move is audited and counted.

use std::time::{Duration, Instant};

use edge_tests::agent::fixture::{Node, Serve};
use edge_tests::backend::{Backend, Mode};
use edge_tests::ca::TestCa;
use edge_tests::client::who_answers;
use edge_tests::reference_feed::RejectedReport;
use serde_json::json;

const NODE: &str = "edge-conflicts-1";
const ENV_A: &str = "acme/shop/prod";
const ENV_B: &str = "acme/blog/prod";
const HOST: &str = "shop.example.com";

struct Site {
    node: Node,
    ca: TestCa,
    _a: Backend,
    _b: Backend,
}

/// Env A's backend answers "a", env B's "b"; r-z (env A) claims HOST
/// first, r-a (env B, an id that sorts first) claims it after.
async fn contested() -> (Site, u64) {
    let ca = TestCa::new();
    let tls = || Mode::Tls(ca.server_config(&["*.example.com"]));
    let a = Backend::start("[::1]:0".parse().unwrap(), "a", tls(), false).await;
    let b = Backend::start("[::1]:0".parse().unwrap(), "b", tls(), false).await;
    let mut node = Node::new(NODE, Serve::Grpc, None).await;
    node.start_agent();
    node.env(ENV_A);
    node.env(ENV_B);
    // One instance per env on ::1; the route's backend port picks the backend.
    for (id, env) in [("i-a", ENV_A), ("i-b", ENV_B)] {
        node.feed.append(
            "instance",
            id,
            "instance.up",
            json!({"env": env, "process_type": "web", "addr": "::1"}),
        );
    }
    let feed = &node.feed;
    feed.append(
        "route",
        "r-z",
        "route.created",
        node.route("r-z", ENV_A, HOST, a.addr.port()),
    );
    let last = feed.append(
        "route",
        "r-a",
        "route.created",
        node.route("r-a", ENV_B, HOST, b.addr.port()),
    );
    (
        Site {
            node,
            ca,
            _a: a,
            _b: b,
        },
        last,
    )
}

async fn answered_by(site: &Site, tag: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = who_answers(site.node.addr(), HOST, &site.ca).await;
        if got.as_deref().ok() == Some(tag) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{HOST} answered by {got:?}, not {tag}\nagent log:\n{}",
            site.node.agent().log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_older_route_keeps_a_contested_hostname_and_the_newer_is_reported_rejected() {
    let (site, last) = contested().await;
    site.node.wait_applied(last, Duration::from_secs(15)).await;
    answered_by(&site, "a").await;
    assert_eq!(
        site.node.feed.rejected(NODE),
        vec![RejectedReport {
            aggregate_type: "route".into(),
            aggregate_id: "r-a".into(),
            reason: "hostname_in_two_envs".into(),
        }],
        "the newer route is reported rejected, not served"
    );
    // An update of the older route does not make it newer.
    let update = site.node.feed.append(
        "route",
        "r-z",
        "route.updated",
        site.node.route("r-z", ENV_A, HOST, site._a.addr.port()),
    );
    site.node
        .wait_applied(update, Duration::from_secs(15))
        .await;
    answered_by(&site, "a").await;
    assert_eq!(site.node.feed.rejected(NODE)[0].aggregate_id, "r-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostname_moves_to_the_other_env_once_the_older_route_is_deleted() {
    let (site, last) = contested().await;
    site.node.wait_applied(last, Duration::from_secs(15)).await;
    answered_by(&site, "a").await;
    let deleted = site
        .node
        .feed
        .append("route", "r-z", "route.deleted", json!({}));
    site.node
        .wait_applied(deleted, Duration::from_secs(15))
        .await;
    answered_by(&site, "b").await;
    assert!(site.node.feed.rejected(NODE).is_empty());
    let agent = site.node.agent();
    assert_eq!(
        agent.metric("edge_agent_hostname_moves_total", &[]).await,
        1.0
    );
    let log = agent.log();
    let audit = log
        .lines()
        .find(|l| l.contains("hostname moved to another env"))
        .unwrap_or_else(|| panic!("no audit line\n{log}"));
    for field in [HOST, ENV_A, ENV_B, &format!("event_id={deleted}")] {
        assert!(audit.contains(field), "{field} missing from {audit}");
    }
}
