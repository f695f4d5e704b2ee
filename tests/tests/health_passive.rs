//! Passive ejection: consecutive failed connects to an instance eject it,
//! so later clients stop paying for it; once its backoff is over one client
//! tests it, and a success brings it back. Instances get overlay addresses
//! on `lo` (fd00:e1::/64).

use std::net::SocketAddr;
use std::time::Duration;

use edge_tests::backend::{Backend, Mode};
use edge_tests::ca::TestCa;
use edge_tests::client::who_answers;
use edge_tests::edge::{Edge, Route, Toml};
use edge_tests::ports::{free_port, LoAddr};

const ENV: &str = "acme/shop/prod";
const HOST: &str = "shop.example.com";

fn toml(port: u16, backend_port: u16, dead: &LoAddr, live: &LoAddr, health: &str) -> Toml {
    Toml::new()
        .policy("ipv6_extra_ports", &format!("[{port}]"))
        .env(ENV, &["::1"], None, &[])
        .instance("i-dead", ENV, "web", &dead.addr.to_string())
        .instance("i-live", ENV, "web", &live.addr.to_string())
        .route(Route::tls("r-shop", ENV, HOST, port, backend_port))
        .append(health)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_eject_the_instance_so_later_clients_skip_it() {
    let dead = LoAddr::add("fd00:e1::421");
    let live = LoAddr::add("fd00:e1::422");
    let ca = TestCa::new();
    let (backend_port, port) = (free_port(), free_port());
    let backend = Backend::start(
        SocketAddr::from((live.addr, backend_port)),
        "live",
        Mode::Tls(ca.server_config(&[HOST])),
        false,
    )
    .await;
    // Ejected for a minute: longer than the test.
    let health = "[health]\neject_after = 2\neject_ms = 60000\nmax_eject_ms = 60000\n";
    let edge = Edge::start(&toml(port, backend_port, &dead, &live, health)).await;
    let addr = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    for _ in 0..60 {
        assert_eq!(who_answers(addr, HOST, &ca).await.unwrap(), "live");
    }
    assert_eq!(backend.accepted(), 60);
    // Without ejection about half of 60 clients would try i-dead first.
    assert_eq!(
        edge.metric("edge_backend_connect_failures_total", &[])
            .await,
        2.0,
        "two failures eject it; no later client dials it"
    );
    assert_eq!(
        edge.metric("edge_health_ejections_total", &[("instance", "i-dead")])
            .await,
        1.0
    );
    let (state, why) = edge.backend_state("r-shop", "i-dead").await.unwrap();
    assert_eq!(state, "down");
    assert!(why.starts_with("ejected"), "{why}");
    assert!(edge.log().contains("backend ejected"), "one log line");
    assert_eq!(
        edge.metric("edge_connections_rejected_total", &[]).await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_backoff_one_client_tests_it_and_a_success_restores_it() {
    let dead = LoAddr::add("fd00:e1::423");
    let live = LoAddr::add("fd00:e1::424");
    let ca = TestCa::new();
    let (backend_port, port) = (free_port(), free_port());
    let tls = || Mode::Tls(ca.server_config(&[HOST]));
    let _live = Backend::start(
        SocketAddr::from((live.addr, backend_port)),
        "live",
        tls(),
        false,
    )
    .await;
    let health = "[health]\neject_after = 1\neject_ms = 300\nmax_eject_ms = 10000\n";
    let edge = Edge::start(&toml(port, backend_port, &dead, &live, health)).await;
    let addr = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let patience = Duration::from_secs(20);

    // Clients until i-dead is tried once and ejected.
    let deadline = tokio::time::Instant::now() + patience;
    while edge
        .metric("edge_health_ejections_total", &[("instance", "i-dead")])
        .await
        < 1.0
    {
        assert!(tokio::time::Instant::now() < deadline, "never ejected");
        assert_eq!(who_answers(addr, HOST, &ca).await.unwrap(), "live");
    }
    // Still dead when its trial comes: the trial fails and it is ejected
    // again, for longer (the client is still served by i-live).
    edge.wait_backend_state("r-shop", "i-dead", "down", patience)
        .await;
    let deadline = tokio::time::Instant::now() + patience;
    while edge
        .metric("edge_health_ejections_total", &[("instance", "i-dead")])
        .await
        < 2.0
    {
        assert!(tokio::time::Instant::now() < deadline, "no trial");
        assert_eq!(who_answers(addr, HOST, &ca).await.unwrap(), "live");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // It comes back: the next trial succeeds and it serves again.
    let revived = Backend::start(
        SocketAddr::from((dead.addr, backend_port)),
        "revived",
        tls(),
        false,
    )
    .await;
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let who = who_answers(addr, HOST, &ca).await.unwrap();
        if who == "revived" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never tested again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(revived.accepted(), 1, "one client tested it");
    assert_eq!(
        edge.backend_state("r-shop", "i-dead").await.unwrap().0,
        "serving"
    );
    assert_eq!(
        edge.metric("edge_health_state_changes_total", &[("instance", "i-dead")])
            .await,
        2.0,
        "ejected once, restored once (a failed trial is no change)"
    );
    assert!(edge.log().contains("backend restored"));
    assert_eq!(
        edge.metric("edge_connections_rejected_total", &[]).await,
        0.0
    );
}
