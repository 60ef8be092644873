"""Sweep configs: the YAML schema of ``featcache sweep``, one frozen dataclass per level.

A sweep names *rows* (e.g. cat1, cat2, cat4, cat5), each a list of *draws* (a ``--ckpt`` value whose checkpoints
are concatenated; the draws repeat the row with other checkpoints) and its pretraining budget, and *datasets*
(each with its probe preset, views, epochs and extraction limit; None keeps the registry's default). Files live
in ``sweeps/`` of the registry layers (``configs/sweeps/timecat.yaml``) or anywhere, given by path.

Every key is checked on reading: an unknown key is refused with the known ones listed, and a bad value is
named by file and key (``configs/sweeps/x.yaml: rows.cat2.steps_per_model must be an integer >= 1``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import Registry
from .errors import ConfigError, unknown_name

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

_TOKEN = re.compile(r"^[A-Za-z0-9_.+-]+$")  # names that go into a tag: one whitespace-free word


# `metadata={"min": n}` bounds an integer field
@dataclass(frozen=True)
class SweepRow:
    """One row of the table: ``draws`` repeat the same kind of features (a ``--ckpt`` value each)."""

    name: str
    draws: tuple[str, ...]
    steps_per_model: int | None = field(default=None, metadata={"min": 1})


@dataclass(frozen=True)
class SweepDataset:
    """A dataset of the sweep; None: the registry's default (the dataset's probe preset and its views)."""

    name: str
    preset: str | None = None
    transform: str | None = None
    views: int | None = field(default=None, metadata={"min": 0})
    epochs: int | None = field(default=None, metadata={"min": 1})
    limit: int | None = field(default=None, metadata={"min": 1})


@dataclass(frozen=True)
class SweepExtract:
    """Options of every extraction (named like ``featcache extract``'s; ``workers`` None: as extract's default)."""

    batch_size: int = field(default=256, metadata={"min": 1})
    dtype: str = "float16"
    precision: str = "auto"
    device: str = "auto"
    workers: int | None = field(default=None, metadata={"min": 0})
    preprocess: str = "auto"
    compile: str = "auto"
    chunk_rows: int | None = field(default=None, metadata={"min": 1})
    views_seed: int = field(default=0, metadata={"min": 0})


@dataclass(frozen=True)
class SweepProbe:
    """Options of every probe (``max_memory`` in bytes; None: half of the available RAM)."""

    device: str = "auto"
    max_memory: int | None = field(default=None, metadata={"min": 1})
    in_memory: str = "auto"


@dataclass(frozen=True)
class SweepConfig:
    """A whole sweep. ``source`` is the file it was read from (not a YAML key)."""

    name: str
    rows: tuple[SweepRow, ...]
    datasets: tuple[SweepDataset, ...]
    extract: SweepExtract = SweepExtract()
    probe: SweepProbe = SweepProbe()
    description: str = ""
    source: str = field(default="", metadata={"yaml": False})

    def with_overrides(self, *, draws: int | None = None, epochs: int | None = None, limit: int | None = None,
                       views: int | None = None, datasets: Sequence[str] | None = None) -> SweepConfig:  # fmt: skip
        """The same sweep, smaller: the first ``draws`` of each row, these datasets only, and ``epochs``,
        ``limit``, ``views`` for every dataset (None: keep). The code path is the same.

        Raises:
            ConfigError: a dataset that the sweep does not have.
        """
        rows = tuple(dataclasses.replace(r, draws=r.draws[:draws]) if draws else r for r in self.rows)
        known = [d.name for d in self.datasets]
        for name in datasets or ():
            if name not in known:
                raise unknown_name("dataset", name, known, f"in sweep '{self.name}' ({self.source})")
        over = {k: v for k, v in (("epochs", epochs), ("limit", limit), ("views", views)) if v is not None}
        chosen = tuple(dataclasses.replace(d, **over) for d in self.datasets if not datasets or d.name in datasets)
        return dataclasses.replace(self, rows=rows, datasets=chosen)


def _check(tp: Any, value: Any, where: str, low: int | None) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None:
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if tp is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return str(value)
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool) or (low is not None and value < low):
            raise ConfigError(f"{where} must be an integer{f' >= {low}' if low is not None else ''}, got {value!r}")
        return value
    if typing.get_origin(tp) is tuple:  # tuple[str, ...]: a list of strings, or one string
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise ConfigError(f"{where} must be a non-empty list, got {value!r}")
        return tuple(_check(str, v, f"{where}[{k}]", None) for k, v in enumerate(items))
    raise TypeError(f"no check for {tp}")  # a schema field of a type _check does not know: a bug here


def _build(cls: type, doc: Any, where: str, **given: Any) -> Any:
    """``cls`` from a YAML mapping, each value checked against its field's type; unknown keys refused."""
    keys = [f for f in dataclasses.fields(cls) if f.name not in given and f.metadata.get("yaml", True)]
    known = ", ".join(f.name for f in keys)
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{where} must be a mapping (keys: {known}), got {doc!r}")
    unknown = sorted(str(k) for k in doc if str(k) not in {f.name for f in keys})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {known}")
    hints = typing.get_type_hints(cls)
    out = dict(given)
    for f in keys:
        if f.name in doc:
            out[f.name] = _check(hints[f.name], doc[f.name], f"{where}.{f.name}", f.metadata.get("min"))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing key '{f.name}'")
    return cls(**out)


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str | int) or not _TOKEN.match(str(value)):
        raise ConfigError(f"{where}: {value!r} must be one word of letters, digits, '_', '.', '+' or '-'")
    return str(value)


def _no_repeats(row: SweepRow, source: str) -> None:
    """Refuse a draw listed twice in a row: the mean and spread over draws would count its result twice."""
    seen: dict[str, int] = {}
    for k, draw in enumerate(row.draws):
        first = seen.setdefault(",".join(t.strip() for t in draw.split(",") if t.strip()), k)
        if first != k:
            raise ConfigError(
                f"{source}: rows.{row.name}.draws: draw {k} ({draw}) repeats draw {first}; each draw counts once in "
                "the mean ± std over draws: remove it or name other checkpoints"
            )


def parse_sweep(doc: Any, source: str, default_name: str) -> SweepConfig:
    """Validate a sweep document (parsed YAML).

    Raises:
        ConfigError: the message names the file and the key (``rows.cat2.draws``) and says what is allowed.
    """
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: a sweep config is a mapping with keys rows, datasets, ...; got {doc!r}")
    known = [f.name for f in dataclasses.fields(SweepConfig) if f.metadata.get("yaml", True)]
    unknown = sorted(str(k) for k in doc if str(k) not in known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    name = _name(doc.get("name", default_name), f"{source}: name")
    top = _build(SweepConfig, {k: v for k, v in doc.items() if k == "description"}, source, name=name, rows=(),
                 datasets=(), extract=SweepExtract(), probe=SweepProbe())  # fmt: skip
    for key in ("rows", "datasets"):
        if not doc.get(key):
            raise ConfigError(f"{source}: missing key '{key}' (a mapping of {key} to run)")
    if not isinstance(doc["rows"], dict):
        raise ConfigError(f"{source}: rows must map row names (cat1, ...) to {{draws: [...], steps_per_model: N}}")
    rows = tuple(
        _build(SweepRow, entry, f"{source}: rows.{row}", name=_name(row, f"{source}: rows"))
        for row, entry in doc["rows"].items()
    )
    for row in rows:
        _no_repeats(row, source)
    datasets = doc["datasets"]
    if isinstance(datasets, list):  # a list of names: every dataset with its defaults
        datasets = {name: None for name in datasets}
    if not isinstance(datasets, dict):
        raise ConfigError(f"{source}: datasets must be a list of dataset names or a mapping of name to options")
    return dataclasses.replace(
        top,
        rows=rows,
        datasets=tuple(
            _build(SweepDataset, entry, f"{source}: datasets.{d}", name=str(d)) for d, entry in datasets.items()
        ),
        extract=_build(SweepExtract, doc.get("extract"), f"{source}: extract"),
        probe=_build(SweepProbe, doc.get("probe"), f"{source}: probe"),
        source=source,
    )


def find_sweep(spec: str, reg: Registry) -> Path:
    """A sweep config by path, or by name in ``sweeps/`` of the registry layers (the last layer wins).

    Raises:
        ConfigError: no such file, or an unknown name (the known ones listed).
    """
    if spec.endswith((".yaml", ".yml")) or os.sep in spec:
        if not Path(spec).is_file():
            raise ConfigError(f"sweep config {spec} not found; give a YAML path or a name from sweeps/")
        return Path(spec)
    found = {p.stem: p for d in reg.dirs for p in sorted((d / "sweeps").glob("*.yaml"))}
    if spec not in found:
        raise unknown_name("sweep", spec, found, "or give a YAML path")
    return found[spec]


def load_sweep(spec: str, reg: Registry) -> SweepConfig:
    """Find (see :func:`find_sweep`), read and validate a sweep config.

    Raises:
        ConfigError: not found, not YAML, or not a valid sweep (the key is named).
    """
    path = find_sweep(spec, reg)
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"sweep config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise ConfigError(f"sweep config {path} cannot be read ({e.strerror})") from None
    return parse_sweep(doc, str(path), path.stem)
