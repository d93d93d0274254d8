#!/usr/bin/env bash
# Runs ON the GPU machine (nvcc + CUDA 13.0, driver 580, no Rust, no network): checks hearth's CUDA path
# against its CPU path and benchmarks hearth and llama.cpp (CUDA backend) on a 7B-shaped Q4_K_M model.
# Everything it needs comes from scripts/pack-device-bench.sh, carried in .device-bench/ (docs/cuda.md).
#
# Usage: scripts/device-bench.sh PHASE...     (from the repository root; phases run in the order given)
#
#   stage          copy the carried .device-bench/part-* into the work folder (checking their SHA-256 against
#                  .device-bench/MANIFEST); once all parts are there, unpack them. Every other phase runs it
#                  first, so parts can arrive over several calls.
#   llama          build llama-server with the CUDA backend from the carried llama.cpp tree (16 jobs).
#   llama-bg       the same in the background (survives the call; later phases wait for it).
#   check          greedy output of `hearth generate` on --device cpu and --device cuda, compared: on SmolLM2
#                  (when carried) and on the synthetic 7B model (when written). Writes $OUT/check.txt.
#   synth          write the 7B-shaped synthetic Q4_K_M (`hearth synth --preset qwen2.5-7b --type q4_k_m`).
#   bench=C1,C2..  hearth-bench --device cuda on the synthetic 7B model against llama.cpp at those concurrency
#                  levels (single-stream prefill and decode are measured every time). Writes
#                  $OUT/bench-<levels>.jsonl and .md.
#   bench-smollm2=C1,..  the same on SmolLM2.
#
# Work folder: ${HEARTH_DEVICE_DIR:-/tmp/hearth-device}; it survives between calls only while the machine is
# warm. $OUT (set by the device tool; default ./device-out) receives at most a few small files.
# Knobs: PROMPT_TOKENS (256), GEN_TOKENS (128), REPEAT (1), MAX_TOKENS of the check (48).
set -euo pipefail
cd "$(dirname "$0")/.."

work="${HEARTH_DEVICE_DIR:-/tmp/hearth-device}"
out="${OUT:-$PWD/device-out}"
payload="$work/payload"
synth_model="$work/qwen2.5-7b-synth-q4_k_m.gguf"
llama_server="$work/llama/bin/llama-server"
mkdir -p "$work/parts" "$out"

log() { printf 'device-bench: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# xz may be missing from a minimal image; Python's lzma reads the same format.
unxz_stream() {
    if command -v xz >/dev/null 2>&1; then xz -dc; else python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)'; fi
}

stage() {
    [[ -f "$payload/.complete" ]] && return 0
    local manifest=.device-bench/MANIFEST
    [[ -f "$manifest" ]] || die "no $manifest here: carry .device-bench/MANIFEST and a part (docs/cuda.md)"
    cp "$manifest" "$work/MANIFEST"
    local sum name missing=()
    while read -r sum name; do
        [[ -z "$sum" || "$sum" == \#* ]] && continue
        if [[ -f "$work/parts/$name" ]] && [[ "$(sha256sum "$work/parts/$name" | cut -d' ' -f1)" == "$sum" ]]; then
            continue
        fi
        if [[ -f ".device-bench/$name" ]] && [[ "$(sha256sum ".device-bench/$name" | cut -d' ' -f1)" == "$sum" ]]; then
            cp ".device-bench/$name" "$work/parts/$name"
            log "staged $name"
        else
            missing+=("$name")
        fi
    done <"$work/MANIFEST"
    if [[ ${#missing[@]} -gt 0 ]]; then
        log "still missing: ${missing[*]}; call again carrying .device-bench/MANIFEST and the next part"
        return 3
    fi
    log "all parts here; unpacking into $payload"
    rm -rf "$payload"
    mkdir -p "$payload"
    cat "$work"/parts/part-* | unxz_stream | tar -xf - -C "$payload"
    tar -xf "$payload/llama.cpp.tar" -C "$work" && rm "$payload/llama.cpp.tar"
    chmod +x "$payload"/bin/*
    touch "$payload/.complete"
    rm -rf "$work/parts"
}

# Where the machine keeps the CUDA runtime libraries hearth loads (the toolkit, or PyTorch's wheels).
cuda_library_path() {
    local dirs=() lib found
    for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10; do
        found="$(find /usr/local/cuda*/ /usr/lib /opt -name "$lib" -print -quit 2>/dev/null || true)"
        if [[ -n "$found" ]]; then
            dirs+=("$(dirname "$found")")
        else
            log "warning: $lib not found"
        fi
    done
    printf '%s\n' "${dirs[@]}" | awk '!seen[$0]++' | paste -sd:
}

setup_runtime() {
    local libs
    libs="$(cuda_library_path)"
    export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    hearth="$payload/bin/hearth"
    bench="$payload/bin/hearth-bench"
    {
        echo "revision: $(cat "$payload/REVISION")"
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
        nvcc --version 2>&1 | tail -n 1 || true
        echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
        echo "cores: $(nproc)"
        ldd "$hearth" | grep -Ei "cuda|cublas|curand|nvrtc|not found" || true
    } >"$out/device.txt"
}

build_llama() {
    if [[ -x "$llama_server" ]]; then
        log "llama-server already built"
        return 0
    fi
    local src="$work/llama.cpp" build="$work/llama-build"
    [[ -f "$src/CMakeLists.txt" ]] || die "no llama.cpp tree in $work: stage the payload first"
    log "building llama-server with CUDA (sm_90) from $src"
    cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
        -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF \
        -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_NUMBER=11434 -DLLAMA_BUILD_COMMIT=b11434 >"$work/llama-cmake.log" 2>&1 ||
        { tail -n 40 "$work/llama-cmake.log" >&2; die "cmake failed"; }
    cmake --build "$build" --config Release -j "$(nproc)" --target llama-server >"$work/llama-build.log" 2>&1 ||
        { tail -n 40 "$work/llama-build.log" >&2; die "building llama-server failed"; }
    mkdir -p "$(dirname "$llama_server")"
    install -m 0755 "$build/bin/llama-server" "$llama_server"
    log "built $llama_server"
}

wait_for_llama() {
    local waited=0
    while [[ ! -x "$llama_server" && -f "$work/llama-bg.pid" ]] && kill -0 "$(cat "$work/llama-bg.pid")" 2>/dev/null; do
        [[ $waited -eq 0 ]] && log "waiting for the background llama.cpp build"
        sleep 10
        waited=$((waited + 10))
    done
    [[ -x "$llama_server" ]] || log "warning: no llama-server (see $work/llama-build.log); measuring hearth only"
}

# Greedy output of hearth on cpu and on cuda for a few prompts; equal text means equal greedy tokens.
check_model() {
    local model="$1" name="$2" max_tokens="${MAX_TOKENS:-48}" prompt i=0 same=0 total=0
    local prompts=("What is the capital of France?" "Write a haiku about the sea." "Explain in two sentences why the sky is blue.")
    for prompt in "${prompts[@]}"; do
        i=$((i + 1))
        local cpu_out="$work/check-$name-$i-cpu.txt" cuda_out="$work/check-$name-$i-cuda.txt"
        "$hearth" generate --model "$model" --device cpu --max-tokens "$max_tokens" --prompt "$prompt" >"$cpu_out" 2>"$cpu_out.err" ||
            { echo "$name prompt $i: cpu run failed: $(tail -n 3 "$cpu_out.err")"; continue; }
        "$hearth" generate --model "$model" --device cuda --max-tokens "$max_tokens" --prompt "$prompt" >"$cuda_out" 2>"$cuda_out.err" ||
            { echo "$name prompt $i: cuda run failed: $(tail -n 3 "$cuda_out.err")"; continue; }
        total=$((total + 1))
        if cmp -s "$cpu_out" "$cuda_out"; then
            same=$((same + 1))
            echo "$name prompt $i: SAME ($(wc -c <"$cpu_out") bytes)"
        else
            echo "$name prompt $i: DIFFERENT (first differing byte: $(cmp "$cpu_out" "$cuda_out" 2>&1 | grep -oE 'byte [0-9]+' || echo 'length'))"
        fi
        echo "  cpu : $(tr '\n' ' ' <"$cpu_out" | cut -c1-300)"
        echo "  cuda: $(tr '\n' ' ' <"$cuda_out" | cut -c1-300)"
        echo "  cpu  stats: $(tail -n 1 "$cpu_out.err")"
        echo "  cuda stats: $(tail -n 1 "$cuda_out.err")"
    done
    echo "$name: $same of $total prompts gave the same greedy output on cpu and cuda"
}

run_check() {
    {
        echo "== hearth generate, --device cpu vs --device cuda, greedy, ${MAX_TOKENS:-48} tokens"
        if [[ -f "$payload/models/SmolLM2-135M-Instruct.Q4_1.gguf" ]]; then
            check_model "$payload/models/SmolLM2-135M-Instruct.Q4_1.gguf" smollm2
        else
            echo "smollm2: not carried (packed with --no-smollm2)"
        fi
        if [[ -f "$synth_model" ]]; then
            # Random weights: near-ties between logits are common, so a late divergence is no bug by itself.
            MAX_TOKENS=16 check_model "$synth_model" synth-7b
        else
            echo "synth-7b: not written yet (phase synth)"
        fi
    } 2>&1 | tee "$out/check.txt"
}

run_synth() {
    if [[ -f "$synth_model" ]]; then
        log "synthetic model already written: $synth_model"
        return 0
    fi
    log "writing $synth_model"
    "$hearth" synth --preset qwen2.5-7b --type q4_k_m -o "$synth_model.partial"
    mv "$synth_model.partial" "$synth_model"
}

run_bench() {
    local model="$1" label="$2" levels="$3"
    [[ "$levels" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "bench levels must look like 1,8,64 (got '$levels')"
    [[ -f "$model" ]] || die "$model is missing (phase synth, or carry SmolLM2)"
    wait_for_llama
    local tag="bench-$label-${levels//,/_}" llama_args=(--skip-llama)
    [[ -x "$llama_server" ]] && llama_args=(--llama-server "$llama_server")
    log "hearth-bench on $label, concurrency $levels"
    "$bench" --device cuda --model "$model" "${llama_args[@]}" --threads "$(nproc)" \
        --prompt-tokens "${PROMPT_TOKENS:-256}" --gen-tokens "${GEN_TOKENS:-128}" --repeat "${REPEAT:-1}" \
        --concurrency "$levels" --json "$out/$tag.jsonl" 2>"$work/$tag.log" | tee "$out/$tag.md" ||
        { tail -n 30 "$work/$tag.log" >&2; cp "$work/$tag.log" "$out/$tag.log"; die "hearth-bench failed"; }
}

[[ $# -gt 0 ]] || { sed -n '5,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
status=0
stage || status=$?
if [[ $status -ne 0 ]]; then
    # Parts still missing: nothing else can run yet.
    [[ $status -eq 3 ]] && exit 0
    exit "$status"
fi
setup_runtime
for phase in "$@"; do
    case "$phase" in
        stage) ;;
        llama) build_llama ;;
        llama-bg)
            if [[ ! -x "$llama_server" ]]; then
                setsid nohup "$0" llama >"$work/llama-bg.log" 2>&1 &
                echo $! >"$work/llama-bg.pid"
                log "llama.cpp build started in the background (log: $work/llama-bg.log)"
            fi
            ;;
        check) run_check ;;
        synth) run_synth ;;
        bench=*) run_bench "$synth_model" qwen2.5-7b-synth "${phase#bench=}" ;;
        bench-smollm2=*) run_bench "$payload/models/SmolLM2-135M-Instruct.Q4_1.gguf" smollm2 "${phase#bench-smollm2=}" ;;
        *) die "unknown phase: $phase (see the usage at the top of $0)" ;;
    esac
done
