"""Eval preprocessing built once from a :class:`~featcache.config.TransformSpec`.

Three forms of the same Resize(shorter side) -> CenterCrop -> to float [0, 1] -> Normalize:

- :func:`pil_reference`: the research pipeline (torchvision ``transforms.v2`` on a PIL image), the ground truth.
- :func:`pil_resize_crop`: the geometric part on PIL in DataLoader workers, giving uint8 ``(3, crop, crop)``;
  :class:`BatchPreprocess` then normalizes whole batches on the device.
- :class:`BatchPreprocess`: the whole pipeline on a uint8 ``(B, 3, H, W)`` batch, on any device, no per-image loop.

How close the batched path is to PIL: by default it resizes with :mod:`featcache.resample`, Pillow's own
arithmetic as matrix products: bit for bit Pillow's pixels in float64 (the CPU, and GPUs with full-rate float64),
at most one level off at few pixels in float32. The two older forms stay available through ``native_resize``:
torchvision's uint8 antialiased kernel (CPU only; Pillow's algorithm, at most 2 uint8 levels off at a few pixels)
and :func:`resize_like_pil`'s two float32 passes rounded and clamped after each, as Pillow does (within 2 levels
of Pillow, about 0.01-0.1 levels on average). Resizing in float without that intermediate rounding is 12-40x
further off on average.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.nn import functional as nnf
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .config import TransformSpec
from .errors import ConfigError, unknown_name
from .resample import eval_crop, resample

__all__ = [
    "INTERPOLATIONS",
    "BatchPreprocess",
    "PilResizeCrop",
    "describe",
    "pil_reference",
    "pil_resize_crop",
    "resize_like_pil",
    "resize_uint8",
    "resized_size",
]

INTERPOLATIONS = {"bicubic": v2.InterpolationMode.BICUBIC, "bilinear": v2.InterpolationMode.BILINEAR}


def _check(spec: TransformSpec) -> v2.InterpolationMode:
    """Validate a preset once, at build time; return its interpolation mode."""
    where = f"transform preset '{spec.name}'"
    if spec.interpolation not in INTERPOLATIONS:
        raise unknown_name("interpolation", spec.interpolation, INTERPOLATIONS, f"in {where}")
    if not 0 < spec.crop <= spec.resize:
        raise ConfigError(f"{where}: needs 0 < crop <= resize, got crop={spec.crop}, resize={spec.resize}")
    if len(spec.mean) != 3 or len(spec.std) != 3 or min(spec.std) <= 0:
        raise ConfigError(f"{where}: mean and std need 3 values each, std > 0; got {spec.mean}, {spec.std}")
    return INTERPOLATIONS[spec.interpolation]


def describe(spec: TransformSpec) -> dict[str, Any]:
    """The named parameters of a preset, as recorded in a feature store."""
    _check(spec)
    return spec.to_dict()


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Output (height, width) of Resize(size): the shorter side becomes ``size``, the aspect ratio is kept.

    The same arithmetic as torchvision's Resize with one int, for PIL images and tensors alike.
    """
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


def pil_reference(spec: TransformSpec) -> Callable[[Image.Image], torch.Tensor]:
    """The research eval transform: PIL RGB image -> float32 ``(3, crop, crop)``, normalized.

    Raises:
        ConfigError: unknown interpolation or inconsistent sizes in the preset.
    """
    mode = _check(spec)
    return v2.Compose(
        [
            v2.Resize(spec.resize, interpolation=mode, antialias=True),
            v2.CenterCrop(spec.crop),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(spec.mean), list(spec.std)),
        ]
    )


class PilResizeCrop:
    """Resize + CenterCrop on a PIL image, returning uint8 ``(3, crop, crop)``; picklable for DataLoader workers."""

    def __init__(self, spec: TransformSpec):
        self.interpolation = _check(spec)
        self.resize, self.crop, self.name = spec.resize, spec.crop, spec.name

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.mode != "RGB":
            img = img.convert("RGB")
        img = F.resize(img, [self.resize], interpolation=self.interpolation, antialias=True)
        img = F.center_crop(img, [self.crop, self.crop])
        return F.pil_to_tensor(img)

    def __repr__(self) -> str:
        mode = self.interpolation.value
        return f"PilResizeCrop(preset={self.name!r}, resize={self.resize}, crop={self.crop}, interpolation={mode})"


def pil_resize_crop(spec: TransformSpec) -> PilResizeCrop:
    """The geometric half of :func:`pil_reference`; normalization follows batched in :class:`BatchPreprocess`.

    Raises:
        ConfigError: unknown interpolation or inconsistent sizes in the preset.
    """
    return PilResizeCrop(spec)


def resize_like_pil(
    x: torch.Tensor, size: int, interpolation: v2.InterpolationMode, native: bool | None = None
) -> torch.Tensor:
    """Resize a uint8 batch ``(B, C, H, W)`` so its shorter side is ``size``, reproducing Pillow.

    Args:
        x: uint8 batch on any device.
        size: target length of the shorter side.
        interpolation: bicubic or bilinear.
        native: see :func:`resize_uint8`.

    Returns:
        uint8 batch on the same device.
    """
    height, width = x.shape[-2:]
    return resize_uint8(x, resized_size(height, width, size), interpolation, native)


def resize_uint8(
    x: torch.Tensor, size: tuple[int, int], interpolation: v2.InterpolationMode, native: bool | None = None
) -> torch.Tensor:
    """Resize a uint8 batch ``(B, C, H, W)`` to ``size`` = (height, width) as Pillow does.

    Args:
        x: uint8 batch on any device.
        size: output (height, width).
        interpolation: bicubic or bilinear.
        native: use torchvision's uint8 kernel (CPU only; Pillow's own algorithm). ``None``: on CPU only.
            Otherwise two float32 passes (width, then height, as Pillow) rounded and clamped to 0..255
            after each pass: Pillow keeps a uint8 image between its passes, and that rounding and clamping
            (of bicubic overshoot) is most of the gap between a one-pass float resize and Pillow.

    Returns:
        uint8 batch on the same device.
    """
    height, width = x.shape[-2:]
    new_h, new_w = size
    if (new_h, new_w) == (height, width):
        return x
    if native if native is not None else x.device.type == "cpu":
        return F.resize(x, [new_h, new_w], interpolation=interpolation, antialias=True)
    # Contiguous first: a channels_last batch (a permuted NHWC array) makes the antialias kernel copy its input
    # and compute each pass into a temporary; NCHW costs one uint8 copy instead of two float ones per pass.
    y = x.contiguous().float()
    for out in ([height, new_w], [new_h, new_w]):
        if list(y.shape[-2:]) != out:
            y = nnf.interpolate(y, size=out, mode=interpolation.value, align_corners=False, antialias=True)
            y = y.round_().clamp_(0, 255)
    return y.to(torch.uint8)


class BatchPreprocess(nn.Module):
    """The eval transform on uint8 batches already on the device: ``(B, 3, H, W)`` -> float32 ``(B, 3, crop, crop)``.

    Input either raw images (resized so the shorter side is ``spec.resize``, then center-cropped, batched)
    or images already cropped by :func:`pil_resize_crop` (only converted and normalized).

    Args:
        spec: the preset.
        native_resize: ``None`` (default): :func:`featcache.resample.resample`, Pillow's pixels; ``True``:
            torchvision's uint8 kernel (CPU); ``False``: two float32 passes (:func:`resize_like_pil`).
    """

    def __init__(self, spec: TransformSpec, native_resize: bool | None = None):
        super().__init__()
        self.interpolation = _check(spec)
        self.spec = spec
        self.native_resize = native_resize
        # (device, fused) -> (mean, std) or (scale, shift), made once: a tensor built from a list on a GPU is a pageable
        # host-to-device copy that waits for the device, so building it per batch stalls the producer thread.
        self._constants: dict[tuple[torch.device, bool], tuple[torch.Tensor, torch.Tensor]] = {}

    def resize_crop(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` -> uint8 ``(B, 3, crop, crop)``: Resize(shorter side) then CenterCrop."""
        s = self.spec
        if self.native_resize is None:
            crop = eval_crop(x.shape[-2], x.shape[-1], s.resize, s.crop, s.interpolation)
            return resample(x, [[crop]] * len(x), s.crop)[:, 0]
        x = resize_like_pil(x, s.resize, self.interpolation, self.native_resize)
        return F.center_crop(x, [s.crop, s.crop])

    def normalize(self, x: torch.Tensor, fused: bool | None = None) -> torch.Tensor:
        """uint8 -> float32 in [0, 1] -> (x - mean) / std.

        Args:
            x: uint8 ``(B, 3, H, W)`` batch.
            fused: one multiply-add straight from uint8, ``x * (1 / (255 std)) - mean / std``, written
                channels_last (the layout the CUDA forward pass takes). Within 1e-6 of the unfused result, not
                bit-equal to it. ``None``: fused on CUDA only, where the pipeline's separate passes over
                150-200 MB batches cost a few percent of a forward pass. Unfused it is exactly ToDtype(scale=True)
                + Normalize, so CPU stores match the PIL reference bit for bit.

        Returns:
            float32 ``(B, 3, H, W)`` on the device of ``x``.
        """
        if fused if fused is not None else x.device.type == "cuda":
            scale, shift = self._constant(x.device, fused=True)
            out = torch.empty(x.shape, dtype=torch.float32, device=x.device, memory_format=torch.channels_last)
            return torch.addcmul(shift, x, scale, out=out)
        mean, std = self._constant(x.device, fused=False)
        return F.to_dtype(x, torch.float32, scale=True).sub_(mean).div_(std)

    def _constant(self, device: torch.device, fused: bool) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, fused)
        if key not in self._constants:
            mean = torch.tensor(self.spec.mean, dtype=torch.float32).view(-1, 1, 1)
            std = torch.tensor(self.spec.std, dtype=torch.float32).view(-1, 1, 1)
            pair = (1 / (255 * std), -mean / std) if fused else (mean, std)
            # pinned on CUDA: even the first batch's copy is queued, not waited for
            cuda = device.type == "cuda"
            self._constants[key] = tuple(
                t.pin_memory().to(device, non_blocking=True) if cuda else t.to(device) for t in pair
            )
        return self._constants[key]

    def forward(self, x: torch.Tensor, cropped: bool | None = None) -> torch.Tensor:
        """Preprocess a uint8 batch.

        Args:
            x: uint8 ``(B, 3, H, W)`` on any device.
            cropped: True if ``x`` is already resized and cropped (only normalize). ``None`` infers it from
                the size: ``H == W == crop`` means cropped, unless the preset would still change such an
                image (resize != crop), where the size alone cannot tell and the caller must say.

        Returns:
            float32 ``(B, 3, crop, crop)`` on the device of ``x``.

        Raises:
            ConfigError: ``x`` is not a uint8 ``(B, 3, H, W)`` batch, or ``cropped`` is needed and missing.
        """
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(
                f"BatchPreprocess expects a uint8 (B, 3, H, W) batch, got {x.dtype} {tuple(x.shape)}; "
                "permute HWC arrays with .permute(0, 3, 1, 2)"
            )
        crop = self.spec.crop
        is_crop_sized = x.shape[-2] == crop and x.shape[-1] == crop
        if cropped is None:
            if is_crop_sized and self.spec.resize != crop:
                raise ConfigError(
                    f"a {crop}x{crop} batch is ambiguous for preset '{self.spec.name}' (resize {self.spec.resize}, "
                    f"crop {crop}): pass cropped=True if it came from pil_resize_crop, else cropped=False"
                )
            cropped = is_crop_sized
        if cropped and not is_crop_sized:
            raise ConfigError(f"cropped=True but the batch is {tuple(x.shape[-2:])}, not ({crop}, {crop})")
        return self.normalize(x if cropped else self.resize_crop(x))

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"preset={s.name!r}, resize={s.resize}, crop={s.crop}, interpolation={s.interpolation}, "
            f"mean={s.mean}, std={s.std}"
        )
