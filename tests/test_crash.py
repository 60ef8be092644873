"""Crash safety: SIGKILL at any moment, two writers, a full or unwritable disk, and `featcache verify`.

Real `featcache extract` processes are forked from one server that imported torch once
(:mod:`featcache.testing.crash`, which ``benchmarks/kill_resume.py`` runs too): a fresh interpreter costs ~5 s on
this machine, a fork ~0.1 s.
Every resumed store is compared byte for byte with one uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from conftest import REPO, one_error_line, refuse_writes_under
from store_factory import make_store, provenance

from featcache.cli import main
from featcache.errors import StoreError, StoreLockedError
from featcache.store import SplitData, StoreWriter, open_store
from featcache.store import _writer as writer_mod
from featcache.testing import crash as kr


@pytest.fixture(scope="module")
def launcher():
    server = kr.ForkServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, launcher):
    """100 CIFAR-format images (13 chunks of 8 rows over train and test) and the uninterrupted store."""
    s = kr.make_setup(tmp_path_factory.mktemp("crash"), images=100, chunk_rows=8, batch_size=4)
    (s.root / "logs").mkdir()
    _, s.hold_s = kr.timed_run(launcher, s, "reference", s.root / "logs" / "reference.log")
    return s


def _cli(setup, store, *extra):
    return CliRunner().invoke(main, [*setup.argv(store), *extra], catch_exceptions=False)


def _incomplete(path) -> bool:
    s = open_store(path)
    return not s.splits or not all(s.split(n, require_complete=False).complete for n in s.splits)


# --- SIGKILL -------------------------------------------------------------------------------------------


def test_random_kills_resume_to_the_same_bytes(setup, launcher):
    rng = random.Random(1)
    for k in range(3):
        r = kr.trial(launcher, setup, f"random{k}", setup.hold_s, rng, setup.root / "logs")
        assert (r["lost"], r["problems"]) == (0, []), r


# Kill points along the write order of featcache.store (the n-th call of the target is never entered).
KILL_POINTS = {
    "before-root-group": ("zarr:create_group", 1),
    "split-group-without-arrays": ("zarr:Group.create_array", 1),
    "split-without-ids": ("zarr:Group.create_array", 3),
    "split-arrays-without-attrs": ("featcache.store._writer:fsync_tree", 1),
    "split-not-listed-in-store": ("featcache.store:SplitWriter._list_in_store", 1),
    "between-chunks": ("featcache.store._writer:write_json_atomic", 8),  # 3 group docs, then markers
    "chunks-done-flag-not-set": ("featcache.store:FeatureArray.cheap_problems", 1),
    "lock-not-released": ("featcache.store._lock:StoreLock.release", 1),
}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_at_each_step_of_the_write_order(setup, launcher, point):
    store, logs = f"at-{point}", setup.root / "logs"
    proc = launcher.start(setup.argv(store), logs / f"{store}.log", kill_at=KILL_POINTS[point])
    assert proc.wait() == -signal.SIGKILL, proc.output()
    resume = launcher.start(setup.argv(store), logs / f"{store}.resume.log")
    assert resume.wait() == 0, resume.output()
    assert kr.compare(setup.path("reference"), setup.path(store)) == (0, [])


def test_kill_during_overwrite_then_resume(setup, launcher):
    store, logs = "overwritten", setup.root / "logs"
    assert launcher.start(setup.argv(store), logs / "ow1.log").wait() == 0
    argv = [*setup.argv(store), "--overwrite"]
    killed = launcher.start(argv, logs / "ow2.log", kill_at=("featcache.store._store_writer:rmtree", 3))
    assert killed.wait() == -signal.SIGKILL
    resume = launcher.start(setup.argv(store), logs / "ow3.log")  # without --overwrite: debris is removed
    assert resume.wait() == 0, resume.output()
    assert "written" in resume.output()
    assert kr.compare(setup.path("reference"), setup.path(store)) == (0, [])


# --- two writers ---------------------------------------------------------------------------------------


def test_second_extract_refused_while_the_first_lives_then_takes_over(setup, launcher):
    store, logs = "contended", setup.root / "logs"
    first = launcher.start(
        setup.argv(store), logs / "first.log", sleep_at=("featcache.store:SplitWriter.write_chunk", 60)
    )
    lock = setup.path(store) / "_featcache" / "lock"
    while not lock.exists():
        assert first.poll() is None, first.output()
        time.sleep(0.01)
    second = launcher.start(setup.argv(store), logs / "second.log")
    assert second.wait() == 1
    one_error_line(second.output(), f"pid {first.pid} on host {socket.gethostname()}", "is being written")
    first.kill()
    first.wait()
    third = launcher.start(setup.argv(store), logs / "third.log")
    assert third.wait() == 0, third.output()
    assert "taking over" in third.output()
    assert kr.compare(setup.path("reference"), setup.path(store)) == (0, [])


def test_a_writer_that_lost_its_lock_writes_no_marker(tmp_path):
    y = np.zeros(20, dtype=np.int64)
    with StoreWriter(tmp_path / "s.zarr", provenance(dim=4)) as w:
        sw = w.split(SplitData("train", [str(i) for i in range(20)], y, "fp", ["0"]), 4, "float32", chunk_rows=8)
        lock = w.path / "_featcache" / "lock"
        lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "theirs"}))
        with pytest.raises(StoreLockedError, match="lost its lock .* pid 1 on host elsewhere"):
            sw.write_chunk(0, np.ones((8, 4), np.float32))
        assert sw.pending() == [0, 1, 2]
    assert lock.exists()  # not ours: left alone


def test_leftovers_of_killed_lock_takers_are_removed(tmp_path):
    path = tmp_path / "s.zarr"
    marks = path / "_featcache"
    marks.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    left = [marks / f"lock.{host}.{dead.pid}.tmp", marks / f"lock.{host}.{dead.pid}.stale"]
    alive = marks / f"lock.{host}.{os.getppid()}.tmp"  # a live process's: kept
    for p in [*left, alive]:
        p.write_text("{}")
    with StoreWriter(path, provenance(dim=4)):
        pass
    assert not any(p.exists() for p in left) and alive.exists()


# --- leftovers and debris ------------------------------------------------------------------------------


def test_reopen_removes_partial_and_tmp_files_everywhere(tmp_path):
    X, y = np.ones((20, 4), np.float32), np.zeros(20, np.int64)
    path = make_store(tmp_path / "s.zarr", {"train": (X, y)}, chunk_rows=8, chunks=1)
    junk = [
        path / "zarr.3f2a.partial",
        path / "train" / "zarr.9c1d.partial",
        path / "train" / "features" / "c" / "1" / "0.77aa.partial",
        path / "_featcache" / "train" / ".1.json.4242.tmp",
    ]
    for p in junk:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("torn")
    make_store(path, {"train": (X, y)}, chunk_rows=8)
    assert not any(p.exists() for p in junk)
    assert open_store(path).verify() == []


def test_directory_without_root_metadata_is_debris(tmp_path):
    path = tmp_path / "s.zarr"
    (path / "train" / "features").mkdir(parents=True)
    (path / "train" / "zarr.json").write_text("{}")
    (path / "_featcache" / "train").mkdir(parents=True)
    (path / "_featcache" / "train" / "0.json").write_text("{}")  # a marker without its chunk
    X, y = np.ones((20, 4), np.float32), np.zeros(20, np.int64)
    make_store(path, {"train": (X, y)}, chunk_rows=8)
    assert open_store(path).verify() == []


def test_zarr_v2_directory_is_not_taken_for_debris(tmp_path):
    path = tmp_path / "s.zarr"
    path.mkdir()
    (path / ".zgroup").write_text('{"zarr_format": 2}')
    with pytest.raises(StoreError, match="zarr v2 store, not a featcache store"):
        StoreWriter(path, provenance(dim=4))
    assert (path / ".zgroup").exists()


# --- disk full, unwritable cache -----------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_disk_full_on_a_real_filesystem_then_resume(setup, small_tmpfs):
    s = dataclasses.replace(setup, cache_dir=small_tmpfs)
    r = _cli(s, "full")
    assert r.exit_code == 1
    one_error_line(r.output, str(s.path("full")), "No space left on device", "free space and rerun the same command")
    assert _incomplete(s.path("full"))
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_tmpfs)], check=True)
    r = _cli(s, "full")
    assert r.exit_code == 0, r.output
    assert kr.compare(setup.path("reference"), s.path("full")) == (0, [])


@pytest.mark.parametrize(
    ("owner", "target", "at"),
    [(zarr.Array, "__setitem__", 4), (writer_mod, "write_json_atomic", 3), (writer_mod, "fsync_tree", 1)],
    ids=["chunk-write", "chunk-marker", "split-creation"],
)
def test_disk_full_injected_then_resume(setup, monkeypatch, owner, target, at):
    orig, calls = getattr(owner, target), []

    def full(*args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return orig(*args, **kwargs)

    monkeypatch.setattr(owner, target, full)
    name = f"full-{target.strip('_')}"  # a plain store name: no leading or trailing underscore
    r = _cli(setup, name)
    assert r.exit_code == 1
    one_error_line(r.output, f"cannot write store {setup.path(name)}: No space left on device (ENOSPC)",
                    "free space and rerun the same command to resume")  # fmt: skip
    assert _incomplete(setup.path(name))
    monkeypatch.setattr(owner, target, orig)
    assert _cli(setup, name).exit_code == 0
    assert kr.compare(setup.path("reference"), setup.path(name)) == (0, [])


def test_cache_dir_under_a_file(setup, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    s = dataclasses.replace(setup, cache_dir=blocker / "sub")
    r = _cli(s, "x")
    assert r.exit_code == 1
    one_error_line(r.output, "cannot write store", "Not a directory", "--cache-dir is a writable directory")


def test_cache_dir_without_write_permission(setup, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    refuse_writes_under(monkeypatch, ro, errno.EACCES)  # what the mode does, for root too
    r = _cli(dataclasses.replace(setup, cache_dir=ro), "x")
    assert r.exit_code == 1
    one_error_line(r.output, "Permission denied", "--cache-dir is a writable directory")


# --- verify --------------------------------------------------------------------------------------------


@pytest.fixture
def stored(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4)).astype(np.float32), rng.integers(0, 3, 40)
    return make_store(tmp_path / "s.zarr", {"train": (X, y)}, chunk_rows=16)


def _verify(path):
    return CliRunner().invoke(main, ["verify", str(path)], catch_exceptions=False)


def _break_chunk(path, fn):
    f = path / "train" / "features" / "c" / "1" / "0"
    a = np.fromfile(f, dtype="<f4")
    f.write_bytes(fn(a).tobytes())


def _set_meta(path, **over):
    g = zarr.open_group(path / "train", mode="r+")
    g.attrs["featcache_split"] = {**g.attrs["featcache_split"], **over}


BREAKS = {
    "truncated-chunk": (lambda p: _break_chunk(p, lambda a: a[:-3]), "has 244 bytes, want 256"),
    "missing-chunk": (lambda p: (p / "train" / "features" / "c" / "2" / "0").unlink(), "is missing, want 256 bytes"),
    "nan": (lambda p: _break_chunk(p, lambda a: np.where(np.arange(a.size) == 5, np.nan, a)), "holds NaN or Inf"),
    "inf": (lambda p: _break_chunk(p, lambda a: np.where(np.arange(a.size) == 0, np.inf, a)), "holds NaN or Inf"),
    "ids": (lambda p: zarr.open_array(p / "train" / "ids", mode="r+").__setitem__(0, "other"), "ids do not match"),
    "labels": (lambda p: zarr.open_array(p / "train" / "labels", mode="r+").__setitem__(0, 9), "labels do not match"),
    "marker-missing": (
        lambda p: shutil.rmtree(p / "_featcache" / "train" / "features" / "0"),
        "1 of 3 chunks not written",
    ),
    "not-complete": (lambda p: _set_meta(p, complete=False), "not marked complete"),
    "skipped-rows": (lambda p: _set_meta(p, skipped_rows=[3]), "skipped_rows differ"),
    "rows": (lambda p: _set_meta(p, rows=41), "features array is"),
}


@pytest.mark.parametrize("kind", BREAKS)
def test_verify_fails_on_each_kind_of_damage(stored, kind):
    assert _verify(stored).exit_code == 0
    damage, needle = BREAKS[kind]
    damage(stored)
    r = _verify(stored)
    assert r.exit_code == 1 and f"{stored}: FAILED" in r.output and needle in r.output, r.output
    assert r.output.strip().splitlines()[-1] == "Error: 1 store(s) failed verification"


def test_verify_of_a_killed_extraction(setup, launcher):
    store = "killed-for-verify"
    proc = launcher.start(setup.argv(store), setup.root / "logs" / f"{store}.log",
                          kill_at=("featcache.store._writer:write_json_atomic", 5))  # fmt: skip
    assert proc.wait() == -signal.SIGKILL
    r = _verify(setup.path(store))
    assert r.exit_code == 1 and "train: not marked complete" in r.output and "chunks not written" in r.output


@pytest.mark.slow
def test_kill_resume_benchmark_20_kills():
    # python -m pytest -m slow tests/test_crash.py: fresh processes, about 5 minutes on 2 busy cores
    bench = [sys.executable, str(REPO / "benchmarks" / "kill_resume.py"), "--kills", "20"]
    r = subprocess.run(bench, capture_output=True, text=True)
    assert r.returncode == 0 and "20/20 survived, 0 rows lost" in r.stdout, r.stdout + r.stderr
