"""What the cost model says a constrained run should have taken, from the rounds it ran.

Each measured round is priced with this machine's calibrated `CostModel`, as the simulator
prices a replayed one (`bench.simulate.TraceBackend`): the target's verification of its rows
(the forced tokens, copies and draft tokens it proposed, and the row after them) at its
context depth, the draft's catch-up decode and draft steps, and the loop's own work per round
and per emitted token; plus the prefill. The grammar's own seconds (masks, checks) are not in
the cost model: the run's measured `mask_s` is added as it is. So the prediction tests the
cost model on the rounds the constraint produced (their forced-token share, acceptance and
lengths), not the policy's choices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from svip_local.calibration import CostModel


@dataclass(frozen=True)
class RoundLog:
    """One measured round (the engine's `Round` event): tokens proposed (`drafted`, forced
    ones first), how many were accepted, tokens verified (`nodes`), whether they were a copy,
    the forced tokens, draft steps and the draft's catch-up size."""

    drafted: int
    accepted: int
    nodes: int
    copied: bool
    forced: int
    steps: int
    catchup: int


def predict_seconds(rounds: Sequence[RoundLog], *, prompt_tokens: int, generated: int,
                    mask_s: float, costs: CostModel, temperature: float = 0.0) -> float:
    """The cost model's time for a run of `rounds` (prefill included; `mask_s` added)."""
    costs = costs.at_temperature(temperature)
    step = costs.step_s + costs.argmax_s + costs.entropy_s
    total = costs.target_prefill(prompt_tokens - 1) + mask_s
    seq_len, emitted_all = prompt_tokens, 0
    for r in rounds:
        f, steps = r.forced, r.steps
        emitted = min(r.accepted + 1, max(0, generated - emitted_all)) or 1
        total += costs.verify(r.nodes + 1, seq_len - 1) + costs.argmax_s * (r.accepted + 1)
        total += costs.round_s + costs.token_s * emitted
        if steps:
            # The draft first decodes what it has not seen (the whole prompt the first time),
            # then one token per step but the last.
            head = seq_len + f  # the draft continues after the forced tokens
            lag = r.catchup
            total += costs.draft(lag, head - lag) + steps * step
            total += sum(costs.draft(1, head + i) for i in range(steps - 1))
        seq_len += r.accepted + 1
        emitted_all += emitted
    return total
