"""featcache from Python (notebooks, scripts): the functions the CLI itself uses, with plain arguments.

::

    import featcache as fc

    fc.list_stores("cache", dataset="cifar10")                      # StoreSummary per store: status, rows, dim, ...
    fc.api.verify_stores(["run0", "run1"], "cifar10", "cache")         # {store path: [problems]}, [] when sound
    X, y, ids = fc.load_split(["run0", "run1"], "train", dataset="cifar10", cache_dir="cache")  # concatenated
    Xv, _, _ = fc.load_split(["run0", "run1"], "train", dataset="cifar10", cache_dir="cache", view=3)  # view 3
    X, y, ids = fc.load_split("cache/cifar10/run0.zarr", "test", as_torch=True)   # a store given by its path
    store = fc.open_store("cache/cifar10/run0.zarr")                 # .provenance, .split("train").read(), ...
    fc.api.sync_stores("s3://lab/cache", "cache", dataset="cifar10", stores=["run*"])  # pull complete stores
    records = fc.load_results("cache", dataset="cifar10", features="cat5")   # ProbeRecord list, newest first
    fc.results_table(records)                                        # flat dicts (or a DataFrame with pandas=True)
    head = fc.load_head("heads/cifar10-cat5.safetensors")            # a saved head as a torch.nn.Module
    logits = head(X)                                                 # (n, classes); head(X, block=k): store k alone

Stores given by name need ``dataset`` and ``cache_dir``; stores given by path need neither. Everything
raises :class:`featcache.errors.FeatcacheError` subclasses with the messages the CLI prints.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .classmap import check_class_map
from .concat import ConcatView
from .errors import ConfigError, FeatcacheError
from .locations import location
from .results import ProbeRecord, load_records, records_frame, select_records, summary_rows
from .store import Store, StoreSummary, SyncResult, list_stores, open_store, resolve_stores, sync_stores

__all__ = [
    "StoreSummary",
    "SyncResult",
    "open_store",
    "sync_stores",
    "list_stores",
    "verify_stores",
    "load_split",
    "load_results",
    "results_table",
    "load_head",
]

PathLike = str | os.PathLike


def _paths(stores: PathLike | Sequence[PathLike], dataset: str | None, cache_dir: PathLike | None) -> list[Path]:
    # the CLI's resolution: store names under <cache>/<dataset>/, or paths
    items = [stores] if isinstance(stores, str | os.PathLike) else list(stores)
    spec = ",".join(str(s) for s in items)
    return resolve_stores(spec, dataset, location(cache_dir if cache_dir is not None else "cache", "cache_dir"))


def verify_stores(
    stores: Sequence[str], dataset: str | None = None, cache_dir: PathLike | None = None, *, deep: bool = True
) -> dict[str, list[str]]:
    """Check stores chunk by chunk, as ``featcache verify`` does: every problem found, by store.

    A store that cannot be found or opened is a verdict too (its error is its problem), so one bad name never
    hides the verdict on the others.

    Args:
        stores: store names (with ``dataset``), set names or paths, each a ``--stores`` token.
        deep: hash every chunk (False: structure only: markers and chunk sizes).

    Returns:
        ``{store path (or the token that names none): [problems]}``, in the order given; [] for a sound store.
    """
    out: dict[str, list[str]] = {}
    for token in stores:
        try:
            found = _paths(token, dataset, cache_dir)
        except FeatcacheError as e:
            out[str(token)] = [str(e)]
            continue
        for path in found:
            try:
                out[str(path)] = open_store(path).verify(deep=deep)
            except FeatcacheError as e:
                out[str(path)] = [str(e)]
    return out


def load_split(
    stores: PathLike | Sequence[PathLike],
    split: str = "train",
    *,
    dataset: str | None = None,
    cache_dir: PathLike | None = None,
    view: int | None = None,
    rows: Sequence[int] | None = None,
    as_torch: bool = False,
    allow_transform_mix: bool = False,
    keep_skipped: bool = False,
) -> tuple[Any, np.ndarray, list[str]]:
    """Features, labels and sample ids of one split of one or several stores, concatenated along features.

    Args:
        stores: store names (with ``dataset`` and ``cache_dir``) or paths, in concatenation order.
        split: the split to read.
        view: the index (0..K-1) of an augmented view (``extract --views K``) instead of the evaluation view.
        rows: only these rows (default: every row whose image could be decoded in every store).
        as_torch: return the features as a torch tensor (shares the numpy array's memory).
        allow_transform_mix: concatenate stores of different preprocessing (refused by default).
        keep_skipped: keep the rows of undecodable images (zero features) too.

    Returns:
        ``(features (n, D), labels (n,), ids)``: float16 or float32 features, int64 labels, sample ids.

    Raises:
        StoreError, StoreIncompleteError, StoreMismatchError: a store is missing, incomplete, or the stores do not
            hold the same samples or preprocessing (or views, with ``view``), or a store's splits number different
            classes (so labels would disagree between splits).
        ConfigError: store names without ``dataset``; ``view`` not a non-negative integer.
    """
    # bool is an int subclass, and a float or str only failed deep inside the view's chunk paths
    if view is not None and (isinstance(view, bool) or not isinstance(view, numbers.Integral) or view < 0):
        raise ConfigError(
            f"load_split: view must be None or an integer >= 0 (an augmented view index), got {view!r} "
            f"({type(view).__name__})"
        )
    opened = [Store(p) for p in _paths(stores, dataset, cache_dir)]
    for store in opened:
        check_class_map(store, split)
    concat = ConcatView(opened, split, allow_transform_mix=allow_transform_mix)
    if view is not None:
        concat = concat.view(int(view))
    if rows is None:
        rows = np.arange(concat.rows) if keep_skipped else concat.valid_rows
    rows = np.asarray(rows, dtype=np.int64)
    X = concat.load(rows)
    ids = concat.readers[0].ids
    out = X
    if as_torch:
        import torch

        out = torch.from_numpy(X)
    return out, concat.labels[rows], [ids[r] for r in rows]


def load_results(where: PathLike | None = None, patterns: Sequence[str] = (), **fields: Any) -> list[ProbeRecord]:
    """Probe records of a results log, filtered like ``featcache results``; newest first.

    Args:
        where: the log (a ``.jsonl`` file) or the cache dir holding ``results.jsonl``; default ``cache`` in the
            working directory.
        patterns: whole-word patterns.
        fields: exact values of ``dataset``, ``features``, ``tag``, ``preset``, ``solver``, ``views``, ``store``,
            ``id``.

    Returns:
        The matching records; [] (with a warning naming the log) when the default log does not exist yet.

    Raises:
        ResultsError: ``where`` was given and holds no results log (a mistyped path would otherwise read as no
            results), or the log cannot be read.
        ConfigError: an unknown field.
    """
    import logging

    from .results import ResultsError, resolve_log

    path = resolve_log("cache" if where is None else where)
    if not path.exists():
        if where is not None:
            raise ResultsError(f"no results log at {path}; pass the cache dir the probes wrote to, or the .jsonl file "
                               "given to --results")  # fmt: skip
        logging.getLogger(__name__).warning("no results log at %s (the default); pass where= to read another", path)
    return select_records(load_records(path), patterns, **fields)


def results_table(records: Sequence[ProbeRecord], pandas: bool = False):
    """One flat dict per record (the CLI's table columns), or a pandas DataFrame with ``pandas=True``."""
    return records_frame(records) if pandas else summary_rows(records)


def load_head(path: PathLike, device: str = "cpu"):
    """A head saved by ``featcache probe --save-head`` as a ``torch.nn.Module`` (in eval mode, on ``device``).

    ``head(x)`` gives the (n, C) logits of raw (n, D) features concatenated as ``head.layout`` lists the stores (what
    ``load_split`` returns for those stores), in the arithmetic its probe scored test with; ``head(x, block=k)``
    those of store k's block alone. ``head.classes`` names the logits; ``head.probe`` is the probe record it comes
    from (id, key, dataset, splits, selection, test numbers).

    ``device``: ``cpu``, ``cuda[:N]``, or ``auto`` (CUDA when visible).

    Raises:
        ConfigError: not a featcache head, of a newer head format, or damaged; ``cuda`` where none is visible.
    """
    from .saved_head import load_head as _load  # torch: only when a head is loaded

    return _load(path, device)
