"""Sweep configs: the YAML schema of ``featcache sweep``, one frozen dataclass per level.

A sweep names *rows* (e.g. cat1, cat2, cat4, cat5), each a list of *draws* (a ``--ckpt`` value whose checkpoints
are concatenated; the draws repeat the row with other checkpoints) and its pretraining budget, and *datasets*
(each with its probe preset, views, epochs and extraction limit; None keeps the registry's default). Its
``extract:`` and ``probe:`` sections are :class:`ExtractOptions` and :class:`ProbeOptions`, the options (and
defaults) of ``featcache extract`` and ``probe``. Files live in ``sweeps/`` of the registry layers
(``configs/sweeps/timecat.yaml``) or anywhere, given by path.

``fidelity`` (:mod:`featcache.fidelity`) is ``fast`` (the default: the ``extract:`` section as written) or
``strict``: the research pipeline, PIL preprocessing, an fp32 forward pass not compiled, float32 stores
(:data:`~featcache.fidelity.STRICT` is set on the ``extract:`` section; a key there that says otherwise is refused).

Every key is checked on reading (:meth:`Record.from_dict` with ``strict=True``): an unknown key is refused with
the known ones listed, and a bad value is named by file and key
(``configs/sweeps/x.yaml: rows.cat2.steps_per_model must be an integer >= 1``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..choices import FIDELITIES
from ..errors import ConfigError, unknown_name
from ..fidelity import STRICT
from ..records import Record, document_keys
from .options import ExtractOptions, ProbeOptions
from .registry import Registry

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
SweepExtract = ExtractOptions  # the sweep's `extract:` section (the name before ExtractOptions)
SweepProbe = ProbeOptions  # the sweep's `probe:` section


@dataclass(frozen=True)
class SweepRow(Record):
    """One row of the table: ``draws`` repeat the same kind of features (a ``--ckpt`` value each)."""

    name: str
    draws: tuple[str, ...] = field(metadata={"min_items": 1})
    steps_per_model: int | None = field(default=None, metadata={"min": 1})


@dataclass(frozen=True)
class SweepDataset(Record):
    """A dataset of the sweep; None: the registry's default (the dataset's probe preset and its views)."""

    name: str
    preset: str | None = None
    transform: str | None = None
    views: int | None = field(default=None, metadata={"min": 0})
    epochs: int | None = field(default=None, metadata={"min": 1})
    limit: int | None = field(default=None, metadata={"min": 1})


@dataclass(frozen=True)
class SweepConfig(Record):
    """A whole sweep. ``source`` is the file it was read from (not a YAML key)."""

    name: str
    rows: tuple[SweepRow, ...]
    datasets: tuple[SweepDataset, ...]
    extract: ExtractOptions = ExtractOptions()
    probe: ProbeOptions = ProbeOptions()
    description: str = ""
    fidelity: str = field(default=FIDELITIES[0], metadata={"choices": FIDELITIES})
    # what makes the sweep's checkpoints when they are missing (e.g. "featcache demo"); said in that error
    checkpoints_from: str = ""
    # each probe's selected head: written to <cache>/heads/<sweep>/<dataset>/<row>-d<k>.safetensors (save_heads),
    # scored on each dataset of `eval` (DATASET or DATASET@SPLIT; their stores extracted by the sweep too), and
    # per model block on its own test split (per_model, rows of 2 models or more); one record each
    save_heads: bool = False
    eval: tuple[str, ...] = ()
    per_model: bool = False
    source: str = field(default="", metadata={"read": False})

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
    known = document_keys(SweepConfig)
    unknown = sorted(str(k) for k in doc if str(k) not in known)
    if unknown:  # before anything else: a misspelt top-level key would otherwise read as a missing one
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    name = _name(doc.get("name", default_name), f"{source}: name")
    for key in ("rows", "datasets"):
        if not doc.get(key):
            raise ConfigError(f"{source}: missing key '{key}' (a mapping of {key} to run)")
    if not isinstance(doc["rows"], dict):
        raise ConfigError(f"{source}: rows must map row names (cat1, ...) to {{draws: [...], steps_per_model: N}}")
    rows = tuple(
        SweepRow.from_dict(entry, f"{source}: rows.{row}", strict=True, given={"name": _name(row, f"{source}: rows")})
        for row, entry in doc["rows"].items()
    )
    for row in rows:
        _no_repeats(row, source)
    datasets = doc["datasets"]
    if isinstance(datasets, list):  # a list of names: every dataset with its defaults
        datasets = {name: None for name in datasets}
    if not isinstance(datasets, dict):
        raise ConfigError(f"{source}: datasets must be a list of dataset names or a mapping of name to options")
    given = {"name": name, "rows": rows, "datasets": tuple(
        SweepDataset.from_dict(entry, f"{source}: datasets.{d}", strict=True, given={"name": str(d)})
        for d, entry in datasets.items()
    )}  # fmt: skip
    rest = {k: v for k, v in doc.items() if k not in given}
    sweep = SweepConfig.from_dict(rest, source, strict=True, given=given)
    if sweep.fidelity == "strict":
        sweep = dataclasses.replace(sweep, extract=_strict(sweep.extract, doc.get("extract"), source))
    return dataclasses.replace(sweep, source=source)


def _strict(extract: ExtractOptions, written: Any, source: str) -> ExtractOptions:
    """``extract`` with the strict profile's options; a key written otherwise in the sweep is refused."""
    for key, value in STRICT.items():
        if isinstance(written, dict) and key in written and str(written[key]) != value:
            raise ConfigError(
                f"{source}: extract.{key} is {written[key]!r} but fidelity: strict extracts with {key} {value}; "
                f"remove extract.{key}, or use fidelity: fast"
            )
    return dataclasses.replace(extract, **STRICT)


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
