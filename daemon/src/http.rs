//! The accept loop of a small, local, read-only HTTP/1 server: the edge's
//! admin endpoints and the agent's `/metrics` + `/healthz`. Each service
//! supplies one function from request to response.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A response with a body held in memory.
pub type Reply = Response<Full<Bytes>>;

/// How long the loop pauses after a failed accept (descriptors exhausted):
/// an admin server must never spin a core the data plane needs.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `respond` on `listener` until the task is dropped.
pub async fn serve<F>(listener: TcpListener, respond: F)
where
    F: Fn(&Request<Incoming>) -> Reply + Send + Sync + 'static,
{
    let respond = Arc::new(respond);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            continue;
        };
        let respond = Arc::clone(&respond);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let reply = respond(&req);
                async move { Ok::<_, Infallible>(reply) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `status` with `body` as `content_type`.
pub fn reply(status: StatusCode, content_type: &str, body: String) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// The Prometheus text exposition format's content type.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";
