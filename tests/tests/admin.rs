//! The operator's view: the admin endpoints, and SIGTERM draining open
//! tunnels before the process exits.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use edge_tests::backend::Backend;
use edge_tests::ca::TestCa;
use edge_tests::client::{read_line, tls_connect};
use edge_tests::edge::{Edge, Route, Toml};
use edge_tests::site::{Shop, ENV};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn site(toml: Toml) -> (TestCa, u16, Edge, Backend) {
    let shop = Shop::new().await;
    let wild = Route::tls(
        "r-wild",
        ENV,
        "*.example.com",
        shop.port,
        shop.backend.addr.port(),
    );
    let edge = Edge::start(&shop.toml(toml, false).route(wild)).await;
    let Shop { ca, backend, port } = shop;
    (ca, port, edge, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer_as_the_contract_says() {
    let (_ca, port, edge, _backend) = site(Toml::new()).await;
    assert_eq!(edge.get("/healthz").await.0, 200);
    let (status, ready) = edge.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");

    let (status, body) = edge.get("/routes").await;
    assert_eq!(status, 200);
    let routes: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(routes["version"].as_u64().unwrap() >= 1);
    let listeners = routes["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 1);
    assert_eq!(listeners[0]["addr"], format!("[::1]:{port}"));
    let ids: Vec<_> = listeners[0]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["r-shop", "r-wild"]);
    assert_eq!(listeners[0]["routes"][1]["hostname"], "*.example.com");
    assert_eq!(listeners[0]["routes"][1]["protocol"], "tls_passthrough");

    let metrics = edge.metrics().await;
    for family in [
        "edge_connections_accepted_total",
        "edge_connections_active",
        "edge_bytes_total",
        "edge_client_hello_peek_seconds_bucket",
        "edge_backend_connect_seconds_bucket",
        "edge_backend_connect_failures_total",
        "edge_route_table_version",
        "edge_routes",
    ] {
        assert!(metrics.contains(family), "{family} missing from /metrics");
    }
    // Series that count rare events are there from the start, at 0.
    for series in [
        "edge_accept_errors_total{kind=\"fd_exhausted\"} 0",
        "edge_accept_errors_total{kind=\"other\"} 0",
        "edge_tunnels_closed_total{cause=\"route_deleted\"} 0",
        "edge_reloads_total{result=\"error\"} 0",
        "edge_connections_rejected_total{reason=\"backend_connect_failed\"} 0",
        "edge_control_pushes_total{outcome=\"refused\"} 0",
        "edge_state_unreadable_total 0",
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
    }
    assert_eq!(edge.metric("edge_routes", &[]).await, 2.0);
    assert_eq!(edge.get("/nope").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_at_once_and_drains_open_tunnels() {
    let (ca, port, mut edge, _backend) = site(Toml::new().limit("drain_timeout_ms", 20_000)).await;
    let addr = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let mut tunnel = tls_connect(addr, "shop.example.com", &ca).await.unwrap();
    assert_eq!(read_line(&mut tunnel).await.unwrap(), "web");

    edge.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The open tunnel keeps working while the edge drains.
    tunnel.write_all(b"drain").await.unwrap();
    let mut echo = [0u8; 5];
    tunnel.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"drain");
    assert!(
        edge.wait_exit(Duration::from_millis(300)).await.is_none(),
        "exited with a tunnel open"
    );

    tunnel.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tunnel.read_to_end(&mut rest).await.unwrap();
    let status = edge
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("exits once drained");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_ends_at_its_timeout() {
    let (ca, port, mut edge, _backend) = site(Toml::new().limit("drain_timeout_ms", 500)).await;
    let addr = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let mut tunnel = tls_connect(addr, "shop.example.com", &ca).await.unwrap();
    assert_eq!(read_line(&mut tunnel).await.unwrap(), "web");
    edge.signal("TERM");
    let status = edge
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("exits at the drain timeout");
    assert!(status.success(), "{status:?}");
    let mut rest = Vec::new();
    let _ = tunnel.read_to_end(&mut rest).await;
}
