"""One generation's grammar state: what the constraint allows next, advanced on accepted tokens.

The round asks it four things (`svip_local.round`): the tokens the grammar forces (proposed
with no draft step), how much of a copy it accepts (a copy is cut at the first refused token),
the masked logits of a draft step (drafts never propose a token certain to be rejected), and
the target's masked choice per verification row (the output is the target's own under the
constraint). Greedy checks the argmax first and masks only when it is refused, llama.cpp's
order; a mask is llguidance's bitmask unpacked into reused buffers, never a Python loop over
the vocabulary. Drafting advances the same matcher and rolls it back before verification, which
advances it only on the tokens the round emits.
"""

from __future__ import annotations

from time import perf_counter

import numpy as np
import numpy.typing as npt
from llguidance import LLMatcher, LLTokenizer

from svip_local.constraint import Constraint
from svip_local.errors import ConstraintError

# A refused token's logit: finite (the entropy's e^y·y stays 0, not NaN), and far below any
# real one, so no temperature lifts it.
REFUSED = np.float32(-1e30)


class GrammarState:
    """The matcher of one generation and the buffers its masks reuse."""

    def __init__(self, constraint: Constraint, tokenizer: LLTokenizer, n_vocab: int) -> None:
        self.constraint = constraint
        self.n_vocab = n_vocab
        self._matcher = LLMatcher(tokenizer, constraint.grammar, log_level=0)
        if self._matcher.is_error():
            raise ConstraintError(f"{constraint.kind}: {self._matcher.get_error()}")
        self._eos = frozenset(tokenizer.eos_tokens)
        self._words = np.empty((tokenizer.vocab_size + 31) // 32, np.int32)
        self._masked = np.empty(n_vocab, np.float32)
        self.seconds = 0.0  # time spent in the grammar (masks, checks, moves)
        self.masks = 0  # full masks computed
        if not self.accepting and not self.allowed().any():
            raise ConstraintError(f"{constraint.kind}: the constraint admits no output")

    # -- what the state allows -----------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """The output so far is complete: end of text is allowed here."""
        return bool(self._matcher.is_accepting())

    @property
    def stopped(self) -> bool:
        """Nothing but end of text may follow (the grammar is finished)."""
        return bool(self._matcher.is_stopped())

    def allows(self, token: int) -> bool:
        t0 = perf_counter()
        ok = self.accepting if token in self._eos else self._matcher.validate_tokens([token]) == 1
        self.seconds += perf_counter() - t0
        return ok

    def allowed(self) -> npt.NDArray[np.bool_]:
        """Which tokens may come next (a fresh view of the reused bitmask)."""
        t0 = perf_counter()
        self._matcher.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        bits = np.unpackbits(self._words.view(np.uint8), count=self.n_vocab,
                             bitorder="little").view(np.bool_)
        self.masks += 1
        self.seconds += perf_counter() - t0
        return bits

    def masked(self, logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """`logits` with every refused token at REFUSED (a reused buffer: read it before the
        next call)."""
        bits = self.allowed()
        t0 = perf_counter()
        self._masked.fill(REFUSED)
        np.copyto(self._masked, logits[: self.n_vocab], where=bits)
        self.seconds += perf_counter() - t0
        return self._masked

    def greedy(self, logits: npt.NDArray[np.float32]) -> int:
        """The argmax of the masked logits, masking only when the plain argmax is refused."""
        top = int(logits.argmax())
        return top if self.allows(top) else int(self.masked(logits).argmax())

    def forced(self, limit: int) -> list[int]:
        """The tokens the grammar leaves no choice about (its forced bytes, tokenized), at
        most `limit`."""
        if limit <= 0:
            return []
        t0 = perf_counter()
        tokens = self._matcher.compute_ff_tokens()[:limit]
        self.seconds += perf_counter() - t0
        return tokens

    def valid_prefix(self, tokens: list[int]) -> int:
        """How many of `tokens` the grammar accepts in a row from here."""
        t0 = perf_counter()
        n = self._matcher.validate_tokens(tokens)
        self.seconds += perf_counter() - t0
        return int(n)

    # -- moves ---------------------------------------------------------------------------

    def advance(self, tokens: list[int]) -> None:
        """Consume tokens the grammar allows (emitted, or drafted and rolled back later). An
        end of text is not consumed: the generation ends there."""
        if tokens and tokens[-1] in self._eos:
            tokens = tokens[:-1]
        t0 = perf_counter()
        ok = self._matcher.consume_tokens(tokens)
        self.seconds += perf_counter() - t0
        if not ok:  # every caller checked first: a refused token here is a bug
            raise RuntimeError(f"the grammar refused tokens it allowed: "
                               f"{self._matcher.get_error()}")

    def rollback(self, n: int) -> None:
        if n > 0:
            t0 = perf_counter()
            self._matcher.rollback(n)
            self.seconds += perf_counter() - t0
