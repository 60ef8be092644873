"""SwAV's wide ResNet-50s, as facebookresearch/swav ``src/resnet50.py`` defines them, in its key layout.

``resnet50w{2,4,5}`` widens every layer of ResNet-50 by ``widen``: the stem has ``64 * widen`` channels, stage i has
``64 * widen * 2**i`` planes (its bottleneck as wide, ``base_width`` 64) and ``4 *`` that many outputs, so the pooled
feature has ``2048 * widen`` dimensions (4096, 8192, 10240) and the trunks 94M, 375M and 586M parameters, SwAV's
published sizes. torchvision's ``wide_resnet50_2`` widens the bottlenecks only and keeps 2048. The stem zero-pads by 1,
then convolves 7x7 with stride 2 and padding 2. (An early version of SwAV's file passed ``base_width = 64 * widen``,
bottlenecks ``widen`` times wider again; the file that defines ``resnet50w5``, and the research code's copy, do not.)

Keys are torchvision's ResNet names (``conv1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``, ...); a SwAV
checkpoint also holds its training heads (``projection_head.*``, ``prototypes.*``): :data:`HEADS`, dropped on loading
as a classifier is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

__all__ = ["ARCHS", "HEADS", "SwAVResNet"]

HEADS = ("projection_head.", "prototypes.")  # SwAV's training heads in its checkpoints


class SwAVResNet(nn.Module):
    """SwAV's ResNet of width ``widen`` (``eval_mode`` off: the pooled feature), with an ``fc`` classifier slot.

    Args:
        widen: the width multiplier (1 is ResNet-50 itself).
        layers: bottlenecks per stage (ResNet-50: 3, 4, 6, 3).
        width_per_group: the stem width at ``widen`` 1 (64), which sets every stage's planes (the bottlenecks stay as
            wide as their planes); tests build tiny nets with less.
        num_classes: outputs of ``fc``, the slot featcache's builder takes off (SwAV's checkpoints have none).
    """

    def __init__(self, widen: int, layers: Sequence[int] = (3, 4, 6, 3), width_per_group: int = 64,
                 num_classes: int = 1000):  # fmt: skip
        super().__init__()
        width = width_per_group * widen
        self.padding = nn.ConstantPad2d(1, 0.0)  # with conv1's padding 2: torchvision's padding 3, as SwAV does it
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = width
        for i, blocks in enumerate(layers):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            down = None
            if stride != 1 or inplanes != planes * Bottleneck.expansion:
                down = nn.Sequential(nn.Conv2d(inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                                     nn.BatchNorm2d(planes * Bottleneck.expansion))  # fmt: skip
            # base_width 64 (torchvision's default, SwAV's width_per_group): each bottleneck as wide as its planes
            stage = [Bottleneck(inplanes, planes, stride, down)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes) for _ in range(1, blocks)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():  # SwAV's initialisation (checkpoints overwrite it)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.padding(x)))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _factory(widen: int) -> Callable[[], nn.Module]:
    return lambda: SwAVResNet(widen)


ARCHS: dict[str, Callable[[], nn.Module]] = {f"resnet50w{w}": _factory(w) for w in (2, 4, 5)}
