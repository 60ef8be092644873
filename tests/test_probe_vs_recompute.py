"""Smoke test of benchmarks/probe_vs_recompute.py: it runs end to end at the smallest sizes, as its own process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "probe_vs_recompute.py"


def test_probe_vs_recompute_smoke(tmp_path):
    out = tmp_path / "pvr.json"
    argv = ["--device", "cpu", "--arch", "resnet10", "--checkpoints", "2", "--train-images", "64",
            "--test-images", "32", "--views", "2", "--epochs", "2", "--batch-size", "32", "--workers", "0",
            "--out", str(out)]  # fmt: skip
    r = subprocess.run([sys.executable, str(BENCH), *argv], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    printed = r.stdout
    assert "research / featcache:" in printed and "x 28 epochs x 6 sequential runs" in printed
    rec = json.loads(out.read_text())
    assert len(rec["research"]["epoch_s"]) == 2 and 0 <= rec["research"]["test_top1"] <= 100
    grid = rec["featcache"]["probes"]["grid"]
    assert len(grid["weight_decays"]) == 6 and grid["views"] == 2
    assert rec["featcache"]["probes"]["one"]["weight_decays"] == [1e-4]
    assert rec["extrapolation"]["ratio_grid"] > 0
