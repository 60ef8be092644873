"""Benchmark: SIGKILL an extraction at random moments, resume it, and compare with an uninterrupted run.

Each trial writes a fresh store with ``featcache extract`` running as its own process (a CIFAR-format
fixture, ResNet10 at 32 px, fp32 storage, ``--workers 0``, small ``--chunk-rows`` so there are many
chunks). The process gets SIGKILL at a moment drawn uniformly over the time an uninterrupted run holds
the store (from creating its directory: taking the lock, creating the splits, writing and fsyncing
chunks, marking them complete, releasing the lock), plus a tenth of it (the process exiting). The same
command then runs again, and the store must

* equal the uninterrupted store byte for byte: features, ids, labels and skipped rows of every split;
* pass ``Store.verify`` (checksums, sizes, NaN/Inf, ids/labels hashes, completion flag);
* hold no leftover temp file (``*.partial``, ``.*.tmp``) and no lock.

It prints one line per trial, then ``N/K survived, R rows lost`` (rows of the reference that the resumed
store lacks or holds different bytes for) and timings, and exits non-zero unless every trial survived.

Processes start in one of two ways. By default each is a fresh interpreter running the ``featcache``
console script (what a user runs). ``--fork`` forks them from a server process that imported featcache
and torch once (no torch op runs before the fork, so no thread pool is copied): the same CLI code path,
without the ~5 s interpreter and torch start on a busy machine; the test suite uses it. The machinery (setup,
launchers, one trial, the comparison) lives in :mod:`featcache.testing.crash`, shared with ``tests/test_crash.py``.

Usage (from the repository root):
    python benchmarks/kill_resume.py                 # 20 kills
    python benchmarks/kill_resume.py --kills 5 --fork
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from featcache.testing.crash import ForkServer, Launcher, Setup, chunk_markers, make_setup, timed_run, trial


def run(kills: int, setup: Setup, launcher: Launcher, seed: int = 0, echo=print) -> list[dict]:
    """The reference store, then ``kills`` trials; returns the trials' records."""
    logs = setup.root / "logs"
    logs.mkdir(exist_ok=True)
    t_start, hold_s = timed_run(launcher, setup, "reference", logs / "reference.log")
    n_chunks = chunk_markers(setup.path("reference"))
    echo(f"reference: {n_chunks} chunks; {t_start:.1f}s to start, {hold_s:.2f}s holding the store's lock")
    rng = random.Random(seed)
    out = []
    for k in range(kills):
        r = trial(launcher, setup, f"trial{k:02d}", hold_s, rng, logs)
        r["phase"] = _phase(r, n_chunks)
        echo(f"kill {k + 1:2d} at +{r['kill_after_s']:.3f}s, {r['phase']} ({r['chunks_at_kill']}/{n_chunks} chunks); "
             f"resume {r['resume_s']:.1f}s: {'OK' if not r['problems'] else '; '.join(r['problems'][:3])}")  # fmt: skip
        out.append(r)
    return out


PHASES = ("before the first chunk", "between chunks", "after the last chunk", "after the process exited")


def _phase(r: dict, n_chunks: int) -> str:
    if not r["killed"]:
        return PHASES[3]
    return PHASES[0] if r["chunks_at_kill"] == 0 else PHASES[1] if r["chunks_at_kill"] < n_chunks else PHASES[2]


def summary(records: list[dict], seconds: float) -> str:
    survived = sum(not r["problems"] and not r["lost"] for r in records)
    lost = sum(r["lost"] for r in records)
    mean = lambda key: sum(r[key] for r in records) / max(len(records), 1)  # noqa: E731
    phases = ", ".join(f"{sum(r['phase'] == ph for r in records)} {ph}" for ph in PHASES)
    return (
        f"{survived}/{len(records)} survived, {lost} rows lost\n"
        f"kills: {phases}\n"
        f"time: mean killed run {mean('run_s'):.1f}s, mean resume {mean('resume_s'):.1f}s, total {seconds:.0f}s"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20, help="trials: one SIGKILL and one resume each")
    ap.add_argument("--images", type=int, default=400, help="images in the CIFAR-format fixture (80%% train)")
    ap.add_argument("--chunk-rows", type=int, default=16, help="rows per store chunk (small: many chunks)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0, help="seeds the fixture and the kill moments")
    ap.add_argument("--fork", action="store_true", help="fork processes from a server that imported torch once")
    ap.add_argument("--workdir", type=Path, help="keep the stores and logs here (default: a temporary dir)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="kill_resume_"))
    setup = make_setup(root, args.images, args.chunk_rows, args.batch_size, args.seed)
    launcher = ForkServer() if args.fork else Launcher()
    try:
        records = run(args.kills, setup, launcher, args.seed)
    finally:
        launcher.close()
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(summary(records, time.perf_counter() - t0))
    return 0 if all(not r["problems"] and not r["lost"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
