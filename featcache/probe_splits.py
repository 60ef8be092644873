"""The probe's first two steps: open the stores and cut the splits (:func:`open_probe`), then hold the features the
way the budget allows (:class:`ProbeSplits`, what every solver is handed).

Train is split into fit and a seeded, stratified ``val_fraction`` of val; train (fit + val) and test keep all their
usable rows, unless ``train_fraction`` keeps only the research low-shot subset of train (:mod:`featcache.lowshot`).
Views: on stores with augmented views each epoch trains on one view per image, epoch e on view ``schedule[e]``
(:func:`featcache.feed.view_schedule`); val and test are always read on the evaluation view.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .classmap import split_class_mismatch
from .concat import ConcatView
from .errors import ConfigError, ProbeError, StoreError, StoreIncompleteError
from .feed import Arrays, Feed, Rows, fits_gpu, load, plan_memory, train_feed, view_schedule
from .heads import HeadConfig
from .lowshot import TrainFraction, describe, subset_rows
from .probe_config import default_splits
from .results_record import TrainSubset, ViewsUsed
from .store import Store

__all__ = ["ProbeData", "ProbeInputs", "ProbeSplits", "open_probe", "val_split"]

log = logging.getLogger(__name__)


class ProbeInputs(Protocol):
    """What these steps read of a :class:`featcache.probe.ProbeConfig` (see there; named here so that this module
    does not import the one that runs it)."""

    stores: Sequence[Path]
    heads: HeadConfig  # its seed draws val; its epochs and seed, the view schedule
    val_fraction: float
    allow_transform_mix: bool
    train_split: str | None
    test_split: str | None
    views: int | None
    max_memory: int | None
    in_memory: str
    dataset: str | None
    allow_same_split: bool
    train_fraction: TrainFraction | None  # the research low-shot subset of train; None: all of it
    opened: tuple[Store, ...] | None  # the stores, when the config builder opened them already


@dataclass(frozen=True)
class ProbeData:
    """The stores of a probe opened and checked, its splits chosen and train cut into fit and val (store rows)."""

    stores: list[Store]
    train: ConcatView
    test: ConcatView
    n_classes: int
    fit_rows: np.ndarray
    val_rows: np.ndarray
    views: ViewsUsed  # the augmented views the heads train on
    notes: list[str]  # classes a split lacks (also logged)
    train_subset: TrainSubset | None = None  # the low-shot subset train was cut to

    @property
    def rows(self) -> dict[str, int]:
        """The record's row counts: fit, val, train, test."""
        return {"fit": len(self.fit_rows), "val": len(self.val_rows), "train": len(self.train.valid_rows),
                "test": len(self.test.valid_rows)}  # fmt: skip


def open_probe(cfg: ProbeInputs) -> ProbeData:
    """Open ``cfg``'s stores, choose and check the splits, cut val from train.

    Raises:
        StoreError, StoreIncompleteError, StoreMismatchError: stores that cannot be probed together.
        ConfigError: splits that do not exist, or train and test the same split.
        ProbeError: fewer than 2 classes, or too few rows, to train on.
    """
    stores, train, test = _open(cfg)
    subset = None
    if cfg.train_fraction is not None:
        train, subset = _low_shot(train, stores[0], cfg.train_fraction)
    n_classes = len(train.classes) or int(max(train.labels.max(), test.labels.max())) + 1
    fit_rows, val_rows = val_split(train.labels, train.valid_rows, cfg.val_fraction, cfg.heads.seed)
    # a low-shot subset too small is fixed by a larger fraction; --limit only makes the stores smaller
    more = (f"a larger --train-fraction than {cfg.train_fraction.percent:g}%" if subset is not None
            else "extract more of the split (a larger --limit)")  # fmt: skip
    notes = _class_notes(train, test, fit_rows, val_rows, n_classes, more)
    for what, n, need in (("fit rows", len(fit_rows), 2), ("val rows", len(val_rows), 1),
                          (f"rows of '{test.split}'", len(test.valid_rows), 1)):  # fmt: skip
        if n < need:
            raise ProbeError(
                f"{len(train.valid_rows)} usable rows of '{train.split}' leave {n} {what} (a class needs 2 rows "
                f"to give one to val); a probe needs more samples: {more}"
            )
    return ProbeData(stores, train, test, n_classes, fit_rows, val_rows, _views_used(train, cfg), notes, subset)


def _low_shot(train: ConcatView, first: Store, fraction: TrainFraction) -> tuple[ConcatView, TrainSubset]:
    """``train`` with only the usable rows of the research subset (every store of a probe holds the same rows)."""
    ref = first.provenance.dataset
    rows = subset_rows(fraction, ref.format, train.rows, limit=ref.limit, where=f"store {first.path}")
    cut = copy.copy(train)  # views taken from it (ConcatView.view) keep the cut
    cut.valid_rows = np.intersect1d(train.valid_rows, rows)
    log.info("--train-fraction %s: %d of %d train rows", fraction, len(cut.valid_rows), len(train.valid_rows))
    return cut, TrainSubset(**describe(fraction, ref.format), rows=len(cut.valid_rows))


class ProbeSplits:
    """A probe's splits for its solver (:class:`featcache.solvers.Splits`), held as the budget allows.

    The training features (every view trained on, or the evaluation view) are resident, per epoch or streamed
    (:func:`featcache.feed.plan_memory`; on a GPU when they fit it too); val and test are loaded now, unless
    streaming. ``memory`` says which, for the record.
    """

    def __init__(self, data: ProbeData, cfg: ProbeInputs, device: torch.device):
        train, test, heads = data.train, data.test, cfg.heads
        self.data, self.sources = data, ", ".join(s.name for s in data.stores)
        views = data.views.count
        keys: list[int | None] = list(range(views)) if views else [None]
        mode = plan_memory(cfg.in_memory, cfg.max_memory, train, test, len(keys), len(data.fit_rows),
                           len(data.val_rows))  # fmt: skip
        on_gpu = device.type == "cuda" and mode == "resident" and fits_gpu(train, test, len(keys), device)
        where = device if on_gpu else torch.device("cpu")
        self.memory = mode + (" on GPU" if on_gpu else "")
        self.arrays = Arrays(train, train.valid_rows, keys, mode, where, cfg.max_memory)
        self.fit_pos = np.searchsorted(train.valid_rows, data.fit_rows)
        self.schedule = [keys[0]] * heads.epochs if views == 0 else view_schedule(views, heads.epochs, heads.seed)
        if mode == "streamed":
            X_val, X_test = Rows(train, data.val_rows), Rows(test, test.valid_rows)
        else:
            val_pos = np.searchsorted(train.valid_rows, data.val_rows)
            resident = None in self.arrays.resident
            X_val = self.arrays.get(None, val_pos) if resident else load(train, data.val_rows).to(where)
            X_test = load(test, test.valid_rows).to(where)
        self.y_train = train.labels[train.valid_rows]
        self._sets: dict[str, tuple[Any, np.ndarray]] = {
            "val": (X_val, train.labels[data.val_rows]),
            "test": (X_test, test.labels[test.valid_rows]),
        }

    def __getitem__(self, name: str) -> tuple[Any, np.ndarray]:
        """(features, labels) of fit, val, train or test on the evaluation view (fit and train read when asked)."""
        if name not in self._sets:
            positions = {"fit": self.fit_pos, "train": None}[name]
            y = self.y_train if positions is None else self.y_train[positions]
            self._sets[name] = (self.arrays.get(None, positions), y)
        return self._sets[name]

    def training(self, name: str) -> tuple[Feed, np.ndarray]:
        """(feed, labels) of fit or train: a new feed of the scheduled views (streamed: block-shuffled)."""
        positions = {"fit": self.fit_pos, "train": None}[name]
        y = self.y_train if positions is None else self.y_train[positions]
        return train_feed(self.arrays, positions, self.schedule), y


def val_split(labels: np.ndarray, rows: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rows`` into (fit, val), stratified by ``labels[rows]``, reproducible from ``seed``.

    Every class with at least 2 rows keeps at least one row on each side.
    """
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels[rows]):
        members = rows[labels[rows] == c]
        k = int(round(fraction * len(members)))
        k = min(max(k, 1), len(members) - 1) if len(members) > 1 else 0
        val.append(rng.permutation(members)[:k])
    val_rows = np.sort(np.concatenate(val)) if val else np.array([], dtype=np.int64)
    return np.setdiff1d(rows, val_rows), val_rows


def _open(cfg: ProbeInputs) -> tuple[list[Store], ConcatView, ConcatView]:
    stores = list(cfg.opened) if cfg.opened is not None else [Store(p) for p in cfg.stores]  # opened once
    for store in stores:
        store.refuse_damaged()  # a verify verdict stands until a repair or a new extraction clears it
    first = stores[0]
    held = first.provenance.dataset.name
    if cfg.dataset is not None and held != cfg.dataset:
        raise ConfigError(f"store {first.path} holds dataset '{held}', not '{cfg.dataset}'; pass --dataset {held}")
    train_split, test_split = default_splits(first.splits, cfg.train_split, cfg.test_split)
    if not {train_split, test_split} <= set(first.splits):
        first.refuse_if_being_written()  # a split still to come is not a missing one
    if train_split is None:
        raise StoreIncompleteError(f"store {first.path} has no splits; rerun the `featcache extract` that made it")
    if test_split is None:
        raise ConfigError(f"store {first.path} has no test or val split (it has {', '.join(first.splits)}); "
                          "pass --test-split")  # fmt: skip
    for option, split in (("--train-split", train_split), ("--test-split", test_split)):
        if split not in first.splits:
            raise ConfigError(
                f"{option} {split}: store {first.path} has no such split (it has {', '.join(first.splits)})"
            )
    if train_split == test_split and not cfg.allow_same_split:
        raise ConfigError(
            f"--train-split and --test-split are both '{train_split}': the test number would be measured on "
            "training data; pick another --test-split, or pass --allow-same-split to do it on purpose"
        )
    train = ConcatView(stores, train_split, allow_transform_mix=cfg.allow_transform_mix)
    test = ConcatView(stores, test_split, allow_transform_mix=cfg.allow_transform_mix)
    if train.classes != test.classes:
        raise StoreError(split_class_mismatch(first.path, train_split, train.classes, test_split, test.classes))
    return stores, train, test


def _class_notes(train: ConcatView, test: ConcatView, fit_rows, val_rows, n_classes: int, more: str) -> list[str]:
    """Refuse a train split with fewer than 2 classes (``more``: what gives it more samples); name the classes a
    split lacks (a skewed probe)."""
    names = train.classes or [str(c) for c in range(n_classes)]

    def present(labels) -> set[int]:
        return set(np.unique(labels).tolist())

    tr, fit, val, te = (present(x) for x in (train.labels[train.valid_rows], train.labels[fit_rows],
                                             train.labels[val_rows], test.labels[test.valid_rows]))  # fmt: skip
    if len(tr) < 2:
        raise ProbeError(
            f"split '{train.split}' holds {len(tr)} class(es) ({', '.join(names[c] for c in sorted(tr))}); "
            f"a probe needs at least 2: {more}, or another split"
        )
    notes = []
    for what, missing in (
        (f"not in val (a single '{train.split}' row each, kept for fitting)", fit - val),
        (f"in '{train.split}' but not in '{test.split}'", tr - te),
        (f"in '{test.split}' but not in '{train.split}': no head can predict them", te - tr),
    ):
        if missing:
            shown = ", ".join(names[c] for c in sorted(missing)[:10]) + (" ..." if len(missing) > 10 else "")
            notes.append(f"{len(missing)} class(es) {what}: {shown}")
    for n in notes:
        log.warning("%s", n)
    return notes


def _views_used(train: ConcatView, cfg: ProbeInputs) -> ViewsUsed:
    count = train.n_views if cfg.views is None else cfg.views
    if count == 0:
        return ViewsUsed(0)
    meta = train.view(count - 1).readers[0].meta.views  # view() checks every store has the same crops
    return ViewsUsed(count, meta.seed, dict(meta.augment))
