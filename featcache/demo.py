"""``featcache demo``: the Time-Cat claim on real data that ships with scikit-learn, on a CPU, in minutes.

At one fixed pretraining budget of T steps, is one network trained T steps a better feature extractor than
2 networks x T/2 or 4 networks x T/4, concatenated? Each way is drawn three times (other seeds):

1. Pretrain the checkpoints of the digits sweep (``configs/sweeps/digits.yaml``: rows cat1, cat2, cat4, their
   draws and steps per model; the checkpoints are registered in ``configs/checkpoints.d/demo.yaml``): tiny ResNets
   trained on digits 0-4 for the row's steps, saved in the AlgoPerf format the research checkpoints come in.
   A checkpoint that exists with the same steps and seed is kept.
2. Run the digits sweep (:mod:`featcache.sweep`): extract every checkpoint's features on the transfer task,
   digits 5-9, with augmented views, then probe every (row, draw) from the cache.
3. Write the report (:mod:`featcache.report`): the table, mean ± std per row over the draws, and the plot.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import CheckpointSpec, Paths, Registry, load_registry
from .data import build_dataset
from .errors import ConfigError
from .models import build_backbone
from .report import ReportFiles, SweepReport, build_report, write_report
from .store import store_path
from .sweep import SweepConfig, load_sweep, run_sweep
from .tables import render
from .transforms import BatchPreprocess

__all__ = [
    "run_demo",
    "pretrain",
    "pretrain_sweep",
    "native_bf16",
    "to_algoperf",
    "DemoResult",
    "PRETRAIN",
    "TRANSFER",
    "SWEEP",
    "SET",
]

log = logging.getLogger(__name__)

PRETRAIN, TRANSFER, SWEEP = "digits-pretrain", "digits-transfer", "digits"
SET = "demo-cat1-d0"  # one registered demo checkpoint (a set of one), for benchmarks that need a trained net
BATCH, LR, WEIGHT_DECAY = 32, 2e-3, 5e-4


def to_algoperf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Name a torchvision ResNet state_dict as AlgoPerf saves it (torch.compile + DDP prefixes)."""
    out = {}
    for k, v in state.items():
        k = k.replace("downsample.0.", "downsample.conv.").replace("downsample.1.", "downsample.bn.")
        out[f"_orig_mod.module.{k}"] = v
    return out


def _images(reg: Registry, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    spec = reg.dataset(PRETRAIN)
    ds = build_dataset(spec, split)
    pre = BatchPreprocess(reg.transform(spec, None))
    return pre(torch.from_numpy(ds.images).permute(0, 3, 1, 2).contiguous(), cropped=False), torch.from_numpy(
        ds.targets
    )


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): then bf16 autocast is 1.5-2.5x faster here."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pretrain(
    reg: Registry, spec: CheckpointSpec, seed: int, steps: int, *, batch_size: int = BATCH, bf16: bool = False
) -> float:
    """Train ``spec.arch`` on digits 0-4 for ``steps`` steps from ``seed``; save it at ``spec.path`` (AlgoPerf).

    AdamW with a cosine schedule over the model's own ``steps``, so a short run ends annealed like a long one;
    random 0-2 px shifts as augmentation; ``bf16``: autocast the forward pass (on CPUs with native bf16).

    Returns:
        Top-1 (%) on the pretraining task's test split.
    """
    torch.manual_seed(seed)
    x_all, y_all = _images(reg, reg.dataset(PRETRAIN).train_split)
    backbone, dim = build_backbone(spec.arch)
    model = nn.Sequential(backbone, nn.Linear(dim, int(y_all.max()) + 1)).train()
    model = model.to(memory_format=torch.channels_last)  # faster CPU convolutions, same numbers
    # fused: one kernel for the whole update, 7x faster than the per-tensor loop on a CPU thread
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    gen = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch_size:  # epochs run into each other: a step budget, not an epoch budget
            order = torch.cat([order, torch.randperm(len(x_all), generator=gen)])
        idx, order = order[:batch_size], order[batch_size:]
        dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
        x = torch.roll(x_all[idx], shifts=(dy, dx), dims=(2, 3)).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(x), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    x_test, y_test = _images(reg, reg.dataset(PRETRAIN).test_split)
    with torch.inference_mode():
        acc = 100.0 * (model(x_test).argmax(1) == y_test).float().mean().item()
    model = model.to(memory_format=torch.contiguous_format)
    state = model[0].state_dict()
    state.update({f"fc.{k}": v for k, v in model[1].state_dict().items()})  # the classifier, as fc.*
    spec.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = spec.path.with_name(spec.path.name + ".tmp")
    meta = {"seed": seed, "steps": steps, "batch_size": batch_size}
    torch.save({"model_params": to_algoperf(state), "optimizer_state": {}, "global_step": steps, "demo": meta}, tmp)
    tmp.replace(spec.path)
    return acc


def _trained(spec: CheckpointSpec, seed: int, steps: int) -> bool:
    """Whether ``spec.path`` holds the demo's model for this seed and step budget."""
    try:
        ckpt = torch.load(spec.path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, EOFError):  # missing or unreadable (a kill mid-save leaves only the .tmp)
        return False
    return ckpt.get("demo") == {"seed": seed, "steps": steps, "batch_size": BATCH}


def pretrain_sweep(sweep: SweepConfig, reg: Registry, paths: Paths, *, retrain: bool, bf16: bool, echo) -> int:
    """Pretrain every checkpoint of the sweep's rows for its row's ``steps_per_model``; returns how many were.

    Seeds are the checkpoints' positions in the sweep, so every model is its own. A retrained checkpoint's
    stores are deleted: their features belong to the old weights.
    """
    seen: dict[str, int] = {}
    todo = []
    for row in sweep.rows:
        if row.steps_per_model is None:
            raise ConfigError(f"{sweep.source}: rows.{row.name}: the demo needs steps_per_model")
        for draw in row.draws:
            for spec in reg.expand_checkpoints(draw):
                if spec.name not in seen:
                    seen[spec.name] = len(seen)
                    todo.append((spec, seen[spec.name], row.steps_per_model))
    done = 0
    for i, (spec, seed, steps) in enumerate(todo, 1):
        if not retrain and _trained(spec, seed, steps):
            continue
        t0 = time.perf_counter()
        acc = pretrain(reg, spec, seed, steps, bf16=bf16)
        for split_dataset in {TRANSFER, *(d.name for d in sweep.datasets)}:
            shutil.rmtree(store_path(paths.cache, split_dataset, spec.name), ignore_errors=True)
        done += 1
        echo(f"[pretrain {i}/{len(todo)}] {spec.name}: {steps} steps of batch {BATCH}, seed {seed}, on digits 0-4: "
             f"test top-1 {acc:.1f}% in {time.perf_counter() - t0:.1f}s")  # fmt: skip
    return done


def _verdict(report: SweepReport) -> str:
    """One sentence on what was measured: the best row against one network trained the whole budget."""
    d = report.datasets[0]
    cells = {r.name: (r, report.cells[(r.name, d)]) for r in report.rows}
    if any(c.mean is None for _, c in cells.values()):
        return "measured: some rows have no result yet; rerun `featcache demo` to finish them"

    def show(name: str) -> str:
        r, c = cells[name]
        return f"{name} ({r.models} x {r.steps_per_model} steps) {c.mean:.2f} ± {c.std or 0:.2f}"

    single = report.rows[0].name
    best = max(cells, key=lambda n: cells[n][1].mean)
    if best == single:
        return (
            f"measured: one network trained the whole budget was best here, {show(single)}; concatenation did not help"
        )
    gain = cells[best][1].mean - cells[single][1].mean
    spread = max(cells[best][1].std or 0, cells[single][1].std or 0)
    size = "more than" if gain > spread else "within"
    return (f"measured: at the same budget {show(best)} beat {show(single)} by {gain:.2f} points, "
            f"{size} the spread over draws")  # fmt: skip


@dataclass(frozen=True)
class DemoResult:
    report: SweepReport
    files: ReportFiles
    seconds: float


def run_demo(
    paths: Paths, *, retrain: bool = False, out: Path | None = None, echo: Callable[[str], None] = log.info
) -> DemoResult:
    """Pretrain what is missing, run the digits sweep, write and print the report (see the module docstring).

    Args:
        paths: the roots; checkpoints go under ``paths.checkpoints/demo``, stores and results under ``paths.cache``.
        retrain: pretrain every checkpoint again (their stores are then extracted again).
        out: folder of the report files (default ``<cache>/reports``).
        echo: where progress and the table go (the CLI passes ``click.echo``).

    Returns:
        The report, where its files are, and the seconds the demo took.

    Raises:
        ConfigError, StoreError, ProbeError, ResultsError: as :func:`featcache.sweep.run_sweep`.
    """
    # Everything here is tiny (8x8 digits, 512-d features): a second intra-op thread gains little, and
    # on a busy 2-core machine spinning OpenMP threads made the demo 9x slower (88 s vs 9.5 s per model).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(paths, retrain, out, echo)
    finally:
        torch.set_num_threads(threads)


def _run(paths: Paths, retrain: bool, out: Path | None, echo: Callable[[str], None]) -> DemoResult:
    t0 = time.perf_counter()
    reg = load_registry(paths)
    sweep = load_sweep(SWEEP, reg)
    total = {r.steps_per_model * len(reg.expand_checkpoints(r.draws[0])) for r in sweep.rows if r.steps_per_model}
    # bf16 for pretraining only where the CPU has it natively; extraction stays the sweep's (fp32 on a CPU), so
    # `featcache sweep digits` on its own makes stores the demo's can be concatenated with
    bf16 = native_bf16()
    echo(f"featcache demo: a pretraining budget of {', '.join(map(str, sorted(total)))} steps on digits 0-4, spent "
         f"on 1, 2 or 4 networks; their concatenated features probed on digits 5-9 ({sweep.source}; pretraining "
         f"in {'bf16, native on this CPU' if bf16 else 'fp32'})")  # fmt: skip
    pretrain_sweep(sweep, reg, paths, retrain=retrain, bf16=bf16, echo=echo)
    result = run_sweep(sweep, reg, paths, echo=echo)
    report = build_report(result.plan)
    files = write_report(report, out or paths.cache / "reports")
    echo("")
    echo("Linear-probe test top-1 (%) on digits 5-9, mean ± std over 3 draws (* best):")
    echo(render(report.table_rows(mark="{} *")))
    echo(report.footnote())
    echo(_verdict(report))
    echo("")
    echo(f"table:   {files.markdown}  {files.csv}")
    echo(f"plot:    {files.plot}" if files.plot else f"plot:    not written; {files.note}")
    echo(f"stores:  {paths.cache / TRANSFER}   (featcache ls --dataset {TRANSFER})")
    echo(f"results: {paths.results_log}   (featcache results --tag sweep:{sweep.name})")
    seconds = time.perf_counter() - t0
    echo(f"demo finished in {seconds:.0f}s")
    return DemoResult(report, files, seconds)
