"""What each step of the speculative loop costs on this machine, for this pair.

The simulator needs: a target verification of b tokens (all logits), a draft decode of n tokens
(last logits), the per-step Python work (argmax, entropy), prefill, how decode cost grows with
the context, and the fixed per-round and per-token work of the loop itself. Everything is
timed with warm-up and medians, interleaved across batch sizes so that a noisy neighbour
spreads over all of them rather than spoiling one.
"""

from __future__ import annotations

import functools
import platform
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from statistics import median
from time import perf_counter
from typing import TYPE_CHECKING, Any

import numpy as np

from svip_local import native
from svip_local.native import Context, Outputs
from svip_local.policies import entropy_and_top_prob
from svip_local.sampling import SamplingParams, distribution, sample

if TYPE_CHECKING:
    from svip_local.engine import Engine

MAX_VERIFY = 17  # 1 + the default max draft of 16


@dataclass(frozen=True)
class CostModel:
    """Seconds per operation. Tables are measured at context depth `base_depth`; a decode at
    another depth adds `*_depth_s` per batch row per token of context (attention work)."""

    verify_s: tuple[float, ...]  # target decode of b = 1, 2, ... tokens, all logits
    draft_s: tuple[float, ...]  # draft decode of n = 1, 2, ... tokens, last logits
    argmax_s: float  # one argmax over the vocabulary (a draft step, a verified row)
    entropy_s: float  # entropy + top-1 probability of one draft step
    target_prefill_s: tuple[float, float, float]  # (a, b, c): a + b*n + c*n² for n tokens
    draft_prefill_s: tuple[float, float, float]
    target_depth_s: float
    draft_depth_s: float
    base_depth: int
    round_s: float = 0.0  # the loop's own work per round,
    token_s: float = 0.0  # per emitted token (events, detokenizing)
    step_s: float = 0.0  # and per draft step (logits view, policy), beyond argmax and entropy
    # A sampled step or row replaces the argmax by a distribution and a draw (0: not measured).
    sample_s: float = 0.0

    def verify(self, b: int, depth: int) -> float:
        return _table(self.verify_s, b) + self._depth(self.target_depth_s, b, depth)

    def draft(self, n: int, depth: int) -> float:
        """n draft tokens in one decode on top of `depth` cached tokens: the table for the
        usual 1-2 token catch-up, the prefill line for a prompt."""
        if n <= len(self.draft_s):
            return _table(self.draft_s, n) + self._depth(self.draft_depth_s, n, depth)
        return _prefill(self.draft_prefill_s, n, depth)

    def target_prefill(self, n: int) -> float:
        return _prefill(self.target_prefill_s, n, 0) if n > 0 else 0.0

    def _depth(self, slope: float, rows: int, depth: int) -> float:
        return slope * rows * (depth - self.base_depth)

    def with_overhead(self, round_s: float, token_s: float, step_s: float) -> CostModel:
        return replace(self, round_s=round_s, token_s=token_s, step_s=step_s)

    def at_temperature(self, temperature: float) -> CostModel:
        """The costs of a generation at `temperature`: each token read from logits is a
        distribution and a draw instead of an argmax when sampling."""
        if temperature <= 0 or self.sample_s <= 0:
            return self
        return replace(self, argmax_s=self.sample_s)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CostModel:
        fields = dict(data)
        for key in ("verify_s", "draft_s", "target_prefill_s", "draft_prefill_s"):
            fields[key] = tuple(float(x) for x in fields[key])
        if len(fields["target_prefill_s"]) != 3 or len(fields["draft_prefill_s"]) != 3 \
                or len(fields["verify_s"]) < 2 or not fields["draft_s"]:
            raise ValueError("cost model tables have the wrong shape")
        return cls(**fields)


def _table(values: Sequence[float], n: int) -> float:
    """values[n-1], extended past the table along its last slope."""
    if n <= len(values):
        return values[n - 1]
    slope = values[-1] - values[-2] if len(values) > 1 else values[-1]
    return values[-1] + slope * (n - len(values))


def _prefill(curve: Sequence[float], n: int, depth: int) -> float:
    # c*n² is the batch's attention over itself; on top of `depth` cached tokens each of the
    # n rows also attends to those: c*((n + depth)² - depth²) in all.
    a, b, c = curve
    return a + b * n + c * (n * n + 2 * n * depth)


# -- identity of the machine and the pair ------------------------------------------------------

@dataclass(frozen=True)
class Fingerprint:
    """What decides the costs: calibrations are stored per fingerprint."""

    cpu: str
    gpu: str
    n_gpu_layers: str  # "target/draft"; 0/0 on a build without offload
    threads: int


@dataclass(frozen=True)
class PairIdentity:
    """A pair's files by name and size: cheap, and a re-encoded target (F16) differs."""

    target: str
    target_size: int
    draft: str
    draft_size: int

    @classmethod
    def of(cls, target: str | Path, draft: str | Path) -> PairIdentity:
        t, d = Path(target), Path(draft)
        return cls(t.name, t.stat().st_size, d.name, d.stat().st_size)


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


@functools.cache
def gpu_name() -> str:
    """The first GPU's name when this llama.cpp build can offload, else "cpu"."""
    if not native.supports_gpu_offload():
        return "cpu"
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=True)
            if out.stdout.strip():
                return out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return "gpu"


def fingerprint(engine: Engine) -> Fingerprint:
    cfg = engine.config
    gpu = gpu_name()
    if gpu == "cpu":
        layers = "0/0"
    else:
        draft = cfg.n_gpu_layers if cfg.draft_n_gpu_layers is None else cfg.draft_n_gpu_layers
        layers = f"{cfg.n_gpu_layers}/{draft}"
    return Fingerprint(cpu_model(), gpu, layers, cfg.n_threads or native.default_threads())


# -- measurement ------------------------------------------------------------------------------

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
    deep = min(depth + 1024, n_ctx - max_verify - 1)
    need = max(deep + max_verify, *prefill_sizes)
    ids = [tokens[i % len(tokens)] for i in range(need)]
    prefill_sizes = sorted({min(n, n_ctx - 1) for n in prefill_sizes})

    say("target verification")
    tgt = _decode_times(engine.target_ctx, ids, depth, range(1, max_verify + 1), Outputs.ALL,
                        repeats, warmup)
    tgt_deep = _decode_times(engine.target_ctx, ids, deep, [1], Outputs.ALL, repeats, warmup)
    say("draft decode")
    dft = _decode_times(engine.draft_ctx, ids, depth, range(1, 5), Outputs.LAST, repeats,
                        warmup)
    dft_deep = _decode_times(engine.draft_ctx, ids, deep, [1], Outputs.LAST, repeats, warmup)
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


def _decode_times(ctx: Context, ids: Sequence[int], depth: int, sizes: Sequence[int] | range,
                  outputs: Outputs, repeats: int, warmup: int) -> list[float]:
    """Median time of decoding `b` tokens on top of `depth` cached ones, for each b."""
    ctx.clear()
    ctx.decode(ids[:depth], Outputs.NONE)
    samples: dict[int, list[float]] = {b: [] for b in sizes}
    for r in range(warmup + repeats):
        for b in sizes:
            batch = ids[depth:depth + b]
            t0 = perf_counter()
            ctx.decode(batch, outputs)
            dt = perf_counter() - t0
            ctx.truncate(depth)
            if r >= warmup:
                samples[b].append(dt)
    return [median(samples[b]) for b in sizes]


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
    scratch = np.empty(engine.n_vocab, dtype=np.float32)

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


def nondecreasing(values: Sequence[float], weights: Sequence[float] | None = None
                  ) -> list[float]:
    """Weighted least-squares non-decreasing fit (pool adjacent violators): a noise spike is
    averaged with its neighbours instead of raising everything after it."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for v, w in zip(values, weights or [1.0] * len(values), strict=True):
        blocks.append([v, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, c2 = blocks.pop()
            v1, w1, c1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    return [b[0] for b in blocks for _ in range(int(b[2]))]


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
