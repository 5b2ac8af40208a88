"""Run llama.cpp's own speculative examples as peer baselines and parse their output.

Standard library only, so it also runs alone as a CLI (``python -m svip_local.bench.peer_runner
-m TARGET -md DRAFT -p PROMPT [--tree N_PARALLEL]``). `peer_output` parses what they print;
their flags, their output and how their timing compares with ours are in docs/peers.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from svip_local.bench.peer_output import PeerError, has_report, kvu_hint, parse_output

__all__ = ["PeerArgs", "build_command", "default_binary", "run_peer"]

BINARY_NAME = "llama-speculative-simple"
TREE_BINARY_NAME = "llama-speculative"


def default_binary(tree: bool = False) -> Path:
    """Where ``build_llama_tools.sh`` puts ``llama-speculative-simple`` (CPU build); with
    ``tree``, ``llama-speculative`` in the same directory.

    ``$LLAMA_SPECULATIVE_SIMPLE`` (a file) wins, then ``$LLAMA_TOOLS_BIN_DIR``, then
    ``${SVIP_LOCAL_TOOLS_DIR:-~/.cache/svip-local/tools}/build-cpu/bin``.
    """
    env = os.environ.get("LLAMA_SPECULATIVE_SIMPLE")
    if env:
        simple = Path(env)
    elif bin_dir := os.environ.get("LLAMA_TOOLS_BIN_DIR"):
        simple = Path(bin_dir) / BINARY_NAME
    else:
        tools = os.environ.get("SVIP_LOCAL_TOOLS_DIR") or str(
            Path.home() / ".cache" / "svip-local" / "tools"
        )
        simple = Path(tools) / "build-cpu" / "bin" / BINARY_NAME
    return simple.with_name(TREE_BINARY_NAME) if tree else simple


@dataclass(frozen=True)
class PeerArgs:
    """One peer run's settings, built once and turned into flags by :func:`build_command`.

    ``n_parallel`` set: the tree example ``llama-speculative`` with that many branches and split
    probability ``p_split`` (``p_min`` must then be 0 and ``n_min`` None). ``binary`` None: the
    built one (:func:`default_binary`). ``repack`` None follows ``SVIP_LOCAL_EXTRA_BUFTS`` like
    the engine (default: pass ``--no-repack``). ``n_gpu_layers`` (GPU builds) applies to both
    models.
    """

    target: str | os.PathLike[str]
    draft: str | os.PathLike[str]
    n_max: int = 3
    p_min: float = 0.0
    n_predict: int = 64
    threads: int = 2
    ctx: int = 2048
    temp: float = 0.0
    seed: int = 0
    n_min: int | None = None
    n_gpu_layers: int | None = None
    repack: bool | None = None
    n_parallel: int | None = None
    p_split: float = 0.1
    extra_args: tuple[str, ...] = ()
    binary: str | os.PathLike[str] | None = None

    @property
    def tree(self) -> bool:
        return self.n_parallel is not None

    def executable(self) -> Path:
        """``binary``, or the built one of this example."""
        return Path(self.binary) if self.binary is not None else default_binary(self.tree)


def build_command(args: PeerArgs, prompt_file: str | os.PathLike[str]) -> list[str]:
    """The argument vector for one run (``n_predict`` goes to ``-n`` unchanged and ``repack``
    None counts as False: :func:`run_peer` settles both first).

    The tree example's command takes ``-np n_parallel --spec-draft-p-split p_split`` instead of
    ``--spec-type``/``p_min``/``n_min`` (which it ignores: a ``p_min`` or ``n_min`` raises
    ValueError), and its ``-c`` is ``ctx * n_parallel`` so that each sequence gets ``ctx``.
    """
    if args.n_parallel is None:
        spec = ["--spec-type", "draft-simple", "--spec-draft-n-max", str(int(args.n_max)),
                "--spec-draft-p-min", repr(float(args.p_min))]
        n_seq = 1
    else:
        n_seq = int(args.n_parallel)
        if n_seq < 1:
            raise ValueError("n_parallel must be >= 1")
        if args.p_min or args.n_min is not None:
            raise ValueError("llama-speculative has no p_min or n_min (it drafts to n_max)")
        spec = ["-np", str(n_seq), "--spec-draft-p-split", repr(float(args.p_split)),
                "--spec-draft-n-max", str(int(args.n_max))]
    cmd = [
        os.fspath(args.executable()),
        "-m", os.fspath(args.target),
        "-md", os.fspath(args.draft),
        *spec,
        "-n", str(int(args.n_predict)),
        "-t", str(int(args.threads)),
        "-c", str(int(args.ctx) * n_seq),
        "--temp", repr(float(args.temp)),
        "-s", str(int(args.seed)),
        "-f", os.fspath(prompt_file),
        "--no-escape",  # the prompt as it is: code holds "\\n" that must not become a newline
    ]  # fmt: skip
    if args.n_min is not None:
        cmd += ["--spec-draft-n-min", str(int(args.n_min))]
    if not args.repack and not {"--no-repack", "-nr", "--repack"} & set(args.extra_args):
        cmd += ["--no-repack"]
    if args.n_gpu_layers is not None:
        cmd += ["-ngl", str(int(args.n_gpu_layers)), "-ngld", str(int(args.n_gpu_layers))]
    cmd += list(args.extra_args)
    return cmd


def run_peer(args: PeerArgs, prompt: str, *, adjust_n: bool = True,
             timeout: float | None = 1800.0, env: dict[str, str] | None = None,
             attempts: int = 2) -> dict[str, Any]:
    """Run the example ``args`` name once on ``prompt`` (text) and return
    :func:`~svip_local.bench.peer_output.parse_output`'s fields plus ``wall_s`` (whole process
    incl. model load), ``cmd``, ``returncode``, ``n_predict_requested``, ``p_min``,
    ``n_parallel`` and ``p_split`` (None for the simple example).

    With ``adjust_n`` the binary gets ``-n n_predict - 1`` so it generates at least
    ``n_predict`` tokens (it may overshoot by up to ``n_max``; see docs/peers.md). A run that
    exits with 0 but lost its report (llama.cpp's log thread may not flush before exit) is run
    again, up to ``attempts`` runs in all. Raises :class:`PeerError` on failure.
    """
    exe = args.executable()
    if not exe.is_file():
        raise PeerError(f"{exe} not found: build it with scripts/build_llama_tools.sh")
    for p in (args.target, args.draft):
        if not Path(p).is_file():
            raise PeerError(f"model {p} not found")
    if args.n_predict < 1:
        raise ValueError("n_predict must be >= 1")
    repack = args.repack
    if repack is None:
        repack = os.environ.get("SVIP_LOCAL_EXTRA_BUFTS", "0") == "1"
    n_arg = max(args.n_predict - 1, 0) if adjust_n else args.n_predict

    with tempfile.TemporaryDirectory(prefix="svip-local-peer.") as tmp:
        pfile = Path(tmp) / "prompt.txt"
        # '-f' strips exactly one trailing '\n', so this gives the binary exactly `prompt`
        pfile.write_bytes(prompt.encode("utf-8") + b"\n")
        cmd = build_command(replace(args, binary=exe, n_predict=n_arg, repack=repack), pfile)
        for _ in range(max(1, attempts)):
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=timeout,
                    env={**os.environ, **env} if env else None,
                    check=False,
                )
            except subprocess.TimeoutExpired as e:
                raise PeerError(f"peer timed out after {timeout} s: {' '.join(cmd)}") from e
            wall = time.perf_counter() - t0
            stdout = proc.stdout.decode("utf-8", errors="replace")
            stderr = proc.stderr.decode("utf-8", errors="replace")
            # llama.cpp's logger is a leaked singleton whose worker thread writes both streams:
            # a process that exits while it lags loses the last lines, report included
            if proc.returncode != 0 or has_report(stderr + "\n" + stdout):
                break

    if proc.returncode != 0:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise PeerError(f"peer exited with {proc.returncode}{kvu_hint(stderr)}: "
                        f"{' '.join(cmd)}\n{tail}")
    try:
        res = parse_output(stderr, stdout, prompt, tree=args.tree)
    except PeerError as e:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise PeerError(f"{e}: {' '.join(cmd)}\n{tail}") from e
    res["wall_s"] = wall
    res["returncode"] = proc.returncode
    res["cmd"] = cmd
    res["n_predict_requested"] = args.n_predict
    res["p_min"] = args.p_min
    res["n_parallel"] = args.n_parallel
    res["p_split"] = args.p_split if args.tree else None
    if res["n_max"] is None:
        res["n_max"] = args.n_max
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=None,
                    help="llama-speculative-simple, or with --tree llama-speculative "
                         "(default: the built one)")
    ap.add_argument("-m", "--target", required=True, help="target GGUF")
    ap.add_argument("-md", "--draft", required=True, help="draft GGUF")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("-p", "--prompt", help="prompt text (no chat template is applied)")
    g.add_argument("-f", "--prompt-file", help="file holding the prompt text (used verbatim)")
    ap.add_argument("--n-max", type=int, default=3,
                    help="max draft length; with --tree: draft tokens per round over the "
                         "whole tree (default 3)")
    ap.add_argument("--p-min", type=float, default=0.0, help="draft stop prob. (default 0)")
    ap.add_argument("--n-min", type=int, default=None, help="drop drafts shorter than this")
    ap.add_argument("--tree", type=int, default=None, metavar="N_PARALLEL",
                    help="run the tree example llama-speculative with this many branches")
    ap.add_argument("--p-split", type=float, default=0.1,
                    help="with --tree: branch split probability (default 0.1)")
    ap.add_argument("-n", "--n-predict", type=int, default=64, help="tokens to generate")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-c", "--ctx", type=int, default=2048)
    ap.add_argument("--temp", type=float, default=0.0)
    ap.add_argument("-s", "--seed", type=int, default=0)
    ap.add_argument("-ngl", "--n-gpu-layers", type=int, default=None)
    ap.add_argument(
        "--raw-n", action="store_true", help="pass -n unchanged (the peer then makes > n)"
    )
    ap.add_argument(
        "--repack", action="store_true", help="allow weight repacking/AMX (may segfault)"
    )
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--json", action="store_true", help="print the whole result as JSON")
    args, extra = ap.parse_known_args(argv)
    if args.tree is not None and (args.p_min or args.n_min is not None):
        ap.error("--tree takes no --p-min or --n-min (llama-speculative drafts to --n-max)")

    prompt = args.prompt
    if prompt is None:
        prompt = Path(args.prompt_file).read_text(encoding="utf-8")
    peer_args = PeerArgs(
        args.target, args.draft, n_max=args.n_max, p_min=args.p_min, n_predict=args.n_predict,
        threads=args.threads, ctx=args.ctx, temp=args.temp, seed=args.seed, n_min=args.n_min,
        n_gpu_layers=args.n_gpu_layers, repack=True if args.repack else None,
        n_parallel=args.tree, p_split=args.p_split, extra_args=tuple(extra), binary=args.binary)
    try:
        res = run_peer(peer_args, prompt, adjust_n=not args.raw_n, timeout=args.timeout)
    except PeerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    acc = res["acceptance"]
    incl = res["tokens_per_s_incl_prefill"]
    setting = (f"n_max={res['n_max']} p_min={res['p_min']}" if args.tree is None else
               f"n_parallel={res['n_parallel']} p_split={res['p_split']} n_max={res['n_max']}")
    print(
        f"{setting} generated={res['n_generated']} "
        f"prefill={res['prefill_s']}s decode={res['decode_s']}s "
        f"tok/s={res['tokens_per_s']:.3f} (incl. prefill: "
        f"{'n/a' if incl is None else f'{incl:.3f}'}) drafted={res['drafted']} "
        f"accepted={res['accepted']} acceptance={'n/a' if acc is None else f'{acc:.3f}'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
