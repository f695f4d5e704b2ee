//! SNI routing through the edge with real TLS: the client verifies the
//! certificate of the backend it reached, so "the right backend answered"
//! is proven by the handshake as well as by the backend's tag.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use edge_tests::backend::{Backend, Mode};
use edge_tests::ca::TestCa;
use edge_tests::client::who_answers;
use edge_tests::edge::{Edge, Route, Toml};
use edge_tests::ports::free_port;
use rustls::pki_types::ServerName;

const ENV: &str = "acme/shop/prod";

struct Site {
    ca: TestCa,
    port: u16,
    edge: Edge,
    _shop: Backend,
    _api: Backend,
}

/// `shop.example.com` and `*.example.com` on one port, to two backends.
async fn two_hostnames() -> Site {
    let ca = TestCa::new();
    let shop = Backend::start(
        "[::1]:0".parse().unwrap(),
        "shop",
        Mode::Tls(ca.server_config(&["shop.example.com"])),
        false,
    )
    .await;
    let api = Backend::start(
        "[::1]:0".parse().unwrap(),
        "api",
        Mode::Tls(ca.server_config(&["api.example.com", "other.example.com"])),
        false,
    )
    .await;
    let port = free_port();
    let toml = Toml::new()
        .policy("ipv6_extra_ports", &format!("[{port}]"))
        .env(ENV, &["::1"], Some("127.0.0.1"), &[port])
        .instance("i-shop", ENV, "shop", "::1")
        .instance("i-api", ENV, "api", "::1")
        .route(
            Route::tls("r-shop", ENV, "shop.example.com", port, shop.addr.port())
                .process_type("shop"),
        )
        .route(
            Route::tls("r-api", ENV, "*.example.com", port, api.addr.port()).process_type("api"),
        );
    let edge = Edge::start(&toml).await;
    Site {
        ca,
        port,
        edge,
        _shop: shop,
        _api: api,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hostnames_on_one_port_reach_their_own_backends_on_both_families() {
    let site = two_hostnames().await;
    for ip in ["[::1]", "127.0.0.1"] {
        let addr: SocketAddr = format!("{ip}:{}", site.port).parse().unwrap();
        assert_eq!(
            who_answers(addr, "shop.example.com", &site.ca)
                .await
                .unwrap(),
            "shop"
        );
        assert_eq!(
            who_answers(addr, "api.example.com", &site.ca)
                .await
                .unwrap(),
            "api"
        );
        // Exact beats wildcard, and a wildcard matches any one label.
        assert_eq!(
            who_answers(addr, "other.example.com", &site.ca)
                .await
                .unwrap(),
            "api"
        );
    }
    let served = site
        .edge
        .metric("edge_connections_accepted_total", &[])
        .await;
    assert_eq!(served, 6.0);
}

/// Completes a TLS handshake whose ClientHello goes out as `framed(hello)`
/// in writes of `chunk` bytes with a pause between them, then reads the
/// backend's tag. Blocking rustls on a std socket: byte-exact control of
/// what is written when.
fn handshake_trickled(
    addr: SocketAddr,
    sni: &str,
    ca: &TestCa,
    framed: fn(&[u8]) -> Vec<u8>,
    chunk: usize,
) -> String {
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(ca.client_config(&[]), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for piece in framed(&hello).chunks(chunk) {
        tcp.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut tls = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    let mut line = String::new();
    tls.read_line(&mut line).unwrap();
    line.trim_end().to_owned()
}

/// The handshake message of a one-record hello re-cut into 100-byte records.
fn in_small_records(hello: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in hello[5..].chunks(100) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(piece.len() as u16).to_be_bytes());
        out.extend_from_slice(piece);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_one_byte_per_write_or_over_many_records_is_routed() {
    let site = Arc::new(two_hostnames().await);
    let addr: SocketAddr = format!("[::1]:{}", site.port).parse().unwrap();
    let s = site.clone();
    let tags = tokio::task::spawn_blocking(move || {
        [
            handshake_trickled(addr, "shop.example.com", &s.ca, <[u8]>::to_vec, 1),
            handshake_trickled(addr, "api.example.com", &s.ca, in_small_records, 7),
            handshake_trickled(addr, "shop.example.com", &s.ca, in_small_records, 1),
        ]
    })
    .await
    .unwrap();
    assert_eq!(tags, ["shop", "api", "shop"]);
    // The peek saw every one of those bytes arrive separately and still
    // answered once; no rejection was counted.
    assert_eq!(
        site.edge
            .metric("edge_connections_rejected_total", &[])
            .await,
        0.0
    );
}
