"""Bad input through the CLI: one `Error:` line naming the thing and the fix, exit 1, no store that looks complete.

Only what test_cli, test_extract, test_models, test_store, test_concat, test_config and test_data do not
already cover at this level.
"""

from __future__ import annotations

import json
import os
import shutil
import socket

import numpy as np
import pytest
import torch
import zarr
from ckpt_factory import make_net, write_malicious, write_truncated
from click.testing import CliRunner
from conftest import REPO
from data_factory import write_cifar10, write_imagefolder, write_inat, write_truncated_jpeg
from store_factory import make_store

from featcache.cli import main
from featcache.store import FORMAT_VERSION, open_store, store_path


@pytest.fixture
def run(paths):
    runner = CliRunner()

    def invoke(*args: str, config=None):
        roots = ["--data-dir", str(paths.data), "--cache-dir", str(paths.cache), "--checkpoint-dir",
                 str(paths.checkpoints), "--config-dir", str(config or paths.config)]  # fmt: skip
        return runner.invoke(main, [*roots, *args], catch_exceptions=False)

    return invoke


@pytest.fixture
def cifar(paths):
    return write_cifar10(paths.data / "cifar", n_train_per_batch=4, n_test=6)


def _error(result, *needles) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _nothing_complete(paths) -> None:
    for path in paths.cache.glob("*/*.zarr"):
        s = open_store(path)
        assert not s.splits or not all(s.split(n, require_complete=False).complete for n in s.splits), path


def _extract(run, ckpt, *args, dataset="cifar10", transform="32px"):
    return run("extract", "--ckpt", str(ckpt), "--arch", "resnet10", "--dataset", dataset, "--transform", transform,
               "--workers", "0", "--quiet", *args)  # fmt: skip


# --- checkpoints ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["truncated", "text"])
def test_checkpoint_file_truncated_or_not_a_checkpoint(run, paths, cifar, ckpt, kind):
    bad = paths.checkpoints / f"{kind}.pth"
    if kind == "truncated":
        write_truncated(ckpt[0].path, bad)
    else:
        bad.write_text("not a checkpoint\n")
    _error(_extract(run, bad), str(bad), "truncated, corrupt or not a torch file")
    assert not any(paths.cache.iterdir())


def test_malicious_checkpoint_refused_unless_trusted(run, paths, cifar):
    flag = paths.data / "pwned"
    bad = write_malicious(paths.checkpoints, make_net("resnet10").state_dict(), flag)
    _error(_extract(run, bad), str(bad), "unsafe global shutil.copyfile", "--trust-checkpoint")
    assert not flag.exists() and not any(paths.cache.iterdir())
    r = _extract(run, bad, "--trust-checkpoint", "--split", "test")
    assert r.exit_code == 0, r.output
    assert flag.exists()  # the user vouched for the file: its code ran


@pytest.mark.parametrize(
    "entry",
    [
        "checkpoints:\n  evil: {arch: resnet10, path: ../outside.pth}\n",
        "checkpoints:\n  evil: {arch: resnet10, path: /etc/passwd}\n",
        "evil: {arch: resnet10, pretrained: [ok.pth, ../../outside.pth]}\n",  # research layout
    ],
    ids=["dotdot", "absolute", "research-layout"],
)
def test_registry_path_outside_the_checkpoint_dir(run, paths, tmp_path, entry):
    config = tmp_path / "configs"
    shutil.copytree(REPO / "configs", config)
    (config / "checkpoints.d").mkdir(exist_ok=True)
    (config / "checkpoints.d" / "evil.yaml").write_text(entry)
    line = _error(run("extract", "--ckpt", "evil", config=config), "evil.yaml")
    assert "escapes its root" in line or "is an absolute path" in line


def test_dataset_registry_root_outside_the_data_dir(run, paths, tmp_path, ckpt):
    config = tmp_path / "configs"
    shutil.copytree(REPO / "configs", config)
    text = (config / "datasets.yaml").read_text().replace("root: cifar,", "root: ../../cifar,", 1)
    (config / "datasets.yaml").write_text(text)
    r = run("extract", "--ckpt", str(ckpt[0].path), "--arch", "resnet10", "--dataset", "cifar10", config=config)
    _error(r, "datasets.cifar10: root '../../cifar' escapes its root")


def test_features_beyond_float16(run, paths, cifar):
    net = make_net("resnet10")
    with torch.no_grad():
        net.layer4[0].bn2.bias += 1e5  # the last BN before pooling: every pooled feature is ~1e5
    torch.save(net.state_dict(), paths.checkpoints / "big.pth")
    _error(_extract(run, paths.checkpoints / "big.pth"), "beyond float16's 65504", "--dtype float32 --overwrite")
    _nothing_complete(paths)
    r = _extract(run, paths.checkpoints / "big.pth", "--dtype", "float32", "--overwrite")
    assert r.exit_code == 0, r.output
    assert open_store(store_path(paths.cache, "cifar10", "big")).split("test").read().min() > 65504


# --- datasets -------------------------------------------------------------------------------------------


def test_dataset_directory_empty(run, paths, ckpt):
    (paths.data / "empty").mkdir()
    _error(_extract(run, ckpt[0].path, dataset="imagefolder:empty", transform="224px"),
           "has no class sub-directories")  # fmt: skip
    assert not any(paths.cache.iterdir())


@pytest.fixture
def folder(paths):
    write_imagefolder(paths.data / "folder", splits=("val",), per_class=2)
    return paths.data / "folder" / "val"


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_bad_image_named_or_skipped_and_recorded(run, paths, ckpt, folder, kind):
    if kind == "truncated":
        bad = write_truncated_jpeg(folder / "dog" / "dog_zzz.jpg")
    else:
        bad = folder / "dog" / "dog_zzz.png"
        bad.write_bytes(b"\x89PNG not really")
    args = ("--dataset", "imagefolder:folder", "--transform", "224px")
    r = run("extract", "--ckpt", str(ckpt[0].path), "--arch", "resnet10", *args, "--workers", "0", "--quiet")
    _error(r, str(bad), "--on-bad-image skip")
    _nothing_complete(paths)
    r = run("extract", "--ckpt", str(ckpt[0].path), "--arch", "resnet10", *args, "--workers", "0", "--quiet",
            "--on-bad-image", "skip")  # fmt: skip
    assert r.exit_code == 0, r.output
    reader = open_store(store_path(paths.cache, "imagefolder:folder", "net0")).split("val")
    assert reader.meta.skipped_rows == (reader.ids.index(f"dog/{bad.name}"),)


@pytest.mark.parametrize("bad", ["../../outside.jpg", "/etc/hostname"])
def test_inat_file_name_outside_the_dataset_root(run, paths, ckpt, bad):
    root = paths.data / "inaturalist18"
    write_inat(root)
    doc = json.loads((root / "val2018.json").read_text())
    doc["images"][0]["file_name"] = bad
    (root / "val2018.json").write_text(json.dumps(doc))
    r = _extract(run, ckpt[0].path, "--split", "val", dataset="inaturalist18", transform="224px")
    line = _error(r, "val2018.json", f"file_name '{bad}'")
    assert "escapes its root" in line or "is an absolute path" in line
    assert not any(paths.cache.iterdir())


# --- stores given to probe and verify -------------------------------------------------------------------


@pytest.fixture
def stores(paths):
    """Make stores (features, labels) under <cache>/synthetic; returns a function name -> path."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4)).astype(np.float32), rng.integers(0, 3, 40)

    def make(name, ids=None, **prov):
        path = paths.cache / "synthetic" / f"{name}.zarr"
        ids = {split: [f"{split}/{i}" for i in (ids or range(40))] for split in ("train", "test")}
        return make_store(path, {"train": (X, y), "test": (X, y)}, name=name, ids=ids, **prov)

    return make


def _probe(run, *paths):
    return run("probe", "--stores", ",".join(str(p) for p in paths), "--dataset", "synthetic", "--preset", "quick",
               "--epochs", "1", "--wd", "1e-4")  # fmt: skip


@pytest.mark.parametrize(
    ("other", "needle"),
    [
        ({"dataset": {"name": "other", "format": "array", "limit": None}}, "datasets differ (synthetic vs other)"),
        ({"transform": {"name": "cifar-224px"}}, "transform differs"),
        ({"ids": list(reversed(range(40)))}, "differs in ids_sha256"),
    ],
    ids=["dataset", "transform", "sample-order"],
)
def test_probe_refuses_stores_that_do_not_mix(run, stores, other, needle):
    a, b = stores("a"), stores("b", **other)
    _error(_probe(run, a, b), f"cannot concatenate {a} and {b}", needle)


def test_probe_refuses_a_store_failing_the_cheap_checks(run, stores):
    a = stores("a")
    (a / "train" / "features" / "c" / "1" / "0").unlink()
    _error(_probe(run, a), "is missing, want", "run `featcache verify`")


def test_future_format_version_refused_by_probe_and_verify(run, stores):
    a = stores("a")
    g = zarr.open_group(a, mode="r+")
    g.attrs["featcache"] = {**g.attrs["featcache"], "format_version": FORMAT_VERSION + 1}
    needle = f"format version {FORMAT_VERSION + 1}"
    _error(_probe(run, a), needle, "upgrade featcache")
    b = stores("b")
    result = run("verify", str(a), str(b))  # the unreadable store does not hide the verdict on the other
    assert result.exit_code == 1 and f"{a}: FAILED" in result.output and f"{b}: OK" in result.output
    assert needle in result.output and "upgrade featcache" in result.output


def test_unknown_checkpoint_given_to_verify_suggests_extract(run):
    result = run("verify", "--dataset", "cifar10", "run3")
    assert result.exit_code == 1 and "run3: FAILED" in result.output
    assert "no store" in result.output and "featcache extract --ckpt run3" in result.output


def test_probe_of_an_interrupted_store(run, paths, stores):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4)).astype(np.float32), rng.integers(0, 3, 40)
    path = make_store(paths.cache / "synthetic" / "half.zarr", {"train": (X, y), "test": (X, y)}, chunks=1)
    _error(_probe(run, path), "is not complete (1/3 chunks written)", "rerun the same `featcache extract`")


# --- hostile option values: one line, never a traceback --------------------------------------------------


def _one_line(result) -> str:
    assert result.exit_code in (1, 2), result.output
    assert "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


HOSTILE = [
    ("extract", "--ckpt", ""),
    ("extract", "--ckpt", " , ,"),
    ("extract", "--ckpt", "run0", "--batch-size", "0"),
    ("extract", "--ckpt", "run0", "--workers", "-1"),
    ("extract", "--ckpt", "run0", "--limit", "0"),
    ("extract", "--ckpt", "run0", "--chunk-rows", "-3"),
    ("extract", "--ckpt", "run0", "--views", "-1"),
    ("extract", "--ckpt", "run0", "--views-seed", "-7"),
    ("extract", "--ckpt", "run0", "--views-seed", str(2**80)),
    ("extract", "--ckpt", "run0", "--dataset", "cifar11"),
    ("extract", "--ckpt", "run0", "--dataset", "cifar10", "--split", "valid"),
    ("extract", "--ckpt", "run0", "--dataset", "cifar10", "--transform", "64px"),
    ("extract", "--ckpt", "run0", "--device", "cuda:7"),
    ("extract", "--ckpt", "run0", "--device", "toaster"),
    ("extract", "--ckpt", "x.pth", "--arch", "resnet5000"),
    ("probe", "--stores", ""),
    ("probe", "--stores", " , "),
    ("probe", "--stores", "s", "--dataset", "synthetic", "--seed", "-1"),
    ("probe", "--stores", "s", "--dataset", "synthetic", "--seed", str(2**70)),
    ("probe", "--stores", "s", "--dataset", "synthetic", "--epochs", "0"),
    ("probe", "--stores", "s", "--dataset", "synthetic", "--lr", "-1"),
    ("probe", "--stores", "s", "--dataset", "synthetic", "--lr", "nan"),
    ("probe", "--stores", "s", "--dataset", "synthetic", "--wd", "a,b"),
    ("probe", "--stores", "s", "--dataset", "synthetic", "--val-fraction", "1.5"),
    ("probe", "--stores", "s", "--dataset", "synthetic", "--batch-size", "1"),
    ("probe", "--stores", "s", "--dataset", "synthetic", "--max-memory", "lots"),
    ("probe", "--stores", "s", "--dataset", "synthetic", "--views", "several"),
    ("probe", "--stores", "s", "--dataset", "synthetic", "--test-split", "nope"),
    ("probe", "--stores", "s", "--dataset", "synthetic", "--preset", "fastest"),
    ("probe", "--stores", "s", "--dataset", "synthetic", "--device", "cuda"),
    ("probe", "--stores", "missing"),
    ("probe", "--stores", "s", "--dataset", "synthetic", "--solver", "knn", "--knn-k", "a,b"),
    ("probe", "--stores", "s", "--dataset", "synthetic", "--solver", "knn", "--knn-k", "0"),
    ("probe", "--stores", "s", "--dataset", "synthetic", "--solver", "lbfgs", "--lbfgs-tol", "-1"),
    ("probe", "--stores", "s", "--dataset", "synthetic", "--solver", "lbfgs", "--lbfgs-strengths", "0"),
    ("results", "--last", "0"),
    ("results", "--format", "xml"),
    ("ls", "--format", "yaml"),
    ("verify",),
    ("extract", "--nonsense"),
    ("nosuchcommand",),
    ("sweep", "nope"),
    ("sweep", "digits", "--dataset", "cifar11"),
    ("report", "digits", "--out", "/proc/no/such/dir"),
    ("demo", "--out", "/proc/no/such/dir", "--nonsense"),
]


@pytest.mark.parametrize("args", HOSTILE, ids=[" ".join(a) for a in HOSTILE])
def test_hostile_option_values_get_one_line(run, paths, stores, ckpt, args):
    stores("s")
    args = tuple(str(ckpt[0].path) if a == "x.pth" else a for a in args)
    line = _one_line(run(*args))
    assert len(line) < 400


def test_one_row_and_one_class_splits_get_one_line(run, paths):
    X = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    one_row = make_store(
        paths.cache / "synthetic" / "tiny.zarr", {"train": (X[:1], np.array([0])), "test": (X, np.arange(3))}
    )
    one_class = make_store(
        paths.cache / "synthetic" / "mono.zarr", {"train": (X, np.zeros(3, int)), "test": (X, np.arange(3))}
    )
    two_rows = make_store(
        paths.cache / "synthetic" / "pair.zarr", {"train": (X[:2], np.array([0, 1])), "test": (X, np.arange(3))}
    )
    assert "holds 1 class" in _one_line(_probe(run, one_row))
    assert "holds 1 class" in _one_line(_probe(run, one_class))
    assert "leave 0 val rows" in _one_line(_probe(run, two_rows))


def test_every_undecodable_image_is_named_in_one_run(run, paths, ckpt, folder):
    bad = [write_truncated_jpeg(folder / "dog" / "dog_zzz.jpg"), folder / "cat" / "cat_zzz.png"]
    bad[1].write_bytes(b"\x89PNG not really")
    args = ("--dataset", "imagefolder:folder", "--transform", "224px", "--workers", "0", "--quiet", "--batch-size", "2")
    line = _error(run("extract", "--ckpt", str(ckpt[0].path), "--arch", "resnet10", *args), "cannot decode 2 image(s)")
    assert str(bad[0]) in line and str(bad[1]) in line and "--on-bad-image skip" in line
    _nothing_complete(paths)


def test_two_checkpoints_writing_one_store_are_refused_before_any_work(run, paths, cifar, tmp_path):
    net = make_net("resnet10")
    a, b = paths.checkpoints / "a.pth", paths.checkpoints / "b.pth"
    for p in (a, b):
        torch.save(net.state_dict(), p)
    r = run("extract", "--ckpt", f"{a},{b}", "--arch", "resnet10", "--dataset", "cifar10", "--store-name", "one")
    _error(r, "--store-name names one store")
    config = tmp_path / "configs"
    shutil.copytree(REPO / "configs", config)
    (config / "checkpoints.d").mkdir(exist_ok=True)
    (config / "checkpoints.d" / "twins.yaml").write_text(
        "checkpoints:\n  'net a': {arch: resnet10, path: a.pth}\n  net_a: {arch: resnet10, path: b.pth}\n"
    )
    r = run("extract", "--ckpt", "net a,net_a", "--dataset", "cifar10", "--transform", "32px", config=config)
    _error(r, "'net a'", "'net_a'", "would both write store", "net_a.zarr")
    assert not (paths.cache / "cifar10").exists()


def test_repair_re_extracts_exactly_the_damaged_chunks(run, paths, cifar, ckpt):
    args = ("--ckpt", str(ckpt[0].path), "--arch", "resnet10", "--dataset", "cifar10", "--transform", "32px",
            "--workers", "0", "--quiet", "--chunk-rows", "4", "--split", "train")  # fmt: skip
    assert run("extract", *args).exit_code == 0
    store = store_path(paths.cache, "cifar10", "net0")
    reference = open_store(store).split("train").read()
    chunks = sorted((store / "train" / "features" / "c").iterdir(), key=lambda p: int(p.name))
    (chunks[1] / "0").unlink()
    raw = bytearray((chunks[3] / "0").read_bytes())
    raw[10] ^= 0xFF
    (chunks[3] / "0").write_bytes(bytes(raw))
    untouched = (chunks[2] / "0").stat().st_mtime_ns
    assert run("verify", "--dataset", "cifar10", "net0").exit_code == 1
    listed = json.loads(run("ls", "--format", "json").output)
    assert listed[0]["status"] == "damaged" and "missing" in listed[0]["problem"]
    r = run("extract", *args, "--repair")
    assert r.exit_code == 0 and "repaired" in r.output, r.output
    assert (chunks[2] / "0").stat().st_mtime_ns == untouched  # only the bad chunks were written again
    np.testing.assert_array_equal(open_store(store).split("train").read(), reference)
    assert run("verify", "--dataset", "cifar10", "net0").exit_code == 0
    assert json.loads(run("ls", "--format", "json").output)[0]["status"] == "complete"


def test_ls_shows_a_dead_writers_lock_as_stale_and_a_live_one_as_being_written(run, paths, stores):
    a = stores("a")
    lock = a / "_featcache" / "lock"
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 4242, "token": "t", "started": "then"}))
    os.utime(lock, (0, 0))  # its heartbeat stopped long ago
    row = json.loads(run("ls", "--format", "json").output)[0]
    assert row["status"] == "stale lock" and "pid 4242 on host elsewhere" in row["lock"]
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": "t", "started": "now"}))
    row = json.loads(run("ls", "--format", "json").output)[0]
    assert row["status"] == "being written" and row["dim"] == 4 and row["splits"]["train"]["rows"] == 40


def test_probing_a_store_being_written_says_wait(run, paths):
    X, y = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32), np.arange(40) % 3
    path = make_store(paths.cache / "synthetic" / "busy.zarr", {"train": (X, y), "test": (X, y)}, chunks=1)
    lock = path / "_featcache" / "lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": "t", "started": "now"}))
    _error(_probe(run, path), f"is being written by pid {os.getpid()}", "wait for it to finish")


def test_tiny_splits_do_not_pay_for_a_padded_chunk(paths):
    X = np.random.default_rng(0).normal(size=(150, 512)).astype(np.float32)
    path = make_store(paths.cache / "synthetic" / "small.zarr", {"train": (X, np.arange(150) % 3)},
                      chunk_rows=None, dtype="float16")  # fmt: skip
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    assert size < 1_000_000 and open_store(path).split("train").chunk_rows == 150
