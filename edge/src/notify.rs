//! systemd integration (`Type=notify`): `READY=1` once every listener of
//! the first table is bound (with `MAINPID`, so a process started by an
//! upgrade becomes the service's main process), and `WATCHDOG=1` at half
//! of `WatchdogSec` when the unit sets one. Outside systemd these do
//! nothing.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tells systemd the edge is ready, and starts the watchdog if asked.
pub fn ready() {
    let pid = std::process::id();
    if let Err(e) = sd_notify::notify(false, &[NotifyState::MainPid(pid), NotifyState::Ready]) {
        tracing::warn!(error = %e, "sd_notify READY failed");
    }
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        let period = Duration::from_micros(usec / 2);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
            }
        });
    }
}
