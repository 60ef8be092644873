"""What a sweep does with each probe's selected head (``save_heads``, ``eval``, ``per_model`` in its config): the
probe configurations that save and score it, and the extractions of the ``eval`` datasets' stores."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

from . import extract_config
from .config import CheckpointSpec, DatasetSpec, Paths, Registry
from .config.sweep import SweepConfig
from .errors import ConfigError
from .evaluate_config import eval_targets, target_for
from .extract_config import ExtractConfig
from .probe_config import ProbeConfig
from .store import store_path
from .sweep_check import Wanted, store_state

__all__ = ["eval_extracts", "head_path", "with_heads"]

Transform = Callable[[DatasetSpec, str | None, CheckpointSpec], dict | None]  # the preprocessing a store records


def head_path(paths: Paths, sweep: str, dataset: str, row: str, draw: int):
    """Where a sweep saves a probe's head: ``<cache>/heads/<sweep>/<dataset>/<row>-d<draw>.safetensors``."""
    return paths.cache / "heads" / sweep / dataset / f"{row}-d{draw}.safetensors"


def with_heads(
    sweep: SweepConfig, reg: Registry, paths: Paths, ds: DatasetSpec, row: str, draw: int, cfg: ProbeConfig
) -> ProbeConfig:
    """``cfg`` (the probe of ``row``, draw ``draw`` on ``ds``) with the sweep's saved head and evaluations.

    The ``eval`` datasets are scored on their stores as the sweep extracts them, with their own registered
    preprocessing (as the research code scores shifted test sets): a transform other than the head's is allowed
    there, and noted in each record. ``per_model`` scores each store's block alone on the probe's own test split.
    """
    names = [p.name.removesuffix(".zarr") for p in cfg.stores]
    try:
        asked = eval_targets(reg, paths, sweep.eval, names)
    except ConfigError as e:
        raise ConfigError(f"{sweep.source}: eval: {e}") from None
    targets = [dataclasses.replace(t, allow_transform_mix=True) for t in asked]
    if sweep.per_model and len(names) > 1:
        targets.append(target_for(reg, paths, ds.name, store_names=names, split=ds.test_split, per_model=True))
    head = head_path(paths, sweep.name, ds.name, row, draw) if sweep.save_heads else None
    return dataclasses.replace(cfg, save_head=head, evaluate=tuple(targets)) if head or targets else cfg


def eval_extracts(
    sweep: SweepConfig, reg: Registry, paths: Paths, draws: dict[str, list], transform: Transform
) -> list[tuple[str, ExtractConfig, tuple[str, ...], tuple[str, ...]]]:
    """(dataset, extraction, reasons, refusals) of each ``eval`` dataset (not one of the sweep's own) whose stores
    are not all ready: every checkpoint of the sweep, no views, the dataset's default preprocessing.

    Args:
        draws: each row's draws, expanded to checkpoint specs.
        transform: ``transform(ds, name, spec)``, the preprocessing extract would record (None: unknown here).
    """
    own, e, jobs = {d.name for d in sweep.datasets}, sweep.extract, []
    specs = list({c.name: c for draw in draws.values() for cs in draw for c in cs}.values())
    for name in dict.fromkeys(t.partition("@")[0] for t in sweep.eval):
        if name in own:
            continue
        ds, where = reg.dataset(name), f"{sweep.source}: eval ({name})"
        want = Wanted(0, None, e.views_seed, e.dtype, e.precision, where, f"{sweep.source}: extract")
        todo, reasons, refusals = [], [], []
        for c in specs:
            made = functools.partial(transform, ds, None, c)
            store, why, refusal = store_state(store_path(paths.cache, ds.name, c.name), c, ds, want, made)
            if store is None:
                todo.append(c)
                reasons.append(why)
                refusals += [refusal] if refusal else []
        if todo:
            cfg = extract_config.config_from(reg, paths, ckpt=todo, dataset=ds, options=e, views=0)
            jobs.append((ds.name, cfg, tuple(reasons), tuple(refusals)))
    return jobs
