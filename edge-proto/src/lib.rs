//! The edge's two gRPC protocols, generated from `proto/edge/v1/`.
//!
//! - [`feed`]: `edge.v1.EventFeed`, the control plane's event stream that
//!   edge-agent follows (`Subscribe`) and reports to (`ReportApplied`).
//! - [`control`]: `edge.v1.Control`, the edge's local API on a Unix socket
//!   that edge-agent pushes route tables to.
//!
//! Both live in one protobuf package; the modules only give the two halves
//! names.
#![allow(missing_debug_implementations, clippy::all)]

/// Everything in protobuf package `edge.v1`.
pub mod v1 {
    tonic::include_proto!("edge.v1");
}

/// The event feed: messages, client and server.
pub mod feed {
    pub use crate::v1::event_feed_client::EventFeedClient;
    pub use crate::v1::event_feed_server::{EventFeed, EventFeedServer};
    pub use crate::v1::{
        AppliedRejection, Event, EventBatch, ReportAppliedRequest, ReportAppliedResponse,
        SubscribeRequest,
    };
}

/// The edge's control API: messages, client and server.
pub mod control {
    pub use crate::v1::control_client::ControlClient;
    pub use crate::v1::control_server::{Control, ControlServer};
    pub use crate::v1::{PushRequest, PushResponse, Rejection, StatusRequest, StatusResponse};
}
