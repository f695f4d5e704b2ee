//! The polling fallback: `GET {poll}/events?after&limit&node_id` and
//! `POST {poll}/applied` (docs/event-contract.md), over HTTP/1.1, in clear
//! or over mTLS (tokio-rustls under the same hyper client).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use route_model::EventBatch;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::{chain, FeedError};
use crate::config::PollUrl;
use crate::reconcile::Rejected;

/// One whole exchange (connect, TLS, request, body).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest response body read: 64 MiB. A page of 1,000 events (the
/// default `poll_limit`) with route payloads is well under 1 MiB; a larger
/// body is refused instead of buffered (docs/event-contract.md).
pub const MAX_BODY_BYTES: usize = 64 << 20;

#[derive(Debug)]
pub struct PollFeed {
    url: PollUrl,
    tls: Option<Arc<rustls::ClientConfig>>,
    node_id: String,
    after: u64,
    limit: usize,
    interval: Duration,
    /// The last page was full: more is waiting, fetch without pausing.
    more: bool,
    first: bool,
}

impl PollFeed {
    pub fn new(
        url: PollUrl,
        tls: Option<Arc<rustls::ClientConfig>>,
        node_id: &str,
        after: u64,
        limit: usize,
        interval: Duration,
    ) -> PollFeed {
        PollFeed {
            url,
            tls,
            node_id: node_id.to_owned(),
            after,
            limit,
            interval,
            more: false,
            first: true,
        }
    }

    pub async fn next(&mut self) -> Result<EventBatch, FeedError> {
        if !self.first && !self.more {
            tokio::time::sleep(self.interval).await;
        }
        self.first = false;
        self.fetch().await
    }

    pub async fn ready_more(&mut self) -> Result<Option<EventBatch>, FeedError> {
        if self.more {
            self.fetch().await.map(Some)
        } else {
            Ok(None)
        }
    }

    async fn fetch(&mut self) -> Result<EventBatch, FeedError> {
        let path = format!(
            "{}/events?after={}&limit={}&node_id={}",
            self.url.prefix, self.after, self.limit, self.node_id
        );
        let body = request(&self.url, self.tls.as_ref(), Method::GET, &path, None).await?;
        let batch: EventBatch =
            serde_json::from_slice(&body).map_err(|e| self.error(&path, e.to_string()))?;
        if let Some(last) = batch.events.last() {
            self.after = last.event_id;
        }
        self.more = batch.events.len() >= self.limit;
        Ok(batch)
    }

    pub async fn report_applied(
        &mut self,
        node_id: &str,
        event_id: u64,
        rejected: &[Rejected],
    ) -> Result<(), FeedError> {
        let path = format!("{}/applied", self.url.prefix);
        let rejected: Vec<serde_json::Value> = rejected
            .iter()
            .map(|r| {
                serde_json::json!({"aggregate_type": r.aggregate_type,
                    "aggregate_id": r.aggregate_id, "reason": r.reason})
            })
            .collect();
        let body =
            serde_json::json!({ "node_id": node_id, "event_id": event_id, "rejected": rejected })
                .to_string();
        let tls = self.tls.as_ref();
        match request(&self.url, tls, Method::POST, &path, Some(body.into_bytes())).await {
            Ok(_) => Ok(()),
            Err(FeedError::Status { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn error(&self, path: &str, message: String) -> FeedError {
        FeedError::Http {
            url: self.url.full(path),
            message,
        }
    }
}

impl PollUrl {
    fn full(&self, path: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.authority)
    }

    /// The host part of the authority, for SNI and certificate checks.
    fn host(&self) -> &str {
        let a = self.authority.as_str();
        if let Some(rest) = a.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        a.rsplit_once(':').map_or(a, |(h, _)| h)
    }
}

/// One HTTP/1.1 request on a fresh connection (TLS when `tls` is given);
/// the body of a 2xx answer, at most [`MAX_BODY_BYTES`].
async fn request(
    url: &PollUrl,
    tls: Option<&Arc<rustls::ClientConfig>>,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Bytes, FeedError> {
    let full = url.full(path);
    let http = |message: String| FeedError::Http {
        url: full.clone(),
        message,
    };
    let exchange = async {
        let stream = TcpStream::connect(&url.authority)
            .await
            .map_err(|e| http(chain(&e)))?;
        match tls {
            None => exchange(url, &full, stream, method, path, body).await,
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(url.host().to_owned())
                    .map_err(|e| http(format!("server name {:?}: {e}", url.host())))?;
                let stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(name, stream)
                    .await
                    .map_err(|e| http(format!("TLS: {}", chain(&e))))?;
                exchange(url, &full, stream, method, path, body).await
            }
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| http("timed out".into()))?
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    url: &PollUrl,
    full: &str,
    stream: S,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Bytes, FeedError> {
    let http = |message: String| FeedError::Http {
        url: full.to_owned(),
        message,
    };
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(chain(&e)))?;
        // The connection's own error carries the cause (a TLS alert such
        // as CertificateRequired); the request only sees "not ready".
        let conn = tokio::spawn(conn);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &url.authority);
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| http(e.to_string()))?;
        let response = match sender.send_request(request).await {
            Ok(r) => r,
            Err(e) => {
                let cause = match tokio::time::timeout(Duration::from_secs(1), conn).await {
                    Ok(Ok(Err(conn_error))) => chain(&conn_error),
                    _ => chain(&e),
                };
                return Err(http(cause));
            }
        };
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| http(format!("body: {e} (at most {MAX_BODY_BYTES} bytes)")))?
            .to_bytes();
        if !status.is_success() {
            return Err(FeedError::Status {
                url: full.to_owned(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
            });
        }
        Ok(bytes)
    }
}
