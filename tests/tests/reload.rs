//! SIGHUP: the table is swapped atomically, listeners are diffed, open
//! tunnels of routes that still exist are untouched, and tunnels of
//! deleted routes end after `deleted_route_grace_ms`.

use std::net::SocketAddr;
use std::time::Duration;

use edge_tests::backend::{Backend, Mode};
use edge_tests::ca::TestCa;
use edge_tests::client::{read_line, tls_connect, who_answers};
use edge_tests::edge::{Edge, Route, Toml};
use edge_tests::ports::free_port;
use edge_tests::site::Shop;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ENV: &str = "acme/shop/prod";

fn v6(port: u16) -> SocketAddr {
    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_removes_routes_without_touching_open_tunnels() {
    let ca = TestCa::new();
    let names = ["shop.example.com", "new.example.com", "gone.example.com"];
    let backend = Backend::start(v6(0), "web", Mode::Tls(ca.server_config(&names)), false).await;
    let (port, old_port, new_port) = (free_port(), free_port(), free_port());
    let base = Toml::new()
        .limit("deleted_route_grace_ms", 300)
        .policy(
            "ipv6_extra_ports",
            &format!("[{port}, {old_port}, {new_port}]"),
        )
        .env(ENV, &["::1"], None, &[])
        .instance("i-1", ENV, "web", "::1")
        .route(Route::tls(
            "r-shop",
            ENV,
            "shop.example.com",
            port,
            backend.addr.port(),
        ));
    let before = base.clone().route(Route::tls(
        "r-gone",
        ENV,
        "gone.example.com",
        old_port,
        backend.addr.port(),
    ));
    let edge = Edge::start(&before).await;

    let mut kept = tls_connect(v6(port), "shop.example.com", &ca)
        .await
        .unwrap();
    assert_eq!(read_line(&mut kept).await.unwrap(), "web");
    let mut doomed = tls_connect(v6(old_port), "gone.example.com", &ca)
        .await
        .unwrap();
    assert_eq!(read_line(&mut doomed).await.unwrap(), "web");

    let after = base.route(Route::tls(
        "r-new",
        ENV,
        "new.example.com",
        new_port,
        backend.addr.port(),
    ));
    let version = edge.version().await;
    edge.reload(&after).await;
    assert!(edge.version().await > version);

    // The new route serves at once; the removed pair's listener is closed.
    assert_eq!(
        who_answers(v6(new_port), "new.example.com", &ca)
            .await
            .unwrap(),
        "web"
    );
    let refused = tokio::net::TcpStream::connect(v6(old_port))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    // The tunnel of the route that still exists carries bytes both ways.
    kept.write_all(b"still here").await.unwrap();
    let mut echo = [0u8; 10];
    kept.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"still here");

    // The deleted route's tunnel keeps working through the grace period...
    doomed.write_all(b"grace").await.unwrap();
    let mut echo = [0u8; 5];
    doomed.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"grace");
    // ...and is ended after it.
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), doomed.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the deleted route's tunnel was not ended");

    kept.write_all(b"after grace").await.unwrap();
    let mut echo = [0u8; 11];
    kept.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"after grace");
    assert_eq!(
        edge.metric("edge_reloads_total", &[("result", "ok")]).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_on_sighup_keeps_the_running_table() {
    let shop = Shop::new().await;
    let (ca, port) = (&shop.ca, shop.port);
    let toml = shop.toml(Toml::new(), false);
    let edge = Edge::start(&toml).await;
    let version = edge.version().await;
    std::fs::write(
        edge.state_dir().join("edge.toml"),
        "[limits]\nmax_connections = \"many\"\n",
    )
    .unwrap();
    edge.signal("HUP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while edge
        .metric("edge_reloads_total", &[("result", "error")])
        .await
        < 1.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reload failure not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(edge.version().await, version);
    assert_eq!(
        who_answers(v6(port), "shop.example.com", ca).await.unwrap(),
        "web"
    );
    assert!(
        edge.log().contains("max_connections"),
        "the log names the bad field"
    );
}
