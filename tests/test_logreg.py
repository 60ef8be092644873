"""featcache.logreg: scikit-learn's optimum, warm = cold starts, streamed = resident, selection on val only."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import ArrayRows
from sklearn.linear_model import LogisticRegression

from featcache.errors import ConfigError
from featcache.lbfgs import LbfgsResult
from featcache.logreg import LogRegConfig, LogRegPath, run_logreg, select_strength

D, C = 20, 4
PATH = (1.0, 1e-1, 1e-2, 1e-3)


def _data(n: int, seed: int, spread: float = 1.0, priors=None) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian classes with an offset and uneven feature scales (so standardising matters)."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(size=(C, D)) * spread
    y = rng.choice(C, n, p=priors)
    x = means[y] + rng.normal(size=(n, D)) * np.linspace(0.5, 3.0, D) + 3.0
    return x, y


def _objective(Z: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray, lam: float) -> float:
    """The documented objective in float64 numpy: mean cross-entropy + lam / 2 ||W||^2."""
    logits = Z @ W.T + b
    logits = logits - logits.max(1, keepdims=True)
    ce = np.log(np.exp(logits).sum(1)) - logits[np.arange(len(y)), y]
    return ce.mean() + lam / 2 * (W**2).sum()


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-8), (torch.float32, LogRegConfig.tol)])
def test_reaches_scikit_learn_optimum(dtype, tol):
    x, y = _data(300, 0)
    X = torch.tensor(x, dtype=dtype)
    path = LogRegPath(LogRegConfig(strengths=PATH, tol=tol), D, C, dtype=dtype).fit(X, y)
    assert torch.equal(X, torch.tensor(x, dtype=dtype))  # the caller's features are not standardised in place
    x = X.double().numpy()  # what the solver saw
    # Standardised independently of featcache: fit-split mean and population std, as documented.
    Z = (x - x.mean(0)) / x.std(0)
    np.testing.assert_allclose(path.mean_.numpy(), x.mean(0), rtol=1e-12)
    assert path.strengths_ == PATH and [e["strength"] for e in path.path_] == list(PATH)
    for k, lam in enumerate(PATH):
        entry = path.path_[k]
        assert entry["C"] == pytest.approx(1 / (lam * 300))
        sk = LogisticRegression(C=entry["C"], tol=1e-10, max_iter=10_000).fit(Z, y)
        best = _objective(Z, y, sk.coef_, sk.intercept_, lam)
        ours = _objective(Z, y, path.coef_[k].double().numpy(), path.intercept_[k].double().numpy(), lam)
        assert abs(ours - best) <= 1e-4 * best, (lam, ours, best)
        assert entry["objective"] == pytest.approx(ours, rel=1e-6)  # the reported objective is the real one
        assert entry["iterations"] > 0 and isinstance(entry["iterations"], int)
        # Same minimiser, not only the same value (the intercepts are centred: the loss ignores their shift).
        sk_b = sk.intercept_ - sk.intercept_.mean()
        # The default tol stops at a gradient residual of 1% of lambda W: weights within ~1%, f far closer.
        atol = (2e-2 if dtype == torch.float32 else 1e-5) * np.abs(sk.coef_).max()
        np.testing.assert_allclose(path.coef_[k].double().numpy(), sk.coef_, atol=atol)
        np.testing.assert_allclose(path.intercept_[k].double().numpy(), sk_b, atol=atol)
    # The path really moves: weak regularisation gives much larger weights than strong.
    assert path.coef_[-1].norm() > 5 * path.coef_[0].norm()


def test_warm_starts_equal_cold_starts():
    x, y = _data(300, 1)
    X = torch.tensor(x)
    cfg = LogRegConfig(strengths=PATH, tol=1e-8)
    warm = LogRegPath(cfg, D, C, dtype=torch.float64).fit(X, y)
    cold_iterations = 0
    for k, lam in enumerate(PATH):
        cold = LogRegPath(dataclasses.replace(cfg, strengths=(lam,)), D, C, dtype=torch.float64).fit(X, y)
        torch.testing.assert_close(warm.coef_[k], cold.coef_[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(warm.intercept_[k], cold.intercept_[0], atol=1e-6, rtol=0)
        assert warm.path_[k]["objective"] == pytest.approx(cold.path_[0]["objective"], rel=1e-10)
        cold_iterations += cold.path_[0]["iterations"]
    # The point of warm starts: the path costs fewer iterations than its strengths solved from zero.
    assert sum(e["iterations"] for e in warm.path_) < cold_iterations


def test_weak_strengths_keep_moving_after_warm_starts():
    # 60 rows in 20-d separate: at weak strengths the gradient a warm start begins with, (lambda' - lambda) W,
    # is tiny while the solution still has far to go. The default float32 path must get there anyway.
    x, y = _data(60, 9)
    strengths = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
    warm = LogRegPath(LogRegConfig(strengths=strengths), D, C).fit(torch.tensor(x, dtype=torch.float32), y)
    for k, lam in enumerate(strengths):
        cold = LogRegPath(LogRegConfig(strengths=(lam,), tol=1e-10), D, C, dtype=torch.float64)
        best = cold.fit(torch.tensor(x), y).path_[0]["objective"]
        assert warm.path_[k]["objective"] <= best * (1 + 1e-4), (lam, warm.path_[k], best)
        assert warm.path_[k]["iterations"] > 0


def test_streamed_blocks_equal_full_batch():
    x, y = _data(300, 2)
    xv, yv = _data(101, 3)
    cfg = LogRegConfig(strengths=(1e-1, 1e-2), tol=1e-8)
    Xv = torch.tensor(xv)
    full = LogRegPath(cfg, D, C, dtype=torch.float64).fit(torch.tensor(x), y, {"val": (Xv, yv)})
    assert torch.equal(Xv, torch.tensor(xv))  # scoring standardises copies, never the caller's rows
    rows = ArrayRows(x)
    # A zero budget forces streaming; blocks of 37 rows split 300 unevenly (8 x 37 + 4).
    streamed = LogRegPath(cfg, D, C, dtype=torch.float64, memory_budget=0, block_rows=37)
    streamed.fit(rows, y, {"val": (ArrayRows(xv), yv)})
    assert full.resident_ and not streamed.resident_
    # One take for the statistics (4,096-row blocks), then 9 per pass over the data, at least one per iteration.
    passes, rest = divmod(rows.calls - 1, 9)
    assert rest == 0 and passes >= sum(e["iterations"] for e in streamed.path_) > 0
    for a, b in zip(full.path_, streamed.path_, strict=True):
        assert a["objective"] == pytest.approx(b["objective"], rel=1e-12)
        assert (a["val_top1"], a["val_top5"]) == (b["val_top1"], b["val_top5"])
    torch.testing.assert_close(streamed.coef_, full.coef_, atol=1e-7, rtol=0)
    # The gradient itself, at an arbitrary point, is the full-batch one up to summation order.
    theta = torch.randn(C * (D + 1), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    f_full, g_full = _loss_grad(full, torch.tensor(x), y, theta)
    f_str, g_str = _loss_grad(streamed, ArrayRows(x), y, theta)
    assert f_full == pytest.approx(f_str, rel=1e-13)
    torch.testing.assert_close(g_full, g_str, atol=1e-14, rtol=1e-12)


def _loss_grad(probe: LogRegPath, X, y, theta: torch.Tensor):
    """f and its gradient at theta on X, with the probe's statistics and block layout (private API)."""
    from featcache.logreg import _Blocks

    dev = torch.device("cpu")
    block = probe.block_rows or len(X)
    probe._cache = []
    probe._data = _Blocks(X, torch.as_tensor(y), probe._mean, probe._inv_std, probe.dtype, dev, block, probe.resident_)
    try:
        return probe._loss_grad(theta, 0.01)
    finally:
        del probe._data, probe._cache


def test_statistics_come_from_the_fit_rows_and_apply_to_others():
    x, y = _data(200, 4)
    xv, _ = _data(50, 5)
    path = LogRegPath(LogRegConfig(strengths=(1e-2,)), D, C, dtype=torch.float64).fit(torch.tensor(x), y)
    Zv = (xv - x.mean(0)) / x.std(0)
    expected = Zv @ path.coef_[0].numpy().T + path.intercept_[0].numpy()
    np.testing.assert_allclose(path.predict_logits(torch.tensor(xv)).numpy(), expected, atol=1e-10)
    W, b = path.raw_weights(0)
    np.testing.assert_allclose(xv @ W.numpy().T + b.numpy(), expected, atol=1e-10)


def test_selection_reads_val_only():
    # Train: class 0 is 70% of rows. Val: balanced, where fitting the features (weak regularisation) wins.
    # Test: class 0 only, where the strongest regularisation wins by predicting the prior's class everywhere.
    priors = [0.7, 0.1, 0.1, 0.1]
    fit = _data(400, 6, spread=0.8, priors=priors)
    val = _data(200, 7, spread=0.8)
    x0, _ = _data(300, 8, spread=0.8)
    test = (x0, np.zeros(300, dtype=np.int64))
    train = (np.concatenate([fit[0], val[0]]), np.concatenate([fit[1], val[1]]))
    cfg = LogRegConfig(strengths=(100.0, 1e-3))
    splits = {k: (torch.tensor(v[0], dtype=torch.float32), v[1]) for k, v in
              {"fit": fit, "val": val, "train": train, "test": test}.items()}  # fmt: skip
    path = LogRegPath(cfg, D, C).fit(*splits["fit"], {"val": splits["val"], "test": splits["test"]})
    by_val, by_test = select_strength(path.path_, "val_top1"), select_strength(path.path_, "test_top1")
    assert path.path_[by_test]["strength"] == 100.0 and path.path_[by_test]["test_top1"] == 100.0
    assert path.path_[by_val]["strength"] == 1e-3, "the constructed case must make val and test disagree"

    record = run_logreg(cfg, splits, D, C)
    assert record["selected"]["strength"] == 1e-3
    assert record["selected"]["test_top1"] < 100.0
    assert all(not any(key.startswith("test") for key in e) for e in record["path"])  # the path never saw test
    assert record["selected"]["C"] == pytest.approx(1 / (1e-3 * 600))  # the refit's rows: fit + val


def test_ties_go_to_the_lower_val_loss_then_the_stronger_regularisation():
    path = [
        {"strength": 1.0, "val_top1": 80.0, "val_loss": 0.1},
        {"strength": 0.1, "val_top1": 90.0, "val_loss": 0.5},
        {"strength": 0.01, "val_top1": 90.0, "val_loss": 0.4},
        {"strength": 0.001, "val_top1": 90.0, "val_loss": 0.4},
    ]
    assert select_strength(path) == 2
    assert select_strength(list(reversed(path))) == 1
    assert select_strength(path[:2]) == 1  # the accuracy first: a lower loss does not beat a higher top-1


def test_a_tie_on_a_tiny_val_split_goes_to_the_lower_val_loss():
    # Separated classes and 4 val rows: every strength scores 100% on val. The weakest is the most confident
    # on them (lowest val loss) and wins, where the old rule (ties to the strongest) took lambda = 1.
    fit, val = _data(200, 16, spread=4.0), _data(4, 17, spread=4.0)
    test = _data(100, 18, spread=4.0)
    cfg = LogRegConfig(strengths=(1.0, 1e-1, 1e-2), tol=1e-8)
    record = run_logreg(cfg, _float64_splits(fit, val, test), D, C, dtype=torch.float64)
    assert [e["val_top1"] for e in record["path"]] == [100.0] * 3
    for e in record["path"]:  # the val loss: mean cross-entropy on val standardised with the fit rows' statistics
        mean, std, model = _sklearn(*fit, e["strength"])
        log_p = model.predict_log_proba((val[0] - mean) / std)
        assert e["val_loss"] == pytest.approx(-log_p[np.arange(4), val[1]].mean(), rel=1e-4), e
    losses = [e["val_loss"] for e in record["path"]]
    assert losses[2] < losses[1] < losses[0]
    assert record["selected"]["strength"] == 1e-2 and record["selected"]["val_loss"] == losses[2]


@pytest.mark.parametrize(
    "kwargs, option",
    [
        ({"strengths": ()}, "--lbfgs-strengths"),
        ({"strengths": (1.0, -1.0)}, "--lbfgs-strengths"),
        ({"strengths": (1.0, 1.0)}, "--lbfgs-strengths"),
        ({"tol": 0.0}, "--lbfgs-tol"),
        ({"max_iter": 0}, "--lbfgs-max-iter"),
        ({"history_size": 0}, "--lbfgs-history"),
        ({"standardize": "off"}, "--standardize"),
    ],
)
def test_config_refuses_bad_values(kwargs, option):
    with pytest.raises(ConfigError, match=option):
        LogRegConfig(**kwargs)


def test_fit_checks_inputs():
    x, y = _data(50, 0)
    path = LogRegPath(LogRegConfig(strengths=[1.0]), D, C)
    assert path.config.strengths == (1.0,)
    with pytest.raises(RuntimeError, match="fit"):
        path.predict_logits(torch.tensor(x, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"shape \(N, 20\)"):
        path.fit(torch.tensor(x[:, :5]), y)
    with pytest.raises(ValueError, match=r"outside \[0, 4\)"):
        path.fit(torch.tensor(x), y + 4)
    with pytest.raises(TypeError, match="row source"):
        path.fit(x, y)


def _sklearn(x: np.ndarray, y: np.ndarray, lam: float):
    """scikit-learn's optimum at ``lam`` on rows standardised with their own statistics: (mean, std, model)."""
    mean, std = x.mean(0), x.std(0)
    return mean, std, LogisticRegression(C=1 / (lam * len(y)), tol=1e-10, max_iter=10_000).fit((x - mean) / std, y)


def _top1(reference, x: np.ndarray, y: np.ndarray, stats=None) -> float:
    """Top-1 (%) of a :func:`_sklearn` model on ``x``, standardised with its statistics (or ``stats``)."""
    mean, std, model = reference
    mean, std = stats or (mean, std)
    return 100 * np.mean(model.predict((x - mean) / std) == y)


def _float64_splits(fit, val, test) -> dict:
    train = (np.concatenate([fit[0], val[0]]), np.concatenate([fit[1], val[1]]))
    return {k: (torch.tensor(v[0]), v[1]) for k, v in {"fit": fit, "val": val, "train": train, "test": test}.items()}


def test_test_is_scored_by_the_refit_on_all_train_rows():
    # 30 fit rows and 300 val rows: the path's model (fit rows only) is far worse on test than the refit on all
    # 330 train rows at the chosen strength; the refit's test number is scikit-learn's on the train rows.
    fit, val, test = _data(30, 10, spread=0.5), _data(300, 11, spread=0.5), _data(300, 12, spread=0.5)
    cfg = LogRegConfig(strengths=(1e-1, 1e-2, 1e-3), tol=1e-8)
    record = run_logreg(cfg, _float64_splits(fit, val, test), D, C, dtype=torch.float64)
    for e in record["path"]:  # the path is fitted on the fit rows only and scored on val
        assert e["val_top1"] == pytest.approx(_top1(_sklearn(*fit, e["strength"]), *val), abs=1e-9), e
    sel = record["selected"]
    train = (np.concatenate([fit[0], val[0]]), np.concatenate([fit[1], val[1]]))
    right = _top1(_sklearn(*train, sel["strength"]), *test)
    assert sel["test_top1"] == pytest.approx(right, abs=1e-9)
    assert right - _top1(_sklearn(*fit, sel["strength"]), *test) > 15  # the path's model would score far lower


def test_val_and_test_are_standardised_with_the_fit_rows_statistics():
    # Val and test have other class proportions than fit, so their own means and stds differ from fit's:
    # standardising a split with its own statistics shifts it and moves the accuracy by 20-50 points.
    fit = _data(300, 13, spread=0.8)
    val = _data(200, 14, spread=0.8, priors=[0.1, 0.7, 0.1, 0.1])
    test = _data(200, 15, spread=0.8, priors=[0.85, 0.05, 0.05, 0.05])
    cfg = LogRegConfig(strengths=(1e-1, 1e-2), tol=1e-8)
    path = LogRegPath(cfg, D, C, dtype=torch.float64)
    path.fit(torch.tensor(fit[0]), fit[1], {"val": (torch.tensor(val[0]), val[1])})
    for k, lam in enumerate(cfg.path):
        reference = _sklearn(*fit, lam)
        on_val, on_test = _top1(reference, *val), _top1(reference, *test)
        assert path.path_[k]["val_top1"] == pytest.approx(on_val, abs=1e-9)
        assert path.evaluate(torch.tensor(test[0]), test[1], index=k)["top1"] == pytest.approx(on_test, abs=1e-9)
        own = [_top1(reference, x, y, (x.mean(0), x.std(0))) for x, y in (val, test)]
        assert on_val - own[0] > 15 and on_test - own[1] > 30, (on_val, on_test, own)
    # run_logreg: test standardised with the statistics of the refit's rows, all of train
    record = run_logreg(cfg, _float64_splits(fit, val, test), D, C, dtype=torch.float64)
    train = (np.concatenate([fit[0], val[0]]), np.concatenate([fit[1], val[1]]))
    assert record["selected"]["test_top1"] == pytest.approx(_top1(_sklearn(*train, record["selected"]["strength"]),
                                                                  *test), abs=1e-9)  # fmt: skip


def _scipy_minimize(calls: list):
    """scipy's L-BFGS-B on the same f and gradient, to a tight tolerance: an oracle for the optimiser alone (a
    :class:`featcache.lbfgs.Minimizer`; it ignores the stopping rule and the carried scale)."""
    from scipy.optimize import minimize

    def run(loss_grad, theta, stationary, max_iter, history_size, scale=None):
        def fun(w: np.ndarray):
            f, g = loss_grad(torch.from_numpy(w).to(theta))
            return f, g.double().numpy()

        options = {"maxiter": 100_000, "maxcor": history_size, "gtol": 1e-13, "ftol": 1e-16}
        res = minimize(fun, theta.double().numpy(), method="L-BFGS-B", jac=True, options=options)
        theta.copy_(torch.from_numpy(res.x))
        calls.append(res.nit)
        return LbfgsResult(res.nit, res.nfev, "tol" if res.success else "max_iter", scale)

    return run


def test_the_path_reaches_scipy_lbfgs_optimum_on_the_same_loss():
    # featcache's minimiser, warm-started along the path with its relative stopping rule, against scipy's
    # L-BFGS-B (what scikit-learn uses) minimising the same f at each strength, weak ones included.
    x, y = _data(300, 20, spread=0.6)
    xv, yv = _data(200, 21, spread=0.6)
    cfg = LogRegConfig(strengths=(1.0, 1e-2, 1e-4), tol=1e-10)
    fit = (torch.tensor(x), y)
    ours = LogRegPath(cfg, D, C, dtype=torch.float64).fit(*fit, {"val": (torch.tensor(xv), yv)})
    calls: list[int] = []
    oracle = LogRegPath(cfg, D, C, dtype=torch.float64, minimize=_scipy_minimize(calls))
    oracle.fit(*fit, {"val": (torch.tensor(xv), yv)})
    assert len(calls) == 3 and min(calls) > 0  # the path's solves went through the minimiser passed
    for a, b in zip(ours.path_, oracle.path_, strict=True):
        assert b["stop"] == "tol" and a["converged"], (a, b)
        assert a["objective"] == pytest.approx(b["objective"], rel=1e-9, abs=1e-12), a["strength"]
        assert (a["val_top1"], a["val_loss"]) == pytest.approx((b["val_top1"], b["val_loss"]), rel=1e-6)
    torch.testing.assert_close(ours.coef_, oracle.coef_, atol=1e-5 * float(oracle.coef_.abs().max()), rtol=0)
    torch.testing.assert_close(ours.intercept_, oracle.intercept_, atol=1e-5 * float(oracle.coef_.abs().max()), rtol=0)


def test_standardize_off_fits_the_raw_features():
    """CLIP's code: the same objective on x itself (uneven feature scales and an offset, so the two paths differ)."""
    x, y = _data(300, 0)
    lam = 1e-2
    raw = LogRegPath(LogRegConfig(strengths=(lam,), tol=1e-8, standardize=False), D, C, dtype=torch.float64)
    raw.fit(torch.tensor(x), y)
    assert torch.equal(raw.mean_, torch.zeros(D, dtype=torch.float64)) and torch.equal(
        raw.std_, torch.ones(D, dtype=torch.float64)
    )
    sk = LogisticRegression(C=1 / (lam * 300), tol=1e-10, max_iter=10_000).fit(x, y)
    best = _objective(x, y, sk.coef_, sk.intercept_, lam)
    ours = _objective(x, y, raw.coef_[0].numpy(), raw.intercept_[0].numpy(), lam)
    assert abs(ours - best) <= 1e-6 * best
    on = LogRegPath(LogRegConfig(strengths=(lam,), tol=1e-8), D, C, dtype=torch.float64).fit(torch.tensor(x), y)
    assert not torch.allclose(on.raw_weights()[0], raw.raw_weights()[0], atol=1e-3)  # the two fits differ
