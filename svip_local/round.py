"""One speculative round: plan, propose, verify, accept, trim.

    plan      the strategy decides (`RoundPlan`): copy, draft, or the target alone
    proposal  a token tree (`svip_local.tree`): the plan's copy (no draft step), or up to
              `plan.draft` draft tokens, one draft decode each, while the length policy says
              CONTINUE, widened by the strategy's expander (CaPE: the draft's top-k
              alternatives as leaves); a plain chain is the one-branch tree
    verify    the target scores [last accepted token] + every node in ONE batched decode
    accept    the deepest path the target agrees with (greedy), or survives rejection
              sampling node by node (sampled), plus one token of the target's own
    trim      both KV caches keep exactly the accepted path as the slot's sequence

The request around it (`svip_local.sequence`) turns tokens into text, matches stop strings
and keeps statistics. The round runs on a backend: a slot of the engine's contexts
(`Speculator`), or a recorded trace with the cost model's times (`bench.simulate`), so it is
written once; a test runs both side by side.

A round is a generator: where it needs a decode it queues its rows in a context's batch and
yields that context. The scheduler (`svip_local.scheduler`) runs every request's round this
way, so one draft decode holds a row of each drafting request and one target decode every
request's verification; `drive` runs a round alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from svip_local.native import Context, Model, Outputs
from svip_local.policies import (
    DraftPolicy,
    Expander,
    Option,
    StepStats,
    Strategy,
    Verdict,
    entropy_and_top_prob,
    entropy_scratch,
)
from svip_local.policies.round_plan import Copy, RoundPlan
from svip_local.round_result import RoundResult
from svip_local.sampling import (
    SamplingParams,
    acceptance_chance,
    distribution,
    sample,
    verify_candidates,
)
from svip_local.transcript import Transcript
from svip_local.tree import TokenTree, top_candidates

if TYPE_CHECKING:
    from svip_local.grammar import GrammarState

T = TypeVar("T")
Steps = Generator[Context, None, T]
"""A round's work: each context it yields holds rows of it in its batch, which must run
before the round goes on."""


def drive(steps: Steps[T]) -> T:
    """Run one request's steps alone, each batch as soon as it is queued."""
    try:
        while True:
            steps.send(None).run_batch()
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


class DraftStep:
    """The draft token a step read and what the policy and expander judge it by; one object
    per backend, rewritten each step (no allocation per token)."""

    __slots__ = ("token", "q", "entropy", "top_prob", "hidden", "candidates", "eog")

    def __init__(self) -> None:
        self.token = -1
        self.q: npt.NDArray[np.float64] | None = None  # the draft's distribution (sampling)
        self.entropy = self.top_prob = math.nan
        self.hidden: npt.NDArray[Any] | None = None
        self.candidates: tuple[npt.NDArray[Any], npt.NDArray[Any]] | None = None
        self.eog = False


class RoundBackend(Protocol):
    """What a round runs on: the engine's two contexts (`Speculator`), or a recorded trace
    with the cost model's times (`bench.simulate`), so the round is written once."""

    tree: TokenTree
    has_draft: bool
    batch_rows: int  # rows of the last verification batch (0: a batch of its own)
    shared_rows: int  # the rows of the other requests' verifications in it
    shared_with: int  # those requests

    def clock(self) -> float: ...

    def cells_left(self) -> int: ...

    def catch_up(self, seq: Sequence[int], wants_hidden: bool) -> Steps[tuple[int, float]]:
        ...

    def read_step(self, n: int, sampling: SamplingParams, rng: np.random.Generator,
                  stats: bool, candidates: bool, hidden: bool,
                  grammar: GrammarState | None = None) -> DraftStep: ...

    def decode_draft(self, token: int) -> Steps[None]: ...

    def verify(self, seq: Sequence[int], sampling: SamplingParams, rng: np.random.Generator,
               grammar: GrammarState | None = None
               ) -> Steps[tuple[list[int], int, tuple[float, ...]]]: ...


def speculative_round(backend: RoundBackend, seq: Sequence[int], transcript: Transcript | None,
                      room: int, strategy: Strategy, sampling: SamplingParams,
                      rng: np.random.Generator, remaining: int,
                      grammar: GrammarState | None = None) -> Steps[RoundResult]:
    """One round after `seq` (everything so far; the target's cache holds all but its last
    token; `transcript` holds the same tokens after any side text), proposing at most `room`
    tokens deep, with `remaining` tokens left in the generation's budget.

    Under a constraint (`grammar`) the proposal is a chain: the tokens the grammar forces
    first, then the plan's copy (cut where the grammar refuses it) or its draft (masked by
    the grammar when `draft_mask`); the target's rows are masked in verification, and the
    grammar advances only on the tokens the round emits.
    """
    clock, tree = backend.clock, backend.tree
    t0 = clock()
    tree.clear()
    forced = grammar.forced(room) if grammar is not None and grammar.constraint.forced_tokens \
        else []
    if forced:  # the plan is made as if they were accepted: it proposes what follows them
        tree.extend_chain(forced)
        assert grammar is not None
        grammar.advance(forced)
        seq = [*seq, *forced]
        if transcript is not None:
            for token in forced:
                transcript.append(token)
    plan = strategy.decide(transcript, room - len(forced), remaining - len(forced))
    steps = catchup = chain = 0
    catchup_s = 0.0
    if plan.copy is not None:
        add_copy(tree, plan.copy, grammar)
    elif plan.draft > 0 and backend.has_draft:
        masking = grammar if grammar is not None and grammar.constraint.draft_mask else None
        expander = strategy.expander if grammar is None else None  # chains under a grammar
        chain, steps, catchup, catchup_s = yield from draft_chain(
            backend, seq, plan, strategy.policy, expander, sampling, rng, masking)
    if forced:
        assert grammar is not None
        grammar.rollback(len(forced))
        seq = seq[: len(seq) - len(forced)]
        if transcript is not None:
            transcript.length -= len(forced)
    copied = plan.copy is not None
    # What the context can still hold (the root takes one cell) and the budget allows.
    tree.prune(backend.cells_left(), room)
    t1 = clock()
    path, nxt, chances = yield from backend.verify(seq, sampling, rng, grammar)
    accepted = len(path)
    f = len(forced)
    if steps and accepted >= f:  # only the draft model's rounds say anything about its policy
        chain = min(chain, len(tree)) - f
        strategy.policy.observe(chain, leading_chain(path, chain + f) - f)
    branch = tree.chain_below(path[-1] if path else -1)
    result = RoundResult(tuple(tree.tokens[i] for i in branch), accepted, nxt, copied,
                         t1 - t0, clock() - t1, steps, catchup, catchup_s, chances, len(tree),
                         f, backend.batch_rows, backend.shared_rows, backend.shared_with)
    strategy.learn(plan, result.after_forced())
    return result


def draft_chain(backend: RoundBackend, seq: Sequence[int], plan: RoundPlan,
                policy: DraftPolicy, expander: Expander | None, sampling: SamplingParams,
                rng: np.random.Generator, grammar: GrammarState | None = None
                ) -> Steps[tuple[int, int, int, float]]:
    """Draft up to `plan.draft` tokens after `seq` into the round's tree as a chain (after
    any nodes already there), asking the policy after each one (an exploring round keeps its
    first token whatever the policy says), then let `expander` widen it. `grammar` masks each
    step's logits, advanced along the chain and rolled back at the end. Returns the tree's
    length after the chain, the policy's verdicts, and the catch-up decode's size and seconds.
    """
    tree = backend.tree
    catchup, catchup_s = yield from backend.catch_up(seq, policy.wants_hidden)
    stats = policy.wants_entropy or policy.wants_top_prob or expander is not None
    options: list[Option] = []  # per depth, what the expander may add there
    n = advanced = 0
    try:
        for n in range(1, plan.draft + 1):
            step = backend.read_step(n, sampling, rng, stats, expander is not None,
                                     policy.wants_hidden, grammar)
            if expander is not None and step.candidates is not None:
                options.append((*step.candidates, expander.width(step.top_prob)))
            verdict = policy.judge(StepStats(n, step.entropy, step.top_prob, step.hidden))
            if verdict is Verdict.DROP and plan.explore and n == 1:
                verdict = Verdict.STOP
            if verdict is Verdict.DROP:
                break
            tree.add(step.token, len(tree) - 1, step.q)
            if verdict is Verdict.STOP or n == plan.draft or step.eog:
                break
            if grammar is not None:
                grammar.advance([step.token])
                advanced += 1
            yield from backend.decode_draft(step.token)
    finally:
        if grammar is not None:
            grammar.rollback(advanced)
    chain = len(tree)
    if expander is not None:
        expander.expand(tree, options)
    return chain, n, catchup, catchup_s


class Speculator:
    """The engine's round backend for one slot of its contexts, with the buffers every round
    of that slot reuses. Decodes are queued in the contexts' batches (shared with the other
    slots' rounds) and yielded; `clock` is the request's own (the scheduler's accounting of
    its share of every batch it joined)."""

    def __init__(self, target: Context, draft: Context | None, draft_model: Model | None,
                 n_vocab: int, slot: int = 0,
                 clock: Callable[[], float] = perf_counter) -> None:
        self.target, self.draft, self.draft_model = target, draft, draft_model
        self.has_draft = draft is not None and draft_model is not None
        self.n_vocab, self.slot, self.clock = n_vocab, slot, clock
        self._scratch = entropy_scratch(n_vocab)
        self.tree = TokenTree()
        self._step = DraftStep()
        self._draft_row = -1  # the draft batch's row of this slot's last token
        self.batch_rows = 0  # rows of the last verification batch this slot joined
        self.shared_rows = self.shared_with = 0  # other requests' verifications in it

    def round(self, seq: list[int], transcript: Transcript, room: int, strategy: Strategy,
              sampling: SamplingParams, rng: np.random.Generator, remaining: int,
              grammar: GrammarState | None = None) -> RoundResult:
        """`speculative_round` on the engine's contexts, alone."""
        return drive(speculative_round(self, seq, transcript, room, strategy, sampling, rng,
                                       remaining, grammar))

    def cells_left(self) -> int:
        """What the slot's cache and the target's batch can still take, the root's row and
        cell aside."""
        t = self.target
        return min(t.n_ctx - len(t.slot_tokens(self.slot)), t.rows_free) - 1

    def catch_up(self, seq: Sequence[int], wants_hidden: bool) -> Steps[tuple[int, float]]:
        """Usually one token (the last accepted); two after an all-accepted round, because
        the last draft token was never decoded; the whole catch-up after a target-alone
        stretch (in as many batches as it takes)."""
        ctx = self.draft
        assert ctx is not None
        t0 = self.clock()
        ctx.output_hidden(wants_hidden)
        catchup = seq[ctx.keep_prefix(seq, len(seq) - 1, self.slot):]
        done = 0
        while done < len(catchup):
            if ctx.rows_free == 0:
                yield ctx
            n = min(len(catchup) - done, ctx.rows_free)
            last = done + n == len(catchup)
            row = ctx.add_chain(catchup[done:done + n], Outputs.LAST if last else Outputs.NONE,
                                self.slot)
            done += n
            yield ctx
        self._draft_row = row + n - 1
        return len(catchup), self.clock() - t0

    def read_step(self, n: int, sampling: SamplingParams, rng: np.random.Generator,
                  stats: bool, candidates: bool, hidden: bool,
                  grammar: GrammarState | None = None) -> DraftStep:
        ctx, step = self.draft, self._step
        assert ctx is not None and self.draft_model is not None
        logits = ctx.logits(self._draft_row)[: self.n_vocab]
        q = None
        if grammar is not None and (stats or candidates or not sampling.greedy):
            logits = grammar.masked(logits)  # the policy reads the masked entropy
            grammar = None
        if sampling.greedy:
            tok = int(logits.argmax()) if grammar is None else grammar.greedy(logits)
        else:
            q = distribution(logits, sampling)
            tok = sample(q, rng)
        h, p1 = entropy_and_top_prob(logits, self._scratch) if stats else (math.nan, math.nan)
        if candidates:
            ids = top_candidates(logits if q is None else q)
            # softmax of the best logits: p1 = 1/Z, so p(y) = exp(l_y - l_max) * p1
            probs = np.exp(logits[ids] - logits[ids[0]]) * p1 if q is None else q[ids]
            step.candidates = (ids, probs)
        step.token, step.q, step.entropy, step.top_prob = tok, q, h, p1
        step.hidden = ctx.hidden(self._draft_row) if hidden else None
        step.eog = self.draft_model.is_eog(tok)
        return step

    def decode_draft(self, token: int) -> Steps[None]:
        ctx = self.draft
        assert ctx is not None
        if ctx.rows_free == 0:
            yield ctx
        self._draft_row = ctx.add_chain((token,), Outputs.LAST, self.slot)
        yield ctx

    def verify(self, seq: Sequence[int], sampling: SamplingParams, rng: np.random.Generator,
               grammar: GrammarState | None = None
               ) -> Steps[tuple[list[int], int, tuple[float, ...]]]:
        """Score [seq[-1]] + the tree in one target decode (shared with the other slots'
        verifications); return the accepted path (node indices), the next token, and
        (sampling) the tested chances.

        From the root down: greedy, step to the child holding the target's argmax at this
        node, else that argmax is the next token (after a leaf: the bonus token). Sampling:
        the node's children are tried in order by `verify_candidates`, which keeps exactly
        the target's distribution p at every node (Leviathan et al. 2023 for one draft
        token; a copied token or top-k alternative is a certain proposal, kept with p(x)).
        Under `grammar` each row is masked by the state after the path so far (greedy: only
        where the plain argmax is refused), and the state advances on every token emitted.
        """
        ctx, tree = self.target, self.tree
        depths, seqs, branches = tree.layout()
        while ctx.rows_free < len(tree) + 1:  # the batch is full: the next one
            yield ctx
        root = ctx.add_tree([seq[-1], *tree.tokens], depths, seqs, branches, self.slot)
        yield ctx
        self.batch_rows = ctx.last_rows
        self.shared_rows = ctx.last_tree_rows - len(tree) - 1
        self.shared_with = ctx.last_trees - 1
        path: list[int] = []
        chances: list[float] = []
        node = -1
        while True:
            row = ctx.logits(root + node + 1)[: self.n_vocab]
            if sampling.greedy:
                nxt = int(row.argmax()) if grammar is None else grammar.greedy(row)
                child = tree.child_with(node, nxt)
            else:
                p = distribution(row if grammar is None else grammar.masked(row), sampling)
                kids = tree.children(node)
                if not kids:
                    nxt, child = sample(p, rng), -1
                else:
                    qs = [tree.qs[c] for c in kids]
                    chances.append(acceptance_chance(p, qs[0], tree.tokens[kids[0]]))
                    pick, nxt = verify_candidates(p, [tree.tokens[c] for c in kids], qs, rng)
                    child = kids[pick] if pick >= 0 else -1
            if grammar is not None:
                grammar.advance([nxt])
            if child < 0:
                break
            path.append(child)
            node = child
        # Keep seq + the accepted path in both caches; the new token is decoded next round.
        # The draft never decoded its last proposal, so after an all-accepted round it is one
        # short; after an accepted alternative leaf it holds the chain's token there, which
        # its next catch-up (`keep_prefix`) trims.
        ctx.keep_branch(seqs[node + 1][0], [seq[-1], *(tree.tokens[i] for i in path)],
                        branches, self.slot)
        if self.draft is not None:
            self.draft.truncate(len(seq) + len(path), self.slot)
        return path, nxt, tuple(chances)


def add_copy(tree: TokenTree, copy: Copy, grammar: GrammarState | None = None) -> None:
    """A plan's copy into the round tree (after any forced nodes): a chain, or a tree by its
    parents. Under `grammar`: the copy's leading chain, up to the first token it refuses."""
    tokens = copy.tokens.tolist() if isinstance(copy.tokens, np.ndarray) else list(copy.tokens)
    if grammar is not None:
        chain = len(tokens)
        if copy.parents is not None:  # a tree copy: its first chain (node i below i - 1)
            chain = next((i for i, p in enumerate(copy.parents) if p != i - 1), chain)
        tokens = tokens[: grammar.valid_prefix(tokens[:chain])]
    if copy.parents is None or grammar is not None:
        tree.extend_chain(tokens)
        return
    for token, parent in zip(tokens, copy.parents, strict=True):
        tree.add(int(token), parent)


def leading_chain(path: Sequence[int], chain: int) -> int:
    """How many of the accepted nodes are the chain's (nodes 0..chain-1, in order)."""
    n = 0
    while n < len(path) and n < chain and path[n] == n:
        n += 1
    return n
