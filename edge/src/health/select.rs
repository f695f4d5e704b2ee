//! The backends one connection may use: the platform's healthy instances
//! of the route, less those the edge's probes find down or that are
//! ejected, plus at most one ejected instance whose backoff is over (its
//! trial). If that leaves nothing while the platform lists instances, the
//! panic rule uses them all. Lock-free: one snapshot load and atomics.

use std::sync::Arc;

use route_model::TableRoute;

use super::cell::{InstanceCell, Passive};
use super::{Health, Snapshot};

/// The outcome for one connection.
#[derive(Debug, Default)]
pub struct Pick {
    /// A recovering instance this connection tests first, if any.
    pub trial: Option<Arc<InstanceCell>>,
    /// The instances to choose among (after the trial).
    pub candidates: Vec<Arc<InstanceCell>>,
    /// True when the panic rule put instances the edge finds down back in.
    pub panic: bool,
}

impl Pick {
    pub fn is_empty(&self) -> bool {
        self.trial.is_none() && self.candidates.is_empty()
    }
}

/// Why an instance of a route is or is not used, for /routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Serving,
    PlatformUnhealthy,
    ProbeDown,
    Ejected,
    /// The ejection is over; the next client tests it.
    Trial,
}

impl Verdict {
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Serving => "serving",
            Verdict::PlatformUnhealthy => "platform_unhealthy",
            Verdict::ProbeDown => "health_check_down",
            Verdict::Ejected => "ejected",
            Verdict::Trial => "trial",
        }
    }
}

impl Health {
    /// The backends `route` may use now.
    pub fn pick(&self, route: &TableRoute) -> Pick {
        let snap = self.snapshot();
        let now = self.now_ms();
        let probe = ProbeView::new(&snap, route);
        let cells = route
            .backends
            .iter()
            .filter(|ip| snap.overlay.policy.allows(**ip))
            .map(|ip| match snap.cells.get(ip) {
                Some(c) => Arc::clone(c),
                // The table is newer than the snapshot (being rebuilt).
                None => Arc::new(InstanceCell::detached(*ip)),
            });
        let mut pick = Pick {
            candidates: Vec::with_capacity(route.backends.len()),
            ..Pick::default()
        };
        for cell in cells.clone() {
            if !probe.up(&snap, &cell) {
                continue;
            }
            match cell.passive(now) {
                Passive::Serving => pick.candidates.push(cell),
                Passive::Trial if pick.trial.is_none() && cell.claim_trial(now) => {
                    pick.trial = Some(cell);
                }
                Passive::Trial | Passive::Ejected { .. } => {}
            }
        }
        if pick.is_empty() {
            // The panic rule: every instance the platform lists.
            pick.candidates.extend(cells);
            if !pick.candidates.is_empty() {
                self.metrics.health.panics.inc();
                self.panic_log(&route.route.id, pick.candidates.len(), now);
                pick.panic = true;
            }
        }
        pick
    }

    /// What the edge thinks of instance `ip` of `route` (`platform`: the
    /// platform says healthy), for display.
    pub fn verdict(
        &self,
        snap: &Snapshot,
        route: &TableRoute,
        cell: &InstanceCell,
        platform: bool,
    ) -> Verdict {
        if !platform {
            return Verdict::PlatformUnhealthy;
        }
        if !ProbeView::new(snap, route).up(snap, cell) {
            return Verdict::ProbeDown;
        }
        match cell.passive(self.now_ms()) {
            Passive::Serving => Verdict::Serving,
            Passive::Ejected { .. } => Verdict::Ejected,
            Passive::Trial => Verdict::Trial,
        }
    }
}

/// How a route's active check applies to its backends.
enum ProbeView {
    /// No health source: no active signal.
    None,
    /// The health source is the backends' own process: each backend is
    /// judged by its own probe on this port.
    PerInstance(u16),
    /// The health source is another process of the env: the route is up
    /// while any of its instances is (or while it has none to probe).
    Route(bool),
}

impl ProbeView {
    fn new(snap: &Snapshot, route: &TableRoute) -> ProbeView {
        let Some(h) = &route.route.health_source else {
            return ProbeView::None;
        };
        if h.process_type == route.route.backend_process_type {
            return ProbeView::PerInstance(h.port);
        }
        let mut probed = route.health_backends.iter().filter_map(|ip| {
            snap.probes
                .get(&std::net::SocketAddrV6::new(*ip, h.port, 0, 0))
        });
        let mut any = false;
        let up = probed.any(|p| {
            any = true;
            p.up()
        });
        ProbeView::Route(up || !any)
    }

    fn up(&self, snap: &Snapshot, cell: &InstanceCell) -> bool {
        match self {
            ProbeView::None => true,
            ProbeView::Route(up) => *up,
            ProbeView::PerInstance(port) => snap
                .probes
                .get(&std::net::SocketAddrV6::new(cell.addr, *port, 0, 0))
                .is_none_or(|p| p.up()),
        }
    }
}
