//! Load harness: the edge against its peers from Debian (HAProxy, nginx's
//! stream module, sniproxy) on one machine, in one run, with the same two
//! SNI routes. Each proxy is one process pinned to core 1 (`taskset -c 1`,
//! kernel time included in its CPU); this process (load generator and
//! backends) pins itself to core 0. All proxies of a phase run at once and
//! each round measures every one in turn, so drift on the machine hits
//! all alike. Per figure it prints each proxy's median over the rounds, the
//! edge against the best peer (median of per-round ratios, their range,
//! and which peer was best) and against HAProxy:
//! (a) connections/s and proxy CPU us per connection (user, sys): each
//!     connection replays a real ClientHello (curl's) to a backend that
//!     answers 3 bytes and closes (no crypto in the loop);
//! (b) p50/p99 connect-to-first-byte latency (all rounds pooled);
//! (c) bulk GB/s and proxy CPU seconds per GB moved through 1 and 8
//!     tunnels (and GB/s with no proxy at all);
//! (d) (a) and (b) with a PROXY header on the shop route (edge and HAProxy
//!     send v2; nginx can send only v1; sniproxy only v1 and per table
//!     entry, so it sits this phase out);
//! the edge's connections/s and bulk GB/s on 1 and on 2 cores; and which
//! side was saturated in each measurement, with the CPU the rest of the
//! machine used meanwhile (figures from a busy machine are not comparable).
//!
//! `cargo bench -p edge-benches --bench load [-- conn bulk cores]`
//! (phases to run; all by default). `LOAD_SECS` (default 4) and
//! `LOAD_REPEATS` (default 3) set each measurement's length and count.
//! The peers must be installed: `apt-get install haproxy nginx-light
//! libnginx-mod-stream sniproxy`. Memory per idle tunnel is the memory
//! bench's. docs/benchmarks.md.

use std::time::Duration;

use edge_benches::load::phases::{self, Bulk, Connections};
use edge_benches::load::proxies::{self, Proxy, Setup};
use edge_benches::load::{backends, median};
use edge_benches::{percentile, start_pinned_harness};

/// The peers, in column order after the edge.
const PEERS: [&str; 3] = ["haproxy", "nginx", "sniproxy"];

/// Whether more of a figure is better.
#[derive(Clone, Copy, PartialEq)]
enum Better {
    Higher,
    Lower,
}

/// What a figure's edge ratio is held to.
#[derive(Clone, Copy)]
enum Target {
    None,
    /// edge / best peer at most this.
    BestAtMost(f64),
    /// edge / HAProxy at most this.
    HaproxyAtMost(f64),
    /// edge / HAProxy at least this.
    HaproxyAtLeast(f64),
}

/// A ratio of the edge to one peer: median of the rounds and their range.
#[derive(Clone, Copy)]
struct Ratio {
    median: f64,
    spread: Option<(f64, f64)>,
}

impl Ratio {
    fn show(self) -> String {
        match self.spread {
            Some((lo, hi)) => format!("{:.2} ({lo:.2}-{hi:.2})", self.median),
            None => format!("{:.2}", self.median),
        }
    }
}

struct Row {
    figure: String,
    /// edge, then the peers in `PEERS` order ("-" where not measured).
    cells: [String; 4],
    /// edge / best peer, and which peer that was.
    best: Option<(Ratio, &'static str)>,
    haproxy: Option<Ratio>,
    target: Target,
}

struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    /// A row of per-round samples (`peers[i][round]` pairs with
    /// `edge[round]`): medians, and the edge's ratios as the median of the
    /// per-round ratios with their range. The best peer is the one with
    /// the best median.
    fn paired(
        &mut self,
        figure: impl Into<String>,
        edge: &[f64],
        peers: [Option<&[f64]>; 3],
        better: Better,
        target: Target,
    ) {
        let ratio = |p: &[f64]| -> Ratio {
            let r: Vec<f64> = edge.iter().zip(p).map(|(a, b)| a / b).collect();
            let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            Ratio {
                median: median(r),
                spread: Some((lo, hi)),
            }
        };
        let medians = peers.map(|p| p.map(|v| median(v.to_vec())));
        let best = best_of(medians, better).map(|i| (ratio(peers[i].expect("measured")), PEERS[i]));
        self.rows.push(Row {
            figure: figure.into(),
            cells: cells(median(edge.to_vec()), medians),
            best,
            haproxy: peers[0].map(ratio),
            target,
        });
    }

    /// A row of single figures (no rounds to pair).
    fn single(
        &mut self,
        figure: impl Into<String>,
        edge: f64,
        peers: [Option<f64>; 3],
        better: Better,
        target: Target,
    ) {
        let ratio = |p: f64| Ratio {
            median: edge / p,
            spread: None,
        };
        self.rows.push(Row {
            figure: figure.into(),
            cells: cells(edge, peers),
            best: best_of(peers, better).map(|i| (ratio(peers[i].expect("measured")), PEERS[i])),
            haproxy: peers[0].map(ratio),
            target,
        });
    }

    /// A row of free text, no ratios.
    fn text(&mut self, figure: impl Into<String>, cells: [String; 4]) {
        self.rows.push(Row {
            figure: figure.into(),
            cells,
            best: None,
            haproxy: None,
            target: Target::None,
        });
    }

    fn print(&self) {
        println!(
            "\n| figure | edge | {} | edge/best peer (range over rounds) | best peer | edge/haproxy (range) | target |",
            PEERS.join(" | ")
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for r in &self.rows {
            let best = r.best.map(|(x, _)| x.show()).unwrap_or_default();
            let who = r.best.map(|(_, p)| p).unwrap_or_default();
            let vs_h = r.haproxy.map(Ratio::show).unwrap_or_default();
            println!(
                "| {} | {} | {best} | {who} | {vs_h} | {} |",
                r.figure,
                r.cells.join(" | "),
                verdict(r)
            );
        }
        println!(
            "\nNotes and saturated side per measurement (CPU share of one core; \
             others: the rest of the machine incl. softirq, 10-20% when quiet):"
        );
        for n in &self.notes {
            println!("- {n}");
        }
    }
}

/// The index of the best measured peer.
fn best_of(peers: [Option<f64>; 3], better: Better) -> Option<usize> {
    let measured = (0..3).filter_map(|i| peers[i].filter(|x| !x.is_nan()).map(|x| (i, x)));
    let pick = |a: (usize, f64), b: (usize, f64)| {
        let b_wins = match better {
            Better::Higher => b.1 > a.1,
            Better::Lower => b.1 < a.1,
        };
        if b_wins {
            b
        } else {
            a
        }
    };
    measured.reduce(pick).map(|(i, _)| i)
}

fn cells(edge: f64, peers: [Option<f64>; 3]) -> [String; 4] {
    let p = |i: usize| peers[i].map(fmt).unwrap_or_else(|| "-".into());
    [fmt(edge), p(0), p(1), p(2)]
}

/// The target and whether the edge met it.
fn verdict(r: &Row) -> String {
    let (what, against, ok) = match r.target {
        Target::None => return String::new(),
        Target::BestAtMost(x) => {
            let m = r.best.map(|(b, _)| b.median);
            (format!("best peer <= {x:.2}"), m, m.map(|m| m <= x))
        }
        Target::HaproxyAtMost(x) => {
            let m = r.haproxy.map(|h| h.median);
            (format!("haproxy <= {x:.2}"), m, m.map(|m| m <= x))
        }
        Target::HaproxyAtLeast(x) => {
            let m = r.haproxy.map(|h| h.median);
            (format!("haproxy >= {x:.2}"), m, m.map(|m| m >= x))
        }
    };
    match (against, ok) {
        (Some(_), Some(true)) => format!("{what}: met"),
        (Some(_), Some(false)) => format!("{what}: missed"),
        _ => what,
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
    let (_, phases) = start_pinned_harness();
    let wants = |p: &str| phases.wants(p);
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

/// A figure of the connection phase: name, how to read it, which way is
/// better, target.
type Figure = (&'static str, fn(&Connections) -> f64, Better, Target);

/// (a), (b), (d).
async fn connections(
    report: &mut Report,
    setup: impl Fn(bool) -> Setup,
    run: Duration,
    repeats: usize,
) {
    // Indices 0-3: edge and the peers; 4-6: edge, haproxy, nginx with a
    // PROXY header.
    let all = [
        proxies::edge(setup(false), "1", true),
        proxies::haproxy(setup(false)),
        proxies::nginx(setup(false)),
        proxies::sniproxy(setup(false)),
        proxies::edge(setup(true), "1", true),
        proxies::haproxy(setup(true)),
        proxies::nginx(setup(true)),
    ];
    let refs: Vec<&Proxy> = all.iter().collect();
    let by = rounds(&refs, run, repeats).await;
    for (i, (p, runs)) in all.iter().zip(&by).enumerate() {
        let r = &runs[runs.len() / 2];
        let pp = if i >= 4 { " with PROXY header" } else { "" };
        report.notes.push(format!(
            "connections{pp}, {}: {}",
            p.name,
            r.load.saturated()
        ));
    }
    report.notes.push(
        "PROXY header phase: edge and haproxy send v2, nginx v1 (all it can send); \
         sniproxy is left out (it can send only v1, per table entry)"
            .into(),
    );
    let v = |i: usize, f: fn(&Connections) -> f64| by[i].iter().map(f).collect::<Vec<f64>>();
    let cpu = |c: &Connections| c.cpu_us.total();
    let figures: [Figure; 4] = [
        ("connections/s", |c| c.per_sec, Better::Higher, Target::None),
        (
            "proxy CPU us per connection",
            cpu,
            Better::Lower,
            Target::BestAtMost(1.0),
        ),
        (
            "  of which user",
            |c| c.cpu_us.user,
            Better::Lower,
            Target::None,
        ),
        (
            "  of which system",
            |c| c.cpu_us.sys,
            Better::Lower,
            Target::None,
        ),
    ];
    // Latency percentiles over every connection of every round: a p99 of
    // one short round swings with a single scheduling hiccup.
    let pooled = |i: usize| {
        let mut all: Vec<u64> = by[i].iter().flat_map(|c| c.latencies_us.clone()).collect();
        all.sort_unstable();
        all
    };
    let sets: [(&str, usize, [Option<usize>; 3]); 2] = [
        ("", 0, [Some(1), Some(2), Some(3)]),
        (" with PROXY header", 4, [Some(5), Some(6), None]),
    ];
    for (tag, e, peers) in sets {
        for (name, f, better, target) in figures {
            let samples = peers.map(|p| p.map(|i| v(i, f)));
            report.paired(
                format!("{name}{tag}"),
                &v(e, f),
                [0, 1, 2].map(|k| samples[k].as_deref()),
                better,
                target,
            );
        }
        let (le, lp) = (pooled(e), peers.map(|p| p.map(pooled)));
        for (p, target) in [(50.0, Target::None), (99.0, Target::BestAtMost(1.0))] {
            report.single(
                format!("p{p:.0} latency us{tag}, all rounds pooled"),
                percentile(&le, p) as f64,
                [0, 1, 2].map(|k| lp[k].as_ref().map(|l| percentile(l, p) as f64)),
                Better::Lower,
                target,
            );
        }
    }
    // Each proxy against itself, round by round: with / without header.
    let cost = |with: usize, without: usize| -> String {
        let r: Vec<f64> = v(with, cpu)
            .iter()
            .zip(&v(without, cpu))
            .map(|(x, y)| x / y)
            .collect();
        spread_of(&r)
    };
    report.text(
        "PROXY header CPU cost: with / without, median of rounds (range); target edge <= 1.05",
        [cost(4, 0), cost(5, 1), cost(6, 2), "-".into()],
    );
}

/// `median (lo-hi)` of `v`.
fn spread_of(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.3} ({lo:.3}-{hi:.3})", median(v.to_vec()))
}

/// (c): through 1 and 8 tunnels, and the same with no proxy at all.
async fn bulk(report: &mut Report, setup: Setup, run: Duration, repeats: usize) {
    // Indices 0-3: edge and the peers; 4: edge with splice off; 5: none.
    let all = [
        proxies::edge(setup, "1", true),
        proxies::haproxy(setup),
        proxies::nginx(setup),
        proxies::sniproxy(setup),
        proxies::edge(setup, "1", false),
        Proxy::direct(setup.sink),
    ];
    for tunnels in [1, 8] {
        let mut by: Vec<Vec<Bulk>> = vec![Vec::new(); all.len()];
        for _ in 0..repeats {
            for (i, p) in all.iter().enumerate() {
                let b = phases::bulk(p, tunnels, run).await;
                by[i].push(b);
                if by[i].len() == 1 {
                    report.notes.push(format!(
                        "bulk x{tunnels}, {}: {}",
                        p.name,
                        b.load.saturated()
                    ));
                }
            }
        }
        let v = |i: usize, f: fn(&Bulk) -> f64| by[i].iter().map(f).collect::<Vec<f64>>();
        let gbps = |b: &Bulk| b.gbps;
        let cpu = |b: &Bulk| b.cpu_s_per_gb;
        let peers = |f: fn(&Bulk) -> f64| [1, 2, 3].map(|i| v(i, f));
        let (pg, pc) = (peers(gbps), peers(cpu));
        report.paired(
            format!("bulk GB/s, {tunnels} tunnel(s)"),
            &v(0, gbps),
            all_of(&pg),
            Better::Higher,
            Target::HaproxyAtLeast(1.5),
        );
        report.paired(
            format!("proxy CPU s per GB moved, {tunnels} tunnel(s)"),
            &v(0, cpu),
            all_of(&pc),
            Better::Lower,
            Target::HaproxyAtMost(0.6),
        );
        report.paired(
            format!("  edge with splice off: GB/s, {tunnels} tunnel(s)"),
            &v(4, gbps),
            all_of(&pg),
            Better::Higher,
            Target::None,
        );
        report.paired(
            format!("  edge with splice off: CPU s per GB, {tunnels} tunnel(s)"),
            &v(4, cpu),
            all_of(&pc),
            Better::Lower,
            Target::None,
        );
        report.text(
            format!("  no proxy (generator to sink): GB/s, {tunnels} connection(s)"),
            [fmt(median(v(5, gbps))), "-".into(), "-".into(), "-".into()],
        );
    }
}

/// Every peer's samples, all measured.
fn all_of(p: &[Vec<f64>; 3]) -> [Option<&[f64]>; 3] {
    [Some(&p[0][..]), Some(&p[1][..]), Some(&p[2][..])]
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
    let dash = || "-".to_string();
    report.text(
        "edge connections/s, core 1 / cores 0,1 (edge CPU %)",
        [
            format!(
                "{} ({:.0}%) / {} ({:.0}%)",
                fmt(m(0)),
                busy(0),
                fmt(m(1)),
                busy(1)
            ),
            dash(),
            dash(),
            dash(),
        ],
    );
    let mut bulk: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..repeats {
        for (i, p) in [&one, &two].iter().enumerate() {
            let b = phases::bulk(p, 8, run).await;
            bulk[i].push((b.gbps, b.load.proxy.total() / b.load.secs * 100.0));
        }
    }
    let g = |i: usize| median(bulk[i].iter().map(|x| x.0).collect());
    let c = |i: usize| median(bulk[i].iter().map(|x| x.1).collect());
    report.text(
        "edge bulk GB/s through 8 tunnels, core 1 / cores 0,1 (edge CPU %)",
        [
            format!("{:.2} ({:.0}%) / {:.2} ({:.0}%)", g(0), c(0), g(1), c(1)),
            dash(),
            dash(),
            dash(),
        ],
    );
}
