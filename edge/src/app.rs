//! The running edge: shared state, applying route tables, reload and drain.
//!
//! A route table is applied in one place, [`App::apply_with`], whatever its
//! source (startup, SIGHUP, a push from edge-agent), in two steps. The slow
//! one runs on a blocking thread, off the runtime that moves bytes: compile,
//! the caller's persist (a push's fsync), and the diff of deleted routes.
//! The quick one runs on the runtime: diff the listener set (close only the
//! pairs that disappeared, bind the new ones), swap the live snapshot
//! atomically, and give tunnels of deleted routes `deleted_route_grace`
//! before they are ended. Tunnels of routes that still exist are never
//! touched: they hold no reference to the table. The replaced table is
//! dropped on a blocking thread too (freeing a million routes takes time).
//!
//! Versions only grow, also across restarts and upgrades: the first table
//! of a process continues from [`App::continue_from`] (the saved table's
//! version, or the previous process's at an upgrade).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use route_model::{compile, Compiled, RouteTable, RoutingSpec, SpecError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, Limits, Overlay};
use crate::health::Health;
use crate::limits::Admission;
use crate::listen;
use crate::metrics::Metrics;
use crate::reject::RejectLog;

/// How often listeners that failed to bind are retried.
const BIND_RETRY: Duration = Duration::from_secs(1);

/// The snapshot every connection reads: swapped whole, never mutated.
#[derive(Debug)]
pub struct Live {
    pub table: RouteTable,
    pub overlay: Overlay,
    /// What validation rejected in the config this table came from.
    pub errors: Vec<SpecError>,
}

/// State shared by the accept loops, connections and the admin server.
#[derive(Debug)]
pub struct Shared {
    pub live: ArcSwap<Live>,
    pub limits: Limits,
    /// How tunnels move bytes (`[forwarding]`).
    pub forwarding: crate::forward::Mode,
    pub metrics: Metrics,
    pub admission: Arc<Admission>,
    /// The edge's own health signals, read by every connection.
    pub health: Arc<Health>,
    pub rejects: RejectLog,
    pub withdrawals: Withdrawals,
    /// Listeners of the live table not bound yet.
    pub unbound: AtomicUsize,
    pub draining: AtomicBool,
    /// A [`NotReady`] that holds until the first push, or 0.
    not_synced: AtomicU8,
    fd_log: Mutex<Option<Instant>>,
}

/// Why an edge with `[control]` must not take traffic before its first
/// push, whatever its listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum NotReady {
    /// No routes in edge.toml, no saved table, nothing pushed yet.
    NeverSynced = 1,
    /// The saved table exists but cannot be read (it was moved aside).
    StateUnreadable = 2,
}

impl NotReady {
    /// The `/readyz` and `StatusResponse.not_ready_reason` value.
    pub const fn as_str(self) -> &'static str {
        match self {
            NotReady::NeverSynced => "never_synced",
            NotReady::StateUnreadable => "state_unreadable",
        }
    }
}

impl Shared {
    /// True once every listener of the live table is bound (and, with
    /// `[control]`, a table to serve is known).
    pub fn ready(&self) -> bool {
        self.unbound.load(Ordering::Acquire) == 0
            && !self.draining.load(Ordering::Acquire)
            && self.not_synced().is_none()
    }

    /// Why the edge is held back from ready until a push, if it is.
    pub fn not_synced(&self) -> Option<NotReady> {
        match self.not_synced.load(Ordering::Acquire) {
            1 => Some(NotReady::NeverSynced),
            2 => Some(NotReady::StateUnreadable),
            _ => None,
        }
    }

    /// Sets (or, with `None`, clears) the reason to hold back ready.
    pub fn set_not_synced(&self, reason: Option<NotReady>) {
        self.not_synced
            .store(reason.map_or(0, |r| r as u8), Ordering::Release);
    }

    /// Logs descriptor exhaustion at most once a second.
    pub fn fd_exhausted_log(&self, e: &std::io::Error) {
        let mut last = self.fd_log.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            tracing::error!(error = %e, open = self.admission.open(), "accept: out of file descriptors; pausing accepts");
        }
    }
}

/// Tunnels of deleted routes: each subscribes by route id and is told when
/// the route is gone for good.
#[derive(Debug, Default)]
pub struct Withdrawals {
    routes: Mutex<HashMap<Arc<str>, watch::Sender<bool>>>,
}

impl Withdrawals {
    /// A future that resolves when route `id` is withdrawn.
    pub fn subscribe(
        &self,
        id: &Arc<str>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = {
            let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
            routes
                .entry(Arc::clone(id))
                .or_insert_with(|| watch::channel(false).0)
                .subscribe()
        };
        async move {
            if rx.wait_for(|gone| *gone).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    fn withdraw(&self, id: &str) {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = routes.remove(id) {
            let _ = tx.send(true);
        }
    }
}

/// A listening socket bound (or adopted) for a table not yet live.
#[derive(Debug)]
struct Pending {
    addr: SocketAddr,
    listener: tokio::net::TcpListener,
}

/// The edge: shared state plus the listener set.
#[derive(Debug)]
pub struct App {
    pub shared: Arc<Shared>,
    listeners: Mutex<HashMap<SocketAddr, JoinHandle<()>>>,
    /// A duplicate of each listening socket, for handing over to a new
    /// process at upgrade; closed with its listener.
    listener_fds: Mutex<HashMap<SocketAddr, std::net::TcpListener>>,
    /// Listening sockets received from the previous process, adopted
    /// instead of binding when the table needs their pair.
    inherited: Mutex<HashMap<SocketAddr, std::net::TcpListener>>,
    /// Serialises `apply` (SIGHUP and control pushes may race).
    applying: tokio::sync::Mutex<()>,
    /// The version the next table must exceed (see `continue_from`).
    version_floor: AtomicU64,
}

impl App {
    pub fn new(config: &Config) -> Arc<App> {
        let limits = config.limits;
        let metrics = Metrics::new();
        let shared = Arc::new(Shared {
            live: ArcSwap::from_pointee(Live {
                table: RouteTable::default(),
                overlay: config.overlay.clone(),
                errors: Vec::new(),
            }),
            limits,
            forwarding: config.forwarding.mode(),
            health: Health::new(config.health, &metrics),
            metrics,
            admission: Admission::new(limits.max_connections, limits.max_connections_per_source),
            rejects: RejectLog::new(),
            withdrawals: Withdrawals::default(),
            unbound: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            not_synced: AtomicU8::new(0),
            fd_log: Mutex::new(None),
        });
        Arc::new(App {
            shared,
            listeners: Mutex::new(HashMap::new()),
            listener_fds: Mutex::new(HashMap::new()),
            inherited: Mutex::new(HashMap::new()),
            applying: tokio::sync::Mutex::new(()),
            version_floor: AtomicU64::new(0),
        })
    }

    /// Makes the next table's version greater than `version` (a version
    /// served before this process: by the saved table or the previous
    /// process at an upgrade).
    pub fn continue_from(&self, version: u64) {
        self.version_floor.fetch_max(version, Ordering::AcqRel);
    }

    /// The version the next applied table gets.
    fn next_version(&self) -> u64 {
        let live = self.shared.live.load().table.version();
        live.max(self.version_floor.load(Ordering::Acquire)) + 1
    }

    /// Compiles `routing` under `config`'s policy and makes it live.
    /// Returns the new version and what validation rejected.
    pub async fn apply(
        self: &Arc<Self>,
        config: &Config,
        routing: Arc<RoutingSpec>,
    ) -> (u64, Vec<SpecError>) {
        match self
            .apply_with(config, routing, |_| Ok::<(), std::convert::Infallible>(()))
            .await
        {
            Ok(applied) => applied,
            Err(never) => match never {},
        }
    }

    /// As [`App::apply`], calling `persist(version)` on the blocking thread
    /// after the compile: an error leaves the live table as it was (the
    /// version is not used) and is returned.
    pub async fn apply_with<E: Send + 'static>(
        self: &Arc<Self>,
        config: &Config,
        routing: Arc<RoutingSpec>,
        persist: impl FnOnce(u64) -> Result<(), E> + Send + 'static,
    ) -> Result<(u64, Vec<SpecError>), E> {
        let _one_at_a_time = self.applying.lock().await;
        let version = self.next_version();
        let old = self.shared.live.load_full();
        let (policy, overlay) = (config.policy.clone(), config.overlay.policy.clone());
        let prepared = tokio::task::spawn_blocking(move || {
            let compiled = compile(&routing, &policy, &overlay, version);
            persist(version)?;
            let deleted = deleted_routes(&old.table, &compiled.table);
            Ok((compiled, deleted))
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let (compiled, deleted) = prepared?;
        Ok(self.install(config, version, compiled, deleted))
    }

    /// The quick step: listeners, the atomic swap, metrics. Runs on the
    /// runtime under the `applying` lock.
    fn install(
        self: &Arc<Self>,
        config: &Config,
        version: u64,
        compiled: Compiled,
        deleted: Vec<Arc<str>>,
    ) -> (u64, Vec<SpecError>) {
        let shared = &self.shared;
        for e in &compiled.errors {
            tracing::warn!(version, error = %e, "config object rejected");
        }
        let errors = compiled.errors.clone();
        // Listeners first, then the table: once a version is visible (on
        // /routes, /readyz, to a pushing agent), its listeners are bound.
        let pending = self.sync_listeners(&compiled.table);
        let old = shared.live.swap(Arc::new(Live {
            table: compiled.table,
            overlay: config.overlay.clone(),
            errors: compiled.errors,
        }));
        self.start_accepting(pending);
        shared.metrics.routes_rejected_new(&old.errors, &errors);
        tokio::task::spawn_blocking(move || drop(old));
        let live = shared.live.load_full();
        shared.health.update(&live.table, &live.overlay);
        self.withdraw_deleted(deleted);

        let m = &shared.metrics;
        m.table_version.set(version as i64);
        m.routes.set(live.table.routes().len() as i64);
        m.routes_rejected.set(errors.len() as i64);
        m.listeners.set(live.table.listeners().count() as i64);
        tracing::info!(
            version,
            routes = live.table.routes().len(),
            listeners = live.table.listeners().count(),
            rejected = errors.len(),
            "route table applied"
        );
        (version, errors)
    }

    /// Closes listeners whose pair is gone and binds the new ones.
    ///
    /// New and adopted sockets are bound and listening when this returns,
    /// but nothing accepts on them yet: the caller starts their accept
    /// loops ([`App::start_accepting`]) once the table that needs them is
    /// live. Accepting earlier would route a connection by the previous
    /// table: after an upgrade, the empty table of a process that has not
    /// applied its first one, which closes the connection unanswered.
    /// (Until then connections wait in the listen backlog.)
    fn sync_listeners(self: &Arc<Self>, table: &RouteTable) -> Vec<Pending> {
        let wanted: HashSet<SocketAddr> = table.listeners().map(|(a, _)| *a).collect();
        let mut running = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let mut fds = self.listener_fds.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|addr, task| {
            let keep = wanted.contains(addr);
            if !keep {
                task.abort();
                fds.remove(addr);
                tracing::info!(%addr, "listener closed");
            }
            keep
        });
        let mut inherited = self.inherited.lock().unwrap_or_else(|p| p.into_inner());
        let mut unbound = 0;
        let mut pending = Vec::new();
        for addr in wanted {
            if running.contains_key(&addr) {
                continue;
            }
            let (listener, how) = match inherited.remove(&addr) {
                Some(l) => (Ok(l), "listener adopted from the previous process"),
                None => (
                    listen::bind(addr, self.shared.limits.listen_backlog),
                    "listener bound",
                ),
            };
            let ready = listener.and_then(|l| {
                let l = listen::prepare(l)?;
                let dup = l.try_clone()?;
                Ok((tokio::net::TcpListener::from_std(l)?, dup))
            });
            match ready {
                Ok((listener, dup)) => {
                    tracing::info!(%addr, "{how}");
                    pending.push(Pending { addr, listener });
                    fds.insert(addr, dup);
                }
                Err(e) => {
                    unbound += 1;
                    tracing::error!(%addr, error = %e, "cannot bind listener; retrying");
                }
            }
        }
        self.shared.unbound.store(unbound, Ordering::Release);
        self.shared.metrics.listeners_unbound.set(unbound as i64);
        pending
    }

    /// Starts the accept loops of listeners [`App::sync_listeners`] bound,
    /// once the table they serve is live.
    fn start_accepting(self: &Arc<Self>, pending: Vec<Pending>) {
        let mut running = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        for Pending { addr, listener } in pending {
            let task = tokio::spawn(listen::accept_loop(
                listener,
                addr,
                Arc::clone(&self.shared),
            ));
            running.insert(addr, task);
        }
    }

    /// Listening sockets received from a previous process (upgrade).
    pub fn inherit(&self, listeners: HashMap<SocketAddr, std::net::TcpListener>) {
        *self.inherited.lock().unwrap_or_else(|p| p.into_inner()) = listeners;
    }

    /// Closes the inherited listening sockets the first table did not
    /// adopt: once the previous process has closed its copies too, their
    /// pairs refuse connections instead of queueing them where no one
    /// accepts. Call after the first table is applied.
    pub fn close_unadopted(&self) {
        let left = std::mem::take(&mut *self.inherited.lock().unwrap_or_else(|p| p.into_inner()));
        for addr in left.keys() {
            tracing::info!(%addr, "upgrade: closing an inherited listener the table does not need");
        }
    }

    /// Duplicates of every live listening socket, for an upgrade handoff.
    pub fn listener_dups(&self) -> std::io::Result<Vec<(SocketAddr, std::net::TcpListener)>> {
        let fds = self.listener_fds.lock().unwrap_or_else(|p| p.into_inner());
        fds.iter().map(|(a, l)| Ok((*a, l.try_clone()?))).collect()
    }

    /// Stops accepting (closing this process's listening sockets) without
    /// waiting; open connections go on. Used after an upgrade handoff.
    pub fn stop_accepting(&self) {
        self.shared.draining.store(true, Ordering::Release);
        for (_, task) in self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            task.abort();
        }
        self.listener_fds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Retries listeners that failed to bind, until shutdown.
    pub async fn retry_binds(self: Arc<Self>) {
        loop {
            tokio::time::sleep(BIND_RETRY).await;
            if self.shared.unbound.load(Ordering::Acquire) > 0
                && !self.shared.draining.load(Ordering::Acquire)
            {
                let _one_at_a_time = self.applying.lock().await;
                let live = self.shared.live.load_full();
                let pending = self.sync_listeners(&live.table);
                self.start_accepting(pending);
            }
        }
    }

    /// Schedules the end of tunnels of `deleted` routes.
    fn withdraw_deleted(self: &Arc<Self>, deleted: Vec<Arc<str>>) {
        if deleted.is_empty() {
            return;
        }
        let grace = self.shared.limits.deleted_route_grace;
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let live = shared.live.load();
            for id in deleted {
                let back = live.table.routes().iter().any(|r| r.route.id == id);
                if !back {
                    shared.withdrawals.withdraw(&id);
                }
            }
        });
    }

    /// Stops accepting at once and waits for open connections to finish,
    /// at most `drain_timeout`. Returns the connections still open.
    pub async fn drain(&self) -> usize {
        self.shared.draining.store(true, Ordering::Release);
        {
            let mut running = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
            for (_, task) in running.drain() {
                task.abort();
            }
            self.listener_fds
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            self.inherited
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
        let deadline = tokio::time::Instant::now() + self.shared.limits.drain_timeout;
        loop {
            let open = self.shared.admission.open();
            if open == 0 || tokio::time::Instant::now() >= deadline {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The ids of routes in `old` only.
fn deleted_routes(old: &RouteTable, new: &RouteTable) -> Vec<Arc<str>> {
    let kept: BTreeSet<&str> = new.routes().iter().map(|r| &*r.route.id).collect();
    old.routes()
        .iter()
        .map(|r| Arc::clone(&r.route.id))
        .filter(|id| !kept.contains(&**id))
        .collect()
}
