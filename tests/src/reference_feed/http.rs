//! The polling side of the contract, plus what a control plane adds for
//! read-your-writes and for the README's demo:
//!
//! - `GET /events?after&limit&node_id` → `{"head", "events"}`
//! - `POST /applied {"node_id", "event_id", "rejected"}` → 204
//! - `GET /applied?node_id=` → `{"node_id", "event_id"}`
//! - `POST /wait {"nodes", "event_id", "timeout_ms"}` → 200/504 `{"reached"}`
//! - `POST /append {"aggregate_type", "aggregate_id", "event_type", "payload"}` → `{"event_id"}`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;

use super::{Feed, Server, Transport, PAGE};

const MAX_LIMIT: usize = 5000;
const MAX_BODY: usize = 1 << 20;

/// Serves the polling API on `addr` (port 0: any) until dropped.
pub async fn serve_http(feed: Arc<Feed>, addr: SocketAddr) -> Server {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind the polling feed");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve_one(Arc::clone(&feed), stream));
        }
    });
    Server { addr, task }
}

/// [`serve_http`] over TLS that requires a client certificate signed by
/// the CA of `tls`.
pub async fn serve_http_tls(
    feed: Arc<Feed>,
    addr: SocketAddr,
    tls: &super::tls::FeedServerTls,
) -> Server {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind the polling feed");
    let addr = listener.local_addr().expect("local addr");
    let mut incoming = super::tls::accept(listener, tls.config(&[b"http/1.1"]));
    let task = tokio::spawn(async move {
        while let Some(stream) = tokio_stream::StreamExt::next(&mut incoming).await {
            tokio::spawn(serve_one(Arc::clone(&feed), stream));
        }
    });
    Server { addr, task }
}

async fn serve_one<S>(feed: Arc<Feed>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let feed = Arc::clone(&feed);
        async move { Ok::<_, Infallible>(respond(&feed, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        "application/json".parse().expect("valid header"),
    );
    r
}

fn bad(message: String) -> Response<Full<Bytes>> {
    reply(StatusCode::BAD_REQUEST, json!({ "error": message }))
}

fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

async fn body<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, String> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

#[derive(Deserialize)]
struct Applied {
    node_id: String,
    event_id: u64,
    #[serde(default)]
    rejected: Vec<super::RejectedReport>,
}

#[derive(Deserialize)]
struct Wait {
    nodes: Vec<String>,
    event_id: u64,
    timeout_ms: u64,
}

#[derive(Deserialize)]
struct Append {
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    #[serde(default)]
    payload: serde_json::Value,
}

async fn respond(feed: &Feed, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/events") => {
            let (mut after, mut limit, mut node) = (0, PAGE, String::new());
            for (k, v) in query(&req) {
                match k.as_str() {
                    "after" => match v.parse() {
                        Ok(a) => after = a,
                        Err(_) => return bad(format!("after: {v:?} is not an event_id")),
                    },
                    "limit" => match v.parse::<usize>() {
                        Ok(l) if l > 0 => limit = l.min(MAX_LIMIT),
                        _ => return bad(format!("limit: {v:?} is not a positive integer")),
                    },
                    "node_id" => node = v,
                    _ => {}
                }
            }
            feed.record(Transport::Poll, &node, after);
            reply(
                StatusCode::OK,
                serde_json::to_value(feed.page(after, limit)).expect("batch serialises"),
            )
        }
        (Method::POST, "/applied") => match body::<Applied>(req).await {
            Ok(a) => {
                feed.record_rejected(&a.node_id, a.rejected);
                feed.report_applied(&a.node_id, a.event_id);
                let mut r = reply(StatusCode::NO_CONTENT, json!({}));
                *r.body_mut() = Full::new(Bytes::new());
                r
            }
            Err(e) => bad(e),
        },
        (Method::GET, "/applied") => {
            let node = query(&req)
                .into_iter()
                .find(|(k, _)| k == "node_id")
                .map(|(_, v)| v)
                .unwrap_or_default();
            reply(
                StatusCode::OK,
                json!({ "node_id": node, "event_id": feed.applied(&node) }),
            )
        }
        (Method::POST, "/wait") => match body::<Wait>(req).await {
            Ok(w) => {
                let nodes: Vec<&str> = w.nodes.iter().map(String::as_str).collect();
                let reached = feed
                    .wait_applied(&nodes, w.event_id, Duration::from_millis(w.timeout_ms))
                    .await;
                let status = if reached {
                    StatusCode::OK
                } else {
                    StatusCode::GATEWAY_TIMEOUT
                };
                reply(status, json!({ "reached": reached }))
            }
            Err(e) => bad(e),
        },
        (Method::POST, "/append") => match body::<Append>(req).await {
            Ok(a) => {
                let id = feed.append(&a.aggregate_type, &a.aggregate_id, &a.event_type, a.payload);
                reply(StatusCode::OK, json!({ "event_id": id }))
            }
            Err(e) => bad(e),
        },
        _ => reply(StatusCode::NOT_FOUND, json!({ "error": "not found" })),
    }
}
