"""Threads that write finished chunks while the device computes the next ones: one a store, up to a bound.

Writing a chunk is the host's heaviest step: checks for NaN/Inf and float16 range, the cast, a sha256, the write,
fsyncs and a read-back hash (:meth:`featcache.store.ArrayWriter.write_chunk`), about a tenth of a second for 16 MiB.
With several checkpoints in one call every store's chunk fills at the same batch, so one writer thread queued them
all behind each other, and the last chunks of every store were written one after another after the last forward
pass. Each store has a thread of its own here (numpy, hashlib and file writes release the GIL), so they are
written side by side; a store's chunks stay in order on its thread.
"""

from __future__ import annotations

import queue
import threading
import time

import torch

from .store import ArrayWriter

__all__ = ["ChunkWriter", "MAX_THREADS"]

MAX_THREADS = 8  # writer threads at most, stores beyond share them


class ChunkWriter:
    """Write chunks of arrays on background threads, one per store (at most ``threads``), ``depth`` queued each.

    Args:
        threads: writer threads at most (stores are given to them in the order they first submit).
        depth: chunks queued per thread before :meth:`submit` waits.
    """

    def __init__(self, threads: int = 1, depth: int = 2):
        self.error: BaseException | None = None
        self.queues = [queue.Queue(maxsize=depth) for _ in range(max(1, threads))]
        self._busy = [0.0] * len(self.queues)
        self._route: dict[int, int] = {}  # id of a store -> its thread
        self.threads = [
            threading.Thread(target=self._run, args=(k,), name=f"featcache-writer-{k}", daemon=True)
            for k in range(len(self.queues))
        ]
        for t in self.threads:
            t.start()

    @property
    def busy_s(self) -> float:
        """Seconds the threads spent writing, summed over them."""
        return sum(self._busy)

    def _run(self, k: int) -> None:
        q = self.queues[k]
        while (job := q.get()) is not None:
            try:
                if self.error is None:
                    t0 = time.perf_counter()
                    writer, i, feats, event, skipped = job
                    if event is not None:
                        event.synchronize()  # a blocking event: the thread sleeps instead of spinning
                    block = feats.numpy()
                    start = writer.bounds(i)[0]
                    block[[r - start for r in skipped]] = 0  # undecodable images: zero rows, listed as skipped
                    writer.write_chunk(i, block, skipped)
                    self._busy[k] += time.perf_counter() - t0
            except BaseException as e:
                self.error = e
            finally:
                q.task_done()
        q.task_done()

    def submit(self, writer: ArrayWriter, i: int, buf: torch.Tensor, skipped: list[int]) -> None:
        """Queue chunk ``i`` of ``writer`` (its rows in ``buf``, on any device) on its store's thread.

        Raises:
            BaseException: the error of an earlier write, if one failed.
        """
        self.check()
        event = None
        if buf.device.type == "cuda":
            host = torch.empty(buf.shape, dtype=buf.dtype, pin_memory=True)
            host.copy_(buf, non_blocking=True)  # queued on buf's device's current stream
            event = torch.cuda.Event(blocking=True)
            # that stream, not the current device's: with cuda:N != current device the event would be
            # recorded elsewhere, complete at once, and the writer would read the buffer before the copy lands
            event.record(torch.cuda.current_stream(buf.device))
            buf = host
        store = id(getattr(writer, "store", writer))
        k = self._route.setdefault(store, len(self._route) % len(self.queues))
        self.queues[k].put((writer, i, buf, event, skipped))

    def check(self) -> None:
        """Raise the first write's error, if one failed."""
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Write every queued chunk, stop the threads, raise a write's error."""
        self.stop()
        self.check()

    def stop(self) -> None:
        """Stop the threads after the chunks already queued (a failed split: they are written while its locks are
        held), without raising."""
        for q, t in zip(self.queues, self.threads, strict=True):
            if t.is_alive():
                q.put(None)
        for t in self.threads:
            t.join()
