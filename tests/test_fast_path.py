"""The fast extraction paths: bf16 autocast, JPEG decoding by torchvision with per-file fallback, the run report,
batch normalisation on the device, compiled models and the padded last batch, host features for GPU heads.

All on the CPU: ``decode_jpeg`` runs there too, so the fallback logic of the GPU path is exercised without a GPU.
What needs a GPU is in tests/test_cuda.py.
"""

from __future__ import annotations

import dataclasses
import io
import re
import warnings

import numpy as np
import pytest
import torch
from conftest import cosine, save_checkpoint
from data_factory import jpeg_bytes, smooth_images, write_cifar10, write_truncated_jpeg
from PIL import Image
from torch import nn

from featcache import loaders
from featcache.data import build_dataset
from featcache.errors import BadImagesError
from featcache.extract import ExtractConfig, extract
from featcache.feed_batches import host_rows
from featcache.forward import ExtractReport
from featcache.forward import forward as _forward
from featcache.loaders import batches, jpeg_components
from featcache.store import open_store, store_path
from featcache.transforms import BatchPreprocess


def _config(paths, registry, specs, dataset="cifar10", transform="32px", **kw) -> ExtractConfig:
    ds = registry.dataset(dataset)
    kw = {"dtype": "float32", "batch_size": 16, "workers": 0, "device": "cpu", **kw}
    return ExtractConfig(tuple(specs), ds, registry.transform(ds, transform), paths.cache, **kw)


def _split(paths, dataset, name, split):
    return open_store(store_path(paths.cache, dataset, name)).split(split)


def _image(seed: int, w: int = 40, h: int = 30) -> Image.Image:
    return Image.fromarray(smooth_images(np.random.default_rng(seed), 1, h, w)[0])


def _header_only(img: Image.Image) -> bytes:
    """A JPEG cut before its scan but still ending in EOI: it passes the marker check, every decoder refuses it."""
    data = jpeg_bytes(img)
    return data[: data.index(b"\xff\xda")] + b"\xff\xd9"


# --- bf16 autocast ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["resnet10", "resnet18"])
def test_bf16_autocast_features_match_fp32(paths, registry, arch):
    write_cifar10(paths.data / "cifar", n_train_per_batch=2, n_test=12)
    spec, _ = save_checkpoint(paths, "net", seed=3, arch=arch)
    for precision in ("fp32", "bf16"):
        cfg = _config(paths, registry, [spec], splits=("test",), precision=precision, store_name=precision)
        extract(cfg)
    fp32, bf16 = (_split(paths, "cifar10", p, "test") for p in ("fp32", "bf16"))
    ref, got = fp32.read(), bf16.read()
    assert not np.array_equal(ref, got)  # autocast did run in bf16
    assert cosine(ref, got).min() >= 0.999
    prov = open_store(store_path(paths.cache, "cifar10", "bf16")).provenance
    assert prov.precision == "bf16" and prov.compute.device == "cpu"
    assert prov.preprocess.to_dict() == {"backend": "pil", "device": "cpu"}  # on the CPU: the research pipeline
    assert open_store(store_path(paths.cache, "cifar10", "fp32")).provenance.precision == "fp32"


# --- JPEG classification ------------------------------------------------------------------------------


def test_jpeg_components_classifies_files():
    img = _image(0)
    exif = Image.Exif()
    exif[0x010E] = "a description long enough to make an APP1 segment"
    png = io.BytesIO()
    img.save(png, format="PNG")
    rgb = jpeg_bytes(img)
    scan = rgb.index(b"\xff\xda")
    cases = {
        "grey": (jpeg_bytes(img.convert("L")), 1),
        "rgb": (rgb, 3),
        "progressive": (jpeg_bytes(img, progressive=True), 3),
        "exif": (jpeg_bytes(img, exif=exif.tobytes()), 3),
        "cmyk": (jpeg_bytes(img.convert("CMYK")), 4),
        "truncated": (rgb[: scan + (len(rgb) - scan) // 2], None),
        "header only, no EOI": (rgb[:scan], None),
        "png": (png.getvalue(), None),
        "empty": (b"", None),
        "soi only": (b"\xff\xd8", None),
        "not an image": (b"just some text\n" * 10, None),
    }
    got = {name: jpeg_components(data) for name, (data, _) in cases.items()}
    assert got == {name: want for name, (_, want) in cases.items()}


# --- device decoding: per-file fallback ---------------------------------------------------------------


@pytest.fixture
def mixed(paths):
    """``mixed/val/x/``: JPEGs of two sizes, a grey JPEG, a CMYK JPEG, a PNG; ``bad`` adds two undecodable files."""
    d = paths.data / "mixed" / "val" / "x"
    d.mkdir(parents=True)
    for k in range(4):
        (d / f"a_rgb_{k}.jpg").write_bytes(jpeg_bytes(_image(k)))  # one size: resized together
    (d / "b_rgb.jpg").write_bytes(jpeg_bytes(_image(10, 31, 44)))
    (d / "c_grey.jpg").write_bytes(jpeg_bytes(_image(11).convert("L")))
    (d / "d_cmyk.jpg").write_bytes(jpeg_bytes(_image(12, 36, 50).convert("CMYK")))
    _image(13, 45, 33).save(d / "e_png.png")
    return d


def test_device_decoding_equals_decoding_each_file_alone(paths, registry, mixed):
    ds = build_dataset(registry.dataset("imagefolder:mixed"), "val")
    spec = registry.transform(registry.dataset("imagefolder:mixed"), "224px")
    (batch,) = batches(ds, spec, [(0, len(ds))], batch_size=len(ds), device=torch.device("cpu"), backend="device")
    pre = BatchPreprocess(spec)
    for row, path in enumerate(ds.paths):
        if path.suffix == ".jpg" and "cmyk" not in path.name:  # torchvision's decoder, one file at a time
            one = loaders._decode_jpegs([torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)], "cpu")
            assert torch.equal(batch.x[row], pre(one[0][None], cropped=False)[0]), path.name
    assert batch.bad == []


def test_fallback_files_match_pil_and_bad_files_are_isolated(paths, registry, mixed, monkeypatch):
    spec, _ = save_checkpoint(paths, "net0", seed=0)
    cfg = _config(paths, registry, [spec], dataset="imagefolder:mixed", transform="224px", batch_size=32)
    extract(dataclasses.replace(cfg, backend="pil", store_name="pil"))
    write_truncated_jpeg(mixed / "f_trunc.jpg", size=(40, 30))
    header_only = _header_only(_image(14))
    (mixed / "g_header.jpg").write_bytes(header_only)
    decoded_alone, pil_decoded = [], []
    decode = loaders._decode_jpegs
    opened = Image.open

    def decode_spy(data, device):
        decoded_alone.append(len(data))
        return decode(data, device)

    def open_spy(fp, *args, **kw):
        pil_decoded.append(fp)
        return opened(fp, *args, **kw)

    monkeypatch.setattr(loaders, "_decode_jpegs", decode_spy)
    monkeypatch.setattr(loaders.Image, "open", open_spy)

    device_cfg = dataclasses.replace(cfg, backend="device", store_name="device")
    with pytest.raises(
        BadImagesError, match=r"cannot decode 2 image\(s\).*f_trunc\.jpg.*g_header\.jpg.*on-bad-image skip"
    ):
        extract(device_cfg)
    pil_decoded.clear()
    decoded_alone.clear()
    extract(dataclasses.replace(device_cfg, on_bad_image="skip"))

    # one batched decode of the 6 complete JPEGs: CMYK, PNG, the truncated and the header-only file (no scan:
    # nvJPEG crashed on it) never reach decode_jpeg, and nothing needed a per-file retry
    assert decoded_alone == [6]
    assert [f for f in pil_decoded if isinstance(f, io.BytesIO)] == []
    assert loaders.jpeg_components(header_only) is None and loaders.jpeg_components(jpeg_bytes(_image(14))) == 3

    dev = _split(paths, "imagefolder:mixed", "device", "val")
    bad_rows = [dev.ids.index("x/f_trunc.jpg"), dev.ids.index("x/g_header.jpg")]
    assert list(dev.meta.skipped_rows) == bad_rows
    feats = dev.read()
    assert not feats[bad_rows].any()
    good = [i for i in range(dev.rows) if i not in bad_rows]
    ref = _split(paths, "imagefolder:mixed", "pil", "val")
    assert ref.ids == [dev.ids[i] for i in good]
    cos = dict(zip(ref.ids, cosine(feats[good], ref.read()), strict=True))
    # CMYK and PNG are decoded by PIL in both runs; only the resize differs (torch's uint8 kernel vs Pillow)
    assert cos["x/d_cmyk.jpg"] > 0.9999 and cos["x/e_png.png"] > 0.9999
    assert min(cos.values()) > 0.999
    prov = open_store(store_path(paths.cache, "imagefolder:mixed", "device")).provenance
    assert prov.preprocess.to_dict() == {"backend": "device", "device": "cpu"}


@pytest.mark.parametrize("error", loaders._DEVICE_ERRORS)  # torch.OutOfMemoryError, torch.AcceleratorError
def test_device_errors_are_raised_not_taken_for_bad_files(paths, registry, mixed, monkeypatch, error):
    """An OOM or a device fault in decode_jpeg is no bad file: no per-file retry, no PIL, the error goes up."""
    calls = []

    def failing(data, device):
        calls.append(len(data))
        raise error("CUDA out of memory (simulated)")

    monkeypatch.setattr(loaders, "_decode_jpegs", failing)
    ds = build_dataset(registry.dataset("imagefolder:mixed"), "val")
    spec = registry.transform(registry.dataset("imagefolder:mixed"), "224px")
    with pytest.raises(error, match="simulated"):
        list(batches(ds, spec, [(0, len(ds))], batch_size=len(ds), device=torch.device("cpu"), backend="device"))
    assert calls == [6]  # the batched call only (a_rgb_0..3, b_rgb, c_grey)


def test_decode_deprecation_is_ignored_by_one_narrow_filter():
    """torchvision's decode_jpeg deprecation is ignored through one filter added to the process's list (no
    catch_warnings, which is not thread-safe, around each call); other warnings, from there too, still show."""
    data = torch.frombuffer(bytearray(jpeg_bytes(_image(0))), dtype=torch.uint8)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # as pytest's own filters: every DeprecationWarning shown
        loaders._decode_jpegs([data], "cpu")
        loaders._decode_jpegs([data], "cpu")
        warnings.warn_explicit("another deprecation", DeprecationWarning, "image.py", 1, module="torchvision.io.image")
        ours = [f for f in warnings.filters if f[1] is not None and f[1].pattern == loaders._DECODE_DEPRECATION]
    assert [str(w.message) for w in seen] == ["another deprecation"]
    assert len(ours) == 1 and ours[0][0] == "ignore"


# --- normalisation on the device ----------------------------------------------------------------------


def test_normalize_constants_are_made_once_and_the_fused_form_is_close(registry):
    """mean/std are tensors made once per device (a list -> GPU tensor per batch waits for the GPU); the fused
    single multiply-add used on CUDA is within 1e-6 of the exact ToDtype + Normalize used on the CPU."""
    spec = registry.transform(registry.dataset("cifar10"), "32px")
    pre = BatchPreprocess(spec)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    exact = pre(x, cropped=True)
    mean, std = pre._constant(torch.device("cpu"), fused=False)
    assert torch.equal(pre(x, cropped=True), exact)
    assert pre._constant(torch.device("cpu"), fused=False)[0] is mean and len(pre._constants) == 1
    fused = pre.normalize(x, fused=True)
    assert fused.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fused, exact, rtol=0, atol=1e-6)
    torch.testing.assert_close(exact, (x.float() / 255 - mean) / std, rtol=0, atol=1e-6)


# --- compiled models: the padded last batch -----------------------------------------------------------


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_padded_short_batch_reuses_the_compiled_graph(layout):
    """A short last batch is padded to the compiled shape outside inference mode and in the full batches'
    layout: one dynamo graph for both (an inference tensor or NCHW padding of a channels_last batch recompiles)."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    model = torch.compile(net.to(memory_format=layout), backend=counter)
    x = torch.randn(8, 3, 12, 12).contiguous(memory_format=layout)
    autocast = torch.autocast("cpu", enabled=False)
    try:
        full = _forward(model, x, 8, autocast)
        short = _forward(model, x[:3], 8, autocast)
        assert counter.frame_count == 1
    finally:
        torch._dynamo.reset()
    assert short.shape == (3, 4)
    torch.testing.assert_close(short, full[:3])


# --- probe: host features, heads on a GPU -------------------------------------------------------------


def test_host_tensor_rows_are_gathered_like_a_row_source():
    """The gather behind host features + GPU heads (pinned there; pin=False is the same on the CPU)."""
    X = torch.randn(20, 5).half()
    idx = np.array([3, 0, 7, 19, 3])
    got = host_rows(X, idx, pin=False, dim=5)
    assert got.dtype == torch.float16 and torch.equal(got, X[torch.from_numpy(idx)])


# --- the report ---------------------------------------------------------------------------------------


def test_report_summary_has_rate_and_time_breakdown(paths, registry, ckpt):
    write_cifar10(paths.data / "cifar", n_train_per_batch=4, n_test=4)
    report = extract(_config(paths, registry, [ckpt[0]], splits=("train",), batch_size=8))
    line = report.summary()
    m = re.fullmatch(
        r"20 images x 1 store\(s\) in (\d+\.\d)s \(([\d,]+\.\d) images/s\); waiting for data (\d+\.\d)s, "
        r"model (\d+\.\d)s, writer busy (\d+\.\d)s",
        line,
    )
    assert m, line
    assert report.images == 20 and report.seconds > 0
    assert float(m[2].replace(",", "")) == pytest.approx(20 / report.seconds, abs=0.1)
    assert report.data_s + report.model_s <= report.seconds
    assert report.gpu_s is None


def test_report_summary_gives_the_gpu_time_apart():
    """On CUDA the host's model time is queueing and waiting: the GPU's own time is reported, labelled."""
    report = ExtractReport(images=10, seconds=2.0, data_s=0.5, model_s=1.0, write_s=0.2)
    assert "GPU" not in report.summary()
    report.gpu_s = 1.5
    assert report.summary().endswith(
        "writer busy 0.2s; GPU busy with the models 1.5s (CUDA events; the host times above overlap it)"
    )


def test_report_breaks_the_call_down_into_its_steps(paths, registry, ckpt):
    """Each step of a call, in order, timed; together no longer than the call; what is fixed named at the end."""
    write_cifar10(paths.data / "cifar", n_train_per_batch=4, n_test=4)
    report = extract(_config(paths, registry, [ckpt[0]], splits=("train",), batch_size=8))
    steps = ["datasets listed", "checkpoints read, hashed, built", "stores opened", "models moved to the device"]
    steps += ["first batch", "first forward", "batches after the first", "last chunks written", "stores completed"]
    assert list(report.phases) == steps
    assert all(s >= 0 for s in report.phases.values())
    assert sum(report.phases.values()) <= report.seconds + 1e-3
    lines = report.breakdown()
    assert [line.split()[0] for line in lines[:-1]] == [s.split()[0] for s in steps]
    fixed = sum(report.phases.values()) - report.phases["batches after the first"]
    assert re.fullmatch(rf"\s*fixed cost\s+{fixed:.2f} s of \d+\.\d\d s \(all but the steady batches\)", lines[-1])


def test_cli_verbose_prints_the_breakdown(paths, ckpt):
    from click.testing import CliRunner

    from featcache.cli import main

    write_cifar10(paths.data / "cifar", n_train_per_batch=2, n_test=2)
    args = ["--data-dir", str(paths.data), "--cache-dir", str(paths.cache), "extract", "--ckpt", str(ckpt[0].path),
            "--arch", "resnet10", "--dataset", "cifar10", "--transform", "32px", "--split", "test", "--device", "cpu",
            "--workers", "0", "--quiet", "--verbose"]  # fmt: skip
    out = CliRunner().invoke(main, args).output
    assert "where the time went" in out, out
    for step in ("torch and the extractor imported", "checkpoints read, hashed, built", "first forward", "fixed cost"):
        assert step in out, out


def test_compile_auto_counts_forward_passes(paths, registry, ckpt, monkeypatch):
    """--compile auto weighs the compile against the forward passes it would speed up: every split's rows, the
    train split's once more per view, times the checkpoints."""
    from featcache import extract as extract_module

    write_cifar10(paths.data / "cifar", n_train_per_batch=6, n_test=8)  # 30 train, 8 test
    spec2, _ = save_checkpoint(paths, "net1", seed=1)
    cfg = _config(paths, registry, [ckpt[0], spec2], views=3)
    data = {s: extract_module._split_data(build_dataset(cfg.dataset, s), s, None)[1] for s in ("train", "test")}
    assert extract_module._forward_passes(cfg, data) == (30 * (1 + 3) + 8) * 2
    monkeypatch.setattr(extract_module, "COMPILE_MIN_PASSES", 256)
    monkeypatch.setattr(extract_module, "resolve_device", lambda name: torch.device("cuda"))  # planned, not run
    monkeypatch.setattr(extract_module, "resolve_precision", lambda name, device: "bf16")
    assert extract_module.plan_extract(dataclasses.replace(cfg, compile="auto"), passes=256).compiled
    assert not extract_module.plan_extract(dataclasses.replace(cfg, compile="auto"), passes=255).compiled
