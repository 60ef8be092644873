"""What a store's write lock (a file, :mod:`._lock`) and its lease on object storage (:mod:`._lease`) share: a
heartbeat thread while held, and a release that stops it and removes the lock only while it is still this one's."""

from __future__ import annotations

import threading
from typing import Self

__all__ = ["Held"]


class Held:
    """Mixin: subclasses set ``path`` (with ``unlink``), ``_stop`` (an Event), ``_thread`` (the heartbeat or None), and
    define ``acquire()`` and ``held()``."""

    path: object
    _stop: threading.Event
    _thread: threading.Thread | None

    def acquire(self) -> Self:
        raise NotImplementedError

    def held(self) -> bool:
        raise NotImplementedError

    def release(self) -> None:
        """Drop the lock if this object still holds it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.held():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
