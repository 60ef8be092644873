"""Batches of preprocessed images, in dataset order, for the extractor.

Two backends, recorded in every store because their pixels differ slightly:

* ``pil``: the research pipeline. PIL decodes, resizes and crops each image in DataLoader worker
  processes; the uint8 crops are normalised on the device.
* ``device``: uint8 data goes to the device and is resized, cropped and normalised there, batched.
  Array-backed sets (CIFAR, digits) are sliced straight from memory, no per-image work at all.
  JPEG files are decoded by ``torchvision.io.decode_jpeg`` on the device (nvJPEG on CUDA); files
  it cannot take (PNG, CMYK JPEG, truncated or corrupt files) fall back to PIL, per file.
  nvJPEG's pixels are not libjpeg-turbo's (Pillow's) for chroma-subsampled files. Measured on an H200
  (torch 2.11, torchvision 0.26, 2026-11-26): 4:4:4 and greyscale JPEGs decode bit-identically; 4:2:0
  JPEGs differ by a mean of 1.1 uint8 levels at 500x375 and up to 4.3 at 33x47 (the chroma upsampling
  filters differ), and after the resize and crop to 224 px by less than 2 levels. tests/test_cuda.py holds
  decoding to these bounds; the store records the backend, so such features are never mixed unnoticed.

A batch never spans two store chunks, so the same rows always form the same batches and a
resumed extraction reproduces an uninterrupted one bit for bit (on the CPU).

Overlap: on CUDA a background thread prepares batch i+1 (copy, decode, resize) while the device runs
batch i; the forward passes run on a stream of their own (see ``Batch.ready``), so the device work of the
two threads is not serialised. On the CPU there is no such thread: the forward pass already keeps every
core busy, so a second thread only competes with it (two OpenMP teams on the same cores); batches are
prepared in the loop instead, and image files are still decoded ahead by the DataLoader's worker processes.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .augment import ViewMaker
from .config import TransformSpec
from .datasets import ArrayDataset, FileDataset, ImageDataset, to_rgb
from .errors import BadImageError
from .prefetch import prefetch
from .transforms import BatchPreprocess, pil_resize_crop
from .workers import worker_init

__all__ = ["Batch", "batches", "prefetch", "BACKENDS", "jpeg_components"]

BACKENDS = ("pil", "device")
RESIZE_GROUP = 64  # images resized in one call on the device backend
# On CUDA, batches in flight ahead of the forward passes (prefetch depth: the batch being prepared counts). A failed
# extraction does not join the producer (join=False): it may be inside a DataLoader, and the batch is moot.
# Errors of the device itself, not of a file: a per-file retry and PIL cannot help, and they would hide it.
# (getattr: torch.AcceleratorError is missing from older releases than the one pinned.)
_DEVICE_ERRORS = tuple(getattr(torch, n) for n in ("OutOfMemoryError", "AcceleratorError") if hasattr(torch, n))

# torchvision 0.29 points to torchcodec for decoding; decode_jpeg works and is what we pin.
_DECODE_DEPRECATION = "The image decoding and encoding capabilities of TorchVision are deprecated"
_DECODE_MODULE = r"torchvision\.io\.image"


def _quiet_decode_deprecation() -> None:
    """Ignore torchvision's decode deprecation warning, and only it, from now on in the whole process.

    Not ``warnings.catch_warnings()`` around each call: that swaps the process-wide filter list in and out,
    which is not thread-safe, and decoding runs in the producer thread. Called per decode, not only at import:
    harnesses that restore the filter list (pytest does, around each test) drop the filter; then it is added
    again, once, to the front of the list.
    """
    for action, message, category, module, _ in warnings.filters:
        if action == "ignore" and category is DeprecationWarning and message is not None and module is not None:
            if message.pattern == _DECODE_DEPRECATION and module.pattern == _DECODE_MODULE:
                return
    warnings.filterwarnings("ignore", _DECODE_DEPRECATION, DeprecationWarning, _DECODE_MODULE)


_quiet_decode_deprecation()


@dataclass
class Batch:
    """Rows [start, start + len(x)) preprocessed, float32 (B, 3, crop, crop) on the device.

    ``views`` holds the augmented views asked for, each preprocessed like ``x`` (the evaluation view).
    """

    start: int
    x: torch.Tensor
    bad: list[BadImageError] = field(default_factory=list)  # undecodable images, with .row set
    views: dict[int, torch.Tensor] = field(default_factory=dict)
    # CUDA: recorded on the producer's stream once x is queued; the consumer's stream waits for it
    ready: torch.cuda.Event | None = None


def jpeg_components(data: bytes) -> int | None:
    """Colour components of a JPEG (1 grey, 3 YCbCr, 4 CMYK/YCCK), or None if not a complete JPEG.

    Reads only marker headers, up to the start of the scan (SOS). A file without the end-of-image marker near
    its end counts as incomplete: GPU decoders may silently return a half-grey image for a truncated file. A
    file with a frame header but no scan counts as incomplete too: nvJPEG's batched decode crashed the process
    on such a header-only file (H200, torchvision 0.26), where the CPU decoder raises.
    """
    if data[:2] != b"\xff\xd8" or data.rfind(b"\xff\xd9", max(0, len(data) - 1024)) < 0:
        return None
    i, components = 2, None
    while i + 3 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xDA:  # SOS: the entropy-coded scan follows; the headers were complete
            return components
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and i + 9 < len(data):  # SOFn
            components = data[i + 9]
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def _split(ranges: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    return [list(range(s, min(s + batch_size, e))) for a, e in ranges for s in range(a, e, batch_size)]


class _Items(Dataset):
    """What a DataLoader worker does for one row: PIL crops (``pil``) or encoded bytes (``device``).

    PIL crops are the evaluation crop then the asked-for views, stacked: uint8 ``(1 + len(views), 3, s, s)``.
    Workers hand back numpy arrays and bytes, never tensors: a tensor crosses to the main process through a
    shared-memory segment of its own, which capped a batch of 256 small items at about 2,000 items/s (measured
    on the 2-core CPU: numpy/bytes 18,000-28,000; on an H200 node JPEG extraction stalled there, at 3,100/s).
    """

    def __init__(self, dataset: ImageDataset, crop: Callable | None, maker: ViewMaker | None, views: Sequence[int]):
        self.dataset, self.crop, self.maker, self.views = dataset, crop, maker, list(views)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            if self.crop is not None:
                img = self.dataset.load(i)
                crops = [self.crop(img)]
                if self.views:
                    sample_id = self.dataset.ids[i]
                    crops += [self.maker.pil(img, self.maker.params(sample_id, k, img.height, img.width))
                              for k in self.views]  # fmt: skip
                # C order: pil_to_tensor gives an HWC view, and a batch's memory layout must not depend on which
                # of its rows are zero images (oneDNN picks other kernels for channels-last input)
                return i, np.stack([np.ascontiguousarray(c.numpy()) for c in crops]), ""
            data = self.dataset.read_bytes(i)
            if jpeg_components(data) in (1, 3):
                return i, data, "jpeg"
            # not a plain JPEG: PIL decodes it here, full size; the device resizes it
            return i, np.ascontiguousarray(np.array(self.dataset.load(i)).transpose(2, 0, 1)), "pil"
        except BadImageError as e:  # sent as plain data: see BadImageError
            return i, None, (e.path, e.reason)


def _collate(items: list) -> list:
    return items


def batches(
    dataset: ImageDataset,
    spec: TransformSpec,
    ranges: Sequence[tuple[int, int]],
    *,
    batch_size: int,
    device: torch.device,
    backend: str,
    workers: int = 0,
    maker: ViewMaker | None = None,
    views: Sequence[int] = (),
) -> Iterator[Batch]:
    """Yield preprocessed batches covering ``ranges`` (row intervals, each split into batches) in order.

    With ``maker``, each batch also carries augmented views ``views`` of its images (``Batch.views``).
    Undecodable images come back as zero images listed in ``Batch.bad``; the caller decides to fail or skip.

    On CUDA each batch is prepared in a background thread on that thread's current stream (the legacy default
    stream) and carries ``Batch.ready``, an event recorded after its last operation: a consumer on another
    stream must ``wait_event`` it and ``record_stream`` ``Batch.x`` before using it.
    """
    pre = BatchPreprocess(spec)
    index_batches = _split(ranges, batch_size)
    pin = device.type == "cuda"
    threaded = device.type == "cuda"  # see the module docstring: no producer thread on the CPU
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # the caller's; the thread's may differ
    views = list(views) if maker is not None else []
    if backend == "device" and isinstance(dataset, ArrayDataset):
        images = dataset.images

        def produce() -> Iterator[Batch]:
            for rows in index_batches:
                x = torch.from_numpy(images[rows[0] : rows[-1] + 1]).permute(0, 3, 1, 2)
                x = (x.pin_memory() if pin else x.contiguous()).to(device, non_blocking=pin)
                made = maker.on_device(list(x), dataset.ids[rows[0] : rows[-1] + 1], views) if views else {}
                yield Batch(rows[0], pre(x, cropped=False), views={k: pre(v, cropped=True) for k, v in made.items()})

        yield from prefetch(_on_device(produce(), device), depth=4 if threaded else 0, join=False)
        return
    crop = pil_resize_crop(spec) if backend == "pil" else None
    if backend == "device" and not isinstance(dataset, FileDataset):
        crop = pil_resize_crop(spec)  # no encoded bytes to hand to a device decoder
    if isinstance(dataset, ArrayDataset) and device.type == "cpu":
        # images already in memory, cheap PIL resizes: worker processes would only compete with the forward pass
        # for the cores (extract_throughput on the 2-core CPU, 5 checkpoints at 32 px: 1.12x five forward passes
        # with 2 workers, 0.95-0.99x without)
        workers = 0
    loader = DataLoader(
        _Items(dataset, crop, maker, views),
        batch_sampler=index_batches,
        num_workers=workers,
        collate_fn=_collate,
        worker_init_fn=worker_init() if workers else None,  # workers die with this process, even on SIGKILL
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    zero = torch.zeros(3, spec.crop, spec.crop, dtype=torch.uint8)
    zeros = np.zeros((1 + len(views), 3, spec.crop, spec.crop), dtype=np.uint8)

    def produce_files() -> Iterator[Batch]:
        blank = None  # zero image on the device, made once (in the producer thread, on its stream)
        for items in loader:
            bad = [BadImageError(*why, row=i) for i, x, why in items if x is None]
            if crop is not None:  # (B, 1 + views, 3, s, s) -> the evaluation view and each augmented one
                x = torch.from_numpy(np.ascontiguousarray(np.stack([zeros if t is None else t for _, t, _ in items])))
                x = (x.pin_memory() if pin else x).to(device, non_blocking=pin)
                made = {k: pre(x[:, 1 + n], cropped=True) for n, k in enumerate(views)}
                yield Batch(items[0][0], pre(x[:, 0], cropped=True), bad, views=made)
            else:
                blank = _to_device(zero, device) if blank is None else blank
                x, made = _decode_on_device(dataset, items, pre, device, blank, bad, maker, views)
                yield Batch(items[0][0], x, bad, views=made)

    yield from prefetch(_on_device(produce_files(), device), depth=3 if threaded else 0, join=False)


def _on_device(produced: Iterator[Batch], device: torch.device) -> Iterator[Batch]:
    """``produced`` with, on CUDA, the thread's device set and a ready event on each batch; unchanged elsewhere."""
    if device.type != "cuda":
        yield from produced
        return
    torch.cuda.set_device(device)  # runs in the producer thread: its current device is its own
    stream = torch.cuda.current_stream(device)
    for batch in produced:
        batch.ready = torch.cuda.Event()
        batch.ready.record(stream)
        yield batch


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``; on CUDA through pinned memory, so the copy does not wait for the device."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _decode_on_device(
    dataset: FileDataset,
    items: list,
    pre: BatchPreprocess,
    device: torch.device,
    blank: torch.Tensor,
    bad: list,
    maker: ViewMaker | None = None,
    views: Sequence[int] = (),
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Decode a batch's JPEGs together on the device, fall back per file, resize and crop, stack; and make the
    asked-for augmented views of the decoded images (a bad file's views are ``blank`` too).

    One undecodable file fails a batched ``decode_jpeg`` call; then each file is decoded alone on the device
    and only those that still fail go to PIL, so a file's pixels never depend on its batch neighbours.
    Files PIL cannot read either are ``blank`` (a uint8 ``(3, crop, crop)`` zero image on the device),
    listed in ``bad``. Out-of-memory and accelerator errors are raised, not taken for a bad file.
    """
    images: dict[int, torch.Tensor] = {}
    jpegs = [(k, torch.frombuffer(bytearray(t), dtype=torch.uint8)) for k, (_, t, kind) in enumerate(items)
             if kind == "jpeg"]  # fmt: skip
    if jpegs:
        try:
            images.update(zip((k for k, _ in jpegs), _decode_jpegs([t for _, t in jpegs], device), strict=True))
        except _DEVICE_ERRORS:
            raise
        except RuntimeError:
            for k, t in jpegs:
                try:
                    images[k] = _decode_jpegs([t], device)[0]
                except _DEVICE_ERRORS:
                    raise
                except RuntimeError:
                    try:
                        with Image.open(io.BytesIO(items[k][1])) as im:
                            im.load()
                            images[k] = _to_device(torch.from_numpy(np.array(to_rgb(im))).permute(2, 0, 1), device)
                    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                        row = items[k][0]
                        bad.append(BadImageError(str(dataset.paths[row]), f"{type(e).__name__}: {e}", row=row))
    for k, (_, t, kind) in enumerate(items):
        if kind == "pil":
            images[k] = _to_device(torch.from_numpy(t), device)
    crops = _resize_crop_by_size(images, pre)
    x = pre(torch.stack([crops.get(k, blank) for k in range(len(items))]), cropped=True)
    if not views:
        return x, {}
    good = sorted(images)
    made = maker.on_device([images[k] for k in good], [dataset.ids[items[k][0]] for k in good], views)
    out = {}
    for v, stack in made.items():
        full = blank.expand(len(items), -1, -1, -1).clone()
        full[good] = stack
        out[v] = pre(full, cropped=True)
    return x, out


def _decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    _quiet_decode_deprecation()
    return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def _resize_crop_by_size(images: dict[int, torch.Tensor], pre: BatchPreprocess) -> dict[int, torch.Tensor]:
    """Resize and crop uint8 ``(3, H, W)`` images, those of one size together (a few kernel calls, not one per image).

    Each image's result is the same as resizing it alone. Groups are cut at ``RESIZE_GROUP`` images to bound
    the float copies the CUDA resize makes.
    """
    by_size: dict[tuple[int, ...], list[int]] = {}
    for k, img in images.items():
        by_size.setdefault(tuple(img.shape), []).append(k)
    crops: dict[int, torch.Tensor] = {}
    for keys in by_size.values():
        for g in range(0, len(keys), RESIZE_GROUP):
            part = keys[g : g + RESIZE_GROUP]
            crops.update(zip(part, pre.resize_crop(torch.stack([images[k] for k in part])), strict=True))
    return crops
