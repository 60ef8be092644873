"""The research code's low-shot training subsets, drawn from the stored train rows (``probe --train-fraction N%``).

Two samplers, as the research code's ``src/datasets.py`` has them; the test split is never touched:

- ``cifar-permutation`` (formats ``cifar10``, ``cifar100``; the research ``cifar10_<N>perc`` datasets): the first
  ``int(50000 * N / 100)`` indices of one fixed permutation of the 50,000 train images. The research code ships
  those indices inline; they are ``numpy.random.RandomState(0).permutation(50000)``, which is how they are made here.
- ``seeded-shuffle`` (every other format; ImageNet's ``--data_rate R``): ``numpy.random.default_rng(seed + 12345)``
  shuffles ``arange(n)`` of the n train images and the first ``int(n * R)`` train, ``seed`` being the research
  ``--seed`` (31 unless the scripts pass one; none of the published ones does).

Rows are dataset indices, so a store's train split must hold the whole split in dataset order, as ``extract``
writes it (CIFAR's batch order; ImageFolder's sorted classes and files, torchvision's order): a store made with
``--limit`` holds other rows and is refused. The selection is the same for every store of a probe. Two datasets
differ from the research code's order or draw: iNat18 rows are sorted by image id where the research code keeps the
JSON's order (the same subsets when the JSON lists its images by id), and the research Camelyon17 subset is drawn
with replacement from numpy's unseeded global generator, which nothing can reproduce (the seeded shuffle stands in).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import numpy as np

from .errors import ConfigError

__all__ = [
    "CIFAR_TRAIN_ROWS",
    "PERMUTATION_FORMATS",
    "RESEARCH_SEED",
    "TrainFraction",
    "cifar_permutation",
    "describe",
    "sampler_for",
    "subset_rows",
]

RESEARCH_SEED = 31  # supervised.py's --seed default
DATA_RATE_OFFSET = 12345  # the research draw is seeded by --seed + 12345
CIFAR_TRAIN_ROWS = 50_000
PERMUTATION_FORMATS = ("cifar10", "cifar100")
_EXAMPLE = "e.g. 10% (ImageNet's --data_rate 0.1), or 10%@7 to seed the draw with 7 instead of the research's 31"


@dataclass(frozen=True)
class TrainFraction:
    """``--train-fraction N%[@SEED]``: the research low-shot subset of N percent of train.

    ``seed`` is the draw's seed for the seeded shuffle (None: the research default, 31); CIFAR's permutation is fixed.
    """

    percent: Decimal
    seed: int | None = None

    @classmethod
    def parse(cls, text: str) -> TrainFraction:
        """``"10%"`` or ``"10%@7"`` -> a TrainFraction.

        Raises:
            ConfigError: not a percentage in (0, 100], or a seed that is not an integer >= 0 (the option is named).
        """
        number, at, seed = str(text).strip().partition("@")
        try:
            if not number.endswith("%"):
                raise InvalidOperation
            percent = Decimal(number[:-1])
            if not (percent.is_finite() and 0 < percent <= 100):
                raise InvalidOperation
            parsed_seed = int(seed) if at else None
        except (InvalidOperation, ValueError):
            why = "give a percentage of train in (0%, 100%]"
            raise ConfigError(f"--train-fraction {text!r}: {why}, {_EXAMPLE}") from None
        if parsed_seed is not None and not 0 <= parsed_seed < 2**63 - DATA_RATE_OFFSET:
            raise ConfigError(f"--train-fraction {text!r}: the seed must be an integer >= 0, {_EXAMPLE}")
        return cls(percent, parsed_seed)

    def __str__(self) -> str:
        return f"{self.percent}%" + (f"@{self.seed}" if self.seed is not None else "")


def sampler_for(fmt: str) -> str:
    """The research sampler of a dataset format: ``cifar-permutation`` for CIFAR, else ``seeded-shuffle``."""
    return "cifar-permutation" if fmt in PERMUTATION_FORMATS else "seeded-shuffle"


def describe(fraction: TrainFraction, fmt: str) -> dict[str, float | str | int | None]:
    """What identifies the subset of a store of format ``fmt``: percent, sampler and seed (None for CIFAR's fixed
    permutation), as a probe records it and keys its result."""
    sampler = sampler_for(fmt)
    seed = None if sampler == "cifar-permutation" else RESEARCH_SEED if fraction.seed is None else fraction.seed
    return {"percent": float(fraction.percent), "sampler": sampler, "seed": seed}


def cifar_permutation() -> np.ndarray:
    """The research code's fixed order of CIFAR's 50,000 train indices (its ``idx`` list)."""
    return np.random.RandomState(0).permutation(CIFAR_TRAIN_ROWS)


def subset_rows(fraction: TrainFraction, fmt: str, n_rows: int, *, limit: int | None, where: str) -> np.ndarray:
    """The train rows of the research low-shot subset, sorted.

    Args:
        fraction: the subset asked for.
        fmt: the dataset format the store was extracted from (picks the sampler: :func:`sampler_for`).
        n_rows: the rows of the store's train split (the dataset's train images).
        limit: the store's ``--limit`` (None: the whole split).
        where: the store, for errors.

    Returns:
        Row indices into the train split (int64, sorted).

    Raises:
        ConfigError: a store made with ``--limit``; CIFAR train that is not 50,000 images, or a seed given for CIFAR's
            fixed permutation; a fraction that leaves no row.
    """
    if limit is not None:
        raise ConfigError(
            f"--train-fraction: {where} holds a --limit {limit} subset, not the whole train split the research "
            "subsets index; extract it without --limit"
        )
    if sampler_for(fmt) == "cifar-permutation":
        if fraction.seed is not None:
            raise ConfigError(f"--train-fraction {fraction}: CIFAR's subsets are one fixed permutation; drop @seed")
        if n_rows != CIFAR_TRAIN_ROWS:
            raise ConfigError(f"--train-fraction: {where} has {n_rows} train rows; CIFAR's research subsets index "
                              f"its {CIFAR_TRAIN_ROWS:,} train images")  # fmt: skip
        # as the research code computes it: percentage = float("<N>") from "<N>perc", then int(len * N / 100)
        rows = cifar_permutation()[: int(CIFAR_TRAIN_ROWS * float(fraction.percent) / 100)]
    else:
        seed = RESEARCH_SEED if fraction.seed is None else fraction.seed
        rng = np.random.default_rng(seed + DATA_RATE_OFFSET)
        order = np.arange(n_rows)
        rng.shuffle(order)
        rate = float(fraction.percent / 100)  # the double nearest N/100, as float("0.1") parses --data_rate
        rows = order[: int(n_rows * rate)]
    if len(rows) == 0:
        raise ConfigError(f"--train-fraction {fraction} of {n_rows} train rows leaves none; ask for more")
    return np.sort(rows).astype(np.int64)
