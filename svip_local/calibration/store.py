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
from dataclasses import asdict
from pathlib import Path

import platformdirs

from svip_local.calibration.live import LiveModel
from svip_local.calibration.machine import Fingerprint, PairIdentity
from svip_local.calibration.record import Calibration

log = logging.getLogger(__name__)


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


def live_path(pair: PairIdentity, machine: Fingerprint) -> Path:
    """Where the live `auto`'s estimates for this pair on this machine are kept."""
    return calibration_path(pair, machine).with_suffix(".live.json")


def save(cal: Calibration) -> Path:
    return _write(calibration_path(cal.pair, cal.machine), cal.to_dict())


def save_live(pair: PairIdentity, machine: Fingerprint, model: LiveModel) -> Path:
    return _write(live_path(pair, machine), model.to_dict())


def _write(path: Path, data: dict[str, object]) -> Path:
    """Write atomically (temporary name, then rename): a reader never sees half a file, and
    a full disk leaves the old file as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_live(pair: PairIdentity, machine: Fingerprint,
              calibration: Calibration | None = None) -> LiveModel | None:
    """The live estimates a previous session stored, or None (missing or unreadable)."""
    path = live_path(pair, machine)
    try:
        return LiveModel.from_dict(json.loads(path.read_text(encoding="utf-8")), calibration)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring live estimates %s (%s): auto starts afresh", path, exc)
        return None


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
