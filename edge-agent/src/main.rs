//! `edge-agent --config agent.toml`. See docs/operations.md.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use daemon::exit::{START as EXIT_START, USAGE as EXIT_USAGE};
use daemon::logging::LogFormat;
use edge_agent::config::Config;
use edge_agent::metrics::{self, Metrics};
use edge_agent::store::Store;
use edge_agent::sync::Agent;
use edge_agent::watchdog::Watchdog;

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

fn main() -> ExitCode {
    let cli: Cli = match daemon::exit::parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    daemon::logging::init("EDGE_AGENT_LOG", cli.log_format);
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
        // Ready once the state is loaded and /metrics is bound; the sync
        // loop pets the watchdog ([`Watchdog`]).
        daemon::notify::ready();
        let agent = Agent::new(config, metrics, store, start, Watchdog::from_env());
        tokio::select! {
            _ = agent.run() => {}
            _ = daemon::signals::shutdown() => tracing::info!("edge-agent stopping"),
        }
        ExitCode::SUCCESS
    })
}
