//! The real agent follows a real `edge-feed serve --store file:…` over
//! mTLS, by gRPC and by polling: the feed requires a client certificate
//! (`--tls-cert --tls-key --client-ca`), the agent presents one
//! (`[feed] tls = { ca, cert, key }`), and a route appended with
//! `edge-feed append --store file:…` is served by the edge to a verified
//! TLS client. One CA signs the feed's, the node's and the backend's
//! certificates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_tests::agent::AgentTls;
use edge_tests::backend::{Backend, Mode};
use edge_tests::ca::TestCa;
use edge_tests::client::who_answers;
use edge_tests::edge_feed::{append, FeedProcess, Node, Via};
use edge_tests::ports::free_port;
use serde_json::json;

const ENV: &str = "acme/shop/prod";
const WAIT: Duration = Duration::from_secs(30);

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn arg(path: &Path) -> String {
    path.display().to_string()
}

async fn follows_over_mtls(via: Via, node_id: &str) {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_pem = write(dir.path(), "ca.pem", &ca.root_pem());
    let (_, _, cert, key) = ca.leaf(&["127.0.0.1", "localhost"]);
    let feed_cert = write(dir.path(), "feed.pem", &cert);
    let feed_key = write(dir.path(), "feed.key", &key);
    let (_, _, cert, key) = ca.leaf(&[node_id]);
    let client_cert = write(dir.path(), "client.pem", &cert);
    let client_key = write(dir.path(), "client.key", &key);
    let store = format!("file:{}", dir.path().join("events.jsonl").display());

    let feed = FeedProcess::start(
        &store,
        &[
            "--tls-cert",
            &arg(&feed_cert),
            "--tls-key",
            &arg(&feed_key),
            "--client-ca",
            &arg(&ca_pem),
        ],
    )
    .await;
    let backend = Backend::start(
        "[::1]:0".parse().unwrap(),
        "web",
        Mode::Tls(ca.server_config(&["*.example.com"])),
        false,
    )
    .await;
    let port = free_port();
    let tls = AgentTls {
        ca: ca_pem.clone(),
        identity: Some((client_cert, client_key)),
    };
    let node = Node::start_tls(
        node_id,
        &feed,
        via,
        port,
        &[("ipv6_extra_ports", format!("[{port}]"))],
        Some(tls),
    )
    .await;

    append(
        &store,
        "env",
        ENV,
        "env.configured",
        &json!({"id": ENV, "ipv6": ["::1"], "ipv4": null, "ports": []}),
    );
    append(
        &store,
        "instance",
        "i-1",
        "instance.up",
        &json!({"env": ENV, "process_type": "web", "addr": "::1"}),
    );
    let created = append(
        &store,
        "route",
        "r-mtls",
        "route.created",
        &json!({"id": "r-mtls", "env": ENV, "hostname": "mtls.example.com",
                "listen_port": port, "protocol": "tls_passthrough",
                "backend_process_type": "web", "backend_port": backend.addr.port()}),
    );
    node.wait_cursor(created, WAIT).await;
    let addr = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    assert_eq!(
        who_answers(addr, "mtls.example.com", &ca).await.unwrap(),
        "web"
    );
    assert_eq!(
        node.agent
            .metric("edge_agent_up", &[("endpoint", "feed")])
            .await,
        1.0
    );
    // The agent's applied report reached the feed over mTLS too; the
    // feed's `GET /applied` itself needs a client certificate.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let applied = get_applied(&feed, &ca, node_id).await;
        let reported = applied
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["node_id"] == node_id)
            .and_then(|c| c["event_id"].as_u64());
        if reported >= Some(created) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed has no report of {created} from {node_id}: {applied}\n{}",
            feed.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /applied` from the feed's HTTP listener, over TLS with a client
/// certificate from `ca` for `name`.
async fn get_applied(feed: &FeedProcess, ca: &TestCa, name: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.root_der()).unwrap();
    let (chain, key, _, _) = ca.leaf(&[name]);
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(feed.http).await.unwrap();
    let server = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(server, tcp).await.unwrap();
    tls.write_all(b"GET /applied HTTP/1.1\r\nHost: feed\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    // A peer that closes without close_notify still gave the whole body.
    let _ = tls.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(body).expect("/applied is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_follows_edge_feed_over_mtls_grpc() {
    follows_over_mtls(Via::Grpc, "edge-feed-mtls-grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_follows_edge_feed_over_mtls_polling() {
    follows_over_mtls(Via::Poll, "edge-feed-mtls-poll").await;
}
