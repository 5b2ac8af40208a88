"""The learned acceptance head (SpecDec++, arXiv 2405.19715): from the draft's last hidden
state at a draft step, the chance the target accepts the token drafted there, and the chance
it accepts the next one too.

SVIP reads acceptance off the draft's entropy alone; the hidden state carries what the entropy
averages away (which kind of token this is, where in a phrase the draft stands). SpecDec++
trains such a head offline on a GPU cluster for one pair; here `train` fits one per pair and
temperature on the calibration traces, in numpy, in seconds.

Shape: SpecDec++'s residual network (`Linear`, `blocks` residual blocks `x + SiLU(Linear(x))`,
`Linear(width, 2)`: logits of "this token accepted" and "the next one accepted too"), reading
the hidden state's first principal directions on the training examples and six entropy
features, on top of a linear path over the same inputs (a logistic fit). Both are needed on a
CPU with a dozen calibration prompts: the full 896-wide state overfits them within an epoch,
and the network alone, from a random start, predicted worse than the entropy map it should
beat (held-out log-loss 0.39 against 0.26 greedy on the reference pair). The loss is the
soft-label cross-entropy of both outputs (labels: greedily whether the draft's argmax is the
target's token; sampled, the chance rejection sampling accepts there, sum min(p, q)), without
SpecDec++'s class weights [6, 1]: those bias the probabilities, and the cost-aware rule needs
them calibrated (a threshold absorbs the bias anyway). The projection and standardization are
folded into the input layer, so a draft step costs one (d x (width + 2)) product and a few
small ones.

The depth in the round is not an input: every position of a trace is drafted on the true
prefix, so a token's chance given its state does not depend on where its round began.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

HEAD_FORMAT = 1
WIDTH = 64
BLOCKS = 2
N_SCALARS = 6  # entropy, its root and square; top-1 probability p, log p, log(1 - p)

Array = npt.NDArray[Any]  # float32 weights and activations


def scalar_features(entropy: npt.ArrayLike, top_prob: npt.ArrayLike) -> Array:
    """The entropy features beside the hidden state, one row per position."""
    h = np.maximum(np.asarray(entropy, np.float64), 0.0)
    p = np.clip(np.asarray(top_prob, np.float64), 1e-6, 1.0 - 1e-6)
    return np.stack([h, np.sqrt(h), h * h, p, np.log(p), np.log1p(-p)],
                    axis=-1).astype(np.float32)


def _sigmoid(x: Array) -> Array:
    out: Array = 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|
    return out


def _silu(x: Array) -> Array:
    out: Array = x * _sigmoid(x)
    return out


@dataclass
class AcceptanceHead:
    """A trained head for one pair at one sampling temperature, on raw inputs (the
    projection and standardization are folded into the input layer). The input layer's last
    two columns are the linear path: a logistic fit on the hidden state's principal
    directions and the entropy features, to which the network adds its correction.
    `metrics` is what training measured."""

    temperature: float
    w_hidden: Array  # (d, width + 2)
    w_scalar: Array  # (N_SCALARS, width + 2)
    b_in: Array  # (width + 2,)
    blocks: list[tuple[Array, Array]]  # each (width, width), (width,)
    w_out: Array  # (width, 2)
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._width = width = int(self.w_out.shape[0])
        # Buffers every `predict` reuses: the features, the input layer's output (the
        # network's activations, then the linear path's two logits), a block's
        # pre-activation and its gate, the logits.
        self._scalars = np.empty(N_SCALARS, np.float32)
        self._y = np.empty(width + 2, np.float32)
        self._y2 = np.empty(width + 2, np.float32)
        self._u = np.empty(width, np.float32)
        self._gate = np.empty(width, np.float32)
        self._z = np.empty(2, np.float32)

    @property
    def n_embd(self) -> int:
        return int(self.w_hidden.shape[0])

    def predict(self, hidden: npt.NDArray[np.floating[Any]], entropy: float,
                top_prob: float) -> tuple[float, float]:
        """(P(this draft token accepted), P(the next one accepted too | this one is)), for
        one draft step: one (d x width) product and a few small ones, nothing
        vocabulary-sized."""
        s, y, u, gate, z = self._scalars, self._y, self._u, self._gate, self._z
        h = max(entropy, 0.0)
        p = min(max(top_prob, 1e-6), 1.0 - 1e-6)
        s[:] = (h, math.sqrt(h), h * h, p, math.log(p), math.log1p(-p))
        np.matmul(hidden, self.w_hidden, out=y)
        y += np.matmul(s, self.w_scalar, out=self._y2)
        y += self.b_in
        x = y[:self._width]
        for w, b in self.blocks:
            np.matmul(x, w, out=u)
            u += b
            np.multiply(u, 0.5, out=gate)  # silu(u) = u * (1 + tanh(u / 2)) / 2
            np.tanh(gate, out=gate)
            gate += 1.0
            gate *= u
            gate *= 0.5
            x += gate
        np.matmul(x, self.w_out, out=z)
        z += y[self._width:]
        return 1.0 / (1.0 + math.exp(-float(z[0]))), 1.0 / (1.0 + math.exp(-float(z[1])))

    def predict_batch(self, hidden: npt.NDArray[np.floating[Any]], entropy: npt.ArrayLike,
                      top_prob: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """`predict` for many positions at once: shape (n, 2)."""
        y = hidden.astype(np.float32) @ self.w_hidden
        y += scalar_features(entropy, top_prob) @ self.w_scalar + self.b_in
        x = y[:, :self._width]
        for w, b in self.blocks:
            x += _silu(x @ w + b)
        return _sigmoid((x @ self.w_out + y[:, self._width:]).astype(np.float64))

    # -- storage ---------------------------------------------------------------------------

    def arrays(self, prefix: str) -> dict[str, Array]:
        out = {f"{prefix}w_hidden": self.w_hidden, f"{prefix}w_scalar": self.w_scalar,
               f"{prefix}b_in": self.b_in, f"{prefix}w_out": self.w_out}
        for i, (w, b) in enumerate(self.blocks):
            out[f"{prefix}block{i}_w"], out[f"{prefix}block{i}_b"] = w, b
        return out

    @classmethod
    def from_arrays(cls, data: Any, prefix: str, temperature: float, n_blocks: int,
                    metrics: dict[str, Any]) -> AcceptanceHead:
        def get(name: str) -> Array:
            return np.asarray(data[f"{prefix}{name}"], np.float32)

        return cls(temperature, get("w_hidden"), get("w_scalar"), get("b_in"),
                   [(get(f"block{i}_w"), get(f"block{i}_b")) for i in range(n_blocks)],
                   get("w_out"), metrics)


def dump_heads(heads: Sequence[AcceptanceHead], identity: dict[str, Any]) -> bytes:
    """Heads for one pair as one .npz, with `identity` (the pair's files) and the format."""
    meta = {"format": HEAD_FORMAT, "identity": identity,
            "heads": [{"temperature": h.temperature, "blocks": len(h.blocks),
                       "metrics": h.metrics} for h in heads]}
    arrays: dict[str, Any] = {"meta": np.array(json.dumps(meta))}
    for i, h in enumerate(heads):
        arrays |= h.arrays(f"h{i}_")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


class HeadMismatch(ValueError):
    """A stored head made for other files, or in another format."""


def load_heads(raw: bytes, identity: dict[str, Any]) -> list[AcceptanceHead]:
    """The heads in `raw` (from `dump_heads`); HeadMismatch when they were trained for other
    files than `identity`, or stored in another format."""
    with np.load(io.BytesIO(raw)) as data:
        meta = json.loads(str(data["meta"]))
        if meta.get("format") != HEAD_FORMAT:
            raise HeadMismatch(f"acceptance head format {meta.get('format')!r}, expected "
                               f"{HEAD_FORMAT}")
        if meta.get("identity") != identity:
            raise HeadMismatch(f"the acceptance head was trained for {meta.get('identity')}, "
                               f"not {identity}")
        return [AcceptanceHead.from_arrays(data, f"h{i}_", float(m["temperature"]),
                                           int(m["blocks"]), m.get("metrics", {}))
                for i, m in enumerate(meta["heads"])]


# -- training ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Examples:
    """Training rows: inputs, and per output (this token, the next one) a soft label and a
    weight (the next-token output only counts where this token was accepted)."""

    hidden: npt.NDArray[np.floating[Any]]  # (n, d)
    scalars: Array  # (n, N_SCALARS)
    labels: npt.NDArray[np.float64]  # (n, 2)
    weights: npt.NDArray[np.float64]  # (n, 2)

    @classmethod
    def of_runs(cls, runs: Sequence[tuple[npt.NDArray[Any], npt.NDArray[Any],
                                          npt.NDArray[Any], npt.NDArray[Any]]]) -> Examples:
        """From per-prompt (hidden, entropy, top_prob, acceptance) along a trace's path."""
        hidden = np.concatenate([r[0] for r in runs])
        scalars = scalar_features(np.concatenate([r[1] for r in runs]),
                                  np.concatenate([r[2] for r in runs]))
        acc = [np.asarray(r[3], np.float64) for r in runs]
        now = np.concatenate(acc)
        nxt = np.concatenate([np.append(a[1:], 0.0) for a in acc])
        w_next = np.concatenate([np.append(a[:-1], 0.0) for a in acc])
        return cls(hidden, scalars, np.stack([now, nxt], 1),
                   np.stack([np.ones_like(now), w_next], 1))

    def __len__(self) -> int:
        return len(self.labels)


def log_loss(p: npt.ArrayLike, y: npt.ArrayLike, w: npt.ArrayLike | None = None) -> float:
    """Mean (weighted) cross-entropy of predicted chances `p` against soft labels `y`."""
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(y, np.float64)
    w = np.ones_like(y) if w is None else np.asarray(w, np.float64)
    return float(-(w * (y * np.log(p) + (1 - y) * np.log1p(-p))).sum() / w.sum())


@dataclass(frozen=True)
class TrainSettings:
    width: int = WIDTH
    blocks: int = BLOCKS
    learning_rate: float = 5e-4
    weight_decay: float = 1e-3
    batch: int = 128
    max_epochs: int = 200
    patience: int = 15
    linear_steps: int = 2000  # full-batch steps of the linear path's logistic fit
    linear_l2: float = 1e-3
    # Principal directions of the hidden state read. On the reference pair's calibration
    # traces (12 prompts, held out by folds) 8 did best greedily and within 0.003 of the
    # best (32) sampled; more overfit a dozen prompts.
    components: int = 8
    seed: int = 0


class _Adam:
    """Adam over a list of arrays, with decoupled weight decay on the matrices."""

    def __init__(self, params: list[Array], learning_rate: float, weight_decay: float) -> None:
        self.params, self.lr, self.decay = params, learning_rate, weight_decay
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads: Sequence[Array], which: Sequence[int]) -> None:
        self.t += 1
        lr = self.lr * math.sqrt(1 - 0.999 ** self.t) / (1 - 0.9 ** self.t)
        for i in which:
            g = grads[i]
            self.m[i] = 0.9 * self.m[i] + 0.1 * g
            self.v[i] = 0.999 * self.v[i] + 0.001 * g * g
            if self.params[i].ndim == 2:
                self.params[i] *= 1 - self.lr * self.decay
            self.params[i] -= lr * self.m[i] / (np.sqrt(self.v[i]) + 1e-8)


def train(examples: Examples, valid: Examples, temperature: float,
          settings: TrainSettings = TrainSettings()) -> AcceptanceHead:
    """Fit a head on `examples`, stopping early where the cross-entropy on `valid` (other
    prompts) stops improving, and keeping the best epoch's weights.

    The hidden state enters through its principal directions on these examples (a few
    thousand examples pin down a few dozen directions, not 896). First the linear path
    alone: an L2-regularised logistic fit on those and the entropy features. Then the
    network learns what that misses, from a zero output layer, so it starts exactly at the
    logistic fit and early stopping keeps it only where the held-back prompts say it helps
    (on a dozen calibration prompts it mostly does not: the linear path carries the head)."""
    rng = np.random.default_rng(settings.seed)
    hidden = examples.hidden.astype(np.float32)
    centre = hidden.mean(0)
    proj = np.linalg.svd(hidden - centre, full_matrices=False)[2][:settings.components].T
    x = np.concatenate([(hidden - centre) @ proj, examples.scalars], 1)
    xv = np.concatenate([(valid.hidden.astype(np.float32) - centre) @ proj, valid.scalars], 1)
    mean = x.mean(0)
    scale = x.std(0) + 1e-3
    x = (x - mean) / scale
    xv = (xv - mean) / scale
    n_in, w_ = x.shape[1], settings.width
    base = np.clip((examples.labels * examples.weights).sum(0) / examples.weights.sum(0),
                   0.02, 0.98)
    params: list[Array] = [
        (rng.standard_normal((n_in, w_)) / math.sqrt(n_in)).astype(np.float32),
        np.zeros(w_, np.float32)]
    for _ in range(settings.blocks):
        params += [(rng.standard_normal((w_, w_)) * 0.5 / math.sqrt(w_)).astype(np.float32),
                   np.zeros(w_, np.float32)]
    params += [np.zeros((w_, 2), np.float32), np.log(base / (1 - base)).astype(np.float32),
               np.zeros((n_in, 2), np.float32)]
    y, wt = examples.labels.astype(np.float32), examples.weights.astype(np.float32)
    n_blocks = settings.blocks
    _fit_linear(params, x, y, wt, settings)

    def valid_loss() -> float:
        probs = _sigmoid(_forward(params, xv, n_blocks)[0].astype(np.float64))
        return log_loss(probs[:, 0], valid.labels[:, 0], valid.weights[:, 0])

    adam = _Adam(params, settings.learning_rate, settings.weight_decay)
    network = range(len(params) - 2)  # the linear path stays as fitted
    best, best_params, stale = valid_loss(), [p.copy() for p in params], 0
    for _epoch in range(settings.max_epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), settings.batch):
            idx = order[start:start + settings.batch]
            adam.step(_gradients(params, x[idx], y[idx], wt[idx], n_blocks), network)
        loss = valid_loss()
        if loss < best - 1e-5:
            best, best_params, stale = loss, [p.copy() for p in params], 0
        else:
            stale += 1
            if stale >= settings.patience:
                break
    # The projection is linear: fold it (and the centring) into the input layer.
    k = proj.shape[1]
    mean = np.concatenate([centre @ proj + mean[:k], mean[k:]])
    head = _folded(best_params, mean, scale, proj, temperature, n_blocks)
    head.metrics = {"valid_log_loss": best, "examples": len(examples),
                    "valid_examples": len(valid)}
    return head


def _fit_linear(params: list[Array], x: Array, y: Array, w: Array,
                settings: TrainSettings) -> None:
    """The linear path (params[-1], with the output bias params[-2]) by full-batch Adam on
    the weighted cross-entropy plus L2: the network's output layer is still zero."""
    weights, bias = params[-1], params[-2]
    m = [np.zeros_like(weights), np.zeros_like(bias)]
    v = [np.zeros_like(weights), np.zeros_like(bias)]
    norm = np.maximum(w.sum(0), 1e-6)
    for t in range(1, settings.linear_steps + 1):
        dz = w * (_sigmoid(x @ weights + bias) - y) / norm
        grads = (x.T @ dz + settings.linear_l2 * weights, dz.sum(0))
        lr = 0.05 * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
        for i, (p, g) in enumerate(zip((weights, bias), grads, strict=True)):
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            p -= lr * m[i] / (np.sqrt(v[i]) + 1e-8)


def _forward(params: Sequence[Array], x: Array, n_blocks: int
             ) -> tuple[Array, list[Array]]:
    """Logits (n, 2) and what the backward pass needs: each block's input and pre-activation.
    params: W_in, b_in, (W, b) per block, W_out, b_out, W_linear (the linear path)."""
    a = x @ params[0] + params[1]
    saved = [a]
    for k in range(n_blocks):
        u = a @ params[2 + 2 * k] + params[3 + 2 * k]
        saved.append(u)
        a = a + _silu(u)
        saved.append(a)
    return a @ params[-3] + params[-2] + x @ params[-1], saved


def _gradients(params: Sequence[Array], x: Array, y: Array, w: Array, n_blocks: int
               ) -> list[Array]:
    logits, saved = _forward(params, x, n_blocks)
    # d(mean weighted BCE)/d logit = w (sigmoid - y) / sum(w), per output.
    dz = w * (_sigmoid(logits) - y) / np.maximum(w.sum(0), 1e-6)
    grads: list[Array] = [np.empty(0, np.float32)] * len(params)
    grads[-1] = x.T @ dz
    grads[-3] = saved[-1].T @ dz
    grads[-2] = dz.sum(0)
    da = dz @ params[-3].T
    for k in range(n_blocks - 1, -1, -1):
        a_in, u = saved[2 * k], saved[2 * k + 1]
        s = _sigmoid(u)
        du = da * (s * (1 + u * (1 - s)))
        grads[2 + 2 * k] = a_in.T @ du
        grads[3 + 2 * k] = du.sum(0)
        da = da + du @ params[2 + 2 * k].T
    grads[0] = x.T @ da
    grads[1] = da.sum(0)
    return grads


def _folded(params: Sequence[Array], mean: Array, scale: Array, proj: Array,
            temperature: float, n_blocks: int) -> AcceptanceHead:
    """The head on raw inputs. The network and the linear path saw z = ((h @ proj, s) -
    mean) / scale, so their input layer z @ W + b, with W = [W_in, W_linear] and b = [b_in,
    b_out], is h @ (proj @ W_h / scale_h) + s @ (W_s / scale_s) + (b - (mean / scale) @ W)."""
    k = proj.shape[1]
    w = np.concatenate([params[0], params[-1]], 1)
    b = np.concatenate([params[1], params[-2]])
    w_scaled = w / scale[:, None]
    b_in = b - (mean / scale) @ w
    blocks = [(params[2 + 2 * i], params[3 + 2 * i]) for i in range(n_blocks)]
    return AcceptanceHead(temperature, np.ascontiguousarray(proj @ w_scaled[:k], np.float32),
                          np.ascontiguousarray(w_scaled[k:], np.float32),
                          b_in.astype(np.float32), blocks, params[-3])
