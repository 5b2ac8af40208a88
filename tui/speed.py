"""How much faster a reply came than the target alone would have written the same reply.

Both sides are that reply: the same tokens after the same prefill (the target's own: the draft
catches up inside its rounds, which count on the speculative side). Only the decoding differs.
"""

from __future__ import annotations

from dataclasses import dataclass

from svip_local import GenerationStats

# Fewer tokens than this and the ratio is mostly the noise of a few timings: none is shown.
MIN_TOKENS = 16
MEASURED = "measured"
LIVE = "auto's estimate"


@dataclass(frozen=True)
class Speedup:
    """This reply's wall time against the target alone's; `source` says where the latter came
    from, `detail` how it was added up."""

    ratio: float
    source: str
    detail: str

    @property
    def label(self) -> str:
        return f"≈{self.ratio:.1f}× vs target alone ({self.source})"


def live_estimate(stats: GenerationStats) -> Speedup | None:
    """From `auto`'s live price of one target decode (a running estimate its rounds keep
    learning, this reply's last), with this reply's bookkeeping counted on both sides: a reply
    of only target-alone rounds comes out at 1×."""
    t1 = float((stats.live or {}).get("verify_1_s") or 0.0)
    return _speedup(stats, t1, stats.overhead_s, LIVE,
                    f"{_ms(t1)} per target decode, auto's live estimate, "
                    f"+ {stats.overhead_s:.2f} s bookkeeping as this reply's")


def measured(stats: GenerationStats, seconds_per_token: float) -> Speedup | None:
    """From the target alone timed right after the reply, at the context the reply ended at."""
    return _speedup(stats, seconds_per_token, 0.0, MEASURED,
                    f"{_ms(seconds_per_token)} per token, the target alone timed right after "
                    "this reply at its context")


def _speedup(stats: GenerationStats, per_token_s: float, extra_s: float, source: str,
             how: str) -> Speedup | None:
    if stats.generated < MIN_TOKENS or per_token_s <= 0 or stats.wall_s <= 0:
        return None
    alone_s = stats.prefill_s + stats.generated * per_token_s + extra_s
    return Speedup(alone_s / stats.wall_s, source,
                   f"Target alone ≈ {stats.prefill_s:.2f} s prefill + {stats.generated} tokens × "
                   f"{how} = {alone_s:.2f} s; this reply took {stats.wall_s:.2f} s.")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"
