"""A cross-process write lock for one store that also works on shared filesystems.

The lock is a file created with ``O_CREAT | O_EXCL`` (atomic on local filesystems and NFSv3+)
holding ``{host, pid, started, token}``. While held, a daemon thread refreshes its mtime every
``heartbeat`` seconds. Nothing lives in process memory only, so a lock taken on one node is
seen by every other node of the cluster.

A holder is *gone* when it ran on this host and its pid no longer exists, or when its
heartbeat is older than ``stale_after`` seconds (a holder on another host that died).
A gone holder's lock is taken over; a live one is refused with its host and pid.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from .errors import StoreLockedError

__all__ = ["StoreLock"]

log = logging.getLogger(__name__)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class StoreLock:
    """Exclusive writer lock at ``path``; use as a context manager.

    Args:
        path: the lock file.
        what: what is being locked, for messages (e.g. the store path).
        heartbeat: seconds between mtime refreshes while held.
        stale_after: a lock whose mtime is older than this is considered abandoned.
    """

    def __init__(self, path: Path, what: str, heartbeat: float = 10.0, stale_after: float = 120.0):
        self.path = Path(path)
        self.what = what
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self, path: Path | None = None) -> dict | None:
        try:
            return json.loads((path or self.path).read_text())
        except (OSError, ValueError):
            return None

    def _is_gone(self, holder: dict | None) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        if holder is None:  # half-written by a holder that died between create and write
            return age > self.stale_after
        if holder.get("host") == socket.gethostname():
            return not _pid_alive(int(holder.get("pid", -1)))
        return age > self.stale_after

    def acquire(self) -> StoreLock:
        """Take the lock, or take over a gone holder's.

        Raises:
            StoreLockedError: a live process (named by host and pid) holds it.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read()
                if not self._is_gone(holder):
                    h = holder or {}
                    raise StoreLockedError(
                        f"{self.what} is being written by pid {h.get('pid', '?')} on host {h.get('host', '?')} "
                        f"(since {h.get('started', '?')}); wait for it, or if that process is dead and its "
                        f"heartbeat younger than {self.stale_after:.0f}s, remove {self.path}"
                    ) from None
                self._take_over(holder)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(
                    {
                        "host": socket.gethostname(),
                        "pid": os.getpid(),
                        "token": self.token,
                        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    },
                    f,
                )
                f.flush()
                os.fsync(f.fileno())
            self._thread = threading.Thread(target=self._beat, name="featcache-lock", daemon=True)
            self._thread.start()
            return self
        raise StoreLockedError(f"{self.what}: could not take the lock {self.path} after several tries; retry")

    def _take_over(self, holder: dict | None) -> None:
        # Move the gone holder's file aside atomically; if another process took it over first,
        # the file we moved may be that process's fresh lock, so put it back.
        aside = self.path.with_name(f"{self.path.name}.stale.{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved = self._read(aside)
        if holder is not None and moved is not None and moved.get("token") != holder.get("token"):
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        else:
            log.warning("taking over %s from a gone holder %s", self.what, holder)
        aside.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                log.warning("lock %s vanished while held", self.path)
                return

    def release(self) -> None:
        """Drop the lock if this object still holds it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        holder = self._read()
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
