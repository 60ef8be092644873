"""iNaturalist 2018 (format ``inat18``) from its COCO-style ``{train,val}2018.json``."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import resolve_under
from ..errors import DatasetError
from ._base import FileDataset, register

__all__ = ["INaturalist2018"]


@register("inat18")
class INaturalist2018(FileDataset):
    """iNaturalist 2018 from ``root/{train,val}2018.json`` (COCO style), images under ``root``.

    Category ids (not contiguous) map to labels 0..K-1 in increasing id order; ``classes`` are the
    category names in that order (each JSON's own list: iNat's train and val files list all categories).
    Samples are sorted by image id; ids are ``"{image_id}:{file_name}"``.

    Raises:
        DatasetError: the JSON is missing or malformed, or an image has no annotation.
        ConfigError: a ``file_name`` is absolute or escapes ``root``.
    """

    splits = ("train", "val")

    def __init__(self, root, split="train", transform=None, *, name=None):
        self._check_split(split)
        root = Path(root)
        path = root / f"{split}2018.json"
        if not path.is_file():
            raise DatasetError(
                f"inat18: {path} not found; extract the iNaturalist 2018 {split} annotations "
                f"({split}2018.json) and train_val2018/ images into {root}"
            )
        try:
            doc = json.loads(path.read_text())
            cats = sorted((int(c["id"]), str(c["name"])) for c in doc["categories"])
            images = sorted((int(im["id"]), str(im["file_name"])) for im in doc["images"])
            anns = [(int(a["image_id"]), int(a["category_id"])) for a in doc["annotations"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"inat18: {path} is not a COCO-style iNat JSON ({type(e).__name__}: {e})") from None
        for what, seq in (("image", [i for i, _ in images]), ("category", [c for c, _ in cats])):
            if len(set(seq)) != len(seq):
                dup = next(v for k, v in enumerate(seq[1:]) if v == seq[k])
                raise DatasetError(f"inat18: {path}: {what} id {dup} is listed twice; fix the JSON")
        cat_to_idx = {cid: k for k, (cid, _) in enumerate(cats)}
        label_of: dict[int, int] = {}
        for image_id, cid in anns:
            if cid not in cat_to_idx:
                raise DatasetError(f"inat18: {path}: annotation of image {image_id} names unknown category {cid}")
            if label_of.setdefault(image_id, cat_to_idx[cid]) != cat_to_idx[cid]:
                raise DatasetError(f"inat18: {path}: image {image_id} has annotations of two categories")
        targets, paths = [], []
        for image_id, file_name in images:
            if image_id not in label_of:
                raise DatasetError(f"inat18: {path}: image {image_id} ({file_name}) has no annotation; fix the JSON")
            targets.append(label_of[image_id])
            paths.append(resolve_under(root, file_name, f"{path}: image {image_id} file_name"))
        ids = [f"{i}:{fn}" for i, fn in images]
        self._setup(root, split, transform, name, [n for _, n in cats], targets, ids)
        self.paths = paths
