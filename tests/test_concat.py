"""featcache.concat: lazy concatenation equals np.concatenate, and mismatched stores are refused."""

from __future__ import annotations

import numpy as np
import pytest
from store_factory import make_store

from featcache.concat import ConcatView
from featcache.errors import StoreError, StoreIncompleteError, StoreMismatchError
from featcache.store import open_store

N = 70


@pytest.fixture
def parts():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, N)
    return [rng.normal(size=(N, d)).astype(np.float32) for d in (8, 5, 12)], y


def _stores(tmp_path, parts, **kw):
    Xs, y = parts
    return [open_store(make_store(tmp_path / f"s{k}.zarr", {"train": (X, y)}, name=f"s{k}", chunk_rows=16 + k, **kw))
            for k, X in enumerate(Xs)]  # fmt: skip


@pytest.mark.parametrize("kind", ["random", "contiguous", "repeats"])
def test_batches_equal_np_concatenate(tmp_path, parts, kind):
    view = ConcatView(_stores(tmp_path, parts), "train")
    full = np.concatenate(parts[0], axis=1)
    rng = np.random.default_rng(0)
    idx = {"random": rng.permutation(N)[:33], "contiguous": np.arange(10, 50),
           "repeats": rng.integers(0, N, 40)}[kind]  # fmt: skip
    assert view.dim == 25 and len(view) == N
    np.testing.assert_array_equal(view.take(idx), full[idx])
    np.testing.assert_array_equal(view.load(), full)
    np.testing.assert_array_equal(view.labels, parts[1])


def test_compressed_stores_are_read_through_zarr(tmp_path, parts):
    Xs, y = parts
    stores = _stores(tmp_path, parts, compression="zstd")
    assert not stores[0].split("train").mmap
    view = ConcatView(stores, "train")
    idx = np.random.default_rng(3).permutation(N)
    np.testing.assert_array_equal(view.take(idx), np.concatenate(Xs, axis=1)[idx])
    assert all(s.verify() == [] for s in stores)


def test_float16_stores_give_float16_rows(tmp_path, parts):
    view = ConcatView(_stores(tmp_path, parts, dtype="float16"), "train")
    assert view.dtype == np.float16
    np.testing.assert_array_equal(view.load(), np.concatenate(parts[0], axis=1).astype(np.float16))


def test_incomplete_store_refused(tmp_path, parts):
    Xs, y = parts
    ok = open_store(make_store(tmp_path / "a.zarr", {"train": (Xs[0], y)}))
    partial = open_store(make_store(tmp_path / "b.zarr", {"train": (Xs[1], y)}, chunks=2))
    with pytest.raises(StoreIncompleteError, match=r"b\.zarr is not complete"):
        ConcatView([ok, partial], "train")


def test_missing_chunk_file_refused(tmp_path, parts):
    stores = _stores(tmp_path, parts)
    (stores[1].path / "train" / "features" / "c" / "1" / "0").unlink()
    with pytest.raises(StoreError, match=r"s1\.zarr split 'train'.*featcache verify"):
        ConcatView(stores, "train")


def test_different_sample_order_refused(tmp_path, parts):
    Xs, y = parts
    a = open_store(make_store(tmp_path / "a.zarr", {"train": (Xs[0], y)}))
    ids = [f"train/{i}" for i in reversed(range(N))]
    b = open_store(make_store(tmp_path / "b.zarr", {"train": (Xs[1], y)}, ids={"train": ids}))
    with pytest.raises(StoreMismatchError, match=r"differs in ids_sha256.*different sample order"):
        ConcatView([a, b], "train")


def test_different_labels_and_dataset_refused(tmp_path, parts):
    Xs, y = parts
    a = open_store(make_store(tmp_path / "a.zarr", {"train": (Xs[0], y)}))
    b = open_store(make_store(tmp_path / "b.zarr", {"train": (Xs[1], (y + 1) % 4)}))
    with pytest.raises(StoreMismatchError, match="labels_sha256"):
        ConcatView([a, b], "train")
    c = open_store(make_store(tmp_path / "c.zarr", {"train": (Xs[1], y)}, dataset={"name": "other"}))
    with pytest.raises(StoreMismatchError, match=r"datasets differ \(synthetic vs other\)"):
        ConcatView([a, c], "train")


@pytest.mark.parametrize(
    "over",
    [
        {"transform": {"name": "cifar-224px"}},
        {"precision": "bf16"},
        {"preprocess": {"backend": "pil", "device": "cpu"}},
    ],
)
def test_preprocessing_mix_needs_the_flag(tmp_path, parts, over):
    Xs, y = parts
    a = open_store(make_store(tmp_path / "a.zarr", {"train": (Xs[0], y)}))
    b = open_store(make_store(tmp_path / "b.zarr", {"train": (Xs[1], y)}, **over))
    key = next(iter(over))
    with pytest.raises(StoreMismatchError, match=rf"{key} differs.*--allow-transform-mix"):
        ConcatView([a, b], "train")
    assert ConcatView([a, b], "train", allow_transform_mix=True).dim == 13


def test_rows_skipped_in_any_store_are_left_out(tmp_path, parts):
    stores = _stores(tmp_path, parts)
    import zarr

    g = zarr.open_group(stores[2].path / "train", mode="r+")
    g.attrs["featcache_split"] = {**g.attrs["featcache_split"], "skipped_rows": [3, 40]}
    view = ConcatView([open_store(s.path) for s in stores], "train")
    assert len(view.valid_rows) == N - 2 and 3 not in view.valid_rows and 40 not in view.valid_rows
