"""featcache.transforms: the batched uint8 pipeline against the PIL research reference.

Tolerances are in normalized units (after (x - mean) / std); one uint8 level is 1 / 255 / std, i.e. 0.0197
for the CIFAR presets, 0.0175 for ImageNet's and 0.0104 for digits'. Pillow resamples in two separable
passes (width, then height) with Keys cubic a=-0.5 (not torch's non-antialiased a=-0.75) and rounds to uint8
after each pass, clamping bicubic overshoot. On CPU torchvision's native uint8 kernel is that algorithm
(`native=True`); the float path used on CUDA (`native=False`) replays it with rounding after each pass.
Measured on this file's inputs (torch 2.14.1, Pillow 13.0, CPU), max / mean abs difference:

    preset          input (this file)  native=True           native=False (the CUDA path)
    cifar-224px     16 x 32x32 smooth  0 / 0                 0.0388 / 0.00014  (2 levels at a few pixels)
    cifar-32px      16 x 32x32 smooth  0.0393 / 0.00050      0.0393 / 0.00052
    imagenet-224px  16 x 40x30 smooth  0.0175 / 0.0000061    0.0175 / 0.000032 (1 level)
    digits-32px     64 sklearn digits  0.0104 / 0.0000056    0.0104 / 0.0000045 (1 level)

A single float resize without the intermediate rounding is about 0.006 off on average (12-40x worse).
Assertions sit slightly above the measurements: max at 2 (or 1) levels plus a margin, mean tight.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from data_factory import smooth_images
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from featcache.config import TransformSpec
from featcache.data import DigitsDataset
from featcache.errors import ConfigError
from featcache.transforms import (
    BatchPreprocess,
    PilResizeCrop,
    describe,
    pil_reference,
    pil_resize_crop,
    resize_like_pil,
    resized_size,
)

DATASETS_YAML = Path(__file__).resolve().parents[1] / "configs" / "datasets.yaml"


def _presets() -> dict[str, TransformSpec]:
    doc = yaml.safe_load(DATASETS_YAML.read_text())["transforms"]
    return {
        k: TransformSpec(k, v["resize"], v["crop"], v["interpolation"], tuple(v["mean"]), tuple(v["std"]))
        for k, v in doc.items()
    }


PRESETS = _presets()


def _inputs(kind: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if kind == "digits":
        return DigitsDataset(split="test").images[:64]
    h, w = (int(v) for v in kind.split("x"))
    return smooth_images(rng, 16, h, w)


def _batch(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _reference(spec: TransformSpec, arr: np.ndarray) -> torch.Tensor:
    ref = pil_reference(spec)
    return torch.stack([ref(Image.fromarray(a)) for a in arr])


@pytest.mark.parametrize("native", [True, False], ids=["native-uint8", "float-two-pass"])
@pytest.mark.parametrize(
    "preset, kind, max_tol, mean_tol",
    [
        ("cifar-224px", "32x32", 0.045, 0.0003),
        ("cifar-32px", "32x32", 0.045, 0.0007),
        ("imagenet-224px", "30x40", 0.02, 0.0001),
        ("digits-32px", "digits", 0.012, 0.00003),
    ],
)
def test_batch_matches_pil_reference(preset, kind, max_tol, mean_tol, native):
    spec = PRESETS[preset]
    arr = _inputs(kind)
    ref = _reference(spec, arr)
    out = BatchPreprocess(spec, native_resize=native)(_batch(arr), cropped=False)
    assert out.shape == ref.shape == (len(arr), 3, spec.crop, spec.crop) and out.dtype == torch.float32
    diff = (out - ref).abs()
    assert diff.max().item() <= max_tol and diff.mean().item() <= mean_tol, (diff.max(), diff.mean())


def test_float_resize_without_rounding_is_worse():
    """Why the float path rounds after each pass: without it the mean error grows by over 10x."""
    spec = PRESETS["cifar-224px"]
    arr = _inputs("32x32")
    ref, x = _reference(spec, arr), _batch(arr)
    pre = BatchPreprocess(spec, native_resize=False)
    naive = F.center_crop(F.resize(x.float(), [spec.resize], interpolation=pre.interpolation), [spec.crop] * 2)
    naive_err = (pre.normalize((naive.round().clamp(0, 255)).to(torch.uint8)) - ref).abs().mean()
    assert naive_err > 10 * (pre(x) - ref).abs().mean()


def test_precropped_is_to_float_and_normalize_exactly():
    spec = PRESETS["cifar-224px"]
    x = torch.randint(0, 256, (4, 3, 224, 224), dtype=torch.uint8)
    out = BatchPreprocess(spec)(x, cropped=True)
    want = torch.stack([v2.Normalize(spec.mean, spec.std)(v2.ToDtype(torch.float32, scale=True)(im)) for im in x])
    assert torch.equal(out, want)
    manual = (x.float() / 255 - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, manual, rtol=0, atol=1e-6)


def test_pil_resize_crop_then_batch_equals_reference():
    spec = PRESETS["imagenet-224px"]
    imgs = [Image.fromarray(a) for a in _inputs("30x40")[:4]] + [Image.fromarray(_inputs("32x32")[0]).convert("L")]
    geo = pil_resize_crop(spec)
    crops = torch.stack([geo(im) for im in imgs])
    assert crops.dtype == torch.uint8 and crops.shape == (5, 3, 224, 224)
    out = BatchPreprocess(spec)(crops, cropped=True)
    assert torch.equal(out, torch.stack([pil_reference(spec)(im.convert("RGB")) for im in imgs]))


def test_pil_resize_crop_is_picklable():
    spec = PRESETS["cifar-32px"]
    geo = pickle.loads(pickle.dumps(pil_resize_crop(spec)))
    assert isinstance(geo, PilResizeCrop)
    img = Image.fromarray(_inputs("32x32")[0])
    assert torch.equal(geo(img), pil_resize_crop(spec)(img))
    assert repr(geo) == "PilResizeCrop(preset='cifar-32px', resize=36, crop=32, interpolation=bicubic)"


def test_shapes_devices_and_sizes():
    spec = PRESETS["imagenet-224px"]
    pre = BatchPreprocess(spec)
    out = pre(torch.zeros(2, 3, 300, 500, dtype=torch.uint8))
    assert out.shape == (2, 3, 224, 224) and out.dtype == torch.float32 and out.device == torch.device("cpu")
    for h, w in ((30, 40), (40, 30), (17, 17), (500, 333)):
        pil = F.resize(Image.new("RGB", (w, h)), [256])
        assert resized_size(h, w, 256) == (pil.height, pil.width)
    x = torch.zeros(1, 3, 256, 256, dtype=torch.uint8)
    assert resize_like_pil(x, 256, pre.interpolation, native=False) is x
    assert "preset='imagenet-224px', resize=256, crop=224, interpolation=bilinear" in repr(pre)
    assert describe(spec) == spec.to_dict()


def test_refusals():
    spec = PRESETS["cifar-32px"]
    pre = BatchPreprocess(spec)
    with pytest.raises(ConfigError, match=r"32x32 batch is ambiguous.*pass cropped=True"):
        pre(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    assert pre(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), cropped=False).shape == (1, 3, 32, 32)
    with pytest.raises(ConfigError, match=r"expects a uint8 \(B, 3, H, W\) batch, got torch.float32"):
        pre(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ConfigError, match=r"cropped=True but the batch is \(40, 40\)"):
        pre(torch.zeros(1, 3, 40, 40, dtype=torch.uint8), cropped=True)
    bad = TransformSpec("x", 256, 224, "nearest", (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ConfigError, match=r"unknown interpolation 'nearest'.*bicubic, bilinear"):
        pil_reference(bad)
    with pytest.raises(ConfigError, match=r"'x': needs 0 < crop <= resize"):
        BatchPreprocess(TransformSpec("x", 200, 224, "bilinear", (0.5,) * 3, (0.5,) * 3))
