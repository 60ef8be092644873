"""featcache.probe: selection on val (never test), the research number, views, memory plans, refusals.

The selection tests run on features that are *not* separable, so that the val-selected (head, epoch), the
test-best (head, epoch) and the research number all differ; a probe that selected on test, broke ties the
wrong way or read the research number off val would give another record (see tests/README.md).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from store_factory import make_store

from featcache import heads as heads_mod
from featcache.concat import ConcatView
from featcache.errors import ConfigError, StoreError, StoreMismatchError
from featcache.heads import HeadConfig
from featcache.probe import (
    ProbeConfig,
    ProbeError,
    heads_from_preset,
    resolve_stores,
    run_probe,
    val_split,
    view_schedule,
)
from featcache.solvers.sgd import _select
from featcache.store import open_store

HEADS = HeadConfig(epochs=4, batch_size=32, milestones=(3,), lr=0.05, weight_decays=(1e-4, 1e-2, 1.0))


def _blobs(n, classes, dim, spread, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    means = np.random.default_rng(99).normal(size=(classes, dim)) * spread
    return (means[y] + rng.normal(size=(n, dim))).astype(np.float32), y


@pytest.fixture
def stores(tmp_path):
    """Three stores whose features split well-separated class blobs column-wise."""
    Xtr, ytr = _blobs(240, 4, 12, spread=6.0, seed=0)
    Xte, yte = _blobs(80, 4, 12, spread=6.0, seed=1)
    return tuple(
        make_store(
            tmp_path / "synthetic" / f"s{k}.zarr",
            {"train": (Xtr[:, cols], ytr), "test": (Xte[:, cols], yte)},
            name=f"s{k}",
            chunk_rows=64,
        )  # fmt: skip
        for k, cols in enumerate((slice(0, 4), slice(4, 8), slice(8, 12)))
    )


@pytest.fixture
def noisy(tmp_path):
    """Two stores of overlapping blobs (about 60-70% accuracy): val and test disagree about the best head."""
    Xtr, ytr = _blobs(400, 5, 10, spread=0.45, seed=3)
    Xte, yte = _blobs(150, 5, 10, spread=0.45, seed=4)
    return tuple(
        make_store(
            tmp_path / "noisy" / f"n{k}.zarr",
            {"train": (Xtr[:, cols], ytr), "test": (Xte[:, cols], yte)},
            name=f"n{k}",
            chunk_rows=48,
        )  # fmt: skip
        for k, cols in enumerate((slice(0, 5), slice(5, 10)))
    )


NOISY_HEADS = HeadConfig(epochs=7, batch_size=32, milestones=(5,), lr=0.05, weight_decays=(1e-4, 3e-2, 0.3, 1.0))


@pytest.fixture
def fitted(monkeypatch):
    """Every MultiHeadProbe that run_probe fits, in order (select pass, then final pass)."""
    made = []
    fit = heads_mod.MultiHeadProbe.fit

    def record(self, *a, **kw):
        made.append(self)
        return fit(self, *a, **kw)

    monkeypatch.setattr(heads_mod.MultiHeadProbe, "fit", record)
    return made


def _argmax(history, key):
    """Best (head, epoch) by the documented rule, written independently: the highest accuracy, scanning the
    latest epoch first and, within an epoch, the first head (smallest weight decay) first."""
    best = max(max(r[key]) for r in history)
    for e in range(len(history), 0, -1):
        for h, acc in enumerate(history[e - 1][key]):
            if acc == best:
                return h, e
    raise AssertionError("unreachable")


def test_selection_is_on_val_and_test_is_read_at_that_head_and_epoch(noisy, fitted):
    record = run_probe(ProbeConfig(noisy, NOISY_HEADS, device="cpu", views=0))
    select, final = fitted
    sh, se = _argmax(select.history_, "val_top1")
    th, te = _argmax(final.history_, "test_top1")
    # the data must make the choices differ, or this test could not see a probe that selects on test
    assert (sh, se) != (th, te)
    assert final.history_[se - 1]["test_top1"][sh] < final.history_[te - 1]["test_top1"][th]
    wds = NOISY_HEADS.weight_decays
    assert record.selected.params == {"weight_decay": wds[sh]} and record.selected.epoch == se
    assert record.selected.val_top1 == select.history_[se - 1]["val_top1"][sh]
    assert record.selected.test_top1 == final.history_[se - 1]["test_top1"][sh]
    # the research number is the best of the final pass's *test* history (where val's best lies elsewhere)
    assert record.research.test_top1 == max(max(r["test_top1"]) for r in final.history_)
    assert record.research.test_top1 != final.history_[se - 1]["test_top1"][sh]
    assert record.research.params == {"weight_decay": wds[th]} and record.research.epoch == te
    for k, h in enumerate(record.heads):  # each grid point: its own val-best epoch, test read there
        hk, ek = _argmax([{"v": [r["val_top1"][k]]} for r in select.history_], "v")
        assert h.val_epoch == ek and h.test_top1 == final.history_[ek - 1]["test_top1"][k]
    assert record.selected.test_top5 is None  # fewer than 6 classes: no top-5


def test_ties_go_to_the_later_epoch_then_the_smaller_weight_decay():
    history = [
        {"val_top1": [70.0, 80.0, 80.0]},
        {"val_top1": [80.0, 75.0, 80.0]},
        {"val_top1": [80.0, 80.0, 60.0]},
        {"val_top1": [50.0, 60.0, 70.0]},
    ]
    assert _select(history, "val_top1") == (0, 3)  # epoch 3 beats 1 and 2; head 0 beats head 1 in epoch 3
    assert _select(history[:2], "val_top1") == (0, 2)  # epoch 2: heads 0 and 2 tie, the smaller wd wins
    assert _select(history, "val_top1", heads=[2]) == (2, 2)


def test_separable_features_reach_100_percent(stores):
    record = run_probe(ProbeConfig(stores, HEADS, device="cpu"))
    assert record.selected.test_top1 == 100.0
    assert record.features == "cat3" and record.feature_dim == 12
    assert record.rows == {"fit": 216, "val": 24, "train": 240, "test": 80}
    assert record.train_split == "train" and record.test_split == "test" and record.views.count == 0


def test_record_reports_grid_selection_and_research_number(stores):
    record = run_probe(ProbeConfig(stores[:1], dataclasses.replace(HEADS, epochs=3), device="cpu", tag="t1"))
    assert [h.params["weight_decay"] for h in record.heads] == [1e-4, 1e-2, 1.0]
    assert record.selected.val_top1 == max(h.val_top1 for h in record.heads)
    assert record.research.test_top1 == max(h.best_test_top1 for h in record.heads)
    assert "selected on test" in record.research.note and record.solver == "sgd"
    assert record.tag == "t1" and record.stores[0].checkpoint["sha256"] == "sha-s0"
    assert record.hyperparameters["weight_decays"] == (1e-4, 1e-2, 1.0)


def test_memory_plans_reach_the_same_accuracy(stores, fitted):
    cfg = ProbeConfig(stores[:2], dataclasses.replace(HEADS, epochs=2), device="cpu")
    a = run_probe(dataclasses.replace(cfg, in_memory="yes"))
    b = run_probe(dataclasses.replace(cfg, in_memory="no"))
    c = run_probe(dataclasses.replace(cfg, max_memory=1))  # nothing fits: streamed, one 64-row chunk a buffer
    assert (a.memory, b.memory, c.memory) == ("resident", "streamed", "streamed")
    # Streaming trains on another row order (block-shuffled, see featcache.feed), so other losses; on these separable
    # blobs every plan still ends at 100% (tests/test_feed.py compares accuracies on overlapping classes).
    assert fitted[1].history_[-1]["train_loss"] != fitted[5].history_[-1]["train_loss"]
    assert a.selected.test_top1 == b.selected.test_top1 == c.selected.test_top1 == 100.0
    assert [h.best_test_top1 for h in a.heads] == [h.best_test_top1 for h in c.heads]


def test_dataset_given_must_be_the_stores_dataset(stores):
    with pytest.raises(ConfigError, match="holds dataset 'synthetic', not 'cifar10'; pass --dataset synthetic"):
        run_probe(ProbeConfig(stores[:1], HEADS, device="cpu", dataset="cifar10"))


def test_training_and_testing_on_one_split_is_refused_unless_allowed(stores):
    cfg = ProbeConfig(stores[:1], dataclasses.replace(HEADS, epochs=1), device="cpu", test_split="train")
    with pytest.raises(ConfigError, match="both 'train'.*--allow-same-split"):
        run_probe(cfg)
    record = run_probe(dataclasses.replace(cfg, allow_same_split=True))
    assert record.train_split == record.test_split == "train"


def test_nan_features_stop_the_probe_naming_the_store(tmp_path):
    X, y = _blobs(100, 3, 4, 6.0, 0)
    good = make_store(tmp_path / "d" / "good.zarr", {"train": (X, y), "test": (X, y)}, name="good", chunk_rows=32)
    bad = make_store(tmp_path / "d" / "bad.zarr", {"train": (X, y), "test": (X, y)}, name="bad", chunk_rows=32)
    chunk = bad / "train" / "features" / "c" / "2" / "0"  # a chunk damaged after it was written and checked
    a = np.fromfile(chunk, dtype="<f4")
    a[7] = np.nan
    a.tofile(chunk)
    for in_memory, match in (("yes", r"store .*bad\.zarr split 'train' \(features\) holds NaN"),
                             ("no", r"non-finite at epoch 1 on stores good, bad.*featcache verify")):  # fmt: skip
        with pytest.raises((StoreError, ProbeError), match=match):
            run_probe(ProbeConfig((good, bad), HEADS, device="cpu", in_memory=in_memory))


def test_a_diverging_learning_rate_is_an_error_not_a_result(stores):
    heads = dataclasses.replace(HEADS, epochs=2, lr=1e30, head="linear", momentum=0.0, nesterov=False)
    with pytest.raises(ProbeError, match=r"head\(s\) lr=1e\+30 wd=.* non-finite.*lower --lr"):
        run_probe(ProbeConfig(stores[:1], heads, device="cpu"))


def test_one_class_to_train_on_is_refused_and_missing_classes_are_noted(tmp_path, caplog):
    X, y = _blobs(60, 3, 4, 6.0, 0)
    one = make_store(tmp_path / "d" / "one.zarr", {"train": (X, np.zeros(60, int)), "test": (X, y)}, name="one")
    with pytest.raises(ProbeError, match="holds 1 class.*at least 2"):
        run_probe(ProbeConfig((one,), HEADS, device="cpu"))
    y_test = np.where(y == 2, 1, y)  # class 2 never appears in test
    skew = make_store(tmp_path / "d" / "skew.zarr", {"train": (X, y), "test": (X, y_test)}, name="skew")
    record = run_probe(ProbeConfig((skew,), dataclasses.replace(HEADS, epochs=1), device="cpu"))
    assert any("in 'train' but not in 'test': 2" in n for n in record.notes)
    assert "not in 'test'" in caplog.text


def test_val_split_is_stratified_disjoint_and_reproducible():
    labels = np.repeat(np.arange(5), 40)
    rows = np.arange(0, 200, 1)
    fit, val = val_split(labels, rows, 0.1, seed=7)
    assert len(np.intersect1d(fit, val)) == 0 and len(fit) + len(val) == 200
    assert np.bincount(labels[val]).tolist() == [4] * 5
    fit2, val2 = val_split(labels, rows, 0.1, seed=7)
    np.testing.assert_array_equal(val, val2)
    _, val3 = val_split(labels, rows, 0.1, seed=8)
    assert not np.array_equal(val, val3)
    # only rows handed in are used: skipped rows never land in val
    fit4, val4 = val_split(labels, rows[rows % 10 != 0], 0.1, seed=7)
    assert not np.isin(val4, rows[rows % 10 == 0]).any()


def test_resolve_stores_names_sets_and_paths(stores, tmp_path):
    found = resolve_stores("s0,pair", "synthetic", tmp_path, sets={"pair": ["s1", "s2"]})
    assert found == list(stores)
    assert resolve_stores(str(stores[1]), None, tmp_path) == [stores[1]]  # a path needs no dataset
    with pytest.raises(StoreError, match=r"no store .*s9\.zarr.*featcache extract --ckpt s9 --dataset synthetic"):
        resolve_stores("s0,s9", "synthetic", tmp_path)
    with pytest.raises(ConfigError, match="'s0' is a store name: pass --dataset"):
        resolve_stores("s0", None, tmp_path)
    with pytest.raises(ConfigError, match="--stores is empty"):
        resolve_stores(" , ", "synthetic", tmp_path)


def test_train_and_test_of_different_stores_are_not_mixed(stores, tmp_path):
    X, y = _blobs(240, 4, 4, 6.0, 0)
    other = make_store(
        tmp_path / "o.zarr", {"train": (X, y), "test": (X[:80], (y[:80] + 1) % 4)}, name="o", chunk_rows=64
    )
    with pytest.raises(StoreMismatchError, match=r"split .test. differs in labels_sha256"):
        run_probe(ProbeConfig((stores[0], other), HEADS, device="cpu"))


def test_preset_overrides_and_unknown_keys():
    preset = {"epochs": 28, "lr": 0.01, "milestones": [8, 16], "val_fraction": 0.2, "views": 8}
    heads, vf = heads_from_preset(preset, [1e-4], epochs=3, lr=None)
    assert heads.epochs == 3 and heads.lr == 0.01 and heads.milestones == (8, 16) and vf == 0.2
    heads, _ = heads_from_preset({**preset, "weight_decays": [1e-3, 1e-2]})
    assert heads.weight_decays == (1e-3, 1e-2)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['epoch'\]"):
        heads_from_preset({"epoch": 3}, [1e-4])
    with pytest.raises(ConfigError, match="--val-fraction"):
        ProbeConfig((), HEADS, val_fraction=1.5)


# --- views ---------------------------------------------------------------------------------------------


def test_view_schedule_uses_every_view_before_one_repeats():
    s = view_schedule(4, 28, seed=0)
    for start in range(0, 28, 4):
        assert sorted(s[start : start + 4]) == [0, 1, 2, 3]
    assert s != view_schedule(4, 28, seed=1) and s == view_schedule(4, 28, seed=0)
    assert s[:4] != s[4:8] or s[4:8] != s[8:12]  # a new permutation each cycle
    assert view_schedule(3, 2, seed=5) == view_schedule(3, 9, seed=5)[:2]


def _view_stores(tmp_path, n_views=3, seeds=(0, 0)):
    rng = np.random.default_rng(0)
    X, y = _blobs(120, 3, 8, 3.0, 0)
    Xt, yt = _blobs(45, 3, 8, 3.0, 1)
    out = []
    for k, (cols, seed) in enumerate(zip((slice(0, 4), slice(4, 8)), seeds, strict=True)):
        views = [X[:, cols] + rng.normal(scale=0.5, size=(120, 4)).astype(np.float32) for _ in range(n_views)]
        out.append(make_store(tmp_path / "v" / f"v{k}.zarr", {"train": (X[:, cols], y), "test": (Xt[:, cols], yt)},
                              name=f"v{k}", chunk_rows=32, views={"train": views}, views_seed=seed))  # fmt: skip
    return tuple(out), X, y


def test_views_concatenate_view_for_view(tmp_path):
    paths, _, _ = _view_stores(tmp_path)
    stores = [open_store(p) for p in paths]
    train = ConcatView(stores, "train")
    idx = np.array([5, 119, 0, 64, 64, 33])
    for k in range(3):
        want = np.concatenate([s.split("train").view(k).take(idx) for s in stores], axis=1)
        np.testing.assert_array_equal(train.view(k).take(idx), want)
    assert not np.array_equal(train.view(0).take(idx), train.take(idx))  # the evaluation view is another array
    assert train.n_views == 3


def test_views_of_other_crops_are_refused(tmp_path):
    paths, _, _ = _view_stores(tmp_path, seeds=(0, 1))
    train = ConcatView([open_store(p) for p in paths], "train")
    with pytest.raises(StoreMismatchError, match=r"v1\.zarr: their crops differ \(seed 0 vs 1.*--views-seed 0"):
        train.view(0)
    with pytest.raises(StoreMismatchError, match=r"has 3 complete view\(s\), 5 are needed.*--views 5"):
        run_probe(ProbeConfig(paths[:1], HEADS, device="cpu", views=5))


def test_probe_trains_on_views_and_scores_on_the_evaluation_view(tmp_path, fitted):
    paths, X, y = _view_stores(tmp_path)
    heads = dataclasses.replace(HEADS, epochs=5)
    on_views = run_probe(ProbeConfig(paths, heads, device="cpu"))
    assert on_views.views.count == 3 and on_views.views.seed == 0
    assert len(fitted) == 2 and len(fitted[1].history_) == 5
    centre = run_probe(ProbeConfig(paths, heads, device="cpu", views=0))
    assert centre.views.count == 0
    # other training features: other losses and weights; the same test features: the same test rows scored
    assert fitted[1].history_[-1]["train_loss"] != fitted[3].history_[-1]["train_loss"]
    assert not np.allclose(fitted[1].weight_.numpy(), fitted[3].weight_.numpy())
    # resident, per-epoch and streamed training on views give the same record
    budget_for_one_view = 12_000  # resident needs 16,800 bytes here, per-epoch 9,504
    per_epoch = run_probe(ProbeConfig(paths, heads, device="cpu", max_memory=budget_for_one_view))
    streamed = run_probe(ProbeConfig(paths, heads, device="cpu", in_memory="no"))
    assert (on_views.memory, per_epoch.memory, streamed.memory) == ("resident", "per-epoch", "streamed")
    assert on_views.heads == per_epoch.heads  # the same order, so the same numbers
    # streaming trains on another (block-shuffled) order; these blobs are separable, so the same accuracies
    assert [h.test_top1 for h in streamed.heads] == [h.test_top1 for h in on_views.heads]


def test_epoch_features_feed_each_epoch_its_view(monkeypatch, tmp_path):
    """The heads see view schedule[e] in epoch e: swap a view's features and only that epoch changes."""
    seen = []
    take = ConcatView.load

    def spy(self, rows=None, block=8192, finite=False):
        seen.append(self.view_index)
        return take(self, rows, block, finite)

    monkeypatch.setattr(ConcatView, "load", spy)
    paths, _, _ = _view_stores(tmp_path)
    heads = dataclasses.replace(HEADS, epochs=6)
    run_probe(ProbeConfig(paths, heads, device="cpu", max_memory=12_000))  # per-epoch loads
    sched = view_schedule(3, 6, heads.seed)
    train_loads = [k for k in seen if k is not None]
    assert train_loads == sched + sched  # select pass, then final pass, each epoch its scheduled view


# --- other solvers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["lbfgs", "knn"])
def test_other_solvers_select_on_val_and_read_test_once(noisy, solver, monkeypatch):
    from featcache.knn import KNNClassifier, KNNConfig
    from featcache.logreg import LogRegConfig, LogRegPath

    # k-NN without its fixed-k number (DINO's, read on test apart from the selection: tests/test_knn.py)
    config = (
        LogRegConfig(strengths=(1.0, 1e-1, 1e-2, 1e-3)) if solver == "lbfgs" else KNNConfig(ks=(1, 5, 25), fixed_k=None)
    )
    scored = []  # every evaluation on test rows
    cls = LogRegPath if solver == "lbfgs" else KNNClassifier
    evaluate = cls.evaluate
    monkeypatch.setattr(
        cls, "evaluate", lambda self, X, y, *a, **k: scored.append(len(y)) or evaluate(self, X, y, *a, **k)
    )
    record = run_probe(ProbeConfig(noisy, NOISY_HEADS, device="cpu", views=0, solver=config))
    assert record.solver == solver and record.research is None and record.views.count == 0
    best = max(h.val_top1 for h in record.heads)
    key = "strength" if solver == "lbfgs" else "k"
    chosen = next(h for h in record.heads if h.params[key] == record.selected.params[key])
    assert record.selected.val_top1 == chosen.val_top1 == best  # a val-best point (ties: the modules' rules)
    assert [h.test_top1 is not None for h in record.heads].count(True) == 1  # test is read at one point only
    assert record.selected.test_top1 == next(h.test_top1 for h in record.heads if h.test_top1 is not None)
    assert scored.count(150) == 1  # the 150 test rows were scored once
    assert record.hyperparameters["val_fraction"] == 0.1 and record.key != run_probe(
        ProbeConfig(noisy, NOISY_HEADS, device="cpu", views=0)).key  # fmt: skip


def test_solvers_refuse_views(noisy):
    from featcache.knn import KNNConfig

    with pytest.raises(ConfigError, match="evaluation view only: pass --views none"):
        ProbeConfig(noisy, NOISY_HEADS, device="cpu", views=2, solver=KNNConfig())


def test_lbfgs_c_is_relative_to_the_train_rows_in_the_grid_and_the_selection(noisy):
    from featcache.logreg import LogRegConfig
    from featcache.results import format_probe

    record = run_probe(
        ProbeConfig(noisy, NOISY_HEADS, device="cpu", views=0, solver=LogRegConfig(strengths=(1.0, 1e-2)))
    )
    n = record.rows["train"]
    assert n == 400 and record.rows["fit"] == 360  # C relative to the fit rows would be another number
    assert [h.params["C"] for h in record.heads] == [1 / (s * n) for s in (1.0, 1e-2)]
    chosen = next(h for h in record.heads if h.params["strength"] == record.selected.params["strength"])
    assert record.selected.params == chosen.params
    assert "C = 1 / (strength x 400), scikit-learn's C for the 400 train rows" in record.selected.method
    assert not any("max-iter" in n for n in record.notes) and "val_loss" in chosen.extra
    table = format_probe(record)
    assert f"{chosen.params['C']:g}" in table.split("selected")[1]  # the selected line shows the table's C


def test_lbfgs_stopped_by_max_iter_warns_and_notes_it(noisy, caplog):
    from featcache.logreg import LogRegConfig

    config = LogRegConfig(strengths=(1.0, 1e-2), max_iter=1)
    record = run_probe(ProbeConfig(noisy, NOISY_HEADS, device="cpu", views=0, solver=config))
    assert [h.extra["converged"] for h in record.heads] == [False, False]
    (note,) = [n for n in record.notes if "L-BFGS" in n]
    assert "--lbfgs-max-iter 1 before converging in 2 of 2 strengths of the path (1, 0.01)" in note
    assert "the refit at strength" in note and "raise --lbfgs-max-iter" in note
    assert note in caplog.text


def test_knn_caps_k_at_the_fit_rows_and_says_so(tmp_path, caplog):
    from featcache.knn import KNNConfig
    from featcache.probe import probe_key_for

    X, y = _blobs(100, 4, 6, spread=1.0, seed=5)
    Xt, yt = _blobs(40, 4, 6, spread=1.0, seed=6)
    store = make_store(tmp_path / "d" / "small.zarr", {"train": (X, y), "test": (Xt, yt)}, name="small")
    cfg = ProbeConfig((store,), NOISY_HEADS, device="cpu", views=0, solver=KNNConfig())  # k up to 200
    record = run_probe(cfg)
    assert record.rows["fit"] == 92
    assert [h.params["k"] for h in record.heads] == [10, 20, 92]  # 100 and 200 capped: one point
    assert [h.extra for h in record.heads] == [{}, {}, {"k_requested": [100, 200]}]
    (note,) = record.notes
    assert "--knn-k 100, 200 exceed the 92 fit rows" in note and "used k = 92" in note and note in caplog.text
    assert record.hyperparameters["ks"] == (10, 20, 100, 200) and record.key == probe_key_for(cfg)
