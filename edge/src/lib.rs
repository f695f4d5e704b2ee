//! The edge data plane: accepts TCP on public `(IP, port)` pairs, peeks the
//! TLS ClientHello for SNI without terminating TLS, picks a route from an
//! atomically swapped table, optionally sends PROXY v2, and forwards every
//! byte to a microVM backend over the IPv6 overlay.
//!
//! # Layout
//! - [`config`]: `edge.toml` into validated types (no sockets).
//! - [`lifecycle`]: startup, signals, reload, upgrade and drain.
//! - [`table_source`]: where the table comes from (edge.toml, the saved
//!   `routing.json`, pushes) and the push fence; [`control`] is its socket.
//! - [`server`]: applying a table (compile off the runtime, listener diff,
//!   atomic swap) and drain.
//! - [`shared`]: the state connections read (a leaf module).
//! - [`listen`]: the listener set and the accept loop.
//! - [`admission`]: `max_connections` and per-source limits.
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
// Two audited exceptions: `upgrade::owned` takes ownership of a descriptor
// received with SCM_RIGHTS; `trim` calls glibc's `malloc_trim`.
#![deny(unsafe_code)]
// Internal items are `pub(crate)`: what is unused is reported as dead.
#![warn(unreachable_pub)]

mod admin;
mod admission;
mod backend;
pub mod check;
pub mod config;
mod conn;
mod control;
mod forward;
mod health;
pub mod lifecycle;
mod listen;
mod metrics;
mod peek;
pub mod proxy_v2;
mod reject;
mod server;
mod shared;
mod table_source;
mod trim;
mod upgrade;
