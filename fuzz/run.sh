#!/usr/bin/env bash
# Runs every fuzz target for a fixed time (default 60 s each) on the stable
# toolchain (RUSTC_BOOTSTRAP=1 enables the sanitizer flags cargo-fuzz
# needs), starting from the committed seed corpora. Installs cargo-fuzz if
# missing. Prints the executions per target; exits non-zero on any crash.
#
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(client_hello proxy_v2 events edge_toml)

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1

summary=()
for t in "${targets[@]}"; do
  scratch="scratch/$t"
  mkdir -p "$scratch"
  cp -n corpus/"$t"/* "$scratch"/ 2>/dev/null || true
  echo "=== fuzz $t for ${seconds}s"
  log="scratch/$t.log"
  if ! cargo fuzz run "$t" "$scratch" -- -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz/run.sh: $t FAILED (crash input under fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  summary+=("$t: ${runs:-?} executions in ${seconds}s")
  tail -3 "$log"
done
echo
printf 'fuzz: %s\n' "${summary[@]}"
