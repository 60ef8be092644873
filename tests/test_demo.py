"""featcache demo: seeded fp32 pretraining keyed by its recipe, the random-init controls, the verdicts, the plot,
and the whole machinery at a smaller size (the full demo is a slow test)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from featcache import demo, demo_report
from featcache.demo import _plan, _trained, pretrain, pretrain_sweep, run_demo, to_algoperf
from featcache.demo_report import plot_demo, verdicts, with_zero_steps
from featcache.models import build_backbone, load_backbone
from featcache.report import Cell, SweepReport
from featcache.store import store_path
from featcache.sweep import RowInfo, load_sweep


def _weights(spec) -> dict[str, torch.Tensor]:
    return torch.load(spec.path, weights_only=True)["model_params"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _small(registry, steps=(4, 1), draws=2):
    """The demo sweep with fewer draws and steps (cat1, cat4 budgets ``steps``); the same rows and controls."""
    sweep = load_sweep("demo", registry).with_overrides(draws=draws)
    budget = iter(steps)
    rows = tuple(r if r.steps_per_model is None else dataclasses.replace(r, steps_per_model=next(budget))
                 for r in sweep.rows)  # fmt: skip
    return dataclasses.replace(sweep, rows=rows)


# --- pretraining ---------------------------------------------------------------------------------------------
def test_pretraining_is_keyed_by_its_recipe_and_saved_as_algoperf(registry):
    spec = registry.checkpoint("mix-cat4-d0-m0")
    got = pretrain(registry, spec, seed=3, steps=2)
    assert 0 <= got.cued_top1 <= 100 and 0 <= got.plain_top1 <= 100
    ckpt = torch.load(spec.path, weights_only=True)
    meta = ckpt["demo"]
    assert ckpt["global_step"] == 2 and (meta["seed"], meta["steps"], meta["batch_size"]) == (3, 2, 32)
    assert meta["precision"] == "fp32"
    assert meta["task"] == {"dataset": "digits-mix", **registry.dataset("digits-mix").options}  # per_class, ...
    assert all(k.startswith("_orig_mod.module.") for k in ckpt["model_params"])
    assert any("downsample.conv." in k for k in ckpt["model_params"])
    assert load_backbone(spec).feature_dim == 512  # featcache reads it like a research checkpoint
    assert _trained(registry, spec, 3, 2) and not _trained(registry, spec, 3, 4) and not _trained(registry, spec, 4, 2)
    ckpt["demo"] = {"seed": 3, "steps": 2, "batch_size": 32}  # the first demo's checkpoint (digits 0-4, bf16)
    torch.save(ckpt, spec.path)
    assert not _trained(registry, spec, 3, 2)


def test_pretraining_is_seeded_and_0_steps_saves_the_initialisation(registry):
    a, b, c = (registry.checkpoint(f"mix-cat4-d0-m{i}") for i in range(3))
    pretrain(registry, a, seed=5, steps=3)
    pretrain(registry, b, seed=5, steps=3)
    pretrain(registry, c, seed=5, steps=0)
    assert _same(_weights(a), _weights(b))  # fp32, every draw seeded: the same weights, bit for bit
    torch.manual_seed(5)
    init = to_algoperf(build_backbone("resnet10")[0].state_dict())
    assert _same({k: v for k, v in _weights(c).items() if k in init}, init)
    assert not _same({k: v for k, v in _weights(a).items() if k in init}, init)


def test_a_control_is_its_twin_at_initialisation_and_missing_checkpoints_are_trained(paths, registry):
    sweep = _small(registry)
    plan = {spec.name: (seed, steps) for spec, seed, steps in _plan(sweep, registry)}
    budget = {n: s for n, s in plan.items() if not n.endswith("-init")}
    assert len(plan) == 20 and sorted(seed for seed, _ in budget.values()) == list(range(10))
    assert plan["mix-cat1-d1-m0"] == (1, 4) and plan["mix-cat4-d1-m3"] == (9, 1)
    for name, (seed, _) in budget.items():
        if name + "-init" in plan:
            assert plan[name + "-init"] == (seed, 0)
    lines: list[str] = []
    assert pretrain_sweep(sweep, registry, paths, retrain=False, echo=lines.append) == 20
    assert lines[0].startswith("[pretrain 1/20] mix-cat1-d0-m0: 4 steps of batch 32, seed 0, on digits-mix: test top-1")
    assert lines[-1].startswith("[pretrain 20/20] mix-cat4-d1-m3-init: 0 steps (the initialisation), seed 9,")
    torch.manual_seed(9)
    init = to_algoperf(build_backbone("resnet10")[0].state_dict())
    ctl = _weights(registry.checkpoint("mix-cat4-d1-m3-init"))
    assert _same({k: v for k, v in ctl.items() if k in init}, init)
    assert pretrain_sweep(sweep, registry, paths, retrain=False, echo=lines.append) == 0
    stale = store_path(paths.cache, "digits-plain", "mix-cat4-d0-m1")
    stale.mkdir(parents=True)
    longer = _small(registry, steps=(4, 2))
    assert pretrain_sweep(longer, registry, paths, retrain=False, echo=lines.append) == 8  # cat4's 2 x 4 models
    assert not stale.exists()  # its features came from the old weights


def test_threads_train_the_weights_one_thread_trains(paths, registry, monkeypatch):
    sweep = _small(registry, steps=(3, 1), draws=1)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    pretrain_sweep(sweep, registry, paths, retrain=False, echo=lambda line: None)  # 4 threads
    names = [spec.name for spec, _, _ in _plan(sweep, registry)]
    first = {n: _weights(registry.checkpoint(n)) for n in names}
    monkeypatch.setattr(demo, "MAX_JOBS", 1)
    pretrain_sweep(sweep, registry, paths, retrain=True, echo=lambda line: None)
    assert all(_same(first[n], _weights(registry.checkpoint(n))) for n in names)


# --- the verdicts, the table, the plot ------------------------------------------------------------------------
ROWS = {
    "cat1": RowInfo("cat1", 1, 3, 256, 256),
    "cat4": RowInfo("cat4", 4, 3, 64, 256),
    "cat1-init": RowInfo("cat1-init", 1, 3, None, None),
    "cat4-init": RowInfo("cat4-init", 4, 3, None, None),
}


def _report(values: dict[str, tuple[float, ...]], order=("cat1", "cat4", "cat1-init", "cat4-init")) -> SweepReport:
    cells = {(n, "d"): Cell(values[n], 3) for n in order}
    return SweepReport("demo", "", tuple(ROWS[n] for n in order), ("d",), cells, {})


# Each row's mean and std tell it apart; cat4-init's std is the smaller one of its pair.
VALUES = {"cat1": (86.0, 87.0, 88.0), "cat4": (88.0, 90.0, 92.0), "cat1-init": (60.0, 61.0, 62.0),
          "cat4-init": (88.5, 89.0, 89.5)}  # fmt: skip
PRETRAINED = (
    "measured, pretrained vs random features (the same networks at initialisation): cat1 87.00 ± 1.00 vs cat1-init "
    "61.00 ± 1.00, ahead by 26.00 points, more than the spread over draws (1.00); cat4 90.00 ± 2.00 vs cat4-init "
    "89.00 ± 0.50, ahead by 1.00 points, within the spread over draws (2.00)"
)
BUDGET = (
    "measured, cat-n vs cat1 (1 x 256 steps) 87.00 ± 1.00 at the same budget: cat4 (4 x 64 steps) 90.00 ± 2.00 "
    "ahead by 3.00 points, more than the spread over draws (2.00)"
)


def test_the_verdicts_say_what_was_measured():
    assert verdicts(_report(VALUES)) == [PRETRAINED, BUDGET]
    assert verdicts(with_zero_steps(_report(VALUES))) == [PRETRAINED, BUDGET]  # controls shown at 0 steps
    # the row order of the sweep does not decide which row is cat1 or whose control is whose
    assert verdicts(_report(VALUES, order=("cat4-init", "cat4", "cat1-init", "cat1"))) == [PRETRAINED, BUDGET]


def test_the_verdicts_say_it_whichever_way_it_came_out():
    worse = {**VALUES, "cat4": (80.0, 81.0, 82.0), "cat1-init": (87.0, 87.5, 88.0)}
    pretrained, budget = verdicts(_report(worse))
    assert "cat1 87.00 ± 1.00 vs cat1-init 87.50 ± 0.50, behind by 0.50 points, within the spread" in pretrained
    assert "cat4 81.00 ± 1.00 vs cat4-init 89.00 ± 0.50, behind by 8.00 points, more than the spread" in pretrained
    assert budget.endswith("cat4 (4 x 64 steps) 81.00 ± 1.00 behind by 6.00 points, more than the spread over draws "
                           "(1.00)")  # fmt: skip
    assert verdicts(_report({**VALUES, "cat4": (88.0,)})) == [
        "measured: some draws have no result yet; rerun `featcache demo` to finish them"
    ]
    no_controls = SweepReport("demo", "", (ROWS["cat1"], ROWS["cat4"]), ("d",),
                              {(n, "d"): Cell(VALUES[n], 3) for n in ("cat1", "cat4")}, {})  # fmt: skip
    assert verdicts(no_controls) == [BUDGET]


def test_control_rows_show_0_steps():
    rows = {r["features"]: r for r in with_zero_steps(_report(VALUES)).table_rows()}
    assert (rows["cat1-init"]["steps per model"], rows["cat1-init"]["total steps"]) == ("0", "0")
    assert (rows["cat4"]["steps per model"], rows["cat4"]["total steps"]) == ("64", "256")


def test_the_plot_draws_each_kind_of_row_as_its_own_line(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(demo_report, "plot_report", lambda report, path: seen.append(report) or path)
    plot_demo(_report(VALUES, order=("cat4-init", "cat1", "cat1-init", "cat4")), tmp_path / "p.png")
    (drawn,) = seen
    pre, init = drawn.datasets
    assert [r.name for r in drawn.rows] == ["cat1", "cat4"]
    assert [drawn.cells[(r, pre)].values for r in ("cat1", "cat4")] == [VALUES["cat1"], VALUES["cat4"]]
    assert [drawn.cells[(r, init)].values for r in ("cat1", "cat4")] == [VALUES["cat1-init"], VALUES["cat4-init"]]


# --- the whole demo --------------------------------------------------------------------------------------------
def test_the_demo_machinery_at_a_smaller_size(paths, registry):
    """The demo's code path with 2 draws, 8 and 4 x 2 pretraining steps, 100 digits per split, 4 probe epochs."""
    sweep = _small(registry, steps=(8, 2)).with_overrides(limit=100, epochs=4)
    echoed: list[str] = []
    result = run_demo(paths, echo=echoed.append, sweep=sweep)
    lines = "\n".join(echoed).splitlines()  # the table is echoed as one block
    assert lines[0].startswith("featcache demo: a pretraining budget of 8 steps on digits-mix")
    assert sum(line.startswith("[pretrain ") for line in lines) == 20
    head = next(i for i, line in enumerate(lines) if line.startswith("features   models  steps per model"))
    table = lines[head:][:6]
    assert table[0].split()[-3:] == ["digits-plain", "research", "fidelity"]  # both numbers, and their profile
    shape = [line.split()[:4] for line in table[2:]]
    assert shape == [["cat1", "1", "8", "8"], ["cat4", "4", "2", "8"], ["cat1-init", "1", "0", "0"],
                     ["cat4-init", "4", "0", "0"]]  # fmt: skip
    assert all("±" in line for line in table[2:])
    assert len(result.verdicts) == 2 and all(v in lines for v in result.verdicts)
    assert result.verdicts == tuple(verdicts(result.report))
    assert result.files.markdown.exists() and result.files.csv.exists()
    if result.files.plot is not None:
        assert result.files.plot.stat().st_size > 0
    echoed.clear()
    run_demo(paths, echo=echoed.append, sweep=sweep)  # everything kept: nothing trained, extracted or probed
    again = "\n".join(echoed).splitlines()
    assert not any(line.startswith(("[pretrain", "[extract", "[probe")) for line in again)
    assert again[again.index(table[0]) :][:6] == table


@pytest.mark.slow
def test_the_whole_demo_from_an_empty_directory(tmp_path):
    done = subprocess.run([sys.executable, "-m", "featcache.cli", "demo"], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    for row, models in (("cat1", "1"), ("cat4", "4"), ("cat1-init", "1"), ("cat4-init", "4")):
        assert any(line.split()[:2] == [row, models] and "±" in line for line in out)
    assert sum(line.startswith("measured, ") for line in out) == 2
    for name in ("demo.md", "demo.csv", "demo.png"):
        assert (tmp_path / "cache" / "reports" / name).exists()
