"""Augmented views: the research training transform, made a pure function of (sample id, view, seed).

The seed's linear evaluation trains on RandomResizedCrop + RandomHorizontalFlip, drawn afresh for every image
in every epoch. ``extract --views K`` stores K such views per training image. The crop and flip of view k of a
sample are drawn by torchvision's ``RandomResizedCrop.get_params`` algorithm from a generator seeded with
(views seed, k, sample id) and the image size alone: not with the batch size, worker count, device, resume
point or checkpoint. So every checkpoint's store holds features of the very same crops, a repeated or resumed
run writes the same bytes, and checkpoints extracted in one pass share each decoded image.

Two ways to apply a view, from the same parameters:

- :meth:`ViewMaker.pil`: the research pipeline on a PIL image (``F.resized_crop`` then ``F.hflip``), in the
  DataLoader workers of the ``pil`` backend: pixel for pixel what the research code computes for those
  parameters.
- :meth:`ViewMaker.on_device`: uint8 tensors on the device (``device`` backend), every crop of every image resized
  in one call by :func:`featcache.resample.resample`: Pillow's pixels for those parameters (bit for bit in
  float64, see there).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from .config import AugmentSpec
from .errors import ConfigError
from .resample import Crop, resample
from .transforms import INTERPOLATIONS

__all__ = ["CropParams", "ViewMaker"]


@dataclass(frozen=True)
class CropParams:
    """One view of one image: the crop box (as RandomResizedCrop.get_params returns it) and the flip."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


class ViewMaker:
    """Crops and flips views ``0..K-1`` of images, deterministically (see the module docstring).

    Args:
        spec: the training transform (output size, scale and ratio ranges, interpolation, flip probability).
        seed: the views seed, recorded in the store.

    Raises:
        ConfigError: unknown interpolation, or ranges that are not (low, high) with 0 < low <= high.
    """

    def __init__(self, spec: AugmentSpec, seed: int):
        if spec.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"augmentation interpolation '{spec.interpolation}' is not one of {list(INTERPOLATIONS)}")
        for name, (lo, hi) in (("scale", spec.scale), ("ratio", spec.ratio)):
            if not 0 < lo <= hi:
                raise ConfigError(f"augmentation {name} must be (low, high) with 0 < low <= high, got {(lo, hi)}")
        self.spec, self.seed = spec, int(seed)
        self.mode = INTERPOLATIONS[spec.interpolation]

    def describe(self) -> dict:
        """The transform's parameters, as recorded with the views."""
        return self.spec.to_dict()

    def params(self, sample_id: str, view: int, height: int, width: int) -> CropParams:
        """View ``view`` of sample ``sample_id``, an image of ``height`` x ``width``: a pure function of these."""
        key = int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "little")
        rng = np.random.default_rng([self.seed, view, key])
        top, left, h, w = _random_resized_crop(rng, height, width, self.spec.scale, self.spec.ratio)
        return CropParams(top, left, h, w, bool(rng.random() < self.spec.hflip))

    def pil(self, img: Image.Image, p: CropParams) -> torch.Tensor:
        """The view on a PIL image, as the research pipeline makes it: uint8 ``(3, size, size)``."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        size = [self.spec.size, self.spec.size]
        out = F.resized_crop(img, p.top, p.left, p.height, p.width, size, interpolation=self.mode, antialias=True)
        return F.pil_to_tensor(F.hflip(out) if p.flip else out)

    def on_device(
        self, images: Sequence[torch.Tensor], ids: Sequence[str], views: Sequence[int], exact: bool | None = None
    ) -> dict[int, torch.Tensor]:
        """Views of uint8 ``(3, H, W)`` images (any device, any sizes): ``{view: uint8 (B, 3, size, size)}``.

        All in one :func:`featcache.resample.resample` call; each result is the same as resizing that crop alone.
        """
        size, mode = self.spec.size, self.spec.interpolation
        crops = []
        for img, sample_id in zip(images, ids, strict=True):
            params = [self.params(sample_id, k, int(img.shape[-2]), int(img.shape[-1])) for k in views]
            crops.append([Crop(p.top, p.left, p.height, p.width, size, size, 0, 0, p.flip, mode) for p in params])
        made = resample(images, crops, size, exact)
        return {k: made[:, j] for j, k in enumerate(views)}


def _random_resized_crop(
    rng: np.random.Generator, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` (10 tries, then a centre crop), drawing from ``rng``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w
