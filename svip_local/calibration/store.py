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
