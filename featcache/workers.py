"""DataLoader worker processes that die with the process that started them.

A DataLoader worker whose parent is killed (SIGKILL, or SIGTERM without a handler) notices the parent is gone,
leaves its loop, and then waits for ever at exit to flush its result queue into a pipe nobody reads: each
stranded worker keeps its memory (hundreds of MB with image batches in flight). So each worker asks the kernel
for SIGKILL when the thread that started it ends (Linux ``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon
thread in the worker polls its parent id and exits when it changes.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable

import torch

__all__ = ["worker_init"]

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_S = 1.0  # the fallback watchdog's period


def worker_init() -> Callable[[int], None]:
    """A DataLoader ``worker_init_fn`` for workers started by this process (call it in the process that
    iterates the loader): one intra-op thread each, and death with the parent."""
    return functools.partial(_init, os.getpid())


def _init(parent: int, worker_id: int) -> None:
    torch.set_num_threads(1)  # workers decode; the main process owns the cores' BLAS threads
    if not _parent_death_signal():
        threading.Thread(target=_watch, args=(parent,), name="featcache-parent-watch", daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _parent_death_signal() -> bool:
    """Arm SIGKILL on parent death; False where the kernel offers no such thing."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        threading.Event().wait(POLL_S)
    os._exit(1)
