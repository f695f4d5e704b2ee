//! An in-memory event log with the store's semantics: dense ids, the next
//! `aggregate_seq` per aggregate, a conflict error for a stale writer, and
//! applied cursors. The file store fills it from a JSON-lines file; tests
//! serve it in-process.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use route_model::{Event, EventBatch};
use tokio::sync::watch;

use crate::store::{AppendError, AppliedReport, Checkpoint, NewEvent, Store, StoreError};
use crate::SERVED_TYPES;

#[derive(Debug, Default)]
struct Log {
    events: Vec<Event>,
    seqs: HashMap<(String, String), u64>,
    applied: HashMap<String, (u64, Instant)>,
}

/// The in-memory log. Share it as `Arc<MemoryStore>`.
#[derive(Debug)]
pub struct MemoryStore {
    feed_id: String,
    log: Mutex<Log>,
    wake: watch::Sender<u64>,
}

/// An event whose `event_id` is not above the log's last one.
#[derive(Debug, thiserror::Error)]
#[error("event_id {event_id} is not after the log's last ({last})")]
pub struct OutOfOrder {
    pub event_id: u64,
    pub last: u64,
}

impl MemoryStore {
    pub fn new(feed_id: impl Into<String>) -> MemoryStore {
        MemoryStore {
            feed_id: feed_id.into(),
            log: Mutex::new(Log::default()),
            wake: watch::channel(0).0,
        }
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest event_id of any type (0 when empty).
    pub fn last_event_id(&self) -> u64 {
        self.log().events.last().map_or(0, |e| e.event_id)
    }

    /// Appends one event with the next ids; returns it.
    pub fn append_one(&self, aggregate_type: &str, aggregate_id: &str, event: NewEvent) -> Event {
        let mut log = self.log();
        let seq = log
            .seqs
            .get(&(aggregate_type.to_owned(), aggregate_id.to_owned()))
            .copied()
            .unwrap_or(0);
        let event = Event {
            event_id: log.events.last().map_or(1, |e| e.event_id + 1),
            occurred_at: rfc3339(SystemTime::now()),
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            aggregate_seq: seq + 1,
            event_type: event.event_type,
            payload: event.payload,
        };
        push(&mut log, event.clone());
        drop(log);
        self.wake.send_modify(|n| *n += 1);
        event
    }

    /// Appends a whole event as given (the file store's full lines). Its
    /// `event_id` must be above the last one; its `aggregate_seq` is kept
    /// as written (a log with a gap is served as it is).
    pub fn insert(&self, event: Event) -> Result<(), OutOfOrder> {
        let mut log = self.log();
        let last = log.events.last().map_or(0, |e| e.event_id);
        if event.event_id <= last {
            return Err(OutOfOrder {
                event_id: event.event_id,
                last,
            });
        }
        push(&mut log, event);
        drop(log);
        self.wake.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The next `aggregate_seq` the aggregate would take.
    pub fn next_seq(&self, aggregate_type: &str, aggregate_id: &str) -> u64 {
        self.log()
            .seqs
            .get(&(aggregate_type.to_owned(), aggregate_id.to_owned()))
            .copied()
            .unwrap_or(0)
            + 1
    }
}

fn push(log: &mut Log, event: Event) {
    let seq = log
        .seqs
        .entry((event.aggregate_type.clone(), event.aggregate_id.clone()))
        .or_insert(0);
    *seq = (*seq).max(event.aggregate_seq);
    log.events.push(event);
}

fn served(event: &Event) -> bool {
    SERVED_TYPES.contains(&event.aggregate_type.as_str())
}

#[tonic::async_trait]
impl Store for MemoryStore {
    fn feed_id(&self) -> &str {
        &self.feed_id
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    async fn page(&self, after: u64, limit: usize) -> Result<EventBatch, StoreError> {
        let log = self.log();
        let start = log.events.partition_point(|e| e.event_id <= after);
        let events = log.events[start..]
            .iter()
            .filter(|e| served(e))
            .take(limit)
            .cloned()
            .collect();
        let head = log
            .events
            .iter()
            .rev()
            .find(|e| served(e))
            .map_or(0, |e| e.event_id);
        Ok(EventBatch {
            head,
            events,
            feed_id: Some(self.feed_id.clone()),
        })
    }

    async fn append(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        events: &[NewEvent],
    ) -> Result<Vec<u64>, AppendError> {
        AppendError::require_events(aggregate_type, aggregate_id, events)?;
        let mut log = self.log();
        let key = (aggregate_type.to_owned(), aggregate_id.to_owned());
        let prev = log.seqs.get(&key).copied().unwrap_or(0);
        let mut ids = Vec::with_capacity(events.len());
        for (seq, e) in (prev + 1..).zip(events) {
            let event_id = log.events.last().map_or(1, |e| e.event_id + 1);
            push(
                &mut log,
                Event {
                    event_id,
                    occurred_at: rfc3339(SystemTime::now()),
                    aggregate_type: aggregate_type.into(),
                    aggregate_id: aggregate_id.into(),
                    aggregate_seq: seq,
                    event_type: e.event_type.clone(),
                    payload: e.payload.clone(),
                },
            );
            ids.push(event_id);
        }
        drop(log);
        self.wake.send_modify(|n| *n += 1);
        Ok(ids)
    }

    async fn report_applied(&self, report: &AppliedReport) -> Result<(), StoreError> {
        self.log()
            .applied
            .insert(report.node_id.clone(), (report.event_id, Instant::now()));
        Ok(())
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        Ok(Checkpoint::from_reports(&self.log().applied))
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
    use serde_json::json;

    fn ev(t: &str) -> NewEvent {
        NewEvent {
            event_type: t.into(),
            payload: json!({}),
        }
    }

    #[tokio::test]
    async fn pages_serve_whole_aggregates_of_served_types_and_head_over_them() {
        let store = MemoryStore::new("f");
        store
            .append("route", "r-1", &[ev("route.created")])
            .await
            .unwrap();
        store
            .append("billing", "b-1", &[ev("invoice.sent")])
            .await
            .unwrap();
        store
            .append("env", "e", &[ev("env.configured")])
            .await
            .unwrap();
        store
            .append("billing", "b-1", &[ev("invoice.paid")])
            .await
            .unwrap();
        let page = store.page(0, 10).await.unwrap();
        let ids: Vec<u64> = page.events.iter().map(|e| e.event_id).collect();
        assert_eq!(ids, [1, 3]);
        assert_eq!(page.head, 3, "head is the newest served event, not 4");
        assert_eq!(page.feed_id.as_deref(), Some("f"));
        assert!(store.page(3, 10).await.unwrap().events.is_empty());
    }

    #[tokio::test]
    async fn appends_take_the_next_aggregate_seq() {
        let store = MemoryStore::new("f");
        let ids = store
            .append("route", "r-1", &[ev("route.created"), ev("route.updated")])
            .await
            .unwrap();
        assert_eq!(ids, [1, 2]);
        store
            .append("route", "r-1", &[ev("route.deleted")])
            .await
            .unwrap();
        let seqs: Vec<u64> = store
            .page(0, 10)
            .await
            .unwrap()
            .events
            .iter()
            .map(|e| e.aggregate_seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert!(matches!(
            store.append("route", "r-1", &[]).await,
            Err(AppendError::Empty { .. })
        ));
    }

    #[test]
    fn inserted_events_must_move_forward() {
        let store = MemoryStore::new("f");
        let e = store.append_one("env", "e", ev("env.configured"));
        assert!(store.insert(e).is_err());
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_795_341_600);
        assert_eq!(rfc3339(t), "2026-11-22T10:00:00Z");
    }
}
