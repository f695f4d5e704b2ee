//! PROXY v2 as a backend sees it, parsed by `ppp` (not the edge's own
//! encoder): the client's real source, the address it connected to (AF_INET
//! for an IPv4 client although the backend leg is IPv6), and the SNI in
//! the AUTHORITY TLV. And an IPv4 client on the env's dedicated IPv4
//! reaching an IPv6-only backend.

use std::net::SocketAddr;

use edge_tests::backend::{Backend, Mode};
use edge_tests::ca::TestCa;
use edge_tests::client::{read_line, tls_connect};
use edge_tests::edge::{Edge, Route, Toml};
use edge_tests::ports::free_port;

const ENV: &str = "acme/shop/prod";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v2_carries_source_destination_and_sni_for_both_families() {
    let ca = TestCa::new();
    let backend = Backend::start(
        "[::1]:0".parse().unwrap(),
        "pp",
        Mode::Tls(ca.server_config(&["shop.example.com"])),
        true,
    )
    .await;
    let port = free_port();
    let toml = Toml::new()
        .policy("ipv6_extra_ports", &format!("[{port}]"))
        .env(ENV, &["::1"], Some("127.0.0.1"), &[port])
        .instance("i-1", ENV, "web", "::1")
        .route(
            Route::tls("r-pp", ENV, "shop.example.com", port, backend.addr.port()).proxy_protocol(),
        );
    let _edge = Edge::start(&toml).await;

    for target in [format!("[::1]:{port}"), format!("127.0.0.1:{port}")] {
        let target: SocketAddr = target.parse().unwrap();
        let mut tls = tls_connect(target, "shop.example.com", &ca).await.unwrap();
        assert_eq!(
            read_line(&mut tls).await.unwrap(),
            "pp",
            "TLS still works after the header"
        );
        let client = tls.get_ref().0.local_addr().unwrap();
        let seen = backend.seen().pop().unwrap();
        assert_eq!(
            seen.proxy,
            Some((client, target)),
            "source and destination as the client saw them"
        );
        assert_eq!(seen.authority.as_deref(), Some("shop.example.com"));
        assert_eq!(seen.sni.as_deref(), Some("shop.example.com"));
        assert!(
            seen.peer.is_ipv6(),
            "the backend leg is IPv6: {}",
            seen.peer
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_client_on_the_dedicated_ipv4_reaches_an_ipv6_backend() {
    let ca = TestCa::new();
    let backend = Backend::start(
        "[::1]:0".parse().unwrap(),
        "v6-only",
        Mode::Tls(ca.server_config(&["shop.example.com"])),
        false,
    )
    .await;
    let port = free_port();
    // The port is requested by the env and allowed for IPv4 only, so the
    // route is served on 127.0.0.1 and not on [::1] (ADR 0008).
    let toml = Toml::new()
        .env(ENV, &["::1"], Some("127.0.0.1"), &[port])
        .instance("i-1", ENV, "web", "::1")
        .route(Route::tls(
            "r-v4",
            ENV,
            "shop.example.com",
            port,
            backend.addr.port(),
        ));
    let edge = Edge::start(&toml).await;
    let mut tls = tls_connect(
        format!("127.0.0.1:{port}").parse().unwrap(),
        "shop.example.com",
        &ca,
    )
    .await
    .unwrap();
    assert_eq!(read_line(&mut tls).await.unwrap(), "v6-only");
    assert!(backend.seen()[0].peer.is_ipv6());
    let refused = tokio::net::TcpStream::connect(format!("[::1]:{port}"))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let routes = edge.get("/routes").await.1;
    assert!(
        routes.contains(&format!("127.0.0.1:{port}")) && !routes.contains(&format!("[::1]:{port}")),
        "{routes}"
    );
}
