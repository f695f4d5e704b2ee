//! The local control API (`edge.v1.Control`) on a Unix socket, mode 0600:
//! edge-agent pushes whole route tables, the edge applies them through the
//! same path as SIGHUP and answers ACK, or NACK naming every rejected
//! object while the valid rest goes live.
//!
//! The socket is bound under a temporary name, chmodded to 0600, then
//! renamed into place, so the final path never exists with looser
//! permissions; each connection's peer is also checked with SO_PEERCRED
//! (the edge's own uid or root only), so a socket left in a looser
//! directory, or a descriptor passed on, does not open the API to others.
//!
//! A push is refused before it is parsed when its format is unknown or the
//! fence refuses it (FAILED_PRECONDITION); the JSON parse, the compile and
//! the fsync run on blocking threads, never on the runtime that moves
//! bytes. Every push is counted by outcome.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use edge_proto::control::{
    Control, ControlServer, PushRequest, PushResponse, Rejection, StatusRequest, StatusResponse,
};
use route_model::RoutingSpec;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::table_source::saved::{self, Fence};
use crate::table_source::{PushError, Pushed, Source};

/// The largest control message accepted or sent: 256 MiB. A route table
/// of a million routes is about 250 MB of JSON; anything larger is refused
/// by the decoder before it is buffered whole.
pub(crate) const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Binds the control socket with mode 0600.
pub(crate) fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let listener = bind_private(path)?;
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener)
}

/// Binds a Unix socket that only this user can connect to: bound under a
/// temporary name, chmodded to 0600, then renamed into place.
pub(crate) fn bind_private(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener = std::os::unix::net::UnixListener::bind(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)?;
    Ok(listener)
}

/// Serves the control API until `stop` resolves (then open connections are
/// told to go away, so a client reconnects to the socket path) or the task
/// is dropped.
pub(crate) async fn serve(
    listener: UnixListener,
    source: Arc<Source>,
    stop: impl std::future::Future<Output = ()> + Send,
) {
    let service = ControlServer::new(ControlService { source })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let own_uid = rustix::process::getuid().as_raw();
    let incoming = UnixListenerStream::new(listener).filter(move |conn| match conn {
        Ok(stream) => peer_allowed(stream, own_uid),
        Err(_) => true,
    });
    let result = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, stop)
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "control API stopped");
    }
}

/// Only this process's uid and root may use the API; others are logged
/// and their connection is closed.
fn peer_allowed(stream: &UnixStream, own_uid: u32) -> bool {
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == own_uid || cred.uid() == 0 => true,
        Ok(cred) => {
            tracing::warn!(
                uid = cred.uid(),
                pid = cred.pid(),
                "control socket: peer uid is neither the edge's nor root; connection refused"
            );
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "control socket: cannot read the peer's credentials; connection refused");
            false
        }
    }
}

#[derive(Debug)]
struct ControlService {
    source: Arc<Source>,
}

impl ControlService {
    fn refuse(&self, outcome: &str, status: Status) -> Status {
        self.source.app().shared.metrics.control_push(outcome);
        status
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn push(&self, request: Request<PushRequest>) -> Result<Response<PushResponse>, Status> {
        let request = request.into_inner();
        let fence = Fence {
            feed_id: request.feed_id,
            generation: request.generation,
            source_version: request.source_version,
        };
        if !saved::format_known(request.format) {
            tracing::warn!(
                format = request.format,
                "control push refused: unknown format"
            );
            return Err(self.refuse(
                "invalid",
                Status::failed_precondition(format!(
                    "unknown format {}: this edge reads format {} (and 0, meaning 1)",
                    request.format,
                    saved::FORMAT
                )),
            ));
        }
        // Cheap refusals before parsing what may be hundreds of MB.
        if let Err(e) = self.source.precheck(&fence).await {
            return Err(self.push_error(e));
        }
        let json = request.routing_json;
        // The JSON is kept until it is saved as pushed (then dropped, before
        // the compile), never serialised again from the parsed spec.
        let (parsed, json) = tokio::task::spawn_blocking(move || {
            let parsed = serde_json::from_str::<RoutingSpec>(&json);
            (parsed, json)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let routing = parsed.map_err(|e| {
            tracing::warn!(error = %e, "control push: routing_json does not parse");
            self.refuse(
                "invalid",
                Status::invalid_argument(format!("routing_json: {e}")),
            )
        })?;
        let applied = self
            .source
            .push(Pushed {
                fence: fence.clone(),
                routing: Arc::new(routing),
                json,
            })
            .await
            .map_err(|e| self.push_error(e))?;
        let rejected: Vec<Rejection> = applied
            .errors
            .iter()
            .map(|e| {
                let (object_type, object_id) = e.object();
                Rejection {
                    object_type: object_type.to_owned(),
                    object_id: object_id.to_owned(),
                    reason: e.kind().to_owned(),
                    message: e.to_string(),
                }
            })
            .collect();
        let ack = rejected.is_empty();
        self.source
            .app()
            .shared
            .metrics
            .control_push(if ack { "ack" } else { "nack" });
        tracing::info!(
            source_version = fence.source_version,
            generation = fence.generation,
            feed_id = fence.feed_id,
            table_version = applied.version,
            rejected = rejected.len(),
            "control push applied"
        );
        Ok(Response::new(PushResponse {
            ack,
            table_version: applied.version,
            source_version: fence.source_version,
            rejected,
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        if self.source.handing_over() {
            return Err(Status::unavailable(PushError::HandedOver.to_string()));
        }
        let shared = &self.source.app().shared;
        let live = shared.live.load();
        let fence = self.source.fence();
        Ok(Response::new(StatusResponse {
            table_version: live.table.version(),
            source_version: fence.source_version,
            routes: u32::try_from(live.table.routes().len()).unwrap_or(u32::MAX),
            listeners: u32::try_from(live.table.listeners().count()).unwrap_or(u32::MAX),
            ready: shared.ready(),
            rejected: u32::try_from(live.errors.len()).unwrap_or(u32::MAX),
            feed_id: fence.feed_id,
            generation: fence.generation,
            not_ready_reason: shared
                .not_synced()
                .map_or_else(String::new, |r| r.as_str().to_owned()),
        }))
    }
}

impl ControlService {
    /// Logs and counts a push that was not applied; its gRPC status.
    fn push_error(&self, e: PushError) -> Status {
        match e {
            PushError::Stale(stale) => {
                tracing::warn!(error = %stale, "control push refused");
                self.refuse("refused", Status::failed_precondition(stale.to_string()))
            }
            PushError::HandedOver => {
                tracing::info!("control push refused: this process has handed over to a new one");
                self.refuse("refused", Status::unavailable(e.to_string()))
            }
            PushError::Persist { .. } => {
                tracing::error!(error = %e, "control push not persisted");
                self.refuse("error", Status::unavailable(e.to_string()))
            }
        }
    }
}
