"""What `Engine.generate` yields: small frozen events, then one final `Done` with statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from svip_local.round_result import RoundResult


@dataclass(frozen=True, slots=True)
class Token:
    """One emitted token. `text` is the visible text it completes (may be empty while a UTF-8
    sequence or a possible stop string is incomplete)."""

    id: int
    text: str
    from_draft: bool  # an accepted draft token, or else the target's own choice
    round: int


@dataclass(frozen=True, slots=True)
class Round:
    """End of one draft-and-verify round, with both KV caches' lengths after trimming.
    `drafted` counts the tokens of the branch the round ended on and `accepted` how deep it
    got; `nodes` every token verified (more than `drafted` for a token tree); `copied`: they
    came from the proposal source (prompt lookup), not the draft model; `forced`, `steps`
    and `catchup` what the round cost (the simulator prices rounds by them)."""

    index: int
    drafted: int
    accepted: int
    emitted: int
    target_kv: int
    draft_kv: int | None
    copied: bool = False
    nodes: int = 0
    forced: int = 0  # leading proposals the grammar forced (no draft step)
    steps: int = 0  # draft decodes read (the length policy's verdicts)
    catchup: int = 0  # tokens the draft decoded to catch up first


@dataclass(frozen=True, slots=True)
class Notice:
    """Something the user should be told mid-stream (e.g. old turns dropped to fit)."""

    message: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call as its tokens are accepted: `id` and `name` on the call's first
    delta only (None after), `arguments` the new fragment of its JSON arguments."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A whole tool call once it closed: `arguments` is its JSON text (OpenAI's format)."""

    index: int
    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class GenerationStats:
    """Counters and timings of one generation (seconds, wall clock, prefill included)."""

    policy: str = ""
    prompt_tokens: int = 0
    prefill_tokens: int = 0  # prompt tokens actually decoded (the rest came from the KV cache)
    generated: int = 0
    rounds: int = 0
    lookup_rounds: int = 0  # rounds that verified tokens copied from the context
    drafted: int = 0
    accepted: int = 0
    nodes: int = 0  # tokens verified: as many as drafted for chains, more for trees
    wall_s: float = 0.0
    prefill_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0
    draft_lengths: list[int] = field(default_factory=list)
    accepted_lengths: list[int] = field(default_factory=list)
    node_counts: list[int] = field(default_factory=list)  # per round
    from_draft: list[bool] = field(default_factory=list)
    live: dict[str, Any] | None = None  # the live `auto`'s choices and estimates
    # Under a constraint: tokens the grammar forced (proposed with no draft step) and how many
    # were accepted, the seconds spent in the grammar (masks, checks) and the masks computed.
    constrained: bool = False
    forced: int = 0
    forced_accepted: int = 0
    mask_s: float = 0.0
    masks: int = 0
    # Beside other requests: the seconds it waited for a slot, the slot, and the rows of the
    # verification batches it joined (its own and the others'), summed over its rounds.
    queued_s: float = 0.0
    slot: int = 0
    batch_rows: int = 0

    def add_round(self, result: RoundResult) -> None:
        """Count one round's proposal, acceptance and time."""
        self.rounds += 1
        self.lookup_rounds += result.copied
        self.drafted += len(result.proposed)
        self.accepted += result.accepted
        self.nodes += result.nodes
        self.node_counts.append(result.nodes)
        self.draft_s += result.draft_s
        self.verify_s += result.verify_s
        self.draft_lengths.append(len(result.proposed))
        self.accepted_lengths.append(result.accepted)
        self.forced += result.forced
        self.forced_accepted += min(result.forced, result.accepted)

    @property
    def tokens_per_second(self) -> float:
        return self.generated / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_draft_length(self) -> float:
        return self.drafted / self.rounds if self.rounds else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Accepted draft tokens per round (each round also emits one target token)."""
        return self.accepted / self.rounds if self.rounds else 0.0

    @property
    def mean_nodes(self) -> float:
        """Tokens verified per round (a tree's every node)."""
        return self.nodes / self.rounds if self.rounds else 0.0

    @property
    def overhead_s(self) -> float:
        return max(0.0, self.wall_s - self.prefill_s - self.draft_s - self.verify_s)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("tokens_per_second", "acceptance_rate", "mean_draft_length",
                     "mean_accepted_length", "mean_nodes", "overhead_s"):
            data[name] = getattr(self, name)
        return data


@dataclass(frozen=True, slots=True)
class Done:
    """Last event of every generation, including cancelled and failed-by-length ones."""

    text: str
    tokens: tuple[int, ...]
    # "eos" | "stop" (a stop string, or the constraint complete) | "length" | "context" |
    # "cancelled" | "tool_calls" (`stream_chat` with tools: the reply called them)
    finish_reason: str
    stats: GenerationStats
    tool_calls: tuple[ToolCall, ...] = ()  # `text` is then the reply's content without them


Event = Token | Round | Notice | ToolCallDelta | ToolCall | Done
