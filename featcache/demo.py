"""``featcache demo``: the Time-Cat claim in miniature, on data that ships with scikit-learn, on a CPU, in minutes.

The paper's setting (Yang, Zhang & Bottou 2025): a network pretrained on a mixture keeps only the features that
the mixture needs, and when features compete (an easy one fits most of the loss) it under-serves a component that
needs the other. At one fixed pretraining budget of T steps, is one network trained T steps a better feature
extractor for that component than 2 networks x T/2 or 4 networks x T/4, concatenated? And is any of them better
than random features? Each row is drawn three times (other seeds):

1. Pretrain the checkpoints of the demo sweep (``configs/sweeps/demo.yaml``; registered in
   ``configs/checkpoints.d/demo.yaml``): tiny ResNets trained on ``digits-mix`` (digits at random offsets, about
   half of them coloured by class: :mod:`featcache.datasets.digits_mix`) for their row's steps, in fp32 from fixed
   seeds, saved in the AlgoPerf format the research checkpoints come in. The control rows' checkpoints are the same
   networks saved at initialisation (0 steps). A checkpoint that exists with the same recipe, steps and seed is kept.
2. Run the demo sweep (:mod:`featcache.sweep`): extract every checkpoint's features on ``digits-plain`` (the plain
   component: shape only), then probe every (row, draw) from the cache.
3. Write the report (:mod:`featcache.report`) and print it with the verdicts (:mod:`featcache.demo_report`).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import CheckpointSpec, Paths, Registry, load_registry
from .data import build_dataset
from .demo_report import plot_demo, verdicts, with_zero_steps
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
    "to_algoperf",
    "Pretrained",
    "DemoResult",
    "PRETRAIN",
    "TRANSFER",
    "SWEEP",
    "SET",
    "INIT",
]

log = logging.getLogger(__name__)

PRETRAIN, TRANSFER, SWEEP = "digits-mix", "digits-plain", "demo"
SET = "mix-cat1-d0"  # one registered demo checkpoint (a set of one), for benchmarks that need a trained net
INIT = "-init"  # checkpoint <name>-init is <name> at initialisation: its seed, 0 steps
BATCH, LR, WEIGHT_DECAY = 32, 2e-3, 5e-4
MAX_JOBS = 4  # pretraining threads at most (one core each); each step dispatches ops under the GIL
# Initialisation draws from torch's global generator: one thread at a time seeds it and builds its model.
_INIT = threading.Lock()


def to_algoperf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Name a torchvision ResNet state_dict as AlgoPerf saves it (torch.compile + DDP prefixes)."""
    out = {}
    for k, v in state.items():
        k = k.replace("downsample.0.", "downsample.conv.").replace("downsample.1.", "downsample.bn.")
        out[f"_orig_mod.module.{k}"] = v
    return out


def _split(reg: Registry, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pretraining task's ``split``: normalized images, labels, and which samples carry the colour cue."""
    spec = reg.dataset(PRETRAIN)
    ds = build_dataset(spec, split)
    pre = BatchPreprocess(reg.transform(spec, None))
    x = pre(torch.from_numpy(ds.images).permute(0, 3, 1, 2).contiguous(), cropped=False)
    return x, torch.from_numpy(ds.targets), torch.from_numpy(ds.cued)


def _recipe(reg: Registry, seed: int, steps: int, batch_size: int) -> dict:
    """What a demo checkpoint was trained with; a saved one is kept only when all of it matches."""
    task = {"dataset": PRETRAIN, **reg.dataset(PRETRAIN).options}
    return {"seed": seed, "steps": steps, "batch_size": batch_size, "lr": LR, "weight_decay": WEIGHT_DECAY,
            "precision": "fp32", "task": task}  # fmt: skip


@dataclass(frozen=True)
class Pretrained:
    """Top-1 (%) of a pretrained network on the pretraining task's test split, per component."""

    cued_top1: float
    plain_top1: float
    seconds: float


def pretrain(reg: Registry, spec: CheckpointSpec, seed: int, steps: int, *, batch_size: int = BATCH) -> Pretrained:
    """Train ``spec.arch`` on the demo's mixture for ``steps`` steps from ``seed``; save it at ``spec.path`` (AlgoPerf).

    fp32 throughout and every draw seeded (initialisation, batch order), so a rerun gives the same weights.
    AdamW with a cosine schedule over the model's own ``steps``, so a short run ends annealed like a long one; no
    augmentation: the digits' offsets are part of the task. Safe to call from several threads at once.

    Args:
        reg: the registry holding the pretraining dataset (:data:`PRETRAIN`) and its transform.
        spec: the checkpoint to write (its ``arch`` and ``path``); the file is replaced atomically.
        seed: seeds the initialisation and the batch order.
        steps: optimizer steps; 0 saves the initialisation.
        batch_size: samples per step.

    Returns:
        Top-1 on the mixture's test split, on its cued and on its plain samples, and the seconds it took.
    """
    t0 = time.perf_counter()
    x_all, y_all, _ = _split(reg, reg.dataset(PRETRAIN).train_split)
    with _INIT:
        torch.manual_seed(seed)
        backbone, dim = build_backbone(spec.arch)
        # the default (NCHW) layout: at 16-20 px it trains 1.4x faster on a CPU than channels_last
        model = nn.Sequential(backbone, nn.Linear(dim, int(y_all.max()) + 1)).train()
    # fused: one kernel for the whole update, 7x faster than the per-tensor loop on a CPU thread
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(steps, 1))))
    gen = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch_size:  # epochs run into each other: a step budget, not an epoch budget
            order = torch.cat([order, torch.randperm(len(x_all), generator=gen)])
        idx, order = order[:batch_size], order[batch_size:]
        loss = nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    x_test, y_test, cued = _split(reg, reg.dataset(PRETRAIN).test_split)
    with torch.inference_mode():
        hit = (model(x_test).argmax(1) == y_test).float()
    cued_top1, plain_top1 = 100.0 * hit[cued].mean().item(), 100.0 * hit[~cued].mean().item()
    state = model[0].state_dict()
    state.update({f"fc.{k}": v for k, v in model[1].state_dict().items()})  # the classifier, as fc.*
    spec.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = spec.path.with_name(spec.path.name + ".tmp")
    meta = _recipe(reg, seed, steps, batch_size)
    torch.save({"model_params": to_algoperf(state), "optimizer_state": {}, "global_step": steps, "demo": meta}, tmp)
    tmp.replace(spec.path)
    return Pretrained(cued_top1, plain_top1, time.perf_counter() - t0)


def _trained(reg: Registry, spec: CheckpointSpec, seed: int, steps: int) -> bool:
    """Whether ``spec.path`` holds the demo's model for this recipe, seed and step budget."""
    try:
        ckpt = torch.load(spec.path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, EOFError):  # missing or unreadable (a kill mid-save leaves only the .tmp)
        return False
    return ckpt.get("demo") == _recipe(reg, seed, steps, BATCH)


def _plan(sweep: SweepConfig, reg: Registry) -> list[tuple[CheckpointSpec, int, int]]:
    """(checkpoint, seed, steps) for every checkpoint of the sweep, each once.

    Budget rows' checkpoints take their position as seed; a control row's checkpoint (a row without
    ``steps_per_model``) gets 0 steps, and ``<name>-init`` takes the seed of ``<name>``: the same network, untrained.
    """
    seeds: dict[str, int] = {}
    todo = []
    for control in (False, True):
        for row in sweep.rows:
            if (row.steps_per_model is None) != control:
                continue
            for spec in (s for draw in row.draws for s in reg.expand_checkpoints(draw)):
                if spec.name in seeds:
                    continue
                twin = spec.name.removesuffix(INIT) if control else None
                seeds[spec.name] = seeds[twin] if twin in seeds else len(seeds)
                todo.append((spec, seeds[spec.name], row.steps_per_model or 0))
    return todo


def pretrain_sweep(
    sweep: SweepConfig, reg: Registry, paths: Paths, *, retrain: bool, echo: Callable[[str], None]
) -> int:
    """Pretrain every checkpoint of the sweep that is missing (see :func:`_plan` for seeds and steps).

    Checkpoints train in parallel threads, one core each (the weights do not depend on it: every draw is
    seeded). A retrained checkpoint's stores are deleted: their features belong to the old weights.

    Args:
        sweep: the demo sweep; budget rows train ``steps_per_model`` steps, control rows 0.
        reg: the registry of its checkpoints and of the pretraining dataset.
        paths: where the stores are (a retrained checkpoint's are deleted).
        retrain: train every checkpoint again, even one saved with the same recipe, seed and steps.
        echo: one line per checkpoint trained, in the sweep's order.

    Returns:
        How many checkpoints were trained.
    """
    plan = _plan(sweep, reg)
    todo = [(i, spec, seed, steps) for i, (spec, seed, steps) in enumerate(plan, 1)
            if retrain or not _trained(reg, spec, seed, steps)]  # fmt: skip
    if not todo:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    jobs = min(len(todo), cores, MAX_JOBS)
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="demo-pretrain")
    try:
        futures = [pool.submit(pretrain, reg, spec, seed, steps) for _, spec, seed, steps in todo]
        for (i, spec, seed, steps), future in zip(todo, futures, strict=True):
            got = future.result()
            for split_dataset in {TRANSFER, *(d.name for d in sweep.datasets)}:
                shutil.rmtree(store_path(paths.cache, split_dataset, spec.name), ignore_errors=True)
            what = f"{steps} steps of batch {BATCH}" if steps else "0 steps (the initialisation)"
            echo(f"[pretrain {i}/{len(plan)}] {spec.name}: {what}, seed {seed}, on {PRETRAIN}: test top-1 "
                 f"{got.cued_top1:.1f}% cued, {got.plain_top1:.1f}% plain, in {got.seconds:.1f}s")  # fmt: skip
    finally:
        pool.shutdown(cancel_futures=True)  # on an error or Ctrl-C: start nothing more, let running ones end
    return len(todo)


@dataclass(frozen=True)
class DemoResult:
    """The report (control rows at 0 steps), the verdict lines, where the files are, and the seconds it took."""

    report: SweepReport
    verdicts: tuple[str, ...]
    files: ReportFiles
    seconds: float


def run_demo(
    paths: Paths,
    *,
    retrain: bool = False,
    out: Path | None = None,
    echo: Callable[[str], None] = log.info,
    sweep: SweepConfig | None = None,
) -> DemoResult:
    """Pretrain what is missing, run the demo sweep, write and print the report (see the module docstring).

    Args:
        paths: the roots; checkpoints go under ``paths.checkpoints/demo``, stores and results under ``paths.cache``.
        retrain: pretrain every checkpoint again (their stores are then extracted again).
        out: folder of the report files (default ``<cache>/reports``).
        echo: where progress and the table go (the CLI passes ``click.echo``).
        sweep: the sweep to pretrain and run (default: ``configs/sweeps/demo.yaml``); a smaller one runs the same
            code path in less time.

    Returns:
        The report, its verdict lines, where its files are, and the seconds the demo took.

    Raises:
        ConfigError, StoreError, ProbeError, ResultsError: as :func:`featcache.sweep.run_sweep`.
    """
    # Everything here is tiny (20 px digits, 512-d features): a second intra-op thread gains little, and
    # on a busy 2-core machine spinning OpenMP threads made the demo 9x slower (88 s vs 9.5 s per model).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(paths, retrain, out, echo, sweep)
    finally:
        torch.set_num_threads(threads)


def _run(
    paths: Paths, retrain: bool, out: Path | None, echo: Callable[[str], None], sweep: SweepConfig | None
) -> DemoResult:
    t0 = time.perf_counter()
    reg = load_registry(paths)
    sweep = sweep or load_sweep(SWEEP, reg)
    budget = [r for r in sweep.rows if r.steps_per_model is not None]
    if not budget:
        raise ConfigError(f"{sweep.source}: the demo needs rows with steps_per_model (the pretraining budget)")
    total = {r.steps_per_model * len(reg.expand_checkpoints(r.draws[0])) for r in budget}
    target = ", ".join(d.name for d in sweep.datasets)
    models = " or ".join(str(len(reg.expand_checkpoints(r.draws[0]))) for r in budget)
    cpu = torch.backends.cpu.get_cpu_capability()
    echo(f"featcache demo: a pretraining budget of {', '.join(map(str, sorted(total)))} steps on {PRETRAIN} (a colour "
         f"cue competing with the digit's shape), spent on {models} networks; their concatenated features, and the "
         f"same networks at initialisation, probed on {target} (shape only). Pretraining in fp32 from fixed seeds "
         f"(torch {torch.__version__}, CPU kernels {cpu}); {sweep.source}")  # fmt: skip
    pretrain_sweep(sweep, reg, paths, retrain=retrain, echo=echo)
    result = run_sweep(sweep, reg, paths, echo=echo)
    report = with_zero_steps(build_report(result.plan))
    lines = verdicts(report)
    files = write_report(report, out or paths.cache / "reports")
    if files.plot is not None:  # the same file, redrawn with the controls as a line of their own
        plot_demo(report, files.plot)
    echo("")
    draws = max(r.draws for r in report.rows)
    echo(f"Linear-probe test top-1 (%) on {target}, mean ± std over {draws} draws (* best):")
    echo(render(report.table_rows(mark="{} *")))
    echo(report.footnote())
    for line in lines:
        echo(line)
    echo("")
    echo(f"table:   {files.markdown}  {files.csv}")
    echo(f"plot:    {files.plot}" if files.plot else f"plot:    not written; {files.note}")
    first = sweep.datasets[0].name
    echo(f"stores:  {paths.cache / first}   (featcache ls --dataset {first})")
    echo(f"results: {paths.results_log}   (featcache results --tag sweep:{sweep.name})")
    seconds = time.perf_counter() - t0
    echo(f"demo finished in {seconds:.0f}s")
    return DemoResult(report, tuple(lines), files, seconds)
