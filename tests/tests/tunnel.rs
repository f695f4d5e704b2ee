//! What an established tunnel owes its users: every byte, in order, both
//! ways, and half-closes passed through (a client that shuts down its
//! write side still gets the backend's answer). Each test runs twice: with
//! `splice(2)` forwarding (the default) and with the user-space copy; the
//! bulk test checks which of the two carried the bytes (a spliced tunnel
//! also half-closes through the splice path when its writer finishes).

use std::net::SocketAddr;

use edge_tests::backend::{Backend, Mode};
use edge_tests::ca::TestCa;
use edge_tests::client::{read_line, tls_connect};
use edge_tests::edge::{Edge, Route, Toml};
use edge_tests::ports::free_port;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ENV: &str = "acme/shop/prod";
const MB: usize = 1024 * 1024;

struct Site {
    ca: TestCa,
    tls_port: u16,
    raw_port: u16,
    edge: Edge,
    _tls: Backend,
    _raw: Backend,
}

async fn site(splice: bool) -> Site {
    let ca = TestCa::new();
    let tls = Backend::start(
        "[::1]:0".parse().unwrap(),
        "tls",
        Mode::Tls(ca.server_config(&["bulk.example.com"])),
        false,
    )
    .await;
    let raw = Backend::start("[::1]:0".parse().unwrap(), "raw", Mode::Tcp, false).await;
    let (tls_port, raw_port) = (free_port(), free_port());
    let toml = Toml::new()
        .policy("ipv6_extra_ports", &format!("[{tls_port}, {raw_port}]"))
        .env(ENV, &["::1"], None, &[])
        .instance("i-1", ENV, "web", "::1")
        .route(Route::tls(
            "r-bulk",
            ENV,
            "bulk.example.com",
            tls_port,
            tls.addr.port(),
        ))
        .route(Route::raw("r-raw", ENV, raw_port, raw.addr.port()))
        .splice(splice);
    let edge = Edge::start(&toml).await;
    Site {
        ca,
        tls_port,
        raw_port,
        edge,
        _tls: tls,
        _raw: raw,
    }
}

fn v6(port: u16) -> SocketAddr {
    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_passes_through_spliced_tunnels() {
    half_close_passes_through_raw_and_tls_tunnels(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_passes_through_copied_tunnels() {
    half_close_passes_through_raw_and_tls_tunnels(false).await;
}

async fn half_close_passes_through_raw_and_tls_tunnels(splice: bool) {
    let site = site(splice).await;
    // Raw TCP: our FIN reaches the backend, which then answers and closes.
    let mut raw = TcpStream::connect(v6(site.raw_port)).await.unwrap();
    raw.write_all(b"ping").await.unwrap();
    raw.shutdown().await.unwrap();
    let mut got = String::new();
    raw.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "raw\npingbye\n");

    // TLS: close_notify and FIN travel through the edge the same way.
    let mut tls = tls_connect(v6(site.tls_port), "bulk.example.com", &site.ca)
        .await
        .unwrap();
    assert_eq!(read_line(&mut tls).await.unwrap(), "tls");
    tls.write_all(b"ping").await.unwrap();
    tls.shutdown().await.unwrap();
    let mut got = String::new();
    tls.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "pingbye\n");
}

/// A deterministic pseudo-random stream (xorshift), so no two chunks match
/// and a reordered or duplicated chunk changes the hash.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `total` bytes while reading the echo, and returns the SHA-256 of
/// what came back. The backend echoes exactly what it received, so equal
/// hashes prove both directions intact.
async fn echo_through<S>(stream: S, total: usize) -> (Vec<u8>, usize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        let chunk = pattern(MB);
        for _ in 0..total / MB {
            wr.write_all(&chunk).await.unwrap();
        }
        wr.shutdown().await.unwrap();
    });
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut line = Vec::new();
    // Skip the backend's tag line; the echo follows it.
    loop {
        let mut b = [0u8; 1];
        rd.read_exact(&mut b).await.unwrap();
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    let mut received = 0;
    loop {
        let n = rd.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        received += n;
    }
    writer.await.unwrap();
    (hash.finalize().to_vec(), received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_megabytes_each_way_arrive_intact_spliced() {
    one_hundred_megabytes_each_way_arrive_intact(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_megabytes_each_way_arrive_intact_copied() {
    one_hundred_megabytes_each_way_arrive_intact(false).await;
}

async fn one_hundred_megabytes_each_way_arrive_intact(splice: bool) {
    let site = site(splice).await;
    let total = 100 * MB;
    let mut expected = Sha256::new();
    let chunk = pattern(MB);
    for _ in 0..total / MB {
        expected.update(&chunk);
    }
    expected.update(b"bye\n");
    let expected = expected.finalize().to_vec();

    let raw = TcpStream::connect(v6(site.raw_port)).await.unwrap();
    let started = std::time::Instant::now();
    let (hash, received) = echo_through(raw, total).await;
    // Informational only (never asserted): the benches measure speed.
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "raw echo (splice {splice}): {:.0} MB/s each way",
        total as f64 / secs / 1e6
    );
    assert_eq!(received, total + 4);
    assert_eq!(hash, expected, "raw tunnel");

    let tls = tls_connect(v6(site.tls_port), "bulk.example.com", &site.ca)
        .await
        .unwrap();
    let (hash, received) = echo_through(tls, total).await;
    assert_eq!(received, total + 4);
    assert_eq!(hash, expected, "TLS tunnel");

    let up = site
        .edge
        .metric("edge_bytes_total", &[("direction", "client_to_backend")])
        .await;
    assert!(up >= 2.0 * total as f64, "bytes counted: {up}");
    let spliced = site.edge.metric("edge_bytes_spliced_total", &[]).await;
    if splice {
        // Each direction copies until a read fills the buffer, then
        // splices: all but the first few KiB of 400 MB.
        assert!(spliced >= 0.99 * 4.0 * total as f64, "spliced: {spliced}");
    } else {
        assert_eq!(spliced, 0.0, "copy mode spliced bytes");
    }
}
