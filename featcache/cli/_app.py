"""The ``featcache`` group: root options, logging, and one-line errors.

Every :class:`~featcache.errors.FeatcacheError` becomes a one-line ``Error: ...`` and exit status 1; a usage error
is one line too, pointing to ``--help``, with exit status 2.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys

import click

from ..config import ROOTS, Paths, parse_root
from ..errors import FeatcacheError

__all__ = ["main", "command"]


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


def _root_options(fn, *, group: bool = False):
    """The root options (:data:`featcache.config.ROOTS`): before the command with their environment variables and
    defaults, or after it, overriding those."""
    for r in reversed(ROOTS):
        fn = click.option(
            r.option,
            f"root_{r.key}",
            envvar=r.env if group else None,
            default=r.default if group else None,
            show_default=group and r.default is not None,
            help=r.help if group else f"{r.help.split(';')[0].split(' (env')[0]}; as before the command.",
        )(fn)
    return fn


def command(fn):
    """A subcommand: the root options after it too, the roots as its first argument, one-line errors."""

    @functools.wraps(fn)
    @click.pass_context
    def wrapper(ctx, *args, **kwargs):
        given = {r.key: kwargs.pop(f"root_{r.key}") for r in ROOTS}
        paths = dataclasses.replace(ctx.obj, **{k: parse_root(k, v) for k, v in given.items() if v is not None})
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
    featcache list datasets                          # what the registries hold (archs, checkpoints, sets, ...)
    """
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:  # a root given as a bad URL (--cache-dir s4://x) is one line too
        ctx.obj = Paths.from_env(**{k.removeprefix("root_"): v for k, v in roots.items()})
    except FeatcacheError as e:
        raise click.ClickException(str(e)) from None
