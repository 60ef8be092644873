"""scikit-learn's bundled 8x8 digits (format ``digits``): no download, a seeded stratified split."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ._base import ArrayDataset, register

__all__ = ["DigitsDataset"]


@register("digits")
class DigitsDataset(ArrayDataset):
    """scikit-learn's 1,797 8x8 digits, as uint8 RGB; a seeded stratified train/test split.

    The split is drawn over all ten classes, then restricted to ``classes``, so every subset agrees
    with the full set on which image is test. Labels follow the order of ``classes``.

    Args:
        root: unused (the data ships with scikit-learn).
        split: 'train' or 'test'.
        classes: digits to keep (default all), relabelled 0..k-1 in the listed order.
        test_fraction: share of each class held out for test.
        seed: seed of the split.
    """

    splits = ("train", "test")
    options = ("classes", "test_fraction", "seed")

    def __init__(
        self,
        root=None,
        split="train",
        transform=None,
        *,
        name=None,
        classes=None,
        test_fraction: float = 0.25,
        seed: int = 0,
    ):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        self._check_split(split)
        keep = list(range(10)) if classes is None else list(classes)
        if not keep or len(set(keep)) != len(keep) or not all(isinstance(c, int) and 0 <= c <= 9 for c in keep):
            raise ConfigError(f"digits option 'classes' must be distinct integers 0..9, got {classes!r}")
        if not 0 < float(test_fraction) < 1:
            raise ConfigError(f"digits option 'test_fraction' must be in (0, 1), got {test_fraction!r}")
        bunch = load_digits()
        labels = bunch.target.astype(np.int64)
        train, test = train_test_split(
            np.arange(len(labels)), test_size=float(test_fraction), random_state=int(seed), stratify=labels
        )
        rows = np.sort(train if split == "train" else test)
        rows = rows[np.isin(labels[rows], keep)]
        remap = {c: k for k, c in enumerate(keep)}
        targets = np.array([remap[int(c)] for c in labels[rows]], dtype=np.int64)
        self._setup(root, split, transform, name, [str(c) for c in keep], targets, [f"digits/{r}" for r in rows])
        # 0..16 -> 0..255, grayscale replicated to RGB
        pixels = np.round(bunch.images[rows] * (255.0 / 16.0)).astype(np.uint8)
        self._set_images(np.repeat(pixels[..., None], 3, axis=-1))
