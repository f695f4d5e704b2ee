//! Shared helpers for the benchmarks in `benches/benches/`.

use std::path::PathBuf;
use std::process::Command;

/// Builds the release binaries the benchmarks run and returns the target
/// directory holding them (`target/release`).
pub fn release_binaries() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "edge", "-p", "edge-agent"])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build --release failed");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release");
    std::env::set_var("EDGE_BIN", dir.join("edge"));
    std::env::set_var("EDGE_AGENT_BIN", dir.join("edge-agent"));
    dir
}

/// The `p`-th percentile (0-100) of sorted samples.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub mod load;
pub mod memory;
