"""Kill ``featcache extract`` processes at chosen or random moments, resume them, and compare the stores.

The machinery of ``tests/test_crash.py`` and ``benchmarks/kill_resume.py``: a :class:`Setup` (a CIFAR-format
fixture and a ResNet10 checkpoint), a :class:`Launcher` that starts ``featcache`` as a fresh interpreter or a
:class:`ForkServer` that forks it from one process that imported torch once (with hooks that sleep or SIGKILL at
the n-th call of a function), :func:`trial` (one kill at a random moment, one resume) and :func:`compare` (the
resumed store against an uninterrupted one: rows, ids, labels, skipped rows, ``verify``, leftovers).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import packaged_config_dir
from ..store import open_store, store_path
from .formats import write_cifar10

__all__ = [
    "ForkServer",
    "Launcher",
    "Proc",
    "Setup",
    "chunk_markers",
    "compare",
    "leftovers",
    "make_setup",
    "timed_run",
    "trial",
]

DATASET = "cifar10"
POLL_S = 0.002
# One intra-op thread in every run (so all runs compute alike): on a shared machine, OpenMP threads
# spin against other processes and the same extraction took 25 s instead of 1 s here.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# The fork server: imports the CLI and the extractor, then forks one child per request line. A child
# sends its output to a log file and runs `featcache` as the console script would. Hooks wrap a function
# ("module:Attr.path") of the child: `sleep_at` [target, s] sleeps before every call, so a test can meet
# a writer while it holds its store; `kill_at` [target, n] SIGKILLs the child at the n-th call, so a test
# can kill it at an exact step of the write order.
_SERVER = r"""
import importlib, json, os, signal, sys, time, traceback
from featcache.cli import main
import featcache.extract

def hook(target, before):
    module, _, attr = target.partition(":")
    *path, name = attr.split(".")
    owner = importlib.import_module(module)
    for part in path:
        owner = getattr(owner, part)
    orig, calls = getattr(owner, name), [0]
    def wrapper(*args, **kwargs):
        calls[0] += 1
        before(calls[0])
        return orig(*args, **kwargs)
    setattr(owner, name, wrapper)

def child(req):
    fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if req.get("sleep_at"):
        target, seconds = req["sleep_at"]
        hook(target, lambda n: time.sleep(seconds))
    if req.get("kill_at"):
        target, at = req["kill_at"]
        hook(target, lambda n: n == at and os.kill(os.getpid(), signal.SIGKILL))
    code = 1
    try:
        main(req["argv"], prog_name="featcache")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

done = {}  # pid -> exit status of children reaped by a poll
for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "start":
        pid = os.fork()
        if pid == 0:
            child(req)
        print(pid, flush=True)
        continue
    pid = req["pid"]
    if pid not in done:
        got, status = os.waitpid(pid, os.WNOHANG if req["op"] == "poll" else 0)
        if got:
            done[pid] = os.waitstatus_to_exitcode(status)
    print(json.dumps(done.get(pid)), flush=True)
"""


class Proc:
    """A started ``featcache`` process: its pid, output log, SIGKILL and exit status (None while it runs)."""

    def __init__(self, pid: int, log: Path, poll, wait):
        self.pid, self.log, self.poll, self.wait = pid, log, poll, wait

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


class Launcher:
    """Starts each command as a fresh interpreter running the ``featcache`` console script."""

    def __init__(self):
        script = Path(sys.executable).with_name("featcache")
        self.prefix = (
            [str(script)] if script.exists() else [sys.executable, "-c", "from featcache.cli import main; main()"]
        )

    def start(self, argv: list[str], log: Path, **hooks) -> Proc:
        if hooks:
            raise ValueError("hooks (sleep_at, kill_at) need the fork server")
        with open(log, "w") as f:
            p = subprocess.Popen(
                self.prefix + argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=ENV
            )
        return Proc(p.pid, log, p.poll, p.wait)

    def close(self) -> None:
        pass


class ForkServer(Launcher):
    """Forks each command from one server process that imported featcache and torch once."""

    def __init__(self):
        self.server = subprocess.Popen(
            [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV
        )

    def _ask(self, req: dict) -> int | None:
        self.server.stdin.write(json.dumps(req) + "\n")
        self.server.stdin.flush()
        answer = self.server.stdout.readline()
        if not answer:
            raise RuntimeError("the fork server died; run the command without --fork to see why")
        return json.loads(answer)

    def start(self, argv: list[str], log: Path, **hooks) -> Proc:
        pid = self._ask({"op": "start", "argv": argv, "log": str(log), **hooks})
        return Proc(
            pid, log, lambda: self._ask({"op": "poll", "pid": pid}), lambda: self._ask({"op": "wait", "pid": pid})
        )

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait()


@dataclass
class Setup:
    """The inputs of every run: roots, a checkpoint file and the extract options."""

    root: Path
    chunk_rows: int
    batch_size: int
    cache_dir: Path | None = None  # default <root>/cache

    @property
    def cache(self) -> Path:
        return self.cache_dir or self.root / "cache"

    def argv(self, store: str) -> list[str]:
        r = self.root
        roots = ["--data-dir", str(r / "data"), "--cache-dir", str(self.cache), "--checkpoint-dir", str(r / "ckpts"),
                 "--config-dir", str(packaged_config_dir())]  # fmt: skip
        return [*roots, "extract", "--ckpt", str(r / "ckpts" / "net.pth"), "--arch", "resnet10", "--dataset", DATASET,
                "--transform", "32px", "--dtype", "float32", "--workers", "0", "--chunk-rows", str(self.chunk_rows),
                "--batch-size", str(self.batch_size), "--store-name", store, "--quiet"]  # fmt: skip

    def path(self, store: str) -> Path:
        return store_path(self.cache, DATASET, store)


def make_setup(root: Path, images: int = 400, chunk_rows: int = 16, batch_size: int = 8, seed: int = 0) -> Setup:
    """Write a CIFAR-10-format fixture of ``images`` images (80% train) and a ResNet10 checkpoint under ``root``."""
    import torch

    from .checkpoints import make_net

    n_test = images // 5
    write_cifar10(root / "data" / "cifar", n_train_per_batch=(images - n_test) // 5, n_test=n_test, seed=seed)
    (root / "ckpts").mkdir(parents=True, exist_ok=True)
    torch.save(make_net("resnet10", seed=seed).state_dict(), root / "ckpts" / "net.pth")
    return Setup(root, chunk_rows, batch_size)


def leftovers(path: Path) -> list[str]:
    """Temp files and locks a finished writer must not leave in a store."""
    found = [*path.rglob("*.partial"), *path.rglob(".*.tmp"), *(path / "_featcache").glob("lock*")]
    return sorted(str(p.relative_to(path)) for p in found)


def compare(ref: Path, got: Path) -> tuple[int, list[str]]:
    """(rows of ``ref`` that ``got`` lacks or holds other bytes for, problems found)."""
    ref_store = open_store(ref)
    total = sum(ref_store.split(s).rows for s in ref_store.splits)
    try:
        store = open_store(got)
        problems = store.verify() + [f"leftover {p}" for p in leftovers(got)]
        lost = 0
        for name in ref_store.splits:
            a, b = ref_store.split(name), store.split(name)
            if a.ids != b.ids or not np.array_equal(a.labels, b.labels):
                problems.append(f"{name}: ids or labels differ")
            if not np.array_equal(a.skipped_rows, b.skipped_rows):
                problems.append(f"{name}: skipped rows differ")
            same = (a.read().view(np.uint8) == b.read().view(np.uint8)).all(axis=1)
            lost += int((~same).sum())
    except Exception as e:  # any failure to read the resumed store means its rows are lost
        return total, [f"{type(e).__name__}: {e}"]
    return lost, problems


def chunk_markers(path: Path) -> int:
    return len(list((path / "_featcache").glob("*/*.json")))


def _wait_for(path: Path, proc: Proc, timeout: float = 120) -> None:
    deadline = time.perf_counter() + timeout
    while not path.exists() and proc.poll() is None and time.perf_counter() < deadline:
        time.sleep(POLL_S)


def timed_run(launcher: Launcher, setup: Setup, store: str, log: Path) -> tuple[float, float]:
    """Run to the end; returns (seconds until the store directory appeared, seconds it then held the lock)."""
    t0 = time.perf_counter()
    proc = launcher.start(setup.argv(store), log)
    _wait_for(setup.path(store), proc)
    t_dir = time.perf_counter()
    lock = setup.path(store) / "_featcache" / "lock"
    for held in (False, True):  # until the lock is taken, then until it is released
        while proc.poll() is None and lock.exists() == held:
            time.sleep(POLL_S)
    t_released = time.perf_counter()
    if proc.wait() != 0:
        raise RuntimeError(f"uninterrupted run failed:\n{proc.output()}")
    return t_dir - t0, t_released - t_dir


def trial(launcher: Launcher, setup: Setup, store: str, hold_s: float, rng: random.Random, logs: Path) -> dict:
    """One kill at a random moment, one resume, one comparison against the reference store ``ref``."""
    path = setup.path(store)
    t0 = time.perf_counter()
    proc = launcher.start(setup.argv(store), logs / f"{store}.kill.log")
    _wait_for(path, proc)
    delay = rng.uniform(0, 1.1 * hold_s)  # a tenth past the lock's release: kills while it exits too
    time.sleep(delay)
    at_kill = chunk_markers(path)
    proc.kill()
    rc = proc.wait()
    t1 = time.perf_counter()
    resume = launcher.start(setup.argv(store), logs / f"{store}.resume.log")
    resume_rc = resume.wait()
    t2 = time.perf_counter()
    lost, problems = compare(setup.path("reference"), path)
    if resume_rc != 0:
        problems.insert(0, f"resume exited {resume_rc}: {resume.output().strip().splitlines()[-1:]}")
    return {
        "store": store,
        "kill_after_s": delay,
        "killed": rc == -signal.SIGKILL,
        "chunks_at_kill": at_kill,
        "lost": lost,
        "problems": problems,
        "run_s": t1 - t0,
        "resume_s": t2 - t1,
    }
