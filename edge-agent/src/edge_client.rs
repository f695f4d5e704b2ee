//! The edge's control API (`edge.v1.Control`) over its Unix socket.
//!
//! Every call has a deadline, and any transport failure (connect error,
//! timeout, UNAVAILABLE, UNKNOWN, CANCELLED, DEADLINE_EXCEEDED) drops the
//! cached HTTP/2 channel: after an upgrade handoff the new edge process
//! owns the socket path, and the next call must reach it instead of the
//! draining old process that the cached connection still points at.

use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_proto::control::{
    ControlClient, PushRequest, PushResponse, StatusRequest, StatusResponse,
};
use hyper_util::rt::TokioIo;
use route_model::RoutingSpec;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::feed::chain;
use crate::reconcile::PushPlan;

/// A table of a million routes is a few hundred MiB of JSON.
const MAX_MESSAGE_BYTES: usize = 1 << 30;
/// Connecting to the local socket.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A push: the edge compiles the whole table (about 1 s per million
/// routes) and binds its listeners.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(60);
/// A status call.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// How a refusal by the fence starts (FAILED_PRECONDITION).
const STALE_PUSH: &str = "stale push";

/// Why the edge did not apply a push or answer a status call.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("{}", chain(source))]
    Connect { source: tonic::transport::Error },
    #[error("{what} timed out after {after:?}")]
    Timeout { what: &'static str, after: Duration },
    /// The edge serves a newer fence (another agent, or a newer
    /// generation): resynchronise.
    #[error("refused: {0}")]
    Refused(String),
    #[error("{:?}: {}", .0.code(), .0.message())]
    Call(tonic::Status),
}

impl EdgeError {
    /// The edge could not be reached (as opposed to answering an error).
    pub fn unreachable(&self) -> bool {
        match self {
            EdgeError::Connect { .. } | EdgeError::Timeout { .. } => true,
            EdgeError::Refused(_) => false,
            EdgeError::Call(s) => transport(s.code()),
        }
    }
}

/// A lazily (re)connected client.
#[derive(Debug)]
pub struct EdgeClient {
    path: PathBuf,
    client: Option<ControlClient<Channel>>,
}

impl EdgeClient {
    pub fn new(path: &Path) -> EdgeClient {
        EdgeClient {
            path: path.to_owned(),
            client: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn client(&mut self) -> Result<ControlClient<Channel>, EdgeError> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let path = self.path.clone();
        // The URI is required by the API and ignored by the connector.
        let endpoint =
            Endpoint::from_static("http://edge.control").connect_timeout(CONNECT_TIMEOUT);
        let connect = endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }));
        let channel = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| EdgeError::Timeout {
                what: "connect",
                after: CONNECT_TIMEOUT,
            })?
            .map_err(|source| EdgeError::Connect { source })?;
        let client = ControlClient::new(channel)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Pushes the whole routing spec with its fence.
    pub async fn push(
        &mut self,
        plan: &PushPlan,
        spec: &RoutingSpec,
    ) -> Result<PushResponse, EdgeError> {
        let routing_json = serde_json::to_string(spec).expect("a RoutingSpec always serialises");
        let request = PushRequest {
            source_version: plan.source_version,
            routing_json,
            format: plan.format,
            feed_id: plan.feed_id.clone().unwrap_or_default(),
            generation: plan.generation,
        };
        let result = async {
            let mut client = self.client().await?;
            tokio::time::timeout(PUSH_TIMEOUT, client.push(request))
                .await
                .map_err(|_| EdgeError::Timeout {
                    what: "push",
                    after: PUSH_TIMEOUT,
                })?
                .map_err(classify)
        }
        .await;
        self.keep_if_ok(result)
    }

    pub async fn status(&mut self) -> Result<StatusResponse, EdgeError> {
        let result = async {
            let mut client = self.client().await?;
            tokio::time::timeout(STATUS_TIMEOUT, client.status(StatusRequest {}))
                .await
                .map_err(|_| EdgeError::Timeout {
                    what: "status",
                    after: STATUS_TIMEOUT,
                })?
                .map_err(classify)
        }
        .await;
        self.keep_if_ok(result)
    }

    /// Drops the channel after a transport failure so the next call
    /// reconnects to the socket path.
    fn keep_if_ok<T>(
        &mut self,
        result: Result<tonic::Response<T>, EdgeError>,
    ) -> Result<T, EdgeError> {
        match result {
            Ok(r) => Ok(r.into_inner()),
            Err(e) => {
                if e.unreachable() {
                    self.client = None;
                }
                Err(e)
            }
        }
    }
}

fn classify(status: tonic::Status) -> EdgeError {
    if status.code() == tonic::Code::FailedPrecondition && status.message().starts_with(STALE_PUSH)
    {
        EdgeError::Refused(status.message().to_owned())
    } else {
        EdgeError::Call(status)
    }
}

/// Codes that mean the call did not reach a live edge (or its answer was
/// lost): the channel is not to be trusted any more.
fn transport(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_push_is_a_refusal_and_transport_codes_drop_the_channel() {
        let refused = classify(tonic::Status::failed_precondition(
            "stale push: generation 1 < 2",
        ));
        assert!(matches!(refused, EdgeError::Refused(_)));
        assert!(!refused.unreachable());
        let format = classify(tonic::Status::failed_precondition("format 9 unknown"));
        assert!(matches!(format, EdgeError::Call(_)));
        assert!(!format.unreachable());
        for status in [
            tonic::Status::unavailable("x"),
            tonic::Status::unknown("x"),
            tonic::Status::cancelled("x"),
            tonic::Status::deadline_exceeded("x"),
        ] {
            assert!(classify(status).unreachable());
        }
    }

    #[tokio::test]
    async fn a_missing_socket_is_unreachable_within_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let mut client = EdgeClient::new(&dir.path().join("none.sock"));
        let e = client.status().await.unwrap_err();
        assert!(e.unreachable(), "{e}");
        assert!(client.client.is_none());
    }
}
