"""featcache sweep: the digits sweep end to end (made small), reruns, kills, dry runs and the schema's errors."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest
import torch
import yaml
from ckpt_factory import make_net
from click.testing import CliRunner
from PIL import Image
from store_factory import make_store

from featcache import sweep as sweep_mod
from featcache.cli import main
from featcache.config import Paths, load_registry
from featcache.demo import to_algoperf
from featcache.errors import ConfigError
from featcache.heads import HeadConfig
from featcache.probe import ProbeConfig, probe_key_for, run_probe
from featcache.report import build_report, write_report
from featcache.results import append_record, load_records
from featcache.sweep import load_sweep, plan_sweep, run_sweep
from featcache.sweep_config import parse_sweep

# The digits sweep as the demo runs it, made small: 2 draws per row (14 checkpoints), 60 samples per split,
# 2 views, 2 epochs. The code path is the demo's.
SMALL = {"draws": 2, "limit": 60, "views": 2, "epochs": 2}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Random (untrained) demo checkpoints in the AlgoPerf format, and the small sweep run once."""
    root = tmp_path_factory.mktemp("sweep")
    paths = Paths(data=root / "data", cache=root / "cache", checkpoints=root / "ckpts")
    reg = load_registry(paths)
    sweep = load_sweep("digits", reg).with_overrides(**SMALL)
    names = dict.fromkeys(c.name for row in sweep.rows for d in row.draws for c in reg.expand_checkpoints(d))
    for seed, name in enumerate(names):
        spec = reg.checkpoint(name)
        spec.path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model_params": to_algoperf(make_net("resnet10", seed).state_dict()), "global_step": 1}, spec.path)
    lines: list[str] = []
    first = run_sweep(sweep, reg, paths, echo=lines.append)
    return paths, reg, sweep, first, lines


def _keys(paths):
    return Counter(r.key for r in load_records(paths.results_log))


def test_digits_sweep_end_to_end(world):
    paths, reg, sweep, first, lines = world
    plan = first.plan
    assert (first.extracted, first.ran, first.skipped) == (14, 6, 0)
    assert [(r.name, r.models, r.draws, r.steps_per_model, r.total_steps) for r in plan.rows] == [
        ("cat1", 1, 2, 64, 64), ("cat2", 2, 2, 32, 64), ("cat4", 4, 2, 16, 64)]  # fmt: skip
    # one progress line per step, and a summary
    assert sum(line.startswith("[extract 1/1] digits-transfer") for line in lines) == 2
    assert [line.split(" (")[0] for line in lines if line.startswith("[probe")] == [
        f"[probe {i}/6] digits-transfer {row} d{k}" for i, (row, k) in
        enumerate([(r, k) for r in ("cat1", "cat2", "cat4") for k in (0, 1)], 1)]  # fmt: skip
    assert "extracted 14 store(s), ran 6 probe(s)" in lines[-1]
    # every probe logged once, under its predicted key, tagged and shaped as planned
    records = load_records(paths.results_log)
    assert sorted(r.key for r in records) == sorted(p.key for p in plan.probes)
    by_key = {r.key: r for r in records}
    for p in plan.probes:
        r = by_key[p.key]
        assert r.tag == f"sweep:digits {p.row} d{p.draw}" and r.features == f"cat{len(p.stores)}"
        assert [s.name for s in r.stores] == list(p.stores) and r.views.count == 2 and r.hyperparameters["epochs"] == 2
    # each dataset's stores were written by one extraction, with the views the preset asks for
    store = plan.probes[-1].config.stores[-1]
    assert (
        json.loads((store / "train" / "zarr.json").read_text())["attributes"]["featcache_split"]["views"]["count"] == 2
    )


def test_rerun_runs_nothing_and_says_so(world, monkeypatch):
    paths, reg, sweep, _, _ = world
    before = (paths.results_log).read_bytes()

    def boom(*a, **k):
        raise AssertionError("a finished sweep must not extract or probe")

    monkeypatch.setattr(sweep_mod, "run_probe", boom)
    monkeypatch.setattr(sweep_mod, "extract", boom)
    lines: list[str] = []
    again = run_sweep(sweep, reg, paths, echo=lines.append)
    assert (again.extracted, again.ran, again.skipped) == (0, 0, 6)
    assert lines == [
        "sweep digits: nothing to do: every store is extracted and 6/6 probe results are in the results log"
    ]
    assert paths.results_log.read_bytes() == before


def test_interrupted_then_rerun_logs_each_result_exactly_once(world, tmp_path, monkeypatch):
    paths, reg, sweep, first, _ = world
    paths = dataclasses.replace(paths, results=tmp_path / "results.jsonl")  # same stores, a fresh log
    calls = []

    def interrupted(cfg):
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the 4th probe
        calls.append(cfg.tag)
        return run_probe(cfg)

    monkeypatch.setattr(sweep_mod, "run_probe", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, reg, paths)
    assert sum(_keys(paths).values()) == 3
    monkeypatch.setattr(sweep_mod, "run_probe", run_probe)
    lines: list[str] = []
    done = run_sweep(sweep, reg, paths, echo=lines.append)
    assert (done.extracted, done.ran, done.skipped) == (0, 3, 3)
    assert _keys(paths) == Counter(p.key for p in first.plan.probes)  # all six, once each
    assert [line.split(" (")[0] for line in lines[1:-1]] == [
        f"[probe {i}/3] digits-transfer {p}" for i, p in enumerate(("cat2 d1", "cat4 d0", "cat4 d1"), 1)
    ]


def test_a_result_logged_meanwhile_is_not_run_again(world, tmp_path, monkeypatch):
    """Two sweeps sharing a log: the log is read again just before each probe."""
    paths, reg, sweep, first, _ = world
    paths = dataclasses.replace(paths, results=tmp_path / "results.jsonl")
    shared = paths.results_log
    real = {}

    def logged_by_other(cfg):
        record = run_probe(cfg)
        real[cfg.tag] = record
        if cfg.tag.endswith("cat1 d0"):  # while it ran, another sweep logged the next probe
            append_record(shared, first.plan.done[first.plan.probes[1].key])
        return record

    monkeypatch.setattr(sweep_mod, "run_probe", logged_by_other)
    lines: list[str] = []
    run_sweep(sweep, reg, paths, echo=lines.append)
    assert "[probe 2/6] digits-transfer cat1 d1: already in the results log" in lines
    assert "sweep:digits cat1 d1" not in real and sum(_keys(paths).values()) == 6


def test_report_of_the_sweep(world, tmp_path):
    paths, reg, sweep, first, _ = world
    report = build_report(plan_sweep(sweep, reg, paths))
    files = write_report(report, tmp_path / "out")
    for f in (files.markdown, files.csv, files.plot):
        assert f.exists() and f.stat().st_size > 0
    with Image.open(files.plot) as im:
        im.verify()
        assert im.format == "PNG"
    found = {(p.row, p.draw): first.plan.done[p.key].selected.test_top1 for p in first.plan.probes}
    for row in ("cat1", "cat2", "cat4"):
        values = [found[(row, k)] for k in (0, 1)]
        cell = report.cells[(row, "digits-transfer")]
        assert cell.mean == pytest.approx(np.mean(values)) and cell.std == pytest.approx(np.std(values, ddof=1))


def test_dry_run_lists_what_would_run_and_what_is_done(world, tmp_path):
    paths, reg, sweep, first, _ = world
    plan = plan_sweep(sweep, reg, paths)
    assert plan.extracts == () and plan.pending() == []
    assert all(r["status"].startswith("done: top-1") for r in plan.describe())
    fresh = dataclasses.replace(paths, cache=tmp_path / "cache")  # same checkpoints, nothing extracted
    plan = plan_sweep(sweep, reg, fresh)
    rows = plan.describe()
    assert rows[0]["step"] == "extract" and rows[0]["status"] == "to run: missing"
    assert rows[0]["stores"].startswith("14 stores: demo-cat1-d0-m0")
    assert [r["status"] for r in rows[1:]] == ["to run, after extract"] * 6
    r = CliRunner().invoke(main, ["sweep", "digits", "--dry-run", "--cache-dir", str(tmp_path / "c2"),
                                  "--checkpoint-dir", str(paths.checkpoints)], catch_exceptions=False)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[-1] == (
        "dry run: 1 extraction(s) and 9 probe(s) would run; 0 of 9 probe(s) already done"
    )
    assert not (tmp_path / "c2").exists()  # a dry run writes nothing


def test_probe_key_for_predicts_the_record_key(tmp_path):
    rng = np.random.default_rng(0)
    stores = []
    for k in range(2):
        X, y = rng.standard_normal((40, 6)).astype("float32"), np.arange(40) % 3
        views = [X + rng.standard_normal(X.shape).astype("float32") for _ in range(2)]
        stores.append(make_store(tmp_path / f"s{k}.zarr", {"train": (X, y), "test": (X[:12], y[:12])},
                                 name=f"s{k}", views={"train": views}))  # fmt: skip
    heads = HeadConfig(epochs=2, batch_size=8, weight_decays=(1e-4, 1e-2), milestones=(1,))
    for views in (None, 0, 2):
        cfg = ProbeConfig(tuple(stores), heads, device="cpu", views=views, preset="quick", tag="t")
        assert run_probe(cfg).key == probe_key_for(cfg)
    cfg = ProbeConfig(tuple(stores), heads, device="cpu", views=None, preset="quick")
    assert probe_key_for(cfg) != probe_key_for(dataclasses.replace(cfg, stores=tuple(reversed(stores))))


def test_the_research_grid_resolves(paths, registry):
    sweep = load_sweep("timecat", registry)
    plan = plan_sweep(sweep, registry, paths)  # no data, no checkpoints: planning reads neither
    assert [(r.name, r.models, r.draws, r.steps_per_model, r.total_steps) for r in plan.rows] == [
        ("cat1", 1, 5, 450_000, 450_000), ("cat2", 2, 1, 200_000, 400_000), ("cat4", 4, 1, 100_000, 400_000),
        ("cat5", 5, 1, 80_000, 400_000)]  # fmt: skip
    assert {d.name for d in sweep.datasets} == {"cifar10", "cifar100", "inaturalist18", "imagenet1k"}
    assert len(plan.extracts) == 4 and all(len(e.config.checkpoints) == 16 for e in plan.extracts)
    presets = {p.dataset: (p.config.preset, p.config.views, p.config.heads.batch_size) for p in plan.probes}
    assert presets == {"cifar10": ("cifar", 8, 256), "cifar100": ("cifar", 8, 256), "imagenet1k": ("imagenet", 8, 32),
                       "inaturalist18": ("inat", 8, 32)}  # fmt: skip
    assert len(plan.probes) == 4 * 8


GOOD = {"rows": {"cat1": {"draws": ["run0"], "steps_per_model": 10}}, "datasets": ["cifar10"]}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"rowz": {}}, "x.yaml: unknown key(s) rowz; known: name, rows, datasets, extract, probe, description"),
        ({"rows": {"cat1": {"draws": ["run0"], "steps": 3}}}, "rows.cat1: unknown key(s) steps; known: draws"),
        ({"rows": {"cat1": {"draws": ["run0"], "steps_per_model": "many"}}}, "rows.cat1.steps_per_model must be"),
        ({"rows": {"cat1": {"draws": ["run0"], "steps_per_model": 0}}}, "steps_per_model must be an integer >= 1"),
        ({"rows": {"cat1": {"draws": []}}}, "rows.cat1.draws must be a non-empty list"),
        ({"rows": {"cat1": {"steps_per_model": 3}}}, "rows.cat1: missing key 'draws'"),
        ({"rows": {"cat 1": {"draws": ["run0"]}}}, "rows: 'cat 1' must be one word"),
        ({"rows": None}, "missing key 'rows'"),
        ({"datasets": {"cifar10": {"view": 2}}}, "datasets.cifar10: unknown key(s) view; known: preset, transform"),
        ({"datasets": {"cifar10": {"views": -1}}}, "datasets.cifar10.views must be an integer >= 0"),
        ({"extract": {"batch_size": True}}, "extract.batch_size must be an integer >= 1"),
        ({"extract": {"workerz": 2}}, "extract: unknown key(s) workerz; known: batch_size"),
        ({"probe": {"device": ["cpu"]}}, "probe.device must be a string"),
        ({"name": "two words"}, "x.yaml: name: 'two words' must be one word"),
    ],
)  # fmt: skip
def test_schema_errors_name_the_key(change, needle):
    with pytest.raises(ConfigError) as e:
        parse_sweep({**GOOD, **change}, "x.yaml", "x")
    assert needle in str(e.value)


def test_errors_found_when_resolving(tmp_path, paths, registry):
    def plan(doc):
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump(doc))
        return plan_sweep(load_sweep(str(path), registry), registry, paths)

    with pytest.raises(ConfigError, match=r"rows.cat2.draws: draw 1 \(run1\) has 1 checkpoint\(s\), draw 0"):
        plan({**GOOD, "rows": {"cat2": {"draws": ["step200k", "run1"]}}})
    with pytest.raises(ConfigError, match="unknown checkpoint 'run9'"):
        plan({**GOOD, "rows": {"cat1": {"draws": ["run9"]}}})
    with pytest.raises(ConfigError, match="unknown dataset 'cifar11'"):
        plan({**GOOD, "datasets": ["cifar11"]})
    with pytest.raises(ConfigError, match="s.yaml: extract: --dtype 'float8'"):
        plan({**GOOD, "extract": {"dtype": "float8"}})
    with pytest.raises(ConfigError, match="unknown sweep 'timecats'.*did you mean 'timecat'"):
        load_sweep("timecats", registry)
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'.*known: cifar10"):
        load_sweep("timecat", registry).with_overrides(datasets=["mnist"])


def test_stores_of_another_limit_are_refused(world):
    paths, reg, sweep, _, _ = world
    with pytest.raises(ConfigError, match=r"was extracted with limit 60 but .*digits.yaml: datasets.digits-transfer "
                                          r"asks for limit 50; delete the store"):  # fmt: skip
        plan_sweep(sweep.with_overrides(limit=50), reg, paths)
