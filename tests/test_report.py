"""featcache report: the table's numbers (mean ± std over draws, best per column), its files, the plot, the CLI."""

from __future__ import annotations

import csv
import dataclasses
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from featcache.cli import main
from featcache.config.sweep import parse_sweep
from featcache.report import LEGEND, PLOT_HINT, Cell, SweepReport, build_report, plot_series, write_report
from featcache.results import ProbeRecord, ResearchNumber, Selection, StoreUsed, append_record
from featcache.sweep import ProbeJob, RowInfo, SweepPlan, load_sweep, plan_sweep

ROWS = (RowInfo("cat1", 1, 3, 64, 64), RowInfo("cat2", 2, 3, 32, 64), RowInfo("cat4", 4, 3, 16, 64))
# Chosen so that the best mean is not the best single value, nor in the same row for both datasets.
VALUES = {
    ("cat1", "a"): (90.0, 97.0, 80.0),
    ("cat2", "a"): (91.0, 92.0, 93.0),
    ("cat4", "a"): (89.0, 90.0),  # a draw missing
    ("cat1", "b"): (50.0, 60.0, 70.0),
    ("cat2", "b"): (50.0, 50.0, 50.0),
    ("cat4", "b"): (),
}


def _cell_text(row: str, dataset: str, draws: int = 3) -> str:
    """The expected cell: numpy's mean and spread (ddof=1) of the row's draws, and (n/N) when some are missing."""
    values = VALUES[(row, dataset)]
    text = f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"
    return text + (f" ({len(values)}/{draws})" if len(values) < draws else "")


# The research numbers (best test, selected on test) of the same draws: higher, and with their best mean in another
# row than the val-selected column's, so a column that took the other's numbers or best shows.
RESEARCH = {
    ("cat1", "a"): (93.0, 98.0, 82.0),
    ("cat2", "a"): (91.5, 92.5, 93.5),
    ("cat4", "a"): (96.0, 95.0),
    ("cat1", "b"): (51.0, 61.0),  # a record without a research number (L-BFGS)
    ("cat2", "b"): (52.0, 53.0, 54.0),
    ("cat4", "b"): (),
}


def _text(values, draws: int = 3) -> str:
    text = f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"
    return text + (f" ({len(values)}/{draws})" if len(values) < draws else "")


def _report() -> SweepReport:
    cells = {k: Cell(v, 3, RESEARCH[k], ("fast",) * len(v)) for k, v in VALUES.items()}
    return SweepReport("toy", "a toy sweep", ROWS, ("a", "b"), cells, {"a": "preset x", "b": "preset y"})


def test_mean_and_spread_are_numpys_over_the_draws():
    report = _report()
    for key, values in VALUES.items():
        cell = report.cells[key]
        if len(values) >= 2:
            assert cell.mean == pytest.approx(np.mean(values)) and cell.std == pytest.approx(np.std(values, ddof=1))
    assert report.cells[("cat4", "b")].mean is None and report.cells[("cat4", "b")].std is None
    assert Cell((71.0,), 1).std is None  # one draw: no spread


def test_best_per_column_is_the_highest_mean():
    report = _report()
    for d in ("a", "b"):
        means = {r.name: np.mean(VALUES[(r.name, d)]) for r in ROWS if VALUES[(r.name, d)]}
        assert report.best(d) == {max(means, key=means.get)}
    assert report.best("a") == {"cat2"} and report.best("b") == {"cat1"}
    rows = report.table_rows()
    assert rows[1]["a"] == f"**{_cell_text('cat2', 'a')}**" and rows[0]["b"] == f"**{_cell_text('cat1', 'b')}**"
    assert rows[2]["a"] == _cell_text("cat4", "a") and rows[2]["b"] == "-"
    tie = SweepReport("t", "", ROWS[:2], ("a",), {("cat1", "a"): Cell((1.0,), 1), ("cat2", "a"): Cell((1.0,), 1)}, {})
    assert tie.best("a") == {"cat1", "cat2"}


def test_the_research_number_is_its_own_labelled_column_with_its_own_best():
    report = _report()
    assert report.best("a", research=True) == {"cat4"} and report.best("a") == {"cat2"}
    assert report.best("b", research=True) == {"cat1"}  # 56.00 over two draws beats 53.00
    rows = {r["features"]: r for r in report.table_rows()}
    assert list(rows["cat1"]) == ["features", "models", "steps per model", "total steps", "a", "a research", "b",
                                  "b research", "fidelity"]  # fmt: skip
    assert rows["cat4"]["a research"] == f"**{_text(RESEARCH[('cat4', 'a')])}**"
    assert rows["cat2"]["a research"] == _text(RESEARCH[("cat2", "a")]) and rows["cat2"]["a"].startswith("**")
    assert rows["cat1"]["b research"] == f"**{_text(RESEARCH[('cat1', 'b')])}**"  # 2 of 3 draws have one
    assert rows["cat4"]["b research"] == "-" and rows["cat4"]["fidelity"] == "fast"
    assert LEGEND in report.footnote() and "research: the paper scripts' number" in LEGEND


def test_files_are_written_and_the_plot_is_an_image(tmp_path):
    files = write_report(_report(), tmp_path / "reports")
    assert files.markdown == tmp_path / "reports" / "toy.md" and files.note is None
    md = files.markdown.read_text()
    assert "| features | models | steps per model | total steps | a | a research | b | b research | fidelity |" in md
    research = (_text(RESEARCH[("cat2", "a")]), _text(RESEARCH[("cat2", "b")]))
    assert (f"| cat2 | 2 | 32 | 64 | **{_cell_text('cat2', 'a')}** | {research[0]} | {_cell_text('cat2', 'b')} | "
            f"{research[1]} | fast |") in md  # fmt: skip
    assert f"\n\n{LEGEND}\n\n" in md  # the legend, a paragraph of its own under the table
    with open(files.csv) as f:
        table = list(csv.DictReader(f))
    assert [r["a_best"] for r in table] == ["False", "True", "False"]
    assert [r["a_research_best"] for r in table] == ["False", "False", "True"]
    assert float(table[0]["a_mean"]) == pytest.approx(89.0) and table[2]["b_n"] == "0" and table[2]["b_mean"] == ""
    assert float(table[0]["a_std"]) == pytest.approx(np.std(VALUES[("cat1", "a")], ddof=1))
    assert float(table[2]["a_research_mean"]) == pytest.approx(95.5) and table[0]["b_research_n"] == "2"
    assert float(table[1]["b_research_std"]) == pytest.approx(1.0) and table[1]["a_fidelity"] == "fast"
    with Image.open(files.plot) as im:
        im.verify()
    assert files.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in files.markdown.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_the_plot_draws_each_number_with_its_own_marker():
    lines = {line.label: line for line in plot_series(_report())}
    assert list(lines) == ["a", "a research", "b", "b research"]
    assert lines["a"].marker != lines["a research"].marker and lines["a"].linestyle != lines["a research"].linestyle
    assert lines["a"].colour == lines["a research"].colour != lines["b"].colour
    assert lines["a research"].x == (1, 2, 4)
    assert lines["a research"].mean == pytest.approx([np.mean(RESEARCH[(r, "a")]) for r in ("cat1", "cat2", "cat4")])
    assert lines["a"].mean == pytest.approx([np.mean(VALUES[(r, "a")]) for r in ("cat1", "cat2", "cat4")])
    assert lines["b research"].x == (1, 2) and lines["b research"].std[0] == pytest.approx(np.std((51, 61), ddof=1))


def test_without_matplotlib_the_tables_are_still_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib...` now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    files = write_report(_report(), tmp_path)
    assert files.plot is None and files.note == PLOT_HINT and "pip install 'featcache[plot]'" in PLOT_HINT
    assert files.markdown.exists() and files.csv.exists() and not (tmp_path / "toy.png").exists()


def _record(dataset: str, tag: str, top1: float, when: str, research: float | None = None, stores=()) -> ProbeRecord:
    sel = Selection(params={"weight_decay": 1e-4}, val_top1=top1, test_top1=top1, method="val")
    res = ResearchNumber(research, {"weight_decay": 1e-3}, 7, "on test") if research is not None else None
    return ProbeRecord(id=f"id{abs(hash((tag, when))) % 10**8}", timestamp=when, dataset=dataset, features="cat1",
                       stores=stores, feature_dim=8, train_split="train", test_split="test", rows={}, preset="digits",
                       solver="sgd", hyperparameters={}, heads=(), selected=sel, tag=tag, research=res)  # fmt: skip


def test_a_cell_takes_each_draws_research_number_and_fidelity_from_its_record():
    sweep = parse_sweep({"rows": {"cat1": {"draws": ["run0", "run1", "run2"]}}, "datasets": ["cifar10"]}, "x", "x")
    job = SimpleNamespace(preset="p", views=0, heads=SimpleNamespace(epochs=3))
    probes = tuple(ProbeJob("cifar10", "cat1", k, (f"run{k}",), job, f"key{k}") for k in range(3))
    used = {f: StoreUsed("run", "path", {"sha256": f}, 8, fidelity=f) for f in ("strict", "fast")}
    done = {
        "key0": _record("cifar10", "t", 80.0, "2026-01-01", research=81.5, stores=(used["strict"],)),
        "key1": _record("cifar10", "t", 70.0, "2026-01-01", research=None, stores=(used["fast"],)),  # L-BFGS: none
        "key2": _record("cifar10", "t", 75.0, "2026-01-01", research=79.0, stores=(used["strict"], used["fast"])),
    }
    report = build_report(SweepPlan(sweep, (RowInfo("cat1", 1, 3, None, None),), (), probes, done))
    cell = report.cells[("cat1", "cifar10")]
    assert cell.values == (80.0, 70.0, 75.0) and cell.research == (81.5, 79.0)
    assert cell.fidelity == ("strict", "fast", "fast")  # strict only when every store of the probe was
    row = report.table_rows()[0]
    assert row["cifar10 research"] == f"**{_text((81.5, 79.0))}**" and row["fidelity"] == "fast, strict"


def test_report_command_shows_only_records_of_each_probes_key(paths, registry, tmp_path):
    """Stores gone (keys unknown here): records with the probes' tags are not taken for them; the footnote says why."""
    runner = CliRunner()
    roots = ["--cache-dir", str(paths.cache), "--checkpoint-dir", str(paths.checkpoints)]
    r = runner.invoke(main, ["report", *roots])
    assert r.exit_code == 1 and "which sweep? name one (featcache report NAME); it holds none" in r.output
    for row, k in (("cat1", 0), ("cat1", 1), ("cat2", 0), ("cat4", 1)):
        append_record(paths.results_log, _record("digits-transfer", f"sweep:digits {row} d{k}", 90.0, "2026-01-02"))
    r = runner.invoke(main, ["report", *roots, "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    table = r.output.splitlines()
    assert [line.split()[4:] for line in table[2:5]] == [["-", "-", "-"]] * 3  # val-selected, research, fidelity
    assert "0/9 results found. 9 probe(s) have no ready stores here, so their results cannot be looked up" in r.output
    assert "run `featcache sweep digits` to extract them" in r.output and (tmp_path / "digits.md").exists()
    report = build_report(plan_sweep(load_sweep("digits", registry), registry, paths))
    assert all(c.values == () for c in report.cells.values()) and report.unknown == 9


def test_footnote_counts_probes_without_stores():
    assert "results found. 2 probe(s) have no ready stores" in dataclasses.replace(_report(), unknown=2).footnote()
    assert "no ready stores" not in _report().footnote()
