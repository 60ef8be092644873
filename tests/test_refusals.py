"""Stores a probe must not train on, refused with one line that says what to do: damaged ones (by the last
`featcache verify`), ones still being written, and one store named twice."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
from click.testing import CliRunner
from store_factory import make_store

from featcache.cli import main
from featcache.errors import ConfigError, StoreError
from featcache.probe import ProbeConfig, heads_from_preset, run_probe
from featcache.store import open_store, resolve_stores


@pytest.fixture
def run(paths):
    runner = CliRunner()

    def invoke(*args: str):
        roots = ["--data-dir", str(paths.data), "--cache-dir", str(paths.cache), "--config-dir", str(paths.config)]
        return runner.invoke(main, [*roots, *args], catch_exceptions=False)

    return invoke


def _line(result, *needles) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 4)).astype(np.float32), np.arange(40) % 3


def _probe(run, stores: str):
    return run("probe", "--stores", stores, "--dataset", "synthetic", "--preset", "quick", "--epochs", "1", "--wd",
               "1e-4")  # fmt: skip


def _live_lock(path, name="lock"):
    lock = path / "_featcache" / name
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": "t", "started": "now"}))


def test_probe_and_sweep_refuse_a_store_verify_found_damaged(run, paths, registry):
    X, y = _data()
    path = make_store(paths.cache / "synthetic" / "a.zarr", {"train": (X, y), "test": (X, y)})
    chunk = path / "train" / "features" / "c" / "1" / "0"
    good = chunk.read_bytes()
    chunk.write_bytes(good[:8] + bytes(a ^ 0xFF for a in good[8:12]) + good[12:])  # same size: only verify sees it
    assert run("verify", str(path)).exit_code == 1
    _line(_probe(run, str(path)), f"store {path} failed `featcache verify`", "does not match its checksum",
          "featcache extract --repair")  # fmt: skip
    heads, vf = heads_from_preset(registry.probe_preset("quick"), epochs=1)
    with pytest.raises(StoreError, match="--repair"):  # what `featcache sweep` and the API run
        run_probe(ProbeConfig((path,), heads, vf, device="cpu"))
    chunk.write_bytes(good)
    assert run("verify", str(path)).exit_code == 0  # a new verdict replaces the old one
    assert _probe(run, str(path)).exit_code == 0


def test_probing_a_store_whose_first_extraction_runs_says_who_writes_it(run, paths):
    X, y = _data()
    path = make_store(paths.cache / "synthetic" / "busy.zarr", {"train": (X, y)})  # train done, test to come
    _live_lock(path)
    _line(_probe(run, str(path)), f"store {path} is being written by pid {os.getpid()}", "splits so far: train",
          "wait for it to finish")  # fmt: skip
    with pytest.raises(StoreError, match=f"being written by pid {os.getpid()}"):
        open_store(path).split("test")
    (path / "_featcache" / "lock").unlink()
    _live_lock(path, "lock-shard-1-of-4")  # a Slurm array task, or a torchrun rank
    _line(_probe(run, str(path)), "being written by shard-1-of-4, pid", "wait for it to finish")
    (path / "_featcache" / "lock-shard-1-of-4").unlink()
    _line(_probe(run, str(path)), "has no test or val split", "pass --test-split")  # nobody writes it: say so


def test_a_store_named_twice_is_refused(run, paths):
    X, y = _data()
    path = make_store(paths.cache / "synthetic" / "ref.zarr", {"train": (X, y), "test": (X, y)})
    relative = os.path.relpath(path)
    for spec, twice in (("ref,ref", "'ref' and 'ref'"), (f"ref,{relative}", f"'ref' and '{relative}'")):
        _line(_probe(run, spec), f"--stores names store {paths.cache / 'synthetic' / 'ref.zarr'} twice", twice,
              "name each store once")  # fmt: skip
    with pytest.raises(ConfigError, match=r"'ref' and 'ref \(in set both\)'"):
        resolve_stores("ref,both", "synthetic", paths.cache, {"both": ["ref"]})
    assert resolve_stores("ref", "synthetic", paths.cache) == [path]
