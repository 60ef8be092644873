"""How the probe feeds features to the heads: resident, loaded per epoch, or streamed from the stores.

The training features (K augmented views of them, or the evaluation view) are held *resident* when they fit the
budget (``--max-memory``, default half of the available RAM; on a GPU also half of its free memory), else loaded
*per epoch* (one view's rows at a time, read chunk by chunk), else *streamed* from the stores with bounded memory.
Resident and per-epoch feeds give the heads the same rows in the same order (the heads' seeded full permutation),
so the same numbers.

Streaming (:class:`Streamed`) reads each epoch's rows once, in *blocks* of whole chunks: block b is store rows
[b * block_rows, (b + 1) * block_rows). An epoch visits the blocks in a shuffled order, groups consecutive blocks
into *buffers*, and shuffles the rows within each buffer; the next buffer is read on a background thread while the
heads train on the current one. Reads are contiguous row ranges inside chunk files (sequential I/O), never random
rows across the store. Anonymous memory is two buffers (:data:`STREAM_SHARE` of the budget each, at least one
block) plus a few batches, whatever the store size; the only per-row state is index arrays (tens of bytes a row).
The order is a pure function of (seed, epoch, rows, block and buffer sizes) and a permutation of the rows, but not
a full permutation: a batch mixes rows of one buffer's blocks only. Stores whose rows are grouped by class
(ImageFolder order) therefore give batches of few classes when buffers are small; :class:`Streamed` warns then.
Pages read from the stores stay mapped (``RssFile``, up to the stores' size): clean file pages, which the kernel
reclaims under pressure, not anonymous memory.

Block size. Stores of different dims have different chunk rows. Blocks are the least common multiple of the
stores' chunk rows when a buffer still holds :data:`MIN_BUFFER_BLOCKS` such blocks (then every block is whole
chunks of every store); else the smallest chunk rows, whole chunks of that store and contiguous row ranges of the
others (aligned with them too when chunk rows divide each other, as the default power-of-two dims give).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .concat import ConcatView

__all__ = ["MEMORY_SHARE", "STREAM_SHARE", "MIN_BUFFER_BLOCKS", "Arrays", "BlockStream", "EpochOrder", "Epochs",
           "Rows", "StreamShape", "Streamed", "block_order", "budget_bytes", "epoch_features", "fits_gpu", "load",
           "plan_memory", "stream_shape", "view_schedule"]  # fmt: skip

log = logging.getLogger(__name__)

MEMORY_SHARE = 0.5  # default budget: this share of the available RAM (and of free GPU memory)
# Each of the stream's two buffers (trained on, read ahead) takes this share of the budget: half of it for both,
# the rest for batches, labels and index arrays, the heads and the interpreter.
STREAM_SHARE = 0.25
MIN_BUFFER_BLOCKS = 4  # blocks of whole chunks of every store only if a buffer holds this many (a finer shuffle)
_SALT = 0x5EED  # keeps the stream's draws apart from view_schedule's, which also seeds on two small integers


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


# --- streaming --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamShape:
    """How a stream cuts the rows: ``block_rows`` store rows a block, ``buffer_blocks`` blocks a buffer."""

    block_rows: int
    buffer_blocks: int
    row_bytes: int  # bytes of one row of the concatenation

    @property
    def buffer_bytes(self) -> int:
        """The most bytes one buffer holds (two are alive at a time)."""
        return self.block_rows * self.buffer_blocks * self.row_bytes


def stream_shape(view: ConcatView, budget: int) -> StreamShape:
    """Blocks and buffers for streaming ``view`` within ``budget`` bytes (see the module docstring)."""
    chunks = sorted({a.chunk_rows for a in view.arrays})
    row_bytes = view.dim * view.dtype.itemsize
    buffer_bytes = STREAM_SHARE * budget
    common = math.lcm(*chunks)
    block = common if common * row_bytes * MIN_BUFFER_BLOCKS <= buffer_bytes else chunks[0]
    # Never less than one block: a block is the unit of a sequential read.
    return StreamShape(block, max(1, int(buffer_bytes // (block * row_bytes))), row_bytes)


@dataclass(frozen=True)
class EpochOrder:
    """One epoch of a stream. Slots t of buffer j are ``cuts[j] <= t < cuts[j + 1]``, in ``order`` and ``read``.

    ``order[t]`` is the position (into the stream's rows) the heads see at step t: a permutation of range(n).
    ``read`` lists the same positions as they are read: block by block in ``blocks`` order (block ``blocks[i]``
    is slots ``block_cuts[i]:block_cuts[i + 1]``, rows ascending). ``order[t] = read[cuts[j] + local[t]]``.
    """

    order: np.ndarray
    read: np.ndarray
    local: np.ndarray
    cuts: np.ndarray
    blocks: np.ndarray
    block_cuts: np.ndarray
    buffer_blocks: int


def block_order(rows: np.ndarray, shape: StreamShape, seed: int, epoch: int) -> EpochOrder:
    """Epoch ``epoch``'s stream over store rows ``rows``: shuffled blocks, rows shuffled within each buffer.

    A pure function of its arguments (a seeded function of (seed, epoch) for given rows and shape).
    """
    rng = np.random.default_rng([_SALT, seed, epoch])
    ascending = len(rows) < 2 or bool(np.all(rows[1:] >= rows[:-1]))  # the probe's rows are; skip the sort then
    by_row = np.arange(len(rows)) if ascending else np.argsort(rows, kind="stable")
    ids, starts, counts = np.unique(rows[by_row] // shape.block_rows, return_index=True, return_counts=True)
    visit = rng.permutation(len(ids))  # only blocks holding rows of this subset are visited
    pieces = [by_row[starts[v] : starts[v] + counts[v]] for v in visit]
    read = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    block_cuts = np.concatenate([[0], np.cumsum(counts[visit])]).astype(np.int64)
    k = shape.buffer_blocks
    cuts = block_cuts[np.append(np.arange(0, len(visit), k), len(visit))] if len(visit) else np.zeros(1, np.int64)
    sizes = np.diff(cuts)
    local = np.concatenate([rng.permutation(m) for m in sizes]) if len(sizes) else np.zeros(0, dtype=np.int64)
    order = read[np.repeat(cuts[:-1], sizes) + local]
    return EpochOrder(order, read, local, cuts, ids[visit], block_cuts, k)


class _Gauge:
    """Rows held in stream buffers now and at most (the instrument the memory tests read)."""

    def __init__(self):
        self.rows = self.peak = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.rows += n
            self.peak = max(self.peak, self.rows)

    def sub(self, n: int) -> None:
        with self._lock:
            self.rows -= n


class BlockStream:
    """One epoch's training rows served from buffers in :class:`EpochOrder` order (a RowSource for the heads).

    ``take`` must be asked for consecutive slices of ``plan.order``, as :class:`MultiHeadProbe` does; buffer j + 1
    is read on a background thread while buffer j is served. A read error is raised by the ``take`` that needs it.

    Raises:
        ValueError: (take) indices other than the next slice of the order.
    """

    def __init__(self, view: ConcatView, rows: np.ndarray, plan: EpochOrder, gauge: _Gauge):
        self.view, self.rows, self.plan, self.gauge = view, rows, plan, gauge
        self.n_buffers = len(plan.cuts) - 1
        self._cursor, self._j, self._buf = 0, -1, None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="featcache-stream")
        self._next: Future | None = self._pool.submit(self._read, 0) if self.n_buffers else None

    def __len__(self) -> int:
        return len(self.plan.order)

    def _size(self, j: int) -> int:
        return int(self.plan.cuts[j + 1] - self.plan.cuts[j])

    def _read(self, j: int) -> np.ndarray:
        p, a = self.plan, int(self.plan.cuts[j])
        self.gauge.add(self._size(j))
        try:
            out = np.empty((self._size(j), self.view.dim), dtype=self.view.dtype)
            for i in range(j * p.buffer_blocks, min((j + 1) * p.buffer_blocks, len(p.blocks))):
                lo, hi = int(p.block_cuts[i]), int(p.block_cuts[i + 1])
                # ascending rows of one block: contiguous ranges of its chunk files
                self.view.take(self.rows[p.read[lo:hi]], out[lo - a : hi - a])
        except BaseException:
            self.gauge.sub(self._size(j))
            raise
        return out

    def _advance(self) -> None:
        if self._buf is not None:  # release the served buffer before the next read starts: two alive at most
            self._buf = None
            self.gauge.sub(self._size(self._j))
        self._buf = self._next.result()  # a read error surfaces here
        self._j += 1
        more = self._j + 1 < self.n_buffers
        self._next = self._pool.submit(self._read, self._j + 1) if more else None

    def take(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx)
        c0, c1 = self._cursor, self._cursor + len(idx)
        if c1 > len(self) or not np.array_equal(idx, self.plan.order[c0:c1]):
            raise ValueError(f"a block stream serves its epoch order once, in order: rows {c0}:{c1} asked otherwise")
        out = np.empty((len(idx), self.view.dim), dtype=self.view.dtype)
        t = c0
        while t < c1:
            if self._j < 0 or t >= self.plan.cuts[self._j + 1]:
                self._advance()
            e = min(c1, int(self.plan.cuts[self._j + 1]))
            np.take(self._buf, self.plan.local[t:e], axis=0, out=out[t - c0 : e - c0])
            t = e
        self._cursor = c1
        if c1 == len(self):
            self.close()
        return out

    def close(self) -> None:
        """Stop reading ahead and release the buffers (idempotent)."""
        if self._next is not None:
            pending, self._next = self._next, None
            if not pending.cancel():
                try:
                    pending.result()
                    self.gauge.sub(self._size(self._j + 1))
                except Exception:  # noqa: BLE001 - nobody asked for that buffer; its error is moot
                    pass
        if self._buf is not None:
            self._buf = None
            self.gauge.sub(self._size(self._j))
        self._pool.shutdown(wait=False)


class Streamed(Epochs):
    """Epochs streamed from the stores (the heads' EpochFeatures with ``order``; see the module docstring).

    The heads call ``order(e, seed)`` and then ``epoch(e)``; ``peak_rows`` is the most rows ever buffered.

    Raises:
        RuntimeError: (epoch) ``order(e, seed)`` was not asked first.
    """

    def __init__(self, arrays: Arrays, positions: np.ndarray | None, schedule: list[int | None]):
        super().__init__(arrays, positions, schedule)
        self.rows = arrays.rows if positions is None else arrays.rows[positions]
        self.shape = stream_shape(arrays.train, arrays.budget)
        self.gauge = _Gauge()
        self._plan: tuple[int, EpochOrder] | None = None
        self._stream: BlockStream | None = None
        self._warn_if_grouped(arrays.train.labels[self.rows])

    @property
    def peak_rows(self) -> int:
        return self.gauge.peak

    def order(self, epoch: int, seed: int) -> torch.Tensor:
        """Epoch ``epoch``'s row order: a permutation of range(len(self)), a pure function of (seed, epoch)."""
        plan = block_order(self.rows, self.shape, seed, epoch)
        self._plan = (epoch, plan)
        return torch.from_numpy(plan.order)

    def epoch(self, e: int) -> BlockStream:
        if self._plan is None or self._plan[0] != e:
            raise RuntimeError(f"Streamed.epoch({e}) needs order({e}, seed) first: the stream reads in that order")
        self.close()
        self._stream = BlockStream(self.arrays.view(self.schedule[e]), self.rows, self._plan[1], self.gauge)
        return self._stream

    def close(self) -> None:
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


def epoch_features(arrays: Arrays, positions: np.ndarray | None, schedule: list[int | None]) -> Epochs:
    """The heads' training features for ``arrays``' mode: :class:`Streamed` when streaming, else :class:`Epochs`."""
    return (Streamed if arrays.mode == "streamed" else Epochs)(arrays, positions, schedule)


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
