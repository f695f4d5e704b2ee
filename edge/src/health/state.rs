//! The pure cores of the edge's health signals: the rise/fall counter of
//! active probes and the growing backoff of passive ejection. No I/O, no
//! clock: callers pass results and attempt counts in.

use std::time::Duration;

/// An active check's verdict on one `(instance, port)`: up until `fall`
/// consecutive failures, then down until `rise` consecutive successes.
/// Starts up: the platform already says the instance is healthy, and a
/// new table must not take every backend out until probes have run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checker {
    up: bool,
    /// Consecutive results against the current verdict.
    streak: u32,
}

impl Default for Checker {
    fn default() -> Self {
        Checker {
            up: true,
            streak: 0,
        }
    }
}

impl Checker {
    #[cfg(test)]
    pub(crate) fn up(&self) -> bool {
        self.up
    }

    /// Records one probe result; `Some(new verdict)` when it flips.
    pub(crate) fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { fall } else { rise };
        if self.streak < needed {
            return None;
        }
        self.up = ok;
        self.streak = 0;
        Some(ok)
    }
}

/// How long the `nth` consecutive ejection (1-based) of an instance lasts:
/// `base`, doubling with each ejection that follows a failed trial, capped
/// at `max`.
pub(crate) fn ejection(nth: u32, base: Duration, max: Duration) -> Duration {
    let doublings = nth.saturating_sub(1).min(31);
    base.checked_mul(1u32 << doublings).unwrap_or(max).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fall_failures_take_it_out_rise_successes_bring_it_back() {
        let mut c = Checker::default();
        assert!(c.up());
        assert_eq!(c.record(false, 2, 3), None);
        assert_eq!(c.record(false, 2, 3), None);
        assert_eq!(c.record(true, 2, 3), None, "a success resets the streak");
        assert_eq!(c.record(false, 2, 3), None);
        assert_eq!(c.record(false, 2, 3), None);
        assert_eq!(c.record(false, 2, 3), Some(false));
        assert!(!c.up());
        assert_eq!(c.record(false, 2, 3), None);
        assert_eq!(c.record(true, 2, 3), None);
        assert_eq!(c.record(false, 2, 3), None, "a failure resets the rise");
        assert_eq!(c.record(true, 2, 3), None);
        assert_eq!(c.record(true, 2, 3), Some(true));
        assert!(c.up());
    }

    #[test]
    fn rise_and_fall_of_one_flip_at_once() {
        let mut c = Checker::default();
        assert_eq!(c.record(false, 1, 1), Some(false));
        assert_eq!(c.record(true, 1, 1), Some(true));
    }

    #[test]
    fn ejections_double_up_to_the_cap() {
        let base = Duration::from_secs(5);
        let max = Duration::from_secs(60);
        let lengths: Vec<u64> = (1..=6).map(|n| ejection(n, base, max).as_secs()).collect();
        assert_eq!(lengths, [5, 10, 20, 40, 60, 60]);
        assert_eq!(ejection(u32::MAX, base, max), max);
        assert_eq!(ejection(0, base, max), base);
    }
}
