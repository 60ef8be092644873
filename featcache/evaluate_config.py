"""What to score a saved head on: :class:`EvalTarget` (``probe --eval``, a sweep's ``eval:``, ``featcache evaluate``)
and the configuration of ``featcache evaluate`` (:class:`EvaluateConfig`, built by :func:`config_from`).

Torch-free: a target is resolved against a head's header (:func:`resolve_target`: the stores opened, their layout
checked block for block, the split chosen, the labels mapped to the head's classes) before anything is scored, and
``probe --eval`` resolves its targets before it trains, so a mistake costs no training.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Paths, ProbeOptions, Registry
from .errors import ConfigError, StoreError
from .head_layout import FeatureBlock, check_layout, class_mask, layout_problem, read_header
from .store import Store, resolve_stores, store_path

__all__ = ["EvalTarget", "EvaluateConfig", "Resolved", "config_from", "eval_targets", "resolve_target", "target_for"]

SPLIT_SEP = "@"  # --eval DATASET@SPLIT (a colon is part of imagefolder:<path> names)
SHIFT_FORMAT = "imagenet-shift"  # featcache.datasets.shifted, whose class_subset means the classes it holds


@dataclass(frozen=True)
class EvalTarget:
    """A split of some stores to score a head on.

    ``split`` None: the dataset's test split (``test_split`` of its registry entry), else the stores' test or val.
    ``class_subset``: the dataset's ``options.class_subset`` (which head class each label means), if it has one.
    """

    dataset: str
    stores: tuple[Path, ...]
    split: str | None = None
    test_split: str | None = None
    class_subset: tuple[Any, ...] | None = None
    per_model: bool = False
    allow_transform_mix: bool = False


@dataclass(frozen=True)
class Resolved:
    """A target as it is scored: its stores opened, its split, and its labels' classes among the head's."""

    stores: tuple[Store, ...]
    split: str
    mask: tuple[int, ...] | None  # the head's class of each label; None: the same classes
    class_map: str  # same | by name | class_subset
    classes: int  # classes scored
    notes: tuple[str, ...] = ()


def target_for(
    reg: Registry,
    paths: Paths,
    dataset: str,
    *,
    store_names: Sequence[str],
    split: str | None = None,
    stores: str | Sequence[str | os.PathLike] | None = None,
    per_model: bool = False,
    allow_transform_mix: bool = False,
) -> EvalTarget:
    """The target ``dataset`` (split ``split``) of a head whose stores are ``store_names``.

    Args:
        reg, paths: the registries and roots.
        dataset: a registered dataset (its test split and ``class_subset`` are read), or any name whose stores are
            in the cache or given by ``stores``.
        store_names: the head's stores, in order: the target's are these names under ``<cache>/<dataset>/``.
        stores: other stores instead (a ``--stores`` value, or paths), in the head's order.
    Raises:
        ConfigError: an unknown dataset without stores, a malformed ``class_subset``.
    """
    try:
        spec = reg.dataset(dataset)
    except ConfigError:  # stores of a dataset registered no more, or elsewhere, still have a head scored on them
        if stores is None and not store_path(paths.cache, dataset, "x").parent.is_dir():
            raise
        spec = None
    dataset = spec.name if spec is not None else dataset  # imagefolder:<path> as extract names it: its absolute path
    if stores is None:  # a missing store is named when the target is resolved, with the command that makes it
        store_paths = tuple(store_path(paths.cache, dataset, name) for name in store_names)
    elif isinstance(stores, str):
        store_paths = tuple(resolve_stores(stores, dataset, paths.cache, reg.sets))
    else:
        store_paths = tuple(Path(p) for p in stores)
    subset = spec.options.get("class_subset") if spec is not None else None
    if spec is not None and spec.format == SHIFT_FORMAT:
        # there the option names the classes the set must hold (featcache.class_subsets), checked at extraction,
        # not a head class per label: its stores record each label's wnid, so labels are matched by name
        subset = None
    if subset is not None and (isinstance(subset, str) or not isinstance(subset, Sequence)):
        raise ConfigError(f"dataset '{dataset}': options.class_subset must be a list (a class of the head per label "
                          f"of the dataset), got {subset!r}")  # fmt: skip
    return EvalTarget(dataset, store_paths, split, spec.test_split if spec is not None else None,
                      tuple(subset) if subset is not None else None, per_model, allow_transform_mix)  # fmt: skip


def eval_targets(
    reg: Registry, paths: Paths, value: str | Sequence[str] | None, store_names: Sequence[str]
) -> tuple[EvalTarget, ...]:
    """The targets of ``--eval D1,D2@split`` (or a sweep's ``eval:`` list) for a probe of ``store_names``.

    Raises:
        ConfigError: an unknown dataset, a dataset named twice.
    """
    if not value:
        return ()
    items = [t.strip() for t in value.split(",")] if isinstance(value, str) else [str(t).strip() for t in value]
    out, seen = [], set()
    for item in items:
        if not item:
            continue
        dataset, _, split = item.partition(SPLIT_SEP)
        if (dataset, split) in seen:
            raise ConfigError(f"--eval names {item} twice; name each dataset (and split) once")
        seen.add((dataset, split))
        out.append(target_for(reg, paths, dataset, store_names=store_names, split=split or None))
    return tuple(out)


def resolve_target(
    target: EvalTarget,
    layout: Sequence[FeatureBlock],
    classes: Sequence[str] | None,
    opened: Sequence[Store] | None = None,
) -> Resolved:
    """Open ``target``'s stores, check them against a head's ``layout`` and map its split's labels to ``classes``
    (None: not known yet, not checked).

    Raises:
        StoreError: a store is missing (the extract command that makes it is named), or lacks the split.
        StoreMismatchError: a store differs from the head's block (store k and the field named).
        ConfigError: classes the head does not know, a malformed ``class_subset``.
    """
    where = f"dataset '{target.dataset}'"
    stores = list(opened) if opened is not None else []
    for k, path in enumerate(target.stores[len(stores) :], len(stores)):
        if not (path / "zarr.json").exists():
            ck = layout[k].checkpoint if k < len(layout) else path.stem
            raise StoreError(f"no store {path} to score the head on; create it with `featcache extract --ckpt {ck} "
                             f"--dataset {target.dataset}`")  # fmt: skip
        stores.append(Store(path))
    got = [FeatureBlock.of(s.name, s.provenance) for s in stores]
    check_layout(layout, got, target.allow_transform_mix, f"{where} ({', '.join(str(s.path) for s in stores)})")
    first = stores[0]
    split = target.split or next((s for s in (target.test_split, "test", "val") if s in first.splits), None)
    for s in stores:
        if split is None or split not in s.splits:
            raise StoreError(f"store {s.path} has no split '{split}' (it has {', '.join(s.splits)}); pass --split")
    split_classes = list(first.split_meta(split).classes)
    notes = []
    if classes is None:  # the head's classes are not known yet (a probe's, before it trains)
        mask, how = None, "same"
    elif not split_classes and target.class_subset is None:
        mask, how = None, "same"
        notes.append(f"split '{split}' records no class names: its labels are taken as the head's classes")
    else:
        mask = class_mask(classes, split_classes, target.class_subset, f"{where} split '{split}'")
        how = "class_subset" if target.class_subset is not None else "same" if mask is None else "by name"
    differs = layout_problem(layout, got, False)
    if differs:
        notes.append(f"scored with --allow-transform-mix: {differs.split('; ')[0]}")
    n = len(mask) if mask is not None else len(classes or ())
    return Resolved(tuple(stores), split, mask, how, n, tuple(notes))


@dataclass(frozen=True)
class EvaluateConfig:
    """One ``featcache evaluate`` call: the head file and what to score it on."""

    head: Path
    target: EvalTarget
    device: str = ProbeOptions.device
    tag: str = ""
    resolved: Resolved | None = field(default=None, compare=False, repr=False)


def config_from(
    reg: Registry,
    paths: Paths,
    *,
    head: str | os.PathLike,
    dataset: str | None = None,
    split: str | None = None,
    stores: str | Sequence[str | os.PathLike] | None = None,
    per_model: bool = False,
    allow_transform_mix: bool = False,
    device: str = ProbeOptions.device,
    tag: str = "",
) -> EvaluateConfig:
    """The evaluation of these options, as ``featcache evaluate`` runs it (the target resolved: stores opened and
    checked against the head, labels mapped to its classes).

    Args:
        head: a head written by ``--save-head``.
        dataset: the dataset to score it on (default: the one the given ``stores`` hold, else the one it was trained
            on).
        split: the split (default: the dataset's test split).
        stores: stores instead of the head's store names under ``<cache>/<dataset>/``, in the head's order.
        per_model: also score each store's block of the features alone.
        allow_transform_mix: score stores whose transform, dtype or precision differ from the head's.
    Raises:
        ConfigError, StoreError, StoreMismatchError: see :func:`read_header`, :func:`target_for`,
            :func:`resolve_target`.
    """
    header = read_header(head)
    trained_on, given = str(header.probe.get("dataset", "")), dataset is not None
    if dataset is None and stores is not None:  # the stores say which dataset they hold
        dataset = _dataset_of(reg, paths, stores, trained_on)
    dataset = dataset or trained_on
    target = target_for(reg, paths, dataset, store_names=[b.store for b in header.layout], split=split,
                        stores=stores, per_model=per_model, allow_transform_mix=allow_transform_mix)  # fmt: skip
    resolved = resolve_target(target, header.layout, header.classes)
    held = resolved.stores[0].provenance.dataset.name
    if given and held != target.dataset:  # another dataset's test split and class_subset would score these stores
        raise ConfigError(f"store {resolved.stores[0].path} holds dataset '{held}', not '{dataset}'; pass --dataset "
                          f"{held}, or leave --dataset out with --stores")  # fmt: skip
    return EvaluateConfig(Path(head), target, device, tag, resolved)


def _dataset_of(reg: Registry, paths: Paths, stores: str | Sequence[str | os.PathLike], trained_on: str) -> str:
    """The dataset the first of ``stores`` holds (store names are the head's dataset's); ``trained_on`` when it
    cannot be read (the missing store is named when the target is resolved)."""
    first = resolve_stores(stores, trained_on, paths.cache, reg.sets)[0] if isinstance(stores, str) else stores[0]
    try:
        return Store(first).provenance.dataset.name
    except (StoreError, OSError):
        return trained_on
