"""``featcache doctor`` and ``featcache list``: what this machine offers and what the registries hold."""

from __future__ import annotations

import click

from ..config import Paths, load_registry
from ..config.listing import KINDS, registry_rows
from ..tables import render
from ._app import command, main
from ._params import format_option


@main.command(short_help="Show versions, CUDA, bf16, GPU JPEG decoding, Pillow-SIMD, CPUs.")
def doctor():
    """Print what this machine offers: versions, CUDA device, bf16, GPU JPEG decoding, Pillow(-SIMD), CPUs."""
    from ..doctor import machine_report

    click.echo(render(machine_report()))


@main.command(name="list", short_help="List what the registries hold: archs, checkpoints, sets, datasets, ...")
@click.argument("kind", metavar="KIND", type=click.Choice(("archs", *KINDS)))
@format_option
@command
def list_(paths: Paths, kind: str, fmt: str):
    """List the entries of one registry, KIND: archs (architectures --arch accepts, besides timm:<name>),
    checkpoints and sets (--ckpt, --stores), datasets, transforms (--transform) or presets (probe --preset).

    Every registry layer is read (the packaged one, ./configs, --config-dir); an entry that does not build is
    listed with its problem.
    """
    if kind == "archs":
        from ..models import list_backbones

        rows = [{"name": name} for name in list_backbones()]
    else:
        rows = registry_rows(load_registry(paths), kind)
    if not rows and fmt == "table":
        click.echo(f"no {kind} registered")
        return
    click.echo(render(rows, list(dict.fromkeys(k for r in rows for k in r)), fmt))
