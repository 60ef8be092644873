"""Phase 2: fit linear heads on concatenated stores and report a soundly selected accuracy.

Reads only stores (:mod:`featcache.concat`), never a backbone, a model or a dataset. Protocol:

1. Hold out a seeded, stratified ``val_fraction`` of the train split.
2. Pass A: every weight decay of the grid is a head of one :class:`MultiHeadProbe`, trained on
   train-minus-val and scored on val after each epoch. The (weight decay, epoch) with the best
   val top-1 is selected (ties: the later epoch, then the smaller weight decay).
3. Pass B: the same grid retrained on the whole train split, scored on test after each epoch.
   The reported test accuracy is the selected head's at the selected epoch: test never chose it.
   Pass B also gives the research-style number (best test accuracy over epochs and the grid),
   which is selected on test and labelled so.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .concat import ConcatView
from .devices import resolve_device
from .errors import ConfigError, StoreError
from .heads import HeadConfig, MultiHeadProbe
from .store import Store, store_path

__all__ = [
    "ProbeConfig",
    "run_probe",
    "resolve_stores",
    "heads_from_preset",
    "val_split",
    "SELECTION_NOTE",
    "RESEARCH_NOTE",
]

log = logging.getLogger(__name__)

SELECTION_NOTE = (
    "weight decay and epoch selected on a held-out val split of train; the grid is then retrained on the "
    "full train split and test is read once, at the selected head and epoch"
)
RESEARCH_NOTE = "research-style: best test accuracy over all epochs and weight decays (selected on test)"
MEMORY_SHARE = 0.5  # load the concatenation when it takes at most this share of free (GPU) memory


@dataclass(frozen=True)
class ProbeConfig:
    """One ``featcache probe`` call."""

    stores: tuple[Path, ...]
    heads: HeadConfig
    val_fraction: float = 0.1
    device: str = "auto"
    allow_transform_mix: bool = False
    train_split: str = "train"
    test_split: str | None = None  # default: "test", else "val"
    in_memory: str = "auto"  # auto | yes | no
    preset: str = "seed"
    tag: str = ""
    dataset: str | None = None  # what the caller believes the stores hold (e.g. --dataset); checked

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if self.in_memory not in ("auto", "yes", "no"):
            raise ConfigError(f"--in-memory {self.in_memory!r} is not one of auto, yes, no")
        if not self.stores:
            raise ConfigError("--stores is empty; name at least one store")


def heads_from_preset(preset: dict, weight_decays: Sequence[float], **overrides) -> tuple[HeadConfig, float]:
    """A preset of probes.yaml plus the options given (None: keep the preset's) -> (HeadConfig, val_fraction).

    Raises:
        ConfigError: the preset has keys HeadConfig does not know.
    """
    p = {**preset, **{k: v for k, v in overrides.items() if v is not None}}
    val_fraction = float(p.pop("val_fraction", 0.1))
    p["milestones"] = tuple(p.get("milestones", ()))
    known = {f.name for f in dataclasses.fields(HeadConfig)}
    unknown = sorted(set(p) - known)
    if unknown:
        raise ConfigError(f"probe preset has unknown key(s) {unknown}; known: {', '.join(sorted(known))}")
    return HeadConfig(**p, weight_decays=tuple(weight_decays)), val_fraction


def resolve_stores(
    spec: str, dataset: str, cache_dir: Path, sets: dict[str, Sequence[str]] | None = None
) -> list[Path]:
    """Resolve ``--stores``: store names under ``<cache>/<dataset>/``, checkpoint set names, or paths.

    Raises:
        StoreError: a named store does not exist (the extract command that makes it is suggested).
    """
    out: list[Path] = []
    for token in (t.strip() for t in spec.split(",")):
        if not token:
            continue
        if token in (sets or {}):
            names = list(sets[token])
        else:
            names = [token]
        for name in names:
            path = Path(name) if (name.endswith(".zarr") or os.sep in name) else store_path(cache_dir, dataset, name)
            if not (path / "zarr.json").exists():
                raise StoreError(
                    f"no store {path}; create it with `featcache extract --ckpt {name} --dataset {dataset}`"
                )
            if path not in out:
                out.append(path)
    return out


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


class _Rows:
    """A row subset of a lazy view, as a row source for :class:`MultiHeadProbe`."""

    def __init__(self, view: ConcatView, rows: np.ndarray):
        self.view, self.rows = view, rows

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, idx: np.ndarray) -> np.ndarray:
        return self.view.take(self.rows[np.asarray(idx)])


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _features(view: ConcatView, rows: np.ndarray, device: torch.device, in_memory: bool, copies: int = 1):
    """Rows of ``view``: loaded once (on the GPU when ``copies`` of them fit there), else streamed."""
    if not in_memory:
        return _Rows(view, rows)
    x = torch.from_numpy(view.load(rows))
    fits = copies * x.nbytes < MEMORY_SHARE * _free_bytes(device) if device.type == "cuda" else False
    return x.to(device) if fits else x


def _subset(features, view: ConcatView, all_rows: np.ndarray, rows: np.ndarray):
    """``rows`` (a subset of ``all_rows``) taken from features already loaded for ``all_rows``, or streamed."""
    if isinstance(features, _Rows):
        return _Rows(view, rows)
    pos = torch.from_numpy(np.searchsorted(all_rows, rows)).to(features.device)
    return features.index_select(0, pos)


def _select(history: list[dict], key: str, heads: Sequence[int] | None = None) -> tuple[int, int]:
    """(head, 1-based epoch) with the best ``key`` accuracy among ``heads`` (default all).

    Ties go to the later epoch (the full schedule), then to the earlier head (smaller weight decay).
    """
    heads = range(len(history[0][key])) if heads is None else heads
    acc, epoch, neg_head = max((rec[key][h], e, -h) for e, rec in enumerate(history, 1) for h in heads)
    return -neg_head, epoch


def run_probe(cfg: ProbeConfig) -> dict:
    """Fit the grid, select on val, report test; returns the results record (not yet appended).

    Raises:
        StoreError, StoreIncompleteError, StoreMismatchError: stores that cannot be probed together.
        ConfigError: bad hyperparameters or splits.
    """
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    stores = [Store(p) for p in cfg.stores]
    first = stores[0]
    held = first.provenance.dataset.name
    if cfg.dataset is not None and held != cfg.dataset:
        raise ConfigError(f"store {first.path} holds dataset '{held}', not '{cfg.dataset}'; pass --dataset {held}")
    test_split = cfg.test_split or ("test" if "test" in first.splits else "val")
    for split in (cfg.train_split, test_split):
        if split not in first.splits:
            raise ConfigError(f"store {first.path} has no split '{split}' (it has {', '.join(first.splits)})")
    train = ConcatView(stores, cfg.train_split, allow_transform_mix=cfg.allow_transform_mix)
    test = ConcatView(stores, test_split, allow_transform_mix=cfg.allow_transform_mix)
    if train.classes != test.classes:
        raise StoreError(f"splits '{cfg.train_split}' and '{test_split}' of {first.path} list different classes")
    n_classes = len(train.classes) or int(train.labels.max()) + 1
    # in memory: train is read once, and fit + val are copies taken from it, so train counts twice
    in_memory = cfg.in_memory == "yes" or (
        cfg.in_memory == "auto" and 2 * train.nbytes + test.nbytes < MEMORY_SHARE * _free_bytes(torch.device("cpu"))
    )
    fit_rows, val_rows = val_split(train.labels, train.valid_rows, cfg.val_fraction, cfg.heads.seed)
    test_rows = test.valid_rows
    X = {"train": _features(train, train.valid_rows, device, in_memory, copies=2)}
    X["fit"] = _subset(X["train"], train, train.valid_rows, fit_rows)
    X["val"] = _subset(X["train"], train, train.valid_rows, val_rows)
    X["test"] = _features(test, test_rows, device, in_memory)
    y = {
        "fit": train.labels[fit_rows],
        "val": train.labels[val_rows],
        "train": train.labels[train.valid_rows],
        "test": test.labels[test_rows],
    }
    t_load = time.perf_counter()

    def fit(name: str, eval_name: str) -> MultiHeadProbe:
        probe = MultiHeadProbe(cfg.heads, train.dim, n_classes, device=device)
        return probe.fit(X[name], y[name], eval_sets={eval_name: (X[eval_name], y[eval_name])})

    select = fit("fit", "val")
    final = fit("train", "test")
    h, e = _select(select.history_, "val_top1")
    rh, re_ = _select(final.history_, "test_top1")
    wds = cfg.heads.weight_decays
    heads = []
    for k, wd in enumerate(wds):
        _, ek = _select(select.history_, "val_top1", heads=[k])
        heads.append(
            {
                "weight_decay": wd,
                "val_top1": select.history_[ek - 1]["val_top1"][k],
                "val_epoch": ek,
                "test_top1": final.history_[ek - 1]["test_top1"][k],
                "test_top5": final.history_[ek - 1]["test_top5"][k],
                "best_test_top1": max(r["test_top1"][k] for r in final.history_),
            }
        )
    t_end = time.perf_counter()
    return {
        "id": uuid.uuid4().hex[:12],
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tag": cfg.tag,
        "dataset": first.provenance.dataset.name,
        "features": f"cat{len(stores)}",
        "stores": train.describe(),
        "feature_dim": train.dim,
        "transform": first.provenance.transform_name,
        "precision": first.provenance.precision,
        "splits": {"train": cfg.train_split, "test": test_split},
        "rows": {"fit": len(fit_rows), "val": len(val_rows), "train": len(train.valid_rows), "test": len(test_rows)},
        "preset": cfg.preset,
        "hyperparameters": {**dataclasses.asdict(cfg.heads), "val_fraction": cfg.val_fraction},
        "heads": heads,
        "selected": {
            "weight_decay": wds[h],
            "epoch": e,
            "val_top1": select.history_[e - 1]["val_top1"][h],
            "test_top1": final.history_[e - 1]["test_top1"][h],
            "test_top5": final.history_[e - 1]["test_top5"][h],
            "method": SELECTION_NOTE,
        },
        "research": {
            "test_top1": final.history_[re_ - 1]["test_top1"][rh],
            "weight_decay": wds[rh],
            "epoch": re_,
            "note": RESEARCH_NOTE,
        },
        "timings": {
            "load_s": t_load - t0,
            "select_s": select.seconds_,
            "final_s": final.seconds_,
            "total_s": t_end - t0,
        },
        "device": str(device),
        "in_memory": in_memory,
        "versions": {"featcache": __version__, "torch": torch.__version__},
    }
