"""featcache installed from a wheel (not editable), used from an empty directory: the registries ship inside."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from ckpt_factory import make_net
from conftest import REPO


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv holding only the featcache wheel; its dependencies come from the test venv by a path entry."""
    root = tmp_path_factory.mktemp("installed")
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", root / "dist", str(REPO)],
                   check=True, cwd=root)  # fmt: skip
    wheel = next((root / "dist").glob("featcache-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    # a path line only: the test venv's .pth hooks (the editable install of this checkout) do not run
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "--python", venv / "bin" / "python", "install", "-q", "--no-deps", wheel], check=True)
    return venv / "bin" / "featcache"


def _run(featcache, cwd, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATCACHE_")}
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(featcache), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_wheel_works_from_an_empty_directory(installed, tmp_path):
    work = tmp_path / "empty"
    work.mkdir()
    r = _run(installed, work, "--version")
    assert r.returncode == 0 and r.stdout.strip() == "featcache 0.2.0", r.stdout + r.stderr
    where = _run(installed, work, "doctor")
    assert where.returncode == 0 and "featcache" in where.stdout, where.stderr
    assert "make simd" not in where.stdout  # a pip user has no Makefile: doctor gives the pip commands
    torch.save(make_net("resnet10", seed=0).state_dict(), work / "net.pth")
    r = _run(installed, work, "extract", "--ckpt", "net.pth", "--arch", "resnet10", "--dataset", "digits",
             "--limit", "80", "--views", "1", "--workers", "0", "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert (work / "cache" / "digits" / "net.zarr" / "zarr.json").is_file()
    r = _run(installed, work, "probe", "--stores", "net", "--dataset", "digits", "--preset", "quick", "--epochs", "1")
    assert r.returncode == 0 and "TEST top-1" in r.stdout, r.stdout + r.stderr
    assert (work / "cache" / "results.jsonl").is_file()
    # it is the wheel's code that ran, with the registries packaged in it
    probe = [str(installed.parent / "python"), "-c", "import featcache, featcache.config as c; "
             "print(featcache.__file__); print(c.packaged_config_dir())"]  # fmt: skip
    out = subprocess.run(probe, cwd=work, capture_output=True, text=True, check=True).stdout.split()
    assert str(REPO) not in out[0] and Path(out[1], "datasets.yaml").is_file() and str(REPO) not in out[1]
