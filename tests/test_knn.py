"""featcache.knn: blocked k-NN equals a brute-force numpy reference; selection reads val only."""

import numpy as np
import pytest
import torch
from conftest import ArrayRows

from featcache.errors import ConfigError
from featcache.knn import KNNClassifier, KNNConfig, run_knn, select_knn

D, C = 16, 6
KS, TEMPS = (1, 5, 20), (0.02, 0.1, 1.0)


def _data(n: int, seed: int, spread: float = 0.6, priors=None) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian classes (k-NN is far from perfect on them)."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(size=(C, D)) * spread
    y = rng.choice(C, n, p=priors)
    return means[y] + rng.normal(size=(n, D)), y


def _reference(train, ytrain, queries, yq, k: int, temp: float) -> tuple[float, float, np.ndarray]:
    """DINO's k-NN in float64 numpy with the whole similarity matrix: (top-1 %, top-5 %, neighbour indices)."""
    t = train / np.linalg.norm(train, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q @ t.T
    nn = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    votes = np.exp(np.take_along_axis(sims, nn, 1) / temp)
    scores = np.zeros((len(q), C))
    for j in range(k):
        np.add.at(scores, (np.arange(len(q)), ytrain[nn[:, j]]), votes[:, j])
    order = np.argsort(-scores, axis=1, kind="stable")  # ties: the smaller class index first
    rank = np.argmax(order == yq[:, None], axis=1)
    return 100 * np.mean(rank == 0), 100 * np.mean(rank < min(5, C)), nn


# 203 train rows and 61 queries: blocks of 13 and 7 leave remainders (203 = 15 x 13 + 8, 61 = 8 x 7 + 5),
# and train blocks of 13 are smaller than k = 20, so the running top-k must merge across blocks.
@pytest.mark.parametrize("query_rows, train_rows", [(7, 13), (64, 50), (1000, 1000)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_equals_brute_force(query_rows, train_rows, dtype):
    x, y = _data(203, 0)
    xq, yq = _data(61, 1)
    knn = KNNClassifier(KNNConfig(ks=KS, temperatures=TEMPS), D, C, dtype=dtype, query_rows=query_rows,
                        train_rows=train_rows)  # fmt: skip
    rows = ArrayRows(x.astype(np.float32) if dtype == torch.float32 else x)
    grid = knn.fit(rows, y).evaluate(torch.tensor(xq, dtype=dtype), yq)
    assert rows.calls == -(-203 // train_rows)  # one pass over the train rows for the whole grid
    assert [(e["k"], e["temperature"]) for e in grid] == [(k, t) for k in KS for t in TEMPS]
    for e in grid:
        top1, top5, _ = _reference(x, y, xq, yq, e["k"], e["temperature"])
        assert (e["top1"], e["top5"]) == pytest.approx((top1, top5), abs=1e-9), e
    _, _, nn = _reference(x, y, xq, yq, max(KS), 1.0)
    sims, idx = knn.kneighbors(torch.tensor(xq, dtype=dtype))
    np.testing.assert_array_equal(idx.numpy(), nn)
    assert (sims[:, :-1] >= sims[:, 1:]).all()
    # The grid is not degenerate: k and T change the accuracy.
    assert len({e["top1"] for e in grid}) > 3 and 20 < grid[0]["top1"] < 95


def test_small_temperature_does_not_overflow():
    # exp(sim / T) at T = 1e-4 overflows even float64; the shifted votes leave the nearest neighbour in charge.
    x, y = _data(203, 0)
    xq, yq = _data(61, 1)
    knn = KNNClassifier(KNNConfig(ks=(1, 20), temperatures=(1e-4,)), D, C).fit(torch.tensor(x, dtype=torch.float32), y)
    one, twenty = knn.evaluate(torch.tensor(xq, dtype=torch.float32), yq)
    assert one["top1"] == twenty["top1"] == pytest.approx(_reference(x, y, xq, yq, 1, 1.0)[0])


def test_tied_class_scores_rank_by_class_index():
    # One train row per class along its own axis; both queries sit next to class 0's row, so with k = 1 the
    # other five classes tie at score 0. Ranked by index, true class 5 is 6th (a top-5 miss), class 4 is 5th.
    x = np.eye(C, D)
    xq = np.eye(C, D)[[0, 0]] + 0.01
    yq = np.array([5, 4])
    knn = KNNClassifier(KNNConfig(ks=(1,), temperatures=(0.1,)), D, C).fit(torch.tensor(x), np.arange(C))
    (e,) = knn.evaluate(torch.tensor(xq), yq)
    assert (e["top1"], e["top5"]) == (0.0, 50.0)
    assert _reference(x, np.arange(C), xq, yq, 1, 0.1)[:2] == (0.0, 50.0)


def test_selection_reads_val_only():
    # Fit: class 0 is 70% of rows. Val: balanced, where the nearest neighbour (k = 1) wins. Test: class 0 only,
    # where k = all fit rows with flat votes (large T) wins by predicting the majority class everywhere.
    priors = [0.7, 0.06, 0.06, 0.06, 0.06, 0.06]
    fit, val = _data(160, 2, spread=1.5, priors=priors), _data(120, 3, spread=1.5)
    x0, _ = _data(100, 4, spread=1.5)
    test = (x0, np.zeros(100, dtype=np.int64))
    train = (np.concatenate([fit[0], val[0]]), np.concatenate([fit[1], val[1]]))
    splits = {k: (torch.tensor(v[0], dtype=torch.float32), v[1]) for k, v in
              {"fit": fit, "val": val, "train": train, "test": test}.items()}  # fmt: skip
    cfg = KNNConfig(ks=(1, 160), temperatures=(1e3,))
    knn = KNNClassifier(cfg, D, C).fit(*splits["fit"])
    on_val = knn.evaluate(*splits["val"])
    on_test = knn.evaluate(*splits["test"])
    assert on_test[select_knn(on_test, "top1")]["k"] == 160 and on_test[1]["top1"] == 100.0
    assert on_val[select_knn(on_val, "top1")]["k"] == 1, "the constructed case must make val and test disagree"

    record = run_knn(cfg, splits, D, C, train_rows=50)
    assert (record["selected"]["k"], record["selected"]["temperature"]) == (1, 1e3)
    assert record["selected"]["test_top1"] < 100.0
    assert all(set(e) == {"k", "temperature", "val_top1", "val_top5"} for e in record["grid"])


def test_ties_go_to_larger_k_then_larger_temperature():
    grid = [
        {"k": 10, "temperature": 0.1, "val_top1": 90.0},
        {"k": 20, "temperature": 0.07, "val_top1": 90.0},
        {"k": 20, "temperature": 0.1, "val_top1": 90.0},
        {"k": 200, "temperature": 0.1, "val_top1": 80.0},
    ]
    assert select_knn(grid) == 2
    assert select_knn(grid[::-1]) == 1


@pytest.mark.parametrize(
    "kwargs, option",
    [
        ({"ks": ()}, "--knn-k"),
        ({"ks": (0, 5)}, "--knn-k"),
        ({"ks": (5, 5)}, "--knn-k"),
        ({"ks": (2.5,)}, "--knn-k"),
        ({"temperatures": (0.0,)}, "--knn-temperature"),
        ({"temperatures": ()}, "--knn-temperature"),
        ({"fixed_k": 0}, "--knn-fixed-k"),
    ],
)
def test_config_refuses_bad_values(kwargs, option):
    with pytest.raises(ConfigError, match=option):
        KNNConfig(**kwargs)


def test_checks_inputs():
    x, y = _data(30, 0)
    X = torch.tensor(x, dtype=torch.float32)
    knn = KNNClassifier(KNNConfig(ks=[5], temperatures=[0.1]), D, C)
    assert knn.config.ks == (5,)
    with pytest.raises(RuntimeError, match="fit"):
        knn.evaluate(X, y)
    with pytest.raises(ValueError, match="at least that many"):
        KNNClassifier(KNNConfig(ks=(31,)), D, C).fit(X, y)
    with pytest.raises(ValueError, match=r"outside \[0, 6\)"):
        knn.fit(X, y + 6)
    with pytest.raises(TypeError, match="row source"):
        knn.fit(x, y)


def _splits(fit, val, test) -> dict:
    train = (np.concatenate([fit[0], val[0]]), np.concatenate([fit[1], val[1]]))
    return {k: (torch.tensor(v[0], dtype=torch.float32), v[1]) for k, v in
            {"fit": fit, "val": val, "train": train, "test": test}.items()}  # fmt: skip


def test_val_is_scored_against_fit_and_test_against_all_of_train():
    # Test queries sit next to val rows (same labels): with val among the neighbours, test is easy; with the fit
    # rows alone, as hard as val. Val scored with val in the bank would find each row itself (k = 1: 100%).
    fit, val = _data(150, 5), _data(60, 6)
    rng = np.random.default_rng(7)
    test = (val[0] + 0.05 * rng.normal(size=val[0].shape), val[1])
    cfg = KNNConfig(ks=(1, 5, 20), temperatures=(0.02, 0.07))
    record = run_knn(cfg, _splits(fit, val, test), D, C, train_rows=40)
    for e in record["grid"]:
        ref = _reference(*fit, *val, e["k"], e["temperature"])
        assert (e["val_top1"], e["val_top5"]) == pytest.approx(ref[:2], abs=1e-9), e
    sel = record["selected"]
    train = (np.concatenate([fit[0], val[0]]), np.concatenate([fit[1], val[1]]))
    right = _reference(*train, *test, sel["k"], sel["temperature"])
    assert (sel["test_top1"], sel["test_top5"]) == pytest.approx(right[:2], abs=1e-9)
    wrong = _reference(*fit, *test, sel["k"], sel["temperature"])[0]
    assert right[0] - wrong > 30 and max(e["val_top1"] for e in record["grid"]) < 90  # the banks differ clearly


def test_the_fixed_k_number_is_dinos_on_test_with_all_of_train_as_neighbours():
    """k = 20 and T = 0.07, fixed in advance: neither the grid's choice on val nor the best on test."""
    fit, val, test = _data(150, 5), _data(60, 6), _data(80, 8)
    cfg = KNNConfig(ks=(1, 5), temperatures=(0.02, 1.0))  # the grid cannot hold DINO's (20, 0.07)
    record = run_knn(cfg, _splits(fit, val, test), D, C, train_rows=40)
    fixed = record["fixed"]
    train = (np.concatenate([fit[0], val[0]]), np.concatenate([fit[1], val[1]]))
    want = _reference(*train, *test, 20, 0.07)
    assert (fixed["k"], fixed["temperature"]) == (20, 0.07)
    assert (fixed["test_top1"], fixed["test_top5"]) == pytest.approx(want[:2], abs=1e-9)
    assert fixed["test_top1"] != pytest.approx(_reference(*fit, *test, 20, 0.07)[0])  # fit alone: another number
    assert fixed["test_top1"] != pytest.approx(record["selected"]["test_top1"])
    # at the chosen (k, T) the number is the selection's own; a k above the train rows is capped at them
    same = run_knn(KNNConfig(ks=(20,), temperatures=(0.07,)), _splits(fit, val, test), D, C)
    assert same["fixed"]["test_top1"] == same["selected"]["test_top1"] == pytest.approx(want[0], abs=1e-9)
    big = run_knn(KNNConfig(ks=(5,), fixed_k=500), _splits(fit, val, test), D, C)["fixed"]
    assert (big["k"], big["k_requested"]) == (210, 500)
    assert big["test_top1"] == pytest.approx(_reference(*train, *test, 210, 0.07)[0], abs=1e-9)
    assert "fixed" not in run_knn(KNNConfig(ks=(5,), fixed_k=None), _splits(fit, val, test), D, C)
