//! The saved table (`state_dir/routing.json`) and readiness with
//! `[control]`: an unreadable or newer-format file is kept aside and holds
//! /readyz at 503 `state_unreadable` until a push; a new node with no
//! routes holds it at `never_synced`; the table version keeps growing
//! across restarts.

use std::path::Path;

use edge_tests::control::{route_ids, routing, Control, Push};
use edge_tests::edge::{Edge, Route, Toml};
use edge_tests::ports::free_port;
use edge_tests::PATIENCE;

fn edge_toml(dir: &Path, port: u16) -> Toml {
    Toml::new()
        .control(&dir.join("control.sock"), &dir.join("state"))
        .policy("ipv6_extra_ports", &format!("[{port}]"))
}

/// Waits until /readyz answers `status`; returns the body.
async fn readyz_until(edge: &Edge, status: u16) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok((s, body)) = edge_tests::edge::get(edge.admin, "/readyz").await {
            if s == status {
                return body;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never answered {status}; log:\n{}",
            edge.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The files in `dir` whose name starts with `prefix`.
fn files(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect()
}

async fn held_back_by_a_bad_saved_table(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("routing.json"), bytes).unwrap();
    let port = free_port();
    let edge = Edge::spawn(&edge_toml(dir.path(), port), &[]);
    let control = Control::new(&dir.path().join("control.sock"));

    let body = readyz_until(&edge, 503).await;
    assert_eq!(body, r#"{"reason":"state_unreadable"}"#);
    let status = control.wait_up().await;
    assert_eq!(status.not_ready_reason, "state_unreadable");
    assert!(!status.ready);
    let kept = files(&state, "routing.json.unreadable-");
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        std::fs::read(&kept[0]).unwrap(),
        bytes,
        "kept with its bytes intact"
    );
    assert!(!state.join("routing.json").exists());
    assert_eq!(edge.metric("edge_state_unreadable_total", &[]).await, 1.0);
    assert!(edge.log().contains("moved aside"), "{}", edge.log());
    // Still held back a while later: nothing but a push clears it.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(edge.get("/readyz").await.0, 503);

    let table = routing(&[("r-a", "a.example.com", port)], 9);
    let pushed = control.push(&Push::new(table, 1, 5)).await.unwrap();
    assert!(pushed.ack);
    let body = readyz_until(&edge, 200).await;
    assert_eq!(body, format!("{{\"version\":{}}}", pushed.table_version));
    assert_eq!(route_ids(&edge.get("/routes").await.1), ["r-a"]);
    assert_eq!(control.status().await.unwrap().not_ready_reason, "");
    // The push wrote a new routing.json; the kept file is untouched.
    assert!(state.join("routing.json").exists());
    assert_eq!(std::fs::read(&kept[0]).unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_saved_table_is_kept_aside_and_holds_readiness_until_a_push() {
    held_back_by_a_bad_saved_table(b"{\"format\": 1, \"routing\": {\"routes\": [tru").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_table_of_a_newer_format_is_treated_as_unreadable() {
    held_back_by_a_bad_saved_table(
        br#"{"format": 2, "tables": {"default": {"routes": []}}, "routing": {"routes": []}}"#,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_with_no_routes_is_not_ready_until_its_first_push() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let edge = Edge::spawn(&edge_toml(dir.path(), port), &[]);
    let control = Control::new(&dir.path().join("control.sock"));
    let status = control.wait_up().await;
    assert_eq!(status.not_ready_reason, "never_synced");
    let (code, body) = edge.get("/readyz").await;
    assert_eq!((code, body.as_str()), (503, r#"{"reason":"never_synced"}"#));
    assert_eq!(edge.metric("edge_state_unreadable_total", &[]).await, 0.0);

    let pushed = control
        .push(&Push::new(
            routing(&[("r-a", "a.example.com", port)], 9),
            1,
            1,
        ))
        .await
        .unwrap();
    let body = readyz_until(&edge, 200).await;
    assert_eq!(body, format!("{{\"version\":{}}}", pushed.table_version));
    // After the first push the normal rule holds for good: an empty table
    // is ready.
    let empty = routing(&[], 9);
    let emptied = control.push(&Push::new(empty, 1, 2)).await.unwrap();
    let (code, body) = edge.get("/readyz").await;
    assert_eq!(
        (code, body),
        (200, format!("{{\"version\":{}}}", emptied.table_version))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_version_keeps_growing_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let toml = edge_toml(dir.path(), port);
    let control = Control::new(&dir.path().join("control.sock"));
    let before = {
        let mut edge = Edge::spawn(&toml, &[]);
        control.wait_up().await;
        let mut last = 0;
        for cursor in 1..=3 {
            let table = routing(&[("r-a", "a.example.com", port)], 9);
            last = control
                .push(&Push::new(table, 1, cursor))
                .await
                .unwrap()
                .table_version;
        }
        assert_eq!(edge.version().await, last);
        edge.signal("TERM");
        edge.wait_exit(PATIENCE).await.expect("edge exits");
        last
    };
    let edge = Edge::start(&toml).await;
    let after = edge.version().await;
    assert!(
        after > before,
        "version {after} after a restart, {before} before"
    );
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state/routing.json")).unwrap())
            .unwrap();
    assert_eq!(saved["format"], 1);
    assert_eq!(
        saved["table_version"], after,
        "the saved table is re-saved with the version that serves it now"
    );
    let table = routing(&[("r-a", "a.example.com", port)], 9);
    let next = control.push(&Push::new(table, 1, 4)).await.unwrap();
    assert!(next.table_version > after);
}

/// The edge keeps no copy of a pushed table's spec, only `routing.json`:
/// SIGHUP reads the table back from it and re-applies it under the new
/// edge.toml (saved again with its new version), and the file's own routes
/// never replace it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reapplies_the_pushed_table_read_back_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let edge = Edge::spawn(&edge_toml(dir.path(), port), &[]);
    let control = Control::new(&dir.path().join("control.sock"));
    control.wait_up().await;
    let table = routing(&[("r-a", "a.example.com", port)], 9);
    let pushed = control
        .push(&Push::new(table, 1, 1))
        .await
        .unwrap()
        .table_version;

    let with_file_routes = edge_toml(dir.path(), port)
        .env("acme/file/prod", &["::1"], None, &[])
        .instance("i-file", "acme/file/prod", "web", "::1")
        .route(Route::tls(
            "r-file",
            "acme/file/prod",
            "file.example.com",
            port,
            9,
        ));
    edge.reload(&with_file_routes).await;

    let (_, routes) = edge.get("/routes").await;
    assert_eq!(route_ids(&routes), vec!["r-a".to_owned()], "{routes}");
    let version = edge.version().await;
    assert!(
        version > pushed,
        "version {version} after SIGHUP, {pushed} pushed"
    );
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state/routing.json")).unwrap())
            .unwrap();
    assert_eq!(saved["table_version"], version);
    assert_eq!(saved["routing"]["routes"][0]["id"], "r-a", "{saved}");
}
