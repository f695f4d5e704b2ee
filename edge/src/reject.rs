//! Why a client connection was closed without being forwarded, and the one
//! rate-limited log line it earns.
//!
//! Every rejection is counted in `edge_connections_rejected_total{reason}`;
//! the log line is rate-limited (a token bucket) so a flood of bad
//! connections cannot turn the log into the bottleneck or fill the disk.
//! Suppressed lines are counted and reported by the next line that passes.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use route_model::RejectReason;

use crate::metrics::Metrics;

/// Log lines per second allowed through before suppression.
const LOG_LINES_PER_SECOND: u32 = 20;
/// Lines a quiet period can save up for a burst.
const LOG_BURST: u32 = 100;

/// Why a connection was closed without forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    /// Bytes that are not an acceptable ClientHello.
    Hello(tls_peek::Reason),
    /// No complete ClientHello within `client_hello_timeout_ms`.
    HelloTimeout,
    /// The client closed or reset before its ClientHello was complete.
    ClientClosed,
    /// No route for the SNI (or no SNI on a shared pair).
    Route(RejectReason),
    /// Over `max_connections_per_source`.
    SourceLimit,
    /// Over `max_connections`.
    MaxConnections,
    /// The route's env and process type have no healthy instance.
    NoHealthyBackend,
    /// Every backend tried failed to connect in time.
    BackendConnectFailed,
}

impl Reject {
    /// The stable metric label.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Reject::Hello(r) => r.as_str(),
            Reject::HelloTimeout => "hello_timeout",
            Reject::ClientClosed => "client_closed",
            Reject::Route(r) => r.as_str(),
            Reject::SourceLimit => "source_limit",
            Reject::MaxConnections => "max_connections",
            Reject::NoHealthyBackend => "no_healthy_backend",
            Reject::BackendConnectFailed => "backend_connect_failed",
        }
    }
}

/// Counts rejections and logs them under a rate limit.
#[derive(Debug)]
pub(crate) struct RejectLog {
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: u32,
    refilled: Instant,
    suppressed: u64,
}

impl RejectLog {
    pub(crate) fn new() -> RejectLog {
        RejectLog {
            bucket: Mutex::new(Bucket {
                tokens: LOG_BURST,
                refilled: Instant::now(),
                suppressed: 0,
            }),
        }
    }

    /// Counts `reject` and logs one line for it unless rate-limited.
    pub(crate) fn record(
        &self,
        metrics: &Metrics,
        reject: Reject,
        peer: SocketAddr,
        local: SocketAddr,
        sni: Option<&str>,
    ) {
        metrics.rejected(reject.as_str());
        match self.take(Instant::now()) {
            Some(suppressed) => tracing::warn!(
                reason = reject.as_str(),
                %peer,
                %local,
                sni = sni.unwrap_or(""),
                suppressed_since_last = suppressed,
                "connection rejected"
            ),
            None => metrics.log_lines_suppressed.inc(),
        }
    }

    /// A token if one is left: `Some(lines suppressed since the last one)`.
    fn take(&self, now: Instant) -> Option<u64> {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(b.refilled);
        let earned = (elapsed.as_millis() as u64 * u64::from(LOG_LINES_PER_SECOND) / 1000) as u32;
        if earned > 0 {
            b.tokens = (b.tokens + earned).min(LOG_BURST);
            b.refilled +=
                Duration::from_millis(u64::from(earned) * 1000 / u64::from(LOG_LINES_PER_SECOND));
        }
        if b.tokens == 0 {
            b.suppressed += 1;
            return None;
        }
        b.tokens -= 1;
        Some(std::mem::take(&mut b.suppressed))
    }
}

impl Default for RejectLog {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_burst_then_the_rate() {
        let log = RejectLog::new();
        let t0 = Instant::now();
        let passed = (0..10_000).filter(|_| log.take(t0).is_some()).count();
        assert_eq!(passed, LOG_BURST as usize);
        let one_second_later = t0 + Duration::from_secs(1);
        let first = log.take(one_second_later);
        assert_eq!(
            first,
            Some(10_000 - u64::from(LOG_BURST)),
            "the next line reports what was dropped"
        );
        let more = (0..1000)
            .filter(|_| log.take(one_second_later).is_some())
            .count();
        assert_eq!(more + 1, LOG_LINES_PER_SECOND as usize);
    }

    #[test]
    fn labels_are_stable() {
        assert_eq!(Reject::HelloTimeout.as_str(), "hello_timeout");
        assert_eq!(
            Reject::Route(RejectReason::UnknownSni).as_str(),
            "unknown_sni"
        );
        assert_eq!(
            Reject::Route(RejectReason::NoSniAmbiguous).as_str(),
            "no_sni_ambiguous"
        );
    }
}
