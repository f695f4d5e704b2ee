//! The sync loop: the I/O around [`Reconcile`]. It opens the feed where the
//! machine says, hands it every batch, carries out the steps it returns
//! (push, save, report, resync, reconnect), and exports what it knows.
//!
//! Invariants, and why:
//! - The saved state (and so the cursor) never runs ahead of what the edge
//!   has applied: a crash between push and save re-fetches and re-pushes,
//!   which is idempotent; the reverse order could skip events forever.
//! - A backlog is coalesced: batches already received are absorbed
//!   together (up to [`MAX_EVENTS_PER_PUSH`]) before one push.
//! - The edge is re-checked every [`RECONCILE_EVERY`]: an edge restarted
//!   without its state dir, or a new process after an upgrade, gets the
//!   current table again.
//! - Which side failed is always said: "feed unreachable: <endpoint>: …"
//!   or "edge control socket unreachable: <path>: …", and
//!   `edge_agent_up{endpoint}`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use route_model::{Applied, EventBatch};
use tokio::time::Instant;

use crate::config::Config;
use crate::edge_client::{EdgeClient, EdgeError};
use crate::feed::grpc::GrpcFeed;
use crate::feed::poll::PollFeed;
use crate::feed::{Backoff, Feed, FeedError, Transport};
use crate::metrics::Metrics;
use crate::reconcile::{Answer, Reconcile, Rejected, ResyncReason, Start, Step};
use crate::store::Store;
use crate::watchdog::Watchdog;

pub const MAX_EVENTS_PER_PUSH: usize = 50_000;
const RECONCILE_EVERY: Duration = Duration::from_secs(5);
/// How long polling stands in after gRPC keeps failing.
const POLL_SPELL: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Agent {
    config: Config,
    metrics: Arc<Metrics>,
    store: Store,
    edge: EdgeClient,
    machine: Reconcile,
    watchdog: Watchdog,
    grpc_failures: u32,
    next_grpc: usize,
    poll_until: Option<Instant>,
    backoff: Backoff,
}

/// Why one subscription ended.
enum Stop {
    Feed { endpoint: String, error: FeedError },
    Resync { delay: Duration },
    Reconnect,
}

/// Unix milliseconds: the machine's `now`.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Agent {
    pub fn new(
        config: Config,
        metrics: Arc<Metrics>,
        store: Store,
        start: Start,
        watchdog: Watchdog,
    ) -> Agent {
        let edge = EdgeClient::new(&config.control_socket);
        let machine = Reconcile::new(start, now_ms());
        metrics.cursor.set(machine.saved().state.cursor() as i64);
        if let Some(head) = machine.head() {
            metrics.saw_head(head);
        }
        Agent {
            config,
            metrics,
            store,
            edge,
            machine,
            watchdog,
            grpc_failures: 0,
            next_grpc: 0,
            poll_until: None,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
        }
    }

    /// Follows the feed forever.
    pub async fn run(mut self) {
        self.publish();
        if let Some(reason) = self.machine.catching_up() {
            tracing::info!(
                reason = reason.as_str(),
                generation = self.machine.generation(),
                "no usable saved state: catching up from after=0 before pushing"
            );
        } else {
            // Make sure the edge serves what we saved before following on.
            self.check_edge(None).await;
        }
        loop {
            self.watchdog.pet();
            let transport = self.choose();
            match self.follow(transport).await {
                Stop::Resync { delay } => {
                    self.watchdog.sleep(jitter(delay)).await;
                    continue;
                }
                Stop::Reconnect => {
                    self.metrics
                        .reconnects
                        .with_label_values(&[transport.as_str()])
                        .inc();
                }
                Stop::Feed { endpoint, error } => {
                    let tls = match (&self.config.tls, transport, &error) {
                        (
                            Some(tls),
                            Transport::Grpc,
                            FeedError::Grpc(_) | FeedError::Connect { .. },
                        ) => tls.probe(&endpoint).await,
                        _ => None,
                    };
                    match tls {
                        Some(cause) => tracing::warn!(
                            transport = transport.as_str(),
                            "feed unreachable: {endpoint}: {error}; TLS: {cause}"
                        ),
                        None => tracing::warn!(
                            transport = transport.as_str(),
                            "feed unreachable: {endpoint}: {error}"
                        ),
                    }
                    self.metrics.set_up("feed", false);
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
            let delay = self.backoff.next_delay();
            self.watchdog.sleep(delay).await;
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

    fn endpoint(&self, transport: Transport) -> String {
        match transport {
            Transport::Grpc => self.config.grpc[self.next_grpc % self.config.grpc.len()].clone(),
            Transport::Poll => self.config.poll.as_ref().map_or(String::new(), |p| {
                let scheme = if p.https { "https" } else { "http" };
                format!("{scheme}://{}{}", p.authority, p.prefix)
            }),
        }
    }

    async fn open(&mut self, transport: Transport, after: u64) -> Result<Feed, FeedError> {
        self.metrics
            .transport
            .set(i64::from(transport == Transport::Grpc));
        let c = &self.config;
        match transport {
            Transport::Grpc => {
                let endpoint = self.endpoint(transport);
                let feed =
                    GrpcFeed::subscribe(&endpoint, c.tls.as_ref(), &c.node_id, after).await?;
                Ok(Feed::Grpc(Box::new(feed)))
            }
            Transport::Poll => {
                let url = c.poll.clone().expect("poll chosen only when configured");
                Ok(Feed::Poll(PollFeed::new(
                    url,
                    c.tls.as_ref().map(|t| t.poll()),
                    &c.node_id,
                    after,
                    c.poll_limit,
                    c.poll_interval,
                )))
            }
        }
    }

    /// One subscription, until it fails, a batch is refused, or the machine
    /// resynchronises.
    async fn follow(&mut self, transport: Transport) -> Stop {
        let endpoint = self.endpoint(transport);
        let after = self.machine.after();
        let mut feed = match self.open(transport, after).await {
            Ok(feed) => feed,
            Err(error) => return Stop::Feed { endpoint, error },
        };
        tracing::info!(
            transport = transport.as_str(),
            after,
            catching_up = self.machine.catching_up().map(ResyncReason::as_str),
            "following the feed"
        );
        let mut recheck = tokio::time::interval(RECONCILE_EVERY);
        recheck.tick().await;
        let mut pet = tokio::time::interval(self.watchdog.period());
        loop {
            let batch = tokio::select! {
                batch = feed.next() => batch,
                _ = recheck.tick() => {
                    self.watchdog.pet();
                    if let Some(stop) = self.check_edge(Some(&mut feed)).await {
                        return stop;
                    }
                    continue;
                }
                _ = pet.tick() => {
                    self.watchdog.pet();
                    continue;
                }
            };
            let batch = match batch {
                Ok(b) => b,
                Err(error) => return Stop::Feed { endpoint, error },
            };
            self.metrics.set_up("feed", true);
            self.watchdog.pet();
            if let Some(stop) = self.absorb(&batch) {
                return stop;
            }
            // A refused batch keeps the backoff growing: a feed that keeps
            // sending it is not re-read in a tight loop.
            self.backoff.reset();
            if transport == Transport::Grpc {
                self.grpc_failures = 0;
            }
            // Coalesce what has already arrived. A failure here still lets
            // the events received so far be pushed before reconnecting.
            let mut failed = None;
            let mut events = batch.events.len();
            while events < MAX_EVENTS_PER_PUSH {
                match feed.ready_more().await {
                    Ok(Some(more)) => {
                        events += more.events.len();
                        if let Some(stop) = self.absorb(&more) {
                            return stop;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            let step = self.machine.ready();
            if let Some(stop) = self.drive(step, Some(&mut feed)).await {
                return stop;
            }
            if let Some(error) = failed {
                return Stop::Feed { endpoint, error };
            }
        }
    }

    /// Hands one batch to the machine; a stop if it refused it.
    fn absorb(&mut self, batch: &EventBatch) -> Option<Stop> {
        let absorbed = self.machine.on_batch(batch, now_ms());
        if let Some(head) = self.machine.head() {
            self.metrics.saw_head(head);
        }
        let history = self.machine.catching_up().is_some();
        for (event_id, outcome) in &absorbed.applied {
            let label = match outcome {
                Applied::Changed => "applied",
                Applied::HostnameMoved(moves) => {
                    // While catching up the moves are history, already
                    // audited when they happened.
                    if !history {
                        for m in moves {
                            tracing::warn!(target: "audit", hostname = %m.hostname, old_env = %m.old_env,
                                new_env = %m.new_env, event_id = m.event_id, "hostname moved to another env");
                            self.metrics.hostname_moves.inc();
                        }
                    }
                    "applied"
                }
                Applied::Duplicate => "duplicate",
                Applied::Skipped => {
                    tracing::info!(event_id, "unknown event type skipped");
                    "skipped"
                }
                Applied::Invalid(e) => {
                    tracing::warn!(error = %e, "event not materialised");
                    "invalid"
                }
            };
            self.metrics.events.with_label_values(&[label]).inc();
        }
        match absorbed.step {
            Step::Reconnect(anomaly) => {
                tracing::error!(
                    kind = anomaly.kind(),
                    "feed error: {anomaly}; batch refused, reconnecting"
                );
                self.metrics
                    .feed_errors
                    .with_label_values(&[anomaly.kind()])
                    .inc();
                Some(Stop::Reconnect)
            }
            Step::Resync { reason, delay_ms } => {
                if let Some(gap) = absorbed.gap {
                    tracing::error!(error = %gap, "aggregate_seq gap");
                }
                Some(self.resynced(reason, batch, delay_ms))
            }
            _ => {
                self.publish();
                None
            }
        }
    }

    fn resynced(&mut self, reason: ResyncReason, batch: &EventBatch, delay_ms: u64) -> Stop {
        let saved = self.machine.saved();
        if reason.foreign() {
            tracing::error!(
                reason = reason.as_str(),
                saved_feed_id = saved.feed_id.as_deref().unwrap_or(""),
                feed_id = batch.feed_id.as_deref().unwrap_or(""),
                cursor = saved.state.cursor(),
                head = batch.head,
                "foreign cursor: the feed is another log or was restored from a backup"
            );
        }
        tracing::warn!(
            reason = reason.as_str(),
            generation = self.machine.generation(),
            "resynchronising from after=0; the edge keeps its table until the rebuild is done"
        );
        if reason.counted() {
            self.metrics
                .resyncs
                .with_label_values(&[reason.as_str()])
                .inc();
        }
        self.publish();
        Stop::Resync {
            delay: Duration::from_millis(delay_ms),
        }
    }

    /// Carries out `step` and the ones it leads to.
    async fn drive(&mut self, mut step: Step, mut feed: Option<&mut Feed>) -> Option<Stop> {
        let mut retry = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            step = match step {
                Step::Wait => {
                    self.publish();
                    return None;
                }
                Step::Push { plan, delay_ms } => {
                    if delay_ms > 0 {
                        self.watchdog.sleep(retry.next_delay()).await;
                    }
                    let answer = self.push(&plan).await;
                    self.machine.on_answer(answer, now_ms())
                }
                Step::Committed { cursor, rejected } => {
                    self.committed(cursor, &rejected, feed.as_deref_mut()).await;
                    return None;
                }
                Step::Resync { reason, delay_ms } => {
                    let batch = EventBatch::default();
                    return Some(self.resynced(reason, &batch, delay_ms));
                }
                Step::Reconnect(_) => return Some(Stop::Reconnect),
            };
        }
    }

    async fn push(&mut self, plan: &crate::reconcile::PushPlan) -> Answer {
        let spec = self.machine.working().spec();
        match self.edge.push(plan, &spec).await {
            Ok(response) => {
                self.metrics.set_up("edge", true);
                let outcome = if response.ack { "ack" } else { "nack" };
                self.metrics.pushes.with_label_values(&[outcome]).inc();
                if !response.ack {
                    self.metrics.nacks.inc();
                }
                for r in &response.rejected {
                    tracing::warn!(object_type = %r.object_type, object_id = %r.object_id,
                        reason = %r.reason, message = %r.message, "edge rejected");
                }
                tracing::info!(
                    cursor = plan.source_version,
                    generation = plan.generation,
                    table_version = response.table_version,
                    rejected = response.rejected.len(),
                    "edge applied the table"
                );
                Answer::Applied {
                    rejected: response
                        .rejected
                        .into_iter()
                        .map(|r| Rejected {
                            aggregate_type: r.object_type,
                            aggregate_id: r.object_id,
                            reason: r.reason,
                        })
                        .collect(),
                }
            }
            Err(EdgeError::Refused(message)) => {
                self.metrics.set_up("edge", true);
                self.metrics.pushes.with_label_values(&["refused"]).inc();
                tracing::warn!(
                    generation = plan.generation,
                    cursor = plan.source_version,
                    "edge refused the push: {message}; resynchronising in a new generation"
                );
                Answer::Refused
            }
            Err(e) => {
                self.metrics.pushes.with_label_values(&["error"]).inc();
                self.edge_failed("push", &e);
                Answer::Failed
            }
        }
    }

    fn edge_failed(&self, what: &str, e: &EdgeError) {
        if e.unreachable() {
            self.metrics.set_up("edge", false);
            tracing::warn!(
                "edge control socket unreachable: {}: {what}: {e}",
                self.edge.path().display()
            );
        } else {
            self.metrics.set_up("edge", true);
            tracing::warn!("edge answered {what} with an error: {e}");
        }
    }

    /// The edge applied a push: save, export, report.
    async fn committed(&mut self, cursor: u64, rejected: &[Rejected], feed: Option<&mut Feed>) {
        if let Err(e) = self.store.save(self.machine.saved()) {
            // The edge serves it; only durability is lost. After a restart
            // the agent re-fetches from the older saved cursor.
            tracing::error!(error = %e, "cannot save the agent state");
        }
        self.metrics.synced(cursor);
        self.publish();
        if let Some(feed) = feed {
            if let Err(e) = feed
                .report_applied(&self.config.node_id, cursor, rejected)
                .await
            {
                tracing::warn!(error = %e, "could not report the applied cursor");
            }
        }
    }

    /// Re-pushes the current table if the edge does not serve it.
    async fn check_edge(&mut self, feed: Option<&mut Feed>) -> Option<Stop> {
        match self.edge.status().await {
            Ok(status) => {
                self.metrics.set_up("edge", true);
                let step = self
                    .machine
                    .on_status(status.source_version, status.generation);
                if step == Step::Wait {
                    self.metrics.synced(self.machine.saved().state.cursor());
                    return None;
                }
                tracing::warn!(
                    edge = status.source_version,
                    edge_generation = status.generation,
                    agent = self.machine.saved().state.cursor(),
                    "edge serves another table; pushing"
                );
                self.drive(step, feed).await
            }
            Err(e) => {
                self.edge_failed("status", &e);
                None
            }
        }
    }

    /// The machine's view, as metrics.
    fn publish(&self) {
        let m = &self.metrics;
        m.catching_up
            .set(i64::from(self.machine.catching_up().is_some()));
        m.catchup_events_left.set(self.machine.events_left() as i64);
        m.feed_foreign.set(i64::from(self.machine.foreign()));
        if let Some(lag) = self.machine.lag() {
            m.lag.set(lag);
        }
    }
}

/// Full jitter on a resync delay, so agents refused together do not
/// retry together.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64() / 2.0)
}
