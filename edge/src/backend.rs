//! Choosing and dialling a backend instance over the IPv6 overlay.
//!
//! The instances come from [`Health::pick`]: the platform's healthy ones
//! that the edge's own signals keep (or all of them, under the panic
//! rule), and first an ejected instance whose backoff is over, so one
//! client tests it. Choice is "two random choices": of two random
//! candidates, the one with fewer open tunnels from this edge (a per-
//! instance atomic, no lock). It balances nearly as well as
//! least-connections without scanning every instance. On a failed or
//! timed-out connect another untried instance is dialled, up to
//! [`MAX_ATTEMPTS`], and each outcome feeds the instance's passive
//! ejection; the caller replays the peeked bytes to whichever answers. An
//! address outside `overlay.allowed_backends` is never dialled, whatever
//! the table says.

use std::io;
use std::net::{SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};

use route_model::TableRoute;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

use crate::config::Overlay;
use crate::health::{Health, LoadSlot};
use crate::metrics::Metrics;
use crate::reject::Reject;

/// Instances tried for one client before giving up: enough to step over a
/// dead instance or two without holding the client for many timeouts.
pub(crate) const MAX_ATTEMPTS: usize = 3;

/// A connected backend; dropping it releases its load slot.
#[derive(Debug)]
pub(crate) struct Backend {
    pub stream: TcpStream,
    pub addr: SocketAddrV6,
    _slot: LoadSlot,
}

/// Connects to a backend of `route`, trying another instance on failure.
pub(crate) async fn connect(
    route: &TableRoute,
    overlay: &Overlay,
    connect_timeout: Duration,
    health: &Health,
    metrics: &Metrics,
    speaks_first: bool,
) -> Result<Backend, Reject> {
    let port = route.route.backend_port;
    let mut pick = health.pick(route);
    if pick.is_empty() {
        return Err(Reject::NoHealthyBackend);
    }
    for _ in 0..MAX_ATTEMPTS.min(pick.len()) {
        let Some(cell) = pick.next() else { break };
        let addr = SocketAddrV6::new(cell.addr, port, 0, 0);
        if !overlay.policy.allows(cell.addr) {
            continue;
        }
        let started = Instant::now();
        let outcome =
            tokio::time::timeout(connect_timeout, dial(addr, overlay, speaks_first)).await;
        health.report(&cell, matches!(outcome, Ok(Ok(_))));
        match outcome {
            Ok(Ok(stream)) => {
                metrics
                    .connect_seconds
                    .observe(started.elapsed().as_secs_f64());
                return Ok(Backend {
                    stream,
                    addr,
                    _slot: cell.slot(),
                });
            }
            Ok(Err(e)) => {
                metrics.connect_failures.inc();
                tracing::debug!(route = %route.route.id, backend = %addr, error = %e, "backend connect failed");
            }
            Err(_) => {
                metrics.connect_failures.inc();
                tracing::debug!(route = %route.route.id, backend = %addr, "backend connect timed out");
            }
        }
    }
    Err(Reject::BackendConnectFailed)
}

/// One IPv6 connect with the overlay's source address and mark.
/// Also the health prober's dial, so probes obey the same overlay rules.
pub(crate) async fn dial(
    addr: SocketAddrV6,
    overlay: &Overlay,
    speaks_first: bool,
) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::IPV6,
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    // No IPV6_V6ONLY: it only matters for a socket that binds a wildcard
    // address, and this one dials an IPv6 address.
    if let Some(mark) = overlay.fwmark {
        socket.set_mark(mark)?;
    }
    if let Some(source) = overlay.source {
        socket.bind(&SocketAddr::from((source, 0)).into())?;
    }
    socket.set_tcp_nodelay(true)?;
    if speaks_first {
        // The edge writes first (the hello, the PROXY v2 header): hold the
        // handshake's last ACK back so it rides on that first segment
        // instead of crossing the overlay alone.
        rustix::net::sockopt::set_tcp_quickack(&socket, false)?;
    }
    let socket = TcpSocket::from_std_stream(socket.into());
    socket.connect(SocketAddr::V6(addr)).await
}
