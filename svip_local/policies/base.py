"""The two things a round asks: where tokens to verify come from, and how long the draft runs.

A `DraftPolicy` is a length rule: after each draft step it says keep drafting, stop, or stop
and drop the token, from the step's statistics (entropy in nats over the whole vocabulary of
the raw draft logits, and the top-1 probability) and what it learnt from earlier rounds. A
`Proposer` is a proposal source that needs no draft model (prompt lookup, as a chain or a
tree): when it has something, the round verifies that and the draft model rests. An
`Expander` widens the draft model's chain into a token tree (CaPE).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from svip_local.config import DEFAULT_MAX_DRAFT

if TYPE_CHECKING:
    from svip_local.policies.round_plan import Copy
    from svip_local.policies.table import Arg, PolicyContext, PolicyEntry
    from svip_local.transcript import Transcript
    from svip_local.tree import TokenTree


class Verdict(Enum):
    CONTINUE = "continue"
    STOP = "stop"  # keep this token, draft no more (SVIP, AdaEDL: keep-then-stop)
    DROP = "drop"  # discard this token and stop (llama.cpp p_min: drop-and-stop)


@dataclass(frozen=True, slots=True)
class StepStats:
    """What a policy may look at after a draft step; fields a policy did not ask for are nan
    (None: the hidden state)."""

    n_drafted: int  # draft tokens so far in this round, this one included
    entropy: float
    top_prob: float
    # The draft's last hidden state where it produced this step's distribution (a view,
    # valid during `judge` only), for a policy with `wants_hidden`.
    hidden: npt.NDArray[np.floating[Any]] | None = None


class DraftPolicy(ABC):
    """One policy instance lives as long as its engine: adaptive ones learn across calls.

    `args` are the parameters it was made with, in the order of its table entry, so its name
    is the spec that makes it again (`svip:0.3`).
    """

    entry: ClassVar[PolicyEntry | None] = None  # set by `policies.table.register`
    wants_entropy: ClassVar[bool] = False
    wants_top_prob: ClassVar[bool] = False
    # The draft context then outputs hidden states (an instance may turn it on: live `auto`)
    wants_hidden: bool = False

    def __init__(self, *args: Arg, max_draft: int = DEFAULT_MAX_DRAFT) -> None:
        self.args = args
        self.max_draft = max_draft

    @classmethod
    def build(cls, args: tuple[Any, ...], context: PolicyContext) -> object:
        """The policy a spec's arguments name, for an engine described by `context` (a
        calibrated one may build a plan per temperature; plans stand above this module, and
        `strategy.parse_policy` takes either)."""
        return cls(*args, max_draft=context.max_draft)

    @property
    def name(self) -> str:
        return self.entry.spec(self.args) if self.entry else type(self).__name__.lower()

    def round_limit(self) -> int:
        """Upper bound on this round's draft length (the round also caps it by budget)."""
        return self.max_draft

    @abstractmethod
    def judge(self, step: StepStats) -> Verdict: ...

    def observe(self, drafted: int, accepted: int) -> None:  # noqa: B027 (optional hook)
        """Verification outcome of a drafted round: `accepted` of `drafted` tokens matched."""

    def describe(self) -> str:
        """The name, plus any state learnt so far (for statistics and reports)."""
        return self.name


class Proposer(Protocol):
    """Tokens to verify without a draft step (a chain, or a tree of candidates); none leaves
    the round to the draft model."""

    @property
    def name(self) -> str: ...

    def propose(self, transcript: Transcript, cap: int) -> Copy | None:
        """What should follow the transcript (everything before the round), at most `cap`
        tokens deep; None: nothing to copy."""
        ...


# A depth's candidate ids best first, their draft probabilities, and how many of them to
# offer there (the chain's token included).
Option = tuple[npt.NDArray[np.integer[Any]], npt.NDArray[np.floating[Any]], int]


class Expander(Protocol):
    """Widens the draft model's chain into a tree (CaPE). Each draft step's best candidates
    are read while its logits are valid (`tree.top_candidates`), with `width` of them on
    offer; `expand` adds alternatives from those once the chain is done."""

    @property
    def name(self) -> str: ...

    def width(self, top_prob: float) -> int:
        """Candidates to offer at a depth whose draft top-1 probability is `top_prob`."""
        ...

    def expand(self, tree: TokenTree, options: Sequence[Option]) -> None:
        """Add alternatives to the chain in `tree`: options[d] belong at depth d + 1, under
        chain node d - 1 (one more option than chain nodes: the step whose token the policy
        dropped)."""
        ...



def entropy_and_top_prob(logits: npt.NDArray[np.float32], scratch: npt.NDArray[np.float32]
                         ) -> tuple[float, float]:
    """Entropy (nats) and top-1 probability of softmax(logits) in one exp pass.

    With y = x - max x and Z = Σ e^y: H = log Z - Σ e^y·y / Z and p_top = 1/Z. `scratch` is a
    reusable float32 buffer of shape (2, len(logits)): y and e^y, so a draft step allocates
    nothing vocabulary-sized (`entropy_scratch` makes one).
    """
    y = np.subtract(logits, logits.max(), out=scratch[0])
    e = np.exp(y, out=scratch[1])
    z = float(e.sum(dtype=np.float64))
    h = math.log(z) - float(np.dot(e, y)) / z
    return max(h, 0.0), 1.0 / z


def entropy_scratch(n_vocab: int) -> npt.NDArray[np.float32]:
    """The buffer `entropy_and_top_prob` works in, for logits of `n_vocab` entries."""
    return np.empty((2, n_vocab), dtype=np.float32)
