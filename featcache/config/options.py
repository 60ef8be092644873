"""The options an extraction and a probe share with a sweep's ``extract:`` and ``probe:`` sections, and their
defaults: written once here, read by ``featcache extract``/``probe``'s options, by
:class:`~featcache.extract.ExtractConfig` and :class:`~featcache.probe.ProbeConfig`, and by sweep configs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from ..choices import IN_MEMORY
from ..records import Record

__all__ = ["ExtractOptions", "ProbeOptions"]


@dataclass(frozen=True)
class ExtractOptions(Record):
    """Options of an extraction that a sweep sets for all of its extractions, named like ``featcache extract``'s.

    ``preprocess`` is ``--preprocess`` (``ExtractConfig.backend``); ``workers`` defaults to one DataLoader process
    per CPU, at most 8.
    """

    batch_size: int = field(default=256, metadata={"min": 1})
    dtype: str = "float16"
    precision: str = "auto"
    device: str = "auto"
    workers: int = field(default=min(8, os.cpu_count() or 1), metadata={"min": 0})
    preprocess: str = "auto"
    compile: str = "auto"
    chunk_rows: int | None = field(default=None, metadata={"min": 1})
    views_seed: int = field(default=0, metadata={"min": 0, "max": 2**63 - 1})

    def config_fields(self) -> dict[str, Any]:
        """These options as :class:`~featcache.extract.ExtractConfig` fields (``preprocess`` is its ``backend``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["backend"] = out.pop("preprocess")
        return out


@dataclass(frozen=True)
class ProbeOptions(Record):
    """Options of a probe that a sweep sets for all of its probes (``max_memory`` in bytes; None: half of the
    available RAM)."""

    device: str = "auto"
    max_memory: int | None = field(default=None, metadata={"min": 1})
    in_memory: str = field(default=IN_MEMORY[0], metadata={"choices": IN_MEMORY})
