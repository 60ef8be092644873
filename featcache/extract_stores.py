"""Phase 1's store side: open every store that has work left, then per split create or reopen it, repair it,
run the batches (:class:`featcache.forward.SplitRun`) and mark it complete.

A store is never made smaller: a split keeps every view it holds, whatever ``--views`` says, and a repair
re-extracts exactly the failing chunks of the evaluation view and of every view held. A store that already
holds everything asked for is reported "already complete" without taking its lock or writing a byte, so a
read-only cache of complete stores extracts to a no-op.
"""

from __future__ import annotations

import contextlib
import logging

from .augment import ViewMaker
from .config import AugmentSpec
from .errors import ConfigError, StoreError, StoreIncompleteError
from .forward import ExtractReport, SplitRun, Target, prepare_model
from .progress import NullProgress
from .store import (
    Provenance,
    SplitReader,
    SplitWriter,
    StoreWriter,
    ViewsMeta,
    already_complete,
    chunk_rows_for,
    planned_meta,
)

__all__ = ["write_stores"]

log = logging.getLogger(__name__)


def write_stores(cfg, plan, splits, datasets, data, models, provs: list[Provenance], dims: list[int], maker,
                 progress, shard, world, report: ExtractReport | None = None) -> ExtractReport:  # fmt: skip
    """Write every store of ``plan`` (``provs`` and ``dims`` in its order): this shard's missing chunks of each
    split, then completion (rank 0 under torchrun, after a barrier). Counts and times go to ``report`` (a new one
    by default), which is returned.

    Raises:
        ConfigError: stores of one call hold views of different crops and no ``--views`` says which to make.
        StoreError, StoreLockedError, StoreMismatchError: a store cannot be written.
    """
    report = report if report is not None else ExtractReport()
    chunk_rows = cfg.chunk_rows or chunk_rows_for(max(dims), cfg.dtype)  # of all stores: the same with any skipped
    status = {sp.path: "already complete" for sp in plan.stores}
    views_held = {sp.path: 0 for sp in plan.stores}
    active = [k for k, sp in enumerate(plan.stores) if not _nothing_to_do(cfg, plan, splits, data, sp.path,
                                                                           provs[k], dims[k], chunk_rows)]  # fmt: skip
    stores: list[StoreWriter] = []
    try:
        with report.phase("stores opened"):
            for k in active:
                stores.append(StoreWriter(plan.stores[k].path, provs[k], overwrite=cfg.overwrite, shard=shard))
        if stores:
            with report.phase("models moved to the device"):
                models = {name: prepare_model(m, plan.device, plan.compiled) for name, m in models.items()}
        for split in splits if stores else ():
            want_views = cfg.views if split in plan.view_splits else 0
            targets, writers, counts = [], [], []
            with contextlib.ExitStack() as held, report.phase("stores opened"):  # metadata under each store's lock
                for s in stores:
                    held.enter_context(s.exclusive())
                for k, s in zip(active, stores, strict=True):
                    w = s.split(data[split], dims[k], cfg.dtype, chunk_rows=chunk_rows, compression=cfg.compression)
                    writers.append(w)
                    if cfg.repair and _repair(w):
                        status[s.path] = "repaired"
                    counts.append(max(want_views, w.meta.n_views))  # never fewer views than the split holds
                split_maker = maker if want_views else _maker_of_held_views(writers)
                for k, s, w, count in zip(active, stores, writers, counts, strict=True):
                    sp = plan.stores[k]
                    views = w.views(count, split_maker.seed, split_maker.describe()) if count else []
                    arrays = [w, *views]
                    targets += [Target(a, sp.checkpoint.name, sp.output) for a in arrays]
                    views_held[s.path] = max(views_held[s.path], count)
                    pending = [a for a in arrays if not a.complete]
                    if pending and status[s.path] == "already complete":
                        resumed = any(len(a.pending()) < a.n_chunks for a in pending)
                        status[s.path] = "resumed" if resumed else "written"
            run = SplitRun(cfg, plan, datasets[split], writers, targets, models, split_maker, max(counts), shard)
            scale = world.size if world is not None else 1  # rank 0's bar stands for the group: its rows x ranks
            bar = progress(run.n_rows * scale, f"{cfg.dataset.name}/{split}") if run.n_rows else NullProgress()
            run.execute(report, bar, scale)
            if world is not None:
                world.barrier()  # every rank's chunks are written: rank 0 can complete the split
            if world is None or world.rank == 0:
                with report.phase("stores completed"):
                    _complete(stores, writers, counts, status, shard)
                if cfg.repair:  # every chunk was checked, the failing ones redone: the old verdict no longer holds
                    for s in stores:
                        s.forget_verdict()
        for sp, dim in zip(plan.stores, dims, strict=True):
            report.stores.append(
                {
                    "name": sp.name,
                    "checkpoint": sp.checkpoint.name,
                    "path": str(sp.path),
                    "status": status[sp.path],
                    "dim": dim,
                    "rows": {split: len(data[split].ids) for split in splits},
                    "views": views_held[sp.path] if stores else (cfg.views if plan.view_splits else 0),
                }
            )
    finally:
        for s in stores:
            s.close()
    return report


def _nothing_to_do(cfg, plan, splits, data, path, prov: Provenance, dim: int, chunk_rows: int) -> bool:
    """Whether store ``path`` already holds every split and view asked for (never with --overwrite or --repair)."""
    if cfg.overwrite or cfg.repair:
        return False
    wanted = {}
    for split in splits:
        views = None
        if cfg.views and split in plan.view_splits:
            views = ViewsMeta(cfg.views_seed, plan.augment.to_dict(), cfg.views)
        wanted[split] = (planned_meta(data[split], dim, cfg.dtype, chunk_rows, cfg.compression), views)
    return already_complete(path, prov, wanted)


def _maker_of_held_views(writers: list[SplitWriter]) -> ViewMaker | None:
    """The view maker of the views the splits hold (to repair or finish them without ``--views``), or None."""
    held = [w for w in writers if w.meta.n_views]
    for w in held[1:]:
        a, b = held[0].meta.views, w.meta.views
        if (a.seed, a.augment) != (b.seed, b.augment):
            raise ConfigError(
                f"stores {held[0].store.path} and {w.store.path} hold views of other crops (seed {a.seed} vs "
                f"{b.seed}); extract them in separate calls"
            )
    if not held:
        return None
    v = held[0].meta.views
    try:
        spec = AugmentSpec(**{**v.augment, "scale": tuple(v.augment["scale"]), "ratio": tuple(v.augment["ratio"])})
    except (KeyError, TypeError) as e:
        raise StoreError(
            f"split '{held[0].name}' of store {held[0].store.path} records views whose augmentation cannot be "
            f"read ({e}); re-extract it with --overwrite"
        ) from None
    return ViewMaker(spec, v.seed)


def _repair(writer: SplitWriter) -> int:
    """Forget the chunks of a split (and of every view it holds) that fail verification; returns how many."""
    reader = SplitReader(writer.layout, writer.name, writer.meta)
    arrays = [reader] + [reader.view(k) for k in range(reader.n_views)]
    forgotten = 0
    for array in arrays:
        bad = array.bad_chunks()
        if bad:
            where = f"{writer.name} {array.label} of {writer.store.path}"
            log.warning("%s: re-extracting chunk(s) %s", where, sorted(bad))
            writer.invalidate(array.view_index, sorted(bad))
            forgotten += len(bad)
    return forgotten


def _complete(stores: list[StoreWriter], writers: list[SplitWriter], counts: list[int], status: dict, shard) -> None:
    """Mark each split complete once all its chunks are in: a shard whose peers are still running leaves it."""
    for s, w, count in zip(stores, writers, counts, strict=True):
        with s.exclusive():
            try:
                w.finalize(views=count)
            except StoreIncompleteError:
                if shard is None:
                    raise
                status[s.path] = f"shard {shard[0]}/{shard[1]} done; the others are missing"
