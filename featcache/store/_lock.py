"""A cross-process write lock for one store that also works on shared filesystems.

The lock is a file holding ``{host, pid, started, token}``. It is written whole to a private
``<lock>.<host>.<pid>.tmp`` and hard-linked into place: ``link`` is atomic on local filesystems
and on NFS (where O_EXCL is not, before NFSv3), and the lock is never seen empty, so a holder
killed at any moment leaves a readable lock. Success is judged by the private file's link count,
the NFS-safe test (a retried ``link`` may report EEXIST for a link that happened). Filesystems
without hard links fall back to ``O_CREAT | O_EXCL``.

While held, a daemon thread refreshes the lock's mtime every ``heartbeat`` seconds. Nothing lives
in process memory only, so a lock taken on one node is seen by every other node of the cluster.

A holder is *gone* when it ran on this host and its pid no longer exists, or when its
heartbeat is older than ``stale_after`` seconds (a holder on another host that died).
A gone holder's lock is taken over; a live one is refused with its host and pid. A writer checks
that it still holds the lock (:meth:`StoreLock.check`) before each commit.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from ..errors import StoreLockedError
from ..locations import RemotePath
from ._held import Held
from ._lease import RemoteLease, describe_lease

__all__ = ["StoreLock", "describe_lock", "lock_for"]

log = logging.getLogger(__name__)

_NO_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS)  # filesystems without hard links


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class StoreLock(Held):
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
        self.host = socket.gethostname()
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
        if holder is None:  # unreadable: only an O_EXCL fallback lock between create and write
            return age > self.stale_after
        if holder.get("host") == self.host:
            return not _pid_alive(int(holder.get("pid", -1)))
        return age > self.stale_after

    def _private(self, kind: str) -> Path:
        # <lock>.<host>.<pid>.<kind>: the host and pid say whether a leftover one's owner is alive
        return self.path.with_name(f"{self.path.name}.{self.host}.{os.getpid()}.{kind}")

    def acquire(self, wait: float = 0.0) -> StoreLock:
        """Take the lock, or take over a gone holder's; with ``wait``, retry for that many seconds first.

        Raises:
            StoreLockedError: a live process (named by host and pid) holds it (still, after ``wait``).
            OSError: the lock's directory cannot be written.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        deadline = time.monotonic() + wait
        for _ in range(5):
            if self._create():
                self._thread = threading.Thread(target=self._beat, name="featcache-lock", daemon=True)
                self._thread.start()
                return self
            holder = self._read()
            if not self._is_gone(holder):
                if time.monotonic() < deadline:  # a short holder (another shard opening the store): wait for it
                    time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                    return self.acquire(wait=deadline - time.monotonic())
                h = holder or {}
                raise StoreLockedError(
                    f"{self.what} is being written by pid {h.get('pid', '?')} on host {h.get('host', '?')} "
                    f"(since {h.get('started', '?')}); wait for it to finish. A dead holder's lock is taken over "
                    f"at once on its own host, elsewhere once its heartbeat is {self.stale_after:.0f}s old"
                ) from None
            self._take_over(holder)
        raise StoreLockedError(f"{self.what}: could not take the lock {self.path} after several tries; retry")

    def _content(self) -> str:
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return json.dumps({"host": self.host, "pid": os.getpid(), "token": self.token, "started": started})

    def _create(self) -> bool:
        """Create the lock file with its content in one step; False if someone else holds it."""
        tmp = self._private("tmp")
        try:
            with open(tmp, "w") as f:
                f.write(self._content())
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass
            except OSError as e:
                if e.errno not in _NO_LINKS:
                    raise
                return self._create_excl()
            return os.stat(tmp).st_nlink == 2
        finally:
            tmp.unlink(missing_ok=True)

    def _create_excl(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(self._content())
            f.flush()
            os.fsync(f.fileno())
        return True

    def _take_over(self, holder: dict | None) -> None:
        # Move the gone holder's file aside atomically; if another process took it over first,
        # the file we moved may be that process's fresh lock, so put it back.
        aside = self._private("stale")
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

    def _remove_leftovers(self) -> None:
        # A process killed inside _create or _take_over leaves its private file behind. Remove those
        # whose owner is dead on this host, or that were last touched (ctime: rename) long ago elsewhere.
        for p in self.path.parent.glob(f"{self.path.name}.*"):
            host_pid, _, kind = p.name[len(self.path.name) + 1 :].rpartition(".")
            host, _, pid = host_pid.rpartition(".")
            if kind not in ("tmp", "stale") or not pid.isdigit():
                continue
            try:
                old = time.time() - p.stat().st_ctime > self.stale_after
            except FileNotFoundError:
                continue
            if old or (host == self.host and not _pid_alive(int(pid))):
                p.unlink(missing_ok=True)

    def held(self) -> bool:
        """Whether the lock file is still this object's (not released, not taken over)."""
        return (self._read() or {}).get("token") == self.token

    def check(self) -> None:
        """Raise unless this object still holds the lock; called before each commit.

        Raises:
            StoreLockedError: the lock was released, removed or taken over.
        """
        if not self.held():
            h = self._read() or {}
            raise StoreLockedError(
                f"{self.what}: this process (pid {os.getpid()}) lost its lock {self.path} to pid "
                f"{h.get('pid', '?')} on host {h.get('host', '?')}; stop that writer or wait for it, then rerun"
            )

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            if not self.held():
                log.warning("lock %s is no longer ours (removed or taken over)", self.path)
                return
            try:
                os.utime(self.path)
            except FileNotFoundError:
                log.warning("lock %s vanished while held", self.path)
                return


def lock_for(path: Path | RemotePath, what: str) -> StoreLock | RemoteLease:
    """The write lock at ``path``: a :class:`StoreLock` file on a filesystem, a lease object on object storage."""
    return RemoteLease(path, what) if isinstance(path, RemotePath) else StoreLock(path, what)


def describe_lock(path: Path | RemotePath, stale_after: float = 120.0) -> dict | None:
    """Who holds the lock at ``path``: ``{host, pid, started, stale, text}``, or None when there is none.

    ``stale`` is true when the holder is gone (see :class:`StoreLock`): the next writer takes it over.
    """
    if isinstance(path, RemotePath):
        return describe_lease(path, stale_after)
    probe = StoreLock(path, str(path), stale_after=stale_after)
    if not path.exists():
        return None
    holder = probe._read() or {}
    stale = probe._is_gone(holder or None)
    who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (since {holder.get('started', '?')})"
    return {**holder, "stale": stale, "text": f"{'stale: ' if stale else ''}{who}"}
