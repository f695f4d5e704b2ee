//! Inputs an attacker can send to a TLS port, each answered with a clean
//! close (no byte from the edge) and counted under the right reason in
//! /metrics. The table in docs/security.md lists the same cases.

use std::net::SocketAddr;

use edge_tests::captures;
use edge_tests::client::{send_raw, Closed};
use edge_tests::edge::{Edge, Route, Toml};
use edge_tests::ports::free_port;

const ENV: &str = "acme/shop/prod";

/// A ClientHello record with the given extensions (TLS 1.3 shape).
fn hello(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    let mut ext = Vec::new();
    for (kind, data) in exts {
        ext.extend_from_slice(&kind.to_be_bytes());
        ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
        ext.extend_from_slice(data);
    }
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut msg = vec![1];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    let mut out = Vec::new();
    for chunk in msg.chunks(16_384) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// A `server_name` extension with these `(name_type, name)` entries.
fn sni(names: &[&[u8]]) -> (u16, Vec<u8>) {
    let mut list = Vec::new();
    for name in names {
        list.push(0);
        list.extend_from_slice(&(name.len() as u16).to_be_bytes());
        list.extend_from_slice(name);
    }
    let mut data = (list.len() as u16).to_be_bytes().to_vec();
    data.extend_from_slice(&list);
    (0, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_each_get_a_clean_close_and_the_right_reason() {
    let port = free_port();
    let toml = Toml::new()
        .policy("ipv6_extra_ports", &format!("[{port}]"))
        .env(ENV, &["::1"], None, &[])
        .instance("i-1", ENV, "web", "::1")
        .route(Route::tls(
            "r-1",
            ENV,
            "shop.example.com",
            port,
            free_port(),
        ))
        .route(Route::tls("r-2", ENV, "www.example.com", port, free_port()));
    let edge = Edge::start(&toml).await;
    let addr = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let long = |n: usize| {
        let mut name = vec![b'a'; n - ".example.com".len()];
        name.extend_from_slice(b".example.com");
        name
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "SNI of 255 bytes",
            hello(&[sni(&[&long(255)])]),
            "unknown_sni",
        ),
        (
            "SNI of 256 bytes",
            hello(&[sni(&[&long(256)])]),
            "invalid_sni",
        ),
        (
            "two server_name entries",
            hello(&[sni(&[b"shop.example.com", b"www.example.com"])]),
            "invalid_sni",
        ),
        (
            "a NUL in the name",
            hello(&[sni(&[b"shop\0.example.com"])]),
            "invalid_sni",
        ),
        (
            "a space in the name",
            hello(&[sni(&[b"shop .example.com"])]),
            "invalid_sni",
        ),
        (
            "non-ASCII bytes",
            hello(&[sni(&["shöp.example.com".as_bytes()])]),
            "invalid_sni",
        ),
        (
            "an underscore",
            hello(&[sni(&[b"sh_op.example.com"])]),
            "unknown_sni",
        ),
        (
            "an empty server_name extension",
            hello(&[(0, Vec::new())]),
            "invalid_sni",
        ),
        (
            "16 KB of padding",
            hello(&[sni(&[b"shop.example.com"]), (21, vec![0; 16 * 1024])]),
            "hello_too_large",
        ),
        (
            "HTTP/1.1",
            b"GET / HTTP/1.1\r\nHost: shop.example.com\r\n\r\n".to_vec(),
            "not_tls",
        ),
        (
            "an SSH banner",
            b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n".to_vec(),
            "not_tls",
        ),
        (
            "an SMTP banner",
            b"EHLO mail.example.com\r\n".to_vec(),
            "not_tls",
        ),
        (
            "a PROXY v1 line from the client",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 443\r\n".to_vec(),
            "not_tls",
        ),
        (
            "a PROXY v2 header from the client",
            [
                &b"\r\n\r\n\0\r\nQUIT\n\x21\x11\0\x0c"[..],
                &[192, 0, 2, 1, 192, 0, 2, 2, 0, 1, 1, 187],
                captures::CURL,
            ]
            .concat(),
            "not_tls",
        ),
        (
            "a record claiming a 2^24-byte handshake",
            vec![22, 3, 1, 0x40, 0, 1, 0xff, 0xff, 0xff],
            "hello_too_large",
        ),
        (
            "an SSLv2 hello",
            vec![
                0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
            ],
            "sslv2",
        ),
        (
            "an alert as first record",
            vec![21, 3, 3, 0, 2, 2, 40],
            "not_tls",
        ),
        (
            "a zero-length record",
            vec![22, 3, 1, 0, 0],
            "malformed_hello",
        ),
        (
            "a server hello",
            vec![22, 3, 3, 0, 4, 2, 0, 0, 0],
            "not_client_hello",
        ),
    ];
    let mut table = String::from("| input | reason |\n|---|---|\n");
    for (name, bytes, reason) in &cases {
        let before = edge
            .metric("edge_connections_rejected_total", &[("reason", reason)])
            .await;
        assert_eq!(send_raw(addr, bytes).await, Closed::WithoutBytes, "{name}");
        let after = edge
            .metric("edge_connections_rejected_total", &[("reason", reason)])
            .await;
        assert_eq!(after - before, 1.0, "{name}: expected one more {reason}");
        table.push_str(&format!("| {name} | `{reason}` |\n"));
    }
    eprintln!("{table}");
    assert_eq!(
        edge.metric("edge_connections_rejected_total", &[]).await,
        cases.len() as f64
    );
}
