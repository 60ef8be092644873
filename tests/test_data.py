"""featcache.datasets: every format read from fixtures in its real on-disk layout, and every refusal."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from data_factory import (
    write_cifar10,
    write_cifar100,
    write_imagefolder,
    write_inat,
    write_truncated_jpeg,
)
from PIL import Image, ImageFile

from featcache.config import DatasetSpec
from featcache.datasets import (
    CIFAR10,
    FORMATS,
    ArrayDataset,
    DigitsDataset,
    FileDataset,
    ImageFolderDataset,
    INaturalist2018,
    build_dataset,
    find_classes,
    make_samples,
    to_rgb,
)
from featcache.errors import BadImageError, ConfigError, DatasetError


def spec(fmt: str, root: Path, splits=("train", "test"), **options) -> DatasetSpec:
    return DatasetSpec(
        name=f"fixture-{fmt}",
        format=fmt,
        root=Path(root),
        splits=tuple(splits),
        train_split=splits[0],
        test_split=splits[-1],
        transforms={},
        probe="cifar",
        options=options,
    )


# --- registry and build_dataset ------------------------------------------------------------------------------


def test_formats_registered():
    assert sorted(FORMATS) == ["cifar10", "cifar100", "digits", "digits-mix", "imagefolder", "imagenet-shift",
                               "inat18", "wilds-camelyon17"]  # fmt: skip


def test_unknown_format_and_split(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown dataset format 'cifar11'.*cifar10"):
        build_dataset(spec("cifar11", tmp_path), "train")
    with pytest.raises(ConfigError, match=r"unknown split 'validation'.*known: test, train"):
        build_dataset(spec("digits", tmp_path), "validation")
    with pytest.raises(ConfigError, match=r"unknown split 'val'.*train"):
        DigitsDataset(split="val")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['colour'\].*allowed: classes, test_fraction, seed"):
        build_dataset(spec("digits", tmp_path, colour=1), "train")


# --- digits ---------------------------------------------------------------------------------------------------


def test_digits_split_deterministic_stratified_disjoint(tmp_path):
    s = spec("digits", tmp_path, test_fraction=0.25, seed=0)
    train, test = build_dataset(s, "train"), build_dataset(s, "test")
    assert isinstance(train, ArrayDataset) and len(train) + len(test) == 1797
    assert abs(len(test) - 0.25 * 1797) <= 1
    assert not set(train.ids) & set(test.ids)
    rows = [int(i.split("/")[1]) for i in train.ids]
    assert rows == sorted(rows)
    assert train.images.shape == (len(train), 8, 8, 3) and train.images.dtype == np.uint8
    assert train.images.max() == 255 and train.classes == [str(d) for d in range(10)]
    # stratified: each class's test share is within one image of 25%
    for c in range(10):
        n_tr, n_te = (train.targets == c).sum(), (test.targets == c).sum()
        assert abs(n_te - 0.25 * (n_tr + n_te)) <= 1
    again = build_dataset(s, "test")
    assert again.ids == test.ids and again.fingerprint() == test.fingerprint()
    other = build_dataset(spec("digits", tmp_path, test_fraction=0.25, seed=1), "test")
    assert other.ids != test.ids


def test_digits_presets_from_the_registry(tmp_path):
    from featcache.config import Paths, load_registry

    reg = load_registry(Paths.from_env(config=Path(__file__).resolve().parents[1] / "configs", data=tmp_path))
    full = build_dataset(reg.dataset("digits"), "test")
    pre, trans = (build_dataset(reg.dataset(n), "test") for n in ("digits-pretrain", "digits-transfer"))
    assert pre.classes == ["0", "1", "2", "3", "4"] and trans.classes == ["5", "6", "7", "8", "9"]
    assert sorted(pre.ids + trans.ids, key=lambda i: int(i.split("/")[1])) == full.ids
    assert trans.targets.max() == 4 and pre.name == "digits-pretrain"


def test_digits_pixels_and_class_subset(tmp_path):
    from sklearn.datasets import load_digits

    raw = load_digits()
    full = DigitsDataset(split="train")
    sub = DigitsDataset(split="train", classes=[7, 2])
    assert sub.classes == ["7", "2"] and set(sub.targets.tolist()) == {0, 1}
    # same split as the full set, restricted to the subset
    assert sub.ids == [i for i, t in zip(full.ids, full.targets, strict=True) if t in (7, 2)]
    for k in (0, len(sub) - 1):
        row = int(sub.ids[k].split("/")[1])
        assert sub.targets[k] == [7, 2].index(raw.target[row])
        expected = np.round(raw.images[row] * 255 / 16).astype(np.uint8)
        assert np.array_equal(sub.images[k, :, :, 0], expected)
        assert np.array_equal(sub.images[k, :, :, 2], expected)
    img, label = sub[0]
    assert img.mode == "RGB" and img.size == (8, 8) and label == sub.targets[0]
    with pytest.raises(ConfigError, match="distinct integers 0..9"):
        DigitsDataset(classes=[1, 1])
    with pytest.raises(ConfigError, match="test_fraction"):
        DigitsDataset(test_fraction=1.5)


# --- CIFAR ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, writer", [("cifar10", write_cifar10), ("cifar100", write_cifar100)])
def test_cifar_loads_in_file_order(tmp_path, fmt, writer):
    truth = writer(tmp_path)
    for split in ("train", "test"):
        ds = build_dataset(spec(fmt, tmp_path), split)
        want = truth[split]
        n = len(want["labels"])
        assert ds.images.shape == (n, 32, 32, 3) and ds.images.dtype == np.uint8
        assert ds.targets.dtype == np.int64 and ds.targets.tolist() == want["labels"]
        assert ds.ids == [f"{i}:{f}" for i, f in enumerate(want["filenames"])]
        assert np.array_equal(ds.images, want["images"])
        assert ds.classes == truth["classes"]
    assert len(ds.classes) == (10 if fmt == "cifar10" else 100)


def test_cifar_planar_to_hwc(tmp_path):
    """A known pixel: row (y=1, x=2) gets R, G, B from offsets 0, 1024 and 2048 of the planar row."""
    truth = write_cifar10(tmp_path, n_train_per_batch=1, n_test=1)
    path = truth["dir"] / "test_batch"
    entry = pickle.loads(path.read_bytes())
    entry["data"][0, [34, 1024 + 34, 2048 + 34]] = [11, 22, 33]
    path.write_bytes(pickle.dumps(entry))
    ds = CIFAR10(tmp_path, "test")
    assert ds.images[0, 1, 2].tolist() == [11, 22, 33]
    assert np.asarray(ds[0][0])[1, 2].tolist() == [11, 22, 33]


def test_cifar_missing_and_malformed(tmp_path):
    with pytest.raises(DatasetError, match=rf"{tmp_path / 'cifar-10-batches-py'} not found.*data_batch_1.*test_batch"):
        CIFAR10(tmp_path, "train")
    truth = write_cifar10(tmp_path)
    (truth["dir"] / "data_batch_4").unlink()
    with pytest.raises(DatasetError, match=r"cifar-10-batches-py/data_batch_4 not found.*extract cifar-10-python"):
        CIFAR10(tmp_path, "train")
    CIFAR10(tmp_path, "test")
    truth = write_cifar10(tmp_path)
    (truth["dir"] / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match=r"data_batch_3 is not a readable CIFAR pickle"):
        CIFAR10(tmp_path, "train")
    CIFAR10(tmp_path, "test")  # the test split does not read it
    entry = {"data": np.zeros((2, 100), np.uint8), "labels": [0, 1], "filenames": ["a", "b"]}
    (truth["dir"] / "data_batch_3").write_bytes(pickle.dumps(entry))
    with pytest.raises(DatasetError, match=r"data_batch_3 has data uint8 \(2, 100\)"):
        CIFAR10(tmp_path, "train")
    (truth["dir"] / "data_batch_3").write_bytes(pickle.dumps({"labels": [0]}))
    with pytest.raises(DatasetError, match=r"data_batch_3 lacks key\(s\) \['data', 'filenames'\]"):
        CIFAR10(tmp_path, "train")


def test_cifar_pickle_cannot_run_code(tmp_path):
    truth = write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (truth["dir"] / "test_batch").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(DatasetError, match="refusing global builtins.print"):
        CIFAR10(tmp_path, "test")


def test_array_fingerprint(tmp_path):
    truth = write_cifar10(tmp_path)
    a, b = CIFAR10(tmp_path, "train"), CIFAR10(tmp_path, "train")
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 64
    assert CIFAR10(tmp_path, "test").fingerprint() != a.fingerprint()
    path = truth["dir"] / "data_batch_2"
    original = path.read_bytes()
    entry = pickle.loads(original)
    entry["labels"][0] = (entry["labels"][0] + 1) % 10
    path.write_bytes(pickle.dumps(entry))
    assert CIFAR10(tmp_path, "train").fingerprint() != a.fingerprint()
    entry = pickle.loads(original)
    entry["data"][1, 5] ^= 1
    path.write_bytes(pickle.dumps(entry))
    assert CIFAR10(tmp_path, "train").fingerprint() != a.fingerprint()
    path.write_bytes(original)
    assert CIFAR10(tmp_path, "train").fingerprint() == a.fingerprint()


# --- ImageFolder ----------------------------------------------------------------------------------------------


def test_imagefolder_order_and_modes(tmp_path):
    truth = write_imagefolder(tmp_path / "inet")
    for split in ("train", "val"):
        ds = build_dataset(spec("imagefolder", tmp_path / "inet", splits=("train", "val")), split)
        want = truth[split]
        assert isinstance(ds, FileDataset) and ds.classes == ["cat", "dog", "zebra"]
        assert ds.ids == [r["id"] for r in want] and ds.targets.tolist() == [r["label"] for r in want]
        assert ds.paths[0] == tmp_path / "inet" / split / want[0]["id"]
    modes = set()
    for i, r in enumerate(want):
        img = ds.load(i)
        assert img.mode == "RGB" and img.size == r["size"], r
        modes.add(r["mode"])
        assert ds.read_bytes(i) == ds.paths[i].read_bytes()
    assert modes == {"RGB", "L", "RGBA", "P", "CMYK"}
    img, label = ds[len(ds) - 1]
    assert label == 2 and img.mode == "RGB"


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    a = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    for ext in (".png", ".pgm"):  # Pillow opens these as 'I;16' and 'I'
        path = tmp_path / "val" / "c" / f"deep{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(path)
    ds = ImageFolderDataset(tmp_path, "val")
    for i in range(len(ds)):
        assert np.array_equal(np.asarray(ds.load(i))[..., 1], (a >> 8).astype(np.uint8)), ds.ids[i]
    assert to_rgb(Image.new("LA", (3, 2))).mode == "RGB"


def test_imagefolder_split_all_and_helpers(tmp_path):
    truth = write_imagefolder(tmp_path, splits=("all",), classes=("b", "a"), per_class=2)
    ds = ImageFolderDataset(tmp_path, "all")
    assert ds.classes == ["a", "b"] and ds.ids == [r["id"] for r in truth["all"]]
    classes, idx = find_classes(tmp_path)
    assert classes == ["a", "b"] and idx == {"a": 0, "b": 1}
    samples = make_samples(tmp_path, idx, extensions=(".png",))
    assert samples and all(p.suffix.lower() == ".png" for p, _ in samples)


def test_imagefolder_splits_share_one_class_map(tmp_path, caplog):
    # train lacks 'ant', val lacks 'dog': numbered per split, cat would be 0 in train and 1 in val, zebra 2 and 2
    write_imagefolder(tmp_path, splits=("train",), classes=("cat", "dog", "zebra"), per_class=2)
    write_imagefolder(tmp_path, splits=("val",), classes=("ant", "cat", "zebra"), per_class=2)
    union = ["ant", "cat", "dog", "zebra"]
    s = spec("imagefolder", tmp_path, splits=("train", "val"))
    by_split = {split: build_dataset(s, split) for split in ("train", "val")}
    for split, ds in by_split.items():
        assert ds.classes == union, split
        assert all(ds.classes[t] == i.split("/")[0] for t, i in zip(ds.targets, ds.ids, strict=True)), split
    assert sorted(set(by_split["train"].targets.tolist())) == [1, 2, 3]
    assert sorted(set(by_split["val"].targets.tolist())) == [0, 1, 3]
    # constructed alone, a split numbers its own folders (torchvision's ImageFolder)
    assert ImageFolderDataset(tmp_path, "val").classes == ["ant", "cat", "zebra"]
    # a split of the dataset whose folder is absent is left out of the map, with a warning
    with caplog.at_level("WARNING"):
        assert build_dataset(spec("imagefolder", tmp_path, splits=("train", "test")), "train").classes == [
            "cat",
            "dog",
            "zebra",
        ]
    assert f"{tmp_path / 'test'} not found" in caplog.text
    # one without class folders (bare test images) adds no class and is no error while building another split
    (tmp_path / "test").mkdir()
    write_imagefolder(tmp_path / "test", splits=("all",), classes=(), per_class=0)
    assert build_dataset(spec("imagefolder", tmp_path, splits=("train", "test")), "train").classes[0] == "cat"


def test_limit_warns_of_the_classes_it_leaves_out_not_of_those_the_split_never_had(tmp_path, caplog):
    # the class map is the dataset's: train never had 'ant' (only val has it), which is no fault of --limit
    write_imagefolder(tmp_path, splits=("train",), classes=("cat", "dog", "zebra"), per_class=2)
    write_imagefolder(tmp_path, splits=("val",), classes=("ant", "cat", "zebra"), per_class=2)
    train = build_dataset(spec("imagefolder", tmp_path, splits=("train", "val")), "train")
    assert train.limited(None) is train and train.limited(len(train)) is train
    with caplog.at_level("WARNING"):
        three = train.limited(3)  # one sample of each class train has
    assert sorted(three.targets.tolist()) == [1, 2, 3] and caplog.text == ""
    with caplog.at_level("WARNING"):
        two = train.limited(2)  # ties go to the smaller class index: zebra is left out
    assert [train.classes[t] for t in two.targets] == ["cat", "dog"]
    assert "--limit 2 leaves 1 class(es) of fixture-imagefolder/train without a sample: zebra" in caplog.text
    # a subset is another sample set, with a fingerprint of its own that the same limit gives again
    again = build_dataset(spec("imagefolder", tmp_path, splits=("train", "val")), "train").limited(3)
    assert three.fingerprint() == again.fingerprint() not in (train.fingerprint(), two.fingerprint())


def test_imagefolder_same_classes_keep_their_fingerprint(tmp_path):
    # splits that list the same classes are numbered as before: existing stores of them stay valid
    write_imagefolder(tmp_path, per_class=2)
    for split in ("train", "val"):
        shared = build_dataset(spec("imagefolder", tmp_path, splits=("train", "val")), split)
        assert shared.fingerprint() == ImageFolderDataset(tmp_path, split).fingerprint()


def test_imagefolder_missing_or_empty(tmp_path):
    with pytest.raises(DatasetError, match=rf"{tmp_path / 'val'} not found.*\.jpg/\.jpeg/\.png"):
        ImageFolderDataset(tmp_path, "val")
    (tmp_path / "val").mkdir()
    with pytest.raises(DatasetError, match=rf"{tmp_path / 'val'} has no class sub-directories.*\.webp"):
        ImageFolderDataset(tmp_path, "val")
    (tmp_path / "val" / "cls").mkdir()
    (tmp_path / "val" / "cls" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=rf"class folder {tmp_path / 'val' / 'cls'} holds no .*\.tiff"):
        ImageFolderDataset(tmp_path, "val")


def test_truncated_and_missing_images_raise(tmp_path):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    write_imagefolder(tmp_path, splits=("val",), per_class=1)
    bad = write_truncated_jpeg(tmp_path / "val" / "cat" / "cat_zzz.jpg")
    with Image.open(bad) as im:  # the header alone still parses
        assert im.size == (40, 30)
    ds = ImageFolderDataset(tmp_path, "val")
    k = ds.ids.index("cat/cat_zzz.jpg")
    with pytest.raises(BadImageError, match=r"cannot decode image .*cat_zzz\.jpg: OSError.*truncated") as info:
        ds.load(k)
    assert info.value.path == str(bad) and info.value.row == k
    (tmp_path / "val" / "dog" / "garbage.png").write_bytes(b"\x89PNG not really")
    ds = ImageFolderDataset(tmp_path, "val")
    with pytest.raises(BadImageError, match="garbage.png"):
        ds.load(ds.ids.index("dog/garbage.png"))
    ds.paths[0].unlink()
    with pytest.raises(BadImageError, match="No such file"):
        ds.read_bytes(0)
    with pytest.raises(DatasetError, match="cannot stat"):
        ds.fingerprint()


def test_file_fingerprint_tracks_labels_and_sizes(tmp_path):
    write_imagefolder(tmp_path, splits=("train",), per_class=2)
    a = ImageFolderDataset(tmp_path, "train")
    before = a.fingerprint()
    assert before == ImageFolderDataset(tmp_path, "train").fingerprint()
    with open(a.paths[1], "ab") as f:  # a file's size changes
        f.write(b"\0")
    grown = ImageFolderDataset(tmp_path, "train").fingerprint()
    assert grown != before
    a.paths[0].rename(tmp_path / "train" / "dog" / a.paths[0].name)  # same files, one label changes
    assert ImageFolderDataset(tmp_path, "train").fingerprint() not in (before, grown)


# --- iNaturalist 2018 -----------------------------------------------------------------------------------------


def test_inat_contiguous_labels_sorted_ids(tmp_path):
    truth = write_inat(tmp_path)
    for split in ("train", "val"):
        ds = build_dataset(spec("inat18", tmp_path, splits=("train", "val")), split)
        want = truth[split]
        assert ds.classes == ["Acer rubrum", "Bufo bufo", "Zebra zebra"]  # category ids 3, 17, 42
        assert ds.ids == [f"{r['image_id']}:{r['file_name']}" for r in want]
        assert ds.targets.tolist() == [r["label"] for r in want]
        assert sorted(set(ds.targets.tolist())) == [0, 1, 2]
        assert ds.paths[0] == tmp_path / want[0]["file_name"]
        assert ds.load(0).mode == "RGB"
    assert isinstance(ds, INaturalist2018)


def _edit_json(path: Path, fn) -> None:
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("bad", ["../x.jpg", "train_val2018/../../x.jpg", "/etc/passwd"])
def test_inat_refuses_escaping_file_names(tmp_path, bad):
    write_inat(tmp_path)
    js = tmp_path / "val2018.json"
    _edit_json(js, lambda d: d["images"][0].update(file_name=bad))
    with pytest.raises(ConfigError, match=rf"val2018\.json: image \d+ file_name '{bad}' (escapes|is an absolute)"):
        INaturalist2018(tmp_path, "val")


def test_inat_missing_and_malformed(tmp_path):
    with pytest.raises(DatasetError, match=rf"{tmp_path / 'train2018.json'} not found"):
        INaturalist2018(tmp_path, "train")
    with pytest.raises(ConfigError, match="unknown split 'test'"):
        INaturalist2018(tmp_path, "test")
    truth = write_inat(tmp_path)
    js = tmp_path / "train2018.json"
    orphan = truth["train"][0]["image_id"]
    _edit_json(js, lambda d: d.update(annotations=[a for a in d["annotations"] if a["image_id"] != orphan]))
    with pytest.raises(DatasetError, match=rf"train2018\.json: image {orphan} .* has no annotation"):
        INaturalist2018(tmp_path, "train")
    _edit_json(js, lambda d: d["annotations"].append({"image_id": orphan, "category_id": 99}))
    with pytest.raises(DatasetError, match="unknown category 99"):
        INaturalist2018(tmp_path, "train")
    _edit_json(js, lambda d: d["images"].append(dict(d["images"][0])))
    with pytest.raises(DatasetError, match=r"image id \d+ is listed twice"):
        INaturalist2018(tmp_path, "train")
    js.write_text("{not json")
    with pytest.raises(DatasetError, match=r"train2018\.json is not a COCO-style iNat JSON"):
        INaturalist2018(tmp_path, "train")


def _bytes_items(value):
    return [v.encode() if isinstance(v, str) else v for v in value] if isinstance(value, list) else value


def test_cifar_pickled_by_python3_with_bytes_keys_loads_the_same(tmp_path):
    import pickle

    from data_factory import write_cifar10

    write_cifar10(tmp_path / "a" / "cifar", n_train_per_batch=2, n_test=3)
    src, dst = tmp_path / "a" / "cifar" / "cifar-10-batches-py", tmp_path / "b" / "cifar" / "cifar-10-batches-py"
    dst.mkdir(parents=True)
    for f in src.iterdir():
        with open(f, "rb") as fh:
            doc = pickle.load(fh, encoding="latin1")
        as_bytes = {k.encode(): _bytes_items(val) for k, val in doc.items()}
        with open(dst / f.name, "wb") as fh:
            pickle.dump(as_bytes, fh, protocol=3)
    a, b = (build_dataset(spec("cifar10", tmp_path / d / "cifar"), "train") for d in ("a", "b"))
    assert a.ids == b.ids and a.classes == b.classes and a.classes[0] == "airplane"
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.targets, b.targets)
