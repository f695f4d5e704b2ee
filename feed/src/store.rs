//! What a feed needs from an event log, as one trait, so the protocol is
//! implemented once over PostgreSQL, a file or memory.
//!
//! A store answers pages of the *served* stream (aggregate types in
//! [`crate::SERVED_TYPES`]) with a `head` computed over the same types, so
//! a consumer of the filtered stream can always reach the head it saw.

use std::time::{Duration, Instant};

use route_model::EventBatch;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// A store failed (connection lost, query refused, file unreadable).
#[derive(Debug, thiserror::Error)]
#[error("event store: {0}")]
pub struct StoreError(pub String);

/// Appending failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended to the aggregate since its version was read
    /// (the unique `(aggregate_type, aggregate_id, aggregate_seq)` refused
    /// ours). Nothing was written; re-read and retry the command.
    #[error("conflict: {aggregate_type}/{aggregate_id} already has aggregate_seq {aggregate_seq} (a concurrent writer appended first)")]
    Conflict {
        aggregate_type: String,
        aggregate_id: String,
        aggregate_seq: u64,
    },
    /// An append must carry at least one event.
    #[error("nothing to append to {aggregate_type}/{aggregate_id}")]
    Empty {
        aggregate_type: String,
        aggregate_id: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One event to append: its type and payload. The store gives it the next
/// `event_id` and `aggregate_seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_type: String,
    pub payload: serde_json::Value,
}

/// An object the edge rejected, as a node reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub reason: String,
}

/// `POST /applied` / `ReportApplied`: the newest event_id a node serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedReport {
    pub node_id: String,
    pub event_id: u64,
    #[serde(default)]
    pub rejected: Vec<Rejected>,
}

/// A node's last report, and how long ago it came.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub node_id: String,
    pub event_id: u64,
    pub age: Duration,
}

impl Checkpoint {
    /// The checkpoints of an in-memory `node -> (event_id, reported at)`
    /// map, sorted by node (what the memory stores answer).
    pub fn from_reports<'a>(
        reports: impl IntoIterator<Item = (&'a String, &'a (u64, Instant))>,
    ) -> Vec<Checkpoint> {
        let mut out: Vec<Checkpoint> = reports
            .into_iter()
            .map(|(node, (event_id, at))| Checkpoint {
                node_id: node.clone(),
                event_id: *event_id,
                age: at.elapsed(),
            })
            .collect();
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        out
    }
}

impl AppendError {
    /// Every store refuses an append without events the same way.
    pub fn require_events(
        aggregate_type: &str,
        aggregate_id: &str,
        events: &[NewEvent],
    ) -> Result<(), AppendError> {
        if events.is_empty() {
            return Err(AppendError::Empty {
                aggregate_type: aggregate_type.into(),
                aggregate_id: aggregate_id.into(),
            });
        }
        Ok(())
    }
}

/// An event log the feed can serve.
#[tonic::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The identity of the log (`feed_id` in docs/event-contract.md).
    fn feed_id(&self) -> &str;

    /// Bumped whenever the log may have grown: stream loops wait on it,
    /// then re-read by id range. A lost bump costs at most the feed's
    /// fallback interval.
    fn wakeups(&self) -> watch::Receiver<u64>;

    /// Served events with `event_id > after`, in order, at most `limit`,
    /// and the head of the served stream, read in one snapshot.
    async fn page(&self, after: u64, limit: usize) -> Result<EventBatch, StoreError>;

    /// ADR 0005: reads the aggregate's current `aggregate_seq` and appends
    /// `events` as prev+1..n in one transaction; returns their event_ids.
    async fn append(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        events: &[NewEvent],
    ) -> Result<Vec<u64>, AppendError>;

    /// Records a node's applied cursor (the latest report wins: a node
    /// that resynchronised from a restored log may go down).
    async fn report_applied(&self, report: &AppliedReport) -> Result<(), StoreError>;

    /// Every node's last report.
    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError>;

    /// Moves when the log was rewritten rather than appended to (restored
    /// from a backup, replaced by another log) while the feed runs. The
    /// feed then drops its cached tail and ends open streams with
    /// UNAVAILABLE, as a restart would, so every reader re-reads the store
    /// and sees the new head and feed_id. A store that only grows keeps
    /// the default, which never moves: PostgreSQL and file logs are
    /// restored with the server stopped (docs/edge-feed.md); the tests'
    /// in-memory log rewrites itself while served.
    fn generation(&self) -> u64 {
        0
    }
}
