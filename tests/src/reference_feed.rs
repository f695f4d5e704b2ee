//! The tests' event feed: edge-feed's protocol (`edge_feed::Feed` and its
//! gRPC and HTTP servers) over an in-memory log the test controls. There is
//! no second implementation of the protocol here: paging, `head`,
//! `feed_id`, filtering, long polls and applied reports are edge-feed's
//! code; this module is the log (an `edge_feed::Store`) and the faults.
//!
//! Beyond what a real log does, what tests need to play a control plane
//! going wrong: a settable `feed_id`, a log truncated as if restored from a
//! backup, a log replaced by another, events appended exactly as given (out
//! of order, beyond the head), a head that lies. Truncating, replacing or
//! lying about the head moves the store's generation, so edge-feed drops its
//! cached tail and ends open streams, as a restarted feed would.
//!
//! Faults of the transport live in [`transport`], around edge-feed's
//! servers: every request recorded, gRPC switched off, streams cut after k
//! messages. [`tls`] gives the servers a certificate from a test CA.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use edge_feed::{AppendError, AppliedReport, Checkpoint, NewEvent, Store, StoreError};
use route_model::{Event, EventBatch};
use tokio::sync::watch;

pub mod tls;
mod transport;

pub use edge_feed::Rejected as RejectedReport;
pub use transport::{serve_grpc, serve_grpc_tls, serve_http, serve_http_tls, Server};

/// Events per gRPC message or polling page when the client sets no limit.
pub const PAGE: usize = 500;

/// The `feed_id` of a new log.
pub const DEFAULT_FEED_ID: &str = "test-log";

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

#[derive(Debug, Default)]
struct Log {
    events: Vec<Event>,
    seqs: HashMap<(String, String), u64>,
    requests: Vec<Request>,
    applied: HashMap<String, (u64, Instant)>,
    rejected: HashMap<String, Vec<RejectedReport>>,
    fail_streams_after: Option<usize>,
    grpc_unavailable: bool,
    /// A head to report instead of the newest event_id (fault injection).
    reported_head: Option<u64>,
    /// The greatest `event_id`, of any type and of the served types.
    newest: u64,
    newest_served: u64,
    /// Whether `events` is in `event_id` order (raw appends may break it):
    /// pages then find their start by bisection, not by a scan.
    ordered: bool,
}

impl Log {
    fn new() -> Log {
        Log {
            ordered: true,
            ..Log::default()
        }
    }

    /// The greatest `event_id` (the last one, unless appended raw).
    fn newest(&self) -> u64 {
        self.newest
    }

    /// Recomputes what `push` keeps up to date, after events were removed.
    fn reindex(&mut self) {
        let mut seqs = HashMap::new();
        for e in &self.events {
            let seq = seqs
                .entry((e.aggregate_type.clone(), e.aggregate_id.clone()))
                .or_insert(0);
            *seq = e.aggregate_seq.max(*seq);
        }
        self.seqs = seqs;
        self.newest = self.events.iter().map(|e| e.event_id).max().unwrap_or(0);
        self.newest_served = self
            .events
            .iter()
            .filter(|e| served(e))
            .map(|e| e.event_id)
            .max()
            .unwrap_or(0);
        self.ordered = self
            .events
            .windows(2)
            .all(|w| w[0].event_id < w[1].event_id);
    }

    fn next_id(&self) -> u64 {
        self.events.last().map_or(1, |e| e.event_id + 1)
    }

    fn push(&mut self, event: Event) -> u64 {
        let seq = self
            .seqs
            .entry((event.aggregate_type.clone(), event.aggregate_id.clone()))
            .or_insert(0);
        *seq = (*seq).max(event.aggregate_seq);
        let id = event.event_id;
        self.ordered &= id > self.newest;
        self.newest = self.newest.max(id);
        if served(&event) {
            self.newest_served = self.newest_served.max(id);
        }
        self.events.push(event);
        id
    }

    fn new_event(&mut self, aggregate_type: &str, aggregate_id: &str, event: NewEvent) -> u64 {
        let seq = self
            .seqs
            .get(&(aggregate_type.to_owned(), aggregate_id.to_owned()))
            .copied()
            .unwrap_or(0);
        let event = Event {
            event_id: self.next_id(),
            occurred_at: edge_feed::memory::rfc3339(SystemTime::now()),
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            aggregate_seq: seq + 1,
            event_type: event.event_type,
            payload: event.payload,
        };
        self.push(event)
    }
}

fn served(event: &Event) -> bool {
    edge_feed::SERVED_TYPES.contains(&event.aggregate_type.as_str())
}

/// The in-memory log. Share it as `Arc<Feed>`; serve it with
/// [`serve_grpc`], [`serve_http`] and their TLS forms.
#[derive(Debug)]
pub struct Feed {
    log: Mutex<Log>,
    /// `Store::feed_id` lends a `&str`, and tests change the id while it
    /// is served: each id set is leaked (a few bytes, a few times a test).
    feed_id: Mutex<&'static str>,
    generation: AtomicU64,
    /// The newest event_id; every change to the log bumps it (edge-feed's
    /// wake-ups).
    head: watch::Sender<u64>,
    applied: watch::Sender<()>,
}

impl Feed {
    pub fn new() -> Arc<Feed> {
        Arc::new(Feed {
            log: Mutex::new(Log::new()),
            feed_id: Mutex::new(DEFAULT_FEED_ID),
            generation: AtomicU64::new(0),
            head: watch::channel(0).0,
            applied: watch::channel(()).0,
        })
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes edge-feed's readers with the log's newest event_id.
    fn changed(&self, log: MutexGuard<'_, Log>) {
        let newest = log.newest();
        drop(log);
        self.head.send_replace(newest);
    }

    /// The log was rewritten: edge-feed forgets what it read of it.
    fn rewritten(&self, log: MutexGuard<'_, Log>) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.changed(log);
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
        let event = NewEvent {
            event_type: event_type.into(),
            payload,
        };
        let id = log.new_event(aggregate_type, aggregate_id, event);
        self.changed(log);
        id
    }

    /// Appends `event` as given (tests use it to make an `aggregate_seq`
    /// gap). Its `event_id` is raised if needed to keep the log ordered.
    pub fn append_event(&self, mut event: Event) -> u64 {
        let mut log = self.log();
        event.event_id = event.event_id.max(log.next_id());
        let id = log.push(event);
        self.changed(log);
        id
    }

    /// Appends `events` exactly as given, at once, in log order, even out
    /// of `event_id` order or beyond the head (fault injection).
    pub fn append_raw(&self, events: Vec<Event>) {
        let mut log = self.log();
        for e in events {
            log.push(e);
        }
        self.changed(log);
    }

    /// The newest `event_id` (0 when empty).
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// Served events after `after` (from the first one in log order with a
    /// greater `event_id`), at most `limit`, with the head and `feed_id`:
    /// what edge-feed reads from this store.
    pub fn page(&self, after: u64, limit: usize) -> EventBatch {
        let log = self.log();
        let start = if log.ordered {
            log.events.partition_point(|e| e.event_id <= after)
        } else {
            log.events
                .iter()
                .position(|e| e.event_id > after)
                .unwrap_or(log.events.len())
        };
        let events = log.events[start..]
            .iter()
            .filter(|e| served(e))
            .take(limit)
            .cloned()
            .collect();
        EventBatch {
            head: log.reported_head.unwrap_or(log.newest_served),
            events,
            feed_id: Some(Store::feed_id(self).to_owned()),
        }
    }

    /// The identity of the log, sent with every batch. `None` is the empty
    /// id (gRPC cannot tell it from no id; HTTP sends `""`).
    pub fn set_feed_id(&self, feed_id: Option<&str>) {
        let id: &'static str = Box::leak(feed_id.unwrap_or_default().to_owned().into_boxed_str());
        *self.feed_id.lock().unwrap_or_else(|p| p.into_inner()) = id;
        self.changed(self.log());
    }

    /// Reports `head` instead of the newest event_id (fault injection).
    pub fn set_reported_head(&self, head: Option<u64>) {
        let mut log = self.log();
        log.reported_head = head;
        self.rewritten(log);
    }

    /// Keeps only the events up to `event_id`, as a log restored from a
    /// backup taken then; open streams end.
    pub fn truncate(&self, event_id: u64) {
        let mut log = self.log();
        log.events.retain(|e| e.event_id <= event_id);
        log.reindex();
        self.rewritten(log);
    }

    /// Replaces the log by an empty one named `feed_id` (another control
    /// plane's log); open streams end.
    pub fn replace(&self, feed_id: Option<&str>) {
        let mut log = self.log();
        let id: &'static str = Box::leak(feed_id.unwrap_or_default().to_owned().into_boxed_str());
        *self.feed_id.lock().unwrap_or_else(|p| p.into_inner()) = id;
        log.events.clear();
        log.reindex();
        self.rewritten(log);
    }

    /// What `node_id` last reported as rejected (with its applied cursor).
    pub fn rejected(&self, node_id: &str) -> Vec<RejectedReport> {
        self.log()
            .rejected
            .get(node_id)
            .cloned()
            .unwrap_or_default()
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

    fn stream_limit(&self) -> Option<usize> {
        self.log().fail_streams_after
    }

    /// Fault injection: `Subscribe` fails at once with UNAVAILABLE.
    pub fn set_grpc_unavailable(&self, down: bool) {
        self.log().grpc_unavailable = down;
    }

    fn grpc_unavailable(&self) -> bool {
        self.log().grpc_unavailable
    }

    /// Records that `node_id` applied `event_id` (as its report would).
    pub fn report_applied(&self, node_id: &str, event_id: u64) {
        self.record_report(node_id, event_id, None);
    }

    fn record_report(&self, node_id: &str, event_id: u64, rejected: Option<Vec<RejectedReport>>) {
        let mut log = self.log();
        // The latest report, not the highest: after a restore from a
        // backup a node's cursor goes down with the log.
        log.applied
            .insert(node_id.into(), (event_id, Instant::now()));
        if let Some(rejected) = rejected {
            log.rejected.insert(node_id.into(), rejected);
        }
        drop(log);
        self.applied.send_replace(());
    }

    pub fn applied(&self, node_id: &str) -> u64 {
        self.log().applied.get(node_id).map_or(0, |(id, _)| *id)
    }

    /// Waits until every node in `nodes` has applied `event_id` (true), or
    /// `timeout` passes (false). Woken by reports, not by polling.
    pub async fn wait_applied(&self, nodes: &[&str], event_id: u64, timeout: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        let reached = |feed: &Feed| nodes.iter().all(|n| feed.applied(n) >= event_id);
        let wait = async {
            loop {
                rx.borrow_and_update();
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

#[tonic::async_trait]
impl Store for Feed {
    fn feed_id(&self) -> &str {
        *self.feed_id.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    async fn page(&self, after: u64, limit: usize) -> Result<EventBatch, StoreError> {
        Ok(Feed::page(self, after, limit))
    }

    async fn append(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        events: &[NewEvent],
    ) -> Result<Vec<u64>, AppendError> {
        AppendError::require_events(aggregate_type, aggregate_id, events)?;
        let mut log = self.log();
        let ids = events
            .iter()
            .map(|e| log.new_event(aggregate_type, aggregate_id, e.clone()))
            .collect();
        self.changed(log);
        Ok(ids)
    }

    async fn report_applied(&self, report: &AppliedReport) -> Result<(), StoreError> {
        self.record_report(
            &report.node_id,
            report.event_id,
            Some(report.rejected.clone()),
        );
        Ok(())
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        Ok(Checkpoint::from_reports(&self.log().applied))
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(id: u64, aggregate_id: &str) -> Event {
        Event {
            event_id: id,
            occurred_at: String::new(),
            aggregate_type: "route".into(),
            aggregate_id: aggregate_id.into(),
            aggregate_seq: 1,
            event_type: "route.created".into(),
            payload: serde_json::json!({}),
        }
    }

    #[test]
    fn raw_events_are_paged_in_log_order_and_truncation_rewrites() {
        let feed = Feed::new();
        feed.append("route", "r-1", "route.created", serde_json::json!({}));
        feed.append("billing", "b-1", "invoice.sent", serde_json::json!({}));
        feed.append_raw(vec![route(5, "r-5"), route(4, "r-4")]);
        let page = feed.page(1, 10);
        let ids: Vec<u64> = page.events.iter().map(|e| e.event_id).collect();
        assert_eq!(ids, [5, 4], "unserved types filtered, raw order kept");
        assert_eq!(page.head, 5);
        assert_eq!(page.feed_id.as_deref(), Some(DEFAULT_FEED_ID));
        let before = Store::generation(&*feed);
        feed.truncate(1);
        assert_eq!(feed.page(0, 10).head, 1);
        assert_ne!(Store::generation(&*feed), before);
        assert_eq!(
            feed.append("route", "r-1", "route.updated", serde_json::json!({})),
            2
        );
        assert_eq!(feed.page(1, 10).events[0].aggregate_seq, 2);
    }
}
