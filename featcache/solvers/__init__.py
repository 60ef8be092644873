"""The probe's solvers, one interface: ``fit_select(splits, n_features, n_classes, device) -> SolverResult``.

Each fits its grid on the splits :mod:`featcache.probe` prepares (fit and val carved from train, test), selects on
val and reads test once, at the selection; :func:`featcache.probe.run_probe` builds the record from the result the
same way for all three:

- ``sgd`` (:class:`SgdSolver`): the SGD heads of :class:`featcache.heads.HeadConfig`, one grid point a head;
- ``lbfgs`` (:class:`LbfgsSolver`): L2 logistic regression by L-BFGS (:mod:`featcache.logreg`);
- ``knn`` (:class:`KnnSolver`): weighted cosine k-NN (:mod:`featcache.knn`).
"""

from __future__ import annotations

from ..heads import HeadConfig
from ..knn import KNNConfig
from ..logreg import LogRegConfig
from ._base import Solver, SolverResult, Splits
from .knn import KnnSolver
from .lbfgs import LbfgsSolver
from .sgd import SgdSolver

__all__ = [
    "SOLVERS",
    "KnnSolver",
    "LbfgsSolver",
    "SgdSolver",
    "Solver",
    "SolverConfig",
    "SolverResult",
    "Splits",
    "solver_for",
]

SOLVERS = ("sgd", "lbfgs", "knn")
SolverConfig = LogRegConfig | KNNConfig  # a ProbeConfig's solver: None is SGD with its heads


def solver_for(config: HeadConfig | LogRegConfig | KNNConfig) -> Solver:
    """The solver of a configuration: SGD heads, an L-BFGS path or a k-NN grid.

    Raises:
        TypeError: ``config`` is none of these.
    """
    if isinstance(config, HeadConfig):
        return SgdSolver(config)
    if isinstance(config, LogRegConfig):
        return LbfgsSolver(config)
    if isinstance(config, KNNConfig):
        return KnnSolver(config)
    raise TypeError(f"no solver for a {type(config).__name__}; expected HeadConfig, LogRegConfig or KNNConfig")
