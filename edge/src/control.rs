//! The local control API (`edge.v1.Control`) on a Unix socket, mode 0600:
//! edge-agent pushes whole route tables, the edge applies them through the
//! same path as SIGHUP and answers ACK, or NACK naming every rejected
//! object while the valid rest goes live.
//!
//! The socket is bound under a temporary name, chmodded to 0600, then
//! renamed into place, so the final path never exists with looser
//! permissions.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use edge_proto::control::{
    Control, ControlServer, PushRequest, PushResponse, Rejection, StatusRequest, StatusResponse,
};
use route_model::RoutingSpec;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use crate::source::{Pushed, Source};

/// Tables of a million routes are hundreds of MB of JSON.
const MAX_PUSH_BYTES: usize = 1 << 30;

/// Binds the control socket with mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let listener = bind_private(path)?;
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener)
}

/// Binds a Unix socket that only this user can connect to: bound under a
/// temporary name, chmodded to 0600, then renamed into place.
pub fn bind_private(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
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

/// Serves the control API until the task is dropped.
pub async fn serve(listener: UnixListener, source: Arc<Source>) {
    let service = ControlServer::new(ControlService { source })
        .max_decoding_message_size(MAX_PUSH_BYTES)
        .max_encoding_message_size(MAX_PUSH_BYTES);
    let result = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(UnixListenerStream::new(listener))
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "control API stopped");
    }
}

#[derive(Debug)]
struct ControlService {
    source: Arc<Source>,
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn push(&self, request: Request<PushRequest>) -> Result<Response<PushResponse>, Status> {
        let request = request.into_inner();
        let routing: RoutingSpec = serde_json::from_str(&request.routing_json).map_err(|e| {
            tracing::warn!(error = %e, "control push: routing_json does not parse");
            Status::invalid_argument(format!("routing_json: {e}"))
        })?;
        let source_version = request.source_version;
        let applied = self
            .source
            .push(Pushed {
                source_version,
                routing,
            })
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "control push not persisted");
                Status::unavailable(e.to_string())
            })?;
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
        tracing::info!(
            source_version,
            table_version = applied.version,
            rejected = rejected.len(),
            "control push applied"
        );
        Ok(Response::new(PushResponse {
            ack: rejected.is_empty(),
            table_version: applied.version,
            source_version,
            rejected,
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let shared = &self.source.app().shared;
        let live = shared.live.load();
        Ok(Response::new(StatusResponse {
            table_version: live.table.version(),
            source_version: self.source.source_version().await,
            routes: u32::try_from(live.table.routes().len()).unwrap_or(u32::MAX),
            listeners: u32::try_from(live.table.listeners().count()).unwrap_or(u32::MAX),
            ready: shared.ready(),
            rejected: u32::try_from(live.errors.len()).unwrap_or(u32::MAX),
            ..StatusResponse::default()
        }))
    }
}
