//! edge-feed's servers over the test log, with the transport's faults
//! around them: every `Subscribe` and `GET /events` recorded, `Subscribe`
//! refused while gRPC is switched off, and streams cut after k messages.
//! The protocol itself is edge-feed's (`EventFeedService`, `respond`).

use std::net::SocketAddr;
use std::sync::Arc;

use edge_feed::grpc::{Batches, EventFeedService};
use edge_feed::{FeedOptions, Store};
use edge_proto::feed::{EventFeed, ReportAppliedRequest, ReportAppliedResponse, SubscribeRequest};
use edge_proto::v1;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Response, Status};

use super::tls::FeedServerTls;
use super::{Feed, Transport, PAGE};

/// A running server, stopped when dropped (open streams end when their
/// client leaves or the log is rewritten).
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// edge-feed's protocol core over the test log, as a server runs it.
fn protocol(feed: &Arc<Feed>) -> Arc<edge_feed::Feed> {
    let store: Arc<dyn Store> = feed.clone();
    edge_feed::Feed::new(
        store,
        FeedOptions {
            page: PAGE,
            ..FeedOptions::default()
        },
    )
}

async fn bind(addr: SocketAddr) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind(addr).await.expect("bind the feed");
    let addr = listener.local_addr().expect("local addr");
    (listener, addr)
}

/// edge-feed's `EventFeed` with the test log's transport faults.
struct Faulty {
    inner: EventFeedService,
    feed: Arc<Feed>,
}

#[tonic::async_trait]
impl EventFeed for Faulty {
    type SubscribeStream = Batches;

    async fn subscribe(
        &self,
        request: tonic::Request<SubscribeRequest>,
    ) -> Result<Response<Batches>, Status> {
        let req = request.get_ref();
        self.feed.record(Transport::Grpc, &req.node_id, req.after);
        if self.feed.grpc_unavailable() {
            return Err(Status::unavailable("feed: gRPC switched off"));
        }
        let inner = self.inner.subscribe(request).await?.into_inner();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(cut(Arc::clone(&self.feed), inner, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report_applied(
        &self,
        request: tonic::Request<ReportAppliedRequest>,
    ) -> Result<Response<ReportAppliedResponse>, Status> {
        self.inner.report_applied(request).await
    }
}

/// Forwards edge-feed's stream. While `fail_streams_after` is `Some(k)`
/// (read before every message, so it reaches streams already open), a
/// batch goes out one event per message, and the stream fails with
/// UNAVAILABLE instead of sending an event once k messages have gone out.
async fn cut(
    feed: Arc<Feed>,
    mut inner: Batches,
    tx: mpsc::Sender<Result<v1::EventBatch, Status>>,
) {
    let mut sent = 0;
    while let Some(item) = inner.next().await {
        let batch = match item {
            Ok(batch) if !batch.events.is_empty() && feed.stream_limit().is_some() => batch,
            other => {
                if tx.send(other).await.is_err() {
                    return;
                }
                continue;
            }
        };
        for event in batch.events {
            if feed.stream_limit().is_some_and(|k| sent >= k) {
                let cut = Status::unavailable("feed: stream cut (fault injection)");
                let _ = tx.send(Err(cut)).await;
                return;
            }
            let one = v1::EventBatch {
                head: batch.head,
                events: vec![event],
                feed_id: batch.feed_id.clone(),
            };
            if tx.send(Ok(one)).await.is_err() {
                return;
            }
            sent += 1;
        }
    }
}

async fn grpc(
    feed: Arc<Feed>,
    addr: SocketAddr,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> Server {
    let (listener, addr) = bind(addr).await;
    let service = Faulty {
        inner: EventFeedService::new(protocol(&feed)),
        feed,
    };
    let task = edge_feed::grpc::serve_service(service, listener, tls).expect("gRPC feed server");
    Server { addr, task }
}

/// Serves `EventFeed` on `addr` (port 0: any) until the server is dropped.
pub async fn serve_grpc(feed: Arc<Feed>, addr: SocketAddr) -> Server {
    grpc(feed, addr, None).await
}

/// [`serve_grpc`] over TLS that requires a client certificate signed by
/// the client CA of `tls`.
pub async fn serve_grpc_tls(feed: Arc<Feed>, addr: SocketAddr, tls: &FeedServerTls) -> Server {
    let config = tls.files().grpc_config().expect("gRPC TLS config");
    grpc(feed, addr, Some(config)).await
}

/// `node_id` and `after` of a `GET /events` query (absent: "" and 0).
fn poll_of(query: &str) -> (String, u64) {
    let (mut node, mut after) = (String::new(), 0);
    for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
        match k {
            "node_id" => node = v.to_owned(),
            "after" => after = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    (node, after)
}

async fn http(feed: Arc<Feed>, addr: SocketAddr, tls: Option<tokio_rustls::TlsAcceptor>) -> Server {
    let (listener, addr) = bind(addr).await;
    let protocol = protocol(&feed);
    let task = edge_feed::http::serve_with(listener, tls, move |req| {
        if req.method() == hyper::Method::GET && req.uri().path() == "/events" {
            let (node, after) = poll_of(req.uri().query().unwrap_or(""));
            feed.record(Transport::Poll, &node, after);
        }
        let protocol = Arc::clone(&protocol);
        async move { edge_feed::http::respond(&protocol, req).await }
    });
    Server { addr, task }
}

/// Serves the polling API on `addr` (port 0: any) until dropped.
pub async fn serve_http(feed: Arc<Feed>, addr: SocketAddr) -> Server {
    http(feed, addr, None).await
}

/// [`serve_http`] over TLS that requires a client certificate signed by
/// the client CA of `tls`.
pub async fn serve_http_tls(feed: Arc<Feed>, addr: SocketAddr, tls: &FeedServerTls) -> Server {
    let config = tls.files().http_config().expect("HTTP TLS config");
    http(feed, addr, Some(tokio_rustls::TlsAcceptor::from(config))).await
}
