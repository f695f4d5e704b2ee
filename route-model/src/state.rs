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
//! - Conflicts are settled by age, never by name: each route keeps the
//!   `event_id` of the `route.created` (or first upsert) that made it, an
//!   update keeps it, a delete forgets it (delete + create is a new route),
//!   and [`State::spec`] lists routes oldest first. `compile` lets the first
//!   claimant of a hostname keep it, so the order is all it needs.
//! - A hostname that passes from one env to another (possible only once the
//!   older claimant is gone) is reported by `apply` as a
//!   [`HostnameMove`]: the caller audits and counts it, this module only
//!   remembers which env served each hostname last.
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
    /// Changed, and hostnames passed to another env (audit them).
    HostnameMoved(Vec<HostnameMove>),
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

/// A hostname now served by another env than before: the event that did
/// it (a create or update in the new env, or the delete of the older
/// claimant that let a newer one through).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostnameMove {
    pub hostname: String,
    pub old_env: String,
    pub new_env: String,
    pub event_id: u64,
}

/// Envs, instances and routes as the event log has built them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    cursor: u64,
    envs: BTreeMap<String, EnvSpec>,
    instances: BTreeMap<String, InstanceSpec>,
    routes: BTreeMap<String, RouteSpec>,
    /// Route id -> the `event_id` that created it (its age).
    created: BTreeMap<String, u64>,
    /// Normalised hostname -> its claimants, creation `event_id` -> route
    /// id (oldest first). An index of `routes`, kept so that settling a
    /// hostname costs a lookup, not a scan of every route.
    claims: BTreeMap<String, BTreeMap<u64, String>>,
    /// Normalised hostname -> the env whose route served it last (kept
    /// after the route is deleted, so a later claim by another env is
    /// seen as a move).
    owners: BTreeMap<String, String>,
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
                let old = self.unclaim(id);
                let created = *self.created.entry(id.clone()).or_insert(event.event_id);
                let host = owner_key(&route.hostname);
                self.claims
                    .entry(host.clone())
                    .or_default()
                    .insert(created, id.clone());
                self.routes.insert(id.clone(), route);
                return Ok(self.settle([Some(host), old], event.event_id));
            }
            EventKind::RouteDeleted => {
                let old = self.unclaim(id);
                self.routes.remove(id);
                self.created.remove(id);
                return Ok(self.settle([old, None], event.event_id));
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

    /// The routing spec to compile: envs and instances by id, routes
    /// oldest first (creation `event_id`, then id), so `compile` settles
    /// conflicts by age.
    pub fn spec(&self) -> RoutingSpec {
        let mut routes: Vec<(u64, &RouteSpec)> = self
            .routes
            .iter()
            .map(|(id, r)| (self.created.get(id).copied().unwrap_or(0), r))
            .collect();
        routes.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
        RoutingSpec {
            envs: self.envs.values().cloned().collect(),
            instances: self.instances.values().cloned().collect(),
            routes: routes.into_iter().map(|(_, r)| r.clone()).collect(),
        }
    }

    /// The `event_id` that created route `id`, if it exists.
    pub fn route_created(&self, id: &str) -> Option<u64> {
        self.created.get(id).copied()
    }

    /// Removes route `id`'s claim on its hostname; returns the hostname.
    fn unclaim(&mut self, id: &str) -> Option<String> {
        let host = owner_key(&self.routes.get(id)?.hostname);
        let created = self.created.get(id).copied().unwrap_or(0);
        if let Some(claimants) = self.claims.get_mut(&host) {
            claimants.remove(&created);
            if claimants.is_empty() {
                self.claims.remove(&host);
            }
        }
        Some(host)
    }

    /// After a route changed: for each hostname it touched, the env of the
    /// oldest route still claiming it becomes the owner; a change of owner
    /// is a move. A hostname nobody claims keeps its last owner.
    fn settle(&mut self, hosts: [Option<String>; 2], event_id: u64) -> Applied {
        let mut moves = Vec::new();
        let mut seen = None;
        for host in hosts.into_iter().flatten() {
            if seen.as_ref() == Some(&host) {
                continue;
            }
            let oldest = self
                .claims
                .get(&host)
                .and_then(|c| c.values().next())
                .and_then(|id| self.routes.get(id))
                .map(|r| r.env.clone());
            if let Some(env) = oldest {
                match self.owners.insert(host.clone(), env.clone()) {
                    Some(old) if old != env => moves.push(HostnameMove {
                        hostname: host.clone(),
                        old_env: old,
                        new_env: env,
                        event_id,
                    }),
                    _ => {}
                }
            }
            seen = Some(host);
        }
        if moves.is_empty() {
            Applied::Changed
        } else {
            Applied::HostnameMoved(moves)
        }
    }
}

/// Hostnames compare case-insensitively, a trailing dot ignored.
fn owner_key(hostname: &str) -> String {
    hostname.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests;
