"""The store's typed metadata, defined once: provenance, split metadata and chunk markers.

The writer builds these frozen dataclasses and writes them with :meth:`to_dict`; every reader (concat,
probe, verify, ls) gets them back with :meth:`from_dict` and reads attributes, never string keys.
``from_dict`` (:class:`featcache.records.Record`) accepts the dicts of every readable format version: fields
added by a later version have defaults, and keys it does not know are ignored (a newer version is refused
before that, by :func:`featcache.store._format.check_version`).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from ..errors import StoreError
from ..fidelity import fidelity_of
from ..records import Record, RecordError

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
    "parse",
]

R = typing.TypeVar("R", bound=Record)


def parse(cls: type[R], doc: Any, where: str) -> R:
    """``cls.from_dict(doc)``, a malformed document becoming a StoreError that says the store is damaged."""
    try:
        return cls.from_dict(doc, where)
    except RecordError as e:
        raise StoreError(f"{e}; the store is damaged or not a featcache store") from None


@dataclass(frozen=True)
class Software(Record):
    """Versions that produced the features; part of the identity (a resume under other versions is refused)."""

    featcache: str
    torch: str
    torchvision: str
    zarr: str
    numpy: str
    python: str


@dataclass(frozen=True)
class DatasetRef(Record):
    name: str
    format: str
    limit: int | None = None  # the first ``limit`` samples of each split only


@dataclass(frozen=True)
class CheckpointRef(Record):
    name: str
    arch: str
    sha256: str
    path: str
    ema: bool = False
    stripped_prefix: str = ""  # a uniform key prefix removed while loading (e.g. Lightning's ``model.``)
    ignored_keys: tuple[str, ...] = ()  # non-backbone keys dropped with --ignore-extra-keys
    # the file's size and mtime at extraction: a file that still has both is taken to be the same without hashing
    # it again (None in stores written before they were recorded: the hash decides)
    size: int | None = None
    mtime_ns: int | None = None

    # not identity: a copied or touched file with the same sha256 holds the same weights
    FILE_STAT: typing.ClassVar[tuple[str, ...]] = ("size", "mtime_ns")


@dataclass(frozen=True)
class PreprocessRef(Record):
    backend: str  # pil (the research pipeline) or device (batched resize on the device)
    device: str


@dataclass(frozen=True)
class ComputeRef(Record):
    device: str
    channels_last: bool = False
    compiled: bool = False


@dataclass(frozen=True)
class Provenance(Record):
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

    @property
    def fidelity(self) -> str:
        """``strict`` for the research pipeline's features (PIL, fp32, float32, not compiled), else ``fast``
        (see :mod:`featcache.fidelity`)."""
        compiled = self.compute is not None and self.compute.compiled
        return fidelity_of(self.preprocess.backend, self.precision, self.dtype, compiled)

    def identity(self) -> dict[str, Any]:
        """The fields a resumed or concatenated store must share, as a plain dict."""
        doc = self.to_dict()
        for key in NOT_IDENTITY:
            doc.pop(key, None)
        for key in CheckpointRef.FILE_STAT:
            doc["checkpoint"].pop(key, None)
        return doc


NOT_IDENTITY = ("format_version", "created_at", "splits")  # managed by the store itself


@dataclass(frozen=True)
class ViewsMeta(Record):
    """Augmented views of a split: view k of row r is a pure function of (sample id, k, seed).

    ``augment`` holds the training transform's named parameters; ``count`` views (0..count-1) are complete.
    """

    seed: int
    augment: dict[str, Any]
    count: int = 0


@dataclass(frozen=True)
class SplitMeta(Record):
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
class ChunkMarker(Record):
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
