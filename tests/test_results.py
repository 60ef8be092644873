"""featcache.results: typed records, an append-only log that survives crashes and full disks, exact queries."""

from __future__ import annotations

import errno
import json
import os

import pytest

from featcache.errors import ConfigError
from featcache.results import (
    GridPoint,
    ProbeRecord,
    ResearchNumber,
    ResultsError,
    Selection,
    StoreUsed,
    ViewsUsed,
    append_record,
    format_probe,
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
    with pytest.raises(ConfigError, match=r"results\.jsonl:\d+ is not a results record"):
        load_records(log)


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


def test_a_read_only_cache_gets_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes read-only directories")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
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
