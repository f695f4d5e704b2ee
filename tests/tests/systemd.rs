//! `Type=notify`: the edge tells systemd `READY=1` (with its `MAINPID`)
//! once its listeners are bound, and pings `WATCHDOG=1` when the unit sets
//! `WatchdogSec`. A Unix datagram socket stands in for systemd. And the
//! unit's check before start fails only on a file the edge cannot run on.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use edge_tests::edge::{Edge, Route, Toml};
use edge_tests::ports::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_notifies_ready_with_its_pid_and_feeds_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let port = free_port();
    let toml = Toml::new()
        .policy("ipv6_extra_ports", &format!("[{port}]"))
        .env("acme/shop/prod", &["::1"], None, &[])
        .instance("i-1", "acme/shop/prod", "web", "::1")
        .route(Route::tls(
            "r-1",
            "acme/shop/prod",
            "shop.example.com",
            port,
            9,
        ));
    let notify = socket_path.to_str().unwrap();
    let edge = Edge::spawn_env(
        &toml,
        &[],
        &[("NOTIFY_SOCKET", notify), ("WATCHDOG_USEC", "200000")],
    );

    let mut buf = [0u8; 512];
    let n = systemd.recv(&mut buf).unwrap();
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(
        ready.contains(&format!("MAINPID={}", edge.pid())),
        "{ready}"
    );
    // READY comes after the listeners are bound.
    tokio::net::TcpStream::connect(("::1", port))
        .await
        .expect("listening when READY=1 arrives");

    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_millis(600) {
        let n = systemd.recv(&mut buf).unwrap();
        if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    assert!(pings >= 3, "WATCHDOG=1 every 100 ms: got {pings}");
}

/// The unit's `ExecStartPre=` command line, pointed at this build's binary
/// and at `config` instead of /etc/edge/edge.toml.
fn exec_start_pre(config: &std::path::Path) -> std::process::Command {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/edge.service"
    ))
    .unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPre="))
        .expect("edge.service has an ExecStartPre");
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some("/usr/bin/edge"), "{line}");
    let mut command = std::process::Command::new(edge_tests::edge::edge_bin());
    for word in words {
        if word == "/etc/edge/edge.toml" {
            command.arg(config);
        } else {
            command.arg(word);
        }
    }
    command
}

#[test]
fn the_check_before_start_passes_a_rejected_route_and_stops_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("edge.toml");
    let port = free_port();
    let toml = Toml::new()
        .policy("ipv6_extra_ports", &format!("[{port}]"))
        .env("acme/shop/prod", &["::1"], None, &[])
        .instance("i-1", "acme/shop/prod", "web", "::1")
        .route(Route::tls(
            "r-1",
            "acme/shop/prod",
            "shop.example.com",
            port,
            9,
        ))
        // A typo'd env: rejected by the policy, but the edge can run.
        .route(Route::tls(
            "r-typo",
            "acme/shop/prd",
            "typo.example.com",
            port,
            9,
        ));
    std::fs::write(&config, toml.render()).unwrap();
    let out = exec_start_pre(&config).output().unwrap();
    assert!(
        out.status.success(),
        "a rejected route blocks the start: {out:?}"
    );

    std::fs::write(&config, toml.render().replace("[limits]", "[limits")).unwrap();
    let out = exec_start_pre(&config).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "bad syntax stops the start: {out:?}"
    );
}
