"""Fidelity profiles: a sweep's ``fidelity: strict`` extracts as the research pipeline did (PIL preprocessing, fp32
forward, float32 stores), and the store, the record and the report say which profile each number came from."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from ckpt_factory import reference_features
from conftest import REPO, save_checkpoint
from data_factory import write_cifar10
from PIL import Image

from featcache.config import Paths, load_registry
from featcache.config.sweep import parse_sweep
from featcache.errors import ConfigError, StoreMismatchError
from featcache.fidelity import STRICT, fidelity_of
from featcache.report import build_report
from featcache.results import StoreUsed, load_records
from featcache.store import Store, store_path
from featcache.sweep import check_plan, plan_sweep, run_sweep
from featcache.transforms import pil_reference


def _sweep(fidelity: str | None, **extract):
    doc = {"rows": {"cat1": {"draws": ["net0"]}}, "datasets": {"cifar10": {"transform": "32px", "views": 0,
           "epochs": 1}}, "extract": {"workers": 0, "batch_size": 16, **extract}}  # fmt: skip
    return parse_sweep({**doc, "fidelity": fidelity} if fidelity else doc, "s.yaml", "s")


@pytest.fixture
def world(tmp_path):
    """A registry with one resnet10 checkpoint ``net0`` and a small CIFAR-10."""
    config = tmp_path / "configs"
    shutil.copytree(REPO / "configs", config)
    (config / "checkpoints.d" / "net0.yaml").write_text("checkpoints:\n  net0: {arch: resnet10, path: net0.pth}\n")
    paths = Paths(tmp_path / "data", tmp_path / "cache", tmp_path / "ckpts", config)
    paths.checkpoints.mkdir()
    _, net = save_checkpoint(paths, "net0", seed=3)
    images = write_cifar10(paths.data / "cifar", n_train_per_batch=8, n_test=10)
    return paths, load_registry(paths), net, images


def test_strict_sets_the_research_pipelines_options_and_fast_keeps_the_sections():
    assert _sweep(None).fidelity == "fast" and _sweep(None).extract.dtype == "float16"
    strict = _sweep("strict").extract
    assert (strict.preprocess, strict.precision, strict.dtype, strict.compile) == ("pil", "fp32", "float32", "off")
    assert strict.batch_size == 16 and strict.workers == 0  # the rest of the section as written
    assert _sweep("strict", dtype="float32", preprocess="pil").extract == strict  # saying the same is fine
    with pytest.raises(ConfigError, match=r"s\.yaml: extract\.dtype is 'float16' but fidelity: strict extracts with "
                       r"dtype float32; remove extract\.dtype, or use fidelity: fast"):  # fmt: skip
        _sweep("strict", dtype="float16")
    with pytest.raises(ConfigError, match=r"s\.yaml: fidelity must be one of fast, strict, got 'exact'"):
        _sweep("exact")


def test_a_strict_sweep_makes_float32_stores_from_pil_preprocessing_in_fp32(world):
    paths, reg, net, images = world
    sweep = _sweep("strict")
    (job,) = plan_sweep(sweep, reg, paths).extracts
    cfg = job.config
    assert (cfg.backend, cfg.precision, cfg.dtype, cfg.compile) == ("pil", "fp32", "float32", "off")
    run_sweep(sweep, reg, paths)
    store = Store(store_path(paths.cache, "cifar10", "net0"))
    prov = store.provenance
    assert (prov.preprocess.backend, prov.precision, prov.dtype, prov.compute.compiled) == ("pil", "fp32", "float32",
                                                                                          False)  # fmt: skip
    assert prov.fidelity == "strict" and store.split("test").read().dtype == np.float32
    # the research pipeline: PIL transforms per image, then the network in fp32
    tf = reg.transform(reg.dataset("cifar10"), "32px")
    x = torch.stack([pil_reference(tf)(Image.fromarray(im)) for im in images["test"]["images"]])
    assert np.abs(store.split("test").read() - reference_features(net, x).numpy()).max() < 1e-4
    (record,) = load_records(paths.results_log)
    assert [s.fidelity for s in record.stores] == ["strict"]
    assert build_report(plan_sweep(sweep, reg, paths)).table_rows()[0]["fidelity"] == "strict"


def test_a_strict_sweep_refuses_a_fast_store(world):
    paths, reg, _, _ = world
    run_sweep(_sweep(None), reg, paths)  # float16 features
    plan = plan_sweep(_sweep("strict"), reg, paths)
    assert plan.extracts[0].reasons == ("stale",) and [p.key for p in plan.probes] == [None]
    with pytest.raises(StoreMismatchError, match="net0.zarr was extracted with dtype float16 but s.yaml: extract "
                       "asks for dtype float32; delete the store or point --cache-dir elsewhere"):  # fmt: skip
        check_plan(plan)


def test_a_store_is_strict_only_when_every_option_is_the_research_pipelines():
    assert fidelity_of("pil", "fp32", "float32", False) == "strict"
    for field, other in (("preprocess", "device"), ("precision", "bf16"), ("dtype", "float16"), ("compile", "on")):
        made = {**STRICT, field: other}
        assert fidelity_of(made["preprocess"], made["precision"], made["dtype"], made["compile"] == "on") == "fast"


def test_a_strict_store_has_a_key_of_its_own():
    """A strict and a fast store of one checkpoint, dtype and precision (PIL vs device resize) are two probes; a
    fast store's key is as it was before fidelity was recorded."""
    fast = StoreUsed("run0", "p", {"sha256": "abc"}, 8, None, "", "float32", "fp32", {"name": "t"}, "fast")
    old = dataclasses.replace(fast, fidelity=None)  # a record of schema 3
    strict = dataclasses.replace(fast, fidelity="strict")
    assert fast.identity() == old.identity() != strict.identity()
    assert strict.identity() == {**old.identity(), "fidelity": "strict"}
