//! The backends one connection may use: the platform's healthy instances
//! of the route, less those the edge's probes find down or that are
//! ejected, plus at most one ejected instance whose backoff is over (its
//! trial). If that leaves nothing while the platform lists instances, the
//! panic rule uses them all. Lock-free: one snapshot load and atomics.

use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::Arc;

use route_model::TableRoute;

use super::cell::{InstanceCell, Passive, ProbeCell};
use super::{Health, Snapshot};

/// The backends of every route with the same backend list and per-instance
/// probe port, resolved to their cells once per snapshot, so a connection
/// does one hash lookup for its route instead of two per backend.
#[derive(Debug)]
pub(crate) struct Group {
    /// The table's list, kept alive: its address is the group's key, and
    /// must not be reused by another list while this snapshot exists.
    _list: Arc<[Ipv6Addr]>,
    entries: Box<[Entry]>,
}

#[derive(Debug)]
struct Entry {
    cell: Arc<InstanceCell>,
    /// The instance's own probe, for a health source of its own process.
    probe: Option<Arc<ProbeCell>>,
}

/// A group's key: the address of the route's backend list and the probe
/// port that judges each backend (0: none, or route-wide).
pub(crate) type GroupKey = (usize, u16);

pub(crate) fn group_key(route: &TableRoute) -> GroupKey {
    let port = match &route.route.health_source {
        Some(h) if h.process_type == route.route.backend_process_type => h.port,
        _ => 0,
    };
    (route.backends.as_ptr() as usize, port)
}

impl Group {
    /// `route`'s backends allowed by `snap`'s overlay, with their cells
    /// (a detached cell for an address `snap` does not know yet).
    pub(crate) fn build(snap: &Snapshot, route: &TableRoute) -> Group {
        let port = group_key(route).1;
        let entries = route
            .backends
            .iter()
            .filter(|ip| snap.overlay.policy.allows(**ip))
            .map(|ip| Entry {
                cell: match snap.cells.get(ip) {
                    Some(c) => Arc::clone(c),
                    None => Arc::new(InstanceCell::detached(*ip)),
                },
                probe: (port != 0)
                    .then(|| {
                        snap.probes
                            .get(&SocketAddrV6::new(*ip, port, 0, 0))
                            .cloned()
                    })
                    .flatten(),
            })
            .collect();
        Group {
            _list: Arc::clone(&route.backends),
            entries,
        }
    }
}

/// The outcome for one connection: whom to dial, in order.
#[derive(Debug)]
pub(crate) struct Pick {
    group: Arc<Group>,
    /// A recovering instance this connection tests first, if any.
    trial: Option<usize>,
    /// The instances to choose among (after the trial), as group indices.
    candidates: Vec<usize>,
    /// True when the panic rule put instances the edge finds down back in.
    pub panic: bool,
}

impl Pick {
    pub(crate) fn is_empty(&self) -> bool {
        self.trial.is_none() && self.candidates.is_empty()
    }

    /// Instances left to dial.
    pub(crate) fn len(&self) -> usize {
        self.candidates.len() + usize::from(self.trial.is_some())
    }

    fn choose(&self) -> usize {
        let n = self.candidates.len();
        if n == 1 {
            return 0;
        }
        let a = fastrand::usize(..n);
        let b = (a + 1 + fastrand::usize(..n - 1)) % n;
        let open = |i: usize| self.group.entries[self.candidates[i]].cell.open();
        if open(b) < open(a) {
            b
        } else {
            a
        }
    }
}

/// The instances to dial, in order: the trial first, then "two random
/// choices" among the rest, the one with fewer open tunnels.
impl Iterator for Pick {
    type Item = Arc<InstanceCell>;

    fn next(&mut self) -> Option<Arc<InstanceCell>> {
        let index = match self.trial.take() {
            Some(i) => i,
            None if self.candidates.is_empty() => return None,
            None => self.candidates.swap_remove(self.choose()),
        };
        Some(Arc::clone(&self.group.entries[index].cell))
    }
}

/// Why an instance of a route is or is not used, for /routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Serving,
    PlatformUnhealthy,
    ProbeDown,
    Ejected,
    /// The ejection is over; the next client tests it.
    Trial,
}

impl Verdict {
    pub(crate) const fn as_str(self) -> &'static str {
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
    pub(crate) fn pick(&self, route: &TableRoute) -> Pick {
        let snap = self.snapshot();
        let now = self.now_ms();
        let group = match snap.groups.get(&group_key(route)) {
            Some(g) => Arc::clone(g),
            // The table is newer than the snapshot (being rebuilt).
            None => Arc::new(Group::build(&snap, route)),
        };
        let route_up = match ProbeView::new(&snap, route) {
            ProbeView::Route(up) => up,
            ProbeView::None | ProbeView::PerInstance(_) => true,
        };
        let mut pick = Pick {
            candidates: Vec::with_capacity(group.entries.len()),
            trial: None,
            panic: false,
            group,
        };
        if route_up {
            for (i, e) in pick.group.entries.iter().enumerate() {
                if e.probe.as_ref().is_some_and(|p| !p.up()) {
                    continue;
                }
                match e.cell.passive(now) {
                    Passive::Serving => pick.candidates.push(i),
                    Passive::Trial if pick.trial.is_none() && e.cell.claim_trial(now) => {
                        pick.trial = Some(i);
                    }
                    Passive::Trial | Passive::Ejected { .. } => {}
                }
            }
        }
        if pick.is_empty() && !pick.group.entries.is_empty() {
            // The panic rule: every instance the platform lists.
            pick.candidates.extend(0..pick.group.entries.len());
            self.metrics.health.panics.inc();
            self.panic_log(&route.route.id, pick.candidates.len(), now);
            pick.panic = true;
        }
        pick
    }

    /// What the edge thinks of instance `ip` of `route` (`platform`: the
    /// platform says healthy), for display.
    pub(crate) fn verdict(
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

    /// The candidates' ids, sorted.
    fn ids(pick: &Pick) -> Vec<String> {
        let mut ids: Vec<String> = pick
            .candidates
            .iter()
            .map(|i| pick.group.entries[*i].cell.id.to_string())
            .collect();
        ids.sort();
        ids
    }

    fn trial(pick: &Pick) -> Option<String> {
        pick.trial
            .map(|i| pick.group.entries[i].cell.id.to_string())
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
        assert_eq!(ids(&pick), ["i-a", "i-b"]);
        take_down(&health, "[fdaa::a]:9000");
        let pick = health.pick(own);
        assert_eq!(ids(&pick), ["i-b"]);
        assert!(!pick.panic);
        take_down(&health, "[fdaa::b]:9000");
        let pick = health.pick(own);
        assert_eq!(ids(&pick), ["i-a", "i-b"], "the panic rule");
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
        assert_eq!(ids(&pick), ["i-a", "i-b"]);
        assert!(!pick.panic);
        take_down(&health, "[fdaa::5]:9100");
        // Route-wide down takes every backend out at once: the panic rule
        // serves them all, and says so.
        let pick = health.pick(side);
        assert_eq!(ids(&pick), ["i-a", "i-b"]);
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
        assert_eq!(trial(&first).as_deref(), Some("i-a"));
        assert_eq!(ids(&first), ["i-b"]);
        let second = health.pick(own);
        assert!(second.trial.is_none(), "one trial at a time");
        assert_eq!(ids(&second), ["i-b"]);
        health.report(&a, true);
        assert_eq!(ids(&health.pick(own)), ["i-a", "i-b"]);
    }

    #[test]
    fn two_choices_prefer_the_idle_backend() {
        let busy = Arc::new(InstanceCell::detached("fdaa::1".parse().unwrap()));
        let idle = Arc::new(InstanceCell::detached("fdaa::2".parse().unwrap()));
        let slots: Vec<_> = (0..5).map(|_| busy.slot()).collect();
        let entry = |cell: &Arc<InstanceCell>| Entry {
            cell: Arc::clone(cell),
            probe: None,
        };
        let group = Arc::new(Group {
            _list: Arc::from(Vec::new()),
            entries: vec![entry(&busy), entry(&idle)].into(),
        });
        for _ in 0..50 {
            let mut pick = Pick {
                group: Arc::clone(&group),
                trial: None,
                candidates: vec![0, 1],
                panic: false,
            };
            assert_eq!(&*pick.next().unwrap().id, &*idle.id);
            assert_eq!(pick.len(), 1);
        }
        drop(slots);
        assert_eq!(busy.open(), 0);
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
