"""featcache.saved_head and featcache.linear_head: the selected head saved as it scored, read back, as a Module.

The probe data are overlapping classes, so that another epoch or another head of the grid scores test otherwise
than the selected one: a head saved at the wrong epoch or index would not reproduce the probe's number (see
tests/README.md). References are written independently: torch.nn.BatchNorm1d + Linear loaded from the head's
unfolded parameters, and the research code's per-block formula.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open
from store_factory import make_store

import featcache as fc
from featcache import heads as heads_mod
from featcache.errors import ConfigError
from featcache.evaluate import evaluate_head
from featcache.evaluate_config import EvalTarget
from featcache.heads import HeadConfig
from featcache.logreg import LogRegConfig
from featcache.probe import ProbeConfig, fit_probe, run_probe
from featcache.saved_head import read_head

HEADS = HeadConfig(epochs=6, batch_size=32, milestones=(4,), lr=0.05, weight_decays=(1e-4, 3e-2, 0.3), seed=7)
DIMS = (3, 5, 4)  # unequal blocks: an offset off by one block reads other columns


def _blobs(n, classes, dims, seed):
    """Overlapping class blobs; the first block carries most of the signal, the last almost none."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    parts = []
    for k, (d, spread) in enumerate(zip(dims, (1.2, 0.5, 0.1), strict=True)):
        means = np.random.default_rng(100 + k).normal(size=(classes, d)) * spread
        parts.append(means[y] + rng.normal(size=(n, d)))
    return np.concatenate(parts, 1).astype(np.float32), y


@pytest.fixture
def stores(tmp_path):
    """Three float16 stores (dims 3, 5, 4) of 7 overlapping classes, named ant ... gnu."""
    Xtr, ytr = _blobs(700, 7, DIMS, 0)
    Xte, yte = _blobs(420, 7, DIMS, 1)
    names = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu"]
    bounds = np.cumsum((0, *DIMS))
    return tuple(
        make_store(tmp_path / "blobs" / f"m{k}.zarr", {"train": (Xtr[:, a:b], ytr), "test": (Xte[:, a:b], yte)},
                   name=f"m{k}", chunk_rows=100, dtype="float16", classes={"train": names, "test": names})
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
    )  # fmt: skip


@pytest.fixture
def snapshots(monkeypatch):
    """For every MultiHeadProbe fitted: each epoch's unfolded head states (head_state, independent of the saving)."""
    taken: list[list[list[dict]]] = []
    fit = heads_mod.MultiHeadProbe.fit

    def record(self, *a, on_epoch=None, **kw):
        epochs: list[list[dict]] = []
        taken.append(epochs)

        def hook(probe, e):
            epochs.append([probe.head_state(h) for h in range(probe.n_heads)])
            if on_epoch is not None:
                on_epoch(probe, e)

        return fit(self, *a, on_epoch=hook, **kw)

    monkeypatch.setattr(heads_mod.MultiHeadProbe, "fit", record)
    return taken


def _reference(state: dict) -> torch.nn.Module:
    """torch.nn's BatchNorm1d + Linear loaded with a head's unfolded parameters."""
    C, D = state["fc.weight"].shape
    net = torch.nn.Sequential()
    net.add_module("bn", torch.nn.BatchNorm1d(D))
    net.add_module("fc", torch.nn.Linear(D, C))
    net.load_state_dict(state)
    return net.eval()


def _features(stores, split="test"):
    X, y, _ = fc.load_split([str(s) for s in stores], split)
    return torch.from_numpy(X.astype(np.float32)), y


@pytest.mark.parametrize("in_memory", ["yes", "no"])
def test_a_saved_sgd_head_scores_the_probes_test_number_bit_for_bit(stores, tmp_path, snapshots, in_memory):
    path = tmp_path / "heads" / "h.safetensors"
    cfg = ProbeConfig(stores, HEADS, device="cpu", views=0, in_memory=in_memory, save_head=path)
    record = run_probe(cfg)
    ev = evaluate_head(read_head(path), EvalTarget("blobs", stores, "test"), device=torch.device("cpu"))
    assert (ev.top1, ev.top5) == (record.selected.test_top1, record.selected.test_top5)  # ==, not approx
    assert ev.head_key == record.key and ev.head_id == record.id and ev.class_map == "same" and ev.rows == 420

    if in_memory == "no":  # streamed: the same arithmetic on other batches (a block shuffle), another training
        return
    # the saved head is the selected one at the selected epoch: every other (head, epoch) scores test otherwise
    select, final = snapshots
    wds = HEADS.weight_decays
    h, e = wds.index(record.selected.params["weight_decay"]), record.selected.epoch
    X, y = _features(stores)
    test = [[float((_reference(s).forward(X).argmax(1).numpy() == y).mean() * 100) for s in ep] for ep in final]
    assert e < len(test)  # not the last epoch: a head kept at the end of training would be another head
    near = {(h, e - 1), (h, e + 1), (h, len(test))} | {(g, e) for g in range(len(wds))}  # a wrong epoch or head
    others = {round(test[k - 1][g], 6) for g, k in near - {(h, e)}}
    assert round(test[e - 1][h], 6) not in others and abs(test[e - 1][h] - record.selected.test_top1) < 0.5
    model = fc.load_head(path)
    torch.testing.assert_close(model(X), _reference(final[e - 1][h])(X), atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(model.as_linear()(X), model(X), atol=1e-4, rtol=1e-4)


def test_a_saved_lbfgs_head_scores_the_probes_test_number_bit_for_bit(stores, tmp_path):
    path = tmp_path / "l.safetensors"
    solver = LogRegConfig(strengths=(1.0, 1e-2, 1e-4))
    record = run_probe(ProbeConfig(stores, HEADS, device="cpu", views=0, solver=solver, save_head=path))
    ev = evaluate_head(read_head(path), EvalTarget("blobs", stores, "test"), device=torch.device("cpu"))
    assert (ev.top1, ev.top5) == (record.selected.test_top1, record.selected.test_top5)
    # the refit at the selected strength, standardisation included: a Linear on (x - mean) / std
    model = fc.load_head(path)
    X, y = _features(stores)
    Xtr, _ = _features(stores, "train")
    mean, std = Xtr.double().mean(0), Xtr.double().std(0, unbiased=False)
    z = ((X.double() - mean) / std).float()
    torch.testing.assert_close(model(X), z @ model.weight.T + model.bias, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(model.as_linear()(X), model(X), atol=1e-4, rtol=1e-4)
    assert float((model(X).argmax(1).numpy() == y).mean() * 100) == pytest.approx(record.selected.test_top1, abs=0.5)


def test_the_file_holds_the_folded_head_its_classes_and_feature_layout(stores, tmp_path, snapshots):
    path = tmp_path / "h.safetensors"
    record = run_probe(ProbeConfig(stores, HEADS, device="cpu", views=0, save_head=path))
    with safe_open(str(path), "pt") as f:
        keys, doc = set(f.keys()), json.loads(f.metadata()["featcache_head"])
        W, b = f.get_tensor("weight"), f.get_tensor("bias")
    assert keys == {"weight", "bias", "block_bias", "norm.mean", "norm.scale"}
    assert doc["classes"] == ["ant", "bee", "cat", "dog", "eel", "fox", "gnu"] and doc["norm"] == "batchnorm"
    assert [(b_["store"], b_["sha256"], b_["dim"], b_["layer"], b_["pool"], b_["dtype"], b_["precision"])
            for b_ in doc["layout"]] == [(f"m{k}", f"sha-m{k}", d, "avgpool", "", "float16", "fp32")
                                         for k, d in enumerate(DIMS)]  # fmt: skip
    assert doc["layout"][0]["transform"] == {"name": "identity"}
    assert doc["probe"]["key"] == record.key and doc["probe"]["test_top1"] == record.selected.test_top1
    # folded: W * gamma and b + W @ beta of the selected head at the selected epoch
    h = HEADS.weight_decays.index(record.selected.params["weight_decay"])
    state = snapshots[1][record.selected.epoch - 1][h]
    torch.testing.assert_close(W, state["fc.weight"] * state["bn.weight"])
    torch.testing.assert_close(b, state["fc.bias"] + state["fc.weight"] @ state["bn.bias"])


def test_per_model_blocks_follow_the_research_formula(stores, tmp_path, snapshots):
    """cat_validate_network: BatchNorm (affine included) on all features, then block k's columns of its output
    through block k's columns of the Linear, plus the Linear's own bias."""
    path = tmp_path / "h.safetensors"
    record = run_probe(ProbeConfig(stores, HEADS, device="cpu", views=0, save_head=path))
    h = HEADS.weight_decays.index(record.selected.params["weight_decay"])
    ref = _reference(snapshots[1][record.selected.epoch - 1][h])
    X, y = _features(stores)
    rep = ref.bn(X)
    W, b = ref.fc.weight, ref.fc.bias
    model = fc.load_head(path)
    ev = evaluate_head(read_head(path), EvalTarget("blobs", stores, "test", per_model=True), device=torch.device("cpu"))
    bounds = np.cumsum((0, *DIMS))
    expected = []
    with torch.no_grad():
        for k, (a, c) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            logits = rep[:, a:c] @ W[:, a:c].T + b
            torch.testing.assert_close(model(X, block=k), logits, atol=1e-4, rtol=1e-4)
            expected.append(float((logits.argmax(1).numpy() == y).mean() * 100))
    got = [blk.top1 for blk in ev.per_model]
    assert [blk.store for blk in ev.per_model] == ["m0", "m1", "m2"]
    assert got == pytest.approx(expected, abs=0.5)
    assert got[0] > got[1] > got[2] + 10  # the blocks differ: a block read at another's offset scores otherwise


def test_heads_score_one_product_per_head_as_a_saved_head_does(stores):
    """The probe's per-epoch test accuracy of every head is the accuracy of that head's LinearHead alone."""
    from featcache.heads import MultiHeadProbe

    X, y = _features(stores, "train")
    probe = MultiHeadProbe(HEADS, sum(DIMS), 7).fit(X, y, eval_sets={"t": (X, y)})
    scored = probe.evaluate(X, y)
    for h, head in enumerate(probe.scoring_heads()):
        s = head.score(X, y)
        assert (s.top1, s.top5) == (scored["top1"][h], scored["top5"][h]) == (
            probe.history_[-1]["t_top1"][h], probe.history_[-1]["t_top5"][h])  # fmt: skip


def test_knn_has_no_head_to_save_or_evaluate(stores, tmp_path):
    from featcache.knn import KNNConfig

    for kw, option in (({"save_head": tmp_path / "k.safetensors"}, "--save-head"),
                       ({"evaluate": (EvalTarget("blobs", stores),)}, "--eval")):  # fmt: skip
        with pytest.raises(ConfigError, match=f"^{option}: k-NN has no head"):
            ProbeConfig(stores, HEADS, views=0, solver=KNNConfig(), **kw)
    outcome = fit_probe(ProbeConfig(stores, HEADS, device="cpu", views=0, solver=KNNConfig(ks=(5,))))
    assert outcome.head is None


def _raw_safetensors(path, header: dict, payload: bytes = b"") -> None:
    doc = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(doc)) + doc + payload)


def test_files_that_are_not_heads_are_refused_in_one_line(stores, tmp_path):
    path = tmp_path / "h.safetensors"
    run_probe(ProbeConfig(stores, HEADS, device="cpu", views=0, save_head=path))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ConfigError, match="is not a safetensors file"):
        read_head(bad)
    _raw_safetensors(bad, {"__metadata__": {"other": "x"}})
    with pytest.raises(ConfigError, match="not a featcache head"):
        read_head(bad)
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["featcache_head"])
    _raw_safetensors(bad, {"__metadata__": {"featcache_head": json.dumps({**meta, "format": 99})}})
    with pytest.raises(ConfigError, match="head format 99; this featcache reads 1"):
        read_head(bad)
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3, 2), "bias": torch.zeros(3)}, bad, metadata={"featcache_head": json.dumps(meta)})
    with pytest.raises(ConfigError, match=r"tensor weight is \(3, 2\), its header says \(7, 12\)"):
        read_head(bad)
    with pytest.raises(ConfigError, match="no such file"):
        read_head(tmp_path / "missing.safetensors")
    assert list(tmp_path.glob(".*.tmp")) == []  # written to a temporary file, then renamed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("solver", [None, LogRegConfig(strengths=(1.0, 1e-2))])
def test_on_cuda_a_saved_head_scores_the_probes_test_number_bit_for_bit(stores, tmp_path, solver):
    path = tmp_path / "h.safetensors"
    record = run_probe(ProbeConfig(stores, HEADS, device="cuda", views=0, solver=solver, save_head=path))
    ev = evaluate_head(read_head(path, "cuda"), EvalTarget("blobs", stores), device=torch.device("cuda"))
    assert (ev.top1, ev.top5) == (record.selected.test_top1, record.selected.test_top5) and "cuda" in record.device
