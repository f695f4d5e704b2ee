//! systemd integration (`Type=notify`): `READY=1` (with `MAINPID`, so a
//! process started by an edge upgrade becomes the service's main
//! process), and `WATCHDOG=1` at half of `WatchdogSec` when the unit sets
//! one. Outside systemd these do nothing.
//!
//! Each service pets the watchdog from its own main loop (the edge's
//! signal loop, the agent's sync loop), never from an independent timer
//! task, which would keep petting a process whose work is wedged.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tells systemd the service is ready.
pub fn ready() {
    let pid = std::process::id();
    if let Err(e) = sd_notify::notify(false, &[NotifyState::MainPid(pid), NotifyState::Ready]) {
        tracing::warn!(error = %e, "sd_notify READY failed");
    }
}

/// How often the main loop must call [`watchdog`]: half of `WatchdogSec`,
/// or `None` when the unit sets no watchdog for this process.
pub fn watchdog_period() -> Option<Duration> {
    watchdog_usec().map(|usec| Duration::from_micros(usec / 2))
}

/// `WATCHDOG=1`: the process is alive and its loop runs.
pub fn watchdog() {
    let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
}

/// `WATCHDOG_USEC` when the watchdog is meant for this process: systemd's
/// `WATCHDOG_PID` is unset, ours, or our parent's (a successor started by
/// an upgrade inherits the environment of the process it replaces, and
/// becomes the main PID when it reports ready).
fn watchdog_usec() -> Option<u64> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let for_us = match std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        None => true,
        Some(pid) => pid == std::process::id() || pid == std::os::unix::process::parent_id(),
    };
    (for_us && usec > 0).then_some(usec)
}
