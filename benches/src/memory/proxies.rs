//! The proxies measured, each a fresh child process pinned to core 1
//! (`taskset -c 1`, which execs the proxy: the child's PID is the
//! proxy's), listening on `127.0.0.1` with one SNI route,
//! `shop.example.com`, to a backend on `[::1]`, and configured so that
//! neither the connection count nor the hello timeout is what a figure
//! measures:
//!
//! - every proxy takes at least 9,800 connections (the machine's hard
//!   `RLIMIT_NOFILE` is 20,000 and a tunnel takes two descriptors, so
//!   20,000 connections cannot fit; 9,000 tunnels do), from one source
//!   address or many;
//! - an incomplete ClientHello is waited for 30 s (the figures are read
//!   within a few seconds).
//!
//! The edge's listener is its env's dedicated IPv4 add-on set to
//! `127.0.0.1` (loopback is exempt from the address rules), with the port
//! in the env's `ports`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edge_tests::edge::{Route, Toml};
use edge_tests::ports::free_port;

/// Connections each proxy is allowed (see the module's docs).
pub const MAX_CONNECTIONS: usize = 9_800;
/// How long each proxy waits for a ClientHello to complete.
pub const HELLO_WAIT_SECS: u64 = 30;
/// The one hostname routed.
pub const HOST: &str = "shop.example.com";

const ENV: &str = "acme/mem/prod";

/// A running proxy: killed (by its PID) and reaped when dropped.
#[derive(Debug)]
pub struct Running {
    pub name: &'static str,
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The edge's admin listener, for the edge.
    pub admin: Option<SocketAddr>,
    child: Child,
    dir: tempfile::TempDir,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The proxy's log (stderr, or its error log), for a failure message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Panics, with the log, if the process has exited.
    pub fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}); log:\n{}", self.name, self.log());
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The peers measured beside the edge.
pub const PEERS: [&str; 3] = ["haproxy", "nginx", "sniproxy"];

/// Starts `name` (`edge` or one of [`PEERS`]) routing to `backend`, and
/// waits until it accepts connections.
pub async fn start(name: &str, backend: SocketAddr) -> Running {
    let port = free_port();
    let running = match name {
        "edge" => return edge_v4(port, backend).await,
        "haproxy" => haproxy(port, backend),
        "nginx" => nginx(port, backend),
        "sniproxy" => sniproxy(port, backend),
        other => panic!("no proxy named {other}"),
    };
    wait_listening(running).await
}

/// The edge's `edge.toml` for the connection figures: the route on
/// `127.0.0.1:port`, limits raised as the module's docs say.
pub fn edge_v4_toml(port: u16, backend: SocketAddr) -> Toml {
    Toml::new()
        .limit("max_connections", MAX_CONNECTIONS)
        .limit("max_connections_per_source", MAX_CONNECTIONS)
        .limit("client_hello_timeout_ms", HELLO_WAIT_SECS * 1000)
        .env(ENV, &[], Some("127.0.0.1"), &[port])
        .instance("i-1", ENV, "web", "::1")
        .route(Route::tls("r-shop", ENV, HOST, port, backend.port()))
}

async fn edge_v4(port: u16, backend: SocketAddr) -> Running {
    let toml = edge_v4_toml(port, backend);
    let (running, _) = edge(&toml, SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await;
    wait_listening(running).await
}

/// Starts the edge on `toml`, pinned to core 1, and waits until /readyz
/// answers 200; returns it with the time from spawn to ready.
pub async fn edge(toml: &Toml, addr: SocketAddr) -> (Running, Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("edge.toml");
    std::fs::write(&config, toml.render()).expect("write edge.toml");
    let started = Instant::now();
    let child = Command::new("taskset")
        .args(["-c", "1"])
        .arg(std::env::var("EDGE_BIN").expect("EDGE_BIN set by release_binaries"))
        .arg("--config")
        .arg(&config)
        .env("EDGE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file(dir.path()))
        .spawn()
        .expect("start the edge");
    let mut running = Running {
        name: "edge",
        addr,
        admin: Some(toml.admin),
        child,
        dir,
    };
    let deadline = started + Duration::from_secs(120);
    loop {
        if let Ok((200, _)) = edge_tests::edge::get(toml.admin, "/readyz").await {
            return (running, started.elapsed());
        }
        running.assert_alive();
        assert!(
            Instant::now() < deadline,
            "edge not ready; log:\n{}",
            running.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// HAProxy 2.6, one thread, `tcp-request content` SNI routing as its
/// documentation shows (as the load bench's), on `127.0.0.1`.
fn haproxy(port: u16, backend: SocketAddr) -> Running {
    let cfg = format!(
        "global\n  nbthread 1\n  maxconn {MAX_CONNECTIONS}\n\n\
         defaults\n  mode tcp\n  timeout connect 3s\n  timeout client 1h\n  timeout server 1h\n\n\
         frontend fe\n  bind 127.0.0.1:{port}\n  tcp-request inspect-delay {HELLO_WAIT_SECS}s\n  \
         tcp-request content accept if {{ req_ssl_hello_type 1 }}\n  \
         use_backend shop if {{ req_ssl_sni -i {HOST} }}\n\n\
         backend shop\n  server s1 {backend}\n"
    );
    spawn("haproxy", "haproxy.cfg", &cfg, port, |config| {
        let mut c = Command::new("haproxy");
        c.arg("-db").arg("-f").arg(config);
        c
    })
}

/// nginx 1.22's stream module with `ssl_preread`, one process
/// (`master_process off`: the process measured is the one that holds
/// the connections), `worker_connections` counting both legs of a tunnel.
fn nginx(port: u16, backend: SocketAddr) -> Running {
    let cfg = |dir: &Path| {
        let dir = dir.display();
        format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
             daemon off;\nmaster_process off;\nworker_processes 1;\n\
             worker_rlimit_nofile 20000;\npid {dir}/nginx.pid;\nerror_log {dir}/log warn;\n\
             events {{ worker_connections {conns}; }}\n\
             stream {{\n  upstream shop {{ server {backend}; }}\n  \
             map $ssl_preread_server_name $upstream {{ {HOST} shop; }}\n  \
             server {{\n    listen 127.0.0.1:{port};\n    ssl_preread on;\n    \
             preread_timeout {HELLO_WAIT_SECS}s;\n    proxy_timeout 1h;\n    \
             proxy_pass $upstream;\n  }}\n}}\n",
            conns = 2 * MAX_CONNECTIONS + 100,
        )
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let text = cfg(dir.path());
    spawn_in(dir, "nginx", "nginx.conf", &text, port, |config| {
        let mut c = Command::new("nginx");
        c.arg("-p")
            .arg(config.parent().expect("config dir"))
            .arg("-e")
            .arg(config.with_file_name("log"))
            .arg("-c")
            .arg(config);
        c
    })
}

/// sniproxy 0.6, in the foreground, its descriptor limit raised, the
/// hostname an anchored regex. It has no ClientHello timeout to set.
fn sniproxy(port: u16, backend: SocketAddr) -> Running {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().display();
    let cfg = format!(
        "pidfile {d}/sniproxy.pid\n\
         error_log {{\n  filename {d}/log\n  priority notice\n}}\n\
         listener 127.0.0.1:{port} {{\n  protocol tls\n  table shop\n}}\n\
         table shop {{\n  ^{host}$ {backend}\n}}\n",
        host = HOST.replace('.', "\\.")
    );
    spawn_in(dir, "sniproxy", "sniproxy.conf", &cfg, port, |config| {
        let mut c = Command::new("sniproxy");
        c.arg("-f").arg("-n").arg("20000").arg("-c").arg(config);
        c
    })
}

fn spawn(
    name: &'static str,
    file: &str,
    cfg: &str,
    port: u16,
    command: impl FnOnce(&Path) -> Command,
) -> Running {
    let dir = tempfile::tempdir().expect("temp dir");
    spawn_in(dir, name, file, cfg, port, command)
}

fn spawn_in(
    dir: tempfile::TempDir,
    name: &'static str,
    file: &str,
    cfg: &str,
    port: u16,
    command: impl FnOnce(&Path) -> Command,
) -> Running {
    let config = dir.path().join(file);
    std::fs::write(&config, cfg).unwrap_or_else(|e| panic!("write {file}: {e}"));
    let inner = command(&config);
    let child = Command::new("taskset")
        .args(["-c", "1"])
        .arg(inner.get_program())
        .args(inner.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file(dir.path()))
        .spawn()
        .unwrap_or_else(|e| panic!("start {name} (apt-get install {name}): {e}"));
    Running {
        name,
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        admin: None,
        child,
        dir,
    }
}

fn log_file(dir: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))
        .expect("log file")
}

async fn wait_listening(mut running: Running) -> Running {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(running.addr).await.is_err() {
        running.assert_alive();
        assert!(
            Instant::now() < deadline,
            "{} did not start listening; log:\n{}",
            running.name,
            running.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running
}
