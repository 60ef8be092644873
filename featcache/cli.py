"""The ``featcache`` command: parses options into config objects and calls the library.

Every :class:`~featcache.errors.FeatcacheError` becomes a one-line ``Error: ...`` and exit status 1.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys

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


def _floats(ctx, param, value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers, e.g. 1e-4,5e-4") from None
    if not out or any(v < 0 for v in out):
        raise click.BadParameter(f"{value!r}: give one or more non-negative numbers, e.g. 1e-4,5e-4")
    return out


def _format_option(fn):
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="table to read, csv or json to load elsewhere.",
    )(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--data-dir",
    envvar="FEATCACHE_DATA",
    default="./data",
    show_default=True,
    help="Dataset root (env FEATCACHE_DATA); registry roots are relative to it.",
)
@click.option(
    "--cache-dir",
    envvar="FEATCACHE_CACHE",
    default="./cache",
    show_default=True,
    help="Store root (env FEATCACHE_CACHE): <cache>/<dataset>/<store>.zarr, and results.jsonl.",
)
@click.option(
    "--checkpoint-dir",
    envvar="FEATCACHE_CHECKPOINTS",
    default="./checkpoints",
    show_default=True,
    help="Checkpoint root (env FEATCACHE_CHECKPOINTS); registry paths are relative to it.",
)
@click.option(
    "--config-dir",
    envvar="FEATCACHE_CONFIG",
    default="./configs",
    show_default=True,
    help="Registries (env FEATCACHE_CONFIG): checkpoints.yaml, datasets.yaml, probes.yaml.",
)
@click.option("-v", "--verbose", count=True, help="More log output; -vv for debug.")
@click.version_option(package_name="featcache")
@click.pass_context
def main(ctx, data_dir, cache_dir, checkpoint_dir, config_dir, verbose):
    """featcache: extract frozen features of pretrained checkpoints once, then probe any ensemble of them.

    \b
    featcache demo                                   # the whole pipeline on scikit-learn's digits
    featcache extract --ckpt full --dataset cifar10  # 5 backbones, each batch decoded once
    featcache probe --stores full --dataset cifar10  # concatenated features, weight-decay grid
    featcache results cifar10 cat5                   # query the results log
    """
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = Paths.from_env(data=data_dir, cache=cache_dir, checkpoints=checkpoint_dir, config=config_dir)


@main.command(short_help="Extract checkpoints' penultimate features into stores.")
@click.option(
    "--ckpt",
    required=True,
    help="Checkpoint registry name (run3), set name (full, step80k), comma-separated mix, or a file path "
    "(then --arch is required and the store is named after the file stem).",
)
@click.option("--arch", help="Architecture of a checkpoint file (resnet18/34/50/101/152, wide_resnet50_2, ...).")
@click.option("--ema", is_flag=True, help="Use the EMA weights (timm's state_dict_ema); an error if a file has none.")
@click.option(
    "--dataset",
    default="digits",
    show_default=True,
    help="Registered dataset (cifar10, cifar100, imagenet1k, inaturalist18, digits) or imagefolder:<path>.",
)
@click.option("--split", help="Comma-separated splits (default: all of the dataset's, e.g. train,test).")
@click.option("--transform", help="Transform preset of the dataset, e.g. 224px or 32px (default: the dataset's first).")
@click.option("--store-name", help="Store name for a single checkpoint (default: the checkpoint's name).")
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
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N samples of each split (quick tries).")
@click.option("--overwrite", is_flag=True, help="Delete an existing store of the same name and start over.")
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
    help="pil: research pipeline (PIL resize per image in workers). device: batched resize on the device, "
    "GPU JPEG decoding. auto: device for in-memory sets and on GPUs, pil for files on CPU.",
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
@click.pass_obj
@_clean_errors
def extract(paths: Paths, ckpt, arch, ema, dataset, split, transform, quiet, **opts):
    """Run checkpoints once over a dataset and write their penultimate features to stores.

    Several checkpoints in one call share each decoded batch. A complete store is left alone; an
    interrupted one is resumed where it stopped.
    """
    from .extract import ExtractConfig
    from .extract import extract as run_extract

    reg = load_registry(paths)
    ds = reg.dataset(dataset)
    cfg = ExtractConfig(
        checkpoints=tuple(dataclasses.replace(c, ema=c.ema or ema) for c in reg.expand_checkpoints(ckpt, arch)),
        dataset=ds,
        transform=reg.transform(ds, transform),
        cache_dir=paths.cache,
        splits=tuple(s for s in (split or "").split(",") if s),
        **opts,  # the remaining options are named like ExtractConfig's fields
    )
    report = run_extract(cfg, NullProgress if quiet else ProgressBar)
    rows = [
        {
            "store": s["name"],
            "checkpoint": s["checkpoint"],
            "status": s["status"],
            "rows": " ".join(f"{k}:{v}" for k, v in s["rows"].items()),
            "dim": s["dim"],
            "path": s["path"],
        }
        for s in report.stores
    ]
    click.echo(render(rows))
    click.echo(report.summary())


@main.command(short_help="Fit linear heads on concatenated stores; select on val, test once.")
@click.option(
    "--stores",
    required=True,
    help="Comma-separated store names (under <cache>/<dataset>/), checkpoint set names (full, step80k), "
    "or store paths. Their features are concatenated in this order.",
)
@click.option("--dataset", default="digits", show_default=True, help="Dataset the stores were extracted on.")
@click.option(
    "--preset",
    default="seed",
    show_default=True,
    help="Probe preset from probes.yaml: seed (research protocol: BN+Linear, SGD Nesterov, 28 epochs, "
    "lr x0.1 at 8/16/24, batch 256) or quick.",
)
@click.option(
    "--wd",
    callback=_floats,
    help="Weight-decay grid, e.g. 1e-4,5e-4 (default: the dataset's grid). "
    "All values train together as parallel heads in one pass.",
)
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs (default: the preset's).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Initial learning rate (default: preset's).")
@click.option("--batch-size", type=click.IntRange(min=2), help="Batch size (default: the preset's).")
@click.option("--head", type=click.Choice(["bn-linear", "linear"]), help="BatchNorm1d + Linear, or Linear only.")
@click.option("--seed", type=int, help="Seeds the val split, head init and shuffling (default: the preset's).")
@click.option("--val-fraction", type=float, help="Share of train held out to select weight decay and epoch (0.1).")
@click.option("--train-split", default="train", show_default=True, help="Split to train on.")
@click.option("--test-split", help="Split to report on (default: test, else val).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when visible), cpu, cuda or cuda:N.")
@click.option(
    "--in-memory",
    type=click.Choice(["auto", "yes", "no"]),
    default="auto",
    show_default=True,
    help="Load the concatenation once (auto: when it takes < half the free memory) or stream it from "
    "memory-mapped stores batch by batch.",
)
@click.option(
    "--allow-transform-mix",
    is_flag=True,
    help="Concatenate stores whose transform, preprocessing backend or precision differ.",
)
@click.option("--tag", default="", help="Free text stored with the result, for `featcache results` queries.")
@_format_option
@click.pass_obj
@_clean_errors
def probe(
    paths: Paths,
    stores,
    dataset,
    preset,
    wd,
    epochs,
    lr,
    batch_size,
    head,
    seed,
    val_fraction,
    train_split,
    test_split,
    device,
    in_memory,
    allow_transform_mix,
    tag,
    fmt,
):
    """Fit linear heads on the concatenated features of stores; select on val, report test once.

    Appends one record to <cache>/results.jsonl (see `featcache results`).
    """
    from .probe import ProbeConfig, heads_from_preset, resolve_stores, run_probe
    from .results import append_record, format_probe

    reg = load_registry(paths)
    heads, vf = heads_from_preset(
        reg.probe_preset(preset),
        wd or reg.wd_grid(dataset),
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        head=head,
        seed=seed,
        val_fraction=val_fraction,
    )
    cfg = ProbeConfig(
        stores=tuple(resolve_stores(stores, dataset, paths.cache, reg.sets)),
        heads=heads,
        val_fraction=vf,
        device=device,
        allow_transform_mix=allow_transform_mix,
        train_split=train_split,
        test_split=test_split,
        in_memory=in_memory,
        preset=preset,
        tag=tag,
        dataset=dataset,
    )
    record = run_probe(cfg)
    path = append_record(paths.cache, record)
    click.echo(format_probe(record, fmt))
    click.echo(f"result {record['id']} appended to {path}", err=fmt != "table")


@main.command(short_help="Query the results log by patterns.")
@click.argument("patterns", nargs=-1)
@click.option("--last", type=click.IntRange(min=1), help="Only the N newest matching records.")
@_format_option
@click.pass_obj
@_clean_errors
def results(paths: Paths, patterns, last, fmt):
    """Query the results log: records where every PATTERN occurs, newest first.

    Example: `featcache results inat 1e-5 cat 80k`.
    """
    from .results import SUMMARY_COLUMNS, filter_records, load_records, results_path, summary_rows

    records = filter_records(load_records(paths.cache), patterns)[:last]
    if fmt == "json":
        click.echo(render(records, columns=sorted({k for r in records for k in r}), fmt="json"))
        return
    if not records:
        click.echo(f"no results{' matching ' + ' '.join(patterns) if patterns else ''} in {results_path(paths.cache)}")
        return
    click.echo(render(summary_rows(records), SUMMARY_COLUMNS, fmt))


@main.command(name="ls", short_help="List stores: status, rows, dim, dtype, checkpoint, transform.")
@click.option("--dataset", help="Only this dataset's stores.")
@_format_option
@click.pass_obj
@_clean_errors
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
@click.pass_obj
@_clean_errors
def verify(paths: Paths, stores, dataset, quick):
    """Check stores: every chunk present, right size and checksum, no NaN/Inf, ids/labels hashes, completion.

    Exit status 0 only when every store passes.
    """
    from .probe import resolve_stores
    from .store import open_store

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


@main.command(short_help="Run the whole pipeline on scikit-learn's digits (CPU, ~1 min).")
@click.option("--epochs", type=click.IntRange(min=1), default=6, show_default=True, help="Pretraining epochs.")
@click.option("--retrain", is_flag=True, help="Pretrain again even if the demo checkpoints exist.")
@click.pass_obj
@_clean_errors
def demo(paths: Paths, epochs, retrain):
    """The whole pipeline on scikit-learn's digits, on the CPU in a few minutes.

    Pretrains the registry's `demo` set of tiny ResNets on digits 0-4 (AlgoPerf checkpoint format),
    extracts their features on digits 5-9, probes every single store and concatenations of 2, 3, ...
    stores, and prints the table.
    """
    from .demo import run_demo

    run_demo(paths, epochs=epochs, retrain=retrain, echo=click.echo)


if __name__ == "__main__":  # `python -m featcache.cli`, used by pipeline/ scripts and subprocess tests
    main()
