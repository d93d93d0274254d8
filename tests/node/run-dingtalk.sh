#!/usr/bin/env bash
# Run tests/node/dingtalk (the official dingtalk-stream SDK for Node, from npm) against a real
# `hearth emulate dingtalk`.
#
# Usage: tests/node/run-dingtalk.sh
# Needs target/release/hearth (cargo build --release -p gateway), node (20+) and npm; no model.
# The SDK is installed, pinned by package-lock.json, into tests/node/node_modules on first use.
# The emulator runs on a free port and is stopped with SIGTERM at the end, which must exit cleanly.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
HEARTH=${HEARTH_BIN:-$ROOT/target/release/hearth}

[[ -x $HEARTH ]] || { echo "run-dingtalk.sh: $HEARTH is missing: cargo build --release -p gateway" >&2; exit 1; }
command -v node >/dev/null || { echo "run-dingtalk.sh: node is missing: apt-get install nodejs npm" >&2; exit 1; }

if [[ ! -f $HERE/node_modules/dingtalk-stream/package.json ]] \
    || [[ $(node -p "require('$HERE/node_modules/dingtalk-stream/package.json').version.replace(/^v/, '')") != $(node -p "require('$HERE/package.json').devDependencies['dingtalk-stream']") ]]; then
    echo "run-dingtalk.sh: installing dingtalk-stream into $HERE/node_modules" >&2
    (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
fi

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

BASE=
for _ in $(seq 600); do
    if [[ $(wc -l <"$OUT") -ge 1 ]]; then BASE=$(head -n 1 "$OUT"); break; fi
    kill -0 "$EMULATOR" 2>/dev/null || break
    sleep 0.05
done
if [[ -z $BASE ]]; then
    echo "run-dingtalk.sh: hearth emulate did not print its address; its log:" >&2
    tail -n 50 "$LOG" >&2
    exit 1
fi

status=0
(cd "$HERE" && DINGTALK_EMULATOR_URL="$BASE" node --test dingtalk/sdk.test.mjs) || status=$?

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
