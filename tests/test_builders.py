"""The one config builder per phase (featcache.probe.config_from, featcache.extract.config_from) and the defaults
and choices that the CLI, the config dataclasses and sweeps share."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import save_checkpoint
from store_factory import make_store

from featcache import choices, devices, heads, layers, loaders, solvers
from featcache.cli import main
from featcache.config import ExtractOptions, ProbeOptions, ProbePreset
from featcache.errors import ConfigError
from featcache.extract import ExtractConfig
from featcache.extract import config_from as extract_config
from featcache.knn import KNNConfig
from featcache.probe import ProbeConfig, probe_key_for
from featcache.probe import config_from as probe_config
from featcache.probe_config import default_splits


def _stores(root, n_views: int, splits=("train", "test")) -> list:
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 6)).astype("float32"), np.arange(40) % 3
    views = [X + rng.standard_normal(X.shape).astype("float32") for _ in range(n_views)]
    return [
        make_store(
            root / "synthetic" / f"s{k}.zarr",
            {s: (X, y) for s in splits},
            name=f"s{k}",
            views={"train": views} if n_views and "train" in splits else None,
        )  # fmt: skip
        for k in range(2)
    ]


def test_probe_views_default_to_the_presets_count_capped_by_what_every_store_holds(registry, paths):
    _stores(paths.cache, n_views=2)
    assert registry.preset("digits").views == 4  # more than the stores hold
    cfg = probe_config(registry, paths, stores="s0,s1", dataset="synthetic", preset="digits")
    assert cfg.views == 2 and (cfg.train_split, cfg.test_split) == ("train", "test")
    assert probe_config(registry, paths, stores="s0,s1", dataset="synthetic", preset="digits", views=1).views == 1
    assert probe_config(registry, paths, stores="s0", dataset="synthetic", preset="quick").views == 0  # preset's 0
    knn = probe_config(registry, paths, stores="s0", dataset="synthetic", preset="digits", solver="knn", knn_k=(5,))
    assert knn.views == 0 and knn.solver == KNNConfig(ks=(5,))  # k-NN fits the evaluation view
    # a sweep plans probes of stores still to extract: nothing is read, the preset's count stands
    planned = probe_config(registry, paths, stores=[paths.cache / "x.zarr"], dataset="synthetic", preset="digits",
                           read_stores=False)  # fmt: skip
    assert planned.views == 4 and planned.opened is None and planned.train_split is None


def test_probe_builder_applies_the_options_over_the_preset(registry, paths):
    _stores(paths.cache, n_views=0)
    cfg = probe_config(registry, paths, stores="s0", dataset="synthetic", preset="quick", epochs=3, lr=(0.1, 0.2),
                       weight_decays=(0.0, 1e-3), val_fraction=0.25, tag="t")  # fmt: skip
    quick = registry.preset("quick")
    assert cfg.heads.epochs == 3 and cfg.heads.lrs == (0.1, 0.2) and cfg.heads.weight_decays == (0.0, 1e-3)
    assert cfg.heads.batch_size == quick.batch_size and cfg.heads.milestones == quick.milestones
    assert cfg.val_fraction == 0.25 and cfg.preset == "quick" and cfg.tag == "t"
    one = probe_config(registry, paths, stores="s0", dataset="synthetic", preset="quick", lr=(0.5,))
    assert one.heads.lr == 0.5 and one.heads.lrs is None
    default = probe_config(registry, paths, stores="s0", dataset="synthetic")  # the dataset names no preset
    assert default.preset == "cifar" and default.heads.batch_size == registry.preset("cifar").batch_size
    with pytest.raises(ConfigError, match="unknown probe preset 'quik'"):
        probe_config(registry, paths, stores="s0", dataset="synthetic", preset="quik")
    with pytest.raises(ConfigError, match="--knn-k must be"):
        probe_config(registry, paths, stores="s0", dataset="synthetic", solver="knn", knn_k=(0,))


def test_the_default_splits_prefer_train_and_test_to_the_stores_order(registry, paths):
    assert default_splits(("test", "train"), None, None) == ("train", "test")
    assert default_splits(("val", "train"), None, None) == ("train", "val")
    assert default_splits(("all",), None, None) == ("all", None)
    assert default_splits(("a", "b"), "b", "a") == ("b", "a")
    _stores(paths.cache, n_views=2, splits=("val", "train"))
    cfg = probe_config(registry, paths, stores="s0,s1", dataset="synthetic", preset="quick")
    assert (cfg.train_split, cfg.test_split) == ("train", "val")
    bare = dataclasses.replace(cfg, train_split=None, test_split=None, opened=None)
    assert probe_key_for(bare) == probe_key_for(cfg)  # the key resolves the splits by the same rule


def test_extract_builder_parses_the_cli_values(registry, paths):
    spec, _ = save_checkpoint(paths, "net0", seed=0)
    cfg = extract_config(registry, paths, ckpt=str(spec.path), arch="resnet10", dataset="cifar10", ema=True,
                         splits="test, train", layers="layer3,,layer4", preprocess="pil", batch_size=8)  # fmt: skip
    assert cfg.splits == ("test", "train") and cfg.layers == ("layer3", "layer4") and cfg.backend == "pil"
    assert cfg.checkpoints[0].ema and cfg.checkpoints[0].ema_source == "option" and cfg.batch_size == 8
    assert cfg.model_preprocessing and cfg.transform == registry.transform(registry.dataset("cifar10"), None)
    assert cfg.cache_dir == paths.cache
    swept = extract_config(registry, paths, ckpt=[spec], dataset=registry.dataset("cifar10"), transform="32px",
                           options=ExtractOptions(dtype="float32", preprocess="pil"), views=2)  # fmt: skip
    assert (swept.dtype, swept.backend, swept.views, swept.model_preprocessing) == ("float32", "pil", 2, False)
    with pytest.raises(ConfigError, match="unknown extraction option.* batchsize"):
        extract_config(registry, paths, ckpt=[spec], dataset="cifar10", batchsize=8)


def test_each_default_is_written_once():
    """The CLI's defaults are the dataclasses', ExtractConfig's are ExtractOptions', ProbeConfig's ProbeOptions'."""
    opts, fields = ExtractOptions(), {f.name: f.default for f in dataclasses.fields(ExtractConfig)}
    for name, value in opts.config_fields().items():
        assert fields[name] == value, name
    extract = main.commands["extract"]
    for param in extract.params:
        field = "backend" if param.name == "preprocess" else param.name
        if param.show_default and fields.get(field, dataclasses.MISSING) is not dataclasses.MISSING:
            assert param.default == fields[field], param.name
    probe = {f.name: f.default for f in dataclasses.fields(ProbeConfig)}
    for name, value in dataclasses.asdict(ProbeOptions()).items():
        assert probe[name] == value, name
    cli = {p.name: p.default for p in main.commands["probe"].params}
    assert (cli["device"], cli["in_memory"]) == (ProbeOptions.device, ProbeOptions.in_memory)
    assert probe["val_fraction"] == ProbePreset.val_fraction


def test_the_choice_names_are_the_library_tables():
    assert tuple(devices.PRECISIONS) == choices.PRECISIONS and tuple(layers.POOLS) == choices.POOLS
    assert tuple(loaders.BACKENDS) == choices.BACKENDS and tuple(heads.HEADS) == choices.HEADS
    assert tuple(solvers.SOLVERS) == choices.SOLVERS
    head_fields = {f.name for f in dataclasses.fields(heads.HeadConfig)}
    assert head_fields == {f.name for f in dataclasses.fields(ProbePreset)} - {"views", "val_fraction"}
