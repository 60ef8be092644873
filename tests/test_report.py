"""featcache report: the table's numbers (mean ± std over draws, best per column), its files, the plot, the CLI."""

from __future__ import annotations

import csv
import dataclasses
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from featcache.cli import main
from featcache.report import PLOT_HINT, Cell, SweepReport, build_report, write_report
from featcache.results import ProbeRecord, Selection, append_record
from featcache.sweep import RowInfo, load_sweep, plan_sweep

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


def _report() -> SweepReport:
    cells = {k: Cell(v, 3) for k, v in VALUES.items()}
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


def test_files_are_written_and_the_plot_is_an_image(tmp_path):
    files = write_report(_report(), tmp_path / "reports")
    assert files.markdown == tmp_path / "reports" / "toy.md" and files.note is None
    md = files.markdown.read_text()
    assert "| features | models | steps per model | total steps | a | b |" in md
    assert f"| cat2 | 2 | 32 | 64 | **{_cell_text('cat2', 'a')}** | {_cell_text('cat2', 'b')} |" in md
    with open(files.csv) as f:
        table = list(csv.DictReader(f))
    assert [r["a_best"] for r in table] == ["False", "True", "False"]
    assert float(table[0]["a_mean"]) == pytest.approx(89.0) and table[2]["b_n"] == "0" and table[2]["b_mean"] == ""
    assert float(table[0]["a_std"]) == pytest.approx(np.std(VALUES[("cat1", "a")], ddof=1))
    with Image.open(files.plot) as im:
        im.verify()
    assert files.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in files.markdown.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_without_matplotlib_the_tables_are_still_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib...` now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    files = write_report(_report(), tmp_path)
    assert files.plot is None and files.note == PLOT_HINT and "pip install 'featcache[plot]'" in PLOT_HINT
    assert files.markdown.exists() and files.csv.exists() and not (tmp_path / "toy.png").exists()


def _record(dataset: str, tag: str, top1: float, when: str) -> ProbeRecord:
    sel = Selection(params={"weight_decay": 1e-4}, val_top1=top1, test_top1=top1, method="val")
    return ProbeRecord(id=f"id{abs(hash((tag, when))) % 10**8}", timestamp=when, dataset=dataset, features="cat1",
                       stores=(), feature_dim=8, train_split="train", test_split="test", rows={}, preset="digits",
                       solver="sgd", hyperparameters={}, heads=(), selected=sel, tag=tag)  # fmt: skip


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
    assert [line.split()[4:] for line in table[2:5]] == [["-"], ["-"], ["-"]]
    assert "0/9 results found. 9 probe(s) have no ready stores here, so their results cannot be looked up" in r.output
    assert "run `featcache sweep digits` to extract them" in r.output and (tmp_path / "digits.md").exists()
    report = build_report(plan_sweep(load_sweep("digits", registry), registry, paths))
    assert all(c.values == () for c in report.cells.values()) and report.unknown == 9


def test_footnote_counts_probes_without_stores():
    assert "results found. 2 probe(s) have no ready stores" in dataclasses.replace(_report(), unknown=2).footnote()
    assert "no ready stores" not in _report().footnote()
