//! edge-agent as a process beside an edge: its `agent.toml` built in code,
//! started and stopped by PID, its `/metrics` read over HTTP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::edge::{built_binary, get, metric_value};
use crate::ports::free_port;

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
        }
    }

    pub fn render(&self) -> String {
        let mut feed = String::new();
        if let Some(g) = self.grpc {
            feed.push_str(&format!("grpc = [\"http://{g}\"]\n"));
        }
        if let Some(p) = self.poll {
            feed.push_str(&format!("poll = \"http://{p}\"\n"));
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
