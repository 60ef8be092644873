"""Saved heads and their evaluation under hostile use: the registered shifted sets, contradicting options, damaged
head files, head paths that cannot hold a file, devices that are not there.

The shifted-set test scores a 1000-way ImageNet head whose overall argmax is a class the set lacks and whose
columns are not in the set's label order, so scoring every column, the first columns, or the listed order of a
``class_subset`` gives another answer than matching the set's classes by name (see tests/README.md).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from store_factory import make_store

import featcache as fc
from featcache.class_subsets import CLASS_SUBSETS, IMAGENET1K_WNIDS
from featcache.config import load_registry
from featcache.errors import ConfigError
from featcache.evaluate import run_evaluate
from featcache.evaluate_config import config_from
from featcache.head_layout import FORMAT, FeatureBlock, HeadHeader
from featcache.heads import HeadConfig
from featcache.linear_head import LinearHead
from featcache.probe_config import ProbeConfig
from featcache.probe_config import config_from as probe_config_from
from featcache.saved_head import SavedHead, read_head, write_head
from featcache.store import Store, store_path

R = CLASS_SUBSETS["imagenet-r"]
DIM = 8


def _weights(seed):
    return torch.randn(len(IMAGENET1K_WNIDS), DIM, generator=torch.Generator().manual_seed(seed))


def _imagenet_head(path, store: Store, weight, classes=IMAGENET1K_WNIDS, dataset="imagenet1k", lead=1e3):
    """A Linear head on ``store``'s features (1000-way by default) whose class 0 leads every logit by ``lead``."""
    bias = torch.zeros(len(classes))
    bias[0] = lead  # n01440764 (tench): not an ImageNet-R class
    head = LinearHead(weight, bias, "none")
    layout = (FeatureBlock.of(store.name, store.provenance),)
    probe = {"id": "p0", "key": "k0", "dataset": dataset, "train_split": "train", "test_split": "val"}
    header = HeadHeader(FORMAT, "none", head.eval_rows, tuple(classes), layout, probe, "test")
    return write_head(SavedHead(head, bias[None].clone(), header), path), weight, bias


def _shifted_store(paths, dataset, classes, n, weight, seed=1):
    """Features near their class's row of ``weight`` (the head then scores well above chance), plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(classes)
    cols = [IMAGENET1K_WNIDS.index(c) for c in classes]
    X = (weight.numpy()[cols][y] + rng.normal(size=(n, DIM))).astype(np.float32)
    made = {"name": dataset, "format": "imagenet-shift"}
    path = make_store(paths.cache / dataset / "net.zarr", {"test": (X, y)}, name="net", chunk_rows=64,
                      classes={"test": list(classes)}, dataset=made)  # fmt: skip
    return Store(path), X, y


def _by_name(weight, bias, X, y, classes):
    cols = [IMAGENET1K_WNIDS.index(c) for c in classes]
    logits = torch.from_numpy(X) @ weight.T + bias
    return float((logits[:, cols].argmax(1).numpy() == y).mean() * 100)


def test_registered_shifted_sets_score_an_imagenet_head_on_their_classes(paths, registry):
    """imagenet-r's `class_subset: imagenet-r` names the classes the set holds, not a head class per label: the
    registered set is scored (it was refused as 'must be a list'), on its 200 columns in its label order."""
    weight = _weights(0)
    store, X, y = _shifted_store(paths, "imagenet-r", sorted(R), 600, weight)
    head, weight, bias = _imagenet_head(paths.cache / "in1k.safetensors", store, weight)
    ev = run_evaluate(config_from(registry, paths, head=head, dataset="imagenet-r", device="cpu"))
    expected = _by_name(weight, bias, X, y, sorted(R))
    assert ev.classes == 200 and ev.rows == 600 and ev.top1 == pytest.approx(expected, abs=1e-9)
    assert expected > 5 and _by_name(weight, bias, X, y, IMAGENET1K_WNIDS[:200]) != expected  # the columns matter


def test_a_listed_class_subset_of_a_shifted_set_is_matched_by_name_not_by_its_order(paths, tmp_path):
    """A shifted set listing its wnids out of ImageNet order numbers its labels in ImageNet order: the listed order
    is not the label order."""
    listed = [R[2], R[0], R[1]]
    layer = tmp_path / "configs"
    layer.mkdir()
    entry = {"format": "imagenet-shift", "root": "mini", "splits": ["test"], "train_split": "test",
             "test_split": "test", "transforms": {"224px": "imagenet-224px"},
             "options": {"class_subset": listed}}  # fmt: skip
    (layer / "datasets.yaml").write_text(yaml.safe_dump({"datasets": {"mini-r": entry}}))
    paths = type(paths)(data=paths.data, cache=paths.cache, checkpoints=paths.checkpoints, config=layer)
    weight = _weights(3)
    store, X, y = _shifted_store(paths, "mini-r", sorted(listed), 300, weight, seed=2)
    head, weight, bias = _imagenet_head(paths.cache / "in1k.safetensors", store, weight)
    ev = run_evaluate(config_from(load_registry(paths), paths, head=head, dataset="mini-r", device="cpu"))
    expected = _by_name(weight, bias, X, y, sorted(listed))
    assert ev.top1 == pytest.approx(expected, abs=1e-9) and ev.classes == 3
    assert _by_name(weight, bias, X, y, listed) != expected


@pytest.fixture
def two_datasets(paths, tmp_path):
    """Registered datasets 'one' (test split 'test') and 'two' (test split 'val'); a head trained on 'one'; the
    stores of 'two', whose val and test splits score differently."""
    layer = tmp_path / "configs"
    layer.mkdir()
    entry = {"format": "imagefolder", "splits": ["train", "test", "val"], "transforms": {"224px": "imagenet-224px"}}
    datasets = {name: {**entry, "root": name, "test_split": split} for name, split in (("one", "test"), ("two", "val"))}
    (layer / "datasets.yaml").write_text(yaml.safe_dump({"datasets": datasets}))
    paths = type(paths)(data=paths.data, cache=paths.cache, checkpoints=paths.checkpoints, config=layer)
    weight, rng, classes = _weights(5), np.random.default_rng(4), IMAGENET1K_WNIDS[:3]
    y = np.arange(300) % 3
    splits = {s: ((weight.numpy()[y] + noise * rng.normal(size=(300, DIM))).astype(np.float32), y)
              for s, noise in (("test", 3.0), ("val", 0.5))}  # fmt: skip
    path = make_store(paths.cache / "two" / "net.zarr", splits, name="net", chunk_rows=64,
                      classes={s: list(classes) for s in splits}, dataset={"name": "two"})  # fmt: skip
    head, _, _ = _imagenet_head(paths.cache / "one.safetensors", Store(path), weight[:3], classes, "one", 0.0)
    return paths, load_registry(paths), head, path


def test_stores_given_without_dataset_are_scored_as_their_own_dataset(two_datasets):
    """--stores of another dataset than the head's, no --dataset: that dataset's test split ('val'), not the
    head's dataset's ('test')."""
    paths, reg, head, store = two_datasets
    ev = run_evaluate(config_from(reg, paths, head=head, stores=[store], device="cpu"))
    test = run_evaluate(config_from(reg, paths, head=head, stores=[store], split="test", device="cpu"))
    assert ev.split == "val" and ev.dataset == "two" and ev.top1 != test.top1


def test_a_dataset_that_contradicts_the_stores_is_refused(two_datasets):
    paths, reg, head, store = two_datasets
    with pytest.raises(ConfigError, match=r"net.zarr holds dataset 'two', not 'one'; pass --dataset two"):
        config_from(reg, paths, head=head, stores=[store], dataset="one")
    assert config_from(reg, paths, head=head, stores=[store], dataset="two").resolved.split == "val"


def test_an_imagefolder_dataset_named_by_a_relative_path_finds_its_stores(paths, registry, tmp_path, monkeypatch):
    """extract names imagefolder:./imf by its absolute path; probe, --eval and evaluate find its stores there too
    (they looked under <cache>/imagefolder_._imf/)."""
    monkeypatch.chdir(tmp_path)
    for split in ("train", "val"):
        (tmp_path / "imf" / split).mkdir(parents=True)
    name = registry.dataset("imagefolder:./imf").name
    assert name == f"imagefolder:{tmp_path / 'imf'}"
    weight, classes = _weights(6), IMAGENET1K_WNIDS[:3]
    y = np.arange(90) % 3
    X = (weight.numpy()[:3][y] + np.random.default_rng(0).normal(size=(90, DIM))).astype(np.float32)
    path = make_store(store_path(paths.cache, name, "net"), {"train": (X, y), "val": (X, y)}, name="net",
                      classes={"train": list(classes), "val": list(classes)}, dataset={"name": name})  # fmt: skip
    cfg = probe_config_from(registry, paths, stores="net", dataset="imagefolder:./imf", evaluate="imagefolder:./imf/")
    assert cfg.stores == (path,) and cfg.evaluate[0].stores == (path,)
    head, _, _ = _imagenet_head(tmp_path / "h.safetensors", Store(path), weight[:3], classes, name, 0.0)
    resolved = config_from(registry, paths, head=head, dataset="imagefolder:./imf").resolved
    assert [s.path for s in resolved.stores] == [path] and resolved.split == "val"


@pytest.fixture
def small_head(paths):
    """A 3-class head on one 8-wide store, and the path of a copy to edit."""
    weight, classes = _weights(7), IMAGENET1K_WNIDS[:3]
    y = np.arange(60) % 3
    X = (weight.numpy()[:3][y] + np.random.default_rng(1).normal(size=(60, DIM))).astype(np.float32)
    store = make_store(paths.cache / "three" / "net.zarr", {"train": (X, y), "test": (X, y)}, name="net",
                       classes={"train": list(classes), "test": list(classes)}, dataset={"name": "three"})  # fmt: skip
    head, _, _ = _imagenet_head(paths.cache / "three.safetensors", Store(store), weight[:3], classes, "three", 0.0)
    return head, paths.cache / "edited.safetensors", X


def _edit(src, dst, header=None, tensors=None):
    """Copy the head at ``src`` to ``dst``, its header and tensors changed by the given functions."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    t = load_file(src)
    with safe_open(src, "pt") as f:
        meta = f.metadata()
    h = json.loads(meta["featcache_head"])
    (header or (lambda h: None))(h)
    (tensors or (lambda t: None))(t)
    save_file(t, dst, metadata={"featcache_head": json.dumps(h)})
    return dst


@pytest.mark.parametrize(
    ("header", "tensors", "match"),
    [
        (lambda h: h.update(norm="bogus"), None, r"norm 'bogus' is not one of batchnorm, none, standardise"),
        (lambda h: h.update(eval_rows=0), None, r"eval_rows 0 is not a count > 0"),
        (lambda h: h.update(eval_rows=-5), None, r"eval_rows -5 is not a count > 0"),
        (lambda h: h.update(classes=["a", "a", "b"]), None, r"classes are not distinct names"),
        (lambda h: h.update(classes=[]), None, r"classes are not distinct names"),
        (lambda h: h.update(layout=[]), None, r"the layout lists no store"),
        (lambda h: h["layout"][0].update(dim=0), None, r"a store's dim is not a count > 0"),
        (lambda h: h.update(probe=None), None, r"probe is not a mapping"),
        (lambda h: h.update(format=0), None, r"format 0 is not a head format"),
        (None, lambda t: t["weight"].__setitem__((0, 0), float("nan")), r"tensor weight holds NaN, Inf"),
        (None, lambda t: t.update(bias=t["bias"].int()), r"tensor bias holds NaN, Inf or non-float"),
    ],
)
def test_an_edited_head_is_refused_in_one_line(small_head, paths, registry, header, tensors, match):
    """Each edit made a traceback (norm, eval_rows, layout, probe), a misleading class error, or a score of 10%
    from a NaN weight; now the evaluate config and fc.load_head both refuse the file, naming it."""
    head, edited, _ = small_head
    _edit(head, edited, header, tensors)
    with pytest.raises(ConfigError, match=rf"--head .*edited.safetensors.*{match}.*save the head again"):
        fc.load_head(edited)
    if header is not None:  # the header is read first, before any store is opened
        with pytest.raises(ConfigError, match=match):
            config_from(registry, paths, head=edited, dataset="three")


def test_a_head_converted_to_half_precision_scores_in_float32(small_head):
    head, edited, X = small_head
    _edit(head, edited, tensors=lambda t: t.update(weight=t["weight"].half()))
    module, original = fc.load_head(edited), fc.load_head(head)
    assert module.weight.dtype == torch.float32
    assert torch.equal(module(torch.from_numpy(X)), torch.from_numpy(X) @ module.weight.T + module.bias)
    assert torch.allclose(module(torch.from_numpy(X)), original(torch.from_numpy(X)), atol=1e-2)


def test_a_head_path_that_cannot_take_a_file_is_refused_before_training(small_head, tmp_path):
    """A pipe or device was replaced by the head's rename (--save-head /dev/null, run as root, replaced /dev/null);
    a path under a file gave a traceback after the training."""
    head, _, _ = small_head
    pipe, afile = tmp_path / "pipe", tmp_path / "afile"
    os.mkfifo(pipe)
    afile.write_text("not a directory")
    store = (Path(tmp_path / "cache" / "three" / "net.zarr"),)
    cases = {pipe: r" exists and is not a regular file", afile / "h.safetensors": r"afile is a file, not a dir",
             afile / "a" / "h.safetensors": r"afile is a file, not a dir", tmp_path: r"is a directory"}  # fmt: skip
    for path, match in cases.items():
        with pytest.raises(ConfigError, match=rf"--save-head {path}.*{match}"):
            ProbeConfig(store, HeadConfig(), save_head=path)
        with pytest.raises(ConfigError, match=match):
            write_head(read_head(head), path)
    assert stat.S_ISFIFO(pipe.stat().st_mode) and afile.read_text() == "not a directory"
    assert write_head(read_head(head), tmp_path / "new" / "dir" / "h.safetensors").is_file()


def test_load_head_takes_the_commands_device_names(small_head):
    """fc.load_head(path, 'auto') raised torch's 'Expected one of cpu, cuda, ...'; 'cuda' on a machine without one
    raised torch's driver error."""
    head, _, _ = small_head
    assert fc.load_head(head, "auto").weight.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match=r"--device 'bogus' is not a device; use auto, cpu or cuda"):
        fc.load_head(head, "bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"--device cuda: no CUDA device is visible"):
            fc.load_head(head, "cuda")


def test_scoring_the_heads_own_training_split_is_noted(small_head, paths, registry):
    head, _, _ = small_head
    train = run_evaluate(config_from(registry, paths, head=head, split="train", device="cpu"))
    test = run_evaluate(config_from(registry, paths, head=head, device="cpu"))
    assert train.notes == ("split 'train' is the split the head was trained on: this number is not a test",)
    assert test.split == "test" and test.notes == ()
