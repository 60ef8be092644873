"""Benchmark: the projected GPU time of the paper's whole Time-Cat table, from rates measured in this run.

The work is read from the configs: the sweep's rows and datasets (``configs/sweeps/timecat.yaml``; each draw's
checkpoints from the registry, 16 distinct ResNet50s), each dataset's probe preset (``configs/probes.yaml``: epochs,
batch, weight-decay grid, views K, val fraction); the datasets' sizes and classes are the published ones (REFERENCE.md).
The rates are measured here, on the machine at hand, unless given:

- extraction: the backbone's forward pass alone at featcache's precision, eager and (CUDA) compiled, and
  ``featcache.extract()``'s steady rate on CIFAR-format images at 224 px (its pipeline's efficiency: extract / eager
  forward); the projection runs each dataset's extraction at efficiency x the compiled rate when ``--compile auto``
  would compile (:data:`featcache.extract.COMPILE_MIN_PASSES`), plus one compile, else at the eager rate;
- probes: SGD steps/s of the heads (``featcache.heads.MultiHeadProbe`` as it is) at every (features, classes, batch,
  heads) shape of the table, features resident on the device (``--probe-steps-per-s`` gives one rate for all).

featcache's cost of the table is one extraction per dataset (every checkpoint, train with its evaluation view and K
views, test) plus every probe of the sweep (two fits each: select on the train rows outside val, refit on all train).
The research code's cost runs the backbones in the loop: each weight decay its own run of 28 epochs, each epoch the
train images with fresh crops through every backbone of the draw plus a test pass, at REFERENCE.md's measured rate
(710 images/s for 5 ResNet50s, fp32, PIL augmentation in 16 workers, one H200), modelled as a fixed data time per image
plus one fp32 forward pass per backbone. Every assumption is printed with the result.

    .venv/bin/python benchmarks/timecat_cost.py                          # measures here (slow parts small on a CPU)
    .venv/bin/python benchmarks/timecat_cost.py --probe-steps-per-s 5000 --out cost.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from featcache import __version__
from featcache.config import Paths, load_registry
from featcache.config.sweep import load_sweep
from featcache.devices import PRECISIONS, device_name, resolve_device, resolve_precision
from featcache.extract import COMPILE_MIN_PASSES, ExtractConfig, extract
from featcache.forward import prepare_model
from featcache.heads import HeadConfig, MultiHeadProbe
from featcache.models import build_features, load_backbone
from featcache.testing.checkpoints import write_checkpoints
from featcache.testing.formats import write_random_cifar10

REPO = Path(__file__).resolve().parents[1]
# REFERENCE.md, "Dataset formats" and the datasets' own publications: (train, test, classes)
SIZES = {"imagenet1k": (1_281_167, 50_000, 1000), "inaturalist18": (437_513, 24_426, 8142),
         "cifar100": (50_000, 10_000, 100), "cifar10": (50_000, 10_000, 10)}  # fmt: skip
# REFERENCE.md, measured on one H200: the research linear eval with 5 ResNet50s in the loop (PIL augmentation in 16
# workers, fp32) 710 images/s; the fp32 ResNet50 forward pass alone 7,476 images/s
RESEARCH_5 = 710.0
RESEARCH_FWD = 7476.0
TARGET_H = 4.0


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", default="timecat", help="the sweep whose table is projected")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--arch", help="the backbone measured (default: the sweep's checkpoints' architecture)")
    p.add_argument("--images", type=int, help="images of the extract() measurement (default 8,192 CUDA, 64 CPU)")
    p.add_argument("--probe-steps", type=int, help="steps timed per probe shape (default 200 CUDA, 3 CPU)")
    p.add_argument("--probe-steps-per-s", type=float, help="one probe rate for every shape instead of measuring")
    p.add_argument("--extract-images-per-s", type=float, help="an extraction rate (forward passes/s) instead")
    p.add_argument("--no-compile", action="store_true", help="do not measure the compiled forward pass (CUDA)")
    p.add_argument(
        "--packed", action="store_true", help="a dataset's probes in one pass (as featcache sweep packs them)"
    )
    p.add_argument("--out", type=Path, help="also write the projection as JSON here")
    return p.parse_args(argv)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def table_work(reg, sweep) -> dict:
    """The table's work, from the configs: checkpoints, and per dataset its preset and probes (dims)."""
    ckpts, probes = {}, []
    for row in sweep.rows:
        for draw in row.draws:
            specs = reg.expand_checkpoints(draw)
            ckpts.update({c.name: c for c in specs})
            probes.append((row.name, draw, specs))
    with torch.device("meta"):  # widths only
        widths = {arch: build_features(arch).feature_dim for arch in {c.arch for c in ckpts.values()}}
    datasets = []
    for d in sweep.datasets:
        preset = reg.preset(d.preset or reg.preset_for(d.name))
        views = d.views if d.views is not None else preset.views
        epochs = d.epochs or preset.epochs
        train, test, classes = SIZES[d.name]
        datasets.append({"name": d.name, "train": train, "test": test, "classes": classes, "views": views,
                         "epochs": epochs, "batch": preset.batch_size, "heads": len(preset.weight_decays) *
                         len(preset.lrs or (None,)), "val_fraction": preset.val_fraction})  # fmt: skip
    dims = [(row, draw, len(specs), sum(widths[c.arch] for c in specs)) for row, draw, specs in probes]
    return {"checkpoints": ckpts, "widths": widths, "datasets": datasets, "probes": dims}


def forward_rate(module, device, precision: str, batch: int, crop: int, seconds: float = 2.0) -> float:
    """Images/s of ``module``'s forward pass alone at featcache's precision, inputs already on the device."""
    x = torch.randn(batch, 3, crop, crop, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=PRECISIONS[precision], enabled=precision != "fp32")
    with torch.inference_mode(), autocast:
        module(x)
        _sync(device)
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds or n < 2:
            module(x)
            n += 1
            if device.type == "cuda" and n % 8 == 0:
                _sync(device)
        _sync(device)
        return n * batch / (time.perf_counter() - t)


def extraction_rates(a, work, device, root: Path) -> dict:
    """Forward passes/s: eager and compiled forward alone, extract()'s steady rate and its efficiency."""
    arch = a.arch or next(iter(work["widths"]))
    precision = resolve_precision("auto", device)
    batch = 256 if device.type == "cuda" else 32
    n = a.images or (8192 if device.type == "cuda" else 64)
    paths = Paths(data=root / "data", cache=root / "cache", checkpoints=root / "ckpts", config=REPO / "configs")
    write_random_cifar10(paths.data / "cifar", n, 16, 0)
    (spec,) = write_checkpoints(paths.checkpoints, arch, 1)
    reg = load_registry(paths)
    ds = reg.dataset("cifar10")
    cfg = ExtractConfig((spec,), ds, reg.transform(ds, "224px"), paths.cache, splits=("train",), batch_size=batch,
                        device=device.type, workers=min(8, os.cpu_count() or 1), limit=n)  # fmt: skip
    extract(dataclasses.replace(cfg, limit=batch, cache_dir=root / "warm"))  # kernels loaded, page cache warm
    times = {}
    for rows in (batch, n):  # steady rate: the one-batch call subtracted (fixed costs cancel)
        t = time.perf_counter()
        extract(dataclasses.replace(cfg, limit=rows, cache_dir=root / f"c{rows}"))
        times[rows] = time.perf_counter() - t
    steady = (n - batch) / (times[n] - times[batch])
    module = load_backbone(spec).module
    eager = forward_rate(prepare_model(module, device, False), device, precision, batch, 224)
    out = {"arch": arch, "precision": precision, "batch": batch, "extract_steady": steady, "eager": eager,
           "efficiency": min(1.0, steady / eager), "compiled": None, "compile_s": 0.0}  # fmt: skip
    if device.type == "cuda" and not a.no_compile:
        t = time.perf_counter()
        compiled = prepare_model(load_backbone(spec).module, device, True)
        forward_rate(compiled, device, precision, batch, 224, seconds=0.0)  # the compile
        out["compile_s"] = time.perf_counter() - t
        out["compiled"] = forward_rate(compiled, device, precision, batch, 224)
    return out


def probe_rate(dim: int, classes: int, batch: int, heads: int, steps: int, device) -> float:
    """SGD steps/s of ``heads`` parallel heads on resident float16 features; the rate between a 2-step and a
    ``steps``-step fit, so setting the heads up cancels."""
    cfg = HeadConfig(epochs=1, batch_size=batch, weight_decays=tuple(1e-4 * (h + 1) for h in range(heads)))
    x = torch.randn(batch * steps, dim, device=device, dtype=torch.float16)
    y = torch.randint(0, classes, (batch * steps,), device=device)
    times = {}
    for n in (2, 2, steps):  # the first 2-step fit warms up
        _sync(device)
        t = time.perf_counter()
        MultiHeadProbe(cfg, dim, classes, device=device).fit(x[: batch * n], y[: batch * n])
        _sync(device)
        times[n] = time.perf_counter() - t
    return (steps - 2) / max(times[steps] - times[2], 1e-9)


def probe_shapes(d: dict, work: dict, packed: bool) -> list[tuple[int, int, int, int]]:
    """The (features, classes, batch, heads) of a dataset's probes; packed, one: the union of the checkpoints'
    features (every probe reads its columns) and every probe's heads."""
    if packed:
        union = sum(work["widths"][c.arch] for c in work["checkpoints"].values())
        return [(union, d["classes"], d["batch"], d["heads"] * len(work["probes"]))]
    return [(dim, d["classes"], d["batch"], d["heads"]) for *_, dim in work["probes"]]


def project(work: dict, rates: dict, probe_rates: dict, device, packed: bool = False) -> list[dict]:
    """Hours per dataset: featcache's extraction and probes, and the research code's runs."""
    t_data = 1 / RESEARCH_5 - 5 / RESEARCH_FWD  # the research loop's time per image besides its forward passes
    out = []
    for d in work["datasets"]:
        passes = (d["train"] * (1 + d["views"]) + d["test"]) * len(work["checkpoints"])
        compiled = rates["compiled"] is not None and device.type == "cuda" and passes >= COMPILE_MIN_PASSES
        rate = rates["efficiency"] * (rates["compiled"] if compiled else rates["eager"])
        extract_s = passes / rate + (rates["compile_s"] if compiled else 0.0)
        fit = math.ceil(d["train"] * (1 - d["val_fraction"]) / d["batch"]) + math.ceil(d["train"] / d["batch"])
        probe_s = sum(d["epochs"] * fit / probe_rates[shape] for shape in probe_shapes(d, work, packed))
        research_s = sum(d["heads"] * d["epochs"] * (d["train"] + d["test"]) * (t_data + n / RESEARCH_FWD)
                         for _, _, n, _ in work["probes"])  # fmt: skip
        out.append({"dataset": d["name"], "passes": passes, "compiled": compiled, "extract_h": extract_s / 3600,
                    "probe_h": probe_s / 3600, "research_h": research_s / 3600})  # fmt: skip
    return out


def main(argv=None) -> int:
    a = _parse(argv)
    device = resolve_device(a.device)
    reg = load_registry(Paths(data=REPO / "data", cache=REPO / "cache", checkpoints=REPO / "checkpoints",
                              config=REPO / "configs"))  # fmt: skip
    sweep = load_sweep(a.sweep, reg)
    work = table_work(reg, sweep)
    date = time.strftime("%Y-%m-%d %H:%M:%S %z")
    print(f"featcache {__version__}: projected time of the '{sweep.name}' table on {device_name(device)}, {date}")
    with tempfile.TemporaryDirectory(prefix="featcache-cost-") as tmp:
        if a.extract_images_per_s:
            given = a.extract_images_per_s
            rates = {"arch": "given", "precision": "-", "batch": 0, "extract_steady": given, "eager": given,
                     "efficiency": 1.0, "compiled": None, "compile_s": 0.0}  # fmt: skip
        else:
            rates = extraction_rates(a, work, device, Path(tmp))
    shapes = sorted({shape for d in work["datasets"] for shape in probe_shapes(d, work, a.packed)})
    steps = a.probe_steps or (200 if device.type == "cuda" else 3)
    probe_rates = {s: a.probe_steps_per_s or probe_rate(*s, steps, device) for s in shapes}
    rows = project(work, rates, probe_rates, device, a.packed)

    print("assumptions:")
    for d in work["datasets"]:
        print(f"  {d['name']:<14} {d['train']:>9,} train / {d['test']:>6,} test, {d['classes']:>5,} classes; probe: "
              f"{d['epochs']} epochs, batch {d['batch']}, {d['heads']} heads in one pass, K = {d['views']} views, "
              f"val {d['val_fraction']:.0%}")  # fmt: skip
    names = ", ".join(work["checkpoints"])
    print(f"  checkpoints    {len(work['checkpoints'])} distinct ({names}); widths {work['widths']}")
    probes = ", ".join(f"{r}/{dr} {dim}-d" for r, dr, _, dim in work["probes"])
    print(
        f"  probes         {len(work['probes'])} a dataset ({probes}); two fits each (select on the train rows "
        "outside val, refit on all train); evaluation passes left out (a few % of the rows, forward only)"
    )
    if a.packed:
        print("  packed         every probe of a dataset trained in one pass (featcache sweep's packing): one probe's "
              "steps, at the rate of all their heads on the union of their features")  # fmt: skip
    print(f"  extraction     one pass a dataset: every checkpoint over train (evaluation view + K views) and test; "
          f"forward at {rates['precision']}, batch {rates['batch']}")  # fmt: skip
    compiled = ""
    if rates["compiled"]:  # where the compile repays itself: compile time / time saved per pass
        saved = 1 / rates["eager"] - 1 / rates["compiled"]
        even = f"{rates['compile_s'] / saved:,.0f} passes" if saved > 0 else "never"
        compiled = f", compiled {rates['compiled']:,.0f} (compile {rates['compile_s']:.1f} s: repaid from {even})"
    print(f"  rates here     forward {rates['arch']} eager {rates['eager']:,.0f} images/s{compiled}; extract() steady "
          f"{rates['extract_steady']:,.0f} (efficiency {rates['efficiency']:.2f}); --compile auto from "
          f"{COMPILE_MIN_PASSES:,} passes")  # fmt: skip
    given = " (given)" if a.probe_steps_per_s else f" ({steps} steps timed)"
    print("  probe steps/s" + given + ": " + ", ".join(f"{d}-d {c} cls b{b} {h}h {r:,.0f}"
                                                      for (d, c, b, h), r in probe_rates.items()))  # fmt: skip
    print(
        f"  research       backbones in the loop, fp32: per image {1e3 * (1 / RESEARCH_5 - 5 / RESEARCH_FWD):.3f} ms "
        f"+ n x {1e3 / RESEARCH_FWD:.3f} ms for n backbones (REFERENCE.md: {RESEARCH_5:.0f} images/s with 5, "
        f"{RESEARCH_FWD:,.0f} forward alone; one H200); each weight decay its own 28-epoch run, a test pass an epoch"
    )
    print()
    print(f"{'dataset':<14} {'passes':>13} {'extract h':>10} {'probes h':>9} {'featcache h':>12} {'research h':>11}")
    for r in rows:
        total = r["extract_h"] + r["probe_h"]
        print(f"{r['dataset']:<14} {r['passes']:>13,} {r['extract_h']:>10.2f} {r['probe_h']:>9.2f} {total:>12.2f} "
              f"{r['research_h']:>11,.0f}")  # fmt: skip
    total = sum(r["extract_h"] + r["probe_h"] for r in rows)
    research = sum(r["research_h"] for r in rows)
    print(f"{'table':<14} {'':>13} {sum(r['extract_h'] for r in rows):>10.2f} {sum(r['probe_h'] for r in rows):>9.2f} "
          f"{total:>12.2f} {research:>11,.0f}")  # fmt: skip
    verdict = "ok" if total <= TARGET_H else "MISSED"
    given = a.probe_steps_per_s is not None and a.extract_images_per_s is not None
    where = (" (rates given, not measured)" if given
             else "" if device.type == "cuda" else " (CPU rates: not the GPU target)")  # fmt: skip
    print(f"target: the whole table <= {TARGET_H:.0f} h: {total:.2f} h {verdict}{where}; research / featcache "
          f"{research / total:,.0f}x")  # fmt: skip
    if a.out:
        doc = {"benchmark": "timecat_cost", "featcache": __version__, "device": device_name(device), "date": date,
               "packed": a.packed, "rates": rates, "probe_steps_per_s": {str(k): v for k, v in probe_rates.items()},
               "rows": rows, "featcache_h": total, "research_h": research, "target_h": TARGET_H,
               "holds": total <= TARGET_H}  # fmt: skip
        a.out.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
