#!/usr/bin/env bash
# The target across llama.cpp RPC servers, end to end on one machine:
#   1. an RPC-enabled llama-cpp-python (built once, ~5 min, kept as a wheel) in a virtual
#      environment of its own that sees $PYTHON's packages after its own (svip-local included:
#      run the README's `pip install -e ".[dev]"` first, in a venv or not), so the default build
#      there stays as it is;
#   2. llama.cpp's ggml-rpc-server from the same vendored source (scripts/build_llama_tools.sh);
#   3. two RPC servers on 127.0.0.1 (stopped by PID on exit), the reference pair pulled if
#      missing;
#   4. added latency of 1 and 5 ms per round trip: where the kernel has `netem`, two more servers
#      per latency in a network namespace of their own behind a veth pair whose host side
#      delays what is sent (`tc netem delay`); elsewhere (a kernel without sch_netem) a relay on
#      127.0.0.1 that delays what the client sends (scripts/latency_relay.py). Loopback and that
#      namespace only; everything is removed on exit;
#   5. scripts/rpc_loopback.py: greedy identity with the local target, then target alone, `auto`
#      live and calibrated at 0, 1 and 5 ms (table on stdout, JSON and reports in --out);
#   6. the RPC tests (pytest -m rpc) against the same server binary.
#
# usage: scripts/rpc_loopback.sh [--out DIR] [--pair NAME] [--quick] [--no-tests] [--setup-only]
#   --quick: fewer prompts and tokens (a smoke run of a few minutes, not a measurement)
#   --setup-only: step 1 alone, then print the RPC venv's python
# Environment: PYTHON (the interpreter svip-local is installed for; default python3),
# SVIP_LOCAL_TOOLS_DIR, RPC_WHEEL (an RPC build of llama-cpp-python 0.3.36 made before: no
# build), RPC_PORT_BASE (default 50252), RPC_THREADS.
# The RPC protocol has no authentication: these servers listen on 127.0.0.1 (and in the
# namespace) only. Never expose an rpc-server to a network you do not trust.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="rpc-loopback-out"
PAIR="qwen2.5-coder-1.5b"
QUICK=0
TESTS=1
SETUP_ONLY=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --pair) PAIR="$2"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --no-tests) TESTS=0; shift ;;
        --setup-only) SETUP_ONLY=1; shift ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

log() { printf '[rpc_loopback] %s\n' "$*" >&2; }
die() { printf '[rpc_loopback] error: %s\n' "$*" >&2; exit 1; }

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python
TOOLS_DIR="${SVIP_LOCAL_TOOLS_DIR:-$HOME/.cache/svip-local/tools}"
PORT_BASE="${RPC_PORT_BASE:-50252}"
THREADS="${RPC_THREADS:-$(nproc 2>/dev/null || echo 2)}"
LATENCIES=(1 5)
mkdir -p "$TOOLS_DIR"

# From /: svip_local as installed, not this checkout's directory.
(cd / && "$PYTHON" -c "import svip_local") 2>/dev/null \
    || die "svip_local is not installed for $PYTHON: run pip install -e \".[dev]\" first"

# -- cleanup: servers and relays by PID, namespaces and veths by name ---------------------------
PIDS=()
NETNS=()
cleanup() {
    local pid ns
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    for ns in "${NETNS[@]}"; do
        ip link del "${ns}h" 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# -- 1. llama-cpp-python with RPC, in its own venv ----------------------------------------------
# The venv has no packages but the RPC build: a .pth file adds $PYTHON's site directories after
# its own (site.addsitedir, so their .pth files, editable installs among them, work too). For a
# venv's python, `venv --system-site-packages` would expose the base interpreter's packages
# instead, without svip-local and its dependencies.
WHEEL_DIR="$TOOLS_DIR/wheels-rpc"
VENV="$TOOLS_DIR/rpc-venv"
VPY="$VENV/bin/python"

rpc_wheel() {  # prints the RPC wheel's path, building it once
    local wheel="${RPC_WHEEL:-}"
    [[ -n "$wheel" ]] && { [[ -f "$wheel" ]] || die "RPC_WHEEL: no such file: $wheel"; }
    [[ -z "$wheel" ]] && wheel="$(ls "$WHEEL_DIR"/llama_cpp_python-0.3.36-*.whl 2>/dev/null \
                                  | head -n 1 || true)"
    if [[ -z "$wheel" ]]; then
        log "building llama-cpp-python 0.3.36 with -DGGML_RPC=on (about 5 minutes on 2 cores)"
        mkdir -p "$WHEEL_DIR"
        # --no-cache-dir: pip's wheel cache ignores CMAKE_ARGS and would hand back the plain build.
        CMAKE_ARGS="-DGGML_RPC=on" "$PYTHON" -m pip wheel --no-cache-dir --no-deps \
            --no-binary llama-cpp-python "llama-cpp-python==0.3.36" -w "$WHEEL_DIR" >&2
        wheel="$(ls "$WHEEL_DIR"/llama_cpp_python-0.3.36-*.whl | head -n 1)"
    fi
    printf '%s\n' "$wheel"
}

make_rpc_venv() {  # a venv of $PYTHON's version without system site packages (older ones had)
    local want have=""
    want="$("$PYTHON" -c 'import sys; print(sys.version)')"
    [[ -x "$VPY" ]] && have="$("$VPY" -c 'import sys; print(sys.version)' 2>/dev/null || true)"
    if [[ "$have" != "$want" ]] \
        || grep -qsi '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg"; then
        log "making the RPC venv $VENV"
        # --without-pip: pip comes from $PYTHON's packages, which the venv sees.
        "$PYTHON" -m venv --clear --without-pip "$VENV"
    fi
}

link_python_packages() {  # the .pth file: $PYTHON's site directories, after the venv's own
    local site
    site="$("$VPY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
    "$PYTHON" - "$site" >"$site/svip_local_rpc_parent.pth" <<'PY'
import os, site, sys
own = os.path.realpath(sys.argv[1])
dirs = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
dirs = [d for d in dirs if os.path.isdir(d) and os.path.realpath(d) != own]
print("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs))
PY
}

setup_rpc_venv() {
    make_rpc_venv
    link_python_packages
    (cd / && "$VPY" -c "import svip_local.native") \
        || die "svip_local does not import in $VENV, which sees $PYTHON's packages"
    if ! "$VPY" -c "from svip_local import native; assert native.supports_rpc()" 2>/dev/null; then
        local wheel
        wheel="$(rpc_wheel)"
        log "installing the RPC build $wheel into $VENV"
        "$VPY" -m pip install -q --no-deps --ignore-installed "$wheel" >&2
        "$VPY" -c "from svip_local import native; assert native.supports_rpc()" 2>/dev/null \
            || die "the llama_cpp $VENV loads has no RPC backend ($("$VPY" -c \
                   'import llama_cpp; print(llama_cpp.__file__)')): is $wheel an RPC build?"
    fi
}

setup_rpc_venv
if [[ "$SETUP_ONLY" == 1 ]]; then
    printf '%s\n' "$VPY"
    exit 0
fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

# -- 2. the server binary -----------------------------------------------------------------------
BIN_DIR="$(bash scripts/build_llama_tools.sh --print-bin-dir)"
SERVER="$BIN_DIR/ggml-rpc-server"
[[ -x "$SERVER" ]] || die "no $SERVER after the build"

# -- 3. the pair, and servers on loopback -------------------------------------------------------
mapfile -t FILES < <("$VPY" -c "
from svip_local.registry import resolve
p = resolve('$PAIR', pull=True)
print(p.target); print(p.draft)")
TARGET="${FILES[0]}"
DRAFT="${FILES[1]}"
log "pair: $TARGET + $DRAFT"

wait_port() {  # $1 = host, $2 = port: up to 20 s
    local i
    for i in $(seq 100); do
        if "$PYTHON" -c "import socket,sys; socket.create_connection(('$1', $2), 1).close()" \
            2>/dev/null; then return 0; fi
        sleep 0.2
    done
    die "nothing listens on $1:$2"
}

start_server() {  # $1 = host, $2 = port, then an optional command prefix (ip netns exec NS)
    local host="$1" port="$2"
    shift 2
    "$@" "$SERVER" -H "$host" -p "$port" -t "$THREADS" >"$OUT/server-$host-$port.log" 2>&1 &
    PIDS+=($!)
    wait_port "$host" "$port"
}

P1=$PORT_BASE
P2=$((PORT_BASE + 1))
start_server 127.0.0.1 "$P1"
start_server 127.0.0.1 "$P2"
ENDPOINTS=("0=127.0.0.1:$P1,127.0.0.1:$P2")

# -- 4. latency ---------------------------------------------------------------------------------
netem_works() {
    [[ "$(id -u)" == 0 ]] && command -v ip >/dev/null && command -v tc >/dev/null || return 1
    local probe="svnetem$$"
    ip link add "${probe}a" type veth peer name "${probe}b" 2>/dev/null || return 1
    if tc qdisc add dev "${probe}a" root netem delay 1ms 2>/dev/null; then
        ip link del "${probe}a"; return 0
    fi
    ip link del "${probe}a"; return 1
}

if netem_works; then
    HOW="tc netem on a veth pair into a network namespace (servers inside it)"
    for i in "${!LATENCIES[@]}"; do
        ms="${LATENCIES[$i]}"
        ns="svrpc$$l$i"
        NETNS+=("$ns")
        net="10.231.$((i + 1))"
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip link add "${ns}h" type veth peer name "${ns}n" netns "$ns"
        ip addr add "$net.1/30" dev "${ns}h"
        ip link set "${ns}h" up
        ip -n "$ns" addr add "$net.2/30" dev "${ns}n"
        ip -n "$ns" link set "${ns}n" up
        tc qdisc add dev "${ns}h" root netem delay "${ms}ms"
        start_server "$net.2" "$P1" ip netns exec "$ns"
        start_server "$net.2" "$P2" ip netns exec "$ns"
        ENDPOINTS+=("$ms=$net.2:$P1,$net.2:$P2")
    done
else
    HOW="a relay on 127.0.0.1 delaying what the client sends (this kernel has no sch_netem)"
    for i in "${!LATENCIES[@]}"; do
        ms="${LATENCIES[$i]}"
        r1=$((PORT_BASE + 10 * (i + 1)))
        r2=$((r1 + 1))
        "$PYTHON" scripts/latency_relay.py --delay-ms "$ms" "$r1:127.0.0.1:$P1" \
            "$r2:127.0.0.1:$P2" >"$OUT/relay-$ms.log" 2>&1 &
        PIDS+=($!)
        wait_port 127.0.0.1 "$r1"
        ENDPOINTS+=("$ms=127.0.0.1:$r1,127.0.0.1:$r2")
    done
fi
log "latency: $HOW"

# -- 5. measure ---------------------------------------------------------------------------------
SIZE=()
[[ "$QUICK" == 1 ]] && SIZE=(--identity-prompts 1 --identity-tokens 24 --per-category 1
                             --calibration-per-category 1 --max-tokens 24)
LAT_ARGS=()
for e in "${ENDPOINTS[@]}"; do LAT_ARGS+=(--latency "$e"); done
status=0
SVIP_LOCAL_CALIBRATION_DIR="$OUT/calibration" "$VPY" scripts/rpc_loopback.py \
    --target "$TARGET" --draft "$DRAFT" "${LAT_ARGS[@]}" --how "$HOW" --out "$OUT" "${SIZE[@]}" \
    || status=$?

# -- 6. the RPC tests, against the same binary --------------------------------------------------
if [[ "$TESTS" == 1 ]]; then
    SVIP_LOCAL_RPC_SERVER="$SERVER" "$VPY" -m pytest -q -m rpc tests/fast || status=1
fi
exit "$status"
