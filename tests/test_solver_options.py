"""The L-BFGS and k-NN options of ``featcache probe``: ``--standardize``, ``--lbfgs-range``, ``--knn-fixed-k``, parsed
into the solver's configuration once and refused with one line when they do not fit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from store_factory import make_store

from featcache.cli import main
from featcache.errors import ConfigError
from featcache.knn import KNNConfig
from featcache.logreg import LogRegConfig
from featcache.probe_config import solver_config, strength_range


def test_the_range_is_log_spaced_from_max_down_to_min_with_both_ends():
    got = strength_range(1e-6, 1.0, 13)
    assert got[0] == 1.0 and got[-1] == 1e-6 and len(got) == 13
    assert got == pytest.approx([10 ** (-k / 2) for k in range(13)], rel=1e-12)  # two per decade
    ratios = [b / a for a, b in zip(got, got[1:], strict=False)]
    assert ratios == pytest.approx([10**-0.5] * 12, rel=1e-12)
    for bad in ((1.0, 1e-6, 13), (0.0, 1.0, 5), (1e-3, 1.0, 1), (1e-3, math.inf, 4), (1e-6, 1.0, 1_000_000)):
        with pytest.raises(ConfigError, match=r"--lbfgs-range .*: give MIN MAX N with 0 < MIN < MAX and N >= 2"):
            strength_range(*bad)


def test_options_become_the_solvers_configuration():
    assert solver_config("lbfgs", lbfgs_range=(1e-4, 1.0, 5)) == LogRegConfig(strengths=strength_range(1e-4, 1, 5))
    assert solver_config("lbfgs", standardize="off").standardize is False
    assert solver_config("lbfgs").standardize is True and solver_config("knn").fixed_k == 20
    assert solver_config("knn", knn_fixed_k=7) == KNNConfig(fixed_k=7)
    assert solver_config("knn", knn_fixed_k=0).fixed_k is None  # 0: no fixed-k number
    assert solver_config("sgd") is None


@pytest.mark.parametrize(
    ("solver", "given", "match"),
    [
        ("knn", {"standardize": "on"}, "--standardize applies to --solver lbfgs, not knn; drop it"),
        ("sgd", {"lbfgs_range": (1e-3, 1.0, 3)}, "--lbfgs-range applies to --solver lbfgs, not sgd"),
        ("lbfgs", {"knn_fixed_k": 20}, "--knn-fixed-k applies to --solver knn, not lbfgs"),
        ("lbfgs", {"lbfgs_strengths": (1.0,), "lbfgs_range": (1e-3, 1.0, 3)}, "both give the strengths; pass one"),
        ("lbfgs", {"standardize": "yes"}, "--standardize must be on or off"),
    ],
)
def test_options_that_do_not_fit_are_refused(solver, given, match):
    with pytest.raises(ConfigError, match=match):
        solver_config(solver, **given)


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    means = rng.normal(size=(4, 6)) * 1.5

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 4, n)
        return (means[y] + rng.normal(size=(n, 6)) * np.linspace(0.5, 4, 6) + 2).astype(np.float32), y

    return make_store(tmp_path / "c" / "s.zarr", {"train": split(200), "test": split(80)}, name="s")


def _probe(tmp_path, store, *args):
    roots = ["--cache-dir", str(tmp_path / "cache"), "--results", str(tmp_path / "results.jsonl")]
    return CliRunner().invoke(main, [*roots, "probe", "--stores", str(store), "--format", "json", *args])


def test_the_cli_records_the_options(tmp_path, store):
    r = _probe(tmp_path, store, "--solver", "knn", "--knn-k", "1,5", "--knn-fixed-k", "9")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.output.split("\nresult ")[0])
    assert rec["hyperparameters"]["fixed_k"] == 9 and rec["research"]["params"] == {"k": 9, "temperature": 0.07}
    assert "fixed in advance" in rec["research"]["note"]
    r = _probe(tmp_path, store, "--solver", "lbfgs", "--standardize", "off", "--lbfgs-range", "1e-3", "1", "4")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.output.split("\nresult ")[0])
    assert rec["hyperparameters"]["standardize"] is False and rec["research"] is None
    assert rec["hyperparameters"]["strengths"] == pytest.approx([1.0, 0.1, 0.01, 0.001])
    r = _probe(tmp_path, store, "--solver", "knn", "--standardize", "on")
    assert r.exit_code == 1 and r.output.strip() == ("Error: --standardize applies to --solver lbfgs, not knn; drop it")
