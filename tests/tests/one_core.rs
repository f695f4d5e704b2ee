//! On a single core the edge runs tokio's current-thread scheduler (every
//! other suite runs it on two cores, multi-threaded). Pinned to one CPU it
//! must still do the whole job: route TLS by SNI, move bulk bytes intact
//! through a spliced tunnel, apply a reload, and drain on SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use edge_tests::backend::{Backend, Mode};
use edge_tests::ca::TestCa;
use edge_tests::client::who_answers;
use edge_tests::edge::{Edge, Route, Toml};
use edge_tests::ports::free_port;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ENV: &str = "acme/shop/prod";
const MB: usize = 1024 * 1024;

fn v6(port: u16) -> SocketAddr {
    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_to_one_cpu_the_edge_routes_forwards_reloads_and_drains() {
    let ca = TestCa::new();
    let names = ["shop.example.com", "new.example.com"];
    let web = Backend::start(v6(0), "web", Mode::Tls(ca.server_config(&names)), false).await;
    let raw = Backend::start(v6(0), "raw", Mode::Tcp, false).await;
    let (tls_port, raw_port, new_port) = (free_port(), free_port(), free_port());
    let base = Toml::new()
        .policy(
            "ipv6_extra_ports",
            &format!("[{tls_port}, {raw_port}, {new_port}]"),
        )
        .env(ENV, &["::1"], None, &[])
        .instance("i-1", ENV, "web", "::1")
        .route(Route::tls(
            "r-shop",
            ENV,
            "shop.example.com",
            tls_port,
            web.addr.port(),
        ))
        .route(Route::raw("r-raw", ENV, raw_port, raw.addr.port()));
    let mut edge = Edge::start_pinned(&base, "0").await;
    assert!(
        edge.log().contains("workers=1"),
        "one worker on one CPU: {}",
        edge.log()
    );

    assert_eq!(
        who_answers(v6(tls_port), "shop.example.com", &ca)
            .await
            .unwrap(),
        "web"
    );

    // 32 MiB each way through the raw route: the backend echoes it.
    let total = 32 * MB;
    let chunk: Vec<u8> = (0..MB).map(|i| (i * 31 + i / 997) as u8).collect();
    let stream = TcpStream::connect(v6(raw_port)).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let sent = chunk.clone();
    let writer = tokio::spawn(async move {
        for _ in 0..total / MB {
            wr.write_all(&sent).await.unwrap();
        }
        wr.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    rd.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    let mut expected = Sha256::new();
    expected.update(b"raw\n");
    for _ in 0..total / MB {
        expected.update(&chunk);
    }
    expected.update(b"bye\n");
    assert_eq!(got.len(), total + 8);
    assert_eq!(Sha256::digest(&got), expected.finalize(), "echo changed");
    let spliced = edge.metric("edge_bytes_spliced_total", &[]).await;
    assert!(spliced >= 0.99 * 2.0 * total as f64, "spliced: {spliced}");

    edge.reload(&base.clone().route(Route::tls(
        "r-new",
        ENV,
        "new.example.com",
        new_port,
        web.addr.port(),
    )))
    .await;
    assert_eq!(
        who_answers(v6(new_port), "new.example.com", &ca)
            .await
            .unwrap(),
        "web"
    );

    edge.signal("TERM");
    let status = edge.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "drained and exited 0: {status:?}"
    );
}
