//! `edge-agent --config agent.toml`. See docs/operations.md.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use edge_agent::config::Config;
use edge_agent::metrics::{self, Metrics};
use edge_agent::store::Store;
use edge_agent::sync::Agent;
use edge_agent::watchdog::Watchdog;

const EXIT_USAGE: u8 = 64;
const EXIT_START: u8 = 70;

#[derive(Parser)]
#[command(
    version,
    about = "Follows the control plane's event stream and pushes route tables to the edge"
)]
struct Cli {
    /// Path to agent.toml.
    #[arg(long)]
    config: PathBuf,
    /// Log line format on stderr (filter with EDGE_AGENT_LOG or RUST_LOG).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edge-agent: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edge-agent: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_START);
        }
    };
    runtime.block_on(async move {
        let store = match Store::open(&config.state_dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "state_dir unusable");
                return ExitCode::from(EXIT_START);
            }
        };
        let now_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (start, aside) = match store.load(now_secs) {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!(error = %e, "cannot load the saved state");
                return ExitCode::from(EXIT_START);
            }
        };
        let listener = match tokio::net::TcpListener::bind(config.metrics_listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(addr = %config.metrics_listen, error = %e, "metrics.listen");
                return ExitCode::from(EXIT_START);
            }
        };
        let metrics = Metrics::new();
        if let Some(aside) = &aside {
            metrics.state_unreadable.inc();
            tracing::error!(path = %store.path().display(), moved_to = %aside.moved_to.display(),
                why = %aside.why, "saved state unreadable; kept aside, catching up from the feed");
        }
        tokio::spawn(metrics::serve(listener, metrics.clone()));
        let cursor = match &start {
            edge_agent::reconcile::Start::Saved(s) => s.state.cursor(),
            _ => 0,
        };
        tracing::info!(node_id = %config.node_id, cursor, metrics = %config.metrics_listen, "edge-agent started");
        notify_ready();
        let agent = Agent::new(config, metrics, store, start, Watchdog::from_env());
        tokio::select! {
            _ = agent.run() => {}
            _ = shutdown() => tracing::info!("edge-agent stopping"),
        }
        ExitCode::SUCCESS
    })
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EDGE_AGENT_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        // A log line that cannot be written (stderr closed: a pipe whose
        // reader left, a journald hiccup) is dropped. The default reports
        // it with eprintln!, which panics on the same closed stderr.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// systemd `Type=notify`: ready once the state is loaded and /metrics is
/// bound. The watchdog is the sync loop's ([`Watchdog`]).
fn notify_ready() {
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "sd_notify READY failed");
    }
}
