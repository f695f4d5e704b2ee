//! edge-agent: follows the control plane's event stream and keeps the edge's
//! route table live (contract §2, ADR 0005).
//!
//! # Layout
//! - [`config`]: `agent.toml`, validated (TLS files included).
//! - [`feed`]: gRPC streaming and HTTP polling clients (mTLS), and backoff.
//! - [`reconcile`]: the decisions, a pure state machine: catch-up,
//!   foreign cursors, feed errors, fenced pushes.
//! - [`sync`]: the I/O loop around it: follow, push, persist, report.
//! - [`edge_client`]: the edge's control API over its Unix socket.
//! - [`store`]: the durable, versioned state (cursor, feed_id, generation).
//! - [`metrics`]: Prometheus families and the `/metrics` server.
//! - [`watchdog`]: the systemd watchdog, petted by the sync loop.

pub mod config;
pub mod edge_client;
pub mod feed;
pub mod metrics;
pub mod reconcile;
pub mod store;
pub mod sync;
pub mod watchdog;
