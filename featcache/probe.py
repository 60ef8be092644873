"""Phase 2: fit heads on concatenated stores and report a soundly selected accuracy.

Reads only stores (:mod:`featcache.concat`), never a backbone, a model or a dataset. :func:`run_probe` is four steps:

1. open: the stores, the train and test splits, a seeded, stratified ``val_fraction`` of train held out as val
   (:func:`featcache.probe_splits.open_probe`);
2. split: the features held resident, loaded per epoch or streamed, by the budget ``max_memory``
   (:class:`featcache.probe_splits.ProbeSplits`, :mod:`featcache.feed`);
3. solve: the solver fits its grid, selects on val and reads test at the selection (:mod:`featcache.solvers`; SGD
   heads by default, or L-BFGS or k-NN);
4. record: one :class:`ProbeRecord`, built the same way for every solver.

Views. On stores with augmented views (``extract --views K``) each SGD epoch trains on one view per image, as the
research code trains on fresh crops: epoch e uses view ``schedule[e]``, a seeded sequence in which every view
is used before one repeats. Val and test are always read on the evaluation view (centre crop).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .devices import resolve_device
from .errors import ConfigError, ProbeError
from .feed import MEMORY_SHARE, view_schedule
from .heads import HeadConfig
from .logreg import LogRegConfig
from .probe_splits import ProbeData, ProbeSplits, open_probe, val_split
from .results import ProbeRecord, StoreUsed, ViewsUsed, record_key
from .solvers import SolverConfig, SolverResult, solver_for
from .solvers.sgd import RESEARCH_NOTE, SELECTION_NOTE
from .store import Store, resolve_stores

__all__ = [
    "ProbeConfig",
    "ProbeError",
    "run_probe",
    "resolve_stores",
    "heads_from_preset",
    "val_split",
    "view_schedule",
    "SELECTION_NOTE",
    "RESEARCH_NOTE",
    "MEMORY_SHARE",
]

PRESET_KEYS = ("val_fraction", "views")  # preset keys that are not HeadConfig fields


@dataclass(frozen=True)
class ProbeConfig:
    """One ``featcache probe`` call.

    ``views``: augmented views to train on (None: every view the stores share; 0: centre crops only).
    ``max_memory``: bytes of RAM the features may take (None: MEMORY_SHARE of what is available).
    ``in_memory``: ``auto`` plans by the budget; ``yes`` forces resident, ``no`` streaming.
    """

    stores: tuple[Path, ...]
    heads: HeadConfig
    val_fraction: float = 0.1
    device: str = "auto"
    allow_transform_mix: bool = False
    train_split: str | None = None  # default: "train", else the stores' first split
    test_split: str | None = None  # default: "test", else "val"
    views: int | None = None
    max_memory: int | None = None
    in_memory: str = "auto"
    preset: str = "cifar"
    tag: str = ""
    dataset: str | None = None  # what the caller believes the stores hold (e.g. --dataset); checked
    allow_same_split: bool = False
    solver: SolverConfig | None = None  # None: the SGD heads of ``heads``; else L-BFGS or k-NN on the same splits

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if self.in_memory not in ("auto", "yes", "no"):
            raise ConfigError(f"--in-memory {self.in_memory!r} is not one of auto, yes, no")
        if not self.stores:
            raise ConfigError("--stores is empty; name at least one store")
        if self.views is not None and self.views < 0:
            raise ConfigError(f"--views must be a count >= 0 or 'none', got {self.views}")
        if self.max_memory is not None and self.max_memory <= 0:
            raise ConfigError(f"--max-memory must be a positive size, got {self.max_memory}")
        if self.solver is not None and self.views:
            raise ConfigError("--solver lbfgs and knn fit the evaluation view only: pass --views none")

    @property
    def solver_name(self) -> str:
        return "sgd" if self.solver is None else "lbfgs" if isinstance(self.solver, LogRegConfig) else "knn"


def heads_from_preset(
    preset: dict, weight_decays: Sequence[float] | None = None, **overrides
) -> tuple[HeadConfig, float]:
    """A preset of probes.yaml plus the options given (None: keep the preset's) -> (HeadConfig, val_fraction).

    ``weight_decays`` (or the preset's ``weight_decays``) is the grid; ``views`` is read by the caller.

    Raises:
        ConfigError: the preset has keys HeadConfig does not know, or no weight-decay grid.
    """
    p = {**preset, **{k: v for k, v in overrides.items() if v is not None}}
    val_fraction = float(p.pop("val_fraction", 0.1))
    p.pop("views", None)
    if weight_decays is not None:
        p["weight_decays"] = tuple(weight_decays)
    if "weight_decays" not in p:
        raise ConfigError("the probe preset has no weight_decays; add them to probes.yaml or pass --wd")
    p["milestones"] = tuple(p.get("milestones", ()))
    known = {f.name for f in dataclasses.fields(HeadConfig)}
    unknown = sorted(set(p) - known)
    if unknown:
        raise ConfigError(
            f"probe preset has unknown key(s) {unknown}; known: {', '.join(sorted(known | set(PRESET_KEYS)))}"
        )
    return HeadConfig(**p), val_fraction


def run_probe(cfg: ProbeConfig) -> ProbeRecord:
    """Open, split, solve (fit the grid, select on val, read test there), record; returns the results record (not
    yet appended).

    Raises:
        StoreError, StoreIncompleteError, StoreMismatchError: stores that cannot be probed together.
        ConfigError: bad hyperparameters or splits.
        ProbeError: non-finite features or training loss, or fewer than 2 classes to train on.
    """
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    data = open_probe(cfg)
    splits = ProbeSplits(data, cfg, device)
    t_load = time.perf_counter()
    solver = solver_for(cfg.heads if cfg.solver is None else cfg.solver)
    result = solver.fit_select(splits, data.train.dim, data.n_classes, device)
    timings = {"load_s": t_load - t0, **result.timings, "total_s": time.perf_counter() - t0}
    return _record(ProbeRun(cfg, data, solver.name, result, timings, str(device), splits.memory))


@dataclass(frozen=True)
class ProbeRun:
    """Everything a probe's record is made of: what was asked, the data, the solver's result, how it ran."""

    config: ProbeConfig
    data: ProbeData
    solver: str
    result: SolverResult
    timings: dict[str, float]
    device: str
    memory: str  # resident | per-epoch | streamed, "on GPU" when there


def _record(run: ProbeRun) -> ProbeRecord:
    cfg, data, result = run.config, run.data, run.result
    stores, train = data.stores, data.train
    first = stores[0].provenance
    return ProbeRecord(
        id=uuid.uuid4().hex[:12],
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        tag=cfg.tag,
        dataset=first.dataset.name,
        features=f"cat{len(stores)}",
        stores=tuple(StoreUsed.of(s.name, s.path, s.provenance, d) for s, d in zip(stores, train.dims, strict=True)),
        feature_dim=train.dim,
        transform=first.transform_name,
        precision=first.precision,
        train_split=train.split,
        test_split=data.test.split,
        rows=data.rows,
        preset=cfg.preset,
        solver=run.solver,
        hyperparameters={**result.hyperparameters, "val_fraction": cfg.val_fraction},
        views=data.views,
        heads=result.grid,
        selected=result.selection,
        research=result.research,
        notes=(*data.notes, *result.notes),
        timings=run.timings,
        device=run.device,
        memory=run.memory,
        versions={"featcache": __version__, "torch": torch.__version__},
    )


def probe_key_for(cfg: ProbeConfig, stores: Sequence[Store] | None = None) -> str:
    """The :attr:`ProbeRecord.key` that :func:`run_probe` gives ``cfg``'s record, known before probing.

    Reads only the stores' metadata (provenance, splits, views) and builds the key from the same
    :class:`StoreUsed` and :class:`ViewsUsed` entries that :func:`run_probe` records, so a sweep can tell
    whether a probe is already in the results log.

    Args:
        cfg: the probe as it would run.
        stores: ``cfg.stores`` already opened (default: open them).

    Returns:
        The key, a 16-hex-digit string.

    Raises:
        StoreError: a store cannot be opened, or lacks the train split.
    """
    stores = [Store(p) for p in cfg.stores] if stores is None else list(stores)
    first = stores[0]
    train_split = cfg.train_split or ("train" if "train" in first.splits else first.splits[0])
    test_split = cfg.test_split or next((s for s in ("test", "val") if s in first.splits), None)
    count = cfg.views if cfg.views is not None else min(s.split_meta(train_split).n_views for s in stores)
    made = first.split_meta(train_split).views  # run_probe records the first store's crops (all share them)
    views = ViewsUsed(count, made.seed, dict(made.augment)) if count and made is not None else ViewsUsed(count)
    hyperparameters = dataclasses.asdict(cfg.heads if cfg.solver is None else cfg.solver)
    return record_key(
        dataset=first.provenance.dataset.name,
        stores=[StoreUsed.of(s.name, s.path, s.provenance, s.provenance.feature_dim) for s in stores],
        train_split=train_split,
        test_split=test_split,
        preset=cfg.preset,
        solver=cfg.solver_name,
        hyperparameters={**hyperparameters, "val_fraction": cfg.val_fraction},
        views=views,
    )
