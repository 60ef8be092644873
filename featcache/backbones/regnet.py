"""The SEER RegNetY trunks, as Classy Vision builds them and VISSL names their weights.

Architecture (Classy Vision ``models/anynet.py`` and ``models/regnet.py``): a simple stem (3x3 conv, stride 2, 32
channels, BN, ReLU), then four stages of residual bottleneck blocks (1x1, grouped 3x3 with stride 2 in a stage's first
block, squeeze-and-excitation reducing to a quarter of the block's *input* width, 1x1, BN; a 1x1 projection with BN on
the shortcut when the shape changes). Stage widths and depths follow from (depth, w_0, w_a, w_m, group_width) by
Classy Vision's quantised linear rule, computed here the same way, in float64 numpy.

Keys (VISSL's RegNet trunk, which SEER checkpoints hold under ``classy_state_dict.base_model.model.trunk``):
``_feature_blocks.conv1.stem.{0,1}`` for the stem, ``_feature_blocks.res{k+1}.block{k}-{i}`` for block i of stage k,
each with ``proj``, ``bn``, ``f.a.{0,1}``, ``f.b.{0,1}``, ``f.se.excitation.{0,2}``, ``f.c`` and ``f.final_bn``.
The feature is the average-pooled output of the last stage.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["ARCHS", "SEER", "RegNetParams", "SEERRegNet"]


@dataclass(frozen=True)
class RegNetParams:
    """Classy Vision's ``RegNetParams`` (RegNetY: squeeze-and-excitation on, ReLU, BN eps 1e-5)."""

    depth: int
    w_0: int
    w_a: float
    w_m: float
    group_width: int
    bottleneck_multiplier: float = 1.0
    se_ratio: float = 0.25
    stem_width: int = 32

    def stages(self) -> list[tuple[int, int, int]]:
        """(width, depth, group width) of each stage, as Classy Vision's ``get_expanded_params`` computes them."""
        quant = 8
        widths_cont = np.arange(self.depth) * self.w_a + self.w_0
        capacity = np.round(np.log(widths_cont / self.w_0) / np.log(self.w_m))
        block_widths = np.round(np.divide(self.w_0 * np.power(self.w_m, capacity), quant)) * quant
        block_widths = block_widths.astype(int).tolist()
        # a new stage wherever the block width changes
        starts = [i for i, w in enumerate(block_widths) if i == 0 or w != block_widths[i - 1]] + [len(block_widths)]
        widths = [block_widths[i] for i in starts[:-1]]
        depths = np.diff(starts).tolist()
        # widths and group widths made compatible: the bottleneck width a multiple of the group width
        bottlenecks = [int(w * self.bottleneck_multiplier) for w in widths]
        groups = [min(self.group_width, b) for b in bottlenecks]
        bottlenecks = [int(round(b / g) * g) for b, g in zip(bottlenecks, groups, strict=True)]
        widths = [int(b / self.bottleneck_multiplier) for b in bottlenecks]
        return list(zip(widths, depths, groups, strict=True))


# The SEER trunks: 32gf and 128gf are Classy Vision's regnet_y_32gf and regnet_y_128gf, 256gf the research code's
# (and VISSL's regnet256Gf_1.yaml) parameters; 64gf is SEER's RegNet64 (timm's regnety_640.seer), whose 4920-d feature
# the research code lists (its builder takes Classy Vision's regnet_y_64gf, 2976-d, instead).
SEER: dict[str, RegNetParams] = {
    "seer_regnet_y_32gf": RegNetParams(depth=20, w_0=232, w_a=115.89, w_m=2.53, group_width=232),
    "seer_regnet_y_64gf": RegNetParams(depth=20, w_0=352, w_a=147.48, w_m=2.4, group_width=328),
    "seer_regnet_y_128gf": RegNetParams(depth=27, w_0=456, w_a=160.83, w_m=2.52, group_width=264),
    "seer_regnet_y_256gf": RegNetParams(depth=27, w_0=640, w_a=230.83, w_m=2.53, group_width=373),
}


def _conv_bn(w_in: int, w_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(w_in, w_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(w_out),
        nn.ReLU(inplace=True),
    )


class _SqueezeExcitation(nn.Module):
    def __init__(self, width: int, reduced: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.excitation = nn.Sequential(nn.Conv2d(width, reduced, 1, bias=True), nn.ReLU(inplace=True),
                                        nn.Conv2d(reduced, width, 1, bias=True), nn.Sigmoid())  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.excitation(self.avgpool(x))


class _BottleneckTransform(nn.Sequential):
    """1x1, grouped 3x3, squeeze-and-excitation, 1x1, BN: applied in that (registration) order."""

    def __init__(self, w_in: int, w_out: int, stride: int, group_width: int, p: RegNetParams):
        super().__init__()
        w_b = int(round(w_out * p.bottleneck_multiplier))
        self.a = _conv_bn(w_in, w_b, 1)
        self.b = _conv_bn(w_b, w_b, 3, stride, groups=w_b // group_width)
        self.se = _SqueezeExcitation(w_b, int(round(p.se_ratio * w_in)))  # reduced from the block's input width
        self.c = nn.Conv2d(w_b, w_out, 1, bias=False)
        self.final_bn = nn.BatchNorm2d(w_out)


class _ResBottleneckBlock(nn.Module):
    def __init__(self, w_in: int, w_out: int, stride: int, group_width: int, p: RegNetParams):
        super().__init__()
        self.proj_block = w_in != w_out or stride != 1
        if self.proj_block:
            self.proj = nn.Conv2d(w_in, w_out, 1, stride=stride, bias=False)
            self.bn = nn.BatchNorm2d(w_out)
        self.f = _BottleneckTransform(w_in, w_out, stride, group_width, p)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.bn(self.proj(x)) if self.proj_block else x
        return self.activation(shortcut + self.f(x))


class _Stem(nn.Sequential):
    def __init__(self, width: int):
        super().__init__()
        self.stem = _conv_bn(3, width, 3, stride=2)


class SEERRegNet(nn.Module):
    """A RegNetY trunk in VISSL's key layout, average-pooled, with an ``fc`` classifier slot.

    Args:
        params: the RegNet's parameters (:data:`SEER` holds the SEER trunks').
        num_classes: outputs of ``fc``, the slot featcache's builder takes off (a SEER trunk file has none).
    """

    def __init__(self, params: RegNetParams, num_classes: int = 1000):
        super().__init__()
        blocks: list[tuple[str, nn.Module]] = [("conv1", _Stem(params.stem_width))]
        w_in = params.stem_width
        for k, (width, depth, group_width) in enumerate(params.stages(), start=1):
            stage = nn.Sequential()
            for i in range(depth):
                stage.add_module(f"block{k}-{i}", _ResBottleneckBlock(w_in, width, 2 if i == 0 else 1, group_width,
                                                                      params))  # fmt: skip
                w_in = width
            blocks.append((f"res{k + 1}", stage))
        self._feature_blocks = nn.Sequential(OrderedDict(blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(w_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self._feature_blocks(x)), 1))


def _factory(params: RegNetParams) -> Callable[[], nn.Module]:
    return lambda: SEERRegNet(params)


ARCHS: dict[str, Callable[[], nn.Module]] = {name: _factory(p) for name, p in SEER.items()}
