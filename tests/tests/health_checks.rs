//! The edge's active health checks of a route's `health_source`: a backend
//! whose health port closes is taken out within interval x fall while the
//! others keep serving, and comes back within interval x rise; the panic
//! rule keeps a route served when every probe fails but the platform says
//! the instances are up; state survives a reload, and an instance's series
//! go with it. Instances get overlay addresses on `lo` (fd00:e1::/64).

use std::net::SocketAddr;
use std::time::Duration;

use edge_tests::backend::{Backend, Mode};
use edge_tests::ca::TestCa;
use edge_tests::client::who_answers;
use edge_tests::edge::{Edge, Route, Toml};
use edge_tests::ports::{free_port, LoAddr};

const ENV: &str = "acme/shop/prod";
const HOST: &str = "shop.example.com";
const INTERVAL_MS: u64 = 200;
const RISE: u64 = 2;
const FALL: u64 = 3;
/// Slack on top of a detection bound for a loaded CI machine: the probe's
/// jitter (10%), the /routes polling and scheduling delays.
const SLACK: Duration = Duration::from_millis(1_500);

fn health(interval_ms: u64) -> String {
    format!("[health]\ninterval_ms = {interval_ms}\ntimeout_ms = {interval_ms}\nrise = {RISE}\nfall = {FALL}\n")
}

fn health_source(port: u16) -> String {
    format!("health_source = {{ process_type = \"web\", port = {port} }}\n")
}

/// Who answers `n` clients in a row.
async fn answers(addr: SocketAddr, ca: &TestCa, n: usize) -> Vec<String> {
    let mut who = Vec::with_capacity(n);
    for _ in 0..n {
        who.push(who_answers(addr, HOST, ca).await.expect("client served"));
    }
    who
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_health_port_takes_the_backend_out_and_back() {
    let a = LoAddr::add("fd00:e1::401");
    let b = LoAddr::add("fd00:e1::402");
    let ca = TestCa::new();
    let (backend_port, health_port, port) = (free_port(), free_port(), free_port());
    let tls = || Mode::Tls(ca.server_config(&[HOST]));
    let _web_a = Backend::start(SocketAddr::from((a.addr, backend_port)), "a", tls(), false).await;
    let _web_b = Backend::start(SocketAddr::from((b.addr, backend_port)), "b", tls(), false).await;
    let health_a = Backend::start(
        SocketAddr::from((a.addr, health_port)),
        "ha",
        Mode::Tcp,
        false,
    )
    .await;
    let _health_b = Backend::start(
        SocketAddr::from((b.addr, health_port)),
        "hb",
        Mode::Tcp,
        false,
    )
    .await;
    let toml = Toml::new()
        .policy("ipv6_extra_ports", &format!("[{port}]"))
        .env(ENV, &["::1"], None, &[])
        .instance("i-a", ENV, "web", &a.addr.to_string())
        .instance("i-b", ENV, "web", &b.addr.to_string())
        .route(Route::tls("r-shop", ENV, HOST, port, backend_port))
        .append(&health_source(health_port))
        .append(&health(INTERVAL_MS));
    let edge = Edge::start(&toml).await;
    let addr = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let patience = Duration::from_secs(20);
    edge.wait_backend_state("r-shop", "i-a", "serving", patience)
        .await;
    // Both serve while both health ports answer.
    let who = answers(addr, &ca, 40).await;
    assert!(
        who.iter().any(|w| w == "a") && who.iter().any(|w| w == "b"),
        "{who:?}"
    );
    // Let a few probes of i-a succeed so its checker is settled.
    tokio::time::sleep(Duration::from_millis(3 * INTERVAL_MS)).await;

    drop(health_a);
    let detection = edge
        .wait_backend_state("r-shop", "i-a", "down", patience)
        .await;
    let (_, why) = edge.backend_state("r-shop", "i-a").await.unwrap();
    assert!(why.starts_with("health_check_down"), "{why}");
    let bound = Duration::from_millis(INTERVAL_MS * FALL) + SLACK;
    assert!(
        detection <= bound,
        "taken out after {detection:?} (bound {bound:?})"
    );
    assert_eq!(
        answers(addr, &ca, 30).await,
        vec!["b"; 30],
        "i-b serves alone"
    );
    assert!(edge.log().contains("health check down"), "one log line");

    let _health_a = Backend::start(
        SocketAddr::from((a.addr, health_port)),
        "ha",
        Mode::Tcp,
        false,
    )
    .await;
    let recovery = edge
        .wait_backend_state("r-shop", "i-a", "serving", patience)
        .await;
    let bound = Duration::from_millis(INTERVAL_MS * RISE) + SLACK;
    assert!(
        recovery <= bound,
        "back after {recovery:?} (bound {bound:?})"
    );
    let who = answers(addr, &ca, 40).await;
    assert!(who.iter().any(|w| w == "a"), "i-a serves again: {who:?}");
    eprintln!("MEASURED detection={detection:?} recovery={recovery:?} interval={INTERVAL_MS}ms rise={RISE} fall={FALL}");

    let changes = edge
        .metric("edge_health_state_changes_total", &[("instance", "i-a")])
        .await;
    assert_eq!(changes, 2.0, "down, then up");
    assert!(
        edge.metric("edge_health_probe_failures_total", &[("instance", "i-a")])
            .await
            >= FALL as f64
    );
    assert_eq!(
        edge.metric("edge_health_probe_failures_total", &[("instance", "i-b")])
            .await,
        0.0
    );
    assert_eq!(
        edge.metric("edge_connections_rejected_total", &[]).await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_probe_failing_while_the_platform_says_up_is_a_panic_not_an_outage() {
    let a = LoAddr::add("fd00:e1::411");
    let b = LoAddr::add("fd00:e1::412");
    let ca = TestCa::new();
    // Nothing listens on the health port: every probe fails.
    let (backend_port, health_port, port) = (free_port(), free_port(), free_port());
    let tls = || Mode::Tls(ca.server_config(&[HOST]));
    let web_a = Backend::start(SocketAddr::from((a.addr, backend_port)), "a", tls(), false).await;
    let web_b = Backend::start(SocketAddr::from((b.addr, backend_port)), "b", tls(), false).await;
    let toml = Toml::new()
        .policy("ipv6_extra_ports", &format!("[{port}]"))
        .env(ENV, &["::1"], None, &[])
        .instance("i-a", ENV, "web", &a.addr.to_string())
        .instance("i-b", ENV, "web", &b.addr.to_string())
        .route(Route::tls("r-shop", ENV, HOST, port, backend_port))
        .append(&health_source(health_port))
        .append(&health(INTERVAL_MS));
    let edge = Edge::start(&toml).await;
    let patience = Duration::from_secs(20);
    for i in ["i-a", "i-b"] {
        let deadline = tokio::time::Instant::now() + patience;
        while edge
            .metric("edge_health_state_changes_total", &[("instance", i)])
            .await
            < 1.0
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{i} never went down"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (state, why) = edge.backend_state("r-shop", "i-a").await.unwrap();
    assert_eq!(state, "serving", "{why}");
    assert!(why.starts_with("panic"), "{why}");

    let addr = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let who = answers(addr, &ca, 40).await;
    assert!(
        who.iter().any(|w| w == "a") && who.iter().any(|w| w == "b"),
        "under the panic rule every platform-healthy instance serves: {who:?}"
    );
    assert_eq!(web_a.accepted() + web_b.accepted(), 40);
    assert!(edge.metric("edge_health_panic_total", &[]).await >= 40.0);
    assert!(edge.log().contains("panic rule"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_state_survives_a_reload_and_leaves_with_its_instance() {
    let a = LoAddr::add("fd00:e1::403");
    let b = LoAddr::add("fd00:e1::404");
    let (backend_port, health_port, port) = (free_port(), free_port(), free_port());
    // A very slow recovery: once down, i-a stays down for the whole test
    // unless a reload reset it.
    let slow = "[health]\ninterval_ms = 200\ntimeout_ms = 200\nrise = 1000\nfall = 2\n";
    let _health_b = Backend::start(
        SocketAddr::from((b.addr, health_port)),
        "hb",
        Mode::Tcp,
        false,
    )
    .await;
    let base = || {
        Toml::new()
            .policy("ipv6_extra_ports", &format!("[{port}]"))
            .env(ENV, &["::1"], None, &[])
            .instance("i-b", ENV, "web", &b.addr.to_string())
    };
    let with_a = |t: Toml| t.instance("i-a", ENV, "web", &a.addr.to_string());
    let route = |t: Toml, id: &str, host: &str| {
        t.route(Route::tls(id, ENV, host, port, backend_port))
            .append(&health_source(health_port))
    };
    let mut toml = route(with_a(base()), "r-shop", HOST).append(slow);
    let edge = Edge::start(&toml).await;
    let patience = Duration::from_secs(20);
    edge.wait_backend_state("r-shop", "i-a", "down", patience)
        .await;

    // A reload that keeps i-a (and adds a route): i-a is still down.
    toml = route(
        route(with_a(base()), "r-shop", HOST),
        "r-more",
        "more.example.com",
    )
    .append(slow);
    edge.reload(&toml).await;
    let (state, why) = edge.backend_state("r-more", "i-a").await.unwrap();
    assert_eq!(state, "down", "{why}");
    assert_eq!(edge.backend_state("r-shop", "i-a").await.unwrap().0, "down");
    assert!(
        edge.metric("edge_health_probes_total", &[("instance", "i-a")])
            .await
            >= 2.0
    );

    // A reload without i-a: its series are gone, i-b's stay.
    toml = route(base(), "r-shop", HOST).append(slow);
    edge.reload(&toml).await;
    let metrics = edge.metrics().await;
    assert!(!metrics.contains("instance=\"i-a\""), "{metrics}");
    assert!(
        metrics.contains("edge_health_probes_total{instance=\"i-b\"}"),
        "{metrics}"
    );
    assert_eq!(edge.metric("edge_health_targets", &[]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_cost_instances_over_interval_however_many_routes_share_them() {
    let (instances, interval_ms) = (50, 500);
    let rate = probe_rate(1, instances, 10_000, interval_ms, None).await;
    let expected = instances as f64 * 1000.0 / interval_ms as f64;
    eprintln!("MEASURED probes_per_second={rate:.1} expected={expected} ({instances} instances, 10000 routes, interval {interval_ms} ms)");
    assert!(
        (0.8 * expected..=1.2 * expected).contains(&rate),
        "{rate:.1} probes/s for {instances} instances every {interval_ms} ms (expected {expected})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_probes_per_second_caps_the_probes() {
    // 50 targets every 500 ms would be 100 probes/s; the cap is 20.
    let rate = probe_rate(2, 50, 50, 500, Some(20)).await;
    eprintln!("MEASURED capped probes_per_second={rate:.1} cap=20");
    assert!(
        (14.0..=22.0).contains(&rate),
        "{rate:.1} probes/s under a cap of 20"
    );
}

/// Probes per second counted at the health ports of `instances` instances
/// shared by `routes` routes (over 4 s, after the first interval). `block`
/// keeps tests' overlay addresses apart.
async fn probe_rate(
    block: u16,
    instances: usize,
    routes: usize,
    interval_ms: u64,
    cap: Option<u32>,
) -> f64 {
    let (backend_port, health_port, port) = (free_port(), free_port(), free_port());
    let addrs: Vec<LoAddr> = (0..instances)
        .map(|i| LoAddr::add(&format!("fd00:e1::{block}:{:x}", i + 1)))
        .collect();
    let mut listeners = Vec::with_capacity(instances);
    let mut toml = Toml::new()
        .policy("ipv6_extra_ports", &format!("[{port}]"))
        .env(ENV, &["::1"], None, &[]);
    for (i, a) in addrs.iter().enumerate() {
        let at = SocketAddr::from((a.addr, health_port));
        listeners.push(Backend::start(at, "h", Mode::Tcp, false).await);
        toml = toml.instance(&format!("i-{i}"), ENV, "web", &a.addr.to_string());
    }
    for r in 0..routes {
        let host = format!("r{r}.example.com");
        toml = toml
            .route(Route::tls(
                &format!("r-{r}"),
                ENV,
                &host,
                port,
                backend_port,
            ))
            .append(&health_source(health_port));
    }
    let mut health = format!("[health]\ninterval_ms = {interval_ms}\ntimeout_ms = {interval_ms}\n");
    if let Some(cap) = cap {
        health.push_str(&format!("max_probes_per_second = {cap}\n"));
    }
    let edge = Edge::start(&toml.append(&health)).await;
    assert_eq!(edge.metric("edge_routes", &[]).await, routes as f64);
    assert_eq!(
        edge.metric("edge_health_targets", &[]).await,
        instances as f64
    );

    // Past the first (randomly phased) interval, count for 4 s.
    tokio::time::sleep(Duration::from_millis(2 * interval_ms)).await;
    let count = |l: &[Backend]| l.iter().map(Backend::accepted).sum::<usize>();
    let before = count(&listeners);
    let window = Duration::from_secs(4);
    tokio::time::sleep(window).await;
    let probes = count(&listeners) - before;
    if cap.is_none() {
        for (i, l) in listeners.iter().enumerate() {
            assert!(
                l.accepted() >= 4,
                "instance {i} probed {} times",
                l.accepted()
            );
        }
    }
    probes as f64 / window.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_are_dialled_like_backends_from_the_overlay_source() {
    let instance = LoAddr::add("fd00:e1::405");
    let source = LoAddr::add("fd00:e1::406");
    let (backend_port, health_port, port) = (free_port(), free_port(), free_port());
    let probed = Backend::start(
        SocketAddr::from((instance.addr, health_port)),
        "h",
        Mode::Tcp,
        false,
    )
    .await;
    // The first lines of the body still belong to `[overlay]`.
    let toml = Toml::new()
        .append(&format!("source = \"{}\"", source.addr))
        .policy("ipv6_extra_ports", &format!("[{port}]"))
        .env(ENV, &["::1"], None, &[])
        .instance("i-a", ENV, "web", &instance.addr.to_string())
        .route(Route::tls("r-shop", ENV, HOST, port, backend_port))
        .append(&health_source(health_port))
        .append(&health(INTERVAL_MS));
    let edge = Edge::start(&toml).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while probed.accepted() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no probes; log:\n{}",
            edge.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let peers: Vec<std::net::IpAddr> = probed.seen().iter().map(|s| s.peer.ip()).collect();
    assert!(
        peers
            .iter()
            .all(|p| *p == std::net::IpAddr::V6(source.addr)),
        "probes come from overlay.source: {peers:?}"
    );
}
