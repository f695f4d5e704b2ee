//! `edge-feed`: serve an event log to edge-agents, migrate its schema,
//! append to it. See docs/edge-feed.md.
//!
//! ```text
//! edge-feed migrate --store postgres://…
//! edge-feed serve --store postgres://…|file:PATH --http ADDR [--grpc ADDR]
//!                 [--tls-cert F --tls-key F --client-ca F]
//! edge-feed append --store … AGGREGATE_TYPE AGGREGATE_ID EVENT_TYPE PAYLOAD_JSON
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use daemon::logging::LogFormat;
use edge_feed::file::FileStore;
use edge_feed::pg::{PgOptions, PgStore};
use edge_feed::tls::TlsFiles;
use edge_feed::{AppendError, Feed, FeedOptions, NewEvent, Store};

// Bad usage or configuration.
use daemon::exit::USAGE as EXIT_USAGE;
// The store or a listener failed.
use daemon::exit::UNAVAILABLE as EXIT_UNAVAILABLE;
// A concurrent writer appended to the aggregate first.
use daemon::exit::TEMPFAIL as EXIT_CONFLICT;

#[derive(Parser)]
#[command(version, about = "The control plane's event feed for edge-agents")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or upgrade the PostgreSQL schema (versioned migrations).
    Migrate {
        /// postgres://…
        #[arg(long)]
        store: String,
    },
    /// Serve the log over HTTP polling and gRPC.
    Serve(Serve),
    /// Append one event to an aggregate (next aggregate_seq); print its event_id.
    Append {
        #[arg(long)]
        store: String,
        aggregate_type: String,
        aggregate_id: String,
        event_type: String,
        payload_json: String,
    },
}

#[derive(Args)]
struct Serve {
    /// postgres://… or file:PATH
    #[arg(long)]
    store: String,
    /// HTTP listen address (polling, /applied, /applied/wait).
    #[arg(long)]
    http: SocketAddr,
    /// gRPC edge.v1.EventFeed listen address.
    #[arg(long)]
    grpc: Option<SocketAddr>,
    /// Server certificate (PEM); with --tls-key and --client-ca.
    #[arg(long, requires_all = ["tls_key", "client_ca"])]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires_all = ["tls_cert", "client_ca"])]
    tls_key: Option<PathBuf>,
    /// CA that signs the clients' certificates (required when TLS is on).
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    client_ca: Option<PathBuf>,
    /// Longest a caught-up stream waits without re-reading the store.
    #[arg(long, default_value_t = 500)]
    fallback_ms: u64,
    /// A node counts for /applied/wait if it reported within this.
    #[arg(long, default_value_t = 60_000)]
    applied_window_ms: u64,
    /// Do not LISTEN for appends (the fallback interval alone paces).
    #[arg(long)]
    no_listen: bool,
}

enum StoreUrl {
    Postgres(String),
    File(PathBuf),
}

fn parse_store(s: &str) -> Result<StoreUrl, String> {
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        Ok(StoreUrl::Postgres(s.to_owned()))
    } else if let Some(path) = s.strip_prefix("file:") {
        Ok(StoreUrl::File(path.into()))
    } else {
        Err(format!("--store {s:?}: expected postgres://… or file:PATH"))
    }
}

async fn open(store: &str, listen: bool) -> Result<Arc<dyn Store>, (u8, String)> {
    match parse_store(store).map_err(|e| (EXIT_USAGE, e))? {
        StoreUrl::Postgres(url) => PgStore::connect(&url, PgOptions { listen })
            .await
            .map(|s| Arc::new(s) as Arc<dyn Store>)
            .map_err(|e| (EXIT_UNAVAILABLE, e.to_string())),
        StoreUrl::File(path) => {
            let store = FileStore::open(&path).map_err(|e| (EXIT_UNAVAILABLE, e.to_string()))?;
            if listen {
                // Detached: it follows the file for the life of the process.
                drop(store.spawn_follower());
            }
            Ok(store)
        }
    }
}

async fn run(cli: Cli) -> Result<(), (u8, String)> {
    match cli.command {
        Command::Migrate { store } => {
            let StoreUrl::Postgres(url) = parse_store(&store).map_err(|e| (EXIT_USAGE, e))? else {
                return Err((EXIT_USAGE, "migrate needs a postgres:// store".into()));
            };
            let applied = edge_feed::pg::migrate(&url)
                .await
                .map_err(|e| (EXIT_UNAVAILABLE, e.to_string()))?;
            if applied.is_empty() {
                println!("schema up to date");
            }
            for m in applied {
                println!("applied {m}");
            }
            Ok(())
        }
        Command::Append {
            store,
            aggregate_type,
            aggregate_id,
            event_type,
            payload_json,
        } => {
            let payload: serde_json::Value = serde_json::from_str(&payload_json)
                .map_err(|e| (EXIT_USAGE, format!("PAYLOAD_JSON: {e}")))?;
            let store = open(&store, false).await?;
            let event = NewEvent {
                event_type,
                payload,
            };
            match store.append(&aggregate_type, &aggregate_id, &[event]).await {
                Ok(ids) => {
                    for id in ids {
                        println!("{id}");
                    }
                    Ok(())
                }
                Err(e @ AppendError::Conflict { .. }) => Err((EXIT_CONFLICT, e.to_string())),
                Err(e) => Err((EXIT_UNAVAILABLE, e.to_string())),
            }
        }
        Command::Serve(s) => serve(s).await,
    }
}

async fn serve(s: Serve) -> Result<(), (u8, String)> {
    let tls = match (s.tls_cert, s.tls_key, s.client_ca) {
        (Some(cert), Some(key), Some(client_ca)) => Some(TlsFiles {
            cert,
            key,
            client_ca,
        }),
        _ => None,
    };
    let store = open(&s.store, !s.no_listen).await?;
    let options = FeedOptions {
        fallback: Duration::from_millis(s.fallback_ms.max(1)),
        applied_window: Duration::from_millis(s.applied_window_ms),
        ..FeedOptions::default()
    };
    let feed_id = store.feed_id().to_owned();
    let feed = Feed::new(store, options);
    let running = edge_feed::serve::start(feed, s.http, s.grpc, tls.as_ref())
        .await
        .map_err(|e| (EXIT_UNAVAILABLE, e.to_string()))?;
    tracing::info!(http = %running.http, grpc = ?running.grpc, %feed_id, tls = tls.is_some(), "serving");
    tokio::select! {
        _ = running.wait() => Err((EXIT_UNAVAILABLE, "a listener stopped".into())),
        _ = daemon::signals::shutdown() => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli: Cli = match daemon::exit::parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    daemon::logging::init("EDGE_FEED_LOG", LogFormat::Text);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edge-feed: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("edge-feed: {message}");
            ExitCode::from(code)
        }
    }
}
