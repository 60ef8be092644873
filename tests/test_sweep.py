"""featcache sweep: the digits sweep end to end (made small), reruns, kills, dry runs and the schema's errors."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ckpt_factory import make_net
from click.testing import CliRunner
from PIL import Image
from store_factory import make_store

from featcache import checkpoints, extract_config, probe_config, sweep_probes
from featcache import sweep as sweep_mod
from featcache.checkpoints import file_changed, file_sha256
from featcache.cli import main
from featcache.config import ExtractOptions, Paths, load_registry
from featcache.config.sweep import parse_sweep
from featcache.demo import to_algoperf
from featcache.errors import ConfigError, StoreMismatchError
from featcache.heads import HeadConfig
from featcache.probe import ProbeConfig, probe_key_for, run_probe
from featcache.report import build_report, write_report
from featcache.results import append_record, claim, claims_dir, load_records
from featcache.store import Store, StoreWriter
from featcache.sweep import load_sweep, plan_sweep, run_sweep

# The digits sweep as the demo runs it, made small: 2 draws per row (14 checkpoints), 60 samples per split,
# 2 views, 2 epochs. The code path is the demo's.
SMALL = {"draws": 2, "limit": 60, "views": 2, "epochs": 2}


def save_demo_checkpoints(reg, sweep) -> None:
    """Random (untrained) checkpoints of the sweep in the AlgoPerf format, one seed each, where none exists; each
    records its row's steps per model, as a trained one would."""
    steps = {c.name: row.steps_per_model for row in sweep.rows for d in row.draws for c in reg.expand_checkpoints(d)}
    for seed, name in enumerate(steps):
        spec = reg.checkpoint(name)
        if not spec.path.exists():
            spec.path.parent.mkdir(parents=True, exist_ok=True)
            state = to_algoperf(make_net("resnet10", seed).state_dict())
            torch.save({"model_params": state, "global_step": steps[name] or 0}, spec.path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Random (untrained) demo checkpoints in the AlgoPerf format, and the small sweep run once."""
    root = tmp_path_factory.mktemp("sweep")
    paths = Paths(data=root / "data", cache=root / "cache", checkpoints=root / "ckpts")
    reg = load_registry(paths)
    sweep = load_sweep("digits", reg).with_overrides(**SMALL)
    save_demo_checkpoints(reg, sweep)
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

    monkeypatch.setattr(sweep_probes, "run_probe", boom)
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

    monkeypatch.setattr(sweep_probes, "run_probe", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, reg, paths, pack=False)  # probes one by one (packed: test_a_packed_sweep_interrupted_...)
    assert sum(_keys(paths).values()) == 3
    monkeypatch.setattr(sweep_probes, "run_probe", run_probe)
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

    monkeypatch.setattr(sweep_probes, "run_probe", logged_by_other)
    lines: list[str] = []
    run_sweep(sweep, reg, paths, echo=lines.append, pack=False)
    assert "[probe 2/6] digits-transfer cat1 d1: already in the results log" in lines
    assert "sweep:digits cat1 d1" not in real and sum(_keys(paths).values()) == 6


def test_a_sweep_packs_each_datasets_probes_and_logs_the_records_they_get_alone(world):
    paths, reg, sweep, first, _ = world
    records = {r.key: r for r in load_records(paths.results_log) if r.tag.startswith("sweep:digits")}
    for p in first.plan.probes:
        packed, alone = records[p.key], run_probe(p.config)
        assert packed.memory.endswith("packed x6") and not alone.memory.endswith("packed x6")
        assert [dataclasses.astuple(h) for h in packed.heads] == [dataclasses.astuple(h) for h in alone.heads]
        assert (packed.selected, packed.research, packed.key) == (alone.selected, alone.research, alone.key)


def test_a_packed_sweep_interrupted_keeps_what_was_logged_then_finishes(world, tmp_path, monkeypatch):
    paths, reg, sweep, first, _ = world
    paths = dataclasses.replace(paths, results=tmp_path / "results.jsonl")
    real = sweep_probes.run_packed

    def interrupted(configs):
        records = real(configs)
        yield next(records)
        yield next(records)
        raise KeyboardInterrupt  # Ctrl-C while the pack's third record is made

    monkeypatch.setattr(sweep_probes, "run_packed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, reg, paths)
    assert sum(_keys(paths).values()) == 2 and list(claims_dir(paths.results_log).iterdir()) == []
    monkeypatch.setattr(sweep_probes, "run_packed", real)
    done = run_sweep(sweep, reg, paths)
    assert (done.ran, done.skipped) == (4, 2)
    assert _keys(paths) == Counter(p.key for p in first.plan.probes)  # all six, once each


def _another_sweep_holding(paths, key: str, record):
    """(held, release, target): a thread target that claims ``key`` as another sweep would, sets ``held``, waits
    for ``release`` and then logs ``record``."""
    held, release = threading.Event(), threading.Event()

    def other_sweep():
        with claim(paths.results_log, key, wait=False) as mine:
            assert mine
            held.set()
            release.wait(60)
            append_record(paths.results_log, record)

    return held, release, other_sweep


def test_a_packed_sweep_leaves_a_probe_another_sweep_holds_for_later(world, tmp_path, monkeypatch):
    paths, reg, sweep, first, _ = world
    paths = dataclasses.replace(paths, results=tmp_path / "results.jsonl")
    other = first.plan.probes[1]  # cat1 d1, held by "another sweep" until this one's pack is done
    held, release, other_sweep = _another_sweep_holding(paths, other.key, first.plan.done[other.key])

    packs = []
    real = sweep_probes.run_packed

    def packed(configs):
        packs.append([c.tag for c in configs])
        yield from real(configs)
        release.set()

    monkeypatch.setattr(sweep_probes, "run_packed", packed)
    t = threading.Thread(target=other_sweep)
    t.start()
    held.wait(60)
    lines: list[str] = []
    result = run_sweep(sweep, reg, paths, echo=lines.append)
    t.join()
    assert len(packs) == 1 and len(packs[0]) == 5 and "sweep:digits cat1 d1" not in packs[0] and result.ran == 5
    assert lines.index("[probe] digits-transfer cat1 d1: waiting for the other sweep to finish it") < lines.index(
        "[probe 6/6] digits-transfer cat1 d1: already in the results log"
    )
    assert _keys(paths) == Counter(p.key for p in first.plan.probes)


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


def test_report_cells_hold_only_the_record_of_their_probes_key(world, tmp_path):
    paths, reg, sweep, first, _ = world
    other = build_report(plan_sweep(sweep.with_overrides(epochs=3), reg, paths))  # same tags, other keys
    assert all(c.values == () for c in other.cells.values()) and other.unknown == 0
    gone = dataclasses.replace(paths, cache=tmp_path / "cache", results=paths.results_log)  # the log, no stores
    report = build_report(plan_sweep(sweep, reg, gone))
    assert all(c.values == () for c in report.cells.values()) and report.unknown == 6
    assert "0/6 results found. 6 probe(s) have no ready stores here" in report.footnote()


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
    full = dataclasses.replace(paths, checkpoints=tmp_path / "ckpts")  # the whole digits sweep's checkpoints
    save_demo_checkpoints(load_registry(full), load_sweep("digits", reg))
    r = CliRunner().invoke(main, ["sweep", "digits", "--dry-run", "--cache-dir", str(tmp_path / "c2"),
                                  "--checkpoint-dir", str(full.checkpoints)], catch_exceptions=False)  # fmt: skip
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
        ({"rows": {"cat1": {"draws": ["run0", "run1", "run0"]}}},
         "x.yaml: rows.cat1.draws: draw 2 (run0) repeats draw 0; each draw counts once in the mean ± std"),
        ({"rows": {"cat2": {"draws": ["run0,run1", "run0, run1"]}}}, "rows.cat2.draws: draw 1 (run0, run1) repeats"),
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
    with pytest.raises(
        ConfigError,
        match=r"s.yaml: rows.cat2.draws: draw 2 \(run1,run0\) concatenates the same "
        r"checkpoints as draw 0 \(run0,run1\); each draw must be other checkpoints",
    ):
        plan({**GOOD, "rows": {"cat2": {"draws": ["run0,run1", "run2,run3", "run1,run0"]}}})
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


def _extract_opts(sweep, **over):
    return dataclasses.replace(sweep, extract=dataclasses.replace(sweep.extract, **over))


def _dataset_opts(sweep, **over):
    return dataclasses.replace(sweep, datasets=tuple(dataclasses.replace(d, **over) for d in sweep.datasets))


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        (lambda s: s.with_overrides(views=1), None),  # the stores hold 2 views: ready, other keys
        (lambda s: _extract_opts(s, views_seed=1), "views seed 0 but .*digits.yaml: extract asks for views seed 1"),
        (lambda s: _extract_opts(s, precision="bf16"), "precision fp32 but .*: extract asks for precision bf16"),
        (lambda s: _dataset_opts(s, transform="cifar-32px"),
         "transform 'digits-32px' but .*datasets.digits-transfer asks for transform 'cifar-32px'"),
        (lambda s: _extract_opts(s, dtype="float16"), "dtype float32 but .*: extract asks for dtype float16"),
        (lambda s: s.with_overrides(limit=50),
         r"limit 60 but .*digits.yaml: datasets.digits-transfer asks for limit 50; delete the "
         "store or point --cache-dir elsewhere"),
    ],
)  # fmt: skip
def test_replanning_with_one_setting_changed_leaves_every_probe_pending(world, change, refusal, monkeypatch):
    paths, reg, sweep, first, _ = world
    plan = plan_sweep(change(sweep), reg, paths)
    assert len(plan.done) == 6 and len(plan.pending()) == 6  # the finished sweep's records stand for none of them
    if refusal is None:
        assert plan.extracts == () and {p.key for p in plan.probes}.isdisjoint(plan.done)
        return
    assert plan.extracts[0].reasons == ("stale",) * 14 and all(p.key is None for p in plan.probes)
    monkeypatch.setattr(sweep_mod, "extract", _boom)
    monkeypatch.setattr(sweep_probes, "run_probe", _boom)
    with pytest.raises(
        StoreMismatchError, match=f"store .*demo-cat1-d0-m0.zarr was extracted with {refusal}.*13 more store"
    ):
        run_sweep(change(sweep), reg, paths)  # refused before anything runs: extract never overwrites a store


def _boom(*a, **k):
    raise AssertionError("must not run")


def test_a_machine_that_cannot_resolve_the_preprocessing_still_uses_the_stores(world, monkeypatch):
    paths, reg, sweep, _, _ = world

    def no_timm(arch):
        raise ConfigError(f"--arch {arch} needs timm: pip install 'featcache[timm]'")

    monkeypatch.setattr(sweep_mod, "resolve_preprocessing", no_timm)
    assert plan_sweep(sweep, reg, paths).pending() == []  # a probe-only machine needs no backbone library


@pytest.mark.parametrize(
    "change",
    [{"views": 1}, {"views_seed": 1}, {"precision": "bf16"}, {"transform": {"name": "other"}}, {"layer": "layer3"},
     {"pool": "avg"}, {"dtype": "float16"}],
)  # fmt: skip
def test_each_extraction_setting_changed_alone_gives_another_key(tmp_path, change):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 6)).astype("float32"), np.arange(40) % 3
    views = [X + rng.standard_normal(X.shape).astype("float32") for _ in range(2)]

    def store(name, **over):
        cfg_views = over.pop("views", 2)
        return make_store(tmp_path / f"{name}.zarr", {"train": (X, y), "test": (X[:12], y[:12])}, name="s",
                          views={"train": views}, **over), cfg_views  # fmt: skip

    heads = HeadConfig(epochs=2, batch_size=8, weight_decays=(1e-4,), milestones=(1,))
    keys = []
    for name, over in (("base", {}), ("changed", dict(change))):
        path, n_views = store(name, **over)
        cfg = ProbeConfig((path,), heads, device="cpu", views=n_views, preset="quick")
        keys.append(probe_key_for(cfg))
        if name == "changed":
            assert run_probe(cfg).key == keys[-1]  # the record has the key the sweep predicts
    assert keys[0] != keys[1]


def test_a_changed_checkpoint_file_is_noticed(world, tmp_path, monkeypatch, caplog):
    paths, reg, sweep, first, _ = world
    spec = reg.checkpoint("demo-cat2-d0-m1")
    before, stat = spec.path.read_bytes(), spec.path.stat()
    try:
        # another network of the same architecture: the same size, another mtime and hash
        torch.save({"model_params": to_algoperf(make_net("resnet10", 99).state_dict()), "global_step": 32}, spec.path)
        assert spec.path.stat().st_size == stat.st_size
        plan = plan_sweep(sweep, reg, paths)
        assert [p.key is None for p in plan.probes] == [False, False, True, False, False, False]  # cat2 d0
        assert plan.extracts[0].reasons == ("stale",)
        monkeypatch.setattr(sweep_mod, "extract", _boom)
        monkeypatch.setattr(sweep_probes, "run_probe", _boom)
        older = (
            r"demo-cat2-d0-m1.zarr was extracted from an older .*cat2-d0-m1.pth.tar \(sha256 [0-9a-f]{12}, the file's"
        )
        with pytest.raises(StoreMismatchError, match=older):
            run_sweep(sweep, reg, paths)
        r = CliRunner().invoke(main, ["sweep", str(_small_config(sweep, tmp_path)), "--dry-run", "--cache-dir",
                                      str(paths.cache), "--checkpoint-dir", str(paths.checkpoints)])  # fmt: skip
        assert r.exit_code == 1 and "demo-cat2-d0-m1.zarr was extracted from an older" in r.output
        r = CliRunner().invoke(main, ["probe", "--stores", "demo-cat2-d0-m0,demo-cat2-d0-m1", "--dataset",
                                      "digits-transfer", "--cache-dir", str(paths.cache)])  # fmt: skip
        refused = rf"Error: store .*{older}[^\n]*--overwrite\) or put the old file back\n"
        assert r.exit_code == 1 and re.fullmatch(refused, r.output), r.output
        # the same bytes again, with a new mtime: hashed, found the same
        spec.path.write_bytes(before)
        assert spec.path.stat().st_mtime_ns != stat.st_mtime_ns
        assert plan_sweep(sweep, reg, paths).pending() == []
        # no file at all (a machine with the cache only): the store's recorded hash is the identity
        spec.path.unlink()
        with caplog.at_level(logging.DEBUG, logger="featcache.checkpoints"):
            assert plan_sweep(sweep, reg, paths).pending() == []
        assert "cat2-d0-m1.pth.tar is absent here: its store's recorded sha256" in caplog.text
    finally:
        spec.path.write_bytes(before)
        os.utime(spec.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_file_changed_trusts_size_and_mtime_else_hashes(tmp_path, monkeypatch):
    f = tmp_path / "w.pth"
    f.write_bytes(b"weights")
    sha, st = file_sha256(f), f.stat()
    assert file_changed(f, sha, None, None) is None  # nothing recorded (an older store): hashed
    monkeypatch.setattr(checkpoints, "file_sha256", _boom)
    assert file_changed(f, sha, st.st_size, st.st_mtime_ns) is None  # as recorded: not hashed
    monkeypatch.undo()
    f.write_bytes(b"weightz")  # the same size, another content and mtime
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert file_changed(f, sha, st.st_size, st.st_mtime_ns) == file_sha256(f) != sha
    assert file_changed(tmp_path / "gone.pth", sha, st.st_size, st.st_mtime_ns) is None


def test_old_stores_without_size_and_mtime_still_resume_and_read(tmp_path):
    path = make_store(tmp_path / "old.zarr", {"train": (np.ones((4, 2), "float32"), np.arange(4) % 2)})
    prov = Store(path).provenance
    assert prov.checkpoint.size is None and prov.checkpoint.mtime_ns is None
    now = dataclasses.replace(prov, checkpoint=dataclasses.replace(prov.checkpoint, size=7, mtime_ns=8))
    assert prov.identity() == now.identity()  # a file's stat is not the store's identity: resuming is allowed
    StoreWriter(path, now).close()


def _small_config(sweep, tmp_path) -> Path:
    """The world's sweep (SMALL) as a YAML file, for the CLI."""
    config = tmp_path / "small.yaml"
    doc = yaml.safe_load(open(sweep.source))
    doc["rows"] = {r.name: {"steps_per_model": r.steps_per_model, "draws": list(r.draws)} for r in sweep.rows}
    doc["datasets"] = {"digits-transfer": {"limit": 60, "views": 2, "epochs": 2}}
    config.write_text(yaml.safe_dump({**doc, "name": "digits"}))
    return config


def test_a_row_whose_steps_its_extracted_checkpoints_do_not_record_is_refused(world, tmp_path):
    """The stores exist, so nothing is extracted; the files still say how long each model trained, and the table's
    steps per model come from the rows: a row that says otherwise is refused before anything runs."""
    paths, reg, sweep, first, _ = world
    config = _small_config(sweep, tmp_path)
    doc = yaml.safe_load(config.read_text())
    doc["rows"]["cat2"]["steps_per_model"] = 33  # the files record 32
    config.write_text(yaml.safe_dump(doc))
    roots = ["--cache-dir", str(paths.cache), "--checkpoint-dir", str(paths.checkpoints), "--results",
             str(tmp_path / "results.jsonl")]  # fmt: skip
    for extra in (["--dry-run"], []):
        r = CliRunner().invoke(main, [*roots, "sweep", str(config), "--no-report", *extra])
        assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
        assert re.search(r"^Error: checkpoint .*cat2-d0-m0.pth.tar records training step 32 \(global_step\) but "
                         r".*small.yaml: rows.cat2.steps_per_model says 33 steps per model", r.output)  # fmt: skip
    assert not (tmp_path / "results.jsonl").exists()
    r = CliRunner().invoke(main, [*roots, "sweep", str(_small_config(sweep, tmp_path)), "--dry-run"])
    assert r.exit_code == 0 and "0 extraction(s)" in r.output, r.output


def test_two_sweeps_on_one_log_run_each_probe_once(world, tmp_path):
    """Two real `featcache sweep` processes, started together on a fresh log, every probe slowed down."""
    paths, reg, sweep, first, _ = world
    config = _small_config(sweep, tmp_path)
    log = tmp_path / "results.jsonl"
    go = tmp_path / "go"
    runner = (
        "import sys, time, pathlib\n"
        "import featcache.sweep_probes as s\n"
        "real = s.run_probe\n"
        "s.run_probe = lambda cfg: (time.sleep(0.5), real(cfg))[1]  # both sweeps are mid-probe together\n"
        "pathlib.Path(sys.argv[1] + '.ready').touch()\n"
        "while not pathlib.Path(sys.argv[1]).exists(): time.sleep(0.01)\n"
        "from featcache.cli import main\n"
        "sys.argv = ['featcache', *sys.argv[2:]]\n"
        "main()\n"
    )
    args = ["sweep", str(config), "--no-report", "--quiet", "--cache-dir", str(paths.cache), "--checkpoint-dir",
            str(paths.checkpoints), "--results", str(log)]  # fmt: skip
    procs = [subprocess.Popen([sys.executable, "-c", runner, str(go) + str(k), *args], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for k in range(2)]  # fmt: skip
    try:
        while not all(Path(f"{go}{k}.ready").exists() for k in range(2)):
            assert all(p.poll() is None for p in procs), [p.communicate()[0] for p in procs]
            time.sleep(0.05)
        for k in range(2):
            Path(f"{go}{k}").touch()
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert _keys(dataclasses.replace(paths, results=log)) == Counter(p.key for p in first.plan.probes)  # once each
    ran = [sum(line.startswith("[probe") and "test top-1" in line for line in out.splitlines()) for out in outputs]
    assert sum(ran) == 6, outputs
    assert list(claims_dir(log).iterdir()) == []


def test_a_probe_claimed_by_another_sweep_is_left_for_later_then_waited_for(world, tmp_path, monkeypatch):
    paths, reg, sweep, first, _ = world
    paths = dataclasses.replace(paths, results=tmp_path / "results.jsonl")
    other = first.plan.probes[1]  # cat1 d1, held by "another sweep" that logs it after a while
    held, release, other_sweep = _another_sweep_holding(paths, other.key, first.plan.done[other.key])

    ran = []

    def probe(cfg):
        ran.append(cfg.tag)
        record = run_probe(cfg)
        if len(ran) == 5:  # every other probe is done: the other sweep may finish its own now
            release.set()
        return record

    monkeypatch.setattr(sweep_probes, "run_probe", probe)
    t = threading.Thread(target=other_sweep)
    t.start()
    held.wait(60)
    lines: list[str] = []
    result = run_sweep(sweep, reg, paths, echo=lines.append, pack=False)
    t.join()
    assert "sweep:digits cat1 d1" not in ran and len(ran) == 5 and result.ran == 5
    assert any("cat1 d1: another sweep is running it (pid " in line for line in lines)
    assert lines.index("[probe] digits-transfer cat1 d1: waiting for the other sweep to finish it") < lines.index(
        "[probe 6/6] digits-transfer cat1 d1: already in the results log"
    )
    assert sum(_keys(paths).values()) == 6


def test_a_fresh_directory_says_that_the_demo_trains_the_checkpoints(tmp_path):
    roots = ["--cache-dir", str(tmp_path / "cache"), "--checkpoint-dir", str(tmp_path / "ckpts"),
             "--data-dir", str(tmp_path / "data")]  # fmt: skip
    for extra in ([], ["--dry-run"]):
        r = CliRunner().invoke(main, ["sweep", "demo", *roots, *extra])
        assert r.exit_code == 1, r.output
        assert r.output.startswith("Error: sweep demo: 30 checkpoint file(s) to extract are missing: ")
        assert r.output.rstrip().endswith("... (30 in all); `featcache demo` makes them")
        assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"extract": {"device": "cuda", "workers": 0}}, "cuda"),  # a machine without a GPU
        ({"datasets": ["imagefolder:nowhere"]}, "nowhere"),  # no such folder under the data dir
    ],
)
def test_dry_run_fails_as_the_run_would_before_running_anything(world, tmp_path, doc, needle):
    paths, reg, sweep, _, _ = world
    if doc.get("extract", {}).get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump({"rows": {"cat1": {"draws": ["demo-cat1-d0"]}},
                                      "datasets": {"digits-transfer": {"limit": 60}}, **doc}))  # fmt: skip
    roots = ["--cache-dir", str(tmp_path / "cache"), "--checkpoint-dir", str(paths.checkpoints), "--data-dir",
             str(tmp_path / "data")]  # fmt: skip
    dry = CliRunner().invoke(main, ["sweep", str(config), "--dry-run", *roots])
    real = CliRunner().invoke(main, ["sweep", str(config), *roots])
    assert dry.exit_code == real.exit_code == 1 and dry.output == real.output, (dry.output, real.output)
    assert dry.output.startswith("Error: ") and needle in dry.output and len(dry.output.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()  # nothing ran


def test_a_sweep_builds_its_configs_with_the_commands_builders(tmp_path, paths, registry):
    """A sweep's extract: and probe: sections are the commands' options, and its configs are what the commands'
    builders make of them (planning reads no data and no checkpoint)."""
    doc = {**GOOD, "datasets": {"cifar10": {"epochs": 2}}, "probe": {"in_memory": "no"},
           "extract": {"preprocess": "pil", "workers": 0, "batch_size": 8}}  # fmt: skip
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    sweep = load_sweep(str(path), registry)
    assert sweep.extract == ExtractOptions(preprocess="pil", workers=0, batch_size=8)
    plan = plan_sweep(sweep, registry, paths)
    views = registry.preset("cifar").views
    # the row's steps per model go with its checkpoints (checked against the step each file records)
    run0 = dataclasses.replace(registry.checkpoint("run0"), steps=10, steps_source=f"{path}: rows.cat1.steps_per_model")
    made = extract_config.config_from(registry, paths, ckpt=[run0], dataset="cifar10", options=sweep.extract,
                                      views=views)  # fmt: skip
    assert plan.extracts[0].config == made and (made.backend, made.workers, made.batch_size) == ("pil", 0, 8)
    (job,) = plan.probes
    built = probe_config.config_from(registry, paths, stores=[paths.cache / "cifar10" / "run0.zarr"],
                                     dataset="cifar10", epochs=2, read_stores=False, in_memory="no",
                                     train_split="train", test_split="test", tag=job.config.tag)  # fmt: skip
    assert job.config == built and built.views == views and built.heads.epochs == 2 and job.key is None
    with pytest.raises(ConfigError, match="x.yaml: probe.in_memory must be one of auto, yes, no, got 'sometimes'"):
        parse_sweep({**GOOD, "probe": {"in_memory": "sometimes"}}, "x.yaml", "x")
