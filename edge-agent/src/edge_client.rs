//! The edge's control API (`edge.v1.Control`) over its Unix socket.

use std::path::{Path, PathBuf};

use edge_proto::control::{
    ControlClient, PushRequest, PushResponse, StatusRequest, StatusResponse,
};
use hyper_util::rt::TokioIo;
use route_model::RoutingSpec;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// Why the edge did not answer a push or a status call.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("control socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: tonic::transport::Error,
    },
    #[error("edge: {0}")]
    Call(#[from] tonic::Status),
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

    async fn client(&mut self) -> Result<&mut ControlClient<Channel>, EdgeError> {
        if self.client.is_none() {
            let path = self.path.clone();
            // The URI is required by the API and ignored by the connector.
            let channel = Endpoint::from_static("http://edge.control")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
                .await
                .map_err(|source| EdgeError::Connect {
                    path: self.path.clone(),
                    source,
                })?;
            self.client = Some(
                ControlClient::new(channel)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            );
        }
        Ok(self.client.as_mut().expect("set above"))
    }

    /// Pushes the whole routing spec as of `source_version`.
    pub async fn push(
        &mut self,
        source_version: u64,
        spec: &RoutingSpec,
    ) -> Result<PushResponse, EdgeError> {
        let routing_json = serde_json::to_string(spec).expect("a RoutingSpec always serialises");
        let request = PushRequest {
            source_version,
            routing_json,
            ..PushRequest::default()
        };
        let result = self.client().await?.push(request).await;
        self.keep_if_ok(result)
    }

    pub async fn status(&mut self) -> Result<StatusResponse, EdgeError> {
        let result = self.client().await?.status(StatusRequest {}).await;
        self.keep_if_ok(result)
    }

    /// Drops the channel after a transport failure so the next call
    /// reconnects (the edge may have restarted).
    fn keep_if_ok<T>(
        &mut self,
        result: Result<tonic::Response<T>, tonic::Status>,
    ) -> Result<T, EdgeError> {
        match result {
            Ok(r) => Ok(r.into_inner()),
            Err(status) => {
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown
                ) {
                    self.client = None;
                }
                Err(status.into())
            }
        }
    }
}
