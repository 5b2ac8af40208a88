"""Replay a trace under a draft-length policy and a cost model: predicted time per prompt.

`replay_round` runs the engine's round (`svip_local.round`) on a trace through its own backend,
and `simulate` repeats it as `Engine.generate` does (a test runs the two side by side).
`oracle` is the best any draft-length policy could do with this pair on this machine: knowing
which tokens will be accepted, it chooses each round's length (none at all included) to
minimise the total time. Sampled traces
are replayed through realisations (`realise_all`), the same draws for every policy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from svip_local.bench.traces import PromptTrace, copy_walk
from svip_local.calibration import CostModel
from svip_local.config import DEFAULT_MAX_COPY, DEFAULT_MAX_DRAFT
from svip_local.policies import DraftPolicy, Plan, Strategy, as_plan
from svip_local.round import DraftStep, Steps, drive, leading_chain, speculative_round
from svip_local.round_result import RoundResult
from svip_local.sampling import SamplingParams
from svip_local.transcript import Transcript
from svip_local.tree import TokenTree

if TYPE_CHECKING:
    from svip_local.grammar import GrammarState

_MAX_LAG = 64  # the oracle's draft lags beyond this are costed as this (an optimistic bound)
SAMPLED_DRAWS = 8  # realisations a sampled trace is replayed on


@dataclass
class SimResult:
    """Predicted outcome of one prompt: times in seconds, prefill included in `time_s`."""

    generated: int
    time_s: float
    prefill_s: float
    draft_lengths: list[int] = field(default_factory=list)
    accepted_lengths: list[int] = field(default_factory=list)
    node_counts: list[int] = field(default_factory=list)  # tokens verified per round

    @property
    def rounds(self) -> int:
        return len(self.draft_lengths)

    @property
    def drafted(self) -> int:
        return sum(self.draft_lengths)

    @property
    def accepted(self) -> int:
        return sum(self.accepted_lengths)

    @property
    def tokens_per_second(self) -> float:
        return self.generated / self.time_s if self.time_s > 0 else 0.0


def run_length(match: np.ndarray) -> np.ndarray:
    """runs[i] = how many consecutive positions from i the draft's argmax equals the target."""
    runs = np.zeros(len(match) + 1, dtype=np.int64)
    for i in range(len(match) - 1, -1, -1):
        runs[i] = runs[i + 1] + 1 if match[i] else 0
    return runs[:-1]


@dataclass
class ReplayState:
    """Where a replay stands: `j` tokens of the trace's path are emitted, `seq_len` tokens
    precede the round, and the draft's cache holds a valid prefix of `draft_ok` tokens."""

    j: int
    seq_len: int
    draft_ok: int = 0


def replay_round(trace: PromptTrace, transcript: Transcript | None, state: ReplayState,
                 room: int, strategy: Strategy, costs: CostModel,
                 remaining: int) -> RoundResult:
    """The engine's round (`svip_local.round.speculative_round`) on a trace, with predicted
    times. Copies are exact (they depend only on the true prefix); draft tokens are the
    trace's true-prefix guesses; the verification walks the trace's path. A realised sampled
    trace holds outcomes, not the chances a live round reports, so a replayed `auto` learns
    from those (the same mean, more noise). `transcript` shows the trace's prompt and path up
    to this round (None: a trace without its prompt, which copies nothing)."""
    if transcript is not None:
        transcript.length = transcript.side + state.seq_len
    return drive(speculative_round(TraceBackend(trace, state, costs), (), transcript, room,
                                   strategy, _REPLAY, _RNG, remaining))


_TREE = TokenTree()  # the replay's round tree, reused as the engine's is
_STEP = DraftStep()
_REPLAY = SamplingParams()  # a trace's path is walked, never drawn
_RNG = np.random.default_rng(0)


class TraceBackend:
    """The round's backend on a trace: its draft guesses and statistics, its target path as
    the verification, the cost model's times on a simulated clock; `state.draft_ok`
    follows what the draft's cache would hold."""

    has_draft = True
    batch_rows = shared_rows = shared_with = 0  # a replay runs alone

    def __init__(self, trace: PromptTrace, state: ReplayState, costs: CostModel) -> None:
        self.trace, self.state, self.costs = trace, state, costs
        self.tree = _TREE
        self.now = 0.0
        self.drafted = False
        self.decoded = 0  # draft decodes after the catch-up (the last proposal is never one)

    def clock(self) -> float:
        return self.now

    def cells_left(self) -> int:
        return 1 << 30  # a trace's context never fills

    def catch_up(self, seq: Sequence[int], wants_hidden: bool) -> Steps[tuple[int, float]]:
        """What the draft has not seen: the last accepted token; two after an all-accepted
        round; the whole prompt first. (A trace has no batch to wait for: nothing yields.)"""
        yield from ()
        st = self.state
        keep = min(st.draft_ok, st.seq_len - 1)
        seconds = self.costs.draft(st.seq_len - keep, keep)
        self.now += seconds
        self.drafted = True
        return st.seq_len - keep, seconds

    def read_step(self, n: int, sampling: SamplingParams, rng: np.random.Generator,
                  stats: bool, candidates: bool, hidden: bool,
                  grammar: GrammarState | None = None) -> DraftStep:
        trace, j, costs, step = self.trace, self.state.j, self.costs, _STEP
        n_pos = len(trace.target)
        pos = min(j + n - 1, n_pos - 1)  # past the end: the last known statistics
        self.now += costs.step_s + costs.argmax_s + (costs.entropy_s if stats else 0.0)
        step.token = int(trace.draft[j + n - 1]) if j + n - 1 < n_pos else -1
        step.entropy, step.top_prob = float(trace.entropy[pos]), float(trace.top_prob[pos])
        step.hidden = hidden_at(trace, pos) if hidden else None
        step.candidates = trace.candidates(pos) if candidates else None
        step.eog = bool(trace.draft_eog[pos])
        return step

    def decode_draft(self, token: int) -> Steps[None]:
        yield from ()
        self.now += self.costs.draft(1, self.state.seq_len + self.decoded)
        self.decoded += 1

    def verify(self, seq: Sequence[int], sampling: SamplingParams, rng: np.random.Generator,
               grammar: GrammarState | None = None
               ) -> Steps[tuple[list[int], int, tuple[float, ...]]]:
        """The deepest path along the trace, rows read: the path's and the one after it.
        (A trace holds the tokens each model chose; a replay runs without a grammar.)"""
        yield from ()
        trace, st, tree = self.trace, self.state, self.tree
        path = _walk(tree, trace.target[st.j:])
        accepted = len(path)
        self.now += (self.costs.verify(len(tree) + 1, st.seq_len - 1)
                     + self.costs.argmax_s * (accepted + 1))
        if self.drafted:  # the draft caught up this round, whatever it kept
            st.draft_ok = st.seq_len + min(self.decoded, leading_chain(path, self.decoded + 1))
        nxt = int(trace.target[st.j + accepted]) if st.j + accepted < len(trace.target) else -1
        return path, nxt, ()


def hidden_at(trace: PromptTrace, pos: int) -> npt.NDArray[np.float16]:
    """The draft's hidden state at `pos`, for a policy that reads it."""
    if not len(trace.hidden):
        raise ValueError(f"a policy that reads the draft's hidden states needs them in the "
                         f"trace, and {trace.prompt_id}'s was recorded without: record it "
                         f"again")
    return trace.hidden[pos]


def _walk(tree: TokenTree, ahead: npt.NDArray[np.int32]) -> list[int]:
    """The accepted path of a greedy round whose target goes on as `ahead`."""
    path: list[int] = []
    node = -1
    for t in ahead.tolist():
        node = tree.child_with(node, t)
        if node < 0:
            break
        path.append(node)
    return path


def simulate(trace: PromptTrace, plan: Plan | DraftPolicy, costs: CostModel) -> SimResult:
    """Replay `trace` under `plan` (whose policies keep their state afterwards, like the
    engine's), round by round as `Engine.generate` runs them. Traces without their prompt
    replay no copies."""
    strategy = as_plan(plan).for_sampling(SamplingParams(temperature=trace.temperature))
    costs = costs.at_temperature(trace.temperature)
    n_gen = trace.generated
    end = len(trace.target) if trace.finish == "eos" else n_gen
    transcript = trace.transcript()
    prefill = costs.target_prefill(trace.prompt_tokens - 1)
    res = SimResult(n_gen, prefill, prefill)
    state = ReplayState(0, trace.prompt_tokens)
    while state.j < end:
        remaining = trace.budget - state.j
        result = replay_round(trace, transcript, state, remaining - 1, strategy, costs,
                              remaining)
        emitted = min(state.j + result.accepted + 1, n_gen) - state.j
        res.time_s += result.draft_s + result.verify_s + costs.round_s + costs.token_s * emitted
        res.draft_lengths.append(len(result.proposed))
        res.accepted_lengths.append(result.accepted)
        res.node_counts.append(result.nodes)
        state.j += result.accepted + 1
        state.seq_len += result.accepted + 1
    return res


def oracle(trace: PromptTrace, costs: CostModel, *, max_draft: int = DEFAULT_MAX_DRAFT,
           max_copy: int = DEFAULT_MAX_COPY) -> SimResult:
    """The fastest replay of `trace` by any choice of round, knowing the outcome: the target
    alone, a draft of any length, or a copy of any length from what `auto`'s copier
    proposes there.

    Dynamic programming backwards over positions. A round that drafts k tokens drafts only
    tokens that will be accepted (k <= the agreeing run ahead) and stops without decoding the
    last one, so the next round's draft catches up two tokens; k = 0 skips the draft and the
    lag it must catch up grows by one; a copy of m tokens (m <= the copy's agreeing run)
    leaves the draft m + 1 further behind. States: position j and that lag.
    """
    n_pos, n_gen = len(trace.target), trace.generated
    end = n_pos if trace.finish == "eos" else n_gen
    runs = run_length(trace.match)
    context = trace.context()
    copy_runs = np.zeros(n_pos, np.int64) if context is None or max_copy <= 0 else copy_walk(
        context, trace.prompt_tokens, trace.regions).runs(context, trace.prompt_tokens,
                                                          max_copy)
    costs = costs.at_temperature(trace.temperature)
    p = trace.prompt_tokens
    lags = np.arange(_MAX_LAG + 1)
    # A catch-up of `lag` tokens ending at seq_len costs draft(lag, seq_len - lag), linear in
    # the depth: at0[lag] + per_token[lag] * (seq_len - lag).
    at0 = np.array([costs.draft(int(n), 0) for n in lags[2:]])
    per_token = np.array([costs.draft(int(n), 1) for n in lags[2:]]) - at0
    ahead = max(max_draft, max_copy) + 2
    best = np.zeros((end + ahead, _MAX_LAG + 1))  # best[j, lag]: time to finish
    # Each state's round: k > 0 drafts k, 0 is the target alone, -m copies m.
    take = np.zeros((end + 1, _MAX_LAG + 1), dtype=np.int64)
    first = np.zeros(end + ahead)  # draft cache still empty (lag = p + j)
    first_take = np.zeros(end + 1, dtype=np.int64)

    def round_s(j: int, rows: int) -> float:
        """At position j: one verification of `rows` rows (each read), and the loop's work
        for the round and the `rows` tokens it emits."""
        return costs.verify(rows, p + j - 1) + rows * costs.argmax_s + costs.round_s \
            + costs.token_s * (min(j + rows, n_gen) - j)

    for j in range(end - 1, -1, -1):
        seq_len = p + j
        alone = round_s(j, 1)
        k_best, d_best = 0, math.inf  # the best drafting round, catch-up excluded
        draft_steps = 0.0
        for k in range(1, min(int(runs[j]), max_draft, trace.budget - j - 1) + 1):
            if k > 1:
                draft_steps += costs.draft(1, seq_len + k - 2)
            cost = draft_steps + k * (costs.argmax_s + costs.step_s) + round_s(j, k + 1) \
                + best[min(j + k + 1, end), 2]
            if cost < d_best:
                k_best, d_best = k, cost
        stay = alone + best[j + 1, np.minimum(lags + 1, _MAX_LAG)]
        catch = at0 + per_token * (seq_len - lags[2:])
        go = np.full(_MAX_LAG + 1, math.inf)
        go[2:] = catch + d_best
        options = [(stay, 0), (go, k_best)]
        copy0, m_first = math.inf, 0  # from the first state
        for m in range(1, min(int(copy_runs[j]), trace.budget - j - 1) + 1):
            verify = round_s(j, m + 1)
            nxt = min(j + m + 1, end)
            options.append((verify + best[nxt, np.minimum(lags + m + 1, _MAX_LAG)], -m))
            if verify + first[nxt] < copy0:
                copy0, m_first = verify + first[nxt], m
        stacked = np.stack([o[0] for o in options])
        pick = np.argmin(stacked, axis=0)
        best[j] = stacked[pick, lags]
        take[j] = np.array([o[1] for o in options])[pick]
        first_options = [(alone + first[j + 1], 0),
                         (costs.draft(seq_len, 0) + d_best, k_best), (copy0, -m_first)]
        first[j], first_take[j] = min(first_options, key=lambda o: o[0])
    prefill = costs.target_prefill(p - 1)
    res = SimResult(n_gen, prefill + first[0], prefill)
    j, lag = 0, -1  # -1: the draft has seen nothing yet
    while j < end:
        act = int(first_take[j] if lag < 0 else take[j, lag])
        size = abs(act)
        res.draft_lengths.append(size)
        res.accepted_lengths.append(size)
        res.node_counts.append(size)
        if act > 0:
            lag = 2
        elif lag >= 0:
            lag = min(lag + size + 1, _MAX_LAG)
        j += size + 1
    return res


def realise_all(traces: Sequence[PromptTrace], draws: int = SAMPLED_DRAWS, seed: int = 0
                ) -> list[PromptTrace]:
    """The set `draws` times over, each sampled trace realised afresh (a set without sampled
    traces: as it is). One fixed seed, so every policy replays the same acceptances."""
    if not any(len(t.accept_prob) for t in traces):
        return list(traces)
    rng = np.random.default_rng(seed)
    return [t.realise(rng) for _ in range(draws) for t in traces]


def simulate_set(traces: Sequence[PromptTrace],
                 make_policy: Callable[[], Plan | DraftPolicy] | None, costs: CostModel,
                 *, max_draft: int = DEFAULT_MAX_DRAFT) -> list[SimResult]:
    """One policy instance over the prompts in order, as a benchmark runs them; None: oracle."""
    if make_policy is None:
        return [oracle(t, costs, max_draft=max_draft) for t in traces]
    policy = make_policy()
    return [simulate(t, policy, costs) for t in traces]


def total_rate(results: Sequence[SimResult]) -> float:
    """Generated tokens over total time (prefill included)."""
    time = sum(r.time_s for r in results)
    return sum(r.generated for r in results) / time if time > 0 else 0.0


def decode_rate(results: Sequence[SimResult]) -> float:
    """Generated tokens over the time after prefill: what one more token is worth to a
    generation of fixed length, whose prefill no draft policy can change."""
    time = sum(r.time_s - r.prefill_s for r in results)
    return sum(r.generated for r in results) / time if time > 0 else 0.0


def mean_rate(results: Sequence[SimResult]) -> float:
    """Mean of per-prompt tokens/s, as the SVIP paper reports speed."""
    return float(np.mean([r.tokens_per_second for r in results])) if results else 0.0
