"""How the probe feeds features to the heads: resident, loaded per epoch, or streamed from the stores.

The training features (K augmented views of them, or the evaluation view) are held *resident* when they fit the
budget (``--max-memory``, default half of the available RAM; on a GPU also half of its free memory), else loaded
*per epoch* (one view's rows at a time, read chunk by chunk), else *streamed* from the stores with bounded memory.

This module (with :mod:`featcache.feed_batches` and :mod:`featcache.feed_stream`) owns the order the heads see the
rows in; :class:`featcache.heads.MultiHeadProbe` only computes on the batches it is handed. :func:`train_feed` builds
what the heads train on. Resident and per-epoch feeds give the same rows in the same order (a seeded full permutation
each epoch, :class:`featcache.feed_batches.Shuffled`), so the same numbers. Streaming (:class:`Streamed`) reads each
epoch's rows once, in chunk-aligned blocks in a shuffled order, rows shuffled within a buffer of blocks, the next
buffer read while the heads train on the current one (see :mod:`featcache.feed_stream`).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from .concat import ConcatView
from .feed_batches import BatchBuffer, Batches, Feed, Shuffled, batch_bounds, from_host
from .feed_stream import (
    MIN_BUFFER_BLOCKS,
    STREAM_SHARE,
    BlockSampler,
    BlockStream,
    EpochOrder,
    Gauge,
    StreamShape,
    block_order,
    stream_shape,
)

__all__ = ["MEMORY_SHARE", "STREAM_SHARE", "MIN_BUFFER_BLOCKS", "Arrays", "BlockSampler", "BlockStream", "EpochOrder",
           "Epochs", "Rows", "StreamShape", "Streamed", "block_order", "budget_bytes", "fits_gpu", "load",
           "plan_memory", "stream_shape", "train_feed", "view_schedule"]  # fmt: skip

log = logging.getLogger(__name__)

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
    """A row subset of a lazy view, as a row source for :class:`MultiHeadProbe` (evaluation sets when streaming)."""

    def __init__(self, view: ConcatView, rows: np.ndarray):
        self.view, self.rows = view, rows

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, idx: np.ndarray) -> np.ndarray:
        return self.view.take(self.rows[np.asarray(idx)])


def available_bytes() -> int:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def budget_bytes(max_memory: int | None) -> int:
    """The RAM budget: ``max_memory``, else :data:`MEMORY_SHARE` of the available RAM."""
    return int(max_memory or MEMORY_SHARE * available_bytes())


def load(view: ConcatView, rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(view.load(rows, finite=True))


class Arrays:
    """Train-split features of the evaluation view (key None) and of augmented views (key k), for rows ``rows``.

    ``mode``: resident (loaded once), per-epoch (loaded when asked, one at a time) or streamed (row sources);
    ``max_memory``: the budget (None: the default share of the RAM), which sizes the stream's buffers.
    """

    def __init__(
        self,
        train: ConcatView,
        rows: np.ndarray,
        keys: list[int | None],
        mode: str,
        device: torch.device,
        max_memory: int | None = None,
    ):
        self.train, self.rows, self.mode, self.device = train, rows, mode, device
        self.budget = budget_bytes(max_memory)
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


class Streamed(Epochs, Feed):
    """Epochs streamed from the stores, a :class:`Feed` (see :mod:`featcache.feed_stream`).

    Each epoch's order is its :class:`BlockSampler`'s, served by a :class:`BlockStream` of view ``schedule[e]``;
    ``peak_rows`` is the most rows ever buffered.
    """

    def __init__(self, arrays: Arrays, positions: np.ndarray | None, schedule: list[int | None]):
        super().__init__(arrays, positions, schedule)
        self.rows = arrays.rows if positions is None else arrays.rows[positions]
        self.shape = stream_shape(arrays.train, arrays.budget)
        self.gauge = Gauge()
        self._stream: BlockStream | None = None
        self._warn_if_grouped(arrays.train.labels[self.rows])

    @property
    def peak_rows(self) -> int:
        return self.gauge.peak

    def sampler(self, seed: int) -> BlockSampler:
        """The order of every epoch, as a torch Sampler (``set_epoch(e)`` selects epoch e)."""
        return BlockSampler(self.rows, self.shape, seed)

    def batches(self, e: int, y: torch.Tensor, buffer: BatchBuffer, *, seed: int, batch_size: int) -> Batches:
        sampler = self.sampler(seed)
        sampler.set_epoch(e)
        plan = sampler.plan
        self.close()
        self._stream = BlockStream(self.arrays.view(self.schedule[e]), self.rows, plan, self.gauge)
        bounds = batch_bounds(len(plan.order), batch_size, drop_single=True)
        pin = buffer.device.type == "cuda"
        host = (_pinned(torch.from_numpy(rows), pin) for rows in self._stream.batches(bounds))  # run on the thread
        return from_host(host, torch.from_numpy(plan.order), bounds, y, buffer)

    def close(self) -> None:
        """Stop the current epoch's stream and release its buffers (idempotent)."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _warn_if_grouped(self, labels: np.ndarray) -> None:
        # Rows grouped by class (ImageFolder order) fill a buffer with few classes, and batches follow. Compare the
        # classes a buffer holds with those as many rows drawn from a shuffled split would hold.
        plan = block_order(self.rows, self.shape, 0, 0)
        if len(plan.cuts) <= 2:
            return
        bounds = list(zip(plan.cuts[:-1], plan.cuts[1:], strict=True))
        seen = np.mean([len(np.unique(labels[plan.read[a:b]])) for a, b in bounds])
        share = np.bincount(labels)[np.unique(labels)] / len(labels)
        shuffled = np.mean([np.sum(1 - (1 - share) ** (b - a)) for a, b in bounds])
        if seen < 0.5 * shuffled:
            log.warning(
                "streaming: a buffer of %d rows holds %.1f classes on average, where a shuffled split would give "
                "%.1f: the stores' rows are grouped by class, so batches mix few classes; a larger --max-memory "
                "gives larger buffers",
                self.shape.block_rows * self.shape.buffer_blocks, seen, shuffled,
            )  # fmt: skip


def _pinned(t: torch.Tensor, pin: bool) -> torch.Tensor:
    return t.pin_memory() if pin else t


def train_feed(arrays: Arrays, positions: np.ndarray | None, schedule: list[int | None]) -> Feed:
    """What the heads train on, epoch e on view ``schedule[e]`` at ``positions`` of ``arrays.rows`` (None: all):
    :class:`Streamed` when ``arrays`` streams, else :class:`Epochs` in a seeded full permutation each epoch."""
    if arrays.mode == "streamed":
        return Streamed(arrays, positions, schedule)
    return Shuffled(Epochs(arrays, positions, schedule))


def plan_memory(
    in_memory: str, max_memory: int | None, train: ConcatView, test: ConcatView, n_arrays: int, fit: int, val: int
) -> str:
    """resident, per-epoch or streamed: how the training features fit the budget (see the module docstring)."""
    item = train.dtype.itemsize * train.dim
    train_b, fit_b, val_b = len(train.valid_rows) * item, fit * item, val * item
    test_b = len(test.valid_rows) * test.dtype.itemsize * test.dim
    if in_memory != "auto":
        return "resident" if in_memory == "yes" else "streamed"
    budget = budget_bytes(max_memory)
    if n_arrays * train_b + fit_b + val_b + test_b <= budget:
        return "resident"
    return "per-epoch" if 2 * train_b + val_b + test_b <= budget else "streamed"


def fits_gpu(train: ConcatView, test: ConcatView, n_arrays: int, device: torch.device) -> bool:
    need = (n_arrays + 1) * train.nbytes + test.nbytes
    return need < MEMORY_SHARE * torch.cuda.mem_get_info(device)[0]
