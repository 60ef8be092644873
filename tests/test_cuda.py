"""The CUDA paths, on a GPU; every test here is skipped without one (benchmarks/gpu_check.sh runs them).

What the CPU tests cannot show: bf16 features on the GPU, nvJPEG's pixels against Pillow's, the batched resize on
the GPU against Pillow's (exact where float64 runs at full rate), the per-file fallback with decoding on the
device, the stream handoff between the producer thread and the forward passes (no synchronising call in
featcache's own code, checked with ``torch.cuda.set_sync_debug_mode``), the padded last batch of a compiled model
in channels_last, host features for heads on the GPU, a second GPU.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cosine, save_checkpoint
from data_factory import jpeg_bytes, smooth_images, write_cifar10, write_truncated_jpeg
from PIL import Image
from torch import nn

import featcache
from featcache import loaders
from featcache.data import build_dataset
from featcache.extract import ExtractConfig, extract
from featcache.forward import forward as _forward
from featcache.heads import HeadConfig, MultiHeadProbe
from featcache.loaders import batches
from featcache.resample import Crop, eval_crop, full_fp64, resample
from featcache.store import open_store, store_path
from featcache.transforms import BatchPreprocess, pil_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
PACKAGE = Path(featcache.__file__).resolve().parent
# mean |nvJPEG - Pillow| per image, in uint8 levels (featcache/loaders.py): 4:2:0 chroma is upsampled differently
JPEG_LEVELS = 2.0  # after resize and crop to 224 px
JPEG_420_FULL, JPEG_420_SMALL = 1.5, 5.0  # raw decode of a 4:2:0 file of about 500x375 px, of a tiny one
BAD = ["f_trunc.jpg", "g_header.jpg"]


def _config(paths, registry, specs, dataset="cifar10", transform="224px", **kw) -> ExtractConfig:
    ds = registry.dataset(dataset)
    kw = {"dtype": "float32", "batch_size": 24, "workers": 0, "device": "cuda", **kw}
    return ExtractConfig(tuple(specs), ds, registry.transform(ds, transform), paths.cache, **kw)


def _read(paths, dataset: str, name: str, split: str) -> np.ndarray:
    return open_store(store_path(paths.cache, dataset, name)).split(split).read()


def _image(seed: int, w: int = 40, h: int = 30, noise: float = 0.0) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = smooth_images(rng, 1, h, w)[0].astype(np.float64) + rng.normal(0, noise, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _levels(x: torch.Tensor, ref: torch.Tensor, std) -> torch.Tensor:
    """|x - ref| of two normalised float batches, back in uint8 levels, per image and pixel."""
    return (x.float().cpu() - ref).abs() * torch.tensor(std).view(1, 3, 1, 1) * 255


@pytest.fixture
def mixed(paths):
    """``mixed/val/x/``: tests/test_fast_path.py's mixed folder (JPEGs of two sizes, grey, CMYK, PNG) plus a
    truncated JPEG and a header-only one (ends in EOI: it passes the marker check and reaches the decoder)."""
    d = paths.data / "mixed" / "val" / "x"
    d.mkdir(parents=True)
    for k in range(4):
        (d / f"a_rgb_{k}.jpg").write_bytes(jpeg_bytes(_image(k)))
    (d / "b_rgb.jpg").write_bytes(jpeg_bytes(_image(10, 31, 44)))
    (d / "c_grey.jpg").write_bytes(jpeg_bytes(_image(11).convert("L")))
    (d / "d_cmyk.jpg").write_bytes(jpeg_bytes(_image(12, 36, 50).convert("CMYK")))
    _image(13, 45, 33).save(d / "e_png.png")
    write_truncated_jpeg(d / "f_trunc.jpg", size=(40, 30))
    data = jpeg_bytes(_image(14))
    (d / "g_header.jpg").write_bytes(data[: data.index(b"\xff\xda")] + b"\xff\xd9")
    return d


# --- precision ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_bf16_features_match_fp32_on_the_gpu(paths, registry, arch):
    write_cifar10(paths.data / "cifar", n_train_per_batch=2, n_test=64)
    spec, _ = save_checkpoint(paths, "net", seed=3, arch=arch)
    for precision in ("fp32", "bf16"):
        extract(_config(paths, registry, [spec], splits=("test",), precision=precision, store_name=precision))
    ref, got = (_read(paths, "cifar10", p, "test") for p in ("fp32", "bf16"))
    assert not np.array_equal(ref, got)  # autocast did run in bf16
    cos = cosine(ref, got)
    assert cos.min() >= 0.999, f"{arch}: per-sample cosine min {cos.min():.5f}, mean {cos.mean():.5f}"


# --- nvJPEG -------------------------------------------------------------------------------------------


def test_nvjpeg_pixels_match_pillow_within_the_documented_tolerance():
    files = {}
    for k, (w, h) in enumerate([(500, 375), (375, 500), (64, 48), (33, 47)]):
        img = _image(20 + k, w, h, noise=12.0)
        files[f"{w}x{h} 4:2:0"] = jpeg_bytes(img)
        files[f"{w}x{h} 4:4:4"] = jpeg_bytes(img, subsampling=0)
        files[f"{w}x{h} grey"] = jpeg_bytes(img.convert("L"))
    data = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files.values()]
    decoded = loaders._decode_jpegs(data, CUDA)
    means = {}
    for (name, f), got in zip(files.items(), decoded, strict=True):
        with Image.open(io.BytesIO(f)) as im:
            want = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
        assert got.device.type == "cuda" and got.dtype == torch.uint8 and got.shape == want.shape, name
        means[name] = (got.cpu().int() - want.int()).abs().float().mean().item()
    for name, mean in means.items():  # measured on an H200: 0, 0, 1.13 / 1.07 at 500x375, 3.1 / 4.3 tiny
        bound = 0.0 if "4:2:0" not in name else JPEG_420_FULL if name.startswith(("500", "375")) else JPEG_420_SMALL
        assert mean <= bound, means


def test_jpeg_pipeline_on_the_gpu_matches_the_pil_reference(paths, registry):
    d = paths.data / "photos" / "val" / "x"
    d.mkdir(parents=True)
    for k in range(6):
        (d / f"{k}.jpg").write_bytes(jpeg_bytes(_image(30 + k, 500, 375, noise=12.0)))
    ds_spec = registry.dataset("imagefolder:photos")
    ds, spec = build_dataset(ds_spec, "val"), registry.transform(ds_spec, "224px")
    (batch,) = batches(ds, spec, [(0, len(ds))], batch_size=len(ds), device=CUDA, backend="device")
    ref = torch.stack([pil_reference(spec)(ds.load(i).convert("RGB")) for i in range(len(ds))])
    levels = _levels(batch.x, ref, spec.std)
    assert batch.x.is_contiguous(memory_format=torch.channels_last)  # what the forward pass takes on CUDA
    assert levels.mean((1, 2, 3)).max() < JPEG_LEVELS, levels.mean((1, 2, 3))


def test_mixed_batch_falls_back_per_file_on_the_device(paths, registry, mixed):
    ds_spec = registry.dataset("imagefolder:mixed")
    ds, spec = build_dataset(ds_spec, "val"), registry.transform(ds_spec, "224px")
    names = [p.name for p in ds.paths]

    def run(device):
        (batch,) = batches(ds, spec, [(0, len(ds))], batch_size=len(ds), device=device, backend="device")
        return batch

    gpu, cpu = run(CUDA), run(CPU)
    found = sorted((names[e.row], e.reason) for e in gpu.bad)
    assert [n for n, _ in found] == BAD, f"undecodable files found on the GPU: {found}"
    assert gpu.x.device.type == "cuda" and gpu.x.shape == cpu.x.shape
    levels = _levels(gpu.x, cpu.x, spec.std)
    for row, name in enumerate(names):
        mean, worst = levels[row].mean().item(), levels[row].max().item()
        if name in BAD:  # a blank image in both
            assert worst < 0.01, name
        elif name in ("d_cmyk.jpg", "e_png.png"):  # PIL decodes both; each resize is within 2 levels of Pillow's
            assert worst <= 4.01 and mean < 0.5, (name, worst, mean)
        else:  # nvJPEG vs libjpeg-turbo on small 4:2:0 files (measured 2.6 on an H200)
            assert mean < JPEG_420_SMALL, (name, mean)
    # a file's pixels do not depend on its batch neighbours: each JPEG as if decoded alone on the device
    pre = BatchPreprocess(spec)
    for row, path in enumerate(ds.paths):
        if path.suffix == ".jpg" and path.name not in BAD and "cmyk" not in path.name:
            one = loaders._decode_jpegs([torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)], CUDA)
            assert torch.equal(gpu.x[row], pre(one[0][None], cropped=False)[0]), path.name


def test_batched_resize_on_the_gpu_is_pillows(registry):
    """resample on the GPU: Pillow's pixels bit for bit on GPUs with full-rate float64 (H100/H200: what the CPU
    computes, which tests/test_resample.py holds to Pillow), else within one level; crops, flips, both orders."""
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8) for h, w in rng.integers(40, 300, (12, 2))]
    crops = []
    for a in arrays:
        h, w = a.shape[:2]
        top, left = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        view = Crop(top, left, h - top, w - left, 64, 64, 0, 0, bool(rng.integers(0, 2)), "bilinear")
        crops.append([eval_crop(h, w, 73, 64, "bicubic"), view])
    images = [torch.from_numpy(a).permute(2, 0, 1).contiguous() for a in arrays]
    want = resample(images, crops, 64, exact=True)
    got = resample([t.to(CUDA) for t in images], crops, 64).cpu()
    if full_fp64(CUDA):
        assert torch.equal(got, want)
    else:
        assert (got.int() - want.int()).abs().max() <= 1


def test_444_jpegs_on_the_gpu_are_the_research_pipeline(paths, registry):
    """4:4:4 JPEGs of varied sizes: nvJPEG decodes them as libjpeg-turbo does and the batched resize is Pillow's,
    so on a GPU with full-rate float64 the device backend's crops and views are the PIL pipeline's (the fused
    normalisation differs from ToDtype + Normalize by float rounding, far below a level)."""
    d = paths.data / "full" / "val" / "x"
    d.mkdir(parents=True)
    for k in range(10):
        (d / f"{k}.jpg").write_bytes(jpeg_bytes(_image(40 + k, 200 + 37 * k, 330 - 21 * k, noise=10.0), subsampling=0))
    ds_spec = registry.dataset("imagefolder:full")
    ds, spec = build_dataset(ds_spec, "val"), registry.transform(ds_spec, "224px")
    from featcache.augment import ViewMaker

    maker = ViewMaker(spec.augment, 3)

    def run(device, backend):
        return list(batches(ds, spec, [(0, len(ds))], batch_size=4, device=device, backend=backend, workers=2,
                            maker=maker, views=[0, 1]))  # fmt: skip

    gpu, cpu = run(CUDA, "device"), run(CPU, "pil")
    bound = 0.01 if full_fp64(CUDA) else 1.01
    assert _levels(torch.cat([b.x for b in gpu]), torch.cat([b.x for b in cpu]), spec.std).max() < bound
    for v in (0, 1):
        levels = _levels(torch.cat([b.views[v] for b in gpu]), torch.cat([b.views[v] for b in cpu]), spec.std)
        assert levels.max() < bound, v


# --- streams: no synchronising call in featcache's code -----------------------------------------------


@pytest.mark.parametrize("dataset", ["cifar10", "imagefolder:mixed"])
def test_extraction_makes_no_synchronising_call_in_featcache(paths, registry, mixed, dataset):
    """Under ``set_sync_debug_mode("warn")`` every op that makes the host wait for the GPU warns (the producer
    thread's too); none may come from featcache's own lines. Loading the model to the GPU (torch's lines) and
    nvJPEG's internal stream sync (torchvision's C++ code, not seen by the check) are not featcache's."""
    write_cifar10(paths.data / "cifar", n_train_per_batch=2, n_test=40)
    spec, _ = save_checkpoint(paths, "net", seed=0, arch="resnet18")
    split = "test" if dataset == "cifar10" else "val"
    cfg = _config(paths, registry, [spec], dataset=dataset, splits=(split,), batch_size=8, on_bad_image="skip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            report = extract(cfg)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    ours = [
        f"{Path(w.filename).name}:{w.lineno}: {str(w.message).splitlines()[0]}"
        for w in caught
        if "synchronizing" in str(w.message) and Path(w.filename).resolve().is_relative_to(PACKAGE)
    ]
    assert ours == []
    assert report.gpu_s is not None and report.gpu_s > 0
    assert "GPU busy with the models" in report.summary()


# --- compiled models: the padded last batch in channels_last ------------------------------------------


def test_padded_short_batch_reuses_the_compiled_graph_on_the_gpu():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    model = torch.compile(net.to(CUDA).to(memory_format=torch.channels_last), backend=counter)
    x = torch.randn(8, 3, 32, 32, device=CUDA).contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    try:
        full = _forward(model, x, 8, autocast)
        short = _forward(model, x[:3], 8, autocast)
        assert counter.frame_count == 1
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(short, full[:3])


# --- probe: host features, heads on the GPU -----------------------------------------------------------


def test_heads_on_the_gpu_learn_the_same_from_host_features():
    """Features too big for the GPU stay on the host (pinned gathers a batch ahead); same arithmetic, same heads."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(600, 64, generator=g).half()
    y = torch.randint(0, 5, (600,), generator=g)
    cfg = HeadConfig(epochs=2, batch_size=64, weight_decays=(1e-4, 1e-2))
    resident = MultiHeadProbe(cfg, 64, 5, device="cuda").fit(X.to(CUDA), y, eval_sets={"train": (X.to(CUDA), y)})
    host = MultiHeadProbe(cfg, 64, 5, device="cuda").fit(X, y, eval_sets={"train": (X, y)})
    assert torch.equal(resident.weight_, host.weight_) and torch.equal(resident.bias_, host.bias_)
    assert resident.history_ == host.history_


# --- a second GPU -------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_extraction_on_a_second_gpu_equals_the_first(paths, registry):
    """cuda:1 while the current device is cuda:0: the feature copies are waited for on cuda:1's stream."""
    write_cifar10(paths.data / "cifar", n_train_per_batch=2, n_test=64)
    spec, _ = save_checkpoint(paths, "net", seed=0, arch="resnet18")
    for device in ("cuda:0", "cuda:1"):
        name = device.replace(":", "")
        extract(_config(paths, registry, [spec], splits=("test",), precision="fp32", device=device, store_name=name))
    first, second = (_read(paths, "cifar10", name, "test") for name in ("cuda0", "cuda1"))
    assert np.abs(second).sum(1).min() > 0  # no row left unwritten
    np.testing.assert_allclose(second, first, rtol=1e-4, atol=1e-4)
