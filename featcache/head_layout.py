"""What a saved head reads and predicts, and whether other stores and classes fit it (torch-free).

A head's *feature layout* is its stores in order, each a :class:`FeatureBlock`: the checkpoint (by sha256), the
layer and pooling, the block's width, and how the features were made (transform, dtype, precision), as the store
records them (:mod:`featcache.store`). Stores fit a head when checkpoint, layer, pool and width agree block for
block; features made otherwise (another preprocessing, dtype or precision) fit only on purpose
(``allow_transform_mix``). A dataset's classes fit a head when each is one of the head's classes, by name (so
ImageNet-R and -A score a 1000-way head on their 200 classes, the research ``targetmask``), or when the dataset's
``class_subset`` option says which head class each of its numbered labels means (not for the shifted ImageNet sets,
whose ``class_subset`` names the classes they hold).

A saved head is a safetensors file; its JSON header carries this metadata (:func:`read_header` reads it without
torch).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, StoreMismatchError
from .records import Record, RecordError
from .store import Provenance

__all__ = ["FORMAT", "META_KEY", "NORMS", "FeatureBlock", "HeadHeader", "check_layout", "class_mask", "layout_problem",
           "read_header"]  # fmt: skip

FORMAT = 1  # the saved head's format version
META_KEY = "featcache_head"  # the safetensors metadata key holding the JSON document
MUST_MATCH = ("sha256", "layer", "pool", "dim")  # what the head's weights mean
MADE_BY = ("transform", "dtype", "precision")  # how the features were made: another only on purpose
NORMS = ("batchnorm", "none", "standardise")  # how a head normalises its features (featcache.linear_head)
_SHOWN = 10


@dataclass(frozen=True)
class FeatureBlock(Record):
    """One store's block of a head's features, as the store records it."""

    store: str
    checkpoint: str
    arch: str
    sha256: str
    layer: str
    pool: str
    dim: int
    dtype: str
    precision: str
    transform: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, store: str, prov: Provenance, dim: int | None = None) -> FeatureBlock:
        """The block of store ``store`` with provenance ``prov`` (``dim``: its width, default the store's)."""
        ck = prov.checkpoint
        return cls(store, ck.name, ck.arch, ck.sha256, prov.layer, prov.pool, prov.feature_dim if dim is None else dim,
                   prov.dtype, prov.precision, dict(prov.transform))  # fmt: skip

    def value(self, key: str) -> Any:
        """The field as compared: a transform by its parameters (two presets of other names can be the same)."""
        v = getattr(self, key)
        return {k: x for k, x in v.items() if k != "name"} if key == "transform" else v


@dataclass(frozen=True)
class HeadHeader(Record):
    """The JSON document of a saved head: its arithmetic, classes, feature layout and the probe it comes from."""

    format: int
    norm: str
    eval_rows: int
    classes: tuple[str, ...]
    layout: tuple[FeatureBlock, ...]
    probe: dict[str, Any]  # the probe record's id, key, dataset, splits, solver, selection and test numbers
    featcache: str = ""

    @property
    def dim(self) -> int:
        return sum(b.dim for b in self.layout)


def read_header(path: str | Path) -> HeadHeader:
    """The header of the saved head at ``path`` (reads the file's JSON header only; no torch).

    Raises:
        ConfigError: no such file, not a safetensors file, not a featcache head, or of a newer format.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if not 0 < size < 100 * 2**20:
                raise ValueError(f"a header of {size} bytes")
            doc = json.loads(f.read(size))
    except FileNotFoundError:
        raise ConfigError(f"--head {path}: no such file; write one with `featcache probe --save-head {path}`") from None
    except (OSError, struct.error, ValueError) as e:
        raise ConfigError(f"--head {path} is not a safetensors file ({e}); give a head saved by --save-head") from None
    meta = doc.get("__metadata__", {}).get(META_KEY) if isinstance(doc, dict) else None
    if meta is None:
        raise ConfigError(f"--head {path} is a safetensors file but not a featcache head (no '{META_KEY}' metadata)")
    try:
        raw = json.loads(meta)
        version = raw.get("format") if isinstance(raw, dict) else None
        header = HeadHeader.from_dict(raw, str(path)) if not (isinstance(version, int) and version > FORMAT) else None
        problem = _header_problem(header) if header is not None else ""
    except (RecordError, ValueError, TypeError) as e:
        problem = str(e)
    if problem:
        raise ConfigError(f"--head {path}: its featcache metadata is damaged ({problem}); save the head again")
    if header is None:
        raise ConfigError(
            f"--head {path} is of head format {version}; this featcache reads {FORMAT}: upgrade featcache"
        )
    return header


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _header_problem(h: HeadHeader) -> str:
    """What in a header no featcache writes (a file edited or damaged), as a phrase; "" if none."""
    classes = list(h.classes) if isinstance(h.classes, (list, tuple)) else None
    problems = {
        f"format {h.format!r} is not a head format (1 to {FORMAT})": not (_count(h.format) and h.format <= FORMAT),
        f"norm {h.norm!r} is not one of {', '.join(NORMS)}": h.norm not in NORMS,
        f"eval_rows {h.eval_rows!r} is not a count > 0": not _count(h.eval_rows),
        "classes are not distinct names": not classes or not all(isinstance(c, str) for c in classes)
        or len(set(classes)) < len(classes),
        "the layout lists no store": not h.layout,
        "a store's dim is not a count > 0": not all(_count(b.dim) for b in h.layout),
        "probe is not a mapping": not isinstance(h.probe, dict),
    }  # fmt: skip
    return next((what for what, bad in problems.items() if bad), "")


def layout_problem(head: Sequence[FeatureBlock], stores: Sequence[FeatureBlock], allow_transform_mix: bool) -> str:
    """How ``stores`` (in order) differ from a head's layout, as one line naming store k and the field; "" if none."""
    names = ", ".join(b.store for b in head)
    if len(stores) != len(head):
        given = ", ".join(b.store for b in stores)
        return f"the head reads {len(head)} store(s) ({names}), {len(stores)} given ({given})"
    for k, (want, got) in enumerate(zip(head, stores, strict=True)):
        keys = MUST_MATCH + (() if allow_transform_mix else MADE_BY)
        for key in keys:
            if want.value(key) != got.value(key):
                fix = (
                    "pass --allow-transform-mix to score features made otherwise on purpose"
                    if key in MADE_BY
                    else (f"extract store {k} from checkpoint {want.checkpoint} ({want.arch}, layer {want.layer})")
                )
                return (f"store {k} ({got.store}) differs from the head's block {k} ({want.store}) in {key}: "
                        f"{_show(got.value(key))} vs the head's {_show(want.value(key))}; {fix}")  # fmt: skip
    return ""


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_layout(head: Sequence[FeatureBlock], stores: Sequence[FeatureBlock], allow_transform_mix: bool,
                 where: str) -> None:  # fmt: skip
    """Raise :class:`StoreMismatchError` (``where``: what is being scored) when ``stores`` do not fit the head."""
    problem = layout_problem(head, stores, allow_transform_mix)
    if problem:
        raise StoreMismatchError(f"cannot score the head on {where}: {problem}")


def class_mask(head: Sequence[str], classes: Sequence[str], subset: Any, where: str) -> tuple[int, ...] | None:
    """Which of the head's classes each label of a dataset means, in label order; None when they are the same.

    Args:
        head: the head's classes.
        classes: the dataset split's classes, in label order.
        subset: the dataset's ``class_subset`` option (None: match by name): one entry per label, a class name of
            the head's or an index into its classes.
        where: how errors name the dataset and split.
    Raises:
        ConfigError: a class the head does not know, or a ``class_subset`` of the wrong length or entries.
    """
    index = {c: i for i, c in enumerate(head)}
    if subset is not None:
        if isinstance(subset, str) or not isinstance(subset, Sequence) or (classes and len(subset) != len(classes)):
            raise ConfigError(f"{where}: options.class_subset must list one class of the head (a name or an index) "
                              f"per class of the dataset ({len(classes)}), got {_show(subset)}")  # fmt: skip
        mask = []
        for entry in subset:
            if isinstance(entry, int) and not isinstance(entry, bool) and 0 <= entry < len(head):
                mask.append(entry)
            elif isinstance(entry, str) and entry in index:
                mask.append(index[entry])
            else:
                raise ConfigError(f"{where}: options.class_subset entry {entry!r} is not a class of the head (a name "
                                  f"of its {len(head)} classes or an index below {len(head)})")  # fmt: skip
    elif tuple(classes) == tuple(head):
        return None
    else:
        unknown = [c for c in classes if c not in index]
        if unknown:
            shown = ", ".join(unknown[:_SHOWN]) + (
                f" and {len(unknown) - _SHOWN} more" if len(unknown) > _SHOWN else ""
            )
            raise ConfigError(
                f"{where} has {len(unknown)} class(es) the head does not know ({shown}); score it with a head "
                "trained on those classes, or give the dataset an options.class_subset naming the head's class of "
                "each of its labels"
            )
        mask = [index[c] for c in classes]
    if len(set(mask)) < len(mask):
        raise ConfigError(f"{where}: two of its classes map to one class of the head ({_show(list(mask))})")
    return None if mask == list(range(len(head))) else tuple(mask)
