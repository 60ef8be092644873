"""One class map per dataset: ImageFolder splits with different class folders, from extraction to the probe.

A store written by featcache 0.2.0 numbered each split's folders on its own; it is made here by extracting with
the format's class sharing switched off, which is exactly that numbering.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import save_checkpoint
from data_factory import write_imagefolder
from store_factory import make_store

import featcache as fc
from featcache.classmap import class_map_diff
from featcache.cli import main
from featcache.data import ImageFolderDataset
from featcache.errors import StoreMismatchError
from featcache.store import store_path

DATASET = "imagefolder:folder"
UNION = ["cat", "dog", "zebra"]  # val lacks dog: numbered on its own, its zebra would be 1, not 2


@pytest.fixture
def run(paths):
    runner = CliRunner()

    def invoke(*args: str):
        roots = ["--data-dir", str(paths.data), "--cache-dir", str(paths.cache), "--checkpoint-dir",
                 str(paths.checkpoints), "--config-dir", str(paths.config)]  # fmt: skip
        return runner.invoke(main, [*roots, *args], catch_exceptions=False)

    return invoke


@pytest.fixture
def stores(run, paths, monkeypatch):
    """Stores 'old' (each split numbered on its own) and 'new' (one map) of a folder whose val lacks dog."""
    write_imagefolder(paths.data / "folder", splits=("train",), classes=tuple(UNION), per_class=4)
    write_imagefolder(paths.data / "folder", splits=("val",), classes=("cat", "zebra"), per_class=3, seed=1)
    save_checkpoint(paths, "net0", seed=0)
    common = ["--ckpt", str(paths.checkpoints / "net0.pth"), "--arch", "resnet10", "--dataset", DATASET,
              "--workers", "0", "--quiet"]  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr(ImageFolderDataset, "shares_classes", False)
        assert run("extract", *common, "--store-name", "old").exit_code == 0
    assert run("extract", *common, "--store-name", "new").exit_code == 0
    return {name: store_path(paths.cache, DATASET, name) for name in ("old", "new")}


def _one_line_error(result, *needles):
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for n in needles:
        assert n in lines[0], lines[0]


def test_every_split_records_the_dataset_class_map(stores):
    for split in ("train", "val"):
        assert list(fc.open_store(stores["new"]).split(split).meta.classes) == UNION
        _, labels, ids = fc.load_split(stores["new"], split)
        assert labels.tolist() == [UNION.index(i.split("/")[0]) for i in ids], split
    _, val_labels, _ = fc.load_split(stores["new"], "val")
    assert set(val_labels.tolist()) == {0, 2}


def test_probe_notes_the_class_a_split_lacks(run, stores):
    r = run("probe", "--stores", str(stores["new"]), "--preset", "quick", "--epochs", "1", "--format", "json")
    assert r.exit_code == 0, r.output
    assert "1 class(es) in 'train' but not in 'val': dog" in r.output


def test_a_store_numbered_per_split_is_refused_and_not_mixed_with_a_new_one(run, stores):
    old = fc.open_store(stores["old"])
    assert list(old.split("train").meta.classes) == UNION and list(old.split("val").meta.classes) == ["cat", "zebra"]
    with pytest.raises(StoreMismatchError, match=r"splits 'val' and 'train' .* \('val' lacks dog\).*--overwrite"):
        fc.load_split(stores["old"], "val")
    with pytest.raises(StoreMismatchError, match="splits 'train' and 'val' .*'val' lacks dog"):
        fc.load_split(stores["old"], "train")  # its labels alone are right, but not next to val's
    r = run("probe", "--stores", str(stores["old"]), "--preset", "quick", "--epochs", "1")
    _one_line_error(r, "splits 'train' and 'val'", "'val' lacks dog", "--overwrite")

    both = [stores["new"], stores["old"]]
    for split in ("train", "val"):
        with pytest.raises(StoreMismatchError, match="'val' lacks dog"):
            fc.load_split(both, split)
    r = run("probe", "--stores", ",".join(str(p) for p in both), "--preset", "quick", "--epochs", "1")
    _one_line_error(r, "cannot concatenate", "split 'val'")

    # the fix the message gives: extract the old store again
    again = ["--ckpt", str(stores["old"].parents[2] / "ckpts" / "net0.pth"), "--arch", "resnet10", "--dataset",
             DATASET, "--store-name", "old", "--workers", "0", "--quiet", "--overwrite"]  # fmt: skip
    assert run("extract", *again).exit_code == 0
    X, y, _ = fc.load_split(both, "val")
    assert X.shape[1] == 1024 and set(y.tolist()) == {0, 2}


def test_the_same_classes_in_another_order_are_another_map(tmp_path):
    X, y = np.ones((6, 2), np.float32), np.arange(6) % 2
    path = make_store(tmp_path / "s.zarr", {"train": (X, y), "test": (X, y)},
                      classes={"train": ["cat", "dog"], "test": ["dog", "cat"]})  # fmt: skip
    with pytest.raises(StoreMismatchError, match=r"same classes in another order \(label 0 is cat in 'train', dog"):
        fc.load_split(path, "train")
    same = make_store(tmp_path / "t.zarr", {"train": (X, y), "test": (X, y)},
                      classes={"train": ["cat", "dog"], "test": ["cat", "dog"]})  # fmt: skip
    assert fc.load_split(same, "test")[1].tolist() == y.tolist()
    assert class_map_diff("a", list("abcdefghijklm"), "b", ["z"]).startswith("'a' lacks z; 'b' lacks a, b, c")
    assert class_map_diff("a", list("abcdefghijklm"), "b", ["z"]).endswith("j and 3 more")
