//! Log lines on stderr, as text or JSON, filtered by the binary's own
//! variable (`EDGE_LOG`, `EDGE_AGENT_LOG`, `EDGE_FEED_LOG`), then
//! `RUST_LOG`, then `info`.

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. Colour only on a terminal.
pub fn init(filter_var: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(filter_var)
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
