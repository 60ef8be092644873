"""featcache demo: pretraining keyed by steps, in the AlgoPerf format; the whole demo (slow) in time."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO

from featcache.demo import _trained, _verdict, pretrain, pretrain_sweep
from featcache.models import load_backbone
from featcache.report import Cell, SweepReport
from featcache.store import store_path
from featcache.sweep import RowInfo, load_sweep


def test_pretraining_is_keyed_by_steps_and_saved_as_algoperf(registry):
    spec = registry.checkpoint("demo-cat4-d0-m0")
    acc = pretrain(registry, spec, seed=3, steps=2)
    assert 0 <= acc <= 100
    ckpt = torch.load(spec.path, weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["demo"] == {"seed": 3, "steps": 2, "batch_size": 32}
    assert all(k.startswith("_orig_mod.module.") for k in ckpt["model_params"])
    assert any("downsample.conv." in k for k in ckpt["model_params"])
    assert load_backbone(spec).feature_dim == 512  # featcache reads it like a research checkpoint
    assert _trained(spec, 3, 2) and not _trained(spec, 3, 4) and not _trained(spec, 4, 2)


def test_pretrain_sweep_trains_what_is_missing_and_drops_stale_stores(paths, registry):
    sweep = load_sweep("digits", registry).with_overrides(draws=1)
    sweep = dataclasses.replace(sweep, rows=tuple(dataclasses.replace(r, steps_per_model=1) for r in sweep.rows))
    lines: list[str] = []
    assert pretrain_sweep(sweep, registry, paths, retrain=False, bf16=False, echo=lines.append) == 7
    assert lines[0].startswith("[pretrain 1/7] demo-cat1-d0-m0: 1 steps of batch 32, seed 0")
    assert lines[-1].startswith("[pretrain 7/7] demo-cat4-d0-m3: 1 steps of batch 32, seed 6")
    assert pretrain_sweep(sweep, registry, paths, retrain=False, bf16=False, echo=lines.append) == 0
    stale = store_path(paths.cache, "digits-transfer", "demo-cat2-d0-m1")
    stale.mkdir(parents=True)
    longer = dataclasses.replace(sweep, rows=(dataclasses.replace(sweep.rows[1], steps_per_model=2),))
    assert pretrain_sweep(longer, registry, paths, retrain=False, bf16=False, echo=lines.append) == 2
    assert not stale.exists()  # its features came from the old weights


def test_the_demo_says_what_was_measured_whichever_way_it_came_out():
    rows = (RowInfo("cat1", 1, 3, 64, 64), RowInfo("cat4", 4, 3, 16, 64))

    def report(cat1, cat4):
        cells = {("cat1", "d"): Cell(cat1, 3), ("cat4", "d"): Cell(cat4, 3)}
        return SweepReport("digits", "", rows, ("d",), cells, {})

    assert _verdict(report((90.0, 91.0, 92.0), (95.0, 96.0, 97.0))) == (
        "measured: at the same budget cat4 (4 x 16 steps) 96.00 ± 1.00 beat cat1 (1 x 64 steps) 91.00 ± 1.00 by "
        "5.00 points, more than the spread over draws"
    )
    assert "within the spread" in _verdict(report((90.0, 91.0, 92.0), (88.0, 92.0, 96.0)))
    assert _verdict(report((95.0, 96.0, 97.0), (90.0, 91.0, 92.0))).startswith(
        "measured: one network trained the whole budget was best here, cat1 (1 x 64 steps) 96.00 ± 1.00"
    )
    assert "no result yet" in _verdict(report((95.0,), ()))


@pytest.mark.slow
def test_the_demo_runs_from_an_empty_directory_within_3_minutes(tmp_path):
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "featcache.cli", "demo"], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)  # fmt: skip
    seconds = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for row in ("cat1", "cat2", "cat4"):
        assert any(line.split()[:2] == [row, str(int(row[3:]))] and "±" in line for line in out.splitlines())
    for name in ("digits.md", "digits.csv", "digits.png"):
        assert (tmp_path / "cache" / "reports" / name).exists()
    assert seconds < 180, f"the demo took {seconds:.0f}s"
