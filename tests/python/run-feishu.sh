#!/usr/bin/env bash
# Run tests/python/feishu (the official Feishu/Lark SDK for Python, lark-oapi) against a real
# `hearth emulate feishu`.
#
# Usage: tests/python/run-feishu.sh
# Needs target/release/hearth (cargo build --release -p gateway); no model.
# The SDK and pytest are installed, pinned, into a virtual environment under target/ on first use.
# The emulator runs on a free port and is stopped with SIGTERM at the end, which must exit cleanly.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

require_hearth
pinned_venv "${HEARTH_FEISHU_VENV:-$ROOT/target/python-venv-feishu}" lark-oapi==1.7.5 pytest==9.2.0

# Port 0: the emulator prints its base URL as the first line of stdout. PingInterval 1 s, handed to the SDK in
# discovery and pongs, so the test sees it ping.
start_process "hearth emulate" "$HEARTH" emulate feishu --port 0 --ping-secs 1
wait_first_line 30

status=0
FEISHU_EMULATOR_URL="$FIRST_LINE" PYTHONDONTWRITEBYTECODE=1 \
    "$PY" -m pytest -q -p no:cacheprovider "$ROOT/tests/python/feishu" || status=$?
finish "$status"
