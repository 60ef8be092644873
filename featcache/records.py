"""Frozen dataclasses that travel as JSON: store metadata and results records share this base.

Plain Python only (no torch, no zarr), so both phases and the store layer can use it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from .errors import FeatcacheError

__all__ = ["Record", "RecordError"]

T = TypeVar("T")


class RecordError(FeatcacheError, ValueError):
    """A JSON document does not hold the record it should (a missing key, a wrong shape)."""


class Record:
    """``to_dict``/``from_dict`` for frozen dataclasses (nested records, tuples, optionals, plain dicts)."""

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls: type[T], doc: Any, where: str = "record") -> T:
        """Build from a JSON-like dict; keys the class does not know are ignored.

        Raises:
            RecordError: ``doc`` is not a dict, or lacks a field that has no default.
        """
        return _build(cls, doc, where)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _build(tp: Any, value: Any, where: str) -> Any:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _build(hints[f.name], value[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecordError(f"{where}: missing key '{f.name}'")
        return tp(**kwargs)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):  # X | None
        if value is None:
            return None
        return _build(next(a for a in args if a is not type(None)), value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise RecordError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(_build(args[0], v, where) for v in value)
    return value
