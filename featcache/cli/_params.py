"""Option types and shared options of the ``featcache`` command (click and the torch-free registries only).

Values are parsed by :class:`click.ParamType` subclasses, so a bad value is a one-line usage error naming the
option, with an example of its own. :class:`RegistryOption` names registry entries in its help, read from the
registries when the help is shown.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import click

from ..config import Paths, Registry, load_registry
from ..errors import FeatcacheError
from ..tables import FORMATS

__all__ = [
    "FloatList",
    "IntList",
    "Size",
    "Shard",
    "ViewCount",
    "RegistryOption",
    "field_default",
    "field_range",
    "format_option",
    "out_option",
]

_SHOWN = 12  # registry names shown in an option's help before "..."


class FloatList(click.ParamType):
    """A comma-separated grid: distinct finite numbers, > 0 (>= 0 with ``zero``).

    Each option's errors show its own ``example``; a repeated value is refused, since it would train or score the
    same grid point twice.
    """

    name = "numbers"

    def __init__(self, example: str, *, zero: bool = False):
        self.example, self.zero = example, zero

    def convert(self, value, param, ctx) -> tuple[float, ...]:
        if isinstance(value, tuple):
            return value
        try:
            out = tuple(float(v) for v in value.split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers, e.g. {self.example}", param, ctx)
        if not out or not all(math.isfinite(v) and (v >= 0 if self.zero else v > 0) for v in out):
            kind = "non-negative" if self.zero else "positive"
            self.fail(f"{value!r}: give one or more {kind} numbers, e.g. {self.example}", param, ctx)
        repeated = sorted({v for v in out if out.count(v) > 1})
        if repeated:
            shown = ", ".join(f"{v:g}" for v in repeated)
            self.fail(f"{value!r} repeats {shown}: give each value once, e.g. {self.example}", param, ctx)
        return out


class IntList(click.ParamType):
    """Comma-separated integers (their range is the library's to check, which names the option)."""

    name = "integers"

    def __init__(self, example: str):
        self.example = example

    def convert(self, value, param, ctx) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            return tuple(int(k) for k in value.split(",") if k.strip())
        except ValueError:
            self.fail(f"{value!r}: give comma-separated integers, e.g. {self.example}", param, ctx)


class Size(click.ParamType):
    """A number of bytes, with an optional unit: 8G, 512M, 1.5T, 4096."""

    name = "size"
    _UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value
        text = value.strip().upper().removesuffix("B").removesuffix("I")
        unit = text[-1] if text and text[-1] in self._UNITS else ""
        try:
            n = float(text[: len(text) - len(unit)] if unit else text)
        except ValueError:
            self.fail(f"{value!r} is not a size; use e.g. 8G, 512M or a number of bytes", param, ctx)
        if not n > 0:
            self.fail(f"{value!r}: give a positive size, e.g. 8G", param, ctx)
        return int(n * self._UNITS[unit])


class Shard(click.ParamType):
    """``I/N``: task I of N (0 <= I < N)."""

    name = "I/N"

    def convert(self, value, param, ctx) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        try:
            i, n = (int(v) for v in value.split("/"))
        except ValueError:
            self.fail(f"{value!r}: give I/N, e.g. 0/4 for the first of 4 tasks", param, ctx)
        if not 0 <= i < n:
            self.fail(f"{value!r}: I must be in 0..N-1", param, ctx)
        return i, n


class ViewCount(click.ParamType):
    """``auto`` (None), ``none`` (0) or a number of views."""

    name = "auto|none|N"

    def convert(self, value, param, ctx) -> int | None:
        if value is None or isinstance(value, int):
            return value
        if value == "auto":
            return None
        if value == "none":
            return 0
        try:
            n = int(value)
        except ValueError:
            self.fail(f"{value!r}: use auto, none or a number of views, e.g. 8", param, ctx)
        if n < 0:
            self.fail(f"{value!r}: a number of views must be >= 0", param, ctx)
        return n


class RegistryOption(click.Option):
    """An option whose help names registry entries: ``{names}`` in its help becomes ``names(registry)``, read when
    the help is shown (with the roots given before the command, the environment and the defaults)."""

    def __init__(self, *args, names: Callable[[Registry], Iterable[str]], kind: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.names, self.kind = names, kind

    def get_help_record(self, ctx: click.Context):
        record = super().get_help_record(ctx)
        if record is None:
            return None
        return record[0], record[1].replace("{names}", self._shown(ctx))

    def _shown(self, ctx: click.Context) -> str:
        paths = ctx.find_object(Paths) or Paths.from_env()
        try:
            names = list(self.names(load_registry(paths)))
        except FeatcacheError:  # a broken registry must not break --help: say where the names are
            return f"see `featcache list {self.kind}`"
        shown = ", ".join(names[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")
        return f"{shown or 'none registered'}; `featcache list {self.kind}`"


def field_default(cls: type, name: str):
    """The default of dataclass field ``name`` of ``cls``: the one place an option's default is written."""
    return {f.name: f for f in dataclasses.fields(cls)}[name].default


def field_range(cls: type, name: str) -> click.IntRange:
    """A click.IntRange with the bounds of dataclass field ``name``'s metadata (``min``, ``max``)."""
    meta = {f.name: f for f in dataclasses.fields(cls)}[name].metadata
    return click.IntRange(min=meta.get("min"), max=meta.get("max"))


def format_option(fn):
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="table to read, markdown to paste, csv or json to load elsewhere.",
    )(fn)


def out_option(fn):
    return click.option(
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        help="Folder of the report files <sweep>.md, .csv, .png (default: <cache>/reports).",
    )(fn)
