//! The polling fallback: `GET {poll}/events?after&limit&node_id` and
//! `POST {poll}/applied` (contract §2), over plain HTTP/1.1.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use route_model::EventBatch;
use tokio::net::TcpStream;

use super::FeedError;
use crate::config::PollUrl;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct PollFeed {
    url: PollUrl,
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
        node_id: &str,
        after: u64,
        limit: usize,
        interval: Duration,
    ) -> PollFeed {
        PollFeed {
            url,
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
        let body = request(&self.url, Method::GET, &path, None).await?;
        let batch: EventBatch =
            serde_json::from_slice(&body).map_err(|e| self.error(&path, e.to_string()))?;
        if let Some(last) = batch.events.last() {
            self.after = last.event_id;
        }
        self.more = batch.events.len() >= self.limit;
        Ok(batch)
    }

    pub async fn report_applied(&mut self, node_id: &str, event_id: u64) -> Result<(), FeedError> {
        let path = format!("{}/applied", self.url.prefix);
        let body = serde_json::json!({ "node_id": node_id, "event_id": event_id }).to_string();
        match request(&self.url, Method::POST, &path, Some(body.into_bytes())).await {
            Ok(_) => Ok(()),
            Err(FeedError::Status { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn error(&self, path: &str, message: String) -> FeedError {
        FeedError::Http {
            url: format!("http://{}{path}", self.url.authority),
            message,
        }
    }
}

/// One HTTP/1.1 request on a fresh connection; the body of a 2xx answer.
async fn request(
    url: &PollUrl,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Bytes, FeedError> {
    let full = format!("http://{}{path}", url.authority);
    let http = |message: String| FeedError::Http {
        url: full.clone(),
        message,
    };
    let exchange = async {
        let stream = TcpStream::connect(&url.authority)
            .await
            .map_err(|e| http(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(e.to_string()))?;
        tokio::spawn(conn);
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
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| http(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| http(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(FeedError::Status {
                url: full.clone(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
            });
        }
        Ok(bytes)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| http("timed out".into()))?
}
