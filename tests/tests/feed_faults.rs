//! Faults around the PostgreSQL feed: the database restarted (crashed)
//! under load, the feed killed and restarted, NOTIFY suppressed, writers
//! that try to rewrite history, and the two properties the no-skip
//! technique rests on (the append lock comes before the identity value; a
//! concurrent writer on one aggregate gets a typed conflict).

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_feed::pg::{PgOptions, PgStore};
use edge_feed::{AppendError, NewEvent, Store};
use edge_tests::edge::get;
use edge_tests::edge_feed::{
    feed_cli, materialised_routes, migrate, served_events, FeedProcess, Node, Via,
};
use edge_tests::postgres::Postgres;
use serde_json::json;

const ENV: &str = "acme/shop/prod";

fn route(i: usize, v: usize, port: u16) -> NewEvent {
    NewEvent {
        event_type: if v == 0 {
            "route.created"
        } else {
            "route.updated"
        }
        .into(),
        payload: json!({"id": format!("r-{i}"), "env": ENV,
                        "hostname": format!("r-{i}-v{v}.example.com"), "listen_port": port,
                        "protocol": "tls_passthrough", "backend_process_type": "web",
                        "backend_port": 8443}),
    }
}

async fn seeded(pg: &Postgres) -> Arc<PgStore> {
    migrate(&pg.url());
    let store = Arc::new(
        PgStore::connect(&pg.url(), PgOptions { listen: false })
            .await
            .unwrap(),
    );
    let env = NewEvent {
        event_type: "env.configured".into(),
        payload: json!({"id": ENV, "ipv6": ["::1"], "ipv4": null, "ports": []}),
    };
    store.append("env", ENV, &[env]).await.unwrap();
    store
}

/// Appends `count` route events over 20 routes, retrying through outages
/// (an append whose commit was lost in a crash may or may not be in the
/// log: the expectations are computed from the log itself).
async fn write(store: &PgStore, count: usize, first: usize, ports: &[u16]) {
    for n in first..first + count {
        let i = n % 20;
        let port = ports[i % ports.len()];
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = store
            .append("route", &format!("r-{i}"), &[route(i, n, port)])
            .await
        {
            assert!(Instant::now() < deadline, "append never recovered: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn all_caught_up(pg: &Postgres, nodes: &[&Node]) {
    let events = served_events(&pg.client().await).await;
    let head = events.last().unwrap().event_id;
    for node in nodes {
        node.wait_cursor(head, Duration::from_secs(60)).await;
        assert_eq!(node.routes().await, materialised_routes(&events, node.port));
        assert_eq!(
            node.agent.metric("edge_agent_resyncs_total", &[]).await,
            0.0,
            "{} resynchronised",
            node.node_id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashing_mid_stream_loses_nothing_and_edges_keep_serving() {
    let mut pg = Postgres::start().await;
    let store = seeded(&pg).await;
    let feed = FeedProcess::start(&pg.url(), &[]).await;
    let grpc = Node::start("pg-crash-grpc", &feed, Via::Grpc).await;
    let poll = Node::start("pg-crash-poll", &feed, Via::Poll).await;
    let ports = [grpc.port, poll.port];
    write(&store, 100, 0, &ports).await;
    grpc.wait_cursor(50, Duration::from_secs(60)).await;
    poll.wait_cursor(50, Duration::from_secs(60)).await;

    let writing = tokio::spawn({
        let store = Arc::clone(&store);
        async move { write(&store, 200, 100, &ports).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    pg.crash();
    // The edges serve what they have while the database is away.
    for node in [&grpc, &poll] {
        assert!(
            !node.routes().await.is_empty(),
            "{} serves its last table",
            node.node_id
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.restart().await;
    writing.await.unwrap();
    all_caught_up(&pg, &[&grpc, &poll]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_restarted_feed_loses_nothing() {
    let pg = Postgres::start().await;
    let store = seeded(&pg).await;
    let mut feed = FeedProcess::start(&pg.url(), &[]).await;
    let grpc = Node::start("feed-kill-grpc", &feed, Via::Grpc).await;
    let poll = Node::start("feed-kill-poll", &feed, Via::Poll).await;
    let ports = [grpc.port, poll.port];
    write(&store, 60, 0, &ports).await;
    feed.kill();
    write(&store, 60, 60, &ports).await; // committed while no feed runs
    feed.restart().await;
    write(&store, 60, 120, &ports).await;
    all_caught_up(&pg, &[&grpc, &poll]).await;
}

/// Holds `GET /events?after=HEAD&wait_ms=…` open, appends without NOTIFY,
/// returns how long until the event was served.
async fn served_after_silent_append(feed: &FeedProcess, pg: &Postgres, instance: &str) -> Duration {
    let client = pg.client().await;
    let head: i64 = client
        .query_one("SELECT max(event_id) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    let http = feed.http;
    let poll = tokio::spawn(async move {
        get(
            http,
            &format!("/events?after={head}&wait_ms=20000&node_id=t"),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await; // the poll is waiting
    client
        .batch_execute(&format!(
            "SET edge_feed.notify = 'off';
             INSERT INTO events (aggregate_type, aggregate_id, aggregate_seq, event_type, payload)
             VALUES ('instance', '{instance}', 1, 'instance.down', '{{}}');"
        ))
        .await
        .unwrap();
    let appended = Instant::now();
    let (status, body) = poll.await.unwrap().unwrap();
    let took = appended.elapsed();
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["events"][0]["aggregate_id"], instance, "{doc}");
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_notify_events_still_arrive_within_the_fallback_interval() {
    let pg = Postgres::start().await;
    let _store = seeded(&pg).await;
    // The documented fallback is 500 ms; allow a loaded machine 1.5 s more.
    let bound = Duration::from_millis(2000);
    let feed = FeedProcess::start(&pg.url(), &["--fallback-ms", "500"]).await;
    let took = served_after_silent_append(&feed, &pg, "i-silent-1").await;
    eprintln!("a writer without NOTIFY: served after {took:?}");
    assert!(took < bound, "{took:?}");
    drop(feed);
    // No LISTEN connection at all: the same bound.
    let feed = FeedProcess::start(&pg.url(), &["--fallback-ms", "500", "--no-listen"]).await;
    let took = served_after_silent_append(&feed, &pg, "i-silent-2").await;
    eprintln!("a feed without LISTEN: served after {took:?}");
    assert!(took < bound, "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_cannot_update_delete_or_truncate_events() {
    let pg = Postgres::start().await;
    let _store = seeded(&pg).await;
    let client = pg.client().await;
    for sql in [
        "UPDATE events SET payload = '{}'",
        "DELETE FROM events",
        "TRUNCATE events",
    ] {
        let e = client.batch_execute(sql).await.unwrap_err();
        let msg = e
            .as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_default();
        assert!(msg.contains("append-only"), "{sql}: {msg}");
    }
    // The application's role may read and append, nothing else.
    client
        .batch_execute("CREATE ROLE app LOGIN IN ROLE edge_events_writer")
        .await
        .unwrap();
    let url = pg.url().replace("postgres@", "app@");
    let (app, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    app.batch_execute(
        "INSERT INTO events (aggregate_type, aggregate_id, aggregate_seq, event_type, payload) \
         VALUES ('env', 'e-2', 1, 'env.deleted', '{}')",
    )
    .await
    .unwrap();
    for sql in ["UPDATE events SET payload = '{}'", "DELETE FROM events"] {
        let e = app.batch_execute(sql).await.unwrap_err();
        let code = e.code().cloned();
        assert_eq!(
            code,
            Some(tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {e:?}"
        );
    }
    assert_eq!(
        served_events(&client).await.len(),
        2,
        "nothing was changed or removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_append_lock_is_taken_before_the_identity_value() {
    let pg = Postgres::start().await;
    let _store = seeded(&pg).await;
    let mut a = pg.client().await;
    let b = pg.client().await;
    let watcher = pg.client().await;
    let seq_sql = "SELECT last_value FROM events_event_id_seq";
    let tx = a.transaction().await.unwrap();
    let first: i64 = tx
        .query_one(
            "INSERT INTO events (aggregate_type, aggregate_id, aggregate_seq, event_type, payload) \
             VALUES ('route', 'r-a', 1, 'route.deleted', '{}') RETURNING event_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let blocked = tokio::spawn(async move {
        b.query_one(
            "INSERT INTO events (aggregate_type, aggregate_id, aggregate_seq, event_type, payload) \
             VALUES ('route', 'r-b', 1, 'route.deleted', '{}') RETURNING event_id",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    });
    // Wait until B waits for the advisory lock.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never queued for the append lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last: i64 = watcher.query_one(seq_sql, &[]).await.unwrap().get(0);
    assert_eq!(
        last, first,
        "B has not taken an identity value while it waits"
    );
    tx.commit().await.unwrap();
    assert_eq!(blocked.await.unwrap(), first + 1, "ids follow commit order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_writer_on_one_aggregate_gets_a_conflict_never_a_duplicate() {
    let pg = Postgres::start().await;
    let store = seeded(&pg).await;
    store
        .append("route", "r-1", &[route(1, 0, 9999)])
        .await
        .unwrap();
    // Another writer has appended seq 2 but not committed yet.
    let mut other = pg.client().await;
    let tx = other.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO events (aggregate_type, aggregate_id, aggregate_seq, event_type, payload) \
         VALUES ('route', 'r-1', 2, 'route.deleted', '{}')",
        &[],
    )
    .await
    .unwrap();
    let ours = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.append("route", "r-1", &[route(1, 1, 9999)]).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await; // ours read seq 1 and waits
    tx.commit().await.unwrap();
    match ours.await.unwrap() {
        Err(AppendError::Conflict {
            aggregate_id,
            aggregate_seq,
            ..
        }) => assert_eq!((aggregate_id.as_str(), aggregate_seq), ("r-1", 2)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Retrying reads the new version and succeeds.
    store
        .append("route", "r-1", &[route(1, 2, 9999)])
        .await
        .unwrap();
    let seqs: Vec<u64> = served_events(&pg.client().await)
        .await
        .iter()
        .filter(|e| e.aggregate_id == "r-1")
        .map(|e| e.aggregate_seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    // The CLI says the same, with its own exit code, and prints the id.
    let out = feed_cli(&[
        "append",
        "--store",
        &pg.url(),
        "route",
        "r-1",
        "route.deleted",
        "{}",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(id > 0);
}
