//! Read-your-writes through `edge-feed` over PostgreSQL: a route appended
//! with `edge-feed append`, `GET /applied/wait` returns, and at that moment
//! a verified TLS client with that SNI is served by every edge; a node
//! that stops applying is named as a laggard.
//!
//! Two edges on one machine serve the same route on different addresses:
//! one may serve the route's port on the env's IPv6 only, the other on the
//! env's dedicated IPv4 only (each edge's `[policy]`).

use std::net::SocketAddr;
use std::time::Duration;

use edge_tests::backend::{Backend, Mode};
use edge_tests::ca::TestCa;
use edge_tests::client::who_answers;
use edge_tests::edge::get;
use edge_tests::edge_feed::{feed_cli, migrate, FeedProcess, Node, Via};
use edge_tests::ports::free_port;
use edge_tests::postgres::Postgres;
use serde_json::json;

const ENV: &str = "acme/shop/prod";

fn append(
    url: &str,
    agg_type: &str,
    agg_id: &str,
    event_type: &str,
    payload: serde_json::Value,
) -> u64 {
    let out = feed_cli(&[
        "append",
        "--store",
        url,
        agg_type,
        agg_id,
        event_type,
        &payload.to_string(),
    ]);
    assert!(
        out.status.success(),
        "append: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("append prints the event_id")
}

async fn wait(feed: &FeedProcess, event_id: u64, timeout_ms: u64) -> (u16, serde_json::Value) {
    let (status, body) = get(
        feed.http,
        &format!("/applied/wait?event_id={event_id}&timeout_ms={timeout_ms}"),
    )
    .await
    .unwrap();
    (status, serde_json::from_str(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_the_wait_returns_every_edge_serves_the_new_route() {
    let pg = Postgres::start().await;
    let url = pg.url();
    migrate(&url);
    let ca = TestCa::new();
    let backend = Backend::start(
        "[::1]:0".parse().unwrap(),
        "web",
        Mode::Tls(ca.server_config(&["*.example.com"])),
        false,
    )
    .await;
    let feed = FeedProcess::start(&url, &[]).await;
    let port = free_port();
    let v6 = Node::start_with(
        "ryw-v6",
        &feed,
        Via::Grpc,
        port,
        &[
            ("ipv6_extra_ports", format!("[{port}]")),
            ("ipv4_allowed_ports", "[]".into()),
        ],
    )
    .await;
    let v4 = Node::start_with(
        "ryw-v4",
        &feed,
        Via::Poll,
        port,
        &[("ipv4_allowed_ports", format!("[{port}]"))],
    )
    .await;
    append(
        &url,
        "env",
        ENV,
        "env.configured",
        json!({"id": ENV, "ipv6": ["::1"], "ipv4": "127.0.0.1", "ports": [port]}),
    );
    let up = append(
        &url,
        "instance",
        "i-1",
        "instance.up",
        json!({"env": ENV, "process_type": "web", "addr": "::1"}),
    );
    v6.wait_cursor(up, Duration::from_secs(30)).await;
    v4.wait_cursor(up, Duration::from_secs(30)).await;

    let created = append(
        &url,
        "route",
        "r-ryw",
        "route.created",
        json!({"id": "r-ryw", "env": ENV, "hostname": "ryw.example.com", "listen_port": port,
               "protocol": "tls_passthrough", "backend_process_type": "web",
               "backend_port": backend.addr.port()}),
    );
    let (status, verdict) = wait(&feed, created, 20_000).await;
    assert_eq!(status, 200, "{verdict}");
    let mut nodes: Vec<&str> = verdict["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["ryw-v4", "ryw-v6"]);
    // No retry: both edges serve the route the moment the wait returns.
    for addr in [
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        SocketAddr::from(([127, 0, 0, 1], port)),
    ] {
        assert_eq!(
            who_answers(addr, "ryw.example.com", &ca).await.unwrap(),
            "web",
            "served on {addr}"
        );
    }
    // The lag view agrees.
    let lag = pg
        .client()
        .await
        .query(
            "SELECT node_id, lag_events FROM edge_lag ORDER BY node_id",
            &[],
        )
        .await
        .unwrap();
    let lag: Vec<(String, i64)> = lag.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(lag, [("ryw-v4".to_owned(), 0), ("ryw-v6".to_owned(), 0)]);

    // A node that stops applying is named.
    let mut v4 = v4;
    v4.agent.kill();
    let updated = append(
        &url,
        "route",
        "r-ryw",
        "route.updated",
        json!({"id": "r-ryw", "env": ENV, "hostname": "ryw2.example.com", "listen_port": port,
               "protocol": "tls_passthrough", "backend_process_type": "web",
               "backend_port": backend.addr.port()}),
    );
    let (status, verdict) = wait(&feed, updated, 3_000).await;
    assert_eq!(status, 504, "{verdict}");
    assert_eq!(
        verdict["laggards"],
        json!([{"node_id": "ryw-v4", "event_id": created}])
    );
}
