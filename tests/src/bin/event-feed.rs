//! `event-feed`: the reference event feed as a server, for trying the whole
//! loop on one machine (see the README) and for platform teams to copy.
//!
//! `event-feed --events FILE.jsonl [--grpc ADDR] [--http ADDR] [--feed-id ID]` loads the
//! file and follows it: every 200 ms, lines appended since are appended to
//! the log (so `echo '{…}' >> FILE.jsonl` is "the control plane wrote an
//! event"). A line is either a whole event (with `event_id` and
//! `aggregate_seq`) or `{"aggregate_type", "aggregate_id", "event_type",
//! "payload"}`, which gets the next ids. Blank lines and `#` comments are
//! skipped; a bad line is reported with its number and skipped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use edge_tests::reference_feed::{serve_grpc, serve_http, Feed};
use serde::Deserialize;

#[derive(Parser)]
#[command(
    version,
    about = "Serves an event log from a JSON-lines file over gRPC and HTTP polling"
)]
struct Cli {
    /// The JSON-lines event log to serve and follow.
    #[arg(long)]
    events: PathBuf,
    /// gRPC `edge.v1.EventFeed` listen address.
    #[arg(long, default_value = "127.0.0.1:7443")]
    grpc: SocketAddr,
    /// HTTP polling listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// The log's identity, sent with every batch (agents resynchronise
    /// when it changes). Default: `file:<path>`.
    #[arg(long)]
    feed_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    Full(route_model::Event),
    Short {
        aggregate_type: String,
        aggregate_id: String,
        event_type: String,
        #[serde(default)]
        payload: serde_json::Value,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let feed = Feed::new();
        // The same file reloads into the same log (same ids), so its path
        // names it across restarts.
        let feed_id = cli
            .feed_id
            .clone()
            .unwrap_or_else(|| format!("file:{}", cli.events.display()));
        feed.set_feed_id(Some(&feed_id));
        let mut read = 0;
        if let Err(e) = follow(&feed, &cli.events, &mut read) {
            eprintln!("event-feed: {}: {e}", cli.events.display());
            return ExitCode::from(64);
        }
        let grpc = serve_grpc(Arc::clone(&feed), cli.grpc).await;
        let http = serve_http(Arc::clone(&feed), cli.http).await;
        println!(
            "event-feed: {} events (feed_id {feed_id}); gRPC on {}, HTTP on {}",
            feed.head(),
            grpc.addr,
            http.addr
        );
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Err(e) = follow(&feed, &cli.events, &mut read) {
                eprintln!("event-feed: {}: {e}", cli.events.display());
            }
        }
    })
}

/// Appends the complete lines after byte `read` of the file.
fn follow(feed: &Feed, path: &Path, read: &mut usize) -> std::io::Result<()> {
    let bytes = std::fs::read(path)?;
    if bytes.len() < *read {
        // Truncated or replaced: re-appending its lines would duplicate
        // events, so only lines added from here on count.
        eprintln!("event-feed: the file shrank; appending its lines again would duplicate events, ignoring");
        *read = bytes.len();
        return Ok(());
    }
    let Some(end) = bytes[*read..]
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|i| *read + i + 1)
    else {
        return Ok(());
    };
    let first_line = bytes[..*read].iter().filter(|&&b| b == b'\n').count() + 1;
    for (n, line) in String::from_utf8_lossy(&bytes[*read..end])
        .lines()
        .enumerate()
    {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match serde_json::from_str::<Line>(line) {
            Ok(Line::Full(event)) => {
                feed.append_event(event);
            }
            Ok(Line::Short {
                aggregate_type,
                aggregate_id,
                event_type,
                payload,
            }) => {
                feed.append(&aggregate_type, &aggregate_id, &event_type, payload);
            }
            Err(e) => eprintln!("event-feed: line {}: {e}; skipped", first_line + n),
        }
    }
    *read = end;
    Ok(())
}
