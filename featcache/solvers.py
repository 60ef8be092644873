"""The probe's other solvers on the same splits and into the same record: L-BFGS logistic regression, k-NN.

:mod:`featcache.probe` prepares the splits (fit and val carved from train, test) and the record around them;
this module runs :func:`featcache.logreg.run_logreg` or :func:`featcache.knn.run_knn` and turns what they return
into the record's grid points and selection. Both select on val and read test once, at the chosen point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from .knn import KNNConfig, run_knn
from .logreg import LogRegConfig, run_logreg
from .results import GridPoint, Selection

__all__ = ["SOLVERS", "SolverConfig", "run_solver"]

SOLVERS = ("sgd", "lbfgs", "knn")
SolverConfig = LogRegConfig | KNNConfig

NOTES = {
    "lbfgs": "L2 strength selected on a held-out val split of train (a path from strong to weak, warm-started); "
    "refit on the whole train split at that strength, test read once",
    "knn": "k and temperature selected on val with the rest of train as neighbours; test read once with all of "
    "train as neighbours",
}


def run_solver(
    config: SolverConfig, splits: Mapping[str, tuple], n_features: int, n_classes: int, device: torch.device
) -> tuple[tuple[GridPoint, ...], Selection, dict[str, Any], dict[str, float]]:
    """Run L-BFGS or k-NN; returns (grid points, selection, hyperparameters, timings) for the record.

    ``splits``: ``"fit"``, ``"val"``, ``"train"``, ``"test"`` -> (features, labels).
    """
    top5 = n_classes >= 6  # top-5 is not reported below 6 classes
    if isinstance(config, LogRegConfig):
        out = run_logreg(config, splits, n_features, n_classes, device=device)
        # the point is its strength (its C depends on how many rows it was fitted on: fit here, train in the refit)
        entries, keys, point = out["path"], ("strength", "C"), ("strength",)
        extra = ("iterations", "objective", "grad_max", "stop", "converged")
    else:
        out = run_knn(config, splits, n_features, n_classes, device=device)
        entries, keys, point, extra = out["grid"], ("k", "temperature"), ("k", "temperature"), ()
    sel = out["selected"]
    heads = tuple(
        GridPoint(
            params={k: e[k] for k in keys},
            val_top1=e["val_top1"],
            test_top1=sel["test_top1"] if all(e[k] == sel[k] for k in point) else None,  # test is read once
            extra={k: e[k] for k in extra},
        )
        for e in entries
    )
    selection = Selection(
        params={k: sel[k] for k in keys if k in sel},
        val_top1=sel["val_top1"],
        test_top1=sel["test_top1"],
        test_top5=sel["test_top5"] if top5 else None,
        method=NOTES[out["solver"]],
    )
    return heads, selection, dataclasses.asdict(config), out["timings"]
