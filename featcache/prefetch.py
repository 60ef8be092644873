"""One background-thread helper: an iterable's items produced ahead of the consumer, errors re-raised there.

featcache overlaps reading or preparing data with computing on it in three places, all through :class:`Prefetch`:
the extractor's batches (:mod:`featcache.loaders`), the heads' row gathers (:mod:`featcache.feed_batches`) and the
stream's buffer reads (:mod:`featcache.feed_stream`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

__all__ = ["Prefetch", "prefetch"]

T = TypeVar("T")
_END = object()


class _Raised:
    """An error of the producer, handed to the consumer (an item may itself be an exception object)."""

    def __init__(self, error: BaseException):
        self.error = error


class Prefetch(Generic[T]):
    """Iterate ``items`` on a background thread, at most ``depth`` items ahead of the consumer.

    ``depth`` counts the item being produced: with depth 1, item i + 1 is produced while the consumer holds item
    i, and item i + 2 is not started before the consumer has taken item i + 1. So the consumer's item, the one
    produced for it and nothing else are alive at once (the stream's memory bound rests on this). An error raised
    by ``items`` is raised by the ``next`` that would have returned the item.

    Args:
        items: what to produce; iterated on the thread only.
        depth: items produced ahead, >= 1.
        name: the thread's name.
        discard: called by :meth:`close` on every item produced but never taken (e.g. to release its memory).
    Raises:
        ValueError: depth < 1.
    """

    def __init__(
        self,
        items: Iterable[T],
        depth: int = 1,
        name: str = "featcache-prefetch",
        discard: Callable[[T], None] | None = None,
    ):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._slots = threading.Semaphore(depth)
        self._stop = threading.Event()
        self._discard, self._done = discard, False
        self._thread = threading.Thread(target=self._run, args=(items,), name=name, daemon=True)
        self._thread.start()

    def _run(self, items: Iterable[T]) -> None:
        try:
            it = iter(items)
            while True:
                self._slots.acquire()  # a slot frees when the consumer takes an item, or on close
                if self._stop.is_set():
                    return
                try:
                    item = next(it)
                except StopIteration:
                    self._queue.put(_END)
                    return
                self._queue.put(item)
        except BaseException as e:  # handed to the consumer, which raises it
            self._queue.put(_Raised(e))

    def __iter__(self) -> Prefetch[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END or isinstance(item, _Raised):
            self._done = True
            if item is _END:
                raise StopIteration
            raise item.error
        self._slots.release()
        return item

    def close(self, join: bool = True) -> None:
        """Stop producing (idempotent). With ``join``, wait for the item in production, then discard every item
        never taken; without, return at once (the thread ends after its current item)."""
        self._done = True
        self._stop.set()
        self._slots.release()  # wakes a producer waiting for a slot
        if not join:
            return
        self._thread.join()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if self._discard is not None and item is not _END and not isinstance(item, _Raised):
                self._discard(item)

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prefetch(items: Iterable[T], depth: int = 1, *, join: bool = True, name: str = "featcache-prefetch") -> Iterator[T]:
    """``items``, produced by a :class:`Prefetch` ``depth`` ahead; ``depth`` 0: in the caller's loop, no thread.

    Closing the returned generator (or letting it finish) closes the :class:`Prefetch`, joining its thread when
    ``join``.
    """
    if depth <= 0:
        yield from items
        return
    ahead = Prefetch(items, depth, name=name)
    try:
        yield from ahead
    finally:
        ahead.close(join=join)
