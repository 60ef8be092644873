"""Score a saved head: ``featcache evaluate``, ``probe --eval`` and a sweep's ``eval:``, one record each.

A head scores any stores with its feature layout (the same checkpoints, layer and pooling, block for block; see
:mod:`featcache.head_layout`), on any split, with its labels mapped to the head's classes by name or by the
dataset's ``class_subset``. It reads the split's rows in the blocks and arithmetic its probe scored test with
(:mod:`featcache.linear_head`), so on the probe's own stores and test split, on the same device, it gives the
probe's ``selected.test_top1`` bit for bit. ``per_model`` also scores each store's block of the features alone.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import numpy as np
import torch

from . import __version__
from .classmap import check_class_map
from .concat import ConcatView
from .devices import resolve_device
from .errors import ConfigError
from .evaluate_config import EvalTarget, EvaluateConfig, Resolved, config_from, resolve_target
from .probe import ProbeConfig, ProbeOutcome, fit_probe
from .results import BlockScore, EvaluationRecord, ProbeRecord, StoreUsed
from .saved_head import SavedHead, read_head

__all__ = ["EvaluateConfig", "config_from", "evaluate_head", "outcome_records", "probe_and_evaluate", "run_evaluate"]


class _FiniteRows:
    """Rows of a split as a row source, refused (store and split named) where they hold NaN or Inf."""

    def __init__(self, view: ConcatView, rows: np.ndarray):
        self.view, self.rows = view, rows

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, idx: np.ndarray) -> np.ndarray:
        rows = self.rows[np.asarray(idx)]
        return self.view.load(rows, block=max(1, len(rows)), finite=True)


def evaluate_head(
    saved: SavedHead,
    target: EvalTarget,
    *,
    device: torch.device,
    head_path: str = "",
    tag: str = "",
    resolved: Resolved | None = None,
) -> EvaluationRecord:
    """Score ``saved`` (on ``device``) on ``target``; the record is returned, not yet appended.

    Raises:
        StoreError, StoreMismatchError: stores missing, damaged or of another layout (store k and the field named).
        ConfigError: classes the head does not know, labels outside the split's classes.
    """
    t0 = time.perf_counter()
    header = saved.header
    r = resolved or resolve_target(target, header.layout, header.classes)
    for store in r.stores:
        check_class_map(store, r.split)
    view = ConcatView(r.stores, r.split, allow_transform_mix=target.allow_transform_mix)
    rows = view.valid_rows
    y = view.labels[rows]
    if len(y) and int(y.max()) >= r.classes:
        raise ConfigError(f"dataset '{target.dataset}' split '{r.split}' has labels up to {int(y.max())}, but "
                          f"{r.classes} classes to score: its class list is damaged; extract it again")  # fmt: skip
    scores = saved.to(device).score(_FiniteRows(view, rows), y, r.mask, per_model=target.per_model)
    top5 = r.classes >= 6  # as a probe: no top-5 below 6 classes
    blocks = tuple(BlockScore(s.name, t1, t5 if top5 else None)
                   for s, (t1, t5) in zip(r.stores, scores.blocks, strict=False))  # fmt: skip
    probe = header.probe
    dataset = r.stores[0].provenance.dataset.name
    notes = r.notes
    if (dataset, r.split) == (probe.get("dataset"), probe.get("train_split")):  # as probe's --allow-same-split says
        notes += (f"split '{r.split}' is the split the head was trained on: this number is not a test",)
    return EvaluationRecord(
        id=uuid.uuid4().hex[:12],
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        dataset=dataset,
        split=r.split,
        stores=tuple(StoreUsed.of(s.name, s.path, s.provenance, d) for s, d in zip(r.stores, view.dims, strict=True)),
        rows=len(rows),
        head=head_path,
        head_key=str(probe.get("key", "")),
        head_id=str(probe.get("id", "")),
        head_dataset=str(probe.get("dataset", "")),
        features=f"cat{len(header.layout)}",
        solver=str(probe.get("solver", "")),
        top1=scores.top1,
        top5=scores.top5 if top5 else None,
        classes=r.classes,
        class_map=r.class_map,
        per_model=blocks,
        tag=tag,
        notes=notes,
        device=str(device),
        timings={"total_s": time.perf_counter() - t0},
        versions={"featcache": __version__, "torch": torch.__version__},
    )


def run_evaluate(cfg: EvaluateConfig) -> EvaluationRecord:
    """``featcache evaluate``: read the head, score it on the configured target.

    Raises:
        See :func:`featcache.saved_head.read_head` and :func:`evaluate_head`.
    """
    device = resolve_device(cfg.device)
    saved = read_head(cfg.head, device)
    return evaluate_head(saved, cfg.target, device=device, head_path=str(cfg.head), tag=cfg.tag,
                         resolved=cfg.resolved)  # fmt: skip


def probe_and_evaluate(cfg: ProbeConfig) -> Iterator[ProbeRecord | EvaluationRecord]:
    """The probe's record, then one evaluation record per ``cfg.evaluate`` target, each as soon as it is made (so a
    caller appends the probe's record before any evaluation runs).

    Raises:
        See :func:`featcache.probe.run_probe` and :func:`evaluate_head`.
    """
    yield from outcome_records(cfg, fit_probe(cfg))


def outcome_records(cfg: ProbeConfig, outcome: ProbeOutcome) -> Iterator[ProbeRecord | EvaluationRecord]:
    """A solved probe's record, then one evaluation record per ``cfg.evaluate`` target of its head, each as soon as
    it is made (a probe alone: :func:`probe_and_evaluate`; packed: :func:`featcache.packed.run_packed`).

    Raises:
        See :func:`evaluate_head`.
    """
    yield outcome.record
    if not cfg.evaluate:
        return
    device = resolve_device(cfg.device)
    path = str(cfg.save_head or "")
    for target in cfg.evaluate:
        yield evaluate_head(outcome.head, target, device=device, head_path=path, tag=cfg.tag)
