"""featcache.extract_stores and the extract options around it: which stores a call writes, under which names,
what it refuses before creating any, and what a complete, damaged or verified store becomes."""

from __future__ import annotations

import builtins
import dataclasses
import errno
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from data_factory import write_cifar10

from featcache.cli import main
from featcache.extract import ExtractConfig, extract
from featcache.store import open_store, store_path


@pytest.fixture
def cifar(paths):
    return write_cifar10(paths.data / "cifar", n_train_per_batch=4, n_test=6)  # 20 train, 6 test


@pytest.fixture
def run(paths):
    runner = CliRunner()

    def invoke(*args: str):
        roots = ["--data-dir", str(paths.data), "--cache-dir", str(paths.cache), "--checkpoint-dir",
                 str(paths.checkpoints), "--config-dir", str(paths.config)]  # fmt: skip
        return runner.invoke(main, [*roots, *args], catch_exceptions=False)

    return invoke


def _extract(run, ckpt, *args):
    return run("extract", "--ckpt", str(ckpt.path), "--arch", "resnet10", "--dataset", "cifar10", "--transform",
               "32px", "--workers", "0", "--quiet", "--chunk-rows", "4", *args)  # fmt: skip


def _line(result, *needles) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _config(paths, registry, spec, **kw) -> ExtractConfig:
    ds = registry.dataset("cifar10")
    kw = {"dtype": "float32", "batch_size": 8, "workers": 0, "device": "cpu", "chunk_rows": 4, **kw}
    return ExtractConfig((spec,), ds, registry.transform(ds, "32px"), paths.cache, **kw)


def _read_only(monkeypatch, root) -> None:
    """Every write under ``root`` fails as on a read-only filesystem (root writes through chmod)."""
    root = os.fspath(root)

    def refuse(path):
        if os.fspath(path).startswith(root):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def guard(fn, writes):
        def wrapped(path, *args, **kwargs):
            if isinstance(path, str | os.PathLike) and writes(path, args, kwargs):
                refuse(path)
            return fn(path, *args, **kwargs)

        return wrapped

    def mkdir(path, *args, **kwargs):
        if os.path.exists(path):  # what a read-only filesystem says first
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(path))
        refuse(path)
        return real_mkdir(path, *args, **kwargs)

    real_mkdir = os.mkdir
    mode = lambda p, a, k: any(c in (a[0] if a else k.get("mode", "r")) for c in "wax+")  # noqa: E731
    flags = lambda p, a, k: bool((a[0] if a else k.get("flags", 0)) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))  # noqa: E731
    monkeypatch.setattr(builtins, "open", guard(builtins.open, mode))
    monkeypatch.setattr(os, "open", guard(os.open, flags))
    monkeypatch.setattr(os, "mkdir", mkdir)
    for name in ("unlink", "rmdir", "rename", "replace", "link", "utime"):
        monkeypatch.setattr(os, name, guard(getattr(os, name), lambda p, a, k: True))


# --- what a call writes -----------------------------------------------------------------------------------


def test_an_already_complete_extract_succeeds_on_a_read_only_cache(run, paths, cifar, ckpt, monkeypatch):
    assert _extract(run, ckpt[0]).exit_code == 0
    _read_only(monkeypatch, paths.cache)
    r = _extract(run, ckpt[0])
    assert r.exit_code == 0, r.output
    assert "already complete" in r.output and "0 images x 0 store(s)" in r.output
    r = _extract(run, ckpt[0], "--views", "1")  # more views do need writing: one line saying so
    _line(r, "cannot write store", "Read-only file system")


def test_verify_during_an_extraction_says_incomplete_and_completion_or_repair_clears_verdicts(
    run, paths, registry, cifar, ckpt, monkeypatch
):
    from featcache.store import _writer

    real, calls = _writer.ArrayWriter.write_chunk, []

    def dies(self, *a, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(self, *a, **kw)

    cfg = _config(paths, registry, ckpt[0])
    monkeypatch.setattr(_writer.ArrayWriter, "write_chunk", dies)
    with pytest.raises(KeyboardInterrupt):
        extract(cfg)
    monkeypatch.undo()
    assert run("verify", "--dataset", "cifar10", "net0").exit_code == 1  # 2 of 5 chunks: not a damaged store
    row = json.loads(run("ls", "--format", "json").output)[0]
    assert row["status"] == "incomplete" and row["problem"] is None
    extract(cfg)
    assert json.loads(run("ls", "--format", "json").output)[0]["status"] == "complete"
    store = store_path(paths.cache, "cifar10", "net0")
    chunk = store / "train" / "features" / "c" / "2" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-8])
    assert run("verify", "--dataset", "cifar10", "net0").exit_code == 1
    assert json.loads(run("ls", "--format", "json").output)[0]["status"] == "damaged"
    assert extract(dataclasses.replace(cfg, repair=True)).stores[0]["status"] == "repaired"
    assert json.loads(run("ls", "--format", "json").output)[0]["status"] == "complete"  # before any new verify
    assert open_store(store).last_verdict() is None
    open_store(store)._record_verdict(["train: a verdict left by an older featcache"], True, "damaged")
    assert extract(dataclasses.replace(cfg, repair=True)).stores[0]["status"] == "already complete"  # nothing bad
    assert open_store(store).last_verdict() is None  # every chunk was checked: the old verdict is gone


# --- names --------------------------------------------------------------------------------------------------


def test_one_layer_is_a_store_of_its_own_next_to_the_pre_logits_one(paths, registry, cifar, ckpt):
    spec, _ = ckpt
    extract(_config(paths, registry, spec, splits=("test",)))
    before = open_store(store_path(paths.cache, "cifar10", "net0")).split("test").read()
    report = extract(_config(paths, registry, spec, splits=("test",), layers=("layer3",), pool="avg"))
    assert [(s["name"], s["status"], s["dim"]) for s in report.stores] == [("net0@layer3", "written", 256)]
    layer = open_store(store_path(paths.cache, "cifar10", "net0@layer3"))
    assert (layer.provenance.layer, layer.provenance.feature_dim) == ("layer3", 256)
    default = open_store(store_path(paths.cache, "cifar10", "net0"))
    assert (default.provenance.layer, default.provenance.feature_dim) == ("avgpool", 512)
    np.testing.assert_array_equal(default.split("test").read(), before)


@pytest.mark.parametrize("name", ["../../evil", "a/b", ".hidden", "evil_", "", "a b"])
def test_store_names_that_are_not_plain_names_are_refused(run, paths, cifar, ckpt, name):
    _line(_extract(run, ckpt[0], "--store-name", name), f"--store-name {name!r} is not a plain name")
    assert not list(paths.cache.parent.rglob("*.zarr"))  # not renamed into the cache, nor written beside it


def test_a_repeated_layer_is_named_as_such(run, paths, cifar, ckpt):
    line = _line(_extract(run, ckpt[0], "--layers", "layer4,layer3,layer4"), "--layers names 'layer4' more than once")
    assert "checkpoints" not in line
    assert not (paths.cache / "cifar10").exists()


# --- layers and pools -----------------------------------------------------------------------------------


def test_a_channels_last_pool_on_a_channels_first_map_is_refused_by_the_dry_run_and_before_any_store(
    run, paths, cifar, ckpt
):
    args = ("--layer", "layer1", "--pool", "avg-nhwc")
    for extra in (("--dry-run",), ()):
        _line(_extract(run, ckpt[0], *args, *extra), "layer 'layer1' of resnet10 gives (B, 64, 8, 8) at 32x32 px",
              "use --pool avg (the map is channels-first)")  # fmt: skip
        assert not (paths.cache / "cifar10").exists()
    r = _extract(run, ckpt[0], "--layer", "layer1", "--pool", "avg", "--dry-run")
    assert r.exit_code == 0 and "net0@layer1" in r.output, r.output
