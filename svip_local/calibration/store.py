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

from svip_local.calibration.head import AcceptanceHead, HeadMismatch, dump_heads, load_heads
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
    fields = asdict(machine)
    if not fields["rpc"]:  # the key of a machine without RPC is what it was before RPC
        del fields["rpc"]
    key = json.dumps([asdict(pair), fields], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(pair.target).stem)[:40]
    return calibration_dir() / f"{stem}-{digest}.json"


def live_path(pair: PairIdentity, machine: Fingerprint) -> Path:
    """Where the live `auto`'s estimates for this pair on this machine are kept."""
    return calibration_path(pair, machine).with_suffix(".live.json")


def head_path(pair: PairIdentity, machine: Fingerprint) -> Path:
    """Where the calibration's acceptance heads are kept (numpy arrays, beside its JSON)."""
    return calibration_path(pair, machine).with_suffix(".head.npz")


def save(cal: Calibration) -> Path:
    """The calibration, and its acceptance heads beside it (an older head file goes: it
    belongs to the calibration this one replaces)."""
    heads = head_path(cal.pair, cal.machine)
    if cal.heads():
        _write_bytes(heads, dump_heads(cal.heads(), asdict(cal.pair)))
    else:
        heads.unlink(missing_ok=True)
    return _write(calibration_path(cal.pair, cal.machine), cal.to_dict())


def save_live(pair: PairIdentity, machine: Fingerprint, model: LiveModel) -> Path:
    return _write(live_path(pair, machine), model.to_dict())


def _write(path: Path, data: dict[str, object]) -> Path:
    return _write_bytes(path, json.dumps(data, indent=1).encode("utf-8"))


def _write_bytes(path: Path, data: bytes) -> Path:
    """Write atomically (temporary name, then rename): a reader never sees half a file, and
    a full disk leaves the old file as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_live(pair: PairIdentity, machine: Fingerprint,
              calibration: Calibration | None = None) -> LiveModel | None:
    """The live estimates a previous session stored, or None (missing, or unreadable or out
    of range: then the file is moved aside, with a warning naming it, so that the estimates
    this session learns replace it and it is never read again)."""
    path = live_path(pair, machine)
    try:
        return LiveModel.from_dict(json.loads(path.read_text(encoding="utf-8")), calibration)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        aside = path.with_name(path.name + ".bad")
        try:
            path.replace(aside)
            moved = f"moved to {aside.name}"
        except OSError as move:
            moved = f"could not move it aside: {move}"
        log.warning("ignoring live estimates %s (%s; %s): auto starts afresh", path, exc,
                    moved)
        return None


def load(pair: PairIdentity, machine: Fingerprint) -> Calibration | None:
    """The stored calibration, or None (missing, or unreadable: then say why)."""
    path = calibration_path(pair, machine)
    try:
        cal = Calibration.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring calibration %s (%s); run `svip-local calibrate` again", path, exc)
        return None
    cal.attach_heads(_load_heads(head_path(pair, machine), cal))
    return cal


def _load_heads(path: Path, cal: Calibration) -> list[AcceptanceHead]:
    """The heads stored beside a calibration; none (with a warning) where they were trained
    for other files or cannot be read: the calibration stands without them."""
    try:
        return load_heads(path.read_bytes(), asdict(cal.pair))
    except FileNotFoundError:
        return []
    except (HeadMismatch, OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the acceptance head %s (%s): specdec needs `svip-local "
                    "calibrate` again", path, exc)
        return []
