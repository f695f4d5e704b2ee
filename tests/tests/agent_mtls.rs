//! mTLS to the control plane: the feed (edge-feed) serves gRPC and polling
//! over TLS and requires a client certificate; the agent follows it with
//! `[feed] tls = { ca, cert, key }`. A wrong CA or a missing client
//! certificate is refused with the cause in the agent's log; a config
//! that cannot work is refused at load with exit 64, naming the field.

use std::path::Path;
use std::time::{Duration, Instant};

use edge_tests::agent::fixture::{Node, Serve};
use edge_tests::agent::{AgentProcess, AgentTls, AgentToml};
use edge_tests::ca::TestCa;
use edge_tests::reference_feed::tls::FeedServerTls;
use serde_json::json;

const NODE: &str = "edge-mtls-1";
const ENV: &str = "acme/shop/prod";
const WAIT: Duration = Duration::from_secs(20);

/// The control plane's CA (server and client certificates) and the
/// files an agent is given.
struct Pki {
    ca: TestCa,
    server: FeedServerTls,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let ca = TestCa::new();
        let server = FeedServerTls::new(&ca, &["127.0.0.1", "localhost"], &ca);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.root_pem()).unwrap();
        let (_, _, cert, key) = ca.leaf(&[NODE]);
        std::fs::write(dir.path().join("client.pem"), cert).unwrap();
        std::fs::write(dir.path().join("client.key"), key).unwrap();
        let other = TestCa::new();
        std::fs::write(dir.path().join("other-ca.pem"), other.root_pem()).unwrap();
        Pki { ca, server, dir }
    }

    fn file(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn agent_tls(&self, ca: &str, identity: bool) -> AgentTls {
        AgentTls {
            ca: self.file(ca),
            identity: identity.then(|| (self.file("client.pem"), self.file("client.key"))),
        }
    }
}

async fn whole_loop(serve: Serve) {
    let pki = Pki::new();
    let mut node = Node::new(NODE, serve, Some(&pki.server)).await;
    node.agent_toml.tls = Some(pki.agent_tls("ca.pem", true));
    node.start_agent();
    node.env(ENV);
    node.feed.append(
        "instance",
        "i-1",
        "instance.up",
        json!({"env": ENV, "process_type": "web", "addr": "::1"}),
    );
    let last = node.feed.append(
        "route",
        "r-1",
        "route.created",
        node.route("r-1", ENV, "tls.example.com", 9001),
    );
    node.wait_applied(last, WAIT).await;
    assert_eq!(node.route_ids().await, ["r-1"]);
    assert_eq!(
        node.agent()
            .metric("edge_agent_up", &[("endpoint", "feed")])
            .await,
        1.0
    );
    drop(pki.ca);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_loop_works_over_mtls_grpc() {
    whole_loop(Serve::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_loop_works_over_mtls_polling() {
    whole_loop(Serve::Poll).await;
}

/// Starts an agent with `tls` against an mTLS feed on `serve` and returns
/// its log once it says the feed is unreachable; nothing is ever applied.
async fn refused(pki: &Pki, serve: Serve, tls: AgentTls) -> String {
    let mut node = Node::new(NODE, serve, Some(&pki.server)).await;
    node.agent_toml.tls = Some(tls);
    node.start_agent();
    node.env(ENV);
    let deadline = Instant::now() + WAIT;
    loop {
        let log = node.agent().log();
        if log.matches("feed unreachable").count() >= 2 {
            assert_eq!(node.feed.applied(NODE), 0);
            assert_eq!(
                node.agent()
                    .metric("edge_agent_up", &[("endpoint", "feed")])
                    .await,
                0.0
            );
            return log;
        }
        assert!(Instant::now() < deadline, "no refusal in the log:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    for serve in [Serve::Grpc, Serve::Poll] {
        let log = refused(&pki, serve, pki.agent_tls("other-ca.pem", true)).await;
        // Both test CAs have the same name: webpki finds the issuer by
        // name and then rejects the signature.
        assert!(
            log.contains("invalid peer certificate"),
            "{serve:?}:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_a_client_certificate_is_refused() {
    let pki = Pki::new();
    for serve in [Serve::Grpc, Serve::Poll] {
        // The same CA as the feed's, but no identity to present.
        let tls = AgentTls {
            ca: pki.file("ca.pem"),
            identity: None,
        };
        let log = refused(&pki, serve, tls).await;
        let lower = log.to_ascii_lowercase();
        assert!(
            lower.contains("certificaterequired") || lower.contains("certificate required"),
            "{serve:?}:\n{log}"
        );
    }
}

async fn exit_code(toml: &AgentToml) -> (i32, String) {
    let mut agent = AgentProcess::start(toml);
    let status = agent.wait_exit(WAIT).await.expect("the agent exits");
    (status.code().unwrap_or(-1), agent.log())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_tls_config_exits_64_naming_the_field() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut toml = AgentToml::new(NODE, &dir.path().join("state"), &dir.path().join("sock"));
    toml.grpc = Some("127.0.0.1:1".parse().unwrap());

    // https:// without tls: render with tls, then drop the tls line.
    toml.tls = Some(pki.agent_tls("ca.pem", true));
    let rendered = toml.render();
    let without: String = rendered
        .lines()
        .filter(|l| !l.starts_with("tls ="))
        .map(|l| format!("{l}\n"))
        .collect();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, without).unwrap();
    let out = std::process::Command::new(edge_tests::agent::agent_bin())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("feed.grpc") && stderr.contains("feed.tls"),
        "{stderr}"
    );

    // Unreadable files: the field and the path are named.
    for (tls, field) in [
        (
            AgentTls {
                ca: Path::new("/nonexistent/ca.pem").into(),
                identity: None,
            },
            "feed.tls.ca",
        ),
        (
            AgentTls {
                ca: pki.file("ca.pem"),
                identity: Some((
                    pki.file("client.pem"),
                    Path::new("/nonexistent/client.key").into(),
                )),
            },
            "feed.tls.key",
        ),
    ] {
        toml.tls = Some(tls);
        let (code, log) = exit_code(&toml).await;
        assert_eq!(code, 64, "{log}");
        assert!(
            log.contains(field) && log.contains("/nonexistent/"),
            "{log}"
        );
    }
}
