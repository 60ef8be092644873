"""``featcache ls`` and ``featcache verify``: the stores under the cache, through :mod:`featcache.api`."""

from __future__ import annotations

import dataclasses
import json

import click

from ..config import Paths
from ..tables import render
from ._app import command, main
from ._params import format_option


@main.command(name="ls", short_help="List stores: status, rows, dim, dtype, checkpoint, transform.")
@click.option("--dataset", help="Only this dataset's stores.")
@format_option
@command
def ls(paths: Paths, dataset, fmt):
    """List stores with status, rows, feature dim, dtype, checkpoint and transform."""
    from ..api import list_stores

    summaries = list_stores(paths.cache, dataset)
    if not summaries and fmt == "table":
        click.echo(f"no stores under {paths.cache}{'/' + dataset if dataset else ''}")
        return
    if fmt == "json":  # typed fields: numbers, lists and nested split records
        click.echo(json.dumps([dataclasses.asdict(s) for s in summaries], indent=1))
        return
    click.echo(render([s.row() for s in summaries], fmt=fmt))


@main.command(short_help="Check stores chunk by chunk; exit 0 only if all pass.")
@click.argument("stores", nargs=-1, required=True)
@click.option("--dataset", default="digits", show_default=True, help="Dataset of stores given by name.")
@click.option("--quick", is_flag=True, help="Structure only (markers, chunk sizes); skip hashing every chunk.")
@command
def verify(paths: Paths, stores, dataset, quick):
    """Check stores: every chunk present, right size and checksum, no NaN/Inf, ids/labels hashes, completion.

    Exit status 0 only when every store passes.
    """
    from ..api import verify_stores

    verdicts = verify_stores(stores, dataset, paths.cache, deep=not quick)
    for name, problems in verdicts.items():
        click.echo(f"{name}: {'OK' if not problems else 'FAILED'}")
        for p in problems:
            click.echo(f"  - {p}")
    failed = sum(bool(p) for p in verdicts.values())
    if failed:
        raise click.ClickException(f"{failed} store(s) failed verification")
