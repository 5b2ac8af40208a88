"""Measuring this machine's cost model (`svip_local.calibration.costs.CostModel`) for a pair.

Everything is timed on the engine's own contexts with warm-up and medians, interleaved across
batch sizes so that a noisy neighbour spreads over all of them rather than spoiling one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from statistics import median
from time import perf_counter
from typing import TYPE_CHECKING

import numpy as np

from svip_local.calibration.costs import (
    MAX_VERIFY,
    TREE_VERIFY_SIZES,
    CostModel,
    nondecreasing,
)
from svip_local.native import Context, Outputs
from svip_local.policies import entropy_and_top_prob, entropy_scratch
from svip_local.probe import decode_times
from svip_local.sampling import SamplingParams, distribution, sample

if TYPE_CHECKING:
    from svip_local.engine import Engine

def measure_costs(engine: Engine, tokens: Sequence[int], *, repeats: int = 5, warmup: int = 2,
                  max_verify: int = MAX_VERIFY, depth: int = 256,
                  prefill_sizes: Sequence[int] = (64, 256, 1024),
                  progress: Callable[[str], None] | None = None) -> CostModel:
    """Time both contexts of `engine` on real token ids (`tokens`: any text, long enough for
    the deepest measurement; it is cycled otherwise). Leaves both caches empty."""
    assert engine.draft_ctx is not None, "costs of speculation need a draft model"
    say = progress or (lambda _msg: None)
    n_ctx = min(engine.target_ctx.n_ctx, engine.draft_ctx.n_ctx)
    depth = max(1, min(depth, n_ctx // 4))
    sizes = [*range(1, max_verify + 1), *(b for b in TREE_VERIFY_SIZES if b > max_verify)]
    deep = min(depth + 1024, n_ctx - sizes[-1] - 1)
    need = max(deep + sizes[-1], *prefill_sizes)
    ids = [tokens[i % len(tokens)] for i in range(need)]
    prefill_sizes = sorted({min(n, n_ctx - 1) for n in prefill_sizes})

    say("target verification")
    measured = decode_times(engine.target_ctx, ids, depth, sizes, Outputs.ALL, repeats, warmup)
    tgt = list(np.interp(np.arange(1, sizes[-1] + 1), sizes, measured))
    tgt_deep = decode_times(engine.target_ctx, ids, deep, [1], Outputs.ALL, repeats, warmup)
    say("draft decode")
    dft = decode_times(engine.draft_ctx, ids, depth, range(1, 5), Outputs.LAST, repeats,
                        warmup)
    dft_deep = decode_times(engine.draft_ctx, ids, deep, [1], Outputs.LAST, repeats, warmup)
    # A bigger batch never costs less: noise that says otherwise would mislead the policies.
    tgt, dft = nondecreasing(tgt), nondecreasing(dft)
    t_slope = max(0.0, (tgt_deep[0] - tgt[0]) / (deep - depth))
    d_slope = max(0.0, (dft_deep[0] - dft[0]) / (deep - depth))
    say("prefill")
    t_curve = _prefill_curve(engine.target_ctx, ids, prefill_sizes, Outputs.NONE,
                             max(1, repeats // 2))
    d_curve = _prefill_curve(engine.draft_ctx, ids, prefill_sizes, Outputs.LAST,
                             max(1, repeats // 2))
    say("per-step work")
    argmax_s, entropy_s, sample_s = _step_times(engine, ids)
    engine.reset()
    return CostModel(tuple(tgt), tuple(dft), argmax_s, entropy_s, t_curve, d_curve, t_slope,
                     d_slope, depth, sample_s=sample_s)


def _prefill_curve(ctx: Context, ids: Sequence[int], sizes: Sequence[int], outputs: Outputs,
                   repeats: int) -> tuple[float, float, float]:
    """Least-squares a + b*n + c*n² (all >= 0) through prefill times at `sizes`."""
    xs, ys = [], []
    for n in sizes:
        times = []
        for _ in range(repeats + 1):  # the first one is the warm-up
            ctx.clear()
            t0 = perf_counter()
            ctx.decode(ids[:n], outputs)
            ctx.synchronize()
            times.append(perf_counter() - t0)
        xs.append(n)
        ys.append(median(times[1:]))
    ctx.clear()
    x, y = np.array(xs, float), np.array(ys)
    # a + b*n + c*n², else a + b*n: the first fit whose coefficients are all >= 0.
    for powers in ((0, 1, 2), (0, 1)):
        if len(x) >= len(powers):
            sol, *_ = np.linalg.lstsq(np.stack([x ** p for p in powers], axis=1), y, rcond=None)
            if sol.min() >= 0:
                coef = [0.0, 0.0, 0.0]
                for p, v in zip(powers, sol, strict=True):
                    coef[p] = float(v)
                return coef[0], coef[1], coef[2]
    return 0.0, max(0.0, float(y.sum() / x.sum())), 0.0


def _step_times(engine: Engine, ids: Sequence[int], n: int = 50
                ) -> tuple[float, float, float]:
    """Median argmax, entropy and sampling (distribution at temperature 1, then a draw) times
    on a real draft logits row (vocabulary-sized)."""
    ctx = engine.draft_ctx
    assert ctx is not None
    ctx.clear()
    ctx.decode(ids[:8], Outputs.LAST)
    logits = ctx.logits()[: engine.n_vocab]
    scratch = entropy_scratch(engine.n_vocab)

    def timed(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(n):
            t0 = perf_counter()
            fn()
            times.append(perf_counter() - t0)
        return median(times[5:])

    argmax_s = timed(lambda: int(logits.argmax()))
    entropy_s = timed(lambda: entropy_and_top_prob(logits, scratch))
    rng, params = np.random.default_rng(0), SamplingParams(temperature=1.0)
    sample_s = timed(lambda: sample(distribution(logits, params), rng))
    ctx.clear()
    return argmax_s, entropy_s, sample_s


def fit_overhead(residuals: Sequence[tuple[float, int, int, int]]) -> tuple[float, float, float]:
    """(round_s, token_s, step_s) from timed runs' unexplained seconds.

    Each row: (seconds the component model does not explain, rounds, emitted tokens, draft
    steps). Non-negative least squares by trying every subset of the three terms (the best
    subset whose solution is all positive): runs that cannot tell two terms apart (target-alone
    runs emit one token per round and take no draft step) leave the others at zero.
    """
    if not residuals:
        return 0.0, 0.0, 0.0
    y = np.array([r[0] for r in residuals], dtype=float)
    a = np.array([r[1:] for r in residuals], dtype=float)
    best, best_err = np.zeros(3), float(np.sum(y ** 2))
    for mask in range(1, 8):
        cols = [c for c in range(3) if mask >> c & 1]
        sub = a[:, cols]
        if np.linalg.matrix_rank(sub) < len(cols):
            continue
        sol, *_ = np.linalg.lstsq(sub, y, rcond=None)
        if sol.min() < 0:
            continue
        err = float(np.sum((sub @ sol - y) ** 2))
        if err < best_err - 1e-15:
            best, best_err = np.zeros(3), err
            best[cols] = sol
    return float(best[0]), float(best[1]), float(best[2])
