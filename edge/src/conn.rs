//! The path of one client connection, from accept to the end of its tunnel:
//! peek (TLS listeners only), look up in one table snapshot, dial a backend,
//! send the PROXY v2 header and the peeked bytes in one write, then forward.
//!
//! Every failure before forwarding closes the client without a byte and is
//! recorded once (counter + rate-limited log line) by [`crate::reject`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use route_model::Decision;
use tokio::net::TcpStream;

use crate::admission::Permit;
use crate::backend;
use crate::backend::Backend;
use crate::forward;
use crate::peek;
use crate::proxy_v2;
use crate::reject::Reject;
use crate::shared::{Shared, Withdrawal};

/// Serves one connection accepted on `local`, a TLS listener if `tls`;
/// `permit` is held until it ends.
///
/// Two phases, sized apart: everything up to the first write to the backend
/// (peek, lookup, dial, with their buffers and timers) runs in a boxed
/// future freed once the tunnel is established, so the task a tunnel
/// lives in for hours holds only the tunnel's own state.
///
/// A plain function returning an `async move` block, not an `async fn`:
/// an `async fn` moves its arguments into locals, so the task would hold
/// each of them twice for its whole life.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub(crate) fn serve(
    shared: Arc<Shared>,
    mut client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    tls: bool,
    permit: Permit,
) -> impl Future<Output = ()> + Send {
    async move {
        let _active = ActiveGuard::new(&shared);
        // Filled in place (a returned value would take a second slot in
        // this future); a rejection is recorded inside.
        let mut established = None;
        Box::pin(establish(
            &shared,
            &mut client,
            peer,
            local,
            tls,
            &mut established,
        ))
        .await;
        if let Some(tunnel) = &mut established {
            let ended = forward::tunnel(
                &client,
                &tunnel.backend.stream,
                shared.forwarding,
                shared.limits.idle_timeout,
                &shared.metrics.bytes,
                &mut tunnel.withdrawn,
            )
            .await;
            shared.metrics.tunnel_closed(ended.as_str());
            tracing::debug!(route = %tunnel.route, %peer, ended = ended.as_str(), "tunnel closed");
        }
        // Released with the connection's sockets.
        drop((client, permit));
    }
}

/// An established tunnel's backend side: what the forwarding phase needs.
struct Established {
    backend: Backend,
    withdrawn: Withdrawal,
    route: Arc<str>,
}

/// Peek, lookup, dial and first write, filling `out` with the tunnel to
/// run; left `None` when the connection ends here: rejected (recorded
/// once: counter and log line), or the backend went away during the first
/// write (a tunnel that ended in error).
async fn establish(
    shared: &Shared,
    client: &mut TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    tls: bool,
    out: &mut Option<Established>,
) {
    match dial(shared, client, peer, local, tls).await {
        Ok(established) => *out = established,
        Err((reject, sni)) => {
            shared
                .rejects
                .record(&shared.metrics, reject, peer, local, sni.as_deref());
        }
    }
}

async fn dial(
    shared: &Shared,
    client: &mut TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    tls: bool,
) -> Result<Option<Established>, (Reject, Option<Box<str>>)> {
    let limits = &shared.limits;
    let peeked = if tls {
        let p = peek::client_hello(
            client,
            limits.max_client_hello_bytes,
            limits.client_hello_timeout,
        )
        .await
        .map_err(|r| (r, None))?;
        shared.metrics.peek_seconds.observe(p.elapsed.as_secs_f64());
        shared.metrics.hello_bytes.observe(p.bytes.len() as f64);
        shared.metrics.alpn(p.alpn);
        Some(p)
    } else {
        None
    };
    let (hello, sni_owned) = match peeked {
        Some(p) => (Some(p.bytes), p.sni),
        None => (None, None),
    };
    let sni = sni_owned.as_deref();
    let fail = |r: Reject| (r, sni.map(Box::from));

    // The one snapshot of the table this connection reads, taken after the
    // peek (a stalled hello must not pin an old table), for the lookup and
    // the dial; released before the tunnel so a long tunnel does not
    // either.
    let live = shared.live.load_full();
    let route = match live.table.lookup(&local, sni) {
        Decision::Forward(route) => Arc::clone(route),
        Decision::Reject(reason) => return Err(fail(Reject::Route(reason))),
    };
    let withdrawn = shared.withdrawals.subscribe(&route.route.id);
    let backend = backend::connect(
        &route,
        &live.overlay,
        limits.connect_timeout,
        &shared.health,
        &shared.metrics,
        hello.is_some() || route.route.proxy_protocol,
    )
    .await
    .map_err(fail)?;
    drop(live);

    let first = first_write(route.route.proxy_protocol, peer, local, sni, hello);
    if !first.is_empty() {
        if forward::write_all(&backend.stream, &first).await.is_err() {
            shared.metrics.tunnel_closed(forward::Ended::Error.as_str());
            return Ok(None);
        }
        shared.metrics.bytes.to_backend.inc_by(first.len() as u64);
    }
    tracing::debug!(route = %route.route.id, %peer, backend = %backend.addr, "tunnel established");
    Ok(Some(Established {
        backend,
        withdrawn,
        route: Arc::clone(&route.route.id),
    }))
}

/// The PROXY v2 header (if the route asks) followed by the peeked bytes:
/// one buffer, so the backend gets the header in one write.
fn first_write(
    proxy: bool,
    peer: SocketAddr,
    local: SocketAddr,
    sni: Option<&str>,
    peeked: Option<Vec<u8>>,
) -> Vec<u8> {
    let peeked = peeked.unwrap_or_default();
    if !proxy {
        return peeked;
    }
    let mut out = Vec::with_capacity(proxy_v2::MAX_HEADER_LEN + peeked.len());
    proxy_v2::encode(peer, local, sni.map(str::as_bytes), &mut out);
    out.extend_from_slice(&peeked);
    out
}

/// Keeps `edge_connections_active` right on every exit path.
struct ActiveGuard<'a>(&'a Shared);

impl<'a> ActiveGuard<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.metrics.active.inc();
        ActiveGuard(shared)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.metrics.active.dec();
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tokio::net::{TcpListener, TcpStream};

    use crate::config::Config;
    use crate::server::Server;

    /// The future a connection's task holds for its whole life, idle
    /// tunnels included: memory per connection is this plus two socket
    /// registrations (docs/benchmarks.md, "Memory"). It was 2,632 bytes
    /// before the dial and each chunk were boxed, the peek phase split out
    /// and the idle wait made a `poll_read_ready`. A new field or an
    /// await on a large future shows here first. (Debug build; release is
    /// no larger.)
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let config = Config::parse("", Path::new("edge.toml")).unwrap();
        let server = Server::new(&config);
        let listener = TcpListener::bind("[::1]:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let _client = TcpStream::connect(local).await.unwrap();
        let (accepted, peer) = listener.accept().await.unwrap();
        let permit = server.shared.admission.admit(peer.ip()).unwrap();
        let task = super::serve(server.shared.clone(), accepted, peer, local, true, permit);
        let bytes = std::mem::size_of_val(&task);
        assert!(bytes <= 1_280, "a connection's future is {bytes} bytes");
    }
}
