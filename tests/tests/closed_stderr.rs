//! Logging never takes a process down: `edge … 2>&1 | head` or a journald
//! hiccup closes the read end of stderr, and every later log line fails
//! with EPIPE. Both binaries must drop those lines and go on serving.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use edge_tests::agent::{agent_bin, AgentToml};
use edge_tests::edge::{edge_bin, get, metric_value, Toml};

/// Spawns `command` with stderr on a pipe, reads its first log line, then
/// closes the pipe's read end: from here on every write to stderr fails.
fn spawn_then_close_stderr(mut command: Command) -> Child {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut first = String::new();
    BufReader::new(stderr)
        .read_line(&mut first)
        .expect("first log line");
    assert!(!first.is_empty(), "the process logged nothing");
    // `stderr` is dropped here: the pipe has no reader any more.
    child
}

fn alive(child: &mut Child) -> bool {
    child.try_wait().expect("try_wait").is_none()
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_keeps_serving_after_its_stderr_closes() {
    let toml = Toml::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("edge.toml");
    std::fs::write(&config, toml.render()).unwrap();
    let mut command = Command::new(edge_bin());
    command.arg("--config").arg(&config).env("EDGE_LOG", "info");
    let mut edge = spawn_then_close_stderr(command);
    // Ready means the signal handlers are installed: a SIGHUP before them
    // would end the process by its default action, not by a log write.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !matches!(get(toml.admin, "/readyz").await, Ok((200, _))) {
        assert!(alive(&mut edge), "edge died before it was ready");
        assert!(std::time::Instant::now() < deadline, "edge never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Each SIGHUP logs several lines into the closed pipe.
    for _ in 0..5 {
        let status = Command::new("kill")
            .args(["-HUP", &edge.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alive(&mut edge), "edge died after its stderr closed");
    let (status, body) = get(toml.admin, "/readyz").await.expect("admin answers");
    assert_eq!(status, 200, "{body}");
    stop(edge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_keeps_running_after_its_stderr_closes() {
    let dir = tempfile::tempdir().unwrap();
    // No feed and no edge: the agent logs a warning at every retry.
    let mut toml = AgentToml::new(
        "n-1",
        &dir.path().join("state"),
        &dir.path().join("nope.sock"),
    );
    toml.poll = Some("127.0.0.1:9".parse().unwrap());
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, toml.render()).unwrap();
    let mut command = Command::new(agent_bin());
    command
        .arg("--config")
        .arg(&config)
        .env("EDGE_AGENT_LOG", "debug");
    let mut agent = spawn_then_close_stderr(command);
    let reconnects = || async {
        let (status, body) = get(toml.metrics, "/metrics").await.expect("metrics answer");
        assert_eq!(status, 200);
        metric_value(&body, "edge_agent_reconnects_total", &[])
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = reconnects().await;

    // Every failed attempt logs a warning into the closed pipe; the loop
    // that logs them must go on (a panic in it would stop the count).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(alive(&mut agent), "edge-agent died after its stderr closed");
    let after = reconnects().await;
    assert!(
        after > before,
        "the agent stopped retrying after its stderr closed ({before} -> {after})"
    );
    stop(agent);
}
