"""Benchmark: the seed's weight-decay grid as one multi-head pass vs six solo heads, on cached features.

Builds ``--stores`` synthetic float16 stores (``--rows`` train rows + ``--rows // 5`` test rows, ``--dim``
features each, Gaussian class means plus per-feature offsets and scales) with featcache's StoreWriter, chunk
by chunk, in a temporary directory; opens them through ConcatView (the lazy concatenation the probe uses:
50,000 x 10,240 float16 by default); then fits the CIFAR grid (weight decays 1e-4 ... 5e-2, seed protocol:
bn-linear, lr 0.01, Nesterov momentum 0.9, milestones 8/16/24, batch 256) twice on the same data and device:

1. one MultiHeadProbe with all six weight decays (one pass over the data per epoch);
2. six MultiHeadProbes with one weight decay each, one after another.

Both fits score the test split after every epoch (included in the timings, as in ``featcache probe``).
The per-head test accuracies of the two must agree (up to float rounding); the script checks and prints it.
Unless ``--lazy``, the concatenation is loaded once into a tensor on the device; with ``--lazy`` both fits
gather every batch from the memory-mapped stores.

Expected runtime at the defaults (28 epochs, 50,000 x 10,240 train + 10,000 test rows):
  - the 2-core development CPU (measured 2026-11-26 with --epochs 2, the CPU shared with other jobs, load
    average about 5): building the stores 25 s, loading 3 s, one pass 34 s per epoch, six solo heads 121 s per
    epoch (3.6x). At 28 epochs that is about 16 + 56 min, some 75 min in all; less on an idle machine.
    Use ``--epochs 2`` or ``3`` there: the per-epoch times and the check are what it measures.
  - a GPU: not yet measured with this script. REFERENCE.md's H200 figures for the same grid are 9.65 s (one
    pass) vs 30.0 s (six solo heads); building the stores should then be the longest step.

Usage:
    python benchmarks/probe_heads.py                       # full size, 28 epochs, device auto
    python benchmarks/probe_heads.py --epochs 2 --device cpu --out probe_heads_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from featcache import __version__
from featcache.concat import ConcatView
from featcache.devices import device_name, resolve_device
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

WEIGHT_DECAYS = (1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2)  # the CIFAR grid
SEED_PROTOCOL = {"head": "bn-linear", "lr": 0.01, "momentum": 0.9, "nesterov": True, "milestones": (8, 16, 24)}
SIGNAL = 0.03  # class-mean scale relative to unit noise: about 2.5 noise sigmas between class means at D=10,240
TOLERANCE = 0.05  # percentage points: how far the two methods' accuracies may drift apart by float rounding


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=50_000, help="train rows (the test split gets rows // 5)")
    p.add_argument("--stores", type=int, default=5, help="stores concatenated along the feature axis")
    p.add_argument("--dim", type=int, default=2048, help="features per store")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--epochs", type=int, default=28, help="epochs per fit (shorten on a CPU)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--lazy", action="store_true", help="stream batches from the memory-mapped stores")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    a = p.parse_args(argv)
    if min(a.rows, a.stores, a.dim, a.epochs) < 1 or a.classes < 2 or a.rows // 5 < 1:
        p.error("--rows >= 5, --stores/--dim/--epochs >= 1 and --classes >= 2")
    return a


def build_stores(root: Path, n_stores: int, rows: int, dim: int, classes: int, seed: int = 0) -> list[Path]:
    """Write ``n_stores`` complete float16 stores with 'train' and 'test' splits; one chunk in memory at a time."""
    rng = np.random.default_rng(seed)
    sizes = {"train": rows, "test": max(rows // 5, 1)}
    labels = {s: rng.integers(0, classes, n).astype(np.int64) for s, n in sizes.items()}
    # Class means over the whole concatenation: every store carries a share of the signal.
    means = (rng.standard_normal((classes, n_stores * dim)) * SIGNAL).astype(np.float32)
    names = [str(c) for c in range(classes)]
    chunk_rows = chunk_rows_for(dim, "float16")
    paths = []
    for k in range(n_stores):
        path = root / "synthetic" / f"store{k}.zarr"
        prov = Provenance(
            dataset=DatasetRef("synthetic", "array"),
            checkpoint=CheckpointRef(f"store{k}", "none", f"synthetic-{k}", "-"),
            layer="none", feature_dim=dim, dtype="float16", precision="fp32", transform={"name": "identity"},
            preprocess=PreprocessRef("numpy", "cpu"), software=Software(*(["benchmark"] * 6)),
        )  # fmt: skip
        srng = np.random.default_rng([seed, k])
        # Uneven offsets and scales per feature, so BatchNorm has something to normalise.
        offset = srng.uniform(0.0, 2.0, dim).astype(np.float32)
        scale = srng.uniform(0.5, 2.0, dim).astype(np.float32)
        mu = means[:, k * dim : (k + 1) * dim]
        with StoreWriter(path, prov) as writer:
            for split, n in sizes.items():
                ids = [f"{split}/{i}" for i in range(n)]
                data = SplitData(split, ids, labels[split], f"synthetic-{split}-{n}-{seed}", names)
                sw = writer.split(data, dim, "float16", chunk_rows=chunk_rows)
                for i in sw.pending():
                    a, b = sw.bounds(i)
                    crng = np.random.default_rng([seed, k, 0 if split == "train" else 1, i])
                    block = crng.standard_normal((b - a, dim), dtype=np.float32)
                    block += mu[labels[split][a:b]]
                    block *= scale
                    block += offset
                    sw.write_chunk(i, block)
                sw.finalize()
        paths.append(path)
    return paths


def _fit(cfg: HeadConfig, X, y, Xt, yt, dim: int, classes: int, device: torch.device) -> tuple[MultiHeadProbe, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    probe = MultiHeadProbe(cfg, dim, classes, device=device).fit(X, y, {"test": (Xt, yt)})
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return probe, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    a = _parse(argv)
    device = resolve_device(a.device)
    torch.manual_seed(0)
    D = a.stores * a.dim
    print(f"featcache {__version__} benchmark: probe heads (multi-head pass vs sequential solo heads)")
    print(f"device   {device} = {device_name(device)}")
    print(f"torch    {torch.__version__}, {torch.get_num_threads()} intra-op threads; numpy {np.__version__}")
    load = ", load average " + " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else ""
    print(f"date     {time.strftime('%Y-%m-%d %H:%M:%S %z')}; python {platform.python_version()}{load}")
    print(
        f"data     {a.stores} stores x {a.dim} = {a.rows} x {D} float16 train ({a.rows * D * 2 / 2**30:.2f} GiB) "
        f"+ {a.rows // 5} test rows, {a.classes} classes, {'lazy (memory-mapped)' if a.lazy else 'loaded'}"
    )
    print(f"grid     wd {list(WEIGHT_DECAYS)}, {a.epochs} epochs, {SEED_PROTOCOL}, batch 256", flush=True)

    with tempfile.TemporaryDirectory(prefix="featcache-bench-") as tmp:
        t = time.perf_counter()
        paths = build_stores(Path(tmp), a.stores, a.rows, a.dim, a.classes)
        build_s = time.perf_counter() - t
        print(f"build    {build_s:.1f} s ({a.stores} stores written with StoreWriter)", flush=True)

        stores = [Store(p) for p in paths]
        train, test = ConcatView(stores, "train"), ConcatView(stores, "test")
        assert (train.rows, train.dim) == (a.rows, D) and train.dtype == np.float16
        y, yt = torch.from_numpy(train.labels), torch.from_numpy(test.labels)
        t = time.perf_counter()
        if a.lazy:
            X, Xt = train, test
        else:
            X, Xt = (torch.from_numpy(v.load()).to(device) for v in (train, test))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        load_s = time.perf_counter() - t
        print(f"load     {load_s:.1f} s ({'none: lazy' if a.lazy else f'concatenation to {device}'})", flush=True)

        base = HeadConfig(**SEED_PROTOCOL, epochs=a.epochs, batch_size=256, weight_decays=WEIGHT_DECAYS)
        multi, multi_s = _fit(base, X, y, Xt, yt, D, a.classes, device)
        print(f"multi    {multi_s:.1f} s", flush=True)
        solos, seq_s = [], 0.0
        for wd in WEIGHT_DECAYS:
            solo, s = _fit(HeadConfig(**{**base.__dict__, "weight_decays": (wd,)}), X, y, Xt, yt, D, a.classes, device)
            solos.append(solo)
            seq_s += s
            print(f"solo     wd {wd:g}: {s:.1f} s", flush=True)

    multi_acc = multi.history_[-1]["test_top1"]
    solo_acc = [s.history_[-1]["test_top1"][0] for s in solos]
    drift = max(
        abs(rm["test_top1"][h] - rs["test_top1"][0])
        for h, s in enumerate(solos)
        for rm, rs in zip(multi.history_, s.history_, strict=True)
    )
    weight_drift = max(float((multi.weight_[h] - s.weight_[0]).abs().max()) for h, s in enumerate(solos))
    same = drift <= TOLERANCE

    rows = [
        ("multi-head (1 pass, 6 heads)", multi_s, max(multi_acc)),
        ("sequential (6 x 1 head)", seq_s, max(solo_acc)),
    ]
    print()
    print(f"{'method':<30} {'seconds':>9} {'s/epoch':>9} {'best test top-1 %':>18}")
    for name, s, acc in rows:
        print(f"{name:<30} {s:>9.2f} {s / a.epochs:>9.3f} {acc:>18.2f}")
    print(f"sequential / multi-head: {seq_s / multi_s:.2f}x")
    print()
    print("per-head test top-1 % after the last epoch (wd: multi-head | sequential)")
    for wd, m, s in zip(WEIGHT_DECAYS, multi_acc, solo_acc, strict=True):
        print(f"  {wd:<7g} {m:6.2f} | {s:6.2f}")
    verdict = "SAME" if same else "DIFFERENT"
    print(
        f"check: {verdict} - largest top-1 gap over all heads and epochs {drift:.3f} points (tolerance {TOLERANCE}); "
        f"largest weight difference {weight_drift:.2e}"
    )

    if a.out:
        record = {
            "benchmark": "probe_heads",
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "device": str(device),
            "device_name": device_name(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "featcache": __version__,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
            "shape": [a.rows, D],
            "test_rows": a.rows // 5,
            "weight_decays": list(WEIGHT_DECAYS),
            "build_s": build_s,
            "load_s": load_s,
            "multi_s": multi_s,
            "sequential_s": seq_s,
            "solo_s": [s.seconds_ for s in solos],
            "ratio": seq_s / multi_s,
            "multi_test_top1": multi_acc,
            "sequential_test_top1": solo_acc,
            "max_top1_gap": drift,
            "max_weight_diff": weight_drift,
            "same": same,
        }
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {a.out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
