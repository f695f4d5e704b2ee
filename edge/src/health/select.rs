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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overlay;
    use crate::health::HealthConfig;
    use crate::metrics::Metrics;
    use route_model::{compile, OverlayPolicy, PortPolicy, RouteTable, RoutingSpec};

    const SPEC: &str = r#"
[[envs]]
id = "acme/shop/prod"
ipv6 = ["2001:db8::10"]

[[instances]]
id = "i-a"
env = "acme/shop/prod"
process_type = "web"
addr = "fdaa::a"

[[instances]]
id = "i-b"
env = "acme/shop/prod"
process_type = "web"
addr = "fdaa::b"

[[instances]]
id = "i-s"
env = "acme/shop/prod"
process_type = "sidecar"
addr = "fdaa::5"

[[routes]]
id = "r-own"
env = "acme/shop/prod"
hostname = "own.example.com"
listen_port = 443
protocol = "tls_passthrough"
backend_port = 8443
health_source = { process_type = "web", port = 9000 }

[[routes]]
id = "r-side"
env = "acme/shop/prod"
hostname = "side.example.com"
listen_port = 443
protocol = "tls_passthrough"
backend_port = 8443
health_source = { process_type = "sidecar", port = 9100 }
"#;

    fn table() -> RouteTable {
        let spec: RoutingSpec = toml::from_str(SPEC).unwrap();
        let c = compile(&spec, &PortPolicy::default(), &OverlayPolicy::default(), 1);
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        c.table
    }

    fn ids(cells: &[Arc<InstanceCell>]) -> Vec<String> {
        let mut ids: Vec<String> = cells.iter().map(|c| c.id.to_string()).collect();
        ids.sort();
        ids
    }

    /// Fails the probe of `target` until its verdict is down.
    fn take_down(health: &Health, target: &str) {
        let snap = health.snapshot();
        let probe = &snap.probes[&target.parse().unwrap()];
        for _ in 0..health.config.fall {
            probe.record(Err("refused".into()), &health.config);
        }
        assert!(!probe.up());
    }

    #[tokio::test]
    async fn probes_take_out_their_own_instance_and_all_down_is_a_panic() {
        let table = table();
        let health = Health::new(HealthConfig::default(), &Metrics::new());
        health.update(&table, &Overlay::default());
        assert_eq!(health.snapshot().probes.len(), 3, "a:9000, b:9000, s:9100");
        let own = table
            .routes()
            .iter()
            .find(|r| &*r.route.id == "r-own")
            .unwrap();

        let pick = health.pick(own);
        assert_eq!(ids(&pick.candidates), ["i-a", "i-b"]);
        take_down(&health, "[fdaa::a]:9000");
        let pick = health.pick(own);
        assert_eq!(ids(&pick.candidates), ["i-b"]);
        assert!(!pick.panic);
        take_down(&health, "[fdaa::b]:9000");
        let pick = health.pick(own);
        assert_eq!(ids(&pick.candidates), ["i-a", "i-b"], "the panic rule");
        assert!(pick.panic);
        assert_eq!(health.metrics.health.panics.get(), 1);
    }

    #[tokio::test]
    async fn a_health_source_of_another_process_judges_the_route_as_a_whole() {
        let table = table();
        let health = Health::new(HealthConfig::default(), &Metrics::new());
        health.update(&table, &Overlay::default());
        let side = table
            .routes()
            .iter()
            .find(|r| &*r.route.id == "r-side")
            .unwrap();
        let pick = health.pick(side);
        assert_eq!(ids(&pick.candidates), ["i-a", "i-b"]);
        assert!(!pick.panic);
        take_down(&health, "[fdaa::5]:9100");
        // Route-wide down takes every backend out at once: the panic rule
        // serves them all, and says so.
        let pick = health.pick(side);
        assert_eq!(ids(&pick.candidates), ["i-a", "i-b"]);
        assert!(pick.panic);
        let snap = health.snapshot();
        let a = &snap.cells[&"fdaa::a".parse().unwrap()];
        assert_eq!(health.verdict(&snap, side, a, true), Verdict::ProbeDown);
    }

    #[tokio::test]
    async fn an_ejected_instance_is_skipped_then_tested_by_one_pick() {
        let table = table();
        let config: HealthConfig = toml::from_str("eject_after = 1\neject_ms = 1").unwrap();
        let health = Health::new(config, &Metrics::new());
        health.update(&table, &Overlay::default());
        let own = table
            .routes()
            .iter()
            .find(|r| &*r.route.id == "r-own")
            .unwrap();
        let a = Arc::clone(&health.snapshot().cells[&"fdaa::a".parse().unwrap()]);
        health.report(&a, false);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let first = health.pick(own);
        assert_eq!(first.trial.as_ref().map(|c| &*c.id), Some("i-a"));
        assert_eq!(ids(&first.candidates), ["i-b"]);
        let second = health.pick(own);
        assert!(second.trial.is_none(), "one trial at a time");
        assert_eq!(ids(&second.candidates), ["i-b"]);
        health.report(&a, true);
        assert_eq!(ids(&health.pick(own).candidates), ["i-a", "i-b"]);
    }

    #[tokio::test]
    async fn a_swap_keeps_the_state_of_instances_that_remain() {
        let table = table();
        let health = Health::new(HealthConfig::default(), &Metrics::new());
        health.update(&table, &Overlay::default());
        take_down(&health, "[fdaa::a]:9000");
        let again: RoutingSpec = toml::from_str(SPEC).unwrap();
        let next = compile(&again, &PortPolicy::default(), &OverlayPolicy::default(), 2).table;
        health.update(&next, &Overlay::default());
        let snap = health.snapshot();
        assert!(!snap.probes[&"[fdaa::a]:9000".parse().unwrap()].up());
        assert!(snap.probes[&"[fdaa::b]:9000".parse().unwrap()].up());
    }
}
