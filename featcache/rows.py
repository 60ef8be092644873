"""Feature inputs of the probe's solvers (:mod:`featcache.heads`, :mod:`featcache.logreg`, :mod:`featcache.knn`).

Features are a (N, D) float tensor on any device or a :class:`RowSource` (``take(indices)`` returning numpy rows,
``__len__``); training features that change from epoch to epoch (augmented views) are :class:`EpochFeatures`. This
module defines them and checks them, and reads them by row range: as they are, or standardised (L-BFGS).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = [
    "EpochFeatures",
    "Features",
    "RowSource",
    "StandardisedBlocks",
    "check_labels",
    "check_rows",
    "column_moments",
    "free_bytes",
    "read_rows",
]


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


def free_bytes(device: torch.device) -> int:
    """Free memory on ``device``: the GPU's, else the available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@torch.no_grad()
def column_moments(X: Features, n_features: int, block_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and population std (D,) float64 of X's columns, read ``block_rows`` rows at a time; a constant
    column gets std 1 (as scikit-learn's StandardScaler)."""
    s1 = torch.zeros(n_features, dtype=torch.float64)
    s2 = torch.zeros(n_features, dtype=torch.float64)
    n = len(X)
    for a in range(0, n, block_rows):
        # float64 on the features' device: sums of squares minus the squared mean lose nothing there
        x = read_rows(X, a, min(a + block_rows, n)).double()
        s1 += x.sum(0).cpu()
        s2 += (x * x).sum(0).cpu()
    mean = s1 / n
    std = (s2 / n - mean * mean).clamp_min_(0).sqrt_()
    return mean, torch.where(std > 0, std, torch.ones_like(std))


class StandardisedBlocks:
    """Rows of a feature set, standardised with given statistics and served as (z, y) blocks on the device.

    Resident (standardised once, kept on the device) when ``resident``; otherwise read, moved and standardised
    block by block at every pass.
    """

    def __init__(self, X: Features, y: torch.Tensor | None, mean, inv_std, dtype, device, block_rows, resident):
        self.X, self.y, self.n = X, y, len(X)
        self.mean, self.inv_std, self.dtype, self.device = mean, inv_std, dtype, device
        self.bounds = [(a, min(a + block_rows, self.n)) for a in range(0, self.n, block_rows)]
        self.Z: torch.Tensor | None = None
        if resident:
            Z = torch.empty(self.n, len(mean), dtype=dtype, device=device)
            for a, b in self.bounds:
                Z[a:b] = self._standardised(a, b)
            self.Z, self.bounds = Z, [(0, self.n)]

    def _standardised(self, a: int, b: int) -> torch.Tensor:
        # Out of place first: ``to`` returns the caller's own rows when device and dtype already match.
        return (read_rows(self.X, a, b).to(self.device, self.dtype) - self.mean).mul_(self.inv_std)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        for a, b in self.bounds:
            z = self.Z if self.Z is not None else self._standardised(a, b)
            yield z, (None if self.y is None else self.y[a:b])
