"""pipeline/ holds launchers that wrap `featcache sweep`, not a second implementation of it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from ckpt_factory import write_algoperf
from conftest import REPO
from data_factory import write_cifar10, write_cifar100, write_imagefolder, write_inat

from featcache.config import Paths, load_registry
from featcache.sweep import load_sweep

SCRIPT = REPO / "pipeline" / "slurm_sweep.sh"


def _launch(*args: str, **env: str) -> subprocess.CompletedProcess:
    # FEATCACHE=echo (the default here): print the command the job would run instead of running it
    base = {k: v for k, v in os.environ.items() if k not in ("SLURM_ARRAY_TASK_ID", "SWEEP")}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO,
                          env={**base, "FEATCACHE": "echo", **env})  # fmt: skip


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "pipeline").glob("*.sh")))
def test_every_launcher_is_valid_bash_that_calls_featcache(script):
    path = REPO / "pipeline" / script
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    assert "featcache" in path.read_text().split("set -euo pipefail", 1)[1]


def test_slurm_script_is_valid_bash_with_sbatch_lines():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    lines = SCRIPT.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    sbatch = [i for i, line in enumerate(lines) if line.startswith("#SBATCH ")]
    assert sbatch and max(sbatch) < first_command  # sbatch reads its options only before the first command
    assert "FEATCACHE_CACHE=" in SCRIPT.read_text()  # the note on shared storage


def test_slurm_script_runs_the_sweep_cli():
    done = _launch("--dry-run")
    assert done.returncode == 0 and done.stdout.split() == [
        "sweep",
        "configs/sweeps/timecat.yaml",
        "--quiet",
        "--dry-run",
    ]
    task = _launch(SLURM_ARRAY_TASK_ID="2", SWEEP="digits")
    assert task.stdout.split() == ["sweep", "digits", "--quiet", "--dataset", "cifar100"]


def test_slurm_script_dry_run_with_the_real_cli(tmp_path):
    """The command the job runs works: the research grid planned, and checked as the run would check it."""
    paths = Paths(data=tmp_path / "data", cache=tmp_path / "cache", checkpoints=tmp_path / "ckpts")
    roots = ["--data-dir", str(paths.data), "--cache-dir", str(paths.cache), "--checkpoint-dir", str(paths.checkpoints)]
    real = {"FEATCACHE": f"{sys.executable} -m featcache.cli"}
    empty = _launch("--dry-run", *roots, **real)  # an empty machine: the dry run fails as the run would, at once
    assert empty.returncode == 1, empty.stderr
    assert empty.stderr.startswith("Error: sweep timecat: 16 checkpoint file(s) to extract are missing: ")
    reg = load_registry(paths)
    for row in load_sweep("timecat", reg).rows:
        for spec in (c for d in row.draws for c in reg.expand_checkpoints(d)):
            # a dry run reads no weights, only that the files are there and the training step they record
            write_algoperf(spec.path, {"w": torch.zeros(1)}, row.steps_per_model)
    write_cifar10(paths.data / "cifar")
    write_cifar100(paths.data / "cifar")
    write_imagefolder(paths.data / "imagenet")
    write_inat(paths.data / "inaturalist18")
    done = _launch("--dry-run", *roots, **real)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == (
        "dry run: 4 extraction(s) and 32 probe(s) would run; 0 of 32 probe(s) already done"
    )
    assert not paths.cache.exists()  # a dry run writes nothing
