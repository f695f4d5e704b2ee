//! Zero-downtime upgrade: a new edge process takes the listening sockets
//! over from the running one while a client opens connections at a steady
//! rate and a few long tunnels stay open. Nothing may fail: no refused or
//! reset connect, no broken tunnel. Then the same through SIGUSR2 (what the
//! systemd unit's ExecReload sends): the process starts its own successor.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_tests::client::{read_line, tls_connect, who_answers};
use edge_tests::edge::{Edge, KillOnDrop, Route, Toml};
use edge_tests::site::{Shop, HOST};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Opens a verified TLS connection every 5 ms until stopped; counts.
struct Load {
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(addr: SocketAddr, shop: Arc<Shop>) -> Load {
        let (ok, failed, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (o, f, s) = (ok.clone(), failed.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::SeqCst) {
                match who_answers(addr, HOST, &shop.ca).await {
                    Ok(tag) if tag == "web" => o.fetch_add(1, Ordering::SeqCst),
                    other => {
                        eprintln!("connection failed during upgrade: {other:?}");
                        f.fetch_add(1, Ordering::SeqCst)
                    }
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Load {
            ok,
            failed,
            stop,
            task,
        }
    }

    async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

async fn echo(tunnel: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>, text: &[u8]) {
    tunnel.write_all(text).await.unwrap();
    let mut back = vec![0u8; text.len()];
    tunnel.read_exact(&mut back).await.unwrap();
    assert_eq!(back, text);
}

async fn wait_for_log(edge: &Edge, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !edge.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{needle:?} not logged:\n{}",
            edge.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_takes_over_without_a_failed_connect_or_a_broken_tunnel() {
    let shop = Arc::new(Shop::new().await);
    let dir = tempfile::tempdir().unwrap();
    let base = Toml::new()
        .upgrade(&dir.path().join("upgrade.sock"))
        .limit("drain_timeout_ms", 60_000);
    let toml = shop.toml(base, false);
    let mut old = Edge::start(&toml).await;
    let (addr, ca) = (shop.v6(), &shop.ca);

    let mut tunnels = Vec::new();
    for _ in 0..3 {
        let mut t = tls_connect(addr, HOST, ca).await.unwrap();
        assert_eq!(read_line(&mut t).await.unwrap(), "web");
        tunnels.push(t);
    }
    let load = Load::start(addr, shop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The new process: same config, takes the sockets over.
    let new = Edge::spawn(&toml, &[]);
    wait_for_log(&new, "took over listeners").await;
    wait_for_log(&old, "the new edge is ready").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        old.wait_exit(Duration::ZERO).await.is_none(),
        "the old process drains its tunnels"
    );
    for (i, t) in tunnels.iter_mut().enumerate() {
        echo(t, format!("tunnel {i} after the upgrade").as_bytes()).await;
    }
    let (ok, failed) = load.stop().await;
    eprintln!("upgrade: {ok} connections succeeded, {failed} failed, 3 long tunnels kept");
    assert_eq!(failed, 0);
    assert!(ok >= 20, "the load kept running: {ok}");

    // Closing the tunnels lets the old process finish its drain and exit 0.
    for t in &mut tunnels {
        t.shutdown().await.unwrap();
    }
    let status = old
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("old edge exits once drained");
    assert!(status.success());
    assert_eq!(who_answers(addr, HOST, ca).await.unwrap(), "web");
    assert_eq!(
        new.get("/healthz").await.0,
        200,
        "the admin listener moved too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_starts_a_successor_that_takes_over() {
    let shop = Arc::new(Shop::new().await);
    let dir = tempfile::tempdir().unwrap();
    let toml = shop.toml(Toml::new().upgrade(&dir.path().join("upgrade.sock")), false);
    let mut edge = Edge::start(&toml).await;
    let (addr, ca) = (shop.v6(), &shop.ca);
    let load = Load::start(addr, shop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;

    edge.signal("USR2");
    let status = edge
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the old process exits after the handoff");
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed) = load.stop().await;
    eprintln!("SIGUSR2 upgrade: {ok} connections succeeded, {failed} failed");
    let successor = KillOnDrop(edge.successor_pid().await);
    let served = who_answers(addr, HOST, ca).await;
    drop(successor);
    assert_eq!(failed, 0);
    assert!(ok > 10, "{ok}");
    assert_eq!(served.unwrap(), "web", "the successor serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_the_new_table_does_not_need_are_closed_and_versions_go_on() {
    let shop = Arc::new(Shop::new().await);
    let dir = tempfile::tempdir().unwrap();
    let dropped_port = edge_tests::ports::free_port();
    let base = Toml::new().upgrade(&dir.path().join("upgrade.sock"));
    let new_toml = shop.toml(base.clone(), false);
    // The old process also serves a route on a second port.
    let env = edge_tests::site::ENV;
    let old_toml = base
        .policy(
            "ipv6_extra_ports",
            &format!("[{}, {dropped_port}]", shop.port),
        )
        .env(env, &["::1"], None, &[])
        .instance("i-1", env, "web", "::1")
        .route(Route::tls(
            "r-shop",
            env,
            HOST,
            shop.port,
            shop.backend.addr.port(),
        ))
        .route(Route::tls(
            "r-old",
            env,
            "old.example.com",
            dropped_port,
            shop.backend.addr.port(),
        ));
    let dropped = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, dropped_port));
    let old = Edge::start(&old_toml).await;
    old.reload(&old_toml).await;
    old.reload(&old_toml).await;
    let old_version = old.version().await;
    assert_eq!(old_version, 3);
    tokio::net::TcpStream::connect(dropped).await.unwrap();

    let new = Edge::spawn(&new_toml, &[]);
    wait_for_log(
        &new,
        "closing an inherited listener the table does not need",
    )
    .await;
    wait_for_log(&old, "the new edge is ready").await;
    // The old process closes its copies at once: the pair refuses.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match tokio::net::TcpStream::connect(dropped).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            other => assert!(
                Instant::now() < deadline,
                "{dropped} still accepts after the handoff: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(who_answers(shop.v6(), HOST, &shop.ca).await.unwrap(), "web");
    assert!(
        new.log().contains(&format!("version={}", old_version + 1)),
        "the new process continues after version {old_version}:\n{}",
        new.log()
    );
    new.wait_ready().await;
    assert_eq!(new.version().await, old_version + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigusr2_the_old_process_refuses_control_calls_and_pushes_reach_the_new_one() {
    use edge_tests::control::{routing, Control, Push};
    let dir = tempfile::tempdir().unwrap();
    let port = edge_tests::ports::free_port();
    let socket = dir.path().join("control.sock");
    let toml = Toml::new()
        .upgrade(&dir.path().join("upgrade.sock"))
        .control(&socket, &dir.path().join("state"))
        .policy("ipv6_extra_ports", &format!("[{port}]"));
    let mut edge = Edge::spawn(&toml, &[]);
    let control = Control::new(&socket);
    control.wait_up().await;
    let first = control
        .push(&Push::new(
            routing(&[("r-a", "a.example.com", port)], 9),
            1,
            1,
        ))
        .await
        .unwrap();
    let mut to_old = control.connect_once().await;
    to_old
        .status(edge_proto::control::StatusRequest {})
        .await
        .expect("the old process answers before the upgrade");

    edge.signal("USR2");
    let _successor = KillOnDrop(edge.successor_pid().await);
    wait_for_log(&edge, "the new edge is ready").await;
    let handed_over = Instant::now();

    // A push on the connection to the old process fails...
    let second = Push::new(routing(&[("r-b", "b.example.com", port)], 9), 1, 2);
    let on_old = edge_tests::control::push_on(&mut to_old, &second).await;
    assert!(
        on_old.is_err(),
        "the old process answered a push after the handoff: {on_old:?}"
    );
    // ... and, reconnecting as the agent does, it lands on the new one.
    let landed = loop {
        match control.push(&second).await {
            Ok(r) => break r,
            Err(e) => assert!(
                handed_over.elapsed() < Duration::from_secs(2),
                "no push landed within 2 s of the handoff: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "a push landed on the new process {:?} after the handoff",
        handed_over.elapsed()
    );
    assert!(landed.ack);
    assert!(landed.table_version > first.table_version);
    let status = edge
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the old process exits after the handoff");
    assert!(status.success());
    assert_eq!(
        edge_tests::control::route_ids(&edge.get("/routes").await.1),
        ["r-b"],
        "the new process serves the pushed table"
    );
}
