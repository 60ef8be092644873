"""The ``device`` backend's file path: reader threads, header sizes, batched resizing, on the CPU.

decode_jpeg runs on the CPU too (libjpeg-turbo, as Pillow), and the batched resize is Pillow's arithmetic, so on
the CPU the device backend must give the research pipeline's pixels bit for bit: the evaluation crop and the views,
for JPEGs of varied sizes in both chroma layouts and for the files PIL decodes (grey, CMYK, PNG).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from data_factory import jpeg_bytes, smooth_images, write_truncated_jpeg
from PIL import Image

from featcache import loaders, readers
from featcache.augment import ViewMaker
from featcache.data import build_dataset
from featcache.loaders import batches
from featcache.readers import jpeg_header, read_batches
from featcache.testing.jpegs import write_varied_jpegs

CPU = torch.device("cpu")


@pytest.fixture
def photos(paths):
    """``imagefolder:photos``: 23 distinct JPEGs of varied sizes (4:2:0 and 4:4:4) and a grey, a CMYK, a PNG file."""
    root = write_varied_jpegs(paths.data / "photos", 23, sides=(24, 90), classes=3, processes=1)
    odd = root / "val" / "class00"
    img = Image.fromarray(smooth_images(np.random.default_rng(5), 1, 41, 67)[0])
    (odd / "z_grey.jpg").write_bytes(jpeg_bytes(img.convert("L")))
    (odd / "z_cmyk.jpg").write_bytes(jpeg_bytes(img.convert("CMYK")))
    img.save(odd / "z_png.png")
    return root


def _all(registry, backend, workers, views, batch_size=5):
    ds_spec = registry.dataset("imagefolder:photos")
    ds, spec = build_dataset(ds_spec, "val"), registry.transform(ds_spec, "224px")
    maker = ViewMaker(spec.augment, 7)
    got = list(batches(ds, spec, [(0, len(ds))], batch_size=batch_size, device=CPU, backend=backend,
                       workers=workers, maker=maker, views=views))  # fmt: skip
    return got, ds


@pytest.mark.parametrize("workers", [0, 3])
def test_device_backend_on_the_cpu_is_the_research_pipeline_pixel_for_pixel(registry, photos, workers):
    views = [0, 2]
    dev, ds = _all(registry, "device", workers, views)
    pil, _ = _all(registry, "pil", 0, views)
    assert [b.start for b in dev] == [b.start for b in pil] == list(range(0, len(ds), 5))
    assert torch.equal(torch.cat([b.x for b in dev]), torch.cat([b.x for b in pil]))
    for v in views:
        assert torch.equal(torch.cat([b.views[v] for b in dev]), torch.cat([b.views[v] for b in pil])), v
    assert all(b.bad == [] for b in dev)


def test_an_undecodable_file_mid_batch_leaves_its_neighbours_in_their_rows(registry, photos):
    """A truncated file between good ones: its row is a zero image, listed as bad; every other row is the research
    pipeline's, in its own place."""
    write_truncated_jpeg(photos / "val" / "class01" / "img_000004x.jpg", size=(60, 45))
    dev, ds = _all(registry, "device", 2, [1], batch_size=6)
    pil, _ = _all(registry, "pil", 0, [1], batch_size=6)
    row = [p.name for p in ds.paths].index("img_000004x.jpg")
    assert 0 < row % 6 < 5  # inside a batch, good files on both sides
    assert [e.row for b in dev for e in b.bad] == [e.row for b in pil for e in b.bad] == [row]
    x = torch.cat([b.x for b in dev])
    assert torch.equal(x, torch.cat([b.x for b in pil]))
    assert (x[row] == x[row][:, :1, :1]).all()  # a zero image, normalised: one value per channel
    assert torch.equal(torch.cat([b.views[1] for b in dev]), torch.cat([b.views[1] for b in pil]))


def test_reader_threads_hand_back_the_batches_in_order(registry, photos, monkeypatch):
    """The first batches are read slowest, so later ones finish first: each batch still comes back in its place,
    its bytes those of its own rows."""
    ds = build_dataset(registry.dataset("imagefolder:photos"), "val")
    real, threads = type(ds).read_bytes, set()

    def slow_first(self, i):
        threads.add(threading.get_ident())
        if i < 8:
            time.sleep(0.05)
        return real(self, i)

    monkeypatch.setattr(type(ds), "read_bytes", slow_first)
    index_batches = [list(range(s, min(s + 4, len(ds)))) for s in range(0, len(ds), 4)]
    got = list(read_batches(ds, index_batches, workers=3))
    assert [f.start for f in got] == [rows[0] for rows in index_batches]
    assert len(threads) > 1  # read by several threads
    for f in got:
        for k, data in f.jpegs.items():
            assert data.numpy().tobytes() == ds.paths[f.start + k].read_bytes()
        assert sorted([*f.jpegs, *f.pixels]) == list(range(f.n))


def test_one_batched_resize_per_batch_whatever_the_sizes(registry, photos, monkeypatch):
    """Images of 26 sizes and their views: one resample call a batch (a per-image resize was ~10 kernel calls an
    image on the GPU)."""
    calls = []
    real = loaders.resample

    def spy(images, crops, size, exact=None):
        calls.append((len(images), len(crops[0])))
        return real(images, crops, size, exact)

    monkeypatch.setattr(loaders, "resample", spy)
    got, ds = _all(registry, "device", 2, [1], batch_size=8)
    assert calls == [(len(b.x), 2) for b in got]


def test_jpeg_header_reads_components_and_size():
    img = Image.fromarray(smooth_images(np.random.default_rng(0), 1, 37, 53)[0])
    assert jpeg_header(jpeg_bytes(img)) == (3, 37, 53)  # (components, height, width): not square, not swapped
    assert jpeg_header(jpeg_bytes(img, subsampling=0)) == (3, 37, 53)
    assert jpeg_header(jpeg_bytes(img, progressive=True)) == (3, 37, 53)
    assert jpeg_header(jpeg_bytes(img.convert("L"))) == (1, 37, 53)
    assert jpeg_header(jpeg_bytes(img.convert("CMYK")))[0] == 4
    assert readers.jpeg_header(b"\xff\xd8\xff\xd9") is None


def test_a_jpeg_over_pillows_pixel_limit_is_refused_as_the_pil_backend_refuses_it(registry, photos, monkeypatch):
    """A decompression bomb (a JPEG whose header claims more pixels than Pillow allows) was handed to the device
    decoder, which allocates what the header says: it is Pillow's bad image, in its row, as with ``pil``."""
    img = Image.fromarray(smooth_images(np.random.default_rng(3), 1, 800, 1000)[0])
    (photos / "val" / "class02" / "img_000005x.jpg").write_bytes(jpeg_bytes(img))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 800 * 1000 // 2 - 1)  # over twice the limit: an error
    ds = build_dataset(registry.dataset("imagefolder:photos"), "val")
    big = [p.name for p in ds.paths].index("img_000005x.jpg")
    assert 0 < big % 5 < 4  # inside a batch, good files on both sides
    dev, _ = _all(registry, "device", 2, [1])
    pil, _ = _all(registry, "pil", 0, [1])
    assert [e.row for b in dev for e in b.bad] == [e.row for b in pil for e in b.bad] == [big]
    assert "DecompressionBombError" in str(dev[big // 5].bad[0])
    assert torch.equal(torch.cat([b.x for b in dev]), torch.cat([b.x for b in pil]))
