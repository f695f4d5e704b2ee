//! Where the live routing comes from, and its copy on disk.
//!
//! Without `[control]`, the routes are `edge.toml`'s. With it, edge-agent
//! owns them: once a table has been pushed, pushed tables replace the
//! file's `[[envs]]`, `[[instances]]` and `[[routes]]`, and every push that
//! is applied is written to `control.state_dir/routing.json` (atomically,
//! fsynced, with its format, fence and table version: see [`saved`])
//! before it is acknowledged. At start that file, if present, is applied
//! before anything else, so an edge restarted while the agent or the
//! control plane is down serves the routes it had (static stability).
//!
//! A saved file that cannot be read, or that a newer edge wrote, is never
//! guessed at nor overwritten: it is renamed to
//! `routing.json.unreadable-<unix seconds>`, counted, logged, and the edge
//! holds `/readyz` at 503 `state_unreadable` until a push arrives. An edge
//! with `[control]`, no routes in edge.toml and no saved table holds it at
//! `never_synced` the same way.
//!
//! Pushes are fenced (see [`saved::Fence::admit`]): a second agent, or one
//! restored from an old backup, cannot roll the table back.
//!
//! SIGHUP re-reads `edge.toml` for policy and overlay and re-applies the
//! current routing under them: a pushed table is never replaced by the
//! file's routes.
//!
//! No copy of the routing spec is kept once it is compiled: the live table
//! is all the process holds (a spec of a million routes is a few hundred
//! MB). To re-apply a pushed table under a new `edge.toml`, it is read
//! back from `routing.json`, the copy a restart would load.

pub(crate) mod saved;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use route_model::{RoutingSpec, SpecError};

use crate::config::Config;
use crate::server::Server;
use crate::shared::NotReady;
use saved::{Decoded, Fence, Saved, Stale};

const STATE_FILE: &str = "routing.json";

/// A table pushed by edge-agent, parsed, with the JSON it came as (saved
/// as is).
#[derive(Debug, Clone)]
pub(crate) struct Pushed {
    pub fence: Fence,
    pub routing: Arc<RoutingSpec>,
    pub json: String,
}

/// The result of applying routing: the live table version and what
/// validation rejected.
#[derive(Debug)]
pub(crate) struct Applied {
    pub version: u64,
    pub errors: Vec<SpecError>,
}

/// Why a push was not applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PushError {
    #[error(transparent)]
    Stale(#[from] Stale),
    #[error("cannot persist the route table to {path}: {source}")]
    Persist {
        path: PathBuf,
        source: std::io::Error,
    },
    /// This process handed its listeners to a new one (upgrade).
    #[error("this edge process is handing over to a new one; reconnect to the control socket")]
    HandedOver,
}

/// The routing source, serialising every change (SIGHUP and pushes).
#[derive(Debug)]
pub(crate) struct Source {
    app: Arc<Server>,
    state: tokio::sync::Mutex<State>,
    /// What `Status` reports (the live fence, and whether a handoff has
    /// begun), readable while a push holds `state` through its compile.
    view: std::sync::Mutex<View>,
}

#[derive(Debug, Default, Clone)]
struct View {
    fence: Fence,
    handing_over: bool,
}

#[derive(Debug)]
struct State {
    /// The live `edge.toml`, its routes taken out (into `pending`).
    config: Config,
    /// Routing read or received but not applied yet: edge.toml's routes
    /// (at start and after SIGHUP) or the saved table (at start).
    /// [`Source::apply_current`] consumes it.
    pending: Option<Arc<RoutingSpec>>,
    /// The live pushed table's fence, once a table has been pushed (or
    /// loaded from `routing.json`): all that is kept of it in memory.
    pushed: Option<Fence>,
    /// Set when an upgrade handoff begins: pushes are refused from then on
    /// (unless the handoff fails), so none lands in a process that is
    /// about to stop serving.
    handing_over: bool,
}

impl Source {
    /// Loads the saved table, if `[control]` is configured and one exists
    /// (moving an unreadable one aside), and sets what readiness waits for.
    pub(crate) fn new(app: Arc<Server>, mut config: Config) -> Source {
        let file_routes = std::mem::take(&mut config.routing);
        let mut pushed = None;
        let mut pending = None;
        if let Some(control) = &config.control {
            let not_synced = match load(&control.state_dir, &app) {
                Some(saved) => {
                    app.continue_from(saved.table_version);
                    pushed = Some(saved.fence);
                    pending = Some(saved.routing);
                    None
                }
                None if app.shared.not_synced().is_some() => app.shared.not_synced(),
                None if file_routes.routes.is_empty() => Some(NotReady::NeverSynced),
                None => None,
            };
            app.shared.set_not_synced(not_synced);
        }
        if pushed.is_none() {
            pending = Some(Arc::new(file_routes));
        }
        let view = View {
            fence: pushed.clone().unwrap_or_default(),
            handing_over: false,
        };
        Source {
            app,
            view: std::sync::Mutex::new(view),
            state: tokio::sync::Mutex::new(State {
                config,
                pending,
                pushed,
                handing_over: false,
            }),
        }
    }

    /// Applies the current routing under the current config: the pending
    /// one, or the pushed table read back from `routing.json`. A pushed
    /// table re-applied is saved again with its new version, so versions
    /// keep growing across a restart.
    pub(crate) async fn apply_current(&self) -> Applied {
        let mut state = self.state.lock().await;
        let pending = state.pending.take();
        let Some(fence) = state.pushed.clone() else {
            let routing = pending.unwrap_or_default();
            let (version, errors) = self.app.apply(&state.config, routing).await;
            return Applied { version, errors };
        };
        let dir = state.config.control.as_ref().map(|c| c.state_dir.clone());
        let routing = match (pending, dir.clone()) {
            (Some(routing), _) => routing,
            (None, Some(dir)) => match read_back(dir).await {
                Ok(routing) => routing,
                Err(why) => {
                    tracing::error!(why, "cannot read the pushed table back from routing.json to re-apply it; the live table stays");
                    return Applied {
                        version: self.app.shared.live.load().table.version(),
                        errors: Vec::new(),
                    };
                }
            },
            (None, None) => return self.unchanged(),
        };
        let to_save = Arc::clone(&routing);
        // Serving the table matters more than saving its new version: a
        // failure is logged and the table still applies.
        let persist = move |version: u64| {
            if let Some(dir) = dir {
                let saved = Saved {
                    format: saved::FORMAT,
                    fence,
                    table_version: version,
                    routing: to_save,
                };
                if let Err(e) = persist(&dir, &saved) {
                    tracing::error!(error = %e, "the re-applied table's version is not saved");
                }
            }
            Ok::<(), std::convert::Infallible>(())
        };
        let (version, errors) = match self.app.apply_with(&state.config, routing, persist).await {
            Ok(applied) => applied,
            Err(never) => match never {},
        };
        Applied { version, errors }
    }

    /// The live table, untouched.
    fn unchanged(&self) -> Applied {
        Applied {
            version: self.app.shared.live.load().table.version(),
            errors: Vec::new(),
        }
    }

    /// SIGHUP: a new `edge.toml`; its routes apply unless a table was pushed.
    pub(crate) async fn reload(&self, config: Config) -> Applied {
        {
            let mut state = self.state.lock().await;
            if state.handing_over {
                tracing::warn!("reload ignored: this process is handing over to a new one");
                return self.unchanged();
            }
            let mut config = config;
            let file_routes = std::mem::take(&mut config.routing);
            let shared = &self.app.shared;
            if state.pushed.is_none()
                && !file_routes.routes.is_empty()
                && shared.not_synced() == Some(NotReady::NeverSynced)
            {
                shared.set_not_synced(None);
            }
            // A pushed table is never replaced by the file's routes.
            state.pending = state.pushed.is_none().then(|| Arc::new(file_routes));
            state.config = config;
        }
        self.apply_current().await
    }

    /// Refuses early (before parsing a large table) a push the fence or a
    /// handoff would refuse anyway.
    pub(crate) async fn precheck(&self, fence: &Fence) -> Result<(), PushError> {
        let state = self.state.lock().await;
        state.admit(fence)
    }

    /// A push from edge-agent: fenced, compiled and persisted off the
    /// runtime, then applied, then answered. A table that cannot be made
    /// durable is refused and not applied, so what the edge serves is
    /// always what it would load after a restart.
    pub(crate) async fn push(&self, pushed: Pushed) -> Result<Applied, PushError> {
        let mut state = self.state.lock().await;
        state.admit(&pushed.fence)?;
        let target = state.config.control.as_ref().map(|c| c.state_dir.clone());
        let fence = pushed.fence.clone();
        let json = pushed.json;
        // The spec and its JSON go to the blocking thread that persists and
        // compiles, and are dropped there (freeing a large spec takes
        // time, not on the runtime); the JSON is saved as pushed, then
        // dropped before the compile.
        let persist = move |version: u64| match target {
            Some(dir) => persist_raw(&dir, &fence, version, &json),
            None => Ok(()),
        };
        let (version, errors) = self
            .app
            .apply_with(&state.config, pushed.routing, persist)
            .await?;
        self.view().fence = pushed.fence.clone();
        state.pushed = Some(pushed.fence);
        state.pending = None;
        self.app.shared.set_not_synced(None);
        Ok(Applied { version, errors })
    }

    /// Upgrade: refuses pushes from now on and returns the live table
    /// version, to hand over. Blocking: call it from a blocking thread.
    pub(crate) fn begin_handoff(&self) -> u64 {
        let mut state = self.state.blocking_lock();
        state.handing_over = true;
        self.view().handing_over = true;
        self.app.shared.live.load().table.version()
    }

    /// Upgrade: the handoff failed; this process goes on serving pushes.
    pub(crate) fn cancel_handoff(&self) {
        self.state.blocking_lock().handing_over = false;
        self.view().handing_over = false;
    }

    /// True once a handoff has begun (and not failed).
    pub(crate) fn handing_over(&self) -> bool {
        self.view().handing_over
    }

    /// The fence of the live pushed table (default for edge.toml).
    pub(crate) fn fence(&self) -> Fence {
        self.view().fence.clone()
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn app(&self) -> &Arc<Server> {
        &self.app
    }
}

impl State {
    fn admit(&self, fence: &Fence) -> Result<(), PushError> {
        if self.handing_over {
            return Err(PushError::HandedOver);
        }
        match &self.pushed {
            Some(live) => Ok(live.admit(fence)?),
            None => Ok(()),
        }
    }
}

/// Reads `dir/routing.json`: the saved table, or `None` when there is none
/// or it cannot be used (then it is moved aside, counted, and readiness is
/// held at `state_unreadable`).
fn load(dir: &Path, app: &Server) -> Option<Saved> {
    let path = dir.join(STATE_FILE);
    let why = match durable::read_optional(&path) {
        Ok(None) => return None,
        Ok(Some(bytes)) => match saved::decode(&bytes) {
            Decoded::Usable(saved) => {
                tracing::info!(
                    path = %path.display(),
                    source_version = saved.fence.source_version,
                    generation = saved.fence.generation,
                    table_version = saved.table_version,
                    "loaded the last pushed route table"
                );
                return Some(saved);
            }
            Decoded::Unreadable(e) => format!("does not parse: {e}"),
            Decoded::NewerFormat(f) => {
                format!(
                    "format {f} is newer than this edge reads ({})",
                    saved::FORMAT
                )
            }
        },
        Err(e) => format!("cannot be read: {e}"),
    };
    app.shared.metrics.state_unreadable.inc();
    app.shared.set_not_synced(Some(NotReady::StateUnreadable));
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = dir.join(format!("{STATE_FILE}.unreadable-{secs}"));
    match move_aside(&path, &aside) {
        Ok(aside) => tracing::error!(
            path = %path.display(),
            kept_as = %aside.display(),
            why,
            "saved route table unusable: moved aside; not ready until edge-agent pushes a table"
        ),
        Err(e) => tracing::error!(
            path = %path.display(),
            why,
            error = %e,
            "saved route table unusable and cannot be moved aside; not ready until edge-agent pushes a table"
        ),
    }
    None
}

/// Reads the pushed table back from `dir/routing.json` (on a blocking
/// thread), to re-apply it.
async fn read_back(dir: PathBuf) -> Result<Arc<RoutingSpec>, String> {
    let read = tokio::task::spawn_blocking(move || {
        let path = dir.join(STATE_FILE);
        match durable::read_optional(&path) {
            Ok(Some(bytes)) => match saved::decode(&bytes) {
                Decoded::Usable(saved) => Ok(saved.routing),
                Decoded::Unreadable(e) => Err(format!("{}: does not parse: {e}", path.display())),
                Decoded::NewerFormat(f) => Err(format!("{}: format {f}", path.display())),
            },
            Ok(None) => Err(format!("{}: missing", path.display())),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    })
    .await;
    read.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Renames `from` to `to`, or to `to.N` when that exists: a kept file is
/// never overwritten.
fn move_aside(from: &Path, to: &Path) -> std::io::Result<PathBuf> {
    let mut target = to.to_owned();
    let mut n = 1;
    while target.exists() {
        let mut name = to.as_os_str().to_owned();
        name.push(format!(".{n}"));
        target = PathBuf::from(name);
        n += 1;
    }
    std::fs::rename(from, &target)?;
    Ok(target)
}

/// Writes a pushed table to `dir/routing.json` from the JSON it was pushed
/// as, atomically and fsynced.
fn persist_raw(dir: &Path, fence: &Fence, version: u64, json: &str) -> Result<(), PushError> {
    let path = dir.join(STATE_FILE);
    let (head, tail) = saved::encode_raw(fence, version);
    std::fs::create_dir_all(dir)
        .and_then(|()| durable::write_atomic_parts(&path, &[&head, json.as_bytes(), &tail]))
        .map_err(|source| PushError::Persist { path, source })
}

/// Writes `saved` to `dir/routing.json`, atomically and fsynced.
fn persist(dir: &Path, saved: &Saved) -> Result<(), PushError> {
    let path = dir.join(STATE_FILE);
    let bytes = saved::encode(saved);
    std::fs::create_dir_all(dir)
        .and_then(|()| durable::write_atomic(&path, &bytes))
        .map_err(|source| PushError::Persist { path, source })
}
