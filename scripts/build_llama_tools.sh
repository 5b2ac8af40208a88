#!/usr/bin/env bash
# Build llama.cpp's own command-line tools (llama-quantize, llama-speculative-simple,
# llama-speculative, llama-bench), its RPC server (ggml-rpc-server) and its HTTP server
# (llama-server) from the llama.cpp tree vendored in the llama-cpp-python 0.3.36 source package,
# so the peer baseline and the servers a target is split across run the very same llama.cpp
# commit (and RPC protocol) as the Python bindings.
#
# Tooling only: nothing in the svip_local package needs these binaries. ggml-rpc-server lends
# this machine's devices to a client over TCP without any authentication: it binds 127.0.0.1
# unless given -H, and must never face an untrusted network. llama-server likewise binds
# 127.0.0.1 unless given --host.
#
# llama-server is built without its web UI (API only, fully offline): LLAMA_BUILD_UI=OFF runs no
# npm, LLAMA_USE_PREBUILT_UI=OFF downloads nothing from Hugging Face, and tools/ui/ then only
# supplies its CMakeLists.txt and the ui.h.in/ui.cpp.in templates of an empty asset table.
#
# Steps (each skipped when already done):
#   1. pip download the sdist          -> $TOOLS_DIR/dl/llama_cpp_python-0.3.36.tar.gz
#   2. unpack it                       -> $TOOLS_DIR/src/llama_cpp_python-0.3.36
#   3. cmake configure vendor/llama.cpp-> $TOOLS_DIR/build-cpu (or build-cuda-ARCH)
#   4. build the six targets           -> <build>/bin/ (five with --no-server)
# On a machine without network use --source-dir (an unpacked sdist, or its vendor/llama.cpp)
# or --sdist (the .tar.gz); --pack-source writes a stripped re-packed sdist (~48 MB) to carry.
set -euo pipefail

LCP_VERSION="0.3.36"
TARGETS=(llama-quantize llama-speculative-simple llama-speculative llama-bench ggml-rpc-server)
SERVER_TARGET=llama-server        # added to TARGETS unless --no-server

usage() {
    cat <<EOF
usage: $(basename "$0") [--cuda ARCH] [--source-dir DIR | --sdist FILE] [--tools-dir DIR]
                        [--build-dir DIR] [--pack-source OUT.tar.gz] [--print-bin-dir]
                        [--no-server] [--force] [-- EXTRA_CMAKE_ARGS...]

  --cuda ARCH        build with CUDA: -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=ARCH (H100: 90)
  --source-dir DIR   use an already unpacked llama-cpp-python sdist (or its vendor/llama.cpp)
  --sdist FILE       unpack this llama_cpp_python-$LCP_VERSION.tar.gz instead of downloading
  --tools-dir DIR    cache dir (default: \${SVIP_LOCAL_TOOLS_DIR:-\$HOME/.cache/svip-local/tools})
  --build-dir DIR    build dir (default: TOOLS_DIR/build-cpu or TOOLS_DIR/build-cuda-ARCH)
  --pack-source OUT  also write a stripped copy of the sdist (no models/docs/tests/web UI
                     sources; tools/ui keeps the CMake files llama-server's build needs)
  --print-bin-dir    print only the binaries' directory on stdout (logs go to stderr)
  --no-server        leave llama-server out (-DLLAMA_BUILD_SERVER=OFF; a shorter build)
  --force            reconfigure and rebuild even if the binaries are up to date
  -- ARGS            extra arguments for the cmake configure step (e.g. -DGGML_NATIVE=OFF)
Environment: PYTHON (default python3), SVIP_LOCAL_TOOLS_DIR, JOBS (default: nproc).
EOF
}

log() { printf '[build_llama_tools] %s\n' "$*" >&2; }
die() { printf '[build_llama_tools] error: %s\n' "$*" >&2; exit 1; }

CUDA_ARCH=""
SOURCE_DIR=""
SDIST=""
TOOLS_DIR="${SVIP_LOCAL_TOOLS_DIR:-$HOME/.cache/svip-local/tools}"
BUILD_DIR=""
PACK_OUT=""
PRINT_BIN_DIR=0
FORCE=0
SERVER=1
EXTRA_CMAKE=()

while [[ $# -gt 0 ]]; do
    case "$1" in
        --cuda) [[ $# -ge 2 ]] || die "--cuda needs an architecture (e.g. 90)"; CUDA_ARCH="$2"; shift 2 ;;
        --source-dir) [[ $# -ge 2 ]] || die "--source-dir needs a directory"; SOURCE_DIR="$2"; shift 2 ;;
        --sdist) [[ $# -ge 2 ]] || die "--sdist needs a file"; SDIST="$2"; shift 2 ;;
        --tools-dir) [[ $# -ge 2 ]] || die "--tools-dir needs a directory"; TOOLS_DIR="$2"; shift 2 ;;
        --build-dir) [[ $# -ge 2 ]] || die "--build-dir needs a directory"; BUILD_DIR="$2"; shift 2 ;;
        --pack-source) [[ $# -ge 2 ]] || die "--pack-source needs a file"; PACK_OUT="$2"; shift 2 ;;
        --print-bin-dir) PRINT_BIN_DIR=1; shift ;;
        --no-server) SERVER=0; shift ;;
        --force) FORCE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; EXTRA_CMAKE=("$@"); break ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

[[ -z "$SOURCE_DIR" || -z "$SDIST" ]] || die "give --source-dir or --sdist, not both"
SERVER_CMAKE=OFF
if [[ "$SERVER" -eq 1 ]]; then
    TARGETS+=("$SERVER_TARGET")
    SERVER_CMAKE=ON
fi

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"

need() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found: $2"; }
need cmake "install CMake >= 3.14 (e.g. apt-get install cmake, or pip install cmake)"
need tar "install tar"
if [[ -z "${CXX:-}" ]]; then
    command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 \
        || die "no C++ compiler found: install g++ (e.g. apt-get install build-essential)"
fi

mkdir -p "$TOOLS_DIR"
TOOLS_DIR="$(cd "$TOOLS_DIR" && pwd)"

# ---------------------------------------------------------------------------------------------
# 1-2. the source tree
# ---------------------------------------------------------------------------------------------
unpack_sdist() {  # $1 = tarball; prints the unpacked sdist root
    local tarball="$1" dest="$TOOLS_DIR/src/llama_cpp_python-$LCP_VERSION"
    if [[ -f "$dest/.unpacked" ]]; then
        log "source already unpacked: $dest"
    else
        log "unpacking $tarball"
        mkdir -p "$TOOLS_DIR/src"
        local tmp
        tmp="$(mktemp -d "$TOOLS_DIR/src/.unpack.XXXXXX")"
        tar -xzf "$tarball" -C "$tmp"
        local top
        top="$(find "$tmp" -mindepth 1 -maxdepth 1 -type d | head -n 1)"
        [[ -n "$top" && -f "$top/vendor/llama.cpp/CMakeLists.txt" ]] \
            || { rm -rf "$tmp"; die "$tarball does not contain vendor/llama.cpp"; }
        rm -rf "$dest"
        mv "$top" "$dest"
        rm -rf "$tmp"
        touch "$dest/.unpacked"
    fi
    printf '%s\n' "$dest"
}

if [[ -n "$SOURCE_DIR" ]]; then
    [[ -d "$SOURCE_DIR" ]] || die "--source-dir $SOURCE_DIR is not a directory"
    SOURCE_DIR="$(cd "$SOURCE_DIR" && pwd)"
    if [[ -f "$SOURCE_DIR/vendor/llama.cpp/CMakeLists.txt" ]]; then
        SDIST_ROOT="$SOURCE_DIR"
        LLAMA_SRC="$SOURCE_DIR/vendor/llama.cpp"
    elif [[ -f "$SOURCE_DIR/CMakeLists.txt" && -d "$SOURCE_DIR/examples/speculative-simple" ]]; then
        SDIST_ROOT=""
        LLAMA_SRC="$SOURCE_DIR"
    else
        die "$SOURCE_DIR is neither an unpacked llama-cpp-python sdist nor a llama.cpp tree"
    fi
    log "using source tree $LLAMA_SRC"
else
    if [[ -z "$SDIST" ]]; then
        SDIST="$TOOLS_DIR/dl/llama_cpp_python-$LCP_VERSION.tar.gz"
        if [[ -s "$SDIST" ]] && tar -tzf "$SDIST" >/dev/null 2>&1; then
            log "sdist already downloaded: $SDIST"
        else
            log "downloading llama-cpp-python==$LCP_VERSION sdist with pip"
            mkdir -p "$TOOLS_DIR/dl"
            dl_tmp="$(mktemp -d "$TOOLS_DIR/dl/.pip.XXXXXX")"
            "$PYTHON" -m pip download --no-deps --no-binary :all: \
                "llama-cpp-python==$LCP_VERSION" -d "$dl_tmp" >&2 \
                || { rm -rf "$dl_tmp"; die "pip download failed (no network? use --source-dir)"; }
            got="$(find "$dl_tmp" -maxdepth 1 -name 'llama_cpp_python-*.tar.gz' | head -n 1)"
            [[ -n "$got" ]] || { rm -rf "$dl_tmp"; die "pip download produced no sdist"; }
            mv "$got" "$SDIST"
            rm -rf "$dl_tmp"
        fi
    fi
    [[ -f "$SDIST" ]] || die "sdist $SDIST not found"
    SDIST_ROOT="$(unpack_sdist "$SDIST")"
    LLAMA_SRC="$SDIST_ROOT/vendor/llama.cpp"
fi

for t in "${TARGETS[@]}"; do
    grep -rqs --include=CMakeLists.txt -e "set(TARGET $t)" "$LLAMA_SRC/examples" "$LLAMA_SRC/tools" \
        || die "target $t not defined in $LLAMA_SRC (unexpected llama.cpp version)"
done
if [[ "$SERVER" -eq 1 ]]; then
    for f in tools/ui/CMakeLists.txt tools/ui/ui.h.in tools/ui/ui.cpp.in scripts/ui-assets.cmake; do
        [[ -f "$LLAMA_SRC/$f" ]] || die "$LLAMA_SRC/$f missing: llama-server needs it (or use --no-server)"
    done
fi

if [[ -n "$PACK_OUT" ]]; then
    [[ -n "$SDIST_ROOT" ]] || die "--pack-source needs a full sdist, not a bare llama.cpp tree"
    if [[ -s "$PACK_OUT" && "$FORCE" -eq 0 ]]; then
        log "stripped source already packed: $PACK_OUT"
    else
        log "packing stripped source to $PACK_OUT"
        mkdir -p "$(dirname "$PACK_OUT")"
        base="$(basename "$SDIST_ROOT")"
        tar -czf "$PACK_OUT.partial" -C "$(dirname "$SDIST_ROOT")" \
            --exclude="$base/.unpacked" \
            --exclude="$base/vendor/llama.cpp/models" \
            --exclude="$base/vendor/llama.cpp/docs" \
            --exclude="$base/vendor/llama.cpp/tests" \
            --exclude="$base/vendor/llama.cpp/benches" \
            --exclude="$base/vendor/llama.cpp/media" \
            --exclude="$base/vendor/llama.cpp/.github" \
            --exclude="$base/vendor/llama.cpp/tools/ui/src" \
            --exclude="$base/vendor/llama.cpp/tools/ui/static" \
            --exclude="$base/vendor/llama.cpp/tools/ui/tests" \
            --exclude="$base/vendor/llama.cpp/tools/ui/scripts" \
            --exclude="$base/vendor/llama.cpp/tools/ui/package-lock.json" \
            --exclude="$base/vendor/llama.cpp/tools/server/public*" \
            --exclude="$base/vendor/llama.cpp/tools/server/tests" \
            "$base"
        mv "$PACK_OUT.partial" "$PACK_OUT"
        log "packed $(du -h "$PACK_OUT" | cut -f1) -> $PACK_OUT"
    fi
fi

# ---------------------------------------------------------------------------------------------
# 3-4. configure and build
# ---------------------------------------------------------------------------------------------
if [[ -z "$BUILD_DIR" ]]; then
    if [[ -n "$CUDA_ARCH" ]]; then
        BUILD_DIR="$TOOLS_DIR/build-cuda-$CUDA_ARCH"
    else
        BUILD_DIR="$TOOLS_DIR/build-cpu"
    fi
fi
mkdir -p "$BUILD_DIR"
BUILD_DIR="$(cd "$BUILD_DIR" && pwd)"
BIN_DIR="$BUILD_DIR/bin"

GENERATOR_ARGS=()
if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]] && command -v ninja >/dev/null 2>&1; then
    GENERATOR_ARGS=(-G Ninja)
fi

CMAKE_ARGS_LIST=(
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=OFF          # self-contained binaries: never pick up another libllama
    -DLLAMA_BUILD_COMMON=ON
    -DLLAMA_BUILD_EXAMPLES=ON        # llama-speculative-simple, llama-speculative
    -DLLAMA_BUILD_TOOLS=ON           # llama-quantize, llama-bench
    -DLLAMA_BUILD_TESTS=OFF
    "-DLLAMA_BUILD_SERVER=$SERVER_CMAKE"  # llama-server (OFF with --no-server)
    -DLLAMA_BUILD_UI=OFF             # no npm build of the web UI: llama-server serves the API only
    -DLLAMA_USE_PREBUILT_UI=OFF      # and no download of the prebuilt UI (offline, reproducible)
    -DLLAMA_BUILD_APP=OFF            # the unified 'llama' binary: not needed
    -DLLAMA_CURL=OFF
    -DLLAMA_OPENSSL=OFF
    -DGGML_RPC=ON                    # ggml-rpc-server; the tools can take --rpc too
)
if [[ -n "$CUDA_ARCH" ]]; then
    CMAKE_ARGS_LIST+=(-DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCH")
else
    CMAKE_ARGS_LIST+=(-DGGML_CUDA=OFF)
fi
# Where the CPU has AMX, build without it: svip_local takes llama.cpp's AMX buffer type out
# (it segfaults on Q4_K batches, llama.cpp issue 20824; see native/buffers.py) and the
# peer must run the same kernels, CPU_REPACK included. The binaries have no switch for AMX
# alone, so it is left out at compile time: every other native ISA extension stays.
# SVIP_LOCAL_AMX=1 (the product keeps AMX then too) builds with it.
if [[ -z "$CUDA_ARCH" && "${SVIP_LOCAL_AMX:-0}" != "1" ]] && grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then
    NO_AMX="-march=native -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    CMAKE_ARGS_LIST+=(-DGGML_NATIVE=OFF -DGGML_AVX512=ON "-DCMAKE_C_FLAGS=$NO_AMX"
                      "-DCMAKE_CXX_FLAGS=$NO_AMX")
    log "AMX CPU: building without AMX (as svip_local runs; SVIP_LOCAL_AMX=1 keeps it)"
fi
CMAKE_ARGS_LIST+=("${EXTRA_CMAKE[@]}")

STAMP="$BUILD_DIR/.svip-local-config"
want_stamp="$(printf '%s\n' "src=$LLAMA_SRC" "${CMAKE_ARGS_LIST[@]}")"

all_built() {
    local t
    for t in "${TARGETS[@]}"; do [[ -x "$BIN_DIR/$t" ]] || return 1; done
    [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]]
}

if [[ "$FORCE" -eq 0 ]] && all_built; then
    log "binaries up to date in $BIN_DIR (use --force to rebuild)"
else
    if [[ "$FORCE" -eq 1 || ! -f "$STAMP" || "$(cat "$STAMP" 2>/dev/null)" != "$want_stamp" \
          || ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
        log "configuring $LLAMA_SRC -> $BUILD_DIR"
        rm -f "$STAMP"
        cmake -S "$LLAMA_SRC" -B "$BUILD_DIR" "${GENERATOR_ARGS[@]}" "${CMAKE_ARGS_LIST[@]}" >&2
    fi
    log "building ${TARGETS[*]} with -j$JOBS"
    t0=$(date +%s)
    cmake --build "$BUILD_DIR" --config Release -j"$JOBS" --target "${TARGETS[@]}" >&2
    t1=$(date +%s)
    for t in "${TARGETS[@]}"; do
        [[ -x "$BIN_DIR/$t" ]] || die "build finished but $BIN_DIR/$t is missing"
    done
    printf '%s\n' "$want_stamp" >"$STAMP"
    log "build took $((t1 - t0)) s"
fi

if [[ "$PRINT_BIN_DIR" -eq 1 ]]; then
    printf '%s\n' "$BIN_DIR"
else
    echo "llama.cpp source: $LLAMA_SRC"
    echo "binaries in:      $BIN_DIR"
    for t in "${TARGETS[@]}"; do echo "  $BIN_DIR/$t"; done
fi
