"""Benchmark: feature extraction in images/s, research-style baseline vs featcache, on the same synthetic data.

Three measurements per case, in one process, on data written into a temporary directory:

a. the research-style baseline: torchvision ``transforms.v2`` on PIL images (the preset's Resize + CenterCrop +
   ToTensor + Normalize, :func:`featcache.transforms.pil_reference`) in a torch DataLoader with worker processes,
   fp32 model(s), features copied to the host batch by batch (as the seed code does);
b. the model's forward pass alone at featcache's precision (bf16 autocast + channels_last on CUDA, fp32 on the
   CPU), on tensors already on the device, in the batches featcache runs (CUDA synchronized around the timing);
c. :func:`featcache.extract.extract` end to end on the same files: dataset read, checkpoint load, preprocessing,
   forward, store write (whole chunks, fsynced and read back), in a fresh cache directory;
cli. (jpeg case) the whole ``featcache extract ... --verbose`` command in a fresh process, its wall time from the
   shell (Python, imports, CUDA start included) and the fixed cost its ``--verbose`` breakdown reports.

``c`` is the wall time of the whole call; ``c*`` is its steady rate, ``(N - B) / (t(N) - t(B))`` with ``t(B)`` the
same call limited to one batch, so the fixed costs of a call (reading and hashing checkpoints, building models,
creating the store) cancel, as they are absent from ``a`` and ``b`` (models built before the clock starts).
Both are printed, with ``c/a``, ``c/b``, ``c*/a`` and ``c*/b``; the targets are read on ``c*``. With
``--repeat R`` (default 2 on the CPU, 1 on CUDA and with ``--quick``) every measurement is taken R times,
interleaved, and the fastest kept: a shared CPU is noisy.

``FEATCACHE_SYNC_DEBUG=warn`` (CUDA only) runs featcache's own calls (``c``) under
``torch.cuda.set_sync_debug_mode("warn")``: every operation that makes the host wait for the GPU warns. Those
warnings are collected (the producer thread's too), counted by message and printed after each case, and
written to ``--out``. The baseline and the forward-only timing are left out: they synchronise on purpose.

Cases:
1. ``cifar``: CIFAR-10 python pickles (uint8 32x32, written here and read by featcache's cifar10 reader)
   upscaled to 224 px (``224px`` preset) through ResNet50; featcache resizes the uint8 batches on the device.
2. ``jpeg``: an ImageFolder of distinct JPEG photos as users have them (:mod:`featcache.testing.jpegs`: each side
   300-640 px, half 4:2:0 and half 4:4:4, about 93 KB per 500x375), written once into ``--data-cache`` and
   reused, through ResNet50 (``imagenet-224px``); on CUDA featcache decodes them with nvJPEG
   (``torchvision.io.decode_jpeg(device="cuda")``) and resizes them batched on the device.
3. ``5ckpt``: five checkpoints in one call on the CIFAR data: featcache's time against 5x the forward time of
   one model (``b`` column: N / (5 x one model's forward time)); the time ratio is ``b / c*``.

On a machine without CUDA (or ``--device cpu``) every case runs small, best of 2: ResNet18, CIFAR at the
``32px`` preset (the baseline uses the same cifar-32px PIL transform), 2,048 CIFAR images (about 1 s of forward
passes on 2 idle cores: fewer would measure little but fixed costs), 24 JPEGs (batch 8), 384 images for 5ckpt.
On CUDA the jpeg case takes 16,000 files (``--jpeg-images`` sets another count on either device).
On the shared 2-core dev machine (2026-11-26) that took 53 s at load average 2.8, where the former defaults
(best of 3, 32 JPEGs, 512 images for 5ckpt) took 89 s just before; 137 s under heavier load. CPU numbers say
nothing about the GPU targets.

Targets (checked and printed): on CUDA, cifar ``c*/a >= 5`` and ``c*/b >= 0.9``, jpeg ``c*/a >= 5``, the jpeg
command ``cli/a >= 3`` (images / command wall time over the research loop's images/s) and its fixed cost
``<= 5 s``, 5ckpt time ratio ``<= 1.1``; on the CPU, cifar ``c*/a >= 1`` and 5ckpt ``<= 1.1`` (jpeg runs the same
PIL pipeline as the baseline there, so it is shown without a target).

Usage (from the repository root; ``PYTHONPATH=.`` if featcache is not installed):
    python benchmarks/extract_throughput.py                    # device auto: full size on CUDA, small on CPU
    python benchmarks/extract_throughput.py --device cpu --quick
    python benchmarks/extract_throughput.py --device cuda --cases cifar,5ckpt --out bench.json
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import dataclasses
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader

from featcache import __version__
from featcache.config import Paths, load_registry
from featcache.data import build_dataset
from featcache.devices import PRECISIONS, device_name, resolve_device, resolve_precision
from featcache.extract import COMPILE_MIN_PASSES, ExtractConfig, extract
from featcache.forward import prepare_model
from featcache.models import load_backbone
from featcache.testing.checkpoints import write_checkpoints
from featcache.testing.formats import write_random_cifar10
from featcache.testing.jpegs import write_varied_jpegs
from featcache.transforms import pil_reference

REPO = Path(__file__).resolve().parents[1]
CASES = ("cifar", "jpeg", "5ckpt")
# case -> (images, batch size); the architecture; the CIFAR preset
SIZES = {
    ("cuda", False): ({"cifar": (20_000, 256), "jpeg": (16_000, 256), "5ckpt": (10_000, 256)}, "resnet50", "224px"),
    ("cuda", True): ({"cifar": (4_096, 256), "jpeg": (1_024, 256), "5ckpt": (2_048, 256)}, "resnet50", "224px"),
    # CPU: sized to finish in under 3 min on the loaded 2-core machine (each measurement about 0.5-2 s)
    ("cpu", False): ({"cifar": (2_048, 64), "jpeg": (24, 8), "5ckpt": (384, 64)}, "resnet18", "32px"),
    ("cpu", True): ({"cifar": (512, 64), "jpeg": (16, 8), "5ckpt": (256, 64)}, "resnet18", "32px"),
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--quick", action="store_true", help="smaller sets (a smoke run)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--cifar-images", type=int, help="override the CIFAR image count")
    p.add_argument("--jpeg-images", type=int, help="override the JPEG image count")
    p.add_argument("--ckpt-images", type=int, help="override the image count of the 5-checkpoint case")
    p.add_argument("--batch-size", type=int, help="override the batch size (256 on CUDA, 64 on the CPU)")
    p.add_argument(
        "--workers",
        type=int,
        default=min(16, os.cpu_count() or 1),
        help="DataLoader processes, the same for the baseline and featcache (default: CPU cores, at most 16)",
    )
    p.add_argument("--repeat", type=int, help="measure each R times, keep the fastest (default 2 on the CPU, else 1)")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    p.add_argument(
        "--data-cache",
        type=Path,
        default=Path(os.environ.get("FEATCACHE_BENCH_DATA", Path.home() / ".cache" / "featcache-bench")),
        help="where the JPEG photos are written once and reused (default $FEATCACHE_BENCH_DATA or "
        "~/.cache/featcache-bench)",
    )
    a = p.parse_args(argv)
    a.cases = [c for c in a.cases.split(",") if c]
    if not a.cases or set(a.cases) - set(CASES):
        p.error(f"--cases takes a comma-separated subset of {','.join(CASES)}")
    counts = (a.cifar_images, a.jpeg_images, a.ckpt_images, a.batch_size, a.repeat)
    if a.workers < 0 or any(v is not None and v < 1 for v in counts):
        p.error("image counts, --batch-size and --repeat must be >= 1, --workers >= 0")
    return a


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- synthetic data --------------------------------------------------------------------------------------


def _blocky(rng: np.random.Generator, n: int, h: int, w: int, grid: int = 4) -> np.ndarray:
    """``n`` uint8 (h, w, 3) images: a random ``grid`` x ``grid`` pattern blown up, plus pixel noise."""
    base = rng.integers(0, 256, (n, grid, grid, 3), dtype=np.int16)
    img = np.repeat(np.repeat(base, -(-h // grid), axis=1), -(-w // grid), axis=2)[:, :h, :w]
    return np.clip(img + rng.integers(-24, 25, img.shape, dtype=np.int16), 0, 255).astype(np.uint8)


def write_cifar10(root: Path, n: int, seed: int = 0) -> None:
    """CIFAR-10 python pickles (``data_batch_1..5``, ``test_batch``, ``batches.meta``) with ``n`` train images."""
    write_random_cifar10(root, n, 16, seed, images=_blocky, classes=[f"class{c}" for c in range(10)])


# --- the three measurements ------------------------------------------------------------------------------


def baseline(ds, models: list[torch.nn.Module], batch: int, workers: int, device: torch.device) -> float:
    """Seconds for the research pipeline: PIL transforms in DataLoader workers, fp32 models, features to host."""
    loader = DataLoader(
        ds, batch_size=batch, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda", drop_last=False
    )
    _sync(device)
    t = time.perf_counter()
    with torch.no_grad():
        for x, _ in loader:
            x = x.to(device, non_blocking=True)
            for m in models:
                m(x).cpu()
    _sync(device)
    return time.perf_counter() - t


def forward_only(
    models: list[torch.nn.Module], n: int, batch: int, crop: int, device: torch.device, precision: str
) -> float:
    """Seconds for the forward passes alone over ``n`` images in featcache's batches, inputs already on the device."""
    x = torch.randn(batch, 3, crop, crop, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    sizes = [batch] * (n // batch) + ([n % batch] if n % batch else [])
    autocast = torch.autocast(device.type, dtype=PRECISIONS[precision], enabled=precision != "fp32")
    with torch.inference_mode(), autocast:
        for m in models:  # warm-up: cuDNN picks its kernels, lazy CUDA modules load
            m(x)
        _sync(device)
        t = time.perf_counter()
        for size in sizes:
            for m in models:
                m(x[:size])
        _sync(device)
    return time.perf_counter() - t


SYNC_DEBUG = os.environ.get("FEATCACHE_SYNC_DEBUG", "")  # "warn" (or "error"): see the module docstring


@contextlib.contextmanager
def sync_debug(device: torch.device, seen: collections.Counter):
    """On CUDA with ``FEATCACHE_SYNC_DEBUG`` set: the body under ``set_sync_debug_mode``, warnings counted in ``seen``.

    One ``catch_warnings`` in the main thread around the whole call: the threads featcache starts live inside
    it, and their warnings land in the same list.
    """
    if device.type != "cuda" or not SYNC_DEBUG:
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode(SYNC_DEBUG)
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(0)
    for w in caught:  # where: the Python line that made the call (torch attributes C++ warnings to it)
        if "synchronizing" not in str(w.message):  # "called a synchronizing CUDA operation"
            continue
        where = "/".join(Path(w.filename).parts[-2:])
        seen[f"{where}:{w.lineno} {w.category.__name__}: {str(w.message).splitlines()[0][:120]}"] += 1


def extract_seconds(cfg: ExtractConfig, cache: Path, seen: collections.Counter | None = None) -> tuple[float, str]:
    """Wall seconds of one fresh :func:`extract` call into ``cache``, and its summary line."""
    with sync_debug(resolve_device(cfg.device), seen if seen is not None else collections.Counter()):
        t = time.perf_counter()
        report = extract(dataclasses.replace(cfg, cache_dir=cache))
        seconds = time.perf_counter() - t
    return seconds, report.summary()


def cli_seconds(ckpt, arch: str, root: Path, n: int, batch: int, device: torch.device, workers: int, cache: Path):
    """Wall seconds of the whole ``featcache extract ... --verbose`` command in a fresh process (from the shell:
    Python, imports, CUDA start included), the fixed cost its breakdown reports, and the breakdown's lines."""
    cmd = [sys.executable, "-m", "featcache", "--cache-dir", str(cache), "extract", "--ckpt", str(ckpt.path), "--arch",
           arch, "--dataset", f"imagefolder:{root}", "--transform", "224px", "--split", "val", "--batch-size",
           str(batch), "--device", device.type, "--workers", str(workers), "--limit", str(n), "--quiet",
           "--verbose"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f"featcache extract failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    lines = r.stdout.split("where the time went", 1)[-1].splitlines()[1:]
    fixed = re.search(r"fixed cost\s+([0-9.]+) s", r.stdout)
    return wall, float(fixed.group(1)) if fixed else math.nan, lines


# --- the cases ---------------------------------------------------------------------------------------------


def run_case(case: str, n: int, batch: int, arch: str, a: argparse.Namespace, device, reg, specs, tmp: Path) -> dict:
    """Measure a, b and c for one case; with ``--repeat`` R, each R times interleaved and the fastest kept."""
    if case == "jpeg":
        ds_spec, preset, split = reg.dataset(f"imagefolder:{a.jpeg_root}"), "224px", "val"
    else:
        ds_spec, preset, split = reg.dataset("cifar10"), a.cifar_preset, "train"
    tf = reg.transform(ds_spec, preset)
    ckpts = specs if case == "5ckpt" else specs[:1]
    precision = resolve_precision("auto", device)
    compiled = device.type == "cuda" and n * len(ckpts) >= COMPILE_MIN_PASSES  # what --compile auto does
    print(f"[{case}] {n} images, {len(ckpts)} x {arch}, preset {tf.name}, batch {batch}, {precision}", flush=True)

    ds = build_dataset(ds_spec, split, transform=pil_reference(tf))
    ds = torch.utils.data.Subset(ds, range(min(n, len(ds))))
    fp32 = [load_backbone(c).module.to(device).eval() for c in ckpts]  # the baseline's models
    with torch.no_grad():  # warm-up outside the clock, as b and c get
        for m in fp32:
            m(torch.zeros(batch, 3, tf.crop, tf.crop, device=device))
    # b: featcache's model, timed x len(ckpts); a copy, as prepare_model changes a module in place on CUDA
    one = [prepare_model(copy.deepcopy(fp32[0]), device, compiled)]
    cfg = ExtractConfig(
        checkpoints=tuple(ckpts),
        dataset=ds_spec,
        transform=tf,
        cache_dir=tmp,
        splits=(split,),
        batch_size=batch,
        device=device.type,
        workers=a.workers,
        limit=n,
    )
    first = dataclasses.replace(cfg, limit=min(batch, n))
    extract_seconds(first, tmp / case / "warmup")  # loads kernels, fills the page cache
    best = {"a": math.inf, "b": math.inf, "c": math.inf, "c1": math.inf}
    summary = ""
    syncs: collections.Counter = collections.Counter()  # FEATCACHE_SYNC_DEBUG: warnings in featcache's calls
    for r in range(a.repeat):
        best["a"] = min(best["a"], baseline(ds, fp32, batch, a.workers, device))
        best["b"] = min(best["b"], forward_only(one, n, batch, tf.crop, device, precision) * len(ckpts))
        best["c1"] = min(best["c1"], extract_seconds(first, tmp / case / f"one{r}")[0])
        t, line = extract_seconds(cfg, tmp / case / f"full{r}", syncs)
        if t < best["c"]:
            best["c"], summary = t, line
    del fp32, one
    if device.type == "cuda":
        torch.cuda.empty_cache()
    cli = None
    if case == "jpeg":  # the whole command, as a user runs it (one run: a fresh process each time)
        cli = cli_seconds(ckpts[0], arch, a.jpeg_root, n, batch, device, a.workers, tmp / case / "cli")
    t_a, t_b, t_c, t_one = best["a"], best["b"], best["c"], best["c1"]
    steady = (n - min(batch, n)) / (t_c - t_one) if n > batch and t_c > t_one else n / t_c
    times = f" (fastest of {a.repeat})" if a.repeat > 1 else ""
    print(f"[{case}] a  baseline      {n / t_a:10,.1f} images/s ({t_a:.2f} s){times}")
    print(f"[{case}] b  forward only  {n / t_b:10,.1f} images/s ({t_b:.2f} s{' = 5 x one model' * (case == '5ckpt')})")
    print(f"[{case}] c  featcache     {n / t_c:10,.1f} images/s ({t_c:.2f} s; limited to one batch {t_one:.2f} s)")
    print(f"[{case}] c* steady        {steady:10,.1f} images/s")
    print(f"[{case}]    {summary}", flush=True)
    if cli is not None:
        print(f"[{case}] cli featcache extract: {n / cli[0]:10,.1f} images/s ({cli[0]:.2f} s, the whole command); "
              f"fixed cost {cli[1]:.2f} s:")  # fmt: skip
        for line in cli[2]:
            print(f"[{case}]    {line}")
    if device.type == "cuda" and SYNC_DEBUG:
        print(f"[{case}] sync debug ({SYNC_DEBUG}), full-size extract calls: {sum(syncs.values())} warning(s)")
        for message, count in syncs.most_common():
            print(f"[{case}]    {count:6d} x {message}")
    return {
        "case": case,
        "images": n,
        "checkpoints": len(ckpts),
        "arch": arch,
        "preset": tf.name,
        "batch_size": batch,
        "precision": precision,
        "compiled": compiled,
        "a": n / t_a,
        "b": n / t_b,
        "c": n / t_c,
        "c_steady": steady,
        "seconds": {"a": t_a, "b": t_b, "c": t_c, "c_one_batch": t_one, "cli": cli[0] if cli else None},
        "cli_fixed_s": cli[1] if cli else None,
        "cli_breakdown": cli[2] if cli else None,
        "summary": summary,
        "sync_debug": {"mode": SYNC_DEBUG, "warnings": dict(syncs)} if device.type == "cuda" and SYNC_DEBUG else None,
    }


def check(row: dict, device: torch.device) -> list[tuple[str, float, bool]]:
    """``(target, value, holds)`` for each target of this row on this device (measured on the steady rate c*)."""
    ca, cb = row["c_steady"] / row["a"], row["c_steady"] / row["b"]
    if row["case"] == "5ckpt":
        ratio = row["b"] / row["c_steady"]  # featcache's time / 5x one model's forward time
        return [("time/(5 x fwd) <= 1.1", ratio, ratio <= 1.1)]
    if device.type != "cuda":
        return [("c*/a >= 1", ca, ca >= 1)] if row["case"] == "cifar" else []
    if row["case"] == "cifar":
        return [("c*/a >= 5", ca, ca >= 5), ("c*/b >= 0.9", cb, cb >= 0.9)]
    cli = row["seconds"]["a"] / row["seconds"]["cli"] if row["seconds"].get("cli") else math.nan
    fixed = row.get("cli_fixed_s") or math.nan
    return [("c*/a >= 5", ca, ca >= 5), ("cli/a >= 3", cli, cli >= 3), ("fixed <= 5 s", fixed, fixed <= 5)]


def table(rows: list[dict], device: torch.device) -> list[str]:
    head = f"{'case':<36} {'a':>8} {'b':>8} {'c':>8} {'c*':>8} {'c/a':>6} {'c/b':>6} {'c*/a':>6} {'c*/b':>6}  target"
    lines = [head, "-" * len(head)]
    for r in rows:
        label = f"{r['case']} {r['images']} img {r['checkpoints']}x{r['arch']} {r['preset']}"
        checks = "; ".join(f"{d}: {v:.2f} {'ok' if ok else 'MISSED'}" for d, v, ok in check(r, device)) or "-"
        ratios = [r["c"] / r["a"], r["c"] / r["b"], r["c_steady"] / r["a"], r["c_steady"] / r["b"]]
        lines.append(
            f"{label:<36} {r['a']:>8,.0f} {r['b']:>8,.0f} {r['c']:>8,.0f} {r['c_steady']:>8,.0f} "
            + " ".join(f"{v:>6.2f}" for v in ratios)
            + f"  {checks}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    a = _parse(argv)
    device = resolve_device(a.device)
    sizes, arch, a.cifar_preset = SIZES[(device.type, a.quick)]
    a.repeat = a.repeat or (1 if device.type == "cuda" or a.quick else 2)
    plan = {}
    for case in a.cases:
        n, batch = sizes[case]
        plan[case] = (getattr(a, f"{case.replace('5ckpt', 'ckpt')}_images") or n, a.batch_size or batch)
    date = time.strftime("%Y-%m-%d %H:%M:%S %z")
    print(f"featcache {__version__} benchmark: extraction throughput (images/s)")
    print(f"device   {device} = {device_name(device)}")
    print(f"torch    {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} threads")
    print(f"date     {date}; python {platform.python_version()}; {a.workers} DataLoader workers")
    if device.type != "cuda":
        print(
            f"CPU MODE: a small run ({arch}, CIFAR at its {a.cifar_preset} preset, "
            + ", ".join(f"{c} {n} images" for c, (n, _) in plan.items())
            + "): it checks the CPU path only; the GPU targets need benchmarks/gpu_check.sh on a GPU"
        )
    print(flush=True)

    rows = []
    with tempfile.TemporaryDirectory(prefix="featcache-bench-") as tmp:
        root = Path(tmp)
        paths = Paths(data=root / "data", cache=root / "cache", checkpoints=root / "ckpts", config=REPO / "configs")
        t = time.perf_counter()
        cifar = [plan[c][0] for c in ("cifar", "5ckpt") if c in plan]
        if cifar:
            write_cifar10(paths.data / "cifar", max(cifar))
        if "jpeg" in plan:
            a.jpeg_root = write_varied_jpegs(a.data_cache / f"jpeg-{plan['jpeg'][0]}", plan["jpeg"][0]).resolve()
        specs = write_checkpoints(paths.checkpoints, arch, 5 if "5ckpt" in plan else 1)
        print(f"data     written in {time.perf_counter() - t:.1f} s under {root}", flush=True)
        reg = load_registry(paths)
        for case in CASES:
            if case in plan:
                rows.append(run_case(case, *plan[case], arch, a, device, reg, specs, paths.cache))
                if a.out:  # after each case: a run stopped by a time limit keeps what it measured
                    write_json(a, device, date, rows)

    mode = "GPU" if device.type == "cuda" else "CPU, small run: not the GPU targets"
    print()
    print(f"images/s on {device_name(device)}, torch {torch.__version__}, {date} ({mode})")
    print("a  research pipeline: PIL v2 transforms in DataLoader workers, fp32 model(s)")
    print("b  forward only at featcache's precision (5ckpt: N / (5 x one model's forward time))")
    print("c  featcache extract() end to end, store write included; c*: its steady rate (one-batch call subtracted)")
    for line in table(rows, device):
        print(line)
    results = [c for r in rows for c in check(r, device)]
    print(f"targets held: {sum(ok for _, _, ok in results)}/{len(results)}")
    if a.out:
        write_json(a, device, date, rows)
        print(f"wrote {a.out}")
    return 0


def write_json(a: argparse.Namespace, device: torch.device, date: str, rows: list[dict]) -> None:
    """The results so far, with each row's targets, as JSON in ``a.out``."""
    doc = {
        "benchmark": "extract_throughput",
        "featcache": __version__,
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "date": date,
        "quick": a.quick,
        "workers": a.workers,
        "repeat": a.repeat,
        "sync_debug": SYNC_DEBUG if device.type == "cuda" else "",
        "rows": [{**r, "targets": [{"target": d, "value": v, "holds": ok} for d, v, ok in check(r, device)]}
                 for r in rows],
    }  # fmt: skip
    a.out.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
