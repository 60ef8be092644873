"""featcache.packed and heads.PackedProbe: probes trained in one pass over the union of their stores get the records
they get alone; probes that cannot pack run alone.

The stores hold overlapping class blobs (about 50-80% accuracy), each store a different share of the signal and
its own offsets and scales, so each probe's heads, selection and research number differ from the others': a pack
that gave a probe another probe's columns, statistics or batches would give it another record.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from decimal import Decimal

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from store_factory import make_store

from featcache import heads_step
from featcache import sweep as sweep_mod
from featcache.cli import main
from featcache.errors import ProbeError
from featcache.evaluate_config import EvalTarget
from featcache.heads import HeadConfig, MultiHeadProbe, PackedProbe
from featcache.heads_step import HeadTrainer
from featcache.lowshot import TrainFraction
from featcache.packed import pack_key, plan_packs, run_packed
from featcache.probe import ProbeConfig, fit_probe, run_probe
from featcache.probe_config import config_from, solver_config
from featcache.results import load_records
from featcache.saved_head import read_head

HEADS = HeadConfig(epochs=4, batch_size=32, milestones=(2,), lr=0.05, weight_decays=(1e-4, 3e-2, 0.3), seed=5)
DIMS = (6, 4, 5)


def _blobs(n: int, seed: int, classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    means = np.random.default_rng(99).normal(size=(classes, sum(DIMS))) * 0.5
    X = means[y] + rng.normal(size=(n, sum(DIMS)))
    X = X * np.linspace(0.5, 3.0, sum(DIMS)) + np.linspace(-2.0, 4.0, sum(DIMS))  # BatchNorm has work to do
    return X.astype(np.float32), y


@pytest.fixture
def stores(tmp_path):
    """Three stores of 300 train rows (one train view each), splitting 15 feature columns 6/4/5."""
    (Xtr, ytr), (Xte, yte), (Xv, _) = _blobs(300, 0), _blobs(100, 1), _blobs(300, 2)
    cuts = np.cumsum((0, *DIMS))
    return [
        make_store(
            tmp_path / "syn" / f"s{k}.zarr",
            {"train": (Xtr[:, a:b], ytr), "test": (Xte[:, a:b], yte)},
            name=f"s{k}",
            chunk_rows=64,
            views={"train": [Xv[:, a:b]]},
        )  # fmt: skip
        for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True))
    ]


def _configs(stores, draws, **over) -> list[ProbeConfig]:
    return [ProbeConfig(tuple(stores[i] for i in d), HEADS, device="cpu", **over) for d in draws]


def _numbers(record) -> tuple:
    """What a probe's record says about its heads: every grid point, the selection and the research number."""
    return (record.features, record.feature_dim, record.rows, record.views, record.key,
            [dataclasses.astuple(h) for h in record.heads], dataclasses.astuple(record.selected),
            dataclasses.astuple(record.research))  # fmt: skip


# cat1 of each store, a cat2 of stores 2 and 0 (reversed, not contiguous in the union) and cat3: a sweep's shape.
DRAWS = [(0,), (1,), (2,), (2, 0), (0, 1, 2)]


@pytest.mark.parametrize("views", [0, 1])
def test_packed_records_are_the_records_alone(stores, views):
    configs = _configs(stores, DRAWS, views=views)
    alone = [run_probe(c) for c in configs]
    packed = list(run_packed(configs))
    assert [r.memory for r in packed] == ["resident, packed x5"] * 5 and alone[0].memory == "resident"
    for a, p in zip(alone, packed, strict=True):
        assert _numbers(p) == _numbers(a)
        assert p.notes == a.notes and p.stores == a.stores
    # the probes really differ, so a pack that swapped their columns would be seen
    assert len({r.selected.test_top1 for r in alone}) >= 4
    assert len({tuple((h.val_top1, h.test_top1) for h in r.heads) for r in alone}) == 5


@pytest.mark.parametrize(
    "heads", [HEADS, dataclasses.replace(HEADS, head="linear"), dataclasses.replace(HEADS, lrs=(0.01, 0.2))]
)
def test_packed_heads_are_the_heads_alone(heads):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 9, generator=g) * torch.linspace(0.5, 2.0, 9) + 1.0
    y = torch.randint(0, 4, (200,), generator=g)
    Xt, yt = torch.randn(80, 9, generator=g), torch.randint(0, 4, (80,), generator=g)
    groups = [[0, 1, 2], [6, 7, 8], [8, 2, 5, 0], list(range(9))]
    packed = PackedProbe(heads, 9, 4, groups).fit(X, y, {"test": (Xt, yt)})
    for g, cols in enumerate(groups):
        alone = MultiHeadProbe(heads, len(cols), 4).fit(X[:, cols], y, {"test": (Xt[:, cols], yt)})
        mine = packed.probes_[g]
        for h in range(len(heads.grid)):
            for key, value in alone.head_state(h).items():
                torch.testing.assert_close(mine.head_state(h)[key], value, atol=1e-5, rtol=0, msg=key)
        for ra, rp in zip(alone.history_, mine.history_, strict=True):
            assert rp["test_top1"] == ra["test_top1"] and rp["train_loss"] == pytest.approx(ra["train_loss"], abs=1e-5)
        torch.testing.assert_close(
            mine.predict_logits(Xt[:, cols]), alone.predict_logits(Xt[:, cols]), atol=1e-5, rtol=0
        )
    H = len(heads.grid)
    assert packed.probes_[0].weight_.shape == (H, 4, 3) and packed.probes_[2].weight_.shape == (H, 4, 4)
    # the groups really differ, so a group served another's columns would be seen
    assert len({tuple(p.history_[-1]["test_top1"]) for p in packed.probes_}) == 4


def test_probes_that_cannot_share_batches_do_not_pack(stores):
    base = _configs(stores, [(0,)])[0]
    other_seed = dataclasses.replace(base, heads=dataclasses.replace(HEADS, seed=6), stores=(stores[1],))
    lbfgs = dataclasses.replace(base, solver=solver_config("lbfgs"), views=0)
    configs = [base, other_seed, dataclasses.replace(base, stores=(stores[2],)), lbfgs]
    assert plan_packs(configs) == [[0, 2], [1], [3]]
    assert pack_key(lbfgs) is None
    with pytest.raises(ValueError, match="pack_key"):
        list(run_packed(configs[:2]))


def test_probes_whose_union_would_stream_run_alone(stores, caplog):
    # a budget that holds one store's features but not the union's: packing would change the batches
    configs = _configs(stores, [(0,), (1,), (2,)], views=0, max_memory=300 * 6 * 4 * 2 + 100 * 6 * 4)
    with caplog.at_level(logging.INFO, logger="featcache.packed"):
        packed = list(run_packed(configs))
    assert "run one by one, not packed: their union would be streamed" in caplog.text
    assert [r.memory for r in packed] == ["resident"] * 3
    assert [_numbers(r) for r in packed] == [_numbers(run_probe(c)) for c in configs]


def test_probe_command_with_several_feature_sets_logs_each_record_as_alone(stores, paths, registry):
    sets = [str(stores[0]), f"{stores[2]},{stores[0]}", ",".join(map(str, stores))]
    roots = ["--cache-dir", str(paths.cache), "--config-dir", str(paths.config)]
    args = ["probe", *[a for s in sets for a in ("--stores", s)], "--preset", "quick", "--epochs", "3", "--views", "1"]
    r = CliRunner().invoke(main, [*roots, *args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert r.output.count("TEST top-1") == 3 and r.output.count("resident, packed x3") == 3
    logged = load_records(paths.results_log)
    assert [r.features for r in logged] == ["cat1", "cat2", "cat3"]
    for record, s in zip(logged, sets, strict=True):
        alone = run_probe(config_from(registry, paths, stores=s, preset="quick", epochs=3, views=1))
        assert _numbers(record) == _numbers(alone)
    again = CliRunner().invoke(main, [*roots, "probe", "--stores", sets[0], "--stores", sets[0]])
    assert again.exit_code == 1 and "give each feature set once" in again.output


@pytest.mark.parametrize(("flag", "pack"), [([], True), (["--no-pack"], False)])
def test_sweep_command_packs_unless_told_not_to(paths, monkeypatch, flag, pack):
    asked = {}
    monkeypatch.setattr(sweep_mod, "run_sweep", lambda *a, **kw: asked.update(kw))
    roots = ["--cache-dir", str(paths.cache), "--checkpoint-dir", str(paths.checkpoints)]
    r = CliRunner().invoke(main, [*roots, "sweep", "digits", "--no-report", "--quiet", *flag], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert asked["pack"] is pack


def test_a_non_finite_loss_in_a_pack_runs_its_probes_alone(stores, monkeypatch, caplog):
    """The pack stops; run alone, the probes before the bad one keep their records and the bad one names itself."""
    take = HeadTrainer.take_losses

    def diverged(self):
        losses = take(self)
        if len(losses) > 1 or self.n_features == DIMS[1]:  # probe 1 diverges, packed or alone
            losses[1 if len(losses) > 1 else 0][0] = float("nan")
        return losses

    monkeypatch.setattr(HeadTrainer, "take_losses", diverged)
    configs = _configs(stores, DRAWS[:3], views=0)
    records = run_packed(configs)
    with caplog.at_level(logging.INFO, logger="featcache.packed"):
        first = next(records)
    assert "packed probe 1: training loss of head(s) [0] of packed probe 1 became non-finite" in caplog.text
    assert first.memory == "resident" and first.stores[0].name == "s0"
    with pytest.raises(ProbeError, match=r"lr=0.05 wd=0.0001 became non-finite at epoch 1 on stores s1"):
        next(records)


@pytest.mark.parametrize(
    "heads",
    [HEADS, dataclasses.replace(HEADS, head="linear", nesterov=False), dataclasses.replace(HEADS, lrs=(0.01, 0.2))],
)
def test_the_fused_update_used_on_cuda_is_the_flat_update(heads, monkeypatch):
    """On CUDA the SGD update is torch's fused kernel, one call per head position; forced here on the CPU (where it
    is slow, so never used), it must update every group's heads as the flat update does."""
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(150, 9, generator=g) + 1.0, torch.randint(0, 4, (150,), generator=g)
    groups = [[0, 1, 2], [6, 7, 8], [8, 2, 5, 0], list(range(9))]
    flat = PackedProbe(heads, 9, 4, groups).fit(X, y)
    monkeypatch.setattr(heads_step, "fused_sgd", lambda device, dtype: True)
    fused = PackedProbe(heads, 9, 4, groups).fit(X, y)
    for a, b in zip(flat.probes_, fused.probes_, strict=True):
        for h in range(len(heads.grid)):
            for key, value in a.head_state(h).items():
                torch.testing.assert_close(b.head_state(h)[key], value, atol=1e-6, rtol=0, msg=key)
    assert (flat.probes_[0].weight_[0] - flat.probes_[0].weight_[-1]).abs().max() > 1e-3  # heads differ


def test_packed_probes_save_and_evaluate_the_heads_they_get_alone(stores, tmp_path):
    """A probe that saves and evaluates its head packs too: each saved head scores its record's test number bit for
    bit with `featcache evaluate` (the head of its own group, selected head and epoch), and is the head it saves
    alone; each record is followed by its head's evaluations (per model: each store's block alone)."""
    configs = [
        dataclasses.replace(c, save_head=tmp_path / "heads" / f"p{k}.safetensors",
                            evaluate=(EvalTarget("synthetic", c.stores, "test", per_model=True),))
        for k, c in enumerate(_configs(stores, DRAWS, views=0))
    ]  # fmt: skip
    assert len(plan_packs(configs)) == 1
    out = list(run_packed(configs))
    assert [type(r).__name__ for r in out] == ["ProbeRecord", "EvaluationRecord"] * 5
    records, evals = out[::2], out[1::2]
    assert [r.memory for r in records] == ["resident, packed x5"] * 5
    assert [e.head_id for e in evals] == [r.id for r in records]
    roots = ["--cache-dir", str(tmp_path / "cache"), "--results", str(tmp_path / "eval.jsonl")]
    for cfg, record, ev in zip(configs, records, evals, strict=True):
        assert (ev.top1, ev.top5) == (record.selected.test_top1, record.selected.test_top5)  # ==, not approx
        assert [b.store for b in ev.per_model] == [s.name for s in record.stores]
        args = ["evaluate", "--head", str(cfg.save_head), "--stores", ",".join(map(str, cfg.stores)), "--split",
                "test", "--device", "cpu", "--format", "json"]  # fmt: skip
        r = CliRunner().invoke(main, [*roots, *args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        doc = json.loads(r.output[: r.output.rindex("}") + 1])
        assert (doc["top1"], doc["head_id"]) == (record.selected.test_top1, record.id)
        alone = fit_probe(dataclasses.replace(cfg, save_head=None))
        assert _numbers(alone.record) == _numbers(record)
        packed = read_head(cfg.save_head)
        for key in ("weight", "bias", "mean", "scale"):
            torch.testing.assert_close(getattr(packed.head, key), getattr(alone.head.head, key), atol=1e-5, rtol=0)
        torch.testing.assert_close(packed.block_bias, alone.head.block_bias, atol=1e-5, rtol=0)
    # the probes' heads differ, so a head kept from another group, grid point or epoch would be seen
    assert len({r.selected.test_top1 for r in records}) >= 4


def test_low_shot_probes_pack_on_their_subset_and_get_their_records_alone(stores, caplog):
    """--train-fraction: the pack trains on the subset's rows (of every view), as each probe does alone; another
    fraction is another pack."""
    configs = _configs(stores, DRAWS[:4], views=1, train_fraction=TrainFraction(Decimal(40)))
    configs.append(dataclasses.replace(configs[0], train_fraction=TrainFraction(Decimal(60))))
    assert plan_packs(configs) == [[0, 1, 2, 3], [4]]
    with caplog.at_level(logging.INFO, logger="featcache.packed"):
        packed = list(run_packed(configs[:4]))
    assert "not packed" not in caplog.text
    assert [r.memory for r in packed] == ["resident, packed x4"] * 4
    for cfg, p in zip(configs[:4], packed, strict=True):
        alone = run_probe(cfg)
        assert _numbers(p) == _numbers(alone) and p.train_subset == alone.train_subset
        assert p.rows["train"] == 120  # 40% of 300: not the whole split
