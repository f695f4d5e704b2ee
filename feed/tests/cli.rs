//! The `edge-feed` command line: `--version`, a bad `--store` exits 64
//! naming the flag, and `append` to a file store prints consecutive ids and
//! keeps them across runs. (Being an integration test of this package also
//! makes `cargo test --workspace` build the binary the end-to-end tests in
//! `tests/` start; without one, a clean clone has no `edge-feed` to run.)

use std::process::{Command, Output};

fn edge_feed(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edge-feed"))
        .args(args)
        .output()
        .expect("run edge-feed")
}

#[test]
fn version_names_the_binary() {
    let out = edge_feed(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("edge-feed "));
}

#[test]
fn an_unknown_store_scheme_exits_64_naming_the_flag() {
    let out = edge_feed(&[
        "append",
        "--store",
        "mysql://x",
        "route",
        "r-1",
        "route.created",
        "{}",
    ]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--store") && stderr.contains("mysql://x"),
        "{stderr}"
    );
}

#[test]
fn migrate_refuses_a_file_store() {
    let out = edge_feed(&["migrate", "--store", "file:/tmp/nothing.jsonl"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("postgres"));
}

#[test]
fn append_to_a_file_store_prints_each_new_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file:{}", dir.path().join("events.jsonl").display());
    let append = |id: &str, payload: &str| {
        let out = edge_feed(&[
            "append",
            "--store",
            &store,
            "env",
            id,
            "env.created",
            payload,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(append("env-a", r#"{"env_id":"env-a"}"#), "1");
    // A second process sees the first one's event: the id continues.
    assert_eq!(append("env-b", r#"{"env_id":"env-b"}"#), "2");
    let log = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2, "{log}");
    assert!(log.contains("env-a") && log.contains("env-b"), "{log}");
}

#[test]
fn a_payload_that_is_not_json_exits_64_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let store = format!("file:{}", path.display());
    let out = edge_feed(&[
        "append",
        "--store",
        &store,
        "env",
        "e",
        "env.created",
        "{not json",
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PAYLOAD_JSON"));
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(written.is_empty(), "{written}");
}
