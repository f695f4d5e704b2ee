//! The running edge: applying route tables, the listener set that serves
//! them, and drain. The state connections read lives in [`crate::shared`].
//!
//! A route table is applied in one place, [`Server::apply_with`], whatever its
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
//! of a process continues from [`Server::continue_from`] (the saved table's
//! version, or the previous process's at an upgrade).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use route_model::{compile, Compiled, RouteTable, RoutingSpec, SpecError};

use crate::config::Config;
use crate::listen::Listeners;
use crate::shared::{Live, Shared};

/// How often listeners that failed to bind are retried.
const BIND_RETRY: Duration = Duration::from_secs(1);

/// The edge: shared state plus the listener set.
#[derive(Debug)]
pub(crate) struct Server {
    pub shared: Arc<Shared>,
    listeners: Listeners,
    /// Serialises `apply` (SIGHUP and control pushes may race).
    applying: tokio::sync::Mutex<()>,
    /// The version the next table must exceed (see `continue_from`).
    version_floor: AtomicU64,
}

impl Server {
    pub(crate) fn new(config: &Config) -> Arc<Server> {
        let shared = Arc::new(Shared::new(config));
        Arc::new(Server {
            shared,
            listeners: Listeners::default(),
            applying: tokio::sync::Mutex::new(()),
            version_floor: AtomicU64::new(0),
        })
    }

    /// Makes the next table's version greater than `version` (a version
    /// served before this process: by the saved table or the previous
    /// process at an upgrade).
    pub(crate) fn continue_from(&self, version: u64) {
        self.version_floor.fetch_max(version, Ordering::AcqRel);
    }

    /// The version the next applied table gets.
    fn next_version(&self) -> u64 {
        let live = self.shared.live.load().table.version();
        live.max(self.version_floor.load(Ordering::Acquire)) + 1
    }

    /// Compiles `routing` under `config`'s policy and makes it live.
    /// Returns the new version and what validation rejected.
    pub(crate) async fn apply(
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

    /// As [`Server::apply`], calling `persist(version)` on the blocking thread
    /// before the compile: an error leaves the live table as it was (the
    /// version is not used) and is returned. Persisting first lets the
    /// caller's copy of the pushed bytes go before the compile allocates
    /// the table, which keeps the peak of a large push lower; the spec
    /// itself is dropped right after the compile, on this thread.
    pub(crate) async fn apply_with<E: Send + 'static>(
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
            persist(version)?;
            let compiled = compile(&routing, &policy, &overlay, version);
            drop(routing);
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
        let pending = self.listeners.sync(&compiled.table, shared);
        let old = shared.live.swap(Arc::new(Live {
            table: compiled.table,
            overlay: config.overlay.clone(),
            errors: compiled.errors,
        }));
        self.listeners
            .start(pending, &shared.live.load().table, shared);
        shared.metrics.routes_rejected_new(&old.errors, &errors);
        tokio::task::spawn_blocking(move || {
            drop(old);
            crate::trim::release_free_heap();
        });
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

    /// Listening sockets received from a previous process (upgrade).
    pub(crate) fn inherit(&self, listeners: HashMap<SocketAddr, std::net::TcpListener>) {
        self.listeners.inherit(listeners);
    }

    /// Closes the inherited listening sockets the first table did not
    /// adopt (see [`Listeners::close_unadopted`]). Call after the first
    /// table is applied.
    pub(crate) fn close_unadopted(&self) {
        self.listeners.close_unadopted();
    }

    /// Duplicates of every live listening socket, for an upgrade handoff.
    pub(crate) fn listener_dups(
        &self,
    ) -> std::io::Result<Vec<(SocketAddr, std::net::TcpListener)>> {
        self.listeners.dups()
    }

    /// Retries listeners that failed to bind, until shutdown.
    pub(crate) async fn retry_binds(self: Arc<Self>) {
        loop {
            tokio::time::sleep(BIND_RETRY).await;
            if self.shared.unbound.load(Ordering::Acquire) > 0
                && !self.shared.draining.load(Ordering::Acquire)
            {
                let _one_at_a_time = self.applying.lock().await;
                let live = self.shared.live.load_full();
                let pending = self.listeners.sync(&live.table, &self.shared);
                self.listeners.start(pending, &live.table, &self.shared);
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
    pub(crate) async fn drain(&self) -> usize {
        self.shared.draining.store(true, Ordering::Release);
        self.listeners.close_all();
        self.listeners.inherit(HashMap::new());
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
