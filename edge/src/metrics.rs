//! Every Prometheus family of the edge, registered once in one registry.
//!
//! Labels are stable snake_case values from the `as_str()` of small enums,
//! so dashboards and alerts do not break when code moves. Children used on
//! every connection (bytes, accepted) are resolved once here, not per call.
//! Every series whose label values are known is exported from 0, so a
//! rate() or an alert sees the series before its first event.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use route_model::SpecError;

/// Buckets for the ClientHello peek: from one RTT on a LAN to the timeout.
const PEEK_BUCKETS: &[f64] = &[
    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets for backend connects over the overlay.
const CONNECT_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0,
];
/// ClientHello sizes: classic (~250-600 B), post-quantum (1.5-2.1 KB), padded.
const HELLO_SIZE_BUCKETS: &[f64] = &[
    256.0, 512.0, 1024.0, 1536.0, 2048.0, 4096.0, 8192.0, 16384.0,
];

/// Reasons of `edge_connections_rejected_total` (the `as_str()` values of
/// `reject::Reject`, `tls_peek::Reason` and `route_model::RejectReason`).
const REJECT_REASONS: &[&str] = &[
    "not_tls",
    "sslv2",
    "not_client_hello",
    "malformed_hello",
    "hello_too_large",
    "invalid_sni",
    "hello_timeout",
    "client_closed",
    "no_listener",
    "unknown_sni",
    "no_sni_ambiguous",
    "source_limit",
    "max_connections",
    "no_healthy_backend",
    "backend_connect_failed",
];

/// Outcomes of a control push (`edge_control_pushes_total`).
pub(crate) const PUSH_OUTCOMES: &[&str] = &["ack", "nack", "refused", "invalid", "error"];

/// A one-label counter family whose every label value is known up front
/// and counted once per connection: the children are resolved at start (a
/// short scan instead of hashing the label and locking the family each
/// time), and every series is exported from 0.
#[derive(Debug, Clone)]
struct Resolved {
    family: IntCounterVec,
    children: Vec<(&'static str, IntCounter)>,
}

impl Resolved {
    fn new(family: IntCounterVec, labels: &[&'static str]) -> Resolved {
        let children = labels
            .iter()
            .map(|l| (*l, family.with_label_values(&[l])))
            .collect();
        Resolved { family, children }
    }

    fn inc(&self, label: &str) {
        match self.children.iter().find(|(l, _)| *l == label) {
            Some((_, c)) => c.inc(),
            None => self.family.with_label_values(&[label]).inc(),
        }
    }
}

/// The edge's metrics.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    registry: Registry,
    pub accepted: IntCounter,
    pub active: IntGauge,
    rejected: Resolved,
    /// `edge_bytes_total` by direction, and of those the bytes moved by
    /// `splice(2)` (never through user space); tunnels count into these by
    /// reference.
    pub bytes: crate::forward::ByteCounters,
    pub peek_seconds: Histogram,
    pub hello_bytes: Histogram,
    alpn: Resolved,
    pub connect_seconds: Histogram,
    pub connect_failures: IntCounter,
    pub table_version: IntGauge,
    pub routes: IntGauge,
    pub routes_rejected: IntGauge,
    pub listeners: IntGauge,
    pub listeners_unbound: IntGauge,
    reloads: Resolved,
    accept_errors: Resolved,
    tunnels_closed: Resolved,
    pub log_lines_suppressed: IntCounter,
    pub state_unreadable: IntCounter,
    control_pushes: Resolved,
    routes_rejected_total: IntCounterVec,
    /// The edge's own health checks and ejections (`crate::health`).
    pub health: HealthFamilies,
}

/// Health families. Per instance, never per route (a million routes share
/// a few thousand instances); an instance's series are removed when it
/// leaves the table, so the count stays bounded by live instances.
#[derive(Debug, Clone)]
pub(crate) struct HealthFamilies {
    pub probes: IntCounterVec,
    pub probe_failures: IntCounterVec,
    pub ejections: IntCounterVec,
    pub state_changes: IntCounterVec,
    /// Connections served under the panic rule.
    pub panics: IntCounter,
    /// `(instance, port)` pairs probed.
    pub targets: IntGauge,
}

impl HealthFamilies {
    /// Drops the series of an instance that left the table.
    pub(crate) fn remove_instance(&self, instance: &str) {
        for f in [
            &self.probes,
            &self.probe_failures,
            &self.ejections,
            &self.state_changes,
        ] {
            let _ = f.remove_label_values(&[instance]);
        }
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definition is valid");
                registry
                    .register(Box::new(m.clone()))
                    .expect("each family is registered once");
                m
            }};
        }
        let bytes = reg!(IntCounterVec::new(
            Opts::new("edge_bytes_total", "Bytes forwarded, by direction."),
            &["direction"]
        ));
        Metrics {
            accepted: reg!(IntCounter::new(
                "edge_connections_accepted_total",
                "Client connections accepted on public listeners."
            )),
            active: reg!(IntGauge::new(
                "edge_connections_active",
                "Client connections open now (handshaking or established)."
            )),
            rejected: Resolved::new(
                reg!(IntCounterVec::new(
                    Opts::new(
                        "edge_connections_rejected_total",
                        "Client connections closed without forwarding, by reason."
                    ),
                    &["reason"]
                )),
                REJECT_REASONS,
            ),
            bytes: crate::forward::ByteCounters {
                to_backend: bytes.with_label_values(&["client_to_backend"]),
                to_client: bytes.with_label_values(&["backend_to_client"]),
                spliced: reg!(IntCounter::new(
                    "edge_bytes_spliced_total",
                    "Bytes of established tunnels moved by splice(2), both directions (a part of edge_bytes_total)."
                )),
            },
            peek_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "edge_client_hello_peek_seconds",
                    "Time from accept to a complete ClientHello."
                )
                .buckets(PEEK_BUCKETS.to_vec())
            )),
            hello_bytes: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "edge_client_hello_bytes",
                    "Bytes read before the ClientHello was complete (record headers included)."
                )
                .buckets(HELLO_SIZE_BUCKETS.to_vec())
            )),
            alpn: Resolved::new(
                reg!(IntCounterVec::new(
                    Opts::new(
                        "edge_client_hello_alpn_total",
                        "ClientHellos by first offered ALPN protocol (h2, http_1_1, other, none)."
                    ),
                    &["alpn"]
                )),
                &["h2", "http_1_1", "other", "none"],
            ),
            connect_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "edge_backend_connect_seconds",
                    "Time to establish a backend connection (successful attempts)."
                )
                .buckets(CONNECT_BUCKETS.to_vec())
            )),
            connect_failures: reg!(IntCounter::new(
                "edge_backend_connect_failures_total",
                "Backend connect attempts that failed or timed out."
            )),
            table_version: reg!(IntGauge::new(
                "edge_route_table_version",
                "Version of the route table being served."
            )),
            routes: reg!(IntGauge::new(
                "edge_routes",
                "Routes in the table being served."
            )),
            routes_rejected: reg!(IntGauge::new(
                "edge_routes_rejected",
                "Routes, envs and instances of the current config rejected by validation."
            )),
            listeners: reg!(IntGauge::new(
                "edge_listeners",
                "(IP, port) listeners the current table needs."
            )),
            listeners_unbound: reg!(IntGauge::new(
                "edge_listeners_unbound",
                "Listeners of the current table that could not be bound yet (retried)."
            )),
            reloads: Resolved::new(
                reg!(IntCounterVec::new(
                    Opts::new("edge_reloads_total", "Route table reloads, by result."),
                    &["result"]
                )),
                &["ok", "error"],
            ),
            accept_errors: Resolved::new(
                reg!(IntCounterVec::new(
                    Opts::new(
                        "edge_accept_errors_total",
                        "accept(2) failures, by kind (fd_exhausted, other)."
                    ),
                    &["kind"]
                )),
                &["fd_exhausted", "other"],
            ),
            tunnels_closed: Resolved::new(
                reg!(IntCounterVec::new(
                    Opts::new(
                        "edge_tunnels_closed_total",
                        "Established tunnels closed, by cause."
                    ),
                    &["cause"]
                )),
                &["done", "error", "idle_timeout", "route_deleted"],
            ),
            log_lines_suppressed: reg!(IntCounter::new(
                "edge_log_lines_suppressed_total",
                "Rejection log lines dropped by the log rate limit (still counted above)."
            )),
            state_unreadable: reg!(IntCounter::new(
                "edge_state_unreadable_total",
                "Saved route tables (routing.json) found unreadable or of a newer format at start, and moved aside."
            )),
            control_pushes: Resolved::new(
                reg!(IntCounterVec::new(
                    Opts::new(
                        "edge_control_pushes_total",
                        "Route tables pushed on the control socket, by outcome (ack, nack: applied with rejections, refused: fenced or during an upgrade handoff, invalid: unknown format or bad JSON, error: could not be persisted)."
                    ),
                    &["outcome"]
                )),
                PUSH_OUTCOMES,
            ),
            routes_rejected_total: reg!(IntCounterVec::new(
                Opts::new(
                    "edge_routes_rejected_total",
                    "Routes, envs and instances rejected by validation, by reason (counted when a table applied first has the rejection)."
                ),
                &["reason"]
            )),
            health: HealthFamilies {
                probes: reg!(IntCounterVec::new(
                    Opts::new(
                        "edge_health_probes_total",
                        "Health-check connect probes sent, by instance."
                    ),
                    &["instance"]
                )),
                probe_failures: reg!(IntCounterVec::new(
                    Opts::new(
                        "edge_health_probe_failures_total",
                        "Health-check probes that failed or timed out, by instance."
                    ),
                    &["instance"]
                )),
                ejections: reg!(IntCounterVec::new(
                    Opts::new(
                        "edge_health_ejections_total",
                        "Instances ejected after consecutive connect failures (or a failed trial), by instance."
                    ),
                    &["instance"]
                )),
                state_changes: reg!(IntCounterVec::new(
                    Opts::new(
                        "edge_health_state_changes_total",
                        "Health check up/down flips and ejections/restorations, by instance."
                    ),
                    &["instance"]
                )),
                panics: reg!(IntCounter::new(
                    "edge_health_panic_total",
                    "Connections routed under the panic rule (the edge found every backend of the route down)."
                )),
                targets: reg!(IntGauge::new(
                    "edge_health_targets",
                    "(instance, port) pairs the edge probes."
                )),
            },
            registry,
        }
    }

    pub(crate) fn rejected(&self, reason: &str) {
        self.rejected.inc(reason);
    }

    pub(crate) fn alpn(&self, label: &str) {
        self.alpn.inc(label);
    }

    pub(crate) fn reload(&self, result: &str) {
        self.reloads.inc(result);
    }

    pub(crate) fn accept_error(&self, kind: &str) {
        self.accept_errors.inc(kind);
    }

    /// Counts the rejections of a table just applied that the previous
    /// table did not have (same object, same reason): a bad object pushed
    /// again and again counts once, while `edge_routes_rejected` shows it
    /// is still there.
    pub(crate) fn routes_rejected_new(&self, old: &[SpecError], new: &[SpecError]) {
        fn key(e: &SpecError) -> ((&'static str, &str), &'static str) {
            (e.object(), e.kind())
        }
        let before: std::collections::HashSet<_> = old.iter().map(key).collect();
        for e in new.iter().filter(|e| !before.contains(&key(e))) {
            self.routes_rejected_total
                .with_label_values(&[e.kind()])
                .inc();
        }
    }

    pub(crate) fn tunnel_closed(&self, cause: &str) {
        self.tunnels_closed.inc(cause);
    }

    /// One control push, by outcome (one of [`PUSH_OUTCOMES`]).
    pub(crate) fn control_push(&self, outcome: &str) {
        self.control_pushes.inc(outcome);
    }

    /// The Prometheus text exposition of every family.
    pub(crate) fn render(&self) -> String {
        let mut out = Vec::with_capacity(8 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text encoder writes UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_labelled_counter_is_exported_from_zero() {
        let text = Metrics::new().render();
        for series in [
            "edge_accept_errors_total{kind=\"fd_exhausted\"} 0",
            "edge_accept_errors_total{kind=\"other\"} 0",
            "edge_reloads_total{result=\"ok\"} 0",
            "edge_reloads_total{result=\"error\"} 0",
            "edge_tunnels_closed_total{cause=\"idle_timeout\"} 0",
            "edge_connections_rejected_total{reason=\"unknown_sni\"} 0",
            "edge_client_hello_alpn_total{alpn=\"h2\"} 0",
            "edge_control_pushes_total{outcome=\"refused\"} 0",
            "edge_state_unreadable_total 0",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }

    #[test]
    fn every_reject_label_is_known_up_front() {
        use crate::reject::Reject;
        use route_model::RejectReason;
        let labels = [
            Reject::Hello(tls_peek::Reason::NotTls),
            Reject::Hello(tls_peek::Reason::Sslv2),
            Reject::Hello(tls_peek::Reason::NotClientHello),
            Reject::Hello(tls_peek::Reason::Malformed),
            Reject::Hello(tls_peek::Reason::TooLarge),
            Reject::Hello(tls_peek::Reason::InvalidSni),
            Reject::HelloTimeout,
            Reject::ClientClosed,
            Reject::Route(RejectReason::NoListener),
            Reject::Route(RejectReason::UnknownSni),
            Reject::Route(RejectReason::NoSniAmbiguous),
            Reject::SourceLimit,
            Reject::MaxConnections,
            Reject::NoHealthyBackend,
            Reject::BackendConnectFailed,
        ];
        for r in labels {
            assert!(REJECT_REASONS.contains(&r.as_str()), "{}", r.as_str());
        }
        assert_eq!(labels.len(), REJECT_REASONS.len());
    }
}
