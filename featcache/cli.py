"""The ``featcache`` command: parses options into config objects and calls the library.

Every :class:`~featcache.errors.FeatcacheError` becomes a one-line ``Error: ...`` and exit status 1.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import sys
from pathlib import Path

import click

from .config import Paths, load_registry
from .errors import FeatcacheError
from .progress import NullProgress, ProgressBar
from .tables import FORMATS, render

CPUS = os.cpu_count() or 1


def _clean_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FeatcacheError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("\ninterrupted; rerun the same command to resume", err=True)
            sys.exit(130)

    return wrapper


class _Group(click.Group):
    """A command group whose usage errors are one line too: ``Error: <what>; see '<command> --help'``."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "featcache"
            message = " ".join(e.format_message().split()).rstrip(".")
            click.echo(f"Error: {message}; see '{where} --help'", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _floats(example: str, *, zero: bool = False):
    """The callback of a comma-separated grid option: distinct finite numbers, > 0 (>= 0 with ``zero``).

    Each option's errors show its own ``example``; a repeated value is refused, since it would train or score the
    same grid point twice.
    """

    def parse(ctx, param, value: str | None) -> tuple[float, ...] | None:
        if value is None:
            return None
        try:
            out = tuple(float(v) for v in value.split(",") if v.strip())
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers, e.g. {example}") from None
        if not out or not all(math.isfinite(v) and (v >= 0 if zero else v > 0) for v in out):
            kind = "non-negative" if zero else "positive"
            raise click.BadParameter(f"{value!r}: give one or more {kind} numbers, e.g. {example}")
        repeated = sorted({v for v in out if out.count(v) > 1})
        if repeated:
            shown = ", ".join(f"{v:g}" for v in repeated)
            raise click.BadParameter(f"{value!r} repeats {shown}: give each value once, e.g. {example}")
        return out

    return parse


def _format_option(fn):
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="table to read, markdown to paste, csv or json to load elsewhere.",
    )(fn)


# Roots: given before the command (with environment variables and defaults) or after it (overriding those).
ROOTS = (
    ("--data-dir", "data", "FEATCACHE_DATA", "./data",
     "Dataset root (env FEATCACHE_DATA); registry roots are relative to it."),
    ("--cache-dir", "cache", "FEATCACHE_CACHE", "./cache",
     "Store root (env FEATCACHE_CACHE): <cache>/<dataset>/<store>.zarr."),
    ("--checkpoint-dir", "checkpoints", "FEATCACHE_CHECKPOINTS", "./checkpoints",
     "Checkpoint root (env FEATCACHE_CHECKPOINTS); registry paths are relative to it."),
    ("--config-dir", "config", "FEATCACHE_CONFIG", None,
     "Extra registries (env FEATCACHE_CONFIG) read after the packaged ones and ./configs; same names override."),
    ("--results", "results", "FEATCACHE_RESULTS", None,
     "Results log (env FEATCACHE_RESULTS; default <cache>/results.jsonl), e.g. to probe a read-only cache."),
)  # fmt: skip


def _root_options(fn, *, group: bool = False):
    for flag, key, env, default, help_ in reversed(ROOTS):
        fn = click.option(
            flag,
            f"root_{key}",
            envvar=env if group else None,
            default=default if group else None,
            show_default=group and default is not None,
            help=help_ if group else f"{help_.split(';')[0].split(' (env')[0]}; as before the command.",
        )(fn)
    return fn


def _command(fn):
    """A subcommand: the root options after it too, the roots as its first argument, one-line errors."""

    @functools.wraps(fn)
    @click.pass_context
    def wrapper(ctx, *args, **kwargs):
        given = {key: kwargs.pop(f"root_{key}") for _, key, *_ in ROOTS}
        paths = dataclasses.replace(ctx.obj, **{k: Path(v) for k, v in given.items() if v is not None})
        return _clean_errors(fn)(paths, *args, **kwargs)

    return _root_options(wrapper)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@functools.partial(_root_options, group=True)
@click.option("-v", "--verbose", count=True, help="More log output; -vv for debug.")
@click.version_option(package_name="featcache", message="%(prog)s %(version)s")
@click.pass_context
def main(ctx, verbose, **roots):
    """featcache: extract frozen features of pretrained checkpoints once, then probe any ensemble of them.

    \b
    featcache demo                                   # the Time-Cat claim on scikit-learn's digits
    featcache extract --ckpt full --dataset cifar10  # 5 backbones, each batch decoded once
    featcache probe --stores full --dataset cifar10  # concatenated features, the research protocol
    featcache results --dataset cifar10              # query the results log
    featcache sweep timecat                          # the whole research grid, idempotent; then the report
    """
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = Paths.from_env(**{k.removeprefix("root_"): v for k, v in roots.items()})


@main.command(short_help="Extract checkpoints' penultimate features into stores.")
@click.option(
    "--ckpt",
    required=True,
    help="Checkpoint registry name (run3), set name (full, step80k), comma-separated mix, or a file path "
    "(then --arch is required and the store is named after the file stem).",
)
@click.option(
    "--arch",
    help="Architecture of a checkpoint file: any torchvision classifier (resnet50, vit_b_16, convnext_tiny, ...), "
    "resnet10, or timm:<name> (pip install 'featcache[timm]').",
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
    type=click.Choice(["avg", "avg-nhwc", "cls", "mean-patch"]),
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
    default="digits",
    show_default=True,
    help="Registered dataset (cifar10, cifar100, imagenet1k, inaturalist18, digits) or imagefolder:<path> (a bare "
    "name: a folder under --data-dir; else a path).",
)
@click.option("--split", help="Comma-separated splits (default: all of the dataset's, e.g. train,test).")
@click.option(
    "--transform",
    help="Transform preset of the dataset, e.g. 224px or 32px. Default: the architecture's own evaluation "
    "preprocessing when it defines one (timm, torchvision weights), else the dataset's first preset.",
)
@click.option(
    "--views",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Augmented views of each train image to store (the research training transform: RandomResizedCrop "
    "+ flip), next to the evaluation view. Asking for more later adds the missing ones only.",
)
@click.option(
    "--views-seed",
    type=click.IntRange(min=0, max=2**63 - 1),
    default=0,
    show_default=True,
    help="Seed of the views: view k of an image depends only on (sample id, k, seed). Recorded in the store.",
)
@click.option(
    "--store-name",
    help="Store name for a single checkpoint (default: the checkpoint's name): letters, digits, '.', '_' and '-'.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Images per forward pass. Batches never span store chunks.",
)
@click.option(
    "--dtype",
    type=click.Choice(["float16", "float32"]),
    default="float16",
    show_default=True,
    help="Storage dtype. float16 halves disk and memory; float32 for exact comparisons or values > 65504.",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default="auto",
    show_default=True,
    help="Forward-pass precision: auto = bf16 on GPUs that support it, else fp32. Recorded in the store.",
)
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when visible), cpu, cuda or cuda:N.")
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=min(8, CPUS),
    show_default=True,
    help="DataLoader processes decoding image files (0: decode in the main process).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help="Only N samples of each split, a stratified subset (every class in proportion; the same every time).",
)
@click.option("--overwrite", is_flag=True, help="Delete an existing store of the same name and start over.")
@click.option(
    "--repair",
    is_flag=True,
    help="Check every chunk of the stores and re-extract exactly those that fail (deleted, truncated, damaged).",
)
@click.option(
    "--shard",
    callback=lambda ctx, param, v: _shard(v),
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
@click.option(
    "--compile",
    "compile",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="torch.compile the backbones. auto: only on CUDA with >= 500k images, where the ~15 s compile "
    "repays itself (ImageNet/iNat train yes, CIFAR no).",
)
@click.option(
    "--preprocess",
    "backend",
    type=click.Choice(["auto", "pil", "device"]),
    default="auto",
    show_default=True,
    help="pil: the research pipeline (PIL resize per image in workers; pixel for pixel). device: batched "
    "resize on the device, GPU JPEG decoding. auto: device on GPUs, pil on the CPU.",
)
@click.option(
    "--on-bad-image",
    type=click.Choice(["error", "skip"]),
    default="error",
    show_default=True,
    help="An undecodable image stops the run (error) or is recorded in the store and left out (skip).",
)
@click.option(
    "--compression",
    type=click.Choice(["none", "zstd"]),
    default="none",
    show_default=True,
    help="zstd saves ~10-20% on pooled features but stores can no longer be memory-mapped.",
)
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=1),
    help="Rows per store chunk (default: about 16 MiB of features, e.g. 4096 rows of 2048 float16).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_command
def extract(paths: Paths, ckpt, arch, ema, dataset, split, transform, layers, quiet, dry_run, **opts):
    """Run checkpoints once over a dataset and write their penultimate features to stores.

    Several checkpoints in one call share each decoded batch. A complete store is left alone; an
    interrupted one is resumed where it stopped; --views K adds augmented views of the train split.
    """
    from .extract import ExtractConfig, plan_extract
    from .extract import extract as run_extract

    reg = load_registry(paths)
    ds = reg.dataset(dataset)
    specs = reg.expand_checkpoints(ckpt, arch)
    if ema:
        specs = [dataclasses.replace(c, ema=True, ema_source=c.ema_source or "option") for c in specs]
    cfg = ExtractConfig(
        checkpoints=tuple(specs),
        dataset=ds,
        transform=reg.transform(ds, transform),
        model_preprocessing=transform is None,
        cache_dir=paths.cache,
        splits=tuple(s for s in (split or "").split(",") if s),
        layers=tuple(x.strip() for x in (layers or "").split(",") if x.strip()),
        **opts,  # the remaining options are named like ExtractConfig's fields
    )
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


def _shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give I/N, e.g. 0/4 for the first of 4 tasks") from None
    if not 0 <= i < n:
        raise click.BadParameter(f"{value!r}: I must be in 0..N-1")
    return i, n


def _size(ctx, param, value: str | None) -> int | None:
    if value is None:
        return None
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    text = value.strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1] if text and text[-1] in units else ""
    try:
        n = float(text[: len(text) - len(unit)] if unit else text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size; use e.g. 8G, 512M or a number of bytes") from None
    if not n > 0:
        raise click.BadParameter(f"{value!r}: give a positive size, e.g. 8G")
    return int(n * units[unit])


def _views(ctx, param, value: str | None) -> int | None:
    if value in (None, "auto"):
        return None
    if value == "none":
        return 0
    try:
        n = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: use auto, none or a number of views, e.g. 8") from None
    if n < 0:
        raise click.BadParameter(f"{value!r}: a number of views must be >= 0")
    return n


@main.command(short_help="Fit linear heads on concatenated stores; select on val, test once.")
@click.option(
    "--stores",
    required=True,
    help="Comma-separated store names (under <cache>/<dataset>/), checkpoint set names (full, step80k), "
    "or store paths (which need no --dataset). Their features are concatenated in this order.",
)
@click.option("--dataset", help="Dataset the named stores were extracted on (default: read from store paths).")
@click.option(
    "--preset",
    help="Probe preset from probes.yaml (default: the dataset's: cifar = the research protocol with batch 256, "
    "imagenet and inat = batch 32, digits; or quick).",
)
@click.option(
    "--wd",
    callback=_floats("1e-4,5e-4", zero=True),
    help="Weight-decay grid, e.g. 1e-4,5e-4 (default: the preset's). All values train together as parallel heads.",
)
@click.option(
    "--lr",
    callback=_floats("0.001,0.01,0.1"),
    help="Learning rate, or a grid (0.001,0.01,0.1): the heads are then every lr x weight decay pair, "
    "trained in one pass and selected on val (default: the preset's single lr).",
)
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs (default: the preset's).")
@click.option("--batch-size", type=click.IntRange(min=2), help="Batch size (default: the preset's).")
@click.option("--head", type=click.Choice(["bn-linear", "linear"]), help="BatchNorm1d + Linear, or Linear only.")
@click.option(
    "--seed",
    type=click.IntRange(min=0, max=2**63 - 1),
    help="Seeds the val split, head init, shuffling and view order (default: the preset's).",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
    help="Share of train held out to select the grid point and epoch (default: the preset's, 0.1).",
)
@click.option(
    "--views",
    "views",
    callback=_views,
    help="Augmented views to train on, one per image per epoch (every view before one repeats): auto (the "
    "preset's count, at most what the stores hold), none (centre crops), or a number.",
)
@click.option("--train-split", help="Split to train on (default: train).")
@click.option("--test-split", help="Split to report on (default: test, else val).")
@click.option(
    "--allow-same-split",
    is_flag=True,
    help="Allow --train-split and --test-split to be the same split (the test number is then not a test).",
)
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when visible), cpu, cuda or cuda:N.")
@click.option(
    "--max-memory",
    callback=_size,
    help="RAM the features may take, e.g. 8G (default: half of the available RAM). Within it all views stay "
    "resident; else one view is loaded per epoch; else rows are streamed from the stores in bounded memory: each "
    "epoch reads every row once, in blocks of whole chunks in a shuffled order, and shuffles rows within a buffer "
    "of several blocks (a quarter of this budget, the next one read ahead). Unlike the full permutation of the "
    "in-memory modes, a batch then mixes rows of one buffer only: rows stored grouped by class (ImageFolder order) "
    "give batches of few classes unless the buffer is large (a warning says so).",
)
@click.option(
    "--in-memory",
    type=click.Choice(["auto", "yes", "no"]),
    default="auto",
    show_default=True,
    help="auto: plan by --max-memory; yes: hold everything resident; no: stream from the stores (a block "
    "shuffle, not a full permutation: see --max-memory).",
)
@click.option(
    "--allow-transform-mix",
    is_flag=True,
    help="Concatenate stores whose transform, preprocessing backend or precision differ.",
)
@click.option(
    "--solver",
    type=click.Choice(["sgd", "lbfgs", "knn"]),
    default="sgd",
    show_default=True,
    help="sgd: the research protocol's heads (BN + Linear, the preset's grid). lbfgs: L2 logistic regression on "
    "standardised features, a strength path selected on val (CLIP's protocol). knn: cosine k-NN with "
    "temperature-weighted votes (DINO's). lbfgs and knn use the evaluation view.",
)
@click.option(
    "--lbfgs-strengths",
    callback=_floats("1,1e-2,1e-4"),
    help="L2 strengths (lambda of mean cross-entropy + lambda/2 |W|^2; sklearn C = 1/(lambda n)), fitted strong "
    "to weak, each warm-starting the next (default: 1 down to 1e-6, two per decade).",
)
@click.option("--lbfgs-tol", type=float, help="Stop a strength when max|grad| <= tol x max|lambda W| (1e-2).")
@click.option("--lbfgs-max-iter", type=click.IntRange(min=1), help="L-BFGS iterations per strength (1000).")
@click.option("--knn-k", help="Neighbour counts to select from, e.g. 10,20,100,200 (the default).")
@click.option(
    "--knn-temperature", callback=_floats("0.02,0.07,0.1"), help="Vote temperatures to select from (default 0.07)."
)
@click.option("--tag", default="", help="Free text stored with the result, for `featcache results --tag`.")
@_format_option
@_command
def probe(paths: Paths, stores, dataset, preset, wd, lr, epochs, views, tag, fmt, solver, **opts):
    """Fit linear heads on the concatenated features of stores; select on val, report test once.

    Prints the result, then appends it to the results log (<cache>/results.jsonl or --results).
    """
    from .checkpoints import check_store_checkpoint
    from .probe import ProbeConfig, heads_from_preset, run_probe
    from .results import append_record, format_probe
    from .store import open_store, resolve_stores

    reg = load_registry(paths)
    store_paths = tuple(resolve_stores(stores, dataset, paths.cache, reg.sets))
    for p in store_paths:  # features of the checkpoint file as it is now, or a refusal
        check_store_checkpoint(p, open_store(p).provenance.checkpoint)
    held = open_store(store_paths[0]).provenance.dataset.name
    preset = preset or reg.preset_for(dataset or held)
    chosen = reg.probe_preset(preset)
    lrs = lr if lr and len(lr) > 1 else None
    heads, vf = heads_from_preset(
        chosen,
        wd,
        epochs=epochs,
        lr=lr[0] if lr and len(lr) == 1 else None,
        lrs=lrs,
        batch_size=opts.pop("batch_size"),
        head=opts.pop("head"),
        seed=opts.pop("seed"),
        val_fraction=opts.pop("val_fraction"),
    )
    solver_cfg = _solver_config(solver, opts)
    if solver_cfg is not None:
        views = 0  # lbfgs and knn fit the evaluation view
    elif views is None:  # auto: the preset's count, capped by what every store holds
        views = min(int(chosen.get("views", 0)), _shared_views(store_paths, opts.get("train_split")))
    cfg = ProbeConfig(stores=store_paths, heads=heads, val_fraction=vf, views=views, preset=preset, tag=tag,
                      dataset=dataset, solver=solver_cfg, **opts)  # fmt: skip
    record = run_probe(cfg)
    click.echo(format_probe(record, fmt))  # first: a log that cannot be written loses nothing the user saw
    path = append_record(paths.results_log, record)
    click.echo(f"result {record.id} appended to {path}", err=fmt != "table")


def _solver_config(solver: str, opts: dict):
    """The L-BFGS or k-NN configuration from its options (popped from ``opts``); None for sgd."""
    from .knn import KNNConfig
    from .logreg import LogRegConfig

    lb = {k: opts.pop(f"lbfgs_{k}") for k in ("strengths", "tol", "max_iter")}
    ks, temps = opts.pop("knn_k"), opts.pop("knn_temperature")
    if solver == "lbfgs":
        return LogRegConfig(**{k: v for k, v in lb.items() if v is not None})
    if solver == "knn":
        try:
            k_grid = tuple(int(k) for k in ks.split(",") if k.strip()) if ks else None
        except ValueError:
            hint = "give comma-separated integers, e.g. 10,20,100"
            raise click.BadParameter(f"{ks!r}: {hint}", param_hint="--knn-k") from None
        given = {"ks": k_grid, "temperatures": temps}
        return KNNConfig(**{k: v for k, v in given.items() if v is not None})
    return None


def _shared_views(store_paths, split: str | None) -> int:
    from .store import open_store

    counts = []
    for p in store_paths:
        s = open_store(p)
        name = split or ("train" if "train" in s.splits else s.splits[0])
        counts.append(s.split_meta(name).n_views if name in s.splits else 0)
    return min(counts)


@main.command(short_help="Query the results log by fields and patterns.")
@click.argument("patterns", nargs=-1)
@click.option("--dataset", help="Only this dataset (exactly: cifar10 never matches cifar100).")
@click.option("--features", help="Only this concatenation size, e.g. cat5.")
@click.option("--tag", help="Only records whose tag has this word.")
@click.option("--preset", help="Only this probe preset.")
@click.option("--solver", help="Only this solver (sgd, lbfgs, knn).")
@click.option("--views", help="Only records trained on this many views (0: centre crops).")
@click.option("--store", help="Only records that used this store.")
@click.option("--last", type=click.IntRange(min=1), help="Only the N newest matching records.")
@_format_option
@_command
def results(paths: Paths, patterns, last, fmt, **fields):
    """Query the results log: records matching every field exactly and every PATTERN as a whole word, newest
    first. The table shows the columns that tell the rows apart.

    Example: `featcache results --dataset inaturalist18 --features cat5 1e-5`.
    """
    from .results import SUMMARY_COLUMNS, load_records, select_records, summary_rows, varying_columns

    found = select_records(load_records(paths.results_log), patterns, **fields)[:last]
    if fmt == "json":
        click.echo(json.dumps([r.to_dict() for r in found], indent=1, default=str))
        return
    if not found:
        what = " ".join([*patterns, *(f"{k}={v}" for k, v in fields.items() if v is not None)])
        click.echo(f"no results{' matching ' + what if what else ''} in {paths.results_log}")
        return
    rows = summary_rows(found)
    always = ("time", "dataset", "features", "stores", "params", "epoch", "val_top1", "test_top1", "id")
    cols = SUMMARY_COLUMNS if fmt == "csv" else varying_columns(rows, always, SUMMARY_COLUMNS)
    click.echo(render(rows, cols, fmt))


@main.command(name="ls", short_help="List stores: status, rows, dim, dtype, checkpoint, transform.")
@click.option("--dataset", help="Only this dataset's stores.")
@_format_option
@_command
def ls(paths: Paths, dataset, fmt):
    """List stores with status, rows, feature dim, dtype, checkpoint and transform."""
    from .store import list_stores

    summaries = list_stores(paths.cache, dataset)
    if not summaries and fmt == "table":
        click.echo(f"no stores under {paths.cache}{'/' + dataset if dataset else ''}")
        return
    if fmt == "json":  # typed fields: numbers, lists and nested split records
        click.echo(json.dumps([dataclasses.asdict(s) for s in summaries], indent=1))
        return
    rows = [
        {
            "dataset": s.dataset,
            "store": s.store,
            "status": s.status,
            "rows": " ".join(f"{k}:{v['rows']}" for k, v in s.splits.items()),
            "views": max((v["views"] for v in s.splits.values()), default=0),
            "dim": s.dim,
            "dtype": s.dtype,
            "precision": s.precision,
            "checkpoint": s.checkpoint,
            "arch": s.arch,
            "transform": s.transform,
            "note": s.lock
            or s.problem
            or ", ".join(f"{k}: {v['written']}/{v['chunks']} chunks" for k, v in s.splits.items() if not v["complete"]),
        }
        for s in summaries
    ]
    click.echo(render(rows, fmt=fmt))


@main.command(short_help="Check stores chunk by chunk; exit 0 only if all pass.")
@click.argument("stores", nargs=-1, required=True)
@click.option("--dataset", default="digits", show_default=True, help="Dataset of stores given by name.")
@click.option("--quick", is_flag=True, help="Structure only (markers, chunk sizes); skip hashing every chunk.")
@_command
def verify(paths: Paths, stores, dataset, quick):
    """Check stores: every chunk present, right size and checksum, no NaN/Inf, ids/labels hashes, completion.

    Exit status 0 only when every store passes.
    """
    from .store import open_store, resolve_stores

    def problems_of(token: str) -> dict[str, list[str]]:
        # one unreadable or missing store must not hide the verdict on the others
        try:
            found = resolve_stores(token, dataset, paths.cache)
        except FeatcacheError as e:
            return {token: [str(e)]}
        out = {}
        for path in found:
            try:
                out[str(path)] = open_store(path).verify(deep=not quick)
            except FeatcacheError as e:
                out[str(path)] = [str(e)]
        return out

    failed = 0
    for token in stores:
        for name, problems in problems_of(token).items():
            click.echo(f"{name}: {'OK' if not problems else 'FAILED'}")
            for p in problems:
                click.echo(f"  - {p}")
            failed += bool(problems)
    if failed:
        raise click.ClickException(f"{failed} store(s) failed verification")


@main.command(short_help="Show versions, CUDA, bf16, GPU JPEG decoding, Pillow-SIMD, CPUs.")
def doctor():
    """Print what this machine offers: versions, CUDA device, bf16, GPU JPEG decoding, Pillow(-SIMD), CPUs."""
    from .doctor import machine_report

    click.echo(render(machine_report()))


def _out_option(fn):
    return click.option(
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        help="Folder of the report files <sweep>.md, .csv, .png (default: <cache>/reports).",
    )(fn)


def _echo_report(report, files) -> None:
    click.echo(render(report.table_rows(mark="{} *")))
    click.echo(report.footnote())
    click.echo(f"report: {files.markdown}, {files.csv}" + (f", {files.plot}" if files.plot else ""))
    if files.note:
        click.echo(f"no plot: {files.note}", err=True)


@main.command(short_help="Run a sweep config: extract what is missing, probe what is not logged, report.")
@click.argument("config")
@click.option("--dry-run", is_flag=True, help="List what would run and what is already done; run nothing.")
@click.option(
    "--dataset",
    "datasets",
    multiple=True,
    help="Only this dataset of the sweep (repeatable), e.g. one per Slurm task; the report covers them all.",
)
@_out_option
@click.option("--no-report", is_flag=True, help="Do not write the report at the end.")
@click.option("--quiet", is_flag=True, help="No progress bars (the one-line steps are still printed).")
@_command
def sweep(paths: Paths, config, dry_run, datasets, out, no_report, quiet):
    """Run the sweep CONFIG (a YAML path, or a name in sweeps/ of the registries: timecat, digits).

    Extracts every missing store once per dataset (all its checkpoints share each decoded batch), then probes
    every (dataset, row, draw) whose result is not in the results log yet, and writes the report. Idempotent:
    rerun after an interruption, it finishes what is missing and never logs a result twice.
    """
    from .report import build_report, write_report
    from .sweep import check_plan, load_sweep, plan_sweep, run_sweep

    reg = load_registry(paths)
    full = load_sweep(config, reg)
    chosen = full.with_overrides(datasets=datasets) if datasets else full
    if dry_run:
        plan = plan_sweep(chosen, reg, paths)
        check_plan(plan)  # what the run would fail on, it fails on now
        click.echo(render(plan.describe()))
        found = len(plan.probes) - len(plan.pending())
        click.echo(f"dry run: {len(plan.extracts)} extraction(s) and {len(plan.pending())} probe(s) would run; "
                   f"{found} of {len(plan.probes)} probe(s) already done")  # fmt: skip
        return
    run_sweep(chosen, reg, paths, echo=click.echo, progress=NullProgress if quiet else ProgressBar)
    if not no_report:
        report = build_report(plan_sweep(full, reg, paths))
        _echo_report(report, write_report(report, out or paths.cache / "reports"))


@main.command(short_help="Write a sweep's table (markdown, CSV) and plot (PNG) from the results log.")
@click.argument("config", required=False)
@_out_option
@_command
def report(paths: Paths, config, out):
    """Write the paper-style table of the sweep CONFIG (rows x datasets, mean ± std over draws, best marked) as
    markdown and CSV, and a plot of accuracy against the number of concatenated models (needs matplotlib:
    pip install 'featcache[plot]'). Without CONFIG: the one sweep the results log holds.
    """
    from .report import build_report, write_report
    from .results import load_records
    from .sweep import load_sweep, plan_sweep

    if config is None:
        names = sorted({w.removeprefix("sweep:") for r in load_records(paths.results_log) for w in r.tag.split()
                        if w.startswith("sweep:")})  # fmt: skip
        if len(names) != 1:
            found = f"it holds {', '.join(names)}" if names else "it holds none"
            raise click.ClickException(f"which sweep? name one (featcache report NAME); {found} "
                                       f"({paths.results_log})")  # fmt: skip
        config = names[0]
    reg = load_registry(paths)
    rep = build_report(plan_sweep(load_sweep(config, reg), reg, paths))
    _echo_report(rep, write_report(rep, out or paths.cache / "reports"))


@main.command(short_help="The Time-Cat claim on scikit-learn's digits: 1x T vs 4x T/4, with controls (CPU, ~2 min).")
@click.option("--retrain", is_flag=True, help="Pretrain again even if the demo checkpoints exist.")
@_out_option
@_command
def demo(paths: Paths, retrain, out):
    """At one pretraining budget of T steps on a digits mixture where a colour cue competes with the shape: one
    tiny ResNet trained T steps against 4 x T/4 concatenated, and the same networks at initialisation, each drawn
    3 times, probed on the mixture's plain component. CPU, about 2 minutes.

    Pretrains the checkpoints of the `demo` sweep (configs/sweeps/demo.yaml; fp32, seeded; AlgoPerf checkpoint
    format, kept when they exist), runs `featcache sweep demo`, prints the table with a verdict line on pretrained
    vs random features and one on cat-n vs cat1, and writes it with the plot.
    """
    from .demo import run_demo

    run_demo(paths, retrain=retrain, out=out, echo=click.echo)


if __name__ == "__main__":  # `python -m featcache.cli`, used by pipeline/ scripts and subprocess tests
    main()
