//! The path of one client connection, from accept to the end of its tunnel:
//! peek (TLS listeners only), look up in one table snapshot, dial a backend,
//! send the PROXY v2 header and the peeked bytes in one write, then forward.
//!
//! Every failure before forwarding closes the client without a byte and is
//! recorded once (counter + rate-limited log line) by [`crate::reject`].

use std::net::SocketAddr;
use std::sync::Arc;

use route_model::Decision;
use tokio::net::TcpStream;

use crate::admission::Permit;
use crate::backend;
use crate::forward::{self, ByteCounters};
use crate::peek;
use crate::proxy_v2;
use crate::reject::Reject;
use crate::shared::Shared;

/// Serves one connection accepted on `local`, a TLS listener if `tls`;
/// `permit` is held until it ends.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    mut client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    tls: bool,
    permit: Permit,
) {
    let _active = ActiveGuard::new(&shared);
    let _permit = permit;
    if let Err((reject, sni)) = route_and_forward(&shared, &mut client, peer, local, tls).await {
        shared
            .rejects
            .record(&shared.metrics, reject, peer, local, sni.as_deref());
    }
}

async fn route_and_forward(
    shared: &Shared,
    client: &mut TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    tls: bool,
) -> Result<(), (Reject, Option<Box<str>>)> {
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
    // Boxed: the dial's state (health selection, failover, the connect
    // timeout) is the largest of the connection's, and would otherwise
    // size the task for its whole life, idle tunnel or stalled hello.
    let backend = Box::pin(backend::connect(
        &route,
        &live.overlay,
        limits.connect_timeout,
        &shared.health,
        &shared.metrics,
        hello.is_some() || route.route.proxy_protocol,
    ))
    .await
    .map_err(fail)?;
    drop(live);

    let first = first_write(route.route.proxy_protocol, peer, local, sni, hello);
    if !first.is_empty() {
        if forward::write_all(&backend.stream, &first).await.is_err() {
            shared.metrics.tunnel_closed(forward::Ended::Error.as_str());
            return Ok(());
        }
        shared.metrics.bytes_to_backend.inc_by(first.len() as u64);
    }
    drop(first);
    tracing::debug!(route = %route.route.id, %peer, backend = %backend.addr, "tunnel established");

    let counters = ByteCounters {
        to_backend: shared.metrics.bytes_to_backend.clone(),
        to_client: shared.metrics.bytes_to_client.clone(),
        spliced: shared.metrics.bytes_spliced.clone(),
    };
    let ended = forward::tunnel(
        client,
        &backend.stream,
        shared.forwarding,
        limits.idle_timeout,
        &counters,
        withdrawn,
    )
    .await;
    shared.metrics.tunnel_closed(ended.as_str());
    tracing::debug!(route = %route.route.id, %peer, ended = ended.as_str(), "tunnel closed");
    Ok(())
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
