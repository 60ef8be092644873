"""Phase 1: run checkpoints once over a dataset and write their features to stores.

Data flows one way: dataset -> batched preprocessing (:mod:`featcache.loaders`) -> every backbone
on the same batch -> per-store chunk buffers -> a writer thread that writes whole chunks
(:mod:`featcache.store`). Batch i+1 is prepared in the background while batch i runs on the
device and finished chunks are written, so the device rarely waits. This module validates the input and
plans the run; :mod:`featcache.extract_stores` opens, repairs and completes the stores and
:mod:`featcache.forward` runs the batches.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
import zarr

from . import __version__, distributed
from .augment import ViewMaker
from .config import AugmentSpec, CheckpointSpec, TransformSpec
from .datasets import ImageDataset, build_dataset, stratified_rows
from .devices import resolve_device, resolve_precision, start_device
from .errors import ConfigError
from .extract_config import ExtractConfig, config_from
from .extract_stores import write_stores
from .forward import ExtractReport, prepare_model
from .models import LoadedBackbone, build_features, load_backbone, resolve_preprocessing
from .progress import NullProgress, ProgressFactory
from .store import (
    CheckpointRef,
    ComputeRef,
    DatasetRef,
    PreprocessRef,
    Provenance,
    Software,
    SplitData,
    store_path,
)

__all__ = [
    "COMPILE_MIN_PASSES",
    "ExtractConfig",
    "config_from",
    "ExtractPlan",
    "ExtractReport",
    "extract",
    "plan_extract",
    "prepare_model",
    "stratified_rows",
]

log = logging.getLogger(__name__)

LOAD_THREADS = 4  # checkpoints read, hashed and built at once

# --compile auto compiles from this many forward passes (images x (1 + views on train) x checkpoints): on one H200
# (REFERENCE.md) ResNet50 in bf16 ran 15,423 images/s eager and 23,623 compiled after a 14 s compile, 22.5 us saved
# an image, so the compile repays itself from about 620,000 passes (benchmarks/gpu_check.sh measures it again)
COMPILE_MIN_PASSES = 600_000


@dataclass(frozen=True)
class StorePlan:
    """One store to write: which checkpoint, which of its outputs (a layer), where."""

    checkpoint: CheckpointSpec
    output: int | None  # index into the model's outputs with several layers; None: its single output
    layer: str | None  # the layer asked for (None: the pre-logits features)
    name: str
    path: Path


@dataclass(frozen=True)
class ExtractPlan:
    """One resolved plan per extraction: where, how precise, which preprocessing and which stores.

    Built without reading a checkpoint or a dataset, so ``extract --dry-run`` can print it first.
    """

    device: torch.device
    precision: str
    backend: str
    compiled: bool
    transform: TransformSpec
    transform_source: str  # "dataset preset" or the architecture that defines it
    augment: AugmentSpec | None
    stores: tuple[StorePlan, ...]
    view_splits: tuple[str, ...]  # the splits that get views

    def describe(self) -> list[dict]:
        """One row per store, for ``featcache extract --dry-run``."""
        t = self.transform
        pre = f"{t.name} ({self.transform_source}): resize {t.resize} {t.interpolation}, crop {t.crop}"
        views = "-" if self.augment is None else f"{','.join(self.view_splits)}"
        return [
            {
                "store": sp.name,
                "checkpoint": sp.checkpoint.name,
                "arch": sp.checkpoint.arch,
                "layer": sp.layer or "pre-logits",
                "preprocessing": pre,
                "views on": views,
                "device": str(self.device),
                "precision": self.precision,
                "backend": self.backend,
                "compile": self.compiled,
                "path": str(sp.path),
            }
            for sp in self.stores
        ]


def plan_extract(cfg: ExtractConfig, passes: int | None = None, *, check_layers: bool = False) -> ExtractPlan:
    """Resolve device, precision, backend, compile, preprocessing and store names, before any work.

    With ``check_layers`` (``--dry-run``) each architecture is built, without its weights, to check ``--layers``
    and ``--pool`` at the crop size, as the extraction does when it loads the checkpoints.

    Args:
        cfg: the extraction.
        passes: the forward passes it will run (:func:`extract` counts them), for ``--compile auto``.
        check_layers: build each architecture to check the layers (``--dry-run``).

    Raises:
        ConfigError: unknown architecture, checkpoints whose preprocessing differs, --views without a training
            transform, two checkpoints that would write one store, or layers and a pool that do not fit.
    """
    device = distributed.local_device(resolve_device(cfg.device))
    precision = resolve_precision(cfg.precision, device)
    transform, source = cfg.transform, "dataset preset"
    if cfg.model_preprocessing:
        own = {c.arch: resolve_preprocessing(c.arch) for c in cfg.checkpoints if c.arch}
        found = {spec for spec in own.values() if spec is not None}
        if len(found) > 1 or (found and None in own.values()):
            names = ", ".join(f"{a}: {t.name if t else 'the dataset preset'}" for a, t in own.items())
            raise ConfigError(f"the checkpoints preprocess differently ({names}); extract them in separate calls, "
                              "or pass --transform to use one preset for all")  # fmt: skip
        if found:
            transform, source = found.pop(), next(a for a, t in own.items() if t is not None)
    augment = None
    view_splits: tuple[str, ...] = ()
    if cfg.views:
        if cfg.transform.augment is None:
            raise ConfigError(f"--views: transform preset '{cfg.transform.name}' defines no training augmentation "
                              "(a 'train:' entry in datasets.yaml)")  # fmt: skip
        augment = dataclasses.replace(cfg.transform.augment, size=transform.crop)
        view_splits = tuple(s for s in (cfg.splits or cfg.dataset.splits) if s == cfg.dataset.train_split)
        if not view_splits:
            raise ConfigError(f"--views are made for the train split ('{cfg.dataset.train_split}'), which --split "
                              "leaves out; add it")  # fmt: skip
    # auto: the research pipeline's PIL transforms on the CPU (pixel for pixel), batched on the GPU
    backend = cfg.backend if cfg.backend != "auto" else ("device" if device.type == "cuda" else "pil")
    big = device.type == "cuda" and (passes or 0) >= COMPILE_MIN_PASSES
    compiled = cfg.compile == "on" or (cfg.compile == "auto" and big)
    stores = []
    for c in cfg.checkpoints:
        base = cfg.store_name or c.name
        for out, layer in enumerate(cfg.layers or (None,)):
            name = f"{base}@{layer}" if layer else base  # one layer too: <ckpt> is the pre-logits store
            stores.append(StorePlan(c, out if len(cfg.layers) > 1 else None, layer, name,
                                    store_path(cfg.cache_dir, cfg.dataset.name, name)))  # fmt: skip
    seen: dict[Path, StorePlan] = {}
    for sp in stores:
        if sp.path in seen:
            other = seen[sp.path]
            raise ConfigError(
                f"checkpoints '{other.checkpoint.name}' ({other.checkpoint.path}) and '{sp.checkpoint.name}' "
                f"({sp.checkpoint.path}) would both write store {sp.path}; give them distinct names or extract "
                "them in separate calls with --store-name"
            )
        seen[sp.path] = sp
    if check_layers and cfg.layers:
        for arch in dict.fromkeys(c.arch for c in cfg.checkpoints if c.arch):
            build_features(arch, layers=cfg.layers, pool=cfg.pool, input_size=transform.crop)
    return ExtractPlan(device, precision, backend, compiled, transform, source, augment, tuple(stores), view_splits)


def _provenance(cfg: ExtractConfig, plan: ExtractPlan, sp: StorePlan, bb: LoadedBackbone, dim: int) -> Provenance:
    versions = (__version__, torch.__version__, torchvision.__version__, zarr.__version__, np.__version__)
    stat = Path(bb.path).stat()  # later runs compare size and mtime before hashing the file again
    return Provenance(
        software=Software(*versions, platform.python_version()),
        dataset=DatasetRef(cfg.dataset.name, cfg.dataset.format, cfg.limit),
        checkpoint=CheckpointRef(
            name=bb.name,
            arch=bb.arch,
            sha256=bb.sha256,
            path=str(bb.path),
            ema=sp.checkpoint.ema,
            stripped_prefix=bb.stripped_prefix,
            ignored_keys=tuple(bb.ignored_keys),
            size=stat.st_size,
            mtime_ns=stat.st_mtime_ns,
        ),
        layer=sp.layer or bb.layer,
        pool=(bb.pool or "") if sp.layer else "",
        feature_dim=dim,
        dtype=cfg.dtype,
        precision=plan.precision,
        transform=plan.transform.to_dict(),
        preprocess=PreprocessRef(plan.backend, plan.device.type),
        compute=ComputeRef(plan.device.type, channels_last=plan.device.type == "cuda", compiled=plan.compiled),
    )


def _split_data(dataset: ImageDataset, split: str, limit: int | None) -> tuple[ImageDataset, SplitData]:
    dataset = dataset.limited(limit)  # --limit: a stratified subset with its own fingerprint
    return dataset, SplitData(split, dataset.ids, dataset.targets, dataset.fingerprint(), dataset.classes)


def _load_backbones(cfg: ExtractConfig, plan: ExtractPlan) -> dict[str, LoadedBackbone]:
    """Every checkpoint read, hashed and built, several at once (file reads and hashing release the GIL); the
    first error in the order of ``--ckpt`` is raised."""
    load = functools.partial(load_backbone, trust=cfg.trust_checkpoint, layers=tuple(cfg.layers), pool=cfg.pool,
                             ignore_extra_keys=cfg.ignore_extra_keys, input_size=plan.transform.crop)  # fmt: skip
    with concurrent.futures.ThreadPoolExecutor(min(LOAD_THREADS, len(cfg.checkpoints)) or 1) as pool:
        futures = [pool.submit(load, c, ema_source=c.ema_source) for c in cfg.checkpoints]
        return {c.name: f.result() for c, f in zip(cfg.checkpoints, futures, strict=True)}


def _forward_passes(cfg: ExtractConfig, data: dict[str, SplitData]) -> int:
    """Images the backbones will run on (each split's rows, the train split's once more per view) times the
    checkpoints: what a compile must repay (:data:`COMPILE_MIN_PASSES`)."""
    train = cfg.dataset.train_split
    rows = sum(len(d.ids) * (1 + (cfg.views if split == train else 0)) for split, d in data.items())
    return rows * len(cfg.checkpoints)


def extract(cfg: ExtractConfig, progress: ProgressFactory = NullProgress) -> ExtractReport:
    """Extract the features of every checkpoint in ``cfg`` on every split; resume what was started.

    Returns:
        An :class:`ExtractReport`; a store already complete is reported as such and not touched.

    Raises:
        ConfigError, CheckpointError, DatasetError: bad input, before any store is created.
        BadImageError: an image cannot be decoded and ``on_bad_image`` is ``error``.
        StoreError, StoreLockedError, StoreMismatchError: the store cannot be written.
    """
    t_start = time.perf_counter()
    report = ExtractReport()
    splits = cfg.splits or cfg.dataset.splits
    # Validate data and checkpoints before creating any store: bad input leaves nothing behind.
    with report.phase("datasets listed"):
        built = {s: _split_data(build_dataset(cfg.dataset, s), s, cfg.limit) for s in splits}
    datasets = {s: ds for s, (ds, _) in built.items()}
    data = {s: d for s, (_, d) in built.items()}
    plan = plan_extract(cfg, passes=_forward_passes(cfg, data))
    starting = start_device(plan.device, plan.precision)  # CUDA, cuBLAS, cuDNN: while the checkpoints load
    with report.phase("checkpoints read, hashed, built"):
        backbones = _load_backbones(cfg, plan)
    maker = ViewMaker(plan.augment, cfg.views_seed) if plan.augment is not None else None
    dims = [backbones[sp.checkpoint.name].feature_dims[sp.output] if sp.output is not None
            else backbones[sp.checkpoint.name].feature_dim for sp in plan.stores]  # fmt: skip
    provs = [
        _provenance(cfg, plan, sp, backbones[sp.checkpoint.name], d) for sp, d in zip(plan.stores, dims, strict=True)
    ]
    if starting is not None:
        with report.phase("device started (rest of)"):
            starting.join()
    with distributed.group(plan.device) as world:
        shard = cfg.shard or (world.shard if world else None)
        if world is not None and cfg.shard is not None:
            raise ConfigError("--shard splits the work between independent tasks; under torchrun/srun the ranks do")
        if world is not None and world.rank != 0:
            progress = NullProgress  # one progress bar, rank 0's, for the whole group
        models = {name: bb.module for name, bb in backbones.items()}
        write_stores(cfg, plan, splits, datasets, data, models, provs, dims, maker, progress, shard, world, report)
        if world is not None:  # the report counts the group's images, not this rank's share
            report.images, report.view_images = world.total(report.images, report.view_images, device=plan.device)
    report.seconds = time.perf_counter() - t_start
    return report
