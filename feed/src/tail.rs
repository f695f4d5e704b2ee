//! The newest served events, read once per wake-up by one task per feed
//! server and shared by every caught-up stream and long poll, so a commit
//! costs one query, not one per subscriber. A reader behind the cached
//! range reads the store by id range itself.
//!
//! Sound because the store's reads are prefix-complete: a page after `x`
//! read in one snapshot holds every served event up to its last id (or up
//! to the snapshot's head, when the page is short), so the cache always
//! covers a contiguous `(start, upto]`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use route_model::{Event, EventBatch};
use tokio::sync::watch;

use crate::store::Store;

/// Events kept for caught-up readers (older ones are read from the store).
const CAPACITY: usize = 10_000;

#[derive(Debug, Default)]
struct Cached {
    /// The store's [`Store::generation`] the cache was read in.
    generation: u64,
    /// False until the first read: nothing may be served from it before.
    ready: bool,
    /// Every served event with `start < event_id <= upto` is in `events`.
    start: u64,
    upto: u64,
    head: u64,
    events: VecDeque<Event>,
}

/// The shared tail of the served stream.
#[derive(Debug)]
pub struct Tail {
    cached: Mutex<Cached>,
    version: watch::Sender<u64>,
}

impl Tail {
    pub fn new() -> Arc<Tail> {
        Arc::new(Tail {
            cached: Mutex::new(Cached::default()),
            version: watch::channel(0).0,
        })
    }

    /// Bumped whenever the tail may have moved.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// The page after `after` from the cache, when the cache covers it
    /// and was read in the store's current `generation`.
    pub fn serve(
        &self,
        after: u64,
        limit: usize,
        feed_id: &str,
        generation: u64,
    ) -> Option<EventBatch> {
        let c = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if !c.ready || c.generation != generation || after < c.start || after > c.upto {
            return None;
        }
        let from = c.events.partition_point(|e| e.event_id <= after);
        Some(EventBatch {
            head: c.head,
            events: c.events.range(from..).take(limit).cloned().collect(),
            feed_id: Some(feed_id.to_owned()),
        })
    }

    /// Follows the store for ever: reads after `upto` on every wake-up and
    /// at least every `fallback`. Spawned by [`crate::Feed::new`].
    pub async fn follow(self: Arc<Tail>, store: Arc<dyn Store>, page: usize, fallback: Duration) {
        let mut wake = store.wakeups();
        loop {
            wake.borrow_and_update();
            if let Err(e) = self.read(store.as_ref(), page).await {
                tracing::debug!(error = %e, "reading the tail");
            }
            crate::feed::Feed::nap(&mut wake, fallback).await;
        }
    }

    async fn read(&self, store: &dyn Store, page: usize) -> Result<(), crate::StoreError> {
        let generation = store.generation();
        let ready = {
            let mut c = self.cached.lock().unwrap_or_else(|p| p.into_inner());
            if c.generation != generation {
                // The log was rewritten: what was cached may be gone.
                *c = Cached {
                    generation,
                    ..Cached::default()
                };
            }
            c.ready
        };
        if !ready {
            let batch = store.page(u64::MAX, 1).await?;
            let mut c = self.cached.lock().unwrap_or_else(|p| p.into_inner());
            (c.start, c.upto, c.head, c.ready) = (batch.head, batch.head, batch.head, true);
            drop(c);
            self.version.send_modify(|v| *v = v.wrapping_add(1));
        }
        loop {
            let upto = self.cached.lock().unwrap_or_else(|p| p.into_inner()).upto;
            let batch = store.page(upto, page).await?;
            let full = batch.events.len() >= page;
            let mut c = self.cached.lock().unwrap_or_else(|p| p.into_inner());
            let last = batch.events.last().map_or(upto, |e| e.event_id);
            c.events.extend(batch.events);
            c.upto = if full { last } else { last.max(batch.head) };
            c.head = c.head.max(batch.head);
            while c.events.len() > CAPACITY {
                if let Some(e) = c.events.pop_front() {
                    c.start = e.event_id;
                }
            }
            drop(c);
            self.version.send_modify(|v| *v = v.wrapping_add(1));
            if !full {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;
    use crate::store::NewEvent;

    fn ev() -> NewEvent {
        NewEvent {
            event_type: "route.updated".into(),
            payload: serde_json::json!({}),
        }
    }

    #[tokio::test]
    async fn serves_only_the_range_it_has_read() {
        let store = MemoryStore::new("f");
        store.append("route", "a", &[ev(), ev()]).await.unwrap();
        let tail = Tail::new();
        assert!(
            tail.serve(2, 10, "f", 0).is_none(),
            "nothing before the first read"
        );
        tail.read(&store, 2).await.unwrap();
        assert!(
            tail.serve(1, 10, "f", 0).is_none(),
            "before the cached range"
        );
        let caught_up = tail.serve(2, 10, "f", 0).unwrap();
        assert!(caught_up.events.is_empty());
        assert_eq!(caught_up.head, 2);
        store.append("billing", "b", &[ev()]).await.unwrap();
        store
            .append("route", "a", &[ev(), ev(), ev()])
            .await
            .unwrap();
        tail.read(&store, 2).await.unwrap(); // two pages: full, then short
        let page = tail.serve(2, 10, "f", 0).unwrap();
        let ids: Vec<u64> = page.events.iter().map(|e| e.event_id).collect();
        assert_eq!(ids, [4, 5, 6]);
        assert_eq!(page.head, 6);
        assert_eq!(tail.serve(4, 1, "f", 0).unwrap().events[0].event_id, 5);
    }

    /// A memory store whose log can be rewritten (a restore).
    struct Rewritable {
        log: std::sync::Mutex<Arc<MemoryStore>>,
        generation: std::sync::atomic::AtomicU64,
    }

    impl Rewritable {
        fn current(&self) -> Arc<MemoryStore> {
            Arc::clone(&self.log.lock().unwrap())
        }
    }

    #[tonic::async_trait]
    impl Store for Rewritable {
        fn feed_id(&self) -> &str {
            "f"
        }
        fn wakeups(&self) -> watch::Receiver<u64> {
            watch::channel(0).1
        }
        async fn page(&self, after: u64, limit: usize) -> Result<EventBatch, crate::StoreError> {
            self.current().page(after, limit).await
        }
        async fn append(
            &self,
            t: &str,
            id: &str,
            events: &[NewEvent],
        ) -> Result<Vec<u64>, crate::AppendError> {
            self.current().append(t, id, events).await
        }
        async fn report_applied(
            &self,
            report: &crate::AppliedReport,
        ) -> Result<(), crate::StoreError> {
            self.current().report_applied(report).await
        }
        async fn checkpoints(&self) -> Result<Vec<crate::Checkpoint>, crate::StoreError> {
            self.current().checkpoints().await
        }
        fn generation(&self) -> u64 {
            self.generation.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn a_rewritten_log_is_never_served_from_the_cache() {
        let store = Rewritable {
            log: std::sync::Mutex::new(Arc::new(MemoryStore::new("f"))),
            generation: 0.into(),
        };
        store
            .append("route", "a", &[ev(), ev(), ev()])
            .await
            .unwrap();
        let tail = Tail::new();
        tail.read(&store, 10).await.unwrap();
        store.append("route", "a", &[ev()]).await.unwrap();
        tail.read(&store, 10).await.unwrap();
        assert_eq!(tail.serve(3, 10, "f", 0).unwrap().events.len(), 1);
        // Restored from a backup holding two events.
        let restored = Arc::new(MemoryStore::new("f"));
        restored.append("route", "a", &[ev(), ev()]).await.unwrap();
        *store.log.lock().unwrap() = restored;
        store
            .generation
            .store(1, std::sync::atomic::Ordering::SeqCst);
        assert!(
            tail.serve(3, 10, "f", 1).is_none(),
            "the old log's events are not served"
        );
        tail.read(&store, 10).await.unwrap();
        let page = tail.serve(2, 10, "f", 1).unwrap();
        assert!(page.events.is_empty());
        assert_eq!(page.head, 2, "the head went down with the log");
        assert!(tail.serve(3, 10, "f", 1).is_none(), "beyond the new head");
    }
}
