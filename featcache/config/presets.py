"""The probe presets (``probes.yaml``): ``presets: {name: {head fields, views, val_fraction}}`` -> ProbePreset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import unknown_name
from ._layers import Entry, Table, read_yaml, working
from .specs import ProbePreset

__all__ = ["PresetTable"]


def _reader(doc: Any, where: str):
    return lambda: ProbePreset.from_dict(doc, where, strict=True)


class PresetTable:
    """The probe presets of every layer (``files``: (layer, path) in layer order), checked on first use."""

    def __init__(self, files: list[tuple[int, Path]]):
        self.table = Table("probe preset")
        self.docs: dict[str, Any] = {}  # each name's mapping as written (the layer that won)
        for layer, path in files:
            for name, doc in (read_yaml(path).get("presets") or {}).items():
                where = f"{path}: presets.{name}"
                self.table.add(str(name), layer, Entry(where, _reader(doc, where)))
                self.docs[str(name)] = doc

    def get(self, name: str) -> ProbePreset:
        """The preset ``name``, checked.

        Raises:
            ConfigError: unknown name (closest names suggested), or the entry is not a valid preset (key named).
        """
        if name not in self.table:
            raise unknown_name("probe preset", name, self.table.names())
        return self.table.get(name)

    def doc(self, name: str) -> dict:
        """The preset ``name`` as written (checked first), a dict of its keys.

        Raises:
            ConfigError: see :meth:`get`.
        """
        self.get(name)
        return dict(self.docs[name])

    def working(self) -> dict[str, dict]:
        """Every preset that checks, as written."""
        return {name: dict(self.docs[name]) for name in working(self.table)}
