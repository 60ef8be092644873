"""``--solver knn``: weighted cosine k-NN (:func:`featcache.knn.run_knn`) as a :class:`Solver`."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import torch

from ..knn import KNNConfig, run_knn
from ..results_record import ResearchNumber
from ._base import SolverResult, Splits, typed_grid

__all__ = ["KnnSolver"]

logger = logging.getLogger(__name__)

NOTE = (
    "k and temperature selected on val with the rest of train as neighbours; test read once with all of "
    "train as neighbours"
)
FIXED_NOTE = (
    "DINO-style: k-NN top-1 on test at k = {k}, T = {t:g}, fixed in advance (not selected on val), all of train as "
    "neighbours"
)


class KnnSolver:
    """The (k, T) grid on val with fit as neighbours, chosen on val, test read once with all of train as neighbours.

    With ``config.fixed_k`` the record's research number is DINO's: test top-1 at that k (T = 0.07), fixed in
    advance. A note (also logged as a warning) names the ks capped at the fit rows (or the fixed k at the train
    rows).

    Args:
        config: the (k, T) grid.
    """

    name = "knn"

    def __init__(self, config: KNNConfig):
        self.config = config

    def fit_select(self, splits: Splits, n_features: int, n_classes: int, device: torch.device) -> SolverResult:
        out = run_knn(self.config, splits, n_features, n_classes, device=device)
        keys = ("k", "temperature")
        grid, selection = typed_grid(out["grid"], out["selected"], keys, keys, ("k_requested",), NOTE, n_classes >= 6)
        notes = _capped(out["grid"], len(splits["fit"][1]))
        fixed = out.get("fixed")
        research = None
        if fixed is not None:
            k, t = fixed["k"], fixed["temperature"]
            research = ResearchNumber(fixed["test_top1"], {"k": k, "temperature": t}, None, FIXED_NOTE.format(k=k, t=t))
            if "k_requested" in fixed:
                notes.append(f"k-NN: --knn-fixed-k {fixed['k_requested']} exceeds the {k} train rows: used k = {k}")
        for note in notes:
            logger.warning("%s", note)
        return SolverResult(grid, selection, research, dataclasses.asdict(self.config), out["timings"], tuple(notes))


def _capped(grid: list[Mapping[str, Any]], n_fit: int) -> list[str]:
    """A note naming the k-NN ks capped at the fit rows; [] when none was."""
    asked = sorted({k for e in grid for k in e.get("k_requested", ())})
    if not asked:
        return []
    return [
        f"k-NN: --knn-k {', '.join(map(str, asked))} {'exceeds' if len(asked) == 1 else 'exceed'} the {n_fit} fit "
        f"rows (the neighbours val is scored against): used k = {n_fit}; extract more rows or pass smaller --knn-k"
    ]
