"""Registry machinery: YAML files read in layers, entries built (and checked) on first use.

A :class:`_Table` holds one kind of entry across the layers: a name registered twice within a layer is an error
(for that name only), a later layer replaces an entry of the same name. Entries are built lazily, so a broken entry
stops only the commands that use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

__all__ = ["Entry", "Table", "raiser", "read_yaml", "working"]


def read_yaml(path: Path) -> dict:
    """A registry file's top-level mapping.

    Raises:
        ConfigError: missing, unreadable, not YAML, or not a mapping (the file is named).
    """
    try:
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"registry file {path} not found; pass --config-dir or set FEATCACHE_CONFIG") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"registry file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise ConfigError(f"registry file {path} cannot be read ({e.strerror})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"registry file {path} must hold a mapping at top level")
    return doc


@dataclass
class Entry:
    """A registry entry as read: where it came from and a function that builds (and checks) it on first use."""

    where: str
    build: Callable[[], Any]


class Table:
    """One kind of registry entry across layers: a duplicate within a layer is an error, a later layer overrides."""

    def __init__(self, kind: str):
        self.kind = kind
        self.entries: dict[str, Entry] = {}
        self._layer: dict[str, int] = {}
        self._built: dict[str, Any] = {}

    def add(self, name: str, layer: int, entry: Entry, others: tuple[Table, ...] = ()) -> None:
        """Register ``name`` from ``layer``; ``others`` are tables whose names this one may not reuse in a layer."""
        for table in (self, *others):
            if table._layer.get(name) == layer:
                what = "registered twice" if table is self else f"already a {table.kind}"
                self.entries[name] = Entry(entry.where, raiser(f"{entry.where}: {self.kind} name '{name}' is {what}"))
                return
        for table in others:  # a later layer's entry of another kind replaces this name too
            table.entries.pop(name, None)
        self.entries[name], self._layer[name] = entry, layer

    def get(self, name: str) -> Any:
        """The built entry ``name`` (built once).

        Raises:
            ConfigError: the entry is broken (its message names the file and key).
        """
        if name not in self._built:
            self._built[name] = self.entries[name].build()
        return self._built[name]

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return list(self.entries)

    def problems(self) -> dict[str, str]:
        """Why each broken entry does not build, by name (for ``featcache list``)."""
        out = {}
        for name in self.names():
            try:
                self.get(name)
            except ConfigError as e:
                out[name] = str(e)
        return out


def working(table: Table) -> dict[str, Any]:
    """Every entry of ``table`` that builds, by name (broken ones are left out; using one by name raises)."""
    out = {}
    for name in table.names():
        try:
            out[name] = table.get(name)
        except ConfigError:
            continue
    return out


def raiser(message: str) -> Callable[[], Any]:
    """A build function that fails with ``message``: a broken entry, kept so that using it says why."""

    def fail() -> Any:
        raise ConfigError(message)

    return fail
