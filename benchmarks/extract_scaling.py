#!/usr/bin/env python
"""Benchmark: one extraction process against N ranks under torchrun (gloo on the CPU, nccl on N GPUs).

The same CIFAR-format data and random-weight checkpoints are extracted into fresh caches by
``featcache extract`` run (a) as one process and (b) as ``torchrun --nproc-per-node N``, where each rank
writes the chunks i with i % N == rank. On the CPU the processes share the cores: (a) runs torch on all of
them, (b) gives each rank cores/N threads, so the ratio shows what splitting by chunks costs or gains on one
machine, not a multi-node speed-up. Both stores are compared byte for byte at the end.

    .venv/bin/python benchmarks/extract_scaling.py                  # CPU: 1 vs 2 processes
    .venv/bin/python benchmarks/extract_scaling.py --images 8192 --procs 4 --device cuda
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # featcache from this checkout, installed or not

from featcache import __version__  # noqa: E402
from featcache.devices import device_name  # noqa: E402
from featcache.store import open_store, store_path  # noqa: E402
from featcache.testing.formats import write_random_cifar10  # noqa: E402


def _run(cmd: list[str], threads: int) -> tuple[float, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        sys.exit(f"extract failed:\n{r.stdout}\n{r.stderr}")
    return wall, r.stdout


def _extract_seconds(stdout: str) -> float:
    found = re.search(r"store\(s\) in ([0-9.]+)s", stdout)
    return float(found.group(1)) if found else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=3072, help="CIFAR-format train images (default 3072)")
    ap.add_argument("--procs", type=int, default=2, help="ranks for the torchrun run (default 2)")
    ap.add_argument("--ckpts", type=int, default=2, help="checkpoints extracted together (default 2)")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--batch-size", type=int, default=128)
    a = ap.parse_args(argv)
    cores = os.cpu_count() or 1
    print(f"featcache {__version__} benchmark: extraction by 1 process vs {a.procs} torchrun ranks")
    print(f"device   {device_name(torch.device(a.device))}; torch {torch.__version__}")
    print(f"date     {time.strftime('%Y-%m-%d %H:%M:%S %z')}; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="featcache-scaling-") as tmp:
        root = Path(tmp)
        write_random_cifar10(root / "data" / "cifar", a.images, 16)
        ckpts = []
        for k in range(a.ckpts):
            torch.manual_seed(k)
            net = getattr(__import__("torchvision").models, a.arch)(weights=None)
            ckpts.append(root / f"net{k}.pth")
            torch.save(net.state_dict(), ckpts[-1])
        common = ["--data-dir", str(root / "data"), "extract", "--ckpt", ",".join(map(str, ckpts)), "--arch", a.arch,
                  "--dataset", "cifar10", "--transform", "32px", "--split", "train", "--dtype", "float32",
                  "--device", a.device, "--workers", "0", "--batch-size", str(a.batch_size), "--chunk-rows", "512",
                  "--quiet"]  # fmt: skip
        one = [sys.executable, "-m", "featcache", "--cache-dir", str(root / "one"), *common]
        many = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(a.procs), "-m",
                "featcache", "--cache-dir", str(root / "many"), *common]  # fmt: skip
        rows = []
        for label, cmd, threads in (("1 process", one, cores), (f"{a.procs} ranks", many, max(1, cores // a.procs))):
            wall, out = _run(cmd, threads)
            inside = _extract_seconds(out)
            rows.append((label, threads, wall, inside, a.images / inside))
        same = all(
            open_store(store_path(root / "one", "cifar10", f"net{k}")).split("train").read().tobytes()
            == open_store(store_path(root / "many", "cifar10", f"net{k}")).split("train").read().tobytes()
            for k in range(a.ckpts)
        )
    print(f"data     {a.images} CIFAR-format images x {a.ckpts} x {a.arch} at 32 px, fp32, batch {a.batch_size}\n")
    print(f"{'run':<12} {'threads/proc':>12} {'wall s':>8} {'extract s':>10} {'images/s':>10}")
    for label, threads, wall, inside, rate in rows:
        print(f"{label:<12} {threads:>12} {wall:>8.1f} {inside:>10.1f} {rate:>10,.0f}")
    ratio = rows[1][4] / rows[0][4]
    print(f"\n{a.procs} ranks / 1 process, images/s inside extract(): {ratio:.2f}x (process start-up excluded)")
    print(f"stores byte-identical: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
