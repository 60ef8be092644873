"""Phase 2: fit heads on concatenated stores and report a soundly selected accuracy.

Reads only stores (:mod:`featcache.concat`), never a backbone, a model or a dataset. The SGD protocol:

1. Hold out a seeded, stratified ``val_fraction`` of the train split.
2. Select pass: every point of the grid (weight decays, optionally x learning rates) is a head of one
   :class:`MultiHeadProbe`, trained on train-minus-val and scored on val after each epoch. The (head, epoch)
   with the best val top-1 is selected (ties: the later epoch, then the earlier head).
3. Final pass: the same grid retrained on the whole train split, scored on test after each epoch. The
   reported test accuracy is the selected head's at the selected epoch: test never chose it. This pass also
   gives the research-style number (best test accuracy over epochs and grid), selected on test and labelled so.

Views. On stores with augmented views (``extract --views K``) each epoch trains on one view per image, as the
research code trains on fresh crops: epoch e uses view ``schedule[e]``, a seeded sequence in which every view
is used before one repeats. Val and test are always read on the evaluation view (centre crop).

Memory: :mod:`featcache.feed` holds the training features resident, loads one view per epoch, or streams them
from the stores, by the budget (``max_memory``). Resident and per-epoch give the same numbers; streaming reads
chunk-aligned blocks in a shuffled order with rows shuffled within a buffer of blocks (not a full permutation).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .classmap import split_class_mismatch
from .concat import ConcatView
from .devices import resolve_device
from .errors import ConfigError, FeatcacheError, StoreError, StoreIncompleteError
from .feed import MEMORY_SHARE, Arrays, Rows, fits_gpu, load, plan_memory, train_feed, view_schedule
from .heads import HeadConfig, MultiHeadProbe, NonFiniteLossError
from .logreg import LogRegConfig
from .results import GridPoint, ProbeRecord, ResearchNumber, Selection, StoreUsed, ViewsUsed, record_key
from .solvers import SolverConfig, run_solver
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

log = logging.getLogger(__name__)

SELECTION_NOTE = (
    "selected on a held-out val split of train (head and epoch); the grid is then retrained on the full train "
    "split and test is read once, at the selected head and epoch"
)
RESEARCH_NOTE = "research-style: best test accuracy over all epochs and grid points (selected on test)"
PRESET_KEYS = ("val_fraction", "views")  # preset keys that are not HeadConfig fields


class ProbeError(FeatcacheError):
    """The probe cannot give a sound number (non-finite features or loss, too few classes, ...)."""


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


def _select(history: list[dict], key: str, heads: Sequence[int] | None = None) -> tuple[int, int]:
    """(head, 1-based epoch) with the best ``key`` accuracy among ``heads`` (default all).

    Ties go to the later epoch (the full schedule), then to the earlier head (smaller weight decay).
    """
    heads = range(len(history[0][key])) if heads is None else heads
    acc, epoch, neg_head = max((rec[key][h], e, -h) for e, rec in enumerate(history, 1) for h in heads)
    return -neg_head, epoch


def _open(cfg: ProbeConfig) -> tuple[list[Store], ConcatView, ConcatView]:
    stores = [Store(p) for p in cfg.stores]
    for store in stores:
        store.refuse_damaged()  # a verify verdict stands until a repair or a new extraction clears it
    first = stores[0]
    held = first.provenance.dataset.name
    if cfg.dataset is not None and held != cfg.dataset:
        raise ConfigError(f"store {first.path} holds dataset '{held}', not '{cfg.dataset}'; pass --dataset {held}")
    train_split = cfg.train_split or ("train" if "train" in first.splits else next(iter(first.splits), None))
    test_split = cfg.test_split or next((s for s in ("test", "val") if s in first.splits), None)
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


def _class_notes(train: ConcatView, test: ConcatView, fit_rows, val_rows, n_classes: int) -> list[str]:
    """Refuse a train split with fewer than 2 classes; name the classes a split lacks (a skewed probe)."""
    names = train.classes or [str(c) for c in range(n_classes)]

    def present(labels) -> set[int]:
        return set(np.unique(labels).tolist())

    tr, fit, val, te = (present(x) for x in (train.labels[train.valid_rows], train.labels[fit_rows],
                                             train.labels[val_rows], test.labels[test.valid_rows]))  # fmt: skip
    if len(tr) < 2:
        raise ProbeError(
            f"split '{train.split}' holds {len(tr)} class(es) ({', '.join(names[c] for c in sorted(tr))}); "
            "a probe needs at least 2: extract more samples (a larger --limit) or another split"
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


def _views_used(train: ConcatView, cfg: ProbeConfig) -> ViewsUsed:
    count = train.n_views if cfg.views is None else cfg.views
    if count == 0:
        return ViewsUsed(0)
    meta = train.view(count - 1).readers[0].meta.views  # view() checks every store has the same crops
    return ViewsUsed(count, meta.seed, dict(meta.augment))


def run_probe(cfg: ProbeConfig) -> ProbeRecord:
    """Fit the grid, select on val, report test; returns the results record (not yet appended).

    Raises:
        StoreError, StoreIncompleteError, StoreMismatchError: stores that cannot be probed together.
        ConfigError: bad hyperparameters or splits.
        ProbeError: non-finite features or training loss, or fewer than 2 classes to train on.
    """
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    stores, train, test = _open(cfg)
    n_classes = len(train.classes) or int(max(train.labels.max(), test.labels.max())) + 1
    fit_rows, val_rows = val_split(train.labels, train.valid_rows, cfg.val_fraction, cfg.heads.seed)
    notes = _class_notes(train, test, fit_rows, val_rows, n_classes)
    for what, n, need in (("fit rows", len(fit_rows), 2), ("val rows", len(val_rows), 1),
                          (f"rows of '{test.split}'", len(test.valid_rows), 1)):  # fmt: skip
        if n < need:
            raise ProbeError(
                f"{len(train.valid_rows)} usable rows of '{train.split}' leave {n} {what} (a class needs 2 rows "
                "to give one to val); a probe needs more samples: extract a larger split or --limit"
            )
    views = _views_used(train, cfg)
    keys: list[int | None] = list(range(views.count)) if views.count else [None]
    mode = plan_memory(cfg.in_memory, cfg.max_memory, train, test, len(keys), len(fit_rows), len(val_rows))
    on_gpu = device.type == "cuda" and mode == "resident" and fits_gpu(train, test, len(keys), device)
    where = device if on_gpu else torch.device("cpu")
    arrays = Arrays(train, train.valid_rows, keys, mode, where, cfg.max_memory)
    fit_pos = np.searchsorted(train.valid_rows, fit_rows)
    val_pos = np.searchsorted(train.valid_rows, val_rows)
    schedule = (
        [keys[0]] * cfg.heads.epochs
        if views.count == 0
        else view_schedule(views.count, cfg.heads.epochs, cfg.heads.seed)
    )
    if mode == "streamed":
        X_val, X_test = Rows(train, val_rows), Rows(test, test.valid_rows)
    else:
        X_val = arrays.get(None, val_pos) if None in arrays.resident else load(train, val_rows).to(where)
        X_test = load(test, test.valid_rows).to(where)
    y_train = train.labels[train.valid_rows]
    t_load = time.perf_counter()
    if cfg.solver is not None:
        splits = {
            "fit": (arrays.get(None, fit_pos), y_train[fit_pos]),
            "val": (X_val, train.labels[val_rows]),
            "train": (arrays.get(None, None), y_train),
            "test": (X_test, test.labels[test.valid_rows]),
        }
        heads, selection, hyper, timings, more = run_solver(cfg.solver, splits, train.dim, n_classes, device)
        record = _record(cfg, stores, train, test, views, notes + more, hyper, heads, selection, None)
        timings = {"load_s": t_load - t0, **timings, "total_s": time.perf_counter() - t0}
    else:
        record, timings = _fit_sgd(cfg, stores, train, test, arrays, (fit_pos, val_rows), schedule,
                                   (X_val, X_test), views, notes, n_classes, device)  # fmt: skip
        timings = {"load_s": t_load - t0, **timings, "total_s": time.perf_counter() - t0}
    rows = {"fit": len(fit_rows), "val": len(val_rows), "train": len(train.valid_rows), "test": len(test.valid_rows)}
    memory = mode + (" on GPU" if on_gpu else "")
    return dataclasses.replace(record, rows=rows, timings=timings, device=str(device), memory=memory)


def _fit_sgd(cfg, stores, train, test, arrays, rows, schedule, evals, views, notes, n_classes, device):
    """The select pass (fit -> val) and the final pass (train -> test) of the SGD grid; (record, timings)."""
    (fit_pos, val_rows), (X_val, X_test) = rows, evals
    y_train = train.labels[train.valid_rows]

    def fit(positions: np.ndarray | None, eval_name: str, X_eval, y_eval) -> MultiHeadProbe:
        probe = MultiHeadProbe(cfg.heads, train.dim, n_classes, device=device)
        y = y_train if positions is None else y_train[positions]
        try:
            X = train_feed(arrays, positions, schedule)  # streamed: block-shuffled, see featcache.feed
            return probe.fit(X, y, eval_sets={eval_name: (X_eval, y_eval)})
        except NonFiniteLossError as e:
            grid = cfg.heads.grid
            which = ", ".join(f"lr={grid[h][0]:g} wd={grid[h][1]:g}" for h in e.heads)
            raise ProbeError(
                f"training loss of head(s) {which} became non-finite at epoch {e.epoch} on stores "
                f"{', '.join(s.name for s in stores)}: check them with `featcache verify`, or lower --lr"
            ) from None

    select = fit(fit_pos, "val", X_val, train.labels[val_rows])
    final = fit(None, "test", X_test, test.labels[test.valid_rows])
    hyper = dataclasses.asdict(cfg.heads)
    record = _record(cfg, stores, train, test, views, notes, hyper, *_sgd_results(cfg, select, final, n_classes))
    return record, {"select_s": select.seconds_, "final_s": final.seconds_}


def _sgd_results(cfg: ProbeConfig, select: MultiHeadProbe, final: MultiHeadProbe, n_classes: int):
    """(grid points, selection, research number) from the select and final passes' histories."""
    grid = cfg.heads.grid
    lr_grid = cfg.heads.lrs is not None

    def params(h: int) -> dict[str, float]:
        lr, wd = grid[h]
        return {"lr": lr, "weight_decay": wd} if lr_grid else {"weight_decay": wd}

    def top5(e: int, h: int) -> float | None:
        return final.history_[e - 1]["test_top5"][h] if n_classes >= 6 else None

    heads = []
    for h in range(len(grid)):
        _, eh = _select(select.history_, "val_top1", heads=[h])
        heads.append(
            GridPoint(
                params=params(h),
                val_top1=select.history_[eh - 1]["val_top1"][h],
                val_epoch=eh,
                test_top1=final.history_[eh - 1]["test_top1"][h],
                test_top5=top5(eh, h),
                best_test_top1=max(r["test_top1"][h] for r in final.history_),
            )
        )
    h, e = _select(select.history_, "val_top1")
    rh, re_ = _select(final.history_, "test_top1")
    selected = Selection(
        params=params(h),
        epoch=e,
        val_top1=select.history_[e - 1]["val_top1"][h],
        test_top1=final.history_[e - 1]["test_top1"][h],
        test_top5=top5(e, h),
        method=SELECTION_NOTE,
    )
    research = ResearchNumber(final.history_[re_ - 1]["test_top1"][rh], params(rh), re_, RESEARCH_NOTE)
    return tuple(heads), selected, research


def _record(cfg, stores, train, test, views, notes, hyperparameters, heads, selected, research) -> ProbeRecord:
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
        test_split=test.split,
        rows={},
        preset=cfg.preset,
        solver=cfg.solver_name,
        hyperparameters={**hyperparameters, "val_fraction": cfg.val_fraction},
        views=views,
        heads=heads,
        selected=selected,
        research=research,
        notes=tuple(notes),
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
