#!/usr/bin/env bash
# Tavle's test command (README: "Test it"). Runs on a fresh machine: installs
# what it needs, then formatting, lints, every test against real PostgreSQL,
# release builds of every Spin component for wasm32-wasip2, the infra checks
# (HCL policy checker, checkov scan) and schemathesis against the native host.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step reports how long the previous one took (tests/README.md lists them).
last_step=""; last_start=$SECONDS
step() {
  [ -n "$last_step" ] && printf '==> (%s: %d s)\n' "$last_step" "$((SECONDS - last_start))"
  last_step="$*"; last_start=$SECONDS
  printf '\n==> %s\n' "$*"
}

step "toolchain"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
if [ ! -x "${TAVLE_PG_BIN:-/usr/lib/postgresql/15/bin}/postgres" ]; then
  step "installing PostgreSQL 15 (tests start their own throwaway cluster)"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq postgresql-15 >/dev/null
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (native and wasm32-wasip2)"
cargo clippy --workspace --all-targets --locked -- -D warnings
components=$(sed -n 's/.*cargo build --target wasm32-wasip2 --release -p \([a-z0-9-]*\).*/\1/p' spin.toml | sort -u)
for c in $components tavle-db-probe; do
  cargo clippy --target wasm32-wasip2 --locked -p "$c" -- -D warnings
done

step "release build of every component for wasm32-wasip2 (the build commands of spin.toml)"
# Before the tests: the Spin tests run these very files (they rebuild them
# only if a source changed since).
grep -o 'command = "cargo build --target wasm32-wasip2 --release -p [a-z0-9-]*"' spin.toml | sed 's/command = "\(.*\)"/\1/' | sort -u | while read -r cmd; do
  echo "$cmd"; $cmd --locked
done
for c in $components; do
  f="target/wasm32-wasip2/release/${c//-/_}.wasm"
  test -s "$f" || { echo "missing $f"; exit 1; }
  printf '%s %s bytes\n' "$f" "$(stat -c %s "$f")"
done
# The test fixture component (tests/fixtures/db-probe), for the Spin tests only.
cargo build --target wasm32-wasip2 --release -p tavle-db-probe --locked

step "tests (each integration test on its own fresh database; tests/tests/spin*.rs on real Spin)"
echo "Spin CLI: $(bash tests/spin-cli.sh --version)"
cargo test --workspace --locked

step "benchmark smoke runs (same code paths, few requests; figures are not results)"
BENCH_SMOKE=1 cargo bench -p tavle-tests --bench spin --bench login --bench ingest --bench students --bench access_log --bench subject_requests --bench retention --locked

step "infrastructure checks (HCL parse/format/policy)"
bash infra/check/check_hcl.sh

step "infrastructure security scan (checkov, offline, with the project's policies and their self-test)"
bash infra/check/checkov.sh

if [ -f .ci/schemathesis.sh ]; then
  step "schemathesis against the native host"
  # The debug host from the test step: no extra LTO release build on 2 cores.
  TAVLE_PROFILE=dev bash .ci/schemathesis.sh
fi
step "done"
echo "all checks passed in $SECONDS s"
