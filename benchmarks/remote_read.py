"""Benchmark: probing a store on object storage (a local S3 server) against the same store on local disk.

Writes one synthetic float16 store (``--rows`` train rows x ``--dim`` features, 100 MB at the defaults, plus
``--rows // 10`` test rows; the writer's default ~16 MiB chunks) twice with featcache's StoreWriter: into a temporary
directory and to ``s3://featcache-bench/`` served by moto's server on 127.0.0.1 (:mod:`featcache.testing.s3`, the
server the tests use, here as a process of its own: a Python server on this machine, so the figures measure
featcache's reading against a slow S3 that takes CPU from the client, not a cloud store's bandwidth). Then, in the
same run, for each of the two:

1. stream: one epoch of the probe's streamed feed (:class:`featcache.feed.Streamed`, as ``run_probe`` builds it with
   ``--max-memory``) served to the end with no heads: the read path alone, blocks read in parallel and ahead;
2. resident: ``ConcatView.load`` of every train row (what ``--in-memory yes`` downloads once);
3. probe: ``run_probe`` streamed (``--in-memory no``), one bn-linear head, ``--epochs`` epochs: rows/s is train rows x
   epochs over the wall time, heads included.

Prints rows/s for each and S3 / local. Expected runtime at the defaults on the 2-core machine: about a minute.

Usage:
    python benchmarks/remote_read.py                     # 100,000 x 512 float16, --max-memory 256M
    python benchmarks/remote_read.py --rows 20000        # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from featcache import __version__
from featcache.concat import ConcatView
from featcache.feed import Arrays, Streamed
from featcache.feed_batches import BatchBuffer
from featcache.heads import HeadConfig
from featcache.locations import location
from featcache.probe import run_probe
from featcache.probe_config import ProbeConfig
from featcache.store import open_store
from featcache.testing.s3 import LocalS3
from featcache.testing.stores import make_store


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000, help="train rows")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-memory", type=int, default=256 * 2**20, help="the stream's budget in bytes")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    a = p.parse_args(argv)
    if min(a.rows, a.dim, a.epochs) < 1 or a.classes < 2 or a.rows < 100:
        p.error("--rows >= 100, --dim/--epochs >= 1, --classes >= 2")
    return a


def build(where, a: argparse.Namespace, X: np.ndarray, y: np.ndarray) -> float:
    """Write the store at ``where``; returns the seconds it took."""
    t = time.perf_counter()
    n_test = a.rows // 10
    make_store(where, {"train": (X, y), "test": (X[:n_test], y[:n_test])}, name="bench", chunk_rows=None,
               dtype="float16")  # fmt: skip
    return time.perf_counter() - t


def stream_epoch(path, a: argparse.Namespace) -> float:
    """Rows/s of one streamed epoch of the train split, served batch by batch, no heads."""
    train = ConcatView([open_store(path)], "train")
    arrays = Arrays(train, train.valid_rows, [None], "streamed", torch.device("cpu"), max_memory=a.max_memory)
    feed = Streamed(arrays, None, [None])
    buffer = BatchBuffer(256, train.dim, torch.device("cpu"), torch.float32)
    t = time.perf_counter()
    n = sum(len(x) for x, _ in feed.batches(0, torch.zeros(len(feed), dtype=torch.int64), buffer, seed=0,
                                               batch_size=256))  # fmt: skip
    return n / (time.perf_counter() - t)


def resident(path) -> float:
    train = ConcatView([open_store(path)], "train")
    t = time.perf_counter()
    rows = len(train.load())
    return rows / (time.perf_counter() - t)


def probe(path, a: argparse.Namespace) -> tuple[float, float]:
    """(rows/s, test top-1) of a streamed probe."""
    heads = HeadConfig(weight_decays=(5e-4,), epochs=a.epochs, batch_size=256, lr=0.01, momentum=0.9, seed=0)
    t = time.perf_counter()
    record = run_probe(ProbeConfig((location(path),), heads, device="cpu", max_memory=a.max_memory,
                                   in_memory="no"))  # fmt: skip
    assert record.memory == "streamed", record.memory
    return a.rows * a.epochs / (time.perf_counter() - t), record.selected.test_top1


def main(argv: list[str] | None = None) -> dict:
    a = _parse(argv)
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    y = rng.integers(0, a.classes, a.rows).astype(np.int64)
    means = rng.standard_normal((a.classes, a.dim)).astype(np.float32) * 0.1
    X = (rng.standard_normal((a.rows, a.dim), dtype=np.float32) + means[y]).astype(np.float16)
    tmp = Path(tempfile.mkdtemp(prefix="featcache-remote-"))
    out = {"rows": a.rows, "dim": a.dim, "mb": round(X.nbytes / 2**20, 1), "max_memory": a.max_memory,
           "epochs": a.epochs, "featcache": __version__, "python": platform.python_version(),
           "cpus": os.cpu_count()}  # fmt: skip
    try:
        with LocalS3("featcache-bench", process=True) as s3:
            os.environ.update(s3.env)
            places = {"local": tmp / "bench.zarr", "s3": s3.url("cache", "bench.zarr")}
            for name, where in places.items():
                out[f"{name}_write_s"] = round(build(location(where), a, X, y), 1)
            for name, where in places.items():
                out[f"{name}_stream_rows_s"] = round(stream_epoch(where, a))
                out[f"{name}_resident_rows_s"] = round(resident(where))
                rate, top1 = probe(where, a)
                out[f"{name}_probe_rows_s"], out[f"{name}_probe_top1"] = round(rate), round(top1, 4)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{a.rows:,} x {a.dim} float16 ({out['mb']} MB), --max-memory {a.max_memory / 2**20:.0f}M, "
          f"{a.epochs} epoch(s), {a.threads} torch thread(s)")  # fmt: skip
    print(f"{'':10} {'local disk':>14} {'local S3':>14} {'S3 / local':>11}")
    for what in ("stream", "resident", "probe"):
        lo, re_ = out[f"local_{what}_rows_s"], out[f"s3_{what}_rows_s"]
        print(f"{what:10} {lo:>12,} /s {re_:>12,} /s {re_ / lo:>10.2f}x")
    print(f"write: local {out['local_write_s']} s, S3 {out['s3_write_s']} s; probe test top-1 local "
          f"{out['local_probe_top1']}, S3 {out['s3_probe_top1']} (must be equal)")  # fmt: skip
    if a.out:
        a.out.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
