#!/usr/bin/env bash
# Run tests/python/dingtalk (the official dingtalk-stream Python SDK) against a real `hearth emulate dingtalk`.
#
# Usage: tests/python/run-dingtalk.sh
# Needs target/release/hearth (cargo build --release -p gateway); no model.
# The SDK and pytest are installed, pinned, into a virtual environment under target/ on first use.
# The emulator runs on a free port and is stopped with SIGTERM at the end, which must exit cleanly.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

require_hearth
pinned_venv "${HEARTH_DINGTALK_VENV:-$ROOT/target/python-venv-dingtalk}" dingtalk-stream==0.24.3 pytest==9.2.0

# Port 0: the emulator prints its base URL as the first line of stdout. Pings every second so the test sees
# the SDK answer them.
start_process "hearth emulate" "$HEARTH" emulate dingtalk --port 0 --ping-secs 1
wait_first_line 30

status=0
DINGTALK_EMULATOR_URL="$FIRST_LINE" PYTHONDONTWRITEBYTECODE=1 \
    "$PY" -m pytest -q -p no:cacheprovider "$ROOT/tests/python/dingtalk" || status=$?
finish "$status"
