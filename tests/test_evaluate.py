"""featcache evaluate, probe --eval and a sweep's eval/per_model: scoring saved heads on other stores and classes.

Class-mask tests use a shifted set whose classes are a permuted subset of the head's, so that mapping labels by
position, or ignoring the mask, gives another answer than mapping them by name (see tests/README.md).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import save_checkpoint
from data_factory import write_imagefolder
from store_factory import make_store

import featcache as fc
from featcache.cli import main
from featcache.config import load_registry
from featcache.errors import ConfigError, StoreError, StoreMismatchError
from featcache.evaluate import evaluate_head, run_evaluate
from featcache.evaluate_config import EvalTarget, config_from
from featcache.heads import HeadConfig
from featcache.probe import ProbeConfig, run_probe
from featcache.probe import config_from as probe_config_from
from featcache.results import append_record, load_evaluations, load_records
from featcache.saved_head import read_head

HEADS = HeadConfig(epochs=4, batch_size=32, milestones=(3,), lr=0.05, weight_decays=(1e-4, 1e-2))
NAMES = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu"]
DIMS = (4, 6)
SHIFTED = ["fox", "bee", "dog"]  # a permuted subset of the head's classes


def _blobs(n, classes, seed, spread=0.8):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(classes)
    means = np.random.default_rng(7).normal(size=(len(NAMES), sum(DIMS))) * spread  # by class name: one world
    return (means[[NAMES.index(c) for c in classes]][y] + rng.normal(size=(n, sum(DIMS)))).astype(np.float32), y


def _stores(root, dataset, splits, classes, over=None):
    """One store per block of DIMS under ``root/dataset``, named m0, m1, each split drawn for ``classes``."""
    out = []
    for k, (a, b) in enumerate(((0, DIMS[0]), (DIMS[0], sum(DIMS)))):
        data = {s: (X[:, a:b], y) for s, (X, y) in splits.items()}
        extra = {"dataset": {"name": dataset}, **(over or {}).get(k, {})}
        out.append(make_store(root / dataset / f"m{k}.zarr", data, name=f"m{k}", chunk_rows=64,
                              classes={s: classes for s in splits}, **extra))  # fmt: skip
    return tuple(out)


@pytest.fixture
def trained(paths):
    """The 7-class stores of dataset 'blobs' in the cache, and a head saved from their SGD probe."""
    splits = {"train": _blobs(560, NAMES, 0), "test": _blobs(280, NAMES, 1)}
    stores = _stores(paths.cache, "blobs", splits, NAMES)
    head = paths.cache / "h.safetensors"
    record = run_probe(ProbeConfig(stores, HEADS, device="cpu", views=0, save_head=head))
    return stores, head, record


def _masked_accuracy(head, X, y, mask):
    with torch.no_grad():
        logits = fc.load_head(head)(torch.from_numpy(X))
    return float((logits[:, list(mask)].argmax(1).numpy() == y).mean() * 100)


def test_a_shifted_set_is_scored_on_its_classes_by_name(trained, paths, registry):
    stores, head, record = trained
    X, y = _blobs(150, SHIFTED, 2)
    _stores(paths.cache, "shifted", {"test": (X, y)}, SHIFTED)
    ev = run_evaluate(config_from(registry, paths, head=head, dataset="shifted", device="cpu"))
    mask = [NAMES.index(c) for c in SHIFTED]
    assert ev.class_map == "by name" and ev.classes == 3 and ev.split == "test" and ev.rows == 150
    assert ev.top1 == pytest.approx(_masked_accuracy(head, X, y, mask), abs=1e-9) and ev.top5 is None
    # mapping the labels by position (0, 1, 2: ant, bee, cat) scores another number
    assert abs(ev.top1 - _masked_accuracy(head, X, y, [0, 1, 2])) > 10
    assert ev.head_key == record.key and ev.dataset == "shifted" and ev.head_dataset == "blobs"


@pytest.fixture
def extra_registry(paths, tmp_path):
    """A registry layer with datasets whose class_subset maps their numbered labels to the head's classes."""
    layer = tmp_path / "configs"
    layer.mkdir()
    entry = {"format": "imagefolder", "splits": ["test"], "transforms": {"224px": "imagenet-224px"}}
    datasets = {
        "subset-names": {**entry, "options": {"class_subset": SHIFTED}},
        "subset-index": {**entry, "options": {"class_subset": [NAMES.index(c) for c in SHIFTED]}},
        "subset-short": {**entry, "options": {"class_subset": SHIFTED[:2]}},
        "numbered": entry,
    }
    (layer / "datasets.yaml").write_text(yaml.safe_dump({"datasets": datasets}))
    paths = type(paths)(data=paths.data, cache=paths.cache, checkpoints=paths.checkpoints, config=layer)
    return paths, load_registry(paths)


def test_a_class_subset_option_maps_numbered_labels_to_the_heads_classes(trained, extra_registry):
    stores, head, _ = trained
    paths, reg = extra_registry
    X, y = _blobs(150, SHIFTED, 2)
    expected = _masked_accuracy(head, X, y, [NAMES.index(c) for c in SHIFTED])
    for name in ("subset-names", "subset-index", "subset-short", "numbered"):
        _stores(paths.cache, name, {"test": (X, y)}, ["0", "1", "2"])
    for name in ("subset-names", "subset-index"):
        ev = run_evaluate(config_from(reg, paths, head=head, dataset=name, device="cpu"))
        assert ev.class_map == "class_subset" and ev.top1 == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ConfigError, match=r"subset-short.*options.class_subset must list one class .* \(3\)"):
        config_from(reg, paths, head=head, dataset="subset-short")
    with pytest.raises(ConfigError, match=r"'numbered' split 'test' has 3 class\(es\) the head does not know \(0, 1"):
        config_from(reg, paths, head=head, dataset="numbered")


@pytest.mark.parametrize(
    ("field", "over", "made_by"),
    [
        ("sha256", {"checkpoint": {"sha256": "sha-other"}}, False),
        ("layer", {"layer": "layer3"}, False),
        ("pool", {"pool": "avg"}, False),
        ("transform", {"transform": {"name": "identity", "crop": 32}}, True),
        ("dtype", {"dtype": "float16"}, True),
        ("precision", {"precision": "bf16"}, True),
    ],
)
def test_stores_of_another_layout_are_refused_naming_the_store_and_field(trained, paths, registry, field, over,
                                                                         made_by):  # fmt: skip
    stores, head, record = trained
    X, y = _blobs(60, NAMES, 3)
    _stores(paths.cache, "other", {"test": (X, y)}, NAMES, {1: over})
    with pytest.raises(StoreMismatchError, match=rf"store 1 \(m1\) differs from the head's block 1 \(m1\) in {field}:"):
        config_from(registry, paths, head=head, dataset="other")
    if made_by:  # features made otherwise: scored on purpose, and said so
        ev = run_evaluate(config_from(registry, paths, head=head, dataset="other", allow_transform_mix=True))
        assert any(f"in {field}" in n for n in ev.notes)
    else:
        with pytest.raises(StoreMismatchError, match="extract store 1 from checkpoint m1"):
            config_from(registry, paths, head=head, dataset="other", allow_transform_mix=True)


def test_a_transform_of_another_name_but_the_same_parameters_fits(trained, paths, registry):
    stores, head, _ = trained
    X, y = _blobs(60, NAMES, 3)
    renamed = {"transform": {"name": "renamed"}}
    _stores(paths.cache, "renamed", {"test": (X, y)}, NAMES, {0: renamed, 1: renamed})
    assert run_evaluate(config_from(registry, paths, head=head, dataset="renamed", device="cpu")).notes == ()


def test_missing_stores_and_splits_name_the_command_that_makes_them(trained, paths, registry):
    stores, head, _ = trained
    X, y = _blobs(60, NAMES, 3)
    make_store(paths.cache / "half" / "m0.zarr", {"test": (X[:, :4], y)}, name="m0", classes={"test": NAMES})
    with pytest.raises(StoreError, match=r"no store .*half/m1.zarr .*`featcache extract --ckpt m1 --dataset half`"):
        config_from(registry, paths, head=head, dataset="half")
    with pytest.raises(StoreError, match="has no split 'val'"):
        config_from(registry, paths, head=head, dataset="blobs", split="val")
    with pytest.raises(StoreMismatchError, match=r"the head reads 2 store\(s\) \(m0, m1\), 1 given \(m0\)"):
        config_from(registry, paths, head=head, dataset="blobs", stores=str(stores[0]))


def test_probe_eval_is_checked_before_training_and_logs_one_record_each(trained, paths, registry, monkeypatch):
    stores, _, _ = trained
    X, y = _blobs(150, SHIFTED, 2)
    _stores(paths.cache, "shifted", {"test": (X, y)}, SHIFTED)
    opts = {"stores": "m0,m1", "dataset": "blobs", "preset": "quick", "epochs": 3, "weight_decays": (1e-4,),
            "device": "cpu"}  # fmt: skip
    with pytest.raises(ConfigError, match="unknown dataset 'nowhere'"):
        probe_config_from(registry, paths, evaluate="shifted,nowhere", **opts)
    make_store(paths.cache / "half" / "m0.zarr", {"test": (X[:, :4], y)}, name="m0", classes={"test": SHIFTED})
    with pytest.raises(StoreError, match=r"no store .*half/m1.zarr to score the head on; create it with"):
        probe_config_from(registry, paths, evaluate="shifted,half", **opts)
    other = {"transform": {"name": "sketch", "std": [0.3]}}
    _stores(paths.cache, "sketch", {"test": (X, y)}, SHIFTED, {0: other, 1: other})
    with pytest.raises(StoreMismatchError, match="in transform: .*; pass --allow-transform-mix"):
        probe_config_from(registry, paths, evaluate="sketch", **opts)
    cfg = probe_config_from(registry, paths, evaluate="sketch", allow_transform_mix=True, **opts)
    assert [t.allow_transform_mix for t in cfg.evaluate] == [True]
    r = CliRunner().invoke(main, ["--cache-dir", str(paths.cache), "--data-dir", str(paths.data), "probe", "--stores",
                                  "m0,m1", "--dataset", "blobs", "--preset", "quick", "--epochs", "3", "--wd", "1e-4",
                                  "--device", "cpu", "--save-head", str(paths.cache / "p.safetensors"), "--eval",
                                  "shifted,blobs@train"])  # fmt: skip
    assert r.exit_code == 0, r.output
    probe, *evals = load_records(paths.results_log) + load_evaluations(paths.results_log)
    assert [(e.dataset, e.split, e.head_id, e.head) for e in evals] == [
        ("shifted", "test", probe.id, str(paths.cache / "p.safetensors")),
        ("blobs", "train", probe.id, str(paths.cache / "p.safetensors"))]  # fmt: skip
    assert "head saved to" in r.output and r.output.count("appended to") == 3
    r = CliRunner().invoke(main, ["--cache-dir", str(paths.cache), "probe", "--stores", "m0,m1", "--dataset", "blobs",
                                  "--solver", "knn", "--save-head", str(paths.cache / "k.safetensors")])  # fmt: skip
    assert r.exit_code == 1 and r.output.startswith("Error: --save-head: k-NN has no head") and "\n" == r.output[-1]


def test_the_evaluate_command_reproduces_the_probe_and_logs_evaluations_apart(trained, paths, caplog):
    stores, head, record = trained
    roots = ["--cache-dir", str(paths.cache), "--data-dir", str(paths.data)]
    r = CliRunner().invoke(main, [*roots, "evaluate", "--head", str(head), "--split", "test", "--per-model",
                                  "--device", "cpu", "--format", "json", "--tag", "again"])  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output[: r.output.rindex("}") + 1])
    assert doc["top1"] == record.selected.test_top1 and doc["kind"] == "evaluation" and doc["tag"] == "again"
    assert [b["store"] for b in doc["per_model"]] == ["m0", "m1"]
    append_record(paths.results_log, record)
    with caplog.at_level(logging.WARNING):
        assert [x.id for x in load_records(paths.results_log)] == [record.id]  # the evaluation is no probe record
        assert [x.id for x in load_evaluations(paths.results_log)] == [doc["id"]]
    assert caplog.records == []
    r = CliRunner().invoke(main, [*roots, "results", "--evaluations", "--format", "csv"])
    assert r.exit_code == 0 and f"{record.id},{doc['id']}" in r.output.splitlines()[1]
    for bad, needle in (
        (["--head", str(paths.cache / "none.safetensors")], "no such file"),
        (["--head", str(head), "--dataset", "imagenet9k"], "unknown dataset 'imagenet9k'"),
    ):
        r = CliRunner().invoke(main, [*roots, "evaluate", *bad])
        assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and needle in r.output, r.output


def test_the_whole_flow_on_image_folders(paths, tmp_path):
    """Extract an ImageFolder and a shifted folder of 3 of its classes with two checkpoints, probe with --save-head
    and --eval, then featcache evaluate: the head on its own stores gives the probe's number; on the shifted ones,
    its classes by name."""
    classes = ("ant", "bee", "cat", "dog", "eel", "fox")
    write_imagefolder(paths.data / "src", ("train", "val"), classes, per_class=8, seed=0)
    write_imagefolder(paths.data / "shift", ("test",), ("fox", "bee", "dog"), per_class=4, seed=1)
    layer = tmp_path / "configs"
    layer.mkdir()
    entry = {"format": "imagefolder", "transforms": {"224px": "imagenet-224px"}, "probe": "quick"}
    (layer / "datasets.yaml").write_text(yaml.safe_dump({"datasets": {
        "src": {**entry, "root": "src", "splits": ["train", "val"]},
        "shift": {**entry, "root": "shift", "splits": ["test"]}}}))  # fmt: skip
    for k in range(2):
        save_checkpoint(paths, f"net{k}", seed=k)
    roots = ["--data-dir", str(paths.data), "--cache-dir", str(paths.cache), "--config-dir", str(layer),
             "--checkpoint-dir", str(paths.checkpoints)]  # fmt: skip
    ckpts = ",".join(str(paths.checkpoints / f"net{k}.pth") for k in range(2))

    def run(*args):
        r = CliRunner().invoke(main, [*roots, *args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r.output

    for ds in ("src", "shift"):
        run("extract", "--ckpt", ckpts, "--arch", "resnet10", "--dataset", ds, "--workers", "0", "--quiet",
            "--dtype", "float32", "--device", "cpu")  # fmt: skip
    head = tmp_path / "heads" / "src.safetensors"
    run("probe", "--stores", "net0,net1", "--dataset", "src", "--epochs", "3", "--device", "cpu", "--save-head",
        str(head), "--eval", "shift")  # fmt: skip
    run("evaluate", "--head", str(head), "--dataset", "src", "--split", "val", "--device", "cpu")
    run("evaluate", "--head", str(head), "--dataset", "shift", "--per-model", "--device", "cpu")
    (probe,) = load_records(paths.results_log)
    after_probe, own, shifted = load_evaluations(paths.results_log)
    assert own.top1 == probe.selected.test_top1 and own.top5 == probe.selected.test_top5
    assert (after_probe.dataset, after_probe.class_map, after_probe.top1) == ("shift", "by name", shifted.top1)
    assert [b.store for b in shifted.per_model] == ["net0", "net1"] and shifted.rows == 12
    X, y, _ = fc.load_split(["net0", "net1"], "test", dataset="shift", cache_dir=paths.cache)
    expected = _masked_accuracy_names(head, X, y, ["bee", "dog", "fox"])  # the folder's classes, sorted
    assert shifted.top1 == pytest.approx(expected, abs=1e-9)


def _masked_accuracy_names(head, X, y, names):
    model = fc.load_head(head)
    return _masked_accuracy(head, X, y, [model.classes.index(c) for c in names])


def test_a_head_read_back_evaluates_on_another_device_object(trained):
    """evaluate_head with a head read from its file and a target built by hand (the library path)."""
    stores, head, record = trained
    ev = evaluate_head(read_head(head), EvalTarget("blobs", stores), device=torch.device("cpu"))
    assert ev.top1 == record.selected.test_top1 and ev.split == "test"


SWEEP = {
    "description": "saved heads, scored on a shifted set and per model",
    "rows": {"cat1": {"steps_per_model": 64, "draws": ["demo-cat1-d0"]},
             "cat2": {"steps_per_model": 32, "draws": ["demo-cat2-d0"]}},
    "datasets": {"digits-transfer": {"views": 0, "epochs": 2, "limit": 60}},
    "extract": {"batch_size": 256, "workers": 0, "dtype": "float32"},
    "save_heads": True,
    "eval": ["digits-shift"],
    "per_model": True,
}  # fmt: skip


def test_a_sweep_saves_its_heads_scores_them_and_reports_per_model(paths, tmp_path):
    from featcache.demo import to_algoperf
    from featcache.report import build_report
    from featcache.sweep import load_sweep, plan_sweep, run_sweep
    from featcache.testing.checkpoints import make_net

    layer = tmp_path / "configs"
    (layer / "sweeps").mkdir(parents=True)
    shift = {"format": "digits", "splits": ["train", "test"], "transforms": {"32px": "digits-32px"}, "probe": "digits",
             "options": {"test_fraction": 0.25, "seed": 0, "classes": [9, 7, 5]}}  # fmt: skip
    (layer / "datasets.yaml").write_text(yaml.safe_dump({"datasets": {"digits-shift": shift}}))
    (layer / "sweeps" / "heads.yaml").write_text(yaml.safe_dump(SWEEP))
    paths = type(paths)(data=paths.data, cache=paths.cache, checkpoints=paths.checkpoints, config=layer)
    reg = load_registry(paths)
    sweep = load_sweep("heads", reg)
    for seed, name in enumerate(("demo-cat1-d0-m0", "demo-cat2-d0-m0", "demo-cat2-d0-m1")):
        spec = reg.checkpoint(name)
        spec.path.parent.mkdir(parents=True, exist_ok=True)
        step = SWEEP["rows"][name.split("-")[1]]["steps_per_model"]  # the step the row says (checked on loading)
        torch.save({"model_params": to_algoperf(make_net("resnet10", seed).state_dict()), "global_step": step},
                   spec.path)  # fmt: skip
    lines: list[str] = []
    run_sweep(sweep, reg, paths, echo=lines.append)
    assert lines[1].startswith("[extract 1/2] digits-shift: 3 store(s) (missing), 0 view(s)")
    probes = {r.tag.split()[1]: r for r in load_records(paths.results_log)}
    assert [r.memory for r in probes.values()] == ["resident, packed x2"] * 2  # heads saved and scored, packed
    logged = [json.loads(line) for line in paths.results_log.read_text().splitlines()]
    assert [d.get("head_id", d["id"]) for d in logged] == [probes["cat1"].id] * 2 + [probes["cat2"].id] * 3
    said = [line.split(" (")[0].split(": top-1")[0] for line in lines if line.startswith("[probe")]
    first, second = "[probe 1/2] digits-transfer cat1 d0", "[probe 2/2] digits-transfer cat2 d0"
    assert said == [first, f"{first}: head on digits-shift 'test'", second, f"{second}: head on digits-shift 'test'",
                    f"{second}: head on digits-transfer 'test'"]  # fmt: skip
    evals = load_evaluations(paths.results_log)
    heads = paths.cache / "heads" / "heads" / "digits-transfer"
    assert sorted(p.name for p in heads.iterdir()) == ["cat1-d0.safetensors", "cat2-d0.safetensors"]
    by = {(e.head_id, e.dataset): e for e in evals}
    assert len(evals) == 3 and set(by) == {(probes["cat1"].id, "digits-shift"), (probes["cat2"].id, "digits-shift"),
                                           (probes["cat2"].id, "digits-transfer")}  # fmt: skip
    shifted = by[(probes["cat2"].id, "digits-shift")]
    assert shifted.class_map == "by name" and shifted.classes == 3 and shifted.per_model == ()
    X, y, _ = fc.load_split(["demo-cat2-d0-m0", "demo-cat2-d0-m1"], "test", dataset="digits-shift",
                            cache_dir=paths.cache)  # fmt: skip
    assert shifted.top1 == pytest.approx(_masked_accuracy_names(heads / "cat2-d0.safetensors", X, y, ["9", "7", "5"]))
    own = by[(probes["cat2"].id, "digits-transfer")]
    assert [b.store for b in own.per_model] == ["demo-cat2-d0-m0", "demo-cat2-d0-m1"] and own.top1 == probes[
        "cat2"].selected.test_top1  # fmt: skip
    report = build_report(plan_sweep(sweep, reg, paths))
    row = {r["features"]: r for r in report.table_rows()}
    assert row["cat2"]["digits-transfer per-model"] == f"{np.mean([b.top1 for b in own.per_model]):.2f}"
    assert row["cat1"]["digits-transfer per-model"] == "-" and "per-model: the same heads" in report.footnote()
    csv = {r["features"]: r for r in report.csv_rows()}
    assert csv["cat2"]["digits-transfer_per_model_mean"] == pytest.approx(np.mean([b.top1 for b in own.per_model]))
    again: list[str] = []
    run_sweep(sweep, reg, paths, echo=again.append)
    assert again[-1].startswith("sweep heads: nothing to do") and len(load_evaluations(paths.results_log)) == 3
