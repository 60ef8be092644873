"""The extraction's configuration: :class:`ExtractConfig` and its one builder, :func:`config_from`.

The CLI, sweeps and Python callers build an extraction the same way: ``config_from(reg, paths, ckpt=...,
dataset=..., ...)`` resolves the checkpoints (``--ckpt``, ``--arch``, ``--ema``), the dataset and its transform
preset, and the comma-separated ``--split`` and ``--layers``; the options and their defaults are
:class:`~featcache.config.ExtractOptions`'. Plain data: no torch, so a planner need not load it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .choices import BACKENDS, COMPILE, COMPRESSIONS, DTYPES, ON_BAD_IMAGE, PRECISIONS
from .config import CheckpointSpec, DatasetSpec, ExtractOptions, Paths, Registry, TransformSpec
from .errors import ConfigError
from .store import store_path

__all__ = ["ExtractConfig", "config_from"]

_DEFAULTS = ExtractOptions()


def _choice(value: str, allowed, option: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{option} {value!r} is not one of {', '.join(allowed)}")


@dataclass(frozen=True)
class ExtractConfig:
    """Everything one ``featcache extract`` call needs; validated on construction.

    ``transform`` is the dataset preset (its default or ``--transform``); with ``model_preprocessing`` an
    architecture that defines its own evaluation preprocessing (timm, torchvision weights) uses that instead.
    ``views`` augmented views (made with the preset's training transform, seeded by ``views_seed``) are stored
    for the dataset's train split only. The defaults of the options a sweep shares are
    :class:`~featcache.config.ExtractOptions`' (``backend`` is its ``preprocess``).
    """

    checkpoints: tuple[CheckpointSpec, ...]
    dataset: DatasetSpec
    transform: TransformSpec
    cache_dir: Path
    splits: tuple[str, ...] = ()  # empty: all of the dataset's splits
    store_name: str | None = None
    batch_size: int = _DEFAULTS.batch_size
    dtype: str = _DEFAULTS.dtype
    precision: str = _DEFAULTS.precision
    device: str = _DEFAULTS.device
    workers: int = _DEFAULTS.workers
    limit: int | None = None  # a stratified subset of this many samples per split
    overwrite: bool = False
    trust_checkpoint: bool = False
    compile: str = _DEFAULTS.compile
    backend: str = _DEFAULTS.preprocess
    on_bad_image: str = ON_BAD_IMAGE[0]
    compression: str = COMPRESSIONS[0]
    chunk_rows: int | None = _DEFAULTS.chunk_rows  # rows per store chunk; default about CHUNK_BYTES
    views: int = 0
    views_seed: int = _DEFAULTS.views_seed
    layers: tuple[str, ...] = ()  # intermediate layers (one store each); empty: the pre-logits features
    pool: str | None = None
    ignore_extra_keys: bool = False
    repair: bool = False  # re-extract the chunks that fail verification
    model_preprocessing: bool = True
    shard: tuple[int, int] | None = None  # (I, N): write only chunks i with i % N == I (Slurm arrays, ranks)

    def __post_init__(self) -> None:
        for option, value, low in (
            ("--batch-size", self.batch_size, 1),
            ("--workers", self.workers, 0),
            ("--chunk-rows", self.chunk_rows, 1),
            ("--limit", self.limit, 1),
            ("--views", self.views, 0),
            ("--views-seed", self.views_seed, 0),
        ):
            if value is not None and not (isinstance(value, int) and value >= low):
                raise ConfigError(f"{option} must be an integer >= {low}, got {value!r}")
        _choice(self.dtype, DTYPES, "--dtype")
        _choice(self.precision, ("auto", *PRECISIONS), "--precision")
        _choice(self.compile, COMPILE, "--compile")
        _choice(self.backend, ("auto", *BACKENDS), "--preprocess")
        _choice(self.on_bad_image, ON_BAD_IMAGE, "--on-bad-image")
        _choice(self.compression, COMPRESSIONS, "--compression")
        if self.shard is not None:
            i, n = self.shard
            if not 0 <= i < n:
                raise ConfigError(f"--shard {i}/{n}: give I/N with 0 <= I < N, e.g. 0/4")
            if self.overwrite or self.repair:
                raise ConfigError("--shard cannot be combined with --overwrite or --repair: run those once first")
        if self.store_name is not None and store_path(".", "d", self.store_name).stem != self.store_name:
            raise ConfigError(
                f"--store-name {self.store_name!r} is not a plain name: use letters, digits, '.', '_' and '-', not "
                "starting or ending with '.' or '_' (a store is <cache>/<dataset>/<name>.zarr)"
            )
        if self.store_name and len(self.checkpoints) != 1:
            raise ConfigError("--store-name names one store: give exactly one checkpoint with --ckpt")
        repeated = sorted({name for name in self.layers if self.layers.count(name) > 1})
        if repeated:
            raise ConfigError(f"--layers names {', '.join(map(repr, repeated))} more than once; name each layer once")
        for s in self.splits:
            if s not in self.dataset.splits:
                raise ConfigError(f"--split {s!r}: dataset '{self.dataset.name}' has {', '.join(self.dataset.splits)}")


def _names(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """A comma-separated option (``--split train,test``) or a sequence, as a tuple without blanks."""
    items = value.split(",") if isinstance(value, str) else (value or ())
    return tuple(s.strip() for s in items if s.strip())


def config_from(
    reg: Registry,
    paths: Paths,
    *,
    ckpt: str | Sequence[CheckpointSpec],
    dataset: str | DatasetSpec,
    arch: str | None = None,
    ema: bool = False,
    transform: str | None = None,
    splits: str | Sequence[str] | None = None,
    layers: str | Sequence[str] | None = None,
    options: ExtractOptions | None = None,
    **fields: Any,
) -> ExtractConfig:
    """The extraction of these options, as ``featcache extract`` runs it.

    Args:
        reg, paths: the registries and roots (stores go under ``paths.cache``).
        ckpt: a ``--ckpt`` value (names, sets, file paths; files need ``arch``) or the checkpoints.
        dataset: a ``--dataset`` value (a registered name or ``imagefolder:<path>``) or the dataset.
        ema: extract the EMA weights of every checkpoint (``--ema``).
        transform: the dataset's transform preset; None: the architecture's own preprocessing when it defines
            one, else the dataset's first preset.
        splits, layers: ``--split`` and ``--layers``, comma-separated or as sequences (empty: every split; the
            pre-logits features).
        options: the options a sweep sets (default :class:`ExtractOptions`' defaults).
        fields: the other :class:`ExtractConfig` fields, and any option of ``options`` by name (``preprocess`` is
            ``backend``), which overrides it.

    Returns:
        The configuration, validated.

    Raises:
        ConfigError: an unknown dataset, checkpoint, transform or option; a value out of range (the option is named).
    """
    ds = dataset if isinstance(dataset, DatasetSpec) else reg.dataset(dataset)
    specs = reg.expand_checkpoints(ckpt, arch) if isinstance(ckpt, str) else list(ckpt)
    if ema:
        specs = [dataclasses.replace(c, ema=True, ema_source=c.ema_source or "option") for c in specs]
    given = (options or _DEFAULTS).config_fields()
    if "preprocess" in fields:
        fields["backend"] = fields.pop("preprocess")
    known = {f.name for f in dataclasses.fields(ExtractConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:  # a misspelt option is named, not a TypeError traceback
        raise ConfigError(f"unknown extraction option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return ExtractConfig(checkpoints=tuple(specs), dataset=ds, transform=reg.transform(ds, transform),
                         model_preprocessing=transform is None, cache_dir=paths.cache, splits=_names(splits),
                         layers=_names(layers), **{**given, **fields})  # fmt: skip
