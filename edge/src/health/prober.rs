//! The probe scheduler: one TCP connect per `(instance, health port)` per
//! `interval`, each target on its own jittered phase (so a thousand
//! targets are not probed in one burst), never more than
//! `max_probes_per_second` started (past it every target is probed less
//! often, and the edge says so once). Probe sockets are dialled like
//! client backends: only inside `overlay.allowed_backends`, from
//! `overlay.source`, with `overlay.fwmark`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddrV6;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::cell::ProbeCell;
use super::{Health, HealthConfig, Snapshot};
use crate::backend;
use crate::config::Overlay;

/// How long the scheduler sleeps with nothing to probe before looking
/// again (a table change wakes it sooner).
const IDLE: Duration = Duration::from_secs(1);
/// Each interval is stretched or shrunk by up to this fraction, so targets
/// that started in phase drift apart.
const JITTER: f64 = 0.1;

/// Runs the probes of `health`'s current snapshot, forever.
pub(crate) async fn run(health: Arc<Health>) {
    let config = health.config;
    let mut schedule = Schedule::default();
    let mut bucket = Bucket::new(config.max_probes_per_second, Instant::now());
    let mut known: Option<Arc<Snapshot>> = None;
    let mut capped_logged = false;
    loop {
        let snap = health.snapshot.load_full();
        let now = Instant::now();
        if !known.as_ref().is_some_and(|k| Arc::ptr_eq(k, &snap)) {
            schedule.reconcile(&snap, now, config.interval);
            let per_second = snap.probes.len() as f64 / config.interval.as_secs_f64();
            if per_second > f64::from(config.max_probes_per_second) && !capped_logged {
                capped_logged = true;
                tracing::warn!(
                    targets = snap.probes.len(),
                    max_probes_per_second = config.max_probes_per_second,
                    "health checks capped: targets are probed less often than health.interval_ms"
                );
            }
            known = Some(Arc::clone(&snap));
        }
        while let Some(target) = schedule.due(now) {
            if !bucket.take(now) {
                break;
            }
            schedule.pop_and_requeue(target, now + jittered(config.interval));
            if let Some(probe) = snap.probes.get(&target) {
                tokio::spawn(probe_once(Arc::clone(probe), snap.overlay.clone(), config));
            }
        }
        let wake = match schedule.next_due() {
            Some(due) if due <= now => bucket.next_token(now),
            Some(due) => due,
            None => now + IDLE,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = health.changed.notified() => {}
        }
    }
}

/// One probe: connect within `timeout`, then close.
async fn probe_once(probe: Arc<ProbeCell>, overlay: Overlay, config: HealthConfig) {
    let target = probe.target;
    if !overlay.policy.allows(*target.ip()) {
        return;
    }
    let result =
        match tokio::time::timeout(config.timeout, backend::dial(target, &overlay, false)).await {
            Ok(Ok(_stream)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no connection within {} ms",
                config.timeout.as_millis()
            )),
        };
    probe.record(result, &config);
}

fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(1.0 - JITTER + 2.0 * JITTER * fastrand::f64())
}

/// When each target is due next.
#[derive(Debug, Default)]
struct Schedule {
    queue: BTreeMap<(Instant, u64), SocketAddrV6>,
    due_of: HashMap<SocketAddrV6, (Instant, u64)>,
    seq: u64,
}

impl Schedule {
    /// Drops targets that are gone; a new target starts at a random point
    /// of its first interval.
    fn reconcile(&mut self, snap: &Snapshot, now: Instant, interval: Duration) {
        let gone: Vec<SocketAddrV6> = self
            .due_of
            .keys()
            .filter(|t| !snap.probes.contains_key(t))
            .copied()
            .collect();
        for t in gone {
            if let Some(key) = self.due_of.remove(&t) {
                self.queue.remove(&key);
            }
        }
        for t in snap.probes.keys() {
            if !self.due_of.contains_key(t) {
                self.insert(*t, now + interval.mul_f64(fastrand::f64()));
            }
        }
    }

    fn insert(&mut self, target: SocketAddrV6, due: Instant) {
        self.seq += 1;
        let key = (due, self.seq);
        self.queue.insert(key, target);
        self.due_of.insert(target, key);
    }

    fn due(&self, now: Instant) -> Option<SocketAddrV6> {
        self.queue
            .first_key_value()
            .filter(|((due, _), _)| *due <= now)
            .map(|(_, t)| *t)
    }

    fn pop_and_requeue(&mut self, target: SocketAddrV6, next: Instant) {
        if let Some(key) = self.due_of.remove(&target) {
            self.queue.remove(&key);
        }
        self.insert(target, next);
    }

    fn next_due(&self) -> Option<Instant> {
        self.queue.first_key_value().map(|((due, _), _)| *due)
    }
}

/// A token bucket of probe starts: `rate` per second, bursts up to `rate`.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn new(rate: u32, now: Instant) -> Bucket {
        Bucket {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            refilled: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let earned = now.saturating_duration_since(self.refilled).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.rate);
        self.refilled = now;
    }

    fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token will be there.
    fn next_token(&mut self, now: Instant) -> Instant {
        self.refill(now);
        let missing = (1.0 - self.tokens).max(0.0);
        now + Duration::from_secs_f64(missing / self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_caps_starts_per_second() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, t0);
        let burst = (0..100).filter(|_| b.take(t0)).count();
        assert_eq!(burst, 10);
        let later = t0 + Duration::from_millis(500);
        let more = (0..100).filter(|_| b.take(later)).count();
        assert_eq!(more, 5, "half a second earns half the rate");
        assert!(b.next_token(later) > later);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let interval = Duration::from_millis(1000);
        for _ in 0..1000 {
            let j = jittered(interval);
            assert!(
                j >= Duration::from_millis(900) && j <= Duration::from_millis(1100),
                "{j:?}"
            );
        }
    }

    #[test]
    fn each_target_is_queued_once() {
        let mut s = Schedule::default();
        let t: SocketAddrV6 = "[fdaa::1]:9000".parse().unwrap();
        let now = Instant::now();
        s.insert(t, now);
        assert_eq!(s.due(now), Some(t));
        s.pop_and_requeue(t, now + Duration::from_secs(1));
        assert_eq!(s.due(now), None);
        assert_eq!(s.queue.len(), 1);
        assert_eq!(s.next_due(), Some(now + Duration::from_secs(1)));
    }
}
