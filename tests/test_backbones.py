"""Every family through one path: timm and torchvision features, their own preprocessing, chosen layers.

References are independent of featcache.models: timm's own ``forward_head(pre_logits=True)``, forward
hooks on the original networks, timm's and torchvision's own transforms.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from ckpt_factory import EMA_SEED, classifier_input, layer_output, make_net, make_timm_net
from PIL import Image

from featcache.config import CheckpointSpec, TransformSpec
from featcache.errors import ConfigError
from featcache.models import build_features, load_backbone, resolve_preprocessing
from featcache.transforms import BatchPreprocess, pil_reference

TOL = 1e-4
TIMM_ARCHS = ["test_vit", "test_convnext"]  # timm's own tiny test networks (160 px, 64-d)


@pytest.fixture(scope="module")
def timm():
    return pytest.importorskip("timm")


@pytest.fixture(scope="module")
def timm_nets(timm, tmp_path_factory) -> dict[str, tuple[torch.nn.Module, torch.nn.Module, Path]]:
    """name -> (net, EMA net, timm-format file of both, keys under DDP's ``module.``)."""
    d = tmp_path_factory.mktemp("timm")
    out = {}
    for name in TIMM_ARCHS:
        net, ema = make_timm_net(name, seed=0), make_timm_net(name, seed=EMA_SEED)
        obj = {"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()},
               "state_dict_ema": ema.state_dict(), "epoch": 3, "arch": name}  # fmt: skip
        torch.save(obj, d / f"{name}.pth.tar")
        out[name] = (net, ema, d / f"{name}.pth.tar")
    return out


def images(h: int = 200, w: int = 180, n: int = 2) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))


def timm_pre_logits(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.forward_head(net.forward_features(x), pre_logits=True)


def run(module: torch.nn.Module, x: torch.Tensor):
    with torch.no_grad():
        return module(x)


def ckpt(path: Path, arch: str, ema: bool = False) -> CheckpointSpec:
    return CheckpointSpec(path.name.split(".")[0], arch, path, ema)


# --- timm ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TIMM_ARCHS)
def test_timm_features_equal_timms_pre_logits(name, timm_nets):
    net, _, path = timm_nets[name]
    x = BatchPreprocess(resolve_preprocessing(f"timm:{name}"))(images(), cropped=False)  # (2, 3, 160, 160)
    loaded = load_backbone(ckpt(path, f"timm:{name}"))
    got, want = run(loaded.module, x), timm_pre_logits(net, x)
    assert got.shape == (2, net.head_hidden_size) and loaded.feature_dims == (net.head_hidden_size,)
    assert (got - want).abs().max().item() < TOL
    # guard: a network that did not load must not pass
    assert (run(build_features(f"timm:{name}").module, x) - want).abs().max().item() > 1e-2


@pytest.mark.parametrize("name", TIMM_ARCHS)
def test_timm_ema_weights_and_safetensors_load(name, timm_nets, tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    net, ema, path = timm_nets[name]
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(5))
    loaded = load_backbone(ckpt(path, f"timm:{name}", ema=True))
    assert (run(loaded.module, x) - timm_pre_logits(ema, x)).abs().max().item() < TOL
    safetensors.save_file(net.state_dict(), tmp_path / "model.safetensors")  # the Hugging Face Hub layout
    loaded = load_backbone(ckpt(tmp_path / "model.safetensors", f"timm:{name}"))
    assert (run(loaded.module, x) - timm_pre_logits(net, x)).abs().max().item() < TOL


@pytest.mark.parametrize("name", TIMM_ARCHS)
def test_timm_preprocessing_is_timms_own(name, timm):
    cfg = timm.data.resolve_model_data_config(timm.create_model(name))
    spec = resolve_preprocessing(f"timm:{name}")
    size = cfg["input_size"][-1]
    assert spec == TransformSpec(f"timm:{name}.r160_in1k", math.floor(size / cfg["crop_pct"]), size,
                                 cfg["interpolation"], tuple(cfg["mean"]), tuple(cfg["std"]))  # fmt: skip
    img = Image.fromarray(images(n=1)[0].permute(1, 2, 0).numpy())
    theirs = timm.data.create_transform(**cfg)(img)
    assert (pil_reference(spec)(img) - theirs).abs().max().item() < 1e-6


def test_timm_preprocessing_it_cannot_express_is_refused(timm):
    cfg = timm.models.get_pretrained_cfg
    squash = next(n for n in timm.list_pretrained() if cfg(n).crop_mode == "squash" and cfg(n).input_size[0] == 3)
    with pytest.raises(ConfigError, match=r"crop_mode 'squash'.*cannot express; pass --transform"):
        resolve_preprocessing(f"timm:{squash}")


def test_timm_tag_picks_the_preprocessing(timm):
    assert resolve_preprocessing("timm:test_vit.r160_in1k").name == "timm:test_vit.r160_in1k"
    with pytest.raises(ConfigError, match=r"unknown timm pretrained tag 'test_vit\.in1k' \(did you mean"):
        build_features("timm:test_vit.in1k")


def test_unknown_timm_name_suggests_close_ones(timm):
    with pytest.raises(ConfigError, match=r"unknown timm architecture 'test_vitt' \(did you mean 'test_vit'"):
        build_features("timm:test_vitt")
    with pytest.raises(ConfigError, match=r"unknown architecture 'test_convnext'.*use --arch timm:test_convnext"):
        build_features("test_convnext")


@pytest.mark.parametrize("call", [build_features, resolve_preprocessing])
def test_timm_missing_gives_the_install_hint(call, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    with pytest.raises(ConfigError, match=r"--arch timm:test_vit needs timm.*pip install 'featcache\[timm\]'"):
        call("timm:test_vit")


def test_unknown_family_is_named():
    with pytest.raises(ConfigError, match=r"unknown architecture family 'tv'; known: timm"):
        build_features("tv:resnet50")


# --- torchvision beyond ResNets ------------------------------------------------------------------------

# The classifier of each network, by hand (featcache finds it itself); SqueezeNet's is a 1x1 conv on a map,
# MNASNet's weights carry a layout version in their metadata.
TV_CLASSIFIERS = {"mobilenet_v3_small": "classifier.3", "squeezenet1_1": "classifier.1", "mnasnet0_5": "classifier.1"}


@pytest.mark.parametrize("arch", sorted(TV_CLASSIFIERS))
def test_torchvision_features_are_the_classifier_input(arch, tmp_path):
    net = make_net(arch, seed=0)
    torch.save(net.state_dict(), tmp_path / f"{arch}.pth")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    loaded = load_backbone(ckpt(tmp_path / f"{arch}.pth", arch))
    got, want = run(loaded.module, x), classifier_input(net, TV_CLASSIFIERS[arch], x)
    assert got.shape == want.shape == (2, loaded.feature_dim)
    assert (got - want).abs().max().item() < TOL


def test_torchvision_preprocessing_is_its_weights_transforms():
    weights = tvm.MobileNet_V3_Small_Weights.DEFAULT
    spec = resolve_preprocessing("mobilenet_v3_small")
    assert spec == TransformSpec("torchvision:MobileNet_V3_Small_Weights.IMAGENET1K_V1", 256, 224, "bilinear",
                                 (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # fmt: skip
    img = Image.fromarray(images(300, 280, n=1)[0].permute(1, 2, 0).numpy())
    assert (pil_reference(spec)(img) - weights.transforms()(img)).abs().max().item() < 1e-6


@pytest.mark.parametrize("arch", ["resnet10", "resnet50", "wide_resnet50_2"])
def test_research_resnets_keep_the_dataset_preset(arch):
    assert resolve_preprocessing(arch) is None


# --- layers -------------------------------------------------------------------------------------------


def test_conv_layers_are_average_pooled_from_one_pass(tmp_path):
    net = make_net("resnet10", seed=0)
    torch.save(net.state_dict(), tmp_path / "r10.pth")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    loaded = load_backbone(ckpt(tmp_path / "r10.pth", "resnet10"), layers=["layer2", "layer3"])
    got = run(loaded.module, x)
    assert isinstance(got, tuple) and len(got) == 2
    for name, feats in zip(("layer2", "layer3"), got, strict=True):
        assert (feats - layer_output(net, name, x).mean(dim=(2, 3))).abs().max().item() < TOL
    assert (loaded.layers, loaded.pool, loaded.feature_dims) == (("layer2", "layer3"), "avg", (128, 256))
    assert (loaded.layer, loaded.feature_dim) == ("layer2,layer3", 384)
    compiled = torch.compile(loaded.module, backend="eager")  # extraction may compile: hooks must survive
    assert all(torch.equal(a, b) for a, b in zip(run(compiled, x), got, strict=True))


@pytest.mark.parametrize(
    ("pool", "reference"),
    [("cls", lambda t, n: t[:, 0]), ("mean-patch", lambda t, n: t[:, n:].mean(1)), ("avg", lambda t, n: t.mean(1))],
)
def test_vit_token_pools(pool, reference, timm_nets):
    net, _, path = timm_nets["test_vit"]
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(4))
    loaded = load_backbone(ckpt(path, "timm:test_vit"), layers="blocks.2", pool=pool)
    want = reference(layer_output(net, "blocks.2", x), net.num_prefix_tokens)
    assert (loaded.layer, loaded.pool, loaded.feature_dim) == ("blocks.2", pool, 64)
    assert (run(loaded.module, x) - want).abs().max().item() < TOL


def test_channels_last_maps_need_avg_nhwc(timm_nets):
    net, _, path = timm_nets["test_convnext"]
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(6))
    inside = "stages.1.blocks.0.mlp"  # timm's ConvNeXt block runs its MLP on (B, H, W, C)
    stage = load_backbone(ckpt(path, "timm:test_convnext"), layers="stages.1")
    mlp = load_backbone(ckpt(path, "timm:test_convnext"), layers=inside, pool="avg-nhwc")
    assert (run(stage.module, x) - layer_output(net, "stages.1", x).mean(dim=(2, 3))).abs().max().item() < TOL
    assert (run(mlp.module, x) - layer_output(net, inside, x).mean(dim=(1, 2))).abs().max().item() < TOL


def test_unknown_layer_suggests_module_names():
    with pytest.raises(ConfigError, match=r"unknown layer 'layer5' \(did you mean 'layer4'.*a module name of resnet10"):
        build_features("resnet10", layers="layer5")


def test_pool_that_does_not_fit_the_layer_is_refused():
    with pytest.raises(ConfigError, match=r"layer 'layer3' of resnet10 gives \(B, 256, 14, 14\); --pool cls takes"):
        build_features("resnet10", layers="layer3", pool="cls")
    with pytest.raises(ConfigError, match=r"unknown pool 'max'"):
        build_features("resnet10", layers="layer3", pool="max")
    with pytest.raises(ConfigError, match=r"--pool cls needs --layer"):
        build_features("resnet10", pool="cls")
    with pytest.raises(ConfigError, match=r"must name each layer once"):
        build_features("resnet10", layers=["layer3", "layer3"])
