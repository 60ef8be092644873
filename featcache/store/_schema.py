"""The store's typed metadata, defined once: provenance, split metadata and chunk markers.

The writer builds these frozen dataclasses and writes them with :meth:`to_dict`; every reader (concat,
probe, verify, ls) gets them back with :meth:`from_dict` and reads attributes, never string keys.
``from_dict`` accepts the dicts of every readable format version: fields added by a later version have
defaults, and keys it does not know are ignored (a newer *major* version is refused before that, by
:func:`featcache.store._format.check_version`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import StoreError

__all__ = [
    "Software",
    "DatasetRef",
    "CheckpointRef",
    "PreprocessRef",
    "ComputeRef",
    "Provenance",
    "ViewsMeta",
    "SplitMeta",
    "ChunkMarker",
    "identity_diff",
]

T = TypeVar("T")


class _Record:
    """``to_dict``/``from_dict`` for the frozen dataclasses below (nested records, tuples, optionals)."""

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls: type[T], doc: Any, where: str = "store metadata") -> T:
        """Build from a JSON-like dict.

        Raises:
            StoreError: ``doc`` is not a dict, or lacks a field that has no default.
        """
        return _build(cls, doc, where)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _build(tp: Any, value: Any, where: str) -> Any:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise StoreError(f"{where}: expected a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _build(hints[f.name], value[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise StoreError(f"{where}: missing key '{f.name}'; the store is damaged or not a featcache store")
        return tp(**kwargs)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):  # X | None
        if value is None:
            return None
        return _build(next(a for a in args if a is not type(None)), value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise StoreError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(_build(args[0], v, where) for v in value)
    return value


@dataclass(frozen=True)
class Software(_Record):
    """Versions that produced the features; part of the identity (a resume under other versions is refused)."""

    featcache: str
    torch: str
    torchvision: str
    zarr: str
    numpy: str
    python: str


@dataclass(frozen=True)
class DatasetRef(_Record):
    name: str
    format: str
    limit: int | None = None  # the first ``limit`` samples of each split only


@dataclass(frozen=True)
class CheckpointRef(_Record):
    name: str
    arch: str
    sha256: str
    path: str
    ema: bool = False
    stripped_prefix: str = ""  # a uniform key prefix removed while loading (e.g. Lightning's ``model.``)
    ignored_keys: tuple[str, ...] = ()  # non-backbone keys dropped with --ignore-extra-keys


@dataclass(frozen=True)
class PreprocessRef(_Record):
    backend: str  # pil (the research pipeline) or device (batched resize on the device)
    device: str


@dataclass(frozen=True)
class ComputeRef(_Record):
    device: str
    channels_last: bool = False
    compiled: bool = False


@dataclass(frozen=True)
class Provenance(_Record):
    """What made a store's features (``attrs["featcache"]`` of the root group).

    Everything but ``format_version``, ``created_at`` and ``splits`` is the store's *identity*.
    ``transform`` holds the evaluation preprocessing's named parameters, as the extractor resolved them.
    """

    dataset: DatasetRef
    checkpoint: CheckpointRef
    layer: str
    feature_dim: int
    dtype: str
    precision: str
    transform: dict[str, Any]
    preprocess: PreprocessRef
    software: Software
    compute: ComputeRef | None = None
    pool: str = ""  # how an intermediate layer's output was pooled ("" for the pre-logits vector)
    format_version: int = 0  # set by the writer
    created_at: str = ""  # set by the writer
    splits: tuple[str, ...] = ()  # maintained by the writer

    @property
    def transform_name(self) -> str:
        return str(self.transform.get("name", ""))

    def identity(self) -> dict[str, Any]:
        """The fields a resumed or concatenated store must share, as a plain dict."""
        doc = self.to_dict()
        for key in NOT_IDENTITY:
            doc.pop(key, None)
        return doc


NOT_IDENTITY = ("format_version", "created_at", "splits")  # managed by the store itself


@dataclass(frozen=True)
class ViewsMeta(_Record):
    """Augmented views of a split: view k of row r is a pure function of (sample id, k, seed).

    ``augment`` holds the training transform's named parameters; ``count`` views (0..count-1) are complete.
    """

    seed: int
    augment: dict[str, Any]
    count: int = 0


@dataclass(frozen=True)
class SplitMeta(_Record):
    """One split (``attrs["featcache_split"]`` of its group).

    ``complete`` is false until every chunk of the evaluation-view features is written and verified;
    it is set last. ``skipped_rows`` are rows whose image could not be decoded (zero features in every
    array; readers drop them).
    """

    rows: int
    dim: int
    dtype: str
    chunk_rows: int
    n_chunks: int
    compression: str
    fingerprint: str
    ids_sha256: str
    labels_sha256: str
    classes: tuple[str, ...]
    complete: bool = False
    completed_at: str | None = None
    skipped_rows: tuple[int, ...] = ()
    views: ViewsMeta | None = None

    # what may differ between a split as started and as reopened: layout and progress, not content
    LAYOUT: typing.ClassVar[tuple[str, ...]] = ("chunk_rows", "n_chunks", "complete", "completed_at", "skipped_rows")

    @property
    def n_views(self) -> int:
        return self.views.count if self.views else 0

    def content_diff(self, other: SplitMeta) -> list[str]:
        """Fields (layout, progress and views aside) whose values differ: the split holds other samples."""
        skip = {*self.LAYOUT, "views"}
        return [
            f.name
            for f in dataclasses.fields(self)
            if f.name not in skip and getattr(self, f.name) != getattr(other, f.name)
        ]


@dataclass(frozen=True)
class ChunkMarker(_Record):
    """Chunk i of an array is written, fsynced and read back: its row count, checksum and undecodable rows."""

    rows: int
    sha256: str
    skipped: tuple[int, ...] = field(default=())


def identity_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two identity dicts (see :meth:`Provenance.identity`)."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += identity_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out
