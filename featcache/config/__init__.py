"""Paths and the YAML registries (checkpoints, datasets, transforms, probe presets), and the option defaults.

Registries are read in layers, later ones adding entries or replacing entries of the same name:

1. the registries that ship inside the package (``featcache/_configs``, the repository's ``configs/``),
2. ``./configs`` of the working directory, when it exists,
3. ``--config-dir`` / ``FEATCACHE_CONFIG``.

Each layer may hold ``checkpoints.yaml``, ``checkpoints.d/*.yaml``, ``datasets.yaml``, ``probes.yaml`` and
``sweeps/*.yaml``. Entries are checked (strictly: :meth:`featcache.records.Record.from_dict`) when a command uses
them, so a broken entry stops only the commands that need it. Everything here is plain data: no torch, so the
probe side and ``--help`` can read the registries too. Registry paths are resolved under their root and may not
escape it.

Modules: :mod:`~featcache.config.paths` (roots), :mod:`~featcache.config.specs` (what entries resolve to),
:mod:`~featcache.config.options` (the options and defaults extract, probe and sweeps share), the tables
(``checkpoints``, ``datasets``, ``presets`` over the ``_layers`` machinery), :mod:`~featcache.config.registry`
(the facade), :mod:`~featcache.config.listing` (``featcache list``) and :mod:`~featcache.config.sweep` (sweep
configs).
"""

from .options import ExtractOptions, ProbeOptions
from .paths import DEFAULTS, ENV, ROOTS, Paths, packaged_config_dir, parse_root, resolve_under
from .registry import Registry, load_registry
from .specs import DEFAULT_PRESET, AugmentSpec, CheckpointSpec, DatasetSpec, ProbePreset, TransformSpec

__all__ = [
    "Paths",
    "CheckpointSpec",
    "AugmentSpec",
    "TransformSpec",
    "DatasetSpec",
    "ProbePreset",
    "ExtractOptions",
    "ProbeOptions",
    "Registry",
    "load_registry",
    "resolve_under",
    "parse_root",
    "packaged_config_dir",
    "ENV",
    "DEFAULTS",
    "ROOTS",
    "DEFAULT_PRESET",
]
