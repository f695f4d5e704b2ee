//! `edge.v1.EventFeed` over the in-memory log: the backlog in pages, then
//! every new event as it is appended.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use edge_proto::feed::{
    EventFeed, EventFeedServer, ReportAppliedRequest, ReportAppliedResponse, SubscribeRequest,
};
use edge_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use super::{Feed, Server, Transport, PAGE};

struct Service {
    feed: Arc<Feed>,
}

type Batches = Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::EventBatch, Status>> + Send>>;

#[tonic::async_trait]
impl EventFeed for Service {
    type SubscribeStream = Batches;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Batches>, Status> {
        let req = request.into_inner();
        self.feed.record(Transport::Grpc, &req.node_id, req.after);
        if self.feed.log().grpc_unavailable {
            return Err(Status::unavailable("feed: gRPC switched off"));
        }
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(stream(Arc::clone(&self.feed), req, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report_applied(
        &self,
        request: Request<ReportAppliedRequest>,
    ) -> Result<Response<ReportAppliedResponse>, Status> {
        let req = request.into_inner();
        let rejected = req
            .rejected
            .into_iter()
            .map(|r| super::RejectedReport {
                aggregate_type: r.aggregate_type,
                aggregate_id: r.aggregate_id,
                reason: r.reason,
            })
            .collect();
        self.feed.record_rejected(&req.node_id, rejected);
        self.feed.report_applied(&req.node_id, req.event_id);
        Ok(Response::new(ReportAppliedResponse {}))
    }
}

/// Sends pages after `req.after`, then waits for appends. When there is
/// nothing after `req.after` at first, one empty batch says so (with the
/// head and `feed_id`: a client ahead of a restored log learns it at
/// once). While `fail_streams_after` is `Some(k)` (read before every
/// message, so it reaches streams already open), sends one event per
/// message and fails once k messages have gone out on this stream. A
/// truncated or replaced log ends the stream (UNAVAILABLE).
async fn stream(
    feed: Arc<Feed>,
    req: SubscribeRequest,
    tx: mpsc::Sender<Result<v1::EventBatch, Status>>,
) {
    let mut head_rx = feed.head.subscribe();
    let epoch = feed.epoch();
    let mut after = req.after;
    let mut sent = 0;
    let mut first = true;
    loop {
        if feed.epoch() != epoch {
            let _ = tx
                .send(Err(Status::unavailable("feed: the log was restored")))
                .await;
            return;
        }
        let fail_after = feed.log().fail_streams_after;
        let batch = feed.page(after, if fail_after.is_some() { 1 } else { PAGE });
        if batch.events.is_empty() && std::mem::take(&mut first) {
            let empty = v1::EventBatch {
                head: batch.head,
                events: Vec::new(),
                feed_id: batch.feed_id.clone().unwrap_or_default(),
            };
            if tx.send(Ok(empty)).await.is_err() {
                return;
            }
        }
        first = false;
        if let Some(last) = batch.events.last() {
            after = last.event_id;
            if fail_after.is_some_and(|k| sent >= k) {
                let _ = tx
                    .send(Err(Status::unavailable(
                        "feed: stream cut (fault injection)",
                    )))
                    .await;
                return;
            }
            let events = batch
                .events
                .into_iter()
                .filter(|e| req.event_types.is_empty() || req.event_types.contains(&e.event_type))
                .map(to_proto)
                .collect();
            if tx
                .send(Ok(v1::EventBatch {
                    head: batch.head,
                    events,
                    feed_id: batch.feed_id.unwrap_or_default(),
                }))
                .await
                .is_err()
            {
                return; // the client went away
            }
            sent += 1;
            continue;
        }
        // Caught up: sleep until the head moves (or the log is restored).
        if head_rx.changed().await.is_err() {
            return;
        }
    }
}

/// Small stream messages must not wait for Nagle and a delayed ACK
/// (a 40 ms stall per event otherwise).
fn nodelay(
    stream: std::io::Result<tokio::net::TcpStream>,
) -> std::io::Result<tokio::net::TcpStream> {
    let stream = stream?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn to_proto(e: route_model::Event) -> v1::Event {
    v1::Event {
        event_id: e.event_id,
        occurred_at: e.occurred_at,
        aggregate_type: e.aggregate_type,
        aggregate_id: e.aggregate_id,
        aggregate_seq: e.aggregate_seq,
        event_type: e.event_type,
        payload_json: e.payload.to_string(),
    }
}

/// Serves `EventFeed` on `addr` (port 0: any) until the server is dropped.
pub async fn serve_grpc(feed: Arc<Feed>, addr: SocketAddr) -> Server {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind the gRPC feed");
    let addr = listener.local_addr().expect("local addr");
    let service = EventFeedServer::new(Service { feed }).max_encoding_message_size(256 << 20);
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener).map(nodelay))
            .await;
    });
    Server { addr, task }
}

/// [`serve_grpc`] over TLS that requires a client certificate signed by
/// the CA of `tls` (ALPN h2). A client without one is dropped in the
/// handshake.
pub async fn serve_grpc_tls(
    feed: Arc<Feed>,
    addr: SocketAddr,
    tls: &super::tls::FeedServerTls,
) -> Server {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind the gRPC feed");
    let addr = listener.local_addr().expect("local addr");
    let incoming = super::tls::accept(listener, tls.config(&[b"h2"]));
    let service = EventFeedServer::new(Service { feed }).max_encoding_message_size(256 << 20);
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming.map(Ok::<_, std::io::Error>))
            .await;
    });
    Server { addr, task }
}
