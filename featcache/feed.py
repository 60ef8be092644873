"""How the probe feeds features to the heads: resident, loaded per epoch, or streamed from the stores.

The training features (K augmented views of them, or the evaluation view) are held *resident* when they fit the
budget (``--max-memory``, default half of the available RAM; on a GPU also half of its free memory), else loaded
*per epoch* (one view's rows at a time, read chunk by chunk), else *streamed* from the memory-mapped stores batch
by batch. Every mode gives the heads the same rows in the same order, so the same numbers.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .concat import ConcatView

__all__ = ["MEMORY_SHARE", "Arrays", "Epochs", "Rows", "fits_gpu", "load", "plan_memory", "view_schedule"]

MEMORY_SHARE = 0.5  # default budget: this share of the available RAM (and of free GPU memory)


def view_schedule(n_views: int, epochs: int, seed: int) -> list[int]:
    """Which view each epoch trains on: seeded permutations of the views, one after another, so every view is
    used once before any repeats."""
    rng = np.random.default_rng([seed, n_views])
    out: list[int] = []
    while len(out) < epochs:
        out += rng.permutation(n_views).tolist()
    return out[:epochs]


class Rows:
    """A row subset of a lazy view, as a row source for :class:`MultiHeadProbe` (streamed)."""

    def __init__(self, view: ConcatView, rows: np.ndarray):
        self.view, self.rows = view, rows

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, idx: np.ndarray) -> np.ndarray:
        return self.view.take(self.rows[np.asarray(idx)])


def available_bytes() -> int:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def load(view: ConcatView, rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(view.load(rows, finite=True))


class Arrays:
    """Train-split features of the evaluation view (key None) and of augmented views (key k), for rows ``rows``.

    ``mode``: resident (loaded once), per-epoch (loaded when asked, one at a time) or streamed (row sources).
    """

    def __init__(self, train: ConcatView, rows: np.ndarray, keys: list[int | None], mode: str, device: torch.device):
        self.train, self.rows, self.mode, self.device = train, rows, mode, device
        self.resident = {k: load(self.view(k), rows).to(device) for k in keys} if mode == "resident" else {}
        self._last: tuple = (object(), None, None)

    def view(self, k: int | None) -> ConcatView:
        return self.train if k is None else self.train.view(k)

    def get(self, k: int | None, positions: np.ndarray | None):
        """Features of view ``k`` at ``positions`` of ``rows`` (None: all of them)."""
        if self._last[0] == k and self._last[1] is positions:
            return self._last[2]
        rows = self.rows if positions is None else self.rows[positions]
        if self.mode == "streamed":
            out = Rows(self.view(k), rows)
        elif k in self.resident:
            full = self.resident[k]
            out = full if positions is None else full.index_select(0, torch.as_tensor(positions, device=full.device))
        else:
            self._last = (object(), None, None)  # free the previous epoch's features before loading the next
            out = load(self.view(k), rows).to(self.device)
        self._last = (k, positions, out)
        return out


class Epochs:
    """Training features per epoch (the heads' EpochFeatures): view ``schedule[e]`` at ``positions``."""

    def __init__(self, arrays: Arrays, positions: np.ndarray | None, schedule: list[int | None]):
        self.arrays, self.positions, self.schedule = arrays, positions, schedule

    def __len__(self) -> int:
        return len(self.arrays.rows) if self.positions is None else len(self.positions)

    def epoch(self, e: int):
        return self.arrays.get(self.schedule[e], self.positions)


def plan_memory(
    in_memory: str, max_memory: int | None, train: ConcatView, test: ConcatView, n_arrays: int, fit: int, val: int
) -> str:
    """resident, per-epoch or streamed: how the training features fit the budget (see the module docstring)."""
    item = train.dtype.itemsize * train.dim
    train_b, fit_b, val_b = len(train.valid_rows) * item, fit * item, val * item
    test_b = len(test.valid_rows) * test.dtype.itemsize * test.dim
    if in_memory != "auto":
        return "resident" if in_memory == "yes" else "streamed"
    budget = max_memory or MEMORY_SHARE * available_bytes()
    if n_arrays * train_b + fit_b + val_b + test_b <= budget:
        return "resident"
    return "per-epoch" if 2 * train_b + val_b + test_b <= budget else "streamed"


def fits_gpu(train: ConcatView, test: ConcatView, n_arrays: int, device: torch.device) -> bool:
    need = (n_arrays + 1) * train.nbytes + test.nbytes
    return need < MEMORY_SHARE * torch.cuda.mem_get_info(device)[0]
