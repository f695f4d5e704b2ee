//! The `edge` command line as an operator uses it: `--version`, and
//! `edge check` on good and bad files. (Being an integration test of this
//! package also makes `cargo test --workspace` build the `edge` binary that
//! the black-box suite in `tests/` runs.)

use std::process::Command;

fn edge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edge"))
}

fn example(name: &str) -> String {
    format!("{}/../deploy/examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn version_names_the_binary() {
    let out = edge().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("edge "));
}

#[test]
fn check_prints_the_listener_table_of_the_quick_start() {
    let out = edge()
        .args(["check", "--config", &example("local.toml")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("3 listeners, 3 routes, 0 rejected"),
        "{stdout}"
    );
    assert!(stdout.contains("[::1]:8443"), "{stdout}");
    assert!(stdout.contains("127.0.0.1:5432"), "{stdout}");
}

#[test]
fn check_names_every_rejected_route_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.toml");
    let mut text = std::fs::read_to_string(example("contract.toml")).unwrap();
    text.push_str(concat!(
        "\n[[routes]]\nid = \"r-smtp\"\nenv = \"acme/shop/prod\"\nhostname = \"mail.example.com\"\n",
        "listen_port = 25\nprotocol = \"tcp_raw\"\nbackend_port = 25\n",
        "\n[[routes]]\nid = \"r-other-env\"\nenv = \"acme/blog/prod\"\nhostname = \"blog.example.com\"\n",
        "listen_port = 443\nprotocol = \"tls_passthrough\"\nbackend_port = 8443\n",
    ));
    std::fs::write(&path, text).unwrap();
    let out = edge()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(65), "{stdout}");
    assert!(stdout.contains("error: route r-smtp: port 25"), "{stdout}");
    assert!(
        stdout.contains("error: route r-other-env: env acme/blog/prod is not defined"),
        "{stdout}"
    );
    assert!(
        stdout.contains("r-1"),
        "the valid route still compiles: {stdout}"
    );
}

#[test]
fn unreadable_or_invalid_config_exits_64_naming_the_problem() {
    let out = edge()
        .args(["check", "--config", "/nonexistent/edge.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/edge.toml"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.toml");
    std::fs::write(&path, "[limits]\nidle_timeout_ms = 0\n").unwrap();
    let out = edge()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.idle_timeout_ms"));
}

#[test]
fn a_bad_command_line_exits_64_and_help_exits_0() {
    let out = edge().arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
    let out = edge().args(["check", "--config"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "a missing value: {out:?}");
    let out = edge().args(["frobnicate"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "an unknown subcommand: {out:?}"
    );
    for ok in [&["--help"][..], &["check", "--help"], &["--version"]] {
        let out = edge().args(ok).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{ok:?}: {out:?}");
        assert!(!out.stdout.is_empty(), "{ok:?} prints to stdout");
    }
}

#[test]
fn check_syntax_only_passes_rejected_objects_and_fails_on_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.toml");
    let mut text = std::fs::read_to_string(example("contract.toml")).unwrap();
    text.push_str(concat!(
        "\n[[routes]]\nid = \"r-smtp\"\nenv = \"acme/shop/prod\"\nhostname = \"mail.example.com\"\n",
        "listen_port = 25\nprotocol = \"tcp_raw\"\nbackend_port = 25\n",
    ));
    std::fs::write(&path, &text).unwrap();
    let strict = edge()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(strict.status.code(), Some(65), "plain check stays strict");
    let out = edge()
        .args(["check", "--syntax-only", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("config ok: 1 envs, 1 instances, 2 routes"),
        "{stdout}"
    );

    for (broken, names) in [
        ("[admin\nlisten = 1\n", "edge.toml"),
        (
            "[[routes]]\nid = \"r\"\nlisten_port = \"https\"\n",
            "listen_port",
        ),
        ("[limits]\nmax_connections = 0\n", "limits.max_connections"),
        (
            "[overlay]\nallowed_backends = [\"::1/129\"]\n",
            "prefix length",
        ),
    ] {
        std::fs::write(&path, broken).unwrap();
        let out = edge()
            .args(["check", "--syntax-only", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{broken:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(names), "{broken:?}: {stderr}");
    }
    let out = edge()
        .args([
            "check",
            "--syntax-only",
            "--config",
            "/nonexistent/edge.toml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn the_quick_start_example_fits_a_default_descriptor_limit() {
    let text = std::fs::read_to_string(example("local.toml")).unwrap();
    let config = edge::config::Config::parse(&text, std::path::Path::new("local.toml")).unwrap();
    // A shell's default `ulimit -n` is 1024: 256 kept back, 2 per connection.
    assert!(config.limits.max_connections <= (1024 - 256) / 2);
}
