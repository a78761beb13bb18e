#!/usr/bin/env bash
# Checks the running service against openapi.yaml with Schemathesis.
#
#   bash .ci/schemathesis.sh
#
# 1. installs Schemathesis from PyPI into target/schemathesis-venv (once per
#    pinned version);
# 2. builds the native host and starts `tavle dev --demo` on a free loopback
#    port, with its own throw-away PostgreSQL under target/schemathesis/ (the
#    routes come from the real spin.toml, through a symlink, so the developer's
#    own `.tavle/` stays untouched);
# 3. logs in as `admin` of the demo tenant to get a bearer token, and gives
#    that user a school-leader grant for the demo school and the privacy
#    officer role besides tenant admin (through `PUT /admin/users/{id}/roles`),
#    so that the pupil operations answer with pupil data and access logs
#    rather than only 403/404;
# 4. fuzzes every documented operation except those that would end or lock
#    the session in use (logout; password change, whose wrong guesses count
#    towards the lockout), with bounded examples;
# 5. fails if Schemathesis finds a failure or if the admin session did not
#    survive the run (every later answer would have been a mere 401).
#
# The host is stopped on exit, whatever happens.
#
# Settings (environment): SCHEMATHESIS_MAX_EXAMPLES (default 30),
# SCHEMATHESIS_SEED (default: random), SCHEMATHESIS_WORKERS (default 1: with
# 2, CPython 3.11.7 sometimes dies with "AST constructor recursion depth
# mismatch" inside schemathesis, a thread-safety bug of that Python),
# SCHEMATHESIS_CHECKS (comma-separated; default: see CHECKS below),
# TAVLE_PROFILE (cargo profile of the host; default release), TAVLE_BIN (an
# already built `tavle` binary: skips the build), PYTHON (default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SCHEMATHESIS_VERSION=4.32.5
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
VENV="$TARGET_DIR/schemathesis-venv"
WORK="$TARGET_DIR/schemathesis"
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-30}"
WORKERS="${SCHEMATHESIS_WORKERS:-1}"
PROFILE="${TAVLE_PROFILE:-release}"
PYTHON="${PYTHON:-python3}"
# The conformance checks, plus: protected operations refuse requests without
# credentials (ignored_auth), a deleted user is gone (use_after_free), a
# created user can be read back (ensure_resource_availability).
CHECKS="${SCHEMATHESIS_CHECKS:-not_a_server_error,unsupported_method,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,ignored_auth,use_after_free,ensure_resource_availability}"

log() { printf '==> %s\n' "$*" >&2; }

# --- 1. Schemathesis ---------------------------------------------------------
if ! "$VENV/bin/st" --version 2>/dev/null | grep -qx "st, version $SCHEMATHESIS_VERSION"; then
    log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
"$VENV/bin/st" --version >&2

# --- 2. The host ---------------------------------------------------------------
if [ -n "${TAVLE_BIN:-}" ]; then
    BIN="$TAVLE_BIN"
    log "using the host binary $BIN"
elif [ "$PROFILE" = release ]; then
    log "building the native host (release)"
    cargo build --quiet --locked -p tavle --release
    BIN="$TARGET_DIR/release/tavle"
else
    log "building the native host ($PROFILE)"
    cargo build --quiet --locked -p tavle --profile "$PROFILE"
    BIN="$TARGET_DIR/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")/tavle"
fi

# A fresh state directory for every run: `tavle dev` keeps its PostgreSQL and
# development keys in `.tavle/` beside the manifest it is given.
rm -rf "$WORK"
mkdir -p "$WORK"
ln -s "$ROOT/spin.toml" "$WORK/spin.toml"
HOST_LOG="$WORK/host.log"

PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BASE="http://127.0.0.1:$PORT"

HOST_PID=""
cleanup() {
    local status=$?
    if [ -n "$HOST_PID" ] && kill -0 "$HOST_PID" 2>/dev/null; then
        log "stopping the host (pid $HOST_PID)"
        kill -TERM "$HOST_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$HOST_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$HOST_PID" 2>/dev/null || true
        wait "$HOST_PID" 2>/dev/null || true
    fi
    # PostgreSQL follows its parent (parent-death signal: fast shutdown);
    # wait for it so that the next run finds the directory free.
    for _ in $(seq 1 75); do
        [ -e "$WORK/.tavle/pg/data/postmaster.pid" ] || break
        sleep 0.2
    done
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting tavle dev --demo on $BASE (log: $HOST_LOG)"
# Longer token and idle lifetimes than the defaults, so that a slow run cannot
# outlive its token; everything else (lockout included) stays as configured.
SPIN_VARIABLE_ACCESS_TOKEN_MINUTES=60 SPIN_VARIABLE_SESSION_IDLE_MINUTES=60 \
    "$BIN" dev --demo --listen 127.0.0.1 --port "$PORT" --workers 2 --manifest "$WORK/spin.toml" \
    >"$HOST_LOG" 2>&1 </dev/null &
HOST_PID=$!

for i in $(seq 1 240); do
    if ! kill -0 "$HOST_PID" 2>/dev/null; then
        log "the host exited during start-up:"
        cat "$HOST_LOG" >&2
        exit 1
    fi
    if grep -q '^Tavle listening on ' "$HOST_LOG" &&
        curl -s -o /dev/null --max-time 2 "$BASE/auth/me"; then
        break
    fi
    if [ "$i" = 240 ]; then
        log "the host did not answer within 120 s:"
        cat "$HOST_LOG" >&2
        exit 1
    fi
    sleep 0.5
done

# --- 3. A bearer token -----------------------------------------------------------
ADMIN_PASSWORD="$(sed -n 's/^  admin  *tenant_admin  *password: \(.*\)$/\1/p' "$HOST_LOG" | tail -n 1)"
if [ -z "$ADMIN_PASSWORD" ]; then
    log "no demo admin password in the host's output:"
    cat "$HOST_LOG" >&2
    exit 1
fi
LOGIN_BODY="$(ADMIN_PASSWORD="$ADMIN_PASSWORD" "$PYTHON" -c \
    'import json, os; print(json.dumps({"tenant": "demo", "username": "admin", "password": os.environ["ADMIN_PASSWORD"]}))')"
TOKEN="$(curl -sS --fail-with-body --max-time 30 -H 'content-type: application/json' \
    --data "$LOGIN_BODY" "$BASE/auth/login" |
    "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')"
log "logged in as admin@demo"

# Pupil data is answered only to teachers and school leaders, access logs
# only to privacy officers: the same session gets those grants too (grants
# are read live on every request, so the token stays valid).
api() {
    curl -sS --fail-with-body --max-time 30 -H "Authorization: Bearer $TOKEN" "$@"
}
ADMIN_ID="$(api "$BASE/auth/me" | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["user"]["id"])')"
SCHOOL_ID="$(api "$BASE/schools?limit=1" | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["items"][0]["id"])')"
ROLES_BODY="$(SCHOOL_ID="$SCHOOL_ID" "$PYTHON" -c 'import json, os; print(json.dumps({"roles": [
    {"role": "tenant_admin"}, {"role": "privacy_officer"},
    {"role": "school_leader", "school_id": os.environ["SCHOOL_ID"]}]}))')"
api -o /dev/null -X PUT -H 'content-type: application/json' --data "$ROLES_BODY" "$BASE/admin/users/$ADMIN_ID/roles"
log "admin@demo also leads school $SCHOOL_ID and is privacy officer"

# --- 4. Schemathesis -------------------------------------------------------------
REPORT_DIR="$WORK/report"
ST_ARGS=(
    run "$ROOT/openapi.yaml"
    --url "$BASE"
    --header "Authorization: Bearer $TOKEN"
    --checks "$CHECKS"
    --max-examples "$MAX_EXAMPLES"
    --workers "$WORKERS"
    --exclude-operation-id logout
    --exclude-operation-id changePassword
    --generation-with-security-parameters false
    --generation-database none
    --request-timeout 30
    --report junit --report-dir "$REPORT_DIR"
    --no-color
)
if [ -n "${SCHEMATHESIS_SEED:-}" ]; then
    ST_ARGS+=(--seed "$SCHEMATHESIS_SEED")
fi

log "running schemathesis (max $MAX_EXAMPLES examples per operation)"
started=$SECONDS
set +e
# From the scratch directory: Schemathesis keeps its cache in `.schemathesis/`.
# The hooks accept one answer of the runtime's own (see the file).
(cd "$WORK" && SCHEMATHESIS_HOOKS="$ROOT/.ci/schemathesis_hooks.py" "$VENV/bin/st" "${ST_ARGS[@]}")
st_status=$?
set -e
log "schemathesis finished in $((SECONDS - started)) s with exit code $st_status (JUnit report in $REPORT_DIR)"

# --- 5. Did the session survive? -------------------------------------------------
me_status="$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -H "Authorization: Bearer $TOKEN" "$BASE/auth/me")"
if [ "$me_status" != 200 ]; then
    log "the admin session did not survive the run (GET /auth/me -> $me_status); the results are not meaningful"
    exit 1
fi
if grep -q ' status=500 ' "$HOST_LOG"; then
    log "the host answered 500 during the run:"
    grep -B2 ' status=500 ' "$HOST_LOG" >&2 || true
    [ "$st_status" = 0 ] && st_status=1
fi
exit "$st_status"
