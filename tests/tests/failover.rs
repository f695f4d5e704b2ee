//! Backend choice: a dead instance (nothing listening) makes the edge try
//! another, replaying the peeked ClientHello, and the client never notices;
//! an unhealthy instance is never dialled. Instances get their own overlay
//! addresses on `lo` (fd00:e1::/64), removed when the test ends.

use std::net::SocketAddr;

use edge_tests::backend::{Backend, Mode};
use edge_tests::ca::TestCa;
use edge_tests::client::who_answers;
use edge_tests::edge::{Edge, Route, Toml};
use edge_tests::ports::{free_port, LoAddr};

const ENV: &str = "acme/shop/prod";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_makes_the_edge_use_another() {
    let dead = LoAddr::add("fd00:e1::a");
    let live = LoAddr::add("fd00:e1::b");
    let sick = LoAddr::add("fd00:e1::c");
    let ca = TestCa::new();
    let backend_port = free_port();
    let backend = Backend::start(
        SocketAddr::from((live.addr, backend_port)),
        "live",
        Mode::Tls(ca.server_config(&["shop.example.com"])),
        false,
    )
    .await;
    // The unhealthy instance listens too: if it were ever chosen, it would
    // answer and the test would see "sick".
    let sick_backend = Backend::start(
        SocketAddr::from((sick.addr, backend_port)),
        "sick",
        Mode::Tls(ca.server_config(&["shop.example.com"])),
        false,
    )
    .await;
    let port = free_port();
    let toml = Toml::new()
        .policy("ipv6_extra_ports", &format!("[{port}]"))
        .env(ENV, &["::1"], None, &[])
        .instance("i-dead", ENV, "web", &dead.addr.to_string())
        .instance("i-live", ENV, "web", &live.addr.to_string())
        .unhealthy_instance("i-sick", ENV, "web", &sick.addr.to_string())
        .route(Route::tls(
            "r-shop",
            ENV,
            "shop.example.com",
            port,
            backend_port,
        ));
    let edge = Edge::start(&toml).await;

    let addr = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    for _ in 0..20 {
        assert_eq!(
            who_answers(addr, "shop.example.com", &ca).await.unwrap(),
            "live"
        );
    }
    assert_eq!(backend.accepted(), 20);
    assert_eq!(sick_backend.accepted(), 0);
    // Two random choices between two healthy instances: the dead one is
    // picked (and fails) about half the time.
    let failures = edge
        .metric("edge_backend_connect_failures_total", &[])
        .await;
    assert!(
        failures >= 1.0,
        "the dead instance was never tried: {failures}"
    );
    assert_eq!(
        edge.metric("edge_connections_rejected_total", &[]).await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_instance_dead_the_client_is_closed_and_counted() {
    let dead = LoAddr::add("fd00:e1::d");
    let port = free_port();
    let toml = Toml::new()
        .policy("ipv6_extra_ports", &format!("[{port}]"))
        .env(ENV, &["::1"], None, &[])
        .instance("i-dead", ENV, "web", &dead.addr.to_string())
        .route(Route::tls(
            "r-shop",
            ENV,
            "shop.example.com",
            port,
            free_port(),
        ));
    let edge = Edge::start(&toml).await;
    let ca = TestCa::new();
    let addr = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    assert!(who_answers(addr, "shop.example.com", &ca).await.is_err());
    assert_eq!(
        edge.metric(
            "edge_connections_rejected_total",
            &[("reason", "backend_connect_failed")]
        )
        .await,
        1.0
    );
}
