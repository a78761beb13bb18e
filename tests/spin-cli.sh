#!/usr/bin/env bash
# Runs the Spin CLI the tests use (tests/src/spin.rs): $SPIN_BIN, else `spin`
# on PATH, else the Spin 4.0.2 build for this machine type in
# ../shared/tools/spin/ beside the project. Users install Spin 4 the usual way.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ -n "${SPIN_BIN:-}" ]; then exec "$SPIN_BIN" "$@"; fi
if command -v spin >/dev/null 2>&1; then exec spin "$@"; fi
bundled="$root/../shared/tools/spin/spin"
if [ -x "$bundled" ]; then exec "$bundled" "$@"; fi
echo "no Spin CLI: set SPIN_BIN, put spin (Spin 4) on PATH, or provide $bundled" >&2
exit 1
