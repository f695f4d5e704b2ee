//! Choosing and dialling a backend instance over the IPv6 overlay.
//!
//! Choice is "two random choices": of two random healthy instances, the one
//! with fewer open tunnels from this edge. It balances nearly as well as
//! least-connections without scanning every instance. On a failed or
//! timed-out connect another untried instance is dialled, up to
//! [`MAX_ATTEMPTS`]; the caller replays the peeked bytes to whichever
//! answers. An address outside `overlay.allowed_backends` is never dialled,
//! whatever the table says.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV6};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use route_model::TableRoute;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

use crate::config::Overlay;
use crate::metrics::Metrics;
use crate::reject::Reject;

/// Instances tried for one client before giving up: enough to step over a
/// dead instance or two without holding the client for many timeouts.
pub const MAX_ATTEMPTS: usize = 3;

/// Open tunnels per backend address, for the choice. Entries exist only
/// while a tunnel is open, so the map is bounded by open connections.
#[derive(Debug, Default)]
pub struct BackendLoad {
    open: Mutex<HashMap<SocketAddrV6, u32>>,
}

/// A connected backend; dropping it releases its load slot.
#[derive(Debug)]
pub struct Backend {
    pub stream: TcpStream,
    pub addr: SocketAddrV6,
    _slot: LoadSlot,
}

#[derive(Debug)]
struct LoadSlot {
    load: Arc<BackendLoad>,
    addr: SocketAddrV6,
}

impl Drop for LoadSlot {
    fn drop(&mut self) {
        let mut open = self.load.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.addr);
            }
        }
    }
}

impl BackendLoad {
    fn count(&self, addr: &SocketAddrV6) -> u32 {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(addr).copied().unwrap_or(0)
    }

    fn slot(self: &Arc<Self>, addr: SocketAddrV6) -> LoadSlot {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        *open.entry(addr).or_insert(0) += 1;
        LoadSlot {
            load: Arc::clone(self),
            addr,
        }
    }
}

/// Connects to a backend of `route`, trying another instance on failure.
pub async fn connect(
    route: &TableRoute,
    overlay: &Overlay,
    connect_timeout: Duration,
    load: &Arc<BackendLoad>,
    metrics: &Metrics,
    speaks_first: bool,
) -> Result<Backend, Reject> {
    let port = route.route.backend_port;
    let mut candidates: Vec<SocketAddrV6> = route
        .backends
        .iter()
        .filter(|ip| overlay.policy.allows(**ip))
        .map(|ip| SocketAddrV6::new(*ip, port, 0, 0))
        .collect();
    if candidates.is_empty() {
        return Err(Reject::NoHealthyBackend);
    }
    for _ in 0..MAX_ATTEMPTS.min(candidates.len()) {
        let pick = choose(&candidates, load);
        let addr = candidates.swap_remove(pick);
        let started = Instant::now();
        match tokio::time::timeout(connect_timeout, dial(addr, overlay, speaks_first)).await {
            Ok(Ok(stream)) => {
                metrics
                    .connect_seconds
                    .observe(started.elapsed().as_secs_f64());
                return Ok(Backend {
                    stream,
                    addr,
                    _slot: load.slot(addr),
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

/// Two random choices, the less loaded wins.
fn choose(candidates: &[SocketAddrV6], load: &BackendLoad) -> usize {
    let n = candidates.len();
    if n == 1 {
        return 0;
    }
    let a = fastrand::usize(..n);
    let b = (a + 1 + fastrand::usize(..n - 1)) % n;
    if load.count(&candidates[b]) < load.count(&candidates[a]) {
        b
    } else {
        a
    }
}

/// One IPv6 connect with the overlay's source address and mark.
async fn dial(addr: SocketAddrV6, overlay: &Overlay, speaks_first: bool) -> io::Result<TcpStream> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_choices_prefers_the_idle_backend() {
        let load = Arc::new(BackendLoad::default());
        let busy: SocketAddrV6 = "[fdaa::1]:80".parse().unwrap();
        let idle: SocketAddrV6 = "[fdaa::2]:80".parse().unwrap();
        let _slots: Vec<_> = (0..5).map(|_| load.slot(busy)).collect();
        for _ in 0..50 {
            assert_eq!(choose(&[busy, idle], &load), 1);
        }
        drop(_slots);
        assert_eq!(load.count(&busy), 0);
        assert!(
            load.open.lock().unwrap().is_empty(),
            "idle entries are removed"
        );
    }
}
