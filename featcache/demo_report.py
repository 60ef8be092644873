"""What ``featcache demo`` prints about its table: the control rows, the two verdict lines, and its plot.

The demo sweep has two kinds of rows. *Budget* rows (``steps_per_model`` set: cat1, cat4) spend one
pretraining budget on 1 or 4 networks. *Control* rows (no ``steps_per_model``: cat1-init, cat4-init) are the
same kind of networks at initialisation, 0 steps: random features, probed exactly as the budget rows. The verdicts
are computed from the table, whichever way it came out: pretrained against random features at the same number of
networks, and every cat-n against cat1 at the same budget, each difference held against the spread over draws.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .report import Cell, SweepReport, plot_report
from .sweep import RowInfo

__all__ = ["controls", "with_zero_steps", "verdicts", "plot_demo"]


def controls(report: SweepReport) -> tuple[RowInfo, ...]:
    """The control rows: those without a pretraining budget (None, or 0 once :func:`with_zero_steps` showed it)."""
    return tuple(r for r in report.rows if not r.steps_per_model)


def _budget(report: SweepReport) -> tuple[RowInfo, ...]:
    return tuple(r for r in report.rows if r.steps_per_model)


def with_zero_steps(report: SweepReport) -> SweepReport:
    """The report with its control rows showing 0 steps per model and 0 total steps (instead of '-')."""
    rows = tuple(
        dataclasses.replace(r, steps_per_model=0, total_steps=0) if r.steps_per_model is None else r
        for r in report.rows
    )
    return dataclasses.replace(report, rows=rows)


def _show(row: RowInfo, cell: Cell, steps: bool = False) -> str:
    what = f"{row.name} ({row.models} x {row.steps_per_model} steps)" if steps else row.name
    return f"{what} {cell.mean:.2f} ± {cell.std or 0:.2f}"


def _against(a: Cell, b: Cell) -> str:
    """How ``a`` compares with ``b``: ``ahead by 2.47 points, more than the spread over draws (1.88)``.

    The spread is the larger of the two rows' standard deviations over their draws.
    """
    gain, spread = a.mean - b.mean, max(a.std or 0.0, b.std or 0.0)
    side = f"ahead by {gain:.2f} points" if gain > 0 else f"behind by {-gain:.2f} points" if gain < 0 else "level"
    return f"{side}, {'more than' if abs(gain) > spread else 'within'} the spread over draws ({spread:.2f})"


def verdicts(report: SweepReport) -> list[str]:
    """Two lines on the report's first dataset: did pretraining beat random features, did cat-n beat cat1.

    Each comparison gives both rows as mean ± std over the draws, the difference, and whether it is more than the
    spread over draws (the larger of the two stds). Pretrained rows meet the control with as many networks;
    every other budget row meets the one-network row; both by number of networks.

    Args:
        report: the demo sweep's report; control rows have no (or 0) ``steps_per_model``.

    Returns:
        The two lines (one when the sweep has no controls or no other budget row), or one line saying that some
        draws have no result yet.
    """
    d = report.datasets[0]
    cell = {r.name: report.cells[(r.name, d)] for r in report.rows}
    if any(len(c.values) < c.draws for c in cell.values()):  # a mean of fewer draws is not the row's
        return ["measured: some draws have no result yet; rerun `featcache demo` to finish them"]
    budget = _budget(report)
    lines = []
    pairs = [(next((r for r in budget if r.models == c.models), None), c)
             for c in sorted(controls(report), key=lambda c: c.models)]  # fmt: skip
    parts = [f"{_show(r, cell[r.name])} vs {_show(c, cell[c.name])}, {_against(cell[r.name], cell[c.name])}"
             for r, c in pairs if r is not None]  # fmt: skip
    if parts:
        lines.append("measured, pretrained vs random features (the same networks at initialisation): "
                     + "; ".join(parts))  # fmt: skip
    single = next((r for r in budget if r.models == 1), None)
    parts = [f"{_show(r, cell[r.name], steps=True)} {_against(cell[r.name], cell[single.name])}"
             for r in sorted(budget, key=lambda r: r.models) if single is not None and r is not single]  # fmt: skip
    if parts:
        lines.append(f"measured, cat-n vs {_show(single, cell[single.name], steps=True)} at the same budget: "
                     + "; ".join(parts))  # fmt: skip
    return lines


def plot_demo(report: SweepReport, path: Path) -> Path:
    """The budget rows' accuracy against the number of networks, with the controls as a second line.

    Drawn by :func:`featcache.report.plot_report` from a report whose two "datasets" are the pretrained networks
    and the same networks at initialisation, so each line joins only rows of its own kind.

    Raises:
        ImportError: matplotlib is not installed.
    """
    d = report.datasets[0]
    budget = _budget(report)
    ctl = {r.models: r for r in controls(report)}
    pre, init = f"{d}: pretrained", f"{d}: at initialisation (0 steps)"
    cells = {}
    for r in budget:
        cells[(r.name, pre)] = report.cells[(r.name, d)]
        twin = ctl.get(r.models)
        cells[(r.name, init)] = report.cells[(twin.name, d)] if twin else Cell((), r.draws)
    return plot_report(dataclasses.replace(report, rows=budget, datasets=(pre, init), cells=cells), path)
