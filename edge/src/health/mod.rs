//! The edge's own view of backend health, combined with the platform's.
//!
//! The platform's `instance.health` events decide which instances are in a
//! route's table at all. On top of that the edge keeps two signals of its
//! own, per instance and kept across table swaps:
//! - **active**: a TCP connect probe to `[instance addr]:health_source.port`
//!   of every route's health-source instances, one per `(instance, port)`
//!   however many routes share it, `fall` failures to go down, `rise`
//!   successes to come back;
//! - **passive**: `eject_after` consecutive failed client connects eject an
//!   instance for a backoff that doubles, then one client tests it.
//!
//! An instance serves when the platform says healthy and both signals say
//! up. **Panic rule**: when the edge's signals would take out every
//! instance the platform says is healthy, the edge distrusts itself (the
//! fault is likelier on its side of the network) and uses them all.
//!
//! The connection path reads one [`Snapshot`] (an `ArcSwap`, no lock) and
//! per-instance atomics; a table swap builds the next snapshot after the
//! table is live, reusing the cells of instances that still exist.
//!
//! # Layout
//! - [`config`]: `[health]` of `edge.toml`.
//! - [`state`]: the rise/fall counter and the ejection backoff (pure).
//! - [`cell`]: per-instance and per-probe atomics, metrics, log lines.
//! - [`select`]: the candidates for one connection (the panic rule).
//! - [`prober`]: the probe scheduler (jitter, rate cap) and the probe dial.
//! - [`view`]: backend states for `/routes`.

pub(crate) mod cell;
pub(crate) mod config;
pub(crate) mod prober;
pub(crate) mod select;
pub(crate) mod state;
pub(crate) mod view;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use route_model::RouteTable;
use tokio::sync::Notify;

pub(crate) use cell::{InstanceCell, LoadSlot, ProbeCell};
pub(crate) use config::HealthConfig;

use crate::config::Overlay;
use crate::metrics::Metrics;

/// The cells of one table: read by connections, replaced on table swaps.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub overlay: Overlay,
    /// Every instance of the table, by overlay address.
    pub cells: HashMap<Ipv6Addr, Arc<InstanceCell>>,
    /// Every probe target of the table.
    pub probes: HashMap<SocketAddrV6, Arc<ProbeCell>>,
    /// The routes' backends resolved to cells, by backend list and port.
    pub(crate) groups: HashMap<select::GroupKey, Arc<select::Group>>,
}

/// The edge's health state, shared by connections, the prober and /routes.
#[derive(Debug)]
pub(crate) struct Health {
    pub config: HealthConfig,
    metrics: Metrics,
    snapshot: ArcSwap<Snapshot>,
    /// Origin of the millisecond clock the atomics hold.
    epoch: Instant,
    /// Wakes the prober when the targets change.
    changed: Notify,
    prober_started: AtomicBool,
    /// When the panic rule last logged (ms), to log at most once a second.
    panic_logged_ms: AtomicU64,
}

impl Health {
    pub(crate) fn new(config: HealthConfig, metrics: &Metrics) -> Arc<Health> {
        Arc::new(Health {
            config,
            metrics: metrics.clone(),
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            epoch: Instant::now(),
            changed: Notify::new(),
            prober_started: AtomicBool::new(false),
            panic_logged_ms: AtomicU64::new(0),
        })
    }

    /// Milliseconds on the health clock.
    pub(crate) fn now_ms(&self) -> u64 {
        cell::millis(self.epoch.elapsed())
    }

    pub(crate) fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// Rebuilds the cells for `table` (called once it is live), keeping
    /// the state of every instance and probe target that still exists, and
    /// removing the series of the instances that are gone. Starts the
    /// prober on first use (needs a Tokio runtime).
    pub(crate) fn update(self: &Arc<Self>, table: &RouteTable, overlay: &Overlay) {
        let old = self.snapshot.load_full();
        let mut cells: HashMap<Ipv6Addr, Arc<InstanceCell>> =
            HashMap::with_capacity(table.instances().len());
        for inst in table.instances() {
            if cells.contains_key(&inst.addr) {
                continue;
            }
            let cell = match old.cells.get(&inst.addr) {
                Some(c) if c.id == inst.id => Arc::clone(c),
                _ => Arc::new(InstanceCell::new(
                    Arc::clone(&inst.id),
                    inst.addr,
                    Some(&self.metrics),
                )),
            };
            cells.insert(inst.addr, cell);
        }
        let mut probes: HashMap<SocketAddrV6, Arc<ProbeCell>> = HashMap::new();
        // Routes share their health-source lists: expand each list once
        // per port, not once per route.
        let mut expanded: HashSet<(usize, u16)> = HashSet::new();
        for r in table.routes() {
            let Some(h) = &r.route.health_source else {
                continue;
            };
            if !expanded.insert((r.health_backends.as_ptr() as usize, h.port)) {
                continue;
            }
            for ip in r.health_backends.iter() {
                let target = SocketAddrV6::new(*ip, h.port, 0, 0);
                let Some(cell) = cells.get(ip) else { continue };
                let probe = match old.probes.get(&target) {
                    Some(p) if Arc::ptr_eq(&p.instance, cell) => Arc::clone(p),
                    _ => Arc::new(ProbeCell::new(target, Arc::clone(cell))),
                };
                probes.insert(target, probe);
            }
        }
        let ids: HashSet<&str> = cells.values().map(|c| &*c.id).collect();
        for c in old.cells.values() {
            if !ids.contains(&*c.id) {
                self.metrics.health.remove_instance(&c.id);
            }
        }
        let targets = probes.len();
        let mut snap = Snapshot {
            overlay: overlay.clone(),
            cells,
            probes,
            groups: HashMap::new(),
        };
        for r in table.routes() {
            let key = select::group_key(r);
            if !snap.groups.contains_key(&key) {
                let group = Arc::new(select::Group::build(&snap, r));
                snap.groups.insert(key, group);
            }
        }
        self.snapshot.store(Arc::new(snap));
        self.metrics.health.targets.set(targets as i64);
        self.changed.notify_one();
        if !self.prober_started.swap(true, Ordering::AcqRel) {
            tokio::spawn(prober::run(Arc::clone(self)));
        }
    }

    /// Feeds one client connect's outcome to the instance's passive signal.
    pub(crate) fn report(&self, cell: &InstanceCell, ok: bool) {
        cell.report(ok, self.now_ms(), &self.config);
    }

    /// Logs that the panic rule is in force, at most once a second.
    fn panic_log(&self, route: &str, instances: usize, now_ms: u64) {
        let last = self.panic_logged_ms.load(Ordering::Relaxed);
        if last != 0 && now_ms.saturating_sub(last) < 1_000 {
            return;
        }
        if self
            .panic_logged_ms
            .compare_exchange(last, now_ms.max(1), Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(route, instances, "panic rule: the edge finds every backend of the route down while the platform says they are up; using them all");
        }
    }
}
