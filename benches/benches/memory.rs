//! Memory harness: every memory figure of issue 13, each on a fresh proxy
//! process pinned to core 1 (`taskset -c 1`; this process, the clients and
//! the backend, pins itself to core 0), the edge in its release build.
//! RSS is `VmRSS` of `/proc/PID/status` (KiB; MB below are 10^6 bytes).
//!
//! `cargo bench -p edge-benches --bench memory [-- idle stalled routes push]`
//! (phases to run; all by default). It needs `taskset`, and HAProxy,
//! nginx and sniproxy on PATH (`apt-get install haproxy nginx sniproxy`).
//! It prints a line per measurement as it goes, then a table: figure |
//! edge | haproxy | nginx | sniproxy | target | met/missed (the target is
//! the edge's; peers are measured alike for comparison).
//!
//! The figures:
//!
//! - **idle**: RSS per idle tunnel. A fresh proxy takes one warm-up
//!   tunnel (closed again), then its RSS is read (*before*); 9,000 tunnels
//!   are opened 256 at a time from 24 IPv4 sources (127.0.0.2-25) to the
//!   proxy on 127.0.0.1. Each tunnel sends curl's real ClientHello and
//!   reads the backend's 3-byte answer (the backend answers like a TLS
//!   server, then holds the connection idle) before it counts; 1 s after
//!   the last one RSS is read again (*after*). Figure: (after - before) / n
//!   in KiB, with every tunnel checked still open. Target <= 1.6 KiB.
//! - **stalled**: RSS per stalled handshake. As above, but 3,000
//!   connections each send the first half of the ClientHello and stop;
//!   RSS 1 s after the last (every proxy waits 30 s for a hello, so none
//!   has been timed out: checked). Target < 4 KiB.
//! - **routes**: RSS per route. The edge started on an `edge.toml` of 10
//!   TLS routes, then a fresh one on 100,000 (distinct hostnames, 4 envs,
//!   one listener); RSS 1 s after /readyz first answers 200 (the time to
//!   ready is printed); figure: (RSS(100,000) - RSS(10)) / 99,990 in bytes.
//!   Target < 300 B.
//! - **push**: 1,000,000 routes pushed through the control socket in one
//!   `Push` (the JSON must fit the edge's 256 MiB gRPC message cap: its
//!   size is printed). The edge starts with `[control]` and one route of
//!   its own; while the push runs VmRSS is sampled every 5 ms in a thread;
//!   RSS is read 2 s after the ACK (*after*), and the peak is the higher
//!   of the highest sample and VmHWM (the process's high-water mark since
//!   it started, which also catches a spike between samples). Targets:
//!   after < 500 MB, peak < 2x after. Also printed: RSS per pushed route,
//!   (after - before) / 1,000,000.
//!
//! Each proxy may take 9,800 connections (the edge's `max_connections`
//! and `max_connections_per_source`, HAProxy's `maxconn`, nginx's
//! `worker_connections` for both legs): the hard `RLIMIT_NOFILE` here is
//! 20,000 and a tunnel holds two descriptors in the proxy (and two in this
//! process, client and backend), so 9,000 tunnels is what fits.

use std::process::Command;
use std::time::{Duration, Instant};

use edge_benches::memory::clients::{self, Backend};
use edge_benches::memory::proxies::{self, PEERS};
use edge_benches::memory::rss::{self, Sampler};
use edge_benches::memory::tables;
use edge_benches::start_pinned_harness;
use edge_proto::control::PushRequest;
use edge_tests::control::Control;
use edge_tests::edge::metric_value;
use edge_tests::ports::free_port;

const IDLE_TUNNELS: usize = 9_000;
const STALLED: usize = 3_000;
const FEW_ROUTES: usize = 10;
const MANY_ROUTES: usize = 100_000;
const PUSHED_ROUTES: usize = 1_000_000;
/// The edge's gRPC message cap on the control socket.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

struct Row {
    figure: String,
    /// edge, haproxy, nginx, sniproxy.
    cells: [String; 4],
    target: &'static str,
    met: Option<bool>,
}

impl Report {
    fn row(
        &mut self,
        figure: impl Into<String>,
        cells: [String; 4],
        target: &'static str,
        met: Option<bool>,
    ) {
        self.rows.push(Row {
            figure: figure.into(),
            cells,
            target,
            met,
        });
    }

    fn print(&self) {
        println!("\n| figure | edge | haproxy | nginx | sniproxy | target | met/missed |");
        println!("|---|---|---|---|---|---|---|");
        for r in &self.rows {
            let met = match r.met {
                Some(true) => "met",
                Some(false) => "missed",
                None => "",
            };
            let [e, h, n, s] = &r.cells;
            println!(
                "| {} | {e} | {h} | {n} | {s} | {} | {met} |",
                r.figure, r.target
            );
        }
        if !self.notes.is_empty() {
            println!();
            for n in &self.notes {
                println!("- {n}");
            }
        }
    }
}

fn main() {
    let started = Instant::now();
    let (hard, phases) = start_pinned_harness();
    let wants = |p: &str| phases.wants(p);
    println!("RLIMIT_NOFILE {hard}; {}", versions());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut report = Report::default();
    runtime.block_on(async {
        if wants("idle") {
            connections(&mut report, Kind::Idle).await;
        }
        if wants("stalled") {
            connections(&mut report, Kind::Stalled).await;
        }
        if wants("routes") {
            routes(&mut report).await;
        }
        if wants("push") {
            push(&mut report).await;
        }
    });
    report.print();
    println!("\n(run took {:.0} s)", started.elapsed().as_secs_f64());
}

fn versions() -> String {
    let first_line = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .map(|o| {
                let text = [o.stdout, o.stderr].concat();
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .unwrap_or_else(|e| format!("{cmd}: {e}"))
    };
    format!(
        "{}; {}; {}",
        first_line("haproxy", "-v"),
        first_line("nginx", "-v"),
        first_line("sniproxy", "-V")
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Idle,
    Stalled,
}

/// The idle-tunnel or stalled-handshake figure, on the edge and each peer.
async fn connections(report: &mut Report, kind: Kind) {
    let n = match kind {
        Kind::Idle => IDLE_TUNNELS,
        Kind::Stalled => STALLED,
    };
    let mut cells: [String; 4] = Default::default();
    let mut edge_kib = f64::NAN;
    for (slot, name) in ["edge"].into_iter().chain(PEERS).enumerate() {
        let backend = Backend::start().await;
        let mut proxy = proxies::start(name, backend.addr).await;
        let pid = proxy.pid();
        drop(clients::tunnels(proxy.addr, 1).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = rss::rss_kib(pid);
        let opened = Instant::now();
        let held = match kind {
            Kind::Idle => clients::tunnels(proxy.addr, n).await,
            Kind::Stalled => clients::stalled_handshakes(proxy.addr, n).await,
        };
        let took = opened.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = rss::rss_kib(pid);
        let open = clients::still_open(&held);
        proxy.assert_alive();
        let per = after.saturating_sub(before) as f64 / n as f64;
        println!(
            "{} {name}: RSS {before} KiB -> {after} KiB with {n} ({open} still open; opened in {:.2} s): {per:.2} KiB each",
            if kind == Kind::Idle { "idle tunnels" } else { "stalled handshakes" },
            took.as_secs_f64()
        );
        cells[slot] = if open == n {
            format!("{per:.2}")
        } else {
            format!("{per:.2} ({open}/{n} open)")
        };
        if slot == 0 {
            edge_kib = per;
            assert_eq!(open, n, "the edge closed some; log:\n{}", proxy.log());
        }
        drop(held);
        drop(proxy);
        drop(backend);
        // Let the closed connections go before the next proxy.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    match kind {
        Kind::Idle => report.row(
            format!("RSS KiB per idle tunnel ({IDLE_TUNNELS}, 24 sources, hello answered)"),
            cells,
            "<= 1.6 (HAProxy 2.6: 3.2-3.3)",
            Some(edge_kib <= 1.6),
        ),
        Kind::Stalled => report.row(
            format!("RSS KiB per stalled handshake ({STALLED}, half a hello)"),
            cells,
            "< 4 (HAProxy: 6.5)",
            Some(edge_kib < 4.0),
        ),
    }
}

fn edge_only(edge: String) -> [String; 4] {
    [edge, "-".into(), "-".into(), "-".into()]
}

/// RSS per route: fresh edges on 10 and on 100,000 routes of edge.toml.
async fn routes(report: &mut Report) {
    let mut at = Vec::new();
    for n in [FEW_ROUTES, MANY_ROUTES] {
        let port = free_port();
        let toml = tables::edge_toml(n, port);
        let addr = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
        let (edge, ready) = proxies::edge(&toml, addr).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let kib = rss::rss_kib(edge.pid());
        let (_, metrics) = edge_tests::edge::get(toml.admin, "/metrics")
            .await
            .expect("/metrics");
        let live = metric_value(&metrics, "edge_routes", &[]);
        assert_eq!(live, n as f64, "routes live; log:\n{}", edge.log());
        println!(
            "routes {n}: ready in {:.2} s, RSS {kib} KiB 1 s after ready ({live} routes live)",
            ready.as_secs_f64()
        );
        at.push((kib, ready));
        drop(edge);
    }
    let per = (at[1].0 as f64 - at[0].0 as f64) * 1024.0 / (MANY_ROUTES - FEW_ROUTES) as f64;
    report.row(
        format!("RSS B per route (edge.toml, {MANY_ROUTES} vs {FEW_ROUTES})"),
        edge_only(format!("{per:.0}")),
        "< 300",
        Some(per < 300.0),
    );
    report.row(
        format!("time to ready, {FEW_ROUTES} / {MANY_ROUTES} routes (s)"),
        edge_only(format!(
            "{:.2} / {:.2}",
            at[0].1.as_secs_f64(),
            at[1].1.as_secs_f64()
        )),
        "",
        None,
    );
    report.row(
        format!("RSS MB with {FEW_ROUTES} / {MANY_ROUTES} routes"),
        edge_only(format!("{:.1} / {:.1}", mb(at[0].0), mb(at[1].0))),
        "",
        None,
    );
}

fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

/// 1,000,000 routes pushed through the control socket in one push.
async fn push(report: &mut Report) {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("control.sock");
    let port = free_port();
    let toml = tables::edge_toml(1, port).control(&socket, &dir.path().join("state"));
    let addr = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let (mut edge, _) = proxies::edge(&toml, addr).await;
    let pid = edge.pid();
    let control = Control::new(&socket);
    control.wait_up().await;

    let built = Instant::now();
    let json = tables::routing_json(PUSHED_ROUTES, port);
    let size = json.len();
    println!(
        "push: routing JSON of {PUSHED_ROUTES} routes is {:.1} MB ({:.0}% of the {} MiB message cap), built in {:.2} s",
        size as f64 / 1e6,
        size as f64 * 100.0 / MAX_MESSAGE_BYTES as f64,
        MAX_MESSAGE_BYTES >> 20,
        built.elapsed().as_secs_f64()
    );
    if size > MAX_MESSAGE_BYTES {
        report.notes.push(format!(
            "the 1M-route JSON ({size} bytes) exceeds the control socket's {MAX_MESSAGE_BYTES}-byte message cap"
        ));
    }
    let before = rss::rss_kib(pid);
    let mut client = control
        .connect()
        .await
        .expect("connect to the control socket");
    let sampler = Sampler::start(pid, Duration::from_millis(5));
    let pushed = Instant::now();
    let answer = client
        .push(PushRequest {
            source_version: 1,
            routing_json: json,
            format: 1,
            feed_id: "feed-mem".into(),
            generation: 1,
        })
        .await;
    let push_took = pushed.elapsed();
    let answer = match answer {
        Ok(a) => a.into_inner(),
        Err(e) => {
            edge.assert_alive();
            panic!("push refused: {e}; log:\n{}", edge.log());
        }
    };
    assert!(
        answer.ack,
        "push not ACKed: {} rejected, first {:?}",
        answer.rejected.len(),
        answer.rejected.first()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss::rss_kib(pid);
    let sampled = sampler.stop();
    let hwm = rss::hwm_kib(pid);
    let status = control.status().await.expect("status");
    assert_eq!(status.routes as usize, PUSHED_ROUTES, "routes live");
    println!(
        "push: RSS {before} KiB before, ACK after {:.2} s, {after} KiB 2 s later; peak {} KiB over {} samples, VmHWM {hwm} KiB; {} routes live",
        push_took.as_secs_f64(),
        sampled.peak_kib,
        sampled.samples,
        status.routes
    );
    report.row(
        format!("RSS MB after a {PUSHED_ROUTES}-route push (2 s after the ACK)"),
        edge_only(format!("{:.0}", mb(after))),
        "< 500",
        Some(mb(after) < 500.0),
    );
    // VmHWM and VmRSS are kept from per-thread counters, so a sample may
    // read a little above the high-water mark: the peak is the larger.
    let peak = hwm.max(sampled.peak_kib);
    report.row(
        "peak RSS MB during the push: max(VmHWM, 5 ms samples)",
        edge_only(format!(
            "{:.0} = {:.2}x after",
            mb(peak),
            peak as f64 / after as f64
        )),
        "< 2x after",
        Some(peak < 2 * after),
    );
    report.row(
        "RSS B per pushed route ((after - before) / 1,000,000)",
        edge_only(format!(
            "{:.0}",
            (after - before) as f64 * 1024.0 / PUSHED_ROUTES as f64
        )),
        "",
        None,
    );
    report.row(
        "push: JSON MB / seconds to ACK",
        edge_only(format!(
            "{:.0} / {:.1}",
            size as f64 / 1e6,
            push_took.as_secs_f64()
        )),
        "",
        None,
    );
}
