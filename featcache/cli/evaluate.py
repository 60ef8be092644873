"""``featcache evaluate``: score a saved head; options parsed here, the configuration built by
:func:`featcache.evaluate_config.config_from`."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import Paths, ProbeOptions, load_registry
from ._app import command, main
from ._params import field_default, format_option


@main.command(short_help="Score a saved head (probe --save-head) on any stores of the same checkpoints and layer.")
@click.option(
    "--head",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A head written by `featcache probe --save-head` (safetensors).",
)
@click.option(
    "--dataset", help="Dataset to score it on (default: the one the --stores hold, else the one it was trained on)."
)
@click.option("--split", help="Split to score (default: the dataset's test split, else the stores' test or val).")
@click.option(
    "--stores",
    help="Stores to score instead of the head's store names under <cache>/<dataset>/: names, set names or paths, "
    "in the head's order.",
)
@click.option(
    "--per-model",
    is_flag=True,
    help="Also score each store's block of the features alone, the other blocks zeroed after the head's "
    "normalisation (the research cat_validate_network).",
)
@click.option(
    "--allow-transform-mix",
    is_flag=True,
    help="Score stores whose transform, dtype or precision differ from the head's (noted in the record).",
)
@click.option(
    "--device",
    default=field_default(ProbeOptions, "device"),
    show_default=True,
    help="auto (CUDA when visible), cpu, cuda or cuda:N. The probe's device gives its test number bit for bit.",
)
@click.option("--tag", default="", help="Free text stored with the result, for `featcache results --tag`.")
@format_option
@command
def evaluate(paths: Paths, fmt: str, **options):
    """Score a saved head on a split of stores with its feature layout (the same checkpoints, layer and pooling,
    in order; refused otherwise, naming the store and the field), its classes mapped by name or by the dataset's
    class_subset. On the probe's own stores and test split it gives the probe's test number exactly.

    Prints the result, then appends it to the results log (<cache>/results.jsonl or --results).
    """
    from ..evaluate import config_from, run_evaluate
    from ..results import append_record, format_evaluation

    record = run_evaluate(config_from(load_registry(paths), paths, **options))
    click.echo(format_evaluation(record, fmt))  # first: a log that cannot be written loses nothing the user saw
    path = append_record(paths.results_log, record)
    click.echo(f"result {record.id} appended to {path}", err=fmt != "table")
