"""A few seconds of measurement when an engine starts without any record of this machine.

The live `auto` prices each round with this machine's costs. With no stored calibration and
no live estimates from an earlier session it would otherwise start from a guess; instead the
probe times the target verifying 1, 2, 4, ... tokens up to the longest copy (`max_copy` + 1)
and one draft step (well under a second on a GPU, a few seconds on a CPU), and the live
estimates refine those from then on.
`svip_local.bench.costs` uses the same timer for the thorough measurement of `calibrate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from statistics import median
from time import perf_counter

from svip_local.calibration.live import LiveCosts
from svip_local.native import Context, Outputs
from svip_local.policies import entropy_and_top_prob, entropy_scratch

PROBE_DEPTH = 64
CATCHUP = 16  # the draft decoding this many tokens at once: its price per caught-up token


def decode_times(ctx: Context, ids: Sequence[int], depth: int, sizes: Sequence[int] | range,
                 outputs: Outputs, repeats: int, warmup: int,
                 interrupted: Callable[[], bool] = lambda: False) -> list[float]:
    """Median time of decoding `b` tokens on top of `depth` cached ones, for each b, the
    sizes interleaved so that a noisy neighbour spreads over all of them. Leaves `depth`
    tokens cached."""
    ctx.clear()
    ctx.decode(ids[:depth], Outputs.NONE)
    samples: dict[int, list[float]] = {b: [] for b in sizes}
    for r in range(warmup + repeats):
        for b in sizes:
            if interrupted():
                raise InterruptedError
            batch = ids[depth:depth + b]
            t0 = perf_counter()
            ctx.decode(batch, outputs)
            ctx.synchronize()
            dt = perf_counter() - t0
            ctx.truncate(depth)
            if r >= warmup:
                samples[b].append(dt)
    return [median(samples[b]) for b in sizes]


def probe_sizes(max_rows: int) -> list[int]:
    """Verification batches the probe times: powers of two up to half `max_rows`, then
    `max_rows` itself."""
    sizes = [1 << i for i in range(max_rows.bit_length()) if 2 << i <= max_rows]
    return [*sizes, max_rows]


def probe_costs(target: Context, draft: Context | None, tokens: Sequence[int], n_vocab: int,
                max_rows: int, progress: Callable[[str], None] | None = None,
                interrupted: Callable[[], bool] = lambda: False) -> LiveCosts:
    """This machine's verification curve up to `max_rows` rows, draft step and draft catch-up
    per token, roughly (a few repeats after a warm-up on `tokens`, cycled as needed). Leaves
    both caches empty."""
    say = progress or (lambda _msg: None)
    # A small context holds neither 64 cached tokens nor a 65-row batch: probe within it
    # (the live estimates extend the curve along its last slope).
    sizes = probe_sizes(max(2, min(max_rows, target.n_batch, target.n_ctx // 2)))
    depth = min(PROBE_DEPTH, target.n_ctx - max(sizes[-1], CATCHUP) - 1)
    need = depth + max(sizes[-1], CATCHUP)
    ids = [tokens[i % len(tokens)] for i in range(need)]
    say("timing the target's verification")
    verify = decode_times(target, ids, depth, sizes, Outputs.ALL, 2, 1, interrupted)
    target.clear()
    step = catchup = 0.0
    if draft is not None:
        say("timing a draft step")
        step, batch = decode_times(draft, ids, depth, [1, CATCHUP], Outputs.LAST, 3, 1,
                                   interrupted)
        catchup = batch / CATCHUP
        scratch = entropy_scratch(n_vocab)
        t0 = perf_counter()
        logits = draft.logits()[:n_vocab]
        int(logits.argmax())
        entropy_and_top_prob(logits, scratch)
        step += perf_counter() - t0
        draft.clear()
    return LiveCosts.from_probe(sizes, verify, step, catchup)
