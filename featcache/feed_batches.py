"""Batches for the heads: which rows form each batch, in what order, gathered into one reused buffer.

:class:`featcache.heads.MultiHeadProbe` trains on a :class:`Feed`: ``feed.batches(e, y, buffer, seed=...,
batch_size=...)`` yields epoch e's (features, labels) batches, and the heads only compute on them. Features the same
every epoch (a tensor or a row source) or given per epoch (:class:`featcache.rows.EpochFeatures`: augmented views,
each loaded when its epoch comes) are fed by :class:`Shuffled`: a seeded full permutation of the rows each epoch
(:class:`ShuffleSampler`), gathered with ``index_select`` into the buffer. Streaming from the stores
(:class:`featcache.feed.Streamed`) orders the rows by blocks instead (:mod:`featcache.feed_stream`). Scoring reads
rows block by block as they come (:func:`eval_batches`).

Host rows for heads on a GPU (a row source, or a host tensor) are gathered into pinned memory a batch ahead on a
thread (:func:`featcache.prefetch.prefetch`) and copied without a sync: a pageable copy per batch would wait for
the GPU each time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from .prefetch import Prefetch
from .rows import EpochFeatures, Features, check_rows

__all__ = ["BatchBuffer", "Batches", "Feed", "ShuffleSampler", "Shuffled", "as_feed", "batch_bounds", "eval_batches",
           "from_host", "gather", "host_rows", "same_device"]  # fmt: skip

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]  # (x: the buffer's rows, labels)


class BatchBuffer:
    """The batch, reused from step to step: rows are gathered and cast into it, and the heads normalise it in place.

    On the CPU a fresh (B, D) temporary is memory the allocator takes from the OS and gives back at every step,
    and touching it again page-faults: at D = 10,240 a six-head step of the seed protocol took about 3,800
    minor faults, a third of its CPU time on the 2-core development machine. With this buffer a step makes
    no large allocation; the arithmetic, and so every result, is the same.

    Args:
        rows: the most rows a batch has.
        dim: the feature dimension D.
        device, dtype: the heads' (where and in what the batch is computed on).
    """

    def __init__(self, rows: int, dim: int, device: torch.device, dtype: torch.dtype):
        self.device, self.dim = device, dim
        self.x = torch.empty(rows, dim, device=device, dtype=dtype)
        self._raw: torch.Tensor | None = None  # gathered rows in the features' own dtype

    def raw(self, dtype: torch.dtype, n: int) -> torch.Tensor:
        """Where to gather n rows of ``dtype``: the batch buffer itself when no cast is needed."""
        if dtype == self.x.dtype:
            return self.x[:n]
        if self._raw is None or self._raw.dtype != dtype:
            self._raw = torch.empty(self.x.shape, device=self.x.device, dtype=dtype)
        return self._raw[:n]

    def put(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows (on the buffer's device) cast into the batch buffer."""
        x = self.x[: len(rows)]
        if rows.data_ptr() != x.data_ptr():
            x.copy_(rows)
        return x


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are one ("cuda" is the current CUDA device)."""
    if a.type != b.type:
        return False
    current = torch.cuda.current_device() if a.type == "cuda" else None
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


def batch_bounds(n: int, batch_size: int, drop_single: bool = False) -> list[tuple[int, int]]:
    """(start, stop) of each batch of ``batch_size`` over n slots; ``drop_single``: without a final batch of one."""
    bounds = [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
    # A final batch of one row has no batch variance: torch's BatchNorm1d refuses it in training and the
    # unbiased running variance would divide by zero. Drop it (that row is seen again next epoch).
    if drop_single and bounds[-1][1] - bounds[-1][0] == 1:
        bounds.pop()
    return bounds


def host_rows(source: Features, idx: np.ndarray, pin: bool, dim: int) -> torch.Tensor:
    """Rows ``idx`` of a host tensor or a row source, as a host tensor (pinned when ``pin``).

    Raises:
        ValueError: the row source returned something other than float rows of shape (len(idx), dim).
    """
    if isinstance(source, torch.Tensor):  # a host tensor: gathered straight into the (pinned) batch
        out = torch.empty((len(idx), source.shape[1]), dtype=source.dtype, pin_memory=pin)
        return torch.index_select(source, 0, torch.from_numpy(idx), out=out)
    rows = np.asarray(source.take(idx))
    if rows.shape != (len(idx), dim) or not np.issubdtype(rows.dtype, np.floating):
        raise ValueError(
            f"{type(source).__name__}.take returned {rows.dtype} {rows.shape}; "
            f"expected float rows of shape ({len(idx)}, {dim})"
        )
    t = torch.from_numpy(np.ascontiguousarray(rows))
    return t.pin_memory() if pin else t


def from_host(
    host: Iterable[torch.Tensor], order: torch.Tensor, bounds, y: torch.Tensor, buffer: BatchBuffer
) -> Batches:
    """Host batches (one per bound, made a batch ahead on a thread) copied into ``buffer``, with ``y[order[a:b]]``."""
    order_y, pin = order.to(y.device), buffer.device.type == "cuda"
    with Prefetch(host, 1, "featcache-rows") as ahead:
        for rows, (a, b) in zip(ahead, bounds, strict=True):
            yield buffer.put(rows.to(buffer.device, non_blocking=pin)), y[order_y[a:b]]


def gather(X: Features, order: torch.Tensor, bounds, y: torch.Tensor, buffer: BatchBuffer) -> Batches:
    """Yield (x (B, D) in ``buffer``, labels (B,)) for ``order[a:b]`` of each (a, b) of ``bounds``.

    Every x is the batch buffer, overwritten by the next batch.
    """
    dev = buffer.device
    # Host features for heads on a GPU go the row source's way (see the module docstring).
    if isinstance(X, torch.Tensor) and not (X.device.type == "cpu" and dev.type == "cuda"):
        order_x, order_y = order.to(X.device), order.to(y.device)
        for a, b in bounds:
            # Move, then cast on the device: a float16 cache crosses the bus at half the bytes.
            # index_select, not X[idx]: the same rows, 5-7x faster on the CPU for float16.
            idx = order_x[a:b]
            if X.device == dev:
                x = buffer.put(torch.index_select(X, 0, idx, out=buffer.raw(X.dtype, b - a)))
            else:
                x = buffer.put(X.index_select(0, idx).to(dev))
            yield x, y[order_y[a:b]]
        return
    order_np, pin = order.numpy(), dev.type == "cuda"
    host = (host_rows(X, order_np[a:b], pin, buffer.dim) for a, b in bounds)  # run on the thread
    yield from from_host(host, order, bounds, y, buffer)


def eval_batches(X: Features, y: torch.Tensor, buffer: BatchBuffer, rows: int) -> Batches:
    """(x, labels) for rows [a, a + rows) of X, one block after another (scoring needs no shuffle)."""
    n = len(X)
    return gather(X, torch.arange(n), batch_bounds(n, rows), y, buffer)


class ShuffleSampler(Sampler[int]):
    """A seeded full permutation of range(n) each epoch: epoch e's is the (e + 1)-th ``torch.randperm(n)`` drawn
    from a ``torch.Generator`` seeded with ``seed``, so a pure function of (seed, epoch); asked epoch after epoch
    (``set_epoch``, as torch's DistributedSampler), each costs one draw."""

    def __init__(self, n: int, seed: int):
        super().__init__()
        self.n, self.seed, self.epoch = n, seed, 0
        self._gen = torch.Generator().manual_seed(seed)
        self._drawn: tuple[int, torch.Tensor] | None = None  # the last epoch drawn, and its permutation

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def permutation(self) -> torch.Tensor:
        """The epoch's permutation, an int64 tensor."""
        last = -1 if self._drawn is None else self._drawn[0]
        if self.epoch == last:
            return self._drawn[1]
        if self.epoch < last:  # an earlier epoch: draw again from the seed
            self._gen.manual_seed(self.seed)
            last = -1
        while last < self.epoch:
            perm, last = torch.randperm(self.n, generator=self._gen), last + 1
        self._drawn = (last, perm)
        return perm

    def __iter__(self) -> Iterator[int]:
        return iter(self.permutation().tolist())

    def __len__(self) -> int:
        return self.n


class Feed(ABC):
    """Where training batches come from: which rows form each epoch's batches, and in what order."""

    @abstractmethod
    def __len__(self) -> int:
        """Rows an epoch visits."""

    @abstractmethod
    def batches(self, e: int, y: torch.Tensor, buffer: BatchBuffer, *, seed: int, batch_size: int) -> Batches:
        """Epoch e's batches of ``batch_size`` rows: (x, labels), x the ``buffer``'s rows (overwritten by the next
        batch), labels ``y`` at those rows; a final batch of a single row is left out. ``seed`` seeds the order.

        Raises:
            ValueError: epoch e's features do not match the buffer (shape, dtype, rows).
        """

    def tensor_epoch(
        self, e: int, *, seed: int, device: torch.device, dim: int
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Epoch e as (X, order) when its features are one (N, ``dim``) tensor on ``device``: batch i is then rows
        ``order[i * batch_size:(i + 1) * batch_size]`` of X, exactly the rows :meth:`batches` would give, and the heads
        gather them themselves (no Python iterator per batch, and a step a CUDA graph can hold). None: use
        :meth:`batches`.

        Raises:
            ValueError: epoch e's features do not match the feed's rows or ``dim``.
        """
        return None

    def close(self) -> None:  # noqa: B027 - most feeds hold nothing between epochs
        """Release what the feed holds (idempotent)."""


class Shuffled(Feed):
    """Features the same every epoch (a tensor or row source) or given per epoch (EpochFeatures), fed in a seeded
    full permutation each epoch (:class:`ShuffleSampler`)."""

    def __init__(self, X: Features | EpochFeatures):
        self.X = X
        self._sampler: ShuffleSampler | None = None

    def __len__(self) -> int:
        return len(self.X)

    def batches(self, e: int, y: torch.Tensor, buffer: BatchBuffer, *, seed: int, batch_size: int) -> Batches:
        X, order = self._epoch(e, seed, buffer.dim)
        return gather(X, order, batch_bounds(len(order), batch_size, drop_single=True), y, buffer)

    def tensor_epoch(
        self, e: int, *, seed: int, device: torch.device, dim: int
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        X = self.X.epoch(e) if isinstance(self.X, EpochFeatures) else self.X
        if not isinstance(X, torch.Tensor) or not same_device(X.device, torch.device(device)):
            return None
        return self._epoch(e, seed, dim)

    def _epoch(self, e: int, seed: int, dim: int) -> tuple[Features, torch.Tensor]:
        """Epoch e's features and permutation (a pure function of seed and e: :class:`ShuffleSampler`)."""
        n = len(self)
        if self._sampler is None or self._sampler.seed != seed:
            self._sampler = ShuffleSampler(n, seed)
        self._sampler.set_epoch(e)
        order = self._sampler.permutation()
        X = self.X
        if isinstance(X, EpochFeatures):
            X = X.epoch(e)
            if check_rows(X, dim, f"X (epoch {e + 1})") != n:
                raise ValueError(f"epoch {e + 1} features have {len(X)} rows, not {n}")
        return X, order


def as_feed(X: Feed | Features | EpochFeatures) -> Feed:
    """``X`` itself when a :class:`Feed`, else features fed by :class:`Shuffled`."""
    return X if isinstance(X, Feed) else Shuffled(X)
