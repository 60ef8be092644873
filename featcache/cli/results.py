"""``featcache results`` and ``featcache report``: the results log, queried or written up as a sweep's table."""

from __future__ import annotations

import json

import click

from ..config import Paths, load_registry
from ..tables import render
from ._app import command, main
from ._params import format_option, out_option


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
@click.option(
    "--evaluations",
    is_flag=True,
    help="List the evaluations of saved heads (featcache evaluate, probe --eval) instead of the probes.",
)
@format_option
@command
def results(paths: Paths, patterns, last, fmt, evaluations, **fields):
    """Query the results log: records matching every field exactly and every PATTERN as a whole word, newest
    first. The table shows the columns that tell the rows apart.

    Example: `featcache results --dataset inaturalist18 --features cat5 1e-5`.
    """
    from ..results import SUMMARY_COLUMNS, load_records, select_records, summary_rows, varying_columns

    if evaluations:
        _evaluations(paths, patterns, last, fmt, fields)
        return
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


def _evaluations(paths: Paths, patterns, last, fmt, fields) -> None:
    from ..results import evaluation_rows, load_evaluations, select_records

    for option in ("preset", "views"):
        if fields.pop(option) is not None:
            raise click.ClickException(f"--{option} does not apply to --evaluations (a head's evaluation has none)")
    found = select_records(load_evaluations(paths.results_log), patterns, **fields)[:last]
    if fmt == "json":
        click.echo(json.dumps([r.to_dict() for r in found], indent=1, default=str))
    elif not found:
        click.echo(f"no evaluations in {paths.results_log}")
    else:
        click.echo(render(evaluation_rows(found), fmt=fmt))


def echo_report(report, files) -> None:
    """Print a sweep report's table and where its files went (``sweep`` and ``report`` share it)."""
    click.echo(render(report.table_rows(mark="{} *")))
    click.echo(report.footnote())
    click.echo(f"report: {files.markdown}, {files.csv}" + (f", {files.plot}" if files.plot else ""))
    if files.note:
        click.echo(f"no plot: {files.note}", err=True)


@main.command(short_help="Write a sweep's table (markdown, CSV) and plot (PNG) from the results log.")
@click.argument("config", required=False)
@out_option
@command
def report(paths: Paths, config, out):
    """Write the paper-style table of the sweep CONFIG (rows x datasets, mean ± std over draws, best marked) as
    markdown and CSV, and a plot of accuracy against the number of concatenated models (needs matplotlib:
    pip install 'featcache[plot]'). Without CONFIG: the one sweep the results log holds.
    """
    from ..report import build_report, write_report
    from ..results import load_records
    from ..sweep import load_sweep, plan_sweep

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
    echo_report(rep, write_report(rep, out or paths.local_cache / "reports"))
