"""The solver interface: what every solver is handed (:class:`Splits`) and what it returns (:class:`SolverResult`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ..linear_head import LinearHead
from ..results_record import GridPoint, ResearchNumber, Selection

__all__ = ["Solver", "SolverResult", "Splits", "typed_grid"]


class Splits(Protocol):
    """The probe's data for a solver, each set read when first asked for.

    ``splits[name]``: (features, labels) of ``"fit"``, ``"val"``, ``"train"`` (fit + val) or ``"test"``, on the
    evaluation view; features a tensor or a row source, labels a numpy array.
    ``training(name)``: (feed, labels) of ``"fit"`` or ``"train"``: what SGD heads train on, epoch by epoch (on the
    augmented views when the probe uses them; a new :class:`featcache.feed_batches.Feed` each call).
    ``sources``: the stores, as an error names them.
    """

    sources: str

    def __getitem__(self, name: str) -> tuple[Any, np.ndarray]: ...

    def training(self, name: str) -> tuple[Any, np.ndarray]: ...


@dataclass(frozen=True)
class SolverResult:
    """What a solver gives the record: the grid points, the one selected on val, the research number (SGD's best
    test accuracy, selected on test; k-NN's at a fixed k, DINO's; None for L-BFGS), its hyperparameters, timings
    (seconds) and notes; and the selected head as it scored test (None for k-NN, which has none), for a saved head."""

    grid: tuple[GridPoint, ...]
    selection: Selection
    research: ResearchNumber | None
    hyperparameters: dict[str, Any]
    timings: dict[str, float]
    notes: tuple[str, ...] = field(default=())
    head: LinearHead | None = None


class Solver(Protocol):
    """Fits its grid on ``splits``, selects on val, reads test at the selection; ``name`` is the record's solver."""

    name: str

    def fit_select(self, splits: Splits, n_features: int, n_classes: int, device: torch.device) -> SolverResult: ...


def typed_grid(
    entries: Sequence[Mapping[str, Any]],
    selected: Mapping[str, Any],
    keys: Sequence[str],
    point: Sequence[str],
    extra: Sequence[str],
    method: str,
    top5: bool,
) -> tuple[tuple[GridPoint, ...], Selection]:
    """Grid points and the selection from a protocol function's plain entries (L-BFGS's path, k-NN's grid).

    Args:
        entries: one dict per grid point, with ``keys``, ``val_top1`` and the ``extra`` keys it has.
        selected: the selected point's dict, with ``test_top1`` and ``test_top5`` (test is read there only).
        keys: the point's parameters as recorded; ``point``: those that identify it.
        extra: solver details kept with each point.
        method: how the selection was made, for the record.
        top5: whether top-5 is reported (6 classes or more).
    """
    grid = tuple(
        GridPoint(
            params={k: e[k] for k in keys},
            val_top1=e["val_top1"],
            test_top1=selected["test_top1"] if all(e[k] == selected[k] for k in point) else None,
            extra={k: e[k] for k in extra if k in e},
        )
        for e in entries
    )
    selection = Selection(
        params={k: selected[k] for k in keys if k in selected},
        val_top1=selected["val_top1"],
        test_top1=selected["test_top1"],
        test_top5=selected["test_top5"] if top5 else None,
        method=method,
    )
    return grid, selection
