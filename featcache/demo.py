"""``featcache demo``: the whole pipeline on real data that ships with scikit-learn, on a CPU.

1. Pretrain the registry's ``demo`` set (tiny ResNets, one seed each) on digits 0-4 and save them
   in the AlgoPerf checkpoint format the research checkpoints come in.
2. Extract their features on the transfer task, digits 5-9 (train and test splits).
3. Probe every single store and every concatenation of 2, 3, ... stores, then print single versus
   concatenated accuracy (mean and spread over the seed combinations).
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .config import CheckpointSpec, Paths, Registry, load_registry
from .data import build_dataset
from .extract import ExtractConfig, extract
from .models import build_backbone
from .probe import ProbeConfig, heads_from_preset, run_probe
from .results import append_record
from .store import store_path
from .tables import render
from .transforms import BatchPreprocess

__all__ = ["run_demo", "pretrain", "to_algoperf"]

PRETRAIN, TRANSFER, SET = "digits-pretrain", "digits-transfer", "demo"
MAX_COMBOS = 4  # probes per concatenation size: enough for a spread, small enough for 2 cores


def to_algoperf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Name a torchvision ResNet state_dict as AlgoPerf saves it (torch.compile + DDP prefixes)."""
    out = {}
    for k, v in state.items():
        k = k.replace("downsample.0.", "downsample.conv.").replace("downsample.1.", "downsample.bn.")
        out[f"_orig_mod.module.{k}"] = v
    return out


def pretrain(reg: Registry, spec: CheckpointSpec, seed: int, epochs: int) -> float:
    """Train ``spec.arch`` on digits 0-4 from ``seed``, save it at ``spec.path``; returns train accuracy (%)."""
    torch.manual_seed(seed)
    ds_spec = reg.dataset(PRETRAIN)
    ds = build_dataset(ds_spec, ds_spec.train_split)
    pre = BatchPreprocess(reg.transform(ds_spec, None))
    x_all = pre(torch.from_numpy(ds.images).permute(0, 3, 1, 2).contiguous(), cropped=False)
    y_all = torch.from_numpy(ds.targets)
    backbone, dim = build_backbone(spec.arch)
    model = nn.Sequential(backbone, nn.Linear(dim, len(ds.classes))).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    steps, correct = 0, 0
    for _ in range(epochs):
        correct = 0
        for idx in torch.randperm(len(ds), generator=gen).split(64):
            # random 0-2 px shifts: cheap augmentation so seeds learn different features
            dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
            x = torch.roll(x_all[idx], shifts=(dy, dx), dims=(2, 3))
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            correct += (logits.argmax(1) == y_all[idx]).sum().item()
    state = model[0].state_dict()
    state.update({f"fc.{k}": v for k, v in model[1].state_dict().items()})  # the classifier, as fc.*
    spec.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = spec.path.with_name(spec.path.name + ".tmp")
    torch.save({"model_params": to_algoperf(state), "optimizer_state": {}, "global_step": steps}, tmp)
    tmp.replace(spec.path)
    return 100.0 * correct / len(ds)


def _summary(records: list[dict]) -> list[dict]:
    rows = []
    for n in sorted({len(r.stores) for r in records}):
        rs = [r for r in records if len(r.stores) == n]
        acc = [r.selected.test_top1 for r in rs]
        rows.append(
            {
                "features": f"cat{n}",
                "probes": len(rs),
                "dim": rs[0].feature_dim,
                "test_top1_mean": statistics.mean(acc),
                "test_top1_std": statistics.pstdev(acc),
                "min": min(acc),
                "max": max(acc),
                "research_top1_mean": statistics.mean(r.research.test_top1 for r in rs),
            }
        )
    return rows


def run_demo(
    paths: Paths, *, epochs: int = 6, retrain: bool = False, echo: Callable[[str], None] = print
) -> list[dict]:
    """Run the three steps; returns the summary rows (one per concatenation size)."""
    # Everything here is tiny (8x8 digits, 512-d features): a second intra-op thread gains little, and
    # on a busy 2-core machine spinning OpenMP threads made the demo 9x slower (88 s vs 9.5 s per model).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(paths, epochs, retrain, echo)
    finally:
        torch.set_num_threads(threads)


def _run(paths: Paths, epochs: int, retrain: bool, echo: Callable[[str], None]) -> list[dict]:
    t0 = time.perf_counter()
    reg = load_registry(paths)
    specs = reg.expand_checkpoints(SET)
    for seed, spec in enumerate(specs):
        if retrain or not spec.path.exists():
            acc = pretrain(reg, spec, seed, epochs)
            echo(
                f"pretrained {spec.name} ({spec.arch}, seed {seed}) on digits 0-4: train acc {acc:.1f}% -> {spec.path}"
            )
    ds = reg.dataset(TRANSFER)
    cfg = ExtractConfig(
        checkpoints=tuple(specs),
        dataset=ds,
        transform=reg.transform(ds, None),
        cache_dir=paths.cache,
        workers=0,
        batch_size=128,
        overwrite=retrain,
    )
    report = extract(cfg)
    echo(f"extracted digits 5-9 features: {report.summary()}")
    heads, val_fraction = heads_from_preset(reg.probe_preset("quick"))
    names = [s.name for s in specs]
    records = []
    for n in range(1, len(names) + 1):
        for combo in itertools.islice(itertools.combinations(names, n), MAX_COMBOS):
            paths_ = tuple(store_path(paths.cache, TRANSFER, c) for c in combo)
            cfg = ProbeConfig(paths_, heads, val_fraction, device="cpu", views=0, preset="quick", tag="demo")
            record = run_probe(cfg)
            append_record(paths.results_log, record)
            records.append(record)
    rows = _summary(records)
    echo("")
    echo(
        "Linear probes on digits 5-9 over features of tiny ResNets pretrained on digits 0-4 "
        "(test top-1 %, selected on val):"
    )
    echo(render(rows))
    echo("")
    echo(f"stores:  {Path(paths.cache) / TRANSFER}   (featcache ls --dataset {TRANSFER})")
    echo(f"results: {Path(paths.cache) / 'results.jsonl'}   (featcache results demo)")
    echo(f"demo finished in {time.perf_counter() - t0:.0f}s")
    return rows
