"""``featcache sweep`` and ``featcache demo``: a grid of extractions and probes as one idempotent command."""

from __future__ import annotations

import click

from ..config import Paths, load_registry
from ..progress import NullProgress, ProgressBar
from ..tables import render
from ._app import command, main
from ._params import out_option
from .results import echo_report


@main.command(short_help="Run a sweep config: extract what is missing, probe what is not logged, report.")
@click.argument("config")
@click.option("--dry-run", is_flag=True, help="List what would run and what is already done; run nothing.")
@click.option(
    "--dataset",
    "datasets",
    multiple=True,
    help="Only this dataset of the sweep (repeatable), e.g. one per Slurm task; the report covers them all.",
)
@out_option
@click.option("--no-report", is_flag=True, help="Do not write the report at the end.")
@click.option("--quiet", is_flag=True, help="No progress bars (the one-line steps are still printed).")
@click.option(
    "--no-pack",
    is_flag=True,
    help="Probe one by one. By default a dataset's probes train in one pass over the union of their stores, each "
    "getting the result it gets alone.",
)
@command
def sweep(paths: Paths, config, dry_run, datasets, out, no_report, quiet, no_pack):
    """Run the sweep CONFIG (a YAML path, or a name in sweeps/ of the registries: timecat, digits).

    Extracts every missing store once per dataset (all its checkpoints share each decoded batch), then probes
    every (dataset, row, draw) whose result is not in the results log yet, and writes the report. Idempotent:
    rerun after an interruption, it finishes what is missing and never logs a result twice.
    """
    from ..report import build_report, write_report
    from ..sweep import check_plan, load_sweep, plan_sweep, run_sweep

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
    run_sweep(chosen, reg, paths, echo=click.echo, progress=NullProgress if quiet else ProgressBar, pack=not no_pack)
    if not no_report:
        report = build_report(plan_sweep(full, reg, paths))
        echo_report(report, write_report(report, out or paths.local_cache / "reports"))


@main.command(short_help="The Time-Cat claim on scikit-learn's digits: 1x T vs 4x T/4, with controls (CPU, ~2 min).")
@click.option("--retrain", is_flag=True, help="Pretrain again even if the demo checkpoints exist.")
@out_option
@command
def demo(paths: Paths, retrain, out):
    """At one pretraining budget of T steps on a digits mixture where a colour cue competes with the shape: one
    tiny ResNet trained T steps against 4 x T/4 concatenated, and the same networks at initialisation, each drawn
    3 times, probed on the mixture's plain component. CPU, about 2 minutes.

    Pretrains the checkpoints of the `demo` sweep (configs/sweeps/demo.yaml; fp32, seeded; AlgoPerf checkpoint
    format, kept when they exist), runs `featcache sweep demo`, prints the table with a verdict line on pretrained
    vs random features and one on cat-n vs cat1, and writes it with the plot.
    """
    from ..demo import run_demo

    run_demo(paths, retrain=retrain, out=out, echo=click.echo)
