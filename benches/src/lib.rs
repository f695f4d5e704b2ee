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

/// What the load and memory harnesses do first: build the release
/// binaries, raise `RLIMIT_NOFILE` to its hard limit (returned), pin this
/// process (generator and backends) to core 0, and read the phases named on
/// the command line.
pub fn start_pinned_harness() -> (u64, Phases) {
    release_binaries();
    let (_, hard) = rlimit::Resource::NOFILE.get().expect("RLIMIT_NOFILE");
    rlimit::Resource::NOFILE
        .set(hard, hard)
        .expect("raise RLIMIT_NOFILE");
    let pinned = Command::new("taskset")
        .args(["-pc", "0", &std::process::id().to_string()])
        .output();
    assert!(
        pinned.map(|o| o.status.success()).unwrap_or(false),
        "taskset (util-linux) is needed"
    );
    let named = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    (hard, Phases(named))
}

/// The phases a harness was asked to run (all when none is named).
#[derive(Debug)]
pub struct Phases(Vec<String>);

impl Phases {
    pub fn wants(&self, phase: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|p| p == phase)
    }
}

/// The `p`-th percentile (0-100) of sorted samples.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub mod load;
pub mod memory;
