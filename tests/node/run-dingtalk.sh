#!/usr/bin/env bash
# Run tests/node/dingtalk (the official dingtalk-stream SDK for Node, from npm) against a real
# `hearth emulate dingtalk`.
#
# Usage: tests/node/run-dingtalk.sh
# Needs target/release/hearth (cargo build --release -p gateway), node (20+) and npm; no model.
# The SDK is installed, pinned by package-lock.json, into tests/node/node_modules on first use.
# The emulator runs on a free port and is stopped with SIGTERM at the end, which must exit cleanly.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
HERE=$ROOT/tests/node

require_hearth
command -v node >/dev/null || { echo "$SCRIPT: node is missing: apt-get install nodejs npm" >&2; exit 1; }

if [[ ! -f $HERE/node_modules/dingtalk-stream/package.json ]] \
    || [[ $(node -p "require('$HERE/node_modules/dingtalk-stream/package.json').version.replace(/^v/, '')") != $(node -p "require('$HERE/package.json').devDependencies['dingtalk-stream']") ]]; then
    echo "$SCRIPT: installing dingtalk-stream into $HERE/node_modules" >&2
    (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
fi

# Port 0: the emulator prints its base URL as the first line of stdout. Pings every second so the test sees
# the SDK answer them.
start_process "hearth emulate" "$HEARTH" emulate dingtalk --port 0 --ping-secs 1
wait_first_line 30

status=0
(cd "$HERE" && DINGTALK_EMULATOR_URL="$FIRST_LINE" node --test dingtalk/sdk.test.mjs) || status=$?
finish "$status"
