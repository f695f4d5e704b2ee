//! The edge as a process: an `edge.toml` built in code, the binary started
//! on it, /readyz awaited, /metrics and /routes read over real HTTP, and
//! signals delivered by PID (never by name).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ports::free_port;
use crate::PATIENCE;

/// One `[[routes]]` entry.
#[derive(Debug, Clone)]
pub struct Route {
    pub id: String,
    pub env: String,
    pub hostname: String,
    pub listen_port: u16,
    pub protocol: &'static str,
    pub process_type: String,
    pub backend_port: u16,
    pub proxy_protocol: bool,
}

impl Route {
    /// A `tls_passthrough` route to the `web` instances of `env`.
    pub fn tls(id: &str, env: &str, hostname: &str, listen_port: u16, backend_port: u16) -> Route {
        Route {
            id: id.into(),
            env: env.into(),
            hostname: hostname.into(),
            listen_port,
            protocol: "tls_passthrough",
            process_type: "web".into(),
            backend_port,
            proxy_protocol: false,
        }
    }

    /// A `tcp_raw` route to the `web` instances of `env`.
    pub fn raw(id: &str, env: &str, listen_port: u16, backend_port: u16) -> Route {
        Route {
            protocol: "tcp_raw",
            ..Route::tls(
                id,
                env,
                &format!("{id}.raw.example"),
                listen_port,
                backend_port,
            )
        }
    }

    pub fn process_type(mut self, process_type: &str) -> Route {
        self.process_type = process_type.into();
        self
    }

    pub fn proxy_protocol(mut self) -> Route {
        self.proxy_protocol = true;
        self
    }
}

/// An `edge.toml` built in code. Backends are allowed on `::1` and on the
/// `fd00:e1::/64` test overlay.
#[derive(Debug, Clone)]
pub struct Toml {
    pub admin: SocketAddr,
    limits: Vec<(String, String)>,
    policy: Vec<(String, String)>,
    control: Option<(PathBuf, PathBuf)>,
    upgrade: Option<PathBuf>,
    splice: Option<bool>,
    body: String,
}

impl Toml {
    pub fn new() -> Toml {
        Toml {
            admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
            limits: Vec::new(),
            policy: Vec::new(),
            control: None,
            upgrade: None,
            splice: None,
            body: String::new(),
        }
    }

    /// A `[limits]` key, value as TOML.
    pub fn limit(mut self, key: &str, value: impl ToString) -> Toml {
        self.limits.push((key.into(), value.to_string()));
        self
    }

    /// `[forwarding] splice`: zero-copy `splice(2)` (the default) or the
    /// user-space copy.
    pub fn splice(mut self, on: bool) -> Toml {
        self.splice = Some(on);
        self
    }

    /// A `[policy]` key, value as TOML.
    pub fn policy(mut self, key: &str, value: &str) -> Toml {
        self.policy.push((key.into(), value.into()));
        self
    }

    /// `[control]`: the socket edge-agent pushes to and the state dir.
    pub fn control(mut self, socket: &Path, state_dir: &Path) -> Toml {
        self.control = Some((socket.to_owned(), state_dir.to_owned()));
        self
    }

    /// `[upgrade]`: the socket a new edge takes the listeners over on.
    pub fn upgrade(mut self, socket: &Path) -> Toml {
        self.upgrade = Some(socket.to_owned());
        self
    }

    pub fn env(mut self, id: &str, ipv6: &[&str], ipv4: Option<&str>, ports: &[u16]) -> Toml {
        let _ = writeln!(
            self.body,
            "[[envs]]\nid = {id:?}\nipv6 = {ipv6:?}\nports = {ports:?}"
        );
        if let Some(v4) = ipv4 {
            let _ = writeln!(self.body, "ipv4 = {v4:?}");
        }
        self
    }

    pub fn instance(mut self, id: &str, env: &str, process_type: &str, addr: &str) -> Toml {
        let _ = writeln!(
            self.body,
            "[[instances]]\nid = {id:?}\nenv = {env:?}\nprocess_type = {process_type:?}\naddr = {addr:?}"
        );
        self
    }

    /// An instance that the control plane reports unhealthy.
    pub fn unhealthy_instance(
        mut self,
        id: &str,
        env: &str,
        process_type: &str,
        addr: &str,
    ) -> Toml {
        self = self.instance(id, env, process_type, addr);
        self.body.push_str("healthy = false\n");
        self
    }

    pub fn route(mut self, r: Route) -> Toml {
        let _ = writeln!(
            self.body,
            "[[routes]]\nid = {:?}\nenv = {:?}\nhostname = {:?}\nlisten_port = {}\nprotocol = {:?}\n\
             backend_process_type = {:?}\nbackend_port = {}\nproxy_protocol = {}",
            r.id, r.env, r.hostname, r.listen_port, r.protocol, r.process_type, r.backend_port, r.proxy_protocol
        );
        self
    }

    pub fn render(&self) -> String {
        let mut out = format!("[admin]\nlisten = \"{}\"\n\n[limits]\n", self.admin);
        for (k, v) in &self.limits {
            let _ = writeln!(out, "{k} = {v}");
        }
        if let Some((socket, state_dir)) = &self.control {
            let _ = writeln!(
                out,
                "\n[control]\nsocket = {socket:?}\nstate_dir = {state_dir:?}"
            );
        }
        if let Some(socket) = &self.upgrade {
            let _ = writeln!(out, "\n[upgrade]\nsocket = {socket:?}");
        }
        if let Some(on) = self.splice {
            let _ = writeln!(out, "\n[forwarding]\nsplice = {on}");
        }
        out.push_str("\n[policy]\n");
        for (k, v) in &self.policy {
            let _ = writeln!(out, "{k} = {v}");
        }
        out.push_str("\n[overlay]\nallowed_backends = [\"::1/128\", \"fd00:e1::/64\"]\n\n");
        out.push_str(&self.body);
        out
    }

    /// Raw TOML appended after everything else: keys for the entry above
    /// (`ipv4_required = true` after a route) or a whole table (`[health]`).
    pub fn append(mut self, text: &str) -> Toml {
        self.body.push_str(text);
        if !text.ends_with('\n') {
            self.body.push('\n');
        }
        self
    }
}

impl Default for Toml {
    fn default() -> Self {
        Toml::new()
    }
}

/// The `edge` binary: `$EDGE_BIN`, or the one cargo built beside this test.
pub fn edge_bin() -> PathBuf {
    built_binary("EDGE_BIN", "edge")
}

/// `$env_var`, or binary `name` of this workspace as cargo built it beside
/// the running test (`target/<profile>/deps/<test>` -> `target/<profile>/<name>`).
pub fn built_binary(env_var: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        return path.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name);
    assert!(
        bin.exists(),
        "{} not built: run `cargo test --workspace` first",
        bin.display()
    );
    bin
}

/// A running edge, killed by PID when dropped.
pub struct Edge {
    child: Child,
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
}

impl Edge {
    /// Starts the edge on `toml` and waits until /readyz answers 200.
    pub async fn start(toml: &Toml) -> Edge {
        let edge = Edge::spawn(toml, &[]);
        edge.wait_ready().await;
        edge
    }

    /// Starts the edge without waiting; `extra_args` go before `--config`.
    pub fn spawn(toml: &Toml, extra_args: &[&str]) -> Edge {
        Edge::spawn_env(toml, extra_args, &[])
    }

    /// As [`Edge::spawn`], with extra environment variables.
    pub fn spawn_env(toml: &Toml, extra_args: &[&str], envs: &[(&str, &str)]) -> Edge {
        Edge::spawn_with(Command::new(edge_bin()), toml, extra_args, envs)
    }

    /// Starts the edge on the CPUs of `cpus` only (`taskset -c`, which
    /// execs the edge: the child's PID is the edge's) and waits until
    /// it is ready.
    pub async fn start_pinned(toml: &Toml, cpus: &str) -> Edge {
        let mut taskset = Command::new("taskset");
        taskset.args(["-c", cpus]).arg(edge_bin());
        let edge = Edge::spawn_with(taskset, toml, &[], &[]);
        edge.wait_ready().await;
        edge
    }

    fn spawn_with(
        mut command: Command,
        toml: &Toml,
        extra_args: &[&str],
        envs: &[(&str, &str)],
    ) -> Edge {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("edge.toml");
        std::fs::write(&config, toml.render()).expect("write edge.toml");
        let log = std::fs::File::create(dir.path().join("edge.log")).expect("log file");
        let child = command
            .args(extra_args)
            .arg("--config")
            .arg(&config)
            .env("EDGE_LOG", "info")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn edge");
        Edge {
            child,
            admin: toml.admin,
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn state_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the edge has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("edge.log")).unwrap_or_default()
    }

    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok((200, _)) = get(self.admin, "/readyz").await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "edge not ready in time; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GET on the admin listener: `(status, body)`.
    pub async fn get(&self, path: &str) -> (u16, String) {
        get(self.admin, path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}; log:\n{}", self.log()))
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.1
    }

    /// The sum of every sample of `name` whose labels include `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics().await, name, labels)
    }

    /// The table version /routes reports.
    pub async fn version(&self) -> u64 {
        let (_, body) = self.get("/routes").await;
        let json: serde_json::Value = serde_json::from_str(&body).expect("/routes is JSON");
        json["version"].as_u64().expect("version")
    }

    /// Rewrites `edge.toml`, sends SIGHUP and waits for the new version.
    pub async fn reload(&self, toml: &Toml) {
        let before = self.version().await;
        std::fs::write(self.dir.path().join("edge.toml"), toml.render()).expect("write edge.toml");
        self.signal("HUP");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.version().await == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "reload not applied; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.wait_ready().await;
    }

    /// Sends a signal to this process by PID, with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} {}", self.pid());
    }

    /// Waits up to `wait` for the process to exit.
    pub async fn wait_exit(&mut self, wait: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts an edge with `[control]` that has no routes of its own and
    /// waits until it is up: /readyz answers 200, or 503
    /// `{"reason":"never_synced"}` (a new node is not ready before its
    /// first push; start the agent next).
    pub async fn start_unsynced(toml: &Toml) -> Edge {
        let edge = Edge::spawn(toml, &[]);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match get(edge.admin, "/readyz").await {
                Ok((200, _)) => return edge,
                Ok((503, body)) if body.contains("never_synced") => return edge,
                _ => {}
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "edge not up in time; log:\n{}",
                edge.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `(state, why)` of `instance` among the backends of route `route` on
    /// /routes, if listed.
    pub async fn backend_state(&self, route: &str, instance: &str) -> Option<(String, String)> {
        let (_, body) = self.get("/routes").await;
        let json: serde_json::Value = serde_json::from_str(&body).expect("/routes is JSON");
        let routes = json["listeners"]
            .as_array()?
            .iter()
            .flat_map(|l| l["routes"].as_array().cloned().unwrap_or_default());
        for r in routes {
            if r["id"] != route {
                continue;
            }
            let states = r["backend_states"].as_array()?;
            let b = states.iter().find(|b| b["instance"] == instance)?;
            return Some((
                b["state"].as_str()?.to_owned(),
                b["why"].as_str()?.to_owned(),
            ));
        }
        None
    }

    /// Waits up to `wait` until `instance` of `route` is in `state` on
    /// /routes; returns how long that took (polling every 10 ms).
    pub async fn wait_backend_state(
        &self,
        route: &str,
        instance: &str,
        state: &str,
        wait: Duration,
    ) -> Duration {
        let started = tokio::time::Instant::now();
        loop {
            let now = self.backend_state(route, instance).await;
            if now.as_ref().is_some_and(|(s, _)| s == state) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < wait,
                "{instance} of {route} not {state} within {wait:?} (now {now:?}); log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- edge log ---\n{}", self.log());
        }
    }
}

/// A minimal HTTP/1.1 GET: `(status, body)`.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad response {text:?}")))?;
        let body = match text.split_once("\r\n\r\n") {
            Some((head, body))
                if head
                    .to_ascii_lowercase()
                    .contains("transfer-encoding: chunked") =>
            {
                dechunk(body)
            }
            Some((_, body)) => body.to_owned(),
            None => String::new(),
        };
        Ok((status, body))
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .map_err(|_| std::io::Error::other("admin request timed out"))?
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The sum of every sample of `name` in Prometheus text whose labels
/// include all of `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

impl Edge {
    /// The PID of the successor this edge started on SIGUSR2 (an upgrade),
    /// read from the log they share; waits up to [`PATIENCE`] for it.
    pub async fn successor_pid(&self) -> u32 {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let log = self.log();
            let found = log
                .lines()
                .filter(|l| l.contains("edge started"))
                .filter_map(|l| {
                    l.split("pid=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
                .find(|pid| *pid != self.pid());
            if let Some(pid) = found {
                return pid;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no successor in the log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Kills a process by PID when dropped: a successor that SIGUSR2 started,
/// which is not this test's child.
#[derive(Debug)]
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "KILL", &self.0.to_string()])
            .status();
    }
}
