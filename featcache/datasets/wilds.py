"""Camelyon17-WILDS (format ``wilds-camelyon17``), read from WILDS' own layout without the ``wilds`` package.

WILDS unpacks it to ``<root_dir>/camelyon17_v1.0/``: ``metadata.csv`` (an unnamed index column, then ``patient``,
``node``, ``x_coord``, ``y_coord``, ``tumor``, ``slide``, ``center``, ``split``) and the 96x96 patches at
``patches/patient_<patient>_node_<node>/patch_patient_<patient>_node_<node>_x_<x>_y_<y>.png``. Splits follow WILDS'
``official`` scheme: hospital (``center``) 1 is the OOD ``val``, hospital 2 is ``test``, and the other three
hospitals' patches are ``train`` (``split`` 0) or the in-distribution ``id_val`` (``split`` 1). Scheme ``in-dist``
moves slide 23 from test to train, as WILDS does. Samples keep the CSV's order within a split (WILDS' ``get_subset``).
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import ConfigError, DatasetError
from ._base import FileDataset, register

__all__ = ["Camelyon17", "SPLIT_SCHEMES"]

SPLIT_SCHEMES = ("official", "in-dist")
_COLUMNS = ("patient", "node", "x_coord", "y_coord", "tumor", "slide", "center", "split")
_SPLITS = {0: "train", 1: "id_val", 2: "test", 3: "val"}  # WILDS' split_dict: the csv's split column
_OOD = {1: 3, 2: 2}  # center -> its split, whatever the csv's split column says
_IN_DIST_SLIDE = 23  # scheme in-dist: this test slide (patient 042, node 3) trains


@register("wilds-camelyon17")
class Camelyon17(FileDataset):
    """Camelyon17-WILDS patches of one split; label 1 when the central 32x32 region holds tumour tissue.

    ids are ``"{csv index}:{patch path}"``. ``hospitals`` and ``slides`` hold each sample's ``center`` and
    ``slide`` (WILDS' metadata; the research code groups train by hospital).

    Args:
        root: the folder holding ``metadata.csv`` (WILDS' ``camelyon17_v1.0``).
        split_scheme: ``official`` (default) or ``in-dist``.

    Raises:
        DatasetError: ``metadata.csv`` is missing or malformed, or names no sample of ``split``.
        ConfigError: an unknown ``split_scheme``.
    """

    splits = ("train", "id_val", "test", "val")
    options = ("split_scheme",)

    def __init__(self, root, split="train", transform=None, *, name=None, split_scheme: str = "official"):
        self._check_split(split)
        if split_scheme not in SPLIT_SCHEMES:
            raise ConfigError(f"dataset '{name}': option split_scheme '{split_scheme}' is not one of "
                              f"{', '.join(SPLIT_SCHEMES)}")  # fmt: skip
        root = Path(root)
        rows = _read_metadata(root / "metadata.csv")
        ids, targets, paths, hospitals, slides = [], [], [], [], []
        for index, r in rows:
            if _split_of(r, split_scheme) != split:
                continue
            rel = (f"patches/patient_{r['patient']}_node_{r['node']}/"
                   f"patch_patient_{r['patient']}_node_{r['node']}_x_{r['x_coord']}_y_{r['y_coord']}.png")  # fmt: skip
            ids.append(f"{index}:{rel}")
            paths.append(root / rel)
            targets.append(int(r["tumor"]))
            hospitals.append(int(r["center"]))
            slides.append(int(r["slide"]))
        if not ids:
            raise DatasetError(f"camelyon17: {root / 'metadata.csv'} names no patch of split '{split}'; "
                               "download the whole dataset again")  # fmt: skip
        self._setup(root, split, transform, name, ["normal", "tumor"], targets, ids)
        self.paths, self.hospitals, self.slides = paths, hospitals, slides


def _split_of(row: dict[str, str], scheme: str) -> str | None:
    value = _OOD.get(int(row["center"]), int(row["split"]))
    if scheme == "in-dist" and int(row["slide"]) == _IN_DIST_SLIDE:
        value = 0
    return _SPLITS.get(value)


def _read_metadata(path: Path) -> list[tuple[str, dict[str, str]]]:
    """(index, row) of every line of WILDS' metadata.csv, in file order.

    Raises:
        DatasetError: the file is missing, lacks a column, or holds a value that is not an integer where one is due.
    """
    if not path.is_file():
        raise DatasetError(
            f"camelyon17: {path} not found; download Camelyon17-WILDS (wilds.get_dataset('camelyon17', "
            f"download=True, root_dir=...) or its archive) and point the dataset root at camelyon17_v1.0"
        )
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            missing = [c for c in _COLUMNS if c not in header]
            if missing:
                raise DatasetError(f"camelyon17: {path} lacks column(s) {missing}; download the dataset again")
            col = {c: header.index(c) for c in _COLUMNS}
            out = []
            for line in reader:
                row = {c: line[i].strip() for c, i in col.items()}
                for c in ("tumor", "slide", "center", "split"):
                    int(row[c])
                out.append((line[0].strip(), row))
    except (OSError, ValueError, IndexError, StopIteration) as e:
        raise DatasetError(f"camelyon17: {path} is not WILDS' metadata.csv ({type(e).__name__}: {e})") from None
    return out
