"""A small full-batch L-BFGS for smooth convex objectives over one flat tensor (used by :mod:`featcache.logreg`).

Why not ``torch.optim.LBFGS``: it takes any leaf tensor and keeps its state across ``step()`` calls, but it stops on
one absolute gradient tolerance, where a regularisation path needs a stopping rule that depends on the iterate (see
featcache/logreg.py: with an absolute tolerance the warm-started weak strengths stopped moving), and it cannot start
a problem from the curvature scale of the previous one. Both are what this module adds; the speed comes from torch,
float32 products and warm starts. This is Nocedal & Wright's algorithm 7.5 with the two-loop recursion (7.4) and a
backtracking line search on the Armijo condition from the unit step: for a convex objective every curvature pair
has s.y >= 0, so no Wolfe curvature test is needed.

:class:`featcache.logreg.LogRegPath` takes the minimiser as a parameter (any :class:`Minimizer`);
tests/test_logreg.py checks that this one reaches ``scipy.optimize.minimize``'s optimum on the same loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

__all__ = ["LbfgsResult", "Minimizer", "minimize"]

WINDOW, NO_PROGRESS = 5, 4.0  # stop when f fell by under 4 eps(dtype) |f| over the last 5 iterations
MAX_BACKTRACKS = 10  # step cuts (each by 2 to 10) before a line search gives up: f cannot decrease along d
ARMIJO = 1e-4  # sufficient-decrease constant


@dataclass
class LbfgsResult:
    """How a :func:`minimize` call ended.

    ``stop``: "tol" (``stationary`` held), "no_progress" (f stopped falling at the dtype's resolution, or a line
    search found no decrease), "max_iter". ``scale``: s.y / y.y of the last curvature pair, to start the next
    related problem with.
    """

    iterations: int
    evaluations: int
    stop: str
    scale: float | None


class Minimizer(Protocol):
    """What :class:`featcache.logreg.LogRegPath` calls to minimise f at one strength: :func:`minimize`'s signature."""

    def __call__(
        self,
        loss_grad: Callable[[torch.Tensor], tuple[float, torch.Tensor]],
        theta: torch.Tensor,
        stationary: Callable[[torch.Tensor, torch.Tensor], bool],
        max_iter: int,
        history_size: int,
        scale: float | None = None,
    ) -> LbfgsResult: ...


@torch.no_grad()
def minimize(
    loss_grad: Callable[[torch.Tensor], tuple[float, torch.Tensor]],
    theta: torch.Tensor,
    stationary: Callable[[torch.Tensor, torch.Tensor], bool],
    max_iter: int,
    history_size: int,
    scale: float | None = None,
) -> LbfgsResult:
    """Minimise ``loss_grad``'s f from ``theta``, in place.

    Args:
        loss_grad: theta -> (f as a float, gradient shaped like theta).
        theta: the start; overwritten with the last accepted iterate.
        stationary: (theta, gradient) -> True when the iterate is good enough.
        max_iter: iterations at most.
        history_size: curvature pairs kept.
        scale: the initial inverse-Hessian scale (``LbfgsResult.scale`` of a related problem); None: the first
            step is steepest descent of max-norm at most 1.
    Returns:
        The counts, the reason for stopping and the curvature scale.
    """
    eps = torch.finfo(theta.dtype).eps
    steps: list[tuple[torch.Tensor, torch.Tensor, float]] = []  # (s, y, 1 / s.y)
    evaluations = 0
    f, g = loss_grad(theta)  # not counted: the callers cache the start, where the last problem ended
    recent = [f]
    for iteration in range(max_iter + 1):
        if stationary(theta, g):
            return LbfgsResult(iteration, evaluations, "tol", scale)
        if iteration == max_iter:
            break
        d = _direction(g, steps, scale)
        slope = float(g @ d)
        if slope >= 0:  # rounding broke the curvature pairs: restart from steepest descent
            steps.clear()
            d = _direction(g, steps, scale)
            slope = float(g @ d)
        t = 1.0
        for _ in range(MAX_BACKTRACKS):
            trial = theta.add(d, alpha=t)
            f_new, g_new = loss_grad(trial)
            evaluations += 1
            if f_new <= f + ARMIJO * t * slope:
                break
            # minimiser of the quadratic through f, the slope and f_new, kept within [t/10, t/2]
            t *= min(0.5, max(0.1, -slope * t / (2 * (f_new - f - slope * t))))
        else:
            return LbfgsResult(iteration, evaluations, "no_progress", scale)
        s, y = trial - theta, g_new - g
        sy = float(s @ y)
        if sy > 0:
            steps = [*steps, (s, y, 1.0 / sy)][-history_size:]
            scale = sy / float(y @ y)
        theta.copy_(trial)
        f, g = f_new, g_new
        recent = [*recent[-WINDOW:], f]
        # f's own rounding ends the descent; one small step does not, since ill-conditioned problems make slow
        # but real progress.
        if len(recent) > WINDOW and recent[0] - f <= NO_PROGRESS * eps * abs(f):
            return LbfgsResult(iteration + 1, evaluations, "no_progress", scale)
    return LbfgsResult(max_iter, evaluations, "max_iter", scale)


def _direction(g: torch.Tensor, steps: list, scale: float | None) -> torch.Tensor:
    """-H g for the L-BFGS inverse Hessian H of ``steps`` with H0 = ``scale`` I (Nocedal & Wright, algorithm 7.4)."""
    q, alphas = g.neg(), []
    for s, y, rho in reversed(steps):
        alphas.append(rho * float(s @ q))
        q.add_(y, alpha=-alphas[-1])
    q.mul_(scale if scale is not None else min(1.0, 1.0 / float(q.abs().max())))
    for (s, y, rho), alpha in zip(steps, reversed(alphas), strict=True):
        q.add_(s, alpha=alpha - rho * float(y @ q))
    return q
