//! Abuse limits under load: thousands of stalled hellos cost bounded
//! memory and are closed at the timeout; one IPv6 /64 (or IPv4 address)
//! shares one connection budget; descriptor exhaustion neither spins nor
//! kills the accept loop; a flood of rejections is counted in full and
//! logged at a bounded rate.

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edge_tests::captures;
use edge_tests::client::{closed_within, read_line, send_raw, tls_over, who_answers, Closed};
use edge_tests::edge::{edge_bin, get, metric_value, Edge, Toml};
use edge_tests::ports::LoAddr;
use edge_tests::site::{Shop, HOST};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// User + system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

async fn connect_from(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if source.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(to).await
}

async fn stalled_from(source: IpAddr, to: SocketAddr) -> TcpStream {
    let mut s = connect_from(source, to).await.expect("connect");
    s.write_all(&captures::CHROMIUM_PQ[..40])
        .await
        .expect("write");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_stalled_hellos_cost_bounded_memory_and_close_at_the_timeout() {
    let shop = Shop::new().await;
    let (ca, port) = (&shop.ca, shop.port);
    let toml = Toml::new()
        .limit("client_hello_timeout_ms", 8000)
        .limit("max_connections_per_source", 100_000);
    let edge = Edge::start(&shop.toml(toml, false)).await;
    let addr = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    // Warm up the runtime's threads and pools before the baseline.
    assert_eq!(who_answers(addr, HOST, ca).await.unwrap(), "web");
    let before = rss_kib(edge.pid());
    let mut stalls = Vec::with_capacity(5000);
    for i in 0..5000 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(&captures::CHROMIUM_PQ[..1 + i % 1500])
            .await
            .expect("write");
        stalls.push(s);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while edge.metric("edge_connections_active", &[]).await < 5000.0 {
        assert!(
            Instant::now() < deadline,
            "5,000 handshaking connections never open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let during = rss_kib(edge.pid());
    let per_conn = (during.saturating_sub(before)) as f64 / 5000.0;
    eprintln!(
        "stalled hellos: RSS {before} KiB -> {during} KiB with 5,000 open: {per_conn:.1} KiB each"
    );
    // A good client is served while they hang.
    assert_eq!(who_answers(addr, HOST, ca).await.unwrap(), "web");
    for s in &mut stalls {
        assert_eq!(
            closed_within(s, Duration::from_secs(15)).await,
            Closed::WithoutBytes
        );
    }
    assert_eq!(
        edge.metric(
            "edge_connections_rejected_total",
            &[("reason", "hello_timeout")]
        )
        .await,
        5000.0
    );
    assert!(per_conn < 64.0, "{per_conn:.1} KiB per stalled connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_in_one_ipv6_slash_64_and_one_ipv4_share_a_budget() {
    let a1 = LoAddr::add("fd00:e3::1");
    let a2 = LoAddr::add("fd00:e3::2");
    let other = LoAddr::add("fd00:e4::1");
    let shop = Shop::new().await;
    let (ca, port) = (&shop.ca, shop.port);
    let toml = Toml::new().limit("max_connections_per_source", 4);
    let edge = Edge::start(&shop.toml(toml, true)).await;
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let mut held = Vec::new();
    for source in [a1.addr, a1.addr, a2.addr, a2.addr] {
        held.push(stalled_from(IpAddr::V6(source), v6).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fifth = stalled_from(IpAddr::V6(a1.addr), v6).await;
    assert_eq!(
        closed_within(&mut fifth, Duration::from_secs(2)).await,
        Closed::WithoutBytes
    );
    assert_eq!(
        edge.metric(
            "edge_connections_rejected_total",
            &[("reason", "source_limit")]
        )
        .await,
        1.0
    );
    // Another /64 has its own budget.
    let tcp = connect_from(IpAddr::V6(other.addr), v6).await.unwrap();
    let mut tls = tls_over(tcp, HOST, ca).await.unwrap();
    assert_eq!(read_line(&mut tls).await.unwrap(), "web");

    // IPv4: per address (/32).
    let v4 = SocketAddr::from(([127, 0, 0, 1], port));
    let one: IpAddr = "127.0.0.1".parse().unwrap();
    for _ in 0..4 {
        held.push(stalled_from(one, v4).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = stalled_from(one, v4).await;
    assert_eq!(
        closed_within(&mut over, Duration::from_secs(2)).await,
        Closed::WithoutBytes
    );
    assert_eq!(
        edge.metric(
            "edge_connections_rejected_total",
            &[("reason", "source_limit")]
        )
        .await,
        2.0
    );
    let tcp = connect_from("127.0.0.2".parse().unwrap(), v4)
        .await
        .unwrap();
    let mut tls = tls_over(tcp, HOST, ca).await.unwrap();
    assert_eq!(read_line(&mut tls).await.unwrap(), "web");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_exhaustion_neither_spins_nor_kills_the_accept_loop() {
    let shop = Shop::new().await;
    let (ca, port) = (&shop.ca, shop.port);
    let toml = shop.toml(Toml::new(), false);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("edge.toml");
    std::fs::write(&config, toml.render()).unwrap();
    // 300 descriptors: the edge caps max_connections to fit, so the
    // descriptors are exhausted here by idle admin connections instead.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 300 && exec \"$0\" --config \"$1\"")
        .arg(edge_bin())
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("edge.log")).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(get(toml.admin, "/readyz").await, Ok((200, _))) {
        assert!(Instant::now() < deadline, "edge not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut idle = Vec::new();
    for _ in 0..320 {
        match TcpStream::connect(toml.admin).await {
            Ok(s) => idle.push(s),
            Err(_) => break,
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Public clients now queue in the backlog; accept() fails with EMFILE.
    let addr = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let waiting = tokio::spawn(TcpStream::connect(addr));
    let cpu_before = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = cpu_seconds(pid) - cpu_before;
    eprintln!("descriptor exhaustion: {cpu:.2} s of CPU in 2 s");
    assert!(child.try_wait().unwrap().is_none(), "the edge died");
    assert!(cpu < 0.5, "the accept loop spins: {cpu:.2} s CPU in 2 s");
    drop(idle);
    let _ = waiting.await;
    // Recovered: a real client is served and the exhaustion was counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(tag) = who_answers(addr, HOST, ca).await {
            assert_eq!(tag, "web");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after descriptors were freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = get(toml.admin, "/metrics").await.unwrap();
    assert!(
        metric_value(&metrics, "edge_accept_errors_total", &[]) > 0.0,
        "EMFILE counted"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_rejections_is_counted_in_full_and_logged_at_a_bounded_rate() {
    let shop = Shop::new().await;
    let edge = Edge::start(&shop.toml(Toml::new(), false)).await;
    let addr = shop.v6();
    for _ in 0..2000 {
        assert_eq!(
            send_raw(addr, b"GET / HTTP/1.1\r\n\r\n").await,
            Closed::WithoutBytes
        );
    }
    assert_eq!(
        edge.metric("edge_connections_rejected_total", &[("reason", "not_tls")])
            .await,
        2000.0
    );
    let lines = edge.log().lines().filter(|l| l.contains("not_tls")).count();
    let suppressed = edge.metric("edge_log_lines_suppressed_total", &[]).await;
    eprintln!("rejection flood: 2,000 rejections, {lines} log lines, {suppressed} suppressed");
    assert!(lines < 500, "{lines} log lines for 2,000 rejections");
    assert!(suppressed > 0.0);
}
