"""``featcache probe``: options parsed here, the configuration built by :func:`featcache.probe.config_from`."""

from __future__ import annotations

from pathlib import Path

import click

from ..choices import HEADS, IN_MEMORY, SOLVERS
from ..config import Paths, ProbeOptions, load_registry
from ..errors import ConfigError
from ._app import command, main
from ._params import FloatList, IntList, RegistryOption, Size, ViewCount, field_default, format_option


@main.command(short_help="Fit linear heads on concatenated stores; select on val, test once.")
@click.option(
    "--stores",
    required=True,
    multiple=True,
    cls=RegistryOption,
    kind="sets",
    names=lambda reg: reg.sets,
    help="Comma-separated store names (under <cache>/<dataset>/), checkpoint set names ({names}), "
    "or store paths (which need no --dataset). Their features are concatenated in this order. Repeat it to probe "
    "several feature sets: those that share their batches train in one pass over the union of their stores, each "
    "with the result it gets alone.",
)
@click.option("--dataset", help="Dataset the named stores were extracted on (default: read from store paths).")
@click.option(
    "--preset",
    cls=RegistryOption,
    kind="presets",
    names=lambda reg: reg.probe_presets,
    help="Probe preset from probes.yaml ({names}). Default: the one the dataset names in datasets.yaml.",
)
@click.option(
    "--wd",
    "weight_decays",
    type=FloatList("1e-4,5e-4", zero=True),
    help="Weight-decay grid, e.g. 1e-4,5e-4 (default: the preset's). All values train together as parallel heads.",
)
@click.option(
    "--lr",
    type=FloatList("0.001,0.01,0.1"),
    help="Learning rate, or a grid (0.001,0.01,0.1): the heads are then every lr x weight decay pair, "
    "trained in one pass and selected on val (default: the preset's single lr).",
)
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs (default: the preset's).")
@click.option("--batch-size", type=click.IntRange(min=2), help="Batch size (default: the preset's).")
@click.option("--head", type=click.Choice(HEADS), help="BatchNorm1d + Linear, or Linear only.")
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
    type=ViewCount(),
    help="Augmented views to train on, one per image per epoch (every view before one repeats): auto (the "
    "preset's count, at most what the stores hold), none (centre crops), or a number.",
)
@click.option(
    "--train-fraction",
    metavar="N%[@SEED]",
    help="Train on the research low-shot subset, N% of train, cut from the stored features (test untouched; recorded "
    "in the result). CIFAR: the first N% of the research code's fixed permutation of its 50,000 train images "
    "(cifar10_<N>perc); other datasets: ImageNet's --data_rate N/100, a shuffle seeded by 31 + 12345 (SEED + 12345).",
)
@click.option("--train-split", help="Split to train on (default: train).")
@click.option("--test-split", help="Split to report on (default: test, else val).")
@click.option(
    "--allow-same-split",
    is_flag=True,
    help="Allow --train-split and --test-split to be the same split (the test number is then not a test).",
)
@click.option(
    "--device",
    default=field_default(ProbeOptions, "device"),
    show_default=True,
    help="auto (CUDA when visible), cpu, cuda or cuda:N.",
)
@click.option(
    "--max-memory",
    type=Size(),
    help="RAM the features may take, e.g. 8G (default: half of the available RAM). Within it all views stay "
    "resident; else one view is loaded per epoch; else rows are streamed from the stores in bounded memory: each "
    "epoch reads every row once, in blocks of whole chunks in a shuffled order, and shuffles rows within a buffer "
    "of several blocks (a quarter of this budget, the next one read ahead). Unlike the full permutation of the "
    "in-memory modes, a batch then mixes rows of one buffer only: rows stored grouped by class (ImageFolder order) "
    "give batches of few classes unless the buffer is large (a warning says so).",
)
@click.option(
    "--in-memory",
    type=click.Choice(IN_MEMORY),
    default=field_default(ProbeOptions, "in_memory"),
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
    type=click.Choice(SOLVERS),
    default=SOLVERS[0],
    show_default=True,
    help="sgd: the research protocol's heads (BN + Linear, the preset's grid). lbfgs: L2 logistic regression, a "
    "strength path selected on val (CLIP's protocol), on standardised features (see --standardize). knn: cosine "
    "k-NN with temperature-weighted votes (DINO's). lbfgs and knn use the evaluation view.",
)
@click.option(
    "--lbfgs-strengths",
    type=FloatList("1,1e-2,1e-4"),
    help="L2 strengths (lambda of mean cross-entropy + lambda/2 |W|^2; sklearn C = 1/(lambda n)), fitted strong "
    "to weak, each warm-starting the next (default: 1 down to 1e-6, two per decade).",
)
@click.option(
    "--lbfgs-range",
    type=(float, float, int),
    metavar="MIN MAX N",
    help="L2 strengths as a log range: N values from MAX down to MIN, e.g. 1e-6 1 13 (CLIP swept its C = "
    "1/(lambda n) over 1e-6..1e6 in 96 steps). Instead of --lbfgs-strengths.",
)
@click.option(
    "--standardize",
    type=click.Choice(("on", "off")),
    help="lbfgs: standardise each feature with the fit rows' mean and std (on, the default; it gained 1.3 points "
    "top-1 on digits in a review) or fit the raw features, as CLIP's code does (off).",
)
@click.option("--lbfgs-tol", type=float, help="Stop a strength when max|grad| <= tol x max|lambda W| (1e-2).")
@click.option("--lbfgs-max-iter", type=click.IntRange(min=1), help="L-BFGS iterations per strength (1000).")
@click.option(
    "--knn-k", type=IntList("10,20,100"), help="Neighbour counts to select from, e.g. 10,20,100,200 (the default)."
)
@click.option(
    "--knn-temperature",
    type=FloatList("0.02,0.07,0.1"),
    help="Vote temperatures to select from (default 0.07).",
)
@click.option(
    "--knn-fixed-k",
    type=click.IntRange(min=0),
    help="knn: also report test top-1 at this k and T = 0.07, fixed in advance, as DINO reports its 20-NN (the "
    "record's research number; default 20, 0: none).",
)
@click.option(
    "--save-head",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the selected head (the one test was read with: weights, classes, feature layout, the record's "
    "key) to this safetensors file, for `featcache evaluate` and fc.load_head. Not with --solver knn.",
)
@click.option(
    "--eval",
    "evaluate",
    help="Datasets to score the selected head on after training, e.g. imagenet-r,imagenet-v2 (DATASET@SPLIT for "
    "another split than the dataset's test split), on the stores of the same names extracted there, of the same "
    "checkpoints, layer, pool, transform, dtype and precision (--allow-transform-mix: any preprocessing); one "
    "record each. Checked before training.",
)
@click.option("--tag", default="", help="Free text stored with the result, for `featcache results --tag`.")
@format_option
@command
def probe(paths: Paths, fmt: str, **options):
    """Fit linear heads on the concatenated features of stores; select on val, report test once.

    Prints each result, then appends it to the results log (<cache>/results.jsonl or --results); with --eval,
    each evaluation of the selected head after its probe's.
    """
    from ..packed import plan_packs, run_packed
    from ..probe import config_from
    from ..results import ProbeRecord, append_record, format_record

    reg, sets = load_registry(paths), options.pop("stores")
    configs = [config_from(reg, paths, stores=s, **options) for s in sets]  # every set checked before any runs
    named = {}
    for given, cfg in zip(sets, configs, strict=True):
        if named.setdefault(cfg.stores, given) != given or list(sets).count(given) > 1:
            raise ConfigError(f"--stores {given} names the same stores as --stores {named[cfg.stores]}: "
                              "give each feature set once")  # fmt: skip
    if options.get("save_head") is not None and len(configs) > 1:
        raise ConfigError("--save-head writes one head: give one --stores with it")
    for pack in plan_packs(configs):
        for record in run_packed([configs[i] for i in pack]):
            click.echo(format_record(record, fmt))  # first: a log that cannot be written loses nothing the user saw
            path = append_record(paths.results_log, record)
            click.echo(f"result {record.id} appended to {path}", err=fmt != "table")
            if isinstance(record, ProbeRecord) and options.get("save_head") is not None:
                click.echo(f"head saved to {options['save_head']}", err=fmt != "table")
