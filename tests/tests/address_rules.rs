//! The address rules of ADR 0007/0008, through edge.toml (`edge check` and
//! a running edge) and through a push on the control socket: an env's
//! public addresses must be usable unicast outside the overlay (and inside
//! `policy.public_prefixes`), a dedicated IPv4 belongs to one env, an
//! overlay address to one env's instances, an `ipv4_required` route is
//! served on its env's IPv4 or rejected, and a `health_source` needs a port
//! and a process type. Each rejection names the object and the field, and
//! is counted under its reason.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use edge_proto::control::{ControlClient, PushRequest};
use edge_tests::edge::{edge_bin, Edge, Toml};
use edge_tests::ports::free_port;
use hyper_util::rt::TokioIo;
use route_model::spec::{EnvSpec, HealthSourceSpec, InstanceSpec, RouteSpec, RoutingSpec};
use tokio::net::{TcpStream, UnixStream};
use tonic::transport::{Endpoint, Uri};

const OK: &str = "acme/ok/prod";

/// `(object type, object id, reason, words the message must contain)`.
type Expected = (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
);

/// Every rule broken once, beside one env and route that are fine.
const EXPECTED: &[Expected] = &[
    (
        "env",
        "acme/unspec/prod",
        "env_addr_unusable",
        &["ipv6 ::", "unspecified"],
    ),
    (
        "env",
        "acme/mcast/prod",
        "env_addr_unusable",
        &["ipv6 ff02::1", "multicast"],
    ),
    (
        "env",
        "acme/linklocal/prod",
        "env_addr_unusable",
        &["ipv6 fe80::1", "link-local"],
    ),
    (
        "env",
        "acme/overlay/prod",
        "env_addr_unusable",
        &["ipv6 fd00:e1::7", "overlay"],
    ),
    (
        "env",
        "acme/v4zero/prod",
        "env_addr_unusable",
        &["ipv4 0.0.0.0", "unspecified"],
    ),
    (
        "env",
        "acme/outside/prod",
        "env_addr_unusable",
        &["ipv6 2001:db8:9::1", "public_prefixes"],
    ),
    (
        "env",
        "acme/thief/prod",
        "env_ipv4_taken",
        &["ipv4 127.0.0.1", "acme/ok/prod"],
    ),
    (
        "instance",
        "i-other",
        "instance_addr_taken",
        &["addr fd00:e1::42", "i-ok-db", "acme/ok/prod"],
    ),
    (
        "route",
        "r-v4-none",
        "ipv4_required",
        &["ipv4_required", "acme/other/prod"],
    ),
    (
        "route",
        "r-v4-port",
        "ipv4_port_not_allowed",
        &["ipv4_required", "listen_port"],
    ),
    (
        "route",
        "r-hs-port",
        "bad_health_source",
        &["health_source.port"],
    ),
    (
        "route",
        "r-hs-type",
        "bad_health_source",
        &["health_source.process_type"],
    ),
];

fn env(id: &str, ipv6: &[&str], ipv4: Option<&str>, ports: &[u16]) -> EnvSpec {
    EnvSpec {
        id: id.into(),
        ipv6: ipv6.iter().map(|a| a.to_string()).collect(),
        ipv4: ipv4.map(Into::into),
        ports: ports.to_vec(),
    }
}

fn instance(id: &str, env: &str) -> InstanceSpec {
    InstanceSpec {
        id: id.into(),
        env: env.into(),
        process_type: "web".into(),
        addr: "::1".into(),
        healthy: true,
    }
}

fn route(id: &str, env: &str, port: u16) -> RouteSpec {
    RouteSpec {
        id: id.into(),
        env: env.into(),
        hostname: format!("{id}.example.com"),
        listen_port: port,
        protocol: "tls_passthrough".into(),
        backend_process_type: "web".into(),
        backend_port: 8443,
        proxy_protocol: false,
        ipv4_required: false,
        health_source: None,
    }
}

/// The spec: `ok_port` is served on the ok env's IPv6 and IPv4;
/// `v6_port` is allowed on IPv6 only.
fn spec(ok_port: u16, v6_port: u16) -> RoutingSpec {
    let health = |process_type: &str, port| HealthSourceSpec {
        process_type: process_type.into(),
        port,
    };
    RoutingSpec {
        envs: vec![
            env(OK, &["::1"], Some("127.0.0.1"), &[ok_port]),
            env("acme/other/prod", &["::1"], None, &[]),
            env("acme/unspec/prod", &["::"], None, &[]),
            env("acme/mcast/prod", &["ff02::1"], None, &[]),
            env("acme/linklocal/prod", &["fe80::1"], None, &[]),
            env("acme/overlay/prod", &["fd00:e1::7"], None, &[]),
            env("acme/v4zero/prod", &["::1"], Some("0.0.0.0"), &[]),
            env("acme/outside/prod", &["2001:db8:9::1"], None, &[]),
            env("acme/thief/prod", &["::1"], Some("127.0.0.1"), &[]),
        ],
        // Loopback is exempt from the one-env-per-overlay-address rule (every
        // env's test backends are ::1), so the contested address is an
        // overlay one: i-other (another env) is refused the address i-ok-db
        // took first.
        instances: vec![
            instance("i-ok", OK),
            InstanceSpec {
                process_type: "db".into(),
                addr: "fd00:e1::42".into(),
                ..instance("i-ok-db", OK)
            },
            InstanceSpec {
                addr: "fd00:e1::42".into(),
                ..instance("i-other", "acme/other/prod")
            },
        ],
        routes: vec![
            RouteSpec {
                ipv4_required: true,
                ..route("r-ok", OK, ok_port)
            },
            RouteSpec {
                ipv4_required: true,
                ..route("r-v4-none", "acme/other/prod", ok_port)
            },
            RouteSpec {
                ipv4_required: true,
                ..route("r-v4-port", OK, v6_port)
            },
            RouteSpec {
                health_source: Some(health("web", 0)),
                ..route("r-hs-port", OK, ok_port)
            },
            RouteSpec {
                health_source: Some(health("", 9000)),
                ..route("r-hs-type", OK, ok_port)
            },
        ],
    }
}

/// The edge.toml around a spec: the ports allowed on IPv6 and the public
/// prefixes (loopback stays allowed whatever they say).
fn base(ok_port: u16, v6_port: u16) -> Toml {
    Toml::new()
        .policy("ipv6_extra_ports", &format!("[{ok_port}, {v6_port}]"))
        .policy(
            "public_prefixes",
            "[\"2001:db8:1::/48\", \"203.0.113.0/24\"]",
        )
}

fn with_spec(toml: Toml, spec: &RoutingSpec) -> Toml {
    toml.append(&toml::to_string(spec).expect("spec as TOML"))
}

#[test]
fn edge_check_names_each_object_and_field() {
    let (ok_port, v6_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.toml");
    std::fs::write(
        &path,
        with_spec(base(ok_port, v6_port), &spec(ok_port, v6_port)).render(),
    )
    .unwrap();
    let out = Command::new(edge_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(65), "{text}");
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), EXPECTED.len(), "{text}");
    for (object, id, _, words) in EXPECTED {
        let line = errors
            .iter()
            .find(|l| l.contains(&format!("{object} {id}:")))
            .unwrap_or_else(|| panic!("no error for {object} {id}:\n{text}"));
        for w in *words {
            assert!(line.contains(w), "{line:?} should say {w:?}");
        }
    }
    // The route that breaks no rule is served on the IPv4 (and the IPv6).
    assert!(text.contains(&format!("127.0.0.1:{ok_port}")), "{text}");
    assert!(text.contains("1 routes"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_edge_rejects_each_and_counts_it_by_reason() {
    let (ok_port, v6_port) = (free_port(), free_port());
    let toml = with_spec(base(ok_port, v6_port), &spec(ok_port, v6_port));
    let edge = Edge::start(&toml).await;
    assert_counted(&edge).await;
    let (_, body) = edge.get("/routes").await;
    let routes: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rejected: Vec<&str> = routes["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    for (object, id, _, _) in EXPECTED {
        let named = format!("{object} {id}:");
        assert!(
            rejected.iter().any(|m| m.contains(&named)),
            "{named} in {rejected:?}"
        );
    }
    // r-ok is served on both addresses; r-v4-port is not on IPv6 alone.
    TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], ok_port)))
        .await
        .expect("the ipv4_required route is served on the IPv4");
    let refused = TcpStream::connect(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, v6_port)))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_on_the_control_socket_rejects_each_by_name() {
    let (ok_port, v6_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let toml = base(ok_port, v6_port).control(&socket, &dir.path().join("state"));
    let edge = Edge::spawn(&toml, &[]);
    let mut client = control_client(&socket).await;
    let response = client
        .push(PushRequest {
            source_version: 7,
            routing_json: serde_json::to_string(&spec(ok_port, v6_port)).unwrap(),
            format: 1,
            generation: 1,
            ..PushRequest::default()
        })
        .await
        .unwrap_or_else(|e| panic!("push: {e}; log:\n{}", edge.log()))
        .into_inner();
    assert!(!response.ack);
    assert_eq!(
        response.rejected.len(),
        EXPECTED.len(),
        "{:?}",
        response.rejected
    );
    for (object, id, reason, words) in EXPECTED {
        let r = response
            .rejected
            .iter()
            .find(|r| r.object_type == *object && r.object_id == *id)
            .unwrap_or_else(|| panic!("{object} {id} not in {:?}", response.rejected));
        assert_eq!(r.reason, *reason, "{r:?}");
        for w in *words {
            assert!(r.message.contains(w), "{:?} should say {w:?}", r.message);
        }
    }
    edge.wait_ready().await;
    assert_counted(&edge).await;

    // The same objects pushed again are still rejected, and not counted
    // twice.
    let again = client
        .push(PushRequest {
            source_version: 8,
            routing_json: serde_json::to_string(&spec(ok_port, v6_port)).unwrap(),
            format: 1,
            generation: 1,
            ..PushRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.rejected.len(), EXPECTED.len());
    assert_counted(&edge).await;
    assert_eq!(
        edge.metric("edge_routes_rejected", &[]).await,
        EXPECTED.len() as f64
    );
}

/// `edge_routes_rejected_total` has one count per expected rejection,
/// under its reason.
async fn assert_counted(edge: &Edge) {
    let metrics = edge.metrics().await;
    let mut reasons: Vec<&str> = EXPECTED.iter().map(|e| e.2).collect();
    reasons.dedup();
    for reason in reasons {
        let want = EXPECTED.iter().filter(|e| e.2 == reason).count() as f64;
        let got = edge_tests::edge::metric_value(
            &metrics,
            "edge_routes_rejected_total",
            &[("reason", reason)],
        );
        assert_eq!(got, want, "reason {reason}");
    }
}

/// A control client over the Unix socket, as edge-agent connects.
async fn control_client(path: &Path) -> ControlClient<tonic::transport::Channel> {
    let deadline = tokio::time::Instant::now() + edge_tests::PATIENCE;
    while !path.exists() {
        assert!(tokio::time::Instant::now() < deadline, "no control socket");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let path = path.to_owned();
    let channel = Endpoint::from_static("http://edge.control")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .expect("connect to the control socket");
    ControlClient::new(channel)
}
