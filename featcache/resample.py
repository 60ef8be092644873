"""Pillow's resize as two batched matrix products: crops, resizes and flips of images of any sizes at once.

Pillow resizes an 8-bit image in two passes, horizontal then vertical (from Pillow 13, vertical first when the
height shrinks much more than the width: :func:`vertical_first`). Each output pixel of a pass is a weighted sum of
input pixels, with integer coefficients of 22 fractional bits, rounded half up and clipped to 0..255 (``Resample.c``:
``precompute_coeffs``, ``normalize_coeffs_8bpc``, ``clip8``). A pass is therefore a product
with a coefficient matrix (outputs x inputs) that is zero away from each output's taps; a crop is which columns
the taps start at, a center crop of the resized image is which outputs are computed, a flip reverses them. So the
evaluation crop and every augmented view of a whole batch of images, whatever their sizes, are two matrix
products over the batch padded to its largest image (zero coefficients on the padding), a few kernel calls in
all, where resizing each image alone costs about ten calls an image.

Exact: in float64 the products of integer coefficients and 8-bit pixels are exact, so the result is Pillow's bit
for bit (tests/test_resample.py checks it against Pillow for both filters, odd sizes, crops and flips). In
float32 (GPUs whose float64 is slow) the sums carry rounding errors near 1e-5 of a level, so a pixel whose exact
value sits on a rounding boundary may land one level off: about one pixel in 10^5 for bicubic downscales, up to
one in 10^3 for bilinear (whose coefficients often sum to exact halves).

The coefficients are computed on the device, in float64, in Pillow's order of operations (each output's taps
summed one after another): computing them per image on the host would cost more than the products.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import PIL
import torch

__all__ = ["PRECISION_BITS", "Crop", "coefficients", "eval_crop", "full_fp64", "resample", "taps", "vertical_first"]

PRECISION_BITS = 22  # Pillow's fixed point for 8-bit images: 32 - 8 - 2
_PILLOW_MAJOR = int(PIL.__version__.split(".")[0])  # the pass order changed in Pillow 13
_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}
# Bytes of one group's padded input and first-pass output: larger batches are cut into groups of similar sizes (a
# batch of 256 photos of up to 640 px makes 3 groups for the evaluation crop, 7 with 8 views, in float64)
GROUP_BYTES = 2 * 2**30


@dataclass(frozen=True)
class Crop:
    """One output image: the box (top, left, height, width) of the input, resized to (out_h, out_w), of which the
    rows from ``row`` and columns from ``col`` are kept (``size`` x ``size``), flipped left-right if ``flip``.

    The evaluation transform is the whole image resized, then the center crop (:func:`eval_crop`); a training view
    is a box resized straight to the output size (``row = col = 0``).
    """

    top: int
    left: int
    height: int
    width: int
    out_h: int
    out_w: int
    row: int = 0
    col: int = 0
    flip: bool = False
    mode: str = "bicubic"


def eval_crop(height: int, width: int, resize: int, crop: int, mode: str) -> Crop:
    """Resize(``resize``, shorter side) then CenterCrop(``crop``) of a ``height`` x ``width`` image, with
    torchvision's sizes and offsets: the longer side ``int(resize * long / short)``, the offsets
    ``int(round((n - crop) / 2))`` (Python's rounding, half to even)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(resize * long / short)
    out_h, out_w = (new_long, resize) if width <= height else (resize, new_long)
    row, col = int(round((out_h - crop) / 2.0)), int(round((out_w - crop) / 2.0))
    return Crop(0, 0, height, width, out_h, out_w, row, col, False, mode)


def _kernel(bicubic: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Pillow's ``bicubic_filter`` (a = -0.5) where ``bicubic``, else its ``bilinear_filter``, in its order of
    operations."""
    x = x.abs()
    zero = torch.zeros_like(x)
    a = -0.5
    cubic = torch.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1, (((x - 5) * x + 8) * x - 4) * a)
    cubic = torch.where(x < 2.0, cubic, zero)
    linear = torch.where(x < 1.0, 1.0 - x, zero)
    return torch.where(bicubic[:, None, None], cubic, linear)


def taps(in_size: torch.Tensor, out_size: torch.Tensor, bicubic: torch.Tensor) -> int:
    """The most taps any of these resizes needs (Pillow's ``ksize``); computed on the host, so that building the
    coefficients on a GPU never waits for it."""
    if not len(in_size):
        return 1
    scale = torch.clamp(in_size.double() / out_size.double(), min=1.0)
    support = torch.where(bicubic, _SUPPORT["bicubic"], _SUPPORT["bilinear"]) * scale
    return int(torch.ceil(support).max()) * 2 + 1


def coefficients(
    in_size: torch.Tensor,
    out_size: torch.Tensor,
    outputs: torch.Tensor,
    offset: torch.Tensor,
    width: int,
    bicubic: torch.Tensor,
    n_taps: int,
) -> torch.Tensor:
    """Pillow's integer resampling coefficients of one axis, as dense matrices.

    Args:
        in_size: (N,) int64, the length of each input (the box: Pillow resizes the crop).
        out_size: (N,) int64, the length it is resized to.
        outputs: (N, M) int64, the output positions to compute (a center crop's, or reversed for a flip).
        offset: (N,) int64, where input position 0 of each box sits in the padded image.
        width: the padded input length (columns of the result).
        bicubic: (N,) bool, bicubic (else bilinear) per matrix.
        n_taps: at least :func:`taps` of these sizes.

    Returns:
        float64 (N, M, width): row m of matrix n holds output ``outputs[n, m]``'s integer coefficients (Pillow's
        ``kk``, in units of 2**-22) at the input positions they weigh.
    """
    f64 = {"dtype": torch.float64, "device": outputs.device}
    in_f, out_f = in_size.to(**f64), out_size.to(**f64)
    scale = in_f / out_f  # (double)(in1 - in0) / outSize, the box starting at 0
    filterscale = torch.clamp(scale, min=1.0)
    support = torch.where(bicubic, _SUPPORT["bicubic"], _SUPPORT["bilinear"]).to(**f64) * filterscale
    center = (outputs.to(**f64) + 0.5) * scale[:, None]
    xmin = torch.clamp(torch.trunc(center - support[:, None] + 0.5), min=0)  # (int)(... + 0.5), then >= 0
    xmax = torch.minimum(torch.trunc(center + support[:, None] + 0.5), in_f[:, None]) - xmin
    t = torch.arange(n_taps, **f64)
    inside = t < xmax[..., None]  # (N, M, K)
    w = _kernel(bicubic, (t + xmin[..., None] - center[..., None] + 0.5) * (1.0 / filterscale)[:, None, None])
    w = torch.where(inside, w, torch.zeros_like(w))
    total = torch.zeros_like(center)
    for k in range(n_taps):  # summed tap after tap, as Pillow does (a pairwise sum can differ in the last bit)
        total = total + w[..., k]
    w = torch.where(total[..., None] != 0, w / total[..., None], w)
    scaled = w * (1 << PRECISION_BITS)
    kk = torch.where(w < 0, torch.trunc(-0.5 + scaled), torch.trunc(0.5 + scaled))
    cols = (xmin[..., None] + t).to(torch.int64) + offset[:, None, None]
    dense = torch.zeros(*outputs.shape, width + 1, **f64)  # a spare last column takes the unused taps
    dense.scatter_(-1, torch.where(inside, cols, torch.full_like(cols, width)), torch.where(inside, kk, 0.0))
    return dense[..., :width]


def full_fp64(device: torch.device) -> bool:
    """Whether ``device`` computes float64 products at full rate: the CPU, and CUDA GPUs of compute capability
    N.0 (P100, V100, A100, H100/H200, B200); consumer GPUs run float64 at 1/32-1/64 of float32."""
    if device.type != "cuda":
        return True
    major, minor = torch.cuda.get_device_capability(device)
    return minor == 0 and major >= 6


def vertical_first(crop: Crop) -> bool:
    """Whether Pillow runs the vertical pass first for this resize: from Pillow 13 on, when the height shrinks by
    more than twice what the width does (``ImagingResampleInner``); before, never. The order changes the result:
    Pillow rounds to 8 bits between the passes."""
    if _PILLOW_MAJOR < 13:
        return False
    shrink = crop.height - crop.out_h
    return shrink > 0 and shrink > (crop.width - crop.out_w) * 2


def resample(
    images: torch.Tensor | Sequence[torch.Tensor], crops: Sequence[Sequence[Crop]], size: int, exact: bool | None = None
) -> torch.Tensor:
    """Every crop of every image, resized as Pillow resizes it: uint8 ``(B, P, 3, size, size)``.

    Args:
        images: B uint8 ``(3, H, W)`` tensors on one device, of any sizes, or one ``(B, 3, H, W)`` batch.
        crops: for each image, P :class:`Crop` s (the same P for all) of ``size`` x ``size`` outputs.
        size: the side of every output.
        exact: float64 (Pillow bit for bit) or float32 (one level off at up to one pixel in 10^3); default
            :func:`full_fp64` of the device.

    Returns:
        uint8 ``(B, P, 3, size, size)`` on the images' device.

    Raises:
        ValueError: no images, or not P crops for every image.
    """
    if not len(images) or len(crops) != len(images) or len({len(c) for c in crops}) != 1 or not crops[0]:
        raise ValueError("resample needs images and the same number (>= 1) of crops for each")
    device = images[0].device
    exact = full_fp64(device) if exact is None else exact
    n_out = len(crops[0])
    firsts = [[vertical_first(c) for c in row] for row in crops]
    shapes = [tuple(int(n) for n in img.shape[-2:]) for img in images]
    # similar sizes and pass orders together: less padding, fewer empty slots
    order = sorted(range(len(images)), key=lambda b: (sum(firsts[b]), *shapes[b]))
    groups = _groups(order, shapes, n_out * size, 8 if exact else 4)
    if len(groups) == 1 and isinstance(images, torch.Tensor):  # a batch of one size: no copy, no reordering
        return _group(images, crops, firsts, size, exact)
    out = torch.empty(len(images), n_out, 3, size, size, dtype=torch.uint8, device=device)
    for group in groups:
        height, width = max(shapes[b][0] for b in group), max(shapes[b][1] for b in group)
        x = torch.zeros(len(group), 3, height, width, dtype=torch.uint8, device=device)
        for k, b in enumerate(group):  # one copy an image: the decoder hands each back in its own buffer
            x[k, :, : shapes[b][0], : shapes[b][1]].copy_(images[b])
        part = _group(x, [crops[b] for b in group], [firsts[b] for b in group], size, exact)
        out.index_copy_(0, _to(torch.tensor(group), device), part)
    return out


def _groups(order: list[int], shapes: list[tuple[int, int]], out_cols: int, itemsize: int) -> list[list[int]]:
    """Images in ``order``, cut so that a group's padded input (twice: transposed too) and first-pass output stay
    under GROUP_BYTES."""
    groups, group, height, width = [], [], 0, 0
    for b in order:
        h, w = max(height, shapes[b][0]), max(width, shapes[b][1])
        if group and (len(group) + 1) * 3 * (2 * h * w + max(h, w) * out_cols) * itemsize > GROUP_BYTES:
            groups.append(group)
            group, (h, w) = [], shapes[b]
        group.append(b)
        height, width = h, w
    return groups + [group]


def _group(x: torch.Tensor, crops: list, firsts: list[list[bool]], size: int, exact: bool) -> torch.Tensor:
    """One group, uint8 (b, 3, H, W) padded: its crops in Pillow's horizontal-first order, then those in its
    vertical-first order."""
    device = x.device
    b, p = len(x), len(crops[0])
    out = torch.empty(b * p, 3, size, size, dtype=torch.uint8, device=device)
    for vfirst in (False, True):
        slots = [[k for k in range(p) if firsts[i][k] == vfirst] for i in range(b)]
        n_slots = max(len(s) for s in slots)
        if not n_slots:
            continue
        # a vertical-first resize is a horizontal-first one of the transposed image, with the roles of the two
        # coefficient matrices swapped and the result transposed back
        z = _two_passes(x.transpose(2, 3) if vfirst else x, [[crops[i][k] for k in s] for i, s in enumerate(slots)],
                        n_slots, size, exact, vfirst)  # fmt: skip
        if n_slots == p and all(len(s) == p for s in slots):  # every crop in this order: nothing to scatter
            return z
        src = [i * n_slots + j for i, s in enumerate(slots) for j in range(len(s))]
        dst = [i * p + k for i, s in enumerate(slots) for k in s]
        index = _to(torch.tensor([src, dst]), device)
        out.index_copy_(0, index[1], z.flatten(0, 1).index_select(0, index[0]))
    return out.view(b, p, 3, size, size)


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device``; through pinned memory on CUDA, so the copy does not wait for the GPU."""
    return (t.pin_memory() if device.type == "cuda" else t).to(device, non_blocking=True)


def _two_passes(x: torch.Tensor, crops: list[list[Crop]], n_slots: int, size: int, exact: bool, transposed: bool):
    """Pillow's two passes, first along the last axis of ``x`` (b, 3, rows, cols), for up to ``n_slots`` crops an
    image (the missing ones get zero coefficients): (b, n_slots, 3, size, size), transposed back if ``x`` is."""
    device = x.device
    dtype = torch.float64 if exact else torch.float32
    b, rows_in, cols_in = x.shape[0], x.shape[2], x.shape[3]
    blank = Crop(0, 0, 1, 1, 1, 1)
    flat = [row[j] if j < len(row) else blank for row in crops for j in range(n_slots)]
    # described on the host: sizes and the taps they need, then one copy to the device
    fields = [
        [c.height, c.width, c.out_h, c.out_w, c.row, c.col, c.top, c.left, c.flip, c.mode == "bicubic"] for c in flat
    ]
    spec = torch.tensor(fields, dtype=torch.int64)
    valid = torch.tensor([j < len(row) for row in crops for j in range(n_slots)])
    cubic = spec[:, 9].bool()
    # horizontal: (in, out, outputs start, offset) = (width, out_w, col, left); vertical: (height, out_h, row, top)
    horizontal, vertical = (1, 3, 5, 7), (0, 2, 4, 6)
    first, second = (vertical, horizontal) if transposed else (horizontal, vertical)
    n_first = taps(spec[:, first[0]], spec[:, first[1]], cubic)
    n_second = taps(spec[:, second[0]], spec[:, second[1]], cubic)
    spec, valid = _to(spec, device), _to(valid, device)
    cubic, flip, steps = spec[:, 9].bool(), spec[:, 8:9].bool(), torch.arange(size, device=device)

    def matrices(axis: tuple[int, int, int, int], length: int, n_taps: int) -> torch.Tensor:
        start = spec[:, axis[2] : axis[2] + 1]
        outputs = start + steps
        if axis == horizontal:  # a flip reverses the columns
            outputs = torch.where(flip, start + size - 1 - steps, outputs)
        m = coefficients(spec[:, axis[0]], spec[:, axis[1]], outputs, spec[:, axis[3]], length, cubic, n_taps)
        return m * valid[:, None, None]

    along = matrices(first, cols_in, n_first)  # (b * n_slots, size, cols_in)
    across = matrices(second, rows_in, n_second)  # (b * n_slots, size, rows_in)
    unit = 2.0**-PRECISION_BITS
    if not exact:  # coefficients scaled to 1 (exact in float32: below 2^24); sums off by about 1e-5 of a level
        along, across = along.mul_(unit).to(dtype), across.mul_(unit).to(dtype)

    def rounded(s: torch.Tensor) -> torch.Tensor:  # Pillow's clip8: floor((sum + 2^21) / 2^22) into 0..255
        s = s.add_(0.5 / unit).mul_(unit) if exact else s.add_(0.5)
        return s.floor_().clamp_(0, 255)

    # first pass, every slot's columns at once: (b, 3 * rows, cols) @ (b, cols, n_slots * size)
    m = n_slots * size
    y = rounded(torch.matmul(x.to(dtype).reshape(b, 3 * rows_in, cols_in), along.view(b, m, cols_in).transpose(1, 2)))
    # second pass per slot: (b, n, size, rows) @ (b, n, rows, 3 * size), channels next to the columns, so no
    # broadcast over them (that would copy each slot's matrix three times)
    y = y.view(b, 3, rows_in, n_slots, size).permute(0, 3, 2, 1, 4).reshape(b, n_slots, rows_in, 3 * size)
    z = rounded(torch.matmul(across.view(b, n_slots, size, rows_in), y)).view(b, n_slots, size, 3, size)
    z = z.permute(0, 1, 3, 2, 4)  # (b, n, 3, second-pass outputs, first-pass outputs)
    return (z.transpose(3, 4) if transposed else z).to(torch.uint8, memory_format=torch.contiguous_format)
