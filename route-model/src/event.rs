//! The control plane's events (contract §2, ADR 0005): the envelope every
//! transport carries (polling JSON, gRPC), and its typed decoding.
//!
//! The envelope is kept exactly as received, payload as raw JSON, so an
//! event of a type this build does not know still carries its cursor and
//! `aggregate_seq` through the materialiser. No I/O.

use serde::{Deserialize, Serialize};

use crate::spec::{EnvSpec, InstanceSpec, RouteSpec};

/// One event, with the contract's field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: u64,
    #[serde(default)]
    pub occurred_at: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub aggregate_seq: u64,
    pub event_type: String,
    #[serde(default)]
    pub payload: serde_json::Value,
}

/// A page of the feed: events in `event_id` order, and the newest
/// `event_id` the control plane has.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventBatch {
    pub head: u64,
    pub events: Vec<Event>,
    /// The identity of the event log (contract §2), when the feed sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed_id: Option<String>,
}

/// What an event means for the routing state.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    EnvConfigured(EnvSpec),
    EnvDeleted,
    RouteUpserted(RouteSpec),
    RouteDeleted,
    InstanceUp(InstanceSpec),
    InstanceHealth {
        healthy: bool,
    },
    InstanceDown,
    /// A type this build does not know: skipped, its sequence still counts.
    Unknown,
}

/// An event of a known type whose payload or aggregate does not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event {event_id}: {event_type} on aggregate_type {aggregate_type:?}")]
    WrongAggregate {
        event_id: u64,
        event_type: String,
        aggregate_type: String,
    },
    #[error("event {event_id} ({event_type}): payload: {message}")]
    Payload {
        event_id: u64,
        event_type: String,
        message: String,
    },
    #[error("event {event_id} ({event_type}): payload id {payload_id:?} differs from aggregate_id {aggregate_id:?}")]
    IdMismatch {
        event_id: u64,
        event_type: String,
        payload_id: String,
        aggregate_id: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceUpPayload {
    env: String,
    process_type: String,
    addr: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthPayload {
    healthy: bool,
}

impl Event {
    /// Decodes the payload of a known event type.
    pub fn kind(&self) -> Result<EventKind, EventError> {
        let aggregate = match self.event_type.as_str() {
            "env.configured" | "env.deleted" => "env",
            "route.created" | "route.updated" | "route.deleted" => "route",
            "instance.up" | "instance.health" | "instance.down" => "instance",
            _ => return Ok(EventKind::Unknown),
        };
        if self.aggregate_type != aggregate {
            return Err(EventError::WrongAggregate {
                event_id: self.event_id,
                event_type: self.event_type.clone(),
                aggregate_type: self.aggregate_type.clone(),
            });
        }
        Ok(match self.event_type.as_str() {
            "env.configured" => {
                let env: EnvSpec = self.payload()?;
                self.same_id(&env.id)?;
                EventKind::EnvConfigured(env)
            }
            "route.created" | "route.updated" => {
                let route: RouteSpec = self.payload()?;
                self.same_id(&route.id)?;
                EventKind::RouteUpserted(route)
            }
            "instance.up" => {
                let p: InstanceUpPayload = self.payload()?;
                EventKind::InstanceUp(InstanceSpec {
                    id: self.aggregate_id.clone(),
                    env: p.env,
                    process_type: p.process_type,
                    addr: p.addr,
                    healthy: true,
                })
            }
            "instance.health" => {
                let p: HealthPayload = self.payload()?;
                EventKind::InstanceHealth { healthy: p.healthy }
            }
            "env.deleted" => EventKind::EnvDeleted,
            "route.deleted" => EventKind::RouteDeleted,
            _ => EventKind::InstanceDown,
        })
    }

    fn payload<T: serde::de::DeserializeOwned>(&self) -> Result<T, EventError> {
        T::deserialize(&self.payload).map_err(|e| EventError::Payload {
            event_id: self.event_id,
            event_type: self.event_type.clone(),
            message: e.to_string(),
        })
    }

    fn same_id(&self, payload_id: &str) -> Result<(), EventError> {
        if payload_id == self.aggregate_id {
            return Ok(());
        }
        Err(EventError::IdMismatch {
            event_id: self.event_id,
            event_type: self.event_type.clone(),
            payload_id: payload_id.to_owned(),
            aggregate_id: self.aggregate_id.clone(),
        })
    }
}
