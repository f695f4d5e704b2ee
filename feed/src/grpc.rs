//! `edge.v1.EventFeed` over a [`Feed`]: `Subscribe` sends the backlog in
//! pages, then new events as they commit; `ReportApplied` records the
//! node's cursor. The first message always goes out at once (possibly
//! without events), so a subscriber learns the head and feed_id at once.
//!
//! [`EventFeedService`] is public so a caller can wrap it in its own
//! `EventFeed` (the black-box tests inject transport faults that way) and
//! serve the wrapper with [`serve_service`].

use std::pin::Pin;
use std::sync::Arc;

use edge_proto::feed::{
    EventFeed, EventFeedServer, ReportAppliedRequest, ReportAppliedResponse, SubscribeRequest,
};
use edge_proto::v1;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::StreamExt;
use tonic::transport::ServerTlsConfig;
use tonic::{Request, Response, Status};

use crate::feed::Feed;
use crate::store::{AppliedReport, Rejected};

/// Largest message a stream sends (a page of big payloads).
const MAX_MESSAGE: usize = 256 << 20;

/// The `EventFeed` implementation over a [`Feed`].
#[derive(Debug)]
pub struct EventFeedService {
    feed: Arc<Feed>,
}

impl EventFeedService {
    pub fn new(feed: Arc<Feed>) -> EventFeedService {
        EventFeedService { feed }
    }
}

/// The stream `Subscribe` answers with.
pub type Batches = Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::EventBatch, Status>> + Send>>;

#[tonic::async_trait]
impl EventFeed for EventFeedService {
    type SubscribeStream = Batches;

    /// `event_types` is ignored: the feed serves whole aggregates of the
    /// served types, and a type filter could split an aggregate's sequence.
    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Batches>, Status> {
        let req = request.into_inner();
        tracing::debug!(node_id = %req.node_id, after = req.after, "subscribe");
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(stream(Arc::clone(&self.feed), req.after, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report_applied(
        &self,
        request: Request<ReportAppliedRequest>,
    ) -> Result<Response<ReportAppliedResponse>, Status> {
        let req = request.into_inner();
        let report = AppliedReport {
            node_id: req.node_id,
            event_id: req.event_id,
            rejected: req
                .rejected
                .into_iter()
                .map(|r| Rejected {
                    aggregate_type: r.aggregate_type,
                    aggregate_id: r.aggregate_id,
                    reason: r.reason,
                })
                .collect(),
        };
        self.feed
            .report_applied(&report)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(ReportAppliedResponse {}))
    }
}

/// Pages after `after` until caught up, then waits for a wake-up or the
/// fallback interval and reads again. A store failure, or a log rewritten
/// under the stream ([`crate::Store::generation`]), ends the stream with
/// UNAVAILABLE (the agent reconnects from its cursor).
async fn stream(feed: Arc<Feed>, mut after: u64, tx: mpsc::Sender<Result<v1::EventBatch, Status>>) {
    let mut wake = feed.changes();
    let generation = feed.store().generation();
    let mut first = true;
    loop {
        wake.borrow_and_update();
        if feed.store().generation() != generation {
            let _ = tx
                .send(Err(Status::unavailable(
                    "the event log was rewritten (restored or replaced): subscribe again",
                )))
                .await;
            return;
        }
        let batch = match feed.read(after, feed.options().page).await {
            Ok(b) => b,
            Err(e) => {
                let _ = tx.send(Err(Status::unavailable(e.to_string()))).await;
                return;
            }
        };
        // A full page may have more behind it; a short one was everything
        // up to this snapshot, so wait for the next wake-up.
        let more = batch.events.len() >= feed.options().page;
        if !batch.events.is_empty() || first {
            if let Some(last) = batch.events.last() {
                after = last.event_id;
            }
            if tx.send(Ok(to_proto(batch))).await.is_err() {
                return; // the client went away
            }
            first = false;
        }
        if more {
            continue;
        }
        tokio::select! {
            _ = Feed::nap(&mut wake, feed.options().fallback) => {}
            _ = tx.closed() => return,
        }
    }
}

fn to_proto(batch: route_model::EventBatch) -> v1::EventBatch {
    v1::EventBatch {
        head: batch.head,
        feed_id: batch.feed_id.unwrap_or_default(),
        events: batch
            .events
            .into_iter()
            .map(|e| v1::Event {
                event_id: e.event_id,
                occurred_at: e.occurred_at,
                aggregate_type: e.aggregate_type,
                aggregate_id: e.aggregate_id,
                aggregate_seq: e.aggregate_seq,
                event_type: e.event_type,
                payload_json: e.payload.to_string(),
            })
            .collect(),
    }
}

/// Small stream messages must not wait for Nagle and a delayed ACK.
fn nodelay(
    stream: std::io::Result<tokio::net::TcpStream>,
) -> std::io::Result<tokio::net::TcpStream> {
    let stream = stream?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Serves `EventFeed` on `listener` until the task is aborted. With `tls`,
/// clients must present a certificate the config's CA signed.
pub fn serve(
    feed: Arc<Feed>,
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
) -> Result<tokio::task::JoinHandle<()>, tonic::transport::Error> {
    serve_service(EventFeedService::new(feed), listener, tls)
}

/// [`serve`] with any `EventFeed` implementation, typically one that
/// wraps an [`EventFeedService`].
pub fn serve_service<S: EventFeed>(
    service: S,
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
) -> Result<tokio::task::JoinHandle<()>, tonic::transport::Error> {
    let service = EventFeedServer::new(service).max_encoding_message_size(MAX_MESSAGE);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let router = builder.add_service(service);
    Ok(tokio::spawn(async move {
        if let Err(e) = router
            .serve_with_incoming(TcpListenerStream::new(listener).map(nodelay))
            .await
        {
            tracing::error!(error = %e, "gRPC server stopped");
        }
    }))
}
