//! The protocol core both transports share: pages, long polls, applied
//! reports and the read-your-writes wait, over any [`Store`].
//!
//! Wake-ups are hints: the feed's one tail reader ([`crate::tail`]) re-reads
//! the store by id range when the store's watch channel moves *or* the
//! fallback interval passes, so a lost notification costs at most
//! `fallback`; caught-up readers are served from that tail.

use std::sync::Arc;
use std::time::Duration;

use route_model::EventBatch;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::applied::{verdict, Verdict};
use crate::store::{AppliedReport, Store, StoreError};
use crate::tail::Tail;

/// How often a read-your-writes wait re-reads the checkpoints when no
/// report reached this process (reports may go to another feed server).
const APPLIED_RECHECK: Duration = Duration::from_millis(100);

/// Tunables of a feed server.
#[derive(Debug, Clone)]
pub struct FeedOptions {
    /// Longest a waiting stream or long poll goes without re-reading the
    /// store (the bound on a lost wake-up).
    pub fallback: Duration,
    /// Events per gRPC message or poll page when the client sets no limit.
    pub page: usize,
    /// A node counts for read-your-writes if it reported within this.
    pub applied_window: Duration,
}

impl Default for FeedOptions {
    fn default() -> Self {
        FeedOptions {
            fallback: Duration::from_millis(500),
            page: 500,
            applied_window: Duration::from_secs(60),
        }
    }
}

/// A feed: a store and the options. Share it as `Arc<Feed>`.
pub struct Feed {
    store: Arc<dyn Store>,
    options: FeedOptions,
    applied: watch::Sender<u64>,
    tail: Arc<Tail>,
    follower: tokio::task::JoinHandle<()>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("feed_id", &self.store.feed_id())
            .field("options", &self.options)
            .finish()
    }
}

impl Feed {
    /// A feed over `store`; spawns its tail reader (call within a tokio
    /// runtime).
    pub fn new(store: Arc<dyn Store>, options: FeedOptions) -> Arc<Feed> {
        let tail = Tail::new();
        let follower = tokio::spawn(Arc::clone(&tail).follow(
            Arc::clone(&store),
            options.page,
            options.fallback,
        ));
        Arc::new(Feed {
            store,
            options,
            applied: watch::channel(0).0,
            tail,
            follower,
        })
    }

    /// Served events after `after` (at most `limit`) and the head: from the
    /// shared tail when it covers `after`, else from the store.
    pub async fn read(&self, after: u64, limit: usize) -> Result<EventBatch, StoreError> {
        let generation = self.store.generation();
        match self
            .tail
            .serve(after, limit, self.store.feed_id(), generation)
        {
            Some(batch) => Ok(batch),
            None => self.store.page(after, limit).await,
        }
    }

    /// Moves whenever the tail may have grown: what waiting readers watch.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.tail.changes()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn options(&self) -> &FeedOptions {
        &self.options
    }

    /// Waits until the store signals a change or `nap` passes.
    pub(crate) async fn nap(wake: &mut watch::Receiver<u64>, nap: Duration) {
        tokio::select! {
            changed = wake.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(nap).await;
                }
            }
            _ = tokio::time::sleep(nap) => {}
        }
    }

    /// `GET /events` with `wait_ms`: the page after `after`, holding the
    /// request while it is empty, up to `wait`.
    pub async fn poll(
        &self,
        after: u64,
        limit: usize,
        wait: Duration,
    ) -> Result<EventBatch, StoreError> {
        let mut wake = self.changes();
        let deadline = Instant::now() + wait;
        loop {
            wake.borrow_and_update();
            let batch = self.read(after, limit).await?;
            let now = Instant::now();
            if !batch.events.is_empty() || now >= deadline {
                return Ok(batch);
            }
            Feed::nap(&mut wake, self.options.fallback.min(deadline - now)).await;
        }
    }

    /// Records a node's report and wakes read-your-writes waits.
    pub async fn report_applied(&self, report: &AppliedReport) -> Result<(), StoreError> {
        self.store.report_applied(report).await?;
        self.applied.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// Waits up to `timeout` until every node that reported within the
    /// window has applied `event_id`; returns the last verdict.
    pub async fn wait_applied(
        &self,
        event_id: u64,
        timeout: Duration,
    ) -> Result<Verdict, StoreError> {
        let mut reports = self.applied.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            reports.borrow_and_update();
            let v = verdict(
                &self.store.checkpoints().await?,
                event_id,
                self.options.applied_window,
            );
            let now = Instant::now();
            if v.reached() || now >= deadline {
                return Ok(v);
            }
            Feed::nap(&mut reports, APPLIED_RECHECK.min(deadline - now)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;
    use crate::store::NewEvent;

    #[tokio::test]
    async fn a_long_poll_returns_when_an_event_is_appended() {
        let store = Arc::new(MemoryStore::new("f"));
        let feed = Feed::new(store.clone(), FeedOptions::default());
        let waiting = tokio::spawn({
            let feed = Arc::clone(&feed);
            async move { feed.poll(0, 10, Duration::from_secs(30)).await }
        });
        tokio::task::yield_now().await;
        let ev = NewEvent {
            event_type: "route.created".into(),
            payload: serde_json::json!({}),
        };
        store.append("route", "r", &[ev]).await.unwrap();
        let batch = waiting.await.unwrap().unwrap();
        assert_eq!(batch.events.len(), 1);
    }

    #[tokio::test]
    async fn wait_applied_names_laggards_and_returns_once_reported() {
        let feed = Feed::new(Arc::new(MemoryStore::new("f")), FeedOptions::default());
        let report = |node: &str, id| AppliedReport {
            node_id: node.into(),
            event_id: id,
            rejected: vec![],
        };
        feed.report_applied(&report("a", 5)).await.unwrap();
        feed.report_applied(&report("b", 3)).await.unwrap();
        let v = feed.wait_applied(5, Duration::ZERO).await.unwrap();
        assert_eq!(v.laggards.len(), 1);
        assert_eq!(v.laggards[0].node_id, "b");
        let waiting = tokio::spawn({
            let feed = Arc::clone(&feed);
            async move { feed.wait_applied(5, Duration::from_secs(30)).await }
        });
        tokio::task::yield_now().await;
        feed.report_applied(&report("b", 6)).await.unwrap();
        assert!(waiting.await.unwrap().unwrap().reached());
    }
}
