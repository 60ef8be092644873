"""Benchmark: featcache's L-BFGS path vs scikit-learn's LogisticRegression(lbfgs), with the SGD grid and k-NN.

Two feature sets, each fitted on its train split and scored on its test split by every method:

(a) synthetic, with known structure: Gaussian classes with equal priors and isotropic noise around random means,
    then per-feature offsets and scales (so standardising matters). The Bayes-optimal classifier is the nearest
    true mean in the unscaled space; its test accuracy is printed as the ceiling.
(b) the demo's real digits features: ``featcache demo``'s first checkpoint (a resnet10 pretrained on digits-mix
    by :func:`featcache.demo.pretrain`) extracted by :func:`featcache.extract.extract` on digits-plain into a
    temporary cache, and read back from the store (float16, 512-d).

On each, over the same L2 strengths lambda (default: featcache's grid, 1 to 1e-6, two per decade):

1. featcache's L-BFGS path (:class:`featcache.logreg.LogRegPath`): standardise, then solve every strength from
   strong to weak, each warm-started from the previous, float32, on ``--device``;
2. scikit-learn's ``LogisticRegression(C=1 / (lambda n), solver="lbfgs")`` refitted from scratch per strength on
   the same standardised features, the way CLIP-protocol sweeps run it, in float32 (the arrays such scripts pass)
   and float64, with scikit-learn's default ``tol`` (1e-4, absolute; ``--sklearn-tol``) and the same ``max_iter``.
   The objective is the same (see featcache/logreg.py), so is the optimum; featcache stops on its own relative
   criterion (``--lbfgs-tol``, its default), so the "excess" columns say how close each solver got;
3. featcache's SGD grid (:class:`featcache.heads.MultiHeadProbe`, seed protocol: bn-linear, lr 0.01, Nesterov,
   milestones) with one head per strength as its weight decay (wd = lambda is the same L2 penalty);
4. featcache's k-NN (:class:`featcache.knn.KNNClassifier`), k in 10, 20, 100, 200, T = 0.07, for reference.

Targets (printed ok/MISSED against each scikit-learn dtype): at every strength the L-BFGS path's test top-1 is
within 0.5 points of scikit-learn's, and scikit-learn's total time over the strengths is at least 3x the path's.
Columns: seconds, iterations, test top-1 (%) and excess objective (f - f_opt) / f_opt of each solver, where f_opt
is the optimum: float64 scikit-learn run to tol 1e-10 (untimed; its test top-1 is the 'opt' column; with
``--no-optimum``, f_opt is the lowest of the scikit-learn runs' instead). All objectives are evaluated in
float64 numpy; the largest top-1 gap to the optimum is printed too, for information. 'sgd' is the SGD head with
weight decay lambda, after the last epoch.

Timing: every fit runs ``--repeat`` times and keeps the fastest, after one small warm-up fit of each library
(first calls pay lazy initialisation). ``--threads`` (default 1) limits torch, BLAS and OpenMP alike: on the
shared 2-core development machine two threads per library under other jobs' load made scikit-learn's fits up to
50x slower (spinning thread pools), which would measure the neighbours, not the solvers.

Expected runtime on the 2-core development CPU: about 1 min (pretraining the digits checkpoint takes 10-20 s).

Usage:
    python benchmarks/probe_solvers.py
    python benchmarks/probe_solvers.py --device cuda --rows 50000 --out probe_solvers.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import sklearn
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from featcache import __version__
from featcache.devices import device_name, resolve_device
from featcache.heads import HeadConfig, MultiHeadProbe
from featcache.knn import KNNClassifier, KNNConfig
from featcache.logreg import DEFAULT_STRENGTHS, LogRegConfig, LogRegPath

REPO = Path(__file__).resolve().parents[1]
ACCURACY_POINTS = 0.5  # target: |featcache - sklearn| test top-1 at every strength
SPEEDUP = 3.0  # target: sklearn total seconds / featcache path seconds
SEED_PROTOCOL = {"head": "bn-linear", "lr": 0.01, "momentum": 0.9, "nesterov": True, "batch_size": 256}
CPU = torch.device("cpu")
OPT_TOL = 1e-10  # the reference optimum's tolerance


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=10_000, help="synthetic train rows (test: rows // 5)")
    p.add_argument("--dim", type=int, default=256, help="synthetic feature dimension")
    p.add_argument("--classes", type=int, default=10, help="synthetic classes")
    p.add_argument("--strengths", type=str, default=None, help="comma-separated lambdas (default featcache's grid)")
    p.add_argument("--lbfgs-tol", type=float, default=LogRegConfig.tol, help="featcache: relative gradient residual")
    p.add_argument(
        "--sklearn",
        default="float32:1e-4,float64:1e-6",
        help="scikit-learn runs as dtype:tol (tol: max |gradient|); default: CLIP-style float32 arrays at "
        "scikit-learn's default tol, and float64 at a tol that reaches featcache's precision",
    )
    p.add_argument("--max-iter", type=int, default=1000, help="both solvers: L-BFGS iterations per strength")
    p.add_argument("--sgd-epochs", type=int, default=28, help="SGD grid epochs (milestones at 2/7, 4/7, 6/7)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch, BLAS and OpenMP alike")
    p.add_argument("--repeat", type=int, default=2, help="time every fit this many times and keep the fastest")
    p.add_argument("--cases", default="synthetic,digits", help="comma-separated: synthetic, digits")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="featcache's device")
    p.add_argument("--no-optimum", dest="optimum", action="store_false", help="skip the reference optimum fits")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    a = p.parse_args(argv)
    a.strengths = tuple(float(s) for s in a.strengths.split(",")) if a.strengths else DEFAULT_STRENGTHS
    a.cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    runs = [run.split(":") for run in a.sklearn.split(",")]
    if any(len(run) != 2 or run[0] not in ("float32", "float64") for run in runs):
        p.error("--sklearn takes dtype:tol pairs, dtype float32 or float64, e.g. float32:1e-4,float64:1e-6")
    a.sklearn = [(dt, float(tol), f"sk_{dt}_{float(tol):.0e}") for dt, tol in runs]
    if set(a.cases) - {"synthetic", "digits"} or min(a.rows // 5, a.dim, a.sgd_epochs, a.threads, a.repeat) < 1:
        p.error("--cases from synthetic,digits; --rows >= 5; --dim, --sgd-epochs, --threads, --repeat >= 1")
    if a.classes < 3:
        p.error("--classes >= 3: for two classes scikit-learn fits another model (see featcache/logreg.py)")
    return a


def synthetic(rows: int, dim: int, classes: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """(X, y, X_test, y_test, bayes_test_top1): Gaussian classes, then per-feature offsets and scales."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((classes, dim)) * (3.0 / np.sqrt(dim))  # ~ 4.2 noise sigmas between means
    offset, scale = rng.uniform(-2, 2, dim), rng.uniform(0.2, 5.0, dim)
    out = []
    for n in (rows, rows // 5):
        y = rng.integers(0, classes, n)
        u = means[y] + rng.standard_normal((n, dim))
        out += [(u * scale + offset).astype(np.float32), y]
    # Equal priors and isotropic noise: the nearest true mean is Bayes-optimal.
    u_test = (out[2] - offset) / scale
    bayes = ((u_test[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    return (*out, 100.0 * float(np.mean(bayes == out[3])))


def digits_features(tmp: Path) -> tuple[np.ndarray, ...]:
    """The demo's first checkpoint, pretrained on digits-mix, extracted on digits-plain with featcache's extract."""
    # Imported here: the synthetic case needs neither zarr nor torchvision (a bare GPU machine may lack them).
    from featcache.concat import ConcatView
    from featcache.config import Paths, load_registry
    from featcache.demo import SET, TRANSFER, pretrain
    from featcache.extract import ExtractConfig, extract
    from featcache.store import Store, store_path

    paths = Paths(data=tmp / "data", cache=tmp / "cache", checkpoints=tmp / "ckpts", config=REPO / "configs")
    for d in (paths.data, paths.cache, paths.checkpoints):
        d.mkdir()
    reg = load_registry(paths)
    spec = reg.expand_checkpoints(SET)[0]
    pretrain(reg, spec, seed=0, steps=64)
    ds = reg.dataset(TRANSFER)
    cfg = ExtractConfig(
        checkpoints=(spec,), dataset=ds, transform=reg.transform(ds, None), cache_dir=paths.cache, workers=0
    )
    extract(cfg)
    store = Store(store_path(paths.cache, TRANSFER, spec.name))
    train, test = ConcatView([store], "train"), ConcatView([store], "test")
    return train.load(), train.labels, test.load(), test.labels


def _objective(Z: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray, lam: float) -> float:
    logits = Z @ W.T + b
    logits -= logits.max(1, keepdims=True)
    ce = np.log(np.exp(logits).sum(1)) - logits[np.arange(len(y)), y]
    return float(ce.mean() + lam / 2 * (W**2).sum())


def _timed(fn, device: torch.device):
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sklearn(Z: np.ndarray, y: np.ndarray, lam: float, tol: float, max_iter: int) -> LogisticRegression:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # shown as iterations == max_iter
        return LogisticRegression(C=1.0 / (lam * len(y)), tol=tol, max_iter=max_iter).fit(Z, y)


def run_case(name: str, X, y, Xt, yt, a: argparse.Namespace, device: torch.device) -> dict:
    """Every method on one feature set; returns the per-strength rows and totals (best of ``a.repeat``)."""
    n, dim = X.shape
    classes = int(max(y.max(), yt.max())) + 1
    Xd, Xtd = torch.from_numpy(X).to(device), torch.from_numpy(Xt).to(device)
    cfg = LogRegConfig(strengths=a.strengths, tol=a.lbfgs_tol, max_iter=a.max_iter)
    # Warm-up: first calls pay for lazy initialisation (torch's kernels, scikit-learn's imports), not for solving.
    LogRegPath(dataclasses.replace(cfg, strengths=(1.0,)), dim, classes, device=device).fit(Xd[:64], y[:64])
    _sklearn(X[:64].astype(np.float64), y[:64], 1.0, 1e-4, 100)

    path, path_s = None, math.inf
    for _ in range(a.repeat):
        p, s = _timed(lambda: LogRegPath(cfg, dim, classes, device=device).fit(Xd, y), device)
        path, path_s = (p, s) if s < path_s else (path, path_s)

    # scikit-learn on exactly the standardisation featcache used (the fit statistics)
    mean, std = path.mean_.numpy(), path.std_.numpy()
    Z64, Zt64 = (X - mean) / std, (Xt - mean) / std
    Z = {dt: Z64.astype(dt) for dt, _, _ in a.sklearn}
    rows = []
    for k, lam in enumerate(path.strengths_):
        entry = path.path_[k]
        row = {"strength": lam, "C": entry["C"]}
        for dt, tol, key in a.sklearn:
            run = lambda z=Z[dt], lam=lam, tol=tol: _sklearn(z, y, lam, tol, a.max_iter)  # noqa: E731
            fits = [_timed(run, CPU) for _ in range(a.repeat)]
            sk, row[f"{key}_s"] = fits[0][0], min(s for _, s in fits)
            row[f"{key}_iter"] = int(np.max(sk.n_iter_))
            row[f"{key}_top1"] = 100.0 * float(np.mean(sk.predict(Zt64.astype(dt)) == yt))
            row[f"{key}_objective"] = _objective(Z64, y, sk.coef_, sk.intercept_, lam)
        # The optimum itself, for reference (untimed): float64 scikit-learn run to a far tighter tolerance.
        if a.optimum:
            opt = _sklearn(Z64, y, lam, OPT_TOL, 100 * a.max_iter)
            f_opt, opt_top1 = (
                _objective(Z64, y, opt.coef_, opt.intercept_, lam),
                100.0 * float(np.mean(opt.predict(Zt64) == yt)),
            )
        else:  # excess then relative to float64 scikit-learn at --sklearn-tol
            f_opt, opt_top1 = min(row[f"{key}_objective"] for _, _, key in a.sklearn), math.nan
        W, b = (t.double().cpu().numpy() for t in (path.coef_[k], path.intercept_[k]))
        row |= {
            "featcache_s": entry["seconds"],
            "featcache_iter": entry["iterations"],
            "featcache_stop": entry["stop"],
            "featcache_top1": path.evaluate(Xtd, yt, index=k)["top1"],
            "featcache_excess": (_objective(Z64, y, W, b, lam) - f_opt) / f_opt,
            "opt_top1": opt_top1,
        }
        for _, _, key in a.sklearn:
            row[f"{key}_excess"] = (row.pop(f"{key}_objective") - f_opt) / f_opt
        rows.append(row)

    m = a.sgd_epochs
    milestones = tuple(sorted({max(1, round(m * f)) for f in (2 / 7, 4 / 7, 6 / 7)} - {m}))  # the seed's 8/16/24 of 28
    sgd_cfg = HeadConfig(**SEED_PROTOCOL, epochs=m, milestones=milestones, weight_decays=path.strengths_)
    sgd, sgd_s = _timed(lambda: MultiHeadProbe(sgd_cfg, dim, classes, device=device).fit(Xd, y), device)
    for row, acc in zip(rows, sgd.evaluate(Xtd, yt)["top1"], strict=True):
        row["sgd_top1"] = acc

    knn_cfg = KNNConfig(ks=tuple(k for k in (10, 20, 100, 200) if k <= n), temperatures=(0.07,))
    knn, knn_s = _timed(
        lambda: KNNClassifier(knn_cfg, dim, classes, device=device).fit(Xd, y).evaluate(Xtd, yt), device
    )

    out = {"case": name, "shape": [n, dim], "test_rows": len(yt), "classes": classes, "rows": rows}
    out["featcache_path_s"] = path_s
    for _, _, key in a.sklearn:
        total = sum(r[f"{key}_s"] for r in rows)
        gap = max(abs(r["featcache_top1"] - r[f"{key}_top1"]) for r in rows)
        out[key] = {"total_s": total, "speedup": total / path_s, "max_top1_gap": gap}
        out[key] |= {"speed_ok": total / path_s >= SPEEDUP, "accuracy_ok": gap <= ACCURACY_POINTS}
    if a.optimum:
        out["opt_gap"] = max(abs(r["featcache_top1"] - r["opt_top1"]) for r in rows)
    return out | {"sgd_s": sgd_s, "sgd_epochs": m, "knn_s": knn_s, "knn": knn}


def _print_case(r: dict, extra: str, runs: list[tuple[str, float, str]]) -> None:
    n, dim = r["shape"]
    print(f"\n== {r['case']}: {n} x {dim} train, {r['test_rows']} test, {r['classes']} classes{extra}")
    keys = [key for _, _, key in runs] + ["featcache"]
    labels = [f"sk {dt[5:]} {tol:.0e}" for dt, tol, _ in runs] + ["featcache"]
    head = f"{'lambda':>7} {'sk C':>7} | " + " | ".join(f"{lab:<26}" for lab in labels) + f" | {'opt':>5} | {'sgd':>5}"
    print(head)
    print(f"{'':>15} | " + " | ".join(f"{'s':>6} {'it':>4} {'top1':>5} {'excess':>8}" for _ in labels) + " |       |")
    print("-" * len(head))
    for x in r["rows"]:
        cells = [f"{x['strength']:>7.1e} {x['C']:>7.1e}"]
        for key in keys:
            s, it, top1, excess = (x[f"{key}_{k}"] for k in ("s", "iter", "top1", "excess"))
            cells.append(f"{s:>6.3f} {it:>4d} {top1:>5.1f} {excess:>8.1e}")
        cells += [f"{x['opt_top1']:>5.1f}", f"{x['sgd_top1']:>5.1f}"]
        print(" | ".join(cells))
    ok = {True: "ok", False: "MISSED"}
    print(f"featcache L-BFGS path: {r['featcache_path_s']:.2f} s (standardising included)")
    for dt, tol, key in runs:
        x = r[key]
        print(
            f"  vs scikit-learn {dt} tol {tol:g}: {x['total_s']:.2f} s -> {x['speedup']:.1f}x (target >= {SPEEDUP:g}x) "
            f"{ok[x['speed_ok']]}; largest top-1 gap {x['max_top1_gap']:.2f} points (target <= {ACCURACY_POINTS}) "
            f"{ok[x['accuracy_ok']]}"
        )
    if "opt_gap" in r:
        print(f"  featcache vs the optimum ('opt'): largest top-1 gap {r['opt_gap']:.2f} points")
    print(f"sgd grid: {len(r['rows'])} heads (wd = lambda), {r['sgd_epochs']} epochs, one pass: {r['sgd_s']:.2f} s")
    knn = ", ".join(f"k={e['k']} {e['top1']:.2f}" for e in r["knn"])
    print(f"k-NN (T = 0.07): test top-1 {knn}; {r['knn_s']:.2f} s")


def main(argv: list[str] | None = None) -> int:
    a = _parse(argv)
    device = resolve_device(a.device)
    torch.set_num_threads(a.threads)
    print(f"featcache {__version__} benchmark: probe solvers (L-BFGS path vs scikit-learn lbfgs, SGD grid, k-NN)")
    print(f"device   featcache on {device} = {device_name(device)}; scikit-learn on the CPU")
    print(f"threads  {a.threads} for torch, BLAS and OpenMP; best of {a.repeat} per timing")
    print(f"versions torch {torch.__version__}, scikit-learn {sklearn.__version__}, numpy {np.__version__}")
    load = ", load average " + " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else ""
    print(f"date     {time.strftime('%Y-%m-%d %H:%M:%S %z')}; python {platform.python_version()}{load}")
    print(
        f"solvers  {len(a.strengths)} strengths {max(a.strengths):g} ... {min(a.strengths):g}, max_iter {a.max_iter}; "
        f"featcache float32, tol {a.lbfgs_tol:g} (relative); scikit-learn "
        + ", ".join(f"{dt} tol {tol:g}" for dt, tol, _ in a.sklearn)
        + " (absolute)",
        flush=True,
    )
    results = []
    with threadpool_limits(a.threads):
        if "synthetic" in a.cases:
            X, y, Xt, yt, bayes = synthetic(a.rows, a.dim, a.classes)
            results.append(run_case("synthetic", X, y, Xt, yt, a, device) | {"bayes_top1": bayes})
            _print_case(results[-1], f"; Bayes-optimal test top-1 {bayes:.2f}", a.sklearn)
        if "digits" in a.cases:
            t = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="featcache-bench-") as tmp:
                X, y, Xt, yt = digits_features(Path(tmp))
            prep_s = time.perf_counter() - t
            results.append(run_case("digits", X, y, Xt, yt, a, device) | {"prepare_s": prep_s})
            extra = f"; demo resnet10 features (float16 store), pretrain + extract {prep_s:.1f} s"
            _print_case(results[-1], extra, a.sklearn)

    checks = [r[key][k] for r in results for _, _, key in a.sklearn for k in ("speed_ok", "accuracy_ok")]
    print(f"\ntargets held: {sum(checks)}/{len(checks)}")
    if a.out:
        record = {
            "benchmark": "probe_solvers",
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "device": str(device),
            "device_name": device_name(device),
            "torch": torch.__version__,
            "sklearn": sklearn.__version__,
            "featcache": __version__,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
            "results": results,
        }
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {a.out}")
    return 0 if all(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
