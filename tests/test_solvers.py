"""featcache.solvers: SGD, L-BFGS and k-NN behind one interface, each returning one typed result, on splits held in
memory (no store); and the record built from any of them the same way."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from featcache.heads import HeadConfig
from featcache.knn import KNNConfig
from featcache.logreg import LogRegConfig
from featcache.results_record import GridPoint, ResearchNumber, Selection
from featcache.solvers import KnnSolver, LbfgsSolver, SgdSolver, SolverResult, solver_for

CPU = torch.device("cpu")


class _MemorySplits:
    """The :class:`featcache.solvers.Splits` of tensors: the heads shuffle them themselves."""

    sources = "memory"

    def __init__(self, seed: int = 0, n: int = 300, dim: int = 6, classes: int = 7):
        rng = np.random.default_rng(seed)
        means = rng.normal(size=(classes, dim)) * 1.5
        y = np.arange(n) % classes
        x = torch.tensor(means[y] + rng.normal(size=(n, dim)), dtype=torch.float32)
        cut = n * 3 // 5
        self.sets = {
            "fit": (x[:cut], y[:cut]),
            "val": (x[cut : cut + n // 5], y[cut : cut + n // 5]),
            "train": (x[: cut + n // 5], y[: cut + n // 5]),
            "test": (x[cut + n // 5 :], y[cut + n // 5 :]),
        }
        self.asked: list[str] = []

    def __getitem__(self, name: str):
        self.asked.append(name)
        return self.sets[name]

    def training(self, name: str):
        self.asked.append(f"training {name}")
        return self.sets[name]


HEADS = HeadConfig(epochs=3, batch_size=32, milestones=(2,), lr=0.05, weight_decays=(1e-4, 1e-1))
CONFIGS = {
    "sgd": HEADS,
    "lbfgs": LogRegConfig(strengths=(1.0, 1e-2)),
    "knn": KNNConfig(ks=(1, 5), temperatures=(0.07, 0.5)),
}


@pytest.mark.parametrize("name", ["sgd", "lbfgs", "knn"])
def test_every_solver_returns_one_typed_result(name):
    config = CONFIGS[name]
    solver = solver_for(config)
    assert solver.name == name and type(solver) is {"sgd": SgdSolver, "lbfgs": LbfgsSolver, "knn": KnnSolver}[name]
    splits = _MemorySplits()
    result = solver.fit_select(splits, 6, 7, CPU)
    assert isinstance(result, SolverResult) and isinstance(result.selection, Selection)
    assert (
        all(isinstance(p, GridPoint) for p in result.grid)
        and len(result.grid) == {"sgd": 2, "lbfgs": 2, "knn": 4}[name]
    )
    assert result.hyperparameters == dataclasses.asdict(config)
    assert all(isinstance(v, float) and v >= 0 for v in result.timings.values()) and result.timings
    assert result.selection.val_top1 == max(p.val_top1 for p in result.grid)  # selected on val
    assert result.selection.test_top5 is not None  # 7 classes: top-5 is reported
    if name == "sgd":  # test read after every epoch: the research number is its best, selected on test
        assert isinstance(result.research, ResearchNumber)
        assert result.research.test_top1 == max(p.best_test_top1 for p in result.grid)
        assert splits.asked.count("training fit") == splits.asked.count("training train") == 1
    else:  # test read once, at the selected point (and k-NN's research number at its fixed k, DINO's)
        assert [p.test_top1 is not None for p in result.grid].count(True) == 1
        assert result.research is None if name == "lbfgs" else result.research.params["temperature"] == 0.07
        assert not any(a.startswith("training") for a in splits.asked)


def test_solver_for_refuses_other_configs():
    with pytest.raises(TypeError, match="no solver for a dict"):
        solver_for({"solver": "sgd"})


def test_the_record_is_built_the_same_way_from_any_result(tmp_path):
    """run_probe's record step takes one ProbeRun: its fields come from the data, the result and the run only."""
    from store_factory import make_store

    from featcache.probe import ProbeConfig, ProbeRun, _record
    from featcache.probe_splits import open_probe

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 4)).astype(np.float32), np.arange(60) % 3
    store = make_store(tmp_path / "d" / "s.zarr", {"train": (X, y), "test": (X[:30], y[:30])}, name="s")
    cfg = ProbeConfig((store,), HEADS, device="cpu", tag="t")
    data = open_probe(cfg)
    point = GridPoint(params={"k": 3}, val_top1=50.0, test_top1=40.0)
    result = SolverResult(
        grid=(point,),
        selection=Selection(params={"k": 3}, val_top1=50.0, test_top1=40.0, method="m"),
        research=None,
        hyperparameters={"ks": (3,)},
        timings={"val_s": 1.0},
        notes=("a solver note",),
    )
    record = _record(ProbeRun(cfg, data, "knn", result, {"load_s": 0.5, "val_s": 1.0}, "cpu", "resident"))
    assert record.solver == "knn" and record.heads == (point,) and record.selected == result.selection
    assert record.research is None and record.hyperparameters == {"ks": (3,), "val_fraction": 0.1}
    assert record.notes == (*data.notes, "a solver note") and record.rows == data.rows
    assert (record.timings, record.device, record.memory, record.tag) == ({"load_s": 0.5, "val_s": 1.0}, "cpu",
                                                                          "resident", "t")  # fmt: skip
