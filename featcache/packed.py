"""Packed probes: several SGD probes of one dataset trained in one pass over the union of their stores.

A sweep probes every row and draw of a dataset, and cat1's five draws and cat5 read the same five stores. Run one by
one, each probe loads its stores and makes its own passes over the rows. Packed (:func:`run_packed`), the union of
their stores is loaded once and every probe's heads train on the same batches in one pass
(:class:`featcache.heads.PackedProbe`), each reading its own columns in its own order. BatchNorm's statistics are
per column, so each probe is normalised, trained, selected and recorded as it is alone: the same splits, views,
batches and arithmetic (``tests/test_packed.py`` compares packed and separate records). Each probe keeps its
selected head as it scored test, as alone: a probe that saves (``save_head``) or evaluates (``evaluate``) its head
packs too, and its head is written and scored after its record is yielded, as :func:`fit_probe` and
:func:`featcache.evaluate.probe_and_evaluate` do alone.

Probes pack when they share what fixes the batches (:func:`pack_key`): the SGD solver with the same heads (grid,
schedule, batch size, seed), val fraction, splits, views and memory options, on one device. Opened, they must also
have the same usable rows, their union must concatenate (the same samples, preprocessing and crops), and it must
be held in memory, resident or loaded per epoch (an epoch streamed from the stores is ordered by the stores' chunks,
so the union's order would not be each probe's). Probes that do not pack run alone, as
:func:`featcache.evaluate.probe_and_evaluate` runs them.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .concat import ConcatView
from .devices import resolve_device
from .errors import StoreMismatchError
from .evaluate import outcome_records, probe_and_evaluate
from .feed import plan_memory
from .heads import NonFiniteLossError
from .probe import ProbeConfig, ProbeRun, outcome_of
from .probe_splits import ProbeData, ProbeSplits, open_probe
from .results import EvaluationRecord, ProbeRecord
from .solvers import SgdSolver
from .store import Store

__all__ = ["pack_key", "plan_packs", "run_packed"]

log = logging.getLogger(__name__)


def pack_key(cfg: ProbeConfig) -> tuple | None:
    """What probes packed together must share (equal keys: they may pack); None: this probe runs alone (L-BFGS and
    k-NN have no heads to pack). Where a probe saves its head and what it scores it on fix no batch: not shared."""
    if cfg.solver is not None:
        return None
    return (cfg.heads, cfg.val_fraction, cfg.device, cfg.allow_transform_mix, cfg.train_split, cfg.test_split,
            cfg.views, cfg.max_memory, cfg.in_memory, cfg.dataset, cfg.allow_same_split,
            cfg.train_fraction)  # fmt: skip


def plan_packs(configs: Sequence[ProbeConfig]) -> list[list[int]]:
    """The probes grouped into packs by :func:`pack_key`: lists of indices into ``configs``, in order of first
    appearance; a probe with no key is a pack of its own."""
    packs: dict[object, list[int]] = {}
    for i, cfg in enumerate(configs):
        key = pack_key(cfg)
        packs.setdefault(("alone", i) if key is None else key, []).append(i)
    return list(packs.values())


def run_packed(configs: Sequence[ProbeConfig]) -> Iterator[ProbeRecord | EvaluationRecord]:
    """Run probes of one pack (see :func:`plan_packs`) in one pass; yield each one's record, in order (not yet
    appended to a log), each followed by the evaluations of its head (``evaluate``); a probe's head is written to
    its ``save_head`` before its record is yielded.

    When they cannot train together (rows, union or memory: see the module docstring), or a head's loss becomes
    non-finite, they run one by one instead, each record yielded when its probe ends, so the probes before a failing
    one keep their results.

    Raises:
        ValueError: the configurations do not share one :func:`pack_key`.
        StoreError, StoreMismatchError, ConfigError, ProbeError: as :func:`featcache.evaluate.probe_and_evaluate`
            raises them.
    """
    configs = list(configs)
    keys = {pack_key(c) for c in configs}
    if len(configs) > 1 and (None in keys or len(keys) > 1):
        raise ValueError("run_packed: the probes do not share one pack_key; group them with plan_packs")
    if len(configs) < 2:  # alone: with --eval, its evaluations follow its record
        yield from (r for c in configs for r in probe_and_evaluate(c))
        return
    t0 = time.perf_counter()
    configs = _share_stores(configs)
    datas = [open_probe(c) for c in configs]
    union, why = _union(configs[0], datas)
    if union is None:
        log.info("%d probes run one by one, not packed: %s", len(configs), why)
        yield from (r for c in configs for r in probe_and_evaluate(c))
        return
    device = resolve_device(configs[0].device)
    splits = ProbeSplits(union, configs[0], device)
    t_load = time.perf_counter()
    groups = [_columns(union, d) for d in datas]
    try:
        results = SgdSolver(configs[0].heads).fit_select_packed(splits, groups, union.train.dim, union.n_classes,
                                                                device)  # fmt: skip
    except NonFiniteLossError as e:  # alone, each good probe keeps its result and the bad one names itself
        log.info("packed probe %s: %s; the %d probes run one by one", e.group, e, len(configs))
        yield from (r for c in configs for r in probe_and_evaluate(c))
        return
    memory = f"{splits.memory}, packed x{len(configs)}"
    log.info("%d probes packed on %d store(s), %d features: %s", len(configs), len(union.stores), union.train.dim,
             memory)  # fmt: skip
    for cfg, data, result in zip(configs, datas, results, strict=True):
        timings = {"load_s": t_load - t0, **result.timings, "total_s": time.perf_counter() - t0}
        yield from outcome_records(cfg, outcome_of(ProbeRun(cfg, data, "sgd", result, timings, str(device), memory)))


def _share_stores(configs: list[ProbeConfig]) -> list[ProbeConfig]:
    """The configurations with every store opened once, shared by the probes that read it."""
    opened: dict[Path, Store] = {}
    for c in configs:
        for p, s in zip(c.stores, c.opened or [None] * len(c.stores), strict=True):
            if Path(p) not in opened:
                opened[Path(p)] = s if s is not None else Store(Path(p))
    return [dataclasses.replace(c, opened=tuple(opened[Path(p)] for p in c.stores)) for c in configs]


def _union(cfg: ProbeConfig, datas: list[ProbeData]) -> tuple[ProbeData | None, str]:
    """The probes' data as one: the union of their stores (in order of first use), their shared rows; or (None,
    why they cannot train together)."""
    d0 = datas[0]
    for d in datas[1:]:
        for what, same in (
            ("their splits differ", (d.train.split, d.test.split) == (d0.train.split, d0.test.split)),
            ("their classes differ", d.n_classes == d0.n_classes),
            ("their usable rows differ (images skipped in some stores)",
             np.array_equal(d.train.valid_rows, d0.train.valid_rows)
             and np.array_equal(d.test.valid_rows, d0.test.valid_rows)),
            ("their fit and val rows differ", np.array_equal(d.fit_rows, d0.fit_rows)
             and np.array_equal(d.val_rows, d0.val_rows)),
            ("they train on other views", d.views == d0.views),
        ):  # fmt: skip
            if not same:
                return None, what
    stores = list({s.path: s for d in datas for s in d.stores}.values())
    try:
        train = ConcatView(stores, d0.train.split, allow_transform_mix=cfg.allow_transform_mix)
        test = ConcatView(stores, d0.test.split, allow_transform_mix=cfg.allow_transform_mix)
        if d0.views.count:
            train.view(d0.views.count - 1)  # every store of the union holds the same crops
    except StoreMismatchError as e:
        return None, str(e)
    if d0.train_subset is not None:  # a low-shot subset (--train-fraction): train on its rows, as each probe does
        train = copy.copy(train)  # views taken from it keep the cut (ConcatView.view)
        train.valid_rows = np.intersect1d(train.valid_rows, d0.train.valid_rows)
    if not (
        np.array_equal(train.valid_rows, d0.train.valid_rows) and np.array_equal(test.valid_rows, d0.test.valid_rows)
    ):
        return None, "their usable rows differ (images skipped in some stores)"
    arrays = max(d0.views.count, 1)
    if (
        plan_memory(cfg.in_memory, cfg.max_memory, train, test, arrays, len(d0.fit_rows), len(d0.val_rows))
        == "streamed"
    ):
        return None, "their union would be streamed from the stores (a larger --max-memory holds it)"
    return ProbeData(stores, train, test, d0.n_classes, d0.fit_rows, d0.val_rows, d0.views, [], d0.train_subset), ""


def _columns(union: ProbeData, data: ProbeData) -> np.ndarray:
    """A probe's columns of the union's features: its stores' columns, in its order."""
    at = {s.path: i for i, s in enumerate(union.stores)}
    offsets = union.train.offsets
    return np.concatenate([np.arange(offsets[at[s.path]], offsets[at[s.path] + 1]) for s in data.stores])
