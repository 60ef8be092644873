"""featcache.probe: sound selection on val, the research number, lazy and in-memory paths agree."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from store_factory import make_store

from featcache.errors import ConfigError, StoreError, StoreMismatchError
from featcache.heads import HeadConfig
from featcache.probe import ProbeConfig, heads_from_preset, resolve_stores, run_probe, val_split

HEADS = HeadConfig(epochs=4, batch_size=32, milestones=(3,), lr=0.05, weight_decays=(1e-4, 1e-2, 1.0))


def _blobs(n, classes, dim, spread, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    means = np.random.default_rng(99).normal(size=(classes, dim)) * spread
    return (means[y] + rng.normal(size=(n, dim))).astype(np.float32), y


@pytest.fixture
def stores(tmp_path):
    """Three stores whose features split well-separated class blobs column-wise."""
    Xtr, ytr = _blobs(240, 4, 12, spread=6.0, seed=0)
    Xte, yte = _blobs(80, 4, 12, spread=6.0, seed=1)
    return tuple(
        make_store(
            tmp_path / "synthetic" / f"s{k}.zarr",
            {"train": (Xtr[:, cols], ytr), "test": (Xte[:, cols], yte)},
            name=f"s{k}",
            chunk_rows=64,
        )  # fmt: skip
        for k, cols in enumerate((slice(0, 4), slice(4, 8), slice(8, 12)))
    )


def test_separable_features_reach_100_percent(stores):
    record = run_probe(ProbeConfig(stores, HEADS, device="cpu"))
    assert record["selected"]["test_top1"] == 100.0
    assert record["features"] == "cat3" and record["feature_dim"] == 12
    assert record["rows"] == {"fit": 216, "val": 24, "train": 240, "test": 80}


def test_record_reports_selection_and_research_number(stores):
    record = run_probe(ProbeConfig(stores[:1], dataclasses.replace(HEADS, epochs=3), device="cpu", tag="t1"))
    sel, research = record["selected"], record["research"]
    assert [h["weight_decay"] for h in record["heads"]] == [1e-4, 1e-2, 1.0]
    assert 1 <= sel["epoch"] <= 3 and sel["weight_decay"] in (1e-4, 1e-2, 1.0)
    best_val = max(h["val_top1"] for h in record["heads"])
    assert sel["val_top1"] == best_val
    # research-style = best test over every epoch and head, so never below what selection reports
    assert research["test_top1"] >= sel["test_top1"] and "selected on test" in research["note"]
    assert research["test_top1"] == max(h["best_test_top1"] for h in record["heads"])
    assert record["tag"] == "t1" and record["stores"][0]["checkpoint"]["sha256"] == "sha-s0"
    assert record["hyperparameters"]["weight_decays"] == (1e-4, 1e-2, 1.0)


def test_streaming_from_stores_equals_loading_them(stores):
    cfg = ProbeConfig(stores[:2], dataclasses.replace(HEADS, epochs=2), device="cpu")
    a = run_probe(dataclasses.replace(cfg, in_memory="yes"))
    b = run_probe(dataclasses.replace(cfg, in_memory="no"))
    assert a["in_memory"] and not b["in_memory"]
    assert a["heads"] == b["heads"] and a["selected"] == b["selected"]


def test_dataset_given_must_be_the_stores_dataset(stores):
    with pytest.raises(ConfigError, match="holds dataset 'synthetic', not 'cifar10'; pass --dataset synthetic"):
        run_probe(ProbeConfig(stores[:1], HEADS, device="cpu", dataset="cifar10"))


def test_val_split_is_stratified_disjoint_and_reproducible():
    labels = np.repeat(np.arange(5), 40)
    rows = np.arange(0, 200, 1)
    fit, val = val_split(labels, rows, 0.1, seed=7)
    assert len(np.intersect1d(fit, val)) == 0 and len(fit) + len(val) == 200
    assert np.bincount(labels[val]).tolist() == [4] * 5
    fit2, val2 = val_split(labels, rows, 0.1, seed=7)
    np.testing.assert_array_equal(val, val2)
    _, val3 = val_split(labels, rows, 0.1, seed=8)
    assert not np.array_equal(val, val3)
    # only rows handed in are used: skipped rows never land in val
    fit4, val4 = val_split(labels, rows[rows % 10 != 0], 0.1, seed=7)
    assert not np.isin(val4, rows[rows % 10 == 0]).any()


def test_resolve_stores_names_sets_and_paths(stores, tmp_path):
    found = resolve_stores("s0,pair", "synthetic", tmp_path, sets={"pair": ["s1", "s2"]})
    assert found == list(stores)
    assert resolve_stores(str(stores[1]), "other", tmp_path) == [stores[1]]
    with pytest.raises(StoreError, match=r"no store .*s9\.zarr.*featcache extract --ckpt s9 --dataset synthetic"):
        resolve_stores("s0,s9", "synthetic", tmp_path)


def test_train_and_test_of_different_stores_are_not_mixed(stores, tmp_path):
    X, y = _blobs(240, 4, 4, 6.0, 0)
    other = make_store(
        tmp_path / "o.zarr", {"train": (X, y), "test": (X[:80], (y[:80] + 1) % 4)}, name="o", chunk_rows=64
    )
    with pytest.raises(StoreMismatchError, match=r"split .test. differs in labels_sha256"):
        run_probe(ProbeConfig((stores[0], other), HEADS, device="cpu"))


def test_preset_overrides_and_unknown_keys():
    heads, vf = heads_from_preset({"epochs": 28, "lr": 0.01, "milestones": [8, 16], "val_fraction": 0.2},
                                  [1e-4], epochs=3, lr=None)  # fmt: skip
    assert heads.epochs == 3 and heads.lr == 0.01 and heads.milestones == (8, 16) and vf == 0.2
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['epoch'\]"):
        heads_from_preset({"epoch": 3}, [1e-4])
    with pytest.raises(ConfigError, match="--val-fraction"):
        ProbeConfig((), HEADS, val_fraction=1.5)
