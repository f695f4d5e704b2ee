//! The systemd watchdog (`WatchdogSec=`), petted by the sync loop itself
//! whenever it makes progress or waits healthily (on an open feed, or in
//! a bounded backoff), never by an independent task: a loop stuck in a
//! call gets the agent restarted.

use std::time::Duration;

/// How often the loop pets when the unit sets no watchdog (its timers
/// still need a period).
const IDLE_PERIOD: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy)]
pub struct Watchdog {
    /// Half of `WatchdogSec`, when the unit sets one.
    period: Option<Duration>,
}

impl Watchdog {
    /// From the environment systemd sets (`WATCHDOG_USEC`, `WATCHDOG_PID`).
    pub fn from_env() -> Watchdog {
        Watchdog {
            period: daemon::notify::watchdog_period(),
        }
    }

    /// A watchdog that never notifies (tests, or no systemd).
    pub fn disabled() -> Watchdog {
        Watchdog { period: None }
    }

    /// How often the loop must pet at the least.
    pub fn period(&self) -> Duration {
        self.period.unwrap_or(IDLE_PERIOD)
    }

    pub fn pet(&self) {
        if self.period.is_some() {
            daemon::notify::watchdog();
        }
    }

    /// Sleeps for `d`, petting at least every [`Watchdog::period`].
    pub async fn sleep(&self, d: Duration) {
        let mut left = d;
        while !left.is_zero() {
            let slice = left.min(self.period());
            tokio::time::sleep(slice).await;
            self.pet();
            left -= slice;
        }
    }
}
