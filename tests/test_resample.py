"""featcache.resample: Pillow's resize as batched matrix products, checked pixel for pixel against Pillow itself.

The images are random noise (every pixel independent), so a wrong tap, offset, rounding or pass order changes
many output pixels; the sizes are drawn so that center-crop offsets land on halves (Python rounds them to even),
images upscale and downscale, and some are tall enough for Pillow 13's vertical-first order.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from featcache import resample as rs
from featcache.resample import Crop, eval_crop, resample

MODES = {"bicubic": v2.InterpolationMode.BICUBIC, "bilinear": v2.InterpolationMode.BILINEAR}
# (height, width): upscales, downscales, a tall one (vertical pass first from Pillow 13), odd offsets
SIZES = [(197, 72), (72, 197), (31, 45), (120, 90), (90, 121), (300, 95), (64, 64), (23, 160)]


def _images(seed: int = 0):
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]
    return [Image.fromarray(a) for a in arrays], [torch.from_numpy(a).permute(2, 0, 1).contiguous() for a in arrays]


def _pil_eval(img: Image.Image, resize: int, crop: int, mode: str) -> torch.Tensor:
    out = F.center_crop(F.resize(img, [resize], interpolation=MODES[mode], antialias=True), [crop, crop])
    return F.pil_to_tensor(out)


def _pil_view(img: Image.Image, c: Crop, size: int) -> torch.Tensor:
    out = F.resized_crop(img, c.top, c.left, c.height, c.width, [size, size], interpolation=MODES[c.mode])
    return F.pil_to_tensor(F.hflip(out) if c.flip else out)


def _views(rng: np.random.Generator, height: int, width: int, size: int, mode: str, n: int) -> list[Crop]:
    out = []
    for _ in range(n):
        top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
        h, w = int(rng.integers(1, height - top + 1)), int(rng.integers(1, width - left + 1))
        out.append(Crop(top, left, h, w, size, size, 0, 0, bool(rng.integers(0, 2)), mode))
    return out


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize(("resize", "crop"), [(73, 64), (48, 48), (40, 33)])
def test_eval_crops_and_views_are_pillows_bit_for_bit(mode, resize, crop):
    """The evaluation crop and three views (boxes, flips) of images of eight sizes, in one call, in float64: equal
    to Pillow's resize, center crop, resized crop and flip, pixel for pixel."""
    pil, images = _images()
    rng = np.random.default_rng(1)
    crops = [[eval_crop(*t.shape[-2:], resize, crop, mode), *_views(rng, *t.shape[-2:], crop, mode, 3)] for t in images]
    got = resample(images, crops, crop, exact=True)
    assert got.shape == (len(images), 4, 3, crop, crop) and got.dtype == torch.uint8
    for b, (img, row) in enumerate(zip(pil, crops, strict=True)):
        assert torch.equal(got[b, 0], _pil_eval(img, resize, crop, mode)), SIZES[b]
        for k, c in enumerate(row[1:], start=1):
            assert torch.equal(got[b, k], _pil_view(img, c, crop)), (SIZES[b], c)


def test_float32_is_within_one_level():
    """float32 products (GPUs with slow float64): at most one level off, at few pixels."""
    pil, images = _images(2)
    crops = [[eval_crop(*t.shape[-2:], 48, 40, "bilinear")] for t in images]
    exact = resample(images, crops, 40, exact=True).int()
    fast = resample(images, crops, 40, exact=False).int()
    diff = (fast - exact).abs()
    assert diff.max() <= 1 and diff.float().mean() < 1e-2


def test_a_batch_tensor_and_groups_give_the_same_crops(monkeypatch):
    """A (B, 3, H, W) batch is taken as is; batches cut into several groups (a small memory bound) give the same
    bytes as one group."""
    rng = np.random.default_rng(3)
    batch = torch.from_numpy(rng.integers(0, 256, (6, 3, 21, 34), dtype=np.uint8))
    crops = [[eval_crop(21, 34, 36, 32, "bicubic"), *_views(rng, 21, 34, 32, "bicubic", 2)] for _ in range(6)]
    whole = resample(batch, crops, 32, exact=True)
    monkeypatch.setattr(rs, "GROUP_BYTES", 1)  # every image its own group
    assert torch.equal(resample(list(batch), crops, 32, exact=True), whole)


def test_eval_crop_sizes_and_offsets_are_torchvisions():
    """Sizes ``int(size * long / short)`` and offsets rounded as Python rounds (half to even): 197 x 72 resized
    to 87 x 32 keeps rows 28.. (27.5 rounds to 28), 229 x 100 to 73 x 32 keeps rows 20.. (20.5 rounds to 20)."""
    assert eval_crop(197, 72, 32, 32, "bicubic") == Crop(0, 0, 197, 72, 87, 32, 28, 0, False, "bicubic")
    assert eval_crop(229, 100, 32, 32, "bilinear") == Crop(0, 0, 229, 100, 73, 32, 20, 0, False, "bilinear")
    assert eval_crop(375, 500, 256, 224, "bilinear") == Crop(0, 0, 375, 500, 256, 341, 16, 58, False, "bilinear")


def test_pass_order_follows_the_installed_pillow(monkeypatch):
    """Pillow 13 runs the vertical pass first when the height shrinks by more than twice the width's shrink; the
    order changes the result, so both are followed (the tall image of SIZES needs it: checked above)."""
    tall = eval_crop(197, 72, 32, 32, "bicubic")  # shrinks 110 rows and 40 columns
    wide = eval_crop(72, 197, 32, 32, "bicubic")
    assert rs.vertical_first(tall) == (rs._PILLOW_MAJOR >= 13) and not rs.vertical_first(wide)
    monkeypatch.setattr(rs, "_PILLOW_MAJOR", 12)
    assert not rs.vertical_first(tall)


def test_bad_calls_are_refused():
    img = torch.zeros(3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="same number"):
        resample([img, img], [[eval_crop(8, 8, 8, 8, "bicubic")]], 8)
    with pytest.raises(ValueError, match="same number"):
        resample([], [], 8)
