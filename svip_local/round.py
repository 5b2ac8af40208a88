"""One speculative round: propose, verify, accept, trim.

    proposal  the proposer's copies (no draft step), else up to `cap` draft tokens, one draft
              decode each, while the length policy says CONTINUE
    verify    the target scores [last accepted token] + proposal in ONE batched decode
    accept    the longest prefix the target agrees with (greedy), or survives rejection
              sampling (sampled), plus one token of the target's own
    trim      both KV caches drop what was rejected (`Context.keep_prefix`)

The generator around it (`Engine.generate`) turns tokens into text, matches stop strings and
keeps statistics; the simulator (`bench.simulate.replay_round`) mirrors this function on a
recorded trace, and a test runs both side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from time import perf_counter

import numpy as np

from svip_local.native import Context, Model, Outputs
from svip_local.policies import (
    DraftPolicy,
    StepStats,
    Strategy,
    Verdict,
    entropy_and_top_prob,
    entropy_scratch,
)
from svip_local.sampling import (
    Probs,
    SamplingParams,
    acceptance_chance,
    distribution,
    sample,
    verify_sampled,
)


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What one round did. `proposed` were verified (drafted, or copied when `copied`); the
    round emits `proposed[:accepted]` and then `next_token`, the target's own."""

    proposed: tuple[int, ...]
    accepted: int
    next_token: int
    copied: bool
    draft_s: float  # proposing (draft decodes and policy), seconds
    verify_s: float  # the target's batch and the acceptance test
    draft_steps: int = 0  # the length policy's verdicts (one per draft decode read)
    catchup: int = 0  # tokens the draft decoded to catch up before its first step
    catchup_s: float = 0.0
    # Sampling: each proposed token's chance of acceptance, up to the first rejected one (the
    # acceptance test's own min(1, p/q)); greedy: empty, the outcomes are certain.
    chances: tuple[float, ...] = ()

    @property
    def tokens(self) -> tuple[int, ...]:
        return (*self.proposed[: self.accepted], self.next_token)


class Speculator:
    """Both contexts of an engine, and the buffers every round reuses."""

    def __init__(self, target: Context, draft: Context | None, draft_model: Model | None,
                 n_vocab: int) -> None:
        self.target, self.draft, self.draft_model = target, draft, draft_model
        self.n_vocab = n_vocab
        self._scratch = entropy_scratch(n_vocab)

    def round(self, seq: list[int], room: int, strategy: Strategy, sampling: SamplingParams,
              rng: np.random.Generator, remaining: int) -> RoundResult:
        """One round after `seq` (everything so far; the target's cache holds all but its
        last token), proposing at most `room` tokens, with `remaining` tokens left in the
        generation's budget."""
        t0 = perf_counter()
        strategy.begin_round(seq, room, remaining)
        proposed = strategy.proposer.propose(seq, room) \
            if strategy.proposer is not None and room > 0 else []
        copied = bool(proposed)
        qs: list[Probs | None] = [None] * len(proposed)  # a copy has no draft distribution
        steps = catchup = 0
        catchup_s = 0.0
        if not copied:
            cap = min(strategy.policy.round_limit(), room) if self.draft is not None else 0
            proposed, qs, steps, catchup, catchup_s = self._draft(seq, cap, strategy.policy,
                                                                  sampling, rng)
        t1 = perf_counter()
        accepted, nxt, chances = self._verify(seq, proposed, qs, sampling, rng)
        if not copied:  # only the draft model's rounds say anything about its policy
            strategy.policy.observe(len(proposed), accepted)
        result = RoundResult(tuple(proposed), accepted, nxt, copied, t1 - t0,
                             perf_counter() - t1, steps, catchup, catchup_s, chances)
        strategy.learn(result)
        return result

    def _draft(self, seq: list[int], cap: int, policy: DraftPolicy, sampling: SamplingParams,
               rng: np.random.Generator
               ) -> tuple[list[int], list[Probs | None], int, int, float]:
        """Propose up to `cap` tokens after `seq`, asking the policy after each one. Returns
        the tokens, their draft distributions (sampling), the policy's verdicts, and the
        catch-up decode's size and seconds."""
        if cap <= 0 or self.draft is None or self.draft_model is None:
            return [], [], 0, 0, 0.0
        ctx = self.draft
        # Usually one token (the last accepted); two after an all-accepted round, because the
        # last draft token was never decoded; the whole catch-up after a target-only stretch.
        t0 = perf_counter()
        catchup = seq[ctx.keep_prefix(seq, len(seq) - 1):]
        ctx.decode(catchup, Outputs.LAST)
        catchup_s = perf_counter() - t0
        drafts: list[int] = []
        qs: list[Probs | None] = []
        stats = policy.wants_entropy or policy.wants_top_prob
        n = 0
        for n in range(1, cap + 1):
            logits = ctx.logits()[: self.n_vocab]
            if sampling.greedy:
                tok = int(logits.argmax())
            else:
                q = distribution(logits, sampling)
                tok = sample(q, rng)
            h, p1 = entropy_and_top_prob(logits, self._scratch) if stats else (math.nan,
                                                                                math.nan)
            verdict = policy.judge(StepStats(n, h, p1))
            if verdict is Verdict.DROP:
                break
            drafts.append(tok)
            if not sampling.greedy:
                qs.append(q)
            if verdict is Verdict.STOP or n == cap or self.draft_model.is_eog(tok):
                break
            ctx.decode([tok], Outputs.LAST)
        return drafts, qs, n, len(catchup), catchup_s

    def _verify(self, seq: list[int], drafts: list[int], qs: list[Probs | None],
                sampling: SamplingParams, rng: np.random.Generator
                ) -> tuple[int, int, tuple[float, ...]]:
        """Score `[seq[-1]] + drafts` in one target decode; return (accepted, next token,
        the tested tokens' acceptance chances when sampling).

        Greedy: accept while each draft token is the target's argmax; the next token is the
        target's argmax at the first mismatch (or after the last draft: the bonus token).
        Sampling: row i accepts d_i with probability min(1, p_i(d_i)/q_i(d_i)); the first
        rejection draws from norm(max(0, p_i - q_i)); if all pass, the bonus comes from p_k.
        Together the cases give exactly p (Leviathan et al. 2023). A copied token (q_i None)
        is a certain proposal: q_i is all mass on d_i, so it is kept with probability p_i(d_i).
        """
        ctx = self.target
        ctx.decode([seq[-1], *drafts], Outputs.ALL)
        accepted, nxt = len(drafts), -1
        chances: list[float] = []
        for i, d in enumerate(drafts):
            row = ctx.logits(i)[: self.n_vocab]
            if sampling.greedy:
                best = int(row.argmax())
                if best != d:
                    accepted, nxt = i, best
                    break
            else:
                p = distribution(row, sampling)
                chances.append(acceptance_chance(p, qs[i], d))
                fix = verify_sampled(p, qs[i], d, rng)
                if fix is not None:
                    accepted, nxt = i, fix
                    break
        if nxt < 0:
            last = ctx.logits(len(drafts))[: self.n_vocab]
            nxt = int(last.argmax()) if sampling.greedy else sample(
                distribution(last, sampling), rng)
        # Keep seq + accepted drafts in both caches; the new token is decoded next round. The
        # draft never decoded its last proposal, so after an all-accepted round it is one short.
        ctx.truncate(len(seq) + accepted)
        if self.draft is not None:
            self.draft.truncate(len(seq) + accepted)
        return accepted, nxt, tuple(chances)
