//! The `edge-agent` command line: `--version`, and a config error that
//! names its field. (Being an integration test of this package also makes
//! `cargo test --workspace` build the binary the end-to-end tests run.)

use std::process::Command;

#[test]
fn version_names_the_binary() {
    let out = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("edge-agent "));
}

#[test]
fn a_bad_config_exits_64_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "node_id = \"n\"\nstate_dir = \"/tmp/x\"\n[feed]\n[edge]\ncontrol_socket = \"/tmp/c.sock\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("feed") && stderr.contains("agent.toml"),
        "{stderr}"
    );
}
