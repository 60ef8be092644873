"""The shifted ImageNet test sets (format imagenet-shift): classes, labels, the 200-class mask and their presets.

References are the research code's own facts, written out here: the first ImageNet-1k positions of ImageNet-R's
classes in its ``targetmask``, V2's folder k being class k, and each set's normalization constants.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import save_checkpoint

from featcache.class_subsets import CLASS_SUBSETS, IMAGENET1K_WNIDS, class_subset, target_columns, target_mask
from featcache.cli import main
from featcache.datasets import build_dataset
from featcache.errors import ConfigError, DatasetError
from featcache.store import Store, store_path
from featcache.testing.eval_sets import write_shifted_folder

R = CLASS_SUBSETS["imagenet-r"]


@pytest.fixture
def imagenet_r(paths, registry):
    """A tiny ImageNet-R: its 200 wnid folders in a shuffled creation order, one image each (two in a few)."""
    order = list(np.random.default_rng(1).permutation(R))
    counts = [2 if i % 50 == 0 else 1 for i in range(len(order))]
    ids = write_shifted_folder(paths.data / "imagenet-r", order, counts)
    return build_dataset(registry.dataset("imagenet-r"), "test"), ids


def test_imagenet_r_numbers_its_200_classes_in_imagenet_order(imagenet_r):
    ds, ids = imagenet_r
    assert ds.classes == sorted(R) and len(ds.classes) == 200
    assert len(ds) == sum(len(v) for v in ids.values()) == 204
    for i, sample in enumerate(ds.ids):
        assert ds.classes[ds.targets[i]] == sample.split("/")[0]  # the folder's wnid is the label's class
    assert ds.ids == [s for w in sorted(R) for s in ids[w]]


def test_research_targetmask_scores_a_1000_way_head_on_the_200_columns(imagenet_r):
    ds, _ = imagenet_r
    mask = target_mask(IMAGENET1K_WNIDS, ds.classes)
    # the research mask [wnid in imagenet_r_wnids for wnid in all_wnids]: ImageNet-1k 1, 2, 4, 6, 8 are in R, 0 is not
    assert mask.sum() == 200 and np.flatnonzero(mask)[:5].tolist() == [1, 2, 4, 6, 8] and not mask[0]
    cols = target_columns(IMAGENET1K_WNIDS, ds.classes)
    assert (np.flatnonzero(mask) == cols).all()  # sorted on both sides: the mask's column order is the labels'
    # a head whose overall argmax is a class ImageNet-R lacks, and whose best R column is the true class
    logits = np.zeros((len(ds), 1000))
    logits[:, 0] = 10.0
    logits[np.arange(len(ds)), cols[ds.targets]] = 5.0
    assert (logits.argmax(1) != cols[ds.targets]).all()
    assert (logits[:, mask].argmax(1) == ds.targets).all() and (logits[:, cols].argmax(1) == ds.targets).all()


def test_a_head_that_lacks_a_class_is_refused():
    with pytest.raises(ConfigError, match=r"1 class\(es\) of the test set are not among the head's 2 classes"):
        target_columns(["n01440764", "n01443537"], ["n01443537", "n01484850"])


def test_imagenet_r_with_a_folder_missing_or_extra_is_refused(paths, registry):
    write_shifted_folder(paths.data / "imagenet-r", R[1:])
    with pytest.raises(DatasetError, match=rf"199 class folders, not the 200 imagenet-r classes: it lacks 1 \({R[0]}"):
        build_dataset(registry.dataset("imagenet-r"), "test")
    write_shifted_folder(paths.data / "imagenet-r", [R[0], "n01440764"])
    with pytest.raises(DatasetError, match=r"it has 1 more \(n01440764\)"):
        build_dataset(registry.dataset("imagenet-r"), "test")


def test_imagenet_a_is_its_own_200_classes(paths, registry):
    a = CLASS_SUBSETS["imagenet-a"]
    assert len(a) == 200 and a != R and set(a) <= set(IMAGENET1K_WNIDS)
    write_shifted_folder(paths.data / "imagenet-a", a)
    ds = build_dataset(registry.dataset("imagenet-a"), "test")
    assert ds.classes == list(a) and ds.targets.tolist() == list(range(200))


def test_v2_folder_k_is_imagenet_class_k(paths, registry):
    spec = registry.dataset("imagenet-v2")
    folders = ["0", "1", "2", "10", "100", "999"]  # as strings ImageFolder would put "10" and "100" before "2"
    write_shifted_folder(paths.data / "v2", folders)
    ds = build_dataset(dataclasses.replace(spec, root=paths.data / "v2", options={"folder_names": "index"}), "test")
    assert ds.classes == [IMAGENET1K_WNIDS[int(f)] for f in folders]
    for i, sample in enumerate(ds.ids):
        assert ds.classes[ds.targets[i]] == IMAGENET1K_WNIDS[int(sample.split("/")[0])]
    assert [ds.ids[i].split("/")[0] for i in np.argsort(ds.targets, kind="stable")] == folders


def test_v2_needs_all_1000_classes_and_folder_names_must_fit(paths, registry):
    write_shifted_folder(paths.data / "imagenetv2-matched-frequency-format-val", ["0", "1"])
    with pytest.raises(DatasetError, match="holds 2 class folders, not the 1000 imagenet1k classes"):
        build_dataset(registry.dataset("imagenet-v2"), "test")
    write_shifted_folder(paths.data / "imagenet-sketch", ["0", "1"])
    with pytest.raises(ConfigError, match=r"2 class folder\(s\) are not ImageNet-1k wnids \(0, 1\); set folder_names"):
        build_dataset(registry.dataset("imagenet-sketch"), "test")


def test_class_subset_lists_and_bad_names():
    assert class_subset(["n01484850", "n01440764"], "x") == ("n01440764", "n01484850")  # ImageNet-1k order
    with pytest.raises(ConfigError, match="unknown class subset 'imagenet-q'"):
        class_subset("imagenet-q", "x")
    with pytest.raises(ConfigError, match=r"x: \['cat'\] are not ImageNet-1k wnids"):
        class_subset(["cat"], "x")


# Each set's preprocessing as the research code's src/datasets.py writes it.
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
V2 = ([0.485, 0.456, 0.406], [0.228, 0.224, 0.225])
SKETCH = ([0.8249, 0.8246, 0.8243], [0.2699, 0.2701, 0.2699])
RESEARCH_EVAL = {  # (dataset, transform): (resize, crop, interpolation, (mean, std))
    ("imagenet1k", "384px"): (384, 384, "bicubic", IMAGENET),
    ("imagenet1k", "vit384px"): (384, 384, "bicubic", ([0.5] * 3, [0.5] * 3)),
    ("imagenet-v2", "224px"): (256, 224, "bilinear", V2),
    ("imagenet-v2", "384px"): (384, 384, "bicubic", V2),
    ("imagenet-sketch", "224px"): (256, 224, "bilinear", SKETCH),
    ("imagenet-sketch", "384px"): (384, 384, "bicubic", SKETCH),
    ("imagenet-r", "224px"): (256, 224, "bilinear", IMAGENET),
    ("imagenet-r", "384px"): (384, 384, "bicubic", IMAGENET),
    ("imagenet-a", "224px"): (256, 224, "bilinear", IMAGENET),
    ("imagenet-a", "384px"): (384, 384, "bicubic", IMAGENET),
    ("camelyon17", "96px"): (96, 96, "bilinear", V2),
}


@pytest.mark.parametrize(("dataset", "name"), list(RESEARCH_EVAL))
def test_presets_are_the_research_values(registry, dataset, name):
    t = registry.transform(registry.dataset(dataset), name)
    resize, crop, interpolation, (mean, std) = RESEARCH_EVAL[dataset, name]
    assert (t.resize, t.crop, t.interpolation) == (resize, crop, interpolation)
    assert list(t.mean) == mean and list(t.std) == std


def test_384px_training_crops_are_bicubic_random_resized_crops(registry):
    for name in ("384px", "vit384px"):
        aug = registry.transform(registry.dataset("imagenet1k"), name).augment
        assert (aug.size, aug.scale, aug.interpolation, aug.hflip) == (384, (0.08, 1.0), "bicubic", 0.5)
    assert registry.transform(registry.dataset("imagenet1k"), None).crop == 224  # the default stays 224 px
    for dataset in ("imagenet-v2", "imagenet-sketch", "camelyon17"):  # test sets; Camelyon trains unaugmented
        assert registry.transform(registry.dataset(dataset), None).augment is None


def test_extract_records_the_200_classes(paths, imagenet_r):
    save_checkpoint(paths, "net0", seed=0)
    roots = ["--data-dir", str(paths.data), "--cache-dir", str(paths.cache), "--config-dir", str(paths.config)]
    args = ["extract", "--ckpt", str(paths.checkpoints / "net0.pth"), "--arch", "resnet10", "--dataset",
            "imagenet-r", "--limit", "6", "--workers", "0", "--quiet"]  # fmt: skip
    result = CliRunner().invoke(main, [*roots, *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    meta = Store(store_path(paths.cache, "imagenet-r", "net0")).split_meta("test")
    assert list(meta.classes) == sorted(R) and meta.rows == 6
