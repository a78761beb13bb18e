#!/usr/bin/env bash
# CI entry point for the Terraform checks that need no cloud account:
#   bash infra/check/check_hcl.sh          # parse + format + policy; non-zero on any problem
#   bash infra/check/check_hcl.sh --fix    # rewrite files into canonical format first
#
# Installs its own tools (idempotent): the npm packages pinned in
# infra/check/package-lock.json go to target/infra-check/node_modules. Node.js >= 18
# comes with the machine image; when it is missing and we are root, it is installed
# from Debian's packages.
#
# If a real `terraform` (or `tofu`) binary is on PATH it is used *in addition*
# (`fmt -check`); it is never required, because CI machines cannot download it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tools="${TAVLE_INFRA_CHECK_DIR:-$root/target/infra-check}"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "infra/check: installing nodejs + npm from Debian packages" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  else
    echo "infra/check: node and npm are required (apt-get install nodejs npm)" >&2
    exit 2
  fi
fi

node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 18 ]; then
  echo "infra/check: Node.js >= 18 required, found $(node --version)" >&2
  exit 2
fi

# (Re)install only when the lock file changed since the last install.
mkdir -p "$tools"
stamp="$tools/.lock.sha256"
want="$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)"
if [ ! -d "$tools/node_modules/@cdktf/hcl2json" ] || [ ! -d "$tools/node_modules/@cdktf/hcl-tools" ] ||
  [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  cp "$here/package.json" "$here/package-lock.json" "$tools/"
  (cd "$tools" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
  echo "$want" >"$stamp"
fi

# ES modules resolve bare imports relative to the importing file (NODE_PATH does not
# apply), so run a copy of the checker placed next to its node_modules.
cp "$here/check_hcl.mjs" "$tools/check_hcl.mjs"
TAVLE_EEA_REGIONS="$here/eea_regions.json" node "$tools/check_hcl.mjs" "$@" "$root/infra/terraform"

# Optional second opinion from the real formatter, when present on this machine.
if [ "${TAVLE_SKIP_TERRAFORM_FMT:-0}" != "1" ]; then
  for bin in terraform tofu; do
    if command -v "$bin" >/dev/null 2>&1; then
      if ! "$bin" fmt -check -recursive -diff "$root/infra/terraform" >/dev/null 2>"$tools/fmt.err"; then
        "$bin" fmt -check -recursive -diff "$root/infra/terraform" || true
        echo "infra/check: '$bin fmt -check' reports formatting differences" >&2
        exit 1
      fi
      echo "infra/check: '$bin fmt -check' agrees"
      break
    fi
  done
fi
