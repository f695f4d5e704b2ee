//! Load harness: the edge against HAProxy (Debian's package) on one
//! machine, in one run, with the same two SNI routes. Each proxy is pinned
//! to core 1 (`taskset -c 1`); this process (load generator and backends)
//! pins itself to core 0. Both proxies run at once and the repeats
//! alternate between them, so drift on the machine hits both alike. It
//! prints, with edge/HAProxy ratios (medians of the repeats):
//! (a) connections/s and proxy CPU us per connection (user + sys): each
//!     connection replays a real ClientHello (curl's) to a backend that
//!     answers 3 bytes and closes (no crypto in the loop);
//! (b) p50/p99 connect-to-first-byte latency;
//! (c) bulk GB/s through 1 and 8 tunnels (and with no proxy at all);
//! (d) RSS KiB per idle established tunnel;
//! (e) (a) with PROXY v2 on;
//! the edge's connections/s on 1 and on 2 cores; and which side was
//! saturated in each phase.
//!
//! `cargo bench -p edge-benches --bench load [-- conn bulk idle cores]`
//! (phases to run; all by default). `LOAD_SECS` (default 4) and
//! `LOAD_REPEATS` (default 3) set each measurement's length and count.
//! HAProxy must be on PATH (`apt-get install haproxy`). docs/benchmarks.md.

use std::process::Command;
use std::time::Duration;

use edge_benches::load::phases::{self, Connections};
use edge_benches::load::proxies::{self, Proxy, Setup};
use edge_benches::load::{backends, median};
use edge_benches::release_binaries;

const IDLE_TUNNELS: usize = 9_000;

struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

struct Row {
    figure: String,
    edge: String,
    haproxy: String,
    ratio: Option<f64>,
    target: &'static str,
}

impl Report {
    fn row(&mut self, figure: impl Into<String>, e: f64, h: f64, target: &'static str) {
        self.rows.push(Row {
            figure: figure.into(),
            edge: fmt(e),
            haproxy: fmt(h),
            ratio: Some(e / h),
            target,
        });
    }

    fn print(&self) {
        println!("\n| figure | edge | haproxy | edge/haproxy | target |");
        println!("|---|---|---|---|---|");
        for r in &self.rows {
            let ratio = r.ratio.map(|x| format!("{x:.2}")).unwrap_or_default();
            println!(
                "| {} | {} | {} | {ratio} | {} |",
                r.figure, r.edge, r.haproxy, r.target
            );
        }
        println!("\nSaturated side per measurement:");
        for n in &self.notes {
            println!("- {n}");
        }
    }
}

fn fmt(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

fn main() {
    release_binaries();
    let (_, hard) = rlimit::Resource::NOFILE.get().expect("RLIMIT_NOFILE");
    rlimit::Resource::NOFILE
        .set(hard, hard)
        .expect("raise RLIMIT_NOFILE");
    let pinned = Command::new("taskset")
        .args(["-pc", "0", &std::process::id().to_string()])
        .output();
    assert!(
        pinned.map(|o| o.status.success()).unwrap_or(false),
        "taskset (util-linux) is needed"
    );
    let phases: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |p: &str| phases.is_empty() || phases.iter().any(|x| x == p);
    let secs = env_num("LOAD_SECS", 4);
    let repeats = env_num("LOAD_REPEATS", 3) as usize;
    let run = Duration::from_secs(secs);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut report = Report {
        rows: Vec::new(),
        notes: Vec::new(),
    };
    runtime.block_on(async {
        let answer = backends::answering().await;
        let sink = backends::sink().await;
        let setup = |proxy_v2| Setup {
            answer,
            sink,
            proxy_v2,
        };
        if wants("conn") {
            connections(&mut report, setup, run, repeats).await;
        }
        if wants("bulk") {
            bulk(&mut report, setup(false), run, repeats).await;
        }
        if wants("idle") {
            idle(&mut report, setup(false)).await;
        }
        if wants("cores") {
            cores(&mut report, setup(false), run, repeats).await;
        }
    });
    report.print();
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `repeats` rounds, each measuring every proxy once in turn.
async fn rounds(proxies: &[&Proxy], run: Duration, repeats: usize) -> Vec<Vec<Connections>> {
    let mut by: Vec<Vec<Connections>> = vec![Vec::new(); proxies.len()];
    for _ in 0..repeats {
        for (i, p) in proxies.iter().enumerate() {
            by[i].push(phases::connections(p, run).await);
        }
    }
    by
}

/// (a), (b), (e).
async fn connections(
    report: &mut Report,
    setup: impl Fn(bool) -> Setup,
    run: Duration,
    repeats: usize,
) {
    let edge = proxies::edge(setup(false), "1", true);
    let haproxy = proxies::haproxy(setup(false));
    let edge_pp = proxies::edge(setup(true), "1", true);
    let haproxy_pp = proxies::haproxy(setup(true));
    let all = [&edge, &haproxy, &edge_pp, &haproxy_pp];
    let by = rounds(&all, run, repeats).await;
    for (p, runs) in all.iter().zip(&by) {
        let r = &runs[runs.len() / 2];
        report
            .notes
            .push(format!("connections, {}: {}", p.name, r.load.saturated()));
    }
    let m = |i: usize, f: fn(&Connections) -> f64| median(by[i].iter().map(f).collect());
    let cpu = |c: &Connections| c.cpu_us.total();
    for (tag, e, h) in [("", 0, 1), (" with PROXY v2", 2, 3)] {
        report.row(
            format!("connections/s{tag}"),
            m(e, |c| c.per_sec),
            m(h, |c| c.per_sec),
            "",
        );
        report.row(
            format!("proxy CPU us per connection{tag}"),
            m(e, cpu),
            m(h, cpu),
            "<= 0.80",
        );
        report.row(
            format!("  of which user{tag}"),
            m(e, |c| c.cpu_us.user),
            m(h, |c| c.cpu_us.user),
            "",
        );
        report.row(
            format!("  of which system{tag}"),
            m(e, |c| c.cpu_us.sys),
            m(h, |c| c.cpu_us.sys),
            "",
        );
        report.row(
            format!("p50 latency us{tag}"),
            m(e, |c| c.p50_us),
            m(h, |c| c.p50_us),
            "",
        );
        report.row(
            format!("p99 latency us{tag}"),
            m(e, |c| c.p99_us),
            m(h, |c| c.p99_us),
            "<= 1.00",
        );
    }
    report.row(
        "PROXY v2 CPU cost (with / without)",
        m(2, cpu) / m(0, cpu),
        m(3, cpu) / m(1, cpu),
        "edge <= 1.05",
    );
}

/// (c): through 1 and 8 tunnels, and the same with no proxy at all.
async fn bulk(report: &mut Report, setup: Setup, run: Duration, repeats: usize) {
    let edge = proxies::edge(setup, "1", true);
    let edge_copy = proxies::edge(setup, "1", false);
    let haproxy = proxies::haproxy(setup);
    let direct = Proxy::direct(setup.sink);
    let all = [&edge, &haproxy, &edge_copy, &direct];
    for tunnels in [1, 8] {
        let mut by: Vec<Vec<f64>> = vec![Vec::new(); all.len()];
        for _ in 0..repeats {
            for (i, p) in all.iter().enumerate() {
                let (gbps, load) = phases::bulk(p, tunnels, run).await;
                by[i].push(gbps);
                if by[i].len() == 1 {
                    report
                        .notes
                        .push(format!("bulk x{tunnels}, {}: {}", p.name, load.saturated()));
                }
            }
        }
        let m = |i: usize| median(by[i].clone());
        report.row(
            format!("bulk GB/s, {tunnels} tunnel(s)"),
            m(0),
            m(1),
            ">= 1.50",
        );
        report.row(
            format!("  edge with splice off, {tunnels} tunnel(s)"),
            m(2),
            m(1),
            "",
        );
        report.row(
            format!("  no proxy (generator to sink), {tunnels} connection(s)"),
            m(3),
            f64::NAN,
            "",
        );
    }
}

/// (d).
async fn idle(report: &mut Report, setup: Setup) {
    let edge = proxies::edge(setup, "1", true);
    let e = phases::idle_rss(&edge, IDLE_TUNNELS).await;
    drop(edge);
    let haproxy = proxies::haproxy(setup);
    let h = phases::idle_rss(&haproxy, IDLE_TUNNELS).await;
    drop(haproxy);
    report.row(
        format!("RSS KiB per idle tunnel ({IDLE_TUNNELS} open)"),
        e,
        h,
        "<= 0.50",
    );
}

/// The edge on one core and on two (the generator shares core 0).
async fn cores(report: &mut Report, setup: Setup, run: Duration, repeats: usize) {
    let one = proxies::edge(setup, "1", true);
    let two = proxies::edge(setup, "0,1", true);
    let by = rounds(&[&one, &two], run, repeats).await;
    for (p, runs) in [&one, &two].iter().zip(&by) {
        report.notes.push(format!(
            "connections, {}: {}",
            p.name,
            runs[runs.len() / 2].load.saturated()
        ));
    }
    let m = |i: usize| median(by[i].iter().map(|c| c.per_sec).collect());
    report.rows.push(Row {
        figure: "edge connections/s on core 1 / on cores 0,1 (generator on core 0)".into(),
        edge: format!("{} / {}", fmt(m(0)), fmt(m(1))),
        haproxy: "-".into(),
        ratio: None,
        target: "",
    });
}
