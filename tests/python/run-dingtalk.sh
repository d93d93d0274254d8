#!/usr/bin/env bash
# Run tests/python/dingtalk (the official dingtalk-stream Python SDK) against a real `hearth emulate dingtalk`.
#
# Usage: tests/python/run-dingtalk.sh
# Needs target/release/hearth (cargo build --release -p gateway); no model.
# The SDK and pytest are installed, pinned, into a virtual environment under target/ on first use.
# The emulator runs on a free port and is stopped with SIGTERM at the end, which must exit cleanly.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HEARTH=${HEARTH_BIN:-$ROOT/target/release/hearth}
VENV=${HEARTH_DINGTALK_VENV:-$ROOT/target/python-venv-dingtalk}
SDK_VERSION=0.24.3
PYTEST_VERSION=9.2.0

[[ -x $HEARTH ]] || { echo "run-dingtalk.sh: $HEARTH is missing: cargo build --release -p gateway" >&2; exit 1; }

if ! "$VENV/bin/python" -c "import sys, importlib.metadata as m, pytest; sys.exit(m.version('dingtalk-stream') != '$SDK_VERSION' or pytest.__version__ != '$PYTEST_VERSION')" 2>/dev/null; then
    echo "run-dingtalk.sh: installing dingtalk-stream==$SDK_VERSION and pytest==$PYTEST_VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "dingtalk-stream==$SDK_VERSION" "pytest==$PYTEST_VERSION"
fi
PY=$VENV/bin/python

OUT=$(mktemp -t hearth-emulate.XXXXXX)
LOG=$(mktemp -t hearth-emulate-log.XXXXXX)
# Port 0: the emulator prints its base URL as the first line of stdout. Pings every second so the test sees
# the SDK answer them.
"$HEARTH" emulate dingtalk --port 0 --ping-secs 1 >"$OUT" 2>"$LOG" &
EMULATOR=$!
stop_emulator() {
    if kill -0 "$EMULATOR" 2>/dev/null; then
        kill -TERM "$EMULATOR" 2>/dev/null || true
        wait "$EMULATOR" 2>/dev/null || true
    fi
    rm -f "$OUT"
}
trap stop_emulator EXIT

BASE=$("$PY" - "$OUT" "$EMULATOR" <<'PY'
import os, sys, time
path, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    with open(path) as f:
        line = f.readline()
    if line.endswith("\n"):
        print(line.strip())
        sys.exit(0)
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("hearth emulate exited before it was ready")
    time.sleep(0.05)
sys.exit("hearth emulate did not print its address within 30 s")
PY
) || { echo "run-dingtalk.sh: emulator log:" >&2; tail -n 50 "$LOG" >&2; exit 1; }

status=0
DINGTALK_EMULATOR_URL="$BASE" PYTHONDONTWRITEBYTECODE=1 \
    "$PY" -m pytest -q -p no:cacheprovider "$ROOT/tests/python/dingtalk" || status=$?

kill -TERM "$EMULATOR"
emulator_status=0
wait "$EMULATOR" || emulator_status=$?
trap - EXIT
rm -f "$OUT"
if [[ $status -ne 0 || $emulator_status -ne 0 ]]; then
    [[ $emulator_status -ne 0 ]] && echo "run-dingtalk.sh: hearth emulate exited with status $emulator_status after SIGTERM" >&2
    echo "run-dingtalk.sh: emulator log (last 50 lines):" >&2
    tail -n 50 "$LOG" >&2
    rm -f "$LOG"
    exit $(( status != 0 ? status : 1 ))
fi
rm -f "$LOG"
