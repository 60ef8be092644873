"""The probe's other solvers on the same splits and into the same record: L-BFGS logistic regression, k-NN.

:mod:`featcache.probe` prepares the splits (fit and val carved from train, test) and the record around them;
this module runs :func:`featcache.logreg.run_logreg` or :func:`featcache.knn.run_knn` and turns what they return
into the record's grid points, selection and notes. Both select on val and read test once, at the chosen point.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import torch

from .knn import KNNConfig, run_knn
from .logreg import LogRegConfig, run_logreg
from .results import GridPoint, Selection

__all__ = ["SOLVERS", "SolverConfig", "run_solver"]

logger = logging.getLogger(__name__)

SOLVERS = ("sgd", "lbfgs", "knn")
SolverConfig = LogRegConfig | KNNConfig

NOTES = {
    "lbfgs": "L2 strength selected on a held-out val split of train (a path from strong to weak, warm-started; "
    "ties: the lower val loss); refit on the whole train split at that strength, test read once. "
    "C = 1 / (strength x {n}), scikit-learn's C for the {n} train rows of the refit",
    "knn": "k and temperature selected on val with the rest of train as neighbours; test read once with all of "
    "train as neighbours",
}


def run_solver(
    config: SolverConfig, splits: Mapping[str, tuple], n_features: int, n_classes: int, device: torch.device
) -> tuple[tuple[GridPoint, ...], Selection, dict[str, Any], dict[str, float], list[str]]:
    """Run L-BFGS or k-NN; returns (grid points, selection, hyperparameters, timings, notes) for the record.

    Every L-BFGS point's C, like the selection's, is relative to the train rows (the refit's): the path fits
    the fit rows, but what its strength is chosen for is the refit. The notes (also logged as warnings) name
    L-BFGS solves stopped by the iteration limit and k-NN ks capped at the fit rows.

    Args:
        config: the solver's hyperparameters (:class:`LogRegConfig` or :class:`KNNConfig`).
        splits: ``"fit"``, ``"val"``, ``"train"``, ``"test"`` -> (features, labels).
        n_features, n_classes: feature dimension and number of classes.
        device: where the solver runs.
    Returns:
        The record's grid points, selection, hyperparameters (``config`` as asked), timings and notes.
    """
    top5 = n_classes >= 6  # top-5 is not reported below 6 classes
    if isinstance(config, LogRegConfig):
        out = run_logreg(config, splits, n_features, n_classes, device=device)
        n = len(splits["train"][1])
        # the point is its strength; its C is the refit's, as the selection's (the same expression: equal floats)
        entries = [{**e, "C": 1.0 / (e["strength"] * n)} for e in out["path"]]
        keys, point = ("strength", "C"), ("strength",)
        extra = ("iterations", "objective", "grad_max", "stop", "converged", "val_loss")
        notes, method = _unconverged(config, out), NOTES["lbfgs"].format(n=n)
    else:
        out = run_knn(config, splits, n_features, n_classes, device=device)
        entries, keys, point, extra = out["grid"], ("k", "temperature"), ("k", "temperature"), ("k_requested",)
        notes, method = _capped(out["grid"], len(splits["fit"][1])), NOTES["knn"]
    sel = out["selected"]
    heads = tuple(
        GridPoint(
            params={k: e[k] for k in keys},
            val_top1=e["val_top1"],
            test_top1=sel["test_top1"] if all(e[k] == sel[k] for k in point) else None,  # test is read once
            extra={k: e[k] for k in extra if k in e},
        )
        for e in entries
    )
    selection = Selection(
        params={k: sel[k] for k in keys if k in sel},
        val_top1=sel["val_top1"],
        test_top1=sel["test_top1"],
        test_top5=sel["test_top5"] if top5 else None,
        method=method,
    )
    for note in notes:
        logger.warning("%s", note)
    return heads, selection, dataclasses.asdict(config), out["timings"], notes


def _unconverged(config: LogRegConfig, out: Mapping[str, Any]) -> list[str]:
    """A note naming the L-BFGS solves that stopped at the iteration limit; [] when none did."""
    stopped = [f"{e['strength']:g}" for e in out["path"] if not e["converged"]]
    which = [f"{len(stopped)} of {len(out['path'])} strengths of the path ({', '.join(stopped)})"] if stopped else []
    which += [] if out["selected"]["converged"] else [f"the refit at strength {out['selected']['strength']:g}"]
    if not which:
        return []
    return [
        f"L-BFGS stopped at --lbfgs-max-iter {config.max_iter} before converging in {' and '.join(which)}: "
        "their numbers are of unfinished fits; raise --lbfgs-max-iter"
    ]


def _capped(grid: list[Mapping[str, Any]], n_fit: int) -> list[str]:
    """A note naming the k-NN ks capped at the fit rows; [] when none was."""
    asked = sorted({k for e in grid for k in e.get("k_requested", ())})
    if not asked:
        return []
    return [
        f"k-NN: --knn-k {', '.join(map(str, asked))} {'exceeds' if len(asked) == 1 else 'exceed'} the {n_fit} fit "
        f"rows (the neighbours val is scored against): used k = {n_fit}; extract more rows or pass smaller --knn-k"
    ]
