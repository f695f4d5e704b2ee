//! The edge's control API (`edge.v1.Control`) driven directly over its
//! Unix socket with a tonic client, as edge-agent does, so tests of the
//! edge's side do not depend on the agent.

use std::path::{Path, PathBuf};

use edge_proto::control::{
    ControlClient, PushRequest, PushResponse, StatusRequest, StatusResponse,
};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Big enough for the largest table a test pushes.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// One push: a table in the shapes of edge.toml and its fence.
#[derive(Debug, Clone)]
pub struct Push {
    pub routing: serde_json::Value,
    pub feed_id: String,
    pub generation: u64,
    pub source_version: u64,
    pub format: u32,
}

impl Push {
    /// A format-1 push of `routing` from feed `"feed-a"`.
    pub fn new(routing: serde_json::Value, generation: u64, source_version: u64) -> Push {
        Push {
            routing,
            feed_id: "feed-a".into(),
            generation,
            source_version,
            format: 1,
        }
    }

    pub fn format(mut self, format: u32) -> Push {
        self.format = format;
        self
    }
}

/// A client of one edge's control socket.
#[derive(Debug, Clone)]
pub struct Control {
    path: PathBuf,
}

impl Control {
    pub fn new(path: &Path) -> Control {
        Control {
            path: path.to_owned(),
        }
    }

    /// A new connection (a fresh one each time, as after a reconnect).
    pub async fn connect(&self) -> Result<ControlClient<Channel>, tonic::transport::Error> {
        let path = self.path.clone();
        // The URI is required by the API and ignored by the connector.
        let channel =
            Endpoint::from_static("http://edge.control")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
                .await?;
        Ok(ControlClient::new(channel)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
            .max_decoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Pushes on a new connection; a connect failure is a status too.
    pub async fn push(&self, push: &Push) -> Result<PushResponse, tonic::Status> {
        let mut client = self
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
        push_on(&mut client, push).await
    }

    pub async fn status(&self) -> Result<StatusResponse, tonic::Status> {
        let mut client = self
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
        Ok(client.status(StatusRequest {}).await?.into_inner())
    }
}

/// Pushes on an open connection.
pub async fn push_on(
    client: &mut ControlClient<Channel>,
    push: &Push,
) -> Result<PushResponse, tonic::Status> {
    let request = PushRequest {
        source_version: push.source_version,
        routing_json: push.routing.to_string(),
        format: push.format,
        feed_id: push.feed_id.clone(),
        generation: push.generation,
    };
    Ok(client.push(request).await?.into_inner())
}

/// A routing document with one env on `[::1]` and one instance on `::1`,
/// and a TLS route per `(id, hostname, listen_port)`.
pub fn routing(routes: &[(&str, &str, u16)], backend_port: u16) -> serde_json::Value {
    let routes: Vec<serde_json::Value> = routes
        .iter()
        .map(|(id, hostname, port)| {
            serde_json::json!({
                "id": id, "env": "acme/shop/prod", "hostname": hostname,
                "listen_port": port, "protocol": "tls_passthrough",
                "backend_process_type": "web", "backend_port": backend_port,
            })
        })
        .collect();
    serde_json::json!({
        "envs": [{"id": "acme/shop/prod", "ipv6": ["::1"], "ports": []}],
        "instances": [{"id": "i-1", "env": "acme/shop/prod", "process_type": "web", "addr": "::1"}],
        "routes": routes,
    })
}

impl Control {
    /// A client whose connection is made once and never remade: a call
    /// after the server dropped it fails instead of reaching whoever owns
    /// the socket path by then.
    pub async fn connect_once(&self) -> ControlClient<Channel> {
        let path = self.path.clone();
        let used = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let channel = Endpoint::from_static("http://edge.control")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let (path, used) = (path.clone(), used.clone());
                async move {
                    if used.swap(true, std::sync::atomic::Ordering::SeqCst) {
                        return Err(std::io::Error::other("this test client connects once"));
                    }
                    Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                }
            }))
            .await
            .expect("connect to the control socket");
        ControlClient::new(channel)
    }

    /// Waits until the socket answers a status call.
    pub async fn wait_up(&self) -> StatusResponse {
        let deadline = tokio::time::Instant::now() + crate::PATIENCE;
        loop {
            match self.status().await {
                Ok(status) => return status,
                Err(e) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "control socket {} not answering: {e}",
                    self.path.display()
                ),
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// The route ids of a `/routes` document, sorted.
pub fn route_ids(routes_json: &str) -> Vec<String> {
    let doc: serde_json::Value = serde_json::from_str(routes_json).expect("/routes is JSON");
    let mut ids: Vec<String> = doc["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .flat_map(|l| l["routes"].as_array().expect("routes").clone())
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}
