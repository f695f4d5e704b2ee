//! Running the edge: startup, the signal loop, reload and shutdown.
//!
//! SIGHUP re-reads the file and applies its routes through the same path as
//! every table change; a file that does not parse is logged and the live
//! table stays. SIGTERM/SIGINT stop accepting at once, let open tunnels run
//! up to `drain_timeout`, then return (the process exits 0).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::admin;
use crate::app::App;
use crate::config::{Config, Limits};
use crate::control;
use crate::notify;
use crate::source::Source;
use crate::upgrade;

/// File descriptors kept back from connections: listeners, the admin
/// server, logs, the control socket and headroom for accept bursts.
const RESERVED_FDS: u64 = 256;
/// Descriptors one connection holds: the client and the backend socket.
const FDS_PER_CONNECTION: u64 = 2;

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

    let app = App::new(&config);
    if let Some(h) = &handoff {
        tracing::info!(
            listeners = h.listeners.len(),
            "upgrade: took over listeners from the running edge"
        );
    }
    let handoff = handoff.map(|mut h| {
        app.inherit(std::mem::take(&mut h.listeners));
        h
    });
    let source = Arc::new(Source::new(Arc::clone(&app), config.clone()));
    source.apply_current().await;
    let control_task =
        control_listener.map(|l| tokio::spawn(control::serve(l, Arc::clone(&source))));
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
                let app = Arc::clone(&app);
                tokio::task::spawn_blocking(move || {
                    upgrade::serve(listener, || {
                        let mut sockets: Vec<(String, std::net::TcpListener)> = app
                            .listener_dups()?
                            .into_iter()
                            .map(|(a, l)| (a.to_string(), l))
                            .collect();
                        sockets.push((upgrade::admin_name(), admin_dup.try_clone()?));
                        Ok(sockets)
                    });
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

    let handed_over = loop {
        tokio::select! {
            _ = hup.recv() => reload(&app, &source, &path, &configured).await,
            _ = usr2.recv() => upgrade::spawn_successor(),
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
    if let Some(task) = control_task {
        task.abort();
    }
    if handed_over {
        // The new process serves admin, control and upgrade from here on.
        admin_task.abort();
    } else if let Some(c) = &config.control {
        let _ = std::fs::remove_file(&c.socket);
    }
    let left = app.drain().await;
    admin_task.abort();
    tracing::info!(left_open = left, "edge stopped");
    Ok(())
}

async fn reload(app: &Arc<App>, source: &Source, path: &Path, running: &Config) {
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
