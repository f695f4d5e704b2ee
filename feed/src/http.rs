//! The polling side of the contract and read-your-writes, over HTTP/1.1:
//!
//! - `GET /events?after&limit&node_id[&wait_ms]` → 200 `{"head", "events", "feed_id"}`
//! - `POST /applied {"node_id", "event_id", "rejected"}` → 204
//! - `GET /applied` → 200 `[{"node_id", "event_id", "age_ms"}]`
//! - `GET /applied/wait?event_id=N&timeout_ms=T` → 200 `{"event_id", "nodes"}`,
//!   or 504 with `"laggards"` naming the nodes below N
//! - `GET /healthz` → 200
//!
//! A store failure answers 503: the agent retries from its cursor.
//!
//! [`respond`] is public and [`serve_with`] serves any handler, so a caller
//! can look at or refuse requests before the feed answers them (the
//! black-box tests record polls that way).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::feed::Feed;
use crate::store::AppliedReport;

/// The largest page a poll may ask for.
const MAX_LIMIT: usize = 5000;
/// The longest a long poll is held.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// The longest a read-your-writes wait is held.
const MAX_APPLIED_WAIT: Duration = Duration::from_secs(60);
/// Request bodies are small JSON documents.
const MAX_BODY: usize = 1 << 20;

/// What [`serve_with`] answers requests with.
pub type Reply = Response<Full<Bytes>>;

/// Serves on `listener` until the task is aborted. With `tls`, a client
/// must present a certificate the config's verifier accepts.
pub fn serve(
    feed: Arc<Feed>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
) -> tokio::task::JoinHandle<()> {
    serve_with(listener, tls, move |req| {
        let feed = Arc::clone(&feed);
        async move { respond(&feed, req).await }
    })
}

/// [`serve`] with any handler, typically one that ends in [`respond`].
pub fn serve_with<H, F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: H,
) -> tokio::task::JoinHandle<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Reply> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let answer = handler(req);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let http = hyper::server::conn::http1::Builder::new();
                let served = match tls {
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(s) => http.serve_connection(TokioIo::new(s), service).await,
                        Err(e) => {
                            tracing::info!(%peer, error = %e, "TLS handshake refused");
                            return;
                        }
                    },
                    None => http.serve_connection(TokioIo::new(stream), service).await,
                };
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended");
                }
            });
        }
    })
}

fn reply(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Why a request was not served: a 400 or a 503, with a message.
enum Refusal {
    Bad(String),
    Unavailable(String),
}

impl Refusal {
    fn response(self) -> Response<Full<Bytes>> {
        let (status, message) = match self {
            Refusal::Bad(m) => (StatusCode::BAD_REQUEST, m),
            Refusal::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
        };
        reply(status, &json!({ "error": message }))
    }
}

fn bad(message: String) -> Refusal {
    Refusal::Bad(message)
}

fn unavailable(e: impl std::fmt::Display) -> Refusal {
    Refusal::Unavailable(e.to_string())
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

fn number(key: &str, value: &str) -> Result<u64, Refusal> {
    value
        .parse()
        .map_err(|_| bad(format!("{key}: {value:?} is not a non-negative integer")))
}

/// Answers one request of the protocol above.
pub async fn respond(feed: &Feed, req: Request<Incoming>) -> Reply {
    let result = match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/events") => events(feed, &req).await,
        (Method::POST, "/applied") => applied(feed, req).await,
        (Method::GET, "/applied") => match feed.store().checkpoints().await {
            Ok(cps) => Ok(reply(
                StatusCode::OK,
                &json!(cps
                    .iter()
                    .map(|c| json!({"node_id": c.node_id, "event_id": c.event_id,
                                    "age_ms": c.age.as_millis() as u64}))
                    .collect::<Vec<_>>()),
            )),
            Err(e) => Err(unavailable(e)),
        },
        (Method::GET, "/applied/wait") => applied_wait(feed, &req).await,
        (Method::GET, "/healthz") => Ok(reply(StatusCode::OK, &json!({"status": "ok"}))),
        _ => Ok(reply(
            StatusCode::NOT_FOUND,
            &json!({ "error": "not found" }),
        )),
    };
    result.unwrap_or_else(Refusal::response)
}

type Answer = Result<Response<Full<Bytes>>, Refusal>;

async fn events(feed: &Feed, req: &Request<Incoming>) -> Answer {
    let (mut after, mut limit, mut wait) = (0, feed.options().page, Duration::ZERO);
    for (k, v) in query(req) {
        match k.as_str() {
            "after" => after = number(&k, &v)?,
            "limit" => match number(&k, &v)? {
                0 => return Err(bad("limit: must be positive".into())),
                l => limit = (l as usize).min(MAX_LIMIT),
            },
            "wait_ms" => wait = Duration::from_millis(number(&k, &v)?).min(MAX_WAIT),
            _ => {}
        }
    }
    let batch = feed.poll(after, limit, wait).await.map_err(unavailable)?;
    Ok(reply(
        StatusCode::OK,
        &serde_json::to_value(batch).expect("a batch serialises"),
    ))
}

async fn applied(feed: &Feed, req: Request<Incoming>) -> Answer {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| bad(e.to_string()))?
        .to_bytes();
    let report: AppliedReport = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    feed.report_applied(&report).await.map_err(unavailable)?;
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(r)
}

async fn applied_wait(feed: &Feed, req: &Request<Incoming>) -> Answer {
    let (mut event_id, mut timeout) = (None, Duration::from_secs(10));
    for (k, v) in query(req) {
        match k.as_str() {
            "event_id" => event_id = Some(number(&k, &v)?),
            "timeout_ms" => timeout = Duration::from_millis(number(&k, &v)?).min(MAX_APPLIED_WAIT),
            _ => {}
        }
    }
    let event_id = event_id.ok_or_else(|| bad("event_id is required".into()))?;
    let verdict = feed
        .wait_applied(event_id, timeout)
        .await
        .map_err(unavailable)?;
    let status = if verdict.reached() {
        StatusCode::OK
    } else {
        StatusCode::GATEWAY_TIMEOUT
    };
    Ok(reply(
        status,
        &serde_json::to_value(&verdict).expect("a verdict serialises"),
    ))
}
