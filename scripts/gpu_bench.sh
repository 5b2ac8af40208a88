#!/usr/bin/env bash
# Benchmark svip-local on a lent GPU machine (see ../shared/gpu.md): no network there, at most
# 64 MiB carried per call, /tmp kept only while the machine stays warm (30 s between calls).
# Device time is short (15 minutes a session, start-up and idle included), so everything is
# packed here first, then each call there is one short subcommand of this script, made back to
# back.
#
# Here (with network), once:
#   scripts/gpu_bench.sh pack [--f16]
#       -> gpu-carry/src/      llama-cpp-python 0.3.36 sdist, stripped (~48 MB; one call)
#          gpu-carry/wheels/   pure/manylinux wheels the package needs beyond numpy/jinja2,
#                              the prompts file, and the models' names, sizes and sha256
#          gpu-carry/pieces/NN/ the pair's GGUFs in 62 MiB pieces (one directory per call)
#       (gpu-carry/ is added to .git/info/exclude: carried only when named)
# There, one device call each (carry = the path named):
#   scripts/gpu_bench.sh setup        carry gpu-carry/wheels: install the wheels
#   scripts/gpu_bench.sh build        carry gpu-carry/src: one CUDA build (sm_90) of llama.cpp
#                                     with shared libs: the Python bindings load its libllama
#                                     (LLAMA_CPP_LIB_PATH) and llama-speculative-simple is the
#                                     peer (~5 min)
#   scripts/gpu_bench.sh receive NN   carry gpu-carry/pieces/NN: append to the model files
#   scripts/gpu_bench.sh check        sha256 of the assembled models; a tiny-model smoke test
#   scripts/gpu_bench.sh run [--f16] [svip-local bench options...]
#                                     calibrate (unless calibrated) then bench with the peer;
#                                     report, JSON and PNGs come back under $OUT/bench
# Budget for 15 minutes of device time (start ~2, setup + build ~5-6, the reference pair's 26
# pieces ~4): one `run` of about 3 minutes, which the defaults size (calibration on 1 prompt
# per category and T=0/1, SpecBench 1 per category at 128 tokens, no long-form: a GPU decodes
# 500 tok/s, so this is seconds per policy). Scale with CAL_PER_CATEGORY, PER_CATEGORY,
# MAX_TOKENS and `run --lengths 128,512,2048` when more time is lent; the F16 target (3 GB, 50
# more pieces) does not fit in 15 minutes.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
CARRY="$REPO/gpu-carry"
WORK="${SVIP_GPU_WORK:-/tmp/svip-gpu}"
PYTHON="${PYTHON:-python3}"
PIECE_MB=62
LCP_VERSION="0.3.36"
TARGET="${TARGET_GGUF:-/tmp/models/target.gguf}"
DRAFT="${DRAFT_GGUF:-/tmp/models/draft.gguf}"
TARGET_F16="${TARGET_F16_GGUF:-/tmp/models/target-f16.gguf}"
PROMPTS_HERE="${PROMPTS:-$REPO/../shared/data/spec_bench_dev.jsonl}"
PROMPTS_THERE="$WORK/spec_bench_dev.jsonl"
# Runtime imports of svip_local (+ the bench's plots) that the GPU machine's Python lacks.
WHEELS=(diskcache platformdirs tqdm huggingface_hub gguf textual matplotlib)

log() { printf '[gpu_bench] %s\n' "$*" >&2; }
die() { printf '[gpu_bench] error: %s\n' "$*" >&2; exit 1; }

pack() {
    local f16=0
    [[ "${1:-}" == "--f16" ]] && f16=1
    mkdir -p "$CARRY/src" "$CARRY/wheels" "$CARRY/pieces"
    grep -qsx "/gpu-carry/" "$REPO/.git/info/exclude" \
        || { mkdir -p "$REPO/.git/info"; echo "/gpu-carry/" >>"$REPO/.git/info/exclude"; }
    "$HERE/build_llama_tools.sh" --pack-source "$CARRY/src/llama_cpp_python-$LCP_VERSION.tar.gz" \
        --print-bin-dir >/dev/null
    "$PYTHON" -m pip download --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux_2_28_x86_64 -d "$CARRY/wheels" "${WHEELS[@]}" >&2
    cp "$PROMPTS_HERE" "$CARRY/wheels/spec_bench_dev.jsonl"  # travels with the wheels
    local files=("$TARGET" "$DRAFT")
    [[ "$f16" -eq 1 ]] && files+=("$TARGET_F16")
    : >"$CARRY/wheels/manifest"
    local n=0 f
    for f in "${files[@]}"; do
        [[ -f "$f" ]] || die "$f not found (TARGET_GGUF / DRAFT_GGUF / TARGET_F16_GGUF)"
        log "splitting $f"
        local tmp
        tmp="$(mktemp -d)"
        split -b "${PIECE_MB}m" -d -a 3 "$f" "$tmp/$(basename "$f")."
        local piece
        for piece in "$tmp"/*; do
            mkdir -p "$CARRY/pieces/$(printf '%03d' "$n")"
            mv "$piece" "$CARRY/pieces/$(printf '%03d' "$n")/"
            n=$((n + 1))
        done
        rmdir "$tmp"
        printf '%s %s %s\n' "$(basename "$f")" "$(stat -c %s "$f")" \
            "$(sha256sum "$f" | cut -d' ' -f1)" >>"$CARRY/wheels/manifest"
    done
    log "packed: $(du -sh "$CARRY/src" | cut -f1) source, $(du -sh "$CARRY/wheels" | cut -f1)" \
        "wheels, $n model pieces (gpu-carry/pieces/000..$(printf '%03d' $((n - 1))))"
}

setup() {
    [[ -d "$CARRY/wheels" ]] || die "carry gpu-carry/wheels with this call"
    mkdir -p "$WORK/py"
    "$PYTHON" -m pip install --no-index --find-links "$CARRY/wheels" --target "$WORK/py" \
        --quiet "${WHEELS[@]}"
    cp "$CARRY/wheels/spec_bench_dev.jsonl" "$PROMPTS_THERE"
    cp "$CARRY/wheels/manifest" "$WORK/manifest"
    log "installed into $WORK/py"
}

build() {
    local sdist
    sdist="$(ls "$CARRY"/src/llama_cpp_python-*.tar.gz 2>/dev/null | head -n 1)"
    [[ -n "$sdist" ]] || die "carry gpu-carry/src with this call"
    mkdir -p "$WORK"
    "$HERE/build_llama_tools.sh" --cuda 90 --sdist "$sdist" --tools-dir "$WORK/tools" \
        -- -DBUILD_SHARED_LIBS=ON >&2
    log "built: $(ls "$WORK/tools/build-cuda-90/bin" | tr '\n' ' ')"
}

receive() {
    local dir="$CARRY/pieces/${1:?which piece directory (000, 001, ...)}"
    [[ -d "$dir" ]] || die "carry gpu-carry/pieces/$1 with this call"
    mkdir -p "$WORK/models"
    touch "$WORK/models/.received"
    local piece name
    for piece in "$dir"/*; do
        name="$(basename "$piece")"
        if grep -qsx "$name" "$WORK/models/.received"; then
            log "$name already appended"
            continue
        fi
        # pieces are NAME.000, NAME.001, ...: received in order, appended in order
        cat "$piece" >>"$WORK/models/${name%.*}"
        echo "$name" >>"$WORK/models/.received"
        log "appended $name"
    done
}

env_there() {
    export LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libstdc++.so.6  # gpu.md: load segfault fix
    local src
    src="$(ls -d "$WORK"/tools/src/llama_cpp_python-* | head -n 1)"
    export LLAMA_CPP_LIB_PATH="$WORK/tools/build-cuda-90/bin"
    export PYTHONPATH="$REPO:$src:$WORK/py${PYTHONPATH:+:$PYTHONPATH}"
    export SVIP_LOCAL_CALIBRATION_DIR="$WORK/calibration"
    export LLAMA_SPECULATIVE_SIMPLE="$WORK/tools/build-cuda-90/bin/llama-speculative-simple"
}

check() {
    local name size sha
    while read -r name size sha; do
        [[ "$(stat -c %s "$WORK/models/$name")" == "$size" ]] || die "$name: wrong size"
        [[ "$(sha256sum "$WORK/models/$name" | cut -d' ' -f1)" == "$sha" ]] || die "$name: sha256"
        log "$name ok"
    done <"$WORK/manifest"
    env_there
    "$PYTHON" - <<'EOF'
import tempfile
from pathlib import Path

from svip_local import Engine, native
from tests.support.tiny_models import write_tiny_model

print("gpu offload:", native.supports_gpu_offload())
with tempfile.TemporaryDirectory() as d:
    t = write_tiny_model(Path(d) / "t.gguf")
    with Engine(t, t, n_ctx=256, policy="constant:4") as e:
        done = e.complete("The quick brown fox", max_tokens=32, ignore_eos=True)
        print("tiny pair:", done.stats.generated, "tokens,", done.stats.accepted, "accepted")
EOF
}

run() {
    local target="$WORK/models/$(basename "$TARGET")"
    if [[ "${1:-}" == "--f16" ]]; then
        target="$WORK/models/$(basename "$TARGET_F16")"
        shift
    fi
    env_there
    mkdir -p "${OUT:-$WORK/out}"
    local pair=(--target "$target" --draft "$WORK/models/$(basename "$DRAFT")"
                --n-gpu-layers 99)
    local cli=("$PYTHON" -c "import sys; from svip_local.cli import main; sys.exit(main())")
    "${cli[@]}" calibrate "${pair[@]}" --show >/dev/null 2>&1 \
        || "${cli[@]}" calibrate "${pair[@]}" --prompts "$PROMPTS_THERE" \
            --per-category "${CAL_PER_CATEGORY:-1}" --max-tokens "${MAX_TOKENS:-128}" \
            --repeats 3
    "${cli[@]}" bench "${pair[@]}" --prompts "$PROMPTS_THERE" \
        --per-category "${PER_CATEGORY:-1}" --max-tokens "${MAX_TOKENS:-128}" --lengths '' \
        --peer --out "${OUT:-$WORK/out}/bench" "$@"
    cp -r "$SVIP_LOCAL_CALIBRATION_DIR" "${OUT:-$WORK/out}/" 2>/dev/null || true
}

cmd="${1:-}"
shift || true
case "$cmd" in
    pack) pack "$@" ;;
    setup) setup ;;
    build) build ;;
    receive) receive "$@" ;;
    check) check ;;
    run) run "$@" ;;
    *) sed -n '2,31p' "$0"; exit 2 ;;
esac
