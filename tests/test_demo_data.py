"""The demo's digits-mix format: where each digit sits, which samples carry the colour cue, the splits, bad options."""

from __future__ import annotations

import numpy as np
import pytest

from featcache.data import DigitsDataset, build_dataset
from featcache.datasets.digits_mix import PALETTE, DigitsMixDataset
from featcache.errors import ConfigError


def test_the_plain_component_draws_each_digit_where_the_mixture_does():
    mix = DigitsMixDataset(split="train", component="mixture", plain_fraction=0.3)
    plain = DigitsMixDataset(split="train", component="plain", plain_fraction=0.3)
    assert mix.ids == plain.ids and not plain.cued.any()
    assert np.array_equal(mix.images[~mix.cued], plain.images[~mix.cued])  # plain in the mixture: the same image
    # cued: the same strokes at the same place, each pixel's brightest channel the white one's times that of the
    # class colour
    gray = plain.images[mix.cued][..., 0].astype(np.float32)
    scale = (PALETTE[mix.targets[mix.cued]] / 255.0).max(1)[:, None, None]
    assert np.array_equal(mix.images[mix.cued].max(-1), np.round(gray * scale).astype(np.uint8))
    # and the digits really move: their strokes start at many rows and columns of the canvas
    lit = plain.images[..., 0] > 0
    tops = {int(np.argmax(m.any(1))) for m in lit}
    lefts = {int(np.argmax(m.any(0))) for m in lit}
    assert len(tops) >= 6 and len(lefts) >= 6


def test_the_colour_of_a_cued_digit_names_its_class():
    mix = DigitsMixDataset(split="test", component="cued")
    assert mix.cued.all()
    colours = PALETTE / np.linalg.norm(PALETTE, axis=1, keepdims=True)
    for img, y in zip(mix.images, mix.targets, strict=True):
        r, c = np.unravel_index(img.max(-1).argmax(), img.shape[:2])  # the brightest stroke pixel
        rgb = img[r, c].astype(np.float64)
        assert int(np.argmax(colours @ (rgb / np.linalg.norm(rgb)))) == y


def test_the_share_of_plain_samples_is_the_plain_fraction():
    for fraction in (0.2, 0.7):
        mix = DigitsMixDataset(split="train", plain_fraction=fraction)
        assert abs((~mix.cued).mean() - fraction) < 0.05  # 1,347 draws: the binomial std is about 0.012


def test_per_class_takes_that_many_train_digits_and_leaves_test_whole():
    small = DigitsMixDataset(split="train", per_class=7)
    full = DigitsMixDataset(split="train")
    test = DigitsMixDataset(split="test", per_class=7)
    assert np.bincount(small.targets).tolist() == [7] * 10
    assert set(small.ids) <= set(full.ids)
    assert test.ids == DigitsDataset(split="test").ids  # the digits format's split: no test digit is trained on
    assert not set(test.ids) & set(full.ids)
    assert DigitsMixDataset(split="train", per_class=7).ids == small.ids  # seeded: the same draw every time


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"component": "both"}, "'component' must be one of mixture, plain, cued"),
        ({"plain_fraction": 1.5}, "'plain_fraction' must be in"),
        ({"canvas": 10}, "'canvas' \\(10\\) must be at least 'digit' \\(12\\)"),
        ({"per_class": 0}, "'per_class' must be an integer >= 1"),
        ({"digit": 7.5}, "'digit' must be an integer >= 8"),
    ],
)
def test_bad_options_name_the_option(options, match):
    with pytest.raises(ConfigError, match=match):
        DigitsMixDataset(split="train", **options)


def test_the_demo_datasets_are_registered(registry):
    plain = build_dataset(registry.dataset("digits-plain"), "test")
    mix = build_dataset(registry.dataset("digits-mix"), "train")
    assert isinstance(plain, DigitsMixDataset) and plain.images.shape == (450, 20, 20, 3) and not plain.cued.any()
    assert len(mix) == 400 and 0.4 < (~mix.cued).mean() < 0.6
