//! edge-agent as a process beside an edge: its `agent.toml` built in code,
//! started and stopped by PID, its `/metrics` read over HTTP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::edge::{built_binary, get, metric_value};
use crate::ports::free_port;

pub mod fixture;

/// Where the agent finds its feed and its edge.
#[derive(Debug, Clone)]
pub struct AgentToml {
    pub node_id: String,
    pub state_dir: PathBuf,
    pub grpc: Option<SocketAddr>,
    pub poll: Option<SocketAddr>,
    pub control_socket: PathBuf,
    pub metrics: SocketAddr,
    pub poll_interval_ms: u64,
    /// `[feed] tls`: the endpoints become `https://`.
    pub tls: Option<AgentTls>,
}

/// `tls = { ca, cert, key }`; no identity presents no client certificate.
#[derive(Debug, Clone)]
pub struct AgentTls {
    pub ca: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl AgentToml {
    pub fn new(node_id: &str, state_dir: &Path, control_socket: &Path) -> AgentToml {
        AgentToml {
            node_id: node_id.into(),
            state_dir: state_dir.into(),
            grpc: None,
            poll: None,
            control_socket: control_socket.into(),
            metrics: SocketAddr::from(([127, 0, 0, 1], free_port())),
            poll_interval_ms: 100,
            tls: None,
        }
    }

    pub fn render(&self) -> String {
        let mut feed = String::new();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        if let Some(g) = self.grpc {
            feed.push_str(&format!("grpc = [\"{scheme}://{g}\"]\n"));
        }
        if let Some(p) = self.poll {
            feed.push_str(&format!("poll = \"{scheme}://{p}\"\n"));
        }
        if let Some(tls) = &self.tls {
            feed.push_str(&format!("tls = {{ ca = {:?}", tls.ca));
            if let Some((cert, key)) = &tls.identity {
                feed.push_str(&format!(", cert = {cert:?}, key = {key:?}"));
            }
            feed.push_str(" }\n");
        }
        format!(
            "node_id = {:?}\nstate_dir = {:?}\n\n[feed]\n{feed}poll_interval_ms = {}\ngrpc_failures_before_poll = 2\n\n\
             [edge]\ncontrol_socket = {:?}\n\n[metrics]\nlisten = \"{}\"\n",
            self.node_id, self.state_dir, self.poll_interval_ms, self.control_socket, self.metrics
        )
    }
}

/// The `edge-agent` binary: `$EDGE_AGENT_BIN`, or the one beside the test.
pub fn agent_bin() -> PathBuf {
    built_binary("EDGE_AGENT_BIN", "edge-agent")
}

/// A running agent, killed by PID when dropped.
pub struct AgentProcess {
    child: Child,
    pub metrics: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl AgentProcess {
    pub fn start(toml: &AgentToml) -> AgentProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, toml.render()).expect("write agent.toml");
        let log = dir.path().join("agent.log");
        let child = Command::new(agent_bin())
            .arg("--config")
            .arg(&config)
            .env("EDGE_AGENT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn edge-agent");
        AgentProcess {
            child,
            metrics: toml.metrics,
            log,
            _dir: dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The sum of the samples of `name` matching `labels` (0 if absent or
    /// the agent is not answering yet).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match get(self.metrics, "/metrics").await {
            Ok((200, body)) => metric_value(&body, name, labels),
            _ => 0.0,
        }
    }

    /// Waits up to `wait` for the agent to exit by itself.
    pub async fn wait_exit(
        &mut self,
        wait: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        None
    }

    /// Stops the agent by PID (SIGKILL: the harshest restart).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.log());
        }
    }
}
