"""The streaming shuffle: an epoch's rows read from the stores in blocks, with bounded memory (:mod:`featcache.feed`).

Streaming reads each epoch's rows once, in *blocks* of whole chunks: block b is store rows [b * block_rows,
(b + 1) * block_rows). An epoch visits the blocks in a shuffled order, groups consecutive blocks into *buffers*, and
shuffles the rows within each buffer (:func:`block_order`, offered as a :class:`torch.utils.data.Sampler` by
:class:`BlockSampler`); :class:`BlockStream` serves that order, reading the next buffer on a background thread
while the heads train on the current one. Reads are contiguous row ranges inside chunk files (sequential I/O), never
random rows across the store. Anonymous memory is two buffers (:data:`STREAM_SHARE` of the budget each, at least one
block) plus a few batches, whatever the store size; the only per-row state is index arrays (tens of bytes a row).
The order is a pure function of (seed, epoch, rows, block and buffer sizes) and a permutation of the rows, but not
a full permutation: a batch mixes rows of one buffer's blocks only. Stores whose rows are grouped by class
(ImageFolder order) therefore give batches of few classes when buffers are small; :class:`featcache.feed.Streamed`
warns then. Stores on object storage (whose arrays have ``parallel_reads``) get a buffer's blocks read at once, on
:data:`READ_THREADS` threads, each block a few byte-range requests (see :mod:`featcache.store._remote_read`); the
bytes in flight are at most the buffer's. Pages read from memory-mapped stores stay mapped (``RssFile``, up to the
stores' size): clean file pages, which the kernel reclaims under pressure, not anonymous memory.

Block size. Stores of different dims have different chunk rows. Blocks are the least common multiple of the
stores' chunk rows when a buffer still holds :data:`MIN_BUFFER_BLOCKS` such blocks (then every block is whole
chunks of every store); else the smallest chunk rows, whole chunks of that store and contiguous row ranges of the
others (aligned with them too when chunk rows divide each other, as the default power-of-two dims give).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from torch.utils.data import Sampler

from .prefetch import Prefetch

if TYPE_CHECKING:
    from .concat import ConcatView

__all__ = ["MIN_BUFFER_BLOCKS", "STREAM_SHARE", "BlockSampler", "BlockStream", "EpochOrder", "Gauge", "StreamShape",
           "block_order", "stream_shape"]  # fmt: skip

# Each of the stream's two buffers (trained on, read ahead) takes this share of the budget: half of it for both,
# the rest for batches, labels and index arrays, the heads and the interpreter.
STREAM_SHARE = 0.25
READ_THREADS = 8  # blocks of one buffer read at once from stores that read in parallel (object storage)
MIN_BUFFER_BLOCKS = 4  # blocks of whole chunks of every store only if a buffer holds this many (a finer shuffle)
_SALT = 0x5EED  # keeps the stream's draws apart from view_schedule's, which also seeds on two small integers


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


class BlockSampler(Sampler[int]):
    """:func:`block_order` as a :class:`torch.utils.data.Sampler`: iterating it gives epoch ``epoch``'s positions
    into ``rows`` in the order a :class:`BlockStream` of :attr:`plan` serves them (``set_epoch``, as torch's
    DistributedSampler)."""

    def __init__(self, rows: np.ndarray, shape: StreamShape, seed: int):
        super().__init__()
        self.rows, self.shape, self.seed, self.epoch = rows, shape, seed, 0
        self._plan: tuple[int, EpochOrder] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def plan(self) -> EpochOrder:
        """The epoch's whole stream: the order, and how it is read (computed once per epoch)."""
        if self._plan is None or self._plan[0] != self.epoch:
            self._plan = (self.epoch, block_order(self.rows, self.shape, self.seed, self.epoch))
        return self._plan[1]

    def __iter__(self) -> Iterator[int]:
        return iter(self.plan.order.tolist())

    def __len__(self) -> int:
        return len(self.rows)


class Gauge:
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
    """One epoch's training rows in :class:`EpochOrder` order, read buffer by buffer.

    Buffer j + 1 is read on a background thread (a :class:`featcache.prefetch.Prefetch` of depth 1) while buffer j
    is served, so two buffers are alive at most. A read error is raised by the :meth:`batches` step that needs the
    buffer.
    """

    def __init__(self, view: ConcatView, rows: np.ndarray, plan: EpochOrder, gauge: Gauge):
        self.view, self.rows, self.plan, self.gauge = view, rows, plan, gauge
        self.n_buffers = len(plan.cuts) - 1
        # stores whose reads gain from concurrency (object storage: one request per block) get a buffer's blocks
        # read at once; memory-mapped stores are read block after block
        parallel = any(getattr(a, "parallel_reads", False) for a in view.arrays) and plan.buffer_blocks > 1
        self._pool = ThreadPoolExecutor(min(plan.buffer_blocks, READ_THREADS), "featcache-block") if parallel else None
        self._j, self._buf = -1, None
        reads = (self._read(j) for j in range(self.n_buffers))  # run on the thread
        self._ahead = Prefetch(reads, 1, "featcache-stream", discard=lambda buf: self.gauge.sub(len(buf)))

    def __len__(self) -> int:
        return len(self.plan.order)

    def _size(self, j: int) -> int:
        return int(self.plan.cuts[j + 1] - self.plan.cuts[j])

    def _read(self, j: int) -> np.ndarray:
        p, a = self.plan, int(self.plan.cuts[j])
        self.gauge.add(self._size(j))
        try:
            out = np.empty((self._size(j), self.view.dim), dtype=self.view.dtype)
            reads = []
            for i in range(j * p.buffer_blocks, min((j + 1) * p.buffer_blocks, len(p.blocks))):
                lo, hi = int(p.block_cuts[i]), int(p.block_cuts[i + 1])
                # ascending rows of one block: contiguous ranges of its chunk files
                reads.append((self.rows[p.read[lo:hi]], out[lo - a : hi - a]))
            if self._pool is None:
                for idx, part in reads:
                    self.view.take(idx, part)
            else:  # disjoint parts of out; the first error is raised
                list(self._pool.map(lambda r: self.view.take(*r), reads))
        except BaseException:
            self.gauge.sub(self._size(j))
            raise
        return out

    def _advance(self) -> None:
        if self._buf is not None:  # release the served buffer before the next read starts: two alive at most
            self._buf = None
            self.gauge.sub(self._size(self._j))
        self._buf = next(self._ahead)  # a read error surfaces here
        self._j += 1

    def batches(self, bounds: Iterable[tuple[int, int]]) -> Iterator[np.ndarray]:
        """The rows at slots a:b of the order for each (a, b) of ``bounds``, increasing (the feed's batches); each
        batch a fresh array. Closes the stream once the bounds are served."""
        try:
            for a, b in bounds:
                out = np.empty((b - a, self.view.dim), dtype=self.view.dtype)
                t = a
                while t < b:
                    while self._j < 0 or t >= self.plan.cuts[self._j + 1]:
                        self._advance()
                    e = min(b, int(self.plan.cuts[self._j + 1]))
                    np.take(self._buf, self.plan.local[t:e], axis=0, out=out[t - a : e - a])
                    t = e
                yield out
        finally:
            self.close()

    def close(self) -> None:
        """Stop reading ahead and release the buffers (idempotent): a buffer being read is waited for."""
        self._ahead.close()  # discards (and so releases) a buffer read but never served
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._buf is not None:
            self._buf = None
            self.gauge.sub(self._size(self._j))
