"""``probe --train-fraction``: the research low-shot subsets, cut from stored train features.

References are the research code's own values, written out here: the first and last indices of the fixed CIFAR
permutation its ``src/datasets.py`` ships inline, and the first rows of its ``--data_rate`` draw
(``default_rng(31 + 12345)`` shuffling ``arange(n)``), taken by hand with numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from store_factory import provenance

from featcache.cli import main
from featcache.errors import ConfigError, ProbeError
from featcache.lowshot import TrainFraction, cifar_permutation, subset_rows
from featcache.probe import config_from, probe_key_for, run_probe
from featcache.probe_splits import open_probe
from featcache.results import load_records
from featcache.store import SplitData, StoreWriter

# src/datasets.py: idx = [11841, 19602, 45519, ...]; its first 40 and last 10 entries
RESEARCH_FIRST = [11841, 19602, 45519, 25747, 42642, 31902, 30346, 12363, 32490, 26128, 14227, 26376, 44173, 12968,
                  32104, 17844, 43460, 8369, 15055, 6338, 15301, 46250, 45580, 24647, 46712, 4150, 42460, 29079,
                  19412, 34839, 34478, 16956, 29342, 26351, 271, 24189, 1399, 5140, 12649, 19883]  # fmt: skip
RESEARCH_LAST = [46884, 20757, 41993, 32103, 30403, 21243, 45891, 42613, 43567, 2732]
# np.random.default_rng(31 + 12345) shuffling np.arange(1000): the research --data_rate order of 1000 images
DATA_RATE_FIRST = [282, 36, 364, 246, 61, 243, 60, 904, 992, 941]
N_CLASSES = 10


def store(tmp_path, n: int, fmt: str, name: str = "s", skipped: list[int] = (), limit: int | None = None):
    """A store of ``n`` train rows extracted (so its provenance says) from a dataset of format ``fmt``; ``skipped``
    train rows are images that failed to decode (zero features, listed in the split)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, N_CLASSES, n)
    X = rng.normal(size=(n, 6)).astype(np.float32) + y[:, None] * 0.5
    yt = np.arange(40) % N_CLASSES
    Xt = rng.normal(size=(40, 6)).astype(np.float32) + yt[:, None] * 0.5
    prov = provenance(name, 6, dataset={"name": fmt, "format": fmt, "limit": limit})
    path = tmp_path / f"{name}.zarr"
    with StoreWriter(path, prov) as w:
        for split, (Xs, ys, bad) in {"train": (X, y, list(skipped)), "test": (Xt, yt, [])}.items():
            classes = [str(c) for c in range(N_CLASSES)]
            sw = w.split(SplitData(split, [f"{split}/{i}" for i in range(len(ys))], ys, f"fp-{split}", classes), 6,
                         "float32", chunk_rows=len(ys), compression="none")  # fmt: skip
            Xs = Xs.copy()
            Xs[bad] = 0
            sw.write_chunk(0, Xs, skipped=bad)
            sw.finalize()
    return path


def probe_cfg(registry, paths, path, fraction, **kw):
    return config_from(registry, paths, stores=[path], preset="quick", epochs=2, train_fraction=fraction, **kw)


def test_cifar_permutation_is_the_research_list():
    perm = cifar_permutation()
    assert perm[:40].tolist() == RESEARCH_FIRST and perm[-10:].tolist() == RESEARCH_LAST
    assert sorted(perm.tolist()) == list(range(50_000))


@pytest.fixture(scope="module")
def cifar_store(tmp_path_factory):
    return store(tmp_path_factory.mktemp("cifar"), 50_000, "cifar10")


def test_cifar_one_percent_trains_on_the_first_500_indices_and_leaves_test_alone(cifar_store, registry, paths):
    data = open_probe(probe_cfg(registry, paths, cifar_store, "1%"))
    assert data.train.valid_rows.tolist() == sorted(cifar_permutation()[:500].tolist())
    assert set(RESEARCH_FIRST) <= set(data.train.valid_rows.tolist())
    assert data.rows["train"] == len(data.fit_rows) + len(data.val_rows) == 500 and data.rows["test"] == 40
    assert data.train_subset.to_dict() == {"percent": 1.0, "sampler": "cifar-permutation", "seed": None, "rows": 500}


def test_cifar_percentages_round_as_the_research_code(cifar_store):
    # research: int(len(idx) * float("0.29") / 100) = int(144.99999999999997) = 144, not the exact 145
    assert len(subset_rows(TrainFraction.parse("0.29%"), "cifar100", 50_000, limit=None, where="s")) == 144
    assert len(subset_rows(TrainFraction.parse("100%"), "cifar10", 50_000, limit=None, where="s")) == 50_000


def test_data_rate_is_the_seeded_shuffle(tmp_path, registry, paths):
    path = store(tmp_path, 1000, "imagefolder")
    data = open_probe(probe_cfg(registry, paths, path, "10%"))
    assert set(DATA_RATE_FIRST) <= set(data.train.valid_rows.tolist()) and len(data.train.valid_rows) == 100
    order = np.arange(1000)
    np.random.default_rng(7 + 12345).shuffle(order)
    seeded = open_probe(probe_cfg(registry, paths, path, "10%@7"))
    assert seeded.train.valid_rows.tolist() == sorted(order[:100].tolist())
    assert seeded.train_subset.seed == 7 and data.train_subset.seed == 31
    # int(len * float("0.29")): 100 x 0.29 = 28.999999999999996 -> 28
    assert len(subset_rows(TrainFraction.parse("29%"), "imagefolder", 100, limit=None, where="s")) == 28


def test_skipped_rows_stay_out_of_the_subset(tmp_path, registry, paths):
    path = store(tmp_path, 1000, "inat18")
    data = open_probe(probe_cfg(registry, paths, path, "10%"))
    skipped = data.train.valid_rows[:3].tolist()  # three rows of the subset whose images could not be decoded
    again = open_probe(probe_cfg(registry, paths, store(tmp_path, 1000, "inat18", name="t", skipped=skipped), "10%"))
    assert again.train.valid_rows.tolist() == data.train.valid_rows[3:].tolist() and again.train_subset.rows == 97


def test_the_record_and_its_key_carry_the_subset(cifar_store, registry, paths):
    cfg = probe_cfg(registry, paths, cifar_store, "1%")
    record = run_probe(cfg)
    assert record.rows["train"] == 500 and record.train_subset.percent == 1.0
    assert record.key == probe_key_for(cfg)
    keys = {probe_key_for(probe_cfg(registry, paths, cifar_store, f)) for f in ("1%", "2%", None)}
    assert len(keys) == 3 and record.key in keys


def test_cli_prints_and_logs_the_subset(tmp_path, paths):
    path = store(tmp_path, 1000, "imagefolder")
    roots = ["--cache-dir", str(paths.cache), "--config-dir", str(paths.config)]
    args = ["probe", "--stores", str(path), "--preset", "quick", "--epochs", "2", "--train-fraction", "10%"]
    result = CliRunner().invoke(main, [*roots, *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "(its 10% seeded-shuffle subset)" in result.output
    (record,) = load_records(paths.cache / "results.jsonl")
    assert record.train_subset.to_dict() == {"percent": 10.0, "sampler": "seeded-shuffle", "seed": 31, "rows": 100}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10", "give a percentage of train in (0%, 100%]"),
        ("0%", "give a percentage of train in (0%, 100%]"),
        ("101%", "give a percentage of train in (0%, 100%]"),
        ("ten%", "give a percentage of train in (0%, 100%]"),
        ("10%@-1", "the seed must be an integer >= 0"),
        ("10%@x", "give a percentage of train"),
    ],
)
def test_bad_values_are_one_line_errors(tmp_path, paths, value, message):
    path = store(tmp_path, 100, "imagefolder")
    roots = ["--cache-dir", str(paths.cache), "--config-dir", str(paths.config)]
    result = CliRunner().invoke(main, [*roots, "probe", "--stores", str(path), "--train-fraction", value])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(f"Error: --train-fraction '{value}': {message}"), result.output


def test_stores_the_research_indices_do_not_fit_are_refused(tmp_path, registry, paths):
    small = store(tmp_path, 1000, "cifar10", name="small")
    with pytest.raises(ConfigError, match="has 1000 train rows; CIFAR's research subsets index its 50,000"):
        open_probe(probe_cfg(registry, paths, small, "1%"))
    limited = store(tmp_path, 1000, "imagefolder", name="limited", limit=1000)
    with pytest.raises(ConfigError, match="holds a --limit 1000 subset, not the whole train split"):
        open_probe(probe_cfg(registry, paths, limited, "10%"))
    with pytest.raises(ConfigError, match="CIFAR's subsets are one fixed permutation; drop @seed"):
        subset_rows(TrainFraction.parse("1%@3"), "cifar10", 50_000, limit=None, where="s")
    with pytest.raises(ConfigError, match="leaves none"):
        subset_rows(TrainFraction.parse("0.001%"), "cifar10", 50_000, limit=None, where="s")


def test_a_fraction_too_small_to_hold_out_val_asks_for_a_larger_fraction(tmp_path, registry, paths):
    """0.5% of 400 rows is 2 rows: too few to give every class a val row. The fix is a larger --train-fraction, not
    --limit (which only shrinks the stores)."""
    path = store(tmp_path, 400, "imagefolder")
    with pytest.raises(ProbeError, match=r"a larger --train-fraction than 0\.5%") as e:
        open_probe(probe_cfg(registry, paths, path, "0.5%"))
    assert "--limit" not in str(e.value)
