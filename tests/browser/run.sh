#!/usr/bin/env bash
# Run tests/browser/ (the web console in headless Chromium, driven by playwright-core) against a real
# `hearth serve` with the SmolLM2 model and its DingTalk connector talking to a real `hearth emulate dingtalk`.
#
# Usage: tests/browser/run.sh [MODEL.gguf]
#        tests/browser/run.sh --prepare     only install playwright-core (needs the npm registry), then exit;
#                                          scripts/test.sh prepares, then runs the tests in a network
#                                          namespace with only loopback (unshare -n), so no asset can come
#                                          from outside.
# Needs target/release/hearth (cargo build --release -p gateway), the SmolLM2 model
# (default: ${HEARTH_MODELS_DIR:-~/.cache/hearth/models}/SmolLM2-135M-Instruct.Q4_1.gguf), node (20+), npm and
# Chromium (/usr/bin/chromium, or $CHROMIUM). playwright-core is installed, pinned by package-lock.json,
# into tests/browser/node_modules on first use. Screenshots go to target/console-screenshots/.
# Both servers run on free ports and are stopped with SIGTERM at the end; hearth serve must exit cleanly.
set -euo pipefail

PREPARE=0
if [[ ${1:-} == --prepare ]]; then PREPARE=1; shift; fi
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
HEARTH=${HEARTH_BIN:-$ROOT/target/release/hearth}
MODEL=${1:-${HEARTH_MODELS_DIR:-$HOME/.cache/hearth/models}/SmolLM2-135M-Instruct.Q4_1.gguf}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
SHOTS=$ROOT/target/console-screenshots
ADMIN_TOKEN=console-test-admin-token

[[ -x $HEARTH ]] || { echo "run.sh: $HEARTH is missing: cargo build --release -p gateway" >&2; exit 1; }
[[ -f $MODEL ]] || { echo "run.sh: $MODEL is missing: run scripts/fetch-models.sh" >&2; exit 1; }
[[ -x $CHROMIUM ]] || { echo "run.sh: $CHROMIUM is missing: apt-get install chromium" >&2; exit 1; }
command -v node >/dev/null || { echo "run.sh: node is missing: apt-get install nodejs npm" >&2; exit 1; }

if [[ ! -f $HERE/node_modules/playwright-core/package.json ]] \
    || [[ $(node -p "require('$HERE/node_modules/playwright-core/package.json').version") != $(node -p "require('$HERE/package.json').devDependencies['playwright-core']") ]]; then
    echo "run.sh: installing playwright-core into $HERE/node_modules" >&2
    (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
fi
((PREPARE)) && exit 0

free_port() { node -e 'const s = require("net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'; }
WORK=$(mktemp -d -t hearth-browser.XXXXXX)
EMULATOR_PID=
SERVER_PID=
cleanup() {
    for pid in $SERVER_PID $EMULATOR_PID; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# Wait until URL answers; give up when process PID exits or after 120 s.
wait_ready() {
    local url=$1 pid=$2 name=$3 log=$4
    for _ in $(seq 1200); do
        if node -e 'fetch(process.argv[1]).then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))' "$url"; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "run.sh: $name exited before it was ready:" >&2; tail -n 50 "$log" >&2; exit 1
        fi
        sleep 0.1
    done
    echo "run.sh: $name was not ready within 120 s:" >&2; tail -n 50 "$log" >&2; exit 1
}

EMULATOR_PORT=$(free_port)
"$HEARTH" emulate dingtalk --host 127.0.0.1 --port "$EMULATOR_PORT" >"$WORK/emulator.log" 2>&1 &
EMULATOR_PID=$!
EMULATOR_URL=http://127.0.0.1:$EMULATOR_PORT
wait_ready "$EMULATOR_URL/_emulator/api/state" "$EMULATOR_PID" "hearth emulate dingtalk" "$WORK/emulator.log"

PORT=$(free_port)
HEARTH_SERVER__ADMIN_TOKEN=$ADMIN_TOKEN "$HEARTH" serve --model "$MODEL" --host 127.0.0.1 --port "$PORT" --ctx-size 2048 \
    --emulator-url "$EMULATOR_URL" \
    --dingtalk-app-key dingemulatorappkey --dingtalk-app-secret emulator-app-secret \
    --dingtalk-card-template-id tpl --dingtalk-api-base-url "$EMULATOR_URL" --dingtalk-database "$WORK/dingtalk.sqlite" \
    >"$WORK/serve.log" 2>&1 &
SERVER_PID=$!
wait_ready "http://127.0.0.1:$PORT/health" "$SERVER_PID" "hearth serve" "$WORK/serve.log"

mkdir -p "$SHOTS"
status=0
(cd "$HERE" && HEARTH_BASE_URL="http://127.0.0.1:$PORT" EMULATOR_URL="$EMULATOR_URL" ADMIN_TOKEN=$ADMIN_TOKEN \
    SCREENSHOT_DIR="$SHOTS" CHROMIUM="$CHROMIUM" node --test --test-concurrency=1 markdown.test.js console.test.js) || status=$?

# Graceful shutdown: SIGTERM must stop hearth serve with exit status 0.
kill -TERM "$SERVER_PID"
server_status=0
wait "$SERVER_PID" || server_status=$?
SERVER_PID=
if [[ $status -ne 0 || $server_status -ne 0 ]]; then
    [[ $server_status -ne 0 ]] && echo "run.sh: hearth serve exited with status $server_status after SIGTERM" >&2
    echo "run.sh: hearth serve log (last 50 lines):" >&2
    tail -n 50 "$WORK/serve.log" >&2
    exit $(( status != 0 ? status : 1 ))
fi
echo "run.sh: screenshots in $SHOTS"
