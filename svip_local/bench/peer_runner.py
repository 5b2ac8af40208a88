"""Run llama.cpp's own speculative examples as peer baselines and parse their output.

Two binaries: ``llama-speculative-simple`` (one draft chain per round) and ``llama-speculative``
(a TREE of draft branches: ``-np N_PARALLEL`` sequences, a branch splits off where the draft's
2nd..8th candidate has probability above ``--spec-draft-p-split``). Standard library only:
`svip_local.bench.peer` runs them inside a benchmark, and they run alone as a CLI::

    python -m svip_local.bench.peer_runner -m target-f16.gguf -md draft.gguf \
        -p "Write a Python function that reverses a string." --n-max 3 --n-predict 64
    python -m svip_local.bench.peer_runner ... --tree 4 --p-split 0.1 --n-max 8

Both are built from the llama.cpp tree vendored in llama-cpp-python 0.3.36 by
``scripts/build_llama_tools.sh``; :func:`default_binary` finds them there (or via the
``LLAMA_SPECULATIVE_SIMPLE`` environment variable; ``llama-speculative`` sits beside it).

Command lines used (flag names of this llama.cpp snapshot, ``common/arg.cpp``)::

    llama-speculative-simple -m TARGET -md DRAFT --spec-type draft-simple
        --spec-draft-n-max N_MAX --spec-draft-p-min P_MIN -n N -t THREADS -c CTX
        --temp TEMP -s SEED -f PROMPT_FILE [--no-repack] [-ngl L -ngld L]
    llama-speculative -m TARGET -md DRAFT -np N_PARALLEL --spec-draft-p-split P_SPLIT
        --spec-draft-n-max N_MAX -n N -t THREADS -c CTX*N_PARALLEL
        --temp TEMP -s SEED -f PROMPT_FILE [--no-repack] [-ngl L -ngld L]

``--spec-type draft-simple`` is required by the simple example: ``-md`` alone no longer enables
speculation (``--draft-max``/``--draft-min`` were removed; ``--draft-p-min`` is an alias of
``--spec-draft-p-min``). The tree example ignores ``--spec-type``, ``--spec-draft-p-min`` and
``--spec-draft-n-min`` (it always drafts to its budget and has no draft-confidence stop), so
they are not passed; ``--draft-p-split`` is an alias of ``--spec-draft-p-split`` (default 0.1),
``-np`` defaults to 1 (a single chain) and ``--spec-draft-n-max`` (default 3) is the budget of
draft tokens per round over the whole tree, not its depth. Its KV cache is not unified (the
example has no ``--kv-unified``): each of the ``N_PARALLEL`` sequences gets ``-c / N_PARALLEL``
positions, so we pass ``-c CTX * N_PARALLEL`` to give every branch ``CTX``.

Known limit of the tree example in this snapshot: once the tree branches, the target batch
holds tokens shared by several sequences, which a KV cache split per sequence refuses
("split_equal: sequential split is not supported when there are coupled sequences ... -kvu");
the decode fails, the example carries on with wrong numbers (or aborts on an assertion), and
``-kvu`` is not accepted by this example. Sampled runs (``--temp`` > 0) with ``-np`` > 1
branch almost at once; greedy runs give the draft's runner-up candidates probability 0 and
so seldom branch (only where the example reads past a one-candidate list); ``-np 1`` never
does. :func:`parse_output` raises :class:`PeerError` on any failed decode, so such a run
is never reported as a result.
``-td`` (draft threads) defaults to ``-t``; ``--no-repack`` (``-nr``) is inherited by the
draft. The prompt is tokenized with special tokens parsed and *no* chat template is applied,
so pass an already templated prompt. ``-f`` drops one trailing newline from the file; we
write ``prompt + "\\n"`` so the model sees exactly ``prompt``. There is no ``--no-warmup`` in
these examples (they warm both models up before timing).

``--no-repack`` is passed by default, matching ``svip_local`` (which loads models with
``use_extra_bufts = False`` unless ``SVIP_LOCAL_EXTRA_BUFTS=1``): the extra buffer types include
ggml's AMX path, and on AMX CPUs (Sapphire Rapids) any multi-token batch on a Q4_K model
segfaults in ``ggml_backend_amx_mul_mat`` -- already in the warm-up, so the binary dies with
SIGSEGV before generating anything. ``repack=True`` (or ``SVIP_LOCAL_EXTRA_BUFTS=1``) drops it.

What they print (stdout: ``"\\n\\n"`` + the prompt echo + the generated text + blank lines;
stderr: logs, then these lines; the same in both examples except the "draft:" section)::

    0.17.634.500 I encoded   10 tokens in    1.338 seconds, speed:    7.476 t/s
    0.17.634.503 I decoded   68 tokens in   14.504 seconds, speed:    4.688 t/s
    0.17.634.503 I
    0.17.634.503 I n_draft   = 3
    0.17.634.503 I n_predict = 68
    0.17.634.504 I n_drafted = 60
    0.17.634.504 I n_accept  = 48
    0.17.634.505 I accept    = 80.000%
    0.17.634.505 I
    0.17.634.505 I draft:
    0.17.634.554 I target:
    ... I common_perf_print:    sampling time =      23.68 ms
    ... I common_perf_print:    samplers time =       7.65 ms /    68 tokens
    ... I common_perf_print:        load time =     439.07 ms
    ... I common_perf_print: prompt eval time =   11669.41 ms /    91 tokens (  128.24 ms per ...
    ... I common_perf_print:        eval time =       0.00 ms /     1 runs   (    0.00 ms per ...
    ... I common_perf_print:       total time =   16673.63 ms /    92 tokens
    ... I common_perf_print: unaccounted time =    4980.54 ms /  29.9 %      (total - ...
    ... I common_perf_print:    graphs reused =         20

(the "m.ss.mmm.uuu I " prefix is the log timestamp/level; the per-implementation draft
statistics line of the simple example only appears at ``-lv 4``; the tree example prints the
draft context's ``llama_perf_context_print`` lines under "draft:" where the log level lets
them through; "prompt eval" of the target counts every multi-token batch, i.e. also the
verification batches, so it is not the prefill.)

How the peer's timing is measured (``examples/speculative-simple/speculative-simple.cpp``,
``examples/speculative/speculative.cpp``):

* ``encoded N tokens in T`` (``prefill_s``): wall time from after model load and warm-up to the
  start of generation. Simple: target sampler + speculator init, the target decode of the
  prompt minus its last token, and the draft decode of the same batch; N counts the whole
  prompt (the last prompt token is decoded inside the first verification batch, as in our
  engine). Tree: the target decodes the prompt minus its last token, then that last token
  alone (its logits give the first generated token), and the draft decodes the whole prompt;
  sampler init falls between the two intervals, in neither.
* ``decoded N tokens in T`` (``decode_s``): the generation loop only. Its ``speed`` therefore
  EXCLUDES prefill. N (``n_generated``) counts every accepted token including the bonus token
  and an end-of-generation token.
* We compute ``tokens_per_s_incl_prefill = n_generated / (prefill_s + decode_s)``: the two
  intervals are back to back, so this is the "prefill included" rate our benchmarks report
  (model load and warm-up are excluded from both). ``wall_s`` is the whole process, load
  included, for reference only.
* Length: the loop stops once it has produced MORE than ``-n`` tokens, and its last rounds
  may overshoot (a remaining budget of 0 is passed to the drafter as "no limit"), so ``-n N``
  yields between N + 1 and N + 1 + n_max tokens unless end-of-generation comes first.
  :func:`run_peer` passes ``-n n_predict - 1`` so the peer generates at least ``n_predict``
  tokens (``adjust_n=False`` passes ``-n n_predict`` unchanged); compare rates, not counts.
  The tree example stops the same way.
* ``n_accept`` counts accepted draft tokens; ``acceptance = accepted / drafted`` (None when
  nothing was drafted). Simple: ``n_drafted`` counts draft tokens that went to verification,
  and each round is one target verification batch, so ``verify_rounds = n_generated -
  accepted``. Tree: ``n_drafted`` counts draft *steps* (one batched draft decode per tree
  level; the number of drafted tokens only at ``-np 1``, fewer than the tree's tokens once it
  branches), so its acceptance is per level; the first token comes from the prefill's
  logits, so ``verify_rounds = n_generated - accepted - 1``. In both,
  ``tokens_per_round = 1 + accepted / verify_rounds``. Printed times have millisecond
  resolution.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = [
    "PeerError",
    "build_command",
    "default_binary",
    "parse_output",
    "run_peer",
]

BINARY_NAME = "llama-speculative-simple"
TREE_BINARY_NAME = "llama-speculative"
TREE_NEEDS_KVU = (
    "llama-speculative fails once its draft tree branches: the tokens its branches share need "
    "a unified KV cache (-kvu), which this llama.cpp snapshot does not offer to that example; "
    "-np 1 (one chain) never branches, greedy runs seldom do"
)

_NUM = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf)"
_RE_ENCODED = re.compile(
    r"encoded\s+(\d+)\s+tokens\s+in\s+" + _NUM + r"\s+seconds?,\s*speed:\s*" + _NUM, re.I
)
_RE_DECODED = re.compile(
    r"decoded\s+(\d+)\s+tokens\s+in\s+" + _NUM + r"\s+seconds?,\s*speed:\s*" + _NUM, re.I
)
_RE_INT_FIELDS = {
    "n_max": re.compile(r"\bn_draft\s*=\s*(-?\d+)"),
    "n_generated_reported": re.compile(r"\bn_predict\s*=\s*(-?\d+)"),
    "drafted": re.compile(r"\bn_drafted\s*=\s*(-?\d+)"),
    "accepted": re.compile(r"\bn_accept\s*=\s*(-?\d+)"),
}
_RE_ACCEPT = re.compile(r"\baccept\s*=\s*" + _NUM + r"\s*%")
_RE_STATS = re.compile(
    r"statistics\s+(\S+):.*?#gen drafts\s*=\s*(\d+),\s*#acc drafts\s*=\s*(\d+),"
    r"\s*#gen tokens\s*=\s*(\d+),\s*#acc tokens\s*=\s*(\d+)"
    r"(?:.*?#mean acc len\s*=\s*" + _NUM + r")?"
    r"(?:.*?dur\(b,g,a\)\s*=\s*" + _NUM + r",\s*" + _NUM + r",\s*" + _NUM + r"\s*ms)?"
)
_RE_PERF = {
    "prompt_eval": re.compile(
        r"prompt eval time\s*=\s*" + _NUM + r"\s*ms\s*/\s*(\d+)\s*tokens"
    ),
    "eval": re.compile(r"\beval time\s*=\s*" + _NUM + r"\s*ms\s*/\s*(\d+)\s*runs"),
}
# a failed target or draft decode: the example carries on (exit status 0) with wrong numbers
_RE_DECODE_FAILED = re.compile(
    r"^.*\b(?:decode: failed|split_equal: sequential split is not)\b.*$", re.M
)
_RE_SECTION = {
    "draft": re.compile(r"\bdraft:[ \t]*$", re.M),
    "target": re.compile(r"\btarget:[ \t]*$", re.M),
}


class PeerError(RuntimeError):
    """The peer binary failed or printed nothing we could parse."""


def _float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return math.nan


def _last_match(rx: re.Pattern[str], text: str) -> re.Match[str] | None:
    matches = list(rx.finditer(text))
    return matches[-1] if matches else None


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


def build_command(
    binary: str | os.PathLike[str],
    target: str | os.PathLike[str],
    draft: str | os.PathLike[str],
    prompt_file: str | os.PathLike[str],
    *,
    n_max: int = 3,
    p_min: float = 0.0,
    n_predict: int = 64,
    threads: int = 2,
    ctx: int = 2048,
    temp: float = 0.0,
    seed: int = 0,
    n_min: int | None = None,
    n_gpu_layers: int | None = None,
    repack: bool = False,
    n_parallel: int | None = None,
    p_split: float = 0.1,
    extra_args: list[str] | tuple[str, ...] = (),
) -> list[str]:
    """The argument vector for one run (``n_predict`` is passed to ``-n`` unchanged).

    ``n_parallel`` set: the tree example's command (``binary`` is then ``llama-speculative``):
    ``-np n_parallel --spec-draft-p-split p_split`` instead of ``--spec-type``/``p_min``/
    ``n_min`` (which it ignores: a ``p_min`` or ``n_min`` raises ValueError), and ``-c`` is
    ``ctx * n_parallel`` so that each of its sequences gets ``ctx`` positions.
    """
    if n_parallel is None:
        spec = ["--spec-type", "draft-simple", "--spec-draft-n-max", str(int(n_max)),
                "--spec-draft-p-min", repr(float(p_min))]
        n_seq = 1
    else:
        n_seq = int(n_parallel)
        if n_seq < 1:
            raise ValueError("n_parallel must be >= 1")
        if p_min or n_min is not None:
            raise ValueError("llama-speculative has no p_min or n_min (it drafts to n_max)")
        spec = ["-np", str(n_seq), "--spec-draft-p-split", repr(float(p_split)),
                "--spec-draft-n-max", str(int(n_max))]
    cmd = [
        os.fspath(binary),
        "-m", os.fspath(target),
        "-md", os.fspath(draft),
        *spec,
        "-n", str(int(n_predict)),
        "-t", str(int(threads)),
        "-c", str(int(ctx) * n_seq),
        "--temp", repr(float(temp)),
        "-s", str(int(seed)),
        "-f", os.fspath(prompt_file),
        "--no-escape",  # the prompt as it is: code holds "\\n" that must not become a newline
    ]  # fmt: skip
    if n_min is not None:
        cmd += ["--spec-draft-n-min", str(int(n_min))]
    if not repack and not {"--no-repack", "-nr", "--repack"} & set(extra_args):
        cmd += ["--no-repack"]
    if n_gpu_layers is not None:
        cmd += ["-ngl", str(int(n_gpu_layers)), "-ngld", str(int(n_gpu_layers))]
    cmd += list(extra_args)
    return cmd


def parse_output(
    stderr: str, stdout: str = "", prompt: str | None = None, *, tree: bool = False
) -> dict[str, Any]:
    """Parse the end-of-run report of ``llama-speculative-simple`` (``tree``:
    ``llama-speculative``; they print the same lines, but count rounds differently).

    Raises :class:`PeerError` if the "decoded ... tokens" line is missing or a decode failed
    (the example then goes on and exits with 0; see :data:`TREE_NEEDS_KVU`). Fields the binary
    did not print come back as None.
    """
    failed = _RE_DECODE_FAILED.search(stderr)
    if failed:
        hint = f" ({TREE_NEEDS_KVU})" if "coupled sequences" in stderr else ""
        raise PeerError(f"a decode failed, so the peer's numbers are wrong{hint}: "
                        f"{failed.group(0).strip()}")
    # the report is on stderr; the generated text (stdout) must never be mistaken for it
    text_all = stderr
    dec = _last_match(_RE_DECODED, text_all)
    if dec is None:
        text_all = stderr + "\n" + stdout
        dec = _last_match(_RE_DECODED, text_all)
    if dec is None:
        raise PeerError("no 'decoded N tokens in T seconds' line in the peer's output")
    head, tail = text_all[: dec.start()], text_all[dec.start() :]
    res: dict[str, Any] = {
        "n_generated": int(dec.group(1)),
        "decode_s": _float(dec.group(2)),
        "tokens_per_s": _float(dec.group(3)),
    }
    enc = _last_match(_RE_ENCODED, head)
    res["n_prompt"] = int(enc.group(1)) if enc else None
    res["prefill_s"] = _float(enc.group(2)) if enc else None
    res["prefill_tokens_per_s"] = _float(enc.group(3)) if enc else None

    for key, rx in _RE_INT_FIELDS.items():
        m = rx.search(tail)
        res[key] = int(m.group(1)) if m else None
    m = _RE_ACCEPT.search(tail)
    res["acceptance_reported_pct"] = _float(m.group(1)) if m else None

    drafted, accepted = res["drafted"], res["accepted"]
    res["acceptance"] = accepted / drafted if drafted and accepted is not None else None
    # mean tokens per target verification = 1 + accepted per round. Every round yields its
    # accepted tokens and one more, so rounds = generated - accepted; in the tree example the
    # first of those comes from the prefill's logits, not from a verification batch.
    n_gen = res["n_generated"]
    rounds = max(n_gen - accepted - (1 if tree else 0), 0) if accepted is not None else None
    res["verify_rounds"] = rounds
    res["tokens_per_round"] = 1 + accepted / rounds if rounds and accepted is not None else None

    if res["prefill_s"] is not None and not math.isnan(res["prefill_s"]):
        total = res["prefill_s"] + res["decode_s"]
        res["total_s"] = total
        res["tokens_per_s_incl_prefill"] = n_gen / total if total > 0 else None
    else:
        res["total_s"] = None
        res["tokens_per_s_incl_prefill"] = None

    stats = _RE_STATS.search(tail)
    if stats:
        res["spec_stats"] = {
            "impl": stats.group(1),
            "gen_drafts": int(stats.group(2)),
            "acc_drafts": int(stats.group(3)),
            "gen_tokens": int(stats.group(4)),
            "acc_tokens": int(stats.group(5)),
            "mean_acc_len": _float(stats.group(6)) if stats.group(6) else None,
            "begin_ms": _float(stats.group(7)) if stats.group(7) else None,
            "draft_ms": _float(stats.group(8)) if stats.group(8) else None,
            "accept_ms": _float(stats.group(9)) if stats.group(9) else None,
        }
    # perf lines: the target's after "target:"; the draft's (tree example) between the two
    at_target = _RE_SECTION["target"].search(tail)
    at_draft = _RE_SECTION["draft"].search(tail)
    sections = {"target": tail[at_target.end() :] if at_target else tail}
    if at_draft:
        sections["draft"] = tail[at_draft.end() : at_target.start() if at_target else None]
    for who, text in sections.items():
        for key, rx in _RE_PERF.items():
            m = rx.search(text)
            if m:
                res[f"{who}_{key}_ms"] = _float(m.group(1))
                res[f"{who}_{key}_n"] = int(m.group(2))

    # generated text: stdout is "\n\n" + prompt echo + generation + trailing blank lines
    body = stdout[2:] if stdout.startswith("\n\n") else stdout
    if prompt is not None and body.startswith(prompt):
        res["text"] = body[len(prompt) :].rstrip("\n")
    else:
        res["text"] = None
    return res


def run_peer(
    binary: str | os.PathLike[str] | None,
    target: str | os.PathLike[str],
    draft: str | os.PathLike[str],
    prompt: str,
    n_max: int = 3,
    p_min: float = 0.0,
    n_predict: int = 64,
    threads: int = 2,
    ctx: int = 2048,
    temp: float = 0.0,
    seed: int = 0,
    *,
    n_min: int | None = None,
    n_gpu_layers: int | None = None,
    repack: bool | None = None,
    adjust_n: bool = True,
    n_parallel: int | None = None,
    p_split: float = 0.1,
    extra_args: list[str] | tuple[str, ...] = (),
    timeout: float | None = 1800.0,
    env: dict[str, str] | None = None,
    attempts: int = 2,
) -> dict[str, Any]:
    """Run ``llama-speculative-simple`` once on ``prompt`` (text) and return parsed results;
    with ``n_parallel`` set, the tree example ``llama-speculative`` with ``-np n_parallel``
    and split probability ``p_split`` instead (``p_min`` must then be 0).

    Keys: ``n_generated`` (tokens generated), ``decode_s`` and ``tokens_per_s`` (generation
    loop only, as printed), ``n_prompt``, ``prefill_s``, ``total_s`` (prefill + decode),
    ``tokens_per_s_incl_prefill``, ``drafted``, ``accepted``, ``acceptance`` (fraction),
    ``acceptance_reported_pct``, ``n_max`` (as printed), ``verify_rounds``,
    ``tokens_per_round``, ``text`` (generated text, None if the echo did not match),
    ``wall_s`` (whole process incl. model load), ``cmd``, ``returncode`` and, when printed,
    ``target_prompt_eval_ms/_n``, ``target_eval_ms/_n``, ``spec_stats`` (only with ``-lv 4`` in
    ``extra_args``: draft counts, mean acceptance length, ``draft_ms`` = time spent drafting),
    ``draft_prompt_eval_ms/_n``, ``draft_eval_ms/_n`` (tree example); ``n_parallel`` and
    ``p_split`` (None for the simple example).

    ``binary=None`` uses :func:`default_binary` (the tree example's with ``n_parallel``).
    With ``adjust_n`` the binary gets ``-n n_predict - 1`` so it generates at least
    ``n_predict`` tokens (it may overshoot by up to ``n_max``; see module docstring).
    ``repack=None`` follows ``SVIP_LOCAL_EXTRA_BUFTS`` like the engine (default: pass
    ``--no-repack``). ``n_gpu_layers`` (GPU builds) is applied to both models. A run that
    exits with 0 but lost its report (llama.cpp's log thread may not flush before exit, seen
    in about 1 of 12 runs of the tiny test models) is run again, up to ``attempts`` runs in
    all. Raises :class:`PeerError` on failure.
    """
    tree = n_parallel is not None
    exe = Path(binary) if binary is not None else default_binary(tree)
    if not exe.is_file():
        raise PeerError(f"{exe} not found: build it with scripts/build_llama_tools.sh")
    for p in (target, draft):
        if not Path(p).is_file():
            raise PeerError(f"model {p} not found")
    if n_predict < 1:
        raise ValueError("n_predict must be >= 1")
    n_arg = max(n_predict - 1, 0) if adjust_n else n_predict
    if repack is None:
        repack = os.environ.get("SVIP_LOCAL_EXTRA_BUFTS", "0") == "1"

    with tempfile.TemporaryDirectory(prefix="svip-local-peer.") as tmp:
        pfile = Path(tmp) / "prompt.txt"
        # '-f' strips exactly one trailing '\n', so this gives the binary exactly `prompt`
        pfile.write_bytes(prompt.encode("utf-8") + b"\n")
        cmd = build_command(
            exe, target, draft, pfile,
            n_max=n_max, p_min=p_min, n_predict=n_arg, threads=threads, ctx=ctx,
            temp=temp, seed=seed, n_min=n_min, n_gpu_layers=n_gpu_layers,
            repack=repack, n_parallel=n_parallel, p_split=p_split, extra_args=extra_args,
        )  # fmt: skip
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
            if proc.returncode != 0 or _RE_DECODED.search(stderr + "\n" + stdout):
                break

    if proc.returncode != 0:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        hint = f" ({TREE_NEEDS_KVU})" if "coupled sequences" in stderr else ""
        raise PeerError(f"peer exited with {proc.returncode}{hint}: {' '.join(cmd)}\n{tail}")
    try:
        res = parse_output(stderr, stdout, prompt, tree=tree)
    except PeerError as e:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise PeerError(f"{e}: {' '.join(cmd)}\n{tail}") from e
    res["wall_s"] = wall
    res["returncode"] = proc.returncode
    res["cmd"] = cmd
    res["n_predict_requested"] = n_predict
    res["p_min"] = p_min
    res["n_parallel"] = n_parallel
    res["p_split"] = p_split if tree else None
    if res["n_max"] is None:
        res["n_max"] = n_max
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
    try:
        res = run_peer(
            args.binary, args.target, args.draft, prompt,
            n_max=args.n_max, p_min=args.p_min, n_predict=args.n_predict,
            threads=args.threads, ctx=args.ctx, temp=args.temp, seed=args.seed,
            n_min=args.n_min, n_gpu_layers=args.n_gpu_layers, adjust_n=not args.raw_n,
            repack=True if args.repack else None, n_parallel=args.tree, p_split=args.p_split,
            extra_args=extra, timeout=args.timeout,
        )  # fmt: skip
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
