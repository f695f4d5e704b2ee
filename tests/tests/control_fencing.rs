//! Pushes are fenced by (generation, source_version): a second agent, or
//! one restored from an old backup, cannot roll the table back, while a
//! newer generation (a resynchronised agent) replaces the table even with
//! a lower cursor. The fence survives a restart with the table.

use edge_tests::control::{route_ids, routing, Control, Push};
use edge_tests::edge::{Edge, Toml};
use edge_tests::ports::free_port;

fn edge_toml(dir: &std::path::Path, ports: &[u16]) -> Toml {
    Toml::new()
        .control(&dir.join("control.sock"), &dir.join("state"))
        .policy("ipv6_extra_ports", &format!("{ports:?}"))
}

async fn routes(edge: &Edge) -> Vec<String> {
    route_ids(&edge.get("/routes").await.1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_generations_and_lower_cursors_are_refused_newer_generations_win() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let toml = edge_toml(dir.path(), &ports);
    let edge = Edge::spawn(&toml, &[]);
    let control = Control::new(&dir.path().join("control.sock"));
    control.wait_up().await;

    let table_a = routing(&[("r-a", "a.example.com", ports[0])], 9);
    let first = control
        .push(&Push::new(table_a.clone(), 100, 10))
        .await
        .unwrap();
    assert!(first.ack, "{first:?}");
    assert_eq!(routes(&edge).await, ["r-a"]);

    // A second agent, an older generation (even with a higher cursor).
    let table_b = routing(&[("r-b", "b.example.com", ports[1])], 9);
    let refused = control
        .push(&Push::new(table_b.clone(), 99, 50))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().starts_with("stale push"),
        "{}",
        refused.message()
    );
    for side in [
        "generation 99 source_version 50",
        "generation 100 source_version 10",
    ] {
        assert!(refused.message().contains(side), "{}", refused.message());
    }
    assert_eq!(
        routes(&edge).await,
        ["r-a"],
        "the refused table is not served"
    );

    // The same generation going back.
    let refused = control
        .push(&Push::new(table_b.clone(), 100, 9))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().starts_with("stale push"),
        "{}",
        refused.message()
    );
    assert_eq!(routes(&edge).await, ["r-a"]);

    // An idempotent re-push is accepted.
    let again = control
        .push(&Push::new(table_a.clone(), 100, 10))
        .await
        .unwrap();
    assert!(again.ack);
    assert!(again.table_version > first.table_version);

    // A newer generation with a lower cursor replaces the table.
    let table_c = routing(&[("r-c", "c.example.com", ports[2])], 9);
    let newer = control.push(&Push::new(table_c, 101, 3)).await.unwrap();
    assert!(newer.ack, "{newer:?}");
    assert_eq!(routes(&edge).await, ["r-c"]);
    // ... and from then on its cursor is the one that counts.
    let refused = control.push(&Push::new(table_b, 101, 2)).await.unwrap_err();
    assert!(
        refused.message().starts_with("stale push"),
        "{}",
        refused.message()
    );

    let status = control.status().await.unwrap();
    assert_eq!(
        (
            status.generation,
            status.source_version,
            status.feed_id.as_str()
        ),
        (101, 3, "feed-a")
    );
    let m = edge.metrics().await;
    let count = |outcome| {
        edge_tests::edge::metric_value(&m, "edge_control_pushes_total", &[("outcome", outcome)])
    };
    assert_eq!(
        (
            count("ack"),
            count("refused"),
            count("nack"),
            count("invalid")
        ),
        (3.0, 3.0, 0.0, 0.0),
        "{m}"
    );
    assert!(edge.log().contains("stale push"), "refusals are logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_is_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port()];
    let toml = edge_toml(dir.path(), &ports);
    let control = Control::new(&dir.path().join("control.sock"));
    {
        let mut edge = Edge::spawn(&toml, &[]);
        control.wait_up().await;
        let table = routing(&[("r-a", "a.example.com", ports[0])], 9);
        assert!(control.push(&Push::new(table, 7, 40)).await.unwrap().ack);
        edge.signal("TERM");
        edge.wait_exit(edge_tests::PATIENCE)
            .await
            .expect("edge exits");
    }
    let edge = Edge::start(&toml).await;
    assert_eq!(routes(&edge).await, ["r-a"], "the saved table serves");
    let stale = routing(&[("r-b", "b.example.com", ports[1])], 9);
    let refused = control.push(&Push::new(stale, 7, 39)).await.unwrap_err();
    assert!(
        refused.message().starts_with("stale push"),
        "{}",
        refused.message()
    );
    let status = control.status().await.unwrap();
    assert_eq!((status.generation, status.source_version), (7, 40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_of_an_unknown_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let toml = edge_toml(dir.path(), &[port]);
    let edge = Edge::spawn(&toml, &[]);
    let control = Control::new(&dir.path().join("control.sock"));
    control.wait_up().await;
    let table = routing(&[("r-a", "a.example.com", port)], 9);
    let refused = control
        .push(&Push::new(table.clone(), 1, 1).format(2))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("unknown format 2"),
        "{}",
        refused.message()
    );
    assert_eq!(routes(&edge).await, Vec::<String>::new());
    assert_eq!(
        edge.metric("edge_control_pushes_total", &[("outcome", "invalid")])
            .await,
        1.0
    );
    // Format 0 is an agent from before formats: read as format 1.
    assert!(
        control
            .push(&Push::new(table, 1, 1).format(0))
            .await
            .unwrap()
            .ack
    );
    assert_eq!(routes(&edge).await, ["r-a"]);
}
