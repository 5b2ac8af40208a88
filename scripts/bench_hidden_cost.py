#!/usr/bin/env python3
"""What the learnt stop rule costs per draft step: a draft decode with llama.cpp's hidden-state
output off and on, and one prediction of the acceptance head.

    python scripts/bench_hidden_cost.py --draft D.gguf [--head CALIBRATION.head.npz]

One process, one draft context; blocks of single-token decodes alternate off/on so a slow spell
of a shared machine hits both. Without --head a head of the shipped shape is trained on random
data (the cost does not depend on the weights). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from svip_local.calibration.head import Examples, load_heads, train
from svip_local.calibration.machine import cpu_model
from svip_local.native import Context, Model, Outputs

TEXT = ("Speculative decoding drafts a few tokens with a small model and lets the large model "
        "check them all in one batch, so a reply comes faster at no loss. ")


def decode_ms(ctx: Context, start: list[int], steps: int, hidden: bool) -> float:
    """Mean ms of a greedy draft step (argmax, then a one-token decode), reading the hidden
    state when on, as `specdec` does."""
    ctx.output_hidden(hidden)
    ctx.clear()
    ctx.decode(start, Outputs.LAST)
    t0 = time.perf_counter()
    for _ in range(steps):
        tok = int(ctx.logits().argmax())
        if hidden:
            ctx.hidden()
        ctx.decode([tok], Outputs.LAST)
    return (time.perf_counter() - t0) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draft", required=True)
    ap.add_argument("--head", help="a calibration's .head.npz (default: a random head)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--blocks", type=int, default=6, help="alternating blocks per setting")
    ap.add_argument("--steps", type=int, default=32, help="draft steps per block")
    ap.add_argument("--out", default="hidden_cost.json")
    args = ap.parse_args()
    model = Model(args.draft)
    ctx = Context(model, n_ctx=1024, n_threads=args.threads)
    start = model.tokenize(TEXT * 2)
    times: dict[bool, list[float]] = {False: [], True: []}
    decode_ms(ctx, start, 8, False)  # warm-up
    for _ in range(args.blocks):
        for on in (False, True):
            times[on].append(decode_ms(ctx, start, args.steps, on))
    if args.head:
        raw = Path(args.head).read_bytes()
        with np.load(args.head) as data:
            identity = json.loads(str(data["meta"]))["identity"]
        head = load_heads(raw, identity)[0]
    else:
        rng = np.random.default_rng(0)
        runs = [(rng.standard_normal((200, model.n_embd)).astype(np.float16),
                 rng.uniform(0, 3, 200), rng.uniform(0.1, 1, 200),
                 rng.uniform(0, 1, 200) > 0.5) for _ in range(4)]
        head = train(Examples.of_runs(runs[:3]), Examples.of_runs(runs[3:]), 0.0)
    ctx.output_hidden(True)
    ctx.clear()
    ctx.decode(start, Outputs.LAST)
    x = ctx.hidden()
    n = 5000
    t0 = time.perf_counter()
    for _ in range(n):
        head.predict(x, 0.7, 0.6)
    predict_us = (time.perf_counter() - t0) / n * 1e6
    off, on = statistics.median(times[False]), statistics.median(times[True])
    result = {"cpu": cpu_model(), "draft": Path(args.draft).name, "n_embd": model.n_embd,
              "step_ms_hidden_off": off, "step_ms_hidden_on": on,
              "blocks_off": times[False], "blocks_on": times[True],
              "head_predict_us": predict_us}
    print(f"{cpu_model()} | {Path(args.draft).name} (n_embd {model.n_embd})")
    print("| draft step | median ms | blocks (ms) |\n|---|---:|---|")
    for label, on_ in (("hidden state off", False), ("hidden state on", True)):
        blocks = " ".join(f"{t:.2f}" for t in times[on_])
        print(f"| {label} | {statistics.median(times[on_]):.2f} | {blocks} |")
    print(f"\nhidden-state output: {on / off - 1:+.1%} per draft step; head prediction "
          f"{predict_us:.1f} µs ({predict_us / 1e3 / off:.2%} of a step)")
    Path(args.out).write_text(json.dumps(result, indent=1))
    ctx.close()
    model.close()


if __name__ == "__main__":
    main()
