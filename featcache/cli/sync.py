"""``featcache sync``: copy complete stores between caches, local or on object storage, through :mod:`featcache.api`."""

from __future__ import annotations

import dataclasses
import json

import click

from ..config import Paths
from ..tables import render
from ._app import command, main
from ._params import format_option


@main.command(short_help="Copy complete stores between caches (local or s3://, gs://...), verified chunk by chunk.")
@click.argument("src")
@click.argument("dst")
@click.option("--dataset", help="Only this dataset's stores.")
@click.option("--stores", "names", help="Only these stores: comma-separated names or patterns (run*).")
@format_option
@command
def sync(paths: Paths, src: str, dst: str, dataset, names, fmt):
    """Copy the complete stores of cache SRC to cache DST (each a directory or an object-store URL such as
    s3://bucket/cache), keeping <dataset>/<store>.zarr.

    \b
    featcache sync s3://lab/cache ./cache --dataset cifar10 --stores 'run*'   # pull a subset to a laptop
    featcache sync ./cache s3://lab/cache                                     # push what was extracted here

    Every chunk is checked against its checksum before it is written and read back after; a store's splits are
    marked complete last, so an interrupted sync is finished by running it again, which copies only what is
    missing. Incomplete stores are skipped.
    """
    from ..api import sync_stores

    patterns = tuple(p.strip() for p in (names or "").split(",") if p.strip())
    results = sync_stores(src, dst, dataset=dataset, stores=patterns)
    if fmt == "json":
        click.echo(json.dumps([dataclasses.asdict(r) for r in results], indent=1))
        return
    rows = [{"dataset": r.dataset, "store": r.store, "status": r.status, "chunks": r.chunks,
             "MB": round(r.bytes / 2**20, 1), "note": r.note} for r in results]  # fmt: skip
    click.echo(render(rows, fmt=fmt))
