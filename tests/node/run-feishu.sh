#!/usr/bin/env bash
# Run tests/node/feishu (the official Feishu/Lark SDK for Node, npm @larksuiteoapi/node-sdk) against a real
# `hearth emulate feishu`.
#
# Usage: tests/node/run-feishu.sh
# Needs target/release/hearth (cargo build --release -p gateway), node (20+) and npm; no model.
# The SDK is installed, pinned by package-lock.json, into tests/node/node_modules on first use.
# The emulator runs on a free port and is stopped with SIGTERM at the end, which must exit cleanly.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
HERE=$ROOT/tests/node
SDK=@larksuiteoapi/node-sdk

require_hearth
command -v node >/dev/null || { echo "$SCRIPT: node is missing: apt-get install nodejs npm" >&2; exit 1; }

if [[ ! -f $HERE/node_modules/$SDK/package.json ]] \
    || [[ $(node -p "require('$HERE/node_modules/$SDK/package.json').version") != $(node -p "require('$HERE/package.json').devDependencies['$SDK']") ]]; then
    echo "$SCRIPT: installing $SDK into $HERE/node_modules" >&2
    (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
fi

# Port 0: the emulator prints its base URL as the first line of stdout. PingInterval 1 s, handed to the SDK in
# discovery and pongs, so the test sees it ping.
start_process "hearth emulate" "$HEARTH" emulate feishu --port 0 --ping-secs 1
wait_first_line 30

status=0
(cd "$HERE" && FEISHU_EMULATOR_URL="$FIRST_LINE" node --test feishu/sdk.test.mjs) || status=$?
finish "$status"
