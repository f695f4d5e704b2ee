//! What the project's three services do alike, in one place so they
//! behave alike for an operator: the same exit codes for the same
//! failures, the same log formats and filter variables, the same systemd
//! protocol and the same answer to SIGTERM.
//!
//! - [`exit`]: sysexits codes and a clap parse that exits 64, not 2.
//! - [`logging`]: `--log-format text|json` on stderr, filtered by the
//!   binary's own variable (`EDGE_LOG`, …) or `RUST_LOG`.
//! - [`notify`]: `READY=1` and the watchdog (`Type=notify` units).
//! - [`signals`]: a future that resolves on SIGTERM or SIGINT.
//! - [`http`]: the accept loop of a small HTTP/1 server (`/metrics`,
//!   `/healthz`, the edge's admin endpoints).
#![warn(unreachable_pub)]

pub mod exit;
pub mod http;
pub mod logging;
pub mod notify;
pub mod signals;
