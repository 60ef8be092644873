"""Whether a sweep's stores hold what it asks for, and whether its plan can run, checked before anything runs.

A store is *ready* when it is complete, has the views asked for, and was extracted as the sweep asks: the same
``limit``, dtype, precision and preprocessing backend (unless ``auto``), fidelity (a strict sweep takes only strict
stores), preprocessing and views seed, from the checkpoint file as it is now
(size and mtime as recorded, else the same sha256). A store extracted otherwise is *stale*: its probes stay
pending, and running the sweep refuses it (extraction never overwrites a store) with one line saying what differs
and what to do. :func:`check_plan` raises, before any work, what running a plan would fail on: stale stores,
checkpoint files missing or recording another training step than their row's (those of stores already extracted
too, when the files are here), datasets missing on disk,
extraction options this machine cannot honour.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoints import check_step, checkpoint_step, file_changed
from .config import CheckpointSpec, DatasetSpec
from .datasets import build_dataset
from .devices import resolve_device
from .errors import CheckpointError, StoreError, StoreMismatchError
from .extract import plan_extract
from .store import Store, identity_diff

if TYPE_CHECKING:
    from .sweep import SweepPlan
    from .sweep_config import SweepConfig

__all__ = ["Wanted", "store_state", "check_plan"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wanted:
    """What a sweep asks of one dataset's stores; ``where`` and ``extract_where`` name the config keys."""

    views: int
    limit: int | None
    views_seed: int
    dtype: str
    precision: str  # "auto": whatever the extracting machine chose
    where: str  # "<file>: datasets.<name>"
    extract_where: str  # "<file>: extract"
    preprocess: str = "auto"  # the --preprocess backend; "auto": whatever the extracting machine chose
    fidelity: str = "fast"  # strict: only stores of the research pipeline (featcache.fidelity); fast: any


def _stale(store: Store, spec: CheckpointSpec, ds: DatasetSpec, want: Wanted, transform: dict | None) -> str:
    """How ``store`` differs from what the sweep would extract now ("" when it does not)."""
    prov = store.provenance
    ref = prov.checkpoint
    now = file_changed(spec.path, ref.sha256, ref.size, ref.mtime_ns)
    if now is not None:
        return (f"was extracted from an older {spec.path} (sha256 {ref.sha256[:12]}, the file's is now {now[:12]}); "
                "delete the store to extract it again from this file, or put the old file back")  # fmt: skip
    differs = []
    if prov.dataset.limit != want.limit:
        differs.append(("limit", prov.dataset.limit, want.where, want.limit))
    if prov.dtype != want.dtype:
        differs.append(("dtype", prov.dtype, want.extract_where, want.dtype))
    if want.precision != "auto" and prov.precision != want.precision:
        differs.append(("precision", prov.precision, want.extract_where, want.precision))
    if want.preprocess != "auto" and prov.preprocess.backend != want.preprocess:
        differs.append(("preprocess", prov.preprocess.backend, want.extract_where, want.preprocess))
    if want.fidelity == "strict" and prov.fidelity != "strict":  # e.g. compiled: what the fields above miss
        differs.append(("fidelity", prov.fidelity, want.extract_where.rsplit(": ", 1)[0] + ": fidelity", "strict"))
    if transform is not None and prov.transform != transform:
        keys = identity_diff(prov.transform, transform)
        old, new = f"'{prov.transform_name}'", f"'{transform.get('name')}'"
        old += f" ({', '.join(keys)} other than now)" if old == new else ""
        differs.append(("transform", old, want.where, new))
    made = store.split_meta(ds.train_split).views if ds.train_split in store.splits else None
    if want.views and made is not None and made.seed != want.views_seed:
        differs.append(("views seed", made.seed, want.extract_where, want.views_seed))
    if not differs:
        return ""
    what, have, where, asked = differs[0]
    fix = "delete the store or point --cache-dir elsewhere"
    return f"was extracted with {what} {have} but {where} asks for {what} {asked}; {fix}"


def store_state(
    path: Path, spec: CheckpointSpec, ds: DatasetSpec, want: Wanted, transform: Callable[[], dict | None]
) -> tuple[Store | None, str, str]:
    """(the store if it is ready, else None; why not, for ``--dry-run``; the refusal when it is stale, else "").

    ``transform()`` gives the preprocessing the sweep would extract ``spec`` with (its named parameters, as a
    store records them; None when unknown here, then not compared); it is called only when the store exists.
    """
    if not (path / "zarr.json").exists():
        return None, "missing", ""
    try:
        store = Store(path)
        stale = _stale(store, spec, ds, want, transform())
        if stale:
            return None, "stale", f"store {path} {stale}"
        for split in ds.splits:
            if split not in store.splits or not store.split_meta(split).complete:
                return None, "incomplete", ""
        have = store.split_meta(ds.train_split).n_views
    except StoreError:
        return None, "unreadable", ""  # extract says why, or repairs it
    return (store, "ready", "") if have >= want.views else (None, f"{have}/{want.views} views", "")


def _missing(sweep: SweepConfig, specs: list[CheckpointSpec]) -> CheckpointError:
    shown = ", ".join(str(c.path) for c in specs[:3]) + (f", ... ({len(specs)} in all)" if len(specs) > 3 else "")
    # a sweep whose checkpoints a command makes (the demo's) says so rather than only where the files should be
    fix = (
        f"`{sweep.checkpoints_from}` makes them"
        if sweep.checkpoints_from
        else "put them there or point --checkpoint-dir at them"
    )
    return CheckpointError(
        f"sweep {sweep.name}: {len(specs)} checkpoint file(s) to extract are missing: {shown}; {fix}"
    )


def _step_or_none(path: Path) -> int | None:
    """The step a checkpoint whose stores exist records; None when it cannot be read without ``--trust-checkpoint``
    (its stores were made with it: the file is not read again)."""
    try:
        return checkpoint_step(path)
    except CheckpointError as e:
        log.debug("%s: training step not read (%s)", path, e)
        return None


def check_plan(plan: SweepPlan) -> None:
    """Raise what running ``plan`` would fail on, before anything runs (``featcache sweep --dry-run`` too).

    Raises:
        StoreMismatchError: a store was extracted otherwise than the sweep asks (the first one named, and how many).
        CheckpointError: checkpoint files to extract from are missing (naming what makes them, when the sweep says),
            unreadable, or record another training step than their row's ``steps_per_model`` (any checkpoint file of
            the rows that is here: the report's steps per model come from the rows).
        ConfigError, DatasetError: a dataset to extract is missing or malformed on disk, or an extraction or probe
            option this machine cannot honour (``device: cuda`` without one, ...).
    """
    refusals = [r for e in plan.extracts for r in e.refusals]
    if refusals:
        more = f" ({len(refusals) - 1} more store(s) like it)" if len(refusals) > 1 else ""
        raise StoreMismatchError(refusals[0] + more)
    specs = {c.path: c for e in plan.extracts for c in e.config.checkpoints}
    missing = [c for c in specs.values() if not c.path.is_file()]
    if missing:
        raise _missing(plan.sweep, missing)
    for c in specs.values():  # the step the file records (read without its tensors), as extraction checks it
        if c.steps is not None:
            check_step(c.path, checkpoint_step(c.path), c.steps, c.steps_source)
    for c in plan.checkpoints:  # extracted before: the table's steps per model must still be what the file says
        if c.steps is not None and c.path not in specs and c.path.is_file():
            check_step(c.path, _step_or_none(c.path), c.steps, c.steps_source)
    for e in plan.extracts:
        for split in e.config.splits or e.config.dataset.splits:
            build_dataset(e.config.dataset, split)
        plan_extract(e.config)
    if plan.pending():
        resolve_device(plan.sweep.probe.device)
