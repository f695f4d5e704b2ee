//! The agent's decisions, as a pure state machine: feed batches, push
//! answers and edge status in; `Push`, `Wait`, `Resync` or `Reconnect` out.
//! No I/O, no tokio, no clock: the caller passes `now` (Unix ms) where a
//! decision needs it, so every case is a unit test.
//!
//! Rules, and why:
//! - Never a past or partial table. Without a usable saved state (new node,
//!   state file lost, unreadable or of another format), with a foreign
//!   cursor (another `feed_id`, or a head below the cursor: a log restored
//!   from a backup), after an `aggregate_seq` gap, or after the edge refused
//!   a push as stale, the agent rebuilds from `after=0` up to the head it
//!   sees first and pushes nothing before: every intermediate table would
//!   be a past state of the log.
//! - Events must come in strictly increasing `event_id` order, none beyond
//!   the batch's head: anything else is a feed error (reconnect), never a
//!   duplicate to skip, and never moves the cursor.
//! - Each resynchronisation starts a new push generation (Unix ms when it
//!   began, and always above the previous one): the edge fences pushes by
//!   `(generation, source_version)`, so an older agent cannot roll it back.
//! - The served state moves only when the edge has applied a push; what it
//!   rejected is reported as rejected, never as served.

use route_model::{Applied, EventBatch, Gap, State};

/// The format of the pushed `routing_json`.
pub const PUSH_FORMAT: u32 = 1;
/// First delay after the edge refused a push as stale; doubles per refusal.
pub const REFUSED_BACKOFF_MS: u64 = 500;
/// Ceiling of the refusal and gap delays.
pub const SETBACK_BACKOFF_CAP_MS: u64 = 60_000;
/// First delay before re-reading a log that had an `aggregate_seq` gap
/// (the log itself may be broken: no tight loop); doubles per gap.
pub const GAP_BACKOFF_MS: u64 = 500;
/// Delay before retrying a push that failed in transport or timed out.
pub const PUSH_RETRY_MS: u64 = 200;

/// What the agent found on disk at start.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// No state file: a new node.
    Fresh,
    /// A state file that could not be used (moved aside by the store).
    Unreadable,
    Saved(Box<Saved>),
}

/// The durable part of the machine: what the edge serves, and its fence.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    pub state: State,
    pub feed_id: Option<String>,
    pub generation: u64,
    /// The last head seen (kept so a restart with the feed down still
    /// shows the lag it knew).
    pub head: u64,
}

/// Why the agent rebuilds from `after=0`; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncReason {
    NoState,
    StateUnreadable,
    FeedChanged,
    HeadBelowCursor,
    Gap,
    Refused,
}

impl ResyncReason {
    pub const ALL: [ResyncReason; 6] = [
        ResyncReason::NoState,
        ResyncReason::StateUnreadable,
        ResyncReason::FeedChanged,
        ResyncReason::HeadBelowCursor,
        ResyncReason::Gap,
        ResyncReason::Refused,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ResyncReason::NoState => "no_state",
            ResyncReason::StateUnreadable => "state_unreadable",
            ResyncReason::FeedChanged => "feed_changed",
            ResyncReason::HeadBelowCursor => "head_below_cursor",
            ResyncReason::Gap => "gap",
            ResyncReason::Refused => "refused",
        }
    }

    /// Counted in `edge_agent_resyncs_total` (a start without a usable
    /// state is a catch-up, not a resynchronisation).
    pub const fn counted(self) -> bool {
        !matches!(self, ResyncReason::NoState | ResyncReason::StateUnreadable)
    }

    /// The cursor belongs to another log: the alarm reasons.
    pub const fn foreign(self) -> bool {
        matches!(
            self,
            ResyncReason::FeedChanged | ResyncReason::HeadBelowCursor
        )
    }
}

/// A batch the feed had no right to send; a metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Anomaly {
    #[error("event {event_id} after event {after}: not in increasing event_id order")]
    OutOfOrder { event_id: u64, after: u64 },
    #[error("event {event_id} is beyond the batch's head {head}")]
    BeyondHead { event_id: u64, head: u64 },
}

impl Anomaly {
    pub const KINDS: [&'static str; 2] = ["out_of_order", "beyond_head"];

    pub const fn kind(&self) -> &'static str {
        match self {
            Anomaly::OutOfOrder { .. } => "out_of_order",
            Anomaly::BeyondHead { .. } => "beyond_head",
        }
    }
}

/// The fence and cursor of one push; the table is [`Reconcile::working`]'s
/// spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushPlan {
    pub format: u32,
    pub source_version: u64,
    pub generation: u64,
    pub feed_id: Option<String>,
}

/// An object the edge did not serve, as reported to the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub reason: String,
}

/// How a push ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The edge applied the table; `rejected` are not served.
    Applied { rejected: Vec<Rejected> },
    /// FAILED_PRECONDITION "stale push": the edge serves a newer fence.
    Refused,
    /// Transport error, timeout, or any other error: retry.
    Failed,
}

/// What the I/O loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Keep following (or wait for the next event).
    Wait,
    /// Push the working spec with this fence, after `delay_ms`.
    Push { plan: PushPlan, delay_ms: u64 },
    /// Drop the subscription and reopen it from `after=0` after `delay_ms`.
    Resync { reason: ResyncReason, delay_ms: u64 },
    /// The batch was refused: reopen the subscription from the cursor.
    Reconnect(Anomaly),
    /// The edge applied the push: save [`Reconcile::saved`], report
    /// `cursor` and `rejected` to the feed.
    Committed {
        cursor: u64,
        rejected: Vec<Rejected>,
    },
}

/// A batch absorbed: the next step and what each event did.
#[derive(Debug)]
pub struct Absorbed {
    pub step: Step,
    pub applied: Vec<(u64, Applied)>,
    /// Set when the step is a gap resync.
    pub gap: Option<Gap>,
}

#[derive(Debug, Clone)]
struct CatchUp {
    reason: ResyncReason,
    /// The head seen by the first batch of the rebuild.
    target: Option<u64>,
    /// An empty batch arrived after the target was set: nothing is left.
    drained: bool,
}

/// The machine. See the module docs for its rules.
#[derive(Debug)]
pub struct Reconcile {
    served: Saved,
    working: State,
    /// The identity of the log `working` is read from.
    working_feed: Option<String>,
    generation: u64,
    head: Option<u64>,
    catch_up: Option<CatchUp>,
    in_flight: Option<PushPlan>,
    /// Refusals and gaps since the last commit (their backoff).
    setbacks: u32,
}

impl Reconcile {
    /// The machine as the agent starts, at `now` (Unix ms).
    pub fn new(start: Start, now: u64) -> Reconcile {
        let (served, reason) = match start {
            Start::Saved(saved) => (*saved, None),
            Start::Fresh => (Saved::empty(), Some(ResyncReason::NoState)),
            Start::Unreadable => (Saved::empty(), Some(ResyncReason::StateUnreadable)),
        };
        let mut m = Reconcile {
            working: served.state.clone(),
            working_feed: served.feed_id.clone(),
            generation: served.generation,
            head: (served.head > 0).then_some(served.head),
            served,
            catch_up: None,
            in_flight: None,
            setbacks: 0,
        };
        if let Some(reason) = reason {
            m.begin_resync(reason, now);
        }
        m
    }

    /// Where to (re)open the feed: `after` this event_id.
    pub fn after(&self) -> u64 {
        self.working.cursor()
    }

    /// The state the next push is built from.
    pub fn working(&self) -> &State {
        &self.working
    }

    /// What to save once a push is committed.
    pub fn saved(&self) -> &Saved {
        &self.served
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Rebuilding from `after=0`, and why.
    pub fn catching_up(&self) -> Option<ResyncReason> {
        self.catch_up.as_ref().map(|c| c.reason)
    }

    /// Events between the rebuild's cursor and its target (0 when not
    /// catching up, or before the target is known).
    pub fn events_left(&self) -> u64 {
        match &self.catch_up {
            Some(CatchUp {
                target: Some(t), ..
            }) => t.saturating_sub(self.working.cursor()),
            _ => 0,
        }
    }

    /// The cursor was found foreign and the rebuild is not done yet.
    pub fn foreign(&self) -> bool {
        self.catching_up().is_some_and(ResyncReason::foreign)
    }

    /// The last head seen, if any.
    pub fn head(&self) -> Option<u64> {
        self.head
    }

    /// `head - served cursor`, signed: negative means the log is behind
    /// the cursor (restored from a backup).
    pub fn lag(&self) -> Option<i64> {
        self.head
            .map(|h| h as i64 - self.served.state.cursor() as i64)
    }

    /// Checks and applies one batch (coalesced batches arrive one by one;
    /// call [`Reconcile::ready`] after the last).
    pub fn on_batch(&mut self, batch: &EventBatch, now: u64) -> Absorbed {
        let refuse = |step| Absorbed {
            step,
            applied: Vec::new(),
            gap: None,
        };
        self.head = Some(batch.head);
        if let Some(reason) = self.identity(batch) {
            return refuse(self.begin_resync(reason, now));
        }
        let mut last = self.working.cursor();
        for e in &batch.events {
            if e.event_id <= last {
                return refuse(Step::Reconnect(Anomaly::OutOfOrder {
                    event_id: e.event_id,
                    after: last,
                }));
            }
            if e.event_id > batch.head {
                return refuse(Step::Reconnect(Anomaly::BeyondHead {
                    event_id: e.event_id,
                    head: batch.head,
                }));
            }
            last = e.event_id;
        }
        match self.working.apply_all(&batch.events) {
            Ok(outcomes) => {
                if let Some(c) = &mut self.catch_up {
                    c.drained |= batch.events.is_empty();
                }
                Absorbed {
                    step: Step::Wait,
                    applied: batch
                        .events
                        .iter()
                        .map(|e| e.event_id)
                        .zip(outcomes)
                        .collect(),
                    gap: None,
                }
            }
            Err(gap) => Absorbed {
                step: self.begin_resync(ResyncReason::Gap, now),
                applied: Vec::new(),
                gap: Some(gap),
            },
        }
    }

    /// After a (coalesced) batch: push if there is something new and the
    /// rebuild, if any, has reached its target.
    pub fn ready(&mut self) -> Step {
        if let Some(c) = &self.catch_up {
            let reached = c
                .target
                .is_some_and(|t| self.working.cursor() >= t || c.drained);
            if !reached {
                return Step::Wait;
            }
        } else if self.working.cursor() == self.served.state.cursor() {
            return Step::Wait;
        }
        self.push(0)
    }

    /// The edge's status: re-push when it does not serve our table (an edge
    /// restarted without its state, or a new process after an upgrade).
    /// Nothing is pushed while rebuilding.
    pub fn on_status(&mut self, source_version: u64, generation: u64) -> Step {
        if self.catch_up.is_some() || self.in_flight.is_some() {
            return Step::Wait;
        }
        // Generation 0: an edge that does not report fences.
        let same_generation = generation == 0 || generation == self.served.generation;
        if source_version == self.served.state.cursor() && same_generation {
            return Step::Wait;
        }
        self.push(0)
    }

    /// The answer to the push in flight.
    pub fn on_answer(&mut self, answer: Answer, now: u64) -> Step {
        let Some(plan) = self.in_flight.take() else {
            return Step::Wait;
        };
        match answer {
            Answer::Applied { rejected } => {
                debug_assert_eq!(
                    plan.source_version,
                    self.working.cursor(),
                    "the working state moved while a push was in flight"
                );
                self.served = Saved {
                    state: self.working.clone(),
                    feed_id: plan.feed_id,
                    generation: plan.generation,
                    head: self.head.unwrap_or(0),
                };
                self.catch_up = None;
                self.setbacks = 0;
                Step::Committed {
                    cursor: plan.source_version,
                    rejected,
                }
            }
            Answer::Failed => self.push(PUSH_RETRY_MS),
            Answer::Refused => self.begin_resync(ResyncReason::Refused, now),
        }
    }

    /// A foreign cursor, if this batch shows one.
    fn identity(&mut self, batch: &EventBatch) -> Option<ResyncReason> {
        if let Some(c) = &mut self.catch_up {
            if c.target.is_none() {
                // The first batch of a rebuild from 0 names the log.
                c.target = Some(batch.head);
                self.working_feed = batch.feed_id.clone();
                return None;
            }
        }
        if batch.feed_id != self.working_feed {
            return Some(ResyncReason::FeedChanged);
        }
        if batch.head < self.working.cursor() {
            return Some(ResyncReason::HeadBelowCursor);
        }
        None
    }

    fn begin_resync(&mut self, reason: ResyncReason, now: u64) -> Step {
        self.working = State::default();
        self.working_feed = None;
        self.in_flight = None;
        self.generation = now.max(self.generation + 1);
        self.catch_up = Some(CatchUp {
            reason,
            target: None,
            drained: false,
        });
        let base = match reason {
            ResyncReason::Refused => REFUSED_BACKOFF_MS,
            ResyncReason::Gap => GAP_BACKOFF_MS,
            _ => 0,
        };
        let delay_ms = base
            .saturating_mul(1 << self.setbacks.min(16))
            .min(SETBACK_BACKOFF_CAP_MS);
        if base > 0 {
            self.setbacks = self.setbacks.saturating_add(1);
        }
        Step::Resync { reason, delay_ms }
    }

    fn push(&mut self, delay_ms: u64) -> Step {
        let plan = PushPlan {
            format: PUSH_FORMAT,
            source_version: self.working.cursor(),
            generation: self.generation,
            feed_id: self.working_feed.clone(),
        };
        self.in_flight = Some(plan.clone());
        Step::Push { plan, delay_ms }
    }
}

impl Saved {
    fn empty() -> Saved {
        Saved {
            state: State::default(),
            feed_id: None,
            generation: 0,
            head: 0,
        }
    }
}

#[cfg(test)]
mod tests;
