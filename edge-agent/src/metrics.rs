//! The agent's Prometheus families, and its `/metrics` + `/healthz` server.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub cursor: IntGauge,
    pub head: IntGauge,
    pub lag: IntGauge,
    pub reconnects: IntCounterVec,
    pub pushes: IntCounterVec,
    pub nacks: IntCounter,
    pub resyncs: IntCounter,
    pub events: IntCounterVec,
    pub transport: IntGauge,
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
        Arc::new(Metrics {
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
                    "Table pushes to the edge, by result (ack, nack, error)."
                ),
                &["result"]
            )),
            nacks: reg!(IntCounter::new(
                "edge_agent_nacks_total",
                "Pushes the edge answered with rejected objects."
            )),
            resyncs: reg!(IntCounter::new(
                "edge_agent_resyncs_total",
                "Resynchronisations from after=0 (aggregate_seq gaps)."
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
            last_sync: AtomicU64::new(0),
            registry,
        })
    }

    pub fn synced(&self, cursor: u64) {
        self.cursor.set(cursor as i64);
        self.lag.set((self.head.get() - cursor as i64).max(0));
        self.last_sync.store(now(), Ordering::Relaxed);
    }

    pub fn saw_head(&self, head: u64) {
        self.head.set(head as i64);
        self.lag.set((head as i64 - self.cursor.get()).max(0));
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
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let metrics = Arc::clone(&metrics);
                    async move {
                        let (status, body) = match req.uri().path() {
                            "/metrics" => (StatusCode::OK, metrics.render()),
                            "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
                            _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
                        };
                        let mut response = Response::new(Full::new(Bytes::from(body)));
                        *response.status_mut() = status;
                        Ok::<_, Infallible>(response)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
