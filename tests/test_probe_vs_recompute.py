"""Smoke test of benchmarks/probe_vs_recompute.py: its main runs end to end at the smallest sizes (a few seconds)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "probe_vs_recompute.py"


def _load():
    spec = importlib.util.spec_from_file_location("probe_vs_recompute", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_probe_vs_recompute_smoke(tmp_path, capsys):
    out = tmp_path / "pvr.json"
    argv = ["--device", "cpu", "--arch", "resnet10", "--checkpoints", "2", "--train-images", "64",
            "--test-images", "32", "--views", "2", "--epochs", "2", "--batch-size", "32", "--workers", "0",
            "--out", str(out)]  # fmt: skip
    assert _load().main(argv) == 0
    printed = capsys.readouterr().out
    assert "research / featcache:" in printed and "x 28 epochs x 6 sequential runs" in printed
    rec = json.loads(out.read_text())
    assert len(rec["research"]["epoch_s"]) == 2 and 0 <= rec["research"]["test_top1"] <= 100
    grid = rec["featcache"]["probes"]["grid"]
    assert len(grid["weight_decays"]) == 6 and grid["views"] == 2
    assert rec["featcache"]["probes"]["one"]["weight_decays"] == [1e-4]
    assert rec["extrapolation"]["ratio_grid"] > 0
