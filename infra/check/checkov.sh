#!/usr/bin/env bash
# CI entry point for the security scan of infra/terraform and infra/k8s with checkov:
#   bash infra/check/checkov.sh                 # scan + self-test; non-zero on any finding
#   bash infra/check/checkov.sh --no-self-test  # the scan only
#
# 1. Installs checkov with every dependency pinned (infra/check/checkov/requirements.txt)
#    into target/checkov-venv, once per version of that file.
# 2. Scans infra/terraform (framework terraform) and infra/k8s (kubernetes) with
#    checkov's built-in policies plus the project's own (infra/check/checkov/policies,
#    CKV_TAVLE_*). Every finding fails the run unless it is skipped inline in the file
#    (`#checkov:skip=ID:reason`; the accepted skips and their reasons are listed in
#    infra/README.md, "Security scan"). A file checkov cannot parse fails it too.
# 3. Self-test (checkov_selftest.py): injects each violation the project's policies
#    exist for into a copy of the files and fails unless checkov reports it.
#
# Offline: no API key, so nothing is uploaded; --skip-download and BC_SKIP_MAPPING
# keep it from fetching policies and guideline mappings from Prisma Cloud, and
# CKV_SKIP_PACKAGE_UPDATE_CHECK from asking PyPI for a newer version at start.
# Verified with every connection sent to a proxy that logs it: none is attempted.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
venv="$target/checkov-venv"
python="${PYTHON:-python3}"
reqs="$here/checkov/requirements.txt"

# --- 1. install (idempotent) -------------------------------------------------------
want="$(sha256sum "$reqs" | cut -d' ' -f1)"
if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null || true)" != "$want" ] || [ ! -x "$venv/bin/checkov" ]; then
  echo "infra/check: installing checkov ($(grep '^checkov==' "$reqs")) into $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$reqs"
  echo "$want" >"$venv/.requirements.sha256"
fi

# --- 2. scan -------------------------------------------------------------------------
export CKV_SKIP_PACKAGE_UPDATE_CHECK=true # no version check against PyPI at start
export BC_SKIP_MAPPING=TRUE               # no guideline/ID mapping download
export CKV_PARSE_ERROR_FAIL=true          # an unparsable file fails instead of vanishing
unset BC_API_KEY PRISMA_API_URL           # never talk to the platform, whatever is set
checkov_args=(--skip-download --compact --quiet --external-checks-dir "$here/checkov/policies")

status=0
for scan in terraform:infra/terraform kubernetes:infra/k8s; do
  framework="${scan%%:*}" dir="${scan#*:}"
  echo "infra/check: checkov --framework $framework $dir"
  # --quiet lists failed checks only; the summary line counts passed and skipped ones.
  (cd "$root" && "$venv/bin/checkov" --framework "$framework" -d "$dir" "${checkov_args[@]}") || status=1
done
if [ "$status" != 0 ]; then
  echo "infra/check: checkov reports findings (fix them, or skip one inline with a reason and list it in infra/README.md)" >&2
  exit 1
fi

# --- 3. self-test ----------------------------------------------------------------------
if [ "${1:-}" != "--no-self-test" ]; then
  "$venv/bin/python" "$here/checkov_selftest.py" "$venv/bin/checkov" "${checkov_args[@]}"
fi
