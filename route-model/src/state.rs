//! The materialised routing state: events applied in order, with the
//! per-aggregate `aggregate_seq` check that turns a missed event into an
//! error (and a resynchronisation) instead of a silently wrong table.
//!
//! Decisions, and why:
//! - A gap (`aggregate_seq` not the previous one plus 1) leaves the state
//!   untouched and is an error: the agent must resynchronise from
//!   `after=0`, never guess what it missed.
//! - An event already applied (`event_id <= cursor`) is skipped, so a
//!   stream that redelivers after a reconnect duplicates nothing.
//! - An unknown `event_type` is skipped, but its `aggregate_seq` and the
//!   cursor still move (contract §2).
//! - A known type whose payload does not decode is recorded as invalid and
//!   skipped, seq and cursor moving: bad control-plane data must not wedge
//!   every edge. The object keeps its previous value.
//! - `env.deleted` removes the env only; routes and instances that name it
//!   stay and are rejected by `compile` (by name), never deleted silently.
//!
//! Maps are ordered, so [`State::spec`] and the JSON snapshot are
//! deterministic: the same log gives byte-identical state however it was
//! delivered. No I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventError, EventKind};
use crate::spec::{EnvSpec, InstanceSpec, RouteSpec, RoutingSpec};

/// What applying one event did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    Changed,
    /// Already applied (`event_id <= cursor`).
    Duplicate,
    /// Unknown event type: sequence and cursor moved, nothing else.
    Skipped,
    /// Known type, unusable payload: sequence and cursor moved.
    Invalid(EventError),
}

/// Events were missed: resynchronise from `after=0`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {event_id}: {aggregate_type} {aggregate_id} has aggregate_seq {got}, expected {expected}: events were missed")]
pub struct Gap {
    pub event_id: u64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub expected: u64,
    pub got: u64,
}

/// Envs, instances and routes as the event log has built them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    cursor: u64,
    envs: BTreeMap<String, EnvSpec>,
    instances: BTreeMap<String, InstanceSpec>,
    routes: BTreeMap<String, RouteSpec>,
    /// Last `aggregate_seq` per `"type/id"`.
    seqs: BTreeMap<String, u64>,
}

impl State {
    /// The newest `event_id` applied.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Applies one event, or refuses it (state untouched) on a gap.
    pub fn apply(&mut self, event: &Event) -> Result<Applied, Gap> {
        if event.event_id <= self.cursor {
            return Ok(Applied::Duplicate);
        }
        let key = format!("{}/{}", event.aggregate_type, event.aggregate_id);
        let expected = self.seqs.get(&key).copied().unwrap_or(0) + 1;
        if event.aggregate_seq != expected {
            return Err(Gap {
                event_id: event.event_id,
                aggregate_type: event.aggregate_type.clone(),
                aggregate_id: event.aggregate_id.clone(),
                expected,
                got: event.aggregate_seq,
            });
        }
        self.seqs.insert(key, expected);
        self.cursor = event.event_id;
        let id = &event.aggregate_id;
        let kind = match event.kind() {
            Ok(kind) => kind,
            Err(e) => return Ok(Applied::Invalid(e)),
        };
        match kind {
            EventKind::Unknown => return Ok(Applied::Skipped),
            EventKind::EnvConfigured(env) => {
                self.envs.insert(id.clone(), env);
            }
            EventKind::EnvDeleted => {
                self.envs.remove(id);
            }
            EventKind::RouteUpserted(route) => {
                self.routes.insert(id.clone(), route);
            }
            EventKind::RouteDeleted => {
                self.routes.remove(id);
            }
            EventKind::InstanceUp(instance) => {
                self.instances.insert(id.clone(), instance);
            }
            EventKind::InstanceDown => {
                self.instances.remove(id);
            }
            EventKind::InstanceHealth { healthy } => match self.instances.get_mut(id) {
                Some(instance) => instance.healthy = healthy,
                None => {
                    return Ok(Applied::Invalid(EventError::Payload {
                        event_id: event.event_id,
                        event_type: event.event_type.clone(),
                        message: format!("instance {id} is not up"),
                    }))
                }
            },
        }
        Ok(Applied::Changed)
    }

    /// Applies `events` in order, all or nothing: on a gap the state is
    /// left as it was before the call. Returns what each event did.
    pub fn apply_all(&mut self, events: &[Event]) -> Result<Vec<Applied>, Gap> {
        let mut next = self.clone();
        let outcomes = events
            .iter()
            .map(|e| next.apply(e))
            .collect::<Result<Vec<_>, _>>()?;
        *self = next;
        Ok(outcomes)
    }

    /// The routing spec to compile, ordered by id.
    pub fn spec(&self) -> RoutingSpec {
        RoutingSpec {
            envs: self.envs.values().cloned().collect(),
            instances: self.instances.values().cloned().collect(),
            routes: self.routes.values().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests;
