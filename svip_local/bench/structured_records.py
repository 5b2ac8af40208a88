"""What the structured-output benchmark runs and records: its contestants (a policy spec with
the constraint's speculation aids after a slash, or a peer), a task rendered once for all of
them, and one run's record.

- `SPEC` the constraint with both aids: forced tokens proposed without a draft step, and the
  draft's tokens drawn from its masked logits;
- `SPEC/bare` neither aid, `SPEC/no-forced` and `SPEC/no-mask` one of them off;
- `SPEC/free` no constraint at all (the same prompt, free text);
- peers: `llama-cpp-python`, `llama-cpp-python+lookup[:N[:NGRAM]]`, `llama.cpp:N_MAX:P_MIN`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from svip_local.bench import peer as llama_peer, python_peer
from svip_local.bench.structured_tasks import StructuredTask
from svip_local.errors import InvalidRequestError
from svip_local.policies import PolicyContext, check_spec

if TYPE_CHECKING:
    from svip_local.constraint import Constraint
    from svip_local.tool_stream import ToolCallStream

BASELINE = "none/bare"  # the constrained target alone
FREE_BASELINE = "none/free"  # the unconstrained target alone
AIDS = ("", "bare", "no-forced", "no-mask", "free")
FINISHED = ("stop", "eos", "tool_calls")  # a reply that ended by itself


@dataclass(frozen=True)
class Contestant:
    """`name` as given; an engine contestant's policy `spec` and `aids` (one of AIDS)."""

    name: str
    spec: str
    aids: str = ""

    @property
    def peer(self) -> bool:
        return python_peer.handles(self.spec) or llama_peer.handles(self.spec)

    @property
    def constrained(self) -> bool:
        return self.aids != "free"


def parse_contestant(name: str) -> Contestant:
    """`SPEC[/AIDS]` (checked against the policy table) or a peer spec."""
    spec, _, aids = name.partition("/")
    if python_peer.handles(spec) or llama_peer.handles(spec):
        if aids:
            raise InvalidRequestError(f"{name!r}: a peer takes no /{aids} (it has no aids to "
                                      "turn off)")
        if python_peer.handles(spec):
            python_peer.parse_spec(spec)
        else:
            llama_peer.label(spec)
        return Contestant(name, spec)
    if aids not in AIDS:
        raise InvalidRequestError(f"{name!r}: unknown /{aids}; after the slash: "
                                  f"{', '.join(a for a in AIDS if a)}")
    check_spec(spec, PolicyContext())
    return Contestant(name, spec, aids)


@dataclass(frozen=True)
class PreparedTask:
    """A task rendered once: the prompt text and ids every contestant gets, the engine's
    constraint, a tool task's call reader, and the end-of-turn stop a free or lazy (tool)
    generation keeps, as `stream_chat` passes it."""

    task: StructuredTask
    text: str
    ids: list[int]
    regions: list[tuple[int, str]]
    constraint: Constraint
    calls: ToolCallStream | None = None  # reads a tool reply's calls (`fresh()` per run)
    stops: tuple[str, ...] = ()


@dataclass
class StructuredRecord:
    """One run of one contestant on one task."""

    task_id: str
    kind: str
    temperature: float
    contestant: str
    resolved: str  # what it ran as (auto's choices, the peer's settings)
    repeat: int
    prompt_tokens: int
    generated: int
    wall_s: float
    prefill_s: float
    finish: str
    valid: bool
    problem: str  # why it is not valid ('' when it is)
    text: str
    constrained: bool = True
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0
    forced: int = 0
    forced_accepted: int = 0
    mask_s: float = 0.0
    masks: int = 0
    predicted_s: float | None = None  # the cost model's time for its rounds
    draft_lengths: list[int] = field(default_factory=list)
    accepted_lengths: list[int] = field(default_factory=list)
    copied: list[bool] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.finish in FINISHED

    @property
    def tokens_per_second(self) -> float:
        return self.generated / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StructuredRun:
    """Everything one benchmark produced (summaries are made by `structured_report`)."""

    meta: dict[str, Any]
    contestants: list[str]
    records: list[StructuredRecord]
    peer_sweep: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
