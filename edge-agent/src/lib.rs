//! edge-agent: follows the control plane's event stream and keeps the edge's
//! route table live (contract §2, ADR 0005).
//!
//! # Layout
//! - [`config`]: `agent.toml`, validated.
//! - [`feed`]: gRPC streaming and HTTP polling clients, and backoff.
//! - [`sync`]: the loop: materialise, push, persist, report.
//! - [`edge_client`]: the edge's control API over its Unix socket.
//! - [`store`]: the durable state (cursor included).
//! - [`metrics`]: Prometheus families and the `/metrics` server.

pub mod config;
pub mod edge_client;
pub mod feed;
pub mod metrics;
pub mod store;
pub mod sync;
