"""SwAV's wide ResNet-50s and the SEER RegNet trunks: built from their definitions, loaded from checkpoints in their own
key layouts, checked against reference forwards written here with torch.nn.functional from those definitions.

Tiny nets (random weights with non-trivial BatchNorm statistics, 40 px inputs) go through featcache's one loading
path; the full-size architectures are built on the meta device and checked against published facts: SwAV's parameter
counts, torchvision's own RegNet builder for the same parameters, and the research code's feature widths.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch.nn import functional as F
from torchvision.models.regnet import BlockParams, RegNet

from featcache.backbones import regnet, swav
from featcache.config import CheckpointSpec
from featcache.errors import CheckpointError
from featcache.models import build_features, list_backbones, load_backbone, register_backbone

TINY_SWAV, TINY_SEER = "test-swav-tiny", "test-seer-tiny"
SWAV_LAYERS = (1, 2, 1, 1)
SEER_TINY = regnet.RegNetParams(depth=4, w_0=8, w_a=8.0, w_m=2.0, group_width=8, stem_width=8)
if TINY_SWAV not in list_backbones():  # registered once per process, as featcache registers its own
    register_backbone(TINY_SWAV, heads=swav.HEADS)(lambda: swav.SwAVResNet(2, SWAV_LAYERS, 8, num_classes=10))
    register_backbone(TINY_SEER)(lambda: regnet.SEERRegNet(SEER_TINY, num_classes=10))


def randomized(net: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """``net``'s state dict with every tensor drawn at random (BN variances positive), its classifier left out."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in net.state_dict().items():
        if k.startswith("fc.") or k.endswith("num_batches_tracked"):
            continue
        r = torch.rand(v.shape, generator=g)
        out[k] = r + 0.5 if k.endswith("running_var") else (r - 0.5) * (0.6 if "weight" in k else 0.2)
    return out


def bn(sd: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"],
                        sd[f"{prefix}.bias"], training=False, eps=1e-5)  # fmt: skip


def images() -> torch.Tensor:
    return torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(5)) - 0.5


# --- SwAV: facebookresearch/swav src/resnet50.py ---------------------------------------------------------------------


def swav_reference(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """SwAV's forward_backbone (eval_mode off): pad 1, 7x7/2 conv with padding 2, BN, ReLU, max pool, then bottlenecks
    (stride on the 3x3 of a stage's first block; a 1x1 + BN shortcut where the shape changes), average pool."""
    x = F.relu(bn(sd, "bn1", F.conv2d(F.pad(x, (1, 1, 1, 1)), sd["conv1.weight"], stride=2, padding=2)))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for i, blocks in enumerate(SWAV_LAYERS, start=1):
        for j in range(blocks):
            p, stride = f"layer{i}.{j}", 2 if (i > 1 and j == 0) else 1
            out = F.relu(bn(sd, f"{p}.bn1", F.conv2d(x, sd[f"{p}.conv1.weight"])))
            out = F.relu(bn(sd, f"{p}.bn2", F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1)))
            out = bn(sd, f"{p}.bn3", F.conv2d(out, sd[f"{p}.conv3.weight"]))
            if f"{p}.downsample.0.weight" in sd:
                x = bn(sd, f"{p}.downsample.1", F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride))
            x = F.relu(out + x)
    return x.mean((2, 3))


def test_swav_checkpoint_loads_and_matches_the_reference_forward(tmp_path):
    sd = randomized(swav.SwAVResNet(2, SWAV_LAYERS, 8, num_classes=10), seed=1)
    heads = {"projection_head.0.weight": torch.randn(16, 512), "projection_head.0.bias": torch.randn(16),
             "prototypes.weight": torch.randn(30, 16)}  # fmt: skip
    # as SwAV's main_swav.py saves it: DistributedDataParallel's module. prefix, the training heads included
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in {**sd, **heads}.items()}}, tmp_path / "s.pth")
    bb = load_backbone(CheckpointSpec("swav", TINY_SWAV, tmp_path / "s.pth"))
    assert bb.feature_dim == 8 * 2 * 8 * 4 == 512 and bb.ignored_keys == ()  # 2048 * widen at full width
    with torch.no_grad():
        got = bb.module(images())
    torch.testing.assert_close(got, swav_reference(sd, images()), rtol=1e-4, atol=1e-5)


def test_swav_bottleneck_width_is_its_planes(tmp_path):
    # an early version of SwAV's file made the bottlenecks widen x wider: such a file is another architecture
    sd = randomized(swav.SwAVResNet(2, SWAV_LAYERS, 8, num_classes=10), seed=1)
    sd["layer1.0.conv1.weight"] = torch.randn(32, 16, 1, 1)
    torch.save(sd, tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match=r"layer1.0.conv1.weight \(32, 16, 1, 1\) vs \(16, 16, 1, 1\)"):
        load_backbone(CheckpointSpec("wide", TINY_SWAV, tmp_path / "wide.pth"))


@pytest.mark.parametrize(("arch", "widen", "params"), [("resnet50w2", 2, 94), ("resnet50w4", 4, 375),
                                                       ("resnet50w5", 5, 586)])  # fmt: skip
def test_swav_wide_resnets_at_full_size(arch, widen, params):
    with torch.device("meta"):
        net = build_features(arch)
    sd = net.backbone.state_dict()
    assert net.feature_dims == (2048 * widen,) and set(net.classifier) == {"fc.", "projection_head.", "prototypes."}
    assert round(sum(v.numel() for k, v in sd.items() if "running" not in k and "num_batches" not in k) / 1e6) == params
    w = 64 * widen  # the stem; stage i has w * 2**i planes, bottlenecks as wide, 4x that out
    assert sd["conv1.weight"].shape == (w, 3, 7, 7) and sd["layer1.0.conv1.weight"].shape == (w, w, 1, 1)
    assert sd["layer4.2.conv3.weight"].shape == (32 * w, 8 * w, 1, 1)
    assert sd["layer4.0.downsample.0.weight"].shape == (32 * w, 16 * w, 1, 1)


# --- SEER: Classy Vision's RegNet under VISSL's names ----------------------------------------------------------------


def vissl_keys(params: regnet.RegNetParams) -> set[str]:
    """The trunk keys VISSL's RegNet wrapper gives a Classy Vision RegNetY (one BN's five tensors per BN)."""
    bn_keys = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"_feature_blocks.conv1.stem.0.weight", *(f"_feature_blocks.conv1.stem.1.{b}" for b in bn_keys)}
    for k, (_, depth, _) in enumerate(params.stages(), start=1):
        for i in range(depth):
            p = f"_feature_blocks.res{k + 1}.block{k}-{i}"
            keys |= {f"{p}.f.a.0.weight", f"{p}.f.b.0.weight", f"{p}.f.c.weight"}
            keys |= {f"{p}.f.se.excitation.{j}.{w}" for j in (0, 2) for w in ("weight", "bias")}
            keys |= {f"{p}.{m}.{b}" for m in ("f.a.1", "f.b.1", "f.final_bn") for b in bn_keys}
            if i == 0:
                keys |= {f"{p}.proj.weight", *(f"{p}.bn.{b}" for b in bn_keys)}
    return keys


def seer_reference(sd: dict, params: regnet.RegNetParams, x: torch.Tensor) -> torch.Tensor:
    """Classy Vision's AnyNet forward: stem (3x3/2 conv, BN, ReLU), residual bottleneck blocks (1x1; grouped 3x3,
    stride 2 in a stage's first block; SE; 1x1; BN; projected shortcut where the shape changes), average pool."""
    x = F.relu(bn(sd, "_feature_blocks.conv1.stem.1", F.conv2d(x, sd["_feature_blocks.conv1.stem.0.weight"],
                                                              stride=2, padding=1)))  # fmt: skip
    for k, (_, depth, _) in enumerate(params.stages(), start=1):
        for i in range(depth):
            p, stride = f"_feature_blocks.res{k + 1}.block{k}-{i}", 2 if i == 0 else 1
            wb = sd[f"{p}.f.b.0.weight"]
            groups = wb.shape[0] // wb.shape[1]  # a grouped conv's weight is (out, in / groups, 3, 3)
            f = F.relu(bn(sd, f"{p}.f.a.1", F.conv2d(x, sd[f"{p}.f.a.0.weight"])))
            f = F.relu(bn(sd, f"{p}.f.b.1", F.conv2d(f, wb, stride=stride, padding=1, groups=groups)))
            s = F.relu(F.conv2d(f.mean((2, 3), keepdim=True), sd[f"{p}.f.se.excitation.0.weight"],
                                sd[f"{p}.f.se.excitation.0.bias"]))  # fmt: skip
            f = f * torch.sigmoid(F.conv2d(s, sd[f"{p}.f.se.excitation.2.weight"], sd[f"{p}.f.se.excitation.2.bias"]))
            f = bn(sd, f"{p}.f.final_bn", F.conv2d(f, sd[f"{p}.f.c.weight"]))
            short = bn(sd, f"{p}.bn", F.conv2d(x, sd[f"{p}.proj.weight"], stride=stride)) if i == 0 else x
            x = F.relu(short + f)
    return x.mean((2, 3))


def test_seer_trunk_loads_from_the_classy_state_dict_and_matches_the_reference(tmp_path):
    sd = randomized(regnet.SEERRegNet(SEER_TINY, num_classes=10), seed=2)
    assert set(sd) | {k for k in vissl_keys(SEER_TINY) if k.endswith("num_batches_tracked")} == vissl_keys(SEER_TINY)
    assert SEER_TINY.stages() == [(8, 1, 8), (16, 1, 8), (32, 2, 8)]  # 1, 2 and 4 groups
    assert sd["_feature_blocks.res4.block3-0.f.b.0.weight"].shape == (32, 8, 3, 3)
    # as VISSL saves a SEER run: the trunk and the heads apart, under classy_state_dict
    model = {"trunk": sd, "heads": {"0.clf.0.weight": torch.randn(10, 32), "0.clf.0.bias": torch.randn(10)}}
    torch.save({"classy_state_dict": {"base_model": {"model": model}}, "iteration": 7}, tmp_path / "seer.torch")
    bb = load_backbone(CheckpointSpec("seer", TINY_SEER, tmp_path / "seer.torch"))
    assert bb.feature_dim == 32
    with torch.no_grad():
        got = bb.module(images())
    torch.testing.assert_close(got, seer_reference(sd, SEER_TINY, images()), rtol=1e-4, atol=1e-5)


def torchvision_names(key: str) -> str:
    """A VISSL trunk key under torchvision's RegNet names (an independent build of the same architecture)."""
    key = key.replace("_feature_blocks.conv1.stem.", "stem.")
    key = re.sub(r"_feature_blocks\.res\d\.block(\d)-", r"trunk_output.block\1.block\1-", key)
    for old, new in ((".f.se.excitation.0", ".f.se.fc1"), (".f.se.excitation.2", ".f.se.fc2"), (".f.c.", ".f.c.0."),
                     (".f.final_bn.", ".f.c.1."), (".proj.", ".proj.0."), (".bn.", ".proj.1.")):  # fmt: skip
        key = key.replace(old, new)
    return key


# the research code's feature widths of its RegNet trunks (src/models.py: feat_dim)
RESEARCH_DIMS = {"seer_regnet_y_32gf": 3712, "seer_regnet_y_64gf": 4920, "seer_regnet_y_128gf": 7392,
                 "seer_regnet_y_256gf": 10444}  # fmt: skip


@pytest.mark.parametrize("arch", sorted(RESEARCH_DIMS))
def test_seer_trunks_at_full_size(arch):
    p = regnet.SEER[arch]
    with torch.device("meta"):
        net = build_features(arch)
    assert net.feature_dims == (RESEARCH_DIMS[arch],) and net.classifier == ("fc.",)
    ours = {torchvision_names(k): tuple(v.shape) for k, v in net.backbone.state_dict().items()}
    assert set(ours) | {"num_batches_tracked"} >= {torchvision_names(k) for k in vissl_keys(p)}
    tv = BlockParams.from_init_params(depth=p.depth, w_0=p.w_0, w_a=p.w_a, w_m=p.w_m, group_width=p.group_width,
                                      se_ratio=0.25)  # fmt: skip
    with torch.device("meta"):
        theirs = {k: tuple(v.shape) for k, v in RegNet(tv).state_dict().items() if not k.startswith("fc.")}
    assert ours == theirs
