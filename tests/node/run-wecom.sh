#!/usr/bin/env bash
# Run tests/node/wecom (the official @wecom/aibot-node-sdk, from npm) against a real `hearth emulate wecom`.
#
# Usage: tests/node/run-wecom.sh
# Needs target/release/hearth (cargo build --release -p gateway), node (20+) and npm; no model.
# The SDK is installed, pinned by tests/node/wecom/package-lock.json, into tests/node/wecom/node_modules on
# first use. The emulator runs on a free port and is stopped with SIGTERM at the end, which must exit cleanly.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
HERE=$ROOT/tests/node/wecom
SDK=@wecom/aibot-node-sdk

require_hearth
command -v node >/dev/null || { echo "$SCRIPT: node is missing: apt-get install nodejs npm" >&2; exit 1; }

if [[ ! -f $HERE/node_modules/$SDK/package.json ]] \
    || [[ $(node -p "require('$HERE/node_modules/$SDK/package.json').version") != $(node -p "require('$HERE/package.json').devDependencies['$SDK']") ]]; then
    echo "$SCRIPT: installing $SDK into $HERE/node_modules" >&2
    (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
fi

# Port 0: the emulator prints its base URL as the first line of stdout.
start_process "hearth emulate wecom" "$HEARTH" emulate wecom --port 0
wait_first_line 30

status=0
(cd "$HERE" && WECOM_EMULATOR_URL="$FIRST_LINE" node --test sdk.test.mjs) || status=$?
finish "$status"
