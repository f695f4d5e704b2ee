//! Running the edge: startup, the signal loop, reload and shutdown.
//!
//! SIGHUP re-reads the file and applies its routes through the same path as
//! every table change (in a task of its own, so the loop goes on); a file
//! that does not parse is logged and the live table stays. SIGTERM/SIGINT
//! stop accepting at once, let open tunnels run up to `drain_timeout`, then
//! return (the process exits 0). The same loop pets the systemd watchdog.
//!
//! After an upgrade handoff this process stops its control server (the new
//! process owns the socket path) and drains without petting the watchdog:
//! the new process is the service's main process.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::admin;
use crate::config::{Config, Limits};
use crate::control;
use crate::server::Server;
use crate::table_source::Source;
use crate::upgrade;
use daemon::notify;

/// File descriptors kept back from connections: listeners, the admin
/// server, logs, the control socket and headroom for accept bursts.
const RESERVED_FDS: u64 = 256;
/// Descriptors one connection holds: the client and the backend socket.
const FDS_PER_CONNECTION: u64 = 2;
/// How long open control connections get to finish at shutdown or handoff.
const CONTROL_STOP: std::time::Duration = std::time::Duration::from_secs(1);

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("admin.listen {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("upgrade.socket {path}: {source}")]
    Upgrade {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control.socket {path}: {source}")]
    Control {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Runs until SIGTERM/SIGINT (or an upgrade handoff) and the drain that
/// follows.
pub async fn run(path: PathBuf, mut config: Config) -> Result<(), StartError> {
    // The routes go to the table source, which keeps no copy once they
    // are compiled; the rest of the config stays here.
    let routing = std::mem::take(&mut config.routing);
    // As written, for telling a reload what changed; `config` is capped.
    let configured = config.clone();
    fit_to_fd_limit(&mut config.limits);
    let mut hup = signal(SignalKind::hangup()).map_err(StartError::Signals)?;
    let mut term = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;
    let mut usr2 = signal(SignalKind::user_defined2()).map_err(StartError::Signals)?;

    // A running edge on the upgrade socket hands its listeners over.
    let handoff = match &config.upgrade {
        Some(u) => upgrade::take_over(&u.socket).map_err(|source| StartError::Upgrade {
            path: u.socket.clone(),
            source,
        })?,
        None => None,
    };
    let admin_err = |source| StartError::Admin {
        addr: config.admin.listen,
        source,
    };
    let admin_std = match handoff.as_ref().and_then(|h| h.admin.as_ref()) {
        Some(l) => l.try_clone().map_err(admin_err)?,
        None => std::net::TcpListener::bind(config.admin.listen).map_err(admin_err)?,
    };
    admin_std.set_nonblocking(true).map_err(admin_err)?;
    let admin_dup = admin_std.try_clone().map_err(admin_err)?;
    let admin_listener = TcpListener::from_std(admin_std).map_err(admin_err)?;

    let control_listener = match &config.control {
        Some(c) => Some(
            control::bind(&c.socket).map_err(|source| StartError::Control {
                path: c.socket.clone(),
                source,
            })?,
        ),
        None => None,
    };

    let app = Server::new(&config);
    if let Some(h) = &handoff {
        tracing::info!(
            listeners = h.listeners.len(),
            "upgrade: took over listeners from the running edge"
        );
    }
    let handoff = handoff.map(|mut h| {
        app.inherit(std::mem::take(&mut h.listeners));
        app.continue_from(h.table_version);
        h
    });
    let source = Arc::new(Source::new(
        Arc::clone(&app),
        Config {
            routing,
            ..config.clone()
        },
    ));
    source.apply_current().await;
    app.close_unadopted();
    let (stop_control, control_stopped) = tokio::sync::oneshot::channel::<()>();
    let control_task = control_listener.map(|l| {
        let stop = async move {
            let _ = control_stopped.await;
        };
        tokio::spawn(control::serve(l, Arc::clone(&source), stop))
    });
    let admin_task = tokio::spawn(admin::serve(admin_listener, Arc::clone(&app.shared)));
    let retry_task = tokio::spawn(Arc::clone(&app).retry_binds());
    if let Some(h) = handoff {
        if let Err(e) = h.ready() {
            tracing::error!(error = %e, "upgrade: could not tell the previous edge to stop");
        }
    }
    let (handed_over_tx, mut handed_over) = tokio::sync::oneshot::channel::<()>();
    if let Some(u) = &config.upgrade {
        match upgrade::bind(&u.socket) {
            Ok(listener) => {
                let handover = Handover {
                    source: Arc::clone(&source),
                    admin: admin_dup,
                };
                tokio::task::spawn_blocking(move || {
                    upgrade::serve(listener, &handover);
                    let _ = handed_over_tx.send(());
                });
            }
            Err(e) => {
                tracing::error!(path = %u.socket.display(), error = %e, "upgrade socket unavailable; upgrades need a restart")
            }
        }
    }
    notify::ready();
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(admin = %config.admin.listen, pid = std::process::id(), workers, version = env!("CARGO_PKG_VERSION"), "edge started");

    let mut watchdog = notify::watchdog_period().map(tokio::time::interval);
    let configured = Arc::new(configured);
    let handed_over = loop {
        tokio::select! {
            _ = hup.recv() => {
                let (app, source, path, configured) =
                    (Arc::clone(&app), Arc::clone(&source), path.clone(), Arc::clone(&configured));
                tokio::spawn(async move { reload(&app, &source, &path, &configured).await });
            }
            _ = usr2.recv() => upgrade::spawn_successor(),
            _ = tick(&mut watchdog) => notify::watchdog(),
            _ = &mut handed_over => break true,
            _ = term.recv() => break false,
            _ = int.recv() => break false,
        }
    };
    tracing::info!(
        open = app.shared.admission.open(),
        "draining: listeners closed"
    );
    retry_task.abort();
    // Open control connections are told to go away (pushes are refused
    // already), so the agent reconnects to the socket path.
    let _ = stop_control.send(());
    if let Some(mut task) = control_task {
        if tokio::time::timeout(CONTROL_STOP, &mut task).await.is_err() {
            task.abort();
        }
    }
    if handed_over {
        // The new process serves admin, control and upgrade from here on,
        // and is the one systemd watches.
        admin_task.abort();
        watchdog = None;
    } else if let Some(c) = &config.control {
        let _ = std::fs::remove_file(&c.socket);
    }
    let drain = app.drain();
    tokio::pin!(drain);
    let left = loop {
        tokio::select! {
            left = &mut drain => break left,
            _ = tick(&mut watchdog) => notify::watchdog(),
        }
    };
    admin_task.abort();
    tracing::info!(left_open = left, "edge stopped");
    Ok(())
}

/// The next watchdog tick, or never when there is no watchdog.
async fn tick(watchdog: &mut Option<tokio::time::Interval>) {
    match watchdog {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// What this process hands to a successor at upgrade.
struct Handover {
    source: Arc<Source>,
    admin: std::net::TcpListener,
}

impl upgrade::Handover for Handover {
    fn sockets(&self) -> std::io::Result<Vec<(String, std::net::TcpListener)>> {
        let mut sockets: Vec<(String, std::net::TcpListener)> = self
            .source
            .app()
            .listener_dups()?
            .into_iter()
            .map(|(a, l)| (a.to_string(), l))
            .collect();
        sockets.push((upgrade::admin_name(), self.admin.try_clone()?));
        Ok(sockets)
    }

    fn begin(&self) -> u64 {
        self.source.begin_handoff()
    }

    fn cancel(&self) {
        self.source.cancel_handoff();
    }
}

async fn reload(app: &Arc<Server>, source: &Source, path: &Path, running: &Config) {
    match Config::load(path) {
        Ok(new) => {
            if new.limits != running.limits
                || new.admin != running.admin
                || new.control != running.control
                || new.forwarding != running.forwarding
            {
                tracing::warn!("reload: [limits], [forwarding], [admin] and [control] changes take effect at the next restart");
            }
            app.shared.metrics.reload("ok");
            source.reload(new).await;
        }
        Err(e) => {
            app.shared.metrics.reload("error");
            tracing::error!(error = %e, "reload failed; keeping the live route table");
        }
    }
}

/// Raises the soft descriptor limit to the hard one and caps
/// `max_connections` to what it allows, saying so once.
fn fit_to_fd_limit(limits: &mut Limits) {
    let hard = match rlimit::Resource::NOFILE.get() {
        Ok((soft, hard)) => {
            if soft < hard && rlimit::Resource::NOFILE.set(hard, hard).is_err() {
                soft
            } else {
                hard
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read RLIMIT_NOFILE; max_connections not checked");
            return;
        }
    };
    let fit = usize::try_from(hard.saturating_sub(RESERVED_FDS) / FDS_PER_CONNECTION)
        .unwrap_or(usize::MAX);
    if limits.max_connections > fit {
        tracing::warn!(
            configured = limits.max_connections,
            capped_to = fit,
            nofile = hard,
            "limits.max_connections does not fit the file-descriptor limit; capping it"
        );
        limits.max_connections = fit.max(1);
    }
}
