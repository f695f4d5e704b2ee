//! The sync loop: follow the feed, materialise, push to the edge, and only
//! then persist the cursor and report it applied.
//!
//! Invariants, and why:
//! - The saved state (and so the cursor) never runs ahead of what the edge
//!   has applied: a crash between push and save re-fetches and re-pushes,
//!   which is idempotent; the reverse order could skip events forever.
//! - A backlog is coalesced: batches already received are applied together
//!   (up to [`MAX_EVENTS_PER_PUSH`]) before one push.
//! - A gap resynchronises: a fresh state is built from `after=0` while the
//!   edge keeps serving the old table, and is swapped in (pushed) only
//!   once it has caught up with the head seen when the resync began.
//! - The edge is re-checked every [`RECONCILE_EVERY`]: an edge restarted
//!   without its state dir gets the current table again.

use std::sync::Arc;
use std::time::Duration;

use route_model::{Applied, Event, State};
use tokio::time::Instant;

use crate::config::Config;
use crate::edge_client::EdgeClient;
use crate::feed::grpc::GrpcFeed;
use crate::feed::poll::PollFeed;
use crate::feed::{Backoff, Feed, FeedError, Transport};
use crate::metrics::Metrics;
use crate::store::Store;

const MAX_EVENTS_PER_PUSH: usize = 50_000;
const RECONCILE_EVERY: Duration = Duration::from_secs(5);
/// How long polling stands in after gRPC keeps failing.
const POLL_SPELL: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Agent {
    config: Config,
    metrics: Arc<Metrics>,
    store: Store,
    edge: EdgeClient,
    /// What the edge serves (the last acknowledged table's source).
    state: State,
    resync: bool,
    grpc_failures: u32,
    next_grpc: usize,
    poll_until: Option<Instant>,
    backoff: Backoff,
    /// Between resyncs: a log that itself has a gap must not be re-read
    /// in a tight loop (the edge keeps serving the last good table).
    gap_backoff: Backoff,
}

/// Why one subscription ended.
enum Stop {
    Feed(FeedError),
    Gap,
}

impl Agent {
    pub fn new(config: Config, metrics: Arc<Metrics>, store: Store, state: State) -> Agent {
        let edge = EdgeClient::new(&config.control_socket);
        metrics.cursor.set(state.cursor() as i64);
        Agent {
            config,
            metrics,
            store,
            edge,
            state,
            resync: false,
            grpc_failures: 0,
            next_grpc: 0,
            poll_until: None,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            gap_backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(60)),
        }
    }

    /// Follows the feed forever.
    pub async fn run(mut self) {
        if self.state.cursor() > 0 {
            // Make sure the edge serves what we saved before following on.
            self.reconcile().await;
        }
        loop {
            let transport = self.choose();
            let stop = self.follow(transport).await;
            match stop {
                Stop::Gap => {
                    self.metrics.resyncs.inc();
                    self.resync = true;
                    tokio::time::sleep(self.gap_backoff.next_delay()).await;
                    continue;
                }
                Stop::Feed(e) => {
                    tracing::warn!(transport = transport.as_str(), error = %e, "feed lost; reconnecting");
                    self.metrics
                        .reconnects
                        .with_label_values(&[transport.as_str()])
                        .inc();
                    if transport == Transport::Grpc {
                        self.grpc_failures += 1;
                        self.next_grpc += 1;
                    }
                }
            }
            tokio::time::sleep(self.backoff.next_delay()).await;
        }
    }

    fn choose(&mut self) -> Transport {
        if self.config.grpc.is_empty() {
            return Transport::Poll;
        }
        if self.config.poll.is_some() {
            if let Some(until) = self.poll_until {
                if Instant::now() < until {
                    return Transport::Poll;
                }
                self.poll_until = None;
                self.grpc_failures = 0;
            }
            if self.grpc_failures >= self.config.grpc_failures_before_poll {
                tracing::warn!(
                    failures = self.grpc_failures,
                    "gRPC keeps failing; polling for a while"
                );
                self.poll_until = Some(Instant::now() + POLL_SPELL);
                return Transport::Poll;
            }
        }
        Transport::Grpc
    }

    async fn open(&mut self, transport: Transport, after: u64) -> Result<Feed, FeedError> {
        self.metrics
            .transport
            .set(i64::from(transport == Transport::Grpc));
        match transport {
            Transport::Grpc => {
                let endpoint = &self.config.grpc[self.next_grpc % self.config.grpc.len()];
                let feed = GrpcFeed::subscribe(endpoint, &self.config.node_id, after).await?;
                Ok(Feed::Grpc(Box::new(feed)))
            }
            Transport::Poll => {
                let url = self
                    .config
                    .poll
                    .clone()
                    .expect("poll chosen only when configured");
                let c = &self.config;
                Ok(Feed::Poll(PollFeed::new(
                    url,
                    &c.node_id,
                    after,
                    c.poll_limit,
                    c.poll_interval,
                )))
            }
        }
    }

    /// One subscription, until it fails or a gap forces a resync.
    async fn follow(&mut self, transport: Transport) -> Stop {
        // While resynchronising, events go into a fresh state from 0.
        let mut working = if self.resync {
            State::default()
        } else {
            self.state.clone()
        };
        let mut resync_target = None;
        let mut feed = match self.open(transport, working.cursor()).await {
            Ok(feed) => feed,
            Err(e) => return Stop::Feed(e),
        };
        tracing::info!(
            transport = transport.as_str(),
            after = working.cursor(),
            resync = self.resync,
            "following the feed"
        );
        let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
        reconcile.tick().await;
        loop {
            let batch = tokio::select! {
                batch = feed.next() => batch,
                _ = reconcile.tick() => {
                    if !self.resync {
                        self.reconcile().await;
                    }
                    continue;
                }
            };
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => return Stop::Feed(e),
            };
            self.backoff.reset();
            if transport == Transport::Grpc {
                self.grpc_failures = 0;
            }
            // Coalesce what has already arrived. A failure here still lets
            // the events received so far be applied before reconnecting.
            let mut failed = None;
            while batch.events.len() < MAX_EVENTS_PER_PUSH {
                match feed.ready_more().await {
                    Ok(Some(more)) => {
                        batch.head = batch.head.max(more.head);
                        batch.events.extend(more.events);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            self.metrics.saw_head(batch.head);
            if self.resync && resync_target.is_none() {
                resync_target = Some(batch.head);
            }
            if let Err(gap) = self.absorb(&mut working, &batch.events) {
                tracing::error!(error = %gap, resync = self.resync, "aggregate_seq gap: resynchronising from after=0");
                return Stop::Gap;
            }
            if resync_target.is_some_and(|target| working.cursor() < target) {
                continue; // keep building the fresh state; the edge serves the old one
            }
            if working.cursor() != self.state.cursor() || self.resync {
                if self.resync {
                    tracing::info!(
                        cursor = working.cursor(),
                        "resynchronised; swapping in the fresh state"
                    );
                }
                self.commit(&working).await;
                if self.resync {
                    self.gap_backoff.reset();
                }
                self.resync = false;
                resync_target = None;
                if let Err(e) = feed
                    .report_applied(&self.config.node_id, working.cursor())
                    .await
                {
                    tracing::warn!(error = %e, "could not report the applied cursor");
                }
            }
            if let Some(e) = failed {
                return Stop::Feed(e);
            }
        }
    }

    fn absorb(&self, working: &mut State, events: &[Event]) -> Result<(), route_model::Gap> {
        let outcomes = working.apply_all(events)?;
        for (event, outcome) in events.iter().zip(outcomes) {
            let label = match outcome {
                Applied::Changed => "applied",
                Applied::Duplicate => "duplicate",
                Applied::Skipped => {
                    tracing::info!(event_id = event.event_id, event_type = %event.event_type, "unknown event type skipped");
                    "skipped"
                }
                Applied::Invalid(e) => {
                    tracing::warn!(error = %e, "event not materialised");
                    "invalid"
                }
            };
            self.metrics.events.with_label_values(&[label]).inc();
        }
        Ok(())
    }

    /// Pushes `next` until the edge answers, then saves it: the cursor moves
    /// only once the edge has applied the table that includes it.
    async fn commit(&mut self, next: &State) {
        let spec = next.spec();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            match self.edge.push(next.cursor(), &spec).await {
                Ok(response) => {
                    if response.ack {
                        self.metrics.pushes.with_label_values(&["ack"]).inc();
                    } else {
                        self.metrics.pushes.with_label_values(&["nack"]).inc();
                        self.metrics.nacks.inc();
                        for r in &response.rejected {
                            tracing::warn!(object_type = %r.object_type, object_id = %r.object_id,
                                reason = %r.reason, message = %r.message, "edge rejected");
                        }
                    }
                    tracing::info!(
                        cursor = next.cursor(),
                        table_version = response.table_version,
                        rejected = response.rejected.len(),
                        "edge applied the table"
                    );
                    break;
                }
                Err(e) => {
                    self.metrics.pushes.with_label_values(&["error"]).inc();
                    tracing::warn!(error = %e, "push to the edge failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
        if let Err(e) = self.store.save(next) {
            // The edge serves it; only durability is lost. After a restart
            // the agent re-fetches from the older saved cursor.
            tracing::error!(error = %e, "cannot save the agent state");
        }
        self.state = next.clone();
        self.metrics.synced(next.cursor());
    }

    /// Re-pushes the current table if the edge does not serve it (an edge
    /// restarted without its state dir, or one that never got it).
    async fn reconcile(&mut self) {
        match self.edge.status().await {
            Ok(status) if status.source_version == self.state.cursor() => {
                self.metrics.synced(self.state.cursor());
            }
            Ok(status) => {
                tracing::warn!(
                    edge = status.source_version,
                    agent = self.state.cursor(),
                    "edge serves another table; pushing"
                );
                let state = self.state.clone();
                self.commit(&state).await;
            }
            Err(e) => tracing::warn!(error = %e, "edge status unavailable"),
        }
    }
}
