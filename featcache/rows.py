"""Feature inputs of the probe's solvers (:mod:`featcache.heads`, :mod:`featcache.logreg`, :mod:`featcache.knn`).

Features are a (N, D) float tensor on any device or a :class:`RowSource` (``take(indices)`` returning numpy rows,
``__len__``); training features that change from epoch to epoch (augmented views) are :class:`EpochFeatures`. This
module defines them and checks them, and reads them by row range.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = ["EpochFeatures", "Features", "RowSource", "check_labels", "check_rows", "read_rows"]


@runtime_checkable
class RowSource(Protocol):
    """Features too big for memory: ``take(indices)`` returns those rows, a numpy (len(indices), D) array."""

    def __len__(self) -> int: ...

    def take(self, indices: np.ndarray) -> np.ndarray: ...


Features = torch.Tensor | RowSource  # (N, D) float tensor on any device, or a row source


@runtime_checkable
class EpochFeatures(Protocol):
    """Training features that change from epoch to epoch (augmented views): ``epoch(e)`` gives epoch e's
    (N, D) :data:`Features`, the same N rows every epoch (row i is always the same sample)."""

    def __len__(self) -> int: ...

    def epoch(self, e: int) -> Features: ...


def read_rows(X: Features, a: int, b: int) -> torch.Tensor:
    """Rows a:b as a tensor: a view of a tensor (on its device), or a row source's rows (on the CPU).

    Raises:
        ValueError: the row source returned something other than b - a float rows.
    """
    if isinstance(X, torch.Tensor):
        return X[a:b]
    rows = np.asarray(X.take(np.arange(a, b)))
    if rows.ndim != 2 or len(rows) != b - a or not np.issubdtype(rows.dtype, np.floating):
        raise ValueError(f"{type(X).__name__}.take returned {rows.dtype} {rows.shape}; expected {b - a} float rows")
    return torch.from_numpy(np.ascontiguousarray(rows))


def check_rows(X: Any, n_features: int, name: str) -> int:
    """The number of rows of ``X``, after checking it is a float (N, n_features) tensor or a row source.

    Raises:
        ValueError: wrong shape or dtype, or no rows.
        TypeError: neither a tensor nor a row source (a numpy array is refused: ``ndarray.take`` flattens).
    """
    if isinstance(X, torch.Tensor):
        if X.ndim != 2 or X.shape[1] != n_features or not X.is_floating_point():
            raise ValueError(f"{name}: need float features of shape (N, {n_features}); got {X.dtype} {tuple(X.shape)}")
    elif isinstance(X, np.ndarray) or not isinstance(X, RowSource):
        raise TypeError(f"{name}: expected a (N, D) tensor or a row source with take(), got {type(X).__name__}")
    if len(X) == 0:
        raise ValueError(f"{name} has no rows")
    return len(X)


def check_labels(y: Any, n: int, n_classes: int, device, name: str) -> torch.Tensor:
    """``y`` as an int64 tensor on ``device``, after checking it holds n labels in [0, n_classes).

    Raises:
        ValueError: wrong shape or dtype, or a label out of range.
    """
    y = torch.as_tensor(y)
    if y.shape != (n,) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{name}: expected {n} integer labels, got {y.dtype} {tuple(y.shape)}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= n_classes:
        raise ValueError(f"{name}: labels span [{lo}, {hi}], outside [0, {n_classes})")
    return y.to(torch.device(device), torch.int64)
