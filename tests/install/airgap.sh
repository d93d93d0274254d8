#!/usr/bin/env bash
# The air-gapped install, as CI runs it: make a bundle here, then inside a network namespace with no network
# (`unshare -n`: only a loopback device, brought up for the server) install from it into a scratch prefix and
# check that `hearth serve` answers a chat completion there. A second install from the same bundle must
# upgrade in place and keep the config. Needs root (for unshare) plus iproute2, zstd and curl.
#
# Usage: tests/install/airgap.sh [MODEL.gguf]     (default: the SmolLM2 model of scripts/fetch-models.sh)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MODEL=${1:-${HEARTH_MODELS_DIR:-$HOME/.cache/hearth/models}/SmolLM2-135M-Instruct.Q4_1.gguf}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$ROOT/install.sh" bundle --model "$MODEL" -o "$WORK/hearth-bundle.tar.zst"
# The installer travels inside the bundle; take it from there, as an operator on the offline machine would.
tar -C "$WORK" --zstd -xf "$WORK/hearth-bundle.tar.zst" hearth-bundle/install.sh

unshare -n bash -euo pipefail -s "$WORK" <<'INNER'
WORK=$1
if curl -s --max-time 3 -o /dev/null https://pypi.org/simple/; then
    echo "airgap: the namespace reaches the network; the test would prove nothing" >&2
    exit 1
fi
ip link set lo up
opts=(--prefix "$WORK/usr" --config-dir "$WORK/etc" --data-dir "$WORK/data" --port 18181)
"$WORK/hearth-bundle/install.sh" --from-bundle "$WORK/hearth-bundle.tar.zst" "${opts[@]}"
[[ $(stat -c %a "$WORK/etc/hearth.toml") == 600 ]] || { echo "airgap: config is not mode 600" >&2; exit 1; }
echo "# kept across upgrades" >>"$WORK/etc/hearth.toml"
"$WORK/hearth-bundle/install.sh" --from-bundle "$WORK/hearth-bundle.tar.zst" "${opts[@]}"
grep -q "# kept across upgrades" "$WORK/etc/hearth.toml" || { echo "airgap: the upgrade replaced the config" >&2; exit 1; }

"$WORK/usr/bin/hearth" --config "$WORK/etc/hearth.toml" serve >"$WORK/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 600); do
    curl -sf http://127.0.0.1:18181/readyz >/dev/null && break
    kill -0 $server 2>/dev/null || { cat "$WORK/serve.log" >&2; exit 1; }
    sleep 0.2
done
answer=$(curl -sf http://127.0.0.1:18181/v1/chat/completions -H 'content-type: application/json' \
    -d '{"messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":16,"temperature":0}')
content=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])' <<<"$answer")
[[ -n $content ]] || { echo "airgap: empty answer: $answer" >&2; exit 1; }
echo "airgap: answered offline: $content"
kill -TERM $server
wait $server
INNER
echo "airgap: ok"
