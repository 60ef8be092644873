"""featcache.results: append-only log, pattern queries, tables."""

from __future__ import annotations

import json

import pytest

from featcache.errors import ConfigError
from featcache.results import append_record, filter_records, format_probe, load_records, results_path, summary_rows
from featcache.tables import render


def _record(i, dataset, stores, wd, tag=""):
    return {
        "id": f"r{i}", "timestamp": f"2026-11-26T10:00:0{i}", "tag": tag, "dataset": dataset,
        "features": f"cat{len(stores)}", "stores": [{"name": s} for s in stores],
        "selected": {"weight_decay": wd, "epoch": 20, "val_top1": 50.0, "test_top1": 40.0 + i, "test_top5": 70.0},
        "research": {"test_top1": 45.0 + i},
    }  # fmt: skip


@pytest.fixture
def log(tmp_path):
    recs = [
        _record(1, "inaturalist18", ["run0-step80k", "run1-step80k"], 1e-5),
        _record(2, "inaturalist18", ["run0"], 1e-5),
        _record(3, "cifar10", ["run0-step80k", "run1-step80k"], 1e-4, tag="baseline"),
        _record(4, "inaturalist18", ["run0-step80k", "run1-step80k", "run2-step80k"], 1e-4),
    ]
    for r in recs:
        append_record(tmp_path, r)
    return tmp_path


def test_patterns_must_all_match_newest_first(log):
    recs = load_records(log)
    assert [r["id"] for r in filter_records(recs, ["inat", "1e-5", "cat", "80k"])] == ["r1"]
    assert [r["id"] for r in filter_records(recs, ["inat"])] == ["r4", "r2", "r1"]
    assert [r["id"] for r in filter_records(recs, ["BASELINE"])] == ["r3"]
    assert filter_records(recs, ["inat", "nothing-like-this"]) == []
    assert len(filter_records(recs, [])) == 4


def test_torn_last_line_is_skipped_but_a_corrupt_middle_line_is_an_error(log):
    path = results_path(log)
    with open(path, "a") as f:
        f.write('{"id": "half')
    assert len(load_records(log)) == 4
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    with pytest.raises(ConfigError, match=r"results\.jsonl:2 is not a JSON record"):
        load_records(log)


def test_each_record_is_one_json_line(log):
    lines = results_path(log).read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[2])["tag"] == "baseline"


def test_summary_table_csv_json(log):
    rows = summary_rows(filter_records(load_records(log), ["cifar10"]))
    assert rows[0]["stores"] == "run0-step80k,run1-step80k" and rows[0]["test_top1"] == 43.0
    table = render(rows, ["dataset", "features", "wd", "test_top1"])
    assert table.splitlines()[0].split() == ["dataset", "features", "wd", "test_top1"]
    assert "cifar10" in table and "43.00" in table
    assert render(rows, ["dataset", "test_top1"], fmt="csv") == "dataset,test_top1\ncifar10,43.0"
    assert json.loads(render(rows, ["id"], fmt="json")) == [{"id": "r3"}]


def test_format_probe_mentions_selection_and_research(log):
    rec = _record(5, "cifar10", ["a", "b"], 1e-4)
    rec.update(feature_dim=10, rows={"fit": 9, "val": 1, "train": 10, "test": 5}, device="cpu", in_memory=True,
               timings={"load_s": 0.1, "select_s": 1, "final_s": 1, "total_s": 2.1},
               heads=[{"weight_decay": 1e-4, "val_top1": 50.0, "val_epoch": 20, "test_top1": 45.0, "test_top5": 70.0,
                       "best_test_top1": 50.0}])  # fmt: skip
    rec["selected"]["method"] = "on val"
    rec["research"].update(weight_decay=1e-4, epoch=3, note="selected on test")
    text = format_probe(rec)
    assert "TEST top-1 45.00" in text and "research   top-1 50.00" in text and "selected on test" in text
    assert format_probe(rec, "csv").splitlines()[0].startswith("weight_decay,val_top1")
