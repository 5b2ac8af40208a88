"""What `svip-local calibrate` chose for one pair on one machine, as it is stored.

The greedy choice's fields stay at the top level of the JSON, where format 1 always had them;
choices per sampling temperature follow in `sampled` (absent from older files).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

from svip_local.calibration.acceptance import AcceptanceMap
from svip_local.calibration.copies import CopyModel
from svip_local.calibration.costs import CostModel
from svip_local.calibration.head import AcceptanceHead
from svip_local.calibration.machine import Fingerprint, PairIdentity

FORMAT = 1
LENT_TEMPERATURE = 1.0  # where a calibration without sampled choices lends its greedy one
T = TypeVar("T")


def temperature_label(t: float) -> str:
    """How reports and the CLI name a sampling temperature."""
    return "greedy" if t == 0 else f"temperature {t:g}"


def nearest(options: Sequence[T], temperature: float, temperature_of: Callable[[T], float]
            ) -> T:
    """The option calibrated at the temperature nearest `temperature` (the first of a tie):
    what a generation at `temperature` runs, whether a calibrated choice or its strategy."""
    return min(options, key=lambda o: abs(temperature_of(o) - temperature))


@dataclass
class TemperatureChoice:
    """The choice for generations at one sampling temperature, with what svip-cost needs
    there (acceptance falls as the temperature rises, so each has its own map and rate)."""

    temperature: float
    choice: str  # a policy spec, "none" included
    acceptance: AcceptanceMap
    cost_rate: float  # R of svip-cost (tokens/s)
    simulated: list[dict[str, Any]] = field(default_factory=list)  # every candidate's rates
    # Held-out validation (`bench.calibrate_search.HeldOut`): in_sample, held_out, choices.
    validation: dict[str, Any] = field(default_factory=dict)
    # The learnt acceptance head (stored beside the JSON, `store`) and what `specdec` and
    # `specdec-cost` run with by default; how well each acceptance predictor did on held-out
    # prompts (`bench.predictors`).
    head: AcceptanceHead | None = None
    head_threshold: float | None = None
    head_rate: float | None = None
    predictors: dict[str, Any] = field(default_factory=dict)
    # The copy model fitted on this temperature's traces (`calibration.copies`; None in
    # older files: `auto` then starts from the prior one), and how well it predicted
    # copies on held-out prompts (`bench.copy_fit.compare`).
    copies: CopyModel | None = None
    copy_prediction: dict[str, Any] = field(default_factory=dict)
    # The greedy choice lent to sampling by a calibration without sampled choices
    # (`Calibration.choices`); never stored.
    lent: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "choice": self.choice,
                "acceptance": self.acceptance.to_dict(), "cost_rate": self.cost_rate,
                "simulated": self.simulated, "validation": self.validation,
                "head_threshold": self.head_threshold, "head_rate": self.head_rate,
                "predictors": self.predictors,
                "copies": None if self.copies is None else self.copies.to_dict(),
                "copy_prediction": self.copy_prediction}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TemperatureChoice:
        copies = data.get("copies")
        return cls(float(data.get("temperature", 0.0)), data["choice"],
                   AcceptanceMap.from_dict(data["acceptance"]), float(data["cost_rate"]),
                   data.get("simulated", []), data.get("validation", {}), None,
                   data.get("head_threshold"), data.get("head_rate"),
                   data.get("predictors", {}),
                   None if copies is None else CopyModel.from_dict(copies),
                   data.get("copy_prediction", {}))


@dataclass
class Calibration:
    """What `svip-local calibrate` measured and chose for one pair on one machine: the greedy
    choice, and one per sampling temperature calibrated (none in older files)."""

    pair: PairIdentity
    machine: Fingerprint
    greedy: TemperatureChoice
    costs: CostModel
    sampled: list[TemperatureChoice] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # prompts, lengths, when

    @property
    def choice(self) -> str:
        return self.greedy.choice

    @property
    def choices(self) -> list[TemperatureChoice]:
        """The choice per temperature. One made without sampled choices (older files, or a
        greedy calibration) chose on greedy traces only: sampling borrows the greedy choice,
        marked `lent` (it then runs without the copies and trees greedy traces priced)."""
        if self.sampled:
            return [self.greedy, *self.sampled]
        return [self.greedy, replace(self.greedy, temperature=LENT_TEMPERATURE, lent=True)]

    def choice_at(self, temperature: float) -> TemperatureChoice:
        """The choice a generation at `temperature` runs: every reader of a calibration's
        choices (`calibrated`, `auto`, the cost-aware rules, the live estimates) asks here."""
        return nearest(self.choices, temperature, lambda c: c.temperature)

    def heads(self) -> list[AcceptanceHead]:
        return [c.head for c in (self.greedy, *self.sampled) if c.head is not None]

    def attach_heads(self, heads: list[AcceptanceHead]) -> None:
        """Give each temperature's choice the head trained at its temperature."""
        by_temperature = {h.temperature: h for h in heads}
        for c in (self.greedy, *self.sampled):
            c.head = by_temperature.get(c.temperature)

    def to_dict(self) -> dict[str, Any]:
        # The greedy choice's fields stay at the top level, where format 1 always had them.
        return {"format": FORMAT, "pair": asdict(self.pair), "machine": asdict(self.machine),
                **self.greedy.to_dict(), "costs": self.costs.to_dict(),
                "sampled": [c.to_dict() for c in self.sampled], "settings": self.settings}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        if data.get("format") != FORMAT:
            raise ValueError(f"calibration format {data.get('format')!r}, expected {FORMAT}")
        return cls(PairIdentity(**data["pair"]), Fingerprint(**data["machine"]),
                   TemperatureChoice.from_dict(data), CostModel.from_dict(data["costs"]),
                   [TemperatureChoice.from_dict(c) for c in data.get("sampled", [])],
                   data.get("settings", {}))
