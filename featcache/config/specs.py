"""What the registries resolve to: checkpoints, transforms, datasets and probe presets, as frozen dataclasses."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..choices import HEADS
from ..errors import ConfigError
from ..records import Record

__all__ = ["DEFAULT_PRESET", "CheckpointSpec", "AugmentSpec", "TransformSpec", "DatasetSpec", "ProbePreset"]

DEFAULT_PRESET = "cifar"  # the probe preset of a dataset that names none (the research protocol)


@dataclass(frozen=True)
class CheckpointSpec:
    """One registered (or ad-hoc) checkpoint: a name, an architecture and a file."""

    name: str
    arch: str | None
    path: Path  # absolute once resolved
    ema: bool = False
    ema_source: str | None = None  # who asked for the EMA weights: "registry" (ema: true) or "option" (--ema)
    # the training step the file must record, when it records one (AlgoPerf's global_step), and who says so
    # (a sweep row's steps_per_model); None: not checked
    steps: int | None = None
    steps_source: str | None = None


@dataclass(frozen=True)
class AugmentSpec:
    """The research training transform: RandomResizedCrop(size, scale, ratio, interpolation) + horizontal flip."""

    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    interpolation: str
    hflip: float  # probability of a horizontal flip

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "scale": list(self.scale),
            "ratio": list(self.ratio),
            "interpolation": self.interpolation,
            "hflip": self.hflip,
        }


@dataclass(frozen=True)
class TransformSpec:
    """Eval preprocessing by named parameters: Resize(resize) -> CenterCrop(crop) -> Normalize.

    ``augment`` is the matching training transform (for stored views), when the preset defines one.
    """

    name: str
    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    augment: AugmentSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        """The evaluation parameters, as recorded in a store (the augmentation is recorded with the views)."""
        return {
            "name": self.name,
            "resize": self.resize,
            "crop": self.crop,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its on-disk format, where it lives and how it is probed."""

    name: str
    format: str
    root: Path  # absolute
    splits: tuple[str, ...]
    train_split: str
    test_split: str
    transforms: dict[str, str]  # --transform name -> preset name; first is the default
    probe: str = DEFAULT_PRESET  # the probe preset of probes.yaml for this dataset
    options: dict[str, Any] = field(default_factory=dict)
    eval_splits: tuple[str, ...] = ()  # more splits a trained head is scored on, besides test_split

    @property
    def default_transform(self) -> str:
        return next(iter(self.transforms))


@dataclass(frozen=True)
class ProbePreset(Record):
    """A probe preset of probes.yaml: :class:`~featcache.heads.HeadConfig`'s fields, ``views`` and ``val_fraction``.

    A head field left out (None) takes HeadConfig's default, except ``milestones``: a preset that lists none
    keeps the learning rate constant. ``views``: the augmented views the heads train on (at most what the stores
    hold); ``val_fraction``: the share of train held out for selection. Every key is a default that the command
    line option of the same name overrides (:meth:`merged`).
    """

    head: str | None = field(default=None, metadata={"choices": HEADS})
    epochs: int | None = field(default=None, metadata={"min": 1})
    lr: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    milestones: tuple[int, ...] = ()
    gamma: float | None = None
    batch_size: int | None = field(default=None, metadata={"min": 2})
    init_std: float | None = None
    seed: int | None = field(default=None, metadata={"min": 0})
    weight_decays: tuple[float, ...] | None = field(default=None, metadata={"min_items": 1})
    lrs: tuple[float, ...] | None = field(default=None, metadata={"min_items": 1})
    views: int = field(default=0, metadata={"min": 0})
    val_fraction: float = 0.1

    def merged(self, **given: Any) -> ProbePreset:
        """This preset with the values ``given`` (None: keep this preset's), as options override it."""
        return dataclasses.replace(self, **{k: v for k, v in given.items() if v is not None})

    def head_fields(self) -> dict[str, Any]:
        """The keyword arguments of HeadConfig: the head fields this preset sets.

        Raises:
            ConfigError: no weight-decay grid.
        """
        if self.weight_decays is None:
            raise ConfigError("the probe preset has no weight_decays; add them to probes.yaml or pass --wd")
        heads = (f.name for f in dataclasses.fields(self) if f.name not in ("views", "val_fraction"))
        return {k: getattr(self, k) for k in heads if getattr(self, k) is not None}
