"""``featcache extract``: options parsed here, the configuration built by :func:`featcache.extract.config_from`."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from ..choices import BACKENDS, COMPILE, COMPRESSIONS, DTYPES, ON_BAD_IMAGE, POOLS, PRECISIONS
from ..config import ExtractOptions, Paths, load_registry
from ..errors import FeatcacheError
from ..extract_config import ExtractConfig
from ..progress import NullProgress, ProgressBar
from ..tables import render
from ._app import command, main
from ._params import RegistryOption, Shard, field_default, field_range

DEFAULT_DATASET = "digits"  # the bundled dataset: a first extract needs no download


def _defaulted(*decls: str, field: str | None = None, **attrs):
    """An option whose default is ExtractConfig's ``field`` (default: the option's name), itself ExtractOptions'
    when a sweep shares the option."""
    field = field or decls[-1].lstrip("-").replace("-", "_")
    return click.option(*decls, default=field_default(ExtractConfig, field), show_default=True, **attrs)


def _transform_names(reg) -> list[str]:
    names = set()
    for name in reg.dataset_tables.datasets.names():
        try:
            names.update(reg.dataset(name).transforms)
        except FeatcacheError:  # a broken dataset entry is named when it is used, not in --help
            continue
    return sorted(names)


@main.command(short_help="Extract checkpoints' penultimate features into stores.")
@click.option(
    "--ckpt",
    required=True,
    cls=RegistryOption,
    kind="sets",
    names=lambda reg: reg.sets,
    help="Checkpoint registry name (run3), set name ({names}), comma-separated mix, or a file path "
    "(then --arch is required and the store is named after the file stem).",
)
@click.option(
    "--arch",
    help="Architecture of a checkpoint file: any torchvision classifier (resnet50, vit_b_16, convnext_tiny, ...), "
    "resnet10, or timm:<name> (pip install 'featcache[timm]'); `featcache list archs` lists them.",
)
@click.option("--ema", is_flag=True, help="Use the EMA weights (timm's state_dict_ema); an error if a file has none.")
@click.option(
    "--layer",
    "--layers",
    "layers",
    help="Intermediate module(s) to take features from, pooled (comma-separated: one store each, named "
    "<ckpt>@<layer>, from one forward pass). Default: the pre-logits vector.",
)
@click.option(
    "--pool",
    type=click.Choice(POOLS),
    help="Pooling of --layer outputs: avg (conv maps over H,W; token sequences over tokens), avg-nhwc "
    "(channels-last maps), cls (a ViT's class token), mean-patch (mean of a ViT's patch tokens).",
)
@click.option(
    "--ignore-extra-keys",
    is_flag=True,
    help="Load a checkpoint that also holds non-backbone weights (an SSL projector, ...); they are recorded.",
)
@click.option(
    "--dataset",
    default=DEFAULT_DATASET,
    show_default=True,
    cls=RegistryOption,
    kind="datasets",
    names=lambda reg: reg.dataset_names(),
    help="Registered dataset ({names}); imagefolder:<path>: a bare name is a folder under --data-dir, else a path.",
)
@click.option("--split", "splits", help="Comma-separated splits (default: all of the dataset's, e.g. train,test).")
@click.option(
    "--transform",
    cls=RegistryOption,
    kind="transforms",
    names=_transform_names,
    help="Transform preset of the dataset ({names}). Default: the architecture's own evaluation preprocessing "
    "when it defines one (timm, torchvision weights), else the dataset's first preset.",
)
@_defaulted(
    "--views",
    type=click.IntRange(min=0),
    help="Augmented views of each train image to store (the research training transform: RandomResizedCrop "
    "+ flip), next to the evaluation view. Asking for more later adds the missing ones only.",
)
@_defaulted(
    "--views-seed",
    type=field_range(ExtractOptions, "views_seed"),
    help="Seed of the views: view k of an image depends only on (sample id, k, seed). Recorded in the store.",
)
@click.option("--store-name", help="Store name for one checkpoint (default: its name): letters, digits, '.', '_', '-'.")
@_defaulted(
    "--batch-size",
    type=field_range(ExtractOptions, "batch_size"),
    help="Images per forward pass. Batches never span store chunks.",
)
@_defaulted(
    "--dtype",
    type=click.Choice(DTYPES),
    help="Storage dtype. float16 halves disk and memory; float32 for exact comparisons or values > 65504.",
)
@_defaulted(
    "--precision",
    type=click.Choice(("auto", *PRECISIONS)),
    help="Forward-pass precision: auto = bf16 on GPUs that support it, else fp32. Recorded in the store.",
)
@_defaulted("--device", help="auto (CUDA when visible), cpu, cuda or cuda:N.")
@_defaulted(
    "--workers",
    type=field_range(ExtractOptions, "workers"),
    help="pil: DataLoader processes decoding and resizing image files; device: threads reading them (decoding is "
    "on the device). 0: in the main process.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help="Only N samples of each split, test included: a stratified subset (every class in proportion; the same every "
    "time) for quick runs. Not the research protocol: its low-shot subsets are probe --train-fraction.",
)
@click.option("--overwrite", is_flag=True, help="Delete an existing store of the same name and start over.")
@click.option(
    "--repair",
    is_flag=True,
    help="Check every chunk of the stores and re-extract exactly those that fail (deleted, truncated, damaged).",
)
@click.option(
    "--shard",
    type=Shard(),
    help="I/N: write only chunks i with i % N == I, for Slurm job arrays and other launchers with no communication "
    "(task I of N). The last task to finish completes the store; a plain rerun without --shard fills what is "
    "missing. Under torchrun/srun the ranks shard by themselves.",
)
@click.option(
    "--dry-run",
    "--explain",
    "dry_run",
    is_flag=True,
    help="Print each store's resolved preprocessing, layer, precision, device and path; extract nothing.",
)
@click.option(
    "--trust-checkpoint",
    is_flag=True,
    help="Allow checkpoints that need full unpickling. Unpickling runs code from the file: trusted files only.",
)
@_defaulted(
    "--compile",
    "compile",
    type=click.Choice(COMPILE),
    help="torch.compile the backbones. auto: only on CUDA from 600,000 forward passes (images x (1 + views) x "
    "checkpoints), where the ~15 s compile repays itself (measured on an H200).",
)
@_defaulted(
    "--preprocess",
    type=click.Choice(("auto", *BACKENDS)),
    field="backend",
    help="pil: the research pipeline (PIL resize per image in workers; pixel for pixel). device: batched "
    "resize on the device, GPU JPEG decoding. auto: device on GPUs, pil on the CPU.",
)
@_defaulted(
    "--on-bad-image",
    type=click.Choice(ON_BAD_IMAGE),
    help="An undecodable image stops the run (error) or is recorded in the store and left out (skip).",
)
@_defaulted(
    "--compression",
    type=click.Choice(COMPRESSIONS),
    help="zstd saves ~10-20% on pooled features but stores can no longer be memory-mapped.",
)
@click.option(
    "--chunk-rows",
    type=field_range(ExtractOptions, "chunk_rows"),
    help="Rows per store chunk (default: about 16 MiB of features, e.g. 4096 rows of 2048 float16).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--verbose",
    "breakdown",
    is_flag=True,
    help="Also print where the call's time went: start-up and imports, datasets, checkpoints, device, stores, "
    "the first batch and forward pass, the steady batches, completion; and its fixed cost.",
)
@command
def extract(paths: Paths, quiet: bool, dry_run: bool, breakdown: bool, **options):
    """Run checkpoints once over a dataset and write their penultimate features to stores.

    Several checkpoints in one call share each decoded batch. A complete store is left alone; an
    interrupted one is resumed where it stopped; --views K adds augmented views of the train split.
    """
    started = time.perf_counter()
    from ..extract import config_from, plan_extract
    from ..extract import extract as run_extract

    imported = time.perf_counter()

    cfg = config_from(load_registry(paths), paths, **options)
    if dry_run:
        plan = plan_extract(cfg, check_layers=True)
        click.echo(render(plan.describe()))
        if cfg.views:
            click.echo(
                f"views: {cfg.views} of {', '.join(plan.view_splits)} with {plan.augment}, seed {cfg.views_seed}"
            )
        return
    report = run_extract(cfg, NullProgress if quiet else ProgressBar)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 reports
    before = {"python and featcache started": _since_process_start(started), "torch and the extractor imported":
              imported - started, "options read": time.perf_counter() - imported - report.seconds}  # fmt: skip
    report.phases = {**{k: v for k, v in before.items() if v is not None}, **report.phases}
    rows = [
        {
            "store": s["name"],
            "checkpoint": s["checkpoint"],
            "status": s["status"],
            "rows": " ".join(f"{k}:{v}" for k, v in s["rows"].items()),
            "views": s["views"],
            "dim": s["dim"],
            "path": s["path"],
        }
        for s in report.stores
    ]
    click.echo(render(rows))
    click.echo(report.summary())
    if breakdown:
        click.echo("where the time went (wall seconds; CUDA, cuBLAS and cuDNN start while the checkpoints load):")
        click.echo("\n".join(report.breakdown()))


def _since_process_start(now: float) -> float | None:
    """Seconds from this process's start to ``now`` (a perf_counter value): Python, click, the command line. Linux
    only (``/proc``); None elsewhere."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK") - (time.perf_counter() - now))
