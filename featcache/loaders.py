"""Batches of preprocessed images, in dataset order, for the extractor.

Two backends, recorded in every store because their pixels can differ:

* ``pil``: the research pipeline. PIL decodes, resizes and crops each image in DataLoader worker
  processes; the uint8 crops are normalised on the device.
* ``device``: uint8 data goes to the device and is resized, cropped and normalised there, a whole batch at once
  (:mod:`featcache.resample`: Pillow's arithmetic as two matrix products, Pillow's pixels bit for bit in float64,
  for images of any sizes, the evaluation crop and every augmented view in one call). Array-backed sets (CIFAR,
  digits) are sliced straight from memory. Image files are read by threads of this process
  (:mod:`featcache.readers`: no worker processes, no copy between processes) and JPEGs are decoded by
  ``torchvision.io.decode_jpeg`` on the device (nvJPEG on CUDA); files it cannot take (PNG, CMYK JPEG, truncated
  or corrupt files) are decoded by PIL in the reader threads. nvJPEG's pixels are not libjpeg-turbo's (Pillow's)
  for chroma-subsampled files. Measured on an H200 (torch 2.11, torchvision 0.26, 2026-11-26): 4:4:4 and
  greyscale JPEGs decode bit-identically; 4:2:0 JPEGs differ by a mean of 1.1 uint8 levels at 500x375 and up to
  4.3 at 33x47 (the chroma upsampling filters differ). tests/test_cuda.py holds decoding to these bounds; the
  store records the backend, so such features are never mixed unnoticed.

A batch never spans two store chunks, so the same rows always form the same batches and a
resumed extraction reproduces an uninterrupted one bit for bit (on the CPU).

Overlap: on CUDA a background thread prepares batch i+1 (decode, resize) while the device runs
batch i; the forward passes run on a stream of their own (see ``Batch.ready``), so the device work of the
two threads is not serialised, and the reader threads read the files of the batches after it. On the CPU there is
no such thread: the forward pass already keeps every core busy, so a second thread only competes with it (two
OpenMP teams on the same cores); batches are prepared in the loop instead, and image files are still decoded ahead
by the DataLoader's worker processes (``pil``) or read ahead by the reader threads (``device``).
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

from .augment import CropParams, ViewMaker
from .config import TransformSpec
from .datasets import ArrayDataset, FileDataset, ImageDataset, to_rgb
from .errors import BadImageError
from .prefetch import prefetch
from .readers import Files, jpeg_header, read_batches
from .resample import Crop, eval_crop, resample
from .transforms import BatchPreprocess, pil_resize_crop
from .workers import worker_init

__all__ = ["Batch", "batches", "prefetch", "BACKENDS", "jpeg_components"]

BACKENDS = ("pil", "device")
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
    """Colour components of a JPEG (1 grey, 3 YCbCr, 4 CMYK/YCCK), or None if not a complete JPEG
    (:func:`featcache.readers.jpeg_header`)."""
    header = jpeg_header(data)
    return None if header is None else header[0]


def _split(ranges: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    return [list(range(s, min(s + batch_size, e))) for a, e in ranges for s in range(a, e, batch_size)]


class _Items(Dataset):
    """What a DataLoader worker does for one row of the ``pil`` backend: PIL crops, the evaluation crop then the
    asked-for views, stacked: uint8 ``(1 + len(views), 3, s, s)``.

    Workers hand back numpy arrays, never tensors: a tensor crosses to the main process through a shared-memory
    segment of its own, which capped a batch of 256 small items at about 2,000 items/s (measured on the 2-core
    CPU: numpy/bytes 18,000-28,000; on an H200 node JPEG extraction stalled there, at 3,100/s).
    """

    def __init__(self, dataset: ImageDataset, crop: Callable, maker: ViewMaker | None, views: Sequence[int]):
        self.dataset, self.crop, self.maker, self.views = dataset, crop, maker, list(views)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            img = self.dataset.load(i)
            crops = [self.crop(img)]
            if self.views:
                sample_id = self.dataset.ids[i]
                crops += [self.maker.pil(img, self.maker.params(sample_id, k, img.height, img.width))
                          for k in self.views]  # fmt: skip
            # C order: pil_to_tensor gives an HWC view, and a batch's memory layout must not depend on which
            # of its rows are zero images (oneDNN picks other kernels for channels-last input)
            return i, np.stack([np.ascontiguousarray(c.numpy()) for c in crops]), None
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
    ``workers``: DataLoader processes decoding and cropping files (``pil``), threads reading them (``device``).

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
                a, b = rows[0], rows[-1] + 1
                x = torch.from_numpy(images[a:b]).permute(0, 3, 1, 2)
                x = (x.pin_memory() if pin else x.contiguous()).to(device, non_blocking=pin)
                h, w = images.shape[1:3]
                params = {k: [maker.params(dataset.ids[r], v, h, w) for v in views] for k, r in enumerate(rows)}
                crops = _resized(x, dict.fromkeys(range(len(rows)), (h, w)), params, len(rows), pre, maker, device)
                yield Batch(a, pre.normalize(crops[0]), views=_views(crops, views, pre))

        yield from prefetch(_on_device(produce(), device), depth=4 if threaded else 0, join=False)
        return
    if backend == "device" and isinstance(dataset, FileDataset):

        def decoded() -> Iterator[tuple[Files, dict[int, torch.Tensor]]]:
            if device.type == "cuda":
                torch.cuda.set_device(device)  # this thread's own current device
            for files in read_batches(dataset, index_batches, workers, maker, views):
                yield files, _decode(files, dataset, device)

        def produce_files() -> Iterator[Batch]:
            # on CUDA the decoder runs on a thread of its own: decode_jpeg waits for nvJPEG (without the GIL), while
            # this thread queues the previous batch's resize and normalisation on the same stream
            for files, images in prefetch(decoded(), depth=2 if threaded else 0, join=False, name="featcache-decode"):
                for k, img in images.items():  # a decoder that gave another size than the header's: the views follow
                    if tuple(img.shape[-2:]) != tuple(files.sizes[k]):
                        files.sizes[k] = tuple(img.shape[-2:])
                        files.views[k] = [maker.params(dataset.ids[files.start + k], v, *files.sizes[k]) for v in views]
                views_of = {k: files.views.get(k, []) for k in images}
                crops = _resized(images, files.sizes, views_of, files.n, pre, maker, device)
                yield Batch(files.start, pre.normalize(crops[0]), files.bad, views=_views(crops, views, pre))

        yield from prefetch(_on_device(produce_files(), device), depth=3 if threaded else 0, join=False)
        return
    # pil, or a dataset with no encoded files to hand to a device decoder: PIL crops in worker processes
    if isinstance(dataset, ArrayDataset) and device.type == "cpu":
        # images already in memory, cheap PIL resizes: worker processes would only compete with the forward pass
        # for the cores (extract_throughput on the 2-core CPU, 5 checkpoints at 32 px: 1.12x five forward passes
        # with 2 workers, 0.95-0.99x without)
        workers = 0
    loader = DataLoader(
        _Items(dataset, pil_resize_crop(spec), maker, views),
        batch_sampler=index_batches,
        num_workers=workers,
        collate_fn=_collate,
        worker_init_fn=worker_init() if workers else None,  # workers die with this process, even on SIGKILL
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    zeros = np.zeros((1 + len(views), 3, spec.crop, spec.crop), dtype=np.uint8)

    def produce_crops() -> Iterator[Batch]:
        for items in loader:
            bad = [BadImageError(*why, row=i) for i, x, why in items if x is None]
            # (B, 1 + views, 3, s, s) -> the evaluation view and each augmented one
            x = torch.from_numpy(np.ascontiguousarray(np.stack([zeros if t is None else t for _, t, _ in items])))
            x = (x.pin_memory() if pin else x).to(device, non_blocking=pin)
            made = {k: pre(x[:, 1 + n], cropped=True) for n, k in enumerate(views)}
            yield Batch(items[0][0], pre(x[:, 0], cropped=True), bad, views=made)

    yield from prefetch(_on_device(produce_crops(), device), depth=3 if threaded else 0, join=False)


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


def _decode(files: Files, dataset: FileDataset, device: torch.device) -> dict[int, torch.Tensor]:
    """The batch's images, uint8 ``(3, H, W)`` on the device, by position; undecodable ones added to ``files.bad``.

    The JPEGs are decoded together on the device. One undecodable file fails a batched ``decode_jpeg`` call; then
    each file is decoded alone on the device and only those that still fail go to PIL, so a file's pixels never
    depend on its batch neighbours. Out-of-memory and accelerator errors are raised, not taken for a bad file.
    """
    images: dict[int, torch.Tensor] = {}
    keys = list(files.jpegs)
    if keys:
        try:
            images.update(zip(keys, _decode_jpegs([files.jpegs[k] for k in keys], device), strict=True))
        except _DEVICE_ERRORS:
            raise
        except RuntimeError:
            for k in keys:
                try:
                    images[k] = _decode_jpegs([files.jpegs[k]], device)[0]
                except _DEVICE_ERRORS:
                    raise
                except RuntimeError:
                    row = files.start + k
                    try:
                        with Image.open(io.BytesIO(files.jpegs[k].numpy().tobytes())) as im:
                            im.load()
                            images[k] = _to_device(torch.from_numpy(np.array(to_rgb(im))).permute(2, 0, 1), device)
                    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                        files.bad.append(BadImageError(str(dataset.paths[row]), f"{type(e).__name__}: {e}", row=row))
    for k, pixels in files.pixels.items():
        images[k] = _to_device(torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1), device)
    return images


def _decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    _quiet_decode_deprecation()
    return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def _resized(
    images: torch.Tensor | dict[int, torch.Tensor],
    sizes: dict[int, tuple[int, int]],
    params: dict[int, list[CropParams]],
    n: int,
    pre: BatchPreprocess,
    maker: ViewMaker | None,
    device: torch.device,
) -> list[torch.Tensor]:
    """The evaluation crop and the views of a batch's images, uint8 ``(n, 3, s, s)`` each, in that order; the
    positions missing from ``images`` (undecodable files) are zero images.

    ``images``: a ``(n, 3, H, W)`` batch, or the decoded images by position; ``params``: each position's views.
    """
    spec = pre.spec
    good = list(range(n)) if isinstance(images, torch.Tensor) else sorted(images)
    n_views = max((len(v) for v in params.values()), default=0)
    batch = images if isinstance(images, torch.Tensor) else [images[k] for k in good]
    crops = [[eval_crop(*sizes[k], spec.resize, spec.crop, spec.interpolation)] for k in good]
    sets = []  # (output size, crops of each image)
    if n_views:
        size, mode = maker.spec.size, maker.spec.interpolation
        view_crops = [[Crop(p.top, p.left, p.height, p.width, size, size, 0, 0, p.flip, mode) for p in params[k]]
                      for k in good]  # fmt: skip
        if size == spec.crop:  # one call for the evaluation crop and the views
            crops = [c + v for c, v in zip(crops, view_crops, strict=True)]
        else:
            sets.append((size, view_crops))
    sets.insert(0, (spec.crop, crops))
    out = []
    for size, crop_sets in sets:
        made = resample(batch, crop_sets, size) if good else None
        if len(good) < n:  # undecodable files: zero images in their rows
            full = torch.zeros(n, len(crop_sets[0]) if good else 1 + n_views, 3, size, size, dtype=torch.uint8,
                               device=device)  # fmt: skip
            if good:
                full.index_copy_(0, _to_device(torch.tensor(good), device), made)
            made = full
        out += [c.contiguous() for c in made.unbind(1)]  # one layout, whichever rows are zero images
    return out


def _views(crops: list[torch.Tensor], views: Sequence[int], pre: BatchPreprocess) -> dict[int, torch.Tensor]:
    """Each asked-for view of a batch (``crops[1:]``), normalised: ``{view: float32 (n, 3, s, s)}``."""
    return {k: pre.normalize(c) for k, c in zip(views, crops[1:], strict=True)}
