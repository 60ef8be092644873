"""pipeline/headline.py drives the CLI end to end and reads its table back from the results log."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from ckpt_factory import make_net
from conftest import REPO


def _run(args, paths=None):
    roots = ["--", "--data-dir", str(paths.data), "--cache-dir", str(paths.cache), "--checkpoint-dir",
             str(paths.checkpoints), "--config-dir", str(paths.config)] if paths else []  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny work: one thread, as conftest does in-process
    return subprocess.run([sys.executable, str(REPO / "pipeline" / "headline.py"), *args, *roots],
                          capture_output=True, text=True, cwd=REPO, env=env)  # fmt: skip


def test_dry_run_lists_one_extract_per_set_and_one_probe_per_row():
    out = _run(["--dry-run", "--datasets", "cifar10"]).stdout.splitlines()
    assert out[0] == "$ featcache extract --ckpt run0 --dataset cifar10"
    assert sum(line.startswith("$ featcache extract") for line in out) == 4
    assert "$ featcache probe --stores step80k --dataset cifar10 --preset seed --tag 'headline cat5'" in out


def test_sweep_on_digits_prints_the_table(paths):
    for k in range(2):
        (paths.checkpoints / "demo").mkdir(exist_ok=True)
        torch.save(make_net("resnet10", seed=k).state_dict(), paths.checkpoints / "demo" / f"seed{k}.pth.tar")
    rows = "cat1=demo-seed0;cat2=demo-seed0,demo-seed1"
    done = _run(["--datasets", "digits-transfer", "--rows", rows, "--preset", "quick"], paths)
    assert done.returncode == 0, done.stderr
    table = done.stdout.split("(test top-1 %, selected on val)")[1].split()
    assert table[0] == "cat1" and table[2] == "cat2" and 20.0 < float(table[1]) <= 100.0
