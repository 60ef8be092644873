"""Camelyon17-WILDS (format wilds-camelyon17) read from a tiny tree in WILDS' layout.

The reference split of each row is WILDS' rule written out here: hospital 1 is the OOD val, hospital 2 test, the
others train or id_val by the csv's split column; scheme in-dist moves slide 23 to train.
"""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner
from conftest import save_checkpoint

from featcache.cli import main
from featcache.datasets import build_dataset
from featcache.errors import ConfigError, DatasetError
from featcache.store import Store, store_path
from featcache.testing.eval_sets import CAMELYON_HEADER, camelyon17_rows, write_camelyon17

SPLITS = ("train", "id_val", "test", "val")


def wilds_split(row: dict, scheme: str = "official") -> str:
    if scheme == "in-dist" and row["slide"] == 23:
        return "train"
    return {1: "val", 2: "test"}.get(row["center"]) or ("id_val" if row["split"] == 1 else "train")


def patch(row: dict) -> str:
    p, n = row["patient"], row["node"]
    return f"patches/patient_{p}_node_{n}/patch_patient_{p}_node_{n}_x_{row['x_coord']}_y_{row['y_coord']}.png"


@pytest.fixture
def camelyon(paths, registry):
    rows = camelyon17_rows(per_center=3)
    write_camelyon17(paths.data / "camelyon17_v1.0", rows)
    return registry.dataset("camelyon17"), rows


@pytest.mark.parametrize("scheme", ["official", "in-dist"])
def test_splits_follow_wilds_in_csv_order(camelyon, scheme):
    spec, rows = camelyon
    spec = dataclasses.replace(spec, options={"split_scheme": scheme})
    seen = []
    for split in SPLITS:
        ds = build_dataset(spec, split)
        want = [(i, r) for i, r in enumerate(rows) if wilds_split(r, scheme) == split]
        assert ds.ids == [f"{i}:{patch(r)}" for i, r in want]
        assert ds.targets.tolist() == [r["tumor"] for _, r in want] and ds.classes == ["normal", "tumor"]
        assert ds.hospitals == [r["center"] for _, r in want] and ds.slides == [r["slide"] for _, r in want]
        assert all(p.is_file() for p in ds.paths) and ds.load(0).size == (96, 96)
        seen += [i for i, _ in want]
    assert sorted(seen) == list(range(len(rows)))  # every patch in exactly one split


def test_the_ood_splits_ignore_the_csv_split_column(camelyon):
    spec, rows = camelyon
    assert {r["split"] for r in rows if r["center"] in (1, 2)} == {0}  # they say train; WILDS overrides it
    assert set(build_dataset(spec, "val").hospitals) == {1} and set(build_dataset(spec, "test").hospitals) == {2}
    assert 23 in build_dataset(dataclasses.replace(spec, options={"split_scheme": "in-dist"}), "train").slides
    assert 23 not in build_dataset(spec, "train").slides


def test_registry_names_the_extra_evaluation_splits(registry):
    spec = registry.dataset("camelyon17")
    assert (spec.splits, spec.train_split, spec.test_split, spec.eval_splits) == (SPLITS, "train", "test",
                                                                                  ("id_val", "val"))  # fmt: skip


def test_missing_or_malformed_metadata_is_one_clear_error(paths, registry):
    spec = registry.dataset("camelyon17")
    with pytest.raises(DatasetError, match=r"metadata.csv not found; download Camelyon17-WILDS"):
        build_dataset(spec, "train")
    root = paths.data / "camelyon17_v1.0"
    root.mkdir()
    (root / "metadata.csv").write_text(CAMELYON_HEADER.replace(",center", "") + "\n")
    with pytest.raises(DatasetError, match=r"lacks column\(s\) \['center'\]"):
        build_dataset(spec, "train")
    (root / "metadata.csv").write_text(CAMELYON_HEADER + "\n0,004,1,10,20,yes,0,0,0\n")
    with pytest.raises(DatasetError, match="is not WILDS' metadata.csv"):
        build_dataset(spec, "train")
    (root / "metadata.csv").write_text(CAMELYON_HEADER + "\n0,004,1,10,20,1,0,1,0\n")
    with pytest.raises(DatasetError, match="names no patch of split 'train'"):
        build_dataset(spec, "train")
    with pytest.raises(ConfigError, match="split_scheme 'ood' is not one of official, in-dist"):
        build_dataset(dataclasses.replace(spec, options={"split_scheme": "ood"}), "val")


def test_extract_writes_all_four_splits_at_96px(paths, camelyon):
    _, rows = camelyon
    save_checkpoint(paths, "net0", seed=0)
    roots = ["--data-dir", str(paths.data), "--cache-dir", str(paths.cache), "--config-dir", str(paths.config)]
    args = ["extract", "--ckpt", str(paths.checkpoints / "net0.pth"), "--arch", "resnet10", "--dataset",
            "camelyon17", "--workers", "0", "--quiet"]  # fmt: skip
    result = CliRunner().invoke(main, [*roots, *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    store = Store(store_path(paths.cache, "camelyon17", "net0"))
    assert set(store.splits) == set(SPLITS) and store.provenance.transform["crop"] == 96
    for split in SPLITS:
        assert store.split_meta(split).rows == sum(wilds_split(r) == split for r in rows)
