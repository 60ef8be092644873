"""The registry: one facade over the checkpoint, dataset and probe-preset tables of every layer.

Layers are read first to last (:meth:`Paths.config_dirs`), each table on first use, each entry when a command
uses it: a broken entry stops only the commands that need it.
"""

from __future__ import annotations

import functools
from pathlib import Path

from ._layers import working
from .checkpoints import CheckpointTables
from .datasets import DatasetTables
from .paths import Paths
from .presets import PresetTable
from .specs import CheckpointSpec, DatasetSpec, ProbePreset, TransformSpec

__all__ = ["Registry", "load_registry"]


class Registry:
    """All registry layers of :meth:`Paths.config_dirs`, resolved against :class:`Paths` on first use."""

    def __init__(self, paths: Paths):
        self.paths = paths
        self.dirs = paths.config_dirs()

    def _files(self, name: str) -> list[tuple[int, Path]]:
        return [(k, d / name) for k, d in enumerate(self.dirs) if (d / name).is_file()]

    # --- the tables, read on first use ---------------------------------------------------------------------------
    @functools.cached_property
    def checkpoint_tables(self) -> CheckpointTables:
        files = self._files("checkpoints.yaml")
        for k, d in enumerate(self.dirs):
            files += [(k, p) for p in sorted((d / "checkpoints.d").glob("*.yaml"))]
        return CheckpointTables(sorted(files, key=lambda f: f[0]), self.paths.checkpoints)

    @functools.cached_property
    def dataset_tables(self) -> DatasetTables:
        return DatasetTables(self._files("datasets.yaml"), self.paths.data)

    @functools.cached_property
    def preset_table(self) -> PresetTable:
        return PresetTable(self._files("probes.yaml"))

    # --- checkpoints ---------------------------------------------------------------------------------------------
    @property
    def checkpoints(self) -> dict[str, CheckpointSpec]:
        """Every checkpoint entry that builds (broken ones are left out; using one by name raises)."""
        return working(self.checkpoint_tables.ckpts)

    @property
    def sets(self) -> dict[str, tuple[str, ...]]:
        """Every set entry that builds (broken ones are left out; using one by name raises)."""
        return working(self.checkpoint_tables.sets)

    def checkpoint(self, name: str) -> CheckpointSpec:
        """The registered checkpoint ``name`` (see :meth:`CheckpointTables.checkpoint`)."""
        return self.checkpoint_tables.checkpoint(name)

    def expand_checkpoints(self, spec: str, arch: str | None = None) -> list[CheckpointSpec]:
        """Resolve ``--ckpt`` (see :meth:`CheckpointTables.expand`)."""
        return self.checkpoint_tables.expand(spec, arch)

    # --- datasets and transforms ---------------------------------------------------------------------------------
    def dataset_names(self) -> list[str]:
        return self.dataset_tables.names()

    def dataset(self, name: str) -> DatasetSpec:
        """Resolve ``--dataset`` (see :meth:`DatasetTables.dataset`)."""
        return self.dataset_tables.dataset(name)

    @property
    def transforms(self) -> dict[str, TransformSpec]:
        table = self.dataset_tables.transforms
        return {name: table.get(name) for name in table.names()}

    def transform(self, dataset: DatasetSpec, name: str | None) -> TransformSpec:
        """The preset behind ``--transform name`` for ``dataset`` (see :meth:`DatasetTables.transform`)."""
        return self.dataset_tables.transform(dataset, name)

    # --- probe presets -------------------------------------------------------------------------------------------
    @property
    def probe_presets(self) -> dict[str, dict]:
        """Every preset that checks, as written in probes.yaml."""
        return self.preset_table.working()

    def probe_preset(self, name: str) -> dict:
        """The probe preset ``name`` as written, a dict of its keys (checked first: see :meth:`preset`)."""
        return self.preset_table.doc(name)

    def preset(self, name: str) -> ProbePreset:
        """The probe preset ``name``, typed.

        Raises:
            ConfigError: unknown name (closest names suggested), or a key that is not a preset's or a bad value.
        """
        return self.preset_table.get(name)

    def preset_for(self, dataset: str) -> str:
        """The probe preset a dataset names (imagefolder datasets use the template's), else the default."""
        return self.dataset_tables.preset_for(dataset)


def load_registry(paths: Paths) -> Registry:
    """The registry layers for ``paths`` (read lazily, entry by entry).

    Raises:
        ConfigError: an explicitly given config dir does not exist.
    """
    return Registry(paths)
