"""Benchmark: the research linear probe (backbones and augmentation in the training loop) vs featcache
(extract once with K augmented views, then probe the stores), on the same data, models and head settings.

Everything runs in one process on data written into a temporary directory: CIFAR-10 python pickles whose images
carry a learnable class signal (a per-class 4x4 colour layout mixed with a per-image one, upscaled, plus pixel
noise) and ``--checkpoints`` randomly initialised torchvision ResNets saved as plain state dicts.

a. **research**: as the seed's linear evaluation runs, written here with plain torch/torchvision (the pickles are
   read by a 20-line Dataset of this file, the backbones built by torchvision): every epoch a shuffled DataLoader
   with worker processes applies the research training transform to PIL images (RandomResizedCrop(crop, scale
   (0.8, 1), ratio (3/4, 4/3), bicubic) + RandomHorizontalFlip + ToTensor + Normalize, sizes and mean/std from the
   preset), the frozen fp32 backbones (eval mode) run on every batch, their pooled features are concatenated and
   one BatchNorm1d + Linear head is trained (SGD lr 0.01, momentum 0.9, Nesterov, weight decay on the Linear only,
   MultiStepLR 8/16/24, batch 256, last partial batch kept); test top-1 on the evaluation transform
   (Resize + CenterCrop) once, after the last epoch. One weight decay (``--wd``), as one published run.
b. **featcache**: :func:`featcache.extract.extract` of all checkpoints in one call (they share each decoded
   batch) with ``views=K`` into a fresh cache (train: the evaluation view + K stored views; test: the evaluation
   view), then :func:`featcache.probe.run_probe` on the stores with the ``cifar`` probe preset cut to the same
   epochs and batch: once with the one weight decay, once with the preset's six-value grid as parallel heads.
   featcache reports the test top-1 of the (head, epoch) selected on a held-out val split (a select fit on
   train-minus-val, then a final fit on all of train: two fits per probe, both timed), and the research-style
   number (best test top-1 over epochs and heads, selected on test).

The extrapolation to the full protocol (28 epochs, the six-value CIFAR grid) is printed with its formula:
research = (the fastest measured train epoch + one test pass, as the seed scores test after every epoch) x 28 x 6
sequential runs, as the published scripts run the grid; featcache = extraction once + probe load + the grid probe's
seconds per epoch x 28. It also prints what stored views cost: extraction time is taken as linear in the forward
passes (train rows x (1 + K) + test rows, per checkpoint), so one more view costs train rows / those passes of it.

To show how much of an accuracy difference is noise, the featcache 1-wd probe is repeated with head seeds
0..N-1 (``--seeds``, default 5; each seed changes the head init, the shuffle, the val split and the view order) and
the range is printed. The research loop is not repeated (each repeat costs a whole run).

Defaults: ResNet18, CIFAR ``32px``, 3 checkpoints, 2 epochs, K = 4. On the CPU 3,000 train + 1,000 test images
(about 50 s on the shared 2-core machine at load average 2, 2.7 min at load average 3.4), ``--quick``
384 + 128 with K = 2 (20-30 s); on CUDA 20,000 + 5,000 (``--quick`` 4,096 + 1,024). Every size is an option.
The CUDA path has not been run yet.

Usage (from the repository root; ``PYTHONPATH=.`` if featcache is not installed):
    python benchmarks/probe_vs_recompute.py                       # device auto
    python benchmarks/probe_vs_recompute.py --device cpu --quick
    python benchmarks/probe_vs_recompute.py --device cuda --preset 224px --arch resnet50 --out pvr.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.models as tvm
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from featcache import __version__
from featcache.config import CheckpointSpec, Paths, TransformSpec, load_registry
from featcache.devices import device_name, resolve_device
from featcache.extract import ExtractConfig, extract
from featcache.probe import ProbeConfig, heads_from_preset, run_probe
from featcache.testing.checkpoints import plain_net, write_checkpoints
from featcache.testing.formats import write_cifar10_arrays

REPO = Path(__file__).resolve().parents[1]
FULL_EPOCHS = 28  # the seed's schedule
PRESET = "cifar"  # probes.yaml: the seed's CIFAR protocol and its six-value weight-decay grid
CLASSES = 10
MIX = 0.35  # share of the class template in each image's 4x4 colour layout (the rest is the image's own)
# device type, quick -> (train images, test images, views)
SIZES = {
    ("cpu", False): (3_000, 1_000, 4),
    ("cpu", True): (384, 128, 2),
    ("cuda", False): (20_000, 5_000, 4),
    ("cuda", True): (4_096, 1_024, 4),
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--quick", action="store_true", help="a smoke run: fewer images and views")
    p.add_argument("--train-images", type=int, help="train images (default 3,000 on the CPU, 20,000 on CUDA)")
    p.add_argument("--test-images", type=int, help="test images (default 1,000 on the CPU, 5,000 on CUDA)")
    p.add_argument("--views", type=int, help="augmented views featcache stores per train image (default 4)")
    p.add_argument("--checkpoints", type=int, default=3, help="random-weight checkpoints concatenated (default 3)")
    p.add_argument("--arch", default="resnet18", help="a torchvision ResNet name, or resnet10 (default resnet18)")
    p.add_argument("--preset", default="32px", help="CIFAR transform preset of datasets.yaml (default 32px)")
    p.add_argument("--epochs", type=int, default=2, help="epochs measured, both methods (default 2)")
    p.add_argument("--wd", type=float, default=1e-4, help="the one weight decay of the single runs (default 1e-4)")
    p.add_argument("--batch-size", type=int, default=256, help="head batch = research loader batch (default 256)")
    p.add_argument("--extract-batch", type=int, default=256, help="featcache's extraction batch (default 256)")
    p.add_argument(
        "--workers",
        type=int,
        default=min(16, os.cpu_count() or 1),
        help="DataLoader processes, the same for the research loop and featcache (default: CPU cores, at most 16)",
    )
    p.add_argument(
        "--seeds", type=int, default=5, help="featcache 1-wd probes repeated with head seeds 0..N-1, for the spread"
    )
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    a = p.parse_args(argv)
    if min(a.checkpoints, a.epochs) < 1 or a.batch_size < 2 or a.extract_batch < 1 or min(a.workers, a.seeds) < 0:
        p.error("--checkpoints, --epochs >= 1, --batch-size >= 2, --extract-batch >= 1, --workers, --seeds >= 0")
    if a.arch != "resnet10" and not (a.arch.startswith(("resnet", "wide_resnet", "resnext")) and hasattr(tvm, a.arch)):
        p.error(f"--arch {a.arch!r}: give a torchvision ResNet (resnet18, resnet50, ...) or resnet10")
    return a


# --- data and checkpoints ----------------------------------------------------------------------------------


def _images(rng: np.random.Generator, templates: np.ndarray, n: int) -> tuple[np.ndarray, list[int]]:
    """``n`` uint8 (32, 32, 3) images and labels: class template mixed with the image's own layout, upscaled."""
    labels = rng.integers(0, len(templates), n)
    layout = MIX * templates[labels] + (1 - MIX) * rng.integers(0, 256, (n, 4, 4, 3))
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    for i in range(n):
        out[i] = np.asarray(Image.fromarray(layout[i].astype(np.uint8)).resize((32, 32), Image.Resampling.BILINEAR))
    noisy = out.astype(np.int16) + rng.integers(-16, 17, out.shape, dtype=np.int16)
    return np.clip(noisy, 0, 255).astype(np.uint8), [int(v) for v in labels]


def write_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """CIFAR-10 python pickles under ``root/cifar-10-batches-py``: ``n_train`` in 5 batches, ``n_test`` test."""
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, (CLASSES, 4, 4, 3)).astype(np.float64)
    sizes = [n_train // 5 + (k < n_train % 5) for k in range(5)] + [n_test]
    batches = [_images(rng, templates, m) for m in sizes]
    write_cifar10_arrays(root, batches[:5], batches[5], [f"class{c}" for c in range(CLASSES)])


# --- a: the research loop, plain torch/torchvision ---------------------------------------------------------


class CifarPickles(Dataset):
    """A CIFAR-10 python split read straight from its pickles (torchvision's class refuses non-official files)."""

    def __init__(self, root: Path, split: str, transform):
        folder = root / "cifar-10-batches-py"
        names = [f"data_batch_{b}" for b in range(1, 6)] if split == "train" else ["test_batch"]
        data, labels = [], []
        for name in names:
            with open(folder / name, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            data.append(entry["data"])
            labels += entry["labels"]
        self.images = np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        self.labels, self.transform = labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def research_transforms(tf: TransformSpec):
    """(train, eval) transforms of the seed's linear evaluation for preset ``tf`` (its training augmentation)."""
    aug = tf.augment
    mode = {"bicubic": v2.InterpolationMode.BICUBIC, "bilinear": v2.InterpolationMode.BILINEAR}
    tail = [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(tf.mean), list(tf.std))]
    train = v2.Compose(
        [
            v2.RandomResizedCrop(
                tf.crop, scale=aug.scale, ratio=aug.ratio, interpolation=mode[aug.interpolation], antialias=True
            ),
            v2.RandomHorizontalFlip(aug.hflip),
            *tail,
        ]
    )
    evaluate = v2.Compose(
        [v2.Resize(tf.resize, interpolation=mode[tf.interpolation], antialias=True), v2.CenterCrop(tf.crop), *tail]
    )
    return train, evaluate


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def research_run(
    data_root: Path, ckpts: list[CheckpointSpec], tf: TransformSpec, a: argparse.Namespace, device: torch.device
) -> dict:
    """Train one BN+Linear head with the backbones and the augmentation in the loop; score test at the end."""
    backbones = []
    for c in ckpts:
        net = plain_net(c.arch)
        net.load_state_dict(torch.load(c.path, map_location="cpu", weights_only=True))
        net.fc = nn.Identity()
        backbones.append(net.to(device).eval().requires_grad_(False))
    train_tf, eval_tf = research_transforms(tf)
    train_ds, test_ds = CifarPickles(data_root, "train", train_tf), CifarPickles(data_root, "test", eval_tf)
    with torch.no_grad():  # warm-up at the full batch, outside the clock (featcache's extract pays its own)
        dim = sum(m(torch.zeros(a.batch_size, 3, tf.crop, tf.crop, device=device)).shape[1] for m in backbones)
    torch.manual_seed(0)
    head = nn.Sequential(nn.BatchNorm1d(dim), nn.Linear(dim, CLASSES)).to(device)
    nn.init.normal_(head[1].weight, 0.0, 0.01)
    nn.init.zeros_(head[1].bias)
    groups = [{"params": head[0].parameters(), "weight_decay": 0.0}, {"params": head[1].parameters()}]
    opt = torch.optim.SGD(groups, lr=0.01, momentum=0.9, nesterov=True, weight_decay=a.wd)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[8, 16, 24], gamma=0.1)
    pin = device.type == "cuda"
    loader = DataLoader(
        train_ds,
        batch_size=a.batch_size,
        shuffle=True,
        num_workers=a.workers,
        pin_memory=pin,
        drop_last=False,
        generator=torch.Generator().manual_seed(0),
    )

    def features(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([m(x) for m in backbones], dim=1)

    epoch_s, losses = [], []
    for epoch in range(a.epochs):
        _sync(device)
        t = time.perf_counter()
        head.train()
        total, seen = 0.0, 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = nn.functional.cross_entropy(head(features(x)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, seen = total + float(loss.detach()) * len(y), seen + len(y)
        sched.step()
        _sync(device)
        epoch_s.append(time.perf_counter() - t)
        losses.append(total / seen)
        print(f"research epoch {epoch + 1}/{a.epochs}: {epoch_s[-1]:.1f} s, train loss {losses[-1]:.4f}", flush=True)

    _sync(device)
    t = time.perf_counter()
    head.eval()
    correct = 0
    test_loader = DataLoader(test_ds, batch_size=a.batch_size, shuffle=False, num_workers=a.workers, pin_memory=pin)
    with torch.no_grad():
        for x, y in test_loader:
            correct += int((head(features(x.to(device))).argmax(1).cpu() == y).sum())
    _sync(device)
    test_s = time.perf_counter() - t
    top1 = 100.0 * correct / len(test_ds)
    print(f"research test pass: {test_s:.1f} s, top-1 {top1:.2f}%", flush=True)
    return {"epoch_s": epoch_s, "test_s": test_s, "test_top1": top1, "train_loss": losses, "dim": dim}


# --- b: featcache -----------------------------------------------------------------------------------------


def featcache_run(paths: Paths, specs: list[CheckpointSpec], a: argparse.Namespace, device: torch.device) -> dict:
    """Extract all checkpoints once with K views, then probe with one weight decay and with the grid."""
    reg = load_registry(paths)
    ds = reg.dataset("cifar10")
    tf = reg.transform(ds, a.preset)
    cfg = ExtractConfig(
        checkpoints=tuple(specs),
        dataset=ds,
        transform=tf,
        cache_dir=paths.cache,
        batch_size=a.extract_batch,
        device=device.type,
        workers=a.workers,
        views=a.views,
    )
    _sync(device)
    t = time.perf_counter()
    report = extract(cfg)
    _sync(device)
    extract_s = time.perf_counter() - t
    print(f"featcache extract: {extract_s:.1f} s; {report.summary()}", flush=True)
    stores = tuple(Path(s["path"]) for s in report.stores)

    preset = reg.probe_preset(PRESET)
    out = {"extract_s": extract_s, "extract_summary": report.summary(), "probes": {}}
    warm, val_fraction = heads_from_preset(preset, epochs=1, batch_size=a.batch_size)
    run_probe(ProbeConfig(stores=stores, heads=warm, val_fraction=val_fraction, device=device.type, preset=PRESET))
    for label, wds in (("one", [a.wd]), ("grid", None)):
        heads, val_fraction = heads_from_preset(preset, weight_decays=wds, epochs=a.epochs, batch_size=a.batch_size)
        rec = run_probe(
            ProbeConfig(stores=stores, heads=heads, val_fraction=val_fraction, device=device.type, preset=PRESET)
        )
        tm = rec.timings
        fit_s = tm["select_s"] + tm["final_s"]
        out["probes"][label] = {
            "weight_decays": list(heads.weight_decays),
            "load_s": tm["load_s"],
            "select_s": tm["select_s"],
            "final_s": tm["final_s"],
            "total_s": tm["total_s"],
            "per_epoch_s": fit_s / a.epochs,
            "selected_test_top1": rec.selected.test_top1,
            "selected": {"params": rec.selected.params, "epoch": rec.selected.epoch, "val_top1": rec.selected.val_top1},
            "research_top1": rec.research.test_top1,
            "views": rec.views.count,
            "memory": rec.memory,
            "rows": rec.rows,
            "feature_dim": rec.feature_dim,
        }
        print(
            f"featcache probe ({label}: wd {list(heads.weight_decays)}): {tm['total_s']:.1f} s "
            f"(load {tm['load_s']:.1f}, select fit {tm['select_s']:.1f}, final fit {tm['final_s']:.1f}); "
            f"test top-1 {rec.selected.test_top1:.2f}% (val-selected), {rec.research.test_top1:.2f}% (research-style)",
            flush=True,
        )
    out["heads"] = {k: v for k, v in dataclasses.asdict(heads).items() if k != "weight_decays"}
    print(f"featcache heads: {out['heads']}", flush=True)
    # Spread of the accuracy from the head seed alone (init, shuffle, val split, view order): cheap on stores.
    spread = []
    for seed in range(a.seeds):
        heads, val_fraction = heads_from_preset(
            preset, weight_decays=[a.wd], epochs=a.epochs, batch_size=a.batch_size, seed=seed
        )
        rec = run_probe(
            ProbeConfig(stores=stores, heads=heads, val_fraction=val_fraction, device=device.type, preset=PRESET)
        )
        spread.append(
            {"seed": seed, "selected_test_top1": rec.selected.test_top1, "research_top1": rec.research.test_top1}
        )
    out["seeds"] = spread
    return out


# --- report ----------------------------------------------------------------------------------------------


def extrapolate(r: dict, f: dict, a: argparse.Namespace, n_train: int, n_test: int) -> dict:
    """The full protocol's cost from the measured parts (see the module docstring for the model)."""
    grid = len(f["probes"]["grid"]["weight_decays"])
    epoch = min(r["epoch_s"])  # the fastest epoch: a shared machine's load only ever adds time
    research_run = (epoch + r["test_s"]) * FULL_EPOCHS
    one, multi = f["probes"]["one"], f["probes"]["grid"]
    fc_one = f["extract_s"] + one["load_s"] + one["per_epoch_s"] * FULL_EPOCHS
    fc_grid = f["extract_s"] + multi["load_s"] + multi["per_epoch_s"] * FULL_EPOCHS
    passes = n_train * (1 + a.views) + n_test  # forward passes per checkpoint in the extraction
    per_view = f["extract_s"] * n_train / passes
    fc_grid_full_views = fc_grid + (FULL_EPOCHS - a.views) * per_view
    return {
        "epochs": FULL_EPOCHS,
        "grid": grid,
        "research_epoch_s": epoch,
        "research_epoch_mean_s": sum(r["epoch_s"]) / len(r["epoch_s"]),
        "research_run_s": research_run,
        "research_grid_s": research_run * grid,
        "featcache_one_s": fc_one,
        "featcache_grid_s": fc_grid,
        "per_view_s": per_view,
        "featcache_grid_28views_s": fc_grid_full_views,
        "ratio_one": research_run / fc_one,
        "ratio_grid": research_run * grid / fc_grid,
        "ratio_grid_28views": research_run * grid / fc_grid_full_views,
    }


def table(r: dict, f: dict, x: dict, a: argparse.Namespace, n_train: int, n_test: int, k: int) -> list[str]:
    one, multi = f["probes"]["one"], f["probes"]["grid"]
    total_r = sum(r["epoch_s"]) + r["test_s"]
    head = f"{'phase':<52} {'seconds':>8} {'s/epoch':>8} {'test top-1 %':>13} {'research-style %':>17}"
    rows = [
        head,
        "-" * len(head),
        f"{'a research: train, backbones + augmentation in loop':<52} {sum(r['epoch_s']):>8.1f} "
        f"{x['research_epoch_s']:>8.2f} {'':>13} {'':>17}  (s/epoch: fastest epoch)",
        f"{'a research: test pass (eval transform), once':<52} {r['test_s']:>8.1f} {'':>8} {'':>13} "
        f"{r['test_top1']:>17.2f}",
        f"{'a research: total (1 wd)':<52} {total_r:>8.1f} {'':>8} {'':>13} {r['test_top1']:>17.2f}",
        f"{f'b featcache: extract once ({k} ckpt, K={a.views} views)':<52} {f['extract_s']:>8.1f} {'':>8} "
        f"{'':>13} {'':>17}",
    ]
    for label, p in (("1 wd", one), (f"{len(multi['weight_decays'])}-wd grid, parallel heads", multi)):
        rows.append(
            f"{f'b featcache: probe, {label}':<52} {p['total_s']:>8.1f} {p['per_epoch_s']:>8.2f} "
            f"{p['selected_test_top1']:>13.2f} {p['research_top1']:>17.2f}"
        )
    for label, p in (("1 wd", one), ("grid", multi)):
        rows.append(f"{f'b featcache: total ({label})':<52} {f['extract_s'] + p['total_s']:>8.1f}")
    e, g = x["epochs"], x["grid"]
    rows += [
        "",
        "test top-1 %: featcache's reported number (head and epoch selected on a 10% val split, final fit on all",
        "  of train); research-style %: best test top-1 over epochs and heads (selected on test); the research loop",
        f"  scores test once, after epoch {a.epochs}. featcache's s/epoch counts its two fits (select + final).",
    ]
    if f["seeds"]:
        sel = [v["selected_test_top1"] for v in f["seeds"]]
        res = [v["research_top1"] for v in f["seeds"]]
        rows.append(
            f"spread: featcache 1 wd, head seeds 0-{len(sel) - 1} (init, shuffle, val split, view order): test top-1 "
            f"{min(sel):.2f}-{max(sel):.2f} (mean {np.mean(sel):.2f}), research-style {min(res):.2f}-{max(res):.2f}"
        )
    rows += [
        "",
        f"extrapolated to {e} epochs and the {g}-value CIFAR weight-decay grid (linear in the measured times):",
        f"  research : (train epoch {x['research_epoch_s']:.2f} s, the fastest of {a.epochs} (mean "
        f"{x['research_epoch_mean_s']:.2f} s), + test pass {r['test_s']:.2f} s, as the seed scores test every epoch)",
        f"             x {e} epochs x {g} sequential runs = {x['research_grid_s']:,.0f} s",
        f"  featcache: extract once {f['extract_s']:.1f} s + probe load {multi['load_s']:.2f} s + grid probe "
        f"{multi['per_epoch_s']:.3f} s/epoch x {e} (all {g} heads in one pass) = {x['featcache_grid_s']:,.1f} s",
        f"  research / featcache: {x['ratio_grid']:,.1f}x",
        f"  one weight decay only: research {x['research_run_s']:,.0f} s vs featcache {x['featcache_one_s']:,.1f} s "
        f"-> {x['ratio_one']:,.1f}x",
        f"  views: extraction is about linear in forward passes ({n_train} train x (1 + {a.views} views) + {n_test} "
        f"test, per checkpoint),",
        f"    so each extra stored view costs ~{x['per_view_s']:.1f} s here; {e} views (a different crop every epoch, "
        f"as many crops as one research run draws)",
        f"    would make featcache's grid ~{x['featcache_grid_28views_s']:,.0f} s -> {x['ratio_grid_28views']:,.1f}x",
    ]
    return [row.rstrip() for row in rows]


def main(argv: list[str] | None = None) -> int:
    a = _parse(argv)
    device = resolve_device(a.device)
    n_train, n_test, views = SIZES[(device.type, a.quick)]
    n_train, n_test = a.train_images or n_train, a.test_images or n_test
    a.views = views if a.views is None else a.views
    if min(n_train, n_test) < 1 or a.views < 1:
        raise SystemExit("--train-images, --test-images and --views must be >= 1")
    if n_train % a.batch_size == 1:  # BatchNorm cannot train on a last batch of one row
        raise SystemExit(f"--train-images {n_train} leaves a last batch of 1 row at batch {a.batch_size}; change it")
    date = time.strftime("%Y-%m-%d %H:%M:%S %z")
    load = ", load average " + " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else ""
    print(f"featcache {__version__} benchmark: research probe (backbones in the loop) vs extract once + probe")
    print(f"device   {device} = {device_name(device)}")
    print(f"torch    {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} threads")
    print(f"date     {date}; python {platform.python_version()}{load}; {a.workers} DataLoader workers")
    print(
        f"setup    {a.checkpoints} x {a.arch} (random weights, fp32 in the research loop), CIFAR-format "
        f"{n_train} train + {n_test} test images, preset {a.preset}, {a.epochs} epochs, batch {a.batch_size}, "
        f"wd {a.wd:g}; featcache K={a.views} views",
        flush=True,
    )

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="featcache-bench-") as tmp:
        root = Path(tmp)
        paths = Paths(data=root / "data", cache=root / "cache", checkpoints=root / "ckpts", config=REPO / "configs")
        t = time.perf_counter()
        write_cifar10(paths.data / "cifar", n_train, n_test)
        specs = write_checkpoints(paths.checkpoints, a.arch, a.checkpoints)
        print(f"data     written in {time.perf_counter() - t:.1f} s under {root}", flush=True)
        reg = load_registry(paths)
        tf = reg.transform(reg.dataset("cifar10"), a.preset)
        if tf.augment is None:
            raise SystemExit(f"--preset {a.preset}: the preset defines no training augmentation")
        print(f"train tf {' '.join(str(research_transforms(tf)[0]).split())}", flush=True)
        r = research_run(paths.data / "cifar", specs, tf, a, device)
        f = featcache_run(paths, specs, a, device)
    x = extrapolate(r, f, a, n_train, n_test)
    rows = table(r, f, x, a, n_train, n_test, a.checkpoints)
    print()
    print(f"seconds on {device_name(device)}, torch {torch.__version__}, {date}")
    print("\n".join(rows))
    print(f"(whole run {time.perf_counter() - t0:.0f} s)")

    if a.out:
        record = {
            "benchmark": "probe_vs_recompute",
            "date": date,
            "device": str(device),
            "device_name": device_name(device),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "featcache_version": __version__,
            "threads": torch.get_num_threads(),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
            "train_images": n_train,
            "test_images": n_test,
            "research": r,
            "featcache": f,
            "extrapolation": x,
            "table": rows,
        }
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(record, indent=2, default=str) + "\n")
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
