"""featcache.config: registries, the research registry layout, name resolution and root confinement."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

import pytest
from conftest import REPO

from featcache.config import Paths, load_registry, packaged_config_dir
from featcache.errors import ConfigError
from featcache.records import Record


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
    # the layout the research code's tools/download.sh leaves (the seed README's drawing differs)
    assert registry.checkpoints["run3"].path == registry.paths.checkpoints.resolve() / (
        "supervised_pretrain/resnet50_sfadamw_imagenet1k_supervised/checkpoints_full/checkpoint_run3.pth"
    )
    assert registry.checkpoints["run1-step200k"].path.parent.name == "checkpoints_200k"


def test_research_registry_layout_is_read_unchanged(tmp_path, config_dir):
    (config_dir / "checkpoints.d").mkdir(exist_ok=True)
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
    ("yaml", "name", "match"),
    [
        ("checkpoints:\n  run0: {arch: resnet50, path: x.pth}\n", "run0", "'run0' is registered twice"),
        ("sets:\n  full: [run0]\n", "full", "set name 'full' is registered twice"),
        ("sets:\n  run1: [run0]\n", "run1", "set name 'run1' is already a checkpoint"),
        ("sets:\n  mine: [run0, run9]\n", "mine", "unknown checkpoint 'run9'.*listed in set 'mine'"),
        ("checkpoints:\n  evil: {arch: resnet50, path: ../../etc/passwd}\n", "evil", "escapes its root"),
        ("checkpoints:\n  abs: {arch: resnet50, path: /etc/passwd}\n", "abs", "is an absolute path"),
        ("checkpoints:\n  noarch: {path: x.pth}\n", "noarch", "checkpoints.noarch: missing key 'arch'"),
    ],
)
def test_a_broken_entry_stops_only_what_uses_it(tmp_path, config_dir, yaml, name, match):
    (config_dir / "checkpoints.d").mkdir(exist_ok=True)
    (config_dir / "checkpoints.d" / "extra.yaml").write_text(yaml)
    reg = _registry(tmp_path, config_dir)
    with pytest.raises(ConfigError, match=match):
        reg.expand_checkpoints(name)
    assert [s.name for s in reg.expand_checkpoints("run3")] == ["run3"]  # the other entries still work
    assert reg.dataset("cifar10").probe == "cifar"


def test_invalid_yaml_stops_the_registry_of_its_kind_only(tmp_path, config_dir):
    (config_dir / "checkpoints.d").mkdir(exist_ok=True)
    (config_dir / "checkpoints.d" / "extra.yaml").write_text("x: [unclosed\n")
    reg = _registry(tmp_path, config_dir)
    with pytest.raises(ConfigError, match="extra.yaml is not valid YAML"):
        reg.expand_checkpoints("run3")
    assert reg.dataset("cifar10").name == "cifar10" and reg.probe_preset("cifar")["batch_size"] == 256


def test_missing_config_dir(tmp_path):
    with pytest.raises(ConfigError, match="config dir .* not found; pass --config-dir or set FEATCACHE_CONFIG"):
        _registry(tmp_path, tmp_path / "nope")


def test_layers_add_and_override_the_packaged_registries(tmp_path, monkeypatch):
    """Packaged registries, then ./configs, then --config-dir: later layers add entries or replace them by name."""
    work, extra = tmp_path / "work", tmp_path / "extra"
    (work / "configs").mkdir(parents=True)
    extra.mkdir()
    (work / "configs" / "checkpoints.yaml").write_text(
        "checkpoints:\n  mine: {arch: resnet18, path: m.pth}\n  run3: {arch: resnet18, path: local3.pth}\n"
    )
    (extra / "probes.yaml").write_text("presets:\n  cifar: {epochs: 3, batch_size: 16}\n")
    monkeypatch.chdir(work)
    reg = load_registry(Paths(tmp_path / "data", tmp_path / "cache", tmp_path / "ckpts", extra))
    assert reg.dirs[0] == packaged_config_dir() and len(reg.dirs) == 3
    assert reg.checkpoint("mine").arch == "resnet18"
    assert reg.checkpoint("run3").path.name == "local3.pth" and reg.checkpoint("run4").arch == "resnet50"
    assert reg.probe_preset("cifar") == {"epochs": 3, "batch_size": 16} and "imagenet" in reg.probe_presets
    monkeypatch.chdir(tmp_path)  # no ./configs here: the packaged registries alone
    alone = load_registry(Paths(tmp_path / "data", tmp_path / "cache", tmp_path / "ckpts"))
    assert alone.dirs == [packaged_config_dir()] and alone.checkpoint("run3").path.name == "checkpoint_run3.pth"


def test_files_with_the_same_name_in_different_folders_get_distinct_names(tmp_path, registry):
    for d in ("runs/a", "runs/b", "other/a"):
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "model.pt").write_bytes(b"x")
    (tmp_path / "solo.pt").write_bytes(b"x")
    files = [tmp_path / d / "model.pt" for d in ("runs/a", "runs/b", "other/a")] + [tmp_path / "solo.pt"]
    specs = registry.expand_checkpoints(",".join(map(str, files)), arch="resnet18")
    assert [s.name for s in specs] == ["runs-a-model", "b-model", "other-a-model", "solo"]
    assert [s.path for s in specs] == [f.resolve() for f in files]


def test_datasets_transforms_and_grids(registry):
    cifar = registry.dataset("cifar10")
    assert cifar.root == registry.paths.data.resolve() / "cifar" and cifar.test_split == "test"
    assert registry.transform(cifar, None).name == "cifar-224px"
    assert registry.transform(cifar, "32px").resize == 36
    with pytest.raises(ConfigError, match="unknown transform '64px'.*for dataset 'cifar10'"):
        registry.transform(cifar, "64px")
    assert registry.probe_preset(registry.dataset("inaturalist18").probe)["weight_decays"] == [1e-6, 1e-5, 1e-4]
    cifar_preset = registry.probe_preset(registry.preset_for("cifar100"))
    assert cifar_preset["weight_decays"] == [1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2] and cifar_preset["batch_size"] == 256
    assert registry.probe_preset(registry.preset_for("imagenet1k"))["batch_size"] == 32
    assert registry.transform(cifar, "32px").augment.scale == (0.8, 1.0)
    assert registry.transform(registry.dataset("imagenet1k"), None).augment.interpolation == "bilinear"
    assert registry.dataset("imagenet1k").test_split == "val"


def test_imagefolder_splits_follow_the_directory(registry, paths):
    (paths.data / "withsplits" / "train").mkdir(parents=True)
    (paths.data / "withsplits" / "val").mkdir()
    (paths.data / "flat" / "cat").mkdir(parents=True)
    assert registry.dataset("imagefolder:withsplits").splits == ("train", "val")
    assert registry.dataset("imagefolder:withsplits/").name == "imagefolder:withsplits"  # trailing slash: same
    flat = registry.dataset("imagefolder:flat")
    assert flat.splits == ("all",) and flat.train_split == flat.test_split == "all"
    assert flat.root == paths.data.resolve() / "flat"  # a bare name lives under the data root


def test_imagefolder_paths_resolve_like_other_paths(registry, paths, tmp_path, monkeypatch):
    (tmp_path / "here" / "pics" / "train").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "here")
    a = registry.dataset("imagefolder:./pics")
    b = registry.dataset(f"imagefolder:{tmp_path / 'here' / 'pics'}/")
    assert a.name == b.name == f"imagefolder:{tmp_path / 'here' / 'pics'}" and a.root == b.root
    assert a.splits == ("train",)


@pytest.mark.parametrize(
    ("name", "yaml", "use", "match"),
    [
        ("checkpoints.yaml", "checkpoints:\n  typo: {arch: resnet50, path: t.pth, emma: true}\n",
         lambda reg: reg.checkpoint("typo"), r"checkpoints.yaml: checkpoints.typo: unknown key\(s\) emma; known: arch, "
         "path, ema"),
        ("checkpoints.yaml", "checkpoints:\n  flag: {arch: resnet50, path: t.pth, ema: 'yes'}\n",
         lambda reg: reg.checkpoint("flag"), "checkpoints.flag.ema must be true or false"),
        ("datasets.yaml", "datasets:\n  d: {format: cifar10, splits: [train], transforms: {32px: cifar-32px}, "
         "probes: cifar}\n", lambda reg: reg.dataset("d"), r"datasets.d: unknown key\(s\) probes; known: format, "
         "splits, transforms, root"),
        ("datasets.yaml", "datasets:\n  d: {format: cifar10, splits: [], transforms: {32px: cifar-32px}}\n",
         lambda reg: reg.dataset("d"), "datasets.d.splits must be a non-empty list"),
        ("datasets.yaml", "transforms:\n  t: {resize: 36, crop: 32, mean: [0, 0, 0], std: [1, 1, 1], "
         "train: {scal: [0.5, 1]}}\n", lambda reg: reg.transforms, r"transforms.t.train: unknown key\(s\) scal"),
        ("datasets.yaml", "transforms:\n  t: {resize: 36, crop: 32, mean: [0, 0], std: [1, 1, 1]}\n",
         lambda reg: reg.transforms, "transforms.t.mean must be a list of 3 values"),
        ("probes.yaml", "presets:\n  p: {epoch: 3, weight_decays: [0.1]}\n", lambda reg: reg.preset("p"),
         r"presets.p: unknown key\(s\) epoch; known: head, epochs"),
        ("probes.yaml", "presets:\n  p: {epochs: 0, weight_decays: [0.1]}\n", lambda reg: reg.probe_preset("p"),
         "presets.p.epochs must be an integer >= 1, got 0"),
        ("probes.yaml", "presets:\n  p: {head: bn, weight_decays: [0.1]}\n", lambda reg: reg.preset("p"),
         "presets.p.head must be one of bn-linear, linear, got 'bn'"),
    ],
)  # fmt: skip
def test_registry_entries_are_checked_strictly(tmp_path, name, yaml, use, match):
    """An unknown key (a typo) or a value of the wrong type is refused, naming the file and the key; the
    registry's other entries still work."""
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / name).write_text(yaml)
    reg = load_registry(Paths(tmp_path / "data", tmp_path / "cache", tmp_path / "ckpts", extra))
    with pytest.raises(ConfigError, match=match):
        use(reg)
    assert reg.dataset("cifar10").probe == "cifar" and reg.preset("quick").epochs == 10
    assert reg.checkpoint("run3").arch == "resnet50"


@dataclass(frozen=True)
class _Inner(Record):
    k: int = field(default=1, metadata={"min": 0, "max": 9})


@dataclass(frozen=True)
class _Doc(Record):
    name: str
    pair: tuple[float, float]
    items: tuple[str, ...] = field(default=(), metadata={"min_items": 1})
    inner: _Inner = _Inner()
    flag: bool = False
    kind: str = field(default="a", metadata={"choices": ("a", "b")})
    source: str = field(default="", metadata={"read": False})


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"pair": [1, 2], "extra": 1}, r"f.yaml: unknown key\(s\) extra; known: pair, items, inner, flag, kind$"),
        ({"pair": [1, 2], "source": "x"}, r"unknown key\(s\) source"),
        ({}, "f.yaml: missing key 'pair'"),
        ({"pair": [1]}, r"f.yaml: pair must be a list of 2 values"),
        ({"pair": [1, "x"]}, r"f.yaml: pair\[1\] must be a number"),
        ({"pair": [1, 2], "items": []}, "items must be a non-empty list"),
        ({"pair": [1, 2], "inner": {"k": 10}}, r"f.yaml: inner.k must be an integer in \[0, 9\], got 10"),
        ({"pair": [1, 2], "inner": {"k": True}}, "inner.k must be an integer"),
        ({"pair": [1, 2], "flag": 1}, "flag must be true or false"),
        ({"pair": [1, 2], "kind": "c"}, "kind must be one of a, b, got 'c'"),
        ("text", "f.yaml must be a mapping"),
    ],
)
def test_strict_records_refuse_unknown_keys_and_bad_values(doc, match):
    with pytest.raises(ConfigError, match=match):
        _Doc.from_dict(doc, "f.yaml", strict=True, given={"name": "n"})


def test_strict_records_read_what_is_allowed():
    got = _Doc.from_dict({"pair": [1, 2.5], "items": "one", "inner": None}, "f.yaml", strict=True, given={"name": "n"})
    assert got == _Doc("n", (1, 2.5), ("one",), _Inner(1))  # one value is a list of one; an int stays an int
    assert isinstance(got.pair[0], int)
    lenient = _Doc.from_dict({"name": "n", "pair": [1, 2], "other": 3}, "f.yaml")  # stores and logs: extra keys pass
    assert lenient.pair == (1, 2)
