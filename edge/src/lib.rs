//! The edge data plane: accepts TCP on public `(IP, port)` pairs, peeks the
//! TLS ClientHello for SNI without terminating TLS, picks a route from an
//! atomically swapped table, optionally sends PROXY v2, and forwards every
//! byte to a microVM backend over the IPv6 overlay.
//!
//! # Layout
//! - [`config`]: `edge.toml` into validated types (no sockets).
//! - [`run`]: startup, signals, reload and drain.
//! - [`app`]: shared state; applying a table (swap + listener diff).
//! - [`listen`]: binding listeners and the accept loop.
//! - [`limits`]: admission (`max_connections`, per-source limits).
//! - [`conn`]: the path of one connection.
//! - [`peek`]: the I/O loop around the sans-IO `tls_peek` parser.
//! - [`backend`]: choosing and dialling an instance, with failover.
//! - [`health`]: the edge's own health checks and ejections, combined with
//!   the platform's.
//! - [`proxy_v2`]: the PROXY v2 header encoder (pure).
//! - [`forward`]: the two-way byte pump with half-close and idle timeout.
//! - [`reject`]: rejection reasons and the rate-limited log line.
//! - [`admin`]: /metrics, /healthz, /readyz, /routes.
//! - [`metrics`]: every Prometheus family, registered once.
//! - [`check`]: `edge check`'s listener table.
// One audited exception: `upgrade::owned` takes ownership of a descriptor
// received with SCM_RIGHTS.
#![deny(unsafe_code)]

pub mod admin;
pub mod app;
pub mod backend;
pub mod check;
pub mod config;
pub mod conn;
pub mod control;
pub mod forward;
pub mod health;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod notify;
pub mod peek;
pub mod proxy_v2;
pub mod reject;
pub mod run;
pub mod source;
pub mod upgrade;
