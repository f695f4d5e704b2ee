//! Resident memory of a process as `/proc/PID/status` reports it, read
//! once or sampled in a thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/pid/status");
    parse_field(&status, field).unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn parse_field(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resident set size (`VmRSS`) in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// The highest resident set size so far (`VmHWM`) in KiB.
pub fn hwm_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM")
}

/// Reads `VmRSS` every `every` in a thread of its own and keeps the
/// highest reading, until stopped.
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u64, usize)>,
}

/// What a [`Sampler`] saw.
#[derive(Debug, Clone, Copy)]
pub struct Sampled {
    pub peak_kib: u64,
    pub samples: usize,
}

impl Sampler {
    pub fn start(pid: u32, every: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut peak, mut samples) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                        break;
                    };
                    if let Some(rss) = parse_field(&status, "VmRSS") {
                        peak = peak.max(rss);
                        samples += 1;
                    }
                    std::thread::sleep(every);
                }
                (peak, samples)
            })
        };
        Sampler { stop, thread }
    }

    pub fn stop(self) -> Sampled {
        self.stop.store(true, Ordering::Relaxed);
        let (peak_kib, samples) = self.thread.join().expect("the RSS sampler");
        Sampled { peak_kib, samples }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_by_exact_name() {
        let status = "VmHWM:\t   2048 kB\nVmRSS:\t   1024 kB\nRssAnon:\t 512 kB\n";
        assert_eq!(parse_field(status, "VmRSS"), Some(1024));
        assert_eq!(parse_field(status, "VmHWM"), Some(2048));
        assert_eq!(parse_field(status, "Vm"), None);
    }
}
