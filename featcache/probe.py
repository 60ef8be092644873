"""Phase 2: fit heads on concatenated stores and report a soundly selected accuracy.

Reads only stores (:mod:`featcache.concat`), never a backbone, a model or a dataset. :func:`run_probe` is four steps:

1. open: the stores, the train and test splits, a seeded, stratified ``val_fraction`` of train held out as val
   (:func:`featcache.probe_splits.open_probe`);
2. split: the features held resident, loaded per epoch or streamed, by the budget ``max_memory``
   (:class:`featcache.probe_splits.ProbeSplits`, :mod:`featcache.feed`);
3. solve: the solver fits its grid, selects on val and reads test at the selection (:mod:`featcache.solvers`; SGD
   heads by default, or L-BFGS or k-NN);
4. record: one :class:`ProbeRecord`, built the same way for every solver; with ``save_head``, the selected head
   written beside it (:mod:`featcache.saved_head`: the head test was read with, its classes and feature layout).

Views. On stores with augmented views (``extract --views K``) each SGD epoch trains on one view per image, as the
research code trains on fresh crops: epoch e uses view ``schedule[e]``, a seeded sequence in which every view
is used before one repeats. Val and test are always read on the evaluation view (centre crop).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import torch

from . import __version__
from .devices import resolve_device
from .errors import ProbeError
from .feed import MEMORY_SHARE, view_schedule
from .head_layout import FeatureBlock
from .probe_config import ProbeConfig, config_from, heads_from_preset, probe_key_for
from .probe_splits import ProbeData, ProbeSplits, open_probe, val_split
from .results import ProbeRecord, StoreUsed
from .saved_head import SavedHead, write_head
from .solvers import SolverResult, solver_for
from .solvers.sgd import RESEARCH_NOTE, SELECTION_NOTE
from .store import resolve_stores

__all__ = [
    "ProbeConfig",
    "ProbeError",
    "ProbeOutcome",
    "config_from",
    "fit_probe",
    "outcome_of",
    "run_probe",
    "probe_key_for",
    "resolve_stores",
    "heads_from_preset",
    "val_split",
    "view_schedule",
    "SELECTION_NOTE",
    "RESEARCH_NOTE",
    "MEMORY_SHARE",
]


def run_probe(cfg: ProbeConfig) -> ProbeRecord:
    """Open, split, solve (fit the grid, select on val, read test there), record; returns the results record (not
    yet appended). With ``cfg.save_head`` the selected head is written first.

    Raises:
        StoreError, StoreIncompleteError, StoreMismatchError: stores that cannot be probed together.
        ConfigError: bad hyperparameters or splits; the head cannot be written.
        ProbeError: non-finite features or training loss, or fewer than 2 classes to train on.
    """
    return fit_probe(cfg).record


@dataclass(frozen=True)
class ProbeOutcome:
    """A probe's record and its selected head (None for k-NN, which has no head)."""

    record: ProbeRecord
    head: SavedHead | None


def fit_probe(cfg: ProbeConfig) -> ProbeOutcome:
    """:func:`run_probe`, keeping the selected head too (written to ``cfg.save_head`` when given).

    Raises:
        See :func:`run_probe`.
    """
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    data = open_probe(cfg)
    splits = ProbeSplits(data, cfg, device)
    t_load = time.perf_counter()
    solver = solver_for(cfg.heads if cfg.solver is None else cfg.solver)
    result = solver.fit_select(splits, data.train.dim, data.n_classes, device)
    timings = {"load_s": t_load - t0, **result.timings, "total_s": time.perf_counter() - t0}
    return outcome_of(ProbeRun(cfg, data, solver.name, result, timings, str(device), splits.memory))


def outcome_of(run: ProbeRun) -> ProbeOutcome:
    """A solved probe's record and selected head (written to ``save_head`` when its configuration gives one): what
    :func:`fit_probe` returns, for a probe solved alone or packed (:mod:`featcache.packed`).

    Raises:
        ConfigError: the head cannot be written.
    """
    cfg, data, result = run.config, run.data, run.result
    record = _record(run)
    head = None
    if result.head is not None:
        layout = [FeatureBlock.of(s.name, s.provenance, d) for s, d in zip(data.stores, data.train.dims, strict=True)]
        classes = data.train.classes or [str(c) for c in range(data.n_classes)]
        head = SavedHead.of(record, layout, classes, result.head)
    if cfg.save_head is not None:
        write_head(head, cfg.save_head)
    return ProbeOutcome(record, head)


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
        train_subset=data.train_subset,
        heads=result.grid,
        selected=result.selection,
        research=result.research,
        notes=(*data.notes, *result.notes),
        timings=run.timings,
        device=run.device,
        memory=run.memory,
        versions={"featcache": __version__, "torch": torch.__version__},
    )
