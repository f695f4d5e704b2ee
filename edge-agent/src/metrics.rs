//! The agent's Prometheus families, and its `/metrics` + `/healthz` server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use daemon::http::{reply, PROMETHEUS_TEXT};
use hyper::StatusCode;
use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;

use crate::reconcile::{Anomaly, ResyncReason};

/// `edge_agent_pushes_total` outcomes.
pub const PUSH_OUTCOMES: [&str; 4] = ["ack", "nack", "error", "refused"];
/// `edge_agent_up` endpoints.
pub const ENDPOINTS: [&str; 2] = ["feed", "edge"];

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub cursor: IntGauge,
    pub head: IntGauge,
    pub lag: IntGauge,
    pub reconnects: IntCounterVec,
    pub pushes: IntCounterVec,
    pub nacks: IntCounter,
    pub resyncs: IntCounterVec,
    pub events: IntCounterVec,
    pub transport: IntGauge,
    pub catching_up: IntGauge,
    pub catchup_events_left: IntGauge,
    pub feed_foreign: IntGauge,
    pub feed_errors: IntCounterVec,
    pub hostname_moves: IntCounter,
    pub state_unreadable: IntCounter,
    pub up: IntGaugeVec,
    seconds_since_sync: IntGauge,
    /// Unix seconds of the last table the edge applied (0: never).
    last_sync: AtomicU64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("valid metric");
                registry
                    .register(Box::new(m.clone()))
                    .expect("registered once");
                m
            }};
        }
        let metrics = Arc::new(Metrics {
            cursor: reg!(IntGauge::new(
                "edge_agent_cursor",
                "Newest event_id the edge has applied."
            )),
            head: reg!(IntGauge::new(
                "edge_agent_head",
                "Newest event_id the control plane has, as last seen."
            )),
            lag: reg!(IntGauge::new("edge_agent_lag_events", "head - cursor.")),
            reconnects: reg!(IntCounterVec::new(
                Opts::new(
                    "edge_agent_reconnects_total",
                    "Feed reconnects, by transport."
                ),
                &["transport"]
            )),
            pushes: reg!(IntCounterVec::new(
                Opts::new(
                    "edge_agent_pushes_total",
                    "Table pushes to the edge, by outcome (ack, nack, error, refused)."
                ),
                &["outcome"]
            )),
            nacks: reg!(IntCounter::new(
                "edge_agent_nacks_total",
                "Pushes the edge answered with rejected objects."
            )),
            resyncs: reg!(IntCounterVec::new(
                Opts::new(
                    "edge_agent_resyncs_total",
                    "Resynchronisations from after=0, by reason (gap, feed_changed, head_below_cursor, refused)."
                ),
                &["reason"]
            )),
            events: reg!(IntCounterVec::new(
                Opts::new(
                    "edge_agent_events_total",
                    "Events received, by outcome (applied, duplicate, skipped, invalid)."
                ),
                &["outcome"]
            )),
            transport: reg!(IntGauge::new(
                "edge_agent_transport_grpc",
                "1 while following over gRPC, 0 while polling."
            )),
            seconds_since_sync: reg!(IntGauge::new(
                "edge_agent_seconds_since_sync",
                "Seconds since the edge last applied a table from this agent (-1: never)."
            )),
            catching_up: reg!(IntGauge::new(
                "edge_agent_catching_up",
                "1 while rebuilding from after=0 (nothing is pushed until the head seen first)."
            )),
            catchup_events_left: reg!(IntGauge::new(
                "edge_agent_catchup_events_left",
                "Events left before the rebuild reaches its target head."
            )),
            feed_foreign: reg!(IntGauge::new(
                "edge_agent_feed_foreign",
                "1 from a foreign cursor (another feed_id, or head below the cursor) until the resync completes."
            )),
            feed_errors: reg!(IntCounterVec::new(
                Opts::new(
                    "edge_agent_feed_errors_total",
                    "Batches refused, by kind (out_of_order, beyond_head)."
                ),
                &["kind"]
            )),
            hostname_moves: reg!(IntCounter::new(
                "edge_agent_hostname_moves_total",
                "Hostnames that passed from one env to another."
            )),
            state_unreadable: reg!(IntCounter::new(
                "edge_agent_state_unreadable_total",
                "Saved states set aside as unreadable or of another format."
            )),
            up: reg!(IntGaugeVec::new(
                Opts::new(
                    "edge_agent_up",
                    "1 when the last call to the endpoint (feed, edge) succeeded."
                ),
                &["endpoint"]
            )),
            last_sync: AtomicU64::new(0),
            registry,
        });
        // Every series exported from 0, so alerts see them before the
        // first event.
        for outcome in PUSH_OUTCOMES {
            metrics.pushes.with_label_values(&[outcome]);
        }
        for reason in ResyncReason::ALL.iter().filter(|r| r.counted()) {
            metrics.resyncs.with_label_values(&[reason.as_str()]);
        }
        for kind in Anomaly::KINDS {
            metrics.feed_errors.with_label_values(&[kind]);
        }
        for endpoint in ENDPOINTS {
            metrics.up.with_label_values(&[endpoint]);
        }
        metrics
    }

    /// The edge applied a table up to `cursor`.
    pub fn synced(&self, cursor: u64) {
        self.cursor.set(cursor as i64);
        self.lag.set(self.head.get() - cursor as i64);
        self.last_sync.store(now(), Ordering::Relaxed);
    }

    /// The newest head seen; kept while the feed is unreachable. Lag is
    /// `head - cursor`, negative when the log is behind the cursor.
    pub fn saw_head(&self, head: u64) {
        self.head.set(head as i64);
        self.lag.set(head as i64 - self.cursor.get());
    }

    pub fn set_up(&self, endpoint: &str, up: bool) {
        self.up.with_label_values(&[endpoint]).set(i64::from(up));
    }

    pub fn render(&self) -> String {
        let last = self.last_sync.load(Ordering::Relaxed);
        self.seconds_since_sync.set(if last == 0 {
            -1
        } else {
            now().saturating_sub(last) as i64
        });
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

/// Serves `/metrics` and `/healthz` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    daemon::http::serve(listener, move |req| match req.uri().path() {
        "/metrics" => reply(StatusCode::OK, PROMETHEUS_TEXT, metrics.render()),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".to_owned()),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    })
    .await;
}
