"""The registry: the shipped models.toml plus the user's own, merged by entry name."""

from __future__ import annotations

import difflib
import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from svip_local.errors import InvalidRegistryError, UnknownModelError
from svip_local.registry.spec import PairSpec, parse_document

log = logging.getLogger(__name__)

CONFIG_DIR_ENV = "SVIP_LOCAL_CONFIG_DIR"


@dataclass(frozen=True)
class Registry:
    """Named pairs, read-only. `get` fails with the known names, so a typo is easy to fix."""

    pairs: Mapping[str, PairSpec]
    problems: tuple[str, ...] = ()  # what was wrong in the user's file (and left out)

    def names(self) -> list[str]:
        return sorted(self.pairs)

    def get(self, name: str) -> PairSpec:
        try:
            return self.pairs[name]
        except KeyError:
            close = difflib.get_close_matches(name, self.pairs, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            known = ", ".join(self.names()) or "(none)"
            raise UnknownModelError(
                f"unknown model {name!r}.{hint} Known names: {known}. "
                f"Add your own in {user_registry_file()}."
            ) from None


def user_registry_file() -> Path:
    """Where the user's models.toml lives: $SVIP_LOCAL_CONFIG_DIR or the platform config dir."""
    configured = os.environ.get(CONFIG_DIR_ENV)
    if configured:
        return Path(configured) / "models.toml"
    import platformdirs

    return Path(platformdirs.user_config_dir("svip-local")) / "models.toml"


def load_registry(user_file: Path | None = None, *, strict: bool = False) -> Registry:
    """Read the shipped registry and the user's file; user entries replace shipped ones by name.

    An explicit `user_file` must exist; the default one is optional. A mistake in the user's
    file leaves out what it spoils (an entry, or the whole file when it is not TOML), says so
    in a warning and in `Registry.problems`, and the rest stays usable; `strict` raises
    InvalidRegistryError instead (validating a file).
    """
    shipped = resources.files("svip_local").joinpath("models.toml")
    pairs = _parse(shipped.read_bytes(), "models.toml (shipped with svip-local)", None)
    path = user_file if user_file is not None else user_registry_file()
    problems: list[str] | None = None if strict else []
    if path.is_file():
        pairs.update(_parse(path.read_bytes(), str(path), problems))
    elif user_file is not None:
        raise InvalidRegistryError(f"{path}: no such file")
    for problem in problems or ():
        log.warning("left out of the registry: %s", problem)
    return Registry(pairs=MappingProxyType(pairs), problems=tuple(problems or ()))


def _parse(data: bytes, origin: str, problems: list[str] | None) -> dict[str, PairSpec]:
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        # tomllib's message carries the line and column (and says "twice" for a duplicate name).
        error = InvalidRegistryError(f"{origin}: not valid TOML: {exc}")
        if problems is None:
            raise error from exc
        problems.append(str(error))
        return {}
    return parse_document(document, origin, problems)
