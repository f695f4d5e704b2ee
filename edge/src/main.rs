//! `edge`: the data plane binary. See the README and docs/operations.md.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use daemon::exit::{DATAERR as EXIT_REJECTED, START as EXIT_START, USAGE as EXIT_USAGE};
use daemon::logging::LogFormat;
use edge::check;
use edge::config::Config;

#[derive(Parser)]
#[command(
    version,
    about = "L4 edge: TLS SNI passthrough and raw TCP to microVM backends over an IPv6 overlay"
)]
struct Cli {
    /// Path to edge.toml.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log line format on stderr (filter with EDGE_LOG or RUST_LOG).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config and print the compiled listener table; exit non-zero on any error.
    Check {
        /// Fail only on what stops the edge from starting (an unreadable
        /// file, bad TOML, wrong types or values); objects that the route
        /// policy rejects are not checked. What systemd runs before start.
        #[arg(long)]
        syntax_only: bool,
    },
}

fn main() -> ExitCode {
    let cli: Cli = match daemon::exit::parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    daemon::logging::init("EDGE_LOG", cli.log_format);
    let Some(path) = cli.config else {
        eprintln!("edge: --config <edge.toml> is required");
        return ExitCode::from(EXIT_USAGE);
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edge: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match cli.command {
        Some(Command::Check { syntax_only: true }) => {
            emit(&check::syntax_report(&config));
            ExitCode::SUCCESS
        }
        Some(Command::Check { syntax_only: false }) => {
            let compiled = check::compile_config(&config);
            emit(&check::report(&compiled));
            if compiled.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_REJECTED)
            }
        }
        None => {
            let runtime = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("edge: cannot start the runtime: {e}");
                    return ExitCode::from(EXIT_START);
                }
            };
            match runtime.block_on(edge::lifecycle::run(path, config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "edge cannot start");
                    ExitCode::from(EXIT_START)
                }
            }
        }
    }
}

/// One worker thread per core the process may run on (its CPU affinity,
/// so `taskset` and systemd's `CPUAffinity=` are honoured). On a single
/// core the current-thread scheduler does the same work without the
/// cross-thread bookkeeping of work stealing.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cores);
        b
    };
    builder.enable_all().build()
}

/// Writes a report to stdout; a reader that went away (`edge check | head`)
/// is not an error worth a panic.
fn emit(report: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(report.as_bytes());
}
