//! One `edge-feed` over PostgreSQL serving a fleet: N real edge-agent
//! processes (default 200), each pushing to a stub edge (a tonic
//! `edge.v1.Control` server in this process per control socket, answering
//! ACK and noting when each cursor arrived). Appends 1,000 route events at
//! 50/s and reports:
//!
//! - event -> applied on *all* nodes (p50/p99): from the append's commit
//!   to the last node's push that includes it;
//! - the feed's CPU per agent, idle and under load (/proc/<pid>/stat);
//! - transactions per second on PostgreSQL (pg_stat_database.xact_commit);
//! - the cost of the append lock: appends/s of 8 concurrent writers with
//!   and without it, committing at once or 5 ms after the INSERT.
//!
//! `cargo bench -p edge-benches --bench fleet`. Knobs for a smoke run:
//! `FLEET_AGENTS`, `FLEET_EVENTS`, `FLEET_RATE` (events/s), `FLEET_IDLE_SECS`,
//! `FLEET_LOCK_SECS` (per lock-cost figure, 0 skips them),
//! `FLEET_PROFILE=debug` (use target/debug binaries, skip the release build).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_benches::percentile;
use edge_feed::pg::{PgOptions, PgStore};
use edge_feed::{NewEvent, Store};
use edge_proto::control::{
    Control, ControlServer, PushRequest, PushResponse, StatusRequest, StatusResponse,
};
use edge_tests::agent::{AgentProcess, AgentToml};
use edge_tests::edge_feed::{migrate, FeedProcess};
use edge_tests::postgres::Postgres;
use serde_json::json;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

const ENV: &str = "acme/fleet/prod";
const P99_TARGET: Duration = Duration::from_millis(250);
const IDLE_CPU_TARGET_PERCENT: f64 = 1.0;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// When each node's pushes arrived: `(source_version, at)` in order.
type Arrivals = Arc<Mutex<Vec<Vec<(u64, Instant)>>>>;

struct StubEdge {
    node: usize,
    arrivals: Arrivals,
    live: Mutex<(u64, u64, String)>,
}

#[tonic::async_trait]
impl Control for StubEdge {
    async fn push(&self, request: Request<PushRequest>) -> Result<Response<PushResponse>, Status> {
        let at = Instant::now();
        let req = request.into_inner();
        self.arrivals.lock().unwrap()[self.node].push((req.source_version, at));
        let mut live = self.live.lock().unwrap();
        *live = (req.source_version, req.generation, req.feed_id);
        Ok(Response::new(PushResponse {
            ack: true,
            table_version: live.0,
            source_version: live.0,
            rejected: vec![],
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let live = self.live.lock().unwrap();
        Ok(Response::new(StatusResponse {
            table_version: live.0,
            source_version: live.0,
            ready: true,
            feed_id: live.2.clone(),
            generation: live.1,
            ..Default::default()
        }))
    }
}

fn binaries() {
    let profile = std::env::var("FLEET_PROFILE").unwrap_or_else(|_| "release".into());
    if profile == "release" {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", "edge-agent", "-p", "edge-feed"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --release failed");
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(profile);
    std::env::set_var("EDGE_AGENT_BIN", dir.join("edge-agent"));
    std::env::set_var("EDGE_FEED_BIN", dir.join("edge-feed"));
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name (which may hold spaces) start at ")".
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    ticks / hz
}

async fn xact_commit(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

fn serve_stub(socket: &Path, node: usize, arrivals: Arrivals) {
    let listener = tokio::net::UnixListener::bind(socket).expect("bind control socket");
    let stub = StubEdge {
        node,
        arrivals,
        live: Mutex::new((0, 0, String::new())),
    };
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(ControlServer::new(stub))
            .serve_with_incoming(UnixListenerStream::new(listener))
            .await;
    });
}

/// Waits until every node has pushed a cursor >= `event_id`.
async fn all_applied(arrivals: &Arrivals, event_id: u64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let done = arrivals
            .lock()
            .unwrap()
            .iter()
            .all(|a| a.last().is_some_and(|(v, _)| *v >= event_id));
        if done {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn fleet() {
    let agents = knob("FLEET_AGENTS", 200) as usize;
    let events = knob("FLEET_EVENTS", 1000) as usize;
    let rate = knob("FLEET_RATE", 50).max(1);
    let idle_secs = knob("FLEET_IDLE_SECS", 10);

    let pg = Postgres::start().await;
    migrate(&pg.url());
    let store = PgStore::connect(&pg.url(), PgOptions { listen: false })
        .await
        .unwrap();
    let env = NewEvent {
        event_type: "env.configured".into(),
        payload: json!({"id": ENV, "ipv6": ["::1"], "ipv4": null, "ports": []}),
    };
    let seed = store.append("env", ENV, &[env]).await.unwrap()[0];
    let feed = FeedProcess::start(&pg.url(), &[]).await;
    let feed_pid = feed.pid().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let arrivals: Arrivals = Arc::new(Mutex::new(vec![Vec::new(); agents]));
    let mut procs = Vec::with_capacity(agents);
    for n in 0..agents {
        let socket = dir.path().join(format!("control-{n}.sock"));
        serve_stub(&socket, n, Arc::clone(&arrivals));
        let mut toml = AgentToml::new(
            &format!("fleet-{n}"),
            &dir.path().join(format!("state-{n}")),
            &socket,
        );
        toml.grpc = Some(feed.grpc);
        toml.poll = Some(feed.http);
        procs.push(AgentProcess::start(&toml));
    }
    assert!(
        all_applied(&arrivals, seed, Duration::from_secs(120)).await,
        "the fleet never synced"
    );
    eprintln!("{agents} agents synced; idle for {idle_secs} s");

    let cpu0 = cpu_seconds(feed_pid);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let idle_cpu = (cpu_seconds(feed_pid) - cpu0) / t0.elapsed().as_secs_f64() * 100.0;

    let admin = pg.client().await;
    let (x0, cpu0, t0) = (
        xact_commit(&admin).await,
        cpu_seconds(feed_pid),
        Instant::now(),
    );
    let mut appended: HashMap<u64, Instant> = HashMap::with_capacity(events);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let mut last = seed;
    for i in 0..events {
        tick.tick().await;
        let ev = NewEvent {
            event_type: "route.created".into(),
            payload: json!({"id": format!("r-{i}"), "env": ENV,
                            "hostname": format!("r-{i}.example.com"), "listen_port": 443,
                            "protocol": "tls_passthrough", "backend_process_type": "web",
                            "backend_port": 8443}),
        };
        last = store
            .append("route", &format!("r-{i}"), &[ev])
            .await
            .unwrap()[0];
        appended.insert(last, Instant::now());
    }
    let settled = all_applied(&arrivals, last, Duration::from_secs(120)).await;
    let load_secs = t0.elapsed().as_secs_f64();
    let load_cpu = (cpu_seconds(feed_pid) - cpu0) / load_secs * 100.0;
    let xacts = (xact_commit(&admin).await - x0) as f64 / load_secs;

    // Per event: the latest, over nodes, of the first push that includes it.
    let arrivals = arrivals.lock().unwrap();
    let mut latencies: Vec<Duration> = appended
        .iter()
        .filter_map(|(&id, &at)| {
            arrivals
                .iter()
                .map(|a| {
                    a.iter()
                        .find(|(v, _)| *v >= id)
                        .map(|(_, t)| t.saturating_duration_since(at))
                })
                .collect::<Option<Vec<_>>>()
                .and_then(|per_node| per_node.into_iter().max())
        })
        .collect();
    latencies.sort();
    let reached = latencies.len();
    let (p50, p99) = if reached > 0 {
        (percentile(&latencies, 50.0), percentile(&latencies, 99.0))
    } else {
        (Duration::ZERO, Duration::ZERO)
    };
    let per_agent_idle = idle_cpu / agents as f64;
    println!("fleet: {agents} agents, {events} route events at {rate}/s (settled: {settled}, {reached} events reached every node)");
    println!("  event -> applied on all nodes   p50 {p50:>9.1?}   p99 {p99:>9.1?}   target p99 < {P99_TARGET:?}");
    println!("  feed CPU, idle                  {idle_cpu:.2}% of a core ({per_agent_idle:.4}% per agent)   target < {IDLE_CPU_TARGET_PERCENT}% per idle agent");
    println!(
        "  feed CPU, under load            {load_cpu:.2}% of a core ({:.4}% per agent)",
        load_cpu / agents as f64
    );
    println!(
        "  PostgreSQL transactions         {xacts:.1}/s during the load ({:.1} per event)",
        xacts / rate as f64
    );
    drop(procs);
}

/// Appends/s of `WRITERS` writers, each appending one event per
/// transaction to its own aggregate for `secs`, holding the transaction
/// open `hold` after the INSERT.
async fn appends_per_second(pg: &Postgres, secs: u64, hold: Duration) -> f64 {
    const WRITERS: usize = 8;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let url = pg.url();
            tokio::spawn(async move {
                let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                let id = format!("cost-{w}-{}", fastrand::u64(..));
                let mut n = 0i32;
                while Instant::now() < deadline {
                    let tx = client.transaction().await.unwrap();
                    tx.execute(
                        "INSERT INTO events (aggregate_type, aggregate_id, aggregate_seq, event_type, payload) \
                         VALUES ('billing', $1, $2, 'cost.measured', '{}')",
                        &[&id, &(n + 1)],
                    )
                    .await
                    .unwrap();
                    if !hold.is_zero() {
                        tokio::time::sleep(hold).await;
                    }
                    tx.commit().await.unwrap();
                    n += 1;
                }
                n as u64
            })
        })
        .collect();
    let mut total = 0;
    for w in writers {
        total += w.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

async fn lock_cost() {
    let secs = knob("FLEET_LOCK_SECS", 5);
    if secs == 0 {
        return;
    }
    let pg = Postgres::start().await;
    migrate(&pg.url());
    let mut rows = Vec::new();
    for hold in [Duration::ZERO, Duration::from_millis(5)] {
        rows.push((
            "with the append lock",
            hold,
            appends_per_second(&pg, secs, hold).await,
        ));
    }
    pg.client()
        .await
        .batch_execute("DROP TRIGGER events_serialise_appends ON events")
        .await
        .unwrap();
    for hold in [Duration::ZERO, Duration::from_millis(5)] {
        rows.push((
            "without it",
            hold,
            appends_per_second(&pg, secs, hold).await,
        ));
    }
    println!("append lock cost: 8 writers, one event per transaction, {secs} s each");
    for (label, hold, rate) in rows {
        println!(
            "  {label:<22} COMMIT {:>4?} after the INSERT: {rate:>8.0} appends/s",
            hold
        );
    }
}

fn main() {
    binaries();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        lock_cost().await;
        fleet().await;
    });
}
