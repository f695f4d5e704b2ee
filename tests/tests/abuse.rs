//! Clients that do not play along: stalled ClientHellos are closed at the
//! timeout without starving anyone else, and one source cannot hold more
//! than `max_connections_per_source` connections.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use edge_tests::backend::Backend;
use edge_tests::ca::TestCa;
use edge_tests::captures;
use edge_tests::client::{closed_within, who_answers, Closed};
use edge_tests::edge::{Edge, Toml};
use edge_tests::site::Shop;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn site(toml: Toml) -> (TestCa, u16, Edge, Backend) {
    let shop = Shop::new().await;
    let edge = Edge::start(&shop.toml(toml, true)).await;
    let Shop { ca, backend, port } = shop;
    (ca, port, edge, backend)
}

/// Opens a connection and sends the first `n` bytes of a real hello.
async fn stalled(addr: SocketAddr, n: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&captures::CHROMIUM_PQ[..n])
        .await
        .expect("write");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_stalled_hellos_are_closed_at_the_timeout_while_a_good_client_is_served() {
    let (ca, port, edge, _backend) = site(Toml::new().limit("client_hello_timeout_ms", 1500)).await;
    let addr = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let started = Instant::now();
    let mut stalls = Vec::new();
    for i in 0..300 {
        stalls.push(stalled(addr, 1 + i % 600).await);
    }
    // While 300 hellos hang, a real client is served at once.
    assert_eq!(
        who_answers(addr, "shop.example.com", &ca).await.unwrap(),
        "web"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the good client was served before the timeout"
    );
    for stream in &mut stalls {
        assert_eq!(
            closed_within(stream, Duration::from_secs(10)).await,
            Closed::WithoutBytes
        );
    }
    let timed_out = edge
        .metric(
            "edge_connections_rejected_total",
            &[("reason", "hello_timeout")],
        )
        .await;
    assert_eq!(timed_out, 300.0);
    assert_eq!(edge.metric("edge_connections_active", &[]).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_is_held_to_its_connection_budget() {
    let (ca, port, edge, _backend) = site(Toml::new().limit("max_connections_per_source", 5)).await;
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(stalled(v6, 3).await);
    }
    // Let the edge account for them before the sixth arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut sixth = stalled(v6, 3).await;
    assert_eq!(
        closed_within(&mut sixth, Duration::from_secs(2)).await,
        Closed::WithoutBytes
    );
    assert_eq!(
        edge.metric(
            "edge_connections_rejected_total",
            &[("reason", "source_limit")]
        )
        .await,
        1.0
    );
    // Another source (127.0.0.1) has its own budget.
    let v4 = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(
        who_answers(v4, "shop.example.com", &ca).await.unwrap(),
        "web"
    );
    // Closing one frees a slot for the first source.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        who_answers(v6, "shop.example.com", &ca).await.unwrap(),
        "web"
    );
}
