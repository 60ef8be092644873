"""Frozen dataclasses that travel as JSON or YAML: store metadata, results records and config documents.

Plain Python only (no torch, no zarr), so both phases, the store layer and the registries can use it. Two ways
to read a document into a record, one validator:

- lenient (stores, results logs): keys the class does not know are ignored, values are taken as written;
- ``strict=True`` (sweeps, registry entries, probe presets: files people write by hand): unknown keys are
  refused with the known ones listed, each value is checked against its field's type, and bounds come from
  field metadata: ``{"min": n, "max": n}`` for numbers, ``{"min_items": n}`` for lists, ``{"choices": (...)}``
  for strings. ``{"read": False}`` marks a field that is not a key of the document.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import ConfigError, FeatcacheError

__all__ = ["Record", "RecordError", "document_keys"]

T = TypeVar("T")


class RecordError(FeatcacheError, ValueError):
    """A JSON document does not hold the record it should (a missing key, a wrong shape)."""


class Record:
    """``to_dict``/``from_dict`` for frozen dataclasses (nested records, tuples, optionals, plain dicts)."""

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(
        cls: type[T], doc: Any, where: str = "record", *, strict: bool = False, given: Mapping[str, Any] | None = None
    ) -> T:
        """Build from a JSON-like dict.

        Args:
            doc: the document (a dict; with ``strict``, None reads as an empty mapping).
            where: how errors name the document, e.g. ``"configs/sweeps/x.yaml: rows.cat1"``.
            strict: check the document as a config file (see the module docstring); else keys the class does not
                know are ignored and values are taken as they are.
            given: values of fields that are not keys of ``doc`` (e.g. a row's name, from its mapping key).

        Raises:
            RecordError: (lenient) ``doc`` is not a dict, or lacks a field that has no default.
            ConfigError: (strict) an unknown key, a missing key or a bad value; the message names ``where`` and the
                key and says what is allowed.
        """
        if strict:
            return _strict(cls, doc, where, dict(given or {}))
        return _build(cls, doc, where) if not given else dataclasses.replace(_build(cls, doc, where), **given)


def document_keys(cls: type) -> list[str]:
    """The keys a document of ``cls`` may hold, in field order."""
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("read", True)]


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


def _strict(cls: type, doc: Any, where: str, given: dict[str, Any]) -> Any:
    """``cls`` from a config mapping, each value checked against its field's type; unknown keys refused."""
    keys = [f for f in dataclasses.fields(cls) if f.name not in given and f.metadata.get("read", True)]
    known = ", ".join(f.name for f in keys)
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        raise ConfigError(f"{where} must be a mapping (keys: {known}), got {doc!r}")
    unknown = sorted(str(k) for k in doc if str(k) not in {f.name for f in keys})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {known}")
    hints = typing.get_type_hints(cls)
    out = dict(given)
    for f in keys:
        if f.name in doc:
            out[f.name] = _value(hints[f.name], doc[f.name], _key(where, f.name), f.metadata)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing key '{f.name}'")
    return cls(**out)


def _key(where: str, key: str) -> str:
    """How errors name ``key`` of the document at ``where``: ``file: a.b`` (``file: key`` at a file's top level)."""
    return f"{where}.{key}" if ": " in where else f"{where}: {key}"


def _bounds(meta: Mapping[str, Any]) -> str:
    low, high = meta.get("min"), meta.get("max")
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    return f" >= {low}" if low is not None else f" <= {high}" if high is not None else ""


def _value(tp: Any, value: Any, where: str, meta: Mapping[str, Any]) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):  # X | None
        if value is None:
            return None
        return _value(next(a for a in args if a is not type(None)), value, where, meta)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _strict(tp, value, where, {})
    if tp is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        if "choices" in meta and str(value) not in meta["choices"]:
            raise ConfigError(f"{where} must be one of {', '.join(meta['choices'])}, got {value!r}")
        return str(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp in (int, float):
        number = isinstance(value, int) or (tp is float and isinstance(value, float) and math.isfinite(value))
        low, high = meta.get("min"), meta.get("max")
        out_of = (low is not None and number and value < low) or (high is not None and number and value > high)
        if not number or isinstance(value, bool) or out_of:
            what = "an integer" if tp is int else "a number"
            raise ConfigError(f"{where} must be {what}{_bounds(meta)}, got {value!r}")
        return value  # as written: an int stays an int, so a hyperparameter keeps its probe key
    if origin is tuple:
        items = value if isinstance(value, list | tuple) else [value]  # one value: a list of one
        fixed = not (len(args) == 2 and args[1] is Ellipsis)
        if isinstance(value, dict) or (fixed and len(items) != len(args)):
            size = f"{len(args)} " if fixed else ""
            raise ConfigError(f"{where} must be a list of {size}values, got {value!r}")
        if len(items) < meta.get("min_items", 0):
            raise ConfigError(f"{where} must be a non-empty list, got {value!r}")
        kinds = args if fixed else [args[0]] * len(items)
        return tuple(_value(k, v, f"{where}[{i}]", {}) for i, (k, v) in enumerate(zip(kinds, items, strict=True)))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        kind = args[1] if args else Any
        return {str(k): _value(kind, v, _key(where, str(k)), {}) for k, v in value.items()}
    if tp is Any:
        return value
    raise TypeError(f"no check for {tp}")  # a schema field of a type this validator does not know: a bug here
