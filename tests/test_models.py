"""featcache.models and featcache.checkpoints: the registry, and checkpoint loading in every format.

Other families (timm, torchvision non-ResNets), preprocessing and layers are in test_backbones.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from ckpt_factory import (
    EMA_SEED,
    FORMATS,
    make_net,
    reference_features,
    write_malicious,
    write_pickled_network,
    write_prefixed,
    write_truncated,
)
from torch import nn

from featcache.config import CheckpointSpec
from featcache.errors import CheckpointError, ConfigError
from featcache.models import (
    FEATURE_LAYER,
    build_backbone,
    clean_state_dict,
    file_sha256,
    list_backbones,
    load_backbone,
    load_state_dict,
    register_backbone,
)

ARCH = "resnet10"
TOL = 1e-4


@pytest.fixture(scope="module")
def net() -> nn.Module:
    return make_net(ARCH, seed=0)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def ckpts(net, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpts")
    return {fmt: write(d, net.state_dict(), ARCH) for fmt, write in FORMATS.items()}


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> Path:
    sd = make_net("resnet18").state_dict()
    return FORMATS["torchvision"](tmp_path_factory.mktemp("r18"), sd, "resnet18")


def features(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


def spec(path: Path, arch: str | None = ARCH, ema: bool = False) -> CheckpointSpec:
    return CheckpointSpec(path.name, arch, path, ema)


def save_sd(tmp_path: Path, sd: dict) -> Path:
    torch.save(sd, tmp_path / "edited.pth")
    return tmp_path / "edited.pth"


# --- accepted formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_gives_reference_features(fmt, ckpts, net, x):
    loaded = load_backbone(spec(ckpts[fmt]))
    got, want = features(loaded.module, x), reference_features(net, x)
    assert got.shape == (2, 512)
    assert (got - want).abs().max().item() < TOL


def test_comparison_can_fail(net, x):
    # Guards the test above: an unloaded network must not pass as the reference.
    fresh, _ = build_backbone(ARCH)
    assert (features(fresh, x) - reference_features(net, x)).abs().max().item() > 1e-2


def test_loaded_backbone_is_frozen_with_provenance(ckpts):
    path = ckpts["torchvision"]
    loaded = load_backbone(spec(path))
    assert (loaded.arch, loaded.feature_dim, loaded.layer, loaded.path) == (ARCH, 512, FEATURE_LAYER, path)
    assert (loaded.layers, loaded.pool, loaded.feature_dims) == ((FEATURE_LAYER,), None, (512,))
    assert (loaded.stripped_prefix, loaded.ignored_keys) == ("", ())
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == file_sha256(path)
    assert not loaded.module.training
    assert not any(p.requires_grad for p in loaded.module.parameters())


@pytest.mark.parametrize("ema", [False, True])
def test_ema_flag_selects_ema_weights(ema, ckpts, net, x):
    ema_net = make_net(ARCH, seed=EMA_SEED)
    loaded = load_backbone(spec(ckpts["timm"], ema=ema))
    want, other = (reference_features(n, x) for n in ((ema_net, net) if ema else (net, ema_net)))
    got = features(loaded.module, x)
    assert (got - want).abs().max().item() < TOL
    assert (got - other).abs().max().item() > 1e-2


@pytest.mark.parametrize(
    ("source", "fix"),
    [("registry", r"drop 'ema: true' from its registry entry$"), ("option", r"drop --ema for this file$"),
     (None, r"drop --ema \(or 'ema: true' from its registry entry\)$")],
)  # fmt: skip
def test_ema_asked_but_absent_is_refused_with_the_fitting_fix(source, fix, ckpts):
    path = ckpts["imagenet_example"]
    with pytest.raises(
        CheckpointError, match=rf"{path} has no EMA weights \(no 'state_dict_ema' or 'model_ema'.*{fix}"
    ):
        load_backbone(spec(path, ema=True), ema_source=source)


def test_model_ema_key_is_an_ema_container(net, tmp_path, x):
    ema_net = make_net(ARCH, seed=EMA_SEED)
    path = save_sd(tmp_path, {"model": net.state_dict(), "model_ema": ema_net.state_dict()})
    loaded = load_backbone(spec(path, ema=True))
    assert (features(loaded.module, x) - reference_features(ema_net, x)).abs().max().item() < TOL


def test_namespace_loads_without_trust(ckpts):
    sd = load_state_dict(ckpts["argparse_namespace"], trust=False)
    assert all(k.startswith("module.") for k in sd)


def test_missing_num_batches_tracked_is_tolerated(net, tmp_path, x):
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    loaded = load_backbone(spec(save_sd(tmp_path, sd)))
    assert (features(loaded.module, x) - reference_features(net, x)).abs().max().item() < TOL


# --- refused state dicts ------------------------------------------------------------------------------


def test_missing_keys_are_listed(net, tmp_path):
    sd = net.state_dict()
    del sd["layer2.0.conv1.weight"], sd["bn1.running_var"]
    lacks = r"lacks 2 of the \d+ weights of resnet10, missing keys: bn1\.running_var, layer2\.0\.conv1\.weight; "
    lacks += r"the file is incomplete"
    with pytest.raises(CheckpointError, match=lacks):
        load_backbone(spec(save_sd(tmp_path, sd)))


def test_keys_inside_the_backbone_it_lacks_mean_another_architecture(net, tmp_path):
    # layer1.1.* is a block a resnet10 does not have: not an extra head, another network
    sd = {**net.state_dict(), "layer1.1.conv1.weight": torch.zeros(64, 64, 3, 3)}
    for ignore in (False, True):
        with pytest.raises(CheckpointError, match=r"unexpected keys: layer1\.1\.conv1\.weight.*another architecture"):
            load_backbone(spec(save_sd(tmp_path, sd)), ignore_extra_keys=ignore)


SSL_EXTRAS = {"projector.0.weight": torch.zeros(8, 512), "projector.0.bias": torch.zeros(8),
              "head.weight": torch.zeros(3)}  # fmt: skip


def test_extra_keys_are_listed_with_the_option(net, tmp_path):
    path = save_sd(tmp_path, {**net.state_dict(), **SSL_EXTRAS})
    refusal = r"not part of resnet10: head\.weight, projector\.0\.bias, projector\.0\.weight; pass --ignore-extra-keys"
    with pytest.raises(CheckpointError, match=refusal):
        load_backbone(spec(path))


def test_ignore_extra_keys_loads_and_records_them(net, tmp_path, x):
    loaded = load_backbone(spec(save_sd(tmp_path, {**net.state_dict(), **SSL_EXTRAS})), ignore_extra_keys=True)
    assert loaded.ignored_keys == ("head.weight", "projector.0.bias", "projector.0.weight")
    assert (features(loaded.module, x) - reference_features(net, x)).abs().max().item() < TOL


def test_classifier_of_another_shape_is_an_expected_extra(net, tmp_path, x):
    # a fine-tuned head (10 classes) or an SSL MLP in place of fc: never part of the features
    sd = {
        **net.state_dict(),
        "fc.weight": torch.zeros(10, 512),
        "fc.bias": torch.zeros(10),
        "fc.2.weight": torch.zeros(1),
    }
    loaded = load_backbone(spec(save_sd(tmp_path, sd)))
    assert loaded.ignored_keys == ()
    assert (features(loaded.module, x) - reference_features(net, x)).abs().max().item() < TOL


# --- prefixes and whole networks ------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["model.", "backbone.", "encoder.", "model.backbone.", "model.module.encoder."])
def test_uniform_prefix_is_stripped_and_recorded(prefix, net, tmp_path, x):
    loaded = load_backbone(spec(write_prefixed(tmp_path, net.state_dict(), prefix)))
    assert loaded.stripped_prefix == prefix and loaded.ignored_keys == ()
    assert (features(loaded.module, x) - reference_features(net, x)).abs().max().item() < TOL


def test_lightning_ssl_file_lists_its_projector_and_loads_without_it(net, tmp_path, x):
    projector = {"model.projector.0.weight": torch.zeros(8, 512), "model.projector.0.bias": torch.zeros(8)}
    path = write_prefixed(tmp_path, net.state_dict(), "model.backbone.", extra=projector)
    with pytest.raises(CheckpointError, match=r"not part of resnet10: model\.projector\.0\.bias, model\.projector"):
        load_backbone(spec(path))
    loaded = load_backbone(spec(path), ignore_extra_keys=True)
    assert loaded.stripped_prefix == "model.backbone."
    assert loaded.ignored_keys == tuple(sorted(projector))
    assert (features(loaded.module, x) - reference_features(net, x)).abs().max().item() < TOL


def test_two_networks_in_one_file_are_refused(net, tmp_path):
    sd = {**{f"student.{k}": v for k, v in net.state_dict().items()},
          **{f"teacher.{k}": v for k, v in net.state_dict().items()}}  # fmt: skip
    with pytest.raises(CheckpointError, match=r"several networks that fit resnet10, under 'student\.', 'teacher\.'"):
        load_backbone(spec(save_sd(tmp_path, sd)))


def test_pickled_network_loads_with_trust_through_its_state_dict(net, tmp_path, x):
    loaded = load_backbone(spec(write_pickled_network(tmp_path, net)), trust=True)
    assert (features(loaded.module, x) - reference_features(net, x)).abs().max().item() < TOL


def test_pickled_network_is_refused_without_trust(net, tmp_path):
    refusal = r"unsafe global torchvision\.models\.resnet\.ResNet.*pass --trust-checkpoint"
    with pytest.raises(CheckpointError, match=refusal):
        load_backbone(spec(write_pickled_network(tmp_path, net)))


def test_safetensors_file_loads(net, tmp_path, x):
    safetensors = pytest.importorskip("safetensors.torch")
    path = tmp_path / "model.safetensors"
    safetensors.save_file(net.state_dict(), path)
    loaded = load_backbone(spec(path))
    assert (features(loaded.module, x) - reference_features(net, x)).abs().max().item() < TOL
    write_truncated(path, tmp_path / "cut.safetensors")
    with pytest.raises(CheckpointError, match=r"cut\.safetensors is truncated or corrupt"):
        load_backbone(spec(tmp_path / "cut.safetensors"))


def test_shape_mismatch_lists_both_shapes(net, tmp_path):
    sd = {**net.state_dict(), "conv1.weight": torch.zeros(64, 3, 3, 3)}
    with pytest.raises(CheckpointError, match=r"conv1\.weight \(64, 3, 3, 3\) vs \(64, 3, 7, 7\)"):
        load_backbone(spec(save_sd(tmp_path, sd)))


@pytest.mark.parametrize("target", ["resnet10", "resnet50"])
def test_checkpoint_for_another_architecture_is_refused(target, resnet18_file):
    with pytest.raises(CheckpointError, match=rf"another architecture than '{target}'.*--arch"):
        load_backbone(spec(resnet18_file, arch=target))


def test_missing_arch_asks_for_it(ckpts):
    with pytest.raises(ConfigError, match="pass --arch"):
        load_backbone(spec(ckpts["torchvision"], arch=None))


def test_no_state_dict_lists_top_level_keys(tmp_path):
    path = save_sd(tmp_path, {"epoch": 3, "config": {"lr": 0.1}})
    with pytest.raises(CheckpointError, match=r"no state dict found .*config, epoch"):
        load_state_dict(path)


# --- refused files ------------------------------------------------------------------------------------


def bad_file(kind: str, tmp_path: Path, good: Path) -> Path:
    path = tmp_path / f"{kind}.pth"
    if kind == "truncated":
        write_truncated(good, path)
    elif kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "empty":
        path.touch()
    return path


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("truncated", r"truncated, corrupt or not a torch file"),
        ("text", r"truncated, corrupt or not a torch file"),
        ("empty", r"truncated, corrupt or not a torch file"),
        ("missing", r"missing\.pth not found"),
    ],
)
def test_bad_file_is_refused(kind, match, tmp_path, ckpts):
    path = bad_file(kind, tmp_path, ckpts["torchvision"])
    with pytest.raises(CheckpointError, match=match) as info:
        load_backbone(spec(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_malicious_pickle_is_refused_without_trust(net, tmp_path):
    flag = tmp_path / "pwned"
    path = write_malicious(tmp_path, net.state_dict(), flag)
    refusal = r"unsafe global shutil\.copyfile.*if you trust this file, pass --trust-checkpoint"
    with pytest.raises(CheckpointError, match=refusal):
        load_backbone(spec(path))
    assert not flag.exists()


def test_malicious_pickle_runs_only_with_trust(net, tmp_path, x):
    flag = tmp_path / "pwned"
    path = write_malicious(tmp_path, net.state_dict(), flag)
    loaded = load_backbone(spec(path), trust=True)
    assert flag.exists()
    assert (features(loaded.module, x) - reference_features(net, x)).abs().max().item() < TOL


# --- clean_state_dict ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix", ["", "module.", "_orig_mod.", "module.model0.", "_orig_mod.module.", "module._orig_mod."]
)
def test_clean_state_dict_strips_prefixes_in_any_order(prefix):
    t = torch.zeros(1)
    sd = {f"{prefix}conv1.weight": t, f"{prefix}layer2.0.downsample.conv.weight": t,
          f"{prefix}layer2.0.downsample.bn.running_mean": t}  # fmt: skip
    assert sorted(clean_state_dict(sd)) == [
        "conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
    ]


def test_clean_state_dict_refuses_collisions():
    with pytest.raises(CheckpointError, match="collide"):
        clean_state_dict({"module.conv1.weight": torch.zeros(1), "conv1.weight": torch.zeros(1)})


# --- registry -----------------------------------------------------------------------------------------

BASIC_BLOCK = {"resnet10", "resnet18", "resnet34"}  # the others end in 2048-d bottlenecks
RESNETS = ["resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2",
           "wide_resnet101_2", "resnext50_32x4d"]  # fmt: skip


@pytest.mark.parametrize("arch", RESNETS)
def test_build_backbone_feature_dim(arch):
    module, dim = build_backbone(arch)
    assert dim == (512 if arch in BASIC_BLOCK else 2048)
    assert isinstance(module.fc, nn.Identity) and not module.training
    with torch.no_grad():
        assert module(torch.randn(1, 3, 32, 32)).shape == (1, dim)


def test_registry_lists_the_documented_architectures():
    documented = set(RESNETS) | {"vit_b_16", "convnext_tiny", "efficientnet_b0", "mobilenet_v3_small", "swin_t"}
    assert documented <= set(list_backbones())


def test_unknown_arch_suggests_close_names():
    with pytest.raises(ConfigError, match=r"unknown architecture 'resnet5O' \(did you mean 'resnet50'"):
        build_backbone("resnet5O")


def test_duplicate_backbone_name_is_refused():
    with pytest.raises(ConfigError, match="registered twice"):
        register_backbone("resnet18")(lambda: nn.Linear(1, 1))
    assert "resnet18" in list_backbones()
