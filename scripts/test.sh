#!/usr/bin/env bash
# The test command: fetch the real models the tests use, build, run every test. Works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-models.sh --all

echo "== architecture check: the gateway never names a candle crate or path"
if grep -rnE "candle[_-]" gateway/src gateway/Cargo.toml; then
    echo "gateway must not depend on or name candle" >&2
    exit 1
fi

echo "== cargo test"
cargo build --release --workspace
cargo test --release --workspace -- --test-threads 1

echo "== the official OpenAI Python client against hearth serve"
tests/python/run.sh

echo "== the official DingTalk Stream SDK against hearth emulate dingtalk"
tests/python/run-dingtalk.sh
