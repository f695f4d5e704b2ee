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
use edge_benches::{percentile, release_binaries};

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
    /// Lowest and highest of the per-round ratios, where rounds pair up.
    spread: Option<(f64, f64)>,
    target: &'static str,
}

impl Report {
    fn row(&mut self, figure: impl Into<String>, e: f64, h: f64, target: &'static str) {
        self.rows.push(Row {
            figure: figure.into(),
            edge: fmt(e),
            haproxy: fmt(h),
            ratio: Some(e / h),
            spread: None,
            target,
        });
    }

    /// A row whose ratio is the median of per-round ratios (each round
    /// measured both sides back to back), with their range.
    fn paired(&mut self, figure: impl Into<String>, e: &[f64], h: &[f64], target: &'static str) {
        let ratios: Vec<f64> = e.iter().zip(h).map(|(a, b)| a / b).collect();
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        self.rows.push(Row {
            figure: figure.into(),
            edge: fmt(median(e.to_vec())),
            haproxy: fmt(median(h.to_vec())),
            ratio: Some(median(ratios)),
            spread: Some((lo, hi)),
            target,
        });
    }

    fn print(&self) {
        println!("\n| figure | edge | haproxy | edge/haproxy (range over rounds) | target |");
        println!("|---|---|---|---|---|");
        for r in &self.rows {
            let mut ratio = r.ratio.map(|x| format!("{x:.2}")).unwrap_or_default();
            if let Some((lo, hi)) = r.spread {
                ratio.push_str(&format!(" ({lo:.2}-{hi:.2})"));
            }
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
    let v = |i: usize, f: fn(&Connections) -> f64| by[i].iter().map(f).collect::<Vec<f64>>();
    let cpu = |c: &Connections| c.cpu_us.total();
    for (tag, e, h) in [("", 0, 1), (" with PROXY v2", 2, 3)] {
        let rows: [Figure; 4] = [
            ("connections/s", |c| c.per_sec, ""),
            ("proxy CPU us per connection", cpu, "<= 0.80"),
            ("  of which user", |c| c.cpu_us.user, ""),
            ("  of which system", |c| c.cpu_us.sys, ""),
        ];
        for (name, f, target) in rows {
            report.paired(format!("{name}{tag}"), &v(e, f), &v(h, f), target);
        }
        // Latency percentiles over every connection of every round: a p99
        // of one short round swings with a single scheduling hiccup.
        let pooled = |i: usize| {
            let mut all: Vec<u64> = by[i].iter().flat_map(|c| c.latencies_us.clone()).collect();
            all.sort_unstable();
            all
        };
        let (le, lh) = (pooled(e), pooled(h));
        for (p, target) in [(50.0, ""), (99.0, "<= 1.00")] {
            report.row(
                format!("p{p:.0} latency us{tag}, all rounds pooled"),
                percentile(&le, p) as f64,
                percentile(&lh, p) as f64,
                target,
            );
        }
    }
    // Each side against itself, round by round: with / without PROXY v2.
    let ratio =
        |a: Vec<f64>, b: Vec<f64>| -> Vec<f64> { a.iter().zip(&b).map(|(x, y)| x / y).collect() };
    let (e, h) = (ratio(v(2, cpu), v(0, cpu)), ratio(v(3, cpu), v(1, cpu)));
    report.rows.push(Row {
        figure: "PROXY v2 CPU cost: with / without, median of rounds (range)".into(),
        edge: spread_of(&e),
        haproxy: spread_of(&h),
        ratio: None,
        spread: None,
        target: "edge <= 1.05",
    });
}

/// A figure of the connection phase: name, how to read it, target.
type Figure = (&'static str, fn(&Connections) -> f64, &'static str);

/// `median (lo-hi)` of `v`.
fn spread_of(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.3} ({lo:.3}-{hi:.3})", median(v.to_vec()))
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
    let busy = |i: usize| {
        median(
            by[i]
                .iter()
                .map(|c| c.load.proxy.total() / c.load.secs * 100.0)
                .collect(),
        )
    };
    report.rows.push(Row {
        figure: "edge connections/s, core 1 / cores 0,1 (edge CPU %)".into(),
        edge: format!(
            "{} ({:.0}%) / {} ({:.0}%)",
            fmt(m(0)),
            busy(0),
            fmt(m(1)),
            busy(1)
        ),
        haproxy: "-".into(),
        ratio: None,
        spread: None,
        target: "",
    });
    let mut bulk: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..repeats {
        for (i, p) in [&one, &two].iter().enumerate() {
            let (gbps, load) = phases::bulk(p, 8, run).await;
            bulk[i].push((gbps, load.proxy.total() / load.secs * 100.0));
        }
    }
    let g = |i: usize| median(bulk[i].iter().map(|x| x.0).collect());
    let c = |i: usize| median(bulk[i].iter().map(|x| x.1).collect());
    report.rows.push(Row {
        figure: "edge bulk GB/s through 8 tunnels, core 1 / cores 0,1 (edge CPU %)".into(),
        edge: format!("{:.2} ({:.0}%) / {:.2} ({:.0}%)", g(0), c(0), g(1), c(1)),
        haproxy: "-".into(),
        ratio: None,
        spread: None,
        target: "",
    });
}
