"""featcache.results: typed records, an append-only log that survives crashes and full disks, exact queries."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner
from conftest import refuse_writes_under

import featcache as fc
from featcache.cli import main
from featcache.errors import ConfigError
from featcache.results import (
    SCHEMA,
    GridPoint,
    ProbeRecord,
    ResearchNumber,
    ResultsError,
    Selection,
    StoreUsed,
    ViewsUsed,
    append_record,
    claim,
    claims_dir,
    format_probe,
    holder,
    load_records,
    results_path,
    select_records,
    summary_rows,
    varying_columns,
)
from featcache.tables import render


def _record(i, dataset, stores, wd, tag="", views=0, preset="cifar") -> ProbeRecord:
    point = GridPoint({"weight_decay": wd}, val_top1=50.0, test_top1=40.0 + i, val_epoch=20, test_top5=70.0,
                      best_test_top1=45.0 + i)  # fmt: skip
    return ProbeRecord(
        id=f"r{i}", timestamp=f"2026-11-26T10:00:0{i}", tag=tag, dataset=dataset, features=f"cat{len(stores)}",
        stores=tuple(StoreUsed(s, f"/c/{dataset}/{s}.zarr", {"name": s, "sha256": f"h-{s}"}, 2048) for s in stores),
        feature_dim=2048 * len(stores), train_split="train", test_split="test",
        rows={"fit": 9, "val": 1, "train": 10, "test": 5}, preset=preset, solver="sgd",
        hyperparameters={"epochs": 28}, heads=(point,),
        selected=Selection({"weight_decay": wd}, 50.0, 40.0 + i, "on val", epoch=20, test_top5=70.0),
        research=ResearchNumber(45.0 + i, {"weight_decay": wd}, 3, "selected on test"),
        views=ViewsUsed(views, 0 if views else None), device="cpu", memory="resident",
        timings={"load_s": 0.1, "total_s": 2.0},
    )  # fmt: skip


@pytest.fixture
def log(tmp_path):
    recs = [
        _record(1, "inaturalist18", ["run0-step80k", "run1-step80k"], 1e-5),
        _record(2, "inaturalist18", ["run0"], 1e-5),
        _record(3, "cifar10", ["run0-step80k", "run1-step80k"], 1e-4, tag="baseline"),
        _record(4, "inaturalist18", ["run0-step80k", "run1-step80k", "run2-step80k"], 1e-4, views=8),
        _record(5, "cifar100", ["run0"], 1e-4, preset="quick"),
    ]
    for r in recs:
        append_record(tmp_path, r)
    return tmp_path


def test_records_roundtrip_typed(log):
    recs = load_records(log)
    assert [r.id for r in recs] == ["r1", "r2", "r3", "r4", "r5"]
    assert recs[3] == _record(4, "inaturalist18", ["run0-step80k", "run1-step80k", "run2-step80k"], 1e-4, views=8)
    assert recs[0].key == _record(1, "inaturalist18", ["run0-step80k", "run1-step80k"], 1e-5).key
    assert recs[0].key != recs[2].key


def test_fields_match_exactly_never_a_longer_name(log):
    recs = load_records(log)
    assert [r.id for r in select_records(recs, dataset="cifar10")] == ["r3"]  # not cifar100
    assert [r.id for r in select_records(recs, dataset="cifar100")] == ["r5"]
    assert [r.id for r in select_records(recs, features="cat2", dataset="inaturalist18")] == ["r1"]
    assert [r.id for r in select_records(recs, views=8)] == ["r4"]
    assert [r.id for r in select_records(recs, preset="quick")] == ["r5"]
    assert [r.id for r in select_records(recs, tag="baseline")] == ["r3"]
    assert [r.id for r in select_records(recs, store="run1-step80k")] == ["r4", "r3", "r1"]
    with pytest.raises(ConfigError, match=r"unknown results field\(s\) \['colour'\]"):
        select_records(recs, colour="red")


def test_patterns_match_whole_tokens_newest_first(log):
    recs = load_records(log)
    assert [r.id for r in select_records(recs, ["inaturalist18", "1e-5", "cat2", "step80k"])] == ["r1"]
    assert [r.id for r in select_records(recs, ["cifar10"])] == ["r3"]  # a token, not a prefix of cifar100
    assert select_records(recs, ["inat"]) == [] and select_records(recs, ["80k"]) == []
    assert [r.id for r in select_records(recs, ["BASELINE"])] == ["r3"]
    assert len(select_records(recs, [])) == 5


def test_a_torn_line_anywhere_hides_nothing_and_is_ended_before_the_next_append(log):
    path = results_path(log)
    with open(path, "a") as f:
        f.write('{"id": "half')  # an older version killed mid-write: no newline
    assert len(load_records(log)) == 5
    append_record(log, _record(6, "cifar10", ["run1"], 1e-3))
    assert [r.id for r in load_records(log)][-1] == "r6"  # not glued onto the torn line
    lines = path.read_text().splitlines()
    assert lines[-2] == '{"id": "half' and json.loads(lines[-1])["id"] == "r6"
    path.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    assert len(load_records(log)) == 6
    path.write_text(path.read_text() + '{"id": 1}\n')  # JSON but not a record: edited by hand
    assert len(load_records(log)) == 6  # skipped and named (see test_bad_lines_are_skipped_and_named)


def test_a_full_disk_loses_no_record_already_logged(log, monkeypatch):
    before = results_path(log).read_bytes()
    real_write = os.write

    def half_then_enospc(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_enospc)
    with pytest.raises(ResultsError, match=r"No space left on device.*record above was printed.*--results PATH"):
        append_record(log, _record(7, "cifar10", ["run2"], 1e-3))
    monkeypatch.undo()
    assert results_path(log).read_bytes() == before  # the half line was taken back
    assert [r.id for r in load_records(log)] == ["r1", "r2", "r3", "r4", "r5"]


def test_a_read_only_cache_gets_a_clear_error(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    refuse_writes_under(monkeypatch, ro, errno.EROFS)  # a read-only mount, for root too
    with pytest.raises(ResultsError, match="cannot append.*--results PATH"):
        append_record(ro, _record(1, "cifar10", ["a"], 1e-4))


def test_the_log_may_live_elsewhere(tmp_path):
    path = append_record(tmp_path / "mine" / "log.jsonl", _record(1, "cifar10", ["a"], 1e-4))
    assert path == tmp_path / "mine" / "log.jsonl" and [r.id for r in load_records(path)] == ["r1"]


def test_schema_1_records_of_featcache_0_1_are_read(tmp_path):
    old = {"id": "old", "timestamp": "2026-11-25T10:00:00", "tag": "", "dataset": "cifar10", "features": "cat1",
           "stores": [{"name": "run0", "path": "/c/run0.zarr", "checkpoint": {"sha256": "x"}, "dim": 2048}],
           "feature_dim": 2048, "splits": {"train": "train", "test": "test"}, "rows": {"fit": 9},
           "preset": "seed", "hyperparameters": {"weight_decays": [1e-4]},
           "heads": [{"weight_decay": 1e-4, "val_top1": 50.0, "val_epoch": 3, "test_top1": 40.0, "test_top5": 70.0,
                      "best_test_top1": 45.0}],
           "selected": {"weight_decay": 1e-4, "epoch": 3, "val_top1": 50.0, "test_top1": 40.0, "test_top5": 70.0,
                        "method": "on val"},
           "research": {"test_top1": 45.0, "weight_decay": 1e-4, "epoch": 2, "note": "on test"},
           "in_memory": True}  # fmt: skip
    results_path(tmp_path).write_text(json.dumps(old) + "\n")
    (rec,) = load_records(tmp_path)
    assert rec.schema == 1 and rec.solver == "sgd" and rec.memory == "resident" and rec.test_split == "test"
    assert rec.selected.params == {"weight_decay": 1e-4} and rec.heads[0].params == {"weight_decay": 1e-4}


def test_summary_tables_show_what_tells_rows_apart(log):
    rows = summary_rows(select_records(load_records(log), dataset="inaturalist18"))
    assert rows[0]["stores"] == "run0-step80k,run1-step80k,run2-step80k" and rows[0]["views"] == 8
    cols = varying_columns(rows, ("dataset", "test_top1"), ("preset", "views", "features"))
    assert cols == ["dataset", "features", "views", "test_top1"]  # preset is the same on every row: left out
    table = render(rows, cols)
    assert table.splitlines()[0].split() == cols and "inaturalist18" in table
    assert render(rows[:1], ["dataset", "test_top1"], fmt="csv") == "dataset,test_top1\ninaturalist18,44.0"
    md = render(rows[:1], ["dataset", "test_top1"], fmt="markdown").splitlines()
    assert md == ["| dataset | test_top1 |", "| --- | ---: |", "| inaturalist18 | 44.00 |"]


def test_format_probe_mentions_selection_research_views_and_notes(log):
    rec = _record(5, "cifar10", ["a", "b"], 1e-4, views=4)
    text = format_probe(rec)
    assert "TEST top-1 45.00" in text and "research   top-1 50.00" in text and "selected on test" in text
    assert "4 augmented views" in text and "fit 9 + val 1 of 'train', test 5 of 'test'" in text
    assert format_probe(rec, "csv").splitlines()[0].startswith("weight_decay,val_top1")
    assert json.loads(format_probe(rec, "json"))["views"]["count"] == 4


def _made(views: ViewsUsed | None = None, **store) -> ProbeRecord:
    """A record whose store says how its features were made (schema 3), trained on 2 views of seed 0."""
    made = {"layer": "avgpool", "pool": "", "dtype": "float16", "precision": "bf16",
            "transform": {"name": "cifar-32px", "resize": 32, "crop": 32}, **store}  # fmt: skip
    base = _record(1, "cifar10", ["run0"], 1e-4)
    views = views or ViewsUsed(2, 0, {"scale": [0.8, 1.0]})
    return dataclasses.replace(base, stores=(dataclasses.replace(base.stores[0], **made),), views=views)


@pytest.mark.parametrize(
    "change",
    [
        {"views": ViewsUsed(4, 0, {"scale": [0.8, 1.0]})},  # the view count
        {"views": ViewsUsed(2, 1, {"scale": [0.8, 1.0]})},  # the views' seed
        {"precision": "fp32"},
        {"transform": {"name": "cifar-32px", "resize": 36, "crop": 32}},
        {"layer": "layer3"},
        {"pool": "avg"},
        {"dtype": "float32"},
    ],
)
def test_each_setting_changed_alone_gives_another_key(tmp_path, change):
    base, other = _made(), _made(**change)
    assert other.key != base.key
    append_record(tmp_path, other)
    assert load_records(tmp_path)[0].key == other.key  # the key survives the log's JSON


def test_records_of_schema_2_load_and_never_pass_for_todays_probes(tmp_path):
    today = _made()
    doc = {**today.to_dict(), "schema": 2}
    doc["stores"] = [{k: v for k, v in s.items() if k in ("name", "path", "checkpoint", "dim")} for s in doc["stores"]]
    results_path(tmp_path).write_text(json.dumps(doc) + "\n")
    (old,) = load_records(tmp_path)
    assert old.schema == 2 and old.stores[0].layer is None and old.selected == today.selected
    assert old.key != today.key  # it lacks how its stores were made: a sweep runs that probe again, once


def test_bad_lines_are_skipped_and_named(log, caplog):
    path = results_path(log)
    lines = path.read_bytes().splitlines()
    newer = {**_record(8, "cifar10", ["run3"], 1e-4).to_dict(), "schema": 99, "wavelets": [3]}
    unreadable = {"schema": 99, "id": "r9", "renamed": True}
    path.write_bytes(b"\n".join([
        lines[0], b'{"id": "caf\xe9"}', lines[1], b"[1, 2]", b'{"id": 1}', lines[2], json.dumps(newer).encode(),
        json.dumps(unreadable).encode(), *lines[3:]]) + b"\n")  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="featcache.results_log"):
        records = load_records(log)
    assert [r.id for r in records] == ["r1", "r2", "r3", "r8", "r4", "r5"]
    assert records[3].notes[-1].startswith(f"written by a newer featcache (record schema 99; this one reads {SCHEMA})")
    warned = caplog.text
    assert (
        f"results log {path}: skipped line(s) 2 (not UTF-8 (damaged bytes)), 4 (JSON but not a results record "
        in warned
    )
    assert "5 (JSON but not a results record (missing key 'timestamp'))" in warned
    assert "8 (a record of a newer featcache (schema 99) that this one cannot read: upgrade featcache)" in warned
    assert f"results log {path}: line(s) 7 were written by a newer featcache" in warned
    # every reader of the log gets the same: the CLI and the notebook API
    r = CliRunner().invoke(main, ["results", "--results", str(path), "--format", "csv"])
    assert r.exit_code == 0 and len(r.output.strip().splitlines()) == 7, r.output
    assert [x.id for x in fc.load_results(path)] == ["r8", "r5", "r4", "r3", "r2", "r1"]  # newest first


def test_load_results_names_a_missing_log(tmp_path, monkeypatch, caplog):
    with pytest.raises(ResultsError, match=r"no results log at .*nope/results\.jsonl; pass the cache dir the probes"):
        fc.load_results(tmp_path / "nope")
    with pytest.raises(ResultsError, match=r"no results log at .*typo\.jsonl"):
        fc.load_results(tmp_path / "typo.jsonl")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="featcache.api"):
        assert fc.load_results() == []
    assert "no results log at cache/results.jsonl (the default); pass where= to read another" in caplog.text
    append_record(tmp_path / "cache", _record(1, "cifar10", ["a"], 1e-4))
    assert [r.id for r in fc.load_results()] == ["r1"]


def test_a_claim_is_held_by_one_process_and_taken_over_when_it_dies(tmp_path):
    log = tmp_path / "results.jsonl"
    code = (
        "import sys, time\n"
        "from featcache.results import claim\n"
        "with claim(sys.argv[1], 'k1', wait=False) as held:\n"
        "    print('held' if held else 'refused', flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(log)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with claim(log, "k1", wait=False) as mine:
            assert not mine
        assert holder(log, "k1").startswith(f"pid {proc.pid} on host ")
        with claim(log, "k2", wait=False) as mine:
            assert mine  # another probe is free
    finally:
        proc.kill()  # SIGKILL: no cleanup runs in the holder
        proc.wait()
    with claim(log, "k1", wait=False) as mine:
        assert mine  # the kernel released the dead holder's lock: its claim is taken over
    assert list(claims_dir(log).iterdir()) == []  # released by its new holder


def test_a_waiting_claim_is_granted_when_the_holder_is_done(tmp_path):
    log = tmp_path / "results.jsonl"
    order: list[str] = []
    entered = threading.Event()

    def hold():
        with claim(log, "k", wait=False) as mine:
            assert mine
            entered.set()
            time.sleep(0.2)  # the waiter blocks meanwhile (no assertion on how long)
            order.append("holder done")

    t = threading.Thread(target=hold)
    t.start()
    entered.wait(60)
    with claim(log, "k", wait=True) as mine:
        order.append("waiter in")
        assert mine and holder(log, "k").startswith(f"pid {os.getpid()} ")
    t.join()
    assert order == ["holder done", "waiter in"] and list(claims_dir(log).iterdir()) == []
