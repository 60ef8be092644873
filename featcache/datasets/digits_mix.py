"""The demo's synthetic task: scikit-learn's digits with a second, easier feature (format ``digits-mix``).

Every digit (8x8, upscaled to ``digit`` px) sits at a seeded random offset on a black ``canvas`` x ``canvas``
image, so recognising it needs its shape, wherever it is. Two components share the ten labels:

- *cued*: the strokes are drawn in a colour that names the class (:data:`PALETTE`): an easy feature that a
  network picks up within a few steps;
- *plain*: white strokes; only the shape tells the class.

``component: mixture`` draws each sample's component once (plain with probability ``plain_fraction``), so a
network pretrained on it can fit most of its loss with colour alone and serves the plain component less: the
features compete. ``component: plain`` renders every digit plain, at the same offsets: the component that the
demo transfers to. The split is the ``digits`` format's (stratified, seeded), so no test digit is ever trained on.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import ConfigError
from ._base import ArrayDataset, register

__all__ = ["DigitsMixDataset", "PALETTE", "COMPONENTS"]

COMPONENTS = ("mixture", "plain", "cued")
# One saturated colour per digit 0..9, none of them grey: on the cued component colour alone names the class.
PALETTE = np.array(
    [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255),
     (0, 255, 255), (255, 128, 0), (128, 0, 255), (0, 160, 96), (255, 96, 160)],
    dtype=np.float32,
)  # fmt: skip


def _int(value, key: str, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"digits-mix option '{key}' must be an integer >= {low}, got {value!r}")
    return value


@register("digits-mix")
class DigitsMixDataset(ArrayDataset):
    """Digits on a larger canvas, their colour an easy cue of the class on part of them (see the module docstring).

    Args:
        root: unused (the data ships with scikit-learn).
        split: 'train' or 'test'.
        component: 'mixture' (each sample cued or plain, drawn once), 'plain' or 'cued' (every sample so).
        plain_fraction: share of plain samples in the mixture.
        per_class: keep this many train samples of each class (a seeded draw); None keeps all. Test is whole.
        canvas: image side in pixels.
        digit: side of the upscaled digit; its offset is drawn in ``0 .. canvas - digit`` on both axes.
        test_fraction: share of each class held out for test.
        seed: seed of the split, the offsets, the components and the per-class draw.

    Raises:
        ConfigError: an option out of range (named, with what it accepts).
    """

    splits = ("train", "test")
    options = ("component", "plain_fraction", "per_class", "canvas", "digit", "test_fraction", "seed")

    def __init__(
        self,
        root=None,
        split="train",
        transform=None,
        *,
        name=None,
        component: str = "mixture",
        plain_fraction: float = 0.5,
        per_class: int | None = None,
        canvas: int = 20,
        digit: int = 12,
        test_fraction: float = 0.25,
        seed: int = 0,
    ):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        self._check_split(split)
        if component not in COMPONENTS:
            known = ", ".join(COMPONENTS)
            raise ConfigError(f"digits-mix option 'component' must be one of {known}, got {component!r}")
        if not 0 <= float(plain_fraction) <= 1:
            raise ConfigError(f"digits-mix option 'plain_fraction' must be in [0, 1], got {plain_fraction!r}")
        if not 0 < float(test_fraction) < 1:
            raise ConfigError(f"digits-mix option 'test_fraction' must be in (0, 1), got {test_fraction!r}")
        digit, canvas, seed = _int(digit, "digit", 8), _int(canvas, "canvas", 8), _int(seed, "seed", 0)
        if canvas < digit:
            raise ConfigError(f"digits-mix option 'canvas' ({canvas}) must be at least 'digit' ({digit})")
        if per_class is not None:
            per_class = _int(per_class, "per_class", 1)
        bunch = load_digits()
        labels = bunch.target.astype(np.int64)
        train, test = train_test_split(
            np.arange(len(labels)), test_size=float(test_fraction), random_state=seed, stratify=labels
        )
        # Every per-sample draw is made once for all 1,797 digits, so the plain component puts each digit where
        # the mixture does, and a split or a per-class subset never changes another sample's draw.
        rng = np.random.default_rng(seed)
        offsets = rng.integers(0, canvas - digit + 1, size=(len(labels), 2))
        plain = rng.random(len(labels)) < float(plain_fraction)
        order = rng.permutation(len(labels))  # the per-class draw: the first per_class of each class in this order
        rows = np.sort(train if split == "train" else test)
        if per_class is not None and split == "train":
            ranked = order[np.isin(order, rows)]
            rows = np.sort(np.concatenate([ranked[labels[ranked] == c][:per_class] for c in range(10)]))
        if component != "mixture":
            plain[:] = component == "plain"
        self.cued = ~plain[rows]  # which samples carry the colour cue
        self._setup(root, split, transform, name, [str(c) for c in range(10)], labels[rows],
                    [f"digits/{r}" for r in rows])  # fmt: skip
        self._set_images(_render(bunch.images[rows], labels[rows], offsets[rows], self.cued, canvas, digit))


def _render(
    digits: np.ndarray, labels: np.ndarray, offsets: np.ndarray, cued: np.ndarray, canvas: int, size: int
) -> np.ndarray:
    """uint8 (N, canvas, canvas, 3): each 0..16 digit upscaled to ``size`` (bilinear), white or in its class colour."""
    out = np.zeros((len(digits), canvas, canvas, 3), dtype=np.uint8)
    for i, (img, y, (dy, dx), c) in enumerate(zip(digits, labels, offsets, cued, strict=True)):
        gray = Image.fromarray(np.round(img * (255.0 / 16.0)).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        colour = PALETTE[y] if c else np.full(3, 255.0, dtype=np.float32)
        out[i, dy : dy + size, dx : dx + size] = np.round(np.asarray(gray, np.float32)[..., None] * (colour / 255.0))
    return out
