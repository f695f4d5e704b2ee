//! The proof of the no-skip technique: concurrent writers with their own
//! SQL (as the platform writes), random commit delays and rollbacks, some
//! writing another table first and some starting with the event INSERT,
//! while three edge nodes follow one `edge-feed` (two over gRPC, one
//! polling). At the end every edge serves exactly the table materialised
//! from the committed log, every agent's cursor is the head, and no agent
//! resynchronised or saw an event twice.
//!
//! Knobs for a quicker local run: `FEED_CHAOS_EVENTS` (default 20000).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use edge_tests::edge_feed::{
    materialised_routes, migrate, served_events, tail, FeedProcess, Node, Via,
};
use edge_tests::postgres::Postgres;
use serde_json::json;

const ENV: &str = "acme/shop/prod";
const WRITERS: usize = 8;
const AGGREGATES: usize = 200;
/// Events per transaction: the append lock serialises transactions, so a
/// transaction that sleeps 0-50 ms before committing holds every writer;
/// 25 events each keeps 20,000 events within about half a minute.
const PER_TX: usize = 25;

#[derive(Clone, Default)]
struct Aggregate {
    seq: i32,
    exists: bool,
}

/// One writer: owns aggregates `w, w+8, …`, appends `target` committed
/// events in transactions, rolls back about 10% of them.
async fn writer(url: String, w: usize, target: usize, ports: [u16; 3]) -> (usize, usize) {
    let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("writer connects");
    tokio::spawn(conn);
    client
        .batch_execute("SET lock_timeout = '30s'")
        .await
        .unwrap();
    let mut rng = fastrand::Rng::with_seed(0x5eed + w as u64);
    let owned: Vec<usize> = (w..AGGREGATES).step_by(WRITERS).collect();
    let mut aggs: HashMap<usize, Aggregate> =
        owned.iter().map(|&i| (i, Aggregate::default())).collect();
    let (mut committed, mut rolled_back) = (0, 0);
    while committed < target {
        let n = PER_TX.min(target - committed);
        let before = aggs.clone();
        let tx = client.transaction().await.unwrap();
        if rng.bool() {
            tx.execute(
                "INSERT INTO chaos_side (writer) VALUES ($1)",
                &[&(w as i32)],
            )
            .await
            .unwrap();
        }
        for _ in 0..n {
            let i = owned[rng.usize(..owned.len())];
            let agg = aggs.get_mut(&i).unwrap();
            agg.seq += 1;
            let id = format!("r-{i}");
            let (event_type, payload) = if !agg.exists {
                agg.exists = true;
                ("route.created", route(&id, i, agg.seq, ports))
            } else if rng.u8(..20) == 0 {
                agg.exists = false;
                ("route.deleted", json!({}))
            } else {
                ("route.updated", route(&id, i, agg.seq, ports))
            };
            tx.execute(
                "INSERT INTO events (aggregate_type, aggregate_id, aggregate_seq, event_type, payload) \
                 VALUES ('route', $1, $2, $3, $4)",
                &[&id, &agg.seq, &event_type, &payload],
            )
            .await
            .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(0..=50))).await;
        if rng.u8(..10) == 0 {
            tx.rollback().await.unwrap();
            aggs = before;
            rolled_back += 1;
        } else {
            tx.commit().await.unwrap();
            committed += n;
        }
    }
    (committed, rolled_back)
}

fn route(id: &str, i: usize, seq: i32, ports: [u16; 3]) -> serde_json::Value {
    json!({"id": id, "env": ENV, "hostname": format!("{id}-v{seq}.example.com"),
           "listen_port": ports[i % 3], "protocol": "tls_passthrough",
           "backend_process_type": "web", "backend_port": 8443})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_with_late_commits_and_rollbacks_never_make_a_consumer_skip() {
    let total: usize = std::env::var("FEED_CHAOS_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let pg = Postgres::start().await;
    migrate(&pg.url());
    let admin = pg.client().await;
    admin
        .batch_execute("CREATE TABLE chaos_side (id BIGSERIAL PRIMARY KEY, writer INT NOT NULL)")
        .await
        .unwrap();
    admin
        .execute(
            "INSERT INTO events (aggregate_type, aggregate_id, aggregate_seq, event_type, payload) \
             VALUES ('env', $1, 1, 'env.configured', $2)",
            &[&ENV, &json!({"id": ENV, "ipv6": ["::1"], "ipv4": null, "ports": []})],
        )
        .await
        .unwrap();
    let feed = FeedProcess::start(&pg.url(), &[]).await;
    let nodes = [
        Node::start("chaos-grpc-1", &feed, Via::Grpc).await,
        Node::start("chaos-grpc-2", &feed, Via::Grpc).await,
        Node::start("chaos-poll-1", &feed, Via::Poll).await,
    ];
    let ports = [nodes[0].port, nodes[1].port, nodes[2].port];

    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let target = total / WRITERS + usize::from(w < total % WRITERS);
            tokio::spawn(writer(pg.url(), w, target, ports))
        })
        .collect();
    let (mut committed, mut rolled_back) = (0, 0);
    for w in writers {
        let (c, r) = w.await.unwrap();
        committed += c;
        rolled_back += r;
    }
    let wrote = started.elapsed();

    let events = served_events(&admin).await;
    let head = events.last().unwrap().event_id;
    assert_eq!(
        events.len(),
        committed + 1,
        "every committed event is in the log"
    );
    let holes = head as usize - events.len();
    for node in &nodes {
        node.wait_cursor(head, Duration::from_secs(120)).await;
    }
    let caught_up = started.elapsed();
    eprintln!(
        "{committed} events committed by {WRITERS} writers in {wrote:?} ({rolled_back} transactions \
         rolled back, {holes} ids never committed); all nodes at head {head} after {caught_up:?}"
    );

    for node in &nodes {
        let want = materialised_routes(&events, node.port);
        assert!(
            !want.is_empty(),
            "the log routes something on {}",
            node.port
        );
        assert_eq!(node.routes().await, want, "{}: /routes", node.node_id);
        assert_eq!(node.cursor().await, head, "{}: cursor", node.node_id);
        assert_eq!(
            node.agent.metric("edge_agent_resyncs_total", &[]).await,
            0.0,
            "{}: resynchronised\n{}",
            node.node_id,
            tail(&node.agent.log(), 30)
        );
        // Exactly once: every served event reached the agent one time.
        assert_eq!(
            node.agent.metric("edge_agent_events_total", &[]).await as usize,
            events.len(),
            "{}: events absorbed",
            node.node_id
        );
    }
}
