"""The store's write lock on object storage: a lease object with a heartbeat (see :mod:`featcache.store._lock`).

Object stores have no hard links, renames or mtimes to touch, so the lock of :class:`StoreLock` becomes a *lease*:
the object ``_featcache/lock`` holding ``{host, pid, token, started, beat}``, created with a conditional PUT
(``If-None-Match: *``: the store refuses it when the object exists), so of two writers exactly one creates it. The
holder rewrites it every ``heartbeat`` seconds (its ``LastModified`` is the heartbeat), conditionally on its own last
version (``If-Match: <ETag>``), so a holder whose lease was taken over stops beating instead of taking it back.

A holder is *gone* as on disk: on this host when its pid no longer exists, elsewhere when the lease has not been
rewritten for ``stale_after`` seconds. A gone holder's lease is taken over by a PUT conditional on the ETag read
when it was judged gone: of two takers one wins. A writer reads the lease before each commit (:meth:`check`).
Stores without conditional writes (fsspec filesystems other than S3's) fall back to read-then-write, which
:meth:`check` before each commit still guards.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

from ..errors import StoreLockedError
from ..locations import RemotePath
from ._held import Held

__all__ = ["RemoteLease", "describe_lease"]

log = logging.getLogger(__name__)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _conditional(path: RemotePath, etag: str) -> dict:
    """PUT conditions to replace only version ``etag`` (S3's If-Match; other stores replace unconditionally)."""
    return {"IfMatch": etag} if etag and path.protocol in ("s3", "s3a") else {}


class RemoteLease(Held):
    """Exclusive writer lease at ``path`` on object storage: :class:`~featcache.store.StoreLock`'s interface.

    Args:
        path: the lease object.
        what: what is being locked, for messages.
        heartbeat: seconds between rewrites while held.
        stale_after: a lease not rewritten for this long is abandoned (its holder on another host died).
    """

    def __init__(self, path: RemotePath, what: str, heartbeat: float = 10.0, stale_after: float = 120.0):
        self.path, self.what = path, what
        self.heartbeat, self.stale_after = heartbeat, stale_after
        self.token = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> tuple[dict | None, str | None, float | None]:
        """(the holder, its ETag, its age in seconds), all None without a lease; holder None if unreadable."""
        try:
            info = self.path.info()
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None, None, None
        try:
            holder = json.loads(raw)
        except ValueError:
            holder = None
        modified = info.get("LastModified") or info.get("mtime") or info.get("updated")
        mtime = modified.timestamp() if hasattr(modified, "timestamp") else float(modified or 0)
        return holder if isinstance(holder, dict) else None, info.get("ETag"), time.time() - mtime

    def _is_gone(self, holder: dict | None, age: float | None) -> bool:
        if age is None:
            return True
        if holder is not None and holder.get("host") == self.host:
            return not _pid_alive(int(holder.get("pid", -1)))
        return age > self.stale_after

    def _content(self) -> bytes:
        doc = {"host": self.host, "pid": os.getpid(), "token": self.token, "started": self.started,
               "beat": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
        return json.dumps(doc).encode()

    def _put(self, etag: str | None) -> bool:
        """Write the lease if the object is still absent (``etag`` None) or at version ``etag``; False if not."""
        try:
            if etag is None:
                out = self.path.create_bytes(self._content())
            else:
                out = self.path.write_bytes(self._content(), **_conditional(self.path, etag))
        except FileExistsError:
            return False
        except OSError as e:  # 412 Precondition Failed on If-Match: s3fs raises EINVAL
            if "pre-condition" in str(e).lower() or "precondition" in str(e).lower():
                return False
            raise
        self._etag = out.get("ETag") if isinstance(out, dict) else None
        return True

    def acquire(self, wait: float = 0.0) -> RemoteLease:
        """Take the lease, or take over a gone holder's; with ``wait``, retry for that many seconds first.

        Raises:
            StoreLockedError: a live process (named by host and pid) holds it (still, after ``wait``).
            RemoteError: the bucket is missing or refuses the credentials.
        """
        deadline, tries = time.monotonic() + wait, 0
        while tries < 5:  # lost races (another writer created or took over the lease first), not waits
            holder, etag, age = self._read()
            if age is None:
                won = self._put(None)
            elif self._is_gone(holder, age):
                log.warning("taking over %s from a gone holder %s", self.what, holder)
                won = self._put(etag or "")
            elif time.monotonic() < deadline:
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                continue
            else:
                h = holder or {}
                raise StoreLockedError(
                    f"{self.what} is being written by pid {h.get('pid', '?')} on host {h.get('host', '?')} "
                    f"(since {h.get('started', '?')}); wait for it to finish. A dead holder's lock is taken over "
                    f"at once on its own host, elsewhere once its heartbeat is {self.stale_after:.0f}s old"
                )
            tries += 1
            if won and self.held():
                self._thread = threading.Thread(target=self._beat, name="featcache-lease", daemon=True)
                self._thread.start()
                return self
        raise StoreLockedError(f"{self.what}: could not take the lock {self.path} after several tries; retry")

    def held(self) -> bool:
        """Whether the lease is still this object's (not released, not taken over)."""
        holder, _, _ = self._read()
        return (holder or {}).get("token") == self.token

    def check(self) -> None:
        """Raise unless this object still holds the lease; called before each commit.

        Raises:
            StoreLockedError: the lease was released, removed or taken over.
        """
        holder, _, _ = self._read()
        if (holder or {}).get("token") != self.token:
            h = holder or {}
            raise StoreLockedError(
                f"{self.what}: this process (pid {os.getpid()}) lost its lock {self.path} to pid "
                f"{h.get('pid', '?')} on host {h.get('host', '?')}; stop that writer or wait for it, then rerun"
            )

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                if not self.held() or not self._put(self._etag or ""):
                    log.warning("lease %s is no longer ours (removed or taken over)", self.path)
                    return
            except OSError as e:  # a failed beat: the next one tries again; check() guards the commits
                log.warning("lease %s: heartbeat failed (%s)", self.path, e)


def describe_lease(path: RemotePath, stale_after: float = 120.0) -> dict | None:
    """Who holds the lease at ``path`` (as :func:`~featcache.store.describe_lock`), or None when there is none."""
    probe = RemoteLease(path, str(path), stale_after=stale_after)
    holder, _, age = probe._read()
    if age is None:
        return None
    holder = holder or {}
    stale = probe._is_gone(holder or None, age)
    who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (since {holder.get('started', '?')})"
    return {**holder, "stale": stale, "text": f"{'stale: ' if stale else ''}{who}"}
