"""The one table of policies and proposal sources, and the spec language built on it.

Every policy registers once, with `@register` on its class (or on a builder function): name,
parameters and defaults, the rule in one line, its report label, the grid calibration searches.
The parser and its errors, the CLI's help, the TUI's choices, calibration's candidates and the
reports' labels all read this table, so a new policy is one registration in one file.

A spec is `POLICY[:ARG[:ARG]]`, optionally `+EXPANDER[:ARG]` (`svip:0.3+cape:16`: the chain
widened into a tree) and `+PROPOSER[:ARG...]` (`svip:0.3+lookup:4:8`), or a proposer alone
(`lookup:4:8`, `lookup-tree:4:16`: the target alone between its copies).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from svip_local.config import DEFAULT_MAX_COPY, DEFAULT_MAX_DRAFT
from svip_local.errors import InvalidRequestError

if TYPE_CHECKING:
    from svip_local.calibration import Calibration
    from svip_local.calibration.live import LiveModel

Arg = int | float  # a spec's parameter value
Kind = Literal["policy", "expander", "proposer"]
T = TypeVar("T")


def _no_calibration() -> Calibration | None:
    return None


@dataclass(frozen=True)
class PolicyContext:
    """What building a policy may need from the engine it will run in. `calibration` loads
    this pair's stored calibration on this machine (`calibrated`, `svip-cost` and `auto`
    call it); `live` gives the engine's live estimates, which `auto` learns into;
    `temperature` is set while building one calibrated temperature's choice."""

    max_draft: int = DEFAULT_MAX_DRAFT
    max_copy: int = DEFAULT_MAX_COPY
    has_draft: bool = True
    calibration: Callable[[], Calibration | None] = _no_calibration
    temperature: float | None = None
    live: Callable[[], LiveModel] | None = None  # the engine's live estimates (`auto`)


@dataclass(frozen=True)
class Param:
    """One positional parameter of a spec. `default` None: taken from the calibration.
    A value must lie in [low, high] and, where `limit` names an engine setting of the
    `PolicyContext` (max_draft, max_copy), be at most that setting."""

    name: str
    kind: type[int] | type[float]
    default: Arg | None
    help: str
    fmt: str = "g"
    low: float | None = None
    high: float | None = None
    limit: str | None = None

    def parse(self, text: str) -> Arg:
        value = self.kind(text)
        if not math.isfinite(value):
            raise ValueError(f"{self.name} must be a finite number, got {text!r}")
        return value

    def format(self, value: Arg | None) -> str:
        return "" if value is None else format(value, self.fmt)

    def check(self, value: Arg | None, entry: str, context: PolicyContext) -> None:
        """Refuse a value out of bounds, naming the bound (None: a calibrated default)."""
        if value is None:
            return
        high = self.high
        limit = None if self.limit is None else getattr(context, self.limit)
        if limit is not None and (high is None or limit < high):
            high = limit
        if (self.low is not None and value < self.low) or (high is not None and value > high):
            lo = "" if self.low is None else format(self.low, "g")
            hi = "" if high is None else format(high, "g")
            why = f" ({self.limit} = {limit:g})" if limit is not None and high == limit \
                else ""
            raise InvalidRequestError(
                f"{entry}'s {self.name} must be in [{lo}, {hi}]{why}, got {value:g}")


@dataclass(frozen=True)
class PolicyEntry:
    """A registered policy (a draft-length rule, or a builder of plans such as `auto`) or
    proposal source. `grid`: the argument tuples calibration tries (None: the defaults only;
    (): never a candidate)."""

    name: str
    kind: Kind
    params: tuple[Param, ...]
    rule: str
    label: str  # str.format template over the parameters (and {resolved} for a builder)
    build: Callable[[tuple[Any, ...], PolicyContext], Any]
    grid: tuple[tuple[Arg, ...], ...] | None = None
    needs_calibration: bool = False  # cannot be built, nor checked, without one
    check: Callable[[tuple[Any, ...]], object] | None = None  # validates arguments

    @property
    def defaults(self) -> tuple[Arg | None, ...]:
        return tuple(p.default for p in self.params)

    @property
    def usage(self) -> str:
        """`svip[:h]`, `lookup[:ngram[:tokens]]`."""
        return self.name + "".join(f"[:{p.name}" for p in self.params) + "]" * len(self.params)

    def spec(self, args: Sequence[Arg | None]) -> str:
        """The canonical spec of these arguments (every parameter shown, so a name says
        exactly what runs; a calibrated default, None, is left out)."""
        shown = [p.format(a) for p, a in zip(self.params, args, strict=True) if a is not None]
        return ":".join([self.name, *shown])

    def parse_args(self, spec: str, text: Sequence[str]) -> tuple[Arg | None, ...]:
        if len(text) > len(self.params):
            most = f"at most {len(self.params)} parameter(s)" if self.params else "no parameter"
            raise InvalidRequestError(f"policy {spec!r}: {self.name} takes {most} "
                                      f"({self.usage})")
        try:
            given = [p.parse(t) for p, t in zip(self.params, text, strict=False)]
        except ValueError as exc:
            raise InvalidRequestError(f"bad argument in policy {spec!r}: {exc}") from exc
        return (*given, *self.defaults[len(given):])

    def check_args(self, args: Sequence[Arg | None], context: PolicyContext) -> None:
        """Every argument within its parameter's bounds for an engine like `context`."""
        for param, value in zip(self.params, args, strict=True):
            param.check(value, self.name, context)

    def candidates(self) -> list[str]:
        grid = (self.defaults,) if self.grid is None else self.grid
        return [self.spec(args) for args in grid]

    def describe_label(self, args: Sequence[Arg | None], resolved: str = "") -> str:
        if "{resolved}" in self.label and not resolved:
            return self.name
        named = {p.name: p.format(a) for p, a in zip(self.params, args, strict=True)}
        return self.label.format(**named, resolved=resolved)


_TABLE: dict[str, PolicyEntry] = {}


def register(name: str, *params: Param, rule: str, label: str, kind: Kind = "policy",
             grid: Sequence[tuple[Arg, ...]] | None = None, needs_calibration: bool = False
             ) -> Callable[[T], T]:
    """Add a class (built as `cls.build(args, context)`) or a builder function
    (`fn(args, context) -> Plan`) to the table under `name`."""

    def add(obj: T) -> T:
        if name in _TABLE:
            raise ValueError(f"policy {name!r} is registered twice")
        is_class = isinstance(obj, type)
        build = cast(Callable[[tuple[Any, ...], PolicyContext], Any],
                     obj.build if is_class else obj)  # type: ignore[attr-defined]
        entry = PolicyEntry(name, kind, params, rule, label, build,
                            None if grid is None else tuple(grid), needs_calibration,
                            (lambda args: obj(*args)) if is_class  # type: ignore[operator]
                            and not needs_calibration else None)
        if is_class:
            obj.entry = entry  # type: ignore[attr-defined]
        _TABLE[name] = entry
        return obj

    return add


def entries(kind: Kind | None = None) -> list[PolicyEntry]:
    """Registered entries in registration order (the package imports the length rules
    first, so `none` leads and calibration's candidates start with the target alone)."""
    return [e for e in _TABLE.values() if kind is None or e.kind == kind]


# -- specs ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParsedSpec:
    """A spec split into its policy, optional expander and optional proposer, each (entry,
    arguments)."""

    policy: tuple[PolicyEntry, tuple[Arg | None, ...]]
    proposer: tuple[PolicyEntry, tuple[Arg | None, ...]] | None = None
    expander: tuple[PolicyEntry, tuple[Arg | None, ...]] | None = None


def split_spec(spec: str) -> ParsedSpec:
    """Names and arguments, checked against the table (nothing is built)."""
    parts = [s.strip() for s in spec.split("+")]
    found: dict[Kind, tuple[PolicyEntry, tuple[Arg | None, ...]]] = {}
    for part in parts:
        name, *args = part.split(":")
        known = _TABLE.get(name.strip().lower())
        if known is None:
            raise InvalidRequestError(f"unknown policy {part or spec!r} in {spec!r}; known: "
                                      f"{known_specs()}")
        if known.kind in found:
            raise InvalidRequestError(f"bad policy {spec!r}: at most one policy, one expander "
                                      "and one proposal source (POLICY+EXPANDER+PROPOSER)")
        found[known.kind] = (known, known.parse_args(spec, args))
    if "expander" in found and "policy" not in found:
        raise InvalidRequestError(f"bad policy {spec!r}: {found['expander'][0].name} widens "
                                  "a draft model's chain: name the length policy too "
                                  f"(svip+{found['expander'][0].name})")
    return ParsedSpec(found.get("policy", (_TABLE["none"], ())), found.get("proposer"),
                      found.get("expander"))


def check_spec(spec: str, context: PolicyContext | None = None) -> str:
    """Raise InvalidRequestError for a spec the engine would refuse (an engine like
    `context`: its max_draft and max_copy bound lengths); return it unchanged. Specs that
    need a calibration are checked as far as can be without one."""
    parsed = split_spec(spec)
    for known, args in filter(None, (parsed.policy, parsed.expander, parsed.proposer)):
        known.check_args(args, context or PolicyContext())
        if known.check is not None:
            known.check(args)
    return spec


def build_part(spec: str, kind: Kind) -> Any:
    """A proposal source or an expander alone (`lookup:4:8`, `cape:16`), to add to a plan."""
    name, *args = spec.split(":")
    known = _TABLE.get(name.strip().lower())
    if known is None or known.kind != kind:
        raise InvalidRequestError(f"{spec!r} is not a registered {kind}")
    return known.build(known.parse_args(spec, args), PolicyContext())


def known_specs() -> str:
    """For error messages: every name with its parameters."""
    policies = ", ".join(e.usage for e in entries("policy"))
    expanders = " or ".join(f"+{e.usage}" for e in entries("expander"))
    proposers = " or ".join(f"+{e.usage}" for e in entries("proposer"))
    return f"{policies}; each optionally {expanders}, and {proposers} (or that alone)"


def help_lines() -> Iterator[str]:
    """One line per entry, `usage: rule`, for the CLI's help."""
    for e in entries():
        prefix = "" if e.kind == "policy" else "POLICY+"
        yield f"{prefix}{e.usage}: {e.rule}"


def policy_help() -> str:
    """The text of every `--policy` option."""
    return "draft policy (default: auto). " + "; ".join(help_lines())


def label(spec: str, resolved: str = "") -> str:
    """How a spec reads in a table ("SVIP h=0.3 + prompt lookup 4:8"); `resolved` is what a
    builder such as `auto` resolved to."""
    parsed = split_spec(spec)
    known, args = parsed.policy
    text = known.describe_label(args, resolved)
    if parsed.expander is not None:
        text += " + " + parsed.expander[0].describe_label(parsed.expander[1])
    if parsed.proposer is None:
        return text
    copies = parsed.proposer[0].describe_label(parsed.proposer[1])
    return copies if known.name == "none" else f"{text} + {copies}"


def candidates() -> list[str]:
    """The policy specs calibration simulates (the target alone first)."""
    return list(itertools.chain.from_iterable(e.candidates() for e in entries("policy")))


def part_candidates(kind: Kind) -> list[str]:
    """The proposal-source or expander specs calibration tries on top of the best policies."""
    return list(itertools.chain.from_iterable(e.candidates() for e in entries(kind)))
