//! `edge.v1.EventFeed/Subscribe` as a server stream of event batches.

use std::time::Duration;

use edge_proto::feed::{EventFeedClient, ReportAppliedRequest, SubscribeRequest};
use edge_proto::v1;
use route_model::{Event, EventBatch};
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

use super::tls::FeedTls;
use super::{FeedError, CONNECT_TIMEOUT};
use crate::reconcile::Rejected;

/// The largest decoded gRPC message accepted: 64 MiB. A batch of the
/// edge-feed's page of 500 events is well under 1 MiB; a feed that sends
/// more in one message is cut off instead of growing the agent without
/// bound (docs/event-contract.md).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

pub struct GrpcFeed {
    client: EventFeedClient<Channel>,
    stream: Streaming<v1::EventBatch>,
}

impl std::fmt::Debug for GrpcFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrpcFeed")
    }
}

impl GrpcFeed {
    /// Connects and opens `Subscribe(after, node_id)`.
    /// Connects (over mTLS when `tls` is given) and opens
    /// `Subscribe(after, node_id)`, all within [`CONNECT_TIMEOUT`].
    pub async fn subscribe(
        endpoint: &str,
        tls: Option<&FeedTls>,
        node_id: &str,
        after: u64,
    ) -> Result<GrpcFeed, FeedError> {
        let open = async {
            let connect = |source| FeedError::Connect {
                endpoint: endpoint.to_owned(),
                source,
            };
            let mut builder = Endpoint::from_shared(endpoint.to_owned())
                .map_err(connect)?
                .connect_timeout(CONNECT_TIMEOUT)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5));
            if let Some(tls) = tls {
                builder = builder.tls_config(tls.grpc()).map_err(connect)?;
            }
            let channel = builder.connect().await.map_err(connect)?;
            let mut client =
                EventFeedClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
            let request = SubscribeRequest {
                after,
                node_id: node_id.to_owned(),
                event_types: Vec::new(),
            };
            let stream = client.subscribe(request).await?.into_inner();
            Ok(GrpcFeed { client, stream })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, open)
            .await
            .map_err(|_| FeedError::Timeout {
                what: "gRPC subscribe",
                after: CONNECT_TIMEOUT,
            })?
    }

    pub async fn next(&mut self) -> Result<EventBatch, FeedError> {
        match self.stream.message().await? {
            Some(batch) => Ok(convert(batch)),
            None => Err(FeedError::Ended),
        }
    }

    pub async fn ready_more(&mut self) -> Result<Option<EventBatch>, FeedError> {
        // A zero timeout polls the message future once: a batch already
        // received is returned, nothing is waited for.
        match tokio::time::timeout(Duration::ZERO, self.stream.message()).await {
            Err(_) => Ok(None),
            Ok(Ok(Some(batch))) => Ok(Some(convert(batch))),
            Ok(Ok(None)) => Err(FeedError::Ended),
            Ok(Err(status)) => Err(status.into()),
        }
    }

    pub async fn report_applied(
        &mut self,
        node_id: &str,
        event_id: u64,
        rejected: &[Rejected],
    ) -> Result<(), FeedError> {
        let request = ReportAppliedRequest {
            node_id: node_id.to_owned(),
            event_id,
            rejected: rejected
                .iter()
                .map(|r| v1::AppliedRejection {
                    aggregate_type: r.aggregate_type.clone(),
                    aggregate_id: r.aggregate_id.clone(),
                    reason: r.reason.clone(),
                })
                .collect(),
        };
        match self.client.report_applied(request).await {
            Ok(_) => Ok(()),
            // A feed that does not implement it is not an error (contract §2).
            Err(s) if s.code() == tonic::Code::Unimplemented => Ok(()),
            Err(s) => Err(s.into()),
        }
    }
}

fn convert(batch: v1::EventBatch) -> EventBatch {
    EventBatch {
        head: batch.head,
        events: batch.events.into_iter().map(event).collect(),
        feed_id: Some(batch.feed_id).filter(|id| !id.is_empty()),
    }
}

/// A payload that is not JSON is kept as a string: the materialiser then
/// records the event as invalid, with its sequence, instead of losing it.
fn event(e: v1::Event) -> Event {
    let payload =
        serde_json::from_str(&e.payload_json).unwrap_or(serde_json::Value::String(e.payload_json));
    Event {
        event_id: e.event_id,
        occurred_at: e.occurred_at,
        aggregate_type: e.aggregate_type,
        aggregate_id: e.aggregate_id,
        aggregate_seq: e.aggregate_seq,
        event_type: e.event_type,
        payload,
    }
}
