"""Benchmark: the host side of JPEG extraction on the device backend, old against new, on the CPU.

What a GPU run of JPEG extraction waits for on the host, measured without a GPU on distinct JPEG photos of varied
sizes and both chroma layouts (:mod:`featcache.testing.jpegs`, written once into ``--data-cache``):

1. **reading**: files/s of getting each file's bytes (and its header) to the process that decodes, in batches of
   ``--batch`` with a trivial decode: (old) DataLoader worker processes returning ``(row, bytes, kind)`` per
   file through their pipes, as ``featcache.loaders`` did; (new) :func:`featcache.readers.read_batches`, threads of
   the process itself.
2. **resize calls**: the ATen operators (kernel launches on a GPU) one batch of decoded images costs for its
   evaluation crop, and with ``--views`` augmented views: (old) a faithful copy of the former per-size grouping
   (``_resize_crop_by_size`` with the float two-pass resize used on CUDA, and ``ViewMaker.on_device``'s per-crop-size
   groups); (new) :func:`featcache.resample.resample`, one call for everything. Host seconds are printed too, but
   on a CPU they time the arithmetic, not the launches.

    .venv/bin/python benchmarks/jpeg_host.py                         # 4,000 files, batch 256, 2 workers
    .venv/bin/python benchmarks/jpeg_host.py --files 16000 --workers 16
"""

from __future__ import annotations

import argparse
import collections
import os
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from featcache import __version__
from featcache.augment import ViewMaker
from featcache.config import Paths, load_registry
from featcache.data import build_dataset
from featcache.devices import device_name
from featcache.loaders import jpeg_components
from featcache.readers import read_batches
from featcache.resample import Crop, eval_crop, resample
from featcache.testing.jpegs import write_varied_jpegs
from featcache.transforms import INTERPOLATIONS, resize_like_pil, resize_uint8

REPO = Path(__file__).resolve().parents[1]


class _OldItems(Dataset):
    """The former device-backend worker item: a file's bytes, classified, sent back through the worker's pipe."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        data = self.ds.read_bytes(i)
        return i, data, "jpeg" if jpeg_components(data) in (1, 3) else "pil"


def _list(items):
    return items


def read_old(ds, n: int, batch: int, workers: int) -> tuple[float, float]:
    """Seconds to the first batch (the worker processes start) and for all of them."""
    loader = DataLoader(_OldItems(ds), batch_sampler=_batches(n, batch), num_workers=workers, collate_fn=_list,
                        prefetch_factor=4 if workers else None)  # fmt: skip
    t, first = time.perf_counter(), None
    for items in loader:
        [torch.frombuffer(bytearray(b), dtype=torch.uint8) for _, b, _ in items]  # the copy the decoder path made
        first = first or time.perf_counter() - t
    return first, time.perf_counter() - t


def read_new(ds, n: int, batch: int, workers: int) -> tuple[float, float]:
    t, first = time.perf_counter(), None
    for _ in read_batches(ds, _batches(n, batch), workers):
        first = first or time.perf_counter() - t
    return first, time.perf_counter() - t


def _batches(n: int, batch: int) -> list[list[int]]:
    return [list(range(s, min(s + batch, n))) for s in range(0, n, batch)]


class _Count(TorchDispatchMode):
    """Counts the ATen operators that compute (on a GPU each is a kernel launch at least); views, which only
    describe memory, and allocations without a fill are left out."""

    FREE = ("empty", "empty_strided", "lift_fresh", "set_", "_local_scalar_dense")

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket).removeprefix("aten.")
        if not func.is_view and name not in self.FREE:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def old_resize(images: list[torch.Tensor], spec, maker: ViewMaker | None, ids: list[str], views: list[int]):
    """The former device path, faithfully: images of one size resized together (two float passes, rounded, as on
    CUDA) then center-cropped; views grouped by crop size, each group resized in one call."""
    by_size: dict[tuple[int, ...], list[int]] = {}
    for k, img in enumerate(images):
        by_size.setdefault(tuple(img.shape), []).append(k)
    mode = INTERPOLATIONS[spec.interpolation]
    for keys in by_size.values():
        for g in range(0, len(keys), 64):
            x = torch.stack([images[k] for k in keys[g : g + 64]])
            F.center_crop(resize_like_pil(x, spec.resize, mode, native=False), [spec.crop, spec.crop])
    if not views:
        return
    groups: dict[tuple[int, int], list] = {}
    for img, sample_id in zip(images, ids, strict=True):
        for k in views:
            p = maker.params(sample_id, k, int(img.shape[-2]), int(img.shape[-1]))
            groups.setdefault((p.height, p.width), []).append(
                (img[:, p.top : p.top + p.height, p.left : p.left + p.width], p.flip)
            )
    size = (maker.spec.size, maker.spec.size)
    for members in groups.values():
        out = resize_uint8(torch.stack([c for c, _ in members]), size, maker.mode, native=False)
        [r.flip(-1) if flip else r for (_, flip), r in zip(members, out, strict=True)]


def new_resize(images: list[torch.Tensor], spec, maker: ViewMaker | None, ids: list[str], views: list[int]):
    crops = []
    for img, sample_id in zip(images, ids, strict=True):
        h, w = int(img.shape[-2]), int(img.shape[-1])
        row = [eval_crop(h, w, spec.resize, spec.crop, spec.interpolation)]
        for k in views:
            p = maker.params(sample_id, k, h, w)
            row.append(
                Crop(p.top, p.left, p.height, p.width, spec.crop, spec.crop, 0, 0, p.flip, maker.spec.interpolation)
            )
        crops.append(row)
    resample(images, crops, spec.crop)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=4000, help="JPEG photos (written once into --data-cache)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="processes (old) / threads (new)")
    p.add_argument("--views", type=int, default=8, help="augmented views in the resize-call count")
    p.add_argument("--repeat", type=int, default=2, help="reading measured this many times, the fastest kept")
    p.add_argument(
        "--data-cache",
        type=Path,
        default=Path(os.environ.get("FEATCACHE_BENCH_DATA", Path.home() / ".cache" / "featcache-bench")),
    )
    a = p.parse_args(argv)
    root = write_varied_jpegs(a.data_cache / f"jpeg-{a.files}", a.files).resolve()
    reg = load_registry(Paths(data=root.parent, cache=root / "unused", checkpoints=root, config=REPO / "configs"))
    ds_spec = reg.dataset(f"imagefolder:{root}")
    ds, spec = build_dataset(ds_spec, "val"), reg.transform(ds_spec, "224px")
    print(f"featcache {__version__} benchmark: the host side of JPEG extraction (device backend)")
    print(
        f"machine  {device_name(torch.device('cpu'))}, load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}"
    )
    print(f"data     {len(ds)} distinct JPEGs under {root} (sides 300-640 px, 4:2:0 and 4:4:4)\n")

    print(f"1. reading, batches of {a.batch}, {a.workers} workers, fastest of {a.repeat}:")
    old = min((read_old(ds, len(ds), a.batch, a.workers) for _ in range(a.repeat)), key=lambda t: t[1])
    new = min((read_new(ds, len(ds), a.batch, a.workers) for _ in range(a.repeat)), key=lambda t: t[1])
    print(f"   old  worker processes, bytes through pipes   {len(ds) / old[1]:10,.0f} files/s, first batch "
          f"after {old[0]:.2f} s")  # fmt: skip
    print(f"   new  reader threads of the process           {len(ds) / new[1]:10,.0f} files/s, first batch "
          f"after {new[0]:.2f} s   ({old[1] / new[1]:.2f}x)\n")  # fmt: skip

    n = min(a.batch, len(ds))
    data = [torch.frombuffer(bytearray(ds.read_bytes(i)), dtype=torch.uint8) for i in range(n)]
    # on the meta device: shapes only, every operator dispatched as on a GPU, no arithmetic to wait for
    images = [img.to("meta") for img in decode_jpeg(data, mode=ImageReadMode.RGB)]
    ids = ds.ids[:n]
    maker = ViewMaker(spec.augment, 0)
    sizes = len({tuple(img.shape) for img in images})
    print(f"2. resizing one batch of {n} decoded images ({sizes} sizes): ATen operators that compute (GPU kernel")
    print("   launches), the same calls on the meta device; host seconds of issuing them:")
    for views in ([], list(range(a.views))):
        label = f"evaluation crop + {len(views)} views" if views else "evaluation crop"
        for name, fn in (("old", old_resize), ("new", new_resize)):
            with _Count() as count:
                t = time.perf_counter()
                fn(images, spec, maker, ids, views)
                seconds = time.perf_counter() - t
            top = ", ".join(f"{op} {c}" for op, c in count.ops.most_common(3))
            print(f"   {name}  {label:<26} {sum(count.ops.values()):7,d} operators, {seconds:5.2f} s  ({top}, ...)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
