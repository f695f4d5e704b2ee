//! The control socket checks its peer's uid (SO_PEERCRED): only the edge's
//! own uid and root may use it, even when the socket file's permissions
//! would let others connect. Needs root (to run a client as `nobody`
//! with setpriv); elsewhere the test says it is skipped.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use edge_tests::control::Control;
use edge_tests::edge::{Edge, Route, Toml};
use edge_tests::ports::free_port;

/// A client that sends the HTTP/2 preface and an empty SETTINGS frame and
/// prints whether the server answered or closed the connection.
const CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
try:
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    data = s.recv(100)
except (ConnectionResetError, BrokenPipeError):
    data = b""
except socket.timeout:
    data = b"timeout"
print("closed" if data == b"" else ("timeout" if data == b"timeout" else "answered"))
"#;

const PYTHON: &str = "/usr/bin/python3";

fn client(socket: &Path, as_nobody: bool) -> String {
    let mut command = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", PYTHON]);
        c
    } else {
        Command::new(PYTHON)
    };
    let out = command.args(["-c", CLIENT]).arg(socket).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_uid_is_refused_and_logged() {
    let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    let tools =
        Path::new(PYTHON).exists() && Command::new("setpriv").arg("--version").output().is_ok();
    if !root || !tools {
        eprintln!("skipped: needs root, setpriv and {PYTHON} to connect as another uid");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let port = free_port();
    let toml = Toml::new()
        .control(&socket, &dir.path().join("state"))
        .policy("ipv6_extra_ports", &format!("[{port}]"))
        .env("acme/shop/prod", &["::1"], None, &[])
        .route(Route::tls(
            "r-1",
            "acme/shop/prod",
            "a.example.com",
            port,
            9,
        ));
    let edge = Edge::start(&toml).await;
    Control::new(&socket).wait_up().await;
    // Loosen the file system's guard so only the uid check stands.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();

    assert_eq!(client(&socket, false), "answered", "root is let in");
    assert_eq!(client(&socket, true), "closed", "uid 65534 is turned away");
    assert!(
        edge.log()
            .contains("peer uid is neither the edge's nor root"),
        "{}",
        edge.log()
    );
    assert!(edge.log().contains("uid=65534"), "{}", edge.log());
    Control::new(&socket).wait_up().await;
}
