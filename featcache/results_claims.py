"""Claims on probes of a results log, so that two sweeps sharing a log never run one probe twice.

A claim is an exclusive ``flock`` on ``<log>.claims/<key>``, held from the moment a sweep checks that the probe's
key is not logged until its record is appended. The kernel releases it when the holder exits, killed or not,
so a claim is never lost: the next sweep takes it over and, finding no record, runs the probe. The file holds the
holder's pid, host and start time (for people; the lock is what counts). A released claim is unlinked while still
held; whoever was waiting on it then sees that its file is gone and locks the path afresh.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import StoreLockedError
from .locations import RemotePath
from .results_log import resolve_log, write_error

__all__ = ["claim", "claims_dir", "holder"]


def claims_dir(where: str | os.PathLike) -> Path | RemotePath:
    """The folder of the claims on the log at ``where``: ``<log>.claims`` next to it; ``_claims`` inside a remote log
    that is a whole bucket (a bucket has nothing next to it; readers of the log skip nested objects)."""
    path = resolve_log(where)
    if isinstance(path, RemotePath) and len(path.parts) == 1:
        return path / "_claims"
    return path.with_name(path.name + ".claims")


def holder(where: str | os.PathLike, key: str) -> str:
    """Who holds the claim on ``key``, as its file says (``pid P on host H since T``); "" when unknown."""
    try:
        text = (claims_dir(where) / key).read_text().strip()
    except OSError:
        return ""
    if text.startswith("{"):  # a remote log's claim is a lease object (see _remote_claim)
        h = json.loads(text)
        return f"pid {h.get('pid', '?')} on host {h.get('host', '?')} since {h.get('started', '?')}"
    return text


def _lock(path: Path, wait: bool) -> int | None:
    """An fd holding the lock on the file now at ``path``; None when another process holds it and not ``wait``."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder released (unlinked) it while we waited: lock the path's new file


@contextlib.contextmanager
def claim(where: str | os.PathLike, key: str, *, wait: bool) -> Iterator[bool]:
    """Hold the claim on probe ``key`` of the log at ``where`` for the ``with`` block.

    Yields True once held; False at once when another live process holds it and ``wait`` is False. Re-read
    the log inside the block: the probe may have been logged by the claim's previous holder.

    Raises:
        ResultsError: the claims folder cannot be written (the message says how to log elsewhere).
    """
    folder = claims_dir(where)
    path = folder / key
    if isinstance(path, RemotePath):
        with _remote_claim(path, key, wait) as mine:
            yield mine
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _lock(path, wait)
    except OSError as e:
        raise write_error(path, e) from None
    if fd is None:
        yield False
        return
    try:
        os.ftruncate(fd, 0)
        who = f"pid {os.getpid()} on host {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.pwrite(fd, f"{who}\n".encode(), 0)
        yield True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # still ours: nobody else locks this inode while we hold it
        os.close(fd)


@contextlib.contextmanager
def _remote_claim(path: RemotePath, key: str, wait: bool) -> Iterator[bool]:
    # On object storage a claim is a lease object (featcache.store._lease): created conditionally, kept alive by a
    # heartbeat, taken over once its holder is gone (a killed sweep), deleted when released.
    from .store._lease import RemoteLease

    lease = RemoteLease(path, f"probe {key}")
    try:
        lease.acquire(wait=float("inf") if wait else 0.0)
    except StoreLockedError:
        yield False
        return
    except OSError as e:
        raise write_error(path, e) from None
    try:
        yield True
    finally:
        lease.release()
