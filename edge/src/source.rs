//! Where the live routing comes from, and its copy on disk.
//!
//! Without `[control]`, the routes are `edge.toml`'s. With it, edge-agent
//! owns them: once a table has been pushed, pushed tables replace the
//! file's `[[envs]]`, `[[instances]]` and `[[routes]]`, and every push that
//! is applied is written to `control.state_dir/routing.json` (atomically,
//! fsynced) before it is acknowledged. At start that file, if present, is
//! applied before anything else, so an edge restarted while the agent or
//! the control plane is down serves the routes it had (static stability).
//!
//! SIGHUP re-reads `edge.toml` for policy and overlay and re-applies the
//! current routing under them: a pushed table is never replaced by the
//! file's routes.

use std::path::PathBuf;
use std::sync::Arc;

use route_model::{RoutingSpec, SpecError};
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::config::Config;

const STATE_FILE: &str = "routing.json";

/// A table pushed by edge-agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pushed {
    /// The agent's cursor (newest event_id) this table includes.
    pub source_version: u64,
    pub routing: RoutingSpec,
}

/// The result of applying routing: the live table version and what
/// validation rejected.
#[derive(Debug)]
pub struct Applied {
    pub version: u64,
    pub errors: Vec<SpecError>,
}

/// Why a push could not be made durable.
#[derive(Debug, thiserror::Error)]
#[error("cannot persist the route table to {path}: {source}")]
pub struct PersistError {
    path: PathBuf,
    source: std::io::Error,
}

/// The routing source, serialising every change (SIGHUP and pushes).
#[derive(Debug)]
pub struct Source {
    app: Arc<App>,
    state: tokio::sync::Mutex<State>,
}

#[derive(Debug)]
struct State {
    config: Config,
    pushed: Option<Pushed>,
}

impl Source {
    /// Loads the persisted table, if `[control]` is configured and one
    /// exists. A file that cannot be read is logged and ignored: the
    /// edge.toml routes serve until the agent pushes.
    pub fn new(app: Arc<App>, config: Config) -> Source {
        let pushed = config.control.as_ref().and_then(|c| {
            let path = c.state_dir.join(STATE_FILE);
            match durable::read_optional(&path) {
                Ok(None) => None,
                Ok(Some(bytes)) => match serde_json::from_slice::<Pushed>(&bytes) {
                    Ok(p) => {
                        tracing::info!(path = %path.display(), source_version = p.source_version, "loaded the last pushed route table");
                        Some(p)
                    }
                    Err(e) => {
                        tracing::error!(path = %path.display(), error = %e, "persisted route table unreadable; ignoring it");
                        None
                    }
                },
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot read the persisted route table");
                    None
                }
            }
        });
        Source {
            app,
            state: tokio::sync::Mutex::new(State { config, pushed }),
        }
    }

    /// Applies the current routing under the current config.
    pub async fn apply_current(&self) -> Applied {
        let state = self.state.lock().await;
        let routing = state
            .pushed
            .as_ref()
            .map_or(&state.config.routing, |p| &p.routing);
        let (version, errors) = self.app.apply(&state.config, routing).await;
        Applied { version, errors }
    }

    /// SIGHUP: a new `edge.toml`; its routes apply unless a table was pushed.
    pub async fn reload(&self, config: Config) -> Applied {
        self.state.lock().await.config = config;
        self.apply_current().await
    }

    /// A push from edge-agent: persisted, then applied, then answered. A
    /// table that cannot be made durable is refused and not applied, so
    /// what the edge serves is always what it would load after a restart.
    pub async fn push(&self, pushed: Pushed) -> Result<Applied, PersistError> {
        let mut state = self.state.lock().await;
        if let Some(control) = &state.config.control {
            let path = control.state_dir.join(STATE_FILE);
            let bytes = serde_json::to_vec(&pushed).expect("a RoutingSpec always serialises");
            let written = std::fs::create_dir_all(&control.state_dir)
                .and_then(|()| durable::write_atomic(&path, &bytes));
            written.map_err(|source| PersistError { path, source })?;
        }
        let (version, errors) = self.app.apply(&state.config, &pushed.routing).await;
        state.pushed = Some(pushed);
        Ok(Applied { version, errors })
    }

    /// The `source_version` of the live pushed table (0 for edge.toml).
    pub async fn source_version(&self) -> u64 {
        self.state
            .lock()
            .await
            .pushed
            .as_ref()
            .map_or(0, |p| p.source_version)
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }
}
