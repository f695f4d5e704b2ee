#!/usr/bin/env bash
# Checks the unit files with systemd-analyze verify, pointing ExecStart at
# the binaries of this checkout (verify insists they exist and are
# executable). Usage: deploy/systemd/verify.sh [target/debug]
set -euo pipefail
cd "$(dirname "$0")/../.."
bin_dir="$(realpath "${1:-target/debug}")"
for b in edge edge-agent; do
  [ -x "$bin_dir/$b" ] || { echo "verify.sh: $bin_dir/$b missing: build first" >&2; exit 1; }
done
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for unit in edge edge-agent; do
  sed -e "s#/usr/bin/edge-agent#$bin_dir/edge-agent#g" -e "s#/usr/bin/edge #$bin_dir/edge #g" \
    "deploy/systemd/$unit.service" > "$tmp/$unit.service"
done
systemd-analyze verify "$tmp/edge.service" "$tmp/edge-agent.service"
echo "systemd-analyze verify: edge.service and edge-agent.service OK"
