//! `edge-feed`: the control plane's side of the event contract. It serves
//! an event log to edge-agents over gRPC (`edge.v1.EventFeed`) and HTTP
//! polling, and collects what each node has applied (read-your-writes).
//!
//! One implementation of the protocol runs over any [`store::Store`]: the
//! PostgreSQL table of ADR 0006 ([`pg`]) or a JSON-lines file followed as
//! it grows ([`file`], over the in-memory log of [`memory`], which tests
//! also use directly).
//!
//! # Layout
//! - [`store`]: the `Store` trait, the shapes it deals in, typed errors.
//! - [`pg`]: the PostgreSQL store: migrations, pooled reads, ADR 0005
//!   appends, the one LISTEN connection.
//! - [`memory`]: an in-memory log with the same semantics.
//! - [`file`]: a JSON-lines file followed into the in-memory log.
//! - [`applied`]: who lags behind an event_id (pure), and the wait on it.
//! - [`feed`]: the protocol core shared by both transports.
//! - [`grpc`], [`http`]: the two transports.
//! - [`tls`]: rustls server configs that require a client certificate.
//! - [`serve`]: binding the listeners.
//! - [`tail`]: the newest events, read once per wake-up, shared by
//!   caught-up readers.
#![forbid(unsafe_code)]

pub mod applied;
pub mod feed;
pub mod file;
pub mod grpc;
pub mod http;
pub mod memory;
pub mod pg;
pub mod serve;
pub mod store;
pub mod tail;
pub mod tls;

pub use feed::{Feed, FeedOptions};
pub use store::{AppendError, AppliedReport, Checkpoint, NewEvent, Rejected, Store, StoreError};

/// The aggregate types the feed serves. Every event of these aggregates
/// is served (an aggregate's sequence is never split); others never leave
/// the store.
pub const SERVED_TYPES: [&str; 3] = ["env", "route", "instance"];
