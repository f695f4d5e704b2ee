//! The two ways to follow the control plane's event stream (ADR 0005):
//! gRPC server streaming first, HTTP polling as the fallback. Both yield
//! the same [`EventBatch`]es; the sync loop does not know which it reads.

pub mod grpc;
pub mod poll;
pub mod tls;

use std::time::Duration;

use route_model::EventBatch;

use crate::reconcile::Rejected;

/// How long opening a subscription (connect, TLS, first answer) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long reporting the applied cursor may take.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why following the feed stopped; the sync loop reconnects with backoff.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("gRPC connect {endpoint}: {}", chain(source))]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("gRPC: {}", status(.0))]
    Grpc(#[from] tonic::Status),
    #[error("{what} timed out after {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("gRPC stream ended")]
    Ended,
    #[error("poll {url}: {message}")]
    Http { url: String, message: String },
    #[error("poll {url}: answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

/// Which transport is in use, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Poll,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Poll => "poll",
        }
    }
}

/// An open subscription.
#[derive(Debug)]
pub enum Feed {
    Grpc(Box<grpc::GrpcFeed>),
    Poll(poll::PollFeed),
}

impl Feed {
    pub fn transport(&self) -> Transport {
        match self {
            Feed::Grpc(_) => Transport::Grpc,
            Feed::Poll(_) => Transport::Poll,
        }
    }

    /// The next batch: waits for one on gRPC; on polling, fetches a page
    /// (pausing `interval` first when the previous page was empty).
    pub async fn next(&mut self) -> Result<EventBatch, FeedError> {
        match self {
            Feed::Grpc(f) => f.next().await,
            Feed::Poll(f) => f.next().await,
        }
    }

    /// Further batches available without waiting (coalesced before a
    /// push so a backlog of many events costs few table pushes).
    pub async fn ready_more(&mut self) -> Result<Option<EventBatch>, FeedError> {
        match self {
            Feed::Grpc(f) => f.ready_more().await,
            Feed::Poll(f) => f.ready_more().await,
        }
    }

    /// Tells the control plane the newest event_id this node serves, and
    /// the objects its edge rejected (never reported as served).
    pub async fn report_applied(
        &mut self,
        node_id: &str,
        event_id: u64,
        rejected: &[Rejected],
    ) -> Result<(), FeedError> {
        let report = async {
            match self {
                Feed::Grpc(f) => f.report_applied(node_id, event_id, rejected).await,
                Feed::Poll(f) => f.report_applied(node_id, event_id, rejected).await,
            }
        };
        tokio::time::timeout(REPORT_TIMEOUT, report)
            .await
            .map_err(|_| FeedError::Timeout {
                what: "report applied",
                after: REPORT_TIMEOUT,
            })?
    }
}

/// An error and its sources, `: `-joined: a TLS failure shows its cause
/// (unknown issuer, certificate required), not just "transport error".
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

fn status(s: &tonic::Status) -> String {
    use std::error::Error;
    let mut out = format!("{:?}: {}", s.code(), s.message());
    if let Some(source) = s.source() {
        out.push_str(": ");
        out.push_str(&chain(source));
    }
    out
}

/// Capped exponential backoff with full jitter.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next delay: uniform in `[0, min(cap, base * 2^attempt)]`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(fastrand::f64())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..40 {
            assert!(b.next_delay() <= Duration::from_secs(2));
        }
        assert_eq!(b.attempt, 40);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
