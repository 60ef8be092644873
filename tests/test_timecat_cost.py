"""benchmarks/timecat_cost.py: the table's work counted from the configs, checked against the counts done by hand.

Run as its own process with the rates given, so nothing is measured and every number follows from the counts:
a forward-pass count that forgot the views or a checkpoint, a probe that forgot its refit, or the research
grid run once instead of once per weight decay gives other hours.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "timecat_cost.py"
# published sizes (train, test), classes; the presets: batch, heads (weight decays)
DATASETS = {"imagenet1k": (1_281_167, 50_000, 32, 2), "inaturalist18": (437_513, 24_426, 32, 3),
            "cifar100": (50_000, 10_000, 256, 6), "cifar10": (50_000, 10_000, 256, 6)}  # fmt: skip


def _run(tmp_path, *extra):
    out = tmp_path / "cost.json"
    argv = ["--device", "cpu", "--extract-images-per-s", "10000", "--probe-steps-per-s", "1000", "--out", str(out)]
    r = subprocess.run([sys.executable, str(BENCH), *argv, *extra], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout, json.loads(out.read_text())


def test_the_table_is_counted_as_by_hand(tmp_path):
    printed, doc = _run(tmp_path)
    rows = {r["dataset"]: r for r in doc["rows"]}
    assert list(rows) == list(DATASETS)
    widths = [2048] * 5 + [4096, 8192, 10240]  # cat1's five draws, cat2, cat4, cat5
    for name, (train, test, batch, heads) in DATASETS.items():
        r = rows[name]
        assert r["passes"] == (train * (1 + 8) + test) * 16  # 16 checkpoints, 8 views on train
        assert math.isclose(r["extract_h"], r["passes"] / 10000 / 3600)
        steps = 28 * (math.ceil(train * 0.9 / batch) + math.ceil(train / batch))  # select fit + refit
        assert math.isclose(r["probe_h"], len(widths) * steps / 1000 / 3600)
        per_image = [1 / 710 - 5 / 7476 + n / 7476 for n in (1, 1, 1, 1, 1, 2, 4, 5)]
        assert math.isclose(r["research_h"], sum(heads * 28 * (train + test) * t for t in per_image) / 3600)
    assert "16 distinct" in printed and "target: the whole table <= 4 h" in printed
    assert math.isclose(doc["featcache_h"], sum(r["extract_h"] + r["probe_h"] for r in doc["rows"]))


def test_packed_probes_count_one_probe_s_steps(tmp_path):
    _, doc = _run(tmp_path, "--packed")
    train, _, batch, _ = DATASETS["imagenet1k"]
    r = doc["rows"][0]
    assert math.isclose(r["probe_h"], 28 * (math.ceil(train * 0.9 / batch) + math.ceil(train / batch)) / 1000 / 3600)
