"""Lazy concatenation of several stores along the feature axis (numpy and zarr only).

The probe phase sees k stores of one split as one (rows, D1 + ... + Dk) matrix. Rows are gathered
from each store's memory-mapped chunks into one preallocated buffer per batch; no concatenated
copy is ever written to disk. Stores are only concatenated when they describe the same samples in
the same order under the same preprocessing.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import numpy as np

from .errors import StoreError, StoreMismatchError
from .store import FeatureArray, SplitReader, Store

__all__ = ["ConcatView", "check_compatible", "check_views"]

log = logging.getLogger(__name__)

# Split metadata that must agree for rows to mean the same samples.
SAME_SAMPLES = ("rows", "ids_sha256", "labels_sha256", "fingerprint")
# Provenance that changes what a feature means; mixing needs --allow-transform-mix.
SAME_PREPROCESSING = ("transform", "preprocess", "precision")


def check_compatible(stores: Sequence[Store], readers: Sequence[SplitReader], allow_transform_mix: bool) -> None:
    """Refuse stores whose rows are different samples, or whose preprocessing differs.

    Raises:
        StoreMismatchError: names both stores, the differing key and both values.
    """
    first, r0 = stores[0], readers[0]
    for store, reader in zip(stores[1:], readers[1:], strict=True):
        what = f"cannot concatenate {first.path} and {store.path}"
        a, b = first.provenance.dataset.name, store.provenance.dataset.name
        if a != b:
            raise StoreMismatchError(f"{what}: datasets differ ({a} vs {b})")
        for key in SAME_SAMPLES:
            va, vb = getattr(r0.meta, key), getattr(reader.meta, key)
            if va != vb:
                raise StoreMismatchError(
                    f"{what}: split '{reader.name}' differs in {key} ({va} vs {vb}); "
                    "they hold different samples or a different sample order: re-extract one of them"
                )
        if allow_transform_mix:
            continue
        for key in SAME_PREPROCESSING:
            va, vb = getattr(first.provenance, key), getattr(store.provenance, key)
            if va != vb:
                raise StoreMismatchError(
                    f"{what}: {key} differs ({_show(va)} vs {_show(vb)}); "
                    "re-extract with the same settings, or pass --allow-transform-mix to mix on purpose"
                )


def _show(value) -> str:
    return str(value.to_dict() if hasattr(value, "to_dict") else value)


def check_views(stores: Sequence[Store], readers: Sequence[SplitReader], count: int) -> None:
    """Refuse to train on views unless every store holds at least ``count`` views of the same crops.

    Raises:
        StoreMismatchError: names the store that differs and how.
    """
    for store, reader in zip(stores, readers, strict=True):
        if reader.n_views < count:
            raise StoreMismatchError(
                f"store {store.path} split '{reader.name}' has {reader.n_views} complete view(s), {count} are "
                f"needed; extract them with `featcache extract --views {count}` or probe with --views none"
            )
    v0 = readers[0].meta.views
    for store, reader in zip(stores[1:], readers[1:], strict=True):
        v = reader.meta.views
        if (v.seed, v.augment) != (v0.seed, v0.augment):
            raise StoreMismatchError(
                f"cannot train on views of {stores[0].path} and {store.path}: their crops differ (seed {v0.seed} "
                f"vs {v.seed}, {v0.augment} vs {v.augment}); re-extract one of them with --views-seed {v0.seed}"
            )


class ConcatView:
    """One split of k stores as a lazy (rows, sum of dims) matrix.

    Args:
        stores: opened stores, concatenated in this order.
        split: the split to read.
        allow_transform_mix: accept stores whose transform, preprocessing or precision differ.

    Raises:
        StoreIncompleteError: a store's split is not complete.
        StoreError: a store fails the cheap structural checks.
        StoreMismatchError: see :func:`check_compatible`.
    """

    def __init__(self, stores: Sequence[Store], split: str, *, allow_transform_mix: bool = False):
        if not stores:
            raise StoreError("no stores to concatenate")
        self.stores = list(stores)
        self.readers = [s.split(split) for s in self.stores]
        for store, reader in zip(self.stores, self.readers, strict=True):
            problems = reader.cheap_problems()
            if problems:
                raise StoreError(f"store {store.path} split '{split}': {problems[0]}; run `featcache verify`")
        check_compatible(self.stores, self.readers, allow_transform_mix)
        shas = [s.provenance.checkpoint.sha256 for s in self.stores]
        if len(set(shas)) < len(shas):
            log.warning("the same checkpoint appears twice among %s", [s.name for s in self.stores])
        self.split = split
        self.arrays: list[FeatureArray] = list(self.readers)  # what take() reads: the evaluation view
        self.view_index: int | None = None
        self.dims = [r.dim for r in self.readers]
        self.offsets = np.concatenate([[0], np.cumsum(self.dims)]).astype(int)
        self.dim = int(self.offsets[-1])
        self.rows = self.readers[0].rows
        kinds = {r.dtype.itemsize for r in self.readers}
        self.dtype = np.dtype(np.float16 if kinds == {2} else np.float32)
        self.labels = self.readers[0].labels
        self.classes = list(self.readers[0].meta.classes)
        skipped = np.unique(np.concatenate([r.skipped_rows for r in self.readers]))
        # rows whose image failed in any store have zero features there: use none of them
        self.valid_rows = np.setdiff1d(np.arange(self.rows), skipped)

    def __len__(self) -> int:
        return self.rows

    @property
    def n_views(self) -> int:
        """Augmented views every store holds (0 if any holds none)."""
        return min(r.n_views for r in self.readers)

    def view(self, k: int) -> ConcatView:
        """The same stores and rows, reading augmented view ``k`` instead of the evaluation view.

        Raises:
            StoreMismatchError: a store has fewer than k + 1 views, or the stores' views are other crops.
        """
        check_views(self.stores, self.readers, k + 1)
        other = copy.copy(self)
        other.arrays, other.view_index = [r.view(k) for r in self.readers], k
        return other

    @property
    def nbytes(self) -> int:
        return self.rows * self.dim * self.dtype.itemsize

    def take(self, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Gather rows ``idx`` of every store into one (len(idx), dim) buffer."""
        idx = np.asarray(idx, dtype=np.int64)
        if out is None:
            out = np.empty((len(idx), self.dim), dtype=self.dtype)
        for array, lo, hi in zip(self.arrays, self.offsets[:-1], self.offsets[1:], strict=True):
            array.take(idx, out[:, lo:hi])
        return out

    def load(self, rows: np.ndarray | None = None, block: int = 8192, finite: bool = False) -> np.ndarray:
        """Materialise ``rows`` (default: all) in memory, reading in blocks to bound temporaries.

        Raises:
            StoreError: with ``finite``, a store's rows hold NaN or Inf (the store and split are named).
        """
        rows = np.arange(self.rows) if rows is None else np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=self.dtype)
        for start in range(0, len(rows), block):
            part = out[start : start + block]
            self.take(rows[start : start + block], part)
            if finite and not np.isfinite(part).all():
                for store, array, lo, hi in zip(
                    self.stores, self.arrays, self.offsets[:-1], self.offsets[1:], strict=True
                ):
                    if not np.isfinite(part[:, lo:hi]).all():
                        raise StoreError(
                            f"store {store.path} split '{self.split}' ({array.label}) holds NaN or Inf features: a "
                            f"damaged chunk or a bad checkpoint; run `featcache verify {store.path}`"
                        )
        return out

    def describe(self) -> list[dict]:
        """One dict per store: name, path, checkpoint and dim (for results records)."""
        return [
            {"name": s.name, "path": str(s.path), "checkpoint": s.provenance.checkpoint.to_dict(), "dim": d}
            for s, d in zip(self.stores, self.dims, strict=True)
        ]
