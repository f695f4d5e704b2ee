//! Connections the edge must refuse: closed without a byte (the edge never
//! speaks TLS), counted in /metrics by reason; and ports policy never opens.

use std::net::SocketAddr;
use std::sync::Arc;

use edge_tests::backend::{Backend, Mode};
use edge_tests::ca::TestCa;
use edge_tests::captures;
use edge_tests::client::{send_raw, tls_over, Closed};
use edge_tests::edge::{Edge, Route, Toml};
use edge_tests::ports::free_port;
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const ENV: &str = "acme/shop/prod";

fn v6(port: u16) -> SocketAddr {
    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))
}

async fn tls_backend(ca: &TestCa, tag: &str, names: &[&str]) -> Backend {
    Backend::start(v6(0), tag, Mode::Tls(ca.server_config(names)), false).await
}

/// A TLS client that sends no SNI (an IP-address server name), verifying
/// the backend's `::1` certificate.
async fn no_sni_client(addr: SocketAddr, ca: &TestCa) -> std::io::Result<String> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = TlsConnector::from(ca.client_config(&[]));
    let name = ServerName::IpAddress(std::net::Ipv6Addr::LOCALHOST.into());
    let mut tls = connector.connect(name, tcp).await?;
    let mut tag = [0u8; 4];
    tls.read_exact(&mut tag).await?;
    Ok(String::from_utf8_lossy(&tag).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sni_and_non_tls_bytes_are_closed_silently_and_counted() {
    let ca = TestCa::new();
    let shop = tls_backend(&ca, "shop", &["shop.example.com"]).await;
    let port = free_port();
    let toml = Toml::new()
        .policy("ipv6_extra_ports", &format!("[{port}]"))
        .env(ENV, &["::1"], None, &[])
        .instance("i-1", ENV, "web", "::1")
        .route(Route::tls(
            "r-shop",
            ENV,
            "shop.example.com",
            port,
            shop.addr.port(),
        ))
        .route(Route::tls(
            "r-www",
            ENV,
            "www.example.com",
            port,
            shop.addr.port(),
        ));
    let edge = Edge::start(&toml).await;

    // A verified client for a name nobody serves: the handshake fails
    // because the edge closes, not because a wrong certificate came back.
    let tcp = TcpStream::connect(v6(port)).await.unwrap();
    let err = tls_over(tcp, "nobody.example.net", &ca).await.unwrap_err();
    assert!(!err.to_string().contains("certificate"), "{err}");
    assert_eq!(
        send_raw(
            v6(port),
            b"GET / HTTP/1.1\r\nHost: shop.example.com\r\n\r\n"
        )
        .await,
        Closed::WithoutBytes
    );
    assert_eq!(
        send_raw(v6(port), b"SSH-2.0-OpenSSH_9.2p1\r\n").await,
        Closed::WithoutBytes
    );
    // Two routes share the pair, so a hello without SNI has no route.
    assert_eq!(
        send_raw(v6(port), captures::OPENSSL_NOSNI).await,
        Closed::WithoutBytes
    );

    let rejected = |reason: &'static str| {
        let edge = &edge;
        async move {
            edge.metric("edge_connections_rejected_total", &[("reason", reason)])
                .await
        }
    };
    assert_eq!(rejected("unknown_sni").await, 1.0);
    assert_eq!(rejected("not_tls").await, 2.0);
    assert_eq!(rejected("no_sni_ambiguous").await, 1.0);
    assert_eq!(shop.accepted(), 0, "nothing reached the backend");
    assert!(
        edge.log().contains("unknown_sni"),
        "one log line per rejection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sni_uses_the_only_route_on_a_pair() {
    let ca = TestCa::new();
    let backend = tls_backend(&ca, "solo", &["::1", "solo.example.com"]).await;
    let port = free_port();
    let toml = Toml::new()
        .policy("ipv6_extra_ports", &format!("[{port}]"))
        .env(ENV, &["::1"], None, &[])
        .instance("i-1", ENV, "web", "::1")
        .route(Route::tls(
            "r-solo",
            ENV,
            "solo.example.com",
            port,
            backend.addr.port(),
        ));
    let edge = Edge::start(&toml).await;
    assert_eq!(no_sni_client(v6(port), &ca).await.unwrap(), "solo");
    assert_eq!(backend.seen()[0].sni, None);
    assert_eq!(
        edge.metric("edge_connections_rejected_total", &[]).await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_and_unlisted_ports_are_never_opened() {
    let ca = TestCa::new();
    let backend = Arc::new(tls_backend(&ca, "web", &["shop.example.com"]).await);
    let allowed = free_port();
    let unlisted = free_port();
    let toml = Toml::new()
        .policy("ipv6_extra_ports", &format!("[{allowed}, 2525]"))
        .policy("deny_ports", "[2525]")
        .env(ENV, &["::1"], None, &[])
        .instance("i-1", ENV, "web", "::1")
        .route(Route::tls(
            "r-ok",
            ENV,
            "shop.example.com",
            allowed,
            backend.addr.port(),
        ))
        .route(Route::tls(
            "r-denied",
            ENV,
            "mail.example.com",
            2525,
            backend.addr.port(),
        ))
        .route(Route::tls(
            "r-unlisted",
            ENV,
            "x.example.com",
            unlisted,
            backend.addr.port(),
        ));
    let edge = Edge::start(&toml).await;
    for port in [2525, unlisted] {
        let err = TcpStream::connect(v6(port)).await.unwrap_err();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "port {port}"
        );
    }
    let routes = edge.get("/routes").await.1;
    assert!(
        routes.contains("r-denied") && routes.contains("r-unlisted"),
        "rejections listed: {routes}"
    );
    assert_eq!(edge.metric("edge_routes_rejected", &[]).await, 2.0);
    assert_eq!(edge.metric("edge_listeners", &[]).await, 1.0);
}
