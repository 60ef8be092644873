"""Image files read by threads of the extracting process, a batch at a time, for the ``device`` backend.

A JPEG that the device decodes needs only its bytes, and reading them is a system call that releases the GIL: so
threads of this process read them, and the bytes never cross between processes. (DataLoader worker processes
pickle what they return through a pipe: on the 2-core CPU, 2 worker processes handed over 4,000-5,000 files of
93 KB a second, the process reading the same files itself 19,000-24,000.) Each file's header is parsed where it
is read: a complete JPEG of 1 or 3 components goes to the device decoder with its size; any other file (PNG,
CMYK, truncated, not an image) is decoded by PIL in the reader thread (Pillow releases the GIL while it decodes).
So is a JPEG larger than Pillow's ``Image.MAX_IMAGE_PIXELS``: Pillow warns about it or refuses it as a decompression
bomb, as the ``pil`` backend does, where the device decoder would allocate whatever its header claims.
The augmented views' crop parameters are drawn there too, from the header's size, off the decoding thread.
"""

from __future__ import annotations

import concurrent.futures
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from .augment import CropParams, ViewMaker
from .datasets import FileDataset
from .errors import BadImageError

__all__ = ["Files", "jpeg_header", "read_batches"]


@dataclass
class Files:
    """One batch of image files, read: positions 0..n-1 are rows ``start``..``start + n - 1``."""

    start: int
    n: int
    jpegs: dict[int, torch.Tensor] = field(default_factory=dict)  # position -> encoded bytes, uint8 (len,)
    pixels: dict[int, np.ndarray] = field(default_factory=dict)  # position -> uint8 (H, W, 3), decoded by PIL
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)  # position -> (height, width)
    views: dict[int, list[CropParams]] = field(default_factory=dict)  # position -> its views' crops
    bad: list[BadImageError] = field(default_factory=list)  # unreadable files, with .row set


def jpeg_header(data: bytes | bytearray) -> tuple[int, int, int] | None:
    """(components, height, width) of a complete JPEG (components 1 grey, 3 YCbCr, 4 CMYK/YCCK), or None.

    Reads only marker headers, up to the start of the scan (SOS). A file without the end-of-image marker near
    its end counts as incomplete: GPU decoders may silently return a half-grey image for a truncated file. A
    file with a frame header but no scan counts as incomplete too: nvJPEG's batched decode crashed the process
    on such a header-only file (H200, torchvision 0.26), where the CPU decoder raises.
    """
    if data[:2] != b"\xff\xd8" or data.rfind(b"\xff\xd9", max(0, len(data) - 1024)) < 0:
        return None
    i, frame = 2, None
    while i + 3 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xDA:  # SOS: the entropy-coded scan follows; the headers were complete
            return frame
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and i + 9 < len(data):  # SOFn
            height, width = int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 7 : i + 9], "big")
            frame = (data[i + 9], height, width)
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def read_batches(
    dataset: FileDataset,
    index_batches: Sequence[list[int]],
    workers: int,
    maker: ViewMaker | None = None,
    views: Sequence[int] = (),
) -> Iterator[Files]:
    """The batches of ``index_batches`` (consecutive rows each), read by ``workers`` threads (0: here), in order.

    Up to ``workers`` batches are read ahead, each by one thread, file after file.
    """
    if workers <= 0:
        yield from (_read_batch(dataset, rows, maker, views) for rows in index_batches)
        return
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="featcache-read")
    pending: deque[concurrent.futures.Future] = deque()
    todo = iter(index_batches)
    try:
        while True:
            while len(pending) < workers and (rows := next(todo, None)) is not None:
                pending.append(pool.submit(_read_batch, dataset, rows, maker, views))
            if not pending:
                return
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _not_huge(height: int, width: int) -> bool:
    """Whether Pillow would open an image of this size without a decompression bomb warning (read at each call: a
    user may change the limit)."""
    limit = Image.MAX_IMAGE_PIXELS
    return limit is None or height * width <= limit


def _read_batch(dataset: FileDataset, rows: list[int], maker: ViewMaker | None, views: Sequence[int]) -> Files:
    files = Files(rows[0], len(rows))
    for k, i in enumerate(rows):
        try:
            data = dataset.read_bytes(i)
            header = jpeg_header(data)
            if header is not None and header[0] in (1, 3) and header[1] and header[2] and _not_huge(*header[1:]):
                # a writable buffer (torch refuses to wrap bytes without a warning): one copy, in this thread
                files.jpegs[k] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                files.sizes[k] = header[1:]
            else:  # not a plain JPEG: PIL decodes it here, full size; the device resizes it
                files.pixels[k] = np.array(dataset.load(i))  # writable: torch wraps it
                files.sizes[k] = files.pixels[k].shape[:2]
        except BadImageError as e:
            files.bad.append(e)
            continue
        if maker is not None and views:
            files.views[k] = [maker.params(dataset.ids[i], v, *files.sizes[k]) for v in views]
    return files
