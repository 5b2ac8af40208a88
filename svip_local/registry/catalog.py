"""The registry: the shipped models.toml plus the user's own, merged by entry name."""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from svip_local.errors import InvalidRegistryError, UnknownModelError
from svip_local.registry.spec import PairSpec, parse_document

CONFIG_DIR_ENV = "SVIP_LOCAL_CONFIG_DIR"


@dataclass(frozen=True)
class Registry:
    """Named pairs, read-only. `get` fails with the known names, so a typo is easy to fix."""

    pairs: Mapping[str, PairSpec]

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


def load_registry(user_file: Path | None = None) -> Registry:
    """Read the shipped registry and the user's file; user entries replace shipped ones by name.

    An explicit `user_file` must exist; the default one is optional.
    """
    shipped = resources.files("svip_local").joinpath("models.toml")
    pairs = _parse(shipped.read_bytes(), "models.toml (shipped with svip-local)")
    path = user_file if user_file is not None else user_registry_file()
    if path.is_file():
        pairs.update(_parse(path.read_bytes(), str(path)))
    elif user_file is not None:
        raise InvalidRegistryError(f"{path}: no such file")
    return Registry(pairs=MappingProxyType(pairs))


def _parse(data: bytes, origin: str) -> dict[str, PairSpec]:
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        # tomllib's message carries the line and column (and says "twice" for a duplicate name).
        raise InvalidRegistryError(f"{origin}: not valid TOML: {exc}") from exc
    return parse_document(document, origin)
