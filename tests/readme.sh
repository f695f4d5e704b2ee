#!/usr/bin/env bash
# Runs the README: every ```sh block of README.md, in order, in one bash
# shell at the repository root, as a newcomer would paste them. Blocks
# fenced as ```shell (or anything else) are shown, not run. Fails on the
# first command that fails; background processes the README starts are
# stopped by PID on the way out, whatever happened.
#
#   tests/readme.sh            # from anywhere inside the repository
set -euo pipefail
cd "$(dirname "$0")/.."

script=$(mktemp /tmp/readme.XXXXXX.sh)
trap 'rm -f "$script"' EXIT
{
  echo 'set -euo pipefail'
  echo 'set -x'
  # Stop whatever the README left running (its own kills come first).
  echo 'trap '"'"'for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done; wait || true'"'"' EXIT'
  awk '
    /^```sh[[:space:]]*$/ { inside = 1; next }
    /^```/ && inside      { inside = 0; print ""; next }
    inside                { print }
  ' README.md
} >"$script"

blocks=$(grep -c '^```sh[[:space:]]*$' README.md)
echo "tests/readme.sh: running ${blocks} blocks of README.md"
bash "$script"
echo "tests/readme.sh: the README ran to the end"
