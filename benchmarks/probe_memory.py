"""Benchmark: probing stores larger than the memory budget (the block-shuffled stream of featcache.feed).

Builds ``--stores`` synthetic float16 stores (``--rows`` train rows x ``--dim`` features each, 6.4 GB of train
features at the defaults: 3,145,728 x 4 x 256; plus ``--rows // 64`` test rows) with featcache's StoreWriter, chunk
by chunk, in a temporary directory under ``--dir`` (removed at the end unless ``--keep``). Noise rows come from a
pool of 65,536 Gaussian rows per store read at a per-chunk offset and stride, plus a Gaussian class mean per label:
cheap to write, and a probe has something to learn. Then, with one bn-linear head (the seed protocol's lr and
momentum, batch 256, ``--epochs`` epochs):

1. streamed: ``plan_memory`` with ``--max-memory`` (default 1G, as ``featcache probe --max-memory 1G``) must pick
   streaming; the heads train on :class:`featcache.feed.Streamed` (what ``run_probe`` builds). The page cache holds
   much of the stores after writing them (the script reports how much with ``fincore``), so this is the warm rate.
2. streamed, cold: the stores' chunk files are evicted from the page cache with ``posix_fadvise(DONTNEED)`` (per
   file, no root needed, other processes' caches untouched) and the same stream runs again. On a VM the host may
   still cache the disk image: "cold" is cold for this machine's kernel.
3. in memory: the first ``--subset`` rows (fits the budget) loaded as one tensor, the same head trained on it.

Peak anonymous memory is sampled from ``RssAnon`` in /proc/self/status every 5 ms during each run ("start anon" is
its value as the run starts: the interpreter, torch and earlier leftovers; file-backed pages of the memory-mapped
chunks are ``RssFile`` and not counted); "buffered" is the most rows the stream held, from the
feed's own gauge. Targets: streamed peak anonymous memory under 1.5 GiB; streamed (warm) at least half the
in-memory rows/s. Both are printed with ok/MISSED.

Expected runtime at the defaults on the 2-core development CPU: about 2 minutes (writing the stores about 70 s).
``--threads`` defaults to 1: on that shared machine two intra-op threads made the heads 3-4x slower (130k vs 36k
rows/s at D = 1,024, measured 2026-11-26 under a load average of 2-3), and the stream's reader needs a core too.

Usage:
    python benchmarks/probe_memory.py                        # 6.4 GB, 1 epoch, --max-memory 1G
    python benchmarks/probe_memory.py --rows 200000 --no-cold  # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from featcache import __version__
from featcache.concat import ConcatView
from featcache.feed import Arrays, Rows, Streamed, plan_memory
from featcache.heads import HeadConfig, MultiHeadProbe
from featcache.store import (
    CheckpointRef,
    DatasetRef,
    PreprocessRef,
    Provenance,
    Software,
    SplitData,
    Store,
    StoreWriter,
    chunk_rows_for,
)

SIGNAL = 0.06  # class-mean scale relative to unit noise
POOL = 65_536  # noise rows per store
GiB = 2**30
TARGET_ANON = 1.5 * GiB
TARGET_RATIO = 0.5


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=3 * 2**20, help="train rows")
    p.add_argument("--stores", type=int, default=4)
    p.add_argument("--dim", type=int, default=256, help="features per store")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-memory", default="1G", help="the budget, as featcache probe --max-memory")
    p.add_argument("--subset", type=int, default=400_000, help="rows of the in-memory comparison")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: see the docstring)")
    p.add_argument("--no-cold", dest="cold", action="store_false", help="skip the evicted-cache run")
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the temporary stores go")
    p.add_argument("--keep", action="store_true", help="keep the stores (their path is printed)")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    a = p.parse_args(argv)
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    text = a.max_memory.strip().upper().removesuffix("B")
    a.budget = int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)
    if min(a.rows, a.stores, a.dim, a.epochs, a.subset) < 1 or a.classes < 2 or a.rows < 64:
        p.error("--rows >= 64, --stores/--dim/--epochs/--subset >= 1 and --classes >= 2")
    a.subset = min(a.subset, a.rows)
    return a


class MemorySampler(threading.Thread):
    """Peak RssAnon and RssFile (bytes) of this process, sampled every ``every`` seconds; :meth:`reset` per phase."""

    def __init__(self, every: float = 0.005):
        super().__init__(daemon=True)
        self.every, self._stop_event = every, threading.Event()
        self.anon = self.file = 0

    @staticmethod
    def now() -> tuple[int, int]:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return tuple(int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile"))

    def reset(self) -> int:
        """Start a phase; returns the anonymous bytes at its start."""
        self.anon, self.file = self.now()
        return self.anon

    def run(self) -> None:
        while not self._stop_event.wait(self.every):
            anon, file = self.now()
            self.anon, self.file = max(self.anon, anon), max(self.file, file)

    def stop(self) -> None:
        self._stop_event.set()


def build_stores(root: Path, a: argparse.Namespace, seed: int = 0) -> list[Path]:
    """Write ``a.stores`` complete float16 stores (train and test); one chunk in memory at a time."""
    rng = np.random.default_rng(seed)
    sizes = {"train": a.rows, "test": max(a.rows // 64, a.classes)}
    labels = {s: rng.integers(0, a.classes, n).astype(np.int64) for s, n in sizes.items()}
    means = (rng.standard_normal((a.classes, a.stores * a.dim)) * SIGNAL).astype(np.float32)
    names = [str(c) for c in range(a.classes)]
    paths = []
    for k in range(a.stores):
        path = root / "synthetic" / f"store{k}.zarr"
        prov = Provenance(
            dataset=DatasetRef("synthetic", "array"),
            checkpoint=CheckpointRef(f"store{k}", "none", f"synthetic-{k}", "-"),
            layer="none", feature_dim=a.dim, dtype="float16", precision="fp32", transform={"name": "identity"},
            preprocess=PreprocessRef("numpy", "cpu"), software=Software(*(["benchmark"] * 6)),
        )  # fmt: skip
        srng = np.random.default_rng([seed, k])
        pool = srng.standard_normal((POOL, a.dim), dtype=np.float32)
        mu = means[:, k * a.dim : (k + 1) * a.dim]
        with StoreWriter(path, prov) as writer:
            for split, n in sizes.items():
                ids = [f"{split}/{i}" for i in range(n)]
                data = SplitData(split, ids, labels[split], f"synthetic-{split}-{n}-{seed}", names)
                sw = writer.split(data, a.dim, "float16", chunk_rows=chunk_rows_for(a.dim, "float16"))
                for i in sw.pending():
                    lo, hi = sw.bounds(i)
                    start, stride = srng.integers(0, POOL), 2 * srng.integers(0, POOL // 2) + 1  # odd: a permutation
                    block = pool[(start + stride * np.arange(hi - lo)) % POOL]
                    block += mu[labels[split][lo:hi]]
                    sw.write_chunk(i, block)
                sw.finalize()
        paths.append(path)
    return paths


def _chunk_files(paths: list[Path]) -> list[Path]:
    return sorted(f for p in paths for f in (p / "train" / "features" / "c").rglob("*") if f.is_file())


def cached_bytes(files: list[Path]) -> int | None:
    """Bytes of ``files`` in the page cache (util-linux fincore), or None without it."""
    if not shutil.which("fincore"):
        return None
    total = 0
    for i in range(0, len(files), 200):
        out = subprocess.run(["fincore", "-b", "-n", "-o", "RES", *map(str, files[i : i + 200])],
                             capture_output=True, text=True, check=False).stdout  # fmt: skip
        total += sum(int(x) for x in out.split())
    return total


def evict(files: list[Path]) -> None:
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _fit(X, y, head: HeadConfig, dim: int, classes: int, sampler: MemorySampler) -> tuple[MultiHeadProbe, float]:
    t = time.perf_counter()
    probe = MultiHeadProbe(head, dim, classes).fit(X, y)
    return probe, time.perf_counter() - t


def _streamed(paths, a, head, sampler) -> dict:
    stores = [Store(p) for p in paths]
    train, test = ConcatView(stores, "train"), ConcatView(stores, "test")
    n = len(train.valid_rows)
    mode = plan_memory("auto", a.budget, train, test, 1, n, 0)
    # streamed even where the budget would hold the rows (a small --rows smoke run); the table names the plan's mode
    arrays = Arrays(train, train.valid_rows, [None], "streamed", torch.device("cpu"), a.budget)
    start = sampler.reset()
    S = Streamed(arrays, None, [None] * a.epochs)
    probe, seconds = _fit(S, train.labels, head, train.dim, a.classes, sampler)
    anon, file = sampler.anon, sampler.file
    acc = probe.evaluate(Rows(test, test.valid_rows), test.labels[test.valid_rows])["top1"][0]
    shape = S.shape
    return {"mode": mode, "rows": n, "seconds": seconds, "start_anon": start, "rows_per_s": n * a.epochs / seconds,
            "peak_anon": anon, "peak_file": file, "buffered_rows": S.peak_rows,
            "buffered_bytes": S.peak_rows * shape.row_bytes,
            "block_rows": shape.block_rows, "buffer_blocks": shape.buffer_blocks, "test_top1": acc}  # fmt: skip


def _in_memory(paths, a, head, sampler) -> dict:
    stores = [Store(p) for p in paths]
    train, test = ConcatView(stores, "train"), ConcatView(stores, "test")
    start = sampler.reset()
    t = time.perf_counter()
    X = torch.from_numpy(train.load(np.arange(a.subset)))
    load_s = time.perf_counter() - t
    probe, seconds = _fit(X, train.labels[: a.subset], head, train.dim, a.classes, sampler)
    acc = probe.evaluate(Rows(test, test.valid_rows), test.labels[test.valid_rows])["top1"][0]
    return {"mode": "resident", "rows": a.subset, "seconds": seconds, "start_anon": start,
            "rows_per_s": a.subset * a.epochs / seconds,
            "peak_anon": sampler.anon, "peak_file": sampler.file, "load_s": load_s, "test_top1": acc}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    a = _parse(argv)
    torch.set_num_threads(a.threads)
    D = a.stores * a.dim
    train_bytes = a.rows * D * 2
    head = HeadConfig(epochs=a.epochs, batch_size=256, lr=0.01, momentum=0.9, milestones=(), weight_decays=(1e-4,))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    print(f"featcache {__version__} benchmark: probing stores larger than the memory budget (streaming)")
    print(f"machine  {cpu}, {os.cpu_count()} cores, {ram / GiB:.0f} GiB RAM; torch {torch.__version__}, "
          f"{torch.get_num_threads()} intra-op threads; python {platform.python_version()}")  # fmt: skip
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"date     {time.strftime('%Y-%m-%d %H:%M:%S %z')}, load average {load}")
    print(f"data     {a.stores} stores x {a.dim} = {a.rows:,} x {D} float16 train ({train_bytes / 1e9:.2f} GB, "
          f"{train_bytes / GiB:.2f} GiB), {a.classes} classes; budget --max-memory {a.max_memory} "
          f"({a.budget / GiB:.2f} GiB); one bn-linear head, batch 256, {a.epochs} epoch(s)", flush=True)  # fmt: skip
    sampler = MemorySampler()
    sampler.start()
    root = Path(tempfile.mkdtemp(prefix="featcache-probe-memory-", dir=a.dir))
    results: dict[str, dict] = {}
    try:
        t = time.perf_counter()
        paths = build_stores(root, a)
        files = _chunk_files(paths)
        on_disk = sum(f.stat().st_size for f in files)
        print(f"build    {time.perf_counter() - t:.1f} s: {len(files)} train chunk files, {on_disk / 1e9:.2f} GB "
              f"on disk under {root}", flush=True)  # fmt: skip

        def cache_note() -> str:
            got = cached_bytes(files)
            return "page cache unknown (no fincore)" if got is None else f"{got / 1e9:.2f} GB of it in the page cache"

        print(f"warm     {cache_note()} before streaming", flush=True)
        results["streamed"] = _streamed(paths, a, head, sampler)
        print(f"         streamed {results['streamed']['seconds']:.1f} s", flush=True)
        if a.cold:
            evict(files)
            print(f"cold     posix_fadvise(DONTNEED) on every chunk file: {cache_note()}", flush=True)
            results["streamed cold"] = _streamed(paths, a, head, sampler)
            print(f"         streamed {results['streamed cold']['seconds']:.1f} s", flush=True)
        results["in memory"] = _in_memory(paths, a, head, sampler)
        print(f"         in memory {results['in memory']['seconds']:.1f} s "
              f"(+ {results['in memory']['load_s']:.1f} s to load {a.subset:,} rows)", flush=True)  # fmt: skip
    finally:
        sampler.stop()
        if a.keep:
            print(f"kept     {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    s = results["streamed"]
    print(f"\nstream   blocks of {s['block_rows']:,} rows ({s['block_rows'] * D * 2 / 2**20:.0f} MiB), "
          f"{s['buffer_blocks']} blocks a buffer; plan_memory chose '{s['mode']}'")  # fmt: skip
    print(f"{'run':<28} {'rows':>11} {'seconds':>8} {'rows/s':>10} {'start anon':>10} {'peak anon':>10} "
          f"{'peak file':>10} {'buffered':>10} {'test top-1':>10}")  # fmt: skip
    label = {"streamed": "streamed (page cache warm)", "streamed cold": "streamed (cache evicted)",
             "in memory": f"in memory ({a.subset:,} rows)"}  # fmt: skip
    for key, r in results.items():
        buffered = f"{r['buffered_bytes'] / GiB:.2f} GiB" if "buffered_bytes" in r else "-"
        print(f"{label[key]:<28} {r['rows']:>11,} {r['seconds']:>8.1f} {r['rows_per_s']:>10,.0f} "
              f"{r['start_anon'] / GiB:>6.2f} GiB {r['peak_anon'] / GiB:>6.2f} GiB {r['peak_file'] / GiB:>6.2f} GiB "
              f"{buffered:>10} "
              f"{r['test_top1']:>9.2f}%")  # fmt: skip
    anon_ok = all(r["peak_anon"] < TARGET_ANON for k, r in results.items() if k.startswith("streamed"))
    ratio = s["rows_per_s"] / results["in memory"]["rows_per_s"]
    ok = anon_ok and ratio >= TARGET_RATIO and s["mode"] == "streamed"
    worst = max(r["peak_anon"] for k, r in results.items() if k.startswith("streamed"))
    print(f"target   streamed peak anonymous memory < {TARGET_ANON / GiB:.1f} GiB: {worst / GiB:.2f} GiB "
          f"{'ok' if anon_ok else 'MISSED'}")  # fmt: skip
    print(f"target   streamed (warm) / in-memory rows/s >= {TARGET_RATIO}: {ratio:.2f} "
          f"{'ok' if ratio >= TARGET_RATIO else 'MISSED'}")  # fmt: skip
    if a.out:
        record = {"benchmark": "probe_memory", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "featcache": __version__,
                  "torch": torch.__version__, "cpu": cpu, "args": {k: str(v) for k, v in vars(a).items()},
                  "train_bytes": train_bytes, "results": results, "ratio": ratio, "ok": ok}  # fmt: skip
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {a.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
