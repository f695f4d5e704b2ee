//! What the edge knows about each instance and each probed health port:
//! atomics the connection path reads without a lock, written by the prober
//! and by connection outcomes. A cell is kept across table swaps while its
//! instance (same id, same address) still exists, and dropped with it.

use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntCounter;

use super::config::HealthConfig;
use super::state::{self, Checker};
use crate::metrics::Metrics;

/// A trial connect claimed longer ago than this is presumed lost (its
/// connection ended before reporting) and may be claimed again.
const TRIAL_STALE_MS: u64 = 30_000;

/// The per-instance series: created with the cell, removed with it.
#[derive(Debug)]
pub(crate) struct Counters {
    pub probes: IntCounter,
    pub probe_failures: IntCounter,
    pub ejections: IntCounter,
    pub state_changes: IntCounter,
}

impl Counters {
    /// Counters in no registry, for an instance the snapshot does not know.
    fn unregistered() -> Counters {
        let c = || IntCounter::new("detached", "not exported").expect("valid metric name");
        Counters {
            probes: c(),
            probe_failures: c(),
            ejections: c(),
            state_changes: c(),
        }
    }

    fn new(metrics: &Metrics, instance: &str) -> Counters {
        let f = &metrics.health;
        Counters {
            probes: f.probes.with_label_values(&[instance]),
            probe_failures: f.probe_failures.with_label_values(&[instance]),
            ejections: f.ejections.with_label_values(&[instance]),
            state_changes: f.state_changes.with_label_values(&[instance]),
        }
    }
}

/// The passive signal of an instance at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Passive {
    /// Not ejected.
    Serving,
    /// Ejected until `until_ms`.
    Ejected { until_ms: u64 },
    /// The ejection is over: one client may test it.
    Trial,
}

/// One instance, by overlay address.
#[derive(Debug)]
pub(crate) struct InstanceCell {
    pub id: Arc<str>,
    pub addr: Ipv6Addr,
    /// Open tunnels from this edge, for the two-choices pick.
    open: AtomicU32,
    /// 0 while serving; else the end of the ejection (ms on the health
    /// clock, never 0).
    until_ms: AtomicU64,
    /// When a trial connect was claimed (ms), 0 when none is in flight.
    trial_ms: AtomicU64,
    /// Consecutive failed connects since the last success or ejection.
    failures: AtomicU32,
    /// Writers of the passive state (connection outcomes) take this lock of
    /// this instance only; readers use the atomics above.
    passive: Mutex<Ejections>,
    pub(crate) counters: Counters,
}

/// The ejection history of an instance.
#[derive(Debug, Default)]
struct Ejections {
    /// Consecutive ejections (a failed trial adds one): the backoff grows.
    consecutive: u32,
}

impl InstanceCell {
    pub(crate) fn new(id: Arc<str>, addr: Ipv6Addr, metrics: Option<&Metrics>) -> InstanceCell {
        let counters = match metrics {
            Some(m) => Counters::new(m, &id),
            None => Counters::unregistered(),
        };
        InstanceCell {
            id,
            addr,
            open: AtomicU32::new(0),
            until_ms: AtomicU64::new(0),
            trial_ms: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            passive: Mutex::new(Ejections::default()),
            counters,
        }
    }

    /// A cell for an address the snapshot does not know yet (a table newer
    /// than the snapshot): usable, counted nowhere, forgotten after use.
    pub(crate) fn detached(addr: Ipv6Addr) -> InstanceCell {
        InstanceCell::new(Arc::from(""), addr, None)
    }

    pub(crate) fn open(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    /// Counts a tunnel to this instance until the slot is dropped.
    pub(crate) fn slot(self: &Arc<Self>) -> LoadSlot {
        self.open.fetch_add(1, Ordering::Relaxed);
        LoadSlot(Arc::clone(self))
    }

    pub(crate) fn passive(&self, now_ms: u64) -> Passive {
        match self.until_ms.load(Ordering::Acquire) {
            0 => Passive::Serving,
            until_ms if now_ms < until_ms => Passive::Ejected { until_ms },
            _ => Passive::Trial,
        }
    }

    /// Claims the one trial connect of an instance whose ejection is over.
    pub(crate) fn claim_trial(&self, now_ms: u64) -> bool {
        let claimed = self.trial_ms.load(Ordering::Acquire);
        if claimed != 0 && now_ms.saturating_sub(claimed) < TRIAL_STALE_MS {
            return false;
        }
        self.trial_ms
            .compare_exchange(claimed, now_ms.max(1), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Records a client connect to this instance. A success ends an
    /// ejection; `eject_after` consecutive failures, or a failed trial,
    /// eject it for a backoff that doubles each time.
    pub(crate) fn report(&self, ok: bool, now_ms: u64, config: &HealthConfig) {
        if ok {
            if self.failures.load(Ordering::Relaxed) == 0
                && self.until_ms.load(Ordering::Relaxed) == 0
            {
                return;
            }
            let mut history = self.passive.lock().unwrap_or_else(|p| p.into_inner());
            self.failures.store(0, Ordering::Relaxed);
            if self.until_ms.swap(0, Ordering::AcqRel) != 0 {
                history.consecutive = 0;
                self.trial_ms.store(0, Ordering::Release);
                self.counters.state_changes.inc();
                tracing::info!(instance = %self.id, addr = %self.addr, "backend restored: a trial connect succeeded");
            }
            return;
        }
        let mut history = self.passive.lock().unwrap_or_else(|p| p.into_inner());
        let was = self.passive(now_ms);
        if matches!(was, Passive::Ejected { .. }) {
            // A connect that started before the ejection (or in panic).
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if was == Passive::Serving && failures < config.eject_after {
            return;
        }
        history.consecutive += 1;
        let length = state::ejection(history.consecutive, config.eject, config.max_eject);
        self.until_ms
            .store(now_ms + length.as_millis() as u64 + 1, Ordering::Release);
        self.failures.store(0, Ordering::Relaxed);
        self.trial_ms.store(0, Ordering::Release);
        self.counters.ejections.inc();
        if was == Passive::Serving {
            self.counters.state_changes.inc();
            tracing::warn!(instance = %self.id, addr = %self.addr, failures, ejected_ms = length.as_millis() as u64, "backend ejected: consecutive connect failures");
        } else {
            tracing::info!(instance = %self.id, addr = %self.addr, ejected_ms = length.as_millis() as u64, "backend trial connect failed; ejected again");
        }
    }
}

/// Holds one open-tunnel count of an instance.
#[derive(Debug)]
pub(crate) struct LoadSlot(Arc<InstanceCell>);

impl Drop for LoadSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One probed `[instance addr]:health port`.
#[derive(Debug)]
pub(crate) struct ProbeCell {
    pub target: SocketAddrV6,
    pub instance: Arc<InstanceCell>,
    up: AtomicBool,
    checker: Mutex<Checker>,
    /// The last failure, for /routes.
    last_error: Mutex<Option<String>>,
}

impl ProbeCell {
    pub(crate) fn new(target: SocketAddrV6, instance: Arc<InstanceCell>) -> ProbeCell {
        ProbeCell {
            target,
            instance,
            up: AtomicBool::new(true),
            checker: Mutex::new(Checker::default()),
            last_error: Mutex::new(None),
        }
    }

    pub(crate) fn up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records one probe's result (`Err` = why it failed), logging one
    /// line when the verdict flips.
    pub(crate) fn record(&self, result: Result<(), String>, config: &HealthConfig) {
        let counters = &self.instance.counters;
        counters.probes.inc();
        let ok = result.is_ok();
        if let Err(why) = result {
            counters.probe_failures.inc();
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        }
        let flipped = self
            .checker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(ok, config.rise, config.fall);
        let Some(up) = flipped else { return };
        self.up.store(up, Ordering::Release);
        counters.state_changes.inc();
        let instance = &*self.instance.id;
        if up {
            tracing::info!(instance, target = %self.target, rise = config.rise, "health check up");
        } else {
            let why = self.last_error().unwrap_or_default();
            tracing::warn!(instance, target = %self.target, fall = config.fall, error = %why, "health check down");
        }
    }
}

/// Milliseconds of `d`, for the health clock.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell() -> InstanceCell {
        InstanceCell::new(
            Arc::from("i-1"),
            "fdaa::1".parse().unwrap(),
            Some(&Metrics::new()),
        )
    }

    fn config() -> HealthConfig {
        toml::from_str("eject_after = 2\neject_ms = 100\nmax_eject_ms = 300").unwrap()
    }

    #[test]
    fn consecutive_failures_eject_then_one_trial_decides() {
        let (c, cfg) = (cell(), config());
        c.report(false, 10, &cfg);
        c.report(true, 11, &cfg);
        c.report(false, 12, &cfg);
        assert_eq!(c.passive(12), Passive::Serving, "a success reset the count");
        c.report(false, 13, &cfg);
        assert_eq!(c.passive(13), Passive::Ejected { until_ms: 114 });
        assert_eq!(c.counters.ejections.get(), 1);
        assert_eq!(c.passive(114), Passive::Trial);
        assert!(c.claim_trial(114));
        assert!(!c.claim_trial(115), "one client tests it");
        c.report(false, 120, &cfg);
        assert_eq!(
            c.passive(120),
            Passive::Ejected { until_ms: 321 },
            "a failed trial ejects for twice as long"
        );
        assert!(c.claim_trial(400));
        c.report(true, 401, &cfg);
        assert_eq!(c.passive(401), Passive::Serving);
        assert_eq!(c.counters.state_changes.get(), 2, "ejected, then restored");
        c.report(false, 500, &cfg);
        c.report(false, 501, &cfg);
        assert_eq!(
            c.passive(501),
            Passive::Ejected { until_ms: 602 },
            "the backoff starts over after a success"
        );
    }

    #[test]
    fn a_lost_trial_can_be_claimed_again() {
        let c = cell();
        c.report(false, 1, &toml::from_str("eject_after = 1").unwrap());
        assert!(c.claim_trial(10_000));
        assert!(!c.claim_trial(10_000 + TRIAL_STALE_MS - 1));
        assert!(c.claim_trial(10_000 + TRIAL_STALE_MS));
    }

    #[test]
    fn slots_count_open_tunnels() {
        let c = Arc::new(cell());
        let a = c.slot();
        let b = c.slot();
        assert_eq!(c.open(), 2);
        drop((a, b));
        assert_eq!(c.open(), 0);
    }
}
