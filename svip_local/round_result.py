"""What one speculative round did, as a record below everything that reads it: the round
(`svip_local.round`) and the simulator make it, strategies learn from it, statistics add it up."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What one round did. `proposed` is the verified branch the round ended on (drafted, or
    copied when `copied`): the accepted path, then the rest of that branch; the round emits
    `proposed[:accepted]` and then `next_token`, the target's own. `nodes` counts every
    token verified (a chain: len(proposed); a tree: more)."""

    proposed: tuple[int, ...]
    accepted: int
    next_token: int
    copied: bool
    draft_s: float  # proposing (draft decodes and policy), seconds
    verify_s: float  # the target's batch and the acceptance test
    draft_steps: int = 0  # the length policy's verdicts (one per draft decode read)
    catchup: int = 0  # tokens the draft decoded to catch up before its first step
    catchup_s: float = 0.0
    # Sampling: the chance of acceptance of each depth's first candidate (the chain's token),
    # up to the first depth where none was accepted (the acceptance test's own min(1, p/q));
    # greedy: empty, the outcomes are certain.
    chances: tuple[float, ...] = ()
    nodes: int = -1  # -1: as many as proposed (a chain)
    forced: int = 0  # the leading proposals the grammar forced (no draft step, no copy)
    # Beside other requests: every row of the batch its verification joined (their prefills'
    # included), the rows of the others' verifications in it, and how many they were.
    batch_rows: int = 0
    shared_rows: int = 0
    shared_with: int = 0

    def __post_init__(self) -> None:
        if self.nodes < 0:
            object.__setattr__(self, "nodes", len(self.proposed))

    @property
    def tokens(self) -> tuple[int, ...]:
        return (*self.proposed[: self.accepted], self.next_token)

    def after_forced(self) -> RoundResult:
        """The round as its plan's strategy saw it: the forced prefix taken off the proposal
        (it was not the plan's), the rows and times kept (the batch priced them all)."""
        if not self.forced:
            return self
        f = self.forced
        return replace(self, proposed=self.proposed[f:], accepted=max(0, self.accepted - f),
                       chances=self.chances[f:], forced=0)
