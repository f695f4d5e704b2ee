//! State every connection, accept loop and the admin server read: the live
//! table snapshot (swapped whole, never mutated), limits, metrics, health,
//! admission, readiness, and the withdrawal signals of deleted routes.
//!
//! A leaf: it names what is shared and imports none of the modules that
//! use it ([`crate::server`] writes it, [`crate::listen`] and
//! [`crate::conn`] read it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use route_model::{RouteTable, SpecError};
use tokio::sync::watch;

use crate::admission::Admission;
use crate::config::{Config, Limits, Overlay};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::reject::RejectLog;

/// The snapshot every connection reads: swapped whole, never mutated.
#[derive(Debug)]
pub(crate) struct Live {
    pub table: RouteTable,
    pub overlay: Overlay,
    /// What validation rejected in the config this table came from.
    pub errors: Vec<SpecError>,
}

/// State shared by the accept loops, connections and the admin server.
#[derive(Debug)]
pub(crate) struct Shared {
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
pub(crate) enum NotReady {
    /// No routes in edge.toml, no saved table, nothing pushed yet.
    NeverSynced = 1,
    /// The saved table exists but cannot be read (it was moved aside).
    StateUnreadable = 2,
}

impl NotReady {
    /// The `/readyz` and `StatusResponse.not_ready_reason` value.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            NotReady::NeverSynced => "never_synced",
            NotReady::StateUnreadable => "state_unreadable",
        }
    }
}

impl Shared {
    /// The state of a process that has applied no table yet.
    pub(crate) fn new(config: &Config) -> Shared {
        let limits = config.limits;
        let metrics = Metrics::new();
        Shared {
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
        }
    }

    /// True once every listener of the live table is bound (and, with
    /// `[control]`, a table to serve is known).
    pub(crate) fn ready(&self) -> bool {
        self.unbound.load(Ordering::Acquire) == 0
            && !self.draining.load(Ordering::Acquire)
            && self.not_synced().is_none()
    }

    /// Why the edge is held back from ready until a push, if it is.
    pub(crate) fn not_synced(&self) -> Option<NotReady> {
        match self.not_synced.load(Ordering::Acquire) {
            1 => Some(NotReady::NeverSynced),
            2 => Some(NotReady::StateUnreadable),
            _ => None,
        }
    }

    /// Sets (or, with `None`, clears) the reason to hold back ready.
    pub(crate) fn set_not_synced(&self, reason: Option<NotReady>) {
        self.not_synced
            .store(reason.map_or(0, |r| r as u8), Ordering::Release);
    }

    /// Logs descriptor exhaustion at most once a second.
    pub(crate) fn fd_exhausted_log(&self, e: &std::io::Error) {
        let mut last = self.fd_log.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            tracing::error!(error = %e, open = self.admission.open(), "accept: out of file descriptors; pausing accepts");
        }
    }
}

/// A tunnel's subscription to its route's withdrawal: a receiver (two
/// words) held for the tunnel's life; the future that waits on it exists
/// only inside the tunnel's select.
#[derive(Debug)]
pub(crate) struct Withdrawal(watch::Receiver<bool>);

impl Withdrawal {
    /// Resolves when the route is withdrawn (never, if its sender is gone
    /// without withdrawing it).
    pub(crate) async fn wait(&mut self) {
        while !*self.0.borrow_and_update() {
            if self.0.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Tunnels of deleted routes: each subscribes by route id and is told when
/// the route is gone for good.
#[derive(Debug, Default)]
pub(crate) struct Withdrawals {
    routes: Mutex<HashMap<Arc<str>, watch::Sender<bool>>>,
}

impl Withdrawals {
    /// A [`Withdrawal`] of route `id`.
    pub(crate) fn subscribe(&self, id: &Arc<str>) -> Withdrawal {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        Withdrawal(
            routes
                .entry(Arc::clone(id))
                .or_insert_with(|| watch::channel(false).0)
                .subscribe(),
        )
    }

    /// Ends the tunnels of route `id` (its grace period is over).
    pub(crate) fn withdraw(&self, id: &str) {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = routes.remove(id) {
            let _ = tx.send(true);
        }
    }
}
