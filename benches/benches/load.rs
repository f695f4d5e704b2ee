//! Load harness: the edge against HAProxy (Debian's package) on one
//! machine, in one run, with the same two SNI routes. Each proxy is pinned
//! to core 1 (`taskset -c 1`); this process (load generator and backends)
//! pins itself to core 0. For each proxy it prints, with edge/HAProxy
//! ratios (medians of 3 where it repeats):
//! (a) connections/s and proxy CPU us per connection: each connection
//!     sends a replayed real ClientHello (curl's) to a backend that answers
//!     3 bytes and closes (no crypto in the loop);
//! (b) p50/p99 connect-to-first-byte latency;
//! (c) bulk GB/s through 1 and 8 tunnels;
//! (d) RSS KiB per idle established tunnel;
//! (e) (a) with PROXY v2 on;
//! and which core was saturated in each phase.
//!
//! `cargo bench -p edge-benches --bench load` (installs nothing: HAProxy
//! must be on PATH; `.ci/run` does not run this). docs/benchmarks.md.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_benches::{percentile, release_binaries};
use edge_tests::edge::{Route, Toml};
use edge_tests::ports::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CURL_HELLO: &[u8] = include_bytes!("../../tls-peek/testdata/curl-openssl3.bin"); // SNI shop.example.com
const ENV: &str = "acme/bench/prod";
const RUN: Duration = Duration::from_secs(4);
const CONCURRENCY: usize = 32;
const IDLE_TUNNELS: usize = 9_000;

fn main() {
    release_binaries();
    let (_, hard) = rlimit::Resource::NOFILE.get().unwrap();
    rlimit::Resource::NOFILE.set(hard, hard).unwrap();
    let pinned = Command::new("taskset")
        .args(["-pc", "0", &std::process::id().to_string()])
        .output();
    assert!(
        pinned.map(|o| o.status.success()).unwrap_or(false),
        "taskset (util-linux) is needed"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench());
}

/// A backend that reads once, answers `ok\n` and closes.
async fn answering_backend() -> SocketAddr {
    let l = TcpListener::bind("[::1]:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"ok\n").await;
            });
        }
    });
    addr
}

/// A backend that discards everything until EOF.
async fn sink_backend() -> SocketAddr {
    let l = TcpListener::bind("[::1]:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// The curl capture re-addressed to `bulk.example.com` (same length).
fn bulk_hello() -> Vec<u8> {
    let mut h = CURL_HELLO.to_vec();
    let at = h
        .windows(16)
        .position(|w| w == b"shop.example.com")
        .unwrap();
    h[at..at + 16].copy_from_slice(b"bulk.example.co1");
    h
}

struct Proxy {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_edge(answer: SocketAddr, sink: SocketAddr, proxy_v2: bool, cores: &str) -> Proxy {
    let port = free_port();
    let mut shop = Route::tls("r-shop", ENV, "shop.example.com", port, answer.port());
    if proxy_v2 {
        shop = shop.proxy_protocol();
    }
    let toml = Toml::new()
        .policy("ipv6_extra_ports", &format!("[{port}]"))
        .env(ENV, &["::1"], None, &[])
        .instance("i-1", ENV, "web", "::1")
        .route(shop)
        .route(Route::tls(
            "r-bulk",
            ENV,
            "bulk.example.co1",
            port,
            sink.port(),
        ));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("edge.toml");
    std::fs::write(&config, toml.render()).unwrap();
    let child = Command::new("taskset")
        .args(["-c", cores])
        .arg(std::env::var("EDGE_BIN").unwrap())
        .arg("--config")
        .arg(&config)
        .env("EDGE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(toml.admin);
    Proxy {
        name: "edge",
        child,
        addr: SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        _dir: dir,
    }
}

fn start_haproxy(answer: SocketAddr, sink: SocketAddr, proxy_v2: bool) -> Proxy {
    let port = free_port();
    let pp = if proxy_v2 { " send-proxy-v2" } else { "" };
    let cfg = format!(
        "global\n  nbthread 1\n  maxconn 9500\n\ndefaults\n  mode tcp\n  timeout connect 3s\n  timeout client 1h\n  timeout server 1h\n\n\
         frontend fe\n  bind [::1]:{port}\n  tcp-request inspect-delay 5s\n  tcp-request content accept if {{ req_ssl_hello_type 1 }}\n  \
         use_backend shop if {{ req_ssl_sni -i shop.example.com }}\n  use_backend bulk if {{ req_ssl_sni -i bulk.example.co1 }}\n\n\
         backend shop\n  server s1 [::1]:{}{pp}\n\nbackend bulk\n  server s1 [::1]:{}\n",
        answer.port(),
        sink.port()
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("haproxy.cfg");
    std::fs::write(&config, cfg).unwrap();
    let child = Command::new("taskset")
        .args(["-c", "1", "haproxy", "-db", "-f"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy on PATH (apt-get install haproxy)");
    let addr = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "haproxy did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Proxy {
        name: "haproxy",
        child,
        addr,
        _dir: dir,
    }
}

/// Polls `/readyz` with a blocking HTTP request (callers are inside the
/// async runtime's thread, so no nested runtime).
fn wait_ready(admin: SocketAddr) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = std::net::TcpStream::connect(admin).and_then(|mut s| {
            s.write_all(b"GET /readyz HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out.starts_with("HTTP/1.1 200"))
        });
        if matches!(ready, Ok(true)) {
            return;
        }
        assert!(Instant::now() < deadline, "edge not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    (f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()) as f64 / 100.0
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

struct Cps {
    per_sec: f64,
    cpu_us: f64,
    p50_us: f64,
    p99_us: f64,
    gen_util: f64,
    proxy_util: f64,
}

/// (a)/(b)/(e): connections through `proxy` for [`RUN`].
async fn cps(proxy: &Proxy) -> Cps {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + RUN;
    let (cpu0, gen0) = (
        cpu_seconds(proxy.child.id()),
        cpu_seconds(std::process::id()),
    );
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (addr, done) = (proxy.addr, done.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < until {
                let t = Instant::now();
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    continue;
                };
                let _ = s.set_nodelay(true);
                if s.write_all(CURL_HELLO).await.is_err() {
                    continue;
                }
                let mut buf = [0u8; 16];
                if matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                    lat.push(t.elapsed().as_micros() as u64);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    let (cpu, gen) = (
        cpu_seconds(proxy.child.id()) - cpu0,
        cpu_seconds(std::process::id()) - gen0,
    );
    lat.sort_unstable();
    let n = done.load(Ordering::Relaxed) as f64;
    Cps {
        per_sec: n / secs,
        cpu_us: cpu * 1e6 / n,
        p50_us: percentile(&lat, 50.0) as f64,
        p99_us: percentile(&lat, 99.0) as f64,
        gen_util: gen / secs,
        proxy_util: cpu / secs,
    }
}

/// (c): GB/s through `tunnels` concurrent tunnels to the sink.
async fn bulk(proxy: &Proxy, tunnels: usize) -> (f64, f64, f64) {
    let moved = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + RUN;
    let (cpu0, gen0) = (
        cpu_seconds(proxy.child.id()),
        cpu_seconds(std::process::id()),
    );
    let started = Instant::now();
    let mut ws = Vec::new();
    for _ in 0..tunnels {
        let (addr, moved) = (proxy.addr, moved.clone());
        ws.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&bulk_hello()).await.unwrap();
            let chunk = vec![0u8; 256 * 1024];
            while Instant::now() < until {
                s.write_all(&chunk).await.unwrap();
                moved.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    for w in ws {
        w.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let (cpu, gen) = (
        cpu_seconds(proxy.child.id()) - cpu0,
        cpu_seconds(std::process::id()) - gen0,
    );
    (
        moved.load(Ordering::Relaxed) as f64 / secs / 1e9,
        gen / secs,
        cpu / secs,
    )
}

/// (d): KiB of proxy RSS per idle established tunnel.
async fn idle_rss(proxy: &Proxy) -> f64 {
    let before = rss_kib(proxy.child.id());
    let hello = bulk_hello();
    let mut held = Vec::with_capacity(IDLE_TUNNELS);
    for _ in 0..IDLE_TUNNELS {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(&hello).await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(proxy.child.id());
    drop(held);
    (after.saturating_sub(before)) as f64 / IDLE_TUNNELS as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn saturated(gen: f64, proxy: f64) -> &'static str {
    if gen >= proxy {
        "core 0 (load generator)"
    } else {
        "core 1 (proxy)"
    }
}

async fn bench() {
    let (answer, sink) = (answering_backend().await, sink_backend().await);
    println!("| figure | edge | haproxy | edge/haproxy |\n|---|---|---|---|");
    let mut rows: Vec<(String, f64, f64)> = Vec::new();
    for pp in [false, true] {
        let mut by: Vec<Vec<Cps>> = Vec::new();
        for which in ["edge", "haproxy"] {
            let p = if which == "edge" {
                start_edge(answer, sink, pp, "1")
            } else {
                start_haproxy(answer, sink, pp)
            };
            let mut runs = Vec::new();
            for _ in 0..3 {
                runs.push(cps(&p).await);
            }
            eprintln!(
                "{} (PROXY v2 {pp}): saturated {}",
                p.name,
                saturated(
                    median(runs.iter().map(|r| r.gen_util).collect()),
                    median(runs.iter().map(|r| r.proxy_util).collect())
                )
            );
            by.push(runs);
        }
        let tag = if pp { " (PROXY v2)" } else { "" };
        let m = |i: usize, f: fn(&Cps) -> f64| median(by[i].iter().map(f).collect());
        rows.push((
            format!("connections/s{tag}"),
            m(0, |r| r.per_sec),
            m(1, |r| r.per_sec),
        ));
        rows.push((
            format!("proxy CPU us per connection{tag}"),
            m(0, |r| r.cpu_us),
            m(1, |r| r.cpu_us),
        ));
        rows.push((
            format!("p50 latency us{tag}"),
            m(0, |r| r.p50_us),
            m(1, |r| r.p50_us),
        ));
        rows.push((
            format!("p99 latency us{tag}"),
            m(0, |r| r.p99_us),
            m(1, |r| r.p99_us),
        ));
    }
    for tunnels in [1, 8] {
        let e = start_edge(answer, sink, false, "1");
        let (ge, gu, pu) = bulk(&e, tunnels).await;
        eprintln!("edge bulk x{tunnels}: saturated {}", saturated(gu, pu));
        drop(e);
        let h = start_haproxy(answer, sink, false);
        let (gh, gu, pu) = bulk(&h, tunnels).await;
        eprintln!("haproxy bulk x{tunnels}: saturated {}", saturated(gu, pu));
        rows.push((format!("bulk GB/s, {tunnels} tunnel(s)"), ge, gh));
    }
    let e = start_edge(answer, sink, false, "1");
    let ie = idle_rss(&e).await;
    drop(e);
    let h = start_haproxy(answer, sink, false);
    let ih = idle_rss(&h).await;
    drop(h);
    rows.push((format!("RSS KiB per idle tunnel ({IDLE_TUNNELS})"), ie, ih));
    let e2 = start_edge(answer, sink, false, "0,1");
    let two = median(vec![
        cps(&e2).await.per_sec,
        cps(&e2).await.per_sec,
        cps(&e2).await.per_sec,
    ]);
    drop(e2);
    rows.push((
        "edge connections/s on 2 cores (generator shares core 0)".into(),
        two,
        f64::NAN,
    ));
    for (name, e, h) in rows {
        println!("| {name} | {e:.2} | {h:.2} | {:.2} |", e / h);
    }
}
