"""The sweep schema moved to :mod:`featcache.config.sweep`; this module keeps the old import path working."""

from .config.sweep import (
    SweepConfig,
    SweepDataset,
    SweepExtract,
    SweepProbe,
    SweepRow,
    find_sweep,
    load_sweep,
    parse_sweep,
)

__all__ = [
    "SweepRow",
    "SweepDataset",
    "SweepExtract",
    "SweepProbe",
    "SweepConfig",
    "find_sweep",
    "load_sweep",
    "parse_sweep",
]
