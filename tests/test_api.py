"""The Python API (featcache.api, also `import featcache as fc`): the same functions the CLI uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from store_factory import make_store
from test_results import _record

import featcache as fc
from featcache.errors import ConfigError, StoreMismatchError
from featcache.results import append_record


@pytest.fixture
def cache(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(50, 6)).astype(np.float32), np.arange(50) % 3
    views = [X + k for k in (1.0, 2.0)]
    for k, cols in enumerate((slice(0, 2), slice(2, 6))):
        make_store(tmp_path / "synthetic" / f"s{k}.zarr", {"train": (X[:, cols], y), "test": (X[:10, cols], y[:10])},
                   name=f"s{k}", chunk_rows=16, views={"train": [v[:, cols] for v in views]})  # fmt: skip
    return tmp_path, X, y, views


def test_load_split_concatenates_stores_by_name_or_path(cache):
    root, X, y, views = cache
    got, labels, ids = fc.load_split(["s0", "s1"], "train", dataset="synthetic", cache_dir=root)
    np.testing.assert_array_equal(got, X)
    assert labels.tolist() == y.tolist() and ids == [f"train/{i}" for i in range(50)]
    t, _, _ = fc.load_split([root / "synthetic" / "s1.zarr", root / "synthetic" / "s0.zarr"], "test", as_torch=True)
    assert isinstance(t, torch.Tensor) and torch.equal(t, torch.from_numpy(np.concatenate([X[:10, 2:], X[:10, :2]], 1)))
    v1, _, _ = fc.load_split(["s0", "s1"], "train", dataset="synthetic", cache_dir=root, view=1, rows=[3, 0])
    np.testing.assert_array_equal(v1, views[1][[3, 0]])
    with pytest.raises(ConfigError, match="pass --dataset"):
        fc.load_split("s0")


def test_list_stores_and_results(cache):
    root, *_ = cache
    summaries = fc.list_stores(root, dataset="synthetic")
    assert [s.store for s in summaries] == ["s0", "s1"] and summaries[1].dim == 4
    assert summaries[0].splits["train"]["views"] == 2
    append_record(root, _record(1, "cifar10", ["a"], 1e-4))
    append_record(root, _record(2, "cifar100", ["a", "b"], 1e-4))
    recs = fc.load_results(root, dataset="cifar10")
    assert [r.id for r in recs] == ["r1"]
    assert fc.results_table(fc.load_results(root))[0]["features"] == "cat2"


def test_load_split_refuses_stores_that_do_not_mix(cache, tmp_path):
    root, X, y, _ = cache
    make_store(root / "synthetic" / "odd.zarr", {"train": (X[:, :2], (y + 1) % 3)}, name="odd")
    with pytest.raises(StoreMismatchError, match="labels_sha256"):
        fc.load_split(["s0", "odd"], dataset="synthetic", cache_dir=root)


@pytest.mark.parametrize("view", [True, False, 1.0, "1", -1])
def test_load_split_refuses_a_view_that_is_not_an_index(cache, view):
    root, *_ = cache
    with pytest.raises(ConfigError, match=rf"load_split: view must be None or an integer >= 0 .*got {view!r}"):
        fc.load_split("s0", "train", dataset="synthetic", cache_dir=root, view=view)
    v1, _, _ = fc.load_split("s0", "train", dataset="synthetic", cache_dir=root, view=np.int64(1), rows=[0])
    np.testing.assert_array_equal(v1, cache[3][1][[0], :2])
