"""Augmented views: deterministic crops, stored next to the evaluation view, added later without redoing anything,
and the research pipeline's pixels on the CPU for every preset."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from ckpt_factory import reference_features  # noqa: I001
from conftest import save_checkpoint
from data_factory import write_cifar10, write_imagefolder
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from featcache.augment import ViewMaker
from featcache.data import build_dataset
from featcache.errors import ConfigError, StoreMismatchError
from featcache.extract import ExtractConfig, extract
from featcache.loaders import batches
from featcache.probe import ProbeConfig, heads_from_preset, run_probe
from featcache.store import open_store, store_path
from featcache.transforms import INTERPOLATIONS, pil_reference


@pytest.fixture
def cifar(paths):
    return write_cifar10(paths.data / "cifar", n_train_per_batch=6, n_test=8)  # 30 train images


def _config(paths, registry, specs, **kw) -> ExtractConfig:
    ds = registry.dataset("cifar10")
    kw = {"dtype": "float32", "batch_size": 8, "workers": 0, "device": "cpu", "chunk_rows": 7, **kw}
    return ExtractConfig(tuple(specs), ds, registry.transform(ds, "32px"), paths.cache, **kw)


def _split(paths, name, split="train"):
    return open_store(store_path(paths.cache, "cifar10", name)).split(split)


def _all_views(reader):
    return np.stack([reader.view(k).read() for k in range(reader.n_views)])


# --- the crops -----------------------------------------------------------------------------------------


def test_view_parameters_are_a_pure_function_of_id_view_and_seed(registry):
    aug = registry.transform(registry.dataset("imagenet1k"), None).augment
    maker = ViewMaker(aug, seed=3)
    p = maker.params("n01440764/x.JPEG", 2, 375, 500)
    assert ViewMaker(aug, seed=3).params("n01440764/x.JPEG", 2, 375, 500) == p
    assert maker.params("n01440764/x.JPEG", 1, 375, 500) != p and maker.params("other", 2, 375, 500) != p
    assert ViewMaker(aug, seed=4).params("n01440764/x.JPEG", 2, 375, 500) != p
    params = [maker.params(f"id{i}", k, 375, 500) for i in range(300) for k in range(2)]
    for q in params:  # inside the image, and RandomResizedCrop's area and aspect bounds (or its centre fallback)
        assert 0 <= q.top and q.top + q.height <= 375 and 0 <= q.left and q.left + q.width <= 500
        assert 0.08 * 0.9 <= q.height * q.width / (375 * 500) <= 1.0
    flips = np.mean([q.flip for q in params])
    assert 0.4 < flips < 0.6  # hflip 0.5
    cifar = ViewMaker(registry.transform(registry.dataset("cifar10"), "32px").augment, 0)
    assert all(cifar.params(f"{i}", 0, 32, 32).height >= 25 for i in range(200))  # scale (0.8, 1)


def test_pil_view_is_the_research_transform_for_its_parameters(registry):
    aug = registry.transform(registry.dataset("cifar10"), "224px").augment
    maker = ViewMaker(aug, 0)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    for k in range(4):
        p = maker.params("0:img.png", k, 32, 32)
        want = F.resized_crop(img, p.top, p.left, p.height, p.width, [224, 224],
                              interpolation=INTERPOLATIONS["bicubic"], antialias=True)  # fmt: skip
        want = F.pil_to_tensor(F.hflip(want) if p.flip else want)
        assert torch.equal(maker.pil(img, p), want)


def test_device_views_equal_resizing_each_crop_alone_and_stay_near_pil(registry):
    aug = registry.transform(registry.dataset("cifar10"), "224px").augment
    maker = ViewMaker(aug, 1)
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(5)]
    images = [torch.from_numpy(a).permute(2, 0, 1) for a in arrays]
    ids = [f"{i}:x" for i in range(5)]
    made = maker.on_device(images, ids, [0, 3])
    for b in range(5):
        for k in (0, 3):
            alone = maker.on_device(images[b : b + 1], ids[b : b + 1], [k])[k][0]
            assert torch.equal(made[k][b], alone)  # the batch neighbours change nothing
            pil = maker.pil(Image.fromarray(arrays[b]), maker.params(ids[b], k, 32, 32))
            diff = (made[k][b].int() - pil.int()).abs()
            assert diff.max() <= 2 and diff.float().mean() < 0.1  # torchvision's uint8 kernel is Pillow's algorithm


# --- pixel equality with the research pipeline, every preset --------------------------------------------


@pytest.mark.parametrize("preset", ["cifar-224px", "cifar-32px", "imagenet-224px", "digits-32px"])
def test_cpu_default_preprocessing_is_the_research_pipeline_pixel_for_pixel(registry, paths, preset):
    spec = registry.transforms[preset]
    write_cifar10(paths.data / "cifar", n_train_per_batch=2, n_test=3)
    if preset.startswith("imagenet"):
        write_imagefolder(paths.data / "folder", splits=("val",), per_class=2)
        ds = build_dataset(registry.dataset("imagefolder:folder"), "val")
    else:
        ds = build_dataset(registry.dataset("cifar10"), "train")
    maker = ViewMaker(spec.augment, 0)
    got = list(batches(ds, spec, [(0, len(ds))], batch_size=4, device=torch.device("cpu"), backend="pil",
                       maker=maker, views=[0, 1]))  # fmt: skip
    x = torch.cat([b.x for b in got])
    want = torch.stack([pil_reference(spec)(ds.load(i)) for i in range(len(ds))])
    assert torch.equal(x, want)  # exact: the same PIL operations, the same normalisation
    to_tensor = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(spec.mean), list(spec.std))])
    for k in (0, 1):
        v = torch.cat([b.views[k] for b in got])
        crops = torch.stack([maker.pil(ds.load(i), maker.params(ds.ids[i], k, ds.load(i).height, ds.load(i).width))
                             for i in range(len(ds))])  # fmt: skip
        assert torch.equal(v, to_tensor(crops))  # the research training transform at those crop parameters


# --- views in stores ------------------------------------------------------------------------------------


def test_views_are_the_same_bytes_whatever_the_batch_size_or_a_resume(paths, registry, cifar, monkeypatch):
    spec, _ = save_checkpoint(paths, "net0", seed=0)
    extract(_config(paths, registry, [spec], views=3, store_name="b8"))
    extract(_config(paths, registry, [spec], views=3, batch_size=5, store_name="b5"))
    # a run killed after a few chunks, then resumed
    from featcache.store import _writer

    real, calls = _writer.ArrayWriter.write_chunk, []

    def dies(self, *a, **kw):
        if len(calls) == 6:
            raise KeyboardInterrupt
        calls.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(_writer.ArrayWriter, "write_chunk", dies)
    with pytest.raises(KeyboardInterrupt):
        extract(_config(paths, registry, [spec], views=3, store_name="resumed"))
    monkeypatch.undo()
    assert not open_store(store_path(paths.cache, "cifar10", "resumed")).split("train", require_complete=False).complete
    extract(_config(paths, registry, [spec], views=3, store_name="resumed"))
    a, b, c = (_split(paths, n) for n in ("b8", "b5", "resumed"))
    assert a.n_views == b.n_views == c.n_views == 3
    np.testing.assert_array_equal(_all_views(a), _all_views(b))
    np.testing.assert_array_equal(_all_views(a), _all_views(c))
    assert not np.array_equal(_all_views(a)[0], _all_views(a)[1]) and not np.array_equal(_all_views(a)[0], a.read())
    assert _split(paths, "b8", "test").n_views == 0  # test keeps the one evaluation view
    assert a.meta.views.seed == 0 and a.meta.views.augment["scale"] == [0.8, 1.0]


def test_views_of_two_checkpoints_are_features_of_the_same_crops(paths, registry, cifar):
    (s0, n0), (s1, n1) = (save_checkpoint(paths, f"net{k}", seed=k) for k in range(2))
    extract(_config(paths, registry, [s0, s1], views=2, views_seed=7))
    ds = build_dataset(registry.dataset("cifar10"), "train")
    tf = registry.transform(registry.dataset("cifar10"), "32px")
    maker = ViewMaker(tf.augment, 7)
    to_tensor = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(tf.mean), list(tf.std))])
    for k in range(2):
        crops = torch.stack([maker.pil(ds.load(i), maker.params(ds.ids[i], k, 32, 32)) for i in range(len(ds))])
        x = to_tensor(crops)
        for name, net in (("net0", n0), ("net1", n1)):
            got = _split(paths, name).view(k).read()
            assert np.abs(got - reference_features(net, x).numpy()).max() < 1e-4


def test_more_views_later_adds_only_the_missing_ones(paths, registry, cifar):
    spec, _ = save_checkpoint(paths, "net0", seed=0)
    extract(_config(paths, registry, [spec]))  # the evaluation view only
    store = store_path(paths.cache, "cifar10", "net0")
    chunk = store / "train" / "features" / "c" / "0" / "0"
    eval_mtime, eval_bytes = chunk.stat().st_mtime_ns, _split(paths, "net0").read()
    report = extract(_config(paths, registry, [spec], views=2))
    assert report.stores[0]["status"] == "written" and report.images == 30  # train only, the views only
    view0 = store / "train" / "views" / "c" / "0" / "0" / "0"
    first = view0.stat().st_mtime_ns
    report = extract(_config(paths, registry, [spec], views=4))
    assert _split(paths, "net0").n_views == 4
    assert view0.stat().st_mtime_ns == first and chunk.stat().st_mtime_ns == eval_mtime  # nothing redone
    np.testing.assert_array_equal(_split(paths, "net0").read(), eval_bytes)
    extract(_config(paths, registry, [spec], views=4, store_name="direct"))
    np.testing.assert_array_equal(_all_views(_split(paths, "net0")), _all_views(_split(paths, "direct")))
    assert extract(_config(paths, registry, [spec], views=4)).stores[0]["status"] == "already complete"
    with pytest.raises(StoreMismatchError, match=r"another seed \(seed 0.*--views-seed 0"):
        extract(_config(paths, registry, [spec], views=5, views_seed=1))
    assert open_store(store).verify() == []


def test_views_need_a_training_transform_and_the_train_split(paths, registry, cifar):
    spec, _ = save_checkpoint(paths, "net0", seed=0)
    cfg = _config(paths, registry, [spec], views=2)
    with pytest.raises(ConfigError, match="defines no training augmentation"):
        extract(dataclasses.replace(cfg, transform=dataclasses.replace(cfg.transform, augment=None)))
    with pytest.raises(ConfigError, match="made for the train split"):
        extract(dataclasses.replace(cfg, splits=("test",)))
    assert not any((paths.cache / "cifar10").glob("*.zarr")) if (paths.cache / "cifar10").exists() else True


def test_probe_trains_on_extracted_views(paths, registry, cifar):
    specs = [save_checkpoint(paths, f"net{k}", seed=k)[0] for k in range(2)]
    extract(_config(paths, registry, specs, views=2))
    heads, vf = heads_from_preset(registry.probe_preset("quick"), epochs=3)
    stores = tuple(store_path(paths.cache, "cifar10", f"net{k}") for k in range(2))
    record = run_probe(ProbeConfig(stores, heads, vf, device="cpu", views=None))
    assert record.views.count == 2 and record.features == "cat2" and record.feature_dim == 1024


def test_repair_without_views_redoes_a_damaged_view_chunk_and_keeps_every_view(paths, registry, cifar, monkeypatch):
    spec, _ = save_checkpoint(paths, "net0", seed=0)
    extract(_config(paths, registry, [spec], views=4, splits=("train",)))  # 30 rows: 5 chunks of 7 rows
    store = store_path(paths.cache, "cifar10", "net0")
    views, features = _all_views(_split(paths, "net0")), _split(paths, "net0").read()
    bad = store / "train" / "views" / "c" / "2" / "4" / "0"  # view 2, chunk 4
    damaged = bytearray(bad.read_bytes())
    damaged[8] ^= 0xFF
    bad.write_bytes(bytes(damaged))
    untouched = {p: p.stat().st_mtime_ns for p in (store / "train").rglob("c/*/0") if p != bad}
    untouched.update({p: p.stat().st_mtime_ns for p in (store / "train" / "views").rglob("0") if p != bad})
    assert open_store(store).verify() != []
    from featcache.store import _writer

    real = _writer.ArrayWriter.write_chunk

    def dies(self, *a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(_writer.ArrayWriter, "write_chunk", dies)  # a repair killed before it rewrites anything
    with pytest.raises(KeyboardInterrupt):
        extract(_config(paths, registry, [spec], repair=True, splits=("train",)))
    monkeypatch.setattr(_writer.ArrayWriter, "write_chunk", real)
    half = open_store(store).split("train", require_complete=False)
    assert not half.complete and half.n_views == 4  # probes refuse it, and it still holds every view
    report = extract(_config(paths, registry, [spec], repair=True, splits=("train",)))  # no --views
    assert report.stores[0]["status"] == "repaired" and report.images == 2  # chunk 4: rows 28-29
    reader = _split(paths, "net0")
    assert reader.n_views == 4 and bytes(damaged) != bad.read_bytes()
    np.testing.assert_array_equal(_all_views(reader), views)
    np.testing.assert_array_equal(reader.read(), features)
    assert all(p.stat().st_mtime_ns == t for p, t in untouched.items())  # exactly the failing chunk
    assert open_store(store).verify() == []
