"""The dataset registry (``datasets.yaml``): transform presets, datasets and the ``imagefolder:<path>`` template."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import unknown_name
from ..records import Record
from ._layers import Entry, Table, read_yaml
from .paths import resolve_under
from .specs import DEFAULT_PRESET, AugmentSpec, DatasetSpec, TransformSpec

__all__ = ["DatasetTables"]

IMAGEFOLDER = "imagefolder:"


@dataclass(frozen=True)
class _Train(Record):
    """A transform preset's ``train:`` entry (RandomResizedCrop + flip; torchvision's defaults)."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str | None = None  # None: the preset's
    hflip: float = field(default=0.5, metadata={"min": 0, "max": 1})


@dataclass(frozen=True)
class _Transform(Record):
    """A transform preset as written in ``datasets.yaml``."""

    resize: int = field(metadata={"min": 1})
    crop: int = field(metadata={"min": 1})
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    train: _Train | None = None

    def spec(self, name: str) -> TransformSpec:
        augment = None
        if self.train is not None:
            t = self.train
            augment = AugmentSpec(self.crop, tuple(float(v) for v in t.scale), tuple(float(v) for v in t.ratio),
                                  t.interpolation or self.interpolation, float(t.hflip))  # fmt: skip
        return TransformSpec(name, self.resize, self.crop, self.interpolation, tuple(float(v) for v in self.mean),
                             tuple(float(v) for v in self.std), augment)  # fmt: skip


@dataclass(frozen=True)
class _Dataset(Record):
    """A dataset entry as written in ``datasets.yaml`` (and the ``imagefolder`` template)."""

    format: str
    splits: tuple[str, ...] = field(metadata={"min_items": 1})
    transforms: dict[str, str]
    root: str | None = None  # relative to the data dir; default: the dataset's name
    train_split: str | None = None  # default: the first split
    test_split: str | None = None  # default: the last split
    eval_splits: tuple[str, ...] = ()  # more splits a head is scored on (Camelyon17's id_val and OOD val)
    probe: str = DEFAULT_PRESET
    options: dict[str, Any] | None = None


def _transform_entry(name: str, doc: Any, where: str) -> Entry:
    return Entry(where, lambda: _Transform.from_dict(doc, where, strict=True).spec(name))


class DatasetTables:
    """The transform presets and datasets of every layer (``files``: (layer, path) in layer order)."""

    def __init__(self, files: list[tuple[int, Path]], data_dir: Path):
        self.data = data_dir
        self.transforms, self.datasets = Table("transform preset"), Table("dataset")
        self.template: dict = {}
        for layer, path in files:
            doc = read_yaml(path)
            for name, t in (doc.get("transforms") or {}).items():
                self.transforms.add(str(name), layer, _transform_entry(str(name), t, f"{path}: transforms.{name}"))
            for name, entry in (doc.get("datasets") or {}).items():
                self.datasets.add(str(name), layer, Entry(f"{path}: datasets.{name}", lambda e=entry: e))
            if isinstance(doc.get("imagefolder"), dict):
                self.template = {**doc["imagefolder"], "_where": f"{path}: imagefolder"}

    def names(self) -> list[str]:
        return sorted(self.datasets.names()) + [f"{IMAGEFOLDER}<path>"]

    def dataset(self, name: str) -> DatasetSpec:
        """Resolve ``--dataset``: a registered name, or ``imagefolder:<path>``.

        ``imagefolder:<path>``: a bare name (no ``/``) is a folder under the data root; anything else is a
        path like every other path option (relative to the working directory, or absolute). A trailing
        slash names the same dataset.

        Raises:
            ConfigError: unknown name (closest names suggested) or a malformed entry.
        """
        if name.startswith(IMAGEFOLDER):
            rel = name.split(":", 1)[1].rstrip("/") or "."
            if "/" not in rel and rel not in (".", ".."):
                root, name = resolve_under(self.data, rel, "--dataset imagefolder name"), f"{IMAGEFOLDER}{rel}"
            else:
                root = Path(os.path.abspath(rel))
                name = f"{IMAGEFOLDER}{root}"
            entry = {k: v for k, v in self.template.items() if k != "_where"}
            names = [d for d in ("train", "val", "test") if (root / d).is_dir()]
            entry["splits"] = names or ["all"]
            if not names:
                entry["train_split"] = entry["test_split"] = "all"
            return self._spec(name, entry, self.template.get("_where", "imagefolder"), root=root)
        if name not in self.datasets:
            raise unknown_name("dataset", name, self.names())
        return self._spec(name, self.datasets.get(name), self.datasets.entries[name].where)

    def _spec(self, name: str, doc: Any, where: str, root: Path | None = None) -> DatasetSpec:
        e = _Dataset.from_dict(doc, where, strict=True)
        for preset in e.transforms.values():
            if preset not in self.transforms:
                raise unknown_name("transform preset", preset, self.transforms.names(), f"used by {where}")
        for split in e.eval_splits:
            if split not in e.splits:
                raise unknown_name("split", split, e.splits, f"in eval_splits of {where}")
        if root is None:
            root = resolve_under(self.data, e.root if e.root is not None else name, f"{where}: root")
        return DatasetSpec(name=name, format=e.format, root=root, splits=e.splits,
                           train_split=e.train_split or e.splits[0], test_split=e.test_split or e.splits[-1],
                           transforms=e.transforms, probe=e.probe, options=dict(e.options or {}),
                           eval_splits=e.eval_splits)  # fmt: skip

    def transform(self, dataset: DatasetSpec, name: str | None) -> TransformSpec:
        """The preset behind ``--transform name`` for ``dataset`` (its default when ``name`` is None).

        Raises:
            ConfigError: neither one of the dataset's transform names nor a preset's full name.
        """
        name = name or dataset.default_transform
        if name in dataset.transforms:
            return self.transforms.get(dataset.transforms[name])
        if name in self.transforms:  # a preset given by its full name
            return self.transforms.get(name)
        raise unknown_name("transform", name, dataset.transforms, f"for dataset '{dataset.name}'")

    def preset_for(self, dataset: str) -> str:
        """The probe preset a dataset names (imagefolder datasets use the template's), else the default."""
        if dataset.startswith(IMAGEFOLDER):
            return str(self.template.get("probe", DEFAULT_PRESET))
        if dataset in self.datasets:
            entry = self.datasets.get(dataset)
            return str(entry.get("probe", DEFAULT_PRESET)) if isinstance(entry, dict) else DEFAULT_PRESET
        return DEFAULT_PRESET
