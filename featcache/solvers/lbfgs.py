"""``--solver lbfgs``: L2 logistic regression by L-BFGS (:func:`featcache.logreg.run_logreg`) as a :class:`Solver`."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import torch

from ..lbfgs import Minimizer, minimize
from ..logreg import LogRegConfig, run_logreg
from ._base import SolverResult, Splits, typed_grid

__all__ = ["LbfgsSolver"]

logger = logging.getLogger(__name__)

NOTE = (
    "L2 strength selected on a held-out val split of train (a path from strong to weak, warm-started; "
    "ties: the lower val loss); refit on the whole train split at that strength, test read once. "
    "C = 1 / (strength x {n}), scikit-learn's C for the {n} train rows of the refit"
)


class LbfgsSolver:
    """The strength path on fit scored on val, the strength chosen on val, a refit on train, test read once.

    Every point's C, like the selection's, is relative to the train rows (the refit's): the path fits the fit
    rows, but what its strength is chosen for is the refit. A note (also logged as a warning) names the solves
    stopped by the iteration limit.

    Args:
        config: the path's hyperparameters.
        minimize: the minimiser of each strength's objective (see :class:`featcache.logreg.LogRegPath`).
    """

    name = "lbfgs"

    def __init__(self, config: LogRegConfig, minimize: Minimizer = minimize):
        self.config, self.minimize = config, minimize

    def fit_select(self, splits: Splits, n_features: int, n_classes: int, device: torch.device) -> SolverResult:
        out = run_logreg(self.config, splits, n_features, n_classes, device=device, minimize=self.minimize)
        n = len(splits["train"][1])
        # the point is its strength; its C is the refit's, as the selection's (the same expression: equal floats)
        entries = [{**e, "C": 1.0 / (e["strength"] * n)} for e in out["path"]]
        extra = ("iterations", "objective", "grad_max", "stop", "converged", "val_loss")
        grid, selection = typed_grid(
            entries, out["selected"], ("strength", "C"), ("strength",), extra, NOTE.format(n=n), n_classes >= 6
        )
        notes = _unconverged(self.config, out)
        for note in notes:
            logger.warning("%s", note)
        hyper, timings = dataclasses.asdict(self.config), out["timings"]
        return SolverResult(grid, selection, None, hyper, timings, tuple(notes), head=out["head"])


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
