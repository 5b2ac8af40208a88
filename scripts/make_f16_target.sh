#!/usr/bin/env bash
# Re-encode a GGUF model as F16 ("heavy target": same outputs as its quantized source up to
# rounding, much costlier per single-token decode) with llama.cpp's llama-quantize.
#
# Uses $LLAMA_QUANTIZE if set, else the binary built by build_llama_tools.sh (built on demand).
# Idempotent: writes OUT.partial and renames it, so an existing OUT is always complete.
set -euo pipefail

usage() {
    echo "usage: $(basename "$0") TARGET.gguf OUT.gguf [--force]" >&2
    echo "  env: LLAMA_QUANTIZE (binary), THREADS (default nproc)," \
        "other build_llama_tools.sh settings (SVIP_LOCAL_TOOLS_DIR, PYTHON)" >&2
}

FORCE=0
POS=()
for a in "$@"; do
    case "$a" in
        -h|--help) usage; exit 0 ;;
        --force) FORCE=1 ;;
        *) POS+=("$a") ;;
    esac
done
[[ ${#POS[@]} -eq 2 ]] || { usage; exit 2; }
SRC="${POS[0]}"
OUT="${POS[1]}"

[[ -f "$SRC" ]] || { echo "error: $SRC not found" >&2; exit 1; }
if [[ "$(cd "$(dirname "$SRC")" && pwd)/$(basename "$SRC")" \
      == "$(mkdir -p "$(dirname "$OUT")" && cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")" ]]; then
    echo "error: OUT must differ from TARGET" >&2
    exit 1
fi

# a complete GGUF starts with the magic "GGUF"; OUT only ever appears through the final mv
is_complete() { [[ -s "$1" && "$(head -c 4 "$1")" == "GGUF" ]]; }

if [[ "$FORCE" -eq 0 ]] && is_complete "$OUT"; then
    echo "[make_f16_target] $OUT already exists ($(du -h "$OUT" | cut -f1)); nothing to do" >&2
    echo "$OUT"
    exit 0
fi

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
QUANTIZE="${LLAMA_QUANTIZE:-}"
if [[ -z "$QUANTIZE" ]]; then
    BIN_DIR="$("$HERE/build_llama_tools.sh" --print-bin-dir)"
    QUANTIZE="$BIN_DIR/llama-quantize"
fi
[[ -x "$QUANTIZE" ]] || { echo "error: llama-quantize not executable: $QUANTIZE" >&2; exit 1; }

THREADS="${THREADS:-$(nproc 2>/dev/null || echo 2)}"
PARTIAL="$OUT.partial"
rm -f "$PARTIAL"
trap 'rm -f "$PARTIAL"' EXIT

echo "[make_f16_target] $QUANTIZE --allow-requantize $SRC $PARTIAL F16 $THREADS" >&2
t0=$(date +%s)
"$QUANTIZE" --allow-requantize "$SRC" "$PARTIAL" F16 "$THREADS" >&2
t1=$(date +%s)
is_complete "$PARTIAL" || { echo "error: llama-quantize produced no valid GGUF" >&2; exit 1; }
mv -f "$PARTIAL" "$OUT"
trap - EXIT
echo "[make_f16_target] wrote $OUT ($(du -h "$OUT" | cut -f1)) in $((t1 - t0)) s" >&2
echo "$OUT"
