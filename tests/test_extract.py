"""featcache.extract: features equal the network's own output, in dataset order, resumable, refusing bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from ckpt_factory import reference_features
from conftest import save_checkpoint
from data_factory import smooth_images, write_cifar10, write_imagefolder, write_inat, write_truncated_jpeg
from PIL import Image

from featcache import store as store_mod
from featcache.config import CheckpointSpec
from featcache.data import build_dataset
from featcache.errors import BadImageError, CheckpointError, DatasetError, StoreError
from featcache.extract import ExtractConfig, extract, stratified_rows
from featcache.models import file_sha256
from featcache.store import FORMAT_VERSION, CheckpointRef, PreprocessRef, open_store, store_path
from featcache.transforms import BatchPreprocess, pil_reference


@pytest.fixture
def cifar(paths):
    return write_cifar10(paths.data / "cifar", n_train_per_batch=8, n_test=12)


def _config(paths, registry, specs, dataset="cifar10", transform="32px", **kw) -> ExtractConfig:
    ds = registry.dataset(dataset)
    kw = {"dtype": "float32", "batch_size": 16, "workers": 0, **kw}
    return ExtractConfig(tuple(specs), ds, registry.transform(ds, transform), paths.cache, **kw)


def _features(paths, dataset, name, split):
    return open_store(store_path(paths.cache, dataset, name)).split(split)


def test_cifar_features_equal_direct_model_output(paths, registry, cifar, ckpt):
    spec, net = ckpt
    report = extract(_config(paths, registry, [spec], chunk_rows=24))
    assert report.stores[0]["status"] == "written" and report.images == 52
    tf = registry.transform(registry.dataset("cifar10"), "32px")
    for split in ("train", "test"):
        r = _features(paths, "cifar10", "net0", split)
        # the research pipeline: PIL transforms per image, which featcache's CPU default reproduces exactly
        x = torch.stack([pil_reference(tf)(Image.fromarray(im)) for im in cifar[split]["images"]])
        want = reference_features(net, x).numpy()
        assert r.read().shape == want.shape == (len(x), 512)
        assert np.abs(r.read() - want).max() < 1e-4
        np.testing.assert_array_equal(r.labels, cifar[split]["labels"])
        assert r.ids == [f"{i}:{f}" for i, f in enumerate(cifar[split]["filenames"])]
    assert _features(paths, "cifar10", "net0", "train").n_chunks == 2  # 40 rows, 24-row chunks


def test_pil_backend_equals_the_research_reference(paths, registry, cifar, ckpt):
    spec, net = ckpt
    extract(_config(paths, registry, [spec], transform="224px", backend="pil", splits=("test",)))
    tf = registry.transform(registry.dataset("cifar10"), "224px")
    ds = build_dataset(registry.dataset("cifar10"), "test")
    x = torch.stack([pil_reference(tf)(ds.load(i)) for i in range(len(ds))])
    got = _features(paths, "cifar10", "net0", "test").read()
    assert np.abs(got - reference_features(net, x).numpy()).max() < 1e-4


def test_store_records_provenance(paths, registry, cifar, ckpt):
    spec, _ = ckpt
    extract(_config(paths, registry, [spec], dtype="float16"))
    s = open_store(store_path(paths.cache, "cifar10", "net0"))
    p = s.provenance
    st = spec.path.stat()
    assert p.checkpoint == CheckpointRef("net0", "resnet10", file_sha256(spec.path), str(spec.path), ema=False,
                                         size=st.st_size, mtime_ns=st.st_mtime_ns)  # fmt: skip
    assert p.layer == "avgpool" and p.feature_dim == 512 and p.dtype == "float16"
    assert p.precision == "fp32" and p.preprocess == PreprocessRef("pil", "cpu")
    assert p.transform["name"] == "cifar-32px" and p.transform["resize"] == 36
    assert p.software.torch == torch.__version__ and p.dataset.name == "cifar10"
    assert p.format_version == FORMAT_VERSION and p.splits == ("train", "test")
    meta = s.split("train").meta
    assert meta.fingerprint == build_dataset(registry.dataset("cifar10"), "train").fingerprint()
    assert meta.classes[:2] == ("airplane", "automobile")
    assert s.split("train").read().dtype == np.float16


def test_several_checkpoints_share_each_batch(paths, registry, cifar, monkeypatch):
    specs_nets = [save_checkpoint(paths, f"net{k}", seed=k) for k in range(3)]
    calls = []
    forward = BatchPreprocess.forward
    monkeypatch.setattr(
        BatchPreprocess, "forward", lambda self, x, **kw: calls.append(len(x)) or forward(self, x, **kw)
    )
    extract(_config(paths, registry, [s for s, _ in specs_nets], splits=("train",)))
    assert sum(calls) == 40  # every image preprocessed once, not once per checkpoint
    single = _config(paths, registry, [specs_nets[1][0]], splits=("train",), store_name="alone")
    extract(single)
    np.testing.assert_array_equal(
        _features(paths, "cifar10", "net1", "train").read(), _features(paths, "cifar10", "alone", "train").read()
    )
    assert not np.allclose(_features(paths, "cifar10", "net0", "train").read(),
                           _features(paths, "cifar10", "net1", "train").read())  # fmt: skip


def test_interrupted_run_resumes_to_the_same_bytes(paths, registry, cifar, ckpt, monkeypatch):
    spec, _ = ckpt
    cfg = _config(paths, registry, [spec], splits=("train",), chunk_rows=8, batch_size=3)
    write = store_mod.SplitWriter.write_chunk
    written = []

    def crash_after_two(self, i, block, skipped=()):
        if len(written) == 2:
            raise OSError(28, "No space left on device")
        written.append(i)
        write(self, i, block, skipped)

    monkeypatch.setattr(store_mod.SplitWriter, "write_chunk", crash_after_two)
    with pytest.raises(OSError, match="No space left"):
        extract(cfg)
    monkeypatch.setattr(store_mod.SplitWriter, "write_chunk", write)
    path = store_path(paths.cache, "cifar10", "net0")
    with pytest.raises(StoreError, match=r"not complete \(2/5 chunks"):
        open_store(path).split("train")
    report = extract(cfg)
    assert report.stores[0]["status"] == "resumed" and report.images == 40 - 16
    extract(dataclasses.replace(cfg, store_name="fresh"))
    resumed = _features(paths, "cifar10", "net0", "train").read()
    assert resumed.tobytes() == _features(paths, "cifar10", "fresh", "train").read().tobytes()
    assert open_store(path).verify() == []


def test_complete_store_is_a_no_op(paths, registry, cifar, ckpt):
    spec, _ = ckpt
    cfg = _config(paths, registry, [spec])
    extract(cfg)
    chunk = store_path(paths.cache, "cifar10", "net0") / "train" / "features" / "c" / "0" / "0"
    before = chunk.stat().st_mtime_ns
    report = extract(cfg)
    assert report.stores[0]["status"] == "already complete" and report.images == 0
    assert chunk.stat().st_mtime_ns == before
    report = extract(dataclasses.replace(cfg, overwrite=True))
    assert report.stores[0]["status"] == "written" and report.images == 52


def test_checkpoint_for_another_architecture_leaves_no_store(paths, registry, cifar):
    spec, _ = save_checkpoint(paths, "big", seed=0, arch="resnet18")
    wrong = CheckpointSpec("big", "resnet10", spec.path)
    with pytest.raises(CheckpointError, match="unexpected|missing"):
        extract(_config(paths, registry, [wrong]))
    assert not (paths.cache / "cifar10").exists()


def test_missing_checkpoint_keys_listed(paths, registry, cifar, ckpt):
    spec, net = ckpt
    sd = {k: v for k, v in net.state_dict().items() if not k.startswith("layer4.1")}
    sd.pop("layer4.0.conv2.weight")
    torch.save(sd, spec.path)
    with pytest.raises(CheckpointError, match=r"missing.*layer4\.0\.conv2\.weight"):
        extract(_config(paths, registry, [spec]))
    assert not (paths.cache / "cifar10").exists()


def test_missing_dataset_leaves_no_store(paths, registry, ckpt):
    with pytest.raises(DatasetError, match="cifar-10-batches-py"):
        extract(_config(paths, registry, [ckpt[0]]))
    assert not paths.cache.joinpath("cifar10").exists()


def test_limit_is_a_stratified_and_different_sample_set(paths, registry, cifar, ckpt):
    spec, _ = ckpt
    extract(_config(paths, registry, [spec], splits=("train",), limit=10, store_name="ten"))
    extract(_config(paths, registry, [spec], splits=("train",)))
    small, full = _features(paths, "cifar10", "ten", "train"), _features(paths, "cifar10", "net0", "train")
    assert small.rows == 10 and small.meta.fingerprint != full.meta.fingerprint
    rows = stratified_rows(full.labels, 10)
    assert rows.tolist() != list(range(10))  # not simply the first 10
    np.testing.assert_array_equal(small.read(), full.read()[rows])
    assert small.ids == [full.ids[r] for r in rows] and small.labels.tolist() == full.labels[rows].tolist()


def test_stratified_rows_follow_class_shares():
    y = np.array([0] * 50 + [1] * 30 + [2] * 20)[np.random.default_rng(0).permutation(100)]
    rows = stratified_rows(y, 10)
    assert np.bincount(y[rows]).tolist() == [5, 3, 2] and (np.diff(rows) > 0).all()
    assert stratified_rows(y, 10).tolist() == rows.tolist()  # the same every time
    for c in range(3):  # each class: its first rows in dataset order
        assert rows[y[rows] == c].tolist() == np.flatnonzero(y == c)[: (y[rows] == c).sum()].tolist()
    assert np.bincount(y[stratified_rows(y, 7)]).tolist() == [4, 2, 1]
    np.testing.assert_array_equal(stratified_rows(y, 500), np.arange(100))


@pytest.fixture
def folder(paths):
    rows = write_imagefolder(paths.data / "folder", splits=("train", "val"), per_class=4)
    return rows


@pytest.mark.parametrize("backend", ["pil", "device"])
def test_imagefolder_in_order_with_every_image_mode(paths, registry, folder, ckpt, backend):
    spec, net = ckpt
    cfg = _config(paths, registry, [spec], dataset="imagefolder:folder", transform="224px", backend=backend,
                  workers=2 if backend == "pil" else 0, batch_size=5)  # fmt: skip
    extract(cfg)
    r = _features(paths, "imagefolder:folder", "net0", "val")
    assert r.ids == [row["id"] for row in folder["val"]]
    np.testing.assert_array_equal(r.labels, [row["label"] for row in folder["val"]])
    tf = registry.transform(registry.dataset("imagefolder:folder"), "224px")
    ds = build_dataset(registry.dataset("imagefolder:folder"), "val")
    want = reference_features(net, torch.stack([pil_reference(tf)(ds.load(i)) for i in range(len(ds))])).numpy()
    got = r.read()
    if backend == "pil":
        assert np.abs(got - want).max() < 1e-4
    else:  # decoded by libjpeg-turbo and resized by torch: close to PIL, not equal
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() > 0.99


def test_inat_labels_follow_sorted_category_ids(paths, registry, ckpt):
    rows = write_inat(paths.data / "inaturalist18")
    extract(_config(paths, registry, [ckpt[0]], dataset="inaturalist18", transform="224px", splits=("val",)))
    r = _features(paths, "inaturalist18", "net0", "val")
    np.testing.assert_array_equal(r.labels, [row["label"] for row in rows["val"]])
    assert r.ids == [f"{row['image_id']}:{row['file_name']}" for row in rows["val"]]


@pytest.mark.parametrize("backend", ["pil", "device"])
def test_bad_image_stops_the_run_or_is_skipped_and_recorded(paths, registry, folder, ckpt, backend):
    bad = write_truncated_jpeg(paths.data / "folder" / "val" / "dog" / "dog_zzz.jpg")
    spec, _ = ckpt
    cfg = _config(paths, registry, [spec], dataset="imagefolder:folder", transform="224px", splits=("val",),
                  backend=backend)  # fmt: skip
    with pytest.raises(BadImageError, match=rf"{bad.name}.*--on-bad-image skip"):
        extract(cfg)
    path = store_path(paths.cache, "imagefolder:folder", "net0")
    assert not open_store(path).split("val", require_complete=False).complete
    extract(dataclasses.replace(cfg, on_bad_image="skip"))
    r = open_store(path).split("val")
    row = r.ids.index("dog/dog_zzz.jpg")
    assert r.meta.skipped_rows == (row,) and not r.read()[row].any() and r.read()[row - 1].any()


@pytest.mark.parametrize("backend", ["pil", "device"])
def test_a_skipped_image_in_a_later_chunk_zeroes_only_its_row(paths, registry, folder, ckpt, backend):
    """The skipped row is zeroed at its place inside its chunk, not at its row number (they differ past chunk 0)."""
    spec, _ = ckpt
    target = paths.data / "folder" / "val" / "dog" / "dog_zzz.jpg"
    cfg = _config(paths, registry, [spec], dataset="imagefolder:folder", transform="224px", splits=("val",),
                  backend=backend, chunk_rows=3, on_bad_image="skip")  # fmt: skip
    write_truncated_jpeg(target)
    extract(dataclasses.replace(cfg, store_name="skipped"))
    Image.fromarray(smooth_images(np.random.default_rng(5), 1, 30, 40)[0]).save(target)  # now a sound image
    extract(dataclasses.replace(cfg, store_name="whole"))
    skipped, whole = (_features(paths, "imagefolder:folder", s, "val") for s in ("skipped", "whole"))
    row = skipped.ids.index("dog/dog_zzz.jpg")
    assert row // 3 >= 1 and row % 3 != row  # in a later chunk, at another offset inside it
    assert skipped.meta.skipped_rows == (row,)
    got, want = skipped.read(), whole.read()
    assert not got[row].any() and want[row].any()
    others = np.arange(len(got)) != row
    np.testing.assert_array_equal(got[others], want[others])


def test_several_layers_from_one_forward_pass_are_stores_of_their_own(paths, registry, cifar, ckpt):
    spec, net = ckpt
    report = extract(_config(paths, registry, [spec], layers=("layer3", "layer4"), pool="avg", splits=("test",)))
    assert [s["name"] for s in report.stores] == ["net0@layer3", "net0@layer4"]
    tf = registry.transform(registry.dataset("cifar10"), "32px")
    x = torch.stack([pil_reference(tf)(Image.fromarray(im)) for im in cifar["test"]["images"]])
    pooled = {}
    hooks = [getattr(net, name).register_forward_hook(lambda m, i, o, n=name: pooled.__setitem__(n, o.mean((2, 3))))
             for name in ("layer3", "layer4")]  # fmt: skip
    with torch.no_grad():
        net.eval()(x)
    for h in hooks:
        h.remove()
    for name, dim in (("layer3", 256), ("layer4", 512)):
        s = open_store(store_path(paths.cache, "cifar10", f"net0@{name}"))
        assert s.provenance.layer == name and s.provenance.pool == "avg" and s.provenance.feature_dim == dim
        assert np.abs(s.split("test").read() - pooled[name].numpy()).max() < 1e-4
