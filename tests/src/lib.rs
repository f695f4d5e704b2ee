//! Support for the black-box tests in `tests/tests/`: the edge runs as a
//! real process, clients and backends are real sockets with real TLS on
//! loopback, and every assertion is about what a user sees (bytes, which
//! backend answered, whether a port is closed, what /metrics says).
//!
//! - [`ca`]: a throwaway CA and server certificates (rcgen).
//! - [`backend`]: TLS and plain TCP backends that identify themselves and
//!   echo, and record any PROXY v2 header they receive.
//! - [`edge`]: build an `edge.toml`, start the binary, wait for /readyz,
//!   read /metrics and /routes, signal it by PID.
//! - [`client`]: TLS clients that verify the backend's certificate through
//!   the edge, and helpers for raw bytes.
//! - [`agent`]: edge-agent as a process, its config and metrics.
//! - [`control`]: the edge's control API driven directly (pushes, status).
//! - [`reference_feed`]: edge-feed's servers over an in-memory log the
//!   test controls (restores, swapped logs, raw appends, transport faults).
//! - [`postgres`]: a throw-away PostgreSQL cluster, run as `nobody`.
//! - [`edge_feed`]: `edge-feed` as a process, and edge nodes following it.
//! - [`site`]: the one-env, one-route fixture most tests start from.
//! - [`ports`]: free ports and test addresses on `lo`.
#![allow(missing_debug_implementations)]

pub mod agent;
pub mod backend;
pub mod ca;
pub mod client;
pub mod control;
pub mod edge;
pub mod edge_feed;
pub mod ports;
pub mod postgres;
pub mod reference_feed;
pub mod site;

/// How long a test waits for something that should happen at once.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Real ClientHellos captured from the wire (see `tls-peek/testdata`).
pub mod captures {
    pub const CHROMIUM_PQ: &[u8] = include_bytes!("../../tls-peek/testdata/chromium-pq.bin");
    pub const CURL: &[u8] = include_bytes!("../../tls-peek/testdata/curl-openssl3.bin");
    pub const OPENSSL_NOSNI: &[u8] =
        include_bytes!("../../tls-peek/testdata/openssl-s_client-nosni.bin");
}
