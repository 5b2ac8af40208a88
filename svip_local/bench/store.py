"""Calibrations on disk: one JSON file per (pair files, machine fingerprint).

The directory is $SVIP_LOCAL_CALIBRATION_DIR, else platformdirs' user cache for svip-local
plus `calibration/`. A calibration is a measurement, so a cache is the right home: losing it
costs one `svip-local calibrate`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from svip_local.bench.costs import CostModel, Fingerprint, PairIdentity
from svip_local.policies_cost import AcceptanceMap

log = logging.getLogger(__name__)

FORMAT = 1


def temperature_label(t: float) -> str:
    """How reports and the CLI name a sampling temperature."""
    return "greedy" if t == 0 else f"temperature {t:g}"


@dataclass
class TemperatureChoice:
    """The choice for generations at one sampling temperature, with what svip-cost needs
    there (acceptance falls as the temperature rises, so each has its own map and rate)."""

    temperature: float
    choice: str  # a policy spec, "none" included
    acceptance: AcceptanceMap
    cost_rate: float  # R of svip-cost (tokens/s)
    simulated: list[dict[str, Any]] = field(default_factory=list)  # every candidate's rates

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "choice": self.choice,
                "acceptance": self.acceptance.to_dict(), "cost_rate": self.cost_rate,
                "simulated": self.simulated}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TemperatureChoice:
        return cls(float(data.get("temperature", 0.0)), data["choice"],
                   AcceptanceMap.from_dict(data["acceptance"]), float(data["cost_rate"]),
                   data.get("simulated", []))


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


def calibration_dir() -> Path:
    env = os.environ.get("SVIP_LOCAL_CALIBRATION_DIR")
    if env:
        return Path(env)
    return Path(platformdirs.user_cache_dir("svip-local")) / "calibration"


def calibration_path(pair: PairIdentity, machine: Fingerprint) -> Path:
    key = json.dumps([asdict(pair), asdict(machine)], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(pair.target).stem)[:40]
    return calibration_dir() / f"{stem}-{digest}.json"


def save(cal: Calibration) -> Path:
    """Write atomically (temporary name, then rename): a reader never sees half a file."""
    path = calibration_path(cal.pair, cal.machine)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(cal.to_dict(), indent=1), encoding="utf-8")
    tmp.replace(path)
    return path


def load(pair: PairIdentity, machine: Fingerprint) -> Calibration | None:
    """The stored calibration, or None (missing, or unreadable: then say why)."""
    path = calibration_path(pair, machine)
    try:
        return Calibration.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring calibration %s (%s); run `svip-local calibrate` again", path, exc)
        return None
