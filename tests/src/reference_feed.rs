//! The reference event feed: an in-memory control-plane log serving both
//! transports of the event contract (docs/event-contract.md): gRPC
//! `edge.v1.EventFeed` and HTTP polling, plus per-node applied cursors and
//! a wait on them (read-your-writes). Tests drive it directly; platform
//! teams can copy it; `event-feed` serves it from a JSON-lines file.
//!
//! Open streams are woken by a `watch` channel on every append, so a new
//! event reaches them at once, with no polling loop.
//!
//! Beyond the contract, what tests need to play a control plane going
//! wrong: a settable `feed_id`, a log truncated as if restored from a
//! backup, a log replaced by another, events appended exactly as given
//! (out of order, beyond the head), a head that lies, and mTLS serving
//! that requires a client certificate ([`tls`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use route_model::{Event, EventBatch};
use tokio::sync::watch;

mod grpc;
mod http;
pub mod tls;

pub use grpc::{serve_grpc, serve_grpc_tls};
pub use http::{serve_http, serve_http_tls};

/// Events per gRPC message or polling page when the client sets no limit.
pub const PAGE: usize = 500;

/// Which transport a request came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Poll,
}

/// One `Subscribe` or `GET /events`, as the feed saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub transport: Transport,
    pub node_id: String,
    pub after: u64,
}

/// An object a node reported as rejected by its edge.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct RejectedReport {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub reason: String,
}

#[derive(Debug, Default)]
struct Log {
    events: Vec<Event>,
    seqs: HashMap<(String, String), u64>,
    requests: Vec<Request>,
    applied: HashMap<String, u64>,
    rejected: HashMap<String, Vec<RejectedReport>>,
    fail_streams_after: Option<usize>,
    grpc_unavailable: bool,
    feed_id: Option<String>,
    /// A head to report instead of the newest event_id (fault injection).
    reported_head: Option<u64>,
    /// Bumped when the log is truncated or replaced: open streams end, as
    /// they would when a control plane is restored.
    epoch: u64,
}

impl Log {
    /// The greatest `event_id` (the last one, unless appended raw).
    fn newest(&self) -> u64 {
        self.events.iter().map(|e| e.event_id).max().unwrap_or(0)
    }
}

/// The in-memory log. Share it as `Arc<Feed>`.
#[derive(Debug)]
pub struct Feed {
    log: Mutex<Log>,
    head: watch::Sender<u64>,
    applied: watch::Sender<()>,
}

impl Feed {
    pub fn new() -> Arc<Feed> {
        Arc::new(Feed {
            log: Mutex::new(Log::default()),
            head: watch::channel(0).0,
            applied: watch::channel(()).0,
        })
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends an event with the next `event_id` and the next
    /// `aggregate_seq` of its aggregate; returns its `event_id`.
    pub fn append(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        event_type: &str,
        payload: serde_json::Value,
    ) -> u64 {
        let mut log = self.log();
        let event_id = log.events.last().map_or(1, |e| e.event_id + 1);
        let seq = log
            .seqs
            .entry((aggregate_type.into(), aggregate_id.into()))
            .or_insert(0);
        *seq += 1;
        let event = Event {
            event_id,
            occurred_at: rfc3339(SystemTime::now()),
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            aggregate_seq: *seq,
            event_type: event_type.into(),
            payload,
        };
        self.push(log, event)
    }

    /// Appends `event` as given (tests use it to make an `aggregate_seq`
    /// gap). Its `event_id` is raised if needed to keep the log ordered.
    pub fn append_event(&self, mut event: Event) -> u64 {
        let log = self.log();
        let next = log.events.last().map_or(1, |e| e.event_id + 1);
        event.event_id = event.event_id.max(next);
        self.push(log, event)
    }

    fn push(&self, mut log: MutexGuard<'_, Log>, event: Event) -> u64 {
        let id = event.event_id;
        let seq = log
            .seqs
            .entry((event.aggregate_type.clone(), event.aggregate_id.clone()))
            .or_insert(0);
        *seq = (*seq).max(event.aggregate_seq);
        log.events.push(event);
        drop(log);
        self.head.send_replace(id);
        id
    }

    /// Appends `events` exactly as given, at once, in log order, even out
    /// of `event_id` order or beyond the head (fault injection).
    pub fn append_raw(&self, events: Vec<Event>) {
        let mut log = self.log();
        let Some(last) = events.iter().map(|e| e.event_id).max() else {
            return;
        };
        for e in events {
            let seq = log
                .seqs
                .entry((e.aggregate_type.clone(), e.aggregate_id.clone()))
                .or_insert(0);
            *seq = (*seq).max(e.aggregate_seq);
            log.events.push(e);
        }
        let head = log.newest().max(last);
        drop(log);
        self.head.send_replace(head);
    }

    /// The newest `event_id` (0 when empty).
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// Events after `after` (from the first one in log order with a
    /// greater `event_id`), at most `limit`, with the head and `feed_id`.
    pub fn page(&self, after: u64, limit: usize) -> EventBatch {
        let log = self.log();
        let start = log
            .events
            .iter()
            .position(|e| e.event_id > after)
            .unwrap_or(log.events.len());
        let events = log.events[start..].iter().take(limit).cloned().collect();
        EventBatch {
            head: log.reported_head.unwrap_or_else(|| log.newest()),
            events,
            feed_id: log.feed_id.clone(),
        }
    }

    /// The identity of the log, sent with every batch (`None`: none).
    pub fn set_feed_id(&self, feed_id: Option<&str>) {
        self.log().feed_id = feed_id.map(str::to_owned);
    }

    /// Reports `head` instead of the newest event_id (fault injection).
    pub fn set_reported_head(&self, head: Option<u64>) {
        self.log().reported_head = head;
    }

    /// Keeps only the events up to `event_id`, as a log restored from a
    /// backup taken then; open streams end.
    pub fn truncate(&self, event_id: u64) {
        let mut log = self.log();
        log.events.retain(|e| e.event_id <= event_id);
        let mut seqs = HashMap::new();
        for e in &log.events {
            seqs.insert(
                (e.aggregate_type.clone(), e.aggregate_id.clone()),
                e.aggregate_seq,
            );
        }
        log.seqs = seqs;
        log.epoch += 1;
        let head = log.events.last().map_or(0, |e| e.event_id);
        drop(log);
        self.head.send_replace(head);
    }

    /// Replaces the log by an empty one named `feed_id` (another control
    /// plane's log); open streams end.
    pub fn replace(&self, feed_id: Option<&str>) {
        self.truncate(0);
        self.set_feed_id(feed_id);
    }

    fn epoch(&self) -> u64 {
        self.log().epoch
    }

    /// What `node_id` last reported as rejected (with its applied cursor).
    pub fn rejected(&self, node_id: &str) -> Vec<RejectedReport> {
        self.log()
            .rejected
            .get(node_id)
            .cloned()
            .unwrap_or_default()
    }

    fn record_rejected(&self, node_id: &str, rejected: Vec<RejectedReport>) {
        self.log().rejected.insert(node_id.into(), rejected);
    }

    /// Every subscription and poll so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.log().requests.clone()
    }

    fn record(&self, transport: Transport, node_id: &str, after: u64) {
        self.log().requests.push(Request {
            transport,
            node_id: node_id.into(),
            after,
        });
    }

    /// Fault injection: each gRPC stream sends at most `k` messages (one
    /// event each) and then fails with UNAVAILABLE.
    pub fn fail_streams_after(&self, k: Option<usize>) {
        self.log().fail_streams_after = k;
    }

    /// Fault injection: `Subscribe` fails at once with UNAVAILABLE.
    pub fn set_grpc_unavailable(&self, down: bool) {
        self.log().grpc_unavailable = down;
    }

    /// A node reports the newest `event_id` its edge serves.
    pub fn report_applied(&self, node_id: &str, event_id: u64) {
        let mut log = self.log();
        // The latest report, not the highest: after a restore from a
        // backup a node's cursor goes down with the log.
        log.applied.insert(node_id.into(), event_id);
        drop(log);
        self.applied.send_replace(());
    }

    pub fn applied(&self, node_id: &str) -> u64 {
        self.log().applied.get(node_id).copied().unwrap_or(0)
    }

    /// Waits until every node in `nodes` has applied `event_id` (true), or
    /// `timeout` passes (false). Woken by reports, not by polling.
    pub async fn wait_applied(&self, nodes: &[&str], event_id: u64, timeout: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        let reached = |feed: &Feed| nodes.iter().all(|n| feed.applied(n) >= event_id);
        let wait = async {
            loop {
                if reached(self) {
                    return;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

/// A running server, stopped when dropped.
#[derive(Debug)]
pub struct Server {
    pub addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC) without a date library.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_341_600); // 2026-11-22T10:00:00Z
        assert_eq!(rfc3339(t), "2026-11-22T10:00:00Z");
    }
}
