"""featcache.config: registries, the research registry layout, name resolution and root confinement."""

from __future__ import annotations

import shutil

import pytest
from conftest import REPO

from featcache.config import Paths, load_registry
from featcache.errors import ConfigError


@pytest.fixture
def config_dir(tmp_path):
    d = tmp_path / "configs"
    shutil.copytree(REPO / "configs", d)
    return d


def _registry(tmp_path, config_dir):
    return load_registry(Paths(tmp_path / "data", tmp_path / "cache", tmp_path / "ckpts", config_dir))


def test_repo_registry_sets_match_the_research_layout(registry):
    assert registry.sets["full"] == ("run0", "run1", "run2", "run3", "run4")
    assert len(registry.sets["step200k"]) == 2 and len(registry.sets["step100k"]) == 4
    assert len(registry.sets["step80k"]) == 5
    assert all(registry.checkpoints[m].arch == "resnet50" for m in registry.sets["step80k"])
    assert registry.checkpoints["run3"].path == registry.paths.checkpoints.resolve() / (
        "supervised_pretrain/resnet50_sfadamw/checkpoints_stepfull/checkpoint_run3.pth.tar"
    )


def test_research_registry_layout_is_read_unchanged(tmp_path, config_dir):
    (config_dir / "checkpoints.d").mkdir()
    (config_dir / "checkpoints.d" / "pretrained_checkpoints.yaml").write_text(
        "cat2_step200k:\n"
        "  arch: [resnet50, resnet50]\n"
        "  pretrained: [sfadamw/step200/run0.pth.tar, sfadamw/step200/run1.pth.tar]\n"
        "  lr: 0.01\n"
        "single:\n  arch: resnet18\n  pretrained: other/r18.pth\n"
    )
    reg = _registry(tmp_path, config_dir)
    specs = reg.expand_checkpoints("cat2_step200k")
    assert [s.name for s in specs] == ["cat2_step200k-run0", "cat2_step200k-run1"]
    assert specs[1].path.name == "run1.pth.tar" and specs[1].arch == "resnet50"
    assert reg.expand_checkpoints("single")[0].arch == "resnet18"


def test_expand_mixes_names_sets_and_files(registry, tmp_path):
    f = tmp_path / "mine.pth.tar"
    f.write_bytes(b"x")
    with pytest.raises(ConfigError, match="is a file path: pass --arch"):
        registry.expand_checkpoints(f"run1,{f}")
    specs = registry.expand_checkpoints(f"step200k,run1,{f},run1", arch="resnet50")
    assert [s.name for s in specs] == ["run0-step200k", "run1-step200k", "run1", "mine"]
    assert specs[-1].path == f.resolve()
    with pytest.raises(ConfigError, match="--arch resnet18 contradicts the registry.*'run1' is resnet50"):
        registry.expand_checkpoints("run1", arch="resnet18")
    with pytest.raises(ConfigError, match=r"--ckpt file '.*nothere\.pth' not found"):
        registry.expand_checkpoints(str(tmp_path / "nothere.pth"), arch="resnet50")


@pytest.mark.parametrize(
    ("yaml", "match"),
    [
        ("checkpoints:\n  run0: {arch: resnet50, path: x.pth}\n", "'run0' is registered twice"),
        ("sets:\n  full: [run0]\n", "'full' is already a checkpoint or set"),
        ("sets:\n  mine: [run0, run9]\n", "unknown checkpoint 'run9'.*listed in set 'mine'"),
        ("checkpoints:\n  evil: {arch: resnet50, path: ../../etc/passwd}\n", "escapes its root"),
        ("checkpoints:\n  abs: {arch: resnet50, path: /etc/passwd}\n", "is an absolute path"),
        ("checkpoints:\n  noarch: {path: x.pth}\n", "checkpoints.noarch: missing key 'arch'"),
        ("x: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_registry_entries_refused(tmp_path, config_dir, yaml, match):
    (config_dir / "checkpoints.d").mkdir()
    (config_dir / "checkpoints.d" / "extra.yaml").write_text(yaml)
    with pytest.raises(ConfigError, match=match):
        _registry(tmp_path, config_dir)


def test_missing_config_dir(tmp_path):
    with pytest.raises(ConfigError, match="config dir .* not found; pass --config-dir or set FEATCACHE_CONFIG"):
        _registry(tmp_path, tmp_path / "nope")


def test_datasets_transforms_and_grids(registry):
    cifar = registry.dataset("cifar10")
    assert cifar.root == registry.paths.data.resolve() / "cifar" and cifar.test_split == "test"
    assert registry.transform(cifar, None).name == "cifar-224px"
    assert registry.transform(cifar, "32px").resize == 36
    with pytest.raises(ConfigError, match="unknown transform '64px'.*for dataset 'cifar10'"):
        registry.transform(cifar, "64px")
    assert registry.wd_grid("inaturalist18") == [1e-6, 1e-5, 1e-4]
    assert registry.wd_grid("cifar100") == [1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2]
    assert registry.dataset("imagenet1k").test_split == "val"


def test_imagefolder_splits_follow_the_directory(registry, paths):
    (paths.data / "withsplits" / "train").mkdir(parents=True)
    (paths.data / "withsplits" / "val").mkdir()
    (paths.data / "flat" / "cat").mkdir(parents=True)
    assert registry.dataset("imagefolder:withsplits").splits == ("train", "val")
    flat = registry.dataset("imagefolder:flat")
    assert flat.splits == ("all",) and flat.train_split == flat.test_split == "all"
    with pytest.raises(ConfigError, match="escapes its root"):
        registry.dataset("imagefolder:../outside")
