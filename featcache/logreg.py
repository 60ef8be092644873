"""L2-regularised multinomial logistic regression on cached features, by full-batch L-BFGS (CLIP's protocol).

The objective, for one strength lambda > 0, on n standardised fit rows z_i with labels y_i, is

    f(W, b) = (1/n) sum_i CE(W z_i + b, y_i) + (lambda / 2) ||W||_F^2

with W (C, D), the intercept b (C,) unpenalised and CE the softmax cross-entropy. scikit-learn's
``LogisticRegression(C=..., solver="lbfgs")`` minimises C sum_i CE_i + (1/2) ||W||_F^2 for C >= 3 classes,
which is n C f: the same minimiser at **C = 1 / (lambda n)** (each path entry records that C). For two classes
scikit-learn fits one weight vector, not the symmetric pair fitted here; the two agree at C = 2 / (lambda n).
Weight decay wd in SGD on the mean loss is the same penalty at lambda = wd.

CLIP's linear probe (L-BFGS, the strength swept on a log scale, chosen on val), plus one step by default
(``standardize``, ``--standardize on``; it gained 1.3 points top-1 on digits in a review): features are
standardised, z = (x - mean) / std, with the mean and population std of the fit rows (a constant feature keeps
std 1, as scikit-learn's StandardScaler), and the same statistics are applied to every other set. ``off`` fits the
raw features (z = x), as CLIP's code does.
The strengths are fitted from strong to weak by L-BFGS (:mod:`featcache.lbfgs`); each solve starts from the
previous solution (a warm start) with a fresh curvature history but the last curvature scale. A solve stops when

- max |grad f| <= tol * max |lambda W|: at the optimum the data gradient and the penalty gradient lambda W cancel,
  and tol bounds the residual relative to them. (scikit-learn's ``tol`` is absolute, max |grad f| <= tol; after a
  warm start at a weak strength the gradient is only (lambda' - lambda) W, inside an absolute tolerance while the
  solution is still far: the path would stop moving);
- f fell by less than 4 eps(dtype) |f| over the last 5 iterations, or a line search found no decrease: the
  dtype's resolution is reached (in float32, what ends the weak strengths);
- or after ``max_iter`` iterations.

The standardised fit rows live on the device when they fit the memory budget; otherwise every evaluation of f
and its gradient streams row blocks (a tensor's rows, or a row source's ``take``) and sums their contributions,
which gives the same f and gradient up to float summation order. Evaluation sets are always scored in blocks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from featcache.errors import ConfigError
from featcache.lbfgs import Minimizer, minimize
from featcache.linear_head import LinearHead
from featcache.rows import Features, check_labels, check_rows, column_moments, free_bytes
from featcache.rows import StandardisedBlocks as _Blocks

__all__ = ["DEFAULT_STRENGTHS", "LogRegConfig", "LogRegPath", "run_logreg", "select_strength"]

logger = logging.getLogger(__name__)

DEFAULT_STRENGTHS = tuple(10.0 ** (-e / 2) for e in range(13))  # lambda 1 ... 1e-6, two per decade
_EVAL_ROWS = 4096  # rows per block when scoring or computing statistics: bounds memory, not results
_MEMORY_SHARE = 0.5  # default budget: this share of the device's free memory
_CACHED = 3  # evaluations remembered (see LogRegPath._loss_grad)


@dataclass(frozen=True)
class LogRegConfig:
    """Hyperparameters of the L-BFGS path.

    Raises:
        ConfigError: a value is out of range; the message names the command-line option.
    """

    strengths: tuple[float, ...] = DEFAULT_STRENGTHS  # lambda of the module docstring; fitted strong to weak
    tol: float = 1e-2  # stop when max |grad f| <= tol * max |lambda W| (module docstring)
    max_iter: int = 1000  # L-BFGS iterations per strength
    history_size: int = 20  # L-BFGS curvature pairs kept
    standardize: bool = True  # fit standardised features (the fit rows' statistics); False: the raw features

    def __post_init__(self) -> None:
        object.__setattr__(self, "strengths", tuple(float(s) for s in self.strengths))
        s, it, hist = self.strengths, self.max_iter, self.history_size
        distinct = len(s) > 0 and len(set(s)) == len(s)
        for ok, option, value, what in (
            (distinct and all(0 < v < math.inf for v in s), "--lbfgs-strengths", s, "distinct positive numbers"),
            (0 < self.tol < math.inf, "--lbfgs-tol", self.tol, "a positive number"),
            (isinstance(it, int) and it > 0, "--lbfgs-max-iter", it, "an integer >= 1"),
            (isinstance(hist, int) and hist > 0, "--lbfgs-history", hist, "an integer >= 1"),
            (isinstance(self.standardize, bool), "--standardize", self.standardize, "on or off"),
        ):
            if not ok:
                raise ConfigError(f"{option} must be {what}, got {value!r}")

    @property
    def path(self) -> tuple[float, ...]:
        """The strengths in fitting order, strong (large lambda) to weak."""
        return tuple(sorted(self.strengths, reverse=True))


def select_strength(path: Sequence[Mapping[str, Any]], key: str = "val_top1") -> int:
    """Index of the path entry with the best ``key``; ties go to the lower loss on the same set, then to the
    stronger regularisation (larger lambda).

    On a small val split several strengths often score the same accuracy; their mean cross-entropy still tells
    them apart (it sees how confident each is on every row, not only which side of the boundary it falls).

    Args:
        path: :attr:`LogRegPath.path_` entries, each with ``"strength"``, ``key`` (``<set>_top1``) and
            ``<set>_loss``.
        key: the score to maximise; a validation score, never a test score.
    Returns:
        The index into ``path``.
    Raises:
        KeyError: an entry lacks ``key`` or its loss (the path was fitted without that evaluation set).
    """
    loss = key.rsplit("_", 1)[0] + "_loss"
    return max(range(len(path)), key=lambda i: (path[i][key], -path[i][loss], path[i]["strength"]))


class LogRegPath:
    """The L2 path of multinomial logistic regression on standardised features (estimator style).

    Args:
        config: strengths, tolerance, iteration limit.
        n_features: feature dimension D.
        n_classes: number of classes C.
        device: where the solver runs; features are moved there.
        dtype: dtype of the parameters and of the standardised features.
        memory_budget: bytes the standardised fit rows may take on the device to stay resident (default: half
            the device's free memory); beyond it, f and its gradient are accumulated over row blocks.
        block_rows: rows per block when streaming (default: what a third of the budget holds, at least 256).
        minimize: the minimiser of each strength's f, from the warm start (default :func:`featcache.lbfgs.minimize`;
            any :class:`featcache.lbfgs.Minimizer`, e.g. ``scipy.optimize.minimize`` wrapped to its signature).

    Attributes (after :meth:`fit`):
        strengths_: the strengths in path order (strong to weak).
        coef_ (S, C, D), intercept_ (S, C): the solution at each strength, on standardised features.
        mean_, std_ (D,) float64: the fit rows' statistics (``std_`` with 1 for constant features); zeros and ones
            when ``config.standardize`` is off.
        path_: one dict of plain floats and ints per strength: ``strength``, ``C`` (scikit-learn's, for these
            n rows), ``iterations``, ``evaluations`` (of f and its gradient), ``objective`` (f at the
            solution), ``grad_max`` (max |grad f| there), ``stop`` ("tol"; "no_progress": f stopped changing,
            at the dtype's resolution; "max_iter": the iteration limit), ``converged``
            (stop != "max_iter"), ``seconds``, and ``<name>_top1``, ``<name>_top5`` (%) and ``<name>_loss``
            (mean cross-entropy) per evaluation set.
        n_rows_: fit rows n. resident_: whether the standardised fit rows were kept on the device.
        seconds_: wall time of :meth:`fit`.
    """

    def __init__(
        self,
        config: LogRegConfig,
        n_features: int,
        n_classes: int,
        device="cpu",
        dtype=torch.float32,
        memory_budget: int | None = None,
        block_rows: int | None = None,
        minimize: Minimizer = minimize,
    ):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.config = config
        self.n_features = n_features
        self.n_classes = n_classes
        self.device = device
        self.dtype = dtype
        self.memory_budget = memory_budget
        self.block_rows = block_rows
        self.minimize = minimize

    def fit(
        self, X: Features, y, eval_sets: Mapping[str, tuple] | None = None, init: tuple | None = None
    ) -> LogRegPath:
        """Fit every strength, strong to weak, each warm-started from the previous; score ``eval_sets`` at each.

        Args:
            X: fit features, a (N, D) float tensor on any device or a row source.
            y: (N,) integer labels in [0, C).
            eval_sets: name -> (features, labels), standardised with the fit statistics and scored per strength.
            init: (coef (C, D), intercept (C,)) to start the first strength from, in standardised coordinates
                (e.g. a path solution, to refit at one strength on more rows); default zeros.
        Returns:
            self, with the learned attributes set.
        Raises:
            ValueError: shapes or labels do not match ``n_features``/``n_classes``.
            TypeError: features are neither a tensor nor a row source.
        """
        cfg, dev, C, D = self.config, torch.device(self.device), self.n_classes, self.n_features
        start = time.perf_counter()
        n = check_rows(X, self.n_features, "X")
        y = self._labels(y, n, "y")
        evals = {}
        for name, (Xe, ye) in (eval_sets or {}).items():
            evals[name] = (Xe, self._labels(ye, check_rows(Xe, self.n_features, name), name))
        if cfg.standardize:
            self.mean_, self.std_ = column_moments(X, self.n_features, _EVAL_ROWS)
        else:  # the raw features: z = x
            self.mean_, self.std_ = torch.zeros(D, dtype=torch.float64), torch.ones(D, dtype=torch.float64)
        self._mean = self.mean_.to(dev, self.dtype)
        self._inv_std = (1 / self.std_).to(dev, self.dtype)
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        budget = _MEMORY_SHARE * free_bytes(dev) if self.memory_budget is None else self.memory_budget
        self.resident_ = n * D * itemsize <= budget
        block = self.block_rows or max(256, int(budget // (3 * D * itemsize)))
        self._data = _Blocks(X, y, self._mean, self._inv_std, self.dtype, dev, block, self.resident_)
        self._cache: list[tuple[torch.Tensor, float, torch.Tensor]] = []
        self._scale: float | None = None  # s.y / y.y of the last curvature pair, carried from strength to strength

        theta = torch.zeros(C * (D + 1), dtype=self.dtype, device=dev)
        if init is not None:
            theta[: C * D] = torch.as_tensor(init[0]).reshape(-1).to(theta)
            theta[C * D :] = torch.as_tensor(init[1]).reshape(-1).to(theta)
        self.strengths_ = cfg.path
        coefs, intercepts, self.path_ = [], [], []
        for lam in self.strengths_:
            t0 = time.perf_counter()
            iterations, evaluations, stop = self._solve(theta, lam)
            # The loss ignores a common shift of every intercept and the gradient never has one: centring only
            # removes the shift an init may carry, so that solutions compare without it.
            theta[C * D :] -= theta[C * D :].mean()
            loss, grad = self._loss_grad(theta, lam)  # cached unless the centring moved the intercepts
            grad_max = float(grad.abs().max())
            W, b = theta[: C * D].view(C, D).clone(), theta[C * D :].clone()
            entry: dict[str, Any] = {
                "strength": lam,
                "C": 1.0 / (lam * n),
                "iterations": iterations,
                "evaluations": evaluations,
                "objective": loss,
                "grad_max": grad_max,
                "stop": stop,
                "converged": stop != "max_iter",
                "seconds": time.perf_counter() - t0,
            }
            for name, (Xe, ye) in evals.items():
                entry |= {f"{name}_{k}": v for k, v in self._scores(W, b, Xe, ye).items()}
            coefs.append(W)
            intercepts.append(b)
            self.path_.append(entry)
            logger.info("lbfgs %s", entry)
        self.coef_, self.intercept_ = torch.stack(coefs), torch.stack(intercepts)
        self.n_rows_ = n
        del self._data, self._cache  # the resident copy is the largest thing this holds
        self.seconds_ = time.perf_counter() - start
        return self

    @torch.no_grad()
    def predict_logits(self, X: Features, index: int = -1) -> torch.Tensor:
        """Logits (N, C) on ``device`` of the solution at path position ``index``.

        Raises:
            RuntimeError: the path is not fitted.
        """
        self._check_fitted()
        check_rows(X, self.n_features, "X")
        rows = _Blocks(X, None, self._mean, self._inv_std, self.dtype, torch.device(self.device), _EVAL_ROWS, False)
        W, b = self.coef_[index], self.intercept_[index]
        return torch.cat([torch.addmm(b, z, W.T) for z, _ in rows])

    def evaluate(self, X: Features, y, index: int = -1) -> dict[str, float]:
        """Top-1 and top-k (k = min(5, C)) accuracy (%) and mean cross-entropy of the solution at ``index``.

        ``X`` is standardised with the fit rows' statistics (:attr:`mean_`, :attr:`std_`), never its own.

        Returns:
            ``{"top1": float, "top5": float, "loss": float}``.
        Raises:
            RuntimeError: the path is not fitted.
        """
        self._check_fitted()
        y = self._labels(y, check_rows(X, self.n_features, "X"), "y")
        return self._scores(self.coef_[index], self.intercept_[index], X, y)

    def raw_weights(self, index: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
        """The solution at ``index`` as a Linear on raw (unstandardised) features: (weight (C, D), bias (C,))."""
        self._check_fitted()
        W = self.coef_[index] * self._inv_std
        return W, self.intercept_[index] - W @ self._mean

    def _solve(self, theta: torch.Tensor, lam: float) -> tuple[int, int, str]:
        """Minimise f at ``lam`` from ``theta`` in place; returns (iterations, evaluations, stop)."""
        P, tol = self.n_classes * self.n_features, self.config.tol

        def stationary(theta: torch.Tensor, g: torch.Tensor) -> bool:
            return float(g.abs().max()) <= tol * lam * float(theta[:P].abs().max())

        cfg = self.config
        res = self.minimize(
            lambda t: self._loss_grad(t, lam), theta, stationary, cfg.max_iter, cfg.history_size, self._scale
        )
        self._scale = res.scale  # the curvature scale carries over: the next strength's first step is not blind
        return res.iterations, res.evaluations, res.stop

    @torch.no_grad()
    def _loss_grad(self, theta: torch.Tensor, lam: float) -> tuple[float, torch.Tensor]:
        """f and its gradient at ``theta`` (flat: W row-major, then b), summed over the fit rows' blocks.

        The data term of the last few points is cached: L-BFGS's accepted point was evaluated during its line
        search, and the next strength starts where the last one ended, so both cost no pass over the data.
        """
        C, D = self.n_classes, self.n_features
        W = theta[: C * D].view(C, D)
        hit = next(((ce, g) for point, ce, g in self._cache if torch.equal(point, theta)), None)
        if hit is None:
            hit = self._data_term(theta)
            self._cache = [*self._cache[-(_CACHED - 1) :], (theta.clone(), *hit)]
        ce, ce_grad = hit
        grad = ce_grad.clone()
        grad[: C * D].view(C, D).add_(W, alpha=lam)
        return ce + 0.5 * lam * float(W.double().pow(2).sum()), grad

    def _data_term(self, theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Mean cross-entropy and its gradient at ``theta``, one pass over the fit rows."""
        C, D, n = self.n_classes, self.n_features, self._data.n
        W, b = theta[: C * D].view(C, D), theta[C * D :]
        grad = torch.zeros_like(theta)
        gW, gb = grad[: C * D].view(C, D), grad[C * D :]
        ce = torch.zeros((), dtype=torch.float64, device=theta.device)
        for z, yb in self._data:
            # The products run in the features' dtype; the softmax in float64. A confident row's loss (1e-4 at weak
            # strengths) sits next to 1 in the softmax's normaliser, where float32 keeps only ~3 of its digits, and
            # the path then stalls; the (B, C) work is D times smaller than the products.
            logits = torch.addmm(b, z, W.T).double()  # (B, C)
            true = logits.gather(1, yb[:, None])  # (B, 1)
            top = logits.amax(1, keepdim=True)
            p = logits.sub_(top).exp_()  # in place: fewer passes over (B, C) than logsumexp then softmax
            norm = p.sum(1, keepdim=True)
            # CE = log(norm) + top - true per row, all terms >= 0, summed after: sum(lse) - sum(true) would
            # cancel catastrophically when the losses are small.
            ce += (norm.log() + top - true).sum(dtype=torch.float64)
            p.div_(norm)  # softmax
            p.scatter_add_(1, yb[:, None], torch.full_like(true, -1.0))  # d CE / d logits = softmax - onehot
            gW.addmm_(p.T.to(z.dtype), z)
            gb += p.sum(0).to(gb.dtype)
        return float(ce) / n, grad.div_(n)

    @torch.no_grad()
    def _scores(self, W: torch.Tensor, b: torch.Tensor, X: Features, y: torch.Tensor) -> dict[str, float]:
        """Top-1, top-k (%) and mean cross-entropy on (X, y), standardised with the fit rows' statistics."""
        k, hits = min(5, self.n_classes), torch.zeros(2, dtype=torch.int64, device=W.device)
        ce = torch.zeros((), dtype=torch.float64, device=W.device)
        rows = _Blocks(X, y, self._mean, self._inv_std, self.dtype, W.device, _EVAL_ROWS, False)
        for z, yb in rows:
            logits = torch.addmm(b, z, W.T)
            correct = logits.topk(k, dim=1).indices == yb[:, None]
            hits[0] += correct[:, 0].sum()
            hits[1] += correct.any(1).sum()
            ce += F.cross_entropy(logits.double(), yb, reduction="sum")
        top1, topk = (100.0 * h / len(y) for h in hits.tolist())  # in Python: the same float on any device
        return {"top1": top1, "top5": topk, "loss": float(ce) / len(y)}

    def _labels(self, y: Any, n: int, name: str) -> torch.Tensor:
        return check_labels(y, n, self.n_classes, self.device, name)

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise RuntimeError("this LogRegPath is not fitted yet; call fit() first")


def run_logreg(
    config: LogRegConfig,
    splits: Mapping[str, tuple],
    n_features: int,
    n_classes: int,
    device="cpu",
    dtype=torch.float32,
    memory_budget: int | None = None,
    minimize: Minimizer = minimize,
) -> dict[str, Any]:
    """The probe's L-BFGS protocol: path on fit scored on val, strength chosen on val, refit on train, test once.

    The refit (all train rows = fit + val, their own statistics) solves the chosen strength only, warm-started
    from the path's solution there. Test is read once, by the refitted model, after the choice.

    Args:
        config: the path's hyperparameters.
        splits: ``"fit"``, ``"val"``, ``"train"`` and ``"test"`` -> (features, labels).
        n_features, n_classes, device, dtype, memory_budget, minimize: as for :class:`LogRegPath`.
    Returns:
        Plain floats and ints: ``{"solver": "lbfgs", "path": [path_ entries with val scores], "selected":
        {"strength", "C", "val_top1", "val_top5", "val_loss", "iterations", "objective", "grad_max", "stop",
        "converged", "test_top1", "test_top5"}, "timings": {"path_s", "refit_s"}}`` (the selected iterations,
        objective, C and convergence are the refit's), and ``"head"``: the refit as it scored test (a
        :class:`featcache.linear_head.LinearHead`, what a saved head of the probe holds).
    """
    kwargs = {"device": device, "dtype": dtype, "memory_budget": memory_budget, "minimize": minimize}
    path = LogRegPath(config, n_features, n_classes, **kwargs).fit(*splits["fit"], eval_sets={"val": splits["val"]})
    k = select_strength(path.path_, "val_top1")
    chosen = path.path_[k]
    refit = LogRegPath(replace(config, strengths=(chosen["strength"],)), n_features, n_classes, **kwargs)
    refit.fit(*splits["train"], init=(path.coef_[k], path.intercept_[k]))
    final = refit.path_[0]
    test = refit.evaluate(*splits["test"])
    selected = {key: chosen[key] for key in ("strength", "val_top1", "val_top5", "val_loss")}
    selected |= {key: final[key] for key in ("C", "iterations", "objective", "grad_max", "stop", "converged")}
    selected |= {"test_top1": test["top1"], "test_top5": test["top5"]}
    return {
        "solver": "lbfgs",
        "path": path.path_,
        "selected": selected,
        "timings": {"path_s": path.seconds_, "refit_s": refit.seconds_},
        "head": LinearHead(refit.coef_[0], refit.intercept_[0], "standardise", refit._mean, refit._inv_std, _EVAL_ROWS),
    }
