#!/usr/bin/env bash
# Run tests/python/wecom against a real `hearth emulate wecom`: its URL mode checked with an independent
# implementation of WeCom's callback crypto (Python's `cryptography`, written from the documentation).
#
# Usage: tests/python/run-wecom.sh
# Needs target/release/hearth (cargo build --release -p gateway); no model.
# cryptography and pytest are installed, pinned, into a virtual environment under target/ on first use.
# The emulator runs on a free port and is stopped with SIGTERM at the end, which must exit cleanly.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

require_hearth
pinned_venv "${HEARTH_WECOM_VENV:-$ROOT/target/python-venv-wecom}" cryptography==50.0.2 pytest==9.2.0

# Port 0: the emulator prints its base URL as the first line of stdout. Refreshes every 50 ms keep it short.
start_process "hearth emulate wecom" "$HEARTH" emulate wecom --port 0 --refresh-interval-ms 50
wait_first_line 30

status=0
WECOM_EMULATOR_URL="$FIRST_LINE" PYTHONDONTWRITEBYTECODE=1 \
    "$PY" -m pytest -q -p no:cacheprovider "$ROOT/tests/python/wecom" || status=$?
finish "$status"
