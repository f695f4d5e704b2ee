//! The admin HTTP server on `admin.listen`: `/metrics`, `/healthz`,
//! `/readyz` and `/routes`. Local by default; read-only.
//!
//! `/readyz`: 200 `{"version": N}` once every listener of the live table is
//! bound; 503 with the same body while some are not (or while draining);
//! 503 `{"reason": "never_synced" | "state_unreadable"}` while an edge with
//! `[control]` waits for its first push (see `source`).

use std::sync::Arc;

use daemon::http::{reply, Reply, PROMETHEUS_TEXT};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use route_model::{Listener, RouteTable};
use serde_json::json;
use tokio::net::TcpListener;

use crate::shared::Shared;

/// Serves admin requests until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    daemon::http::serve(listener, move |req| respond(&shared, req)).await;
}

fn respond(shared: &Shared, req: &Request<Incoming>) -> Reply {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => reply(StatusCode::OK, PROMETHEUS_TEXT, shared.metrics.render()),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            if let Some(reason) = shared.not_synced() {
                let body = json!({ "reason": reason.as_str() }).to_string();
                return reply(StatusCode::SERVICE_UNAVAILABLE, "application/json", body);
            }
            let body = json!({ "version": shared.live.load().table.version() }).to_string();
            let status = if shared.ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, "application/json", body)
        }
        "/routes" => {
            let live = shared.live.load();
            let mut body = routes_json(&live.table);
            body["rejected"] = live.errors.iter().map(|e| json!(e.to_string())).collect();
            crate::health::view::annotate(&mut body, &live.table, &shared.health);
            reply(StatusCode::OK, "application/json", body.to_string())
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// The contract's `/routes` document.
pub(crate) fn routes_json(table: &RouteTable) -> serde_json::Value {
    let listeners: Vec<serde_json::Value> = table
        .listeners()
        .map(|(addr, listener)| {
            let routes: Vec<serde_json::Value> = table
                .routes_on(addr)
                .iter()
                .map(|r| {
                    json!({
                        "id": &*r.route.id,
                        "hostname": r.route.hostname.to_string(),
                        "protocol": r.route.protocol.as_str(),
                        "env": r.route.env.as_str(),
                        "backend_port": r.route.backend_port,
                        "backends": r.backends.len(),
                        "proxy_protocol": r.route.proxy_protocol,
                    })
                })
                .collect();
            let kind = match listener {
                Listener::Tls(_) => "tls_passthrough",
                Listener::Raw(_) => "tcp_raw",
            };
            json!({ "addr": addr.to_string(), "protocol": kind, "routes": routes })
        })
        .collect();
    json!({ "version": table.version(), "listeners": listeners })
}
